//! The agent's allow-list: which destinations tunnelled SOCKS may reach inside its network.
//! Pure decisions over values; the agent resolves names and then asks [`AllowList::check`]
//! for every address.
//!
//! An entry is a CIDR or address (`"10.0.0.0/8"`), a host name (`"db.internal"`, matched
//! exactly against the name the client asked for), either with a port or range after a colon
//! (`"10.1.0.0/16:22"`, `"db.internal:5432"`, `"[fd00::/8]:80-89"`). Nothing else is reachable:
//! the default is empty, and the published services' own `host:port` are added by the agent.
//!
//! The destination guard (`crate::policy::guard`) applies too: loopback, link-local,
//! multicast and the agent's own addresses are refused unless a CIDR entry names the address
//! explicitly (the policy's `dest_addrs` rule), so `"127.0.0.1:8000"` lets exactly that in.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::PortRange;
use crate::policy::guard::{self, Refusal};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowHost {
    Net(IpNet),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    pub host: AllowHost,
    /// `None`: every port.
    pub ports: Option<PortRange>,
}

impl AllowEntry {
    /// Parses one entry of `allow`.
    pub fn parse(s: &str) -> Result<AllowEntry, String> {
        let s = s.trim();
        let net = |t: &str| -> Option<IpNet> {
            t.parse::<IpNet>()
                .ok()
                .or_else(|| t.parse::<IpAddr>().ok().map(IpNet::from))
        };
        if let Some(n) = net(s) {
            return Ok(AllowEntry {
                host: AllowHost::Net(n),
                ports: None,
            });
        }
        let (host, ports) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest
                .split_once("]:")
                .ok_or("expected \"[address or CIDR]:port\"")?;
            (h, Some(p))
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        let ports = match ports {
            None => None,
            Some(p) => {
                let (a, b) = p.split_once('-').unwrap_or((p, p));
                let first: u16 = a.trim().parse().map_err(|_| format!("bad port {p:?}"))?;
                let last: u16 = b.trim().parse().map_err(|_| format!("bad port {p:?}"))?;
                if first == 0 || first > last {
                    return Err(format!("bad port range {p:?}"));
                }
                Some(PortRange { first, last })
            }
        };
        let host = match net(host) {
            Some(n) => AllowHost::Net(n),
            None => match crate::connector::Host::parse(host) {
                Some(crate::connector::Host::Name(n)) => AllowHost::Name(n),
                _ => return Err(format!("{host:?} is not a CIDR, address or host name")),
            },
        };
        Ok(AllowEntry { host, ports })
    }

    fn port_ok(&self, port: u16) -> bool {
        self.ports.is_none_or(|r| r.contains(port))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    pub entries: Vec<AllowEntry>,
}

/// Why a destination was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No entry covers it.
    NotListed,
    /// Listed by name only, and the guard refuses the address it resolved to.
    Guard(Refusal),
}

impl AllowList {
    /// Whether `ip:port`, reached by the name `name` (when the client gave one), may be
    /// connected to. `is_own` says whether an address is one of the agent's own.
    pub fn check(
        &self,
        name: Option<&str>,
        ip: IpAddr,
        port: u16,
        is_own: impl Fn(IpAddr) -> bool,
    ) -> Result<(), Denied> {
        let ip = guard::fold_v4(ip);
        let by_net = self
            .entries
            .iter()
            .any(|e| e.port_ok(port) && matches!(&e.host, AllowHost::Net(n) if n.contains(&ip)));
        if by_net {
            // Named explicitly by address: the guard's categories do not apply.
            return Ok(());
        }
        let by_name = name.is_some_and(|name| {
            self.entries
                .iter()
                .any(|e| e.port_ok(port) && matches!(&e.host, AllowHost::Name(n) if n == name))
        });
        if !by_name {
            return Err(Denied::NotListed);
        }
        guard::check_with(ip, false, is_own).map_err(Denied::Guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        AllowList {
            entries: entries
                .iter()
                .map(|e| AllowEntry::parse(e).expect("entry"))
                .collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    const NOT_OWN: fn(IpAddr) -> bool = |_| false;

    #[test]
    fn entries_parse() {
        assert_eq!(
            AllowEntry::parse("10.0.0.0/8"),
            Ok(AllowEntry {
                host: AllowHost::Net("10.0.0.0/8".parse().expect("net")),
                ports: None
            })
        );
        let e = AllowEntry::parse("db.internal:5432").expect("name");
        assert_eq!(e.host, AllowHost::Name("db.internal".into()));
        assert_eq!(
            e.ports,
            Some(PortRange {
                first: 5432,
                last: 5432
            })
        );
        let e = AllowEntry::parse("[fd00::/8]:80-89").expect("v6");
        assert!(matches!(e.host, AllowHost::Net(_)));
        assert!(AllowEntry::parse("fd00::1").is_ok());
        for bad in ["", "a:b", "10.0.0.0/8:0", "x:9-1", "[fd00::1", "a b"] {
            assert!(AllowEntry::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nothing_is_allowed_by_default() {
        let l = AllowList::default();
        assert_eq!(
            l.check(None, ip("10.0.0.1"), 80, NOT_OWN),
            Err(Denied::NotListed)
        );
    }

    #[test]
    fn nets_and_ports_decide() {
        let l = list(&["10.0.0.0/8", "192.168.1.0/24:22"]);
        assert_eq!(l.check(None, ip("10.9.8.7"), 443, NOT_OWN), Ok(()));
        assert_eq!(l.check(None, ip("::ffff:10.9.8.7"), 443, NOT_OWN), Ok(()));
        assert_eq!(l.check(None, ip("192.168.1.5"), 22, NOT_OWN), Ok(()));
        assert_eq!(
            l.check(None, ip("192.168.1.5"), 23, NOT_OWN),
            Err(Denied::NotListed)
        );
        assert_eq!(
            l.check(None, ip("11.0.0.1"), 80, NOT_OWN),
            Err(Denied::NotListed)
        );
    }

    #[test]
    fn names_match_exactly_and_their_addresses_meet_the_guard() {
        let l = list(&["db.internal:5432", "127.0.0.1:8000"]);
        assert_eq!(
            l.check(Some("db.internal"), ip("10.1.1.1"), 5432, NOT_OWN),
            Ok(())
        );
        assert_eq!(
            l.check(Some("x.db.internal"), ip("10.1.1.1"), 5432, NOT_OWN),
            Err(Denied::NotListed)
        );
        // A name that resolves to loopback is refused; loopback named by address is not.
        assert_eq!(
            l.check(Some("db.internal"), ip("127.0.0.1"), 5432, NOT_OWN),
            Err(Denied::Guard(Refusal::Loopback))
        );
        assert_eq!(
            l.check(Some("db.internal"), ip("10.1.1.1"), 5432, |_| true),
            Err(Denied::Guard(Refusal::OwnAddress))
        );
        assert_eq!(l.check(None, ip("127.0.0.1"), 8000, NOT_OWN), Ok(()));
        assert_eq!(
            l.check(None, ip("127.0.0.1"), 8001, NOT_OWN),
            Err(Denied::NotListed)
        );
    }
}
