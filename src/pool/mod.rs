//! Upstream server pools at run time: one [`ServerPool`] per `[[pools]]` entry, shared by
//! every listener that balances over it (`tcp`, `udp`, later the reverse proxy).
//!
//! A pool owns a [`Balancer`] (pure choice, `balance/`) behind a short lock, runs one active
//! health-check task per server on the shared shutdown, takes passive results from the
//! listeners (connect failures, UDP errors), logs every health transition and keeps the
//! per-server metrics. Server names are resolved through the shared connector on each connect
//! (`[dns.hosts]` first; DNS answers are cached for their TTL), so a name that moves is
//! followed.
//!
//! For the reverse proxy (HTTP), beside `pick`/`connect`/`success`/`failure`/`finished`:
//! [`ServerPool::pick_request`] (the whole choice: sticky cookie, else the hash key), its
//! parts [`ServerPool::pick_with`] (hash on a header, cookie or path), [`ServerPool::sticky_pick`]
//! and [`ServerPool::sticky_cookie`] (sticky sessions), [`ServerPool::http_result`] (passive
//! health from responses), [`ServerPool::request_started`] and [`ServerPool::try_retry`] (the
//! retry budget), [`ServerPool::observe`] and [`ServerPool::retried`] (per-server metrics).
//! Active checks (TCP connect or an HTTP request) are `check.rs`.
//!
//! Reload: [`Pools::reload`] keeps unchanged pools, replaces a changed one by its
//! [`ServerPool::successor`] (the state of servers that stay carried over by
//! `balance::reload`), and retires removed ones. Listeners hold a [`LivePool`] and take its
//! current pool per request or connection; a replaced pool forwards what requests still on
//! it report about a server that stays to the successor (`with_server`, `live`).

mod check;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::balance::{
    try_withdraw_sharded, Balancer, HttpOutcome, PassiveHealth, Pick, Request, RetryBudget,
    ServerSpec, Settings, Transition,
};
use crate::config::{HashKey, PoolConfig, ServerConfig};
use crate::connector::{ConnectError, Connected, Connector, Host};
use crate::metrics::{
    Metrics, PoolLabel, Series, ServerBytesLabels, ServerClassLabels, ServerLabels,
};
use crate::server::Services;

/// The balancer's view of a pool's servers.
fn specs(cfg: &PoolConfig) -> Vec<ServerSpec> {
    cfg.servers
        .iter()
        .map(|s| ServerSpec {
            name: s.label(),
            weight: s.weight,
        })
        .collect()
}

fn settings(cfg: &PoolConfig) -> Settings {
    Settings {
        slow_start: cfg.slow_start,
        init: cfg.health.as_ref().and_then(|h| h.init_state),
        ..Settings::default()
    }
}

/// `[pools.tls]`, loaded (start-up checks loaded it once already, so an error here is a
/// file changed since; connections then fail rather than go out in the clear).
fn load_tls(cfg: &PoolConfig) -> Option<Result<Arc<crate::tls::TlsClient>, String>> {
    cfg.tls.as_ref().map(|t| {
        crate::tls::TlsClient::new(t)
            .map(Arc::new)
            .map_err(|e| format!("pool {:?}: TLS {}: {e}", cfg.name, e.key))
    })
}

/// A digest of the files `[pools.tls]` names (CA file, client certificate and key) as they
/// are on disk now; 0 without TLS. A reload compares it so that files replaced under the
/// same paths are loaded again even when no setting changed, as nginx and HAProxy read them
/// on every reload. A file that cannot be read hashes its error kind.
fn tls_files_digest(cfg: &PoolConfig) -> u64 {
    use std::hash::{Hash, Hasher};
    let Some(t) = &cfg.tls else { return 0 };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let cert = t.client_cert.as_ref();
    for path in [
        t.ca_file.as_ref(),
        cert.map(|c| &c.cert),
        cert.map(|c| &c.key),
    ] {
        match path.map(std::fs::read) {
            None => 0u8.hash(&mut h),
            Some(Ok(bytes)) => bytes.hash(&mut h),
            Some(Err(e)) => format!("{:?}", e.kind()).hash(&mut h),
        }
    }
    h.finish() | 1
}

/// How far back the retry budget counts requests.
const RETRY_WINDOW: Duration = Duration::from_secs(10);

/// Every configured pool, by name. A reload ([`Pools::reload`]) adds, replaces and removes
/// pools; listeners hold a [`LivePool`] and take its current [`ServerPool`] per request or
/// connection, so they see the new pool without being restarted.
pub struct Pools {
    by_name: Mutex<HashMap<String, Arc<LivePool>>>,
    metrics: Arc<Metrics>,
    seed: u64,
}

/// One pool name's current [`ServerPool`], replaced by a reload that changes the pool. A
/// request or connection keeps the `ServerPool` it started with (server indices are that
/// object's); what it reports about a server that stays reaches the current one.
pub struct LivePool {
    current: arc_swap::ArcSwap<ServerPool>,
    /// Stops the current pool's health-check tasks (`None`: none running).
    checks: Mutex<Option<tokio_util::sync::CancellationToken>>,
}

impl LivePool {
    fn new(pool: ServerPool) -> LivePool {
        LivePool {
            current: arc_swap::ArcSwap::from_pointee(pool),
            checks: Mutex::new(None),
        }
    }

    /// The pool in force now.
    pub fn current(&self) -> Arc<ServerPool> {
        self.current.load_full()
    }

    /// Starts the current pool's checks (stopping any running ones); `added` servers check
    /// at once.
    fn start_checks(&self, svc: &Arc<Services>, added: &[bool]) {
        let stop = svc.shutdown.child();
        check::start(self.current(), svc.clone(), stop.clone(), added);
        let old = self
            .checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(stop);
        if let Some(old) = old {
            old.cancel();
        }
    }

    fn stop_checks(&self) {
        let old = self.checks.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(old) = old {
            old.cancel();
        }
    }

    fn checks_running(&self) -> bool {
        self.checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

impl Pools {
    pub fn new(cfgs: &[PoolConfig], metrics: Arc<Metrics>) -> Pools {
        let seed = clock_seed();
        let by_name = cfgs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pool = ServerPool::new(c.clone(), metrics.clone(), seed ^ i as u64);
                (c.name.clone(), Arc::new(LivePool::new(pool)))
            })
            .collect();
        Pools {
            by_name: Mutex::new(by_name),
            metrics,
            seed,
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<LivePool>>> {
        self.by_name.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every pool's servers with their health, by pool name.
    pub fn health(&self) -> std::collections::BTreeMap<String, Vec<ServerHealth>> {
        self.map()
            .iter()
            .map(|(name, pool)| (name.clone(), pool.current().health()))
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<Arc<LivePool>> {
        self.map().get(name).cloned()
    }

    /// Starts the active health checks of every pool that has them (only pools some listener
    /// uses are worth checking; `used` names them). The tasks end with the shutdown, or when
    /// a reload replaces or removes their pool.
    pub fn start_health_checks(&self, used: &[&str], svc: &Arc<Services>) {
        for (name, pool) in self.map().iter() {
            if used.contains(&name.as_str()) {
                pool.start_checks(svc, &[]);
            }
        }
    }

    /// Applies a reload's `[[pools]]`: a pool whose settings and `[pools.tls]` files are
    /// unchanged is the same object
    /// (its checks run on, started or stopped as `used` now says); a changed one is replaced
    /// by its [`ServerPool::successor`] (servers that stay keep their state; its checks
    /// restart, added servers checked at once); a new one starts fresh; a removed one stops
    /// its checks and drops its servers' metric series. Requests in flight finish on the
    /// objects they started with.
    pub fn reload(&self, cfgs: &[PoolConfig], used: &[&str], svc: &Arc<Services>) {
        let mut map = self.map();
        map.retain(|name, live| {
            let keep = cfgs.iter().any(|c| c.name == *name);
            if !keep {
                live.stop_checks();
                live.current().retire();
                tracing::info!(pool = %name, "reload: pool removed");
            }
            keep
        });
        let salt = clock_seed();
        for (k, c) in cfgs.iter().enumerate() {
            let seed = self.seed.rotate_left(17) ^ salt ^ k as u64;
            let used_now = used.contains(&c.name.as_str());
            match map.get(&c.name) {
                Some(live) => {
                    let old = live.current();
                    let files_changed = old.tls_files_changed();
                    if old.cfg == *c && !files_changed {
                        match (used_now, live.checks_running()) {
                            (true, false) => live.start_checks(svc, &[]),
                            (false, true) => live.stop_checks(),
                            _ => {}
                        }
                        continue;
                    }
                    let (new, added) = old.successor(c.clone(), self.metrics.clone(), seed);
                    let stayed = added.iter().filter(|a| !**a).count();
                    tracing::info!(
                        pool = %c.name,
                        tls_files_changed = files_changed,
                        kept = stayed,
                        added = added.len() - stayed,
                        removed = old.cfg.servers.len().saturating_sub(stayed),
                        "reload: pool changed"
                    );
                    live.current.store(new);
                    if used_now {
                        live.start_checks(svc, &added);
                    } else {
                        live.stop_checks();
                    }
                }
                None => {
                    let pool = ServerPool::new(c.clone(), self.metrics.clone(), seed);
                    let live = Arc::new(LivePool::new(pool));
                    if used_now {
                        live.start_checks(svc, &[]);
                    }
                    tracing::info!(pool = %c.name, "reload: pool added");
                    map.insert(c.name.clone(), live);
                }
            }
        }
    }
}

/// A seed for the balancers' random choices.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

/// One pool server's health for the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerHealth {
    pub server: String,
    /// Whether it may be picked now (health checks up, not ejected).
    pub up: bool,
    /// What the active checks say (true without checks).
    pub checks_up: bool,
    /// Ejected by the passive checks now.
    pub ejected: bool,
    pub in_flight: u64,
}

pub struct ServerPool {
    pub cfg: PoolConfig,
    /// On cache lines of its own: every request of every thread takes this lock, and the
    /// fields around it are read on every request too.
    balancer: crate::workers::Apart<Mutex<Balancer>>,
    /// Apart from the balancer's lock, one shard per thread shard
    /// ([`crate::workers::shard_index`]): every request deposits in its thread's; a retry
    /// is weighed against all of them ([`try_withdraw_sharded`]).
    budget: Box<[crate::workers::Apart<Mutex<RetryBudget>>]>,
    metrics: Arc<Metrics>,
    labels: Vec<ServerLabels>,
    /// Each server's label as shared text, for the access records of its requests.
    shared_labels: Vec<crate::workers::LocalName>,
    /// `[pools.tls]`, loaded (start-up checks loaded it once already, so an error here is a
    /// file changed since; connections then fail rather than go out in the clear).
    tls: Option<Result<Arc<crate::tls::TlsClient>, String>>,
    /// For a `protocol = "h2"` pool over TLS: the same settings with ALPN `http/1.1`, for
    /// the requests that need HTTP/1.1 (WebSocket upgrades).
    tls_h1: Option<Arc<crate::tls::TlsClient>>,
    /// Each server's sticky-session token (opaque, stable, never its address).
    tokens: Vec<String>,
    pool_label: PoolLabel,
    /// Each server's series, looked up once (not per connection).
    series: Vec<ServerSeries>,
    /// Counts changes of `[pools.tls]` across reloads: part of the key of idle TLS
    /// connections, so one made with the old settings is not reused.
    tls_epoch: u64,
    /// [`tls_files_digest`] of the files the TLS client was loaded from.
    tls_files: u64,
    /// Set once, when a reload replaced or removed this pool.
    next: std::sync::OnceLock<Next>,
}

/// Where a replaced pool's servers went.
struct Next {
    /// The successor; `None`: the pool was removed.
    pool: Option<Arc<ServerPool>>,
    /// Each server's index in the successor (`None`: removed).
    moved: Vec<Option<usize>>,
}

/// [`ServerPool::pick_request`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picked {
    pub server: usize,
    /// `Set-Cookie` value for the response (sticky pools, when the client lacks the cookie).
    pub set_cookie: Option<String>,
}

/// One server's metric series.
struct ServerSeries {
    up: prometheus_client::metrics::gauge::Gauge,
    connections: Series<ServerLabels, crate::metrics::Counter>,
    errors: Series<ServerLabels, crate::metrics::Counter>,
    to_server: Series<ServerBytesLabels, crate::metrics::Counter>,
    from_server: Series<ServerBytesLabels, crate::metrics::Counter>,
    /// `pool_server_requests` by status class: 1xx to 5xx, then `other`.
    requests: [Series<ServerClassLabels, crate::metrics::Counter>; 6],
    response_seconds: Series<ServerLabels, crate::metrics::Histogram>,
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
        let now = Instant::now();
        let balancer = Balancer::new(cfg.algorithm, &specs(&cfg), settings(&cfg), seed, now);
        let budget = RetryBudget::new(cfg.retry_budget, cfg.min_retries_per_sec, RETRY_WINDOW, now);
        let budget = vec![budget; crate::workers::shard_count()];
        let files = tls_files_digest(&cfg);
        let tls = load_tls(&cfg);
        Self::assemble(cfg, metrics, balancer, budget, (tls, files), 0)
    }

    /// The pool a reload makes of this one for `cfg` (same name, other settings): servers
    /// that stay keep their state ([`crate::balance::reload::carry`]), the retry budget and
    /// the TLS client are kept when their settings are. From now on, what requests in flight
    /// on this pool report about a server that stays goes to the successor. Also returns,
    /// per new server, whether it was added.
    pub fn successor(
        &self,
        cfg: PoolConfig,
        metrics: Arc<Metrics>,
        seed: u64,
    ) -> (Arc<ServerPool>, Vec<bool>) {
        let now = Instant::now();
        let b = self.lock();
        let old_names: Vec<&str> = self.labels.iter().map(|l| l.server.as_str()).collect();
        let specs = specs(&cfg);
        let carried = crate::balance::reload::carry(
            &b,
            self.cfg.algorithm,
            &old_names,
            crate::balance::reload::NewPool {
                algo: cfg.algorithm,
                servers: &specs,
                settings: settings(&cfg),
                checks: cfg.health.is_some(),
                passive: cfg.passive.max_failures > 0,
                seed,
            },
            now,
        );
        let budget = if (cfg.retry_budget, cfg.min_retries_per_sec)
            == (self.cfg.retry_budget, self.cfg.min_retries_per_sec)
        {
            self.budget
                .iter()
                .map(|b| b.lock().unwrap_or_else(|e| e.into_inner()).clone())
                .collect()
        } else {
            let b = RetryBudget::new(cfg.retry_budget, cfg.min_retries_per_sec, RETRY_WINDOW, now);
            vec![b; crate::workers::shard_count()]
        };
        let files = tls_files_digest(&cfg);
        let (tls, epoch) = if cfg.tls == self.cfg.tls && files == self.tls_files {
            (self.tls.clone(), self.tls_epoch)
        } else {
            (load_tls(&cfg), self.tls_epoch.wrapping_add(1))
        };
        let new = Arc::new(Self::assemble(
            cfg,
            metrics,
            carried.balancer,
            budget,
            (tls, files),
            epoch,
        ));
        for (i, l) in self.labels.iter().enumerate() {
            if carried.moved[i].is_none() && !new.labels.contains(l) {
                self.forget_series(i);
            }
        }
        // Under the lock: every report made before this went into the state just carried,
        // every one after goes to the successor.
        let _ = self.next.set(Next {
            pool: Some(new.clone()),
            moved: carried.moved,
        });
        drop(b);
        (new, carried.added)
    }

    /// The pool was removed by a reload: its servers' series leave `/metrics`; requests
    /// still in flight finish on it.
    pub fn retire(&self) {
        let b = self.lock();
        for i in 0..self.labels.len() {
            self.forget_series(i);
        }
        let _ = self.next.set(Next {
            pool: None,
            moved: vec![None; self.labels.len()],
        });
        drop(b);
    }

    /// Removes server `i`'s series from the metric families.
    fn forget_series(&self, i: usize) {
        let m = &self.metrics;
        let l = &self.labels[i];
        m.pool_server_up.remove(l);
        m.pool_server_connections.remove(l);
        m.pool_server_errors.remove(l);
        m.pool_server_response_seconds.remove(l);
        let s = &self.series[i];
        for b in [&s.to_server, &s.from_server] {
            m.pool_server_bytes.remove(b.label());
        }
        for r in &s.requests {
            m.pool_server_requests.remove(r.label());
        }
    }

    fn assemble(
        cfg: PoolConfig,
        metrics: Arc<Metrics>,
        balancer: Balancer,
        budget: Vec<RetryBudget>,
        (tls, tls_files): (Option<Result<Arc<crate::tls::TlsClient>, String>>, u64),
        tls_epoch: u64,
    ) -> ServerPool {
        let secret = cfg.sticky.as_ref().map_or("", |s| s.secret.as_str());
        let tokens = cfg
            .servers
            .iter()
            .map(|s| crate::balance::sticky::token(&cfg.name, &s.label(), secret))
            .collect();
        let labels: Vec<ServerLabels> = cfg
            .servers
            .iter()
            .map(|s| ServerLabels {
                pool: cfg.name.clone(),
                server: s.label(),
            })
            .collect();
        let shared_labels = labels
            .iter()
            .map(|l| crate::workers::LocalName::new(Arc::from(l.server.as_str())))
            .collect();
        let now = Instant::now();
        let series = labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let up = metrics.pool_server_up.get_or_create(l).clone();
                up.set(i64::from(balancer.server(i).is_available(now)));
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
                    requests: std::array::from_fn(|c| {
                        Series::new(ServerClassLabels {
                            pool: l.pool.clone(),
                            server: l.server.clone(),
                            class: if c < 5 {
                                format!("{}xx", c + 1)
                            } else {
                                "other".to_string()
                            },
                        })
                    }),
                    response_seconds: Series::new(l.clone()),
                }
            })
            .collect();
        // WebSocket to an h2 pool goes over HTTP/1.1: its TLS offers only that by ALPN.
        let tls_h1 = cfg.tls.as_ref().filter(|_| cfg.h2).and_then(|t| {
            let mut t = t.clone();
            t.alpn = vec!["http/1.1".into()];
            crate::tls::TlsClient::new(&t).ok().map(Arc::new)
        });
        ServerPool {
            tls,
            tls_h1,
            pool_label: PoolLabel {
                pool: cfg.name.clone(),
            },
            cfg,
            balancer: crate::workers::Apart(Mutex::new(balancer)),
            budget: budget
                .into_iter()
                .map(|b| crate::workers::Apart(Mutex::new(b)))
                .collect(),
            shared_labels,
            metrics,
            labels,
            tokens,
            series,
            tls_epoch,
            tls_files,
            next: std::sync::OnceLock::new(),
        }
    }

    /// Whether the files `[pools.tls]` names changed on disk since this pool loaded them.
    pub fn tls_files_changed(&self) -> bool {
        tls_files_digest(&self.cfg) != self.tls_files
    }

    /// Part of the key of an idle TLS connection to this pool: changes when a reload
    /// changes `[pools.tls]`.
    pub fn tls_epoch(&self) -> u64 {
        self.tls_epoch
    }

    /// Runs `f` on the pool that holds server `i`'s state now, under its lock: this one, or
    /// (after reloads that kept the server) the newest successor. The flag says whether the
    /// server is still configured (its metric series exist).
    fn with_server<R>(
        &self,
        i: usize,
        f: impl FnOnce(&ServerPool, &mut Balancer, usize, bool) -> R,
    ) -> R {
        let mut b = self.lock();
        match self.next.get() {
            None => f(self, &mut b, i, true),
            Some(next) => match (&next.pool, next.moved.get(i).copied().flatten()) {
                (Some(p), Some(j)) => {
                    drop(b);
                    p.with_server(j, f)
                }
                _ => f(self, &mut b, i, false),
            },
        }
    }

    /// Where server `i` is configured now: this pool, or (after reloads that kept the
    /// server) the newest successor, with its index there; `None` once a reload removed
    /// the server or its pool.
    pub fn server_now(self: &Arc<Self>, i: usize) -> Option<(Arc<ServerPool>, usize)> {
        match self.next.get() {
            None => Some((self.clone(), i)),
            Some(next) => match (&next.pool, next.moved.get(i).copied().flatten()) {
                (Some(p), Some(j)) => p.server_now(j),
                _ => None,
            },
        }
    }

    /// [`ServerPool::with_server`] without the lock, for metrics: the pool and index of
    /// server `i` now, and whether it is still configured.
    fn live(&self, i: usize) -> (&ServerPool, usize, bool) {
        match self.next.get() {
            None => (self, i, true),
            Some(next) => match (&next.pool, next.moved.get(i).copied().flatten()) {
                (Some(p), Some(j)) => p.live(j),
                _ => (self, i, false),
            },
        }
    }

    /// The newest successor of this pool (itself when not replaced), for pool-wide state.
    fn newest(&self) -> &ServerPool {
        match self.next.get().and_then(|n| n.pool.as_ref()) {
            Some(p) => p.newest(),
            None => self,
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
                checks_up: b.server(i).active.is_up(),
                ejected: b.server(i).passive.is_ejected(now),
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

    /// [`ServerPool::label`], shared: this thread shard's copy ([`crate::workers::LocalName`]).
    pub fn shared_label(&self, i: usize) -> Arc<str> {
        self.shared_labels[i].here()
    }

    /// Picks a server for a connection from `client`, not one of `exclude`, and counts it in
    /// flight; call [`ServerPool::finished`] when the connection ends.
    pub fn pick(&self, client: IpAddr, exclude: &[usize]) -> Option<usize> {
        self.pick_with(client, None, exclude, Instant::now())
    }

    /// [`ServerPool::pick`] for an HTTP request: a `hash` pool whose `hash_key` is a header,
    /// cookie or the path hashes `hash_input` (from [`crate::balance::hash_input`]); without
    /// one (the request lacks the header or cookie) it hashes the client address. `now`: the
    /// caller's clock reading (one per request serves every step of it).
    pub fn pick_with(
        &self,
        client: IpAddr,
        hash_input: Option<&[u8]>,
        exclude: &[usize],
        now: Instant,
    ) -> Option<usize> {
        let (v4, v6);
        let key: &[u8] = match (&self.cfg.hash_key, hash_input) {
            (HashKey::ClientIp, _) | (_, None) => match crate::policy::matcher::canonical(client) {
                IpAddr::V4(a) => {
                    v4 = a.octets();
                    &v4
                }
                IpAddr::V6(a) => {
                    v6 = a.octets();
                    &v6
                }
            },
            (_, Some(input)) => input,
        };
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
        self.take(b, i, now);
        Some(i)
    }

    /// Counts a picked server in flight; an ejection that ran out ends here (the server is
    /// back, slowly). A pick made on a pool a reload just replaced is counted where the
    /// server's state now is.
    fn take(&self, mut b: MutexGuard<'_, Balancer>, i: usize, now: Instant) {
        if self.next.get().is_none() {
            Self::take_here(self, &mut b, i, now, true);
        } else {
            drop(b);
            self.with_server(i, |p, b, j, live| Self::take_here(p, b, j, now, live));
        }
    }

    fn take_here(p: &ServerPool, b: &mut Balancer, i: usize, now: Instant, live: bool) {
        let t = b.server_mut(i).passive.expire(now);
        p.after(b, i, t, "passive: ejection over", live, now);
        b.started(i);
        if live {
            p.series[i]
                .connections
                .get(&p.metrics.pool_server_connections)
                .inc();
        }
    }

    /// The server a sticky-session cookie names, when it is known, not in `exclude` and may be
    /// picked now (up and not ejected; with `fail_open`, any server when none is healthy); it
    /// is then in flight as after [`ServerPool::pick`]. `None`: pick normally, then set the
    /// cookie again ([`ServerPool::sticky_cookie`]).
    pub fn sticky_pick(&self, token: &[u8], exclude: &[usize], now: Instant) -> Option<usize> {
        let i = self.tokens.iter().position(|t| t.as_bytes() == token)?;
        let b = self.lock();
        let req = Request {
            key: None,
            exclude,
            prefer: Some(i),
            fail_open: self.cfg.fail_open,
        };
        if !b.may_take(i, &req, now) {
            return None;
        }
        self.take(b, i, now);
        Some(i)
    }

    /// The whole choice for one HTTP request: the server its sticky cookie names (when the
    /// pool has `[pools.sticky]` and that server may take it), else a pick hashing the
    /// pool's `hash_key` input from `headers`/`target` (the client address without one).
    /// The server is in flight (call [`ServerPool::finished`]); `set_cookie` is the
    /// `Set-Cookie` value to add to the response when the client's cookie is missing or
    /// names another server. `tls`: the client came over TLS (`Secure`).
    pub fn pick_request(
        &self,
        client: IpAddr,
        headers: &crate::http::codec::Headers,
        target: &str,
        exclude: &[usize],
        tls: bool,
        now: Instant,
    ) -> Option<Picked> {
        let token = self
            .cfg
            .sticky
            .as_ref()
            .and_then(|s| crate::balance::cookie(headers, &s.cookie));
        let i = match token.and_then(|t| self.sticky_pick(t, exclude, now)) {
            Some(i) => i,
            None => {
                let input = crate::balance::hash_input(&self.cfg.hash_key, headers, target);
                self.pick_with(client, input, exclude, now)?
            }
        };
        let set_cookie = match token {
            Some(t) if t == self.tokens[i].as_bytes() => None,
            _ => self.sticky_cookie(i, tls),
        };
        Some(Picked {
            server: i,
            set_cookie,
        })
    }

    /// Server `i`'s sticky-session token (the cookie's value).
    pub fn sticky_token(&self, i: usize) -> &str {
        &self.tokens[i]
    }

    /// The `Set-Cookie` value pinning a client to server `i`, when the pool has
    /// `[pools.sticky]`; `secure` adds `Secure` (the client came over TLS).
    pub fn sticky_cookie(&self, i: usize, secure: bool) -> Option<String> {
        let s = self.cfg.sticky.as_ref()?;
        Some(crate::balance::sticky::set_cookie(
            &s.cookie,
            &self.tokens[i],
            s.max_age,
            secure,
        ))
    }

    pub fn finished(&self, i: usize) {
        self.finished_at(i, Instant::now());
    }

    /// [`ServerPool::finished`] with the clock already read.
    pub fn finished_at(&self, i: usize, now: Instant) {
        self.with_server(i, |_, b, j, _| b.finished(j, None, now));
    }

    /// Real traffic reached server `i` (passive health).
    pub fn success(&self, i: usize) {
        self.success_at(i, Instant::now());
    }

    /// [`ServerPool::success`] with the clock already read.
    pub fn success_at(&self, i: usize, now: Instant) {
        self.with_server(i, |p, b, j, live| {
            let t = b.server_mut(j).passive.success();
            p.after(b, j, t, "passive: answered again", live, now);
        });
    }

    /// Real traffic failed at server `i`: a refused or timed-out connect, an ICMP error, no
    /// UDP reply (passive health).
    pub fn failure(&self, i: usize, why: &str) {
        let (p, j, live) = self.live(i);
        if live {
            p.series[j].errors.get(&p.metrics.pool_server_errors).inc();
        }
        let now = Instant::now();
        self.with_server(i, |p, b, j, live| {
            let t = b.server_mut(j).passive.failure(now, &p.cfg.passive);
            match b.server(j).passive.ejected_until() {
                Some(until) if t == Some(Transition::Down) => {
                    let why = format!("{why} (ejected for {:?})", until - now);
                    p.after(b, j, t, &why, live, now);
                }
                _ => p.after(b, j, t, why, live, now),
            }
        });
    }

    /// How an HTTP exchange with server `i` ended (passive health): a reset or a first-byte
    /// timeout counts against it, as does a 5xx when `passive.on_5xx` is set; any other
    /// response is a success.
    pub fn http_result(&self, i: usize, outcome: HttpOutcome) {
        self.http_result_at(i, outcome, Instant::now());
    }

    /// [`ServerPool::http_result`] with the clock already read (`now`: when the outcome was
    /// known).
    pub fn http_result_at(&self, i: usize, outcome: HttpOutcome, now: Instant) {
        if PassiveHealth::verdict(outcome, &self.cfg.passive) {
            self.success_at(i, now);
        } else {
            let why = match outcome {
                HttpOutcome::Status(s) => format!("passive: answered {s}"),
                HttpOutcome::Reset => "passive: connection reset before a response".into(),
                HttpOutcome::Timeout => "passive: no response head in time".into(),
            };
            self.failure(i, &why);
        }
    }

    /// A client request (not a retry) is about to go to this pool: it earns the retry budget.
    pub fn request_started(&self, now: Instant) {
        let budget = &self.newest().budget;
        if let Some(b) = budget.get(crate::workers::slot_of(budget.len())) {
            b.lock().unwrap_or_else(|e| e.into_inner()).deposit(now);
        }
    }

    /// Whether the retry budget allows one more retry now; `true` spends it.
    pub fn try_retry(&self) -> bool {
        let budget = &self.newest().budget;
        // Every shard's lock, always in index order (no two callers wait on each other).
        let mut held: Vec<_> = budget
            .iter()
            .map(|b| b.lock().unwrap_or_else(|e| e.into_inner()))
            .collect();
        let mut shards: Vec<&mut RetryBudget> = held.iter_mut().map(|g| &mut **g).collect();
        let own = crate::workers::shard_index();
        let ok = try_withdraw_sharded(&mut shards, own, Instant::now());
        drop(shards);
        drop(held);
        if !ok {
            self.metrics
                .pool_retry_budget_exhausted
                .get_or_create(&self.pool_label)
                .inc();
        }
        ok
    }

    /// A request that failed at server `i` is being retried on another server (metrics).
    pub fn retried(&self, i: usize) {
        tracing::debug!(pool = %self.cfg.name, server = %self.label(i), "retrying on another server");
        self.metrics
            .pool_retries
            .get_or_create(&self.pool_label)
            .inc();
    }

    /// Server `i` answered with `status` after `latency` (request sent to response head):
    /// per-server metrics, and a latency sample for `p2c-ewma`. Passive health is
    /// [`ServerPool::http_result`].
    pub fn observe(&self, i: usize, status: u16, latency: Duration) {
        self.observe_at(i, status, latency, Instant::now());
    }

    /// [`ServerPool::observe`] with the clock already read (`now`: when the head came).
    pub fn observe_at(&self, i: usize, status: u16, latency: Duration, now: Instant) {
        self.count_response(i, status, latency);
        self.with_server(i, |_, b, j, _| b.sample(j, latency, now));
    }

    /// [`ServerPool::observe_at`] and [`ServerPool::http_result_at`] for a response head
    /// with `status`, under one taking of the balancer's lock when passive health counts it
    /// a success (nearly always): the lock every request of every thread takes.
    pub fn answered_at(&self, i: usize, status: u16, latency: Duration, now: Instant) {
        if !PassiveHealth::verdict(HttpOutcome::Status(status), &self.cfg.passive) {
            self.observe_at(i, status, latency, now);
            self.http_result_at(i, HttpOutcome::Status(status), now);
            return;
        }
        self.count_response(i, status, latency);
        self.with_server(i, |p, b, j, live| {
            b.sample(j, latency, now);
            let t = b.server_mut(j).passive.success();
            p.after(b, j, t, "passive: answered again", live, now);
        });
    }

    /// Server `i`'s response metrics: its status class and latency.
    fn count_response(&self, i: usize, status: u16, latency: Duration) {
        let class = match status {
            100..=599 => usize::from(status / 100) - 1,
            _ => 5,
        };
        let (p, j, live) = self.live(i);
        if live {
            let s = &p.series[j];
            s.requests[class].get(&p.metrics.pool_server_requests).inc();
            s.response_seconds
                .get(&p.metrics.pool_server_response_seconds)
                .observe(latency.as_secs_f64());
        }
    }

    /// Readmits every server whose passive ejection has run out by `now` (logged, gauge set).
    fn refresh(&self, now: Instant) {
        let mut b = self.lock();
        for i in 0..b.len() {
            let t = b.server_mut(i).passive.expire(now);
            if t.is_some() {
                self.after(&mut b, i, t, "passive: ejection over", true, now);
            }
        }
    }

    /// One active check's result (a check that ends just after a reload replaced the pool
    /// counts in the successor, under its settings).
    fn checked(&self, i: usize, ok: bool, why: &str) {
        self.with_server(i, |p, b, j, live| {
            let Some(h) = &p.cfg.health else { return };
            let t = b.server_mut(j).active.observe(ok, h.rise, h.fall);
            p.after(b, j, t, why, live, Instant::now());
        });
    }

    /// Logs a transition, applies slow start, and sets the server's `up` gauge (`live`: the
    /// server is still configured, so its series exist). `now`: the caller's reading of the
    /// clock (one per event, not one per step).
    fn after(
        &self,
        b: &mut Balancer,
        i: usize,
        t: Option<Transition>,
        why: &str,
        live: bool,
        now: Instant,
    ) {
        b.server_mut(i).note(t, now);
        if live {
            // Stored only when it changes: a read leaves the cache line shared between the
            // cores, a store on every answered request took it from the other core.
            let up = i64::from(b.server(i).is_available(now));
            if self.series[i].up.get() != up {
                self.series[i].up.set(up);
            }
        }
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
        let (p, j, live) = self.live(i);
        if !live {
            return;
        }
        let s = &p.series[j];
        for (series, n) in [(&s.to_server, to_server), (&s.from_server, from_server)] {
            if n > 0 {
                series.get(&p.metrics.pool_server_bytes).inc_by(n);
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

    /// Whether the pool's servers are reached over TLS (`[pools.tls]`).
    pub fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS handshake with server `i` over a connected socket (within the pool's connect
    /// timeout), for a pool with `[pools.tls]` (see [`ServerPool::has_tls`]; without it, an
    /// error). An error is the caller's to count against the server, like a failed connect.
    pub async fn secure(
        &self,
        i: usize,
        tcp: TcpStream,
    ) -> std::io::Result<Box<crate::tls::client::TlsStream<TcpStream>>> {
        self.secure_as(i, tcp, false).await
    }

    /// [`ServerPool::secure`], offering only `http/1.1` by ALPN when `h1` is set (an `h2`
    /// pool's connection for a WebSocket upgrade).
    pub async fn secure_as(
        &self,
        i: usize,
        tcp: TcpStream,
        h1: bool,
    ) -> std::io::Result<Box<crate::tls::client::TlsStream<TcpStream>>> {
        let client = match (&self.tls, &self.tls_h1) {
            (None, _) => return Err(std::io::Error::other("the pool has no TLS")),
            (Some(Err(e)), _) => return Err(std::io::Error::other(e.clone())),
            (Some(Ok(_)), Some(c)) if h1 => c,
            (Some(Ok(c)), _) => c,
        };
        let host = self.cfg.servers[i].host.to_string();
        match tokio::time::timeout(self.cfg.connect_timeout, client.connect(tcp, &host)).await {
            Ok(Ok(tls)) => Ok(Box::new(tls)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HealthCheckConfig, HealthCheckKind};
    use crate::connector::Host;

    fn pool(fail_open: bool) -> (ServerPool, Arc<Metrics>) {
        pool_with(fail_open, |_| {})
    }

    fn pool_with(
        fail_open: bool,
        edit: impl FnOnce(&mut PoolConfig),
    ) -> (ServerPool, Arc<Metrics>) {
        let server = |port| ServerConfig {
            host: Host::Ip("127.0.0.1".parse().expect("ip")),
            port,
            weight: 1,
            agent: None,
        };
        let mut cfg = PoolConfig {
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
                init_state: None,
            }),
            passive: crate::balance::PassiveSettings {
                max_failures: 1,
                base_ejection: Duration::from_secs(60),
                max_ejection: Duration::from_secs(60),
                on_5xx: true,
            },
            tls: None,
            proxy_protocol: None,
            h2: false,
            websocket: Default::default(),
            retry_budget: 0.2,
            min_retries_per_sec: 0,
            sticky: Some(crate::config::StickyConfig {
                cookie: "GH_SRV".into(),
                max_age: None,
                secret: String::new(),
            }),
            first_byte_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
        };
        edit(&mut cfg);
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

    #[test]
    fn http_results_eject_on_5xx_and_resets() {
        let (p, m) = pool(false);
        p.http_result(0, HttpOutcome::Status(404));
        assert_eq!(up(&m, "127.0.0.1:1"), 1, "a 4xx is the client's problem");
        p.http_result(0, HttpOutcome::Status(503));
        assert_eq!(up(&m, "127.0.0.1:1"), 0);
        p.http_result(1, HttpOutcome::Reset);
        assert_eq!(up(&m, "127.0.0.1:2"), 0);
        assert_eq!(p.pick(CLIENT, &[]), None);
        let (lenient, m) = pool_with(false, |c| c.passive.on_5xx = false);
        lenient.http_result(0, HttpOutcome::Status(503));
        assert_eq!(up(&m, "127.0.0.1:1"), 1);
        lenient.http_result(0, HttpOutcome::Timeout);
        assert_eq!(up(&m, "127.0.0.1:1"), 0);
    }

    #[test]
    fn retry_budget_is_per_pool_and_counted() {
        let (p, m) = pool(false);
        for _ in 0..10 {
            p.request_started(Instant::now());
        }
        // 20% of 10 requests, no floor in this pool.
        assert!(p.try_retry());
        assert!(p.try_retry());
        assert!(!p.try_retry());
        p.retried(0);
        let label = PoolLabel { pool: "p".into() };
        assert_eq!(m.pool_retries.get_or_create(&label).get(), 1);
        assert_eq!(m.pool_retry_budget_exhausted.get_or_create(&label).get(), 1);
    }

    #[test]
    fn sticky_tokens_pick_their_server_while_it_is_up() {
        let (p, _) = pool(false);
        let t1 = p.sticky_token(1).to_string();
        assert_ne!(t1, p.sticky_token(0));
        assert!(!t1.contains("127.0.0.1"));
        for _ in 0..3 {
            assert_eq!(p.sticky_pick(t1.as_bytes(), &[], Instant::now()), Some(1));
            p.finished(1);
        }
        assert_eq!(p.sticky_pick(b"unknown", &[], Instant::now()), None);
        assert_eq!(p.sticky_pick(t1.as_bytes(), &[1], Instant::now()), None);
        let cookie = p.sticky_cookie(1, false).expect("sticky pool");
        assert_eq!(
            cookie,
            format!("GH_SRV={t1}; Path=/; HttpOnly; SameSite=Lax")
        );
        p.failure(1, "t");
        assert_eq!(
            p.sticky_pick(t1.as_bytes(), &[], Instant::now()),
            None,
            "ejected"
        );
        let (plain, _) = pool_with(false, |c| c.sticky = None);
        assert_eq!(plain.sticky_cookie(0, true), None);
    }

    #[test]
    fn pick_with_hashes_the_request_key_or_falls_back_to_the_client() {
        let (p, _) = pool_with(false, |c| {
            c.algorithm = crate::balance::Algorithm::Hash {
                balance_factor: None,
            };
            c.hash_key = HashKey::Header("X-User".into());
        });
        let mut on = [0usize; 2];
        for u in 0..200 {
            let key = format!("user-{u}");
            let i = p
                .pick_with(CLIENT, Some(key.as_bytes()), &[], Instant::now())
                .expect("server");
            p.finished(i);
            assert_eq!(
                p.pick_with(CLIENT, Some(key.as_bytes()), &[], Instant::now()),
                Some(i)
            );
            p.finished(i);
            on[i] += 1;
        }
        assert!(on[0] > 50 && on[1] > 50, "{on:?}");
        // No header: the client's address decides, the same way every time.
        let a = p
            .pick_with(CLIENT, None, &[], Instant::now())
            .expect("server");
        p.finished(a);
        assert_eq!(p.pick_with(CLIENT, None, &[], Instant::now()), Some(a));
    }

    #[test]
    fn observe_counts_classes_and_latency() {
        let (p, m) = pool(false);
        p.observe(0, 204, Duration::from_millis(5));
        p.observe(0, 503, Duration::from_millis(7));
        p.observe(0, 200, Duration::from_millis(1));
        let l = |class: &str| ServerClassLabels {
            pool: "p".into(),
            server: "127.0.0.1:1".into(),
            class: class.into(),
        };
        assert_eq!(m.pool_server_requests.get_or_create(&l("2xx")).get(), 2);
        assert_eq!(m.pool_server_requests.get_or_create(&l("5xx")).get(), 1);
        let text = m.encode();
        assert!(
            text.contains(
                "gatehouse_pool_server_response_seconds_count{pool=\"p\",server=\"127.0.0.1:1\"} 3"
            ),
            "{text}"
        );
    }

    #[test]
    fn pick_request_follows_the_cookie_and_sets_it_when_needed() {
        use crate::http::codec::Headers;
        let (p, _) = pool(false);
        let none = Headers::default();
        let first = p
            .pick_request(CLIENT, &none, "/", &[], true, Instant::now())
            .expect("server");
        p.finished(first.server);
        let cookie = first.set_cookie.expect("a new client gets the cookie");
        assert!(cookie.ends_with("; Secure"), "{cookie}");
        let token = p.sticky_token(first.server).to_string();
        let mut with = Headers::default();
        with.push("Cookie", format!("other=1; GH_SRV={token}"));
        for _ in 0..4 {
            let again = p
                .pick_request(CLIENT, &with, "/", &[], false, Instant::now())
                .expect("server");
            p.finished(again.server);
            assert_eq!(
                again,
                Picked {
                    server: first.server,
                    set_cookie: None
                }
            );
        }
        // Its server is ejected: another one, and a cookie naming it.
        p.failure(first.server, "t");
        let moved = p
            .pick_request(CLIENT, &with, "/", &[], false, Instant::now())
            .expect("server");
        assert_ne!(moved.server, first.server);
        let other = p.sticky_token(moved.server).to_string();
        assert_eq!(
            moved.set_cookie,
            Some(format!("GH_SRV={other}; Path=/; HttpOnly; SameSite=Lax"))
        );
        // Without [pools.sticky]: no cookie.
        let (plain, _) = pool_with(false, |c| c.sticky = None);
        let p2 = plain
            .pick_request(CLIENT, &with, "/", &[], false, Instant::now())
            .expect("server");
        assert_eq!(p2.set_cookie, None);
    }

    fn server_cfg(port: u16, weight: u32) -> ServerConfig {
        ServerConfig {
            host: Host::Ip("127.0.0.1".parse().expect("ip")),
            port,
            weight,
            agent: None,
        }
    }

    fn in_flight(p: &ServerPool) -> Vec<u64> {
        p.health().iter().map(|h| h.in_flight).collect()
    }

    #[test]
    fn a_successor_keeps_health_and_takes_reports_from_requests_in_flight() {
        let (old, m) = pool(false);
        // Server 2 down by checks; a request in flight on server 1.
        old.checked(1, false, "t");
        old.checked(1, false, "t");
        let started = old.pick(CLIENT, &[1]).expect("server 1");
        assert_eq!(started, 0);
        let mut cfg = old.cfg.clone();
        cfg.servers = vec![server_cfg(3, 1), server_cfg(2, 1), server_cfg(1, 5)];
        let (new, added) = old.successor(cfg, m.clone(), 1);
        assert_eq!(added, vec![true, false, false]);
        assert_eq!(in_flight(&new), vec![0, 0, 1]);
        assert!(!new.health()[1].checks_up, "127.0.0.1:2 stays down");
        assert_eq!(up(&m, "127.0.0.1:2"), 0);
        assert_eq!(up(&m, "127.0.0.1:3"), 1);
        // The request that outlived the reload ends, and its failure counts, in the new pool.
        old.failure(started, "t");
        old.finished(started);
        assert_eq!(in_flight(&new), vec![0, 0, 0]);
        assert!(new.health()[2].ejected);
        assert_eq!(up(&m, "127.0.0.1:1"), 0);
        // A late check on the old pool lands in the new one too.
        old.checked(1, true, "t");
        old.checked(1, true, "t");
        assert!(new.health()[1].checks_up);
        // A pick on the replaced pool is counted where the server's state now is.
        let (_, m2) = pool(false);
        let (a, _) = pool(false);
        let (b, _) = a.successor(a.cfg.clone(), m2, 2);
        let i = a.pick(CLIENT, &[]).expect("server");
        assert_eq!(in_flight(&b)[i], 1);
        a.finished(i);
        assert_eq!(in_flight(&b)[i], 0);
    }

    #[test]
    fn removed_servers_and_pools_leave_the_metrics() {
        let (old, m) = pool(false);
        old.bytes(1, 10, 10);
        let i = old.pick(CLIENT, &[0]).expect("server 2");
        let mut cfg = old.cfg.clone();
        cfg.servers.truncate(1);
        let (new, _) = old.successor(cfg, m.clone(), 1);
        let text = m.encode();
        assert!(!text.contains("127.0.0.1:2"), "{text}");
        assert!(text.contains("server=\"127.0.0.1:1\""), "{text}");
        // The request on the removed server ends without bringing its series back.
        old.bytes(i, 5, 5);
        old.failure(i, "t");
        old.finished(i);
        assert!(!m.encode().contains("127.0.0.1:2"));
        new.retire();
        assert!(!m.encode().contains("pool=\"p\",server"), "{}", m.encode());
    }

    #[test]
    fn tls_epoch_changes_only_with_the_tls_settings() {
        let (old, m) = pool(false);
        let mut cfg = old.cfg.clone();
        cfg.algorithm = crate::balance::Algorithm::LeastRequests;
        let (same, _) = old.successor(cfg.clone(), m.clone(), 1);
        assert_eq!(same.tls_epoch(), old.tls_epoch());
        cfg.tls = Some(crate::config::ClientTls {
            ca_file: None,
            server_name: Some("app.test".into()),
            verify: true,
            client_cert: None,
            alpn: Vec::new(),
            min_version: crate::config::TlsVersion::V1_2,
        });
        let (tls, _) = same.successor(cfg.clone(), m.clone(), 1);
        assert_ne!(tls.tls_epoch(), same.tls_epoch());
        cfg.slow_start = Duration::from_secs(1);
        let (kept, _) = tls.successor(cfg, m, 1);
        assert_eq!(kept.tls_epoch(), tls.tls_epoch());
    }

    #[test]
    fn tls_files_replaced_under_the_same_path_count_as_a_change() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "first").expect("write");
        let (old, m) = pool(false);
        let mut cfg = old.cfg.clone();
        cfg.tls = Some(crate::config::ClientTls {
            ca_file: Some(ca.clone()),
            server_name: Some("app.test".into()),
            verify: true,
            client_cert: None,
            alpn: Vec::new(),
            min_version: crate::config::TlsVersion::V1_2,
        });
        let (tls, _) = old.successor(cfg.clone(), m.clone(), 1);
        assert!(!tls.tls_files_changed());
        let (same, _) = tls.successor(cfg.clone(), m.clone(), 1);
        assert_eq!(same.tls_epoch(), tls.tls_epoch());
        std::fs::write(&ca, "second").expect("write");
        assert!(same.tls_files_changed());
        let (reread, _) = same.successor(cfg.clone(), m.clone(), 1);
        assert_ne!(reread.tls_epoch(), same.tls_epoch());
        assert!(!reread.tls_files_changed());
        std::fs::remove_file(&ca).expect("remove");
        assert!(reread.tls_files_changed(), "a file gone is a change too");
    }

    #[test]
    fn refresh_readmits_servers_whose_ejection_ran_out() {
        let (p, m) = pool(false);
        p.failure(0, "t");
        assert_eq!(up(&m, "127.0.0.1:1"), 0);
        p.refresh(Instant::now());
        assert_eq!(up(&m, "127.0.0.1:1"), 0, "ejected for 60 s");
        p.refresh(Instant::now() + Duration::from_secs(61));
        assert_eq!(up(&m, "127.0.0.1:1"), 1);
        assert_eq!(up(&m, "127.0.0.1:2"), 1);
    }
}
