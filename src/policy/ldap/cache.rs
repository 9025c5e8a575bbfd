//! Recent directory answers, so a busy proxy does not bind once per request: pure code over
//! an explicit clock.
//!
//! Keyed by SHA-256 over (a random per-process key, user name, password): the password is
//! never kept, and a different password is a different key, so a cached success never lets a
//! changed or wrong password in. A success is kept for `ttl`; a refusal ("wrong user or
//! password") for the shorter `negative_ttl`, which spares the directory a client retrying
//! the same wrong password but soon notices a password set meanwhile. "Directory down" is
//! never cached. Memory is bounded by `max_entries`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::policy::{Identity, Secret};

/// Bounds of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LdapCacheLimits {
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub max_entries: usize,
}

/// A cached answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    Valid(Identity),
    Refused,
}

pub type Key = [u8; 32];

#[derive(Debug)]
pub struct LoginCache {
    limits: LdapCacheLimits,
    salt: [u8; 32],
    entries: HashMap<Key, (Instant, Cached)>,
}

impl LoginCache {
    pub fn new(limits: LdapCacheLimits, salt: [u8; 32]) -> LoginCache {
        LoginCache {
            limits,
            salt,
            entries: HashMap::new(),
        }
    }

    /// The key of (name, password). The salt makes keys useless outside this process.
    pub fn key(&self, name: &str, password: &Secret) -> Key {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update(password.expose().as_bytes());
        h.finalize().into()
    }

    pub fn get(&mut self, key: &Key, now: Instant) -> Option<Cached> {
        let (expires, answer) = self.entries.get(key)?;
        if now < *expires {
            return Some(answer.clone());
        }
        self.entries.remove(key);
        None
    }

    pub fn insert(&mut self, key: Key, answer: Cached, now: Instant) {
        let ttl = match answer {
            Cached::Valid(_) => self.limits.ttl,
            Cached::Refused => self.limits.negative_ttl,
        };
        if self.limits.max_entries == 0 || ttl.is_zero() {
            return;
        }
        if self.entries.len() >= self.limits.max_entries && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (exp, _)| *exp > now);
            if self.entries.len() >= self.limits.max_entries {
                self.entries.clear();
            }
        }
        self.entries.insert(key, (now + ttl, answer));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(max: usize) -> LoginCache {
        LoginCache::new(
            LdapCacheLimits {
                ttl: Duration::from_secs(60),
                negative_ttl: Duration::from_secs(5),
                max_entries: max,
            },
            [7; 32],
        )
    }

    fn alice() -> Identity {
        Identity {
            name: "alice".into(),
            groups: vec!["staff".into()],
        }
    }

    #[test]
    fn a_success_is_kept_for_its_ttl_and_only_for_that_password() {
        let mut c = cache(10);
        let t0 = Instant::now();
        let right = c.key("alice", &Secret::new("pw"));
        c.insert(right, Cached::Valid(alice()), t0);
        assert_eq!(c.get(&right, t0), Some(Cached::Valid(alice())));
        let wrong = c.key("alice", &Secret::new("pw2"));
        assert_eq!(c.get(&wrong, t0), None, "another password is another key");
        // (user, password) are length-delimited: "alic"+"epw" is not "alice"+"pw".
        assert_ne!(c.key("alic", &Secret::new("epw")), right);
        assert!(c.get(&right, t0 + Duration::from_secs(59)).is_some());
        assert_eq!(c.get(&right, t0 + Duration::from_secs(60)), None, "expired");
        assert!(c.is_empty(), "an expired entry is dropped when seen");
    }

    #[test]
    fn a_refusal_is_kept_for_the_short_ttl() {
        let mut c = cache(10);
        let t0 = Instant::now();
        let k = c.key("bob", &Secret::new("guess"));
        c.insert(k, Cached::Refused, t0);
        assert_eq!(
            c.get(&k, t0 + Duration::from_secs(4)),
            Some(Cached::Refused)
        );
        assert_eq!(c.get(&k, t0 + Duration::from_secs(5)), None);
    }

    #[test]
    fn keys_depend_on_the_salt() {
        let a = cache(1);
        let b = LoginCache::new(a.limits, [8; 32]);
        let pw = Secret::new("pw");
        assert_ne!(a.key("alice", &pw), b.key("alice", &pw));
    }

    #[test]
    fn bounded_and_off_when_zero() {
        let mut c = cache(3);
        let t0 = Instant::now();
        for i in 0..100 {
            let k = c.key(&format!("u{i}"), &Secret::new("pw"));
            c.insert(k, Cached::Refused, t0);
            assert!(c.len() <= 3);
        }
        let mut off = cache(0);
        let k = off.key("alice", &Secret::new("pw"));
        off.insert(k, Cached::Valid(alice()), t0);
        assert_eq!(off.get(&k, t0), None);
    }
}
