//! Background refreshes (RFC 5861 section 3, `stale-while-revalidate`): the stale response
//! has been sent; one conditional request per key goes upstream with no client waiting.
//!
//! It takes the path a miss takes, with a client that discards what it is sent
//! ([`ClientStream::Discard`]): the forward proxy's policy verdict (direct to the checked
//! addresses, or its parents) and a reverse route's pool (server choice, retries, passive
//! health, idle connections). A 304 freshens the stored response, a storable 200 replaces
//! it, a 5xx within `stale-if-error` and any failure leave it as it is (served stale until
//! its windows end). `Cache::start_refresh` keeps it to one per key and
//! `background_refreshes` at once; the task is tracked by the shutdown, which waits for it
//! (bounded by the upstream timeouts) and starts no new one once draining. It goes through
//! the bandwidth throttles of the client (and user) whose stale hit started it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use super::cached::{CacheCtx, Finish};
use super::codec::{Framing, RequestHead};
use super::proxy::{Client, Exchange, Fetched, HttpProxy, Upward};
use super::reverse::Routed;
use super::stream::{ClientStream, Discard};
use super::target::HttpTarget;
use super::tunnel::Via;
use crate::cache::engine::Revalidation;
use crate::cache::refresh::RefreshSlot;
use crate::cache::Profile;
use crate::policy::{Policy, Rewrite};

/// What a background refresh needs of the request that found the stale response.
struct Job {
    /// The client's request as a GET (its key and Vary values).
    head: RequestHead,
    reval: Revalidation,
    profile: Arc<Profile>,
    target: HttpTarget,
    via: Via,
    max_forwards: Option<u32>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    scheme: &'static str,
    policy: Arc<Policy>,
    rewrite: Option<Arc<Rewrite>>,
    first_byte_timeout: Option<std::time::Duration>,
    max_body: Option<u64>,
    routed: Option<Routed>,
    /// The user whose request found the stale response (bandwidth throttles).
    user: Option<String>,
    /// The key's refresh slot, held until the refresh ends.
    _slot: RefreshSlot,
}

impl HttpProxy {
    /// Starts the background refresh of a stale response just served, unless one runs for
    /// its key already, `background_refreshes` run, or the proxy is draining.
    pub(super) fn refresh_in_background(
        &self,
        client: &Client,
        head: &RequestHead,
        reval: Revalidation,
        profile: &Arc<Profile>,
        to: &Upward<'_>,
        ex: &Exchange,
    ) {
        let (Some(cache), Some(me)) = (self.svc.cache.as_ref(), self.me.upgrade()) else {
            return;
        };
        if self.svc.shutdown.is_draining() {
            return;
        }
        let slot = match cache.start_refresh(&reval.key) {
            Ok(s) => s,
            Err(why) => {
                tracing::debug!(key = %reval.key, "no background refresh: {why:?}");
                return;
            }
        };
        // A HEAD's stale hit refreshes the stored GET it was answered from.
        let job = Job {
            head: RequestHead {
                method: "GET".into(),
                ..head.clone()
            },
            reval,
            profile: profile.clone(),
            target: to.target.clone(),
            via: to.via.clone(),
            max_forwards: to.max_forwards,
            peer: client.peer,
            local: client.local,
            scheme: client.stream.scheme(),
            policy: client.policy.clone(),
            rewrite: ex.rewrite.clone(),
            first_byte_timeout: ex.first_byte_timeout,
            max_body: ex.max_body,
            routed: ex.routed.clone(),
            user: ex.user.clone(),
            _slot: slot,
        };
        self.svc
            .shutdown
            .spawn(async move { me.refresh(job).await });
    }

    /// The refresh itself: the conditional request through `fetch`, then `cache_finish`
    /// (304: freshen; 200: store); a 304 that matches nothing stored is followed by one
    /// unconditional request, stored like a miss.
    async fn refresh(self: Arc<Self>, job: Job) {
        let Some(cache) = self.svc.cache.clone() else {
            return;
        };
        let mut client = Client {
            stream: ClientStream::Discard(Box::new(Discard {
                local: job.local,
                scheme: job.scheme,
            })),
            buf: BytesMut::new(),
            peer: job.peer,
            local: job.local,
            policy: job.policy.clone(),
            unread_body: None,
            login: None,
            negotiating: None,
        };
        let mut ex = Exchange::new(Instant::now(), "GET", &job.head.target, 0);
        ex.rewrite = job.rewrite.clone();
        ex.first_byte_timeout = job.first_byte_timeout;
        ex.max_body = job.max_body;
        ex.cache_profile = Some(job.profile.clone());
        ex.routed = job.routed.clone();
        ex.user = job.user.clone();
        let to = Upward {
            target: &job.target,
            via: &job.via,
            framing: Framing::None,
            close_on_error: true,
            max_forwards: job.max_forwards,
            cache: Some(job.profile.clone()),
        };
        let reval = &job.reval;
        let sent = RequestHead {
            method: "GET".into(),
            headers: reval.headers.clone(),
            ..job.head.clone()
        };
        let mut ctx = CacheCtx::new(
            cache.clone(),
            &job.profile,
            &job.head,
            Some(reval.key.clone()),
            reval.status.clone(),
        );
        // The generation when the stale response was found: an invalidation since wins.
        ctx.generation = reval.generation;
        ctx.reval = Some(reval.clone());
        let req_head = self.request_head(&sent, &to, job.peer, ex.rewrite.as_deref());
        let fetched = self
            .fetch(
                &mut client,
                &sent,
                &job.target,
                &job.via,
                Framing::None,
                &req_head,
                Some(&mut ctx),
                &mut ex,
            )
            .await;
        let keep = match fetched {
            Fetched::Done(keep) => keep,
            Fetched::Failed(e) => {
                tracing::debug!(key = %reval.key, "background refresh failed: {}", e.kind);
                return;
            }
            Fetched::Aborted => return,
        };
        if let Finish::Refetch = self.cache_finish(&mut client, ctx, keep, &mut ex).await {
            let plain = &job.head;
            let mut ctx = CacheCtx::new(
                cache.clone(),
                &job.profile,
                &job.head,
                Some(reval.key.clone()),
                reval.status.clone(),
            );
            ctx.generation = reval.generation;
            let req_head = self.request_head(plain, &to, job.peer, ex.rewrite.as_deref());
            let fetched = self
                .fetch(
                    &mut client,
                    plain,
                    &job.target,
                    &job.via,
                    Framing::None,
                    &req_head,
                    Some(&mut ctx),
                    &mut ex,
                )
                .await;
            if let Fetched::Done(keep) = fetched {
                let _ = self.cache_finish(&mut client, ctx, keep, &mut ex).await;
            }
        }
    }
}
