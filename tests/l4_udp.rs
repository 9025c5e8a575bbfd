//! `kind = "udp"` listeners end to end: echo through the balancer with per-client affinity,
//! sessions that expire, a dead server found by its ICMP errors and ejected, and the session
//! bound.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::net::UdpSocket;

/// A UDP server that answers every datagram with its id followed by the payload.
async fn id_echo(id: u8) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = sock.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let mut reply = vec![id];
            reply.extend_from_slice(&buf[..n]);
            let _ = sock.send_to(&reply, from).await;
        }
    });
    addr
}

fn udp_config(servers: &[SocketAddr], listener_extra: &str, pool_extra: &str) -> String {
    let mut c = format!(
        "[[listeners]]\nname = \"udp\"\nkind = \"udp\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n{listener_extra}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [[pools]]\nname = \"p\"\n{pool_extra}\n"
    );
    for s in servers {
        c.push_str(&format!("[[pools.servers]]\naddress = \"{s}\"\n"));
    }
    c
}

/// Sends `msg` and waits up to `wait` for the reply.
async fn ask(sock: &UdpSocket, to: SocketAddr, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
    sock.send_to(msg, to).await.expect("send");
    let mut buf = vec![0u8; 65536];
    match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => {
            assert_eq!(from, to, "the reply comes from the listener's address");
            Some(buf[..n].to_vec())
        }
        _ => None,
    }
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.expect("bind client")
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_with_per_client_affinity() {
    let a = id_echo(b'a').await;
    let b = id_echo(b'b').await;
    let gh = Gatehouse::start(&udp_config(&[a, b], "", ""));
    let lb = gh.addr("udp");
    let (c1, c2) = (client().await, client().await);
    let first1 = ask(&c1, lb, b"one", WAIT).await.expect("reply")[0];
    let first2 = ask(&c2, lb, b"two", WAIT).await.expect("reply")[0];
    assert_ne!(first1, first2, "two clients, two servers (round-robin)");
    for i in 0..10u8 {
        let r1 = ask(&c1, lb, &[b'x', i], WAIT).await.expect("reply");
        assert_eq!(r1, [first1, b'x', i], "client 1 keeps its server");
        let r2 = ask(&c2, lb, &[b'y', i], WAIT).await.expect("reply");
        assert_eq!(r2, [first2, b'y', i], "client 2 keeps its server");
    }
    // A large datagram goes through whole.
    let big = pattern(3, 60_000);
    let r = ask(&c1, lb, &big, WAIT).await.expect("reply");
    assert_eq!(&r[1..], &big[..]);
    let admin = gh.addr("admin");
    assert_eq!(
        metric(admin, "gatehouse_pool_server_connections_total").await,
        Some(2.0)
    );
    assert_eq!(
        metric(admin, "gatehouse_connections_total").await,
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_after_the_timeout() {
    let a = id_echo(b'a').await;
    let gh = Gatehouse::start(&udp_config(&[a], "session_timeout = \"1s\"", ""));
    let lb = gh.addr("udp");
    let c = client().await;
    assert!(ask(&c, lb, b"1", WAIT).await.is_some());
    assert!(ask(&c, lb, b"2", WAIT).await.is_some());
    let admin = gh.addr("admin");
    assert_eq!(
        metric(admin, "gatehouse_connections_total").await,
        Some(1.0)
    );
    // Idle past the session timeout: the next datagram opens a new session.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(ask(&c, lb, b"3", WAIT).await.is_some());
    assert_eq!(
        metric(admin, "gatehouse_connections_total").await,
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_server_found_by_icmp_and_ejected() {
    let dead = {
        let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        s.local_addr().expect("addr")
    };
    let live = id_echo(b'l').await;
    let gh = Gatehouse::start(&udp_config(
        &[dead, live],
        "",
        "[pools.passive]\nmax_failures = 1\nejection = \"1m\"\n",
    ));
    let lb = gh.addr("udp");
    // The first client lands on the dead server: its datagram is lost and the ICMP error
    // ends the session; a resend (as any UDP client does) lands on the live server.
    let c = client().await;
    let mut reply = None;
    for _ in 0..5 {
        reply = ask(&c, lb, b"hi", Duration::from_millis(500)).await;
        if reply.is_some() {
            break;
        }
    }
    assert_eq!(reply.as_deref(), Some(&b"lhi"[..]));
    gh.wait_stderr("server down");
    // Every new client now goes to the live server at once.
    for _ in 0..4 {
        let c = client().await;
        assert_eq!(ask(&c, lb, b"x", WAIT).await.as_deref(), Some(&b"lx"[..]));
    }
    let admin = gh.addr("admin");
    assert_eq!(metric(admin, "gatehouse_pool_server_up").await, Some(1.0));
    assert!(metric(admin, "gatehouse_pool_server_errors_total").await >= Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_bounded() {
    let a = id_echo(b'a').await;
    let gh = Gatehouse::start(&udp_config(&[a], "max_sessions = 2", ""));
    let lb = gh.addr("udp");
    let (c1, c2, c3) = (client().await, client().await, client().await);
    assert!(ask(&c1, lb, b"1", WAIT).await.is_some());
    assert!(ask(&c2, lb, b"2", WAIT).await.is_some());
    assert_eq!(ask(&c3, lb, b"3", Duration::from_millis(300)).await, None);
    // Existing sessions go on.
    assert!(ask(&c1, lb, b"4", WAIT).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_server_counts_as_failed() {
    // Receives and never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let live = id_echo(b'l').await;
    let gh = Gatehouse::start(&udp_config(
        &[silent_addr, live],
        "reply_timeout = \"200ms\"",
        "[pools.passive]\nmax_failures = 1\nejection = \"1m\"\n",
    ));
    let lb = gh.addr("udp");
    let c = client().await;
    assert_eq!(ask(&c, lb, b"q", Duration::from_millis(300)).await, None);
    let down = gh.wait_stderr("server down");
    assert!(down.contains(&silent_addr.to_string()), "{down}");
    // The session on the silent server ends just after that log line; a resend gets the live
    // server.
    let mut reply = None;
    for _ in 0..5 {
        reply = ask(&c, lb, b"q", Duration::from_millis(500)).await;
        if reply.is_some() {
            break;
        }
    }
    assert_eq!(reply.as_deref(), Some(&b"lq"[..]));
    drop(silent);
}
