//! Failed logins, counted and rate-limited per client address.
//!
//! Each failed password check costs the client's address one cell of a GCRA bucket
//! (`governor`): `max_failures` in a burst, refilled evenly over `window`. When a failure
//! finds the bucket empty, the address is blocked until a cell is back, and while blocked its
//! logins are refused *without* checking the password (so a brute force costs us no hashing).
//! Successful logins cost nothing.
//!
//! IPv6 clients are counted per /64 (one subscriber usually holds a whole /64), IPv4 per
//! address, IPv4-mapped IPv6 as IPv4.
//!
//! Memory is bounded: at most `max_tracked` addresses are counted or blocked at once. Beyond
//! that, after dropping what has expired, new addresses are not counted (fail open: a flood
//! from many addresses must not lock out everyone, and the hashing cost of those attempts is
//! bounded separately by the verification permits).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

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
pub struct LoginLimiter<C: Clock = DefaultClock> {
    limiter: RateLimiter<IpAddr, HashMapStateStore<IpAddr>, C, NoOpMiddleware<C::Instant>>,
    blocked: Mutex<HashMap<IpAddr, C::Instant>>,
    clock: C,
    max_tracked: usize,
}

impl LoginLimiter<DefaultClock> {
    pub fn new(limits: LoginLimits) -> Self {
        Self::with_clock(limits, DefaultClock::default())
    }
}

impl<C: Clock + Clone> LoginLimiter<C> {
    pub fn with_clock(limits: LoginLimits, clock: C) -> Self {
        let burst = NonZeroU32::new(limits.max_failures).unwrap_or(NonZeroU32::MIN);
        let per_cell = limits.window / burst.get();
        let quota = Quota::with_period(per_cell.max(Duration::from_millis(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        LoginLimiter {
            limiter: RateLimiter::hashmap_with_clock(quota, clock.clone()),
            blocked: Mutex::new(HashMap::new()),
            clock,
            max_tracked: limits.max_tracked.max(1),
        }
    }

    /// Before checking a password: `Err(retry_after)` while the address is blocked.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let key = key_of(client);
        let now = self.clock.now();
        let Ok(mut blocked) = self.blocked.lock() else {
            return Ok(());
        };
        match blocked.get(&key) {
            Some(until) if *until > now => Err(until.duration_since(now).into()),
            Some(_) => {
                blocked.remove(&key);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// After a wrong password. Returns `Err(retry_after)` when this failure blocks the address.
    pub fn record_failure(&self, client: IpAddr) -> Result<(), Duration> {
        let key = key_of(client);
        let now = self.clock.now();
        if self.limiter.len() >= self.max_tracked {
            self.limiter.retain_recent();
            if self.limiter.len() >= self.max_tracked {
                return Ok(());
            }
        }
        let Err(not_until) = self.limiter.check_key(&key) else {
            return Ok(());
        };
        let until = not_until.earliest_possible();
        let Ok(mut blocked) = self.blocked.lock() else {
            return Ok(());
        };
        if blocked.len() >= self.max_tracked && !blocked.contains_key(&key) {
            blocked.retain(|_, u| *u > now);
            if blocked.len() >= self.max_tracked {
                return Ok(());
            }
        }
        blocked.insert(key, until);
        Err(until.duration_since(now).into())
    }

    /// Addresses currently counted or blocked (for metrics and tests).
    pub fn tracked(&self) -> usize {
        self.limiter.len() + self.blocked.lock().map(|b| b.len()).unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn limiter(
        max_failures: u32,
        max_tracked: usize,
    ) -> (LoginLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let limits = LoginLimits {
            max_failures,
            window: Duration::from_secs(60),
            max_tracked,
        };
        (LoginLimiter::with_clock(limits, clock.clone()), clock)
    }

    #[test]
    fn blocks_after_the_burst_and_recovers() {
        let (l, clock) = limiter(3, 100);
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(l.check(a), Ok(()));
            assert_eq!(l.record_failure(a), Ok(()));
        }
        // The fourth failure finds the bucket empty: blocked for one cell (60s / 3).
        assert_eq!(l.record_failure(a), Err(Duration::from_secs(20)));
        assert_eq!(l.check(a), Err(Duration::from_secs(20)));
        assert_eq!(
            l.check(ip("192.0.2.2")),
            Ok(()),
            "other addresses unaffected"
        );
        clock.advance(Duration::from_secs(19));
        assert_eq!(l.check(a), Err(Duration::from_secs(1)));
        clock.advance(Duration::from_secs(1));
        assert_eq!(l.check(a), Ok(()));
        // One cell came back: one more failure is allowed, the next blocks again.
        assert_eq!(l.record_failure(a), Ok(()));
        assert!(l.record_failure(a).is_err());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_as_ipv4() {
        let (l, _clock) = limiter(1, 100);
        assert_eq!(l.record_failure(ip("2001:db8:1:2::1")), Ok(()));
        assert!(l.record_failure(ip("2001:db8:1:2:ffff::9")).is_err());
        assert!(l.check(ip("2001:db8:1:2::77")).is_err());
        assert_eq!(l.check(ip("2001:db8:1:3::1")), Ok(()));
        assert_eq!(l.record_failure(ip("::ffff:198.51.100.7")), Ok(()));
        assert!(l.record_failure(ip("198.51.100.7")).is_err());
    }

    #[test]
    fn tracking_is_bounded_and_fails_open() {
        let (l, clock) = limiter(1, 10);
        for i in 0..1000u32 {
            let a = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            let _ = l.record_failure(a);
            let _ = l.record_failure(a);
            assert!(l.tracked() <= 20, "tracked {}", l.tracked());
        }
        // Once the states are stale (governor keeps them one period past their last use),
        // they are dropped and new addresses are counted again.
        clock.advance(Duration::from_secs(121));
        let a = ip("203.0.113.9");
        assert_eq!(l.record_failure(a), Ok(()));
        assert!(l.record_failure(a).is_err());
    }
}
