//! The safe-by-default destination guard.
//!
//! A forward or SOCKS proxy that connects wherever it is told is a door into the machine it runs
//! on and into the cloud metadata service. Unless a rule explicitly allows the address (an
//! `allow` rule whose `dest_addrs` contains it), direct connections are refused to:
//!
//! | category      | IPv4                         | IPv6                 |
//! |---------------|------------------------------|----------------------|
//! | unspecified   | 0.0.0.0/8 ("this network")   | ::/128               |
//! | loopback      | 127.0.0.0/8                  | ::1/128              |
//! | link-local    | 169.254.0.0/16 (metadata)    | fe80::/10            |
//! | multicast     | 224.0.0.0/4                  | ff00::/8             |
//! | broadcast     | 255.255.255.255, 240.0.0.0/4 |                      |
//! | own address   | every local interface address and listener address ||
//! | private (opt) | 10/8, 172.16/12, 192.168/16, 100.64/10 (CGNAT) | fc00::/7, fec0::/10 |
//!
//! A connection to one of the proxy's own listeners (`(local address, listener port)`, see
//! [`super::local`]) is refused as [`Refusal::OwnListener`] even when a rule names the
//! address: the proxy never connects to itself.
//!
//! Private ranges are refused only with `refuse_private = true`. The check runs on the
//! *resolved* address, so a public name pointing at 127.0.0.1 is refused too. IPv4 addresses
//! embedded in IPv6 (`::ffff:127.0.0.1`, NAT64 `64:ff9b::7f00:1`) are checked as IPv4.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why the guard refused an address; `as_str` is what the access log shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unspecified,
    Loopback,
    LinkLocal,
    Multicast,
    Broadcast,
    OwnAddress,
    OwnListener,
    Private,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unspecified => "unspecified",
            Refusal::Loopback => "loopback",
            Refusal::LinkLocal => "link-local",
            Refusal::Multicast => "multicast",
            Refusal::Broadcast => "broadcast",
            Refusal::OwnAddress => "own-address",
            Refusal::OwnListener => "own-listener",
            Refusal::Private => "private",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks one resolved destination address. `own` holds the proxy's own addresses (listener
/// and interface addresses); they are compared after IPv4-mapped folding.
pub fn check_destination(ip: IpAddr, refuse_private: bool, own: &[IpAddr]) -> Result<(), Refusal> {
    check_with(ip, refuse_private, |ip| {
        own.iter().any(|o| fold_v4(*o) == ip)
    })
}

/// Like [`check_destination`] with the own-address test given as a function of the folded
/// address. The fixed categories come first, so `127.0.0.1` is still "loopback" although it
/// is an interface address too; an own address in a private range is "own-address".
pub fn check_with(
    ip: IpAddr,
    refuse_private: bool,
    is_own: impl Fn(IpAddr) -> bool,
) -> Result<(), Refusal> {
    let ip = fold_v4(ip);
    let category = match ip {
        IpAddr::V4(a) => check_v4(a, refuse_private),
        IpAddr::V6(a) => check_v6(a, refuse_private),
    };
    match category {
        Ok(()) | Err(Refusal::Private) if is_own(ip) => Err(Refusal::OwnAddress),
        other => other,
    }
}

/// `::ffff:a.b.c.d` and the NAT64 well-known prefix `64:ff9b::/96` carry an IPv4 address.
pub fn fold_v4(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = a.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let o = a.octets();
                return IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            ip
        }
        v4 => v4,
    }
}

fn check_v4(a: Ipv4Addr, refuse_private: bool) -> Result<(), Refusal> {
    let o = a.octets();
    if o[0] == 0 {
        return Err(Refusal::Unspecified);
    }
    if a.is_loopback() {
        return Err(Refusal::Loopback);
    }
    if a.is_link_local() {
        return Err(Refusal::LinkLocal);
    }
    if a.is_multicast() {
        return Err(Refusal::Multicast);
    }
    if o[0] >= 240 {
        return Err(Refusal::Broadcast);
    }
    let cgnat = o[0] == 100 && (o[1] & 0xc0) == 64;
    if refuse_private && (a.is_private() || cgnat) {
        return Err(Refusal::Private);
    }
    Ok(())
}

fn check_v6(a: Ipv6Addr, refuse_private: bool) -> Result<(), Refusal> {
    let first = a.segments()[0];
    if a.is_unspecified() {
        return Err(Refusal::Unspecified);
    }
    if a.is_loopback() {
        return Err(Refusal::Loopback);
    }
    if first & 0xffc0 == 0xfe80 {
        return Err(Refusal::LinkLocal);
    }
    if a.is_multicast() {
        return Err(Refusal::Multicast);
    }
    let ula = first & 0xfe00 == 0xfc00;
    let site_local = first & 0xffc0 == 0xfec0;
    if refuse_private && (ula || site_local) {
        return Err(Refusal::Private);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        use Refusal::*;
        // (address, refuse_private, expected)
        let cases: &[(&str, bool, Result<(), Refusal>)] = &[
            ("8.8.8.8", false, Ok(())),
            ("8.8.8.8", true, Ok(())),
            ("0.0.0.0", false, Err(Unspecified)),
            ("0.1.2.3", false, Err(Unspecified)),
            ("127.0.0.1", false, Err(Loopback)),
            ("127.255.0.9", false, Err(Loopback)),
            ("169.254.169.254", false, Err(LinkLocal)),
            ("169.254.0.1", true, Err(LinkLocal)),
            ("224.0.0.1", false, Err(Multicast)),
            ("239.255.255.250", false, Err(Multicast)),
            ("255.255.255.255", false, Err(Broadcast)),
            ("240.0.0.1", false, Err(Broadcast)),
            ("10.1.2.3", false, Ok(())),
            ("10.1.2.3", true, Err(Private)),
            ("172.16.0.1", true, Err(Private)),
            ("172.32.0.1", true, Ok(())),
            ("192.168.0.1", true, Err(Private)),
            ("100.64.0.1", true, Err(Private)),
            ("100.127.255.255", true, Err(Private)),
            ("100.128.0.1", true, Ok(())),
            ("100.64.0.1", false, Ok(())),
            ("::", false, Err(Unspecified)),
            ("::1", false, Err(Loopback)),
            ("fe80::1", false, Err(LinkLocal)),
            ("febf::1", false, Err(LinkLocal)),
            ("ff02::1", false, Err(Multicast)),
            ("fd00::1", false, Ok(())),
            ("fd00::1", true, Err(Private)),
            ("fc00::1", true, Err(Private)),
            ("fec0::1", true, Err(Private)),
            ("2001:db8::1", true, Ok(())),
            ("::ffff:127.0.0.1", false, Err(Loopback)),
            ("::ffff:169.254.169.254", false, Err(LinkLocal)),
            ("::ffff:10.0.0.1", true, Err(Private)),
            ("::ffff:8.8.8.8", true, Ok(())),
            ("64:ff9b::7f00:1", false, Err(Loopback)),
            ("64:ff9b::a9fe:a9fe", false, Err(LinkLocal)),
            ("64:ff9b::808:808", false, Ok(())),
        ];
        for (addr, private, want) in cases {
            let ip: IpAddr = addr.parse().expect("ip");
            assert_eq!(
                check_destination(ip, *private, &[]),
                *want,
                "{addr} refuse_private={private}"
            );
        }
    }

    #[test]
    fn own_addresses_are_refused_in_any_form() {
        let own: Vec<IpAddr> = vec![
            "203.0.113.5".parse().expect("ip"),
            "2001:db8::5".parse().expect("ip"),
        ];
        for addr in ["203.0.113.5", "::ffff:203.0.113.5", "2001:db8::5"] {
            let ip: IpAddr = addr.parse().expect("ip");
            assert_eq!(
                check_destination(ip, false, &own),
                Err(Refusal::OwnAddress),
                "{addr}"
            );
        }
        assert_eq!(
            check_destination("203.0.113.6".parse().expect("ip"), false, &own),
            Ok(())
        );
    }

    #[test]
    fn fixed_categories_name_the_refusal_before_own_address() {
        let own: Vec<IpAddr> = ["127.0.0.1", "10.0.0.5", "fe80::1"]
            .iter()
            .map(|a| a.parse().expect("ip"))
            .collect();
        let check = |a: &str, private| check_destination(a.parse().expect("ip"), private, &own);
        assert_eq!(check("127.0.0.1", false), Err(Refusal::Loopback));
        assert_eq!(check("fe80::1", false), Err(Refusal::LinkLocal));
        assert_eq!(check("10.0.0.5", false), Err(Refusal::OwnAddress));
        assert_eq!(check("10.0.0.5", true), Err(Refusal::OwnAddress));
        assert_eq!(check("10.0.0.6", true), Err(Refusal::Private));
        assert_eq!(check("10.0.0.6", false), Ok(()));
    }
}
