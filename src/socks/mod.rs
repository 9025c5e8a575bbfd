//! SOCKS server: SOCKS5 (RFC 1928, RFC 1929) with CONNECT, BIND and UDP ASSOCIATE, and
//! SOCKS4/4a CONNECT and BIND, on one listener, optionally over TLS.
//!
//! - [`codec`]: the messages, pure decode/encode over bytes.
//! - [`reply`]: the one mapping from failures to reply codes.
//! - [`access`]: the policy at this door (login, rule checks per command and per datagram).
//! - [`server`]: the async handler (handshake, authentication, admission, CONNECT direct or
//!   through parents); [`bind`] and [`udp`] drive the other two commands.

mod access;
pub(crate) mod bind;
mod client;
pub mod codec;
mod gssapi;
pub mod reply;
pub mod server;
mod udp;
mod udp_agent;

pub use server::SocksServer;
pub use udp::ClientFilter;
