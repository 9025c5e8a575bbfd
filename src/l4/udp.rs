//! A `udp` listener: its own socket loop (UDP has no accept). Each client address gets a
//! session: a server picked from the pool, and a connected socket to it from an ephemeral
//! port. The client's datagrams go out on that socket; the server's replies come back to the
//! client from the listener's address. A session ends after `session_timeout` without a
//! datagram either way, on an ICMP error from the server (the kernel reports it on the
//! connected socket as a refused receive), or when datagrams went out and no reply came within
//! `reply_timeout`; the last two count against the server (passive health). The next datagram
//! from that client opens a new session, possibly on another server.
//!
//! Sessions are bounded (`max_sessions`): datagrams from new clients beyond it are dropped.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{ListenerConfig, ListenerKind, UdpListenerConfig};
use crate::metrics::Metrics;
use crate::policy::Protocol;
use crate::pool::{LivePool, ServerPool};
use crate::server::Services;

/// Largest datagram relayed (the UDP maximum).
const MAX_DATAGRAM: usize = 65_535;

struct Session {
    /// The pool in force when the session opened (a reload may replace it; the session
    /// stays with its server), and the server's index in it.
    pool: Arc<ServerPool>,
    server: usize,
    up: Arc<UdpSocket>,
    /// Milliseconds since the listener's epoch: last datagram either way, first datagram sent
    /// since the last reply (0: none outstanding).
    last: Arc<AtomicU64>,
    unanswered_since: Arc<AtomicU64>,
}

type Sessions = Arc<Mutex<HashMap<SocketAddr, Session>>>;

/// A session's pool, server, socket to it, and its two clocks.
type OpenSession = (
    Arc<ServerPool>,
    usize,
    Arc<UdpSocket>,
    Arc<AtomicU64>,
    Arc<AtomicU64>,
);

/// Binds nothing: `socket` is already bound. Starts the loop; cancel `stop` to end it.
pub fn spawn(
    socket: UdpSocket,
    cfg: ListenerConfig,
    svc: Arc<Services>,
) -> anyhow::Result<crate::listener::Running> {
    let addr = socket.local_addr()?;
    let ListenerKind::Udp(u) = &cfg.kind else {
        anyhow::bail!("listener {:?} is not a udp listener", cfg.name);
    };
    let pool = svc
        .pools
        .get(&u.pool)
        .ok_or_else(|| anyhow::anyhow!("listener {:?}: no pool {:?}", cfg.name, u.pool))?;
    let name: Arc<str> = Arc::from(cfg.name.as_str());
    tracing::info!(listener = %name, kind = "udp", %addr, "listening");
    let stop = svc.shutdown.child();
    let run = Listener {
        name,
        cfg: u.clone(),
        svc,
        pool,
        sock: Arc::new(socket),
        sessions: Arc::default(),
        epoch: Instant::now(),
        stop: stop.clone(),
    };
    let task = tokio::spawn(run.run());
    Ok(crate::listener::Running {
        cfg,
        addr,
        stop,
        task,
        tls: None,
        socket: None,
    })
}

struct Listener {
    name: Arc<str>,
    cfg: UdpListenerConfig,
    svc: Arc<Services>,
    pool: Arc<LivePool>,
    sock: Arc<UdpSocket>,
    sessions: Sessions,
    epoch: Instant,
    stop: CancellationToken,
}

impl Listener {
    fn now_ms(&self) -> u64 {
        (self.epoch.elapsed().as_millis() as u64).max(1)
    }

    async fn run(self) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let label = Metrics::listener(&self.name);
        loop {
            let (n, client) = tokio::select! {
                r = self.sock.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // ICMP errors for replies to gone clients land here; keep serving.
                        tracing::debug!(listener = %self.name, "recv failed: {e}");
                        continue;
                    }
                },
                _ = self.stop.cancelled() => break,
            };
            let data = &buf[..n];
            let existing = {
                let map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
                map.get(&client).map(|s| {
                    (
                        s.pool.clone(),
                        s.server,
                        s.up.clone(),
                        s.last.clone(),
                        s.unanswered_since.clone(),
                    )
                })
            };
            let (pool, server, up, last, unanswered) = match existing {
                Some(s) => s,
                None => match self.open(client, &label).await {
                    Some(s) => s,
                    None => continue,
                },
            };
            let now = self.now_ms();
            last.store(now, Ordering::Relaxed);
            let _ = unanswered.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
            // Never wait long on one server's socket: a full buffer drops this datagram. (A
            // new socket is not known writable until polled once: that wait is short.)
            let sent = match up.try_send(data) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tokio::time::timeout(Duration::from_millis(10), up.send(data))
                        .await
                        .unwrap_or(Err(e))
                }
                r => r,
            };
            match sent {
                Ok(sent) => {
                    self.svc.metrics.bytes(&self.name, sent as u64, 0);
                    pool.bytes(server, sent as u64, 0);
                }
                Err(e) => {
                    tracing::debug!(listener = %self.name, %client, "send to server failed: {e}")
                }
            }
        }
        // Sessions end with the listener.
        let map = std::mem::take(&mut *self.sessions.lock().unwrap_or_else(|e| e.into_inner()));
        drop(map);
    }

    /// A new session for `client`: limits, policy, a server, a socket connected to it.
    async fn open(
        &self,
        client: SocketAddr,
        label: &crate::metrics::ListenerLabel,
    ) -> Option<OpenSession> {
        let count = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        if count >= self.cfg.max_sessions {
            tracing::debug!(listener = %self.name, %client, "session limit reached: datagram dropped");
            return None;
        }
        let policy = self.svc.policy.current();
        let port = self.sock.local_addr().map(|a| a.port()).unwrap_or(0);
        if let Err(rule) =
            super::client_allowed(&policy, &self.name, client.ip(), port, Protocol::Udp)
        {
            tracing::debug!(listener = %self.name, %client, %rule, "denied by policy");
            self.svc.metrics.denial(&rule);
            return None;
        }
        let pool = self.pool.current();
        let mut tried = Vec::new();
        let (server, up) = loop {
            let i = match pool.pick(client.ip(), &tried) {
                Some(i) => i,
                None => {
                    self.svc
                        .metrics
                        .listener_connect_errors
                        .get_or_create(label)
                        .inc();
                    tracing::info!(listener = %self.name, %client, "no server available");
                    return None;
                }
            };
            match self.connect(&pool, i).await {
                Ok(s) => break (i, Arc::new(s)),
                Err(e) => {
                    pool.finished(i);
                    pool.failure(i, &format!("udp: {e}"));
                    tried.push(i);
                    if tried.len() >= pool.cfg.servers.len() {
                        return None;
                    }
                }
            }
        };
        self.svc
            .metrics
            .connections_total
            .get_or_create(label)
            .inc();
        let last = Arc::new(AtomicU64::new(self.now_ms()));
        let unanswered = Arc::new(AtomicU64::new(0));
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                client,
                Session {
                    pool: pool.clone(),
                    server,
                    up: up.clone(),
                    last: last.clone(),
                    unanswered_since: unanswered.clone(),
                },
            );
        tokio::spawn(
            Replies {
                name: self.name.clone(),
                client,
                server,
                up: up.clone(),
                sock: self.sock.clone(),
                pool: pool.clone(),
                svc: self.svc.clone(),
                sessions: self.sessions.clone(),
                last: last.clone(),
                unanswered: unanswered.clone(),
                epoch: self.epoch,
                session_timeout: self.cfg.session_timeout,
                reply_timeout: self.cfg.reply_timeout,
                stop: self.stop.clone(),
            }
            .run(),
        );
        Some((pool, server, up, last, unanswered))
    }

    /// A socket from an ephemeral port of the server's family, connected to the server (so
    /// only its datagrams are received, and ICMP errors are reported).
    async fn connect(&self, pool: &ServerPool, i: usize) -> std::io::Result<UdpSocket> {
        let addrs = pool
            .addrs(i, &self.svc.connector)
            .await
            .map_err(std::io::Error::other)?;
        let addr = addrs
            .first()
            .copied()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let any: IpAddr = if addr.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        let s = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
        s.connect(addr).await?;
        Ok(s)
    }
}

/// One session's reply path and lifetime.
struct Replies {
    name: Arc<str>,
    client: SocketAddr,
    server: usize,
    up: Arc<UdpSocket>,
    sock: Arc<UdpSocket>,
    pool: Arc<ServerPool>,
    svc: Arc<Services>,
    sessions: Sessions,
    last: Arc<AtomicU64>,
    unanswered: Arc<AtomicU64>,
    epoch: Instant,
    session_timeout: Duration,
    reply_timeout: Duration,
    stop: CancellationToken,
}

impl Replies {
    async fn run(self) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let ms = |d: Duration| d.as_millis() as u64;
        loop {
            // The nearest deadline: the idle end, or the reply wait of an unanswered datagram.
            let last = self.last.load(Ordering::Relaxed);
            let pending = self.unanswered.load(Ordering::Relaxed);
            let mut at = last + ms(self.session_timeout);
            if pending != 0 {
                at = at.min(pending + ms(self.reply_timeout));
            }
            let deadline = self.epoch + Duration::from_millis(at);
            tokio::select! {
                r = self.up.recv(&mut buf) => match r {
                    Ok(n) => {
                        let now = (self.epoch.elapsed().as_millis() as u64).max(1);
                        self.last.store(now, Ordering::Relaxed);
                        if self.unanswered.swap(0, Ordering::Relaxed) != 0 {
                            self.pool.success(self.server);
                        }
                        if self.sock.send_to(&buf[..n], self.client).await.is_ok() {
                            self.svc.metrics.bytes(&self.name, 0, n as u64);
                            self.pool.bytes(self.server, 0, n as u64);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(listener = %self.name, client = %self.client, "server error: {e}");
                        self.pool.failure(self.server, &format!("udp: {e}"));
                        break;
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {
                    let now = self.epoch.elapsed().as_millis() as u64;
                    let pending = self.unanswered.load(Ordering::Relaxed);
                    if pending != 0 && now >= pending + ms(self.reply_timeout) {
                        self.pool.failure(self.server, "udp: no reply");
                        break;
                    }
                    if now >= self.last.load(Ordering::Relaxed) + ms(self.session_timeout) {
                        break;
                    }
                }
                _ = self.stop.cancelled() => break,
            }
        }
        self.pool.finished(self.server);
        let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if map
            .get(&self.client)
            .is_some_and(|s| Arc::ptr_eq(&s.up, &self.up))
        {
            map.remove(&self.client);
        }
    }
}
