//! End-to-end: live reload on SIGHUP. A valid config takes effect for new connections at once
//! (policy, listeners added and removed) while established tunnels keep going; an invalid one
//! changes nothing.

mod common;

use common::*;
use tokio::net::TcpStream;

// Multi-threaded: the echo server keeps running while the test blocks on the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_config_and_keeps_tunnels() {
    let echo_addr = echo_server().await;
    let origin = Origin::fixed("allowed").await;
    let listener = http_listener("http", &format!("connect_ports = [{}]", echo_addr.port()));
    let allow = format!("{listener}\n[[policy.rules]]\nname = \"loopback\"\naction = \"allow\"\ndest_addrs = [\"127.0.0.0/8\"]\n");
    let gh = Gatehouse::start(&allow);
    let proxy = gh.addr("http");
    let (_, out, _) = curl(&["-x", &gh.proxy_url("http"), &origin.url("/")]).await;
    assert_eq!(out, b"allowed");
    let mut t = open_tunnel(proxy, echo_addr).await;
    echo_roundtrip(&mut t, b"before reload").await;

    // New config: the same listener, a deny-all policy, and a second listener.
    let deny = format!(
        "{listener}\n{}\n[policy]\ndefault = \"deny\"\n",
        http_listener("second", "")
    );
    std::fs::write(gh.config_path(), &deny).expect("rewrite config");
    gh.signal("HUP");
    let ready = gh.wait_stderr("listener=second");
    gh.wait_stderr("applied");
    let second: std::net::SocketAddr = ready
        .split("addr=")
        .nth(1)
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .expect("second listener address in the log");

    // The established tunnel kept its old policy and still works.
    echo_roundtrip(&mut t, b"after reload").await;
    // New requests get the new policy, on both listeners.
    for p in [proxy, second] {
        let (_, out, _) = curl(&["-x", &format!("http://{p}"), "-i", &origin.url("/")]).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 403"), "{p}: {text}");
    }

    // An invalid config changes nothing.
    std::fs::write(gh.config_path(), "[[listeners]]\nname = 1\n").expect("rewrite config");
    gh.signal("HUP");
    gh.wait_stderr("keeping the running config");
    let (_, out, _) = curl(&["-x", &format!("http://{second}"), "-i", &origin.url("/")]).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 403"));
    echo_roundtrip(&mut t, b"still here").await;

    // Removing the second listener closes it; the first stays.
    std::fs::write(
        gh.config_path(),
        deny.replace(&http_listener("second", ""), ""),
    )
    .expect("rewrite");
    gh.signal("HUP");
    gh.wait_stderr("applied");
    assert!(
        TcpStream::connect(second).await.is_err(),
        "removed listener still accepts"
    );
    assert!(TcpStream::connect(proxy).await.is_ok());
    echo_roundtrip(&mut t, b"end").await;
}
