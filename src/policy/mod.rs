//! One access policy for every listener: users, ordered rules, the safe-by-default destination
//! guard and header rewriting.
//!
//! The policy is pure: a [`Policy`] is compiled once from the `[policy]` config section (rules
//! pre-parsed into indexed host sets, address range sets, one `RegexSet`), is immutable, and is
//! evaluated against an [`AccessRequest`] that a protocol handler builds. Live reload swaps the
//! whole compiled policy at once ([`PolicyHolder`]); a connection keeps the `Arc<Policy>` it
//! started with.
//!
//! # Call sequence for a protocol handler
//!
//! Destination-address conditions (`dest_addrs`) and the guard need the resolved address, but
//! a request that a host rule denies, or that goes to a parent proxy, must not cause a DNS
//! lookup here. So evaluation has two steps:
//!
//! 1. Build an [`AccessRequest`] (listener, client, authenticated [`Identity`], destination
//!    host and port, [`Protocol`], method, current time) and call [`Policy::precheck`]:
//!    - [`Precheck::Decided`]`(v)`: act on `v` without resolving. For a *name* destination
//!      this is only ever `Deny` or `Route` (the parent resolves the name). For an *address*
//!      destination (`Host::Ip`) it can be `Allow`: the address was already checked, rules
//!      and guard, so connect to exactly that address.
//!    - [`Precheck::Resolve`]: resolve the name (`Connector::resolve`), then
//! 2. call [`Policy::decide`] with **all** resolved addresses. Every address is evaluated as
//!    if it were the destination (first matching rule wins, then the guard on `Allow`). If any
//!    address is denied, the request is denied (a name that mixes allowed and forbidden
//!    addresses is refused whole); otherwise the verdict of the first address is returned.
//!    On `Allow`, connect only to the addresses that were checked - never resolve again, or
//!    DNS rebinding slips a different address past the check.
//!
//! A `Decided` verdict from step 1 is always what step 2 would have said for any address:
//! step 1 stops only at a rule that needs no address.
//!
//! The guard ([`guard::check_destination`]) applies to every `Allow` - by a rule or by the
//! listener's default - unless the deciding rule has a `dest_addrs` condition (which then
//! names the address explicitly). It does not apply to `Route`. The proxy's own addresses come
//! from a live set ([`local::LocalAddrs`]) shared by every policy; `(local address, listener
//! port)` is refused on every `Allow`, explicit or not, and for a route's `direct` entries.
//!
//! Time-of-day conditions are evaluated in the policy's `time_zone` (default: the system's
//! local zone, UTC when the system has none).

pub mod config;
mod engine;
pub mod guard;
pub mod hashpool;
pub mod headers;
pub mod holder;
mod index;
pub mod ldap;
pub mod local;
pub mod login;
pub mod matcher;
pub mod passwd;
mod rule_config;
pub(crate) use rule_config::read_edits;
pub mod users;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::connector::Host;

pub use config::PolicyConfig;
pub use engine::{OpenProxyError, Policy, PolicyError};
pub use guard::Refusal;
pub use headers::Rewrite;
pub use holder::PolicyHolder;
pub use local::LocalAddrs;
pub use users::{Identity, Secret, Users};

/// What kind of access a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// A plain HTTP request through the forward proxy (absolute-form).
    Http,
    /// An HTTP CONNECT tunnel.
    Connect,
    SocksConnect,
    SocksBind,
    SocksUdp,
    /// A connection to a `tcp` (layer-4 balancing) listener.
    Tcp,
    /// A UDP session on a `udp` (layer-4 balancing) listener.
    Udp,
}

impl Protocol {
    pub const ALL: [Protocol; 7] = [
        Protocol::Http,
        Protocol::Connect,
        Protocol::SocksConnect,
        Protocol::SocksBind,
        Protocol::SocksUdp,
        Protocol::Tcp,
        Protocol::Udp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Connect => "connect",
            Protocol::SocksConnect => "socks-connect",
            Protocol::SocksBind => "socks-bind",
            Protocol::SocksUdp => "socks-udp",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    pub fn parse(s: &str) -> Option<Protocol> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The description of one request that the rules are evaluated against.
#[derive(Debug, Clone)]
pub struct AccessRequest<'a> {
    /// The listener's configured name.
    pub listener: &'a str,
    /// The client's address (IPv4-mapped IPv6 is folded to IPv4 when matching).
    pub client: IpAddr,
    /// The authenticated user, if the client logged in.
    pub user: Option<&'a Identity>,
    /// Where the client wants to go; `None` when the protocol names no destination.
    pub dest_host: Option<&'a Host>,
    pub dest_port: u16,
    pub protocol: Protocol,
    /// The HTTP method, for `Protocol::Http` and `Protocol::Connect`.
    pub method: Option<&'a str>,
    /// Now, for time-of-day conditions (`SystemTime::now()` in handlers; fixed in tests).
    pub at: SystemTime,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Connect directly.
    Allow,
    /// Refuse: 403 with the deny page, SOCKS reply 0x02 "not allowed by ruleset".
    Deny,
    /// Go through the named parent proxies, in failover order (`"direct"` means no parent).
    Route(Arc<[String]>),
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Route(_) => "route",
        }
    }
}

/// The result of evaluating a request.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub action: Action,
    /// The deciding rule's name; `"default"` for a listener's default; `"guard"` when the
    /// safe-by-default guard refused the address (see `refusal`). Goes to the access log.
    pub rule: Arc<str>,
    /// Why the guard refused, when `rule` is `"guard"`.
    pub refusal: Option<Refusal>,
    /// Header changes for requests and responses allowed or routed by this rule.
    pub rewrite: Arc<Rewrite>,
}

/// The answer of [`Policy::precheck`].
#[derive(Debug, Clone)]
pub enum Precheck {
    /// Final verdict; do not resolve the destination.
    Decided(Verdict),
    /// Resolve the destination and call [`Policy::decide`] with every address.
    Resolve,
}
