//! The admin listener (off unless configured): `/healthz` and `/metrics`.
//!
//! One request per connection, small bounded heads, short timeouts: it must stay cheap and
//! must not be a way to tie up the proxy.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::http::codec::{self, Headers};
use crate::server::Services;

const MAX_HEAD: usize = 8 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 64;

pub async fn serve(socket: TcpListener, svc: Arc<Services>) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let stream = tokio::select! {
            r = socket.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("admin accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = svc.shutdown.draining() => return,
        };
        let svc = svc.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(TIMEOUT, handle(stream, &svc)).await;
            drop(permit);
        });
    }
}

async fn handle(mut stream: TcpStream, svc: &Services) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(1024);
    let head = loop {
        match codec::parse_request(&buf, MAX_HEAD) {
            Ok(Some((h, _))) => break Some(h),
            Ok(None) => {}
            Err(_) => break None,
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    };
    let path_query = head
        .as_ref()
        .map(|h| h.target.split_once('?').unwrap_or((h.target.as_str(), "")));
    if let (Some(h), Some(("/cache/purge", query))) = (head.as_ref(), path_query) {
        let (status, body) = purge(svc, &h.method, query).await;
        return respond(&mut stream, status, "text/plain", &body).await;
    }
    let (status, ctype, body) = match head
        .as_ref()
        .map(|h| (h.method.as_str(), h.target.as_str()))
    {
        None => (400, "text/plain", "bad request\n".to_string()),
        Some(("GET", "/healthz")) => {
            if svc.shutdown.is_draining() {
                (503, "text/plain", "draining\n".to_string())
            } else {
                (200, "text/plain", "ok\n".to_string())
            }
        }
        Some(("GET", "/proxy.pac")) => (
            200,
            "application/x-ns-proxy-autoconfig",
            svc.pac.load().as_ref().clone(),
        ),
        Some(("GET", "/metrics")) => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics_text(svc),
        ),
        Some((_, "/healthz" | "/metrics")) => {
            (405, "text/plain", "method not allowed\n".to_string())
        }
        Some(_) => (404, "text/plain", "not found\n".to_string()),
    };
    respond(&mut stream, status, ctype, &body).await
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let mut h = Headers::default();
    h.push("Content-Type", ctype);
    h.push("Content-Length", body.len().to_string());
    h.push("Connection", "close");
    let mut out = Vec::with_capacity(body.len() + 128);
    codec::write_response_head(&mut out, status, codec::reason(status), &h);
    out.extend_from_slice(body.as_bytes());
    stream.write_all(&out).await?;
    stream.shutdown().await
}

/// `POST /cache/purge?url=<absolute URL>` or `?prefix=<URL prefix>`: answers the count removed.
async fn purge(svc: &Services, method: &str, query: &str) -> (u16, String) {
    if method != "POST" {
        return (405, "use POST\n".into());
    }
    let Some(cache) = svc.cache.as_ref() else {
        return (404, "no cache is configured\n".into());
    };
    let mut url = None;
    let mut prefix = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "url" => url = Some(v.into_owned()),
            "prefix" => prefix = Some(v.into_owned()),
            _ => {}
        }
    }
    match (url, prefix) {
        (Some(u), None) => (200, format!("{}\n", cache.purge(&u).await)),
        (None, Some(p)) => (200, format!("{}\n", cache.purge_prefix(&p).await)),
        _ => (400, "give exactly one of url= or prefix=\n".into()),
    }
}

/// The registry's metrics plus the cache's counters, read at scrape time.
fn metrics_text(svc: &Services) -> String {
    let mut text = svc.metrics.encode();
    let Some(cache) = svc.cache.as_ref() else {
        return text;
    };
    let eof = text.rfind("# EOF").unwrap_or(text.len());
    text.truncate(eof);
    let st = cache.stats();
    let counters = [
        ("hits", "Responses served from the cache", st.hits),
        (
            "misses",
            "Cacheable requests not found in the cache",
            st.misses,
        ),
        (
            "stale_served",
            "Stale responses served (stale-while-revalidate, stale-if-error)",
            st.stale_served,
        ),
        (
            "revalidations",
            "Conditional requests sent to validate stored responses",
            st.revalidations,
        ),
        (
            "not_modified",
            "Stored responses confirmed by a 304",
            st.not_modified,
        ),
        ("stores", "Responses stored", st.stores),
        (
            "store_errors",
            "Responses a tier failed to store",
            st.store_errors,
        ),
        (
            "invalidations",
            "Stored responses invalidated by unsafe methods",
            st.invalidations,
        ),
        (
            "collapsed",
            "Requests that joined another request's upstream fetch",
            st.collapsed,
        ),
    ];
    for (name, help, v) in counters {
        text.push_str(&format!(
            "# HELP gatehouse_cache_{name} {help}.\n# TYPE gatehouse_cache_{name} counter\ngatehouse_cache_{name}_total {v}\n"
        ));
    }
    let tiers: Vec<_> = [("memory", st.memory), ("disk", st.disk)]
        .into_iter()
        .filter_map(|(n, t)| t.map(|t| (n, t)))
        .collect();
    type Field = fn(&crate::cache::store::TierStats) -> u64;
    let gauges: [(&str, &str, Field); 2] = [
        ("bytes", "Bytes stored, per tier", |t| t.bytes),
        ("entries", "Entries stored, per tier", |t| t.entries),
    ];
    for (name, help, get) in gauges {
        text.push_str(&format!(
            "# HELP gatehouse_cache_{name} {help}.\n# TYPE gatehouse_cache_{name} gauge\n"
        ));
        for (n, t) in &tiers {
            text.push_str(&format!(
                "gatehouse_cache_{name}{{tier=\"{n}\"}} {}\n",
                get(t)
            ));
        }
    }
    text.push_str("# HELP gatehouse_cache_evictions Entries evicted to make room, per tier.\n# TYPE gatehouse_cache_evictions counter\n");
    for (n, t) in &tiers {
        text.push_str(&format!(
            "gatehouse_cache_evictions_total{{tier=\"{n}\"}} {}\n",
            t.evictions
        ));
    }
    text.push_str("# EOF\n");
    text
}
