//! Accept loops. Every listener kind goes through here: a cap on concurrent connections,
//! a tracing span per connection, the shared shutdown, then the kind's own handler.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::Either;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::config::{ListenerConfig, ListenerKind};
use crate::http::proxy::HttpProxy;
use crate::metrics::Metrics;
use crate::server::Services;
use crate::socks::{self, SocksServer};

/// The handler for one listener kind.
enum Handler {
    Http(Arc<HttpProxy>),
    Socks(Arc<SocksServer>),
}

/// Starts a listener's accept loop. Fails (before serving anything) when the kind's own
/// set-up does, e.g. a TLS certificate that cannot be loaded.
pub fn spawn(socket: TcpListener, cfg: ListenerConfig, svc: Arc<Services>) -> anyhow::Result<()> {
    let name: Arc<str> = Arc::from(cfg.name.as_str());
    let handler = match &cfg.kind {
        ListenerKind::Http(h) => Handler::Http(Arc::new(HttpProxy {
            name: name.clone(),
            cfg: h.clone(),
            svc: svc.clone(),
        })),
        ListenerKind::Socks(s) => Handler::Socks(Arc::new(SocksServer {
            name: name.clone(),
            cfg: s.clone(),
            svc: svc.clone(),
            tls: match &s.tls {
                Some(files) => Some(socks::tls::acceptor(files).with_context(|| format!("listener {name:?}: TLS"))?),
                None => None,
            },
        })),
    };
    tracing::info!(listener = %name, kind = cfg.kind.name(), addr = %socket.local_addr().map(|a| a.to_string()).unwrap_or_default(), "listening");
    tokio::spawn(accept_loop(socket, cfg.max_connections, name, handler, svc));
    Ok(())
}

async fn accept_loop(socket: TcpListener, max: usize, name: Arc<str>, handler: Handler, svc: Arc<Services>) {
    let limit = Arc::new(Semaphore::new(max));
    let label = Metrics::listener(&name);
    loop {
        // At the cap, stop accepting: new clients wait in the kernel's backlog.
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = svc.shutdown.draining() => return,
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
            _ = svc.shutdown.draining() => return,
        };
        svc.metrics.connections_total.get_or_create(&label).inc();
        let open = svc.metrics.connections_open.get_or_create(&label).clone();
        open.inc();
        let span = tracing::debug_span!("conn", listener = %name, %peer);
        let fut = match &handler {
            Handler::Http(h) => Either::Left(h.clone().serve(stream, peer)),
            Handler::Socks(s) => Either::Right(s.clone().serve(stream, peer)),
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
