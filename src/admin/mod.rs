//! The admin listener (off unless configured): `/healthz`, `/metrics`, `/proxy.pac`, the
//! JSON admin API under `/api/v1/` (`api.rs`), the live `/dashboard` (`dashboard.rs`), and
//! `POST /cache/purge`. Reads are open on the admin listener; every change (purge, reload,
//! drain) needs the configured bearer token ([`authorize`]).
//!
//! One request per connection, small bounded heads, short timeouts: it must stay cheap and
//! must not be a way to tie up the proxy.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::config::Password;
use crate::http::codec::{self, Headers};
use crate::metrics::Format;
use crate::server::Services;

mod api;
mod dashboard;

pub use api::{Control, ReloadOutcome};

const MAX_HEAD: usize = 8 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 64;

/// Serves the admin listener. `token`: the bearer token for mutating endpoints (off without).
/// `control`: where reload and drain requests go (the binary's signal loop serves them).
pub async fn serve(
    socket: TcpListener,
    svc: Arc<Services>,
    token: Option<Password>,
    control: tokio::sync::mpsc::Sender<Control>,
) {
    let token = Arc::new(token);
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
        let token = token.clone();
        let control = control.clone();
        tokio::spawn(async move {
            let work = handle(stream, &svc, token.as_ref().as_ref(), &control);
            let _ = tokio::time::timeout(TIMEOUT, work).await;
            drop(permit);
        });
    }
}

async fn handle(
    mut stream: TcpStream,
    svc: &Services,
    token: Option<&Password>,
    control: &tokio::sync::mpsc::Sender<Control>,
) -> std::io::Result<()> {
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
        let (status, body) = match authorize(token, &h.headers) {
            Ok(()) => purge(svc, &h.method, query).await,
            Err((status, why)) => (status, why.to_string()),
        };
        return respond(&mut stream, status, "text/plain", &body).await;
    }
    if let (Some(h), Some((path, _))) = (head.as_ref(), path_query) {
        if let Some(endpoint) = path.strip_prefix("/api/v1/") {
            let (status, body) = api::handle(
                svc,
                &h.method,
                endpoint,
                || authorize(token, &h.headers),
                control,
            )
            .await;
            return respond(&mut stream, status, "application/json", &body).await;
        }
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
        Some(("GET", "/dashboard")) => (200, "text/html; charset=utf-8", dashboard::PAGE.into()),
        Some(("GET", "/metrics")) => {
            let format = Format::negotiate(head.as_ref().and_then(|h| h.headers.get_str("Accept")));
            (200, format.content_type(), metrics_text(svc, format))
        }
        Some((_, "/healthz" | "/metrics" | "/dashboard")) => {
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
    if status == 401 {
        h.push("WWW-Authenticate", "Bearer realm=\"gatehouse admin\"");
    }
    h.push("Cache-Control", "no-store");
    if ctype.starts_with("text/html") {
        // The dashboard is self-contained: nothing but its own inline code and this origin.
        h.push(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:",
        );
    }
    h.push("Content-Length", body.len().to_string());
    h.push("Connection", "close");
    let mut out = Vec::with_capacity(body.len() + 128);
    codec::write_response_head(&mut out, status, codec::reason(status), &h);
    out.extend_from_slice(body.as_bytes());
    stream.write_all(&out).await?;
    stream.shutdown().await
}

/// `POST /cache/purge?url=<absolute URL>`, `?prefix=<URL prefix>` or `?tag=<cache tag>`,
/// with `&soft=1` to mark the entries stale instead of removing them: answers the count.
async fn purge(svc: &Services, method: &str, query: &str) -> (u16, String) {
    if method != "POST" {
        return (405, "use POST\n".into());
    }
    let Some(cache) = svc.cache.as_ref() else {
        return (404, "no cache is configured\n".into());
    };
    let mut url = None;
    let mut prefix = None;
    let mut tag = None;
    let mut soft = false;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "url" => url = Some(v.into_owned()),
            "prefix" => prefix = Some(v.into_owned()),
            "tag" => tag = Some(v.into_owned()),
            "soft" => match v.as_ref() {
                "1" | "true" => soft = true,
                "0" | "false" => soft = false,
                _ => return (400, "soft= takes 1 or 0\n".into()),
            },
            _ => {}
        }
    }
    let now = std::time::SystemTime::now();
    match (url, prefix, tag) {
        (Some(u), None, None) => (200, format!("{}\n", cache.purge_url(&u, soft, now).await)),
        (None, Some(p), None) => (
            200,
            format!("{}\n", cache.purge_prefix_as(&p, soft, now).await),
        ),
        (None, None, Some(t)) if !t.is_empty() => {
            (200, format!("{}\n", cache.purge_tag(&t, soft, now).await))
        }
        _ => (400, "give exactly one of url=, prefix= or tag=\n".into()),
    }
}

/// The registry's metrics plus the cache's, read at scrape time, in the negotiated format.
fn metrics_text(svc: &Services, format: Format) -> String {
    let mut text = svc.metrics.encode_families();
    if let Some(cache) = svc.cache.as_ref() {
        cache.stats().encode_openmetrics(&mut text);
    }
    crate::metrics::finish(text, format)
}

/// Whether a request may use a mutating endpoint: `Ok` with the right bearer token, else the
/// refusal to send. Without a configured token these endpoints are off. A request a browser
/// sent for a web page (it carries `Origin`) is refused whatever it carries.
pub(crate) fn authorize(
    token: Option<&Password>,
    headers: &Headers,
) -> Result<(), (u16, &'static str)> {
    let Some(token) = token else {
        return Err((
            403,
            "mutating admin endpoints are off: set [admin] token or token_file\n",
        ));
    };
    if headers.contains("Origin") {
        return Err((403, "cross-origin requests are refused\n"));
    }
    let given = headers
        .get_str("Authorization")
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
        .map(|(_, t)| t.trim());
    match given {
        Some(t) if token.matches(t.as_bytes()) => Ok(()),
        _ => Err((401, "a valid Authorization: Bearer token is required\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> Headers {
        let mut h = Headers::default();
        for (k, v) in list {
            h.push(k, *v);
        }
        h
    }

    #[test]
    fn purge_needs_the_token() {
        let t = Password::new("s3cret");
        assert_eq!(authorize(None, &headers(&[])).map_err(|e| e.0), Err(403));
        assert_eq!(
            authorize(None, &headers(&[("Authorization", "Bearer s3cret")])).map_err(|e| e.0),
            Err(403)
        );
        assert_eq!(
            authorize(Some(&t), &headers(&[])).map_err(|e| e.0),
            Err(401)
        );
        assert_eq!(
            authorize(Some(&t), &headers(&[("Authorization", "Bearer s3cre")])).map_err(|e| e.0),
            Err(401)
        );
        assert_eq!(
            authorize(Some(&t), &headers(&[("Authorization", "Basic s3cret")])).map_err(|e| e.0),
            Err(401)
        );
        assert_eq!(
            authorize(Some(&t), &headers(&[("Authorization", "bearer s3cret")])),
            Ok(())
        );
        assert_eq!(
            authorize(
                Some(&t),
                &headers(&[
                    ("Authorization", "Bearer s3cret"),
                    ("Origin", "http://evil.example")
                ])
            )
            .map_err(|e| e.0),
            Err(403)
        );
    }
}
