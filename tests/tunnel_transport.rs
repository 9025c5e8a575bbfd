//! End-to-end: the agent-relay transport. The plain TCP transport (`transport = "tcp"` on
//! both sides) carrying a SOCKS CONNECT and a published port; an agent and a relay whose
//! `transport` differs failing with a clear log line on both sides (never a hang); and the
//! agent's egress proxies (`http_proxy`, `socks_proxy`) with a login, served by Gatehouse's
//! own forward proxy and SOCKS listeners that require one.

mod common;
mod tunnel_util;

use std::net::SocketAddr;

use common::*;
use tunnel_util::{agent_config, Certs, NO_DNS, TOKEN};

/// A plain relay: agents on `agents` (no TLS), SOCKS through "office" on `socks`, its
/// service "web" on `web`.
fn plain_relay() -> String {
    format!(
        r#"
[[listeners]]
name = "agents"
kind = "tunnel"
listen = "127.0.0.1:0"
transport = "tcp"
heartbeat = "1s"
dead_after = "3s"
[[listeners.agents]]
name = "office"
token = "{TOKEN}"

[[listeners]]
name = "socks"
kind = "socks"
listen = "127.0.0.1:0"
via_agent = "office"

[[listeners]]
name = "web"
kind = "published"
listen = "127.0.0.1:0"
agent = "office"
service = "web"
"#
    )
}

/// A plain agent "office" dialling `relay`, allowing 127.0.0.1 and publishing `web`.
fn plain_agent(relay: SocketAddr, web: SocketAddr) -> String {
    format!(
        r#"
[agent]
name = "office"
token = "{TOKEN}"
relays = ["{relay}"]
transport = "tcp"
allow = ["127.0.0.1/32"]
heartbeat = "1s"
dead_after = "3s"
reconnect_min = "50ms"
reconnect_max = "500ms"
connect_timeout = "3s"

[agent.publish]
web = "{web}"
{NO_DNS}"#
    )
}

/// `[runtime] per_core` on both sides: the relay hands clients and the agent connection to
/// its workers (each client to the worker driving the link); the agent runs its relay
/// connection and that connection's streams on one worker. Concurrent clients through the
/// published port all get their answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_core_workers_carry_a_published_port_on_both_sides() {
    let origin = Origin::fixed("inside").await;
    let per_core = "[runtime]\nworkers = 2\nper_core = true\n";
    let relay = Gatehouse::start(&format!("{per_core}{}", plain_relay()));
    relay.wait_stderr("IN THE CLEAR");
    let agent = Gatehouse::start(&format!(
        "{per_core}{}",
        plain_agent(relay.addr("agents"), origin.addr)
    ));
    relay.wait_stderr("tunnel: agent connected");
    let web = relay.addr("web");
    let clients = (0..6).map(|i| async move {
        let url = format!("http://{web}/p{i}");
        curl(&[&url]).await
    });
    for (code, body, err) in futures_util::future::join_all(clients).await {
        assert_eq!((code, body.as_slice()), (0, &b"inside"[..]), "{err}");
    }
    assert_eq!(origin.seen().len(), 6);
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_transport_carries_socks_and_a_published_port() {
    let origin = Origin::fixed("inside").await;
    let relay = Gatehouse::start(&plain_relay());
    relay.wait_stderr("IN THE CLEAR");
    let agent = Gatehouse::start(&plain_agent(relay.addr("agents"), origin.addr));
    agent.wait_stderr("IN THE CLEAR");
    relay.wait_stderr("tunnel: agent connected");
    // SOCKS by a name only the agent resolves.
    let url = format!("http://inside.test:{}/", origin.addr.port());
    let socks = relay.addr("socks").to_string();
    let (code, body, err) = curl(&["--socks5-hostname", &socks, &url]).await;
    assert_eq!((code, body.as_slice()), (0, &b"inside"[..]), "{err}");
    // The published port, several clients at once.
    let web = format!("http://{}/", relay.addr("web"));
    let mut all = Vec::new();
    for _ in 0..10 {
        let web = web.clone();
        all.push(tokio::spawn(async move { curl(&[&web]).await }));
    }
    for t in all {
        let (code, body, err) = t.await.expect("task");
        assert_eq!((code, body.as_slice()), (0, &b"inside"[..]), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_agent_at_a_tls_relay_is_refused_with_a_clear_reason() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let relay = Gatehouse::start(&tunnel_util::tunnel_listener(&certs, false));
    let agent = Gatehouse::start(&plain_agent(relay.addr("agents"), origin.addr));
    let line = relay.wait_stderr("tunnel: agent refused");
    assert!(line.contains("plain TCP"), "{line}");
    let line = agent.wait_stderr("tunnel: disconnected from the relay");
    assert!(line.contains("the relay wants TLS"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_agent_at_a_plain_relay_is_refused_with_a_clear_reason() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let relay = Gatehouse::start(&plain_relay());
    let agent = Gatehouse::start(&agent_config(
        &certs,
        "office",
        &[relay.addr("agents")],
        "\"127.0.0.1/32\"",
        origin.addr,
    ));
    let line = relay.wait_stderr("tunnel: agent refused");
    assert!(line.contains("it speaks TLS"), "{line}");
    let line = agent.wait_stderr("tunnel: disconnected from the relay");
    assert!(
        line.contains("closed the connection during the TLS handshake"),
        "{line}"
    );
}

/// An agent config through the egress proxy `proxy_line` (`http_proxy = ...` or
/// `socks_proxy = ...` with the login lines), to a plain relay.
fn agent_via(relay: SocketAddr, web: SocketAddr, proxy_lines: &str) -> String {
    plain_agent(relay, web).replacen(
        "transport = \"tcp\"",
        &format!("transport = \"tcp\"\n{proxy_lines}"),
        1,
    )
}

/// An egress Gatehouse: an HTTP proxy `http` and a SOCKS listener `socks`, both requiring
/// a login (alice:wonderland) and reaching loopback only.
fn egress(dir: &std::path::Path) -> Gatehouse {
    let users = users_file(dir, &[("alice", "wonderland", "")]);
    Gatehouse::start(&format!(
        r#"{http}
[[listeners]]
name = "socks"
kind = "socks"
listen = "127.0.0.1:0"

[policy]
users_file = "{users}"
default = "deny"
[policy.listeners.http]
auth = true
[policy.listeners.socks]
auth = true
[[policy.rules]]
name = "loopback"
action = "allow"
dest_addrs = ["127.0.0.0/8"]
"#,
        http = http_listener("http", "connect_ports = [\"1-65535\"]"),
        users = users.display()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_logs_in_to_its_http_and_socks5_egress_proxies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let origin = Origin::fixed("inside").await;
    let relay = Gatehouse::start(&plain_relay());
    let egress = egress(dir.path());
    let pw_file = dir.path().join("proxy.password");
    std::fs::write(&pw_file, "wonderland\n").expect("password file");
    let web = format!("http://{}/", relay.addr("web"));

    // A wrong password: the proxy refuses, the agent says so and never connects.
    let wrong = Gatehouse::start(&agent_via(
        relay.addr("agents"),
        origin.addr,
        &format!(
            "http_proxy = \"{}\"\nproxy_user = \"alice\"\nproxy_password = \"nope\"",
            egress.addr("http")
        ),
    ));
    let line = wrong.wait_stderr("tunnel: cannot reach the relay");
    assert!(line.contains("through the HTTP proxy"), "{line}");
    drop(wrong);

    // HTTP CONNECT with Proxy-Authorization: Basic.
    let agent = Gatehouse::start(&agent_via(
        relay.addr("agents"),
        origin.addr,
        &format!(
            "http_proxy = \"{}\"\nproxy_user = \"alice\"\nproxy_password = \"wonderland\"",
            egress.addr("http")
        ),
    ));
    relay.wait_stderr("tunnel: agent connected");
    let (code, body, err) = curl(&[&web]).await;
    assert_eq!((code, body.as_slice()), (0, &b"inside"[..]), "{err}");
    drop(agent);
    let line = egress.wait_log("alice");
    assert!(line.contains(" CONNECT "), "{line}");
    assert!(line.contains(&relay.addr("agents").to_string()), "{line}");
    relay.wait_stderr("tunnel: agent disconnected");

    // SOCKS5 with an RFC 1929 login, the password from a file.
    let agent = Gatehouse::start(&agent_via(
        relay.addr("agents"),
        origin.addr,
        &format!(
            "socks_proxy = \"{}\"\nproxy_user = \"alice\"\nproxy_password_file = \"{}\"",
            egress.addr("socks"),
            pw_file.display()
        ),
    ));
    relay.wait_stderr("tunnel: agent connected");
    let (code, body, err) = curl(&[&web]).await;
    assert_eq!((code, body.as_slice()), (0, &b"inside"[..]), "{err}");
    drop(agent);
    let line = egress.wait_log("SOCKS5-CONNECT");
    assert!(line.contains(&relay.addr("agents").to_string()), "{line}");
    assert!(line.contains("alice"), "{line}");
}
