//! What a `hash` pool hashes, and where a request's value for it comes from.
//!
//! `client_ip` is all layer 4 knows; the reverse proxy can also hash a request header, a
//! cookie or the path. A request without the header or cookie falls back to the client
//! address (HAProxy falls back to round-robin; the address keeps such clients stable).

use crate::http::codec::Headers;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's IP address (source-address affinity).
    ClientIp,
    /// A request header's value (the first field of that name), e.g. `X-User-Id`.
    Header(String),
    /// A cookie's value.
    Cookie(String),
    /// The request path, without the query.
    Path,
}

impl HashKey {
    /// `"client_ip"` (or `"client-ip"`), `"header:NAME"`, `"cookie:NAME"` or `"path"`.
    pub fn parse(s: &str) -> Result<HashKey, String> {
        let named = |kind: &str, name: &str| {
            let name = name.trim();
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                Err(format!("{kind} name {name:?} is not a valid token"))
            } else {
                Ok(name.to_string())
            }
        };
        match s {
            "client_ip" | "client-ip" => Ok(HashKey::ClientIp),
            "path" => Ok(HashKey::Path),
            _ => match s.split_once(':') {
                Some(("header", n)) => named("header", n).map(HashKey::Header),
                Some(("cookie", n)) => named("cookie", n).map(HashKey::Cookie),
                _ => Err(
                    "expected \"client_ip\", \"header:NAME\", \"cookie:NAME\" or \"path\"".into(),
                ),
            },
        }
    }

    /// The form `parse` reads, for messages.
    pub fn describe(&self) -> String {
        match self {
            HashKey::ClientIp => "client_ip".into(),
            HashKey::Header(n) => format!("header:{n}"),
            HashKey::Cookie(n) => format!("cookie:{n}"),
            HashKey::Path => "path".into(),
        }
    }
}

/// RFC 9110 `tchar`: what a header or cookie name may hold.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The bytes a request hashes on under `key`; `None` for `ClientIp` or when the request
/// lacks the header or cookie (the caller then hashes the client address). `target` is the
/// request target (origin-form `/a/b?q`, or absolute-form).
pub fn hash_input<'a>(key: &HashKey, headers: &'a Headers, target: &'a str) -> Option<&'a [u8]> {
    match key {
        HashKey::ClientIp => None,
        HashKey::Header(name) => headers.get(name).map(trim_ascii).filter(|v| !v.is_empty()),
        HashKey::Cookie(name) => cookie(headers, name).filter(|v| !v.is_empty()),
        HashKey::Path => Some(path_of(target).as_bytes()),
    }
}

/// The path of a request target, without query or fragment.
fn path_of(target: &str) -> &str {
    let rest = match target.find("://") {
        // absolute-form: skip the authority.
        Some(i) => {
            let after = &target[i + 3..];
            after.find('/').map_or("/", |j| &after[j..])
        }
        None => target,
    };
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    &rest[..end]
}

fn trim_ascii(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// The value of cookie `name` from the request's `Cookie` fields (RFC 6265 section 4.2:
/// `name=value` pairs separated by `;`), the first one when it repeats; surrounding double
/// quotes are kept as they are part of the value.
pub fn cookie<'a>(headers: &'a Headers, name: &str) -> Option<&'a [u8]> {
    headers.get_all("cookie").find_map(|field| {
        field.split(|b| *b == b';').find_map(|pair| {
            let pair = trim_ascii(pair);
            let eq = pair.iter().position(|b| *b == b'=')?;
            (trim_ascii(&pair[..eq]) == name.as_bytes()).then(|| trim_ascii(&pair[eq + 1..]))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        let mut h = Headers::default();
        for (n, v) in pairs {
            h.push(n, v.as_bytes());
        }
        h
    }

    #[test]
    fn keys_parse_and_bad_ones_are_explained() {
        assert_eq!(HashKey::parse("client_ip"), Ok(HashKey::ClientIp));
        assert_eq!(HashKey::parse("client-ip"), Ok(HashKey::ClientIp));
        assert_eq!(HashKey::parse("path"), Ok(HashKey::Path));
        assert_eq!(
            HashKey::parse("header:X-User"),
            Ok(HashKey::Header("X-User".into()))
        );
        assert_eq!(
            HashKey::parse("cookie:sid"),
            Ok(HashKey::Cookie("sid".into()))
        );
        for bad in ["", "uri", "header:", "header:a b", "cookie:", "host:x"] {
            assert!(HashKey::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(HashKey::Header("X".into()).describe(), "header:X");
    }

    #[test]
    fn inputs_come_from_headers_cookies_and_the_path() {
        let h = headers(&[
            ("X-User", "  alice "),
            ("Cookie", "a=1; sid=xyz"),
            ("cookie", "sid=later"),
            ("X-Empty", ""),
        ]);
        let key = |k: &str| HashKey::parse(k).expect("key");
        assert_eq!(
            hash_input(&key("header:x-user"), &h, "/"),
            Some(&b"alice"[..])
        );
        assert_eq!(hash_input(&key("cookie:sid"), &h, "/"), Some(&b"xyz"[..]));
        assert_eq!(hash_input(&key("cookie:a"), &h, "/"), Some(&b"1"[..]));
        // Absent or empty: the caller falls back to the client address.
        assert_eq!(hash_input(&key("header:X-Other"), &h, "/"), None);
        assert_eq!(hash_input(&key("header:X-Empty"), &h, "/"), None);
        assert_eq!(hash_input(&key("cookie:none"), &h, "/"), None);
        assert_eq!(hash_input(&key("client_ip"), &h, "/"), None);
        let p = key("path");
        assert_eq!(hash_input(&p, &h, "/a/b?x=1"), Some(&b"/a/b"[..]));
        assert_eq!(hash_input(&p, &h, "/a#f"), Some(&b"/a"[..]));
        assert_eq!(
            hash_input(&p, &h, "http://h.test:80/c/d?q"),
            Some(&b"/c/d"[..])
        );
        assert_eq!(hash_input(&p, &h, "http://h.test"), Some(&b"/"[..]));
    }

    #[test]
    fn cookie_parsing_tolerates_odd_fields() {
        let h = headers(&[("Cookie", ";;=x; novalue; k = v ;sid=\"q\"")]);
        assert_eq!(cookie(&h, "k"), Some(&b"v"[..]));
        assert_eq!(cookie(&h, "sid"), Some(&b"\"q\""[..]));
        assert_eq!(cookie(&h, "novalue"), None);
        assert_eq!(cookie(&h, ""), Some(&b"x"[..]));
    }
}
