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
/// the same pair fails requests, so the retry is what saves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_open_goes_to_another_agent_of_the_pool() {
    let certs = Certs::make();
    let origin = Origin::fixed("inside").await;
    let dead = closed_port().await;
    let route = "agent = \"office\"\nservice = \"web\"\n";
    let relay = Gatehouse::start(&format!(
        "{}{}",
        tunnel_listener(&certs, true),
        sites(route)
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
        sites(route).replace(
            "listen = \"127.0.0.1:0\"\n[[listeners.hosts]]",
            "listen = \"127.0.0.1:0\"\nretries = 0\n[[listeners.hosts]]"
        )
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
