//! What is stored: per primary key, the variants (RFC 9111 section 4.1) with their heads,
//! bodies, times and secondary keys; and the checksummed byte form the disk tier writes.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::{BufMut, Bytes, BytesMut};

use super::freshness::{from_unix, to_unix};
use super::vary::{self, SecondaryKey};
use crate::http::codec::{Header, Headers, ResponseHead, Version};

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
}

impl StoredResponse {
    /// Bytes this response costs in memory (body plus a rough head size).
    pub fn weight(&self) -> u64 {
        let head: usize = self
            .head
            .headers
            .0
            .iter()
            .map(|h| h.name.len() + h.value.len() + 16)
            .sum();
        self.body.len() as u64 + head as u64 + 128
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
    let v2 = &buf[..4] == MAGIC;
    if !v2 && &buf[..4] != MAGIC_V1 {
        return Err(DecodeError::Magic);
    }
    let crc = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&buf[8..16]);
    let len = u64::from_be_bytes(len8);
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
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
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
            headers.push(Header { name, value });
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
        let body_len = usize::try_from(r.u64()?).map_err(|_| DecodeError::Malformed)?;
        let body = r.take(body_len)?;
        variants.push(Arc::new(StoredResponse {
            head: ResponseHead {
                version,
                status,
                reason,
                headers: Headers(headers),
            },
            body,
            request_time,
            response_time,
            vary,
            stale_since,
        }));
    }
    if r.pos != r.buf.len() {
        return Err(DecodeError::Malformed);
    }
    Ok(Entry { variants })
}

struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(DecodeError::Malformed)?;
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
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
        Arc::new(StoredResponse {
            head: resp(200, &[("Content-Type", "text/plain"), ("ETag", "\"1\"")]),
            body: Bytes::from(body.to_string()),
            request_time: t(1),
            response_time: t(2),
            vary,
            stale_since: None,
        })
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
