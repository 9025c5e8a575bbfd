//! End-to-end: the HTTP forward proxy driven by curl and reqwest against local origins.

mod common;

use common::*;

#[tokio::test]
async fn get_through_proxy_with_curl() {
    let origin = Origin::fixed("hello").await;
    let gh = Gatehouse::start(&http_listener("http", ""));
    let (code, body, err) = curl(&["-x", &gh.proxy_url("http"), &origin.url("/x")]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(body, b"hello");
    let seen = origin.seen();
    assert_eq!(seen[0].uri, "/x");
    assert_eq!(seen[0].headers["host"], origin.addr.to_string().as_str());
    assert_eq!(seen[0].headers["via"], "1.1 gatehouse");
    assert!(seen[0].headers.get("proxy-connection").is_none());
    assert!(seen[0].headers.get("x-forwarded-for").is_none());
    let line = gh.wait_log("GET");
    assert!(line.contains(" 200 "), "{line}");
}
