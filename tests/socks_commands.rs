//! End-to-end, raw bytes: BIND (a control connection plus the peer that connects in) and
//! UDP ASSOCIATE (a local UDP echo server; IPv4 and name targets; foreign datagrams dropped).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

const LOOPBACK: &str = "127.0.0.1:0";

/// A peer that connects from a chosen loopback address.
async fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().expect("socket");
    s.bind(format!("{src}:0").parse().expect("addr"))
        .expect("bind peer");
    s.connect(to).await.expect("peer connects to the BIND port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_accepts_the_named_peer_and_relays() {
    let gh = Gatehouse::start(&socks_listener("s", ""));
    let mut control = socks5_open(gh.addr("s")).await;
    control
        .write_all(&socks5_request(2, "127.0.0.1:0".parse().expect("addr")))
        .await
        .expect("BIND");
    let (rep, bound) = socks5_reply(&mut control).await;
    assert_eq!(rep, 0);
    assert_eq!(
        bound.ip().to_string(),
        "127.0.0.1",
        "listens where the peer can reach it"
    );

    let mut peer = connect_from("127.0.0.1", bound).await;
    let (rep, seen) = socks5_reply(&mut control).await;
    assert_eq!(rep, 0);
    assert_eq!(
        seen,
        peer.local_addr().expect("addr"),
        "second reply names the peer"
    );

    peer.write_all(b"from peer").await.expect("write");
    let mut b = [0u8; 9];
    control.read_exact(&mut b).await.expect("relayed");
    assert_eq!(&b, b"from peer");
    control.write_all(b"from client").await.expect("write");
    let mut b = [0u8; 11];
    peer.read_exact(&mut b).await.expect("relayed");
    assert_eq!(&b, b"from client");

    // Exactly one connection: the port is closed once the peer is in.
    assert!(
        TcpStream::connect(bound).await.is_err(),
        "second connection refused"
    );
    drop(peer);
    drop(control);
    assert!(gh.wait_log("SOCKS5-BIND").contains(" 0 "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_rejects_a_peer_from_another_address() {
    let gh = Gatehouse::start(&socks_listener("s", ""));
    let mut control = socks5_open(gh.addr("s")).await;
    control
        .write_all(&socks5_request(2, "127.0.0.1:21".parse().expect("addr")))
        .await
        .expect("BIND");
    let (_, bound) = socks5_reply(&mut control).await;
    let _intruder = connect_from("127.0.0.3", bound).await;
    let (rep, _) = socks5_reply(&mut control).await;
    assert_eq!(rep, 2, "not allowed");
    assert!(read_to_close(&mut control).await.is_empty());
    assert!(gh.wait_log("SOCKS5-BIND").contains("bind_wrong_peer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_times_out_when_nobody_connects() {
    let gh = Gatehouse::start(&socks_listener("s", "bind_timeout = \"300ms\""));
    let mut control = socks5_open(gh.addr("s")).await;
    control
        .write_all(&socks5_request(2, "0.0.0.0:0".parse().expect("addr")))
        .await
        .expect("BIND");
    assert_eq!(socks5_reply(&mut control).await.0, 0);
    assert_eq!(
        socks5_reply(&mut control).await.0,
        6,
        "TTL expired: nobody came"
    );
    assert!(read_to_close(&mut control).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks4_bind() {
    let gh = Gatehouse::start(&socks_listener("s", ""));
    let mut control = TcpStream::connect(gh.addr("s")).await.expect("connect");
    control
        .write_all(&[4, 2, 0, 21, 127, 0, 0, 1, 0])
        .await
        .expect("BIND");
    let mut r = [0u8; 8];
    control.read_exact(&mut r).await.expect("first reply");
    assert_eq!(r[1], 90);
    let bound = SocketAddr::from(([r[4], r[5], r[6], r[7]], u16::from_be_bytes([r[2], r[3]])));
    let mut peer = connect_from("127.0.0.1", bound).await;
    control.read_exact(&mut r).await.expect("second reply");
    assert_eq!(r[1], 90);
    assert_eq!(
        u16::from_be_bytes([r[2], r[3]]),
        peer.local_addr().expect("addr").port()
    );
    peer.write_all(b"ok").await.expect("write");
    let mut b = [0u8; 2];
    control.read_exact(&mut b).await.expect("relayed");
    assert_eq!(&b, b"ok");
}

fn datagram(frag: u8, target: &[u8], payload: &[u8]) -> Vec<u8> {
    [&[0, 0, frag][..], target, payload].concat()
}

fn v4_target(a: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(a) = a else { panic!("v4") };
    [&[1][..], &a.ip().octets(), &a.port().to_be_bytes()].concat()
}

async fn recv(sock: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 65536];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf))
        .await
        .expect("a datagram within 10s")
        .expect("recv");
    buf.truncate(n);
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_associate_ipv4_and_name_targets() {
    let echo = UdpEcho::start(LOOPBACK).await;
    let gh = Gatehouse::start(&format!(
        "{}[dns.hosts]\n\"echo.test\" = \"127.0.0.1\"\n",
        socks_listener("s", "")
    ));
    let (mut control, relay) = socks5_associate(gh.addr("s")).await;
    let client = UdpSocket::bind(LOOPBACK).await.expect("bind");
    client.connect(relay).await.expect("connect");

    client
        .send(&datagram(0, &v4_target(echo.addr), b"hello v4"))
        .await
        .expect("send");
    let back = recv(&client).await;
    assert_eq!(
        back,
        datagram(0, &v4_target(echo.addr), b"hello v4"),
        "wrapped with the echo's address"
    );

    let name = [&[3, 9][..], b"echo.test", &echo.addr.port().to_be_bytes()].concat();
    client
        .send(&datagram(0, &name, b"hello name"))
        .await
        .expect("send");
    let back = recv(&client).await;
    assert_eq!(back, datagram(0, &v4_target(echo.addr), b"hello name"));

    // The association ends with its control connection.
    control.shutdown().await.expect("close control");
    let line = gh.wait_log("SOCKS5-UDP");
    assert!(line.contains(" 0 "), "{line}");
    assert_eq!(echo.seen(), [b"hello v4".to_vec(), b"hello name".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_drops_foreign_senders_and_fragments() {
    let echo = UdpEcho::start(LOOPBACK).await;
    let gh = Gatehouse::start(&socks_listener("s", ""));
    let (_control, relay) = socks5_associate(gh.addr("s")).await;
    let client = UdpSocket::bind(LOOPBACK).await.expect("bind");
    client.connect(relay).await.expect("connect");
    client
        .send(&datagram(0, &v4_target(echo.addr), b"first"))
        .await
        .expect("send");
    assert_eq!(&recv(&client).await[10..], b"first");

    // Another port on the client's own IP, and another loopback IP: both foreign.
    for src in ["127.0.0.1:0", "127.0.0.5:0"] {
        let foreign = UdpSocket::bind(src).await.expect("bind foreign");
        foreign
            .send_to(&datagram(0, &v4_target(echo.addr), b"foreign"), relay)
            .await
            .expect("send");
    }
    client
        .send(&datagram(1, &v4_target(echo.addr), b"fragment"))
        .await
        .expect("send");
    client
        .send(&[0, 0, 0, 9, 1, 2])
        .await
        .expect("send garbage");
    // The relay handles its socket in order: once "last" is echoed, the others were seen.
    client
        .send(&datagram(0, &v4_target(echo.addr), b"last"))
        .await
        .expect("send");
    assert_eq!(&recv(&client).await[10..], b"last");
    assert_eq!(echo.seen(), [b"first".to_vec(), b"last".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_association_idles_out_and_closes_control() {
    let gh = Gatehouse::start(&socks_listener("s", "udp_idle_timeout = \"300ms\""));
    let (mut control, _relay) = socks5_associate(gh.addr("s")).await;
    assert!(read_to_close(&mut control).await.is_empty());
    assert!(gh.wait_log("SOCKS5-UDP").contains("udp_idle_timeout"));
}
