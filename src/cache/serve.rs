//! Turning a stored response into the response sent to one client: conditional requests
//! answered with 304, ranges with 206/416, HEAD without a body, Age and Cache-Status added.

use std::time::SystemTime;

use bytes::Bytes;

use super::conditional::{self, Condition, RangeAnswer};
use super::directives::CacheControl;
use super::freshness::{current_age, freshness_lifetime};
use super::object::{FileBody, StoredResponse};
use super::status::CacheStatus;
use crate::http::codec::{Headers, RequestHead, ResponseHead, Version};

/// A response ready to send from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// Complete head: Content-Length, Age and Cache-Status are set.
    pub head: ResponseHead,
    /// Empty for HEAD, 304 and 416, and when the body is in `file`.
    pub body: Bytes,
    /// The body (or the range of it) still in a disk-tier object file.
    pub file: Option<FileBody>,
    pub status: CacheStatus,
}

impl Served {
    /// Body bytes to send, wherever they are.
    pub fn body_len(&self) -> u64 {
        self.file.as_ref().map_or(self.body.len() as u64, |f| f.len)
    }
}

/// Remaining freshness in seconds (negative when stale), for Cache-Status `ttl`.
pub fn ttl(stored: &StoredResponse, now: SystemTime) -> i64 {
    let cc = CacheControl::from_headers(&stored.head.headers);
    let lifetime = freshness_lifetime(&stored.head, &cc, stored.response_time);
    let age = current_age(&stored.head, stored.request_time, stored.response_time, now);
    lifetime as i64 - age as i64
}

/// Builds the client's response from a stored one.
///
/// Age: RFC 9111 section 5.1, "When a cache sends a stored response, it MUST include an Age
/// header field whose value is the current age" (section 4.2.3); replaces any stored Age.
pub fn respond(
    req: &RequestHead,
    stored: &StoredResponse,
    now: SystemTime,
    status: CacheStatus,
) -> Served {
    let age = current_age(&stored.head, stored.request_time, stored.response_time, now);
    respond_aged(req, stored, age, status)
}

/// [`respond`] with the stored response's current age (section 4.2.3) already known (a
/// lookup computes it to judge freshness; a hit need not parse the dates twice).
pub fn respond_aged(
    req: &RequestHead,
    stored: &StoredResponse,
    age: u64,
    status: CacheStatus,
) -> Served {
    let len = stored.body_len();
    let (mut head, mut body, mut file) =
        match conditional::evaluate(req, &stored.head, stored.response_time) {
            Condition::NotModified => (
                conditional::not_modified_head(&stored.head),
                Bytes::new(),
                None,
            ),
            Condition::Full => match conditional::range(req, &stored.head, len) {
                RangeAnswer::Partial { first, last } => (
                    conditional::partial_head(&stored.head, first, last, len),
                    match stored.file {
                        Some(_) => Bytes::new(),
                        None => stored.body.slice(first as usize..=last as usize),
                    },
                    stored
                        .file
                        .as_ref()
                        .map(|f| f.slice(first, last - first + 1)),
                ),
                RangeAnswer::Unsatisfiable => (
                    conditional::unsatisfiable_head(&stored.head, len),
                    Bytes::new(),
                    None,
                ),
                RangeAnswer::Full => {
                    let mut head = stored.head.clone();
                    if head.status != 204 && head.status != 304 {
                        head.headers.set("Content-Length", decimal(len));
                    }
                    (head, stored.body.clone(), stored.file.clone())
                }
            },
        };
    if req.method == "HEAD" {
        body = Bytes::new();
        file = None;
    }
    head.headers.set("Age", decimal(age));
    head.version = Version::Http11;
    if head.reason.is_empty() {
        head.reason = crate::http::codec::reason(head.status).to_string();
    }
    status.append_to(&mut head.headers);
    Served {
        head,
        body,
        file,
        status,
    }
}

/// `n` in decimal, without the formatting machinery (every hit writes two numbers).
fn decimal(n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    crate::http::codec::push_decimal(&mut out, n);
    out
}

/// The 504 for `only-if-cached` without a usable stored response (RFC 9111 section
/// 5.2.1.7).
pub fn only_if_cached_miss(status: CacheStatus) -> Served {
    let mut headers = Headers::default();
    headers.push("Content-Length", "0");
    headers.push("Cache-Control", "no-store");
    status.append_to(&mut headers);
    Served {
        head: ResponseHead {
            version: Version::Http11,
            status: 504,
            reason: "Gateway Timeout".into(),
            headers,
        },
        body: Bytes::new(),
        file: None,
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testutil::{date, req, resp, t};

    fn stored() -> StoredResponse {
        StoredResponse {
            head: resp(
                200,
                &[
                    ("Date", &date(0)),
                    ("Cache-Control", "max-age=100"),
                    ("ETag", "\"e\""),
                    ("Age", "3"),
                ],
            ),
            body: Bytes::from_static(b"0123456789"),
            request_time: t(0),
            response_time: t(0),
            vary: vec![],
            stale_since: None,
            file: None,
        }
    }

    fn get(hs: &[(&str, &str)]) -> RequestHead {
        req("GET", "http://a.test/", hs)
    }

    #[test]
    fn full_hit_sets_age_length_and_status() {
        let s = respond(
            &get(&[]),
            &stored(),
            t(10),
            CacheStatus::hit(ttl(&stored(), t(10))),
        );
        assert_eq!(s.head.status, 200);
        assert_eq!(s.head.headers.get_str("age"), Some("13"));
        assert_eq!(s.head.headers.count("age"), 1);
        assert_eq!(s.head.headers.get_str("content-length"), Some("10"));
        assert_eq!(
            s.head.headers.get_str("cache-status"),
            Some("Gatehouse; hit; ttl=87")
        );
        assert_eq!(&s.body[..], b"0123456789");
    }

    #[test]
    fn head_has_no_body_but_full_length() {
        let s = respond(
            &req("HEAD", "http://a.test/", &[]),
            &stored(),
            t(0),
            CacheStatus::hit(1),
        );
        assert_eq!(s.head.headers.get_str("content-length"), Some("10"));
        assert!(s.body.is_empty());
    }

    #[test]
    fn conditional_request_gets_304() {
        let s = respond(
            &get(&[("If-None-Match", "\"e\"")]),
            &stored(),
            t(0),
            CacheStatus::hit(1),
        );
        assert_eq!(s.head.status, 304);
        assert!(s.body.is_empty());
        assert!(!s.head.headers.contains("content-length"));
        assert_eq!(s.head.headers.get_str("etag"), Some("\"e\""));
    }

    #[test]
    fn range_from_stored_body() {
        let s = respond(
            &get(&[("Range", "bytes=2-4")]),
            &stored(),
            t(0),
            CacheStatus::hit(1),
        );
        assert_eq!(s.head.status, 206);
        assert_eq!(&s.body[..], b"234");
        assert_eq!(
            s.head.headers.get_str("content-range"),
            Some("bytes 2-4/10")
        );
        let s = respond(
            &get(&[("Range", "bytes=20-")]),
            &stored(),
            t(0),
            CacheStatus::hit(1),
        );
        assert_eq!(s.head.status, 416);
        assert!(s.body.is_empty());
    }

    #[test]
    fn only_if_cached_is_504() {
        let s = only_if_cached_miss(CacheStatus::forward(crate::cache::Fwd::UriMiss));
        assert_eq!(s.head.status, 504);
        assert_eq!(
            s.head.headers.get_str("cache-status"),
            Some("Gatehouse; fwd=uri-miss")
        );
    }
}
