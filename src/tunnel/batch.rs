//! One write for the frames of many streams: a link's HTTP/2 connection is polled once the
//! tasks that were ready when it was woken have run, not right after the first of them.
//!
//! A stream task that hands h2 a frame wakes the connection's task, and tokio runs a task
//! woken that way next (its "LIFO slot"): the connection then writes that one frame and goes
//! back to sleep before the next stream task has queued its own. With fifty short requests in
//! flight that was one `writev` (and one TCP segment, and one wake-up of the other side) per
//! response. [`Batch`] hands the connection's waker to the scheduler's deferred list instead
//! (`tokio::task::yield_now`'s mechanism), which wakes it once the worker has run out of ready
//! tasks or every few dozen polls (tokio's maintenance tick): the frames queued meanwhile leave
//! together. The delay is bounded by that tick, and nothing waits on a timer.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Defers the wake-ups of what it polls (see the module's text).
pub struct Batch {
    hook: Arc<Hook>,
    waker: Waker,
}

struct Hook {
    /// The waker of the task that polls through the [`Batch`].
    task: AtomicWaker,
    /// Set by a deferring poll; the first wake-up after it defers the task, later ones do
    /// nothing.
    armed: AtomicBool,
}

impl Wake for Hook {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.armed.swap(false, Ordering::AcqRel) {
            return;
        }
        if let Some(task) = self.task.take() {
            defer(&task);
        }
    }
}

/// Hands `task` to the scheduler of the current thread, to be woken after its ready tasks;
/// woken at once outside a runtime (tokio's own rule for `yield_now`).
fn defer(task: &Waker) {
    let mut cx = Context::from_waker(task);
    // The first poll of `yield_now` registers the waker with the scheduler and returns
    // `Pending`; the future is dropped then, the registration stays.
    let _ = pin!(tokio::task::yield_now()).poll(&mut cx);
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new() -> Self {
        let hook = Arc::new(Hook {
            task: AtomicWaker::new(),
            armed: AtomicBool::new(false),
        });
        let waker = Waker::from(hook.clone());
        Self { hook, waker }
    }

    /// Polls `f`; with `busy`, with a context whose wake-ups are deferred (`cx` is the
    /// caller's). Without, `f` gets `cx` itself: with one stream on the link there is nothing
    /// to gather, and a deferred wake-up would only cost the worker an extra turn (a poll of
    /// the I/O driver, often a wake-up of the other worker).
    pub fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        busy: bool,
        f: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        if !busy {
            return f(cx);
        }
        self.hook.task.register(cx.waker());
        self.hook.armed.store(true, Ordering::Release);
        f(&mut Context::from_waker(&self.waker))
    }
}

/// A future polled through a [`Batch`] while `busy()` says so: a link's connection, awaited
/// in a `select!`.
pub struct Batched<F, B> {
    batch: Batch,
    inner: F,
    busy: B,
}

impl<F, B: Fn() -> bool> Batched<F, B> {
    pub fn new(inner: F, busy: B) -> Self {
        Self {
            batch: Batch::new(),
            inner,
            busy,
        }
    }
}

impl<F: Future + Unpin, B: Fn() -> bool + Unpin> Future for Batched<F, B> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let busy = (this.busy)();
        this.batch
            .poll(cx, busy, |cx| std::pin::Pin::new(&mut this.inner).poll(cx))
    }
}

/// A link's socket as h2 sees it: writes of less than [`GATHER`] bytes are gathered and go
/// out on `poll_flush` (or ahead of a larger write, in one vectored write with it); larger
/// ones go straight through. It reports no vectored writes, so h2 copies a frame of less than
/// 1 KiB into its own write buffer behind the ones before it (with vectored writes it does
/// that only under 256 bytes, and writes out before each larger frame): the short frames of
/// many streams leave in one write. A frame over 1 KiB still leaves as one write, its head
/// and its payload gathered here; a bulk frame's head and first kilobyte go with its payload.
pub struct LinkIo<S> {
    io: S,
    buf: Vec<u8>,
    /// How much of `buf` went out already.
    sent: usize,
}

/// Writes below this are gathered (h2's own write buffer is 16 KiB).
pub const GATHER: usize = 16 * 1024;

impl<S> LinkIo<S> {
    pub fn new(io: S) -> Self {
        Self {
            io,
            buf: Vec::new(),
            sent: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> LinkIo<S> {
    /// Writes out what is gathered, with `then` behind it in the same write when there is
    /// one; `Ready(n)`: `n` bytes of `then` went too.
    fn poll_drain(&mut self, cx: &mut Context<'_>, then: &[u8]) -> Poll<std::io::Result<usize>> {
        while self.sent < self.buf.len() {
            let pending = &self.buf[self.sent..];
            let n = if then.is_empty() {
                ready!(Pin::new(&mut self.io).poll_write(cx, pending))?
            } else {
                let parts = [std::io::IoSlice::new(pending), std::io::IoSlice::new(then)];
                ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &parts))?
            };
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            if n < pending.len() {
                self.sent += n;
                continue;
            }
            let of_then = n - pending.len();
            self.buf.clear();
            self.sent = 0;
            return Poll::Ready(Ok(of_then));
        }
        self.buf.clear();
        self.sent = 0;
        Poll::Ready(Ok(0))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LinkIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LinkIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() + data.len() < GATHER {
            this.buf.extend_from_slice(data);
            return Poll::Ready(Ok(data.len()));
        }
        if this.sent < this.buf.len() {
            let n = ready!(this.poll_drain(cx, data))?;
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
        }
        Pin::new(&mut this.io).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx, &[]))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx, &[]))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn outside_a_runtime_a_wake_up_reaches_the_task_once_per_poll() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let task = Waker::from(count.clone());
        let mut cx = Context::from_waker(&task);
        let batch = Batch::new();
        let mut inner = None;
        let r: Poll<()> = batch.poll(&mut cx, true, |cx| {
            inner = Some(cx.waker().clone());
            Poll::Pending
        });
        assert!(r.is_pending());
        let inner = inner.expect("polled");
        inner.wake_by_ref();
        inner.wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "one wake-up per poll");
        let _ = batch.poll(&mut cx, true, |_| Poll::<()>::Pending);
        inner.wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deferred_future_still_completes_when_woken_from_another_task() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(1);
        let batch = Batch::new();
        let sender = tokio::spawn(async move {
            for i in 0..100 {
                tx.send(i).await.expect("receiver alive");
            }
        });
        let mut got = Vec::new();
        while let Some(v) =
            std::future::poll_fn(|cx| batch.poll(cx, true, |cx| rx.poll_recv(cx))).await
        {
            got.push(v);
        }
        sender.await.expect("sender");
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }

    /// Items received per wake-up of a receiver task after ten tasks each sent one, on one
    /// worker: the receiver polls through a [`Batch`] with `busy`.
    fn receipts(busy: bool) -> Vec<usize> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .expect("runtime");
        rt.block_on(async move {
            tokio::spawn(async move {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
                let batch = Batch::new();
                for i in 0..10 {
                    let tx = tx.clone();
                    tokio::spawn(async move { tx.send(i).expect("receiver alive") });
                }
                drop(tx);
                let mut got = Vec::new();
                loop {
                    let mut buf = Vec::new();
                    let n = std::future::poll_fn(|cx| {
                        batch.poll(cx, busy, |cx| rx.poll_recv_many(cx, &mut buf, 100))
                    })
                    .await;
                    if n == 0 {
                        return got;
                    }
                    got.push(n);
                }
            })
            .await
            .expect("receiver task")
        })
    }

    #[test]
    fn tasks_ready_together_are_taken_in_one_poll() {
        // Without: each sender's wake-up runs the receiver next (tokio's LIFO slot), before
        // the other senders.
        let alone = receipts(false);
        assert!(alone.len() > 1, "{alone:?}");
        assert_eq!(receipts(true), vec![10]);
    }

    async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (a, b) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    #[tokio::test]
    async fn small_writes_wait_for_the_flush_and_large_ones_follow_them_in_order() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, mut b) = tcp_pair().await;
        let mut link = LinkIo::new(a);
        link.write_all(b"head-").await.expect("write");
        link.write_all(b"one-").await.expect("write");
        // Nothing left yet: the peer's read finds no byte.
        let mut probe = [0u8; 16];
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(50), b.read(&mut probe)).await;
        assert!(early.is_err(), "bytes left before the flush: {early:?}");
        link.flush().await.expect("flush");
        let mut got = vec![0u8; 9];
        b.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"head-one-");
        // A gathered write, then one too large to gather: both arrive, in order.
        let big: Vec<u8> = (0..3 * GATHER).map(|i| (i % 251) as u8).collect();
        link.write_all(b"small").await.expect("write");
        let writer = async {
            link.write_all(&big).await.expect("write");
            link.flush().await.expect("flush");
            link
        };
        let reader = async {
            let mut got = vec![0u8; 5 + big.len()];
            b.read_exact(&mut got).await.expect("read");
            got
        };
        let (_link, got) = tokio::join!(writer, reader);
        assert_eq!(&got[..5], b"small");
        assert!(got[5..] == big[..], "the large write arrived changed");
    }
}
