//! Header fields on the way through a reverse proxy: who the client is (`Forwarded`,
//! `X-Forwarded-*`), what the servers must not reveal (`hide_headers`), and links that name
//! a server's own address (`Location`, `Content-Location`, `Refresh`) turned into the
//! public origin.

use std::net::IpAddr;

use crate::config::ForwardedMode;
use crate::http::codec::Headers;

const X_FORWARDED: [&str; 3] = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];

/// Adds the client's identity. From a trusted peer (another proxy in front) the incoming
/// fields are kept and this hop is appended; from anyone else they are removed first (a
/// client could otherwise claim any address), whatever `mode` sends.
pub fn forwarded(
    h: &mut Headers,
    mode: ForwardedMode,
    trusted: bool,
    client: IpAddr,
    proto: &str,
    host: Option<&str>,
) {
    if !trusted {
        // One pass over the fields for the four names.
        h.0.retain(|f| {
            !(f.name.eq_ignore_ascii_case("forwarded")
                || X_FORWARDED.iter().any(|n| f.name.eq_ignore_ascii_case(n)))
        });
    }
    let ip = client.to_canonical();
    if matches!(mode, ForwardedMode::Rfc7239 | ForwardedMode::Both) {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(b"for=");
        // RFC 7239 section 6: an IPv6 node is a quoted "[...]".
        if ip.is_ipv6() {
            v.extend_from_slice(b"\"[");
            push_ip(&mut v, ip);
            v.extend_from_slice(b"]\"");
        } else {
            push_ip(&mut v, ip);
        }
        if let Some(host) = host.filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        }) {
            v.extend_from_slice(b";host=\"");
            v.extend_from_slice(host.as_bytes());
            v.push(b'"');
        }
        v.extend_from_slice(b";proto=");
        v.extend_from_slice(proto.as_bytes());
        // Several fields are one comma-separated list: this hop comes last.
        h.push("Forwarded", v);
    }
    if matches!(mode, ForwardedMode::XForwarded | ForwardedMode::Both) {
        let mut list = Vec::with_capacity(48);
        if h.contains("x-forwarded-for") {
            let before: Vec<String> = h
                .get_all("x-forwarded-for")
                .map(|v| String::from_utf8_lossy(v).trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            list.extend_from_slice(before.join(", ").as_bytes());
            if !list.is_empty() {
                list.extend_from_slice(b", ");
            }
        }
        push_ip(&mut list, ip);
        h.set("X-Forwarded-For", list);
        if !h.contains("x-forwarded-proto") {
            h.push("X-Forwarded-Proto", proto);
        }
        if let Some(host) = host {
            if !h.contains("x-forwarded-host") {
                h.push("X-Forwarded-Host", host);
            }
        }
    }
}

/// Appends `ip` as `Display` writes it; IPv4 without the formatting machinery (this runs
/// for every request).
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (k, o) in v4.octets().into_iter().enumerate() {
                if k > 0 {
                    out.push(b'.');
                }
                if o >= 100 {
                    out.push(b'0' + o / 100);
                }
                if o >= 10 {
                    out.push(b'0' + o / 10 % 10);
                }
                out.push(b'0' + o % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

/// Removes every field named in `names` (lower case).
pub fn hide(h: &mut Headers, names: &[String]) {
    if names.is_empty() {
        return;
    }
    // One pass over the fields for all the names.
    h.0.retain(|f| !names.iter().any(|n| f.name.eq_ignore_ascii_case(n)));
}

/// How a server's own origin is turned into the public one in links it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRewrite {
    /// `http://127.0.0.1:9001` and the like, lower case, as the server may write its origin
    /// (its configured name and the address connected to).
    pub from: Vec<String>,
    /// `http://app.test`: the listener's scheme and the client's Host.
    pub to: String,
}

/// The fields [`LinkRewrite::apply`] rewrites.
fn is_link_field(name: &str) -> bool {
    name.eq_ignore_ascii_case("location")
        || name.eq_ignore_ascii_case("content-location")
        || name.eq_ignore_ascii_case("refresh")
}

/// Whether `h` has a field [`LinkRewrite::apply`] may rewrite.
pub fn has_links(h: &Headers) -> bool {
    h.0.iter().any(|f| is_link_field(&f.name))
}

impl LinkRewrite {
    /// Rewrites `Location`, `Content-Location` and the URL of `Refresh`.
    pub fn apply(&self, h: &mut Headers) {
        for f in h.0.iter_mut() {
            let refresh = f.name.eq_ignore_ascii_case("refresh");
            if !(refresh
                || f.name.eq_ignore_ascii_case("location")
                || f.name.eq_ignore_ascii_case("content-location"))
            {
                continue;
            }
            let start = if refresh {
                // `5; url=http://...`
                let lower = f.value.to_ascii_lowercase();
                match lower.windows(4).position(|w| w == b"url=") {
                    Some(p) => p + 4,
                    None => continue,
                }
            } else {
                0
            };
            if let Some(v) = self.rewrite(&f.value[start..]) {
                let mut value = f.value[..start].to_vec();
                value.extend_from_slice(&v);
                f.value = value.into();
            }
        }
    }

    /// `value` with a server origin at its start replaced; `None`: not a server's link.
    fn rewrite(&self, value: &[u8]) -> Option<Vec<u8>> {
        let value = value.trim_ascii_start();
        self.from.iter().find_map(|origin| {
            let head = value.get(..origin.len())?;
            if !head.eq_ignore_ascii_case(origin.as_bytes()) {
                return None;
            }
            let rest = &value[origin.len()..];
            // The whole authority: `:90011` is not `:9001`.
            if !(rest.is_empty() || matches!(rest[0], b'/' | b'?' | b'#')) {
                return None;
            }
            let mut out = self.to.as_bytes().to_vec();
            out.extend_from_slice(rest);
            Some(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(fields: &[(&str, &str)]) -> Headers {
        let mut h = Headers::default();
        for (n, v) in fields {
            h.push(n, *v);
        }
        h
    }

    fn all(h: &Headers, n: &str) -> Vec<String> {
        h.get_all(n)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    #[test]
    fn untrusted_peer_fields_are_replaced() {
        let mut h = headers(&[
            ("Forwarded", "for=6.6.6.6"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.test"),
        ]);
        forwarded(
            &mut h,
            ForwardedMode::Both,
            false,
            CLIENT,
            "http",
            Some("app.test"),
        );
        assert_eq!(
            all(&h, "forwarded"),
            ["for=192.0.2.7;host=\"app.test\";proto=http"]
        );
        assert_eq!(all(&h, "x-forwarded-for"), ["192.0.2.7"]);
        assert_eq!(all(&h, "x-forwarded-proto"), ["http"]);
        assert_eq!(all(&h, "x-forwarded-host"), ["app.test"]);
    }

    #[test]
    fn trusted_peer_fields_are_appended_to() {
        let mut h = headers(&[
            ("Forwarded", "for=198.51.100.1;proto=https"),
            ("X-Forwarded-For", "198.51.100.1"),
            ("X-Forwarded-Proto", "https"),
        ]);
        forwarded(
            &mut h,
            ForwardedMode::Both,
            true,
            CLIENT,
            "http",
            Some("app.test"),
        );
        assert_eq!(
            all(&h, "forwarded"),
            [
                "for=198.51.100.1;proto=https",
                "for=192.0.2.7;host=\"app.test\";proto=http"
            ]
        );
        assert_eq!(all(&h, "x-forwarded-for"), ["198.51.100.1, 192.0.2.7"]);
        assert_eq!(
            all(&h, "x-forwarded-proto"),
            ["https"],
            "the first hop's scheme"
        );
        assert_eq!(all(&h, "x-forwarded-host"), ["app.test"]);
    }

    #[test]
    fn modes_choose_the_fields() {
        let v6: IpAddr = "2001:db8::1".parse().expect("ip");
        let mut h = headers(&[("X-Forwarded-For", "6.6.6.6")]);
        forwarded(&mut h, ForwardedMode::Rfc7239, false, v6, "https", None);
        assert_eq!(all(&h, "forwarded"), ["for=\"[2001:db8::1]\";proto=https"]);
        assert!(
            all(&h, "x-forwarded-for").is_empty(),
            "spoofed field still removed"
        );
        let mut h = Headers::default();
        forwarded(
            &mut h,
            ForwardedMode::XForwarded,
            false,
            CLIENT,
            "http",
            None,
        );
        assert!(!h.contains("forwarded"));
        assert_eq!(all(&h, "x-forwarded-for"), ["192.0.2.7"]);
        let mut h = headers(&[("Forwarded", "for=6.6.6.6")]);
        forwarded(&mut h, ForwardedMode::None, false, CLIENT, "http", None);
        assert!(h.0.is_empty());
    }

    #[test]
    fn server_links_get_the_public_origin() {
        let r = LinkRewrite {
            from: vec![
                "http://127.0.0.1:9001".into(),
                "http://app-1.internal:9001".into(),
            ],
            to: "http://app.test".into(),
        };
        let mut h = headers(&[
            ("Location", "http://127.0.0.1:9001/login?next=/"),
            ("Content-Location", "HTTP://App-1.Internal:9001"),
            ("Refresh", "5; URL=http://127.0.0.1:9001/x"),
            ("Link", "<http://127.0.0.1:9001/a>"),
        ]);
        r.apply(&mut h);
        assert_eq!(all(&h, "location"), ["http://app.test/login?next=/"]);
        assert_eq!(all(&h, "content-location"), ["http://app.test"]);
        assert_eq!(all(&h, "refresh"), ["5; URL=http://app.test/x"]);
        assert_eq!(
            all(&h, "link"),
            ["<http://127.0.0.1:9001/a>"],
            "other fields untouched"
        );
        let mut h = headers(&[
            ("Location", "http://127.0.0.1:90011/x"),
            ("Location", "/relative"),
            ("Location", "http://elsewhere.test/"),
        ]);
        r.apply(&mut h);
        assert_eq!(
            all(&h, "location"),
            [
                "http://127.0.0.1:90011/x",
                "/relative",
                "http://elsewhere.test/"
            ]
        );
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "10.200.3.45",
            "::1",
            "2001:db8::8:800:200c:417a",
        ] {
            let ip: IpAddr = ip.parse().expect("an address");
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string().into_bytes(), "{ip}");
        }
    }

    #[test]
    fn hidden_fields_go() {
        let mut h = headers(&[
            ("Server", "nginx/1.2"),
            ("X-Powered-By", "PHP"),
            ("X-Kept", "1"),
        ]);
        hide(&mut h, &["server".into(), "x-powered-by".into()]);
        assert_eq!(h.0.len(), 1);
    }
}
