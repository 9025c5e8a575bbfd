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
use crate::policy::hashpool::HashPool;
use crate::policy::login::Logins;
use crate::policy::{LocalAddrs, PolicyHolder};
use crate::shutdown::Shutdown;

/// What every listener shares: one connector, one upstream pool, metrics, the access log and
/// the shutdown signal.
pub struct Services {
    pub connector: Connector,
    pub pool: Arc<Pool>,
    /// Idle streams through tunnel agents of the forward proxy (a rule's `agent`), by agent
    /// and destination: the same limits as `pool`.
    pub agent_pool: Arc<Pool<Box<crate::tunnel::hub::Opened>>>,
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLog,
    pub shutdown: Shutdown,
    /// The shared HTTP cache, when enabled and some listener uses it.
    pub cache: Option<Arc<Cache>>,
    /// The compiled policy; a reload swaps it, connections keep the one they started with.
    pub policy: PolicyHolder,
    /// Proxy logins: the failed-login limiter and the fixed password-hashing pool.
    pub logins: Logins,
    /// The generated proxy auto-config file, regenerated on reload.
    pub pac: arc_swap::ArcSwap<String>,
    /// Per-client and per-user limits.
    pub limits: crate::limits::Limits,
    /// Bound on connecting to an upstream, also a parent's handshake.
    pub connect_timeout: std::time::Duration,
    /// The proxy's own addresses (interfaces, listeners), live; every policy reads it.
    pub local: Arc<LocalAddrs>,
    /// `[[pools]]`: upstream servers of the balancing listeners, with their health.
    pub pools: crate::pool::Pools,
    /// Reverse-tunnel agents connected to this relay (empty unless a tunnel listener runs).
    pub agents: crate::tunnel::Agents,
    /// `[runtime] per_core`: the worker threads accepted connections are handed to.
    pub workers: Option<Arc<crate::workers::Workers>>,
}

/// The proxy's own addresses from the config alone: every listener's bound IP. The live set
/// ([`Services::local`]) adds every interface address and the listeners' ports.
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

/// Every start-up problem, one per line with its key path and line, as one error.
fn problems(errs: Vec<crate::config::ConfigError>) -> anyhow::Error {
    let lines: Vec<String> = errs.iter().map(ToString::to_string).collect();
    anyhow::anyhow!("{}", lines.join("\n"))
}

pub struct Server {
    pub services: Arc<Services>,
    /// Running listeners, in config order.
    pub listeners: Vec<listener::Running>,
    pub admin: Option<SocketAddr>,
    /// The config in force (what a reload is compared with).
    config: Config,
    /// Reload and drain requests from the admin API, for the loop that owns the server.
    pub control: Option<tokio::sync::mpsc::Receiver<crate::admin::Control>>,
    /// The running `[agent]`, if any.
    agent: Option<crate::tunnel::agent::Running>,
}

impl Server {
    /// Binds all listeners and starts serving. Errors here are start-up errors (address in
    /// use, resolver configuration), reported before anything runs.
    pub async fn start(config: &Config) -> anyhow::Result<Server> {
        let prepared = crate::startup::prepare(config).map_err(problems)?;
        Self::start_prepared(config, prepared).await
    }

    /// Starts with what [`crate::startup::prepare`] checked and produced.
    pub async fn start_prepared(
        config: &Config,
        prepared: crate::startup::Prepared,
    ) -> anyhow::Result<Server> {
        let metrics = Arc::new(Metrics::new());
        let access_log = AccessLog::start(&config.access_log, metrics.clone()).await?;
        let connector = Connector::new(&config.dns, &config.upstream, metrics.clone())
            .context("setting up the DNS resolver")?;
        // The kernel's address list before the first request; the watcher keeps it current.
        let local = Arc::new(LocalAddrs::new());
        crate::ifwatch::refresh(&local);
        let policy = prepared.policy.with_local(local.clone());
        let wanted = config.listeners.iter().any(|l| match &l.kind {
            ListenerKind::Http(h) => h.cache,
            ListenerKind::Reverse(r) => crate::reverse::uses_cache(r),
            _ => false,
        });
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
        let hashing = HashPool::for_this_machine().context("starting the hashing threads")?;
        let logins = Logins::new(config.policy.login, hashing, metrics.clone());
        let services = Arc::new(Services {
            connector,
            pool: Pool::new(
                config.upstream.pool_max_idle_per_host,
                config.upstream.pool_idle_timeout,
            ),
            agent_pool: Pool::new(
                config.upstream.pool_max_idle_per_host,
                config.upstream.pool_idle_timeout,
            ),
            metrics: metrics.clone(),
            access_log,
            shutdown: Shutdown::new(),
            cache,
            policy: PolicyHolder::new(policy),
            logins,
            pac: arc_swap::ArcSwap::from_pointee(String::new()),
            limits: crate::limits::Limits::new(&config.limits),
            connect_timeout: config.upstream.connect_timeout,
            local,
            pools: crate::pool::Pools::new(&config.pools, metrics.clone()),
            agents: crate::tunnel::Agents::new(metrics.tunnel_streams_open.clone()),
            workers: match config.runtime.per_core {
                true => Some(Arc::new(
                    crate::workers::Workers::start(crate::workers::count(&config.runtime))
                        .context("starting the worker threads")?,
                )),
                false => None,
            },
        });
        crate::ifwatch::spawn(&services.local).context("starting the address watcher")?;
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

        let mut own: Vec<SocketAddr> = Vec::new();
        for (_, s) in &sockets {
            own.push(s.local_addr()?);
        }
        if let Some(s) = &admin_socket {
            own.push(s.local_addr()?);
        }
        services.local.set_listeners(own);
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
        services
            .metrics
            .stats
            .set_listeners(listener_info(&listeners));
        let agent = match &config.agent {
            Some(a) => {
                let agent = crate::tunnel::agent::Agent::new(a.clone(), services.clone())
                    .context("[agent]")?;
                Some(crate::tunnel::agent::Running::start(agent))
            }
            None => None,
        };
        let (control_tx, control) = tokio::sync::mpsc::channel(1);
        let admin = match admin_socket {
            Some(s) => {
                let addr = s.local_addr()?;
                tokio::spawn(crate::admin::serve(
                    s,
                    services.clone(),
                    prepared.admin_token,
                    control_tx,
                ));
                Some(addr)
            }
            None => None,
        };
        Ok(Server {
            services,
            listeners,
            admin,
            config: config.clone(),
            control: Some(control),
            agent,
        })
    }

    /// (listener name, bound address), in config order.
    pub fn bound(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .map(|r| (r.cfg.name.clone(), r.addr))
            .collect()
    }

    /// Drops each listener's spare descriptor (kept so a reload can hand the socket over):
    /// once the accept loops stop, the ports close and new clients are refused.
    pub fn release_listening_sockets(&mut self) {
        for r in &mut self.listeners {
            r.socket = None;
        }
    }

    /// Applies a new, already parsed config (SIGHUP). The policy is swapped at once for new
    /// connections; `[[pools]]` are added, replaced (servers that stay keep their health) or
    /// removed ([`crate::pool::Pools::reload`]); listeners that were removed or changed stop
    /// accepting (their connections go on), new or changed ones start. On an error the old
    /// policy stays in force. Settings of the shared services ([dns], [upstream],
    /// [access_log], [admin], [cache], [limits], [runtime], [agent]) need a restart; a change there is
    /// reported, not applied.
    pub async fn reload(&mut self, new: Config) -> anyhow::Result<()> {
        crate::ifwatch::refresh(&self.services.local);
        let policy = crate::startup::prepare(&new)
            .map_err(problems)?
            .policy
            .with_local(self.services.local.clone());
        // Pools first: listeners started below look theirs up, and kept ones take the new
        // pool objects on their next request or connection.
        self.services
            .pools
            .reload(&new.pools, &used_pools(&new), &self.services);
        let old = std::mem::take(&mut self.listeners);
        let (keep, stop): (Vec<_>, Vec<_>) = old
            .into_iter()
            .partition(|r| new.listeners.contains(&r.cfg));
        // A changed listener (same name, same address) keeps its listening socket: the new
        // accept loop takes it over, so the port is never closed.
        let mut handover: Vec<(String, SocketAddr, std::net::TcpListener)> = Vec::new();
        for mut r in stop {
            let same = new.listeners.iter().any(|l| {
                l.name == r.cfg.name
                    && l.listen == r.cfg.listen
                    && !matches!(l.kind, ListenerKind::Udp(_))
            });
            match r.socket.take() {
                Some(s) if same => {
                    tracing::info!(listener = %r.cfg.name, addr = %r.addr, "reload: restarting listener on its socket");
                    handover.push((r.cfg.name.clone(), r.cfg.listen, s));
                }
                _ => {
                    tracing::info!(listener = %r.cfg.name, addr = %r.addr, "reload: closing listener")
                }
            }
            r.stop.cancel();
            let _ = r.task.await;
        }
        let mut failed = None;
        for l in &new.listeners {
            if keep.iter().any(|r| r.cfg == *l) {
                continue;
            }
            let taken = handover
                .iter()
                .position(|(name, listen, _)| *name == l.name && *listen == l.listen)
                .map(|i| handover.swap_remove(i).2);
            let bound = match taken {
                Some(s) => TcpListener::from_std(s).map(Bound::Tcp),
                None => bind_any(l),
            };
            match bound {
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
        // Kept listeners keep their socket; their certificate files are read again (checked
        // above, so an error here is a file changed since).
        for r in &keep {
            if let Some(Err(e)) = r.tls.as_ref().map(|t| t.reload()) {
                failed = Some(anyhow::anyhow!(
                    "listener {:?}: TLS: {e}; keeping its old certificates",
                    r.cfg.name
                ));
            }
        }
        self.listeners.extend(keep);
        let own = self.listeners.iter().map(|r| r.addr).chain(self.admin);
        self.services.local.set_listeners(own.collect());
        self.services.policy.replace(policy);
        self.services
            .pac
            .store(Arc::new(crate::pac::generate(&new, &self.bound())));
        let info = listener_info(&self.listeners);
        self.services.metrics.stats.set_listeners(info);
        if let Err(e) = self.reload_agent(&new).await {
            failed = Some(e);
        }
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
            // Compared by value: its Debug masks the token.
            ("admin", self.config.admin != new.admin),
            ("cache", self.config.cache != new.cache),
            (
                "limits",
                format!("{:?}", self.config.limits) != format!("{:?}", new.limits),
            ),
            ("runtime", self.config.runtime != new.runtime),
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

impl Server {
    /// `[agent]` on reload: an agent whose settings or token changed closes its relay
    /// connections (the streams on them end) and dials again with the new ones; an
    /// unchanged one is left alone, sessions and all. A new section starts an agent, a
    /// removed one stops it. On an error the running agent stays.
    async fn reload_agent(&mut self, new: &Config) -> anyhow::Result<()> {
        use crate::tunnel::agent::{Agent, Running};
        let Some(cfg) = &new.agent else {
            if let Some(old) = self.agent.take() {
                tracing::info!("reload: [agent] removed; disconnecting from the relays");
                old.stop().await;
            }
            return Ok(());
        };
        let fresh = Agent::new(cfg.clone(), self.services.clone())
            .map_err(|e| anyhow::anyhow!("[agent]: {e}; keeping the running agent"))?;
        match self.agent.take() {
            Some(old) if old.agent().same_as(&fresh) => self.agent = Some(old),
            old => {
                if let Some(old) = old {
                    tracing::info!(agent = %cfg.name, "reload: [agent] changed; reconnecting with the new settings");
                    old.stop().await;
                }
                self.agent = Some(Running::start(fresh));
            }
        }
        Ok(())
    }
}

/// The running listeners for the live statistics, in config order.
fn listener_info(running: &[listener::Running]) -> Vec<crate::stats::ListenerInfo> {
    running
        .iter()
        .map(|r| crate::stats::ListenerInfo {
            name: r.cfg.name.clone(),
            kind: r.cfg.kind.name(),
            addr: r.addr,
        })
        .collect()
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
            ListenerKind::Reverse(r) => {
                let routes = r.hosts.iter().flat_map(|h| &h.routes);
                let pools = routes.chain(&r.default).filter(|r| r.agent.is_none());
                used.extend(pools.map(|r| r.pool.as_str()));
            }
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

impl Bound {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Bound::Tcp(s) => s.local_addr(),
            Bound::Udp(s) => s.local_addr(),
        }
    }
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
