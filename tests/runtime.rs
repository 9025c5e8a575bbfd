//! `[runtime]`: `per_core = true` (the default) runs `workers` threads, each with its own
//! event loop, each accepting from the listeners and serving what it accepted. Every listener
//! kind still serves (reverse HTTP/1.1 and h2c, the forward proxy, SOCKS5), the worker threads
//! exist, and SIGTERM drains them; `per_core = false` (one shared scheduler) serves them all
//! as well; an idle keep-alive client costs a few KiB with either. Real binary, curl, raw
//! clients, origins on loopback.

mod common;

use std::time::Duration;

use common::*;

/// The names of the process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

/// How many of Gatehouse's own worker threads (`per_core`) the process has.
fn worker_threads(pid: u32) -> usize {
    thread_names(pid)
        .into_iter()
        .filter(|n| n.starts_with("gatehouse-worke"))
        .count()
}

/// Two workers, `per_core` as given: a reverse listener (h2c allowed) in front of `origin`,
/// a forward proxy and a SOCKS5 listener.
fn every_kind(origin: &Origin, per_core: bool) -> String {
    format!(
        "[runtime]\nworkers = 2\nper_core = {per_core}\n\
         [[listeners]]\nname = \"rev\"\nkind = \"reverse\"\nlisten = \"127.0.0.1:0\"\n\
         [listeners.http2]\nh2c = true\n\
         [[listeners.hosts]]\nnames = [\"app.test\"]\n[[listeners.hosts.routes]]\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\n[[pools.servers]]\naddress = \"{}\"\n\
         {}{}",
        origin.addr,
        http_listener("fwd", ""),
        socks_listener("socks", ""),
    )
}

/// One GET each through the reverse listener over h2c, the forward proxy and SOCKS5.
async fn h2c_forward_and_socks(gh: &Gatehouse, origin: &Origin) {
    // Reverse, h2c with prior knowledge: with `per_core` each stream is a task on the
    // connection's worker. (One URL per curl: curl 7.88 fails to reuse a prior-knowledge
    // connection, its bug #10634, fixed in 8.0.)
    let h2_url = format!("http://{}/h2", gh.addr("rev"));
    let args = ["--http2-prior-knowledge", "-H", "Host: app.test", &h2_url];
    let (code, out, err) = curl(&args).await;
    assert_eq!((code, out.as_slice()), (0, &b"hello"[..]), "{err}");
    let url = origin.url("/fwd");
    let (code, out, err) = curl(&["-x", &gh.proxy_url("fwd"), &url]).await;
    assert_eq!((code, out.as_slice()), (0, &b"hello"[..]), "{err}");
    let socks = gh.addr("socks").to_string();
    let (code, out, err) = curl(&["--socks5", &socks, &url]).await;
    assert_eq!((code, out.as_slice()), (0, &b"hello"[..]), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_core_workers_serve_every_listener_kind_and_drain() {
    let origin = Origin::fixed("hello").await;
    let mut gh = Gatehouse::start(&every_kind(&origin, true));
    assert_eq!(worker_threads(gh.pid()), 2, "{:?}", thread_names(gh.pid()));

    // Reverse, HTTP/1.1: six requests on one keep-alive connection, then three more clients
    // at once (they spread over both workers).
    let rev = gh.addr("rev");
    let urls: Vec<String> = (0..6).map(|i| format!("http://{rev}/k{i}")).collect();
    let mut args = vec!["-H", "Host: app.test"];
    args.extend(urls.iter().map(String::as_str));
    let (code, out, err) = curl(&args).await;
    assert_eq!(
        (code, out.as_slice()),
        (0, &b"hellohellohellohellohellohello"[..]),
        "{err}"
    );
    // One upstream connection carried them: idle between requests in its worker's shard.
    assert_eq!(origin.connection_count(), 1);
    // Three clients one after another, each accepted by either worker: the one idle upstream
    // connection is used again (or taken over by the other worker) instead of a second one
    // being opened.
    for i in 0..3 {
        let url = format!("http://{rev}/s{i}");
        let (code, out, err) = curl(&["-H", "Host: app.test", &url]).await;
        assert_eq!((code, out.as_slice()), (0, &b"hello"[..]), "{err}");
    }
    assert_eq!(origin.connection_count(), 1, "taken over, not reopened");
    let several = (0..3).map(|i| async move {
        let url = format!("http://{rev}/c{i}");
        curl(&["-H", "Host: app.test", &url]).await
    });
    for (code, out, err) in futures_util::future::join_all(several).await {
        assert_eq!((code, out.as_slice()), (0, &b"hello"[..]), "{err}");
    }
    h2c_forward_and_socks(&gh, &origin).await;
    assert_eq!(origin.seen().len(), 15);

    // SIGTERM with an idle keep-alive client on a worker: it is closed, the process exits 0.
    let idle = tokio::net::TcpStream::connect(rev).await.expect("connect");
    gh.signal("TERM");
    let status = gh
        .wait_exit(Duration::from_secs(20))
        .expect("exited in time");
    assert!(status.success(), "{status:?}");
    drop(idle);
}

#[test]
fn runtime_keys_are_checked() {
    let bad = gatehouse::config::Config::parse(&format!(
        "[runtime]\nworkers = 5000\n{}",
        http_listener("p", "")
    ))
    .err()
    .map(|e| format!("{e:?}"))
    .unwrap_or_default();
    assert!(bad.contains("runtime.workers"), "{bad}");
    let unknown = gatehouse::config::Config::parse(&format!(
        "[runtime]\nthreads = 2\n{}",
        http_listener("p", "")
    ))
    .err()
    .map(|e| format!("{e:?}"))
    .unwrap_or_default();
    assert!(unknown.contains("unknown key"), "{unknown}");
    let ok = gatehouse::config::Config::parse(&format!(
        "[runtime]\nworkers = 3\nper_core = true\n{}",
        http_listener("p", "")
    ))
    .expect("valid");
    assert_eq!((ok.runtime.workers, ok.runtime.per_core), (3, true));
    // Unset: per-core workers, one per core.
    let unset = gatehouse::config::Config::parse(&http_listener("p", "")).expect("valid");
    assert_eq!((unset.runtime.workers, unset.runtime.per_core), (0, true));
    let shared = gatehouse::config::Config::parse(&format!(
        "[runtime]\nper_core = false\n{}",
        http_listener("p", "")
    ))
    .expect("valid");
    assert!(!shared.runtime.per_core);
}

/// `per_core = false`: one shared, work-stealing scheduler and no worker threads of
/// Gatehouse's own; reverse HTTP/1.1 and h2c, the forward proxy and SOCKS5 serve, and
/// SIGTERM ends the process cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_scheduler_serves_every_listener_kind() {
    let origin = Origin::fixed("hello").await;
    let mut gh = Gatehouse::start(&every_kind(&origin, false));
    assert_eq!(worker_threads(gh.pid()), 0, "{:?}", thread_names(gh.pid()));
    let url = format!("http://{}/a", gh.addr("rev"));
    let (code, out, err) = curl(&["-H", "Host: app.test", &url]).await;
    assert_eq!((code, out.as_slice()), (0, &b"hello"[..]), "{err}");
    h2c_forward_and_socks(&gh, &origin).await;
    assert_eq!(origin.seen().len(), 4);
    gh.signal("TERM");
    let status = gh
        .wait_exit(Duration::from_secs(20))
        .expect("exited in time");
    assert!(status.success(), "{status:?}");
}

/// One GET on a new keep-alive connection to the reverse listener at `rev`; the connection
/// is returned open (idle) once the whole response has come.
async fn idle_client(rev: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(rev).await.expect("connect");
    s.write_all(b"GET /idle HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .expect("request");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !(got.starts_with(b"HTTP/1.1 200") && got.ends_with(b"hello")) {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    s
}

/// Memory per idle keep-alive client, with each scheduler: the growth of the process's RSS
/// over the second half of `2 * HALF` clients (each made one request, then stays idle),
/// divided by `HALF`, so what the first connections set up once (pools, heaps) is left out.
/// mimalloc's arena is backed by 2 MiB huge pages, so RSS grows in 2 MiB steps: `HALF`
/// clients make that about 1 KiB per client. The tests' debug build measures about 5 KiB
/// (its futures are larger; the release build 1.6, docs/benchmarks.md). Each listener
/// kind's connection task is sized for its own future: one future over every kind once cost
/// a per-core idle client 12 KiB in release, and 10 KiB more per task reads 16 KiB here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_client_costs_a_few_kib() {
    const HALF: u64 = 2000;
    let _ = rlimit::increase_nofile_limit(4 * HALF + 256);
    let origin = Origin::fixed("hello").await;
    for per_core in [true, false] {
        let cfg = format!(
            "{}[limits.per_client]\nmax_connections = 0\n",
            every_kind(&origin, per_core)
        );
        let gh = Gatehouse::start(&cfg);
        let rev = gh.addr("rev");
        let mut held = Vec::new();
        for _ in 0..HALF {
            held.push(idle_client(rev).await);
        }
        let half = gh.rss_kib();
        for _ in 0..HALF {
            held.push(idle_client(rev).await);
        }
        let all = gh.rss_kib();
        let per_client = all.saturating_sub(half) as f64 / HALF as f64;
        assert!(
            per_client < 10.0,
            "per_core = {per_core}: {per_client:.2} KiB per idle client ({half} -> {all} KiB)"
        );
        drop(held);
    }
}
