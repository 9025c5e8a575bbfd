//! Reverse tunnels: an agent inside a private network dials out to a relay, and the relay
//! serves SOCKS5 (`via_agent`) and published ports through it. See `docs/tunnel.md`.
//!
//! ```text
//! agent ── TCP ── TLS (relay cert checked: CA or pinned SHA-256) ── hello (name, token)
//!       ── HTTP/2, roles reversed: agent = server, relay = client
//! relay: one CONNECT stream per SOCKS CONNECT, UDP association or published-port client
//! agent: allow-list + destination guard, connect, 200, bytes both ways (h2 flow control)
//! ```
//!
//! - [`proto`]: the hello, the stream requests and answers (pure).
//! - [`allow`]: the agent's allow-list (pure).
//! - [`stream`]: an h2 stream as `AsyncRead + AsyncWrite`.
//! - [`tls`]: both ends' rustls set-up, `gatehouse cert`.
//! - [`hub`]: the relay: the tunnel listener, the registry of connected agents.
//! - [`agent`]: the agent's dial/serve/reconnect loop.
//! - [`published`]: a relay port forwarding to a published service.

pub mod agent;
pub mod allow;
pub mod hub;
pub mod proto;
pub mod published;
pub mod stream;
pub mod tls;

pub use hub::{Agents, TunnelListener};

use crate::config::{AgentConfig, ListenerConfig, ListenerKind};

/// Flow-control windows (bytes). Each stream may have [`STREAM_WINDOW`] unread in flight;
/// the connection [`CONNECTION_WINDOW`], which is 128 stream windows: up to
/// [`STALLED_STREAMS`] streams whose readers have stalled (each holding a full window) leave
/// room for the others to flow, whatever the others hold back ([`RESERVE_AHEAD`],
/// [`RELEASE_BATCH`]).
///
/// 4 MiB is what one bulk stream needs to keep both ends busy on a 2-core host: with 1 MiB
/// the sender waited for WINDOW_UPDATEs (the machine sat 20% idle during a TLS bulk transfer,
/// 10% with 4 MiB) and a bulk stream was 9-17% slower (`MODE=bulk bench/tunnel-ab.sh`, TLS
/// and plain; docs/benchmarks.md). It is also about what Linux lets one TCP connection buffer (`tcp_wmem`'s
/// 4 MiB), so a stalled stream costs what a stalled visitor of a one-connection-per-visitor
/// tunnel costs in the kernel. The price: up to [`CONNECTION_WINDOW`] (512 MiB) buffered per
/// link when 128 visitors stop reading at once.
pub const STREAM_WINDOW: u32 = 4 << 20;
pub const CONNECTION_WINDOW: u32 = 512 << 20;
/// Streams that may stall at once, each holding a full stream window, while the others
/// still flow (`tests/tunnel.rs`, one stalled stream beside 300 echoes).
pub const STALLED_STREAMS: u64 = 111;
/// The largest frame either side sends: 256 KiB, so a bulk stream costs one frame header,
/// one write and one wake-up per 256 KiB rather than per 16 KiB (h2's default).
pub const MAX_FRAME: u32 = 256 << 10;
/// Read buffer under rustls: it asks the socket for one record (at most ~16 KiB) at a time,
/// so reads are gathered here first: one `recvfrom` per up to 256 KiB of records.
pub const TLS_READ_BUFFER: usize = 256 << 10;
/// Encrypted bytes rustls takes in before a write must wait for the socket (its default is
/// 64 KiB): a whole frame, so one frame goes out as one `writev` of its records.
pub const TLS_WRITE_BUFFER: usize = (MAX_FRAME as usize) + (64 << 10);
/// Streams the relay may have open on one agent connection at once.
pub const MAX_STREAMS: u32 = 4096;

/// Whether a keep-alive pool may keep an idle stream of a link with `streams_open` streams
/// open (the idle one included): only while that is under half of [`MAX_STREAMS`], so kept
/// streams (a forward proxy's, one per destination) never take the slots new streams need.
pub fn may_keep_idle(streams_open: u64) -> bool {
    streams_open < u64::from(MAX_STREAMS / 2)
}

/// Send capacity a stream asks h2 for ahead of need when it holds less than a write wants, so
/// short messages do not each ask (and take the connection's lock): see
/// `stream::poll_send_capacity`. Unused, it is part of the connection window the stream holds.
pub const RESERVE_AHEAD: usize = 8 << 10;
/// Received bytes a relayed stream has written on but not yet released to the peer's window:
/// released in batches of this (each release takes the connection's lock). Also part of the
/// connection window a stream may hold.
pub const RELEASE_BATCH: usize = 8 << 10;

// The window rule: the connection window stays above the windows the stalled streams hold,
// plus what every other stream may hold back by the two batches above.
const _: () = assert!(
    CONNECTION_WINDOW as u64
        > STREAM_WINDOW as u64 * STALLED_STREAMS
            + (RESERVE_AHEAD + RELEASE_BATCH) as u64 * MAX_STREAMS as u64
);
// A frame fits in a stream window, and rustls takes a whole frame before a write waits.
const _: () = assert!(MAX_FRAME <= STREAM_WINDOW);
const _: () = assert!(TLS_WRITE_BUFFER > MAX_FRAME as usize);

/// The relay's HTTP/2 settings (the client of the reversed roles).
pub fn h2_client() -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .enable_push(false);
    b
}

/// The agent's HTTP/2 settings (the server on the connection it dialled).
pub fn h2_server() -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(MAX_STREAMS);
    b
}

/// Start-up checks of a tunnel listener: its TLS files and token files load.
pub fn check_listener(l: &ListenerConfig) -> Vec<(String, anyhow::Error)> {
    let mut out = Vec::new();
    if let ListenerKind::Tunnel(t) = &l.kind {
        if let Some(files) = &t.tls {
            if let Err(e) = tls::acceptor(&files.cert, &files.key) {
                out.push(("tls".to_string(), e));
            }
        }
        for (i, a) in t.agents.iter().enumerate() {
            if let Err(e) = a.token.load() {
                out.push((format!("agents[{i}].token_file"), e));
            }
        }
    }
    out
}

/// Start-up checks of `[agent]`: the relay verification and the token load.
pub fn check_agent(a: &AgentConfig) -> Vec<(String, anyhow::Error)> {
    let mut out = Vec::new();
    if let Some(t) = &a.tls {
        if let Err(e) = tls::connector(&t.verify) {
            out.push(("ca".to_string(), e));
        }
        if let Err(e) = tokio_rustls::rustls::pki_types::ServerName::try_from(t.server_name.clone())
        {
            out.push(("server_name".to_string(), anyhow::anyhow!("{e}")));
        }
    }
    if let Err(e) = a.token.load() {
        out.push(("token_file".to_string(), e));
    }
    if let Some((_, password)) = &a.proxy_login {
        if let Err(e) = agent::proxy_password(password) {
            out.push(("proxy_password_file".to_string(), e));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_streams_are_kept_only_while_the_link_has_half_its_slots_free() {
        assert!(may_keep_idle(1));
        assert!(may_keep_idle(u64::from(MAX_STREAMS / 2) - 1));
        assert!(!may_keep_idle(u64::from(MAX_STREAMS / 2)));
        assert!(!may_keep_idle(u64::from(MAX_STREAMS)));
    }
}
