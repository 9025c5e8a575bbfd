//! Validation with the origin (RFC 9111 section 4.3): the conditional request the cache
//! sends, and how a 304 updates the stored response.

use super::conditional::etag_of;
use super::storable::NOT_STORED;
use crate::http::codec::{Headers, ResponseHead};

/// Request fields the client may have sent that must not reach the origin on a validation
/// request: its own preconditions (the cache evaluates those itself against the validated
/// response, section 4.3.2) and Range (a full body is fetched so that it can be stored, and
/// the range is then answered from it).
const CLIENT_CONDITIONALS: &[&str] = &[
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "if-range",
    "range",
];

/// The header fields of the validation request (always sent as GET), built from the
/// client's request fields. Section 4.3.1:
///
/// > When generating a conditional request for validation, a cache ... MUST send the
/// > relevant entity tags (using If-Match, If-None-Match, or If-Range) if the entity tags
/// > were provided in the stored response(s) being validated. ... SHOULD send the
/// > Last-Modified value (using If-Modified-Since) if the request is not for a subrange, a
/// > single stored response is being validated, and that response contains a Last-Modified
/// > value.
pub fn revalidation_headers(client: &Headers, stored: &ResponseHead) -> Headers {
    let mut out = Headers(
        client
            .0
            .iter()
            .filter(|h| !CLIENT_CONDITIONALS.contains(&h.name.to_ascii_lowercase().as_str()))
            .cloned()
            .collect(),
    );
    if let Some(etag) = stored.headers.get("etag") {
        out.push("If-None-Match", etag.to_vec());
    }
    if let Some(lm) = stored.headers.get("last-modified") {
        out.push("If-Modified-Since", lm.to_vec());
    }
    out
}

/// Whether a 304 may update this stored response. Section 4.3.4:
///
/// > If the new response contains one or more strong validators, then each of them identifies
/// > a selected representation for update. All the stored responses with one of those same
/// > strong validators are identified for update. If none of the stored responses contain at
/// > least one of the same strong validators, then the cache MUST NOT use the new response to
/// > update any stored responses.
/// > If the new response contains no strong validators but does contain one or more weak
/// > validators, and those validators correspond to one of the cache's stored responses, then
/// > the most recent of those matching stored responses is identified for update.
/// > If the new response does not include any form of validator ..., and there is only one
/// > stored response, and that stored response also lacks a validator, then that stored
/// > response is identified for update.
///
/// Last-Modified is treated as a weak validator. One addition: the cache's conditional request
/// is always built from exactly one stored response (this one), so a 304 that carries no
/// validator at all can only be about it and updates it, whether or not it has an ETag or a
/// Last-Modified. RFC 9110 section 15.4.5 asks a 304 to repeat only ETag, and many servers
/// send neither; without this such a response could never be freshened and the request would
/// be sent again unconditionally.
pub fn selected_for_update(stored: &ResponseHead, not_modified: &ResponseHead) -> bool {
    let new_tag = etag_of(&not_modified.headers);
    let old_tag = etag_of(&stored.headers);
    let new_lm = not_modified.headers.get_str("last-modified").map(str::trim);
    let old_lm = stored.headers.get_str("last-modified").map(str::trim);
    match (&new_tag, &old_tag) {
        (Some(n), Some(o)) if !n.weak => n.strong_eq(o),
        (Some(_), None) => false,
        (Some(n), Some(o)) => n.weak_eq(o),
        (None, _) if new_lm.is_some() => new_lm == old_lm,
        (None, _) => true,
    }
}

/// Section 4.3.5: whether a 200 to a HEAD the cache sent may update the stored GET response
/// that request would have chosen. "if the stored response and HEAD response have matching
/// values for any received validator fields (ETag and Last-Modified) and, if the HEAD
/// response has a Content-Length header field, the value of Content-Length matches that of
/// the stored response, the cache SHOULD update the stored response ...; otherwise, the
/// cache SHOULD consider the stored response to be stale." `false`: consider it stale.
pub fn head_updates(stored: &ResponseHead, head: &ResponseHead) -> bool {
    let same = |name: &str| match head.headers.get_str(name) {
        None => true,
        Some(v) => stored.headers.get_str(name).map(str::trim) == Some(v.trim()),
    };
    head.status == 200 && same("etag") && same("last-modified") && same("content-length")
}

/// Fields of a 304 that never replace stored ones. Section 3.2: "the cache MUST add each
/// header field in the provided response to the stored response, replacing field values that
/// are already present, with the following exceptions: Header fields excepted from storage in
/// Section 3.1, Header fields that the cache's stored response depends upon, ..., Header
/// fields that are automatically processed and removed by the recipient, ..., and The
/// Content-Length header field." The stored body depends on Content-Encoding and
/// Content-Range; Age is recomputed from the new response time.
const NOT_UPDATED: &[&str] = &["content-length", "content-encoding", "content-range"];

/// Section 4.3.4: "the cache MUST ... use other header fields provided in the 304 (Not
/// Modified) response to replace all instances of the corresponding header fields in the
/// stored response" (with the section 3.2 exceptions above). Fields new in the 304 are added.
pub fn merge_not_modified(stored: &ResponseHead, not_modified: &ResponseHead) -> ResponseHead {
    let listed = not_modified.headers.tokens("connection");
    let skip = |name: &str| {
        let n = name.to_ascii_lowercase();
        NOT_STORED.contains(&n.as_str()) || NOT_UPDATED.contains(&n.as_str()) || listed.contains(&n)
    };
    let mut merged = stored.clone();
    let mut replaced: Vec<String> = Vec::new();
    for h in not_modified.headers.0.iter().filter(|h| !skip(&h.name)) {
        let lower = h.name.to_ascii_lowercase();
        if !replaced.contains(&lower) {
            merged.headers.remove(&lower);
            replaced.push(lower);
        }
        merged.headers.push(&h.name, h.value.clone());
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testutil::{date, req, resp};

    #[test]
    fn revalidation_sends_stored_validators_and_drops_client_ones() {
        let client = req(
            "GET",
            "http://a.test/",
            &[
                ("Accept", "x"),
                ("If-None-Match", "\"client\""),
                ("Range", "bytes=0-1"),
                ("If-Range", "\"c\""),
            ],
        );
        let stored = resp(200, &[("ETag", "W/\"v1\""), ("Last-Modified", &date(0))]);
        let h = revalidation_headers(&client.headers, &stored);
        assert_eq!(h.get_str("accept"), Some("x"));
        assert_eq!(h.get_str("if-none-match"), Some("W/\"v1\""));
        assert_eq!(h.get_str("if-modified-since"), Some(&*date(0)));
        assert_eq!(h.count("if-none-match"), 1);
        assert!(!h.contains("range") && !h.contains("if-range"));
    }

    #[test]
    fn no_validators_stored_means_no_conditionals() {
        let h = revalidation_headers(&Headers::default(), &resp(200, &[]));
        assert!(h.0.is_empty());
    }

    #[test]
    fn strong_validator_must_match_exactly() {
        let stored = resp(200, &[("ETag", "\"v1\"")]);
        assert!(selected_for_update(
            &stored,
            &resp(304, &[("ETag", "\"v1\"")])
        ));
        assert!(!selected_for_update(
            &stored,
            &resp(304, &[("ETag", "\"v2\"")])
        ));
        let weak_stored = resp(200, &[("ETag", "W/\"v1\"")]);
        assert!(!selected_for_update(
            &weak_stored,
            &resp(304, &[("ETag", "\"v1\"")])
        ));
    }

    #[test]
    fn weak_validator_matches_weakly() {
        let stored = resp(200, &[("ETag", "\"v1\"")]);
        assert!(selected_for_update(
            &stored,
            &resp(304, &[("ETag", "W/\"v1\"")])
        ));
        assert!(!selected_for_update(
            &resp(200, &[]),
            &resp(304, &[("ETag", "W/\"v1\"")])
        ));
    }

    #[test]
    fn last_modified_and_no_validators() {
        let stored = resp(200, &[("Last-Modified", &date(0))]);
        assert!(selected_for_update(
            &stored,
            &resp(304, &[("Last-Modified", &date(0))])
        ));
        assert!(!selected_for_update(
            &stored,
            &resp(304, &[("Last-Modified", &date(5))])
        ));
        assert!(selected_for_update(&stored, &resp(304, &[])));
        assert!(selected_for_update(&resp(200, &[]), &resp(304, &[])));
        // Our conditional request named exactly one stored response: a 304 without any
        // validator is about that one, ETag or not.
        assert!(selected_for_update(
            &resp(200, &[("ETag", "\"v1\"")]),
            &resp(304, &[])
        ));
    }

    #[test]
    fn a_head_response_updates_only_a_matching_stored_get() {
        let stored = resp(
            200,
            &[
                ("ETag", "\"v1\""),
                ("Content-Length", "5"),
                ("Last-Modified", &date(0)),
            ],
        );
        let head = |hs: &[(&str, &str)]| resp(200, hs);
        assert!(head_updates(
            &stored,
            &head(&[("Cache-Control", "max-age=9")])
        ));
        assert!(head_updates(
            &stored,
            &head(&[("ETag", "\"v1\""), ("Content-Length", "5")])
        ));
        assert!(!head_updates(&stored, &head(&[("ETag", "\"v2\"")])));
        assert!(!head_updates(&stored, &head(&[("Content-Length", "6")])));
        assert!(!head_updates(
            &stored,
            &head(&[("Last-Modified", &date(9))])
        ));
        assert!(!head_updates(&stored, &resp(404, &[])));
    }

    #[test]
    fn merge_replaces_all_instances_and_keeps_body_fields() {
        let stored = resp(
            200,
            &[
                ("Cache-Control", "max-age=10"),
                ("X-A", "1"),
                ("X-A", "2"),
                ("Content-Length", "5"),
                ("Content-Encoding", "gzip"),
                ("Date", &date(0)),
            ],
        );
        let nm = resp(
            304,
            &[
                ("Cache-Control", "max-age=60"),
                ("X-A", "3"),
                ("Content-Length", "0"),
                ("Content-Encoding", "br"),
                ("Connection", "X-Hop"),
                ("X-Hop", "1"),
                ("Date", &date(100)),
                ("X-New", "n"),
            ],
        );
        let m = merge_not_modified(&stored, &nm);
        assert_eq!(m.status, 200);
        assert_eq!(m.headers.get_str("cache-control"), Some("max-age=60"));
        assert_eq!(
            m.headers.get_all("x-a").collect::<Vec<_>>(),
            [b"3".as_slice()]
        );
        assert_eq!(m.headers.get_str("content-length"), Some("5"));
        assert_eq!(m.headers.get_str("content-encoding"), Some("gzip"));
        assert_eq!(m.headers.get_str("date"), Some(&*date(100)));
        assert_eq!(m.headers.get_str("x-new"), Some("n"));
        assert!(!m.headers.contains("x-hop") && !m.headers.contains("connection"));
    }
}
