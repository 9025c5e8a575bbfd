//! One shutdown path for every listener kind.
//!
//! `stop` is cancelled on the first SIGTERM: listeners stop accepting, idle keep-alive
//! connections close, requests and tunnels in flight go on. Every connection task is spawned
//! on the shared [`TaskTracker`], so `main` can wait for them up to the drain deadline.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::workers::Apart;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Shutdown {
    stop: CancellationToken,
    tasks: TaskTracker,
    signal: Arc<Signal>,
}

/// What every connection asks between requests: a flag to read, and a wake-up for the
/// idle ones. A `CancellationToken` answers both under one mutex that every connection of
/// every thread takes (twice per request, and on each poll of an idle wait), so its cache
/// line went back and forth between the cores; this flag is only read until the drain, and
/// each worker thread waits on a `Notify` of its own.
#[derive(Default)]
struct Signal {
    draining: AtomicBool,
    shards: [Apart<Notify>; SHARDS],
}

/// Wait lists of the drain signal: per-core worker threads beyond this share them.
const SHARDS: usize = 16;

impl Signal {
    /// This thread's wait list: the per-core worker's own, or (on the shared scheduler,
    /// whose tasks move between threads) one picked per thread.
    fn shard(&self) -> &Notify {
        &self.shards[crate::workers::slot_of(SHARDS)]
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Begin draining: no new connections, no new requests on kept-alive ones.
    pub fn begin(&self) {
        // The flag first: a wait made after the wake-ups below sees it (see `draining`).
        self.signal.draining.store(true, Ordering::SeqCst);
        for shard in &self.signal.shards {
            shard.notify_waiters();
        }
        self.stop.cancel();
        self.tasks.close();
    }

    /// A token cancelled with the drain, or earlier on its own (one listener closing).
    pub fn child(&self) -> CancellationToken {
        self.stop.child_token()
    }

    pub fn is_draining(&self) -> bool {
        self.signal.draining.load(Ordering::Acquire)
    }

    /// Resolves once draining has begun.
    pub async fn draining(&self) {
        if self.is_draining() {
            return;
        }
        // A `Notified` hears every `notify_waiters` made after it was created, polled or
        // not; `begin` sets the flag before it wakes the lists, so either the read below
        // sees the flag or the wake-up finds this wait.
        let notified = self.signal.shard().notified();
        if self.is_draining() {
            return;
        }
        notified.await
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

#[cfg(test)]
mod tests {
    use super::Shutdown;
    use std::time::Duration;

    /// Idle waits on eight worker threads (each on a wait list of its own) and one on a
    /// thread of no worker all end when the drain begins; a wait begun after it ends at once.
    #[test]
    fn every_waiting_thread_hears_the_drain() {
        let sd = Shutdown::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let waits: Vec<_> = (0..9)
            .map(|i| {
                let sd = sd.clone();
                let ready = ready_tx.clone();
                std::thread::spawn(move || {
                    if i < 8 {
                        crate::workers::mark_current(i);
                    }
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    rt.block_on(async {
                        let wait = sd.draining();
                        tokio::pin!(wait);
                        // Waiting (polled once, not ended) before the drain begins.
                        assert!(futures_util::poll!(wait.as_mut()).is_pending());
                        let _ = ready.send(());
                        tokio::time::timeout(Duration::from_secs(10), wait).await
                    })
                })
            })
            .collect();
        for _ in 0..9 {
            ready_rx.recv().expect("a wait began");
        }
        assert!(!sd.is_draining());
        sd.begin();
        assert!(sd.is_draining());
        for w in waits {
            assert!(
                w.join().expect("thread").is_ok(),
                "the wait heard the drain"
            );
        }
        assert!(futures_util::FutureExt::now_or_never(sd.draining()).is_some());
    }
}
