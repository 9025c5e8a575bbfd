//! The routing table: Host -> virtual host (exact name first, then the longest `*.suffix`)
//! -> the first route, in config order, whose path prefix, regex, methods and header matches
//! all hold. A Host no virtual host names takes the listener's default route, if any.

use std::collections::HashMap;
use std::ops::Range;

use crate::config::{HostName, ReverseListenerConfig, RouteConfig};
use crate::http::codec::Headers;

pub struct Table {
    /// Every route, virtual host after virtual host, the default last.
    routes: Vec<RouteConfig>,
    /// Each virtual host's routes in `routes`.
    hosts: Vec<Range<usize>>,
    exact: HashMap<String, usize>,
    /// (suffix, host), longest suffix first.
    suffixes: Vec<(String, usize)>,
    default: Option<usize>,
}

/// What the table says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The index of the route (see [`Table::route`]).
    Route(usize),
    /// A known host, but none of its routes matches.
    NoRoute,
    /// No virtual host has this name and there is no default route.
    UnknownHost,
}

impl Table {
    pub fn new(cfg: &ReverseListenerConfig) -> Table {
        let mut t = Table {
            routes: Vec::new(),
            hosts: Vec::new(),
            exact: HashMap::new(),
            suffixes: Vec::new(),
            default: None,
        };
        for (i, h) in cfg.hosts.iter().enumerate() {
            let start = t.routes.len();
            t.routes.extend(h.routes.iter().cloned());
            t.hosts.push(start..t.routes.len());
            for n in &h.names {
                // The first virtual host to name a host keeps it.
                match n {
                    HostName::Exact(n) => {
                        t.exact.entry(n.clone()).or_insert(i);
                    }
                    HostName::Suffix(s) => t.suffixes.push((s.clone(), i)),
                }
            }
        }
        // Stable: equal lengths keep config order.
        t.suffixes.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        if let Some(d) = &cfg.default {
            t.default = Some(t.routes.len());
            t.routes.push(d.clone());
        }
        t
    }

    pub fn routes(&self) -> &[RouteConfig] {
        &self.routes
    }

    pub fn route(&self, i: usize) -> &RouteConfig {
        &self.routes[i]
    }

    /// Each route's label for metrics and the access log, by route index: its `name`, else
    /// its virtual host's first name followed by its path (`app.test/api`); the default
    /// route is `default`.
    pub fn labels(&self, cfg: &ReverseListenerConfig) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(self.routes.len());
        for h in &cfg.hosts {
            let host = match h.names.first() {
                Some(HostName::Exact(n)) => n.clone(),
                Some(HostName::Suffix(s)) => format!("*.{s}"),
                None => String::new(),
            };
            out.extend(h.routes.iter().map(|r| match &r.name {
                Some(n) => n.clone(),
                None => format!("{host}{}", r.path),
            }));
        }
        if let Some(d) = &cfg.default {
            out.push(d.name.clone().unwrap_or_else(|| "default".into()));
        }
        out
    }

    /// The virtual host for a Host value (already lower case, no port).
    fn vhost(&self, host: &str) -> Option<usize> {
        if let Some(i) = self.exact.get(host) {
            return Some(*i);
        }
        self.suffixes.iter().find_map(|(s, i)| {
            let under = host.len() > s.len() + 1
                && host.ends_with(s.as_str())
                && host.as_bytes()[host.len() - s.len() - 1] == b'.';
            under.then_some(*i)
        })
    }

    /// The route for a request: `host` from [`host_of`], `target` the origin-form target
    /// (path and query).
    pub fn find(&self, host: Option<&str>, method: &str, target: &str, h: &Headers) -> Lookup {
        let Some(v) = host.and_then(|host| self.vhost(host)) else {
            return match self.default {
                Some(d) if route_matches(&self.routes[d], method, target, h) => Lookup::Route(d),
                Some(_) => Lookup::NoRoute,
                None => Lookup::UnknownHost,
            };
        };
        self.hosts[v]
            .clone()
            .find(|&i| route_matches(&self.routes[i], method, target, h))
            .map_or(Lookup::NoRoute, Lookup::Route)
    }
}

/// The host part of a Host field: lower case, without port or trailing dot. `None` for an
/// empty or malformed value.
pub fn host_of(authority: &str) -> Option<String> {
    let a = authority.trim();
    let host = if let Some(rest) = a.strip_prefix('[') {
        let end = rest.find(']')?;
        &a[..end + 2]
    } else {
        // The last `:` by bytes (`rsplit_once` runs a char searcher).
        match a.bytes().rposition(|b| b == b':') {
            Some(i) if a.as_bytes()[i + 1..].iter().all(u8::is_ascii_digit) => &a[..i],
            Some(_) => return None,
            None => a,
        }
    };
    let host = host.trim_end_matches('.');
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// The path of an origin-form target, without its query.
fn path_of(target: &str) -> &str {
    target.split(['?', '#']).next().unwrap_or(target)
}

/// Whether `prefix` matches `path`: a prefix ending in `/` is a plain prefix, any other
/// matches whole segments (`/api` matches `/api` and `/api/x`, not `/apix`).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

fn route_matches(r: &RouteConfig, method: &str, target: &str, h: &Headers) -> bool {
    let path = path_of(target);
    prefix_matches(&r.path, path)
        && r.regex.as_ref().is_none_or(|re| re.0.is_match(path))
        && (r.methods.is_empty() || r.methods.iter().any(|m| m == method))
        && r.headers
            .iter()
            .all(|(n, v)| h.get_all(n).any(|got| got.trim_ascii() == v.as_bytes()))
}

/// The target sent upstream: the route's `strip_prefix` removed from the path (whole
/// segments, as in [`prefix_matches`]) and `replace_prefix` put in its place; the query is
/// kept. A path left empty becomes `/`.
pub fn rewrite_target(r: &RouteConfig, target: &str) -> String {
    let Some(strip) = &r.strip_prefix else {
        return target.to_string();
    };
    let path = path_of(target);
    if !prefix_matches(strip, path) {
        return target.to_string();
    }
    let rest = &target[strip.len()..];
    let keep_slash = strip.ends_with('/');
    let mut out = r.replace_prefix.clone().unwrap_or_default();
    if keep_slash && !out.ends_with('/') {
        // `/static/` stripped from `/static/a`: the `/` before `a` goes back.
        out.push('/');
    }
    if out.ends_with('/') && rest.starts_with('/') {
        out.pop();
    }
    out.push_str(rest);
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ForwardedMode, HttpListenerConfig, PathRegex, VhostConfig};
    use std::time::Duration;

    fn route(path: &str, pool: &str) -> RouteConfig {
        RouteConfig {
            name: None,
            path: path.into(),
            regex: None,
            methods: Vec::new(),
            headers: Vec::new(),
            pool: pool.into(),
            agent: None,
            strip_prefix: None,
            replace_prefix: None,
            host: None,
            request_headers: Default::default(),
            response_headers: Default::default(),
            cache: false,
            cache_key: Default::default(),
            retry_body_bytes: 0,
        }
    }

    fn exact(n: &str) -> HostName {
        HostName::Exact(n.into())
    }

    fn suffix(n: &str) -> HostName {
        HostName::Suffix(n.into())
    }

    fn table(hosts: Vec<(Vec<HostName>, Vec<RouteConfig>)>, default: Option<RouteConfig>) -> Table {
        Table::new(&config(hosts, default))
    }

    fn config(
        hosts: Vec<(Vec<HostName>, Vec<RouteConfig>)>,
        default: Option<RouteConfig>,
    ) -> ReverseListenerConfig {
        let http = HttpListenerConfig {
            max_header_bytes: 1024,
            header_read_timeout: Duration::ZERO,
            keepalive_timeout: Duration::ZERO,
            read_timeout: Duration::ZERO,
            tunnel_idle_timeout: Duration::ZERO,
            connect_ports: Vec::new(),
            via: None,
            forwarded_for: false,
            cache: false,
            upgrade_protocols: Vec::new(),
        };
        ReverseListenerConfig {
            http,
            hosts: hosts
                .into_iter()
                .map(|(names, routes)| VhostConfig { names, routes })
                .collect(),
            default,
            trusted_proxies: Vec::new(),
            accept_proxy_from: Vec::new(),
            forwarded: ForwardedMode::Both,
            hide_headers: Vec::new(),
            max_body: None,
            retries: 2,
            first_byte_timeout: Duration::ZERO,
            idle_per_server: 0,
            idle_timeout: Duration::ZERO,
            tls: None,
            handshake_timeout: Duration::ZERO,
            redirect_https: false,
            https_port: 443,
            strip_cache_tags: true,
            own_error_pages: false,
            http2: Default::default(),
        }
    }

    fn pool_for(t: &Table, host: &str, method: &str, target: &str, h: &Headers) -> Option<String> {
        match t.find(host_of(host).as_deref(), method, target, h) {
            Lookup::Route(i) => Some(t.route(i).pool.clone()),
            _ => None,
        }
    }

    fn get(t: &Table, host: &str, target: &str) -> Option<String> {
        pool_for(t, host, "GET", target, &Headers::default())
    }

    #[test]
    fn exact_beats_wildcard_and_longest_suffix_wins() {
        let t = table(
            vec![
                (vec![suffix("test")], vec![route("/", "any-test")]),
                (vec![suffix("app.test")], vec![route("/", "wild")]),
                (vec![exact("www.app.test")], vec![route("/", "www")]),
            ],
            None,
        );
        assert_eq!(get(&t, "www.app.test", "/").as_deref(), Some("www"));
        assert_eq!(get(&t, "WWW.App.Test.:8080", "/").as_deref(), Some("www"));
        assert_eq!(get(&t, "api.app.test", "/").as_deref(), Some("wild"));
        assert_eq!(get(&t, "a.b.app.test", "/").as_deref(), Some("wild"));
        assert_eq!(
            get(&t, "app.test", "/").as_deref(),
            Some("any-test"),
            "*.x is not x"
        );
        assert_eq!(get(&t, "other.test", "/").as_deref(), Some("any-test"));
        assert_eq!(
            t.find(Some("example.com"), "GET", "/", &Headers::default()),
            Lookup::UnknownHost
        );
        assert_eq!(
            t.find(None, "GET", "/", &Headers::default()),
            Lookup::UnknownHost
        );
    }

    #[test]
    fn default_route_takes_unknown_hosts_only() {
        let t = table(
            vec![(vec![exact("a.test")], vec![route("/api", "api")])],
            Some(route("/", "fallback")),
        );
        assert_eq!(get(&t, "nope.test", "/x").as_deref(), Some("fallback"));
        assert_eq!(
            t.find(Some("a.test"), "GET", "/other", &Headers::default()),
            Lookup::NoRoute,
            "a known host's own routes decide"
        );
    }

    #[test]
    fn routes_in_order_by_prefix_regex_method_and_header() {
        let mut canary = route("/", "canary");
        canary.headers = vec![("x-canary".into(), "1".into())];
        let mut writes = route("/api", "writes");
        writes.methods = vec!["POST".into(), "PUT".into()];
        let mut versioned = route("/api", "v2");
        versioned.regex = Some(PathRegex(regex::Regex::new("^/api/v2/").expect("re")));
        let t = table(
            vec![(
                vec![exact("a.test")],
                vec![
                    canary,
                    writes,
                    versioned,
                    route("/api", "api"),
                    route("/", "root"),
                ],
            )],
            None,
        );
        let mut h = Headers::default();
        assert_eq!(get(&t, "a.test", "/api/x").as_deref(), Some("api"));
        assert_eq!(get(&t, "a.test", "/api?q=1").as_deref(), Some("api"));
        assert_eq!(
            get(&t, "a.test", "/apix").as_deref(),
            Some("root"),
            "whole segments"
        );
        assert_eq!(get(&t, "a.test", "/api/v2/users").as_deref(), Some("v2"));
        assert_eq!(
            pool_for(&t, "a.test", "POST", "/api/x", &h).as_deref(),
            Some("writes")
        );
        h.push("X-Canary", "1");
        assert_eq!(
            pool_for(&t, "a.test", "GET", "/api/x", &h).as_deref(),
            Some("canary")
        );
        let mut h2 = Headers::default();
        h2.push("X-Canary", "2");
        assert_eq!(
            pool_for(&t, "a.test", "GET", "/", &h2).as_deref(),
            Some("root")
        );
    }

    #[test]
    fn prefix_rewrite() {
        let mut r = route("/api", "p");
        assert_eq!(
            rewrite_target(&r, "/api/x?q"),
            "/api/x?q",
            "nothing to strip"
        );
        r.strip_prefix = Some("/api".into());
        assert_eq!(rewrite_target(&r, "/api/x?q"), "/x?q");
        assert_eq!(rewrite_target(&r, "/api"), "/");
        assert_eq!(rewrite_target(&r, "/api?q"), "/?q");
        assert_eq!(rewrite_target(&r, "/apix"), "/apix", "whole segments only");
        r.replace_prefix = Some("/v2".into());
        assert_eq!(rewrite_target(&r, "/api/x"), "/v2/x");
        assert_eq!(rewrite_target(&r, "/api"), "/v2");
        r.strip_prefix = Some("/static/".into());
        r.replace_prefix = Some("/assets".into());
        assert_eq!(rewrite_target(&r, "/static/a.css"), "/assets/a.css");
        r.replace_prefix = None;
        assert_eq!(rewrite_target(&r, "/static/a.css"), "/a.css");
    }

    #[test]
    fn host_field_forms() {
        assert_eq!(host_of("App.Test:8080").as_deref(), Some("app.test"));
        assert_eq!(host_of("app.test.").as_deref(), Some("app.test"));
        assert_eq!(host_of("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(host_of("a:b"), None);
        assert_eq!(host_of(""), None);
        assert_eq!(host_of("[::1"), None);
    }

    #[test]
    fn route_labels_name_host_and_path() {
        let mut named = route("/api", "p");
        named.name = Some("api".into());
        let cfg = config(
            vec![
                (vec![exact("app.test")], vec![named, route("/", "p")]),
                (vec![suffix("w.test")], vec![route("/x", "p")]),
            ],
            Some(route("/", "p")),
        );
        let t = Table::new(&cfg);
        assert_eq!(
            t.labels(&cfg),
            ["api", "app.test/", "*.w.test/x", "default"]
        );
    }
}
