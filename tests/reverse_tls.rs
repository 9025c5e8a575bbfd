//! The reverse proxy over TLS: certificates chosen by SNI reaching each name's pool (curl
//! with `--resolve` and the test CA), 421 when SNI and Host disagree, keep-alive and
//! pipelining over one TLS connection, WebSocket over TLS, certificates reloaded on SIGHUP,
//! and a plain listener redirecting to https. Certificates are made here with rcgen.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{
    self,
    pki_types::{CertificateDer, ServerName},
};

type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // OpenSSL (curl) takes a leaf whose subject equals its issuer for self-signed: the
        // CA and each leaf get names of their own.
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Gatehouse test CA");
        let key = KeyPair::generate().expect("key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("ca"),
        }
    }

    fn leaf(&self, names: &[&str]) -> Leaf {
        let cn = names.first().copied().unwrap_or("leaf");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// Writes the CA certificate as `ca.pem` into `dir`.
    fn write(&self, dir: &Path) -> PathBuf {
        let p = dir.join("ca.pem");
        std::fs::write(&p, self.issuer.pem()).expect("write ca");
        p
    }

    fn client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).expect("root");
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        // These tests speak HTTP/1.1 on the TLS stream (curl negotiates h2 on its own).
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    }
}

impl Leaf {
    fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, &self.cert_pem).expect("write cert");
        std::fs::write(&k, &self.key_pem).expect("write key");
        (c, k)
    }
}

async fn handshake(addr: SocketAddr, name: &str, config: Arc<rustls::ClientConfig>) -> ClientTls {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(name.to_string()).expect("name");
    let connect = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
    tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .expect("handshake in time")
        .expect("handshake")
}

/// A reverse listener `rev` with `extra` keys; virtual hosts `a.test` -> pool a,
/// `b.test` -> pool b.
fn config(extra: &str, a: SocketAddr, b: SocketAddr) -> String {
    format!(
        "[[listeners]]\nname = \"rev\"\nkind = \"reverse\"\nlisten = \"127.0.0.1:0\"\n{extra}\n\
         [[listeners.hosts]]\nnames = [\"a.test\", \"www.a.test\"]\n[[listeners.hosts.routes]]\npool = \"a\"\n\
         [[listeners.hosts]]\nnames = [\"b.test\"]\n[[listeners.hosts.routes]]\npool = \"b\"\n\
         [[pools]]\nname = \"a\"\n[[pools.servers]]\naddress = \"{a}\"\n\
         [[pools]]\nname = \"b\"\n[[pools.servers]]\naddress = \"{b}\"\n"
    )
}

/// Two certificates, `a.test` (+ `www.a.test`) and `b.test`, as a `[listeners.tls]` table.
fn two_certs(ca: &Ca, dir: &Path) -> (Leaf, Leaf, String) {
    let a = ca.leaf(&["a.test", "www.a.test"]);
    let b = ca.leaf(&["b.test"]);
    let (ac, ak) = a.write(dir, "a");
    let (bc, bk) = b.write(dir, "b");
    let table = format!(
        "[listeners.tls]\ncertificates = [{{ cert = {ac:?}, key = {ak:?} }}, {{ cert = {bc:?}, key = {bk:?} }}]\n"
    );
    (a, b, table)
}

/// curl over https to `name` (resolved to the listener), trusting `ca`; extra args first.
/// Returns (exit code, stdout, stderr).
async fn curl_https(
    gh: &Gatehouse,
    ca: &Path,
    name: &str,
    path: &str,
    extra: &[&str],
) -> (i32, String, String) {
    let port = gh.addr("rev").port();
    let resolve = format!("{name}:{port}:127.0.0.1");
    let url = format!("https://{name}:{port}{path}");
    let ca = ca.display().to_string();
    let mut args = vec!["--resolve", &resolve, "--cacert", &ca];
    args.extend_from_slice(extra);
    args.push(&url);
    let (code, out, err) = curl(&args).await;
    (code, String::from_utf8_lossy(&out).into_owned(), err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sni_name_gets_its_certificate_and_its_pool() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("dir");
    let cafile = ca.write(dir.path());
    let (_, _, tls) = two_certs(&ca, dir.path());
    let a = Origin::start(Arc::new(|s: &Seen| {
        let proto = s
            .headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        response(200, &[], format!("from-a {proto}"))
    }))
    .await;
    let b = Origin::fixed("from-b").await;
    let gh = Gatehouse::start(&config(&tls, a.addr, b.addr));
    // curl verifies each name against the certificate it got: each name got its own.
    let (code, out, err) = curl_https(&gh, &cafile, "a.test", "/", &[]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out, "from-a https",
        "the server is told the client used https"
    );
    let (code, out, err) = curl_https(&gh, &cafile, "b.test", "/", &[]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "from-b");
    // ALPN offers h2: curl speaks HTTP/2 (tests/reverse_h2.rs has the rest).
    let (code, out, err) = curl_https(
        &gh,
        &cafile,
        "b.test",
        "/",
        &["--http2", "-w", " %{http_version}"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "from-b 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_other_than_the_sni_is_421_unless_the_certificate_covers_it() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("dir");
    let cafile = ca.write(dir.path());
    let (_, _, tls) = two_certs(&ca, dir.path());
    let a = Origin::fixed("from-a").await;
    let b = Origin::fixed("from-b").await;
    let gh = Gatehouse::start(&config(&tls, a.addr, b.addr));
    let code_of = |extra: &'static [&'static str]| {
        let (gh, cafile) = (&gh, &cafile);
        async move {
            let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}"];
            args.extend_from_slice(extra);
            let (code, out, err) = curl_https(gh, cafile, "a.test", "/", &args).await;
            assert_eq!(code, 0, "{err}");
            out
        }
    };
    assert_eq!(code_of(&["-H", "Host: b.test"]).await, "421");
    assert_eq!(b.connection_count(), 0, "nothing reached b");
    // The a.test certificate lists www.a.test: that connection may serve it.
    assert_eq!(code_of(&["-H", "Host: www.a.test"]).await, "200");
    assert_eq!(code_of(&[]).await, "200");
}

/// Reads one response with a Content-Length body from `s`; returns (head, body).
async fn read_response(s: &mut ClientTls, buf: &mut Vec<u8>) -> (String, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("content-length");
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                buf.drain(..end + 4 + len);
                return (head, body);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_and_pipelining_over_one_tls_connection() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("dir");
    let cafile = ca.write(dir.path());
    let (_, _, tls) = two_certs(&ca, dir.path());
    let a = Origin::start(Arc::new(|s: &Seen| response(200, &[], s.uri.clone()))).await;
    let b = Origin::fixed("from-b").await;
    let gh = Gatehouse::start(&config(&tls, a.addr, b.addr));
    // curl: three URLs, one connection (num_connects 0 after the first).
    let port = gh.addr("rev").port();
    let resolve = format!("a.test:{port}:127.0.0.1");
    let urls: Vec<String> = (1..=3)
        .map(|i| format!("https://a.test:{port}/{i}"))
        .collect();
    let ca_arg = cafile.display().to_string();
    let mut args = vec![
        "--resolve",
        &resolve,
        "--cacert",
        &ca_arg,
        "-w",
        " %{num_connects}\n",
    ];
    args.extend(urls.iter().map(String::as_str));
    let (code, out, err) = curl(&args).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(String::from_utf8_lossy(&out), "/1 1\n/2 0\n/3 0\n");

    // Pipelined: three requests in one write; the later ones wait decrypted inside the TLS
    // session while the first is answered.
    let mut s = handshake(gh.addr("rev"), "a.test", ca.client()).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut reqs = Vec::new();
    for i in 1..=3 {
        reqs.extend_from_slice(format!("GET /p{i} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes());
    }
    s.write_all(&reqs).await.expect("write");
    let mut buf = Vec::new();
    for i in 1..=3 {
        let (head, body) = read_response(&mut s, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, format!("/p{i}"));
    }
    // And after an idle pause, once more on the same connection.
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b"GET /again HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .expect("write");
    let (_, body) = read_response(&mut s, &mut buf).await;
    assert_eq!(body, "/again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_tls() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let ws_addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("dir");
    let (_, _, tls) = two_certs(&ca, dir.path());
    let b = Origin::fixed("from-b").await;
    let gh = Gatehouse::start(&config(&tls, ws_addr, b.addr));
    let s = handshake(gh.addr("rev"), "a.test", ca.client()).await;
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://a.test/chat", s)
        .await
        .expect("handshake through the proxy");
    assert_eq!(resp.status(), 101);
    for msg in ["hello over tls", "second"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg))
            .await
            .expect("send");
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo in time")
            .expect("a message")
            .expect("ok");
        assert_eq!(got.into_text().expect("text").as_str(), msg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_the_new_certificate() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("dir");
    let first = ca.leaf(&["a.test"]);
    let (cert, key) = first.write(dir.path(), "a");
    let a = Origin::fixed("from-a").await;
    let b = Origin::fixed("from-b").await;
    let gh = Gatehouse::start(&config(
        &format!("tls = {{ cert = {cert:?}, key = {key:?} }}"),
        a.addr,
        b.addr,
    ));
    let served = |s: &ClientTls| s.get_ref().1.peer_certificates().expect("certs")[0].clone();
    let s = handshake(gh.addr("rev"), "a.test", ca.client()).await;
    assert_eq!(served(&s), first.der);
    let second = ca.leaf(&["a.test"]);
    second.write(dir.path(), "a");
    gh.signal("HUP");
    gh.wait_stderr("applied");
    let mut s = handshake(gh.addr("rev"), "a.test", ca.client()).await;
    assert_eq!(served(&s), second.der);
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .expect("write");
    let (_, body) = read_response(&mut s, &mut Vec::new()).await;
    assert_eq!(body, "from-a");
}

#[tokio::test]
async fn a_plain_listener_with_redirect_https_answers_308() {
    let a = Origin::fixed("from-a").await;
    let b = Origin::fixed("from-b").await;
    let gh = Gatehouse::start(&config(
        "redirect_https = true\nhttps_port = 8443",
        a.addr,
        b.addr,
    ));
    let (code, out, err) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "-H",
        "Host: a.test:8080",
        &format!("http://{}/x?y=1", gh.addr("rev")),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out),
        "308 https://a.test:8443/x?y=1"
    );
    assert_eq!(a.connection_count(), 0, "nothing went to the pool");
}

/// An HTTPS origin (rustls + hyper) with `leaf`'s certificate answering `over tls` and the
/// path; counts its TLS connections.
async fn tls_origin(leaf: &Leaf) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::Ordering;
    let key = rustls_pemfile::private_key(&mut leaf.key_pem.as_bytes())
        .expect("pem")
        .expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der.clone()], key)
    .expect("cert");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, c) = (acceptor.clone(), c.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body = format!("over tls {}", req.uri().path());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_servers_verified_by_a_ca_file_and_a_wrong_ca_is_502() {
    use std::sync::atomic::Ordering;
    let ca = Ca::new();
    let other = Ca::new();
    let dir = tempfile::tempdir().expect("dir");
    let good_ca = ca.write(dir.path());
    let other_dir = tempfile::tempdir().expect("dir");
    let wrong_ca = other.write(other_dir.path());
    let (origin, conns) = tls_origin(&ca.leaf(&["origin.test"])).await;
    // Two pools over the same server: one trusts its CA, one another CA.
    let gh = Gatehouse::start(&format!(
        "[[listeners]]\nname = \"rev\"\nkind = \"reverse\"\nlisten = \"127.0.0.1:0\"\n\
         [[listeners.hosts]]\nnames = [\"good.test\"]\n[[listeners.hosts.routes]]\npool = \"good\"\n\
         [[listeners.hosts]]\nnames = [\"wrong.test\"]\n[[listeners.hosts.routes]]\npool = \"wrong\"\n\
         [[pools]]\nname = \"good\"\n[[pools.servers]]\naddress = \"{origin}\"\n\
         [pools.tls]\nca_file = {good_ca:?}\nserver_name = \"origin.test\"\n\
         [[pools]]\nname = \"wrong\"\n[[pools.servers]]\naddress = \"{origin}\"\n\
         [pools.tls]\nca_file = {wrong_ca:?}\nserver_name = \"origin.test\"\n"
    ));
    let get = |host: &'static str, path: &'static str| {
        let addr = gh.addr("rev");
        async move {
            let (code, out, err) = curl(&[
                "-H",
                &format!("Host: {host}"),
                "-w",
                " %{http_code}",
                &format!("http://{addr}{path}"),
            ])
            .await;
            assert_eq!(code, 0, "{err}");
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    assert_eq!(get("good.test", "/one").await, "over tls /one 200");
    // The TLS session went back to the idle pool and carries the next request.
    assert_eq!(get("good.test", "/two").await, "over tls /two 200");
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "one TLS connection, reused"
    );
    // The other pool does not take that session: its own handshake fails verification.
    let wrong = get("wrong.test", "/").await;
    assert!(wrong.ends_with(" 502"), "{wrong}");
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "no request reached the server"
    );
}

/// A pool's CA file replaced under the same path is read again by a reload that changes no
/// setting (as nginx and HAProxy do): the pool that failed verification now connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reads_a_replaced_ca_file_of_an_unchanged_pool() {
    let ca = Ca::new();
    let other = Ca::new();
    let dir = tempfile::tempdir().expect("dir");
    let ca_path = other.write(dir.path());
    let (origin, conns) = tls_origin(&ca.leaf(&["origin.test"])).await;
    let config = format!(
        "[[listeners]]\nname = \"rev\"\nkind = \"reverse\"\nlisten = \"127.0.0.1:0\"\n\
         [[listeners.hosts]]\nnames = [\"app.test\"]\n[[listeners.hosts.routes]]\npool = \"web\"\n\
         [[pools]]\nname = \"web\"\n[[pools.servers]]\naddress = \"{origin}\"\n\
         [pools.tls]\nca_file = {ca_path:?}\nserver_name = \"origin.test\"\n"
    );
    let gh = Gatehouse::start(&config);
    let addr = gh.addr("rev");
    let get = || async move {
        let (code, out, err) = curl(&[
            "-H",
            "Host: app.test",
            "-w",
            " %{http_code}",
            &format!("http://{addr}/x"),
        ])
        .await;
        assert_eq!(code, 0, "{err}");
        String::from_utf8_lossy(&out).into_owned()
    };
    let before = get().await;
    assert!(before.ends_with(" 502"), "the wrong CA first: {before}");
    assert!(
        !before.contains(&origin.to_string()) && !before.contains("certificate"),
        "a reverse proxy's 502 names no server: {before}"
    );
    // The same path now holds the CA that signed the server; the config text is the same.
    std::fs::create_dir(dir.path().join("new")).expect("dir");
    let good = ca.write(&dir.path().join("new"));
    std::fs::rename(&good, &ca_path).expect("replace the CA file");
    std::fs::write(gh.config_path(), &config).expect("rewrite config");
    gh.signal("HUP");
    gh.wait_stderr("applied");
    assert_eq!(get().await, "over tls /x 200");
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookies_over_tls_are_secure() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("dir");
    let cafile = ca.write(dir.path());
    let (_, _, tls) = two_certs(&ca, dir.path());
    let a = Origin::fixed("from-a").await;
    let b = Origin::fixed("from-b").await;
    let gh = Gatehouse::start(&format!(
        "{}[pools.sticky]\ncookie = \"SRV\"\n",
        config(&tls, a.addr, b.addr)
    ));
    let (code, out, err) = curl_https(&gh, &cafile, "b.test", "/", &["-i"]).await;
    assert_eq!(code, 0, "{err}");
    let cookie = out
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("a cookie: {out}"));
    assert!(
        cookie.contains("SRV=") && cookie.contains("Secure"),
        "{cookie}"
    );
}
