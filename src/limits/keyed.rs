//! The keyed state behind [`super::Limits`], each map with its bound (see the module docs).

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::clock::DefaultClock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use super::bucket::Bucket;
use super::{lock, CountMap};

/// Concurrent connections per key. An entry lives while its count is above zero.
pub(super) struct Counts<K> {
    pub(super) map: Mutex<CountMap<K>>,
}

impl<K: Hash + Eq + Clone> Counts<K> {
    pub(super) fn new() -> Self {
        Counts {
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a slot if fewer than `max` are held.
    pub(super) fn acquire(&self, key: &K, max: u32) -> bool {
        let Some(mut map) = lock(&self.map) else {
            return true;
        };
        let n = map.entry(key.clone()).or_insert(0);
        if *n >= max {
            if *n == 0 {
                map.remove(key);
            }
            return false;
        }
        *n += 1;
        true
    }

    pub(super) fn release(&self, key: &K) {
        let Some(mut map) = lock(&self.map) else {
            return;
        };
        if let Some(n) = map.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(key);
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        lock(&self.map).map_or(0, |m| m.len())
    }
}

type Limiter<K> = RateLimiter<K, HashMapStateStore<K>, DefaultClock, NoOpMiddleware>;

/// Events per second per key (GCRA, burst = the rate), at most `max_tracked` keys.
pub(super) struct Rate<K: Hash + Eq + Clone> {
    limiter: Limiter<K>,
    max_tracked: usize,
}

impl<K: Hash + Eq + Clone> Rate<K> {
    pub(super) fn new(per_second: NonZeroU32, max_tracked: usize) -> Self {
        Rate {
            limiter: RateLimiter::hashmap(Quota::per_second(per_second)),
            max_tracked,
        }
    }

    /// Spends one cell; `false` when the key has none left.
    pub(super) fn check(&self, key: &K) -> bool {
        if self.limiter.len() >= self.max_tracked {
            // governor keeps a key until its state is back to full: drop those.
            self.limiter.retain_recent();
            if self.limiter.len() >= self.max_tracked {
                // Full of active keys (governor cannot tell a known key from a new one
                // without spending a cell): fail open until some expire.
                return true;
            }
        }
        self.limiter.check_key(key).is_ok()
    }

    pub(super) fn len(&self) -> usize {
        self.limiter.len()
    }
}

/// One shared bandwidth bucket per key, at most `max_tracked` keys.
pub(super) struct Buckets<K> {
    rate: u64,
    map: Mutex<HashMap<K, Arc<Bucket>>>,
    max_tracked: usize,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    pub(super) fn new(rate: u64, max_tracked: usize) -> Self {
        Buckets {
            rate,
            map: Mutex::new(HashMap::new()),
            max_tracked,
        }
    }

    /// The key's bucket, created full when new.
    pub(super) fn get(&self, key: &K) -> Arc<Bucket> {
        let Some(mut map) = lock(&self.map) else {
            return Arc::new(Bucket::new(self.rate));
        };
        if let Some(b) = map.get(key) {
            return b.clone();
        }
        if map.len() >= self.max_tracked {
            // Forget buckets nobody holds and that owe nothing: a new one starts full, which
            // is exactly their state.
            let now = Instant::now();
            map.retain(|_, b| Arc::strong_count(b) > 1 || !b.is_full(now));
            if map.len() >= self.max_tracked {
                return Arc::new(Bucket::new(self.rate));
            }
        }
        let b = Arc::new(Bucket::new(self.rate));
        map.insert(key.clone(), b.clone());
        b
    }

    pub(super) fn len(&self) -> usize {
        lock(&self.map).map_or(0, |m| m.len())
    }
}
