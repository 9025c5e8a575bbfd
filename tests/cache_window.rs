//! End-to-end: the cache's store window. Between the end of a response and the end of its
//! store (a disk write takes 10-50 ms) a request for the same URL must get exactly what it
//! would get from a stored hit or from the origin: a collapsed follower passes the same reuse
//! rules as a hit, the entry is visible at once whichever tier holds it, and an invalidation
//! wins over every store that started before it. Each case runs against the memory tier
//! only, the disk tier only, and both.
//!
//! The windows are made deterministic with an origin that stalls a body until the test
//! releases it (the flight stays open as long as the test wants), and with an object large
//! enough that its disk write outlasts a client's next request.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use common::*;

const TIERS: [&str; 3] = ["memory", "disk", "both"];
const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

fn config(tier: &str, dir: &Path, max_object: &str) -> String {
    let memory = if tier == "disk" { "0" } else { "\"64MiB\"" };
    let disk = if tier == "memory" {
        String::new()
    } else {
        format!("disk_dir = \"{}\"\ndisk_size = \"1GiB\"\n", dir.display())
    };
    format!(
        "{}[cache]\nenabled = true\nmemory_size = {memory}\nmax_object_size = \"{max_object}\"\n\
         {disk}{ADMIN}",
        http_listener("http", "cache = true")
    )
}

/// The body of the stalled response.
fn stalled_body() -> bytes::Bytes {
    pattern(7, 64 * 1024)
}

/// An origin whose first GET gets a fresh (max-age=600) response whose body stops halfway
/// until [`Stalled::release`]; every later GET gets an unstorable `from origin`, and any
/// other method a 204.
struct Stalled {
    addr: SocketAddr,
    gets: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
}

impl Stalled {
    async fn start() -> Stalled {
        let gets = Arc::new(AtomicUsize::new(0));
        let (release, rx) = watch::channel(false);
        let g = gets.clone();
        let addr = raw_origin(move |mut s: TcpStream| {
            let (g, mut rx) = (g.clone(), rx.clone());
            async move {
                let Some((head, _)) = read_response_or_request_head(&mut s).await else {
                    return;
                };
                if !head.starts_with("GET ") {
                    let _ = s
                        .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                        .await;
                    return;
                }
                if g.fetch_add(1, Ordering::SeqCst) > 0 {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n\
                              Content-Length: 11\r\nConnection: close\r\n\r\nfrom origin",
                        )
                        .await;
                    return;
                }
                let body = stalled_body();
                let half = body.len() / 2;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nETag: \"a\"\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                if s.write_all(head.as_bytes()).await.is_err()
                    || s.write_all(&body[..half]).await.is_err()
                {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|r| *r)).await;
                let _ = s.write_all(&body[half..]).await;
            }
        })
        .await;
        Stalled {
            addr,
            gets,
            release,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn release(&self) {
        self.release.send_replace(true);
    }

    fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }
}

/// Reads a head (request or response, up to 64 KiB); returns it and the bytes after it.
async fn read_response_or_request_head(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        match tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// One response read from a raw client connection.
struct Answer {
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn status(&self) -> u16 {
        self.head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends `method url` with extra header lines (each ending in CRLF) through the proxy.
async fn send(proxy: SocketAddr, method: &str, url: &str, extra: &str) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.expect("connect proxy");
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("");
    let req =
        format!("{method} {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).await.expect("send request");
    s
}

async fn head(s: &mut TcpStream) -> (String, Vec<u8>) {
    read_response_or_request_head(s)
        .await
        .expect("a response head")
}

/// Reads the rest of a Content-Length body (no body for HEAD).
async fn answer(s: &mut TcpStream, method: &str) -> Answer {
    let (head, mut body) = head(s).await;
    let mut a = Answer { head, body: vec![] };
    let len: usize = a
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let len = if method == "HEAD" { 0 } else { len };
    let mut chunk = vec![0u8; 64 * 1024];
    while body.len() < len {
        match tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => body.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    a.body = body;
    a
}

/// Reads the stalled body's remainder after the head (which brought `got`).
async fn rest_of_body(s: &mut TcpStream, mut got: Vec<u8>) -> Vec<u8> {
    let mut chunk = vec![0u8; 64 * 1024];
    while got.len() < stalled_body().len() {
        match tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    got
}

/// Waits (bounded) until the admin counter `name` reaches `at_least`.
async fn wait_metric(admin: SocketAddr, name: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(admin, name).await.unwrap_or(0.0) < at_least {
        assert!(Instant::now() < deadline, "{name} never reached {at_least}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_follower_is_held_to_the_reuse_rules_of_a_hit() {
    for tier in TIERS {
        let origin = Stalled::start().await;
        let dir = tempfile::tempdir().expect("tmp");
        let gh = Gatehouse::start(&config(tier, dir.path(), "8MiB"));
        let (proxy, admin) = (gh.addr("http"), gh.addr("admin"));
        let url = origin.url("/obj");
        // The leader: its head is in, its body stalls, so its flight stays open.
        let mut leader = send(proxy, "GET", &url, "").await;
        let (h, got) = head(&mut leader).await;
        assert!(h.starts_with("HTTP/1.1 200"), "{tier}: {h}");
        // Requests whose own directives refuse the response go upstream, as they would
        // with a stored response.
        for extra in [
            "Cache-Control: no-cache\r\n",
            "Pragma: no-cache\r\n",
            "Cache-Control: min-fresh=100000\r\n",
        ] {
            let mut c = send(proxy, "GET", &url, extra).await;
            let a = answer(&mut c, "GET").await;
            let status = a.header("cache-status").unwrap_or("").to_string();
            assert!(!status.contains("collapsed"), "{tier} {extra}: {}", a.head);
            assert_eq!(a.body, b"from origin", "{tier} {extra}: {}", a.head);
        }
        assert_eq!(
            origin.gets(),
            4,
            "{tier}: each refusing request asked the origin"
        );
        // A plain request takes the shared response as it arrives, with its Age (it was
        // not generated for this request: section 5.1).
        let mut plain = send(proxy, "GET", &url, "").await;
        let (h, plain_got) = head(&mut plain).await;
        let shared = Answer {
            head: h,
            body: vec![],
        };
        let status = shared.header("cache-status").unwrap_or("");
        assert!(status.contains("collapsed"), "{tier}: {}", shared.head);
        assert!(shared.header("age").is_some(), "{tier}: {}", shared.head);
        // A range request that joins the flight is answered 206 from the complete body.
        const JOINED: &str = "gatehouse_cache_collapsed_total";
        let before = metric(admin, JOINED).await.expect("collapsed counter");
        let mut ranged = send(proxy, "GET", &url, "Range: bytes=0-3\r\n").await;
        wait_metric(admin, JOINED, before + 1.0).await;
        origin.release();
        let a = answer(&mut ranged, "GET").await;
        assert_eq!(a.status(), 206, "{tier}: {}", a.head);
        assert_eq!(a.header("content-range"), Some("bytes 0-3/65536"), "{tier}");
        assert_eq!(a.body, stalled_body()[..4], "{tier}");
        assert!(a.header("age").is_some(), "{tier}: {}", a.head);
        // The leader's own response is whole, and so is the plain follower's.
        assert!(
            rest_of_body(&mut leader, got).await == stalled_body(),
            "{tier}"
        );
        let body = rest_of_body(&mut plain, plain_got).await;
        assert!(body == stalled_body(), "{tier}: follower body");
        assert_eq!(origin.gets(), 4, "{tier}");
    }
}

#[tokio::test]
async fn an_invalidation_wins_over_a_response_still_on_its_way() {
    for tier in TIERS {
        let origin = Stalled::start().await;
        let dir = tempfile::tempdir().expect("tmp");
        let gh = Gatehouse::start(&config(tier, dir.path(), "8MiB"));
        let proxy = gh.addr("http");
        let url = origin.url("/obj");
        let mut leader = send(proxy, "GET", &url, "").await;
        let (h, got) = head(&mut leader).await;
        assert!(h.starts_with("HTTP/1.1 200"), "{tier}: {h}");
        // A POST to the URL completes while the GET's body is still arriving.
        let mut post = send(proxy, "POST", &url, "Content-Length: 0\r\n").await;
        assert_eq!(answer(&mut post, "POST").await.status(), 204, "{tier}");
        // A GET after the POST does not join the flight started before it.
        let mut c = send(proxy, "GET", &url, "").await;
        let a = answer(&mut c, "GET").await;
        assert_eq!(a.body, b"from origin", "{tier}: {}", a.head);
        origin.release();
        assert!(
            rest_of_body(&mut leader, got).await == stalled_body(),
            "{tier}"
        );
        gh.wait_log(&format!(" GET {url} "));
        // The GET's response was fetched before the invalidation: it must not be reused.
        let mut after = send(proxy, "GET", &url, "").await;
        let a = answer(&mut after, "GET").await;
        assert_eq!(a.body, b"from origin", "{tier}: {}", a.head);
        assert_eq!(origin.gets(), 3, "{tier}");
    }
}

const BIG: usize = 24 << 20;

#[tokio::test]
async fn a_large_object_is_visible_and_invalidable_while_its_disk_write_runs() {
    for tier in TIERS {
        let origin = Origin::start(Arc::new(|s: &Seen| {
            if s.method == "GET" || s.method == "HEAD" {
                response(200, &[("Cache-Control", "max-age=600")], pattern(3, BIG))
            } else {
                response(204, &[], "")
            }
        }))
        .await;
        let dir = tempfile::tempdir().expect("tmp");
        let gh = Gatehouse::start(&config(tier, dir.path(), "32MiB"));
        let proxy = gh.addr("http");
        // Right after the whole body arrived (the store is still writing it to disk), a
        // HEAD is answered from the cache: the entry is visible at once.
        let url = origin.url("/big");
        let mut c = send(proxy, "GET", &url, "").await;
        let got = answer(&mut c, "GET").await;
        let mut c = send(proxy, "HEAD", &url, "").await;
        let a = answer(&mut c, "HEAD").await;
        assert!(got.body == pattern(3, BIG), "{tier}: body");
        assert_eq!(a.status(), 200, "{tier}");
        let status = a.header("cache-status").unwrap_or("");
        assert!(status.contains("hit"), "{tier}: {}", a.head);
        assert_eq!(
            origin.count("/big"),
            1,
            "{tier}: the origin was not asked again"
        );
        gh.wait_log(&format!(" GET {url} "));
        // A DELETE right after a response (while it is still being written) wins.
        let url = origin.url("/big2");
        let mut c = send(proxy, "GET", &url, "").await;
        assert_eq!(answer(&mut c, "GET").await.status(), 200);
        let mut c = send(proxy, "DELETE", &url, "").await;
        assert_eq!(answer(&mut c, "DELETE").await.status(), 204, "{tier}");
        gh.wait_log(&format!(" GET {url} "));
        let mut c = send(proxy, "GET", &url, "").await;
        let a = answer(&mut c, "GET").await;
        assert_eq!(a.status(), 200, "{tier}");
        let status = a.header("cache-status").unwrap_or("");
        assert!(status.contains("fwd=uri-miss"), "{tier}: {}", a.head);
        let gets = origin
            .seen_for("/big2")
            .iter()
            .filter(|s| s.method == "GET")
            .count();
        assert_eq!(gets, 2, "{tier}: the DELETE invalidated the stored GET");
    }
}
