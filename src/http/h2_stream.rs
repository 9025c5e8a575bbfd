//! One HTTP/2 stream as the HTTP/1.1 pipeline's client ([`H2Stream`], behind
//! `ClientStream::H2`), with no pipe and no relay task in between.
//!
//! The request head made from the HEADERS frame is taken as values
//! (`h2_server::h2_request_head`, [`H2Stream::take_head`]; one that values cannot carry
//! is read as text first, `h2_server::h1_request`); reading the stream yields the body as
//! HTTP/1.1 bytes: the DATA frames straight out of the `h2` receive
//! buffer (chunk-framed when the request has no Content-Length, the client's trailers as
//! the last chunk's trailer section), then EOF. A frame's window is released only as its
//! bytes are read, so an unread request body stays bounded by the stream window.
//!
//! Writing to it takes the pipeline's HTTP/1.1 response (heads read by
//! `h2_server::h2_head`, or the final head given as values, `take_head_values`): 1xx
//! heads become informational HEADERS, the final head becomes HEADERS (END_STREAM on it
//! when there is no body), body bytes are
//! de-framed (Content-Length counted, chunked decoded) on the fly and sent as DATA; a
//! chunked body's trailer section becomes a trailing HEADERS frame. A write is taken once
//! the previous one's bytes have window in the `h2` send queue, so at most one write waits
//! there beyond the client's window (the write that completes the body is queued at once,
//! window or not: nothing follows it). The stream ends (END_STREAM, or trailers) as soon as
//! the body does; a stream dropped before its response is whole is reset
//! (`REFUSED_STREAM` with no response head yet: safe to retry; `INTERNAL_ERROR` mid-body).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::chunked::ChunkedDecoder;
use super::codec::{self, Framing, RequestHead};
use super::h2_server::{chunked_trailers, h2_head, h2_head_of, H2Head};

/// One HTTP/2 stream, read and written by the HTTP/1.1 pipeline as its client connection.
pub struct H2Stream {
    /// The listener's address the connection reached.
    pub(super) local: SocketAddr,
    /// The TLS SNI of the connection, if any.
    pub(super) sni: Option<String>,
    pub(super) scheme: &'static str,
    /// The request head given as values, until the pipeline takes it.
    head: Option<(RequestHead, usize)>,
    req: RequestSide,
    resp: ResponseSide,
}

/// How a stream's request head reaches the pipeline.
pub enum Head {
    /// As values (`h2_server::h2_request_head`), with the length its text would have:
    /// nothing written, nothing parsed.
    Values(RequestHead, usize),
    /// As HTTP/1.1 text, read and parsed as any client's (`h2_server::h1_request`).
    Text(Vec<u8>),
}

impl H2Stream {
    /// The stream whose request head is `head`, whose body comes from `body`
    /// (chunk-framed when `chunked`), and whose response goes to `respond`. `method`
    /// decides the response framing (HEAD); `max_head` bounds a response head.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        head: Head,
        body: RecvStream,
        chunked: bool,
        respond: SendResponse<Bytes>,
        method: &http::Method,
        websocket: bool,
        max_head: usize,
        (local, sni, scheme): (SocketAddr, Option<String>, &'static str),
    ) -> H2Stream {
        let state = if body.is_end_stream() {
            ReqState::Done
        } else {
            ReqState::Body
        };
        let (head, pending) = match head {
            Head::Values(h, len) => (Some((h, len)), Bytes::new()),
            Head::Text(t) => (None, Bytes::from(t)),
        };
        H2Stream {
            local,
            sni,
            scheme,
            head,
            req: RequestSide {
                pending,
                data: Bytes::new(),
                body,
                chunked,
                state,
            },
            resp: ResponseSide {
                respond,
                head_request: method == http::Method::HEAD,
                websocket,
                max_head,
                head: BytesMut::new(),
                send: None,
                body: BodyState::UntilClose,
                out: Bytes::new(),
                end: None,
                state: RespState::Head,
            },
        }
    }
}

impl H2Stream {
    /// The request head given as values and its text's length, taken once; `None`: the
    /// head comes as bytes (or was taken).
    pub(super) fn take_head(&mut self) -> Option<(RequestHead, usize)> {
        self.head.take()
    }

    /// Whether a request head given as values waits to be taken.
    pub(super) fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// The request and response sides, read and written at the same time (no lock
    /// between them, unlike `tokio::io::split`).
    pub(super) fn split(&mut self) -> (&mut RequestSide, &mut ResponseSide) {
        (&mut self.req, &mut self.resp)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqState {
    /// DATA frames may still come.
    Body,
    /// The body ended; a chunked one still has its last chunk and trailers to give.
    Trailers,
    /// Everything given: reads see EOF.
    Done,
}

/// The reading side of an [`H2Stream`]: the request.
pub struct RequestSide {
    /// Bytes handed out before anything else: the head, a chunk's framing.
    pending: Bytes,
    /// The rest of the DATA frame being handed out (its window not yet released).
    data: Bytes,
    body: RecvStream,
    chunked: bool,
    state: ReqState,
}

/// Copies as much of `src` as fits into `buf`; how much.
fn give(src: &mut Bytes, buf: &mut ReadBuf<'_>) -> usize {
    let n = src.len().min(buf.remaining());
    buf.put_slice(&src[..n]);
    src.advance(n);
    n
}

/// The end of a chunked body with `trailers`: `0 CRLF *(field CRLF) CRLF`.
fn last_chunk(trailers: Option<&HeaderMap>) -> Bytes {
    let mut end = b"0\r\n".to_vec();
    for (name, value) in trailers.iter().flat_map(|m| m.iter()) {
        crate::http::codec::push_field(&mut end, name.as_str().as_bytes(), value.as_bytes());
    }
    end.extend_from_slice(b"\r\n");
    Bytes::from(end)
}

impl RequestSide {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if !self.pending.is_empty() {
                give(&mut self.pending, buf);
                return Poll::Ready(Ok(()));
            }
            if !self.data.is_empty() {
                let n = give(&mut self.data, buf);
                if self.chunked && self.data.is_empty() {
                    self.pending = Bytes::from_static(b"\r\n");
                }
                // Only what has left the receive buffer opens the window again.
                self.body
                    .flow_control()
                    .release_capacity(n)
                    .map_err(io::Error::other)?;
                return Poll::Ready(Ok(()));
            }
            match self.state {
                ReqState::Body => match ready!(self.body.poll_data(cx)) {
                    None => {
                        self.state = if self.chunked {
                            ReqState::Trailers
                        } else {
                            ReqState::Done
                        }
                    }
                    Some(Ok(d)) => {
                        if self.chunked && !d.is_empty() {
                            self.pending = Bytes::from(format!("{:x}\r\n", d.len()));
                        }
                        self.data = d;
                    }
                    Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                },
                ReqState::Trailers => {
                    let t = ready!(self.body.poll_trailers(cx)).map_err(io::Error::other)?;
                    self.pending = last_chunk(t.as_ref());
                    self.state = ReqState::Done;
                }
                ReqState::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RespState {
    /// Reading the response head (after any 1xx).
    Head,
    /// The head went out; body bytes follow.
    Body,
    /// The stream has ended (or was reset): later bytes are ignored.
    Done,
}

enum BodyState {
    Length(u64),
    UntilClose,
    /// The decoder, and the framing bytes since the last data (at the end: the trailers).
    Chunked(ChunkedDecoder, Vec<u8>),
}

/// How the stream ends once `out` has gone.
enum End {
    Data,
    Trailers(HeaderMap),
}

/// The writing side of an [`H2Stream`]: the response.
pub struct ResponseSide {
    respond: SendResponse<Bytes>,
    head_request: bool,
    websocket: bool,
    max_head: usize,
    /// The response head so far.
    head: BytesMut,
    send: Option<SendStream<Bytes>>,
    body: BodyState,
    /// Body bytes waiting for window.
    out: Bytes,
    end: Option<End>,
    state: RespState,
}

fn broken(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, format!("HTTP/2 stream: {e}"))
}

impl ResponseSide {
    /// Fails the stream: reset with `reason`, later writes fail.
    fn fail(&mut self, reason: Reason, e: impl std::fmt::Display) -> io::Error {
        match self.send.as_mut() {
            Some(s) => s.send_reset(reason),
            None => self.respond.send_reset(reason),
        }
        self.send = None;
        self.out = Bytes::new();
        self.end = None;
        self.state = RespState::Done;
        broken(e)
    }

    /// Sends what waits in `out` as the client's window allows, then ends the stream if
    /// the body is complete.
    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let Some(send) = self.send.as_mut() else {
                self.out = Bytes::new();
                break;
            };
            if matches!(self.end, Some(End::Data)) {
                // The body's last bytes (often all of it): queued at once with END_STREAM,
                // as no later write can wait behind them; h2 sends them as the window opens.
                let out = std::mem::take(&mut self.out);
                if let Err(e) = send.send_data(out, true) {
                    return Poll::Ready(Err(self.fail(Reason::CANCEL, e)));
                }
                self.end = None;
                self.send = None;
                self.state = RespState::Done;
                break;
            }
            send.reserve_capacity(self.out.len());
            let n = match ready!(send.poll_capacity(cx)) {
                None => return Poll::Ready(Err(self.fail(Reason::CANCEL, "stream closed"))),
                Some(Err(e)) => return Poll::Ready(Err(self.fail(Reason::CANCEL, e))),
                Some(Ok(n)) => n,
            };
            if n == 0 {
                continue;
            }
            let piece = self.out.split_to(n.min(self.out.len()));
            if let Err(e) = send.send_data(piece, false) {
                return Poll::Ready(Err(self.fail(Reason::CANCEL, e)));
            }
        }
        self.finish_end();
        Poll::Ready(Ok(()))
    }

    /// Ends the stream now if the body is complete (`out` sent or given up).
    fn finish_end(&mut self) {
        let Some(end) = self.end.take() else { return };
        if let Some(send) = self.send.as_mut() {
            let _ = match end {
                End::Data => send.send_data(Bytes::new(), true),
                End::Trailers(t) => send.send_trailers(t),
            };
        }
        self.send = None;
        self.state = RespState::Done;
    }

    /// Takes response head bytes from `buf`; how many.
    fn take_head(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = (self.max_head + 1).saturating_sub(self.head.len());
        let n = buf.len().min(room);
        // The head so far and these bytes in one buffer, which the response's field values
        // and the body bytes that came with the head then share (one copy in all).
        let mut all = if self.head.is_empty() {
            Bytes::copy_from_slice(&buf[..n])
        } else {
            self.head.extend_from_slice(&buf[..n]);
            self.head.split().freeze()
        };
        loop {
            let parsed = h2_head(&all, self.max_head, self.websocket, self.head_request);
            let (head, len) = match parsed {
                Ok(Some(p)) => p,
                Ok(None) => {
                    // Not whole yet (rare: the pipeline writes a head at once).
                    self.head.extend_from_slice(&all);
                    return Ok(n);
                }
                Err(e) => return Err(self.fail(Reason::INTERNAL_ERROR, e)),
            };
            all.advance(len);
            let (resp, framing) = match head {
                // 1xx (100 Continue, 103 Early Hints): an informational HEADERS frame.
                H2Head::Interim(r) => {
                    if let Some(r) = r {
                        if let Err(e) = self.respond.send_informational(r) {
                            return Err(self.fail(Reason::INTERNAL_ERROR, e));
                        }
                    }
                    continue;
                }
                H2Head::Final(r, f) => (r, f),
            };
            // Body bytes that came with the head follow it.
            self.final_head(resp, framing, &all)?;
            return Ok(n);
        }
    }

    /// Takes the final response head as values (the pipeline's status and fields, as it
    /// would have written them) and the body bytes read with it: what writing the head as
    /// HTTP/1.1 bytes would do, without the text. `Ok(false)`: not now (a head was already
    /// begun as bytes, or the response is past its head); write the bytes instead.
    pub(super) fn take_head_values(
        &mut self,
        status: u16,
        fields: &[codec::Header],
        body: &[u8],
    ) -> io::Result<bool> {
        if self.state != RespState::Head || !self.head.is_empty() || !self.out.is_empty() {
            return Ok(false);
        }
        let head = match h2_head_of(
            status,
            fields,
            &Bytes::new(),
            self.websocket,
            self.head_request,
        ) {
            Ok(h) => h,
            Err(e) => return Err(self.fail(Reason::INTERNAL_ERROR, e)),
        };
        let H2Head::Final(resp, framing) = head else {
            // A 1xx: the byte path (rare) handles it.
            return Ok(false);
        };
        self.final_head(resp, framing, &Bytes::copy_from_slice(body))?;
        Ok(true)
    }

    /// Sends the final head, then takes the body bytes that came with it (`body`).
    fn final_head(
        &mut self,
        resp: http::Response<()>,
        framing: Framing,
        body: &Bytes,
    ) -> io::Result<()> {
        // No body (HEAD, 204, 304, an empty one): END_STREAM on the HEADERS frame.
        let end = matches!(framing, Framing::None | Framing::Length(0));
        let send = match self.respond.send_response(resp, end) {
            Ok(s) => s,
            Err(e) => return Err(self.fail(Reason::INTERNAL_ERROR, e)),
        };
        self.body = match framing {
            Framing::None | Framing::Length(0) => {
                self.state = RespState::Done;
                return Ok(());
            }
            Framing::Length(left) => BodyState::Length(left),
            Framing::UntilClose => BodyState::UntilClose,
            Framing::Chunked => BodyState::Chunked(ChunkedDecoder::new(self.max_head), Vec::new()),
        };
        self.send = Some(send);
        self.state = RespState::Body;
        self.take_body(body, Some(body))
    }

    /// Takes body bytes (`out` is empty): the data goes to `out`, the framing is dropped.
    /// `shared`: the same bytes as `buf`, already owned (sliced rather than copied).
    fn take_body(&mut self, buf: &[u8], shared: Option<&Bytes>) -> io::Result<()> {
        let owned = |take: usize| match shared {
            Some(b) => b.slice(..take),
            None => Bytes::copy_from_slice(&buf[..take]),
        };
        match &mut self.body {
            BodyState::Length(left) => {
                let take = (buf.len() as u64).min(*left) as usize;
                *left -= take as u64;
                self.out = owned(take);
                if *left == 0 {
                    self.end = Some(End::Data);
                }
            }
            BodyState::UntilClose => self.out = owned(buf.len()),
            BodyState::Chunked(dec, tail) => {
                let mut out = BytesMut::new();
                let mut rest = buf;
                while !rest.is_empty() && !dec.is_done() {
                    let p = match dec.advance(rest) {
                        Ok(p) => p,
                        Err(e) => return Err(self.fail(Reason::INTERNAL_ERROR, e)),
                    };
                    match p.data {
                        Some(r) => {
                            out.extend_from_slice(&rest[r]);
                            tail.clear();
                        }
                        None => tail.extend_from_slice(&rest[..p.consumed]),
                    }
                    rest = &rest[p.consumed..];
                }
                if dec.is_done() {
                    let trailers = chunked_trailers(tail);
                    self.end = Some(if trailers.is_empty() {
                        End::Data
                    } else {
                        End::Trailers(trailers)
                    });
                }
                self.out = out.freeze();
            }
        }
        Ok(())
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // One write waits for window at a time.
        ready!(self.poll_out(cx))?;
        let n = match self.state {
            RespState::Head => self.take_head(buf)?,
            RespState::Body => {
                self.take_body(buf, None)?;
                buf.len()
            }
            // Past the end of the response (nothing the pipeline sends): dropped.
            RespState::Done => buf.len(),
        };
        // Start sending at once; what the window does not take yet waits in `out`.
        if let Poll::Ready(Err(e)) = self.poll_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_out(cx))?;
        // A body without framing (a WebSocket tunnel) ends when the pipeline closes it.
        if self.state == RespState::Body && matches!(self.body, BodyState::UntilClose) {
            self.end = Some(End::Data);
            self.finish_end();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for ResponseSide {
    fn drop(&mut self) {
        match self.state {
            // The pipeline ended without an answer (e.g. while draining): safe to retry.
            RespState::Head => self.respond.send_reset(Reason::REFUSED_STREAM),
            RespState::Body if self.end.is_some() => {
                // Complete, only not all sent yet: the rest (one write at most) is queued
                // regardless of the window, and the stream ends.
                if let Some(send) = self.send.as_mut() {
                    let out = std::mem::take(&mut self.out);
                    let _ = match self.end.take() {
                        Some(End::Data) => send.send_data(out, true),
                        Some(End::Trailers(t)) if out.is_empty() => send.send_trailers(t),
                        Some(End::Trailers(t)) => send
                            .send_data(out, false)
                            .and_then(|()| send.send_trailers(t)),
                        None => Ok(()),
                    };
                }
            }
            RespState::Body => {
                if let Some(send) = self.send.as_mut() {
                    send.send_reset(Reason::INTERNAL_ERROR);
                }
            }
            RespState::Done => {}
        }
    }
}

impl AsyncRead for RequestSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for ResponseSide {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_out(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_shutdown(cx)
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().req.poll_read(cx, buf)
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().resp.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().resp.poll_out(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().resp.poll_shutdown(cx)
    }
}
