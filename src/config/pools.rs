//! `[[pools]]`: named groups of upstream servers shared by every balancing listener (`tcp`,
//! `udp`, and later the reverse proxy), with their algorithm and health checks.

use std::time::Duration;

use super::reader::Section;
pub use crate::balance::HashKey;
use crate::balance::{Algorithm, Expect, PassiveSettings, StatusRanges};
use crate::connector::Host;

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub servers: Vec<ServerConfig>,
    pub algorithm: Algorithm,
    /// What `hash` hashes. Layer 4 knows only the client address.
    pub hash_key: HashKey,
    /// Retries may add at most this share of the recent requests (0.2: 20%)...
    pub retry_budget: f64,
    /// ...plus this many per second however few requests come.
    pub min_retries_per_sec: u32,
    /// Sticky sessions by cookie (HTTP only).
    pub sticky: Option<StickyConfig>,
    /// HTTP: a server must start its response head within this time of the request being sent.
    pub first_byte_timeout: Duration,
    /// HTTP: an idle keep-alive connection to a server is closed after this time.
    pub idle_timeout: Duration,
    /// Pick among all servers, ignoring health, when none is healthy.
    pub fail_open: bool,
    /// A server that comes back ramps from a tenth of its weight to all of it over this time.
    pub slow_start: Duration,
    /// Bound on one connection attempt to one server.
    pub connect_timeout: Duration,
    /// Active checks; `None`: servers are up unless passive checks eject them.
    pub health: Option<HealthCheckConfig>,
    pub passive: PassiveSettings,
    /// `[pools.tls]`: TLS to the servers (the `tcp` listener re-encrypts with it).
    pub tls: Option<super::ClientTls>,
    /// A PROXY protocol header (v1 or v2) at the start of every connection to a server,
    /// saying who the client is (in the clear, before any TLS).
    pub proxy_protocol: Option<super::ProxyVersion>,
    /// `protocol = "h2"`: the reverse proxy speaks HTTP/2 to the servers (ALPN `h2` over
    /// `[pools.tls]`, prior knowledge in the clear), many requests per connection.
    pub h2: bool,
    /// `websocket`: how a WebSocket goes to a server of an `h2` pool (HAProxy's `ws`).
    pub websocket: WebsocketMode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// An IP address or a name (resolved through `[dns]`, `[dns.hosts]` first, on each connect;
    /// the connector caches answers for their TTL).
    pub host: Host,
    pub port: u16,
    pub weight: u32,
    /// `agent` + `service`: a service a tunnel agent publishes, reached through the agent
    /// (reverse proxy only); `host` is then the agent's name and `port` 0.
    pub agent: Option<super::RouteAgent>,
}

impl ServerConfig {
    /// `host:port` as written in metrics and logs; `agent:AGENT/SERVICE` through an agent.
    pub fn label(&self) -> String {
        match &self.agent {
            Some(a) => format!("agent:{}/{}", a.agent, a.service),
            None => format!("{}:{}", self.host, self.port),
        }
    }
}

impl PoolConfig {
    /// Whether a server of this pool is reached through a tunnel agent.
    pub fn has_agent_servers(&self) -> bool {
        self.servers.iter().any(|s| s.agent.is_some())
    }
}

/// `[pools.sticky]`: a cookie pins a client to the server that first answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyConfig {
    /// The cookie's name (`GH_SRV` by default).
    pub cookie: String,
    /// `Max-Age` of the cookie; `None`: a session cookie.
    pub max_age: Option<Duration>,
    /// Mixed into the server tokens so they cannot be matched against guessed addresses.
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// A TCP connect succeeds within the timeout.
    Tcp,
    /// An HTTP/1.1 request gets an expected answer within the timeout.
    Http(HttpCheck),
}

/// `type = "http"`: one request per check on a new connection (`Connection: close`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    /// `GET` or `HEAD`.
    pub method: String,
    /// Origin-form target, e.g. `/healthz`.
    pub path: String,
    /// The Host header; `None`: the server's `host:port`.
    pub host: Option<String>,
    pub expect: Expect,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a down server up.
    pub rise: u32,
    /// Consecutive failures that take an up server down.
    pub fall: u32,
    /// Each wait between checks is lengthened by a random amount up to this, so checks of
    /// many servers do not fire together.
    pub jitter: Duration,
    /// `init_state`: health before the first check, for servers at start and added by a
    /// reload (`None`: fully up at start, up on probation when added).
    pub init_state: Option<crate::balance::InitState>,
}

/// A pool's `websocket` (HAProxy's server `ws` keyword): how a WebSocket goes to a server
/// of an `h2` pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WebsocketMode {
    /// RFC 8441 extended CONNECT when the server announced it, else HTTP/1.1 Upgrade on a
    /// connection of its own.
    #[default]
    Auto,
    /// Always HTTP/1.1 Upgrade on a connection of its own.
    H1,
    /// Only extended CONNECT: a server that did not announce it gets none (502).
    H2,
}

pub(super) fn read_pools(root: &Section<'_>) -> Vec<PoolConfig> {
    let mut pools: Vec<PoolConfig> = Vec::new();
    for p in root.tables("pools") {
        if let Some(cfg) = read_pool(&p) {
            if pools.iter().any(|o| o.name == cfg.name) {
                p.error_at("name", format!("duplicate pool name {:?}", cfg.name));
            }
            pools.push(cfg);
        }
        p.finish();
    }
    pools
}

fn read_pool(p: &Section<'_>) -> Option<PoolConfig> {
    let name = p.string("name");
    if !p.has("name") {
        p.error_here("`name` is required");
    }
    let mut servers = Vec::new();
    let sections = p.tables("servers");
    if sections.is_empty() {
        p.error_here("at least one [[pools.servers]] entry is required");
    }
    for s in sections {
        if let Some(srv) = read_server(&s) {
            servers.push(srv);
        }
        s.finish();
    }
    let algorithm = match p.string("algorithm").as_deref() {
        None | Some("round-robin") => Algorithm::RoundRobin,
        Some("least-requests") | Some("least-connections") => Algorithm::LeastRequests,
        Some("p2c-ewma") => Algorithm::P2cEwma,
        Some("random") => Algorithm::Random,
        Some("hash") => Algorithm::Hash {
            balance_factor: None,
        },
        Some(other) => {
            p.error_at(
                "algorithm",
                format!(
                    "unknown algorithm {other:?}; expected \"round-robin\", \"least-requests\", \
                     \"p2c-ewma\", \"hash\" or \"random\""
                ),
            );
            Algorithm::RoundRobin
        }
    };
    let hash_key = p
        .parse(
            "hash_key",
            "\"client_ip\", \"header:NAME\", \"cookie:NAME\" or \"path\"",
            |v| HashKey::parse(v.as_str().ok_or("not a string")?),
        )
        .unwrap_or(HashKey::ClientIp);
    let algorithm = match algorithm {
        Algorithm::Hash { .. } if p.has("hash_balance_factor") => Algorithm::Hash {
            balance_factor: Some(p.uint("hash_balance_factor", 150, 101, 10_000) as u32),
        },
        a => {
            if p.has("hash_balance_factor") {
                p.error_at(
                    "hash_balance_factor",
                    "only applies with algorithm = \"hash\"",
                );
            }
            a
        }
    };
    let health = if p.has_table("health") {
        let h = p.table("health");
        // `kind` is accepted as another spelling of `type`.
        let type_key = if h.has("kind") && !h.has("type") {
            "kind"
        } else {
            "type"
        };
        let kind = match h.string(type_key).as_deref() {
            None | Some("tcp") => {
                for key in HTTP_CHECK_KEYS {
                    if h.has(key) {
                        h.error_at(key, "only applies with type = \"http\"");
                        // Read, so it is not reported a second time as unknown.
                        let _ = h.get(key, "", |_| Some(()));
                    }
                }
                HealthCheckKind::Tcp
            }
            Some("http") => HealthCheckKind::Http(read_http_check(&h)),
            Some(other) => {
                h.error_at(
                    type_key,
                    format!("unknown health check type {other:?}; expected \"tcp\" or \"http\""),
                );
                HealthCheckKind::Tcp
            }
        };
        let interval = h.duration("interval", Duration::from_secs(5));
        if interval < Duration::from_millis(10) {
            h.error_at("interval", "must be at least 10ms");
        }
        let cfg = HealthCheckConfig {
            kind,
            interval,
            timeout: h.duration("timeout", Duration::from_secs(2)),
            rise: h.uint("rise", 2, 1, 100) as u32,
            fall: h.uint("fall", 3, 1, 100) as u32,
            jitter: h.duration("jitter", Duration::ZERO),
            init_state: h.parse(
                "init_state",
                "\"fully-up\", \"up\", \"down\" or \"fully-down\"",
                |v| {
                    use crate::balance::InitState;
                    match v.as_str() {
                        Some("fully-up") => Ok(InitState::FullyUp),
                        Some("up") => Ok(InitState::Up),
                        Some("down") => Ok(InitState::Down),
                        Some("fully-down") => Ok(InitState::FullyDown),
                        _ => {
                            Err("expected \"fully-up\", \"up\", \"down\" or \"fully-down\"".into())
                        }
                    }
                },
            ),
        };
        h.finish();
        Some(cfg)
    } else {
        None
    };
    let passive = {
        let d = PassiveSettings::default();
        let s = p.table("passive");
        let cfg = PassiveSettings {
            max_failures: s.uint("max_failures", u64::from(d.max_failures), 0, 1000) as u32,
            base_ejection: s.duration("ejection", d.base_ejection),
            max_ejection: s.duration("max_ejection", d.max_ejection),
            on_5xx: s.bool("on_5xx", d.on_5xx),
        };
        if cfg.max_ejection < cfg.base_ejection {
            s.error_at("max_ejection", "is shorter than `ejection`");
        }
        s.finish();
        cfg
    };
    let fail_open = p.bool("fail_open", false);
    let slow_start = p.duration("slow_start", Duration::ZERO);
    let connect_timeout = p.duration("connect_timeout", Duration::from_secs(5));
    let retry_budget = p
        .get("retry_budget", "a number from 0 to 1", |v| {
            v.as_float()
                .or_else(|| v.as_integer().map(|i| i as f64))
                .filter(|f| (0.0..=1.0).contains(f))
        })
        .unwrap_or(0.2);
    let min_retries_per_sec = p.uint("min_retries_per_sec", 10, 0, 100_000) as u32;
    let sticky = p.has_table("sticky").then(|| {
        let s = p.table("sticky");
        let cookie = s
            .parse("cookie", "a cookie name", |v| {
                let c = v.as_str().ok_or("not a string")?;
                let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
                if c.is_empty() || c.len() > 64 || !c.bytes().all(token) {
                    return Err("not a token of at most 64 characters".into());
                }
                Ok(c.to_string())
            })
            .unwrap_or_else(|| "GH_SRV".into());
        let max_age = s
            .has("max_age")
            .then(|| s.duration("max_age", Duration::ZERO));
        let secret = s.string("secret").unwrap_or_default();
        s.finish();
        StickyConfig {
            cookie,
            max_age,
            secret,
        }
    });
    let first_byte_timeout = p.duration("first_byte_timeout", Duration::from_secs(60));
    let idle_timeout = p.duration("idle_timeout", Duration::from_secs(60));
    let proxy_protocol = super::l4::read_proxy_version(p, "proxy_protocol");
    let h2 = match p.string("protocol").as_deref() {
        None | Some("http1") => false,
        Some("h2") => true,
        Some(other) => {
            p.error_at("protocol", format!("{other:?} is not \"http1\" or \"h2\""));
            false
        }
    };
    let websocket = match p.string("websocket").as_deref() {
        None | Some("auto") => WebsocketMode::Auto,
        Some("h1") => WebsocketMode::H1,
        Some("h2") if h2 => WebsocketMode::H2,
        Some("h2") => {
            p.error_at("websocket", "\"h2\" needs protocol = \"h2\"");
            WebsocketMode::Auto
        }
        Some(other) => {
            p.error_at(
                "websocket",
                format!("{other:?} is not \"auto\", \"h1\" or \"h2\""),
            );
            WebsocketMode::Auto
        }
    };
    let mut tls = super::tls::read_client_tls(p);
    if let (true, Some(t)) = (h2, tls.as_mut()) {
        // HTTP/2 over TLS is chosen by ALPN (RFC 9113 section 3.2).
        if t.alpn.is_empty() {
            t.alpn = vec!["h2".into()];
        } else if !t.alpn.iter().any(|a| a == "h2") {
            p.error_at("tls.alpn", "must offer \"h2\" with protocol = \"h2\"");
        }
    }
    if servers.iter().any(|s| s.agent.is_some()) {
        // The stream through the agent is the connection: nothing to encrypt (the link is).
        // A PROXY header goes first on the stream, as on a connection.
        for key in ["tls", "protocol"] {
            let set = match key {
                "tls" => tls.is_some(),
                _ => h2,
            };
            if set {
                p.error_at(key, "not with servers reached through an agent");
            }
        }
    }
    let cfg = PoolConfig {
        name: name?,
        servers,
        algorithm,
        hash_key,
        retry_budget,
        min_retries_per_sec,
        sticky,
        first_byte_timeout,
        idle_timeout,
        fail_open,
        slow_start,
        connect_timeout,
        health,
        passive,
        tls,
        proxy_protocol,
        h2,
        websocket,
    };
    Some(cfg)
}

/// The keys only an HTTP check reads.
const HTTP_CHECK_KEYS: [&str; 5] = ["method", "path", "host", "expect_status", "expect_body"];

fn read_http_check(h: &Section<'_>) -> HttpCheck {
    let method = match h.string("method").as_deref() {
        None | Some("GET") => "GET",
        Some("HEAD") => "HEAD",
        Some(other) => {
            h.error_at(
                "method",
                format!("expected \"GET\" or \"HEAD\", found {other:?}"),
            );
            "GET"
        }
    };
    let path = h
        .parse("path", "a path such as \"/healthz\"", |v| {
            let p = v.as_str().ok_or("not a string")?;
            if !p.starts_with('/') || p.len() > 2048 || !p.bytes().all(|b| b.is_ascii_graphic()) {
                return Err("must start with / and hold only visible ASCII".into());
            }
            Ok(p.to_string())
        })
        .unwrap_or_else(|| "/".into());
    let host = h.parse("host", "a Host header value such as \"app.test\"", |v| {
        let s = v.as_str().ok_or("not a string")?;
        if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("empty, too long or not visible ASCII".into());
        }
        Ok(s.to_string())
    });
    let status = h
        .parse(
            "expect_status",
            "statuses such as \"200-399\" or [\"200\", \"204\"]",
            |v| {
                let one = |v: &toml_edit::Value| -> Result<String, String> {
                    match (v.as_str(), v.as_integer()) {
                        (Some(s), _) => Ok(s.to_string()),
                        (_, Some(i)) => Ok(i.to_string()),
                        _ => Err("not a string or integer".into()),
                    }
                };
                let items: Vec<String> = match v.as_array() {
                    Some(a) => a.iter().map(one).collect::<Result<_, _>>()?,
                    None => vec![one(v)?],
                };
                StatusRanges::parse_list(items.iter().map(String::as_str))
            },
        )
        .unwrap_or_default();
    let body = h.parse("expect_body", "a non-empty string", |v| {
        let s = v.as_str().ok_or("not a string")?;
        if s.is_empty() || s.len() > 1024 {
            return Err("empty or longer than 1024 bytes".into());
        }
        Ok(s.as_bytes().to_vec())
    });
    if method == "HEAD" && body.is_some() {
        h.error_at(
            "expect_body",
            "a HEAD response has no body: use method = \"GET\"",
        );
    }
    HttpCheck {
        method: method.to_string(),
        path,
        host,
        expect: Expect { status, body },
    }
}

fn read_server(s: &Section<'_>) -> Option<ServerConfig> {
    if s.has("agent") || s.has("service") {
        return read_agent_server(s);
    }
    let addr = s.parse(
        "address",
        "\"ip:port\", \"[ipv6]:port\" or \"name:port\"",
        parse_host_port,
    );
    if !s.has("address") {
        s.error_here("`address` is required");
    }
    let weight = s.uint("weight", 1, 1, 1000) as u32;
    let (host, port) = addr?;
    Some(ServerConfig {
        host,
        port,
        weight,
        agent: None,
    })
}

/// `agent = "office"` + `service = "web"` in place of `address` (frp's `customDomains`
/// backends, an nginx `upstream` whose server is a tunnel).
fn read_agent_server(s: &Section<'_>) -> Option<ServerConfig> {
    if s.has("address") {
        s.error_at(
            "address",
            "a server is an `address` or an `agent`, not both",
        );
        let _ = s.string("address");
    }
    let name = |key: &str| {
        let v = s.string(key);
        match &v {
            Some(n) if !crate::tunnel::proto::valid_name(n) => {
                s.error_at(key, "a name is 1-64 of A-Z a-z 0-9 . _ -");
                None
            }
            Some(_) => v,
            None => {
                s.error_here(format!("`{key}` is required with `agent` or `service`"));
                None
            }
        }
    };
    let (agent, service) = (name("agent"), name("service"));
    let weight = s.uint("weight", 1, 1, 1000) as u32;
    let (agent, service) = (agent?, service?);
    Some(ServerConfig {
        host: Host::Name(agent.clone()),
        port: 0,
        weight,
        agent: Some(super::RouteAgent {
            agent,
            service,
            // The pool's `proxy_protocol` applies.
            send_proxy: None,
        }),
    })
}

/// `"10.0.0.1:5432"`, `"[::1]:53"` or `"db.internal:5432"`.
pub(crate) fn parse_host_port(v: &toml_edit::Value) -> Result<(Host, u16), String> {
    let s = v.as_str().ok_or("not a string")?;
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Ok((Host::Ip(sa.ip()), sa.port()));
    }
    let (h, p) = s.rsplit_once(':').ok_or("no port")?;
    let port: u16 = p.parse().map_err(|_| "bad port".to_string())?;
    if port == 0 {
        return Err("port 0".into());
    }
    match Host::parse(h) {
        Some(host @ Host::Name(_)) => Ok((host, port)),
        _ => Err("not a host name".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::Config;

    const LISTENER: &str =
        "[[listeners]]\nname = \"t\"\nkind = \"tcp\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n";

    fn paths(pool: &str) -> Vec<String> {
        Config::parse(&format!("{LISTENER}{pool}"))
            .expect_err("invalid")
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    #[test]
    fn full_pool_parses() {
        let c = Config::parse(&format!(
            "{LISTENER}
[[pools]]
name = \"p\"
algorithm = \"hash\"
hash_balance_factor = 150
fail_open = true
slow_start = \"30s\"
connect_timeout = \"2s\"
[[pools.servers]]
address = \"127.0.0.1:9101\"
weight = 3
[[pools.servers]]
address = \"db.internal:5432\"
[pools.health]
type = \"tcp\"
interval = \"1s\"
rise = 2
fall = 2
jitter = \"100ms\"
init_state = \"fully-down\"
[pools.passive]
max_failures = 2
ejection = \"5s\"
"
        ))
        .expect("valid");
        let p = &c.pools[0];
        assert_eq!(
            p.algorithm,
            crate::balance::Algorithm::Hash {
                balance_factor: Some(150)
            }
        );
        assert_eq!(p.servers[0].weight, 3);
        assert_eq!(p.servers[1].label(), "db.internal:5432");
        let h = p.health.as_ref().expect("health");
        assert_eq!((h.rise, h.fall), (2, 2));
        assert_eq!(h.init_state, Some(crate::balance::InitState::FullyDown));
        assert_eq!(p.passive.max_failures, 2);
        assert!(p.fail_open);
    }

    #[test]
    fn bad_pools_reported_with_paths() {
        let srv = "[[pools.servers]]\naddress = \"127.0.0.1:1\"\n";
        assert_eq!(
            paths(&format!(
                "[[pools]]\nname = \"p\"\nalgorithm = \"fastest\"\n{srv}"
            )),
            ["pools[0].algorithm"]
        );
        assert_eq!(
            paths("[[pools]]\nname = \"p\"\n[[pools.servers]]\naddress = \"nope\"\n"),
            ["pools[0].servers[0].address"]
        );
        assert_eq!(
            paths(&format!("[[pools]]\nname = \"p\"\ncolour = 1\n{srv}")),
            ["pools[0].colour"]
        );
        assert_eq!(
            paths(&format!(
                "[[pools]]\nname = \"p\"\n{srv}[pools.health]\ntype = \"udp\"\nrise = 0\n"
            )),
            ["pools[0].health.type", "pools[0].health.rise"]
        );
        assert_eq!(
            paths(&format!(
                "[[pools]]\nname = \"p\"\n{srv}[pools.health]\ninit_state = \"maybe\"\n"
            )),
            ["pools[0].health.init_state"]
        );
        // `websocket = "h2"` needs an h2 pool; anything but auto, h1, h2 is refused.
        for bad in [
            "websocket = \"h2\"\n",
            "protocol = \"h2\"\nwebsocket = \"h3\"\n",
        ] {
            assert_eq!(
                paths(&format!("[[pools]]\nname = \"p\"\n{bad}{srv}")),
                ["pools[0].websocket"],
                "{bad}"
            );
        }
        assert_eq!(
            paths(&format!(
                "[[pools]]\nname = \"p\"\n{srv}[[pools]]\nname = \"p\"\n{srv}"
            )),
            ["pools[1].name"]
        );
        assert_eq!(paths("[[pools]]\nname = \"p\"\n"), ["pools[0]"]);
    }

    const SRV: &str = "[[pools.servers]]\naddress = \"127.0.0.1:1\"\n";

    fn pool_only(pool: &str) -> Result<crate::config::PoolConfig, Vec<String>> {
        // A listener that does not use the pool, so any hash key is allowed.
        let other = "[[pools]]\nname = \"p\"\n[[pools.servers]]\naddress = \"127.0.0.1:2\"\n";
        Config::parse(&format!("{LISTENER}{other}{pool}"))
            .map(|c| c.pools[1].clone())
            .map_err(|e| e.into_iter().map(|e| e.path).collect())
    }

    #[test]
    fn http_pool_keys_parse() {
        let p = pool_only(&format!(
            "[[pools]]
name = \"web\"
algorithm = \"hash\"
hash_key = \"cookie:sid\"
retry_budget = 0.1
min_retries_per_sec = 3
first_byte_timeout = \"15s\"
idle_timeout = \"30s\"
{SRV}[pools.health]
kind = \"http\"
method = \"GET\"
path = \"/healthz?full=1\"
host = \"app.test\"
expect_status = [\"200\", 204, \"301-302\"]
expect_body = \"ok\"
[pools.passive]
on_5xx = false
[pools.sticky]
cookie = \"SRV\"
max_age = \"1h\"
"
        ))
        .expect("valid");
        assert_eq!(p.hash_key, crate::balance::HashKey::Cookie("sid".into()));
        assert_eq!((p.retry_budget, p.min_retries_per_sec), (0.1, 3));
        assert_eq!(p.first_byte_timeout, Duration::from_secs(15));
        assert_eq!(p.idle_timeout, Duration::from_secs(30));
        assert!(!p.passive.on_5xx);
        let sticky = p.sticky.expect("sticky");
        assert_eq!(sticky.cookie, "SRV");
        assert_eq!(sticky.max_age, Some(Duration::from_secs(3600)));
        let Some(super::HealthCheckConfig {
            kind: super::HealthCheckKind::Http(c),
            ..
        }) = p.health
        else {
            panic!("http check expected");
        };
        assert_eq!(
            (c.method.as_str(), c.path.as_str()),
            ("GET", "/healthz?full=1")
        );
        assert_eq!(c.host.as_deref(), Some("app.test"));
        assert!(c.expect.status.contains(204) && c.expect.status.contains(302));
        assert!(!c.expect.status.contains(200 + 1));
        assert_eq!(c.expect.body.as_deref(), Some(&b"ok"[..]));

        // Defaults.
        let d = pool_only(&format!(
            "[[pools]]\nname = \"d\"\n{SRV}[pools.health]\ntype = \"http\"\n"
        ))
        .expect("valid");
        assert_eq!((d.retry_budget, d.min_retries_per_sec), (0.2, 10));
        assert_eq!(d.first_byte_timeout, Duration::from_secs(60));
        assert_eq!(d.idle_timeout, Duration::from_secs(60));
        assert!(d.passive.on_5xx && d.sticky.is_none());
        let Some(super::HealthCheckKind::Http(c)) = d.health.map(|h| h.kind) else {
            panic!("http check expected");
        };
        assert_eq!(
            (c.method.as_str(), c.path.as_str(), c.host),
            ("GET", "/", None)
        );
        assert!(c.expect.status.contains(200) && c.expect.status.contains(399));
        assert!(!c.expect.status.contains(400));
        let s =
            pool_only(&format!("[[pools]]\nname = \"s\"\n{SRV}[pools.sticky]\n")).expect("valid");
        assert_eq!(s.sticky.expect("sticky").cookie, "GH_SRV");
    }

    #[test]
    fn h2_pools_offer_h2_by_alpn() {
        let p = |body: &str| pool_only(&format!("[[pools]]\nname = \"h\"\n{body}{SRV}"));
        assert!(!p("").expect("valid").h2, "http1 by default");
        assert!(!p("protocol = \"http1\"\n").expect("valid").h2);
        let plain = p("protocol = \"h2\"\n").expect("valid");
        assert!(plain.h2 && plain.tls.is_none(), "h2c");
        let tls = p("protocol = \"h2\"\n[pools.tls]\nverify = false\n").expect("valid");
        assert_eq!(tls.tls.expect("tls").alpn, ["h2"]);
        assert_eq!(
            p("protocol = \"h3\"\n").expect_err("invalid"),
            ["pools[1].protocol"]
        );
        assert_eq!(
            p("protocol = \"h2\"\n[pools.tls]\nalpn = [\"http/1.1\"]\n").expect_err("invalid"),
            ["pools[1].tls.alpn"]
        );
    }

    #[test]
    fn bad_http_pool_keys_reported_with_paths() {
        let bad = |body: &str| {
            pool_only(&format!("[[pools]]\nname = \"w\"\n{body}{SRV}")).expect_err("invalid")
        };
        assert_eq!(
            bad(
                "[pools.health]\ntype = \"http\"\nmethod = \"POST\"\npath = \"healthz\"\n\
                 expect_status = \"2xx\"\nexpect_body = \"\"\nhost = \"a b\"\n"
            ),
            [
                "pools[1].health.method",
                "pools[1].health.path",
                "pools[1].health.host",
                "pools[1].health.expect_status",
                "pools[1].health.expect_body",
            ]
        );
        assert_eq!(
            bad("[pools.health]\nexpect_status = \"200\"\n"),
            ["pools[1].health.expect_status"],
            "HTTP keys with a TCP check"
        );
        assert_eq!(
            bad("[pools.health]\ntype = \"http\"\nexpect_status = [\"200\", \"600\"]\n"),
            ["pools[1].health.expect_status"]
        );
        assert_eq!(
            bad("[pools.health]\ntype = \"http\"\nmethod = \"HEAD\"\nexpect_body = \"ok\"\n"),
            ["pools[1].health.expect_body"]
        );
        assert_eq!(bad("retry_budget = 1.5\n"), ["pools[1].retry_budget"]);
        assert_eq!(bad("hash_key = \"header:\"\n"), ["pools[1].hash_key"]);
        assert_eq!(bad("hash_key = \"query\"\n"), ["pools[1].hash_key"]);
        assert_eq!(
            bad("[pools.sticky]\ncookie = \"a b\"\ncolour = 1\n"),
            ["pools[1].sticky.cookie", "pools[1].sticky.colour"]
        );
        assert_eq!(
            bad("[pools.passive]\non_5xx = 1\n"),
            ["pools[1].passive.on_5xx"]
        );
    }

    #[test]
    fn layer_4_listeners_refuse_request_hash_keys() {
        for key in ["header:X-User", "cookie:sid", "path"] {
            let text = format!(
                "{LISTENER}[[pools]]\nname = \"p\"\nalgorithm = \"hash\"\nhash_key = \"{key}\"\n{SRV}"
            );
            let errs = Config::parse(&text).expect_err("invalid");
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert_eq!(errs[0].path, "listeners[0].pool");
            assert!(errs[0].message.contains("client_ip"), "{}", errs[0].message);
        }
        let udp = format!(
            "[[listeners]]\nname = \"u\"\nkind = \"udp\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\nhash_key = \"path\"\n{SRV}"
        );
        assert_eq!(paths_of(&udp), ["listeners[0].pool"]);
        let sni = format!(
            "[[listeners]]\nname = \"t\"\nkind = \"tcp\"\nlisten = \"127.0.0.1:0\"\n\
             [[listeners.sni]]\nnames = [\"a.test\"]\npool = \"p\"\n\
             [[pools]]\nname = \"p\"\nhash_key = \"path\"\n{SRV}"
        );
        assert_eq!(paths_of(&sni), ["listeners[0].sni"]);
        // client_ip (either spelling) is fine at layer 4.
        for key in ["client_ip", "client-ip"] {
            Config::parse(&format!(
                "{LISTENER}[[pools]]\nname = \"p\"\nhash_key = \"{key}\"\n{SRV}"
            ))
            .expect("valid");
        }
    }

    fn paths_of(text: &str) -> Vec<String> {
        Config::parse(text)
            .expect_err("invalid")
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    const RELAY: &str = "[[listeners]]\nname = \"agents\"\nkind = \"tunnel\"\n\
                         listen = \"127.0.0.1:0\"\ntls = { cert = \"c\", key = \"k\" }\n\
                         [[listeners.agents]]\nname = \"office\"\ntoken = \"t\"\n\
                         [[listeners]]\nname = \"sites\"\nkind = \"reverse\"\n\
                         listen = \"127.0.0.1:0\"\n[listeners.default]\npool = \"p\"\n";

    #[test]
    fn a_server_may_be_a_service_through_an_agent() {
        let c = Config::parse(&format!(
            "{RELAY}[[pools]]\nname = \"p\"\n\
             [[pools.servers]]\nagent = \"office\"\nservice = \"web\"\nweight = 3\n\
             [[pools.servers]]\naddress = \"127.0.0.1:8000\"\n"
        ))
        .expect("valid");
        let s = &c.pools[0].servers;
        assert_eq!(s[0].label(), "agent:office/web");
        assert_eq!(s[0].weight, 3);
        assert_eq!(
            s[0].agent,
            Some(crate::config::RouteAgent {
                agent: "office".into(),
                service: "web".into(),
                send_proxy: None,
            })
        );
        assert_eq!(
            (s[1].label(), s[1].agent.is_none()),
            ("127.0.0.1:8000".into(), true)
        );
        assert!(c.pools[0].has_agent_servers());
    }

    #[test]
    fn agent_servers_are_checked() {
        let errs = |pool: &str, extra: &str| -> Vec<String> {
            Config::parse(&format!("{RELAY}{extra}[[pools]]\nname = \"p\"\n{pool}"))
                .expect_err("invalid")
                .into_iter()
                .map(|e| e.path)
                .collect()
        };
        let srv = "[[pools.servers]]\nagent = \"office\"\nservice = \"web\"\n";
        // Both spellings of a server, half of one, a bad name, an agent nobody accepts.
        assert_eq!(
            errs(&format!("{srv}address = \"127.0.0.1:1\"\n"), ""),
            ["pools[0].servers[0].address"]
        );
        assert_eq!(
            errs("[[pools.servers]]\nagent = \"office\"\n", ""),
            ["pools[0].servers[0]"]
        );
        assert_eq!(
            errs(
                "[[pools.servers]]\nagent = \"a b\"\nservice = \"web\"\n",
                ""
            ),
            ["pools[0].servers[0].agent"]
        );
        assert_eq!(
            errs(
                "[[pools.servers]]\nagent = \"home\"\nservice = \"web\"\n",
                ""
            ),
            ["pools[0].servers[0].agent"]
        );
        // Nothing to encrypt on a stream through an agent; a PROXY header may go first.
        let c = Config::parse(&format!(
            "{RELAY}[[pools]]\nname = \"p\"\nproxy_protocol = \"v2\"\n{srv}"
        ))
        .expect("valid");
        assert_eq!(
            c.pools[0].proxy_protocol,
            Some(super::super::ProxyVersion::V2)
        );
        assert_eq!(
            errs(&format!("protocol = \"h2\"\n{srv}"), ""),
            ["pools[0].protocol"]
        );
        // Layer 4 connects to addresses.
        let tcp = "[[listeners]]\nname = \"t\"\nkind = \"tcp\"\nlisten = \"127.0.0.1:0\"\n\
                   pool = \"p\"\n";
        assert_eq!(errs(srv, tcp), ["listeners"]);
    }
}
