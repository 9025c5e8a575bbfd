//! The proxy's own addresses, as one live set shared by every door.
//!
//! Two kinds of address are the proxy's own:
//!
//! - **Local addresses**: every address of every local interface, from the kernel's own list
//!   (`crate::ifwatch` keeps it current). A service on the proxy's host that listens on
//!   `0.0.0.0` is reachable through any of them, so the guard refuses them like loopback: unless
//!   an `allow` rule's `dest_addrs` names the address.
//! - **The listeners' own sockets**: each listener's (and the admin endpoint's) bound address
//!   and port. `(local address, listener port)` is refused always, even when a rule names the
//!   address, so the proxy can never be told to connect to itself (nested tunnels into its own
//!   port). A listener bound to a specific address is matched on that address; one bound to
//!   `0.0.0.0` or `[::]` on any local address, loopback and the unspecified address included
//!   (a connect to `0.0.0.0` reaches the host itself). Other ports on local addresses follow the
//!   first rule.
//!
//! A [`Snapshot`] is immutable; [`LocalAddrs`] swaps a new one in whole (`ArcSwap`), so a check
//! costs one atomic load and never waits for a writer, and every policy (old or reloaded) reads
//! the same current set without being recompiled.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::guard::fold_v4;

/// One consistent view of the proxy's own addresses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Addresses of the local interfaces, folded (`::ffff:a.b.c.d` as IPv4), sorted, unique.
    interfaces: Vec<IpAddr>,
    /// The process's listening sockets as bound (port 0 already resolved), folded.
    listeners: Vec<SocketAddr>,
}

impl Snapshot {
    pub fn new(interfaces: Vec<IpAddr>, listeners: Vec<SocketAddr>) -> Snapshot {
        Snapshot {
            interfaces: normalise(interfaces),
            listeners: listeners
                .into_iter()
                .map(|a| SocketAddr::new(fold_v4(a.ip()), a.port()))
                .collect(),
        }
    }

    pub fn interfaces(&self) -> &[IpAddr] {
        &self.interfaces
    }

    pub fn listeners(&self) -> &[SocketAddr] {
        &self.listeners
    }

    /// An interface address, or the specific address a listener is bound to.
    pub fn is_own_address(&self, ip: IpAddr) -> bool {
        let ip = fold_v4(ip);
        self.interfaces.binary_search(&ip).is_ok() || self.listeners.iter().any(|l| l.ip() == ip)
    }

    /// Whether a connection to `ip:port` would reach one of the proxy's own listeners.
    pub fn is_own_listener(&self, ip: IpAddr, port: u16) -> bool {
        let ip = fold_v4(ip);
        // Addresses that reach this host: a listener on a wildcard address answers on all.
        let local = ip.is_unspecified() || ip.is_loopback() || self.is_own_address(ip);
        self.listeners.iter().any(|l| {
            l.port() == port
                && (l.ip() == ip || ip.is_unspecified() || (l.ip().is_unspecified() && local))
        })
    }
}

fn normalise(ips: Vec<IpAddr>) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = ips.into_iter().map(fold_v4).collect();
    ips.sort();
    ips.dedup();
    ips
}

/// The live set: read by every door, written by the interface watcher and at start/reload.
#[derive(Debug, Default)]
pub struct LocalAddrs {
    current: ArcSwap<Snapshot>,
}

impl LocalAddrs {
    pub fn new() -> LocalAddrs {
        LocalAddrs::default()
    }

    /// The set in force now (one atomic load).
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Replaces the interface addresses; returns whether they changed.
    pub fn set_interfaces(&self, ips: Vec<IpAddr>) -> bool {
        let ips = normalise(ips);
        let old = self.current.rcu(|s| Snapshot {
            interfaces: ips.clone(),
            listeners: s.listeners.clone(),
        });
        old.interfaces != ips
    }

    /// Replaces the listening sockets (at start and after a reload).
    pub fn set_listeners(&self, addrs: Vec<SocketAddr>) {
        self.current
            .rcu(|s| Snapshot::new(s.interfaces.clone(), addrs.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn snapshot() -> Snapshot {
        Snapshot::new(
            vec![ip("10.9.0.1"), ip("127.0.0.1"), ip("fd00::7"), ip("::1")],
            vec![sa("0.0.0.0:3128"), sa("127.0.0.1:1080"), sa("[::]:8080")],
        )
    }

    #[test]
    fn interface_and_listener_addresses_are_own_in_any_form() {
        let s = snapshot();
        for a in ["10.9.0.1", "::ffff:10.9.0.1", "fd00::7", "127.0.0.1"] {
            assert!(s.is_own_address(ip(a)), "{a}");
        }
        for a in ["10.9.0.2", "8.8.8.8", "fd00::8"] {
            assert!(!s.is_own_address(ip(a)), "{a}");
        }
        let bound = Snapshot::new(vec![], vec![sa("192.0.2.4:3128")]);
        assert!(bound.is_own_address(ip("192.0.2.4")));
    }

    #[test]
    fn a_wildcard_listener_is_reached_on_every_local_address() {
        let s = snapshot();
        // (address, port, reaches a listener)
        let cases = [
            ("10.9.0.1", 3128, true),
            ("::ffff:10.9.0.1", 3128, true),
            ("127.0.0.1", 3128, true),
            ("127.3.4.5", 3128, true),
            ("0.0.0.0", 3128, true),
            ("fd00::7", 3128, true),
            ("10.9.0.1", 8080, true),
            ("::", 1080, true),
            ("10.9.0.1", 80, false),
            ("8.8.8.8", 3128, false),
            ("10.9.0.2", 3128, false),
            // 1080 is bound to 127.0.0.1 only: another loopback address does not reach it.
            ("127.0.0.1", 1080, true),
            ("127.0.0.2", 1080, false),
            ("10.9.0.1", 1080, false),
        ];
        for (a, port, want) in cases {
            assert_eq!(s.is_own_listener(ip(a), port), want, "{a}:{port}");
        }
    }

    #[test]
    fn writers_replace_their_half_and_report_a_change() {
        let l = LocalAddrs::new();
        assert!(l.set_interfaces(vec![ip("10.0.0.1"), ip("10.0.0.1")]));
        assert!(!l.set_interfaces(vec![ip("10.0.0.1")]), "same set");
        l.set_listeners(vec![sa("0.0.0.0:9")]);
        assert!(l.set_interfaces(vec![ip("10.0.0.1"), ip("10.0.0.2")]));
        let s = l.load();
        assert_eq!(s.interfaces(), &[ip("10.0.0.1"), ip("10.0.0.2")]);
        assert_eq!(s.listeners(), &[sa("0.0.0.0:9")]);
        assert!(s.is_own_listener(ip("10.0.0.2"), 9));
    }
}
