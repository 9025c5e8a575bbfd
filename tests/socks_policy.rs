//! End-to-end: the SOCKS listener obeys the one policy - the safe-by-default guard, host and
//! port rules, logins against the policy's users file with groups and the failed-login
//! limiter, SOCKS4 USERID as a name, routes through a parent proxy, per-datagram checks for
//! UDP, BIND checks, and the per-client request limit. Driven by curl and by raw bytes.
//!
//! Multi-threaded runtime: `wait_log` blocks its thread while in-process servers answer.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const LOOPBACK: &str = "127.0.0.1:0";

/// SOCKS5 CONNECT over raw bytes (no login): the reply code.
async fn raw_connect(proxy: SocketAddr, request: &[u8]) -> (u8, TcpStream) {
    let mut s = socks5_open(proxy).await;
    s.write_all(request).await.expect("request");
    let (rep, _) = socks5_reply(&mut s).await;
    (rep, s)
}

/// RFC 1929 login over raw bytes: the sub-negotiation status, and the stream.
async fn raw_login(proxy: SocketAddr, user: &str, password: &str) -> (u8, TcpStream) {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(&[5, 1, 2]).await.expect("greeting");
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await.expect("method");
    assert_eq!(m, [5, 2], "username/password chosen");
    let mut msg = vec![1, user.len() as u8];
    msg.extend_from_slice(user.as_bytes());
    msg.push(password.len() as u8);
    msg.extend_from_slice(password.as_bytes());
    s.write_all(&msg).await.expect("credentials");
    let mut st = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut st))
        .await
        .expect("status within 10s")
        .expect("status");
    (st[1], s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_refuses_loopback_by_default_even_through_a_name() {
    let origin = Origin::fixed("should not be reached").await;
    let cfg = format!(
        "{}[dns.hosts]\n\"innocent.test\" = \"127.0.0.1\"\n[policy]\ndefault = \"allow\"\n",
        socks_listener("s", "")
    );
    let gh = Gatehouse::start(&cfg);
    let proxy = gh.addr("s").to_string();
    // curl: reply 2 is "connection not allowed by ruleset", a proxy error (97).
    let (code, _, err) = curl(&["--socks5", &proxy, &origin.url("/")]).await;
    assert_eq!(code, 97, "{err}");
    let line = gh.wait_log("SOCKS5-CONNECT");
    assert!(
        line.contains(&format!(" {} 2 ", origin.addr)) && line.ends_with(" denied guard"),
        "reply 2, error and rule last: {line}"
    );
    // A name that resolves to loopback is refused the same way (checked after resolving).
    let url = format!("http://innocent.test:{}/", origin.addr.port());
    let (code, _, err) = curl(&["--socks5-hostname", &proxy, &url]).await;
    assert_eq!(code, 97, "{err}");
    assert!(gh.wait_log("innocent.test").ends_with(" guard"));
    // SOCKS4 gets its one failure code; the metadata address is refused before any packet.
    let (code, _, _) = curl(&["--socks4", &proxy, &origin.url("/")]).await;
    assert_ne!(code, 0);
    assert!(gh.wait_log("SOCKS4-CONNECT").contains(" 91 "));
    let (rep, _s) = raw_connect(
        gh.addr("s"),
        &socks5_request(1, "169.254.169.254:80".parse().expect("addr")),
    )
    .await;
    assert_eq!(rep, 2);
    assert_eq!(origin.connection_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_rule_denies_one_name_without_resolving_it() {
    let origin = Origin::fixed("fine").await;
    let dns = Dns::start(&[("good.test", [127, 0, 0, 1].into())], 60).await;
    let cfg = format!(
        r#"{listener}{dns}
[policy]
default = "allow"
[[policy.rules]]
name = "no-blocked"
action = "deny"
hosts = ["blocked.test"]
{LOOPBACK_POLICY}"#,
        listener = socks_listener("s", ""),
        dns = dns.config(),
    );
    let gh = Gatehouse::start(&cfg);
    let proxy = gh.addr("s").to_string();
    let port = origin.addr.port();
    let (code, body, err) = curl(&[
        "--socks5-hostname",
        &proxy,
        &format!("http://good.test:{port}/"),
    ])
    .await;
    assert_eq!((code, body.as_slice()), (0, &b"fine"[..]), "{err}");
    assert!(gh.wait_log("good.test").ends_with(" tests-reach-loopback"));
    let before = dns.queries.load(std::sync::atomic::Ordering::SeqCst);
    let (code, _, err) = curl(&[
        "--socks5-hostname",
        &proxy,
        &format!("http://blocked.test:{port}/"),
    ])
    .await;
    assert_eq!(code, 97, "{err}");
    let line = gh.wait_log("blocked.test");
    assert!(
        line.contains(" 2 ") && line.ends_with(" denied no-blocked"),
        "{line}"
    );
    assert_eq!(
        dns.queries.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "a host rule decides without a lookup"
    );
    assert_eq!(origin.connection_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_against_the_users_file_with_groups_and_the_failed_login_limiter() {
    let origin = Origin::fixed("welcome").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let users = users_file(
        dir.path(),
        &[("alice", "wonderland", "staff"), ("bob", "builder", "")],
    );
    let cfg = format!(
        r#"{listener}
[policy]
users_file = "{users}"
default = "deny"
[policy.listeners.s]
auth = true
[policy.failed_logins]
max_failures = 3
window = "1m"
[[policy.rules]]
name = "staff-only"
action = "allow"
groups = ["staff"]
dest_addrs = ["127.0.0.0/8"]
"#,
        listener = socks_listener("s", ""),
        users = users.display()
    );
    let gh = Gatehouse::start(&cfg);
    let proxy = gh.addr("s").to_string();
    let url = origin.url("/");
    // Staff: through, and the log names the user and the rule.
    let (code, body, err) =
        curl(&["--socks5", &proxy, "--proxy-user", "alice:wonderland", &url]).await;
    assert_eq!((code, body.as_slice()), (0, &b"welcome"[..]), "{err}");
    let line = gh.wait_log("SOCKS5-CONNECT");
    assert!(
        line.contains(" alice ") && line.ends_with(" staff-only"),
        "{line}"
    );
    // Logged in, not staff: the default denies.
    let (code, _, err) = curl(&["--socks5", &proxy, "--proxy-user", "bob:builder", &url]).await;
    assert_eq!(code, 97, "{err}");
    let line = gh.wait_log("SOCKS5-CONNECT");
    assert!(
        line.contains(" bob ") && line.ends_with(" denied default"),
        "{line}"
    );
    // No login offered: no acceptable method. SOCKS4 cannot log in at all.
    let mut s = TcpStream::connect(gh.addr("s")).await.expect("connect");
    s.write_all(&[5, 1, 0]).await.expect("greeting");
    assert_eq!(read_to_close(&mut s).await, [5, 0xFF]);
    let (code, _, _) = curl(&["--socks4", &proxy, &url]).await;
    assert_ne!(code, 0);
    assert!(gh.wait_log("SOCKS4").contains("auth_required"));
    // Wrong passwords: status 1 each time, then the address is blocked and even the right
    // password is refused without being checked.
    for _ in 0..4 {
        let (status, _) = raw_login(gh.addr("s"), "alice", "wrong").await;
        assert_eq!(status, 1);
    }
    let line = gh.wait_log("auth_failed");
    assert!(
        line.contains(" alice "),
        "the attempted name is logged: {line}"
    );
    let (status, _) = raw_login(gh.addr("s"), "alice", "wonderland").await;
    assert_eq!(status, 1, "blocked address");
    gh.wait_log("login_blocked");
    assert_eq!(origin.connection_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks4_userid_is_a_name_only_when_the_policy_says_so() {
    let echo = tcp_echo().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let users = users_file(dir.path(), &[("carol", "unused", "ops")]);
    let cfg = format!(
        r#"{listener}
[policy]
users_file = "{users}"
default = "deny"
[policy.listeners.s]
socks4_userid = true
[[policy.rules]]
name = "ops"
action = "allow"
groups = ["ops"]
dest_addrs = ["127.0.0.0/8"]
"#,
        listener = socks_listener("s", ""),
        users = users.display()
    );
    let gh = Gatehouse::start(&cfg);
    let socks4 = |user: &str| {
        let mut v = vec![4, 1];
        v.extend_from_slice(&echo.port().to_be_bytes());
        v.extend_from_slice(&[127, 0, 0, 1]);
        v.extend_from_slice(user.as_bytes());
        v.push(0);
        v
    };
    for (user, want, rule) in [("carol", 90, " ops"), ("dave", 91, " default")] {
        let mut s = TcpStream::connect(gh.addr("s")).await.expect("connect");
        s.write_all(&socks4(user)).await.expect("request");
        let mut reply = [0u8; 8];
        s.read_exact(&mut reply).await.expect("reply");
        assert_eq!(reply[1], want, "{user}");
        drop(s);
        let line = gh.wait_log("SOCKS4-CONNECT");
        assert!(
            line.contains(&format!(" {user} ")) && line.ends_with(rule),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_routed_through_a_parent_and_direct_fallback_is_guarded() {
    let echo = tcp_echo().await;
    let parent = Gatehouse::start(&http_listener(
        "parent",
        &format!("via = \"parent\"\nconnect_ports = [{}]", echo.port()),
    ));
    let dead = std::net::TcpListener::bind(LOOPBACK)
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let cfg = format!(
        r#"{listener}
[[policy.parents]]
name = "p"
url = "http://{parent}"
[[policy.parents]]
name = "dead"
url = "http://{dead}"
[[policy.rules]]
name = "fallback-direct"
action = "route"
parents = ["dead", "direct"]
dest_addrs = ["127.0.0.2/32"]
[[policy.rules]]
name = "via-parent"
action = "route"
parents = ["p"]
dest_addrs = ["127.0.0.0/8"]
"#,
        listener = socks_listener("s", ""),
        parent = parent.addr("parent"),
    );
    let gh = Gatehouse::start(&cfg);
    let (rep, mut s) = raw_connect(gh.addr("s"), &socks5_request(1, echo)).await;
    assert_eq!(rep, 0);
    s.write_all(b"through the parent").await.expect("write");
    let mut back = [0u8; 18];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .expect("echo within 10s")
        .expect("echo");
    assert_eq!(&back, b"through the parent");
    s.shutdown().await.expect("shutdown");
    assert!(read_to_close(&mut s).await.is_empty());
    let line = gh.wait_log("SOCKS5-CONNECT");
    assert!(
        line.contains(&format!(" {} ", parent.addr("parent"))) && line.ends_with(" via-parent"),
        "upstream is the parent: {line}"
    );
    assert!(parent.wait_log("CONNECT").contains(&echo.to_string()));
    // The parent is down and `direct` would reach loopback: the guard refuses it.
    let target: SocketAddr = format!("127.0.0.2:{}", echo.port()).parse().expect("addr");
    let (rep, _s) = raw_connect(gh.addr("s"), &socks5_request(1, target)).await;
    assert_eq!(rep, 2);
    let line = gh.wait_log("127.0.0.2");
    assert!(
        line.contains("destination_ip_prohibited") && line.ends_with(" fallback-direct"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_is_checked_and_cannot_be_routed() {
    let cfg = format!(
        r#"{listener}
[policy]
default = "allow"
[[policy.parents]]
name = "p"
url = "http://127.0.0.1:9"
[[policy.rules]]
name = "routed"
action = "route"
parents = ["p"]
hosts = ["routed.test"]
"#,
        listener = socks_listener("s", ""),
    );
    let gh = Gatehouse::start(&cfg);
    // The expected peer is loopback: the guard refuses it, nothing is bound.
    let (rep, _s) = raw_connect(
        gh.addr("s"),
        &socks5_request(2, "127.0.0.1:0".parse().expect("addr")),
    )
    .await;
    assert_eq!(rep, 2);
    assert!(gh.wait_log("SOCKS5-BIND").ends_with(" denied guard"));
    let (rep, _s) = raw_connect(gh.addr("s"), &socks5_request_name(2, "routed.test", 21)).await;
    assert_eq!(rep, 2);
    let line = gh.wait_log("SOCKS5-BIND");
    assert!(line.ends_with(" route_unsupported routed"), "{line}");
}

fn v4_target(a: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(a) = a else { panic!("v4") };
    [&[1][..], &a.ip().octets(), &a.port().to_be_bytes()].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_are_checked_one_by_one() {
    let allowed = UdpEcho::start(LOOPBACK).await;
    let denied = UdpEcho::start(LOOPBACK).await;
    let cfg = format!(
        r#"{listener}
[dns.hosts]
"blocked.test" = "127.0.0.1"
[policy]
default = "allow"
[[policy.rules]]
name = "no-port"
action = "deny"
ports = [{denied_port}]
protocols = ["socks-udp"]
[[policy.rules]]
name = "no-name"
action = "deny"
hosts = ["blocked.test"]
{LOOPBACK_POLICY}"#,
        listener = socks_listener("s", ""),
        denied_port = denied.addr.port(),
    );
    let gh = Gatehouse::start(&cfg);
    let (mut control, relay) = socks5_associate(gh.addr("s")).await;
    let client = UdpSocket::bind(LOOPBACK).await.expect("bind");
    client.connect(relay).await.expect("connect");
    let header = |target: &[u8]| [&[0, 0, 0][..], target].concat();
    let name = [
        &[3, 12][..],
        b"blocked.test",
        &allowed.addr.port().to_be_bytes(),
    ]
    .concat();
    for (target, payload) in [
        (v4_target(denied.addr), &b"to the denied port"[..]),
        (name, b"to the denied name"),
        (v4_target(allowed.addr), b"allowed"),
    ] {
        client
            .send(&[header(&target), payload.to_vec()].concat())
            .await
            .expect("send");
    }
    // The relay handles datagrams in order: once "allowed" is echoed, the others were seen.
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(10), client.recv(&mut buf))
        .await
        .expect("a datagram within 10s")
        .expect("recv");
    assert_eq!(&buf[10..n], b"allowed");
    assert_eq!(allowed.seen(), [b"allowed".to_vec()]);
    assert!(denied.seen().is_empty());
    control.shutdown().await.expect("close control");
    let line = gh.wait_log("SOCKS5-UDP");
    assert!(
        line.ends_with(" no-port"),
        "the first denial's rule: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_second_limit_refuses_a_command() {
    let echo = tcp_echo().await;
    let gh = Gatehouse::start(&format!(
        "{}[limits.per_client]\nrequests_per_second = 1\n",
        socks_listener("s", "")
    ));
    let (first, _a) = raw_connect(gh.addr("s"), &socks5_request(1, echo)).await;
    let (second, _b) = raw_connect(gh.addr("s"), &socks5_request(1, echo)).await;
    assert_eq!((first, second), (0, 2));
    gh.wait_log("request_rate_limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_down_limit_applies_to_socks_relays() {
    const SIZE: usize = 384 * 1024;
    let source = raw_origin(|mut s: TcpStream| async move {
        let _ = s.write_all(&vec![7u8; SIZE]).await;
    })
    .await;
    let gh = Gatehouse::start(&format!(
        "{}[limits.per_client]\nbandwidth_down = \"256KiB\"\n",
        socks_listener("s", "")
    ));
    let started = std::time::Instant::now();
    let (rep, mut s) = raw_connect(gh.addr("s"), &socks5_request(1, source)).await;
    assert_eq!(rep, 0);
    let got = read_to_close(&mut s).await;
    let took = started.elapsed();
    assert_eq!(got.len(), SIZE);
    // 384 KiB at 256 KiB/s with a one-second burst: at least about half a second.
    assert!(took >= Duration::from_millis(400), "took {took:?}");
}
