//! End-to-end: LDAP as the user source, against a real slapd started by the harness
//! (`tests/common/ldap.rs`) and the real binary. Basic logins through the HTTP proxy and RFC
//! 1929 logins to SOCKS5 (curl, tokio-socks, raw bytes), groups from `memberOf` and from a
//! group search driving the rules, injection in user names, the directory going down and
//! coming back, the cache TTL after a password change, StartTLS and ldaps with a test CA.
//!
//! Multi-threaded runtime: the log readers block their thread while requests run.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::ldap::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bind as `uid={user},ou=people,dc=test`; groups from `memberOf`.
fn template_ldap(url: &str, extra: &str) -> String {
    format!(
        "[policy.ldap]\nurl = \"{url}\"\nbind_dn_template = \"uid={{user}},{PEOPLE}\"\n{extra}\n"
    )
}

/// Search as the service account, then bind; groups from a group search.
fn search_ldap(url: &str, extra: &str) -> String {
    format!(
        "[policy.ldap]\nurl = \"{url}\"\nbase = \"{PEOPLE}\"\nuser_filter = \"(uid={{user}})\"\n\
         bind_dn = \"{SERVICE_DN}\"\nbind_password = \"{SERVICE_PW}\"\n\
         group_base = \"{GROUPS}\"\ngroup_filter = \"(member={{dn}})\"\n{extra}\n"
    )
}

/// An HTTP and a SOCKS listener that require a login; only `staff` may reach loopback.
fn config(ldap: &str, max_failures: u32) -> String {
    format!(
        r#"{http}{socks}
[policy]
default = "deny"
[policy.listeners.http]
auth = true
[policy.listeners.s]
auth = true
[policy.failed_logins]
max_failures = {max_failures}
window = "1m"
[[policy.rules]]
name = "staff-loopback"
action = "allow"
groups = ["staff"]
dest_addrs = ["127.0.0.0/8"]
{ldap}"#,
        http = http_listener("http", ""),
        socks = socks_listener("s", ""),
    )
}

/// A GET through the HTTP proxy with `-U user:password`: the status code and curl's
/// headers output.
async fn get(gh: &Gatehouse, origin: &Origin, user: &str, password: &str) -> (u16, String) {
    let proxy = gh.proxy_url("http");
    let creds = format!("{user}:{password}");
    let (code, out, err) = curl(&[
        "-x",
        &proxy,
        "-U",
        &creds,
        "-D",
        "-",
        "-o",
        "/dev/null",
        &origin.url("/"),
    ])
    .await;
    assert_eq!(code, 0, "curl: {err}");
    let head = String::from_utf8_lossy(&out).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head)
}

/// One proxied request with raw Basic credentials (any bytes): the status code.
async fn raw_basic(proxy: SocketAddr, creds: &[u8]) -> u16 {
    let token = base64::engine::general_purpose::STANDARD.encode(creds);
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    let req = format!(
        "GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\
         Proxy-Authorization: Basic {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("request");
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut head))
        .await
        .expect("status within 30s")
        .expect("status line");
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// RFC 1929 login over raw bytes: the sub-negotiation status (0 is success).
async fn socks_login(proxy: SocketAddr, user: &[u8], password: &[u8]) -> u8 {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(&[5, 1, 2]).await.expect("greeting");
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await.expect("method");
    assert_eq!(m, [5, 2], "username/password chosen");
    let mut msg = vec![1, user.len() as u8];
    msg.extend_from_slice(user);
    msg.push(password.len() as u8);
    msg.extend_from_slice(password);
    s.write_all(&msg).await.expect("credentials");
    let mut st = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut st))
        .await
        .expect("status within 30s")
        .expect("status");
    st[1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_logins_bind_as_the_user_and_groups_from_member_of_drive_the_rules() {
    let slapd = Slapd::start();
    let origin = Origin::fixed("hello").await;
    let gh = Gatehouse::start(&config(&template_ldap(&slapd.url(), ""), 100));

    let (status, _) = get(&gh, &origin, "alice", "alice-pw").await;
    assert_eq!(status, 200, "alice is staff");
    let line = gh.wait_log("alice");
    assert_eq!(
        log_field(&line, 4),
        "alice",
        "the access log's user: {line}"
    );
    assert_eq!(log_field(&line, 7), "200", "{line}");
    assert_eq!(log_field(&line, 14), "staff-loopback", "{line}");

    let (status, head) = get(&gh, &origin, "alice", "wrong").await;
    assert_eq!(status, 407, "wrong password: {head}");
    assert!(head.contains("Proxy-Authenticate: Basic"), "{head}");
    assert_eq!(
        get(&gh, &origin, "nobody", "alice-pw").await.0,
        407,
        "unknown user"
    );
    assert_eq!(
        get(&gh, &origin, "alice", "").await.0,
        407,
        "empty password (anonymous bind)"
    );
    // bob logs in (admins), but only staff may go: the rule, not the login, refuses him.
    assert_eq!(get(&gh, &origin, "bob", "bob-pw").await.0, 403);
    let line = gh.wait_log(" bob ");
    assert_eq!(log_field(&line, 7), "403", "{line}");
    // The directory's spelling is the policy's user: ALICE is alice for rules and the log.
    assert_eq!(get(&gh, &origin, "ALICE", "alice-pw").await.0, 200);
    let line = gh.wait_log("alice");
    assert_eq!(log_field(&line, 4), "alice", "{line}");
    // A name that tries to change the DN binds as nobody.
    let moved = format!("alice,{PEOPLE}");
    assert_eq!(get(&gh, &origin, &moved, "alice-pw").await.0, 407);
    assert_eq!(
        origin.seen().len(),
        2,
        "only alice's two requests reached the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_logins_search_then_bind_with_a_group_search() {
    let slapd = Slapd::start();
    let echo = tcp_echo().await;
    let origin = Origin::fixed("via socks").await;
    let gh = Gatehouse::start(&config(&search_ldap(&slapd.url(), ""), 100));
    let proxy = gh.addr("s");

    // tokio-socks: alice (staff) reaches the echo server and it echoes.
    let mut s =
        tokio_socks::tcp::Socks5Stream::connect_with_password(proxy, echo, "alice", "alice-pw")
            .await
            .expect("alice logs in and connects");
    s.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"ping");
    drop(s);
    let line = gh.wait_log("SOCKS5-CONNECT");
    assert_eq!(log_field(&line, 4), "alice", "{line}");

    // Wrong password: authentication failure; bob: logged in, then refused by the rules.
    let wrong =
        tokio_socks::tcp::Socks5Stream::connect_with_password(proxy, echo, "alice", "nope").await;
    assert!(wrong.is_err(), "wrong password refused");
    assert_eq!(socks_login(proxy, b"alice", b"nope").await, 1);
    assert_eq!(socks_login(proxy, b"nobody", b"x").await, 1, "unknown user");
    assert_eq!(
        socks_login(proxy, b"bob", b"bob-pw").await,
        0,
        "bob's password is right"
    );
    let bob =
        tokio_socks::tcp::Socks5Stream::connect_with_password(proxy, echo, "bob", "bob-pw").await;
    assert!(
        matches!(bob, Err(tokio_socks::Error::ConnectionNotAllowedByRuleset)),
        "bob is not staff: {bob:?}"
    );

    // curl --socks5 with -U.
    let creds = "alice:alice-pw";
    let (code, body, err) = curl(&[
        "--socks5",
        &proxy.to_string(),
        "-U",
        creds,
        &origin.url("/"),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(body, b"via socks");
    let (code, _, _) = curl(&[
        "--socks5",
        &proxy.to_string(),
        "-U",
        "alice:bad",
        &origin.url("/"),
    ])
    .await;
    assert_ne!(code, 0, "curl refused with a wrong password");

    // The HTTP door takes the same directory.
    assert_eq!(get(&gh, &origin, "alice", "alice-pw").await.0, 200);
    assert_eq!(get(&gh, &origin, "bob", "bob-pw").await.0, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_injection_in_user_names_is_refused_without_matching() {
    let slapd = Slapd::start();
    let origin = Origin::fixed("x").await;
    // A search that an unescaped name could widen: `al*` would find alice alone, and her
    // password would then bind.
    let gh = Gatehouse::start(&config(&search_ldap(&slapd.url(), ""), 1000));
    let http = gh.addr("http");
    let socks = gh.addr("s");
    let names: [&[u8]; 9] = [
        b"*",
        b")(",
        b"al*",
        b"alice)(uid=*",
        b"*)(uid=*))(|(uid=*",
        b"alice)",
        b"alice\\2a",
        b"alice\0",
        b"al\0ice",
    ];
    for name in names {
        for pw in [&b"alice-pw"[..], b"*"] {
            let mut creds = name.to_vec();
            creds.push(b':');
            creds.extend_from_slice(pw);
            let shown = String::from_utf8_lossy(&creds);
            assert_eq!(raw_basic(http, &creds).await, 407, "HTTP {shown:?}");
            assert_eq!(socks_login(socks, name, pw).await, 1, "SOCKS {shown:?}");
        }
    }
    // The right name still works (nothing above blocked or poisoned anything).
    assert_eq!(get(&gh, &origin, "alice", "alice-pw").await.0, 200);
    assert_eq!(socks_login(socks, b"alice", b"alice-pw").await, 0);

    // The same with bind-as-the-user: names that would change the DN bind as nobody.
    let gh = Gatehouse::start(&config(&template_ldap(&slapd.url(), ""), 1000));
    let http = gh.addr("http");
    for name in [
        &b"*"[..],
        b"alice,ou=people",
        b"alice+cn=Alice",
        b"alice\0",
        b"alice\\",
    ] {
        let mut creds = name.to_vec();
        creds.extend_from_slice(b":alice-pw");
        assert_eq!(
            raw_basic(http, &creds).await,
            407,
            "{:?}",
            String::from_utf8_lossy(name)
        );
    }
    assert_eq!(get(&gh, &origin, "alice", "alice-pw").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_that_is_down_refuses_logins_cleanly_and_recovers() {
    let mut slapd = Slapd::start();
    let origin = Origin::fixed("up").await;
    // No cache: every login asks the directory. Two failures would block the address, so
    // the refusals below prove that "down" is not charged as a wrong password.
    let ldap = template_ldap(&slapd.url(), "cache_ttl = \"0s\"\ntimeout = \"2s\"");
    let gh = Gatehouse::start(&config(&ldap, 2));
    let socks = gh.addr("s");
    assert_eq!(get(&gh, &origin, "alice", "alice-pw").await.0, 200);

    slapd.stop();
    for _ in 0..4 {
        let (status, head) = get(&gh, &origin, "alice", "alice-pw").await;
        assert_eq!(status, 503, "{head}");
        assert!(
            head.contains("Proxy-Status: gatehouse; error=proxy_internal_error"),
            "{head}"
        );
        assert!(head.contains("Retry-After:"), "{head}");
        assert_eq!(
            socks_login(socks, b"alice", b"alice-pw").await,
            1,
            "SOCKS failure"
        );
    }
    // Never an open door: a wrong password is not let in either.
    assert_eq!(get(&gh, &origin, "alice", "wrong").await.0, 503);
    gh.wait_stderr("user directory unavailable");
    let line = gh.wait_log("login_unavailable");
    assert_eq!(log_field(&line, 4), "alice", "{line}");
    assert_eq!(
        origin.seen().len(),
        1,
        "nothing got through while it was down"
    );

    slapd.restart();
    assert_eq!(get(&gh, &origin, "alice", "alice-pw").await.0, 200, "back");
    gh.wait_stderr("user directory reachable again");
    assert_eq!(socks_login(socks, b"alice", b"alice-pw").await, 0);
    // Only now do wrong passwords count: two are allowed, the third address attempt is 429.
    assert_eq!(get(&gh, &origin, "alice", "wrong").await.0, 407);
    assert_eq!(get(&gh, &origin, "alice", "wrong").await.0, 407);
    assert_eq!(
        get(&gh, &origin, "alice", "wrong").await.0,
        429,
        "the limiter applies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_takes_effect_after_the_cache_ttl() {
    let slapd = Slapd::start();
    let origin = Origin::fixed("x").await;
    let ttl = Duration::from_secs(3);
    let ldap = template_ldap(
        &slapd.url(),
        "cache_ttl = \"3s\"\nnegative_cache_ttl = \"0s\"",
    );
    let gh = Gatehouse::start(&config(&ldap, 1000));
    let cached_at = Instant::now();
    assert_eq!(get(&gh, &origin, "alice", "alice-pw").await.0, 200);
    slapd.set_password("alice", "new-pw");
    // The new password works at once (another password is another cache key), a wrong one
    // is never served from the cache.
    assert_eq!(get(&gh, &origin, "alice", "new-pw").await.0, 200);
    assert_eq!(get(&gh, &origin, "alice", "wrong").await.0, 407);
    if cached_at.elapsed() < ttl {
        // Within the TTL the old password is still trusted (the documented cost of a cache).
        let still = get(&gh, &origin, "alice", "alice-pw").await.0;
        assert!(
            still == 200 || cached_at.elapsed() >= ttl,
            "old password within the TTL: {still}"
        );
    }
    // After the TTL the old password is asked again, and refused.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = get(&gh, &origin, "alice", "alice-pw").await.0;
        if status == 407 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            cached_at.elapsed() < ttl + Duration::from_secs(2),
            "the old password still works {:?} after it was cached",
            cached_at.elapsed()
        );
        assert!(Instant::now() < deadline, "bounded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(cached_at.elapsed() >= ttl, "refused only after the TTL");
    assert_eq!(get(&gh, &origin, "alice", "new-pw").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_and_ldaps_verify_the_directory_with_the_configured_ca() {
    let slapd = Slapd::start();
    let origin = Origin::fixed("x").await;
    let ca = slapd.ca_file.display().to_string();
    for ldap in [
        template_ldap(&slapd.ldaps_url(), &format!("ca_file = \"{ca}\"")),
        template_ldap(
            &slapd.url(),
            &format!("starttls = true\nca_file = \"{ca}\""),
        ),
        search_ldap(&slapd.ldaps_url(), &format!("ca_file = \"{ca}\"")),
    ] {
        let gh = Gatehouse::start(&config(&ldap, 100));
        assert_eq!(
            get(&gh, &origin, "alice", "alice-pw").await.0,
            200,
            "{ldap}"
        );
        assert_eq!(get(&gh, &origin, "alice", "wrong").await.0, 407, "{ldap}");
        assert_eq!(get(&gh, &origin, "bob", "bob-pw").await.0, 403, "{ldap}");
    }
    // Without the test CA the directory's certificate is not trusted: no login, 503.
    for ldap in [
        template_ldap(&slapd.ldaps_url(), ""),
        template_ldap(&slapd.url(), "starttls = true"),
    ] {
        let gh = Gatehouse::start(&config(&ldap, 100));
        assert_eq!(
            get(&gh, &origin, "alice", "alice-pw").await.0,
            503,
            "{ldap}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_problems_are_reported_with_their_keys() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("g.toml");
    let bad = format!(
        "{}[policy.listeners.http]\nauth = true\n[policy.ldap]\nurl = \"http://x\"\n\
         starttls = true\nca_file = \"/nonexistent/ca.pem\"\n",
        http_listener("http", "")
    );
    std::fs::write(&path, bad).expect("write");
    let out = std::process::Command::new(BIN)
        .arg("check")
        .arg(&path)
        .output()
        .expect("check runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("policy.ldap.url"), "{err}");
    assert!(err.contains("bind_dn_template"), "{err}");
}

/// The Kerberos side's entry point: a user's groups from the directory, without a password
/// (as the service account).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_of_a_user_proven_elsewhere() {
    use gatehouse::policy::config::PolicyConfig;
    use gatehouse::policy::ldap::Directory;
    let slapd = Slapd::start();
    for ldap in [
        search_ldap(&slapd.url(), ""),
        format!(
            "{}group_map = {{ \"cn=admins,{GROUPS}\" = \"ops\" }}\n",
            template_ldap(
                &slapd.url(),
                &format!("bind_dn = \"{SERVICE_DN}\"\nbind_password = \"{SERVICE_PW}\"")
            )
        ),
    ] {
        let cfg = PolicyConfig::from_toml(&ldap, &[]).expect("config");
        let d = Directory::new(cfg.ldap.as_ref().expect("ldap")).expect("directory");
        let alice = d.groups_of("alice").await.expect("answer").expect("alice");
        assert_eq!(
            (alice.name.as_str(), alice.groups.clone()),
            ("alice", vec!["staff".to_string()])
        );
        let bob = d.groups_of("BOB").await.expect("answer").expect("bob");
        assert_eq!(bob.name, "bob", "the directory's spelling");
        assert!(
            bob.groups == ["admins"] || bob.groups == ["ops"],
            "{:?}",
            bob.groups
        );
        assert_eq!(d.groups_of("nobody").await, Ok(None));
        assert_eq!(d.groups_of("*").await, Ok(None), "escaped: matches nobody");
        assert_eq!(d.groups_of("a\0").await, Ok(None));
    }
}

/// A directory that accepts connections and never answers: each login gives up after
/// `timeout` (503), and beyond `max_connections` + `max_waiting` logins are refused at once
/// (429), so a slow directory cannot pile up work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_directory_costs_bounded_time_and_work() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("ldap://{}", silent.local_addr().expect("addr"));
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::channel(16);
    let hold = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            kept.push(s);
            let _ = accepted_tx.send(()).await;
        }
    });
    let ldap = template_ldap(
        &url,
        "timeout = \"2s\"\nmax_connections = 1\nmax_waiting = 0",
    );
    let gh = Gatehouse::start(&config(&ldap, 100));
    let origin = Origin::fixed("x").await;
    let started = Instant::now();
    let first = {
        let proxy = gh.addr("http");
        tokio::spawn(async move { raw_basic(proxy, b"alice:alice-pw").await })
    };
    accepted
        .recv()
        .await
        .expect("the first login reached the directory");
    let (status, head) = get(&gh, &origin, "bob", "bob-pw").await;
    assert_eq!(status, 429, "no slot and no room to wait: {head}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once"
    );
    assert_eq!(
        first.await.expect("task"),
        503,
        "the silent directory timed out"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "bounded by the timeout: {took:?}"
    );
    hold.abort();
}

/// Idle connections are reused (one connection for many logins, never the previous user's
/// bind state), and a stale one (the server side gone) is replaced without failing the login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_connections_are_reused_and_stale_ones_replaced() {
    use gatehouse::policy::config::PolicyConfig;
    use gatehouse::policy::ldap::Directory;
    use gatehouse::policy::Secret;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let slapd = Slapd::start();
    // A counting TCP relay in front of slapd; `cut` closes every relayed connection.
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let relay_addr = relay.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let cut = Arc::new(tokio::sync::Notify::new());
    let upstream = format!("127.0.0.1:{}", slapd.port);
    let (count, cut2) = (Arc::clone(&accepted), Arc::clone(&cut));
    let relay_task = tokio::spawn(async move {
        while let Ok((mut client, _)) = relay.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let upstream = upstream.clone();
            let cut = Arc::clone(&cut2);
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = cut.notified() => {}
                }
            });
        }
    });
    let toml = template_ldap(
        &format!("ldap://{relay_addr}"),
        "cache_ttl = \"0s\"\nnegative_cache_ttl = \"0s\"\nmax_connections = 1",
    );
    let cfg = PolicyConfig::from_toml(&toml, &[]).expect("config");
    let d = Directory::new(cfg.ldap.as_ref().expect("ldap")).expect("directory");
    let login = |name: &'static str, pw: &'static str| {
        let d = &d;
        async move { d.log_in(name, &Secret::new(pw)).await.expect("an answer") }
    };
    let alice = login("alice", "alice-pw").await.expect("alice");
    assert_eq!(alice.groups, ["staff"]);
    let bob = login("bob", "bob-pw").await.expect("bob");
    assert_eq!(
        (bob.name.as_str(), bob.groups.clone()),
        ("bob", vec!["admins".to_string()])
    );
    assert_eq!(login("alice", "wrong").await, None);
    assert_eq!(
        login("bob", "alice-pw").await,
        None,
        "alice's bind state is not bob's"
    );
    let again = login("bob", "bob-pw").await.expect("bob again");
    assert_eq!(again.groups, ["admins"]);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection for five logins"
    );

    cut.notify_waiters();
    let after = login("alice", "alice-pw")
        .await
        .expect("alice after the cut");
    assert_eq!(after.groups, ["staff"]);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the stale connection was replaced"
    );
    relay_task.abort();
}

/// `gatehouse check` passes a search-then-bind config and warns about a service password file
/// others can read.
#[test]
fn check_warns_about_a_readable_service_password_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    let pw = dir.path().join("ldap-password");
    std::fs::write(&pw, "proxy-pw\n").expect("write");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let path = dir.path().join("g.toml");
    let cfg = format!(
        "{}[policy.listeners.http]\nauth = true\n[policy.ldap]\nurl = \"ldap://127.0.0.1:9\"\n\
         base = \"{PEOPLE}\"\nbind_dn = \"{SERVICE_DN}\"\nbind_password_file = \"{}\"\n",
        http_listener("http", ""),
        pw.display()
    );
    std::fs::write(&path, cfg).expect("write");
    let check = || {
        let out = std::process::Command::new(BIN)
            .arg("check")
            .arg(&path)
            .output()
            .expect("check runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = check();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("policy.ldap.bind_password_file") && err.contains("readable by others"),
        "{err}"
    );
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (code, err) = check();
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("readable by others"), "{err}");
}
