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
use super::codec::{decode_reply, DecodeError, Target, MAX_MESSAGE};
use super::reply::{Reply, SocksError};
use super::server::{Session, SocksRequest, SocksServer};
use crate::connector::Host;
use crate::policy::Protocol;
use crate::tunnel::proto::{Open, OpenError};
use tokio::io::AsyncReadExt as _;

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

/// Whether a BIND's DST lets anyone connect (0.0.0.0 or ::).
pub(super) fn from_anyone(t: &super::codec::Target) -> bool {
    matches!(&t.host, Host::Ip(ip) if ip.is_unspecified())
}

/// What the agent's second reply says: the peer, or why nobody is let through.
pub(crate) fn agent_verdict(rep: u8, peer: Option<SocketAddr>) -> Result<SocketAddr, SocksError> {
    let unknown = SocksError::Tunnel(OpenError::Failed);
    match (rep, peer) {
        (0, Some(peer)) => Ok(peer),
        (2, Some(got)) => Err(SocksError::BindWrongPeer { got }),
        (6, _) => Err(SocksError::BindTimeout),
        _ => Err(unknown),
    }
}

/// BIND at a tunnel agent (`via_agent`): the agent listens inside its network and announces
/// the address (the first reply); its second answer, a SOCKS5 reply as the stream's first
/// bytes, names the peer that connected (checked by the agent against the expected peer or
/// its allow-list; for a BIND from anyone, checked here by the rules too), or says why not.
pub(super) async fn run_agent<S>(
    srv: &SocksServer,
    c: &mut Client<S>,
    s: &mut Session,
    req: &SocksRequest,
    agent: &str,
) -> Result<(), SocksError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let host = match &req.target.host {
        Host::Name(n) => n.clone(),
        Host::Ip(ip) => ip.to_string(),
    };
    let what = Open::Bind {
        host,
        port: req.target.port,
        wait: srv.cfg.bind_timeout,
    };
    let mut opened = srv
        .svc
        .agents
        .open_failover(agent, &what, srv.svc.connect_timeout)
        .await
        .map_err(SocksError::Tunnel)?;
    let bound = opened.bound.ok_or(SocksError::Tunnel(OpenError::Failed))?;
    c.reply(Reply::Succeeded, bound).await?;

    // The agent answers by its own deadline (the same bind_timeout); this one is the bound
    // if it does not.
    let deadline = tokio::time::sleep(srv.cfg.bind_timeout + srv.svc.connect_timeout);
    tokio::pin!(deadline);
    let mut answer = bytes::BytesMut::new();
    let (rep, peer, used) = loop {
        match decode_reply(&answer) {
            Ok(((rep, target), used)) => break (rep, target.socket_addr(), used),
            Err(DecodeError::Incomplete) if answer.len() < MAX_MESSAGE => {}
            _ => return Err(SocksError::Tunnel(OpenError::Failed)),
        }
        tokio::select! {
            r = opened.stream.read_buf(&mut answer) => {
                if !matches!(r, Ok(n) if n > 0) {
                    return Err(SocksError::Tunnel(OpenError::Failed));
                }
            }
            r = c.read_some(MAX_MESSAGE), if c.buf.len() < 64 * 1024 => {
                if r? == 0 {
                    return Err(SocksError::Truncated);
                }
            }
            _ = &mut deadline => return Err(SocksError::BindTimeout),
            _ = srv.svc.shutdown.draining() => return Err(SocksError::Draining),
        }
    };
    let peer = agent_verdict(rep, peer)?;
    s.upstream = Some(peer);
    if from_anyone(&req.target) {
        srv.check_remote(s, req, Protocol::SocksBind, &Target::ip(peer))?;
    }
    c.reply(Reply::Succeeded, peer).await?;
    c.stage = Stage::Silent;
    // The peer's first bytes, if they came with the agent's answer.
    let _ = answer.split_to(used);
    if !answer.is_empty() {
        c.send(&answer).await?;
        s.relayed_out += answer.len() as u64;
    }
    srv.relay_agent(c, s, opened, agent).await;
    Ok(())
}

/// The local address the kernel would use to reach `ip`: a UDP socket's `connect` picks the
/// route without sending anything.
pub(crate) fn route_toward(ip: IpAddr) -> io::Result<IpAddr> {
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
    fn the_agents_second_answer_becomes_the_peer_or_an_error() {
        let peer: SocketAddr = "10.1.2.3:4567".parse().expect("addr");
        assert_eq!(agent_verdict(0, Some(peer)).ok(), Some(peer));
        assert!(matches!(
            agent_verdict(2, Some(peer)),
            Err(SocksError::BindWrongPeer { got }) if got == peer
        ));
        assert!(matches!(
            agent_verdict(6, None),
            Err(SocksError::BindTimeout)
        ));
        // Success without an address, or a code the agent never sends: a failure.
        for (rep, p) in [(0, None), (1, Some(peer)), (9, None)] {
            assert!(matches!(
                agent_verdict(rep, p),
                Err(SocksError::Tunnel(OpenError::Failed))
            ));
        }
    }

    #[test]
    fn loopback_routes_through_loopback() {
        assert_eq!(
            route_toward("127.0.0.1".parse().expect("ip")).expect("route"),
            IpAddr::from([127, 0, 0, 1])
        );
    }
}
