//! One write for the frames of many streams: a link's socket as h2 sees it ([`LinkIo`]).
//!
//! With fifty short requests in flight through one link, h2 wrote each response frame of
//! more than 256 bytes alone (it writes out its buffer before each frame it does not copy):
//! one `writev`, one TCP segment and one wake-up of the other side per response.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
