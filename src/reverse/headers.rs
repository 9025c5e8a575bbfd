//! Header fields on the way through a reverse proxy: who the client is (`Forwarded`,
//! `X-Forwarded-*`), what the servers must not reveal (`hide_headers`), and links that name
//! a server's own address (`Location`, `Content-Location`, `Refresh`) turned into the
//! public origin.

use std::net::IpAddr;

use bytes::Bytes;

use crate::config::ForwardedMode;
use crate::http::codec::Headers;

/// Adds the client's identity. From a trusted peer (another proxy in front) the incoming
/// fields are kept and this hop is appended; from anyone else they are removed first (a
/// client could otherwise claim any address), whatever `mode` sends.
pub fn forwarded(
    h: &mut Headers,
    mode: ForwardedMode,
    trusted: bool,
    client: IpAddr,
    proto: &'static str,
    host: Option<&str>,
) {
    if !trusted {
        // One pass over the fields for the four names, none that moves them when there is
        // none of them.
        if h.0.iter().any(|f| is_forwarding(f.name.as_bytes())) {
            h.0.retain(|f| !is_forwarding(f.name.as_bytes()));
        }
    }
    let ip = client.to_canonical();
    let mut text = [0u8; IP_TEXT_MAX];
    let ip_text = ip_text(ip, &mut text);
    if matches!(mode, ForwardedMode::Rfc7239 | ForwardedMode::Both) {
        let host = host.filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        });
        // Sized exactly: a full `Vec` becomes the field's `Bytes` without another
        // allocation.
        let len = "for=".len()
            + ip_text.len()
            + if ip.is_ipv6() { 4 } else { 0 }
            + host.map_or(0, |h| ";host=\"\"".len() + h.len())
            + ";proto=".len()
            + proto.len();
        let mut v = Vec::with_capacity(len);
        v.extend_from_slice(b"for=");
        // RFC 7239 section 6: an IPv6 node is a quoted "[...]".
        if ip.is_ipv6() {
            v.extend_from_slice(b"\"[");
            v.extend_from_slice(ip_text);
            v.extend_from_slice(b"]\"");
        } else {
            v.extend_from_slice(ip_text);
        }
        if let Some(host) = host {
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
        // From anyone untrusted the incoming X-Forwarded-* are gone already.
        if trusted && h.contains("x-forwarded-for") {
            let before: Vec<String> = h
                .get_all("x-forwarded-for")
                .map(|v| String::from_utf8_lossy(v).trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            let mut list = before.join(", ").into_bytes();
            if !list.is_empty() {
                list.extend_from_slice(b", ");
            }
            list.extend_from_slice(ip_text);
            h.set("X-Forwarded-For", list);
        } else {
            h.push("X-Forwarded-For", ip_text);
        }
        if !(trusted && h.contains("x-forwarded-proto")) {
            h.push("X-Forwarded-Proto", Bytes::from_static(proto.as_bytes()));
        }
        if let Some(host) = host {
            if !(trusted && h.contains("x-forwarded-host")) {
                h.push("X-Forwarded-Host", host);
            }
        }
    }
}

/// Whether `name` is Forwarded or one of the X-Forwarded-* fields this proxy writes (any
/// case). The length picks the one candidate.
fn is_forwarding(name: &[u8]) -> bool {
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    match name.len() {
        9 => is("forwarded"),
        15 => is("x-forwarded-for"),
        16 => is("x-forwarded-host"),
        17 => is("x-forwarded-proto"),
        _ => false,
    }
}

/// The longest text of an address: `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`.
const IP_TEXT_MAX: usize = 45;

/// `ip` as `Display` writes it, in `buf`; IPv4 without the formatting machinery (this runs
/// for every request).
fn ip_text(ip: IpAddr, buf: &mut [u8; IP_TEXT_MAX]) -> &[u8] {
    let mut n = 0;
    match ip {
        IpAddr::V4(v4) => {
            let mut put = |b: u8| {
                buf[n] = b;
                n += 1;
            };
            for (k, o) in v4.octets().into_iter().enumerate() {
                if k > 0 {
                    put(b'.');
                }
                if o >= 100 {
                    put(b'0' + o / 100);
                }
                if o >= 10 {
                    put(b'0' + o / 10 % 10);
                }
                put(b'0' + o % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let mut rest = &mut buf[..];
            // The longest address fits: writing cannot fail.
            let _ = write!(rest, "{v6}");
            n = IP_TEXT_MAX - rest.len();
        }
    }
    &buf[..n]
}

/// Removes every field named in `names` (lower case).
pub fn hide(h: &mut Headers, names: &[String]) {
    if names.is_empty() {
        return;
    }
    let hidden = |f: &crate::http::codec::Header| {
        names
            .iter()
            .any(|n| crate::http::codec::eq_ignore_case(f.name.as_bytes(), n.as_bytes()))
    };
    // One pass over the fields for all the names, and none that moves them when none goes.
    if h.0.iter().any(hidden) {
        h.0.retain(|f| !hidden(f));
    }
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
    // The length picks the one candidate.
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    match name.len() {
        7 => is("refresh"),
        8 => is("location"),
        16 => is("content-location"),
        _ => false,
    }
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
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
            "1111:2222:3333:4444:5555:6666:255.255.255.255",
        ] {
            let ip: IpAddr = ip.parse().expect("an address");
            let mut buf = [0u8; IP_TEXT_MAX];
            assert_eq!(ip_text(ip, &mut buf), ip.to_string().as_bytes(), "{ip}");
        }
    }

    #[test]
    fn link_fields_by_name_in_any_case() {
        for n in ["Location", "content-location", "REFRESH"] {
            assert!(is_link_field(n), "{n}");
        }
        for n in ["locations", "content-locatiom", "refrash", "link", ""] {
            assert!(!is_link_field(n), "{n}");
        }
    }

    #[test]
    fn forwarding_fields_by_name_in_any_case() {
        for n in [
            "Forwarded",
            "x-forwarded-for",
            "X-Forwarded-Host",
            "X-FORWARDED-PROTO",
        ] {
            assert!(is_forwarding(n.as_bytes()), "{n}");
        }
        for n in [
            "forwarder",
            "x-forwarded-fox",
            "x-forwarded-port",
            "x-real-ip",
            "",
        ] {
            assert!(!is_forwarding(n.as_bytes()), "{n}");
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
