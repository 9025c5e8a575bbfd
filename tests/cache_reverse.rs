//! The reverse proxy's cache beyond RFC 9111: targeted cache control (RFC 9213:
//! `Gatehouse-Cache-Control`, `CDN-Cache-Control`) and per-route cache keys. Real binary,
//! hyper origins on loopback, raw HTTP/1.1 clients.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A reverse listener `rev` for `app.test` over one route to pool `p` (one server), with
/// `route` keys, a forward listener `fwd` with the cache on, and `extra` config.
fn config(origin: SocketAddr, route: &str, extra: &str) -> String {
    format!(
        "{}[[listeners]]\nname = \"rev\"\nkind = \"reverse\"\nlisten = \"127.0.0.1:0\"\n\
         [[listeners.hosts]]\nnames = [\"app.test\"]\n[[listeners.hosts.routes]]\npool = \"p\"\n\
         cache = true\n{route}\n[[pools]]\nname = \"p\"\n[[pools.servers]]\naddress = \"{origin}\"\n\
         [cache]\n{memory}{extra}\n",
        http_listener("fwd", "cache = true"),
        memory = if extra.contains("memory_size") {
            ""
        } else {
            "memory_size = \"8MiB\"\n"
        },
    )
}

/// GET `path` on the reverse listener with extra header lines; the whole raw response.
async fn get(gh: &Gatehouse, path: &str, extra: &str) -> String {
    let mut s = TcpStream::connect(gh.addr("rev")).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n{extra}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned()
}

fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    let head = resp.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// An origin whose response fields depend on the path; bodies are numbered.
async fn targeted_origin() -> Origin {
    numbered(|s: &Seen, n| {
        let fields: &[(&str, &str)] = match s.uri.split('?').next().unwrap_or_default() {
            // Cache-Control forbids storing; CDN-Cache-Control allows a minute.
            "/cdn" => &[
                ("Cache-Control", "no-store"),
                ("CDN-Cache-Control", "max-age=60"),
            ],
            // Our own field wins over CDN-Cache-Control.
            "/own" => &[
                ("Cache-Control", "max-age=60"),
                ("CDN-Cache-Control", "max-age=60"),
                ("Gatehouse-Cache-Control", "no-store"),
            ],
            // Our own field is not a valid dictionary: ignored, CDN-Cache-Control decides.
            "/invalid" => &[
                ("Cache-Control", "no-store"),
                ("Gatehouse-Cache-Control", "max-age=\"60"),
                ("CDN-Cache-Control", "max-age=60"),
            ],
            // A targeted field not on the list is passed on and means nothing here.
            "/other" => &[
                ("Cache-Control", "no-store"),
                ("Other-Cache-Control", "max-age=60"),
            ],
            _ => &[("Cache-Control", "max-age=60")],
        };
        response(200, fields, format!("body {n}"))
    })
    .await
}

#[tokio::test]
async fn the_reverse_cache_obeys_targeted_fields_and_removes_them() {
    let origin = targeted_origin().await;
    let gh = Gatehouse::start(&config(origin.addr, "", ""));

    let first = get(&gh, "/cdn", "").await;
    let second = get(&gh, "/cdn", "").await;
    assert_eq!(body(&second), body(&first), "{second}");
    assert_eq!(origin.count("/cdn"), 1, "CDN-Cache-Control allowed storing");
    for r in [&first, &second] {
        assert_eq!(header(r, "CDN-Cache-Control"), None, "removed: {r}");
        assert_eq!(
            header(r, "Cache-Control"),
            Some("no-store"),
            "the client still gets the origin's Cache-Control"
        );
    }
    assert!(header(&second, "Cache-Status").is_some_and(|s| s.contains("hit")));

    get(&gh, "/own", "").await;
    let r = get(&gh, "/own", "").await;
    assert_eq!(
        origin.count("/own"),
        2,
        "Gatehouse-Cache-Control: no-store wins"
    );
    assert_eq!(header(&r, "Gatehouse-Cache-Control"), None, "{r}");
    assert_eq!(header(&r, "CDN-Cache-Control"), None, "{r}");

    get(&gh, "/invalid", "").await;
    get(&gh, "/invalid", "").await;
    assert_eq!(
        origin.count("/invalid"),
        1,
        "an invalid own field falls back to CDN-Cache-Control"
    );

    get(&gh, "/other", "").await;
    let r = get(&gh, "/other", "").await;
    assert_eq!(origin.count("/other"), 2, "Cache-Control's no-store rules");
    assert_eq!(
        header(&r, "Other-Cache-Control"),
        Some("max-age=60"),
        "passed on"
    );
}

#[tokio::test]
async fn the_forward_proxy_reads_cache_control_only_and_passes_targeted_fields() {
    let origin = targeted_origin().await;
    let gh = Gatehouse::start(&config(origin.addr, "", ""));
    let client = proxied_client(&gh, "fwd");
    let url = origin.url("/cdn");
    let a = fetch(&client, "GET", &url, &[]).await;
    let b = fetch(&client, "GET", &url, &[]).await;
    assert_eq!(origin.count("/cdn"), 2, "no-store is obeyed");
    assert_ne!(a.text(), b.text());
    assert_eq!(
        b.header("cdn-cache-control"),
        Some("max-age=60"),
        "untouched"
    );
    assert_eq!(b.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn a_custom_target_list_replaces_the_default() {
    let origin = targeted_origin().await;
    let gh = Gatehouse::start(&config(
        origin.addr,
        "",
        "targeted_fields = [\"Other-Cache-Control\"]",
    ));
    get(&gh, "/other", "").await;
    let r = get(&gh, "/other", "").await;
    assert_eq!(origin.count("/other"), 1, "stored by Other-Cache-Control");
    assert_eq!(header(&r, "Other-Cache-Control"), None, "{r}");
    get(&gh, "/cdn", "").await;
    let r = get(&gh, "/cdn", "").await;
    assert_eq!(
        origin.count("/cdn"),
        2,
        "CDN-Cache-Control is not on the list"
    );
    assert_eq!(header(&r, "CDN-Cache-Control"), Some("max-age=60"), "{r}");
}

#[tokio::test]
async fn route_cache_keys_share_and_separate_entries() {
    let origin = numbered(|_: &Seen, n| {
        response(200, &[("Cache-Control", "max-age=60")], format!("body {n}"))
    })
    .await;
    let route = "cache_key = { ignore_query = [\"utm_*\", \"fbclid\"], headers = [\"X-Device\"], cookies = [\"lang\"] }";
    let gh = Gatehouse::start(&config(origin.addr, route, ""));
    let mobile_en = "X-Device: mobile\r\nCookie: sid=1; lang=en\r\n";

    let a = get(&gh, "/p?id=1&utm_source=mail", mobile_en).await;
    // Other ignored parameters, another session cookie: the same entry.
    let b = get(
        &gh,
        "/p?fbclid=x&id=1&utm_medium=y",
        "X-Device: mobile\r\nCookie: lang=en; sid=2\r\n",
    )
    .await;
    assert_eq!(body(&b), body(&a), "{b}");
    assert_eq!(origin.seen().len(), 1);
    // A kept parameter differs: another entry.
    let c = get(&gh, "/p?id=2", mobile_en).await;
    assert_ne!(body(&c), body(&a));
    // The header differs, or the cookie does, or it is missing: each its own entry.
    let d = get(&gh, "/p?id=1", "X-Device: desktop\r\nCookie: lang=en\r\n").await;
    let e = get(&gh, "/p?id=1", "X-Device: mobile\r\nCookie: lang=de\r\n").await;
    let f = get(&gh, "/p?id=1", "X-Device: mobile\r\n").await;
    let bodies = [body(&a), body(&c), body(&d), body(&e), body(&f)];
    for (i, x) in bodies.iter().enumerate() {
        for y in &bodies[i + 1..] {
            assert_ne!(x, y, "{bodies:?}");
        }
    }
    assert_eq!(origin.seen().len(), 5);
    // Each of them is stored: repeats are hits.
    assert_eq!(
        body(&get(&gh, "/p?id=1", "X-Device: mobile\r\n").await),
        body(&f)
    );
    assert_eq!(
        body(
            &get(
                &gh,
                "/p?id=1&utm_x=1",
                "X-Device: desktop\r\nCookie: lang=en\r\n"
            )
            .await
        ),
        body(&d)
    );
    assert_eq!(origin.seen().len(), 5);
    // The origin saw the query as the client sent it.
    assert_eq!(origin.seen()[0].uri, "/p?id=1&utm_source=mail");
    // A POST to any spelling of the URL drops every variant.
    let mut s = TcpStream::connect(gh.addr("rev")).await.expect("connect");
    s.write_all(
        b"POST /p?id=1&utm_source=z HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    read_to_close(&mut s).await;
    let g = get(&gh, "/p?id=1", mobile_en).await;
    assert_ne!(body(&g), body(&a), "refetched after the POST");
}

#[tokio::test]
async fn without_a_cache_key_the_query_and_cookies_are_as_before() {
    let origin = numbered(|_: &Seen, n| {
        response(200, &[("Cache-Control", "max-age=60")], format!("body {n}"))
    })
    .await;
    let gh = Gatehouse::start(&config(origin.addr, "", ""));
    let a = get(&gh, "/p?utm_source=1", "Cookie: lang=en\r\n").await;
    let b = get(&gh, "/p?utm_source=2", "Cookie: lang=en\r\n").await;
    let c = get(&gh, "/p?utm_source=1", "Cookie: lang=de\r\n").await;
    assert_ne!(body(&a), body(&b), "every parameter counts");
    assert_eq!(body(&a), body(&c), "cookies do not");
    assert_eq!(origin.seen().len(), 2);
}

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"test-admin-token\"\n";

/// `POST /cache/purge?<query>` with the token: status and body.
async fn purge(gh: &Gatehouse, query: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("http://{}/cache/purge?{query}", gh.addr("admin")))
        .bearer_auth("test-admin-token")
        .send()
        .await
        .expect("purge request");
    (
        r.status().as_u16(),
        r.text().await.expect("body").trim().to_string(),
    )
}

/// An origin tagging `/a` (`product-1 all`) and `/b` (`product-2 all`), `/c` untagged, with
/// a long stale-while-revalidate window; bodies are numbered.
async fn tagging_origin(field: &'static str, a: &'static str, b: &'static str) -> Origin {
    numbered(move |s: &Seen, n| {
        let cc = ("Cache-Control", "max-age=60, stale-while-revalidate=600");
        let fields: Vec<(&str, &str)> = match s.uri.as_str() {
            "/a" => vec![cc, (field, a)],
            "/b" => vec![cc, (field, b)],
            _ => vec![cc],
        };
        response(200, &fields, format!("body {n}"))
    })
    .await
}

async fn purge_by_tag_on(tiers: &str) {
    let origin = tagging_origin("Surrogate-Key", "product-1 all", "product-2 all").await;
    let gh = Gatehouse::start(&format!("{}{ADMIN}", config(origin.addr, "", tiers)));
    for p in ["/a", "/b", "/c"] {
        let r = get(&gh, p, "").await;
        assert_eq!(header(&r, "Surrogate-Key"), None, "removed by default: {r}");
    }
    assert_eq!(
        purge(&gh, "tag=product-1").await,
        (200, "1".into()),
        "{tiers}"
    );
    get(&gh, "/a", "").await;
    get(&gh, "/b", "").await;
    assert_eq!((origin.count("/a"), origin.count("/b")), (2, 1), "{tiers}");
    // Soft: /a and /b stay, stale: served at once (stale-while-revalidate), refreshed in
    // the background.
    assert_eq!(
        purge(&gh, "tag=all&soft=1").await,
        (200, "2".into()),
        "{tiers}"
    );
    let r = get(&gh, "/b", "").await;
    assert_eq!(body(&r), "body 2", "{r}");
    let status = header(&r, "Cache-Status").unwrap_or_default();
    assert!(status.contains("stale-while-revalidate"), "{tiers}: {r}");
    wait_count(&origin, "/b", 2).await;
    get(&gh, "/c", "").await;
    assert_eq!(origin.count("/c"), 1, "untagged: untouched");
    // Hard purge by prefix removes what soft purge kept (and what the refresh stored).
    assert_eq!(purge(&gh, "prefix=http://app.test/b").await.0, 200);
    get(&gh, "/b", "").await;
    assert_eq!(origin.count("/b"), 3, "{tiers}");
    assert_eq!(purge(&gh, "tag=x&url=http://app.test/a").await.0, 400);
    assert_eq!(purge(&gh, "tag=x&soft=maybe").await.0, 400);
}

#[tokio::test]
async fn purge_by_tag_memory_tier() {
    purge_by_tag_on("").await;
}

#[tokio::test]
async fn purge_by_tag_disk_tier() {
    let dir = tempfile::tempdir().expect("tmp");
    let tiers = format!(
        "memory_size = 0\ndisk_dir = \"{}\"\ndisk_size = \"8MiB\"\nmax_object_size = \"1MiB\"",
        dir.path().display()
    );
    purge_by_tag_on(&format!("{tiers}\n")).await;
}

#[tokio::test]
async fn cache_tag_style_soft_purge_by_prefix_and_kept_tags() {
    let origin = tagging_origin("Cache-Tag", "Product-1,all", "Product-2, all").await;
    let gh = Gatehouse::start(&format!(
        "{}{ADMIN}",
        config(origin.addr, "", "tag_header = \"Cache-Tag\"").replace(
            "kind = \"reverse\"\n",
            "kind = \"reverse\"\nstrip_cache_tags = false\n"
        )
    ));
    let r = get(&gh, "/a", "").await;
    assert_eq!(header(&r, "Cache-Tag"), Some("Product-1,all"), "kept: {r}");
    get(&gh, "/b", "").await;
    assert_eq!(
        purge(&gh, "tag=product-1").await.1,
        "0",
        "tags compare exactly"
    );
    assert_eq!(purge(&gh, "tag=Product-2").await.1, "1");
    assert_eq!(purge(&gh, "prefix=http://app.test/&soft=true").await.1, "1");
    let r = get(&gh, "/a", "").await;
    assert!(
        header(&r, "Cache-Status").is_some_and(|s| s.contains("stale-while-revalidate")),
        "{r}"
    );
    assert_eq!(
        header(&r, "Cache-Tag"),
        Some("Product-1,all"),
        "hits keep it too"
    );
    // The stale hit's background refresh: one request.
    wait_count(&origin, "/a", 2).await;
}

/// Waits (bounded) until the origin has answered `n` requests for `path`, and no more.
async fn wait_count(origin: &Origin, path: &str, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while origin.count(path) < n {
        assert!(std::time::Instant::now() < deadline, "{path}: never {n}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(origin.count(path), n, "{path}");
}
