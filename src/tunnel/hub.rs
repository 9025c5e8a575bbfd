//! The relay's side: the tunnel listener that takes agents in, and [`Agents`], the registry
//! the SOCKS and published listeners open streams through.
//!
//! One agent connection, from accept to close:
//! TLS handshake -> hello (name, token; within `handshake_timeout`) -> answer byte -> HTTP/2
//! client handshake -> registered under its name -> pinged every `heartbeat` (no answer in
//! `dead_after`: closed) -> removed. A protocol error from the agent (bad frames, a flood)
//! ends that connection only; its streams fail and the listeners answer their clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::proto::{self, HelloReply, Open, OpenError};
use super::stream::H2Stream;
use crate::config::{Password, TunnelListenerConfig};
use crate::server::Services;

/// Stream opens a client's connection may try among the agents of a pool before it fails:
/// HAProxy's default `retries 3` (each open bounded by the connect timeout).
pub const POOL_TRIES: usize = 3;

/// Which of a pool's agents takes the next stream: the fewest streams open (HAProxy's
/// `leastconn`, so a slow or busy agent gets fewer), ties broken in turn from `turn` so
/// idle agents still alternate. `loads`: each agent's streams open, `None` for one not to
/// take (tried already).
pub fn least_streams(
    loads: impl ExactSizeIterator<Item = Option<u64>>,
    turn: usize,
) -> Option<usize> {
    let loads: Vec<Option<u64>> = loads.collect();
    let n = loads.len();
    (0..n)
        .map(|k| (turn + k) % n)
        .filter_map(|i| loads[i].map(|open| (open, i)))
        .min_by_key(|&(open, _)| open)
        .map(|(_, i)| i)
}

/// One connected agent.
pub struct AgentConn {
    pub id: u64,
    pub name: Arc<str>,
    pub peer: SocketAddr,
    pub since: SystemTime,
    send: h2::client::SendRequest<Bytes>,
    /// Streams open now, and opened in total.
    pub streams_open: AtomicU64,
    pub streams_total: AtomicU64,
    /// Payload bytes relayed to and from the agent.
    pub bytes_to: AtomicU64,
    pub bytes_from: AtomicU64,
}

/// A connected agent's figures, for the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentInfo {
    pub name: String,
    pub peer: String,
    pub connected_secs: u64,
    pub streams_open: u64,
    pub streams_total: u64,
    pub bytes_to_agent: u64,
    pub bytes_from_agent: u64,
}

/// Connected agents by name (several under one name when it is a pool).
#[derive(Default)]
pub struct Agents {
    /// `gatehouse_tunnel_streams_open`.
    gauge: prometheus_client::metrics::gauge::Gauge,
    map: Mutex<HashMap<Arc<str>, Vec<Arc<AgentConn>>>>,
    next_id: AtomicU64,
    turn: AtomicUsize,
}

/// A stream through an agent, counted open until dropped.
pub struct Opened {
    pub stream: H2Stream,
    /// A BIND's listening address at the agent (its `gatehouse-bound` answer).
    pub bound: Option<SocketAddr>,
    pub agent: Arc<AgentConn>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.agent.streams_open.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

impl Opened {
    /// Adds a finished relay's byte counts (client -> agent, agent -> client).
    pub fn count(&self, to: u64, from: u64) {
        self.agent.bytes_to.fetch_add(to, Ordering::Relaxed);
        self.agent.bytes_from.fetch_add(from, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Agents {
    pub fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> Agents {
        Agents {
            gauge,
            ..Agents::default()
        }
    }

    /// Whether `name` may connect now: not while another holds it, unless it is a pool.
    fn vacant(&self, name: &str, pool: bool) -> bool {
        pool || lock(&self.map).get(name).is_none_or(|v| v.is_empty())
    }

    fn register(&self, conn: Arc<AgentConn>, pool: bool) -> bool {
        let mut map = lock(&self.map);
        let list = map.entry(conn.name.clone()).or_default();
        if !pool && !list.is_empty() {
            return false;
        }
        list.push(conn);
        true
    }

    fn remove(&self, name: &str, id: u64) {
        let mut map = lock(&self.map);
        if let Some(list) = map.get_mut(name) {
            list.retain(|c| c.id != id);
            if list.is_empty() {
                map.remove(name);
            }
        }
    }

    /// The connected agents' figures, by name.
    pub fn list(&self) -> Vec<AgentInfo> {
        let map = lock(&self.map);
        let mut out: Vec<AgentInfo> = map
            .values()
            .flatten()
            .map(|c| AgentInfo {
                name: c.name.to_string(),
                peer: c.peer.to_string(),
                connected_secs: c.since.elapsed().map_or(0, |d| d.as_secs()),
                streams_open: c.streams_open.load(Ordering::Relaxed),
                streams_total: c.streams_total.load(Ordering::Relaxed),
                bytes_to_agent: c.bytes_to.load(Ordering::Relaxed),
                bytes_from_agent: c.bytes_from.load(Ordering::Relaxed),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.peer.cmp(&b.peer)));
        out
    }

    /// How many agent connections are up.
    pub fn connected(&self) -> usize {
        lock(&self.map).values().map(Vec::len).sum()
    }

    /// One of the agents connected under `name`, none of the connections `not`: the one
    /// with the fewest streams open, ties taken in turn ([`least_streams`]).
    fn pick(&self, name: &str, not: &[u64]) -> Option<Arc<AgentConn>> {
        let map = lock(&self.map);
        let list = map.get(name)?;
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let loads = list.iter().map(|c| {
            let open = c.streams_open.load(Ordering::Relaxed);
            (!not.contains(&c.id)).then_some(open)
        });
        least_streams(loads, turn).map(|i| list[i].clone())
    }

    /// Whether an agent is connected under `name` now.
    pub fn is_connected(&self, name: &str) -> bool {
        lock(&self.map).get(name).is_some_and(|v| !v.is_empty())
    }

    /// Opens `what` through agent `name`, waiting at most `timeout` for its answer. No agent
    /// connected: [`OpenError::NetworkUnreachable`].
    pub async fn open(
        &self,
        name: &str,
        what: &Open,
        timeout: Duration,
    ) -> Result<Opened, OpenError> {
        let agent = self.pick(name, &[]).ok_or(OpenError::NetworkUnreachable)?;
        self.open_at(agent, what, timeout).await
    }

    /// [`Agents::open_retrying`] with [`POOL_TRIES`]: what published ports, SOCKS and HTTP
    /// CONNECTs and absolute-URI requests through an agent use. Under a pool name a failed
    /// open goes to another agent (nothing of the client's bytes went anywhere yet); under
    /// a single agent's name it is one try, as [`Agents::open`].
    pub async fn open_failover(
        &self,
        name: &str,
        what: &Open,
        timeout: Duration,
    ) -> Result<Opened, OpenError> {
        self.open_retrying(name, what, timeout, POOL_TRIES).await
    }

    /// [`Agents::open`], and after a failed open another agent connected under `name` (a
    /// pool), up to `tries` opens in all, each on a connection not tried yet. Nothing of the
    /// client's request has gone anywhere before a stream is open, so any failure the next
    /// agent may not share is worth another try ([`OpenError::retry_elsewhere`]). The last
    /// failure is returned.
    pub async fn open_retrying(
        &self,
        name: &str,
        what: &Open,
        timeout: Duration,
        tries: usize,
    ) -> Result<Opened, OpenError> {
        let mut tried: Vec<u64> = Vec::new();
        let mut last = OpenError::NetworkUnreachable;
        while tried.len() < tries.max(1) {
            let Some(agent) = self.pick(name, &tried) else {
                break;
            };
            tried.push(agent.id);
            match self.open_at(agent, what, timeout).await {
                Ok(o) => return Ok(o),
                Err(e) => {
                    tracing::debug!(agent = %name, tries = tried.len(), "tunnel: open failed: {e}");
                    last = e;
                    if !e.retry_elsewhere() {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    /// Opens `what` on one agent connection.
    pub async fn open_at(
        &self,
        agent: Arc<AgentConn>,
        what: &Open,
        timeout: Duration,
    ) -> Result<Opened, OpenError> {
        agent.streams_open.fetch_add(1, Ordering::Relaxed);
        agent.streams_total.fetch_add(1, Ordering::Relaxed);
        // From here on the count is undone by Opened's drop, or below on failure.
        let result = tokio::time::timeout(timeout, open_on(&agent.send, what)).await;
        match result {
            Ok(Ok((stream, bound))) => {
                self.gauge.inc();
                Ok(Opened {
                    stream,
                    bound,
                    agent,
                    gauge: self.gauge.clone(),
                })
            }
            Ok(Err(e)) => {
                agent.streams_open.fetch_sub(1, Ordering::Relaxed);
                Err(e)
            }
            Err(_) => {
                agent.streams_open.fetch_sub(1, Ordering::Relaxed);
                Err(OpenError::HostUnreachable)
            }
        }
    }
}

async fn open_on(
    send: &h2::client::SendRequest<Bytes>,
    what: &Open,
) -> Result<(H2Stream, Option<SocketAddr>), OpenError> {
    let req = what.to_request().map_err(|_| OpenError::BadRequest)?;
    let mut send = send.clone().ready().await.map_err(|e| {
        tracing::debug!("tunnel: agent connection not ready: {e}");
        OpenError::Failed
    })?;
    let (response, body) = send.send_request(req, false).map_err(|e| {
        tracing::debug!("tunnel: cannot open a stream: {e}");
        OpenError::Failed
    })?;
    let response = response.await.map_err(|e| {
        tracing::debug!("tunnel: stream failed before its answer: {e}");
        OpenError::Failed
    })?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(OpenError::from_status(status));
    }
    let bound = response
        .headers()
        .get(proto::BOUND_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    Ok((H2Stream::new(body, response.into_body()), bound))
}

/// A `kind = "tunnel"` listener.
pub struct TunnelListener {
    pub name: Arc<str>,
    pub cfg: TunnelListenerConfig,
    pub svc: Arc<Services>,
    /// `None` with `transport = "tcp"` (plain).
    pub tls: Option<TlsAcceptor>,
    /// The accepted agents' tokens, loaded at start.
    pub tokens: Vec<(String, Password, bool)>,
}

/// Why an agent connection ended, for the log.
#[derive(Debug)]
enum End {
    Refused(&'static str),
    Closed(String),
    Dead,
    Draining,
}

impl TunnelListener {
    pub fn new(
        name: Arc<str>,
        cfg: TunnelListenerConfig,
        svc: Arc<Services>,
    ) -> anyhow::Result<TunnelListener> {
        let tls = match &cfg.tls {
            Some(files) => Some(super::tls::acceptor(&files.cert, &files.key)?),
            None => {
                tracing::warn!(listener = %name, "tunnel: transport = \"tcp\": agents' tokens and every stream travel IN THE CLEAR on this listener; use it only on a link already protected (WireGuard, IPsec, loopback)");
                None
            }
        };
        let mut tokens = Vec::new();
        for a in &cfg.agents {
            tokens.push((a.name.clone(), a.token.load()?, a.pool));
        }
        Ok(TunnelListener {
            name,
            cfg,
            svc,
            tls,
            tokens,
        })
    }

    /// Serves one agent connection until it ends.
    pub async fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let end = self.session(stream, peer).await;
        match end {
            End::Refused(why) => {
                tracing::info!(listener = %self.name, %peer, reason = why, "tunnel: agent refused")
            }
            other => tracing::debug!(listener = %self.name, %peer, "tunnel: {other:?}"),
        }
    }

    /// The accepted agent's name and pool flag, or why not. Every configured token is
    /// compared (in constant time each), so timing tells nothing about names or tokens.
    fn authenticate(&self, hello: &proto::Hello) -> Option<(String, bool)> {
        let mut found = None;
        for (name, token, pool) in &self.tokens {
            let token_ok = token.matches(&hello.token);
            if token_ok && name == &hello.name {
                found = Some((name.clone(), *pool));
            }
        }
        found
    }

    async fn session(&self, mut stream: TcpStream, peer: SocketAddr) -> End {
        // The first byte tells a TLS ClientHello from the plain hello: an agent whose
        // `transport` differs from this listener's is refused with a clear reason (and, when
        // it speaks plain TCP to a TLS listener, told so in one byte it can read).
        let first = async {
            let mut b = [0u8; 1];
            match stream.peek(&mut b).await {
                Ok(1) => Ok(proto::sniff(b[0])),
                _ => Err(End::Refused("bad_hello")),
            }
        };
        let first = match tokio::time::timeout(self.cfg.handshake_timeout, first).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => return e,
            Err(_) => return End::Refused("handshake_timeout"),
        };
        match (&self.tls, first) {
            (Some(_), proto::FirstByte::Plain) => {
                // The hello is read (bounded, timed) so that closing sends FIN, not RST,
                // and the one-byte answer reaches the agent.
                let hello =
                    tokio::time::timeout(self.cfg.handshake_timeout, read_hello(&mut stream));
                let agent = match hello.await {
                    Ok(Ok(h)) => h.name,
                    _ => "?".into(),
                };
                tracing::warn!(listener = %self.name, %peer, %agent, "tunnel: agent refused: it speaks plain TCP (`transport = \"tcp\"`), this listener wants TLS");
                let _ = stream.write_all(&[HelloReply::WantsTls as u8]).await;
                let _ = stream.shutdown().await;
                End::Refused("transport_mismatch")
            }
            (Some(acceptor), _) => {
                let handshake = async {
                    let stream =
                        tokio::io::BufReader::with_capacity(super::TLS_READ_BUFFER, stream);
                    let mut tls = acceptor.accept(stream).await.map_err(|e| {
                        tracing::debug!(%peer, "tunnel: TLS handshake failed: {e}");
                        End::Refused("tls_error")
                    })?;
                    tls.get_mut()
                        .1
                        .set_buffer_limit(Some(super::TLS_WRITE_BUFFER));
                    let hello = read_hello(&mut tls)
                        .await
                        .map_err(|_| End::Refused("bad_hello"))?;
                    Ok::<_, End>((tls, hello))
                };
                match tokio::time::timeout(self.cfg.handshake_timeout, handshake).await {
                    Ok(Ok((tls, hello))) => self.admit(tls, hello, peer).await,
                    Ok(Err(e)) => e,
                    Err(_) => End::Refused("handshake_timeout"),
                }
            }
            (None, proto::FirstByte::Tls) => {
                tracing::warn!(listener = %self.name, %peer, "tunnel: agent refused: it speaks TLS, this listener has `transport = \"tcp\"` (plain)");
                // Its ClientHello is taken (one bounded read) so that closing sends FIN, not
                // RST: the agent sees the close and says why.
                let mut sink = vec![0u8; 16 * 1024];
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut sink)).await;
                let _ = stream.shutdown().await;
                End::Refused("transport_mismatch")
            }
            (None, _) => {
                let hello = read_hello(&mut stream);
                match tokio::time::timeout(self.cfg.handshake_timeout, hello).await {
                    Ok(Ok(hello)) => self.admit(stream, hello, peer).await,
                    Ok(Err(_)) => End::Refused("bad_hello"),
                    Err(_) => End::Refused("handshake_timeout"),
                }
            }
        }
    }

    /// After the hello: the credentials, the answer, HTTP/2, and the agent's registration
    /// until its connection ends.
    async fn admit<S>(&self, mut tls: S, hello: proto::Hello, peer: SocketAddr) -> End
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let agents = &self.svc.agents;
        let Some((name, pool)) = self.authenticate(&hello) else {
            let _ = tls.write_all(&[HelloReply::BadCredentials as u8]).await;
            let _ = tls.shutdown().await;
            tracing::info!(listener = %self.name, %peer, agent = %hello.name, "tunnel: agent refused: bad name or token");
            return End::Refused("bad_credentials");
        };
        if !agents.vacant(&name, pool) {
            let _ = tls.write_all(&[HelloReply::Duplicate as u8]).await;
            let _ = tls.shutdown().await;
            tracing::info!(listener = %self.name, %peer, agent = %name, "tunnel: agent refused: the name is already connected");
            return End::Refused("duplicate");
        }
        let accepted = async {
            tls.write_all(&[HelloReply::Accepted as u8]).await?;
            tls.flush().await
        };
        if accepted.await.is_err() {
            return End::Closed("write failed".into());
        }
        let h2 = super::h2_client().handshake::<_, Bytes>(tls);
        let (send, mut conn) = match tokio::time::timeout(self.cfg.handshake_timeout, h2).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return End::Closed(format!("HTTP/2 handshake: {e}")),
            Err(_) => return End::Refused("handshake_timeout"),
        };
        let ping = conn.ping_pong();
        let id = agents.next_id.fetch_add(1, Ordering::Relaxed);
        let agent = Arc::new(AgentConn {
            id,
            name: Arc::from(name.as_str()),
            peer,
            since: SystemTime::now(),
            send,
            streams_open: AtomicU64::new(0),
            streams_total: AtomicU64::new(0),
            bytes_to: AtomicU64::new(0),
            bytes_from: AtomicU64::new(0),
        });
        if !agents.register(agent.clone(), pool) {
            return End::Refused("duplicate");
        }
        self.svc.metrics.tunnel_agents.inc();
        tracing::info!(listener = %self.name, %peer, agent = %name, "tunnel: agent connected");
        let end = tokio::select! {
            r = &mut conn => match r {
                Ok(()) => End::Closed("closed by the agent".into()),
                Err(e) => End::Closed(e.to_string()),
            },
            _ = heartbeat(ping, self.cfg.heartbeat, self.cfg.dead_after) => End::Dead,
            _ = self.svc.shutdown.draining() => End::Draining,
        };
        if matches!(end, End::Draining) {
            // The streams in flight finish first (the drain deadline bounds them): the
            // connection is driven until none is open, or it ends.
            let settled = async {
                while agent.streams_open.load(Ordering::Relaxed) > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            tokio::select! {
                _ = &mut conn => {}
                _ = settled => {}
            }
        }
        agents.remove(&name, id);
        self.svc.metrics.tunnel_agents.dec();
        let reason = match &end {
            End::Closed(why) => why.clone(),
            End::Dead => format!("no answer to a ping within {:?}", self.cfg.dead_after),
            End::Draining => "draining".into(),
            End::Refused(why) => why.to_string(),
        };
        tracing::info!(listener = %self.name, %peer, agent = %name, %reason, "tunnel: agent disconnected");
        end
    }
}

/// Reads exactly one hello (never past it: the bytes after it are HTTP/2).
async fn read_hello<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> std::io::Result<proto::Hello> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad hello");
    let mut buf = vec![0u8; proto::MAGIC.len() + 1];
    s.read_exact(&mut buf).await?;
    loop {
        match proto::decode_hello(&buf) {
            Ok((h, _)) => return Ok(h),
            Err(proto::HelloError::Incomplete) => {}
            Err(_) => return Err(bad()),
        }
        // What the decoder needs next: the name and the token length, then the token.
        let at = proto::MAGIC.len() + 1;
        let name_len = usize::from(buf[proto::MAGIC.len()]);
        let want = if buf.len() < at + name_len + 2 {
            at + name_len + 2
        } else {
            let l = &buf[at + name_len..at + name_len + 2];
            at + name_len + 2 + usize::from(u16::from_be_bytes([l[0], l[1]]))
        };
        if want <= buf.len() {
            return Err(bad());
        }
        let old = buf.len();
        buf.resize(want, 0);
        s.read_exact(&mut buf[old..]).await?;
    }
}

/// Pings every `every`; returns when a ping goes unanswered for `dead_after` (or pinging
/// fails: the connection is gone).
pub async fn heartbeat(ping: Option<h2::PingPong>, every: Duration, dead_after: Duration) {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match tokio::time::timeout(dead_after, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!("tunnel: ping failed: {e}");
                return;
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod pick_tests {
    use super::least_streams;

    #[test]
    fn the_agent_with_fewest_streams_takes_the_next() {
        let loads = [Some(4), Some(1), Some(3)];
        for turn in 0..6 {
            assert_eq!(least_streams(loads.into_iter(), turn), Some(1));
        }
    }

    #[test]
    fn ties_go_in_turn_and_tried_agents_are_skipped() {
        let idle = [Some(0), Some(0), Some(0)];
        let picks: Vec<_> = (0..6).map(|t| least_streams(idle.into_iter(), t)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2].map(Some));
        let tried = [None, Some(5), None];
        assert_eq!(least_streams(tried.into_iter(), 0), Some(1));
        assert_eq!(least_streams([None, None].into_iter(), 3), None);
        assert_eq!(least_streams(std::iter::empty::<Option<u64>>(), 0), None);
    }
}
