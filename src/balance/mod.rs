//! Load-balancing choices for upstream pools: which server of a pool takes the next request or
//! connection. Pure, deterministic code over a server set and an explicit clock; the async
//! layer (the reverse proxy, the TCP and UDP balancers) keeps one [`Balancer`] per pool behind
//! a short lock and tells it when requests start and end and what the health checks saw.
//!
//! Vocabulary follows HAProxy's where it fits (`roundrobin`, `leastconn`, `hash-balance-factor`,
//! `rise`/`fall`, slow start).
//!
//! | algorithm      | picks                                                                |
//! |----------------|----------------------------------------------------------------------|
//! | `round-robin`  | smooth weighted round-robin (nginx's: no bursts to heavy servers)    |
//! | `least-requests` | fewest requests in flight per unit of weight                       |
//! | `p2c-ewma`     | the cheaper of two random servers, cost = peak-EWMA latency × load   |
//! | `hash`         | a consistent-hash ring (ketama) on a key, optionally bounded load    |
//! | `random`       | weighted random                                                      |
//!
//! A server is *eligible* when its active health check says up, passive checks have not
//! ejected it, and the caller has not excluded it (a retry never goes back to a server that
//! already failed this request). When no server is eligible the pool either answers "none"
//! (the caller sends 503) or, when it fails open, picks among all servers ignoring health.
//!
//! Beside the choice itself, for HTTP pools: `key.rs` (what a `hash` pool hashes, and the
//! hash input from a request's headers or path), `sticky.rs` (opaque server tokens and the
//! `Set-Cookie` value), `check.rs` (the HTTP health check's verdict), `budget.rs` (the retry
//! budget over a sliding window), and `health.rs`'s [`HttpOutcome`] for passive checks.
//! `reload.rs` carries a pool's state into its new configuration on reload.

mod budget;
mod check;
mod health;
mod key;
pub mod reload;
mod ring;
mod state;
pub mod sticky;

pub use budget::{try_withdraw_sharded, RetryBudget};
pub use check::{Expect, StatusRanges, BODY_LIMIT};
pub use health::{
    ActiveHealth, HttpOutcome, InitState, PassiveHealth, PassiveSettings, Transition,
};
pub use key::{cookie, hash_input, HashKey};
pub use ring::Ring;
pub use state::ServerState;

use std::time::{Duration, Instant};

/// How a pool chooses among its servers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Algorithm {
    RoundRobin,
    LeastRequests,
    /// Power of two choices over peak-EWMA latency (Finagle, linkerd).
    P2cEwma,
    /// Consistent hashing on a key the caller extracts (client address, header, cookie,
    /// path). `balance_factor` (HAProxy's `hash-balance-factor`, in percent, > 100) bounds a
    /// server's in-flight load to that share of the average; `None` is plain consistent hashing.
    Hash {
        balance_factor: Option<u32>,
    },
    Random,
}

/// One server as the balancer sees it: a stable name (its address or configured name, used to
/// place it on the hash ring so the ring does not depend on config order) and a weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub name: String,
    pub weight: u32,
}

/// Settings shared by every algorithm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// A server that comes back (health up, readmitted after ejection, added) ramps its
    /// weight from a tenth to full over this time. Zero: full weight at once.
    pub slow_start: Duration,
    /// Latency an unmeasured server is assumed to have (P2C-EWMA).
    pub default_rtt: Duration,
    /// How fast old latency samples fade (P2C-EWMA decay time constant).
    pub ewma_decay: Duration,
    /// Active health before the first check (`[pools.health] init_state`), for servers at
    /// start and added by a reload alike. `None`: fully up at start, up on probation when
    /// added ([`ServerState::added`]).
    pub init: Option<InitState>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            slow_start: Duration::ZERO,
            default_rtt: Duration::from_millis(1),
            ewma_decay: Duration::from_secs(10),
            init: None,
        }
    }
}

/// The outcome of a pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Use this server (its index in the pool).
    Server(usize),
    /// Every server is down, ejected or excluded (and the pool does not fail open).
    NoneEligible,
}

/// What one request may choose from.
#[derive(Debug, Default, Clone, Copy)]
pub struct Request<'a> {
    /// The hash key (only `Algorithm::Hash` reads it; without one it falls back to
    /// round-robin, as HAProxy does when the hashed element is missing).
    pub key: Option<&'a [u8]>,
    /// Servers this request already tried (retries go elsewhere).
    pub exclude: &'a [usize],
    /// A sticky-session server: taken when it is eligible.
    pub prefer: Option<usize>,
    /// Pick among all servers, ignoring health, when none is eligible.
    pub fail_open: bool,
}

/// A pool's balancing state: the algorithm, each server's health and load, and the
/// algorithm's own memory (round-robin weights, the hash ring, the random source).
#[derive(Debug)]
pub struct Balancer {
    algo: Algorithm,
    settings: Settings,
    servers: Vec<ServerState>,
    /// Smooth weighted round-robin's running weights, one per server.
    current: Vec<i64>,
    /// Where least-requests starts scanning, so ties rotate.
    cursor: usize,
    ring: Option<Ring>,
    rng: fastrand::Rng,
    /// [`Balancer::pick`]'s lists (which servers are eligible, their weights), kept between
    /// picks so that a pick allocates nothing.
    eligible: Vec<bool>,
    weights: Vec<u64>,
}

impl Balancer {
    /// `seed` makes random choices repeatable (tests); the proxy seeds from the clock.
    pub fn new(
        algo: Algorithm,
        specs: &[ServerSpec],
        settings: Settings,
        seed: u64,
        now: Instant,
    ) -> Balancer {
        let ring = matches!(algo, Algorithm::Hash { .. }).then(|| Ring::new(specs));
        Balancer {
            algo,
            settings,
            servers: specs
                .iter()
                .map(|s| {
                    let mut state = ServerState::new(s.weight, now);
                    if let Some(init) = settings.init {
                        state.active = ActiveHealth::initial(init);
                    }
                    state
                })
                .collect(),
            current: vec![0; specs.len()],
            cursor: 0,
            ring,
            rng: fastrand::Rng::with_seed(seed),
            eligible: Vec::new(),
            weights: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    pub fn server(&self, i: usize) -> &ServerState {
        &self.servers[i]
    }

    pub fn server_mut(&mut self, i: usize) -> &mut ServerState {
        &mut self.servers[i]
    }

    /// Whether server `i` may take a request that must go to it (a sticky session): it is
    /// not excluded and is available, or the request fails open and no other server that is
    /// not excluded is available either. Changes no state (a refused sticky server does not
    /// disturb round-robin's turns).
    pub fn may_take(&self, i: usize, req: &Request<'_>, now: Instant) -> bool {
        if i >= self.servers.len() || req.exclude.contains(&i) {
            return false;
        }
        self.servers[i].is_available(now)
            || (req.fail_open
                && !(0..self.servers.len())
                    .any(|j| !req.exclude.contains(&j) && self.servers[j].is_available(now)))
    }

    /// Chooses a server for one request. The caller then calls [`Balancer::started`] and,
    /// when the request ends, [`Balancer::finished`].
    pub fn pick(&mut self, req: &Request<'_>, now: Instant) -> Pick {
        let mut eligible = std::mem::take(&mut self.eligible);
        let mut weights = std::mem::take(&mut self.weights);
        let pick = self.pick_in(req, now, &mut eligible, &mut weights);
        (self.eligible, self.weights) = (eligible, weights);
        pick
    }

    /// [`Balancer::pick`] with its two lists lent by the caller (filled here).
    fn pick_in(
        &mut self,
        req: &Request<'_>,
        now: Instant,
        eligible: &mut Vec<bool>,
        weights: &mut Vec<u64>,
    ) -> Pick {
        eligible.clear();
        eligible.extend(
            (0..self.servers.len())
                .map(|i| !req.exclude.contains(&i) && self.servers[i].is_available(now)),
        );
        if !eligible.iter().any(|e| *e) {
            if !req.fail_open {
                return Pick::NoneEligible;
            }
            eligible.clear();
            eligible.extend((0..self.servers.len()).map(|i| !req.exclude.contains(&i)));
            if !eligible.iter().any(|e| *e) {
                return Pick::NoneEligible;
            }
        }
        if let Some(p) = req.prefer {
            if eligible.get(p).copied().unwrap_or(false) {
                return Pick::Server(p);
            }
        }
        weights.clear();
        weights.extend((0..self.servers.len()).map(|i| {
            if eligible[i] {
                self.servers[i].effective_weight(now, self.settings.slow_start)
            } else {
                0
            }
        }));
        let (eligible, weights) = (&eligible[..], &weights[..]);
        let chosen = match self.algo {
            Algorithm::RoundRobin => self.smooth_wrr(weights),
            Algorithm::LeastRequests => self.least_requests(weights),
            Algorithm::P2cEwma => self.p2c(weights, now),
            Algorithm::Random => self.weighted_random(weights),
            Algorithm::Hash { balance_factor } => match (req.key, &self.ring) {
                (Some(key), Some(ring)) => {
                    let bound = balance_factor.map(|f| self.load_bound(f, eligible));
                    ring.lookup(key, |i| {
                        eligible[i]
                            && bound
                                .as_ref()
                                .is_none_or(|b| self.servers[i].in_flight() < b(i))
                    })
                    // Every eligible server is at its bound: plain consistent hashing.
                    .or_else(|| ring.lookup(key, |i| eligible[i]))
                }
                _ => self.smooth_wrr(weights),
            },
        };
        match chosen {
            Some(i) => Pick::Server(i),
            None => Pick::NoneEligible,
        }
    }

    /// A request went to server `i`.
    pub fn started(&mut self, i: usize) {
        self.servers[i].start();
    }

    /// A latency sample for server `i` (time to the response head), feeding P2C-EWMA, for a
    /// request still in flight.
    pub fn sample(&mut self, i: usize, rtt: Duration, now: Instant) {
        let decay = self.settings.ewma_decay;
        self.servers[i].sample(rtt, now, decay);
    }

    /// A request to server `i` ended; `rtt` is its latency (time to the response head) when it
    /// got one, which feeds P2C-EWMA.
    pub fn finished(&mut self, i: usize, rtt: Option<Duration>, now: Instant) {
        let decay = self.settings.ewma_decay;
        self.servers[i].finish(rtt, now, decay);
    }

    /// nginx's smooth weighted round-robin: every eligible server gains its weight, the one
    /// with the most goes and pays back the total. Weights 5,1,1 give a a b a c a a, not
    /// a a a a a b c.
    fn smooth_wrr(&mut self, weights: &[u64]) -> Option<usize> {
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for (i, w) in weights.iter().enumerate() {
            if *w == 0 {
                continue;
            }
            let w = *w as i64;
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }

    /// Fewest in flight per unit of weight; ties go to the next server after the last pick.
    fn least_requests(&mut self, weights: &[u64]) -> Option<usize> {
        let n = weights.len();
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (self.cursor + k) % n;
            if weights[i] == 0 {
                continue;
            }
            best = match best {
                None => Some(i),
                Some(b) => {
                    // in_flight(i)/w(i) < in_flight(b)/w(b), without division.
                    let li = u128::from(self.servers[i].in_flight()) * u128::from(weights[b]);
                    let lb = u128::from(self.servers[b].in_flight()) * u128::from(weights[i]);
                    if li < lb {
                        Some(i)
                    } else {
                        Some(b)
                    }
                }
            };
        }
        if let Some(b) = best {
            self.cursor = (b + 1) % n.max(1);
        }
        best
    }

    /// Two distinct eligible servers drawn by weight; the one with the lower
    /// `ewma × (in_flight + 1) / weight` goes.
    fn p2c(&mut self, weights: &[u64], now: Instant) -> Option<usize> {
        let a = self.weighted_random(weights)?;
        let mut rest = weights.to_vec();
        rest[a] = 0;
        let Some(b) = self.weighted_random(&rest) else {
            return Some(a);
        };
        let cost = |i: usize| {
            let s = &self.servers[i];
            s.ewma_cost(now, self.settings.default_rtt, self.settings.ewma_decay)
                * (s.in_flight() as f64 + 1.0)
                / weights[i] as f64
        };
        Some(if cost(b) < cost(a) { b } else { a })
    }

    fn weighted_random(&mut self, weights: &[u64]) -> Option<usize> {
        let total: u64 = weights.iter().sum();
        if total == 0 {
            return None;
        }
        let mut r = self.rng.u64(0..total);
        for (i, w) in weights.iter().enumerate() {
            if r < *w {
                return Some(i);
            }
            r -= w;
        }
        None
    }

    /// HAProxy's bounded load: a server may hold at most
    /// `ceil((total_in_flight + 1) × factor / 100 × weight / total_weight)` requests.
    fn load_bound(&self, factor: u32, eligible: &[bool]) -> impl Fn(usize) -> u64 + '_ {
        let total_load: u64 = self.servers.iter().map(|s| s.in_flight()).sum();
        let total_weight: u64 = (0..self.servers.len())
            .filter(|i| eligible[*i])
            .map(|i| u64::from(self.servers[i].weight()))
            .sum::<u64>()
            .max(1);
        move |i| {
            let w = u64::from(self.servers[i].weight());
            let num = (total_load + 1) * u64::from(factor) * w;
            num.div_ceil(100 * total_weight).max(1)
        }
    }
}

#[cfg(test)]
mod tests;
