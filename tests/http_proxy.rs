//! End-to-end: the HTTP forward proxy driven by curl, reqwest and raw sockets against local
//! origins. Everything on 127.0.0.1; names come from a loopback DNS server or `[dns.hosts]`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `req` to the proxy and reads until the proxy closes (or 10 s pass).
async fn raw(addr: std::net::SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect proxy");
    s.write_all(req).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn reqwest_client(gh: &Gatehouse) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(gh.proxy_url("http")).expect("proxy url"))
        .build()
        .expect("client")
}

#[tokio::test]
async fn get_through_proxy_with_curl() {
    let origin = Origin::fixed("hello").await;
    let gh = Gatehouse::start(&http_listener("http", ""));
    let (code, body, err) = curl(&["-x", &gh.proxy_url("http"), &origin.url("/x")]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(body, b"hello");
    let seen = origin.seen();
    assert_eq!(seen[0].uri, "/x");
    assert_eq!(seen[0].headers["host"], origin.addr.to_string().as_str());
    assert_eq!(seen[0].headers["via"], "1.1 gatehouse");
    assert!(seen[0].headers.get("proxy-connection").is_none());
    // The client's address is not revealed by default.
    assert!(seen[0].headers.get("x-forwarded-for").is_none());
    assert!(seen[0].headers.get("forwarded").is_none());
    let line = gh.wait_log("GET");
    assert!(line.contains(" 200 "), "{line}");
    assert!(line.contains(&origin.url("/x")), "{line}");
}

#[tokio::test]
async fn methods_and_bodies_with_reqwest() {
    let origin = Origin::start(Arc::new(|s: &Seen| {
        let body = format!(
            "{} {} {}",
            s.method,
            s.uri,
            String::from_utf8_lossy(&s.body)
        );
        hyper::Response::new(Full::new(Bytes::from(body)))
    }))
    .await;
    let gh = Gatehouse::start(&http_listener("http", ""));
    let c = reqwest_client(&gh);
    let get = c.get(origin.url("/g?q=1")).send().await.expect("get");
    assert_eq!(get.text().await.expect("body"), "GET /g?q=1 ");
    let post = c
        .post(origin.url("/p"))
        .body("payload")
        .send()
        .await
        .expect("post");
    assert_eq!(post.text().await.expect("body"), "POST /p payload");
    let put = c
        .put(origin.url("/u"))
        .body(vec![b'x'; 100_000])
        .send()
        .await
        .expect("put");
    let text = put.text().await.expect("body");
    assert!(text.starts_with("PUT /u xxx") && text.len() == "PUT /u ".len() + 100_000);
    let head = c.head(origin.url("/h")).send().await.expect("head");
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "8"); // "HEAD /h "
    assert_eq!(head.bytes().await.expect("empty").len(), 0);
    // Five requests on one client connection reused one upstream connection.
    assert_eq!(origin.connection_count(), 1);
}

#[tokio::test]
async fn upstream_connections_are_reused_across_clients() {
    let origin = Origin::fixed("ok").await;
    let gh = Gatehouse::start(&http_listener("http", ""));
    for _ in 0..3 {
        let (code, body, err) = curl(&["-x", &gh.proxy_url("http"), &origin.url("/")]).await;
        assert_eq!((code, body.as_slice()), (0, &b"ok"[..]), "{err}");
    }
    assert_eq!(origin.seen().len(), 3);
    assert_eq!(
        origin.connection_count(),
        1,
        "three curl processes, one upstream connection"
    );
}

#[tokio::test]
async fn chunked_request_body_with_trailers_reaches_origin() {
    let origin = Origin::echo().await;
    let gh = Gatehouse::start(&http_listener("http", ""));
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\nConnection: close\r\n\r\n\
         5\r\nhello\r\n6\r\n world\r\n0\r\nX-Check: 42\r\n\r\n",
        origin.url("/c"),
        origin.addr
    );
    let resp = raw(gh.addr("http"), req.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("hello world"), "{resp}");
    let seen = origin.seen();
    assert_eq!(seen[0].body.as_ref(), b"hello world");
    let trailers = seen[0].trailers.as_ref().expect("trailers forwarded");
    assert_eq!(trailers["x-check"], "42");
}

#[tokio::test]
async fn chunked_and_close_delimited_responses() {
    // Chunked with a trailer, then read-until-close: the proxy keeps framing correct for both.
    let origin = raw_origin(|mut s: TcpStream| async move {
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap_or(0);
        let req = String::from_utf8_lossy(&buf[..n]).to_string();
        if req.starts_with("GET /chunked") {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n4\r\nabcd\r\n3\r\nefg\r\n0\r\nX-Sum: 7\r\n\r\n")
                .await;
        } else {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-close-body").await;
            let _ = s.shutdown().await;
        }
    })
    .await;
    let gh = Gatehouse::start(&http_listener("http", ""));
    let c = reqwest_client(&gh);
    let r = c
        .get(format!("http://{origin}/chunked"))
        .send()
        .await
        .expect("chunked");
    assert_eq!(r.text().await.expect("body"), "abcdefg");
    // HTTP/1.1 client: the close-delimited body is re-chunked so the client can keep its connection.
    let resp = raw(
        gh.addr("http"),
        format!(
            "GET http://{origin}/close HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(resp.contains("Transfer-Encoding: chunked"), "{resp}");
    assert!(
        resp.contains("10\r\nuntil-close-body\r\n0\r\n\r\n"),
        "{resp}"
    );
    // HTTP/1.0 client: never chunked; the body ends with the connection.
    let resp = raw(
        gh.addr("http"),
        format!("GET http://{origin}/chunked HTTP/1.0\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(
        !resp.to_ascii_lowercase().contains("transfer-encoding"),
        "{resp}"
    );
    assert!(resp.ends_with("\r\n\r\nabcdefg"), "{resp}");
}

#[tokio::test]
async fn pipelined_requests_answered_in_order() {
    let origin = Origin::start(Arc::new(|s: &Seen| {
        hyper::Response::new(Full::new(Bytes::from(s.uri.clone())))
    }))
    .await;
    let gh = Gatehouse::start(&http_listener("http", ""));
    let mut req = String::new();
    for (i, p) in ["/one", "/two", "/three"].iter().enumerate() {
        let close = if i == 2 { "Connection: close\r\n" } else { "" };
        req.push_str(&format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\n{close}\r\n",
            origin.url(p),
            origin.addr
        ));
    }
    let resp = raw(gh.addr("http"), req.as_bytes()).await;
    let one = resp.find("\r\n\r\n/one").expect("first");
    let two = resp.find("\r\n\r\n/two").expect("second");
    let three = resp.find("\r\n\r\n/three").expect("third");
    assert!(one < two && two < three, "{resp}");
    assert_eq!(resp.matches("HTTP/1.1 200").count(), 3);
}

#[tokio::test]
async fn expect_100_continue_upload() {
    let origin = Origin::echo().await;
    let gh = Gatehouse::start(&http_listener("http", ""));
    let file = gh.path("upload.bin");
    std::fs::write(&file, vec![b'z'; 2 * 1024 * 1024]).expect("write file");
    let (code, body, err) = curl(&[
        "-x",
        &gh.proxy_url("http"),
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &format!("@{}", file.display()),
        &origin.url("/up"),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(body.len(), 2 * 1024 * 1024);
    assert_eq!(origin.seen()[0].headers["expect"], "100-continue");
}

#[tokio::test]
async fn hop_by_hop_headers_removed_both_ways() {
    let origin = raw_origin(|mut s: TcpStream| async move {
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap_or(0);
        let seen = String::from_utf8_lossy(&buf[..n]).to_string();
        let body = seen.replace("\r\n", "|");
        let resp = format!(
            "HTTP/1.1 200 OK\r\nConnection: X-Up-Secret\r\nX-Up-Secret: 1\r\nKeep-Alive: timeout=5\r\nUpgrade: h2c\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(resp.as_bytes()).await;
    })
    .await;
    let gh = Gatehouse::start(&http_listener("http", ""));
    let req = format!(
        "GET http://{origin}/ HTTP/1.1\r\nHost: {origin}\r\nConnection: close, X-Secret\r\nX-Secret: s\r\n\
         Keep-Alive: 5\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nTE: gzip\r\nUpgrade: websocket\r\nX-Keep: k\r\n\r\n"
    );
    let resp = raw(gh.addr("http"), req.as_bytes()).await;
    let (head, seen) = resp.split_once("\r\n\r\n").expect("response");
    for gone in [
        "X-Secret",
        "Keep-Alive",
        "Proxy-Connection",
        "Proxy-Authorization",
        "TE:",
        "Upgrade",
    ] {
        assert!(!seen.contains(gone), "{gone} reached the origin: {seen}");
    }
    assert!(seen.contains("X-Keep: k"), "{seen}");
    for gone in ["X-Up-Secret", "Keep-Alive", "Upgrade"] {
        assert!(!head.contains(gone), "{gone} reached the client: {head}");
    }
    assert!(head.contains("Via: 1.1 gatehouse"), "{head}");
    assert!(head.contains("Connection: close"), "{head}");
}

#[tokio::test]
async fn via_pseudonym_and_forwarded_for_settings() {
    let origin = Origin::fixed("ok").await;
    let gh = Gatehouse::start(&http_listener(
        "http",
        "via = \"edge-7\"\nforwarded_for = true",
    ));
    let (code, _, err) = curl(&["-x", &gh.proxy_url("http"), &origin.url("/")]).await;
    assert_eq!(code, 0, "{err}");
    let seen = &origin.seen()[0];
    assert_eq!(seen.headers["via"], "1.1 edge-7");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["forwarded"], "for=127.0.0.1;proto=http");

    let origin = Origin::fixed("ok").await;
    let gh = Gatehouse::start(&http_listener("http", "via = false"));
    let (code, _, err) = curl(&["-x", &gh.proxy_url("http"), &origin.url("/")]).await;
    assert_eq!(code, 0, "{err}");
    assert!(origin.seen()[0].headers.get("via").is_none());
}

#[tokio::test]
async fn max_forwards_for_trace_and_options() {
    let origin = Origin::fixed("from-origin").await;
    let gh = Gatehouse::start(&http_listener("http", ""));
    let req = format!(
        "TRACE {} HTTP/1.1\r\nHost: {}\r\nMax-Forwards: 0\r\nCookie: secret\r\nX-Probe: 1\r\nConnection: close\r\n\r\n",
        origin.url("/t"),
        origin.addr
    );
    let resp = raw(gh.addr("http"), req.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("Content-Type: message/http"), "{resp}");
    assert!(
        resp.contains("X-Probe: 1") && !resp.contains("secret"),
        "{resp}"
    );
    assert_eq!(origin.seen().len(), 0, "Max-Forwards: 0 stops at the proxy");

    let req = format!(
        "OPTIONS {} HTTP/1.1\r\nHost: {}\r\nMax-Forwards: 3\r\nConnection: close\r\n\r\n",
        origin.url("/o"),
        origin.addr
    );
    let resp = raw(gh.addr("http"), req.as_bytes()).await;
    assert!(resp.ends_with("from-origin"), "{resp}");
    assert_eq!(origin.seen()[0].headers["max-forwards"], "2");
}

#[tokio::test]
async fn http10_client_keepalive_only_when_asked() {
    let origin = Origin::fixed("ten").await;
    let gh = Gatehouse::start(&http_listener("http", ""));
    let resp = raw(
        gh.addr("http"),
        format!("GET {} HTTP/1.0\r\n\r\n", origin.url("/")).as_bytes(),
    )
    .await;
    assert!(
        resp.contains("Connection: close") && resp.ends_with("ten"),
        "{resp}"
    );
    // With keep-alive asked for, the connection stays open for a second request.
    let mut s = TcpStream::connect(gh.addr("http")).await.expect("connect");
    let one = format!(
        "GET {} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        origin.url("/a")
    );
    s.write_all(one.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let mut got = String::new();
    while !got.ends_with("ten") {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed early: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.contains("Connection: keep-alive"), "{got}");
    s.write_all(format!("GET {} HTTP/1.0\r\n\r\n", origin.url("/b")).as_bytes())
        .await
        .expect("write");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.expect("read");
    assert!(
        String::from_utf8_lossy(&rest).ends_with("ten"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
}

#[tokio::test]
async fn upgrade_is_tunnelled_after_101() {
    let origin = raw_origin(|mut s: TcpStream| async move {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read_exact(&mut b).await.is_err() {
                return;
            }
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        if !head.contains("Upgrade: echo/1") || !head.to_ascii_lowercase().contains("connection: upgrade") {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").await;
            return;
        }
        let _ = s
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo/1\r\nConnection: Upgrade\r\n\r\n")
            .await;
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await;
    // Only listed protocols may turn the connection into a tunnel (default: websocket).
    let gh = Gatehouse::start(&http_listener("http", "upgrade_protocols = [\"echo\"]"));
    let mut s = TcpStream::connect(gh.addr("http")).await.expect("connect");
    let req = format!("GET http://{origin}/ws HTTP/1.1\r\nHost: {origin}\r\nUpgrade: echo/1\r\nConnection: Upgrade\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.expect("read head");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("Upgrade: echo/1"), "{head}");
    s.write_all(b"framed bytes").await.expect("write");
    let mut back = [0u8; 12];
    s.read_exact(&mut back)
        .await
        .expect("echo through the upgraded tunnel");
    assert_eq!(&back, b"framed bytes");
}
