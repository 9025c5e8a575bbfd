//! Live statistics for the admin API and the dashboard, fed by one tap on the access-record
//! stream (every HTTP request, CONNECT tunnel, SOCKS session and balanced connection ends in
//! one [`AccessRecord`]).
//!
//! Everything here is bounded: per-listener counters (listeners are few, and capped), a ring
//! of the last [`WINDOW`] one-second samples per listener for rates and charts, errors by
//! `Proxy-Status` error type (a fixed vocabulary), rule hit counts (capped), and the top
//! clients and destinations kept by a space-saving heavy-hitters summary of fixed size.
//! Pure code over records and an explicit clock, so it is tested without sockets.
//!
//! A record is counted when its request or connection ends: a long tunnel's bytes land in
//! the second it closes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::accesslog::AccessRecord;

/// Seconds of per-second samples kept per listener.
pub const WINDOW: usize = 60;
/// Seconds averaged for the rates shown (complete seconds only).
pub const RATE_SECONDS: u64 = 5;
/// Entries of each heavy-hitters summary (the top list shows at most [`TOP`] of them).
const SUMMARY: usize = 64;
pub const TOP: usize = 10;
/// Caps on keys that come from the config (listener and rule names, parents).
const MAX_NAMES: usize = 1024;
/// Longest destination kept (longer ones are cut).
const MAX_DESTINATION: usize = 255;

/// The live statistics, shared by every connection: one short lock per record, of this
/// thread's shard (a per-core worker's own), so the two cores do not pass one lock's cache
/// line between them on every request. A snapshot adds the shards up.
pub struct Stats {
    start: Instant,
    shards: Box<[Shard]>,
    shared: Mutex<Shared>,
}

/// One thread shard's counts, on cache lines of its own.
type Shard = crate::workers::Apart<Mutex<Tally>>;

/// What the records add to.
#[derive(Default)]
struct Tally {
    listeners: BTreeMap<Arc<str>, ListenerCounters>,
    errors: BTreeMap<&'static str, u64>,
    rules: BTreeMap<Arc<str>, u64>,
    cache: BTreeMap<&'static str, u64>,
    clients: SpaceSaving<IpAddr>,
    destinations: SpaceSaving<String>,
}

/// What is set apart from the records (at start, on reload, by connects through parents).
#[derive(Default)]
struct Shared {
    /// The configured listeners (name, kind, address), set at start and on reload.
    configured: Vec<ListenerInfo>,
    parents: BTreeMap<String, ParentHealth>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ListenerInfo {
    pub name: String,
    pub kind: &'static str,
    pub addr: SocketAddr,
}

#[derive(Default)]
struct ListenerCounters {
    requests: u64,
    errors: u64,
    bytes_in: u64,
    bytes_out: u64,
    ring: Ring,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub requests: u64,
    pub bytes: u64,
}

/// Per-second samples, newest last, at most [`WINDOW`] seconds back.
#[derive(Default)]
struct Ring {
    samples: VecDeque<(u64, Sample)>,
}

impl Ring {
    fn add(&mut self, sec: u64, requests: u64, bytes: u64) {
        match self.samples.back_mut() {
            Some((s, sample)) if *s == sec => {
                sample.requests += requests;
                sample.bytes += bytes;
            }
            // A record stamped in an older second (threads race on the clock) joins the
            // newest sample rather than reordering the ring.
            Some((s, sample)) if *s > sec => {
                sample.requests += requests;
                sample.bytes += bytes;
            }
            _ => self.samples.push_back((sec, Sample { requests, bytes })),
        }
        while self
            .samples
            .front()
            .is_some_and(|(s, _)| s + (WINDOW as u64) <= sec)
        {
            self.samples.pop_front();
        }
    }

    /// The last [`WINDOW`] complete seconds before `now_sec`, oldest first, zeros where
    /// nothing happened (also before the start).
    fn series(&self, now_sec: u64) -> Vec<Sample> {
        (0..WINDOW as u64)
            .rev()
            .map(|back| {
                let sec = now_sec.checked_sub(back + 1);
                self.samples
                    .iter()
                    .find(|(s, _)| Some(*s) == sec)
                    .map_or(Sample::default(), |(_, v)| *v)
            })
            .collect()
    }
}

/// One parent's health as the connects through it saw it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ParentHealth {
    pub successes: u64,
    pub failures: u64,
    /// Whether the last attempt through it succeeded.
    pub up: bool,
    #[serde(serialize_with = "opt_time")]
    pub last_success: Option<SystemTime>,
    #[serde(serialize_with = "opt_time")]
    pub last_failure: Option<SystemTime>,
    pub last_error: Option<String>,
}

fn opt_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.collect_str(&humantime::format_rfc3339_millis(*t)),
        None => s.serialize_none(),
    }
}

/// A space-saving summary (Metwally et al.): at most `capacity` keys; a new key replaces the
/// one with the smallest count and inherits that count as its possible overestimate. Every
/// key seen more than `total / capacity` times is guaranteed to be in it.
struct SpaceSaving<K> {
    capacity: usize,
    /// A fast hasher: at most `capacity` keys, so colliding keys cannot grow it.
    counts: HashMap<K, (u64, u64), foldhash::fast::RandomState>,
}

impl<K> Default for SpaceSaving<K> {
    fn default() -> Self {
        SpaceSaving {
            capacity: SUMMARY,
            counts: HashMap::default(),
        }
    }
}

impl<K: Hash + Eq + Clone + Ord> SpaceSaving<K> {
    fn add(&mut self, key: K, n: u64) {
        if let Some((count, _)) = self.counts.get_mut(&key) {
            *count += n;
            return;
        }
        if self.counts.len() < self.capacity {
            self.counts.insert(key, (n, 0));
            return;
        }
        let Some(min_key) = self
            .counts
            .iter()
            .min_by(|a, b| a.1 .0.cmp(&b.1 .0).then_with(|| a.0.cmp(b.0)))
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        let (min, _) = self.counts.remove(&min_key).unwrap_or((0, 0));
        self.counts.insert(key, (min + n, min));
    }

    /// Its keys with their counts, and its smallest count when it is full.
    fn summary(&self) -> Summary<K> {
        let full = self.counts.len() >= self.capacity;
        Summary {
            entries: self
                .counts
                .iter()
                .map(|(k, (c, e))| (k.clone(), *c, *e))
                .collect(),
            floor: if full {
                self.counts.values().map(|(c, _)| *c).min()
            } else {
                None
            },
        }
    }

    /// The `n` largest, largest first (ties by key), with their possible overestimate.
    #[cfg(test)]
    fn top(&self, n: usize) -> Vec<(K, u64, u64)> {
        let mut all: Vec<_> = self
            .counts
            .iter()
            .map(|(k, (c, e))| (k.clone(), *c, *e))
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }
}

impl SpaceSaving<String> {
    /// [`SpaceSaving::add`] without making a `String` when the key is already counted.
    fn add_str(&mut self, key: &str, n: u64) {
        match self.counts.get_mut(key) {
            Some((count, _)) => *count += n,
            None => self.add(key.to_string(), n),
        }
    }
}

/// What the admin API shows: `GET /api/v1/status` serializes it (with more around it).
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub uptime_seconds: u64,
    pub listeners: Vec<ListenerSnapshot>,
    pub errors: BTreeMap<String, u64>,
    pub rules: BTreeMap<String, u64>,
    /// Records by cache status (hit, miss, ...).
    pub cache_statuses: BTreeMap<String, u64>,
    pub top_clients: Vec<TopEntry>,
    pub top_destinations: Vec<TopEntry>,
    pub parents: BTreeMap<String, ParentHealth>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListenerSnapshot {
    pub name: String,
    /// `http`, `socks`, `tcp`, `udp`; empty for a listener no longer configured.
    pub kind: &'static str,
    pub addr: Option<SocketAddr>,
    pub requests: u64,
    /// Records that carried a `Proxy-Status` error.
    pub errors: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Averages over the last [`RATE_SECONDS`] complete seconds.
    pub requests_per_second: f64,
    pub bytes_per_second: f64,
    /// The last [`WINDOW`] complete seconds, oldest first.
    pub series: Vec<Sample>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TopEntry {
    pub key: String,
    pub count: u64,
    /// How much of `count` may belong to keys this one replaced in the summary.
    pub error: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats::starting_at(Instant::now())
    }

    pub fn starting_at(start: Instant) -> Stats {
        Stats {
            start,
            shards: (0..crate::workers::shard_count())
                .map(|_| Shard::default())
                .collect(),
            shared: Mutex::default(),
        }
    }

    /// This thread's shard.
    fn tally(&self) -> MutexGuard<'_, Tally> {
        let i = crate::workers::slot_of(self.shards.len());
        // Counters only: a panic elsewhere cannot leave them in a state worse than stale.
        self.shards[i].0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs()
    }

    /// The tap: counts one finished request, tunnel or session.
    pub fn record(&self, rec: &AccessRecord) {
        self.record_at(rec, Instant::now());
    }

    pub fn record_at(&self, rec: &AccessRecord, now: Instant) {
        let sec = self.second(now);
        let mut g = self.tally();
        let inner = &mut *g;
        let bytes = rec.bytes_in + rec.bytes_out;
        let count = |l: &mut ListenerCounters| {
            l.requests += 1;
            l.bytes_in += rec.bytes_in;
            l.bytes_out += rec.bytes_out;
            l.errors += u64::from(rec.error.is_some());
            l.ring.add(sec, 1, bytes);
        };
        // One lookup when the listener is known (every record but its first).
        if let Some(l) = inner.listeners.get_mut(&rec.listener) {
            count(l);
        } else if inner.listeners.len() < MAX_NAMES {
            count(inner.listeners.entry(rec.listener.clone()).or_default());
        }
        if let Some(e) = rec.error {
            *inner.errors.entry(e).or_default() += 1;
        }
        if let Some(c) = rec.cache {
            *inner.cache.entry(c).or_default() += 1;
        }
        if let Some(rule) = &rec.rule {
            if let Some(n) = inner.rules.get_mut(rule) {
                *n += 1;
            } else if inner.rules.len() < MAX_NAMES {
                inner.rules.insert(rule.clone(), 1);
            }
        }
        inner.clients.add(rec.client.ip().to_canonical(), 1);
        if let Some(d) = destination(&rec.target) {
            inner.destinations.add_str(&d, 1);
        }
    }

    /// Notes a connect through parent `name`: `Err` holds why it failed.
    pub fn parent_result(&self, name: &str, result: Result<(), String>) {
        let mut g = self.lock();
        if !g.parents.contains_key(name) && g.parents.len() >= MAX_NAMES {
            return;
        }
        let p = g.parents.entry(name.to_string()).or_default();
        let now = SystemTime::now();
        match result {
            Ok(()) => {
                p.successes += 1;
                p.up = true;
                p.last_success = Some(now);
            }
            Err(why) => {
                p.failures += 1;
                p.up = false;
                p.last_failure = Some(now);
                p.last_error = Some(why);
            }
        }
    }

    /// The configured listeners, in config order (at start and after each reload).
    pub fn set_listeners(&self, list: Vec<ListenerInfo>) {
        self.lock().configured = list;
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot_at(Instant::now())
    }

    pub fn snapshot_at(&self, now: Instant) -> Snapshot {
        let sec = self.second(now);
        let t = self.merged(sec);
        let g = self.lock();
        let empty = Merged::default();
        let one = |name: &str, kind, addr| {
            let c = t.listeners.get(name).unwrap_or(&empty);
            // A listener no record has reached yet: a window of zeros, as for any other.
            let series = if c.series.is_empty() {
                vec![Sample::default(); WINDOW]
            } else {
                c.series.clone()
            };
            let recent = &series[series.len().saturating_sub(RATE_SECONDS as usize)..];
            let per_second = |f: fn(&Sample) -> u64| {
                recent.iter().map(f).sum::<u64>() as f64 / RATE_SECONDS as f64
            };
            ListenerSnapshot {
                name: name.to_string(),
                kind,
                addr,
                requests: c.requests,
                errors: c.errors,
                bytes_in: c.bytes_in,
                bytes_out: c.bytes_out,
                requests_per_second: per_second(|s| s.requests),
                bytes_per_second: per_second(|s| s.bytes),
                series,
            }
        };
        let mut listeners: Vec<ListenerSnapshot> = g
            .configured
            .iter()
            .map(|l| one(&l.name, l.kind, Some(l.addr)))
            .collect();
        // Listeners removed by a reload keep their counts.
        for name in t.listeners.keys() {
            if !g.configured.iter().any(|l| *l.name == **name) {
                listeners.push(one(name, "", None));
            }
        }
        let top = |entries: Vec<(String, u64, u64)>| {
            entries
                .into_iter()
                .map(|(key, count, error)| TopEntry { key, count, error })
                .collect()
        };
        Snapshot {
            uptime_seconds: sec,
            listeners,
            errors: t.errors.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            rules: t.rules.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            cache_statuses: t.cache.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            top_clients: top(t
                .clients
                .into_iter()
                .map(|(k, c, e)| (k.to_string(), c, e))
                .collect()),
            top_destinations: top(t.destinations),
            parents: g.parents.clone(),
        }
    }

    /// Every shard's counts added up (the rings as their series at `sec`).
    fn merged(&self, sec: u64) -> MergedTally {
        let mut m = MergedTally::default();
        let mut clients = Vec::with_capacity(self.shards.len());
        let mut destinations = Vec::with_capacity(self.shards.len());
        for shard in self.shards.iter() {
            let t = shard.0.lock().unwrap_or_else(|e| e.into_inner());
            for (name, c) in &t.listeners {
                let e = m.listeners.entry(name.clone()).or_default();
                e.requests += c.requests;
                e.errors += c.errors;
                e.bytes_in += c.bytes_in;
                e.bytes_out += c.bytes_out;
                let series = c.ring.series(sec);
                if e.series.is_empty() {
                    e.series = series;
                } else {
                    for (a, b) in e.series.iter_mut().zip(series) {
                        a.requests += b.requests;
                        a.bytes += b.bytes;
                    }
                }
            }
            for (k, v) in &t.errors {
                *m.errors.entry(k).or_default() += v;
            }
            for (k, v) in &t.rules {
                *m.rules.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &t.cache {
                *m.cache.entry(k).or_default() += v;
            }
            clients.push(t.clients.summary());
            destinations.push(t.destinations.summary());
        }
        m.clients = merge_top(clients, TOP);
        m.destinations = merge_top(destinations, TOP);
        m
    }
}

/// One listener's counts over the shards.
#[derive(Default)]
struct Merged {
    requests: u64,
    errors: u64,
    bytes_in: u64,
    bytes_out: u64,
    series: Vec<Sample>,
}

#[derive(Default)]
struct MergedTally {
    listeners: BTreeMap<Arc<str>, Merged>,
    errors: BTreeMap<&'static str, u64>,
    rules: BTreeMap<Arc<str>, u64>,
    cache: BTreeMap<&'static str, u64>,
    clients: Vec<(IpAddr, u64, u64)>,
    destinations: Vec<(String, u64, u64)>,
}

/// One shard's heavy-hitters summary: its keys with count and possible overestimate, and
/// whether it is full (then a key it lacks may still have been counted there, up to its
/// smallest count, before being replaced).
struct Summary<K> {
    entries: Vec<(K, u64, u64)>,
    floor: Option<u64>,
}

/// The `n` largest of several shards' summaries (each of [`SUMMARY`] keys at most), largest
/// first (ties by key): a key's counts and overestimates added up, plus, for each full
/// summary without it, that summary's smallest count as a further possible overestimate
/// (mergeable summaries, Agarwal et al. 2012). A key seen more than `total / SUMMARY`
/// times in all is more than that share of some shard's records, so that shard kept it.
fn merge_top<K: Hash + Eq + Clone + Ord>(
    summaries: Vec<Summary<K>>,
    n: usize,
) -> Vec<(K, u64, u64)> {
    let mut all: HashMap<K, (u64, u64, usize)> = HashMap::new();
    for s in &summaries {
        for (k, c, e) in &s.entries {
            let v = all.entry(k.clone()).or_default();
            v.0 += c;
            v.1 += e;
            v.2 += 1;
        }
    }
    let mut out: Vec<(K, u64, u64)> = all
        .into_iter()
        .map(|(k, (c, e, seen_in))| {
            // The floors of the full summaries that lack this key.
            let missing: u64 = if seen_in == summaries.len() {
                0
            } else {
                summaries
                    .iter()
                    .filter(|s| !s.entries.iter().any(|(x, _, _)| *x == k))
                    .filter_map(|s| s.floor)
                    .sum()
            };
            (k, c, e + missing)
        })
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out.truncate(n);
    out
}

/// The destination of a record's target: the authority of an absolute URL (`http://h:p/x`
/// gives `h:p`), else the target up to its first `/` (`host:port` of CONNECT and SOCKS).
/// Without user information; cut to a bounded length; `None` when empty.
pub fn destination(target: &str) -> Option<std::borrow::Cow<'_, str>> {
    // Byte searches (every delimiter is ASCII): a `char`-pattern split was most of the cost
    // of counting a request.
    // (A `str` pattern would build a two-way searcher per call.)
    let rest = target
        .as_bytes()
        .windows(3)
        .position(|w| w == b"://")
        .map_or(target, |i| &target[i + 3..]);
    let end = rest
        .bytes()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    let authority = authority
        .rfind('@')
        .map_or(authority, |i| &authority[i + 1..]);
    if authority.is_empty() {
        return None;
    }
    let mut end = authority.len().min(MAX_DESTINATION);
    while !authority.is_char_boundary(end) {
        end -= 1;
    }
    let d = &authority[..end];
    Some(if d.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(d.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rec(listener: &str, client: &str, target: &str, bytes: u64) -> AccessRecord {
        AccessRecord {
            time: SystemTime::UNIX_EPOCH,
            listener: listener.into(),
            client: client.parse().expect("addr"),
            user: None,
            rule: Some("default".into()),
            method: "GET".into(),
            target: target.into(),
            status: 200,
            bytes_in: bytes,
            bytes_out: bytes * 2,
            duration: Duration::ZERO,
            upstream: None,
            cache: None,
            error: None,
            version: None,
            referer: None,
            user_agent: None,
            route: None,
            pool: None,
            server: None,
        }
    }

    #[test]
    fn counts_and_rates_per_listener() {
        let t0 = Instant::now();
        let s = Stats::starting_at(t0);
        s.set_listeners(vec![ListenerInfo {
            name: "web".into(),
            kind: "http",
            addr: "127.0.0.1:1".parse().expect("addr"),
        }]);
        for i in 0..10u64 {
            let at = t0 + Duration::from_millis(500 * i);
            s.record_at(&rec("web", "10.0.0.1:5", "http://a.test/x", 10), at);
        }
        let snap = s.snapshot_at(t0 + Duration::from_secs(5));
        let web = &snap.listeners[0];
        assert_eq!((web.name.as_str(), web.kind), ("web", "http"));
        assert_eq!(web.requests, 10);
        assert_eq!((web.bytes_in, web.bytes_out), (100, 200));
        assert_eq!(web.series.len(), WINDOW);
        assert_eq!(
            web.series[WINDOW - 5..]
                .iter()
                .map(|s| s.requests)
                .collect::<Vec<_>>(),
            vec![2, 2, 2, 2, 2]
        );
        assert_eq!(web.requests_per_second, 2.0);
        assert_eq!(web.bytes_per_second, 60.0);
        // A minute of silence later the rates are zero, the totals stay.
        let at_start = s.snapshot_at(t0);
        assert_eq!(at_start.listeners[0].series.len(), WINDOW);
        let later = s.snapshot_at(t0 + Duration::from_secs(200));
        assert_eq!(later.listeners[0].requests_per_second, 0.0);
        assert_eq!(later.listeners[0].requests, 10);
        assert!(later.listeners[0].series.iter().all(|x| x.requests == 0));
    }

    #[test]
    fn the_ring_stays_bounded() {
        let t0 = Instant::now();
        let s = Stats::starting_at(t0);
        for i in 0..1000u64 {
            s.record_at(
                &rec("l", "10.0.0.1:5", "a:1", 1),
                t0 + Duration::from_secs(i),
            );
        }
        let g = s.tally();
        assert!(g.listeners["l"].ring.samples.len() <= WINDOW);
    }

    /// Records counted on four worker threads (each shard its own) show in one snapshot as
    /// if one thread had counted them all: totals, the per-second series, errors, and the
    /// heavy hitters, whose counts add up across the shards.
    #[test]
    fn shards_add_up_in_the_snapshot() {
        let t0 = Instant::now();
        let s = Stats::starting_at(t0);
        s.set_listeners(vec![ListenerInfo {
            name: "l".into(),
            kind: "http",
            addr: "127.0.0.1:1".parse().expect("addr"),
        }]);
        // Before any record: a window of zeros.
        let quiet = s.snapshot_at(t0);
        assert_eq!(quiet.listeners[0].requests, 0);
        assert_eq!(quiet.listeners[0].series, vec![Sample::default(); WINDOW]);
        std::thread::scope(|scope| {
            for w in 0..4usize {
                let s = &s;
                scope.spawn(move || {
                    crate::workers::mark_current(w);
                    for i in 0..100u64 {
                        // One heavy client and destination everywhere, and 100 light ones
                        // per thread: more keys than a summary holds.
                        let (client, target) = if i % 2 == 0 {
                            ("10.0.0.1:5".to_string(), "heavy.test:443".to_string())
                        } else {
                            (format!("10.{w}.{}.2:5", i), format!("t{w}-{i}.test:443"))
                        };
                        let mut r = rec("l", &client, &target, 10);
                        if i % 10 == 0 {
                            r.error = Some("destination_unavailable");
                        }
                        s.record_at(&r, t0 + Duration::from_millis(1500));
                    }
                });
            }
        });
        let snap = s.snapshot_at(t0 + Duration::from_secs(3));
        let l = &snap.listeners[0];
        assert_eq!(l.requests, 400);
        assert_eq!(l.errors, 40);
        // Second 1 holds all 400 (10 bytes in and 20 out each).
        assert_eq!(l.series[WINDOW - 2].requests, 400);
        assert_eq!(l.series[WINDOW - 2].bytes, 12_000);
        assert_eq!(snap.errors.get("destination_unavailable"), Some(&40));
        assert_eq!(snap.top_clients[0].key, "10.0.0.1");
        assert!(
            snap.top_clients[0].count >= 200,
            "{:?}",
            snap.top_clients[0]
        );
        assert_eq!(snap.top_destinations[0].key, "heavy.test:443");
        assert!(snap.top_destinations[0].count >= 200);
    }

    #[test]
    fn errors_rules_cache_and_removed_listeners() {
        let s = Stats::new();
        let mut r = rec("gone", "10.0.0.1:5", "a.test:443", 0);
        r.error = Some("destination_unavailable");
        r.rule = Some("block-ads".into());
        r.cache = Some("hit");
        s.record(&r);
        s.record(&r);
        let snap = s.snapshot();
        assert_eq!(snap.errors["destination_unavailable"], 2);
        assert_eq!(snap.rules["block-ads"], 2);
        assert_eq!(snap.cache_statuses["hit"], 2);
        assert_eq!(snap.listeners[0].name, "gone");
        assert_eq!(snap.listeners[0].errors, 2);
        assert_eq!(snap.listeners[0].kind, "");
    }

    #[test]
    fn space_saving_keeps_the_heavy_hitters_in_bounded_space() {
        let mut ss = SpaceSaving::<String> {
            capacity: 8,
            counts: HashMap::default(),
        };
        for round in 0..100 {
            ss.add("big".into(), 5);
            ss.add("mid".into(), 2);
            // A stream of one-off keys far larger than the summary.
            for j in 0..5 {
                ss.add(format!("noise-{round}-{j}"), 1);
            }
        }
        assert!(ss.counts.len() <= 8);
        let top = ss.top(2);
        assert_eq!(top[0].0, "big");
        assert_eq!(top[1].0, "mid");
        assert!(top[0].1 >= 500, "never underestimates: {top:?}");
        assert!(
            top[0].1 - top[0].2 <= 500,
            "count minus error is a lower bound"
        );
    }

    #[test]
    fn top_clients_and_destinations() {
        let s = Stats::new();
        for _ in 0..3 {
            s.record(&rec("l", "10.0.0.2:1", "http://user:pw@B.test:8080/p?q", 0));
        }
        s.record(&rec("l", "[::ffff:10.0.0.3]:1", "c.test:443", 0));
        let snap = s.snapshot();
        assert_eq!(snap.top_clients[0].key, "10.0.0.2");
        assert_eq!(snap.top_clients[0].count, 3);
        assert_eq!(snap.top_clients[1].key, "10.0.0.3", "mapped v4 shown as v4");
        assert_eq!(snap.top_destinations[0].key, "b.test:8080");
        assert_eq!(snap.top_destinations[1].key, "c.test:443");
    }

    #[test]
    fn destinations_from_targets() {
        assert_eq!(destination("http://a.test/x").as_deref(), Some("a.test"));
        assert_eq!(destination("http://A.Test/x").as_deref(), Some("a.test"));
        assert_eq!(destination("a.test:443").as_deref(), Some("a.test:443"));
        assert_eq!(destination("/relative"), None);
        assert_eq!(destination(""), None);
        assert_eq!(destination("http://[::1]:80/").as_deref(), Some("[::1]:80"));
        assert_eq!(
            destination("http://u:p@B.test:8080?q").as_deref(),
            Some("b.test:8080")
        );
        assert_eq!(
            destination("https://a@b@c.test#f").as_deref(),
            Some("c.test")
        );
        assert_eq!(destination("http://"), None);
        assert_eq!(destination("é.test/x").as_deref(), Some("é.test"));
        let long = format!("{}é", "a".repeat(254));
        assert_eq!(destination(&long).map(|d| d.len()), Some(254));
    }

    #[test]
    fn parent_health() {
        let s = Stats::new();
        s.parent_result("up1", Ok(()));
        s.parent_result("up1", Err("refused".into()));
        let snap = s.snapshot();
        let p = &snap.parents["up1"];
        assert_eq!((p.successes, p.failures, p.up), (1, 1, false));
        assert_eq!(p.last_error.as_deref(), Some("refused"));
        let json = serde_json::to_value(&snap).expect("json");
        assert!(json["parents"]["up1"]["last_success"].is_string());
    }
}
