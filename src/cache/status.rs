//! The Cache-Status response header field (RFC 9211).
//!
//! > Cache-Status = sf-list ... Each member of the list represents a cache that has handled
//! > the request. The first member of the list represents the cache closest to the origin
//! > server, and the last member of the list represents the cache closest to the user.
//!
//! So ours is appended after any the upstream sent.

use crate::http::codec::Headers;

/// The cache's name in Cache-Status (an sf-token).
pub const CACHE_NAME: &str = "Gatehouse";

/// RFC 9211 section 2.2: why the request went forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fwd {
    /// "The cache was configured to not handle this request."
    Bypass,
    /// "The request method's semantics require the request to be forwarded."
    Method,
    /// "The cache did not contain any responses that matched the request URI."
    UriMiss,
    /// "The cache contained a response that matched the request URI, but it could not select
    /// a response based upon this request's header fields and stored Vary header fields."
    VaryMiss,
    /// "The cache did not contain any responses that could be used to satisfy this request
    /// (to be used when an implementation cannot distinguish between uri-miss and vary-miss)."
    Miss,
    /// "The cache was able to select a fresh response for the request, but the request's
    /// semantics (e.g., Cache-Control request directives) did not allow its use."
    Request,
    /// "The cache was able to select a response for the request, but it was stale."
    Stale,
    /// "The cache was able to select a partial response for the request, but it did not
    /// contain all of the requested ranges (or the request was for the complete response)."
    Partial,
}

impl Fwd {
    pub fn as_str(self) -> &'static str {
        match self {
            Fwd::Bypass => "bypass",
            Fwd::Method => "method",
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Miss => "miss",
            Fwd::Request => "request",
            Fwd::Stale => "stale",
            Fwd::Partial => "partial",
        }
    }
}

/// One Cache-Status member, built up as the request is handled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStatus {
    /// "hit: The request was satisfied by the cache; that is, it was not forwarded, and the
    /// response was obtained from the cache."
    pub hit: bool,
    pub fwd: Option<Fwd>,
    /// "fwd-status: The status code that the next-hop server sent in response".
    pub fwd_status: Option<u16>,
    /// "ttl: The response's remaining freshness lifetime ... in seconds. ... MAY be negative,
    /// to indicate that the response is stale".
    pub ttl: Option<i64>,
    /// "stored: Whether the cache stored the response".
    pub stored: bool,
    /// "collapsed: Whether the request was collapsed with another request".
    pub collapsed: bool,
    /// "detail: Additional information not captured in other parameters".
    pub detail: Option<&'static str>,
}

impl CacheStatus {
    pub fn hit(ttl: i64) -> CacheStatus {
        CacheStatus {
            hit: true,
            ttl: Some(ttl),
            ..CacheStatus::default()
        }
    }

    pub fn forward(fwd: Fwd) -> CacheStatus {
        CacheStatus {
            fwd: Some(fwd),
            ..CacheStatus::default()
        }
    }

    pub fn with_detail(mut self, detail: &'static str) -> CacheStatus {
        self.detail = Some(detail);
        self
    }

    /// A short word for the access log: hit, stale, miss, revalidated, bypass...
    pub fn log_word(&self) -> &'static str {
        match (self.hit, self.fwd) {
            (true, _) if self.ttl.is_some_and(|t| t <= 0) => "stale",
            (true, _) => "hit",
            (false, Some(Fwd::Stale)) if self.fwd_status == Some(304) => "revalidated",
            (false, Some(Fwd::Stale)) => "expired",
            (false, Some(Fwd::Bypass)) | (false, Some(Fwd::Method)) => "bypass",
            (false, Some(Fwd::Request)) => "refresh",
            (false, _) => "miss",
        }
    }

    /// The member's text, e.g. `Gatehouse; hit; ttl=376` or `Gatehouse; fwd=uri-miss; stored`.
    pub fn value(&self) -> String {
        let mut out = String::with_capacity(48);
        self.write(&mut out);
        out
    }

    /// Appends [`CacheStatus::value`] to bytes being written (a hit's head).
    pub fn write_value(&self, out: &mut Vec<u8>) {
        self.write(out);
    }

    fn write(&self, out: &mut impl Text) {
        out.put(CACHE_NAME);
        if self.hit {
            out.put("; hit");
        }
        if let Some(fwd) = self.fwd {
            out.put("; fwd=");
            out.put(fwd.as_str());
        }
        if let Some(s) = self.fwd_status {
            out.put("; fwd-status=");
            put_decimal(out, u64::from(s));
        }
        if let Some(t) = self.ttl {
            // Every hit writes this: no formatting machinery.
            out.put("; ttl=");
            if t < 0 {
                out.put("-");
            }
            put_decimal(out, t.unsigned_abs());
        }
        if self.stored {
            out.put("; stored");
        }
        if self.collapsed {
            out.put("; collapsed");
        }
        if let Some(d) = self.detail {
            // An sf-string: our details never contain '"' or '\'.
            out.put("; detail=\"");
            out.put(d);
            out.put("\"");
        }
    }

    /// Appends this member to a response's Cache-Status list.
    pub fn append_to(&self, headers: &mut Headers) {
        headers.push("Cache-Status", self.value());
    }
}

/// Where a member's text is written: a `String`, or the bytes of a head.
trait Text {
    fn put(&mut self, s: &str);
}

impl Text for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
}

impl Text for Vec<u8> {
    fn put(&mut self, s: &str) {
        self.extend_from_slice(s.as_bytes());
    }
}

/// Appends `n` in decimal, as `Display` writes it.
fn put_decimal(out: &mut impl Text, n: u64) {
    let mut digits = [0u8; 20];
    let d = crate::http::codec::decimal_digits(n, &mut digits);
    // ASCII digits: always UTF-8.
    out.put(std::str::from_utf8(d).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_with_ttl() {
        assert_eq!(CacheStatus::hit(376).value(), "Gatehouse; hit; ttl=376");
        assert_eq!(CacheStatus::hit(-12).log_word(), "stale");
        assert_eq!(CacheStatus::hit(-12).value(), "Gatehouse; hit; ttl=-12");
        assert_eq!(CacheStatus::hit(0).value(), "Gatehouse; hit; ttl=0");
        let mut s = CacheStatus::forward(Fwd::Stale).with_detail("x");
        s.fwd_status = Some(304);
        s.ttl = Some(i64::MIN);
        assert_eq!(
            s.value(),
            "Gatehouse; fwd=stale; fwd-status=304; ttl=-9223372036854775808; detail=\"x\""
        );
    }

    #[test]
    fn written_value_is_the_value() {
        let mut s = CacheStatus::forward(Fwd::Stale).with_detail("x");
        s.fwd_status = Some(304);
        s.ttl = Some(-3);
        s.stored = true;
        s.collapsed = true;
        for status in [s, CacheStatus::hit(7), CacheStatus::default()] {
            let mut out = b"Cache-Status: ".to_vec();
            status.write_value(&mut out);
            assert_eq!(
                out,
                format!("Cache-Status: {}", status.value()).into_bytes()
            );
        }
    }

    #[test]
    fn forward_with_params() {
        let mut s = CacheStatus::forward(Fwd::Stale);
        s.fwd_status = Some(304);
        s.stored = true;
        s.collapsed = true;
        assert_eq!(
            s.value(),
            "Gatehouse; fwd=stale; fwd-status=304; stored; collapsed"
        );
        assert_eq!(s.log_word(), "revalidated");
        let s = CacheStatus::forward(Fwd::UriMiss).with_detail("no-store");
        assert_eq!(s.value(), "Gatehouse; fwd=uri-miss; detail=\"no-store\"");
        assert_eq!(s.log_word(), "miss");
    }

    #[test]
    fn appended_after_upstream_members() {
        let mut h = Headers::default();
        h.push("Cache-Status", "OriginCache; hit; ttl=5");
        CacheStatus::forward(Fwd::VaryMiss).append_to(&mut h);
        let all: Vec<_> = h.get_all("cache-status").collect();
        assert_eq!(
            all,
            [
                b"OriginCache; hit; ttl=5".as_slice(),
                b"Gatehouse; fwd=vary-miss".as_slice()
            ]
        );
    }
}
