//! The policy at the SOCKS door: who the client is, and where each command may go. The rules
//! themselves are in `crate::policy`; this module asks them in the order `crate::policy`
//! documents (precheck, resolve only when asked, decide on every address) and turns the
//! verdict into what the command does.
//!
//! Who the client is:
//! - `[policy.listeners.<name>] auth = true`: SOCKS5 must log in with RFC 1929, checked
//!   against the policy's `users_file` (the identity carries its groups); SOCKS4, which has no
//!   password, is refused. The listener's own `[[listeners.users]]` are not consulted.
//! - otherwise the listener's own `auth` / `[[listeners.users]]` work as before; such a user
//!   has a name (rules with `users` match it) but no groups.
//! - SOCKS4 USERID is taken as an unauthenticated user name only with
//!   `socks4_userid = true` (groups from the users file when it lists the name).
//!
//! Failed logins from either source count against the client address in the shared
//! failed-login limiter; a blocked address is refused without checking the password.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use super::codec::{Credentials, Target};
use super::reply::SocksError;
use super::server::{Session, SocksRequest, SocksServer};
use crate::connector::{interleave, Host};
use crate::policy::login::LoginRefusal;
use crate::policy::{AccessRequest, Action, Identity, Policy, Precheck, Protocol, Secret};

/// Where the policy lets a CONNECT (or BIND peer) go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Allowed {
    /// Directly, only to these checked addresses (never resolve again: DNS rebinding).
    Direct(Vec<SocketAddr>),
    /// Through these parents, in failover order; `ips` were evaluated by the rules (empty
    /// when the name was not resolved). See [`SocksServer::route_direct`].
    Route {
        parents: Arc<[String]>,
        ips: Vec<IpAddr>,
    },
}

impl SocksServer {
    /// RFC 1929 credentials: the identity, or why not (the caller answers status 1).
    pub(super) async fn login(
        &self,
        policy: &Policy,
        client: IpAddr,
        creds: &Credentials,
        s: &mut Session,
    ) -> Result<Identity, SocksError> {
        // The name goes to the log even when the login fails; never the password.
        let name = String::from_utf8_lossy(&creds.user).into_owned();
        s.login = Some(name.clone());
        let logins = &self.svc.logins;
        let result = if policy.listener(&self.name).auth {
            // A password that is not UTF-8 matches no hash: charged, not checked.
            let (users, pw) = match std::str::from_utf8(&creds.password) {
                Ok(pw) => (policy.user_source(), pw),
                Err(_) => (crate::policy::login::UserSource::Nobody, ""),
            };
            logins.log_in(client, users, &name, &Secret::new(pw)).await
        } else {
            logins.log_in_checked(client, || self.listener_user(creds))
        };
        result.map_err(|refused| {
            tracing::info!(%client, user = ?name, ?refused, "SOCKS login refused");
            match refused {
                LoginRefusal::Blocked(_) => SocksError::LoginBlocked,
                LoginRefusal::Overloaded => SocksError::LoginBusy,
                LoginRefusal::BadCredentials => SocksError::AuthFailed,
                LoginRefusal::Unavailable => SocksError::LoginUnavailable,
            }
        })
    }

    /// The listener's own `[[listeners.users]]`: a name, no groups.
    fn listener_user(&self, creds: &Credentials) -> Option<Identity> {
        let found = self
            .cfg
            .users
            .iter()
            .find(|u| u.name.as_bytes() == creds.user.as_slice());
        // Compare a password even for an unknown user, so timing does not tell names apart.
        let ok = match found {
            Some(u) => u.password.matches(&creds.password),
            None => {
                let _ = crate::config::Password::new("").matches(&creds.password);
                false
            }
        };
        found.filter(|_| ok).map(|u| Identity {
            name: u.name.clone(),
            groups: Vec::new(),
        })
    }

    /// A CONNECT through a tunnel agent: the rules decide here (never resolving: names
    /// resolve on the agent's side), the agent's allow-list and guard there.
    pub(super) fn check_remote(
        &self,
        s: &mut Session,
        req: &SocksRequest,
        protocol: Protocol,
        t: &Target,
    ) -> Result<(), SocksError> {
        let policy = s.policy.clone();
        let areq = access_request(&self.name, req, protocol, &t.host, t.port);
        let ip = match &t.host {
            Host::Ip(ip) => Some(*ip),
            Host::Name(_) => None,
        };
        let verdict = policy.decide_remote(&areq, ip);
        s.rule = Some(verdict.rule.clone());
        match verdict.action {
            Action::Allow => Ok(()),
            Action::Deny => {
                self.svc.metrics.denial(&verdict.rule);
                Err(SocksError::Denied {
                    rule: verdict.rule,
                    refusal: verdict.refusal,
                })
            }
            Action::Route(_) => Err(self.route_unsupported(s, "a tunnelled CONNECT")),
        }
    }

    /// Evaluates the rules for `host:port`, resolving the name only when they need it.
    /// A denial is an error (reply 0x02); the deciding rule goes to the session's log record.
    pub(super) async fn check(
        &self,
        s: &mut Session,
        req: &SocksRequest,
        protocol: Protocol,
        host: &Host,
        port: u16,
    ) -> Result<Allowed, SocksError> {
        let policy = s.policy.clone();
        let areq = access_request(&self.name, req, protocol, host, port);
        let (verdict, ips) = match policy.precheck(&areq) {
            Precheck::Decided(v) => (v, literal(host)),
            Precheck::Resolve => {
                let ips = self.svc.connector.resolve(host).await?;
                (policy.decide(&areq, &ips), ips)
            }
        };
        s.rule = Some(verdict.rule.clone());
        let addrs = |ips: Vec<IpAddr>| -> Vec<SocketAddr> {
            interleave(ips)
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect()
        };
        match verdict.action {
            Action::Deny => {
                self.svc.metrics.denial(&verdict.rule);
                Err(SocksError::Denied {
                    rule: verdict.rule,
                    refusal: verdict.refusal,
                })
            }
            Action::Allow => Ok(Allowed::Direct(addrs(ips))),
            Action::Route(parents) => Ok(Allowed::Route { parents, ips }),
        }
    }

    /// The addresses a `direct` entry of a route may connect to. A route verdict skips the
    /// guard (a parent reaches the destination, not us), so they are checked here: `None`
    /// (direct refused) unless the route has a `direct` entry and every address of the
    /// destination passes the guard. A name no rule needed resolved is resolved only then.
    pub(super) async fn route_direct(
        &self,
        policy: &Policy,
        parents: &[String],
        host: &Host,
        port: u16,
        ips: Vec<IpAddr>,
    ) -> Option<Vec<SocketAddr>> {
        if !parents.iter().any(|p| p == crate::upstream::DIRECT) {
            return None;
        }
        let ips = match ips.is_empty() {
            true => self.svc.connector.resolve(host).await.ok()?,
            false => ips,
        };
        guarded(policy, ips, port)
    }

    /// One UDP datagram's destination: the checked address to send to, or why it is dropped.
    /// Names are resolved per datagram (through the connector's cache); nothing is cached
    /// here, so every datagram is checked against the addresses it is actually sent to.
    pub(super) async fn udp_destination(
        &self,
        s: &mut Session,
        req: &SocksRequest,
        target: &Target,
        names: &mut super::udp::NameCache,
    ) -> Result<UdpDest, String> {
        let policy = s.policy.clone();
        let areq = access_request(
            &self.name,
            req,
            Protocol::SocksUdp,
            &target.host,
            target.port,
        );
        let (verdict, ips) = match policy.precheck(&areq) {
            Precheck::Decided(v) => (v, literal(&target.host)),
            Precheck::Resolve => {
                let cached = match &target.host {
                    Host::Name(n) => names.get(n, tokio::time::Instant::now()),
                    _ => None,
                };
                let ips = match cached {
                    Some(ips) => ips,
                    None => match self.svc.connector.resolve(&target.host).await {
                        Ok(ips) => {
                            if let Host::Name(n) = &target.host {
                                names.insert(n, ips.clone(), tokio::time::Instant::now());
                            }
                            ips
                        }
                        Err(e) => return Err(e.to_string()),
                    },
                };
                (policy.decide(&areq, &ips), ips)
            }
        };
        let denied = verdict.action != Action::Allow;
        if s.rule.is_none() || (denied && !s.udp_denied_seen) {
            if verdict.action == Action::Deny {
                self.svc.metrics.denial(&verdict.rule);
            }
            s.rule = Some(verdict.rule.clone());
            s.udp_denied_seen |= denied;
        }
        match verdict.action {
            Action::Allow => interleave(ips)
                .first()
                .map(|ip| UdpDest::Direct(SocketAddr::new(*ip, target.port)))
                .ok_or_else(|| "no address".to_string()),
            Action::Route(parents) if crate::upstream::route_agent(&parents).is_some() => {
                let agent = crate::upstream::route_agent(&parents).unwrap_or_default();
                Ok(UdpDest::Agent(std::sync::Arc::from(agent)))
            }
            Action::Deny => Err(match verdict.refusal {
                Some(r) => format!("denied by rule {}: {}", verdict.rule, r.as_str()),
                None => format!("denied by rule {}", verdict.rule),
            }),
            Action::Route(_) => Err(format!(
                "rule {} routes through parents, which cannot carry UDP",
                verdict.rule
            )),
        }
    }
}

/// Where one UDP datagram goes: sent from here to this address, or through a tunnel agent
/// (a rule's `agent`), which resolves the name and checks its allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum UdpDest {
    Direct(SocketAddr),
    Agent(std::sync::Arc<str>),
}

fn access_request<'a>(
    listener: &'a str,
    req: &'a SocksRequest,
    protocol: Protocol,
    host: &'a Host,
    port: u16,
) -> AccessRequest<'a> {
    AccessRequest {
        listener,
        client: req.client.ip().to_canonical(),
        user: req.identity.as_ref(),
        dest_host: Some(host),
        dest_port: port,
        protocol,
        method: None,
        at: SystemTime::now(),
    }
}

/// The address of a literal destination (checked by the precheck); nothing for a name.
fn literal(host: &Host) -> Vec<IpAddr> {
    match host {
        Host::Ip(ip) => vec![*ip],
        Host::Name(_) => Vec::new(),
    }
}

/// Every address through the policy's guard, or `None`: a name that mixes allowed and
/// forbidden addresses is refused whole, as [`Policy::decide`] does.
fn guarded(policy: &Policy, ips: Vec<IpAddr>, port: u16) -> Option<Vec<SocketAddr>> {
    if ips.is_empty() || ips.iter().any(|ip| policy.guard(*ip, port).is_err()) {
        return None;
    }
    Some(
        interleave(ips)
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect(),
    )
}

/// SOCKS4 USERID as an unauthenticated user, when the listener's policy allows it.
pub(super) fn socks4_identity(policy: &Policy, listener: &str, user_id: &[u8]) -> Option<Identity> {
    if !policy.listener(listener).socks4_userid || user_id.is_empty() {
        return None;
    }
    let name = std::str::from_utf8(user_id).ok()?;
    crate::policy::users::check_user_name(name).ok()?;
    Some(
        policy
            .users()
            .and_then(|u| u.identity(name))
            .unwrap_or_else(|| Identity {
                name: name.to_string(),
                groups: Vec::new(),
            }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::users::{format_entry, hash_password, CacheLimits, HashAlgorithm, Users};
    use crate::policy::PolicyConfig;

    fn policy(toml: &str, users: Option<Users>) -> Policy {
        let cfg = PolicyConfig::from_toml(toml, &["s"]).expect("policy config");
        Policy::compile_with_users(&cfg, Vec::new(), users).expect("compile")
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().expect("ip")).collect()
    }

    #[test]
    fn route_direct_needs_every_address_past_the_guard() {
        let p = policy("[policy]\n", None);
        let ok = guarded(&p, ips(&["192.0.2.7", "2001:db8::1"]), 80).expect("public");
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].port(), 80);
        for bad in [
            "127.0.0.1",
            "169.254.169.254",
            "::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            assert_eq!(guarded(&p, ips(&["192.0.2.7", bad]), 80), None, "{bad}");
        }
        assert_eq!(guarded(&p, Vec::new(), 80), None, "nothing checked");
        let private = policy("[policy]\nrefuse_private = true\n", None);
        assert_eq!(guarded(&private, ips(&["10.1.2.3"]), 80), None);
        assert!(guarded(&p, ips(&["10.1.2.3"]), 80).is_some());
    }

    #[test]
    fn socks4_userid_only_when_the_listener_allows_it() {
        let hash =
            hash_password(&Secret::new("pw"), HashAlgorithm::Bcrypt { cost: 4 }).expect("hash");
        let line = format_entry("bob", &hash, &["staff".into()]).expect("entry");
        let users = || Users::parse(&line, CacheLimits::default()).expect("users");
        let off = policy("[policy]\n", Some(users()));
        assert_eq!(socks4_identity(&off, "s", b"bob"), None);
        let on = policy(
            "[policy.listeners.s]\nsocks4_userid = true\n",
            Some(users()),
        );
        let bob = socks4_identity(&on, "s", b"bob").expect("bob");
        assert_eq!(
            bob.groups,
            vec!["staff".to_string()],
            "groups from the file"
        );
        let eve = socks4_identity(&on, "s", b"eve").expect("unknown name still a name");
        assert!(eve.groups.is_empty());
        assert_eq!(socks4_identity(&on, "s", b""), None);
        assert_eq!(socks4_identity(&on, "s", b"a:b"), None, "not a user name");
        assert_eq!(socks4_identity(&on, "s", &[0xff, 0xfe]), None, "not UTF-8");
    }
}
