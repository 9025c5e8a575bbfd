//! systemd `Type=notify`: the real binary with `NOTIFY_SOCKET` pointing at a unix datagram
//! socket this test binds (no systemd needed) sends READY=1 once its listeners accept,
//! RELOADING=1 (with MONOTONIC_USEC) then READY=1 around a SIGHUP reload, and STOPPING=1 when
//! SIGTERM starts the drain.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::BIN;

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock
        .recv(&mut buf)
        .expect("a notification within the socket's read timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn kill(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}

#[test]
fn ready_reloading_and_stopping_reach_the_notify_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let config = dir.path().join("gatehouse.toml");
    let text = "[[listeners]]\nname = \"http\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n\
                [shutdown]\ndrain_timeout = \"5s\"\n";
    std::fs::write(&config, text).expect("write config");

    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("GATEHOUSE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gatehouse");
    let pid = child.id();
    let stderr = child.stderr.take().expect("stderr");

    // READY=1 comes after every listener is bound: the listener logged before it accepts.
    assert_eq!(recv(&sock), "READY=1\n");
    let mut addr = None;
    let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
    for line in lines.by_ref() {
        if let Some(rest) = line.split("addr=").nth(1) {
            addr = rest.split_whitespace().next().map(str::to_string);
        }
        if line.contains("all listeners ready") {
            break;
        }
    }
    let addr = addr.expect("the listener's address in the log");
    std::net::TcpStream::connect(&addr).expect("the listener accepts once READY=1 is sent");
    // Keep draining stderr so the process never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));

    // SIGHUP: RELOADING=1 with the monotonic time systemd >= 253 asks for, then READY=1.
    kill(pid, "HUP");
    let reloading = recv(&sock);
    let mut fields = reloading.lines();
    assert_eq!(fields.next(), Some("RELOADING=1"), "{reloading:?}");
    let usec = fields
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(usec.is_some_and(|u| u > 0), "{reloading:?}");
    assert_eq!(recv(&sock), "READY=1\n");

    // SIGTERM: STOPPING=1 when the drain starts, then a clean exit.
    kill(pid, "TERM");
    assert_eq!(recv(&sock), "STOPPING=1\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn an_unreachable_notify_socket_is_a_warning_not_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gatehouse.toml");
    let text = "[[listeners]]\nname = \"http\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n";
    std::fs::write(&config, text).expect("write config");
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", dir.path().join("nobody-listens.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gatehouse");
    let stderr = child.stderr.take().expect("stderr");
    // The failed send is logged as a warning after the listeners are ready, and the process
    // goes on serving.
    let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
    let warned = lines.by_ref().any(|l| l.contains("sd_notify:"));
    let running = child.try_wait().expect("wait").is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "no sd_notify warning");
    assert!(running, "gatehouse exited after the failed notification");
}
