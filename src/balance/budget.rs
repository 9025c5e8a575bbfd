//! A retry budget (Finagle's `RetryBudget`, Envoy's `retry_budget`): retries may add at most
//! `ratio` of the recent request rate, plus a small floor so a quiet pool can still retry.
//!
//! Every request deposits one unit; every retry withdraws one. Over a sliding window (ten
//! one-second buckets by default) a retry is allowed while
//! `retries < requests × ratio + min_per_sec × window_seconds`. Pure code over an explicit
//! clock: the pool calls it under its lock.

use std::time::{Duration, Instant};

/// Buckets the window is cut into; old buckets drop out whole.
const BUCKETS: usize = 10;

#[derive(Debug, Clone)]
pub struct RetryBudget {
    /// `ratio` in thousandths, so the arithmetic is exact (0.2 is 200).
    ratio_milli: u64,
    min_per_sec: u64,
    bucket_len: Duration,
    origin: Instant,
    /// The bucket number (time since `origin` / `bucket_len`) of `counts[epoch % BUCKETS]`.
    epoch: u64,
    /// Per bucket: (requests, retries).
    counts: [(u64, u64); BUCKETS],
}

impl RetryBudget {
    /// `ratio`: retries per request allowed (0.2 = at most 20% extra load; clamped to
    /// 0..=10); `min_per_sec`: retries allowed per second however few requests come;
    /// `window`: how far back requests count (at least 10 ms).
    pub fn new(ratio: f64, min_per_sec: u32, window: Duration, now: Instant) -> RetryBudget {
        let ratio = if ratio.is_finite() {
            ratio.clamp(0.0, 10.0)
        } else {
            0.0
        };
        let window = window.max(Duration::from_millis(10));
        RetryBudget {
            ratio_milli: (ratio * 1000.0).round() as u64,
            min_per_sec: u64::from(min_per_sec),
            bucket_len: window / BUCKETS as u32,
            origin: now,
            epoch: 0,
            counts: [(0, 0); BUCKETS],
        }
    }

    fn window(&self) -> Duration {
        self.bucket_len * BUCKETS as u32
    }

    /// Moves the window to `now`, clearing the buckets that fell out of it.
    fn advance(&mut self, now: Instant) {
        let nanos = now.saturating_duration_since(self.origin).as_nanos();
        let e = (nanos / self.bucket_len.as_nanos().max(1)) as u64;
        if e <= self.epoch {
            return;
        }
        let stale = (e - self.epoch).min(BUCKETS as u64);
        for k in 1..=stale {
            self.counts[((self.epoch + k) % BUCKETS as u64) as usize] = (0, 0);
        }
        self.epoch = e;
    }

    fn slot(&mut self) -> &mut (u64, u64) {
        &mut self.counts[(self.epoch % BUCKETS as u64) as usize]
    }

    /// A request (a first try, not a retry) started.
    pub fn deposit(&mut self, now: Instant) {
        self.advance(now);
        self.slot().0 += 1;
    }

    /// Retries the window allows in all (used and unused).
    pub fn allowance(&mut self, now: Instant) -> u64 {
        let (requests, _) = self.window_counts(now);
        self.allowance_for(requests)
    }

    /// Retries allowed for `requests` requests in the window, the floor included.
    fn allowance_for(&self, requests: u64) -> u64 {
        // Whole seconds of floor the window holds (a sub-second window keeps at least one).
        let floor = (self.min_per_sec * self.window().as_millis() as u64).div_ceil(1000);
        requests.saturating_mul(self.ratio_milli) / 1000 + floor
    }

    /// The requests and retries the window holds at `now`.
    fn window_counts(&mut self, now: Instant) -> (u64, u64) {
        self.advance(now);
        self.counts
            .iter()
            .fold((0, 0), |(a, b), c| (a + c.0, b + c.1))
    }

    /// Whether one retry may go now; when it may, it is counted against the budget.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        try_withdraw_sharded(&mut [self], 0, now)
    }
}

/// A budget kept in shards, one per thread shard, each counting its own thread's requests
/// (so that the requests of both cores do not write one lock's cache line): a retry is
/// weighed against the requests and retries of all of them, with the floor counted once,
/// exactly as one budget would weigh it, and counted in shard `own`. The shards share
/// their settings and clock origin.
pub fn try_withdraw_sharded(shards: &mut [&mut RetryBudget], own: usize, now: Instant) -> bool {
    let (mut requests, mut used) = (0u64, 0u64);
    for b in shards.iter_mut() {
        let (r, u) = b.window_counts(now);
        requests += r;
        used += u;
    }
    let n = shards.len();
    let Some(first) = shards.first() else {
        return false;
    };
    if used >= first.allowance_for(requests) {
        return false;
    }
    shards[own % n].slot().1 += 1;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(10);

    fn retries_allowed(b: &mut RetryBudget, now: Instant, tries: u32) -> u32 {
        (0..tries).filter(|_| b.try_withdraw(now)).count() as u32
    }

    #[test]
    fn a_hundred_requests_allow_twenty_retries() {
        let t = Instant::now();
        let mut b = RetryBudget::new(0.2, 0, WINDOW, t);
        for _ in 0..100 {
            b.deposit(t);
        }
        assert_eq!(retries_allowed(&mut b, t, 50), 20);
        // More requests earn more retries.
        for _ in 0..10 {
            b.deposit(t);
        }
        assert_eq!(retries_allowed(&mut b, t, 50), 2);
    }

    #[test]
    fn the_floor_allows_retries_at_a_low_rate() {
        let t = Instant::now();
        let mut b = RetryBudget::new(0.2, 10, WINDOW, t);
        // No requests at all: 10 per second over a 10 s window.
        assert_eq!(retries_allowed(&mut b, t, 500), 100);
        let mut c = RetryBudget::new(0.2, 1, WINDOW, t);
        for _ in 0..3 {
            c.deposit(t);
        }
        // 3 × 0.2 rounds down to 0, plus the floor's 10.
        assert_eq!(retries_allowed(&mut c, t, 50), 10);
    }

    #[test]
    fn requests_and_retries_leave_the_window() {
        let t = Instant::now();
        let mut b = RetryBudget::new(0.5, 0, WINDOW, t);
        for _ in 0..20 {
            b.deposit(t);
        }
        assert_eq!(retries_allowed(&mut b, t, 20), 10);
        // Half-way through the window nothing has expired.
        let mid = t + Duration::from_secs(5);
        assert_eq!(retries_allowed(&mut b, mid, 20), 0);
        for _ in 0..4 {
            b.deposit(mid);
        }
        assert_eq!(retries_allowed(&mut b, mid, 20), 2);
        // The first second's requests and retries are gone; the mid ones stay.
        let later = t + Duration::from_secs(11);
        assert_eq!(b.allowance(later), 2);
        assert_eq!(retries_allowed(&mut b, later, 20), 0);
        // Long after, everything is gone, and a clock that did not move changes nothing.
        let much_later = t + Duration::from_secs(100);
        assert_eq!(b.allowance(much_later), 0);
        assert_eq!(b.allowance(t), 0);
    }

    /// Requests counted in three shards allow the retries one budget with all of them
    /// would, the floor once; the retries are counted wherever they went.
    #[test]
    fn shards_weigh_a_retry_as_one_budget() {
        let t = Instant::now();
        let template = RetryBudget::new(0.2, 1, WINDOW, t);
        let (mut a, mut b, mut c) = (template.clone(), template.clone(), template.clone());
        let mut one = template;
        for i in 0..100 {
            [&mut a, &mut b, &mut c][i % 3].deposit(t);
            one.deposit(t);
        }
        let mut sharded = 0;
        for i in 0..100 {
            if try_withdraw_sharded(&mut [&mut a, &mut b, &mut c], i % 3, t) {
                sharded += 1;
            }
        }
        // 100 × 0.2 + a floor of 1 per second over 10 s.
        assert_eq!(sharded, 30);
        assert_eq!(retries_allowed(&mut one, t, 100), 30);
        // Each shard counted the retries made from it.
        let used = |x: &mut RetryBudget| x.window_counts(t).1;
        assert_eq!(used(&mut a) + used(&mut b) + used(&mut c), 30);
        assert_eq!(used(&mut a), 10);
        assert!(!try_withdraw_sharded(&mut [], 0, t));
    }

    #[test]
    fn odd_ratios_are_clamped() {
        let t = Instant::now();
        for r in [f64::NAN, -1.0, f64::INFINITY] {
            let mut b = RetryBudget::new(r, 0, WINDOW, t);
            b.deposit(t);
            assert_eq!(b.allowance(t), 0, "{r}");
        }
    }
}
