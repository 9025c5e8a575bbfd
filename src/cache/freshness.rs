//! Freshness (RFC 9111 section 4.2): how long a stored response stays fresh, how old it is,
//! and the windows in which a stale one may still be served (RFC 5861). Whole seconds
//! throughout; every function takes the clock as an argument.

use std::time::{Duration, SystemTime};

use super::directives::{delta_seconds, CacheControl, Seconds, DELTA_SECONDS_MAX};
use crate::http::codec::{Headers, ResponseHead};

/// Status codes "defined as heuristically cacheable" (RFC 9110 section 15.1).
pub const HEURISTICALLY_CACHEABLE: &[u16] =
    &[200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// An HTTP-date field (IMF-fixdate, RFC 850 or asctime, RFC 9110 section 5.6.7).
pub fn http_date(headers: &Headers, name: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(headers.get_str(name)?.trim()).ok()
}

pub fn format_http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

fn secs_between(later: SystemTime, earlier: SystemTime) -> u64 {
    later.duration_since(earlier).map_or(0, |d| d.as_secs())
}

/// Section 5.1: `Age = delta-seconds`. "Although it is defined as a singleton header field,
/// a cache encountering a message with a list-based Age field value SHOULD use the first
/// member of the field value, discarding subsequent ones" (`Age: 7200, 0` is 7200; so is a
/// second Age line). "If the field value (after discarding additional members, as per
/// above) is invalid ... a cache SHOULD ignore it"; a missing or invalid Age counts as 0.
pub fn age_value(headers: &Headers) -> u64 {
    headers
        .get_str("age")
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .and_then(delta_seconds)
        .unwrap_or(0)
}

/// Section 4.2.3, Calculating Age:
///
/// ```text
/// apparent_age = max(0, response_time - date_value);
/// response_delay = response_time - request_time;
/// corrected_age_value = age_value + response_delay;
/// corrected_initial_age = max(apparent_age, corrected_age_value);
/// resident_time = now - response_time;
/// current_age = corrected_initial_age + resident_time;
/// ```
///
/// `date_value` falls back to `response_time` when Date is absent or invalid (RFC 9110 section
/// 6.6.1 has the recipient record the receive time as Date).
pub fn current_age(
    head: &ResponseHead,
    request_time: SystemTime,
    response_time: SystemTime,
    now: SystemTime,
) -> u64 {
    let initial = initial_age(
        http_date(&head.headers, "date"),
        age_value(&head.headers),
        request_time,
        response_time,
    );
    resident_age(initial, response_time, now)
}

/// The `corrected_initial_age` of [`current_age`], from a head's Date (`None`: absent or
/// invalid) and [`age_value`]: fixed once the response is in, so a stored response keeps it.
pub fn initial_age(
    date: Option<SystemTime>,
    age_value: u64,
    request_time: SystemTime,
    response_time: SystemTime,
) -> u64 {
    let date_value = date.unwrap_or(response_time);
    let apparent_age = secs_between(response_time, date_value);
    let response_delay = secs_between(response_time, request_time);
    let corrected_age_value = age_value.saturating_add(response_delay);
    apparent_age.max(corrected_age_value)
}

/// [`current_age`] from the [`initial_age`]: plus the resident time.
pub fn resident_age(initial_age: u64, response_time: SystemTime, now: SystemTime) -> u64 {
    let resident_time = secs_between(now, response_time);
    initial_age
        .saturating_add(resident_time)
        .min(DELTA_SECONDS_MAX)
}

/// Section 4.2.1, Calculating Freshness Lifetime, for a shared cache:
///
/// > - If the cache is shared and the s-maxage response directive is present, use its value, or
/// > - If the max-age response directive is present, use its value, or
/// > - If the Expires response header field is present, use its value minus the value of the
/// >   Date response header field (using the time the message was received if it is not
/// >   present, as per Section 6.6.1 of [HTTP]), or
/// > - Otherwise, no explicit expiration time is present in the response. A heuristic freshness
/// >   lifetime might be applicable; see Section 4.2.2.
///
/// Invalid or conflicting values give 0 ("consider responses that have invalid freshness
/// information ... to be stale"); so does an invalid Expires (section 5.3: "A cache recipient
/// MUST interpret invalid date formats, especially the value "0", as representing a time in
/// the past").
pub fn freshness_lifetime(
    head: &ResponseHead,
    cc: &CacheControl,
    response_time: SystemTime,
) -> u64 {
    for name in ["s-maxage", "max-age"] {
        match cc.seconds(name) {
            Seconds::Valid(n) => return n,
            Seconds::Invalid => return 0,
            Seconds::Absent => {}
        }
    }
    if head.headers.contains("expires") {
        // Section 5.3: more than one Expires is invalid.
        if head.headers.count("expires") > 1 {
            return 0;
        }
        let date = http_date(&head.headers, "date").unwrap_or(response_time);
        return match http_date(&head.headers, "expires") {
            Some(expires) => secs_between(expires, date),
            None => 0,
        };
    }
    heuristic_lifetime(head, cc, response_time).unwrap_or(0)
}

/// Section 4.2.2, Calculating Heuristic Freshness:
///
/// > A cache MUST NOT use heuristics to determine freshness when an explicit expiration time
/// > is present in the stored response. ... a cache MAY calculate a heuristic expiration time
/// > for any response [whose status is heuristically cacheable] ... or [which] has a public
/// > response directive ... If the response has a Last-Modified header field ..., caches are
/// > encouraged to use a heuristic expiration value that is no more than some fraction of the
/// > interval since that time. A typical setting of this fraction might be 10%.
///
/// `None` when no heuristic is allowed or possible (no Last-Modified).
pub fn heuristic_lifetime(
    head: &ResponseHead,
    cc: &CacheControl,
    response_time: SystemTime,
) -> Option<u64> {
    if cc.seconds("s-maxage") != Seconds::Absent
        || cc.seconds("max-age") != Seconds::Absent
        || head.headers.contains("expires")
    {
        return None;
    }
    if !HEURISTICALLY_CACHEABLE.contains(&head.status) && !cc.has("public") {
        return None;
    }
    let last_modified = http_date(&head.headers, "last-modified")?;
    let date = http_date(&head.headers, "date").unwrap_or(response_time);
    Some(secs_between(date, last_modified) / 10)
}

/// Whether the response carries explicit freshness (used by storability, section 3).
pub fn has_explicit_expiration(head: &ResponseHead, cc: &CacheControl) -> bool {
    head.headers.contains("expires") || cc.has("max-age") || cc.has("s-maxage")
}

/// Section 4.2.4, Serving Stale Responses:
///
/// > A cache MUST NOT generate a stale response if it is prohibited by an explicit in-protocol
/// > directive (e.g., by a no-cache response directive, a must-revalidate response directive,
/// > or an applicable s-maxage or proxy-revalidate response directive; see Section 5.2.2).
///
/// (s-maxage: section 5.2.2.10 "incorporates the semantics of the proxy-revalidate response
/// directive" for a shared cache.)
pub fn stale_forbidden(cc: &CacheControl) -> bool {
    cc.has("no-cache")
        || cc.has("must-revalidate")
        || cc.has("proxy-revalidate")
        || cc.has("s-maxage")
}

/// RFC 5861 section 3: "stale-while-revalidate ... indicates that caches MAY serve the
/// response in which it appears after it becomes stale, up to the indicated number of
/// seconds." True when `staleness` is inside that window and nothing forbids stale.
pub fn within_stale_while_revalidate(cc: &CacheControl, staleness: u64) -> bool {
    !stale_forbidden(cc)
        && matches!(cc.seconds("stale-while-revalidate"), Seconds::Valid(n) if staleness <= n)
}

/// RFC 5861 section 4: "The stale-if-error Cache-Control extension indicates that when an
/// error is encountered, a cached stale response MAY be used to satisfy the request,
/// regardless of other freshness information." It may appear on the response or on the
/// request; either window suffices. Section 4.2.4 of RFC 9111 still forbids it where an
/// explicit directive requires revalidation.
pub fn within_stale_if_error(resp: &CacheControl, req: &CacheControl, staleness: u64) -> bool {
    if stale_forbidden(resp) {
        return false;
    }
    [resp, req]
        .iter()
        .any(|cc| matches!(cc.seconds("stale-if-error"), Seconds::Valid(n) if staleness <= n))
}

/// Section 4.2.4: "A cache MUST NOT generate a stale response unless it is disconnected or
/// doing so is explicitly permitted by the client or origin server". When the origin cannot
/// be reached (or closes the connection before answering) the cache is disconnected, and may
/// serve stale unless a response directive forbids it (`no-cache`, `must-revalidate`,
/// `proxy-revalidate`, `s-maxage`: [`stale_forbidden`]) or the client asked for validation
/// (request `no-cache`).
pub fn stale_when_disconnected(resp: &CacheControl, req: &CacheControl) -> bool {
    !stale_forbidden(resp) && !req.has("no-cache")
}

/// Seconds since the epoch, for storage.
pub fn to_unix(t: SystemTime) -> u64 {
    secs_between(t, SystemTime::UNIX_EPOCH)
}

pub fn from_unix(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testutil::{date, resp, t};

    fn lifetime(r: &ResponseHead) -> u64 {
        freshness_lifetime(r, &CacheControl::from_headers(&r.headers), t(0))
    }

    #[test]
    fn s_maxage_beats_max_age_beats_expires() {
        let r = resp(
            200,
            &[
                ("Cache-Control", "max-age=60, s-maxage=30"),
                ("Expires", &date(500)),
            ],
        );
        assert_eq!(lifetime(&r), 30);
        let r = resp(
            200,
            &[("Cache-Control", "max-age=60"), ("Expires", &date(500))],
        );
        assert_eq!(lifetime(&r), 60);
        let r = resp(200, &[("Date", &date(0)), ("Expires", &date(500))]);
        assert_eq!(lifetime(&r), 500);
        // Expires before Date: already stale.
        let r = resp(200, &[("Date", &date(100)), ("Expires", &date(50))]);
        assert_eq!(lifetime(&r), 0);
    }

    #[test]
    fn expires_without_date_uses_response_time_and_invalid_is_past() {
        let r = resp(200, &[("Expires", &date(100))]);
        assert_eq!(lifetime(&r), 100);
        let r = resp(200, &[("Expires", "0"), ("Last-Modified", &date(-1000))]);
        assert_eq!(lifetime(&r), 0);
        let r = resp(200, &[("Expires", &date(100)), ("Expires", &date(100))]);
        assert_eq!(lifetime(&r), 0);
    }

    #[test]
    fn obsolete_date_formats_parse() {
        let r = resp(200, &[("Date", "Sunday, 06-Nov-94 08:49:37 GMT")]);
        assert!(http_date(&r.headers, "date").is_some());
        let r = resp(200, &[("Date", "Sun Nov  6 08:49:37 1994")]);
        assert!(http_date(&r.headers, "date").is_some());
    }

    #[test]
    fn invalid_max_age_is_stale_not_heuristic() {
        let r = resp(
            200,
            &[
                ("Cache-Control", "max-age=soon"),
                ("Last-Modified", &date(-1000)),
            ],
        );
        assert_eq!(lifetime(&r), 0);
    }

    #[test]
    fn heuristic_is_ten_percent_of_last_modified_age() {
        let r = resp(200, &[("Date", &date(0)), ("Last-Modified", &date(-1000))]);
        assert_eq!(lifetime(&r), 100);
        // 302 is not heuristically cacheable unless public.
        let r = resp(302, &[("Last-Modified", &date(-1000))]);
        assert_eq!(lifetime(&r), 0);
        let r = resp(
            302,
            &[("Last-Modified", &date(-1000)), ("Cache-Control", "public")],
        );
        assert_eq!(lifetime(&r), 100);
        // No Last-Modified: no heuristic.
        assert_eq!(lifetime(&resp(200, &[])), 0);
        // Explicit expiration present: no heuristic even if it is invalid.
        let r = resp(200, &[("Last-Modified", &date(-1000)), ("Expires", "soon")]);
        assert_eq!(heuristic_lifetime(&r, &CacheControl::default(), t(0)), None);
    }

    #[test]
    fn a_list_based_age_uses_its_first_member() {
        let age = |vs: &[&str]| {
            let mut h = Headers::default();
            for v in vs {
                h.push("Age", v.as_bytes());
            }
            age_value(&h)
        };
        assert_eq!(age(&["7200, 0"]), 7200);
        assert_eq!(age(&["7200", "0"]), 7200);
        assert_eq!(age(&[" 30 ,x"]), 30);
        assert_eq!(age(&["x, 30"]), 0, "an invalid first member is ignored");
        assert_eq!(age(&["-1"]), 0);
        assert_eq!(age(&[]), 0);
    }

    #[test]
    fn stale_when_disconnected_unless_a_directive_forbids_it() {
        let cc = CacheControl::parse;
        assert!(stale_when_disconnected(&cc("max-age=1"), &cc("")));
        for forbids in [
            "no-cache",
            "must-revalidate",
            "proxy-revalidate",
            "s-maxage=5",
        ] {
            assert!(!stale_when_disconnected(&cc(forbids), &cc("")), "{forbids}");
        }
        assert!(!stale_when_disconnected(&cc("max-age=1"), &cc("no-cache")));
    }

    #[test]
    fn age_follows_section_4_2_3() {
        // Date 10 s before the response arrived, request took 2 s, upstream Age 5.
        let r = resp(200, &[("Date", &date(90)), ("Age", "5")]);
        // apparent 10, corrected_age_value 5 + 2 = 7, initial 10, resident 30.
        assert_eq!(current_age(&r, t(98), t(100), t(130)), 40);
        let r = resp(200, &[("Date", &date(100)), ("Age", "50")]);
        assert_eq!(current_age(&r, t(98), t(100), t(100)), 52);
        // Date in the future: apparent age is 0, not negative.
        let r = resp(200, &[("Date", &date(500))]);
        assert_eq!(current_age(&r, t(100), t(100), t(110)), 10);
        // Invalid Age is ignored.
        let r = resp(200, &[("Age", "-3")]);
        assert_eq!(current_age(&r, t(100), t(100), t(100)), 0);
    }

    #[test]
    fn stale_forbidden_by_revalidation_directives() {
        for cc in [
            "no-cache",
            "must-revalidate",
            "proxy-revalidate",
            "s-maxage=5",
        ] {
            assert!(stale_forbidden(&CacheControl::parse(cc)), "{cc}");
        }
        assert!(!stale_forbidden(&CacheControl::parse("max-age=5, public")));
    }

    #[test]
    fn stale_while_revalidate_window() {
        let cc = CacheControl::parse("max-age=10, stale-while-revalidate=30");
        assert!(within_stale_while_revalidate(&cc, 30));
        assert!(!within_stale_while_revalidate(&cc, 31));
        let cc = CacheControl::parse("max-age=10, stale-while-revalidate=30, must-revalidate");
        assert!(!within_stale_while_revalidate(&cc, 1));
    }

    #[test]
    fn stale_if_error_window_from_response_or_request() {
        let none = CacheControl::default();
        let resp_cc = CacheControl::parse("max-age=10, stale-if-error=60");
        assert!(within_stale_if_error(&resp_cc, &none, 60));
        assert!(!within_stale_if_error(&resp_cc, &none, 61));
        let req_cc = CacheControl::parse("stale-if-error=100");
        assert!(within_stale_if_error(
            &CacheControl::parse("max-age=1"),
            &req_cc,
            99
        ));
        assert!(!within_stale_if_error(
            &CacheControl::parse("max-age=1, no-cache"),
            &req_cc,
            1
        ));
    }
}
