//! PROXY protocol (v1/v2) in front of a reverse listener's connections: a load balancer in
//! `accept_proxy_from` must start each connection with a header, whose source address then
//! is the client's (policy, limits, `Forwarded`/`X-Forwarded-For`, the access log); from any
//! other peer a header is refused and the connection closed, so nobody else can claim an
//! address. The header is read without reading past it (peek, then exactly its bytes), so
//! what follows, HTTP or a TLS ClientHello, is untouched on the socket.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::l4::proxy_protocol::{self, Decoded, Header, ProxyError, V2_SIGNATURE};

/// Most bytes of a header looked at (v2's 16-byte prefix plus its bounded body).
const PEEK_MAX: usize = 16 + 4096;

/// What the first bytes from a peer mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Not enough bytes to tell.
    More,
    /// Serve the connection; the client is this address (`None`: the peer itself).
    Serve(Option<SocketAddr>),
    /// A whole header of `len` bytes: consume it, then serve as [`Step::Serve`].
    Consume(usize, Option<SocketAddr>),
    /// Close the connection.
    Refuse(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("PROXY protocol header from a peer not in accept_proxy_from")]
    Untrusted,
    #[error("no PROXY protocol header from a trusted sender")]
    Missing,
    #[error("nothing received in time")]
    Timeout,
    #[error("closed by the peer")]
    Closed,
    #[error(transparent)]
    Bad(ProxyError),
}

/// The decision on the bytes seen so far (`buf`) from a peer that is (or is not) a trusted
/// sender. A trusted sender must send a header; anyone else must not start with one.
pub fn step(trusted: bool, buf: &[u8]) -> Step {
    match proxy_protocol::decode(buf) {
        Err(ProxyError::NotProxy) if trusted => Step::Refuse(Refusal::Missing),
        Err(ProxyError::NotProxy) => Step::Serve(None),
        // Twelve bytes are enough to tell (the v2 signature; `PROXY ` and more for v1).
        Ok(Decoded::Incomplete) if trusted || buf.len() < V2_SIGNATURE.len() => Step::More,
        _ if !trusted => Step::Refuse(Refusal::Untrusted),
        Ok(Decoded::Incomplete) => Step::Refuse(Refusal::Untrusted),
        Err(e) => Step::Refuse(Refusal::Bad(e)),
        Ok(Decoded::Done { header, len }) => match header {
            Header::Proxied { src, .. } => Step::Consume(len, Some(src)),
            Header::Local => Step::Consume(len, None),
        },
    }
}

/// Reads (trusted peer) or rules out (other peers) a PROXY header at the start of
/// `stream`, within `limit`. `Ok`: the client's address; `Err`: close the connection.
pub async fn accept(
    stream: &mut TcpStream,
    peer: SocketAddr,
    trusted: bool,
    limit: Duration,
) -> Result<SocketAddr, Refusal> {
    let read = async {
        // Header bytes already consumed (an incomplete header is all header bytes).
        let mut seen: Vec<u8> = Vec::new();
        let mut peeked = vec![0u8; 64];
        loop {
            let n = stream
                .peek(&mut peeked)
                .await
                .map_err(|_| Refusal::Closed)?;
            if n == 0 {
                return Err(Refusal::Closed);
            }
            let mut all = seen.clone();
            all.extend_from_slice(&peeked[..n]);
            match step(trusted, &all) {
                Step::Serve(_) if seen.is_empty() => return Ok(peer),
                Step::Serve(_) => return Err(Refusal::Missing),
                Step::Refuse(r) => return Err(r),
                Step::Consume(len, src) => {
                    let mut rest = vec![0u8; len - seen.len()];
                    stream
                        .read_exact(&mut rest)
                        .await
                        .map_err(|_| Refusal::Closed)?;
                    return Ok(src.unwrap_or(peer));
                }
                Step::More if !trusted => {
                    // A peer that may not send a header has sent a few bytes that could
                    // start one ("P", "\r\n"): wait briefly for more, consuming nothing.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Step::More => {
                    // Every byte seen belongs to the header: take them, wait for more.
                    if all.len() >= PEEK_MAX {
                        return Err(Refusal::Bad(ProxyError::TooLong));
                    }
                    let mut got = vec![0u8; n];
                    stream
                        .read_exact(&mut got)
                        .await
                        .map_err(|_| Refusal::Closed)?;
                    seen.extend_from_slice(&got);
                    if peeked.len() < 4096 {
                        peeked.resize(4096, 0);
                    }
                }
            }
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .unwrap_or(Err(Refusal::Timeout))
}

impl super::proxy::HttpProxy {
    /// The client's address for a new connection on this listener: the peer's, or with
    /// `accept_proxy_from` the one a trusted sender's header carries. `None`: the connection
    /// is refused (logged, with an access record unless the peer just went away) and closes.
    pub(super) async fn client_address(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
    ) -> Option<SocketAddr> {
        let super::proxy::Role::Reverse(rv) = &self.role else {
            return Some(peer);
        };
        let Some((senders, limit)) = rv.proxy_senders() else {
            return Some(peer);
        };
        let trusted = senders.contains(peer.ip());
        let started = std::time::Instant::now();
        match accept(stream, peer, trusted, limit).await {
            Ok(client) => Some(client),
            Err(e @ (Refusal::Timeout | Refusal::Closed)) => {
                tracing::debug!(client = %peer, "PROXY protocol: {e}");
                None
            }
            Err(e) => {
                tracing::debug!(client = %peer, "refused: {e}");
                let status = if e == Refusal::Untrusted { 403 } else { 400 };
                let m = &self.svc.metrics;
                self.series.request(m, status);
                self.svc.access_log.log(crate::accesslog::AccessRecord {
                    time: std::time::SystemTime::now(),
                    listener: self.name.clone(),
                    client: peer,
                    user: None,
                    rule: None,
                    method: "-".into(),
                    target: "-".into(),
                    status,
                    bytes_in: 0,
                    bytes_out: 0,
                    duration: started.elapsed(),
                    upstream: None,
                    cache: None,
                    error: Some(if status == 403 {
                        "destination_ip_prohibited"
                    } else {
                        "http_request_error"
                    }),
                    version: None,
                    referer: None,
                    user_agent: None,
                    route: None,
                    pool: None,
                    server: None,
                });
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l4::proxy_protocol::{encode_local, encode_v1, encode_v2};

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn a_trusted_sender_must_send_a_header() {
        let (src, dst) = (sa("192.0.2.7:4000"), sa("198.51.100.1:80"));
        for wire in [encode_v1(src, dst), encode_v2(src, dst)] {
            let mut with_request = wire.clone();
            with_request.extend_from_slice(b"GET / HTTP/1.1\r\n");
            assert_eq!(
                step(true, &with_request),
                Step::Consume(wire.len(), Some(src))
            );
            assert_eq!(step(true, &wire[..wire.len() - 1]), Step::More);
        }
        let local = encode_local(true);
        assert_eq!(step(true, &local), Step::Consume(local.len(), None));
        assert_eq!(
            step(true, b"GET / HTTP/1.1\r\n"),
            Step::Refuse(Refusal::Missing)
        );
        assert_eq!(
            step(true, b"PROXY TCP4 1.2.3.4\n"),
            Step::Refuse(Refusal::Bad(ProxyError::BadV1))
        );
    }

    #[test]
    fn anyone_else_may_not_claim_an_address() {
        let (src, dst) = (sa("192.0.2.7:4000"), sa("198.51.100.1:80"));
        assert_eq!(step(false, b"GET / HTTP/1.1\r\n"), Step::Serve(None));
        assert_eq!(step(false, b"POST /"), Step::Serve(None));
        // A TLS ClientHello.
        assert_eq!(step(false, &[0x16, 0x03, 0x01]), Step::Serve(None));
        for wire in [
            encode_v1(src, dst),
            encode_v2(src, dst),
            encode_local(false),
        ] {
            assert_eq!(step(false, &wire), Step::Refuse(Refusal::Untrusted));
        }
        assert_eq!(step(false, &V2_SIGNATURE), Step::Refuse(Refusal::Untrusted));
        // Could still be either: wait for more.
        assert_eq!(step(false, b"P"), Step::More);
        assert_eq!(step(false, b"\r\n"), Step::More);
        assert_eq!(
            step(false, b"PROXY TCP4 1"),
            Step::Refuse(Refusal::Untrusted)
        );
    }
}
