//! The SOCKS listener: one task per client connection.
//!
//! ```text
//! accept -> [TLS] -> first byte picks the version (5, or 4 when enabled)
//!   SOCKS5: greeting -> method choice -> [RFC 1929 user/password] -> request
//!   SOCKS4: request (4a: the name follows the user id)
//!   (all of the above within handshake_timeout)
//! -> admit (the policy, see [`super::access`]) -> CONNECT | BIND | UDP ASSOCIATE -> access log
//! ```
//! The session keeps the policy it was accepted under: a reload does not change it.
//! Every failure goes through [`Client::fail`], which answers with the reply code from
//! [`super::reply`] and closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::access::{self, Allowed};
use super::client::{Client, PlainTcp, Stage, Version};
use super::codec::{self, Command, Target, METHOD_GSSAPI, METHOD_NONE, METHOD_PASSWORD};
use super::reply::{Reply, SocksError};
use super::{bind, udp};
use crate::accesslog::AccessRecord;
use crate::config::{AuthMethod, SocksListenerConfig};
use crate::policy::{Identity, Policy, Protocol};
use crate::relay::{self, RelayEnd};
use crate::server::Services;
use crate::upstream::{self, Direct, Mode};

/// Per-listener state shared by its connections.
pub struct SocksServer {
    pub name: Arc<str>,
    pub cfg: SocksListenerConfig,
    pub svc: Arc<Services>,
    /// TLS terminated before the SOCKS greeting (`tls` set); follows reloads.
    pub tls: Option<Arc<crate::tls::TlsServer>>,
}

/// A decoded request, with who asked: what access control will look at.
#[derive(Debug, Clone)]
pub struct SocksRequest {
    pub version: Version,
    pub command: Command,
    pub target: Target,
    /// The user name for the log: logged in (SOCKS5), or a SOCKS4 USERID taken as a name.
    pub user: Option<String>,
    /// Who the rules see (with groups from the policy's users file).
    pub identity: Option<Identity>,
    pub client: SocketAddr,
}

impl SocksRequest {
    /// The user who proved who they are (SOCKS5 login); per-user limits count only them, not
    /// a SOCKS4 USERID anyone can claim.
    pub fn logged_in(&self) -> Option<&str> {
        match self.version {
            Version::V5 => self.identity.as_ref().map(|i| i.name.as_str()),
            Version::V4 => None,
        }
    }
}

/// What [`SocksServer::admit`] let through, per command.
enum Admitted {
    Connect(Allowed),
    /// The peer addresses a BIND accepts; `None`: anyone (checked when it connects).
    Bind(Option<Vec<std::net::IpAddr>>),
    /// Every datagram is checked on its own.
    Udp,
    /// CONNECT through this tunnel agent; else, when it is not there or cannot open the
    /// stream, through the rule's fallback parents (`Allowed::Route`).
    Agent(Arc<str>, Option<Allowed>),
    /// UDP ASSOCIATE through this tunnel agent (each datagram checked on its own).
    AgentUdp(Arc<str>),
    /// BIND at this tunnel agent (the expected peer checked, or anyone: checked when it
    /// connects).
    AgentBind(Arc<str>),
}

/// What the access log gets to know about one session.
pub(super) struct Session {
    started: Instant,
    /// The policy in force when the connection was accepted.
    pub policy: Arc<Policy>,
    /// The rule that decided (for UDP: the first datagram's, or the first denial's).
    pub rule: Option<Arc<str>>,
    /// The name a login attempt gave (logged when the login fails).
    pub login: Option<String>,
    /// UDP: whether `rule` already names a denial; datagrams dropped (policy or DNS).
    pub udp_denied_seen: bool,
    pub udp_dropped: u64,
    /// The logged-in user's connection slot (per-user limits), held until the session ends.
    user_slot: Option<crate::limits::ConnGuard>,
    pub request: Option<SocksRequest>,
    pub reply: Reply,
    pub upstream: Option<SocketAddr>,
    pub error: Option<&'static str>,
    /// Payload bytes relayed (TCP) or carried (UDP), each way.
    pub relayed_in: u64,
    pub relayed_out: u64,
}

impl SocksServer {
    /// Serves one client connection until its session ends.
    ///
    /// This, [`Self::session`] and [`Self::dispatch`] return `async move` blocks rather than
    /// being `async fn`s: an `async fn` keeps each argument twice in its state (as passed and
    /// as its local), and an idle tunnel's task holds all three states, nested.
    #[allow(clippy::manual_async_fn)]
    pub fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = ()> + Send {
        async move {
            let _ = stream.set_nodelay(true);
            let local = match stream.local_addr() {
                Ok(a) => a,
                Err(_) => return,
            };
            let mut s = Session {
                started: Instant::now(),
                policy: self.svc.policy.current(),
                rule: None,
                login: None,
                udp_denied_seen: false,
                udp_dropped: 0,
                user_slot: None,
                request: None,
                reply: Reply::GeneralFailure,
                upstream: None,
                error: None,
                relayed_in: 0,
                relayed_out: 0,
            };
            let (bytes_in, bytes_out, version) = match &self.tls {
                None => self.session(Client::new(stream, peer, local), &mut s).await,
                // Boxed: a TLS session (its handshake, its stream) is larger, and rarer, than a
                // plain one, and a plain session's task does not carry its state.
                Some(acceptor) => {
                    Box::pin(self.tls_session(acceptor, stream, peer, local, &mut s)).await
                }
            };
            self.record(peer, &s, bytes_in, bytes_out, version);
        }
    }

    /// A session over TLS: the handshake (within the handshake timeout), then [`Self::session`].
    async fn tls_session(
        &self,
        acceptor: &crate::tls::TlsServer,
        stream: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
        s: &mut Session,
    ) -> (u64, u64, Option<Version>) {
        let accept = tokio::time::timeout(self.cfg.handshake_timeout, acceptor.accept(stream));
        match Box::pin(accept).await {
            Ok(Ok(tls)) => Box::pin(self.session(Client::new(tls, peer, local), s)).await,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "TLS handshake failed: {e}");
                s.error = Some("tls_error");
                (0, 0, None)
            }
            Err(_) => {
                s.error = Some("handshake_timeout");
                (0, 0, None)
            }
        }
    }

    /// Runs the handshake and the command; returns the client-side byte counts.
    // Not an `async fn`: see `serve`.
    #[allow(clippy::manual_async_fn)]
    fn session<'a, S>(
        &'a self,
        mut c: Client<S>,
        s: &'a mut Session,
    ) -> impl std::future::Future<Output = (u64, u64, Option<Version>)> + Send + 'a
    where
        S: AsyncRead + AsyncWrite + PlainTcp + Unpin + Send + 'a,
    {
        async move {
            let handshake = tokio::select! {
                // Each step before the relay is boxed, so its state is freed when it is done and
                // an idle relay's task holds only the relay (see the README on idle tunnels).
                r = tokio::time::timeout(self.cfg.handshake_timeout, Box::pin(self.handshake(&mut c, s))) => {
                    r.unwrap_or(Err(SocksError::HandshakeTimeout))
                }
                _ = self.svc.shutdown.draining() => Err(SocksError::Draining),
            };
            let result = match handshake {
                Ok(req) => {
                    s.request = Some(req.clone());
                    match Box::pin(self.admit(s, &req)).await {
                        Ok(admitted) => self.dispatch(&mut c, s, &req, admitted).await,
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => s.reply = Reply::Succeeded,
                Err(e) => {
                    tracing::debug!(client = %c.peer, error = e.kind(), "{e}");
                    s.reply = e.reply();
                    s.error = Some(e.kind());
                    // Boxed: the error reply's state is not kept by an idle relay.
                    Box::pin(c.fail(&e)).await;
                }
            }
            (c.bytes_in, c.bytes_out, c.version)
        }
    }

    /// Greeting, authentication and request, up to a decoded request.
    async fn handshake<S>(
        &self,
        c: &mut Client<S>,
        s: &mut Session,
    ) -> Result<SocksRequest, SocksError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let policy = s.policy.clone();
        let login_required = policy.listener(&self.name).auth;
        match c.first_byte().await? {
            5 => {}
            4 => {
                c.version = Some(Version::V4);
                c.stage = Stage::Request;
                if !self.cfg.socks4 {
                    return Err(SocksError::Socks4Disabled);
                }
                let r = c.read_msg(codec::decode_socks4).await?;
                if login_required {
                    return Err(SocksError::Socks4NeedsLogin);
                }
                let identity = access::socks4_identity(&policy, &self.name, &r.user_id);
                return Ok(SocksRequest {
                    version: Version::V4,
                    command: r.command,
                    target: r.target,
                    user: identity.as_ref().map(|i| i.name.clone()),
                    identity,
                    client: c.peer,
                });
            }
            other => return Err(codec::Malformed::Version(other).into()),
        }
        c.version = Some(Version::V5);
        c.stage = Stage::Greeting;
        let greeting = c.read_msg(codec::decode_greeting).await?;
        // The policy's login replaces the listener's own methods.
        let login = policy.listener(&self.name).methods;
        let policy_methods = login.socks();
        let methods: &[AuthMethod] = if login_required {
            &policy_methods
        } else {
            &self.cfg.auth
        };
        let Some(method) = choose_method(methods, &greeting.methods) else {
            return Err(SocksError::NoAcceptableMethod);
        };
        c.send(&[5, method]).await?;
        let mut identity = None;
        if method == METHOD_PASSWORD {
            c.stage = Stage::Auth;
            let creds = c.read_msg(codec::decode_credentials).await?;
            let id = self
                .login(&policy, c.peer.ip().to_canonical(), &creds, s)
                .await?;
            c.send(&[1, 0]).await?;
            identity = Some(id);
        } else if method == METHOD_GSSAPI {
            identity = Some(Box::pin(self.gssapi_login(&policy, c, s)).await?);
        }
        c.stage = Stage::Request;
        let r = c.read_msg(codec::decode_request).await?;
        Ok(SocksRequest {
            version: Version::V5,
            command: r.command,
            target: r.target,
            user: identity.as_ref().map(|i| i.name.clone()),
            identity,
            client: c.peer,
        })
    }

    /// The policy check: every request, decoded and authenticated, passes this point before
    /// anything is connected or bound. CONNECT and BIND are checked for their destination
    /// (BIND: the expected peer); UDP ASSOCIATE names no destination, so each datagram is
    /// checked instead. An `Err` is answered with its reply code (a denial: 0x02 / 91).
    async fn admit(&self, s: &mut Session, req: &SocksRequest) -> Result<Admitted, SocksError> {
        // Limits first: a refused command costs no lookup. A logged-in user holds one
        // connection slot for the life of the session.
        let limits = &self.svc.limits;
        if let Some(name) = req.logged_in() {
            s.user_slot = Some(limits.user_connection(name)?);
        }
        limits.request(req.client.ip(), req.logged_in())?;
        if let Some(agent) = &self.cfg.via_agent {
            return match req.command {
                Command::Connect => {
                    self.check_remote(s, req, Protocol::SocksConnect, &req.target)?;
                    Ok(Admitted::Agent(Arc::from(agent.as_str()), None))
                }
                Command::Bind => {
                    if !bind::from_anyone(&req.target) {
                        self.check_remote(s, req, Protocol::SocksBind, &req.target)?;
                    }
                    Ok(Admitted::AgentBind(Arc::from(agent.as_str())))
                }
                Command::UdpAssociate => Ok(Admitted::AgentUdp(Arc::from(agent.as_str()))),
            };
        }
        let t = &req.target;
        match req.command {
            Command::Connect => {
                let allowed = self
                    .check(s, req, Protocol::SocksConnect, &t.host, t.port)
                    .await?;
                // A rule routing to a tunnel agent: the stream goes through it.
                if let Allowed::Route { parents, ips } = &allowed {
                    if let Some(agent) = upstream::route_agent(parents) {
                        let rest = upstream::agent_fallback(parents);
                        let fallback = (!rest.is_empty()).then(|| Allowed::Route {
                            parents: Arc::from(rest),
                            ips: ips.clone(),
                        });
                        return Ok(Admitted::Agent(Arc::from(agent), fallback));
                    }
                }
                Ok(Admitted::Connect(allowed))
            }
            Command::Bind => match &t.host {
                crate::connector::Host::Ip(ip) if ip.is_unspecified() => Ok(Admitted::Bind(None)),
                host => match self
                    .check(s, req, Protocol::SocksBind, host, t.port)
                    .await?
                {
                    Allowed::Direct(addrs) => {
                        Ok(Admitted::Bind(Some(addrs.iter().map(|a| a.ip()).collect())))
                    }
                    // A rule routing to a tunnel agent: the agent listens inside its network.
                    Allowed::Route { parents, .. } => match upstream::route_agent(&parents) {
                        Some(agent) => Ok(Admitted::AgentBind(Arc::from(agent))),
                        None => Err(self.route_unsupported(s, "BIND")),
                    },
                },
            },
            Command::UdpAssociate => Ok(Admitted::Udp),
        }
    }

    pub(super) fn route_unsupported(&self, s: &Session, what: &'static str) -> SocksError {
        let rule = s.rule.clone().unwrap_or_else(|| Arc::from("-"));
        tracing::info!(listener = %self.name, %rule, "SOCKS {what} refused: the rule routes through parents, which cannot carry {what}");
        SocksError::RouteUnsupported(rule, what)
    }

    // Not an `async fn`: see `serve`.
    #[allow(clippy::manual_async_fn)]
    fn dispatch<'a, S>(
        &'a self,
        c: &'a mut Client<S>,
        s: &'a mut Session,
        req: &'a SocksRequest,
        admitted: Admitted,
    ) -> impl std::future::Future<Output = Result<(), SocksError>> + Send + 'a
    where
        S: AsyncRead + AsyncWrite + PlainTcp + Unpin + Send + 'a,
    {
        async move {
            match admitted {
                Admitted::Connect(allowed) => self.connect(c, s, &req.target, allowed).await,
                Admitted::Bind(expected) => Box::pin(bind::run(self, c, s, req, expected)).await,
                // On a protected GSSAPI session the datagrams are wrapped (RFC 1961 section 5).
                Admitted::Udp => Box::pin(udp::run(self, c, s, req)).await,
                // Through an agent too, a protected GSSAPI session stays wrapped (relay_agent).
                // Boxed: the open's result, kept while a fallback runs, would widen the state
                // of every session, an idle direct tunnel's too.
                Admitted::Agent(agent, fallback) => {
                    Box::pin(self.connect_agent(c, s, &req.target, &agent, fallback)).await
                }
                Admitted::AgentUdp(agent) => {
                    Box::pin(super::udp_agent::run(self, c, s, req, &agent)).await
                }
                Admitted::AgentBind(agent) => {
                    Box::pin(bind::run_agent(self, c, s, req, &agent)).await
                }
            }
        }
    }

    /// CONNECT through a tunnel agent: a stream on its connection instead of a socket from
    /// the connector; the agent resolves the name and applies its allow-list. When no such
    /// agent is connected or the open fails, through the rule's `fallback` parents if it
    /// has any (boxed: rarer, and an idle agent stream need not hold its state).
    async fn connect_agent<S>(
        &self,
        c: &mut Client<S>,
        s: &mut Session,
        target: &Target,
        agent: &str,
        fallback: Option<Allowed>,
    ) -> Result<(), SocksError>
    where
        S: AsyncRead + AsyncWrite + PlainTcp + Unpin + Send,
    {
        match (self.open_agent(target, agent).await, fallback) {
            (Ok(opened), _) => self.relay_opened(c, s, opened, agent).await,
            (Err(e), None) => Err(SocksError::Tunnel(e)),
            (Err(e), Some(fallback)) => {
                tracing::debug!(listener = %self.name, %agent, "SOCKS CONNECT: {e}; trying the rule's fallback");
                Box::pin(self.connect(c, s, target, fallback)).await
            }
        }
    }

    /// A stream to `target` through `agent`.
    async fn open_agent(
        &self,
        target: &Target,
        agent: &str,
    ) -> Result<crate::tunnel::hub::Opened, crate::tunnel::proto::OpenError> {
        let host = match &target.host {
            crate::connector::Host::Name(n) => n.clone(),
            crate::connector::Host::Ip(ip) => ip.to_string(),
        };
        let what = crate::tunnel::proto::Open::Tcp {
            host,
            port: target.port,
        };
        self.svc
            .agents
            .open_failover(agent, &what, self.svc.connect_timeout)
            .await
    }

    /// The success reply for a stream open through `agent`, then the relay.
    async fn relay_opened<S>(
        &self,
        c: &mut Client<S>,
        s: &mut Session,
        opened: crate::tunnel::hub::Opened,
        agent: &str,
    ) -> Result<(), SocksError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // The address the agent connected from is its own business: 0.0.0.0:0.
        c.reply(Reply::Succeeded, SocketAddr::from(([0, 0, 0, 0], 0)))
            .await?;
        c.stage = Stage::Silent;
        self.relay_agent(c, s, opened, agent).await;
        Ok(())
    }

    /// A stream through a tunnel agent joined to the client (whose bytes sent ahead of the
    /// reply go first), counted for the agent.
    pub(super) async fn relay_agent<S>(
        &self,
        c: &mut Client<S>,
        s: &mut Session,
        mut opened: crate::tunnel::hub::Opened,
        agent: &str,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if !c.buf.is_empty() {
            if opened.stream.write_all(&c.buf).await.is_err() {
                s.error = Some("connection_terminated");
                return;
            }
            s.relayed_in += c.buf.len() as u64;
        }
        c.buf = bytes::BytesMut::new();
        let user = s.request.as_ref().and_then(|r| r.logged_in());
        let t = self.svc.limits.throttles(c.peer.ip(), user);
        let idle = self.cfg.idle_timeout;
        let (end, stats) = match c.sealed.take() {
            // RFC 1961: the stream to the agent is unwrapped, what comes back wrapped.
            Some(mut sealed) => {
                let relay = crate::kerberos::socks::relay_sealed(
                    &mut c.stream,
                    &mut opened.stream,
                    &mut sealed,
                    idle,
                );
                Box::pin(relay).await
            }
            None => {
                let s = &mut opened.stream;
                crate::tunnel::stream::relay_limited(&mut c.stream, s, idle, t.up, t.down).await
            }
        };
        s.relayed_in += stats.a_to_b;
        s.relayed_out += stats.b_to_a;
        opened.count(stats.a_to_b, stats.b_to_a);
        let m = &self.svc.metrics;
        m.relay("socks", stats.a_to_b, stats.b_to_a);
        m.tunnel_bytes(agent, "socks", stats.a_to_b, stats.b_to_a);
        match end {
            RelayEnd::Done => {}
            RelayEnd::Idle => s.error = Some("idle_timeout"),
            RelayEnd::Error(_) => s.error = Some("connection_terminated"),
        }
    }

    /// CONNECT to the checked addresses, or through the route's parents.
    async fn connect<S>(
        &self,
        c: &mut Client<S>,
        s: &mut Session,
        target: &Target,
        allowed: Allowed,
    ) -> Result<(), SocksError>
    where
        S: AsyncRead + AsyncWrite + PlainTcp + Unpin,
    {
        let (stream, leftover) = Box::pin(self.open(s, target, allowed)).await?;
        s.upstream = Some(stream.peer_addr()?);
        let bound = stream.local_addr()?;
        c.reply(Reply::Succeeded, bound).await?;
        c.stage = Stage::Silent;
        // The destination's first bytes, read by the parent handshake past its answer.
        if let Some(first) = leftover.filter(|b| !b.is_empty()) {
            c.send(&first).await?;
        }
        self.relay(c, s, stream).await;
        Ok(())
    }

    /// The upstream of a CONNECT: the checked addresses, or the route's parents. Returns the
    /// stream and, through parents, the bytes read past their handshake.
    async fn open(
        &self,
        s: &mut Session,
        target: &Target,
        allowed: Allowed,
    ) -> Result<(TcpStream, Option<bytes::BytesMut>), SocksError> {
        Ok(match allowed {
            Allowed::Direct(addrs) => {
                let up = self
                    .svc
                    .connector
                    .connect_addrs(&addrs, &target.to_string())
                    .await?;
                (up.stream, None)
            }
            Allowed::Route { parents, ips } => {
                let policy = s.policy.clone();
                let checked = self
                    .route_direct(&policy, &parents, &target.host, target.port, ips)
                    .await;
                let direct = match &checked {
                    Some(addrs) => Direct::Addrs(addrs),
                    None => Direct::Forbidden("guard"),
                };
                let routed = upstream::connect_route(
                    &parents,
                    &policy,
                    &self.svc.connector,
                    &target.host,
                    target.port,
                    Mode::Tunnel,
                    direct,
                    self.svc.connect_timeout,
                )
                .await?;
                tracing::debug!(target = %target, route = routed.used.name(), "SOCKS CONNECT routed");
                (routed.stream, Some(routed.leftover))
            }
        })
    }

    /// The established stream (CONNECT upstream or BIND peer) joined to the client: spliced
    /// in the kernel between plain sockets, copied through [`relay::relay`] otherwise.
    pub(super) async fn relay<S>(&self, c: &mut Client<S>, s: &mut Session, mut other: TcpStream)
    where
        S: AsyncRead + AsyncWrite + PlainTcp + Unpin,
    {
        // Bytes the client sent ahead of the reply belong to the stream.
        if !c.buf.is_empty() {
            if other.write_all(&c.buf).await.is_err() {
                s.error = Some("connection_terminated");
                return;
            }
            s.relayed_in += c.buf.len() as u64;
        }
        // An idle relay holds no buffer: the handshake's buffer is freed, not just emptied.
        c.buf = bytes::BytesMut::new();
        let idle = self.cfg.idle_timeout;
        if let Some(mut sealed) = c.sealed.take() {
            // RFC 1961: every byte wrapped, so neither splice nor the plain copy.
            let relay =
                crate::kerberos::socks::relay_sealed(&mut c.stream, &mut other, &mut sealed, idle);
            let (end, stats) = Box::pin(relay).await;
            s.relayed_in += stats.a_to_b;
            s.relayed_out += stats.b_to_a;
            self.svc.metrics.relay("socks", stats.a_to_b, stats.b_to_a);
            match end {
                RelayEnd::Done => {}
                RelayEnd::Idle => s.error = Some("idle_timeout"),
                RelayEnd::Error(_) => s.error = Some("connection_terminated"),
            }
            return;
        }
        let user = s.request.as_ref().and_then(|r| r.logged_in());
        let t = self.svc.limits.throttles(c.peer.ip(), user);
        // Splicing moves bytes inside the kernel and cannot pace them: with a bandwidth
        // limit, the copying relay is used.
        let (end, stats) = match (c.stream.plain_tcp(), t.up.is_none() && t.down.is_none()) {
            #[cfg(target_os = "linux")]
            (Some(tcp), true) => crate::splice::relay_tcp(tcp, &other, idle).await,
            // Boxed: the copying relay is larger, and rarer, than the splice one; an idle
            // spliced tunnel's task then holds none of its state.
            _ => {
                Box::pin(relay::relay_limited(
                    &mut c.stream,
                    &mut other,
                    idle,
                    t.up,
                    t.down,
                ))
                .await
            }
        };
        s.relayed_in += stats.a_to_b;
        s.relayed_out += stats.b_to_a;
        self.svc.metrics.relay("socks", stats.a_to_b, stats.b_to_a);
        match end {
            RelayEnd::Done => {}
            RelayEnd::Idle => s.error = Some("idle_timeout"),
            RelayEnd::Error(_) => s.error = Some("connection_terminated"),
        }
    }

    /// One access-log record per session. `status` is the reply code: 0-8 for SOCKS5
    /// (RFC 1928 REP), 90/91 for SOCKS4. A connection that sent nothing is not a session.
    fn record(
        &self,
        peer: SocketAddr,
        s: &Session,
        bytes_in: u64,
        bytes_out: u64,
        version: Option<Version>,
    ) {
        if bytes_in == 0 && s.error != Some("tls_error") {
            return;
        }
        let version = s.request.as_ref().map(|r| r.version).or(version);
        let (v, status) = match version {
            Some(Version::V4) => ("SOCKS4", u16::from(s.reply.socks4())),
            _ => ("SOCKS5", u16::from(s.reply.code())),
        };
        let method = match s.request.as_ref().map(|r| r.command) {
            Some(Command::Connect) => format!("{v}-CONNECT"),
            Some(Command::Bind) => format!("{v}-BIND"),
            Some(Command::UdpAssociate) => format!("{v}-UDP"),
            None => v.to_string(),
        };
        let m = &self.svc.metrics;
        m.request(&self.name, s.reply.metrics_status());
        m.bytes(
            &self.name,
            bytes_in + s.relayed_in,
            bytes_out + s.relayed_out,
        );
        self.svc.access_log.log(AccessRecord {
            time: SystemTime::now(),
            listener: self.name.clone(),
            client: peer,
            user: s
                .request
                .as_ref()
                .and_then(|r| r.user.clone())
                .or_else(|| s.login.clone()),
            rule: s.rule.clone(),
            method,
            target: s
                .request
                .as_ref()
                .map(|r| r.target.to_string())
                .unwrap_or_else(|| "-".into()),
            status,
            bytes_in: bytes_in + s.relayed_in,
            bytes_out: bytes_out + s.relayed_out,
            duration: s.started.elapsed(),
            upstream: s.upstream,
            cache: None,
            version: None,
            referer: None,
            user_agent: None,
            route: None,
            pool: None,
            server: None,
            error: s.error,
        });
    }
}

/// RFC 1928 section 3: the first of the listener's methods (in its order) that the client
/// offers, or `None` (answered with 0xFF).
pub fn choose_method(accepted: &[AuthMethod], offered: &[u8]) -> Option<u8> {
    accepted
        .iter()
        .map(|m| match m {
            AuthMethod::None => METHOD_NONE,
            AuthMethod::Password => METHOD_PASSWORD,
            AuthMethod::Gssapi => METHOD_GSSAPI,
        })
        .find(|code| offered.contains(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_tunnel_task_is_small() {
        /// The size of the future `f` returns, without making one.
        fn returned<A, B, F: std::future::Future>(_: impl FnOnce(A, B) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let size =
            returned(|srv: Arc<SocksServer>, (t, p): (TcpStream, SocketAddr)| srv.serve(t, p));
        // What an idle SOCKS tunnel's task holds: the session and the splice relay, with
        // every other step (handshake, TLS, the copying relay, error replies) boxed apart.
        // It was 7008 bytes (debug build) when the copying relay and the error reply were
        // inline.
        // 1,952 bytes on 2026-12-07; 2,472 when each async fn kept its arguments twice and an
        // agent route's fallback was inline (an idle tunnel 3.7 KiB against 3.25: the task
        // then falls in mimalloc's 3 KiB size class instead of 2.5 KiB).
        assert!(size <= 2048, "SOCKS connection task: {size} bytes");
    }

    #[test]
    fn method_choice_follows_the_listener() {
        use AuthMethod::*;
        assert_eq!(choose_method(&[None], &[0]), Some(0));
        assert_eq!(choose_method(&[None], &[2]), Option::None);
        assert_eq!(choose_method(&[Password], &[0, 2]), Some(2));
        assert_eq!(choose_method(&[Password], &[0]), Option::None);
        assert_eq!(choose_method(&[Password, None], &[0, 2]), Some(2));
        assert_eq!(choose_method(&[None, Password], &[2, 0]), Some(0));
        assert_eq!(choose_method(&[None], &[1, 0x80, 0xFF]), Option::None);
    }
}
