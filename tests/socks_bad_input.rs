//! End-to-end, raw bytes: every kind of bad input gets a clean answer-and-close (or a plain
//! close where no answer fits), never a hang, and the server goes on serving.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `bytes` on a fresh connection, half-closes if asked, returns all the server sent.
async fn exchange(gh: &Gatehouse, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let mut s = TcpStream::connect(gh.addr("s")).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    if half_close {
        s.shutdown().await.expect("shutdown");
    }
    read_to_close(&mut s).await
}

/// A good CONNECT still works: the server neither crashed nor wedged.
async fn still_serving(gh: &Gatehouse) {
    let echo = tcp_echo().await;
    let mut c = socks5_open(gh.addr("s")).await;
    c.write_all(&socks5_request(1, echo))
        .await
        .expect("request");
    assert_eq!(socks5_reply(&mut c).await.0, 0);
    c.write_all(b"alive").await.expect("write");
    let mut b = [0u8; 5];
    c.read_exact(&mut b).await.expect("echo");
    assert_eq!(&b, b"alive");
}

fn with_greeting(req: &[u8]) -> Vec<u8> {
    [&[5, 1, 0][..], req].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_version_is_closed_without_an_answer() {
    let gh = Gatehouse::start(&socks_listener("s", ""));
    assert!(exchange(&gh, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false)
        .await
        .is_empty());
    assert!(exchange(&gh, &[6, 1, 0], false).await.is_empty());
    // A wrong version inside the request, after a good greeting: general failure.
    assert_eq!(
        exchange(&gh, &with_greeting(&[4, 1, 0, 1]), false).await,
        [5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0]
    );
    gh.wait_log("bad_request");
    still_serving(&gh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_methods_get_no_acceptable_method() {
    let gh = Gatehouse::start(&socks_listener("s", ""));
    assert_eq!(exchange(&gh, &[5, 0], false).await, [5, 0xFF]);
    assert_eq!(
        exchange(&gh, &[5, 2, 1, 0x80], false).await,
        [5, 0xFF],
        "nothing acceptable offered"
    );
    still_serving(&gh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_command_and_address_type() {
    let gh = Gatehouse::start(&socks_listener("s", ""));
    let reply = |rep: u8| [&[5, 0][..], &[5, rep, 0, 1, 0, 0, 0, 0, 0, 0]].concat();
    assert_eq!(
        exchange(
            &gh,
            &with_greeting(&[5, 9, 0, 1, 127, 0, 0, 1, 0, 80]),
            false
        )
        .await,
        reply(7)
    );
    assert_eq!(
        exchange(&gh, &with_greeting(&[5, 1, 0, 9, 1, 2, 3]), false).await,
        reply(8)
    );
    assert_eq!(
        exchange(&gh, &with_greeting(&[5, 1, 7, 1]), false).await,
        reply(1),
        "RSV must be zero"
    );
    assert_eq!(
        exchange(&gh, &with_greeting(&[5, 1, 0, 3, 0, 0, 80]), false).await,
        reply(4),
        "empty name"
    );
    let bad_name = [&[5, 1, 0, 3, 4][..], b"a\0b ", &[0, 80]].concat();
    assert_eq!(
        exchange(&gh, &with_greeting(&bad_name), false).await,
        reply(4)
    );
    still_serving(&gh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_messages_are_closed_quietly() {
    let gh = Gatehouse::start(&socks_listener("s", ""));
    assert!(
        exchange(&gh, &[5, 3, 0], true).await.is_empty(),
        "greeting short of a method"
    );
    let short_name = with_greeting(&[5, 1, 0, 3, 20, b'a', b'b']);
    assert_eq!(
        exchange(&gh, &short_name, true).await,
        [5, 0],
        "request cut inside the name"
    );
    assert!(
        exchange(&gh, &[4, 1, 0, 80, 127, 0, 0, 1, b'u'], true)
            .await
            .is_empty(),
        "SOCKS4 user id without NUL"
    );
    gh.wait_log("truncated");
    still_serving(&gh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_socks4_fields_are_refused() {
    let gh = Gatehouse::start(&socks_listener("s", ""));
    let rejected = [0, 91, 0, 0, 0, 0, 0, 0];
    let long_user = [&[4, 1, 0, 80, 127, 0, 0, 1][..], &[b'u'; 300]].concat();
    assert_eq!(exchange(&gh, &long_user, false).await, rejected);
    let long_name = [&[4, 1, 0, 80, 0, 0, 0, 1, 0][..], &[b'n'; 300]].concat();
    assert_eq!(exchange(&gh, &long_name, false).await, rejected);
    still_serving(&gh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_messages() {
    let gh = Gatehouse::start(&socks_listener(
        "s",
        "[[listeners.users]]\nname = \"u\"\npassword = \"p\"\n",
    ));
    assert_eq!(
        exchange(&gh, &[5, 1, 0], false).await,
        [5, 0xFF],
        "no-auth refused when users exist"
    );
    assert_eq!(
        exchange(&gh, &[5, 1, 2, 1, 0], false).await,
        [5, 2, 1, 1],
        "empty user name"
    );
    assert_eq!(
        exchange(&gh, &[5, 1, 2, 9, 1, b'u', 1, b'p'], false).await,
        [5, 2, 1, 1],
        "wrong sub-negotiation version"
    );
    assert_eq!(
        exchange(&gh, &[5, 1, 2, 1, 1, b'u', 1, b'x'], false).await,
        [5, 2, 1, 1],
        "wrong password"
    );
    assert_eq!(
        exchange(&gh, &[5, 1, 2, 1, 1, b'v', 1, b'p'], false).await,
        [5, 2, 1, 1],
        "unknown user"
    );
    assert!(
        exchange(&gh, &[5, 1, 2, 1, 200, b'u'], true).await == [5, 2],
        "cut inside the user name"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_hit_the_handshake_timeout() {
    let gh = Gatehouse::start(&socks_listener("s", "handshake_timeout = \"300ms\""));
    // Stuck inside the greeting: answered with 0xFF, then closed.
    let started = std::time::Instant::now();
    assert_eq!(exchange(&gh, &[5], false).await, [5, 0xFF]);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // A greeting but no request: general failure.
    assert_eq!(
        exchange(&gh, &[5, 1, 0, 5, 1], false).await,
        [5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0]
    );
    // Not a byte at all.
    assert!(exchange(&gh, &[], false).await.is_empty());
    gh.wait_log("handshake_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bytes_sent_ahead_reach_the_upstream() {
    // Pipelined greeting + request + data in one write: nothing is lost.
    let echo = tcp_echo().await;
    let gh = Gatehouse::start(&socks_listener("s", ""));
    let mut s = TcpStream::connect(gh.addr("s")).await.expect("connect");
    let all = [with_greeting(&socks5_request(1, echo)), b"early".to_vec()].concat();
    s.write_all(&all).await.expect("write");
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await.expect("method");
    assert_eq!(socks5_reply(&mut s).await.0, 0);
    let mut b = [0u8; 5];
    s.read_exact(&mut b).await.expect("echo");
    assert_eq!(&b, b"early");
}
