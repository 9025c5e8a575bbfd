//! HTTP/2 to pool servers (`protocol = "h2"`, h2c with prior knowledge): an origin written
//! with the h2 crate counts its connections. Many requests at once (HTTP/1.1 from curl and
//! HTTP/2 streams) share one upstream connection; trailers reach an HTTP/1.1 client that
//! sent `TE: trailers` (and no other); a server's GOAWAY is followed by a new connection
//! with no failed request; a gRPC server-streaming call from an HTTP/2 client keeps its
//! messages and its `grpc-status` trailer, and a trailers-only error answer too; a server
//! that refuses connections is skipped; over TLS, h2 is chosen by ALPN (a server that does
//! not choose it is a 502); 103 Early Hints and 100-continue reach curl over HTTP/1.1 and
//! HTTP/2; a WebSocket (HTTP/1.1 Upgrade or RFC 8441) to an h2 pool whose server does not
//! announce extended CONNECT gets an HTTP/1.1 connection of its own, over TLS by ALPN
//! `http/1.1`; to an h2c-only server that announces it, an extended CONNECT stream on the
//! server's connection (tungstenite echoing on both ends; also over TLS to a server that
//! offers ALPN `h2` alone), whose stream ends when the client goes away. A drain closes an idle upstream
//! connection with GOAWAY at once (not one with a stream in flight), and so does a reload
//! that removes its server.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use h2::server::SendResponse;
use http::{HeaderMap, HeaderValue, Request, Response};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Barrier, Notify};

/// Concurrent requests the origin holds until all have arrived.
const AT_ONCE: usize = 16;

/// An h2c origin: how many connections it accepted, the `te` fields it saw.
struct H2Origin {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    te_seen: Arc<Mutex<Vec<String>>>,
}

impl H2Origin {
    async fn start() -> H2Origin {
        H2Origin::start_tls(None).await
    }

    /// Over TLS with `tls` (rustls), else h2c.
    async fn start_tls(tls: Option<tokio_rustls::TlsAcceptor>) -> H2Origin {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let te_seen = Arc::new(Mutex::new(Vec::new()));
        let barrier = Arc::new(Barrier::new(AT_ONCE));
        let (a, te) = (accepted.clone(), te_seen.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (barrier, te) = (barrier.clone(), te.clone());
                match &tls {
                    None => {
                        tokio::spawn(serve(tcp, barrier, te));
                    }
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            if let Ok(s) = acceptor.accept(tcp).await {
                                serve(s, barrier, te).await;
                            }
                        });
                    }
                }
            }
        });
        H2Origin {
            addr,
            accepted,
            te_seen,
        }
    }
}

async fn serve<T>(tcp: T, barrier: Arc<Barrier>, te: Arc<Mutex<Vec<String>>>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(mut conn) = h2::server::handshake(tcp).await else {
        return;
    };
    let goaway = Arc::new(Notify::new());
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    let t = req
                        .headers()
                        .get("te")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    te.lock().expect("lock").push(t);
                    tokio::spawn(answer(req, respond, barrier.clone(), goaway.clone()));
                }
                _ => return,
            },
            _ = goaway.notified() => conn.graceful_shutdown(),
        }
    }
}

fn fields(list: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (n, v) in list {
        m.append(*n, HeaderValue::from_static(v));
    }
    m
}

/// A gRPC message: not compressed, its length, the bytes.
fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut out = vec![0u8];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    Bytes::from(out)
}

async fn answer(
    req: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    barrier: Arc<Barrier>,
    goaway: Arc<Notify>,
) {
    let path = req.uri().path().to_string();
    let mut body = req.into_body();
    let mut got = Vec::new();
    while let Some(Ok(d)) = body.data().await {
        let _ = body.flow_control().release_capacity(d.len());
        got.extend_from_slice(&d);
    }
    let ok = |ct: &'static str| {
        let mut r = Response::new(());
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static(ct));
        r
    };
    match path.as_str() {
        "/wait" => {
            barrier.wait().await;
            if let Ok(mut s) = respond.send_response(ok("text/plain"), false) {
                let _ = s.send_data(Bytes::from_static(b"together"), true);
            }
        }
        "/trailers" => {
            if let Ok(mut s) = respond.send_response(ok("text/plain"), false) {
                let _ = s.send_data(Bytes::from_static(b"part1 "), false);
                let _ = s.send_data(Bytes::from_static(b"part2"), false);
                let _ = s.send_trailers(fields(&[("x-checksum", "abc")]));
            }
        }
        "/early" => {
            // 103 Early Hints, then the answer: how many body bytes came.
            let mut hint = Response::new(());
            *hint.status_mut() = http::StatusCode::from_u16(103).expect("103");
            hint.headers_mut().insert(
                "link",
                HeaderValue::from_static("</style.css>; rel=preload; as=style"),
            );
            let _ = respond.send_informational(hint);
            if let Ok(mut s) = respond.send_response(ok("text/plain"), false) {
                let _ = s.send_data(Bytes::from(format!("got {}", got.len())), true);
            }
        }
        "/bye" => {
            if let Ok(mut s) = respond.send_response(ok("text/plain"), false) {
                let _ = s.send_data(Bytes::from_static(b"bye"), true);
            }
            goaway.notify_one();
        }
        "/pkg.Greeter/Stream" => {
            // The request is one message; the answer three, then the status trailer.
            assert_eq!(&got[..], &grpc_frame(b"hi")[..], "request message intact");
            if let Ok(mut s) = respond.send_response(ok("application/grpc"), false) {
                for m in [&b"one"[..], b"two", b"three"] {
                    let _ = s.send_data(grpc_frame(m), false);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = s.send_trailers(fields(&[("grpc-status", "0"), ("grpc-message", "done")]));
            }
        }
        "/pkg.Greeter/Missing" => {
            // Trailers-only: the status in the head, which ends the stream.
            let mut r = ok("application/grpc");
            r.headers_mut()
                .insert("grpc-status", HeaderValue::from_static("12"));
            let _ = respond.send_response(r, true);
        }
        _ => {
            let mut r = Response::new(());
            *r.status_mut() = http::StatusCode::NOT_FOUND;
            let _ = respond.send_response(r, true);
        }
    }
}

/// A reverse listener `rev` (h2c from clients on) -> pool `p` of `protocol = "h2"`.
fn config(origin: SocketAddr) -> String {
    config_with(&[origin])
}

fn config_with(servers: &[SocketAddr]) -> String {
    let mut s = "[[listeners]]\nname = \"rev\"\nkind = \"reverse\"\nlisten = \"127.0.0.1:0\"\n\
         [listeners.http2]\nh2c = true\n\
         [[listeners.hosts]]\nnames = [\"app.test\"]\n[[listeners.hosts.routes]]\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\nprotocol = \"h2\"\n"
        .to_string();
    for a in servers {
        s.push_str(&format!("[[pools.servers]]\naddress = \"{a}\"\n"));
    }
    s
}

/// An h2c connection to the listener.
async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// One request over HTTP/2: (status, head fields, body, trailers).
async fn h2_call(
    send: &h2::client::SendRequest<Bytes>,
    req: Request<()>,
    body: Option<Bytes>,
) -> (u16, HeaderMap, Vec<u8>, Option<HeaderMap>) {
    let mut send = send.clone().ready().await.expect("ready");
    let (resp, mut up) = send
        .send_request(req, body.is_none())
        .expect("send_request");
    if let Some(b) = body {
        up.send_data(b, true).expect("body");
    }
    let resp = resp.await.expect("response");
    let (parts, mut body) = resp.into_parts();
    let mut got = Vec::new();
    while let Some(d) = body.data().await {
        let d = d.expect("data");
        let _ = body.flow_control().release_capacity(d.len());
        got.extend_from_slice(&d);
    }
    let trailers = body.trailers().await.expect("trailers");
    (parts.status.as_u16(), parts.headers, got, trailers)
}

fn get(path: &str) -> Request<()> {
    Request::builder()
        .uri(format!("http://app.test{path}"))
        .body(())
        .expect("request")
}

/// An HTTP/1.1 request on its own connection, the raw response.
/// An HTTP/1.1 WebSocket handshake for `/chat` sent raw to the listener at `rev`: what came
/// back.
async fn websocket_handshake(rev: SocketAddr) -> String {
    raw_get(
        rev,
        "/chat",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    )
    .await
}

async fn raw_get(addr: SocketAddr, path: &str, extra: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n{extra}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_upstream_connection() {
    let origin = H2Origin::start().await;
    let gh = Gatehouse::start(&config(origin.addr));
    let addr = gh.addr("rev");
    let url = format!("http://app.test:{}/wait", addr.port());
    let resolve = format!("app.test:{}:127.0.0.1", addr.port());
    let client = h2_client(addr).await;
    let mut all = tokio::task::JoinSet::new();
    // Half over HTTP/1.1 (curl, one connection each), half as streams of one HTTP/2
    // connection: the origin answers none until all are in flight.
    for n in 0..AT_ONCE {
        if n % 2 == 0 {
            let (url, resolve) = (url.clone(), resolve.clone());
            all.spawn(async move {
                let (code, out, err) = curl(&["-s", "--resolve", &resolve, &url]).await;
                assert_eq!(code, 0, "{err}");
                String::from_utf8_lossy(&out).into_owned()
            });
        } else {
            let client = client.clone();
            all.spawn(async move {
                let (status, _, body, _) = h2_call(&client, get("/wait"), None).await;
                assert_eq!(status, 200);
                String::from_utf8_lossy(&body).into_owned()
            });
        }
    }
    let answers = tokio::time::timeout(Duration::from_secs(30), all.join_all())
        .await
        .expect("all answered: they were in flight together");
    assert!(answers.iter().all(|a| a == "together"), "{answers:?}");
    assert_eq!(origin.accepted.load(Ordering::SeqCst), 1, "one connection");
    let te = origin.te_seen.lock().expect("lock").clone();
    assert!(te.iter().all(|t| t == "trailers"), "{te:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_reach_http11_clients_that_ask_and_goaway_is_survived() {
    let origin = H2Origin::start().await;
    let gh = Gatehouse::start(&config(origin.addr));
    let addr = gh.addr("rev");
    let with = raw_get(addr, "/trailers", "TE: trailers\r\n").await;
    assert!(with.starts_with("HTTP/1.1 200"), "{with}");
    assert!(
        with.contains("Transfer-Encoding: chunked") || with.contains("transfer-encoding: chunked"),
        "{with}"
    );
    assert!(with.ends_with("0\r\nx-checksum: abc\r\n\r\n"), "{with:?}");
    let without = raw_get(addr, "/trailers", "").await;
    assert!(without.contains("part1 "), "{without}");
    assert!(
        without.ends_with("0\r\n\r\n"),
        "trailers dropped: {without:?}"
    );
    assert_eq!(origin.accepted.load(Ordering::SeqCst), 1);

    // The server says GOAWAY after answering: the next requests go on a new connection.
    let bye = raw_get(addr, "/bye", "").await;
    assert!(
        bye.starts_with("HTTP/1.1 200") && bye.contains("\r\nbye\r\n"),
        "{bye}"
    );
    for _ in 0..5 {
        let r = raw_get(addr, "/trailers", "").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    assert_eq!(
        origin.accepted.load(Ordering::SeqCst),
        2,
        "one new connection"
    );
    let missing = raw_get(addr, "/nothing", "").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_server_streaming_keeps_messages_and_status() {
    let origin = H2Origin::start().await;
    let gh = Gatehouse::start(&config(origin.addr));
    let client = h2_client(gh.addr("rev")).await;
    let call = |path: &str| {
        Request::builder()
            .method("POST")
            .uri(format!("http://app.test{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request")
    };
    let (status, head, body, trailers) = h2_call(
        &client,
        call("/pkg.Greeter/Stream"),
        Some(grpc_frame(b"hi")),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(head["content-type"], "application/grpc");
    let want: Vec<u8> = [&b"one"[..], b"two", b"three"]
        .iter()
        .flat_map(|m| grpc_frame(m).to_vec())
        .collect();
    assert_eq!(body, want, "three messages in order");
    let t = trailers.expect("trailers");
    assert_eq!(t["grpc-status"], "0");
    assert_eq!(t["grpc-message"], "done");

    let (status, head, body, _) = h2_call(
        &client,
        call("/pkg.Greeter/Missing"),
        Some(grpc_frame(b"hi")),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(head["grpc-status"], "12", "trailers-only answer: {head:?}");
    assert!(body.is_empty());
    assert_eq!(origin.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_connections_is_skipped() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let origin = H2Origin::start().await;
    let gh = Gatehouse::start(&config_with(&[dead, origin.addr]));
    let addr = gh.addr("rev");
    for _ in 0..4 {
        let r = raw_get(addr, "/trailers", "").await;
        assert!(
            r.starts_with("HTTP/1.1 200"),
            "retried on the live server: {r}"
        );
    }
    assert_eq!(origin.accepted.load(Ordering::SeqCst), 1);
}

/// A CA file in `dir` and a TLS acceptor for `origin.test` signed by it, offering `alpn`.
fn tls_acceptor(
    dir: &std::path::Path,
    alpn: &[&[u8]],
) -> (std::path::PathBuf, tokio_rustls::TlsAcceptor) {
    let pki = test_pki("origin.test");
    let cafile = dir.join("ca.pem");
    std::fs::write(&cafile, &pki.ca_pem).expect("write");
    let key = rustls_pemfile::private_key(&mut pki.key_pem.as_bytes())
        .expect("pem")
        .expect("key");
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![pki.leaf_der], key)
    .expect("cert");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (cafile, tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_is_chosen_by_alpn() {
    let dir = tempfile::tempdir().expect("dir");
    let (cafile, acceptor) = tls_acceptor(dir.path(), &[b"h2"]);
    let origin = H2Origin::start_tls(Some(acceptor)).await;
    let other = tempfile::tempdir().expect("dir");
    let (_, http11_only) = tls_acceptor(other.path(), &[]);
    let old = H2Origin::start_tls(Some(http11_only)).await;
    // Pool `p` speaks h2 to the h2 origin; pool `q` to an origin with no ALPN.
    let gh = Gatehouse::start(&format!(
        "[[listeners]]\nname = \"rev\"\nkind = \"reverse\"\nlisten = \"127.0.0.1:0\"\n\
         [[listeners.hosts]]\nnames = [\"app.test\"]\n[[listeners.hosts.routes]]\npool = \"p\"\n\
         [[listeners.hosts]]\nnames = [\"old.test\"]\n[[listeners.hosts.routes]]\npool = \"q\"\n\
         [[pools]]\nname = \"p\"\nprotocol = \"h2\"\n[[pools.servers]]\naddress = \"{}\"\n\
         [pools.tls]\nca_file = {cafile:?}\nserver_name = \"origin.test\"\n\
         [[pools]]\nname = \"q\"\nprotocol = \"h2\"\n[[pools.servers]]\naddress = \"{}\"\n\
         [pools.tls]\nverify = false\n",
        origin.addr, old.addr
    ));
    let addr = gh.addr("rev");
    for _ in 0..3 {
        let r = raw_get(addr, "/trailers", "TE: trailers\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.ends_with("0\r\nx-checksum: abc\r\n\r\n"), "{r:?}");
    }
    assert_eq!(
        origin.accepted.load(Ordering::SeqCst),
        1,
        "one TLS connection"
    );
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: old.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let r = String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned();
    assert!(r.starts_with("HTTP/1.1 502"), "no h2 by ALPN: {r}");
    // The reason is in the log, not in the answer: a reverse proxy names no server.
    assert!(
        !r.contains("ALPN") && !r.contains(&old.addr.to_string()),
        "{r}"
    );
    gh.wait_stderr("ALPN");
}

/// curl's `-D -` output: each response head in order (1xx and final), as status lines and
/// fields, then the body.
async fn curl_heads(args: &[&str]) -> String {
    let mut all = vec!["-s", "-D", "-"];
    all.extend_from_slice(args);
    let (code, out, err) = curl(&all).await;
    assert_eq!(code, 0, "{err}");
    String::from_utf8_lossy(&out).replace("\r\n", "\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_hints_and_100_continue_reach_http11_and_h2_clients() {
    let origin = H2Origin::start().await;
    let gh = Gatehouse::start(&config(origin.addr));
    let url = format!("http://app.test:{}/early", gh.addr("rev").port());
    let resolve = format!("app.test:{}:127.0.0.1", gh.addr("rev").port());
    let r = ["--resolve", resolve.as_str()];

    // HTTP/1.1: the 103 head, its Link field, then the 200.
    let out = curl_heads(&[r[0], r[1], "--http1.1", &url]).await;
    let hint = out.find("HTTP/1.1 103 Early Hints\n").expect(&out);
    let link = out
        .find("link: </style.css>; rel=preload; as=style\n")
        .expect(&out);
    let ok = out.find("HTTP/1.1 200").expect(&out);
    assert!(hint < link && link < ok, "{out}");
    assert!(out.ends_with("got 0"), "{out}");

    // HTTP/2 (prior knowledge): an informational HEADERS frame before the final one.
    let out = curl_heads(&[r[0], r[1], "--http2-prior-knowledge", &url]).await;
    let hint = out.find("HTTP/2 103 \n").expect(&out);
    let link = out
        .find("link: </style.css>; rel=preload; as=style\n")
        .expect(&out);
    let ok = out.find("HTTP/2 200").expect(&out);
    assert!(hint < link && link < ok, "{out}");

    // Expect: 100-continue: the client gets 100 and sends its body; the 103 follows.
    let body = "x".repeat(100_000);
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let out = curl_heads(&[
            r[0],
            r[1],
            version,
            "--expect100-timeout",
            "30",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            &body,
            &url,
        ])
        .await;
        let cont = out.find(" 100").expect(&out);
        let hint = out.find(" 103").expect(&out);
        assert!(cont < hint, "{out}");
        assert!(out.ends_with("got 100000"), "{version}: {out}");
    }
}

/// An origin that speaks h2c (prior knowledge) and, to a connection that does not open with
/// the preface, HTTP/1.1 WebSocket (tungstenite echo); over TLS with `tls`, h2 or WebSocket
/// as ALPN chose: (address, h2 connections, WebSocket connections).
async fn h2_and_websocket_origin(
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (h2n, wsn) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (h, w) = (h2n.clone(), wsn.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (h, w, tls) = (h.clone(), w.clone(), tls.clone());
            tokio::spawn(async move {
                let Some(acceptor) = tls else {
                    let mut first = [0u8; 3];
                    while tcp.peek(&mut first).await.unwrap_or(0) < 3 {
                        tcp.readable().await.expect("readable");
                    }
                    return h2_or_websocket(tcp, &first == b"PRI", h, w).await;
                };
                let Ok(t) = acceptor.accept(tcp).await else {
                    return;
                };
                let h2 = t.get_ref().1.alpn_protocol() == Some(&b"h2"[..]);
                h2_or_websocket(t, h2, h, w).await
            });
        }
    });
    (addr, h2n, wsn)
}

async fn h2_or_websocket<T>(io: T, h2: bool, h: Arc<AtomicUsize>, w: Arc<AtomicUsize>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    if h2 {
        h.fetch_add(1, Ordering::SeqCst);
        let te = Arc::new(Mutex::new(Vec::new()));
        return serve(io, Arc::new(Barrier::new(1)), te).await;
    }
    w.fetch_add(1, Ordering::SeqCst);
    let Ok(mut ws) = tokio_tungstenite::accept_async(io).await else {
        return;
    };
    while let Some(Ok(m)) = ws.next().await {
        if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
            return;
        }
    }
}

/// A WebSocket through the listener at `rev` with tungstenite's client (HTTP/1.1 Upgrade),
/// `n` messages echoed.
async fn websocket_echo(rev: SocketAddr, n: usize) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let tcp = TcpStream::connect(rev).await.expect("connect");
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://app.test/chat", tcp)
        .await
        .expect("handshake through the proxy");
    assert_eq!(resp.status(), 101);
    for i in 0..n {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.expect("send");
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("echo in time")
            .expect("open")
            .expect("message");
        assert_eq!(m, Message::text(text));
    }
    ws.close(None).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_to_an_h2_pool_goes_over_http11() {
    let (origin, h2n, wsn) = h2_and_websocket_origin(None).await;
    let gh = Gatehouse::start(&config(origin));
    let rev = gh.addr("rev");

    // A plain request goes over HTTP/2.
    let send = h2_client(rev).await;
    let (status, _, body, _) = h2_call(&send, get("/early"), None).await;
    assert_eq!((status, &body[..]), (200, &b"got 0"[..]));
    assert_eq!(h2n.load(Ordering::SeqCst), 1);

    // An HTTP/1.1 Upgrade (tungstenite's client): its own HTTP/1.1 connection, and the echo.
    websocket_echo(rev, 20).await;
    assert_eq!(wsn.load(Ordering::SeqCst), 1);

    // RFC 8441 from an HTTP/2 client: the same HTTP/1.1 handshake to the server.
    let mut ready = send.clone().ready().await.expect("ready");
    let req = http::Request::builder()
        .method("CONNECT")
        .uri("http://app.test/chat")
        .header("sec-websocket-version", "13")
        .extension(h2::ext::Protocol::from("websocket"))
        .body(())
        .expect("request");
    let (resp, mut up) = ready.send_request(req, false).expect("extended CONNECT");
    let resp = resp.await.expect("response");
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
    let mut down = resp.into_body();
    // A masked text frame "hello" (RFC 6455 section 5.2); the echo comes unmasked.
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x81, 0x80 | 5];
    f.extend_from_slice(&mask);
    f.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    up.send_data(Bytes::from(f), false).expect("send");
    let mut got = Vec::new();
    while got.len() < 7 {
        let d = tokio::time::timeout(Duration::from_secs(10), down.data())
            .await
            .expect("echo in time")
            .expect("open")
            .expect("data");
        let _ = down.flow_control().release_capacity(d.len());
        got.extend_from_slice(&d);
    }
    assert_eq!(got, b"\x81\x05hello");
    assert_eq!(wsn.load(Ordering::SeqCst), 2);
    // Still one HTTP/2 connection to the server for everything else.
    let (status, _, _, _) = h2_call(&send, get("/early"), None).await;
    assert_eq!(status, 200);
    assert_eq!(h2n.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_to_an_h2_pool_over_tls_asks_for_http11_by_alpn() {
    let dir = tempfile::tempdir().expect("dir");
    let (cafile, acceptor) = tls_acceptor(dir.path(), &[b"h2", b"http/1.1"]);
    let (origin, h2n, wsn) = h2_and_websocket_origin(Some(acceptor)).await;
    let gh = Gatehouse::start(&format!(
        "[[listeners]]\nname = \"rev\"\nkind = \"reverse\"\nlisten = \"127.0.0.1:0\"\n\
         [[listeners.hosts]]\nnames = [\"app.test\"]\n[[listeners.hosts.routes]]\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\nprotocol = \"h2\"\n[[pools.servers]]\naddress = \"{origin}\"\n\
         [pools.tls]\nca_file = {cafile:?}\nserver_name = \"origin.test\"\n"
    ));
    let rev = gh.addr("rev");
    let r = raw_get(rev, "/early", "").await;
    assert!(r.starts_with("HTTP/1.1 103"), "{r}");
    assert_eq!(h2n.load(Ordering::SeqCst), 1, "h2 chosen by ALPN");
    websocket_echo(rev, 5).await;
    assert_eq!(wsn.load(Ordering::SeqCst), 1, "http/1.1 chosen by ALPN");
    assert_eq!(h2n.load(Ordering::SeqCst), 1);
}

/// An h2c-only origin (no HTTP/1.1 at all, as a tonic server): a GET gets `200 ok`; with
/// `connect_protocol` it announces `SETTINGS_ENABLE_CONNECT_PROTOCOL` and an RFC 8441
/// extended CONNECT for `websocket` gets 200 and a tungstenite echo on the stream:
/// (address, connections, WebSocket streams, notified as a connection ends).
async fn h2c_websocket_origin(
    connect_protocol: bool,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<Notify>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (conns, streams) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let ended = Arc::new(Notify::new());
    let (c, w, e) = (conns.clone(), streams.clone(), ended.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let (w, e) = (w.clone(), e.clone());
            tokio::spawn(async move {
                serve_websockets(tcp, connect_protocol, w).await;
                e.notify_one();
            });
        }
    });
    (addr, conns, streams, ended)
}

async fn serve_websockets<T>(tcp: T, connect_protocol: bool, w: Arc<AtomicUsize>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut b = h2::server::Builder::new();
    if connect_protocol {
        b.enable_connect_protocol();
    }
    let Ok(mut conn) = b.handshake::<_, Bytes>(tcp).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let ws = req.method() == http::Method::CONNECT
            && req
                .extensions()
                .get::<h2::ext::Protocol>()
                .is_some_and(|p| p.as_str() == "websocket");
        if !ws {
            let mut send = respond
                .send_response(Response::new(()), false)
                .expect("respond");
            let _ = send.send_data(Bytes::from_static(b"ok"), true);
            continue;
        }
        w.fetch_add(1, Ordering::SeqCst);
        assert!(req.headers().get("sec-websocket-key").is_none());
        let mut ok = Response::new(());
        if let Some(p) = req.headers().get("sec-websocket-protocol") {
            ok.headers_mut().insert("sec-websocket-protocol", p.clone());
        }
        let send = respond.send_response(ok, false).expect("200");
        let io = bridge(send, req.into_body());
        tokio::spawn(echo(io));
    }
}

/// A WebSocket echo (tungstenite, server role) on an already open stream.
async fn echo(io: tokio::io::DuplexStream) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    while let Some(Ok(m)) = ws.next().await {
        if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
            return;
        }
    }
}

/// One HTTP/2 stream as a byte stream: its DATA both ways through an in-memory pipe.
fn bridge(mut send: h2::SendStream<Bytes>, mut recv: h2::RecvStream) -> tokio::io::DuplexStream {
    use tokio::io::AsyncReadExt;
    let (near, far) = tokio::io::duplex(64 * 1024);
    let (mut rd, mut wr) = tokio::io::split(far);
    tokio::spawn(async move {
        while let Some(Ok(d)) = recv.data().await {
            let _ = recv.flow_control().release_capacity(d.len());
            if wr.write_all(&d).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = rd.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            send.reserve_capacity(n);
            let mut data = Bytes::copy_from_slice(&buf[..n]);
            while !data.is_empty() {
                match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                    Some(Ok(c)) if c > 0 => {
                        let piece = data.split_to(c.min(data.len()));
                        if send.send_data(piece, false).is_err() {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                }
            }
        }
    });
    near
}

/// `n` text messages echoed on an open WebSocket, then a close.
async fn echo_messages<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, n: usize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    echo_messages_open(ws, n).await;
    ws.close(None).await.expect("close");
}

/// `n` text messages echoed on an open WebSocket.
async fn echo_messages_open<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, n: usize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    for i in 0..n {
        let text = format!("message {i} {}", "x".repeat(i * 100));
        ws.send(Message::text(text.clone())).await.expect("send");
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("echo in time")
            .expect("open")
            .expect("message");
        assert_eq!(m, Message::text(text));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_to_an_h2c_only_server_goes_as_extended_connect() {
    let (origin, conns, streams, _) = h2c_websocket_origin(true).await;
    let gh = Gatehouse::start(&config(origin));
    let rev = gh.addr("rev");

    // An HTTP/1.1 Upgrade first (no connection to the server yet): tungstenite's client
    // checks the Sec-WebSocket-Accept made for its key, and the subprotocol comes back.
    let tcp = TcpStream::connect(rev).await.expect("connect");
    let req = http::Request::builder()
        .uri("ws://app.test/chat")
        .header("host", "app.test")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "chat.v1")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .body(())
        .expect("request");
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("handshake through the proxy");
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat.v1");
    echo_messages(&mut ws, 30).await;
    assert_eq!(streams.load(Ordering::SeqCst), 1);

    // A plain request shares the server's one connection.
    let send = h2_client(rev).await;
    let (status, _, body, _) = h2_call(&send, get("/"), None).await;
    assert_eq!((status, &body[..]), (200, &b"ok"[..]));

    // RFC 8441 from an HTTP/2 client, end to end: tungstenite (client role) on the stream.
    let mut ready = send.clone().ready().await.expect("ready");
    let req = http::Request::builder()
        .method("CONNECT")
        .uri("http://app.test/chat")
        .header("sec-websocket-version", "13")
        .extension(h2::ext::Protocol::from("websocket"))
        .body(())
        .expect("request");
    let (resp, up) = ready.send_request(req, false).expect("extended CONNECT");
    let resp = resp.await.expect("response");
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
    assert!(resp.headers().get("sec-websocket-accept").is_none());
    let io = bridge(up, resp.into_body());
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        io,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    echo_messages(&mut ws, 30).await;
    assert_eq!(streams.load(Ordering::SeqCst), 2);
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "one HTTP/2 connection for all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_to_an_h2c_only_server_without_extended_connect_is_a_502() {
    let (origin, conns, streams, _) = h2c_websocket_origin(false).await;
    let gh = Gatehouse::start(&config(origin));
    let rev = gh.addr("rev");
    // The server did not announce SETTINGS_ENABLE_CONNECT_PROTOCOL: HTTP/1.1 is tried on a
    // connection of its own, which an h2c-only server does not speak.
    let r = websocket_handshake(rev).await;
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
    assert_eq!(streams.load(Ordering::SeqCst), 0);
    assert_eq!(conns.load(Ordering::SeqCst), 2, "HTTP/2, then HTTP/1.1");
    // Plain requests still go over the HTTP/2 connection.
    let r = raw_get(rev, "/", "").await;
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("\r\nok\r\n"),
        "{r}"
    );
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

/// `websocket = "h1"`: a WebSocket to an `h2` pool goes as an HTTP/1.1 Upgrade on a
/// connection of its own even to a server that announced extended CONNECT (this one speaks
/// only h2c, so that connection fails: 502, and no WebSocket stream was asked for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_h1_never_uses_extended_connect() {
    let (origin, conns, streams, _) = h2c_websocket_origin(true).await;
    let cfg = config(origin).replace(
        "protocol = \"h2\"\n",
        "protocol = \"h2\"\nwebsocket = \"h1\"\n",
    );
    let gh = Gatehouse::start(&cfg);
    let rev = gh.addr("rev");
    // The HTTP/2 connection first (a plain request), so the server's SETTINGS are known.
    let r = raw_get(rev, "/", "").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = websocket_handshake(rev).await;
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
    assert_eq!(streams.load(Ordering::SeqCst), 0, "no extended CONNECT");
    assert_eq!(conns.load(Ordering::SeqCst), 2, "HTTP/2, then HTTP/1.1");
}

/// `websocket = "h2"`: a server that did not announce extended CONNECT gets no WebSocket at
/// all (502 at once), not an HTTP/1.1 Upgrade (which this server would have taken: see
/// `websocket_to_an_h2_pool_goes_over_http11`); plain requests still go over HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_h2_refuses_a_server_without_extended_connect() {
    let (origin, h2n, wsn) = h2_and_websocket_origin(None).await;
    let cfg = config(origin).replace(
        "protocol = \"h2\"\n",
        "protocol = \"h2\"\nwebsocket = \"h2\"\n",
    );
    let gh = Gatehouse::start(&cfg);
    let rev = gh.addr("rev");
    for warm in [false, true] {
        // Before any connection to the server (the one opened for the WebSocket tells), and
        // with its connection up.
        let r = websocket_handshake(rev).await;
        assert!(r.starts_with("HTTP/1.1 502"), "warm {warm}: {r}");
        assert_eq!(wsn.load(Ordering::SeqCst), 0, "no HTTP/1.1 Upgrade");
    }
    let r = raw_get(rev, "/early", "").await;
    assert!(r.contains("got 0"), "{r}");
    assert_eq!(h2n.load(Ordering::SeqCst), 1, "one HTTP/2 connection");
}

/// A TCP stream that keeps every byte the client sent.
struct Tap {
    io: TcpStream,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl tokio::io::AsyncRead for Tap {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &r {
            let got = buf.filled()[before..].to_vec();
            self.seen.lock().expect("lock").extend_from_slice(&got);
        }
        r
    }
}

impl tokio::io::AsyncWrite for Tap {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Whether the client's bytes (preface, then frames) hold a GOAWAY with `NO_ERROR`.
fn goaway_no_error(bytes: &[u8]) -> bool {
    let mut rest = bytes.get(24..).unwrap_or_default();
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let Some(payload) = rest.get(9..9 + len) else {
            return false;
        };
        if rest[3] == 7 && payload.len() >= 8 && payload[4..8] == [0, 0, 0, 0] {
            return true;
        }
        rest = &rest[9 + len..];
    }
    false
}

/// An h2c origin that watches its connections: `GET /hold` is answered only after
/// `release` (and says `held` when it arrives), anything else `ok`; each connection's
/// client bytes land in `closed` once it ends.
struct Watched {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<Mutex<Vec<Vec<u8>>>>,
    ended: Arc<Notify>,
    held: Arc<Notify>,
    release: Arc<Notify>,
}

impl Watched {
    async fn start() -> Watched {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let w = Watched {
            addr: l.local_addr().expect("addr"),
            accepted: Arc::default(),
            closed: Arc::default(),
            ended: Arc::default(),
            held: Arc::default(),
            release: Arc::default(),
        };
        let (accepted, closed, ended) = (w.accepted.clone(), w.closed.clone(), w.ended.clone());
        let (held, release) = (w.held.clone(), w.release.clone());
        tokio::spawn(async move {
            while let Ok((io, _)) = l.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let seen = Arc::new(Mutex::new(Vec::new()));
                let tap = Tap {
                    io,
                    seen: seen.clone(),
                };
                let (closed, ended) = (closed.clone(), ended.clone());
                let (held, release) = (held.clone(), release.clone());
                tokio::spawn(async move {
                    if let Ok(mut conn) = h2::server::handshake(tap).await {
                        while let Some(Ok((req, mut respond))) = conn.accept().await {
                            let (held, release) = (held.clone(), release.clone());
                            tokio::spawn(async move {
                                if req.uri().path() == "/hold" {
                                    held.notify_one();
                                    release.notified().await;
                                }
                                let Ok(mut send) = respond.send_response(Response::new(()), false)
                                else {
                                    return;
                                };
                                let _ = send.send_data(Bytes::from_static(b"ok"), true);
                            });
                        }
                    }
                    let bytes = seen.lock().expect("lock").clone();
                    closed.lock().expect("lock").push(bytes);
                    ended.notify_one();
                });
            }
        });
        w
    }

    /// Waits (10 s at most) for a connection to end; its client's bytes.
    async fn next_closed(&self) -> Vec<u8> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(b) = self.closed.lock().expect("lock").pop() {
                    return b;
                }
                self.ended.notified().await;
            }
        })
        .await
        .expect("the connection closed in time")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_closes_idle_upstream_connections_with_goaway() {
    let (idle, busy) = (Watched::start().await, Watched::start().await);
    let gh = Gatehouse::start(&format!(
        "[[listeners]]\nname = \"rev\"\nkind = \"reverse\"\nlisten = \"127.0.0.1:0\"\n\
         [[listeners.hosts]]\nnames = [\"app.test\"]\n\
         [[listeners.hosts.routes]]\npath = \"/hold\"\npool = \"q\"\n\
         [[listeners.hosts.routes]]\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\nprotocol = \"h2\"\n[[pools.servers]]\naddress = \"{}\"\n\
         [[pools]]\nname = \"q\"\nprotocol = \"h2\"\n[[pools.servers]]\naddress = \"{}\"\n",
        idle.addr, busy.addr
    ));
    let mut gh = gh;
    let rev = gh.addr("rev");
    let r = raw_get(rev, "/", "").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // A request in flight on the other server keeps the proxy running while it drains.
    let held = busy.held.notified();
    let hold = tokio::spawn(raw_get(rev, "/hold", ""));
    held.await;
    gh.signal("TERM");
    // The idle connection is closed at once, with GOAWAY NO_ERROR...
    let bytes = idle.next_closed().await;
    assert!(goaway_no_error(&bytes), "no GOAWAY in {bytes:?}");
    // ... the busy one is not while its stream is in flight, and the stream finishes.
    assert!(busy.closed.lock().expect("lock").is_empty());
    busy.release.notify_one();
    let r = tokio::time::timeout(Duration::from_secs(10), hold)
        .await
        .expect("answered in time")
        .expect("task");
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("\r\nok\r\n"),
        "{r}"
    );
    assert!(gh.wait_exit(Duration::from_secs(10)).is_some(), "exits");
    assert_eq!(idle.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_a_server_closes_its_connection() {
    let (gone, kept) = (Watched::start().await, Watched::start().await);
    let rr = |servers: &[SocketAddr]| {
        config_with(servers).replace(
            "protocol = \"h2\"\n",
            "protocol = \"h2\"\nalgorithm = \"round-robin\"\n",
        )
    };
    let both = rr(&[gone.addr, kept.addr]);
    let gh = Gatehouse::start(&both);
    let rev = gh.addr("rev");
    for _ in 0..4 {
        let r = raw_get(rev, "/", "").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    assert_eq!(gone.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(kept.accepted.load(Ordering::SeqCst), 1);
    std::fs::write(gh.config_path(), rr(&[kept.addr])).expect("rewrite config");
    gh.signal("HUP");
    gh.wait_stderr("applied");
    // The removed server's connection closes (GOAWAY NO_ERROR) while the proxy runs on.
    let bytes = gone.next_closed().await;
    assert!(goaway_no_error(&bytes), "no GOAWAY in {bytes:?}");
    for _ in 0..4 {
        let r = raw_get(rev, "/", "").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    // The server that stays keeps its one connection.
    assert_eq!(kept.accepted.load(Ordering::SeqCst), 1);
    assert!(kept.closed.lock().expect("lock").is_empty());
    assert_eq!(gone.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_gone_from_the_client_frees_its_upstream_stream() {
    use futures_util::SinkExt;
    let (origin, conns, streams, ended) = h2c_websocket_origin(true).await;
    let gh = Gatehouse::start(&config(origin).replace(
        "[listeners.http2]",
        "idle_timeout = \"300ms\"\n[listeners.http2]",
    ));
    let rev = gh.addr("rev");
    let tcp = TcpStream::connect(rev).await.expect("connect");
    let (mut ws, _) = tokio_tungstenite::client_async("ws://app.test/chat", tcp)
        .await
        .expect("handshake through the proxy");
    echo_messages_open(&mut ws, 3).await;
    // The client vanishes without a close handshake: the stream ends, and with no stream
    // left the idle connection closes.
    let _ = ws.flush().await;
    drop(ws);
    tokio::time::timeout(Duration::from_secs(10), ended.notified())
        .await
        .expect("the upstream connection closed once the WebSocket was gone");
    assert_eq!(streams.load(Ordering::SeqCst), 1);
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_to_an_h2_only_server_over_tls_goes_as_extended_connect() {
    // The server offers ALPN `h2` alone: the WebSocket's connection must ask for it.
    let dir = tempfile::tempdir().expect("dir");
    let (cafile, acceptor) = tls_acceptor(dir.path(), &[b"h2"]);
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let origin = l.local_addr().expect("addr");
    let streams = Arc::new(AtomicUsize::new(0));
    let w = streams.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (acceptor, w) = (acceptor.clone(), w.clone());
            tokio::spawn(async move {
                if let Ok(t) = acceptor.accept(tcp).await {
                    serve_websockets(t, true, w).await;
                }
            });
        }
    });
    let gh = Gatehouse::start(&format!(
        "[[listeners]]\nname = \"rev\"\nkind = \"reverse\"\nlisten = \"127.0.0.1:0\"\n\
         [[listeners.hosts]]\nnames = [\"app.test\"]\n[[listeners.hosts.routes]]\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\nprotocol = \"h2\"\n[[pools.servers]]\naddress = \"{origin}\"\n\
         [pools.tls]\nca_file = {cafile:?}\nserver_name = \"origin.test\"\n"
    ));
    websocket_echo(gh.addr("rev"), 10).await;
    assert_eq!(streams.load(Ordering::SeqCst), 1);
}
