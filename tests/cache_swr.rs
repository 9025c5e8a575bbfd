//! stale-while-revalidate (RFC 5861 section 3) in the background, on a reverse route and the
//! forward proxy: the stale response is sent at once while the origin holds the
//! revalidation; one revalidation per key however many stale hits; at most
//! `background_refreshes` at once; the refreshed response answers the next requests; a
//! refresh in flight at SIGTERM is drained, not dropped. Real binary, a hyper origin on
//! loopback whose revalidations wait at a gate the test opens, reqwest clients.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// An origin whose first answer per path is stale at once (`Age: 30` over `max-age=1`) with
/// a 600 s stale-while-revalidate window and `ETag: "v1"`; every later request is recorded
/// when it arrives, then waits for a permit of `gate` and gets a fresh `v2`.
/// (path, If-None-Match) of every request, in arrival order.
type Log = Arc<Mutex<Vec<(String, Option<String>)>>>;

struct GatedOrigin {
    addr: SocketAddr,
    gate: Arc<Semaphore>,
    seen: Log,
}

impl GatedOrigin {
    async fn start() -> GatedOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let gate = Arc::new(Semaphore::new(0));
        let seen: Log = Arc::default();
        let (g, s) = (gate.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (g, s) = (g.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (g, s) = (g.clone(), s.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            let inm = req
                                .headers()
                                .get("if-none-match")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            let first = {
                                let mut v = s.lock().expect("lock");
                                v.push((path.clone(), inm));
                                v.iter().filter(|(p, _)| *p == path).count() == 1
                            };
                            let resp = if first {
                                response(
                                    200,
                                    &[
                                        ("Cache-Control", "max-age=1, stale-while-revalidate=600"),
                                        ("Age", "30"),
                                        ("ETag", "\"v1\""),
                                    ],
                                    "v1",
                                )
                            } else {
                                if let Ok(p) = g.acquire().await {
                                    p.forget();
                                }
                                response(
                                    200,
                                    &[("Cache-Control", "max-age=600"), ("ETag", "\"v2\"")],
                                    "v2",
                                )
                            };
                            Ok::<Response<Full<Bytes>>, Infallible>(resp)
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        GatedOrigin { addr, gate, seen }
    }

    fn count(&self, path: &str) -> usize {
        let v = self.seen.lock().expect("lock");
        v.iter().filter(|(p, _)| p == path).count()
    }

    fn validators(&self, path: &str) -> Vec<Option<String>> {
        let v = self.seen.lock().expect("lock");
        v.iter()
            .filter(|(p, _)| p == path)
            .map(|(_, i)| i.clone())
            .collect()
    }

    /// Waits (bounded) until the origin has seen `n` requests for `path`.
    async fn wait_count(&self, path: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.count(path) < n {
            assert!(
                Instant::now() < deadline,
                "{path}: origin saw {n} requests never"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Where the test's requests go: a reverse listener's route, or the forward proxy.
struct Front {
    client: reqwest::Client,
    base: String,
}

impl Front {
    /// The reverse listener `rev` (host `app.test`) in front of `origin`.
    fn reverse(gh: &Gatehouse) -> Front {
        let addr = gh.addr("rev");
        let client = reqwest::Client::builder()
            .no_proxy()
            .resolve("app.test", addr)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        Front {
            client,
            base: format!("http://app.test:{}", addr.port()),
        }
    }

    /// The forward listener `fwd`, to `origin` directly.
    fn forward(gh: &Gatehouse, origin: SocketAddr) -> Front {
        Front {
            client: proxied_client(gh, "fwd"),
            base: format!("http://{origin}"),
        }
    }

    /// GET `path`, answered within 5 s (a refresh held at the origin must not delay it).
    async fn get(&self, path: &str) -> Fetched {
        let url = format!("{}{path}", self.base);
        tokio::time::timeout(
            Duration::from_secs(5),
            fetch(&self.client, "GET", &url, &[]),
        )
        .await
        .unwrap_or_else(|_| panic!("{url}: not answered while the refresh waits"))
    }
}

fn config(origin: SocketAddr, extra: &str) -> String {
    format!(
        "{}[[listeners]]\nname = \"rev\"\nkind = \"reverse\"\nlisten = \"127.0.0.1:0\"\n\
         [[listeners.hosts]]\nnames = [\"app.test\"]\n[[listeners.hosts.routes]]\npool = \"p\"\n\
         cache = true\n[[pools]]\nname = \"p\"\n[[pools.servers]]\naddress = \"{origin}\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[cache]\n{extra}\n",
        http_listener("fwd", "cache = true"),
    )
}

async fn revalidations(gh: &Gatehouse) -> f64 {
    metric(gh.addr("admin"), "gatehouse_cache_revalidations_total")
        .await
        .unwrap_or(-1.0)
}

/// Stale hits answered at once, one revalidation, the refreshed body next.
async fn refreshed_in_background(front: impl Fn(&Gatehouse, SocketAddr) -> Front) {
    let origin = GatedOrigin::start().await;
    let gh = Gatehouse::start(&config(origin.addr, "memory_size = \"8MiB\""));
    let f = front(&gh, origin.addr);
    let r = f.get("/swr").await;
    assert_eq!(r.text(), "v1");
    // Five stale hits at once while the origin holds the revalidation: all answered from
    // the cache, stale, with their age.
    let p = "/swr";
    let (a, b, c, d, e) = tokio::join!(f.get(p), f.get(p), f.get(p), f.get(p), f.get(p));
    for r in [&a, &b, &c, &d, &e] {
        assert_eq!((r.status, r.text().as_str()), (200, "v1"));
        let status = r.cache_status().unwrap_or_default();
        assert!(status.contains("stale-while-revalidate"), "{status}");
        let age: u64 = r.header("age").and_then(|a| a.parse().ok()).unwrap_or(0);
        assert!(age >= 30, "Age {age}");
        assert!(r.header("warning").is_none());
    }
    origin.wait_count("/swr", 2).await;
    assert_eq!(
        revalidations(&gh).await,
        1.0,
        "one refresh for five stale hits"
    );
    assert_eq!(
        origin.validators("/swr"),
        [None, Some("\"v1\"".to_string())],
        "one conditional request"
    );
    // The origin answers; the refreshed response replaces the stale one (its store may
    // trail the origin's answer by a moment).
    origin.gate.add_permits(100);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = f.get("/swr").await;
        if r.text() == "v2" {
            let status = r.cache_status().unwrap_or_default();
            assert!(
                status.contains("hit") && !status.contains("stale"),
                "{status}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "refreshed response never served");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        origin.count("/swr"),
        2,
        "no other request reached the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_route_refreshes_in_the_background() {
    refreshed_in_background(|gh, _| Front::reverse(gh)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_proxy_refreshes_in_the_background() {
    refreshed_in_background(Front::forward).await;
}

/// `background_refreshes = 1`: a second key's stale hit is served but starts nothing
/// while the first refresh runs; once it has ended, the next stale hit starts one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_refreshes_are_bounded() {
    let origin = GatedOrigin::start().await;
    let gh = Gatehouse::start(&config(
        origin.addr,
        "memory_size = \"8MiB\"\nbackground_refreshes = 1",
    ));
    let f = Front::reverse(&gh);
    for p in ["/a", "/b"] {
        assert_eq!(f.get(p).await.text(), "v1");
    }
    assert_eq!(f.get("/a").await.text(), "v1");
    origin.wait_count("/a", 2).await;
    assert_eq!(
        f.get("/b").await.text(),
        "v1",
        "served stale, not refreshed"
    );
    assert_eq!(revalidations(&gh).await, 1.0, "the bound: one at once");
    origin.gate.add_permits(100);
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.get("/a").await.text() != "v2" {
        assert!(Instant::now() < deadline, "/a never refreshed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(origin.count("/b"), 1, "/b's stale hit started nothing");
    // The slot is free again (released when /a's refresh ended, which may trail its store).
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.get("/b").await.text() != "v2" {
        assert!(Instant::now() < deadline, "/b never refreshed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((origin.count("/a"), origin.count("/b")), (2, 2));
}

/// A refresh in flight when SIGTERM comes is waited for: its result reaches the disk tier,
/// where the next start finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_in_flight_is_drained_at_shutdown() {
    let origin = GatedOrigin::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = format!(
        "{}[shutdown]\ndrain_timeout = \"20s\"\n",
        config(
            origin.addr,
            &format!(
                "memory_size = 0\ndisk_dir = \"{}\"\ndisk_size = \"8MiB\"\nmax_object_size = \"1MiB\"",
                dir.path().display()
            ),
        )
    );
    let mut gh = Gatehouse::start(&cfg);
    let f = Front::forward(&gh, origin.addr);
    assert_eq!(f.get("/d").await.text(), "v1");
    assert_eq!(f.get("/d").await.text(), "v1");
    origin.wait_count("/d", 2).await;
    gh.signal("TERM");
    // Draining: the listener closes, the refresh still waits at the origin.
    let proxy = gh.addr("fwd");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(proxy).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        gh.child.try_wait().expect("try_wait").is_none(),
        "exited with a refresh in flight"
    );
    origin.gate.add_permits(100);
    let status = gh
        .wait_exit(Duration::from_secs(15))
        .expect("exits once drained");
    assert!(status.success(), "{status:?}");
    drop(gh);
    // The refreshed response was stored before the exit: fresh from disk, no origin request.
    let gh = Gatehouse::start(&cfg);
    let f = Front::forward(&gh, origin.addr);
    let r = f.get("/d").await;
    assert_eq!(r.text(), "v2", "{:?}", r.cache_status());
    assert_eq!(origin.count("/d"), 2);
}

/// A refresh that fails (a 503, no `stale-if-error` needed while stale-while-revalidate
/// lasts) leaves the stored response as it was and frees the key: a later stale hit is
/// still served the stored body and starts the next refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_keeps_the_stale_response() {
    let origin = numbered(|_, n| {
        if n == 1 {
            response(
                200,
                &[
                    ("Cache-Control", "max-age=1, stale-while-revalidate=600"),
                    ("Age", "30"),
                    ("ETag", "\"v1\""),
                ],
                "v1",
            )
        } else {
            response(503, &[], "down")
        }
    })
    .await;
    let gh = Gatehouse::start(&config(origin.addr, "memory_size = \"8MiB\""));
    let f = Front::reverse(&gh);
    assert_eq!(f.get("/e").await.text(), "v1");
    let deadline = Instant::now() + Duration::from_secs(10);
    // Each stale hit is answered "v1"; the refreshes fail one after another.
    while origin.count("/e") < 3 {
        let r = f.get("/e").await;
        assert_eq!((r.status, r.text().as_str()), (200, "v1"));
        assert!(
            Instant::now() < deadline,
            "no second refresh after the first failed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
