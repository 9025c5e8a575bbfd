//! Operating the proxy: `gatehouse check` runs every start-up check, SIGUSR1/SIGUSR2, the
//! admin token, /metrics content negotiation, and SOCKS UDP reply filtering.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::UdpSocket;

/// Runs `gatehouse ARGS --config <text written to dir>`: (exit code, stdout, stderr).
fn run_with(dir: &Path, args: &[&str], text: &str) -> (Option<i32>, String, String) {
    let path = dir.join("gatehouse.toml");
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(&path)
        .env("GATEHOUSE_LOG", "info")
        .output()
        .expect("run gatehouse");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_exits_2_with_the_key_path_of_every_start_up_problem() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    std::fs::write(d.join("cert.pem"), cert.cert.pem()).expect("write cert");
    std::fs::write(d.join("bad-users"), "alice-without-a-hash\n").expect("write users");
    let dd = d.display();
    let socks_tls = |cert: &str, key: &str| {
        socks_listener(
            "s",
            &format!("tls = {{ cert = \"{dd}/{cert}\", key = \"{dd}/{key}\" }}"),
        )
    };
    let open = "[policy.listeners.h]\nopen = true\n";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "open proxy",
            "[[listeners]]\nname = \"h\"\nkind = \"http\"\nlisten = \"0.0.0.0:0\"\n".into(),
            "line 4: listeners[0].listen: listener \"h\" on 0.0.0.0 would be an open proxy",
        ),
        (
            "missing users file",
            format!(
                "{}[policy]\nusers_file = \"{dd}/no-such-users\"\n",
                http_listener("h", "")
            ),
            "line 7: policy.users_file: cannot read",
        ),
        (
            "bad users file",
            format!(
                "{}[policy]\nusers_file = \"{dd}/bad-users\"\n",
                http_listener("h", "")
            ),
            "line 7: policy.users_file: users file",
        ),
        (
            "missing deny page",
            format!(
                "{}[policy]\ndeny_page = \"{dd}/no-deny.html\"\n",
                http_listener("h", "")
            ),
            "line 7: policy.deny_page: cannot read deny page",
        ),
        (
            "missing TLS cert",
            socks_tls("no-cert.pem", "no-key.pem"),
            "line 5: listeners[0].tls.cert: cannot read",
        ),
        (
            "missing TLS key",
            socks_tls("cert.pem", "no-key.pem"),
            "line 5: listeners[0].tls.key: cannot read",
        ),
        (
            "access log directory missing",
            format!(
                "{}[access_log]\npath = \"{dd}/no-dir/access.log\"\n",
                http_listener("h", "")
            ),
            "line 7: access_log.path: cannot open",
        ),
        (
            "PAC on 0.0.0.0 without pac_host",
            format!(
                "[[listeners]]\nname = \"h\"\nkind = \"http\"\nlisten = \"0.0.0.0:0\"\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n{open}"
            ),
            "line 5: admin.pac_host: required",
        ),
    ];
    for (what, text, want) in &cases {
        let (code, _, err) = run_with(d, &["check"], text);
        assert_eq!(code, Some(2), "{what}: {err}");
        assert!(err.contains(want), "{what}: missing {want:?} in\n{err}");
        // Starting it fails the same way, before anything is bound.
        let (code, _, err) = run_with(d, &[], text);
        assert_eq!(code, Some(2), "{what} at start: {err}");
        assert!(
            err.contains(want),
            "{what} at start: missing {want:?} in\n{err}"
        );
    }
    let (code, out, err) = run_with(d, &["check"], &socks_listener("s", ""));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn check_warns_about_a_world_readable_token_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tmp");
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").expect("write token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let text = format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
        http_listener("h", ""),
        token.display()
    );
    let (code, _, err) = run_with(dir.path(), &["check"], &text);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning: line 8: admin.token_file") && err.contains("readable by every user"),
        "{err}"
    );
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (code, _, err) = run_with(dir.path(), &["check"], &text);
    assert_eq!(code, Some(0), "{err}");
    // Other warnings (e.g. the open-files fit) may stand; none about the token file.
    assert!(!err.contains("token_file"), "{err}");
    std::fs::remove_file(&token).expect("rm");
    let (code, _, err) = run_with(dir.path(), &["check"], &text);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("admin.token_file: cannot read"), "{err}");
}

/// Polls `path` (at most 10 s) until it has `n` lines; returns them.
fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_access_log_and_sigusr2_is_ignored() {
    let origin = Origin::fixed("x").await;
    let logs = tempfile::tempdir().expect("tmp");
    let log = logs.path().join("access.log");
    let mut gh = Gatehouse::start(&format!(
        "{}[access_log]\npath = \"{}\"\n",
        http_listener("http", ""),
        log.display()
    ));
    let get = |path: &'static str| {
        let proxy = gh.proxy_url("http");
        let url = origin.url(path);
        async move {
            let (code, _, err) = curl(&["-x", &proxy, &url]).await;
            assert_eq!(code, 0, "{err}");
        }
    };
    get("/before").await;
    let before = wait_lines(&log, 1);
    assert_eq!(before.len(), 1, "{before:?}");
    // logrotate: move the file away, then SIGUSR1.
    let rotated = logs.path().join("access.log.1");
    std::fs::rename(&log, &rotated).expect("mv");
    gh.signal("USR1");
    gh.wait_stderr("access log reopened");
    get("/after").await;
    let after = wait_lines(&log, 1);
    assert_eq!(after.len(), 1, "a new file at the original path: {after:?}");
    assert!(after[0].contains("/after"), "{after:?}");
    let old = std::fs::read_to_string(&rotated).expect("rotated file");
    assert!(old.contains("/before") && !old.contains("/after"), "{old}");

    gh.signal("USR2");
    gh.wait_stderr("SIGUSR2: ignored");
    get("/still").await;
    assert_eq!(wait_lines(&log, 2).len(), 2);
    assert!(
        gh.wait_exit(Duration::from_millis(100)).is_none(),
        "SIGUSR2 must not end the process"
    );
}

const TOKEN: &str = "correct-horse-battery";

/// POST /cache/purge with the given extra headers: (status, body).
async fn purge(admin: SocketAddr, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = reqwest::Client::new().post(format!(
        "http://{admin}/cache/purge?url=http%3A%2F%2Fexample.test%2F"
    ));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("purge request");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_purge_needs_the_admin_token_and_is_off_without_one() {
    let listener = http_listener("http", "cache = true");
    let gh = Gatehouse::start(&format!(
        "{listener}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
    ));
    let admin = gh.addr("admin");
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(purge(admin, &[]).await.0, 401, "no token");
    assert_eq!(
        purge(admin, &[("Authorization", "Bearer wrong")]).await.0,
        401,
        "wrong token"
    );
    assert_eq!(
        purge(admin, &[("Authorization", &bearer)]).await,
        (200, "0\n".to_string()),
        "right token"
    );
    // A web page making the admin's browser post: refused even with a token.
    assert_eq!(
        purge(
            admin,
            &[
                ("Authorization", &bearer),
                ("Origin", "http://evil.example")
            ]
        )
        .await
        .0,
        403
    );

    let off = Gatehouse::start(&format!("{listener}[admin]\nlisten = \"127.0.0.1:0\"\n"));
    let (status, body) = purge(off.addr("admin"), &[("Authorization", &bearer)]).await;
    assert_eq!(status, 403);
    assert!(body.contains("off"), "{body}");
}

/// GET /metrics with an optional Accept: (content type, body).
async fn scrape(admin: SocketAddr, accept: Option<&str>) -> (String, String) {
    let mut req = reqwest::Client::new().get(format!("http://{admin}/metrics"));
    if let Some(a) = accept {
        req = req.header("Accept", a);
    }
    let r = req.send().await.expect("scrape");
    assert_eq!(r.status().as_u16(), 200);
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (ctype, r.text().await.expect("body"))
}

/// A gatehouse with a caching listener and the admin listener, after one proxied request
/// (so every family has samples).
async fn scraped_gatehouse() -> (Gatehouse, Origin) {
    let origin = Origin::fixed("m").await;
    let gh = Gatehouse::start(&format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n",
        http_listener("http", "cache = true")
    ));
    let (code, _, err) = curl(&["-x", &gh.proxy_url("http"), &origin.url("/")]).await;
    assert_eq!(code, 0, "{err}");
    gh.wait_log("GET");
    (gh, origin)
}

/// The families of a 0.0.4 text exposition, each checked to have HELP and TYPE before its
/// samples; counters named with `_total`.
fn families(text: &str) -> Vec<String> {
    let mut helped = Vec::new();
    let mut typed: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(!help.trim().is_empty(), "empty HELP: {line}");
            helped.push(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                helped.last().map(String::as_str) == Some(name),
                "TYPE without HELP: {line}"
            );
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter without _total: {line}");
            }
            typed.push((name.to_string(), kind.to_string()));
        } else if !line.is_empty() {
            assert!(!line.starts_with('#'), "unexpected comment: {line}");
            let sample = line.split(['{', ' ']).next().unwrap_or("");
            let (family, kind) = typed.last().expect("a sample before any TYPE");
            let ok = sample == family
                || (kind == "histogram"
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| sample == format!("{family}{s}")));
            assert!(ok, "sample {sample} outside its family {family}");
        }
    }
    typed.into_iter().map(|(n, _)| n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_negotiate_prometheus_text_or_openmetrics() {
    let (gh, _origin) = scraped_gatehouse().await;
    let admin = gh.addr("admin");
    for accept in [None, Some("text/plain"), Some("*/*")] {
        let (ctype, text) = scrape(admin, accept).await;
        assert_eq!(
            ctype, "text/plain; version=0.0.4; charset=utf-8",
            "{accept:?}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        let names = families(&text);
        assert!(names.len() >= 17, "{names:?}");
        // Every metric is documented in the README.
        let readme = include_str!("../README.md");
        for name in &names {
            let base = name.strip_suffix("_total").unwrap_or(name);
            assert!(readme.contains(base), "{name} is not listed in the README");
        }
        for want in [
            "gatehouse_requests_total{listener=\"http\",class=\"2xx\"} 1",
            "gatehouse_cache_misses_total 1",
            "gatehouse_cache_entries{tier=\"memory\"}",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
    let (ctype, text) = scrape(
        admin,
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    )
    .await;
    assert_eq!(
        ctype,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("# TYPE gatehouse_requests counter\n"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE gatehouse_cache_hits counter\n"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs promtool (apt-get install prometheus); run with --ignored"]
async fn promtool_accepts_the_metrics() {
    let (gh, _origin) = scraped_gatehouse().await;
    let (_, text) = scrape(gh.addr("admin"), Some("text/plain")).await;
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool on PATH");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(text.as_bytes()).await.expect("write");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("promtool within 30s")
        .expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn recv_payload(sock: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 65536];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf))
        .await
        .expect("a datagram within 10s")
        .expect("recv");
    buf[10..n].to_vec()
}

/// The client sends to a peer on 127.0.0.1; a stranger on 127.0.0.2 (never sent to) then
/// writes to the association's outbound socket, then the peer does. Returns the payloads
/// the client gets, up to and including the peer's.
async fn replies_seen(filter: &str) -> Vec<Vec<u8>> {
    let gh = Gatehouse::start(&socks_listener("s", filter));
    let (_control, relay) = socks5_associate(gh.addr("s")).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    client.connect(relay).await.expect("connect");
    let peer = UdpSocket::bind("127.0.0.1:0").await.expect("bind peer");
    let peer_addr = peer.local_addr().expect("addr");
    client
        .send(&socks5_datagram(peer_addr, b"hello"))
        .await
        .expect("send");
    let mut buf = [0u8; 64];
    let (n, outbound) = tokio::time::timeout(Duration::from_secs(10), peer.recv_from(&mut buf))
        .await
        .expect("relayed within 10s")
        .expect("recv");
    assert_eq!(&buf[..n], b"hello");
    let outbound = SocketAddr::from(([127, 0, 0, 1], outbound.port()));
    let stranger = UdpSocket::bind("127.0.0.2:0").await.expect("bind stranger");
    stranger.send_to(b"stranger", outbound).await.expect("send");
    peer.send_to(b"peer", outbound).await.expect("send");
    let mut seen = Vec::new();
    loop {
        let p = recv_payload(&client).await;
        let done = p == b"peer";
        seen.push(p);
        if done || seen.len() > 3 {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_replies_only_from_addresses_the_client_sent_to() {
    assert_eq!(replies_seen("").await, [b"peer".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_filter_any_passes_every_sender() {
    assert_eq!(
        replies_seen("udp_filter = \"any\"").await,
        [b"stranger".to_vec(), b"peer".to_vec()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_association_caches_name_lookups() {
    use std::sync::atomic::Ordering;
    let echo = UdpEcho::start("127.0.0.1:0").await;
    // TTL 0: the resolver's own cache keeps nothing, so every lookup reaches this server.
    let dns = Dns::start(&[("echo.test", "127.0.0.1".parse().expect("ip"))], 0).await;
    let gh = Gatehouse::start(&format!("{}{}", socks_listener("s", ""), dns.config()));
    let (_control, relay) = socks5_associate(gh.addr("s")).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    client.connect(relay).await.expect("connect");
    let to_name = |payload: &[u8]| {
        [
            &[0, 0, 0, 3, 9][..],
            b"echo.test",
            &echo.addr.port().to_be_bytes(),
            payload,
        ]
        .concat()
    };
    client.send(&to_name(b"one")).await.expect("send");
    assert_eq!(recv_payload(&client).await, b"one");
    let first = dns.queries.load(Ordering::SeqCst);
    assert!(first > 0, "the name was looked up");
    for p in [&b"two"[..], b"three"] {
        client.send(&to_name(p)).await.expect("send");
        assert_eq!(recv_payload(&client).await, p);
    }
    assert_eq!(
        dns.queries.load(Ordering::SeqCst),
        first,
        "later datagrams to the name use the association's cache"
    );
}
