//! UDP ASSOCIATE (RFC 1928 section 7): one relay per association.
//!
//! The client sends datagrams with a SOCKS UDP header to the relay socket; the relay strips the
//! header and sends the payload to the destination from an outbound socket. Whatever arrives
//! on an outbound socket is wrapped in a header naming its source and sent to the client.
//!
//! - Only the client's address is served: datagrams on the relay socket from any other IP, or
//!   (once known) any other port, are dropped. The port is the one the request named, else
//!   the source port of the first datagram.
//! - Fragments (FRAG != 0) are dropped; this relay does not reassemble.
//! - Names are resolved by the server (the shared connector's resolver), and each association
//!   keeps the answers for a short while in a small bounded cache of its own, so a stream of
//!   datagrams to one name does not ask the resolver once per datagram.
//! - Replies: with `udp_filter = "address"` (the default; RFC 4787 "address-dependent
//!   filtering") only datagrams from IP addresses the client has sent to through this
//!   association are passed back; others are dropped. `"any"` ("endpoint-independent
//!   filtering") passes datagrams from any sender.
//! - Every datagram's destination is checked by the policy (protocol `socks-udp`) against the
//!   address it is sent to; a denied one (or one a rule routes to parents, which cannot carry
//!   UDP) is dropped and counted. One a rule routes to a tunnel agent goes whole to that agent
//!   on one stream for the association (see [`super::udp_agent`] for the framing); its
//!   replies come back the same way.
//! - On a GSSAPI session with integrity or confidentiality (RFC 1961 section 5), every
//!   datagram between the client and the relay is one `[1, 3, len, gss_wrap(header + data)]`
//!   message at the negotiated level. A datagram that is not one, is below the level, or fails
//!   gss_unwrap is dropped and counted; the port is learned only from one that unwraps, so a
//!   forged datagram cannot take the association. The destination side stays plain UDP.
//! - The association ends when its TCP control connection closes, after `udp_idle_timeout`
//!   with no datagram either way, or on shutdown. Every dropped datagram counts in
//!   `gatehouse_socks_udp_dropped_total` by reason.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::access::UdpDest;
use super::client::{Client, Stage};
use super::codec::{self, Target};
use super::reply::{Reply, SocksError};
use super::server::{Session, SocksRequest, SocksServer};
use crate::config::UdpFilter;
use crate::kerberos::socks::{Sealed, SealedError};

/// Largest UDP payload plus room for a header.
const DATAGRAM: usize = 64 * 1024 + 300;

/// Which datagrams from the client's side are accepted. Pure, so it is unit-tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFilter {
    ip: IpAddr,
    port: Option<u16>,
}

impl ClientFilter {
    /// `control_peer`: the TCP control connection's client; `named_port`: DST.PORT of the
    /// request (0 when the client does not know it yet).
    pub fn new(control_peer: IpAddr, named_port: u16) -> Self {
        ClientFilter {
            ip: control_peer.to_canonical(),
            port: (named_port != 0).then_some(named_port),
        }
    }

    /// Whether `from` is the client; learns the port from the first accepted datagram.
    pub fn accept(&mut self, from: SocketAddr) -> bool {
        let ok = self.admits(from);
        if ok {
            self.learn(from);
        }
        ok
    }

    /// Whether `from` may be the client: its IP, and its port once known. Learns nothing.
    pub fn admits(&self, from: SocketAddr) -> bool {
        from.ip().to_canonical() == self.ip && self.port.is_none_or(|p| p == from.port())
    }

    /// A datagram from `from` proved to be the client's (it unwrapped): its port is held
    /// from now on, if none was yet.
    pub fn learn(&mut self, from: SocketAddr) {
        if self.admits(from) {
            self.port.get_or_insert(from.port());
        }
    }
}

/// A datagram from the client as the SOCKS UDP header and data: as it came, or unwrapped on a
/// protected session.
pub(super) fn unseal<'a>(
    sealed: Option<&mut Sealed>,
    datagram: &'a [u8],
) -> Result<Cow<'a, [u8]>, SealedError> {
    match sealed {
        None => Ok(Cow::Borrowed(datagram)),
        Some(s) => s.open_datagram(datagram).map(Cow::Owned),
    }
}

/// The drop reason of a reply that could not be wrapped.
pub(super) fn seal_drop_reason(e: &SealedError) -> &'static str {
    match e {
        SealedError::TooLarge => "too_large",
        _ => "gssapi",
    }
}

/// A SOCKS UDP header and data for the client: as they are, or wrapped (into `scratch`) on a
/// protected session.
pub(super) fn seal<'a>(
    sealed: Option<&mut Sealed>,
    plain: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8], SealedError> {
    match sealed {
        None => Ok(plain),
        Some(s) => {
            scratch.clear();
            s.seal_datagram(plain, scratch)?;
            Ok(scratch)
        }
    }
}

/// Which remote senders' datagrams go back to the client (RFC 4787 section 5 filtering).
/// Pure, so it is unit-tested.
#[derive(Debug)]
pub struct ReplyFilter {
    mode: UdpFilter,
    /// Addresses the client sent to, oldest first; bounded, the oldest forgotten first.
    order: VecDeque<IpAddr>,
    sent_to: HashSet<IpAddr>,
}

/// Most destination addresses an association remembers for reply filtering.
const MAX_PEERS: usize = 1024;

impl ReplyFilter {
    pub fn new(mode: UdpFilter) -> Self {
        ReplyFilter {
            mode,
            order: VecDeque::new(),
            sent_to: HashSet::new(),
        }
    }

    /// The client sent a datagram to `ip`.
    pub fn sent(&mut self, ip: IpAddr) {
        if self.mode == UdpFilter::Any {
            return;
        }
        let ip = ip.to_canonical();
        if self.sent_to.insert(ip) {
            self.order.push_back(ip);
            if self.order.len() > MAX_PEERS {
                if let Some(old) = self.order.pop_front() {
                    self.sent_to.remove(&old);
                }
            }
        }
    }

    /// Whether a datagram from `from` goes back to the client.
    pub fn accepts(&self, from: SocketAddr) -> bool {
        match self.mode {
            UdpFilter::Any => true,
            UdpFilter::Address => self.sent_to.contains(&from.ip().to_canonical()),
        }
    }
}

/// A small per-association cache of name lookups: at most `NAMES` names, each kept for
/// `NAME_TTL` (the resolver's own cache honours TTLs; this only spares a lookup per datagram).
#[derive(Debug, Default)]
pub struct NameCache {
    entries: HashMap<String, (Vec<IpAddr>, Instant)>,
}

const NAMES: usize = 32;
const NAME_TTL: Duration = Duration::from_secs(30);

impl NameCache {
    pub fn get(&self, name: &str, now: Instant) -> Option<Vec<IpAddr>> {
        self.entries
            .get(name)
            .filter(|(_, at)| now.saturating_duration_since(*at) < NAME_TTL)
            .map(|(ips, _)| ips.clone())
    }

    pub fn insert(&mut self, name: &str, ips: Vec<IpAddr>, now: Instant) {
        if self.entries.len() >= NAMES && !self.entries.contains_key(name) {
            self.entries
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < NAME_TTL);
            if self.entries.len() >= NAMES {
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(name.to_string(), (ips, now));
    }
}

pub(super) async fn run<S>(
    srv: &SocksServer,
    c: &mut Client<S>,
    s: &mut Session,
    req: &SocksRequest,
) -> Result<(), SocksError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut filter = ClientFilter::new(c.peer.ip(), req.target.port);
    let relay = UdpSocket::bind(SocketAddr::new(c.local.ip(), 0)).await?;
    c.reply(Reply::Succeeded, relay.local_addr()?).await?;
    c.stage = Stage::Silent;

    let mut out = Outbound::default();
    let mut replies = ReplyFilter::new(srv.cfg.udp_filter);
    let mut names = NameCache::default();
    let mut client_addr: Option<SocketAddr> = None;
    let mut leg = AgentLeg::default();
    let mut from_client = vec![0u8; DATAGRAM];
    let mut from_v4 = vec![0u8; DATAGRAM];
    let mut from_v6 = vec![0u8; DATAGRAM];
    let mut wrapped = Vec::with_capacity(DATAGRAM);
    let mut sealed_out = Vec::new();
    let idle = srv.cfg.udp_idle_timeout;
    let metrics = &srv.svc.metrics;
    let deadline = tokio::time::sleep(idle);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            // The control connection: EOF or an error ends the association; data is ignored.
            r = c.read_some(4096) => {
                c.buf.clear();
                if !matches!(r, Ok(n) if n > 0) {
                    break;
                }
            }
            r = relay.recv_from(&mut from_client) => {
                let (n, from) = r?;
                if !filter.admits(from) {
                    tracing::debug!(%from, "UDP datagram from a foreign address dropped");
                    metrics.socks_udp_drop("foreign");
                    continue;
                }
                let datagram = match unseal(c.sealed.as_deref_mut(), &from_client[..n]) {
                    Ok(d) => d,
                    Err(e) => {
                        s.udp_dropped += 1;
                        metrics.socks_udp_drop("gssapi");
                        tracing::debug!(client = %c.peer, %from, error = %e, "protected UDP datagram dropped");
                        continue;
                    }
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
                let dest = match srv.udp_destination(s, req, &header.target, &mut names).await {
                    Ok(UdpDest::Direct(a)) => a,
                    Ok(UdpDest::Agent(name)) => {
                        // A rule routes this datagram to an agent: the whole SOCKS datagram
                        // goes to it on the association's one stream there.
                        match leg.send(srv, name, &datagram).await {
                            Ok(()) => {
                                s.relayed_in += (datagram.len() - used) as u64;
                                deadline.as_mut().reset(Instant::now() + idle);
                            }
                            Err(why) => {
                                s.udp_dropped += 1;
                                metrics.socks_udp_drop(why);
                            }
                        }
                        continue;
                    }
                    Err(why) => {
                        s.udp_dropped += 1;
                        metrics.socks_udp_drop("policy");
                        tracing::debug!(
                            client = %c.peer,
                            target = %header.target,
                            dropped = s.udp_dropped,
                            "UDP datagram dropped: {why}"
                        );
                        continue;
                    }
                };
                let payload = &datagram[used..];
                if let Ok(sock) = out.socket(dest).await {
                    replies.sent(dest.ip());
                    if sock.send_to(payload, dest).await.is_ok() {
                        s.relayed_in += payload.len() as u64;
                        deadline.as_mut().reset(Instant::now() + idle);
                    }
                }
            }
            r = Outbound::recv(&out.v4, &mut from_v4) => {
                if let (Ok((n, from)), Some(to)) = (r, client_addr) {
                    if !replies.accepts(from) {
                        tracing::debug!(%from, "UDP reply from an address the client never sent to dropped");
                        continue;
                    }
                    let back = Back { relay: &relay, to, buf: &mut wrapped, sealed_out: &mut sealed_out };
                    if back.send(c.sealed.as_deref_mut(), from, &from_v4[..n], metrics).await {
                        s.relayed_out += n as u64;
                        deadline.as_mut().reset(Instant::now() + idle);
                    }
                }
            }
            r = Outbound::recv(&out.v6, &mut from_v6) => {
                if let (Ok((n, from)), Some(to)) = (r, client_addr) {
                    if !replies.accepts(from) {
                        tracing::debug!(%from, "UDP reply from an address the client never sent to dropped");
                        continue;
                    }
                    let back = Back { relay: &relay, to, buf: &mut wrapped, sealed_out: &mut sealed_out };
                    if back.send(c.sealed.as_deref_mut(), from, &from_v6[..n], metrics).await {
                        s.relayed_out += n as u64;
                        deadline.as_mut().reset(Instant::now() + idle);
                    }
                }
            }
            r = leg.recv() => {
                // Replies through the agent come framed, each a SOCKS datagram naming its
                // source (the agent filters them by the addresses it sent to).
                let Some(r) = r else {
                    // The agent or its connection went: the next datagram opens a new stream.
                    leg.close(srv);
                    continue;
                };
                let Some(to) = client_addr else { continue };
                for datagram in r {
                    match seal(c.sealed.as_deref_mut(), &datagram, &mut sealed_out) {
                        Ok(out) => {
                            if relay.send_to(out, to).await.is_ok() {
                                s.relayed_out += datagram.len() as u64;
                                leg.from += datagram.len() as u64;
                                deadline.as_mut().reset(Instant::now() + idle);
                            }
                        }
                        Err(e) => metrics.socks_udp_drop(seal_drop_reason(&e)),
                    }
                }
            }
            _ = &mut deadline => {
                s.error = Some("udp_idle_timeout");
                break;
            }
            _ = srv.svc.shutdown.draining() => break,
        }
    }
    leg.finish(srv);
    Ok(())
}

/// The association's stream to the agent a rule routes datagrams to (opened by the first
/// such datagram; one agent per association: datagrams a rule sends to another are dropped).
#[derive(Default)]
struct AgentLeg {
    open: Option<(Arc<str>, crate::tunnel::hub::Opened)>,
    inbound: bytes::BytesMut,
    framed: Vec<u8>,
    /// Payload bytes to and from the agent.
    to: u64,
    from: u64,
}

impl AgentLeg {
    async fn send(
        &mut self,
        srv: &SocksServer,
        name: Arc<str>,
        datagram: &[u8],
    ) -> Result<(), &'static str> {
        use tokio::io::AsyncWriteExt as _;
        if self.open.as_ref().is_some_and(|(n, _)| *n != name) {
            return Err("policy");
        }
        if self.open.is_none() {
            let what = crate::tunnel::proto::Open::Udp;
            let opened = srv
                .svc
                .agents
                .open_failover(&name, &what, srv.svc.connect_timeout)
                .await
                .map_err(|e| {
                    tracing::debug!(agent = %name, "UDP datagram dropped: {e}");
                    "policy"
                })?;
            self.open = Some((name, opened));
        }
        self.framed.clear();
        if !crate::tunnel::proto::encode_frame(datagram, &mut self.framed) {
            return Err("too_large");
        }
        let Some((_, o)) = self.open.as_mut() else {
            return Err("policy");
        };
        if o.stream.write_all(&self.framed).await.is_err() {
            // The agent went away: the next datagram opens a new stream.
            self.close(srv);
            return Err("policy");
        }
        self.to += datagram.len() as u64;
        Ok(())
    }

    /// The next whole datagrams from the agent (`None`: the stream ended or misbehaved);
    /// pending while no stream is open.
    async fn recv(&mut self) -> Option<Vec<Vec<u8>>> {
        use tokio::io::AsyncReadExt as _;
        let Some((_, o)) = self.open.as_mut() else {
            return std::future::pending().await;
        };
        let r = o.stream.read_buf(&mut self.inbound).await;
        let mut out = Vec::new();
        if !matches!(r, Ok(n) if n > 0) {
            self.inbound.clear();
            return None;
        }
        while let Some((range, used)) = crate::tunnel::proto::decode_frame(&self.inbound) {
            out.push(self.inbound[range].to_vec());
            let _ = self.inbound.split_to(used);
        }
        // What is left is part of one frame, never more than a whole one.
        if self.inbound.len() > 2 + crate::tunnel::proto::MAX_DATAGRAM {
            self.inbound.clear();
            return None;
        }
        Some(out)
    }

    fn close(&mut self, srv: &SocksServer) {
        if let Some((name, o)) = self.open.take() {
            o.count(self.to, self.from);
            srv.svc
                .metrics
                .tunnel_bytes(&name, "socks", self.to, self.from);
            (self.to, self.from) = (0, 0);
        }
    }

    fn finish(mut self, srv: &SocksServer) {
        self.close(srv);
    }
}

/// Where replies go: the relay socket, the client's address, and buffers reused per datagram.
struct Back<'a> {
    relay: &'a UdpSocket,
    to: SocketAddr,
    buf: &'a mut Vec<u8>,
    sealed_out: &'a mut Vec<u8>,
}

impl Back<'_> {
    /// Puts a remote's datagram in a header naming its source (wrapped on a protected
    /// session) and sends it to the client: whether it was sent. One that cannot be wrapped
    /// (too large for one datagram) is dropped and counted.
    async fn send(
        self,
        sealed: Option<&mut Sealed>,
        from: SocketAddr,
        payload: &[u8],
        metrics: &crate::metrics::Metrics,
    ) -> bool {
        self.buf.clear();
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        codec::encode_udp(&Target::ip(from), payload, self.buf);
        match seal(sealed, self.buf, self.sealed_out) {
            Ok(out) => self.relay.send_to(out, self.to).await.is_ok(),
            Err(e) => {
                metrics.socks_udp_drop(seal_drop_reason(&e));
                tracing::debug!(%from, to = %self.to, error = %e, "UDP reply dropped");
                false
            }
        }
    }
}

/// Outbound sockets, one per address family, opened on first use.
#[derive(Default)]
struct Outbound {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
}

impl Outbound {
    async fn socket(&mut self, dest: SocketAddr) -> std::io::Result<&UdpSocket> {
        let (slot, any) = match dest {
            SocketAddr::V4(_) => (&mut self.v4, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            SocketAddr::V6(_) => (&mut self.v6, IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        };
        if slot.is_none() {
            *slot = Some(UdpSocket::bind(SocketAddr::new(any, 0)).await?);
        }
        slot.as_ref()
            .ok_or_else(|| std::io::Error::other("socket not open"))
    }

    async fn recv(
        sock: &Option<UdpSocket>,
        buf: &mut [u8],
    ) -> std::io::Result<(usize, SocketAddr)> {
        match sock {
            Some(s) => s.recv_from(buf).await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn filter_learns_the_port_then_holds_it() {
        let mut f = ClientFilter::new("127.0.0.1".parse().expect("ip"), 0);
        assert!(!f.accept(a("127.0.0.2:5000")), "other IP");
        assert!(
            f.accept(a("127.0.0.1:5000")),
            "first datagram teaches the port"
        );
        assert!(
            f.accept(a("[::ffff:127.0.0.1]:5000")),
            "mapped form is the same client"
        );
        assert!(!f.accept(a("127.0.0.1:5001")), "other port after learning");
    }

    #[test]
    fn replies_only_from_addresses_sent_to() {
        let mut f = ReplyFilter::new(UdpFilter::Address);
        assert!(!f.accepts(a("192.0.2.1:53")), "nothing sent yet");
        f.sent("192.0.2.1".parse().expect("ip"));
        assert!(f.accepts(a("192.0.2.1:53")));
        assert!(f.accepts(a("192.0.2.1:5353")), "any port of that address");
        assert!(f.accepts(a("[::ffff:192.0.2.1]:53")), "mapped form");
        assert!(!f.accepts(a("192.0.2.2:53")));
        let any = ReplyFilter::new(UdpFilter::Any);
        assert!(any.accepts(a("198.51.100.7:9")));
    }

    #[test]
    fn reply_filter_is_bounded() {
        let mut f = ReplyFilter::new(UdpFilter::Address);
        for i in 0..(MAX_PEERS as u32 + 10) {
            f.sent(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)));
        }
        assert_eq!(f.sent_to.len(), MAX_PEERS);
        assert!(!f.accepts(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000)), 1)));
        assert!(f.accepts(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + MAX_PEERS as u32 + 9)),
            1
        )));
    }

    #[test]
    fn name_cache_expires_and_is_bounded() {
        let now = Instant::now();
        let ip: IpAddr = "192.0.2.9".parse().expect("ip");
        let mut c = NameCache::default();
        c.insert("a.example", vec![ip], now);
        assert_eq!(c.get("a.example", now), Some(vec![ip]));
        assert_eq!(c.get("a.example", now + NAME_TTL), None, "expired");
        for i in 0..100 {
            c.insert(
                &format!("n{i}.example"),
                vec![ip],
                now + Duration::from_millis(i),
            );
        }
        assert!(c.entries.len() <= NAMES);
        assert!(c.get("n99.example", now + Duration::from_secs(1)).is_some());
    }

    #[test]
    fn filter_admits_without_learning() {
        let mut f = ClientFilter::new("127.0.0.1".parse().expect("ip"), 0);
        assert!(
            f.admits(a("127.0.0.1:5000")),
            "any port until one is learned"
        );
        assert!(f.admits(a("127.0.0.1:5001")), "admitting taught nothing");
        assert!(!f.admits(a("127.0.0.2:5000")));
        f.learn(a("127.0.0.2:6000"));
        assert!(f.admits(a("127.0.0.1:5001")), "another IP teaches nothing");
        f.learn(a("127.0.0.1:5001"));
        assert!(!f.admits(a("127.0.0.1:5000")));
        f.learn(a("127.0.0.1:5000"));
        assert!(
            f.admits(a("127.0.0.1:5001")) && !f.admits(a("127.0.0.1:5000")),
            "the first learned port holds"
        );
    }

    #[test]
    fn filter_with_named_port() {
        let mut f = ClientFilter::new("::1".parse().expect("ip"), 7000);
        assert!(!f.accept(a("[::1]:7001")));
        assert!(f.accept(a("[::1]:7000")));
    }
}
