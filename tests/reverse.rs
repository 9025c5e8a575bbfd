//! The reverse proxy end to end: the real binary, origins on loopback (hyper, or raw sockets
//! for misbehaving ones), clients curl, reqwest, raw sockets and a WebSocket library.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A `[[pools]]` entry over `servers`, plus extra keys (put before the servers).
fn pool(name: &str, servers: &[SocketAddr], extra: &str) -> String {
    let mut s = format!("[[pools]]\nname = \"{name}\"\n{extra}\n");
    for a in servers {
        s.push_str(&format!("[[pools.servers]]\naddress = \"{a}\"\n"));
    }
    s
}

/// A reverse listener named `rev` with `extra` keys, then its virtual hosts.
fn listener(extra: &str, hosts: &str) -> String {
    format!(
        "[[listeners]]\nname = \"rev\"\nkind = \"reverse\"\nlisten = \"127.0.0.1:0\"\n{extra}\n{hosts}\n"
    )
}

/// One virtual host with one `/` route to `pool`.
fn vhost(names: &str, pool: &str) -> String {
    format!(
        "[[listeners.hosts]]\nnames = [{names}]\n[[listeners.hosts.routes]]\npool = \"{pool}\"\n"
    )
}

/// A dead address: bound, then closed (connects are refused).
async fn dead_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let a = l.local_addr().expect("addr");
    drop(l);
    a
}

/// Sends raw bytes, returns everything until the proxy closes (bounded).
async fn raw(gh: &Gatehouse, req: &[u8]) -> String {
    let mut s = TcpStream::connect(gh.addr("rev")).await.expect("connect");
    s.write_all(req).await.expect("write");
    let out = tokio::time::timeout(Duration::from_secs(10), read_to_close(&mut s))
        .await
        .expect("closed in time");
    String::from_utf8_lossy(&out).into_owned()
}

async fn get(gh: &Gatehouse, host: &str, path: &str) -> String {
    raw(
        gh,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
}

fn status(resp: &str) -> u16 {
    resp.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// A header's value in a raw response (first match, case-insensitive name).
fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    let head = resp.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn virtual_hosts_and_paths_route_to_pools() {
    let a = Origin::fixed("from-a").await;
    let b = Origin::fixed("from-b").await;
    let hosts = r#"
[[listeners.hosts]]
names = ["app.test"]
[[listeners.hosts.routes]]
path = "/api"
pool = "b"
strip_prefix = "/api"
replace_prefix = "/v2"
[[listeners.hosts.routes]]
pool = "a"
[[listeners.hosts]]
names = ["*.other.test"]
[[listeners.hosts.routes]]
methods = ["POST"]
pool = "a"
[[listeners.hosts.routes]]
pool = "b"
"#;
    let gh = Gatehouse::start(&format!(
        "{}{}{}",
        listener("", hosts),
        pool("a", &[a.addr], ""),
        pool("b", &[b.addr], "")
    ));
    let port = gh.addr("rev").port();
    // curl as a browser would reach the names: --resolve, origin-form, Host from the URL.
    let resolve = [
        format!("app.test:{port}:127.0.0.1"),
        format!("x.other.test:{port}:127.0.0.1"),
    ];
    let fetch = |url: String, extra: Vec<&'static str>| {
        let resolve = resolve.clone();
        async move {
            let mut args = vec!["--resolve", &resolve[0], "--resolve", &resolve[1]];
            args.extend(extra);
            args.push(&url);
            let (code, out, err) = curl(&args).await;
            assert_eq!(code, 0, "{err}");
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    assert_eq!(
        fetch(format!("http://app.test:{port}/"), vec![]).await,
        "from-a"
    );
    assert_eq!(
        fetch(format!("http://app.test:{port}/api/users?x=1"), vec![]).await,
        "from-b"
    );
    assert_eq!(
        b.seen()[0].uri,
        "/v2/users?x=1",
        "prefix replaced, query kept"
    );
    assert_eq!(
        fetch(format!("http://app.test:{port}/apix"), vec![]).await,
        "from-a",
        "whole path segments"
    );
    assert_eq!(
        fetch(format!("http://x.other.test:{port}/"), vec![]).await,
        "from-b"
    );
    assert_eq!(
        fetch(format!("http://x.other.test:{port}/"), vec!["-X", "POST"]).await,
        "from-a"
    );
    // The Host the client sent goes up unchanged.
    let host = a.seen()[0].headers.get("host").cloned().expect("host");
    assert_eq!(host, format!("app.test:{port}").as_str());
}

#[tokio::test]
async fn unknown_host_is_404_from_gatehouse() {
    let a = Origin::fixed("a").await;
    let gh = Gatehouse::start(&format!(
        "{}{}",
        listener("", &vhost("\"app.test\"", "a")),
        pool("a", &[a.addr], "")
    ));
    let r = get(&gh, "elsewhere.test", "/").await;
    assert_eq!(status(&r), 404, "{r}");
    assert!(header(&r, "proxy-status").is_some(), "{r}");
    let r = raw(&gh, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(status(&r), 404, "no Host at all: {r}");
    assert!(a.seen().is_empty());
}

#[tokio::test]
async fn round_robin_spreads_requests_over_both_servers() {
    let a = Origin::fixed("a").await;
    let b = Origin::fixed("b").await;
    let gh = Gatehouse::start(&format!(
        "{}{}[admin]\nlisten = \"127.0.0.1:0\"\n",
        listener("", &vhost("\"app.test\"", "p")),
        pool("p", &[a.addr, b.addr], "algorithm = \"round-robin\"")
    ));
    // reqwest, keep-alive: the idle connections to the servers are reused.
    let client = reqwest::Client::new();
    let url = format!("http://{}/", gh.addr("rev"));
    let mut bodies = Vec::new();
    for _ in 0..10 {
        let r = client
            .get(&url)
            .header("host", "app.test")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        bodies.push(r.text().await.expect("body"));
    }
    let n_a = bodies.iter().filter(|b| *b == "a").count();
    assert_eq!((n_a, 10 - n_a), (5, 5), "{bodies:?}");
    assert!(
        a.connection_count() + b.connection_count() < 10,
        "upstream connections are reused"
    );
    // The pool's per-server counters see the requests and their bytes.
    let admin = gh.addr("admin");
    assert_eq!(
        metric(admin, "gatehouse_pool_server_connections_total").await,
        Some(10.0)
    );
    let mut bytes = 0.0;
    for _ in 0..100 {
        bytes = metric(admin, "gatehouse_pool_server_bytes_total")
            .await
            .unwrap_or(0.0);
        if bytes > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(bytes > 0.0, "per-server bytes counted");
}

#[tokio::test]
async fn a_refused_connect_goes_to_the_other_server() {
    let live = Origin::fixed("live").await;
    let dead = dead_addr().await;
    let gh = Gatehouse::start(&format!(
        "{}{}",
        listener("", &vhost("\"app.test\"", "p")),
        pool("p", &[dead, live.addr], "")
    ));
    for _ in 0..4 {
        let r = get(&gh, "app.test", "/").await;
        assert_eq!(status(&r), 200, "{r}");
        assert_eq!(body(&r), "live");
    }
    // POST too: nothing reached the dead server.
    let r = raw(
        &gh,
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert_eq!(status(&r), 200, "{r}");
}

/// A server that reads a request head and resets the connection; counts its requests.
async fn resetting_origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let addr = raw_origin(move |mut s| {
        let h = h.clone();
        async move {
            if read_head(&mut s).await {
                h.fetch_add(1, Ordering::SeqCst);
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            }
            drop(s);
        }
    })
    .await;
    (addr, hits)
}

#[tokio::test]
async fn a_reset_before_responding_goes_to_the_other_server_for_get_not_post() {
    let live = Origin::echo().await;
    let (bad, hits) = resetting_origin().await;
    // Passive ejection off: the resetting server stays in rotation.
    let gh = Gatehouse::start(&format!(
        "{}{}",
        listener("", &vhost("\"app.test\"", "p")),
        pool("p", &[bad, live.addr], "[pools.passive]\nmax_failures = 0")
    ));
    for _ in 0..4 {
        let r = get(&gh, "app.test", "/get").await;
        assert_eq!(status(&r), 200, "{r}");
    }
    assert!(hits.load(Ordering::SeqCst) >= 1, "the bad server was tried");
    assert_eq!(live.count("/get"), 4);
    // POST is not idempotent: one that reached the bad server is answered 502, not resent.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let r = raw(
            &gh,
            b"POST /post HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        )
        .await;
        statuses.push(status(&r));
    }
    statuses.sort();
    assert_eq!(statuses, [200, 502]);
    assert_eq!(
        live.count("/post"),
        1,
        "the failed POST never reached the other server"
    );
}

#[tokio::test]
async fn no_retry_once_response_bytes_went_to_the_client() {
    let live = Origin::fixed("live").await;
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let half = raw_origin(move |mut s| {
        let h = h.clone();
        async move {
            if read_head(&mut s).await {
                h.fetch_add(1, Ordering::SeqCst);
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
                    .await;
            }
        }
    })
    .await;
    let gh = Gatehouse::start(&format!(
        "{}{}",
        listener("", &vhost("\"app.test\"", "p")),
        pool("p", &[half, live.addr], "[pools.passive]\nmax_failures = 0")
    ));
    let mut broken = 0;
    for _ in 0..2 {
        let r = get(&gh, "app.test", "/").await;
        assert_eq!(status(&r), 200, "{r}");
        if body(&r) == "half" {
            broken += 1;
        } else {
            assert_eq!(body(&r), "live");
        }
    }
    assert_eq!(broken, 1, "the client saw the cut-off response");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        live.seen().len(),
        1,
        "the broken request was not sent again"
    );
}

#[tokio::test]
async fn server_identity_is_hidden_and_links_rewritten() {
    let origin = Origin::start(Arc::new(|s: &Seen| {
        let port = s
            .headers
            .get("x-port")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let loc = format!("http://127.0.0.1:{port}/login?next=/");
        let refresh = format!("3; url=http://127.0.0.1:{port}/later");
        response(
            302,
            &[
                ("Server", "Apache/2.4.1 (Unix)"),
                ("X-Powered-By", "PHP/5.1"),
                ("X-Runtime", "0.1"),
                ("Location", &loc),
                ("Refresh", &refresh),
                ("Content-Location", "http://elsewhere.test/x"),
            ],
            "",
        )
    }))
    .await;
    let port = origin.addr.port();
    let gh = Gatehouse::start(&format!(
        "{}{}",
        listener("", &vhost("\"app.test\"", "p")),
        pool("p", &[origin.addr], "")
    ));
    let r = raw(
        &gh,
        format!("GET / HTTP/1.1\r\nHost: app.test\r\nX-Port: {port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(status(&r), 302, "{r}");
    for hidden in ["server", "x-powered-by", "x-runtime"] {
        assert_eq!(header(&r, hidden), None, "{hidden}: {r}");
    }
    assert_eq!(header(&r, "location"), Some("http://app.test/login?next=/"));
    assert_eq!(header(&r, "refresh"), Some("3; url=http://app.test/later"));
    assert_eq!(
        header(&r, "content-location"),
        Some("http://elsewhere.test/x"),
        "links elsewhere stay"
    );
    assert_eq!(header(&r, "via"), None, "no Via unless configured");
}

#[tokio::test]
async fn forwarded_fields_trusted_and_untrusted() {
    let origin = Origin::fixed("ok").await;
    let config = |trusted: &str| {
        format!(
            "{}{}",
            listener(trusted, &vhost("\"app.test\"", "p")),
            pool("p", &[origin.addr], "")
        )
    };
    let req = b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 203.0.113.9\r\nForwarded: for=203.0.113.9\r\nX-Forwarded-Host: evil.test\r\nConnection: close\r\n\r\n";
    // Untrusted peer: its claims are replaced.
    let gh = Gatehouse::start(&config(""));
    assert_eq!(status(&raw(&gh, req).await), 200);
    let seen = origin.seen().pop().expect("request");
    let all = |n: &str| -> Vec<String> {
        seen.headers
            .get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(
        all("forwarded"),
        ["for=127.0.0.1;host=\"app.test\";proto=http"]
    );
    assert_eq!(all("x-forwarded-host"), ["app.test"]);
    assert_eq!(all("x-forwarded-proto"), ["http"]);
    drop(gh);
    // Trusted peer (a proxy in front): kept, this hop appended.
    let gh = Gatehouse::start(&config("trusted_proxies = [\"127.0.0.0/8\"]"));
    assert_eq!(status(&raw(&gh, req).await), 200);
    let seen = origin.seen().pop().expect("request");
    let all = |n: &str| -> Vec<String> {
        seen.headers
            .get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(all("x-forwarded-for"), ["203.0.113.9, 127.0.0.1"]);
    assert_eq!(
        all("forwarded"),
        [
            "for=203.0.113.9",
            "for=127.0.0.1;host=\"app.test\";proto=http"
        ]
    );
    assert_eq!(all("x-forwarded-host"), ["evil.test"]);
}

#[tokio::test]
async fn websocket_echo_through_the_reverse_proxy() {
    // A WebSocket echo server built with the same library.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let ws_addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let gh = Gatehouse::start(&format!(
        "{}{}",
        listener("", &vhost("\"app.test\"", "ws")),
        pool("ws", &[ws_addr], "")
    ));
    let tcp = TcpStream::connect(gh.addr("rev")).await.expect("connect");
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://app.test/chat", tcp)
        .await
        .expect("handshake through the proxy");
    assert_eq!(resp.status(), 101);
    for msg in ["hello", "second message"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg))
            .await
            .expect("send");
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo in time")
            .expect("a message")
            .expect("ok");
        assert_eq!(got.into_text().expect("text").as_str(), msg);
    }
}

#[tokio::test]
async fn smuggling_vectors_are_refused_like_the_forward_proxy() {
    let origin = Origin::echo().await;
    let gh = Gatehouse::start(&format!(
        "{}{}",
        listener("", &vhost("\"app.test\"", "p")),
        pool("p", &[origin.addr], "")
    ));
    let cl_te = b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let two_cl =
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd";
    let underscore =
        b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer_Encoding: chunked\r\nContent-Length: 1\r\n\r\na";
    let two_hosts = b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\n\r\n";
    for req in [&cl_te[..], &two_cl[..], &underscore[..], &two_hosts[..]] {
        let r = raw(&gh, req).await;
        assert_eq!(status(&r), 400, "{}: {r}", String::from_utf8_lossy(req));
    }
    assert!(origin.seen().is_empty(), "nothing reached the server");
    // A bad chunk size: the head has gone up, the body is refused, both sides close.
    let r = raw(
        &gh,
        b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5 6\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status(&r), 400, "{r}");
    let r = raw(
        &gh,
        b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status(&r), 400, "{r}");
}

#[tokio::test]
async fn no_server_up_is_503_at_once() {
    let dead = dead_addr().await;
    let gh = Gatehouse::start(&format!(
        "{}{}",
        listener("", &vhost("\"app.test\"", "p")),
        pool(
            "p",
            &[dead],
            "[pools.passive]\nmax_failures = 1\nejection = \"60s\""
        )
    ));
    // The first request finds the server down (connect refused): 502, and it is ejected.
    let r = get(&gh, "app.test", "/").await;
    assert_eq!(status(&r), 502, "{r}");
    let started = Instant::now();
    let r = get(&gh, "app.test", "/").await;
    assert_eq!(status(&r), 503, "{r}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_body_over_max_body_is_413() {
    let origin = Origin::echo().await;
    let gh = Gatehouse::start(&format!(
        "{}{}",
        listener("max_body = \"1KiB\"", &vhost("\"app.test\"", "p")),
        pool("p", &[origin.addr], "")
    ));
    let big = format!(
        "POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2048\r\n\r\n{}",
        "x".repeat(2048)
    );
    let r = raw(&gh, big.as_bytes()).await;
    assert_eq!(status(&r), 413, "{r}");
    // A chunked body has no length up front: cut off once its data passes the limit.
    let chunked = format!(
        "POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n{}\r\n400\r\n{}\r\n0\r\n\r\n",
        "y".repeat(1024),
        "z".repeat(1024)
    );
    let r = raw(&gh, chunked.as_bytes()).await;
    assert_eq!(status(&r), 413, "{r}");
    let fits = format!(
        "POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n400\r\n{}\r\n0\r\n\r\n",
        "y".repeat(1024)
    );
    let r = raw(&gh, fits.as_bytes()).await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(body(&r).len(), 1024, "{r}");
    let small =
        "POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let r = raw(&gh, small.as_bytes()).await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(body(&r), "hello");
}

#[tokio::test]
async fn a_small_get_body_is_replayed_on_the_other_server() {
    let live = Origin::echo().await;
    let (bad, hits) = resetting_origin().await;
    let hosts = "[[listeners.hosts]]\nnames = [\"app.test\"]\n[[listeners.hosts.routes]]\npool = \"p\"\nretry_body_bytes = \"1KiB\"\n";
    let gh = Gatehouse::start(&format!(
        "{}{}[admin]\nlisten = \"127.0.0.1:0\"\n",
        listener("", hosts),
        pool("p", &[bad, live.addr], "[pools.passive]\nmax_failures = 0")
    ));
    for _ in 0..2 {
        let r = raw(
            &gh,
            b"PUT /x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .await;
        assert_eq!(status(&r), 200, "{r}");
        assert_eq!(body(&r), "hello");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the bad server got one of them"
    );
    assert_eq!(live.count("/x"), 2);
    // The retry is counted for the pool and for the route.
    let admin = gh.addr("admin");
    assert_eq!(
        metric(admin, "gatehouse_pool_retries_total").await,
        Some(1.0)
    );
    assert_eq!(
        metric(admin, "gatehouse_route_retries_total").await,
        Some(1.0)
    );
    assert_eq!(
        metric(admin, "gatehouse_route_request_seconds_count").await,
        Some(2.0)
    );
}

#[test]
fn the_shipped_example_parses_as_documented() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/reverse-proxy.toml");
    let text = std::fs::read_to_string(path).expect("examples/reverse-proxy.toml");
    let c = gatehouse::config::Config::parse(&text).expect("valid");
    let l = &c.listeners[0];
    assert_eq!(l.listen, "127.0.0.1:8080".parse().expect("addr"));
    let gatehouse::config::ListenerKind::Reverse(r) = &l.kind else {
        panic!("a reverse listener")
    };
    assert_eq!(
        r.hosts[0].names,
        [gatehouse::config::HostName::Exact("app.test".into())]
    );
    assert!(r.default.is_none(), "other hosts get 404");
    let p = &c.pools[0];
    assert_eq!(p.name, r.hosts[0].routes[0].pool);
    assert_eq!(p.algorithm, gatehouse::balance::Algorithm::RoundRobin);
    let servers: Vec<String> = p.servers.iter().map(|s| s.label()).collect();
    assert_eq!(servers, ["127.0.0.1:9001", "127.0.0.1:9002"]);
    let h = p.health.as_ref().expect("active checks");
    assert_eq!((h.interval, h.rise, h.fall), (Duration::from_secs(1), 2, 2));
    let gatehouse::config::HealthCheckKind::Http(probe) = &h.kind else {
        panic!("an HTTP check: {:?}", h.kind)
    };
    assert_eq!(
        (probe.method.as_str(), probe.path.as_str()),
        ("GET", "/healthz")
    );
    assert!(p.passive.max_failures > 0, "passive ejection on");
    assert_eq!(
        c.admin.as_ref().map(|a| a.listen),
        Some("127.0.0.1:9090".parse().expect("addr"))
    );
}

#[tokio::test]
async fn policy_client_rules_and_request_limits_apply() {
    let origin = Origin::fixed("ok").await;
    let policy = format!(
        "{LOOPBACK_POLICY}\n[[policy.rules]]\nname = \"no-delete\"\naction = \"deny\"\nlisteners = [\"rev\"]\nmethods = [\"DELETE\"]\n\n[limits.per_client]\nrequests_per_second = 1\n"
    );
    let gh = Gatehouse::start(&format!(
        "{}{}{policy}",
        listener("", &vhost("\"app.test\"", "p")),
        pool("p", &[origin.addr], "")
    ));
    let r = raw(
        &gh,
        b"DELETE /x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&r), 403, "{r}");
    assert!(origin.seen().is_empty(), "refused before any server");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(status(&get(&gh, "app.test", "/").await));
    }
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[tokio::test]
async fn a_caching_route_answers_repeats_from_the_shared_cache() {
    let origin = Origin::start(Arc::new(|_: &Seen| {
        response(200, &[("Cache-Control", "max-age=60")], "cached body")
    }))
    .await;
    let hosts = "[[listeners.hosts]]\nnames = [\"app.test\", \"other.test\"]\n[[listeners.hosts.routes]]\npool = \"p\"\ncache = true\n";
    let gh = Gatehouse::start(&format!(
        "{}{}",
        listener("", hosts),
        pool("p", &[origin.addr], "")
    ));
    for _ in 0..3 {
        let r = get(&gh, "app.test", "/page").await;
        assert_eq!(status(&r), 200, "{r}");
        assert_eq!(body(&r), "cached body");
    }
    assert_eq!(origin.count("/page"), 1, "repeats come from the cache");
    // The key is the public URL: another host is another entry.
    let r = get(&gh, "other.test", "/page").await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(origin.count("/page"), 2);
}

/// An origin answering `200` with `name`, or `500` while `failing` is set; `/healthz` follows
/// `sick` instead.
async fn switchable(
    name: &'static str,
    failing: Arc<std::sync::atomic::AtomicBool>,
    sick: Arc<std::sync::atomic::AtomicBool>,
) -> Origin {
    Origin::start(Arc::new(move |s: &Seen| {
        let bad = if s.uri == "/healthz" {
            sick.load(Ordering::SeqCst)
        } else {
            failing.load(Ordering::SeqCst)
        };
        response(if bad { 500 } else { 200 }, &[], name)
    }))
    .await
}

fn flag() -> Arc<std::sync::atomic::AtomicBool> {
    Arc::new(std::sync::atomic::AtomicBool::new(false))
}

/// A GET with extra header lines (each ending in CRLF).
async fn get_with(gh: &Gatehouse, path: &str, extra: &str) -> String {
    raw(
        gh,
        format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n{extra}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
}

#[tokio::test]
async fn sticky_cookie_pins_the_client_and_moves_when_its_server_fails() {
    let (fa, fb) = (flag(), flag());
    let a = switchable("a", fa.clone(), flag()).await;
    let b = switchable("b", fb.clone(), flag()).await;
    let gh = Gatehouse::start(&format!(
        "{}{}",
        listener("", &vhost("\"app.test\"", "p")),
        pool(
            "p",
            &[a.addr, b.addr],
            "algorithm = \"round-robin\"\n[pools.passive]\nmax_failures = 1\nejection = \"60s\"\n[pools.sticky]\ncookie = \"SRV\""
        )
    ));
    let first = get(&gh, "app.test", "/").await;
    assert_eq!(status(&first), 200, "{first}");
    let set = header(&first, "set-cookie").expect("a new client gets the cookie");
    assert!(set.starts_with("SRV=") && set.contains("HttpOnly"), "{set}");
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    let cookie = set.split(';').next().expect("pair").to_string();
    let pinned = body(&first).to_string();
    // Round-robin would alternate; the cookie keeps every request on one server.
    for _ in 0..6 {
        let r = get_with(&gh, "/", &format!("Cookie: x=1; {cookie}\r\n")).await;
        assert_eq!(body(&r), pinned, "{r}");
        assert_eq!(
            header(&r, "set-cookie"),
            None,
            "the cookie already names it"
        );
    }
    // Its server fails (a 500 ejects it): the next request goes to the other one, which
    // sets a cookie naming itself.
    if pinned == "a" { &fa } else { &fb }.store(true, Ordering::SeqCst);
    let r = get_with(&gh, "/", &format!("Cookie: {cookie}\r\n")).await;
    assert_eq!(status(&r), 500, "{r}");
    let r = get_with(&gh, "/", &format!("Cookie: {cookie}\r\n")).await;
    assert_eq!(status(&r), 200, "{r}");
    assert_ne!(body(&r), pinned);
    let moved = header(&r, "set-cookie").expect("a new cookie");
    assert!(
        moved.starts_with("SRV=") && !moved.starts_with(&cookie),
        "{moved}"
    );
}

#[tokio::test]
async fn hash_on_a_header_spreads_users_and_keeps_each_on_one_server() {
    let a = Origin::fixed("a").await;
    let b = Origin::fixed("b").await;
    let gh = Gatehouse::start(&format!(
        "{}{}",
        listener("", &vhost("\"app.test\"", "p")),
        pool(
            "p",
            &[a.addr, b.addr],
            "algorithm = \"hash\"\nhash_key = \"header:X-User\""
        )
    ));
    let mut on_a = 0;
    for u in 0..24 {
        let h = format!("X-User: user-{u}\r\n");
        let first = body(&get_with(&gh, "/", &h).await).to_string();
        assert!(first == "a" || first == "b", "{first}");
        for _ in 0..2 {
            assert_eq!(body(&get_with(&gh, "/", &h).await), first, "user-{u}");
        }
        on_a += usize::from(first == "a");
    }
    assert!(
        (3..=21).contains(&on_a),
        "both servers get users: {on_a} of 24 on a"
    );
}

#[tokio::test]
async fn a_server_answering_500_is_ejected_passively() {
    let (fa, fb) = (flag(), flag());
    let a = switchable("a", fa.clone(), flag()).await;
    let b = switchable("b", fb, flag()).await;
    fa.store(true, Ordering::SeqCst);
    let gh = Gatehouse::start(&format!(
        "{}{}[admin]\nlisten = \"127.0.0.1:0\"\n",
        listener("", &vhost("\"app.test\"", "p")),
        pool(
            "p",
            &[a.addr, b.addr],
            "algorithm = \"round-robin\"\n[pools.passive]\nmax_failures = 2\nejection = \"60s\""
        )
    ));
    let mut bodies = Vec::new();
    for _ in 0..10 {
        let r = get(&gh, "app.test", "/").await;
        bodies.push((status(&r), body(&r).to_string()));
    }
    let errors = bodies.iter().filter(|(s, _)| *s == 500).count();
    assert_eq!(errors, 2, "two 500s eject a: {bodies:?}");
    assert!(
        bodies[4..].iter().all(|(s, b)| *s == 200 && b == "b"),
        "{bodies:?}"
    );
    let text = metrics_text(gh.addr("admin")).await;
    assert!(
        text.contains(&format!(
            "gatehouse_pool_server_up{{pool=\"p\",server=\"{}\"}} 0",
            a.addr
        )),
        "{text}"
    );
    assert_eq!(
        metric(gh.addr("admin"), "gatehouse_pool_server_requests_total").await,
        Some(10.0)
    );
}

#[tokio::test]
async fn an_exhausted_retry_budget_refuses_the_retry() {
    let (bad1, hits1) = resetting_origin().await;
    let (bad2, hits2) = resetting_origin().await;
    let gh = Gatehouse::start(&format!(
        "{}{}[admin]\nlisten = \"127.0.0.1:0\"\n",
        listener("", &vhost("\"app.test\"", "p")),
        pool(
            "p",
            &[bad1, bad2],
            "retry_budget = 0.01\nmin_retries_per_sec = 0\n[pools.passive]\nmax_failures = 0"
        )
    ));
    let r = get(&gh, "app.test", "/").await;
    assert_eq!(status(&r), 502, "{r}");
    let hits = hits1.load(Ordering::SeqCst) + hits2.load(Ordering::SeqCst);
    assert_eq!(hits, 1, "no retry went to the other server");
    let admin = gh.addr("admin");
    assert_eq!(
        metric(admin, "gatehouse_pool_retry_budget_exhausted_total").await,
        Some(1.0)
    );
    assert_eq!(
        metric(admin, "gatehouse_pool_retries_total")
            .await
            .unwrap_or(0.0),
        0.0
    );
}

#[tokio::test]
async fn an_active_http_check_takes_a_server_out_and_brings_it_back() {
    let (sa, sb) = (flag(), flag());
    let a = switchable("a", flag(), sa).await;
    let b = switchable("b", flag(), sb.clone()).await;
    let gh = Gatehouse::start(&format!(
        "{}{}",
        listener("", &vhost("\"app.test\"", "p")),
        pool(
            "p",
            &[a.addr, b.addr],
            "algorithm = \"round-robin\"\n[pools.health]\ntype = \"http\"\npath = \"/healthz\"\ninterval = \"50ms\"\nrise = 1\nfall = 1"
        )
    ));
    // Four requests in a row on `a` only (round-robin would alternate): `b` is out.
    sb.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = false;
    while Instant::now() < deadline {
        let mut all_a = true;
        for _ in 0..4 {
            all_a &= body(&get(&gh, "app.test", "/").await) == "a";
        }
        if all_a {
            out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(out, "GET /healthz answering 500 takes b out");
    sb.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut back = false;
    while Instant::now() < deadline {
        if body(&get(&gh, "app.test", "/").await) == "b" {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back, "200 brings b back");
}

#[tokio::test]
async fn the_pools_shorter_first_byte_timeout_wins_and_counts_against_the_server() {
    // Reads the request, then says nothing (until the proxy gives up, bounded).
    let silent = raw_origin(|mut s| async move {
        if read_head(&mut s).await {
            let _ = tokio::time::timeout(Duration::from_secs(10), read_to_close(&mut s)).await;
        }
    })
    .await;
    let gh = Gatehouse::start(&format!(
        "{}{}[admin]\nlisten = \"127.0.0.1:0\"\n",
        listener("", &vhost("\"app.test\"", "p")),
        pool(
            "p",
            &[silent],
            "first_byte_timeout = \"300ms\"\n[pools.passive]\nmax_failures = 1\nejection = \"60s\""
        )
    ));
    let started = Instant::now();
    let r = get(&gh, "app.test", "/").await;
    assert_eq!(status(&r), 504, "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the listener's 60 s did not apply"
    );
    let text = metrics_text(gh.addr("admin")).await;
    assert!(
        text.contains(&format!(
            "gatehouse_pool_server_up{{pool=\"p\",server=\"{silent}\"}} 0"
        )),
        "a first-byte timeout ejects: {text}"
    );
}
