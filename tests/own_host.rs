//! End-to-end: the destination guard covers the proxy's own host. A service bound to 0.0.0.0
//! must not be reachable through any door by the host's interface address, a listener on
//! 0.0.0.0 must not reach itself, an address added while the proxy runs is refused too, and a
//! request whose Via already names this proxy is answered 508.
//!
//! The tests that need a non-loopback local address re-execute this test binary under
//! `unshare -n` (a private network namespace, with `GATEHOUSE_TEST_NETNS` set) and give it
//! `lo` and a veth pair with 10.200.0.0/24 addresses: nothing outside the namespace is touched
//! and no packet leaves it. They need permission to create a network namespace (root, as
//! CI runs); without it they fail and say so.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const INSIDE: &str = "GATEHOUSE_TEST_NETNS";
/// The host's own non-loopback address inside the namespace.
const OWN: &str = "10.200.0.1";
const T: Duration = Duration::from_secs(10);

/// Outside the namespace: runs `test` again inside a fresh one and returns false (the caller
/// returns). Inside: sets up the network and returns true (the caller runs the test body).
fn inside_private_netns(test: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        for args in [
            "link set lo up",
            "link add gh0 type veth peer name gh1",
            "addr add 10.200.0.1/24 dev gh0",
            "addr add fd00:200::1/64 dev gh0 nodad",
            "link set gh0 up",
            "link set gh1 up",
        ] {
            ip(args);
        }
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new("unshare")
        .arg("-n")
        .arg("--")
        .arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `unshare` ({e}): this test needs util-linux's unshare")
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.starts_with("unshare:") {
        panic!(
            "`unshare -n` is not permitted here: {stderr}\nThis test needs permission to create \
             a network namespace (run it as root or with CAP_SYS_ADMIN, as CI does)."
        );
    }
    assert!(
        out.status.success(),
        "inside the namespace:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "the test did not run inside the namespace:\n{stdout}\n{stderr}"
    );
    false
}

fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Gatehouse with an HTTP and a SOCKS listener on 0.0.0.0; loopback allowed explicitly (so
/// only the own-listener check stands between a listener and itself).
fn wildcard_gatehouse() -> Gatehouse {
    Gatehouse::start(&format!(
        r#"
[[listeners]]
name = "http"
kind = "http"
listen = "0.0.0.0:0"
connect_ports = ["1-65535"]
[[listeners]]
name = "socks"
kind = "socks"
listen = "0.0.0.0:0"
[dns.hosts]
"host.test" = "{OWN}"
[policy.listeners.http]
open = true
[policy.listeners.socks]
open = true
{LOOPBACK_POLICY}"#
    ))
}

/// A listener's port on 127.0.0.1 (it is bound to 0.0.0.0).
fn local(gh: &Gatehouse, name: &str) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], gh.addr(name).port()))
}

/// An origin on 0.0.0.0 that answers every connection with "ok" and counts connections.
async fn wildcard_origin() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("0.0.0.0:0").await.expect("bind origin");
    let port = listener.local_addr().expect("addr").port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = read_head(&mut s).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (port, count)
}

/// CONNECT `target` through the HTTP proxy: the response head.
async fn connect(proxy: SocketAddr, target: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).await.expect("connect to proxy");
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send CONNECT");
    let head = head_text(&mut s).await;
    (s, head)
}

/// Reads up to the end of a response head.
async fn head_text(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    let read = async {
        while !out.ends_with(b"\r\n\r\n") {
            match s.read(&mut b).await {
                Ok(1) => out.push(b[0]),
                _ => break,
            }
        }
    };
    tokio::time::timeout(T, read)
        .await
        .expect("a head within 10s");
    String::from_utf8_lossy(&out).into_owned()
}

/// "GET /" over an open tunnel or connection; the whole answer.
async fn get_through(mut s: TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nHost: origin\r\n\r\n")
        .await
        .expect("request");
    String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned()
}

async fn socks5_connect(proxy: SocketAddr, request: Vec<u8>) -> (u8, TcpStream) {
    let mut s = socks5_open(proxy).await;
    s.write_all(&request).await.expect("request");
    let (rep, _) = socks5_reply(&mut s).await;
    (rep, s)
}

/// A SOCKS4 (or SOCKS4a with `name`) CONNECT: the reply code.
async fn socks4_connect(proxy: SocketAddr, ip: [u8; 4], port: u16, name: Option<&str>) -> u8 {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    let mut req = vec![4, 1];
    req.extend_from_slice(&port.to_be_bytes());
    req.extend_from_slice(&ip);
    req.push(0);
    if let Some(n) = name {
        req.extend_from_slice(n.as_bytes());
        req.push(0);
    }
    s.write_all(&req).await.expect("request");
    let mut r = [0u8; 8];
    tokio::time::timeout(T, s.read_exact(&mut r))
        .await
        .expect("reply within 10s")
        .expect("reply");
    r[1]
}

#[tokio::test]
async fn every_door_refuses_a_service_on_the_hosts_own_address() {
    if !inside_private_netns("every_door_refuses_a_service_on_the_hosts_own_address") {
        return;
    }
    let (port, accepted) = wildcard_origin().await;
    let gh = wildcard_gatehouse();
    let (http, socks) = (local(&gh, "http"), local(&gh, "socks"));
    let own: SocketAddr = format!("{OWN}:{port}").parse().expect("addr");
    let lo: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    // The service really is reachable on the host's address: only the proxy refuses it.
    drop(
        TcpStream::connect(own)
            .await
            .expect("origin on the own address"),
    );
    let mut controls = 1;

    // HTTP, by address and by a name that resolves to it; loopback (allowed) as the control.
    let proxy = format!("http://{http}");
    for url in [
        format!("http://{own}/"),
        format!("http://host.test:{port}/"),
    ] {
        let (code, out, err) = curl(&["-s", "-i", "-x", &proxy, &url]).await;
        let text = String::from_utf8_lossy(&out);
        assert_eq!(code, 0, "{err}");
        assert!(text.starts_with("HTTP/1.1 403"), "{url}: {text}");
        assert!(text.contains("own-address"), "{url}: {text}");
    }
    let (_, out, _) = curl(&["-s", "-x", &proxy, &format!("http://{lo}/")]).await;
    assert_eq!(out, b"ok", "control: the origin through loopback");
    controls += 1;

    // CONNECT.
    for target in [own.to_string(), format!("host.test:{port}")] {
        let (_, head) = connect(http, &target).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{target}: {head}");
    }
    let (s, head) = connect(http, &lo.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(get_through(s).await.ends_with("ok"));
    controls += 1;
    // The host's IPv6 address (a ULA, which only `refuse_private` would refuse otherwise).
    let own6: SocketAddr = format!("[fd00:200::1]:{port}").parse().expect("addr");
    let (_, head) = connect(http, &own6.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{own6}: {head}");
    assert!(head.contains("own-address"), "{head}");
    assert_eq!(socks5_connect(socks, socks5_request(1, own6)).await.0, 2);

    // SOCKS5 CONNECT, by address and by name.
    assert_eq!(socks5_connect(socks, socks5_request(1, own)).await.0, 2);
    let by_name = socks5_request_name(1, "host.test", port);
    assert_eq!(socks5_connect(socks, by_name).await.0, 2);
    let (rep, s) = socks5_connect(socks, socks5_request(1, lo)).await;
    assert_eq!(rep, 0, "control");
    assert!(get_through(s).await.ends_with("ok"));
    controls += 1;

    // SOCKS4 and SOCKS4a.
    assert_eq!(socks4_connect(socks, [10, 200, 0, 1], port, None).await, 91);
    let name = Some("host.test");
    assert_eq!(socks4_connect(socks, [0, 0, 0, 1], port, name).await, 91);
    assert_eq!(socks4_connect(socks, [127, 0, 0, 1], port, None).await, 90);
    controls += 1;

    // SOCKS5 UDP ASSOCIATE: the datagram to the own address is dropped, the one to loopback
    // (sent after it on the same association) comes back.
    let echo = UdpEcho::start("0.0.0.0:0").await;
    let (_control, relay) = socks5_associate(socks).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    client
        .connect(("127.0.0.1", relay.port()))
        .await
        .expect("connect to the relay");
    let own_udp = SocketAddr::new(OWN.parse().expect("ip"), echo.addr.port());
    let lo_udp = SocketAddr::from(([127, 0, 0, 1], echo.addr.port()));
    let dropped = socks5_datagram(own_udp, b"to the own address");
    client.send(&dropped).await.expect("send");
    client
        .send(&socks5_datagram(lo_udp, b"control"))
        .await
        .expect("send");
    let mut buf = vec![0u8; 65536];
    let n = tokio::time::timeout(T, client.recv(&mut buf))
        .await
        .expect("the control datagram's echo")
        .expect("recv");
    assert!(buf[..n].ends_with(b"control"));
    assert_eq!(echo.seen(), [b"control".to_vec()], "nothing else arrived");

    assert_eq!(
        accepted.load(Ordering::SeqCst),
        controls,
        "the origin saw only the direct probe and the controls"
    );
    // The access log names the refusal.
    assert!(gh.wait_log(OWN).contains("guard"));
}

#[tokio::test]
async fn a_wildcard_listener_cannot_reach_itself() {
    if !inside_private_netns("a_wildcard_listener_cannot_reach_itself") {
        return;
    }
    let (port, _) = wildcard_origin().await;
    let gh = wildcard_gatehouse();
    let (http, socks) = (local(&gh, "http"), local(&gh, "socks"));
    // Loopback is allowed by a rule, and so is every port: only the own-listener check can
    // stop a tunnel into the proxy's own ports.
    let (s, head) = connect(http, &format!("127.0.0.1:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "control: {head}");
    drop(s);
    for own_port in [http.port(), socks.port()] {
        for host in ["127.0.0.1", "127.0.0.2", OWN, "0.0.0.0", "localhost"] {
            let target = format!("{host}:{own_port}");
            let (_, head) = connect(http, &target).await;
            assert!(head.starts_with("HTTP/1.1 403"), "CONNECT {target}: {head}");
        }
        let to_self = SocketAddr::from(([127, 0, 0, 1], own_port));
        assert_eq!(
            socks5_connect(socks, socks5_request(1, to_self)).await.0,
            2,
            "SOCKS5 to {to_self}"
        );
        let mut s = TcpStream::connect(http).await.expect("connect");
        let req = format!("GET http://{to_self}/ HTTP/1.1\r\nHost: {to_self}\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("send");
        let head = head_text(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 403"), "GET {to_self}: {head}");
    }
    let line = gh.wait_log(&format!("127.0.0.1:{}", http.port()));
    assert!(line.ends_with(" guard"), "{line}");
}

#[tokio::test]
async fn an_address_added_after_start_is_refused() {
    if !inside_private_netns("an_address_added_after_start_is_refused") {
        return;
    }
    let (port, _) = wildcard_origin().await;
    let gh = wildcard_gatehouse();
    let http = local(&gh, "http");
    ip("addr add 10.200.0.9/24 dev gh0");
    let added = format!("10.200.0.9:{port}");
    drop(
        TcpStream::connect(&added)
            .await
            .expect("the new address works"),
    );
    // The proxy learns of the address from the kernel's notification: poll briefly (bounded).
    let mut last = String::new();
    for _ in 0..100 {
        let (_, head) = connect(http, &added).await;
        if head.starts_with("HTTP/1.1 403") {
            assert!(head.contains("own-address"), "{head}");
            let socks = local(&gh, "socks");
            let to = added.parse().expect("addr");
            assert_eq!(socks5_connect(socks, socks5_request(1, to)).await.0, 2);
            return;
        }
        last = head;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{added} still reachable through the proxy 5s after it was added: {last}");
}

/// Needs no namespace: a request that already went through this proxy (its Via pseudonym)
/// is answered 508 and not forwarded; another proxy's Via is forwarded.
#[tokio::test]
async fn a_request_carrying_our_own_via_is_a_loop() {
    let origin = Origin::fixed("reached").await;
    let gh = Gatehouse::start(&format!(
        "{}{}",
        http_listener("http", &format!("connect_ports = [{}]", origin.addr.port())),
        http_listener("edge", "via = \"edge-7\"")
    ));
    let url = origin.url("/");
    let via = |v: &'static str| format!("Via: {v}");
    let (code, out, err) = curl(&[
        "-s",
        "-i",
        "-x",
        &gh.proxy_url("http"),
        "-H",
        &via("1.1 other, 1.1 gatehouse"),
        &url,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 508 Loop Detected"), "{text}");
    assert!(text.contains("error=proxy_loop_detected"), "{text}");
    assert_eq!(origin.seen().len(), 0, "not forwarded");
    // CONNECT too.
    let mut s = TcpStream::connect(gh.addr("http")).await.expect("connect");
    let target = format!("127.0.0.1:{}", origin.addr.port());
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nVia: 1.1 gatehouse\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send");
    assert!(head_text(&mut s).await.starts_with("HTTP/1.1 508"));
    // Another proxy's pseudonym, or ours at a listener with another one, is no loop.
    for (listener, v) in [("http", "1.1 edge-7"), ("edge", "1.1 gatehouse")] {
        let (_, out, _) = curl(&["-s", "-x", &gh.proxy_url(listener), "-H", &via(v), &url]).await;
        assert_eq!(out, b"reached", "{listener} with Via {v}");
    }
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    let vias: Vec<_> = seen[1]
        .headers
        .get_all("via")
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .collect();
    assert_eq!(vias, ["1.1 gatehouse", "1.1 edge-7"]);
}

/// A real loop between two proxies that route everything to each other: the request comes
/// back to the first one with its own pseudonym in Via and ends there with 508.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_routing_to_each_other_stop_at_508() {
    let origin = Origin::fixed("never reached").await;
    let a_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let route_to = |name: &str, addr: String| {
        format!(
            "[[policy.parents]]\nname = \"{name}\"\nurl = \"http://{addr}\"\n\
             [[policy.rules]]\nname = \"loop\"\naction = \"route\"\nparents = [\"{name}\"]\n"
        )
    };
    let b = Gatehouse::start(&format!(
        "{}{}",
        http_listener("b", "via = \"b-proxy\""),
        route_to("a", format!("127.0.0.1:{a_port}"))
    ));
    let a = Gatehouse::start(&format!(
        "[[listeners]]\nname = \"a\"\nkind = \"http\"\nlisten = \"127.0.0.1:{a_port}\"\n\
         via = \"a-proxy\"\n{}",
        route_to("b", b.addr("b").to_string())
    ));
    let (code, out, err) = curl(&[
        "-s",
        "-i",
        "-m",
        "10",
        "-x",
        &a.proxy_url("a"),
        &origin.url("/"),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 508"), "{text}");
    assert!(
        text.contains("a-proxy; error=proxy_loop_detected"),
        "{text}"
    );
    assert_eq!(origin.seen().len(), 0);
}

/// A listener added by a reload is one of the proxy's own at once.
#[tokio::test]
async fn a_listener_added_by_reload_is_refused_as_a_destination() {
    let first = http_listener("http", "connect_ports = [\"1-65535\"]");
    let gh = Gatehouse::start(&first);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let added = format!(
        "{first}[[listeners]]\nname = \"added\"\nkind = \"socks\"\nlisten = \"127.0.0.1:{port}\"\n\
         {LOOPBACK_POLICY}"
    );
    std::fs::write(gh.config_path(), added).expect("rewrite config");
    gh.signal("HUP");
    gh.wait_stderr("applied");
    let (_, head) = connect(gh.addr("http"), &format!("127.0.0.1:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(head.contains("own-listener"), "{head}");
}
