//! TLS terminated by a listener and TLS to upstream servers, through the `tcp` listener:
//! certificates chosen by SNI (exact, wildcard, default, strict refusal), ALPN, the minimum
//! version, plain and re-encrypted relaying (CA file, wrong CA, mTLS), certificate reload on
//! SIGHUP (new connections get the new certificate, an established one goes on, a bad file
//! keeps the old one). Every certificate is made here with rcgen under a test CA.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::{
    self,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    DigitallySignedStruct,
};

type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// A test certificate authority.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate made by a [`Ca`]: PEM texts and the DER to compare with.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("ca"),
        }
    }

    fn leaf(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let params = CertificateParams::new(names).expect("params");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }
}

impl Leaf {
    /// Writes `<name>.pem` and `<name>.key` into `dir`.
    fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, &self.cert_pem).expect("write cert");
        std::fs::write(&k, &self.key_pem).expect("write key");
        (c, k)
    }

    fn key_der(&self) -> PrivateKeyDer<'static> {
        rustls_pemfile::private_key(&mut self.key_pem.as_bytes())
            .expect("pem")
            .expect("key")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client trusting `ca`, offering `alpn`, with the given versions.
fn client(
    ca: &Ca,
    alpn: &[&str],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).expect("root");
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Arc::new(c)
}

/// Accepts any certificate: to see which one an unknown name gets.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn any_cert_client() -> Arc<rustls::ClientConfig> {
    let p = provider();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(p.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(p)))
            .with_no_client_auth(),
    )
}

/// A TLS handshake to `addr` with SNI `name` (bounded at 10 s).
async fn handshake(
    addr: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<ClientTls> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_string()).expect("name");
    let connect = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
    tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

fn served(s: &ClientTls) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().expect("certs")[0].clone()
}

/// Writes `msg` and reads the echo.
async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S, msg: &[u8]) {
    s.write_all(msg).await.expect("write");
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got))
        .await
        .expect("echo within 10s")
        .expect("echo");
    assert_eq!(got, msg);
}

/// A `tcp` listener "t" (with `listener_tls`) over pool "p" (with `pool_extra`) of `server`,
/// plus an admin listener.
fn config(listener_tls: &str, server: SocketAddr, pool_extra: &str) -> String {
    format!(
        "[[listeners]]\nname = \"t\"\nkind = \"tcp\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n{listener_tls}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [[pools]]\nname = \"p\"\n[[pools.servers]]\naddress = \"{server}\"\n{pool_extra}\n"
    )
}

/// The listener's two certificates, `a.test` and `*.b.test`, written into `dir`.
fn two_certs(ca: &Ca, dir: &Path) -> (Leaf, Leaf, String) {
    let a = ca.leaf(&["a.test"]);
    let b = ca.leaf(&["*.b.test"]);
    let (ac, ak) = a.write(dir, "a");
    let (bc, bk) = b.write(dir, "b");
    let list = format!(
        "certificates = [{{ cert = {ac:?}, key = {ak:?} }}, {{ cert = {bc:?}, key = {bk:?} }}]"
    );
    (a, b, list)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_by_sni_alpn_and_plain_relay() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("dir");
    let (a, b, list) = two_certs(&ca, dir.path());
    let server = tcp_echo().await;
    let tls = format!("[listeners.tls]\n{list}\nalpn = [\"h2\", \"http/1.1\"]\n");
    let gh = Gatehouse::start(&config(&tls, server, ""));
    let proxy = gh.addr("t");
    let tls13 = &[&rustls::version::TLS13][..];

    // Exact name, verified with the CA; bytes reach the plain echo server and come back.
    let mut s = handshake(proxy, "a.test", client(&ca, &["h2", "http/1.1"], tls13))
        .await
        .expect("a.test verifies");
    assert_eq!(served(&s), a.der);
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    echo(&mut s, b"over TLS to a plain server").await;

    // Wildcard name; the client's only ALPN protocol is the one chosen.
    let mut s = handshake(proxy, "x.b.test", client(&ca, &["http/1.1"], tls13))
        .await
        .expect("x.b.test verifies");
    assert_eq!(served(&s), b.der);
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    echo(&mut s, b"ping").await;

    // An unknown name gets the default (first) certificate, which the client cannot verify.
    let s = handshake(proxy, "c.test", any_cert_client())
        .await
        .expect("unknown name: default certificate");
    assert_eq!(served(&s), a.der);
    assert!(handshake(proxy, "c.test", client(&ca, &[], tls13))
        .await
        .is_err());
    // So does a name two labels under the wildcard.
    let s = handshake(proxy, "y.x.b.test", any_cert_client())
        .await
        .expect("default certificate");
    assert_eq!(served(&s), a.der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_sni_refuses_unknown_names_and_min_version_refuses_tls12() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("dir");
    let (_, b, list) = two_certs(&ca, dir.path());
    let server = tcp_echo().await;
    let tls = format!("[listeners.tls]\n{list}\nstrict_sni = true\nmin_version = \"1.3\"\n");
    let gh = Gatehouse::start(&config(&tls, server, ""));
    let proxy = gh.addr("t");
    let tls12 = &[&rustls::version::TLS12][..];
    let tls13 = &[&rustls::version::TLS13][..];
    let mut s = handshake(proxy, "z.b.test", client(&ca, &[], tls13))
        .await
        .expect("known name");
    assert_eq!(served(&s), b.der);
    echo(&mut s, b"ok").await;
    assert!(
        handshake(proxy, "c.test", any_cert_client()).await.is_err(),
        "strict_sni: an unknown name gets no certificate"
    );
    assert!(
        handshake(proxy, "z.b.test", client(&ca, &[], tls12))
            .await
            .is_err(),
        "TLS 1.2 refused with min_version = 1.3"
    );

    // Without min_version, TLS 1.2 is served.
    drop(gh);
    let gh = Gatehouse::start(&config(&format!("[listeners.tls]\n{list}\n"), server, ""));
    let mut s = handshake(gh.addr("t"), "z.b.test", client(&ca, &[], tls12))
        .await
        .expect("TLS 1.2 by default");
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    echo(&mut s, b"ok").await;
}

/// A TLS echo server with `leaf`; with `client_ca`, it requires a client certificate.
async fn tls_echo(leaf: &Leaf, client_ca: Option<&Ca>) -> SocketAddr {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der()).expect("root");
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .expect("verifier");
            builder.with_client_cert_verifier(v)
        }
    };
    let config = builder
        .with_single_cert(vec![leaf.der.clone()], leaf.key_der())
        .expect("cert");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(s).await {
                    let (mut r, mut w) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    addr
}

/// Connects through the listener (plain) and says whether the echo came back or the
/// connection was closed.
async fn plain_echo_or_closed(proxy: SocketAddr) -> bool {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    let _ = s.write_all(b"hello").await;
    let mut got = [0u8; 5];
    match tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got)).await {
        Ok(Ok(_)) => {
            assert_eq!(&got, b"hello");
            true
        }
        Ok(Err(_)) => false,
        Err(_) => panic!("neither echo nor close within 10s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypts_to_tls_servers_verified_by_ca_file_and_with_a_client_certificate() {
    let (server_ca, other_ca, client_ca) = (Ca::new(), Ca::new(), Ca::new());
    let dir = tempfile::tempdir().expect("dir");
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let server_ca_file = write("server-ca.pem", server_ca.pem());
    let other_ca_file = write("other-ca.pem", other_ca.pem());
    let backend = tls_echo(&server_ca.leaf(&["backend.test"]), None).await;

    // Verified against the CA file under the configured name.
    let pool =
        format!("[pools.tls]\nca_file = {server_ca_file:?}\nserver_name = \"backend.test\"\n");
    let gh = Gatehouse::start(&config("", backend, &pool));
    assert!(
        plain_echo_or_closed(gh.addr("t")).await,
        "re-encrypted echo"
    );
    drop(gh);

    // The wrong CA: closed, and counted as a connect failure.
    let pool =
        format!("[pools.tls]\nca_file = {other_ca_file:?}\nserver_name = \"backend.test\"\n");
    let gh = Gatehouse::start(&config("", backend, &pool));
    assert!(
        !plain_echo_or_closed(gh.addr("t")).await,
        "wrong CA: closed"
    );
    let line = gh.wait_log("tls_protocol_error");
    assert!(line.contains(" 502 "), "{line}");
    assert_eq!(
        metric(gh.addr("admin"), "gatehouse_listener_connect_errors_total").await,
        Some(1.0)
    );
    assert!(
        metric(gh.addr("admin"), "gatehouse_pool_server_errors_total")
            .await
            .is_some_and(|v| v >= 1.0),
        "counted against the server"
    );
    drop(gh);

    // A server that requires a client certificate: refused without one, served with one.
    let mtls = tls_echo(&server_ca.leaf(&["backend.test"]), Some(&client_ca)).await;
    let pool =
        format!("[pools.tls]\nca_file = {server_ca_file:?}\nserver_name = \"backend.test\"\n");
    let gh = Gatehouse::start(&config("", mtls, &pool));
    assert!(!plain_echo_or_closed(gh.addr("t")).await, "no client cert");
    drop(gh);
    let (cc, ck) = client_ca
        .leaf(&["gatehouse.test"])
        .write(dir.path(), "client");
    let pool = format!(
        "[pools.tls]\nca_file = {server_ca_file:?}\nserver_name = \"backend.test\"\n\
         client_cert = {cc:?}\nclient_key = {ck:?}\n"
    );
    let gh = Gatehouse::start(&config("", mtls, &pool));
    assert!(plain_echo_or_closed(gh.addr("t")).await, "mTLS echo");

    // Terminated and re-encrypted: TLS on both sides.
    let listener = ca_and_listener_cert(dir.path());
    drop(gh);
    let gh = Gatehouse::start(&config(&listener.1, mtls, &pool));
    let mut s = handshake(
        gh.addr("t"),
        "a.test",
        client(&listener.0, &[], &[&rustls::version::TLS13]),
    )
    .await
    .expect("handshake");
    echo(&mut s, b"TLS both ways").await;
}

/// A CA and a one-certificate `tls = {...}` line for `a.test`.
fn ca_and_listener_cert(dir: &Path) -> (Ca, String) {
    let ca = Ca::new();
    let (c, k) = ca.leaf(&["a.test"]).write(dir, "listener");
    (ca, format!("tls = {{ cert = {c:?}, key = {k:?} }}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_new_certificates_to_new_connections_only() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("dir");
    let first = ca.leaf(&["a.test"]);
    let (cert, key) = first.write(dir.path(), "a");
    let server = tcp_echo().await;
    let gh = Gatehouse::start(&config(
        &format!("tls = {{ cert = {cert:?}, key = {key:?} }}"),
        server,
        "",
    ));
    let proxy = gh.addr("t");
    let verified = client(&ca, &[], &[&rustls::version::TLS13]);
    let mut old = handshake(proxy, "a.test", verified.clone())
        .await
        .expect("first");
    assert_eq!(served(&old), first.der);
    echo(&mut old, b"before").await;

    // New files, same paths: a new connection gets the new certificate.
    let second = ca.leaf(&["a.test"]);
    second.write(dir.path(), "a");
    gh.signal("HUP");
    gh.wait_stderr("applied");
    let mut new = handshake(proxy, "a.test", verified.clone())
        .await
        .expect("second");
    assert_eq!(served(&new), second.der);
    echo(&mut new, b"new").await;
    echo(&mut old, b"the established session goes on").await;

    // A bad certificate file: the reload is refused and the second certificate stays.
    std::fs::write(&cert, "not a certificate").expect("write");
    gh.signal("HUP");
    let line = gh.wait_stderr("keeping the running config");
    assert!(!line.is_empty());
    let mut again = handshake(proxy, "a.test", verified).await.expect("third");
    assert_eq!(served(&again), second.der);
    echo(&mut again, b"still").await;
    echo(&mut old, b"and still").await;
}

#[test]
fn check_warns_about_an_unverified_pool() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("g.toml");
    let text = config(
        "",
        "127.0.0.1:1".parse().expect("addr"),
        "[pools.tls]\nverify = false\n",
    );
    std::fs::write(&path, text).expect("write");
    let out = std::process::Command::new(BIN)
        .arg("check")
        .arg(&path)
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning") && err.contains("pools[0].tls.verify"),
        "{err}"
    );

    // A CA file that cannot be read is a check error at its key.
    let text = config(
        "",
        "127.0.0.1:1".parse().expect("addr"),
        "[pools.tls]\nca_file = \"/nonexistent/ca.pem\"\n",
    );
    std::fs::write(&path, text).expect("write");
    let out = std::process::Command::new(BIN)
        .arg("check")
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pools[0].tls.ca_file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_goes_in_the_clear_before_the_servers_tls() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["backend.test"]);
    let server_config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], leaf.key_der())
        .expect("cert");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                // The PROXY v1 line, a byte at a time, so nothing of the handshake is taken.
                let mut line = Vec::new();
                while !line.ends_with(b"\r\n") && line.len() < 108 {
                    let mut b = [0u8; 1];
                    if s.read_exact(&mut b).await.is_err() {
                        return;
                    }
                    line.push(b[0]);
                }
                let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
                if let Ok(tls) = acceptor.accept(s).await {
                    let (mut r, mut w) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    let dir = tempfile::tempdir().expect("dir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write");
    let pool = format!("[pools.tls]\nca_file = {ca_file:?}\nserver_name = \"backend.test\"\n");
    let gh = Gatehouse::start(&config("send_proxy = \"v1\"", backend, &pool));
    assert!(plain_echo_or_closed(gh.addr("t")).await, "echo over TLS");
    let line = rx.recv().await.expect("a PROXY line");
    assert!(
        line.starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 "),
        "{line:?}"
    );
}
