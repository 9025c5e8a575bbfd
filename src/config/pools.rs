//! `[[pools]]`: named groups of upstream servers shared by every balancing listener (`tcp`,
//! `udp`, and later the reverse proxy), with their algorithm and health checks.

use std::time::Duration;

use super::reader::Section;
use crate::balance::{Algorithm, PassiveSettings};
use crate::connector::Host;

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub servers: Vec<ServerConfig>,
    pub algorithm: Algorithm,
    /// What `hash` hashes. Layer 4 knows only the client address.
    pub hash_key: HashKey,
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// An IP address or a name (resolved through `[dns]`, `[dns.hosts]` first, on each connect;
    /// the connector caches answers for their TTL).
    pub host: Host,
    pub port: u16,
    pub weight: u32,
}

impl ServerConfig {
    /// `host:port` as written in metrics and logs.
    pub fn label(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKey {
    /// The client's IP address (source-address affinity).
    ClientIp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// A TCP connect succeeds within the timeout.
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    let hash_key = match p.string("hash_key").as_deref() {
        None | Some("client-ip") => HashKey::ClientIp,
        Some(other) => {
            p.error_at(
                "hash_key",
                format!("unknown hash key {other:?}; expected \"client-ip\""),
            );
            HashKey::ClientIp
        }
    };
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
        let kind = match h.string("type").as_deref() {
            None | Some("tcp") => HealthCheckKind::Tcp,
            Some(other) => {
                h.error_at(
                    "type",
                    format!("unknown health check type {other:?}; expected \"tcp\""),
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
    let cfg = PoolConfig {
        name: name?,
        servers,
        algorithm,
        hash_key,
        fail_open,
        slow_start,
        connect_timeout,
        health,
        passive,
        tls: super::tls::read_client_tls(p),
    };
    Some(cfg)
}

fn read_server(s: &Section<'_>) -> Option<ServerConfig> {
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
    Some(ServerConfig { host, port, weight })
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
        let h = p.health.expect("health");
        assert_eq!((h.rise, h.fall), (2, 2));
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
                "[[pools]]\nname = \"p\"\n{srv}[pools.health]\ntype = \"http\"\nrise = 0\n"
            )),
            ["pools[0].health.type", "pools[0].health.rise"]
        );
        assert_eq!(
            paths(&format!(
                "[[pools]]\nname = \"p\"\n{srv}[[pools]]\nname = \"p\"\n{srv}"
            )),
            ["pools[1].name"]
        );
        assert_eq!(paths("[[pools]]\nname = \"p\"\n"), ["pools[0]"]);
    }
}
