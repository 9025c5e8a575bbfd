//! `kind = "reverse"`: a reverse-proxy listener. Virtual hosts by name, each with ordered
//! routes to `[[pools]]`; the HTTP listener's timeouts and limits that apply to it.

use std::time::Duration;

use super::reader::Section;
use super::HttpListenerConfig;
use crate::policy::headers::HeaderEdits;

#[derive(Debug, Clone, PartialEq)]
pub struct ReverseListenerConfig {
    /// Header size, timeouts, `upgrade_protocols`, `via` (off by default here).
    pub http: HttpListenerConfig,
    pub hosts: Vec<VhostConfig>,
    /// The route for a Host no virtual host names; `None`: 404.
    pub default: Option<RouteConfig>,
    /// Peers whose `Forwarded`/`X-Forwarded-*` fields are kept (and appended to).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Peers that must start each connection with a PROXY protocol header (v1 or v2), whose
    /// source address then is the client's. From any other peer such a header is refused.
    pub accept_proxy_from: Vec<ipnet::IpNet>,
    pub forwarded: ForwardedMode,
    /// Response fields removed before the client sees them (lower-case names).
    pub hide_headers: Vec<String>,
    /// Largest request body accepted (a larger Content-Length gets 413).
    pub max_body: Option<u64>,
    /// Further servers tried after the first attempt fails (connect error, or a reset or
    /// close before any response byte).
    pub retries: u32,
    /// Longest wait for the response head once the request went up (504).
    pub first_byte_timeout: Duration,
    /// Idle keep-alive connections kept per server, and for how long.
    pub idle_per_server: usize,
    pub idle_timeout: Duration,
    /// `[listeners.tls]`: TLS terminated here (HTTPS), certificates chosen by SNI.
    pub tls: Option<super::ServerTls>,
    /// Longest TLS handshake.
    pub handshake_timeout: Duration,
    /// A plain listener answers every request with 308 to the same URL over `https`.
    pub redirect_https: bool,
    /// The port in those redirects (443: none in the URL).
    pub https_port: u16,
    /// Remove the cache-tag field (`[cache] tag_header`) from responses.
    pub strip_cache_tags: bool,
    /// A server's 5xx response is replaced with Gatehouse's own page (same status).
    pub own_error_pages: bool,
    /// `[listeners.http2]`: HTTP/2 from clients (ALPN `h2` over TLS, h2c on plain).
    pub http2: Http2Config,
}

/// `[listeners.http2]` of a reverse listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Http2Config {
    /// ALPN offers `h2` before `http/1.1` on a TLS listener (default on).
    pub enabled: bool,
    /// A plain listener takes HTTP/2 with prior knowledge (the connection preface).
    pub h2c: bool,
    /// Streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Largest header list a client may send (SETTINGS_MAX_HEADER_LIST_SIZE).
    pub max_header_list_size: u32,
}

impl Default for Http2Config {
    fn default() -> Http2Config {
        Http2Config {
            enabled: true,
            h2c: false,
            max_concurrent_streams: 100,
            max_header_list_size: 32 * 1024,
        }
    }
}

fn read_http2(l: &Section<'_>, max_header_bytes: usize) -> Http2Config {
    let t = l.table("http2");
    let cfg = Http2Config {
        enabled: t.bool("enabled", true),
        h2c: t.bool("h2c", false),
        max_concurrent_streams: t.uint("max_concurrent_streams", 100, 1, 10_000) as u32,
        max_header_list_size: t
            .size("max_header_list_size", max_header_bytes as u64)
            .clamp(1024, 1024 * 1024) as u32,
    };
    t.finish();
    cfg
}

/// The fields that tell the servers who the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedMode {
    /// `Forwarded` (RFC 7239) only.
    Rfc7239,
    /// `X-Forwarded-For`, `-Proto`, `-Host` only.
    XForwarded,
    Both,
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VhostConfig {
    pub names: Vec<HostName>,
    pub routes: Vec<RouteConfig>,
}

/// A virtual host's name: exact, or `*.suffix` (any name ending in `.suffix`, not the
/// suffix itself). Lower case, no trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostName {
    Exact(String),
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// The route's label in metrics and the access log (default: host and path).
    pub name: Option<String>,
    /// Path prefix (`/` matches everything). A prefix not ending in `/` matches whole
    /// segments: `/api` matches `/api`, `/api/x` and `/api?q`, not `/apix`.
    pub path: String,
    pub regex: Option<PathRegex>,
    /// Upper-case methods; empty: any.
    pub methods: Vec<String>,
    /// Fields the request must carry with exactly this value (names lower case).
    pub headers: Vec<(String, String)>,
    /// The pool's name; for a route through an agent, `agent:AGENT/SERVICE` (its label).
    pub pool: String,
    /// `agent` + `service`: the route goes through a tunnel agent to a service it publishes,
    /// instead of a pool.
    pub agent: Option<RouteAgent>,
    /// Removed from the start of the path before it goes upstream ...
    pub strip_prefix: Option<String>,
    /// ... and this put in its place.
    pub replace_prefix: Option<String>,
    /// `Host` sent upstream; `None`: the client's.
    pub host: Option<String>,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    pub cache: bool,
    /// `cache_key`: query parameters left out of the key, request fields and cookies added.
    pub cache_key: CacheKeyConfig,
    /// A request body up to this size is kept so the request can be retried on another
    /// server; 0: a request with a body is never retried.
    pub retry_body_bytes: u64,
}

/// A route served through a tunnel agent (`agent = "office"`, `service = "web"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAgent {
    pub agent: String,
    pub service: String,
    /// `send_proxy`: a PROXY header first on each stream to the service (the client's
    /// address); such a stream is kept for its client connection only.
    pub send_proxy: Option<super::ProxyVersion>,
}

/// A route's `cache_key` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheKeyConfig {
    pub ignore_query: crate::cache::profile::IgnoreQuery,
    /// Request field names (lower case).
    pub headers: Vec<String>,
    pub cookies: Vec<String>,
}

/// Most entries in each `cache_key` list.
const MAX_KEY_ITEMS: usize = 16;

fn read_cache_key(t: &Section<'_>) -> CacheKeyConfig {
    use crate::cache::profile::IgnoreQuery;
    let ignore_query = t
        .parse(
            "ignore_query",
            "true, false or a list of parameter names",
            |v| {
                if let Some(b) = v.as_bool() {
                    return Ok(if b {
                        IgnoreQuery::All
                    } else {
                        IgnoreQuery::None
                    });
                }
                let arr = v.as_array().ok_or("not a boolean or an array")?;
                let mut names = Vec::new();
                for n in arr {
                    let n = n.as_str().ok_or("a name is not a string")?;
                    if n.is_empty() || n == "*" {
                        return Err("an empty name (use `ignore_query = true` for all)".into());
                    }
                    names.push(n.to_string());
                }
                if names.len() > 64 {
                    return Err("more than 64 names".into());
                }
                Ok(IgnoreQuery::Names(names))
            },
        )
        .unwrap_or_default();
    let list = |key: &str, what: &str, check: &dyn Fn(&str) -> Result<(), String>| {
        let v = t
            .array(key, what, |v| {
                let s = v.as_str().ok_or("not a string")?;
                check(s)?;
                Ok(s.to_string())
            })
            .unwrap_or_default();
        if v.len() > MAX_KEY_ITEMS {
            t.error_at(key, format!("at most {MAX_KEY_ITEMS} entries"));
        }
        v
    };
    let headers = list("headers", "a request field name", &|s| {
        crate::policy::headers::check_name(s)
    })
    .into_iter()
    .map(|h| h.to_ascii_lowercase())
    .collect();
    let cookies = list("cookies", "a cookie name", &|s| {
        if s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"=;,\"".contains(&b))
        {
            return Err("not a cookie name".into());
        }
        Ok(())
    });
    t.finish();
    CacheKeyConfig {
        ignore_query,
        headers,
        cookies,
    }
}

/// A compiled path regex; equal when the pattern text is.
#[derive(Debug, Clone)]
pub struct PathRegex(pub regex::Regex);

impl PartialEq for PathRegex {
    fn eq(&self, other: &PathRegex) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

/// The default `hide_headers`.
pub const HIDE_DEFAULT: &[&str] = &[
    "server",
    "x-powered-by",
    "x-aspnet-version",
    "x-aspnetmvc-version",
    "x-runtime",
];

pub(super) fn read_reverse(l: &Section<'_>, pools: &[&str]) -> ReverseListenerConfig {
    let mut http = super::read_http_limits(l);
    // A reverse proxy says nothing about itself unless asked.
    if !l.has("via") {
        http.via = None;
    }
    let mut hosts = Vec::new();
    for h in l.tables("hosts") {
        let names = h
            .array("names", "a host name or \"*.suffix\"", parse_host_name)
            .unwrap_or_default();
        if names.is_empty() && !h.has("names") {
            h.error_here("`names` is required (at least one)");
        }
        let mut routes = Vec::new();
        let sections = h.tables("routes");
        if sections.is_empty() {
            h.error_here("at least one [[listeners.hosts.routes]] entry is required");
        }
        for r in sections {
            if let Some(route) = read_route(&r, pools) {
                routes.push(route);
            }
        }
        h.finish();
        hosts.push(VhostConfig { names, routes });
    }
    let default = if l.has_table("default") {
        read_route(&l.table("default"), pools)
    } else {
        None
    };
    let forwarded = match l.string("forwarded").as_deref() {
        None | Some("both") => ForwardedMode::Both,
        Some("rfc7239") => ForwardedMode::Rfc7239,
        Some("x-forwarded") => ForwardedMode::XForwarded,
        Some("none") => ForwardedMode::None,
        Some(other) => {
            l.error_at(
                "forwarded",
                format!(
                    "unknown value {other:?}; expected \"rfc7239\", \"x-forwarded\", \"both\" or \"none\""
                ),
            );
            ForwardedMode::Both
        }
    };
    let trusted_proxies = l
        .array("trusted_proxies", "a CIDR such as \"10.0.0.0/8\"", |v| {
            crate::policy::matcher::parse_net(v.as_str().ok_or("not a string")?)
        })
        .unwrap_or_default();
    let accept_proxy_from = l
        .array("accept_proxy_from", "a CIDR such as \"10.0.0.0/8\"", |v| {
            crate::policy::matcher::parse_net(v.as_str().ok_or("not a string")?)
        })
        .unwrap_or_default();
    let hide_headers = l
        .array("hide_headers", "a header name", |v| {
            let s = v.as_str().ok_or("not a string")?;
            crate::policy::headers::check_name(s)?;
            Ok(s.to_ascii_lowercase())
        })
        .unwrap_or_else(|| HIDE_DEFAULT.iter().map(|s| s.to_string()).collect());
    let max_body = l.has("max_body").then(|| l.size("max_body", u64::MAX));
    let http2 = read_http2(l, http.max_header_bytes);
    let alpn: &[&str] = if http2.enabled {
        &["h2", "http/1.1"]
    } else {
        &["http/1.1"]
    };
    let tls = super::tls::read_server_tls(l, alpn);
    if let Some(t) = &tls {
        if !http2.enabled && t.alpn.iter().any(|p| p == "h2") {
            l.error_at(
                "tls.alpn",
                "lists h2, but [listeners.http2] enabled = false",
            );
        }
    }
    let redirect_https = l.bool("redirect_https", false);
    if redirect_https && tls.is_some() {
        l.error_at(
            "redirect_https",
            "only for a plain listener (this one terminates TLS)",
        );
    }
    ReverseListenerConfig {
        http,
        hosts,
        default,
        trusted_proxies,
        accept_proxy_from,
        forwarded,
        hide_headers,
        max_body,
        retries: l.uint("retries", 2, 0, 16) as u32,
        first_byte_timeout: l.duration("first_byte_timeout", Duration::from_secs(60)),
        idle_per_server: l.uint("idle_per_server", 32, 0, 10_000) as usize,
        idle_timeout: l.duration("idle_timeout", Duration::from_secs(60)),
        tls,
        handshake_timeout: l.duration("handshake_timeout", Duration::from_secs(10)),
        redirect_https,
        https_port: l.uint("https_port", 443, 1, 65535) as u16,
        strip_cache_tags: l.bool("strip_cache_tags", true),
        own_error_pages: l.bool("own_error_pages", false),
        http2,
    }
}

/// A route's destination: `pool = "NAME"`, or `agent` + `service` (a service the agent
/// publishes, reached through its tunnel).
fn read_destination(r: &Section<'_>, pools: &[&str]) -> (Option<String>, Option<RouteAgent>) {
    if !r.has("agent") && !r.has("service") {
        let pool = super::l4::read_pool_ref(r, "pool", pools);
        if !r.has("pool") {
            r.error_here("`pool` is required (or `agent` and `service`)");
        }
        return (pool, None);
    }
    if r.has("pool") {
        r.error_at("pool", "a route goes to a pool or an agent, not both");
        let _ = r.string("pool");
    }
    let name = |key: &str| {
        let v = r.string(key);
        match &v {
            Some(n) if !crate::tunnel::proto::valid_name(n) => {
                r.error_at(key, "a name is 1-64 of A-Z a-z 0-9 . _ -");
                None
            }
            Some(_) => v,
            None => {
                r.error_here(format!("`{key}` is required with `agent` or `service`"));
                None
            }
        }
    };
    let (agent, service) = (name("agent"), name("service"));
    let send_proxy = super::l4::read_proxy_version(r, "send_proxy");
    match (agent, service) {
        (Some(agent), Some(service)) => (
            Some(format!("agent:{agent}/{service}")),
            Some(RouteAgent {
                agent,
                service,
                send_proxy,
            }),
        ),
        _ => (None, None),
    }
}

fn read_route(r: &Section<'_>, pools: &[&str]) -> Option<RouteConfig> {
    let path = r.string("path").unwrap_or_else(|| "/".into());
    if !path.starts_with('/') {
        r.error_at("path", "must start with /");
    }
    let regex = r.parse("regex", "a regular expression", |v| {
        let s = v.as_str().ok_or("not a string")?;
        regex::Regex::new(s)
            .map(PathRegex)
            .map_err(|e| e.to_string())
    });
    let methods = r
        .array("methods", "a method such as \"GET\"", |v| {
            let s = v.as_str().ok_or("not a string")?;
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err("not a method".into());
            }
            Ok(s.to_ascii_uppercase())
        })
        .unwrap_or_default();
    let headers = {
        let t = r.table("headers");
        let mut out = Vec::new();
        for name in t.keys() {
            if let Err(e) = crate::policy::headers::check_name(&name) {
                t.error_at(&name, e);
            }
            if let Some(v) = t.string(&name) {
                out.push((name.to_ascii_lowercase(), v));
            }
        }
        t.finish();
        out
    };
    let (pool, agent) = read_destination(r, pools);
    let prefix = |key: &str| {
        let v = r.string(key)?;
        if !v.starts_with('/') {
            r.error_at(key, "must start with /");
        }
        Some(v)
    };
    let strip_prefix = prefix("strip_prefix");
    let replace_prefix = prefix("replace_prefix");
    if replace_prefix.is_some() && strip_prefix.is_none() {
        r.error_at(
            "replace_prefix",
            "needs `strip_prefix` (the prefix it replaces)",
        );
    }
    let host = r.string("host");
    if let Some(h) = &host {
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic()) {
            r.error_at("host", "not a host name");
        }
    }
    let cache_key = read_cache_key(&r.table("cache_key"));
    let cache = r.bool("cache", false);
    if !cache && r.has("cache_key") {
        r.error_at("cache_key", "needs `cache = true`");
    }
    let request_headers = crate::policy::read_edits(&r.table("request_headers"));
    let response_headers = crate::policy::read_edits(&r.table("response_headers"));
    let name = r.string("name");
    if let Some(n) = &name {
        if n.is_empty() || n.len() > 128 || !n.bytes().all(|b| b.is_ascii_graphic()) {
            r.error_at("name", "1 to 128 printable characters without spaces");
        }
    }
    let route = RouteConfig {
        name,
        path,
        regex,
        methods,
        headers,
        pool: pool?,
        agent,
        strip_prefix,
        replace_prefix,
        host,
        request_headers,
        response_headers,
        cache,
        cache_key,
        retry_body_bytes: r.size("retry_body_bytes", 0).min(16 * 1024 * 1024),
    };
    r.finish();
    Some(route)
}

fn parse_host_name(v: &toml_edit::Value) -> Result<HostName, String> {
    let s = v
        .as_str()
        .ok_or("not a string")?
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let (name, suffix) = match s.strip_prefix("*.") {
        Some(n) => (n, true),
        None => (s.as_str(), false),
    };
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err("not a host name or *.suffix".into());
    }
    Ok(if suffix {
        HostName::Suffix(name.to_string())
    } else {
        HostName::Exact(name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ListenerKind};

    const POOL: &str =
        "[[pools]]\nname = \"app\"\n[[pools.servers]]\naddress = \"127.0.0.1:9001\"\n";

    fn reverse(extra: &str) -> Result<ReverseListenerConfig, Vec<String>> {
        let text = format!(
            "{POOL}[[listeners]]\nname = \"r\"\nkind = \"reverse\"\nlisten = \"127.0.0.1:0\"\n{extra}\n"
        );
        Config::parse(&text)
            .map(|c| match &c.listeners[0].kind {
                ListenerKind::Reverse(r) => (**r).clone(),
                other => panic!("not reverse: {other:?}"),
            })
            .map_err(|e| e.into_iter().map(|e| e.path).collect())
    }

    const HOST: &str =
        "[[listeners.hosts]]\nnames = [\"a.test\"]\n[[listeners.hosts.routes]]\npool = \"app\"\n";

    #[test]
    fn tls_offers_h2_unless_disabled_and_redirect_is_for_plain_listeners() {
        let r = reverse(&format!(
            "handshake_timeout = \"3s\"\n[listeners.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n{HOST}"
        ))
        .expect("valid");
        let tls = r.tls.expect("tls");
        assert_eq!(tls.alpn, ["h2", "http/1.1"]);
        assert_eq!(r.http2, Http2Config::default());
        assert_eq!(r.handshake_timeout, Duration::from_secs(3));
        let r = reverse(&format!(
            "[listeners.http2]\nenabled = false\n[listeners.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n{HOST}"
        ))
        .expect("valid");
        assert_eq!(r.tls.expect("tls").alpn, ["http/1.1"]);
        let r = reverse(&format!(
            "[listeners.http2]\nh2c = true\nmax_concurrent_streams = 8\nmax_header_list_size = \"4KiB\"\n{HOST}"
        ))
        .expect("valid");
        assert!(r.http2.h2c && r.http2.enabled);
        assert_eq!(
            (r.http2.max_concurrent_streams, r.http2.max_header_list_size),
            (8, 4096)
        );
        assert_eq!(
            reverse(&format!(
                "[listeners.http2]\nmax_concurrent_streams = 0\nbogus = 1\n{HOST}"
            ))
            .err()
            .map(|e| e.len()),
            Some(2)
        );
        assert!(reverse(&format!(
            "[listeners.http2]\nenabled = false\n[listeners.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nalpn = [\"h2\"]\n{HOST}"
        ))
        .is_err());
        assert!(!r.redirect_https);
        let r =
            reverse(&format!("redirect_https = true\nhttps_port = 8443\n{HOST}")).expect("valid");
        assert!(r.redirect_https && r.tls.is_none());
        assert_eq!(r.https_port, 8443);
        assert_eq!(reverse(HOST).expect("valid").https_port, 443);
        assert_eq!(
            reverse(&format!(
                "redirect_https = true\n[listeners.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n{HOST}"
            ))
            .err(),
            Some(vec!["listeners[0].redirect_https".to_string()])
        );
    }

    #[test]
    fn full_listener_parses() {
        let r = reverse(
            r#"
trusted_proxies = ["10.0.0.0/8"]
forwarded = "rfc7239"
max_body = "1MiB"
retries = 1
[[listeners.hosts]]
names = ["App.Test.", "*.app.test"]
[[listeners.hosts.routes]]
path = "/api"
regex = "^/api/v[0-9]+/"
methods = ["get", "POST"]
headers = { "X-Canary" = "1" }
pool = "app"
strip_prefix = "/api"
replace_prefix = "/v2"
host = "internal"
cache = true
cache_key = { ignore_query = ["utm_*", "fbclid"], headers = ["X-Device"], cookies = ["lang"] }
retry_body_bytes = "64KiB"
request_headers = { set = { "X-From" = "edge" } }
response_headers = { remove = ["X-Debug"] }
[listeners.default]
pool = "app"
"#,
        )
        .expect("valid");
        assert_eq!(
            r.hosts[0].names,
            [
                HostName::Exact("app.test".into()),
                HostName::Suffix("app.test".into())
            ]
        );
        let route = &r.hosts[0].routes[0];
        assert_eq!(route.methods, ["GET", "POST"]);
        assert_eq!(route.headers, [("x-canary".into(), "1".into())]);
        assert_eq!(route.retry_body_bytes, 64 * 1024);
        assert_eq!(route.request_headers.set[0].0, "X-From");
        assert!(route.cache);
        assert_eq!(
            route.cache_key.ignore_query,
            crate::cache::profile::IgnoreQuery::Names(vec!["utm_*".into(), "fbclid".into()])
        );
        assert_eq!(route.cache_key.headers, ["x-device"]);
        assert_eq!(route.cache_key.cookies, ["lang"]);
        assert_eq!(r.forwarded, ForwardedMode::Rfc7239);
        assert_eq!(r.max_body, Some(1024 * 1024));
        assert_eq!(r.hide_headers[0], "server");
        assert!(r.default.is_some());
        assert!(r.http.via.is_none(), "no Via unless asked for");
    }

    #[test]
    fn a_route_may_go_through_an_agent_it_names() {
        const TUNNEL: &str = "[[listeners]]\nname = \"t\"\nkind = \"tunnel\"\nlisten = \"127.0.0.1:0\"\ntls = { cert = \"c\", key = \"k\" }\n[[listeners.agents]]\nname = \"office\"\ntoken = \"x\"\n";
        let route = |extra: &str| {
            format!("[[listeners.hosts]]\nnames = [\"a.test\"]\n[[listeners.hosts.routes]]\n{extra}\n{TUNNEL}")
        };
        let r = reverse(&route("agent = \"office\"\nservice = \"web\"")).expect("valid");
        let r0 = &r.hosts[0].routes[0];
        assert_eq!(
            r0.agent,
            Some(RouteAgent {
                agent: "office".into(),
                service: "web".into(),
                send_proxy: None,
            })
        );
        assert_eq!(r0.pool, "agent:office/web");
        let r = reverse(&route(
            "agent = \"office\"\nservice = \"web\"\nsend_proxy = \"v2\"",
        ))
        .expect("valid");
        let via = r.hosts[0].routes[0].agent.as_ref().expect("agent");
        assert_eq!(via.send_proxy, Some(super::super::ProxyVersion::V2));
        let bad = |extra: &str| {
            let mut e = reverse(&route(extra)).expect_err("bad");
            e.sort();
            e
        };
        assert_eq!(
            bad("agent = \"home\"\nservice = \"web\""),
            ["listeners[0].hosts[0].routes[0].agent"],
            "no tunnel listener accepts it"
        );
        assert_eq!(
            bad("agent = \"office\""),
            ["listeners[0].hosts[0].routes[0]"],
            "no service"
        );
        assert_eq!(
            bad("agent = \"office\"\nservice = \"a b\""),
            ["listeners[0].hosts[0].routes[0].service"]
        );
        assert_eq!(
            bad("agent = \"office\"\nservice = \"web\"\npool = \"app\""),
            ["listeners[0].hosts[0].routes[0].pool"]
        );
        let d = reverse(&format!(
            "[listeners.default]\nagent = \"nobody\"\nservice = \"web\"\n{TUNNEL}"
        ))
        .expect_err("bad");
        assert_eq!(d, ["listeners[0].default.agent"]);
    }

    #[test]
    fn bad_settings_reported_with_paths() {
        let route = |extra: &str| {
            format!("[[listeners.hosts]]\nnames = [\"a.test\"]\n[[listeners.hosts.routes]]\npool = \"app\"\n{extra}")
        };
        assert_eq!(
            reverse(&route("regex = \"(\"")).expect_err("bad"),
            ["listeners[0].hosts[0].routes[0].regex"]
        );
        assert_eq!(
            reverse("[[listeners.hosts]]\nnames = [\"a.test\"]\n[[listeners.hosts.routes]]\npool = \"nope\"\n")
                .expect_err("bad"),
            ["listeners[0].hosts[0].routes[0].pool"]
        );
        assert_eq!(
            reverse(&route("replace_prefix = \"/x\"")).expect_err("bad"),
            ["listeners[0].hosts[0].routes[0].replace_prefix"]
        );
        assert_eq!(
            reverse("forwarded = \"sometimes\"").expect_err("bad"),
            ["listeners[0].forwarded"]
        );
        assert_eq!(
            reverse("[[listeners.hosts]]\nnames = [\"a b\"]\n[[listeners.hosts.routes]]\npool = \"app\"\n")
                .expect_err("bad"),
            ["listeners[0].hosts[0].names[0]"]
        );
        assert_eq!(
            reverse(&route("cache_key = { headers = [\"X\"] }")).expect_err("bad"),
            ["listeners[0].hosts[0].routes[0].cache_key"]
        );
        let mut errs = reverse(&route(
            "cache = true\ncache_key = { ignore_query = [\"\"], headers = [\"a b\"], cookies = [\"a;b\"], x = 1 }",
        ))
        .expect_err("bad");
        errs.sort();
        assert_eq!(
            errs,
            [
                "listeners[0].hosts[0].routes[0].cache_key.cookies[0]",
                "listeners[0].hosts[0].routes[0].cache_key.headers[0]",
                "listeners[0].hosts[0].routes[0].cache_key.ignore_query",
                "listeners[0].hosts[0].routes[0].cache_key.x",
            ]
        );
        let ok =
            reverse(&route("cache = true\ncache_key = { ignore_query = true }")).expect("valid");
        assert_eq!(
            ok.hosts[0].routes[0].cache_key.ignore_query,
            crate::cache::profile::IgnoreQuery::All
        );
        assert_eq!(
            reverse(&route("colour = 1")).expect_err("bad"),
            ["listeners[0].hosts[0].routes[0].colour"]
        );
    }
}
