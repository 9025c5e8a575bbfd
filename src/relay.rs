//! The one bidirectional copy, used by CONNECT tunnels, SOCKS and (later) tunnels.
//!
//! Each direction copies until EOF, then half-closes the other side (`shutdown(Write)`) and
//! lets the opposite direction go on: one side's EOF is not the end of the conversation.
//! An idle direction holds no buffer: its next read lands in a scratch buffer of the thread
//! that polls it, and goes straight on to the writer in the same poll when the writer takes it
//! all (a short request costs one read and one write, and no allocation). Only when the writer
//! pushes back (or a throttle paces the direction) are the bytes moved to a buffer of the
//! direction's own, kept while reads complete at once and dropped as soon as one would wait.
//! Reads start at [`START_BUF`] and grow to [`MAX_BUF`] for bulk streams. A tunnel with no
//! traffic either way for the idle timeout is closed: the copy loops only count bytes, and a
//! timer looks at the counts four times per timeout, so the close comes between 1 and 1.25
//! timeouts after the last byte.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::limits::Throttle;

pub(crate) const START_BUF: usize = 16 * 1024;
const MAX_BUF: usize = 256 * 1024;

/// Bytes moved each way, also when the relay ended with an error.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayStats {
    /// From the first stream (the client) to the second (the upstream).
    pub a_to_b: u64,
    pub b_to_a: u64,
}

#[derive(Debug)]
pub enum RelayEnd {
    /// Both directions reached EOF.
    Done,
    /// Nothing moved for the idle timeout.
    Idle,
    /// A read or write failed (reset, broken pipe).
    Error(io::Error),
}

/// Copies `a <-> b` until both directions finish, one fails, or the tunnel idles out.
pub async fn relay<A, B>(a: A, b: B, idle_timeout: Duration) -> (RelayEnd, RelayStats)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    relay_limited(a, b, idle_timeout, None, None).await
}

/// [`relay`] with bandwidth limits: `up` paces `a -> b`, `down` paces `b -> a`. Each read is
/// at most the throttle's chunk, and its bytes wait for the bucket before they are written.
pub async fn relay_limited<A, B>(
    a: A,
    b: B,
    idle_timeout: Duration,
    up: Option<Throttle>,
    down: Option<Throttle>,
) -> (RelayEnd, RelayStats)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let pulse = AtomicU64::new(0);
    let a_to_b = AtomicU64::new(0);
    let b_to_a = AtomicU64::new(0);

    let up = copy_half(&mut ar, &mut bw, &a_to_b, &pulse, up.as_ref());
    let down = copy_half(&mut br, &mut aw, &b_to_a, &pulse, down.as_ref());
    let both = join_directions(up, down);
    drive(both, idle_timeout, [&a_to_b, &b_to_a], &pulse).await
}

/// One direction's wake-ups: set by whatever that direction waits on (its socket, its h2
/// stream), so [`join_directions`] polls only the direction that has something to do.
struct Woken {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Runs the two directions of a relay to their ends, the first error ending both (as
/// `try_join!`), but polls a direction only when it was woken: a reply arriving for the
/// client does not also poll the client's idle socket, nor a request read from it the
/// stream's idle receive side (each such poll costs a readiness check or a lock).
pub(crate) async fn join_directions<U, D>(up: U, down: D) -> io::Result<()>
where
    U: Future<Output = io::Result<()>>,
    D: Future<Output = io::Result<()>>,
{
    let flags = [0, 1].map(|_| {
        Arc::new(Woken {
            // Both are polled once at the start.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        })
    });
    let wakers = [0, 1].map(|i| Waker::from(Arc::clone(&flags[i])));
    let mut up = std::pin::pin!(up);
    let mut down = std::pin::pin!(down);
    let mut done = [false; 2];
    std::future::poll_fn(|cx| {
        for i in 0..2 {
            if done[i] {
                continue;
            }
            // Registered before the flag is read: a wake-up in between is not lost.
            flags[i].task.register(cx.waker());
            if !flags[i].woken.swap(false, Ordering::AcqRel) {
                continue;
            }
            let mut dcx = Context::from_waker(&wakers[i]);
            let polled = if i == 0 {
                up.as_mut().poll(&mut dcx)
            } else {
                down.as_mut().poll(&mut dcx)
            };
            if let Poll::Ready(r) = polled {
                r?;
                done[i] = true;
            }
        }
        if done == [true, true] {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// How many times per idle timeout a relay looks at its byte counts: it ends between `idle`
/// and `idle * (1 + 1 / IDLE_CHECKS)` after the last byte moved.
const IDLE_CHECKS: u32 = 4;

/// Runs both directions of a relay (any copy mechanism) until they end, or until nothing has
/// moved for `idle`. Nothing moved means none of `counts` (the bytes each way) and `pulse` (bumped
/// by a direction that holds bytes it has read, e.g. while a throttle paces them) changed over
/// [`IDLE_CHECKS`] checks in a row, one every `idle / IDLE_CHECKS`: the copy loops only add to
/// counters, with no clock reading per read or write.
pub(crate) async fn drive<F>(
    both: F,
    idle: Duration,
    counts: [&AtomicU64; 2],
    pulse: &AtomicU64,
) -> (RelayEnd, RelayStats)
where
    F: Future<Output = io::Result<()>>,
{
    let moved = || {
        counts[0].load(Ordering::Relaxed)
            + counts[1].load(Ordering::Relaxed)
            + pulse.load(Ordering::Relaxed)
    };
    let idle_out = async {
        let tick = (idle / IDLE_CHECKS).max(Duration::from_millis(1));
        let mut seen = moved();
        let mut quiet = 0;
        loop {
            // From now, not from the last check: a late check never makes up for lost ticks
            // with quick ones that would see nothing new.
            tokio::time::sleep(tick).await;
            let now = moved();
            if now != seen {
                seen = now;
                quiet = 0;
                continue;
            }
            quiet += 1;
            if quiet >= IDLE_CHECKS {
                return;
            }
        }
    };
    let end = tokio::select! {
        r = both => match r {
            Ok(()) => RelayEnd::Done,
            Err(e) => RelayEnd::Error(e),
        },
        _ = idle_out => RelayEnd::Idle,
    };
    let stats = RelayStats {
        a_to_b: counts[0].load(Ordering::Relaxed),
        b_to_a: counts[1].load(Ordering::Relaxed),
    };
    (end, stats)
}

thread_local! {
    /// Where an idle direction's next read lands (see [`poll_first`]): one per thread, up to
    /// [`MAX_BUF`], so a direction waiting for bytes holds no buffer of its own.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// What the first read after an idle wait came to.
enum First {
    /// The reader's EOF.
    Eof,
    /// This many bytes were read and written at once, all of them.
    Passed(usize),
    /// `written` bytes went on at once; the other `n` wait in `buf[..n]` (`buf` is as long as
    /// the read could be), to be written before the burst goes on.
    Held {
        buf: Vec<u8>,
        n: usize,
        written: usize,
    },
}

async fn copy_half<R, W>(
    r: &mut R,
    w: &mut W,
    count: &AtomicU64,
    pulse: &AtomicU64,
    throttle: Option<&Throttle>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let chunk = throttle.map_or(MAX_BUF, |t| t.max_chunk().min(MAX_BUF));
    // The size of the next read: grows for bulk streams.
    let mut size = START_BUF.min(chunk);
    // A throttled direction's bytes wait for the bucket before they are written.
    let pass = throttle.is_none();
    loop {
        // Idle: wait for bytes holding no buffer.
        let first = std::future::poll_fn(|cx| poll_first(cx, r, w, size, pass)).await?;
        let (mut buf, mut n) = match first {
            First::Eof => {
                // Half-close: pass the EOF on; the other direction keeps going.
                let _ = w.shutdown().await;
                return Ok(());
            }
            First::Passed(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
                if n == size && size < chunk {
                    size = (size * 4).min(chunk);
                }
                continue;
            }
            First::Held { buf, n, written } => {
                count.fetch_add(written as u64, Ordering::Relaxed);
                (buf, n)
            }
        };
        // A burst: copy while reads complete at once; drop the buffer when they would wait.
        loop {
            if let Some(t) = throttle {
                // Bytes read and waiting for the bucket: not idle.
                pulse.fetch_add(1, Ordering::Relaxed);
                t.consume(n).await;
            }
            w.write_all(&buf[..n]).await?;
            count.fetch_add(n as u64, Ordering::Relaxed);
            if n == buf.len() && buf.len() < chunk {
                size = (buf.len() * 4).min(chunk);
                buf.resize(size, 0);
            }
            n = read_now(r, &mut buf).await?;
            if n == 0 {
                // Nothing ready now (an EOF is seen by the next idle read).
                break;
            }
        }
    }
}

/// One read of up to `size` bytes into this thread's scratch buffer and, with `pass`, a write
/// of them to `w` in the same poll; whatever `w` does not take at once is copied into a buffer
/// of the direction's own. Pending while nothing is ready to read.
fn poll_first<R, W>(
    cx: &mut Context<'_>,
    r: &mut R,
    w: &mut W,
    size: usize,
    pass: bool,
) -> Poll<io::Result<First>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    with_scratch(size, |buf| poll_first_in(cx, r, w, buf, pass))
}

/// Runs `f` on `size` bytes of this thread's scratch buffer (for a read whose bytes are
/// passed on or copied before `f` returns).
pub(crate) fn with_scratch<T>(size: usize, f: impl FnOnce(&mut [u8]) -> T) -> T {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => {
            if scratch.len() < size {
                scratch.resize(size, 0);
            }
            f(&mut scratch[..size])
        }
        // Only if the reader or writer ran another relay inside its poll: a buffer of its own.
        Err(_) => f(&mut vec![0u8; size]),
    })
}

fn poll_first_in<R, W>(
    cx: &mut Context<'_>,
    r: &mut R,
    w: &mut W,
    buf: &mut [u8],
    pass: bool,
) -> Poll<io::Result<First>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut rb = ReadBuf::new(buf);
    ready!(Pin::new(&mut *r).poll_read(cx, &mut rb))?;
    let got = rb.filled();
    if got.is_empty() {
        return Poll::Ready(Ok(First::Eof));
    }
    let mut written = 0;
    if pass {
        // Pending leaves the task's waker registered: at worst one wake-up for nothing.
        if let Poll::Ready(res) = Pin::new(&mut *w).poll_write(cx, got) {
            written = res?;
        }
    }
    if written >= got.len() {
        return Poll::Ready(Ok(First::Passed(got.len())));
    }
    let rest = &got[written..];
    let mut held = vec![0u8; rb.capacity()];
    held[..rest.len()].copy_from_slice(rest);
    Poll::Ready(Ok(First::Held {
        buf: held,
        n: rest.len(),
        written,
    }))
}

/// One read that does not wait: the bytes ready now, or 0 if none are (or at EOF). A pending
/// read leaves the task's waker registered, which at worst wakes it once for nothing.
async fn read_now<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(0);
    }
    std::future::poll_fn(|cx| {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *r).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Ready(Ok(0)),
            Poll::Ready(res) => Poll::Ready(res.map(|()| rb.filled().len())),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt};

    #[tokio::test]
    async fn half_close_keeps_other_direction() {
        let (client, a) = duplex(64);
        let (b, server) = duplex(64);
        let relay = tokio::spawn(relay(a, b, Duration::from_secs(5)));
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut sr, mut sw) = tokio::io::split(server);
        cw.write_all(b"ping").await.expect("write");
        cw.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        sr.read_to_end(&mut got).await.expect("server reads to EOF");
        assert_eq!(got, b"ping");
        // The server answers after the client's EOF: must still arrive.
        sw.write_all(b"pong").await.expect("write");
        sw.shutdown().await.expect("shutdown");
        let mut back = Vec::new();
        cr.read_to_end(&mut back).await.expect("read");
        assert_eq!(back, b"pong");
        let (end, stats) = relay.await.expect("join");
        assert!(matches!(end, RelayEnd::Done));
        assert_eq!(
            stats,
            RelayStats {
                a_to_b: 4,
                b_to_a: 4
            }
        );
    }

    #[tokio::test]
    async fn bulk_in_bursts_arrives_intact() {
        // Small pipes: every read is short, so buffers are taken and dropped many times.
        let (client, a) = duplex(1000);
        let (b, server) = duplex(777);
        let relay = tokio::spawn(relay(a, b, Duration::from_secs(5)));
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut sr, mut sw) = tokio::io::split(server);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let sent = data.clone();
        let up = tokio::spawn(async move {
            cw.write_all(&sent).await.expect("write");
            cw.shutdown().await.expect("shutdown");
        });
        let mut got = Vec::new();
        sr.read_to_end(&mut got).await.expect("read");
        assert!(got == data, "bytes arrive intact and in order");
        up.await.expect("join");
        sw.shutdown().await.expect("shutdown");
        cr.read_to_end(&mut got).await.expect("EOF back");
        let (end, stats) = relay.await.expect("join");
        assert!(matches!(end, RelayEnd::Done));
        assert_eq!(stats.a_to_b, 300_000);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tunnel_closes() {
        let (_client, a) = duplex(64);
        let (b, _server) = duplex(64);
        let (end, _) = relay(a, b, Duration::from_secs(30)).await;
        assert!(matches!(end, RelayEnd::Idle));
    }

    #[tokio::test]
    async fn a_direction_is_polled_only_when_it_was_woken() {
        let polls = std::sync::atomic::AtomicUsize::new(0);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (_stop, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        tx.send(()).expect("receiver is there");
        // Up: takes the message, then yields three times (each a wake-up of its own), then
        // ends.
        let up = async {
            rx.await.expect("sent");
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            Ok(())
        };
        // Down: counts its polls; nothing ever wakes it.
        let down = std::future::poll_fn(|cx| {
            polls.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut stop_rx).poll(cx).map(|_| Ok(()))
        });
        let r = tokio::time::timeout(Duration::from_millis(200), join_directions(up, down)).await;
        assert!(r.is_err(), "down never ends, so neither does the pair");
        // Polled once at the start, not again at each of up's four wake-ups.
        assert_eq!(polls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn the_first_error_ends_both_directions() {
        let up = async { Err::<(), _>(io::Error::from(io::ErrorKind::ConnectionReset)) };
        let down = std::future::pending::<io::Result<()>>();
        let r = join_directions(up, down).await;
        assert_eq!(
            r.expect_err("up failed").kind(),
            io::ErrorKind::ConnectionReset
        );
        let up = async { Ok(()) };
        let down = async {
            tokio::task::yield_now().await;
            Ok(())
        };
        join_directions(up, down).await.expect("both end");
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_keeps_a_tunnel_and_the_idle_time_counts_from_the_last_byte() {
        let (client, a) = duplex(64);
        let (b, mut server) = duplex(64);
        let idle = Duration::from_secs(30);
        let start = tokio::time::Instant::now();
        let relay = tokio::spawn(relay(a, b, idle));
        let (_cr, mut cw) = tokio::io::split(client);
        // A byte every 25 s (under the idle time, but more than a check apart) for 200 s.
        let mut byte = [0u8; 1];
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_secs(25)).await;
            cw.write_all(b"x").await.expect("write");
            server.read_exact(&mut byte).await.expect("relayed");
            assert!(!relay.is_finished(), "a tunnel with traffic stays");
        }
        let last = tokio::time::Instant::now();
        let (end, stats) = relay.await.expect("join");
        assert!(matches!(end, RelayEnd::Idle));
        assert_eq!(stats.a_to_b, 8);
        let quiet = tokio::time::Instant::now() - last;
        assert!(quiet >= idle, "ended {quiet:?} after the last byte");
        assert!(
            quiet <= idle + idle / IDLE_CHECKS,
            "ended {quiet:?} after the last byte"
        );
        assert!(last - start >= Duration::from_secs(200));
    }
}
