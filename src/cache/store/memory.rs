//! The memory tier: moka's concurrent cache, weighted by entry size, admission and eviction
//! by W-TinyLFU (a frequency sketch keeps one-hit wonders from pushing out popular objects).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use moka::notification::RemovalCause;
use moka::sync::Cache as Moka;

use super::{BoxFut, StoreError, Tier, TierStats};
use crate::cache::object::Entry;

pub struct MemoryTier {
    cache: Moka<String, Arc<Entry>>,
    capacity: u64,
    evictions: Arc<AtomicU64>,
}

impl MemoryTier {
    pub fn new(capacity_bytes: u64) -> MemoryTier {
        let evictions = Arc::new(AtomicU64::new(0));
        let counter = evictions.clone();
        let cache = Moka::builder()
            .max_capacity(capacity_bytes)
            .weigher(|_k: &String, v: &Arc<Entry>| u32::try_from(v.weight()).unwrap_or(u32::MAX))
            .eviction_listener(move |_k, _v, cause| {
                if cause == RemovalCause::Size {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        MemoryTier {
            cache,
            capacity: capacity_bytes,
            evictions,
        }
    }

    /// Synchronous forms, for the engine to call while it holds its visibility lock.
    pub fn get_now(&self, key: &str) -> Option<Arc<Entry>> {
        self.cache.get(key)
    }

    /// An entry whose bodies are still in disk-tier files is not taken (it would hold their
    /// descriptors): such entries are served from the disk tier. Bodies in sealed memory
    /// files ([`crate::cache::sealed`]) are the memory tier's own.
    pub fn put_now(&self, key: &str, entry: Arc<Entry>) -> Result<(), StoreError> {
        if entry.has_disk_file_bodies() {
            return Err(StoreError::OnDisk);
        }
        let w = entry.weight();
        if w > self.capacity {
            return Err(StoreError::TooLarge(w));
        }
        self.cache.insert(key.to_string(), entry);
        Ok(())
    }

    pub fn remove_now(&self, key: &str) -> bool {
        self.cache.remove(key).is_some()
    }

    /// The keys whose entries `pred` accepts (a scan: for admin purges).
    pub fn keys_where(&self, pred: impl Fn(&str, &Entry) -> bool) -> Vec<String> {
        self.cache
            .iter()
            .filter(|(k, v)| pred(k, v))
            .map(|(k, _)| k.to_string())
            .collect()
    }

    /// Applies moka's pending admissions and evictions now (tests and stats).
    pub fn sync(&self) {
        self.cache.run_pending_tasks();
    }
}

impl Tier for MemoryTier {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Option<Arc<Entry>>> {
        Box::pin(async move { self.get_now(key) })
    }

    fn put<'a>(&'a self, key: &'a str, entry: Arc<Entry>) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move { self.put_now(key, entry) })
    }

    fn remove<'a>(&'a self, key: &'a str) -> BoxFut<'a, bool> {
        Box::pin(async move { self.remove_now(key) })
    }

    fn remove_prefix<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, usize> {
        Box::pin(async move {
            let keys: Vec<Arc<String>> = self
                .cache
                .iter()
                .map(|(k, _)| k)
                .filter(|k| k.starts_with(prefix))
                .collect();
            keys.iter()
                .filter(|k| self.cache.remove(k.as_str()).is_some())
                .count()
        })
    }

    fn stats(&self) -> TierStats {
        self.cache.run_pending_tasks();
        TierStats {
            bytes: self.cache.weighted_size(),
            entries: self.cache.entry_count(),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::object::StoredResponse;
    use crate::cache::testutil::{resp, t};
    use bytes::Bytes;

    fn entry(size: usize) -> Arc<Entry> {
        Arc::new(Entry::default().with(Arc::new(StoredResponse::new(
            resp(200, &[]),
            Bytes::from(vec![b'x'; size]),
            t(0),
            t(0),
            vec![],
        ))))
    }

    #[tokio::test]
    async fn put_get_remove() {
        let m = MemoryTier::new(1 << 20);
        m.put("http://a.test/1", entry(10)).await.expect("put");
        assert!(m.get("http://a.test/1").await.is_some());
        assert!(m.get("http://a.test/2").await.is_none());
        assert!(m.remove("http://a.test/1").await);
        assert!(m.get("http://a.test/1").await.is_none());
    }

    #[tokio::test]
    async fn prefix_purge() {
        let m = MemoryTier::new(1 << 20);
        for k in ["http://a.test/x/1", "http://a.test/x/2", "http://a.test/y"] {
            m.put(k, entry(10)).await.expect("put");
        }
        assert_eq!(m.remove_prefix("http://a.test/x/").await, 2);
        assert!(m.get("http://a.test/y").await.is_some());
    }

    #[tokio::test]
    async fn stays_within_capacity_and_counts_evictions() {
        let m = MemoryTier::new(100_000);
        for i in 0..200 {
            m.put(&format!("http://a.test/{i}"), entry(5_000))
                .await
                .expect("put");
        }
        let s = m.stats();
        assert!(s.bytes <= 100_000, "{s:?}");
        assert!(s.entries < 200);
        assert!(m.put("http://a.test/huge", entry(200_000)).await.is_err());
    }
}
