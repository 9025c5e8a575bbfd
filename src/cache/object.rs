//! What is stored: per primary key, the variants (RFC 9111 section 4.1) with their heads,
//! bodies, times and secondary keys; and the checksummed byte form the disk tier writes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{BufMut, Bytes, BytesMut};

use super::directives::CacheControl;
use super::freshness::{
    age_value, freshness_lifetime, from_unix, http_date, initial_age, resident_age, to_unix,
};
use super::vary::{self, SecondaryKey};
use crate::http::codec::{self, Header, Headers, ResponseHead, Version};

/// Most variants kept per URL; the oldest goes first.
pub const MAX_VARIANTS: usize = 8;

/// One stored response (RFC 9111 section 3): head as stored, complete body, the times
/// section 4.2.3 needs, and the request field values its Vary nominated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub head: ResponseHead,
    pub body: Bytes,
    pub request_time: SystemTime,
    pub response_time: SystemTime,
    pub vary: SecondaryKey,
    /// Soft purge: stale from this time on, whatever its freshness lifetime says (it may
    /// still be served stale where the rules allow, and revalidated).
    pub stale_since: Option<SystemTime>,
    /// The body still in the disk tier's object file (then `body` is empty): served from the
    /// file with `sendfile(2)` to plain TCP clients, read into memory for anything else.
    pub file: Option<FileBody>,
    /// What every hit reads from `head`, worked out once by [`StoredResponse::new`]. `head`
    /// and the times are not changed after that (make a new one instead).
    parsed: Parsed,
}

/// What the hits of a stored response need from its head, parsed once when it is stored (or
/// read back from disk) instead of on every hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The head's Cache-Control directives.
    pub cc: CacheControl,
    /// Its freshness lifetime (section 4.2.1) as read without a targeted field.
    pub lifetime: u64,
    /// Its `corrected_initial_age` (section 4.2.3, [`initial_age`]): a hit's current age is
    /// this plus the time since the response came in.
    pub initial_age: u64,
    /// The start of the head of a full response (see [`full_head_start`]).
    pub wire: Bytes,
}

impl Parsed {
    pub fn of(head: &ResponseHead, request_time: SystemTime, response_time: SystemTime) -> Parsed {
        let cc = CacheControl::from_headers(&head.headers);
        Parsed {
            lifetime: freshness_lifetime(head, &cc, response_time),
            cc,
            initial_age: initial_age(
                http_date(&head.headers, "date"),
                age_value(&head.headers),
                request_time,
                response_time,
            ),
            wire: full_head_start(head),
        }
    }
}

/// Whether a full response from this stored head gets its Content-Length set from the body
/// (every status but 204 and 304, which keep what was stored).
pub fn sets_length(status: u16) -> bool {
    status != 204 && status != 304
}

/// The serialized start of the HTTP/1.1 head a full response from `head` is sent with: the
/// status line (the standard reason phrase when none was stored) and the stored fields
/// without Age and, where [`sets_length`], Content-Length, in their order. A hit appends
/// Content-Length, Age and Cache-Status, as `serve::respond` sets them (at the end).
pub fn full_head_start(head: &ResponseHead) -> Bytes {
    let length = sets_length(head.status);
    let mut out = Vec::with_capacity(64 + head.headers.0.len() * 40);
    out.extend_from_slice(b"HTTP/1.1 ");
    codec::push_decimal(&mut out, u64::from(head.status));
    out.push(b' ');
    let reason = match head.reason.as_str() {
        "" => codec::reason(head.status),
        r => r,
    };
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in &head.headers.0 {
        if h.name.eq_ignore_ascii_case("age")
            || (length && h.name.eq_ignore_ascii_case("content-length"))
        {
            continue;
        }
        crate::http::codec::push_field(&mut out, h.name.as_bytes(), &h.value);
    }
    Bytes::from(out)
}

/// Body bytes at `offset..offset + len` of an open file: a disk-tier object file, or a
/// sealed memory file of the memory tier ([`crate::cache::sealed`]). Object files are never
/// written after they are renamed into place, memory files are sealed against writes, and an
/// open file outlives its deletion, so the bytes stay what was stored for as long as this is
/// held.
#[derive(Debug, Clone)]
pub struct FileBody {
    pub file: Arc<File>,
    pub offset: u64,
    pub len: u64,
    /// A sealed memory file (its pages are memory; reading it never waits for a disk).
    pub in_memory: bool,
}

impl PartialEq for FileBody {
    fn eq(&self, o: &FileBody) -> bool {
        Arc::ptr_eq(&self.file, &o.file) && self.offset == o.offset && self.len == o.len
    }
}

impl Eq for FileBody {}

impl FileBody {
    /// `len` bytes from `first` (relative to this body); the caller checked the bounds.
    pub fn slice(&self, first: u64, len: u64) -> FileBody {
        FileBody {
            file: self.file.clone(),
            offset: self.offset + first,
            len,
            in_memory: self.in_memory,
        }
    }

    /// The bytes, read into memory (blocking).
    pub fn read(&self) -> io::Result<Bytes> {
        let len = usize::try_from(self.len).map_err(|_| io::Error::other("body too large"))?;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, self.offset)?;
        Ok(Bytes::from(buf))
    }
}

impl StoredResponse {
    /// A stored response, not soft-purged, its body in memory; its head parsed once here.
    pub fn new(
        head: ResponseHead,
        body: Bytes,
        request_time: SystemTime,
        response_time: SystemTime,
        vary: SecondaryKey,
    ) -> StoredResponse {
        let parsed = Parsed::of(&head, request_time, response_time);
        StoredResponse {
            head,
            body,
            request_time,
            response_time,
            vary,
            stale_since: None,
            file: None,
            parsed,
        }
    }

    /// This response with another head (parsed again), times kept.
    pub fn with_head(&self, head: ResponseHead) -> StoredResponse {
        StoredResponse {
            parsed: Parsed::of(&head, self.request_time, self.response_time),
            head,
            ..self.clone()
        }
    }

    /// The head as parsed when this was made. Debug builds check that it still matches
    /// the head (nothing changed `head` or the times since).
    pub fn parsed(&self) -> &Parsed {
        debug_assert_eq!(
            self.parsed,
            Parsed::of(&self.head, self.request_time, self.response_time),
            "a stored head changed after it was parsed"
        );
        &self.parsed
    }

    /// Section 4.2.3: its current age at `now` ([`crate::cache::freshness::current_age`]).
    pub fn current_age(&self, now: SystemTime) -> u64 {
        resident_age(self.parsed().initial_age, self.response_time, now)
    }

    /// Bytes this response costs in memory (body plus a rough head size).
    pub fn weight(&self) -> u64 {
        let head: usize = self
            .head
            .headers
            .0
            .iter()
            .map(|h| h.name.len() + h.value.len() + 16)
            .sum();
        self.body_len() + head as u64 + self.parsed.wire.len() as u64 + 128
    }

    /// The body's length, wherever it is.
    pub fn body_len(&self) -> u64 {
        self.file.as_ref().map_or(self.body.len() as u64, |f| f.len)
    }

    /// This response with its body in memory (blocking read when it is in a file).
    pub fn loaded(&self) -> io::Result<StoredResponse> {
        let mut r = self.clone();
        if let Some(f) = r.file.take() {
            r.body = f.read()?;
        }
        Ok(r)
    }
}

/// All stored variants of one URL, most recent first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    pub variants: Vec<Arc<StoredResponse>>,
}

impl Entry {
    pub fn weight(&self) -> u64 {
        self.variants.iter().map(|v| v.weight()).sum()
    }

    /// Section 4.1: "If multiple selected responses are available ..., the cache will need to
    /// choose one to use. ... If such a mechanism is not available ..., the most recent
    /// response (as determined by the Date header field) is used". Variants are kept most
    /// recent first, so the first match wins.
    pub fn select(&self, req: &Headers) -> Option<&Arc<StoredResponse>> {
        self.select_where(req, |_| true)
    }

    /// [`Entry::select`] among the variants `usable` accepts.
    pub fn select_where(
        &self,
        req: &Headers,
        usable: impl Fn(&StoredResponse) -> bool,
    ) -> Option<&Arc<StoredResponse>> {
        self.variants
            .iter()
            .find(|v| usable(v) && vary::matches(&v.vary, req))
    }

    /// Whether some variant's body is in a file (a disk-tier file or a memory file).
    pub fn has_file_bodies(&self) -> bool {
        self.variants.iter().any(|v| v.file.is_some())
    }

    /// Whether some variant's body is still in a disk-tier file.
    pub fn has_disk_file_bodies(&self) -> bool {
        self.variants
            .iter()
            .any(|v| v.file.as_ref().is_some_and(|f| !f.in_memory))
    }

    /// This entry with every body in memory (blocking reads).
    pub fn loaded(&self) -> io::Result<Entry> {
        let variants = self
            .variants
            .iter()
            .map(|v| match v.file {
                Some(_) => v.loaded().map(Arc::new),
                None => Ok(v.clone()),
            })
            .collect::<io::Result<_>>()?;
        Ok(Entry { variants })
    }

    /// This entry with `new` added in front, replacing any variant with the same secondary
    /// key, and at most [`MAX_VARIANTS`] kept.
    pub fn with(&self, new: Arc<StoredResponse>) -> Entry {
        let mut variants = vec![new.clone()];
        variants.extend(self.variants.iter().filter(|v| v.vary != new.vary).cloned());
        variants.truncate(MAX_VARIANTS);
        Entry { variants }
    }
}

/// GHC2 adds each variant's soft-purge time; GHC1 objects (without it) are still read.
const MAGIC: &[u8; 4] = b"GHC2";
const MAGIC_V1: &[u8; 4] = b"GHC1";
/// Magic, CRC-32 and payload length.
pub const PREFIX_LEN: usize = 4 + 4 + 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a cache object (bad magic)")]
    Magic,
    #[error("cache object truncated")]
    Truncated,
    #[error("cache object checksum mismatch")]
    Checksum,
    #[error("cache object malformed")]
    Malformed,
}

/// The byte form: `GHC1`, CRC-32 of the payload, payload length, payload.
pub fn encode(entry: &Entry) -> Bytes {
    let mut p = BytesMut::with_capacity(entry.weight() as usize + 64);
    p.put_u16(entry.variants.len() as u16);
    for v in &entry.variants {
        p.put_u64(to_unix(v.request_time));
        p.put_u64(to_unix(v.response_time));
        p.put_u16(v.head.status);
        p.put_u8(matches!(v.head.version, Version::Http11) as u8);
        put_bytes(&mut p, v.head.reason.as_bytes());
        p.put_u16(v.head.headers.0.len() as u16);
        for h in &v.head.headers.0 {
            put_bytes(&mut p, h.name.as_bytes());
            put_bytes(&mut p, &h.value);
        }
        p.put_u16(v.vary.len() as u16);
        for (name, value) in &v.vary {
            put_bytes(&mut p, name.as_bytes());
            p.put_u8(value.is_some() as u8);
            put_bytes(&mut p, value.as_deref().unwrap_or("").as_bytes());
        }
        // 0: not soft-purged; else seconds since the epoch plus one.
        p.put_u64(v.stale_since.map_or(0, |t| to_unix(t).saturating_add(1)));
        p.put_u64(v.body.len() as u64);
        p.put_slice(&v.body);
    }
    let mut out = BytesMut::with_capacity(PREFIX_LEN + p.len());
    out.put_slice(MAGIC);
    out.put_u32(crc32fast::hash(&p));
    out.put_u64(p.len() as u64);
    out.put_slice(&p);
    out.freeze()
}

fn put_bytes(p: &mut BytesMut, b: &[u8]) {
    p.put_u32(b.len() as u32);
    p.put_slice(b);
}

/// Decodes bytes read back from disk. Anything short, altered or malformed is an error:
/// the caller treats it as a miss and removes the object.
pub fn decode(buf: Bytes) -> Result<Entry, DecodeError> {
    if buf.len() < PREFIX_LEN {
        return Err(DecodeError::Truncated);
    }
    let (v2, crc, len) = prefix(&buf)?;
    let payload = buf.slice(PREFIX_LEN..);
    if (payload.len() as u64) < len {
        return Err(DecodeError::Truncated);
    }
    if payload.len() as u64 != len {
        return Err(DecodeError::Malformed);
    }
    if crc32fast::hash(&payload) != crc {
        return Err(DecodeError::Checksum);
    }
    let end = payload.len() as u64;
    parse(
        Reader {
            buf: payload,
            base: 0,
            pos: 0,
            end,
            file: None,
        },
        v2,
    )
}

/// Bytes read from an object file per read when decoding it in place.
const WINDOW: usize = 64 * 1024;

/// Decodes the object file `file` of `size` bytes in place, WITHOUT checking its CRC (the
/// caller verified this very file before): heads are read, and each body of at least
/// `file_min` bytes is left in the file ([`StoredResponse::file`]), so a large object costs
/// one small read. Structure and lengths are still checked; `size` must be the file's
/// length (the caller's `fstat`), as a body left in the file is not read here.
pub fn decode_file(file: Arc<File>, size: u64, file_min: u64) -> Result<Entry, DecodeError> {
    let mut head = vec![0u8; PREFIX_LEN];
    if size < PREFIX_LEN as u64 || file.read_exact_at(&mut head, 0).is_err() {
        return Err(DecodeError::Truncated);
    }
    let (v2, _, len) = prefix(&head)?;
    if len != size - PREFIX_LEN as u64 {
        return Err(DecodeError::Malformed);
    }
    parse(
        Reader {
            buf: Bytes::new(),
            base: 0,
            pos: 0,
            end: len,
            file: Some((file, file_min)),
        },
        v2,
    )
}

/// Magic (whether GHC2), CRC and payload length from the first [`PREFIX_LEN`] bytes.
fn prefix(buf: &[u8]) -> Result<(bool, u32, u64), DecodeError> {
    let v2 = &buf[..4] == MAGIC;
    if !v2 && &buf[..4] != MAGIC_V1 {
        return Err(DecodeError::Magic);
    }
    let crc = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&buf[8..16]);
    Ok((v2, crc, u64::from_be_bytes(len8)))
}

fn parse(mut r: Reader, v2: bool) -> Result<Entry, DecodeError> {
    let n = r.u16()?;
    let mut variants = Vec::with_capacity(usize::from(n).min(MAX_VARIANTS));
    for _ in 0..n {
        let request_time = from_unix(r.u64()?);
        let response_time = from_unix(r.u64()?);
        let status = r.u16()?;
        let version = if r.u8()? == 1 {
            Version::Http11
        } else {
            Version::Http10
        };
        let reason = r.string()?;
        let mut headers = Vec::new();
        for _ in 0..r.u16()? {
            let name = r.string()?;
            let value = r.take_u32_len()?.to_vec();
            headers.push(Header {
                name: name.into(),
                value: value.into(),
            });
        }
        let mut vary = Vec::new();
        for _ in 0..r.u16()? {
            let name = r.string()?;
            let present = r.u8()? == 1;
            let value = r.string()?;
            vary.push((name, present.then_some(value)));
        }
        let stale_since = match v2 {
            true => r.u64()?.checked_sub(1).map(from_unix),
            false => None,
        };
        let body_len = r.u64()?;
        let (body, file) = r.body(body_len)?;
        let head = ResponseHead {
            version,
            status,
            reason,
            headers: Headers(headers),
        };
        let mut v = StoredResponse::new(head, body, request_time, response_time, vary);
        v.stale_since = stale_since;
        v.file = file;
        variants.push(Arc::new(v));
    }
    if r.pos != r.end {
        return Err(DecodeError::Malformed);
    }
    Ok(Entry { variants })
}

/// Reads the payload: from memory (`buf` is all of it), or from an object file through a
/// window (`buf` holds payload bytes `base..base + buf.len()`).
struct Reader {
    buf: Bytes,
    base: u64,
    pos: u64,
    end: u64,
    /// The file, and the body length from which bodies stay in it.
    file: Option<(Arc<File>, u64)>,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let end = self
            .pos
            .checked_add(n as u64)
            .filter(|e| *e <= self.end)
            .ok_or(DecodeError::Malformed)?;
        if end > self.base + self.buf.len() as u64 {
            let Some((file, _)) = &self.file else {
                return Err(DecodeError::Malformed);
            };
            let want = n.max(WINDOW).min((self.end - self.pos) as usize);
            let mut w = vec![0u8; want];
            file.read_exact_at(&mut w, PREFIX_LEN as u64 + self.pos)
                .map_err(|_| DecodeError::Truncated)?;
            self.buf = Bytes::from(w);
            self.base = self.pos;
        }
        let at = (self.pos - self.base) as usize;
        let out = self.buf.slice(at..at + n);
        self.pos = end;
        Ok(out)
    }

    /// A body of `n` bytes: in memory, or left in the file when large enough.
    fn body(&mut self, n: u64) -> Result<(Bytes, Option<FileBody>), DecodeError> {
        match &self.file {
            Some((file, min)) if n >= *min => {
                let end = self
                    .pos
                    .checked_add(n)
                    .filter(|e| *e <= self.end)
                    .ok_or(DecodeError::Malformed)?;
                let body = FileBody {
                    file: file.clone(),
                    offset: PREFIX_LEN as u64 + self.pos,
                    len: n,
                    in_memory: false,
                };
                self.pos = end;
                Ok((Bytes::new(), Some(body)))
            }
            _ => {
                let n = usize::try_from(n).map_err(|_| DecodeError::Malformed)?;
                Ok((self.take(n)?, None))
            }
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let b = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&b);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn take_u32_len(&mut self) -> Result<Bytes, DecodeError> {
        let n = u32::from_be_bytes(self.array()?);
        self.take(n as usize)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.take_u32_len()?.to_vec()).map_err(|_| DecodeError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testutil::{resp, t};

    pub(crate) fn sample(body: &str, vary: SecondaryKey) -> Arc<StoredResponse> {
        Arc::new(StoredResponse::new(
            resp(200, &[("Content-Type", "text/plain"), ("ETag", "\"1\"")]),
            Bytes::from(body.to_string()),
            t(1),
            t(2),
            vary,
        ))
    }

    #[test]
    fn round_trip() {
        let e = Entry::default()
            .with(sample("hello", vec![("accept".into(), Some("a".into()))]))
            .with(sample("world", vec![("accept".into(), None)]));
        let bytes = encode(&e);
        assert_eq!(decode(bytes).expect("decodes"), e);
        // A soft-purged variant keeps its time (whole seconds).
        let mut purged = (*sample("x", vec![])).clone();
        purged.stale_since = Some(t(5));
        let e = Entry::default().with(Arc::new(purged));
        assert_eq!(decode(encode(&e)).expect("decodes"), e);
    }

    #[test]
    fn version_1_objects_are_read() {
        // GHC1: the same layout without the soft-purge time.
        let e = Entry::default().with(sample("old", vec![]));
        let v2 = encode(&e);
        let payload = &v2[PREFIX_LEN..];
        let body_at = payload.len() - 3 - 8 - 8;
        let mut p1 = payload[..body_at].to_vec();
        p1.extend_from_slice(&payload[body_at + 8..]);
        let mut v1 = BytesMut::new();
        v1.put_slice(MAGIC_V1);
        v1.put_u32(crc32fast::hash(&p1));
        v1.put_u64(p1.len() as u64);
        v1.put_slice(&p1);
        assert_eq!(decode(v1.freeze()).expect("decodes"), e);
    }

    #[test]
    fn truncation_and_corruption_are_detected() {
        let bytes = encode(&Entry::default().with(sample("some body bytes", vec![])));
        for cut in [0, 3, PREFIX_LEN, bytes.len() - 1] {
            assert!(decode(bytes.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(decode(Bytes::from(flipped)), Err(DecodeError::Checksum));
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(decode(Bytes::from(longer)), Err(DecodeError::Malformed));
        assert_eq!(
            decode(Bytes::from_static(b"XXXX0000000000000000")),
            Err(DecodeError::Magic)
        );
    }

    fn in_file(bytes: &[u8]) -> Arc<File> {
        use std::io::Write;
        let mut f = tempfile::tempfile().expect("tempfile");
        f.write_all(bytes).expect("write");
        Arc::new(f)
    }

    #[test]
    fn decoded_in_place_leaves_large_bodies_in_the_file() {
        let big = |n: usize, seed: u8| {
            let body: String = (0..n)
                .map(|i| (b'a' + (i as u8 ^ seed) % 26) as char)
                .collect();
            body
        };
        let k = |v: &str| vec![("accept".to_string(), Some(v.to_string()))];
        // Heads after the first 64 KiB window, small and large bodies mixed.
        let e = Entry::default()
            .with(sample(&big(100_000, 1), k("a")))
            .with(sample("small", k("b")))
            .with(sample(&big(70_000, 2), k("c")));
        let bytes = encode(&e);
        let file = in_file(&bytes);
        let lazy = decode_file(file.clone(), bytes.len() as u64, 50_000).expect("decodes");
        let where_: Vec<bool> = lazy.variants.iter().map(|v| v.file.is_some()).collect();
        assert_eq!(where_, [true, false, true]);
        assert_eq!(lazy.variants[0].body_len(), 70_000);
        assert_eq!(lazy.loaded().expect("loaded"), e);
        // A file of another length than its prefix says, or cut short, is refused.
        assert!(decode_file(file, bytes.len() as u64 - 1, 50_000).is_err());
        let cut = in_file(&bytes[..bytes.len() - 10]);
        assert!(decode_file(cut, bytes.len() as u64 - 10, 50_000).is_err());
    }

    #[test]
    fn variants_replace_same_key_and_are_bounded() {
        let k = |v: &str| vec![("accept".to_string(), Some(v.to_string()))];
        let e = Entry::default()
            .with(sample("1", k("a")))
            .with(sample("2", k("b")))
            .with(sample("3", k("a")));
        assert_eq!(e.variants.len(), 2);
        assert_eq!(&e.variants[0].body[..], b"3");
        let mut e = Entry::default();
        for i in 0..20 {
            e = e.with(sample("x", k(&i.to_string())));
        }
        assert_eq!(e.variants.len(), MAX_VARIANTS);
    }

    #[test]
    fn select_picks_the_matching_variant() {
        let k = |v: &str| vec![("accept".to_string(), Some(v.to_string()))];
        let e = Entry::default()
            .with(sample("json", k("application/json")))
            .with(sample("html", k("text/html")));
        let mut h = Headers::default();
        h.push("Accept", "application/json");
        assert_eq!(&e.select(&h).expect("match").body[..], b"json");
        h.set("Accept", "image/png");
        assert!(e.select(&h).is_none());
    }

    #[test]
    fn mutated_bytes_never_panic_and_never_decode_wrongly() {
        let good = encode(
            &Entry::default().with(sample("body", vec![("accept".into(), Some("x".into()))])),
        );
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..5000 {
            let mut b = good.to_vec();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            let cut = (next() as usize) % (b.len() + 1);
            b.truncate(cut);
            let changed = b != good[..];
            // Any change is caught: by length, checksum or structure.
            assert!(!changed || decode(Bytes::from(b)).is_err());
        }
    }
}
