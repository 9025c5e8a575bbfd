//! Cache counters for /metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use super::engine::Cache;
use super::store::{Tier, TierStats};

/// A snapshot of the cache's counters and tier sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub stale_served: u64,
    pub misses: u64,
    pub revalidations: u64,
    pub not_modified: u64,
    pub stores: u64,
    pub store_errors: u64,
    pub invalidations: u64,
    /// Requests that joined another request's upstream fetch (collapsed followers).
    pub collapsed: u64,
    pub memory: Option<TierStats>,
    pub disk: Option<TierStats>,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) stale_served: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) revalidations: AtomicU64,
    pub(crate) not_modified: AtomicU64,
    pub(crate) stores: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) invalidations: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Cache {
    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            hits: load(&c.hits),
            stale_served: load(&c.stale_served),
            misses: load(&c.misses),
            revalidations: load(&c.revalidations),
            not_modified: load(&c.not_modified),
            stores: load(&c.stores),
            store_errors: load(&c.store_errors),
            invalidations: load(&c.invalidations),
            collapsed: self.flights().joined(),
            memory: self.memory.as_ref().map(|m| m.stats()),
            disk: self.disk.as_ref().map(|d| d.stats()),
        }
    }
}
