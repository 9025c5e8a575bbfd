//! Message framing the proxy refuses or normalises, both directions (requests from clients,
//! responses from scripted raw origins), Upgrade's allow-list, login before local answers,
//! and access-log byte counts of transfers that broke off.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// A raw origin: for every connection, reads one request head (sent to the returned channel)
/// and answers with `answer`, then closes when `close` (else keeps reading).
async fn scripted(
    answer: &'static [u8],
    close: bool,
) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = raw_origin(move |mut s| {
        let tx = tx.clone();
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let _ = tx.send(String::from_utf8_lossy(&buf[..end + 4]).into_owned());
                    buf.drain(..end + 4);
                    if s.write_all(answer).await.is_err() || close {
                        return;
                    }
                    continue;
                }
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        }
    })
    .await;
    (addr, rx)
}

/// Sends `req`, half-closes and reads the whole answer.
async fn raw(proxy: SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(proxy).await.expect("connect proxy");
    s.write_all(req.as_bytes()).await.expect("send");
    s.shutdown().await.expect("half-close");
    String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned()
}

fn get(origin: SocketAddr, path: &str) -> String {
    format!("GET http://{origin}{path} HTTP/1.1\r\nHost: {origin}\r\n\r\n")
}

fn head_of(text: &str) -> String {
    text.split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

async fn recv_head(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("origin got a request in time")
        .expect("origin head")
}

#[tokio::test]
async fn agreeing_content_length_list_goes_upstream_as_one_value() {
    let (origin, mut rx) = scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true).await;
    let gh = Gatehouse::start(&http_listener("http", ""));
    let req = format!(
        "POST http://{origin}/p HTTP/1.1\r\nHost: {origin}\r\nContent-Length: 5, 5\r\n\r\nhello"
    );
    let text = raw(gh.addr("http"), &req).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let up = recv_head(&mut rx).await.to_ascii_lowercase();
    assert!(up.contains("content-length: 5\r\n"), "{up}");
    assert!(!up.contains("5, 5"), "{up}");
}

#[tokio::test]
async fn header_names_that_read_as_framing_fields_are_refused() {
    let (origin, mut rx) = scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true).await;
    let gh = Gatehouse::start(&http_listener("http", ""));
    for field in ["Transfer_Encoding: chunked", "Content_Length: 5"] {
        let req = format!(
            "POST http://{origin}/p HTTP/1.1\r\nHost: {origin}\r\n{field}\r\nContent-Length: 5\r\n\r\nhello"
        );
        let text = raw(gh.addr("http"), &req).await;
        assert!(text.starts_with("HTTP/1.1 400"), "{field}: {text}");
    }
    assert!(rx.try_recv().is_err(), "nothing reached the origin");
}

#[tokio::test]
async fn bad_chunk_after_the_head_went_up_closes_both_and_says_why() {
    let (tx, mut closed) = mpsc::unbounded_channel::<Vec<u8>>();
    // An origin that reads everything it is sent until the proxy closes.
    let origin = raw_origin(move |mut s| {
        let tx = tx.clone();
        async move {
            let mut all = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all)).await;
            let _ = tx.send(all);
        }
    })
    .await;
    let gh = Gatehouse::start(&http_listener("http", ""));
    for bad in [
        "5 6\r\nhello\r\n0\r\n\r\n",
        "5\nhello\r\n0\r\n\r\n",
        "0000000000000005\r\nhello\r\n0\r\n\r\n",
        "0\r\nnot a field\r\n\r\n",
    ] {
        let req = format!(
            "POST http://{origin}/p HTTP/1.1\r\nHost: {origin}\r\nTransfer-Encoding: chunked\r\n\r\n{bad}"
        );
        let text = raw(gh.addr("http"), &req).await;
        assert!(text.starts_with("HTTP/1.1 400"), "{bad:?}: {text}");
        assert!(head_of(&text).contains("connection: close"), "{text}");
        let up = tokio::time::timeout(Duration::from_secs(10), closed.recv())
            .await
            .expect("upstream connection closed")
            .expect("origin bytes");
        assert!(
            !String::from_utf8_lossy(&up).contains("hello\r\n0"),
            "{bad:?}"
        );
        let line = gh.wait_log(&format!(" POST http://{origin}/p "));
        assert_eq!(log_field(&line, 7), "400", "{line}");
        assert_eq!(log_field(&line, 13), "http_request_error", "{line}");
    }
}

#[tokio::test]
async fn response_with_both_lengths_is_passed_on_chunked_only() {
    let (origin, _rx) = scripted(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        true,
    )
    .await;
    let gh = Gatehouse::start(&http_listener("http", ""));
    let text = raw(gh.addr("http"), &get(origin, "/both")).await;
    let head = head_of(&text);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(!head.contains("content-length"), "{text}");
    assert!(head.contains("transfer-encoding: chunked"), "{text}");
    assert!(text.ends_with("5\r\nhello\r\n0\r\n\r\n"), "{text}");
}

#[tokio::test]
async fn a_transfer_coding_without_chunked_is_kept_and_read_until_close() {
    let (origin, _rx) = scripted(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 2\r\n\r\nGZIPPEDBYTES",
        true,
    )
    .await;
    let gh = Gatehouse::start(&http_listener("http", ""));
    let text = raw(gh.addr("http"), &get(origin, "/gz")).await;
    let head = head_of(&text);
    assert!(head.contains("transfer-encoding: gzip, chunked"), "{text}");
    assert!(!head.contains("content-length"), "{text}");
    assert!(text.ends_with("c\r\nGZIPPEDBYTES\r\n0\r\n\r\n"), "{text}");
}

#[tokio::test]
async fn differing_response_lengths_are_502() {
    let (origin, _rx) = scripted(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        true,
    )
    .await;
    let gh = Gatehouse::start(&http_listener("http", ""));
    let text = raw(gh.addr("http"), &get(origin, "/cl")).await;
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
}

#[tokio::test]
async fn no_content_loses_its_length_and_body() {
    // A 204 that claims a body, then (on the same connection) the real next response.
    let (origin, mut rx) = scripted(
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nHTTP/",
        false,
    )
    .await;
    let gh = Gatehouse::start(&http_listener("http", ""));
    let text = raw(
        gh.addr("http"),
        &format!("{}{}", get(origin, "/a"), get(origin, "/b")),
    )
    .await;
    assert_eq!(text.matches("HTTP/1.1 204").count(), 2, "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("content-length"),
        "{text}"
    );
    assert!(
        !text.contains("HTTP/\r\n") && !text.ends_with("HTTP/"),
        "{text}"
    );
    recv_head(&mut rx).await;
    recv_head(&mut rx).await;
}

#[tokio::test]
async fn endless_informational_responses_are_502() {
    let (origin, _rx) = scripted(
        b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        true,
    )
    .await;
    let gh = Gatehouse::start(&http_listener("http", ""));
    let text = raw(gh.addr("http"), &get(origin, "/1xx")).await;
    assert_eq!(text.matches("HTTP/1.1 102").count(), 8, "{text}");
    assert!(text.contains("HTTP/1.1 502"), "{text}");
    assert!(!text.contains("HTTP/1.1 200"), "{text}");
}

fn upgrade(origin: SocketAddr, protocols: &str) -> String {
    format!(
        "GET http://{origin}/ws HTTP/1.1\r\nHost: {origin}\r\nConnection: Upgrade\r\nUpgrade: {protocols}\r\n\r\n"
    )
}

#[tokio::test]
async fn upgrade_only_to_listed_protocols() {
    let (origin, mut rx) = scripted(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
        true,
    )
    .await;
    let gh = Gatehouse::start(&http_listener("http", ""));
    // h2c is not in the default list: the offer is dropped, and a 101 to it is refused.
    let text = raw(gh.addr("http"), &upgrade(origin, "h2c")).await;
    let up = recv_head(&mut rx).await.to_ascii_lowercase();
    assert!(!up.contains("upgrade"), "{up}");
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    let text = raw(gh.addr("http"), &upgrade(origin, "websocket, h2c")).await;
    let up = recv_head(&mut rx).await.to_ascii_lowercase();
    assert!(up.contains("upgrade: websocket\r\n"), "{up}");
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");

    // Listed: the 101 passes and the connection becomes a tunnel.
    let gh = Gatehouse::start(&http_listener(
        "http",
        "upgrade_protocols = [\"websocket\", \"h2c\"]",
    ));
    let text = raw(gh.addr("http"), &upgrade(origin, "h2c")).await;
    let up = recv_head(&mut rx).await.to_ascii_lowercase();
    assert!(up.contains("upgrade: h2c\r\n"), "{up}");
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
}

#[tokio::test]
async fn auth_listener_logs_in_before_local_answers() {
    let (origin, mut rx) = scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true).await;
    let dir = tempfile::tempdir().expect("tmp");
    let users = users_file(dir.path(), &[("alice", "wonderland", "")]);
    let cfg = format!(
        r#"{l}
[policy]
users_file = "{users}"
[policy.listeners.http]
auth = true
[[policy.rules]]
name = "loopback"
action = "allow"
dest_addrs = ["127.0.0.0/8"]
"#,
        l = http_listener("http", ""),
        users = users.display()
    );
    let gh = Gatehouse::start(&cfg);
    let proxy = gh.addr("http");
    let trace =
        format!("TRACE http://{origin}/t HTTP/1.1\r\nHost: {origin}\r\nMax-Forwards: 0\r\n");
    let text = raw(proxy, &format!("{trace}\r\n")).await;
    assert!(text.starts_with("HTTP/1.1 407"), "{text}");
    // alice:wonderland
    let creds = "Proxy-Authorization: Basic YWxpY2U6d29uZGVybGFuZA==\r\n";
    let text = raw(proxy, &format!("{trace}{creds}\r\n")).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("message/http"), "{text}");
    assert!(rx.try_recv().is_err(), "answered by the proxy");

    // CONNECT to a refused port: 407 first, then 403 with the user in the log.
    let connect = "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n";
    let text = raw(proxy, &format!("{connect}\r\n")).await;
    assert!(text.starts_with("HTTP/1.1 407"), "{text}");
    let text = raw(proxy, &format!("{connect}{creds}\r\n")).await;
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    let line = gh.wait_log(" CONNECT 127.0.0.1:22 ");
    let line = if log_field(&line, 7) == "407" {
        gh.wait_log(" CONNECT 127.0.0.1:22 ")
    } else {
        line
    };
    assert_eq!(
        (log_field(&line, 4), log_field(&line, 7)),
        ("alice", "403"),
        "{line}"
    );
}

#[tokio::test]
async fn broken_transfers_log_the_bytes_moved() {
    // Download: the origin promises 4 MiB, sends 1 MiB and closes.
    let origin = raw_origin(|mut s| async move {
        if read_head(&mut s).await {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4194304\r\n\r\n")
                .await;
            let _ = s.write_all(&vec![b'x'; 1 << 20]).await;
        }
    })
    .await;
    let gh = Gatehouse::start(&http_listener("http", ""));
    let mut s = TcpStream::connect(gh.addr("http")).await.expect("connect");
    s.write_all(get(origin, "/big").as_bytes())
        .await
        .expect("send");
    let got = read_to_close(&mut s).await;
    assert!(got.len() > 1 << 20, "{}", got.len());
    let line = gh.wait_log(&format!(" GET http://{origin}/big "));
    assert_eq!(log_field(&line, 7), "200", "{line}");
    let out: u64 = log_field(&line, 9).parse().expect("bytes out");
    assert!(out >= 1 << 20, "{line}");

    // Upload: the client sends 1 MiB of a 4 MiB body and goes away.
    let sink = raw_origin(|mut s| async move {
        let mut all = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all)).await;
    })
    .await;
    let mut s = TcpStream::connect(gh.addr("http")).await.expect("connect");
    let head = format!(
        "POST http://{sink}/up HTTP/1.1\r\nHost: {sink}\r\nContent-Length: 4194304\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("head");
    s.write_all(&vec![b'y'; 1 << 20]).await.expect("body");
    drop(s);
    let line = gh.wait_log(&format!(" POST http://{sink}/up "));
    let bytes_in: u64 = log_field(&line, 8).parse().expect("bytes in");
    assert!(bytes_in >= 1 << 20, "{line}");
}

#[tokio::test]
async fn background_refresh_gives_up_on_endless_informational_responses() {
    // The first request gets a stale-while-revalidate response; any later one (the
    // background refresh) gets 102s until the proxy stops reading.
    let (gave_up, mut gave_up_rx) = mpsc::unbounded_channel::<usize>();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let origin = raw_origin(move |mut s| {
        let (gave_up, seen) = (gave_up.clone(), seen.clone());
        async move {
            while read_head(&mut s).await {
                if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    let first = "HTTP/1.1 200 OK\r\nCache-Control: max-age=1, stale-while-revalidate=600\r\nAge: 30\r\nContent-Length: 2\r\n\r\nv1";
                    if s.write_all(first.as_bytes()).await.is_err() {
                        return;
                    }
                    continue;
                }
                for n in 0..20_000 {
                    if s.write_all(b"HTTP/1.1 102 Processing\r\n\r\n").await.is_err() {
                        let _ = gave_up.send(n);
                        return;
                    }
                }
                // Still reading after 20,000: never signal.
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
        }
    })
    .await;
    let c = Cached::start();
    let url = format!("http://{origin}/swr");
    c.get(&url, &[]).await;
    let r = fetch(&c.client, "GET", &url, &[]).await;
    assert_eq!(r.text(), "v1");
    let n = tokio::time::timeout(Duration::from_secs(15), gave_up_rx.recv())
        .await
        .expect("the refresh stopped reading 1xx responses")
        .expect("signal");
    assert!(n < 20_000, "{n}");
}
