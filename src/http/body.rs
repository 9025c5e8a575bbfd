//! Streaming message bodies from one socket to another in bounded memory.
//!
//! Bytes already read past a head sit in the connection's buffer; each copy takes those first
//! and then reads the socket, never past the end of the body (so a pipelined next request stays
//! where it is). Every read and write is bounded by the idle timeout.

use std::io;
use std::time::Duration;

use crate::deadline::within;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::chunked::{ChunkError, ChunkedDecoder};

/// Largest single read while streaming a body.
pub const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("reading: {0}")]
    Read(io::Error),
    #[error("connection closed before the body ended")]
    Eof,
    #[error("no data for {0:?}")]
    ReadTimeout(Duration),
    #[error("writing: {0}")]
    Write(io::Error),
    #[error("writing stalled for {0:?}")]
    WriteTimeout(Duration),
    #[error("bad chunked body: {0}")]
    Chunk(#[from] ChunkError),
    #[error("body larger than {0} bytes")]
    TooLarge(u64),
}

impl CopyError {
    /// Whether the fault lies with the side being read (not the side written to).
    pub fn is_source(&self) -> bool {
        !matches!(self, CopyError::Write(_) | CopyError::WriteTimeout(_))
    }
}

/// A writer that throws bytes away and fails once more than `limit` have been written: the
/// target of a request body the proxy discards.
pub struct BoundedSink {
    written: u64,
    limit: u64,
}

impl BoundedSink {
    pub fn new(limit: u64) -> Self {
        BoundedSink { written: 0, limit }
    }

    pub fn written(&self) -> u64 {
        self.written
    }
}

impl AsyncWrite for BoundedSink {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        self.written += data.len() as u64;
        std::task::Poll::Ready(if self.written > self.limit {
            Err(io::Error::other("body larger than the discard bound"))
        } else {
            Ok(data.len())
        })
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A writer that counts the bytes it passes on: what the access log reports, also for a
/// transfer that broke off half-way.
pub struct Counted<W> {
    inner: W,
    written: u64,
}

impl<W> Counted<W> {
    pub fn new(inner: W) -> Self {
        Counted { inner, written: 0 }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// The writer, and the count to add to for what is passed to it directly.
    pub fn parts(&mut self) -> (&mut W, &mut u64) {
        (&mut self.inner, &mut self.written)
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counted<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, data);
        if let std::task::Poll::Ready(Ok(n)) = r {
            self.written += n as u64;
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn fill<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    limit: usize,
    t: Duration,
) -> Result<usize, CopyError> {
    buf.reserve(limit.clamp(1, READ_CHUNK));
    let mut lim = (&mut *r).take(limit as u64);
    match within(t, lim.read_buf(buf)).await {
        Err(_) => Err(CopyError::ReadTimeout(t)),
        Ok(Err(e)) => Err(CopyError::Read(e)),
        Ok(Ok(0)) => Err(CopyError::Eof),
        Ok(Ok(n)) => Ok(n),
    }
}

pub async fn write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
    t: Duration,
) -> Result<(), CopyError> {
    match within(t, w.write_all(data)).await {
        Err(_) => Err(CopyError::WriteTimeout(t)),
        Ok(Err(e)) => Err(CopyError::Write(e)),
        Ok(Ok(())) => Ok(()),
    }
}

/// Writes `head` and then `body` with vectored writes (`writev`: one system call for both
/// while the socket takes them, and no copy of the body behind the head), within `t` for the
/// whole.
pub async fn write_all_two<W: AsyncWrite + Unpin>(
    w: &mut W,
    head: &[u8],
    body: &[u8],
    t: Duration,
) -> Result<(), CopyError> {
    let write = async {
        let (mut h, mut b) = (head, body);
        while !h.is_empty() || !b.is_empty() {
            let n = if h.is_empty() {
                w.write(b).await?
            } else {
                let bufs = [io::IoSlice::new(h), io::IoSlice::new(b)];
                w.write_vectored(&bufs).await?
            };
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            let from_head = n.min(h.len());
            h = &h[from_head..];
            b = &b[n - from_head..];
        }
        Ok(())
    };
    match within(t, write).await {
        Err(_) => Err(CopyError::WriteTimeout(t)),
        Ok(Err(e)) => Err(CopyError::Write(e)),
        Ok(Ok(())) => Ok(()),
    }
}

/// Copies exactly `len` body bytes. Returns the bytes copied.
pub async fn copy_length<R, W>(
    r: &mut R,
    buf: &mut BytesMut,
    w: &mut W,
    len: u64,
    t: Duration,
) -> Result<u64, CopyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut left = len;
    while left > 0 {
        if buf.is_empty() {
            fill(
                r,
                buf,
                usize::try_from(left).unwrap_or(usize::MAX).min(READ_CHUNK),
                t,
            )
            .await?;
        }
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        write_all(w, &buf[..n], t).await?;
        buf.advance(n);
        left -= n as u64;
    }
    Ok(len)
}

/// Copies a chunked body. `raw`: pass the chunked bytes on as they are (trailers included);
/// otherwise write only the chunk data (for an HTTP/1.0 recipient). Returns bytes read.
pub async fn copy_chunked<R, W>(
    r: &mut R,
    buf: &mut BytesMut,
    w: &mut W,
    raw: bool,
    max_trailer: usize,
    t: Duration,
) -> Result<u64, CopyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    copy_chunked_capped(r, buf, w, raw, max_trailer, u64::MAX, t).await
}

/// [`copy_chunked`], refusing ([`CopyError::TooLarge`]) a body whose decoded data runs past
/// `max_data` bytes before any byte past the bound is written.
pub async fn copy_chunked_capped<R, W>(
    r: &mut R,
    buf: &mut BytesMut,
    w: &mut W,
    raw: bool,
    max_trailer: usize,
    max_data: u64,
    t: Duration,
) -> Result<u64, CopyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut dec = ChunkedDecoder::new(max_trailer);
    let mut total = 0u64;
    let mut data = 0u64;
    loop {
        if buf.is_empty() {
            fill(r, buf, READ_CHUNK, t).await?;
        }
        // Walk everything buffered; write it in one go when passing through.
        let mut used = 0;
        while used < buf.len() && !dec.is_done() {
            let p = dec.advance(&buf[used..])?;
            if let Some(range) = &p.data {
                data += range.len() as u64;
                if data > max_data {
                    if raw {
                        // What was walked before this chunk's data is within the bound.
                        write_all(w, &buf[..used], t).await?;
                    }
                    return Err(CopyError::TooLarge(max_data));
                }
            }
            if !raw {
                if let Some(range) = p.data {
                    let (s, e) = (used + range.start, used + range.end);
                    write_all(w, &buf[s..e], t).await?;
                }
            }
            used += p.consumed;
        }
        if raw {
            write_all(w, &buf[..used], t).await?;
        }
        buf.advance(used);
        total += used as u64;
        if dec.is_done() {
            return Ok(total);
        }
    }
}

/// Copies until the source closes. `chunk`: wrap each read as a chunk and end with the last
/// chunk, so an HTTP/1.1 client can keep its connection. Returns bytes read.
pub async fn copy_until_close<R, W>(
    r: &mut R,
    buf: &mut BytesMut,
    w: &mut W,
    chunk: bool,
    t: Duration,
) -> Result<u64, CopyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut total = 0u64;
    loop {
        if buf.is_empty() {
            match fill(r, buf, READ_CHUNK, t).await {
                Ok(_) => {}
                Err(CopyError::Eof) => break,
                Err(e) => return Err(e),
            }
        }
        if chunk {
            write_all(w, format!("{:x}\r\n", buf.len()).as_bytes(), t).await?;
            write_all(w, buf, t).await?;
            write_all(w, b"\r\n", t).await?;
        } else {
            write_all(w, buf, t).await?;
        }
        total += buf.len() as u64;
        buf.clear();
    }
    if chunk {
        write_all(w, b"0\r\n\r\n", t).await?;
    }
    Ok(total)
}

/// Writes one piece of decoded body data in the recipient's framing.
async fn emit<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
    chunk: bool,
    t: Duration,
) -> Result<(), CopyError> {
    if data.is_empty() {
        return Ok(());
    }
    if chunk {
        write_all(w, format!("{:x}\r\n", data.len()).as_bytes(), t).await?;
        write_all(w, data, t).await?;
        write_all(w, b"\r\n", t).await
    } else {
        write_all(w, data, t).await
    }
}

/// Decodes a body of any framing and re-sends its data, chunked when `chunk` (ending with the
/// last chunk; trailers are not carried over), handing every piece to `on_data` too. Used
/// where the proxy keeps a copy of the body (the cache). Returns the data bytes.
#[allow(clippy::too_many_arguments)]
pub async fn copy_decoded<R, W>(
    r: &mut R,
    buf: &mut BytesMut,
    w: &mut W,
    framing: super::codec::Framing,
    chunk: bool,
    on_data: &mut (dyn FnMut(&[u8]) + Send),
    max_trailer: usize,
    t: Duration,
) -> Result<u64, CopyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut held = Vec::new();
    let n = copy_decoded_holding(
        r,
        buf,
        w,
        framing,
        chunk,
        on_data,
        max_trailer,
        t,
        &mut held,
    )
    .await?;
    write_all(w, &held, t).await?;
    Ok(n)
}

/// [`copy_decoded`], except that the bytes which let the client see the message end (the
/// last piece of a Content-Length body, or the last chunk when re-chunking) are left in
/// `held` for the caller to write: the cache makes a response visible before its client can
/// have the whole of it, so a request sent right after always finds it.
#[allow(clippy::too_many_arguments)]
pub async fn copy_decoded_holding<R, W>(
    r: &mut R,
    buf: &mut BytesMut,
    w: &mut W,
    framing: super::codec::Framing,
    chunk: bool,
    on_data: &mut (dyn FnMut(&[u8]) + Send),
    max_trailer: usize,
    t: Duration,
    held: &mut Vec<u8>,
) -> Result<u64, CopyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use super::codec::Framing;
    let mut total = 0u64;
    match framing {
        Framing::None => {}
        Framing::Length(len) => {
            let mut left = len;
            while left > 0 {
                if buf.is_empty() {
                    fill(
                        r,
                        buf,
                        usize::try_from(left).unwrap_or(usize::MAX).min(READ_CHUNK),
                        t,
                    )
                    .await?;
                }
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                if n as u64 == left && !chunk {
                    held.extend_from_slice(&buf[..n]);
                } else {
                    emit(w, &buf[..n], chunk, t).await?;
                }
                on_data(&buf[..n]);
                buf.advance(n);
                left -= n as u64;
            }
            total = len;
        }
        Framing::Chunked => {
            let mut dec = ChunkedDecoder::new(max_trailer);
            while !dec.is_done() {
                if buf.is_empty() {
                    fill(r, buf, READ_CHUNK, t).await?;
                }
                let mut used = 0;
                while used < buf.len() && !dec.is_done() {
                    let p = dec.advance(&buf[used..])?;
                    if let Some(range) = p.data {
                        let piece = &buf[used + range.start..used + range.end];
                        emit(w, piece, chunk, t).await?;
                        on_data(piece);
                        total += piece.len() as u64;
                    }
                    used += p.consumed;
                }
                buf.advance(used);
            }
        }
        Framing::UntilClose => loop {
            if buf.is_empty() {
                match fill(r, buf, READ_CHUNK, t).await {
                    Ok(_) => {}
                    Err(CopyError::Eof) => break,
                    Err(e) => return Err(e),
                }
            }
            emit(w, buf, chunk, t).await?;
            on_data(buf);
            total += buf.len() as u64;
            buf.clear();
        },
    }
    if chunk {
        held.extend_from_slice(b"0\r\n\r\n");
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn length_copy_leaves_the_next_message() {
        let mut src: &[u8] = b"lo worldGET /next";
        let mut buf = BytesMut::from(&b"hel"[..]);
        let mut out = Vec::new();
        let n = copy_length(&mut src, &mut buf, &mut out, 11, T)
            .await
            .expect("copy");
        assert_eq!((n, out.as_slice()), (11, &b"hello world"[..]));
        assert!(buf.is_empty());
        assert_eq!(src, b"GET /next");
    }

    #[tokio::test]
    async fn short_body_is_an_error() {
        let mut src: &[u8] = b"abc";
        let mut out = Vec::new();
        let e = copy_length(&mut src, &mut BytesMut::new(), &mut out, 10, T).await;
        assert!(matches!(e, Err(CopyError::Eof)));
    }

    #[tokio::test]
    async fn chunked_raw_and_decoded() {
        let body = b"3\r\nabc\r\n0\r\nT: 1\r\n\r\n";
        let mut out = Vec::new();
        let mut src: &[u8] = b"NEXT";
        let mut buf = BytesMut::from(&body[..]);
        copy_chunked(&mut src, &mut buf, &mut out, true, 1024, T)
            .await
            .expect("raw");
        assert_eq!(out, body);
        assert!(buf.is_empty());
        let mut out = Vec::new();
        let mut buf = BytesMut::from(&body[..]);
        copy_chunked(&mut src, &mut buf, &mut out, false, 1024, T)
            .await
            .expect("decoded");
        assert_eq!(out, b"abc");
    }

    #[tokio::test]
    async fn decoded_copy_rechunks_and_keeps_a_copy() {
        use crate::http::codec::Framing;
        let mut kept = Vec::new();
        let mut out = Vec::new();
        let mut src: &[u8] = b"";
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\nNEXT"[..]);
        let n = copy_decoded(
            &mut src,
            &mut buf,
            &mut out,
            Framing::Chunked,
            true,
            &mut |d| kept.extend_from_slice(d),
            1024,
            T,
        )
        .await
        .expect("copy");
        assert_eq!(n, 5);
        assert_eq!(kept, b"abcde");
        assert_eq!(out, b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
        assert_eq!(&buf[..], b"NEXT");
        let mut out = Vec::new();
        let mut kept = Vec::new();
        let mut src: &[u8] = b"lo";
        let mut buf = BytesMut::from(&b"hel"[..]);
        copy_decoded(
            &mut src,
            &mut buf,
            &mut out,
            Framing::Length(5),
            false,
            &mut |d| kept.extend_from_slice(d),
            1024,
            T,
        )
        .await
        .expect("copy");
        assert_eq!(
            (out.as_slice(), kept.as_slice()),
            (&b"hello"[..], &b"hello"[..])
        );
    }

    #[tokio::test]
    async fn until_close_rechunks() {
        let mut src: &[u8] = b"hello";
        let mut out = Vec::new();
        copy_until_close(&mut src, &mut BytesMut::new(), &mut out, true, T)
            .await
            .expect("copy");
        assert_eq!(out, b"5\r\nhello\r\n0\r\n\r\n");
    }
}
