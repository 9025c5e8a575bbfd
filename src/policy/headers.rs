//! Header rewriting per rule, the "anonymous" preset, and the deny page. Pure functions over
//! [`Headers`].

use crate::connector::Host;
use crate::http::codec::Headers;

use super::matcher::normalise_name;

/// Header fields a rule may not touch: they frame the message or belong to one connection,
/// and changing them would desynchronise the proxy from its peers (request smuggling).
pub const PROTECTED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "host",
];

/// Removed by the anonymous preset. These name the client (its address, the user's e-mail,
/// the path through proxies) to the origin. Kept on purpose: `User-Agent` (sites serve
/// different content per browser and many break without it; one fixed value would itself be
/// a fingerprint) and `Cookie` (session state the user chose to send).
pub const ANONYMOUS_REMOVE: &[&str] = &[
    "From",
    "Forwarded",
    "Via",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-Forwarded-Server",
    "X-Real-IP",
    "X-Client-IP",
    "X-Cluster-Client-IP",
    "X-Originating-IP",
    "Client-IP",
    "True-Client-IP",
];

/// Changes to one direction's header fields, applied in the order remove, set, add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Every field with these names is removed.
    pub remove: Vec<String>,
    /// Replaces every field of the name with this one value.
    pub set: Vec<(String, String)>,
    /// Appends a field, keeping existing ones.
    pub add: Vec<(String, String)>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    pub fn apply(&self, h: &mut Headers) {
        for name in &self.remove {
            h.remove(name);
        }
        for (name, value) in &self.set {
            h.set(name, value.as_bytes());
        }
        for (name, value) in &self.add {
            h.push(name, value.as_bytes());
        }
    }
}

/// Everything a rule changes in the messages it lets through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrite {
    pub request: HeaderEdits,
    pub response: HeaderEdits,
    /// Strip identifying client headers from forwarded requests ([`anonymize`]).
    pub anonymous: bool,
}

impl Rewrite {
    /// Applies to a request about to go upstream, after the proxy added its own fields (so
    /// the preset also removes the proxy's `Via` and `X-Forwarded-For`). The preset runs
    /// first; the rule's own edits then win.
    pub fn apply_request(&self, h: &mut Headers, dest: &Host) {
        if self.anonymous {
            anonymize(h, dest);
        }
        self.request.apply(h);
    }

    pub fn apply_response(&self, h: &mut Headers) {
        self.response.apply(h);
    }
}

/// The anonymous preset: removes [`ANONYMOUS_REMOVE`], and `Referer` unless it points at the
/// destination host itself (a referer from the same host is kept because sites use it for
/// CSRF checks; without a public-suffix list "same site" cannot be judged more widely).
pub fn anonymize(h: &mut Headers, dest: &Host) {
    for name in ANONYMOUS_REMOVE {
        h.remove(name);
    }
    let keep_referer = h.count("Referer") == 1
        && h.get_str("Referer")
            .and_then(referer_host)
            .is_some_and(|r| r == *dest);
    if !keep_referer {
        h.remove("Referer");
    }
}

/// The host of an absolute `http(s)://` URL.
fn referer_host(url: &str) -> Option<Host> {
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if hostport.starts_with('[') {
        hostport.split_inclusive(']').next()?
    } else {
        hostport.split(':').next()?
    };
    match Host::parse(host)? {
        Host::Name(n) => normalise_name(&n).map(|n| Host::Name(n.into_owned())),
        ip => Some(ip),
    }
}

/// Checks a header name from the config: an RFC 9110 token, not a [`PROTECTED`] field.
pub fn check_name(name: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err("not a valid header name".into());
    }
    if PROTECTED.iter().any(|p| p.eq_ignore_ascii_case(name)) {
        return Err(format!("{name} frames the message and cannot be rewritten"));
    }
    Ok(())
}

/// Checks a header value from the config: no control characters (CR/LF would inject fields).
pub fn check_value(value: &str) -> Result<(), String> {
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err("control characters are not allowed in a header value".into());
    }
    Ok(())
}

/// The built-in 403 page; `{rule}` and `{target}` are replaced, HTML-escaped.
pub const DEFAULT_DENY_PAGE: &str = "<!DOCTYPE html>\n<html><head><title>Access denied</title></head>\n<body><h1>Access denied</h1>\n<p>The proxy's policy does not allow access to <code>{target}</code> (rule <code>{rule}</code>).</p>\n</body></html>\n";

/// Fills a deny page template. The target comes from the client, so both values are escaped.
pub fn render_deny_page(template: &str, rule: &str, target: &str) -> String {
    template
        .replace("{rule}", &escape_html(rule))
        .replace("{target}", &escape_html(target))
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
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

    fn names(h: &Headers) -> Vec<String> {
        h.0.iter()
            .map(|f| format!("{}: {}", f.name, String::from_utf8_lossy(&f.value)))
            .collect()
    }

    #[test]
    fn edits_apply_remove_set_add_in_order() {
        let edits = HeaderEdits {
            remove: vec!["cookie".into()],
            set: vec![("X-Env".into(), "prod".into())],
            add: vec![("X-Tag".into(), "b".into())],
        };
        let mut h = headers(&[
            ("Cookie", "a=1"),
            ("X-Env", "dev"),
            ("x-env", "test"),
            ("X-Tag", "a"),
            ("Accept", "*/*"),
        ]);
        edits.apply(&mut h);
        assert_eq!(
            names(&h),
            ["X-Tag: a", "Accept: */*", "X-Env: prod", "X-Tag: b"]
        );
    }

    #[test]
    fn anonymous_preset_strips_identity_and_foreign_referers() {
        let dest = Host::parse("shop.example").expect("host");
        let cases = [
            ("https://shop.example/cart", true),
            ("http://SHOP.example.:8080/x?y", true),
            ("https://user@shop.example/", true),
            ("https://tracker.example/", false),
            ("https://example/", false),
            ("android-app://shop.example/", false),
            ("not a url", false),
        ];
        for (referer, kept) in cases {
            let mut h = headers(&[
                ("From", "alice@corp.example"),
                ("X-Forwarded-For", "10.0.0.5"),
                ("forwarded", "for=10.0.0.5"),
                ("Via", "1.1 gatehouse"),
                ("X-Real-IP", "10.0.0.5"),
                ("Referer", referer),
                ("User-Agent", "curl/8"),
                ("Cookie", "s=1"),
            ]);
            Rewrite {
                anonymous: true,
                ..Rewrite::default()
            }
            .apply_request(&mut h, &dest);
            let mut want = vec![];
            if kept {
                want.push(format!("Referer: {referer}"));
            }
            want.extend(["User-Agent: curl/8".to_string(), "Cookie: s=1".to_string()]);
            assert_eq!(names(&h), want, "{referer}");
        }
        // Two Referer fields: ambiguous, removed.
        let mut h = headers(&[
            ("Referer", "https://shop.example/"),
            ("Referer", "https://x.example/"),
        ]);
        anonymize(&mut h, &dest);
        assert!(!h.contains("Referer"));
        // An IP destination.
        let mut h = headers(&[("Referer", "http://[2001:db8::1]:80/")]);
        anonymize(&mut h, &Host::parse("[2001:db8::1]").expect("host"));
        assert!(h.contains("Referer"));
    }

    #[test]
    fn rule_edits_win_over_the_preset() {
        let rw = Rewrite {
            anonymous: true,
            request: HeaderEdits {
                set: vec![("Via".into(), "1.1 corp".into())],
                ..HeaderEdits::default()
            },
            response: HeaderEdits {
                remove: vec!["Server".into()],
                ..HeaderEdits::default()
            },
        };
        let mut h = headers(&[("Via", "1.1 a")]);
        rw.apply_request(&mut h, &Host::parse("x.example").expect("host"));
        assert_eq!(names(&h), ["Via: 1.1 corp"]);
        let mut r = headers(&[("Server", "nginx"), ("Date", "x")]);
        rw.apply_response(&mut r);
        assert_eq!(names(&r), ["Date: x"]);
    }

    #[test]
    fn config_names_and_values_are_checked() {
        assert!(check_name("X-Env").is_ok());
        for bad in [
            "",
            "X Env",
            "X:Env",
            "Content-Length",
            "transfer-encoding",
            "Host",
            "Connection",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_value("a\tb c").is_ok());
        for bad in ["a\r\nX-Injected: 1", "a\nb", "nul\0"] {
            assert!(check_value(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deny_page_escapes_the_client_controlled_target() {
        let page = render_deny_page(
            DEFAULT_DENY_PAGE,
            "no-social",
            "<script>x</script>.example:443",
        );
        assert!(page.contains("&lt;script&gt;x&lt;/script&gt;.example:443"));
        assert!(page.contains("<code>no-social</code>"));
        assert!(!page.contains("<script>"));
        assert_eq!(
            render_deny_page("{rule}|{target}|{rule}", "a&b", "\"q'"),
            "a&amp;b|&quot;q&#39;|a&amp;b"
        );
    }
}
