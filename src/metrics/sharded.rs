//! Counters and histograms that each thread updates in a slot of its own, summed only when
//! `/metrics` is read (as Envoy's thread-local stats and HAProxy's per-thread counters).
//!
//! `prometheus_client`'s counter is one atomic and its histogram one mutex: with every
//! request on both cores adding to the same listener, route and server series, the cache
//! line of each went back and forth between the cores several times per request. Here a
//! series keeps one slot per shard, each on cache lines of its own; a per-core worker thread
//! writes its own shard ([`crate::workers::current`]), any other thread one picked for it
//! when it first counts. The slots are atomics, so two threads sharing a shard stay correct.
//!
//! The text `/metrics` shows is the same as the crate's types give: these implement its
//! `EncodeMetric` with the sums.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

use crate::workers::{shard_count as shards, slot_of};

/// One shard's count, on cache lines of its own.
type Slot = crate::workers::Apart<AtomicU64>;

/// A monotonic count (a Prometheus counter).
#[derive(Clone, Debug)]
pub struct Counter {
    slots: Arc<[Slot]>,
}

impl Default for Counter {
    fn default() -> Self {
        Counter {
            slots: (0..shards()).map(|_| Slot::default()).collect(),
        }
    }
}

impl Counter {
    pub fn inc(&self) {
        self.inc_by(1);
    }

    pub fn inc_by(&self, v: u64) {
        self.slots[slot_of(self.slots.len())]
            .0
            .fetch_add(v, Ordering::Relaxed);
    }

    /// The sum over the shards.
    pub fn get(&self) -> u64 {
        self.slots
            .iter()
            .fold(0u64, |sum, s| sum.wrapping_add(s.0.load(Ordering::Relaxed)))
    }
}

impl TypedMetric for Counter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Counter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Most buckets a [`Histogram`] keeps (the `+Inf` one included); more bounds are dropped
/// from the top (the ones configured here have 11 and 17).
const MAX_BUCKETS: usize = 30;

/// One shard of a histogram: the sum (an `f64`'s bits), the count, the buckets; 256 bytes.
#[repr(align(128))]
struct HistShard {
    sum: AtomicU64,
    count: AtomicU64,
    buckets: [AtomicU64; MAX_BUCKETS],
}

impl Default for HistShard {
    fn default() -> Self {
        HistShard {
            sum: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Observations in buckets by upper bound (a Prometheus histogram).
#[derive(Clone)]
pub struct Histogram {
    /// The finite upper bounds, ascending; the last bucket (`+Inf`) is implied.
    bounds: Arc<[f64]>,
    shards: Arc<[HistShard]>,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (sum, count, _) = self.get();
        f.debug_struct("Histogram")
            .field("sum", &sum)
            .field("count", &count)
            .finish()
    }
}

impl Histogram {
    /// Buckets with these upper bounds (non-finite ones dropped, sorted) and `+Inf`.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Histogram {
        let mut b: Vec<f64> = bounds.into_iter().filter(|v| v.is_finite()).collect();
        b.sort_by(f64::total_cmp);
        b.dedup();
        b.truncate(MAX_BUCKETS - 1);
        Histogram {
            bounds: b.into(),
            shards: (0..shards()).map(|_| HistShard::default()).collect(),
        }
    }

    pub fn observe(&self, v: f64) {
        let s = &self.shards[slot_of(self.shards.len())];
        // The first bucket whose bound holds `v`; NaN and beyond every bound: `+Inf`.
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        s.buckets[i].fetch_add(1, Ordering::Relaxed);
        s.count.fetch_add(1, Ordering::Relaxed);
        // Nearly always this thread's own slot: the first exchange succeeds.
        let _ = s
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    /// The sum, the count and each bucket's own count (not cumulative) with its upper
    /// bound, `+Inf` last: over all shards.
    pub fn get(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut sum = 0.0;
        let mut count = 0u64;
        let mut buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .map(|b| (b, 0))
            .collect();
        for s in self.shards.iter() {
            sum += f64::from_bits(s.sum.load(Ordering::Relaxed));
            count = count.wrapping_add(s.count.load(Ordering::Relaxed));
            for (slot, (_, n)) in s.buckets.iter().zip(buckets.iter_mut()) {
                *n = n.wrapping_add(slot.load(Ordering::Relaxed));
            }
        }
        (sum, count, buckets)
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.get();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    /// Counts from four worker threads (several shards) add up, and the text is what
    /// `prometheus_client`'s own counter and histogram give for the same observations.
    #[test]
    fn shards_add_up_to_what_the_crates_types_show() {
        let ours_c = Counter::default();
        let ours_h = Histogram::new([0.5, 1.0, 2.0]);
        let theirs_c = prometheus_client::metrics::counter::Counter::<u64>::default();
        let theirs_h = prometheus_client::metrics::histogram::Histogram::new([0.5, 1.0, 2.0]);
        let values = [0.1, 0.5, 0.7, 1.0, 1.5, 3.0, f64::NAN];
        std::thread::scope(|s| {
            for t in 0..4 {
                let (c, h) = (&ours_c, &ours_h);
                s.spawn(move || {
                    // Workers 0..3: both shards of a two-core machine, and more.
                    crate::workers::mark_current(t);
                    for v in values {
                        if !v.is_nan() {
                            c.inc_by(2);
                            h.observe(v);
                        }
                    }
                    c.inc();
                });
            }
        });
        for _ in 0..4 {
            for v in values {
                if !v.is_nan() {
                    theirs_c.inc_by(2);
                    theirs_h.observe(v);
                }
            }
            theirs_c.inc();
        }
        assert_eq!(ours_c.get(), 4 * (6 * 2 + 1));
        let text = |c: Box<dyn Fn(&mut Registry)>| {
            let mut r = Registry::default();
            c(&mut r);
            let mut out = String::new();
            encode(&mut out, &r).expect("encode");
            out
        };
        let (c1, h1) = (ours_c.clone(), ours_h.clone());
        let ours = text(Box::new(move |r| {
            r.register("c", "a counter", c1.clone());
            r.register("h", "a histogram", h1.clone());
        }));
        let theirs = text(Box::new(move |r| {
            r.register("c", "a counter", theirs_c.clone());
            r.register("h", "a histogram", theirs_h.clone());
        }));
        assert_eq!(ours, theirs);
        assert!(ours.contains("h_bucket{le=\"+Inf\"} 24"), "{ours}");
        // NaN goes to +Inf, as the crate's does.
        ours_h.observe(f64::NAN);
        assert_eq!(ours_h.get().2.last().map(|b| b.1), Some(5));
    }
}
