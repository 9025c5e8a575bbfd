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

impl CacheStats {
    /// The cache's metric families in OpenMetrics text (without `# EOF`), read at scrape time.
    pub fn encode_openmetrics(&self, text: &mut String) {
        use std::fmt::Write as _;
        let counters = [
            ("hits", "Responses served from the cache", self.hits),
            (
                "misses",
                "Cacheable requests not found in the cache",
                self.misses,
            ),
            (
                "stale_served",
                "Stale responses served (stale-while-revalidate, stale-if-error)",
                self.stale_served,
            ),
            (
                "revalidations",
                "Conditional requests sent to validate stored responses",
                self.revalidations,
            ),
            (
                "not_modified",
                "Stored responses confirmed by a 304",
                self.not_modified,
            ),
            ("stores", "Responses stored", self.stores),
            (
                "store_errors",
                "Responses a tier failed to store",
                self.store_errors,
            ),
            (
                "invalidations",
                "Stored responses invalidated by unsafe methods",
                self.invalidations,
            ),
            (
                "collapsed",
                "Requests that joined another request's upstream fetch",
                self.collapsed,
            ),
        ];
        for (name, help, v) in counters {
            let _ = write!(
                text,
                "# HELP gatehouse_cache_{name} {help}.\n# TYPE gatehouse_cache_{name} counter\ngatehouse_cache_{name}_total {v}\n"
            );
        }
        let tiers: Vec<_> = [("memory", self.memory), ("disk", self.disk)]
            .into_iter()
            .filter_map(|(n, t)| t.map(|t| (n, t)))
            .collect();
        type Field = fn(&TierStats) -> u64;
        let families: [(&str, &str, &str, Field); 3] = [
            ("bytes", "gauge", "Bytes stored, per tier", |t| t.bytes),
            ("entries", "gauge", "Entries stored, per tier", |t| {
                t.entries
            }),
            (
                "evictions",
                "counter",
                "Entries evicted to make room, per tier",
                |t| t.evictions,
            ),
        ];
        for (name, kind, help, get) in families {
            let _ = write!(
                text,
                "# HELP gatehouse_cache_{name} {help}.\n# TYPE gatehouse_cache_{name} {kind}\n"
            );
            let sample = if kind == "counter" { "_total" } else { "" };
            for (n, t) in &tiers {
                let _ = writeln!(
                    text,
                    "gatehouse_cache_{name}{sample}{{tier=\"{n}\"}} {}",
                    get(t)
                );
            }
        }
    }
}
