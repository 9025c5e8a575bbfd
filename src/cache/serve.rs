//! Turning a stored response into the response sent to one client: conditional requests
//! answered with 304, ranges with 206/416, HEAD without a body, Age and Cache-Status added.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::conditional::{self, Condition, RangeAnswer};
use super::object::{sets_length, FileBody, StoredResponse};
use super::status::CacheStatus;
use crate::http::codec::{Headers, RequestHead, ResponseHead, Version};

/// A response ready to send from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    head: Head,
    /// Empty for HEAD, 304 and 416, and when the body is in `file`.
    pub body: Bytes,
    /// The body (or the range of it) still in a disk-tier object file.
    pub file: Option<FileBody>,
    pub status: CacheStatus,
}

/// A served response's head.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Head {
    /// Made for this response (304, 206, 416, 504): complete.
    Made(ResponseHead),
    /// The stored head, sent whole: its serialized start ([`crate::cache::object::Parsed`]'s
    /// `wire`), then Content-Length (unless 204/304), Age and Cache-Status.
    /// The Cache-Status written is the `status` of the [`Served`].
    Stored {
        stored: Arc<StoredResponse>,
        age: u64,
    },
}

impl Served {
    /// Body bytes to send, wherever they are.
    pub fn body_len(&self) -> u64 {
        self.file.as_ref().map_or(self.body.len() as u64, |f| f.len)
    }

    /// The complete head: Content-Length, Age and Cache-Status are set.
    pub fn head(&self) -> Cow<'_, ResponseHead> {
        match &self.head {
            Head::Made(h) => Cow::Borrowed(h),
            Head::Stored { stored, age } => {
                let mut head = stored.head.clone();
                if sets_length(head.status) {
                    head.headers
                        .set("Content-Length", decimal(stored.body_len()));
                }
                head.headers.set("Age", decimal(*age));
                head.version = Version::Http11;
                if head.reason.is_empty() {
                    head.reason = crate::http::codec::reason(head.status).to_string();
                }
                self.status.append_to(&mut head.headers);
                Cow::Owned(head)
            }
        }
    }

    /// The status code sent.
    pub fn status_code(&self) -> u16 {
        match &self.head {
            Head::Made(h) => h.status,
            Head::Stored { stored, .. } => stored.head.status,
        }
    }

    /// The stored header fields this response sends, when it sends the stored head (then
    /// [`Served::write_stored_head`] writes it).
    pub fn stored_fields(&self) -> Option<&Headers> {
        match &self.head {
            Head::Made(_) => None,
            Head::Stored { stored, .. } => Some(&stored.head.headers),
        }
    }

    /// Writes the HTTP/1.1 head of a response that sends the stored head, with `extra`
    /// fields at its end: the same bytes as [`crate::http::codec::write_response_head`] of
    /// [`Served::head`] with `extra` pushed, without copying the stored fields one by one.
    /// `false` (nothing written) for a head made for this response.
    pub fn write_stored_head(&self, out: &mut Vec<u8>, extra: &Headers) -> bool {
        let Head::Stored { stored, age } = &self.head else {
            return false;
        };
        out.extend_from_slice(&stored.parsed().wire);
        if sets_length(stored.head.status) {
            out.extend_from_slice(b"Content-Length: ");
            crate::http::codec::push_decimal(out, stored.body_len());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Age: ");
        crate::http::codec::push_decimal(out, *age);
        out.extend_from_slice(b"\r\nCache-Status: ");
        self.status.write_value(out);
        out.extend_from_slice(b"\r\n");
        extra.write_to(out);
        out.extend_from_slice(b"\r\n");
        true
    }
}

/// Remaining freshness in seconds (negative when stale), for Cache-Status `ttl`.
pub fn ttl(stored: &StoredResponse, now: SystemTime) -> i64 {
    stored.parsed().lifetime as i64 - stored.current_age(now) as i64
}

/// Builds the client's response from a stored one.
///
/// Age: RFC 9111 section 5.1, "When a cache sends a stored response, it MUST include an Age
/// header field whose value is the current age" (section 4.2.3); replaces any stored Age.
pub fn respond(
    req: &RequestHead,
    stored: &Arc<StoredResponse>,
    now: SystemTime,
    status: CacheStatus,
) -> Served {
    respond_aged(req, stored, stored.current_age(now), status)
}

/// [`respond`] with the stored response's current age (section 4.2.3) already known (a
/// lookup computes it to judge freshness).
pub fn respond_aged(
    req: &RequestHead,
    stored: &Arc<StoredResponse>,
    age: u64,
    status: CacheStatus,
) -> Served {
    let len = stored.body_len();
    let made = |head: ResponseHead, body: Bytes, file: Option<FileBody>| {
        let mut head = head;
        let (body, file) = match req.method == "HEAD" {
            true => (Bytes::new(), None),
            false => (body, file),
        };
        head.headers.set("Age", decimal(age));
        head.version = Version::Http11;
        if head.reason.is_empty() {
            head.reason = crate::http::codec::reason(head.status).to_string();
        }
        status.append_to(&mut head.headers);
        Served {
            head: Head::Made(head),
            body,
            file,
            status: status.clone(),
        }
    };
    match conditional::evaluate(req, &stored.head, stored.response_time) {
        Condition::NotModified => made(
            conditional::not_modified_head(&stored.head),
            Bytes::new(),
            None,
        ),
        Condition::Full => match conditional::range(req, &stored.head, len) {
            RangeAnswer::Partial { first, last } => made(
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
            RangeAnswer::Unsatisfiable => made(
                conditional::unsatisfiable_head(&stored.head, len),
                Bytes::new(),
                None,
            ),
            RangeAnswer::Full => {
                let head_only = req.method == "HEAD";
                Served {
                    body: match head_only {
                        true => Bytes::new(),
                        false => stored.body.clone(),
                    },
                    file: match head_only {
                        true => None,
                        false => stored.file.clone(),
                    },
                    head: Head::Stored {
                        stored: stored.clone(),
                        age,
                    },
                    status,
                }
            }
        },
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
        head: Head::Made(ResponseHead {
            version: Version::Http11,
            status: 504,
            reason: "Gateway Timeout".into(),
            headers,
        }),
        body: Bytes::new(),
        file: None,
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testutil::{date, req, resp, t};

    fn stored() -> Arc<StoredResponse> {
        Arc::new(StoredResponse::new(
            resp(
                200,
                &[
                    ("Date", &date(0)),
                    ("Cache-Control", "max-age=100"),
                    ("ETag", "\"e\""),
                    ("Age", "3"),
                ],
            ),
            Bytes::from_static(b"0123456789"),
            t(0),
            t(0),
            vec![],
        ))
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
        assert_eq!(s.head().status, 200);
        assert_eq!(s.head().headers.get_str("age"), Some("13"));
        assert_eq!(s.head().headers.count("age"), 1);
        assert_eq!(s.head().headers.get_str("content-length"), Some("10"));
        assert_eq!(
            s.head().headers.get_str("cache-status"),
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
        assert_eq!(s.head().headers.get_str("content-length"), Some("10"));
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
        assert_eq!(s.head().status, 304);
        assert!(s.body.is_empty());
        assert!(!s.head().headers.contains("content-length"));
        assert_eq!(s.head().headers.get_str("etag"), Some("\"e\""));
    }

    #[test]
    fn range_from_stored_body() {
        let s = respond(
            &get(&[("Range", "bytes=2-4")]),
            &stored(),
            t(0),
            CacheStatus::hit(1),
        );
        assert_eq!(s.head().status, 206);
        assert_eq!(&s.body[..], b"234");
        assert_eq!(
            s.head().headers.get_str("content-range"),
            Some("bytes 2-4/10")
        );
        let s = respond(
            &get(&[("Range", "bytes=20-")]),
            &stored(),
            t(0),
            CacheStatus::hit(1),
        );
        assert_eq!(s.head().status, 416);
        assert!(s.body.is_empty());
    }

    #[test]
    fn stored_head_is_written_as_the_head_it_stands_for() {
        let mut named = resp(404, &[("Content-Type", "text/plain")]);
        named.reason = "Nope".into();
        named.version = Version::Http10;
        let heads = [
            stored().head.clone(),
            resp(
                200,
                &[
                    ("content-length", "99"),
                    ("AGE", "1"),
                    ("X-A", "1"),
                    ("Age", "2"),
                    ("Cache-Status", "up; hit"),
                ],
            ),
            resp(
                204,
                &[("Content-Length", "0"), ("Cache-Control", "max-age=5")],
            ),
            named,
        ];
        for head in heads {
            for method in ["GET", "HEAD"] {
                let stored = Arc::new(StoredResponse::new(
                    head.clone(),
                    Bytes::from_static(b"0123456789"),
                    t(0),
                    t(0),
                    vec![],
                ));
                let s = respond(
                    &req(method, "http://a.test/", &[]),
                    &stored,
                    t(7),
                    CacheStatus::hit(5).with_detail("x"),
                );
                let mut extra = Headers::default();
                extra.push("Via", "1.1 gh");
                extra.push("Connection", "close");
                let mut fast = Vec::new();
                assert!(s.write_stored_head(&mut fast, &extra));
                let mut h = s.head().into_owned();
                for x in &extra.0 {
                    h.headers.push(&x.name, x.value.clone());
                }
                let mut slow = Vec::new();
                crate::http::codec::write_response_head(&mut slow, h.status, &h.reason, &h.headers);
                assert_eq!(
                    String::from_utf8_lossy(&fast),
                    String::from_utf8_lossy(&slow)
                );
                assert_eq!(s.status_code(), head.status);
                assert_eq!(s.stored_fields(), Some(&head.headers));
            }
        }
        // A head made for the request (here a 206) is not the stored one.
        let s = respond(
            &get(&[("Range", "bytes=0-1")]),
            &stored(),
            t(0),
            CacheStatus::hit(1),
        );
        assert!(!s.write_stored_head(&mut Vec::new(), &Headers::default()));
        assert_eq!(s.stored_fields(), None);
        assert_eq!(s.status_code(), 206);
    }

    #[test]
    fn only_if_cached_is_504() {
        let s = only_if_cached_miss(CacheStatus::forward(crate::cache::Fwd::UriMiss));
        assert_eq!(s.head().status, 504);
        assert_eq!(
            s.head().headers.get_str("cache-status"),
            Some("Gatehouse; fwd=uri-miss")
        );
    }
}
