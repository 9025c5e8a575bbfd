//! The JSON admin API under `/api/v1/` against the real binary: the status overview fed by
//! real traffic, reload through the API (refused with the problems, or applied), drain, and
//! the token on every change.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const TOKEN: &str = "correct-horse-battery";

async fn get_json(admin: SocketAddr, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("http://{admin}{path}"))
        .await
        .expect("admin GET");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, v)
}

async fn post(admin: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(format!("http://{admin}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("admin POST");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, v)
}

/// Polls the status until `done` holds for it (bounded: 10 s).
async fn status_until(admin: SocketAddr, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, v) = get_json(admin, "/api/v1/status").await;
        assert_eq!(code, 200);
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "status never got there: {v:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn listener<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["listeners"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == name))
        .unwrap_or_else(|| panic!("no listener {name} in {status:#}"))
}

/// A port nothing listens on (bound, then released).
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_traffic_rules_errors_top_lists_cache_and_parents() {
    let origin = Origin::start(std::sync::Arc::new(|_: &Seen| {
        response(200, &[("Cache-Control", "max-age=600")], "hello")
    }))
    .await;
    let dead = dead_port();
    let closed = dead_port();
    let gh = Gatehouse::start(&format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[policy.parents]]\nname = \"dead\"\nurl = \"http://127.0.0.1:{dead}\"\n\
         [[policy.rules]]\nname = \"via-dead\"\naction = \"route\"\nparents = [\"dead\"]\n\
         ports = [{closed}]\n{LOOPBACK_POLICY}",
        http_listener("web", "cache = true"),
    ));
    let admin = gh.addr("admin");

    let before = status_until(admin, |_| true).await;
    let web = listener(&before, "web");
    assert_eq!(web["kind"], "http");
    assert_eq!(web["addr"], gh.addr("web").to_string());
    assert_eq!(web["requests"], 0);
    assert_eq!(web["connections_open"], 0);
    assert_eq!(web["series"].as_array().map(Vec::len), Some(60));
    assert_eq!(before["draining"], false);
    assert!(before["cache"]["hits"].is_u64(), "{before:#}");
    assert!(before["cache"]["hit_ratio"].is_null(), "no lookups yet");
    assert_eq!(before["pools"], serde_json::json!({}));

    // Two fetches of the same cacheable URL, and one routed through a parent that is down.
    for _ in 0..2 {
        let (code, out, err) = curl(&["-x", &gh.proxy_url("web"), &origin.url("/c")]).await;
        assert_eq!((code, out.as_slice()), (0, &b"hello"[..]), "{err}");
    }
    let closed = format!("http://127.0.0.1:{closed}/");
    let (_, out, _) = curl(&["-x", &gh.proxy_url("web"), "-i", &closed]).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 502"));

    let s = status_until(admin, |s| listener(s, "web")["requests"] == 3).await;
    let web = listener(&s, "web");
    assert_eq!(web["errors"], 1);
    assert!(web["bytes_out"].as_u64().unwrap_or(0) > 10, "{web:#}");
    let series_total: u64 = web["series"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["requests"].as_u64()).sum())
        .unwrap_or(0);
    assert!(series_total <= 3, "{web:#}");
    let errors = s["errors"].as_object().expect("errors object");
    assert_eq!(
        errors.values().filter_map(Value::as_u64).sum::<u64>(),
        1,
        "{s:#}"
    );
    assert_eq!(s["rules"]["via-dead"], 1, "{s:#}");
    assert_eq!(s["rules"]["tests-reach-loopback"], 2, "{s:#}");
    assert_eq!(s["top_clients"][0]["key"], "127.0.0.1");
    assert_eq!(s["top_clients"][0]["count"], 3);
    assert_eq!(
        s["top_destinations"][0]["key"],
        format!("127.0.0.1:{}", origin.addr.port())
    );
    assert_eq!(s["top_destinations"][0]["count"], 2);
    assert!(s["cache"]["hits"].as_u64() >= Some(1), "{s:#}");
    assert!(s["cache"]["hit_ratio"].as_f64() > Some(0.0), "{s:#}");
    // The dead parent was tried and failed.
    let parent = &s["parents"]["dead"];
    assert_eq!(parent["up"], false, "{s:#}");
    assert_eq!(parent["failures"], 1, "{s:#}");
    assert!(parent["last_failure"].is_string());
    assert!(parent["last_error"].is_string());
    assert_eq!(origin.seen().len(), 1);

    // Reads only: anything else is refused, and unknown endpoints are 404.
    assert_eq!(post(admin, "/api/v1/status", &[]).await.0, 405);
    assert_eq!(get_json(admin, "/api/v1/nope").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_through_the_api_refuses_a_bad_config_with_its_problems_and_applies_a_good_one() {
    let origin = Origin::fixed("hello").await;
    let gh = Gatehouse::start(&format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n",
        http_listener("web", "")
    ));
    let admin = gh.addr("admin");
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];

    // Changes need the token, and never come from a browser page.
    assert_eq!(post(admin, "/api/v1/reload", &[]).await.0, 401);
    let wrong = [("Authorization", "Bearer nope")];
    assert_eq!(post(admin, "/api/v1/reload", &wrong).await.0, 401);
    let cross = [auth[0], ("Origin", "http://evil.example")];
    assert_eq!(post(admin, "/api/v1/reload", &cross).await.0, 403);
    assert_eq!(post(admin, "/api/v1/drain", &[]).await.0, 401);
    assert_eq!(get_json(admin, "/api/v1/reload").await.0, 405);

    let good = std::fs::read_to_string(gh.config_path()).expect("config");
    let bad = format!("{good}\n[[listeners]]\nname = \"broken\"\nkind = \"nope\"\n");
    std::fs::write(gh.config_path(), &bad).expect("write");
    let (code, v) = post(admin, "/api/v1/reload", &auth).await;
    assert_eq!(code, 422, "{v:#}");
    assert_eq!(v["applied"], false);
    let problems = v["problems"].as_array().expect("problems list");
    assert!(!problems.is_empty());
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.contains("nope"))),
        "{v:#}"
    );
    // Still running the old config.
    let (code, out, _) = curl(&["-x", &gh.proxy_url("web"), &origin.url("/")]).await;
    assert_eq!((code, out.as_slice()), (0, &b"hello"[..]));

    // Valid, but a new listener's port is taken: the rest is in force, the problem named.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let clash = format!(
        "{good}\n[[listeners]]\nname = \"clash\"\nkind = \"http\"\nlisten = \"{}\"\n",
        taken.local_addr().expect("addr")
    );
    std::fs::write(gh.config_path(), &clash).expect("write");
    let (code, v) = post(admin, "/api/v1/reload", &auth).await;
    assert_eq!(code, 500, "{v:#}");
    assert_eq!(v["applied"], true);
    assert!(
        v["problems"][0]
            .as_str()
            .is_some_and(|p| p.contains("clash")),
        "{v:#}"
    );
    drop(taken);

    let second = format!("{good}\n{}", http_listener("second", ""));
    std::fs::write(gh.config_path(), &second).expect("write");
    let (code, v) = post(admin, "/api/v1/reload", &auth).await;
    assert_eq!(code, 200, "{v:#}");
    assert_eq!(v["applied"], true);
    assert_eq!(v["problems"], serde_json::json!([]));
    let s = status_until(admin, |_| true).await;
    let addr: SocketAddr = listener(&s, "second")["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("the new listener's address");
    let (code, out, _) = curl(&["-x", &format!("http://{addr}"), &origin.url("/")]).await;
    assert_eq!((code, out.as_slice()), (0, &b"hello"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_through_the_api_stops_the_process_gracefully() {
    let mut gh = Gatehouse::start(&format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n",
        http_listener("web", "")
    ));
    let admin = gh.addr("admin");
    let bearer = format!("Bearer {TOKEN}");
    let (code, v) = post(admin, "/api/v1/drain", &[("Authorization", &bearer)]).await;
    assert_eq!(code, 202, "{v:#}");
    assert_eq!(v["draining"], true);
    gh.wait_stderr("admin API: drain");
    let status = gh
        .wait_exit(Duration::from_secs(10))
        .expect("exits after the drain");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_open_connections_and_pool_health() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = tcp_echo().await;
    let gh = Gatehouse::start(&format!(
        "[[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [[pools]]\nname = \"p\"\n[[pools.servers]]\naddress = \"{echo}\"\n"
    ));
    let admin = gh.addr("admin");
    let mut s = tokio::net::TcpStream::connect(gh.addr("tcp"))
        .await
        .expect("connect");
    s.write_all(b"ping").await.expect("write");
    let mut back = [0u8; 4];
    s.read_exact(&mut back).await.expect("echo");
    assert_eq!(&back, b"ping");

    let open = status_until(admin, |s| listener(s, "tcp")["connections_open"] == 1).await;
    let server = &open["pools"]["p"][0];
    assert_eq!(server["server"], echo.to_string(), "{open:#}");
    assert_eq!(server["up"], true);
    assert_eq!(server["in_flight"], 1);
    assert_eq!(listener(&open, "tcp")["kind"], "tcp");

    drop(s);
    let closed = status_until(admin, |s| listener(s, "tcp")["requests"] == 1).await;
    assert_eq!(
        listener(&closed, "tcp")["connections_open"],
        0,
        "{closed:#}"
    );
    assert_eq!(closed["pools"]["p"][0]["in_flight"], 0, "{closed:#}");
    assert!(listener(&closed, "tcp")["bytes_in"].as_u64() >= Some(4));
}
