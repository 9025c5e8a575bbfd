//! A small fixed pool of threads for password hashing, with a bounded queue.
//!
//! argon2 needs its memory cost (19 MiB with the defaults `gatehouse passwd` writes) for
//! every check. Run on tokio's blocking pool, each check allocated and freed that much on
//! whichever of up to 512 blocking threads it landed on; glibc raises its mmap threshold
//! after the first such block is freed, so later blocks come from the per-thread malloc
//! arenas and stay there, fragmented: about 230 wrong guesses grew the process to ~1 GB.
//!
//! Here a fixed number of threads (one per core) check passwords, each reusing one argon2
//! buffer for its lifetime (see `users::with_argon2_memory`), so hashing memory stays at
//! `threads x memory cost`. The queue in front of them is bounded: when it is full a login is
//! refused at once ([`Overloaded`]) instead of waiting without bound.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// The hashing queue was full; nothing was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overloaded;

pub struct HashPool {
    jobs: SyncSender<Job>,
}

impl HashPool {
    /// `threads` hashing threads (at least one) and room for `queue` waiting checks.
    pub fn new(threads: usize, queue: usize) -> std::io::Result<HashPool> {
        let (jobs, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("gatehouse-hash-{i}"))
                .spawn(move || work(&rx))?;
        }
        Ok(HashPool { jobs })
    }

    /// One thread per core, 32 waiting checks per thread.
    pub fn for_this_machine() -> std::io::Result<HashPool> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        HashPool::new(cores, cores * 32)
    }

    /// Runs `f` on a hashing thread; `Err(Overloaded)` at once when the queue is full.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Overloaded> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                return Err(Overloaded)
            }
        }
        rx.await.map_err(|_| Overloaded)
    }
}

/// A worker: runs jobs until every sender is gone. A panicking job takes only itself down
/// (its caller sees `Overloaded`), not the thread.
fn work(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = match rx.lock() {
            Ok(rx) => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt as _;
    use std::time::Duration;

    #[tokio::test]
    async fn runs_jobs_and_refuses_when_the_queue_is_full() {
        let pool = HashPool::new(1, 2).expect("pool");
        assert_eq!(pool.run(|| 6 * 7).await, Ok(42));
        // Hold the one thread, fill the queue of two: the next job is refused at once.
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let pool = Arc::new(pool);
        let p = Arc::clone(&pool);
        let busy = tokio::spawn(async move {
            p.run(move || {
                let _ = started_tx.send(());
                let _ = hold_rx.recv_timeout(Duration::from_secs(10));
            })
            .await
        });
        started_rx.await.expect("the job started");
        // Polled once, a check is queued (its caller then gives up; the job still runs).
        let (ran_tx, ran_rx) = std::sync::mpsc::channel::<()>();
        for _ in 0..2 {
            let ran = ran_tx.clone();
            let job = move || {
                let _ = ran.send(());
                0
            };
            assert!(pool.run(job).now_or_never().is_none(), "queued");
        }
        assert_eq!(pool.run(|| 99).now_or_never(), Some(Err(Overloaded)));
        drop(hold_tx);
        assert_eq!(busy.await.expect("task"), Ok(()));
        // Both queued jobs have left the queue once they ran: there is room again.
        for _ in 0..2 {
            ran_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("a queued job ran");
        }
        assert_eq!(pool.run(|| 1).await, Ok(1), "room again");
    }

    #[tokio::test]
    async fn a_panicking_job_does_not_kill_the_thread() {
        let pool = HashPool::new(1, 4).expect("pool");
        assert_eq!(pool.run(|| panic!("boom")).await, Err::<(), _>(Overloaded));
        assert_eq!(pool.run(|| 1).await, Ok(1));
    }
}
