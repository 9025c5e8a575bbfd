//! The relay's zero-copy path for two plain TCP sockets (Linux `splice(2)`): bytes move
//! socket -> pipe -> socket inside the kernel and never through user space. Same contract as
//! [`crate::relay::relay`]: half-close passed on, idle timeout, byte counts each way.
//!
//! On loopback a user-space copy costs as much as the kernel's own, so copying through the
//! proxy roughly halves single-stream throughput; splicing does not. Anything that must see
//! the bytes (TLS, HTTP framing) uses the copying relay.
//!
//! # Descriptors
//!
//! An idle tunnel holds its two sockets and nothing else: each direction waits for its
//! source to become readable holding no pipe. When bytes arrive it takes a pipe from the
//! shared [`PipePool`] (HAProxy's pipe pool), moves bytes until the source has nothing more
//! to read and the pipe is empty again, and gives the pipe back. A pipe still holding bytes
//! (the destination is slow) stays with its tunnel until drained; a pipe of a tunnel that
//! ends with bytes in it is closed, never pooled. The pool keeps at most [`POOL_IDLE_MAX`]
//! idle pipes. If no pipe can be made (out of descriptors), that burst is copied through a
//! small user-space buffer instead: the tunnel goes on.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rustix::pipe::{fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::relay::{RelayEnd, RelayStats};

/// Pipe capacity asked for; the kernel may grant less (then its default, 64 KiB, is used).
const PIPE_SIZE: usize = 256 * 1024;

/// Idle pipes the shared pool keeps (2 descriptors each); more are closed when given back.
pub const POOL_IDLE_MAX: usize = 64;

/// Bytes copied per read when no pipe could be made.
const FALLBACK_BUF: usize = 16 * 1024;

/// One pipe: its two ends and the capacity the kernel granted.
#[derive(Debug)]
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    size: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (r, w) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        let size = fcntl_setpipe_size(&w, PIPE_SIZE).unwrap_or(64 * 1024);
        Ok(Pipe { r, w, size })
    }
}

/// Empty pipes shared by every tunnel: taken when a direction has bytes to move, given back
/// once empty. Holds at most `max_idle` of them.
#[derive(Debug)]
pub struct PipePool {
    idle: Mutex<Vec<Pipe>>,
    max_idle: usize,
}

/// The process's pool, used by [`relay_tcp`].
pub static POOL: PipePool = PipePool::new(POOL_IDLE_MAX);

impl PipePool {
    pub const fn new(max_idle: usize) -> PipePool {
        PipePool {
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    /// An empty pipe: a pooled one, or a new one (which can fail with EMFILE/ENFILE).
    pub fn take(&self) -> io::Result<Pipe> {
        if let Some(p) = self.idle.lock().ok().and_then(|mut v| v.pop()) {
            return Ok(p);
        }
        Pipe::new()
    }

    /// Gives back a pipe that is empty (callers only give back pipes they drained); kept if
    /// the pool has room, closed otherwise.
    pub fn give(&self, pipe: Pipe) {
        if let Ok(mut v) = self.idle.lock() {
            if v.len() < self.max_idle {
                v.push(pipe);
            }
        }
    }

    /// Idle pipes held now.
    pub fn idle(&self) -> usize {
        self.idle.lock().map_or(0, |v| v.len())
    }
}

/// Splices `a <-> b` until both directions finish, one fails, or nothing moves for `idle`.
pub async fn relay_tcp(a: &TcpStream, b: &TcpStream, idle: Duration) -> (RelayEnd, RelayStats) {
    relay_tcp_with(&POOL, a, b, idle).await
}

/// [`relay_tcp`] taking its pipes from `pool`.
pub async fn relay_tcp_with(
    pool: &PipePool,
    a: &TcpStream,
    b: &TcpStream,
    idle: Duration,
) -> (RelayEnd, RelayStats) {
    let epoch = Instant::now();
    let last = AtomicU64::new(0);
    let a_to_b = AtomicU64::new(0);
    let b_to_a = AtomicU64::new(0);
    let up = splice_half(pool, a, b, &a_to_b, &last, epoch);
    let down = splice_half(pool, b, a, &b_to_a, &last, epoch);
    let both = async { tokio::try_join!(up, down).map(|_| ()) };
    crate::relay::drive(both, &last, epoch, idle, [&a_to_b, &b_to_a]).await
}

/// How a burst ended.
enum Burst {
    /// The source has nothing more to read now; the pipe is empty.
    Drained,
    /// The source reached EOF; the pipe is empty.
    Eof,
}

/// One direction: wait (holding no pipe), move a burst, give the pipe back, again.
async fn splice_half(
    pool: &PipePool,
    src: &TcpStream,
    dst: &TcpStream,
    count: &AtomicU64,
    last: &AtomicU64,
    epoch: Instant,
) -> io::Result<()> {
    let clock = Clock { count, last, epoch };
    loop {
        src.readable().await?;
        let burst = match pool.take() {
            Ok(pipe) => {
                // An error drops the pipe (it may hold bytes): closed, not pooled.
                let b = splice_burst(src, dst, &pipe, &clock).await?;
                pool.give(pipe);
                b
            }
            // Out of descriptors (or pipes): copy this burst instead of dropping the tunnel.
            Err(e) => {
                tracing::debug!("no pipe for a tunnel ({e}); copying this burst");
                copy_burst(src, dst, &clock).await?
            }
        };
        if let Burst::Eof = burst {
            // Half-close: pass the EOF on; the other direction keeps going.
            let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
    }
}

/// A direction's byte count and the relay's last-traffic clock.
struct Clock<'a> {
    count: &'a AtomicU64,
    last: &'a AtomicU64,
    epoch: Instant,
}

impl Clock<'_> {
    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn moved(&self, n: usize) {
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        self.touch();
    }
}

/// Splices from `src` through `pipe` to `dst` until `src` would block (or ends), leaving the
/// pipe empty.
async fn splice_burst(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: &Pipe,
    clock: &Clock<'_>,
) -> io::Result<Burst> {
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    loop {
        // The pipe is empty here, so EAGAIN can only mean the socket has nothing to read
        // (and `try_io` then clears the readiness the caller waits on).
        let n = match src.try_io(Interest::READABLE, || {
            Ok(splice(src, None, &pipe.w, None, pipe.size, flags)?)
        }) {
            Ok(0) => return Ok(Burst::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Drained),
            Err(e) => return Err(e),
        };
        clock.touch();
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                Ok(splice(&pipe.r, None, dst, None, left, flags)?)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        clock.moved(n);
    }
}

/// Without a pipe: reads from `src` until it would block (or ends), writing each read to
/// `dst`. The buffer lives only for the burst.
async fn copy_burst(src: &TcpStream, dst: &TcpStream, clock: &Clock<'_>) -> io::Result<Burst> {
    let mut buf = vec![0u8; FALLBACK_BUF];
    loop {
        let n = match src.try_read(&mut buf) {
            Ok(0) => return Ok(Burst::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Drained),
            Err(e) => return Err(e),
        };
        clock.touch();
        let mut done = 0;
        while done < n {
            dst.writable().await?;
            match dst.try_write(&buf[done..n]) {
                Ok(m) => done += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        clock.moved(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Two connected loopback pairs: (client, proxy side A), (proxy side B, server).
    async fn pairs() -> ((TcpStream, TcpStream), (TcpStream, TcpStream)) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let c1 = TcpStream::connect(addr).await.expect("connect");
        let (s1, _) = l.accept().await.expect("accept");
        let c2 = TcpStream::connect(addr).await.expect("connect");
        let (s2, _) = l.accept().await.expect("accept");
        ((c1, s1), (c2, s2))
    }

    #[tokio::test]
    async fn bulk_both_ways_with_half_close() {
        let ((mut client, a), (b, mut server)) = pairs().await;
        let relay = tokio::spawn(async move { relay_tcp(&a, &b, Duration::from_secs(10)).await });
        let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.expect("write");
            client.shutdown().await.expect("half-close");
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.expect("read");
            back
        });
        let mut got = Vec::new();
        server
            .read_to_end(&mut got)
            .await
            .expect("server reads to EOF");
        assert!(got == data, "bytes arrive intact and in order");
        // The server answers after the client's EOF: must still arrive.
        server.write_all(b"pong").await.expect("write");
        server.shutdown().await.expect("shutdown");
        assert_eq!(writer.await.expect("join"), b"pong");
        let (end, stats) = relay.await.expect("join");
        assert!(matches!(end, RelayEnd::Done), "{end:?}");
        assert_eq!(
            stats,
            RelayStats {
                a_to_b: 4_000_000,
                b_to_a: 4
            }
        );
    }

    #[tokio::test]
    async fn pipes_are_taken_per_burst_and_given_back() {
        static PRIVATE: PipePool = PipePool::new(4);
        let ((mut client, a), (b, mut server)) = pairs().await;
        let relay =
            tokio::spawn(
                async move { relay_tcp_with(&PRIVATE, &a, &b, Duration::from_secs(10)).await },
            );
        // Idle: nothing taken yet, nothing pooled.
        assert_eq!(PRIVATE.idle(), 0);
        let mut back = [0u8; 5];
        for round in 0..20u8 {
            client.write_all(&[round; 5]).await.expect("write");
            server.read_exact(&mut back).await.expect("read");
            assert_eq!(back, [round; 5]);
            server.write_all(&back).await.expect("write back");
            client.read_exact(&mut back).await.expect("read back");
        }
        // Each burst gave its pipe back: one per direction at most, reused round after round.
        let deadline = Instant::now() + Duration::from_secs(5);
        while PRIVATE.idle() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!((1..=2).contains(&PRIVATE.idle()), "{}", PRIVATE.idle());
        drop((client, server));
        let (end, stats) = relay.await.expect("join");
        assert!(!matches!(end, RelayEnd::Idle), "{end:?}");
        assert_eq!((stats.a_to_b, stats.b_to_a), (100, 100));
    }

    #[test]
    fn the_pool_keeps_at_most_its_cap() {
        let pool = PipePool::new(2);
        let pipes: Vec<Pipe> = (0..4).map(|_| pool.take().expect("pipe")).collect();
        for p in pipes {
            pool.give(p);
        }
        assert_eq!(pool.idle(), 2);
        let _p = pool.take().expect("pooled");
        assert_eq!(pool.idle(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_pair_closes() {
        let ((_client, a), (b, _server)) = pairs().await;
        let (end, _) = relay_tcp(&a, &b, Duration::from_secs(30)).await;
        assert!(matches!(end, RelayEnd::Idle));
    }
}
