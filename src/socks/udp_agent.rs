//! UDP ASSOCIATE through a tunnel agent (`via_agent`): the association is one stream to the
//! agent. Each datagram from the client (only from the client's address, as in [`super::udp`])
//! is checked by the relay's rules for its destination, then goes to the agent whole, framed
//! (`crate::tunnel::proto::encode_frame`); the agent resolves, checks its allow-list, sends,
//! and returns replies already wrapped with their source, which go to the client as they are.
//! On a GSSAPI-protected session the datagrams between client and relay are RFC 1961
//! messages, as in [`super::udp`]: unwrapped before they go to the agent, replies wrapped.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::client::{Client, Stage};
use super::codec;
use super::reply::{Reply, SocksError};
use super::server::{Session, SocksRequest, SocksServer};
use super::udp::{seal, seal_drop_reason, unseal, ClientFilter};
use crate::policy::Protocol;
use crate::tunnel::proto::{self, Open};

pub(super) async fn run<S>(
    srv: &SocksServer,
    c: &mut Client<S>,
    s: &mut Session,
    req: &SocksRequest,
    agent: &str,
) -> Result<(), SocksError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut filter = ClientFilter::new(c.peer.ip(), req.target.port);
    let mut opened = srv
        .svc
        .agents
        .open_failover(agent, &Open::Udp, srv.svc.connect_timeout)
        .await
        .map_err(SocksError::Tunnel)?;
    let relay = UdpSocket::bind(SocketAddr::new(c.local.ip(), 0)).await?;
    c.reply(Reply::Succeeded, relay.local_addr()?).await?;
    c.stage = Stage::Silent;
    let mut client_addr: Option<SocketAddr> = None;
    let mut from_client = vec![0u8; proto::MAX_DATAGRAM];
    let mut inbound = bytes::BytesMut::new();
    let mut framed = Vec::new();
    let mut sealed_out = Vec::new();
    let metrics = &srv.svc.metrics;
    let idle = srv.cfg.udp_idle_timeout;
    let deadline = tokio::time::sleep(idle);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            r = c.read_some(4096) => {
                c.buf.clear();
                if !matches!(r, Ok(n) if n > 0) {
                    break;
                }
            }
            r = relay.recv_from(&mut from_client) => {
                let (n, from) = r?;
                if !filter.admits(from) {
                    metrics.socks_udp_drop("foreign");
                    continue;
                }
                let Ok(datagram) = unseal(c.sealed.as_deref_mut(), &from_client[..n]) else {
                    s.udp_dropped += 1;
                    metrics.socks_udp_drop("gssapi");
                    continue;
                };
                filter.learn(from);
                client_addr = Some(from);
                let Ok((header, used)) = codec::decode_udp(&datagram) else {
                    metrics.socks_udp_drop("malformed");
                    continue;
                };
                if header.frag != 0 {
                    metrics.socks_udp_drop("fragment");
                    continue;
                }
                if srv.check_remote(s, req, Protocol::SocksUdp, &header.target).is_err() {
                    s.udp_dropped += 1;
                    metrics.socks_udp_drop("policy");
                    continue;
                }
                framed.clear();
                if !proto::encode_frame(&datagram, &mut framed) {
                    metrics.socks_udp_drop("too_large");
                    continue;
                }
                if opened.stream.write_all(&framed).await.is_err() {
                    s.error = Some("connection_terminated");
                    break;
                }
                s.relayed_in += (datagram.len() - used) as u64;
                deadline.as_mut().reset(Instant::now() + idle);
            }
            r = opened.stream.read_buf(&mut inbound) => {
                if !matches!(r, Ok(n) if n > 0) {
                    s.error = Some("connection_terminated");
                    break;
                }
                while let Some((range, used)) = proto::decode_frame(&inbound) {
                    if let Some(to) = client_addr {
                        match seal(c.sealed.as_deref_mut(), &inbound[range.clone()], &mut sealed_out) {
                            Ok(out) => {
                                if relay.send_to(out, to).await.is_ok() {
                                    s.relayed_out += range.len() as u64;
                                }
                            }
                            Err(e) => metrics.socks_udp_drop(seal_drop_reason(&e)),
                        }
                    }
                    let _ = inbound.split_to(used);
                }
                if inbound.len() > 2 + proto::MAX_DATAGRAM {
                    break;
                }
                deadline.as_mut().reset(Instant::now() + idle);
            }
            _ = &mut deadline => {
                s.error = Some("udp_idle_timeout");
                break;
            }
            _ = srv.svc.shutdown.draining() => break,
        }
    }
    opened.count(s.relayed_in, s.relayed_out);
    srv.svc
        .metrics
        .tunnel_bytes(agent, "socks", s.relayed_in, s.relayed_out);
    Ok(())
}
