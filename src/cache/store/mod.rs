//! Storage tiers behind one small trait, so the engine does not care where an entry lives.
//!
//! A tier maps a primary key (the normalised URL) to an [`Entry`] (all stored variants of
//! that URL). Methods return boxed futures so a tier may block (disk, run on the blocking
//! pool) or talk to the network (a shared remote tier, later) without the engine changing.
//! Tiers never fail a request: a tier that cannot read an entry reports a miss, and one that
//! cannot write reports the error for the engine to count and log.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::object::Entry;

pub mod disk;
pub mod memory;

pub use disk::DiskTier;
pub use memory::MemoryTier;

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cache i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("cache index: {0}")]
    Index(String),
    #[error("object of {0} bytes is larger than the tier")]
    TooLarge(u64),
    /// The key was invalidated while the object was being written; it was not stored.
    #[error("invalidated while being stored")]
    Superseded,
    /// The memory tier does not take an entry whose bodies are still in disk-tier files.
    #[error("body is in a disk-tier file")]
    OnDisk,
}

/// Figures for /metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Bytes stored (memory: weighted entry size; disk: object file bytes).
    pub bytes: u64,
    pub entries: u64,
    /// Entries removed to make room (not purges, not replacements).
    pub evictions: u64,
}

pub trait Tier: Send + Sync {
    /// "memory" or "disk": the label in metrics.
    fn name(&self) -> &'static str;
    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Option<Arc<Entry>>>;
    fn put<'a>(&'a self, key: &'a str, entry: Arc<Entry>) -> BoxFut<'a, Result<(), StoreError>>;
    /// Removes one key; true when something was there.
    fn remove<'a>(&'a self, key: &'a str) -> BoxFut<'a, bool>;
    /// Removes every key starting with `prefix`; returns how many.
    fn remove_prefix<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, usize>;
    fn stats(&self) -> TierStats;
}
