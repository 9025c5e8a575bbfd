//! CONNECT tunnels and the upstream side of tunnels and routed requests: directly to the
//! addresses the policy checked, or through parent proxies; the relay (splice, or a copying
//! relay when bandwidth limits apply).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::access::Access;
use super::body;
use super::codec::{self, Framing, RequestHead};
use super::error::ProxyError;
use super::target::{self, HttpTarget};
use crate::policy::{Policy, Protocol};
use crate::relay::{self, RelayEnd};
use crate::upstream::{connect_route, Direct, Mode};

use super::exchange::{UpStream, Upstream};
use super::proxy::{wants_keep_alive, Client, Exchange, HttpProxy};

/// Where the policy sends a request.
#[derive(Clone)]
pub(super) enum Via {
    /// Directly, to these checked addresses (empty: the verdict needed no address).
    Direct(Vec<SocketAddr>),
    /// Through these parents, in failover order.
    Route(Arc<[String]>),
    /// A reverse proxy's route: one of its pool's servers.
    Pool(Box<super::reverse::ReverseTo>),
}

impl HttpProxy {
    pub(super) async fn tunnel(
        &self,
        client: &mut Client,
        head: RequestHead,
        ex: &mut Exchange,
    ) -> bool {
        // Boxed: the setup (the head, the login, the policy's answer, the connect, the
        // replies) is freed once done, so an idle tunnel's task holds only the relay.
        let mut upstream = match Box::pin(self.tunnel_open(client, head, ex)).await {
            Ok(up) => up,
            Err(keep) => return keep,
        };
        let (end, stats) = self.tunnel_relay(client, &mut upstream, ex).await;
        self.relay_ended(ex, end, &stats);
        false
    }

    /// A CONNECT up to its relay: the checks, the stream to the target (or an answer of
    /// its own: `Err(keep the client connection)`), `200 Connection established`, and the
    /// bytes either side sent early. The client's buffer is freed.
    async fn tunnel_open(
        &self,
        client: &mut Client,
        head: RequestHead,
        ex: &mut Exchange,
    ) -> Result<TcpStream, bool> {
        let (host, port) = match target::parse_authority(&head.target, None) {
            Ok(t) => t,
            Err(e) => {
                self.send_error(client, &ProxyError::bad_request(e.to_string()), true, ex)
                    .await;
                return Err(false);
            }
        };
        match codec::request_framing(&head) {
            Ok(Framing::None) => {}
            Ok(_) => {
                let err = ProxyError::bad_request("CONNECT with a request body");
                self.send_error(client, &err, true, ex).await;
                return Err(false);
            }
            Err(e) => {
                self.send_error(client, &ProxyError::bad_request(e.to_string()), true, ex)
                    .await;
                return Err(false);
            }
        }
        let keep = wants_keep_alive(&head);
        ex.target = format!("{host}:{port}");
        let policy = client.policy.clone();
        if !self.cfg.connect_ports.iter().any(|r| r.contains(port)) {
            // Log in first (on a listener that asks for it), so the refusal names the user.
            let ip = client.peer.ip().to_canonical();
            match self
                .authenticate(&policy, client, &head, ip, !keep, ex)
                .await
            {
                Ok(id) => ex.user = id.map(|i| i.name),
                Err(keep) => return Err(keep),
            }
            let err = ProxyError::denied(format!("CONNECT to port {port} is not allowed"));
            self.send_error(client, &err, !keep, ex).await;
            return Err(keep);
        }
        let mut via = match self
            .authorize(
                &policy,
                client,
                &head,
                &host,
                port,
                Protocol::Connect,
                !keep,
                ex,
            )
            .await
        {
            Access::Answered(keep) => return Err(keep),
            Access::Direct { addrs, .. } => Via::Direct(addrs),
            Access::Route { parents, .. } => Via::Route(parents),
        };
        drop(head);
        if let Via::Route(parents) = &via {
            if crate::upstream::route_agent(parents).is_some() {
                let parents = parents.clone();
                match Box::pin(self.connect_agent(client, &host, port, parents, keep, ex)).await {
                    Ok(keep) => return Err(keep),
                    Err(fallback) => via = fallback,
                }
            }
        }
        let target = HttpTarget {
            authority: format!("{host}:{port}"),
            host,
            port,
            path: String::new(),
        };
        let (mut upstream, leftover) = match self
            .open_upstream(&policy, &target, &via, Mode::Tunnel, ex)
            .await
        {
            Ok(up) => up,
            Err(err) => {
                self.send_error(client, &err, !keep, ex).await;
                return Err(keep);
            }
        };
        let established = match ex.auth_reply.take() {
            // A Negotiate login finished on this CONNECT: the mutual-authentication token.
            Some(v) => {
                format!("HTTP/1.1 200 Connection established\r\nProxy-Authenticate: {v}\r\n\r\n")
            }
            None => "HTTP/1.1 200 Connection established\r\n\r\n".to_string(),
        };
        if body::write_all(
            &mut client.stream,
            established.as_bytes(),
            self.cfg.read_timeout,
        )
        .await
        .is_err()
        {
            return Err(false);
        }
        ex.status = 200;
        ex.bytes_out += established.len() as u64;
        // Bytes a parent sent past its handshake go to the client.
        if !leftover.is_empty() {
            if body::write_all(&mut client.stream, &leftover, self.cfg.read_timeout)
                .await
                .is_err()
            {
                return Err(false);
            }
            ex.bytes_out += leftover.len() as u64;
        }
        // Bytes the client sent right behind the CONNECT head belong to the tunnel.
        if !client.buf.is_empty() {
            if body::write_all(&mut upstream, &client.buf, self.cfg.read_timeout)
                .await
                .is_err()
            {
                return Err(false);
            }
            ex.bytes_in += client.buf.len() as u64;
        }
        // An idle tunnel holds no buffer: the head's buffer is freed, not just emptied.
        client.buf = bytes::BytesMut::new();
        Ok(upstream)
    }

    /// Opens the upstream side of a tunnel or request: directly to the checked addresses, or
    /// through the route's parents. Returns the stream and bytes a parent sent past its
    /// handshake.
    pub(super) async fn open_upstream(
        &self,
        policy: &Policy,
        target: &HttpTarget,
        via: &Via,
        mode: Mode,
        ex: &mut Exchange,
    ) -> Result<(TcpStream, bytes::BytesMut), ProxyError> {
        match via {
            Via::Direct(allowed) => {
                let c = self.connect_checked(target, allowed).await?;
                ex.upstream = Some(c.peer);
                Ok((c.stream, bytes::BytesMut::new()))
            }
            Via::Route(parents) => {
                // A `direct` entry in a route is not guard-checked by the verdict: refuse it
                // unless the guard passes for the name's addresses. Without one, the name
                // is left to the parents (no lookup here).
                let checked = if parents.iter().any(|p| p == crate::upstream::DIRECT) {
                    self.guarded_addrs(policy, target).await
                } else {
                    None
                };
                let direct = match &checked {
                    Some(a) => Direct::Addrs(a),
                    None => Direct::Forbidden("guard"),
                };
                let r = connect_route(
                    parents,
                    policy,
                    &self.svc.connector,
                    &target.host,
                    target.port,
                    mode,
                    direct,
                    self.svc.connect_timeout,
                )
                .await
                .map_err(ProxyError::from)?;
                ex.upstream = Some(r.peer);
                ex.route = Some(r.used.clone());
                Ok((r.stream, r.leftover))
            }
            Via::Pool(_) => Err(ProxyError::new(
                500,
                "proxy_internal_error",
                "a pool route has no tunnel",
            )),
        }
    }

    /// The destination's addresses if the guard lets every one through, for `direct`
    /// entries of a route.
    pub(super) async fn guarded_addrs(
        &self,
        policy: &Policy,
        target: &HttpTarget,
    ) -> Option<Vec<SocketAddr>> {
        let ips = self.svc.connector.resolve(&target.host).await.ok()?;
        ips.iter()
            .all(|ip| policy.guard(*ip, target.port).is_ok())
            .then(|| {
                ips.iter()
                    .map(|ip| SocketAddr::new(*ip, target.port))
                    .collect()
            })
    }

    /// A tunnel's relay: zero-copy splice between two plain sockets, or the copying relay
    /// when bandwidth limits apply.
    /// A CONNECT a rule routes to a tunnel agent: through the agent (the answer sent and the
    /// tunnel relayed: `Ok(keep)`), or, when it is not there or cannot open the stream and
    /// the rule has fallback parents, `Err` with those as the route to take instead.
    async fn connect_agent(
        &self,
        client: &mut Client,
        host: &crate::connector::Host,
        port: u16,
        route: std::sync::Arc<[String]>,
        keep: bool,
        ex: &mut Exchange,
    ) -> Result<bool, Via> {
        let agent = crate::upstream::route_agent(&route).unwrap_or_default();
        match self.open_agent(host, port, agent).await {
            Ok(opened) => Ok(self.tunnel_agent(client, opened, agent, ex).await),
            Err(e) => {
                let fallback = crate::upstream::agent_fallback(&route);
                if fallback.is_empty() {
                    let err = ProxyError::new(agent_status(e), e.as_str(), e.to_string());
                    self.send_error(client, &err, !keep, ex).await;
                    return Ok(keep);
                }
                // The rule's fallback: its parents (or direct), as a route of their own.
                tracing::debug!(%agent, "CONNECT: {e}; trying the rule's fallback");
                Err(Via::Route(std::sync::Arc::from(fallback)))
            }
        }
    }

    /// A stream to `host:port` through `agent` (which resolves the name and applies its
    /// allow-list).
    pub(super) async fn open_agent(
        &self,
        host: &crate::connector::Host,
        port: u16,
        agent: &str,
    ) -> Result<crate::tunnel::hub::Opened, crate::tunnel::proto::OpenError> {
        let what = crate::tunnel::proto::Open::Tcp {
            host: host_text(host),
            port,
        };
        self.svc
            .agents
            .open_failover(agent, &what, self.svc.connect_timeout)
            .await
    }

    /// A CONNECT a rule routes to a tunnel agent, its stream open: the answer, then the
    /// relay.
    async fn tunnel_agent(
        &self,
        client: &mut Client,
        mut opened: crate::tunnel::hub::Opened,
        agent: &str,
        ex: &mut Exchange,
    ) -> bool {
        let established = match ex.auth_reply.take() {
            Some(v) => {
                format!("HTTP/1.1 200 Connection established\r\nProxy-Authenticate: {v}\r\n\r\n")
            }
            None => "HTTP/1.1 200 Connection established\r\n\r\n".to_string(),
        };
        let timeout = self.cfg.read_timeout;
        if body::write_all(&mut client.stream, established.as_bytes(), timeout)
            .await
            .is_err()
        {
            return false;
        }
        ex.status = 200;
        ex.bytes_out += established.len() as u64;
        if !client.buf.is_empty() {
            if body::write_all(&mut opened.stream, &client.buf, timeout)
                .await
                .is_err()
            {
                return false;
            }
            ex.bytes_in += client.buf.len() as u64;
        }
        client.buf = bytes::BytesMut::new();
        let t = self
            .svc
            .limits
            .throttles(client.peer.ip(), ex.user.as_deref());
        let (end, stats) = Box::pin(crate::tunnel::stream::relay_limited(
            &mut client.stream,
            &mut opened.stream,
            self.cfg.tunnel_idle_timeout,
            t.up,
            t.down,
        ))
        .await;
        opened.count(stats.a_to_b, stats.b_to_a);
        self.svc
            .metrics
            .tunnel_bytes(agent, "http", stats.a_to_b, stats.b_to_a);
        self.relay_ended(ex, end, &stats);
        false
    }

    /// A CONNECT tunnel's relay has ended: its bytes in the relay metrics, and its byte
    /// counts and how it ended for the access log.
    fn relay_ended(&self, ex: &mut Exchange, end: RelayEnd, stats: &relay::RelayStats) {
        self.svc
            .metrics
            .relay("connect", stats.a_to_b, stats.b_to_a);
        ex.bytes_in += stats.a_to_b;
        ex.bytes_out += stats.b_to_a;
        match end {
            RelayEnd::Done => {}
            RelayEnd::Idle => ex.error = Some("connection_read_timeout"),
            RelayEnd::Error(_) => ex.error = Some("connection_terminated"),
        }
    }

    pub(super) async fn tunnel_relay(
        &self,
        client: &mut Client,
        upstream: &mut TcpStream,
        ex: &Exchange,
    ) -> (RelayEnd, relay::RelayStats) {
        let ip = client.peer.ip();
        let t = self.svc.limits.throttles(ip, ex.user.as_deref());
        let idle = self.cfg.tunnel_idle_timeout;
        let plain = client
            .stream
            .as_tcp()
            .filter(|_| t.up.is_none() && t.down.is_none());
        if let Some(tcp) = plain {
            crate::splice::relay_tcp(tcp, upstream, idle).await
        } else {
            // Boxed: the copying relay is larger than the splice one, and an idle spliced
            // tunnel should not carry its state.
            Box::pin(relay::relay_limited(
                &mut client.stream,
                upstream,
                idle,
                t.up,
                t.down,
            ))
            .await
        }
    }

    /// Connects to the addresses the policy checked (for a name whose verdict needed no
    /// address, the name is resolved here: only rules that cannot depend on it decided).
    pub(super) async fn connect_checked(
        &self,
        target: &HttpTarget,
        allowed: &[SocketAddr],
    ) -> Result<crate::connector::Connected, crate::connector::ConnectError> {
        if allowed.is_empty() {
            self.svc.connector.connect(&target.host, target.port).await
        } else {
            self.svc
                .connector
                .connect_addrs(allowed, &target.authority)
                .await
        }
    }

    /// After a 101: relay both connections as a tunnel, bytes already read going first.
    pub(super) async fn tunnel_upgraded(
        &self,
        client: &mut Client,
        mut up: Upstream,
        ex: &mut Exchange,
    ) -> bool {
        let t = self.cfg.read_timeout;
        if !client.buf.is_empty() {
            if body::write_all(&mut up.stream, &client.buf, t)
                .await
                .is_err()
            {
                return false;
            }
            ex.bytes_in += client.buf.len() as u64;
        }
        if !up.buf.is_empty() {
            if body::write_all(&mut client.stream, &up.buf, t)
                .await
                .is_err()
            {
                return false;
            }
            ex.bytes_out += up.buf.len() as u64;
        }
        client.buf = bytes::BytesMut::new();
        up.buf = bytes::BytesMut::new();
        let (end, stats) = match &mut up.stream {
            UpStream::Tcp(s) => self.tunnel_relay(client, s, ex).await,
            // TLS to the server, or a stream through an agent: only the copying relay can
            // carry it.
            other => {
                let t = self
                    .svc
                    .limits
                    .throttles(client.peer.ip(), ex.user.as_deref());
                Box::pin(relay::relay_limited(
                    &mut client.stream,
                    other,
                    self.cfg.tunnel_idle_timeout,
                    t.up,
                    t.down,
                ))
                .await
            }
        };
        self.svc
            .metrics
            .relay("upgrade", stats.a_to_b, stats.b_to_a);
        ex.bytes_in += stats.a_to_b;
        ex.bytes_out += stats.b_to_a;
        if let RelayEnd::Error(_) = end {
            ex.error = Some("connection_terminated");
        }
        false
    }
}

/// A host as the agent is asked for it: the name, or the address.
pub(super) fn host_text(host: &crate::connector::Host) -> String {
    match host {
        crate::connector::Host::Name(n) => n.clone(),
        crate::connector::Host::Ip(ip) => ip.to_string(),
    }
}

/// The status a client gets when an agent does not open a stream.
pub(super) fn agent_status(e: crate::tunnel::proto::OpenError) -> u16 {
    use crate::tunnel::proto::OpenError;
    match e {
        OpenError::NotAllowed | OpenError::NoService => 403,
        OpenError::NetworkUnreachable => 503,
        OpenError::HostUnreachable => 504,
        OpenError::BadRequest | OpenError::Refused | OpenError::Failed => 502,
    }
}

#[cfg(test)]
mod agent_tests {
    use super::*;
    use crate::tunnel::proto::OpenError;

    #[test]
    fn agent_refusals_become_statuses() {
        assert_eq!(agent_status(OpenError::NotAllowed), 403);
        assert_eq!(agent_status(OpenError::NetworkUnreachable), 503);
        assert_eq!(agent_status(OpenError::HostUnreachable), 504);
        assert_eq!(agent_status(OpenError::Refused), 502);
        assert_eq!(
            crate::upstream::route_agent(&["agent:office".to_string()]),
            Some("office")
        );
        assert_eq!(crate::upstream::route_agent(&["direct".to_string()]), None);
        let route = ["agent:office".to_string(), "direct".to_string()];
        assert_eq!(crate::upstream::route_agent(&route), Some("office"));
        assert_eq!(crate::upstream::agent_fallback(&route), ["direct"]);
    }
}
