//! End-to-end: `route` rules through parent proxies (a second Gatehouse as the HTTP parent,
//! with credentials and failover) for plain HTTP and CONNECT, and the per-client limits seen
//! through the proxy: requests per second, concurrent connections, bandwidth.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The parent: a plain HTTP proxy with its own name in Via, password required.
fn start_parent(dir: &std::path::Path, extra_ports: &str) -> Gatehouse {
    let users = users_file(dir, &[("child", "chain-secret", "")]);
    Gatehouse::start(&format!(
        "{}[policy]\nusers_file = \"{}\"\n[policy.listeners.parent]\nauth = true\n{LOOPBACK_POLICY}",
        http_listener("parent", &format!("via = \"parent\"\nconnect_ports = [{extra_ports}]")),
        users.display()
    ))
}

fn child_config(listener_extra: &str, parent: &Gatehouse, route: &str) -> String {
    format!(
        r#"{listener}
[[policy.parents]]
name = "dead"
url = "http://127.0.0.1:{dead}"
[[policy.parents]]
name = "p"
url = "http://{parent}"
username = "child"
password = "chain-secret"
[[policy.rules]]
name = "via-parent"
action = "route"
parents = {route}
dest_addrs = ["127.0.0.0/8"]
"#,
        listener = http_listener("http", listener_extra),
        dead = free_port(),
        parent = parent.addr("parent"),
    )
}

// Multi-threaded: the echo server runs while the test waits on the parent's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_and_connect_through_a_parent_with_failover() {
    let dir = tempfile::tempdir().expect("tmp");
    let origin = Origin::fixed("via the parent").await;
    let echo = echo_server().await;
    let parent = start_parent(dir.path(), &echo.port().to_string());
    let gh = Gatehouse::start(&child_config(
        &format!("connect_ports = [{}]", echo.port()),
        &parent,
        "[\"dead\", \"p\"]",
    ));
    // Plain HTTP: absolute-form to the parent, which reaches the origin.
    let (code, body, err) = curl(&["-x", &gh.proxy_url("http"), &origin.url("/chained")]).await;
    assert_eq!(
        (code, body.as_slice()),
        (0, &b"via the parent"[..]),
        "{err}"
    );
    let seen = &origin.seen()[0];
    let via: Vec<_> = seen
        .headers
        .get_all("via")
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .collect();
    assert!(
        via.iter().any(|v| v.contains("gatehouse")) && via.iter().any(|v| v.contains("parent")),
        "{via:?}"
    );
    assert!(
        seen.headers.get("proxy-authorization").is_none(),
        "credentials stop at the parent"
    );
    let line = parent.wait_log("GET");
    assert!(line.contains(" child "), "the parent saw our login: {line}");
    // CONNECT: a tunnel through the parent.
    let mut s = open_tunnel(gh.addr("http"), echo).await;
    s.write_all(b"through two proxies").await.expect("write");
    let mut back = [0u8; 19];
    s.read_exact(&mut back).await.expect("echo");
    assert_eq!(&back, b"through two proxies");
    // The tunnel's log line is written when it ends.
    drop(s);
    let line = parent.wait_log("CONNECT");
    assert!(
        line.contains(&echo.to_string()) && line.contains(" child "),
        "{line}"
    );
}

#[tokio::test]
async fn every_parent_failing_is_a_502_with_the_parent_named() {
    let dir = tempfile::tempdir().expect("tmp");
    let parent = start_parent(dir.path(), "443");
    let cfg = child_config("", &parent, "[\"dead\"]");
    let gh = Gatehouse::start(&cfg);
    let (code, out, err) = curl(&["-x", &gh.proxy_url("http"), "-i", "http://127.0.0.1:9/"]).await;
    assert_eq!(code, 0, "{err}");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert!(text.contains("next-hop=\"dead\""), "{text}");
}

#[tokio::test]
async fn requests_per_second_per_client() {
    let origin = Origin::fixed("ok").await;
    let cfg = format!(
        "{}[limits.per_client]\nrequests_per_second = 2\n",
        http_listener("http", "")
    );
    let gh = Gatehouse::start(&cfg);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (_, out, _) = curl(&[
            "-x",
            &gh.proxy_url("http"),
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &origin.url("/"),
        ])
        .await;
        statuses.push(String::from_utf8_lossy(&out).into_owned());
    }
    assert_eq!(statuses[0], "200", "{statuses:?}");
    assert!(statuses.iter().any(|s| s == "429"), "{statuses:?}");
}

/// Opens a connection and sends one keep-alive GET through it: `Some` once the response
/// came back (the connection was served and holds a slot), `None` if it was closed first.
async fn served(proxy: std::net::SocketAddr, origin: &Origin) -> Option<TcpStream> {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n\r\n",
        origin.url("/"),
        origin.addr
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer or a close in time")
            .ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Some(s)
}

#[tokio::test]
async fn concurrent_connections_per_client() {
    let origin = Origin::fixed("ok").await;
    let cfg = format!(
        "{}[limits.per_client]\nmax_connections = 2\n",
        http_listener("http", "")
    );
    let gh = Gatehouse::start(&cfg);
    let proxy = gh.addr("http");
    // Each connection is served (its response read back) before the next one opens: the
    // workers accept in parallel, so only a served connection surely holds its slot.
    let a = served(proxy, &origin).await.expect("the first is served");
    let _b = served(proxy, &origin).await.expect("the second is served");
    // Both slots taken: a third is closed at once, before any request.
    let mut c = TcpStream::connect(proxy)
        .await
        .expect("c connects at TCP level");
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("closed promptly");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "third connection was served: {n:?}"
    );
    // A slot given back is taken again: the server notices the close on its own time, so
    // the new connection may still find both slots held for a moment.
    drop(a);
    let again = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(s) = served(proxy, &origin).await {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(again.is_ok(), "the freed slot was never given out again");
}

// Multi-threaded: the source server keeps writing while the test reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_down_limit_is_observed_on_tunnels() {
    const SIZE: usize = 768 * 1024;
    let source = raw_origin(|mut s: TcpStream| async move {
        let _ = s.write_all(&vec![7u8; SIZE]).await;
    })
    .await;
    let cfg = format!(
        "{}[limits.per_client]\nbandwidth_down = \"256KiB\"\n",
        http_listener("http", &format!("connect_ports = [{}]", source.port()))
    );
    let gh = Gatehouse::start(&cfg);
    let mut s = TcpStream::connect(gh.addr("http")).await.expect("connect");
    s.write_all(format!("CONNECT {source} HTTP/1.1\r\nHost: {source}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let started = Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut got))
        .await
        .expect("done in time")
        .expect("read");
    let elapsed = started.elapsed().as_secs_f64();
    let head_len = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .expect("head");
    assert_eq!(got.len() - head_len, SIZE);
    // 768 KiB at 256 KiB/s with a burst of 1/8 s: about 2.9 s. Allow for a busy machine.
    assert!((2.2..6.0).contains(&elapsed), "took {elapsed:.2}s");
}

// Multi-threaded: the origin keeps writing while the test reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_down_limit_applies_to_http_bodies() {
    const SIZE: usize = 768 * 1024;
    let origin = raw_origin(|mut s: TcpStream| async move {
        let mut buf = vec![0u8; 4096];
        let _ = s.read(&mut buf).await;
        let head =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n");
        let _ = s.write_all(head.as_bytes()).await;
        let _ = s.write_all(&vec![9u8; SIZE]).await;
    })
    .await;
    let cfg = format!(
        "{}[limits.per_client]\nbandwidth_down = \"256KiB\"\n",
        http_listener("http", "")
    );
    let gh = Gatehouse::start(&cfg);
    let started = Instant::now();
    let (code, out, err) = curl(&[
        "-x",
        &gh.proxy_url("http"),
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        &format!("http://{origin}/big"),
    ])
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(code, 0, "{err}");
    assert_eq!(String::from_utf8_lossy(&out), SIZE.to_string());
    assert!((2.2..6.0).contains(&elapsed), "took {elapsed:.2}s");
}
