use super::*;
use crate::cache::testutil::{date, req, resp, t};

fn eval(rq: &[(&str, &str)], rs: &[(&str, &str)]) -> Condition {
    evaluate(&req("GET", "http://a.test/", rq), &resp(200, rs), t(0))
}

#[test]
fn etag_lists_parse_with_commas_inside_tags() {
    let tags = parse_etags(r#"W/"a", "b,c" ,"d""#).expect("list");
    assert_eq!(tags.len(), 3);
    assert!(tags[0].weak);
    assert_eq!(tags[1].opaque, "\"b,c\"");
    assert_eq!(parse_etags("*"), None);
    assert_eq!(parse_etags("garbage"), Some(vec![]));
}

#[test]
fn weak_and_strong_comparison() {
    let w = EntityTag {
        weak: true,
        opaque: "\"1\"".into(),
    };
    let s = EntityTag {
        weak: false,
        opaque: "\"1\"".into(),
    };
    assert!(w.weak_eq(&s));
    assert!(!w.strong_eq(&s));
    assert!(s.strong_eq(&s.clone()));
}

#[test]
fn if_none_match_uses_weak_comparison() {
    assert_eq!(
        eval(&[("If-None-Match", "W/\"v1\"")], &[("ETag", "\"v1\"")]),
        Condition::NotModified
    );
    assert_eq!(
        eval(
            &[("If-None-Match", "\"x\", \"v1\"")],
            &[("ETag", "W/\"v1\"")]
        ),
        Condition::NotModified
    );
    assert_eq!(
        eval(&[("If-None-Match", "\"v2\"")], &[("ETag", "\"v1\"")]),
        Condition::Full
    );
    assert_eq!(eval(&[("If-None-Match", "\"v2\"")], &[]), Condition::Full);
    assert_eq!(eval(&[("If-None-Match", "*")], &[]), Condition::NotModified);
}

#[test]
fn if_none_match_takes_precedence_over_if_modified_since() {
    let rq = [
        ("If-None-Match", "\"v2\""),
        ("If-Modified-Since", &*date(100)),
    ];
    assert_eq!(
        eval(&rq, &[("ETag", "\"v1\""), ("Last-Modified", &date(0))]),
        Condition::Full
    );
}

#[test]
fn if_modified_since_against_last_modified_then_date() {
    assert_eq!(
        eval(
            &[("If-Modified-Since", &date(10))],
            &[("Last-Modified", &date(10))]
        ),
        Condition::NotModified
    );
    assert_eq!(
        eval(
            &[("If-Modified-Since", &date(9))],
            &[("Last-Modified", &date(10))]
        ),
        Condition::Full
    );
    assert_eq!(
        eval(&[("If-Modified-Since", &date(10))], &[("Date", &date(5))]),
        Condition::NotModified
    );
    // Falls back to the time the response was received (t(0)).
    assert_eq!(
        eval(&[("If-Modified-Since", &date(-1))], &[]),
        Condition::Full
    );
    assert_eq!(
        eval(
            &[("If-Modified-Since", "yesterday")],
            &[("Last-Modified", &date(0))]
        ),
        Condition::Full
    );
}

#[test]
fn conditionals_only_for_get_and_head() {
    let r = req("POST", "http://a.test/", &[("If-None-Match", "*")]);
    assert_eq!(evaluate(&r, &resp(200, &[]), t(0)), Condition::Full);
    let r = req("HEAD", "http://a.test/", &[("If-None-Match", "*")]);
    assert_eq!(evaluate(&r, &resp(200, &[]), t(0)), Condition::NotModified);
}

#[test]
fn conditionals_ignored_for_stored_non_2xx() {
    let r = req("GET", "http://a.test/", &[("If-None-Match", "*")]);
    assert_eq!(evaluate(&r, &resp(404, &[]), t(0)), Condition::Full);
    let r = req("GET", "http://a.test/", &[("If-Modified-Since", &date(10))]);
    assert_eq!(
        evaluate(&r, &resp(301, &[("Date", &date(0))]), t(0)),
        Condition::Full
    );
}

#[test]
fn origin_preconditions_are_detected() {
    assert!(has_origin_preconditions(&req(
        "GET",
        "/",
        &[("If-Match", "\"a\"")]
    )));
    assert!(has_origin_preconditions(&req(
        "GET",
        "/",
        &[("If-Unmodified-Since", &date(0))]
    )));
    assert!(!has_origin_preconditions(&req(
        "GET",
        "/",
        &[("If-None-Match", "\"a\"")]
    )));
}

#[test]
fn not_modified_keeps_only_the_listed_fields() {
    let stored = resp(
        200,
        &[
            ("ETag", "\"1\""),
            ("Content-Type", "text/plain"),
            ("Cache-Control", "max-age=5"),
            ("Vary", "Accept"),
        ],
    );
    let h = not_modified_head(&stored);
    assert_eq!(h.status, 304);
    let names: Vec<_> = h.headers.0.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["ETag", "Cache-Control", "Vary"]);
}

fn rng(rq: &[(&str, &str)], len: u64) -> RangeAnswer {
    range(
        &req("GET", "http://a.test/", rq),
        &resp(200, &[("ETag", "\"s\""), ("Last-Modified", &date(0))]),
        len,
    )
}

#[test]
fn single_byte_ranges() {
    assert_eq!(
        rng(&[("Range", "bytes=0-9")], 100),
        RangeAnswer::Partial { first: 0, last: 9 }
    );
    assert_eq!(
        rng(&[("Range", "bytes=90-")], 100),
        RangeAnswer::Partial {
            first: 90,
            last: 99
        }
    );
    assert_eq!(
        rng(&[("Range", "bytes=-10")], 100),
        RangeAnswer::Partial {
            first: 90,
            last: 99
        }
    );
    assert_eq!(
        rng(&[("Range", "bytes=-500")], 100),
        RangeAnswer::Partial { first: 0, last: 99 }
    );
    assert_eq!(
        rng(&[("Range", "Bytes=50-500")], 100),
        RangeAnswer::Partial {
            first: 50,
            last: 99
        }
    );
}

#[test]
fn unsatisfiable_and_ignored_ranges() {
    assert_eq!(
        rng(&[("Range", "bytes=100-")], 100),
        RangeAnswer::Unsatisfiable
    );
    assert_eq!(
        rng(&[("Range", "bytes=-0")], 100),
        RangeAnswer::Unsatisfiable
    );
    assert_eq!(rng(&[("Range", "bytes=0-1, 5-6")], 100), RangeAnswer::Full);
    assert_eq!(rng(&[("Range", "items=0-1")], 100), RangeAnswer::Full);
    assert_eq!(rng(&[("Range", "bytes=9-1")], 100), RangeAnswer::Full);
    assert_eq!(rng(&[("Range", "bytes=x-1")], 100), RangeAnswer::Full);
    assert_eq!(rng(&[], 100), RangeAnswer::Full);
    let head = req("HEAD", "http://a.test/", &[("Range", "bytes=0-1")]);
    assert_eq!(range(&head, &resp(200, &[]), 100), RangeAnswer::Full);
}

#[test]
fn if_range_needs_strong_match() {
    let ok = [("Range", "bytes=0-0"), ("If-Range", "\"s\"")];
    assert_eq!(rng(&ok, 10), RangeAnswer::Partial { first: 0, last: 0 });
    assert_eq!(
        rng(&[("Range", "bytes=0-0"), ("If-Range", "W/\"s\"")], 10),
        RangeAnswer::Full
    );
    assert_eq!(
        rng(&[("Range", "bytes=0-0"), ("If-Range", "\"other\"")], 10),
        RangeAnswer::Full
    );
    assert_eq!(
        rng(&[("Range", "bytes=0-0"), ("If-Range", &date(0))], 10),
        RangeAnswer::Partial { first: 0, last: 0 }
    );
    assert_eq!(
        rng(&[("Range", "bytes=0-0"), ("If-Range", &date(1))], 10),
        RangeAnswer::Full
    );
}

#[test]
fn partial_and_unsatisfiable_heads() {
    let stored = resp(200, &[("Content-Length", "100"), ("ETag", "\"s\"")]);
    let h = partial_head(&stored, 10, 19, 100);
    assert_eq!(h.status, 206);
    assert_eq!(h.headers.get_str("content-range"), Some("bytes 10-19/100"));
    assert_eq!(h.headers.get_str("content-length"), Some("10"));
    let h = unsatisfiable_head(&stored, 100);
    assert_eq!(h.status, 416);
    assert_eq!(h.headers.get_str("content-range"), Some("bytes */100"));
}
