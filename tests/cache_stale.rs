//! End-to-end: the RFC 5861 extensions through the forward proxy. Responses arrive already
//! stale (their `Age` exceeds `max-age`), so nothing waits for a clock.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_in_the_background() {
    let origin = numbered(|_, n| {
        if n == 1 {
            response(
                200,
                &[
                    ("Cache-Control", "max-age=1, stale-while-revalidate=600"),
                    ("Age", "30"),
                ],
                "v1",
            )
        } else {
            response(200, &[("Cache-Control", "max-age=600")], "v2")
        }
    })
    .await;
    let c = Cached::start();
    let url = origin.url("/swr");
    c.get(&url, &[]).await;
    // Background refreshes have no client; from here requests go without the log.
    let r = fetch(&c.client, "GET", &url, &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "v1"), "stale at once");
    let status = r.cache_status().unwrap_or_default();
    assert!(status.contains("hit"), "{status}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while origin.count("/swr") < 2 {
        assert!(Instant::now() < deadline, "no background refresh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The refreshed response replaces the stale one (its store may trail the origin's
    // answer by a moment; every answer from here on is "v2").
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = fetch(&c.client, "GET", &url, &[]).await;
        if r.text() == "v2" {
            break;
        }
        assert!(Instant::now() < deadline, "refreshed response never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asked = origin.count("/swr");
    let r = fetch(&c.client, "GET", &url, &[]).await;
    assert_eq!(r.text(), "v2");
    assert_eq!(origin.count("/swr"), asked, "v2 is fresh: a hit");
}

#[tokio::test]
async fn stale_if_error_serves_stale_when_the_origin_fails() {
    let failing = Arc::new(AtomicBool::new(false));
    let f = failing.clone();
    let origin = Origin::start(Arc::new(move |s: &Seen| {
        if f.load(Ordering::SeqCst) {
            return response(500, &[], "broken");
        }
        let cc = if s.uri == "/sie" {
            "max-age=1, stale-if-error=600"
        } else {
            "max-age=1"
        };
        response(200, &[("Cache-Control", cc), ("Age", "30")], "good")
    }))
    .await;
    let c = Cached::start();
    let (sie, plain) = (origin.url("/sie"), origin.url("/plain"));
    c.get(&sie, &[]).await;
    c.get(&plain, &[]).await;
    failing.store(true, Ordering::SeqCst);
    let r = c.get(&sie, &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "good"));
    assert_eq!(origin.count("/sie"), 2, "the origin was asked first");
    let r = c.get(&plain, &[]).await;
    assert_eq!(r.status, 500, "no stale-if-error: the error goes through");
}

#[tokio::test]
async fn stale_if_error_covers_an_origin_that_closes() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    let addr = raw_origin(move |mut s| {
        let n = a.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if !read_head(&mut s).await || n > 1 {
                return; // every later connection is closed without an answer
            }
            let resp = "HTTP/1.1 200 OK\r\nCache-Control: max-age=1, stale-if-error=600\r\n\
                        Age: 30\r\nContent-Length: 4\r\nConnection: close\r\n\r\ngood";
            let _ = s.write_all(resp.as_bytes()).await;
        }
    })
    .await;
    let c = Cached::start();
    let url = format!("http://{addr}/closing");
    assert_eq!(c.get(&url, &[]).await.text(), "good");
    let r = c.get(&url, &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "good"));
    assert!(accepted.load(Ordering::SeqCst) >= 2, "the origin was tried");
}
