//! One HTTP/2 stream as a byte stream (`AsyncRead + AsyncWrite`), so the ordinary relay
//! (`crate::relay`) joins it to a TCP socket.
//!
//! Flow control is h2's, per stream: received bytes are released to the peer's window only
//! when the reader takes them, so a stream whose far end stalls stops its sender without
//! holding up the connection's other streams (the connection window is sized for that, see
//! [`super::CONNECTION_WINDOW`]). Writing waits for send capacity. A shutdown sends END_STREAM (the
//! half-close); dropping the stream before that resets it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes offered to h2 in one write (it frames them by the peer's frame size): one
/// frame's worth.
const MAX_WRITE: usize = super::MAX_FRAME as usize;

pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    pending: Bytes,
    eof: bool,
    shut: bool,
    /// An error that came after bytes a read returned: the next read's answer.
    failed: Option<io::Error>,
}

fn io_err(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 I/O error"));
    }
    let kind = match e.reason() {
        Some(h2::Reason::CANCEL) | Some(h2::Reason::NO_ERROR) => io::ErrorKind::ConnectionReset,
        _ => io::ErrorKind::BrokenPipe,
    };
    io::Error::new(kind, e)
}

impl H2Stream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> H2Stream {
        H2Stream {
            send,
            recv,
            pending: Bytes::new(),
            eof: false,
            shut: false,
            failed: None,
        }
    }
}

impl AsyncRead for H2Stream {
    /// Fills `buf` with every DATA frame already received (not just the first), so frames
    /// that arrived together leave in one write on the other side of the relay.
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Err(e));
        }
        let mut taken = 0;
        let res = loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                taken += n;
                if buf.remaining() == 0 {
                    break Poll::Ready(Ok(()));
                }
            }
            if this.eof {
                break Poll::Ready(Ok(()));
            }
            match this.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(b))) => this.pending = b,
                Poll::Ready(Some(Err(e))) if taken > 0 => {
                    // The bytes first; the error at the next read.
                    this.failed = Some(io_err(e));
                    break Poll::Ready(Ok(()));
                }
                Poll::Ready(Some(Err(e))) => break Poll::Ready(Err(io_err(e))),
                Poll::Ready(None) => this.eof = true,
                // The waker stays registered: at worst one wake-up for nothing.
                Poll::Pending if taken > 0 => break Poll::Ready(Ok(())),
                Poll::Pending => break Poll::Pending,
            }
        };
        if taken > 0 {
            // The bytes are taken: the peer may send as many more.
            let _ = this.recv.flow_control().release_capacity(taken);
        }
        res
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        let want = buf.len().min(MAX_WRITE);
        loop {
            this.send.reserve_capacity(want);
            let n = this.send.capacity();
            if n > 0 {
                let n = n.min(want);
                this.send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(io_err)?;
                return Poll::Ready(Ok(n));
            }
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(io_err(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.shut {
            self.shut = true;
            self.send.reserve_capacity(0);
            self.send.send_data(Bytes::new(), true).map_err(io_err)?;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    type OnA = Box<dyn FnOnce(&mut SendStream<Bytes>) + Send>;

    /// A client and server h2 connection over an in-memory pipe. The client opens A and B;
    /// the server does `first` on its side of A, then answers B. Frames on one connection are
    /// handled in order, so once B's answer is in, everything sent on A before it has been
    /// received. Then, when the client opens C, the server does `then` on A and answers C.
    /// The client's two halves of A and the client itself (for C).
    async fn pair(
        first: OnA,
        then: OnA,
    ) -> (
        RecvStream,
        SendStream<Bytes>,
        h2::client::SendRequest<Bytes>,
    ) {
        let (c, s) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(s).await.expect("server handshake");
            let (_, mut a) = conn.accept().await.expect("A").expect("A");
            let (_, mut b) = conn.accept().await.expect("B").expect("B");
            let mut send_a = a
                .send_response(http::Response::new(()), false)
                .expect("answer A");
            first(&mut send_a);
            b.send_response(http::Response::new(()), true)
                .expect("answer B");
            let Some(Ok((_, mut c))) = conn.accept().await else {
                return;
            };
            then(&mut send_a);
            c.send_response(http::Response::new(()), true)
                .expect("answer C");
            // Driven until the client goes.
            while conn.accept().await.is_some() {}
        });
        let (client, conn) = h2::client::handshake(c).await.expect("client handshake");
        tokio::spawn(conn);
        let mut client = client.ready().await.expect("ready");
        let (a, send_a) = ask(&mut client);
        let (b, _send_b) = ask(&mut client);
        b.await.expect("B answered");
        (a.await.expect("A answered").into_body(), send_a, client)
    }

    fn ask(
        client: &mut h2::client::SendRequest<Bytes>,
    ) -> (h2::client::ResponseFuture, SendStream<Bytes>) {
        let req = http::Request::post("http://t/").body(()).expect("request");
        client.send_request(req, false).expect("send")
    }

    #[tokio::test]
    async fn one_read_takes_every_frame_already_received() {
        let (recv, send, _client) = pair(
            Box::new(|s| {
                for part in ["one ", "two ", "three"] {
                    s.send_data(Bytes::from(part), false).expect("data");
                }
                s.send_data(Bytes::new(), true).expect("end");
            }),
            Box::new(|_| {}),
        )
        .await;
        let mut stream = H2Stream::new(send, recv);
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"one two three");
        assert_eq!(stream.read(&mut buf).await.expect("EOF"), 0);
    }

    #[tokio::test]
    async fn a_reset_after_bytes_is_the_next_read_s_answer() {
        let (recv, send, mut client) = pair(
            Box::new(|s| s.send_data(Bytes::from("last words"), false).expect("data")),
            Box::new(|s| s.send_reset(h2::Reason::INTERNAL_ERROR)),
        )
        .await;
        // The reset is in too (before C's answer).
        let (c, _send_c) = ask(&mut client);
        c.await.expect("C answered");
        let mut stream = H2Stream::new(send, recv);
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await.expect("the bytes first");
        assert_eq!(&buf[..n], b"last words");
        let e = stream.read(&mut buf).await.expect_err("then the reset");
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
