//! Prometheus metrics, served by the admin listener's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

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

/// One server of a `[[pools]]` entry.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub pool: String,
    /// `host:port` as configured.
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerBytesLabels {
    pub pool: String,
    pub server: String,
    /// "to_server" or "from_server".
    pub direction: String,
}

pub struct Metrics {
    registry: Registry,
    /// 1 while a pool server may be picked (active checks up, not ejected), else 0.
    pub pool_server_up: Family<ServerLabels, Gauge>,
    /// Connections (TCP) or sessions (UDP) sent to a pool server.
    pub pool_server_connections: Family<ServerLabels, Counter>,
    /// Failed connects to a pool server (also UDP sessions ended by an error or no reply).
    pub pool_server_errors: Family<ServerLabels, Counter>,
    pub pool_server_bytes: Family<ServerBytesLabels, Counter>,
    /// Layer-4 connections closed because no server of the pool could be reached.
    pub listener_connect_errors: Family<ListenerLabel, Counter>,
    pub connections_open: Family<ListenerLabel, Gauge>,
    pub connections_total: Family<ListenerLabel, Counter>,
    pub requests_total: Family<RequestLabels, Counter>,
    pub bytes_total: Family<BytesLabels, Counter>,
    pub upstream_connect_seconds: Histogram,
    pub access_log_dropped: Counter,
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
        Metrics {
            registry,
            pool_server_up,
            pool_server_connections,
            pool_server_errors,
            pool_server_bytes,
            listener_connect_errors,
            connections_open,
            connections_total,
            requests_total,
            bytes_total,
            upstream_connect_seconds,
            access_log_dropped,
        }
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

    /// The Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
