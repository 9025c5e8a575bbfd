//! End-to-end: the policy at the HTTP and CONNECT doors - the safe-by-default guard, rules by
//! host, port, user and resolved address, proxy authentication, failed-login limiting, the
//! deny page, header rewriting and the open-proxy guard.

mod common;

use std::time::Duration;

use common::*;

fn status_line(out: &[u8]) -> String {
    String::from_utf8_lossy(out)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn loopback_is_refused_by_default_even_through_a_name() {
    let origin = Origin::fixed("should not be reached").await;
    let cfg = format!(
        "{}[dns.hosts]\n\"innocent.test\" = \"127.0.0.1\"\n[policy]\ndefault = \"allow\"\n",
        http_listener("http", "")
    );
    let gh = Gatehouse::start(&cfg);
    let (code, out, err) = curl(&["-x", &gh.proxy_url("http"), "-i", &origin.url("/")]).await;
    assert_eq!(code, 0, "{err}");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(
        text.contains("error=http_request_denied") && text.contains("guard"),
        "{text}"
    );
    let url = format!("http://innocent.test:{}/", origin.addr.port());
    let (_, out, _) = curl(&["-x", &gh.proxy_url("http"), "-i", &url]).await;
    assert!(
        status_line(&out).contains("403"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // CONNECT too; and the cloud metadata address, with no traffic sent anywhere.
    let (_, out, _) = curl(&[
        "-x",
        &gh.proxy_url("http"),
        "-i",
        "-p",
        "http://169.254.169.254:443/",
    ])
    .await;
    assert!(
        String::from_utf8_lossy(&out).contains("403"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(origin.seen().len(), 0);
    let line = gh.wait_log("innocent.test");
    assert!(line.ends_with(" guard"), "rule in the access log: {line}");
}

#[tokio::test]
async fn refuse_private_blocks_rfc1918_before_any_connection() {
    let cfg = format!(
        "{}[policy]\nrefuse_private = true\n",
        http_listener("http", "")
    );
    let gh = Gatehouse::start(&cfg);
    // Refused by the guard before connecting: no packet leaves for 10.0.0.1.
    let (code, out, err) = curl(&["-x", &gh.proxy_url("http"), "-i", "http://10.0.0.1/"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        status_line(&out).contains("403"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[tokio::test]
async fn rules_by_host_port_and_address_first_match_wins() {
    let origin = Origin::fixed("ok").await;
    let port = origin.addr.port();
    let cfg = format!(
        r#"{listener}
[dns.hosts]
"good.test" = "127.0.0.1"
"blocked.test" = "127.0.0.1"
"ads.good.test" = "127.0.0.1"
[policy]
default = "deny"
[[policy.rules]]
name = "no-ads"
action = "deny"
hosts = ["re:^ads\\."]
[[policy.rules]]
name = "no-blocked"
action = "deny"
hosts = ["blocked.test"]
[[policy.rules]]
name = "loopback-origin"
action = "allow"
ports = [{port}]
dest_addrs = ["127.0.0.0/8"]
"#,
        listener = http_listener("http", "")
    );
    let gh = Gatehouse::start(&cfg);
    let get = |host: &str, port: u16| format!("http://{host}:{port}/");
    let (_, out, _) = curl(&["-x", &gh.proxy_url("http"), &get("good.test", port)]).await;
    assert_eq!(out, b"ok");
    for (url, rule) in [
        (get("blocked.test", port), "no-blocked"),
        (get("ads.good.test", port), "no-ads"),
        (get("good.test", port + 1), "default"),
    ] {
        let (_, out, _) = curl(&["-x", &gh.proxy_url("http"), "-i", &url]).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 403"), "{url}: {text}");
        assert!(
            text.contains(&format!("denied by rule {rule}")),
            "{url}: {text}"
        );
        assert!(
            text.contains("<html") || text.contains("<!DOCTYPE"),
            "deny page is HTML: {text}"
        );
    }
    assert_eq!(origin.seen().len(), 1);
}

#[tokio::test]
async fn proxy_authentication_with_users_and_groups() {
    let origin = Origin::fixed("welcome").await;
    let dir = tempfile::tempdir().expect("tmp");
    let users = users_file(
        dir.path(),
        &[("alice", "wonderland", "staff"), ("bob", "builder", "")],
    );
    let cfg = format!(
        r#"{listener}
[policy]
users_file = "{users}"
default = "deny"
[policy.listeners.http]
auth = true
[policy.failed_logins]
max_failures = 3
window = "1m"
[[policy.rules]]
name = "staff-only"
action = "allow"
groups = ["staff"]
dest_addrs = ["127.0.0.0/8"]
"#,
        listener = http_listener("http", ""),
        users = users.display()
    );
    let gh = Gatehouse::start(&cfg);
    let proxy = gh.proxy_url("http");
    let url = origin.url("/");
    // No credentials: 407 with a Basic challenge.
    let (_, out, _) = curl(&["-x", &proxy, "-i", &url]).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 407"), "{text}");
    assert!(
        text.contains("Proxy-Authenticate: Basic realm=\"gatehouse\""),
        "{text}"
    );
    // Right password, staff group: through; the credentials never reach the origin.
    let (_, out, _) = curl(&["-x", &proxy, "--proxy-user", "alice:wonderland", &url]).await;
    assert_eq!(out, b"welcome");
    assert!(origin.seen()[0]
        .headers
        .get("proxy-authorization")
        .is_none());
    let line = gh.wait_log(" 200 ");
    assert!(line.contains(" alice "), "user in the access log: {line}");
    // Authenticated but not staff: denied by the default.
    let (_, out, _) = curl(&["-x", &proxy, "-i", "--proxy-user", "bob:builder", &url]).await;
    assert!(
        status_line(&out).contains("403"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // Wrong passwords: 407 until the limit, then 429 for that address.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (_, out, _) = curl(&["-x", &proxy, "-i", "--proxy-user", "alice:wrong", &url]).await;
        statuses.push(status_line(&out));
    }
    assert!(statuses[0].contains("407"), "{statuses:?}");
    assert!(
        statuses.last().is_some_and(|s| s.contains("429")),
        "{statuses:?}"
    );
    // While blocked, even the right password is not checked.
    let (_, out, _) = curl(&["-x", &proxy, "-i", "--proxy-user", "alice:wonderland", &url]).await;
    assert!(
        status_line(&out).contains("429"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[tokio::test]
async fn connect_is_checked_by_the_same_rules() {
    let echo = echo_server().await;
    let cfg = format!(
        r#"{listener}
[policy]
default = "deny"
[[policy.rules]]
name = "no-connect-to-echo"
action = "deny"
protocols = ["connect"]
ports = [{port}]
[[policy.rules]]
name = "loopback"
action = "allow"
dest_addrs = ["127.0.0.0/8"]
"#,
        listener = http_listener("http", &format!("connect_ports = [{}]", echo.port())),
        port = echo.port()
    );
    let gh = Gatehouse::start(&cfg);
    let resp = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(gh.addr("http"))
            .await
            .expect("connect");
        s.write_all(
            format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("no-connect-to-echo"), "{resp}");
}

#[tokio::test]
async fn header_rewriting_and_the_anonymous_preset() {
    let origin = Origin::fixed("rewritten").await;
    let cfg = format!(
        r#"{listener}
[[policy.rules]]
name = "rewrite"
action = "allow"
dest_addrs = ["127.0.0.0/8"]
anonymous = true
request_headers = {{ set = {{ "X-Env" = "prod" }}, remove = ["Cookie"] }}
response_headers = {{ add = {{ "X-Filtered-By" = "gatehouse" }}, remove = ["Server"] }}
"#,
        listener = http_listener("http", "forwarded_for = true")
    );
    let gh = Gatehouse::start(&cfg);
    let (code, out, err) = curl(&[
        "-x",
        &gh.proxy_url("http"),
        "-i",
        "-H",
        "Cookie: session=1",
        "-H",
        "From: someone@example.com",
        "-H",
        "Referer: http://elsewhere.example/page",
        "-H",
        "X-Keep: yes",
        &origin.url("/"),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("X-Filtered-By: gatehouse"), "{text}");
    let seen = &origin.seen()[0];
    assert_eq!(seen.headers["x-env"], "prod");
    assert_eq!(seen.headers["x-keep"], "yes");
    for gone in [
        "cookie",
        "from",
        "referer",
        "x-forwarded-for",
        "forwarded",
        "via",
    ] {
        assert!(
            seen.headers.get(gone).is_none(),
            "{gone} reached the origin"
        );
    }
}

#[test]
fn open_proxy_guard_refuses_to_start() {
    // Bound to every address, no authentication, no client rule: an open proxy.
    let cfg = "[[listeners]]\nname = \"open\"\nkind = \"http\"\nlisten = \"0.0.0.0:0\"\n[policy]\ndefault = \"allow\"\n";
    let err = Gatehouse::try_start(cfg)
        .err()
        .expect("must refuse to start");
    assert!(err.contains("open"), "{err}");
    // Saying so explicitly is allowed.
    let ok = "[[listeners]]\nname = \"open\"\nkind = \"http\"\nlisten = \"0.0.0.0:0\"\n[policy]\ndefault = \"allow\"\n[policy.listeners.open]\nopen = true\n";
    let gh = Gatehouse::start(ok);
    assert!(gh.addr("open").ip().is_unspecified());
}
