//! The one way out: name resolution, Happy Eyeballs connect, timeout and egress address.
//!
//! Every listener kind (HTTP forward proxy, CONNECT, SOCKS, later reverse proxy and tunnels)
//! reaches upstreams through [`Connector::connect`], so DNS caching, the organisation-wide
//! source address and connect metrics are the same for all of them.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::TokioResolver;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

use crate::config::{DnsConfig, UpstreamConfig};
use crate::metrics::Metrics;

/// Where a client wants to go: a name or an address, and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl Host {
    /// Parses a host as it appears in a URI authority (`[::1]`, `10.0.0.1`, `example.com`).
    /// Names are lower-cased and lose a trailing dot. `None` for characters no host can hold.
    pub fn parse(s: &str) -> Option<Host> {
        if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            return inner
                .parse::<Ipv6Addr>()
                .ok()
                .map(|ip| Host::Ip(IpAddr::V6(ip)));
        }
        if let Ok(ip) = s.parse::<Ipv4Addr>() {
            return Some(Host::Ip(IpAddr::V4(ip)));
        }
        let name = s.strip_suffix('.').unwrap_or(s);
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        valid.then(|| Host::Name(name.to_ascii_lowercase()))
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Why an upstream could not be reached. Each listener kind maps this to its own wire form
/// (an HTTP status with Proxy-Status, a SOCKS reply code) in one place.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve {host}: {detail}")]
    Dns {
        host: String,
        /// The DNS response code when the server gave one (e.g. NXDOMAIN).
        rcode: Option<String>,
        detail: String,
    },
    #[error("DNS lookup for {host} timed out")]
    DnsTimeout { host: String },
    #[error("connection to {addr} refused")]
    Refused { addr: SocketAddr },
    #[error("connecting to {target} timed out")]
    Timeout { target: String },
    #[error("{addr} is unreachable: {source}")]
    Unreachable { addr: SocketAddr, source: io::Error },
    #[error("connecting to {addr} failed: {source}")]
    Io { addr: SocketAddr, source: io::Error },
}

impl ConnectError {
    /// The `kind` label of `gatehouse_dns_failures_total` for a failed lookup: `timeout`,
    /// `nxdomain`, `servfail`, `refused`, `no_address` (an answer without addresses) or
    /// `other`.
    pub fn dns_kind(&self) -> &'static str {
        match self {
            ConnectError::DnsTimeout { .. } => "timeout",
            ConnectError::Dns { rcode, .. } => match rcode.as_deref() {
                Some("NXDOMAIN") => "nxdomain",
                Some("SERVFAIL") => "servfail",
                Some("REFUSED") => "refused",
                Some("NOERROR") => "no_address",
                _ => "other",
            },
            _ => "other",
        }
    }
}

/// A connected upstream socket.
#[derive(Debug)]
pub struct Connected {
    pub stream: TcpStream,
    pub peer: SocketAddr,
}

pub struct Connector {
    resolver: TokioResolver,
    hosts: BTreeMap<String, Vec<IpAddr>>,
    cfg: UpstreamConfig,
    dns_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Connector {
    /// The shared metrics (and live statistics).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn new(
        dns: &DnsConfig,
        cfg: &UpstreamConfig,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Connector> {
        let mut builder = if dns.servers.is_empty() {
            TokioResolver::builder_tokio()?
        } else {
            let servers = dns
                .servers
                .iter()
                .map(|s| {
                    let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                    for c in &mut ns.connections {
                        c.port = s.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let opts = builder.options_mut();
        opts.timeout = dns.timeout;
        opts.attempts = dns.attempts;
        opts.cache_size = dns.cache_size as u64;
        // Both families, so Happy Eyeballs has something to race.
        opts.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
        Ok(Connector {
            resolver: builder.build()?,
            hosts: dns.hosts.clone(),
            cfg: cfg.clone(),
            dns_timeout: dns.timeout.saturating_mul(dns.attempts as u32 + 1),
            metrics,
        })
    }

    /// Resolves a host to addresses: literals directly, `localhost` to loopback (RFC 6761),
    /// configured static hosts, then DNS (cached for the answers' TTLs by the resolver).
    pub async fn resolve(&self, host: &Host) -> Result<Vec<IpAddr>, ConnectError> {
        let name = match host {
            Host::Ip(ip) => return Ok(vec![*ip]),
            Host::Name(n) => n,
        };
        if let Some(ips) = self.hosts.get(name.as_str()) {
            return Ok(ips.clone());
        }
        if name == "localhost" || name.ends_with(".localhost") {
            return Ok(vec![
                IpAddr::V6(Ipv6Addr::LOCALHOST),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
            ]);
        }
        let started = Instant::now();
        let result = self.lookup(name).await;
        let failure = result.as_ref().err().map(ConnectError::dns_kind);
        self.metrics.dns_lookup(started.elapsed(), failure);
        result
    }

    /// A DNS lookup through the resolver.
    async fn lookup(&self, name: &String) -> Result<Vec<IpAddr>, ConnectError> {
        // A fully qualified query: no search-domain guessing on behalf of clients.
        let fqdn = format!("{name}.");
        let lookup =
            tokio::time::timeout(self.dns_timeout, self.resolver.lookup_ip(fqdn.as_str())).await;
        let lookup = match lookup {
            Err(_) => return Err(ConnectError::DnsTimeout { host: name.clone() }),
            Ok(r) => r,
        };
        match lookup {
            Ok(found) => {
                let ips: Vec<IpAddr> = found.iter().collect();
                if ips.is_empty() {
                    Err(ConnectError::Dns {
                        host: name.clone(),
                        rcode: Some("NOERROR".into()),
                        detail: "no addresses".into(),
                    })
                } else {
                    Ok(ips)
                }
            }
            Err(NetError::Timeout) => Err(ConnectError::DnsTimeout { host: name.clone() }),
            Err(e) => {
                // RFC 9209 wants the RCODE mnemonic: NXDOMAIN, SERVFAIL, REFUSED, ...
                let (rcode, detail) = match &e {
                    NetError::Dns(DnsError::NoRecordsFound(nr)) => {
                        let code = format!("{:?}", nr.response_code).to_ascii_uppercase();
                        (Some(code.clone()), format!("no address records ({code})"))
                    }
                    NetError::Dns(DnsError::ResponseCode(c)) => {
                        let code = format!("{c:?}").to_ascii_uppercase();
                        (Some(code.clone()), format!("name server answered {code}"))
                    }
                    other => (None, other.to_string()),
                };
                Err(ConnectError::Dns {
                    host: name.clone(),
                    rcode,
                    detail,
                })
            }
        }
    }

    /// Resolves and connects, racing addresses per Happy Eyeballs, within the connect timeout.
    pub async fn connect(&self, host: &Host, port: u16) -> Result<Connected, ConnectError> {
        let ips = self.resolve(host).await?;
        let addrs: Vec<SocketAddr> = interleave(ips)
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        self.connect_addrs(&addrs, &format!("{host}:{port}")).await
    }

    /// Connects to the first address that answers (RFC 8305 section 5: staggered attempts).
    pub async fn connect_addrs(
        &self,
        addrs: &[SocketAddr],
        target: &str,
    ) -> Result<Connected, ConnectError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.cfg.connect_timeout, async {
            // One address: nothing to race, so no task and no timer (the common case for
            // pools and for names that resolve to one address), and no room in the future
            // for the race's state, which is boxed.
            if let [addr] = addrs {
                return connect_one(*addr, self.source_for(addr))
                    .await
                    .map_err(|e| classify(*addr, e));
            }
            Box::pin(self.race(addrs)).await
        })
        .await;
        match result {
            Ok(Ok(c)) => {
                self.metrics
                    .upstream_connect_seconds
                    .observe(started.elapsed().as_secs_f64());
                Ok(c)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ConnectError::Timeout {
                target: target.to_string(),
            }),
        }
    }

    async fn race(&self, addrs: &[SocketAddr]) -> Result<Connected, ConnectError> {
        let mut attempts = JoinSet::new();
        let mut next = addrs.iter();
        let mut last_err = None;
        loop {
            let started_one = match next.next() {
                Some(addr) => {
                    let (addr, src) = (*addr, self.source_for(addr));
                    attempts.spawn(async move { (addr, connect_one(addr, src).await) });
                    true
                }
                None => false,
            };
            if attempts.is_empty() {
                return Err(last_err.unwrap_or_else(|| ConnectError::Io {
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                    source: io::Error::new(io::ErrorKind::NotFound, "no addresses to try"),
                }));
            }
            // Wait for an attempt to finish, or (while more addresses remain) for the delay.
            let delay = tokio::time::sleep(self.cfg.happy_eyeballs_delay);
            tokio::pin!(delay);
            tokio::select! {
                done = attempts.join_next() => match done {
                    Some(Ok((_, Ok(c)))) => return Ok(c),
                    // A failure starts the next attempt at once.
                    Some(Ok((addr, Err(e)))) => last_err = Some(classify(addr, e)),
                    Some(Err(join)) => {
                        last_err = Some(ConnectError::Io {
                            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                            source: io::Error::other(join.to_string()),
                        })
                    }
                    None => {}
                },
                // Or, while more addresses remain, the delay passes first.
                _ = &mut delay, if started_one && next.len() > 0 => {}
            }
        }
    }

    fn source_for(&self, addr: &SocketAddr) -> Option<IpAddr> {
        match addr {
            SocketAddr::V4(_) => self.cfg.source_v4,
            SocketAddr::V6(_) => self.cfg.source_v6,
        }
    }
}

async fn connect_one(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<Connected> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(Connected { stream, peer: addr })
}

fn classify(addr: SocketAddr, e: io::Error) -> ConnectError {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ConnectError::Refused { addr },
        io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => {
            ConnectError::Unreachable { addr, source: e }
        }
        io::ErrorKind::TimedOut => ConnectError::Timeout {
            target: addr.to_string(),
        },
        _ => ConnectError::Io { addr, source: e },
    }
}

/// RFC 8305 section 4: alternate address families, starting with IPv6 when there is one.
pub fn interleave(ips: Vec<IpAddr>) -> Vec<IpAddr> {
    let (v6, v4): (Vec<IpAddr>, Vec<IpAddr>) = ips.into_iter().partition(IpAddr::is_ipv6);
    let mut out = Vec::with_capacity(v6.len() + v4.len());
    let (mut a, mut b) = (v6.into_iter(), v4.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return out,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_failure_kinds() {
        let dns = |rcode: Option<&str>| ConnectError::Dns {
            host: "a.test".into(),
            rcode: rcode.map(str::to_string),
            detail: String::new(),
        };
        assert_eq!(dns(Some("NXDOMAIN")).dns_kind(), "nxdomain");
        assert_eq!(dns(Some("SERVFAIL")).dns_kind(), "servfail");
        assert_eq!(dns(Some("REFUSED")).dns_kind(), "refused");
        assert_eq!(dns(Some("NOERROR")).dns_kind(), "no_address");
        assert_eq!(dns(Some("FORMERR")).dns_kind(), "other");
        assert_eq!(dns(None).dns_kind(), "other");
        let timeout = ConnectError::DnsTimeout {
            host: "a.test".into(),
        };
        assert_eq!(timeout.dns_kind(), "timeout");
    }

    #[test]
    fn host_parsing() {
        assert_eq!(
            Host::parse("Example.COM."),
            Some(Host::Name("example.com".into()))
        );
        assert_eq!(
            Host::parse("[::1]"),
            Some(Host::Ip("::1".parse().expect("ip")))
        );
        assert_eq!(
            Host::parse("10.1.2.3"),
            Some(Host::Ip("10.1.2.3".parse().expect("ip")))
        );
        assert_eq!(Host::parse("bad host"), None);
        assert_eq!(Host::parse(""), None);
        assert_eq!(Host::parse("a..b"), None);
        assert_eq!(Host::parse("[::1"), None);
        assert_eq!(Host::parse("x/y"), None);
    }

    #[test]
    fn interleaves_families_v6_first() {
        let ips: Vec<IpAddr> = ["1.1.1.1", "2.2.2.2", "::1", "::2", "3.3.3.3"]
            .iter()
            .map(|s| s.parse().expect("ip"))
            .collect();
        let got: Vec<String> = interleave(ips).iter().map(|i| i.to_string()).collect();
        assert_eq!(got, ["::1", "1.1.1.1", "::2", "2.2.2.2", "3.3.3.3"]);
    }
}
