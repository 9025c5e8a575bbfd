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
}
