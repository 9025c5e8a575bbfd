//! Reverse tunnels: the relay's `kind = "tunnel"` listener (where agents connect), its
//! `kind = "published"` ports, a socks listener's `via_agent`, and the `[agent]` section.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::reader::Section;
use super::socks::Password;
use super::tls::{read_tls_files, TlsFiles};
use crate::tunnel::allow::{AllowEntry, AllowList};

/// Bound of `connections` (agent) and `max_links` (relay).
const MAX_LINKS: u64 = crate::tunnel::proto::MAX_LINKS as u64;

/// A token: in the config, or in a file read at start-up (first line, trimmed).
#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    Inline(Password),
    File(PathBuf),
}

impl Token {
    pub fn load(&self) -> anyhow::Result<Password> {
        match self {
            Token::Inline(p) => Ok(p.clone()),
            Token::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("cannot read token file {}: {e}", path.display())
                })?;
                let t = text.lines().next().unwrap_or("").trim();
                anyhow::ensure!(!t.is_empty(), "token file {} is empty", path.display());
                Ok(Password::new(t))
            }
        }
    }

    pub fn expose(&self) -> anyhow::Result<Vec<u8>> {
        Ok(self.load()?.expose().as_bytes().to_vec())
    }
}

/// `token` or `token_file` in a section.
fn read_token(s: &Section<'_>) -> Option<Token> {
    match (s.string("token"), s.string("token_file")) {
        (Some(_), Some(_)) => {
            s.error_at("token_file", "give `token` or `token_file`, not both");
            None
        }
        (Some(t), None) if t.is_empty() || t.len() > crate::tunnel::proto::MAX_TOKEN => {
            s.error_at("token", "must be 1 to 1024 bytes");
            None
        }
        (Some(t), None) => Some(Token::Inline(Password::new(t))),
        (None, Some(f)) => Some(Token::File(PathBuf::from(f))),
        (None, None) => {
            s.error_here("`token` or `token_file` is required");
            None
        }
    }
}

fn read_name(s: &Section<'_>, key: &str) -> Option<String> {
    let name = s.string(key);
    match &name {
        None if !s.has(key) => s.error_here(format!("`{key}` is required")),
        Some(n) if !crate::tunnel::proto::valid_name(n) => {
            s.error_at(key, "1 to 64 letters, digits, '.', '_' or '-'")
        }
        _ => {}
    }
    name.filter(|n| crate::tunnel::proto::valid_name(n))
}

/// How the agent-relay connection is carried: `transport = "tls"` (the default) or
/// `"tcp"` (plain, opt-in: the token and every stream travel in the clear, for links already
/// protected such as WireGuard, IPsec or loopback). Both sides must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    #[default]
    Tls,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tls => "tls",
            Transport::Tcp => "tcp",
        }
    }
}

fn read_transport(s: &Section<'_>) -> Transport {
    match s.string("transport").as_deref() {
        None | Some("tls") => Transport::Tls,
        Some("tcp") => Transport::Tcp,
        Some(other) => {
            s.error_at(
                "transport",
                format!("expected \"tls\" or \"tcp\", found {other:?}"),
            );
            Transport::Tls
        }
    }
}

/// `kind = "tunnel"`: where agents connect.
#[derive(Debug, Clone, PartialEq)]
pub struct TunnelListenerConfig {
    /// `transport = "tcp"`: plain TCP, no TLS (then `tls` is `None`).
    pub transport: Transport,
    /// The relay's certificate and key (`gatehouse cert` makes a self-signed pair); `None`
    /// only with `transport = "tcp"`.
    pub tls: Option<TlsFiles>,
    /// The agents allowed in.
    pub agents: Vec<AcceptedAgent>,
    /// TLS handshake plus hello.
    pub handshake_timeout: Duration,
    /// How often an idle connection is pinged.
    pub heartbeat: Duration,
    /// A ping unanswered for this long ends the connection.
    pub dead_after: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AcceptedAgent {
    pub name: String,
    pub token: Token,
    /// Several agents may connect under this name (streams are balanced over them).
    pub pool: bool,
    /// Links one agent process (one session) may keep on this listener at once.
    pub max_links: u8,
}

pub(super) fn read_tunnel(l: &Section<'_>) -> Option<TunnelListenerConfig> {
    let transport = read_transport(l);
    let tls = read_tls_files(l);
    match transport {
        Transport::Tls if !l.has_table("tls") => l.error_here(
            "`tls = { cert = ..., key = ... }` is required on a tunnel listener \
             (or `transport = \"tcp\"` for plain TCP)",
        ),
        Transport::Tcp if l.has_table("tls") => {
            l.error_at("tls", "not used with `transport = \"tcp\"` (plain TCP)")
        }
        _ => {}
    }
    let mut agents: Vec<AcceptedAgent> = Vec::new();
    for a in l.tables("agents") {
        let name = read_name(&a, "name");
        let token = read_token(&a);
        let pool = a.bool("pool", false);
        let max_links = a.uint("max_links", MAX_LINKS, 1, MAX_LINKS) as u8;
        a.finish();
        if let (Some(name), Some(token)) = (name, token) {
            if agents.iter().any(|o| o.name == name) {
                a.error_at("name", format!("duplicate agent {name:?}"));
            }
            agents.push(AcceptedAgent {
                name,
                token,
                pool,
                max_links,
            });
        }
    }
    let heartbeat = l.duration("heartbeat", Duration::from_secs(10));
    let dead_after = l.duration("dead_after", Duration::from_secs(30));
    if heartbeat.is_zero() {
        l.error_at("heartbeat", "must be more than 0");
    }
    if transport == Transport::Tls && tls.is_none() {
        return None;
    }
    Some(TunnelListenerConfig {
        transport,
        tls: tls.filter(|_| transport == Transport::Tls),
        agents,
        handshake_timeout: l.duration("handshake_timeout", Duration::from_secs(10)),
        heartbeat,
        dead_after,
    })
}

/// `kind = "published"`: a relay port forwarding to a service an agent publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedListenerConfig {
    pub agent: String,
    pub service: String,
    /// A connection with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// A PROXY protocol header (the real client) sent first to the inside service.
    pub send_proxy: Option<super::ProxyVersion>,
}

pub(super) fn read_published(l: &Section<'_>) -> Option<PublishedListenerConfig> {
    let agent = read_name(l, "agent");
    let service = read_name(l, "service");
    let send_proxy = match l.string("send_proxy").as_deref() {
        None | Some("off") => None,
        Some("v1") => Some(super::ProxyVersion::V1),
        Some("v2") => Some(super::ProxyVersion::V2),
        Some(other) => {
            l.error_at(
                "send_proxy",
                format!("expected \"off\", \"v1\" or \"v2\", found {other:?}"),
            );
            None
        }
    };
    Some(PublishedListenerConfig {
        agent: agent?,
        service: service?,
        idle_timeout: l.duration("idle_timeout", Duration::from_secs(600)),
        send_proxy,
    })
}

/// How the agent checks the relay's certificate.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayVerify {
    /// Against this CA (or the relay's own self-signed certificate), for `server_name`.
    Ca(PathBuf),
    /// Exactly the certificate with this SHA-256 (DER) fingerprint.
    Fingerprint([u8; 32]),
}

/// The agent's TLS to the relay: the name checked and how.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayTls {
    /// The name the relay's certificate must carry (also the TLS SNI).
    pub server_name: String,
    pub verify: RelayVerify,
}

/// `[agent]`: this process dials relays and serves streams from them.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub name: String,
    pub token: Token,
    /// `host:port` of each relay, in failover order (or all at once, `all_relays`).
    pub relays: Vec<(String, u16)>,
    /// `mode = "all"`: connected to every relay at once; `"failover"` (the default): one at a
    /// time, in order.
    pub all_relays: bool,
    /// `connections`: links kept to each relay it is connected to (1 to 16, default 1).
    pub connections: u8,
    /// An HTTP proxy (`host:port`) the relays are reached through with CONNECT.
    pub http_proxy: Option<(String, u16)>,
    /// A SOCKS5 proxy (`host:port`) the relays are reached through instead.
    pub socks_proxy: Option<(String, u16)>,
    /// The egress proxy's login (`proxy_user` with `proxy_password` or
    /// `proxy_password_file`): HTTP `Proxy-Authorization: Basic`, SOCKS5 RFC 1929.
    pub proxy_login: Option<(String, Token)>,
    /// TLS to the relays (`transport = "tls"`, the default); `None` with `transport = "tcp"`.
    pub tls: Option<RelayTls>,
    /// Service name -> inside `host:port`.
    pub publish: BTreeMap<String, (String, u16)>,
    /// Destinations tunnelled SOCKS may reach (besides the published services).
    pub allow: AllowList,
    pub heartbeat: Duration,
    pub dead_after: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Dialling a relay (TCP + TLS + hello).
    pub connect_timeout: Duration,
    /// A relayed stream with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
}

/// `"host:port"` (`"[v6]:port"`).
fn parse_host_port(v: &toml_edit::Value) -> Result<(String, u16), String> {
    let s = v.as_str().ok_or("not a string")?;
    let (h, p) = s.rsplit_once(':').ok_or("expected \"host:port\"")?;
    let port: u16 = p.parse().map_err(|_| format!("bad port {p:?}"))?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    if port == 0 || crate::connector::Host::parse(h).is_none() {
        return Err("expected \"host:port\"".into());
    }
    Ok((h.to_ascii_lowercase(), port))
}

/// `proxy_user` and `proxy_password` (or `proxy_password_file`): the egress proxy's login.
fn read_proxy_login(a: &Section<'_>) -> Option<(String, Token)> {
    let user = a.string("proxy_user");
    let password = match (a.string("proxy_password"), a.string("proxy_password_file")) {
        (Some(_), Some(_)) => {
            a.error_at(
                "proxy_password_file",
                "give `proxy_password` or `proxy_password_file`, not both",
            );
            return None;
        }
        (Some(p), None) => Some(Token::Inline(Password::new(p))),
        (None, Some(f)) => Some(Token::File(PathBuf::from(f))),
        (None, None) => None,
    };
    if !a.has("http_proxy") && !a.has("socks_proxy") && (user.is_some() || password.is_some()) {
        a.error_at("proxy_user", "a login needs `http_proxy` or `socks_proxy`");
    }
    match (user, password) {
        // RFC 1929 carries each field in at most 255 bytes.
        (Some(u), _) if u.is_empty() || u.len() > 255 || u.contains(':') => {
            a.error_at("proxy_user", "1 to 255 bytes, without ':'");
            None
        }
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        (Some(_), None) => {
            a.error_at(
                "proxy_user",
                "needs `proxy_password` or `proxy_password_file`",
            );
            None
        }
        (None, Some(_)) => {
            a.error_at("proxy_password", "needs `proxy_user`");
            None
        }
    }
}

pub(super) fn read_agent(a: &Section<'_>) -> Option<AgentConfig> {
    let name = read_name(a, "name");
    let token = read_token(a);
    let relays = a
        .array("relays", "\"host:port\"", parse_host_port)
        .unwrap_or_default();
    if relays.is_empty() {
        a.error_at("relays", "at least one relay address is required");
    }
    let all_relays = match a.string("mode").as_deref() {
        None | Some("failover") => false,
        Some("all") => true,
        Some(other) => {
            a.error_at(
                "mode",
                format!("expected \"failover\" or \"all\", found {other:?}"),
            );
            false
        }
    };
    if a.has("http_proxy") && a.has("socks_proxy") {
        a.error_at(
            "socks_proxy",
            "give `http_proxy` or `socks_proxy`, not both",
        );
    }
    let transport = read_transport(a);
    let proxy_login = read_proxy_login(a);
    if transport == Transport::Tcp {
        for key in ["server_name", "ca", "fingerprint"] {
            if a.has(key) {
                a.error_at(key, "not used with `transport = \"tcp\"` (plain TCP)");
            }
        }
    }
    let server_name = a.string("server_name");
    if server_name.is_none() && transport == Transport::Tls {
        a.error_here("`server_name` (the name in the relay's certificate) is required");
    }
    let verify = match (a.string("ca"), a.string("fingerprint")) {
        _ if transport == Transport::Tcp => None,
        (Some(_), Some(_)) => {
            a.error_at("fingerprint", "give `ca` or `fingerprint`, not both");
            None
        }
        (Some(ca), None) => Some(RelayVerify::Ca(PathBuf::from(ca))),
        (None, Some(fp)) => match crate::tunnel::proto::parse_fingerprint(&fp) {
            Some(d) => Some(RelayVerify::Fingerprint(d)),
            None => {
                a.error_at("fingerprint", "expected \"sha256:\" and 64 hex digits");
                None
            }
        },
        (None, None) => {
            a.error_here("`ca` (a PEM file) or `fingerprint` is required to check the relay");
            None
        }
    };
    let p = a.table("publish");
    let mut publish = BTreeMap::new();
    for key in p.keys() {
        if !crate::tunnel::proto::valid_name(&key) {
            p.error_at(
                &key,
                "a service name is 1 to 64 letters, digits, '.', '_' or '-'",
            );
            continue;
        }
        if let Some(hp) = p.parse(&key, "\"host:port\"", parse_host_port) {
            publish.insert(key, hp);
        }
    }
    p.finish();
    let allow = a
        .array(
            "allow",
            "a CIDR, address or name, with an optional :port",
            |v| AllowEntry::parse(v.as_str().ok_or("not a string")?),
        )
        .unwrap_or_default();
    let cfg = AgentConfig {
        name: name?,
        token: token?,
        relays,
        all_relays,
        connections: a.uint("connections", 1, 1, MAX_LINKS) as u8,
        http_proxy: a.parse("http_proxy", "\"host:port\"", parse_host_port),
        socks_proxy: a.parse("socks_proxy", "\"host:port\"", parse_host_port),
        proxy_login,
        tls: match transport {
            Transport::Tls => Some(RelayTls {
                server_name: server_name?,
                verify: verify?,
            }),
            Transport::Tcp => None,
        },
        publish,
        allow: AllowList { entries: allow },
        heartbeat: a.duration("heartbeat", Duration::from_secs(10)),
        dead_after: a.duration("dead_after", Duration::from_secs(30)),
        reconnect_min: a.duration("reconnect_min", Duration::from_millis(500)),
        reconnect_max: a.duration("reconnect_max", Duration::from_secs(30)),
        connect_timeout: a.duration("connect_timeout", Duration::from_secs(10)),
        idle_timeout: a.duration("idle_timeout", Duration::from_secs(600)),
    };
    if cfg.heartbeat.is_zero() {
        a.error_at("heartbeat", "must be more than 0");
    }
    if cfg.reconnect_min.is_zero() || cfg.reconnect_min > cfg.reconnect_max {
        a.error_at(
            "reconnect_min",
            "must be more than 0 and at most reconnect_max",
        );
    }
    Some(cfg)
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ListenerKind};
    use super::*;

    const TUNNEL: &str =
        "[[listeners]]\nname = \"t\"\nkind = \"tunnel\"\nlisten = \"127.0.0.1:0\"\n";

    fn problems(text: &str) -> Vec<String> {
        Config::parse(text)
            .expect_err("invalid")
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    #[test]
    fn a_tunnel_listener_needs_tls_and_valid_agents() {
        let p = problems(&format!(
            "{TUNNEL}[[listeners.agents]]\nname = \"a/b\"\ntoken = \"x\"\n\
             [[listeners.agents]]\nname = \"c\"\n"
        ));
        assert!(p.contains(&"listeners[0]".to_string()), "{p:?}");
        assert!(
            p.contains(&"listeners[0].agents[0].name".to_string()),
            "{p:?}"
        );
        assert!(p.contains(&"listeners[0].agents[1]".to_string()), "{p:?}");
        let ok = Config::parse(&format!(
            "{TUNNEL}tls = {{ cert = \"c\", key = \"k\" }}\n\
             [[listeners.agents]]\nname = \"office\"\ntoken_file = \"/t\"\npool = true\n"
        ))
        .expect("valid");
        let ListenerKind::Tunnel(t) = &ok.listeners[0].kind else {
            panic!("tunnel")
        };
        assert_eq!(t.agents[0].token, Token::File("/t".into()));
        assert!(t.agents[0].pool);
        assert_eq!(t.dead_after, Duration::from_secs(30));
    }

    #[test]
    fn listeners_may_name_only_accepted_agents() {
        let p = problems(
            "[[listeners]]\nname = \"s\"\nkind = \"socks\"\nlisten = \"127.0.0.1:0\"\nvia_agent = \"nobody\"\n\
             [[listeners]]\nname = \"p\"\nkind = \"published\"\nlisten = \"127.0.0.1:0\"\nagent = \"nobody\"\nservice = \"web\"\n",
        );
        assert_eq!(p, ["listeners[0].via_agent", "listeners[1].agent"]);
    }

    #[test]
    fn policy_rules_may_route_only_to_accepted_agents() {
        let text = |agent: &str| {
            format!(
                "{TUNNEL}tls = {{ cert = \"c\", key = \"k\" }}\n\
                 [[listeners.agents]]\nname = \"office\"\ntoken = \"t\"\n\
                 [[policy.rules]]\naction = \"route\"\nagent = \"{agent}\"\n"
            )
        };
        assert!(Config::parse(&text("office")).is_ok());
        assert_eq!(problems(&text("home")), ["policy.rules[0].agent"]);
    }

    #[test]
    fn a_published_listener_sends_proxy_v1_or_v2_or_nothing() {
        let published = |extra: &str| {
            format!(
                "{TUNNEL}tls = {{ cert = \"c\", key = \"k\" }}\n\
                 [[listeners.agents]]\nname = \"office\"\ntoken = \"t\"\n\
                 [[listeners]]\nname = \"p\"\nkind = \"published\"\nlisten = \"127.0.0.1:0\"\n\
                 agent = \"office\"\nservice = \"web\"\n{extra}"
            )
        };
        assert_eq!(
            problems(&published("send_proxy = \"v3\"\n")),
            ["listeners[1].send_proxy"]
        );
        for (extra, want) in [
            ("", None),
            ("send_proxy = \"off\"\n", None),
            (
                "send_proxy = \"v1\"\n",
                Some(super::super::ProxyVersion::V1),
            ),
            (
                "send_proxy = \"v2\"\n",
                Some(super::super::ProxyVersion::V2),
            ),
        ] {
            let c = Config::parse(&published(extra)).expect("valid");
            let ListenerKind::Published(p) = &c.listeners[1].kind else {
                panic!("published")
            };
            assert_eq!(p.send_proxy, want, "{extra}");
        }
    }

    #[test]
    fn the_agent_section_is_checked_whole() {
        let p = problems(
            "[agent]\nname = \"office\"\ntoken = \"t\"\nrelays = [\"nohost\"]\nmode = \"some\"\n\
             http_proxy = \"p:3128\"\nsocks_proxy = \"p:1080\"\n\
             ca = \"c.pem\"\nfingerprint = \"sha256:00\"\nallow = [\"10.0.0.0/8\", \"a b\"]\n\
             [agent.publish]\n\"bad/name\" = \"127.0.0.1:1\"\nweb = \"127.0.0.1\"\n",
        );
        for want in [
            "agent.relays[0]",
            "agent.mode",
            "agent.socks_proxy",
            "agent",
            "agent.fingerprint",
            "agent.allow[1]",
            "agent.publish.bad/name",
            "agent.publish.web",
        ] {
            assert!(p.iter().any(|x| x == want), "missing {want} in {p:?}");
        }
        let c = Config::parse(
            "[agent]\nname = \"office\"\ntoken = \"t\"\nrelays = [\"relay.example:7000\"]\n\
             server_name = \"relay.test\"\nfingerprint = \"sha256:\
             000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\"\n",
        )
        .expect("valid");
        let a = c.agent.expect("agent");
        assert!(c.listeners.is_empty());
        assert_eq!(a.relays, [("relay.example".to_string(), 7000)]);
        assert!(!a.all_relays, "failover order by default");
        assert_eq!(a.connections, 1, "one link by default");
        let tls = a.tls.expect("TLS by default");
        assert!(matches!(tls.verify, RelayVerify::Fingerprint(d) if d[31] == 0x1f));
        assert!(a.allow.entries.is_empty(), "nothing allowed by default");
    }

    #[test]
    fn links_are_bounded_on_both_sides() {
        let agent = |n: &str| {
            format!(
                "[agent]\nname = \"office\"\ntoken = \"t\"\nrelays = [\"r:7000\"]\n\
                 transport = \"tcp\"\nconnections = {n}\n"
            )
        };
        let c = Config::parse(&agent("16")).expect("16 links");
        assert_eq!(c.agent.expect("agent").connections, 16);
        for bad in ["0", "17", "-1", "\"2\""] {
            assert_eq!(problems(&agent(bad)), ["agent.connections"], "{bad}");
        }
        let relay = |n: &str| {
            format!(
                "{TUNNEL}transport = \"tcp\"\n[[listeners.agents]]\nname = \"office\"\n\
                 token = \"t\"\n{n}"
            )
        };
        let max = |text: &str| {
            let c = Config::parse(text).expect("valid");
            let ListenerKind::Tunnel(t) = &c.listeners[0].kind else {
                panic!("tunnel")
            };
            t.agents[0].max_links
        };
        assert_eq!(max(&relay("")), 16, "as many as an agent may keep");
        assert_eq!(max(&relay("max_links = 2\n")), 2);
        for bad in ["max_links = 0\n", "max_links = 17\n"] {
            assert_eq!(
                problems(&relay(bad)),
                ["listeners[0].agents[0].max_links"],
                "{bad}"
            );
        }
    }

    #[test]
    fn the_plain_transport_is_explicit_on_both_sides() {
        // The relay: TLS by default (and then `tls` is required); `tcp` takes no `tls`.
        let tunnel = |extra: &str| {
            format!("{TUNNEL}{extra}[[listeners.agents]]\nname = \"office\"\ntoken = \"t\"\n")
        };
        let c = Config::parse(&tunnel("tls = { cert = \"c\", key = \"k\" }\n")).expect("tls");
        let ListenerKind::Tunnel(t) = &c.listeners[0].kind else {
            panic!("tunnel")
        };
        assert_eq!(t.transport, Transport::Tls);
        assert!(t.tls.is_some());
        let c = Config::parse(&tunnel("transport = \"tcp\"\n")).expect("tcp");
        let ListenerKind::Tunnel(t) = &c.listeners[0].kind else {
            panic!("tunnel")
        };
        assert_eq!((t.transport, t.tls.is_none()), (Transport::Tcp, true));
        assert_eq!(problems(&tunnel("transport = \"tls\"\n")), ["listeners[0]"]);
        assert_eq!(
            problems(&tunnel(
                "transport = \"tcp\"\ntls = { cert = \"c\", key = \"k\" }\n"
            )),
            ["listeners[0].tls"]
        );
        assert!(problems(&tunnel("transport = \"udp\"\n"))
            .contains(&"listeners[0].transport".to_string()));
        // The agent: `tcp` needs no verification and takes none.
        let agent = "[agent]\nname = \"office\"\ntoken = \"t\"\nrelays = [\"r:7000\"]\n";
        let c = Config::parse(&format!("{agent}transport = \"tcp\"\n")).expect("tcp agent");
        assert_eq!(c.agent.expect("agent").tls, None);
        let p = problems(&format!(
            "{agent}transport = \"tcp\"\nserver_name = \"r\"\nca = \"c.pem\"\n"
        ));
        assert_eq!(p, ["agent.server_name", "agent.ca"]);
        assert!(
            problems(agent).contains(&"agent".to_string()),
            "TLS by default"
        );
    }

    #[test]
    fn an_egress_login_needs_a_user_a_password_and_a_proxy() {
        let agent = "[agent]\nname = \"office\"\ntoken = \"t\"\nrelays = [\"r:7000\"]\n\
                     transport = \"tcp\"\n";
        let c = Config::parse(&format!(
            "{agent}http_proxy = \"p:3128\"\nproxy_user = \"alice\"\nproxy_password_file = \"/pw\"\n"
        ))
        .expect("valid");
        let login = c.agent.expect("agent").proxy_login.expect("login");
        assert_eq!(login, ("alice".to_string(), Token::File("/pw".into())));
        for (extra, want) in [
            (
                "http_proxy = \"p:1\"\nproxy_user = \"alice\"\n",
                "agent.proxy_user",
            ),
            (
                "socks_proxy = \"p:1\"\nproxy_password = \"x\"\n",
                "agent.proxy_password",
            ),
            (
                "proxy_user = \"a\"\nproxy_password = \"x\"\n",
                "agent.proxy_user",
            ),
            (
                "http_proxy = \"p:1\"\nproxy_user = \"a:b\"\nproxy_password = \"x\"\n",
                "agent.proxy_user",
            ),
            (
                "http_proxy = \"p:1\"\nproxy_user = \"a\"\nproxy_password = \"x\"\n\
                 proxy_password_file = \"/pw\"\n",
                "agent.proxy_password_file",
            ),
        ] {
            assert_eq!(problems(&format!("{agent}{extra}")), [want], "{extra}");
        }
    }
}
