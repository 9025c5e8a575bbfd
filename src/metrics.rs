//! Prometheus metrics, served by the admin listener's `/metrics`.

pub mod sharded;
pub use sharded::{Counter, Histogram};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;
use std::sync::OnceLock;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub listener: String,
    /// "1xx" .. "5xx"
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub listener: String,
    /// "in" (from clients) or "out" (to clients).
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// One server of a `[[pools]]` entry.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub pool: String,
    /// `host:port` as configured.
    pub server: String,
}

/// A pool server's HTTP responses by status class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerClassLabels {
    pub pool: String,
    pub server: String,
    /// "1xx" .. "5xx"
    pub class: String,
}

/// A reverse listener's route (its `name`, or the first host name and the path).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub listener: String,
    pub route: String,
}

/// A route's requests by status class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteClassLabels {
    pub listener: String,
    pub route: String,
    /// "1xx" .. "5xx", "other" (0: no answer was sent)
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub pool: String,
}

/// A family of histograms, one per label set, all with the same buckets.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerBytesLabels {
    pub pool: String,
    pub server: String,
    /// "to_server" or "from_server".
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    /// A rule's name from the config, `default` or `guard`.
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReusedLabel {
    /// "true" (an idle pooled connection) or "false" (a new connection).
    pub reused: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RelayLabels {
    /// connect, socks, tcp or upgrade.
    pub kind: String,
    /// "in" (from clients) or "out" (to clients).
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

pub struct Metrics {
    registry: Registry,
    /// Requests, tunnels and sessions refused by the policy, by the rule that refused.
    pub policy_denials: Family<RuleLabel, Counter>,
    pub dns_lookup_seconds: Histogram,
    /// Failed DNS lookups: timeout, nxdomain, servfail, refused, no_address, other.
    pub dns_failures: Family<KindLabel, Counter>,
    /// Direct HTTP requests sent upstream, by whether a pooled connection carried them.
    pub upstream_pool_requests: Family<ReusedLabel, Counter>,
    pub relay_bytes: Family<RelayLabels, Counter>,
    /// Cached-listener requests by the access log's cache word.
    pub cache_results: Family<ResultLabel, Counter>,
    /// 1 while a pool server may be picked (active checks up, not ejected), else 0.
    pub pool_server_up: Family<ServerLabels, Gauge>,
    /// Connections (TCP) or sessions (UDP) sent to a pool server.
    pub pool_server_connections: Family<ServerLabels, Counter>,
    /// Failed connects to a pool server (also UDP sessions ended by an error or no reply).
    pub pool_server_errors: Family<ServerLabels, Counter>,
    pub pool_server_bytes: Family<ServerBytesLabels, Counter>,
    /// HTTP responses from pool servers by status class (reverse proxy).
    pub pool_server_requests: Family<ServerClassLabels, Counter>,
    /// Time from a request sent to a pool server to its response head.
    pub pool_server_response_seconds: HistogramFamily<ServerLabels>,
    /// Requests a reverse listener's route took, by status class.
    pub route_requests: Family<RouteClassLabels, Counter>,
    /// Time from a request sent to a route's pool server to its response head.
    pub route_upstream_seconds: HistogramFamily<RouteLabels>,
    /// A route's whole request: from its head read to the last byte of the answer.
    pub route_request_seconds: HistogramFamily<RouteLabels>,
    /// Requests of a route retried on another server.
    pub route_retries: Family<RouteLabels, Counter>,
    /// Retries sent to another server of the pool.
    pub pool_retries: Family<PoolLabel, Counter>,
    /// Retries not sent because the pool's retry budget was spent.
    pub pool_retry_budget_exhausted: Family<PoolLabel, Counter>,
    /// Layer-4 connections closed because no server of the pool could be reached.
    pub listener_connect_errors: Family<ListenerLabel, Counter>,
    pub connections_open: Family<ListenerLabel, Gauge>,
    pub connections_total: Family<ListenerLabel, Counter>,
    pub requests_total: Family<RequestLabels, Counter>,
    pub bytes_total: Family<BytesLabels, Counter>,
    pub upstream_connect_seconds: Histogram,
    pub access_log_dropped: Counter,
    /// Password hash checks run (cache hits and refused logins run none).
    pub password_verifications: Counter,
    /// Failed proxy logins by reason: bad_credentials, blocked, overloaded, unavailable.
    pub login_failures: Family<ReasonLabel, Counter>,
    /// SOCKS UDP datagrams dropped, by reason (see [`Metrics::socks_udp_drop`]).
    pub socks_udp_dropped: Family<ReasonLabel, Counter>,
    /// Live statistics for the admin API and dashboard (fed by the access-record tap).
    pub stats: crate::stats::Stats,
    /// Reverse-tunnel agents connected to this relay.
    pub tunnel_agents: Gauge,
    /// Streams open through agents (SOCKS and published ports).
    pub tunnel_streams_open: Gauge,
    /// Bytes through agents, by agent, service ("socks" for SOCKS) and direction.
    pub tunnel_bytes: Family<TunnelLabels, Counter>,
    /// `relay_bytes` for each kind in [`RELAY_KINDS`], in and out: looked up once.
    relay_handles: [[OnceLock<Counter>; 2]; 4],
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TunnelLabels {
    pub agent: String,
    pub service: String,
    /// "in" (from clients, to the agent) or "out" (to clients).
    pub direction: String,
}

/// The relay kinds [`Metrics::relay`] keeps handles for.
const RELAY_KINDS: [&str; 4] = ["connect", "socks", "tcp", "upgrade"];

/// One series of a family with a label set fixed in advance, looked up once: the first
/// [`Series::get`] creates it (exactly as `get_or_create` would, so a series that is never
/// used never appears), later ones read a pointer instead of hashing the labels and taking
/// the family's lock. Families are never cleared, so the handle stays the family's series.
pub struct Series<L, M> {
    label: L,
    cell: OnceLock<M>,
}

impl<L, M> Series<L, M>
where
    L: Clone + std::hash::Hash + Eq,
    M: Clone,
{
    pub fn new(label: L) -> Self {
        Series {
            label,
            cell: OnceLock::new(),
        }
    }

    pub fn label(&self) -> &L {
        &self.label
    }

    pub fn get<C>(&self, family: &Family<L, M, C>) -> &M
    where
        C: prometheus_client::metrics::family::MetricConstructor<M>,
    {
        self.cell
            .get_or_init(|| family.get_or_create(&self.label).clone())
    }
}

/// A listener's own series, looked up once per listener instead of once per connection.
pub struct ListenerMetrics {
    connections_total: Series<ListenerLabel, Counter>,
    connections_open: Series<ListenerLabel, Gauge>,
    connect_errors: Series<ListenerLabel, Counter>,
    /// `requests_total` by status class, 1xx to 5xx.
    requests: [Series<RequestLabels, Counter>; 5],
    bytes_in: Series<BytesLabels, Counter>,
    bytes_out: Series<BytesLabels, Counter>,
}

impl ListenerMetrics {
    pub fn new(listener: &str) -> ListenerMetrics {
        let label = Metrics::listener(listener);
        let bytes = |direction: &str| {
            Series::new(BytesLabels {
                listener: listener.to_string(),
                direction: direction.to_string(),
            })
        };
        ListenerMetrics {
            connections_total: Series::new(label.clone()),
            connections_open: Series::new(label.clone()),
            connect_errors: Series::new(label),
            requests: std::array::from_fn(|i| {
                Series::new(RequestLabels {
                    listener: listener.to_string(),
                    class: format!("{}xx", i + 1),
                })
            }),
            bytes_in: bytes("in"),
            bytes_out: bytes("out"),
        }
    }

    /// A connection accepted: counted, and its open gauge (decrement it when it closes).
    pub fn accepted(&self, m: &Metrics) -> Gauge {
        self.connections_total.get(&m.connections_total).inc();
        let open = self.connections_open.get(&m.connections_open).clone();
        open.inc();
        open
    }

    /// As [`Metrics::request`].
    pub fn request(&self, m: &Metrics, status: u16) {
        let i = usize::from((status / 100).clamp(1, 5)) - 1;
        self.requests[i].get(&m.requests_total).inc();
    }

    /// As [`Metrics::bytes`].
    pub fn bytes(&self, m: &Metrics, from_client: u64, to_client: u64) {
        self.bytes_in.get(&m.bytes_total).inc_by(from_client);
        self.bytes_out.get(&m.bytes_total).inc_by(to_client);
    }

    /// A layer-4 connection no pool server could be reached for.
    pub fn connect_error(&self, m: &Metrics) {
        self.connect_errors.get(&m.listener_connect_errors).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("gatehouse");
        let connections_open = Family::<ListenerLabel, Gauge>::default();
        let connections_total = Family::<ListenerLabel, Counter>::default();
        let requests_total = Family::<RequestLabels, Counter>::default();
        let bytes_total = Family::<BytesLabels, Counter>::default();
        let upstream_connect_seconds = Histogram::new(exponential_buckets(0.0001, 4.0, 10));
        let access_log_dropped = Counter::default();
        let password_verifications = Counter::default();
        let login_failures = Family::<ReasonLabel, Counter>::default();
        let socks_udp_dropped = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "socks_udp_dropped",
            "SOCKS UDP datagrams dropped, by reason (foreign, malformed, fragment, gssapi, policy, too_large)",
            socks_udp_dropped.clone(),
        );
        registry.register(
            "password_verifications",
            "Password hash checks run for proxy logins",
            password_verifications.clone(),
        );
        registry.register(
            "login_failures",
            "Failed proxy logins, by reason (bad_credentials, blocked, overloaded, unavailable)",
            login_failures.clone(),
        );
        registry.register(
            "connections_open",
            "Client connections open now",
            connections_open.clone(),
        );
        registry.register(
            "connections",
            "Client connections accepted",
            connections_total.clone(),
        );
        registry.register(
            "requests",
            "Requests and tunnels answered, by status class",
            requests_total.clone(),
        );
        registry.register(
            "bytes",
            "Bytes relayed to and from clients",
            bytes_total.clone(),
        );
        registry.register(
            "upstream_connect_seconds",
            "Time to establish upstream TCP connections",
            upstream_connect_seconds.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access log records dropped because the writer fell behind",
            access_log_dropped.clone(),
        );
        let pool_server_up = Family::<ServerLabels, Gauge>::default();
        let pool_server_connections = Family::<ServerLabels, Counter>::default();
        let pool_server_errors = Family::<ServerLabels, Counter>::default();
        let pool_server_bytes = Family::<ServerBytesLabels, Counter>::default();
        let listener_connect_errors = Family::<ListenerLabel, Counter>::default();
        let pool_server_requests = Family::<ServerClassLabels, Counter>::default();
        let pool_server_response_seconds: HistogramFamily<ServerLabels> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16)));
        let pool_retries = Family::<PoolLabel, Counter>::default();
        let route_requests = Family::<RouteClassLabels, Counter>::default();
        let route_upstream_seconds: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16)));
        registry.register(
            "route_requests",
            "Requests a reverse listener's route took, by status class",
            route_requests.clone(),
        );
        registry.register(
            "route_upstream_seconds",
            "Time from a route's request sent to a pool server to its response head",
            route_upstream_seconds.clone(),
        );
        let route_request_seconds: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16)));
        registry.register(
            "route_request_seconds",
            "A route's whole request, from its head read to the last byte of the answer",
            route_request_seconds.clone(),
        );
        let route_retries = Family::<RouteLabels, Counter>::default();
        registry.register(
            "route_retries",
            "Requests of a route retried on another server",
            route_retries.clone(),
        );
        let pool_retry_budget_exhausted = Family::<PoolLabel, Counter>::default();
        registry.register(
            "pool_server_requests",
            "HTTP responses from a pool server, by status class",
            pool_server_requests.clone(),
        );
        registry.register(
            "pool_server_response_seconds",
            "Time from a request sent to a pool server to its response head",
            pool_server_response_seconds.clone(),
        );
        registry.register(
            "pool_retries",
            "Requests retried on another server of the pool",
            pool_retries.clone(),
        );
        registry.register(
            "pool_retry_budget_exhausted",
            "Retries not sent because the pool's retry budget was spent",
            pool_retry_budget_exhausted.clone(),
        );
        registry.register(
            "pool_server_up",
            "1 while a pool server may be picked (health checks up, not ejected)",
            pool_server_up.clone(),
        );
        registry.register(
            "pool_server_connections",
            "Connections (TCP) or sessions (UDP) sent to a pool server",
            pool_server_connections.clone(),
        );
        registry.register(
            "pool_server_errors",
            "Failed connects to a pool server, or UDP sessions ended by an error or no reply",
            pool_server_errors.clone(),
        );
        registry.register(
            "pool_server_bytes",
            "Bytes relayed to and from a pool server",
            pool_server_bytes.clone(),
        );
        registry.register(
            "listener_connect_errors",
            "Layer-4 connections closed because no pool server could be reached",
            listener_connect_errors.clone(),
        );
        let policy_denials = Family::<RuleLabel, Counter>::default();
        let dns_lookup_seconds = Histogram::new(exponential_buckets(0.0001, 4.0, 10));
        let dns_failures = Family::<KindLabel, Counter>::default();
        let upstream_pool_requests = Family::<ReusedLabel, Counter>::default();
        let relay_bytes = Family::<RelayLabels, Counter>::default();
        let cache_results = Family::<ResultLabel, Counter>::default();
        let tunnel_agents = Gauge::default();
        let tunnel_streams_open = Gauge::default();
        let tunnel_bytes = Family::<TunnelLabels, Counter>::default();
        registry.register(
            "tunnel_agents",
            "Reverse-tunnel agents connected to this relay",
            tunnel_agents.clone(),
        );
        registry.register(
            "tunnel_streams_open",
            "Streams open through reverse-tunnel agents",
            tunnel_streams_open.clone(),
        );
        registry.register(
            "tunnel_bytes",
            "Bytes relayed through reverse-tunnel agents, by agent, service (socks for SOCKS) and direction (in from clients, out to clients)",
            tunnel_bytes.clone(),
        );
        registry.register(
            "policy_denials",
            "Requests, tunnels and sessions refused by the policy, by rule (a rule name, default or guard)",
            policy_denials.clone(),
        );
        registry.register(
            "dns_lookup_seconds",
            "Time of DNS lookups sent to the resolver (static hosts and literals are not counted)",
            dns_lookup_seconds.clone(),
        );
        registry.register(
            "dns_failures",
            "Failed DNS lookups, by kind (timeout, nxdomain, servfail, refused, no_address, other)",
            dns_failures.clone(),
        );
        registry.register(
            "upstream_pool_requests",
            "Direct HTTP requests sent upstream, by whether a pooled idle connection carried them",
            upstream_pool_requests.clone(),
        );
        registry.register(
            "relay_bytes",
            "Bytes relayed by tunnels and layer-4 connections, by kind (connect, socks, tcp, upgrade) and direction (in from clients, out to clients)",
            relay_bytes.clone(),
        );
        registry.register(
            "cache_results",
            "Requests on cached listeners, by the cache result (hit, miss, stale, revalidated, expired, refresh, bypass)",
            cache_results.clone(),
        );
        Metrics {
            registry,
            policy_denials,
            dns_lookup_seconds,
            dns_failures,
            upstream_pool_requests,
            relay_bytes,
            cache_results,
            tunnel_agents,
            tunnel_streams_open,
            tunnel_bytes,
            pool_server_up,
            pool_server_connections,
            pool_server_errors,
            pool_server_bytes,
            pool_server_requests,
            pool_server_response_seconds,
            pool_retries,
            route_requests,
            route_upstream_seconds,
            route_request_seconds,
            route_retries,
            pool_retry_budget_exhausted,
            listener_connect_errors,
            connections_open,
            connections_total,
            requests_total,
            bytes_total,
            upstream_connect_seconds,
            access_log_dropped,
            password_verifications,
            login_failures,
            socks_udp_dropped,
            stats: crate::stats::Stats::new(),
            relay_handles: Default::default(),
        }
    }

    /// A SOCKS UDP datagram dropped: `foreign` (not from the client's address), `malformed`
    /// (no valid SOCKS UDP header), `fragment` (FRAG != 0), `gssapi` (on a protected session:
    /// not one RFC 1961 message, below the negotiated protection, or refused by gss_unwrap or
    /// gss_wrap),
    /// `policy` (destination refused or not resolved), `too_large` (a reply that cannot be
    /// wrapped into one datagram).
    pub fn socks_udp_drop(&self, reason: &'static str) {
        self.socks_udp_dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn listener(name: &str) -> ListenerLabel {
        ListenerLabel {
            listener: name.to_string(),
        }
    }

    pub fn request(&self, listener: &str, status: u16) {
        let class = format!("{}xx", (status / 100).clamp(1, 5));
        self.requests_total
            .get_or_create(&RequestLabels {
                listener: listener.to_string(),
                class,
            })
            .inc();
    }

    pub fn login_failure(&self, reason: &str) {
        self.login_failures
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// A refusal by the policy; `rule` is a configured rule's name, `default` or `guard`.
    pub fn denial(&self, rule: &str) {
        self.policy_denials
            .get_or_create(&RuleLabel {
                rule: rule.to_string(),
            })
            .inc();
    }

    /// A DNS lookup that went to the resolver: its time and, when it failed, the kind.
    pub fn dns_lookup(&self, took: std::time::Duration, failure: Option<&str>) {
        self.dns_lookup_seconds.observe(took.as_secs_f64());
        if let Some(kind) = failure {
            self.dns_failures
                .get_or_create(&KindLabel {
                    kind: kind.to_string(),
                })
                .inc();
        }
    }

    pub fn pool_request(&self, reused: bool) {
        self.upstream_pool_requests
            .get_or_create(&ReusedLabel {
                reused: reused.to_string(),
            })
            .inc();
    }

    /// Bytes a relay moved: `kind` is connect, socks, tcp or upgrade.
    pub fn relay(&self, kind: &str, from_client: u64, to_client: u64) {
        if let Some(k) = RELAY_KINDS.iter().position(|&known| known == kind) {
            for (d, (direction, n)) in [("in", from_client), ("out", to_client)]
                .into_iter()
                .enumerate()
            {
                self.relay_handles[k][d]
                    .get_or_init(|| {
                        self.relay_bytes
                            .get_or_create(&RelayLabels {
                                kind: kind.to_string(),
                                direction: direction.to_string(),
                            })
                            .clone()
                    })
                    .inc_by(n);
            }
            return;
        }
        for (direction, n) in [("in", from_client), ("out", to_client)] {
            self.relay_bytes
                .get_or_create(&RelayLabels {
                    kind: kind.to_string(),
                    direction: direction.to_string(),
                })
                .inc_by(n);
        }
    }

    /// One request answered on a cached listener, by the access log's cache word.
    pub fn cache_result(&self, result: &str) {
        self.cache_results
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    /// Bytes relayed through an agent.
    pub fn tunnel_bytes(&self, agent: &str, service: &str, from_client: u64, to_client: u64) {
        for (direction, n) in [("in", from_client), ("out", to_client)] {
            self.tunnel_bytes
                .get_or_create(&TunnelLabels {
                    agent: agent.to_string(),
                    service: service.to_string(),
                    direction: direction.to_string(),
                })
                .inc_by(n);
        }
    }

    pub fn bytes(&self, listener: &str, from_client: u64, to_client: u64) {
        for (direction, n) in [("in", from_client), ("out", to_client)] {
            self.bytes_total
                .get_or_create(&BytesLabels {
                    listener: listener.to_string(),
                    direction: direction.to_string(),
                })
                .inc_by(n);
        }
    }

    /// The registry's families in OpenMetrics text, without the closing `# EOF` (so more
    /// families can follow; see [`finish`]).
    pub fn encode_families(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode_registry(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The whole registry in OpenMetrics text.
    pub fn encode(&self) -> String {
        finish(self.encode_families(), Format::OpenMetrics)
    }
}

/// The two exposition formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4 (what `promtool check metrics` reads).
    Text,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// Picks the format from an `Accept` field: OpenMetrics when it is asked for at least as
    /// strongly as plain text (Prometheus asks for it first), else the 0.0.4 text format,
    /// which is also the answer to a request without `Accept`.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let (mut om, mut text) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0)
                .clamp(0.0, 1.0);
            match media.as_str() {
                "application/openmetrics-text" => om = om.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if om > 0.0 && om >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

/// Closes OpenMetrics families (from [`Metrics::encode_families`] and any appended after) in
/// the wanted format. For the 0.0.4 text format a counter family is named with its `_total`
/// suffix in `# HELP` and `# TYPE` (as its samples are), `# UNIT` and `# EOF` go, and
/// `unknown` is `untyped`.
pub fn finish(openmetrics: String, format: Format) -> String {
    match format {
        Format::OpenMetrics => openmetrics + "# EOF\n",
        Format::Text => {
            let counters: std::collections::HashSet<&str> = openmetrics
                .lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .filter_map(|rest| rest.strip_suffix(" counter"))
                .collect();
            let mut out = String::with_capacity(openmetrics.len());
            for line in openmetrics.lines() {
                if line.starts_with("# UNIT ") || line == "# EOF" {
                    continue;
                }
                let meta = ["# HELP ", "# TYPE "]
                    .into_iter()
                    .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
                match meta {
                    Some((p, rest)) => {
                        let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                        let name = if counters.contains(name) {
                            format!("{name}_total")
                        } else {
                            name.to_string()
                        };
                        let tail = if p == "# TYPE " && tail == "unknown" {
                            "untyped"
                        } else {
                            tail
                        };
                        out.push_str(&format!("{p}{name} {tail}"));
                    }
                    // Exemplars are OpenMetrics only.
                    None => out.push_str(line.split(" # {").next().unwrap_or(line)),
                }
                out.push('\n');
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        // What Prometheus sends.
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0.2, text/plain")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0")),
            Format::Text
        );
    }

    #[test]
    fn listener_series_are_the_families_series_created_on_first_use() {
        let m = Metrics::new();
        let l = ListenerMetrics::new("tcp1");
        // Nothing used yet: no series in the output.
        assert!(!m.encode().contains("listener=\"tcp1\""));
        l.request(&m, 503);
        l.request(&m, 503);
        m.request("tcp1", 503);
        l.bytes(&m, 3, 4);
        let open = l.accepted(&m);
        m.relay("tcp", 5, 6);
        m.relay("tcp", 1, 1);
        let text = m.encode();
        for line in [
            "gatehouse_requests_total{listener=\"tcp1\",class=\"5xx\"} 3\n",
            "gatehouse_bytes_total{listener=\"tcp1\",direction=\"in\"} 3\n",
            "gatehouse_bytes_total{listener=\"tcp1\",direction=\"out\"} 4\n",
            "gatehouse_connections_total{listener=\"tcp1\"} 1\n",
            "gatehouse_connections_open{listener=\"tcp1\"} 1\n",
            "gatehouse_relay_bytes_total{kind=\"tcp\",direction=\"in\"} 6\n",
            "gatehouse_relay_bytes_total{kind=\"tcp\",direction=\"out\"} 7\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        // Classes never answered stay absent, as with `get_or_create` per request.
        assert!(!text.contains("class=\"2xx\""), "{text}");
        assert!(!text.contains("listener_connect_errors_total{"), "{text}");
        open.dec();
        assert!(m
            .encode()
            .contains("gatehouse_connections_open{listener=\"tcp1\"} 0\n"));
    }

    #[test]
    fn text_format_names_counters_with_total_and_has_no_eof() {
        let m = Metrics::new();
        m.request("http", 200);
        let text = finish(m.encode_families(), Format::Text);
        assert!(
            text.contains("# TYPE gatehouse_requests_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# HELP gatehouse_requests_total "), "{text}");
        assert!(
            text.contains("gatehouse_requests_total{listener=\"http\",class=\"2xx\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE gatehouse_upstream_connect_seconds histogram\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        let om = m.encode();
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE gatehouse_requests counter\n"), "{om}");
    }
}
