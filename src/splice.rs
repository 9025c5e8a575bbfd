//! The relay's zero-copy path for two plain TCP sockets (Linux `splice(2)`): bytes move
//! socket -> pipe -> socket inside the kernel and never through user space. Same contract as
//! [`crate::relay::relay`]: half-close passed on, idle timeout, byte counts each way.
//!
//! On loopback a user-space copy costs as much as the kernel's own, so copying through the
//! proxy roughly halves single-stream throughput; splicing does not. Anything that must see
//! the bytes (TLS, HTTP framing) uses the copying relay.
//!
//! Small transfers are copied, not spliced (HAProxy's splice-auto): until a direction has
//! filled a whole read buffer, each burst is one `read` and one `write` through a stack
//! buffer, which for a short request and answer is half the system calls of splicing and
//! takes no pipe. The first full read marks the direction bulk; its bursts splice from then on.
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

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::task::{ready, Context, Poll};
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
    /// False only in tests of the copying fallback: every `take` fails as if out of
    /// descriptors.
    make: bool,
}

/// The process's pool, used by [`relay_tcp`].
pub static POOL: PipePool = PipePool::new(POOL_IDLE_MAX);

impl PipePool {
    pub const fn new(max_idle: usize) -> PipePool {
        PipePool {
            idle: Mutex::new(Vec::new()),
            max_idle,
            make: true,
        }
    }

    /// A pool that never has a pipe (as when out of descriptors): tunnels copy every burst.
    #[cfg(test)]
    const fn empty_forever() -> PipePool {
        PipePool {
            idle: Mutex::new(Vec::new()),
            max_idle: 0,
            make: false,
        }
    }

    /// An empty pipe: a pooled one, or a new one (which can fail with EMFILE/ENFILE).
    pub fn take(&self) -> io::Result<Pipe> {
        if let Some(p) = self.idle.lock().ok().and_then(|mut v| v.pop()) {
            return Ok(p);
        }
        if !self.make {
            return Err(io::Error::from_raw_os_error(24)); // EMFILE
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
///
/// The first EOF is passed on with `shutdown(Write)`; the second is not: the relay is over,
/// and the caller closes (drops) both sockets, which sends it.
pub async fn relay_tcp(a: &TcpStream, b: &TcpStream, idle: Duration) -> (RelayEnd, RelayStats) {
    relay_tcp_with(&POOL, a, b, idle).await
}

/// [`relay_tcp`] taking its pipes from `pool`.
///
/// One small future for both directions and one timer: each direction is a [`Half`] (a
/// state, a count, and a pipe or buffer only while a burst moves), stepped by one poll
/// function, so an idle tunnel's relay state is a few hundred bytes.
pub async fn relay_tcp_with(
    pool: &PipePool,
    a: &TcpStream,
    b: &TcpStream,
    idle: Duration,
) -> (RelayEnd, RelayStats) {
    let mut last = Instant::now();
    let timer = tokio::time::sleep_until(last + idle);
    tokio::pin!(timer);
    let mut up = Half::default();
    let mut down = Half::default();
    let end = std::future::poll_fn(|cx| {
        let mut moved = false;
        for dir in 0..2 {
            let (half, peer, src, dst) = match dir {
                0 => (&mut up, &down, a, b),
                _ => (&mut down, &up, b, a),
            };
            match half.poll(cx, pool, src, dst, peer.done(), &mut moved) {
                Poll::Ready(Err(e)) => return Poll::Ready(RelayEnd::Error(e)),
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
        }
        if up.done() && down.done() {
            return Poll::Ready(RelayEnd::Done);
        }
        if moved {
            last = Instant::now();
        }
        // The timer is reset only when it fires early: traffic just moves `last` on.
        while timer.as_mut().poll(cx).is_ready() {
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return Poll::Ready(RelayEnd::Idle);
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await;
    let stats = RelayStats {
        a_to_b: up.count,
        b_to_a: down.count,
    };
    (end, stats)
}

/// Socket-to-pipe or pipe-to-socket steps one direction takes in one poll before it lets
/// the task yield (a bulk stream must not hold the worker thread).
const STEPS_PER_POLL: u32 = 64;

/// One direction of a spliced relay.
#[derive(Debug, Default)]
struct Half {
    state: HalfState,
    /// Bytes written to the destination.
    count: u64,
    /// A read has filled the whole first-copy buffer: this direction carries bulk data, and
    /// its bursts go through a pipe from the start.
    bulk: bool,
}

#[derive(Debug, Default)]
enum HalfState {
    /// Waiting for the source to become readable, holding no pipe.
    #[default]
    Waiting,
    /// A burst through a pooled pipe; `left` bytes are in the pipe, not yet written.
    Piped { pipe: Pipe, left: usize },
    /// A burst through a buffer (no pipe could be made); `buf[at..end]` is not yet written.
    Copying {
        buf: Box<[u8]>,
        at: usize,
        end: usize,
    },
    /// EOF seen and passed on.
    Done,
}

impl Half {
    fn done(&self) -> bool {
        matches!(self.state, HalfState::Done)
    }

    /// Moves bytes until both sockets would block (`Pending`, wakers registered), the source
    /// ended (`Ready(Ok)`), or a socket failed. Sets `moved` when bytes moved.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        pool: &PipePool,
        src: &TcpStream,
        dst: &TcpStream,
        peer_done: bool,
        moved: &mut bool,
    ) -> Poll<io::Result<()>> {
        let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
        for _ in 0..STEPS_PER_POLL {
            match &mut self.state {
                HalfState::Done => return Poll::Ready(Ok(())),
                HalfState::Waiting if !self.bulk => {
                    ready!(src.poll_read_ready(cx))?;
                    match self.copy_first(src, dst, moved) {
                        Ok(true) => self.finish(pool, dst, peer_done),
                        Ok(false) => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                HalfState::Waiting => {
                    ready!(src.poll_read_ready(cx))?;
                    self.state = match pool.take() {
                        Ok(pipe) => HalfState::Piped { pipe, left: 0 },
                        // Out of descriptors (or pipes): copy this burst instead of dropping
                        // the tunnel.
                        Err(e) => {
                            tracing::debug!("no pipe for a tunnel ({e}); copying this burst");
                            HalfState::Copying {
                                buf: vec![0u8; FALLBACK_BUF].into_boxed_slice(),
                                at: 0,
                                end: 0,
                            }
                        }
                    };
                }
                HalfState::Piped { pipe, left } if *left > 0 => {
                    ready!(dst.poll_write_ready(cx))?;
                    match dst.try_io(Interest::WRITABLE, || {
                        Ok(splice(&pipe.r, None, dst, None, *left, flags)?)
                    }) {
                        Ok(m) => {
                            *left -= m;
                            self.count += m as u64;
                            *moved = true;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        // An error drops the pipe with the relay (it may hold bytes): closed,
                        // not pooled.
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                HalfState::Piped { pipe, .. } => {
                    // The pipe is empty here, so EAGAIN can only mean the socket has nothing
                    // to read (and `try_io` then clears the readiness `Waiting` polls).
                    match src.try_io(Interest::READABLE, || {
                        Ok(splice(src, None, &pipe.w, None, pipe.size, flags)?)
                    }) {
                        Ok(0) => self.finish(pool, dst, peer_done),
                        Ok(n) => {
                            *moved = true;
                            self.state = match std::mem::take(&mut self.state) {
                                HalfState::Piped { pipe, .. } => HalfState::Piped { pipe, left: n },
                                other => other,
                            };
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            // Drained: the pipe goes back to the pool until bytes come again.
                            if let HalfState::Piped { pipe, .. } = std::mem::take(&mut self.state) {
                                pool.give(pipe);
                            }
                        }
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                HalfState::Copying { buf, at, end } if *at < *end => {
                    ready!(dst.poll_write_ready(cx))?;
                    match dst.try_write(&buf[*at..*end]) {
                        Ok(m) => {
                            *at += m;
                            self.count += m as u64;
                            *moved = true;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                HalfState::Copying { buf, at, end } => match src.try_read(buf) {
                    Ok(0) => self.finish(pool, dst, peer_done),
                    Ok(n) => {
                        (*at, *end) = (0, n);
                        *moved = true;
                    }
                    // Drained: the buffer lives only for the burst.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.state = HalfState::Waiting
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                },
            }
        }
        // A long burst: let other tasks run, and come back at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// The first bytes of a burst, while this direction has not carried bulk data: one
    /// `read` into a stack buffer and one `write`, as HAProxy's splice-auto does. A 64-byte
    /// echo costs a `read` and a `write` instead of two `splice` calls, a pipe taken and given
    /// back and a third `splice` that finds the socket drained: a short read clears the
    /// socket's readiness at once (what tokio's own `poll_read` does), so the next wait
    /// costs no system call. A read that fills the buffer marks the direction bulk (its
    /// bursts splice from then on); bytes the destination does not take at once go on
    /// through the copying state. `Ok(true)` at EOF.
    fn copy_first(
        &mut self,
        src: &TcpStream,
        dst: &TcpStream,
        moved: &mut bool,
    ) -> io::Result<bool> {
        let mut buf = [0u8; FALLBACK_BUF];
        let mut got = 0;
        let read = src.try_io(Interest::READABLE, || {
            got = rustix::io::read(src, &mut buf)?;
            if got > 0 && got < buf.len() {
                // Short: the socket is drained. Readiness is cleared (only if no new event
                // came in since it was read, so no wake-up is lost).
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(got)
        });
        match read {
            Ok(0) => return Ok(true),
            Ok(_) => self.bulk = true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
        *moved = true;
        let wrote = match dst.try_write(&buf[..got]) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        self.count += wrote as u64;
        if wrote < got {
            // The destination is slow: the rest waits in a burst buffer.
            let mut rest = vec![0u8; FALLBACK_BUF].into_boxed_slice();
            rest[..got - wrote].copy_from_slice(&buf[wrote..got]);
            self.state = HalfState::Copying {
                buf: rest,
                at: 0,
                end: got - wrote,
            };
        }
        Ok(false)
    }

    /// The source reached EOF with nothing left to write: the (empty) pipe goes back to the
    /// pool and the EOF is passed on (half-close); the other direction keeps going. If the
    /// other direction has ended already, so does the relay, and the caller's close of both
    /// sockets sends this FIN: no `shutdown` call (HAProxy's one per connection, not two).
    fn finish(&mut self, pool: &PipePool, dst: &TcpStream, peer_done: bool) {
        if let HalfState::Piped { pipe, .. } = std::mem::replace(&mut self.state, HalfState::Done) {
            pool.give(pipe);
        }
        if !peer_done {
            let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
        }
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
    async fn without_pipes_bursts_are_copied() {
        static NONE: PipePool = PipePool::empty_forever();
        let ((mut client, a), (b, mut server)) = pairs().await;
        let relay =
            tokio::spawn(
                async move { relay_tcp_with(&NONE, &a, &b, Duration::from_secs(10)).await },
            );
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 249) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.expect("write");
            client.shutdown().await.expect("half-close");
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.expect("read");
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("read to EOF");
        assert!(got == data, "bytes arrive intact and in order");
        server.write_all(b"pong").await.expect("write");
        server.shutdown().await.expect("shutdown");
        assert_eq!(writer.await.expect("join"), b"pong");
        let (end, stats) = relay.await.expect("join");
        assert!(matches!(end, RelayEnd::Done), "{end:?}");
        assert_eq!((stats.a_to_b, stats.b_to_a), (1_000_000, 4));
    }

    #[tokio::test]
    async fn small_bursts_are_copied_and_bulk_takes_pipes_given_back() {
        static PRIVATE: PipePool = PipePool::new(4);
        let ((mut client, a), (b, mut server)) = pairs().await;
        let relay =
            tokio::spawn(
                async move { relay_tcp_with(&PRIVATE, &a, &b, Duration::from_secs(10)).await },
            );
        // Small exchanges are copied: no pipe is ever made.
        let mut back = [0u8; 5];
        for round in 0..20u8 {
            client.write_all(&[round; 5]).await.expect("write");
            server.read_exact(&mut back).await.expect("read");
            assert_eq!(back, [round; 5]);
            server.write_all(&back).await.expect("write back");
            client.read_exact(&mut back).await.expect("read back");
        }
        assert_eq!(PRIVATE.idle(), 0, "no pipe for small bursts");
        // Bulk one way: that direction splices, and each burst gives its pipe back.
        let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.expect("write");
            client
        });
        let mut got = vec![0u8; data.len()];
        server.read_exact(&mut got).await.expect("read");
        assert!(got == data, "bytes arrive intact and in order");
        let client = writer.await.expect("join");
        let deadline = Instant::now() + Duration::from_secs(5);
        while PRIVATE.idle() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(PRIVATE.idle(), 1, "the bulk direction's pipe, given back");
        drop((client, server));
        let (end, stats) = relay.await.expect("join");
        assert!(!matches!(end, RelayEnd::Idle), "{end:?}");
        assert_eq!((stats.a_to_b, stats.b_to_a), (100 + 2_000_000, 100));
    }

    #[tokio::test]
    async fn small_writes_to_a_slow_reader_arrive_intact() {
        // Small segments towards a server with tiny socket buffers that reads in small
        // pieces: the relay's writes come up short, the rest waits in a burst buffer (or a
        // pipe, once the source piles up), and nothing is lost or reordered.
        let ((mut client, a), (b, mut server)) = pairs().await;
        client.set_nodelay(true).expect("nodelay");
        let _ = socket2::SockRef::from(&b).set_send_buffer_size(16384);
        let _ = socket2::SockRef::from(&server).set_recv_buffer_size(16384);
        let relay = tokio::spawn(async move { relay_tcp(&a, &b, Duration::from_secs(10)).await });
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 239) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for chunk in sent.chunks(1000) {
                client.write_all(chunk).await.expect("write");
            }
            client.shutdown().await.expect("half-close");
            client
        });
        let mut got = Vec::with_capacity(data.len());
        let mut piece = [0u8; 777];
        loop {
            let n = server.read(&mut piece).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&piece[..n]);
            tokio::task::yield_now().await;
        }
        assert!(got == data, "bytes arrive intact and in order");
        drop(writer.await.expect("join"));
        drop(server);
        let (_, stats) = relay.await.expect("join");
        assert_eq!(stats.a_to_b, 200_000);
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

    #[tokio::test]
    async fn the_relay_future_is_small() {
        // Both directions and the idle timer in one future: an idle tunnel's whole relay
        // state. The two joined per-direction futures it replaced took about 3.6 KiB.
        let ((_client, a), (b, _server)) = pairs().await;
        let relay = relay_tcp(&a, &b, Duration::from_secs(30));
        let size = std::mem::size_of_val(&relay);
        assert!(size <= 512, "relay_tcp future: {size} bytes");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_pair_closes() {
        let ((_client, a), (b, _server)) = pairs().await;
        let (end, _) = relay_tcp(&a, &b, Duration::from_secs(30)).await;
        assert!(matches!(end, RelayEnd::Idle));
    }
}
