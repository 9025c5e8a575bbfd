//! BIND (RFC 1928 section 4; SOCKS4 the same way): a listening port for exactly one inbound
//! connection, used by protocols where the server connects back (FTP active mode).
//!
//! ```text
//! request(DST = the peer expected to connect, or 0.0.0.0 for anyone)
//!   -> the policy checks DST (protocol socks-bind; a name is resolved there)
//!   -> listen on the local address that routes toward DST -> first reply (that address)
//!   -> accept one connection within bind_timeout -> is it from DST? (for "anyone": does the
//!      policy allow the peer's address?) -> second reply (peer) -> relay
//! ```

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use super::access::Allowed;
use super::client::{Client, PlainTcp, Stage};
use super::codec::MAX_MESSAGE;
use super::reply::{Reply, SocksError};
use super::server::{Session, SocksRequest, SocksServer};
use crate::connector::Host;
use crate::policy::Protocol;

/// `expected`: the peer addresses the policy checked; `None` (DST 0.0.0.0 or ::) lets anyone
/// connect, and the policy then checks the peer that does.
pub(super) async fn run<S>(
    srv: &SocksServer,
    c: &mut Client<S>,
    s: &mut Session,
    req: &SocksRequest,
    expected: Option<Vec<IpAddr>>,
) -> Result<(), SocksError>
where
    S: AsyncRead + AsyncWrite + PlainTcp + Unpin,
{
    let local_ip = match expected.as_deref() {
        Some([first, ..]) => route_toward(*first).unwrap_or(c.local.ip()),
        _ => c.local.ip(),
    };
    let listener = TcpListener::bind(SocketAddr::new(local_ip, 0)).await?;
    let bound = listener.local_addr()?;
    c.reply(Reply::Succeeded, bound).await?;

    let deadline = tokio::time::sleep(srv.cfg.bind_timeout);
    tokio::pin!(deadline);
    let (stream, peer) = loop {
        tokio::select! {
            r = listener.accept() => break r?,
            // Watch the control connection: a client that goes away ends the wait. What it
            // sends early is kept (bounded) for the relay.
            r = c.read_some(MAX_MESSAGE), if c.buf.len() < 64 * 1024 => {
                if r? == 0 {
                    return Err(SocksError::Truncated);
                }
            }
            _ = &mut deadline => return Err(SocksError::BindTimeout),
            _ = srv.svc.shutdown.draining() => return Err(SocksError::Draining),
        }
    };
    // Exactly one connection: nobody else gets in after this.
    drop(listener);
    s.upstream = Some(peer);
    match &expected {
        Some(ips) => {
            if !ips
                .iter()
                .any(|ip| ip.to_canonical() == peer.ip().to_canonical())
            {
                return Err(SocksError::BindWrongPeer { got: peer });
            }
        }
        None => {
            let host = Host::Ip(peer.ip().to_canonical());
            match srv
                .check(s, req, Protocol::SocksBind, &host, peer.port())
                .await?
            {
                Allowed::Direct(_) => {}
                Allowed::Route { .. } => return Err(srv.route_unsupported(s, "BIND")),
            }
        }
    }
    let _ = stream.set_nodelay(true);
    c.reply(Reply::Succeeded, peer).await?;
    c.stage = Stage::Silent;
    srv.relay(c, s, stream).await;
    Ok(())
}

/// The local address the kernel would use to reach `ip`: a UDP socket's `connect` picks the
/// route without sending anything.
fn route_toward(ip: IpAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = match ip {
        IpAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let probe = std::net::UdpSocket::bind(any)?;
    probe.connect(SocketAddr::new(ip, 9))?;
    Ok(probe.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_routes_through_loopback() {
        assert_eq!(
            route_toward("127.0.0.1".parse().expect("ip")).expect("route"),
            IpAddr::from([127, 0, 0, 1])
        );
    }
}
