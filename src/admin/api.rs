//! The JSON admin API under `/api/v1/`: `GET status` (the overview), `GET agents` (the
//! reverse-tunnel agents connected to this relay), `POST reload` and
//! `POST drain` (token-protected, served by the binary's signal loop through [`Control`]).

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::server::Services;

/// A change asked for on the admin API, for the loop that owns the server (`main`).
#[derive(Debug)]
pub enum Control {
    /// Re-read and apply the config file as SIGHUP does.
    Reload(oneshot::Sender<ReloadOutcome>),
    /// Begin the graceful drain, as SIGTERM does.
    Drain,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// In force; with any warnings.
    Applied(Vec<String>),
    /// Refused: every problem; the running config stays.
    Refused(Vec<String>),
    /// In force, but part of it failed (a new listener could not be bound): the problems.
    Partial(Vec<String>),
}

/// How long a reload may take before the API answers without its result.
const RELOAD_WAIT: Duration = Duration::from_secs(8);

/// Answers `/api/v1/<endpoint>`: (status, JSON body). `authorize` is asked only for changes.
pub(super) async fn handle(
    svc: &Services,
    method: &str,
    endpoint: &str,
    authorize: impl FnOnce() -> Result<(), (u16, &'static str)>,
    control: &mpsc::Sender<Control>,
) -> (u16, String) {
    let (status, body) = match (method, endpoint) {
        ("GET", "status") => (200, status(svc)),
        ("GET", "agents") => (200, json!({ "agents": svc.agents.list() })),
        ("POST", "reload" | "drain") => match authorize() {
            Err((status, why)) => (status, json!({ "error": why.trim_end() })),
            Ok(()) if endpoint == "reload" => reload(control).await,
            Ok(()) => drain(svc, control).await,
        },
        (_, "status" | "agents" | "reload" | "drain") => {
            (405, json!({ "error": "method not allowed" }))
        }
        _ => (404, json!({ "error": "no such endpoint" })),
    };
    let mut text = serde_json::to_string_pretty(&body).unwrap_or_default();
    text.push('\n');
    (status, text)
}

async fn reload(control: &mpsc::Sender<Control>) -> (u16, Value) {
    let (tx, rx) = oneshot::channel();
    if control.try_send(Control::Reload(tx)).is_err() {
        return (
            503,
            json!({ "applied": false, "problems": ["a reload is already pending, or nothing serves reloads in this process"] }),
        );
    }
    match tokio::time::timeout(RELOAD_WAIT, rx).await {
        Ok(Ok(ReloadOutcome::Applied(warnings))) => (
            200,
            json!({ "applied": true, "problems": [], "warnings": warnings }),
        ),
        Ok(Ok(ReloadOutcome::Refused(problems))) => {
            (422, json!({ "applied": false, "problems": problems }))
        }
        Ok(Ok(ReloadOutcome::Partial(problems))) => {
            (500, json!({ "applied": true, "problems": problems }))
        }
        Ok(Err(_)) => (
            503,
            json!({ "applied": false, "problems": ["the reload was dropped (shutting down?)"] }),
        ),
        Err(_) => (
            504,
            json!({ "applied": null, "problems": ["the reload is still running; see the log"] }),
        ),
    }
}

async fn drain(svc: &Services, control: &mpsc::Sender<Control>) -> (u16, Value) {
    if svc.shutdown.is_draining() {
        return (
            200,
            json!({ "draining": true, "in_flight": svc.shutdown.in_flight() }),
        );
    }
    match control.try_send(Control::Drain) {
        Ok(()) => (
            202,
            json!({ "draining": true, "in_flight": svc.shutdown.in_flight() }),
        ),
        Err(_) => (
            503,
            json!({ "error": "nothing serves drain requests in this process" }),
        ),
    }
}

/// `GET /api/v1/status`: listeners with their open connections and rates, the cache, rule
/// hits, errors by type, top clients and destinations, parents' and pools' health.
pub fn status(svc: &Services) -> Value {
    let snap = svc.metrics.stats.snapshot();
    let mut v = serde_json::to_value(&snap).unwrap_or_else(|_| json!({}));
    if let Some(list) = v.get_mut("listeners").and_then(Value::as_array_mut) {
        for l in list {
            let name = l["name"].as_str().unwrap_or_default().to_string();
            let open = svc
                .metrics
                .connections_open
                .get_or_create(&Metrics::listener(&name))
                .get();
            l["connections_open"] = json!(open);
        }
    }
    v["version"] = json!(env!("CARGO_PKG_VERSION"));
    v["draining"] = json!(svc.shutdown.is_draining());
    v["in_flight"] = json!(svc.shutdown.in_flight());
    v["cache"] = match svc.cache.as_ref() {
        None => Value::Null,
        Some(cache) => {
            let s = cache.stats();
            let served = s.hits + s.stale_served;
            let lookups = served + s.misses;
            let tier = |t: Option<crate::cache::store::TierStats>| {
                t.map(
                    |t| json!({ "bytes": t.bytes, "entries": t.entries, "evictions": t.evictions }),
                )
            };
            json!({
                "hits": s.hits,
                "stale_served": s.stale_served,
                "misses": s.misses,
                "hit_ratio": if lookups == 0 { Value::Null } else { json!(served as f64 / lookups as f64) },
                "revalidations": s.revalidations,
                "not_modified": s.not_modified,
                "stores": s.stores,
                "store_errors": s.store_errors,
                "invalidations": s.invalidations,
                "collapsed": s.collapsed,
                "memory": tier(s.memory),
                "disk": tier(s.disk),
            })
        }
    };
    v["pools"] = json!(svc.pools.health());
    v
}
