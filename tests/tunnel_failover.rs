//! End-to-end: failing over around tunnel agents. HTTP virtual hosts through a pool of
//! agents retry a failed stream open on another agent; `[[pools.servers]]` may name an
//! agent's service beside ordinary servers, with passive ejection on failed opens.

mod common;
mod tunnel_util;

use std::net::SocketAddr;

use common::*;
use tunnel_util::*;

/// A GET of `path` on the relay's virtual host `app.example`: (status, body).
async fn get(sites: SocketAddr, path: &str) -> (String, String) {
    let resolve = format!("app.example:{}:127.0.0.1", sites.port());
    let url = format!("http://app.example:{}{path}", sites.port());
    let (code, out, err) = curl(&["-s", "-w", "\n%{http_code}", "--resolve", &resolve, &url]).await;
    assert_eq!(code, 0, "{err}");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (body, status) = text.rsplit_once('\n').expect("status line");
    (status.to_string(), body.to_string())
}

/// A reverse listener "sites" whose `app.example` is served by `route` (TOML keys).
fn sites(route: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "sites"
kind = "reverse"
listen = "127.0.0.1:0"
[[listeners.hosts]]
names = ["app.example"]
[[listeners.hosts.routes]]
{route}
"#
    )
}

/// Two agents in the pool "office": one whose service "web" refuses every connection, one
/// whose service answers. Every request through the virtual host is answered: an open the
/// first agent fails goes to the second (nothing of the request was sent). With no retries
/// the same pair fails requests, so the retry is what saves them. No stream is kept between
/// requests (`idle_per_server = 0`), so each request opens one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_open_goes_to_another_agent_of_the_pool() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let dead = closed_port().await;
    let route = "agent = \"office\"\nservice = \"web\"\n";
    let listen = "listen = \"127.0.0.1:0\"\n[[listeners.hosts]]";
    let keep_none = "listen = \"127.0.0.1:0\"\nidle_per_server = 0\n[[listeners.hosts]]";
    let relay = Gatehouse::start(&format!(
        "{}{}",
        tunnel_listener(&certs, true),
        sites(route).replace(listen, keep_none)
    ));
    let relays = [relay.addr("agents")];
    let _broken = Gatehouse::start(&agent_config(&certs, "office", &relays, "", dead));
    relay.wait_stderr("tunnel: agent connected");
    let _good = Gatehouse::start(&agent_config(&certs, "office", &relays, "", origin.addr));
    relay.wait_stderr("tunnel: agent connected");
    for i in 0..12 {
        let (status, body) = get(relay.addr("sites"), &format!("/{i}")).await;
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("200", "inside"),
            "request {i}"
        );
    }
    assert_eq!(origin.seen().len(), 12);

    // The same agents behind a listener with `retries = 0`: the refused opens reach clients.
    let no_retry = Gatehouse::start(&format!(
        "{}{}",
        tunnel_listener(&certs, true),
        sites(route).replace(listen, &keep_none.replace("\n[[", "\nretries = 0\n[["))
    ));
    let relays = [no_retry.addr("agents")];
    let _broken = Gatehouse::start(&agent_config(&certs, "office", &relays, "", dead));
    no_retry.wait_stderr("tunnel: agent connected");
    let _good = Gatehouse::start(&agent_config(&certs, "office", &relays, "", origin.addr));
    no_retry.wait_stderr("tunnel: agent connected");
    let mut failed = 0;
    for i in 0..12 {
        let (status, _) = get(no_retry.addr("sites"), &format!("/{i}")).await;
        if status == "502" {
            failed += 1;
        }
    }
    assert!(
        failed >= 4,
        "round-robin sent only {failed} of 12 to the broken agent"
    );
}

/// A pool mixing a service through agent "office" with an ordinary server: requests are
/// balanced over both; with the agent gone, its failed opens go to the other server (no
/// client sees an error) and passive checks eject it; once the agent is back and the
/// ejection over, it serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_server_may_be_a_service_through_an_agent() {
    let certs = Certs::make();
    let inside = Origin::fixed("inside").await;
    let direct = Origin::fixed("direct").await;
    let relay = Gatehouse::start(&format!(
        r#"{tunnel}{sites}
[admin]
listen = "127.0.0.1:0"

[[pools]]
name = "app"
[pools.passive]
max_failures = 2
ejection = "1s"
[[pools.servers]]
agent = "office"
service = "web"
[[pools.servers]]
address = "{direct}"
"#,
        tunnel = tunnel_listener(&certs, false),
        sites = sites("pool = \"app\""),
        direct = direct.addr,
    ));
    let relays = [relay.addr("agents")];
    let agent_cfg = agent_config(&certs, "office", &relays, "", inside.addr);
    let agent = Gatehouse::start(&agent_cfg);
    relay.wait_stderr("tunnel: agent connected");
    let mut bodies = Vec::new();
    for i in 0..8 {
        let (status, body) = get(relay.addr("sites"), &format!("/{i}")).await;
        assert_eq!(status, "200", "{body}");
        bodies.push(body);
    }
    assert!(bodies.iter().any(|b| b == "inside"), "{bodies:?}");
    assert!(bodies.iter().any(|b| b == "direct"), "{bodies:?}");

    drop(agent);
    relay.wait_stderr("tunnel: agent disconnected");
    for i in 0..8 {
        let (status, body) = get(relay.addr("sites"), &format!("/gone/{i}")).await;
        assert_eq!((status.as_str(), body.as_str()), ("200", "direct"));
    }
    let admin = relay.addr("admin");
    let (_, out, _) = curl(&[&format!("http://{admin}/api/v1/status")]).await;
    let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
    let server = &v["pools"]["app"][0];
    assert_eq!(server["server"], "agent:office/web", "{v:#}");
    assert_eq!(server["ejected"], true, "{v:#}");

    // Back: once the ejection runs out, requests reach the agent's service again.
    let _agent = Gatehouse::start(&agent_cfg);
    relay.wait_stderr("tunnel: agent connected");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, body) = get(relay.addr("sites"), "/back").await;
        assert_eq!(status, "200");
        if body == "inside" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent's service never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A rule routing `inside.test` to agent "office" with `parents = ["corp"]` beside it: while
/// no agent is connected the HTTP parent carries SOCKS CONNECTs, HTTP CONNECTs and
/// absolute-URI requests; once the agent is there it carries them (its stream count rises,
/// the parent sees nothing more). The relay cannot resolve the name itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_falls_back_to_its_parents_while_the_agent_is_away() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let any_port = "connect_ports = [\"1-65535\"]";
    let parent_keys = format!("{any_port}\nvia = \"corp-proxy\"");
    let parent = Gatehouse::start(&format!("{}{NO_DNS}", http_listener("http", &parent_keys)));
    let relay = Gatehouse::start(&format!(
        r#"{tunnel}
[[listeners]]
name = "socks"
kind = "socks"
listen = "127.0.0.1:0"

{http}
[admin]
listen = "127.0.0.1:0"

[[policy.parents]]
name = "corp"
url = "http://{parent}"

[[policy.rules]]
name = "to-office"
action = "route"
agent = "office"
parents = ["corp"]
hosts = ["inside.test"]

[dns]
servers = ["127.0.0.1:9"]
timeout = "1s"
attempts = 1
"#,
        tunnel = tunnel_listener(&certs, false),
        http = http_listener("http", any_port),
        parent = parent.addr("http"),
    ));
    let url = format!("http://inside.test:{}/", origin.addr.port());
    let socks = format!("socks5h://{}", relay.addr("socks"));
    let proxy = relay.proxy_url("http");
    let all = |url: String, socks: String, proxy: String| async move {
        for args in [
            vec!["-x", &proxy, &url],
            vec!["-p", "-x", &proxy, &url],
            vec!["-x", &socks, &url],
        ] {
            let (code, body, err) = curl(&args).await;
            assert_eq!(
                (code, body.as_slice()),
                (0, &b"inside"[..]),
                "{args:?}: {err}"
            );
        }
    };
    // No agent: the parent carries all three.
    all(url.clone(), socks.clone(), proxy.clone()).await;
    for _ in 0..3 {
        parent.wait_log("inside.test");
    }
    let admin = relay.addr("admin");
    let agents = || async move {
        let (_, out, _) = curl(&[&format!("http://{admin}/api/v1/agents")]).await;
        let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        v["agents"][0]["streams_total"].as_u64()
    };
    assert_eq!(agents().await, None, "no agent yet");

    // The agent connected: it carries them.
    let _agent = Gatehouse::start(&agent_config(
        &certs,
        "office",
        &[relay.addr("agents")],
        &format!("\"127.0.0.1:{}\"", origin.addr.port()),
        origin.addr,
    ));
    relay.wait_stderr("tunnel: agent connected");
    all(url, socks, proxy.clone()).await;
    assert_eq!(agents().await, Some(3));
    assert_eq!(origin.seen().len(), 6);

    // The agent there but refusing (a port outside its allow-list): the parent again.
    let other = Origin::fixed("other").await;
    let url = format!("http://inside.test:{}/", other.addr.port());
    let (code, body, err) = curl(&["-x", &proxy, &url]).await;
    assert_eq!((code, body.as_slice()), (0, &b"other"[..]), "{err}");
    parent.wait_log(&format!("inside.test:{}", other.addr.port()));
}

/// A listener "web" publishing agent "office"'s service "web".
const PUBLISHED_WEB: &str = r#"
[[listeners]]
name = "web"
kind = "published"
listen = "127.0.0.1:0"
agent = "office"
service = "web"
"#;

/// A relay publishing the agent's service "web" on its listener "web".
fn publishing_relay(certs: &Certs) -> Gatehouse {
    Gatehouse::start(&format!("{}{PUBLISHED_WEB}", tunnel_listener(certs, false)))
}

/// SIGHUP on a running agent: an unchanged `[agent]` keeps its session (a relayed stream
/// goes on); new relays make it reconnect there (the old relay loses it); a changed token
/// reaches the relay too (refused there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reconnects_an_agent_only_when_its_section_changed() {
    let certs = Certs::make();
    let echo = echo_server().await;
    let (a, b) = (publishing_relay(&certs), publishing_relay(&certs));
    let first = agent_config(&certs, "office", &[a.addr("agents")], "", echo);
    let agent = Gatehouse::start(&first);
    a.wait_stderr("tunnel: agent connected");
    let mut kept = tokio::net::TcpStream::connect(a.addr("web"))
        .await
        .expect("connect");
    echo_roundtrip(&mut kept, b"before").await;

    // The same section again: nothing moves.
    std::fs::write(agent.config_path(), &first).expect("rewrite");
    agent.signal("HUP");
    agent.wait_stderr("applied");
    echo_roundtrip(&mut kept, b"after an unchanged reload").await;

    // Another relay: the agent leaves the first and serves through the second.
    let second = agent_config(&certs, "office", &[b.addr("agents")], "", echo);
    reload_to_another_relay(&agent, &second, &a, &b).await;
    // The stream through the first relay went with the old session.
    assert!(until_closed(&mut kept).await.is_empty());

    // Another token: the relay hears it (and refuses it).
    std::fs::write(agent.config_path(), second.replace(TOKEN, "another-token")).expect("rewrite");
    agent.signal("HUP");
    agent.wait_stderr("reconnecting with the new settings");
    b.wait_stderr("tunnel: agent refused");
    agent.wait_stderr("refused this agent's name or token");
}

/// With `[runtime] per_core` an agent's links run as tasks of their own on its workers: a
/// reload that changes the section still ends them all (the old relay loses the agent, not
/// only one of its links) and the new ones serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_a_per_core_agent_with_all_its_links() {
    let certs = Certs::make();
    let echo = echo_server().await;
    let (a, b) = (publishing_relay(&certs), publishing_relay(&certs));
    let config = |relay| {
        let agent = agent_config(&certs, "office", &[relay], "", echo);
        let agent = agent.replacen("[agent]\n", "[agent]\nconnections = 2\n", 1);
        format!("[runtime]\nworkers = 2\nper_core = true\n{agent}")
    };
    let agent = Gatehouse::start(&config(a.addr("agents")));
    // Its two links are admitted on two threads: their lines come in either order.
    a.wait_stderr_all(&["tunnel: agent connected", "tunnel: agent link connected"]);

    // "agent disconnected" is logged once the agent's last link is gone.
    reload_to_another_relay(&agent, &config(b.addr("agents")), &a, &b).await;
}

/// Rewrites `agent`'s config to `config` (which dials `to` instead of `from`) and reloads
/// it: the agent reconnects, `to` takes it, `from` loses it; a client of `to`'s published
/// port gets through, one of `from`'s is closed at once.
async fn reload_to_another_relay(
    agent: &Gatehouse,
    config: &str,
    from: &Gatehouse,
    to: &Gatehouse,
) {
    std::fs::write(agent.config_path(), config).expect("rewrite");
    agent.signal("HUP");
    agent.wait_stderr("reconnecting with the new settings");
    to.wait_stderr("tunnel: agent connected");
    from.wait_stderr("tunnel: agent disconnected");
    let mut moved = tokio::net::TcpStream::connect(to.addr("web"))
        .await
        .expect("connect");
    echo_roundtrip(&mut moved, b"through the second relay").await;
    let mut stale = tokio::net::TcpStream::connect(from.addr("web"))
        .await
        .expect("connect");
    assert!(
        until_closed(&mut stale).await.is_empty(),
        "the first relay has no agent any more"
    );
}

/// A CA file replaced under the same path is a change, as a `token_file` is: the agent whose
/// CA did not verify the relay reconnects, on a reload of the same text, with the new CA.
/// (Before, the reload found the section unchanged and kept the old CA's connector.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_notices_a_ca_file_replaced_under_the_same_path() {
    let (certs, other) = (Certs::make(), Certs::make());
    let echo = echo_server().await;
    let relay = publishing_relay(&certs);
    // The agent's CA file holds another certificate at first: the relay's does not verify.
    let config = agent_config(&other, "office", &[relay.addr("agents")], "", echo);
    let agent = Gatehouse::start(&config);
    let refused = agent.wait_stderr("tunnel: disconnected from the relay");
    assert!(refused.contains("TLS"), "{refused}");

    std::fs::copy(certs.crt(), other.crt()).expect("replace the CA file");
    std::fs::write(agent.config_path(), &config).expect("rewrite");
    agent.signal("HUP");
    agent.wait_stderr("reconnecting with the new settings");
    relay.wait_stderr("tunnel: agent connected");
    let mut s = tokio::net::TcpStream::connect(relay.addr("web"))
        .await
        .expect("connect");
    echo_roundtrip(&mut s, b"verified by the new CA").await;
}

/// A published port and a SOCKS listener over the pool "office", where one agent fails
/// every open (its service refuses, and its allow-list has nothing for SOCKS: CONNECT and
/// BIND) and the other serves: every client gets through, because a failed open goes to the
/// other agent (nothing of the client's bytes had gone anywhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_ports_and_socks_retry_a_failed_open_on_another_agent() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let dead = closed_port().await;
    let relay = Gatehouse::start(&format!(
        "{}{PUBLISHED_WEB}\n[[listeners]]\nname = \"socks\"\nkind = \"socks\"\n\
         listen = \"127.0.0.1:0\"\nvia_agent = \"office\"\n",
        tunnel_listener(&certs, true)
    ));
    let relays = [relay.addr("agents")];
    let _broken = Gatehouse::start(&agent_config(&certs, "office", &relays, "", dead));
    relay.wait_stderr("tunnel: agent connected");
    let allow = "\"127.0.0.0/8\"";
    let _good = Gatehouse::start(&agent_config(&certs, "office", &relays, allow, origin.addr));
    relay.wait_stderr("tunnel: agent connected");
    let web = relay.addr("web");
    let socks = relay.addr("socks").to_string();
    let through_socks = format!("http://inside.test:{}/", origin.addr.port());
    for i in 0..8 {
        let (code, body, err) = curl(&[&format!("http://{web}/p{i}")]).await;
        assert_eq!(
            (code, body.as_slice()),
            (0, &b"inside"[..]),
            "published {i}: {err}"
        );
        let (code, body, err) = curl(&["--socks5-hostname", &socks, &through_socks]).await;
        assert_eq!(
            (code, body.as_slice()),
            (0, &b"inside"[..]),
            "socks {i}: {err}"
        );
        // BIND: the broken agent's allow-list refuses the expected peer, the other listens.
        let mut s = socks5_open(relay.addr("socks")).await;
        let peer: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        tokio::io::AsyncWriteExt::write_all(&mut s, &socks5_request(2, peer))
            .await
            .expect("request");
        let (rep, bound) = socks5_reply(&mut s).await;
        assert_eq!(rep, 0, "bind {i}");
        assert!(bound.port() != 0, "bind {i}: {bound}");
    }
    assert_eq!(origin.seen().len(), 16);
}

/// Agents of a pool take new streams by the fewest open (HAProxy's `leastconn`), not in
/// turn: agent "a" holds four published-port connections open when agent "b" joins, so
/// every new connection goes to "b" (round-robin would send half to "a").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_agent_with_fewer_streams_open_takes_the_next() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certs = Certs::make();
    let a = Origin::fixed("a").await;
    let b = Origin::fixed("b").await;
    let relay = Gatehouse::start(&format!("{}{PUBLISHED_WEB}", tunnel_listener(&certs, true)));
    let relays = [relay.addr("agents")];
    let _a = Gatehouse::start(&agent_config(&certs, "office", &relays, "", a.addr));
    relay.wait_stderr("tunnel: agent connected");
    let web = relay.addr("web");
    // Four keep-alive connections through "a", each answered once and then held open.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(web).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: inside\r\n\r\n")
            .await
            .expect("write");
        let mut buf = vec![0u8; 1024];
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\na") {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        held.push(s);
    }
    let _b = Gatehouse::start(&agent_config(&certs, "office", &relays, "", b.addr));
    relay.wait_stderr("tunnel: agent connected");
    for i in 0..6 {
        let (code, body, err) = curl(&[&format!("http://{web}/n{i}")]).await;
        assert_eq!(
            (code, body.as_slice()),
            (0, &b"b"[..]),
            "connection {i}: {err}"
        );
    }
    drop(held);
}

/// A pool server through an agent keeps its stream between requests, as an ordinary server
/// keeps its idle connection: the agent's service sees one connection for several requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_server_through_an_agent_keeps_its_stream() {
    let certs = Certs::make();
    let inside = Origin::fixed("inside").await;
    let relay = Gatehouse::start(&format!(
        r#"{tunnel}{sites}
[[pools]]
name = "app"
[[pools.servers]]
agent = "office"
service = "web"
"#,
        tunnel = tunnel_listener(&certs, false),
        sites = sites("pool = \"app\""),
    ));
    let relays = [relay.addr("agents")];
    let _agent = Gatehouse::start(&agent_config(&certs, "office", &relays, "", inside.addr));
    relay.wait_stderr("tunnel: agent connected");
    for i in 0..4 {
        let (status, body) = get(relay.addr("sites"), &format!("/{i}")).await;
        assert_eq!((status.as_str(), body.as_str()), ("200", "inside"), "{i}");
    }
    assert_eq!(inside.seen().len(), 4);
    assert_eq!(
        inside.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

/// A service that expects a PROXY v1 line first on each connection (as nginx's
/// `proxy_protocol` does), keeps the lines, and answers every request on the connection
/// with the source port that line named.
async fn proxied_service() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = lines.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut s = tokio::io::BufReader::new(s);
                let mut line = String::new();
                if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                seen.lock().expect("lock").push(line.trim_end().to_string());
                // "PROXY TCP4 src dst sport dport"
                let sport = line.split(' ').nth(4).unwrap_or("?").to_string();
                loop {
                    // A request head (GETs only: no body).
                    let mut got = false;
                    loop {
                        let mut h = String::new();
                        if s.read_line(&mut h).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if h == "\r\n" {
                            break;
                        }
                        got = true;
                    }
                    if !got {
                        return;
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{sport}",
                        sport.len()
                    );
                    if s.get_mut().write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, lines)
}

/// `proxy_protocol` on a pool whose server is a service through an agent: each stream
/// begins with the PROXY header of the client it serves, and a stream is kept for later
/// requests of the same client connection only (two requests on one client connection
/// share a stream; another client connection gets a stream, and a header, of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_server_through_an_agent_gets_the_client_in_a_proxy_header() {
    let pool = "[[pools]]\nname = \"app\"\nproxy_protocol = \"v1\"\n\
                [[pools.servers]]\nagent = \"office\"\nservice = \"web\"\n";
    client_in_proxy_header(pool, "pool = \"app\"").await;
}

/// The same for a route with `agent`, `service` and `send_proxy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_through_an_agent_sends_the_client_in_a_proxy_header() {
    let route = "agent = \"office\"\nservice = \"web\"\nsend_proxy = \"v1\"";
    client_in_proxy_header("", route).await;
}

async fn client_in_proxy_header(pools: &str, route: &str) {
    let certs = Certs::make();
    let (service, lines) = proxied_service().await;
    let relay = Gatehouse::start(&format!(
        "{tunnel}{sites}\n{pools}",
        tunnel = tunnel_listener(&certs, false),
        sites = sites(route),
    ));
    let relays = [relay.addr("agents")];
    let _agent = Gatehouse::start(&agent_config(&certs, "office", &relays, "", service));
    relay.wait_stderr("tunnel: agent connected");
    let port = relay.addr("sites").port();
    let resolve = format!("app.example:{port}:127.0.0.1");
    let url = format!("http://app.example:{port}/");
    let mut client_ports = Vec::new();
    for _ in 0..2 {
        // Two requests on one client connection; each answer is the source port the
        // service's PROXY line named, then curl's status and its own local port.
        let w = " %{http_code} %{local_port}\n";
        let (code, out, err) = curl(&["-s", "-w", w, "--resolve", &resolve, &url, &url]).await;
        assert_eq!(code, 0, "{err}");
        let text = String::from_utf8_lossy(&out).into_owned();
        let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
        assert_eq!(rows.len(), 2, "{text}");
        for r in &rows {
            assert_eq!(r.len(), 3, "{text}");
            assert_eq!(r[1], "200", "{text}");
            assert_eq!(r[0], r[2], "the header names this client: {text}");
        }
        assert_eq!(rows[0][2], rows[1][2], "one client connection: {text}");
        client_ports.push(rows[0][2].to_string());
    }
    assert_ne!(client_ports[0], client_ports[1]);
    let lines = lines.lock().expect("lock").clone();
    assert_eq!(lines.len(), 2, "a stream per client connection: {lines:?}");
    for (line, cport) in lines.iter().zip(&client_ports) {
        assert_eq!(
            line,
            &format!("PROXY TCP4 127.0.0.1 127.0.0.1 {cport} {port}"),
            "{lines:?}"
        );
    }
}
