//! End-to-end: every error a forward-proxy user can act on, with its status and Proxy-Status,
//! and the limits a bad client runs into without disturbing others.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn raw(addr: std::net::SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect proxy");
    s.write_all(req).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(resp: &str) -> &str {
    resp.split(' ').nth(1).unwrap_or("")
}

#[tokio::test]
async fn malformed_requests_get_400_and_close() {
    let gh = Gatehouse::start(&http_listener("http", ""));
    let cases: [&[u8]; 6] = [
        b"THIS IS NOT HTTP\r\n\r\n",
        b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST http://a.test/ HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
        b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nX-Folded: a\r\n  b\r\n\r\n",
        b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nX-Bare: a\rb\r\n\r\n",
        b"GET /origin-form HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    ];
    for req in cases {
        let resp = raw(gh.addr("http"), req).await;
        assert_eq!(
            status_of(&resp),
            "400",
            "{:?} -> {resp}",
            String::from_utf8_lossy(req)
        );
        assert!(
            resp.contains("Proxy-Status: gatehouse; error=http_request_error"),
            "{resp}"
        );
    }
    // HTTP/1.1 without Host, and with two Host fields.
    let resp = raw(gh.addr("http"), b"GET http://a.test/ HTTP/1.1\r\n\r\n").await;
    assert_eq!(status_of(&resp), "400", "{resp}");
    let resp = raw(
        gh.addr("http"),
        b"GET http://a.test/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), "400", "{resp}");
}

#[tokio::test]
async fn oversize_head_gets_431() {
    let gh = Gatehouse::start(&http_listener("http", "max_header_bytes = \"4KiB\""));
    let req = format!(
        "GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\n\r\n",
        "b".repeat(5000)
    );
    let resp = raw(gh.addr("http"), req.as_bytes()).await;
    assert_eq!(status_of(&resp), "431", "{resp}");
    // Many small fields count too.
    let mut req = String::from("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n");
    for i in 0..200 {
        req.push_str(&format!("X-{i}: v\r\n"));
    }
    req.push_str("\r\n");
    let resp = raw(gh.addr("http"), req.as_bytes()).await;
    assert_eq!(status_of(&resp), "431", "{resp}");
}

#[tokio::test]
async fn connect_to_forbidden_port_is_403() {
    let gh = Gatehouse::start(&http_listener("http", ""));
    let resp = raw(
        gh.addr("http"),
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), "403", "{resp}");
    assert!(resp.contains("error=http_request_denied"), "{resp}");
    let line = gh.wait_log("CONNECT");
    assert!(
        line.contains(" 403 ") && line.contains("http_request_denied"),
        "{line}"
    );
}

#[tokio::test]
async fn unresolvable_name_is_502_dns_error() {
    let dns = Dns::start(&[("known.test", IpAddr::V4(Ipv4Addr::LOCALHOST))], 60).await;
    let gh = Gatehouse::start(&format!("{}{}", http_listener("http", ""), dns.config()));
    let (code, body, err) = curl(&[
        "-x",
        &gh.proxy_url("http"),
        "-D",
        "-",
        "http://nowhere.test/",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let resp = String::from_utf8_lossy(&body);
    assert_eq!(status_of(&resp), "502", "{resp}");
    assert!(
        resp.contains("error=dns_error; rcode=\"NXDOMAIN\""),
        "{resp}"
    );
    assert!(
        dns.queries.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the loopback DNS server was asked"
    );
}

#[tokio::test]
async fn names_resolve_through_dns_and_the_answer_is_cached() {
    let origin = Origin::fixed("by-name").await;
    let dns = Dns::start(&[("origin.test", IpAddr::V4(Ipv4Addr::LOCALHOST))], 300).await;
    let gh = Gatehouse::start(&format!("{}{}", http_listener("http", ""), dns.config()));
    let url = format!("http://origin.test:{}/", origin.addr.port());
    let (code, body, err) = curl(&["-x", &gh.proxy_url("http"), &url]).await;
    assert_eq!((code, body.as_slice()), (0, &b"by-name"[..]), "{err}");
    let after_first = dns.queries.load(std::sync::atomic::Ordering::SeqCst);
    assert!(after_first >= 1);
    // A second client, a new upstream connection (Connection: close), same name: no new query.
    let (code, _, err) =
        curl(&["-x", &gh.proxy_url("http"), "-H", "Connection: close", &url]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = curl(&["-x", &gh.proxy_url("http"), &url]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        dns.queries.load(std::sync::atomic::Ordering::SeqCst),
        after_first,
        "answer served from cache within TTL"
    );
}

#[tokio::test]
async fn refused_port_is_502_connection_refused() {
    // Bind then drop: a port on loopback with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let gh = Gatehouse::start(&http_listener("http", ""));
    let (code, body, err) = curl(&[
        "-x",
        &gh.proxy_url("http"),
        "-D",
        "-",
        &format!("http://127.0.0.1:{port}/"),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let resp = String::from_utf8_lossy(&body);
    assert_eq!(status_of(&resp), "502", "{resp}");
    assert!(resp.contains("error=connection_refused"), "{resp}");
}

#[tokio::test]
async fn upstream_that_never_answers_is_504() {
    let (hold_tx, _hold_rx) = tokio::sync::broadcast::channel::<()>(1);
    let origin = raw_origin(move |s: TcpStream| {
        let mut rx = hold_tx.subscribe();
        async move {
            // Accept, read nothing, answer nothing, hold the socket until the test ends.
            let _ = rx.recv().await;
            drop(s);
        }
    })
    .await;
    let gh = Gatehouse::start(&http_listener("http", "read_timeout = \"1s\""));
    let started = Instant::now();
    let (code, body, err) = curl(&[
        "-x",
        &gh.proxy_url("http"),
        "-D",
        "-",
        &format!("http://{origin}/"),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let resp = String::from_utf8_lossy(&body);
    assert_eq!(status_of(&resp), "504", "{resp}");
    assert!(resp.contains("error=connection_read_timeout"), "{resp}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the read timeout bounds the wait"
    );
}

#[tokio::test]
async fn happy_eyeballs_falls_back_to_the_address_that_answers() {
    let origin = Origin::fixed("v4").await;
    // ::1 first (nothing listens on that port there), then 127.0.0.1.
    let cfg = format!(
        "{}[dns.hosts]\n\"dual.test\" = [\"::1\", \"127.0.0.1\"]\n",
        http_listener("http", "")
    );
    let gh = Gatehouse::start(&cfg);
    let url = format!("http://dual.test:{}/", origin.addr.port());
    let (code, body, err) = curl(&["-x", &gh.proxy_url("http"), &url]).await;
    assert_eq!((code, body.as_slice()), (0, &b"v4"[..]), "{err}");
}

#[tokio::test]
async fn outgoing_source_address_is_used() {
    let origin = Origin::fixed("src").await;
    let cfg = format!(
        "{}[upstream]\nsource_address_v4 = \"127.0.0.2\"\n",
        http_listener("http", "")
    );
    let gh = Gatehouse::start(&cfg);
    let (code, _, err) = curl(&["-x", &gh.proxy_url("http"), &origin.url("/")]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        origin.seen()[0].peer.ip(),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))
    );
}

#[tokio::test]
async fn slow_header_client_times_out_without_disturbing_others() {
    let origin = Origin::fixed("fine").await;
    let gh = Gatehouse::start(&http_listener("http", "header_read_timeout = \"1s\""));
    let mut slow = TcpStream::connect(gh.addr("http")).await.expect("connect");
    slow.write_all(b"GET http://a.test/ HTTP/1.1\r\nHost: a")
        .await
        .expect("partial head");
    // Meanwhile another client is served normally.
    let (code, body, err) = curl(&["-x", &gh.proxy_url("http"), &origin.url("/")]).await;
    assert_eq!((code, body.as_slice()), (0, &b"fine"[..]), "{err}");
    let mut out = Vec::new();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut out))
        .await
        .expect("the slow client is cut off")
        .expect("read");
    let resp = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&resp), "408", "{resp}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn idle_keepalive_connections_are_closed() {
    let origin = Origin::fixed("k").await;
    let gh = Gatehouse::start(&http_listener("http", "keepalive_timeout = \"500ms\""));
    let mut s = TcpStream::connect(gh.addr("http")).await.expect("connect");
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n\r\n",
        origin.url("/"),
        origin.addr
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    // The response arrives, then the idle connection is closed by the proxy (EOF).
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("closed after the keep-alive timeout")
        .expect("read");
    assert!(String::from_utf8_lossy(&out).ends_with("\r\n\r\nk"));
}

#[tokio::test]
async fn max_connections_caps_concurrent_clients() {
    let origin = Origin::fixed("m").await;
    let gh = Gatehouse::start(&http_listener("http", "max_connections = 1"));
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n\r\n",
        origin.url("/"),
        origin.addr
    );
    let mut first = TcpStream::connect(gh.addr("http")).await.expect("connect");
    first.write_all(req.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !got.ends_with(b"\r\n\r\nm") {
        let n = first.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    // The second client is not served while the first holds the only slot...
    let proxy = gh.proxy_url("http");
    let url = origin.url("/second");
    let second = tokio::spawn(async move { curl(&["-x", &proxy, &url]).await });
    let waited = tokio::time::timeout(Duration::from_millis(500), async {
        while origin.seen().len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        waited.is_err(),
        "second client served while the cap was reached"
    );
    // ...and is served as soon as the first leaves.
    drop(first);
    let (code, body, err) = second.await.expect("join");
    assert_eq!((code, body.as_slice()), (0, &b"m"[..]), "{err}");
}
