//! gRPC through the reverse proxy with tonic at both ends: a tonic server (h2c) behind a pool
//! of `protocol = "h2"`, a tonic client in front over h2c with prior knowledge and over TLS
//! (ALPN `h2`). Unary, server streaming, client streaming and bidirectional streaming with
//! many messages (more than the flow-control windows hold), bidi ping-pong one message at a
//! time (nothing buffered whole), error statuses with `grpc-status`, `grpc-message` and
//! custom trailing metadata (trailers-only and after messages), initial metadata, a
//! deadline (`grpc-timeout`) that reaches the server, a call past it ended at the server too,
//! and a server that answers before reading the whole request body and then resets with
//! NO_ERROR (the answer reaches the client).
//!
//! The messages are hand-written `prost::Message` structs and the service is routed by
//! hand on `tonic::server::Grpc`, so no protoc or build script is needed.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::stream::{self, Stream, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::{self, pki_types::ServerName};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use common::*;

#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(uint64, tag = "1")]
    n: u64,
    #[prost(string, tag = "2")]
    text: String,
    #[prost(bytes = "vec", tag = "3")]
    blob: Vec<u8>,
}

fn msg(n: u64, text: &str, blob: Vec<u8>) -> Msg {
    Msg {
        n,
        text: text.to_string(),
        blob,
    }
}

/// The bytes of message `i`: 600 to 1,800 bytes of a pattern that depends on `i`.
fn blob(i: u64) -> Vec<u8> {
    pattern(i as u32, 600 + (i % 7) as usize * 200).to_vec()
}

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;
type BoxFut<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// The test service `gh.test.Calc`, routed by path the way tonic's generated code does.
#[derive(Clone)]
struct Calc;

impl tonic::server::NamedService for Calc {
    const NAME: &'static str = "gh.test.Calc";
}

impl tower::Service<http::Request<tonic::body::Body>> for Calc {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFut<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let path = req.uri().path().to_string();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
            Ok(match path.as_str() {
                "/gh.test.Calc/Echo" => grpc.unary(tower::service_fn(echo), req).await,
                "/gh.test.Calc/Count" => grpc.server_streaming(tower::service_fn(count), req).await,
                "/gh.test.Calc/Sum" => grpc.client_streaming(tower::service_fn(sum), req).await,
                "/gh.test.Calc/Chat" => grpc.streaming(tower::service_fn(chat), req).await,
                _ => Status::unimplemented(path).into_http(),
            })
        })
    }
}

fn detail_metadata(detail: &'static str) -> MetadataMap {
    let mut md = MetadataMap::new();
    md.insert("x-detail", MetadataValue::from_static(detail));
    md.insert_bin(
        "x-trace-bin",
        MetadataValue::from_bytes(&[0, 1, 2, 254, 255]),
    );
    md
}

/// How many `slow` calls have ended on the server (their handler dropped).
fn slow_ended() -> &'static tokio::sync::watch::Sender<u64> {
    static ENDED: std::sync::OnceLock<tokio::sync::watch::Sender<u64>> = std::sync::OnceLock::new();
    ENDED.get_or_init(|| tokio::sync::watch::channel(0).0)
}

/// Counts a `slow` handler's end, however it ends.
struct SlowEnded;

impl Drop for SlowEnded {
    fn drop(&mut self) {
        slow_ended().send_modify(|n| *n += 1);
    }
}

/// Unary: `fail` answers an error with metadata, `slow` waits past any deadline, `deadline`
/// reports the `grpc-timeout` the server got; anything else is echoed with `n + 1`.
async fn echo(req: Request<Msg>) -> Result<Response<Msg>, Status> {
    let timeout = req
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let m = req.into_inner();
    match m.text.as_str() {
        "fail" => Err(Status::with_metadata(
            Code::InvalidArgument,
            "bad input: größe 100% \"quoted\"\nline two",
            detail_metadata("unary"),
        )),
        "slow" => {
            let _ended = SlowEnded;
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(Response::new(m))
        }
        "deadline" => Ok(Response::new(msg(0, &timeout, Vec::new()))),
        _ => {
            let mut r = Response::new(msg(m.n + 1, &m.text, m.blob));
            r.metadata_mut()
                .insert("x-initial", MetadataValue::from_static("from the server"));
            Ok(r)
        }
    }
}

/// Server streaming: `n` messages, then the end (OK), or with `then-fail` an error status
/// with metadata after them.
async fn count(req: Request<Msg>) -> Result<Response<MsgStream>, Status> {
    let m = req.into_inner();
    let fail = m.text == "then-fail";
    let msgs = stream::iter(0..m.n).map(|i| Ok(msg(i, "item", blob(i))));
    let end = stream::iter(fail.then(|| {
        Err(Status::with_metadata(
            Code::ResourceExhausted,
            "stopped after the messages",
            detail_metadata("streaming"),
        ))
    }));
    Ok(Response::new(Box::pin(msgs.chain(end))))
}

/// Client streaming: how many messages, the sum of their `n`, their blob bytes, and whether
/// every blob was the one its `n` names.
async fn sum(req: Request<Streaming<Msg>>) -> Result<Response<Msg>, Status> {
    let mut s = req.into_inner();
    let (mut count, mut total, mut bytes, mut intact) = (0u64, 0u64, 0usize, true);
    while let Some(m) = s.message().await? {
        count += 1;
        total += m.n;
        bytes += m.blob.len();
        intact &= m.blob == blob(m.n);
    }
    let text = format!("{count} {bytes} {intact}");
    Ok(Response::new(msg(total, &text, Vec::new())))
}

/// Bidirectional: each message back at once with `n * 2` and its blob.
async fn chat(req: Request<Streaming<Msg>>) -> Result<Response<MsgStream>, Status> {
    let s = req.into_inner();
    let out = s.map(|r| r.map(|m| msg(m.n * 2, &m.text, m.blob)));
    Ok(Response::new(Box::pin(out)))
}

/// The tonic server on 127.0.0.1 port 0 (h2c).
async fn grpc_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let incoming = tonic::transport::server::TcpIncoming::from(l);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(Calc)
            .serve_with_incoming(incoming),
    );
    addr
}

/// A CA and a leaf for `app.test`, written into `dir`: (the CA's certificate, the
/// `[listeners.tls]` table).
fn tls_files(dir: &Path) -> (rustls::pki_types::CertificateDer<'static>, String) {
    let pki = test_pki("app.test");
    let (cert, keyfile): (PathBuf, PathBuf) = (dir.join("app.pem"), dir.join("app.key"));
    std::fs::write(&cert, &pki.leaf_pem).expect("write");
    std::fs::write(&keyfile, &pki.key_pem).expect("write");
    (
        pki.ca_der,
        format!("[listeners.tls]\ncert = {cert:?}\nkey = {keyfile:?}\n"),
    )
}

/// Two reverse listeners, `plain` (h2c) and `tls`, `app.test` -> pool `p` of
/// `protocol = "h2"` with the tonic server.
fn config(server: SocketAddr, tls: &str) -> String {
    let hosts = "[[listeners.hosts]]\nnames = [\"app.test\"]\n\
                 [[listeners.hosts.routes]]\npool = \"p\"\n";
    format!(
        "[[listeners]]\nname = \"plain\"\nkind = \"reverse\"\nlisten = \"127.0.0.1:0\"\n\
         [listeners.http2]\nh2c = true\n{hosts}\
         [[listeners]]\nname = \"tls\"\nkind = \"reverse\"\nlisten = \"127.0.0.1:0\"\n{tls}{hosts}\
         [[pools]]\nname = \"p\"\nprotocol = \"h2\"\n\
         [[pools.servers]]\naddress = \"{server}\"\n"
    )
}

/// A tonic channel to `app.test` whose connections go to `to`, over TLS when `tls` is given.
async fn channel(to: SocketAddr, tls: Option<Arc<rustls::ClientConfig>>) -> Channel {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let uri = format!("{scheme}://app.test:{}", to.port());
    let connector = tower::service_fn(move |_: http::Uri| {
        let tls = tls.clone();
        async move {
            let tcp = TcpStream::connect(to).await?;
            Ok::<_, std::io::Error>(match tls {
                None => TokioIo::new(Io::Plain(tcp)),
                Some(cfg) => {
                    let name = ServerName::try_from("app.test").expect("name");
                    let s = tokio_rustls::TlsConnector::from(cfg)
                        .connect(name, tcp)
                        .await?;
                    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
                    TokioIo::new(Io::Tls(Box::new(s)))
                }
            })
        }
    });
    Endpoint::from_shared(uri)
        .expect("uri")
        .connect_with_connector(connector)
        .await
        .expect("connect")
}

/// A plain or TLS connection for the channel.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

fn client_config(ca: &rustls::pki_types::CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    store.add(ca.clone()).expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

fn path(method: &str) -> http::uri::PathAndQuery {
    http::uri::PathAndQuery::try_from(format!("/gh.test.Calc/{method}")).expect("path")
}

/// Messages a streaming call sends and expects: together about 2.4 MB, far more than the
/// flow-control windows on either side.
const MANY: u64 = 2000;

/// The error's metadata as the server set it: the text and the binary value.
fn assert_detail(s: &Status, detail: &str) {
    let md = s.metadata();
    assert_eq!(
        md.get("x-detail").and_then(|v| v.to_str().ok()),
        Some(detail),
        "{md:?}"
    );
    let bin = md.get_bin("x-trace-bin").expect("binary metadata");
    assert_eq!(
        bin.to_bytes().expect("base64").as_ref(),
        &[0, 1, 2, 254, 255]
    );
}

/// Every kind of call on `ch`.
async fn calls(ch: Channel) {
    let mut g = tonic::client::Grpc::new(ch);
    let codec = || ProstCodec::<Msg, Msg>::default();

    // Unary, with initial metadata.
    g.ready().await.expect("ready");
    let r = g
        .unary(Request::new(msg(41, "hi", blob(3))), path("Echo"), codec())
        .await
        .expect("unary");
    assert_eq!(
        r.metadata().get("x-initial").and_then(|v| v.to_str().ok()),
        Some("from the server")
    );
    assert_eq!(r.into_inner(), msg(42, "hi", blob(3)));

    // An error status (trailers-only: in the head), message and metadata intact.
    g.ready().await.expect("ready");
    let e = g
        .unary(
            Request::new(msg(0, "fail", Vec::new())),
            path("Echo"),
            codec(),
        )
        .await
        .expect_err("a status");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(
        e.message(),
        "bad input: größe 100% \"quoted\"\nline two",
        "{e:?}"
    );
    assert_detail(&e, "unary");

    // Server streaming: every message in order, then OK.
    g.ready().await.expect("ready");
    let mut s = g
        .server_streaming(
            Request::new(msg(MANY, "", Vec::new())),
            path("Count"),
            codec(),
        )
        .await
        .expect("server streaming")
        .into_inner();
    let mut i = 0;
    while let Some(m) = s.message().await.expect("message") {
        assert_eq!((m.n, m.blob.len()), (i, blob(i).len()));
        assert!(m.blob == blob(i), "message {i} intact");
        i += 1;
    }
    assert_eq!(i, MANY);

    // Server streaming that ends in an error after its messages: real trailers.
    g.ready().await.expect("ready");
    let mut s = g
        .server_streaming(
            Request::new(msg(10, "then-fail", Vec::new())),
            path("Count"),
            codec(),
        )
        .await
        .expect("server streaming")
        .into_inner();
    let mut got = 0;
    let e = loop {
        match s.message().await {
            Ok(Some(_)) => got += 1,
            Ok(None) => panic!("the stream ended without its error status"),
            Err(e) => break e,
        }
    };
    assert_eq!(got, 10);
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(e.message(), "stopped after the messages");
    assert_detail(&e, "streaming");

    // Client streaming.
    g.ready().await.expect("ready");
    let out = stream::iter(0..MANY).map(|i| msg(i, "", blob(i)));
    let r = g
        .client_streaming(Request::new(out), path("Sum"), codec())
        .await
        .expect("client streaming")
        .into_inner();
    let bytes: usize = (0..MANY).map(|i| blob(i).len()).sum();
    assert_eq!(r.n, (0..MANY).sum::<u64>());
    assert_eq!(r.text, format!("{MANY} {bytes} true"));

    // Bidi, ping-pong: each message is answered before the next is sent, so nothing on the
    // way may wait for the end of the request.
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
    let out = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    g.ready().await.expect("ready");
    let mut back = g
        .streaming(Request::new(out), path("Chat"), codec())
        .await
        .expect("bidi")
        .into_inner();
    for i in 0..200u64 {
        tx.send(msg(i, "ping", blob(i))).await.expect("send");
        let m = tokio::time::timeout(Duration::from_secs(10), back.message())
            .await
            .expect("an answer before the next message")
            .expect("message")
            .expect("not ended");
        assert_eq!((m.n, m.text.as_str()), (i * 2, "ping"));
        assert!(m.blob == blob(i));
    }
    drop(tx);
    assert!(back.message().await.expect("clean end").is_none());

    // Bidi, bulk: many messages both ways at once.
    g.ready().await.expect("ready");
    let out = stream::iter(0..MANY).map(|i| msg(i, "bulk", blob(i)));
    let mut back = g
        .streaming(Request::new(out), path("Chat"), codec())
        .await
        .expect("bidi")
        .into_inner();
    let mut i = 0;
    while let Some(m) = back.message().await.expect("message") {
        assert_eq!(m.n, i * 2);
        assert!(m.blob == blob(i), "message {i} intact");
        i += 1;
    }
    assert_eq!(i, MANY);

    // The deadline reaches the server as grpc-timeout ...
    g.ready().await.expect("ready");
    let mut req = Request::new(msg(0, "deadline", Vec::new()));
    req.set_timeout(Duration::from_secs(7));
    let seen = g
        .unary(req, path("Echo"), codec())
        .await
        .expect("unary")
        .into_inner()
        .text;
    let secs = grpc_timeout(&seen).unwrap_or_else(|| panic!("grpc-timeout {seen:?}"));
    assert!(secs > 6.0 && secs <= 7.0, "{seen}");

    // ... and a call past it ends at the client and at the server: tonic enforces it at
    // both ends, so the server's handler is dropped either by its own deadline or by the
    // client's RST_STREAM passed on through the proxy; either way not after 30 s.
    let mut ended = slow_ended().subscribe();
    let before = *ended.borrow_and_update();
    g.ready().await.expect("ready");
    let mut req = Request::new(msg(0, "slow", Vec::new()));
    req.set_timeout(Duration::from_millis(300));
    let t0 = Instant::now();
    let e = g
        .unary(req, path("Echo"), codec())
        .await
        .expect_err("the deadline ends the call");
    assert!(
        matches!(e.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{e:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    tokio::time::timeout(Duration::from_secs(10), ended.wait_for(|n| *n > before))
        .await
        .expect("the server's handler ended")
        .expect("watch");

    // The connection serves calls after that one.
    g.ready().await.expect("ready");
    let r = g
        .unary(
            Request::new(msg(1, "after", Vec::new())),
            path("Echo"),
            codec(),
        )
        .await
        .expect("unary after a deadline");
    assert_eq!(r.into_inner().n, 2);

    // An unknown method: the server answers at once, then resets the stream with NO_ERROR
    // (RFC 9113 section 8.1) while the request body is still coming; the answer counts.
    for size in [0, 300_000].repeat(20) {
        g.ready().await.expect("ready");
        let big = msg(0, "", pattern(9, size).to_vec());
        let e = g
            .unary(Request::new(big), path("Nope"), codec())
            .await
            .expect_err("unimplemented");
        assert_eq!(e.code(), Code::Unimplemented, "{size}: {e:?}");
    }
}

/// A `grpc-timeout` value in seconds (RFC-style: digits and a unit).
fn grpc_timeout(v: &str) -> Option<f64> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: f64 = digits.parse().ok()?;
    let scale = match unit {
        "H" => 3600.0,
        "M" => 60.0,
        "S" => 1.0,
        "m" => 1e-3,
        "u" => 1e-6,
        "n" => 1e-9,
        _ => return None,
    };
    Some(n * scale)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_calls_pass_over_h2c_and_tls_with_streams_trailers_and_deadlines() {
    let server = grpc_server().await;
    let dir = tempfile::tempdir().expect("dir");
    let (ca, tls) = tls_files(dir.path());
    let gh = Gatehouse::start(&config(server, &tls));

    // h2c with prior knowledge.
    calls(channel(gh.addr("plain"), None).await).await;
    // TLS, h2 chosen by ALPN.
    calls(channel(gh.addr("tls"), Some(client_config(&ca))).await).await;

    // Many calls at once share the channel's one connection.
    let ch = channel(gh.addr("plain"), None).await;
    let mut tasks = Vec::new();
    for k in 0..32u64 {
        let mut g = tonic::client::Grpc::new(ch.clone());
        tasks.push(tokio::spawn(async move {
            g.ready().await.expect("ready");
            let r = g
                .unary(
                    Request::new(msg(k, "many", blob(k))),
                    path("Echo"),
                    ProstCodec::<Msg, Msg>::default(),
                )
                .await
                .expect("unary");
            assert_eq!(r.into_inner(), msg(k + 1, "many", blob(k)));
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}
