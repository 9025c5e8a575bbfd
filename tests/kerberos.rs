//! Kerberos logins against a real KDC started here (tests/common/krb.rs): HTTP Negotiate with
//! curl `--proxy-negotiate`, SOCKS5 GSSAPI with curl `--socks5-gssapi` (ignored: no working curl
//! on Debian 12), and a GSSAPI client written here (libgssapi) that negotiates integrity and
//! confidentiality and checks the encapsulated bytes, over TCP and in UDP datagrams; refused
//! tickets, tokens and datagrams.
//!
//! All tests share one realm (the environment variables that point the GSSAPI library at it
//! are set once, before any test uses the library). Where the KDC programs are missing the
//! tests say so and pass, unless `GATEHOUSE_REQUIRE_KDC` is set (`.ci/run` installs them).

#![cfg(feature = "gssapi")]

mod common;
#[path = "common/krb.rs"]
mod krb;

use std::net::SocketAddr;
use std::sync::OnceLock;

use base64::Engine as _;
use common::*;
use libgssapi::context::{ClientCtx, CtxFlags, SecurityContext};
use libgssapi::credential::{Cred, CredUsage};
use libgssapi::name::Name;
use libgssapi::oid::{GSS_MECH_KRB5, GSS_NT_HOSTBASED_SERVICE, GSS_NT_KRB5_PRINCIPAL};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

static REALM: OnceLock<Result<krb::Realm, String>> = OnceLock::new();

fn realm() -> Option<&'static krb::Realm> {
    let r = REALM.get_or_init(|| {
        let r = krb::Realm::start();
        if let Ok(realm) = &r {
            // Once, before any GSSAPI call in this process; the proxy inherits them too.
            for (k, v) in realm.env() {
                std::env::set_var(k, v);
            }
        }
        r
    });
    match r {
        Ok(r) => Some(r),
        Err(e) if std::env::var_os("GATEHOUSE_REQUIRE_KDC").is_some() => panic!("{e}"),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// HTTP listener `web` (Negotiate for HTTP/localhost) and SOCKS listener `socks` (GSSAPI for
/// rcmd/localhost), principals mapped without the realm.
fn config(extra_policy: &str) -> String {
    format!(
        r#"{}{}
[policy.listeners.web]
auth = ["negotiate"]
kerberos_service = "HTTP/localhost"

[policy.listeners.socks]
auth = ["gssapi"]
kerberos_service = "rcmd/localhost"
{extra_policy}
{LOOPBACK_POLICY}"#,
        http_listener("web", ""),
        socks_listener("socks", ""),
    )
}

fn localhost(addr: SocketAddr) -> String {
    format!("localhost:{}", addr.port())
}

/// A client context for `service` (`HTTP@localhost`) from alice's ticket cache.
fn client_ctx(service: &str) -> ClientCtx {
    let name = Name::new(service.as_bytes(), Some(GSS_NT_HOSTBASED_SERVICE)).expect("name");
    let flags = CtxFlags::GSS_C_MUTUAL_FLAG
        | CtxFlags::GSS_C_INTEG_FLAG
        | CtxFlags::GSS_C_CONF_FLAG
        | CtxFlags::GSS_C_REPLAY_FLAG
        | CtxFlags::GSS_C_SEQUENCE_FLAG;
    ClientCtx::new(None, name, flags, Some(GSS_MECH_KRB5))
}

fn first_token(service: &str) -> (ClientCtx, Vec<u8>) {
    let mut ctx = client_ctx(service);
    let tok = ctx
        .step(None, None)
        .expect("init_sec_context")
        .expect("a token")
        .to_vec();
    (ctx, tok)
}

/// One request on a new connection to the HTTP listener; the response head.
async fn http_once(proxy: SocketAddr, origin: &str, authz: Option<&str>) -> String {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    let mut req = format!("GET {origin} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    if let Some(a) = authz {
        req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let all = read_to_close(&mut s).await;
    String::from_utf8_lossy(&all).into_owned()
}

fn b64(t: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(t)
}

#[tokio::test]
async fn curl_proxy_negotiate_logs_in() {
    let Some(_realm) = realm() else { return };
    let origin = Origin::fixed("hello").await;
    let gh = Gatehouse::start(&config(""));
    let proxy = format!("http://{}", localhost(gh.addr("web")));
    let (code, body, err) = curl(&[
        "-v",
        "--proxy-negotiate",
        "-U",
        ":",
        "-x",
        &proxy,
        &origin.url("/a"),
        &origin.url("/b"),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(body, b"hellohello");
    // The mutual-authentication token came back; both requests went on one connection.
    assert!(err.contains("< Proxy-Authenticate: Negotiate "), "{err}");
    assert!(err.contains("Re-using existing connection"), "{err}");
    for _ in 0..2 {
        let line = gh.next_log_line();
        assert_eq!(log_field(&line, 4), "alice", "{line}");
    }
}

#[tokio::test]
async fn a_negotiated_connection_stays_logged_in() {
    let Some(_realm) = realm() else { return };
    let origin = Origin::fixed("hello").await;
    let gh = Gatehouse::start(&config(""));
    let mut s = TcpStream::connect(gh.addr("web")).await.expect("connect");
    let url = origin.url("/");
    let get = |authz: Option<String>| {
        let mut r = format!("GET {url} HTTP/1.1\r\nHost: x\r\n");
        if let Some(a) = authz {
            r.push_str(&format!("Proxy-Authorization: {a}\r\n"));
        }
        r + "\r\n"
    };
    // No credentials: 407 offering Negotiate, and the connection stays open.
    s.write_all(get(None).as_bytes()).await.expect("write");
    let head = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
    assert!(head.contains("Proxy-Authenticate: Negotiate\r\n"), "{head}");
    let (_c, tok) = first_token("HTTP@localhost");
    s.write_all(get(Some(format!("Negotiate {}", b64(&tok)))).as_bytes())
        .await
        .expect("write");
    let head = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The next request on the connection needs no header.
    s.write_all(get(None).as_bytes()).await.expect("write");
    let head = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!head.contains("Proxy-Authenticate"), "{head}");
    assert_eq!(origin.seen().len(), 2);
    // A new connection does.
    let head = http_once(gh.addr("web"), &url, None).await;
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
}

/// Reads one response with a Content-Length body; returns head and body as text.
async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let text = loop {
        let n = s.read(&mut tmp).await.expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&tmp[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break text;
            }
        }
    };
    text
}

#[tokio::test]
async fn no_ticket_gets_a_clean_407() {
    let Some(realm) = realm() else { return };
    let origin = Origin::fixed("hello").await;
    let gh = Gatehouse::start(&config(""));
    let empty = format!("FILE:{}", realm.dir.path().join("empty-ccache").display());
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-v",
            "--max-time",
            "20",
            "--proxy-negotiate",
            "-U",
            ":",
            "-x",
        ])
        .arg(format!("http://{}", localhost(gh.addr("web"))))
        .arg(origin.url("/"))
        .env("KRB5CCNAME", &empty)
        .output()
        .await
        .expect("curl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("< HTTP/1.1 407"), "{err}");
    assert!(!err.contains("< HTTP/1.1 200"), "{err}");
    assert_eq!(origin.seen().len(), 0);
}

#[tokio::test]
async fn wrong_replayed_and_malformed_negotiate_tokens_get_407() {
    let Some(_realm) = realm() else { return };
    let origin = Origin::fixed("hello").await;
    let gh = Gatehouse::start(&config(""));
    let web = gh.addr("web");
    let url = origin.url("/");
    // A ticket for another service (host/localhost: not the listener's, not in the keytab).
    let (_c, wrong) = first_token("host@localhost");
    let head = http_once(web, &url, Some(&format!("Negotiate {}", b64(&wrong)))).await;
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
    // A ticket for the listener's own service is accepted once...
    let (_c, good) = first_token("HTTP@localhost");
    let authz = format!("Negotiate {}", b64(&good));
    let head = http_once(web, &url, Some(&authz)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("Proxy-Authenticate: Negotiate "),
        "mutual token: {head}"
    );
    // ...and the same token again, on another connection, is a replay.
    let head = http_once(web, &url, Some(&authz)).await;
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
    for bad in ["Negotiate AAAA", "Negotiate !!!", "Negotiate"] {
        let head = http_once(web, &url, Some(bad)).await;
        assert!(head.starts_with("HTTP/1.1 407"), "{bad}: {head}");
    }
    assert_eq!(origin.seen().len(), 1);
}

#[tokio::test]
async fn failed_negotiate_logins_hit_the_limiter() {
    let Some(_realm) = realm() else { return };
    let origin = Origin::fixed("hello").await;
    let gh = Gatehouse::start(&config(
        "[policy.failed_logins]\nmax_failures = 2\nwindow = \"1h\"\n",
    ));
    let web = gh.addr("web");
    let url = origin.url("/");
    for _ in 0..2 {
        let head = http_once(web, &url, Some("Negotiate AAAA")).await;
        assert!(head.starts_with("HTTP/1.1 407"), "{head}");
    }
    let (_c, good) = first_token("HTTP@localhost");
    let head = http_once(web, &url, Some(&format!("Negotiate {}", b64(&good)))).await;
    assert!(
        head.starts_with("HTTP/1.1 429"),
        "blocked even with a good ticket: {head}"
    );
}

/// Ignored: no curl packaged for Debian 12 can do SOCKS5 GSSAPI with any server. curl 7.88
/// (bookworm) and 8.14.1 (bookworm-backports, tried unpacked as a test-local binary) both set
/// `allow_gssapi` only in the SOCKS state machine's first state, so a method-1 answer read
/// after an EAGAIN fails with "SOCKS5 GSSAPI per-message authentication is not supported";
/// and when 8.14.1 does read it at once, it sends its token and then waits for the server's in
/// `pselect6` on no descriptor until it times out ("Failed to receive GSS-API authentication
/// response"). Dante's client (`socksify`, dante-client) is built without GSSAPI in Debian.
/// With a curl that works: `GATEHOUSE_SOCKS_GSSAPI_CURL=/path/to/curl cargo test --test
/// kerberos curl_socks5 -- --ignored`.
#[tokio::test]
#[ignore = "no Debian 12 curl (7.88, backports 8.14.1) can do SOCKS5 GSSAPI; see the comment"]
async fn curl_socks5_gssapi_reaches_the_origin_as_alice() {
    let Some(_realm) = realm() else { return };
    let curl_bin = std::env::var("GATEHOUSE_SOCKS_GSSAPI_CURL").unwrap_or_else(|_| "curl".into());
    let origin = Origin::fixed("hello").await;
    let gh = Gatehouse::start(&config(""));
    let proxy = format!("socks5://{}", localhost(gh.addr("socks")));
    let out = tokio::process::Command::new(&curl_bin)
        .args(["-sS", "--max-time", "20", "-v", "--socks5-gssapi"])
        .args(["-x", &proxy, &origin.url("/")])
        .output()
        .await
        .expect("curl runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{curl_bin}: {err}");
    assert_eq!(out.stdout, b"hello");
    let line = gh.next_log_line();
    assert_eq!(log_field(&line, 4), "alice", "{line}");
}

/// The SOCKS greeting offering GSSAPI only, accepted.
async fn socks_gssapi_greeting(proxy: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(&[5, 1, 1]).await.expect("greeting");
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await.expect("method");
    assert_eq!(m, [5, 1]);
    s
}

async fn send_frame(s: &mut TcpStream, mtyp: u8, token: &[u8]) {
    let mut out = vec![1, mtyp];
    out.extend_from_slice(&(token.len() as u16).to_be_bytes());
    out.extend_from_slice(token);
    s.write_all(&out).await.expect("send");
}

/// One RFC 1961 message: (mtyp, token); `[1, 0xff]` gives (0xff, empty).
async fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await.expect("frame head");
    assert_eq!(h[0], 1, "version");
    if h[1] == 0xff {
        return (0xff, Vec::new());
    }
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.expect("length");
    let mut tok = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut tok).await.expect("token");
    (h[1], tok)
}

/// Context establishment and protection negotiation; the server's chosen level.
async fn socks_login(s: &mut TcpStream, ctx: &mut ClientCtx, level: u8) -> u8 {
    let tok = ctx.step(None, None).expect("init").expect("token").to_vec();
    send_frame(s, 1, &tok).await;
    while !ctx.is_complete() {
        let (mtyp, tok) = read_frame(s).await;
        assert_eq!(mtyp, 1, "the server's context token");
        if let Some(next) = ctx.step(Some(&tok), None).expect("init step") {
            if !next.is_empty() {
                send_frame(s, 1, &next).await;
            }
        }
    }
    let asked = ctx.wrap(false, &[level]).expect("wrap level");
    send_frame(s, 2, &asked).await;
    let (mtyp, tok) = read_frame(s).await;
    assert_eq!(mtyp, 2);
    let chosen = ctx.unwrap(&tok).expect("unwrap level");
    assert_eq!(chosen.len(), 1);
    chosen[0]
}

// Multi-threaded: the echo origin runs while the test thread waits for the log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks_gssapi_integrity_and_confidentiality_wrap_every_byte() {
    let Some(_realm) = realm() else { return };
    let echo = tcp_echo().await;
    let gh = Gatehouse::start(&config(""));
    let proxy = gh.addr("socks");
    for level in [1u8, 2] {
        let mut s = socks_gssapi_greeting(proxy).await;
        let mut ctx = client_ctx("rcmd@localhost");
        assert_eq!(socks_login(&mut s, &mut ctx, level).await, level);
        let encrypt = level == 2;
        // The request itself goes wrapped...
        let req = socks5_request(1, echo);
        let w = ctx.wrap(encrypt, &req).expect("wrap request");
        send_frame(&mut s, 3, &w).await;
        // ...and so does the reply.
        let (mtyp, tok) = read_frame(&mut s).await;
        assert_eq!(mtyp, 3, "a wrapped reply");
        let reply = ctx.unwrap(&tok).expect("unwrap reply");
        assert_eq!(&reply[..2], &[5, 0], "succeeded: {reply:?}");
        // Relayed data, both ways.
        let secret = b"the quick brown fox: a secret payload";
        let w = ctx.wrap(encrypt, secret).expect("wrap data");
        let on_wire_has_plain = w.windows(secret.len()).any(|x| x == secret);
        assert_eq!(
            on_wire_has_plain, !encrypt,
            "level {level}: plaintext visible?"
        );
        send_frame(&mut s, 3, &w).await;
        let mut got = Vec::new();
        while got.len() < secret.len() {
            let (mtyp, tok) = read_frame(&mut s).await;
            assert_eq!(mtyp, 3);
            if encrypt {
                assert!(
                    !tok.windows(secret.len()).any(|x| x == secret),
                    "encrypted back"
                );
            }
            got.extend_from_slice(&ctx.unwrap(&tok).expect("unwrap echo"));
        }
        assert_eq!(got, secret);
        drop(s);
        let line = gh.next_log_line();
        assert_eq!(log_field(&line, 4), "alice", "{line}");
    }
}

#[tokio::test]
async fn socks_gssapi_tampered_message_ends_the_session() {
    let Some(_realm) = realm() else { return };
    let echo = tcp_echo().await;
    let gh = Gatehouse::start(&config(""));
    let mut s = socks_gssapi_greeting(gh.addr("socks")).await;
    let mut ctx = client_ctx("rcmd@localhost");
    assert_eq!(socks_login(&mut s, &mut ctx, 1).await, 1);
    let w = ctx.wrap(false, &socks5_request(1, echo)).expect("wrap");
    send_frame(&mut s, 3, &w).await;
    let (_, tok) = read_frame(&mut s).await;
    assert_eq!(&ctx.unwrap(&tok).expect("reply")[..2], &[5, 0]);
    let mut w = ctx
        .wrap(false, b"integrity-protected")
        .expect("wrap")
        .to_vec();
    let mid = w.len() / 2;
    w[mid] ^= 0x01; // inside the payload: the checksum no longer matches
    send_frame(&mut s, 3, &w).await;
    let rest = until_closed(&mut s).await;
    assert!(rest.is_empty(), "nothing comes back: {rest:?}");
}

#[tokio::test]
async fn socks_gssapi_confidentiality_refuses_unencrypted_messages() {
    let Some(_realm) = realm() else { return };
    let echo = tcp_echo().await;
    let gh = Gatehouse::start(&config(""));
    let mut s = socks_gssapi_greeting(gh.addr("socks")).await;
    let mut ctx = client_ctx("rcmd@localhost");
    assert_eq!(socks_login(&mut s, &mut ctx, 2).await, 2);
    let w = ctx.wrap(true, &socks5_request(1, echo)).expect("wrap");
    send_frame(&mut s, 3, &w).await;
    let (_, tok) = read_frame(&mut s).await;
    assert_eq!(&ctx.unwrap(&tok).expect("reply")[..2], &[5, 0]);
    // Authentic, in sequence, but only integrity-protected: below the negotiated level.
    let w = ctx.wrap(false, b"sent in the clear").expect("wrap");
    send_frame(&mut s, 3, &w).await;
    let rest = until_closed(&mut s).await;
    assert!(rest.is_empty(), "nothing comes back: {rest:?}");
}

/// A client context without GSS_C_SEQUENCE_FLAG (replay detection only): datagrams may be
/// lost or reordered, and the binding returns no message for a token out of sequence.
fn udp_client_ctx(service: &str) -> ClientCtx {
    let name = Name::new(service.as_bytes(), Some(GSS_NT_HOSTBASED_SERVICE)).expect("name");
    let flags = CtxFlags::GSS_C_MUTUAL_FLAG
        | CtxFlags::GSS_C_INTEG_FLAG
        | CtxFlags::GSS_C_CONF_FLAG
        | CtxFlags::GSS_C_REPLAY_FLAG;
    ClientCtx::new(None, name, flags, Some(GSS_MECH_KRB5))
}

/// RFC 1961 section 5 for one datagram: `[1, 3, len(2), token]`.
fn message(token: &[u8]) -> Vec<u8> {
    [&[1, 3][..], &(token.len() as u16).to_be_bytes(), token].concat()
}

/// The next datagram on `sock` (at most 10 s).
async fn next_datagram(sock: &tokio::net::UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(std::time::Duration::from_secs(10), sock.recv_from(&mut buf))
        .await
        .expect("a datagram within 10s")
        .expect("recv");
    buf.truncate(n);
    buf
}

/// `gatehouse_socks_udp_dropped_total{reason}` on the admin listener (0 when absent).
async fn dropped(admin: SocketAddr, reason: &str) -> f64 {
    let text = metrics_text(admin).await;
    let series = format!("gatehouse_socks_udp_dropped_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

// Multi-threaded: the UDP echo runs while the test thread waits for the log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks_gssapi_udp_datagrams_are_wrapped() {
    let Some(_realm) = realm() else { return };
    let echo = UdpEcho::start("127.0.0.1:0").await;
    let gh = Gatehouse::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        config("")
    ));
    let admin = gh.addr("admin");
    let (mut gssapi_drops, mut foreign_drops) = (0.0, 0.0);
    let mut sent_to_echo = Vec::new();
    for level in [1u8, 2] {
        let encrypt = level == 2;
        let mut s = socks_gssapi_greeting(gh.addr("socks")).await;
        let mut ctx = udp_client_ctx("rcmd@localhost");
        assert_eq!(socks_login(&mut s, &mut ctx, level).await, level);
        let any: SocketAddr = "0.0.0.0:0".parse().expect("addr");
        let w = ctx.wrap(encrypt, &socks5_request(3, any)).expect("wrap");
        send_frame(&mut s, 3, &w).await;
        let (mtyp, tok) = read_frame(&mut s).await;
        assert_eq!(mtyp, 3, "the reply is wrapped");
        let reply = ctx.unwrap(&tok).expect("unwrap reply");
        assert_eq!(
            &reply[..4],
            &[5, 0, 0, 1],
            "UDP ASSOCIATE granted: {reply:?}"
        );
        let relay = SocketAddr::from((
            [reply[4], reply[5], reply[6], reply[7]],
            u16::from_be_bytes([reply[8], reply[9]]),
        ));
        let a = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let b = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let secret = |n: &str| format!("level {level} datagram {n}: a secret payload").into_bytes();

        // Before any authentic datagram: a forged message and a plain SOCKS datagram, from
        // another port. Both dropped; neither teaches the relay the client's port.
        b.send_to(&message(&[1, 2, 3, 4]), relay)
            .await
            .expect("send");
        b.send_to(&socks5_datagram(echo.addr, &secret("plain")), relay)
            .await
            .expect("send");
        gssapi_drops += 2.0;

        // An authentic datagram goes to the echo in the clear and comes back wrapped.
        let one = message(
            &ctx.wrap(encrypt, &socks5_datagram(echo.addr, &secret("one")))
                .expect("wrap"),
        );
        let visible = |d: &[u8], p: &[u8]| d.windows(p.len()).any(|x| x == p);
        assert_eq!(visible(&one, &secret("one")), !encrypt);
        a.send_to(&one, relay).await.expect("send");
        let back = next_datagram(&a).await;
        assert_eq!(&back[..2], &[1, 3], "an RFC 1961 message");
        assert_eq!(
            usize::from(u16::from_be_bytes([back[2], back[3]])),
            back.len() - 4
        );
        assert_eq!(visible(&back, &secret("one")), !encrypt, "level {level}");
        let plain = ctx.unwrap(&back[4..]).expect("unwrap the echo").to_vec();
        assert_eq!(
            plain,
            socks5_datagram(echo.addr, &secret("one")),
            "from the echo"
        );
        sent_to_echo.push(secret("one"));

        // Garbled in transit, replayed, and (under confidentiality) not encrypted: dropped.
        let mut garbled = message(
            &ctx.wrap(encrypt, &socks5_datagram(echo.addr, &secret("garbled")))
                .expect("wrap"),
        );
        let mid = garbled.len() / 2 + 2;
        garbled[mid] ^= 0x01;
        a.send_to(&garbled, relay).await.expect("send");
        a.send_to(&one, relay).await.expect("send");
        gssapi_drops += 2.0;
        if encrypt {
            let weak = ctx
                .wrap(false, &socks5_datagram(echo.addr, &secret("weak")))
                .expect("wrap");
            a.send_to(&message(&weak), relay).await.expect("send");
            gssapi_drops += 1.0;
        }
        // An authentic datagram from another port, now that the client's is known.
        let other = ctx
            .wrap(encrypt, &socks5_datagram(echo.addr, &secret("other port")))
            .expect("wrap");
        b.send_to(&message(&other), relay).await.expect("send");
        foreign_drops += 1.0;

        // The association still works.
        let three = ctx
            .wrap(encrypt, &socks5_datagram(echo.addr, &secret("three")))
            .expect("wrap");
        a.send_to(&message(&three), relay).await.expect("send");
        let back = next_datagram(&a).await;
        let plain = ctx.unwrap(&back[4..]).expect("unwrap the echo").to_vec();
        assert_eq!(plain, socks5_datagram(echo.addr, &secret("three")));
        sent_to_echo.push(secret("three"));
        assert_eq!(
            echo.seen(),
            sent_to_echo,
            "only authentic datagrams reached the echo"
        );
        assert_eq!(
            dropped(admin, "gssapi").await,
            gssapi_drops,
            "level {level}"
        );
        assert_eq!(
            dropped(admin, "foreign").await,
            foreign_drops,
            "level {level}"
        );

        // Closing the control connection ends the association.
        drop(s);
        let line = gh.next_log_line();
        assert!(line.contains("SOCKS5-UDP"), "{line}");
        assert_eq!(log_field(&line, 4), "alice", "{line}");
    }
}

#[tokio::test]
async fn socks_gssapi_bad_tokens_are_refused_cleanly() {
    let Some(_realm) = realm() else { return };
    // Every refusal below counts as a failed login: allow more than the default five.
    let gh = Gatehouse::start(&config("[policy.failed_logins]\nmax_failures = 50\n"));
    let proxy = gh.addr("socks");
    // A ticket for another service (HTTP/localhost, in the keytab but not this listener's).
    let (_c, wrong) = first_token("HTTP@localhost");
    // Garbage, a wrong version, a wrong message type, and the largest token there is.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "wrong service",
            [
                vec![1, 1],
                (wrong.len() as u16).to_be_bytes().to_vec(),
                wrong,
            ]
            .concat(),
        ),
        ("garbage", vec![1, 1, 0, 4, b'a', b'b', b'c', b'd']),
        ("version", vec![2, 1, 0, 1, 0]),
        ("type", vec![1, 3, 0, 1, 0]),
        (
            "oversized",
            [vec![1, 1, 0xff, 0xff], vec![0x60; 0xffff]].concat(),
        ),
    ];
    for (what, bytes) in cases {
        let mut s = socks_gssapi_greeting(proxy).await;
        s.write_all(&bytes).await.expect("send");
        let got = until_closed(&mut s).await;
        assert_eq!(got, [1, 0xff], "{what}");
    }
    // A message cut short by the client: closed, nothing sent.
    let mut s = socks_gssapi_greeting(proxy).await;
    s.write_all(&[1, 1, 0x10, 0x00, 1, 2, 3])
        .await
        .expect("send");
    s.shutdown().await.expect("half-close");
    let got = until_closed(&mut s).await;
    assert!(got.is_empty(), "{got:?}");
    // One record per session, in the order the sessions ended.
    let lines: Vec<String> = (0..6).map(|_| gh.next_log_line()).collect();
    let failed = lines
        .iter()
        .filter(|l| l.contains(" gssapi_failed "))
        .count();
    let truncated = lines.iter().filter(|l| l.contains(" truncated ")).count();
    assert_eq!((failed, truncated), (5, 1), "{lines:#?}");
    // The proxy still serves.
    let mut s = socks_gssapi_greeting(proxy).await;
    let mut ctx = client_ctx("rcmd@localhost");
    assert_eq!(socks_login(&mut s, &mut ctx, 0).await, 0);
}

#[test]
fn the_kerberos_example_checks() {
    let Some(realm) = realm() else { return };
    let out = std::process::Command::new(BIN)
        .args(["check", "examples/kerberos.toml"])
        .env("KRB5_CONFIG", realm.krb5_conf())
        .env("KRB5_KTNAME", realm.keytab())
        .output()
        .expect("gatehouse check");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn kerberos_users_get_their_groups_and_the_rules() {
    let Some(_realm) = realm() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let users = users_file(dir.path(), &[("alice", "unused-pw", "staff")]);
    let origin = Origin::fixed("hello").await;
    let echo = tcp_echo().await;
    // Config text: the users file gives alice the group the SOCKS rule refuses.
    let rules = "[[policy.rules]]\nname = \"no-socks-for-staff\"\naction = \"deny\"\n\
                 groups = [\"staff\"]\nprotocols = [\"socks-connect\"]\n";
    let cfg = config(rules).replace(
        "[policy.listeners.web]",
        &format!(
            "[policy]\nusers_file = \"{}\"\n\n[policy.listeners.web]",
            users.display()
        ),
    );
    let gh = Gatehouse::start(&cfg);
    // HTTP: allowed, logged as alice.
    let (_c, tok) = first_token("HTTP@localhost");
    let head = http_once(
        gh.addr("web"),
        &origin.url("/"),
        Some(&format!("Negotiate {}", b64(&tok))),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let line = gh.next_log_line();
    assert_eq!(log_field(&line, 4), "alice", "{line}");
    // SOCKS: alice is in staff, so the rule refuses (reply 2), logged with the rule.
    let mut s = socks_gssapi_greeting(gh.addr("socks")).await;
    let mut ctx = client_ctx("rcmd@localhost");
    assert_eq!(socks_login(&mut s, &mut ctx, 0).await, 0);
    s.write_all(&socks5_request(1, echo))
        .await
        .expect("request");
    let (rep, _) = socks5_reply(&mut s).await;
    assert_eq!(rep, 2, "not allowed by ruleset");
    let line = gh.next_log_line();
    assert_eq!(log_field(&line, 4), "alice", "{line}");
    assert!(line.contains("no-socks-for-staff"), "{line}");
}

/// A relay whose SOCKS listener requires GSSAPI and goes through agent "office", and that
/// agent, allowed to reach `allow` (a TOML list's items): (relay, agent, the files they use).
fn relay_and_agent(allow: &str) -> (Gatehouse, Gatehouse, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(BIN)
        .args(["cert", "--name", "relay.test", "--out"])
        .arg(dir.path().join("tunnel"))
        .output()
        .expect("gatehouse cert");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crt = dir.path().join("tunnel/relay.test.crt");
    let key = dir.path().join("tunnel/relay.test.key");
    let relay = Gatehouse::start(&format!(
        r#"
[[listeners]]
name = "agents"
kind = "tunnel"
listen = "127.0.0.1:0"
tls = {{ cert = "{crt}", key = "{key}" }}
[[listeners.agents]]
name = "office"
token = "office-token"

[[listeners]]
name = "socks"
kind = "socks"
listen = "127.0.0.1:0"
via_agent = "office"

[policy.listeners.socks]
auth = ["gssapi"]
kerberos_service = "rcmd/localhost"
{LOOPBACK_POLICY}"#,
        crt = crt.display(),
        key = key.display(),
    ));
    let agent = Gatehouse::start(&format!(
        r#"
[agent]
name = "office"
token = "office-token"
relays = ["{relay}"]
server_name = "relay.test"
ca = "{crt}"
allow = [{allow}]
reconnect_min = "50ms"
reconnect_max = "500ms"

[dns]
servers = ["127.0.0.1:9"]
timeout = "1s"
attempts = 1
"#,
        relay = relay.addr("agents"),
        crt = crt.display(),
    ));
    relay.wait_stderr("tunnel: agent connected");
    (relay, agent, dir)
}

// Multi-threaded: the echo servers run while the test thread waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks_gssapi_through_a_tunnel_agent_stays_wrapped() {
    let Some(_realm) = realm() else { return };
    let tcp = tcp_echo().await;
    let udp = UdpEcho::start("127.0.0.1:0").await;
    let allow = format!("\"{tcp}\", \"{}\"", udp.addr);
    let (relay, _agent, _dir) = relay_and_agent(&allow);
    let proxy = relay.addr("socks");

    // CONNECT: the stream to the agent is unwrapped, the way back wrapped and encrypted.
    let mut s = socks_gssapi_greeting(proxy).await;
    let mut ctx = client_ctx("rcmd@localhost");
    assert_eq!(socks_login(&mut s, &mut ctx, 2).await, 2);
    let w = ctx.wrap(true, &socks5_request(1, tcp)).expect("wrap");
    send_frame(&mut s, 3, &w).await;
    let (_, tok) = read_frame(&mut s).await;
    assert_eq!(&ctx.unwrap(&tok).expect("reply")[..2], &[5, 0]);
    let secret = b"through the agent: a secret payload";
    send_frame(&mut s, 3, &ctx.wrap(true, secret).expect("wrap")).await;
    let mut got = Vec::new();
    while got.len() < secret.len() {
        let (mtyp, tok) = read_frame(&mut s).await;
        assert_eq!(mtyp, 3);
        assert!(!tok.windows(secret.len()).any(|x| x == secret), "encrypted");
        got.extend_from_slice(&ctx.unwrap(&tok).expect("unwrap echo"));
    }
    assert_eq!(got, secret);

    // UDP ASSOCIATE through the agent: datagrams wrapped both ways between client and relay.
    let mut s = socks_gssapi_greeting(proxy).await;
    let mut ctx = udp_client_ctx("rcmd@localhost");
    assert_eq!(socks_login(&mut s, &mut ctx, 2).await, 2);
    let any: SocketAddr = "0.0.0.0:0".parse().expect("addr");
    send_frame(
        &mut s,
        3,
        &ctx.wrap(true, &socks5_request(3, any)).expect("wrap"),
    )
    .await;
    let (_, tok) = read_frame(&mut s).await;
    let reply = ctx.unwrap(&tok).expect("unwrap reply");
    assert_eq!(&reply[..4], &[5, 0, 0, 1], "{reply:?}");
    let relay_udp = SocketAddr::from((
        [reply[4], reply[5], reply[6], reply[7]],
        u16::from_be_bytes([reply[8], reply[9]]),
    ));
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut buf = vec![0u8; 65536];
    let mut back = None;
    // The agent's side of the association may not be up for the first datagram: a few tries.
    for _ in 0..20 {
        let d = ctx
            .wrap(true, &socks5_datagram(udp.addr, b"ping through the agent"))
            .expect("wrap");
        client.send_to(&message(&d), relay_udp).await.expect("send");
        let wait = std::time::Duration::from_millis(250);
        if let Ok(Ok((n, _))) = tokio::time::timeout(wait, client.recv_from(&mut buf)).await {
            back = Some(buf[..n].to_vec());
            break;
        }
    }
    let back = back.expect("an echo through the agent");
    assert_eq!(&back[..2], &[1, 3], "an RFC 1961 message");
    let plain = ctx.unwrap(&back[4..]).expect("unwrap").to_vec();
    assert_eq!(plain, socks5_datagram(udp.addr, b"ping through the agent"));
}

/// A GSSAPI SOCKS login that the server refuses after the context is made: the client gets
/// the server's last context token, then `[1, 0xff]` and the close.
async fn socks_login_refused_after_context(proxy: SocketAddr) -> Vec<u8> {
    let mut s = socks_gssapi_greeting(proxy).await;
    let mut ctx = client_ctx("rcmd@localhost");
    let tok = ctx.step(None, None).expect("init").expect("token").to_vec();
    send_frame(&mut s, 1, &tok).await;
    let (mtyp, tok) = read_frame(&mut s).await;
    assert_eq!(mtyp, 1, "the server's context token");
    ctx.step(Some(&tok), None).expect("mutual authentication");
    until_closed(&mut s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kerberos_users_get_their_groups_from_ldap_and_a_down_directory_refuses() {
    let Some(_realm) = realm() else { return };
    let mut slapd = common::ldap::Slapd::start();
    let echo = tcp_echo().await;
    let origin = Origin::fixed("hello").await;
    // alice is in `staff` in the directory (memberOf), and only there: no users file.
    let rules = "[[policy.rules]]\nname = \"no-socks-for-staff\"\naction = \"deny\"\n\
                 groups = [\"staff\"]\nprotocols = [\"socks-connect\"]\n";
    let ldap = format!(
        "[policy.ldap]\nurl = \"{}\"\nuser_filter = \"(uid={{user}})\"\n\
         bind_dn = \"{}\"\nbind_password = \"{}\"\nbase = \"{}\"\n",
        slapd.url(),
        common::ldap::SERVICE_DN,
        common::ldap::SERVICE_PW,
        common::ldap::PEOPLE,
    );
    let gh = Gatehouse::start(&format!("{}\n{ldap}", config(rules)));

    // The directory is down: the tickets are good, but without the groups nobody gets in.
    slapd.stop();
    let (_c, tok) = first_token("HTTP@localhost");
    let authz = format!("Negotiate {}", b64(&tok));
    let head = http_once(gh.addr("web"), &origin.url("/"), Some(&authz)).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert_eq!(
        socks_login_refused_after_context(gh.addr("socks")).await,
        [1, 0xff]
    );
    assert_eq!(origin.seen().len(), 0);
    let line = gh.next_log_line();
    assert_eq!(log_field(&line, 4), "alice", "{line}");
    assert!(line.contains(" 503 "), "{line}");
    // A refused SOCKS login logs the principal it proved.
    let line = gh.next_log_line();
    assert_eq!(log_field(&line, 4), "alice@GATEHOUSE.TEST", "{line}");
    assert!(line.contains(" login_unavailable "), "{line}");

    // Back up: alice's groups come from the directory and drive the rules.
    slapd.restart();
    let (_c, tok) = first_token("HTTP@localhost");
    let authz = format!("Negotiate {}", b64(&tok));
    let head = http_once(gh.addr("web"), &origin.url("/"), Some(&authz)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let line = gh.next_log_line();
    assert_eq!(log_field(&line, 4), "alice", "{line}");
    let mut s = socks_gssapi_greeting(gh.addr("socks")).await;
    let mut ctx = client_ctx("rcmd@localhost");
    assert_eq!(socks_login(&mut s, &mut ctx, 0).await, 0);
    s.write_all(&socks5_request(1, echo))
        .await
        .expect("request");
    let (rep, _) = socks5_reply(&mut s).await;
    assert_eq!(rep, 2, "staff may not use SOCKS CONNECT");
    let line = gh.next_log_line();
    assert!(line.contains("no-socks-for-staff"), "{line}");
}

/// A client context for `service` on carol's credentials (tickets of three seconds, in
/// memory: alice's ticket cache is not touched).
fn carol_ctx(cred: &Cred, service: &str) -> ClientCtx {
    let name = Name::new(service.as_bytes(), Some(GSS_NT_HOSTBASED_SERVICE)).expect("name");
    let flags = CtxFlags::GSS_C_MUTUAL_FLAG | CtxFlags::GSS_C_REPLAY_FLAG;
    ClientCtx::new(Some(cred.clone()), name, flags, Some(GSS_MECH_KRB5))
}

#[tokio::test]
async fn an_expired_ticket_is_refused() {
    let Some(_realm) = realm() else { return };
    let origin = Origin::fixed("hello").await;
    let gh = Gatehouse::start(&config(""));
    let carol = Name::new(b"carol", Some(GSS_NT_KRB5_PRINCIPAL)).expect("name");
    let cred = Cred::acquire_with_password(
        Some(&carol),
        krb::CAROL_PASSWORD,
        None,
        CredUsage::Initiate,
        None,
    )
    .expect("carol's tickets");
    // Two tokens made now, while the tickets are good: one is sent at once...
    let token = |mut ctx: ClientCtx| ctx.step(None, None).expect("init").expect("token").to_vec();
    let now = token(carol_ctx(&cred, "HTTP@localhost"));
    let later = token(carol_ctx(&cred, "HTTP@localhost"));
    let url = origin.url("/");
    let head = http_once(
        gh.addr("web"),
        &url,
        Some(&format!("Negotiate {}", b64(&now))),
    )
    .await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "carol's ticket is good: {head}"
    );
    // ...the other once the ticket has expired (past the realm's one-second clock skew).
    let left = cred.lifetime().expect("lifetime");
    assert!(left <= std::time::Duration::from_secs(3), "{left:?}");
    tokio::time::sleep(left + std::time::Duration::from_millis(2500)).await;
    let head = http_once(
        gh.addr("web"),
        &url,
        Some(&format!("Negotiate {}", b64(&later))),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 407"), "expired: {head}");
    // Refused for its age, not as a replay or for anything else.
    let why = gh.wait_stderr("Negotiate authentication failed");
    assert!(why.contains("expired"), "{why}");
    assert_eq!(origin.seen().len(), 1);
}
