//! Whether a response may be stored by a shared cache (RFC 9111 section 3), and what of it is
//! stored (section 3.1).

use super::directives::CacheControl;
use super::freshness::{has_explicit_expiration, HEURISTICALLY_CACHEABLE};
use crate::http::codec::{Headers, RequestHead, ResponseHead};

/// Why a response was not stored; shows in Cache-Status `detail` and in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStorable {
    Method,
    Status,
    RequestNoStore,
    ResponseNoStore,
    Private,
    Authorization,
    NoFreshness,
    VaryStar,
    SetCookie,
    /// A transfer coding other than chunked (e.g. `gzip`): the stored body would lose it.
    TransferCoding,
}

impl NotStorable {
    pub fn as_str(self) -> &'static str {
        match self {
            NotStorable::Method => "method",
            NotStorable::Status => "status",
            NotStorable::RequestNoStore => "request-no-store",
            NotStorable::ResponseNoStore => "no-store",
            NotStorable::Private => "private",
            NotStorable::Authorization => "authorization",
            NotStorable::NoFreshness => "no-freshness",
            NotStorable::VaryStar => "vary-star",
            NotStorable::SetCookie => "set-cookie",
            NotStorable::TransferCoding => "transfer-coding",
        }
    }
}

/// Statuses whose caching rules this cache implements (for `must-understand`, section
/// 5.2.2.3). 206 is absent: partial responses are never stored, ranges are served from a
/// complete stored body instead. 304 only ever updates a stored response (section 4.3.4).
pub const UNDERSTOOD: &[u16] = &[
    200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501,
];

/// RFC 9111 section 3, for a shared cache that stores only GET responses:
///
/// > A cache MUST NOT store a response to a request unless:
/// > - the request method is understood by the cache;
/// > - the response status code is final;
/// > - if the response status code is 206 or 304, or the must-understand cache directive is
/// >   present: the cache understands the response status code;
/// > - the no-store cache directive is not present in the response;
/// > - if the cache is shared: the private response directive is either not present or
/// >   allows a shared cache to store a modified response;
/// > - if the cache is shared: the Authorization header field is not present in the request
/// >   or a response directive is present that explicitly allows shared caching (3.5:
/// >   must-revalidate, public, s-maxage); and
/// > - the response contains at least one of: a public response directive; an Expires header
/// >   field; a max-age response directive; if the cache is shared: an s-maxage response
/// >   directive; a cache extension that allows it to be cached; or a status code that is
/// >   defined as heuristically cacheable.
///
/// And section 5.2.1.5: "The no-store request directive indicates that a cache MUST NOT
/// store any part of either this request or any response to it."
///
/// Section 5.2.2.3: a cache that understands the status code "SHOULD ignore the no-store
/// directive" when `must-understand` is present; a cache that does not MUST NOT store.
///
/// Choices stricter than the RFC (a cache is never obliged to store):
/// - `private` with field names ("MAY store the remainder") is not stored at all;
/// - `Vary: *` "always fails to match" (section 4.1), so storing it would be useless;
/// - a response with Set-Cookie is stored only when `public` or `s-maxage` says the origin
///   meant it for everyone: section 3.1 forbids storing it without the field, and serving one
///   user's cookie to another is the classic shared-cache leak.
/// - only GET responses are stored (HEAD is answered from a stored GET).
pub fn storable(req: &RequestHead, resp: &ResponseHead) -> Result<(), NotStorable> {
    let req_cc = CacheControl::from_headers(&req.headers);
    let cc = CacheControl::from_headers(&resp.headers);
    if req.method != "GET" {
        return Err(NotStorable::Method);
    }
    if resp.status < 200 || resp.status == 206 || resp.status == 304 {
        return Err(NotStorable::Status);
    }
    if req_cc.has("no-store") {
        return Err(NotStorable::RequestNoStore);
    }
    if cc.has("must-understand") {
        if !UNDERSTOOD.contains(&resp.status) {
            return Err(NotStorable::Status);
        }
    } else if cc.has("no-store") {
        return Err(NotStorable::ResponseNoStore);
    }
    if cc.has("private") {
        return Err(NotStorable::Private);
    }
    let explicitly_shared = cc.has("public") || cc.has("s-maxage");
    if req.headers.contains("authorization") && !(explicitly_shared || cc.has("must-revalidate")) {
        return Err(NotStorable::Authorization);
    }
    if !(cc.has("public")
        || has_explicit_expiration(resp, &cc)
        || HEURISTICALLY_CACHEABLE.contains(&resp.status))
    {
        return Err(NotStorable::NoFreshness);
    }
    if resp.headers.has_token("vary", "*") {
        return Err(NotStorable::VaryStar);
    }
    if resp.headers.contains("set-cookie") && !explicitly_shared {
        return Err(NotStorable::SetCookie);
    }
    // Transfer-Encoding is not stored (it is hop-by-hop), so a body still in another coding
    // would be served without it.
    if resp
        .headers
        .tokens("transfer-encoding")
        .iter()
        .any(|t| !t.eq_ignore_ascii_case("chunked"))
    {
        return Err(NotStorable::TransferCoding);
    }
    Ok(())
}

/// Header fields never stored (section 3.1): hop-by-hop fields and those the Connection field
/// lists (RFC 9110 section 7.6.1), and the proxy-specific Proxy-Authenticate,
/// Proxy-Authentication-Info and Proxy-Authorization. Transfer-Encoding goes too: the body is
/// stored decoded, and Content-Length is set from it when served.
pub const NOT_STORED: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authentication-info",
    "proxy-authorization",
];

/// The header fields as stored (section 3.1): "Caches MUST include all received response
/// header fields - including unrecognized ones - when storing a response", minus
/// [`NOT_STORED`] and the Connection-listed fields. A missing Date is added (RFC 9110 section
/// 6.6.1: "A recipient with a clock that receives a response message without a Date header
/// field MUST record the time it was received and append a corresponding Date header field").
pub fn headers_to_store(headers: &Headers, response_date: &str) -> Headers {
    let listed = headers.tokens("connection");
    let mut out = Headers(
        headers
            .0
            .iter()
            .filter(|h| {
                let n = h.name.to_ascii_lowercase();
                !NOT_STORED.contains(&n.as_str()) && !listed.contains(&n)
            })
            .cloned()
            .collect(),
    );
    if !out.contains("date") {
        out.push("Date", response_date.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testutil::{req, resp};

    fn check(rq: &[(&str, &str)], status: u16, rs: &[(&str, &str)]) -> Result<(), NotStorable> {
        storable(&req("GET", "http://a.test/", rq), &resp(status, rs))
    }

    #[test]
    fn plain_200_is_storable_by_default_status() {
        assert_eq!(check(&[], 200, &[]), Ok(()));
        assert_eq!(check(&[], 404, &[]), Ok(()));
    }

    #[test]
    fn only_get_is_stored() {
        let r = resp(200, &[("Cache-Control", "max-age=60")]);
        assert_eq!(
            storable(&req("HEAD", "http://a.test/", &[]), &r),
            Err(NotStorable::Method)
        );
        assert_eq!(
            storable(&req("POST", "http://a.test/", &[]), &r),
            Err(NotStorable::Method)
        );
    }

    #[test]
    fn partial_not_modified_and_interim_are_not_stored() {
        for s in [100, 206, 304] {
            assert_eq!(
                check(&[], s, &[("Cache-Control", "max-age=60")]),
                Err(NotStorable::Status)
            );
        }
    }

    #[test]
    fn status_not_cacheable_by_default_needs_explicit_freshness() {
        assert_eq!(check(&[], 302, &[]), Err(NotStorable::NoFreshness));
        assert_eq!(check(&[], 500, &[]), Err(NotStorable::NoFreshness));
        assert_eq!(check(&[], 302, &[("Cache-Control", "max-age=5")]), Ok(()));
        assert_eq!(check(&[], 302, &[("Expires", "0")]), Ok(()));
        assert_eq!(check(&[], 302, &[("Cache-Control", "public")]), Ok(()));
        assert_eq!(check(&[], 302, &[("Cache-Control", "s-maxage=5")]), Ok(()));
    }

    #[test]
    fn no_store_in_request_or_response() {
        assert_eq!(
            check(&[("Cache-Control", "no-store")], 200, &[]),
            Err(NotStorable::RequestNoStore)
        );
        assert_eq!(
            check(&[], 200, &[("Cache-Control", "max-age=9, no-store")]),
            Err(NotStorable::ResponseNoStore)
        );
        assert_eq!(
            check(&[], 200, &[("Cache-Control", "NO-STORE")]),
            Err(NotStorable::ResponseNoStore)
        );
    }

    #[test]
    fn must_understand_overrides_no_store_only_for_understood_status() {
        assert_eq!(
            check(
                &[],
                200,
                &[("Cache-Control", "must-understand, no-store, max-age=5")]
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &[],
                299,
                &[("Cache-Control", "must-understand, no-store, max-age=5")]
            ),
            Err(NotStorable::Status)
        );
    }

    #[test]
    fn private_is_never_stored_qualified_or_not() {
        assert_eq!(
            check(&[], 200, &[("Cache-Control", "private")]),
            Err(NotStorable::Private)
        );
        assert_eq!(
            check(
                &[],
                200,
                &[("Cache-Control", "private=\"X-User\", max-age=60")]
            ),
            Err(NotStorable::Private)
        );
    }

    #[test]
    fn authorization_needs_public_s_maxage_or_must_revalidate() {
        let auth = [("Authorization", "Basic eDp5")];
        assert_eq!(
            check(&auth, 200, &[("Cache-Control", "max-age=60")]),
            Err(NotStorable::Authorization)
        );
        assert_eq!(check(&auth, 200, &[("Cache-Control", "public")]), Ok(()));
        assert_eq!(
            check(&auth, 200, &[("Cache-Control", "s-maxage=60")]),
            Ok(())
        );
        assert_eq!(
            check(
                &auth,
                200,
                &[("Cache-Control", "must-revalidate, max-age=60")]
            ),
            Ok(())
        );
    }

    #[test]
    fn vary_star_and_set_cookie() {
        assert_eq!(
            check(&[], 200, &[("Vary", "Accept, *")]),
            Err(NotStorable::VaryStar)
        );
        assert_eq!(
            check(
                &[],
                200,
                &[("Set-Cookie", "s=1"), ("Cache-Control", "max-age=60")]
            ),
            Err(NotStorable::SetCookie)
        );
        assert_eq!(
            check(
                &[],
                200,
                &[
                    ("Set-Cookie", "s=1"),
                    ("Cache-Control", "public, max-age=60")
                ]
            ),
            Ok(())
        );
    }

    #[test]
    fn a_transfer_coding_other_than_chunked_is_not_stored() {
        let fresh = ("Cache-Control", "max-age=60");
        let te = |v| check(&[], 200, &[fresh, ("Transfer-Encoding", v)]);
        assert_eq!(te("chunked"), Ok(()));
        assert_eq!(te("gzip"), Err(NotStorable::TransferCoding));
        assert_eq!(te("gzip, chunked"), Err(NotStorable::TransferCoding));
    }

    #[test]
    fn no_cache_response_is_storable() {
        assert_eq!(check(&[], 200, &[("Cache-Control", "no-cache")]), Ok(()));
    }

    #[test]
    fn stored_headers_drop_hop_by_hop_and_add_date() {
        let r = resp(
            200,
            &[
                ("Connection", "close, X-Hop"),
                ("X-Hop", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Transfer-Encoding", "chunked"),
                ("Proxy-Authenticate", "Basic"),
                ("X-Unknown", "kept"),
            ],
        );
        let h = headers_to_store(&r.headers, "Mon, 01 Jan 2024 00:00:00 GMT");
        let names: Vec<_> = h.0.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["X-Unknown", "Date"]);
        let r = resp(200, &[("Date", "Sun, 31 Dec 2023 00:00:00 GMT")]);
        assert_eq!(
            headers_to_store(&r.headers, "x").get_str("date"),
            Some("Sun, 31 Dec 2023 00:00:00 GMT")
        );
    }
}
