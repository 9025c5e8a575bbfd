//! End-to-end: RFC 9111 details of the cache through the forward proxy: a list-based Age
//! (5.1), a 304 without validators (4.3.4), a HEAD response freshening the stored GET
//! (4.3.5), a 304's header update without framing fields (3.2), and a stale response when
//! the origin cannot be reached (4.2.4, configurable). Responses that must be stale on
//! arrival say so with `Age`, so nothing waits for a clock.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use common::*;

/// A raw origin: `answer(method, path, n)` (n counts requests per path from 1) gives the
/// whole response, or `None` to close the connection without one. One request per
/// connection. Returns the address and the requests seen as `METHOD path` lines.
async fn scripted(
    answer: impl Fn(&str, &str, usize) -> Option<String> + Send + Sync + 'static,
) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let counts = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let answer = Arc::new(answer);
    let s2 = seen.clone();
    let addr = raw_origin(move |mut s| {
        let (seen, counts, answer) = (s2.clone(), counts.clone(), answer.clone());
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                use tokio::io::AsyncReadExt;
                match s.read(&mut chunk).await {
                    Ok(n) if n > 0 && buf.len() < 65536 => buf.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            }
            let text = String::from_utf8_lossy(&buf).into_owned();
            let mut words = text.split_whitespace();
            let method = words.next().unwrap_or("").to_string();
            let path = words.next().unwrap_or("").to_string();
            let n = {
                let mut c = counts.lock().expect("counts");
                let e = c.entry(path.clone()).or_insert(0);
                *e += 1;
                *e
            };
            seen.lock()
                .expect("seen")
                .push(format!("{method} {path}\n{text}"));
            if let Some(resp) = answer(&method, &path, n) {
                let _ = s.write_all(resp.as_bytes()).await;
            }
        }
    })
    .await;
    (addr, seen)
}

fn count(seen: &Arc<Mutex<Vec<String>>>, what: &str) -> usize {
    let needle = format!("{what}\n");
    seen.lock()
        .expect("seen")
        .iter()
        .filter(|l| l.starts_with(&needle))
        .count()
}

fn ok(headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn a_list_based_age_counts_its_first_member() {
    let origin = Origin::start(Arc::new(|_: &Seen| {
        response(
            200,
            &[("Cache-Control", "max-age=3600"), ("Age", "7200, 0")],
            "old",
        )
    }))
    .await;
    let c = Cached::start();
    let url = origin.url("/age");
    c.get(&url, &[]).await;
    let (r, word) = c.send("GET", &url, &[]).await;
    assert_eq!(r.text(), "old");
    assert_ne!(
        word, "hit",
        "Age 7200 is past max-age=3600: stale on arrival"
    );
    assert_eq!(origin.count("/age"), 2);
}

#[tokio::test]
async fn a_304_without_validators_freshens_the_one_response_it_answers() {
    let origin = numbered(|_, n| match n {
        1 => response(
            200,
            &[
                ("Cache-Control", "max-age=1"),
                ("Age", "30"),
                ("ETag", "\"v1\""),
            ],
            "one",
        ),
        2 => response(304, &[("Cache-Control", "max-age=600")], ""),
        _ => response(200, &[("Cache-Control", "max-age=600")], "other"),
    })
    .await;
    let c = Cached::start();
    let url = origin.url("/nv");
    c.get(&url, &[]).await;
    let (r, word) = c.send("GET", &url, &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "one"));
    assert_eq!(word, "revalidated");
    let seen = origin.seen_for("/nv");
    assert_eq!(seen.len(), 2, "no unconditional repeat");
    assert_eq!(
        seen[1].headers.get("if-none-match").map(|v| v.as_bytes()),
        Some(&b"\"v1\""[..])
    );
    let (r, word) = c.send("GET", &url, &[]).await;
    assert_eq!((r.text().as_str(), word.as_str()), ("one", "hit"));
    assert_eq!(origin.count("/nv"), 2);
}

#[tokio::test]
async fn a_304_updates_stored_fields_but_not_the_framing_ones() {
    let (addr, seen) = scripted(|_, _, n| {
        Some(match n {
            1 => ok(
                "Cache-Control: max-age=1\r\nAge: 30\r\nETag: \"v1\"\r\nX-Version: 1\r\n",
                "hello",
            ),
            _ => "HTTP/1.1 304 Not Modified\r\nCache-Control: max-age=600\r\nETag: \"v1\"\r\n\
                  X-Version: 2\r\nContent-Length: 0\r\nContent-Encoding: gzip\r\n\
                  Connection: close\r\n\r\n"
                .to_string(),
        })
    })
    .await;
    let c = Cached::start();
    let url = format!("http://{addr}/merge");
    c.get(&url, &[]).await;
    let r = c.get(&url, &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    let (r, word) = c.send("GET", &url, &[]).await;
    assert_eq!(word, "hit");
    assert_eq!(r.text(), "hello");
    assert_eq!(r.header("x-version"), Some("2"), "updated from the 304");
    assert_eq!(r.header("content-length"), Some("5"), "framing kept");
    assert_eq!(r.header("content-encoding"), None, "the body's coding kept");
    assert_eq!(count(&seen, "GET /merge"), 2);
}

#[tokio::test]
async fn a_head_response_freshens_or_retires_the_stored_get() {
    let (addr, seen) = scripted(|method, path, _| {
        Some(match (method, path) {
            ("GET", _) => ok(
                "Cache-Control: max-age=1\r\nAge: 30\r\nETag: \"v1\"\r\nX-Version: 1\r\n",
                "body",
            ),
            ("HEAD", "/same") => {
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nETag: \"v1\"\r\n\
                                  X-Version: 2\r\nContent-Length: 4\r\nConnection: close\r\n\r\n"
                    .to_string()
            }
            _ => "HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nETag: \"v2\"\r\n\
                  Content-Length: 9\r\nConnection: close\r\n\r\n"
                .to_string(),
        })
    })
    .await;
    let c = Cached::start();
    // Same validators and length: the stored GET takes the HEAD's fields and is fresh.
    let url = format!("http://{addr}/same");
    c.get(&url, &[]).await;
    let (h, _) = c.send("HEAD", &url, &[]).await;
    assert_eq!(h.status, 200);
    let (r, word) = c.send("GET", &url, &[]).await;
    assert_eq!((r.text().as_str(), word.as_str()), ("body", "hit"));
    assert_eq!(r.header("x-version"), Some("2"));
    assert_eq!(count(&seen, "GET /same"), 1);
    // A different ETag: the stored GET is not reused.
    let url = format!("http://{addr}/changed");
    c.get(&url, &[]).await;
    c.send("HEAD", &url, &[]).await;
    let (r, word) = c.send("GET", &url, &[]).await;
    assert_eq!(r.text(), "body");
    assert_ne!(word, "hit");
    assert_eq!(count(&seen, "GET /changed"), 2);
}

fn stale_config(on: bool) -> String {
    format!(
        "{}[cache]\nenabled = true\nmemory_size = \"16MiB\"\nstale_if_unreachable = {on}\n",
        http_listener("http", "cache = true")
    )
}

/// An origin that answers the first request per path with a response stale on arrival
/// (with `cc` added), and closes every later connection without a word.
async fn closing_after_one() -> std::net::SocketAddr {
    scripted(|_, path, n| {
        let cc = if path == "/mr" {
            ", must-revalidate"
        } else {
            ""
        };
        (n == 1).then(|| {
            ok(
                &format!("Cache-Control: max-age=1{cc}\r\nAge: 30\r\n"),
                "good",
            )
        })
    })
    .await
    .0
}

#[tokio::test]
async fn a_stale_response_is_served_when_the_origin_is_unreachable_if_configured() {
    let addr = closing_after_one().await;
    let gh = Gatehouse::start(&stale_config(true));
    let client = proxied_client(&gh, "http");
    let url = |p: &str| format!("http://{addr}{p}");
    for p in ["/ok", "/mr", "/nc"] {
        assert_eq!(fetch(&client, "GET", &url(p), &[]).await.text(), "good");
    }
    // The origin closes the connection: the stale response is served, and says so.
    let r = fetch(&client, "GET", &url("/ok"), &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "good"));
    let status = r.cache_status().unwrap_or_default().to_string();
    assert!(
        status.contains("hit") && status.contains("origin-unreachable"),
        "{status}"
    );
    assert!(r.header("warning").is_none());
    // must-revalidate forbids it; so does a client's no-cache.
    assert_eq!(fetch(&client, "GET", &url("/mr"), &[]).await.status, 502);
    let r = fetch(
        &client,
        "GET",
        &url("/nc"),
        &[("Cache-Control", "no-cache")],
    )
    .await;
    assert_eq!(r.status, 502);

    // The origin is gone (connection refused).
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gone = listener.local_addr().expect("addr");
    let serve = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        read_head(&mut s).await;
        let resp = ok("Cache-Control: max-age=1\r\nAge: 30\r\n", "kept");
        s.write_all(resp.as_bytes()).await.expect("answer");
        // The listener is dropped here: later connects are refused.
    });
    let gone_url = format!("http://{gone}/x");
    assert_eq!(fetch(&client, "GET", &gone_url, &[]).await.text(), "kept");
    serve.await.expect("served once");
    let r = fetch(&client, "GET", &gone_url, &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "kept"));

    // Off (the default): the error goes through.
    let gh = Gatehouse::start(&stale_config(false));
    let client = proxied_client(&gh, "http");
    let addr = closing_after_one().await;
    let off = format!("http://{addr}/ok");
    assert_eq!(fetch(&client, "GET", &off, &[]).await.text(), "good");
    assert_eq!(fetch(&client, "GET", &off, &[]).await.status, 502);
}
