//! Idle upstream connections kept for reuse across clients.
//!
//! A connection is returned only after a response ended cleanly with nothing left unread.
//! Before reuse it is checked without blocking: if the server has closed it (EOF) or sent
//! stray bytes, it is dropped. Idle connections expire after the pool's idle timeout.
//!
//! With `[runtime] per_core` each worker thread keeps its own idle lists (a shard), as each
//! nginx worker keeps its own `keepalive` cache: a connection is reused on the event loop it
//! is registered with, and `max_per_host` holds per worker. A worker with none idle for a
//! server takes over another worker's before it opens a new connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::connector::Host;
use crate::workers::Apart;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub host: Host,
    pub port: u16,
}

/// A connection an idle pool can keep: it says, without blocking, whether the server still
/// holds it open with nothing sent.
pub trait Quiet: Send + 'static {
    fn is_quiet(&mut self) -> bool;

    /// Whether it may be kept at all (checked when it is put back).
    fn keepable(&self) -> bool {
        true
    }

    /// Taken over from another worker's shard (`[runtime] per_core`): moves it to this
    /// thread's event loop where it can, or `None` when that failed (it is dropped).
    /// By default it stays where it was registered: each readiness event then reaches
    /// this worker by a cross-thread wake-up.
    fn rehome(self) -> Option<Self>
    where
        Self: Sized,
    {
        Some(self)
    }
}

impl Quiet for TcpStream {
    fn is_quiet(&mut self) -> bool {
        is_quiet(self)
    }

    /// Deregistered from the other worker's event loop, registered with this one's (two
    /// `epoll_ctl` calls, once), so that every later use is served here, without a
    /// cross-thread wake-up for each event (before, nearly half the requests of a
    /// two-worker reverse proxy paid one: an `eventfd` write each).
    fn rehome(self) -> Option<Self> {
        let std = self.into_std().ok()?;
        TcpStream::from_std(std).ok()
    }
}

/// A stream through a tunnel agent (a pool server with `agent = ...`): quiet while nothing
/// came on it and neither side ended it.
impl Quiet for Box<crate::tunnel::hub::Opened> {
    fn is_quiet(&mut self) -> bool {
        self.stream.is_quiet()
    }

    /// Not while its link has half its stream slots open.
    fn keepable(&self) -> bool {
        (**self).keepable()
    }
}

/// TLS: the socket under it. Any byte there (a close_notify, stray data) makes it unusable;
/// a connection found so is dropped, so the byte read from under the session does no harm.
impl Quiet for Box<tokio_rustls::client::TlsStream<TcpStream>> {
    fn is_quiet(&mut self) -> bool {
        is_quiet(self.get_ref().0)
    }
}

type IdleMap<S> = HashMap<PoolKey, Vec<Idle<S>>, foldhash::fast::RandomState>;

/// Shards of a pool: worker threads beyond this share them.
const SHARDS: usize = 16;

struct Idle<S> {
    stream: S,
    peer: SocketAddr,
    since: Instant,
}

/// Idle connections by server; `S`: plain sockets (the forward proxy, plain pools), TLS
/// sessions (pools with `[pools.tls]`) or streams through a tunnel agent.
pub struct Pool<S = TcpStream> {
    /// One shard per worker thread ([`crate::workers::current`]); shard 0 serves every
    /// thread of the shared scheduler. A fast hasher: keys are servers the proxy connected to.
    idle: Box<[Apart<Mutex<IdleMap<S>>>]>,
    max_per_host: usize,
    idle_timeout: Duration,
}

impl<S: Quiet> Pool<S> {
    pub fn new(max_per_host: usize, idle_timeout: Duration) -> Arc<Pool<S>> {
        let pool = Arc::new(Pool {
            idle: (0..SHARDS).map(|_| Apart(Mutex::default())).collect(),
            max_per_host,
            idle_timeout,
        });
        if max_per_host > 0 {
            tokio::spawn(sweep(Arc::downgrade(&pool), idle_timeout));
        }
        pool
    }

    /// The most recently used live connection for `key`, if any.
    pub fn take(&self, key: &PoolKey) -> Option<(S, SocketAddr)> {
        self.take_within(key, self.idle_timeout, Instant::now())
    }

    /// [`Pool::take`], with connections idle for `max_idle` or longer dropped (a shorter
    /// limit than the pool's, e.g. a server pool's own `idle_timeout`).
    ///
    /// With `[runtime] per_core`, this worker's own shard first; when it has none for `key`,
    /// another worker's idle connection is taken over (as HAProxy's threads take over each
    /// other's idle connections) rather than opening a new one, and moved to this worker's
    /// event loop ([`Quiet::rehome`]: plain sockets; a TLS session stays registered where it
    /// was, so its events reach this worker by cross-thread wake-ups). It goes back to this
    /// worker's shard when the request is done.
    ///
    /// `now`: the caller's clock reading (one per request serves every step of it).
    pub fn take_within(
        &self,
        key: &PoolKey,
        max_idle: Duration,
        now: Instant,
    ) -> Option<(S, SocketAddr)> {
        let max_idle = max_idle.min(self.idle_timeout);
        let Some(own) = crate::workers::current() else {
            return self.take_from(0, key, max_idle, now);
        };
        let own = own % SHARDS;
        if let Some(found) = self.take_from(own, key, max_idle, now) {
            return Some(found);
        }
        (1..SHARDS).map(|k| (own + k) % SHARDS).find_map(|i| {
            let (stream, peer) = self.take_from(i, key, max_idle, now)?;
            Some((stream.rehome()?, peer))
        })
    }

    fn take_from(
        &self,
        shard: usize,
        key: &PoolKey,
        max_idle: Duration,
        now: Instant,
    ) -> Option<(S, SocketAddr)> {
        let mut idle = self.idle[shard].lock().ok()?;
        let list = idle.get_mut(key)?;
        // An emptied list stays (the next `put` reuses it); the sweep removes it.
        while let Some(mut c) = list.pop() {
            if now.saturating_duration_since(c.since) < max_idle && c.stream.is_quiet() {
                return Some((c.stream, c.peer));
            }
        }
        None
    }

    pub fn put(&self, key: PoolKey, stream: S, peer: SocketAddr) {
        self.put_at(key, stream, peer, Instant::now());
    }

    /// [`Pool::put`] with the clock already read (`now`: when the connection went idle).
    pub fn put_at(&self, key: PoolKey, stream: S, peer: SocketAddr, now: Instant) {
        if self.max_per_host == 0 || !stream.keepable() {
            return;
        }
        let Ok(mut idle) = self.shard().lock() else {
            return;
        };
        let list = idle.entry(key).or_default();
        if list.len() >= self.max_per_host {
            list.remove(0);
        }
        list.push(Idle {
            stream,
            peer,
            since: now,
        });
    }

    /// This thread's shard.
    fn shard(&self) -> &Mutex<IdleMap<S>> {
        &self.idle[crate::workers::current().unwrap_or(0) % SHARDS]
    }

    pub fn idle_count(&self) -> usize {
        self.idle
            .iter()
            .filter_map(|s| {
                s.lock()
                    .ok()
                    .map(|m| m.values().map(Vec::len).sum::<usize>())
            })
            .sum()
    }

    fn expire(&self) {
        for shard in self.idle.iter() {
            let Ok(mut idle) = shard.lock() else {
                continue;
            };
            idle.retain(|_, list| {
                list.retain_mut(|c| c.since.elapsed() < self.idle_timeout && c.stream.is_quiet());
                !list.is_empty()
            });
        }
    }
}

/// True when the socket has neither data nor EOF waiting: the server still holds it open.
fn is_quiet(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

async fn sweep<S: Quiet>(pool: Weak<Pool<S>>, every: Duration) {
    let every = every.max(Duration::from_millis(100)) / 2;
    loop {
        tokio::time::sleep(every).await;
        match pool.upgrade() {
            Some(p) => p.expire(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Worker 0 puts a connection back; worker 1, finding none of its own, takes it over
    /// while worker 0's event loop is not running at all. The exchange on it still completes:
    /// it was moved to worker 1's event loop. (Left registered with worker 0's, its reply
    /// would never be noticed and the read would time out.)
    #[test]
    fn a_connection_taken_over_is_served_by_the_takers_event_loop() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let echo = std::thread::spawn(move || -> std::io::Result<()> {
            let (mut s, _) = listener.accept()?;
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf)?;
            s.write_all(&buf)
        });
        let key = PoolKey {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        };

        // Worker 0: connects and puts the connection in its shard, then stops running its
        // event loop (the runtime stays alive, nobody drives it).
        let worker0 = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let pool = std::thread::scope(|s| {
            s.spawn(|| {
                crate::workers::mark_current(0);
                worker0.block_on(async {
                    let pool = Pool::<TcpStream>::new(4, Duration::from_secs(60));
                    let stream = TcpStream::connect(addr).await.expect("connect");
                    pool.put(key.clone(), stream, addr);
                    pool
                })
            })
            .join()
            .expect("worker 0")
        });

        // Worker 1 takes it over and talks on it.
        let reply = std::thread::scope(|s| {
            s.spawn(|| {
                crate::workers::mark_current(1);
                let worker1 = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                worker1.block_on(async {
                    let (mut stream, peer) = pool
                        .take_within(&key, Duration::from_secs(60), Instant::now())
                        .expect("taken over from worker 0's shard");
                    assert_eq!(peer, addr);
                    stream.write_all(b"hello").await.expect("write");
                    let mut buf = [0u8; 5];
                    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
                        .await
                        .map(|r| r.map(|_| buf))
                })
            })
            .join()
            .expect("worker 1")
        });
        assert_eq!(
            reply
                .expect("the reply was noticed")
                .expect("read")
                .as_slice(),
            b"hello"
        );
        echo.join().expect("echo thread").expect("echo");
        drop(worker0);
    }
}
