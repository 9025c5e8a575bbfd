//! Chaining through parent proxies, driven from `gatehouse::upstream` against real parents:
//! a second Gatehouse as the HTTP parent (CONNECT, absolute-form, credentials), the
//! `fast-socks5` crate's server as the SOCKS5 parent, and - with `GATEHOUSE_PEER_TESTS=1` -
//! Dante and Squid (see `tests/parents_peers.rs`).

mod common;
mod parents_util;

use std::time::Duration;

use common::*;
use gatehouse::connector::Host;
use gatehouse::policy::config::ParentKind;
use gatehouse::upstream::{
    connect_route, connect_via, proxy_authorization, Direct, Mode, ParentError, RouteUsed,
};
use parents_util::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(5);

fn parent_gatehouse(echo_port: u16, extra: &str) -> Gatehouse {
    Gatehouse::start(&format!(
        "{}[dns.hosts]\n\"echo.test\" = \"127.0.0.1\"\n{extra}",
        http_listener("parent", &format!("connect_ports = [{echo_port}]"))
    ))
}

#[tokio::test]
async fn http_parent_carries_a_tunnel_and_resolves_names_itself() {
    let echo = greeting_echo_server().await;
    let gh = parent_gatehouse(echo.port(), "");
    let p = spec("gh", ParentKind::Http, gh.addr("parent"), None);
    // Only the parent knows echo.test: the name must travel in the CONNECT line.
    let (c, _) = client_side(&[]);
    let (stream, leftover) = connect_via(&p, &c, &name("echo.test"), echo.port(), T)
        .await
        .expect("tunnel through the gatehouse parent");
    assert_echoes(stream, leftover).await;
    // Our own connector cannot resolve it: proof that nothing was looked up here.
    assert!(c.resolve(&name("echo.test")).await.is_err());
}

#[tokio::test]
async fn http_parent_credentials_right_wrong_and_missing() {
    let echo = greeting_echo_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let users = users_file(dir.path(), &[("carol", "pa55word", "")]);
    let gh = parent_gatehouse(
        echo.port(),
        &format!(
            "[policy]\nusers_file = \"{}\"\n[policy.listeners.parent]\nauth = true\n{LOOPBACK_POLICY}",
            users.display()
        ),
    );
    let addr = gh.addr("parent");
    let (c, _) = client_side(&[]);
    let target = name("echo.test");
    let good = spec("gh", ParentKind::Http, addr, Some(("carol", "pa55word")));
    let (s, l) = connect_via(&good, &c, &target, echo.port(), T)
        .await
        .expect("right credentials");
    assert_echoes(s, l).await;
    for creds in [Some(("carol", "wrong")), None] {
        let bad = spec("gh", ParentKind::Http, addr, creds);
        match connect_via(&bad, &c, &target, echo.port(), T).await {
            Err(e @ ParentError::AuthRejected { .. }) => {
                assert_eq!(e.proxy_status_kind(), "proxy_configuration_error");
                assert_eq!(e.http_status(), 502);
                assert!(!e.to_string().contains("wrong"), "no secret in {e}");
            }
            other => panic!("{creds:?}: expected AuthRejected, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_parent_refusing_the_destination_is_reported_with_its_status() {
    let echo = greeting_echo_server().await;
    let gh = parent_gatehouse(echo.port(), "");
    let p = spec("gh", ParentKind::Http, gh.addr("parent"), None);
    let (c, _) = client_side(&[]);
    // Port 22 is not in the parent's connect_ports.
    match connect_via(&p, &c, &name("echo.test"), 22, T).await {
        Err(e @ ParentError::HttpRefused { status: 403, .. }) => {
            assert_eq!(e.received_status(), Some(403));
            assert_eq!(e.socks_reply(), 0x02);
        }
        other => panic!("expected HttpRefused 403, got {other:?}"),
    }
}

#[tokio::test]
async fn unreachable_silent_and_garbage_parents_fail_cleanly() {
    let (c, _) = client_side(&[]);
    let target = Host::Ip("127.0.0.1".parse().expect("ip"));
    let closed = closed_port().await;
    for kind in [ParentKind::Http, ParentKind::Socks5] {
        match connect_via(&spec("dead", kind, closed, None), &c, &target, 1, T).await {
            Err(e @ ParentError::Connect { .. }) => {
                assert_eq!(e.proxy_status_kind(), "connection_refused");
                assert_eq!(e.parent(), Some("dead"));
            }
            other => panic!("{kind:?}: expected Connect, got {other:?}"),
        }
    }
    // Accepts and never answers: the handshake timeout ends it.
    let silent = raw_origin(|mut s| async move {
        let mut buf = [0u8; 1024];
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    for kind in [ParentKind::Http, ParentKind::Socks5] {
        let started = std::time::Instant::now();
        let short = Duration::from_millis(300);
        match connect_via(&spec("mute", kind, silent, None), &c, &target, 1, short).await {
            Err(e @ ParentError::Timeout { .. }) => assert_eq!(e.http_status(), 504),
            other => panic!("{kind:?}: expected Timeout, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    // Speaks another protocol.
    let garbage = raw_origin(|mut s| async move {
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
    })
    .await;
    for kind in [ParentKind::Http, ParentKind::Socks5] {
        match connect_via(&spec("ssh", kind, garbage, None), &c, &target, 1, T).await {
            Err(ParentError::Protocol { .. }) => {}
            other => panic!("{kind:?}: expected Protocol, got {other:?}"),
        }
    }
    // Closes before answering.
    let hangup = raw_origin(|s| async move { drop(s) }).await;
    match connect_via(
        &spec("gone", ParentKind::Http, hangup, None),
        &c,
        &target,
        1,
        T,
    )
    .await
    {
        Err(e @ ParentError::Closed { .. }) => {
            assert_eq!(e.proxy_status_kind(), "connection_terminated")
        }
        other => panic!("expected Closed, got {other:?}"),
    }
}

#[tokio::test]
async fn failover_goes_to_the_next_parent_and_to_direct() {
    let echo = greeting_echo_server().await;
    let gh = parent_gatehouse(echo.port(), "");
    let closed = closed_port().await;
    let (c, policy) = client_side(&[
        ("dead", format!("http://{closed}")),
        ("live", format!("http://{}", gh.addr("parent"))),
    ]);
    let route = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let target = name("echo.test");
    let r = connect_route(
        &route(&["dead", "live"]),
        &policy,
        &c,
        &target,
        echo.port(),
        Mode::Tunnel,
        Direct::Forbidden("test"),
        T,
    )
    .await
    .expect("second parent");
    assert_eq!(r.used.name(), "live");
    assert_eq!(r.peer, gh.addr("parent"));
    assert_eq!(r.failures.len(), 1);
    assert!(matches!(&r.failures[0], ParentError::Connect { parent, .. } if parent == "dead"));
    assert_echoes(r.stream, r.leftover).await;

    // `direct` after a dead parent, to checked addresses only.
    let ip = Host::Ip("127.0.0.1".parse().expect("ip"));
    let r = connect_route(
        &route(&["dead", "direct"]),
        &policy,
        &c,
        &ip,
        echo.port(),
        Mode::Tunnel,
        Direct::Addrs(&[echo]),
        T,
    )
    .await
    .expect("direct");
    assert_eq!(r.used, RouteUsed::Direct);
    assert_echoes(r.stream, r.leftover).await;

    // Everything fails: the last entry's error; a forbidden `direct` is one of them.
    let err = connect_route(
        &route(&["dead", "direct"]),
        &policy,
        &c,
        &ip,
        echo.port(),
        Mode::Tunnel,
        Direct::Forbidden("guard"),
        T,
    )
    .await
    .expect_err("nothing works");
    assert!(
        matches!(err, ParentError::DirectForbidden("guard")),
        "{err:?}"
    );
    let err = connect_route(
        &route(&["nobody"]),
        &policy,
        &c,
        &ip,
        1,
        Mode::Tunnel,
        Direct::Resolve,
        T,
    )
    .await
    .expect_err("unknown parent");
    assert!(matches!(err, ParentError::UnknownParent(_)), "{err:?}");
    let err = connect_route(&[], &policy, &c, &ip, 1, Mode::Tunnel, Direct::Resolve, T)
        .await
        .expect_err("empty");
    assert!(matches!(err, ParentError::EmptyRoute));
}

#[tokio::test]
async fn plain_http_through_an_http_parent_uses_absolute_form_with_credentials() {
    let origin = Origin::fixed("through the parent").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let users = users_file(dir.path(), &[("dave", "s3cret!", "")]);
    let gh = parent_gatehouse(
        1,
        &format!(
            "[policy]\nusers_file = \"{}\"\n[policy.listeners.parent]\nauth = true\n{LOOPBACK_POLICY}",
            users.display()
        ),
    );
    let (c, policy) = client_side_with(&format!(
        "[[policy.parents]]\nname = \"up\"\nurl = \"http://{}\"\nusername = \"dave\"\npassword = \"s3cret!\"\n",
        gh.addr("parent")
    ));
    let route = vec!["up".to_string()];
    let target = Host::Ip(origin.addr.ip());
    let r = connect_route(
        &route,
        &policy,
        &c,
        &target,
        origin.addr.port(),
        Mode::HttpForward,
        Direct::Forbidden("x"),
        T,
    )
    .await
    .expect("parent reached");
    assert!(matches!(
        &r.used,
        RouteUsed::Parent {
            absolute_form: true,
            kind: ParentKind::Http,
            ..
        }
    ));
    let auth = proxy_authorization(policy.parent("up").expect("parent")).expect("credentials");
    let mut s = r.stream;
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: {auth}\r\nConnection: close\r\n\r\n",
        origin.url("/x"),
        origin.addr
    );
    s.write_all(req.as_bytes()).await.expect("send");
    let mut resp = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut resp))
        .await
        .expect("in time")
        .expect("read");
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("through the parent"), "{text}");
    assert_eq!(origin.seen().len(), 1);
    assert!(
        !origin.seen()[0].headers.contains_key("proxy-authorization"),
        "the parent must not pass our credentials on"
    );
}

#[tokio::test]
async fn socks5_parent_without_and_with_a_password() {
    let echo = greeting_echo_server().await;
    let (c, _) = client_side(&[]);
    let open = socks5_parent(None).await;
    let p = spec("socks", ParentKind::Socks5, open, None);
    // A name goes as ATYP 3: resolved by the parent (localhost from its /etc/hosts).
    for target in [
        name("localhost"),
        Host::Ip("127.0.0.1".parse().expect("ip")),
    ] {
        let (s, l) = connect_via(&p, &c, &target, echo.port(), T)
            .await
            .unwrap_or_else(|e| panic!("{target}: {e}"));
        assert_echoes(s, l).await;
    }

    let locked = socks5_parent(Some(("erin", "hunter2"))).await;
    let good = spec(
        "socks",
        ParentKind::Socks5,
        locked,
        Some(("erin", "hunter2")),
    );
    let (s, l) = connect_via(&good, &c, &name("localhost"), echo.port(), T)
        .await
        .expect("right password");
    assert_echoes(s, l).await;
    for creds in [Some(("erin", "nope")), None] {
        let bad = spec("socks", ParentKind::Socks5, locked, creds);
        match connect_via(&bad, &c, &name("localhost"), echo.port(), T).await {
            Err(ParentError::AuthRejected { .. }) => {}
            other => panic!("{creds:?}: expected AuthRejected, got {other:?}"),
        }
    }

    // The parent cannot reach the destination: its reply code comes back.
    let closed = closed_port().await;
    match connect_via(&p, &c, &Host::Ip(closed.ip()), closed.port(), T).await {
        Err(e @ ParentError::SocksRefused { .. }) => {
            let ParentError::SocksRefused { code, .. } = &e else {
                unreachable!()
            };
            assert_ne!(*code, 0);
            assert_eq!(e.socks_reply(), *code);
        }
        other => panic!("expected SocksRefused, got {other:?}"),
    }
}

#[tokio::test]
async fn an_http_client_through_a_socks_parent_and_back() {
    // Any door, any parent: route HTTP CONNECT-style traffic via SOCKS5, and a SOCKS-style
    // tunnel via the HTTP parent, through one route with both kinds.
    let echo = greeting_echo_server().await;
    let gh = parent_gatehouse(echo.port(), "");
    let socks = socks5_parent(None).await;
    let (c, policy) = client_side(&[
        ("s5", format!("socks5://{socks}")),
        ("gh", format!("http://{}", gh.addr("parent"))),
    ]);
    for order in [["s5", "gh"], ["gh", "s5"]] {
        let route: Vec<String> = order.iter().map(|s| s.to_string()).collect();
        let r = connect_route(
            &route,
            &policy,
            &c,
            &Host::Ip("127.0.0.1".parse().expect("ip")),
            echo.port(),
            Mode::Tunnel,
            Direct::Forbidden("x"),
            T,
        )
        .await
        .expect("tunnel");
        assert_eq!(r.used.name(), order[0]);
        assert!(r.failures.is_empty());
        assert_echoes(r.stream, r.leftover).await;
    }
}

#[tokio::test]
async fn bytes_sent_with_the_answer_are_kept() {
    // Parents that answer and pass on the destination's greeting in the same segment, then
    // echo: the greeting must come back in `leftover`, not be swallowed with the answer.
    async fn scripted(answer: &'static [u8], skip: usize) -> std::net::SocketAddr {
        raw_origin(move |mut s| async move {
            let mut buf = vec![0u8; 4096];
            let mut seen = 0;
            while seen < skip {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen += n,
                }
            }
            let mut first = answer.to_vec();
            first.extend_from_slice(GREETING);
            if s.write_all(&first).await.is_err() {
                return;
            }
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        })
        .await
    }
    let (c, _) = client_side(&[]);
    let target = Host::Ip("127.0.0.1".parse().expect("ip"));
    let connect_len = "CONNECT 127.0.0.1:7 HTTP/1.1\r\nHost: 127.0.0.1:7\r\n\r\n".len();
    let http = scripted(b"HTTP/1.1 200 Connection established\r\n\r\n", connect_len).await;
    let (s, l) = connect_via(&spec("h", ParentKind::Http, http, None), &c, &target, 7, T)
        .await
        .expect("http");
    assert_eq!(&l[..], GREETING);
    assert_echoes(s, l).await;
    // SOCKS5: method choice, then (after the 10-byte request) the reply and the greeting.
    let socks = raw_origin(|mut s| async move {
        let mut buf = [0u8; 64];
        if s.read_exact(&mut buf[..3]).await.is_err() || s.write_all(&[5, 0]).await.is_err() {
            return;
        }
        if s.read_exact(&mut buf[..10]).await.is_err() {
            return;
        }
        let mut first = vec![5, 0, 0, 1, 127, 0, 0, 1, 0, 7];
        first.extend_from_slice(GREETING);
        let _ = s.write_all(&first).await;
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    })
    .await;
    let (s, l) = connect_via(
        &spec("s", ParentKind::Socks5, socks, None),
        &c,
        &target,
        7,
        T,
    )
    .await
    .expect("socks");
    assert_eq!(&l[..], GREETING);
    assert_echoes(s, l).await;
}
