//! Per-client and per-user limits: concurrent connections, new connections and requests per
//! second, and bandwidth each way.
//!
//! One [`Limits`] is shared by every listener (built once from `[limits]`). A handler asks it
//! at each step and gets an error to answer with when a limit is hit:
//!
//! - on accept: [`Limits::connection`] (count + connections/s per client address);
//! - after login: [`Limits::user_connection`] (the same per user);
//! - per HTTP request / SOCKS command: [`Limits::request`] (requests/s);
//! - before relaying a stream: [`Limits::throttles`] (shared token buckets, see [`bucket`]).
//!
//! Clients are keyed by address: IPv4-mapped IPv6 as the IPv4 it is, other IPv6 per /64 (one
//! subscriber usually holds a whole /64, so counting single addresses would be no limit).
//!
//! # Memory bounds
//!
//! - Connection counts: one entry per key with at least one live connection, removed when its
//!   last [`ConnGuard`] drops; so at most one per open connection (bounded by the listeners'
//!   `max_connections`).
//! - Rate limiters (governor GCRA state) and bandwidth buckets: at most `max_tracked` keys per
//!   limiter. When full, entries that are idle (rate state expired, bucket full and unused)
//!   are dropped; if that frees nothing, a new key is not rate-limited (fail open: a flood
//!   from many addresses must not lock out everyone) and gets an unshared bucket (still
//!   limited per stream).

pub mod bucket;
pub(crate) mod config;
mod keyed;

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

pub use bucket::{Throttle, Throttled};
use keyed::{Buckets, Counts, Rate};

/// The limits of one scope (per client address or per user). `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitSet {
    pub max_connections: Option<u32>,
    /// New connections per second (burst = the rate).
    pub connections_per_second: Option<NonZeroU32>,
    /// HTTP requests and SOCKS commands per second (burst = the rate).
    pub requests_per_second: Option<NonZeroU32>,
    /// Bytes per second from the client to the upstream.
    pub bandwidth_up: Option<u64>,
    /// Bytes per second from the upstream to the client.
    pub bandwidth_down: Option<u64>,
}

/// The `[limits]` section. `Default` (absent section): nothing is limited but concurrent
/// connections per client address ([`DEFAULT_PER_CLIENT_CONNECTIONS`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    pub per_client: LimitSet,
    pub per_user: LimitSet,
    /// Most keys each rate limiter and bucket map tracks at once.
    pub max_tracked: usize,
}

pub const DEFAULT_MAX_TRACKED: usize = 65_536;

/// Concurrent connections one client address may hold when `[limits]` does not say (0 there
/// turns the limit off). High enough for an office of a few hundred people behind one NAT
/// address (browsers keep 6-10 connections per busy host), low enough that one address
/// cannot take a listener's 10,000 default slots.
pub const DEFAULT_PER_CLIENT_CONNECTIONS: u32 = 1_000;

impl Default for LimitsConfig {
    /// An absent `[limits]` section: only the per-client connection default.
    fn default() -> Self {
        LimitsConfig {
            per_client: LimitSet {
                max_connections: Some(DEFAULT_PER_CLIENT_CONNECTIONS),
                ..LimitSet::default()
            },
            per_user: LimitSet::default(),
            max_tracked: DEFAULT_MAX_TRACKED,
        }
    }
}

/// Which limit refused, for the log and the answer (HTTP 429, SOCKS reply 0x02 or close).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("too many concurrent connections from this {0} (limit {1})")]
    Connections(Scope, u32),
    #[error("too many new connections per second from this {0} (limit {1}/s)")]
    ConnectionRate(Scope, u32),
    #[error("too many requests per second from this {0} (limit {1}/s)")]
    RequestRate(Scope, u32),
}

impl LimitError {
    pub fn scope(&self) -> Scope {
        match self {
            LimitError::Connections(s, _)
            | LimitError::ConnectionRate(s, _)
            | LimitError::RequestRate(s, _) => *s,
        }
    }

    /// A short name for the access log and metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            LimitError::Connections(..) => "connection_limit",
            LimitError::ConnectionRate(..) => "connection_rate_limit",
            LimitError::RequestRate(..) => "request_rate_limit",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Client,
    User,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::Client => "client",
            Scope::User => "user",
        })
    }
}

/// The throttles of one relayed stream, one per direction; `None` is unlimited.
#[derive(Debug, Clone, Default)]
pub struct StreamThrottles {
    /// Client to upstream.
    pub up: Option<Throttle>,
    /// Upstream to client.
    pub down: Option<Throttle>,
}

/// Holds one concurrent-connection slot; gives it back on drop.
#[must_use = "the slot is released when the guard drops"]
pub struct ConnGuard {
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl ConnGuard {
    /// A guard that holds nothing (no limit configured).
    fn none() -> ConnGuard {
        ConnGuard { release: None }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

impl std::fmt::Debug for ConnGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.release.is_some() {
            "ConnGuard(held)"
        } else {
            "ConnGuard(none)"
        })
    }
}

/// The limits of one scope, with their keyed state.
struct ScopeLimits<K: Hash + Eq + Clone + Send + Sync + 'static> {
    scope: Scope,
    set: LimitSet,
    counts: Arc<Counts<K>>,
    conn_rate: Option<Rate<K>>,
    req_rate: Option<Rate<K>>,
    up: Option<Buckets<K>>,
    down: Option<Buckets<K>>,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> ScopeLimits<K> {
    fn new(scope: Scope, set: &LimitSet, max_tracked: usize) -> Self {
        let max_tracked = max_tracked.max(1);
        ScopeLimits {
            scope,
            set: set.clone(),
            counts: Arc::new(Counts::new()),
            conn_rate: set
                .connections_per_second
                .map(|r| Rate::new(r, max_tracked)),
            req_rate: set.requests_per_second.map(|r| Rate::new(r, max_tracked)),
            up: set.bandwidth_up.map(|r| Buckets::new(r, max_tracked)),
            down: set.bandwidth_down.map(|r| Buckets::new(r, max_tracked)),
        }
    }

    fn connection(&self, key: &K) -> Result<ConnGuard, LimitError> {
        // The count first: a refused connection must not spend a rate cell.
        let guard = match self.set.max_connections {
            None => ConnGuard::none(),
            Some(max) => {
                if !self.counts.acquire(key, max) {
                    return Err(LimitError::Connections(self.scope, max));
                }
                let (counts, key) = (self.counts.clone(), key.clone());
                ConnGuard {
                    release: Some(Box::new(move || counts.release(&key))),
                }
            }
        };
        if let (Some(rate), Some(r)) = (&self.conn_rate, self.set.connections_per_second) {
            if !rate.check(key) {
                return Err(LimitError::ConnectionRate(self.scope, r.get()));
            }
        }
        Ok(guard)
    }

    fn request(&self, key: &K) -> Result<(), LimitError> {
        match (&self.req_rate, self.set.requests_per_second) {
            (Some(rate), Some(r)) if !rate.check(key) => {
                Err(LimitError::RequestRate(self.scope, r.get()))
            }
            _ => Ok(()),
        }
    }
}

/// Every configured limit and its state. One per process; `Send + Sync`.
pub struct Limits {
    client: ScopeLimits<IpAddr>,
    user: ScopeLimits<String>,
}

impl Limits {
    pub fn new(cfg: &LimitsConfig) -> Limits {
        Limits {
            client: ScopeLimits::new(Scope::Client, &cfg.per_client, cfg.max_tracked),
            user: ScopeLimits::new(Scope::User, &cfg.per_user, cfg.max_tracked),
        }
    }

    /// On accepting a connection from `client`: takes a concurrent slot (held by the guard)
    /// and a connections-per-second cell.
    pub fn connection(&self, client: IpAddr) -> Result<ConnGuard, LimitError> {
        self.client.connection(&client_key(client))
    }

    /// Once a connection has logged in as `user`: the same per user. Hold the guard for the
    /// life of the connection, beside the client one.
    pub fn user_connection(&self, user: &str) -> Result<ConnGuard, LimitError> {
        self.user.connection(&user.to_string())
    }

    /// For each HTTP request or SOCKS command: a requests-per-second cell of the client and,
    /// when logged in, of the user.
    pub fn request(&self, client: IpAddr, user: Option<&str>) -> Result<(), LimitError> {
        self.client.request(&client_key(client))?;
        match user {
            Some(u) => self.user.request(&u.to_string()),
            None => Ok(()),
        }
    }

    /// The bandwidth throttles for one relayed stream: shared with every other stream of the
    /// same client and (when logged in) user.
    pub fn throttles(&self, client: IpAddr, user: Option<&str>) -> StreamThrottles {
        let key = client_key(client);
        let user = user.map(str::to_string);
        let pick = |c: &Option<Buckets<IpAddr>>, u: &Option<Buckets<String>>| {
            let mut buckets = Vec::new();
            if let Some(c) = c {
                buckets.push(c.get(&key));
            }
            if let (Some(u), Some(name)) = (u, &user) {
                buckets.push(u.get(name));
            }
            (!buckets.is_empty()).then(|| Throttle::shared(buckets))
        };
        StreamThrottles {
            up: pick(&self.client.up, &self.user.up),
            down: pick(&self.client.down, &self.user.down),
        }
    }

    /// Whether any limit is configured at all (handlers may skip the calls when not).
    pub fn is_empty(&self) -> bool {
        self.client.set == LimitSet::default() && self.user.set == LimitSet::default()
    }

    /// Keys currently tracked by all limiters and maps (for metrics and tests).
    pub fn tracked(&self) -> usize {
        fn scope<K: Hash + Eq + Clone + Send + Sync>(s: &ScopeLimits<K>) -> usize {
            s.counts.len()
                + s.conn_rate.as_ref().map_or(0, Rate::len)
                + s.req_rate.as_ref().map_or(0, Rate::len)
                + s.up.as_ref().map_or(0, Buckets::len)
                + s.down.as_ref().map_or(0, Buckets::len)
        }
        scope(&self.client) + scope(&self.user)
    }
}

/// The key a client address is counted under: IPv4 as is (also when IPv4-mapped), IPv6 per
/// /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => {
            let s = a.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Shared by the keyed state: a poisoned lock (a panic elsewhere) fails open.
fn lock<T>(m: &Mutex<T>) -> Option<std::sync::MutexGuard<'_, T>> {
    m.lock().ok()
}

type CountMap<K> = HashMap<K, u32>;

#[cfg(test)]
mod tests;
