//! Bandwidth: a token bucket in bytes, shared by every stream of one client or user.
//!
//! The bucket is kept as a GCRA "theoretical arrival time" (`tat`): each byte costs
//! `1 / rate` seconds, and the bucket holds `burst` bytes' worth of time. A stream reserves
//! the bytes it has just read ([`Throttle::consume`]) and, when the reservation goes past
//! the burst, sleeps until the debt is paid, then writes. Reservations queue in arrival
//! order, so streams sharing a bucket share the rate; nobody spins, and the debt a bucket can
//! owe is at most one chunk ([`Throttle::max_chunk`]) per stream using it.
//!
//! Time is `tokio::time::Instant`, so tests run under a paused clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Largest chunk one stream may reserve at once (and the largest burst).
pub const MAX_CHUNK: u64 = 256 * 1024;
/// Smallest useful chunk: about one TCP segment.
const MIN_CHUNK: u64 = 1460;

/// One token bucket: `rate` bytes per second, a burst of [`Bucket::burst`] bytes.
#[derive(Debug)]
pub struct Bucket {
    rate: u64,
    burst: u64,
    /// When the bucket will be full again; `<= now` means full.
    tat: Mutex<Instant>,
}

impl Bucket {
    /// A full bucket. A rate of 0 is treated as 1 byte/s (the config never produces 0).
    pub fn new(rate: u64) -> Bucket {
        let rate = rate.max(1);
        Bucket {
            rate,
            burst: burst_for(rate),
            tat: Mutex::new(Instant::now()),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Reserves `n` bytes now; returns how long to wait before sending them.
    fn reserve(&self, n: u64, now: Instant) -> Duration {
        let tolerance = self.cost(self.burst);
        let Ok(mut tat) = self.tat.lock() else {
            return Duration::ZERO;
        };
        let start = (*tat).max(now);
        let new_tat = start + self.cost(n);
        *tat = new_tat;
        new_tat.saturating_duration_since(now + tolerance)
    }

    /// Whether the bucket is full (nothing owed): an idle bucket may be forgotten.
    pub fn is_full(&self, now: Instant) -> bool {
        self.tat.lock().map(|t| *t <= now).unwrap_or(true)
    }

    /// Time `n` bytes take at this rate.
    fn cost(&self, n: u64) -> Duration {
        let nanos = u128::from(n) * 1_000_000_000 / u128::from(self.rate);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// An eighth of a second of traffic, within [`MIN_CHUNK`] (or the rate, if lower) and
/// [`MAX_CHUNK`]: small enough that the rate is smooth, large enough for few wakeups.
fn burst_for(rate: u64) -> u64 {
    (rate / 8).clamp(MIN_CHUNK.min(rate), MAX_CHUNK)
}

/// What a stream direction is limited by: up to two shared buckets (the client's and the
/// user's); a byte must fit in both. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Throttle {
    buckets: Vec<Arc<Bucket>>,
}

impl Throttle {
    /// A throttle over its own, unshared bucket.
    pub fn new(rate: u64) -> Throttle {
        Throttle::shared(vec![Arc::new(Bucket::new(rate))])
    }

    /// A throttle over buckets that other streams use too. Empty means unlimited.
    pub fn shared(buckets: Vec<Arc<Bucket>>) -> Throttle {
        Throttle { buckets }
    }

    /// The most bytes to read before calling [`Throttle::consume`]: the smallest burst.
    pub fn max_chunk(&self) -> usize {
        let b = self
            .buckets
            .iter()
            .map(|b| b.burst)
            .min()
            .unwrap_or(MAX_CHUNK);
        usize::try_from(b).unwrap_or(usize::MAX).max(1)
    }

    /// Takes `n` bytes from every bucket, sleeping until all of them can afford it. Call
    /// after reading and before writing.
    pub async fn consume(&self, n: usize) {
        let now = Instant::now();
        let wait = self
            .buckets
            .iter()
            .map(|b| b.reserve(n as u64, now))
            .max()
            .unwrap_or(Duration::ZERO);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// A writer that pays for its bytes with a [`Throttle`] before writing them: bandwidth limits
/// for streams that are not relayed by [`crate::relay`] (HTTP request and response bodies).
pub struct Throttled<W> {
    inner: W,
    throttle: Option<Throttle>,
    wait: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    /// Bytes paid for and not yet written.
    paid: usize,
    pending: usize,
}

impl<W> Throttled<W> {
    pub fn new(inner: W, throttle: Option<Throttle>) -> Self {
        Throttled {
            inner,
            throttle,
            wait: None,
            paid: 0,
            pending: 0,
        }
    }

    /// The writer itself, when there is no limit to pay for its bytes.
    pub fn unthrottled(&mut self) -> Option<&mut W> {
        self.throttle.is_none().then_some(&mut self.inner)
    }
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Throttled<W> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        let this = self.get_mut();
        let Some(t) = &this.throttle else {
            return std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.paid == 0 {
            if this.wait.is_none() {
                let (t, n) = (t.clone(), buf.len().min(t.max_chunk()).max(1));
                this.pending = n;
                this.wait = Some(Box::pin(async move { t.consume(n).await }));
            }
            if let Some(w) = this.wait.as_mut() {
                if w.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            this.wait = None;
            this.paid = this.pending;
        }
        let n = buf.len().min(this.paid);
        let r = std::pin::Pin::new(&mut this.inner).poll_write(cx, &buf[..n]);
        if let Poll::Ready(Ok(written)) = r {
            this.paid -= written.min(this.paid);
        }
        r
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_bucket_lets_the_burst_through_then_paces() {
        let t = Throttle::new(8000);
        assert_eq!(t.max_chunk(), 1460, "1 s / 8 is below one segment");
        let start = Instant::now();
        t.consume(1460).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst is free");
        // 8000 more bytes at 8000 B/s: one second.
        for _ in 0..8 {
            t.consume(1000).await;
        }
        let e = start.elapsed();
        assert!(
            e >= Duration::from_millis(1000) - Duration::from_millis(1)
                && e <= Duration::from_millis(1001),
            "{e:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_bucket_refills_but_never_past_the_burst() {
        let b = Arc::new(Bucket::new(1_000_000));
        assert_eq!(b.burst(), 125_000);
        let t = Throttle::shared(vec![b.clone()]);
        t.consume(125_000).await;
        assert!(!b.is_full(Instant::now()));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(b.is_full(Instant::now()));
        // A minute idle buys only one burst, not 60 MB.
        let start = Instant::now();
        t.consume(125_000).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        t.consume(500_000).await;
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn streams_sharing_a_bucket_share_the_rate() {
        let b = Arc::new(Bucket::new(100_000));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let t = Throttle::shared(vec![b.clone()]);
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    t.consume(t.max_chunk()).await;
                }
            }));
        }
        for t in tasks {
            t.await.expect("join");
        }
        // 4 x 25 x 12,500 bytes = 1.25 MB at 100 kB/s, less the free burst: 12.375 s.
        assert_eq!(start.elapsed(), Duration::from_millis(12_375));
    }

    #[tokio::test(start_paused = true)]
    async fn the_slower_of_two_buckets_wins() {
        let fast = Arc::new(Bucket::new(1_000_000));
        let slow = Arc::new(Bucket::new(10_000));
        let t = Throttle::shared(vec![fast, slow]);
        assert_eq!(t.max_chunk(), 1460);
        let start = Instant::now();
        for _ in 0..10 {
            t.consume(1460).await;
        }
        // 14,600 bytes at 10 kB/s, less the 1,460-byte burst.
        assert_eq!(start.elapsed(), Duration::from_millis(1314));
    }

    #[test]
    fn bursts_are_bounded() {
        assert_eq!(burst_for(1), 1);
        assert_eq!(burst_for(100), 100);
        assert_eq!(burst_for(1 << 40), MAX_CHUNK);
        assert_eq!(Bucket::new(0).rate(), 1);
    }
}
