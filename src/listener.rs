//! Accept loops. Every listener kind goes through here: a cap on concurrent connections,
//! a tracing span per connection, the shared shutdown, then the kind's own handler.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{ListenerConfig, ListenerKind};
use crate::http::proxy::HttpProxy;
use crate::metrics::Metrics;
use crate::server::Services;

/// The handler for one listener kind.
enum Handler {
    Http(Arc<HttpProxy>),
}

/// A listener's accept loop, as started: cancel `stop` to close it (connections it accepted
/// go on), then await `task`.
pub struct Running {
    pub cfg: ListenerConfig,
    pub addr: std::net::SocketAddr,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

pub fn spawn(
    socket: TcpListener,
    cfg: ListenerConfig,
    svc: Arc<Services>,
) -> std::io::Result<Running> {
    let addr = socket.local_addr()?;
    let name: Arc<str> = Arc::from(cfg.name.as_str());
    let handler = match &cfg.kind {
        ListenerKind::Http(h) => Handler::Http(Arc::new(HttpProxy {
            name: name.clone(),
            cfg: h.clone(),
            svc: svc.clone(),
        })),
    };
    tracing::info!(listener = %name, kind = cfg.kind.name(), %addr, "listening");
    let stop = svc.shutdown.child();
    let task = tokio::spawn(accept_loop(
        socket,
        cfg.max_connections,
        name,
        handler,
        svc,
        stop.clone(),
    ));
    Ok(Running {
        cfg,
        addr,
        stop,
        task,
    })
}

async fn accept_loop(
    socket: TcpListener,
    max: usize,
    name: Arc<str>,
    handler: Handler,
    svc: Arc<Services>,
    stop: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(max));
    let label = Metrics::listener(&name);
    loop {
        // At the cap, stop accepting: new clients wait in the kernel's backlog.
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.cancelled() => return,
        };
        let (stream, peer) = tokio::select! {
            r = socket.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; never exit.
                    tracing::warn!(listener = %name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        svc.metrics.connections_total.get_or_create(&label).inc();
        let open = svc.metrics.connections_open.get_or_create(&label).clone();
        open.inc();
        let span = tracing::debug_span!("conn", listener = %name, %peer);
        let fut = match &handler {
            Handler::Http(h) => h.clone().serve(stream, peer),
        };
        svc.shutdown.spawn(
            async move {
                fut.await;
                open.dec();
                drop(permit);
            }
            .instrument(span),
        );
    }
}
