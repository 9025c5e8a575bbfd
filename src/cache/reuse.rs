//! Whether a stored response that matches a request may be sent without asking the origin
//! (RFC 9111 section 4): freshness against the request's own directives (section 5.2.1) and
//! the response's (section 5.2.2), plus the stale extensions of RFC 5861.

use super::directives::{CacheControl, Seconds};
use super::freshness::{stale_forbidden, within_stale_while_revalidate};
use crate::http::codec::Headers;

/// What to do with a stored response that matches the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Fresh and acceptable to the client: send it.
    Fresh,
    /// Stale, but the client said it accepts this much staleness (`max-stale`): send it.
    StaleAccepted,
    /// Stale within `stale-while-revalidate`: send it and refresh in the background.
    StaleWhileRevalidate,
    /// Must be validated with the origin before use (section 4.3).
    Revalidate,
}

/// The request's Cache-Control, with Pragma (section 5.4) honoured the way HTTP/1.0 caches
/// need it: `Pragma: no-cache` counts as `Cache-Control: no-cache` when the request has no
/// Cache-Control field. (RFC 9111 deprecates Pragma; treating it as no-cache is the
/// conservative reading, since HTTP/1.0 clients still send it to mean exactly that.)
pub fn request_cache_control(headers: &Headers) -> CacheControl {
    let mut cc = CacheControl::from_headers(headers);
    if cc.is_empty()
        && !headers.contains("cache-control")
        && headers.has_token("pragma", "no-cache")
    {
        cc = CacheControl::parse("no-cache");
    }
    cc
}

/// A delta-seconds request argument; an invalid one is read as 0, the most restrictive value
/// (section 4.2.1: "the most restrictive directive should be honored").
fn request_seconds(cc: &CacheControl, name: &str) -> Option<u64> {
    match cc.seconds(name) {
        Seconds::Absent => None,
        Seconds::Valid(n) => Some(n),
        Seconds::Invalid => Some(0),
    }
}

/// Section 4, "When presented with a request, a cache MUST NOT reuse a stored response
/// unless: ... the stored response does not contain the no-cache directive (Section 5.2.2.4),
/// unless it is successfully validated (Section 4.3), and the stored response is one of the
/// following: fresh (see Section 4.2), or allowed to be served stale (see Section 4.2.4), or
/// successfully validated (see Section 4.3)." Applied directive by directive:
///
/// - response `no-cache` (5.2.2.4): "the response MUST NOT be used to satisfy any other
///   request without forwarding it for validation". Qualified form treated as unqualified.
/// - request `no-cache` (5.2.1.4): "the client prefers a stored response not be used to
///   satisfy the request without successful validation on the origin server".
/// - request `max-age` (5.2.1.1): "the client prefers a response whose age is less than or
///   equal to the specified number of seconds".
/// - request `min-fresh` (5.2.1.3): "the client prefers a response whose freshness lifetime
///   is no less than its current age plus the specified time in seconds".
/// - fresh (4.2): `response_is_fresh = (freshness_lifetime > current_age)`.
/// - request `max-stale` (5.2.1.2): "the client will accept a response that has exceeded its
///   freshness lifetime"; unlimited without an argument. Never where section 4.2.4 forbids
///   stale (must-revalidate, proxy-revalidate, s-maxage, no-cache): 5.2.2.2 "a cache MUST
///   NOT use the response to satisfy subsequent requests without successful validation".
/// - `stale-while-revalidate` (RFC 5861 section 3), under the same prohibition.
pub fn reuse(req_cc: &CacheControl, resp_cc: &CacheControl, lifetime: u64, age: u64) -> Reuse {
    if resp_cc.has("no-cache") || req_cc.has("no-cache") {
        return Reuse::Revalidate;
    }
    if request_seconds(req_cc, "max-age").is_some_and(|max| age > max) {
        return Reuse::Revalidate;
    }
    if let Some(min) = request_seconds(req_cc, "min-fresh") {
        if lifetime < age.saturating_add(min) {
            return Reuse::Revalidate;
        }
    }
    if lifetime > age {
        return Reuse::Fresh;
    }
    let staleness = age - lifetime;
    if !stale_forbidden(resp_cc) {
        match req_cc.optional_seconds("max-stale") {
            Some(None) => return Reuse::StaleAccepted,
            Some(Some(n)) if staleness <= n => return Reuse::StaleAccepted,
            _ => {}
        }
    }
    if within_stale_while_revalidate(resp_cc, staleness) {
        return Reuse::StaleWhileRevalidate;
    }
    Reuse::Revalidate
}

/// Section 5.2.1.7: "The only-if-cached request directive indicates that the client only
/// wishes to obtain a stored response. Caches that honor this request directive SHOULD,
/// upon receiving it, respond with either a stored response consistent with the other
/// constraints of the request or a 504 (Gateway Timeout) status code."
pub fn only_if_cached(req_cc: &CacheControl) -> bool {
    req_cc.has("only-if-cached")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(req: &str, resp: &str, lifetime: u64, age: u64) -> Reuse {
        reuse(
            &CacheControl::parse(req),
            &CacheControl::parse(resp),
            lifetime,
            age,
        )
    }

    #[test]
    fn fresh_until_age_reaches_lifetime() {
        assert_eq!(r("", "max-age=60", 60, 59), Reuse::Fresh);
        assert_eq!(r("", "max-age=60", 60, 60), Reuse::Revalidate);
    }

    #[test]
    fn response_no_cache_always_revalidates() {
        assert_eq!(r("", "no-cache, max-age=60", 60, 0), Reuse::Revalidate);
        assert_eq!(
            r("", "no-cache=\"Set-Cookie\", max-age=60", 60, 0),
            Reuse::Revalidate
        );
        assert_eq!(r("max-stale", "no-cache", 0, 10), Reuse::Revalidate);
    }

    #[test]
    fn request_no_cache_and_pragma() {
        assert_eq!(r("no-cache", "max-age=60", 60, 0), Reuse::Revalidate);
        let mut h = Headers::default();
        h.push("Pragma", "no-cache");
        assert!(request_cache_control(&h).has("no-cache"));
        // Cache-Control present: Pragma is ignored.
        h.push("Cache-Control", "max-stale");
        assert!(!request_cache_control(&h).has("no-cache"));
    }

    #[test]
    fn request_max_age_limits_age() {
        assert_eq!(r("max-age=10", "max-age=60", 60, 10), Reuse::Fresh);
        assert_eq!(r("max-age=10", "max-age=60", 60, 11), Reuse::Revalidate);
        assert_eq!(r("max-age=0", "max-age=60", 60, 1), Reuse::Revalidate);
        assert_eq!(r("max-age=x", "max-age=60", 60, 1), Reuse::Revalidate);
    }

    #[test]
    fn request_min_fresh_needs_remaining_freshness() {
        assert_eq!(r("min-fresh=20", "max-age=60", 60, 40), Reuse::Fresh);
        assert_eq!(r("min-fresh=20", "max-age=60", 60, 41), Reuse::Revalidate);
    }

    #[test]
    fn request_max_stale_accepts_staleness() {
        assert_eq!(
            r("max-stale=30", "max-age=60", 60, 90),
            Reuse::StaleAccepted
        );
        assert_eq!(r("max-stale=30", "max-age=60", 60, 91), Reuse::Revalidate);
        assert_eq!(
            r("max-stale", "max-age=60", 60, 100_000),
            Reuse::StaleAccepted
        );
    }

    #[test]
    fn must_revalidate_proxy_revalidate_s_maxage_forbid_stale() {
        for resp in [
            "max-age=1, must-revalidate",
            "max-age=1, proxy-revalidate",
            "s-maxage=1",
        ] {
            assert_eq!(r("max-stale", resp, 1, 5), Reuse::Revalidate, "{resp}");
            assert_eq!(
                r("", &format!("{resp}, stale-while-revalidate=60"), 1, 5),
                Reuse::Revalidate,
                "{resp}"
            );
            assert_eq!(r("", resp, 1, 0), Reuse::Fresh, "{resp}");
        }
    }

    #[test]
    fn stale_while_revalidate_window() {
        assert_eq!(
            r("", "max-age=10, stale-while-revalidate=20", 10, 30),
            Reuse::StaleWhileRevalidate
        );
        assert_eq!(
            r("", "max-age=10, stale-while-revalidate=20", 10, 31),
            Reuse::Revalidate
        );
        // The client's own limits come first.
        assert_eq!(
            r("max-age=5", "max-age=10, stale-while-revalidate=20", 10, 15),
            Reuse::Revalidate
        );
    }

    #[test]
    fn only_if_cached_is_seen() {
        assert!(only_if_cached(&CacheControl::parse("only-if-cached")));
        assert!(!only_if_cached(&CacheControl::parse("max-stale")));
    }
}
