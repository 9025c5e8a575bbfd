//! One shutdown path for every listener kind.
//!
//! `stop` is cancelled on the first SIGTERM: listeners stop accepting, idle keep-alive
//! connections close, requests and tunnels in flight go on. Every connection task is spawned
//! on the shared [`TaskTracker`], so `main` can wait for them up to the drain deadline.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Shutdown {
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Begin draining: no new connections, no new requests on kept-alive ones.
    pub fn begin(&self) {
        self.stop.cancel();
        self.tasks.close();
    }

    /// A token cancelled with the drain, or earlier on its own (one listener closing).
    pub fn child(&self) -> CancellationToken {
        self.stop.child_token()
    }

    pub fn is_draining(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves once draining has begun.
    pub async fn draining(&self) {
        self.stop.cancelled().await
    }

    /// Spawns a connection (or other in-flight) task that draining waits for.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(fut);
    }

    /// [`Shutdown::spawn`] on another runtime (a per-core worker's).
    pub fn spawn_on<F>(&self, fut: F, handle: &tokio::runtime::Handle)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn_on(fut, handle);
    }

    /// Resolves when draining has begun and every tracked task has finished.
    pub async fn drained(&self) {
        self.tasks.wait().await
    }

    pub fn in_flight(&self) -> usize {
        self.tasks.len()
    }
}
