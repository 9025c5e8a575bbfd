//! Request targets a forward proxy accepts (RFC 9112 section 3.2): absolute-form `http://`
//! URIs, and authority-form for CONNECT.

use crate::connector::Host;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub host: Host,
    pub port: u16,
    /// The authority as it goes in the Host header (`name`, `name:8080`, `[::1]:8080`).
    pub authority: String,
    /// origin-form: path and query, never empty.
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("this is a proxy: requests need an absolute http:// URI")]
    NotAbsolute,
    #[error("only http:// is proxied this way; use CONNECT for https")]
    Scheme,
    #[error("invalid host or port in the request target")]
    Authority,
    #[error("invalid character in the request target")]
    Path,
}

/// Parses `host[:port]` with a default port; the port is required when `default` is `None`.
pub fn parse_authority(auth: &str, default: Option<u16>) -> Result<(Host, u16), TargetError> {
    if auth.is_empty() || auth.contains('@') {
        return Err(TargetError::Authority);
    }
    // The port follows the last ':' unless that ':' is inside an IPv6 literal.
    let (host, port) = match auth.rfind(':') {
        Some(i) if !auth[i..].contains(']') => (&auth[..i], Some(&auth[i + 1..])),
        _ => (auth, None),
    };
    let port = match port {
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse::<u16>().ok().filter(|p| *p != 0).ok_or(TargetError::Authority)?
        }
        Some("") if default.is_some() => default.ok_or(TargetError::Authority)?,
        Some(_) => return Err(TargetError::Authority),
        None => default.ok_or(TargetError::Authority)?,
    };
    let host = Host::parse(host).ok_or(TargetError::Authority)?;
    Ok((host, port))
}

/// Parses an absolute-form `http://authority/path?query` target.
pub fn parse_absolute(target: &str) -> Result<HttpTarget, TargetError> {
    let Some((scheme, rest)) = target.split_once("://") else {
        return Err(TargetError::NotAbsolute);
    };
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(if scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
            TargetError::Scheme
        } else {
            TargetError::NotAbsolute
        });
    }
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    if tail.contains('#') {
        return Err(TargetError::Path);
    }
    // httparse has already refused controls and spaces in the target.
    let (host, port) = parse_authority(authority, Some(80))?;
    let path = match tail {
        "" => "/".to_string(),
        t if t.starts_with('?') => format!("/{t}"),
        t => t.to_string(),
    };
    let authority = if port == 80 { host.to_string() } else { format!("{host}:{port}") };
    Ok(HttpTarget {
        host,
        port,
        authority,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_forms() {
        let t = parse_absolute("http://Example.com/a?b").expect("ok");
        assert_eq!(t.host, Host::Name("example.com".into()));
        assert_eq!((t.port, t.path.as_str(), t.authority.as_str()), (80, "/a?b", "example.com"));
        let t = parse_absolute("HTTP://127.0.0.1:8080").expect("ok");
        assert_eq!((t.port, t.path.as_str(), t.authority.as_str()), (8080, "/", "127.0.0.1:8080"));
        let t = parse_absolute("http://[::1]:81?q").expect("ok");
        assert_eq!((t.port, t.path.as_str(), t.authority.as_str()), (81, "/?q", "[::1]:81"));
        let t = parse_absolute("http://h:/x").expect("empty port means default");
        assert_eq!(t.port, 80);
    }

    #[test]
    fn rejected_targets() {
        assert_eq!(parse_absolute("/just/a/path"), Err(TargetError::NotAbsolute));
        assert_eq!(parse_absolute("https://a/"), Err(TargetError::Scheme));
        assert_eq!(parse_absolute("http://user:pw@a/"), Err(TargetError::Authority));
        assert_eq!(parse_absolute("http://a:99999/"), Err(TargetError::Authority));
        assert_eq!(parse_absolute("http://a:0/"), Err(TargetError::Authority));
        assert_eq!(parse_absolute("http:///x"), Err(TargetError::Authority));
        assert_eq!(parse_absolute("http://a/x#frag"), Err(TargetError::Path));
        assert_eq!(parse_absolute("http://[::1/"), Err(TargetError::Authority));
    }

    #[test]
    fn connect_authorities() {
        assert_eq!(parse_authority("a.b:443", None), Ok((Host::Name("a.b".into()), 443)));
        assert_eq!(
            parse_authority("[2001:db8::1]:8443", None),
            Ok((Host::Ip("2001:db8::1".parse().expect("ip")), 8443))
        );
        assert_eq!(parse_authority("a.b", None), Err(TargetError::Authority));
        assert_eq!(parse_authority("[::1]", None), Err(TargetError::Authority));
        assert_eq!(parse_authority("a.b:x", None), Err(TargetError::Authority));
    }
}
