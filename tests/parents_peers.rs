//! Chaining through parents nobody on the project wrote: Dante as the SOCKS5 parent, Squid
//! as the HTTP parent. Run only with `GATEHOUSE_PEER_TESTS=1` (they need `danted` and
//! `squid` installed: `apt-get install -y dante-server squid`); when set, a missing binary is
//! a failure, not a skip.
//!
//! Both are started on loopback with a port picked by binding port 0 first (neither can
//! report a port it chose itself), and are ready when their log says so.

mod common;
mod parents_util;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use gatehouse::connector::Host;
use gatehouse::policy::config::ParentKind;
use gatehouse::upstream::{connect_route, connect_via, Direct, Mode, ParentError, RouteUsed};
use parents_util::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(5);

fn enabled() -> bool {
    let on = std::env::var("GATEHOUSE_PEER_TESTS").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("skipped: set GATEHOUSE_PEER_TESTS=1 to run against Dante and Squid");
    }
    on
}

/// A peer process, stopped with SIGTERM (Dante's helpers exit with their parent) on drop.
struct Peer {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Peer {
    /// Starts `program args` and waits up to 15 s for a stderr line containing `ready`.
    fn start(
        program: &str,
        args: &[&str],
        dir: tempfile::TempDir,
        addr: SocketAddr,
        ready: &'static str,
    ) -> Peer {
        let mut child = Command::new(program)
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} is not installed? {e}"));
        let err = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut log = Vec::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains(ready) {
                    let _ = tx.send(Ok(()));
                }
                log.push(line);
            }
            let _ = tx.send(Err(log.join("\n")));
        });
        let mut peer = Peer {
            child,
            addr,
            _dir: dir,
        };
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(Ok(())) => peer,
            Ok(Err(log)) => panic!("{program} exited before ready:\n{log}"),
            Err(_) => {
                peer.stop();
                panic!("{program} not ready within 15s")
            }
        }
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn dante() -> Peer {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_port();
    let conf = dir.path().join("danted.conf");
    std::fs::write(
        &conf,
        format!(
            "logoutput: stderr\ninternal: 127.0.0.1 port = {}\nexternal: 127.0.0.1\n\
             clientmethod: none\nsocksmethod: none\nuser.notprivileged: nobody\n\
             client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}\n\
             socks pass {{ from: 127.0.0.0/8 to: 127.0.0.0/8 command: connect }}\n",
            addr.port()
        ),
    )
    .expect("write conf");
    let pid = dir.path().join("danted.pid");
    let (conf, pid) = (conf.display().to_string(), pid.display().to_string());
    Peer::start(
        "danted",
        &["-f", &conf, "-p", &pid, "-N", "1"],
        dir,
        addr,
        "running",
    )
}

fn squid() -> Peer {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_port();
    let d = dir.path().display().to_string();
    // Squid drops root to its own user, which must be able to write here.
    let _ = Command::new("chmod").args(["777", &d]).status();
    let conf = dir.path().join("squid.conf");
    std::fs::write(
        &conf,
        format!(
            "http_port 127.0.0.1:{port}\npid_filename {d}/squid.pid\ncache_log {d}/cache.log\n\
             access_log none\ncache deny all\ncache_mem 8 MB\ncoredump_dir {d}\n\
             dns_nameservers 127.0.0.1\npinger_enable off\nshutdown_lifetime 0 seconds\n\
             acl lo src 127.0.0.1\nhttp_access allow lo\nhttp_access deny all\n",
            port = addr.port()
        ),
    )
    .expect("write conf");
    let conf = conf.display().to_string();
    Peer::start(
        "squid",
        &["-N", "-d", "1", "-f", &conf],
        dir,
        addr,
        "Accepting HTTP Socket connections",
    )
}

#[tokio::test]
async fn dante_as_the_socks5_parent() {
    if !enabled() {
        return;
    }
    let peer = dante();
    let echo = greeting_echo_server().await;
    let (c, _) = client_side(&[]);
    let p = spec("dante", ParentKind::Socks5, peer.addr, None);
    for target in [
        Host::Ip("127.0.0.1".parse().expect("ip")),
        name("localhost"),
    ] {
        let (s, l) = connect_via(&p, &c, &target, echo.port(), T)
            .await
            .unwrap_or_else(|e| panic!("{target}: {e}"));
        assert_echoes(s, l).await;
    }
    let closed = closed_port_sync();
    match connect_via(&p, &c, &Host::Ip(closed.ip()), closed.port(), T).await {
        Err(e @ ParentError::SocksRefused { code: 5, .. }) => {
            assert_eq!(e.proxy_status_kind(), "connection_refused");
            assert_eq!(e.socks_reply(), 5);
        }
        other => panic!("expected reply 5 from Dante, got {other:?}"),
    }
    // Dante does not offer password login here: our credentials are refused cleanly.
    let with_creds = spec("dante", ParentKind::Socks5, peer.addr, Some(("u", "p")));
    assert!(matches!(
        connect_via(&with_creds, &c, &name("localhost"), echo.port(), T).await,
        Err(ParentError::AuthRejected { .. })
    ));
}

#[tokio::test]
async fn squid_as_the_http_parent() {
    if !enabled() {
        return;
    }
    let peer = squid();
    let echo = greeting_echo_server().await;
    let origin = Origin::fixed("via squid").await;
    let (c, policy) = client_side(&[("squid", format!("http://{}", peer.addr))]);
    let p = policy.parent("squid").expect("parent").clone();
    let ip = Host::Ip("127.0.0.1".parse().expect("ip"));
    let (s, l) = connect_via(&p, &c, &ip, echo.port(), T)
        .await
        .expect("CONNECT through squid");
    assert_echoes(s, l).await;

    let closed = closed_port_sync();
    match connect_via(&p, &c, &ip, closed.port(), T).await {
        Err(e @ ParentError::HttpRefused { .. }) => assert!(e.received_status().is_some()),
        other => panic!("expected Squid's refusal, got {other:?}"),
    }

    let route = vec!["squid".to_string()];
    let r = connect_route(
        &route,
        &policy,
        &c,
        &ip,
        origin.addr.port(),
        Mode::HttpForward,
        Direct::Forbidden("x"),
        T,
    )
    .await
    .expect("squid reached");
    assert!(matches!(
        r.used,
        RouteUsed::Parent {
            absolute_form: true,
            ..
        }
    ));
    let mut s = r.stream;
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        origin.url("/sq"),
        origin.addr
    );
    s.write_all(req.as_bytes()).await.expect("send");
    let mut resp = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut resp))
        .await
        .expect("in time")
        .expect("read");
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("via squid"), "{text}");
}

fn closed_port_sync() -> SocketAddr {
    free_port()
}
