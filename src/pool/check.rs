//! Active health checks: one task per server of each used pool, every `interval` plus jitter,
//! a TCP connect (`type = "tcp"`) or one HTTP/1.1 request on a fresh connection
//! (`type = "http"`), the whole check bounded by `timeout`. Results go through
//! `ActiveHealth::observe` (rise/fall) under the pool's lock.
//!
//! The HTTP probe is a small client over the existing codec: `write_request_head`, then
//! `parse_response` on at most [`MAX_HEAD`] bytes, then (only when a body match is wanted)
//! the body decoded by `copy_decoded` into a collector that stops at
//! [`crate::balance::BODY_LIMIT`]. Garbage, an oversized head, a slow or silent server all
//! fail the check; nothing here waits without a bound.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::ServerPool;
use crate::balance::BODY_LIMIT;
use crate::config::{HealthCheckKind, HttpCheck};
use crate::http::body::{self, CopyError};
use crate::http::codec::{self, Headers};
use crate::server::Services;

/// Largest response head a check reads.
pub const MAX_HEAD: usize = 16 * 1024;
/// Interim (1xx) responses skipped before the final one.
const MAX_INTERIM: usize = 4;

/// Starts one check task per server of `pool` (when it has `[pools.health]`), and one task
/// readmitting servers whose ejection ran out (when passive checks are on). The tasks end
/// when `stop` is cancelled (the shutdown, or a reload that replaced or removed the pool).
/// A server marked in `added` (new at a reload) is checked at once, not after an interval.
pub(super) fn start(
    pool: Arc<ServerPool>,
    svc: Arc<Services>,
    stop: tokio_util::sync::CancellationToken,
    added: &[bool],
) {
    if pool.cfg.passive.max_failures > 0 {
        // Ejections that run out are readmitted (logged, gauge set) within a second even
        // when no request comes to pick the server.
        let pool = pool.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => pool.refresh(std::time::Instant::now()),
                    _ = stop.cancelled() => return,
                }
            }
        });
    }
    let Some(h) = pool.cfg.health.clone() else {
        return;
    };
    for i in 0..pool.cfg.servers.len() {
        if pool.cfg.servers[i].agent.is_some() {
            // Through an agent: judged by its opens and answers only (passive checks).
            continue;
        }
        let pool = pool.clone();
        let svc = svc.clone();
        let h = h.clone();
        let stop = stop.clone();
        let mut wait_first = !added.get(i).copied().unwrap_or(false);
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::new();
            let name = match h.kind {
                HealthCheckKind::Tcp => "tcp",
                HealthCheckKind::Http(_) => "http",
            };
            loop {
                let jitter = if h.jitter.is_zero() {
                    Duration::ZERO
                } else {
                    h.jitter.mul_f64(rng.f64())
                };
                let wait = if std::mem::replace(&mut wait_first, true) {
                    h.interval + jitter
                } else {
                    Duration::ZERO
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return,
                }
                let once = async {
                    let mut stream = pool
                        .connect_one(i, &svc.connector)
                        .await
                        .map_err(|e| e.to_string())?
                        .stream;
                    match &h.kind {
                        HealthCheckKind::Tcp => Ok(()),
                        HealthCheckKind::Http(c) => {
                            // A server that expects a PROXY header gets one that names no
                            // client (the check is the proxy's own).
                            if let Some(v) = pool.cfg.proxy_protocol {
                                let local = crate::l4::proxy_protocol::encode_local(
                                    v == crate::config::ProxyVersion::V2,
                                );
                                body::write_all(&mut stream, &local, h.timeout)
                                    .await
                                    .map_err(|e| e.to_string())?;
                            }
                            probe_http(&mut stream, c, pool.label(i), h.timeout).await
                        }
                    }
                };
                let result = tokio::select! {
                    r = tokio::time::timeout(h.timeout, once) => r,
                    _ = stop.cancelled() => return,
                };
                match result {
                    Ok(Ok(())) => pool.checked(i, true, &format!("{name} check passed")),
                    Ok(Err(e)) => pool.checked(i, false, &format!("{name} check: {e}")),
                    Err(_) => pool.checked(i, false, &format!("{name} check timed out")),
                }
            }
        });
    }
}

/// The request a check sends: `Host` (the configured one or the server's `host:port`),
/// `Connection: close`, nothing else that could vary.
pub fn request(check: &HttpCheck, server: &str) -> Vec<u8> {
    let mut h = Headers::default();
    h.push("Host", check.host.as_deref().unwrap_or(server));
    h.push("User-Agent", "gatehouse-health-check");
    h.push("Accept", "*/*");
    h.push("Connection", "close");
    let mut out = Vec::with_capacity(128);
    codec::write_request_head(&mut out, &check.method, &check.path, &h);
    out
}

/// One HTTP check over a connected stream. Each read and write is bounded by `t`; the caller
/// bounds the whole. `Err` says why the check failed, for the log.
pub async fn probe_http<S>(
    stream: &mut S,
    check: &HttpCheck,
    server: &str,
    t: Duration,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    body::write_all(stream, &request(check, server), t)
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(4096);
    let mut interim = 0;
    let head = loop {
        match codec::parse_response(&buf, MAX_HEAD) {
            Err(e) => return Err(format!("bad response: {e}")),
            Ok(Some((head, len))) => {
                buf.advance(len);
                if head.status < 200 && head.status != 101 {
                    interim += 1;
                    if interim > MAX_INTERIM {
                        return Err("too many interim responses".into());
                    }
                    continue;
                }
                break head;
            }
            Ok(None) => {
                let mut chunk = [0u8; 4096];
                let n = match tokio::time::timeout(t, stream.read(&mut chunk)).await {
                    Err(_) => return Err("no response in time".into()),
                    Ok(Err(e)) => return Err(format!("reading: {e}")),
                    Ok(Ok(0)) => return Err("closed before a response".into()),
                    Ok(Ok(n)) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    };
    let mut seen = Vec::new();
    if check.expect.body.is_some() {
        let framing = codec::response_framing(&check.method, &head)
            .map_err(|e| format!("bad response: {e}"))?;
        let mut sink = Collect {
            data: &mut seen,
            limit: BODY_LIMIT,
        };
        match body::copy_decoded(
            stream,
            &mut buf,
            &mut sink,
            framing,
            false,
            &mut |_| {},
            MAX_HEAD,
            t,
        )
        .await
        {
            // A write error is the collector saying it has enough.
            Ok(_) | Err(CopyError::Write(_)) => {}
            Err(e) => return Err(format!("body: {e}")),
        }
    }
    check.expect.judge(head.status, &seen)
}

/// Keeps the first `limit` bytes written, then fails the write so the copy stops.
struct Collect<'a> {
    data: &'a mut Vec<u8>,
    limit: usize,
}

impl AsyncWrite for Collect<'_> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let room = self.limit.saturating_sub(self.data.len());
        if room == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::other("enough of the body")));
        }
        let n = room.min(buf.len());
        self.data.extend_from_slice(&buf[..n]);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{Expect, StatusRanges};

    fn check(body: Option<&str>) -> HttpCheck {
        HttpCheck {
            method: "GET".into(),
            path: "/healthz".into(),
            host: None,
            expect: Expect {
                status: StatusRanges::default(),
                body: body.map(|b| b.as_bytes().to_vec()),
            },
        }
    }

    const T: Duration = Duration::from_secs(2);

    /// Runs a probe against a server that answers `answer` (then closes).
    async fn probe(c: &HttpCheck, answer: Vec<u8>) -> (Result<(), String>, Vec<u8>) {
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut got = vec![0u8; 4096];
            let n = theirs.read(&mut got).await.unwrap_or(0);
            got.truncate(n);
            let _ = theirs.write_all(&answer).await;
            got
        });
        let r = probe_http(&mut ours, c, "10.0.0.1:80", T).await;
        drop(ours);
        (r, server.await.expect("server"))
    }

    #[tokio::test]
    async fn request_names_the_host_and_closes() {
        let (r, sent) = probe(&check(None), b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()).await;
        assert_eq!(r, Ok(()));
        let sent = String::from_utf8(sent).expect("ascii");
        assert!(
            sent.starts_with("GET /healthz HTTP/1.1\r\nHost: 10.0.0.1:80\r\n"),
            "{sent}"
        );
        assert!(sent.contains("Connection: close\r\n"), "{sent}");
    }

    #[tokio::test]
    async fn statuses_interim_responses_and_bodies() {
        let ok = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(probe(&check(None), ok.to_vec()).await.0, Ok(()));
        assert_eq!(probe(&check(Some("ok")), ok.to_vec()).await.0, Ok(()));
        let bad = b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            probe(&check(None), bad.to_vec()).await.0,
            Err("status 500".into())
        );
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nall\r\n5\r\n good\r\n0\r\n\r\n";
        assert_eq!(
            probe(&check(Some("all good")), chunked.to_vec()).await.0,
            Ok(())
        );
        assert!(probe(&check(Some("fine")), chunked.to_vec())
            .await
            .0
            .is_err());
        // A body read until close, larger than the limit: the first 64 KiB are judged.
        let mut big = b"HTTP/1.0 200 OK\r\n\r\nmarker".to_vec();
        big.extend(std::iter::repeat_n(b'x', 200_000));
        assert_eq!(probe(&check(Some("marker")), big.clone()).await.0, Ok(()));
        big.extend_from_slice(b"late");
        assert!(probe(&check(Some("late")), big).await.0.is_err());
    }

    #[tokio::test]
    async fn bad_answers_fail_without_hanging() {
        for answer in [
            b"garbage\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\n".to_vec(),
            Vec::new(),
            [
                b"HTTP/1.1 200 OK\r\nX: ".to_vec(),
                vec![b'a'; MAX_HEAD + 10],
            ]
            .concat(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort".to_vec(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(),
            b"HTTP/1.1 100 Continue\r\n\r\n".repeat(10),
        ] {
            let r = probe(&check(Some("x")), answer.clone()).await.0;
            assert!(
                r.is_err(),
                "{:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(60)])
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_server_times_out() {
        let (mut ours, _theirs) = tokio::io::duplex(1024);
        let r = probe_http(&mut ours, &check(None), "s", T).await;
        assert_eq!(r, Err("no response in time".into()));
    }

    #[tokio::test]
    async fn random_answers_never_panic_or_hang() {
        let mut rng = fastrand::Rng::with_seed(9);
        let pieces: [&[u8]; 8] = [
            b"HTTP/1.1 200 OK\r\n",
            b"Content-Length: 5\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"\xff\x00\n",
            b"ok",
        ];
        for _ in 0..300 {
            let mut answer = Vec::new();
            for _ in 0..rng.usize(0..8) {
                if rng.bool() {
                    answer.extend_from_slice(pieces[rng.usize(0..pieces.len())]);
                } else {
                    answer.extend((0..rng.usize(0..40)).map(|_| rng.u8(..)));
                }
            }
            let c = check(if rng.bool() { Some("ok") } else { None });
            let r = tokio::time::timeout(Duration::from_secs(5), probe(&c, answer)).await;
            assert!(r.is_ok(), "a probe hung");
        }
    }
}
