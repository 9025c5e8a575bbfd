//! HTTP/2 from clients on reverse listeners (RFC 9113): ALPN `h2` over TLS, or h2c with
//! prior knowledge on a plain listener. The `h2` crate speaks the protocol; each stream
//! becomes one HTTP/1.1 request on the shared pipeline, so routing, pool choice, retries,
//! header edits, limits and the access log are the same code as for HTTP/1.1. An RFC 8441
//! extended CONNECT for WebSocket goes up as the HTTP/1.1 Upgrade handshake.
//!
//! ```text
//! h2 connection ── accept stream ──► h2_request_head (pure: pseudo-headers -> head)
//!    │                                   │
//!    │  request DATA (flow control) ───► H2Stream (ClientStream::H2) read by
//!    │                                   HttpProxy::serve_stream (one request,
//!    │                                   Connection: close) ── pool server
//!    ◄── HEADERS, DATA, trailers ◄────── H2Stream written: head as values, body de-framed
//! ```
//!
//! Each stream runs `serve_stream` itself on an [`H2Stream`], as one future inside the
//! connection's task (a `FuturesUnordered` polled beside the `h2` connection: no task
//! spawned per stream, and one stream's wait holds up no other): the request head is
//! taken as values (method, target, fields: [`h2_request_head`]), reads hand out the
//! DATA frames, writes turn the response into HEADERS, DATA and trailers (see
//! `h2_stream.rs`); there is no pipe and no relay in between. The final response head
//! also reaches the stream as values (status and fields, [`h2_head_of`]): neither head
//! is written as HTTP/1.1 text to be parsed again. Memory per stream is bounded by the
//! stream windows: a DATA frame's window is released only as the pipeline reads its
//! bytes, and a response write is taken only once the previous one has window.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::codec::{self, Framing, Headers};
use super::h2_stream::{H2Stream, Head};
use super::proxy::{HttpProxy, Role};
use super::stream::ClientStream;
use crate::config::Http2Config;

/// The HTTP/2 connection preface a client sends first (RFC 9113 section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Each stream's initial window (both ways), and the bytes buffered in each direction of
/// the in-memory pipe to an HTTP/2 server (`h2_upstream`).
pub const PIPE_BYTES: usize = 64 * 1024;

/// Largest piece of a body read from a pipe before it is sent on.
const SEND_CHUNK: usize = 16 * 1024;

/// Fields that are about one HTTP/1.1 connection and must not appear in HTTP/2 (RFC 9113
/// section 8.2.2); `te` is allowed only as `trailers`.
pub(super) const CONNECTION_SPECIFIC: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// Whether `buf` (the first bytes of a connection) is the HTTP/2 preface: `Some(true)` all
/// of it, `Some(false)` not it, `None` a prefix of it so far.
pub fn preface_match(buf: &[u8]) -> Option<bool> {
    let n = buf.len().min(PREFACE.len());
    if buf[..n] != PREFACE[..n] {
        Some(false)
    } else if n == PREFACE.len() {
        Some(true)
    } else {
        None
    }
}

/// Peeks at a new plain connection: does it open with the HTTP/2 preface? Gives up (not
/// h2) at EOF, an error or after `limit`.
pub async fn prior_knowledge(tcp: &TcpStream, limit: Duration) -> bool {
    let look = async {
        let mut buf = [0u8; PREFACE.len()];
        let mut seen = 0;
        loop {
            let n = match tcp.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            if let Some(is) = preface_match(&buf[..n]) {
                return is;
            }
            if n == seen {
                // A partial preface and nothing new: wait a little for the rest.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen = n;
        }
    };
    timeout(limit, look).await.unwrap_or(false)
}

/// Why a stream's request is refused before it reaches the pipeline (answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("no :authority and no Host")]
    NoAuthority,
    #[error(":authority with userinfo")]
    Userinfo,
    #[error("Host differs from :authority")]
    HostMismatch,
    #[error("no :path")]
    NoPath,
    #[error("connection-specific header field")]
    ConnectionSpecific,
    #[error("field value with CR, LF or NUL")]
    BadValue,
}

/// The HTTP/1.1 request head for an HTTP/2 request (RFC 9113 section 8.3.1): `:authority`
/// as Host (a Host that names another authority is refused), `:path` as the target, cookie
/// fields joined with `; ` (section 8.2.3), connection-specific fields refused; then
/// `Transfer-Encoding: chunked` when a body without Content-Length follows
/// (`body_follows`), and `Connection: close` (one request per pipe). Returns the head and
/// whether the body must be chunked.
///
/// With `websocket_key` the request is an RFC 8441 extended CONNECT for WebSocket: it goes
/// up as the HTTP/1.1 handshake (RFC 6455 section 4.1: `GET`, `Upgrade: websocket`,
/// `Connection: Upgrade`, this `Sec-WebSocket-Key`), without a body.
///
/// A stream hands the pipeline this head as values ([`h2_request_head`]); the text is
/// for the heads values cannot carry.
pub fn h1_request(
    method: &Method,
    uri: &http::Uri,
    fields: &HeaderMap,
    body_follows: bool,
    websocket_key: Option<&str>,
) -> Result<(Vec<u8>, bool), BadRequest> {
    let (method, path) = request_line(method, uri, websocket_key)?;
    // Written straight out as `codec::write_request_head` would (no field list built).
    let mut out = Vec::with_capacity(256 + fields.len() * 48);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let chunked = request_fields(uri, fields, body_follows, websocket_key, |n, v| {
        codec::push_field(&mut out, n.as_bytes(), v)
    })?;
    out.extend_from_slice(b"\r\n");
    Ok((out, chunked))
}

/// The head [`h1_request`] writes, as the values `codec::parse_request` reads back from
/// that text (the same names in the same order, each value trimmed of the blanks around
/// it as the parser trims them, all values slices of one buffer), and the text's length
/// (the bytes the access log counts); nothing is written or parsed. Returns the head,
/// its length and whether the body must be chunked. `Ok(None)`: a head the values cannot
/// stand for, with more fields than a head may have (`codec::MAX_HEADERS`) or longer
/// than `max` bytes: the caller sends the text, which the pipeline refuses as it refuses
/// any such head.
pub fn h2_request_head(
    method: &Method,
    uri: &http::Uri,
    fields: &HeaderMap,
    body_follows: bool,
    websocket_key: Option<&str>,
    max: usize,
) -> Result<Option<(codec::RequestHead, usize, bool)>, BadRequest> {
    let (method, path) = request_line(method, uri, websocket_key)?;
    // Room for every value: those of the fields, the authority, and the few added.
    let room = fields.values().map(|v| v.len()).sum::<usize>()
        + uri.authority().map_or(0, |a| a.as_str().len())
        + websocket_key.map_or(0, str::len)
        + 64;
    let mut values = bytes::BytesMut::with_capacity(room);
    let mut list = Vec::with_capacity(fields.len() + 3);
    // The text: request line, fields, blank line.
    let mut len = method.len() + 1 + path.len() + " HTTP/1.1\r\n".len() + 2;
    let chunked = request_fields(uri, fields, body_follows, websocket_key, |n, v| {
        len += n.len() + v.len() + 4;
        values.extend_from_slice(trim_blanks(v));
        list.push(codec::Header {
            name: codec::HeaderName::new(n),
            value: values.split().freeze(),
        });
    })?;
    if list.len() > codec::MAX_HEADERS || len > max {
        return Ok(None);
    }
    let head = codec::RequestHead {
        method: method.to_string(),
        target: path.to_string(),
        version: codec::Version::Http11,
        headers: Headers(list),
    };
    Ok(Some((head, len, chunked)))
}

/// `v` without the spaces and tabs around it (what the HTTP/1.1 parser drops).
fn trim_blanks(v: &[u8]) -> &[u8] {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !blank(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !blank(b)).map_or(start, |e| e + 1);
    &v[start..end]
}

/// The HTTP/1.1 request line's method (`GET` for an extended CONNECT) and target
/// (`:path`; `*` only for OPTIONS, none for a plain CONNECT).
fn request_line<'a>(
    method: &'a Method,
    uri: &'a http::Uri,
    websocket_key: Option<&str>,
) -> Result<(&'a str, &'a str), BadRequest> {
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/') || (*p == "*" && method == Method::OPTIONS))
        .filter(|_| method != Method::CONNECT || websocket_key.is_some())
        .ok_or(BadRequest::NoPath)?;
    let method = if websocket_key.is_some() {
        "GET"
    } else {
        method.as_str()
    };
    Ok((method, path))
}

/// The HTTP/1.1 head's fields for an HTTP/2 request, in order, each handed to `line` as
/// name and value (see [`h1_request`]); whether the body must be chunked.
fn request_fields(
    uri: &http::Uri,
    fields: &HeaderMap,
    body_follows: bool,
    websocket_key: Option<&str>,
    mut line: impl FnMut(&str, &[u8]),
) -> Result<bool, BadRequest> {
    let mut hosts = fields.get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(BadRequest::HostMismatch);
    }
    let authority = match (uri.authority(), host) {
        (Some(a), _) if a.as_str().contains('@') => return Err(BadRequest::Userinfo),
        (Some(a), Some(h)) if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) => {
            return Err(BadRequest::HostMismatch)
        }
        (Some(a), _) => a.as_str().as_bytes(),
        (None, Some(h)) => h.as_bytes(),
        (None, None) => return Err(BadRequest::NoAuthority),
    };
    line("Host", authority);
    let mut cookie: Vec<u8> = Vec::new();
    for (name, value) in fields {
        let v = value.as_bytes();
        if v.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            return Err(BadRequest::BadValue);
        }
        let n = name.as_str();
        if CONNECTION_SPECIFIC.contains(&n) || (n == "te" && !v.eq_ignore_ascii_case(b"trailers")) {
            return Err(BadRequest::ConnectionSpecific);
        }
        match n {
            "host" | "sec-websocket-key" => {}
            "cookie" => {
                if !cookie.is_empty() {
                    cookie.extend_from_slice(b"; ");
                }
                cookie.extend_from_slice(v);
            }
            _ => line(n, v),
        }
    }
    if !cookie.is_empty() {
        line("cookie", &cookie);
    }
    if let Some(key) = websocket_key {
        line("Sec-WebSocket-Key", key.as_bytes());
        line("Upgrade", b"websocket");
        line("Connection", b"Upgrade");
        return Ok(false);
    }
    let chunked = body_follows && !fields.contains_key(http::header::CONTENT_LENGTH);
    if chunked {
        line("Transfer-Encoding", b"chunked");
    }
    line("Connection", b"close");
    Ok(chunked)
}

/// A `Sec-WebSocket-Key` for the HTTP/1.1 leg of an extended CONNECT: 16 bytes, base64.
/// HTTP/2 WebSocket has no key (RFC 8441 section 5); the server only checks its form, and
/// its answer (`Sec-WebSocket-Accept`) is not passed on.
fn websocket_key() -> String {
    use base64::Engine;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&t.to_be_bytes());
    raw[8..].copy_from_slice(&n.to_be_bytes());
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// The HTTP/2 response for an HTTP/1.1 head: status and fields, without the
/// connection-specific ones and those `Connection` names (RFC 9113 section 8.2.2). Fields
/// HTTP/2 cannot carry (a name that is not a token) are dropped.
pub fn h2_response(status: u16, fields: Headers) -> Response<()> {
    let listed = fields.tokens("connection");
    let mut resp = Response::new(());
    *resp.status_mut() = http::StatusCode::from_u16(status)
        .ok()
        .filter(|_| (200..600).contains(&status))
        .unwrap_or(http::StatusCode::BAD_GATEWAY);
    let h = resp.headers_mut();
    h.reserve(fields.0.len());
    for f in fields.0 {
        // `HeaderName` lower-cases (a known name without allocating).
        let Ok(n) = HeaderName::from_bytes(f.name.as_bytes()) else {
            continue;
        };
        let name = n.as_str();
        if CONNECTION_SPECIFIC.contains(&name) || name == "te" || listed.iter().any(|l| l == name) {
            continue;
        }
        // The value's bytes move into the field without a copy.
        if let Ok(v) = HeaderValue::from_maybe_shared(f.value) {
            h.append(n, v);
        }
    }
    resp
}

/// A response head the pipeline wrote, read for HTTP/2 ([`h2_head`]).
#[derive(Debug)]
pub enum H2Head {
    /// An informational (1xx) head to send before the final one; `None`: nothing to send
    /// (a 101 that is not a WebSocket answer).
    Interim(Option<Response<()>>),
    /// The final head and how its body is framed in the bytes that follow.
    Final(Response<()>, Framing),
}

/// The HTTP/2 form of the HTTP/1.1 response head at the start of `buf` (`Ok(None)`:
/// incomplete), and its length: what `codec::parse_response` (bounds, status range, field
/// values), `codec::response_framing` / `normalise_response_framing` and [`h2_response`] do
/// in turn, without building the intermediate field list. With `websocket`, a 101 is the
/// server's switch: 200 without `Sec-WebSocket-Accept`, then a tunnel (`UntilClose`).
/// `head_request`: the response to a HEAD has no body. The field values share `buf`'s
/// memory (no copy per field).
pub fn h2_head(
    buf: &Bytes,
    max: usize,
    websocket: bool,
    head_request: bool,
) -> Result<Option<(H2Head, usize)>, codec::HeadError> {
    use codec::HeadError;
    // Uninitialised slots: no 4 KiB of empty headers written per response.
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; codec::MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Partial) if buf.len() > max => return Err(HeadError::TooLarge(max)),
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(len)) if len > max => return Err(HeadError::TooLarge(max)),
        Ok(httparse::Status::Complete(len)) => len,
        Err(_) => return Err(HeadError::Invalid("bad response head")),
    };
    let status = resp.code.unwrap_or(0);
    let head = h2_head_of(status, &*resp.headers, buf, websocket, head_request)?;
    Ok(Some((head, len)))
}

/// A response head's field as [`h2_head_of`] reads it: from the HTTP/1.1 bytes the
/// pipeline wrote (`httparse`), or from the pipeline's own field list (`codec::Header`).
pub trait HeadField {
    fn name(&self) -> &str;
    fn value(&self) -> &[u8];
    /// The value as shared bytes (no copy); `buf`: the parsed head's buffer, if any.
    fn shared(&self, buf: &Bytes) -> Bytes;
}

impl HeadField for httparse::Header<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn value(&self) -> &[u8] {
        self.value
    }
    fn shared(&self, buf: &Bytes) -> Bytes {
        buf.slice_ref(self.value)
    }
}

impl HeadField for codec::Header {
    fn name(&self) -> &str {
        self.name.as_str()
    }
    fn value(&self) -> &[u8] {
        &self.value
    }
    fn shared(&self, _: &Bytes) -> Bytes {
        self.value.clone()
    }
}

/// The HTTP/2 form of a response head given as values (status and fields, in the order
/// the pipeline would write them): what [`h2_head`] does once the bytes are parsed. The
/// pipeline hands an HTTP/2 stream its final head this way (no text written and read
/// again); both paths share this function, so they cannot drift apart.
pub fn h2_head_of<F: HeadField>(
    status: u16,
    raw: &[F],
    buf: &Bytes,
    websocket: bool,
    head_request: bool,
) -> Result<H2Head, codec::HeadError> {
    use codec::HeadError;
    if !(100..=999).contains(&status) {
        return Err(HeadError::Invalid("invalid status code"));
    }
    if raw.iter().any(|h| {
        h.value()
            .iter()
            .any(|&b| b == b'\r' || b == b'\n' || b == 0)
    }) {
        return Err(HeadError::Invalid("forbidden character in header value"));
    }
    // Fields `Connection` names (trimmed, compared without case).
    let mut listed: Vec<&[u8]> = Vec::new();
    for h in raw
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case("connection"))
    {
        for t in h.value().split(|b| *b == b',') {
            let t = t.trim_ascii();
            if !t.is_empty() {
                listed.push(t);
            }
        }
    }
    // Every field HTTP/2 may carry, except those named in `skip`.
    let fields = |skip: &[&str]| {
        let mut m = HeaderMap::with_capacity(raw.len());
        for f in raw {
            let Ok(n) = HeaderName::from_bytes(f.name().as_bytes()) else {
                continue;
            };
            let name = n.as_str();
            if CONNECTION_SPECIFIC.contains(&name)
                || name == "te"
                || skip.contains(&name)
                || listed
                    .iter()
                    .any(|l| l.eq_ignore_ascii_case(name.as_bytes()))
            {
                continue;
            }
            // The value's bytes stay where they are in `buf`.
            if let Ok(v) = HeaderValue::from_maybe_shared(f.shared(buf)) {
                m.append(n, v);
            }
        }
        m
    };
    let response = |status: u16, headers: HeaderMap| {
        let mut r = Response::new(());
        *r.status_mut() =
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
        *r.headers_mut() = headers;
        r
    };
    if status == 101 && websocket {
        let r = response(200, fields(&["sec-websocket-accept"]));
        return Ok(H2Head::Final(r, Framing::UntilClose));
    }
    if status < 200 {
        let interim = (status != 101).then(|| response(status, fields(&[])));
        return Ok(H2Head::Interim(interim));
    }
    // The usual head (the pipeline normalised it): one plain Content-Length, no
    // Transfer-Encoding, a status with a body. Its field goes as it is.
    if let Some(n) = plain_length(raw).filter(|_| (200..600).contains(&status)) {
        if status != 204 && status != 304 {
            let framing = if head_request {
                Framing::None
            } else {
                Framing::Length(n)
            };
            return Ok(H2Head::Final(response(status, fields(&[])), framing));
        }
    }
    // Otherwise the framing fields alone, through the codec's own rules.
    let mut framing_fields = Headers::default();
    for f in raw.iter().filter(|f| {
        f.name().eq_ignore_ascii_case("content-length")
            || f.name().eq_ignore_ascii_case("transfer-encoding")
    }) {
        framing_fields.push(f.name(), f.value());
    }
    let mut head = codec::ResponseHead {
        version: codec::Version::Http11,
        status,
        reason: String::new(),
        headers: framing_fields,
    };
    let method = if head_request { "HEAD" } else { "GET" };
    let framing = codec::response_framing(method, &head)?;
    if framing != Framing::None {
        codec::normalise_response_framing(status, framing, &mut head.headers);
    }
    let status = if (200..600).contains(&status) {
        status
    } else {
        502
    };
    let mut h = fields(&["content-length"]);
    for n in head.headers.get_all("content-length") {
        if let Ok(v) = HeaderValue::from_bytes(n) {
            h.append(http::header::CONTENT_LENGTH, v);
        }
    }
    Ok(H2Head::Final(response(status, h), framing))
}

/// The length of a head with exactly one Content-Length in canonical form (digits, no
/// leading zero, at most 18) and no Transfer-Encoding: the case where
/// `codec::normalise_response_framing` changes nothing.
fn plain_length<F: HeadField>(raw: &[F]) -> Option<u64> {
    let mut found = None;
    for f in raw {
        if f.name().eq_ignore_ascii_case("transfer-encoding") {
            return None;
        }
        if f.name().eq_ignore_ascii_case("content-length") {
            let v = f.value();
            let canonical = !v.is_empty()
                && v.len() <= 18
                && v.iter().all(u8::is_ascii_digit)
                && (v[0] != b'0' || v.len() == 1);
            if found.is_some() || !canonical {
                return None;
            }
            found = Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
        }
    }
    found
}

/// An interim (1xx) response for HTTP/2: none for 101 (no such status in HTTP/2).
pub fn h2_interim(status: u16, fields: Headers) -> Option<Response<()>> {
    if !(100..200).contains(&status) || status == 101 {
        return None;
    }
    let mut resp = h2_response(200, fields);
    *resp.status_mut() = http::StatusCode::from_u16(status).ok()?;
    Some(resp)
}

/// The trailer fields at the end of a chunked body, from the bytes that followed its last
/// data (`[CRLF] 0[;ext] CRLF *(field CRLF) CRLF`), for HTTP/2 trailers. Framing and
/// connection-specific fields are dropped.
pub fn chunked_trailers(tail: &[u8]) -> HeaderMap {
    let mut out = HeaderMap::new();
    let tail = tail.strip_prefix(b"\r\n").unwrap_or(tail);
    let Some(eol) = tail.windows(2).position(|w| w == b"\r\n") else {
        return out;
    };
    let section = &tail[eol + 2..];
    let mut fields = [httparse::EMPTY_HEADER; codec::MAX_HEADERS];
    let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(section, &mut fields)
    else {
        return out;
    };
    for f in fields.iter() {
        let name = f.name.to_ascii_lowercase();
        if CONNECTION_SPECIFIC.contains(&name.as_str())
            || matches!(name.as_str(), "te" | "content-length" | "host" | "trailer")
        {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(f.value),
        ) {
            out.append(n, v);
        }
    }
    out
}

/// Wakes a connection's task and notes that the `h2` connection itself is to be polled
/// (its socket is ready, or a stream queued frames for it to send).
struct ConnWake {
    woken: AtomicBool,
    /// Set while the task polls its streams: a wake-up then (a stream queued frames) only
    /// marks the connection as due, as the task polls it right after its streams, before
    /// it can wait; waking the task too would only poll it once more for nothing.
    in_streams: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ConnWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Sequentially consistent with `poll_streams`: a wake-up from another thread that
        // still sees `in_streams` set stored `woken` before the task's `accept` reads it.
        self.woken.store(true, Ordering::SeqCst);
        if !self.in_streams.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }
}

/// The next finished stream, polled with `wake.in_streams` set (see [`ConnWake`]).
fn poll_streams<F: std::future::Future<Output = ()>>(
    streams: &mut FuturesUnordered<F>,
    wake: &ConnWake,
    cx: &mut Context<'_>,
) -> Poll<Option<()>> {
    wake.in_streams.store(true, Ordering::SeqCst);
    let r = streams.poll_next_unpin(cx);
    wake.in_streams.store(false, Ordering::SeqCst);
    r
}

type Accepted = Result<(Request<RecvStream>, SendResponse<Bytes>), h2::Error>;

/// The connection's next stream: polls `conn` (with `waker`, which goes through `wake`)
/// only when it was woken since it last returned `Pending`. After a stream it is polled
/// again: more may wait, already read, that nothing will wake it for.
fn accept<'a, IO>(
    conn: &'a mut h2::server::Connection<IO, Bytes>,
    wake: &'a ConnWake,
    waker: &'a Waker,
) -> impl std::future::Future<Output = Option<Accepted>> + 'a
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    std::future::poll_fn(move |cx| {
        wake.task.register(cx.waker());
        if !wake.woken.swap(false, Ordering::SeqCst) {
            return Poll::Pending;
        }
        let r = conn.poll_accept(&mut Context::from_waker(waker));
        if r.is_ready() {
            wake.woken.store(true, Ordering::Release);
        }
        r
    })
}

impl HttpProxy {
    /// A reverse listener's `[listeners.http2]`, if it has one.
    pub(super) fn http2(&self) -> Option<&Http2Config> {
        match &self.role {
            Role::Reverse(r) => Some(r.http2()),
            Role::Forward => None,
        }
    }

    /// A plain connection on a listener with h2c: HTTP/2 when it opens with the preface
    /// (prior knowledge), else HTTP/1.1 as usual.
    pub(super) async fn serve_h2c(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        // A client that has sent nothing yet is idle: a drain closes it at once.
        let h2 = tokio::select! {
            h2 = prior_knowledge(&stream, self.cfg.keepalive_timeout) => h2,
            _ = self.svc.shutdown.draining() => return,
        };
        if h2 {
            if let Ok(local) = stream.local_addr() {
                self.serve_h2(stream, peer, local, None, "http").await;
            }
            return;
        }
        self.serve_stream(ClientStream::Tcp(stream), peer).await
    }

    /// Serves one HTTP/2 connection: every stream becomes a request on the shared
    /// pipeline. Ends when the client goes, the connection has had no stream open for
    /// `keepalive_timeout`, or the proxy drains (GOAWAY, streams in flight finish).
    pub(super) async fn serve_h2<IO>(
        self: Arc<Self>,
        io: IO,
        peer: SocketAddr,
        local: SocketAddr,
        sni: Option<String>,
        scheme: &'static str,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let limits = self.http2().cloned().unwrap_or_default();
        let mut builder = h2::server::Builder::new();
        builder
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_header_list_size(limits.max_header_list_size)
            .initial_window_size(PIPE_BYTES as u32)
            .initial_connection_window_size(1024 * 1024)
            .max_send_buffer_size(PIPE_BYTES)
            .enable_connect_protocol();
        // The frames of the streams served in one pass leave in one write (`Gather`).
        let mut conn = match timeout(
            self.cfg.header_read_timeout,
            builder.handshake::<_, Bytes>(crate::gather::Gather::new(io)),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!(client = %peer, "HTTP/2 handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(client = %peer, "HTTP/2 preface not received in time");
                return;
            }
        };
        // The streams run inside this task, polled beside the connection: no task spawned
        // per stream, and a stream's response is flushed in the same wake-up that wrote it.
        // A stream that waits (upstream, window) holds up no other: each is its own future.
        let mut streams = FuturesUnordered::new();
        // The connection is polled only when it asked to be (its socket, or a stream that
        // queued frames), not each time the task wakes for one of the streams.
        let wake = Arc::new(ConnWake {
            woken: AtomicBool::new(true),
            in_streams: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        let conn_waker = Waker::from(wake.clone());
        let keepalive = self.cfg.keepalive_timeout;
        let idle = tokio::time::sleep(keepalive);
        tokio::pin!(idle);
        // One wait for the drain, registered once (not a new waiter per pass of the loop).
        let drain = self.svc.shutdown.draining();
        tokio::pin!(drain);
        let mut closing = false;
        loop {
            tokio::select! {
                // Streams first, then the connection (never skipped before the task waits:
                // see `ConnWake`): what they wrote goes out at once.
                biased;
                Some(()) = std::future::poll_fn(|cx| poll_streams(&mut streams, &wake, cx)) => {
                    if streams.is_empty() {
                        idle.as_mut().reset(tokio::time::Instant::now() + keepalive);
                    }
                }
                r = accept(&mut conn, &wake, &conn_waker) => match r {
                    Some(Ok((req, respond))) => {
                        let me = self.clone();
                        streams.push(me.h2_stream(req, respond, peer, local, sni.clone(), scheme));
                    }
                    Some(Err(e)) => {
                        tracing::debug!(client = %peer, "HTTP/2 connection error: {e}");
                        break;
                    }
                    None => break,
                },
                _ = &mut idle, if streams.is_empty() && !closing => {
                    conn.graceful_shutdown();
                    wake.woken.store(true, Ordering::Release);
                    closing = true;
                }
                _ = &mut drain, if !closing => {
                    conn.graceful_shutdown();
                    wake.woken.store(true, Ordering::Release);
                    closing = true;
                }
            }
        }
        // The connection is gone: the streams' relays fail at once; each pipeline request
        // still ends (within its timeouts) and writes its access-log line.
        while streams.next().await.is_some() {}
    }

    /// One stream: refused here when HTTP/2 cannot carry it to the pipeline, else the
    /// request goes through the pipe while its body and the response are relayed.
    async fn h2_stream(
        self: Arc<Self>,
        req: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        peer: SocketAddr,
        local: SocketAddr,
        sni: Option<String>,
        scheme: &'static str,
    ) {
        let (parts, body) = req.into_parts();
        // RFC 8441 extended CONNECT: WebSocket only, as an HTTP/1.1 Upgrade upstream.
        let protocol = parts.extensions.get::<h2::ext::Protocol>();
        let websocket = protocol.is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
        if parts.method == Method::CONNECT && !websocket {
            // A tunnel, or another protocol: not for a reverse proxy.
            simple(&mut respond, 405, "CONNECT is not served here\n");
            return;
        }
        let key = websocket.then(websocket_key);
        let follows = !body.is_end_stream();
        let (m, uri, fields) = (&parts.method, &parts.uri, &parts.headers);
        let key = key.as_deref();
        // The head as values; as text only when values cannot stand for it (too many
        // fields, too long: the pipeline then refuses it as any such head).
        let head = match h2_request_head(m, uri, fields, follows, key, self.cfg.max_header_bytes) {
            Ok(Some((head, len, chunked))) => Ok((Head::Values(head, len), chunked)),
            Ok(None) => h1_request(m, uri, fields, follows, key).map(|(t, c)| (Head::Text(t), c)),
            Err(e) => Err(e),
        };
        let (head, chunked) = match head {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(client = %peer, "HTTP/2 request refused: {e}");
                simple(&mut respond, 400, &format!("{e}\n"));
                return;
            }
        };
        let max = self.cfg.max_header_bytes.max(64 * 1024);
        let stream = H2Stream::new(
            head,
            body,
            chunked,
            respond,
            &parts.method,
            websocket,
            max,
            (local, sni, scheme),
        );
        self.serve_stream(ClientStream::H2(Box::new(stream)), peer)
            .await;
    }
}

/// A short text response of our own (the request never reaches the pipeline).
fn simple(respond: &mut SendResponse<Bytes>, status: u16, text: &str) {
    let mut resp = Response::new(());
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    if let Ok(mut s) = respond.send_response(resp, false) {
        // Short enough for the initial window.
        let _ = s.send_data(Bytes::copy_from_slice(text.as_bytes()), true);
    }
}

/// Reads more of the pipe; its end before the body's is an error.
pub(super) async fn fill<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<()> {
    buf.reserve(SEND_CHUNK);
    match rd.read_buf(buf).await? {
        0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(()),
    }
}

/// Sends `data` as the client's window allows (waiting for capacity), never buffering
/// more than it in the h2 send queue.
pub(super) async fn send_data(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
) -> Result<(), h2::Error> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            None => return Err(h2::Error::from(Reason::CANCEL)),
            Some(Err(e)) => return Err(e),
            Some(Ok(0)) => {}
            Some(Ok(n)) => {
                let piece = data.split_to(n.min(data.len()));
                send.send_data(piece, false)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(list: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in list {
            m.append(
                HeaderName::from_bytes(n.as_bytes()).expect("name"),
                HeaderValue::from_bytes(v.as_bytes()).expect("value"),
            );
        }
        m
    }

    fn req(
        method: &str,
        uri: &str,
        list: &[(&str, &str)],
        body: bool,
    ) -> Result<(String, bool), BadRequest> {
        let m = Method::from_bytes(method.as_bytes()).expect("method");
        let u: http::Uri = uri.parse().expect("uri");
        h1_request(&m, &u, &fields(list), body, None)
            .map(|(h, c)| (String::from_utf8(h).expect("utf-8"), c))
    }

    #[test]
    fn the_preface_is_recognised_from_its_first_bytes() {
        assert_eq!(
            preface_match(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(true)
        );
        assert_eq!(
            preface_match(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nxx"),
            Some(true)
        );
        assert_eq!(preface_match(b"PRI * HT"), None);
        assert_eq!(preface_match(b"POST / HTTP/1.1"), Some(false));
        assert_eq!(preface_match(b"G"), Some(false));
    }

    #[test]
    fn authority_becomes_host_and_cookies_are_joined() {
        let (h, chunked) = req(
            "GET",
            "https://app.test:8443/a?b=1",
            &[("cookie", "a=1"), ("accept", "*/*"), ("cookie", "b=2")],
            false,
        )
        .expect("ok");
        assert!(!chunked);
        assert_eq!(
            h,
            "GET /a?b=1 HTTP/1.1\r\nHost: app.test:8443\r\naccept: */*\r\ncookie: a=1; b=2\r\n\
             Connection: close\r\n\r\n"
        );
        // No :authority: the Host field.
        let (h, _) = req("GET", "/x", &[("host", "h.test")], false).expect("ok");
        assert!(h.starts_with("GET /x HTTP/1.1\r\nHost: h.test\r\n"), "{h}");
    }

    #[test]
    fn extended_connect_becomes_a_websocket_handshake() {
        let m = Method::CONNECT;
        let u: http::Uri = "https://app.test/chat".parse().expect("uri");
        let f = fields(&[("sec-websocket-version", "13"), ("sec-websocket-key", "x")]);
        let (h, chunked) = h1_request(&m, &u, &f, true, Some("a2V5")).expect("ok");
        assert!(!chunked);
        assert_eq!(
            String::from_utf8(h).expect("utf-8"),
            "GET /chat HTTP/1.1\r\nHost: app.test\r\nsec-websocket-version: 13\r\n\
             Sec-WebSocket-Key: a2V5\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        );
        assert_eq!(
            h1_request(&m, &u, &f, true, None).err(),
            Some(BadRequest::NoPath),
            "plain CONNECT never becomes a request"
        );
        assert_eq!(websocket_key().len(), 24);
    }

    #[test]
    fn a_body_without_length_is_chunked() {
        let (h, chunked) = req("POST", "http://a.test/", &[], true).expect("ok");
        assert!(
            chunked && h.contains("Transfer-Encoding: chunked\r\n"),
            "{h}"
        );
        let (h, chunked) =
            req("POST", "http://a.test/", &[("content-length", "3")], true).expect("ok");
        assert!(!chunked && h.contains("content-length: 3\r\n"), "{h}");
        assert!(!h.contains("Transfer-Encoding"));
    }

    #[test]
    fn bad_requests_are_refused() {
        assert_eq!(
            req("GET", "/", &[], false).err(),
            Some(BadRequest::NoAuthority)
        );
        assert_eq!(
            req("GET", "http://a.test/", &[("host", "b.test")], false).err(),
            Some(BadRequest::HostMismatch)
        );
        assert_eq!(
            req("GET", "http://u@a.test/", &[], false).err(),
            Some(BadRequest::Userinfo)
        );
        for f in [
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("keep-alive", "1"),
            ("te", "gzip"),
        ] {
            assert_eq!(
                req("GET", "http://a.test/", &[f], false).err(),
                Some(BadRequest::ConnectionSpecific),
                "{f:?}"
            );
        }
        assert!(req("GET", "http://a.test/", &[("te", "trailers")], false).is_ok());
    }

    #[test]
    fn a_request_head_as_values_is_what_its_text_parses_to() {
        // Method, URI, fields, whether a body follows, the WebSocket key.
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a [(&'a str, &'a str)],
            bool,
            Option<&'a str>,
        );
        let cases: &[Case] = &[
            (
                "GET",
                "https://app.test:8443/a?b=1",
                &[("accept", "*/*")],
                false,
                None,
            ),
            (
                "POST",
                "http://a.test/up",
                &[
                    ("cookie", " a=1 "),
                    ("x-pad", "\t v \t"),
                    ("cookie", "b=2\t"),
                ],
                true,
                None,
            ),
            (
                "PUT",
                "/p",
                &[("host", "h.test"), ("content-length", "3")],
                true,
                None,
            ),
            (
                "OPTIONS",
                "http://a.test",
                &[("x-empty", ""), ("x-blank", "  ")],
                false,
                None,
            ),
            (
                "DELETE",
                "http://a.test/%7Ex/\"q\"",
                &[("user-agent", "ü")],
                false,
                None,
            ),
            (
                "CONNECT",
                "https://a.test/chat",
                &[("sec-websocket-key", "x")],
                true,
                Some("a2V5"),
            ),
        ];
        for &(m, u, list, body, key) in cases {
            let m = Method::from_bytes(m.as_bytes()).expect("method");
            let u: http::Uri = u.parse().expect("uri");
            let f = fields(list);
            let (text, chunked) = h1_request(&m, &u, &f, body, key).expect("ok");
            let (parsed, len) = codec::parse_request(&text, 1 << 20)
                .expect("parses")
                .expect("whole");
            let (values, n, c) = h2_request_head(&m, &u, &f, body, key, 1 << 20)
                .expect("ok")
                .expect("values");
            assert_eq!(values, parsed, "{u}");
            assert_eq!((n, c), (len, chunked), "{u}");
        }
        // The same refusals as the text.
        let f = fields(&[("connection", "close")]);
        let u: http::Uri = "http://a.test/".parse().expect("uri");
        assert_eq!(
            h2_request_head(&Method::GET, &u, &f, false, None, 1 << 20).err(),
            Some(BadRequest::ConnectionSpecific)
        );
        // Heads the values cannot stand for go as text (refused by the pipeline's parser).
        let many: Vec<(String, String)> = (0..codec::MAX_HEADERS)
            .map(|i| (format!("x-{i}"), "1".to_string()))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let f = fields(&many);
        let (text, _) = h1_request(&Method::GET, &u, &f, false, None).expect("ok");
        assert_eq!(
            codec::parse_request(&text, 1 << 20).err(),
            Some(codec::HeadError::TooManyHeaders)
        );
        assert_eq!(
            h2_request_head(&Method::GET, &u, &f, false, None, 1 << 20),
            Ok(None)
        );
        let f = fields(&[]);
        let (text, _) = h1_request(&Method::GET, &u, &f, false, None).expect("ok");
        let at = |max| h2_request_head(&Method::GET, &u, &f, false, None, max).expect("ok");
        assert!(at(text.len()).is_some());
        assert!(at(text.len() - 1).is_none());
    }

    #[test]
    fn responses_lose_connection_specific_fields() {
        let mut h = Headers::default();
        h.push("Connection", "close, X-Hop");
        h.push("X-Hop", "1");
        h.push("Keep-Alive", "timeout=5");
        h.push("Transfer-Encoding", "chunked");
        h.push("Content-Type", "text/plain");
        h.push("Set-Cookie", "a=1");
        h.push("Set-Cookie", "b=2");
        h.push("Bad Name", "x");
        let r = h2_response(200, h.clone());
        let names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "set-cookie"]);
        assert_eq!(r.headers().get_all("set-cookie").iter().count(), 2);
        assert_eq!(h2_response(999, h).status(), 502);
    }

    #[test]
    fn interim_responses_keep_their_status_but_not_101() {
        let mut h = Headers::default();
        h.push("Link", "</a.css>; rel=preload");
        h.push("Connection", "keep-alive");
        let r = h2_interim(103, h.clone()).expect("103");
        assert_eq!(r.status(), 103);
        let names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["link"]);
        assert_eq!(h2_interim(100, h.clone()).expect("100").status(), 100);
        assert!(h2_interim(101, h.clone()).is_none());
        assert!(h2_interim(200, h.clone()).is_none());
    }

    fn head(raw: &str, websocket: bool, head_request: bool) -> (H2Head, usize) {
        h2_head(
            &Bytes::from(raw.to_owned()),
            64 * 1024,
            websocket,
            head_request,
        )
        .expect("valid")
        .expect("complete")
    }

    fn names(r: &Response<()>) -> Vec<&str> {
        r.headers().keys().map(|k| k.as_str()).collect()
    }

    #[test]
    fn response_heads_are_read_for_http2() {
        let raw = "HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n\
                   Content-Type: text/plain\r\nContent-Length: 5, 5\r\nSet-Cookie: a=1\r\n\
                   Set-Cookie: b=2\r\nKeep-Alive: x\r\n\r\nhello";
        let (h, len) = head(raw, false, false);
        assert_eq!(len, raw.len() - 5);
        let H2Head::Final(r, framing) = h else {
            panic!("final")
        };
        assert_eq!((r.status().as_u16(), framing), (200, Framing::Length(5)));
        assert_eq!(names(&r), ["content-type", "set-cookie", "content-length"]);
        assert_eq!(r.headers().get_all("set-cookie").iter().count(), 2);
        assert_eq!(r.headers()["content-length"], "5");
        // Chunked (the coding goes), and a HEAD's length stays as it is.
        let (h, _) = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            false,
            false,
        );
        let H2Head::Final(r, framing) = h else {
            panic!("final")
        };
        assert_eq!(framing, Framing::Chunked);
        assert!(r.headers().is_empty(), "{:?}", r.headers());
        let (h, _) = head("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", false, true);
        let H2Head::Final(r, framing) = h else {
            panic!("final")
        };
        assert_eq!(
            (framing, r.headers()["content-length"].as_bytes()),
            (Framing::None, &b"7"[..])
        );
        // No length: until the pipeline closes; odd statuses become 502.
        let (h, _) = head("HTTP/1.1 799 Odd\r\n\r\n", false, false);
        let H2Head::Final(r, framing) = h else {
            panic!("final")
        };
        assert_eq!((r.status().as_u16(), framing), (502, Framing::UntilClose));
    }

    #[test]
    fn a_plain_length_goes_as_it_is_and_others_are_normalised() {
        let final_head = |raw: &str, head_request: bool| match head(raw, false, head_request).0 {
            H2Head::Final(r, f) => (r, f),
            H2Head::Interim(_) => panic!("final"),
        };
        let (r, f) = final_head(
            "HTTP/1.1 200 OK\r\nContent-Length: 1024\r\nConnection: close\r\nClose: x\r\n\r\n",
            false,
        );
        assert_eq!(
            (f, names(&r)),
            (Framing::Length(1024), vec!["content-length"])
        );
        let (r, f) = final_head("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false);
        assert_eq!(
            (f, r.headers()["content-length"].as_bytes()),
            (Framing::Length(0), &b"0"[..])
        );
        let (r, f) = final_head("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true);
        assert_eq!(
            (f, r.headers()["content-length"].as_bytes()),
            (Framing::None, &b"9"[..])
        );
        // Not canonical: through the codec's rules (one value, no leading zeros).
        let (r, f) = final_head("HTTP/1.1 200 OK\r\nContent-Length: 007\r\n\r\n", false);
        assert_eq!(
            (f, r.headers()["content-length"].as_bytes()),
            (Framing::Length(7), &b"7"[..])
        );
        // No body for 204 and 304, whatever the head says.
        for s in [204, 304] {
            let raw = format!("HTTP/1.1 {s} x\r\nContent-Length: 5\r\n\r\n");
            assert_eq!(final_head(&raw, false).1, Framing::None, "{s}");
        }
    }

    #[test]
    fn interim_and_websocket_heads() {
        let (h, _) = head(
            "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
            false,
            false,
        );
        let H2Head::Interim(Some(r)) = h else {
            panic!("interim")
        };
        assert_eq!((r.status().as_u16(), names(&r)), (103, vec!["link"]));
        let switch = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                      Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\nX-A: 1\r\n\r\n";
        assert!(matches!(
            head(switch, false, false).0,
            H2Head::Interim(None)
        ));
        let H2Head::Final(r, framing) = head(switch, true, false).0 else {
            panic!("final")
        };
        assert_eq!((r.status().as_u16(), framing), (200, Framing::UntilClose));
        assert_eq!(names(&r), ["x-a"]);
    }

    #[test]
    fn a_head_given_as_values_is_read_as_its_text_would_be() {
        let heads: [(u16, &[(&str, &str)]); 6] = [
            (
                200,
                &[("Content-Length", "5"), ("Content-Type", "text/plain")],
            ),
            (
                200,
                &[
                    ("Connection", "close, X-Hop"),
                    ("X-Hop", "1"),
                    ("Keep-Alive", "x"),
                    ("Set-Cookie", "a=1"),
                    ("Set-Cookie", "b=2"),
                    ("Content-Length", "007"),
                ],
            ),
            (200, &[("Transfer-Encoding", "chunked"), ("Trailer", "x")]),
            (204, &[("Content-Length", "5")]),
            (304, &[("ETag", "\"a\"")]),
            (404, &[("Via", "1.1 gatehouse")]),
        ];
        for (status, fields) in heads {
            let mut h = Headers::default();
            for (n, v) in fields {
                h.push(n, *v);
            }
            for head_request in [false, true] {
                let mut text = Vec::new();
                codec::write_response_head(&mut text, status, "x", &h);
                let from_text = head(
                    std::str::from_utf8(&text).expect("utf-8"),
                    false,
                    head_request,
                )
                .0;
                let from_values =
                    h2_head_of(status, &h.0, &Bytes::new(), false, head_request).expect("valid");
                let (H2Head::Final(a, fa), H2Head::Final(b, fb)) = (from_text, from_values) else {
                    panic!("final heads")
                };
                assert_eq!((a.status(), fa), (b.status(), fb), "{status} {fields:?}");
                assert_eq!(a.headers(), b.headers(), "{status} {fields:?}");
            }
        }
        // What the text could not carry is refused as values too.
        let mut h = Headers::default();
        h.push("X-Bad", "a\r\nb");
        assert!(h2_head_of(200, &h.0, &Bytes::new(), false, false).is_err());
    }

    #[test]
    fn bad_or_partial_response_heads() {
        assert!(matches!(
            h2_head(
                &Bytes::from_static(b"HTTP/1.1 200 OK\r\nA: b"),
                1024,
                false,
                false
            ),
            Ok(None)
        ));
        assert!(h2_head(&Bytes::from_static(&[b'x'; 10]), 4, false, false).is_err());
        assert!(h2_head(
            &Bytes::from_static(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n"),
            8,
            false,
            false
        )
        .is_err());
        assert!(h2_head(
            &Bytes::from_static(b"HTTP/1.1 099 x\r\n\r\n"),
            1024,
            false,
            false
        )
        .is_err());
        assert!(h2_head(
            &Bytes::from_static(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            1024,
            false,
            false
        )
        .is_err());
    }

    #[test]
    fn trailers_come_from_the_end_of_a_chunked_body() {
        let t = chunked_trailers(
            b"\r\n0\r\ngrpc-status: 0\r\nGrpc-Message: ok\r\nConnection: x\r\n\r\n",
        );
        assert_eq!(t.len(), 2);
        assert_eq!(t.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
        assert_eq!(
            t.get("grpc-message").map(|v| v.as_bytes()),
            Some(&b"ok"[..])
        );
        assert!(chunked_trailers(b"0;ext=1\r\n\r\n").is_empty());
        assert!(chunked_trailers(b"").is_empty());
        assert!(chunked_trailers(b"0\r\nnot a field\r\n\r\n").is_empty());
    }
}
