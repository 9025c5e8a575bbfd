//! HTTP/2 from clients on reverse listeners: curl `--http2` over TLS (ALPN, the test CA)
//! and `--http2-prior-knowledge` on a plain listener with h2c, an h2 client with many
//! concurrent streams on one connection spread over two servers, bodies both ways under
//! flow control, the per-client request rate and the access log per stream, and bad input
//! (malformed header blocks, CONNECT, oversized header lists, a connection error) written
//! as raw frames, a chunked response's trailers turned into HTTP/2 trailers, and big
//! responses through the window while a sibling stream is reset mid-body, and GOAWAY on a
//! connection idle past `keepalive_timeout`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A reverse listener `rev` with `extra` keys; `app.test` -> pool `p` over `servers`.
fn config(extra: &str, servers: &[SocketAddr], tail: &str) -> String {
    let mut s = format!(
        "[[listeners]]\nname = \"rev\"\nkind = \"reverse\"\nlisten = \"127.0.0.1:0\"\n{extra}\n\
         [[listeners.hosts]]\nnames = [\"app.test\"]\n[[listeners.hosts.routes]]\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\n"
    );
    for a in servers {
        s.push_str(&format!("[[pools.servers]]\naddress = \"{a}\"\n"));
    }
    s.push_str(tail);
    s
}

/// A CA and a leaf for `app.test`, written into `dir`: (CA file, `[listeners.tls]` table).
fn tls_files(dir: &Path) -> (PathBuf, String) {
    let pki = test_pki("app.test");
    let (cafile, cert, keyfile) = (dir.join("ca.pem"), dir.join("app.pem"), dir.join("app.key"));
    std::fs::write(&cafile, &pki.ca_pem).expect("write");
    std::fs::write(&cert, &pki.leaf_pem).expect("write");
    std::fs::write(&keyfile, &pki.key_pem).expect("write");
    (
        cafile,
        format!("[listeners.tls]\ncert = {cert:?}\nkey = {keyfile:?}\n"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_h2_over_tls_and_the_server_gets_http11() {
    let dir = tempfile::tempdir().expect("dir");
    let (cafile, tls) = tls_files(dir.path());
    let origin = Origin::echo().await;
    let gh = Gatehouse::start(&config(
        &tls,
        &[origin.addr],
        "[access_log]\nformat = \"json\"\n",
    ));
    let port = gh.addr("rev").port();
    let resolve = format!("app.test:{port}:127.0.0.1");
    let url = format!("https://app.test:{port}/echo?q=1");
    let ca = cafile.display().to_string();
    let (code, out, err) = curl(&[
        "--http2",
        "--resolve",
        &resolve,
        "--cacert",
        &ca,
        "-s",
        "-d",
        "hello over h2",
        "-H",
        "Cookie: a=1",
        "-H",
        "Cookie: b=2",
        "-w",
        " %{http_version}",
        &url,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(String::from_utf8_lossy(&out), "hello over h2 2");
    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.version, hyper::Version::HTTP_11, "HTTP/1.1 to the server");
    assert_eq!((s.method.as_str(), s.uri.as_str()), ("POST", "/echo?q=1"));
    let h = |n: &str| s.headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    assert_eq!(h("host"), format!("app.test:{port}"), ":authority as Host");
    assert_eq!(h("x-forwarded-proto"), "https");
    assert_eq!(h("cookie"), "a=1; b=2", "cookie fields joined");
    assert_eq!(h("connection"), "", "{:?}", s.headers);
    let line = gh.wait_log("/echo?q=1");
    assert!(line.contains(r#""version":"HTTP/2.0""#), "{line}");
    // With HTTP/2 off the listener offers http/1.1 only.
    let gh = Gatehouse::start(&config(
        &format!("{tls}[listeners.http2]\nenabled = false\n"),
        &[origin.addr],
        "",
    ));
    let port = gh.addr("rev").port();
    let resolve = format!("app.test:{port}:127.0.0.1");
    let url = format!("https://app.test:{port}/");
    let (code, _, err) = curl(&[
        "--http2",
        "--resolve",
        &resolve,
        "--cacert",
        &ca,
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version}",
        &url,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = curl(&[
        "--http2",
        "--resolve",
        &resolve,
        "--cacert",
        &ca,
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version}",
        &url,
    ])
    .await;
    assert_eq!(String::from_utf8_lossy(&out), "1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge_only_when_enabled() {
    let origin = Origin::fixed("plain").await;
    let gh = Gatehouse::start(&config(
        "[listeners.http2]\nh2c = true\n",
        &[origin.addr],
        "",
    ));
    let port = gh.addr("rev").port();
    let resolve = format!("app.test:{port}:127.0.0.1");
    let url = format!("http://app.test:{port}/");
    let (code, out, err) = curl(&[
        "--http2-prior-knowledge",
        "--resolve",
        &resolve,
        "-s",
        "-w",
        " %{http_version}",
        &url,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(String::from_utf8_lossy(&out), "plain 2");
    // HTTP/1.1 still works on the same listener.
    let (code, out, err) =
        curl(&["--resolve", &resolve, "-s", "-w", " %{http_version}", &url]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(String::from_utf8_lossy(&out), "plain 1.1");
    // Without h2c the preface is not HTTP/1.1: refused, nothing reaches the server.
    let before = origin.seen().len();
    let gh = Gatehouse::start(&config("", &[origin.addr], ""));
    let port = gh.addr("rev").port();
    let resolve = format!("app.test:{port}:127.0.0.1");
    let url = format!("http://app.test:{port}/");
    let (code, _, _) = curl(&["--http2-prior-knowledge", "--resolve", &resolve, "-s", &url]).await;
    assert_ne!(code, 0);
    assert_eq!(origin.seen().len(), before);
}

/// An h2c connection to the listener with the h2 crate.
async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// Sends one request and reads the whole response: (status, body, trailers).
async fn h2_fetch(
    send: &h2::client::SendRequest<Bytes>,
    method: &str,
    path: &str,
    body: Option<Bytes>,
) -> (u16, Bytes, Option<http::HeaderMap>) {
    let mut send = send.clone().ready().await.expect("ready");
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://app.test{path}"))
        .body(())
        .expect("request");
    let (resp, mut stream) = send
        .send_request(req, body.is_none())
        .expect("send_request");
    let up = async move {
        if let Some(mut b) = body {
            while !b.is_empty() {
                stream.reserve_capacity(b.len().min(64 * 1024));
                let n = std::future::poll_fn(|cx| stream.poll_capacity(cx))
                    .await
                    .expect("open")
                    .expect("capacity");
                stream.send_data(b.split_to(n), false).expect("data");
            }
            stream.send_data(Bytes::new(), true).expect("end");
        }
    };
    let down = async move {
        let resp = resp.await.expect("response");
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut got = Vec::new();
        while let Some(d) = body.data().await {
            let d = d.expect("data");
            body.flow_control()
                .release_capacity(d.len())
                .expect("release");
            got.extend_from_slice(&d);
        }
        let trailers = body.trailers().await.expect("trailers");
        (status, Bytes::from(got), trailers)
    };
    let ((), r) = tokio::join!(up, down);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_on_one_connection_spread_over_two_servers() {
    let a = Origin::fixed("from-a").await;
    let b = Origin::fixed("from-b").await;
    let echo = Origin::start(std::sync::Arc::new(|s: &Seen| {
        response(200, &[("Trailer", "x-sum")], s.body.clone())
    }))
    .await;
    let gh = Gatehouse::start(&config(
        "[listeners.http2]\nh2c = true\nmax_concurrent_streams = 20\n\
         [[listeners.hosts]]\nnames = [\"echo.test\"]\n[[listeners.hosts.routes]]\npool = \"e\"\n",
        &[a.addr, b.addr],
        &format!(
            "[[pools]]\nname = \"e\"\n[[pools.servers]]\naddress = \"{}\"\n",
            echo.addr
        ),
    ));
    let send = h2_client(gh.addr("rev")).await;
    // One stream first: by its end the client has the server's SETTINGS (20 streams at
    // most), so the burst below waits for free streams instead of being refused.
    assert_eq!(h2_fetch(&send, "GET", "/first", None).await.0, 200);
    let mut tasks = Vec::new();
    for i in 0..60 {
        let send = send.clone();
        tasks.push(tokio::spawn(async move {
            h2_fetch(&send, "GET", &format!("/n{i}"), None).await
        }));
    }
    let (mut from_a, mut from_b) = (0, 0);
    for t in tasks {
        let (status, body, _) = t.await.expect("task");
        assert_eq!(status, 200);
        match &body[..] {
            b"from-a" => from_a += 1,
            b"from-b" => from_b += 1,
            other => panic!("unexpected body {other:?}"),
        }
    }
    assert_eq!(from_a + from_b, 60);
    assert!(
        from_a >= 25 && from_b >= 25,
        "round-robin: {from_a} / {from_b}"
    );
    // Keep-alive upstream: far fewer server connections than streams.
    assert!(a.connection_count() + b.connection_count() <= 40);

    // A body of 4 MiB each way on that connection, through 64 KiB windows.
    let big = pattern(7, 4 * 1024 * 1024);
    let mut ready = send.clone().ready().await.expect("ready");
    let req = http::Request::builder()
        .method("POST")
        .uri("http://echo.test/big")
        .body(())
        .expect("request");
    let (resp, mut up) = ready.send_request(req, false).expect("send");
    let body = big.clone();
    let upload = tokio::spawn(async move {
        let mut b = body;
        while !b.is_empty() {
            up.reserve_capacity(b.len().min(64 * 1024));
            let n = std::future::poll_fn(|cx| up.poll_capacity(cx))
                .await
                .expect("open")
                .expect("capacity");
            up.send_data(b.split_to(n), false).expect("data");
        }
        // Trailers from the client end a chunked body upstream.
        let mut t = http::HeaderMap::new();
        t.insert("x-sum", http::HeaderValue::from_static("42"));
        up.send_trailers(t).expect("trailers");
    });
    let resp = resp.await.expect("response");
    assert_eq!(resp.status(), 200);
    let mut rb = resp.into_body();
    let mut got = 0usize;
    let mut same = true;
    while let Some(d) = rb.data().await {
        let d = d.expect("data");
        rb.flow_control()
            .release_capacity(d.len())
            .expect("release");
        same &= big.get(got..got + d.len()) == Some(&d[..]);
        got += d.len();
    }
    upload.await.expect("upload");
    assert_eq!(got, big.len());
    assert!(same, "the body came back unchanged");
    let seen = echo.seen();
    let last = seen.last().expect("seen");
    assert_eq!(
        last.trailers
            .as_ref()
            .and_then(|t| t.get("x-sum"))
            .map(|v| v.as_bytes()),
        Some(&b"42"[..]),
        "request trailers reached the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_rate_limit_counts_streams() {
    let origin = Origin::fixed("ok").await;
    let gh = Gatehouse::start(&config(
        "[listeners.http2]\nh2c = true\n",
        &[origin.addr],
        &format!("{LOOPBACK_POLICY}\n[limits.per_client]\nrequests_per_second = 1\n"),
    ));
    let send = h2_client(gh.addr("rev")).await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        statuses.push(h2_fetch(&send, "GET", &format!("/r{i}"), None).await.0);
    }
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    // One access-log line per stream.
    for i in 0..5 {
        gh.wait_log(&format!("/r{i}"));
    }
}

// --- raw frames -----------------------------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields without indexing, names and values as given.
fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0, 7, n.len());
        out.extend_from_slice(n.as_bytes());
        hpack_int(&mut out, 0, 7, v.len());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// HEADERS with END_STREAM and END_HEADERS.
fn headers(stream: u32, fields: &[(&str, &str)]) -> Vec<u8> {
    frame(0x1, 0x5, stream, &block(fields))
}

const GET: [(&str, &str); 4] = [
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/"),
    (":authority", "app.test"),
];

/// Reads frames until `stop` says so or the connection closes: (type, flags, stream,
/// payload) in order.
async fn read_frames(
    s: &mut TcpStream,
    mut stop: impl FnMut(&[(u8, u8, u32, Vec<u8>)]) -> bool,
) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut frames = Vec::new();
    let read = async {
        loop {
            let mut h = [0u8; 9];
            if s.read_exact(&mut h).await.is_err() {
                break;
            }
            let n = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            let mut p = vec![0u8; n];
            if s.read_exact(&mut p).await.is_err() {
                break;
            }
            let id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            if h[3] == 0x4 && h[4] & 1 == 0 {
                // Acknowledge the server's SETTINGS.
                let _ = s.write_all(&frame(0x4, 0x1, 0, &[])).await;
            }
            frames.push((h[3], h[4], id, p));
            if stop(&frames) {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("frames in time");
    frames
}

/// Digits from an HPACK Huffman-coded string (RFC 7541 appendix B: `0`-`2` are 5-bit
/// codes 0-2, `3`-`9` 6-bit codes 0x19-0x1f; the padding is 1 bits).
fn huffman_digits(bytes: &[u8]) -> String {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut i = 0;
    let take = |i: usize, n: usize| -> Option<u8> {
        bits.get(i..i + n)
            .map(|b| b.iter().fold(0u8, |v, bit| (v << 1) | bit))
    };
    while let Some(v5) = take(i, 5) {
        if v5 <= 2 {
            out.push(char::from(b'0' + v5));
            i += 5;
            continue;
        }
        match take(i, 6) {
            Some(v6 @ 0x19..=0x1f) => {
                out.push(char::from(b'0' + v6 - 0x19 + 3));
                i += 6;
            }
            _ => break,
        }
    }
    out
}

/// What the server did with `stream`: `Some(0x3)` RST_STREAM, `Some(0x1)` a response
/// HEADERS (its first byte, the HPACK-coded `:status`, in `.1`).
fn fate(frames: &[(u8, u8, u32, Vec<u8>)], stream: u32) -> Option<(u8, u8)> {
    frames
        .iter()
        .find(|f| f.2 == stream && matches!(f.0, 0x1 | 0x3))
        .map(|f| (f.0, f.3.first().copied().unwrap_or(0)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_streams_are_refused_one_by_one_and_bad_frames_end_the_connection() {
    let origin = Origin::fixed("ok").await;
    let gh = Gatehouse::start(&config(
        "[listeners.http2]\nh2c = true\nmax_header_list_size = \"4KiB\"\n",
        &[origin.addr],
        "",
    ));
    let mut s = TcpStream::connect(gh.addr("rev")).await.expect("connect");
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    // 1: a connection-specific field.
    let mut f = GET.to_vec();
    f.push(("connection", "close"));
    out.extend(headers(1, &f));
    // 3: a pseudo-header after a regular field.
    out.extend(headers(
        3,
        &[
            (":method", "GET"),
            (":scheme", "http"),
            ("accept", "*/*"),
            (":path", "/"),
        ],
    ));
    // 5: a header list over max_header_list_size.
    let big = "x".repeat(8 * 1024);
    let mut f = GET.to_vec();
    f.push(("x-big", &big));
    out.extend(headers(5, &f));
    // 7: CONNECT (a tunnel is not for a reverse proxy).
    out.extend(headers(
        7,
        &[(":method", "CONNECT"), (":authority", "app.test:443")],
    ));
    // 9: extended CONNECT for a protocol other than WebSocket.
    out.extend(headers(
        9,
        &[
            (":method", "CONNECT"),
            (":protocol", "x-tunnel"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "app.test"),
        ],
    ));
    // 11: Host naming another authority.
    let mut f = GET.to_vec();
    f.push(("host", "other.test"));
    out.extend(headers(11, &f));
    // 13: fine.
    out.extend(headers(13, &GET));
    s.write_all(&out).await.expect("write");
    // Read until every stream has ended: reset, or a frame with END_STREAM (so the bodies
    // are in, not only the HEADERS).
    let frames = read_frames(&mut s, |f| {
        (1..=13).step_by(2).all(|id| {
            f.iter()
                .any(|f| f.2 == id && (f.0 == 0x3 || (matches!(f.0, 0x0 | 0x1) && f.1 & 0x1 != 0)))
        })
    })
    .await;
    for id in [1, 3] {
        assert_eq!(
            fate(&frames, id).map(|f| f.0),
            Some(0x3),
            "stream {id} reset: {frames:?}"
        );
    }
    let status_of = |id: u32| -> Option<String> {
        let f = frames.iter().find(|f| f.2 == id && f.0 == 0x1)?;
        // `:status`: from the static table (0x88 200 ... 0x8e 500), else a literal with
        // name index 8 whose value h2 writes Huffman-coded.
        let first = *f.3.first()?;
        let fixed = ["200", "204", "206", "304", "400", "404", "500"];
        if (0x88..=0x8e).contains(&first) {
            return Some(fixed[usize::from(first - 0x88)].into());
        }
        if first & 0x3f != 8 && first & 0x0f != 8 {
            return None;
        }
        let len = usize::from(*f.3.get(1)? & 0x7f);
        Some(huffman_digits(f.3.get(2..2 + len)?))
    };
    assert_eq!(status_of(5).as_deref(), Some("431"), "{frames:?}");
    // 7 (CONNECT) and 9 (another protocol than WebSocket) both get Gatehouse's 405. Their
    // answers go out in either order, and the second one's `:status` comes from the HPACK
    // dynamic table, so: the first in frame order carries a literal 405, and both bodies tell.
    let first_405 = frames
        .iter()
        .find(|f| f.0 == 0x1 && (f.2 == 7 || f.2 == 9))
        .map(|f| f.2)
        .expect("an answer to stream 7 or 9");
    assert_eq!(status_of(first_405).as_deref(), Some("405"), "{frames:?}");
    for id in [7, 9] {
        assert!(
            frames
                .iter()
                .any(|f| f.2 == id && f.0 == 0x0 && f.3 == b"CONNECT is not served here\n"),
            "stream {id}: {frames:?}"
        );
    }
    assert_eq!(status_of(11).as_deref(), Some("400"), "{frames:?}");
    assert_eq!(status_of(13).as_deref(), Some("200"), "{frames:?}");
    assert_eq!(
        origin.seen().len(),
        1,
        "only the good stream reached the server"
    );

    // An unknown pseudo-header is a connection error for h2: GOAWAY, then close.
    let mut f = GET.to_vec();
    f.push((":foo", "bar"));
    s.write_all(&headers(15, &f)).await.expect("write");
    let frames = read_frames(&mut s, |f| f.iter().any(|f| f.0 == 0x7)).await;
    assert!(frames.iter().any(|f| f.0 == 0x7), "GOAWAY: {frames:?}");
    // Frames that make no sense (DATA on stream 0) on a new connection: GOAWAY too.
    let mut s = TcpStream::connect(gh.addr("rev")).await.expect("connect");
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out.extend(frame(0x0, 0, 0, b"x"));
    s.write_all(&out).await.expect("write");
    let frames = read_frames(&mut s, |f| f.iter().any(|f| f.0 == 0x7)).await;
    assert!(frames.iter().any(|f| f.0 == 0x7), "GOAWAY: {frames:?}");
    // The server stays up for the next client.
    let send = h2_client(gh.addr("rev")).await;
    assert_eq!(h2_fetch(&send, "GET", "/after", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_told_goaway_after_keepalive_timeout() {
    let origin = Origin::fixed("ok").await;
    let gh = Gatehouse::start(&config(
        "keepalive_timeout = \"300ms\"\n[listeners.http2]\nh2c = true\n",
        &[origin.addr],
        "",
    ));
    let mut s = TcpStream::connect(gh.addr("rev")).await.expect("connect");
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out.extend(headers(1, &GET));
    s.write_all(&out).await.expect("write");
    // The answer, to its END_STREAM.
    let ended = |f: &[(u8, u8, u32, Vec<u8>)]| {
        f.iter()
            .any(|f| f.2 == 1 && matches!(f.0, 0x0 | 0x1) && f.1 & 0x1 != 0)
    };
    let frames = read_frames(&mut s, ended).await;
    assert!(ended(&frames), "{frames:?}");
    // Then nothing open: GOAWAY (h2 closes once the client acknowledges its PING).
    let frames = read_frames(&mut s, |f| f.iter().any(|f| f.0 == 0x7)).await;
    assert!(frames.iter().any(|f| f.0 == 0x7), "GOAWAY: {frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_response_keeps_its_trailers_and_loses_its_hop_fields() {
    // A server answering in chunks with trailer fields and a hop-by-hop field it names.
    let origin = raw_origin(|mut s: TcpStream| async move {
        if !read_head(&mut s).await {
            return;
        }
        let _ = s
            .write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: X-Hop\r\n\
                  X-Hop: 1\r\nKeep-Alive: timeout=5\r\nTrailer: grpc-status\r\n\r\n\
                  5\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\ngrpc-message: fine\r\n\r\n",
            )
            .await;
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    })
    .await;
    let gh = Gatehouse::start(&config("[listeners.http2]\nh2c = true\n", &[origin], ""));
    let send = h2_client(gh.addr("rev")).await;
    let mut ready = send.ready().await.expect("ready");
    let req = http::Request::builder()
        .uri("http://app.test/t")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (resp, _) = ready.send_request(req, true).expect("send");
    let resp = resp.await.expect("response");
    assert_eq!(resp.status(), 200);
    for hop in ["x-hop", "keep-alive", "connection", "transfer-encoding"] {
        assert!(
            !resp.headers().contains_key(hop),
            "{hop}: {:?}",
            resp.headers()
        );
    }
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(d) = body.data().await {
        got.extend_from_slice(&d.expect("data"));
    }
    assert_eq!(got, b"hello world");
    let trailers = body.trailers().await.expect("trailers").expect("some");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    assert_eq!(
        trailers.get("grpc-message").map(|v| v.as_bytes()),
        Some(&b"fine"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_h2_extended_connect_reaches_an_http11_server() {
    // A WebSocket echo server (tungstenite): it checks the HTTP/1.1 handshake.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let ws_addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        use futures_util::{SinkExt, StreamExt};
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
    let gh = Gatehouse::start(&config("[listeners.http2]\nh2c = true\n", &[ws_addr], ""));
    let send = h2_client(gh.addr("rev")).await;
    // A first stream: by its end the client knows the server allows extended CONNECT.
    let _ = h2_fetch(&send, "GET", "/", None).await;
    let mut ready = send.ready().await.expect("ready");
    let req = http::Request::builder()
        .method("CONNECT")
        .uri("http://app.test/chat")
        .header("sec-websocket-version", "13")
        .extension(h2::ext::Protocol::from("websocket"))
        .body(())
        .expect("request");
    let (resp, mut up) = ready.send_request(req, false).expect("extended CONNECT");
    let resp = resp.await.expect("response");
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
    assert!(!resp.headers().contains_key("sec-websocket-accept"));
    let mut down = resp.into_body();
    // A masked text frame "hello" (RFC 6455 section 5.2), twice.
    let mask = [1u8, 2, 3, 4];
    for _ in 0..2 {
        let mut f = vec![0x81, 0x80 | 5];
        f.extend_from_slice(&mask);
        f.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        up.reserve_capacity(f.len());
        up.send_data(Bytes::from(f), false).expect("send");
        // The echo: an unmasked text frame.
        let mut got = Vec::new();
        while got.len() < 7 {
            let d = tokio::time::timeout(Duration::from_secs(10), down.data())
                .await
                .expect("echo in time")
                .expect("open")
                .expect("data");
            down.flow_control()
                .release_capacity(d.len())
                .expect("release");
            got.extend_from_slice(&d);
        }
        assert_eq!(got, b"\x81\x05hello");
    }
    // The client closes its side: the tunnel ends.
    up.send_data(Bytes::from_static(&[0x88, 0x80, 0, 0, 0, 0]), true)
        .expect("close");
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(d) = down.data().await {
            if d.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the stream ends after the close");
}

/// A big chunked body (odd chunk sizes, chunk-size lines split across writes) with
/// trailers, for the test below: 1 MiB of `pattern(3, ..)`.
fn big_chunked() -> (Bytes, Vec<u8>) {
    let body = pattern(3, 1024 * 1024);
    let mut wire = Vec::new();
    for piece in body.chunks(7001) {
        wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        wire.extend_from_slice(piece);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\nx-digest: done\r\n\r\n");
    (body, wire)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_responses_pass_the_window_intact_and_a_reset_stream_leaves_others_alone() {
    // Each request: the head, then the chunked body in 1000-byte writes (so framing lines
    // straddle writes), then the trailers.
    let origin = raw_origin(|mut s: TcpStream| async move {
        while read_head(&mut s).await {
            let (_, wire) = big_chunked();
            let head =
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-digest\r\n\r\n";
            if s.write_all(head).await.is_err() {
                return;
            }
            for w in wire.chunks(1000) {
                if s.write_all(w).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let gh = Gatehouse::start(&config("[listeners.http2]\nh2c = true\n", &[origin], ""));
    let send = h2_client(gh.addr("rev")).await;
    let get = |path: &str| {
        http::Request::builder()
            .uri(format!("http://app.test{path}"))
            .header("te", "trailers")
            .body(())
            .expect("request")
    };
    // A stream the client gives up on after its first DATA frame.
    let mut ready = send.clone().ready().await.expect("ready");
    let (doomed, _) = ready.send_request(get("/doomed"), true).expect("send");
    // Two streams read to the end at the same time.
    let whole = |send: h2::client::SendRequest<Bytes>, path: &'static str| async move {
        let mut ready = send.ready().await.expect("ready");
        let req = http::Request::builder()
            .uri(format!("http://app.test{path}"))
            .header("te", "trailers")
            .body(())
            .expect("request");
        let (resp, _) = ready.send_request(req, true).expect("send");
        let resp = resp.await.expect("response");
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut got = Vec::new();
        while let Some(d) = body.data().await {
            let d = d.expect("data");
            body.flow_control()
                .release_capacity(d.len())
                .expect("release");
            got.extend_from_slice(&d);
        }
        let trailers = body.trailers().await.expect("trailers").expect("some");
        (got, trailers)
    };
    let a = tokio::spawn(whole(send.clone(), "/a"));
    let b = tokio::spawn(whole(send.clone(), "/b"));
    let doomed = doomed.await.expect("response");
    let mut db = doomed.into_body();
    let first = db.data().await.expect("a frame").expect("data");
    assert!(!first.is_empty());
    // The client resets the stream mid-body.
    drop(db);
    let (expected, _) = big_chunked();
    for t in [a, b] {
        let (got, trailers) = t.await.expect("task");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected[..], "the body came through unchanged");
        assert_eq!(
            trailers.get("x-digest").map(|v| v.as_bytes()),
            Some(&b"done"[..])
        );
    }
    // The connection is still good for more.
    let (got, _) = whole(send.clone(), "/after").await;
    assert_eq!(got.len(), expected.len());
}
