//! One write for the frames of many HTTP/2 streams: an h2 connection's socket as the `h2`
//! crate sees it ([`Gather`]). Used by HTTP/2 client connections on `reverse` listeners and
//! HTTP/2 connections to servers, and, without putting flushes off ([`Gather::eager`]), by
//! the reverse tunnel's links (both ends).
//!
//! `h2` writes its buffer out before each frame it does not copy (256 bytes or more with
//! vectored writes, 1 KiB without) and calls `poll_flush` each time: with many short
//! responses in flight, each left in a write of its own (one `writev`, one TLS record, one
//! TCP segment and one wake-up of the peer per response; HAProxy sends about six 1 KiB
//! responses per write under the same load). Here the writes of one pass of the connection
//! are gathered and leave together, in one write at the end of the pass or of the next one.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An h2 connection's socket as h2 sees it: writes of less than [`GATHER`] bytes are gathered
/// (a larger one goes out behind what is gathered, in one vectored write with it). It reports
/// no vectored writes, so h2 copies a frame of less than 1 KiB into its own write buffer
/// behind the ones before it.
///
/// **The flush is put off once.** `h2` flushes after every frame it did not copy, not only at
/// the end of a pass over its streams, and cannot say which flush is the last. So the first
/// `poll_flush` with bytes gathered only wakes the connection's task and returns; the bytes
/// go out at the first `poll_flush` after the connection has read again, which `h2` does at
/// the start of every pass (it reads until the socket has nothing, then writes what its
/// streams queued, then flushes): the responses of all the streams served in one pass, and
/// of those served by the time the task runs again, leave in one write. A flush is put off
/// at most one pass; `poll_shutdown` writes everything out. A connection keeps at most
/// [`KEEP`] bytes of gathering buffer between writes.
///
/// Putting a flush off costs one more pass of the connection. When that pass brought nothing
/// to go with the bytes (one message in flight at a time, as in an interactive session), the
/// next flushes write at once (each write of h2 then leaves as before) before a flush is put
/// off again: after [`PATIENCE`] such passes in a row, 1 flush, then 2, 4, 8 and at most
/// [`SKIP`] while the put-off ones keep gathering nothing (under load one now and then gathers
/// nothing, which is no reason to stop); a put-off flush that gathered more starts again.
pub struct Gather<S> {
    io: S,
    buf: Vec<u8>,
    /// How much of `buf` went out already.
    sent: usize,
    /// A flush was put off (and the task woken); the next one after a read writes out.
    deferred: bool,
    /// The connection read since the flush was put off: a new pass.
    read_since: bool,
    /// Bytes were written since the last `poll_flush`.
    wrote: bool,
    /// Groups of writes (each ended by a `poll_flush`) gathered since the last write out.
    groups: u8,
    /// Flushes left that write at once, without being put off.
    skip: u8,
    /// Put-off flushes in a row that gathered nothing more.
    streak: u32,
    /// Flushes may be put off ([`Gather::new`]); without, each writes out ([`Gather::eager`]).
    defer: bool,
}

/// The most flushes that write at once after put-off ones gathered nothing more.
pub const SKIP: u8 = 16;

/// Put-off flushes in a row that gather nothing more before flushes write at once.
pub const PATIENCE: u32 = 4;

/// Writes below this are gathered (h2's own write buffer is 16 KiB).
pub const GATHER: usize = 16 * 1024;

impl<S> Gather<S> {
    /// Writes gathered, the first flush of a pass put off (see the type's doc).
    pub fn new(io: S) -> Self {
        Self {
            io,
            buf: Vec::new(),
            sent: 0,
            deferred: false,
            read_since: false,
            wrote: false,
            groups: 0,
            skip: 0,
            streak: 0,
            defer: true,
        }
    }

    /// Writes gathered until each flush, none put off: the tunnel's links (see
    /// docs/tunnel.md for why they do not put flushes off).
    pub fn eager(io: S) -> Self {
        Self {
            defer: false,
            ..Self::new(io)
        }
    }
}

impl<S: AsyncWrite + Unpin> Gather<S> {
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
            self.emptied();
            return Poll::Ready(Ok(of_then));
        }
        self.emptied();
        Poll::Ready(Ok(0))
    }

    /// All gathered bytes went out. A buffer grown past [`KEEP`] is given back, so that an
    /// idle connection holds no more than that (a busy one allocates it again per write).
    fn emptied(&mut self) {
        self.sent = 0;
        if self.buf.capacity() > KEEP {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
    }
}

/// The most gathering buffer a connection keeps between writes.
pub const KEEP: usize = 4096;

impl<S: AsyncRead + Unpin> AsyncRead for Gather<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.read_since = true;
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gather<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.wrote = true;
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
        if std::mem::take(&mut this.wrote) {
            this.groups = this.groups.saturating_add(1);
        }
        // `eager`: written out at every flush.
        if this.defer && this.sent < this.buf.len() {
            if !this.deferred && this.skip > 0 {
                this.skip -= 1;
            } else if !this.deferred {
                // Put off: more of this pass (or the next) may follow; see the type's doc.
                this.deferred = true;
                this.read_since = false;
                cx.waker().wake_by_ref();
                return Poll::Ready(Ok(()));
            } else if !this.read_since {
                // Still the pass that put it off.
                return Poll::Ready(Ok(()));
            } else if this.groups < 2 {
                // The pass it was put off for brought nothing more: write at once for a while.
                this.streak = this.streak.saturating_add(1);
                if this.streak >= PATIENCE {
                    this.skip = (1u8 << (this.streak - PATIENCE).min(4)).min(SKIP);
                }
            } else {
                this.streak = 0;
            }
        }
        ready!(this.poll_drain(cx, &[]))?;
        this.deferred = false;
        this.groups = 0;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx, &[]))?;
        this.deferred = false;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    /// A waker that counts its wake-ups.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A gathering socket driven by hand, as `h2` drives it, with a counting waker.
    struct Driven {
        link: Gather<TcpStream>,
        count: Arc<Count>,
        waker: Waker,
    }

    impl Driven {
        fn new(link: Gather<TcpStream>) -> Self {
            let count = Arc::new(Count(AtomicUsize::new(0)));
            let waker = Waker::from(count.clone());
            Self { link, count, waker }
        }

        fn wakes(&self) -> usize {
            self.count.0.load(Ordering::SeqCst)
        }

        /// A write and a flush, as `h2` makes them after a frame it did not copy; the flush
        /// completes at once (written out or put off).
        async fn write_flush(&mut self, bytes: &[u8]) {
            self.link.write_all(bytes).await.expect("write");
            let mut cx = Context::from_waker(&self.waker);
            assert!(Pin::new(&mut self.link).poll_flush(&mut cx).is_ready());
        }

        /// The start of `h2`'s next pass: a read that finds nothing.
        fn read_nothing(&mut self) {
            let mut rbuf = [0u8; 8];
            let mut read = ReadBuf::new(&mut rbuf);
            let mut cx = Context::from_waker(&self.waker);
            assert!(Pin::new(&mut self.link)
                .poll_read(&mut cx, &mut read)
                .is_pending());
        }
    }

    /// `b` receives `want` next, within 5 s. Then back to the scheduler: tokio's budget of
    /// socket operations per poll of this task would make a later write wait.
    async fn receives(b: &mut TcpStream, want: &[u8]) {
        let mut got = vec![0u8; want.len()];
        tokio::time::timeout(Duration::from_secs(5), b.read_exact(&mut got))
            .await
            .expect("the bytes arrived in time")
            .expect("read");
        assert_eq!(got, want);
        tokio::task::yield_now().await;
    }

    /// Whether `b` receives any byte within 50 ms.
    async fn nothing_arrives(b: &mut TcpStream) -> bool {
        let mut probe = [0u8; 16];
        tokio::time::timeout(Duration::from_millis(50), b.read(&mut probe))
            .await
            .is_err()
    }

    #[tokio::test]
    async fn a_pass_s_writes_leave_together_after_the_next_read() {
        let (a, mut b) = tcp_pair().await;
        let mut d = Driven::new(Gather::new(a));
        // One pass: a frame and a flush, another frame and flush: the first flush is put off
        // and wakes the task once; the second, still in the same pass (no read since), is
        // put off too.
        d.write_flush(b"one-").await;
        assert_eq!(d.wakes(), 1, "the put-off flush wakes the task");
        d.write_flush(b"two-").await;
        assert_eq!(d.wakes(), 1, "woken once per put-off flush");
        assert!(
            nothing_arrives(&mut b).await,
            "bytes left before the next pass"
        );
        // The next pass: h2 reads first (nothing there), writes, then flushes.
        d.read_nothing();
        d.write_flush(b"three").await;
        receives(&mut b, b"one-two-three").await;
        // All went out: the next flush has nothing to put off and wakes nobody.
        d.write_flush(b"").await;
        assert_eq!(d.wakes(), 1);
    }

    #[tokio::test]
    async fn after_put_off_flushes_that_gathered_nothing_more_flushes_write_at_once() {
        let (a, mut b) = tcp_pair().await;
        let mut d = Driven::new(Gather::new(a));
        // One message, its flush put off; the next pass (a read, no writes) writes it out.
        d.write_flush(b"alone").await;
        assert_eq!(d.wakes(), 1);
        d.read_nothing();
        d.write_flush(b"").await;
        receives(&mut b, b"alone").await;
        // That pass brought nothing more; after PATIENCE such passes in a row the next flush
        // writes at once, unwoken; then one is put off again and gathers nothing more again:
        // then 2 write at once, then 4, up to SKIP.
        let mut wakes = 1;
        let runs = std::iter::repeat_n(0u8, PATIENCE as usize - 1).chain([1, 2, 4, 8, 16, 16]);
        for run in runs {
            for i in 0..run {
                d.write_flush(&[i]).await;
                receives(&mut b, &[i]).await;
            }
            assert_eq!(d.wakes(), wakes, "no flush was put off");
            d.write_flush(b"next").await;
            wakes += 1;
            assert_eq!(d.wakes(), wakes, "this flush was put off");
            d.read_nothing();
            d.write_flush(b"").await;
            receives(&mut b, b"next").await;
        }
        // A put-off flush that gathers more (a write in the next pass) ends the skipping.
        for i in 0..SKIP {
            d.write_flush(&[i]).await;
            receives(&mut b, &[i]).await;
        }
        d.write_flush(b"one-").await;
        d.read_nothing();
        d.write_flush(b"two").await;
        receives(&mut b, b"one-two").await;
        let before = d.wakes();
        d.write_flush(b"put off").await;
        assert_eq!(d.wakes(), before + 1, "put off at once");
        assert!(nothing_arrives(&mut b).await);
    }

    #[tokio::test]
    async fn an_eager_gather_writes_out_at_every_flush() {
        let (a, mut b) = tcp_pair().await;
        let mut link = Gather::eager(a);
        link.write_all(b"head-").await.expect("write");
        link.write_all(b"one-").await.expect("write");
        assert!(nothing_arrives(&mut b).await, "bytes left before the flush");
        link.flush().await.expect("flush");
        receives(&mut b, b"head-one-").await;
    }

    #[tokio::test]
    async fn shutdown_writes_out_what_a_put_off_flush_left() {
        let (a, mut b) = tcp_pair().await;
        let mut link = Gather::new(a);
        link.write_all(b"last words").await.expect("write");
        link.flush().await.expect("flush");
        assert!(nothing_arrives(&mut b).await, "the first flush is put off");
        link.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.expect("read");
        assert_eq!(&got, b"last words");
    }

    #[tokio::test]
    async fn a_large_gathering_buffer_is_given_back_once_written_out() {
        let (a, mut b) = tcp_pair().await;
        let mut link = Gather::eager(a);
        let chunk = vec![7u8; 1000];
        for _ in 0..12 {
            link.write_all(&chunk).await.expect("write");
        }
        assert!(link.buf.capacity() > KEEP);
        link.flush().await.expect("flush");
        receives(&mut b, &[7u8; 12_000]).await;
        assert!(
            link.buf.capacity() <= KEEP,
            "an idle connection keeps {}",
            link.buf.capacity()
        );
        link.write_all(b"small").await.expect("write");
        link.flush().await.expect("flush");
        let kept = link.buf.capacity();
        assert!(kept > 0 && kept <= KEEP, "a small buffer is kept: {kept}");
    }

    #[tokio::test]
    async fn large_writes_follow_the_gathered_ones_in_order() {
        let (a, mut b) = tcp_pair().await;
        let mut link = Gather::new(a);
        let big: Vec<u8> = (0..3 * GATHER).map(|i| (i % 251) as u8).collect();
        link.write_all(b"small").await.expect("write");
        let writer = async {
            // Too large to gather: it goes out at once, behind what was gathered.
            link.write_all(&big).await.expect("write");
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
