//! The reverse proxy's step on the shared HTTP pipeline: Host -> virtual host -> route ->
//! pool, the policy's client rules and limits, then the shared stages (cache, exchange,
//! access log) with a pool server as the upstream, tried again on another server when that
//! is safe.
//!
//! ```text
//! head + framing checks (shared) -> policy client rules, rate limit -> route table (404)
//!   -> max_body (413) -> [cache step] -> request head (origin-form, Forwarded, edits)
//!   -> pick server (503 when none) -> idle connection or connect -> exchange (shared)
//!      connect failed, or closed/reset before any response byte: next server, when safe
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cached::CacheCtx;
use super::codec::{self, Framing, Headers, RequestHead, Version};
use super::error::ProxyError;
use super::exchange::{upgrade_request, Failure, UpStream, Upstream};
use super::pool::{Pool, PoolKey};
use super::proxy::{strip_hop_by_hop, Client, Exchange, Fetched, HttpProxy, Role, Upward};
use super::target::HttpTarget;
use super::tunnel::Via;
use crate::balance::HttpOutcome;
use crate::config::{ProxyVersion, ReverseListenerConfig};
use crate::connector::Host;
use crate::l4::proxy_protocol;
use crate::metrics::{Counter, Histogram, RouteClassLabels, RouteLabels, Series};
use crate::policy::headers::Rewrite;
use crate::policy::matcher::CidrSet;
use crate::policy::{AccessRequest, Action, Protocol};
use crate::pool::ServerPool;
use crate::reverse::headers::{self, LinkRewrite};
use crate::reverse::route::{self, Lookup, Table};
use crate::server::Services;

/// A reverse-proxy listener's routing state, built when the listener starts.
pub struct Reverse {
    cfg: ReverseListenerConfig,
    table: Table,
    /// Each route's pool, by route index (`None`: the route goes through an agent).
    pools: Vec<Option<Arc<crate::pool::LivePool>>>,
    /// Each route's header edits, by route index.
    edits: Vec<Option<Arc<Rewrite>>>,
    /// Each caching route's cache profile (targeted fields, key rules), by route index.
    profiles: Vec<Option<Arc<crate::cache::Profile>>>,
    trusted: CidrSet,
    /// `accept_proxy_from`: who must (and alone may) send a PROXY protocol header.
    proxy_from: CidrSet,
    hide: Arc<[String]>,
    /// Idle connections to the servers, by server, for reuse.
    idle: Arc<Pool>,
    /// The same for TLS sessions to pools with `[pools.tls]`.
    idle_tls: Arc<Pool<Box<crate::tls::client::TlsStream<tokio::net::TcpStream>>>>,
    /// The same for streams through tunnel agents (servers with `agent = ...`), by agent
    /// and service: each is a connection the agent holds open to its inside service.
    idle_agent: Arc<Pool<Box<crate::tunnel::hub::Opened>>>,
    /// HTTP/2 connections to the servers of `protocol = "h2"` pools, one per server.
    h2: Arc<super::h2_upstream::H2Pool>,
    /// The listener's TLS (the certificates in force: which names a connection may serve).
    tls: Option<Arc<crate::tls::TlsServer>>,
    /// Each route's label and series, by route index.
    routes: Vec<RouteSeries>,
}

/// One route's label and metric series, looked up once.
struct RouteSeries {
    /// Copied per thread shard into each request's record.
    label: crate::workers::LocalName,
    pool: crate::workers::LocalName,
    /// `route_requests` by status class: 1xx to 5xx, then `other`.
    requests: [Series<RouteClassLabels, Counter>; 6],
    upstream: Series<RouteLabels, Histogram>,
    /// `route_request_seconds`: the whole request.
    request: Series<RouteLabels, Histogram>,
    retries: Series<RouteLabels, Counter>,
}

/// Where a reverse request went, for the access log.
#[derive(Clone)]
pub struct Routed {
    pub(super) route: Arc<str>,
    pub(super) pool: Arc<str>,
    pub(super) server: Option<Arc<str>>,
}

impl Reverse {
    pub fn new(
        name: &str,
        cfg: &ReverseListenerConfig,
        svc: &Services,
        tls: Option<Arc<crate::tls::TlsServer>>,
    ) -> anyhow::Result<Reverse> {
        let table = Table::new(cfg);
        let pools = table
            .routes()
            .iter()
            .map(|r| match &r.agent {
                Some(_) => Ok(None),
                None => svc
                    .pools
                    .get(&r.pool)
                    .map(Some)
                    .ok_or_else(|| anyhow::anyhow!("no pool named {:?}", r.pool)),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let edits = table
            .routes()
            .iter()
            .map(|r| {
                let edits = !r.request_headers.is_empty() || !r.response_headers.is_empty();
                edits.then(|| {
                    Arc::new(Rewrite {
                        request: r.request_headers.clone(),
                        response: r.response_headers.clone(),
                        anonymous: false,
                    })
                })
            })
            .collect();
        let targets = svc
            .cache
            .as_ref()
            .map(|c| c.config().targeted_fields.clone())
            .unwrap_or_default();
        let strip_tags = svc
            .cache
            .as_ref()
            .and_then(|c| c.config().tag_header.clone())
            .filter(|_| cfg.strip_cache_tags);
        let profiles = table
            .routes()
            .iter()
            .map(|r| {
                r.cache.then(|| {
                    Arc::new(crate::cache::Profile {
                        targets: targets.clone(),
                        ignore_query: r.cache_key.ignore_query.clone(),
                        key_headers: r.cache_key.headers.clone(),
                        key_cookies: r.cache_key.cookies.clone(),
                        strip_tags: strip_tags.clone(),
                    })
                })
            })
            .collect();
        // The tag field goes on every route, cached or not.
        let mut hide = cfg.hide_headers.clone();
        hide.extend(strip_tags);
        let routes = table
            .labels(cfg)
            .into_iter()
            .zip(table.routes())
            .map(|(label, r)| {
                let labels = RouteLabels {
                    listener: name.to_string(),
                    route: label.clone(),
                };
                RouteSeries {
                    requests: std::array::from_fn(|c| {
                        Series::new(RouteClassLabels {
                            listener: labels.listener.clone(),
                            route: label.clone(),
                            class: if c < 5 {
                                format!("{}xx", c + 1)
                            } else {
                                "other".to_string()
                            },
                        })
                    }),
                    request: Series::new(labels.clone()),
                    retries: Series::new(labels.clone()),
                    upstream: Series::new(labels),
                    label: crate::workers::LocalName::new(label.into()),
                    pool: crate::workers::LocalName::new(r.pool.as_str().into()),
                }
            })
            .collect();
        Ok(Reverse {
            profiles,
            routes,
            trusted: CidrSet::new(&cfg.trusted_proxies),
            proxy_from: CidrSet::new(&cfg.accept_proxy_from),
            hide: hide.into(),
            idle: Pool::new(cfg.idle_per_server, cfg.idle_timeout),
            idle_tls: Pool::new(cfg.idle_per_server, cfg.idle_timeout),
            idle_agent: Pool::new(cfg.idle_per_server, cfg.idle_timeout),
            h2: super::h2_upstream::H2Pool::new(
                cfg.idle_timeout,
                cfg.http.read_timeout,
                cfg.http.max_header_bytes,
                svc.shutdown.clone(),
            ),
            tls,
            cfg: cfg.clone(),
            table,
            pools,
            edits,
        })
    }
}

impl Reverse {
    /// Longest TLS handshake on this listener.
    pub fn handshake_timeout(&self) -> std::time::Duration {
        self.cfg.handshake_timeout
    }

    /// With `accept_proxy_from`: its senders, and the time a connection has to start.
    pub(super) fn proxy_senders(&self) -> Option<(&CidrSet, std::time::Duration)> {
        (!self.cfg.accept_proxy_from.is_empty())
            .then_some((&self.proxy_from, self.cfg.handshake_timeout))
    }

    /// `[listeners.http2]`: HTTP/2 from clients.
    pub fn http2(&self) -> &crate::config::Http2Config {
        &self.cfg.http2
    }
}

/// Where one reverse-proxied request goes ([`Via::Pool`]).
#[derive(Clone)]
pub struct ReverseTo {
    route: usize,
    /// `None`: the route's `agent` and `service`.
    pool: Option<Arc<ServerPool>>,
    /// The origin-form target sent upstream (after the route's prefix rewrite).
    target: String,
    /// The client's Host field, as sent.
    host: Option<Arc<str>>,
    /// `http` or `https`: how the client reached the listener.
    scheme: &'static str,
}

/// The response edits for the server that answered: fields hidden, links to the server's
/// own address turned into the public origin.
pub struct ResponseEdits {
    hide: Arc<[String]>,
    /// None through a tunnel agent: no server address to rewrite.
    links: Option<Links>,
    /// The sticky-session cookie to set (the client lacks it or it names another server).
    set_cookie: Option<String>,
    /// When the final response head arrived (the server's latency ends here).
    head_at: std::sync::OnceLock<Instant>,
    /// A 5xx from the server is answered with Gatehouse's own page instead.
    pub(super) own_error_pages: bool,
}

/// Gatehouse's own page for a server's 5xx (`own_error_pages`): the status and its reason,
/// nothing from the server. No body for HEAD.
pub(super) fn own_error_page(status: u16, head: bool, keep: bool) -> Vec<u8> {
    let body = format!("{status} {}\n", codec::reason(status));
    let mut h = Headers::default();
    h.push("Content-Type", "text/plain; charset=utf-8");
    h.push("Content-Length", body.len().to_string());
    if !keep {
        h.push("Connection", "close");
    }
    let mut out = Vec::with_capacity(128 + body.len());
    codec::write_response_head(&mut out, status, codec::reason(status), &h);
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// What the link rewrite for the server that answered is made of; the rewrite itself is
/// built only for a response that has a link field.
struct Links {
    /// The pool speaks TLS to its servers.
    tls: bool,
    pool: Arc<ServerPool>,
    server: usize,
    /// The address connected to.
    peer: SocketAddr,
    /// The listener's scheme and the client's Host.
    scheme: &'static str,
    host: Option<Arc<str>>,
}

impl Links {
    fn rewrite(&self) -> LinkRewrite {
        let up = if self.tls { "https" } else { "http" };
        LinkRewrite {
            from: vec![
                format!("{up}://{}", self.pool.label(self.server)).to_ascii_lowercase(),
                format!("{up}://{}", self.peer),
            ],
            to: format!(
                "{}://{}",
                self.scheme,
                self.host.as_deref().unwrap_or_default()
            ),
        }
    }
}

impl ResponseEdits {
    pub(super) fn apply(&self, h: &mut Headers) {
        let _ = self.head_at.set(Instant::now());
        headers::hide(h, &self.hide);
        if let Some(links) = self.links.as_ref().filter(|_| headers::has_links(h)) {
            links.rewrite().apply(h);
        }
        if let Some(c) = &self.set_cookie {
            h.push("Set-Cookie", c.as_bytes());
        }
    }
}

/// What a failure before the response head says about the server (passive health).
fn outcome_of(err: &ProxyError) -> Option<HttpOutcome> {
    match err.kind {
        // The client's side of the exchange failed: not the server's fault.
        "http_request_error" => None,
        "connection_read_timeout" => Some(HttpOutcome::Timeout),
        _ => Some(HttpOutcome::Reset),
    }
}

/// Whether a request for `host` came on a TLS connection opened for another name (`sni`)
/// whose certificate does not list `host` (`covers(sni, host)`): it is answered 421
/// Misdirected Request (RFC 9110 section 15.5.20) rather than served under the wrong name.
/// `host` is [`route::host_of`]'s form (lower case, no port).
fn misdirected(sni: Option<&str>, host: Option<&str>, covers: impl Fn(&str, &str) -> bool) -> bool {
    let (Some(sni), Some(host)) = (sni, host) else {
        return false;
    };
    let sni = sni.trim_end_matches('.').to_ascii_lowercase();
    sni != host && !covers(&sni, host)
}

/// The `https` URL a plain request is redirected to: the Host's name (without its port),
/// `port` unless it is 443, the origin-form target as sent.
fn https_location(host: &str, port: u16, target: &str) -> String {
    if port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{port}{target}")
    }
}

/// A reverse route's answer when its agent cannot open the stream: no agent connected 503,
/// the agent's connect timed out or the name did not resolve 504, anything else (no such
/// service, refused, not allowed) 502: the client asked for a site, not a destination.
fn agent_failure(e: crate::tunnel::proto::OpenError) -> (u16, &'static str) {
    use crate::tunnel::proto::OpenError;
    match e {
        OpenError::NetworkUnreachable => (503, "destination_unavailable"),
        OpenError::HostUnreachable => (504, "connection_timeout"),
        other => (502, other.as_str()),
    }
}

/// `scheme://authority/target`, without the formatting machinery (twice per request).
fn absolute_url(scheme: &str, authority: &str, target: &str) -> String {
    let mut url = String::with_capacity(scheme.len() + 3 + authority.len() + target.len());
    url.push_str(scheme);
    url.push_str("://");
    url.push_str(authority);
    url.push_str(target);
    url
}

/// Methods that may be sent twice (RFC 9110 section 9.2.2).
fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// The idle-pool key of streams to `service` through `agent` (a route's `agent`, or a pool
/// server's: both keep their streams in `Reverse::idle_agent`); with `client` (the streams
/// began with a PROXY header for it), that client's own.
fn agent_service_key(agent: &str, service: &str, client: Option<SocketAddr>) -> Host {
    match client {
        Some(c) => Host::Name(format!("{agent}/{service}~{c}")),
        None => Host::Name(format!("{agent}/{service}")),
    }
}

/// Writes a PROXY header (`v`) first on a new stream through an agent, as
/// [`HttpProxy::connect_server`] does on a connection: the client's address, and the address
/// it connected to (without one, the unspecified address of the client's family). The agent
/// passes it on to the service as it is. Failing is like a failed connect.
async fn send_proxy_header(
    o: &mut crate::tunnel::hub::Opened,
    v: ProxyVersion,
    client: SocketAddr,
    local: Option<SocketAddr>,
    label: &str,
) -> Result<(), ProxyError> {
    let dst = local.unwrap_or_else(|| match client {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    });
    let header = proxy_protocol::encode(v, client, dst);
    o.stream.write_all(&header).await.map_err(|e| {
        let msg = format!("{label}: PROXY header: {e}");
        ProxyError::new(502, "connection_terminated", msg)
    })
}

/// A request that may go to another connection after the first ended before answering:
/// an idempotent method and no body (nothing of the client's was consumed).
fn resendable(head: &RequestHead, framing: Framing) -> bool {
    idempotent(&head.method) && framing == Framing::None
}

impl HttpProxy {
    fn reverse_role(&self) -> Option<&Reverse> {
        match &self.role {
            Role::Reverse(r) => Some(r),
            Role::Forward => None,
        }
    }

    /// A reverse listener's step: where the request goes, then the shared stages.
    pub(super) async fn reverse(
        &self,
        rv: &Reverse,
        client: &mut Client,
        mut head: RequestHead,
        ex: &mut Exchange,
    ) -> bool {
        let (framing, close_on_error) = match self.request_checks(client, &head, ex).await {
            Ok(c) => c,
            Err(keep) => return keep,
        };
        // Origin-form; an absolute-form target (RFC 9112 section 3.2.2) gives its path, and
        // its authority wins over Host. The head's target is taken, not copied: it is
        // replaced by the public URL below before anything reads it again.
        let (host, target) = if head.target.starts_with('/') {
            (
                head.headers.get_str("host").map(str::to_string),
                std::mem::take(&mut head.target),
            )
        } else if let Ok(t) = super::target::parse_absolute(&head.target) {
            (Some(t.authority), t.path)
        } else {
            let err = ProxyError::bad_request("request target is not a path");
            self.send_error(client, &err, close_on_error, ex).await;
            return !close_on_error;
        };
        let host_name = host.as_deref().and_then(route::host_of);
        let scheme = client.stream.scheme();
        ex.target = absolute_url(scheme, host.as_deref().unwrap_or("-"), &target);
        let covers = |sni: &str, host: &str| rv.tls.as_ref().is_some_and(|t| t.covers(sni, host));
        if misdirected(client.stream.sni(), host_name.as_deref(), covers) {
            let err = ProxyError::new(
                421,
                "destination_not_found",
                "this connection is for another host name (TLS SNI)",
            );
            self.send_error(client, &err, close_on_error, ex).await;
            return !close_on_error;
        }
        if rv.cfg.redirect_https && scheme == "http" {
            return match &host_name {
                Some(h) => {
                    let to = https_location(h, rv.cfg.https_port, &target);
                    self.send_redirect(client, &to, close_on_error, ex).await;
                    !close_on_error
                }
                None => {
                    let err = ProxyError::bad_request("no Host to redirect to");
                    self.send_error(client, &err, close_on_error, ex).await;
                    !close_on_error
                }
            };
        }

        // The policy's client rules (listener, client address, method, time) and the
        // per-client request rate. Destinations are the pools: rules about them do not match.
        let ip = client.peer.ip().to_canonical();
        let req = AccessRequest {
            listener: &self.name,
            client: ip,
            user: None,
            dest_host: None,
            dest_port: client_port(client),
            protocol: Protocol::Http,
            method: Some(&head.method),
            at: SystemTime::now(),
        };
        // Borrowed from the policy, not copied: only the rule's name goes on (to the log).
        let v = client.policy.client_verdict(&req);
        let deny = v.action == Action::Deny;
        let rule = ex.rule.insert(v.rule.clone());
        if deny {
            self.svc.metrics.denial(rule);
            let err = ProxyError::denied("refused by the policy");
            self.send_error(client, &err, close_on_error, ex).await;
            return !close_on_error;
        }
        if let Err(e) = self.svc.limits.request(ip, None) {
            return self
                .send_429(client, &head, &e.to_string(), 1, close_on_error, ex)
                .await;
        }

        let i = match rv
            .table
            .find(host_name.as_deref(), &head.method, &target, &head.headers)
        {
            Lookup::Route(i) => i,
            Lookup::NoRoute => {
                let err = ProxyError::new(404, "destination_not_found", "no route for this path");
                self.send_error(client, &err, close_on_error, ex).await;
                return !close_on_error;
            }
            Lookup::UnknownHost => {
                let err = ProxyError::new(404, "destination_not_found", "unknown host");
                self.send_error(client, &err, close_on_error, ex).await;
                return !close_on_error;
            }
        };
        let route = rv.table.route(i);
        if let (Some(max), Some(n)) = (rv.cfg.max_body, codec::request_content_length(&head)) {
            if n > max {
                let err = ProxyError::new(
                    413,
                    "http_request_error",
                    format!("request body of {n} bytes is over the limit of {max}"),
                );
                self.send_error(client, &err, true, ex).await;
                return false;
            }
        }
        ex.rewrite = rv.edits[i].clone();
        // The listener's and the pool's first-byte timeouts: the shorter wins.
        // The pool in force now (a reload may have replaced it); this request keeps it.
        let pool = rv.pools[i].as_ref().map(|p| p.current());
        let pool_first_byte = pool.as_ref().map(|p| p.cfg.first_byte_timeout);
        ex.first_byte_timeout = Some(
            rv.cfg
                .first_byte_timeout
                .min(pool_first_byte.unwrap_or(rv.cfg.first_byte_timeout)),
        );
        ex.max_body = rv.cfg.max_body;
        let to = ReverseTo {
            route: i,
            pool,
            target: route::rewrite_target(route, &target),
            host: host.as_deref().map(Arc::from),
            scheme,
        };
        // The cache keys on the public URL: host and path as the client asked.
        let authority = host.unwrap_or_default();
        head.target = absolute_url(scheme, &authority, &target);
        let cache_target = HttpTarget {
            host: Host::Name(host_name.unwrap_or_default()),
            port: client.local.map_or(80, |a| a.port()),
            authority,
            path: target,
        };
        let via = Via::Pool(Box::new(to));
        let up = Upward {
            target: &cache_target,
            via: &via,
            framing,
            close_on_error,
            max_forwards: None,
            cache: rv.profiles[i].clone(),
        };
        let rs = &rv.routes[i];
        ex.routed = Some(Routed {
            route: rs.label.here(),
            pool: rs.pool.here(),
            server: None,
        });
        let keep = self.deliver(client, head, &up, ex).await;
        let class = match ex.status {
            100..=599 => usize::from(ex.status / 100 - 1),
            _ => 5,
        };
        rs.requests[class]
            .get(&self.svc.metrics.route_requests)
            .inc();
        rs.request
            .get(&self.svc.metrics.route_request_seconds)
            .observe(ex.started.elapsed().as_secs_f64());
        keep
    }

    /// The request head a pool server gets: origin-form with the route's target, the
    /// client's Host (or the route's `host`), hop-by-hop fields removed, who the client is,
    /// the route's request edits.
    pub(super) fn reverse_request(
        &self,
        head: &RequestHead,
        to: &ReverseTo,
        peer: SocketAddr,
        rewrite: Option<&Rewrite>,
    ) -> Vec<u8> {
        let Some(rv) = self.reverse_role() else {
            return Vec::new();
        };
        let route = rv.table.route(to.route);
        // Room for the fields added below (Forwarded, X-Forwarded-*, Via, ...) without
        // regrowing the list.
        let mut h = Headers(Vec::with_capacity(head.headers.0.len() + 8));
        h.0.extend(head.headers.0.iter().cloned());
        let wants_trailers = h.has_token("te", "trailers");
        let upgrade = upgrade_request(head, &self.cfg.upgrade_protocols);
        strip_hop_by_hop(&mut h);
        if let Some(protocols) = upgrade {
            h.push("Upgrade", protocols);
            h.push("Connection", "upgrade");
        }
        h.remove("proxy-authorization");
        if let Some(host) = &route.host {
            h.set("Host", host.as_bytes());
        }
        if let Some(n) = codec::request_content_length(head) {
            h.set("Content-Length", n.to_string());
        }
        if wants_trailers {
            h.push("TE", "trailers");
            h.push("Connection", "TE");
        }
        if head.version == Version::Http10 {
            h.remove("expect");
        }
        if let Some(via) = &self.cfg.via {
            let v = if head.version == Version::Http10 {
                "1.0"
            } else {
                "1.1"
            };
            h.push("Via", format!("{v} {via}"));
        }
        headers::forwarded(
            &mut h,
            rv.cfg.forwarded,
            rv.trusted.contains(peer.ip()),
            peer.ip(),
            to.scheme,
            to.host.as_deref(),
        );
        if let Some(r) = rewrite {
            r.apply_request(&mut h, &Host::Name(String::new()));
        }
        let mut out = Vec::with_capacity(512);
        codec::write_request_head(&mut out, &head.method, &to.target, &h);
        out
    }

    /// Sends the request to a server of the route's pool and relays the exchange. A failed
    /// connect goes to another server (nothing was sent); a connection closed or reset
    /// before any response byte goes to another server only for an idempotent request whose
    /// body (if any) was kept in the replay buffer. Never once response bytes reached the
    /// client.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn fetch_pool(
        &self,
        client: &mut Client,
        head: &RequestHead,
        to: &ReverseTo,
        framing: Framing,
        req_head: &[u8],
        mut cache: Option<&mut CacheCtx>,
        ex: &mut Exchange,
    ) -> Fetched {
        let Some(rv) = self.reverse_role() else {
            return Fetched::Failed(ProxyError::new(500, "proxy_internal_error", "no routes"));
        };
        let route = rv.table.route(to.route);
        let Some(pool) = &to.pool else {
            return self
                .fetch_agent(rv, client, head, to, framing, req_head, cache, ex)
                .await;
        };
        // The replay buffer: a body small enough is read first and sent with the head, so
        // the whole request can go to another server. Not with `Expect: 100-continue`: that
        // client waits for an answer before it sends the body.
        let mut wire = std::borrow::Cow::Borrowed(req_head);
        let mut framing = framing;
        if let Framing::Length(n) = framing {
            if idempotent(&head.method)
                && client.unread_body == Some(framing)
                && n <= route.retry_body_bytes
                && !head.headers.has_token("expect", "100-continue")
            {
                match self.read_body(client, n).await {
                    Ok(body) => {
                        let mut w = req_head.to_vec();
                        w.extend_from_slice(&body);
                        ex.bytes_in += n;
                        wire = std::borrow::Cow::Owned(w);
                        framing = Framing::None;
                        client.unread_body = None;
                    }
                    Err(err) => return Fetched::Failed(err),
                }
            }
        }
        let resend = resendable(head, framing);
        let ip = client.peer.ip();
        let (ip_port, local) = (client.peer, client.local);
        let tries = 1 + rv.cfg.retries;
        let idle_max = rv.cfg.idle_timeout.min(pool.cfg.idle_timeout);
        let secure = to.scheme == "https";
        let use_tls = pool.has_tls();
        // An `h2` pool takes a WebSocket as an extended CONNECT stream when the server
        // announced it (RFC 8441), else over HTTP/1.1 on a connection of its own, as any
        // other upgrade.
        let upgrade = upgrade_request(head, &self.cfg.upgrade_protocols);
        let h2 = pool.cfg.h2 && upgrade.is_none();
        let ws = pool.cfg.h2
            && pool.cfg.websocket != crate::config::WebsocketMode::H1
            && upgrade.is_some_and(|u| u.eq_ignore_ascii_case(b"websocket"))
            && head.headers.get("sec-websocket-key").is_some();
        // `websocket = "h2"`: a server without extended CONNECT gets no WebSocket at all.
        let ws_only_h2 = ws && pool.cfg.websocket == crate::config::WebsocketMode::H2;
        let no_extended_connect = |i: usize| {
            let msg = format!(
                "{} did not announce WebSockets over HTTP/2 (RFC 8441), and the pool has websocket = \"h2\"",
                pool.label(i)
            );
            ProxyError::new(502, "http_protocol_error", msg)
        };
        let mut tried: Vec<usize> = Vec::new();
        let mut attempts = 0;
        // Stale idle connections are retried on a fresh one without counting as a try.
        let mut stale = 0;
        let mut last: Option<ProxyError> = None;
        // The server the previous try failed at (a retry follows).
        let mut failed_at: Option<usize> = None;
        // One clock reading for the steps of a try (budget, pick, idle pool, the latency's
        // start on a kept connection); read again for each further try.
        let mut now = Instant::now();
        pool.request_started(now);
        // The next try replaces a stale idle connection: not a retry, no budget spent.
        let mut free_try = false;
        while attempts < tries {
            if attempts > 0 {
                now = Instant::now();
            }
            if attempts > 0 && !std::mem::take(&mut free_try) {
                // Each retry spends the pool's retry budget.
                if !pool.try_retry() {
                    break;
                }
                if let Some(f) = failed_at.take() {
                    pool.retried(f);
                    rv.routes[to.route]
                        .retries
                        .get(&self.svc.metrics.route_retries)
                        .inc();
                }
            }
            attempts += 1;
            let Some(picked) =
                pool.pick_request(ip, &head.headers, &to.target, &tried, secure, now)
            else {
                break;
            };
            let i = picked.server;
            let server = pool.server(i);
            // TLS sessions are kept apart, per pool (each pool has its own TLS settings).
            // A connection that began with a PROXY header speaks for this client only.
            let key = PoolKey {
                host: match (&server.agent, use_tls, pool.cfg.proxy_protocol) {
                    // Through an agent (its own idle pool): the agent and its service; a
                    // stream that began with a PROXY header speaks for this client only.
                    (Some(via), _, pp) => {
                        agent_service_key(&via.agent, &via.service, pp.map(|_| client.peer))
                    }
                    (None, _, Some(_)) => Host::Name(format!(
                        "{}~{}/{}/{}",
                        pool.cfg.name,
                        pool.tls_epoch(),
                        server.host,
                        client.peer
                    )),
                    // The epoch changes when a reload changes `[pools.tls]`.
                    (None, true, None) => Host::Name(format!(
                        "{}~{}/{}",
                        pool.cfg.name,
                        pool.tls_epoch(),
                        server.host
                    )),
                    (None, false, None) => server.host.clone(),
                },
                port: server.port,
            };
            // `protocol = "h2"`: a stream on the server's connection, or the right to open it.
            let mut h2_open = None;
            let h2_opts = super::h2_upstream::StreamOpts {
                scheme: if use_tls { "https" } else { "http" },
                wait: ex.first_byte_timeout.unwrap_or(self.cfg.read_timeout),
            };
            // A WebSocket to an `h2` pool: over HTTP/2 only if the server takes it.
            let mut h2 = h2;
            let mut ws_h2 = None;
            if ws && server.agent.is_none() {
                match rv.h2.websocket(&key, h2_opts).await {
                    super::h2_upstream::Websocket::Stream(s, p) => ws_h2 = Some((s, p)),
                    super::h2_upstream::Websocket::Http1 if ws_only_h2 => {
                        // Not the server's fault: another server of the pool may take it.
                        pool.finished(i);
                        tried.push(i);
                        last = Some(no_extended_connect(i));
                        continue;
                    }
                    super::h2_upstream::Websocket::Http1 => {}
                    super::h2_upstream::Websocket::Open(opening) => {
                        h2 = true;
                        h2_open = Some(opening);
                    }
                }
            }
            let idle = if server.agent.is_some() {
                rv.idle_agent
                    .take_within(&key, idle_max, now)
                    .map(|(s, p)| (UpStream::Agent(s), p))
            } else if ws_h2.is_some() {
                ws_h2
            } else if h2_open.is_some() {
                None
            } else if h2 {
                match rv.h2.stream(&key, h2_opts).await {
                    Ok(s) => Some(s),
                    Err(opening) => {
                        h2_open = Some(opening);
                        None
                    }
                }
            } else if use_tls {
                rv.idle_tls
                    .take_within(&key, idle_max, now)
                    .map(|(s, p)| (UpStream::Tls(s), p))
            } else {
                rv.idle
                    .take_within(&key, idle_max, now)
                    .map(|(s, p)| (UpStream::Tcp(s), p))
            };
            let (stream, peer, reused) = match idle {
                Some((s, p)) => (s, p, true),
                None if server.agent.is_some() => {
                    match self.open_agent_server(pool, i, ip_port, local).await {
                        Ok(s) => (s, SocketAddr::from(([0, 0, 0, 0], 0)), false),
                        Err(e) => {
                            // Like a failed connect: nothing was sent; next server.
                            pool.finished(i);
                            pool.failure(i, &e.detail);
                            tried.push(i);
                            failed_at = Some(i);
                            last = Some(e);
                            continue;
                        }
                    }
                }
                None => match self.connect_server(pool, i, ip_port, local).await {
                    // The connector set TCP_NODELAY and knows the address it reached.
                    Ok(c) => {
                        let (s, p) = (c.stream, c.peer);
                        if !use_tls {
                            (UpStream::Tcp(s), p, false)
                        } else {
                            match pool.secure_as(i, s, pool.cfg.h2 && !h2).await {
                                Ok(t) => (UpStream::Tls(t), p, false),
                                Err(e) => {
                                    // Like a failed connect: nothing was sent; next server.
                                    tracing::debug!(pool = %pool.cfg.name, server = %pool.label(i), "TLS handshake failed: {e}");
                                    pool.finished(i);
                                    pool.failure(i, &format!("TLS handshake failed: {e}"));
                                    tried.push(i);
                                    failed_at = Some(i);
                                    let kind = if e.to_string().contains("certificate") {
                                        "tls_certificate_error"
                                    } else {
                                        "tls_protocol_error"
                                    };
                                    last = Some(ProxyError::new(
                                        502,
                                        kind,
                                        format!("TLS to {}: {e}", pool.label(i)),
                                    ));
                                    continue;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(pool = %pool.cfg.name, server = %pool.label(i), "connect failed: {e}");
                        pool.finished(i);
                        pool.failure(i, &format!("connect failed: {e}"));
                        tried.push(i);
                        failed_at = Some(i);
                        last = Some(ProxyError::from(e));
                        continue;
                    }
                },
            };
            let (stream, reused) = match h2_open.take() {
                None => (stream, reused),
                Some(opening) => {
                    let limit = pool.cfg.connect_timeout;
                    match rv
                        .h2
                        .open(
                            opening,
                            key.clone(),
                            stream,
                            (peer, (pool.clone(), i)),
                            h2_opts,
                            limit,
                            ws,
                        )
                        .await
                    {
                        Ok(Some(s)) => (s, false),
                        Ok(None) if ws_only_h2 => {
                            // No extended CONNECT on the server's new connection (kept for
                            // other requests), and no HTTP/1.1 instead.
                            pool.finished(i);
                            tried.push(i);
                            last = Some(no_extended_connect(i));
                            continue;
                        }
                        Ok(None) => {
                            // No extended CONNECT on the server's new connection (kept for
                            // other requests): the WebSocket goes over HTTP/1.1.
                            match self.connect_http1(pool, i, ip_port, local, use_tls).await {
                                Ok((s, _)) => (s, false),
                                Err(e) => {
                                    pool.finished(i);
                                    tried.push(i);
                                    failed_at = Some(i);
                                    last = Some(e);
                                    continue;
                                }
                            }
                        }
                        Err(e) => {
                            // Like a failed connect: no request was sent; next server.
                            pool.finished(i);
                            pool.failure(i, &e);
                            tried.push(i);
                            failed_at = Some(i);
                            let msg = format!("HTTP/2 to {}: {e}", pool.label(i));
                            last = Some(ProxyError::new(502, "http_protocol_error", msg));
                            continue;
                        }
                    }
                }
            };
            ex.upstream = Some(peer);
            if let Some(r) = ex.routed.as_mut() {
                r.server = Some(pool.shared_label(i));
            }
            let through_agent = server.agent.is_some();
            ex.reverse = Some(Box::new(ResponseEdits {
                hide: rv.hide.clone(),
                // Through an agent: no server address to rewrite.
                links: (!through_agent).then(|| Links {
                    tls: use_tls,
                    pool: pool.clone(),
                    server: i,
                    peer,
                    scheme: to.scheme,
                    host: to.host.clone(),
                }),
                set_cookie: picked.set_cookie,
                head_at: std::sync::OnceLock::new(),
                own_error_pages: rv.cfg.own_error_pages,
            }));
            let mut up = Upstream {
                stream,
                buf: BytesMut::new(),
            };
            if let Some(c) = cache.as_deref_mut() {
                c.request_time = SystemTime::now();
            }
            let (in0, out0) = (ex.bytes_in, ex.bytes_out);
            // A kept connection was taken just now; a new one took its connect time since.
            let sent_at = if reused { now } else { Instant::now() };
            let r = self
                .exchange(
                    client,
                    &mut up,
                    head,
                    framing,
                    &wire,
                    cache.as_deref_mut(),
                    ex,
                )
                .await;
            // Bytes to and from this server, for its byte counters.
            pool.bytes(i, ex.bytes_in - in0, ex.bytes_out - out0);
            if let (Some(via), UpStream::Agent(o)) = (&server.agent, &up.stream) {
                let to_agent = wire.len() as u64 + ex.bytes_in - in0;
                let from_agent = ex.bytes_out - out0;
                o.count(to_agent, from_agent);
                let m = &self.svc.metrics;
                m.tunnel_bytes(&via.agent, &via.service, to_agent, from_agent);
            }
            // A response head came: its status and latency, and passive health from it.
            // Returns when the head came (for the steps after it).
            let answered = |ex: &Exchange| -> Instant {
                if ex.status == 0 {
                    // The cache answered from the server's head (a revalidation): it did
                    // answer, with a status not recorded here.
                    let now = Instant::now();
                    pool.success_at(i, now);
                    return now;
                }
                let at = ex
                    .reverse
                    .as_ref()
                    .and_then(|r| r.head_at.get().copied())
                    .unwrap_or_else(Instant::now);
                let took = at.saturating_duration_since(sent_at);
                pool.answered_at(i, ex.status, took, at);
                rv.routes[to.route]
                    .upstream
                    .get(&self.svc.metrics.route_upstream_seconds)
                    .observe(took.as_secs_f64());
                at
            };
            match r {
                Ok(done) if done.upgraded => {
                    answered(ex);
                    let keep = self.tunnel_upgraded(client, up, ex).await;
                    pool.finished(i);
                    return Fetched::Done(keep);
                }
                Ok(done) => {
                    // Ends the request's count in flight (no latency sample: the clock
                    // reading is not used).
                    pool.finished_at(i, answered(ex));
                    if done.upstream_reusable && up.buf.is_empty() {
                        match up.stream {
                            UpStream::Tcp(s) => rv.idle.put(key, s, peer),
                            UpStream::Tls(s) => rv.idle_tls.put(key, s, peer),
                            UpStream::Agent(s) => rv.idle_agent.put(key, s, peer),
                            UpStream::Pipe(_) => {}
                        }
                    }
                    return Fetched::Done(done.client_keep);
                }
                Err(Failure::Stale) => {
                    pool.finished(i);
                    if reused && stale < 4 {
                        // The server had closed an idle connection: not its fault.
                        stale += 1;
                        attempts -= 1;
                        free_try = true;
                    } else {
                        pool.http_result(i, HttpOutcome::Reset);
                        tried.push(i);
                        failed_at = Some(i);
                    }
                    last = Some(ProxyError::new(
                        502,
                        "connection_terminated",
                        "upstream closed the connection before responding",
                    ));
                    if !resend {
                        break;
                    }
                }
                Err(Failure::BeforeResponse(err)) => {
                    pool.finished(i);
                    if let Some(o) = outcome_of(&err) {
                        pool.http_result(i, o);
                    }
                    return Fetched::Failed(err);
                }
                Err(Failure::Abort(kind)) => {
                    if ex
                        .reverse
                        .as_ref()
                        .is_some_and(|r| r.head_at.get().is_some())
                    {
                        answered(ex);
                    }
                    pool.finished(i);
                    ex.error = Some(kind);
                    return Fetched::Aborted;
                }
            }
        }
        Fetched::Failed(last.unwrap_or_else(|| {
            ProxyError::new(
                503,
                "destination_unavailable",
                format!("pool {:?}: no server available", pool.cfg.name),
            )
        }))
    }

    /// A route's request through its agent, to the service the agent publishes: one stream
    /// per request (not kept for the next). A failed open goes to another agent of the
    /// name (a pool), up to `retries` times; once the stream is open it is not retried. No
    /// agent connected: 503.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_agent(
        &self,
        rv: &Reverse,
        client: &mut Client,
        head: &RequestHead,
        to: &ReverseTo,
        framing: Framing,
        req_head: &[u8],
        cache: Option<&mut CacheCtx>,
        ex: &mut Exchange,
    ) -> Fetched {
        let Some(via) = rv.table.route(to.route).agent.as_ref() else {
            return Fetched::Failed(ProxyError::new(500, "proxy_internal_error", "no pool"));
        };
        let what = crate::tunnel::proto::Open::Service(via.service.clone());
        // A failed open sent nothing: another agent of a pool may take it (`retries`).
        let tries = 1 + rv.cfg.retries as usize;
        // A stream kept from an earlier exchange (the agent still holds its connection to
        // the service) first; a new one when none is idle.
        let key = PoolKey {
            // A stream that began with a PROXY header speaks for this client only.
            host: agent_service_key(
                &via.agent,
                &via.service,
                via.send_proxy.map(|_| client.peer),
            ),
            port: 0,
        };
        let (opened, reused) =
            match rv
                .idle_agent
                .take_within(&key, rv.cfg.idle_timeout, Instant::now())
            {
                Some((o, _)) => (o, true),
                None => match self
                    .open_route_agent(via, &what, tries, (client.peer, client.local))
                    .await
                {
                    Ok(o) => (o, false),
                    Err(e) => return Fetched::Failed(e),
                },
            };
        let label: Arc<str> = Arc::from(format!("{}/{}", via.agent, via.service));
        ex.upstream = Some(SocketAddr::from(([0, 0, 0, 0], 0)));
        if let Some(r) = ex.routed.as_mut() {
            r.server = Some(label);
        }
        ex.reverse = Some(Box::new(ResponseEdits {
            hide: rv.hide.clone(),
            links: None,
            set_cookie: None,
            head_at: std::sync::OnceLock::new(),
            own_error_pages: rv.cfg.own_error_pages,
        }));
        let mut cache = cache;
        if let Some(c) = cache.as_deref_mut() {
            c.request_time = SystemTime::now();
        }
        let mut up = Upstream {
            stream: UpStream::Agent(opened),
            buf: BytesMut::new(),
        };
        let (in0, out0) = (ex.bytes_in, ex.bytes_out);
        let mut sent_at = Instant::now();
        let mut r = self
            .exchange(
                client,
                &mut up,
                head,
                framing,
                req_head,
                cache.as_deref_mut(),
                ex,
            )
            .await;
        // A kept stream the service had closed meanwhile (it ended before a byte of the
        // answer): the request goes again on a new stream when it may (idempotent, no body),
        // as with a pool's idle connection.
        if reused && matches!(r, Err(Failure::Stale)) && resendable(head, framing) {
            let o = match self
                .open_route_agent(via, &what, tries, (client.peer, client.local))
                .await
            {
                Ok(o) => o,
                Err(e) => return Fetched::Failed(e),
            };
            up = Upstream {
                stream: UpStream::Agent(o),
                buf: BytesMut::new(),
            };
            sent_at = Instant::now();
            r = self
                .exchange(client, &mut up, head, framing, req_head, cache, ex)
                .await;
        }
        if let Some(at) = ex.reverse.as_ref().and_then(|r| r.head_at.get().copied()) {
            rv.routes[to.route]
                .upstream
                .get(&self.svc.metrics.route_upstream_seconds)
                .observe(at.saturating_duration_since(sent_at).as_secs_f64());
        }
        let count = |ex: &Exchange, up: &Upstream| {
            // The request head went to the agent too (the client's count has it already).
            let to_agent = req_head.len() as u64 + ex.bytes_in - in0;
            let from_agent = ex.bytes_out - out0;
            if let UpStream::Agent(o) = &up.stream {
                o.count(to_agent, from_agent);
            }
            let m = &self.svc.metrics;
            m.tunnel_bytes(&via.agent, &via.service, to_agent, from_agent);
        };
        match r {
            Ok(done) if done.upgraded => {
                let keep = self.tunnel_upgraded(client, up, ex).await;
                let to_agent = req_head.len() as u64 + ex.bytes_in - in0;
                let from_agent = ex.bytes_out - out0;
                let m = &self.svc.metrics;
                m.tunnel_bytes(&via.agent, &via.service, to_agent, from_agent);
                Fetched::Done(keep)
            }
            Ok(done) => {
                count(ex, &up);
                if done.upstream_reusable && up.buf.is_empty() {
                    if let UpStream::Agent(o) = up.stream {
                        rv.idle_agent
                            .put(key, o, SocketAddr::from(([0, 0, 0, 0], 0)));
                    }
                }
                Fetched::Done(done.client_keep)
            }
            Err(Failure::Stale) => {
                count(ex, &up);
                Fetched::Failed(ProxyError::new(
                    502,
                    "connection_terminated",
                    "the service closed the connection before responding",
                ))
            }
            Err(Failure::BeforeResponse(err)) => {
                count(ex, &up);
                Fetched::Failed(err)
            }
            Err(Failure::Abort(kind)) => {
                count(ex, &up);
                ex.error = Some(kind);
                Fetched::Aborted
            }
        }
    }

    /// A new stream to a route's agent service (`tries` opens, each on an agent of the name
    /// not tried yet); failing, the error the client gets.
    async fn open_route_agent(
        &self,
        via: &crate::config::RouteAgent,
        what: &crate::tunnel::proto::Open,
        tries: usize,
        client: (SocketAddr, Option<SocketAddr>),
    ) -> Result<Box<crate::tunnel::hub::Opened>, ProxyError> {
        let limit = self.svc.connect_timeout;
        match self
            .svc
            .agents
            .open_retrying(&via.agent, what, limit, tries)
            .await
        {
            Ok(mut o) => {
                if let Some(v) = via.send_proxy {
                    let label = format!("{}/{}", via.agent, via.service);
                    send_proxy_header(&mut o, v, client.0, client.1, &label).await?;
                }
                Ok(Box::new(o))
            }
            Err(e) => {
                tracing::debug!(agent = %via.agent, service = %via.service, "reverse: {e}");
                let (status, kind) = agent_failure(e);
                let msg = format!("agent {:?}, service {:?}: {e}", via.agent, via.service);
                Err(ProxyError::new(status, kind, msg))
            }
        }
    }

    /// A stream to pool server `i`, a service a tunnel agent publishes, within the pool's
    /// `connect_timeout`. Failing is like a failed connect (nothing was sent). With the
    /// pool's `proxy_protocol`, a PROXY header goes first (see [`send_proxy_header`]).
    async fn open_agent_server(
        &self,
        pool: &ServerPool,
        i: usize,
        client: SocketAddr,
        local: Option<SocketAddr>,
    ) -> Result<UpStream, ProxyError> {
        let Some(via) = pool.server(i).agent.as_ref() else {
            return Err(ProxyError::new(500, "proxy_internal_error", "not an agent"));
        };
        let what = crate::tunnel::proto::Open::Service(via.service.clone());
        let limit = pool.cfg.connect_timeout;
        match self.svc.agents.open(&via.agent, &what, limit).await {
            Ok(mut o) => {
                if let Some(v) = pool.cfg.proxy_protocol {
                    send_proxy_header(&mut o, v, client, local, pool.label(i)).await?;
                }
                Ok(UpStream::Agent(Box::new(o)))
            }
            Err(e) => {
                tracing::debug!(pool = %pool.cfg.name, server = %pool.label(i), "reverse: {e}");
                let (status, kind) = agent_failure(e);
                let msg = format!("{}: {e}", pool.label(i));
                Err(ProxyError::new(status, kind, msg))
            }
        }
    }

    /// An HTTP/1.1 connection to server `i` (over `[pools.tls]` with ALPN `http/1.1`):
    /// a WebSocket to an `h2` pool whose server turned out not to take extended CONNECT.
    /// A failure is reported to the pool's passive health.
    async fn connect_http1(
        &self,
        pool: &ServerPool,
        i: usize,
        client: SocketAddr,
        local: Option<SocketAddr>,
        tls: bool,
    ) -> Result<(UpStream, SocketAddr), ProxyError> {
        let c = match self.connect_server(pool, i, client, local).await {
            Ok(c) => c,
            Err(e) => {
                pool.failure(i, &format!("connect failed: {e}"));
                return Err(ProxyError::from(e));
            }
        };
        if !tls {
            return Ok((UpStream::Tcp(c.stream), c.peer));
        }
        match pool.secure_as(i, c.stream, true).await {
            Ok(t) => Ok((UpStream::Tls(t), c.peer)),
            Err(e) => {
                pool.failure(i, &format!("TLS handshake failed: {e}"));
                let kind = if e.to_string().contains("certificate") {
                    "tls_certificate_error"
                } else {
                    "tls_protocol_error"
                };
                let msg = format!("TLS to {}: {e}", pool.label(i));
                Err(ProxyError::new(502, kind, msg))
            }
        }
    }

    /// A new connection to server `i`, with the pool's PROXY header (`proxy_protocol`) sent
    /// first, in the clear: the client's address, and the address it connected to.
    async fn connect_server(
        &self,
        pool: &ServerPool,
        i: usize,
        client: SocketAddr,
        local: Option<SocketAddr>,
    ) -> Result<crate::connector::Connected, crate::connector::ConnectError> {
        let mut c = pool.connect_one(i, &self.svc.connector).await?;
        if let Some(v) = pool.cfg.proxy_protocol {
            let dst = local.unwrap_or(c.peer);
            let header = proxy_protocol::encode(v, client, dst);
            c.stream.write_all(&header).await.map_err(|source| {
                crate::connector::ConnectError::Io {
                    addr: c.peer,
                    source,
                }
            })?;
        }
        Ok(c)
    }

    /// `308 Permanent Redirect` to `location` (method and body kept by the client).
    async fn send_redirect(
        &self,
        client: &mut Client,
        location: &str,
        close: bool,
        ex: &mut Exchange,
    ) {
        let mut h = Headers::default();
        h.push("Location", location.as_bytes());
        h.push("Content-Length", "0");
        if close {
            h.push("Connection", "close");
        }
        let mut out = Vec::with_capacity(256);
        codec::write_response_head(&mut out, 308, codec::reason(308), &h);
        let _ = super::body::write_all(&mut client.stream, &out, self.cfg.read_timeout).await;
        ex.status = 308;
        ex.bytes_out += out.len() as u64;
    }

    /// Reads a whole request body of `n` bytes into memory (the replay buffer).
    async fn read_body(&self, client: &mut Client, n: u64) -> Result<Vec<u8>, ProxyError> {
        let t = self.cfg.read_timeout;
        let n = n as usize;
        let mut body = Vec::with_capacity(n);
        let take = client.buf.len().min(n);
        body.extend_from_slice(&client.buf.split_to(take));
        let timed_out = || {
            ProxyError::new(
                408,
                "http_request_error",
                "request body not received in time",
            )
        };
        let read = async {
            while body.len() < n {
                let mut chunk = vec![0u8; (n - body.len()).min(16 * 1024)];
                match tokio::time::timeout(t, client.stream.read(&mut chunk)).await {
                    Err(_) => return Err(timed_out()),
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        return Err(ProxyError::bad_request("request body cut short"))
                    }
                    Ok(Ok(got)) => body.extend_from_slice(&chunk[..got]),
                }
            }
            Ok(())
        };
        read.await?;
        Ok(body)
    }
}

/// The port the client connected to, for the policy's port conditions.
fn client_port(client: &Client) -> u16 {
    client.local.map_or(0, |a| a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_and_host_must_agree_unless_the_certificate_covers_both() {
        let covers = |sni: &str, host: &str| sni == "a.test" && host == "www.a.test";
        let never = |_: &str, _: &str| false;
        assert!(!misdirected(None, Some("a.test"), never), "plain or no SNI");
        assert!(!misdirected(Some("a.test"), None, never), "no Host");
        assert!(!misdirected(Some("A.Test."), Some("a.test"), never));
        assert!(misdirected(Some("b.test"), Some("a.test"), never));
        assert!(!misdirected(Some("a.test"), Some("www.a.test"), covers));
        assert!(misdirected(Some("a.test"), Some("b.test"), covers));
    }

    #[test]
    fn own_error_pages_say_nothing_of_the_server() {
        let page = String::from_utf8(own_error_page(503, false, true)).expect("text");
        assert!(
            page.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{page}"
        );
        assert!(
            page.ends_with("\r\n\r\n503 Service Unavailable\n"),
            "{page}"
        );
        assert!(!page.contains("close"));
        let head = String::from_utf8(own_error_page(500, true, false)).expect("text");
        assert!(head.ends_with("Connection: close\r\n\r\n"), "{head}");
    }

    #[test]
    fn agent_failures_say_what_the_site_visitor_needs() {
        use crate::tunnel::proto::OpenError;
        assert_eq!(agent_failure(OpenError::NetworkUnreachable).0, 503);
        assert_eq!(agent_failure(OpenError::HostUnreachable).0, 504);
        for e in [
            OpenError::NoService,
            OpenError::NotAllowed,
            OpenError::Refused,
            OpenError::Failed,
            OpenError::BadRequest,
        ] {
            assert_eq!(agent_failure(e), (502, e.as_str()));
        }
    }

    #[test]
    fn absolute_urls() {
        assert_eq!(
            absolute_url("https", "app.test:8443", "/a?b"),
            "https://app.test:8443/a?b"
        );
        assert_eq!(absolute_url("http", "-", "/"), "http://-/");
    }

    #[test]
    fn https_location_drops_the_default_port() {
        assert_eq!(
            https_location("app.test", 443, "/a?b"),
            "https://app.test/a?b"
        );
        assert_eq!(https_location("[::1]", 8443, "/"), "https://[::1]:8443/");
    }
}
