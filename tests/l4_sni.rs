//! TLS SNI routing without termination: two names to two TLS servers, the client verifying
//! each server's own certificate end to end through the balancer; ALPN in a route; unknown
//! names and no SNI closed; a ClientHello split across many segments still routed; truncated,
//! oversized, non-TLS and too slow hellos closed cleanly without reaching a server.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::{self, pki_types::ServerName};

/// A TLS server with its own self-signed certificate for `names`; after the handshake it
/// sends `id` and closes. Counts the TCP connections it accepted.
struct TlsServer {
    addr: SocketAddr,
    cert: rustls::pki_types::CertificateDer<'static>,
    accepted: Arc<AtomicUsize>,
}

impl TlsServer {
    async fn start(names: &[&str], id: &'static [u8]) -> TlsServer {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let cert = rcgen::generate_simple_self_signed(names).expect("cert");
        let der = cert.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(s).await {
                        let _ = tls.write_all(id).await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        TlsServer {
            addr,
            cert: der,
            accepted,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn client_config(
    roots: &[&rustls::pki_types::CertificateDer<'static>],
    alpn: &[&str],
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).expect("root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// A TLS session through the balancer to `name`, verifying the certificate against `roots`:
/// the id the server sent, or the handshake error.
async fn tls_fetch(
    proxy: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<Vec<u8>, String> {
    let tcp = TcpStream::connect(proxy).await.expect("connect");
    let connector = tokio_rustls::TlsConnector::from(config);
    let server_name = ServerName::try_from(name.to_string()).expect("name");
    let fetch = async {
        let mut tls = connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        Ok(out)
    };
    tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .expect("within 10s")
}

fn sni_config(a: SocketAddr, b: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "sni"
kind = "tcp"
listen = "127.0.0.1:0"
{extra}
[[listeners.sni]]
names = ["a.test"]
pool = "a"
[[listeners.sni]]
names = ["*.wild.test"]
alpn = ["h2"]
pool = "b"
[[listeners.sni]]
names = ["b.test"]
pool = "b"

[[pools]]
name = "a"
[[pools.servers]]
address = "{a}"
[[pools]]
name = "b"
[[pools.servers]]
address = "{b}"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_names_two_servers_verified_end_to_end() {
    let a = TlsServer::start(&["a.test"], b"A").await;
    let b = TlsServer::start(&["b.test", "x.wild.test"], b"B").await;
    let gh = Gatehouse::start(&sni_config(a.addr, b.addr, ""));
    let proxy = gh.addr("sni");
    let both = client_config(&[&a.cert, &b.cert], &[]);
    assert_eq!(
        tls_fetch(proxy, "a.test", both.clone()).await,
        Ok(b"A".to_vec())
    );
    assert_eq!(
        tls_fetch(proxy, "b.test", both.clone()).await,
        Ok(b"B".to_vec())
    );
    // Each server's own certificate is what the client verified: trusting only a's, b.test
    // fails verification (the bytes were not re-encrypted by the proxy).
    let only_a = client_config(&[&a.cert], &[]);
    assert!(tls_fetch(proxy, "b.test", only_a.clone()).await.is_err());
    assert_eq!(tls_fetch(proxy, "a.test", only_a).await, Ok(b"A".to_vec()));
    // ALPN in a route: *.wild.test needs h2.
    let h2 = client_config(&[&b.cert], &["h2"]);
    assert_eq!(tls_fetch(proxy, "x.wild.test", h2).await, Ok(b"B".to_vec()));
    let before = (a.accepted(), b.accepted());
    let plain = client_config(&[&b.cert], &["http/1.1"]);
    assert!(tls_fetch(proxy, "x.wild.test", plain).await.is_err());
    // Unknown name, no SNI (an IP address as the name): closed, no server reached.
    assert!(tls_fetch(proxy, "c.test", both.clone()).await.is_err());
    assert!(tls_fetch(proxy, "127.0.0.1", both.clone()).await.is_err());
    assert_eq!((a.accepted(), b.accepted()), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_pool_takes_unmatched_names() {
    let a = TlsServer::start(&["a.test"], b"A").await;
    let b = TlsServer::start(&["other.test", "127.0.0.1"], b"B").await;
    let gh = Gatehouse::start(&sni_config(a.addr, b.addr, "pool = \"b\""));
    let cfg = client_config(&[&a.cert, &b.cert], &[]);
    assert_eq!(
        tls_fetch(gh.addr("sni"), "other.test", cfg.clone()).await,
        Ok(b"B".to_vec())
    );
    assert_eq!(
        tls_fetch(gh.addr("sni"), "a.test", cfg).await,
        Ok(b"A".to_vec())
    );
}

/// The ClientHello a real client sends for `name`, and the connection that sent it, so the
/// handshake can go on by hand.
fn client_hello(
    config: Arc<rustls::ClientConfig>,
    name: &str,
) -> (rustls::ClientConnection, Vec<u8>) {
    let mut conn = rustls::ClientConnection::new(
        config,
        ServerName::try_from(name.to_string()).expect("name"),
    )
    .expect("client");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("hello");
    (conn, hello)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hello_in_many_segments_is_routed() {
    let a = TlsServer::start(&["a.test"], b"A").await;
    let b = TlsServer::start(&["b.test"], b"B").await;
    let gh = Gatehouse::start(&sni_config(a.addr, b.addr, ""));
    let (mut conn, hello) = client_hello(client_config(&[&b.cert], &[]), "b.test");
    let mut s = TcpStream::connect(gh.addr("sni")).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    // 40 segments, each sent on its own.
    for chunk in hello.chunks(hello.len() / 40 + 1) {
        s.write_all(chunk).await.expect("write");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let got = finish_by_hand(&mut conn, &mut s).await;
    assert_eq!(got, b"B");
    assert!(!conn.is_handshaking());
}

/// The rest of a handshake whose ClientHello was sent by hand, with certificate verification;
/// returns the first application bytes the server sent.
async fn finish_by_hand(conn: &mut rustls::ClientConnection, s: &mut TcpStream) -> Vec<u8> {
    let mut buf = vec![0u8; 32 * 1024];
    let mut got = Vec::new();
    let drive = async {
        loop {
            while conn.wants_write() {
                let mut out = Vec::new();
                conn.write_tls(&mut out).expect("write_tls");
                s.write_all(&out).await.expect("send");
            }
            let n = s.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            conn.read_tls(&mut &buf[..n]).expect("read_tls");
            conn.process_new_packets().expect("handshake verifies");
            let mut plain = [0u8; 16];
            if let Ok(k) = std::io::Read::read(&mut conn.reader(), &mut plain) {
                got.extend_from_slice(&plain[..k]);
                if !got.is_empty() {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), drive)
        .await
        .expect("handshake within 10s");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_hellos_get_a_clean_close() {
    let a = TlsServer::start(&["a.test"], b"A").await;
    let b = TlsServer::start(&["b.test"], b"B").await;
    let gh = Gatehouse::start(&sni_config(
        a.addr,
        b.addr,
        "handshake_timeout = \"500ms\"\nmax_client_hello = \"4KiB\"",
    ));
    let proxy = gh.addr("sni");
    let (_, hello) = client_hello(client_config(&[&a.cert], &[]), "a.test");

    // Truncated: half a hello, then the client's end closes.
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(&hello[..hello.len() / 2]).await.expect("write");
    s.shutdown().await.expect("half-close");
    assert_eq!(until_closed(&mut s).await, b"");

    // Truncated and silent: closed at the handshake timeout.
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(&hello[..hello.len() / 2]).await.expect("write");
    assert_eq!(until_closed(&mut s).await, b"");

    // Oversized: a handshake announced at 64 KiB, and records that run past the limit.
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    let mut big = vec![22, 3, 1, 0x10, 0x00, 1, 0x01, 0x00, 0x00];
    big.extend_from_slice(&[0u8; 4092]);
    s.write_all(&big).await.expect("write");
    assert_eq!(until_closed(&mut s).await, b"");
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    let mut records = Vec::new();
    let body = [&[1u8, 0x00, 0x30, 0x00][..], &[0u8; 12284]].concat();
    for chunk in body.chunks(1000) {
        records.extend_from_slice(&[22, 3, 1]);
        records.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        records.extend_from_slice(chunk);
    }
    let _ = s.write_all(&records).await;
    assert_eq!(until_closed(&mut s).await, b"");

    // Not TLS at all, and garbage inside a TLS record.
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"[..],
        &[22, 3, 1, 0, 8, 1, 0, 0, 4, 0xff, 0xff, 0xff, 0xff],
    ] {
        let mut s = TcpStream::connect(proxy).await.expect("connect");
        s.write_all(junk).await.expect("write");
        assert_eq!(until_closed(&mut s).await, b"");
    }
    assert_eq!((a.accepted(), b.accepted()), (0, 0), "no server reached");
    // The listener still routes well-formed hellos.
    assert_eq!(
        tls_fetch(proxy, "a.test", client_config(&[&a.cert], &[])).await,
        Ok(b"A".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminates_tls_and_sends_plain_tcp() {
    // Plain TCP servers: each answers with its id, then echoes.
    let plain = |id: u8| {
        raw_origin(move |mut s| async move {
            if s.write_all(&[id]).await.is_ok() {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        })
    };
    let (a, b) = (plain(b'a').await, plain(b'b').await);
    let cert =
        rcgen::generate_simple_self_signed(vec!["a.test".into(), "b.test".into()]).expect("cert");
    let dir = tempfile::tempdir().expect("dir");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    let tls = format!("tls = {{ cert = {cert_path:?}, key = {key_path:?} }}");
    let gh = Gatehouse::start(&sni_config(a, b, &tls));
    let proxy = gh.addr("sni");
    let cfg = client_config(&[cert.cert.der()], &[]);
    for (name, id) in [("a.test", b'a'), ("b.test", b'b')] {
        let tcp = TcpStream::connect(proxy).await.expect("connect");
        let connector = tokio_rustls::TlsConnector::from(cfg.clone());
        let mut s = connector
            .connect(ServerName::try_from(name).expect("name"), tcp)
            .await
            .expect("handshake with the balancer's certificate");
        let mut got = [0u8; 1];
        s.read_exact(&mut got).await.expect("id");
        assert_eq!(got[0], id, "{name}");
        s.write_all(b"ping").await.expect("write");
        let mut echo = [0u8; 4];
        s.read_exact(&mut echo).await.expect("echo");
        assert_eq!(&echo, b"ping");
    }
    // A name no route takes: closed before the handshake completes.
    assert!(tls_fetch(proxy, "c.test", cfg.clone()).await.is_err());
    drop(gh);

    // Behind a trusted balancer: the PROXY header and the ClientHello arrive together; the
    // bytes after the header are handed to the TLS handshake.
    let gh = Gatehouse::start(&sni_config(
        a,
        b,
        &format!("{tls}\naccept_proxy_from = [\"127.0.0.0/8\"]"),
    ));
    let mut tcp = TcpStream::connect(gh.addr("sni")).await.expect("connect");
    let (mut conn, hello) = client_hello(cfg, "b.test");
    let first = [
        &b"PROXY TCP4 203.0.113.7 198.51.100.1 5555 443\r\n"[..],
        &hello,
    ]
    .concat();
    tcp.write_all(&first)
        .await
        .expect("header and hello in one write");
    assert_eq!(finish_by_hand(&mut conn, &mut tcp).await, b"b");
}
