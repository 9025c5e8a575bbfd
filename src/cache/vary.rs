//! Vary: the secondary cache key (RFC 9111 section 4.1).
//!
//! > When a cache receives a request that can be satisfied by a stored response and that
//! > stored response contains a Vary header field, the cache MUST NOT use that stored
//! > response without revalidation unless all the presented request header fields nominated
//! > by that Vary field value match those fields in the original request (i.e., the request
//! > that caused the cached response to be stored).
//!
//! > The header fields from two requests are defined to match if and only if those in the
//! > first request can be transformed to those in the second request by applying any of the
//! > following: adding or removing whitespace, where allowed in the header field's syntax;
//! > combining multiple header field lines with the same field name; normalizing both header
//! > field values in a way that is known to have identical semantics, according to the header
//! > field's specification (e.g., reordering field values when order is not significant;
//! > case-normalization, where values are defined to be case-insensitive).
//!
//! > If (after any normalization that might take place) a header field is absent from a
//! > request, it can only match another request if it is also absent there.
//!
//! > A stored response with a Vary header field value containing a member "*" always fails to
//! > match.

use crate::http::codec::{Headers, ResponseHead};

/// The request's normalised values for each field a response's Vary names, in Vary order.
/// `None` value: the field was absent from the request.
pub type SecondaryKey = Vec<(String, Option<String>)>;

/// Fields whose list members are case-insensitive tokens and whose order carries no meaning
/// (weights are explicit `q=` parameters), so members are lower-cased and sorted.
const UNORDERED_CASELESS: &[&str] = &["accept-encoding", "accept-charset"];
/// Fields whose values are case-insensitive (language tags), order kept.
const CASELESS: &[&str] = &["accept-language"];

/// Field names listed by Vary, lower-cased, duplicates removed; `None` for `Vary: *`.
pub fn vary_names(resp: &ResponseHead) -> Option<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    for n in resp.headers.tokens("vary") {
        if n == "*" {
            return None;
        }
        if !names.contains(&n) {
            names.push(n);
        }
    }
    Some(names)
}

/// One field's value as compared: lines combined, whitespace around list commas removed,
/// and for known fields case-folded (and member order dropped where it has no meaning).
pub fn normalise(headers: &Headers, name: &str) -> Option<String> {
    // A reverse route's cookie in the key (`cookie:NAME`, see `profile.rs`).
    if let Some(cookie) = name.strip_prefix(super::profile::COOKIE_PREFIX) {
        return super::profile::cookie(headers, cookie);
    }
    if !headers.contains(name) {
        return None;
    }
    let mut members: Vec<String> = headers
        .get_all(name)
        .flat_map(|v| v.split(|b| *b == b','))
        .map(|m| {
            let m = String::from_utf8_lossy(m);
            // Whitespace around `;` parameters is optional too.
            m.split(';').map(str::trim).collect::<Vec<_>>().join(";")
        })
        .filter(|m| !m.is_empty())
        .collect();
    if UNORDERED_CASELESS.contains(&name) || CASELESS.contains(&name) {
        for m in &mut members {
            m.make_ascii_lowercase();
        }
    }
    if UNORDERED_CASELESS.contains(&name) {
        members.sort();
    }
    Some(members.join(","))
}

/// The secondary key of a response for the request that fetched it; `None` for `Vary: *`.
pub fn secondary_key(req: &Headers, resp: &ResponseHead) -> Option<SecondaryKey> {
    let names = vary_names(resp)?;
    Some(
        names
            .into_iter()
            .map(|n| {
                let v = normalise(req, &n);
                (n, v)
            })
            .collect(),
    )
}

/// Whether a request matches the stored secondary key (every nominated field equal after
/// normalisation, absent only matching absent).
pub fn matches(stored: &SecondaryKey, req: &Headers) -> bool {
    stored
        .iter()
        .all(|(name, value)| normalise(req, name) == *value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testutil::{req, resp};

    fn key(rq: &[(&str, &str)], vary: &str) -> Option<SecondaryKey> {
        secondary_key(&req("GET", "/", rq).headers, &resp(200, &[("Vary", vary)]))
    }

    fn same(a: &[(&str, &str)], b: &[(&str, &str)], vary: &str) -> bool {
        let stored = key(a, vary).expect("not vary *");
        matches(&stored, &req("GET", "/", b).headers)
    }

    #[test]
    fn vary_star_never_matches() {
        assert_eq!(key(&[], "Accept, *"), None);
    }

    #[test]
    fn whitespace_and_line_combining_are_normalised() {
        assert!(same(
            &[("Accept", "text/html, application/json")],
            &[("Accept", "text/html,application/json")],
            "Accept"
        ));
        assert!(same(
            &[("Accept", "text/html"), ("Accept", "application/json")],
            &[("Accept", "text/html, application/json")],
            "accept"
        ));
        assert!(same(
            &[("Accept", "text/html; q=0.9")],
            &[("Accept", "text/html;q=0.9")],
            "Accept"
        ));
    }

    #[test]
    fn accept_encoding_is_case_and_order_insensitive() {
        assert!(same(
            &[("Accept-Encoding", "gzip, br")],
            &[("Accept-Encoding", "BR,Gzip")],
            "Accept-Encoding"
        ));
        assert!(!same(
            &[("Accept-Encoding", "gzip")],
            &[("Accept-Encoding", "br")],
            "Accept-Encoding"
        ));
    }

    #[test]
    fn other_fields_keep_case_and_order() {
        assert!(!same(
            &[("X-Tenant", "Acme")],
            &[("X-Tenant", "acme")],
            "X-Tenant"
        ));
        assert!(!same(
            &[("Accept", "a, b")],
            &[("Accept", "b, a")],
            "Accept"
        ));
    }

    #[test]
    fn absent_only_matches_absent() {
        assert!(same(&[], &[], "Accept-Language"));
        assert!(!same(&[], &[("Accept-Language", "en")], "Accept-Language"));
        assert!(!same(&[("Accept-Language", "en")], &[], "Accept-Language"));
        // Present but empty is not absent.
        assert!(!same(&[("Accept-Language", "")], &[], "Accept-Language"));
    }

    #[test]
    fn every_nominated_field_must_match() {
        let a = [("Accept", "x"), ("Accept-Language", "en")];
        assert!(same(&a, &a, "Accept, Accept-Language"));
        assert!(!same(
            &a,
            &[("Accept", "x"), ("Accept-Language", "de")],
            "Accept, Accept-Language"
        ));
        // Fields not nominated do not matter.
        assert!(same(
            &a,
            &[("Accept", "x"), ("Accept-Language", "en"), ("Cookie", "1")],
            "Accept, Accept-Language"
        ));
    }

    #[test]
    fn no_vary_matches_everything() {
        let stored = secondary_key(&Headers::default(), &resp(200, &[])).expect("no vary");
        assert!(stored.is_empty());
        assert!(matches(
            &stored,
            &req("GET", "/", &[("Accept", "x")]).headers
        ));
    }
}
