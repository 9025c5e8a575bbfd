//! `kind = "tcp"` and `kind = "udp"` listener settings: layer-4 balancing over `[[pools]]`.

use std::time::Duration;

use super::reader::Section;
use super::{HashKey, PoolConfig};

/// PROXY protocol version sent to servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TcpListenerConfig {
    /// The pool for connections no SNI route takes (every connection without `sni` routes).
    /// `None` with routes: unmatched connections are closed.
    pub pool: Option<String>,
    /// SNI routes, first match wins; non-empty means the ClientHello is peeked.
    pub sni: Vec<SniRoute>,
    /// Servers tried per connection (the first plus retries on other servers), before any
    /// byte is relayed.
    pub connect_attempts: u32,
    /// A connection with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// Time allowed for the client's ClientHello (SNI routing) or PROXY header.
    pub handshake_timeout: Duration,
    /// Largest ClientHello read for SNI routing; a larger one closes the connection.
    pub max_client_hello: usize,
    /// Send a PROXY protocol header to servers.
    pub send_proxy: Option<ProxyVersion>,
    /// Peers allowed (and required) to send a PROXY header (v1 or v2). Empty: the listener
    /// does not accept PROXY headers. Non-empty: every other peer is refused.
    pub accept_proxy_from: Vec<ipnet::IpNet>,
    /// Terminate TLS here and send plain TCP (or the pool's own TLS) to the servers; SNI
    /// routes then match the name from the handshake.
    pub tls: Option<super::ServerTls>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SniRoute {
    /// Lower-case names; `*.example.com` matches names under example.com (not itself).
    pub names: Vec<String>,
    /// When non-empty, the ClientHello must offer one of these ALPN protocols.
    pub alpn: Vec<String>,
    pub pool: String,
}

impl SniRoute {
    pub fn matches_name(&self, sni: &str) -> bool {
        self.names.iter().any(|n| match n.strip_prefix("*.") {
            Some(suffix) => sni
                .strip_suffix(suffix)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            None => n == sni,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct UdpListenerConfig {
    pub pool: String,
    /// A client keeps its server while datagrams flow either way within this time.
    pub session_timeout: Duration,
    /// Sessions at once; datagrams from new clients beyond it are dropped.
    pub max_sessions: usize,
    /// A session that sent datagrams and got no reply within this time counts as a failure
    /// against its server (passive health).
    pub reply_timeout: Duration,
}

pub(super) fn read_tcp(l: &Section<'_>, pools: &[&str]) -> TcpListenerConfig {
    let pool = read_pool_ref(l, "pool", pools);
    let mut sni = Vec::new();
    for r in l.tables("sni") {
        let names = r
            .array("names", "a name or \"*.suffix\"", |v| {
                let s = v
                    .as_str()
                    .ok_or("not a string")?
                    .trim()
                    .to_ascii_lowercase();
                let bare = s.strip_prefix("*.").unwrap_or(&s);
                match crate::connector::Host::parse(bare) {
                    Some(crate::connector::Host::Name(_)) => Ok(s),
                    _ => Err("not a host name".to_string()),
                }
            })
            .unwrap_or_default();
        if !r.has("names") {
            r.error_here("`names` is required");
        }
        let alpn = r
            .array("alpn", "a protocol name such as \"h2\"", |v| {
                let s = v.as_str().ok_or("not a string")?;
                if s.is_empty() || s.len() > 255 {
                    return Err("empty or too long".into());
                }
                Ok(s.to_string())
            })
            .unwrap_or_default();
        let route_pool = read_pool_ref(&r, "pool", pools);
        if !r.has("pool") {
            r.error_here("`pool` is required");
        }
        r.finish();
        if let Some(pool) = route_pool {
            if !names.is_empty() {
                sni.push(SniRoute { names, alpn, pool });
            }
        }
    }
    if pool.is_none() && !l.has("sni") && !l.has("pool") {
        l.error_here("`pool` is required (or `[[listeners.sni]]` routes)");
    }
    let send_proxy = read_proxy_version(l, "send_proxy");
    let accept_proxy_from = l
        .array("accept_proxy_from", "a CIDR such as \"10.0.0.0/8\"", |v| {
            crate::policy::matcher::parse_net(v.as_str().ok_or("not a string")?)
        })
        .unwrap_or_default();
    TcpListenerConfig {
        tls: super::tls::read_server_tls(l, &[]),
        pool,
        sni,
        connect_attempts: l.uint("connect_attempts", 2, 1, 16) as u32,
        idle_timeout: l.duration("idle_timeout", Duration::from_secs(600)),
        handshake_timeout: l.duration("handshake_timeout", Duration::from_secs(5)),
        max_client_hello: l.size("max_client_hello", 16 * 1024).clamp(512, 64 * 1024) as usize,
        send_proxy,
        accept_proxy_from,
    }
}

pub(super) fn read_udp(l: &Section<'_>, pools: &[&str]) -> UdpListenerConfig {
    let pool = read_pool_ref(l, "pool", pools);
    if !l.has("pool") {
        l.error_here("`pool` is required");
    }
    UdpListenerConfig {
        pool: pool.unwrap_or_default(),
        session_timeout: l.duration("session_timeout", Duration::from_secs(30)),
        max_sessions: l.uint("max_sessions", 10_000, 1, 1_000_000) as usize,
        reply_timeout: l.duration("reply_timeout", Duration::from_secs(5)),
    }
}

/// Layer 4 knows only the client's address: a `tcp` or `udp` listener may not use a pool
/// that hashes on a header, cookie or path.
pub(super) fn check_hash_keys(l: &Section<'_>, kind: &super::ListenerKind, pools: &[PoolConfig]) {
    let used: Vec<(&str, &str)> = match kind {
        super::ListenerKind::Tcp(t) => t
            .pool
            .iter()
            .map(|p| ("pool", p.as_str()))
            .chain(t.sni.iter().map(|r| ("sni", r.pool.as_str())))
            .collect(),
        super::ListenerKind::Udp(u) => vec![("pool", u.pool.as_str())],
        _ => return,
    };
    for (key, name) in used {
        if let Some(p) = pools.iter().find(|p| p.name == name) {
            if p.hash_key != HashKey::ClientIp {
                l.error_at(
                    key,
                    format!(
                        "pool {name:?} hashes on {:?}, but a {} listener knows only the client \
                         address: use hash_key = \"client_ip\" for this pool",
                        p.hash_key.describe(),
                        kind.name()
                    ),
                );
            }
        }
    }
}

pub(super) fn read_pool_ref(s: &Section<'_>, key: &str, pools: &[&str]) -> Option<String> {
    let name = s.string(key)?;
    if pools.contains(&name.as_str()) {
        Some(name)
    } else {
        s.error_at(key, format!("no [[pools]] entry named {name:?}"));
        None
    }
}

/// A PROXY protocol version key: `"off"` (or absent), `"v1"` or `"v2"`.
pub(super) fn read_proxy_version(l: &Section<'_>, key: &str) -> Option<ProxyVersion> {
    match l.string(key).as_deref() {
        None | Some("off") => None,
        Some("v1") => Some(ProxyVersion::V1),
        Some("v2") => Some(ProxyVersion::V2),
        Some(other) => {
            l.error_at(
                key,
                format!("expected \"off\", \"v1\" or \"v2\", found {other:?}"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ListenerKind};

    const POOLS: &str = "[[pools]]\nname = \"a\"\n[[pools.servers]]\naddress = \"127.0.0.1:1\"\n\
                         [[pools]]\nname = \"b\"\n[[pools.servers]]\naddress = \"127.0.0.1:2\"\n";

    fn tcp(extra: &str) -> Result<TcpListenerConfig, Vec<String>> {
        let text = format!(
            "[[listeners]]\nname = \"t\"\nkind = \"tcp\"\nlisten = \"127.0.0.1:0\"\n{extra}\n{POOLS}"
        );
        match Config::parse(&text) {
            Ok(c) => match &c.listeners[0].kind {
                ListenerKind::Tcp(t) => Ok(t.clone()),
                other => panic!("not tcp: {other:?}"),
            },
            Err(e) => Err(e.into_iter().map(|e| e.path).collect()),
        }
    }

    #[test]
    fn tcp_defaults_and_routes() {
        let t = tcp("pool = \"a\"").expect("valid");
        assert_eq!(t.pool.as_deref(), Some("a"));
        assert_eq!(t.connect_attempts, 2);
        assert!(t.sni.is_empty() && t.send_proxy.is_none());
        let t = tcp(
            "send_proxy = \"v2\"\naccept_proxy_from = [\"10.0.0.0/8\"]\n\
             [[listeners.sni]]\nnames = [\"A.test\", \"*.b.test\"]\nalpn = [\"h2\"]\npool = \"b\"\n",
        )
        .expect("valid");
        assert_eq!(t.pool, None);
        assert_eq!(t.send_proxy, Some(ProxyVersion::V2));
        let r = &t.sni[0];
        assert!(r.matches_name("a.test"));
        assert!(r.matches_name("x.b.test"));
        assert!(!r.matches_name("b.test"));
        assert!(!r.matches_name("xb.test"));
        assert!(!r.matches_name("c.test"));
    }

    #[test]
    fn tcp_bad_settings_reported() {
        assert_eq!(tcp(""), Err(vec!["listeners[0]".to_string()]));
        assert_eq!(
            tcp("pool = \"zzz\""),
            Err(vec!["listeners[0].pool".to_string()])
        );
        assert_eq!(
            tcp("pool = \"a\"\nsend_proxy = \"v3\""),
            Err(vec!["listeners[0].send_proxy".to_string()])
        );
        assert_eq!(
            tcp("pool = \"a\"\naccept_proxy_from = [\"nope\"]"),
            Err(vec!["listeners[0].accept_proxy_from[0]".to_string()])
        );
        assert_eq!(
            tcp("[[listeners.sni]]\nnames = [\"a b\"]\npool = \"a\"\n"),
            Err(vec!["listeners[0].sni[0].names[0]".to_string()])
        );
        assert_eq!(
            tcp("[[listeners.sni]]\nnames = [\"a.test\"]\n"),
            Err(vec!["listeners[0].sni[0]".to_string()])
        );
    }

    #[test]
    fn udp_needs_a_known_pool() {
        let text = |extra: &str| {
            format!(
                "[[listeners]]\nname = \"u\"\nkind = \"udp\"\nlisten = \"127.0.0.1:0\"\n{extra}\n{POOLS}"
            )
        };
        let c = Config::parse(&text("pool = \"a\"\nsession_timeout = \"5s\"")).expect("valid");
        let ListenerKind::Udp(u) = &c.listeners[0].kind else {
            panic!("udp")
        };
        assert_eq!(u.session_timeout, Duration::from_secs(5));
        let errs = Config::parse(&text("")).expect_err("no pool");
        assert_eq!(errs[0].path, "listeners[0]");
    }
}
