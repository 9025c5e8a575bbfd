//! How one listener or route uses the shared cache: its RFC 9213 target list and its cache
//! key (query parameters left out, request fields and cookies added).
//!
//! The forward proxy uses the default profile (Cache-Control only, the plain URL as key).
//! A reverse route with `cache = true` gets `[cache] targeted_fields` and its own
//! `cache_key`.
//!
//! Key customisation, and why it is built this way:
//! - **Ignored query parameters** leave the primary key: `/a?utm_source=x&id=1` is stored
//!   and found as `/a?id=1` (the other parameters keep their order). Invalidation by an
//!   unsafe method applies the same rule to the URLs it removes.
//! - **Request fields and cookies** join the secondary key, as if the origin had sent
//!   `Vary` for them: each distinct value is its own variant of the URL (up to
//!   [`crate::cache::object::MAX_VARIANTS`], most recent first). Invalidation and purges of
//!   the URL therefore remove every value's copy, with no scan. A cookie is named
//!   `cookie:NAME` in the secondary key (`:` cannot occur in a field name).

use std::borrow::Cow;

use url::Url;

use super::key::{plain_key, target_url};
use super::targeted;
use super::vary::{self, SecondaryKey};
use crate::http::codec::{Headers, RequestHead, ResponseHead};

/// Which query parameters leave the primary key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum IgnoreQuery {
    #[default]
    None,
    /// The whole query.
    All,
    /// Parameters by name (exact; a name ending in `*` is a prefix: `utm_*`).
    Names(Vec<String>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// Targeted field names (lower case), most applicable first; empty: Cache-Control only.
    pub targets: Vec<String>,
    pub ignore_query: IgnoreQuery,
    /// Request fields whose values join the key (lower case).
    pub key_headers: Vec<String>,
    /// Cookies whose values join the key.
    pub key_cookies: Vec<String>,
    /// The cache-tag field, when it is removed before responses leave (lower case).
    pub strip_tags: Option<String>,
}

/// The secondary-key name of a cookie.
pub const COOKIE_PREFIX: &str = "cookie:";

static FORWARD: std::sync::LazyLock<std::sync::Arc<Profile>> =
    std::sync::LazyLock::new(std::sync::Arc::default);

impl Profile {
    /// The forward proxy's profile: Cache-Control only, the URL as key.
    pub fn forward() -> std::sync::Arc<Profile> {
        FORWARD.clone()
    }

    /// The primary key of a request under this profile (`None`: not cacheable).
    pub fn primary_key(&self, req: &RequestHead) -> Option<String> {
        if self.ignore_query == IgnoreQuery::None {
            if let Some(key) = plain_key(req) {
                return Some(key);
            }
        }
        target_url(req).map(|u| self.key_of(u))
    }

    /// A target URL as a key: ignored parameters removed.
    pub fn key_of(&self, mut url: Url) -> String {
        match &self.ignore_query {
            IgnoreQuery::None => {}
            IgnoreQuery::All => url.set_query(None),
            IgnoreQuery::Names(names) => {
                if let Some(q) = url.query() {
                    let kept = filter_query(q, names);
                    url.set_query((!kept.is_empty()).then_some(kept.as_str()));
                }
            }
        }
        String::from(url)
    }

    /// A key given as a string (from [`crate::cache::key::invalidated_keys`]).
    pub fn rekey(&self, key: &str) -> String {
        if self.ignore_query == IgnoreQuery::None {
            return key.to_string();
        }
        Url::parse(key).map_or_else(|_| key.to_string(), |u| self.key_of(u))
    }

    /// The request's values for the fields and cookies that join the key.
    pub fn extras(&self, req: &Headers) -> SecondaryKey {
        let mut out: SecondaryKey = self
            .key_headers
            .iter()
            .map(|n| (n.clone(), vary::normalise(req, n)))
            .collect();
        out.extend(self.key_cookies.iter().map(|c| {
            let name = format!("{COOKIE_PREFIX}{c}");
            let v = vary::normalise(req, &name);
            (name, v)
        }));
        out
    }

    /// `vary` extended with this profile's extras (names already there are kept once).
    pub fn with_extras(&self, mut vary: SecondaryKey, req: &Headers) -> SecondaryKey {
        for (n, v) in self.extras(req) {
            if !vary.iter().any(|(m, _)| *m == n) {
                vary.push((n, v));
            }
        }
        vary
    }

    /// Whether a stored variant was keyed on at least this profile's extras (a variant
    /// stored without them, e.g. by the forward proxy, does not answer this route).
    pub fn covers(&self, vary: &SecondaryKey) -> bool {
        let has = |n: &str| vary.iter().any(|(m, _)| m == n);
        self.key_headers.iter().all(|h| has(h))
            && self
                .key_cookies
                .iter()
                .all(|c| has(&format!("{COOKIE_PREFIX}{c}")))
    }

    /// Removes what this cache consumes from a response on its way out: the targeted
    /// fields and, when so configured, the cache-tag field.
    pub fn strip(&self, h: &mut Headers) {
        targeted::strip(h, &self.targets);
        if let Some(t) = &self.strip_tags {
            h.remove(t);
        }
    }

    /// Whether [`Profile::strip`] would remove any of `h` (a hit can then send the stored
    /// fields as they are).
    pub fn strips_any(&self, h: &Headers) -> bool {
        self.targets.iter().any(|t| h.contains(t))
            || self.strip_tags.as_ref().is_some_and(|t| h.contains(t))
    }

    /// The head the caching rules read for a response (RFC 9213: a valid targeted field
    /// replaces Cache-Control and Expires).
    pub fn decision<'a>(&self, head: &'a ResponseHead) -> Cow<'a, ResponseHead> {
        targeted::decision_head(head, &self.targets)
    }
}

/// A query string without the parameters `names` matches; the rest in order, as sent.
pub fn filter_query(query: &str, names: &[String]) -> String {
    query
        .split('&')
        .filter(|pair| {
            if pair.is_empty() {
                return false;
            }
            let raw = pair.split('=').next().unwrap_or_default();
            let name = url::form_urlencoded::parse(raw.as_bytes())
                .next()
                .map_or_else(|| raw.to_string(), |(k, _)| k.into_owned());
            !names.iter().any(|n| match n.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == *n,
            })
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The value of cookie `name` in the request's Cookie fields (the first one), raw.
pub fn cookie(headers: &Headers, name: &str) -> Option<String> {
    headers
        .get_all("cookie")
        .flat_map(|v| v.split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = String::from_utf8_lossy(pair);
            let (n, v) = pair.split_once('=')?;
            (n.trim() == name).then(|| v.trim().to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testutil::req;

    fn profile(ignore: IgnoreQuery, headers: &[&str], cookies: &[&str]) -> Profile {
        Profile {
            targets: Vec::new(),
            ignore_query: ignore,
            key_headers: headers.iter().map(|s| s.to_string()).collect(),
            key_cookies: cookies.iter().map(|s| s.to_string()).collect(),
            strip_tags: None,
        }
    }

    fn key(p: &Profile, target: &str) -> Option<String> {
        p.primary_key(&req("GET", target, &[]))
    }

    #[test]
    fn ignored_parameters_leave_the_key() {
        let names = IgnoreQuery::Names(vec!["utm_*".into(), "fbclid".into()]);
        let p = profile(names, &[], &[]);
        assert_eq!(
            key(
                &p,
                "http://a.test/x?utm_source=m&id=1&fbclid=z&utm_medium=e"
            )
            .as_deref(),
            Some("http://a.test/x?id=1")
        );
        assert_eq!(
            key(&p, "http://a.test/x?utm_source=m").as_deref(),
            Some("http://a.test/x"),
            "nothing left: no `?`"
        );
        assert_eq!(
            key(&p, "http://a.test/x?b=2&a=1&fbclidx=3").as_deref(),
            Some("http://a.test/x?b=2&a=1&fbclidx=3"),
            "order kept; exact names are exact"
        );
        assert_eq!(
            key(&p, "http://a.test/x?utm%5Fsource=1").as_deref(),
            Some("http://a.test/x"),
            "names compare decoded"
        );
        let all = profile(IgnoreQuery::All, &[], &[]);
        assert_eq!(
            key(&all, "http://a.test/x?a=1").as_deref(),
            Some("http://a.test/x")
        );
        assert_eq!(
            all.rekey("http://a.test/y?q"),
            "http://a.test/y",
            "invalidated URLs too"
        );
        let none = Profile::default();
        assert_eq!(
            key(&none, "http://a.test/x?a=1").as_deref(),
            Some("http://a.test/x?a=1")
        );
    }

    #[test]
    fn fields_and_cookies_join_the_secondary_key() {
        let p = profile(IgnoreQuery::None, &["x-device"], &["lang"]);
        let h = |hs: &[(&str, &str)]| req("GET", "/", hs).headers;
        let a = h(&[("X-Device", "mobile"), ("Cookie", "sid=1; lang=en")]);
        let extras = p.extras(&a);
        assert_eq!(
            extras,
            vec![
                ("x-device".to_string(), Some("mobile".to_string())),
                ("cookie:lang".to_string(), Some("en".to_string()))
            ]
        );
        assert!(vary::matches(
            &extras,
            &h(&[("X-Device", "mobile"), ("Cookie", "lang=en; sid=2")])
        ));
        assert!(!vary::matches(
            &extras,
            &h(&[("X-Device", "mobile"), ("Cookie", "lang=de")])
        ));
        assert!(!vary::matches(
            &extras,
            &h(&[("X-Device", "desktop"), ("Cookie", "lang=en")])
        ));
        assert!(
            !vary::matches(&extras, &h(&[("X-Device", "mobile")])),
            "absent cookie"
        );
        assert!(p.covers(&extras));
        assert!(
            !p.covers(&Vec::new()),
            "a variant stored without the extras"
        );
        assert!(Profile::default().covers(&Vec::new()));
        let both = p.with_extras(vec![("x-device".into(), Some("mobile".into()))], &a);
        assert_eq!(both.len(), 2, "a field Vary already names is kept once");
    }

    #[test]
    fn cookie_values() {
        let h = req(
            "GET",
            "/",
            &[("Cookie", "a=1; b = 2"), ("Cookie", "c=3; a=9")],
        )
        .headers;
        assert_eq!(cookie(&h, "a").as_deref(), Some("1"));
        assert_eq!(cookie(&h, "b").as_deref(), Some("2"));
        assert_eq!(cookie(&h, "c").as_deref(), Some("3"));
        assert_eq!(cookie(&h, "d"), None);
    }
}
