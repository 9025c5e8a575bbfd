//! Answering a client's conditional and range requests from a stored response (RFC 9111
//! section 4.3.2, RFC 9110 sections 8.8.3, 13 and 14).

use std::time::SystemTime;

use super::freshness::http_date;
use crate::http::codec::{Headers, RequestHead, ResponseHead};

/// `entity-tag = [ weak ] opaque-tag` (RFC 9110 section 8.8.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityTag {
    pub weak: bool,
    /// Including the double quotes.
    pub opaque: String,
}

impl EntityTag {
    /// "Two entity tags are equivalent if their opaque-tags match character-by-character,
    /// regardless of either or both being tagged as weak." (section 8.8.3.2)
    pub fn weak_eq(&self, other: &EntityTag) -> bool {
        self.opaque == other.opaque
    }

    /// "Two entity tags are equivalent if both are not weak and their opaque-tags match
    /// character-by-character."
    pub fn strong_eq(&self, other: &EntityTag) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }
}

/// Parses a list of entity tags; `None` for `*`. Malformed members end the list.
pub fn parse_etags(value: &str) -> Option<Vec<EntityTag>> {
    if value.trim() == "*" {
        return None;
    }
    let mut out = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        let weak = rest.starts_with("W/");
        let body = if weak { &rest[2..] } else { rest };
        let Some(inner) = body.strip_prefix('"') else {
            break;
        };
        let Some(end) = inner.find('"') else { break };
        out.push(EntityTag {
            weak,
            opaque: format!("\"{}\"", &inner[..end]),
        });
        rest = &inner[end + 1..];
    }
    Some(out)
}

/// The stored response's ETag, if it has a well-formed one.
pub fn etag_of(headers: &Headers) -> Option<EntityTag> {
    parse_etags(headers.get_str("etag")?)?.into_iter().next()
}

/// Result of evaluating a client's conditional GET/HEAD against a stored response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// No condition, or the condition is true: send the stored response.
    Full,
    /// Send 304 Not Modified (built by [`not_modified_head`]).
    NotModified,
}

/// RFC 9111 section 4.3.2, handling a received validation request:
///
/// > A request containing an If-None-Match header field indicates that the client wants to
/// > validate one or more of its own stored responses in comparison to the stored response
/// > chosen by the cache. ... If a request contains an If-None-Match header field and it
/// > matches [weak comparison] the stored response, the cache ... 304.
/// > When a cache decides to evaluate an If-Modified-Since header field [no If-None-Match
/// > present, RFC 9110 section 13.1.3], ... A cache recipient SHOULD evaluate the conditions
/// > using the Last-Modified field value of the selected stored response if it has one;
/// > otherwise, the Date field value; otherwise the time the response was received.
///
/// Only for GET and HEAD; an invalid If-Modified-Since date is ignored (section 13.1.3).
/// Only for a stored 2xx: RFC 9110 section 13.2.1, "A server MUST ignore all received
/// preconditions if its response to the same request without those conditions ... would have
/// been a status code other than a 2xx (Successful) or 412".
pub fn evaluate(req: &RequestHead, stored: &ResponseHead, response_time: SystemTime) -> Condition {
    if (req.method != "GET" && req.method != "HEAD") || !(200..300).contains(&stored.status) {
        return Condition::Full;
    }
    let inm: Vec<&[u8]> = req.headers.get_all("if-none-match").collect();
    if !inm.is_empty() {
        let stored_tag = etag_of(&stored.headers);
        for line in inm {
            match parse_etags(&String::from_utf8_lossy(line)) {
                None => return Condition::NotModified,
                Some(tags) => {
                    if let Some(st) = &stored_tag {
                        if tags.iter().any(|t| t.weak_eq(st)) {
                            return Condition::NotModified;
                        }
                    }
                }
            }
        }
        return Condition::Full;
    }
    if let Some(since) = http_date(&req.headers, "if-modified-since") {
        let modified = http_date(&stored.headers, "last-modified")
            .or_else(|| http_date(&stored.headers, "date"))
            .unwrap_or(response_time);
        if modified <= since {
            return Condition::NotModified;
        }
    }
    Condition::Full
}

/// Whether the request carries preconditions meant for the origin (If-Match,
/// If-Unmodified-Since). Section 4.3.2: "A cache MUST NOT evaluate conditional header fields
/// that only apply to an origin server"; such requests go to the origin.
pub fn has_origin_preconditions(req: &RequestHead) -> bool {
    req.headers.contains("if-match") || req.headers.contains("if-unmodified-since")
}

/// Fields a 304 carries from the stored 200 (RFC 9110 section 15.4.5: "Content-Location,
/// Date, ETag, and Vary; Cache-Control and Expires").
const NOT_MODIFIED_FIELDS: &[&str] = &[
    "cache-control",
    "content-location",
    "date",
    "etag",
    "expires",
    "vary",
];

pub fn not_modified_head(stored: &ResponseHead) -> ResponseHead {
    let headers = stored
        .headers
        .0
        .iter()
        .filter(|h| NOT_MODIFIED_FIELDS.contains(&h.name.to_ascii_lowercase().as_str()))
        .cloned()
        .collect();
    ResponseHead {
        version: stored.version,
        status: 304,
        reason: "Not Modified".into(),
        headers: Headers(headers),
    }
}

/// How a Range request is answered from a complete stored body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No (usable) Range: the whole body, 200.
    Full,
    /// 206 with these inclusive byte offsets.
    Partial { first: u64, last: u64 },
    /// 416 Range Not Satisfiable.
    Unsatisfiable,
}

/// RFC 9110 section 14.2: "A server MAY ignore the Range header field." We answer a single
/// `bytes` range on GET and ignore anything else (multiple ranges, other units, bad syntax).
/// Section 13.1.5 If-Range: the range applies only if the validator matches — an entity-tag
/// by strong comparison, a date exactly equal to the stored Last-Modified.
pub fn range(req: &RequestHead, stored: &ResponseHead, len: u64) -> RangeAnswer {
    if req.method != "GET" || stored.status != 200 {
        return RangeAnswer::Full;
    }
    let Some(value) = req.headers.get_str("range") else {
        return RangeAnswer::Full;
    };
    if req.headers.count("range") > 1 {
        return RangeAnswer::Full;
    }
    if let Some(cond) = req.headers.get_str("if-range") {
        let cond = cond.trim();
        let ok = if cond.starts_with('"') || cond.starts_with("W/") {
            let stored_tag = etag_of(&stored.headers);
            let tags = parse_etags(cond).unwrap_or_default();
            matches!((tags.first(), stored_tag), (Some(t), Some(s)) if t.strong_eq(&s))
        } else {
            stored.headers.get_str("last-modified").map(str::trim) == Some(cond)
        };
        if !ok {
            return RangeAnswer::Full;
        }
    }
    parse_byte_range(value, len)
}

fn parse_byte_range(value: &str, len: u64) -> RangeAnswer {
    let Some((unit, spec)) = value.split_once('=') else {
        return RangeAnswer::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), num(a), num(b)) {
        // suffix-range: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || len == 0 {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial {
                    first: len.saturating_sub(n),
                    last: len - 1,
                }
            }
        }
        (false, Some(first), last) => {
            if !b.is_empty() && last.is_none_or(|l| l < first) {
                return RangeAnswer::Full; // invalid range-spec: ignored
            }
            if first >= len {
                return RangeAnswer::Unsatisfiable;
            }
            RangeAnswer::Partial {
                first,
                last: last.map_or(len - 1, |l| l.min(len - 1)),
            }
        }
        _ => RangeAnswer::Full,
    }
}

/// The 206 head: the stored head plus Content-Range and the part's Content-Length.
pub fn partial_head(stored: &ResponseHead, first: u64, last: u64, len: u64) -> ResponseHead {
    let mut head = stored.clone();
    head.status = 206;
    head.reason = "Partial Content".into();
    head.headers
        .set("Content-Range", format!("bytes {first}-{last}/{len}"));
    head.headers
        .set("Content-Length", (last - first + 1).to_string());
    head
}

/// The 416 head (RFC 9110 section 15.5.17: Content-Range `bytes */len`).
pub fn unsatisfiable_head(stored: &ResponseHead, len: u64) -> ResponseHead {
    let mut headers = Headers::default();
    headers.push("Content-Range", format!("bytes */{len}"));
    headers.push("Content-Length", "0");
    ResponseHead {
        version: stored.version,
        status: 416,
        reason: "Range Not Satisfiable".into(),
        headers,
    }
}

#[cfg(test)]
#[path = "conditional_tests.rs"]
mod tests;
