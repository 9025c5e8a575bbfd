//! The client side of an HTTP connection: a plain TCP socket today; TLS (and any other
//! transport) is one more variant. Everything in the HTTP pipeline reads and writes through
//! [`ClientStream`]; only the splice relay needs the bare socket ([`ClientStream::as_tcp`]).
//!
//! Adding a variant (e.g. `Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>)`) means one
//! arm in each `match` below: `as_tcp` returns `None` (tunnels then take the copying relay),
//! `split` returns [`ReadHalf::Io`]/[`WriteHalf::Io`] over `tokio::io::split(&mut *tls)`, and
//! the idle wait reads through the stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp;
use tokio::net::TcpStream;

/// Any byte stream a borrowed half can be split from.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

pub enum ClientStream {
    Tcp(TcpStream),
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
        }
    }

    /// The URI scheme clients reach this stream with (`Forwarded: proto=`, rewritten links).
    pub fn scheme(&self) -> &'static str {
        match self {
            ClientStream::Tcp(_) => "http",
        }
    }

    /// Waits until the idle connection has something to read (or EOF, or an error), then
    /// reads once into `buf` without blocking. `Ok(0)`: EOF; `WouldBlock`: spurious wake-up,
    /// wait again. Holds no buffer while it waits.
    pub async fn idle_read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            ClientStream::Tcp(s) => {
                s.readable().await?;
                buf.reserve(4096);
                s.try_read_buf(buf)
            }
        }
    }

    /// Borrowed read and write halves, usable at the same time.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            ClientStream::Tcp(s) => {
                let (r, w) = s.split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
        }
    }
}

pub enum ReadHalf<'a> {
    Tcp(tcp::ReadHalf<'a>),
    /// A stream without a native split (TLS): `tokio::io::split` over a borrow of it.
    Io(tokio::io::ReadHalf<&'a mut dyn Io>),
}

pub enum WriteHalf<'a> {
    Tcp(tcp::WriteHalf<'a>),
    Io(tokio::io::WriteHalf<&'a mut dyn Io>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
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
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Tcp(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
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
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteHalf::Tcp(s) => s.is_write_vectored(),
            WriteHalf::Io(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_flush(cx),
            WriteHalf::Io(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            WriteHalf::Io(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
