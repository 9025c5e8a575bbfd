//! One request/response exchange with an upstream: the request body goes up while the
//! response (1xx, final head, body) comes down, in the framing each side can take.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::body::{self, CopyError};
use super::cached::{CacheCtx, HeadAction};
use super::codec::{self, Framing, HeadError, Headers, RequestHead, Version};
use super::error::ProxyError;
use super::stream::{ReadHalf, WriteHalf};
use crate::limits::Throttled;

use super::proxy::{strip_hop_by_hop, wants_keep_alive, Client, Exchange, HttpProxy};

pub(super) struct Upstream {
    pub(super) stream: UpStream,
    pub(super) buf: BytesMut,
}

/// The connection to an upstream: a plain socket (split natively, spliced in tunnels),
/// TLS to a pool server (`[pools.tls]`), or a stream through a tunnel agent (a rule's
/// `agent = ...`, pooled only for a reverse pool's server; a forward rule's is not).
pub(super) enum UpStream {
    Tcp(TcpStream),
    Tls(Box<crate::tls::client::TlsStream<TcpStream>>),
    Agent(Box<crate::tunnel::hub::Opened>),
    /// One HTTP/2 stream to a pool server with `protocol = "h2"`, seen as an HTTP/1.1
    /// connection (`h2_upstream`); never pooled.
    Pipe(tokio::io::DuplexStream),
}

impl UpStream {
    /// Borrowed read and write halves, usable at the same time.
    pub(super) fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            UpStream::Tcp(s) => {
                let (r, w) = s.split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            UpStream::Tls(s) => {
                let io: &mut dyn super::stream::Io = &mut **s;
                let (r, w) = tokio::io::split(io);
                (ReadHalf::Io(r), WriteHalf::Io(w))
            }
            UpStream::Agent(s) => {
                let io: &mut dyn super::stream::Io = &mut s.stream;
                let (r, w) = tokio::io::split(io);
                (ReadHalf::Io(r), WriteHalf::Io(w))
            }
            UpStream::Pipe(s) => {
                let io: &mut dyn super::stream::Io = s;
                let (r, w) = tokio::io::split(io);
                (ReadHalf::Io(r), WriteHalf::Io(w))
            }
        }
    }
}

impl tokio::io::AsyncRead for UpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            UpStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            UpStream::Agent(s) => Pin::new(&mut s.stream).poll_read(cx, buf),
            UpStream::Pipe(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for UpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            UpStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            UpStream::Agent(s) => Pin::new(&mut s.stream).poll_write(cx, buf),
            UpStream::Pipe(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpStream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
            UpStream::Agent(s) => Pin::new(&mut s.stream).poll_write_vectored(cx, bufs),
            UpStream::Pipe(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpStream::Tcp(s) => s.is_write_vectored(),
            UpStream::Tls(s) => s.is_write_vectored(),
            UpStream::Agent(s) => s.stream.is_write_vectored(),
            UpStream::Pipe(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            UpStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            UpStream::Agent(s) => Pin::new(&mut s.stream).poll_flush(cx),
            UpStream::Pipe(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            UpStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            UpStream::Agent(s) => Pin::new(&mut s.stream).poll_shutdown(cx),
            UpStream::Pipe(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Out {
    Raw,
    Rechunk,
    Dechunk,
}

pub(super) struct Done {
    pub(super) client_keep: bool,
    pub(super) upstream_reusable: bool,
    /// The upstream answered 101 to an Upgrade request: tunnel from here on.
    pub(super) upgraded: bool,
}

pub(super) enum Failure {
    /// The upstream closed before sending a byte: on a pooled connection, safe to retry.
    Stale,
    /// Failed before any response reached the client: answer with this error.
    BeforeResponse(ProxyError),
    /// Failed after the response started (or the client went away): close the connection.
    Abort(&'static str),
}

/// Most 1xx responses relayed for one request; an upstream that sends more gets 502.
pub(super) const MAX_INFORMATIONAL: usize = 8;

/// The protocols an HTTP/1.1 request asks to upgrade to (`Connection: upgrade` + `Upgrade`)
/// that `allowed` (lower-case protocol names) lets through, as the `Upgrade` value to send
/// upstream. `None`: no upgrade asked for, or none allowed - the request goes up as a plain
/// one. An upgraded connection is a raw tunnel, so only listed protocols may open one.
pub(super) fn upgrade_request(req: &RequestHead, allowed: &[String]) -> Option<Vec<u8>> {
    if req.version != Version::Http11 || !req.headers.has_token("connection", "upgrade") {
        return None;
    }
    let offered = req
        .headers
        .get_all("upgrade")
        .flat_map(|v| v.split(|b| *b == b','));
    let kept: Vec<&[u8]> = offered
        .map(<[u8]>::trim_ascii)
        .filter(|p| upgrade_allowed(p, allowed))
        .collect();
    (!kept.is_empty()).then(|| kept.join(&b", "[..]))
}

/// Whether one `protocol-name["/"protocol-version]` is in the allow-list.
pub(super) fn upgrade_allowed(protocol: &[u8], allowed: &[String]) -> bool {
    let name = protocol.split(|b| *b == b'/').next().unwrap_or_default();
    let name = String::from_utf8_lossy(name.trim_ascii()).to_ascii_lowercase();
    !name.is_empty() && allowed.contains(&name)
}

/// The response's Transfer-Encoding when the proxy re-chunks the body: the codings it came
/// with (gzip, ...) stay, chunked goes last.
fn rechunked_codings(h: &Headers) -> String {
    let mut codings: Vec<String> = h
        .tokens("transfer-encoding")
        .into_iter()
        .filter(|c| c != "chunked")
        .collect();
    codings.push("chunked".into());
    codings.join(", ")
}

/// What the response goes to the client through: the client's write half, paying for its
/// bytes with the client's bandwidth limits and counting them.
pub(super) type ClientWriter<'a> = body::Counted<Throttled<WriteHalf<'a>>>;

/// Hands an HTTP/2 stream the final response head as values, with the body bytes read with
/// it (`Ok(true)`), instead of HTTP/1.1 text for it to parse again; counted as the bytes
/// that text would have been. `Ok(false)`: not an HTTP/2 stream (or one with bandwidth
/// limits, which pay per written byte): write the text.
fn h2_head_values(
    cw: &mut ClientWriter<'_>,
    status: u16,
    reason: &str,
    h: &Headers,
    body: &[u8],
) -> std::io::Result<bool> {
    let (w, written) = cw.parts();
    let Some(side) = w.unthrottled().and_then(|w| w.h2()) else {
        return Ok(false);
    };
    if !side.take_head_values(status, &h.0, body)? {
        return Ok(false);
    }
    *written += (response_head_len(status, reason, h) + body.len()) as u64;
    Ok(true)
}

/// The length of the head `codec::write_response_head` writes.
fn response_head_len(status: u16, reason: &str, h: &Headers) -> usize {
    let digits = status.checked_ilog10().map_or(1, |d| d as usize + 1);
    let fields: usize = h.0.iter().map(|f| f.name.len() + f.value.len() + 4).sum();
    "HTTP/1.1 ".len() + digits + 1 + reason.len() + 2 + fields + 2
}

impl HttpProxy {
    /// Sends the request and relays the response. The request body goes upstream while the
    /// response is awaited, so `Expect: 100-continue` and early responses both work.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn exchange(
        &self,
        client: &mut Client,
        up: &mut Upstream,
        head: &RequestHead,
        framing: Framing,
        req_head: &[u8],
        cache: Option<&mut CacheCtx>,
        ex: &mut Exchange,
    ) -> Result<Done, Failure> {
        let t = self.cfg.read_timeout;
        // From here the body is this exchange's: read to its end, or the connection closes.
        client.unread_body = None;
        if let Err(e) = body::write_all(&mut up.stream, req_head, t).await {
            return Err(match e {
                CopyError::Write(_) => Failure::Stale,
                _ => Failure::BeforeResponse(ProxyError::new(
                    504,
                    "connection_write_timeout",
                    e.to_string(),
                )),
            });
        }
        // Bandwidth limits apply to bodies too: the writes go through the client's throttles.
        let throttles = self
            .svc
            .limits
            .throttles(client.peer.ip(), ex.user.as_deref());
        let Client {
            stream, buf: cbuf, ..
        } = client;
        let (mut cr, cw) = stream.split();
        let (mut ur, uw) = up.stream.split();
        let mut cw = body::Counted::new(Throttled::new(cw, throttles.down));
        let mut uw = body::Counted::new(Throttled::new(uw, throttles.up));
        let max_trailer = self.cfg.max_header_bytes;
        let max_body = ex.max_body.unwrap_or(u64::MAX);
        // No body to send: nothing to wait for on that side.
        let mut body_result: Option<Result<(), CopyError>> =
            (framing == Framing::None).then_some(Ok(()));
        let response = {
            let send = async {
                let r = match framing {
                    Framing::None | Framing::UntilClose => Ok(0),
                    Framing::Length(n) => body::copy_length(&mut cr, cbuf, &mut uw, n, t).await,
                    Framing::Chunked => {
                        body::copy_chunked_capped(
                            &mut cr,
                            cbuf,
                            &mut uw,
                            true,
                            max_trailer,
                            max_body,
                            t,
                        )
                        .await
                    }
                };
                r.map(|_| ())
            };
            let recv = self.relay_response(&mut ur, &mut up.buf, &mut cw, head, cache, ex);
            tokio::pin!(send, recv);
            loop {
                tokio::select! {
                    r = &mut send, if body_result.is_none() => {
                        match r {
                            Err(e) if e.is_source() => {
                                body_result = Some(Err(e));
                                break Err(Failure::Abort("http_request_error"));
                            }
                            r => body_result = Some(r),
                        }
                    }
                    r = &mut recv => break r,
                }
            }
        };
        // Bytes actually moved, also when a body broke off half-way.
        ex.bytes_in += uw.written();
        ex.bytes_out += cw.written();
        if let (Err(Failure::Abort(_)), Some(Err(e))) = (&response, &body_result) {
            // The request head has gone upstream, so both connections close. The log says
            // why, and a client that has no response yet is told.
            tracing::info!(client = %client.peer, "request body refused after its head went upstream: {e}");
            if cw.written() == 0 {
                match e {
                    CopyError::Chunk(c) => {
                        return Err(Failure::BeforeResponse(ProxyError::bad_request(format!(
                            "bad chunked request body: {c}"
                        ))))
                    }
                    CopyError::TooLarge(max) => {
                        return Err(Failure::BeforeResponse(ProxyError::new(
                            413,
                            "http_request_error",
                            format!("request body over the limit of {max} bytes"),
                        )))
                    }
                    CopyError::ReadTimeout(_) => {
                        return Err(Failure::BeforeResponse(ProxyError::new(
                            408,
                            "http_request_error",
                            "request body not received in time",
                        )))
                    }
                    _ => {}
                }
            }
        }
        let mut done = response?;
        if !matches!(body_result, Some(Ok(()))) {
            // The response ended before the request body did (or sending it failed): neither
            // connection is at a message boundary any more.
            done.client_keep = false;
            done.upstream_reusable = false;
        }
        Ok(done)
    }

    /// Reads 1xx and final response heads from upstream, forwards them, and streams the body.
    pub(super) async fn relay_response<R>(
        &self,
        ur: &mut R,
        ubuf: &mut BytesMut,
        cw: &mut ClientWriter<'_>,
        req: &RequestHead,
        mut cache: Option<&mut CacheCtx>,
        ex: &mut Exchange,
    ) -> Result<Done, Failure>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        let t = self.cfg.read_timeout;
        let first_byte = ex.first_byte_timeout.unwrap_or(t);
        let max = self.cfg.max_header_bytes.max(64 * 1024);
        let mut got_any = false;
        let mut informational = 0;
        let mut resp = loop {
            let head = loop {
                match codec::parse_response(ubuf, max) {
                    Ok(Some((h, len))) => {
                        // `advance`, not `split_to`: no shared copy of the buffer is made.
                        ubuf.advance(len);
                        break h;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let kind = if matches!(e, HeadError::Invalid(_)) {
                            "http_protocol_error"
                        } else {
                            "http_response_header_section_size"
                        };
                        return Err(Failure::BeforeResponse(ProxyError::new(
                            502,
                            kind,
                            e.to_string(),
                        )));
                    }
                }
                super::stream::room_for(ubuf, 8192);
                match timeout(if got_any { t } else { first_byte }, ur.read_buf(ubuf)).await {
                    Err(_) => {
                        let err = ProxyError::new(
                            504,
                            "connection_read_timeout",
                            "no response from upstream in time",
                        );
                        return Err(Failure::BeforeResponse(err));
                    }
                    Ok(Ok(0)) | Ok(Err(_)) if !got_any => return Err(Failure::Stale),
                    Ok(Ok(0)) => {
                        let err = ProxyError::new(
                            502,
                            "http_response_incomplete",
                            "upstream closed mid-response head",
                        );
                        return Err(Failure::BeforeResponse(err));
                    }
                    Ok(Err(e)) => {
                        let err = ProxyError::new(502, "connection_terminated", e.to_string());
                        return Err(Failure::BeforeResponse(err));
                    }
                    Ok(Ok(_)) => got_any = true,
                }
            };
            got_any = true;
            if head.status == 101 {
                let allowed = &self.cfg.upgrade_protocols;
                let Some(asked) = upgrade_request(req, allowed) else {
                    let err =
                        ProxyError::new(502, "http_protocol_error", "unexpected 101 from upstream");
                    return Err(Failure::BeforeResponse(err));
                };
                // Switching protocols: pass the 101 on; the caller then tunnels both sockets.
                let mut h = head.headers.clone();
                let chosen = h.get("upgrade").map_or(asked, <[u8]>::to_vec);
                if !upgrade_allowed(&chosen, allowed) {
                    let err = ProxyError::new(
                        502,
                        "http_protocol_error",
                        "101 to a protocol not in upgrade_protocols",
                    );
                    return Err(Failure::BeforeResponse(err));
                }
                strip_hop_by_hop(&mut h);
                h.push("Upgrade", chosen);
                h.push("Connection", "upgrade");
                if let Some(via) = &self.cfg.via {
                    h.push("Via", format!("1.1 {via}"));
                }
                let mut out = Vec::new();
                codec::write_response_head(&mut out, 101, &head.reason, &h);
                ex.status = 101;
                if body::write_all(cw, &out, t).await.is_err() {
                    return Err(Failure::Abort("connection_terminated"));
                }
                return Ok(Done {
                    client_keep: false,
                    upstream_reusable: false,
                    upgraded: true,
                });
            }
            if head.status >= 200 {
                break head;
            }
            informational += 1;
            if informational > MAX_INFORMATIONAL {
                let err = ProxyError::new(
                    502,
                    "http_protocol_error",
                    format!("more than {MAX_INFORMATIONAL} 1xx responses"),
                );
                return Err(Failure::BeforeResponse(err));
            }
            // 1xx: forward to HTTP/1.1 clients (RFC 9110 section 15.2), never to HTTP/1.0 ones.
            if req.version == Version::Http11 {
                let mut h = head.headers.clone();
                strip_hop_by_hop(&mut h);
                let mut out = Vec::new();
                codec::write_response_head(&mut out, head.status, &head.reason, &h);
                if body::write_all(cw, &out, t).await.is_err() {
                    return Err(Failure::Abort("connection_terminated"));
                }
            }
        };

        let up_framing = match codec::response_framing(&req.method, &resp) {
            Ok(f) => f,
            Err(e) => {
                return Err(Failure::BeforeResponse(ProxyError::new(
                    502,
                    "http_protocol_error",
                    e.to_string(),
                )))
            }
        };
        let client_11 = req.version == Version::Http11;
        let draining = self.svc.shutdown.is_draining();
        let upstream_reusable = up_framing != Framing::UntilClose
            && !resp.headers.has_token("connection", "close")
            && (resp.version == Version::Http11
                || resp.headers.has_token("connection", "keep-alive"))
            && !(resp.headers.contains("transfer-encoding")
                && resp.headers.contains("content-length"))
            // A 204/304 announcing a body: whatever follows it on the wire is not trusted.
            && !((resp.status == 204 || resp.status == 304)
                && (resp.headers.contains("transfer-encoding")
                    || resp.headers.get_all("content-length").any(|v| v.trim_ascii() != b"0")));
        // A reverse listener with `own_error_pages`: a server's 5xx page is not relayed (it
        // may tell too much about the server); Gatehouse's own, same status, goes instead.
        // The server's body is not read (its connection is reused only when it had none).
        if resp.status >= 500 && ex.reverse.as_ref().is_some_and(|r| r.own_error_pages) {
            if let Some(r) = &ex.reverse {
                r.apply(&mut Headers::default());
            }
            let client_keep = wants_keep_alive(req) && !draining;
            let out =
                super::reverse::own_error_page(resp.status, req.method == "HEAD", client_keep);
            ex.status = resp.status;
            if body::write_all(cw, &out, t).await.is_err() {
                return Err(Failure::Abort("connection_terminated"));
            }
            return Ok(Done {
                client_keep,
                upstream_reusable: upstream_reusable && up_framing == Framing::None,
                upgraded: false,
            });
        }
        let mut capture = false;
        if let Some(cc) = cache.as_deref_mut() {
            match cc.on_final_head(&resp).await {
                HeadAction::Intercept => {
                    // The cache answers the client; the upstream body (if any) is not read.
                    return Ok(Done {
                        client_keep: wants_keep_alive(req) && !draining,
                        upstream_reusable: upstream_reusable && up_framing == Framing::None,
                        upgraded: false,
                    });
                }
                HeadAction::Capture => capture = true,
                HeadAction::Relay => {}
            }
        }
        // How the body reaches the client, and whether the client connection can stay open.
        // A body the cache keeps is decoded, so it is re-chunked rather than passed through.
        let (to_client, delimited) = match (up_framing, client_11) {
            (Framing::UntilClose, true) => (Out::Rechunk, true),
            (Framing::UntilClose, false) => (Out::Raw, false),
            (Framing::Chunked, true) if capture => (Out::Rechunk, true),
            (Framing::Chunked, true) => (Out::Raw, true),
            (Framing::Chunked, false) => (Out::Dechunk, false),
            _ => (Out::Raw, true),
        };
        let client_keep = wants_keep_alive(req) && delimited && !draining;

        // The head's fields are edited in place; a captured response keeps them for the cache.
        let mut h = if capture {
            resp.headers.clone()
        } else {
            std::mem::take(&mut resp.headers)
        };
        strip_hop_by_hop(&mut h);
        codec::normalise_response_framing(resp.status, up_framing, &mut h);
        h.remove("proxy-authenticate");
        // A Negotiate login finished on this request: the mutual-authentication token.
        if let Some(v) = ex.auth_reply.take() {
            h.push("Proxy-Authenticate", v);
        }
        if capture {
            h.remove("trailer");
        }
        if let Some(r) = &ex.reverse {
            r.apply(&mut h);
        }
        if let Some(p) = &ex.cache_profile {
            p.strip(&mut h);
        }
        if let Some(r) = &ex.rewrite {
            r.apply_response(&mut h);
        }
        if let Some(cc) = cache.as_deref() {
            cc.status.append_to(&mut h);
        }
        match to_client {
            Out::Rechunk => {
                let codings = rechunked_codings(&h);
                h.set("Transfer-Encoding", codings);
            }
            Out::Dechunk => {
                h.remove("transfer-encoding");
                h.remove("trailer");
            }
            Out::Raw => {}
        }
        if let Some(via) = &self.cfg.via {
            let v = if resp.version == Version::Http10 {
                "1.0"
            } else {
                "1.1"
            };
            h.push("Via", format!("{v} {via}"));
        }
        if !client_keep {
            h.push("Connection", "close");
        } else if !client_11 {
            h.push("Connection", "keep-alive");
        }
        // A small body already read with the head goes out in the same write (the buffer
        // is sized for both: no regrowth).
        let inline = match (up_framing, capture) {
            (Framing::Length(n), false) if n <= 16 * 1024 && ubuf.len() as u64 >= n => n,
            _ => 0,
        };
        // The status logged is the one sent, even if the write breaks off half-way.
        ex.status = resp.status;
        let with_head = &ubuf[..inline as usize];
        match h2_head_values(cw, resp.status, &resp.reason, &h, with_head) {
            Ok(true) => ubuf.advance(inline as usize),
            Ok(false) => {
                let mut out = Vec::with_capacity(512 + inline as usize);
                codec::write_response_head(&mut out, resp.status, &resp.reason, &h);
                if inline > 0 {
                    out.extend_from_slice(with_head);
                    ubuf.advance(inline as usize);
                }
                if body::write_all(cw, &out, t).await.is_err() {
                    return Err(Failure::Abort("connection_terminated"));
                }
            }
            Err(_) => return Err(Failure::Abort("connection_terminated")),
        }

        let copied = match (up_framing, to_client, cache) {
            (_, out, Some(cc)) if capture => {
                let mut held = Vec::new();
                let r = body::copy_decoded_holding(
                    ur,
                    ubuf,
                    cw,
                    up_framing,
                    out == Out::Rechunk,
                    &mut |d| cc.on_data(d),
                    max,
                    t,
                    &mut held,
                )
                .await;
                match r {
                    Ok(n) => {
                        cc.on_body_end(&resp);
                        // Visible in the cache before the client can see the response end.
                        let store = cc.publish().await;
                        let mut sent = body::write_all(cw, &held, t).await;
                        if sent.is_ok() {
                            if let Err(e) = cw.flush().await {
                                sent = Err(body::CopyError::Write(e));
                            }
                        }
                        // The disk write finishes after the client has its answer.
                        if let Some(store) = store {
                            store.finish().await;
                        }
                        sent.map(|()| n)
                    }
                    Err(e) => Err(e),
                }
            }
            (Framing::None, _, _) => Ok(0),
            (Framing::Length(n), _, _) => body::copy_length(ur, ubuf, cw, n - inline, t).await,
            (Framing::Chunked, Out::Dechunk, _) => {
                body::copy_chunked(ur, ubuf, cw, false, max, t).await
            }
            (Framing::Chunked, _, _) => body::copy_chunked(ur, ubuf, cw, true, max, t).await,
            (Framing::UntilClose, out, _) => {
                body::copy_until_close(ur, ubuf, cw, out == Out::Rechunk, t).await
            }
        };
        match copied {
            Ok(_) => {}
            Err(e) => {
                tracing::debug!("response body relay failed: {e}");
                return Err(Failure::Abort(if e.is_source() {
                    "http_response_incomplete"
                } else {
                    "connection_terminated"
                }));
            }
        }
        if cw.flush().await.is_err() {
            return Err(Failure::Abort("connection_terminated"));
        }
        Ok(Done {
            client_keep,
            upstream_reusable,
            upgraded: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(fields: &str) -> RequestHead {
        let text = format!("GET http://o.test/ HTTP/1.1\r\nHost: o.test\r\n{fields}\r\n");
        codec::parse_request(text.as_bytes(), 8192)
            .expect("parses")
            .expect("complete")
            .0
    }

    #[test]
    fn only_listed_upgrades_go_upstream() {
        let ws = vec!["websocket".to_string()];
        let up = |fields: &str| upgrade_request(&req(fields), &ws);
        assert_eq!(
            up("Connection: Upgrade\r\nUpgrade: WebSocket\r\n"),
            Some(b"WebSocket".to_vec())
        );
        assert_eq!(
            up("Connection: upgrade\r\nUpgrade: h2c, websocket/13, TLS/1.2\r\n"),
            Some(b"websocket/13".to_vec())
        );
        assert_eq!(up("Connection: upgrade\r\nUpgrade: h2c\r\n"), None);
        assert_eq!(up("Upgrade: websocket\r\n"), None, "no Connection: upgrade");
        assert!(!upgrade_allowed(b"", &ws));
        assert!(!upgrade_allowed(b"websockets", &ws));
        assert!(upgrade_allowed(b" WEBSOCKET ", &ws));
    }

    #[test]
    fn the_head_length_is_what_would_be_written() {
        let mut h = Headers::default();
        for status in [200, 404, 99, 1000] {
            for reason in ["", "OK"] {
                let mut out = Vec::new();
                codec::write_response_head(&mut out, status, reason, &h);
                assert_eq!(response_head_len(status, reason, &h), out.len());
                h.push("Content-Length", "1024");
                h.push("X-Long", "a".repeat(300));
            }
        }
    }

    #[test]
    fn rechunking_keeps_other_codings() {
        let mut h = Headers::default();
        assert_eq!(rechunked_codings(&h), "chunked");
        h.push("Transfer-Encoding", "gzip");
        assert_eq!(rechunked_codings(&h), "gzip, chunked");
        h.set("Transfer-Encoding", "gzip, chunked");
        assert_eq!(rechunked_codings(&h), "gzip, chunked");
    }
}
