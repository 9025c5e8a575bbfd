//! End-to-end: reverse tunnels with the real binary in both roles. A relay (tunnel listener,
//! a SOCKS listener `via_agent`, a published port) and an agent dialling it; targets the
//! client reaches only through the agent.
//!
//! Most tests run on loopback, where "inside" is shown by names only the agent resolves
//! (`[dns.hosts]` in the agent's config) and by the agent's allow-list. The private-network
//! test puts the agent and its target in a network namespace of their own (see
//! [`a_target_inside_a_private_network_is_reached_only_through_the_agent`]).

mod common;
mod tunnel_util;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tunnel_util::{Certs, NO_DNS, TOKEN};

const T: Duration = Duration::from_secs(10);

/// A relay: agents on `agents`, SOCKS through "office" on `socks`, its service "web" on `web`.
fn relay_config(certs: &Certs, extra_agents: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "agents"
kind = "tunnel"
listen = "127.0.0.1:0"
tls = {{ cert = "{crt}", key = "{key}" }}
heartbeat = "1s"
dead_after = "3s"
[[listeners.agents]]
name = "office"
token = "{TOKEN}"
{extra_agents}
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
"#,
        crt = certs.crt().display(),
        key = certs.key().display(),
    )
}

/// An agent "office" dialling `relays`, checking the relay with `verify` (a `ca = ...` or
/// `fingerprint = ...` line), allowing `allow`, publishing `web` as "web", and resolving
/// `inside.test` to 127.0.0.1 (a name the relay cannot resolve).
fn agent_config(
    relays: &[SocketAddr],
    verify: &str,
    token: &str,
    allow: &str,
    web: SocketAddr,
) -> String {
    let relays: Vec<String> = relays.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        r#"
[agent]
name = "office"
token = "{token}"
relays = [{relays}]
server_name = "relay.test"
{verify}
allow = [{allow}]
heartbeat = "1s"
dead_after = "3s"
reconnect_min = "50ms"
reconnect_max = "500ms"
connect_timeout = "3s"

[agent.publish]
web = "{web}"
{NO_DNS}"#,
        relays = relays.join(", ")
    )
}

fn ca(certs: &Certs) -> String {
    format!("ca = \"{}\"", certs.crt().display())
}

/// A relay and a connected agent.
struct Pair {
    relay: Gatehouse,
    agent: Gatehouse,
}

fn start_pair(certs: &Certs, allow: &str, web: SocketAddr) -> Pair {
    let relay = Gatehouse::start(&relay_config(certs, ""));
    let agent = Gatehouse::start(&agent_config(
        &[relay.addr("agents")],
        &ca(certs),
        TOKEN,
        allow,
        web,
    ));
    relay.wait_stderr("tunnel: agent connected");
    Pair { relay, agent }
}

/// A SOCKS5 CONNECT by name through the relay: the reply code and the stream.
async fn socks_connect(proxy: SocketAddr, host: &str, port: u16) -> (u8, TcpStream) {
    let mut s = socks5_open(proxy).await;
    s.write_all(&socks5_request_name(1, host, port))
        .await
        .expect("request");
    let (rep, _) = socks5_reply(&mut s).await;
    (rep, s)
}

/// One line echoed back through `s`.
async fn echo_once(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.expect("write");
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(T, s.read_exact(&mut back))
        .await
        .expect("echo within 10s")
        .expect("echo");
    assert_eq!(back, msg);
}

#[test]
fn cert_writes_a_private_key_and_prints_the_certificates_fingerprint() {
    use std::os::unix::fs::PermissionsExt as _;
    let certs = Certs::make();
    let mode = std::fs::metadata(certs.key())
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "key mode {mode:o}");
    let pem = std::fs::read(certs.crt()).expect("crt");
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .expect("a certificate")
        .expect("PEM");
    let fp = gatehouse::tunnel::tls::fingerprint(der.as_ref());
    assert_eq!(
        certs.fingerprint,
        gatehouse::tunnel::proto::format_fingerprint(&fp)
    );
}

#[test]
fn the_example_pair_parses_and_agrees() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |f: &str| std::fs::read_to_string(root.join("examples").join(f)).expect(f);
    let relay = gatehouse::config::Config::parse(&read("tunnel-relay.toml")).expect("relay");
    let agent = gatehouse::config::Config::parse(&read("tunnel-agent.toml")).expect("agent");
    let a = agent.agent.expect("[agent]");
    use gatehouse::config::ListenerKind;
    let by_name = |n: &str| {
        relay
            .listeners
            .iter()
            .find(|l| l.name == n)
            .unwrap_or_else(|| panic!("listener {n}"))
    };
    let agents = by_name("agents");
    assert_eq!(agents.listen, "127.0.0.1:7000".parse().expect("addr"));
    let ListenerKind::Tunnel(t) = &agents.kind else {
        panic!("tunnel listener")
    };
    assert_eq!(t.agents[0].name, a.name);
    assert_eq!(t.agents[0].token, a.token);
    let socks = by_name("office-socks");
    assert_eq!(socks.listen, "127.0.0.1:1081".parse().expect("addr"));
    assert!(
        matches!(&socks.kind, ListenerKind::Socks(s) if s.via_agent.as_deref() == Some("office"))
    );
    let web = by_name("office-web");
    assert_eq!(web.listen, "127.0.0.1:8001".parse().expect("addr"));
    assert!(matches!(&web.kind, ListenerKind::Published(p) if p.agent == "office"));
    assert_eq!(a.name, "office");
    assert_eq!(a.relays, [("127.0.0.1".to_string(), 7000)]);
    // TLS on both sides (the default transport).
    assert_eq!(t.transport, gatehouse::config::Transport::Tls);
    let tls = a.tls.as_ref().expect("TLS to the relay");
    assert_eq!(tls.server_name, "relay.test");
    assert_eq!(
        tls.verify,
        gatehouse::config::RelayVerify::Ca("tunnel/relay.test.crt".into())
    );
    assert_eq!(a.publish["web"], ("127.0.0.1".to_string(), 8000));
    assert_eq!(a.allow.entries.len(), 1);
    // One event loop per core on both sides: a link and its streams stay on one.
    assert!(relay.runtime.per_core && agent.runtime.per_core);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks_and_a_published_port_reach_the_inside_through_the_agent() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let pair = start_pair(&certs, "\"127.0.0.1/32\"", origin.addr);
    let socks = pair.relay.addr("socks");
    // By a name only the agent can resolve: the relay never resolves it.
    let url = format!("http://inside.test:{}/", origin.addr.port());
    let (code, body, err) = curl(&["--socks5-hostname", &socks.to_string(), &url]).await;
    assert_eq!((code, body.as_slice()), (0, &b"inside"[..]), "{err}");
    let line = pair.relay.wait_log("SOCKS5-CONNECT");
    assert!(
        line.contains(&format!("inside.test:{}", origin.addr.port())),
        "{line}"
    );
    // The published port, many clients at once.
    let web = format!("http://{}/", pair.relay.addr("web"));
    let mut all = Vec::new();
    for _ in 0..20 {
        let web = web.clone();
        all.push(tokio::spawn(async move { curl(&[&web]).await }));
    }
    for t in all {
        let (code, body, err) = t.await.expect("task");
        assert_eq!((code, body.as_slice()), (0, &b"inside"[..]), "{err}");
    }
    drop(pair.agent);
}

/// A reverse listener on the relay routing `app.example` through agent "office" to its
/// service "web" (`agent` + `service` on a route).
const VHOST: &str = r#"
[[listeners]]
name = "sites"
kind = "reverse"
listen = "127.0.0.1:0"
[[listeners.hosts]]
names = ["app.example"]
[[listeners.hosts.routes]]
agent = "office"
service = "web"
request_headers = { set = { "X-Edge" = "relay" } }
response_headers = { set = { "X-Served-By" = "gatehouse" } }
"#;

/// An origin answering with the fields a reverse proxy sets, one per line.
async fn header_echo() -> Origin {
    Origin::start(Arc::new(|s: &Seen| {
        let h = |n: &str| {
            s.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        let body = format!(
            "host={}\nforwarded={}\nxff={}\nedge={}\npath={}\n",
            h("host"),
            h("forwarded"),
            h("x-forwarded-for"),
            h("x-edge"),
            s.uri
        );
        hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)))
    }))
    .await
}

/// A virtual host on the relay's reverse listener is served by the agent's inside service:
/// 503 while no agent is connected, then Host routing, header edits, Forwarded and the
/// access log as for a pool, for many clients at once; another Host gets 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_host_on_a_reverse_listener_goes_through_the_agent() {
    let certs = Certs::make();
    let origin = header_echo().await;
    let relay = Gatehouse::start(&format!("{}{VHOST}", relay_config(&certs, "")));
    let sites = relay.addr("sites");
    let resolve = format!("app.example:{}:127.0.0.1", sites.port());
    let url = format!("http://app.example:{}/a/b?c=1", sites.port());
    let (code, out, err) = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--resolve",
        &resolve,
        &url,
    ])
    .await;
    assert_eq!(
        (code, out.as_slice()),
        (0, &b"503"[..]),
        "no agent yet: {err}"
    );
    let agent = Gatehouse::start(&agent_config(
        &[relay.addr("agents")],
        &ca(&certs),
        TOKEN,
        "",
        origin.addr,
    ));
    relay.wait_stderr("tunnel: agent connected");
    let (code, body, err) = curl(&["-sS", "-i", "--resolve", &resolve, &url]).await;
    assert_eq!(code, 0, "{err}");
    let text = String::from_utf8_lossy(&body).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("x-served-by: gatehouse"), "{text}");
    assert!(
        text.contains(&format!("host=app.example:{}\n", sites.port())),
        "{text}"
    );
    assert!(text.contains("forwarded=for=127.0.0.1;"), "{text}");
    assert!(text.contains("xff=127.0.0.1\n"), "{text}");
    assert!(text.contains("edge=relay\n"), "{text}");
    assert!(text.contains("path=/a/b?c=1\n"), "{text}");
    // The access log: the 503 without an agent, then the 200.
    let line = relay.wait_log("app.example");
    assert!(line.contains(" 503 "), "{line}");
    let line = relay.wait_log("app.example");
    assert!(line.contains("/a/b?c=1 200 "), "{line}");
    // Another name: no such virtual host.
    let other = format!("other.example:{}:127.0.0.1", sites.port());
    let (_, out, _) = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--resolve",
        &other,
        &format!("http://other.example:{}/", sites.port()),
    ])
    .await;
    assert_eq!(out, b"404");
    // Many clients at once, each a keep-alive connection with several requests.
    let mut all = Vec::new();
    for i in 0..40 {
        let (resolve, sites) = (resolve.clone(), sites.port());
        all.push(tokio::spawn(async move {
            let a = format!("http://app.example:{sites}/n/{i}");
            let b = format!("http://app.example:{sites}/m/{i}");
            curl(&["-sS", "--resolve", &resolve, &a, &b]).await
        }));
    }
    for (i, t) in all.into_iter().enumerate() {
        let (code, body, err) = t.await.expect("task");
        let text = String::from_utf8_lossy(&body);
        assert_eq!(code, 0, "{err}");
        assert!(text.contains(&format!("path=/n/{i}\n")), "{text}");
        assert!(text.contains(&format!("path=/m/{i}\n")), "{text}");
    }
    assert_eq!(origin.seen().len(), 81);
    // The agent gone: a clean 503 again.
    drop(agent);
    relay.wait_stderr("tunnel: agent disconnected");
    let (_, out, _) = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--resolve",
        &resolve,
        &url,
    ])
    .await;
    assert_eq!(out, b"503");
}

/// A policy rule sending `inside.test` through agent "office"; the relay itself resolves
/// nothing (a loopback port nobody serves).
const TO_OFFICE: &str = r#"
[[policy.rules]]
name = "to-office"
action = "route"
agent = "office"
hosts = ["inside.test"]

[dns]
servers = ["127.0.0.1:9"]
timeout = "1s"
attempts = 1
"#;

/// A relay whose virtual host `app.example` (on listener "sites") is the service `service`
/// of a connected agent "office".
struct VhostPair {
    _relay: Gatehouse,
    _agent: Gatehouse,
    port: u16,
}

impl VhostPair {
    async fn start(certs: &Certs, service: SocketAddr) -> VhostPair {
        let relay = Gatehouse::start(&format!("{}{VHOST}", relay_config(certs, "")));
        let agent = Gatehouse::start(&agent_config(
            &[relay.addr("agents")],
            &ca(certs),
            TOKEN,
            "",
            service,
        ));
        relay.wait_stderr("tunnel: agent connected");
        let port = relay.addr("sites").port();
        VhostPair {
            _relay: relay,
            _agent: agent,
            port,
        }
    }

    /// curl's GET of `/{i}` on a new client connection: (exit code, body).
    async fn get(&self, i: usize) -> (i32, Vec<u8>, String) {
        let resolve = format!("app.example:{}:127.0.0.1", self.port);
        let url = format!("http://app.example:{}/{i}", self.port);
        curl(&["--resolve", &resolve, &url]).await
    }
}

/// Reads one request head (up to its blank line) from a raw service connection; false at
/// EOF or on an error.
async fn read_request_head(s: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// A virtual host through an agent keeps its stream between requests, as a pool keeps an
/// idle connection: the agent holds one connection to the service for requests from
/// different clients one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_host_reuses_the_stream_to_the_agents_service() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let pair = VhostPair::start(&certs, origin.addr).await;
    for i in 0..4 {
        let (code, body, err) = pair.get(i).await;
        assert_eq!((code, body.as_slice()), (0, &b"inside"[..]), "{err}");
    }
    assert_eq!(origin.seen().len(), 4);
    assert_eq!(origin.connections.load(Ordering::SeqCst), 1);
}

/// Absolute-URI requests the forward proxy routes to an agent (a policy rule) keep their
/// stream between requests, by agent and destination: the destination sees one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_requests_routed_to_an_agent_keep_their_stream() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let relay = Gatehouse::start(&format!(
        r#"{relay}
{http}
{TO_OFFICE}"#,
        relay = relay_config(&certs, ""),
        http = http_listener("http", ""),
    ));
    let _agent = Gatehouse::start(&agent_config(
        &[relay.addr("agents")],
        &ca(&certs),
        TOKEN,
        "\"127.0.0.1/32\"",
        origin.addr,
    ));
    relay.wait_stderr("tunnel: agent connected");
    let proxy = format!("http://{}", relay.addr("http"));
    for i in 0..4 {
        // A new client connection each time.
        let url = format!("http://inside.test:{}/{i}", origin.addr.port());
        let (code, body, err) = curl(&["-x", &proxy, &url]).await;
        assert_eq!((code, body.as_slice()), (0, &b"inside"[..]), "{err}");
    }
    assert_eq!(origin.seen().len(), 4);
    assert_eq!(origin.connections.load(Ordering::SeqCst), 1);
}

/// A service that speaks out of turn: after its answer, a second (unasked) response on the
/// same connection. The kept stream carries those bytes, so it is not used again: the next
/// client gets the next real answer, never the smuggled one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_stream_with_stray_bytes_is_not_reused() {
    let certs = Certs::make();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let service = listener.local_addr().expect("addr");
    let (sent_tx, mut sent) = tokio::sync::mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let sent_tx = sent_tx.clone();
            tokio::spawn(async move {
                while read_request_head(&mut s).await {
                    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if s.write_all(ok).await.is_err() {
                        return;
                    }
                    // Apart from the answer (a segment of its own), the smuggled one.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let evil = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil";
                    let _ = s.write_all(evil).await;
                    let _ = sent_tx.send(());
                }
            });
        }
    });
    let pair = VhostPair::start(&certs, service).await;
    for i in 0..3 {
        let (code, body, err) = pair.get(i).await;
        assert_eq!(
            (code, body.as_slice()),
            (0, &b"ok"[..]),
            "request {i}: {err}"
        );
        // The stray bytes are on their way before the next request.
        tokio::time::timeout(T, sent.recv())
            .await
            .expect("stray sent");
    }
}

/// A service that answers one request per connection and then closes it (without saying
/// so): a kept stream it ended is not used again, or when the end crosses the next request,
/// that request goes again on a new stream. No client sees an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_stream_the_service_closed_is_replaced() {
    let certs = Certs::make();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let service = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if read_request_head(&mut s).await {
                    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    let _ = s.write_all(ok).await;
                }
                // Closed here, with no `Connection: close` announced.
            });
        }
    });
    let pair = VhostPair::start(&certs, service).await;
    for i in 0..5 {
        let (code, body, err) = pair.get(i).await;
        assert_eq!(
            (code, body.as_slice()),
            (0, &b"ok"[..]),
            "request {i}: {err}"
        );
    }
    assert!(accepted.load(Ordering::SeqCst) >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_and_socks_then_has_no_way_in() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let relay = Gatehouse::start(&relay_config(&certs, ""));
    let agent = Gatehouse::start(&agent_config(
        &[relay.addr("agents")],
        &ca(&certs),
        "not-the-token",
        "\"127.0.0.1/32\"",
        origin.addr,
    ));
    relay.wait_stderr("agent refused: bad name or token");
    agent.wait_stderr("refused this agent's name or token");
    // No agent: the SOCKS client hears "network unreachable", the published port closes.
    let (rep, _) = socks_connect(relay.addr("socks"), "inside.test", origin.addr.port()).await;
    assert_eq!(rep, 3);
    let mut s = TcpStream::connect(relay.addr("web"))
        .await
        .expect("connect");
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(T, s.read(&mut b))
        .await
        .expect("closed within 10s");
    assert!(matches!(n, Ok(0)), "{n:?}");
    assert_eq!(origin.connection_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_a_relay_with_another_certificate() {
    let certs = Certs::make();
    let other = Certs::make();
    let origin = Origin::fixed("inside").await;
    let relay = Gatehouse::start(&relay_config(&certs, ""));
    // Verified against a different certificate for the same name.
    let agent = Gatehouse::start(&agent_config(
        &[relay.addr("agents")],
        &ca(&other),
        TOKEN,
        "\"127.0.0.1/32\"",
        origin.addr,
    ));
    let line = agent.wait_stderr("disconnected from the relay");
    assert!(line.contains("TLS"), "{line}");
    drop(agent);
    // Pinned to the other certificate's fingerprint: refused as well.
    let agent = Gatehouse::start(&agent_config(
        &[relay.addr("agents")],
        &format!("fingerprint = \"{}\"", other.fingerprint),
        TOKEN,
        "\"127.0.0.1/32\"",
        origin.addr,
    ));
    let line = agent.wait_stderr("disconnected from the relay");
    assert!(line.contains("pinned fingerprint"), "{line}");
    drop(agent);
    // Pinned to the right one: connected, and the token never went to the wrong relay.
    let agent = Gatehouse::start(&agent_config(
        &[relay.addr("agents")],
        &format!("fingerprint = \"{}\"", certs.fingerprint),
        TOKEN,
        "\"127.0.0.1/32\"",
        origin.addr,
    ));
    agent.wait_stderr("tunnel: connected to the relay");
    relay.wait_stderr("tunnel: agent connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_outside_the_allow_list_are_refused_by_the_agent() {
    let certs = Certs::make();
    let allowed = tcp_echo().await;
    let other = tcp_echo().await;
    let web = tcp_echo().await;
    // One address and port by address; the name inside.test for any port, which the guard
    // then refuses because it resolves to loopback.
    let allow = format!("\"127.0.0.1:{}\", \"inside.test\"", allowed.port());
    let pair = start_pair(&certs, &allow, web);
    let socks = pair.relay.addr("socks");
    let (rep, mut s) = socks_connect(socks, "127.0.0.1", allowed.port()).await;
    assert_eq!(rep, 0);
    echo_once(&mut s, b"allowed").await;
    let (rep, _) = socks_connect(socks, "127.0.0.1", other.port()).await;
    assert_eq!(rep, 2, "a port not listed");
    let (rep, _) = socks_connect(socks, "inside.test", other.port()).await;
    assert_eq!(rep, 2, "a listed name resolving to loopback (the guard)");
    pair.agent.wait_stderr("stream refused");
    // The published service's own address is reachable (it is published).
    let (rep, mut s) = socks_connect(socks, "127.0.0.1", web.port()).await;
    assert_eq!(rep, 0);
    echo_once(&mut s, b"published").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_port_survives_the_agent_being_killed_and_restarted() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let relay = Gatehouse::start(&relay_config(&certs, ""));
    let config = agent_config(
        &[relay.addr("agents")],
        &ca(&certs),
        TOKEN,
        "\"127.0.0.1/32\"",
        origin.addr,
    );
    let agent = Gatehouse::start(&config);
    relay.wait_stderr("tunnel: agent connected");
    let web = format!("http://{}/", relay.addr("web"));
    let (code, body, _) = curl(&[&web]).await;
    assert_eq!((code, body.as_slice()), (0, &b"inside"[..]));
    drop(agent); // killed
    relay.wait_stderr("tunnel: agent disconnected");
    // Bound, and closing cleanly while no agent is there.
    let mut s = TcpStream::connect(relay.addr("web"))
        .await
        .expect("still bound");
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(T, s.read(&mut b))
        .await
        .expect("closed within 10s");
    assert!(matches!(n, Ok(0)), "{n:?}");
    // A client retrying while the agent comes back: it gets through, and from then on every
    // request does.
    let client = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, body, _) = curl(&["--max-time", "5", &web]).await;
            if code == 0 && body == b"inside" {
                break;
            }
            assert!(Instant::now() < deadline, "the agent did not come back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for _ in 0..10 {
            let (code, body, err) = curl(&[&web]).await;
            assert_eq!((code, body.as_slice()), (0, &b"inside"[..]), "{err}");
        }
    });
    let agent = Gatehouse::start(&config);
    relay.wait_stderr("tunnel: agent connected");
    client.await.expect("the retrying client");
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_lists_agents_and_metrics_count_them() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let relay = Gatehouse::start(&format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        relay_config(&certs, "")
    ));
    let admin = relay.addr("admin");
    assert_eq!(metric(admin, "gatehouse_tunnel_agents").await, Some(0.0));
    let agent = Gatehouse::start(&agent_config(
        &[relay.addr("agents")],
        &ca(&certs),
        TOKEN,
        "\"127.0.0.1/32\"",
        origin.addr,
    ));
    relay.wait_stderr("tunnel: agent connected");
    let web = format!("http://{}/", relay.addr("web"));
    let (code, body, _) = curl(&[&web]).await;
    assert_eq!((code, body.as_slice()), (0, &b"inside"[..]));
    let (code, body, err) = curl(&[&format!("http://{admin}/api/v1/agents")]).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let agents = v["agents"].as_array().expect("agents");
    assert_eq!(agents.len(), 1, "{v}");
    assert_eq!(agents[0]["name"], "office");
    assert_eq!(agents[0]["streams_total"], 1);
    assert!(agents[0]["bytes_from_agent"].as_u64() > Some(0), "{v}");
    assert_eq!(metric(admin, "gatehouse_tunnel_agents").await, Some(1.0));
    let text = metrics_text(admin).await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("gatehouse_tunnel_bytes_total{")
                && l.contains("agent=\"office\"")
                && l.contains("service=\"web\"")
                && l.contains("direction=\"out\"")
                && !l.ends_with(" 0")),
        "{text}"
    );
    drop(agent);
    let line = relay.wait_stderr("tunnel: agent disconnected");
    assert!(line.contains("reason="), "{line}");
    assert_eq!(metric(admin, "gatehouse_tunnel_agents").await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_relay_lets_streams_in_flight_finish() {
    let certs = Certs::make();
    let echo = tcp_echo().await;
    let mut pair = start_pair(&certs, "\"127.0.0.1/32\"", echo);
    let mut s = TcpStream::connect(pair.relay.addr("web"))
        .await
        .expect("connect");
    echo_once(&mut s, b"before").await;
    pair.relay.signal("TERM");
    pair.relay.wait_stderr("draining");
    // The stream goes on through the drain.
    echo_once(&mut s, b"during the drain").await;
    drop(s);
    assert!(
        pair.relay.wait_exit(T).is_some(),
        "the relay did not exit once its last stream ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_under_a_taken_name_is_refused_unless_it_is_a_pool() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let pair = start_pair(&certs, "\"127.0.0.1/32\"", origin.addr);
    let config = agent_config(
        &[pair.relay.addr("agents")],
        &ca(&certs),
        TOKEN,
        "\"127.0.0.1/32\"",
        origin.addr,
    );
    let second = Gatehouse::start(&config);
    second.wait_stderr("already has an agent of this name connected");
    pair.relay.wait_stderr("the name is already connected");
    drop(second);
    drop(pair);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_in_a_pool_share_the_streams_and_one_may_die() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let relay_text = relay_config(&certs, "").replacen(
        &format!("token = \"{TOKEN}\"\n"),
        &format!("token = \"{TOKEN}\"\npool = true\n"),
        1,
    );
    let relay = Gatehouse::start(&format!(
        "{relay_text}\n[admin]\nlisten = \"127.0.0.1:0\"\n"
    ));
    let config = agent_config(
        &[relay.addr("agents")],
        &ca(&certs),
        TOKEN,
        "\"127.0.0.1/32\"",
        origin.addr,
    );
    let a = Gatehouse::start(&config);
    relay.wait_stderr("tunnel: agent connected");
    let b = Gatehouse::start(&config);
    relay.wait_stderr("tunnel: agent connected");
    let web = format!("http://{}/", relay.addr("web"));
    for _ in 0..10 {
        let (code, body, err) = curl(&[&web]).await;
        assert_eq!((code, body.as_slice()), (0, &b"inside"[..]), "{err}");
    }
    let (_, body, _) = curl(&[&format!("http://{}/api/v1/agents", relay.addr("admin"))]).await;
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let agents = v["agents"].as_array().expect("agents");
    assert_eq!(agents.len(), 2, "{v}");
    for agent in agents {
        assert!(
            agent["streams_total"].as_u64() >= Some(4),
            "not balanced: {v}"
        );
    }
    drop(a); // killed
    relay.wait_stderr("tunnel: agent disconnected");
    for _ in 0..10 {
        let (code, body, err) = curl(&[&web]).await;
        assert_eq!((code, body.as_slice()), (0, &b"inside"[..]), "{err}");
    }
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reaches_the_relay_through_an_http_connect_proxy() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let relay = Gatehouse::start(&relay_config(&certs, ""));
    let egress = Gatehouse::start(&http_listener("egress", "connect_ports = [\"1-65535\"]"));
    let config = agent_config(
        &[relay.addr("agents")],
        &ca(&certs),
        TOKEN,
        "\"127.0.0.1/32\"",
        origin.addr,
    )
    .replacen(
        "server_name",
        &format!("http_proxy = \"{}\"\nserver_name", egress.addr("egress")),
        1,
    );
    let agent = Gatehouse::start(&config);
    relay.wait_stderr("tunnel: agent connected");
    let web = format!("http://{}/", relay.addr("web"));
    let (code, body, err) = curl(&[&web]).await;
    assert_eq!((code, body.as_slice()), (0, &b"inside"[..]), "{err}");
    // The proxy logs its tunnel when it ends.
    drop(agent);
    let line = egress.wait_log("CONNECT");
    assert!(line.contains(&relay.addr("agents").to_string()), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reaches_the_relay_through_a_socks5_proxy() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let relay = Gatehouse::start(&relay_config(&certs, ""));
    let egress = Gatehouse::start(
        "[[listeners]]\nname = \"egress\"\nkind = \"socks\"\nlisten = \"127.0.0.1:0\"\n",
    );
    let config = agent_config(
        &[relay.addr("agents")],
        &ca(&certs),
        TOKEN,
        "\"127.0.0.1/32\"",
        origin.addr,
    )
    .replacen(
        "server_name",
        &format!("socks_proxy = \"{}\"\nserver_name", egress.addr("egress")),
        1,
    );
    let agent = Gatehouse::start(&config);
    relay.wait_stderr("tunnel: agent connected");
    let web = format!("http://{}/", relay.addr("web"));
    let (code, body, err) = curl(&[&web]).await;
    assert_eq!((code, body.as_slice()), (0, &b"inside"[..]), "{err}");
    // The proxy logs its session when it ends.
    drop(agent);
    let line = egress.wait_log("SOCKS5-CONNECT");
    assert!(line.contains(&relay.addr("agents").to_string()), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_comes_back_after_the_relay_restarts() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let pair = start_pair(&certs, "\"127.0.0.1/32\"", origin.addr);
    let (agents, web) = (pair.relay.addr("agents"), pair.relay.addr("web"));
    // The same addresses again after the restart.
    let fixed = relay_config(&certs, "")
        .replacen("127.0.0.1:0", &agents.to_string(), 1)
        .replacen(
            "name = \"web\"\nkind = \"published\"\nlisten = \"127.0.0.1:0\"",
            &format!("name = \"web\"\nkind = \"published\"\nlisten = \"{web}\""),
            1,
        );
    let Pair { relay, agent } = pair;
    drop(relay);
    agent.wait_stderr("disconnected from the relay");
    let relay = Gatehouse::start(&fixed);
    relay.wait_stderr("tunnel: agent connected");
    let (code, body, err) = curl(&[&format!("http://{web}/")]).await;
    assert_eq!((code, body.as_slice()), (0, &b"inside"[..]), "{err}");
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_fail_cleanly_when_the_agent_goes_and_errors_map_to_socks_replies() {
    let certs = Certs::make();
    let echo = tcp_echo().await;
    // A port nothing listens on: bind, note, close.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let pair = start_pair(&certs, "\"127.0.0.1/32\"", echo);
    let socks = pair.relay.addr("socks");
    let (rep, _) = socks_connect(socks, "127.0.0.1", closed.port()).await;
    assert_eq!(rep, 5, "connection refused inside");
    let (rep, _) = socks_connect(socks, "nowhere.test", 80).await;
    assert_eq!(rep, 4, "a name the agent cannot resolve");
    let (rep, mut s) = socks_connect(socks, "127.0.0.1", echo.port()).await;
    assert_eq!(rep, 0);
    echo_once(&mut s, b"before").await;
    let Pair { relay, agent } = pair;
    drop(agent);
    // The open stream ends (EOF or reset), promptly.
    let mut b = [0u8; 16];
    let r = tokio::time::timeout(T, s.read(&mut b))
        .await
        .expect("ended within 10s");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    relay.wait_stderr("tunnel: agent disconnected");
    let (rep, _) = socks_connect(socks, "127.0.0.1", echo.port()).await;
    assert_eq!(rep, 3, "no agent: network unreachable");
}

/// A relay and agent whose allow-list lets `allow` in, a UDP association through the
/// relay's SOCKS listener, and a client socket: (pair, control connection, relay's UDP
/// address, client).
async fn udp_pair(
    certs: &Certs,
    allow: &str,
) -> (Pair, TcpStream, SocketAddr, tokio::net::UdpSocket) {
    let web = tcp_echo().await;
    let pair = start_pair(certs, allow, web);
    let (control, relay) = socks5_associate(pair.relay.addr("socks")).await;
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    (pair, control, relay, client)
}

/// `payload` to `target` through the relay's UDP address; the first datagram back.
/// Datagrams may be lost: a few tries, each waiting briefly for the echo.
async fn udp_echo_through(
    client: &tokio::net::UdpSocket,
    relay: SocketAddr,
    target: SocketAddr,
    payload: &[u8],
) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    for _ in 0..20 {
        client
            .send_to(&socks5_datagram(target, payload), relay)
            .await
            .expect("send");
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(250), client.recv_from(&mut buf)).await
        {
            return buf[..n].to_vec();
        }
    }
    panic!("no echo from {target} through the agent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_associate_goes_through_the_agent() {
    let certs = Certs::make();
    let echo = UdpEcho::start("127.0.0.1:0").await;
    let allow = format!("\"127.0.0.1:{}\"", echo.addr.port());
    let (_pair, _control, relay, client) = udp_pair(&certs, &allow).await;
    let got = udp_echo_through(&client, relay, echo.addr, b"ping").await;
    // Wrapped with its source: the echo server's address, then the payload.
    let mut want = vec![0, 0, 0, 1, 127, 0, 0, 1];
    want.extend_from_slice(&echo.addr.port().to_be_bytes());
    want.extend_from_slice(b"ping");
    assert_eq!(got, want);
    // A destination outside the allow-list: dropped at the agent, never sent.
    let other = UdpEcho::start("127.0.0.1:0").await;
    client
        .send_to(&socks5_datagram(other.addr, b"nope"), relay)
        .await
        .expect("send");
    let mut buf = vec![0u8; 2048];
    let r = tokio::time::timeout(Duration::from_millis(500), client.recv_from(&mut buf)).await;
    assert!(r.is_err(), "a reply from outside the allow-list");
    assert!(other.seen().is_empty());
}

/// UDP ASSOCIATE through the agent to an IPv6 destination (the agent's socket is
/// dual-stack): the echo from `[::1]` comes back wrapped with its IPv6 source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_associate_through_the_agent_reaches_ipv6() {
    let certs = Certs::make();
    let echo = UdpEcho::start("[::1]:0").await;
    let allow = format!("\"[::1]:{}\"", echo.addr.port());
    let (_pair, _control, relay, client) = udp_pair(&certs, &allow).await;
    let got = udp_echo_through(&client, relay, echo.addr, b"ping6").await;
    assert_eq!(got, socks5_datagram(echo.addr, b"ping6"));
}

/// A relay whose plain SOCKS listener (no `via_agent`) sends `inside.test` through agent
/// "office" by a policy rule; the relay itself cannot resolve that name.
fn rule_relay(certs: &Certs) -> Gatehouse {
    let relay = Gatehouse::start(&format!(
        r#"
[[listeners]]
name = "agents"
kind = "tunnel"
listen = "127.0.0.1:0"
tls = {{ cert = "{crt}", key = "{key}" }}
[[listeners.agents]]
name = "office"
token = "{TOKEN}"

[[listeners]]
name = "socks"
kind = "socks"
listen = "127.0.0.1:0"
bind_timeout = "5s"

{http}
[admin]
listen = "127.0.0.1:0"

{TO_OFFICE}"#,
        crt = certs.crt().display(),
        key = certs.key().display(),
        http = http_listener("http", ""),
    ));
    relay
}

/// Absolute-URI requests a rule sends through an agent count in
/// `gatehouse_tunnel_bytes_total{service="http"}` (and for the agent in the admin API).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_uri_requests_through_an_agent_are_counted() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let relay = rule_relay(&certs);
    let admin = relay.addr("admin");
    let _agent = Gatehouse::start(&agent_config(
        &[relay.addr("agents")],
        &ca(&certs),
        TOKEN,
        &format!("\"127.0.0.1:{}\"", origin.addr.port()),
        origin.addr,
    ));
    relay.wait_stderr("tunnel: agent connected");
    let url = format!("http://inside.test:{}/", origin.addr.port());
    let (code, body, err) = curl(&["-x", &relay.proxy_url("http"), &url]).await;
    assert_eq!((code, body.as_slice()), (0, &b"inside"[..]), "{err}");
    let text = metrics_text(admin).await;
    let counted = |direction: &str| {
        text.lines().any(|l| {
            l.starts_with("gatehouse_tunnel_bytes_total{")
                && l.contains("agent=\"office\"")
                && l.contains("service=\"http\"")
                && l.contains(&format!("direction=\"{direction}\""))
                && !l.ends_with(" 0")
        })
    };
    assert!(counted("in") && counted("out"), "{text}");
}

/// A SOCKS5 UDP datagram to `name:port`.
fn socks5_datagram_to_name(name: &str, port: u16, payload: &[u8]) -> Vec<u8> {
    let mut d = vec![0, 0, 0, 3, name.len() as u8];
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&port.to_be_bytes());
    d.extend_from_slice(payload);
    d
}

/// A rule's `agent` carries UDP ASSOCIATE: datagrams to a name the rule picks go through the
/// agent (which alone resolves it) and the echo comes back; others are sent as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_routes_udp_datagrams_through_the_agent() {
    let certs = Certs::make();
    let echo = UdpEcho::start("127.0.0.1:0").await;
    let web = tcp_echo().await;
    let relay = rule_relay(&certs);
    let _agent = Gatehouse::start(&agent_config(
        &[relay.addr("agents")],
        &ca(&certs),
        TOKEN,
        &format!("\"127.0.0.1:{}\"", echo.addr.port()),
        web,
    ));
    relay.wait_stderr("tunnel: agent connected");
    let (_control, relay_udp) = socks5_associate(relay.addr("socks")).await;
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut buf = vec![0u8; 2048];
    let mut got = None;
    for _ in 0..20 {
        let d = socks5_datagram_to_name("inside.test", echo.addr.port(), b"ping");
        client.send_to(&d, relay_udp).await.expect("send");
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(250), client.recv_from(&mut buf)).await
        {
            got = Some(buf[..n].to_vec());
            break;
        }
    }
    let got = got.expect("an echo through the agent");
    let mut want = vec![0, 0, 0, 1, 127, 0, 0, 1];
    want.extend_from_slice(&echo.addr.port().to_be_bytes());
    want.extend_from_slice(b"ping");
    assert_eq!(got, want);
}

/// A rule's `agent` carries BIND: the expected peer is a name only the agent resolves; the
/// agent listens, the peer connects, bytes flow both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_routes_bind_through_the_agent() {
    let certs = Certs::make();
    let web = tcp_echo().await;
    let relay = rule_relay(&certs);
    let _agent = Gatehouse::start(&agent_config(
        &[relay.addr("agents")],
        &ca(&certs),
        TOKEN,
        "\"127.0.0.1\"",
        web,
    ));
    relay.wait_stderr("tunnel: agent connected");
    let mut s = socks5_open(relay.addr("socks")).await;
    s.write_all(&socks5_request_name(2, "inside.test", 0))
        .await
        .expect("request");
    let (rep, bound) = socks5_reply(&mut s).await;
    assert_eq!(rep, 0, "the first reply");
    assert!(bound.ip().is_loopback() && bound.port() != 0, "{bound}");
    let mut peer = TcpStream::connect(bound)
        .await
        .expect("connect to the BIND");
    let (rep, from) = socks5_reply(&mut s).await;
    assert_eq!(rep, 0, "the second reply");
    assert_eq!(from, peer.local_addr().expect("addr"));
    echo_pair(&mut peer, &mut s).await;
    drop((peer, s));
    let line = relay.wait_log("SOCKS5-BIND");
    assert!(line.contains("to-office"), "{line}");
}

/// Bytes both ways between two ends of one relayed connection.
async fn echo_pair(a: &mut TcpStream, b: &mut TcpStream) {
    a.write_all(b"from-peer").await.expect("write");
    let mut got = [0u8; 9];
    tokio::time::timeout(T, b.read_exact(&mut got))
        .await
        .expect("within 10s")
        .expect("read");
    assert_eq!(&got, b"from-peer");
    b.write_all(b"from-client").await.expect("write");
    let mut got = [0u8; 11];
    tokio::time::timeout(T, a.read_exact(&mut got))
        .await
        .expect("within 10s")
        .expect("read");
    assert_eq!(&got, b"from-client");
}

/// `mode = "all"`: one agent stays connected to two relays at once; each serves SOCKS
/// through it, and one relay going away leaves the other serving without a reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_in_mode_all_serves_two_relays_at_once() {
    let certs = Certs::make();
    let echo = tcp_echo().await;
    let first = Gatehouse::start(&relay_config(&certs, ""));
    let second = Gatehouse::start(&relay_config(&certs, ""));
    let agent = Gatehouse::start(
        &agent_config(
            &[first.addr("agents"), second.addr("agents")],
            &ca(&certs),
            TOKEN,
            "\"127.0.0.1/32\"",
            echo,
        )
        .replacen("[agent]\n", "[agent]\nmode = \"all\"\n", 1),
    );
    first.wait_stderr("tunnel: agent connected");
    second.wait_stderr("tunnel: agent connected");
    for relay in [&first, &second] {
        let (rep, mut s) = socks_connect(relay.addr("socks"), "inside.test", echo.port()).await;
        assert_eq!(rep, 0);
        echo_once(&mut s, b"both").await;
    }
    let socks = second.addr("socks");
    drop(first);
    agent.wait_stderr("disconnected from the relay");
    let (rep, mut s) = socks_connect(socks, "inside.test", echo.port()).await;
    assert_eq!(rep, 0, "the other relay still has the agent");
    echo_once(&mut s, b"still").await;
}

/// `send_proxy` on a published listener: the inside service gets a PROXY protocol header
/// naming the real client (v1 and v2), then the client's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_port_can_tell_the_service_the_real_client() {
    use gatehouse::l4::proxy_protocol::{decode, Decoded, Header};
    for version in ["v1", "v2"] {
        let certs = Certs::make();
        let service = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let web = service.local_addr().expect("addr");
        let relay = Gatehouse::start(&relay_config(&certs, "").replace(
            "service = \"web\"",
            &format!("service = \"web\"\nsend_proxy = \"{version}\""),
        ));
        let _agent = Gatehouse::start(&agent_config(
            &[relay.addr("agents")],
            &ca(&certs),
            TOKEN,
            "",
            web,
        ));
        relay.wait_stderr("tunnel: agent connected");
        let published = relay.addr("web");
        let mut client = TcpStream::connect(published).await.expect("connect");
        client.write_all(b"hello").await.expect("write");
        let (mut inside, _) = tokio::time::timeout(T, service.accept())
            .await
            .expect("a connection within 10s")
            .expect("accept");
        let mut buf = Vec::new();
        let (header, len) = loop {
            let mut chunk = [0u8; 256];
            let n = tokio::time::timeout(T, inside.read(&mut chunk))
                .await
                .expect("bytes within 10s")
                .expect("read");
            assert!(n > 0, "closed before the header");
            buf.extend_from_slice(&chunk[..n]);
            match decode(&buf).expect("a PROXY header") {
                Decoded::Done { header, len } if buf.len() >= len + 5 => break (header, len),
                _ => {}
            }
        };
        assert_eq!(
            header,
            Header::Proxied {
                src: client.local_addr().expect("addr"),
                dst: published,
            },
            "{version}"
        );
        assert_eq!(&buf[len..], b"hello");
        inside.write_all(b"back").await.expect("write");
        let mut got = [0u8; 4];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"back");
    }
}

/// BIND through the agent, on loopback: the agent listens where the expected peer routes
/// to; a connection from another address than the expected one is refused (second reply
/// 2), nobody connecting within the relay's bind_timeout ends it (6), and an expected peer
/// outside the agent's allow-list is refused at once (2, no listening socket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_through_the_agent_checks_the_peer_and_times_out() {
    let certs = Certs::make();
    let web = tcp_echo().await;
    let relay = Gatehouse::start(&relay_config(&certs, "").replace(
        "via_agent = \"office\"",
        "via_agent = \"office\"\nbind_timeout = \"1s\"",
    ));
    let _agent = Gatehouse::start(&agent_config(
        &[relay.addr("agents")],
        &ca(&certs),
        TOKEN,
        "\"127.0.0.0/8\"",
        web,
    ));
    relay.wait_stderr("tunnel: agent connected");
    let socks = relay.addr("socks");
    let bind = |expected: &str| {
        let expected: SocketAddr = expected.parse().expect("addr");
        async move {
            let mut s = socks5_open(socks).await;
            s.write_all(&socks5_request(2, expected))
                .await
                .expect("request");
            let first = socks5_reply(&mut s).await;
            (s, first)
        }
    };
    // Expecting 127.0.0.2: the connection comes from 127.0.0.1.
    let (mut s, (rep, bound)) = bind("127.0.0.2:0").await;
    assert_eq!(rep, 0);
    assert!(bound.ip().is_loopback() && bound.port() != 0, "{bound}");
    let mut inside = TcpStream::connect(bound)
        .await
        .expect("connect to the BIND");
    let (rep, _) = socks5_reply(&mut s).await;
    assert_eq!(rep, 2, "a peer other than the expected one");
    let line = relay.wait_log("SOCKS5-BIND");
    assert!(line.contains("bind_wrong_peer"), "{line}");
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(T, inside.read(&mut b))
        .await
        .expect("closed");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    // Nobody comes: the relay's bind_timeout (1s) ends it with TTL expired.
    let (mut s, (rep, _)) = bind("127.0.0.1:0").await;
    assert_eq!(rep, 0);
    let started = Instant::now();
    let (rep, _) = socks5_reply(&mut s).await;
    assert_eq!(rep, 6, "bind timed out");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Outside the allow-list: refused by the agent before it listens.
    let (_s, (rep, _)) = bind("192.0.2.1:0").await;
    assert_eq!(rep, 2);
}

/// A server that sends `total` bytes to each client and counts what it managed to write.
async fn firehose(total: usize) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let written = Arc::new(AtomicU64::new(0));
    let w = written.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let w = w.clone();
            tokio::spawn(async move {
                let chunk = vec![7u8; 64 * 1024];
                let mut left = total;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if s.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    w.fetch_add(n as u64, Ordering::SeqCst);
                    left -= n;
                }
            });
        }
    });
    (addr, written)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stalled_stream_does_not_hold_up_hundreds_of_others() {
    let certs = Certs::make();
    let echo = tcp_echo().await;
    let (hose, written) = firehose(64 << 20).await;
    let pair = start_pair(&certs, "\"127.0.0.1/32\"", echo);
    let socks = pair.relay.addr("socks");
    // The stalled stream: the client never reads what the destination keeps sending.
    let (rep, _stalled) = socks_connect(socks, "127.0.0.1", hose.port()).await;
    assert_eq!(rep, 0);
    // Wait until the firehose is blocked: its count stops moving.
    let mut last = u64::MAX;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = written.load(Ordering::SeqCst);
        if now == last && now > 0 {
            break;
        }
        last = now;
    }
    let stalled_at = written.load(Ordering::SeqCst);
    // Then 300 streams, each a round trip of 16 KiB, all at once.
    let started = Instant::now();
    let mut all = Vec::new();
    for i in 0..300u32 {
        all.push(tokio::spawn(async move {
            let (rep, mut s) = socks_connect(socks, "127.0.0.1", echo.port()).await;
            assert_eq!(rep, 0, "stream {i}");
            let msg = pattern(i, 16 * 1024);
            echo_once(&mut s, &msg).await;
        }));
    }
    for t in all {
        t.await.expect("stream");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "300 streams took {took:?}");
    // The stalled stream stayed stalled: its sender was held by flow control (the 4 MiB
    // stream window plus the socket buffers of both hops, about 13 MiB here), far short of
    // the 64 MiB it wanted to send.
    let now = written.load(Ordering::SeqCst);
    assert!(now < 32 << 20, "the stalled stream moved {now} bytes");
    assert!(now <= stalled_at + (4 << 20), "{stalled_at} -> {now}");
}

/// A TLS client to the relay's tunnel listener, trusting `certs`.
async fn tls_to_relay(
    certs: &Certs,
    relay: SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector =
        gatehouse::tunnel::tls::connector(&gatehouse::config::RelayVerify::Ca(certs.crt()))
            .expect("connector");
    let tcp = TcpStream::connect(relay).await.expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("relay.test").expect("name");
    connector.connect(name, tcp).await.expect("TLS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_an_agent_closes_that_agent_only() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let relay = Gatehouse::start(&relay_config(
        &certs,
        "[[listeners.agents]]\nname = \"evil\"\ntoken = \"evil-token\"\n",
    ));
    let agent = Gatehouse::start(&agent_config(
        &[relay.addr("agents")],
        &ca(&certs),
        TOKEN,
        "\"127.0.0.1/32\"",
        origin.addr,
    ));
    relay.wait_stderr("agent=office");
    let mut evil = tls_to_relay(&certs, relay.addr("agents")).await;
    let hello = gatehouse::tunnel::proto::encode_hello(&gatehouse::tunnel::proto::Hello {
        name: "evil".into(),
        token: b"evil-token".to_vec(),
        link: None,
    });
    evil.write_all(&hello).await.expect("hello");
    let mut answer = [0u8; 1];
    evil.read_exact(&mut answer).await.expect("answer");
    assert_eq!(answer[0], 0, "accepted");
    // Not HTTP/2 at all, then a frame header claiming 16 MiB.
    evil.write_all(b"HTTP/1.1 200 OK\r\n\r\n\xff\xff\xff\x00\x00\x00\x00\x00\x01")
        .await
        .expect("garbage");
    let _ = evil.flush().await;
    let mut rest = Vec::new();
    let r = tokio::time::timeout(T, evil.read_to_end(&mut rest)).await;
    assert!(
        r.is_ok(),
        "the relay did not close the bad agent's connection"
    );
    let line = relay.wait_stderr("agent disconnected");
    assert!(line.contains("agent=evil"), "{line}");
    // The good agent still carries traffic.
    let web = format!("http://{}/", relay.addr("web"));
    let (code, body, err) = curl(&[&web]).await;
    assert_eq!((code, body.as_slice()), (0, &b"inside"[..]), "{err}");
    drop(agent);
}

// Multi-threaded: the fake relay runs while the test blocks reading the agent's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_relay_closes_that_connection_and_the_agent_fails_over() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    // A hostile "relay" with the right certificate: accepts the hello, then sends garbage.
    let acceptor = gatehouse::tunnel::tls::acceptor(&certs.crt(), &certs.key()).expect("acceptor");
    let fake = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let fake_addr = fake.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = fake.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = [0u8; 7];
                if tls.read_exact(&mut head).await.is_err() {
                    return;
                }
                let _ = tls.write_all(&[0]).await;
                let _ = tls.flush().await;
                // A valid preface and SETTINGS, then HEADERS on stream 1 whose header block
                // is not HPACK: a connection error.
                let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
                bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
                bytes.extend_from_slice(&[0, 0, 5, 1, 5, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff]);
                let _ = tls.write_all(&bytes).await;
                let _ = tls.flush().await;
                let mut sink = Vec::new();
                let _ = tls.read_to_end(&mut sink).await;
            });
        }
    });
    let relay = Gatehouse::start(&relay_config(&certs, ""));
    let agent = Gatehouse::start(&agent_config(
        &[fake_addr, relay.addr("agents")],
        &ca(&certs),
        TOKEN,
        "\"127.0.0.1/32\"",
        origin.addr,
    ));
    let line = agent.wait_stderr("disconnected from the relay");
    assert!(line.contains(&fake_addr.to_string()), "{line}");
    assert!(line.contains("connection lost"), "{line}");
    relay.wait_stderr("tunnel: agent connected");
    let web = format!("http://{}/", relay.addr("web"));
    let (code, body, err) = curl(&[&web]).await;
    assert_eq!((code, body.as_slice()), (0, &b"inside"[..]), "{err}");
}

// ---- A real private network (Linux network namespaces) ----

const INSIDE: &str = "GATEHOUSE_TEST_TUNNEL_NETNS";

/// Outside: runs `test` again in a fresh network namespace ("the outside world": relay and
/// client) and returns false. Inside it: returns true. Needs permission to create network
/// namespaces (root, as CI runs); without it the test fails and says so, like
/// tests/own_host.rs.
fn in_fresh_netns(test: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new("unshare")
        .arg("-n")
        .arg("--")
        .arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run `unshare` ({e}): this test needs util-linux"));
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

fn run(cmd: &str, args: &str) {
    let out = std::process::Command::new(cmd)
        .args(args.split_whitespace())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A process holding a second network namespace ("the private network"), killed on drop.
struct PrivateNet {
    holder: std::process::Child,
}

impl PrivateNet {
    /// The namespace, joined to this one by a veth pair: 10.201.0.1 here, 10.201.0.2 there.
    fn create() -> PrivateNet {
        run("ip", "link set lo up");
        let holder = std::process::Command::new("unshare")
            .args(["-n", "--", "sleep", "120"])
            .spawn()
            .expect("unshare -n sleep");
        let net = PrivateNet { holder };
        let pid = net.pid();
        // The namespace exists once /proc/PID/ns/net differs from ours.
        let ours = std::fs::read_link("/proc/self/ns/net").expect("our netns");
        for _ in 0..200 {
            if std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .ok()
                .as_ref()
                != Some(&ours)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        run("ip", "link add gh0 type veth peer name gh1");
        run("ip", &format!("link set gh1 netns {pid}"));
        run("ip", "addr add 10.201.0.1/24 dev gh0");
        run("ip", "link set gh0 up");
        for args in [
            "link set lo up",
            "addr add 10.201.0.2/24 dev gh1",
            "link set gh1 up",
        ] {
            run("nsenter", &format!("-t {pid} -n ip {args}"));
        }
        net
    }

    fn pid(&self) -> u32 {
        self.holder.id()
    }

    /// Runs gatehouse with `config` inside the private network; returns once it is ready.
    fn gatehouse(&self, dir: &std::path::Path, name: &str, config: &str) -> std::process::Child {
        use std::io::BufRead as _;
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).expect("write config");
        let mut child = std::process::Command::new("nsenter")
            .args(["-t", &self.pid().to_string(), "-n", BIN, "--config"])
            .arg(&path)
            .env("GATEHOUSE_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("nsenter gatehouse");
        let err = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("all listeners ready") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(T)
            .unwrap_or_else(|_| panic!("{name} did not start inside the private network"));
        child
    }
}

impl Drop for PrivateNet {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The target is a web server (gatehouse's own /healthz) on the private network's loopback:
/// nothing outside can reach it. The agent runs beside it and dials the relay over the veth
/// pair; the client, outside, reaches the target through the relay's SOCKS5 port (curl
/// --socks5-hostname, a name only the agent resolves) and through the published port.
#[test]
fn a_target_inside_a_private_network_is_reached_only_through_the_agent() {
    if !in_fresh_netns("a_target_inside_a_private_network_is_reached_only_through_the_agent") {
        return;
    }
    let certs = Certs::make();
    let net = PrivateNet::create();
    let dir = tempfile::tempdir().expect("tempdir");
    // The target: inside only, on its loopback.
    let mut target = net.gatehouse(
        dir.path(),
        "target",
        "[[listeners]]\nname = \"h\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n\
         [admin]\nlisten = \"127.0.0.1:18080\"\n",
    );
    // The relay, outside: agents over the veth pair, SOCKS, the published port and the
    // virtual host app.example here.
    let relay_text = format!("{}{VHOST}", relay_config(&certs, "")).replacen(
        "listen = \"127.0.0.1:0\"",
        "listen = \"10.201.0.1:0\"",
        1,
    );
    let relay = Gatehouse::start(&relay_text);
    let web: SocketAddr = "127.0.0.1:18080".parse().expect("addr");
    let mut agent = net.gatehouse(
        dir.path(),
        "agent",
        &agent_config(
            &[relay.addr("agents")],
            &ca(&certs),
            TOKEN,
            "\"127.0.0.1:18080\"",
            web,
        ),
    );
    relay.wait_stderr("tunnel: agent connected");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // Outside, the target's address is nobody's.
        let (code, _, _) = curl(&["--max-time", "3", "http://127.0.0.1:18080/healthz"]).await;
        assert_ne!(code, 0, "the target is reachable from outside");
        let socks = relay.addr("socks").to_string();
        let (code, body, err) = curl(&[
            "--socks5-hostname",
            &socks,
            "http://inside.test:18080/healthz",
        ])
        .await;
        assert_eq!((code, body.as_slice()), (0, &b"ok\n"[..]), "{err}");
        let published = format!("http://{}/healthz", relay.addr("web"));
        let (code, body, err) = curl(&[&published]).await;
        assert_eq!((code, body.as_slice()), (0, &b"ok\n"[..]), "{err}");
        // The virtual host on the relay's reverse listener, many clients at once.
        let port = relay.addr("sites").port();
        let resolve = format!("app.example:{port}:127.0.0.1");
        let mut all = Vec::new();
        for _ in 0..30 {
            let resolve = resolve.clone();
            all.push(tokio::spawn(async move {
                let url = format!("http://app.example:{port}/healthz");
                curl(&["--resolve", &resolve, &url, &url]).await
            }));
        }
        for t in all {
            let (code, body, err) = t.await.expect("task");
            assert_eq!((code, body.as_slice()), (0, &b"ok\nok\n"[..]), "{err}");
        }
        // Inside, but not on the allow-list: refused by the agent.
        let (code, _, err) = curl(&[
            "--socks5-hostname",
            &socks,
            "http://10.201.0.2:18080/healthz",
        ])
        .await;
        assert_ne!(code, 0, "{err}");
        assert!(err.contains("SOCKS") || err.contains("connect"), "{err}");
    });
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = target.kill();
    let _ = target.wait();
}

/// SOCKS5 BIND through the agent into the private network: the client, outside, asks the
/// relay for a BIND expecting a peer on the private network's loopback; the first reply
/// carries the address the agent listens on there; a process inside connects to it, the
/// second reply names it, and bytes flow both ways.
#[test]
fn bind_through_the_agent_takes_a_connection_from_inside_the_private_network() {
    if !in_fresh_netns("bind_through_the_agent_takes_a_connection_from_inside_the_private_network")
    {
        return;
    }
    let certs = Certs::make();
    let net = PrivateNet::create();
    let dir = tempfile::tempdir().expect("tempdir");
    let relay_text = relay_config(&certs, "").replacen(
        "listen = \"127.0.0.1:0\"",
        "listen = \"10.201.0.1:0\"",
        1,
    );
    let relay = Gatehouse::start(&relay_text);
    let web: SocketAddr = "127.0.0.1:18080".parse().expect("addr");
    let mut agent = net.gatehouse(
        dir.path(),
        "agent",
        &agent_config(
            &[relay.addr("agents")],
            &ca(&certs),
            TOKEN,
            "\"127.0.0.1\"",
            web,
        ),
    );
    relay.wait_stderr("tunnel: agent connected");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut s = socks5_open(relay.addr("socks")).await;
        s.write_all(&socks5_request(2, "127.0.0.1:0".parse().expect("addr")))
            .await
            .expect("request");
        let (rep, bound) = socks5_reply(&mut s).await;
        assert_eq!(rep, 0);
        assert_eq!(bound.ip().to_string(), "127.0.0.1", "{bound}");
        // Outside, that port is nobody's: the listening socket is in the private network.
        assert!(TcpStream::connect(bound).await.is_err());
        // Inside: connect to the announced address, say "inside", print what comes back.
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{}; printf inside >&3; head -c 7 <&3",
            bound.port()
        );
        let peer = tokio::process::Command::new("nsenter")
            .args(["-t", &net.pid().to_string(), "-n", "bash", "-c", &script])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("nsenter bash");
        let (rep, from) = socks5_reply(&mut s).await;
        assert_eq!(rep, 0);
        assert_eq!(from.ip().to_string(), "127.0.0.1", "{from}");
        let mut got = [0u8; 6];
        tokio::time::timeout(T, s.read_exact(&mut got))
            .await
            .expect("bytes from inside within 10s")
            .expect("read");
        assert_eq!(&got, b"inside");
        s.write_all(b"outside").await.expect("write");
        let out = tokio::time::timeout(T, peer.wait_with_output())
            .await
            .expect("the inside peer finished")
            .expect("output");
        assert_eq!(
            out.stdout,
            b"outside",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    let _ = agent.kill();
    let _ = agent.wait();
}

/// A policy rule routes to the agent (`action = "route"`, `agent = "office"`, by destination):
/// an ordinary SOCKS listener (no `via_agent`) and the HTTP forward proxy, both CONNECT and
/// absolute-URI requests, reach a target only the private network has, through the agent.
/// Other destinations are not routed (and a name the relay cannot resolve then fails).
#[test]
fn a_policy_route_sends_socks_and_http_proxy_traffic_through_the_agent() {
    if !in_fresh_netns("a_policy_route_sends_socks_and_http_proxy_traffic_through_the_agent") {
        return;
    }
    let certs = Certs::make();
    let net = PrivateNet::create();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut target = net.gatehouse(
        dir.path(),
        "target",
        "[[listeners]]\nname = \"h\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n\
         [admin]\nlisten = \"127.0.0.1:18080\"\n",
    );
    let relay = Gatehouse::start(&format!(
        r#"
[[listeners]]
name = "agents"
kind = "tunnel"
listen = "10.201.0.1:0"
tls = {{ cert = "{crt}", key = "{key}" }}
[[listeners.agents]]
name = "office"
token = "{TOKEN}"

[[listeners]]
name = "socks"
kind = "socks"
listen = "127.0.0.1:0"

{http}
{TO_OFFICE}"#,
        crt = certs.crt().display(),
        key = certs.key().display(),
        http = http_listener("http", "connect_ports = [18080]"),
    ));
    let web: SocketAddr = "127.0.0.1:18080".parse().expect("addr");
    let mut agent = net.gatehouse(
        dir.path(),
        "agent",
        &agent_config(
            &[relay.addr("agents")],
            &ca(&certs),
            TOKEN,
            "\"127.0.0.1:18080\"",
            web,
        ),
    );
    relay.wait_stderr("tunnel: agent connected");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let url = "http://inside.test:18080/healthz";
        let socks = relay.addr("socks").to_string();
        let http = format!("http://{}", relay.addr("http"));
        for args in [
            vec!["--socks5-hostname", socks.as_str(), url],
            vec!["-x", http.as_str(), url],
            vec!["-p", "-x", http.as_str(), url],
        ] {
            let (code, body, err) = curl(&args).await;
            assert_eq!(
                (code, body.as_slice()),
                (0, &b"ok\n"[..]),
                "{args:?}: {err}"
            );
        }
        // Not routed: the relay itself cannot reach the target.
        let (code, body, _) = curl(&["-x", &http, "http://127.0.0.1:18080/healthz"]).await;
        assert!(code != 0 || body != b"ok\n", "reached without the agent");
    });
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = target.kill();
    let _ = target.wait();
}
