//! Background refreshes (RFC 5861 section 3, `stale-while-revalidate`): a request that finds
//! a stale response within its window is answered from the cache at once, and the cache
//! "attempts to revalidate it while still serving stale responses". This module decides
//! whether such a request may start that revalidation:
//!
//! - at most one per key: concurrent stale hits on a key share the refresh already running
//!   (the others are served stale and start nothing);
//! - at most `max` at once over the whole cache (`[cache] background_refreshes`): past it a
//!   stale hit is still served, and a later one starts the refresh once a slot is free.
//!
//! A [`RefreshSlot`] holds the key's place; dropping it (the refresh ended, however) frees it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

/// Why no refresh was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// This key's refresh is running already.
    Running,
    /// `max` refreshes are running.
    Full,
}

/// The keys being refreshed in the background.
#[derive(Debug)]
pub struct Refreshes {
    max: usize,
    keys: Mutex<HashSet<String>>,
}

impl Refreshes {
    pub fn new(max: usize) -> Arc<Refreshes> {
        Arc::new(Refreshes {
            max,
            keys: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashSet<String>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `key`'s refresh slot, unless its refresh runs already or all slots are taken.
    pub fn start(self: &Arc<Self>, key: &str) -> Result<RefreshSlot, Refused> {
        let mut keys = self.lock();
        if keys.contains(key) {
            return Err(Refused::Running);
        }
        if keys.len() >= self.max {
            return Err(Refused::Full);
        }
        keys.insert(key.to_string());
        Ok(RefreshSlot {
            set: self.clone(),
            key: key.to_string(),
        })
    }

    /// Refreshes running now.
    pub fn running(&self) -> usize {
        self.lock().len()
    }
}

/// One running refresh; its key is free again when this is dropped.
#[derive(Debug)]
pub struct RefreshSlot {
    set: Arc<Refreshes>,
    key: String,
}

impl RefreshSlot {
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for RefreshSlot {
    fn drop(&mut self) {
        self.set.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_refresh_per_key() {
        let r = Refreshes::new(8);
        let a = r.start("http://a/").expect("first");
        assert_eq!(r.start("http://a/").err(), Some(Refused::Running));
        let b = r.start("http://b/").expect("another key");
        assert_eq!(r.running(), 2);
        drop(a);
        let a2 = r
            .start("http://a/")
            .expect("free again once the first ended");
        assert_eq!(a2.key(), "http://a/");
        drop((a2, b));
        assert_eq!(r.running(), 0);
    }

    #[test]
    fn bounded_number_at_once() {
        let r = Refreshes::new(3);
        let held: Vec<_> = (0..3)
            .map(|i| r.start(&format!("http://h/{i}")).expect("within the bound"))
            .collect();
        assert_eq!(r.start("http://h/3").err(), Some(Refused::Full));
        // A key already running says so, not Full.
        assert_eq!(r.start("http://h/0").err(), Some(Refused::Running));
        drop(held);
        assert!(r.start("http://h/3").is_ok());
    }

    #[test]
    fn zero_means_none() {
        let r = Refreshes::new(0);
        assert_eq!(r.start("http://a/").err(), Some(Refused::Full));
    }
}
