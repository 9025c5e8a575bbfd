//! End-to-end: logins under attack. Parallel wrong passwords from one address are charged
//! before the hash is checked (never more checks than the allowance), hashing runs in a small
//! fixed pool so memory stays flat, a client-supplied user name cannot forge an access-log
//! line, and `gatehouse passwd` keeps the users file private and the password off the screen.
//!
//! Multi-threaded runtime: the log readers block their thread while requests run.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

/// A config with one HTTP and one SOCKS listener, both asking for a login from `users`.
fn config(users: &std::path::Path, max_failures: u32, extra: &str) -> String {
    format!(
        r#"{http}{socks}{ADMIN}{extra}
[policy]
users_file = "{users}"
[policy.listeners.http]
auth = true
[policy.listeners.s]
auth = true
[policy.failed_logins]
max_failures = {max_failures}
window = "1m"
[[policy.rules]]
name = "loopback"
action = "allow"
dest_addrs = ["127.0.0.0/8"]
"#,
        http = http_listener("http", ""),
        socks = socks_listener("s", ""),
        users = users.display()
    )
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

/// One proxied request with Basic credentials over a raw socket: the status code.
async fn http_login(proxy: SocketAddr, user: &str, password: &str) -> u16 {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
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
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

async fn verifications(gh: &Gatehouse) -> f64 {
    metric(gh.addr("admin"), "gatehouse_password_verifications_total")
        .await
        .expect("the verifications metric")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_passwords_over_http_are_charged_before_the_hash() {
    let dir = tempfile::tempdir().expect("tmp");
    let users = users_file(dir.path(), &[("alice", "wonderland", "")]);
    let gh = Gatehouse::start(&config(&users, 3, ""));
    let proxy = gh.addr("http");
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            tokio::spawn(async move { http_login(proxy, "alice", &format!("wrong{i}")).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("task"));
    }
    let checked = statuses.iter().filter(|s| **s == 407).count();
    assert!(checked <= 3, "{checked} passwords checked: {statuses:?}");
    assert!(
        statuses.iter().all(|s| [407, 429, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(
        verifications(&gh).await <= 3.0,
        "hash checks within the allowance"
    );
    // Blocked now: even the right password is refused without a check.
    assert_eq!(http_login(proxy, "alice", "wonderland").await, 429);
    assert!(verifications(&gh).await <= 3.0);
    assert!(
        metric(gh.addr("admin"), "gatehouse_login_failures_total")
            .await
            .expect("failures metric")
            >= 40.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_passwords_over_socks_are_charged_before_the_hash() {
    let dir = tempfile::tempdir().expect("tmp");
    let users = users_file(dir.path(), &[("alice", "wonderland", "")]);
    let gh = Gatehouse::start(&config(&users, 3, ""));
    let proxy = gh.addr("s");
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            tokio::spawn(async move {
                socks_login(proxy, b"alice", format!("wrong{i}").as_bytes()).await
            })
        })
        .collect();
    for t in tasks {
        assert_ne!(t.await.expect("task"), 0, "a wrong password never succeeds");
    }
    let mut failed = 0;
    for _ in 0..40 {
        let line = gh.next_log_line();
        failed += usize::from(line.contains("auth_failed"));
    }
    assert!(failed <= 3, "{failed} passwords checked");
    assert!(
        verifications(&gh).await <= 3.0,
        "hash checks within the allowance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_right_password_gives_its_reservation_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let users = users_file(dir.path(), &[("alice", "wonderland", "")]);
    let gh = Gatehouse::start(&config(&users, 2, ""));
    let proxy = gh.addr("s");
    // Right logins (the first is checked, the rest come from the cache) never use up the
    // allowance.
    for _ in 0..4 {
        assert_eq!(socks_login(proxy, b"alice", b"wonderland").await, 0);
    }
    assert_ne!(socks_login(proxy, b"alice", b"wrong").await, 0);
    assert_ne!(socks_login(proxy, b"alice", b"wrong2").await, 0);
    assert_eq!(
        verifications(&gh).await,
        3.0,
        "one success, two failures checked"
    );
    // The allowance (2) is used up by the two failures alone.
    assert_ne!(socks_login(proxy, b"alice", b"wonderland").await, 0);
}

/// glibc gives each new thread its own malloc arena, and argon2 takes its memory cost (19 MiB
/// with the defaults `gatehouse passwd` writes) per check: hashing on a growing set of blocking
/// threads kept hundreds of MiB. A fixed pool keeps it to a few buffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_under_200_parallel_wrong_guesses() {
    let dir = tempfile::tempdir().expect("tmp");
    let users = users_file(dir.path(), &[("alice", "wonderland", "")]);
    // No limiter in the way: every guess reaches the hashing pool (or its full queue).
    let gh = Gatehouse::start(&config(&users, 1000, ""));
    let proxy = gh.addr("s");
    // Warm up: one check allocates the pool's buffers.
    assert_ne!(socks_login(proxy, b"alice", b"warm").await, 0);
    let before = gh.rss_kib();
    let mut peak = before;
    for round in 0..2 {
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                tokio::spawn(async move {
                    socks_login(proxy, b"alice", format!("guess{round}-{i}").as_bytes()).await
                })
            })
            .collect();
        for t in tasks {
            assert_ne!(t.await.expect("task"), 0);
            peak = peak.max(gh.rss_kib());
        }
    }
    let after = gh.rss_kib();
    eprintln!("RSS before {before} KiB, peak {peak} KiB, after {after} KiB");
    // One 19 MiB buffer per hashing thread (one per core), plus room for the connections.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let allowed = cores * 20 * 1024 + 48 * 1024;
    assert!(
        peak < before + allowed && after < before + allowed,
        "RSS before {before} KiB, peak {peak} KiB, after {after} KiB (allowed +{allowed} KiB)"
    );
    let checked = verifications(&gh).await;
    assert!(checked >= 10.0, "the guesses were checked: {checked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_name_cannot_forge_an_access_log_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let users = users_file(dir.path(), &[("alice", "wonderland", "")]);
    let log = dir.path().join("access.log");
    let extra = format!("[access_log]\npath = \"{}\"\n", log.display());
    let gh = Gatehouse::start(&config(&users, 100, &extra));
    let forged = b"eve\n2026-01-01T00:00:00.000Z s 6.6.6.6:1 admin CONNECT bank:443 200 1 1";
    assert_ne!(socks_login(gh.addr("s"), forged, b"x").await, 0);
    // The operational log (stderr) quotes the name too.
    let logged = gh.wait_stderr("SOCKS login refused");
    assert!(logged.contains(r#"user="eve\n2026-01-01"#), "{logged}");
    assert_ne!(
        http_login(gh.addr("http"), "mallory\r\nX 1 2 \"q\"", "x").await,
        200
    );
    assert_eq!(socks_login(gh.addr("s"), b"alice", b"wonderland").await, 0);
    // Three sessions: wait for three lines (bounded), then read the file whole.
    let mut text = String::new();
    for _ in 0..200 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 3 && text.contains(" alice ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "one line per session:\n{text}");
    assert!(lines.iter().all(|l| l.split(' ').count() == 14), "{text}");
    assert!(
        text.contains(" eve\\x0a2026-01-01T00:00:00.000Z\\x20s\\x20"),
        "{text}"
    );
    assert!(
        text.contains(" mallory\\x0d\\x0aX\\x201\\x202\\x20\\x22q\\x22 "),
        "{text}"
    );
}

fn passwd(file: &std::path::Path, user: &str, stdin: &str) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(["passwd", user, "--file"])
        .arg(file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run passwd");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write password");
    child.wait_with_output().expect("wait")
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[test]
fn passwd_writes_the_users_file_private() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("users.txt");
    assert!(passwd(&file, "alice", "pw1\n").status.success());
    assert_eq!(mode(&file), 0o600, "a new file");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = passwd(&file, "bob", "pw2\n");
    assert!(out.status.success());
    assert_eq!(mode(&file), 0o600, "an updated file");
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(text.starts_with("alice:$argon2id$") && text.contains("\nbob:$argon2id$"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("readable by others"), "warned: {err}");
}

#[test]
fn check_and_start_warn_about_a_users_file_others_can_read() {
    let dir = tempfile::tempdir().expect("tmp");
    let users = users_file(dir.path(), &[("alice", "wonderland", "")]);
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let cfg_path = dir.path().join("g.toml");
    std::fs::write(&cfg_path, config(&users, 3, "")).expect("config");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg_path)
        .arg("check")
        .output()
        .expect("check");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("readable by others") && err.contains("chmod 600"),
        "{err}"
    );
    let gh = Gatehouse::start(&config(&users, 3, ""));
    drop(gh.wait_stderr("readable by others"));
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg_path)
        .arg("check")
        .output()
        .expect("check");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("readable by others"));
}

/// On a terminal the password is asked twice without echo. `script` gives the child a pty;
/// the password is typed only once the prompt shows (the terminal would echo it otherwise).
#[test]
fn passwd_on_a_terminal_asks_twice_without_echo() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no script(1)");
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("users.txt");
    let cmd = format!("{BIN} passwd carol --file {}", file.display());
    let mut child = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 256];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |needle: &str, count: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while String::from_utf8_lossy(&seen).matches(needle).count() < count {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(b) => seen.extend_from_slice(&b),
                Err(_) => panic!(
                    "no {needle:?} (x{count}) in {:?}",
                    String::from_utf8_lossy(&seen)
                ),
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    };
    use std::io::Write;
    wait_for("Password for carol:", 1);
    stdin.write_all(b"s3cret-typed\n").expect("type");
    wait_for("Again:", 1);
    stdin.write_all(b"s3cret-typed\n").expect("type");
    let shown = wait_for("written", 1);
    drop(stdin);
    assert!(child.wait().expect("wait").success());
    assert!(!shown.contains("s3cret-typed"), "echoed: {shown:?}");
    let text = std::fs::read_to_string(&file).expect("users file");
    assert!(text.starts_with("carol:$argon2id$"), "{text}");
    assert_eq!(mode(&file), 0o600);
}
