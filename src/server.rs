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
}

pub struct Server {
    pub services: Arc<Services>,
    /// (listener name, bound address), in config order.
    pub bound: Vec<(String, SocketAddr)>,
    pub admin: Option<SocketAddr>,
}

impl Server {
    /// Binds all listeners and starts serving. Errors here are start-up errors (address in
    /// use, resolver configuration), reported before anything runs.
    pub async fn start(config: &Config) -> anyhow::Result<Server> {
        let metrics = Arc::new(Metrics::new());
        let access_log = AccessLog::start(&config.access_log, metrics.clone()).await?;
        let connector = Connector::new(&config.dns, &config.upstream, metrics.clone())
            .context("setting up the DNS resolver")?;
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
            metrics,
            access_log,
            shutdown: Shutdown::new(),
            cache,
        });

        let mut sockets = Vec::new();
        for l in &config.listeners {
            let socket = bind(l.listen)
                .with_context(|| format!("listener {:?}: cannot listen on {}", l.name, l.listen))?;
            sockets.push((l.clone(), socket));
        }
        let admin_socket = match &config.admin {
            Some(a) => Some(
                bind(a.listen).with_context(|| format!("admin: cannot listen on {}", a.listen))?,
            ),
            None => None,
        };

        let mut bound = Vec::new();
        for (l, socket) in sockets {
            bound.push((l.name.clone(), socket.local_addr()?));
            listener::spawn(socket, l, services.clone());
        }
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
            bound,
            admin,
        })
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
