//! A `tcp` listener's connection: optional PROXY header from a trusted balancer, the
//! policy's client rules, optional SNI routing on the peeked ClientHello, a connect to a pool
//! server with retries on others, the PROXY header to the server, then the relay.
//!
//! Bytes read from the client before the server is chosen (a PROXY header's trailing bytes,
//! the ClientHello) are written to the server first, unchanged; everything after goes through
//! the shared relay (splice on Linux).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::client_hello::{self, Hello, HelloInfo};
use super::proxy_protocol::{self, Decoded, Header};
use crate::accesslog::AccessRecord;
use crate::config::TcpListenerConfig;
use crate::metrics::ListenerMetrics;
use crate::policy::matcher::CidrSet;
use crate::policy::Protocol;
use crate::pool::{LivePool, ServerPool};
use crate::relay::RelayEnd;
use crate::server::Services;

/// Room for a PROXY header ahead of the ClientHello.
const PROXY_MAX: usize = 4096 + 16;

pub struct TcpBalancer {
    pub name: Arc<str>,
    pub cfg: TcpListenerConfig,
    pub svc: Arc<Services>,
    /// The pool for connections no SNI route takes (each connection takes the one in force
    /// when it arrives: a reload may replace it).
    default: Option<Arc<LivePool>>,
    /// Each SNI route's pool, in route order.
    routes: Vec<Arc<LivePool>>,
    trusted: CidrSet,
    /// Terminate TLS (`tls` set) instead of passing it through; follows reloads.
    tls: Option<Arc<crate::tls::TlsServer>>,
    /// The listening socket's address: every accepted connection's local address, unless
    /// it is a wildcard one.
    local: SocketAddr,
    series: ListenerMetrics,
}

/// How a connection ended, for the access log.
struct Outcome {
    status: u16,
    error: Option<&'static str>,
    target: String,
    upstream: Option<SocketAddr>,
    bytes_in: u64,
    bytes_out: u64,
    /// The policy rule that refused the client.
    rule: Option<Arc<str>>,
}

impl TcpBalancer {
    pub fn new(
        name: Arc<str>,
        cfg: TcpListenerConfig,
        svc: Arc<Services>,
        tls: Option<Arc<crate::tls::TlsServer>>,
        local: SocketAddr,
    ) -> anyhow::Result<TcpBalancer> {
        let pool = |n: &str| {
            svc.pools
                .get(n)
                .ok_or_else(|| anyhow::anyhow!("no pool named {n:?}"))
        };
        let default = cfg.pool.as_deref().map(pool).transpose()?;
        let routes = cfg
            .sni
            .iter()
            .map(|r| pool(&r.pool))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let trusted = CidrSet::new(&cfg.accept_proxy_from);
        Ok(TcpBalancer {
            tls,
            local,
            series: ListenerMetrics::new(&name),
            name,
            cfg,
            svc,
            default,
            routes,
            trusted,
        })
    }

    pub async fn serve(self: Arc<Self>, client: TcpStream, peer: SocketAddr) {
        let started = Instant::now();
        let mut origin = peer;
        let out = self.handle(client, peer, &mut origin).await;
        let m = &self.svc.metrics;
        if out.bytes_in + out.bytes_out > 0 {
            self.series.bytes(m, out.bytes_in, out.bytes_out);
        }
        self.series.request(m, out.status);
        self.svc.access_log.log(AccessRecord {
            time: SystemTime::now(),
            listener: self.name.clone(),
            client: origin,
            user: None,
            rule: out.rule,
            method: "TCP".into(),
            target: if out.target.is_empty() {
                "-".into()
            } else {
                out.target
            },
            status: out.status,
            bytes_in: out.bytes_in,
            bytes_out: out.bytes_out,
            duration: started.elapsed(),
            upstream: out.upstream,
            cache: None,
            version: None,
            referer: None,
            user_agent: None,
            route: None,
            pool: None,
            server: None,
            error: out.error,
        });
    }

    async fn handle(
        &self,
        mut client: TcpStream,
        peer: SocketAddr,
        origin: &mut SocketAddr,
    ) -> Outcome {
        let mut out = Outcome {
            status: 200,
            error: None,
            // Empty until known (logged as `-`): no allocation on the common path.
            target: String::new(),
            upstream: None,
            bytes_in: 0,
            bytes_out: 0,
            rule: None,
        };
        let fail = |mut out: Outcome, status: u16, error: &'static str| {
            out.status = status;
            out.error = Some(error);
            out
        };
        // The connection's own address: the listener's, unless that is a wildcard and a PROXY
        // header for the server needs the real one (the policy only reads the port).
        let mut dst = self.local;
        if self.local.ip().is_unspecified() {
            let Ok(local) = client.local_addr() else {
                return fail(out, 500, "proxy_internal_error");
            };
            dst = local;
        }
        // Bytes read from the client that the server must still get.
        let mut pending = Vec::new();

        if !self.cfg.accept_proxy_from.is_empty() {
            if !self.trusted.contains(peer.ip()) {
                tracing::debug!("refused: not a trusted PROXY protocol sender");
                return fail(out, 403, "destination_ip_prohibited");
            }
            let deadline = tokio::time::Instant::now() + self.cfg.handshake_timeout;
            match read_proxy(&mut client, &mut pending, deadline).await {
                Ok(Header::Proxied { src, dst: d }) => {
                    *origin = src;
                    dst = d;
                }
                Ok(Header::Local) => {}
                Err(e) => {
                    tracing::debug!("bad PROXY header: {e}");
                    return fail(out, 400, "http_request_error");
                }
            }
        }

        let policy = self.svc.policy.current();
        if let Err(rule) =
            super::client_allowed(&policy, &self.name, origin.ip(), dst.port(), Protocol::Tcp)
        {
            tracing::debug!(%rule, "denied by policy");
            self.svc.metrics.denial(&rule);
            out.rule = Some(Arc::from(rule.as_str()));
            return fail(out, 403, "destination_ip_prohibited");
        }

        let mut client = Client::Plain(client);
        let pool = if let Some(tls) = &self.tls {
            let Client::Plain(tcp) = client else {
                unreachable!("plain until here")
            };
            // Boxed: the handshake's state is large, and a plain connection should not carry
            // room for it.
            match Box::pin(self.terminate(tls, tcp, &mut pending, &mut out)).await {
                Ok((tls, pool)) => {
                    client = Client::Tls(tls);
                    pool
                }
                Err((status, error)) => return fail(out, status, error),
            }
        } else if self.cfg.sni.is_empty() {
            self.default.as_ref().map(|p| p.current())
        } else {
            let Client::Plain(tcp) = &mut client else {
                unreachable!("plain until here")
            };
            let deadline = tokio::time::Instant::now() + self.cfg.handshake_timeout;
            match read_hello(tcp, &mut pending, self.cfg.max_client_hello, deadline).await {
                Ok(info) => {
                    out.target = info.sni.clone().unwrap_or_else(|| "-".into());
                    self.route(&info)
                }
                Err(e) => {
                    tracing::debug!("no usable ClientHello: {e}");
                    return fail(out, 400, "tls_protocol_error");
                }
            }
        };
        let Some(pool) = pool else {
            tracing::debug!(sni = %out.target, "no route");
            return fail(out, 421, "destination_not_found");
        };
        if out.target.is_empty() || out.target == "-" {
            out.target = pool.cfg.name.clone();
        }

        let (i, server) = match pool
            .connect(origin.ip(), self.cfg.connect_attempts, &self.svc.connector)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(listener = %self.name, "{e}");
                self.connect_error();
                return fail(out, 503, "connection_refused");
            }
        };
        // The connector set TCP_NODELAY on it.
        out.upstream = Some(server.peer);
        let mut server = server.stream;

        // The PROXY header goes first, in the clear (before a TLS handshake with the server),
        // then the bytes already read from the client: in the same write when in the clear.
        let secure = pool.has_tls();
        // The listener's `send_proxy`, else the pool's `proxy_protocol`.
        let mut first = match self.cfg.send_proxy.or(pool.cfg.proxy_protocol) {
            Some(v) => proxy_protocol::encode(v, *origin, dst),
            None => Vec::new(),
        };
        if !secure {
            first.extend_from_slice(&pending);
        }
        if !first.is_empty() {
            if let Err(e) = server.write_all(&first).await {
                tracing::debug!("writing to the server failed: {e}");
                pool.finished(i);
                pool.failure(i, "write failed");
                return fail(out, 502, "connection_terminated");
            }
        }
        let server = if secure {
            // Boxed: a client handshake is large, and plain connections need not carry it.
            let mut tls = match Box::pin(pool.secure(i, server)).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::info!(listener = %self.name, pool = %pool.cfg.name, server = %pool.label(i), "TLS to the server failed: {e}");
                    pool.finished(i);
                    pool.failure(i, &format!("TLS failed: {e}"));
                    self.connect_error();
                    return fail(out, 502, "tls_protocol_error");
                }
            };
            if !pending.is_empty() {
                if let Err(e) = tls.write_all(&pending).await {
                    tracing::debug!("writing to the server failed: {e}");
                    pool.finished(i);
                    pool.failure(i, "write failed");
                    return fail(out, 502, "connection_terminated");
                }
            }
            Upstream::Tls(tls)
        } else {
            Upstream::Plain(server)
        };
        let idle = self.cfg.idle_timeout;
        // Splice needs plain sockets both sides; TLS either side is copied.
        let (end, stats) = match (client, server) {
            (Client::Plain(client), Upstream::Plain(server)) => {
                let _ = client.set_nodelay(true);
                relay(&client, &server, idle).await
            }
            (Client::Plain(client), Upstream::Tls(server)) => {
                let _ = client.set_nodelay(true);
                Box::pin(crate::relay::relay(client, server, idle)).await
            }
            // Boxed, as the handshakes: a passthrough connection carries no room for them.
            (Client::Tls(tls), Upstream::Plain(mut server)) => {
                Box::pin(crate::relay::relay(tls, &mut server, idle)).await
            }
            (Client::Tls(tls), Upstream::Tls(server)) => {
                Box::pin(crate::relay::relay(tls, server, idle)).await
            }
        };
        pool.finished(i);
        self.svc.metrics.relay("tcp", stats.a_to_b, stats.b_to_a);
        out.bytes_in = stats.a_to_b + pending.len() as u64;
        out.bytes_out = stats.b_to_a;
        pool.bytes(i, out.bytes_in, out.bytes_out);
        match end {
            RelayEnd::Done => {}
            RelayEnd::Idle => out.error = Some("connection_timeout"),
            RelayEnd::Error(e) => {
                tracing::debug!("relay ended: {e}");
                out.error = Some("connection_terminated");
            }
        }
        out
    }

    fn connect_error(&self) {
        self.series.connect_error(&self.svc.metrics);
    }

    /// Terminates TLS on a `tls` listener: the ClientHello (after any bytes already read)
    /// picks the route, then the handshake with the certificates in force. `Err` holds the
    /// status and error to log.
    async fn terminate(
        &self,
        tls: &crate::tls::TlsServer,
        tcp: TcpStream,
        pending: &mut Vec<u8>,
        out: &mut Outcome,
    ) -> Result<(TlsClient, Option<Arc<ServerPool>>), (u16, &'static str)> {
        let deadline = tokio::time::Instant::now() + self.cfg.handshake_timeout;
        let stream = Prefixed {
            prefix: std::mem::take(pending),
            pos: 0,
            inner: tcp,
        };
        let acceptor = tokio_rustls::LazyConfigAcceptor::new(
            tokio_rustls::rustls::server::Acceptor::default(),
            stream,
        );
        let start = match tokio::time::timeout_at(deadline, acceptor).await {
            Ok(Ok(start)) => start,
            Ok(Err(e)) => {
                tracing::debug!("no usable ClientHello: {e}");
                return Err((400, "tls_protocol_error"));
            }
            Err(_) => return Err((400, "tls_protocol_error")),
        };
        let hello = start.client_hello();
        let info = HelloInfo {
            sni: hello.server_name().map(|n| n.to_ascii_lowercase()),
            alpn: hello
                .alpn()
                .map(|a| a.map(<[u8]>::to_vec).collect())
                .unwrap_or_default(),
        };
        out.target = info.sni.clone().unwrap_or_else(|| "-".into());
        let pool = self.route(&info);
        if pool.is_none() {
            tracing::debug!(sni = %out.target, "no route");
            return Err((421, "destination_not_found"));
        }
        match tokio::time::timeout_at(deadline, start.into_stream(tls.current())).await {
            Ok(Ok(tls)) => Ok((Box::new(tls), pool)),
            Ok(Err(e)) => {
                tracing::debug!("TLS handshake failed: {e}");
                Err((400, "tls_protocol_error"))
            }
            Err(_) => Err((400, "tls_protocol_error")),
        }
    }

    /// First SNI route whose names (and ALPN, when it lists some) match; else the default.
    fn route(&self, info: &HelloInfo) -> Option<Arc<ServerPool>> {
        if let Some(sni) = &info.sni {
            for (r, pool) in self.cfg.sni.iter().zip(&self.routes) {
                let alpn_ok = r.alpn.is_empty()
                    || r.alpn
                        .iter()
                        .any(|a| info.alpn.iter().any(|o| o == a.as_bytes()));
                if alpn_ok && r.matches_name(sni) {
                    return Some(pool.current());
                }
            }
        }
        self.default.as_ref().map(|p| p.current())
    }
}

/// The client side once the server is chosen: the socket itself (passthrough: spliced), or
/// the TLS session this listener terminated (copied).
enum Client {
    Plain(TcpStream),
    Tls(TlsClient),
}

type TlsClient = Box<tokio_rustls::server::TlsStream<Prefixed>>;

/// The server side: plain, or TLS when the pool has `[pools.tls]`.
enum Upstream {
    Plain(TcpStream),
    Tls(Box<crate::tls::client::TlsStream<TcpStream>>),
}

/// The client socket with bytes already read from it (after a PROXY header) put back in
/// front, for the TLS handshake to read.
pub struct Prefixed {
    prefix: Vec<u8>,
    pos: usize,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(target_os = "linux")]
async fn relay(
    a: &TcpStream,
    b: &TcpStream,
    idle: std::time::Duration,
) -> (RelayEnd, crate::relay::RelayStats) {
    crate::splice::relay_tcp(a, b, idle).await
}

#[cfg(not(target_os = "linux"))]
async fn relay(
    a: &TcpStream,
    b: &TcpStream,
    idle: std::time::Duration,
) -> (RelayEnd, crate::relay::RelayStats) {
    crate::relay::relay(a, b, idle).await
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Proxy(#[from] proxy_protocol::ProxyError),
    #[error(transparent)]
    Hello(#[from] client_hello::HelloError),
    #[error("closed before the end of the header")]
    Eof,
    #[error("timed out")]
    Timeout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One read into `buf` (at most `room` more bytes), bounded by `deadline`.
async fn read_more(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    room: usize,
    deadline: tokio::time::Instant,
) -> Result<(), ReadError> {
    let start = buf.len();
    buf.resize(start + room.clamp(1, 4096), 0);
    let r = tokio::time::timeout_at(deadline, s.read(&mut buf[start..])).await;
    let n = match r {
        Err(_) => {
            buf.truncate(start);
            return Err(ReadError::Timeout);
        }
        Ok(Err(e)) => {
            buf.truncate(start);
            return Err(e.into());
        }
        Ok(Ok(n)) => n,
    };
    buf.truncate(start + n);
    if n == 0 {
        return Err(ReadError::Eof);
    }
    Ok(())
}

/// Reads a whole PROXY header; `buf` keeps whatever came after it.
async fn read_proxy(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: tokio::time::Instant,
) -> Result<Header, ReadError> {
    loop {
        if let Decoded::Done { header, len } = proxy_protocol::decode(buf)? {
            buf.drain(..len);
            return Ok(header);
        }
        let room = PROXY_MAX.saturating_sub(buf.len());
        read_more(s, buf, room, deadline).await?;
    }
}

/// Reads until `buf` holds a whole ClientHello (at most `max` bytes).
async fn read_hello(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
    deadline: tokio::time::Instant,
) -> Result<HelloInfo, ReadError> {
    loop {
        if let Hello::Done(info) = client_hello::parse(buf, max)? {
            return Ok(info);
        }
        // One byte past the limit is enough to tell "too large".
        let room = (max + 1).saturating_sub(buf.len());
        read_more(s, buf, room, deadline).await?;
    }
}
