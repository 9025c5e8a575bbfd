//! `kind = "socks"` listener settings.

use std::time::Duration;

use super::reader::Section;

#[derive(Debug, Clone, PartialEq)]
pub struct SocksListenerConfig {
    /// Time from accept to a decoded request (TLS, greeting, authentication, request).
    pub handshake_timeout: Duration,
    /// A CONNECT or BIND relay with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// How long a BIND waits for its peer to connect.
    pub bind_timeout: Duration,
    /// A UDP association with no datagram either way for this long ends.
    pub udp_idle_timeout: Duration,
    /// Whether SOCKS4 and SOCKS4a requests are served.
    pub socks4: bool,
    /// Accepted SOCKS5 methods, in order of preference.
    pub auth: Vec<AuthMethod>,
    /// The user database for username/password authentication.
    pub users: Vec<SocksUser>,
    pub tls: Option<super::ServerTls>,
    /// Which remote senders' datagrams a UDP association passes back to the client.
    pub udp_filter: UdpFilter,
    /// CONNECT goes through this tunnel agent instead of out of this host.
    pub via_agent: Option<String>,
}

/// Filtering of inbound UDP, in the terms of RFC 4787 section 5 (NAT behaviour for UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpFilter {
    /// Address-dependent filtering: only replies from IP addresses the client has sent to
    /// through this association (any port of them).
    Address,
    /// Endpoint-independent filtering: replies from any sender.
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// RFC 1928 method 0x00.
    None,
    /// RFC 1929 method 0x02.
    Password,
    /// RFC 1961 method 0x01 (Kerberos through GSSAPI); only from the policy's login
    /// (`[policy.listeners.<name>] auth = ["gssapi"]`).
    Gssapi,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SocksUser {
    pub name: String,
    pub password: Password,
}

/// A password from the config. `Debug` prints a mask; comparison takes the same time whatever
/// the candidate's bytes.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn new(s: impl Into<String>) -> Password {
        Password(s.into())
    }

    /// The secret itself, for sending it (a tunnel agent's token).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, candidate: &[u8]) -> bool {
        let mine = self.0.as_bytes();
        let mut diff = mine.len() ^ candidate.len();
        for (i, b) in candidate.iter().enumerate() {
            diff |= usize::from(b ^ mine.get(i).copied().unwrap_or(0));
        }
        diff == 0
    }
}

/// For config comparison on reload (a changed password restarts the listener).
impl PartialEq for Password {
    fn eq(&self, other: &Self) -> bool {
        self.matches(other.0.as_bytes())
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

pub(super) fn read_socks(l: &Section<'_>) -> SocksListenerConfig {
    let users = read_users(l);
    let auth = l.array("auth", "\"none\" or \"password\"", |v| match v.as_str() {
        Some("none") => Ok(AuthMethod::None),
        Some("password") => Ok(AuthMethod::Password),
        _ => Err("unknown method".to_string()),
    });
    let auth = match auth {
        Some(a) if a.is_empty() => {
            l.error_at("auth", "at least one method is required");
            vec![AuthMethod::None]
        }
        Some(a) => {
            if users.is_empty() && a.contains(&AuthMethod::Password) {
                l.error_at(
                    "auth",
                    "\"password\" needs at least one [[listeners.users]] entry",
                );
            }
            if !users.is_empty() && a.contains(&AuthMethod::None) {
                l.error_at(
                    "auth",
                    "with users configured, only \"password\" is allowed",
                );
            }
            a
        }
        None if users.is_empty() => vec![AuthMethod::None],
        None => vec![AuthMethod::Password],
    };
    // SOCKS4 has no authentication; with a user database it would be a way around it.
    let socks4 = l.bool("socks4", users.is_empty());
    if socks4 && !users.is_empty() {
        l.error_at(
            "socks4",
            "SOCKS4 cannot authenticate; it must be false when users are configured",
        );
    }
    let tls = super::tls::read_server_tls(l, &[]);
    SocksListenerConfig {
        handshake_timeout: l.duration("handshake_timeout", Duration::from_secs(10)),
        idle_timeout: l.duration("idle_timeout", Duration::from_secs(600)),
        bind_timeout: l.duration("bind_timeout", Duration::from_secs(60)),
        udp_idle_timeout: l.duration("udp_idle_timeout", Duration::from_secs(120)),
        socks4,
        auth,
        users,
        tls,
        udp_filter: match l.string("udp_filter").as_deref() {
            None | Some("address") => UdpFilter::Address,
            Some("any") => UdpFilter::Any,
            Some(other) => {
                l.error_at(
                    "udp_filter",
                    format!("expected \"address\" or \"any\", found {other:?}"),
                );
                UdpFilter::Address
            }
        },
        via_agent: l.string("via_agent"),
    }
}

fn read_users(l: &Section<'_>) -> Vec<SocksUser> {
    let mut users: Vec<SocksUser> = Vec::new();
    for u in l.tables("users") {
        let name = u.string("name");
        let password = u.string("password");
        for (key, value) in [("name", &name), ("password", &password)] {
            match value {
                None if !u.has(key) => u.error_here(format!("`{key}` is required")),
                // RFC 1929: each is 1 to 255 bytes on the wire.
                Some(v) if v.is_empty() || v.len() > 255 => {
                    u.error_at(key, "must be 1 to 255 bytes")
                }
                _ => {}
            }
        }
        u.finish();
        if let (Some(name), Some(password)) = (name, password) {
            if users.iter().any(|o| o.name == name) {
                u.error_at("name", format!("duplicate user {name:?}"));
            }
            users.push(SocksUser {
                name,
                password: Password(password),
            });
        }
    }
    users
}
