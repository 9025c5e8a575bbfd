//! The relay's side: the tunnel listener that takes agents in, and [`Agents`], the registry
//! the SOCKS and published listeners open streams through.
//!
//! One agent connection (a "link"; an agent with `connections = N` keeps N, each with the
//! same session id in its hello), from accept to close:
//! TLS handshake -> hello (name, token, session; within `handshake_timeout`) -> admission
//! ([`admission`]: a new agent, another link of a connected one, a duplicate, or one link too
//! many) -> answer byte -> HTTP/2 client handshake -> registered under its name -> pinged
//! every `heartbeat` (no answer in `dead_after`: closed) -> removed. A protocol error from the agent (bad frames, a flood)
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

/// What the relay does with an authenticated hello under a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A new agent under the name (the first, or another one of a pool).
    New,
    /// Another link of an agent connected already (the same session id).
    Join,
    /// Another agent holds the name (and it is not a pool).
    Duplicate,
    /// The agent has `max_links` links here already.
    TooManyLinks,
    /// The agent redialled a link the relay still holds ([`stale_link`]): the new one takes
    /// its place.
    Replace,
}

/// A link's session id and index (from a `GHTUN2` hello).
pub type LinkKey = ([u8; proto::SESSION_LEN], u8);

/// Which connected link a hello with `key` makes stale: the one with the same session and
/// index. An agent dials link N again only after its link N ended, so a relay still holding
/// one has not seen it go yet (a half-open connection, a heartbeat not yet missed).
pub fn stale_link(
    connected: impl Iterator<Item = Option<LinkKey>>,
    key: Option<LinkKey>,
) -> Option<usize> {
    let key = key?;
    connected.into_iter().position(|c| c == Some(key))
}

/// Whether a hello carrying `session` (`None`: a one-link agent) may connect under a name
/// whose connected links carry `connected`: a link of a session connected already joins it
/// (up to `max_links`); any other agent needs the name free, or a pool.
pub fn admission(
    connected: impl Iterator<Item = Option<[u8; proto::SESSION_LEN]>>,
    session: Option<&[u8; proto::SESSION_LEN]>,
    pool: bool,
    max_links: usize,
) -> Admission {
    let (mut any, mut same) = (false, 0usize);
    for s in connected {
        any = true;
        if session.is_some() && s.as_ref() == session {
            same += 1;
        }
    }
    match (same, any) {
        (0, true) if !pool => Admission::Duplicate,
        (0, _) => Admission::New,
        (n, _) if n >= max_links => Admission::TooManyLinks,
        _ => Admission::Join,
    }
}

/// One link connected under a name, for [`pick_link`]: the agent it belongs to, its streams
/// open, whether it may take this stream (not tried yet), and whether the thread asking
/// drives it (`[runtime] per_core`: the link's event loop is this worker's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkLoad {
    pub agent: u64,
    pub open: u64,
    pub eligible: bool,
    pub local: bool,
}

/// Which link takes the next stream: first the agent with the fewest streams open over all
/// its links (so an agent with four links gets no more than one with one), then its eligible
/// link with the fewest, ties in turn at both levels ([`least_streams`]). Among that agent's
/// links, those driven by the asking thread come first: a stream there wakes no other
/// thread for its frames (the connection was handed to this worker for it).
pub fn pick_link(links: &[LinkLoad], turn: usize) -> Option<usize> {
    // (agent, streams open over its links, has an eligible link), in order of appearance.
    let mut agents: Vec<(u64, u64, bool)> = Vec::new();
    for l in links {
        match agents.iter_mut().find(|a| a.0 == l.agent) {
            Some(a) => {
                a.1 = a.1.saturating_add(l.open);
                a.2 |= l.eligible;
            }
            None => agents.push((l.agent, l.open, l.eligible)),
        }
    }
    let n = agents.len();
    let chosen = agents[least_streams(agents.iter().map(|a| a.2.then_some(a.1)), turn)?].0;
    let mut members: Vec<usize> = (0..links.len())
        .filter(|&i| links[i].agent == chosen)
        .collect();
    if members.iter().any(|&i| links[i].eligible && links[i].local) {
        members.retain(|&i| links[i].local);
    }
    let loads = members
        .iter()
        .map(|&i| links[i].eligible.then_some(links[i].open));
    // The agents took turns first: each of their links gets its turn every n picks.
    least_streams(loads, turn / n.max(1)).map(|k| members[k])
}

/// One connected link of an agent (an agent with `connections = N` has N of them).
pub struct AgentConn {
    pub id: u64,
    pub name: Arc<str>,
    pub peer: SocketAddr,
    pub since: SystemTime,
    /// The agent's session id (`None`: a one-link agent).
    pub session: Option<[u8; proto::SESSION_LEN]>,
    /// Its index among the agent's links (`None`: a one-link agent).
    pub index: Option<u8>,
    /// Cancelled when a new link of the agent replaces it ([`stale_link`]).
    pub replaced: tokio_util::sync::CancellationToken,
    /// Which agent it is a link of: the id of that agent's first link.
    pub agent: u64,
    /// The per-core worker whose event loop drives it (`[runtime] per_core`), else `None`.
    pub home: Option<usize>,
    send: h2::client::SendRequest<Bytes>,
    /// Streams open now, and opened in total.
    pub streams_open: AtomicU64,
    pub streams_total: AtomicU64,
    /// Payload bytes relayed to and from the agent.
    pub bytes_to: AtomicU64,
    pub bytes_from: AtomicU64,
}

/// A connected agent's figures, for the admin API (sums over its links).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentInfo {
    pub name: String,
    /// Its first link's peer.
    pub peer: String,
    /// Since its oldest link connected.
    pub connected_secs: u64,
    pub streams_open: u64,
    pub streams_total: u64,
    pub bytes_to_agent: u64,
    pub bytes_from_agent: u64,
    /// Links connected (its `connections`, when all are up).
    pub links: usize,
    /// Each link's figures, oldest first.
    pub per_link: Vec<LinkInfo>,
}

/// One link's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LinkInfo {
    pub peer: String,
    /// The per-core worker driving it (`[runtime] per_core`), else `None`.
    pub worker: Option<usize>,
    pub connected_secs: u64,
    pub streams_open: u64,
    pub streams_total: u64,
    pub bytes_to_agent: u64,
    pub bytes_from_agent: u64,
}

impl AgentConn {
    fn info(&self) -> LinkInfo {
        LinkInfo {
            peer: self.peer.to_string(),
            worker: self.home,
            connected_secs: self.since.elapsed().map_or(0, |d| d.as_secs()),
            streams_open: self.streams_open.load(Ordering::Relaxed),
            streams_total: self.streams_total.load(Ordering::Relaxed),
            bytes_to_agent: self.bytes_to.load(Ordering::Relaxed),
            bytes_from_agent: self.bytes_from.load(Ordering::Relaxed),
        }
    }
}

/// Connected links by name (several agents under one name when it is a pool, several links
/// of one agent when it keeps `connections` > 1).
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
    /// Whether a keep-alive pool may keep this stream after its exchange
    /// ([`super::may_keep_idle`] of its link).
    pub fn keepable(&self) -> bool {
        super::may_keep_idle(self.agent.streams_open.load(Ordering::Relaxed))
    }

    /// Adds a finished relay's byte counts (client -> agent, agent -> client).
    pub fn count(&self, to: u64, from: u64) {
        self.agent.bytes_to.fetch_add(to, Ordering::Relaxed);
        self.agent.bytes_from.fetch_add(from, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Who is asking to connect: the name accepted, its entry's `pool` and `max_links`, and the
/// hello's session id.
struct Applicant<'a> {
    name: &'a str,
    pool: bool,
    max_links: usize,
    session: Option<[u8; proto::SESSION_LEN]>,
    index: Option<u8>,
}

impl Applicant<'_> {
    fn key(&self) -> Option<LinkKey> {
        Some((self.session?, self.index?))
    }
}

impl AgentConn {
    fn key(&self) -> Option<LinkKey> {
        Some((self.session?, self.index?))
    }
}

impl Agents {
    pub fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> Agents {
        Agents {
            gauge,
            ..Agents::default()
        }
    }

    /// Whether `who` may connect now ([`admission`]).
    fn admission(&self, who: &Applicant<'_>) -> Admission {
        let map = lock(&self.map);
        let list = map.get(who.name).map_or(&[][..], Vec::as_slice);
        if stale_link(list.iter().map(|c| c.key()), who.key()).is_some() {
            return Admission::Replace;
        }
        let connected = list.iter().map(|c| c.session);
        admission(connected, who.session.as_ref(), who.pool, who.max_links)
    }

    /// Registers a link made by `make` (given its id and its agent's), if [`admission`] still
    /// lets it in (another link may have come in meanwhile).
    fn register(
        &self,
        who: &Applicant<'_>,
        make: impl FnOnce(u64, u64) -> AgentConn,
    ) -> Result<(Arc<AgentConn>, Admission), Admission> {
        let mut map = lock(&self.map);
        let list = map.entry(Arc::from(who.name)).or_default();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = stale_link(list.iter().map(|c| c.key()), who.key()) {
            // Out of the list now (its session task ends and finds it gone), so it neither
            // counts toward `max_links` nor takes streams; its agent is the new link's.
            let old = list.remove(i);
            old.replaced.cancel();
            let conn = Arc::new(make(id, old.agent));
            list.push(conn.clone());
            return Ok((conn, Admission::Replace));
        }
        let connected = list.iter().map(|c| c.session);
        let verdict = admission(connected, who.session.as_ref(), who.pool, who.max_links);
        let agent = match verdict {
            Admission::New => id,
            Admission::Join | Admission::Replace => list
                .iter()
                .find(|c| c.session.is_some() && c.session == who.session)
                .map_or(id, |c| c.agent),
            refused => {
                if list.is_empty() {
                    map.remove(who.name);
                }
                return Err(refused);
            }
        };
        let conn = Arc::new(make(id, agent));
        list.push(conn.clone());
        Ok((conn, verdict))
    }

    /// Removes a link; whether it was its agent's last (never for a link replaced already,
    /// which is out of the list).
    fn remove(&self, conn: &AgentConn) -> bool {
        let mut map = lock(&self.map);
        let Some(list) = map.get_mut(&*conn.name) else {
            return false;
        };
        let before = list.len();
        list.retain(|c| c.id != conn.id);
        let last = list.len() < before && !list.iter().any(|c| c.agent == conn.agent);
        if list.is_empty() {
            map.remove(&*conn.name);
        }
        last
    }

    /// The connected agents' figures (one entry per agent, its links summed), by name.
    pub fn list(&self) -> Vec<AgentInfo> {
        let map = lock(&self.map);
        let mut out: Vec<AgentInfo> = Vec::new();
        for list in map.values() {
            let mut agents: Vec<u64> = list.iter().map(|c| c.agent).collect();
            agents.sort_unstable();
            agents.dedup();
            for agent in agents {
                let mut links: Vec<&Arc<AgentConn>> =
                    list.iter().filter(|c| c.agent == agent).collect();
                links.sort_by_key(|c| c.id);
                let per_link: Vec<LinkInfo> = links.iter().map(|c| c.info()).collect();
                let sum = |f: fn(&LinkInfo) -> u64| per_link.iter().map(f).sum::<u64>();
                out.push(AgentInfo {
                    name: links
                        .first()
                        .map_or_else(String::new, |c| c.name.to_string()),
                    peer: per_link
                        .first()
                        .map_or_else(String::new, |l| l.peer.clone()),
                    connected_secs: per_link.iter().map(|l| l.connected_secs).max().unwrap_or(0),
                    streams_open: sum(|l| l.streams_open),
                    streams_total: sum(|l| l.streams_total),
                    bytes_to_agent: sum(|l| l.bytes_to_agent),
                    bytes_from_agent: sum(|l| l.bytes_from_agent),
                    links: per_link.len(),
                    per_link,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.peer.cmp(&b.peer)));
        out
    }

    /// How many agent links are up.
    pub fn connected(&self) -> usize {
        lock(&self.map).values().map(Vec::len).sum()
    }

    /// One of the links connected under `name`, none of the links `not` nor of the agents
    /// `not_agents` ([`pick_link`]).
    fn pick(&self, name: &str, not: &[u64], not_agents: &[u64]) -> Option<Arc<AgentConn>> {
        let map = lock(&self.map);
        let list = map.get(name)?;
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let here = crate::workers::current();
        let loads: Vec<LinkLoad> = list
            .iter()
            .map(|c| LinkLoad {
                agent: c.agent,
                open: c.streams_open.load(Ordering::Relaxed),
                eligible: !not.contains(&c.id) && !not_agents.contains(&c.agent),
                local: c.home.is_some() && c.home == here,
            })
            .collect();
        pick_link(&loads, turn).map(|i| list[i].clone())
    }

    /// The per-core workers that drive links connected under `name` (none without
    /// `[runtime] per_core`): where a connection for that name is best served.
    pub fn homes(&self, name: &str) -> Vec<usize> {
        let map = lock(&self.map);
        let mut homes: Vec<usize> = map
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|c| c.home)
            .collect();
        homes.sort_unstable();
        homes.dedup();
        homes
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
        let agent = self
            .pick(name, &[], &[])
            .ok_or(OpenError::NetworkUnreachable)?;
        self.open_at(agent, what, timeout).await
    }

    /// [`Agents::open_retrying`] with [`POOL_TRIES`]: what published ports, SOCKS (CONNECT,
    /// BIND, UDP ASSOCIATE), HTTP CONNECTs and absolute-URI requests through an agent use. Under a pool name a failed
    /// open goes to another agent (nothing of the client's bytes went anywhere yet); under
    /// a single agent's name it is one try, as [`Agents::open`], unless the link itself
    /// failed and the agent has another.
    pub async fn open_failover(
        &self,
        name: &str,
        what: &Open,
        timeout: Duration,
    ) -> Result<Opened, OpenError> {
        self.open_retrying(name, what, timeout, POOL_TRIES).await
    }

    /// [`Agents::open`], and after a failed open another agent connected under `name` (a
    /// pool), up to `tries` opens in all, each on a link not tried yet. Nothing of the
    /// client's request has gone anywhere before a stream is open, so any failure the next
    /// agent may not share is worth another try ([`OpenError::retry_elsewhere`]). An agent
    /// that answered the open itself (refused, unreachable, timed out) is not asked again on
    /// another of its links; a link that failed as a connection ([`OpenError::Failed`]: reset,
    /// gone) leaves the agent's other links eligible. The last failure is returned.
    pub async fn open_retrying(
        &self,
        name: &str,
        what: &Open,
        timeout: Duration,
        tries: usize,
    ) -> Result<Opened, OpenError> {
        let mut tried: Vec<u64> = Vec::new();
        // Agents that answered for themselves (refused, timed out): their other links would
        // too. A link that failed as a connection ([`OpenError::Failed`]) rules out only
        // itself.
        let mut answered: Vec<u64> = Vec::new();
        let mut last = OpenError::NetworkUnreachable;
        while tried.len() < tries.max(1) {
            let Some(link) = self.pick(name, &tried, &answered) else {
                break;
            };
            tried.push(link.id);
            let agent_id = link.agent;
            match self.open_at(link, what, timeout).await {
                Ok(o) => return Ok(o),
                Err(e) => {
                    tracing::debug!(agent = %name, tries = tried.len(), "tunnel: open failed: {e}");
                    if e != OpenError::Failed {
                        answered.push(agent_id);
                    }
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
    /// The accepted agents' tokens, loaded at start, with their `pool` and `max_links`.
    pub tokens: Vec<(String, Password, bool, u8)>,
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
            tokens.push((a.name.clone(), a.token.load()?, a.pool, a.max_links));
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

    /// The accepted agent's name, pool flag and `max_links`, or why not. Every configured
    /// token is compared (in constant time each), so timing tells nothing about names or
    /// tokens.
    fn authenticate(&self, hello: &proto::Hello) -> Option<(String, bool, u8)> {
        let mut found = None;
        for (name, token, pool, max_links) in &self.tokens {
            let token_ok = token.matches(&hello.token);
            if token_ok && name == &hello.name {
                found = Some((name.clone(), *pool, *max_links));
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
        let Some((name, pool, max_links)) = self.authenticate(&hello) else {
            let _ = tls.write_all(&[HelloReply::BadCredentials as u8]).await;
            let _ = tls.shutdown().await;
            tracing::info!(listener = %self.name, %peer, agent = %hello.name, "tunnel: agent refused: bad name or token");
            return End::Refused("bad_credentials");
        };
        let who = Applicant {
            name: &name,
            pool,
            max_links: usize::from(max_links),
            session: hello.link.map(|l| l.session),
            index: hello.link.map(|l| l.index),
        };
        let link = hello.link.map_or(1, |l| l.index + 1);
        let refuse = |verdict: Admission| match verdict {
            Admission::TooManyLinks => {
                tracing::info!(listener = %self.name, %peer, agent = %name, link, max_links, "tunnel: agent refused: this agent has max_links links connected already");
                (HelloReply::TooManyLinks, End::Refused("too_many_links"))
            }
            _ => {
                tracing::info!(listener = %self.name, %peer, agent = %name, "tunnel: agent refused: the name is already connected");
                (HelloReply::Duplicate, End::Refused("duplicate"))
            }
        };
        let verdict = agents.admission(&who);
        if matches!(verdict, Admission::Duplicate | Admission::TooManyLinks) {
            let (answer, end) = refuse(verdict);
            let _ = tls.write_all(&[answer as u8]).await;
            let _ = tls.shutdown().await;
            return end;
        }
        let accepted = async {
            tls.write_all(&[HelloReply::Accepted as u8]).await?;
            tls.flush().await
        };
        if accepted.await.is_err() {
            return End::Closed("write failed".into());
        }
        let h2 = super::h2_client().handshake::<_, Bytes>(crate::gather::Gather::eager(tls));
        let (send, mut conn) = match tokio::time::timeout(self.cfg.handshake_timeout, h2).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return End::Closed(format!("HTTP/2 handshake: {e}")),
            Err(_) => return End::Refused("handshake_timeout"),
        };
        let ping = conn.ping_pong();
        let registered = agents.register(&who, |id, agent| AgentConn {
            id,
            name: Arc::from(name.as_str()),
            peer,
            since: SystemTime::now(),
            session: who.session,
            index: who.index,
            replaced: tokio_util::sync::CancellationToken::new(),
            agent,
            home: crate::workers::current(),
            send,
            streams_open: AtomicU64::new(0),
            streams_total: AtomicU64::new(0),
            bytes_to: AtomicU64::new(0),
            bytes_from: AtomicU64::new(0),
        });
        let agent = match registered {
            Ok((agent, Admission::New)) => {
                self.svc.metrics.tunnel_agents.inc();
                tracing::info!(listener = %self.name, %peer, agent = %name, link, "tunnel: agent connected");
                agent
            }
            Ok((agent, Admission::Replace)) => {
                tracing::info!(listener = %self.name, %peer, agent = %name, link, "tunnel: agent link connected, replacing the one this agent redialled");
                agent
            }
            Ok((agent, _)) => {
                tracing::info!(listener = %self.name, %peer, agent = %name, link, "tunnel: agent link connected");
                agent
            }
            // The answer went out already: the agent learns it from the connection closing.
            Err(verdict) => return refuse(verdict).1,
        };
        let end = tokio::select! {
            r = &mut conn => match r {
                Ok(()) => End::Closed("closed by the agent".into()),
                Err(e) => End::Closed(e.to_string()),
            },
            _ = heartbeat(ping, self.cfg.heartbeat, self.cfg.dead_after) => End::Dead,
            _ = agent.replaced.cancelled() => End::Closed("replaced by the agent's new link".into()),
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
        let last = agents.remove(&agent);
        let reason = match &end {
            End::Closed(why) => why.clone(),
            End::Dead => format!("no answer to a ping within {:?}", self.cfg.dead_after),
            End::Draining => "draining".into(),
            End::Refused(why) => why.to_string(),
        };
        if last {
            self.svc.metrics.tunnel_agents.dec();
            tracing::info!(listener = %self.name, %peer, agent = %name, link, %reason, "tunnel: agent disconnected");
        } else {
            tracing::info!(listener = %self.name, %peer, agent = %name, link, %reason, "tunnel: agent link disconnected");
        }
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
        // What the decoder needs next (bounded: the lengths read so far passed its checks).
        let want = proto::hello_needs(&buf);
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
    use super::{admission, least_streams, pick_link, stale_link, Admission, LinkLoad};

    #[test]
    fn links_of_one_session_join_others_need_a_free_name_or_a_pool() {
        let (a, b) = (Some([1u8; 16]), Some([2u8; 16]));
        // Nobody there: anyone is new.
        assert_eq!(admission([].into_iter(), None, false, 4), Admission::New);
        assert_eq!(
            admission([].into_iter(), a.as_ref(), false, 4),
            Admission::New
        );
        // The same session joins, up to max_links.
        assert_eq!(
            admission([a].into_iter(), a.as_ref(), false, 2),
            Admission::Join
        );
        assert_eq!(
            admission([a, a].into_iter(), a.as_ref(), false, 2),
            Admission::TooManyLinks
        );
        assert_eq!(
            admission([a, a].into_iter(), a.as_ref(), true, 2),
            Admission::TooManyLinks,
            "a pool bounds each agent's links too"
        );
        // Another session, or an old agent without one, is a duplicate unless a pool.
        assert_eq!(
            admission([a].into_iter(), b.as_ref(), false, 4),
            Admission::Duplicate
        );
        assert_eq!(
            admission([a].into_iter(), None, false, 4),
            Admission::Duplicate
        );
        assert_eq!(
            admission([None].into_iter(), None, false, 4),
            Admission::Duplicate
        );
        assert_eq!(
            admission([None].into_iter(), a.as_ref(), false, 4),
            Admission::Duplicate
        );
        assert_eq!(
            admission([a, a].into_iter(), b.as_ref(), true, 2),
            Admission::New
        );
        assert_eq!(admission([None].into_iter(), None, true, 1), Admission::New);
        // In a pool the same session still joins its own agent.
        assert_eq!(
            admission([b, a].into_iter(), a.as_ref(), true, 2),
            Admission::Join
        );
    }

    #[test]
    fn a_redialled_link_replaces_the_one_with_its_session_and_index() {
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let connected = [Some((a, 0)), None, Some((b, 1)), Some((a, 1))];
        assert_eq!(stale_link(connected.into_iter(), Some((a, 1))), Some(3));
        assert_eq!(stale_link(connected.into_iter(), Some((b, 1))), Some(2));
        // Another index, another session, or a one-link agent: nothing is stale.
        assert_eq!(stale_link(connected.into_iter(), Some((a, 2))), None);
        assert_eq!(stale_link(connected.into_iter(), Some(([3; 16], 0))), None);
        assert_eq!(stale_link(connected.into_iter(), None), None);
    }

    fn link(agent: u64, open: u64) -> LinkLoad {
        LinkLoad {
            agent,
            open,
            eligible: true,
            local: false,
        }
    }

    #[test]
    fn a_link_driven_by_the_asking_thread_takes_the_stream_first() {
        let local = |agent, open| LinkLoad {
            local: true,
            ..link(agent, open)
        };
        // Agent 1's links: the local one, though it has more streams open.
        let links = [link(1, 0), local(1, 5), link(1, 1)];
        for turn in 0..4 {
            assert_eq!(pick_link(&links, turn), Some(1));
        }
        // Two local links take turns by their own load.
        let links = [local(1, 2), link(1, 0), local(1, 2)];
        let picks: Vec<_> = (0..2).map(|t| pick_link(&links, t)).collect();
        assert_eq!(picks, [Some(0), Some(2)]);
        // A local link already tried: the others, by load.
        let mut links = [link(1, 3), local(1, 0), link(1, 1)];
        links[1].eligible = false;
        assert_eq!(pick_link(&links, 0), Some(2));
        // The agents still balance first: agent 2 has fewer streams than agent 1, whose
        // link is the local one.
        let links = [local(1, 4), link(2, 1)];
        assert_eq!(pick_link(&links, 0), Some(1));
    }

    #[test]
    fn idle_links_of_one_agent_take_turns() {
        let links = [link(7, 0), link(7, 0)];
        let picks: Vec<_> = (0..4).map(|t| pick_link(&links, t)).collect();
        assert_eq!(picks, [0, 1, 0, 1].map(Some));
        // The least busy link first.
        let links = [link(7, 5), link(7, 2)];
        assert_eq!(pick_link(&links, 0), Some(1));
        assert_eq!(pick_link(&[], 0), None);
    }

    #[test]
    fn agents_balance_by_their_summed_streams_then_by_link() {
        // Agent 1 has two links, agent 2 one: idle, they alternate by agent, and agent 1's
        // links alternate among themselves.
        let links = [link(1, 0), link(1, 0), link(2, 0)];
        let picks: Vec<_> = (0..4).map(|t| pick_link(&links, t)).collect();
        assert_eq!(picks, [0, 2, 1, 2].map(Some));
        // Agent 1 carries 4 over its links, agent 2 carries 3: agent 2 takes the next, even
        // though each of agent 1's links has fewer than agent 2's one.
        let links = [link(1, 2), link(1, 2), link(2, 3)];
        assert_eq!(pick_link(&links, 0), Some(2));
        // Tried links are skipped; an agent with none left is skipped whatever its load.
        let mut links = [link(1, 0), link(1, 9), link(2, 20)];
        links[0].eligible = false;
        assert_eq!(pick_link(&links, 0), Some(1));
        links[1].eligible = false;
        assert_eq!(pick_link(&links, 0), Some(2));
        links[2].eligible = false;
        assert_eq!(pick_link(&links, 0), None);
    }

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
