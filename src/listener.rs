//! Accept loops. Every listener kind goes through here: a cap on concurrent connections,
//! a tracing span per connection, the shared shutdown, then the kind's own handler.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{ListenerConfig, ListenerKind};
use crate::fdlimit;
use crate::http::proxy::{HttpProxy, Role};
use crate::metrics::ListenerMetrics;
use crate::server::Services;
use crate::socks::SocksServer;
use crate::workers::Placing;

/// The handler for one listener kind.
#[derive(Clone)]
enum Handler {
    Http(Arc<HttpProxy>),
    /// HTTP over TLS terminated here (a `reverse` listener with `[listeners.tls]`).
    Https(Arc<HttpProxy>, Arc<crate::tls::TlsServer>),
    Socks(Arc<SocksServer>),
    Tcp(Arc<crate::l4::tcp::TcpBalancer>),
    Tunnel(Arc<crate::tunnel::TunnelListener>),
    Published(Arc<crate::tunnel::published::Published>),
}

/// A listener's accept loop, as started: cancel `stop` to close it (connections it accepted
/// go on), then await `task`.
pub struct Running {
    pub cfg: ListenerConfig,
    pub addr: SocketAddr,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
    /// The listener's TLS, when it terminates TLS: a reload that keeps the listener calls
    /// [`crate::tls::TlsServer::reload`] so new connections get the new certificates.
    pub tls: Option<Arc<crate::tls::TlsServer>>,
    /// A second descriptor of the listening socket: a reload that changes the listener's
    /// settings but not its address hands it to the new accept loop, so the port never
    /// closes (clients wait in the backlog meanwhile instead of being refused).
    pub socket: Option<std::net::TcpListener>,
}

pub fn spawn(
    socket: TcpListener,
    cfg: ListenerConfig,
    svc: Arc<Services>,
) -> anyhow::Result<Running> {
    let addr = socket.local_addr()?;
    let std = socket.into_std()?;
    let dup = std.try_clone().ok();
    let name: Arc<str> = Arc::from(cfg.name.as_str());
    let tls = match &cfg.kind {
        ListenerKind::Socks(s) => s.tls.as_ref(),
        ListenerKind::Tcp(t) => t.tls.as_ref(),
        ListenerKind::Reverse(r) => r.tls.as_ref(),
        _ => None,
    };
    let tls = match tls {
        Some(t) => Some(Arc::new(
            crate::tls::TlsServer::new(t).with_context(|| format!("listener {name:?}: TLS"))?,
        )),
        None => None,
    };
    let handler = match &cfg.kind {
        ListenerKind::Http(h) => Handler::Http(Arc::new_cyclic(|me| HttpProxy {
            name: name.clone(),
            cfg: h.clone(),
            svc: svc.clone(),
            role: Role::Forward,
            series: ListenerMetrics::new(&name),
            local_name: crate::workers::LocalName::new(name.clone()),
            me: me.clone(),
        })),
        ListenerKind::Reverse(r) => {
            let reverse = crate::http::reverse::Reverse::new(&name, r, &svc, tls.clone())
                .with_context(|| format!("listener {name:?}"))?;
            let proxy = Arc::new_cyclic(|me| HttpProxy {
                name: name.clone(),
                cfg: r.http.clone(),
                svc: svc.clone(),
                role: Role::Reverse(Box::new(reverse)),
                series: ListenerMetrics::new(&name),
                local_name: crate::workers::LocalName::new(name.clone()),
                me: me.clone(),
            });
            match &tls {
                Some(t) => Handler::Https(proxy, t.clone()),
                None => Handler::Http(proxy),
            }
        }
        ListenerKind::Socks(s) => Handler::Socks(Arc::new(SocksServer {
            name: name.clone(),
            cfg: s.clone(),
            svc: svc.clone(),
            tls: tls.clone(),
        })),
        ListenerKind::Tcp(t) => Handler::Tcp(Arc::new(crate::l4::tcp::TcpBalancer::new(
            name.clone(),
            t.clone(),
            svc.clone(),
            tls.clone(),
            addr,
        )?)),
        ListenerKind::Tunnel(t) => Handler::Tunnel(Arc::new(
            crate::tunnel::TunnelListener::new(name.clone(), t.clone(), svc.clone())
                .with_context(|| format!("listener {name:?}"))?,
        )),
        ListenerKind::Published(p) => {
            Handler::Published(Arc::new(crate::tunnel::published::Published {
                name: name.clone(),
                cfg: p.clone(),
                svc: svc.clone(),
            }))
        }
        ListenerKind::Udp(_) => {
            anyhow::bail!("listener {name:?}: a udp listener has no accept loop")
        }
    };
    tracing::info!(listener = %name, kind = cfg.kind.name(), %addr, "listening");
    // Opened now, while descriptors are to be had.
    std::sync::LazyLock::force(&fdlimit::RESERVE);
    let stop = svc.shutdown.child();
    let limit = Arc::new(Semaphore::new(cfg.max_connections));
    let task = match svc.workers.clone() {
        // `[runtime] per_core`: every worker accepts from the listening socket itself (a
        // descriptor of it registered with the worker's own event loop), so a connection is
        // served where it was accepted, with no hand-over between threads.
        Some(workers) => {
            // Every descriptor registered before any loop starts: an error leaves no loop
            // accepting behind a listener that failed to start.
            let mut sockets = Vec::with_capacity(workers.len());
            for i in 0..workers.len() {
                let _on = workers.handle(i).enter();
                sockets.push(TcpListener::from_std(std.try_clone()?)?);
            }
            drop(std);
            let loops: Vec<_> = (0..workers.len())
                .zip(sockets)
                .map(|(i, socket)| {
                    workers.handle(i).spawn(accept_loop(
                        socket,
                        limit.clone(),
                        name.clone(),
                        handler.clone(),
                        svc.clone(),
                        stop.clone(),
                    ))
                })
                .collect();
            tokio::spawn(async move {
                for l in loops {
                    let _ = l.await;
                }
            })
        }
        None => tokio::spawn(accept_loop(
            TcpListener::from_std(std)?,
            limit,
            name,
            handler,
            svc,
            stop.clone(),
        )),
    };
    Ok(Running {
        cfg,
        addr,
        stop,
        task,
        tls,
        socket: dup,
    })
}

/// Accepts connections from `socket` until `stop`: on the main runtime (the shared
/// scheduler), or on one per-core worker (one such loop per worker, all on the same
/// listening socket, sharing `limit`).
async fn accept_loop(
    socket: TcpListener,
    limit: Arc<Semaphore>,
    name: Arc<str>,
    handler: Handler,
    svc: Arc<Services>,
    stop: CancellationToken,
) {
    let series = ListenerMetrics::new(&name);
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
                Err(e) if fdlimit::is_exhausted(&e) => {
                    // Out of descriptors: answer the waiting client with the reserve one.
                    refuse_exhausted(&socket, &name, matches!(handler, Handler::Http(_))).await;
                    continue;
                }
                Err(e) => {
                    // Anything else: back off instead of spinning; never exit.
                    tracing::warn!(listener = %name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        if fdlimit::RESERVE.is_lent() {
            // Out of descriptors, and another worker freed the reserve's to answer the client
            // whose accept failed: this accept most likely took that descriptor. Answer this
            // client as that one would have been, so the descriptor goes back to the reserve.
            refuse(&stream, matches!(handler, Handler::Http(_))).await;
            continue;
        }
        let span = tracing::debug_span!("conn", listener = %name, %peer);
        // Per-client connection limits: over them, the connection is closed at once.
        let limit = match svc.limits.connection(peer.ip()) {
            Ok(g) => g,
            Err(e) => {
                tracing::debug!(listener = %name, %peer, "refused at accept: {e}");
                drop(stream);
                continue;
            }
        };
        let open = series.accepted(&svc.metrics);
        let (worker, slot) = match &svc.workers {
            Some(w) => {
                // A published port's connection (a `via_agent` SOCKS client's) is one stream
                // on a link of its agent: on the worker driving such a link, its frames wake
                // no other thread.
                let agent = match &handler {
                    Handler::Published(p) => Some(p.cfg.agent.as_str()),
                    Handler::Socks(s) => s.cfg.via_agent.as_deref(),
                    _ => None,
                };
                let homes = agent.map(|a| svc.agents.homes(a)).unwrap_or_default();
                // An agent's link goes where the fewest links are (wherever accepted): the
                // agent dials several to use several cores.
                let placing = match &handler {
                    Handler::Tunnel(_) => Placing::Link,
                    _ => Placing::Client { among: &homes },
                };
                let (i, slot) = w.place(placing);
                // Served here (this worker keeps it), or handed over.
                let over = (crate::workers::current() != Some(i)).then(|| w.handle(i).clone());
                (over, Some(slot))
            }
            None => (None, None),
        };
        let guard = ConnGuard {
            open,
            _permit: permit,
            _limit: limit,
            _slot: slot,
        };
        // Each kind is spawned on its own (`Accepted::spawn` once per kind), so an HTTP task is
        // not sized for a SOCKS one: one future over all six kinds would size every
        // connection's task for the largest (with `per_core`, an idle HTTP/1.1 client held
        // about 12 KiB instead of under 2).
        let on = Accepted {
            svc: &svc,
            worker: worker.as_ref(),
            stream,
            peer,
            guard,
            span,
        };
        match &handler {
            Handler::Http(h) => {
                let h = h.clone();
                on.spawn(move |s| h.serve(s, peer));
            }
            Handler::Https(h, tls) => {
                let (h, tls) = (h.clone(), tls.clone());
                on.spawn(move |s| h.serve_tls(s, peer, tls));
            }
            Handler::Socks(x) => {
                let x = x.clone();
                on.spawn(move |s| x.serve(s, peer));
            }
            Handler::Tcp(t) => {
                let t = t.clone();
                on.spawn(move |s| t.serve(s, peer));
            }
            Handler::Tunnel(t) => {
                let t = t.clone();
                on.spawn(move |s| t.serve(s, peer));
            }
            Handler::Published(p) => {
                let p = p.clone();
                on.spawn(move |s| p.serve(s, peer));
            }
        }
    }
}

/// One accepted connection on its way to its task: the worker it is handed to
/// (`[runtime] per_core`; `None`: served on this runtime), its guard and its span.
struct Accepted<'a> {
    svc: &'a Services,
    worker: Option<&'a tokio::runtime::Handle>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    guard: ConnGuard,
    span: tracing::Span,
}

impl Accepted<'_> {
    /// Spawns `serve` for the connection: here (the shared scheduler, or the per-core worker
    /// that accepted it), or on another worker's own event loop (deregistered here,
    /// registered there). The task holds `serve`'s future itself (no `async move` wrapper
    /// holding it twice over).
    fn spawn<F, Fut>(self, serve: F)
    where
        F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let Accepted {
            svc,
            worker,
            stream,
            peer,
            guard: _guard,
            span,
        } = self;
        let Some(worker) = worker else {
            let fut = serve(stream);
            svc.shutdown
                .spawn(WithGuard { fut, _guard }.instrument(span));
            return;
        };
        let std = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                span.in_scope(|| tracing::debug!("cannot hand over to a worker: {e}"));
                return;
            }
        };
        let fut = registered(std, peer, serve);
        svc.shutdown
            .spawn_on(WithGuard { fut, _guard }.instrument(span), worker);
    }
}

/// A connection handed to a worker (`[runtime] per_core`): registered with that worker's
/// event loop where it runs, then served by `serve`.
async fn registered<F, Fut>(std: std::net::TcpStream, peer: SocketAddr, serve: F)
where
    F: FnOnce(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    match tokio::net::TcpStream::from_std(std) {
        Ok(s) => serve(s).await,
        Err(e) => tracing::debug!(%peer, "cannot register on the worker: {e}"),
    }
}

/// How long a client accepted only to be refused may take to send its first bytes (the
/// accept loop and the reserve descriptor wait meanwhile).
const REFUSE_WAIT: Duration = Duration::from_millis(250);

/// `accept` failed for want of descriptors: closes the reserve descriptor, accepts the client
/// at the head of the backlog, answers it in its protocol (see [`fdlimit::refusal`]), closes
/// it and reopens the reserve. Connections already accepted are not touched. Without a
/// reserve (another listener holds it, or it could not be reopened) it backs off instead.
async fn refuse_exhausted(socket: &TcpListener, name: &str, http: bool) {
    static LAST_WARN: AtomicU64 = AtomicU64::new(0);
    let reserve = &*fdlimit::RESERVE;
    // A reserve lost to a race (its freed descriptor taken by another worker's accept or a
    // connect before the refill) is taken back first, from a descriptor freed since.
    reserve.recover();
    if reserve.release() {
        // Poll once: the client that made accept fail is still queued; if it went, nothing.
        let accepted = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match socket.poll_accept(cx) {
                std::task::Poll::Ready(r) => Some(r),
                std::task::Poll::Pending => None,
            })
        })
        .await;
        if let Some(Ok((stream, peer))) = accepted {
            refuse(&stream, http).await;
            drop(stream);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if LAST_WARN.swap(now, Ordering::Relaxed) != now {
                tracing::warn!(listener = %name, %peer, "out of file descriptors: refusing new clients");
            } else {
                tracing::debug!(listener = %name, %peer, "out of file descriptors: refused");
            }
        }
        if reserve.refill() {
            return;
        }
        tracing::debug!(listener = %name, "reserve descriptor not reopened");
    } else {
        tracing::debug!(listener = %name, "reserve descriptor spent");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Answers a refused client: its first bytes are awaited briefly (they tell its protocol),
/// what it sent is read (so the close is a FIN, not a reset that could discard the answer),
/// the refusal written, the side shut. A client silent for [`REFUSE_WAIT`] is just closed.
async fn refuse(stream: &tokio::net::TcpStream, http: bool) {
    let deadline = tokio::time::Instant::now() + REFUSE_WAIT;
    let mut first = [0u8; 1024];
    // Readiness can be spurious: read until bytes, EOF, an error or the deadline.
    let n = loop {
        match stream.try_read(&mut first) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            r => break r.unwrap_or(0),
        }
        if tokio::time::timeout_at(deadline, stream.readable())
            .await
            .is_err()
        {
            break 0;
        }
    };
    for _ in 0..16 {
        let mut rest = [0u8; 1024];
        match stream.try_read(&mut rest) {
            Ok(m) if m > 0 => {}
            _ => break,
        }
    }
    let _ = stream.try_write(fdlimit::refusal(http, &first[..n]));
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
}

/// Held for a connection's life: counts it open and holds its `max_connections` slot.
struct ConnGuard {
    open: prometheus_client::metrics::gauge::Gauge,
    _permit: tokio::sync::OwnedSemaphorePermit,
    _limit: crate::limits::ConnGuard,
    /// The connection's place in its worker's count (`[runtime] per_core`).
    _slot: Option<crate::workers::Slot>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.open.dec();
    }
}

pin_project_lite::pin_project! {
    /// A connection future with its guard: the guard drops when the future completes or is
    /// dropped.
    struct WithGuard<F> {
        #[pin]
        fut: F,
        _guard: ConnGuard,
    }
}

impl<F: std::future::Future<Output = ()>> std::future::Future for WithGuard<F> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        self.project().fut.poll(cx)
    }
}
