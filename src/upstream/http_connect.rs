//! The client side of an HTTP CONNECT tunnel (RFC 9110 section 9.3.6) to a parent proxy, and
//! its `Proxy-Authorization` (RFC 9110 section 11.7.2, Basic per RFC 7617). No I/O here.

use base64::Engine as _;

use crate::connector::Host;
use crate::http::codec::{self, HeadError, ResponseHead};
use crate::policy::config::ParentSpec;

/// Most bytes of a parent's response head we read before giving up.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Interim (1xx) responses skipped before the final one.
const MAX_INTERIM: usize = 8;

/// The `Proxy-Authorization` value for a parent with credentials: `Basic base64(user:pass)`.
///
/// The lead's forward proxy sends it on absolute-form requests to an HTTP parent. The value
/// holds the password: never log it.
pub fn proxy_authorization(parent: &ParentSpec) -> Option<String> {
    let (user, password) = (parent.username.as_ref()?, parent.password.as_ref()?);
    let raw = format!("{user}:{}", password.expose());
    Some(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
}

/// `CONNECT host:port HTTP/1.1` with `Host` and, when the parent has credentials,
/// `Proxy-Authorization`. IPv6 addresses are bracketed (`Host`'s display form).
pub fn encode_connect(parent: &ParentSpec, host: &Host, port: u16) -> Vec<u8> {
    let authority = format!("{host}:{port}");
    let mut out = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(auth) = proxy_authorization(parent) {
        out.push_str("Proxy-Authorization: ");
        out.push_str(&auth);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// What the bytes so far say about the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectAnswer {
    /// Read more.
    Incomplete,
    /// 2xx: the tunnel is open; tunnel bytes start at this offset.
    Open { head_len: usize },
    /// The parent refused; `status` is its final status.
    Refused { head: ResponseHead },
}

/// Reads the parent's answer from the start of `buf`: skips up to [`MAX_INTERIM`] 1xx heads,
/// then the final head decides. A 2xx to CONNECT has no body (RFC 9110 section 9.3.6).
pub fn decode_answer(buf: &[u8]) -> Result<ConnectAnswer, HeadError> {
    let mut offset = 0;
    for _ in 0..=MAX_INTERIM {
        let rest = &buf[offset..];
        let Some((head, len)) = codec::parse_response(rest, MAX_RESPONSE_HEAD)? else {
            return Ok(ConnectAnswer::Incomplete);
        };
        offset += len;
        match head.status {
            100..=199 => continue,
            200..=299 => return Ok(ConnectAnswer::Open { head_len: offset }),
            _ => return Ok(ConnectAnswer::Refused { head }),
        }
    }
    Err(HeadError::Invalid("too many interim responses"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::config::ParentKind;
    use crate::policy::Secret;

    fn parent(creds: Option<(&str, &str)>) -> ParentSpec {
        ParentSpec {
            name: "up".into(),
            kind: ParentKind::Http,
            host: Host::Name("proxy.test".into()),
            port: 3128,
            username: creds.map(|c| c.0.to_string()),
            password: creds.map(|c| Secret::new(c.1)),
        }
    }

    #[test]
    fn connect_request_with_and_without_credentials() {
        let host = Host::Name("example.test".into());
        let plain = encode_connect(&parent(None), &host, 443);
        assert_eq!(
            plain,
            b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n"
        );
        // RFC 7617 section 2's own example.
        let p = parent(Some(("Aladdin", "open sesame")));
        assert_eq!(
            proxy_authorization(&p).as_deref(),
            Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
        );
        let v6 = encode_connect(&p, &Host::Ip("2001:db8::1".parse().expect("ip")), 22);
        let text = String::from_utf8(v6).expect("ascii");
        assert!(
            text.starts_with("CONNECT [2001:db8::1]:22 HTTP/1.1\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nProxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
        assert_eq!(proxy_authorization(&parent(None)), None);
    }

    #[test]
    fn answers() {
        let ok = b"HTTP/1.1 200 Connection established\r\n\r\nSSH-2.0-server\r\n";
        assert_eq!(decode_answer(ok), Ok(ConnectAnswer::Open { head_len: 39 }));
        assert_eq!(&ok[39..], b"SSH-2.0-server\r\n", "tunnel bytes kept");
        for cut in 0..39 {
            assert_eq!(decode_answer(&ok[..cut]), Ok(ConnectAnswer::Incomplete));
        }
        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
        assert_eq!(
            decode_answer(interim),
            Ok(ConnectAnswer::Open {
                head_len: interim.len()
            })
        );
        let refused =
            b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 5\r\n\r\nnope!";
        match decode_answer(refused) {
            Ok(ConnectAnswer::Refused { head }) => assert_eq!(head.status, 407),
            other => panic!("{other:?}"),
        }
        assert!(decode_answer(b"SSH-2.0-not-http\r\n\r\n").is_err());
        let endless = "HTTP/1.1 100 Continue\r\n\r\n".repeat(20);
        assert!(decode_answer(endless.as_bytes()).is_err());
        let huge = format!(
            "HTTP/1.1 200 OK\r\nX: {}\r\n",
            "a".repeat(MAX_RESPONSE_HEAD)
        );
        assert_eq!(
            decode_answer(huge.as_bytes()),
            Err(HeadError::TooLarge(MAX_RESPONSE_HEAD))
        );
    }
}
