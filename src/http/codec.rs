//! HTTP/1.x message heads: strict parsing (RFC 9112) and serialisation. No I/O here.
//!
//! Parsing is done by `httparse`; this module adds what a proxy must enforce on top of it:
//! the request line's version, message framing (RFC 9112 section 6.3) with the request-smuggling
//! defences (Content-Length together with Transfer-Encoding, differing Content-Lengths), and a
//! bound on the head's size and header count.

/// Most header fields accepted in one head.
pub const MAX_HEADERS: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

use std::borrow::Cow;

use bytes::Bytes;

/// A header field's name as received (case is kept when forwarding). Common names are
/// static strings, so parsing a head does not allocate one `String` per field.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HeaderName(Cow<'static, str>);

impl HeaderName {
    /// The name, borrowing a static string when `name` is a common field name spelt
    /// exactly so (in its usual case or all lower case).
    pub fn new(name: &str) -> HeaderName {
        match known_name(name) {
            Some(known) => HeaderName(Cow::Borrowed(known)),
            None => HeaderName(Cow::Owned(name.to_string())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for HeaderName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for HeaderName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for HeaderName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for HeaderName {
    fn from(name: String) -> HeaderName {
        HeaderName(Cow::Owned(name))
    }
}

impl From<&str> for HeaderName {
    fn from(name: &str) -> HeaderName {
        HeaderName::new(name)
    }
}

impl PartialEq<str> for HeaderName {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for HeaderName {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

/// `name` as a static string when it is a common field name written exactly so (usual
/// case or lower case). Length, first and last letter pick the one candidate (a jump
/// table, not a string match per name); one comparison then confirms it. Cheaper than
/// allocating and freeing a copy.
fn known_name(name: &str) -> Option<&'static str> {
    let b = name.as_bytes();
    let (first, last) = (
        b.first()?.to_ascii_lowercase(),
        b[b.len() - 1].to_ascii_lowercase(),
    );
    let (usual, lower): (&'static str, &'static str) = match (b.len(), first, last) {
        (4, b'h', b't') => ("Host", "host"),
        (4, b'd', b'e') => ("Date", "date"),
        (4, b'e', b'g') => ("ETag", "etag"),
        (4, b'v', b'y') => ("Vary", "vary"),
        (6, b'a', b't') => ("Accept", "accept"),
        (6, b's', b'r') => ("Server", "server"),
        (6, b'c', b'e') => ("Cookie", "cookie"),
        (6, b'o', b'n') => ("Origin", "origin"),
        (6, b'p', b'a') => ("Pragma", "pragma"),
        (7, b'e', b's') => ("Expires", "expires"),
        (7, b'r', b'r') => ("Referer", "referer"),
        (7, b'u', b'e') => ("Upgrade", "upgrade"),
        (8, b'l', b'n') => ("Location", "location"),
        (9, b'f', b'd') => ("Forwarded", "forwarded"),
        (10, b'k', b'e') => ("Keep-Alive", "keep-alive"),
        (10, b's', b'e') => ("Set-Cookie", "set-cookie"),
        (10, b'c', b'n') => ("Connection", "connection"),
        (10, b'u', b't') => ("User-Agent", "user-agent"),
        (12, b'c', b'e') => ("Content-Type", "content-type"),
        (12, b'x', b'd') => ("X-Request-Id", "x-request-id"),
        (13, b'a', b's') => ("Accept-Ranges", "accept-ranges"),
        (13, b'a', b'n') => ("Authorization", "authorization"),
        (13, b'c', b'l') => ("Cache-Control", "cache-control"),
        (13, b'i', b'h') => ("If-None-Match", "if-none-match"),
        (13, b'l', b'd') => ("Last-Modified", "last-modified"),
        (14, b'c', b'h') => ("Content-Length", "content-length"),
        (15, b'a', b'g') => ("Accept-Encoding", "accept-encoding"),
        (15, b'a', b'e') => ("Accept-Language", "accept-language"),
        (15, b'x', b'r') => ("X-Forwarded-For", "x-forwarded-for"),
        (16, b'c', b'g') => ("Content-Encoding", "content-encoding"),
        (16, b'x', b't') => ("X-Forwarded-Host", "x-forwarded-host"),
        (17, b't', b'g') => ("Transfer-Encoding", "transfer-encoding"),
        (17, b'x', b'o') => ("X-Forwarded-Proto", "x-forwarded-proto"),
        (17, b'i', b'e') => ("If-Modified-Since", "if-modified-since"),
        _ => return None,
    };
    // Equal lengths (the match keyed on it): compared by machine words, no `memcmp` call.
    if same_bytes(b, usual.as_bytes()) {
        Some(usual)
    } else if same_bytes(b, lower.as_bytes()) {
        Some(lower)
    } else {
        None
    }
}

/// Whether `a` and `b`, of the same length (4 to 24 bytes, as the names above), are equal,
/// by two or three overlapping words; any other length is compared as slices.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        4..=8 => word4(a, 0) == word4(b, 0) && word4(a, n - 4) == word4(b, n - 4),
        9..=24 => {
            word8(a, 0) == word8(b, 0)
                && word8(a, n - 8) == word8(b, n - 8)
                && (n <= 16 || word8(a, 8) == word8(b, 8))
        }
        _ => a == b,
    }
}

fn word4(s: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&s[at..at + 4]);
    u32::from_ne_bytes(w)
}

fn word8(s: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&s[at..at + 8]);
    u64::from_ne_bytes(w)
}

/// What a header field's value can be built from ([`Headers::push`], [`Headers::set`]).
pub trait IntoValue {
    fn into_value(self) -> Bytes;
}

impl IntoValue for Bytes {
    fn into_value(self) -> Bytes {
        self
    }
}

impl IntoValue for Vec<u8> {
    fn into_value(self) -> Bytes {
        Bytes::from(self)
    }
}

impl IntoValue for String {
    fn into_value(self) -> Bytes {
        Bytes::from(self)
    }
}

impl IntoValue for &[u8] {
    fn into_value(self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

impl<const N: usize> IntoValue for &[u8; N] {
    fn into_value(self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

impl IntoValue for &str {
    fn into_value(self) -> Bytes {
        Bytes::copy_from_slice(self.as_bytes())
    }
}

impl IntoValue for &String {
    fn into_value(self) -> Bytes {
        Bytes::copy_from_slice(self.as_bytes())
    }
}

impl IntoValue for &Vec<u8> {
    fn into_value(self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// As received (case is kept when forwarding).
    pub name: HeaderName,
    /// A slice of the parsed head's one buffer, or its own bytes when set by the proxy.
    pub value: Bytes,
}

/// Header fields in order, with case-insensitive lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<Header>);

impl Headers {
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|h| eq_ignore_case(h.name.as_bytes(), name.as_bytes()))
            .map(|h| &h.value[..])
    }

    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.0
            .iter()
            .filter(move |h| eq_ignore_case(h.name.as_bytes(), name.as_bytes()))
            .map(|h| &h.value[..])
    }

    pub fn count(&self, name: &str) -> usize {
        self.get_all(name).count()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Comma-separated list elements of every field with this name, trimmed, lower-cased.
    pub fn tokens(&self, name: &str) -> Vec<String> {
        self.get_all(name)
            .flat_map(|v| v.split(|b| *b == b','))
            .map(|t| String::from_utf8_lossy(t).trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// Whether [`Headers::tokens`] would hold `token` (lower case), without building it.
    /// The token's case is checked only once an element matches it.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        !token.is_empty()
            && self
                .get_all(name)
                .any(|v| v.split(|b| *b == b',').any(|t| token_is(t, token)))
            && token.bytes().all(|b| !b.is_ascii_uppercase())
    }

    /// Removes every field named `name`; a head without one is only read.
    pub fn remove(&mut self, name: &str) {
        if self.contains(name) {
            self.0
                .retain(|h| !eq_ignore_case(h.name.as_bytes(), name.as_bytes()));
        }
    }

    /// Appends a field. Owned values (`Vec<u8>`, `String`, `Bytes`) move in; borrowed ones
    /// are copied.
    pub fn push(&mut self, name: &str, value: impl IntoValue) {
        self.0.push(Header {
            name: HeaderName::new(name),
            value: value.into_value(),
        });
    }

    pub fn set(&mut self, name: &str, value: impl IntoValue) {
        self.remove(name);
        self.push(name, value);
    }

    /// Every field as `name: value CRLF`, in order.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.reserve(
            self.0
                .iter()
                .map(|h| h.name.len() + h.value.len() + 4)
                .sum(),
        );
        for h in &self.0 {
            push_field(out, h.name.as_bytes(), &h.value);
        }
    }
}

/// Whether one list element `t` (untrimmed) is `token` (ASCII), as [`Headers::tokens`]
/// compares: trimmed of whitespace (`str::trim`), case-insensitive. An ASCII element is
/// compared as bytes; only one with other bytes goes through UTF-8 decoding.
fn token_is(t: &[u8], token: &str) -> bool {
    // `char::is_whitespace` for ASCII: tab, LF, VT, FF, CR, space.
    let ws = |b: &u8| matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ');
    let start = t.iter().position(|b| !ws(b)).unwrap_or(t.len());
    let end = t.iter().rposition(|b| !ws(b)).map_or(start, |e| e + 1);
    if eq_ignore_case(&t[start..end], token.as_bytes()) {
        return true;
    }
    !t.is_ascii() && std::str::from_utf8(t).is_ok_and(|s| s.trim().eq_ignore_ascii_case(token))
}

/// Whether `a` and `b` are equal ignoring ASCII case: the same answer as
/// `<[u8]>::eq_ignore_ascii_case`, eight (or four) bytes at a time instead of one. Field
/// names are compared with it on every lookup; inline, so a name of another length (most
/// of them) costs a compare.
#[inline]
pub fn eq_ignore_case(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && same_length_eq_ignore_case(a, b)
}

#[inline]
fn same_length_eq_ignore_case(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n < 4 {
        return a.eq_ignore_ascii_case(b);
    }
    if n <= 8 {
        // Two overlapping four-byte words cover 4 to 8 bytes; compared as one.
        let pair = |s: &[u8]| u64::from(word4(s, 0)) << 32 | u64::from(word4(s, n - 4));
        return word8_eq(pair(a), pair(b));
    }
    let mut at = 0;
    while at + 8 < n {
        if !word8_eq(word8(a, at), word8(b, at)) {
            return false;
        }
        at += 8;
    }
    // The last word overlaps the one before it.
    word8_eq(word8(a, n - 8), word8(b, n - 8))
}

/// Two words equal ignoring ASCII case. Words that differ in a bit other than the case bit
/// (most of those that differ) are told apart without lowering them.
#[inline]
fn word8_eq(x: u64, y: u64) -> bool {
    const CASE: u64 = u64::MAX / 255 * 0x20;
    let d = x ^ y;
    d == 0 || (d & !CASE == 0 && lower8(x) == lower8(y))
}

/// `x` with each ASCII capital letter byte made small; other bytes unchanged.
fn lower8(x: u64) -> u64 {
    const ONES: u64 = u64::MAX / 255;
    // Bytes below 0x80 without their top bit, so the sums below carry into no other byte.
    let low = x & (ONES * 0x7f);
    // Top bit set where the byte is at least `A`, and where it is past `Z`.
    let from_a = low.wrapping_add(ONES * u64::from(0x80 - b'A'));
    let past_z = low.wrapping_add(ONES * u64::from(0x7f - b'Z'));
    let capital = from_a & !past_z & !x & (ONES * 0x80);
    x | (capital >> 2)
}

/// One field line, `name: value CRLF` (the caller has checked both).
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    pub version: Version,
    pub headers: Headers,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub version: Version,
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("message head larger than {0} bytes")]
    TooLarge(usize),
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("malformed message: {0}")]
    Invalid(&'static str),
}

/// How a message body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Response body that ends when the server closes the connection.
    UntilClose,
}

fn version_of(v: Option<u8>) -> Result<Version, HeadError> {
    match v {
        Some(0) => Ok(Version::Http10),
        Some(1) => Ok(Version::Http11),
        _ => Err(HeadError::Invalid("unsupported HTTP version")),
    }
}

/// The fields of a parsed head. `head` is the head's bytes, which `raw` points into: they
/// are copied once, and every value is a slice of that copy (no allocation per field).
fn collect_headers(head: &[u8], raw: &[httparse::Header<'_>]) -> Result<Headers, HeadError> {
    // httparse admits bytes that RFC 9110 section 5.5 forbids in field values.
    if raw.iter().any(|h| has_forbidden_byte(h.value)) {
        return Err(HeadError::Invalid("forbidden character in header value"));
    }
    let shared = Bytes::copy_from_slice(head);
    let mut out = Vec::with_capacity(raw.len());
    for h in raw {
        out.push(Header {
            name: HeaderName::new(h.name),
            value: match value_range(head, h.value) {
                Some(r) => shared.slice(r),
                None => Bytes::copy_from_slice(h.value),
            },
        });
    }
    Ok(Headers(out))
}

/// Whether `value` holds CR, LF or NUL. Eight bytes at a time: a word none of whose bytes
/// is below 0x0e (as nearly every header byte is) holds none of the three; only a word that
/// has such a byte (a tab, say) is looked at byte by byte.
fn has_forbidden_byte(value: &[u8]) -> bool {
    let bad = |b: &u8| matches!(b, b'\r' | b'\n' | 0);
    let words = value.chunks_exact(8);
    let tail = words.remainder();
    for w in words {
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        let x = u64::from_ne_bytes(word);
        // Some byte of `x` is below 0x0e (the "hasless" bit trick: exact for any < 0x80).
        const ONES: u64 = u64::MAX / 255;
        if x.wrapping_sub(ONES * 0x0e) & !x & (ONES * 0x80) != 0 && w.iter().any(bad) {
            return true;
        }
    }
    tail.iter().any(bad)
}

/// Where `part` lies within `whole`, when it is a (non-empty) sub-slice of it.
fn value_range(whole: &[u8], part: &[u8]) -> Option<std::ops::Range<usize>> {
    if part.is_empty() {
        return None;
    }
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= whole.len()).then_some(start..end)
}

fn map_err(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        httparse::Error::Version => HeadError::Invalid("unsupported HTTP version"),
        httparse::Error::HeaderName => HeadError::Invalid("invalid header name"),
        httparse::Error::HeaderValue => HeadError::Invalid("invalid header value"),
        httparse::Error::NewLine => HeadError::Invalid("invalid line ending"),
        httparse::Error::Status => HeadError::Invalid("invalid status code"),
        httparse::Error::Token => HeadError::Invalid("invalid request line"),
    }
}

/// Parses a request head from the start of `buf`. `Ok(None)`: incomplete, read more.
/// Returns the head and its length in bytes.
pub fn parse_request(
    buf: &[u8],
    max_bytes: usize,
) -> Result<Option<(RequestHead, usize)>, HeadError> {
    // Uninitialised slots: httparse writes the ones it fills, so a parse does not first
    // write 128 empty fields (4 KiB).
    let mut raw = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let status = httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, &mut raw)
        .map_err(map_err)?;
    match status {
        httparse::Status::Partial => {
            if buf.len() > max_bytes {
                Err(HeadError::TooLarge(max_bytes))
            } else {
                Ok(None)
            }
        }
        httparse::Status::Complete(len) => {
            if len > max_bytes {
                return Err(HeadError::TooLarge(max_bytes));
            }
            let head = RequestHead {
                method: req.method.unwrap_or_default().to_string(),
                target: req.path.unwrap_or_default().to_string(),
                version: version_of(req.version)?,
                headers: collect_headers(&buf[..len], req.headers)?,
            };
            Ok(Some((head, len)))
        }
    }
}

/// Parses a response head from the start of `buf`. `Ok(None)`: incomplete.
pub fn parse_response(
    buf: &[u8],
    max_bytes: usize,
) -> Result<Option<(ResponseHead, usize)>, HeadError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut raw = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let status = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut raw)
        .map_err(map_err)?;
    match status {
        httparse::Status::Partial => {
            if buf.len() > max_bytes {
                Err(HeadError::TooLarge(max_bytes))
            } else {
                Ok(None)
            }
        }
        httparse::Status::Complete(len) => {
            if len > max_bytes {
                return Err(HeadError::TooLarge(max_bytes));
            }
            let code = resp.code.unwrap_or(0);
            if !(100..=999).contains(&code) {
                return Err(HeadError::Invalid("invalid status code"));
            }
            Ok(Some((
                ResponseHead {
                    version: version_of(resp.version)?,
                    status: code,
                    reason: resp.reason.unwrap_or_default().to_string(),
                    headers: collect_headers(&buf[..len], resp.headers)?,
                },
                len,
            )))
        }
    }
}

/// The one Content-Length a message declares. Repeated fields (or list members) must agree
/// (RFC 9112 section 6.3 item 5); anything that is not 1*DIGIT is invalid.
fn content_length(h: &Headers) -> Result<Option<u64>, HeadError> {
    let mut found: Option<u64> = None;
    for v in h.get_all("content-length") {
        for part in v.split(|b| *b == b',') {
            let s = std::str::from_utf8(part)
                .map_err(|_| HeadError::Invalid("bad Content-Length"))?
                .trim();
            if s.is_empty() || s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HeadError::Invalid("bad Content-Length"));
            }
            let n: u64 = s
                .parse()
                .map_err(|_| HeadError::Invalid("bad Content-Length"))?;
            match found {
                Some(prev) if prev != n => {
                    return Err(HeadError::Invalid("differing Content-Length values"))
                }
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

/// Whether the final transfer coding is `chunked` (and `chunked` appears only there).
fn chunked_last(h: &Headers) -> Result<bool, HeadError> {
    let codings = h.tokens("transfer-encoding");
    let n = codings.iter().filter(|c| *c == "chunked").count();
    match (codings.last().map(String::as_str), n) {
        (Some("chunked"), 1) => Ok(true),
        (_, 0) => Ok(false),
        _ => Err(HeadError::Invalid(
            "chunked applied more than once or not last",
        )),
    }
}

/// Whether a field name that is not a framing field reads as one where `_` counts as `-`
/// (CGI-style servers and some frameworks fold them): `Transfer_Encoding`, `Content_Length`.
fn disguised_framing_field(name: &str) -> bool {
    name.contains('_')
        && ["content-length", "transfer-encoding"].iter().any(|f| {
            f.len() == name.len()
                && f.bytes()
                    .zip(name.bytes())
                    .all(|(a, b)| a == b.to_ascii_lowercase() || (a == b'-' && b == b'_'))
        })
}

/// Body framing of a request, rejecting the ambiguous forms smuggling attacks use.
pub fn request_framing(head: &RequestHead) -> Result<Framing, HeadError> {
    if head
        .headers
        .0
        .iter()
        .any(|h| disguised_framing_field(&h.name))
    {
        return Err(HeadError::Invalid(
            "header name that reads as Content-Length or Transfer-Encoding",
        ));
    }
    let has_te = head.headers.contains("transfer-encoding");
    if has_te {
        if head.headers.contains("content-length") {
            return Err(HeadError::Invalid(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if head.version == Version::Http10 {
            return Err(HeadError::Invalid(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        // RFC 9112 section 6.3 item 4: a request whose final coding is not chunked is an error.
        return if chunked_last(&head.headers)? {
            Ok(Framing::Chunked)
        } else {
            Err(HeadError::Invalid(
                "request Transfer-Encoding without final chunked",
            ))
        };
    }
    match content_length(&head.headers)? {
        None | Some(0) => Ok(Framing::None),
        Some(n) => Ok(Framing::Length(n)),
    }
}

/// Body framing of a response to a request with `method`.
pub fn response_framing(method: &str, head: &ResponseHead) -> Result<Framing, HeadError> {
    if method == "HEAD" || head.status < 200 || head.status == 204 || head.status == 304 {
        return Ok(Framing::None);
    }
    if method == "CONNECT" && (200..300).contains(&head.status) {
        return Ok(Framing::None);
    }
    if head.headers.contains("transfer-encoding") {
        // Transfer-Encoding overrides Content-Length (item 3); not chunked: read until close.
        return Ok(match chunked_last(&head.headers) {
            Ok(true) => Framing::Chunked,
            _ => Framing::UntilClose,
        });
    }
    match content_length(&head.headers)? {
        Some(n) => Ok(Framing::Length(n)),
        None => Ok(Framing::UntilClose),
    }
}

/// Makes a response head's framing fields say one thing before it is passed on:
/// - Transfer-Encoding wins over Content-Length, which is dropped (RFC 9112 section 6.3
///   item 3: "MUST remove the received Content-Length field prior to forwarding");
/// - 1xx, 204 and 304 have no body: Content-Length and Transfer-Encoding go (a 304's
///   Content-Length would describe the stored body, and a wrong one desynchronises
///   caches downstream);
/// - an agreeing list (`5, 5`) becomes one value.
///
/// `framing` is what [`response_framing`] decided for this head; a HEAD response keeps its
/// (single) Content-Length.
pub fn normalise_response_framing(status: u16, framing: Framing, h: &mut Headers) {
    if status < 200 || status == 204 || status == 304 {
        h.remove("content-length");
        h.remove("transfer-encoding");
        return;
    }
    if h.contains("transfer-encoding") {
        h.remove("content-length");
        return;
    }
    let n = match framing {
        Framing::Length(n) => Some(n),
        _ => content_length(h).ok().flatten(),
    };
    if let Some(n) = n {
        let mut digits = [0u8; 20];
        let n = decimal_digits(n, &mut digits);
        // One pass: exactly one field, with exactly these digits, stays as it is.
        let kept = {
            let mut sent = h.get_all("content-length");
            sent.next() == Some(n) && sent.next().is_none()
        };
        if !kept {
            h.set("Content-Length", Bytes::copy_from_slice(n));
        }
    }
}

/// The Content-Length to forward for a request whose framing was accepted: one value, even
/// when the client sent an agreeing list (`5, 5`) or repeated fields. `None`: no such field.
pub fn request_content_length(head: &RequestHead) -> Option<u64> {
    content_length(&head.headers).ok().flatten()
}

pub fn write_request_head(out: &mut Vec<u8>, method: &str, target: &str, headers: &Headers) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    headers.write_to(out);
    out.extend_from_slice(b"\r\n");
}

pub fn write_response_head(out: &mut Vec<u8>, status: u16, reason: &str, headers: &Headers) {
    // The status line without the formatting machinery (this runs for every response).
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    headers.write_to(out);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal, as `Display` writes it.
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    out.extend_from_slice(decimal_digits(n, &mut digits));
}

/// `n` in decimal ASCII digits, written at the end of `digits`, without `core::fmt`.
pub fn decimal_digits(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &digits[i..]
}

/// The standard reason phrase for statuses the proxy generates itself.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        508 => "Loop Detected",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Result<Option<(RequestHead, usize)>, HeadError> {
        parse_request(s.as_bytes(), 8192)
    }

    fn framing(s: &str) -> Result<Framing, HeadError> {
        let (h, _) = req(s).expect("parses").expect("complete");
        request_framing(&h)
    }

    #[test]
    fn case_insensitive_comparison_agrees_with_std() {
        // Every pair of bytes, at each place in names of every length the word paths take.
        let base = b"content-security-policy-report-only-x".to_vec();
        for n in 0..base.len() {
            let a = &base[..n];
            assert!(eq_ignore_case(a, a));
            assert!(!eq_ignore_case(a, &base[..n + 1]));
            for at in [0, n / 2, n.saturating_sub(1)] {
                if n == 0 {
                    continue;
                }
                for x in 0..=255u8 {
                    for y in [
                        x,
                        x ^ 0x20,
                        x.wrapping_add(1),
                        b'a',
                        b'A',
                        b'~',
                        b'^',
                        0x80 | x,
                    ] {
                        let (mut p, mut q) = (a.to_vec(), a.to_vec());
                        p[at] = x;
                        q[at] = y;
                        assert_eq!(
                            eq_ignore_case(&p, &q),
                            p.eq_ignore_ascii_case(&q),
                            "{p:?} {q:?}"
                        );
                    }
                }
            }
        }
        assert!(eq_ignore_case(b"Content-Length", b"content-length"));
        assert!(eq_ignore_case(b"X-FORWARDED-FOR", b"x-forwarded-for"));
        assert!(!eq_ignore_case(b"x-a^b", b"x-a~b"));
        assert!(!eq_ignore_case(b"Host", b"Hose"));
    }

    #[test]
    fn parses_absolute_form() {
        let (h, n) = req("GET http://a.example/x?y HTTP/1.1\r\nHost: a.example\r\n\r\nextra")
            .expect("ok")
            .expect("complete");
        assert_eq!(h.method, "GET");
        assert_eq!(h.target, "http://a.example/x?y");
        assert_eq!(h.version, Version::Http11);
        assert_eq!(h.headers.get_str("host"), Some("a.example"));
        assert_eq!(
            n,
            "GET http://a.example/x?y HTTP/1.1\r\nHost: a.example\r\n\r\n".len()
        );
    }

    #[test]
    fn partial_then_too_large() {
        assert_eq!(req("GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000));
        assert_eq!(req(&big), Err(HeadError::TooLarge(8192)));
        let complete_big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
        assert_eq!(req(&complete_big), Err(HeadError::TooLarge(8192)));
    }

    #[test]
    fn header_count_bound_and_empty_input() {
        let fields = |n: usize| {
            (0..n)
                .map(|i| format!("X-{i}: v{i}\r\n"))
                .collect::<String>()
        };
        let (h, _) = req(&format!("GET / HTTP/1.1\r\n{}\r\n", fields(MAX_HEADERS)))
            .expect("ok")
            .expect("complete");
        assert_eq!(h.headers.0.len(), MAX_HEADERS);
        assert_eq!(h.headers.get_str("x-127"), Some("v127"));
        let over = format!("GET / HTTP/1.1\r\n{}\r\n", fields(MAX_HEADERS + 1));
        assert_eq!(req(&over), Err(HeadError::TooManyHeaders));
        let resp = format!("HTTP/1.1 200 OK\r\n{}\r\n", fields(MAX_HEADERS + 1));
        assert_eq!(
            parse_response(resp.as_bytes(), 1 << 20),
            Err(HeadError::TooManyHeaders)
        );
        let (r, _) = parse_response(b"HTTP/1.1 204 No Content\r\nA: b\r\n\r\n", 8192)
            .expect("ok")
            .expect("complete");
        assert_eq!((r.status, r.headers.get_str("a")), (204, Some("b")));
        assert_eq!(parse_response(b"", 8192), Ok(None));
        assert_eq!(req(""), Ok(None));
    }

    #[test]
    fn rejects_bad_request_lines() {
        assert!(req("GARBAGE\r\n\r\n").is_err());
        assert!(req("GET / HTTP/2.0\r\n\r\n").is_err());
        assert!(req("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n").is_err());
    }

    #[test]
    fn rejects_obs_fold_and_bare_cr() {
        assert!(req("GET / HTTP/1.1\r\nA: b\r\n  folded\r\n\r\n").is_err());
        assert!(req("GET / HTTP/1.1\r\nA: b\rc\r\n\r\n").is_err());
    }

    #[test]
    fn smuggling_defences() {
        assert!(framing(
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .is_err());
        assert!(
            framing("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n").is_err()
        );
        assert!(framing("POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n").is_err());
        assert!(framing("POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n").is_err());
        assert!(framing("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").is_err());
        assert!(framing("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n").is_err());
        assert!(framing("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert_eq!(
            framing("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"),
            Ok(Framing::Length(3))
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(framing("GET / HTTP/1.1\r\n\r\n"), Ok(Framing::None));
    }

    #[test]
    fn refuses_names_that_read_as_framing_fields() {
        for name in [
            "Transfer_Encoding",
            "content_length",
            "CONTENT_LENGTH",
            "Transfer-Encoding_",
        ] {
            let r = framing(&format!("POST / HTTP/1.1\r\n{name}: 5\r\n\r\n"));
            assert_eq!(r.is_err(), name != "Transfer-Encoding_", "{name}");
        }
        assert_eq!(
            framing("POST / HTTP/1.1\r\nX_Content_Length: 5\r\n\r\n"),
            Ok(Framing::None)
        );
    }

    #[test]
    fn agreeing_content_length_list_is_forwarded_as_one() {
        let (h, _) = req("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\ncontent-length: 5\r\n\r\n")
            .expect("ok")
            .expect("complete");
        assert_eq!(request_framing(&h), Ok(Framing::Length(5)));
        assert_eq!(request_content_length(&h), Some(5));
    }

    #[test]
    fn response_framing_fields_are_normalised() {
        let resp = |s: &str| {
            parse_response(s.as_bytes(), 8192)
                .expect("ok")
                .expect("complete")
                .0
        };
        let fields = |s: &str, method: &str| {
            let r = resp(s);
            let f = response_framing(method, &r);
            let mut h = r.headers.clone();
            if let Ok(f) = f {
                normalise_response_framing(r.status, f, &mut h);
            }
            (
                f,
                h.tokens("transfer-encoding"),
                h.get_all("content-length")
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect::<Vec<_>>(),
            )
        };
        // Both: chunked wins, Content-Length is never passed on.
        let (f, te, cl) = fields(
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET",
        );
        assert_eq!(
            (f, te, cl),
            (Ok(Framing::Chunked), vec!["chunked".to_string()], vec![])
        );
        // A coding without chunked: kept, read until close.
        let (f, te, cl) = fields(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\n",
            "GET",
        );
        assert_eq!(
            (f, te, cl),
            (Ok(Framing::UntilClose), vec!["gzip".to_string()], vec![])
        );
        // Differing lengths are an error (the proxy answers 502); an agreeing list is one.
        assert!(
            fields("HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n", "GET")
                .0
                .is_err()
        );
        assert!(fields(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "GET"
        )
        .0
        .is_err());
        let (f, _, cl) = fields("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", "GET");
        assert_eq!((f, cl), (Ok(Framing::Length(5)), vec!["5".to_string()]));
        // 204 and 304 lose their framing fields; a HEAD response keeps its length.
        for s in [
            "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let (f, te, cl) = fields(s, "GET");
            assert_eq!((f, te, cl), (Ok(Framing::None), vec![], vec![]));
        }
        let (f, _, cl) = fields("HTTP/1.1 200 OK\r\nContent-Length: 70\r\n\r\n", "HEAD");
        assert_eq!((f, cl), (Ok(Framing::None), vec!["70".to_string()]));
    }

    #[test]
    fn response_framing_rules() {
        let resp = |s: &str| {
            parse_response(s.as_bytes(), 8192)
                .expect("ok")
                .expect("complete")
                .0
        };
        let r = resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(response_framing("GET", &r), Ok(Framing::Length(5)));
        assert_eq!(response_framing("HEAD", &r), Ok(Framing::None));
        let r = resp("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(response_framing("GET", &r), Ok(Framing::None));
        let r = resp("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(response_framing("GET", &r), Ok(Framing::UntilClose));
        let r = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n");
        assert_eq!(response_framing("GET", &r), Ok(Framing::Chunked));
        let r = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!(response_framing("GET", &r), Ok(Framing::UntilClose));
    }

    /// Random and mutated heads never panic, and a parse never reports more bytes than given.
    #[test]
    fn random_input_never_panics() {
        let seeds: [&[u8]; 3] = [
            b"GET http://a.example/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nX: y\r\n\r\n",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..20_000 {
            let mut input = seeds[i % seeds.len()].to_vec();
            for _ in 0..(next() % 8) {
                let pos = (next() as usize) % input.len();
                match next() % 3 {
                    0 => input[pos] = next() as u8,
                    1 => input.insert(pos, next() as u8),
                    _ => {
                        input.remove(pos);
                    }
                }
                if input.is_empty() {
                    input.push(b'G');
                }
            }
            if let Ok(Some((head, n))) = parse_request(&input, 8192) {
                assert!(n <= input.len());
                let _ = request_framing(&head);
            }
            if let Ok(Some((head, n))) = parse_response(&input, 8192) {
                assert!(n <= input.len());
                let _ = response_framing("GET", &head);
            }
        }
    }

    #[test]
    fn decimals_and_status_lines() {
        for n in [0u64, 7, 10, 200, 999, 65535, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        let mut out = Vec::new();
        write_response_head(&mut out, 404, "Not Found", &Headers::default());
        assert_eq!(out, b"HTTP/1.1 404 Not Found\r\n\r\n");
    }

    #[test]
    fn tokens_are_case_insensitive_lists() {
        let (h, _) =
            req("GET / HTTP/1.1\r\nConnection: Keep-Alive, X-Foo\r\nconnection: close\r\n\r\n")
                .expect("ok")
                .expect("complete");
        assert_eq!(
            h.headers.tokens("connection"),
            ["keep-alive", "x-foo", "close"]
        );
        assert!(h.headers.has_token("Connection", "close"));
        assert!(h.headers.has_token("Connection", "x-foo"));
        assert!(!h.headers.has_token("Connection", "upgrade"));
        assert!(
            !h.headers.has_token("Connection", "Close"),
            "tokens are lower case"
        );
    }

    #[test]
    fn forbidden_bytes_are_found_anywhere() {
        let slow = |v: &[u8]| v.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0);
        for len in 0..26 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut v = vec![b'a'; len];
                    v[at] = b;
                    assert_eq!(has_forbidden_byte(&v), slow(&v), "{v:?}");
                    // Beside bytes just above and below the bound, and high ones.
                    for other in [0x0d, 0x0e, 0x0f, 0x09, 0x80, 0xff] {
                        let mut w = vec![other; len];
                        w[at] = b;
                        assert_eq!(has_forbidden_byte(&w), slow(&w), "{w:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn list_elements_are_trimmed_as_str_trim_does() {
        for (t, is) in [
            (&b"close"[..], true),
            (b" \tClose\r\x0b", true),
            (b"\x0c\nCLOSE ", true),
            (b"clos", false),
            (b"close x", false),
            (b"", false),
            (b"   ", false),
            // Unicode whitespace around it, as `str::trim` removes.
            ("\u{a0}close\u{2003}".as_bytes(), true),
            ("cl\u{f6}se".as_bytes(), false),
            (b"\xffclose", false),
        ] {
            let old = std::str::from_utf8(t).is_ok_and(|s| s.trim().eq_ignore_ascii_case("close"));
            assert_eq!(old, is, "{t:?}");
            assert_eq!(token_is(t, "close"), is, "{t:?}");
        }
    }

    #[test]
    fn common_names_are_static_and_keep_their_case() {
        for n in ["Host", "host", "Content-Length", "x-forwarded-for", "ETag"] {
            let name = HeaderName::new(n);
            assert_eq!(name.as_str(), n);
            assert!(matches!(name.0, Cow::Borrowed(_)), "{n}");
        }
        for n in ["HOST", "X-Custom", "content-Length", ""] {
            let name = HeaderName::new(n);
            assert_eq!(name.as_str(), n);
            assert!(matches!(name.0, Cow::Owned(_)), "{n}");
        }
        assert_eq!(known_name("Server"), Some("Server"));
        assert_eq!(known_name("Servers"), None);
        // Same length and first and last letters, another name.
        assert_eq!(known_name("Hoot"), None);
        assert_eq!(known_name("Etag"), None);
        let every = [
            "Host",
            "Date",
            "ETag",
            "Vary",
            "Accept",
            "Server",
            "Cookie",
            "Origin",
            "Pragma",
            "Expires",
            "Referer",
            "Upgrade",
            "Location",
            "Forwarded",
            "Keep-Alive",
            "Set-Cookie",
            "Connection",
            "User-Agent",
            "Content-Type",
            "X-Request-Id",
            "Accept-Ranges",
            "Authorization",
            "Cache-Control",
            "If-None-Match",
            "Last-Modified",
            "Content-Length",
            "Accept-Encoding",
            "Accept-Language",
            "X-Forwarded-For",
            "Content-Encoding",
            "X-Forwarded-Host",
            "Transfer-Encoding",
            "X-Forwarded-Proto",
            "If-Modified-Since",
        ];
        for n in every {
            assert_eq!(known_name(n), Some(n));
            let lower = n.to_ascii_lowercase();
            assert_eq!(known_name(&lower), Some(lower.as_str()));
        }
        assert_eq!(HeaderName::from("Via".to_string()), HeaderName::new("Via"));
    }

    #[test]
    fn value_range_finds_sub_slices_only() {
        let whole = b"Host: a.example\r\n";
        assert_eq!(value_range(whole, &whole[6..15]), Some(6..15));
        assert_eq!(value_range(whole, &whole[..]), Some(0..whole.len()));
        assert_eq!(value_range(whole, &whole[3..3]), None);
        let other = b"a.example".to_vec();
        assert_eq!(value_range(whole, &other), None);
        assert_eq!(value_range(&whole[..5], &whole[3..8]), None);
    }

    #[test]
    fn parsed_values_share_the_head_and_write_back_unchanged() {
        let text = "GET / HTTP/1.1\r\nHost: a.example\r\nX-Empty:\r\nX-Long: a b  c\r\n\r\n";
        let (h, n) = req(text).expect("ok").expect("complete");
        assert_eq!(n, text.len());
        assert_eq!(h.headers.get("host"), Some(&b"a.example"[..]));
        assert_eq!(h.headers.get("x-empty"), Some(&b""[..]));
        assert_eq!(h.headers.get("x-long"), Some(&b"a b  c"[..]));
        let mut out = Vec::new();
        write_request_head(&mut out, &h.method, &h.target, &h.headers);
        assert_eq!(
            out,
            b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Empty: \r\nX-Long: a b  c\r\n\r\n"
        );
        let mut fields = Headers::default();
        let borrowed = String::from("v");
        fields.push("A", &borrowed[..]);
        fields.push("B", b"w".to_vec());
        fields.set("A", Bytes::from_static(b"x"));
        assert_eq!(fields.get("a"), Some(&b"x"[..]));
        assert_eq!(fields.0.len(), 2);
    }

    #[test]
    fn same_bytes_compares_every_byte() {
        for n in 0..30usize {
            let a: Vec<u8> = (0..n as u8).map(|i| b'a' + i % 26).collect();
            assert!(same_bytes(&a, &a.clone()), "{n}");
            for k in 0..n {
                let mut b = a.clone();
                b[k] ^= 0x20;
                assert!(!same_bytes(&a, &b), "{n} {k}");
            }
            assert!(!same_bytes(&a, &a[..n.saturating_sub(1)]) || n == 0);
        }
    }
}
