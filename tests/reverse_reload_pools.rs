//! `[[pools]]` changed by SIGHUP: servers added take traffic, servers removed take none (nor
//! health checks), a server down by its checks stays down across reloads of its pool and of
//! others, the `tcp` and `udp` listeners follow too (open UDP sessions keep their server),
//! and requests, keep-alive connections and a WebSocket to a removed server go on
//! undisturbed while pools change under load. Real binary, real origins on loopback.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An origin that answers its `name` on any path but `/healthz`, which gets `health`.
async fn named(name: &'static str, health: Arc<AtomicU16>) -> Origin {
    Origin::start(Arc::new(move |s: &Seen| {
        if s.uri == "/healthz" {
            response(health.load(Ordering::SeqCst), &[], "health")
        } else {
            response(200, &[], name)
        }
    }))
    .await
}

fn pool(name: &str, servers: &[SocketAddr], extra: &str) -> String {
    let mut s = format!("[[pools]]\nname = \"{name}\"\n{extra}\n");
    for a in servers {
        s.push_str(&format!("[[pools.servers]]\naddress = \"{a}\"\n"));
    }
    s
}

/// HTTP checks every 200 ms; one failure takes a server down, and it takes 100 passes in a
/// row (20 s) to come back, so a server down stays down for the whole test unless its state
/// is lost.
const CHECKS: &str = "[pools.health]\ntype = \"http\"\npath = \"/healthz\"\ninterval = \"200ms\"\n\
                      timeout = \"1s\"\nfall = 1\nrise = 100\n\
                      [pools.passive]\nmax_failures = 0\n";

/// A reverse listener `rev` (app.test -> `web`, other.test -> `other`), a `tcp` listener
/// over `web`, the admin listener, and the two pools.
fn config(web: &[SocketAddr], other: &[SocketAddr], other_extra: &str) -> String {
    format!(
        "[[listeners]]\nname = \"rev\"\nkind = \"reverse\"\nlisten = \"127.0.0.1:0\"\n\
         [[listeners.hosts]]\nnames = [\"app.test\"]\n[[listeners.hosts.routes]]\npool = \"web\"\n\
         [[listeners.hosts]]\nnames = [\"other.test\"]\n[[listeners.hosts.routes]]\npool = \"other\"\n\
         [[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nlisten = \"127.0.0.1:0\"\npool = \"web\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n{}{}",
        pool("web", web, CHECKS),
        pool("other", other, other_extra),
    )
}

/// One request on a new connection to `addr` with Host `host`: the status line's code and
/// the body.
async fn get(addr: SocketAddr, host: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let req = format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status: {text:?}"))?;
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Ok((code, body))
}

/// `n` requests, one after another: how many each origin name answered.
async fn spread(
    addr: SocketAddr,
    host: &str,
    n: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut by = std::collections::BTreeMap::new();
    for _ in 0..n {
        let (code, body) = tokio::time::timeout(Duration::from_secs(10), get(addr, host))
            .await
            .expect("in time")
            .expect("answered");
        assert_eq!(code, 200, "{body}");
        *by.entry(body).or_insert(0) += 1;
    }
    by
}

/// The admin API's view of pool `name`: (server, up, checks_up) per server.
async fn health(admin: SocketAddr, name: &str) -> Vec<(String, bool, bool)> {
    let (code, body, err) = curl(&[&format!("http://{admin}/api/v1/status")]).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    v["pools"][name]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["server"].as_str().unwrap_or_default().to_string(),
                        s["up"].as_bool().unwrap_or(false),
                        s["checks_up"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn reload(gh: &Gatehouse, config: &str) {
    std::fs::write(gh.config_path(), config).expect("rewrite config");
    gh.signal("HUP");
    gh.wait_stderr("applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_added_and_removed_by_reload_and_health_kept() {
    let ok = || Arc::new(AtomicU16::new(200));
    let b_health = Arc::new(AtomicU16::new(500));
    let a = named("a", ok()).await;
    let b = named("b", b_health.clone()).await;
    let c = named("c", ok()).await;
    let d = named("d", ok()).await;
    let e = named("e", ok()).await;
    let gh = Gatehouse::start(&config(&[a.addr, b.addr], &[d.addr], ""));
    let (rev, tcp, admin) = (gh.addr("rev"), gh.addr("tcp"), gh.addr("admin"));

    // b fails its first check and goes down; passing checks from now on would need 100 in a
    // row to bring it back.
    gh.wait_stderr("server down");
    b_health.store(200, Ordering::SeqCst);
    let web = health(admin, "web").await;
    assert_eq!(web[1], (b.addr.to_string(), false, false), "{web:?}");
    assert_eq!(spread(rev, "app.test", 6).await.get("b"), None);

    // A reload that changes another pool: web is the same object, b still down.
    reload(&gh, &config(&[a.addr, b.addr], &[d.addr, e.addr], ""));
    assert!(!health(admin, "web").await[1].2, "b stays down");
    let other = spread(rev, "other.test", 8).await;
    assert_eq!(
        (other.get("d"), other.get("e")),
        (Some(&4), Some(&4)),
        "{other:?}"
    );
    assert_eq!(spread(rev, "app.test", 6).await.get("b"), None);

    // A reload that adds c to web (and changes other's algorithm): c takes traffic on both
    // listeners, b's state was carried over (it would be up if it had been reset).
    reload(
        &gh,
        &config(
            &[a.addr, b.addr, c.addr],
            &[d.addr, e.addr],
            "algorithm = \"random\"",
        ),
    );
    let web = health(admin, "web").await;
    assert_eq!(web.len(), 3, "{web:?}");
    assert_eq!(web[1], (b.addr.to_string(), false, false), "{web:?}");
    assert_eq!(web[2], (c.addr.to_string(), true, true), "{web:?}");
    let by = spread(rev, "app.test", 10).await;
    assert_eq!(by.get("b"), None, "{by:?}");
    assert!(by.contains_key("a") && by.contains_key("c"), "{by:?}");
    let by = spread(tcp, "app.test", 10).await;
    assert_eq!(by.get("b"), None, "{by:?}");
    assert!(
        by.contains_key("c"),
        "the tcp listener uses the new pool: {by:?}"
    );
    // The new server is checked (at once, then every interval).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while c.count("/healthz") < 2 {
        assert!(tokio::time::Instant::now() < deadline, "c never checked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A reload that removes a: it gets no more requests, and no more health checks.
    reload(
        &gh,
        &config(
            &[b.addr, c.addr],
            &[d.addr, e.addr],
            "algorithm = \"random\"",
        ),
    );
    let (a_requests, a_checks) = (a.count("/x"), a.count("/healthz"));
    let by = spread(rev, "app.test", 10).await;
    assert_eq!(by.get("c"), Some(&10), "{by:?}");
    let by = spread(tcp, "app.test", 10).await;
    assert_eq!(by.get("c"), Some(&10), "{by:?}");
    let web = health(admin, "web").await;
    assert_eq!(web.len(), 2, "{web:?}");
    assert_eq!(web[0], (b.addr.to_string(), false, false), "{web:?}");
    // Three check intervals: a check already under way may still land, no more.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(a.count("/x"), a_requests);
    assert!(a.count("/healthz") <= a_checks + 1, "a is still checked");
    // Its metric series are gone; the others' are there.
    let text = metrics_text(admin).await;
    let servers: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("gatehouse_pool_server"))
        .collect();
    assert!(
        !servers.iter().any(|l| l.contains(&a.addr.to_string())),
        "{servers:?}"
    );
    assert!(text.contains(&format!(
        "gatehouse_pool_server_up{{pool=\"web\",server=\"{}\"}} 0",
        b.addr
    )));
}

/// A WebSocket echo server; counts the connections it accepted.
async fn ws_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    use futures_util::{SinkExt, StreamExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn ws_open(rev: SocketAddr) -> Ws {
    let tcp = TcpStream::connect(rev).await.expect("connect");
    let (ws, resp) = tokio_tungstenite::client_async("ws://app.test/ws", tcp)
        .await
        .expect("handshake through the proxy");
    assert_eq!(resp.status(), 101);
    ws
}

async fn ws_echoes(ws: &mut Ws, text: &str) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(text)).await.expect("send");
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo in time")
        .expect("a message")
        .expect("ok");
    assert_eq!(got.into_text().expect("text").as_str(), text);
}

// Multi-threaded: the load goes on while the test waits for each reload's log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_change_under_load_and_nothing_is_dropped() {
    let ok = || Arc::new(AtomicU16::new(200));
    let a = named("a", ok()).await;
    let b = named("b", ok()).await;
    let c = named("c", ok()).await;
    let (ws1, ws1_accepted) = ws_echo().await;
    let (ws2, ws2_accepted) = ws_echo().await;
    let config = |web: &[SocketAddr], web_extra: &str, ws: SocketAddr| {
        format!(
            "[[listeners]]\nname = \"rev\"\nkind = \"reverse\"\nlisten = \"127.0.0.1:0\"\n\
             [[listeners.hosts]]\nnames = [\"app.test\"]\n\
             [[listeners.hosts.routes]]\npath = \"/ws\"\npool = \"ws\"\n\
             [[listeners.hosts.routes]]\npool = \"web\"\n{}{}",
            pool("web", web, web_extra),
            pool("ws", &[ws], ""),
        )
    };
    let gh = Gatehouse::start(&config(&[a.addr, b.addr], "", ws1));
    let rev = gh.addr("rev");
    let mut ws = ws_open(rev).await;
    ws_echoes(&mut ws, "before").await;

    // Keep-alive to the servers: two requests open one connection to each; after a reload
    // that adds c, a and b are reached over the same connections.
    assert_eq!(spread(rev, "app.test", 2).await.len(), 2);
    let (a_conns, b_conns) = (a.connection_count(), b.connection_count());
    reload(&gh, &config(&[a.addr, b.addr, c.addr], "", ws1));
    let by = spread(rev, "app.test", 6).await;
    assert_eq!(
        by.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "{by:?}"
    );
    assert_eq!(
        (a.connection_count(), b.connection_count()),
        (a_conns, b_conns)
    );

    // The load: 2 clients, 250 requests each, a new connection per request.
    const CLIENTS: usize = 2;
    const EACH: usize = 250;
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..CLIENTS {
        let (failed, done) = (failed.clone(), done.clone());
        load.push(tokio::spawn(async move {
            for _ in 0..EACH {
                match tokio::time::timeout(Duration::from_secs(10), get(rev, "app.test")).await {
                    Ok(Ok((200, body))) if ["a", "b", "c"].contains(&body.as_str()) => {}
                    Ok(Ok((code, body))) => {
                        failed.lock().expect("lock").push(format!("{code} {body}"))
                    }
                    Ok(Err(e)) => failed.lock().expect("lock").push(e),
                    Err(_) => failed.lock().expect("lock").push("timed out".into()),
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // Reloads while the load runs: a removed, weights and algorithm changed, the WebSocket's
    // only server replaced.
    let steps = [
        config(&[b.addr, c.addr], "", ws1),
        config(
            &[b.addr, c.addr, a.addr],
            "algorithm = \"least-requests\"",
            ws1,
        ),
        config(&[c.addr, b.addr], "algorithm = \"random\"", ws2),
    ];
    for (i, step) in steps.iter().enumerate() {
        let target = (i + 1) * CLIENTS * EACH / 4;
        while done.load(Ordering::SeqCst) < target {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::task::block_in_place(|| reload(&gh, step));
        ws_echoes(&mut ws, &format!("after reload {i}")).await;
    }
    for t in load {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("load finished in time")
            .expect("load task");
    }
    let failed = failed.lock().expect("lock").clone();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert_eq!(done.load(Ordering::SeqCst), CLIENTS * EACH);
    // The WebSocket opened on ws1 goes on though ws1 left the pool; a new one goes to ws2.
    ws_echoes(&mut ws, "still here").await;
    let mut fresh = ws_open(rev).await;
    ws_echoes(&mut fresh, "new").await;
    assert_eq!(ws1_accepted.load(Ordering::SeqCst), 1);
    assert_eq!(ws2_accepted.load(Ordering::SeqCst), 1);
    // The last pool is in force: a is out.
    let before = a.count("/x");
    let by = spread(rev, "app.test", 6).await;
    assert_eq!(by.get("a"), None, "{by:?}");
    assert_eq!(a.count("/x"), before);
}

/// A UDP server that answers every datagram with its id followed by the payload.
async fn udp_id_echo(id: u8) -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = sock.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let mut reply = vec![id];
            reply.extend_from_slice(&buf[..n]);
            let _ = sock.send_to(&reply, from).await;
        }
    });
    addr
}

/// Sends `msg` from `sock` to `to`; the id of the server that answered.
async fn udp_ask(sock: &tokio::net::UdpSocket, to: SocketAddr, msg: &[u8]) -> u8 {
    sock.send_to(msg, to).await.expect("send");
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("a reply in time")
        .expect("recv");
    assert_eq!(&buf[1..n], msg);
    buf[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_sessions_keep_their_server_and_new_ones_use_the_new_pool() {
    let (a, b) = (udp_id_echo(b'a').await, udp_id_echo(b'b').await);
    let config = |server: SocketAddr| {
        format!(
            "[[listeners]]\nname = \"udp\"\nkind = \"udp\"\nlisten = \"127.0.0.1:0\"\npool = \"u\"\n{}",
            pool("u", &[server], "")
        )
    };
    let gh = Gatehouse::start(&config(a));
    let lb = gh.addr("udp");
    let old = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    assert_eq!(udp_ask(&old, lb, b"one").await, b'a');
    // a leaves the pool, b joins: the session already open stays with a; a new client's goes
    // to b, on the same listener.
    reload(&gh, &config(b));
    assert_eq!(udp_ask(&old, lb, b"two").await, b'a');
    let new = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    assert_eq!(udp_ask(&new, lb, b"three").await, b'b');
}
