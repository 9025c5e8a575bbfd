//! End-to-end: the HTTP cache (RFC 9111, RFC 9211) through the forward proxy.
//!
//! Each test runs the real binary with `cache = true` on its listener and a scripted hyper
//! origin that records every request, so a hit is proved by the origin *not* being asked.
//! A response that must be stale on arrival says so with `Age` (larger than its lifetime),
//! so no test waits for a clock. The RFC 5861 extensions are in `cache_stale.rs`;
//! collapsing, size limits, purge and metrics in `cache_ops.rs`; the disk tier in
//! `cache_disk.rs`.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;

fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

#[tokio::test]
async fn fresh_response_is_served_again_without_the_origin() {
    let origin = Origin::start(Arc::new(|_: &Seen| {
        response(200, &[("Cache-Control", "max-age=600")], "hello")
    }))
    .await;
    let c = Cached::start();
    let url = origin.url("/fresh");
    let (first, word) = c.send("GET", &url, &[]).await;
    assert_eq!((first.status, first.text().as_str()), (200, "hello"));
    assert_eq!(word, "miss");
    let status = first.cache_status().expect("Cache-Status on a miss");
    assert!(status.starts_with("Gatehouse; fwd=uri-miss"), "{status}");
    let (second, word) = c.send("GET", &url, &[]).await;
    assert_eq!((second.status, second.text().as_str()), (200, "hello"));
    assert_eq!(word, "hit");
    let age: u64 = second
        .header("age")
        .expect("Age on a hit")
        .parse()
        .expect("Age is a number");
    assert!(age < 600, "age {age}");
    let status = second.cache_status().expect("Cache-Status on a hit");
    assert!(status.starts_with("Gatehouse; hit; ttl="), "{status}");
    // Another client (curl, its own connection) gets the stored response too.
    let (code, body, err) = curl(&["-x", &c.gh.proxy_url("http"), &url]).await;
    assert_eq!((code, body.as_slice()), (0, &b"hello"[..]), "{err}");
    assert_eq!(origin.count("/fresh"), 1);
}

#[tokio::test]
async fn s_maxage_overrides_max_age() {
    let origin = Origin::start(Arc::new(|s: &Seen| {
        let cc = if s.uri == "/shared" {
            "max-age=0, s-maxage=600"
        } else {
            "max-age=600, s-maxage=0"
        };
        response(200, &[("Cache-Control", cc)], "x")
    }))
    .await;
    let c = Cached::start();
    for path in ["/shared", "/shared", "/unshared", "/unshared"] {
        assert_eq!(c.get(&origin.url(path), &[]).await.status, 200);
    }
    assert_eq!(origin.count("/shared"), 1, "s-maxage=600 is fresh");
    assert_eq!(origin.count("/unshared"), 2, "s-maxage=0 is stale");
}

#[tokio::test]
async fn expires_is_read_against_date() {
    let origin = Origin::start(Arc::new(|s: &Seen| {
        let now = SystemTime::now();
        let expires = match s.uri.as_str() {
            "/future" => http_date(now + Duration::from_secs(3600)),
            "/past" => http_date(now - Duration::from_secs(60)),
            _ => "0".to_string(), // invalid: already expired (RFC 9111 section 5.3)
        };
        response(
            200,
            &[("Date", &http_date(now)), ("Expires", &expires)],
            "e",
        )
    }))
    .await;
    let c = Cached::start();
    for path in ["/future", "/past", "/invalid"] {
        c.get(&origin.url(path), &[]).await;
        c.get(&origin.url(path), &[]).await;
    }
    assert_eq!(origin.count("/future"), 1);
    assert_eq!(origin.count("/past"), 2);
    assert_eq!(origin.count("/invalid"), 2);
}

#[tokio::test]
async fn heuristic_freshness_needs_last_modified_and_a_status_cacheable_by_default() {
    let origin = Origin::start(Arc::new(|s: &Seen| {
        let ten_days_ago = http_date(SystemTime::now() - Duration::from_secs(10 * 86400));
        let lm = [("Last-Modified", ten_days_ago.as_str())];
        match s.uri.as_str() {
            "/lm" => response(200, &lm, "a"),
            "/lm-404" => response(404, &lm, "gone"),
            "/lm-201" => response(201, &lm, "made"),
            _ => response(200, &[], "no validator, no lifetime"),
        }
    }))
    .await;
    let c = Cached::start();
    for path in ["/lm", "/lm-404", "/lm-201", "/plain"] {
        c.get(&origin.url(path), &[]).await;
        c.get(&origin.url(path), &[]).await;
    }
    assert_eq!(origin.count("/lm"), 1, "10% of 10 days is fresh");
    assert_eq!(origin.count("/lm-404"), 1, "404 is heuristically cacheable");
    assert_eq!(origin.count("/lm-201"), 2, "201 is not");
    assert_eq!(origin.count("/plain"), 2, "no Last-Modified: no heuristic");
}

#[tokio::test]
async fn no_store_private_and_set_cookie_never_reach_another_client() {
    let origin = numbered(|s, n| {
        let body = format!("response {n}");
        let cookie = format!("session={n}");
        match s.uri.as_str() {
            "/no-store" => response(200, &[("Cache-Control", "no-store, max-age=600")], body),
            "/private" => response(200, &[("Cache-Control", "private, max-age=600")], body),
            "/shared" => response(200, &[("Cache-Control", "max-age=600")], body),
            _ => response(
                200,
                &[("Cache-Control", "max-age=600"), ("Set-Cookie", &cookie)],
                body,
            ),
        }
    })
    .await;
    let c = Cached::start();
    let other = proxied_client(&c.gh, "http");
    for path in ["/no-store", "/private", "/cookie"] {
        let url = origin.url(path);
        let mine = c.get(&url, &[]).await;
        let theirs = fetch(&other, "GET", &url, &[]).await;
        c.gh.wait_log(&url);
        assert_ne!(mine.body, theirs.body, "{path} was shared");
        assert_eq!(origin.count(path), 2, "{path}");
        if path == "/cookie" {
            assert_ne!(mine.header("set-cookie"), theirs.header("set-cookie"));
        }
    }
    // The control: the same exchange without those fields is shared.
    let url = origin.url("/shared");
    let mine = c.get(&url, &[]).await;
    assert_eq!(fetch(&other, "GET", &url, &[]).await.body, mine.body);
    assert_eq!(origin.count("/shared"), 1);
}

#[tokio::test]
async fn authorized_responses_are_shared_only_with_public_or_s_maxage() {
    let origin = Origin::start(Arc::new(|s: &Seen| {
        let cc = match s.uri.as_str() {
            "/plain" => "max-age=600",
            "/public" => "public, max-age=600",
            _ => "s-maxage=600",
        };
        let who = s
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("nobody")
            .to_string();
        response(200, &[("Cache-Control", cc)], who)
    }))
    .await;
    let c = Cached::start();
    let alice = [("Authorization", "Basic YWxpY2U6MQ==")];
    let bob = [("Authorization", "Basic Ym9iOjI=")];
    for path in ["/plain", "/public", "/smax"] {
        let url = origin.url(path);
        assert_eq!(c.get(&url, &alice).await.text(), alice[0].1);
        let for_bob = c.get(&url, &bob).await.text();
        if path == "/plain" {
            assert_eq!(for_bob, bob[0].1, "alice's response went to bob");
            assert_eq!(origin.count(path), 2);
        } else {
            assert_eq!(for_bob, alice[0].1, "{path} is explicitly shareable");
            assert_eq!(origin.count(path), 1, "{path}");
        }
    }
}

#[tokio::test]
async fn request_no_cache_and_max_age_0_revalidate_with_a_304() {
    let origin = Origin::start(Arc::new(|s: &Seen| {
        let inm = s.headers.get("if-none-match").and_then(|v| v.to_str().ok());
        let ims = s.headers.get("if-modified-since");
        let lm = "Mon, 02 Jan 2023 03:04:05 GMT";
        match (s.uri.as_str(), inm, ims) {
            ("/etag", Some("\"v1\""), _) => response(
                304,
                &[
                    ("Cache-Control", "max-age=600"),
                    ("ETag", "\"v1\""),
                    ("X-Version", "2"),
                ],
                "",
            ),
            ("/etag", _, _) => response(
                200,
                &[
                    ("Cache-Control", "max-age=600"),
                    ("ETag", "\"v1\""),
                    ("X-Version", "1"),
                ],
                "stored body",
            ),
            (_, _, Some(_)) => response(
                304,
                &[("Cache-Control", "max-age=600"), ("X-Version", "2")],
                "",
            ),
            _ => response(
                200,
                // Age: request max-age=0 accepts a response whose age is 0 (section
                // 5.2.1.1: "less than or equal to"); this one is 5 s old on arrival.
                &[
                    ("Cache-Control", "max-age=600"),
                    ("Age", "5"),
                    ("Last-Modified", lm),
                    ("X-Version", "1"),
                ],
                "dated body",
            ),
        }
    }))
    .await;
    let c = Cached::start();
    for (path, directive, body) in [
        ("/etag", "no-cache", "stored body"),
        ("/dated", "max-age=0", "dated body"),
    ] {
        let url = origin.url(path);
        c.get(&url, &[]).await;
        let (r, word) = c.send("GET", &url, &[("Cache-Control", directive)]).await;
        assert_eq!((r.status, r.text().as_str()), (200, body), "{path}");
        assert_eq!(r.header("x-version"), Some("2"), "304's fields merged");
        assert_eq!(word, "refresh", "{path}");
        let seen = origin.seen_for(path);
        assert_eq!(seen.len(), 2, "{path}");
        let validator = if path == "/etag" {
            seen[1].headers.get("if-none-match")
        } else {
            seen[1].headers.get("if-modified-since")
        };
        assert!(validator.is_some(), "{path}: {:?}", seen[1].headers);
        // The merged response was stored: a plain request is a hit with the new fields.
        let r = c.get(&url, &[]).await;
        assert_eq!(
            (r.text().as_str(), r.header("x-version")),
            (body, Some("2"))
        );
        assert_eq!(origin.count(path), 2, "{path}");
    }
    // Pragma: no-cache (no Cache-Control in the request) counts as no-cache.
    c.get(&origin.url("/etag"), &[("Pragma", "no-cache")]).await;
    assert_eq!(origin.count("/etag"), 3);
}

#[tokio::test]
async fn max_stale_and_min_fresh() {
    let origin = Origin::start(Arc::new(|s: &Seen| {
        if s.uri == "/stale" {
            // Stale by about 5 s on arrival.
            response(200, &[("Cache-Control", "max-age=10"), ("Age", "15")], "s")
        } else {
            response(200, &[("Cache-Control", "max-age=100")], "f")
        }
    }))
    .await;
    let c = Cached::start();
    let stale = origin.url("/stale");
    c.get(&stale, &[]).await;
    c.get(&stale, &[]).await;
    assert_eq!(origin.count("/stale"), 2, "stale is not served by default");
    let r = c.get(&stale, &[("Cache-Control", "max-stale=600")]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "s"));
    assert!(r.header("age").is_some());
    c.get(&stale, &[("Cache-Control", "max-stale")]).await;
    assert_eq!(
        origin.count("/stale"),
        2,
        "max-stale accepts the stale response"
    );
    c.get(&stale, &[("Cache-Control", "max-stale=1")]).await;
    assert_eq!(origin.count("/stale"), 3, "stale by more than 1 s");

    let fresh = origin.url("/fresh");
    c.get(&fresh, &[]).await;
    c.get(&fresh, &[("Cache-Control", "min-fresh=10")]).await;
    assert_eq!(origin.count("/fresh"), 1, "fresh for 10 more seconds");
    c.get(&fresh, &[("Cache-Control", "min-fresh=1000")]).await;
    assert_eq!(origin.count("/fresh"), 2, "not fresh for 1000 more seconds");
}

#[tokio::test]
async fn only_if_cached_without_a_stored_response_is_504() {
    let origin = Origin::start(Arc::new(|_: &Seen| {
        response(200, &[("Cache-Control", "max-age=600")], "o")
    }))
    .await;
    let c = Cached::start();
    let url = origin.url("/o");
    let oic = [("Cache-Control", "only-if-cached")];
    assert_eq!(c.get(&url, &oic).await.status, 504);
    assert_eq!(origin.count("/o"), 0);
    c.get(&url, &[]).await;
    let r = c.get(&url, &oic).await;
    assert_eq!((r.status, r.text().as_str()), (200, "o"));
    assert_eq!(origin.count("/o"), 1);
}

#[tokio::test]
async fn must_revalidate_is_never_served_stale() {
    let origin = Origin::start(Arc::new(|s: &Seen| {
        if s.headers
            .get("if-none-match")
            .is_some_and(|v| v == "\"m1\"")
        {
            response(
                304,
                &[("Cache-Control", "max-age=600"), ("ETag", "\"m1\"")],
                "",
            )
        } else {
            response(
                200,
                &[
                    ("Cache-Control", "max-age=1, must-revalidate"),
                    ("Age", "10"),
                    ("ETag", "\"m1\""),
                ],
                "checked",
            )
        }
    }))
    .await;
    let c = Cached::start();
    let url = origin.url("/m");
    c.get(&url, &[]).await;
    // The client would take a stale response; must-revalidate forbids it.
    let (r, word) = c
        .send("GET", &url, &[("Cache-Control", "max-stale=600")])
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "checked"));
    assert_eq!(word, "revalidated");
    let seen = origin.seen_for("/m");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].headers["if-none-match"], "\"m1\"");
    // The 304 made it fresh for 600 s.
    let (r, word) = c.send("GET", &url, &[]).await;
    assert_eq!((r.text().as_str(), word.as_str()), ("checked", "hit"));
    assert_eq!(origin.count("/m"), 2);
}

#[tokio::test]
async fn vary_keeps_variants_apart_and_vary_star_is_not_stored() {
    let origin = Origin::start(Arc::new(|s: &Seen| {
        let lang = s
            .headers
            .get("accept-language")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        let vary = if s.uri == "/star" {
            "*"
        } else {
            "Accept-Language"
        };
        response(
            200,
            &[("Cache-Control", "max-age=600"), ("Vary", vary)],
            format!("lang={lang}"),
        )
    }))
    .await;
    let c = Cached::start();
    let url = origin.url("/v");
    let en = [("Accept-Language", "en")];
    let fr = [("Accept-Language", "fr")];
    assert_eq!(c.get(&url, &en).await.text(), "lang=en");
    let r = c.get(&url, &fr).await;
    assert_eq!(r.text(), "lang=fr");
    let status = r.cache_status().unwrap_or_default();
    assert!(status.contains("fwd=vary-miss"), "{status}");
    assert_eq!(c.get(&url, &en).await.text(), "lang=en");
    assert_eq!(c.get(&url, &fr).await.text(), "lang=fr");
    assert_eq!(origin.count("/v"), 2, "one origin request per variant");

    let star = origin.url("/star");
    c.get(&star, &en).await;
    c.get(&star, &en).await;
    assert_eq!(origin.count("/star"), 2);
}

#[tokio::test]
async fn client_conditional_request_on_a_hit_gets_304_from_the_cache() {
    let origin = Origin::start(Arc::new(|_: &Seen| {
        response(
            200,
            &[("Cache-Control", "max-age=600"), ("ETag", "\"c1\"")],
            "content",
        )
    }))
    .await;
    let c = Cached::start();
    let url = origin.url("/c");
    c.get(&url, &[]).await;
    let r = c.get(&url, &[("If-None-Match", "\"c1\"")]).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some("\"c1\""));
    let r = c.get(&url, &[("If-None-Match", "\"other\"")]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "content"));
    assert_eq!(origin.count("/c"), 1);
}

#[tokio::test]
async fn head_and_ranges_are_answered_from_a_stored_get() {
    let origin = Origin::start(Arc::new(|_: &Seen| {
        response(200, &[("Cache-Control", "max-age=600")], "0123456789")
    }))
    .await;
    let c = Cached::start();
    let url = origin.url("/r");
    c.get(&url, &[]).await;
    let (head, word) = c.send("HEAD", &url, &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("10"));
    assert!(head.body.is_empty());
    assert_eq!(word, "hit");
    let r = c.get(&url, &[("Range", "bytes=0-3")]).await;
    assert_eq!((r.status, r.text().as_str()), (206, "0123"));
    assert_eq!(r.header("content-range"), Some("bytes 0-3/10"));
    let r = c.get(&url, &[("Range", "bytes=50-")]).await;
    assert_eq!(r.status, 416);
    assert_eq!(
        origin.seen().len(),
        1,
        "only the first GET reached the origin"
    );
}

#[tokio::test]
async fn successful_unsafe_request_invalidates_the_stored_get() {
    let origin = Origin::start(Arc::new(|s: &Seen| match s.method.as_str() {
        "GET" => response(200, &[("Cache-Control", "max-age=600")], "item"),
        _ if s.uri == "/refused" => response(500, &[], "no"),
        _ => response(204, &[], ""),
    }))
    .await;
    let c = Cached::start();
    let gets = |path: &str| {
        origin
            .seen_for(path)
            .iter()
            .filter(|s| s.method == "GET")
            .count()
    };
    for path in ["/item", "/refused"] {
        let url = origin.url(path);
        c.get(&url, &[]).await;
        c.get(&url, &[]).await;
        assert_eq!(gets(path), 1, "{path}");
        let (r, _) = c.send("POST", &url, &[]).await;
        assert!(r.status == 204 || r.status == 500);
        c.get(&url, &[]).await;
    }
    assert_eq!(gets("/item"), 2, "POST answered 204 dropped the stored GET");
    assert_eq!(gets("/refused"), 1, "an error answer changes nothing");
}
