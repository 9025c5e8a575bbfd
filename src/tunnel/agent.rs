//! The agent: dials its relays, proves itself, then serves the relay's streams as the
//! HTTP/2 server on the connection it dialled.
//!
//! Relays are tried in the configured order (failover). A lost connection is redialled
//! after a back-off that doubles from `reconnect_min` to `reconnect_max`, with up to half of
//! it added at random (so agents cut off together do not return together); a connection that
//! stayed up for a while starts the back-off again from the bottom.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::task::AbortOnDropHandle;

use super::allow::{AllowList, Denied};
use super::proto::{self, HelloReply, Open, OpenError};
use super::stream::H2Stream;
use crate::config::AgentConfig;
use crate::connector::{ConnectError, Host};
use crate::policy::config::ParentKind;
use crate::server::Services;

/// The next wait before redialling: doubled, capped, plus up to half again at random.
pub fn backoff(prev: Duration, min: Duration, max: Duration, rand01: f64) -> (Duration, Duration) {
    let base = if prev.is_zero() {
        min
    } else {
        (prev * 2).min(max)
    };
    let jitter = base.mul_f64(rand01.clamp(0.0, 1.0) / 2.0);
    (base, base + jitter)
}

/// Which of a failover list's relays a link dials next: one where other links of this agent
/// are connected now (`up`: links connected per relay), so the agent's links stay together
/// on the relay it fails over to; else `next`, the one after the relay this link tried last
/// (wrapping), as a lone link goes round its list.
pub fn next_relay(up: &[usize], next: usize) -> usize {
    up.iter()
        .position(|&n| n > 0)
        .unwrap_or(next % up.len().max(1))
}

/// Counts a link connected to a relay while it lives.
struct LinkUp<'a>(&'a AtomicUsize);

impl<'a> LinkUp<'a> {
    fn new(n: &'a AtomicUsize) -> LinkUp<'a> {
        n.fetch_add(1, Ordering::Relaxed);
        LinkUp(n)
    }
}

impl Drop for LinkUp<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A running `[agent]`: its task, stopped on reload when the section changed.
pub struct Running {
    agent: Arc<Agent>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn start(agent: Agent) -> Running {
        let agent = Arc::new(agent);
        let stop = tokio_util::sync::CancellationToken::new();
        let (run, stopped) = (agent.clone().run(), stop.clone());
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = run => {}
                _ = stopped.cancelled() => {}
            }
        });
        Running { agent, stop, task }
    }

    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// Closes its relay connections (the streams on them end) and waits for that.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Why a session with a relay ended (logged with the reason).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("the relay closed the connection during the TLS handshake (a relay with `transport = \"tcp\"` does that: `transport` must be the same on both sides)")]
    TlsClosed,
    #[error("the relay wants TLS but this agent has `transport = \"tcp\"` (`transport` must be the same on both sides)")]
    WantsTls,
    #[error("the relay refused this agent's name or token")]
    BadCredentials,
    #[error("the relay already has an agent of this name connected")]
    Duplicate,
    #[error("the relay has as many links of this agent as it takes (its `max_links`)")]
    TooManyLinks,
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("no answer to a ping within {0:?}")]
    Dead(Duration),
}

pub struct Agent {
    cfg: AgentConfig,
    svc: Arc<Services>,
    /// `None` with `transport = "tcp"` (plain).
    tls: Option<tokio_rustls::TlsConnector>,
    /// [`super::tls::ca_digest`] of the CA file `tls` was built from, read before it.
    ca_digest: Option<[u8; 32]>,
    token: Vec<u8>,
    /// The egress proxy's login, read at start (and again on reload).
    proxy_login: Option<(String, crate::policy::users::Secret)>,
    allow: AllowList,
    /// This agent's session id, sent in each link's hello with `connections` > 1 (the
    /// relay takes links with the same id as one agent).
    session: [u8; proto::SESSION_LEN],
}

impl Agent {
    pub fn new(cfg: AgentConfig, svc: Arc<Services>) -> anyhow::Result<Agent> {
        // Before the connector loads the file: a file replaced in between differs next time.
        let ca_digest = cfg
            .tls
            .as_ref()
            .and_then(|t| super::tls::ca_digest(&t.verify));
        let tls = match &cfg.tls {
            Some(t) => Some(super::tls::connector(&t.verify)?),
            None => {
                tracing::warn!(agent = %cfg.name, "tunnel: transport = \"tcp\": this agent's token and every stream travel IN THE CLEAR to the relay; use it only on a link already protected (WireGuard, IPsec, loopback)");
                None
            }
        };
        let token = cfg.token.expose()?;
        let proxy_login = match &cfg.proxy_login {
            Some((user, password)) => Some((user.clone(), proxy_password(password)?)),
            None => None,
        };
        // The published services' own addresses are reachable by SOCKS too.
        let mut allow = cfg.allow.clone();
        for (host, port) in cfg.publish.values() {
            if let Ok(e) = super::allow::AllowEntry::parse(&format!("[{host}]:{port}"))
                .or_else(|_| super::allow::AllowEntry::parse(&format!("{host}:{port}")))
            {
                allow.entries.push(e);
            }
        }
        Ok(Agent {
            cfg,
            svc,
            tls,
            ca_digest,
            token,
            proxy_login,
            allow,
            session: std::array::from_fn(|_| fastrand::u8(..)),
        })
    }

    /// Whether `other` would dial the same relays the same way as this one: the same
    /// `[agent]` settings (relays, services, allow-list, egress, timings, verification), the
    /// same token (a `token_file` is read again: its contents may have changed) and the same
    /// CA file contents (a CA replaced under the same path is a change).
    pub fn same_as(&self, other: &Agent) -> bool {
        self.cfg == other.cfg
            && self.token == other.token
            && self.proxy_login == other.proxy_login
            && self.ca_digest == other.ca_digest
    }

    /// Runs until the process drains: connect, serve, back off, again; with `mode = "all"`,
    /// that for every relay at once, each with its own back-off; and `connections` times
    /// over (each link with its own reconnect loop, back-off and heartbeats).
    pub async fn run(self: Arc<Self>) {
        let links = self.cfg.connections.max(1);
        let groups: Vec<Vec<(String, u16)>> = if self.cfg.all_relays {
            self.cfg.relays.iter().map(|r| vec![r.clone()]).collect()
        } else {
            vec![self.cfg.relays.clone()]
        };
        let mut each = Vec::new();
        let mut on_workers = Vec::new();
        let mut k = 0;
        for relays in groups {
            let up: Arc<[AtomicUsize]> = relays.iter().map(|_| AtomicUsize::new(0)).collect();
            for link in 0..links {
                let run = self.clone().run_through(relays.clone(), up.clone(), link);
                match &self.svc.workers {
                    // `[runtime] per_core`: each link on a worker of its own in turn, its
                    // streams beside it (see `serve`); aborted when `run` is dropped (a
                    // reload that stops the agent), as the links it drives itself end.
                    Some(w) => on_workers.push(AbortOnDropHandle::new(w.handle(k).spawn(run))),
                    None => each.push(run),
                }
                k += 1;
            }
        }
        for task in &mut on_workers {
            let _ = task.await;
        }
        futures_util::future::join_all(each).await;
    }

    /// What this link says in its hello: nothing with `connections = 1` (today's hello, which
    /// every relay understands), else the session, its index and the count.
    fn link(&self, index: u8) -> Option<proto::Link> {
        (self.cfg.connections > 1).then_some(proto::Link {
            session: self.session,
            index,
            count: self.cfg.connections,
        })
    }

    /// Keeps one connection (link `link`) up to `relays`, tried in order ([`next_relay`];
    /// `up`: the links of this agent connected to each of them).
    async fn run_through(
        self: Arc<Self>,
        relays: Vec<(String, u16)>,
        up: Arc<[AtomicUsize]>,
        link: u8,
    ) {
        let mut wait = Duration::ZERO;
        let mut next = 0;
        loop {
            let counts: Vec<usize> = up.iter().map(|n| n.load(Ordering::Relaxed)).collect();
            let at = next_relay(&counts, next);
            next = at + 1;
            let (Some((host, port)), Some(up)) = (relays.get(at), up.get(at)) else {
                return;
            };
            let started = tokio::time::Instant::now();
            let result = tokio::select! {
                r = self.session(host, *port, link, up) => r,
                _ = self.svc.shutdown.draining() => return,
            };
            let relay = format!("{host}:{port}");
            match result {
                Ok(()) => {}
                Err(SessionError::Connect(e)) => {
                    tracing::warn!(agent = %self.cfg.name, %relay, link = link + 1, "tunnel: cannot reach the relay: {e}")
                }
                Err(e) => {
                    tracing::warn!(agent = %self.cfg.name, %relay, link = link + 1, reason = %e, "tunnel: disconnected from the relay")
                }
            }
            // Up for a while: the next failure starts the back-off from the bottom.
            if started.elapsed() > self.cfg.reconnect_max {
                wait = Duration::ZERO;
            }
            let (base, sleep) = backoff(
                wait,
                self.cfg.reconnect_min,
                self.cfg.reconnect_max,
                fastrand::f64(),
            );
            wait = base;
            tracing::info!(agent = %self.cfg.name, link = link + 1, "tunnel: reconnecting in {sleep:?}");
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.svc.shutdown.draining() => return,
            }
        }
    }

    /// One connection (link `link`) to one relay, until it ends.
    async fn session(
        self: &Arc<Self>,
        host: &str,
        port: u16,
        link: u8,
        up: &AtomicUsize,
    ) -> Result<(), SessionError> {
        let cfg = &self.cfg;
        let deadline = tokio::time::Instant::now() + cfg.connect_timeout;
        let timed_out =
            || SessionError::Connect("timed out (TCP, TLS, hello or HTTP/2 handshake)".into());
        let dial = async {
            let h = Host::parse(host).ok_or_else(|| SessionError::Connect("bad host".into()))?;
            let tcp = match (&cfg.http_proxy, &cfg.socks_proxy) {
                (Some((ph, pp)), _) => {
                    self.through_egress(ParentKind::Http, ph, *pp, &h, port)
                        .await?
                }
                (None, Some((ph, pp))) => {
                    self.through_egress(ParentKind::Socks5, ph, *pp, &h, port)
                        .await?
                }
                (None, None) => self
                    .svc
                    .connector
                    .connect(&h, port)
                    .await
                    .map_err(|e| SessionError::Connect(e.to_string()))?,
            };
            let _ = tcp.stream.set_nodelay(true);
            Ok(tcp.stream)
        };
        let tcp = tokio::time::timeout_at(deadline, dial)
            .await
            .map_err(|_| timed_out())??;
        // Where a BIND from anyone is announced: this host's address toward the relay.
        let local = tcp
            .local_addr()
            .map_err(|e| SessionError::Connect(e.to_string()))?
            .ip();
        let relay = format!("{host}:{port}");
        match (&self.tls, &cfg.tls) {
            (Some(connector), Some(t)) => {
                let name =
                    tokio_rustls::rustls::pki_types::ServerName::try_from(t.server_name.clone())
                        .map_err(|e| SessionError::Handshake(e.to_string()))?;
                // rustls reads one record at a time: the socket is read in big gulps below it.
                let tcp = tokio::io::BufReader::with_capacity(super::TLS_READ_BUFFER, tcp);
                let mut tls = tokio::time::timeout_at(deadline, connector.connect(name, tcp))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(|e| match e.kind() {
                        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
                            SessionError::TlsClosed
                        }
                        _ => SessionError::Tls(e),
                    })?;
                tls.get_mut()
                    .1
                    .set_buffer_limit(Some(super::TLS_WRITE_BUFFER));
                self.serve(tls, deadline, local, &relay, link, up).await
            }
            _ => self.serve(tcp, deadline, local, &relay, link, up).await,
        }
    }

    /// The hello, the HTTP/2 handshake (both by `deadline`), then the relay's streams until
    /// the connection ends.
    async fn serve<S>(
        self: &Arc<Self>,
        mut io: S,
        deadline: tokio::time::Instant,
        local: IpAddr,
        relay: &str,
        link: u8,
        up: &AtomicUsize,
    ) -> Result<(), SessionError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let cfg = &self.cfg;
        let handshake = async {
            let hello = proto::encode_hello(&proto::Hello {
                name: cfg.name.clone(),
                token: self.token.clone(),
                link: self.link(link),
            });
            io.write_all(&hello)
                .await
                .map_err(|e| SessionError::Handshake(e.to_string()))?;
            io.flush()
                .await
                .map_err(|e| SessionError::Handshake(e.to_string()))?;
            let mut answer = [0u8; 1];
            io.read_exact(&mut answer)
                .await
                .map_err(|e| SessionError::Handshake(format!("no answer to the hello: {e}")))?;
            match HelloReply::from_byte(answer[0]) {
                Some(HelloReply::Accepted) => {}
                Some(HelloReply::BadCredentials) => return Err(SessionError::BadCredentials),
                Some(HelloReply::Duplicate) => return Err(SessionError::Duplicate),
                Some(HelloReply::WantsTls) => return Err(SessionError::WantsTls),
                Some(HelloReply::TooManyLinks) => return Err(SessionError::TooManyLinks),
                None => return Err(SessionError::Handshake("unknown answer".into())),
            }
            super::h2_server()
                .handshake::<_, Bytes>(crate::gather::Gather::eager(io))
                .await
                .map_err(|e| SessionError::Handshake(e.to_string()))
        };
        let mut conn = tokio::time::timeout_at(deadline, handshake)
            .await
            .map_err(|_| {
                SessionError::Connect("timed out (TCP, TLS, hello or HTTP/2 handshake)".into())
            })??;
        let _up = LinkUp::new(up);
        tracing::info!(agent = %cfg.name, %relay, link = link + 1, transport = cfg.tls.as_ref().map_or("tcp", |_| "tls"), "tunnel: connected to the relay");
        let ping = conn.ping_pong();
        let beat = super::hub::heartbeat(ping, cfg.heartbeat, cfg.dead_after);
        tokio::pin!(beat);
        loop {
            tokio::select! {
                next = conn.accept() => match next {
                    Some(Ok((req, respond))) => {
                        let me = self.clone();
                        // `[runtime] per_core`: this link runs on a worker of its own
                        // (`run`), and its streams (a connect and a relay each) stay on
                        // it: their frames wake no other thread. `connections` = cores
                        // spreads the streams over every core.
                        self.svc
                            .shutdown
                            .spawn(async move { me.stream(req, respond, local).await });
                    }
                    Some(Err(e)) => return Err(SessionError::Lost(e.to_string())),
                    None => return Err(SessionError::Lost("closed by the relay".into())),
                },
                _ = &mut beat => return Err(SessionError::Dead(cfg.dead_after)),
            }
        }
    }

    /// A tunnel to the relay through an egress proxy (HTTP CONNECT or SOCKS5, with the
    /// configured login if any), with the same handshakes as parent proxies use.
    async fn through_egress(
        &self,
        kind: crate::policy::config::ParentKind,
        proxy_host: &str,
        proxy_port: u16,
        host: &Host,
        port: u16,
    ) -> Result<crate::connector::Connected, SessionError> {
        let what = match kind {
            ParentKind::Socks5 => "SOCKS5",
            ParentKind::Http => "HTTP",
        };
        let failed = |e: String| SessionError::Connect(format!("through the {what} proxy: {e}"));
        let ph = Host::parse(proxy_host).ok_or_else(|| failed("bad proxy host".into()))?;
        let mut tcp = self
            .svc
            .connector
            .connect(&ph, proxy_port)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let spec = crate::policy::config::ParentSpec {
            name: "agent-proxy".into(),
            kind,
            host: ph,
            port: proxy_port,
            username: self.proxy_login.as_ref().map(|(u, _)| u.clone()),
            password: self.proxy_login.as_ref().map(|(_, p)| p.clone()),
        };
        let left = match kind {
            ParentKind::Socks5 => {
                crate::upstream::socks5_tunnel(&spec, &mut tcp.stream, host, port).await
            }
            ParentKind::Http => {
                crate::upstream::http_tunnel(&spec, &mut tcp.stream, host, port).await
            }
        }
        .map_err(|e| failed(e.to_string()))?;
        // The relay says nothing before the agent's TLS hello: no bytes may follow.
        if !left.is_empty() {
            return Err(failed("bytes after the proxy's answer".into()));
        }
        Ok(tcp)
    }

    /// One stream: open what it asks for, answer, relay.
    async fn stream(
        &self,
        req: http::Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
        local: IpAddr,
    ) {
        let open = Open::from_request(&req);
        if let Some(Open::Bind { host, port, wait }) = &open {
            self.bind(host, *port, *wait, local, req, respond).await;
            return;
        }
        if open == Some(Open::Udp) {
            let Ok(resp) = http::Response::builder().status(200).body(()) else {
                return;
            };
            if let Ok(send) = respond.send_response(resp, false) {
                self.udp(H2Stream::new(send, req.into_body())).await;
            }
            return;
        }
        let result = match &open {
            None => Err(OpenError::BadRequest),
            Some(o) => self.open(o).await,
        };
        let tcp = match result {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::info!(agent = %self.cfg.name, target = ?open.as_ref().map(|o| o.to_string()), error = e.as_str(), "tunnel: stream refused");
                let resp = http::Response::builder().status(e.status()).body(());
                if let Ok(resp) = resp {
                    let _ = respond.send_response(resp, true);
                }
                return;
            }
        };
        let Ok(resp) = http::Response::builder().status(200).body(()) else {
            return;
        };
        let send = match respond.send_response(resp, false) {
            Ok(s) => s,
            Err(_) => return,
        };
        let mut h2 = H2Stream::new(send, req.into_body());
        let mut tcp = tcp;
        let (end, stats) = super::stream::relay_tcp(&mut tcp, &mut h2, self.cfg.idle_timeout).await;
        tracing::debug!(agent = %self.cfg.name, ?end, up = stats.a_to_b, down = stats.b_to_a, "tunnel: stream done");
    }

    /// A SOCKS BIND: listen (on the address that routes toward the expected peer, or on
    /// every address when anyone may connect, announced as this host's address toward the
    /// relay), answer 200 with the address, take exactly one connection within `wait` (at
    /// most `idle_timeout`), and tell the relay who it came from as a SOCKS5 reply: 0 and the
    /// peer, 2 when the peer is not the expected one or not in the allow-list, 6 when nobody
    /// came in time. Then the bytes flow both ways.
    async fn bind(
        &self,
        host: &str,
        port: u16,
        wait: Duration,
        local: IpAddr,
        req: http::Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
    ) {
        let refuse = |mut respond: h2::server::SendResponse<Bytes>, e: OpenError| {
            tracing::info!(agent = %self.cfg.name, target = %format!("bind from {host}:{port}"), error = e.as_str(), "tunnel: stream refused");
            if let Ok(resp) = http::Response::builder().status(e.status()).body(()) {
                let _ = respond.send_response(resp, true);
            }
        };
        let Some(h) = Host::parse(host) else {
            return refuse(respond, OpenError::BadRequest);
        };
        // The peers this BIND accepts: the allowed addresses of the one named, or anyone
        // the allow-list admits (checked when it connects).
        let expected: Option<Vec<IpAddr>> = match &h {
            Host::Ip(ip) if ip.is_unspecified() => None,
            _ => match self.allowed(&h, port).await {
                Ok(addrs) => Some(addrs.iter().map(|a| a.ip().to_canonical()).collect()),
                Err(e) => return refuse(respond, e),
            },
        };
        let listen_ip = match expected.as_deref() {
            Some([first, ..]) => crate::socks::bind::route_toward(*first).ok(),
            _ => None,
        }
        .unwrap_or(match local {
            IpAddr::V4(_) => IpAddr::from([0u8; 4]),
            IpAddr::V6(_) => IpAddr::from([0u16; 8]),
        });
        let listener = match tokio::net::TcpListener::bind(SocketAddr::new(listen_ip, 0)).await {
            Ok(l) => l,
            Err(_) => return refuse(respond, OpenError::Failed),
        };
        let Ok(bound) = listener.local_addr() else {
            return refuse(respond, OpenError::Failed);
        };
        let announced = if bound.ip().is_unspecified() {
            SocketAddr::new(local, bound.port())
        } else {
            bound
        };
        let resp = http::Response::builder()
            .status(200)
            .header(proto::BOUND_HEADER, announced.to_string())
            .body(());
        let Ok(resp) = resp else { return };
        let Ok(send) = respond.send_response(resp, false) else {
            return;
        };
        let mut h2 = H2Stream::new(send, req.into_body());
        // The relay sends nothing before the second reply; what it does send early (bounded)
        // is kept for the inside connection. Its end or reset ends the wait.
        let mut early = bytes::BytesMut::new();
        let deadline = tokio::time::sleep(wait.min(self.cfg.idle_timeout));
        tokio::pin!(deadline);
        let accepted = loop {
            tokio::select! {
                r = listener.accept() => break r.ok(),
                r = h2.read_buf(&mut early), if early.len() < 64 * 1024 => {
                    if !matches!(r, Ok(n) if n > 0) {
                        return;
                    }
                }
                _ = &mut deadline => break None,
                _ = self.svc.shutdown.draining() => return,
            }
        };
        // Exactly one connection: nobody else gets in after this.
        drop(listener);
        let mut reply = Vec::new();
        let Some((tcp, peer)) = accepted else {
            tracing::info!(agent = %self.cfg.name, %announced, "tunnel: BIND: nobody connected in time");
            crate::socks::codec::encode_reply(6, SocketAddr::from(([0u8; 4], 0)), &mut reply);
            let _ = h2.write_all(&reply).await;
            let _ = h2.shutdown().await;
            return;
        };
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let local_addrs = self.svc.local.load();
        let admitted = match &expected {
            Some(ips) => ips.contains(&peer.ip()),
            None => self
                .allow
                .check(None, peer.ip(), peer.port(), |ip| {
                    local_addrs.is_own_address(ip)
                })
                .is_ok(),
        };
        if !admitted {
            tracing::info!(agent = %self.cfg.name, %peer, "tunnel: BIND: a connection from a peer not expected or not allowed");
            crate::socks::codec::encode_reply(2, peer, &mut reply);
            let _ = h2.write_all(&reply).await;
            let _ = h2.shutdown().await;
            return;
        }
        let _ = tcp.set_nodelay(true);
        crate::socks::codec::encode_reply(0, peer, &mut reply);
        if h2.write_all(&reply).await.is_err() {
            return;
        }
        let mut tcp = tcp;
        if !early.is_empty() && tcp.write_all(&early).await.is_err() {
            return;
        }
        let (end, stats) = super::stream::relay_tcp(&mut tcp, &mut h2, self.cfg.idle_timeout).await;
        tracing::debug!(agent = %self.cfg.name, ?end, up = stats.a_to_b, down = stats.b_to_a, "tunnel: BIND stream done");
    }

    /// The addresses of `host` this agent may send to or connect to on `port`.
    async fn allowed(&self, host: &Host, port: u16) -> Result<Vec<SocketAddr>, OpenError> {
        let name = match host {
            Host::Name(n) => Some(n.clone()),
            Host::Ip(_) => None,
        };
        let ips = self
            .svc
            .connector
            .resolve(host)
            .await
            .map_err(connect_error)?;
        let local = self.svc.local.load();
        let allowed: Vec<SocketAddr> = ips
            .into_iter()
            .filter(|ip| {
                self.allow
                    .check(name.as_deref(), *ip, port, |ip| local.is_own_address(ip))
                    .is_ok()
            })
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        if allowed.is_empty() {
            return Err(OpenError::NotAllowed);
        }
        Ok(allowed)
    }

    /// A UDP relay over one stream: each frame from the relay is a SOCKS5 UDP datagram naming
    /// its destination (checked like a CONNECT's, per datagram); what comes back from an
    /// address a datagram was sent to goes to the relay wrapped with its source. IPv4 and
    /// IPv6 through one dual-stack socket; IPv4 only on a host without IPv6.
    async fn udp(&self, mut h2: H2Stream) {
        use crate::socks::codec::{decode_udp, encode_udp, Target};
        use tokio::io::AsyncReadExt as _;
        let Some((sock, dual)) = udp_socket() else {
            return;
        };
        let mut inbound = bytes::BytesMut::new();
        let mut sent_to: std::collections::HashSet<std::net::IpAddr> = Default::default();
        let mut from_net = vec![0u8; proto::MAX_DATAGRAM];
        let mut out = Vec::new();
        let idle = self.cfg.idle_timeout;
        loop {
            tokio::select! {
                r = tokio::time::timeout(idle, h2.read_buf(&mut inbound)) => {
                    if !matches!(r, Ok(Ok(n)) if n > 0) {
                        return;
                    }
                    while let Some((range, used)) = proto::decode_frame(&inbound) {
                        let datagram = inbound[range].to_vec();
                        let _ = inbound.split_to(used);
                        let Ok((header, at)) = decode_udp(&datagram) else { continue };
                        if header.frag != 0 {
                            continue;
                        }
                        let dest = match self.allowed(&header.target.host, header.target.port).await {
                            Ok(a) => a.into_iter().find(|d| dual || d.is_ipv4()),
                            Err(e) => {
                                tracing::debug!(target = %header.target, error = e.as_str(), "tunnel: UDP datagram dropped");
                                None
                            }
                        };
                        if let Some(dest) = dest {
                            // Bounded: replies are accepted from at most 1024 addresses.
                            if sent_to.len() < 1024 {
                                sent_to.insert(dest.ip());
                            }
                            let _ = sock.send_to(&datagram[at..], on_socket(dest, dual)).await;
                        }
                    }
                    if inbound.len() > 2 + proto::MAX_DATAGRAM {
                        return;
                    }
                }
                r = sock.recv_from(&mut from_net) => {
                    let Ok((n, from)) = r else { return };
                    // An IPv4 source arrives on the dual-stack socket as a mapped address.
                    let from = SocketAddr::new(from.ip().to_canonical(), from.port());
                    if !sent_to.contains(&from.ip()) {
                        continue;
                    }
                    let mut datagram = Vec::with_capacity(n + 10);
                    encode_udp(&Target::ip(from), &from_net[..n], &mut datagram);
                    out.clear();
                    if proto::encode_frame(&datagram, &mut out) && h2.write_all(&out).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    async fn open(&self, what: &Open) -> Result<tokio::net::TcpStream, OpenError> {
        let connector = &self.svc.connector;
        match what {
            Open::Service(name) => {
                let (host, port) = self.cfg.publish.get(name).ok_or(OpenError::NoService)?;
                let h = Host::parse(host).ok_or(OpenError::NoService)?;
                connector
                    .connect(&h, *port)
                    .await
                    .map(|c| c.stream)
                    .map_err(connect_error)
            }
            Open::Udp | Open::Bind { .. } => Err(OpenError::BadRequest),
            Open::Tcp { host, port } => {
                let h = Host::parse(host).ok_or(OpenError::BadRequest)?;
                let name = match &h {
                    Host::Name(n) => Some(n.clone()),
                    Host::Ip(_) => None,
                };
                let ips = connector.resolve(&h).await.map_err(connect_error)?;
                let local = self.svc.local.load();
                let mut allowed = Vec::new();
                let mut refusal = None;
                for ip in ips {
                    match self
                        .allow
                        .check(name.as_deref(), ip, *port, |ip| local.is_own_address(ip))
                    {
                        Ok(()) => allowed.push(SocketAddr::new(ip, *port)),
                        Err(d) => refusal = Some(d),
                    }
                }
                if allowed.is_empty() {
                    let why = match refusal {
                        Some(Denied::Guard(r)) => r.as_str(),
                        _ => "not in the allow-list",
                    };
                    tracing::debug!(target = %what, why, "tunnel: destination refused");
                    return Err(OpenError::NotAllowed);
                }
                connector
                    .connect_addrs(&allowed, &what.to_string())
                    .await
                    .map(|c| c.stream)
                    .map_err(connect_error)
            }
        }
    }
}

/// The agent's UDP socket for one association: dual-stack (`[::]`, IPv4 as mapped
/// addresses, whatever `net.ipv6.bindv6only` says) where the host has IPv6, else `0.0.0.0`.
/// `true` with the dual-stack one.
fn udp_socket() -> Option<(tokio::net::UdpSocket, bool)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let dual = || -> std::io::Result<std::net::UdpSocket> {
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_only_v6(false)?;
        s.bind(&SocketAddr::from(([0u16; 8], 0)).into())?;
        s.set_nonblocking(true)?;
        Ok(s.into())
    };
    let v4 = || -> std::io::Result<std::net::UdpSocket> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.set_nonblocking(true)?;
        Ok(s)
    };
    if let Ok(s) = dual().and_then(tokio::net::UdpSocket::from_std) {
        return Some((s, true));
    }
    v4().and_then(tokio::net::UdpSocket::from_std)
        .ok()
        .map(|s| (s, false))
}

/// `dest` as the UDP socket takes it: an IPv4 address mapped into IPv6 on the dual-stack one.
fn on_socket(dest: SocketAddr, dual: bool) -> SocketAddr {
    match dest {
        SocketAddr::V4(a) if dual => SocketAddr::new(a.ip().to_ipv6_mapped().into(), a.port()),
        other => other,
    }
}

/// The egress proxy's password (`proxy_password` or the first line of
/// `proxy_password_file`), at most 255 bytes (RFC 1929).
pub fn proxy_password(p: &crate::config::Token) -> anyhow::Result<crate::policy::users::Secret> {
    let p = p.load()?;
    let p = p.expose();
    anyhow::ensure!(
        !p.is_empty() && p.len() <= 255,
        "the egress proxy's password must be 1 to 255 bytes"
    );
    Ok(crate::policy::users::Secret::new(p))
}

fn connect_error(e: ConnectError) -> OpenError {
    match e {
        ConnectError::Refused { .. } => OpenError::Refused,
        ConnectError::Unreachable { .. } => OpenError::NetworkUnreachable,
        ConnectError::Dns { .. }
        | ConnectError::DnsTimeout { .. }
        | ConnectError::Timeout { .. } => OpenError::HostUnreachable,
        ConnectError::Io { .. } => OpenError::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_go_where_the_others_are_else_round_their_list() {
        // Nobody connected: the list in order, wrapping (a lone link's failover).
        let none = [0, 0, 0];
        let order: Vec<usize> = [0, 1, 2, 3, 4].map(|n| next_relay(&none, n)).to_vec();
        assert_eq!(order, [0, 1, 2, 0, 1]);
        // Others of this agent on the second relay: that one, whatever comes next.
        for n in 0..4 {
            assert_eq!(next_relay(&[0, 2, 0], n), 1);
        }
        assert_eq!(next_relay(&[1], 5), 0);
        assert_eq!(next_relay(&[], 3), 0);
    }

    #[test]
    fn ipv4_destinations_are_mapped_on_the_dual_stack_socket_only() {
        let v4: SocketAddr = "10.0.0.5:53".parse().expect("v4");
        let v6: SocketAddr = "[fd00::5]:53".parse().expect("v6");
        assert_eq!(
            on_socket(v4, true),
            "[::ffff:10.0.0.5]:53".parse().expect("mapped")
        );
        assert_eq!(on_socket(v4, false), v4);
        assert_eq!(on_socket(v6, true), v6);
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let (min, max) = (Duration::from_millis(500), Duration::from_secs(8));
        let mut prev = Duration::ZERO;
        let mut bases = Vec::new();
        for _ in 0..7 {
            let (base, sleep) = backoff(prev, min, max, 1.0);
            assert!(sleep >= base && sleep <= base + base / 2);
            bases.push(base.as_millis());
            prev = base;
        }
        assert_eq!(bases, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(backoff(Duration::ZERO, min, max, 0.0).1, min);
    }
}
