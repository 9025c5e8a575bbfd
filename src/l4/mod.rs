//! Layer-4 balancing: `tcp` listeners (plain, or routed by TLS SNI without decrypting) and
//! `udp` listeners, over the shared `[[pools]]` (`pool/`).
//!
//! - `client_hello.rs`, `proxy_protocol.rs`: pure decoders (and the PROXY encoder), with
//!   unit and seeded random-input tests.
//! - `tcp.rs`: one accepted connection: PROXY header from trusted balancers, the policy's
//!   client rules, SNI peek, connect with retry, PROXY header to the server, then the shared
//!   splice relay.
//! - `udp.rs`: its own socket loop (no accept): per-client sessions with server affinity.

pub mod client_hello;
pub mod proxy_protocol;
pub mod tcp;
pub mod udp;

use std::net::IpAddr;
use std::time::SystemTime;

use crate::policy::{AccessRequest, Action, Policy, Precheck, Protocol};

/// The policy's client rules for a layer-4 connection or session: rules that name this
/// listener, the client's address or the protocol (`tcp`/`udp`) apply; the destination is
/// the pool, so rules about destinations do not match. `allow` and `route` both let the
/// client in (a route has no parent to go through here); `deny` refuses.
pub fn client_allowed(
    policy: &Policy,
    listener: &str,
    client: IpAddr,
    port: u16,
    p: Protocol,
) -> Result<(), String> {
    let req = AccessRequest {
        listener,
        client,
        user: None,
        dest_host: None,
        dest_port: port,
        protocol: p,
        method: None,
        at: SystemTime::now(),
    };
    match policy.precheck(&req) {
        Precheck::Decided(v) if v.action == Action::Deny => Err(v.rule.to_string()),
        _ => Ok(()),
    }
}
