//! The client side of an HTTP connection: a plain TCP socket, or TLS terminated by the
//! listener. Everything in the HTTP pipeline reads and writes through [`ClientStream`]; only
//! the splice relay needs the bare socket ([`ClientStream::as_tcp`], `None` for TLS: tunnels
//! then take the copying relay).
//!
//! Another transport is one more variant: one arm in each `match` below (`split` returns
//! [`ReadHalf::Io`]/[`WriteHalf::Io`] over `tokio::io::split`, the idle wait reads through
//! the stream).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, Interest, ReadBuf};
use tokio::net::tcp;
use tokio::net::TcpStream;

use super::h2_stream::{RequestSide, ResponseSide};

/// Room for `n` more bytes in a read buffer. One that holds no memory yet (an idle client
/// connection's, each exchange's upstream one) is made with room for `n` at once: the
/// same capacity `reserve` gives it, without `reserve`'s growth path.
pub(super) fn room_for(buf: &mut BytesMut, n: usize) {
    if buf.capacity() == 0 {
        *buf = BytesMut::with_capacity(n);
    } else {
        buf.reserve(n);
    }
}

/// Any byte stream a borrowed half can be split from.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

pub enum ClientStream {
    Tcp(TcpStream),
    Tls(Box<crate::tls::server::TlsStream<TcpStream>>),
    /// One HTTP/2 stream, read and written as HTTP/1.1 bytes (`http/h2_stream.rs`).
    H2(Box<super::h2_stream::H2Stream>),
    /// No client: a background refresh (stale-while-revalidate) runs the normal upstream
    /// path with a client that reads EOF and takes every byte written and drops it.
    Discard(Box<Discard>),
}

/// The client of a background request: what its request came in on, and a sink.
pub struct Discard {
    /// The listener's address the request that started it reached.
    pub local: Option<std::net::SocketAddr>,
    pub scheme: &'static str,
}

impl AsyncRead for Discard {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Discard {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl From<TcpStream> for ClientStream {
    fn from(s: TcpStream) -> ClientStream {
        ClientStream::Tcp(s)
    }
}

impl ClientStream {
    /// The bare socket, for the zero-copy splice relay; `None` for an encrypted stream.
    pub fn as_tcp(&self) -> Option<&TcpStream> {
        match self {
            ClientStream::Tcp(s) => Some(s),
            ClientStream::Tls(_) | ClientStream::H2(_) | ClientStream::Discard(_) => None,
        }
    }

    /// The local address the client connected to, whatever the transport.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        match self {
            ClientStream::Tcp(s) => s.local_addr(),
            ClientStream::Tls(s) => s.get_ref().0.local_addr(),
            ClientStream::H2(p) => Ok(p.local),
            ClientStream::Discard(d) => d
                .local
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected)),
        }
    }

    /// The server name the client sent in its TLS handshake (SNI), if any.
    pub fn sni(&self) -> Option<&str> {
        match self {
            ClientStream::Tcp(_) => None,
            ClientStream::Tls(s) => crate::tls::server::sni(s),
            ClientStream::H2(p) => p.sni.as_deref(),
            ClientStream::Discard(_) => None,
        }
    }

    /// An HTTP/2 stream's request head given as values and its text's length, taken once;
    /// `None` for every other stream (their heads are read as bytes).
    pub fn take_head(&mut self) -> Option<(super::codec::RequestHead, usize)> {
        match self {
            ClientStream::H2(p) => p.take_head(),
            _ => None,
        }
    }

    /// Whether a request head given as values waits ([`ClientStream::take_head`]).
    pub fn has_head(&self) -> bool {
        matches!(self, ClientStream::H2(p) if p.has_head())
    }

    /// The URI scheme clients reach this stream with (`Forwarded: proto=`, rewritten links).
    pub fn scheme(&self) -> &'static str {
        match self {
            ClientStream::Tcp(_) => "http",
            ClientStream::Tls(_) => "https",
            ClientStream::H2(p) => p.scheme,
            ClientStream::Discard(d) => d.scheme,
        }
    }

    /// Waits until the idle connection has something to read (or EOF, or an error), then
    /// reads once into `buf` without blocking. `Ok(0)`: EOF; `WouldBlock`: spurious wake-up,
    /// wait again. Holds no buffer while it waits.
    pub async fn idle_read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            ClientStream::Tcp(s) => {
                s.readable().await?;
                room_for(buf, 4096);
                let s: &TcpStream = s;
                let room = buf.capacity() - buf.len();
                let mut got = 0;
                // A short read drained the socket: its readiness is cleared at once (what
                // tokio's own `poll_read` does, and `try_read` does not), so the wait for the
                // next request costs no `read` that finds nothing. Cleared only if no new
                // event came in since it was read, so no wake-up is lost.
                let read = s.try_io(Interest::READABLE, || {
                    got = s.try_read_buf(buf)?;
                    if got > 0 && got < room {
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    Ok(got)
                });
                match read {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
                    r => r,
                }
            }
            // Plaintext may already sit decrypted inside rustls, where readiness of the
            // socket would not show it: a real read (cancel-safe; the caller's select
            // bounds it with the keep-alive timeout).
            ClientStream::Tls(s) => {
                buf.reserve(4096);
                s.read_buf(buf).await
            }
            ClientStream::H2(p) => {
                buf.reserve(4096);
                p.read_buf(buf).await
            }
            ClientStream::Discard(_) => Ok(0),
        }
    }

    /// Borrowed read and write halves, usable at the same time.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            ClientStream::Tcp(s) => {
                let (r, w) = s.split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            ClientStream::Tls(s) => {
                let io: &mut dyn Io = &mut **s;
                let (r, w) = tokio::io::split(io);
                (ReadHalf::Io(r), WriteHalf::Io(w))
            }
            ClientStream::H2(p) => {
                let (r, w) = p.split();
                (ReadHalf::H2(r), WriteHalf::H2(w))
            }
            ClientStream::Discard(d) => {
                let io: &mut dyn Io = &mut **d;
                let (r, w) = tokio::io::split(io);
                (ReadHalf::Io(r), WriteHalf::Io(w))
            }
        }
    }
}

pub enum ReadHalf<'a> {
    Tcp(tcp::ReadHalf<'a>),
    /// A stream without a native split (TLS): `tokio::io::split` over a borrow of it.
    Io(tokio::io::ReadHalf<&'a mut dyn Io>),
    /// An HTTP/2 stream's request side.
    H2(&'a mut RequestSide),
}

pub enum WriteHalf<'a> {
    Tcp(tcp::WriteHalf<'a>),
    Io(tokio::io::WriteHalf<&'a mut dyn Io>),
    /// An HTTP/2 stream's response side, which also takes a response head as values.
    H2(&'a mut ResponseSide),
}

impl WriteHalf<'_> {
    /// The HTTP/2 stream's response side, when this writes to one.
    pub fn h2(&mut self) -> Option<&mut ResponseSide> {
        match self {
            WriteHalf::H2(s) => Some(s),
            _ => None,
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            ClientStream::H2(p) => Pin::new(&mut **p).poll_read(cx, buf),
            ClientStream::Discard(d) => Pin::new(&mut **d).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            ClientStream::H2(p) => Pin::new(&mut **p).poll_write(cx, buf),
            ClientStream::Discard(d) => Pin::new(&mut **d).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
            ClientStream::H2(p) => Pin::new(&mut **p).poll_write_vectored(cx, bufs),
            ClientStream::Discard(d) => Pin::new(&mut **d).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Tcp(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
            ClientStream::H2(_) => false,
            ClientStream::Discard(_) => true,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            ClientStream::H2(p) => Pin::new(&mut **p).poll_flush(cx),
            ClientStream::Discard(d) => Pin::new(&mut **d).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            ClientStream::H2(p) => Pin::new(&mut **p).poll_shutdown(cx),
            ClientStream::Discard(d) => Pin::new(&mut **d).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for ReadHalf<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Io(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::H2(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            WriteHalf::Io(s) => Pin::new(s).poll_write(cx, buf),
            WriteHalf::H2(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            WriteHalf::Io(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            WriteHalf::H2(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteHalf::Tcp(s) => s.is_write_vectored(),
            WriteHalf::Io(s) => s.is_write_vectored(),
            WriteHalf::H2(_) => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_flush(cx),
            WriteHalf::Io(s) => Pin::new(s).poll_flush(cx),
            WriteHalf::H2(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            WriteHalf::Io(s) => Pin::new(s).poll_shutdown(cx),
            WriteHalf::H2(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_for_a_read() {
        let mut fresh = BytesMut::new();
        room_for(&mut fresh, 4096);
        let mut grown = BytesMut::new();
        grown.reserve(4096);
        assert_eq!(fresh.capacity(), grown.capacity(), "as reserve makes it");
        let mut held = BytesMut::from(&b"GET /"[..]);
        room_for(&mut held, 100);
        assert_eq!(&held[..], b"GET /", "bytes kept");
        assert!(held.capacity() - held.len() >= 100);
    }
}
