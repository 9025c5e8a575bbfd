//! Configuration: the TOML file turned once into typed, checked values.
//!
//! Nothing outside this module sees a raw string from the file: durations, sizes, addresses and
//! port lists arrive already parsed. [`Config::parse`] reports every problem in the file at once.

mod l4;
mod pools;
pub(crate) mod reader;
mod reverse;
mod socks;
pub mod tls;
mod tunnel;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use l4::{ProxyVersion, SniRoute, TcpListenerConfig, UdpListenerConfig};
pub use pools::{
    HashKey, HealthCheckConfig, HealthCheckKind, HttpCheck, PoolConfig, ServerConfig, StickyConfig,
    WebsocketMode,
};
pub use reader::{ConfigError, KeyLines};
use reader::{Problems, Section};
pub use reverse::{
    ForwardedMode, HostName, Http2Config, PathRegex, ReverseListenerConfig, RouteAgent,
    RouteConfig, VhostConfig,
};
pub use socks::{AuthMethod, Password, SocksListenerConfig, SocksUser, UdpFilter};
pub use tls::{ClientTls, ServerTls, TlsFiles, TlsVersion};
pub use tunnel::{
    AcceptedAgent, AgentConfig, PublishedListenerConfig, RelayTls, RelayVerify, Token, Transport,
    TunnelListenerConfig,
};

/// The built-in default: safe on any machine. Loopback only, memory only.
pub const DEFAULT_CONFIG: &str = r#"
[[listeners]]
name = "http"
kind = "http"
listen = "127.0.0.1:3128"
cache = true

[[listeners]]
name = "socks"
kind = "socks"
listen = "127.0.0.1:1080"
"#;

#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    /// Upstream server pools for the balancing listeners (`tcp`, `udp`).
    pub pools: Vec<PoolConfig>,
    pub dns: DnsConfig,
    pub upstream: UpstreamConfig,
    pub access_log: AccessLogConfig,
    pub admin: Option<AdminConfig>,
    pub shutdown: ShutdownConfig,
    pub runtime: RuntimeConfig,
    /// The one shared HTTP cache store; listeners opt in with `cache = true`.
    pub cache: crate::cache::config::CacheConfig,
    /// Users, rules, the destination guard, parents: one policy for every listener.
    pub policy: crate::policy::PolicyConfig,
    /// Per-client and per-user connection, rate and bandwidth limits.
    pub limits: crate::limits::LimitsConfig,
    /// `[agent]`: this process is a tunnel agent dialling out to relays.
    pub agent: Option<AgentConfig>,
    /// The line of every key in the file, for problems found at start-up.
    pub lines: KeyLines,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Unique name: shows in logs, metrics and (later) policy rules.
    pub name: String,
    pub listen: SocketAddr,
    /// Connections served at once; further clients wait in the accept backlog.
    pub max_connections: usize,
    pub kind: ListenerKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ListenerKind {
    Http(HttpListenerConfig),
    Socks(SocksListenerConfig),
    /// Layer-4 TCP balancing over a pool, optionally routed by TLS SNI.
    Tcp(TcpListenerConfig),
    /// UDP datagrams balanced over a pool with per-client affinity.
    Udp(UdpListenerConfig),
    /// HTTP reverse proxy: virtual hosts and routes to pools.
    Reverse(Box<ReverseListenerConfig>),
    /// Where reverse-tunnel agents connect.
    Tunnel(TunnelListenerConfig),
    /// A port forwarding to a service an agent publishes.
    Published(PublishedListenerConfig),
}

impl ListenerKind {
    pub fn name(&self) -> &'static str {
        match self {
            ListenerKind::Http(_) => "http",
            ListenerKind::Socks(_) => "socks",
            ListenerKind::Tcp(_) => "tcp",
            ListenerKind::Udp(_) => "udp",
            ListenerKind::Reverse(_) => "reverse",
            ListenerKind::Tunnel(_) => "tunnel",
            ListenerKind::Published(_) => "published",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpListenerConfig {
    /// Request line plus headers, in bytes. Larger heads get 431.
    pub max_header_bytes: usize,
    /// Time allowed from the first byte of a request to the end of its head.
    pub header_read_timeout: Duration,
    /// How long an idle client connection is kept open between requests.
    pub keepalive_timeout: Duration,
    /// Longest wait for the upstream's response head, and between body reads either way.
    pub read_timeout: Duration,
    /// A CONNECT tunnel with no traffic either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// Ports CONNECT may reach.
    pub connect_ports: Vec<PortRange>,
    /// `Via` pseudonym; `None` when switched off.
    pub via: Option<String>,
    /// Whether to tell the upstream who the client is (X-Forwarded-For and Forwarded).
    pub forwarded_for: bool,
    /// Whether responses go through the shared HTTP cache.
    pub cache: bool,
    /// Protocols a request may ask to `Upgrade` to (lower-case names, `websocket`); other
    /// offers are dropped before the request goes upstream, and a 101 to anything else is 502.
    pub upgrade_protocols: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

#[derive(Debug, Clone, Default)]
pub struct DnsConfig {
    /// Name servers to ask; empty means the system's (/etc/resolv.conf).
    pub servers: Vec<SocketAddr>,
    pub timeout: Duration,
    pub attempts: usize,
    /// Entries in the answer cache (answers are kept for their TTL).
    pub cache_size: usize,
    /// Static names, looked up before DNS.
    pub hosts: BTreeMap<String, Vec<IpAddr>>,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    /// Happy Eyeballs (RFC 8305) delay before the next address is tried.
    pub happy_eyeballs_delay: Duration,
    /// Outgoing source address for IPv4 upstreams (the organisation's one address).
    pub source_v4: Option<IpAddr>,
    /// Outgoing source address for IPv6 upstreams.
    pub source_v6: Option<IpAddr>,
    /// Idle upstream connections are kept this long for reuse.
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Off,
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
    /// Squid's native `access.log` format.
    Squid,
    /// The Apache combined log format.
    Combined,
}

#[derive(Debug, Clone)]
pub struct AccessLogConfig {
    pub target: LogTarget,
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Destinations the generated `/proxy.pac` sends DIRECT: `name`, `*.suffix` or a CIDR.
    pub pac_direct: Vec<PacDirect>,
    /// The host name clients use to reach the proxy, for listeners bound to every address.
    pub pac_host: Option<String>,
    /// Bearer token for the mutating endpoints (`/cache/purge`); they are off without one.
    pub token: Option<AdminToken>,
}

/// Where the admin token comes from: the config itself, or a file read at start-up.
#[derive(Debug, Clone, PartialEq)]
pub enum AdminToken {
    Inline(Password),
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PacDirect {
    Name(String),
    /// `*.example.com`: every name under it, not the name itself (the policy's `*.`).
    Subdomains(String),
    /// `.example.com`: the name and every name under it (the policy's leading dot).
    Domain(String),
    Net(ipnet::IpNet),
}

fn parse_pac_direct(v: &toml_edit::Value) -> Result<PacDirect, String> {
    let s = v
        .as_str()
        .ok_or("not a string")?
        .trim()
        .to_ascii_lowercase();
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Ok(PacDirect::Net(net));
    }
    let (name, kind): (&str, fn(String) -> PacDirect) = if let Some(n) = s.strip_prefix("*.") {
        (n, PacDirect::Subdomains)
    } else if let Some(n) = s.strip_prefix('.') {
        (n, PacDirect::Domain)
    } else {
        (&s, PacDirect::Name)
    };
    match crate::connector::Host::parse(name) {
        Some(crate::connector::Host::Name(n)) => Ok(kind(n)),
        _ => Err("not a name, *.suffix, .domain or CIDR".into()),
    }
}

/// `[runtime]`: the threads that serve connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Worker threads; 0: one per CPU core (or `TOKIO_WORKER_THREADS`).
    pub workers: usize,
    /// Each worker runs its own event loop and keeps the connections handed to it, as
    /// nginx's worker processes and HAProxy's threads do (the default); `false`: one shared,
    /// work-stealing scheduler.
    pub per_core: bool,
}

impl Default for RuntimeConfig {
    fn default() -> RuntimeConfig {
        RuntimeConfig {
            workers: 0,
            per_core: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    /// After SIGTERM, in-flight requests and tunnels get this long to finish.
    pub drain_timeout: Duration,
}

impl Config {
    /// The built-in default configuration.
    pub fn builtin() -> Config {
        match Config::parse(DEFAULT_CONFIG) {
            Ok(c) => c,
            Err(errs) => unreachable!("built-in config is valid: {errs:?}"),
        }
    }

    /// Parses and checks a whole file, returning every problem found.
    pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
        let doc = toml_edit::Document::parse(text.to_string()).map_err(|e| {
            let line = e.span().map(|s| reader::line_of(text, s.start));
            vec![ConfigError {
                path: "<syntax>".into(),
                line,
                message: e.message().trim().to_string(),
            }]
        })?;
        let problems = Problems::new(text);
        let root = Section::root(doc.as_table(), problems.clone());
        let config = read_config(&root);
        root.finish();
        if problems.is_empty() {
            Ok(Config {
                lines: problems.key_lines(),
                ..config
            })
        } else {
            Err(problems.into_vec())
        }
    }
}

fn read_config(root: &Section<'_>) -> Config {
    let pools = pools::read_pools(root);
    let pool_names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
    let mut listeners = Vec::new();
    let sections = root.tables("listeners");
    if !root.has("listeners") && !root.has_table("agent") {
        root.error_at(
            "listeners",
            "at least one [[listeners]] entry (or an [agent] section) is required",
        );
    }
    let mut section_of = Vec::new();
    for (i, l) in sections.iter().enumerate() {
        if let Some(cfg) = read_listener(l, &pool_names) {
            l4::check_hash_keys(l, &cfg.kind, &pools);
            section_of.push(i);
            if listeners
                .iter()
                .any(|o: &ListenerConfig| o.name == cfg.name)
            {
                l.error_at("name", format!("duplicate listener name {:?}", cfg.name));
            }
            if listeners.iter().any(|o: &ListenerConfig| {
                // A UDP and a TCP listener may share an address (DNS on port 53).
                o.listen == cfg.listen
                    && cfg.listen.port() != 0
                    && matches!(o.kind, ListenerKind::Udp(_))
                        == matches!(cfg.kind, ListenerKind::Udp(_))
            }) {
                l.error_at(
                    "listen",
                    format!("address {} is used by another listener", cfg.listen),
                );
            }
            listeners.push(cfg);
        }
    }
    check_agent_names(&listeners, &section_of, &sections);
    check_pool_agents(root, &pools, &listeners);
    for l in sections {
        l.finish();
    }
    let agent = if root.has_table("agent") {
        let a = root.table("agent");
        let cfg = tunnel::read_agent(&a);
        a.finish();
        cfg
    } else {
        None
    };

    let dns = read_dns(&root.table("dns"));
    let upstream = read_upstream(&root.table("upstream"));
    let access_log = read_access_log(&root.table("access_log"));
    let admin = if root.has_table("admin") {
        let a = root.table("admin");
        let listen = a.socket_addr("listen");
        if !a.has("listen") {
            a.error_here("`listen` is required in [admin]");
        }
        let pac_direct = a
            .array(
                "pac_direct",
                "a name, \"*.suffix\" or CIDR",
                parse_pac_direct,
            )
            .unwrap_or_default();
        let pac_host = a.string("pac_host");
        let token = a.string("token");
        let token_file = a.string("token_file");
        let token = match (token, token_file) {
            (Some(_), Some(_)) => {
                a.error_at("token_file", "give `token` or `token_file`, not both");
                None
            }
            (Some(t), None) if t.trim().is_empty() => {
                a.error_at("token", "must not be empty");
                None
            }
            (Some(t), None) => Some(AdminToken::Inline(Password::new(t))),
            (None, Some(f)) => Some(AdminToken::File(PathBuf::from(f))),
            (None, None) => None,
        };
        a.finish();
        listen.map(|listen| AdminConfig {
            listen,
            pac_direct,
            pac_host,
            token,
        })
    } else {
        None
    };
    let cache = crate::cache::config::read_cache(&root.table("cache"));
    let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
    let agents: Vec<&str> = listeners
        .iter()
        .filter_map(|l| match &l.kind {
            ListenerKind::Tunnel(t) => Some(t.agents.iter().map(|a| a.name.as_str())),
            _ => None,
        })
        .flatten()
        .collect();
    let policy = crate::policy::config::read_policy(&root.table("policy"), &names, Some(&agents));
    let limits = crate::limits::config::read_limits(&root.table("limits"));
    if admin.as_ref().is_some_and(|a| a.pac_host.is_none()) {
        // A browser cannot reach "0.0.0.0": without pac_host such a listener cannot be
        // offered, and a PAC file without it would send that traffic around the proxy.
        let a = root.table("admin");
        for l in &listeners {
            if l.listen.ip().is_unspecified() && crate::pac::offered(l, &policy) {
                a.error_at(
                    "pac_host",
                    format!(
                        "required: listener {:?} listens on every address ({}); /proxy.pac \
                         needs the name clients reach this host by",
                        l.name, l.listen
                    ),
                );
            }
        }
    }
    let s = root.table("shutdown");
    let shutdown = ShutdownConfig {
        drain_timeout: s.duration("drain_timeout", Duration::from_secs(30)),
    };
    s.finish();
    let r = root.table("runtime");
    let runtime = RuntimeConfig {
        workers: r.uint("workers", 0, 0, 1024) as usize,
        per_core: r.bool("per_core", true),
    };
    r.finish();

    Config {
        listeners,
        pools,
        dns,
        upstream,
        access_log,
        admin,
        shutdown,
        runtime,
        cache,
        policy,
        limits,
        agent,
        lines: KeyLines::default(),
    }
}

/// Every agent a socks or published listener, or a reverse route, names must be accepted by
/// a tunnel listener.
fn check_agent_names(listeners: &[ListenerConfig], section_of: &[usize], sections: &[Section<'_>]) {
    let accepted: Vec<&str> = listeners
        .iter()
        .filter_map(|l| match &l.kind {
            ListenerKind::Tunnel(t) => Some(t.agents.iter().map(|a| a.name.as_str())),
            _ => None,
        })
        .flatten()
        .collect();
    for (l, i) in listeners.iter().zip(section_of) {
        let Some(s) = sections.get(*i) else { continue };
        if let ListenerKind::Reverse(r) = &l.kind {
            let hosts = r.hosts.iter().enumerate().flat_map(|(j, h)| {
                let routes = h.routes.iter().enumerate();
                routes.map(move |(k, r)| (format!("hosts[{j}].routes[{k}].agent"), r))
            });
            let default = r.default.iter().map(|r| ("default.agent".to_string(), r));
            for (key, route) in hosts.chain(default) {
                if let Some(a) = &route.agent {
                    if !accepted.contains(&a.agent.as_str()) {
                        let msg =
                            format!("no tunnel listener accepts an agent named {:?}", a.agent);
                        s.error_at(&key, msg);
                    }
                }
            }
            continue;
        }
        let (key, name) = match &l.kind {
            ListenerKind::Socks(c) => match &c.via_agent {
                Some(n) => ("via_agent", n),
                None => continue,
            },
            ListenerKind::Published(p) => ("agent", &p.agent),
            _ => continue,
        };
        if !accepted.contains(&name.as_str()) {
            s.error_at(
                key,
                format!("no tunnel listener accepts an agent named {name:?}"),
            );
        }
    }
}

/// A pool server naming an agent: the agent must be accepted by a tunnel listener, and only
/// `reverse` listeners may use its pool (layer 4 connects to addresses).
fn check_pool_agents(root: &Section<'_>, pools: &[PoolConfig], listeners: &[ListenerConfig]) {
    if !pools.iter().any(PoolConfig::has_agent_servers) {
        return;
    }
    let accepted: Vec<&str> = listeners
        .iter()
        .filter_map(|l| match &l.kind {
            ListenerKind::Tunnel(t) => Some(t.agents.iter().map(|a| a.name.as_str())),
            _ => None,
        })
        .flatten()
        .collect();
    for p in root.tables("pools") {
        let name = p.string("name");
        let Some(cfg) = pools.iter().find(|c| Some(&c.name) == name.as_ref()) else {
            continue;
        };
        for (k, s) in cfg.servers.iter().enumerate() {
            if let Some(a) = &s.agent {
                if !accepted.contains(&a.agent.as_str()) {
                    p.error_at(
                        &format!("servers[{k}].agent"),
                        format!("no tunnel listener accepts an agent named {:?}", a.agent),
                    );
                }
            }
        }
    }
    for l in listeners {
        let used: Vec<&str> = match &l.kind {
            ListenerKind::Tcp(t) => t
                .pool
                .iter()
                .map(String::as_str)
                .chain(t.sni.iter().map(|r| r.pool.as_str()))
                .collect(),
            ListenerKind::Udp(u) => vec![u.pool.as_str()],
            _ => continue,
        };
        for name in used {
            if pools
                .iter()
                .any(|p| p.name == name && p.has_agent_servers())
            {
                root.error_at(
                    "listeners",
                    format!(
                        "listener {:?}: pool {name:?} has servers reached through an agent, \
                         which only a reverse listener can use (a `published` listener \
                         forwards a port to an agent)",
                        l.name
                    ),
                );
            }
        }
    }
}

fn read_listener(l: &Section<'_>, pools: &[&str]) -> Option<ListenerConfig> {
    let name = l.string("name");
    if !l.has("name") {
        l.error_here("`name` is required");
    }
    let listen = l.socket_addr("listen");
    if !l.has("listen") {
        l.error_here("`listen` is required");
    }
    let max_connections = l.uint("max_connections", 10_000, 1, 1_000_000) as usize;
    let kind = match l.string("kind").as_deref() {
        Some("http") => Some(ListenerKind::Http(read_http(l))),
        Some("socks") => Some(ListenerKind::Socks(socks::read_socks(l))),
        Some("tcp") => Some(ListenerKind::Tcp(l4::read_tcp(l, pools))),
        Some("udp") => Some(ListenerKind::Udp(l4::read_udp(l, pools))),
        Some("reverse") => Some(ListenerKind::Reverse(Box::new(reverse::read_reverse(
            l, pools,
        )))),
        Some("tunnel") => tunnel::read_tunnel(l).map(ListenerKind::Tunnel),
        Some("published") => tunnel::read_published(l).map(ListenerKind::Published),
        Some(other) => {
            l.error_at(
                "kind",
                format!(
                    "unknown listener kind {other:?}; expected \"http\", \"socks\", \"tcp\", \"udp\", \"reverse\", \"tunnel\" or \"published\""
                ),
            );
            None
        }
        None => {
            if !l.has("kind") {
                l.error_here(
                    "`kind` is required (\"http\", \"socks\", \"tcp\", \"udp\" or \"reverse\")",
                );
            }
            None
        }
    };
    Some(ListenerConfig {
        name: name?,
        listen: listen?,
        max_connections,
        kind: kind?,
    })
}

fn read_http(l: &Section<'_>) -> HttpListenerConfig {
    let connect_ports = l
        .array(
            "connect_ports",
            "a port (443) or a range (\"8000-8999\")",
            parse_port_range,
        )
        .unwrap_or_else(|| {
            vec![PortRange {
                first: 443,
                last: 443,
            }]
        });
    HttpListenerConfig {
        connect_ports,
        forwarded_for: l.bool("forwarded_for", false),
        cache: l.bool("cache", false),
        ..read_http_limits(l)
    }
}

/// The HTTP settings the forward and the reverse proxy share: head size, timeouts, `via`,
/// `upgrade_protocols`. The forward-only ones are left empty/off.
fn read_http_limits(l: &Section<'_>) -> HttpListenerConfig {
    let via = match l.get("via", "a string or false", |v| {
        if let Some(s) = v.as_str() {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())).then(|| Some(s.to_string()))
        } else {
            v.as_bool().filter(|b| !b).map(|_| None)
        }
    }) {
        Some(v) => v,
        None => Some("gatehouse".to_string()),
    };
    HttpListenerConfig {
        max_header_bytes: l
            .size("max_header_bytes", 32 * 1024)
            .clamp(1024, 1024 * 1024) as usize,
        header_read_timeout: l.duration("header_read_timeout", Duration::from_secs(30)),
        keepalive_timeout: l.duration("keepalive_timeout", Duration::from_secs(60)),
        read_timeout: l.duration("read_timeout", Duration::from_secs(60)),
        tunnel_idle_timeout: l.duration("tunnel_idle_timeout", Duration::from_secs(600)),
        connect_ports: Vec::new(),
        via,
        forwarded_for: false,
        cache: false,
        upgrade_protocols: l
            .array(
                "upgrade_protocols",
                "a protocol name (\"websocket\")",
                |v| match v.as_str() {
                    Some(s)
                        if !s.is_empty()
                            && s.bytes().all(|b| b.is_ascii_graphic() && b != b',') =>
                    {
                        Ok(s.to_ascii_lowercase())
                    }
                    _ => Err("expected a protocol name such as \"websocket\"".into()),
                },
            )
            .unwrap_or_else(|| vec!["websocket".to_string()]),
    }
}

/// A port (`443`) or range (`"8000-8999"`): `connect_ports`, policy rules' `ports`.
pub(crate) fn parse_port_range(v: &toml_edit::Value) -> Result<PortRange, String> {
    if let Some(n) = v.as_integer() {
        let p = u16::try_from(n).map_err(|_| "not a port".to_string())?;
        return Ok(PortRange { first: p, last: p });
    }
    let s = v.as_str().ok_or("not a port or range")?;
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let first: u16 = a.trim().parse().map_err(|_| "not a port".to_string())?;
    let last: u16 = b.trim().parse().map_err(|_| "not a port".to_string())?;
    if first > last {
        return Err("range runs backwards".into());
    }
    Ok(PortRange { first, last })
}

fn read_dns(d: &Section<'_>) -> DnsConfig {
    let servers = d
        .array(
            "servers",
            "a name server address such as \"127.0.0.53:53\"",
            |v| {
                let s = v.as_str().ok_or("not a string")?;
                s.parse::<SocketAddr>()
                    .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|e| e.to_string())
            },
        )
        .unwrap_or_default();
    let hosts_section = d.table("hosts");
    let mut hosts = BTreeMap::new();
    for name in hosts_section.keys() {
        let ips = hosts_section.parse(&name, "an IP address or an array of them", |v| {
            let one = |v: &toml_edit::Value| -> Result<IpAddr, String> {
                v.as_str()
                    .ok_or("not a string")?
                    .parse::<IpAddr>()
                    .map_err(|e| e.to_string())
            };
            match v.as_array() {
                Some(arr) => arr.iter().map(one).collect(),
                None => one(v).map(|ip| vec![ip]),
            }
        });
        if let Some(ips) = ips {
            hosts.insert(name.trim_end_matches('.').to_ascii_lowercase(), ips);
        }
    }
    hosts_section.finish();
    let cfg = DnsConfig {
        servers,
        timeout: d.duration("timeout", Duration::from_secs(5)),
        attempts: d.uint("attempts", 2, 1, 10) as usize,
        cache_size: d.uint("cache_size", 4096, 0, 1_000_000) as usize,
        hosts,
    };
    d.finish();
    cfg
}

fn read_upstream(u: &Section<'_>) -> UpstreamConfig {
    let source_v4 = u.ip_addr("source_address_v4");
    if source_v4.is_some_and(|ip| !ip.is_ipv4()) {
        u.error_at("source_address_v4", "expected an IPv4 address");
    }
    let source_v6 = u.ip_addr("source_address_v6");
    if source_v6.is_some_and(|ip| !ip.is_ipv6()) {
        u.error_at("source_address_v6", "expected an IPv6 address");
    }
    let cfg = UpstreamConfig {
        connect_timeout: u.duration("connect_timeout", Duration::from_secs(10)),
        happy_eyeballs_delay: u.duration("happy_eyeballs_delay", Duration::from_millis(250)),
        source_v4,
        source_v6,
        pool_idle_timeout: u.duration("pool_idle_timeout", Duration::from_secs(90)),
        pool_max_idle_per_host: u.uint("pool_max_idle_per_host", 32, 0, 10_000) as usize,
    };
    u.finish();
    cfg
}

fn read_access_log(a: &Section<'_>) -> AccessLogConfig {
    let target = match a.string("path").as_deref() {
        None | Some("stdout") | Some("-") => LogTarget::Stdout,
        Some("off") => LogTarget::Off,
        Some(p) => LogTarget::File(PathBuf::from(p)),
    };
    let format = match a.string("format").as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some("squid") => LogFormat::Squid,
        Some("combined") => LogFormat::Combined,
        Some(other) => {
            a.error_at(
                "format",
                format!("expected \"text\", \"json\", \"squid\" or \"combined\", found {other:?}"),
            );
            LogFormat::Text
        }
    };
    a.finish();
    AccessLogConfig { target, format }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_default_is_loopback_http_and_socks() {
        let c = Config::builtin();
        assert_eq!(c.listeners.len(), 2);
        assert!(c.listeners.iter().all(|l| l.listen.ip().is_loopback()));
        assert_eq!(c.listeners[0].listen.port(), 3128);
        assert_eq!(c.listeners[1].listen.port(), 1080);
        let ListenerKind::Socks(s) = &c.listeners[1].kind else {
            panic!("second listener is socks")
        };
        assert_eq!(s.auth, [AuthMethod::None]);
        assert!(s.socks4 && s.users.is_empty() && s.tls.is_none());
        assert!(c.admin.is_none());
        // A memory-only cache, on for the default listener; nothing on disk.
        assert!(matches!(&c.listeners[0].kind, ListenerKind::Http(h) if h.cache));
        assert!(c.cache.enabled && c.cache.disk_dir.is_none());
    }

    #[test]
    fn every_problem_reported_at_once() {
        let text = r#"
[[listeners]]
name = "a"
kind = "http"
listen = "127.0.0.1:99999"
keepalive_timeout = "forever"
colour = "blue"

[[listeners]]
name = "a"
kind = "gopher"
listen = "127.0.0.1:1"

[access_log]
format = "xml"
"#;
        let errs = Config::parse(text).expect_err("invalid");
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "listeners[0].listen",
            "listeners[0].keepalive_timeout",
            "listeners[0].colour",
            "listeners[1].kind",
            "access_log.format",
        ] {
            assert!(paths.contains(&want), "missing {want} in {errs:#?}");
        }
        let colour = errs
            .iter()
            .find(|e| e.path == "listeners[0].colour")
            .expect("colour");
        assert_eq!(colour.line, Some(7));
        assert_eq!(colour.message, "unknown key");
    }

    #[test]
    fn syntax_error_has_line() {
        let errs = Config::parse("[[listeners]]\nname = \n").expect_err("bad");
        assert_eq!(errs[0].line, Some(2));
    }

    #[test]
    fn port_ranges_and_via() {
        let c = Config::parse(
            r#"
[[listeners]]
name = "p"
kind = "http"
listen = "127.0.0.1:0"
connect_ports = [443, "8000-8100"]
via = false
"#,
        )
        .expect("valid");
        let ListenerKind::Http(h) = &c.listeners[0].kind else {
            panic!("http listener")
        };
        assert!(h.via.is_none());
        assert!(h.connect_ports.iter().any(|r| r.contains(8050)));
        assert!(!h.connect_ports.iter().any(|r| r.contains(22)));
        assert_eq!(h.upgrade_protocols, ["websocket"]);
    }

    #[test]
    fn upgrade_protocols_list() {
        let l = "[[listeners]]\nname = \"p\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n";
        let c = Config::parse(&format!(
            "{l}upgrade_protocols = [\"WebSocket\", \"h2c\"]\n"
        ))
        .expect("valid");
        let ListenerKind::Http(h) = &c.listeners[0].kind else {
            panic!("http listener")
        };
        assert_eq!(h.upgrade_protocols, ["websocket", "h2c"]);
        let c = Config::parse(&format!("{l}upgrade_protocols = []\n")).expect("valid");
        let ListenerKind::Http(h) = &c.listeners[0].kind else {
            panic!("http listener")
        };
        assert!(h.upgrade_protocols.is_empty());
        assert!(Config::parse(&format!("{l}upgrade_protocols = [\"a, b\"]\n")).is_err());
    }

    #[test]
    fn duplicate_names_rejected() {
        let text = "[[listeners]]\nname=\"a\"\nkind=\"http\"\nlisten=\"127.0.0.1:1\"\n[[listeners]]\nname=\"a\"\nkind=\"http\"\nlisten=\"127.0.0.1:2\"\n";
        let errs = Config::parse(text).expect_err("dup");
        assert!(errs.iter().any(|e| e.message.contains("duplicate")));
    }

    fn socks(extra: &str) -> Result<SocksListenerConfig, Vec<ConfigError>> {
        let text = format!(
            "[[listeners]]\nname = \"s\"\nkind = \"socks\"\nlisten = \"127.0.0.1:0\"\n{extra}\n"
        );
        Config::parse(&text).map(|c| match &c.listeners[0].kind {
            ListenerKind::Socks(s) => s.clone(),
            other => panic!("not socks: {other:?}"),
        })
    }

    #[test]
    fn socks_defaults() {
        let s = socks("").expect("valid");
        assert_eq!(s.handshake_timeout, Duration::from_secs(10));
        assert_eq!(s.idle_timeout, Duration::from_secs(600));
        assert_eq!(s.bind_timeout, Duration::from_secs(60));
        assert_eq!(s.udp_idle_timeout, Duration::from_secs(120));
        assert_eq!(s.auth, [AuthMethod::None]);
        assert!(s.socks4);
    }

    #[test]
    fn socks_users_imply_password_only_and_mask_secrets() {
        let s =
            socks("[[listeners.users]]\nname = \"alice\"\npassword = \"s3cret\"\n").expect("valid");
        assert_eq!(s.auth, [AuthMethod::Password]);
        assert!(!s.socks4, "SOCKS4 is off by default once users exist");
        assert!(s.users[0].password.matches(b"s3cret"));
        assert!(!s.users[0].password.matches(b"s3cre"));
        assert!(!s.users[0].password.matches(b"s3cret!"));
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("***"),
            "{shown}"
        );
    }

    #[test]
    fn socks_bad_settings_reported() {
        let paths = |extra: &str| -> Vec<String> {
            socks(extra)
                .expect_err("invalid")
                .into_iter()
                .map(|e| e.path)
                .collect()
        };
        assert_eq!(paths("auth = [\"password\"]"), ["listeners[0].auth"]);
        assert_eq!(paths("auth = []"), ["listeners[0].auth"]);
        assert_eq!(paths("auth = [\"kerberos\"]"), ["listeners[0].auth[0]"]);
        let users = "[[listeners.users]]\nname = \"a\"\npassword = \"p\"\n";
        assert_eq!(
            paths(&format!("auth = [\"none\"]\n{users}")),
            ["listeners[0].auth"]
        );
        assert_eq!(
            paths(&format!("socks4 = true\n{users}")),
            ["listeners[0].socks4"]
        );
        assert_eq!(
            paths(&format!("{users}{users}")),
            ["listeners[0].users[1].name"]
        );
        assert_eq!(
            paths("[[listeners.users]]\nname = \"a\"\n"),
            ["listeners[0].users[0]"]
        );
        assert_eq!(
            paths(&format!(
                "[[listeners.users]]\nname = \"a\"\npassword = \"{}\"\n",
                "x".repeat(256)
            )),
            ["listeners[0].users[0].password"]
        );
        assert_eq!(paths("tls = { cert = \"c.pem\" }"), ["listeners[0].tls"]);
        assert_eq!(
            paths("bind_timeout = \"soon\""),
            ["listeners[0].bind_timeout"]
        );
        assert_eq!(paths("udp = true"), ["listeners[0].udp"]);
        let tls = socks("tls = { cert = \"c.pem\", key = \"k.pem\" }")
            .expect("valid")
            .tls
            .expect("tls");
        assert_eq!(tls.certificates[0].key, PathBuf::from("k.pem"));
    }
}
