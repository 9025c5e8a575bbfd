//! Request collapsing: many concurrent misses for one key make one upstream request.
//!
//! The first caller of [`Flights::join`] becomes the [`Leader`] and fetches; later callers
//! become [`Follower`]s. The leader publishes the response head once it knows the response
//! is storable, then every body chunk; followers replay the whole stream from the start (so
//! a late joiner misses nothing) while it arrives. If the response turns out not to be
//! shareable (not storable, or its Vary does not match the follower's request), followers
//! are told to go upstream themselves. If the leader fails or is dropped before it finishes,
//! followers that have not sent anything yet go upstream; those mid-body must end their
//! response the way an upstream failure would.
//!
//! Memory is bounded: the buffered body of one flight never exceeds `max_buffer` bytes (the
//! cache's max object size); past it the flight is abandoned.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::watch;

use super::freshness::format_http_date;
use super::object::StoredResponse;
use super::storable::headers_to_store;
use super::vary::{self, secondary_key, SecondaryKey};
use crate::http::codec::{RequestHead, ResponseHead};

/// The head a leader shares, with the request values its Vary nominated and the leader's
/// request and response times (a follower computes the response's age from them, exactly as
/// for a stored response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedHead {
    pub head: ResponseHead,
    pub vary: SecondaryKey,
    pub request_time: SystemTime,
    pub response_time: SystemTime,
}

impl SharedHead {
    /// What a leader publishes for an upstream response it found storable: the head as it
    /// will be stored (hop-by-hop fields gone, Date added; see
    /// [`crate::cache::storable::headers_to_store`]) and the leader's secondary key. The body
    /// framing is the follower's own: Content-Length when the head has one, else chunked (or
    /// close for an HTTP/1.0 client). `None` for `Vary: *` (never storable anyway).
    pub fn new(
        req: &RequestHead,
        resp: &ResponseHead,
        request_time: SystemTime,
        response_time: SystemTime,
    ) -> Option<SharedHead> {
        let vary = secondary_key(&req.headers, resp)?;
        let mut head = resp.clone();
        head.headers = headers_to_store(&resp.headers, &format_http_date(response_time));
        Some(SharedHead {
            head,
            vary,
            request_time,
            response_time,
        })
    }

    /// The shared response with its complete body, as it will be stored.
    pub fn stored(&self, body: Bytes) -> StoredResponse {
        StoredResponse::new(
            self.head.clone(),
            body,
            self.request_time,
            self.response_time,
            self.vary.clone(),
        )
    }

    /// Whether a follower's request may take this response: the fields its Vary nominates
    /// must match (RFC 9111 section 4.1). If not, the follower goes upstream itself.
    pub fn accepts(&self, req: &RequestHead) -> bool {
        vary::matches(&self.vary, &req.headers)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Complete,
    NotShared,
    Aborted,
}

#[derive(Default)]
struct State {
    head: Option<Arc<SharedHead>>,
    chunks: Vec<Bytes>,
    buffered: usize,
    end: Option<End>,
}

struct Flight {
    state: Mutex<State>,
    changed: watch::Sender<()>,
}

impl Flight {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.send_replace(());
    }
}

struct Inner {
    map: Mutex<HashMap<String, Arc<Flight>>>,
    max_buffer: usize,
    /// Requests that joined as followers, ever (for /metrics).
    joined: std::sync::atomic::AtomicU64,
}

/// The in-flight map, shared by all requests of a cache.
#[derive(Clone)]
pub struct Flights {
    inner: Arc<Inner>,
}

pub enum Join {
    Leader(Leader),
    Follower(Follower),
}

impl Flights {
    pub fn new(max_buffer: usize) -> Flights {
        Flights {
            inner: Arc::new(Inner {
                map: Mutex::default(),
                max_buffer,
                joined: Default::default(),
            }),
        }
    }

    /// Joins the flight for `key`, starting it if there is none.
    pub fn join(&self, key: &str) -> Join {
        let mut map = self.inner.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = map.get(key) {
            self.inner
                .joined
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Join::Follower(Follower {
                rx: f.changed.subscribe(),
                flight: f.clone(),
                next: 0,
                head_seen: false,
            });
        }
        let (changed, _) = watch::channel(());
        let flight = Arc::new(Flight {
            state: Mutex::default(),
            changed,
        });
        map.insert(key.to_string(), flight.clone());
        Join::Leader(Leader {
            inner: self.inner.clone(),
            key: key.to_string(),
            flight,
            done: false,
        })
    }

    /// The key was invalidated: later requests must not join its flight (its response was
    /// asked for before the invalidation). Followers already in it are served as usual; the
    /// leader ends normally.
    pub fn forget(&self, key: &str) {
        self.inner
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Requests that joined a flight as followers so far.
    pub fn joined(&self) -> u64 {
        self.inner.joined.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Flights in progress (for tests and metrics).
    pub fn in_flight(&self) -> usize {
        self.inner
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

pub struct Leader {
    inner: Arc<Inner>,
    key: String,
    flight: Arc<Flight>,
    done: bool,
}

impl Leader {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The response is storable: followers receive this head and then the body.
    pub fn publish_head(&mut self, shared: SharedHead) {
        self.flight.update(|s| s.head = Some(Arc::new(shared)));
    }

    /// Passes one body chunk on. Returns false (and abandons the flight) when the buffered
    /// body would exceed the bound; the leader then just keeps serving its own client.
    pub fn push(&mut self, chunk: Bytes) -> bool {
        if self.done {
            return false;
        }
        let max = self.inner.max_buffer;
        let mut over = false;
        self.flight.update(|s| {
            if s.buffered + chunk.len() > max {
                over = true;
            } else {
                s.buffered += chunk.len();
                s.chunks.push(chunk);
            }
        });
        if over {
            self.end(End::Aborted);
        }
        !over
    }

    /// The whole body was passed on. Call after storing the response, so that requests
    /// arriving after the flight ends find it in the cache.
    pub fn finish(mut self) {
        self.end(End::Complete);
    }

    /// The response is not shareable: followers go upstream themselves.
    pub fn not_shared(mut self) {
        self.end(End::NotShared);
    }

    fn end(&mut self, end: End) {
        if self.done {
            return;
        }
        self.done = true;
        let mut map = self.inner.map.lock().unwrap_or_else(|e| e.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            map.remove(&self.key);
        }
        drop(map);
        self.flight.update(|s| s.end = Some(end));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.end(End::Aborted);
    }
}

/// What a follower does next. A follower takes the head only if the cache's reuse rules
/// accept it for its own request (`Cache::follower`); otherwise it goes upstream itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Send this head (after checking its Vary against the follower's own request).
    Head(Arc<SharedHead>),
    Chunk(Bytes),
    /// The body is complete.
    End,
    /// Nothing was shared: make your own upstream request.
    GoUpstream,
    /// The leader failed mid-body: end the client's response as for an upstream failure.
    Aborted,
}

pub struct Follower {
    flight: Arc<Flight>,
    rx: watch::Receiver<()>,
    next: usize,
    head_seen: bool,
}

impl Follower {
    pub async fn next(&mut self) -> Event {
        loop {
            self.rx.borrow_and_update();
            if let Some(ev) = self.poll_state() {
                return ev;
            }
            if self.rx.changed().await.is_err() {
                // Unreachable while we hold the flight (it owns the sender); be safe anyway.
                return self.poll_state().unwrap_or(Event::Aborted);
            }
        }
    }

    fn poll_state(&mut self) -> Option<Event> {
        let s = self.flight.lock();
        if !self.head_seen {
            if let Some(h) = &s.head {
                if s.end != Some(End::Aborted) {
                    self.head_seen = true;
                    return Some(Event::Head(h.clone()));
                }
            }
            return s.end.map(|_| Event::GoUpstream);
        }
        if let Some(c) = s.chunks.get(self.next) {
            self.next += 1;
            return Some(Event::Chunk(c.clone()));
        }
        match s.end {
            Some(End::Complete) => Some(Event::End),
            Some(_) => Some(Event::Aborted),
            None => None,
        }
    }
}

#[cfg(test)]
#[path = "collapse_tests.rs"]
mod tests;
