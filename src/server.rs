//! Start-up and the shared services every listener kind uses.
//!
//! `Server::start` binds every listener (so the caller knows each bound address before any
//! traffic), then runs their accept loops on the one shutdown path.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::accesslog::AccessLog;
use crate::cache::Cache;
use crate::config::Config;
use crate::config::ListenerKind;
use crate::connector::Connector;
use crate::http::pool::Pool;
use crate::listener;
use crate::metrics::Metrics;
use crate::policy::login::LoginLimiter;
use crate::policy::{Policy, PolicyHolder};
use crate::shutdown::Shutdown;

/// What every listener shares: one connector, one upstream pool, metrics, the access log and
/// the shutdown signal.
pub struct Services {
    pub connector: Connector,
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLog,
    pub shutdown: Shutdown,
    /// The shared HTTP cache, when enabled and some listener uses it.
    pub cache: Option<Arc<Cache>>,
    /// The compiled policy; a reload swaps it, connections keep the one they started with.
    pub policy: PolicyHolder,
    /// Failed proxy logins per client address.
    pub logins: LoginLimiter,
    /// Bounds concurrent password hashing (bcrypt/argon2 are CPU-heavy on purpose).
    pub auth_permits: tokio::sync::Semaphore,
    /// The generated proxy auto-config file, regenerated on reload.
    pub pac: arc_swap::ArcSwap<String>,
    /// Per-client and per-user limits.
    pub limits: crate::limits::Limits,
    /// Bound on connecting to an upstream, also a parent's handshake.
    pub connect_timeout: std::time::Duration,
    /// `[[pools]]`: upstream servers of the balancing listeners, with their health.
    pub pools: crate::pool::Pools,
}

/// The proxy's own addresses, refused as destinations: every listener's bound IP.
pub fn own_addresses(config: &Config) -> Vec<std::net::IpAddr> {
    let mut ips: Vec<_> = config
        .listeners
        .iter()
        .map(|l| l.listen.ip())
        .chain(config.admin.iter().map(|a| a.listen.ip()))
        .filter(|ip| !ip.is_unspecified())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Compiles the policy and applies the open-proxy guard to every listener.
pub fn compile_policy(config: &Config) -> anyhow::Result<Policy> {
    let policy =
        Policy::compile(&config.policy, own_addresses(config)).context("compiling [policy]")?;
    for l in &config.listeners {
        // A balancing listener's destinations are its pool: it cannot be an open proxy.
        if matches!(l.kind, ListenerKind::Tcp(_) | ListenerKind::Udp(_)) {
            continue;
        }
        if let Err(e) = policy.open_proxy_check(&l.name, l.listen.ip()) {
            anyhow::bail!("{e}");
        }
    }
    Ok(policy)
}

pub struct Server {
    pub services: Arc<Services>,
    /// Running listeners, in config order.
    pub listeners: Vec<listener::Running>,
    pub admin: Option<SocketAddr>,
    /// The config in force (what a reload is compared with).
    config: Config,
}

impl Server {
    /// Binds all listeners and starts serving. Errors here are start-up errors (address in
    /// use, resolver configuration), reported before anything runs.
    pub async fn start(config: &Config) -> anyhow::Result<Server> {
        let metrics = Arc::new(Metrics::new());
        let access_log = AccessLog::start(&config.access_log, metrics.clone()).await?;
        let connector = Connector::new(&config.dns, &config.upstream, metrics.clone())
            .context("setting up the DNS resolver")?;
        let policy = compile_policy(config)?;
        let wanted = config
            .listeners
            .iter()
            .any(|l| matches!(&l.kind, ListenerKind::Http(h) if h.cache));
        let cache = if config.cache.enabled && wanted {
            // Opening the disk tier checks its index against its files: blocking work.
            let cfg = config.cache.clone();
            let cache = tokio::task::spawn_blocking(move || Cache::new(cfg))
                .await
                .context("opening the cache")?
                .context("opening the cache")?;
            Some(Arc::new(cache))
        } else {
            None
        };
        let services = Arc::new(Services {
            connector,
            pool: Pool::new(
                config.upstream.pool_max_idle_per_host,
                config.upstream.pool_idle_timeout,
            ),
            metrics: metrics.clone(),
            access_log,
            shutdown: Shutdown::new(),
            cache,
            policy: PolicyHolder::new(policy),
            logins: LoginLimiter::new(config.policy.login),
            auth_permits: tokio::sync::Semaphore::new(
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2),
            ),
            pac: arc_swap::ArcSwap::from_pointee(String::new()),
            limits: crate::limits::Limits::new(&config.limits),
            connect_timeout: config.upstream.connect_timeout,
            pools: crate::pool::Pools::new(&config.pools, metrics.clone()),
        });
        services
            .pools
            .start_health_checks(&used_pools(config), &services);

        let mut sockets = Vec::new();
        for l in &config.listeners {
            let socket = bind_any(l)
                .with_context(|| format!("listener {:?}: cannot listen on {}", l.name, l.listen))?;
            sockets.push((l.clone(), socket));
        }
        let admin_socket = match &config.admin {
            Some(a) => Some(
                bind(a.listen).with_context(|| format!("admin: cannot listen on {}", a.listen))?,
            ),
            None => None,
        };

        let mut listeners = Vec::new();
        for (l, socket) in sockets {
            listeners.push(spawn_any(socket, l, services.clone())?);
        }
        let bound: Vec<_> = listeners
            .iter()
            .map(|r| (r.cfg.name.clone(), r.addr))
            .collect();
        services
            .pac
            .store(Arc::new(crate::pac::generate(config, &bound)));
        let admin = match admin_socket {
            Some(s) => {
                let addr = s.local_addr()?;
                tokio::spawn(crate::admin::serve(s, services.clone()));
                Some(addr)
            }
            None => None,
        };
        Ok(Server {
            services,
            listeners,
            admin,
            config: config.clone(),
        })
    }

    /// (listener name, bound address), in config order.
    pub fn bound(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .map(|r| (r.cfg.name.clone(), r.addr))
            .collect()
    }

    /// Applies a new, already parsed config (SIGHUP). The policy is swapped at once for new
    /// connections; listeners that were removed or changed stop accepting (their connections
    /// go on), new or changed ones start. On an error the old policy stays in force.
    /// Settings of the shared services ([dns], [upstream], [access_log], [admin], [cache],
    /// [shutdown]) need a restart; a change there is reported, not applied.
    pub async fn reload(&mut self, new: Config) -> anyhow::Result<()> {
        let policy = compile_policy(&new)?;
        let old = std::mem::take(&mut self.listeners);
        let (keep, stop): (Vec<_>, Vec<_>) = old
            .into_iter()
            .partition(|r| new.listeners.contains(&r.cfg));
        for r in stop {
            tracing::info!(listener = %r.cfg.name, addr = %r.addr, "reload: closing listener");
            r.stop.cancel();
            let _ = r.task.await;
        }
        let mut failed = None;
        for l in &new.listeners {
            if keep.iter().any(|r| r.cfg == *l) {
                continue;
            }
            match bind_any(l) {
                Ok(socket) => match spawn_any(socket, l.clone(), self.services.clone()) {
                    Ok(r) => {
                        tracing::info!(listener = %l.name, addr = %r.addr, "ready");
                        self.listeners.push(r);
                    }
                    Err(e) => failed = Some(anyhow::anyhow!("listener {:?}: {e}", l.name)),
                },
                Err(e) => {
                    failed = Some(anyhow::anyhow!(
                        "listener {:?}: cannot listen on {}: {e}",
                        l.name,
                        l.listen
                    ))
                }
            }
        }
        self.listeners.extend(keep);
        self.services.policy.replace(policy);
        self.services
            .pac
            .store(Arc::new(crate::pac::generate(&new, &self.bound())));
        let restart_needed = [
            (
                "dns",
                format!("{:?}", self.config.dns) != format!("{:?}", new.dns),
            ),
            (
                "upstream",
                format!("{:?}", self.config.upstream) != format!("{:?}", new.upstream),
            ),
            (
                "access_log",
                format!("{:?}", self.config.access_log) != format!("{:?}", new.access_log),
            ),
            (
                "admin",
                format!("{:?}", self.config.admin) != format!("{:?}", new.admin),
            ),
            ("cache", self.config.cache != new.cache),
            (
                "pools",
                format!("{:?}", self.config.pools) != format!("{:?}", new.pools),
            ),
            (
                "limits",
                format!("{:?}", self.config.limits) != format!("{:?}", new.limits),
            ),
        ];
        for (section, changed) in restart_needed {
            if changed {
                tracing::warn!("reload: [{section}] changed; it takes effect at the next restart");
            }
        }
        self.config = new;
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The pools some listener balances over (only those get health checks).
fn used_pools(config: &Config) -> Vec<&str> {
    let mut used = Vec::new();
    for l in &config.listeners {
        match &l.kind {
            ListenerKind::Tcp(t) => {
                used.extend(t.pool.as_deref());
                used.extend(t.sni.iter().map(|r| r.pool.as_str()));
            }
            ListenerKind::Udp(u) => used.push(u.pool.as_str()),
            _ => {}
        }
    }
    used
}

/// A bound listening socket: TCP for every kind but `udp`.
enum Bound {
    Tcp(TcpListener),
    Udp(tokio::net::UdpSocket),
}

fn bind_any(l: &crate::config::ListenerConfig) -> std::io::Result<Bound> {
    match l.kind {
        ListenerKind::Udp(_) => {
            let s = std::net::UdpSocket::bind(l.listen)?;
            s.set_nonblocking(true)?;
            Ok(Bound::Udp(tokio::net::UdpSocket::from_std(s)?))
        }
        _ => bind(l.listen).map(Bound::Tcp),
    }
}

fn spawn_any(
    b: Bound,
    l: crate::config::ListenerConfig,
    svc: Arc<Services>,
) -> anyhow::Result<listener::Running> {
    match b {
        Bound::Tcp(s) => listener::spawn(s, l, svc),
        Bound::Udp(s) => crate::l4::udp::spawn(s, l, svc),
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
