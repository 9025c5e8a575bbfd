//! End-to-end: the SOCKS listener driven by clients nobody on this project wrote (curl and
//! tokio-socks), over plain TCP and TLS, with and without username/password.
//!
//! The tests run on a multi-threaded runtime: `wait_log` blocks its thread, and a session is
//! logged only once the in-process origin has answered the relayed EOF.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_socks::tcp::{Socks4Stream, Socks5Stream};

const HOSTS: &str = "[dns.hosts]\n\"origin.test\" = \"127.0.0.1\"\n";

fn proxy(gh: &Gatehouse) -> String {
    gh.addr("s").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_socks5_ipv4_connect_is_logged() {
    let origin = Origin::fixed("hello").await;
    let gh = Gatehouse::start(&socks_listener("s", ""));
    let (code, body, err) = curl(&["--socks5", &proxy(&gh), &origin.url("/a")]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(body, b"hello");
    let line = gh.wait_log("SOCKS5-CONNECT");
    assert!(
        line.contains(&format!(" {} 0 ", origin.addr)),
        "target and reply code 0: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_socks5_hostname_is_resolved_by_the_server() {
    let origin = Origin::fixed("remote dns").await;
    let gh = Gatehouse::start(&format!("{}{HOSTS}", socks_listener("s", "")));
    // curl cannot resolve origin.test itself: only the server's static hosts know it.
    let url = format!("http://origin.test:{}/", origin.addr.port());
    let (code, body, err) = curl(&["--socks5-hostname", &proxy(&gh), &url]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(body, b"remote dns");
    let line = gh.wait_log("SOCKS5-CONNECT");
    assert!(
        line.contains(&format!(" origin.test:{} 0 ", origin.addr.port())),
        "{line}"
    );
    let (code, body, err) = curl(&["-x", &format!("socks5h://{}", proxy(&gh)), &url]).await;
    assert_eq!((code, body.as_slice()), (0, &b"remote dns"[..]), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_socks4_and_socks4a() {
    let origin = Origin::fixed("four").await;
    let gh = Gatehouse::start(&format!("{}{HOSTS}", socks_listener("s", "")));
    let (code, body, err) = curl(&["--socks4", &proxy(&gh), &origin.url("/")]).await;
    assert_eq!((code, body.as_slice()), (0, &b"four"[..]), "{err}");
    assert!(gh.wait_log("SOCKS4-CONNECT").contains(" 90 "));
    let url = format!("http://origin.test:{}/", origin.addr.port());
    let (code, body, err) = curl(&["--socks4a", &proxy(&gh), &url]).await;
    assert_eq!((code, body.as_slice()), (0, &b"four"[..]), "{err}");
    assert!(gh.wait_log("SOCKS4-CONNECT").contains("origin.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks4_can_be_switched_off() {
    let origin = Origin::fixed("x").await;
    let gh = Gatehouse::start(&socks_listener("s", "socks4 = false"));
    let (code, _, _) = curl(&["--socks4", &proxy(&gh), &origin.url("/")]).await;
    assert_ne!(code, 0);
    let line = gh.wait_log("SOCKS4");
    assert!(
        line.contains(" 91 ") && line.contains("socks4_disabled"),
        "{line}"
    );
    assert_eq!(origin.connection_count(), 0);
}

const USERS: &str = "[[listeners.users]]\nname = \"alice\"\npassword = \"wonderland\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_proxy_user_password_auth() {
    let origin = Origin::fixed("authed").await;
    let gh = Gatehouse::start(&socks_listener("s", USERS));
    let (code, body, err) = curl(&[
        "--socks5",
        &proxy(&gh),
        "--proxy-user",
        "alice:wonderland",
        &origin.url("/"),
    ])
    .await;
    assert_eq!((code, body.as_slice()), (0, &b"authed"[..]), "{err}");
    let line = gh.wait_log("SOCKS5-CONNECT");
    assert!(
        line.contains(" alice SOCKS5-CONNECT "),
        "user in the access log: {line}"
    );

    let (code, _, _) = curl(&[
        "--socks5",
        &proxy(&gh),
        "--proxy-user",
        "alice:looking-glass",
        &origin.url("/"),
    ])
    .await;
    assert_ne!(code, 0, "wrong password refused");
    let line = gh.wait_log("auth_failed");
    assert!(
        !line.contains("looking-glass") && !line.contains("wonderland"),
        "{line}"
    );

    let (code, _, _) = curl(&["--socks5", &proxy(&gh), &origin.url("/")]).await;
    assert_ne!(code, 0, "a client without credentials gets 0xFF");
    gh.wait_log("no_acceptable_method");
    assert_eq!(origin.connection_count(), 1);
    // Passwords appear in no log at all.
    while let Ok(l) = gh.stderr.try_recv() {
        assert!(
            !l.contains("wonderland") && !l.contains("looking-glass"),
            "{l}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_socks_ipv4_ipv6_and_name_targets() {
    let echo4 = tcp_echo().await;
    let l6 = tokio::net::TcpListener::bind("[::1]:0")
        .await
        .expect("IPv6 loopback");
    let echo6 = l6.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l6.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let gh = Gatehouse::start(&format!("{}{HOSTS}", socks_listener("s", "")));
    let p = gh.addr("s");
    let named = ("origin.test", echo4.port());
    for (i, target) in [
        echo4.to_string(),
        echo6.to_string(),
        format!("{}:{}", named.0, named.1),
    ]
    .iter()
    .enumerate()
    {
        let mut s = Socks5Stream::connect(p, target.as_str())
            .await
            .expect("socks5 connect");
        let msg = format!("ping {i}");
        s.write_all(msg.as_bytes()).await.expect("write");
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).await.expect("echo");
        assert_eq!(back, msg.as_bytes());
    }
    let mut s4 = Socks4Stream::connect(p, echo4)
        .await
        .expect("socks4 connect");
    s4.write_all(b"four").await.expect("write");
    let mut back = [0u8; 4];
    s4.read_exact(&mut back).await.expect("echo");
    assert_eq!(&back, b"four");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_socks_with_password() {
    let echo = tcp_echo().await;
    let gh = Gatehouse::start(&socks_listener("s", USERS));
    let mut s = Socks5Stream::connect_with_password(gh.addr("s"), echo, "alice", "wonderland")
        .await
        .expect("authenticated connect");
    s.write_all(b"hi").await.expect("write");
    let mut b = [0u8; 2];
    s.read_exact(&mut b).await.expect("echo");
    assert_eq!(&b, b"hi");
    let bad = Socks5Stream::connect_with_password(gh.addr("s"), echo, "alice", "wrong").await;
    assert!(bad.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_address_is_the_upstream_socket() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<SocketAddr>();
    let origin = raw_origin(move |s| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(s.peer_addr().expect("peer"));
        }
    })
    .await;
    let gh = Gatehouse::start(&socks_listener("s", ""));
    let mut c = socks5_open(gh.addr("s")).await;
    c.write_all(&socks5_request(1, origin))
        .await
        .expect("request");
    let (rep, bnd) = socks5_reply(&mut c).await;
    assert_eq!(rep, 0);
    assert_eq!(
        Some(bnd),
        rx.recv().await,
        "BND is the address the origin saw"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_map_to_reply_codes() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let dns = Dns::start(&[], 60).await;
    let gh = Gatehouse::start(&format!("{}{}", socks_listener("s", ""), dns.config()));
    let mut c = socks5_open(gh.addr("s")).await;
    c.write_all(&socks5_request(1, closed))
        .await
        .expect("request");
    assert_eq!(socks5_reply(&mut c).await.0, 5, "connection refused");
    assert!(read_to_close(&mut c).await.is_empty());
    assert!(gh.wait_log("SOCKS5-CONNECT").contains(" 5 "));

    let mut c = socks5_open(gh.addr("s")).await;
    c.write_all(&socks5_request_name(1, "missing.test", 80))
        .await
        .expect("request");
    assert_eq!(
        socks5_reply(&mut c).await.0,
        4,
        "NXDOMAIN is host unreachable"
    );
    assert!(gh.wait_log("SOCKS5-CONNECT").contains("dns_error"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_over_tls() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let dir = tempfile::tempdir().expect("dir");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    let tls = format!("tls = {{ cert = {:?}, key = {:?} }}", cert_path, key_path);
    let gh = Gatehouse::start(&socks_listener("s", &tls));
    let echo = tcp_echo().await;

    use tokio_rustls::rustls::{self, pki_types::ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(gh.addr("s"))
        .await
        .expect("connect");
    let tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let mut s = Socks5Stream::connect_with_socket(tls, echo)
        .await
        .expect("SOCKS5 over TLS");
    s.write_all(b"secret").await.expect("write");
    let mut b = [0u8; 6];
    s.read_exact(&mut b).await.expect("echo");
    assert_eq!(&b, b"secret");

    // Plain SOCKS5 to a TLS listener fails its TLS handshake: no SOCKS answer.
    let mut plain = tokio::net::TcpStream::connect(gh.addr("s"))
        .await
        .expect("connect");
    plain.write_all(&[5, 1, 0]).await.expect("write");
    let mut buf = [0u8; 2];
    let got = plain.read(&mut buf).await.unwrap_or(0);
    assert!(
        got == 0 || buf != [5, 0],
        "no SOCKS method choice in the clear"
    );
}

#[test]
fn tls_key_that_cannot_load_is_a_start_error() {
    let dir = tempfile::tempdir().expect("dir");
    let missing = dir.path().join("nope.pem");
    let cfg = socks_listener(
        "s",
        &format!("tls = {{ cert = {:?}, key = {:?} }}", missing, missing),
    );
    let err = Gatehouse::try_start(&cfg).err().expect("does not start");
    assert!(err.contains("nope.pem"), "{err}");
}
