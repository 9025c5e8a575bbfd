//! The proxy's side of the shared cache (forward and reverse): the lookup before going
//! upstream, answers from the cache, request collapsing followers, what happens to a
//! response head and body on the way through. Background refreshes (stale-while-revalidate)
//! are in `refresh.rs`. The RFC 9111 decisions themselves are in `crate::cache`; this module
//! only drives them.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};

use super::body;
use super::codec::{self, Framing, Headers, RequestHead, ResponseHead, Version};
use super::proxy::{strip_hop_by_hop, wants_keep_alive, Client, Exchange, HttpProxy, Upward};
use super::stream::ClientStream;
use crate::cache::collapse::{Event, Follower, Join, Leader, SharedHead};
use crate::cache::engine::{Fetch, Follow, Revalidation};
use crate::cache::freshness::current_age;
use crate::cache::key::is_safe_method;
use crate::cache::serve::respond;
use crate::cache::{Cache, CacheStatus, Lookup, Profile, Served};

/// What the cache decided before the upstream was asked.
pub(super) enum Step {
    /// The client has been answered from the cache; whether its connection stays open.
    Answered(bool),
    /// Go upstream with this context; `Some(head)` replaces the request sent (revalidation).
    Forward(Box<CacheCtx>, Option<RequestHead>),
}

/// What happened to the upstream response, for [`HttpProxy::cache_finish`].
pub(super) enum Outcome {
    Relayed,
    /// A 304 to our conditional request: nothing has been sent to the client yet.
    NotModified(ResponseHead),
    /// The origin failed and `stale-if-error` allows this stale response instead.
    Stale(Served),
    /// The response was relayed and its whole body kept, to be stored.
    Captured {
        head: ResponseHead,
        body: Bytes,
    },
}

/// What the relay should do with a final response head.
pub(super) enum HeadAction {
    /// Send nothing to the client: the outcome says what to answer.
    Intercept,
    /// Relay it and keep a copy of the body.
    Capture,
    Relay,
}

/// Per-request cache state carried through the upstream exchange.
pub(super) struct CacheCtx {
    pub cache: Arc<Cache>,
    /// The listener's or route's profile (targeted fields, key rules).
    pub profile: Arc<Profile>,
    /// The client's request as received (the stored response's key and Vary values).
    pub req: RequestHead,
    pub key: Option<String>,
    pub status: CacheStatus,
    pub leader: Option<Leader>,
    pub reval: Option<Revalidation>,
    /// A HEAD sent upstream for a stored GET that needs validation (section 4.3.5).
    pub head_reval: Option<Revalidation>,
    pub request_time: SystemTime,
    pub response_time: SystemTime,
    /// The key's generation before going upstream (an invalidation meanwhile wins).
    pub generation: u64,
    pub capture: Option<BytesMut>,
    pub outcome: Outcome,
}

/// How [`HttpProxy::cache_finish`] ended.
pub(super) enum Finish {
    Done(bool),
    /// The 304 did not match what is stored: ask again without validators.
    Refetch,
}

impl CacheCtx {
    pub(super) fn new(
        cache: Arc<Cache>,
        profile: &Arc<Profile>,
        req: &RequestHead,
        key: Option<String>,
        status: CacheStatus,
    ) -> Box<CacheCtx> {
        let generation = key
            .clone()
            .or_else(|| profile.primary_key(req))
            .map_or(0, |k| cache.generation(&k));
        Box::new(CacheCtx {
            generation,
            cache,
            profile: profile.clone(),
            req: req.clone(),
            key,
            status,
            leader: None,
            reval: None,
            head_reval: None,
            request_time: SystemTime::now(),
            response_time: SystemTime::now(),
            capture: None,
            outcome: Outcome::Relayed,
        })
    }

    /// Called with the final response head, before anything of it reaches the client.
    pub async fn on_final_head(&mut self, resp: &ResponseHead) -> HeadAction {
        self.response_time = SystemTime::now();
        if let Some(reval) = &self.reval {
            if resp.status == 304 {
                self.outcome = Outcome::NotModified(resp.clone());
                return HeadAction::Intercept;
            }
            if matches!(resp.status, 500 | 502 | 503 | 504) {
                if let Some(s) = self
                    .cache
                    .stale_if_error(reval, &self.req, self.response_time)
                {
                    self.outcome = Outcome::Stale(s);
                    return HeadAction::Intercept;
                }
            }
        }
        if let Some(reval) = &self.head_reval {
            let fetch = Fetch {
                request_time: self.request_time,
                response_time: self.response_time,
                generation: self.generation,
            };
            let updated = self
                .cache
                .head_response(reval, &self.req, resp, fetch)
                .await;
            self.status.stored = updated;
        }
        // RFC 9111 section 4.4: a non-error response to an unsafe method invalidates.
        if !is_safe_method(&self.req.method) && resp.status < 400 {
            self.cache
                .invalidate_in(&self.req, resp, &self.profile)
                .await;
        }
        self.status.fwd_status = Some(resp.status);
        match self.cache.storable_in(&self.req, resp, &self.profile) {
            Ok(()) => {
                if let (Some(l), Some(mut shared)) = (
                    self.leader.as_mut(),
                    SharedHead::new(&self.req, resp, self.request_time, self.response_time),
                ) {
                    // Followers must match the route's key fields too.
                    shared.vary = self.profile.with_extras(shared.vary, &self.req.headers);
                    l.publish_head(shared);
                }
                self.status.stored = true;
                self.capture = Some(BytesMut::new());
                HeadAction::Capture
            }
            Err(_) => {
                if let Some(l) = self.leader.take() {
                    l.not_shared();
                }
                HeadAction::Relay
            }
        }
    }

    /// A piece of the response body on its way to the client.
    pub fn on_data(&mut self, data: &[u8]) {
        let limit = usize::try_from(self.cache.config().max_object_size).unwrap_or(usize::MAX);
        let Some(buf) = self.capture.as_mut() else {
            return;
        };
        if buf.len() + data.len() > limit {
            // Too large to keep: stop copying; followers were told by the leader's bound too.
            self.capture = None;
            self.status.stored = false;
            return;
        }
        buf.extend_from_slice(data);
        if let Some(l) = self.leader.as_mut() {
            l.push(Bytes::copy_from_slice(data));
        }
    }

    /// The body has been relayed completely.
    pub fn on_body_end(&mut self, head: &ResponseHead) {
        if let Some(body) = self.capture.take() {
            self.outcome = Outcome::Captured {
                head: head.clone(),
                body: body.freeze(),
            };
        }
    }

    /// Makes a captured response visible: `store` puts it where every lookup finds it, and
    /// only then does the flight end (so no request finds neither). Called before the
    /// client is sent the response's last bytes, so a request sent right after it always
    /// finds the entry. The returned store's disk write is awaited before the request ends
    /// (and is logged).
    pub(super) async fn publish(&mut self) -> Option<crate::cache::engine::Store<'_>> {
        if !matches!(self.outcome, Outcome::Captured { .. }) {
            return None;
        }
        let Outcome::Captured { head, body } =
            std::mem::replace(&mut self.outcome, Outcome::Relayed)
        else {
            return None;
        };
        let key = self
            .key
            .clone()
            .or_else(|| self.profile.primary_key(&self.req));
        let leader = self.leader.take();
        let store = match key {
            Some(key) => {
                let fetch = Fetch {
                    request_time: self.request_time,
                    response_time: self.response_time,
                    generation: self.generation,
                };
                let p = &self.profile;
                Some(
                    self.cache
                        .store_in(&key, &self.req, &head, body, fetch, p)
                        .await,
                )
            }
            None => None,
        };
        if let Some(l) = leader {
            l.finish();
        }
        store
    }

    /// On an upstream failure (unreachable, or closed before answering), the stale response
    /// `stale-if-error` or, if configured, section 4.2.4 allows, if any.
    pub fn stale_on_error(&self) -> Option<Served> {
        let reval = self.reval.as_ref()?;
        let now = SystemTime::now();
        self.cache
            .stale_if_error(reval, &self.req, now)
            .or_else(|| self.cache.stale_if_unreachable(reval, &self.req, now))
    }
}

impl HttpProxy {
    /// Looks the request up; answers it from the cache or says how to go upstream.
    pub(super) async fn cache_step(
        &self,
        cache: &Arc<Cache>,
        profile: &Arc<Profile>,
        client: &mut Client,
        head: &RequestHead,
        to: &Upward<'_>,
        ex: &mut Exchange,
    ) -> Step {
        match cache.lookup_in(head, profile, SystemTime::now()).await {
            Lookup::Hit(served) | Lookup::OnlyIfCached(served) => {
                Step::Answered(self.send_served(client, head, served, ex).await)
            }
            Lookup::Bypass(status) => {
                let key = profile.primary_key(head);
                Step::Forward(
                    CacheCtx::new(cache.clone(), profile, head, key, status),
                    None,
                )
            }
            Lookup::Miss { key, status } => {
                let mut ctx = CacheCtx::new(
                    cache.clone(),
                    profile,
                    head,
                    Some(key.clone()),
                    status.clone(),
                );
                // Only GET collapses: a follower is sent the leader's body.
                if head.method == "GET" {
                    match cache.flights().join(&key) {
                        Join::Leader(l) => ctx.leader = Some(l),
                        Join::Follower(f) => {
                            let follow = self
                                .follow(cache, profile, client, head, f, status, ex)
                                .await;
                            if let Some(keep) = follow {
                                return Step::Answered(keep);
                            }
                        }
                    }
                }
                Step::Forward(ctx, None)
            }
            Lookup::Revalidate(reval) if head.method == "GET" => {
                let up = RequestHead {
                    headers: reval.headers.clone(),
                    ..head.clone()
                };
                let mut ctx = CacheCtx::new(
                    cache.clone(),
                    profile,
                    head,
                    Some(reval.key.clone()),
                    reval.status.clone(),
                );
                ctx.reval = Some(reval);
                Step::Forward(ctx, Some(up))
            }
            Lookup::Revalidate(reval) => {
                // A HEAD whose stored GET needs validation: just ask the origin; a 200
                // freshens the stored GET (RFC 9111 section 4.3.5, in `on_final_head`).
                let status = reval.status.clone();
                let mut ctx = CacheCtx::new(cache.clone(), profile, head, None, status);
                ctx.generation = reval.generation;
                ctx.head_reval = Some(reval);
                Step::Forward(ctx, None)
            }
            Lookup::StaleWhileRevalidate { served, reval } => {
                // RFC 5861 section 3: answered stale now; the revalidation runs without a
                // client, through the same upstream path as a miss.
                self.refresh_in_background(client, head, reval, profile, to, ex);
                Step::Answered(self.send_served(client, head, served, ex).await)
            }
        }
    }

    /// After the upstream exchange: answer a 304 or stale response, store a captured one.
    pub(super) async fn cache_finish(
        &self,
        client: &mut Client,
        mut cc: Box<CacheCtx>,
        keep: bool,
        ex: &mut Exchange,
    ) -> Finish {
        ex.cache = Some(cc.status.log_word());
        // The relay publishes a captured response before its last bytes; this is for a
        // relay that ended without doing so.
        if let Some(store) = cc.publish().await {
            store.finish().await;
        }
        match std::mem::replace(&mut cc.outcome, Outcome::Relayed) {
            Outcome::Relayed | Outcome::Captured { .. } => Finish::Done(keep),
            Outcome::Stale(served) => {
                Finish::Done(self.send_served(client, &cc.req, served, ex).await && keep)
            }
            Outcome::NotModified(h304) => {
                let Some(reval) = cc.reval.as_ref() else {
                    return Finish::Done(false);
                };
                let now = SystemTime::now();
                match cc
                    .cache
                    .revalidated(
                        reval,
                        &cc.req,
                        &h304,
                        cc.request_time,
                        cc.response_time,
                        now,
                    )
                    .await
                {
                    Some(served) => {
                        Finish::Done(self.send_served(client, &cc.req, served, ex).await && keep)
                    }
                    None => Finish::Refetch,
                }
            }
        }
    }

    /// Sends a response made by the cache.
    pub(super) async fn send_served(
        &self,
        client: &mut Client,
        req: &RequestHead,
        served: Served,
        ex: &mut Exchange,
    ) -> bool {
        if matches!(client.stream, ClientStream::Discard(_)) {
            // A background refresh: nobody to answer, nothing to read from a file.
            return false;
        }
        let keep =
            wants_keep_alive(req) && client.body_drainable() && !self.svc.shutdown.is_draining();
        // The fields added for this client, after the head's own: Proxy-Authenticate (the
        // first `auth` of them), then Via and Connection, which come after a rewrite.
        let mut extra = Headers::default();
        let auth = match ex.auth_reply.take() {
            Some(v) => {
                extra.push("Proxy-Authenticate", v);
                1
            }
            None => 0,
        };
        let rewritten = ex.rewrite.is_some();
        if let Some(via) = &self.cfg.via {
            extra.push("Via", format!("1.1 {via}"));
        }
        self.connection_header(&mut extra, req, keep);
        // The head and the stored body go out together (one `writev` while the socket takes
        // them): the body is written from the stored bytes themselves, never copied behind
        // the head. A body in a file (a disk-tier file, or the memory tier's sealed memory
        // file for large bodies) goes to a plain TCP client with `sendfile(2)`; to TLS and
        // HTTP/2 clients it is read into memory first.
        let mut out = Vec::with_capacity(512);
        // A full hit whose stored fields go out untouched is written from the stored
        // response's serialized head; anything else is built field by field.
        let untouched = !rewritten
            && served
                .stored_fields()
                .is_some_and(|f| !ex.cache_profile.as_ref().is_some_and(|p| p.strips_any(f)));
        if !(untouched && served.write_stored_head(&mut out, &extra)) {
            let head = served.head();
            let mut h = head.headers.clone();
            if let Some(p) = &ex.cache_profile {
                p.strip(&mut h);
            }
            let (before, after) = extra.0.split_at(auth);
            h.0.extend_from_slice(before);
            if let Some(r) = &ex.rewrite {
                r.apply_response(&mut h);
            }
            h.0.extend_from_slice(after);
            codec::write_response_head(&mut out, head.status, &head.reason, &h);
        }
        ex.status = served.status_code();
        ex.cache = Some(served.status.log_word());
        let t = self.cfg.read_timeout;
        ex.bytes_out += out.len() as u64
            + served
                .file
                .as_ref()
                .map_or(served.body.len() as u64, |f| f.len);
        let ok = match (&served.file, client.stream.as_tcp()) {
            (None, _) => body::write_all_two(&mut client.stream, &out, &served.body, t)
                .await
                .is_ok(),
            (Some(f), Some(tcp)) => {
                let send = crate::sendfile::send_head_and_file(tcp, &out, &f.file, f.offset, f.len);
                matches!(tokio::time::timeout(t, send).await, Ok(Ok(())))
            }
            // A memory file: read at once (no disk to wait for).
            (Some(f), None) if f.in_memory => match f.read() {
                Ok(bytes) => body::write_all_two(&mut client.stream, &out, &bytes, t)
                    .await
                    .is_ok(),
                Err(_) => false,
            },
            (Some(f), None) => {
                let f = f.clone();
                match tokio::task::spawn_blocking(move || f.read()).await {
                    Ok(Ok(bytes)) => body::write_all_two(&mut client.stream, &out, &bytes, t)
                        .await
                        .is_ok(),
                    _ => false,
                }
            }
        };
        ok && keep
    }

    fn connection_header(&self, h: &mut Headers, req: &RequestHead, keep: bool) {
        if !keep {
            h.push("Connection", "close");
        } else if req.version == Version::Http10 {
            h.push("Connection", "keep-alive");
        }
    }

    /// A collapsed request: wait for the leader's response and stream it as it arrives.
    /// `None`: go upstream instead (the response was not shareable, or the reuse rules
    /// refuse it for this request, exactly as for a stored response).
    #[allow(clippy::too_many_arguments)]
    async fn follow(
        &self,
        cache: &Cache,
        profile: &Profile,
        client: &mut Client,
        req: &RequestHead,
        mut f: Follower,
        mut status: CacheStatus,
        ex: &mut Exchange,
    ) -> Option<bool> {
        let shared = match f.next().await {
            Event::Head(h) => h,
            _ => return None,
        };
        status.collapsed = true;
        status.fwd_status = Some(shared.head.status);
        match cache.follower_in(req, &shared, profile, SystemTime::now()) {
            Follow::Upstream => return None,
            Follow::Stream => {}
            Follow::Whole => {
                // A range or a conditional: answered from the complete body like a hit.
                let mut body = BytesMut::new();
                loop {
                    match f.next().await {
                        Event::Chunk(b) => body.extend_from_slice(&b),
                        Event::End => break,
                        // Nothing was sent yet: ask the origin instead.
                        _ => return None,
                    }
                }
                let stored = Arc::new(shared.stored(body.freeze()));
                let served = respond(req, &stored, SystemTime::now(), status);
                return Some(self.send_served(client, req, served, ex).await);
            }
        }
        let t = self.cfg.read_timeout;
        let head = &shared.head;
        let framing = codec::response_framing(&req.method, head).ok()?;
        let client_11 = req.version == Version::Http11;
        let chunk = matches!(framing, Framing::Chunked | Framing::UntilClose) && client_11;
        let keep = wants_keep_alive(req)
            && (matches!(framing, Framing::None | Framing::Length(_)) || client_11)
            && client.body_drainable()
            && !self.svc.shutdown.is_draining();
        let mut h = head.headers.clone();
        // Not generated for this request: it carries its current age like a hit (section 5.1).
        let age = current_age(
            head,
            shared.request_time,
            shared.response_time,
            SystemTime::now(),
        );
        h.set("Age", age.to_string());
        strip_hop_by_hop(&mut h);
        profile.strip(&mut h);
        h.remove("trailer");
        if chunk {
            h.set("Transfer-Encoding", "chunked");
        } else {
            h.remove("transfer-encoding");
        }
        if let Some(via) = &self.cfg.via {
            h.push("Via", format!("1.1 {via}"));
        }
        if let Some(r) = &ex.rewrite {
            r.apply_response(&mut h);
        }
        status.append_to(&mut h);
        self.connection_header(&mut h, req, keep);
        let mut out = Vec::with_capacity(512);
        codec::write_response_head(&mut out, head.status, &head.reason, &h);
        ex.status = head.status;
        ex.cache = Some(status.log_word());
        if body::write_all(&mut client.stream, &out, t).await.is_err() {
            return Some(false);
        }
        ex.bytes_out += out.len() as u64;
        loop {
            match f.next().await {
                Event::Chunk(b) => {
                    let ok = if chunk {
                        let mut piece = format!("{:x}\r\n", b.len()).into_bytes();
                        piece.extend_from_slice(&b);
                        piece.extend_from_slice(b"\r\n");
                        body::write_all(&mut client.stream, &piece, t).await
                    } else {
                        body::write_all(&mut client.stream, &b, t).await
                    };
                    if ok.is_err() {
                        return Some(false);
                    }
                    ex.bytes_out += b.len() as u64;
                }
                Event::End => {
                    if chunk
                        && body::write_all(&mut client.stream, b"0\r\n\r\n", t)
                            .await
                            .is_err()
                    {
                        return Some(false);
                    }
                    return Some(keep);
                }
                // The leader failed mid-body: end this response like an upstream failure.
                _ => {
                    ex.error = Some("http_response_incomplete");
                    return Some(false);
                }
            }
        }
    }
}
