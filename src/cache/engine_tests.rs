use super::*;
use crate::cache::key::primary_key;
use crate::cache::testutil::{date, req, resp, t};

const URL: &str = "http://origin.test/page";

fn cache() -> Cache {
    Cache::new(CacheConfig::default()).expect("memory cache")
}

fn get(hs: &[(&str, &str)]) -> RequestHead {
    req("GET", URL, hs)
}

/// Runs a miss through storing, as the proxy would, with the response received at t(0).
async fn fill(c: &Cache, rq: &RequestHead, rs: &ResponseHead, body: &str) -> bool {
    match c.lookup(rq, t(0)).await {
        Lookup::Miss { key, .. } => {
            c.storable(rq, rs).is_ok()
                && c.store(&key, rq, rs, Bytes::from(body.to_string()), at(c, &key, 0))
                    .await
                    .finish()
                    .await
        }
        other => panic!("expected a miss, got {other:?}"),
    }
}

/// An exchange sent and answered at t(secs), with the key's generation now.
fn at(c: &Cache, key: &str, secs: i64) -> Fetch {
    Fetch {
        request_time: t(secs),
        response_time: t(secs),
        generation: c.generation(key),
    }
}

fn hit(l: Lookup) -> Served {
    match l {
        Lookup::Hit(s) => s,
        other => panic!("expected a hit, got {other:?}"),
    }
}

fn fresh60() -> ResponseHead {
    resp(
        200,
        &[
            ("Date", &date(0)),
            ("Cache-Control", "max-age=60"),
            ("ETag", "\"v1\""),
        ],
    )
}

#[tokio::test]
async fn miss_store_hit_with_age_and_cache_status() {
    let c = cache();
    assert!(fill(&c, &get(&[]), &fresh60(), "hello").await);
    let s = hit(c.lookup(&get(&[]), t(10)).await);
    assert_eq!(&s.body[..], b"hello");
    assert_eq!(s.head().headers.get_str("age"), Some("10"));
    assert_eq!(
        s.head().headers.get_str("cache-status"),
        Some("Gatehouse; hit; ttl=50")
    );
    assert_eq!(s.status.log_word(), "hit");
    let st = c.stats();
    assert_eq!((st.hits, st.misses, st.stores), (1, 1, 1));
}

#[tokio::test]
async fn miss_statuses_say_why() {
    let c = cache();
    match c.lookup(&get(&[]), t(0)).await {
        Lookup::Miss { key, status } => {
            assert_eq!(key, URL);
            assert_eq!(status.fwd, Some(Fwd::UriMiss));
        }
        other => panic!("{other:?}"),
    }
    match c.lookup(&req("POST", URL, &[]), t(0)).await {
        Lookup::Bypass(s) => assert_eq!(s.fwd, Some(Fwd::Method)),
        other => panic!("{other:?}"),
    }
    match c.lookup(&get(&[("If-Match", "\"x\"")]), t(0)).await {
        Lookup::Bypass(s) => assert_eq!(s.detail, Some("precondition")),
        other => panic!("{other:?}"),
    }
    let off = Cache::new(CacheConfig::disabled()).expect("cache");
    assert!(matches!(
        off.lookup(&get(&[]), t(0)).await,
        Lookup::Bypass(_)
    ));
}

#[tokio::test]
async fn variants_are_never_mixed() {
    let c = cache();
    let vary = resp(
        200,
        &[("Cache-Control", "max-age=60"), ("Vary", "Accept-Language")],
    );
    assert!(fill(&c, &get(&[("Accept-Language", "en")]), &vary, "hello").await);
    let de = get(&[("Accept-Language", "de")]);
    match c.lookup(&de, t(1)).await {
        Lookup::Miss { key, status } => {
            assert_eq!(status.fwd, Some(Fwd::VaryMiss));
            let fetch = at(&c, &key, 1);
            let body = Bytes::from_static(b"hallo");
            assert!(c.store(&key, &de, &vary, body, fetch).await.finish().await);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        &hit(c.lookup(&get(&[("Accept-Language", "en")]), t(2)).await).body[..],
        b"hello"
    );
    assert_eq!(&hit(c.lookup(&de, t(2)).await).body[..], b"hallo");
    assert!(matches!(
        c.lookup(&get(&[]), t(2)).await,
        Lookup::Miss { .. }
    ));
}

#[tokio::test]
async fn private_and_authorized_responses_are_not_shared() {
    let c = cache();
    let private = resp(200, &[("Cache-Control", "private, max-age=60")]);
    assert!(!fill(&c, &get(&[("Cookie", "user=alice")]), &private, "alice's").await);
    assert!(matches!(
        c.lookup(&get(&[("Cookie", "user=bob")]), t(1)).await,
        Lookup::Miss { .. }
    ));
    let auth = get(&[("Authorization", "Bearer alice")]);
    assert_eq!(
        c.storable(&auth, &fresh60()),
        Err(Refusal::Rfc(NotStorable::Authorization))
    );
    assert!(!fill(&c, &auth, &fresh60(), "alice's").await);
    let cookie = resp(
        200,
        &[
            ("Cache-Control", "max-age=60"),
            ("Set-Cookie", "session=alice"),
        ],
    );
    assert!(!fill(&c, &get(&[]), &cookie, "x").await);
    assert_eq!(c.stats().stores, 0);
}

#[tokio::test]
async fn stale_revalidates_and_304_is_merged() {
    let c = cache();
    let stored = resp(
        200,
        &[
            ("Date", &date(0)),
            ("Cache-Control", "max-age=10"),
            ("ETag", "\"v1\""),
            ("X-V", "old"),
        ],
    );
    assert!(fill(&c, &get(&[]), &stored, "body").await);
    let client = get(&[("Accept", "text/plain")]);
    let reval = match c.lookup(&client, t(20)).await {
        Lookup::Revalidate(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(reval.headers.get_str("if-none-match"), Some("\"v1\""));
    assert_eq!(reval.headers.get_str("accept"), Some("text/plain"));
    assert_eq!(reval.status.fwd, Some(Fwd::Stale));
    let nm = resp(
        304,
        &[
            ("Date", &date(20)),
            ("ETag", "\"v1\""),
            ("Cache-Control", "max-age=100"),
            ("X-V", "new"),
        ],
    );
    let s = c
        .revalidated(&reval, &client, &nm, t(20), t(20), t(20))
        .await
        .expect("selected");
    assert_eq!(s.head().status, 200);
    assert_eq!(&s.body[..], b"body");
    assert_eq!(s.head().headers.get_str("x-v"), Some("new"));
    assert_eq!(
        s.head().headers.get_str("cache-status"),
        Some("Gatehouse; fwd=stale; fwd-status=304; ttl=100; stored")
    );
    assert_eq!(s.status.log_word(), "revalidated");
    // Fresh again, from the merged head.
    let h = hit(c.lookup(&client, t(50)).await);
    assert_eq!(h.head().headers.get_str("age"), Some("30"));
    assert_eq!(h.head().headers.get_str("x-v"), Some("new"));
}

#[tokio::test]
async fn mismatched_304_is_not_used() {
    let c = cache();
    let stored = resp(200, &[("Cache-Control", "max-age=1"), ("ETag", "\"v1\"")]);
    assert!(fill(&c, &get(&[]), &stored, "body").await);
    let Lookup::Revalidate(reval) = c.lookup(&get(&[]), t(5)).await else {
        panic!("revalidate")
    };
    let nm = resp(304, &[("ETag", "\"v2\"")]);
    assert!(c
        .revalidated(&reval, &get(&[]), &nm, t(5), t(5), t(5))
        .await
        .is_none());
}

#[tokio::test]
async fn request_no_cache_forces_validation_of_fresh_response() {
    let c = cache();
    assert!(fill(&c, &get(&[]), &fresh60(), "x").await);
    match c.lookup(&get(&[("Cache-Control", "no-cache")]), t(1)).await {
        Lookup::Revalidate(r) => assert_eq!(r.status.fwd, Some(Fwd::Request)),
        other => panic!("{other:?}"),
    }
    match c.lookup(&get(&[("Pragma", "no-cache")]), t(1)).await {
        Lookup::Revalidate(_) => {}
        other => panic!("{other:?}"),
    }
    // A response's own no-cache is not the request's doing.
    let c = cache();
    let nc = resp(
        200,
        &[("Cache-Control", "no-cache, max-age=60"), ("ETag", "\"n\"")],
    );
    assert!(fill(&c, &get(&[]), &nc, "x").await);
    match c.lookup(&get(&[]), t(1)).await {
        Lookup::Revalidate(r) => {
            assert_eq!(r.status.fwd, Some(Fwd::Stale));
            assert_eq!(r.headers.get_str("if-none-match"), Some("\"n\""));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn stale_while_revalidate_serves_and_refreshes() {
    let c = cache();
    let r = resp(
        200,
        &[
            ("Date", &date(0)),
            ("Cache-Control", "max-age=10, stale-while-revalidate=30"),
        ],
    );
    assert!(fill(&c, &get(&[]), &r, "old").await);
    match c.lookup(&get(&[]), t(25)).await {
        Lookup::StaleWhileRevalidate { served, reval } => {
            assert_eq!(&served.body[..], b"old");
            assert_eq!(served.status.log_word(), "stale");
            assert_eq!(reval.key, URL);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.lookup(&get(&[]), t(41)).await,
        Lookup::Revalidate(_)
    ));
}

#[tokio::test]
async fn stale_if_error_window() {
    let c = cache();
    let r = resp(
        200,
        &[
            ("Date", &date(0)),
            ("Cache-Control", "max-age=10, stale-if-error=60"),
        ],
    );
    assert!(fill(&c, &get(&[]), &r, "old").await);
    let Lookup::Revalidate(reval) = c.lookup(&get(&[]), t(30)).await else {
        panic!("revalidate")
    };
    let s = c
        .stale_if_error(&reval, &get(&[]), t(30))
        .expect("within window");
    assert_eq!(&s.body[..], b"old");
    assert!(s
        .head()
        .headers
        .get_str("cache-status")
        .expect("status")
        .contains("stale-if-error"));
    assert!(c.stale_if_error(&reval, &get(&[]), t(71)).is_none());
}

#[tokio::test]
async fn only_if_cached_gives_504_without_a_usable_response() {
    let c = cache();
    match c
        .lookup(&get(&[("Cache-Control", "only-if-cached")]), t(0))
        .await
    {
        Lookup::OnlyIfCached(s) => assert_eq!(s.head().status, 504),
        other => panic!("{other:?}"),
    }
    let r = resp(200, &[("Date", &date(0)), ("Cache-Control", "max-age=10")]);
    assert!(fill(&c, &get(&[]), &r, "x").await);
    assert!(matches!(
        c.lookup(&get(&[("Cache-Control", "only-if-cached")]), t(5))
            .await,
        Lookup::Hit(_)
    ));
    assert!(matches!(
        c.lookup(&get(&[("Cache-Control", "only-if-cached")]), t(50))
            .await,
        Lookup::OnlyIfCached(_)
    ));
}

#[tokio::test]
async fn head_conditional_and_range_from_a_stored_get() {
    let c = cache();
    assert!(fill(&c, &get(&[]), &fresh60(), "0123456789").await);
    let h = hit(c.lookup(&req("HEAD", URL, &[]), t(1)).await);
    assert!(h.body.is_empty());
    assert_eq!(h.head().headers.get_str("content-length"), Some("10"));
    let nm = hit(c.lookup(&get(&[("If-None-Match", "W/\"v1\"")]), t(1)).await);
    assert_eq!(nm.head().status, 304);
    let part = hit(c.lookup(&get(&[("Range", "bytes=-3")]), t(1)).await);
    assert_eq!((part.head().status, &part.body[..]), (206, &b"789"[..]));
    let no_head = Cache::new(CacheConfig {
        head: false,
        ..CacheConfig::default()
    })
    .expect("cache");
    assert!(matches!(
        no_head.lookup(&req("HEAD", URL, &[]), t(0)).await,
        Lookup::Bypass(_)
    ));
}

#[tokio::test]
async fn unsafe_methods_invalidate() {
    let c = cache();
    assert!(fill(&c, &get(&[]), &fresh60(), "x").await);
    let other = req("GET", "http://origin.test/other", &[]);
    assert!(fill(&c, &other, &fresh60(), "y").await);
    let post = req("POST", URL, &[]);
    assert_eq!(c.invalidate(&post, &resp(500, &[])).await, 0);
    assert_eq!(
        c.invalidate(&post, &resp(303, &[("Location", "/other")]))
            .await,
        2
    );
    assert!(matches!(
        c.lookup(&get(&[]), t(1)).await,
        Lookup::Miss { .. }
    ));
    assert!(matches!(c.lookup(&other, t(1)).await, Lookup::Miss { .. }));
}

#[tokio::test]
async fn size_limits() {
    let c = Cache::new(CacheConfig {
        max_object_size: 4,
        ..CacheConfig::default()
    })
    .expect("cache");
    let declared = resp(
        200,
        &[("Cache-Control", "max-age=60"), ("Content-Length", "5")],
    );
    assert_eq!(c.storable(&get(&[]), &declared), Err(Refusal::TooLarge));
    assert!(!fill(&c, &get(&[]), &fresh60(), "12345").await);
    assert!(fill(&c, &get(&[]), &fresh60(), "1234").await);
}

#[tokio::test]
async fn purge_one_and_by_prefix() {
    let c = cache();
    for p in ["a/1", "a/2", "b"] {
        let r = req("GET", &format!("http://origin.test/{p}"), &[]);
        assert!(fill(&c, &r, &fresh60(), p).await);
    }
    assert_eq!(c.purge("HTTP://Origin.test:80/b").await, 1);
    assert_eq!(c.purge("http://origin.test/b").await, 0);
    assert_eq!(c.purge_prefix("http://origin.test/a/").await, 2);
    assert_eq!(c.stats().memory.expect("memory").entries, 0);
}

#[tokio::test]
async fn disk_tier_serves_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = CacheConfig {
        disk_dir: Some(dir.path().to_path_buf()),
        disk_size: 1 << 20,
        ..CacheConfig::default()
    };
    {
        let c = Cache::new(cfg.clone()).expect("cache");
        assert!(fill(&c, &get(&[]), &fresh60(), "persisted").await);
    }
    let c = Cache::new(cfg).expect("reopen");
    let s = hit(c.lookup(&get(&[]), t(30)).await);
    assert_eq!(&s.body[..], b"persisted");
    assert_eq!(s.head().headers.get_str("age"), Some("30"));
    let st = c.stats();
    assert_eq!(st.disk.expect("disk").entries, 1);
    assert_eq!(st.memory.expect("memory").entries, 1, "promoted to memory");
}

/// The three tier set-ups every store-window case runs against.
fn tier_setups(dir: &std::path::Path) -> Vec<(&'static str, CacheConfig)> {
    let disk = |memory_size| CacheConfig {
        memory_size,
        disk_dir: Some(dir.to_path_buf()),
        disk_size: 1 << 20,
        ..CacheConfig::default()
    };
    vec![
        ("memory", CacheConfig::default()),
        ("disk", disk(0)),
        ("both", disk(CacheConfig::default().memory_size)),
    ]
}

#[tokio::test]
async fn an_invalidation_wins_over_a_store_that_started_before_it() {
    for (name, cfg) in tier_setups(tempfile::tempdir().expect("tmp").path()) {
        let c = Cache::new(cfg).expect("cache");
        let key = primary_key(&get(&[])).expect("key");
        // The GET goes upstream (generation taken), then a POST invalidates the URL, then
        // the GET's response arrives and is stored.
        let fetch = at(&c, &key, 0);
        c.invalidate(&req("POST", URL, &[]), &resp(204, &[])).await;
        let store = c
            .store(
                &key,
                &get(&[]),
                &fresh60(),
                Bytes::from_static(b"old"),
                fetch,
            )
            .await;
        assert!(!store.finish().await, "{name}: dropped");
        assert!(
            matches!(c.lookup(&get(&[]), t(1)).await, Lookup::Miss { .. }),
            "{name}: the invalidation stands"
        );
        // The invalidation lands while the store is under way (visible, disk write pending).
        let fetch = at(&c, &key, 0);
        let store = c
            .store(
                &key,
                &get(&[]),
                &fresh60(),
                Bytes::from_static(b"old"),
                fetch,
            )
            .await;
        c.invalidate(&req("DELETE", URL, &[]), &resp(200, &[]))
            .await;
        assert!(!store.finish().await, "{name}: dropped");
        assert!(
            matches!(c.lookup(&get(&[]), t(1)).await, Lookup::Miss { .. }),
            "{name}: the invalidation stands"
        );
        // A store that starts after the invalidation is kept.
        assert!(fill(&c, &get(&[]), &fresh60(), "new").await, "{name}");
        assert_eq!(&hit(c.lookup(&get(&[]), t(1)).await).body[..], b"new");
    }
}

#[tokio::test]
async fn a_stored_entry_is_visible_before_its_disk_write_ends() {
    for (name, cfg) in tier_setups(tempfile::tempdir().expect("tmp").path()) {
        let c = Cache::new(cfg).expect("cache");
        let key = primary_key(&get(&[])).expect("key");
        let fetch = at(&c, &key, 0);
        let store = c
            .store(
                &key,
                &get(&[]),
                &fresh60(),
                Bytes::from_static(b"now"),
                fetch,
            )
            .await;
        let s = hit(c.lookup(&get(&[]), t(1)).await);
        assert_eq!(&s.body[..], b"now", "{name}");
        assert!(store.finish().await, "{name}");
        assert_eq!(&hit(c.lookup(&get(&[]), t(1)).await).body[..], b"now");
    }
}

#[test]
fn a_follower_obeys_the_same_reuse_rules_as_a_hit() {
    let c = cache();
    let shared = |cc: &str| {
        SharedHead::new(
            &get(&[]),
            &resp(200, &[("Date", &date(0)), ("Cache-Control", cc)]),
            t(0),
            t(0),
        )
        .expect("shareable")
    };
    let fresh = shared("max-age=60");
    assert_eq!(c.follower(&get(&[]), &fresh, t(1)), Follow::Stream);
    for (hs, why) in [
        (vec![("Cache-Control", "no-cache")], "request no-cache"),
        (vec![("Cache-Control", "min-fresh=100")], "min-fresh"),
        (vec![("Cache-Control", "max-age=0")], "max-age=0 and age 1"),
        (vec![("Pragma", "no-cache")], "Pragma"),
    ] {
        assert_eq!(
            c.follower(&get(&hs), &fresh, t(1)),
            Follow::Upstream,
            "{why}"
        );
    }
    assert_eq!(
        c.follower(&get(&[]), &shared("no-cache"), t(1)),
        Follow::Upstream,
        "response no-cache"
    );
    assert_eq!(
        c.follower(&get(&[]), &shared("max-age=0"), t(1)),
        Follow::Upstream,
        "stale"
    );
    for h in [
        ("Range", "bytes=0-1"),
        ("If-None-Match", "\"v1\""),
        ("If-Modified-Since", "Mon, 01 Jan 2024 00:00:00 GMT"),
    ] {
        assert_eq!(c.follower(&get(&[h]), &fresh, t(1)), Follow::Whole, "{h:?}");
    }
}

fn reverse_profile() -> Arc<Profile> {
    Arc::new(Profile {
        targets: CacheConfig::default().targeted_fields,
        ..Profile::default()
    })
}

/// A miss stored under `p`, the response received at t(0).
async fn fill_in(c: &Cache, p: &Arc<Profile>, rq: &RequestHead, rs: &ResponseHead) -> bool {
    match c.lookup_in(rq, p, t(0)).await {
        Lookup::Miss { key, .. } => {
            c.storable_in(rq, rs, p).is_ok()
                && c.store_in(&key, rq, rs, Bytes::from("x"), at(c, &key, 0), p)
                    .await
                    .finish()
                    .await
        }
        other => panic!("expected a miss, got {other:?}"),
    }
}

#[tokio::test]
async fn a_targeted_field_decides_for_the_reverse_profile_only() {
    let rs = resp(
        200,
        &[
            ("Date", &date(0)),
            ("Cache-Control", "no-store"),
            ("CDN-Cache-Control", "max-age=60"),
        ],
    );
    let fwd = cache();
    assert!(
        !fill(&fwd, &get(&[]), &rs, "x").await,
        "the forward proxy obeys no-store"
    );
    let c = cache();
    let p = reverse_profile();
    assert!(fill_in(&c, &p, &get(&[]), &rs).await);
    let s = hit(c.lookup_in(&get(&[]), &p, t(30)).await);
    assert_eq!(s.status.ttl, Some(30));
    assert!(matches!(
        c.lookup_in(&get(&[]), &p, t(61)).await,
        Lookup::Revalidate(_)
    ));
    // The same entry read by the forward proxy: Cache-Control says no-store... and the
    // stored response is stale at once for it (no explicit freshness it can use).
    assert!(!matches!(c.lookup(&get(&[]), t(1)).await, Lookup::Hit(_)));

    // The targeted field can forbid what Cache-Control allows.
    let rs = resp(
        200,
        &[
            ("Date", &date(0)),
            ("Cache-Control", "max-age=600"),
            ("Gatehouse-Cache-Control", "no-store"),
            ("CDN-Cache-Control", "max-age=60"),
        ],
    );
    let c = cache();
    assert!(
        !fill_in(&c, &p, &get(&[]), &rs).await,
        "our own field comes first"
    );
    // An invalid own field is ignored: CDN-Cache-Control is next.
    let rs = resp(
        200,
        &[
            ("Date", &date(0)),
            ("Cache-Control", "no-store"),
            ("Gatehouse-Cache-Control", "max-age=\"60"),
            ("CDN-Cache-Control", "max-age=60, stale-while-revalidate=30"),
        ],
    );
    assert!(fill_in(&c, &p, &get(&[]), &rs).await);
    assert!(matches!(
        c.lookup_in(&get(&[]), &p, t(70)).await,
        Lookup::StaleWhileRevalidate { .. }
    ));
}

#[tokio::test]
async fn route_key_fields_make_separate_variants() {
    let p = Arc::new(Profile {
        ignore_query: crate::cache::profile::IgnoreQuery::Names(vec!["utm_*".into()]),
        key_cookies: vec!["lang".into()],
        ..Profile::default()
    });
    let c = cache();
    let en = req(
        "GET",
        "http://origin.test/p?utm_source=a",
        &[("Cookie", "lang=en")],
    );
    assert!(fill_in(&c, &p, &en, &fresh60()).await);
    let same = req(
        "GET",
        "http://origin.test/p?utm_source=b",
        &[("Cookie", "lang=en; x=1")],
    );
    hit(c.lookup_in(&same, &p, t(1)).await);
    let de = req("GET", "http://origin.test/p", &[("Cookie", "lang=de")]);
    assert!(matches!(
        c.lookup_in(&de, &p, t(1)).await,
        Lookup::Miss { .. }
    ));
    // The forward proxy keys on the whole URL: no entry for the utm_ URL.
    assert!(matches!(c.lookup(&same, t(1)).await, Lookup::Miss { .. }));
    // An unsafe method on any spelling of the URL drops every variant.
    let post = req("POST", "http://origin.test/p?utm_medium=z", &[]);
    assert_eq!(c.invalidate_in(&post, &resp(204, &[]), &p).await, 1);
    assert!(matches!(
        c.lookup_in(&same, &p, t(2)).await,
        Lookup::Miss { .. }
    ));
}

fn tagged(tags: &str) -> ResponseHead {
    resp(
        200,
        &[
            ("Date", &date(0)),
            ("Cache-Control", "max-age=60, stale-while-revalidate=600"),
            ("Surrogate-Key", tags),
        ],
    )
}

#[tokio::test]
async fn purge_by_tag_hard_and_soft_on_every_tier() {
    for i in 0..3 {
        // A directory of its own per set-up: disk objects must not carry over.
        let tmp = tempfile::tempdir().expect("tmp");
        let (name, cfg) = tier_setups(tmp.path()).swap_remove(i);
        let c = Cache::new(cfg.clone()).expect("cache");
        let a = req("GET", "http://origin.test/a", &[]);
        let b = req("GET", "http://origin.test/b", &[]);
        let z = req("GET", "http://origin.test/z", &[]);
        assert!(fill(&c, &a, &tagged("product-1 all"), "a").await, "{name}");
        assert!(fill(&c, &b, &tagged("product-2 all"), "b").await, "{name}");
        assert!(fill(&c, &z, &fresh60(), "z").await, "{name}");
        assert_eq!(c.purge_tag("product-1", false, t(10)).await, 1, "{name}");
        assert!(
            matches!(c.lookup(&a, t(10)).await, Lookup::Miss { .. }),
            "{name}"
        );
        hit(c.lookup(&b, t(10)).await);
        // Soft: stale from the purge on, still served stale within its window.
        assert_eq!(c.purge_tag("all", true, t(10)).await, 1, "{name}");
        match c.lookup(&b, t(20)).await {
            Lookup::StaleWhileRevalidate { served, .. } => {
                assert_eq!(&served.body[..], b"b");
                assert_eq!(served.status.ttl, Some(-10), "{name}: stale since t(10)");
            }
            other => panic!("{name}: {other:?}"),
        }
        hit(c.lookup(&z, t(20)).await);
        assert_eq!(c.purge_tag("nothing", false, t(20)).await, 0);
        // The disk tier keeps the tags and the soft purge across a restart.
        if cfg.disk_dir.is_some() {
            drop(c);
            let c = Cache::new(cfg).expect("reopen");
            assert!(matches!(
                c.lookup(&b, t(20)).await,
                Lookup::StaleWhileRevalidate { .. }
            ));
            assert_eq!(c.purge_tag("product-2", false, t(20)).await, 1, "{name}");
            assert!(matches!(c.lookup(&b, t(20)).await, Lookup::Miss { .. }));
        }
    }
}

#[tokio::test]
async fn soft_purge_by_url_and_prefix() {
    let c = cache();
    let a = req("GET", "http://origin.test/s/a", &[]);
    let b = req("GET", "http://origin.test/s/b", &[]);
    assert!(fill(&c, &a, &fresh60(), "a").await);
    assert!(fill(&c, &b, &fresh60(), "b").await);
    assert_eq!(c.purge_url("http://origin.test/s/a", true, t(5)).await, 1);
    let Lookup::Revalidate(reval) = c.lookup(&a, t(6)).await else {
        panic!("soft-purged: validated before reuse");
    };
    assert!(
        reval.headers.contains("if-none-match"),
        "the stored ETag is used"
    );
    // A 304 makes it fresh again.
    let served = c
        .revalidated(
            &reval,
            &a,
            &resp(304, &[("Date", &date(6))]),
            t(6),
            t(6),
            t(6),
        )
        .await
        .expect("304 matches");
    assert_eq!(&served.body[..], b"a");
    hit(c.lookup(&a, t(7)).await);
    assert_eq!(
        c.purge_prefix_as("http://origin.test/s/", true, t(8)).await,
        2
    );
    assert!(matches!(c.lookup(&b, t(9)).await, Lookup::Revalidate(_)));
    assert!(matches!(c.lookup(&a, t(9)).await, Lookup::Revalidate(_)));
}

/// The judgement from what a stored response parsed when it was stored is the one a fresh
/// parse of its head gives: same directives, lifetime, age, and so the same reuse, stale
/// and Cache-Status ttl decisions, over the freshness and reuse cases of those modules.
#[test]
fn judging_from_the_stored_parse_equals_parsing_again() {
    use crate::cache::freshness::{stale_when_disconnected, within_stale_if_error};
    let heads = [
        resp(200, &[("Date", &date(0)), ("Cache-Control", "max-age=60")]),
        resp(200, &[("Cache-Control", "s-maxage=30, max-age=60")]),
        resp(
            200,
            &[
                ("Cache-Control", "max-age=10"),
                ("Cache-Control", "max-age=20"),
            ],
        ),
        resp(200, &[("Cache-Control", "max-age=abc")]),
        resp(200, &[("Date", &date(0)), ("Expires", &date(100))]),
        resp(200, &[("Expires", "0")]),
        resp(200, &[("Expires", &date(100)), ("Expires", &date(200))]),
        resp(200, &[("Date", &date(0)), ("Last-Modified", &date(-1000))]),
        resp(302, &[("Last-Modified", &date(-1000))]),
        resp(
            302,
            &[("Last-Modified", &date(-1000)), ("Cache-Control", "public")],
        ),
        resp(200, &[("Cache-Control", "no-cache, max-age=60")]),
        resp(200, &[("Cache-Control", "max-age=1, must-revalidate")]),
        resp(200, &[("Cache-Control", "max-age=1, proxy-revalidate")]),
        resp(
            200,
            &[("Cache-Control", "max-age=10, stale-while-revalidate=20")],
        ),
        resp(200, &[("Cache-Control", "max-age=10, stale-if-error=60")]),
        resp(
            200,
            &[
                ("Date", &date(-10)),
                ("Age", "7200, 0"),
                ("Cache-Control", "max-age=9000"),
            ],
        ),
        resp(200, &[("Age", "-3"), ("Cache-Control", "max-age=5")]),
        resp(
            200,
            &[("Date", &date(500)), ("Cache-Control", "max-age=50")],
        ),
        resp(
            200,
            &[
                ("Date", "not a date"),
                ("Cache-Control", "MAX-AGE=\"30\", Public"),
            ],
        ),
        resp(
            200,
            &[
                ("CDN-Cache-Control", "max-age=500"),
                ("Cache-Control", "max-age=5"),
            ],
        ),
        resp(200, &[]),
    ];
    let requests = [
        "",
        "max-age=5",
        "max-age=x",
        "min-fresh=10",
        "max-stale",
        "max-stale=30",
        "no-cache",
        "stale-if-error=100",
    ];
    let targeted = Profile {
        targets: vec!["cdn-cache-control".into()],
        ..Profile::default()
    };
    for head in &heads {
        for profile in [&Profile::default(), &targeted] {
            for stale_since in [None, Some(t(20))] {
                let mut stored =
                    StoredResponse::new(head.clone(), Bytes::new(), t(-2), t(0), vec![]);
                stored.stale_since = stale_since;
                for now in [0, 5, 15, 40, 70, 500, 10_000] {
                    let now = t(now);
                    let (cc, lifetime, age) = judge(&stored, profile, now);
                    // Everything parsed again, as every lookup did before.
                    let decision = profile.decision(head);
                    let cc2 = CacheControl::from_headers(&decision.headers);
                    let mut lifetime2 = freshness_lifetime(&decision, &cc2, t(0));
                    let age2 = current_age(head, t(-2), t(0), now);
                    if let Some(at) = stale_since {
                        lifetime2 = lifetime2.min(current_age(head, t(-2), t(0), at));
                    }
                    let what = format!("{head:?} {:?} {now:?}", profile.targets);
                    assert_eq!((&*cc, lifetime, age), (&cc2, lifetime2, age2), "{what}");
                    for r in requests {
                        let req_cc = CacheControl::parse(r);
                        assert_eq!(
                            reuse(&req_cc, &cc, lifetime, age),
                            reuse(&req_cc, &cc2, lifetime2, age2),
                            "{what} {r}"
                        );
                        let staleness = age.saturating_sub(lifetime);
                        assert_eq!(
                            within_stale_if_error(&cc, &req_cc, staleness),
                            within_stale_if_error(&cc2, &req_cc, staleness),
                        );
                        assert_eq!(
                            stale_when_disconnected(&cc, &req_cc),
                            stale_when_disconnected(&cc2, &req_cc)
                        );
                    }
                    assert_eq!(
                        crate::cache::serve::ttl(&stored, now),
                        freshness_lifetime(head, &CacheControl::from_headers(&head.headers), t(0))
                            as i64
                            - age2 as i64
                    );
                }
            }
        }
    }
}
