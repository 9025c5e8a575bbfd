//! The reverse proxy in operation: PROXY protocol from trusted balancers and to servers,
//! per-route metrics and access-log fields, reloads under load. Real binary, real sockets on
//! loopback, origins started here.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// Writes `bytes` on a new connection to the listener and reads until it closes.
async fn exchange(gh: &Gatehouse, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(gh.addr("rev")).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    String::from_utf8_lossy(&until_closed(&mut s).await).into_owned()
}

const GET: &[u8] = b"GET /x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n";

fn v1(src: &str, dst: &str) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) = (src.parse().expect("src"), dst.parse().expect("dst"));
    format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        s.ip(),
        d.ip(),
        s.port(),
        d.port()
    )
    .into_bytes()
}

fn v2(src: &str, dst: &str) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) = (src.parse().expect("src"), dst.parse().expect("dst"));
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (s, d) else {
        panic!("IPv4 only here")
    };
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[0x21, 0x11, 0, 12]);
    out.extend_from_slice(&s.ip().octets());
    out.extend_from_slice(&d.ip().octets());
    out.extend_from_slice(&s.port().to_be_bytes());
    out.extend_from_slice(&d.port().to_be_bytes());
    out
}

#[tokio::test]
async fn proxy_protocol_from_a_trusted_balancer_names_the_client() {
    let origin = Origin::fixed("hello").await;
    let gh = Gatehouse::start(&format!(
        "{}{}",
        listener(
            "accept_proxy_from = [\"127.0.0.1/32\"]\nforwarded = \"x-forwarded\"",
            &vhost("\"app.test\"", "p")
        ),
        pool("p", &[origin.addr], "")
    ));
    for (header, client) in [
        (v1("203.0.113.9:5555", "192.0.2.1:80"), "203.0.113.9:5555"),
        (v2("198.51.100.4:6000", "192.0.2.1:80"), "198.51.100.4:6000"),
    ] {
        let mut wire = header;
        wire.extend_from_slice(GET);
        let resp = exchange(&gh, &wire).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.ends_with("hello"), "{resp}");
        let seen = origin.seen();
        let xff = seen.last().and_then(|s| s.headers.get("x-forwarded-for"));
        let ip = client.split(':').next().unwrap_or_default();
        assert_eq!(xff.and_then(|v| v.to_str().ok()), Some(ip));
        let line = gh.wait_log(" GET ");
        assert_eq!(
            log_field(&line, 3),
            client,
            "the access log's client: {line}"
        );
    }
    // From the trusted balancer the header is required.
    let before = origin.seen().len();
    let resp = exchange(&gh, GET).await;
    assert_eq!(resp, "", "closed without an answer");
    let mut bad = b"PROXY TCP4 1.2.3.4\n".to_vec();
    bad.extend_from_slice(GET);
    assert_eq!(exchange(&gh, &bad).await, "");
    assert_eq!(origin.seen().len(), before, "nothing reached the server");
}

#[tokio::test]
async fn proxy_protocol_from_anyone_else_is_refused() {
    let origin = Origin::fixed("hello").await;
    // Loopback is not a trusted sender here.
    let gh = Gatehouse::start(&format!(
        "{}{}",
        listener(
            "accept_proxy_from = [\"192.0.2.0/24\"]",
            &vhost("\"app.test\"", "p")
        ),
        pool("p", &[origin.addr], "")
    ));
    for header in [
        v1("203.0.113.9:5555", "192.0.2.1:80"),
        v2("203.0.113.9:5555", "192.0.2.1:80"),
    ] {
        let mut wire = header;
        wire.extend_from_slice(GET);
        assert_eq!(exchange(&gh, &wire).await, "", "closed without an answer");
        let line = gh.wait_log(" 403 ");
        assert_eq!(log_field(&line, 3).split(':').next(), Some("127.0.0.1"));
    }
    assert!(origin.seen().is_empty(), "nothing reached the server");
    // A plain client is served as ever.
    let resp = exchange(&gh, GET).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

/// An origin that records the bytes before the request head (the PROXY header), then
/// answers `ok` and closes.
async fn proxy_origin() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = raw_origin(move |mut s: TcpStream| {
        let tx = tx.clone();
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            // The v2 header holds "\r\n\r\n" itself: find the request line first.
            let start = loop {
                if let Some(start) = buf.windows(4).position(|w| w == b"GET ") {
                    if buf[start..].windows(4).any(|w| w == b"\r\n\r\n") {
                        break start;
                    }
                }
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let _ = tx.send(buf[..start].to_vec());
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .await;
        }
    })
    .await;
    (addr, rx)
}

#[tokio::test]
async fn proxy_protocol_goes_to_servers_when_the_pool_says_so() {
    let (a, mut seen_a) = proxy_origin().await;
    let (b, mut seen_b) = proxy_origin().await;
    let hosts = format!(
        "{}{}",
        vhost("\"v1.test\"", "one"),
        vhost("\"v2.test\"", "two")
    );
    let gh = Gatehouse::start(&format!(
        "{}{}{}",
        listener("accept_proxy_from = [\"127.0.0.1/32\"]", &hosts),
        pool("one", &[a], "proxy_protocol = \"v1\""),
        pool("two", &[b], "proxy_protocol = \"v2\"")
    ));
    let rev = gh.addr("rev");
    let send = |host: &str| {
        let mut wire = v1("203.0.113.9:5555", "192.0.2.1:80");
        wire.extend_from_slice(
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        wire
    };
    let resp = exchange(&gh, &send("v1.test")).await;
    assert!(resp.ends_with("ok"), "{resp}");
    let got = tokio::time::timeout(Duration::from_secs(10), seen_a.recv())
        .await
        .expect("in time")
        .expect("a header");
    assert_eq!(
        String::from_utf8_lossy(&got),
        format!("PROXY TCP4 203.0.113.9 127.0.0.1 5555 {}\r\n", rev.port()),
        "the client the balancer named, and the address it reached"
    );
    let resp = exchange(&gh, &send("v2.test")).await;
    assert!(resp.ends_with("ok"), "{resp}");
    let got = tokio::time::timeout(Duration::from_secs(10), seen_b.recv())
        .await
        .expect("in time")
        .expect("a header");
    assert_eq!(got.len(), 28, "v2 header for TCP over IPv4: {got:?}");
    assert_eq!(&got[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(&got[12..14], &[0x21, 0x11], "PROXY command, TCP over IPv4");
    assert_eq!(&got[16..20], &[203, 0, 113, 9]);
    assert_eq!(&got[20..24], &[127, 0, 0, 1]);
    assert_eq!(&got[24..26], &5555u16.to_be_bytes());
    assert_eq!(&got[26..28], &rev.port().to_be_bytes());
}

#[tokio::test]
async fn routes_are_counted_and_logged() {
    let ok = Origin::fixed("ok").await;
    let failing = Origin::start(std::sync::Arc::new(|_: &Seen| {
        let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
            b"down",
        )));
        *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
        r
    }))
    .await;
    let hosts = r#"
[[listeners.hosts]]
names = ["app.test"]
[[listeners.hosts.routes]]
path = "/api"
name = "api"
pool = "bad"
[[listeners.hosts.routes]]
pool = "good"
"#;
    let gh = Gatehouse::start(&format!(
        "{}{}{}[admin]\nlisten = \"127.0.0.1:0\"\n[access_log]\nformat = \"json\"\n",
        listener("", hosts),
        pool("good", &[ok.addr], ""),
        pool("bad", &[failing.addr], "[pools.passive]\nmax_failures = 0")
    ));
    for path in ["/", "/page", "/api/x"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n");
        exchange(&gh, req.as_bytes()).await;
    }
    let mut lines = Vec::new();
    for _ in 0..3 {
        let line = gh.next_log_line();
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        lines.push(v);
    }
    let by_target = |t: &str| {
        lines
            .iter()
            .find(|v| v["target"].as_str().is_some_and(|x| x.ends_with(t)))
            .cloned()
            .unwrap_or_else(|| panic!("no record for {t}: {lines:?}"))
    };
    let page = by_target("/page");
    assert_eq!(page["route"], "app.test/");
    assert_eq!(page["pool"], "good");
    assert_eq!(page["server"], ok.addr.to_string());
    let api = by_target("/api/x");
    assert_eq!(api["route"], "api");
    assert_eq!(api["pool"], "bad");
    assert_eq!(api["server"], failing.addr.to_string());
    assert_eq!(api["status"], 502);

    let admin = gh.addr("admin");
    let text = metrics_text(admin).await;
    let has = |needle: &str| {
        assert!(
            text.lines().any(|l| l.starts_with(needle)),
            "{needle} not in\n{text}"
        )
    };
    has(r#"gatehouse_route_requests_total{listener="rev",route="app.test/",class="2xx"} 2"#);
    has(r#"gatehouse_route_requests_total{listener="rev",route="api",class="5xx"} 1"#);
    has(r#"gatehouse_route_upstream_seconds_count{listener="rev",route="app.test/"} 2"#);
    has(r#"gatehouse_route_upstream_seconds_count{listener="rev",route="api"} 1"#);
    has(r#"gatehouse_route_request_seconds_count{listener="rev",route="app.test/"} 2"#);
    has(r#"gatehouse_route_request_seconds_count{listener="rev",route="api"} 1"#);
}

/// A WebSocket echo server (tokio-tungstenite).
async fn ws_echo() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
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
    addr
}

// Multi-threaded: the load and the echo go on while the test waits for the reload's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_nothing_and_keeps_websockets() {
    use futures_util::{SinkExt, StreamExt};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio_tungstenite::tungstenite::Message;

    let a = Origin::fixed("a").await;
    let b = Origin::fixed("b").await;
    let ws_addr = ws_echo().await;
    let config = |main: &str| {
        let hosts = format!(
            "[[listeners.hosts]]\nnames = [\"app.test\"]\n\
             [[listeners.hosts.routes]]\npath = \"/ws\"\npool = \"ws\"\n\
             [[listeners.hosts.routes]]\npool = \"{main}\"\n"
        );
        format!(
            "{}{}{}{}",
            listener("", &hosts),
            pool("a", &[a.addr], ""),
            pool("b", &[b.addr], ""),
            pool("ws", &[ws_addr], "")
        )
    };
    let gh = Gatehouse::start(&config("a"));
    let rev = gh.addr("rev");

    let tcp = TcpStream::connect(rev).await.expect("connect");
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://app.test/ws", tcp)
        .await
        .expect("handshake through the proxy");
    assert_eq!(resp.status(), 101);
    let mut echo = async |text: String| {
        ws.send(Message::text(text.clone())).await.expect("send");
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo in time")
            .expect("a message")
            .expect("ok");
        assert_eq!(got.into_text().expect("text").as_str(), text);
    };
    echo("before".into()).await;

    // The load: 4 clients, 500 requests each, a new connection per request.
    const CLIENTS: usize = 4;
    const EACH: usize = 500;
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..CLIENTS {
        let (failed, done) = (failed.clone(), done.clone());
        load.push(tokio::spawn(async move {
            for _ in 0..EACH {
                let got = async {
                    let mut s = TcpStream::connect(rev).await.map_err(|e| e.to_string())?;
                    s.write_all(GET).await.map_err(|e| e.to_string())?;
                    let mut out = Vec::new();
                    s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
                    let text = String::from_utf8_lossy(&out).into_owned();
                    if text.starts_with("HTTP/1.1 200")
                        && (text.ends_with('a') || text.ends_with('b'))
                    {
                        Ok(())
                    } else {
                        Err(text)
                    }
                };
                match tokio::time::timeout(Duration::from_secs(10), got).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failed.lock().expect("lock").push(e),
                    Err(_) => failed.lock().expect("lock").push("timed out".into()),
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // Reloads while the load runs: the main route moves between pools.
    for (i, main) in ["b", "a", "b"].into_iter().enumerate() {
        let target = (i + 1) * CLIENTS * EACH / 4;
        while done.load(Ordering::SeqCst) < target {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        std::fs::write(gh.config_path(), config(main)).expect("rewrite config");
        gh.signal("HUP");
        tokio::task::block_in_place(|| gh.wait_stderr("applied"));
        echo(format!("after reload {i}")).await;
    }
    for t in load {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("load finished in time")
            .expect("load task");
    }
    let failed = failed.lock().expect("lock").clone();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert_eq!(done.load(Ordering::SeqCst), CLIENTS * EACH);
    // The last reload is in force: the main route goes to pool b, on the same port.
    let resp = exchange(&gh, GET).await;
    assert!(resp.ends_with('b'), "{resp}");
    echo("the end".into()).await;
}

#[tokio::test]
async fn own_error_pages_replace_server_5xx_pages() {
    let failing = Origin::start(std::sync::Arc::new(|s: &Seen| {
        let body: &'static [u8] = if s.uri == "/ok" {
            b"fine"
        } else {
            b"Traceback: secret.py line 7"
        };
        let mut r =
            hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(body)));
        if s.uri != "/ok" {
            *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        }
        r
    }))
    .await;
    let gh = Gatehouse::start(&format!(
        "{}{}",
        listener("own_error_pages = true", &vhost("\"app.test\"", "p")),
        pool("p", &[failing.addr], "[pools.passive]\nmax_failures = 0")
    ));
    let resp = exchange(&gh, GET).await;
    assert!(resp.starts_with("HTTP/1.1 500"), "{resp}");
    assert!(
        resp.ends_with("\r\n\r\n500 Internal Server Error\n"),
        "{resp}"
    );
    assert!(!resp.contains("secret"), "{resp}");
    // Anything else passes as sent, and the connection stays usable after a replaced page.
    let mut s = TcpStream::connect(gh.addr("rev")).await.expect("connect");
    s.write_all(
        b"GET /x HTTP/1.1\r\nHost: app.test\r\n\r\nGET /ok HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let both = String::from_utf8_lossy(&until_closed(&mut s).await).into_owned();
    assert!(both.starts_with("HTTP/1.1 500"), "{both}");
    assert!(both.ends_with("fine"), "{both}");
}

#[tokio::test]
async fn text_and_squid_lines_carry_route_pool_and_server() {
    let ok = Origin::fixed("ok").await;
    for format in ["text", "squid", "combined"] {
        let gh = Gatehouse::start(&format!(
            "{}{}[access_log]\nformat = \"{format}\"\n",
            listener("", &vhost("\"app.test\"", "good")),
            pool("good", &[ok.addr], ""),
        ));
        exchange(&gh, GET).await;
        let routed = gh.next_log_line();
        exchange(
            &gh,
            b"GET / HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        let unrouted = gh.next_log_line();
        let f: Vec<&str> = routed.split_whitespace().collect();
        let g: Vec<&str> = unrouted.split_whitespace().collect();
        let server = ok.addr.to_string();
        match format {
            // The 14 fields, then the three for a routed request only.
            "text" => {
                assert_eq!(f.len(), 17, "{routed}");
                assert_eq!(f[14..], ["app.test/", "good", server.as_str()], "{routed}");
                assert_eq!(g.len(), 14, "{unrouted}");
                assert_eq!(g[6], "404", "{unrouted}");
            }
            // The ten native fields, then the three for a routed request only.
            "squid" => {
                assert_eq!(f[3], "TCP_MISS/200", "{routed}");
                assert_eq!(f.len(), 13, "{routed}");
                assert_eq!(f[10..], ["app.test/", "good", server.as_str()], "{routed}");
                assert_eq!(g[3], "TCP_MISS/404", "{unrouted}");
                assert_eq!(g.len(), 10, "{unrouted}");
            }
            // Apache's combined format, unchanged.
            _ => {
                assert!(routed.ends_with("\"-\" \"-\""), "{routed}");
                assert!(!routed.contains("good"), "{routed}");
            }
        }
    }
}
