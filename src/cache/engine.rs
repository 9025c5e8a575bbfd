//! [`Cache`]: the API the proxy calls. It joins the pure rules to the storage tiers.
//!
//! Call sequence for one request (`now` is the wall clock; `request_time` is taken just
//! before the upstream request is sent, `response_time` when its head arrives):
//!
//! 1. `cache.lookup(&req, now).await` gives a [`Lookup`]:
//!    - `Hit(served)`: send `served.head` and `served.body`. Done.
//!    - `OnlyIfCached(served)`: send the 504 in `served`. Done.
//!    - `Bypass(status)`: forward the request unchanged and relay the response; add
//!      `status` with [`CacheStatus::append_to`]. For an unsafe method, call
//!      `cache.invalidate(&req, &resp_head).await` once the response head is in (it bumps
//!      the key's generation: a store whose request went upstream before is dropped).
//!    - `Miss { key, status }`: take `cache.generation(&key)`, then
//!      `cache.flights().join(&key)`.
//!      - A follower calls `next()`: on `Head(shared)` it asks `cache.follower(&req, &shared,
//!        now)`: `Stream` sends `shared.head` (with Age; Cache-Status `fwd=miss; collapsed`)
//!        then each `Chunk` until `End`; `Whole` collects the body and answers with
//!        `respond()` like a hit (ranges, conditionals); `Upstream` (or `GoUpstream`)
//!        proceeds as a leader without a flight; on `Aborted` mid-body it ends its response
//!        like an upstream failure.
//!      - A leader forwards the request and asks `cache.storable(&req, &resp_head)`. If `Ok`:
//!        `leader.publish_head(SharedHead::new(&req, &resp_head, request_time,
//!        response_time)?)`, then `leader.push(chunk)` for each body chunk while relaying it,
//!        collecting the body (at most `max_object_size`; past it, stop collecting); at the
//!        end `let store = cache.store(&key, &req, &resp_head, body, fetch).await` (the entry
//!        is visible now), `leader.finish()`, then `store.finish().await` (the disk write;
//!        its result is `status.stored`). If `Err`: `leader.not_shared()` and relay as
//!        usual. Set `status.fwd_status` to the upstream status and append `status`.
//!    - `Revalidate(reval)`: send a GET upstream with `reval.headers` (a HEAD client sends
//!      its HEAD, and a 200 goes to `cache.head_response(&reval, &req, &head, fetch)`). On
//!      304: `cache.revalidated(&reval, &req, &head304, request_time, response_time,
//!      now).await` returns the response to send (`None`: the 304 did not match the stored
//!      response; repeat the request without validators and treat it as a miss). On any
//!      other response: treat as a miss (`storable`/`store`), except that on a
//!      500/502/503/504 or a connection failure, `cache.stale_if_error(&reval, &req, now)`
//!      may give a stale response to send instead, and on a connection failure
//!      `cache.stale_if_unreachable(&reval, &req, now)` too.
//!    - `StaleWhileRevalidate { served, reval }`: send `served` now, and run the
//!      `Revalidate` steps in a spawned task without a client.
//! 2. The access log takes `status.log_word()`; metrics read [`Cache::stats`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;

use super::collapse::{Flights, SharedHead};
use super::conditional::has_origin_preconditions;
use super::config::CacheConfig;
use super::directives::CacheControl;
use super::freshness::{
    current_age, format_http_date, freshness_lifetime, stale_when_disconnected,
    within_stale_if_error,
};
use super::generation::Generations;
use super::key::{invalidated_keys, is_safe_method, key_of_url};
use super::object::{Entry, StoredResponse};
use super::profile::Profile;
use super::refresh::{RefreshSlot, Refreshes, Refused};
use super::reuse::{only_if_cached, request_cache_control, reuse, Reuse};
use super::serve::{only_if_cached_miss, respond, respond_aged};
pub use super::stats::CacheStats;
use super::stats::{bump, Counters};
use super::status::{CacheStatus, Fwd};
use super::storable::{headers_to_store, storable, NotStorable};
use super::store::{DiskTier, MemoryTier, StoreError, Tier};
use super::validate::{
    head_updates, merge_not_modified, revalidation_headers, selected_for_update,
};
use super::vary::secondary_key;
use crate::http::codec::{Headers, RequestHead, ResponseHead};

pub use super::serve::Served;

/// A stored response that needs validation with the origin.
#[derive(Debug, Clone)]
pub struct Revalidation {
    pub key: String,
    /// The key's generation at lookup: a 304 merged after an invalidation is not stored.
    pub generation: u64,
    pub stored: Arc<StoredResponse>,
    /// Request header fields for the conditional GET sent upstream.
    pub headers: Headers,
    /// Cache-Status so far (`fwd=stale` or `fwd=request`).
    pub status: CacheStatus,
    /// The profile the stored response was looked up with.
    pub profile: Arc<Profile>,
}

#[derive(Debug)]
pub enum Lookup {
    Bypass(CacheStatus),
    Hit(Served),
    OnlyIfCached(Served),
    Miss { key: String, status: CacheStatus },
    Revalidate(Revalidation),
    StaleWhileRevalidate { served: Served, reval: Revalidation },
}

/// Why [`Cache::storable`] refused a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Rfc(NotStorable),
    /// Content-Length above `max_object_size`.
    TooLarge,
    Disabled,
}

/// One upstream exchange whose response may be stored: when it was sent and answered, and
/// the key's generation ([`Cache::generation`]) taken before it was sent.
#[derive(Debug, Clone, Copy)]
pub struct Fetch {
    pub request_time: SystemTime,
    pub response_time: SystemTime,
    pub generation: u64,
}

/// What a collapsed follower may do with the leader's response ([`Cache::follower`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Stream the shared response as it arrives.
    Stream,
    /// Wait for the complete body, then answer like a stored hit (a range, a conditional).
    Whole,
    /// The reuse rules refuse it for this request: go upstream.
    Upstream,
}

/// Entries being stored, visible to lookups before their slowest tier has them.
#[derive(Default)]
struct Pending {
    entries: HashMap<String, (u64, Arc<Entry>)>,
    next: u64,
}

pub struct Cache {
    cfg: CacheConfig,
    pub(super) memory: Option<MemoryTier>,
    pub(super) disk: Option<DiskTier>,
    flights: Flights,
    pub(super) counters: Counters,
    generations: Arc<Generations>,
    /// Lock order: this lock, then a tier's own. Store visibility, invalidation and memory
    /// promotion all happen under it, so none can interleave inside another.
    pending: Mutex<Pending>,
    /// stale-while-revalidate refreshes running (one per key, bounded).
    refreshes: Arc<Refreshes>,
}

/// A store whose entry is visible already; [`Store::finish`] completes the disk write.
#[must_use = "finish() writes the entry to disk and ends its pending state"]
pub struct Store<'a> {
    cache: &'a Cache,
    key: String,
    /// `None`: nothing was stored (an invalidation came first).
    written: Option<(u64, Arc<Entry>)>,
    generation: u64,
    memory_ok: bool,
}

impl Store<'_> {
    /// Writes the entry to the disk tier (if any) and returns whether any tier stored it.
    pub async fn finish(self) -> bool {
        let Some((token, entry)) = self.written else {
            return false;
        };
        let cache = self.cache;
        let mut ok = self.memory_ok;
        if let Some(disk) = &cache.disk {
            let (gens, key, generation) =
                (cache.generations.clone(), self.key.clone(), self.generation);
            let tags = cache.entry_tags(&entry);
            match disk
                .put_if(&self.key, entry, tags, move || {
                    gens.current(&key) == generation
                })
                .await
            {
                Ok(()) => ok = true,
                Err(StoreError::Superseded) => ok = false,
                Err(e) => {
                    bump(&cache.counters.store_errors);
                    tracing::debug!(tier = "disk", key = self.key, error = %e, "cache: not stored");
                }
            }
        }
        let mut pending = cache.lock_pending();
        if pending.entries.get(&self.key).is_some_and(|p| p.0 == token) {
            pending.entries.remove(&self.key);
        }
        let superseded = cache.generations.current(&self.key) != self.generation;
        drop(pending);
        if ok && !superseded {
            bump(&cache.counters.stores);
        }
        ok && !superseded
    }
}

impl Cache {
    /// Builds the tiers; opening the disk tier validates its index (blocking: call at start).
    pub fn new(cfg: CacheConfig) -> Result<Cache, StoreError> {
        let memory = (cfg.enabled && cfg.memory_size > 0).then(|| MemoryTier::new(cfg.memory_size));
        let disk = match &cfg.disk_dir {
            Some(dir) if cfg.enabled => Some(DiskTier::open(dir, cfg.disk_size)?),
            _ => None,
        };
        let flights = Flights::new(usize::try_from(cfg.max_object_size).unwrap_or(usize::MAX));
        let cfg_refreshes = cfg.background_refreshes;
        Ok(Cache {
            cfg,
            memory,
            disk,
            flights,
            counters: Counters::default(),
            generations: Arc::default(),
            pending: Mutex::default(),
            refreshes: Refreshes::new(cfg_refreshes),
        })
    }

    fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key's generation now: take it before the request goes upstream and store with it
    /// ([`Fetch::generation`]); an invalidation in between makes that store a no-op.
    pub fn generation(&self, key: &str) -> u64 {
        self.generations.current(key)
    }

    pub fn config(&self) -> &CacheConfig {
        &self.cfg
    }

    pub fn flights(&self) -> &Flights {
        &self.flights
    }

    /// The background refreshes (stale-while-revalidate) running.
    pub fn refreshes(&self) -> &Arc<Refreshes> {
        &self.refreshes
    }

    /// Takes `key`'s background refresh slot ([`Refreshes::start`]: one per key, bounded by
    /// `background_refreshes`); counted as a revalidation when it starts.
    pub fn start_refresh(&self, key: &str) -> Result<RefreshSlot, Refused> {
        let slot = self.refreshes.start(key)?;
        bump(&self.counters.revalidations);
        Ok(slot)
    }

    /// The entry for `key`: one being stored, else memory, else disk (promoted to memory
    /// unless an invalidation came while it was read).
    async fn get(&self, key: &str) -> Option<Arc<Entry>> {
        {
            let pending = self.lock_pending();
            if let Some((_, e)) = pending.entries.get(key) {
                return Some(e.clone());
            }
            if let Some(e) = self.memory.as_ref().and_then(|m| m.get_now(key)) {
                return Some(e);
            }
        }
        let generation = self.generations.current(key);
        let e = self.disk.as_ref()?.get(key).await?;
        if let Some(m) = &self.memory {
            let _pending = self.lock_pending();
            if self.generations.current(key) == generation {
                let _ = m.put_now(key, e.clone());
            }
        }
        Some(e)
    }

    /// Step 1 of the call sequence: what to do with this request (the forward proxy's
    /// profile: Cache-Control only, the URL as key).
    pub async fn lookup(&self, req: &RequestHead, now: SystemTime) -> Lookup {
        self.lookup_in(req, &Arc::default(), now).await
    }

    /// [`Cache::lookup`] with a route's profile (targeted fields, key rules).
    pub async fn lookup_in(
        &self,
        req: &RequestHead,
        profile: &Arc<Profile>,
        now: SystemTime,
    ) -> Lookup {
        if !self.cfg.handles(&req.method) {
            return Lookup::Bypass(CacheStatus::forward(if self.cfg.enabled {
                Fwd::Method
            } else {
                Fwd::Bypass
            }));
        }
        let Some(key) = profile.primary_key(req) else {
            return Lookup::Bypass(CacheStatus::forward(Fwd::Bypass).with_detail("target"));
        };
        if has_origin_preconditions(req) {
            return Lookup::Bypass(CacheStatus::forward(Fwd::Request).with_detail("precondition"));
        }
        let req_cc = request_cache_control(&req.headers);
        let entry = self.get(&key).await;
        let selected = entry
            .as_ref()
            .and_then(|e| e.select_where(&req.headers, |v| profile.covers(&v.vary)))
            .cloned();
        let Some(stored) = selected else {
            let fwd = if entry.is_some() {
                Fwd::VaryMiss
            } else {
                Fwd::UriMiss
            };
            return self.miss(key, &req_cc, CacheStatus::forward(fwd));
        };
        let (resp_cc, lifetime, age) = judge(&stored, profile, now);
        let ttl = lifetime as i64 - age as i64;
        match reuse(&req_cc, &resp_cc, lifetime, age) {
            Reuse::Fresh => {
                bump(&self.counters.hits);
                Lookup::Hit(respond_aged(req, &stored, age, CacheStatus::hit(ttl)))
            }
            Reuse::StaleAccepted => {
                bump(&self.counters.stale_served);
                Lookup::Hit(respond_aged(req, &stored, age, CacheStatus::hit(ttl)))
            }
            Reuse::StaleWhileRevalidate => {
                bump(&self.counters.stale_served);
                let served = respond_aged(
                    req,
                    &stored,
                    age,
                    CacheStatus::hit(ttl).with_detail("stale-while-revalidate"),
                );
                let status = CacheStatus::forward(Fwd::Stale);
                let reval = self.revalidation(key, req, stored, status, profile);
                Lookup::StaleWhileRevalidate { served, reval }
            }
            Reuse::Revalidate => {
                if only_if_cached(&req_cc) {
                    bump(&self.counters.misses);
                    return Lookup::OnlyIfCached(only_if_cached_miss(CacheStatus::forward(
                        Fwd::Stale,
                    )));
                }
                bump(&self.counters.revalidations);
                // RFC 9211 `request`: a fresh response the request's own directives refused.
                let fwd = if ttl > 0 && !resp_cc.has("no-cache") {
                    Fwd::Request
                } else {
                    Fwd::Stale
                };
                let mut status = CacheStatus::forward(fwd);
                status.ttl = Some(ttl);
                Lookup::Revalidate(self.revalidation(key, req, stored, status, profile))
            }
        }
    }

    fn miss(&self, key: String, req_cc: &CacheControl, status: CacheStatus) -> Lookup {
        bump(&self.counters.misses);
        if only_if_cached(req_cc) {
            return Lookup::OnlyIfCached(only_if_cached_miss(status));
        }
        Lookup::Miss { key, status }
    }

    fn revalidation(
        &self,
        key: String,
        req: &RequestHead,
        stored: Arc<StoredResponse>,
        status: CacheStatus,
        profile: &Arc<Profile>,
    ) -> Revalidation {
        let headers = revalidation_headers(&req.headers, &stored.head);
        Revalidation {
            generation: self.generations.current(&key),
            key,
            stored,
            headers,
            status,
            profile: profile.clone(),
        }
    }

    /// Whether the upstream response to `req` may be stored (RFC rules, size, config).
    pub fn storable(&self, req: &RequestHead, resp: &ResponseHead) -> Result<(), Refusal> {
        self.storable_in(req, resp, &Profile::default())
    }

    /// [`Cache::storable`] under a route's profile (a targeted field decides, RFC 9213).
    pub fn storable_in(
        &self,
        req: &RequestHead,
        resp: &ResponseHead,
        profile: &Profile,
    ) -> Result<(), Refusal> {
        if !self.cfg.enabled {
            return Err(Refusal::Disabled);
        }
        storable(req, &profile.decision(resp)).map_err(Refusal::Rfc)?;
        let declared = resp
            .headers
            .get_str("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.cfg.max_object_size) {
            return Err(Refusal::TooLarge);
        }
        Ok(())
    }

    /// Stores a complete response (call after [`Cache::storable`] said yes and the whole body
    /// arrived). When this returns, the entry is visible to every lookup (or was dropped
    /// because the key was invalidated after `fetch.generation` was taken); the returned
    /// [`Store`] finishes the disk write. End a collapsing flight in between.
    pub async fn store(
        &self,
        key: &str,
        req: &RequestHead,
        resp: &ResponseHead,
        body: Bytes,
        fetch: Fetch,
    ) -> Store<'_> {
        self.store_in(key, req, resp, body, fetch, &Profile::default())
            .await
    }

    /// [`Cache::store`] under a route's profile (its key fields join the secondary key).
    pub async fn store_in(
        &self,
        key: &str,
        req: &RequestHead,
        resp: &ResponseHead,
        body: Bytes,
        fetch: Fetch,
        profile: &Profile,
    ) -> Store<'_> {
        let nothing = Store {
            cache: self,
            key: key.to_string(),
            written: None,
            generation: fetch.generation,
            memory_ok: false,
        };
        if self.storable_in(req, resp, profile).is_err()
            || body.len() as u64 > self.cfg.max_object_size
        {
            return nothing;
        }
        let Some(vary) = secondary_key(&req.headers, resp) else {
            return nothing;
        };
        let vary = profile.with_extras(vary, &req.headers);
        let mut head = resp.clone();
        head.headers = headers_to_store(&resp.headers, &format_http_date(fetch.response_time));
        let stored = Arc::new(StoredResponse::new(
            head,
            body,
            fetch.request_time,
            fetch.response_time,
            vary,
        ));
        self.put(key, stored, fetch.generation).await
    }

    /// Makes the entry with `stored` added visible at once (pending map and memory tier),
    /// unless the key's generation moved on since `generation`.
    async fn put(&self, key: &str, stored: Arc<StoredResponse>, generation: u64) -> Store<'_> {
        // With a memory tier, a large body goes into a sealed memory file, so its hits leave
        // with `sendfile(2)` (the disk tier, if any, reads it back once to write its file).
        let stored = match self.memory {
            Some(_) => super::sealed::large_body_sealed(stored),
            None => stored,
        };
        let entry = Arc::new(self.get(key).await.unwrap_or_default().with(stored));
        self.put_entry(key, entry, generation)
    }

    /// Makes `entry` visible at once as the key's entry, unless the key's generation moved
    /// on since `generation`.
    fn put_entry(&self, key: &str, entry: Arc<Entry>, generation: u64) -> Store<'_> {
        let mut store = Store {
            cache: self,
            key: key.to_string(),
            written: None,
            generation,
            memory_ok: false,
        };
        let mut pending = self.lock_pending();
        if self.generations.current(key) != generation {
            return store;
        }
        pending.next += 1;
        let token = pending.next;
        if self.disk.is_some() {
            pending
                .entries
                .insert(key.to_string(), (token, entry.clone()));
        }
        if let Some(m) = &self.memory {
            match m.put_now(key, entry.clone()) {
                Ok(()) => store.memory_ok = true,
                // Bodies left in disk-tier files: the disk tier keeps serving them.
                Err(StoreError::OnDisk) => {}
                Err(e) => {
                    bump(&self.counters.store_errors);
                    tracing::debug!(tier = "memory", key, error = %e, "cache: not stored");
                }
            }
        }
        store.written = Some((token, entry));
        store
    }

    /// A 304 arrived for `reval`: merge it into the stored response (section 4.3.4), store
    /// the result and build the client's response. `None`: the 304 does not match the
    /// stored response; fetch again without validators.
    pub async fn revalidated(
        &self,
        reval: &Revalidation,
        req: &RequestHead,
        not_modified: &ResponseHead,
        request_time: SystemTime,
        response_time: SystemTime,
        now: SystemTime,
    ) -> Option<Served> {
        if !selected_for_update(&reval.stored.head, not_modified) {
            return None;
        }
        bump(&self.counters.not_modified);
        let mut head = merge_not_modified(&reval.stored.head, not_modified);
        if !not_modified.headers.contains("date") {
            head.headers.set("Date", format_http_date(response_time));
        }
        if !not_modified.headers.contains("age") {
            head.headers.remove("age");
        }
        let mut updated = StoredResponse::new(
            head,
            reval.stored.body.clone(),
            request_time,
            response_time,
            reval.stored.vary.clone(),
        );
        updated.file = reval.stored.file.clone();
        let updated = Arc::new(updated);
        let mut status = reval.status.clone();
        status.fwd_status = Some(304);
        // An update may have made the response unstorable (e.g. the 304 added no-store).
        let get = RequestHead {
            method: "GET".into(),
            ..req.clone()
        };
        let profile = &reval.profile;
        status.stored = storable(&get, &profile.decision(&updated.head)).is_ok()
            && self
                .put(&reval.key, updated.clone(), reval.generation)
                .await
                .finish()
                .await;
        if !status.stored {
            self.remove(&reval.key).await;
        }
        let (_, lifetime, age) = judge(&updated, profile, now);
        status.ttl = Some(lifetime as i64 - age as i64);
        Some(respond(req, &updated, now, status))
    }

    /// A 200 arrived for a HEAD sent to the origin because the stored GET response `reval`
    /// needed validation (section 4.3.5): a matching stored response takes the HEAD's header
    /// fields like a 304's (framing fields excepted) and is freshened; one that does not
    /// match is removed (it is stale in any case). Returns whether it was updated.
    pub async fn head_response(
        &self,
        reval: &Revalidation,
        req: &RequestHead,
        head: &ResponseHead,
        fetch: Fetch,
    ) -> bool {
        if !head_updates(&reval.stored.head, head) {
            if head.status == 200 {
                self.remove(&reval.key).await;
            }
            return false;
        }
        let mut merged = merge_not_modified(&reval.stored.head, head);
        if !head.headers.contains("date") {
            merged
                .headers
                .set("Date", format_http_date(fetch.response_time));
        }
        if !head.headers.contains("age") {
            merged.headers.remove("age");
        }
        let mut updated = StoredResponse::new(
            merged,
            reval.stored.body.clone(),
            fetch.request_time,
            fetch.response_time,
            reval.stored.vary.clone(),
        );
        updated.file = reval.stored.file.clone();
        let get = RequestHead {
            method: "GET".into(),
            ..req.clone()
        };
        if storable(&get, &reval.profile.decision(&updated.head)).is_err() {
            self.remove(&reval.key).await;
            return false;
        }
        let store = self.put(&reval.key, Arc::new(updated), reval.generation);
        store.await.finish().await
    }

    /// The origin failed (connection error, or 500/502/503/504): RFC 5861 section 4 lets a
    /// stale response be sent within its `stale-if-error` window.
    pub fn stale_if_error(
        &self,
        reval: &Revalidation,
        req: &RequestHead,
        now: SystemTime,
    ) -> Option<Served> {
        let stored = &reval.stored;
        let (resp_cc, lifetime, age) = judge(stored, &reval.profile, now);
        let req_cc = request_cache_control(&req.headers);
        if !within_stale_if_error(&resp_cc, &req_cc, age.saturating_sub(lifetime)) {
            return None;
        }
        bump(&self.counters.stale_served);
        let status = CacheStatus::hit(lifetime as i64 - age as i64).with_detail("stale-if-error");
        Some(respond(req, stored, now, status))
    }

    /// The origin could not be reached or closed the connection before answering: with
    /// `stale_if_unreachable` on, section 4.2.4 lets the cache, being disconnected, send the
    /// stale response unless a directive forbids it ([`stale_when_disconnected`]). The
    /// Cache-Status says so (`detail="origin-unreachable"`; no `Warning`, which RFC 9111
    /// obsoleted).
    pub fn stale_if_unreachable(
        &self,
        reval: &Revalidation,
        req: &RequestHead,
        now: SystemTime,
    ) -> Option<Served> {
        if !self.cfg.stale_if_unreachable {
            return None;
        }
        let stored = &reval.stored;
        let (resp_cc, lifetime, age) = judge(stored, &reval.profile, now);
        let req_cc = request_cache_control(&req.headers);
        if !stale_when_disconnected(&resp_cc, &req_cc) {
            return None;
        }
        bump(&self.counters.stale_served);
        let ttl = lifetime as i64 - age as i64;
        let status = CacheStatus::hit(ttl).with_detail("origin-unreachable");
        Some(respond(req, stored, now, status))
    }

    /// Section 4.4: after a non-error response to an unsafe method, drop what it changed.
    pub async fn invalidate(&self, req: &RequestHead, resp: &ResponseHead) -> usize {
        self.invalidate_in(req, resp, &Profile::default()).await
    }

    /// [`Cache::invalidate`] under a route's profile (its key rules apply to the URLs).
    pub async fn invalidate_in(
        &self,
        req: &RequestHead,
        resp: &ResponseHead,
        profile: &Profile,
    ) -> usize {
        if is_safe_method(&req.method) {
            return 0;
        }
        let mut n = 0;
        let mut keys: Vec<String> = Vec::new();
        for k in invalidated_keys(req, resp) {
            let k = profile.rekey(&k);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        for key in keys {
            if self.remove(&key).await {
                n += 1;
            }
        }
        self.counters
            .invalidations
            .fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Removes `key` everywhere; the generation is bumped first, so a store that started
    /// before this cannot land after it.
    async fn remove(&self, key: &str) -> bool {
        let mut any = {
            let mut pending = self.lock_pending();
            self.generations.bump(key);
            self.flights.forget(key);
            let p = pending.entries.remove(key).is_some();
            p | self.memory.as_ref().is_some_and(|m| m.remove_now(key))
        };
        if let Some(d) = &self.disk {
            any |= d.remove(key).await;
        }
        any
    }

    /// Admin purge of one URL (normalised like a request target). Returns entries removed.
    pub async fn purge(&self, url: &str) -> usize {
        self.purge_url(url, false, SystemTime::now()).await
    }

    /// Admin purge of one URL; `soft`: marked stale instead of removed.
    pub async fn purge_url(&self, url: &str, soft: bool, now: SystemTime) -> usize {
        match key_of_url(url) {
            Some(key) if soft => usize::from(self.mark_stale(&key, now).await),
            Some(key) => usize::from(self.remove(&key).await),
            None => 0,
        }
    }

    /// The tags of an entry (every variant's), by the `tag_header` setting.
    fn entry_tags(&self, entry: &Entry) -> Vec<String> {
        let Some(name) = &self.cfg.tag_header else {
            return Vec::new();
        };
        let mut out: Vec<String> = Vec::new();
        for v in &entry.variants {
            for t in super::tags::parse(&v.head.headers, name, self.cfg.tag_separator) {
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
        out
    }

    /// Admin purge of every entry tagged `tag` (in `tag_header`); `soft`: marked stale
    /// instead of removed. Returns how many entries.
    pub async fn purge_tag(&self, tag: &str, soft: bool, now: SystemTime) -> usize {
        let has = |e: &Entry| self.entry_tags(e).iter().any(|t| t == tag);
        let mut keys: Vec<String> = {
            let pending = self.lock_pending();
            // A store that went upstream before this may carry the tag: it is dropped.
            self.generations.bump_all();
            pending
                .entries
                .iter()
                .filter(|(_, (_, e))| has(e))
                .map(|(k, _)| k.clone())
                .collect()
        };
        if let Some(m) = &self.memory {
            keys.extend(m.keys_where(|_, e| has(e)));
        }
        if let Some(d) = &self.disk {
            keys.extend(d.keys_tagged(tag));
        }
        self.purge_keys(keys, soft, now).await
    }

    async fn purge_keys(&self, mut keys: Vec<String>, soft: bool, now: SystemTime) -> usize {
        keys.sort();
        keys.dedup();
        let mut n = 0;
        for k in keys {
            let done = if soft {
                self.mark_stale(&k, now).await
            } else {
                self.remove(&k).await
            };
            n += usize::from(done);
        }
        n
    }

    /// Soft purge of one key: every stored variant becomes stale now (a store that went
    /// upstream before is dropped, as for a removal). It may still be served stale where
    /// the rules allow (`stale-while-revalidate`, `stale-if-error`) and is revalidated.
    async fn mark_stale(&self, key: &str, now: SystemTime) -> bool {
        let generation = {
            let _pending = self.lock_pending();
            self.generations.bump(key);
            self.flights.forget(key);
            self.generations.current(key)
        };
        let Some(entry) = self.get(key).await else {
            return false;
        };
        let variants = entry
            .variants
            .iter()
            .map(|v| match v.stale_since {
                Some(_) => v.clone(),
                None => {
                    let mut marked = (**v).clone();
                    marked.stale_since = Some(now);
                    Arc::new(marked)
                }
            })
            .collect();
        let marked = Arc::new(Entry { variants });
        self.put_entry(key, marked, generation).finish().await
    }

    /// Admin purge of every URL starting with `prefix` (compared with normalised keys, e.g.
    /// `http://example.com/static/`). Returns the largest count any tier removed.
    pub async fn purge_prefix(&self, prefix: &str) -> usize {
        self.purge_prefix_as(prefix, false, SystemTime::now()).await
    }

    /// [`Cache::purge_prefix`]; `soft`: marked stale instead of removed (returns how many).
    pub async fn purge_prefix_as(&self, prefix: &str, soft: bool, now: SystemTime) -> usize {
        if soft {
            let mut keys: Vec<String> = {
                let pending = self.lock_pending();
                self.generations.bump_all();
                pending
                    .entries
                    .keys()
                    .filter(|k| k.starts_with(prefix))
                    .cloned()
                    .collect()
            };
            if let Some(m) = &self.memory {
                keys.extend(m.keys_where(|k, _| k.starts_with(prefix)));
            }
            if let Some(d) = &self.disk {
                keys.extend(d.keys_prefixed(prefix));
            }
            return self.purge_keys(keys, true, now).await;
        }
        let mut n = {
            let mut pending = self.lock_pending();
            self.generations.bump_all();
            let before = pending.entries.len();
            pending.entries.retain(|k, _| !k.starts_with(prefix));
            before - pending.entries.len()
        };
        if let Some(m) = &self.memory {
            n = n.max(m.remove_prefix(prefix).await);
        }
        if let Some(d) = &self.disk {
            n = n.max(d.remove_prefix(prefix).await);
        }
        n
    }

    /// Whether a collapsed follower may take the leader's response: the same rules as a
    /// stored hit (Vary, then [`reuse`] with the response's age now); a fresh or
    /// acceptably stale response is taken, anything needing validation is not.
    pub fn follower(&self, req: &RequestHead, shared: &SharedHead, now: SystemTime) -> Follow {
        self.follower_in(req, shared, &Profile::default(), now)
    }

    /// [`Cache::follower`] under a route's profile.
    pub fn follower_in(
        &self,
        req: &RequestHead,
        shared: &SharedHead,
        profile: &Profile,
        now: SystemTime,
    ) -> Follow {
        if !shared.accepts(req) {
            return Follow::Upstream;
        }
        let req_cc = request_cache_control(&req.headers);
        let decision = profile.decision(&shared.head);
        let resp_cc = CacheControl::from_headers(&decision.headers);
        let lifetime = freshness_lifetime(&decision, &resp_cc, shared.response_time);
        let age = current_age(&shared.head, shared.request_time, shared.response_time, now);
        match reuse(&req_cc, &resp_cc, lifetime, age) {
            Reuse::Fresh | Reuse::StaleAccepted => {}
            Reuse::StaleWhileRevalidate | Reuse::Revalidate => return Follow::Upstream,
        }
        let h = &req.headers;
        if req.method != "GET"
            || h.contains("range")
            || h.contains("if-none-match")
            || h.contains("if-modified-since")
        {
            Follow::Whole
        } else {
            Follow::Stream
        }
    }
}

/// The response directives, freshness lifetime and current age of a stored response, as
/// `profile` reads them (a targeted field decides where there is a valid one). Without a
/// targeted field these come from what the stored response parsed when it was stored.
fn judge<'a>(
    stored: &'a StoredResponse,
    profile: &Profile,
    now: SystemTime,
) -> (Cow<'a, CacheControl>, u64, u64) {
    let (cc, mut lifetime) = match profile.decision(&stored.head) {
        Cow::Borrowed(_) => {
            let p = stored.parsed();
            (Cow::Borrowed(&p.cc), p.lifetime)
        }
        Cow::Owned(decision) => {
            let cc = CacheControl::from_headers(&decision.headers);
            let lifetime = freshness_lifetime(&decision, &cc, stored.response_time);
            (Cow::Owned(cc), lifetime)
        }
    };
    let age = stored.current_age(now);
    if let Some(at) = stored.stale_since {
        // Soft-purged: stale from then on (its age then is the most it stays fresh).
        lifetime = lifetime.min(stored.current_age(at));
    }
    (cc, lifetime, age)
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
