//! Logins, counted and rate-limited per client address, with the password checks bounded.
//!
//! Every login attempt that needs a password check first *reserves* one cell of its address's
//! bucket (GCRA: `max_failures` in a burst, one back every `window / max_failures`). The
//! reservation is taken before the hash is computed, under one lock, so N parallel guesses
//! from one address never get more than the allowance checked. A right password gives its
//! reservation back (successful logins cost nothing, as before; a success can only return the
//! cell it took itself, so interleaving right logins buys a guesser nothing). A wrong one
//! keeps it. An address whose bucket is empty is refused *without* checking the password
//! until a cell is back, so a brute force costs us no hashing.
//!
//! IPv6 clients are counted per /64 (one subscriber usually holds a whole /64), IPv4 per
//! address, IPv4-mapped IPv6 as IPv4.
//!
//! Memory is bounded: at most `max_tracked` addresses are counted at once. Beyond that, after
//! dropping what has expired, new addresses are not counted (fail open: a flood from many
//! addresses must not lock out everyone, and the hashing cost of those attempts is bounded
//! separately by the fixed hashing pool and its queue, [`super::hashpool::HashPool`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::hashpool::{HashPool, Overloaded};
use super::ldap::{Directory, DirectoryError};
use super::users::{Identity, Secret, Users};
use crate::metrics::Metrics;

/// Settings of the failed-login limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Failures allowed in a burst per address (or IPv6 /64).
    pub max_failures: u32,
    /// Time for a full bucket to refill (one failure back every `window / max_failures`).
    pub window: Duration,
    /// Most addresses tracked at once.
    pub max_tracked: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            max_failures: 5,
            window: Duration::from_secs(60),
            max_tracked: 65_536,
        }
    }
}

/// The limiter. One per process (it outlives policy reloads, so a reload does not forgive).
pub struct LoginLimiter {
    /// One cell comes back every `period`.
    period: Duration,
    /// `max_failures * period`: how far ahead of now a bucket's theoretical arrival time may be.
    tolerance: Duration,
    /// Per address: the theoretical arrival time (GCRA); an entry at or before now is empty.
    tat: Mutex<HashMap<IpAddr, Instant>>,
    max_tracked: usize,
}

impl LoginLimiter {
    pub fn new(limits: LoginLimits) -> Self {
        let burst = limits.max_failures.max(1);
        let period = (limits.window / burst).max(Duration::from_millis(1));
        LoginLimiter {
            period,
            tolerance: period * burst,
            tat: Mutex::new(HashMap::new()),
            max_tracked: limits.max_tracked.max(1),
        }
    }

    /// Before checking a password: takes one cell, or `Err(retry_after)` while the address
    /// has none left (the password must then not be checked).
    pub fn reserve(&self, client: IpAddr) -> Result<(), Duration> {
        self.reserve_at(client, Instant::now())
    }

    /// After a right password: gives back the cell [`LoginLimiter::reserve`] took.
    pub fn give_back(&self, client: IpAddr) {
        self.give_back_at(client, Instant::now())
    }

    fn reserve_at(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = key_of(client);
        let Ok(mut map) = self.tat.lock() else {
            return Ok(());
        };
        let tat = map.get(&key).copied().unwrap_or(now).max(now);
        let next = tat + self.period;
        let allowed_at = now + self.tolerance;
        if next > allowed_at {
            return Err(next - allowed_at);
        }
        if map.len() >= self.max_tracked && !map.contains_key(&key) {
            map.retain(|_, t| *t > now);
            if map.len() >= self.max_tracked {
                return Ok(());
            }
        }
        map.insert(key, next);
        Ok(())
    }

    fn give_back_at(&self, client: IpAddr, now: Instant) {
        let key = key_of(client);
        let Ok(mut map) = self.tat.lock() else {
            return;
        };
        if let Some(t) = map.get_mut(&key) {
            match t.checked_sub(self.period) {
                Some(back) if back > now => *t = back,
                _ => {
                    map.remove(&key);
                }
            }
        }
    }

    /// Addresses currently counted (for metrics and tests).
    pub fn tracked(&self) -> usize {
        self.tat.lock().map(|m| m.len()).unwrap_or(0)
    }
}

fn key_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => {
            let s = a.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Why a login did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRefusal {
    /// The address has no attempts left: nothing was checked. Retry after this long.
    Blocked(Duration),
    /// The hashing queue is full: nothing was checked (and nothing charged). Retry shortly.
    Overloaded,
    /// Unknown user or wrong password (charged against the address).
    BadCredentials,
    /// The user directory did not answer: nothing was decided (and nothing charged).
    Unavailable,
}

impl LoginRefusal {
    fn reason(&self) -> &'static str {
        match self {
            LoginRefusal::Blocked(_) => "blocked",
            LoginRefusal::Overloaded => "overloaded",
            LoginRefusal::BadCredentials => "bad_credentials",
            LoginRefusal::Unavailable => "unavailable",
        }
    }
}

/// Where a login is checked.
#[derive(Clone, Copy)]
pub enum UserSource<'a> {
    /// No users at all: every attempt fails (and is charged).
    Nobody,
    File(&'a Arc<Users>),
    Ldap(&'a Arc<Directory>),
}

/// The limiter, the hashing pool and their metrics: what the listeners call to log someone in.
pub struct Logins {
    pub limiter: LoginLimiter,
    pool: HashPool,
    metrics: Arc<Metrics>,
}

impl Logins {
    pub fn new(limits: LoginLimits, pool: HashPool, metrics: Arc<Metrics>) -> Logins {
        Logins {
            limiter: LoginLimiter::new(limits),
            pool,
            metrics,
        }
    }

    /// A login against the users file or the directory: reserve, check (the cache first,
    /// then the hash in the pool, or the directory), give the reservation back on success,
    /// and also when nothing was decided (queue full, directory unavailable).
    pub async fn log_in(
        &self,
        client: IpAddr,
        users: UserSource<'_>,
        name: &str,
        password: &Secret,
    ) -> Result<Identity, LoginRefusal> {
        let result = self.checked(client, users, name, password).await;
        if let Err(e) = &result {
            self.failed(*e);
        }
        result
    }

    async fn checked(
        &self,
        client: IpAddr,
        users: UserSource<'_>,
        name: &str,
        password: &Secret,
    ) -> Result<Identity, LoginRefusal> {
        self.limiter
            .reserve(client)
            .map_err(LoginRefusal::Blocked)?;
        let found = match users {
            // Boxed: the directory conversation is a large future, and it would otherwise sit
            // inline in every connection's request future for the connection's life.
            UserSource::Ldap(directory) => match Box::pin(directory.log_in(name, password)).await {
                Ok(found) => found,
                Err(e) => {
                    // Not decided: not charged either, and never a way in.
                    self.limiter.give_back(client);
                    return Err(match e {
                        DirectoryError::Busy => LoginRefusal::Overloaded,
                        DirectoryError::Unavailable(_) => LoginRefusal::Unavailable,
                    });
                }
            },
            UserSource::File(users) => {
                let counter = self.metrics.password_verifications.clone();
                match users
                    .authenticate(&self.pool, &counter, name, password)
                    .await
                {
                    Ok(found) => found,
                    Err(Overloaded) => {
                        // Not checked: not charged either.
                        self.limiter.give_back(client);
                        return Err(LoginRefusal::Overloaded);
                    }
                }
            }
            UserSource::Nobody => None,
        };
        self.settle(client, found)
    }

    /// A login checked elsewhere, cheaply (a listener's own user list): charged the same way.
    pub fn log_in_checked(
        &self,
        client: IpAddr,
        check: impl FnOnce() -> Option<Identity>,
    ) -> Result<Identity, LoginRefusal> {
        let result = self
            .limiter
            .reserve(client)
            .map_err(LoginRefusal::Blocked)
            .and_then(|()| self.settle(client, check()));
        if let Err(e) = &result {
            self.failed(*e);
        }
        result
    }

    fn settle(&self, client: IpAddr, found: Option<Identity>) -> Result<Identity, LoginRefusal> {
        match found {
            Some(id) => {
                self.limiter.give_back(client);
                Ok(id)
            }
            None => Err(LoginRefusal::BadCredentials),
        }
    }

    fn failed(&self, e: LoginRefusal) {
        self.metrics.login_failure(e.reason());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn limiter(max_failures: u32, max_tracked: usize) -> LoginLimiter {
        LoginLimiter::new(LoginLimits {
            max_failures,
            window: Duration::from_secs(60),
            max_tracked,
        })
    }

    #[test]
    fn blocks_after_the_burst_and_recovers() {
        let l = limiter(3, 100);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(l.reserve_at(a, t0), Ok(()));
        }
        // The fourth attempt finds the bucket empty: refused for one cell (60s / 3).
        assert_eq!(l.reserve_at(a, t0), Err(Duration::from_secs(20)));
        assert_eq!(
            l.reserve_at(a, t0),
            Err(Duration::from_secs(20)),
            "a refusal costs nothing"
        );
        assert_eq!(
            l.reserve_at(ip("192.0.2.2"), t0),
            Ok(()),
            "other addresses unaffected"
        );
        let t19 = t0 + Duration::from_secs(19);
        assert_eq!(l.reserve_at(a, t19), Err(Duration::from_secs(1)));
        // One cell came back: one more attempt is allowed, the next is refused again.
        let t20 = t0 + Duration::from_secs(20);
        assert_eq!(l.reserve_at(a, t20), Ok(()));
        assert!(l.reserve_at(a, t20).is_err());
    }

    #[test]
    fn parallel_reservations_never_exceed_the_allowance() {
        let l = Arc::new(limiter(5, 100));
        let a = ip("198.51.100.1");
        let granted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..50)
                .map(|_| s.spawn(|| usize::from(l.reserve(a).is_ok())))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(granted, 5);
    }

    #[test]
    fn a_success_gives_back_only_its_own_cell() {
        let l = limiter(2, 100);
        let t0 = Instant::now();
        let a = ip("192.0.2.9");
        for _ in 0..10 {
            assert_eq!(l.reserve_at(a, t0), Ok(()));
            l.give_back_at(a, t0);
        }
        assert_eq!(l.tracked(), 0, "successes leave nothing behind");
        // Two failures use the allowance; a success in between does not add to it.
        assert_eq!(l.reserve_at(a, t0), Ok(()));
        assert_eq!(l.reserve_at(a, t0), Ok(()));
        assert!(l.reserve_at(a, t0).is_err());
        l.give_back_at(a, t0);
        assert_eq!(l.reserve_at(a, t0), Ok(()), "the cell a success returned");
        assert!(l.reserve_at(a, t0).is_err());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_as_ipv4() {
        let l = limiter(1, 100);
        let t0 = Instant::now();
        assert_eq!(l.reserve_at(ip("2001:db8:1:2::1"), t0), Ok(()));
        assert!(l.reserve_at(ip("2001:db8:1:2:ffff::9"), t0).is_err());
        assert_eq!(l.reserve_at(ip("2001:db8:1:3::1"), t0), Ok(()));
        assert_eq!(l.reserve_at(ip("::ffff:198.51.100.7"), t0), Ok(()));
        assert!(l.reserve_at(ip("198.51.100.7"), t0).is_err());
    }

    #[test]
    fn tracking_is_bounded_and_fails_open() {
        let l = limiter(1, 10);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let a = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            let _ = l.reserve_at(a, t0);
            let _ = l.reserve_at(a, t0);
            assert!(l.tracked() <= 10, "tracked {}", l.tracked());
        }
        // Once the states have expired they are dropped and new addresses are counted again.
        let later = t0 + Duration::from_secs(61);
        let a = ip("203.0.113.9");
        assert_eq!(l.reserve_at(a, later), Ok(()));
        assert!(l.reserve_at(a, later).is_err());
    }
}
