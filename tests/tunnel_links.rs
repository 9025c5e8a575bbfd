//! End-to-end: an agent keeping several links to one relay (`connections = N`). The relay
//! takes them as one agent (one entry in the admin API, with its links; the agents gauge
//! counts it once), spreads streams over them, refuses a second agent process under the same
//! name (its own session) as a duplicate, bounds the links of one agent (`max_links`), and a
//! link cut by a TCP middlebox of the test's leaves the other serving until it redials; with
//! `[runtime] per_core` each link sits on a worker of its own.

mod common;
mod tunnel_util;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tunnel_util::*;

/// A listener "web" publishing agent "office"'s service "web", and an admin listener.
const WEB_AND_ADMIN: &str = r#"
[[listeners]]
name = "web"
kind = "published"
listen = "127.0.0.1:0"
agent = "office"
service = "web"

[admin]
listen = "127.0.0.1:0"
"#;

/// A relay accepting "office" (with `office_keys` added to its entry), publishing its "web".
fn relay(certs: &Certs, office_keys: &str) -> Gatehouse {
    let tunnel = tunnel_listener(certs, false).replacen(
        "pool = false\n",
        &format!("pool = false\n{office_keys}"),
        1,
    );
    Gatehouse::start(&format!("{tunnel}{WEB_AND_ADMIN}"))
}

/// Agent "office" with `connections = links`, dialling `relay`, publishing `web`.
fn agent_with_links(certs: &Certs, relay: SocketAddr, web: SocketAddr, links: u32) -> String {
    agent_config(certs, "office", &[relay], "", web).replacen(
        "[agent]\n",
        &format!("[agent]\nconnections = {links}\n"),
        1,
    )
}

/// `GET /api/v1/agents`.
async fn agents(admin: SocketAddr) -> serde_json::Value {
    let (code, body, err) = curl(&[&format!("http://{admin}/api/v1/agents")]).await;
    assert_eq!(code, 0, "{err}");
    serde_json::from_slice(&body).expect("JSON")
}

/// Waits until the one agent listed has `links` links.
async fn wait_links(admin: SocketAddr, links: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = agents(admin).await;
        if v["agents"][0]["links"].as_u64() == Some(links) {
            return v;
        }
        assert!(Instant::now() < deadline, "not {links} links: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` GETs through the published port at once, every one answered.
async fn many_gets(web: SocketAddr, n: usize) {
    let url = format!("http://{web}/");
    let all = (0..n).map(|_| {
        let url = url.clone();
        async move { curl(&[&url]).await }
    });
    for (code, body, err) in futures_util::future::join_all(all).await {
        assert_eq!((code, body.as_slice()), (0, &b"inside"[..]), "{err}");
    }
}

/// `[runtime] per_core` with two workers on both sides and two links: the relay drives the
/// links on different workers (the admin API says which), published clients go to those
/// workers, and both links carry streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_core_links_sit_on_their_own_workers_and_both_carry_streams() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let per_core = "[runtime]\nworkers = 2\nper_core = true\n";
    let tunnel = tunnel_listener(&certs, false);
    let relay = Gatehouse::start(&format!("{per_core}{tunnel}{WEB_AND_ADMIN}"));
    let admin = relay.addr("admin");
    let _agent = Gatehouse::start(&format!(
        "{per_core}{}",
        agent_with_links(&certs, relay.addr("agents"), origin.addr, 2)
    ));
    let v = wait_links(admin, 2).await;
    let mut workers: Vec<u64> = v["agents"][0]["per_link"]
        .as_array()
        .expect("per_link")
        .iter()
        .map(|l| l["worker"].as_u64().expect("a worker per link"))
        .collect();
    workers.sort_unstable();
    assert_eq!(workers, [0, 1], "{v}");

    many_gets(relay.addr("web"), 40).await;
    assert_eq!(origin.seen().len(), 40);
    let v = agents(admin).await;
    let per_link: Vec<u64> = v["agents"][0]["per_link"]
        .as_array()
        .expect("per_link")
        .iter()
        .map(|l| l["streams_total"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(per_link.iter().sum::<u64>(), 40, "{v}");
    assert!(
        per_link.iter().all(|n| *n > 0),
        "a link took no stream: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_links_are_one_agent_and_both_carry_streams() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let relay = relay(&certs, "");
    let admin = relay.addr("admin");
    let first = Gatehouse::start(&agent_with_links(
        &certs,
        relay.addr("agents"),
        origin.addr,
        2,
    ));
    // The two links are driven by different workers: either may log first.
    relay.wait_stderr_all(&["tunnel: agent connected", "tunnel: agent link connected"]);
    let v = wait_links(admin, 2).await;
    assert_eq!(v["agents"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["agents"][0]["name"], "office");
    assert_eq!(metric(admin, "gatehouse_tunnel_agents").await, Some(1.0));

    many_gets(relay.addr("web"), 40).await;
    assert_eq!(origin.seen().len(), 40);
    let v = agents(admin).await;
    let agent = &v["agents"][0];
    assert_eq!(agent["streams_total"], 40, "{v}");
    let per_link: Vec<u64> = agent["per_link"]
        .as_array()
        .expect("per_link")
        .iter()
        .map(|l| l["streams_total"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(per_link.len(), 2, "{v}");
    assert!(per_link.iter().all(|n| *n >= 5), "not spread: {v}");
    assert_eq!(per_link.iter().sum::<u64>(), 40, "{v}");

    // Another agent process under the same name and token: its own session, a duplicate.
    let second = Gatehouse::start(&agent_with_links(
        &certs,
        relay.addr("agents"),
        origin.addr,
        2,
    ));
    second.wait_stderr("already has an agent of this name connected");
    relay.wait_stderr("the name is already connected");
    assert_eq!(
        wait_links(admin, 2).await["agents"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    drop(second);

    drop(first);
    relay.wait_stderr("tunnel: agent disconnected");
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(admin, "gatehouse_tunnel_agents").await != Some(0.0) {
        let v = agents(admin).await;
        assert!(Instant::now() < deadline, "the agent is still counted: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(agents(admin).await["agents"], serde_json::json!([]));
}

/// A pool name with two agents of two links each: the agents share the streams evenly
/// (each agent's links summed), and each spreads its share over its links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_agents_with_several_links_balances_by_agent_then_link() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let relay = Gatehouse::start(&format!("{}{WEB_AND_ADMIN}", tunnel_listener(&certs, true)));
    let admin = relay.addr("admin");
    let config = agent_with_links(&certs, relay.addr("agents"), origin.addr, 2);
    let (_a, _b) = (Gatehouse::start(&config), Gatehouse::start(&config));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = agents(admin).await;
        let links: Vec<u64> = v["agents"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["links"].as_u64()).collect())
            .unwrap_or_default();
        if links == [2, 2] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not two agents of two links: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(admin, "gatehouse_tunnel_agents").await, Some(2.0));
    many_gets(relay.addr("web"), 40).await;
    let v = agents(admin).await;
    for agent in v["agents"].as_array().expect("agents") {
        assert!(
            agent["streams_total"].as_u64() >= Some(12),
            "not balanced: {v}"
        );
        for link in agent["per_link"].as_array().expect("per_link") {
            assert!(
                link["streams_total"].as_u64() >= Some(3),
                "a link idle: {v}"
            );
        }
    }
}

/// One forwarded connection: its copying task and its freeze switch.
type Forwarded = (tokio::task::JoinHandle<()>, Arc<tokio::sync::Notify>);

/// A TCP forwarder between the agent and the relay whose connections the test can cut or
/// freeze.
struct Middlebox {
    addr: SocketAddr,
    /// Each connection, in the order accepted.
    conns: Arc<Mutex<Vec<Forwarded>>>,
}

impl Middlebox {
    async fn start(to: SocketAddr) -> Middlebox {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let conns: Arc<Mutex<Vec<Forwarded>>> = Arc::default();
        let list = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let freeze = Arc::new(tokio::sync::Notify::new());
                let frozen = freeze.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            // Nothing passes any more, and both sockets stay open.
                            _ = frozen.notified() => std::future::pending::<()>().await,
                        }
                    }
                });
                list.lock().expect("lock").push((task, freeze));
            }
        });
        Middlebox { addr, conns }
    }

    fn accepted(&self) -> usize {
        self.conns.lock().expect("lock").len()
    }

    /// Cuts connection `i`: both its sockets close.
    fn cut(&self, i: usize) {
        self.conns.lock().expect("lock")[i].0.abort();
    }

    /// Freezes connection `i`: nothing passes, nothing closes (a half-open connection).
    fn freeze(&self, i: usize) {
        self.conns.lock().expect("lock")[i].1.notify_one();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_leaves_the_other_serving_and_redials_alone() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let relay = relay(&certs, "");
    let admin = relay.addr("admin");
    let middle = Middlebox::start(relay.addr("agents")).await;
    let agent = Gatehouse::start(&agent_with_links(&certs, middle.addr, origin.addr, 2));
    wait_links(admin, 2).await;
    assert_eq!(middle.accepted(), 2);

    middle.cut(0);
    relay.wait_stderr("tunnel: agent link disconnected");
    agent.wait_stderr("tunnel: disconnected from the relay");
    // Still one agent, served by its other link meanwhile (or both again, once back).
    assert_eq!(metric(admin, "gatehouse_tunnel_agents").await, Some(1.0));
    many_gets(relay.addr("web"), 10).await;

    // The cut link alone redials: a third connection through the middlebox, two links up.
    relay.wait_stderr("tunnel: agent link connected");
    let v = wait_links(admin, 2).await;
    assert_eq!(middle.accepted(), 3, "only the cut link redialled");
    assert_eq!(v["agents"].as_array().map(Vec::len), Some(1), "{v}");
    many_gets(relay.addr("web"), 10).await;
    assert_eq!(origin.seen().len(), 20);
    drop(agent);
}

/// `mode = "failover"` with two relays: a cut link redials the relay its agent's other link
/// is on (the first), not the next one in its list; a lone link would have gone round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_failover_a_cut_link_rejoins_the_relay_of_its_agent() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let (first, second) = (relay(&certs, ""), relay(&certs, ""));
    let middle = Middlebox::start(first.addr("agents")).await;
    let config = agent_config(
        &certs,
        "office",
        &[middle.addr, second.addr("agents")],
        "",
        origin.addr,
    )
    .replacen("[agent]\n", "[agent]\nconnections = 2\n", 1);
    let agent = Gatehouse::start(&config);
    wait_links(first.addr("admin"), 2).await;
    middle.cut(1);
    first.wait_stderr("tunnel: agent link disconnected");
    first.wait_stderr("tunnel: agent link connected");
    wait_links(first.addr("admin"), 2).await;
    assert_eq!(middle.accepted(), 3);
    let v = agents(second.addr("admin")).await;
    assert_eq!(v["agents"], serde_json::json!([]), "{v}");
    many_gets(first.addr("web"), 4).await;
    drop(agent);
}

/// A link that goes silent (frozen in the middlebox): the agent gives it up after its
/// `dead_after` (1s here) and redials it; the relay, whose `dead_after` is 30s, still holds
/// the old one, and the new link (same session, same index) replaces it at once, within
/// `max_links = 2`. Every request after that is served (none goes to the silent link).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redialled_link_replaces_the_silent_one_the_relay_still_holds() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let tunnel = tunnel_listener(&certs, false)
        .replacen("dead_after = \"3s\"", "dead_after = \"30s\"", 1)
        .replacen("pool = false\n", "pool = false\nmax_links = 2\n", 1);
    let relay = Gatehouse::start(&format!("{tunnel}{WEB_AND_ADMIN}"));
    let admin = relay.addr("admin");
    let middle = Middlebox::start(relay.addr("agents")).await;
    let config = agent_with_links(&certs, middle.addr, origin.addr, 2).replacen(
        "dead_after = \"3s\"",
        "dead_after = \"1s\"",
        1,
    );
    let agent = Gatehouse::start(&config);
    wait_links(admin, 2).await;
    middle.freeze(0);
    agent.wait_stderr("no answer to a ping");
    // The old link's task ends on its own thread as soon as the new link cancels it, so
    // its line may come before the new link's.
    let lines = relay.wait_stderr_all(&[
        "replacing the one this agent redialled",
        "tunnel: agent link disconnected",
    ]);
    assert!(lines[0].contains("agent=office"), "{lines:?}");
    assert!(lines[1].contains("replaced"), "{lines:?}");
    let v = wait_links(admin, 2).await;
    assert_eq!(v["agents"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(metric(admin, "gatehouse_tunnel_agents").await, Some(1.0));
    many_gets(relay.addr("web"), 10).await;
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_bounds_the_links_of_one_agent() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let relay = relay(&certs, "max_links = 2\n");
    let admin = relay.addr("admin");
    let agent = Gatehouse::start(&agent_with_links(
        &certs,
        relay.addr("agents"),
        origin.addr,
        3,
    ));
    let line = relay.wait_stderr("max_links links connected already");
    assert!(line.contains("agent=office"), "{line}");
    agent.wait_stderr("as many links of this agent as it takes");
    let v = wait_links(admin, 2).await;
    assert_eq!(v["agents"].as_array().map(Vec::len), Some(1), "{v}");
    // The two links it has serve.
    many_gets(relay.addr("web"), 6).await;
    drop(agent);
}

#[test]
fn connections_out_of_range_is_a_config_error() {
    let certs = Certs::make();
    let relay: SocketAddr = ([127, 0, 0, 1], 9).into();
    for links in [0, 17] {
        let err = Gatehouse::try_start(&agent_with_links(&certs, relay, relay, links))
            .err()
            .expect("refused");
        assert!(err.contains("agent.connections"), "{links}: {err}");
    }
}
