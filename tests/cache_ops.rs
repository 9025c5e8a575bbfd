//! End-to-end: the cache under load and from the operator's side: request collapsing,
//! the object size limit, the per-listener switch and the other `[cache]` keys, admin purge,
//! metrics and the access log.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"test-admin-token\"\n";

/// A caching listener "http", the `[cache]` section (`enabled = true` unless `cache` says
/// otherwise) and the admin listener.
fn config(listener_extra: &str, cache: &str) -> String {
    let enabled = if cache.contains("enabled") {
        ""
    } else {
        "enabled = true\n"
    };
    format!(
        "{}[cache]\n{enabled}{cache}\n{ADMIN}",
        http_listener("http", listener_extra)
    )
}

async fn purge(admin: SocketAddr, param: &str, value: &str) -> (u16, String) {
    let enc: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
    let r = reqwest::Client::new()
        .post(format!("http://{admin}/cache/purge?{param}={enc}"))
        .bearer_auth("test-admin-token")
        .send()
        .await
        .expect("purge request");
    let status = r.status().as_u16();
    (
        status,
        r.text().await.expect("purge body").trim().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_misses_make_one_origin_request() {
    const CLIENTS: usize = 200;
    let body = pattern(5, 256 * 1024);
    let requests = Arc::new(AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let (r, b) = (requests.clone(), body.clone());
    // The origin sends the head and the first KiB at once, the rest only when released.
    let addr = raw_origin(move |mut s| {
        let (r, body, mut released) = (r.clone(), b.clone(), released.clone());
        async move {
            if !read_head(&mut s).await {
                return;
            }
            r.fetch_add(1, Ordering::SeqCst);
            let head = format!(
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&body[..1024]).await;
            let _ = released.wait_for(|r| *r).await;
            let _ = s.write_all(&body[1024..]).await;
        }
    })
    .await;
    let gh = Gatehouse::start(&config("cache = true", ""));
    let client = proxied_client(&gh, "http");
    let url = format!("http://{addr}/popular");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move { fetch(&client, "GET", &url, &[]).await });
    }
    // Release once every request has been looked up (each is a miss), or after 20 s.
    let admin = gh.addr("admin");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let misses = metric(admin, "gatehouse_cache_misses_total").await;
        if misses.unwrap_or(0.0) >= CLIENTS as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    release.send_replace(true);
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        let r = r.expect("client task");
        assert_eq!(r.status, 200);
        assert!(
            r.body == body,
            "a collapsed body differs ({} bytes)",
            r.body.len()
        );
        ok += 1;
    }
    assert_eq!(ok, CLIENTS);
    assert_eq!(requests.load(Ordering::SeqCst), 1, "one origin request");
}

#[tokio::test]
async fn responses_over_max_object_size_pass_through_unstored() {
    let origin = Origin::start(Arc::new(|s: &Seen| {
        let len = if s.uri == "/big" { 200 * 1024 } else { 1024 };
        response(200, &[("Cache-Control", "max-age=600")], pattern(1, len))
    }))
    .await;
    let cfg = config(
        "cache = true",
        "memory_size = \"1MiB\"\nmax_object_size = \"64KiB\"",
    );
    let gh = Gatehouse::start(&cfg);
    let client = proxied_client(&gh, "http");
    for path in ["/big", "/big", "/small", "/small"] {
        let r = fetch(&client, "GET", &origin.url(path), &[]).await;
        let want = pattern(1, if path == "/big" { 200 * 1024 } else { 1024 });
        assert!(r.status == 200 && r.body == want, "{path}");
        gh.wait_log(&origin.url(path));
    }
    assert_eq!(origin.count("/big"), 2, "not stored");
    assert_eq!(origin.count("/small"), 1, "stored");
}

#[tokio::test]
async fn a_listener_without_the_switch_does_not_cache() {
    let origin = Origin::start(Arc::new(|_: &Seen| {
        response(200, &[("Cache-Control", "max-age=600")], "x")
    }))
    .await;
    let cfg = format!(
        "{}{}[cache]\nenabled = true\n",
        http_listener("plain", ""),
        http_listener("cached", "cache = true")
    );
    let gh = Gatehouse::start(&cfg);
    let plain = proxied_client(&gh, "plain");
    let cached = proxied_client(&gh, "cached");
    let url = origin.url("/s");
    for _ in 0..2 {
        let r = fetch(&plain, "GET", &url, &[]).await;
        assert!(r.cache_status().is_none(), "{:?}", r.headers);
        gh.wait_log(&url);
    }
    assert_eq!(
        origin.count("/s"),
        2,
        "cache is off unless the listener says so"
    );
    fetch(&cached, "GET", &url, &[]).await;
    gh.wait_log(&url);
    fetch(&cached, "GET", &url, &[]).await;
    assert_eq!(
        origin.count("/s"),
        3,
        "one store shared by caching listeners"
    );
}

#[tokio::test]
async fn admin_purges_by_url_and_by_prefix() {
    let origin = Origin::start(Arc::new(|s: &Seen| {
        response(200, &[("Cache-Control", "max-age=600")], s.uri.clone())
    }))
    .await;
    let gh = Gatehouse::start(&config("cache = true", ""));
    let client = proxied_client(&gh, "http");
    let paths = ["/p/a", "/p/b", "/q"];
    let get_all = || async {
        for path in paths {
            let url = origin.url(path);
            assert_eq!(fetch(&client, "GET", &url, &[]).await.text(), path);
            gh.wait_log(&url);
        }
    };
    get_all().await;
    let admin = gh.addr("admin");
    assert_eq!(
        purge(admin, "url", &origin.url("/p/a")).await,
        (200, "1".into())
    );
    assert_eq!(purge(admin, "url", &origin.url("/nope")).await.0, 200);
    get_all().await;
    let counts = |o: &Origin| paths.map(|p| o.count(p));
    assert_eq!(counts(&origin), [2, 1, 1], "only /p/a was purged");
    assert_eq!(
        purge(admin, "prefix", &origin.url("/p/")).await,
        (200, "2".into())
    );
    get_all().await;
    assert_eq!(counts(&origin), [3, 2, 1], "the prefix purge spared /q");
}

#[tokio::test]
async fn metrics_and_access_log_show_hits_and_misses() {
    let origin = Origin::start(Arc::new(|s: &Seen| {
        let cc = if s.uri == "/stale" {
            "max-age=1, stale-while-revalidate=600"
        } else {
            "max-age=600"
        };
        response(200, &[("Cache-Control", cc), ("Age", "5")], "m")
    }))
    .await;
    let gh = Gatehouse::start(&config("cache = true", ""));
    let client = proxied_client(&gh, "http");
    let url = origin.url("/m");
    let words: Vec<String> = {
        let mut words = Vec::new();
        for _ in 0..3 {
            fetch(&client, "GET", &url, &[]).await;
            let line = gh.wait_log(&format!(" GET {url} "));
            // time listener client user method target status in out duration upstream cache
            assert_eq!(log_field(&line, 6), url, "{line}");
            words.push(log_field(&line, 12).to_string());
        }
        words
    };
    assert_eq!(words, ["miss", "hit", "hit"]);
    let stale = origin.url("/stale");
    fetch(&client, "GET", &stale, &[]).await;
    gh.wait_log(&stale);
    let r = fetch(&client, "GET", &stale, &[]).await;
    assert_eq!(r.text(), "m");
    let admin = gh.addr("admin");
    assert_eq!(metric(admin, "gatehouse_cache_hits_total").await, Some(2.0));
    assert!(metric(admin, "gatehouse_cache_misses_total").await >= Some(2.0));
    assert!(metric(admin, "gatehouse_cache_stale_served_total").await >= Some(1.0));
    let text = metrics_text(admin).await;
    for want in [
        "gatehouse_cache_bytes{tier=\"memory\"}",
        "gatehouse_cache_evictions_total{tier=\"memory\"}",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(metric(admin, "gatehouse_cache_bytes").await > Some(0.0));
}

#[tokio::test]
async fn enabled_false_and_methods_get_only() {
    let origin = Origin::start(Arc::new(|_: &Seen| {
        response(200, &[("Cache-Control", "max-age=600")], "body")
    }))
    .await;
    // `enabled = false` turns the shared store off even for a listener that asks for it.
    let gh = Gatehouse::start(&config("cache = true", "enabled = false"));
    let client = proxied_client(&gh, "http");
    let url = origin.url("/off");
    for _ in 0..2 {
        fetch(&client, "GET", &url, &[]).await;
        gh.wait_log(&url);
    }
    assert_eq!(origin.count("/off"), 2);
    drop((client, gh));

    // `methods = ["GET"]`: HEAD is forwarded, not answered from the stored GET.
    let gh = Gatehouse::start(&config("cache = true", "methods = [\"GET\"]"));
    let client = proxied_client(&gh, "http");
    let url = origin.url("/get-only");
    fetch(&client, "GET", &url, &[]).await;
    gh.wait_log(&format!(" GET {url} "));
    let head = fetch(&client, "HEAD", &url, &[]).await;
    assert_eq!(head.status, 200);
    gh.wait_log(&format!(" HEAD {url} "));
    fetch(&client, "GET", &url, &[]).await;
    let methods: Vec<String> = origin
        .seen_for("/get-only")
        .into_iter()
        .map(|s| s.method)
        .collect();
    assert_eq!(methods, ["GET", "HEAD"], "the second GET was a hit");
}

#[test]
fn check_reports_bad_cache_settings() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "{}[cache]\nmemory_size = \"1MiB\"\nmax_object_size = \"2MiB\"\n\
             methods = [\"POST\"]\ndisk_size = \"1GiB\"\ncolour = 1\n",
            http_listener("http", "cache = true")
        ),
    )
    .expect("write");
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "cache.max_object_size",
        "cache.methods",
        "cache.disk_size",
        "cache.colour: unknown key",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
}
