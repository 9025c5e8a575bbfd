//! `[runtime] per_core = true`: one event loop per worker thread, each keeping the
//! connections it serves (nginx's worker processes, HAProxy's threads, Pingora's
//! `work_stealing = false`).
//!
//! ```text
//! listening socket ──┬─► worker 0 (current-thread runtime): accept loop ─► serve here
//!  (one per listener,│                                        └─ or hand over ([`keeps`])
//!   each worker holds└─► worker 1: accept loop ─► serve here
//!   a descriptor of it)
//! ```
//!
//! Every worker accepts from the listener itself (each registers its own descriptor of the
//! one listening socket, as nginx's workers do without `reuseport`): a connection is
//! served on the thread that accepted it, with no hand-over between threads, unless that
//! worker already serves clearly more connections than another ([`keeps`]), or the
//! connection belongs with a tunnel agent's link served elsewhere. A tunnel agent's link
//! itself always goes to the worker driving the fewest links ([`Placing::Link`]): an agent
//! dials several links so that they run on several cores, and two links accepted by the
//! same worker would share one. The cost: a new
//! connection wakes every worker that waits in its event loop (tokio registers without
//! `EPOLLEXCLUSIVE`); one accepts it, the others find nothing and wait again. Under load the
//! workers are awake anyway; this was measured on 2 cores only. With the shared,
//! work-stealing scheduler a connection's task moves to whichever thread polled the I/O
//! driver or went idle first, and waking it on the other thread costs a futex call; here
//! it never moves. What the workers share (pools, cache, limits, metrics) is the same
//! `Arc`ed state as before. An upstream keep-alive connection made on one worker and reused
//! from another still works (its readiness comes from the first worker's event loop), only
//! less cheaply.
//!
//! The choice of worker is pure ([`keeps`], [`least_busy`]); the threads live until the
//! process ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;

thread_local! {
    /// This thread's worker index; `None` off the worker threads.
    static INDEX: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The worker thread this code runs on (`[runtime] per_core`), if any: what per-worker
/// state (the idle upstream connections) is keyed by.
pub fn current() -> Option<usize> {
    INDEX.with(std::cell::Cell::get)
}

/// A value on cache lines of its own (two: the adjacent-line prefetcher fetches pairs), so
/// that writes to it (a lock's word, a shard's counts) do not take the line of its
/// neighbours, read by the other core, with them: false sharing.
#[repr(align(128))]
#[derive(Default, Debug)]
pub struct Apart<T>(pub T);

impl<T> std::ops::Deref for Apart<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A shared name (a listener's, a route's, a server's) that every request copies into its
/// access record, with a copy per thread shard: each made by the first thread of its shard
/// that asks, so from that thread's allocator heap, away from the other copies. Cloning the
/// one `Arc` for every request of every thread wrote a reference count both cores share.
pub struct LocalName {
    name: Arc<str>,
    copies: Box<[std::sync::OnceLock<Arc<str>>]>,
}

impl LocalName {
    pub fn new(name: Arc<str>) -> LocalName {
        let n = shard_count();
        LocalName {
            name,
            copies: (0..n).map(|_| std::sync::OnceLock::new()).collect(),
        }
    }

    /// This thread shard's copy (the same text).
    pub fn here(&self) -> Arc<str> {
        match self.copies.get(slot_of(self.copies.len())) {
            Some(c) => c.get_or_init(|| Arc::from(&*self.name)).clone(),
            None => self.name.clone(),
        }
    }
}

impl std::ops::Deref for LocalName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

/// How many shards per-thread state keeps: one per CPU (per-core workers beyond it share),
/// at most 16.
pub fn shard_count() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
            .clamp(1, 16)
    })
}

/// The shard of per-thread state this thread writes: the per-core worker's index, or on
/// other threads (the shared scheduler's) a number given to each thread when it first asks,
/// so that threads spread over the shards.
pub fn shard_index() -> usize {
    thread_local! {
        static PICK: usize = {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            NEXT.fetch_add(1, Ordering::Relaxed)
        };
    }
    current().unwrap_or_else(|| PICK.with(|p| *p))
}

/// This thread's slot among `len` per-shard slots ([`shard_index`] wrapped; 0 when there are
/// none, so that `slots.get(slot_of(slots.len()))` is `None` rather than a division by zero).
pub fn slot_of(len: usize) -> usize {
    shard_index() % len.max(1)
}

/// Marks this thread as worker `index` (each worker thread does, as it starts).
pub(crate) fn mark_current(index: usize) {
    INDEX.with(|c| c.set(Some(index)));
}

/// How many workers `[runtime]` asks for: `workers`, else `TOKIO_WORKER_THREADS`, else
/// one per CPU core.
pub fn count(cfg: &crate::config::RuntimeConfig) -> usize {
    if cfg.workers > 0 {
        return cfg.workers;
    }
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1)
}

/// The worker threads, each with its own current-thread runtime.
pub struct Workers {
    handles: Vec<Handle>,
    /// Connections each worker serves now (each count on cache lines of its own: every
    /// worker writes its own as it accepts).
    busy: Arc<[Apart<AtomicUsize>]>,
    /// Tunnel agents' links each worker drives now (counted in `busy` too).
    links: Arc<[Apart<AtomicUsize>]>,
    turn: AtomicUsize,
}

/// What a connection is, for choosing its worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placing<'a> {
    /// Any client: kept on the worker that accepted it unless that one is clearly busier
    /// ([`keeps`]); a connection that belongs with a tunnel agent's links names the
    /// workers driving them.
    Client { among: &'a [usize] },
    /// A tunnel agent's link: on the worker driving the fewest links, wherever accepted.
    Link,
}

/// Holds one connection's place in its worker's counts; dropped with the connection.
pub struct Slot {
    busy: Arc<[Apart<AtomicUsize>]>,
    /// The link count too, for a link.
    links: Option<Arc<[Apart<AtomicUsize>]>>,
    index: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.busy[self.index].fetch_sub(1, Ordering::Relaxed);
        if let Some(links) = &self.links {
            links[self.index].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Which worker takes the next connection: the fewest connections now, ties in turn from
/// `turn` so idle workers alternate. `None` only for no workers.
pub fn least_busy(busy: &[usize], turn: usize) -> Option<usize> {
    let n = busy.len();
    (0..n).map(|k| (turn + k) % n).min_by_key(|&i| busy[i])
}

/// How many more connections than the least busy candidate the accepting worker may serve
/// and still keep a new one: an eighth more, and 8 (so that light load never hands over).
pub fn slack(least: usize) -> usize {
    8 + least / 8
}

/// Whether worker `local`, which accepted a connection, serves it itself: it is one of the
/// workers `among` (any worker, when `among` names none that exists) and serves at most
/// [`slack`] more connections than the least busy of them.
pub fn keeps(busy: &[usize], local: usize, among: &[usize]) -> bool {
    let n = busy.len();
    let named = among.iter().any(|&i| i < n);
    let candidate = |i: &usize| !named || among.contains(i);
    if local >= n || !candidate(&local) {
        return false;
    }
    let least = (0..n).filter(candidate).map(|i| busy[i]).min();
    least.is_some_and(|m| busy[local] <= m + slack(m))
}

/// [`least_busy`] among the workers `among` only (those of them that exist); all of them
/// when `among` names none that does.
pub fn least_busy_among(busy: &[usize], among: &[usize], turn: usize) -> Option<usize> {
    let n = busy.len();
    (0..n)
        .map(|k| (turn + k) % n)
        .filter(|i| among.contains(i))
        .min_by_key(|&i| busy[i])
        .or_else(|| least_busy(busy, turn))
}

impl Workers {
    /// Starts `n` worker threads (at least one).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let n = n.max(1);
        let mut handles = Vec::with_capacity(n);
        // Each thread reports once it runs (named, its index set), so `start` returns with
        // every worker up: nothing is handed to a thread that is not there yet.
        let (up_tx, up_rx) = std::sync::mpsc::channel::<()>();
        for i in 0..n {
            let up = up_tx.clone();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            std::thread::Builder::new()
                .name(format!("gatehouse-worker-{i}"))
                .spawn(move || {
                    mark_current(i);
                    let _ = up.send(());
                    rt.block_on(std::future::pending::<()>())
                })?;
        }
        drop(up_tx);
        for _ in 0..n {
            if up_rx.recv().is_err() {
                return Err(std::io::Error::other("a worker thread ended as it started"));
            }
        }
        let counts = || -> Arc<[Apart<AtomicUsize>]> { (0..n).map(|_| Apart::default()).collect() };
        Ok(Workers {
            handles,
            busy: counts(),
            links: counts(),
            turn: AtomicUsize::new(0),
        })
    }

    /// How many worker threads there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Never true: [`Workers::start`] starts at least one.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The worker that serves a connection accepted on this thread, and the connection's
    /// place in that worker's counts. A client ([`Placing::Client`]): this worker when it
    /// [`keeps`] it, otherwise the least busy of the workers `among` (of all, when `among`
    /// names none). A link ([`Placing::Link`]): the worker driving the fewest links.
    pub fn place(&self, placing: Placing<'_>) -> (usize, Slot) {
        let load = |counts: &[Apart<AtomicUsize>]| -> Vec<usize> {
            counts.iter().map(|b| b.load(Ordering::Relaxed)).collect()
        };
        // The turn is only taken for a connection handed over: one kept on its worker writes
        // no count but its own worker's.
        let turn = || self.turn.fetch_add(1, Ordering::Relaxed);
        let i = match placing {
            Placing::Link => least_busy(&load(&self.links), turn()).unwrap_or(0),
            Placing::Client { among } => {
                let busy = load(&self.busy);
                match current().filter(|&l| keeps(&busy, l, among)) {
                    Some(l) => l,
                    None => least_busy_among(&busy, among, turn()).unwrap_or(0),
                }
            }
        };
        self.busy[i].fetch_add(1, Ordering::Relaxed);
        let links = (placing == Placing::Link).then(|| {
            self.links[i].fetch_add(1, Ordering::Relaxed);
            self.links.clone()
        });
        let slot = Slot {
            busy: self.busy.clone(),
            links,
            index: i,
        };
        (i, slot)
    }

    /// Worker `i`'s runtime (`i` wrapped to the workers there are).
    pub fn handle(&self, i: usize) -> &Handle {
        &self.handles[i % self.handles.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::least_busy;

    /// Each worker thread gets its own copy of a name (its own allocation, so its own
    /// reference count), the same one each time; all say the same text.
    #[test]
    fn a_local_name_is_one_copy_per_worker() {
        let name = super::LocalName::new("rev".into());
        let (a, a_again, b) = std::thread::scope(|s| {
            let on = |w: usize| {
                let name = &name;
                s.spawn(move || {
                    super::mark_current(w);
                    (name.here(), name.here())
                })
            };
            let (a, a_again) = on(0).join().expect("worker 0");
            let (b, _) = on(1).join().expect("worker 1");
            (a, a_again, b)
        });
        assert_eq!((&*a, &*b, &*name), ("rev", "rev", "rev"));
        assert!(std::sync::Arc::ptr_eq(&a, &a_again));
        if super::shard_count() > 1 {
            assert!(!std::sync::Arc::ptr_eq(&a, &b));
        }
    }

    #[test]
    fn the_least_busy_worker_takes_the_next_connection() {
        assert_eq!(least_busy(&[3, 1, 2], 0), Some(1));
        assert_eq!(least_busy(&[3, 1, 2], 2), Some(1));
        assert_eq!(least_busy(&[], 5), None);
    }

    #[test]
    fn a_connection_goes_to_the_least_busy_of_the_workers_named() {
        use super::least_busy_among;
        // Worker 0 is busier, but it is the one named.
        assert_eq!(least_busy_among(&[3, 1, 2], &[0], 1), Some(0));
        assert_eq!(least_busy_among(&[3, 1, 2], &[0, 2], 0), Some(2));
        // Ties among the named ones go in turn.
        let picks: Vec<_> = (0..4)
            .map(|t| least_busy_among(&[0, 5, 0], &[0, 2], t))
            .collect();
        assert_eq!(picks, [0, 2, 2, 0].map(Some));
        // None named, or none that exists: any worker.
        assert_eq!(least_busy_among(&[3, 1, 2], &[], 0), Some(1));
        assert_eq!(least_busy_among(&[3, 1, 2], &[7], 0), Some(1));
        assert_eq!(least_busy_among(&[], &[0], 0), None);
    }

    /// A worker serves what it accepted while it is within the slack of the least busy one;
    /// beyond it, the connection goes to the least busy; a connection that belongs with
    /// other workers (a tunnel agent's) goes to them.
    #[test]
    fn a_worker_keeps_what_it_accepted_unless_clearly_busier() {
        use super::{keeps, slack};
        assert_eq!((slack(0), slack(80), slack(800)), (8, 18, 108));
        // Light load: always kept, whichever worker accepted.
        assert!(keeps(&[8, 0], 0, &[]));
        assert!(keeps(&[0, 8], 0, &[]));
        assert!(!keeps(&[9, 0], 0, &[]));
        // An eighth more than the least busy, plus 8.
        assert!(keeps(&[98, 80], 0, &[]));
        assert!(!keeps(&[99, 80], 0, &[]));
        assert!(keeps(&[908, 800, 2000], 0, &[]));
        // Not one of the workers named: never kept; one of them: compared with them only.
        assert!(!keeps(&[0, 50], 0, &[1]));
        assert!(keeps(&[60, 50, 0], 0, &[0, 1]));
        assert!(!keeps(&[60, 50, 0], 0, &[0, 2]));
        // Names that do not exist count as none; a worker that does not exist keeps nothing.
        assert!(keeps(&[3, 0], 0, &[7]));
        assert!(!keeps(&[0, 0], 2, &[]));
        assert!(!keeps(&[], 0, &[]));
    }

    /// Connections accepted always on worker 0 (the case of a worker that always wakes first)
    /// still spread: worker 0 keeps them until it is past the slack, then the other takes
    /// them, and the two stay within the slack of each other.
    #[test]
    fn connections_accepted_on_one_worker_still_spread() {
        use super::{keeps, least_busy, slack};
        let mut busy = [0usize, 0];
        for turn in 0..1000 {
            let i = if keeps(&busy, 0, &[]) {
                0
            } else {
                least_busy(&busy, turn).expect("two workers")
            };
            busy[i] += 1;
        }
        assert_eq!(busy[0] + busy[1], 1000);
        assert!(busy[0] - busy[1] <= slack(busy[1]) + 1, "{busy:?}");
        assert!(busy[1] > 400, "{busy:?}");
    }

    #[test]
    fn idle_workers_take_connections_in_turn() {
        let picks: Vec<_> = (0..4).map(|t| least_busy(&[0, 0], t)).collect();
        assert_eq!(picks, [0, 1, 0, 1].map(Some));
    }

    /// A tunnel agent's links spread over the workers by their own count, whatever other
    /// connections the workers serve, and a link that ends frees its worker for the next.
    #[test]
    fn links_go_to_the_worker_driving_the_fewest() {
        use super::{Placing, Workers};
        let w = Workers::start(2).expect("two workers");
        // Three clients, from this (non-worker) thread: spread by connections.
        let clients: Vec<_> = (0..3)
            .map(|_| w.place(Placing::Client { among: &[] }))
            .collect();
        let (first, first_slot) = w.place(Placing::Link);
        let (second, _second_slot) = w.place(Placing::Link);
        assert_ne!(first, second, "two links on one worker");
        drop(first_slot);
        let (third, _third_slot) = w.place(Placing::Link);
        assert_eq!(third, first, "the freed worker takes the next link");
        // Clients still go by connections: the links count there too.
        let busy = || -> usize {
            w.busy
                .iter()
                .map(|b| b.load(std::sync::atomic::Ordering::Relaxed))
                .sum()
        };
        assert_eq!(busy(), 5);
        drop(clients);
        assert_eq!(busy(), 2);
    }
}
