//! Upstream server pools at run time: one [`ServerPool`] per `[[pools]]` entry, shared by
//! every listener that balances over it (`tcp`, `udp`, later the reverse proxy).
//!
//! A pool owns a [`Balancer`] (pure choice, `balance/`) behind a short lock, runs one active
//! health-check task per server on the shared shutdown, takes passive results from the
//! listeners (connect failures, UDP errors), logs every health transition and keeps the
//! per-server metrics. Server names are resolved through the shared connector on each connect
//! (`[dns.hosts]` first; DNS answers are cached for their TTL), so a name that moves is
//! followed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::balance::{Balancer, Pick, Request, ServerSpec, Settings, Transition};
use crate::config::{HashKey, PoolConfig, ServerConfig};
use crate::connector::{ConnectError, Connected, Connector, Host};
use crate::metrics::{Metrics, Series, ServerBytesLabels, ServerLabels};
use crate::server::Services;

/// Every configured pool, by name.
#[derive(Default)]
pub struct Pools {
    by_name: HashMap<String, Arc<ServerPool>>,
}

impl Pools {
    pub fn new(cfgs: &[PoolConfig], metrics: Arc<Metrics>) -> Pools {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Pools {
            by_name: cfgs
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let pool = ServerPool::new(c.clone(), metrics.clone(), seed ^ i as u64);
                    (c.name.clone(), Arc::new(pool))
                })
                .collect(),
        }
    }

    /// Every pool's servers with their health, by pool name.
    pub fn health(&self) -> std::collections::BTreeMap<String, Vec<ServerHealth>> {
        self.by_name
            .iter()
            .map(|(name, pool)| (name.clone(), pool.health()))
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<Arc<ServerPool>> {
        self.by_name.get(name).cloned()
    }

    /// Starts the active health checks of every pool that has them (only pools some listener
    /// uses are worth checking; `used` names them). The tasks end with the shutdown.
    pub fn start_health_checks(&self, used: &[&str], svc: &Arc<Services>) {
        for (name, pool) in &self.by_name {
            if used.contains(&name.as_str()) {
                pool.clone().start_health_checks(svc.clone());
            }
        }
    }
}

/// One pool server's health for the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerHealth {
    pub server: String,
    /// Whether it may be picked now (health checks up, not ejected).
    pub up: bool,
    pub in_flight: u64,
}

pub struct ServerPool {
    pub cfg: PoolConfig,
    balancer: Mutex<Balancer>,
    metrics: Arc<Metrics>,
    labels: Vec<ServerLabels>,
    /// Each server's series, looked up once (not per connection).
    series: Vec<ServerSeries>,
}

/// One server's metric series.
struct ServerSeries {
    up: prometheus_client::metrics::gauge::Gauge,
    connections: Series<ServerLabels, prometheus_client::metrics::counter::Counter>,
    errors: Series<ServerLabels, prometheus_client::metrics::counter::Counter>,
    to_server: Series<ServerBytesLabels, prometheus_client::metrics::counter::Counter>,
    from_server: Series<ServerBytesLabels, prometheus_client::metrics::counter::Counter>,
}

/// Why no connection to any server of the pool could be made.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("pool {0:?}: no server available")]
    NoneAvailable(String),
    #[error("pool {pool:?}: {server}: {source}")]
    Connect {
        pool: String,
        server: String,
        source: ConnectError,
    },
}

impl ServerPool {
    pub fn new(cfg: PoolConfig, metrics: Arc<Metrics>, seed: u64) -> ServerPool {
        let specs: Vec<ServerSpec> = cfg
            .servers
            .iter()
            .map(|s| ServerSpec {
                name: s.label(),
                weight: s.weight,
            })
            .collect();
        let settings = Settings {
            slow_start: cfg.slow_start,
            ..Settings::default()
        };
        let balancer = Balancer::new(cfg.algorithm, &specs, settings, seed, Instant::now());
        let labels: Vec<ServerLabels> = cfg
            .servers
            .iter()
            .map(|s| ServerLabels {
                pool: cfg.name.clone(),
                server: s.label(),
            })
            .collect();
        let series = labels
            .iter()
            .map(|l| {
                let up = metrics.pool_server_up.get_or_create(l).clone();
                up.set(1);
                let bytes = |direction: &str| {
                    Series::new(ServerBytesLabels {
                        pool: l.pool.clone(),
                        server: l.server.clone(),
                        direction: direction.to_string(),
                    })
                };
                ServerSeries {
                    up,
                    connections: Series::new(l.clone()),
                    errors: Series::new(l.clone()),
                    to_server: bytes("to_server"),
                    from_server: bytes("from_server"),
                }
            })
            .collect();
        ServerPool {
            cfg,
            balancer: Mutex::new(balancer),
            metrics,
            labels,
            series,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Balancer> {
        // A panic while holding this lock cannot leave the balancer half-updated in a way
        // that matters more than stopping every connection would.
        self.balancer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Each server's health now, in config order.
    pub fn health(&self) -> Vec<ServerHealth> {
        let now = Instant::now();
        let b = self.lock();
        self.labels
            .iter()
            .enumerate()
            .map(|(i, l)| ServerHealth {
                server: l.server.clone(),
                up: b.server(i).is_available(now),
                in_flight: b.server(i).in_flight(),
            })
            .collect()
    }

    pub fn server(&self, i: usize) -> &ServerConfig {
        &self.cfg.servers[i]
    }

    pub fn label(&self, i: usize) -> &str {
        &self.labels[i].server
    }

    /// Picks a server for a connection from `client`, not one of `exclude`, and counts it in
    /// flight; call [`ServerPool::finished`] when the connection ends.
    pub fn pick(&self, client: IpAddr, exclude: &[usize]) -> Option<usize> {
        let (v4, v6);
        let key: &[u8] = match self.cfg.hash_key {
            HashKey::ClientIp => match crate::policy::matcher::canonical(client) {
                IpAddr::V4(a) => {
                    v4 = a.octets();
                    &v4
                }
                IpAddr::V6(a) => {
                    v6 = a.octets();
                    &v6
                }
            },
        };
        let now = Instant::now();
        let mut b = self.lock();
        let pick = b.pick(
            &Request {
                key: Some(key),
                exclude,
                prefer: None,
                fail_open: self.cfg.fail_open,
            },
            now,
        );
        let Pick::Server(i) = pick else { return None };
        // An ejection that ran out: the server is back, slowly.
        let s = b.server_mut(i);
        if s.passive.ejected_until().is_some_and(|u| u <= now) {
            s.readmitted(now);
        }
        b.started(i);
        drop(b);
        self.series[i]
            .connections
            .get(&self.metrics.pool_server_connections)
            .inc();
        Some(i)
    }

    pub fn finished(&self, i: usize) {
        self.lock().finished(i, None, Instant::now());
    }

    /// Real traffic reached server `i` (passive health).
    pub fn success(&self, i: usize) {
        let mut b = self.lock();
        let t = b.server_mut(i).passive.success();
        self.after(&mut b, i, t, "passive: answered again");
    }

    /// Real traffic failed at server `i`: a refused or timed-out connect, an ICMP error, no
    /// UDP reply (passive health).
    pub fn failure(&self, i: usize, why: &str) {
        self.series[i]
            .errors
            .get(&self.metrics.pool_server_errors)
            .inc();
        let now = Instant::now();
        let mut b = self.lock();
        let t = b.server_mut(i).passive.failure(now, &self.cfg.passive);
        self.after(&mut b, i, t, why);
    }

    /// One active check's result.
    fn checked(&self, i: usize, ok: bool, why: &str) {
        let Some(h) = self.cfg.health else { return };
        let mut b = self.lock();
        let t = b.server_mut(i).active.observe(ok, h.rise, h.fall);
        self.after(&mut b, i, t, why);
    }

    /// Logs a transition, applies slow start, and sets the server's `up` gauge.
    fn after(&self, b: &mut Balancer, i: usize, t: Option<Transition>, why: &str) {
        let now = Instant::now();
        b.server_mut(i).note(t, now);
        let up = b.server(i).is_available(now);
        self.series[i].up.set(i64::from(up));
        match t {
            Some(Transition::Down) => tracing::warn!(
                pool = %self.cfg.name, server = %self.labels[i].server, "server down: {why}"
            ),
            Some(Transition::Up) => tracing::info!(
                pool = %self.cfg.name, server = %self.labels[i].server, "server up: {why}"
            ),
            None => {}
        }
    }

    pub fn bytes(&self, i: usize, to_server: u64, from_server: u64) {
        let s = &self.series[i];
        for (series, n) in [(&s.to_server, to_server), (&s.from_server, from_server)] {
            if n > 0 {
                series.get(&self.metrics.pool_server_bytes).inc_by(n);
            }
        }
    }

    /// The addresses of server `i` (a name resolved through the connector and its cache).
    pub async fn addrs(
        &self,
        i: usize,
        connector: &Connector,
    ) -> Result<Vec<SocketAddr>, ConnectError> {
        let s = self.server(i);
        let ips = connector.resolve(&s.host).await?;
        Ok(crate::connector::interleave(ips)
            .into_iter()
            .map(|ip| SocketAddr::new(ip, s.port))
            .collect())
    }

    /// One connect to server `i`, bounded by the pool's connect timeout.
    pub async fn connect_one(
        &self,
        i: usize,
        connector: &Connector,
    ) -> Result<Connected, ConnectError> {
        let label = self.label(i);
        let s = self.server(i);
        let attempt = async {
            match &s.host {
                // An address needs no lookup (and no room in this future for one).
                Host::Ip(ip) => {
                    connector
                        .connect_addrs(&[SocketAddr::new(*ip, s.port)], label)
                        .await
                }
                Host::Name(_) => {
                    let addrs = Box::pin(self.addrs(i, connector)).await?;
                    connector.connect_addrs(&addrs, label).await
                }
            }
        };
        match tokio::time::timeout(self.cfg.connect_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout {
                target: label.to_string(),
            }),
        }
    }

    /// Connects a client's connection to a server: up to `attempts` servers, each failure
    /// counted against its server and the next pick excluding it. On success the server is
    /// in flight (call [`ServerPool::finished`]).
    pub async fn connect(
        &self,
        client: IpAddr,
        attempts: u32,
        connector: &Connector,
    ) -> Result<(usize, Connected), PoolError> {
        let mut tried = Vec::new();
        let mut last = None;
        for _ in 0..attempts.max(1) {
            let Some(i) = self.pick(client, &tried) else {
                break;
            };
            match self.connect_one(i, connector).await {
                Ok(s) => {
                    self.success(i);
                    return Ok((i, s));
                }
                Err(e) => {
                    tracing::debug!(pool = %self.cfg.name, server = %self.label(i), "connect failed: {e}");
                    self.finished(i);
                    self.failure(i, &format!("connect failed: {e}"));
                    tried.push(i);
                    last = Some(PoolError::Connect {
                        pool: self.cfg.name.clone(),
                        server: self.label(i).to_string(),
                        source: e,
                    });
                }
            }
        }
        Err(last.unwrap_or_else(|| PoolError::NoneAvailable(self.cfg.name.clone())))
    }

    /// One task per server: wait (interval plus jitter), check, record. Ends with the shutdown.
    fn start_health_checks(self: Arc<Self>, svc: Arc<Services>) {
        let Some(h) = self.cfg.health else { return };
        for i in 0..self.cfg.servers.len() {
            let pool = self.clone();
            let svc = svc.clone();
            let stop = svc.shutdown.child();
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::new();
                loop {
                    let jitter = if h.jitter.is_zero() {
                        Duration::ZERO
                    } else {
                        h.jitter.mul_f64(rng.f64())
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(h.interval + jitter) => {}
                        _ = stop.cancelled() => return,
                    }
                    let result = tokio::select! {
                        r = tokio::time::timeout(h.timeout, pool.connect_one(i, &svc.connector)) => r,
                        _ = stop.cancelled() => return,
                    };
                    match result {
                        Ok(Ok(_stream)) => pool.checked(i, true, "tcp check passed"),
                        Ok(Err(e)) => pool.checked(i, false, &format!("tcp check: {e}")),
                        Err(_) => pool.checked(i, false, "tcp check timed out"),
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HealthCheckConfig, HealthCheckKind};
    use crate::connector::Host;

    fn pool(fail_open: bool) -> (ServerPool, Arc<Metrics>) {
        let server = |port| ServerConfig {
            host: Host::Ip("127.0.0.1".parse().expect("ip")),
            port,
            weight: 1,
        };
        let cfg = PoolConfig {
            name: "p".into(),
            servers: vec![server(1), server(2)],
            algorithm: crate::balance::Algorithm::RoundRobin,
            hash_key: HashKey::ClientIp,
            fail_open,
            slow_start: Duration::ZERO,
            connect_timeout: Duration::from_secs(1),
            health: Some(HealthCheckConfig {
                kind: HealthCheckKind::Tcp,
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                rise: 2,
                fall: 2,
                jitter: Duration::ZERO,
            }),
            passive: crate::balance::PassiveSettings {
                max_failures: 1,
                base_ejection: Duration::from_secs(60),
                max_ejection: Duration::from_secs(60),
            },
        };
        let metrics = Arc::new(Metrics::new());
        (ServerPool::new(cfg, metrics.clone(), 7), metrics)
    }

    fn up(m: &Metrics, server: &str) -> i64 {
        m.pool_server_up
            .get_or_create(&ServerLabels {
                pool: "p".into(),
                server: server.into(),
            })
            .get()
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn passive_failure_ejects_and_success_readmits() {
        let (p, m) = pool(false);
        assert_eq!(up(&m, "127.0.0.1:1"), 1);
        p.failure(0, "test");
        assert_eq!(up(&m, "127.0.0.1:1"), 0);
        for _ in 0..4 {
            let i = p.pick(CLIENT, &[]).expect("a server");
            assert_eq!(i, 1);
            p.finished(i);
        }
        // Only server 0 left to try, and it is ejected.
        assert_eq!(p.pick(CLIENT, &[1]), None);
        p.success(0);
        assert_eq!(up(&m, "127.0.0.1:1"), 1);
    }

    #[test]
    fn active_checks_need_fall_and_rise_in_a_row() {
        let (p, m) = pool(false);
        p.checked(1, false, "t");
        assert_eq!(up(&m, "127.0.0.1:2"), 1, "one failure is not enough");
        p.checked(1, false, "t");
        assert_eq!(up(&m, "127.0.0.1:2"), 0);
        assert_eq!(p.pick(CLIENT, &[0]), None);
        p.checked(1, true, "t");
        assert_eq!(up(&m, "127.0.0.1:2"), 0);
        p.checked(1, true, "t");
        assert_eq!(up(&m, "127.0.0.1:2"), 1);
        assert_eq!(p.pick(CLIENT, &[0]), Some(1));
    }

    #[test]
    fn fail_open_uses_down_servers() {
        let (closed, _) = pool(false);
        let (open, _) = pool(true);
        for p in [&closed, &open] {
            p.failure(0, "t");
            p.failure(1, "t");
        }
        assert_eq!(closed.pick(CLIENT, &[]), None);
        assert!(open.pick(CLIENT, &[]).is_some());
    }
}
