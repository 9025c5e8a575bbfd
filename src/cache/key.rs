//! The primary cache key (RFC 9111 section 2: "The primary cache key consists of the request
//! method and target URI") and invalidation (section 4.4).
//!
//! Only GET responses are stored, so the key is the target URI alone, normalised by the `url`
//! crate (WHATWG parsing: scheme and host lower-cased, default port dropped, empty path made
//! `/`, fragment removed). Requests with userinfo get no key and bypass the cache.

use url::Url;

use crate::http::codec::{RequestHead, ResponseHead};

/// The target URI of a request: absolute-form (a forward proxy's requests), or origin-form
/// plus Host (a reverse proxy's). Only `http` and `https`.
pub fn target_url(req: &RequestHead) -> Option<Url> {
    let url = if req.target.starts_with('/') {
        let host = req.headers.get_str("host")?.trim();
        if host.is_empty() {
            return None;
        }
        Url::parse(&format!("http://{host}{}", req.target)).ok()?
    } else {
        Url::parse(&req.target).ok()?
    };
    usable(url)
}

fn usable(mut url: Url) -> Option<Url> {
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return None;
    }
    if !url.username().is_empty() || url.password().is_some() {
        return None;
    }
    url.set_fragment(None);
    Some(url)
}

/// The primary key string for a request, or `None` when the target cannot be cached.
pub fn primary_key(req: &RequestHead) -> Option<String> {
    target_url(req).map(String::from)
}

/// The key for an absolute URL given by an operator (purge) or found in a header.
pub fn key_of_url(s: &str) -> Option<String> {
    usable(Url::parse(s.trim()).ok()?).map(String::from)
}

/// Methods RFC 9110 section 9.2.1 defines as safe; all others count as unsafe, including
/// unknown ones (section 4.4: "including methods whose safety is unknown").
pub fn is_safe_method(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE")
}

/// RFC 9111 section 4.4, Invalidating Stored Responses:
///
/// > Because unsafe request methods have the potential for changing state on the origin
/// > server, intervening caches are required to invalidate stored responses to keep their
/// > contents up to date. A cache MUST invalidate the target URI when it receives a non-error
/// > status code in response to an unsafe request method (including methods whose safety is
/// > unknown). A cache MAY invalidate other URIs when it receives a non-error status code in
/// > response to an unsafe request method. In particular, the URI(s) in the Location and
/// > Content-Location response header fields (if present) are candidates for invalidation;
/// > ... However, a cache MUST NOT trigger an invalidation under these conditions if the
/// > origin of the URI to be invalidated differs from that of the target URI. ...
/// > A "non-error response" is one with a 2xx (Successful) or 3xx (Redirection) status code.
///
/// Returns the keys to invalidate (target first), relative references resolved against the
/// target URI.
pub fn invalidated_keys(req: &RequestHead, resp: &ResponseHead) -> Vec<String> {
    if is_safe_method(&req.method) || !(200..400).contains(&resp.status) {
        return Vec::new();
    }
    let Some(target) = target_url(req) else {
        return Vec::new();
    };
    let mut keys = vec![String::from(target.clone())];
    for field in ["location", "content-location"] {
        let Some(value) = resp.headers.get_str(field) else {
            continue;
        };
        let Some(url) = target.join(value.trim()).ok().and_then(usable) else {
            continue;
        };
        if url.origin() == target.origin() {
            let k = String::from(url);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testutil::{req, resp};

    fn key(target: &str, hs: &[(&str, &str)]) -> Option<String> {
        primary_key(&req("GET", target, hs))
    }

    #[test]
    fn absolute_targets_are_normalised() {
        assert_eq!(
            key("http://A.Test:80/x?q=1#frag", &[]).as_deref(),
            Some("http://a.test/x?q=1")
        );
        assert_eq!(key("HTTP://a.test", &[]).as_deref(), Some("http://a.test/"));
        assert_eq!(
            key("http://a.test:8080/", &[]).as_deref(),
            Some("http://a.test:8080/")
        );
        assert_ne!(key("http://a.test/x", &[]), key("http://a.test/X", &[]));
    }

    #[test]
    fn origin_form_uses_host() {
        assert_eq!(
            key("/p", &[("Host", "b.test")]).as_deref(),
            Some("http://b.test/p")
        );
        assert_eq!(key("/p", &[]), None);
    }

    #[test]
    fn unusable_targets_have_no_key() {
        assert_eq!(key("ftp://a.test/", &[]), None);
        assert_eq!(key("http://user:pw@a.test/", &[]), None);
        assert_eq!(key("a.test:443", &[]), None);
        assert_eq!(key("http://", &[]), None);
    }

    #[test]
    fn unsafe_methods_invalidate_on_success_only() {
        let post = req("POST", "http://a.test/x", &[]);
        assert_eq!(
            invalidated_keys(&post, &resp(200, &[])),
            ["http://a.test/x"]
        );
        assert_eq!(
            invalidated_keys(&post, &resp(303, &[])),
            ["http://a.test/x"]
        );
        assert!(invalidated_keys(&post, &resp(404, &[])).is_empty());
        assert!(invalidated_keys(&post, &resp(500, &[])).is_empty());
        let get = req("GET", "http://a.test/x", &[]);
        assert!(invalidated_keys(&get, &resp(200, &[])).is_empty());
        let unknown = req("FROB", "http://a.test/x", &[]);
        assert_eq!(
            invalidated_keys(&unknown, &resp(204, &[])),
            ["http://a.test/x"]
        );
    }

    #[test]
    fn location_and_content_location_of_same_origin_only() {
        let put = req("PUT", "http://a.test/dir/x", &[]);
        let r = resp(201, &[("Location", "/dir/y"), ("Content-Location", "z")]);
        assert_eq!(
            invalidated_keys(&put, &r),
            [
                "http://a.test/dir/x",
                "http://a.test/dir/y",
                "http://a.test/dir/z"
            ]
        );
        let r = resp(
            201,
            &[
                ("Location", "http://evil.test/x"),
                ("Content-Location", "https://a.test/x"),
            ],
        );
        assert_eq!(invalidated_keys(&put, &r), ["http://a.test/dir/x"]);
        let r = resp(201, &[("Location", "http://A.TEST:80/dir/x")]);
        assert_eq!(invalidated_keys(&put, &r), ["http://a.test/dir/x"]);
    }
}
