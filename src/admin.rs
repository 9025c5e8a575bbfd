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
        let Ok(permit) = limit.clone().acquire_owned().await else { return };
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
    let (status, ctype, body) = match head.as_ref().map(|h| (h.method.as_str(), h.target.as_str())) {
        None => (400, "text/plain", "bad request\n".to_string()),
        Some(("GET", "/healthz")) => {
            if svc.shutdown.is_draining() {
                (503, "text/plain", "draining\n".to_string())
            } else {
                (200, "text/plain", "ok\n".to_string())
            }
        }
        Some(("GET", "/metrics")) => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            svc.metrics.encode(),
        ),
        Some((_, "/healthz" | "/metrics")) => (405, "text/plain", "method not allowed\n".to_string()),
        Some(_) => (404, "text/plain", "not found\n".to_string()),
    };
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
