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
    plain_key(req).or_else(|| target_url(req).map(String::from))
}

/// The key of a target that is already in the `url` crate's normal form, built without
/// parsing it as a URL (no IDNA pass, no host or path rewriting: every hit builds its key).
/// `None` when the target is anything else (upper case, IPv6, IDNA, percent-encoded dots,
/// dot segments, a fragment, characters the parser would encode...): the caller then takes
/// [`target_url`], which gives the same key for everything this accepts.
pub fn plain_key(req: &RequestHead) -> Option<String> {
    let t = req.target.as_str();
    let (scheme, authority, rest) = if t.starts_with('/') {
        ("http://", req.headers.get_str("host")?.trim(), t)
    } else {
        let (scheme, after) = if let Some(a) = t.strip_prefix("http://") {
            ("http://", a)
        } else {
            ("https://", t.strip_prefix("https://")?)
        };
        let end = after
            .bytes()
            .position(|b| b == b'/' || b == b'?')
            .unwrap_or(after.len());
        (scheme, &after[..end], &after[end..])
    };
    let default_port = if scheme == "http://" { 80 } else { 443 };
    let (host, port) = match split_once_byte(authority, b':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    if !plain_host(host) {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) => {
            if p.is_empty() || p.len() > 5 || p.starts_with('0') {
                return None;
            }
            if !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u32 = p.parse().ok()?;
            if n > 65535 {
                return None;
            }
            (n != default_port).then_some(p)
        }
    };
    let (path, query) = match split_once_byte(rest, b'?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if !(path.is_empty() || plain_path(path)) || !query.is_none_or(plain_query) {
        return None;
    }
    let mut key = String::with_capacity(scheme.len() + authority.len() + rest.len() + 1);
    key.push_str(scheme);
    key.push_str(host);
    if let Some(p) = port {
        key.push(':');
        key.push_str(p);
    }
    if path.is_empty() {
        key.push('/');
    } else {
        key.push_str(path);
    }
    if let Some(q) = query {
        key.push('?');
        key.push_str(q);
    }
    Some(key)
}

/// `s` split at the first `c` (an ASCII byte), like `str::split_once` without the searcher.
fn split_once_byte(s: &str, c: u8) -> Option<(&str, &str)> {
    let i = s.bytes().position(|b| b == c)?;
    Some((&s[..i], &s[i + 1..]))
}

/// A host name the URL parser leaves as it is: lower-case ASCII letters, digits, inner
/// hyphens, non-empty labels, no IDNA (`xn--`) label; if the last label is numeric, a dotted
/// quad in its normal form. One pass over the labels, nothing allocated.
fn plain_host(host: &str) -> bool {
    let mut labels = 0usize;
    let mut octets = true;
    let mut last: &[u8] = &[];
    for b in host.as_bytes().split(|&c| c == b'.') {
        let ok = !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
            && b.get(2..4) != Some(b"--");
        if !ok {
            // Also an empty host: one empty label.
            return false;
        }
        labels += 1;
        octets = octets && normal_octet(b);
        last = b;
    }
    if last.starts_with(b"0x") {
        return false;
    }
    if !last.iter().all(u8::is_ascii_digit) {
        return true;
    }
    // An IPv4 address: only the form the parser writes back (four decimal octets).
    labels == 4 && octets
}

/// A decimal octet as the URL parser writes it: 0 to 255, no leading zero.
fn normal_octet(o: &[u8]) -> bool {
    o.len() <= 3
        && o.iter().all(u8::is_ascii_digit)
        && (o.len() == 1 || o[0] != b'0')
        && o.iter().fold(0u16, |n, &c| n * 10 + u16::from(c - b'0')) <= 255
}

/// Path bytes the parser neither encodes nor rewrites (no `\\`, no dot segments, no `%2e`).
fn plain_path(path: &str) -> bool {
    let b = path.as_bytes();
    b.first() == Some(&b'/')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&c))
        && !b.windows(2).any(|w| w == b"/.")
        && !b
            .windows(3)
            .any(|w| w[0] == b'%' && w[1] == b'2' && (w[2] | 0x20) == b'e')
}

/// Query bytes the parser leaves as they are (for `http` and `https`).
fn plain_query(query: &str) -> bool {
    query
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"-._~!$&()*+,;=:@/?%".contains(&c))
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

    /// Every key the fast path builds is the one the URL parser gives.
    #[test]
    fn plain_keys_match_the_url_parser() {
        let slow = |target: &str, hs: &[(&str, &str)]| {
            target_url(&req("GET", target, hs)).map(String::from)
        };
        let fast = |target: &str, hs: &[(&str, &str)]| plain_key(&req("GET", target, hs));
        for t in [
            "http://127.0.0.1:8080/small",
            "http://a.test/x?q=1&r=%41",
            "http://a.test",
            "http://a.test?q",
            "https://a.test:443/",
            "http://a.test:443/",
            "https://a-b.c9.test:8443/p/q;r=1/~s@t:u",
            "http://1a.test/",
            "http://a.123.test/x",
            "http://10.0.0.255/",
            "http://a.test:80/",
        ] {
            assert!(fast(t, &[]).is_some(), "{t} takes the fast path");
            assert_eq!(fast(t, &[]), slow(t, &[]), "{t}");
        }
        for t in [
            "http://A.test/",
            "http://a.test:0080/",
            "http://a.test:/",
            "http://a.test:99999/",
            "http://127.1/",
            "http://127.000.0.1/",
            "http://0x7f.0.0.1/",
            "http://256.0.0.1/",
            "http://1.2.3/",
            "http://xn--nxasmq6b.test/",
            "http://a..test/",
            "http://a.test./",
            "http://-a.test/",
            "http://[::1]/",
            "http://u@a.test/",
            "http://a.test/./x",
            "http://a.test/a/../b",
            "http://a.test/%2e%2E/b",
            "http://a.test/a\\b",
            "http://a.test/a b",
            "http://a.test/a#frag",
            "http://a.test/?q='",
            "http://a.test/{x}",
            "http://a_b.test/",
            "ftp://a.test/",
            "HTTP://a.test/",
        ] {
            assert_eq!(fast(t, &[]), None, "{t} goes the slow way");
        }
        for host in ["b.test", "b.test:8080", "B.test", "b.test:80", " b.test "] {
            let hs = [("Host", host)];
            if let Some(k) = fast("/p?x=1", &hs) {
                assert_eq!(Some(k), slow("/p?x=1", &hs), "{host}");
            }
        }
        assert_eq!(
            fast("/p", &[("Host", "b.test:8080")]).as_deref(),
            Some("http://b.test:8080/p")
        );
        // Random targets over an alphabet of the characters that matter.
        let alphabet = b"aZ09.-:/?#%2eE@_\\ '{}~x";
        let mut seed = 0x2545_f491_u64;
        for i in 0..30_000 {
            let mut t = String::from(["http://", "http://a.test/", "https://b.c:8"][i % 3]);
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let n = (seed >> 59) as usize + 1;
            for _ in 0..n {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                t.push(alphabet[(seed >> 33) as usize % alphabet.len()] as char);
            }
            if let Some(k) = fast(&t, &[]) {
                assert_eq!(Some(k), slow(&t, &[]), "{t}");
            }
        }
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
