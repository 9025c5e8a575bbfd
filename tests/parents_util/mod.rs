//! Helpers for the chaining tests: the client side (connector and policy as the proxy builds
//! them), an echo destination that speaks first, parents' specs, a SOCKS5 parent.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use gatehouse::config::Config;
use gatehouse::connector::{Connector, Host};
use gatehouse::metrics::Metrics;
use gatehouse::policy::config::{ParentKind, ParentSpec};
use gatehouse::policy::{Policy, Secret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::common::raw_origin;

/// The first bytes the echo destination sends, before the client says anything.
pub const GREETING: &[u8] = b"HELLO from echo\n";

/// A destination that greets, then echoes until EOF.
pub async fn greeting_echo_server() -> SocketAddr {
    raw_origin(|mut s| async move {
        if s.write_all(GREETING).await.is_err() {
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await
}

/// The greeting arrives whole (from `leftover` and the stream), then a ping comes back.
pub async fn assert_echoes(mut s: TcpStream, leftover: BytesMut) {
    let mut got = leftover.to_vec();
    let work = async {
        while got.len() < GREETING.len() {
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).await.expect("read greeting");
            assert!(n > 0, "closed before the greeting; have {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, GREETING, "the destination's first bytes, none lost");
        s.write_all(b"ping\n").await.expect("write");
        let mut back = [0u8; 5];
        s.read_exact(&mut back).await.expect("echo");
        assert_eq!(&back, b"ping\n");
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .expect("echo within 10s");
}

pub fn name(s: &str) -> Host {
    Host::Name(s.to_string())
}

pub fn spec(
    name: &str,
    kind: ParentKind,
    addr: SocketAddr,
    creds: Option<(&str, &str)>,
) -> ParentSpec {
    ParentSpec {
        name: name.to_string(),
        kind,
        host: Host::Ip(addr.ip()),
        port: addr.port(),
        username: creds.map(|c| c.0.to_string()),
        password: creds.map(|c| Secret::new(c.1)),
    }
}

/// The client proxy's connector (no DNS server, no static names) and a policy holding
/// `parents` (name, url).
pub fn client_side(parents: &[(&str, String)]) -> (Connector, Policy) {
    let mut text = String::new();
    for (name, url) in parents {
        text.push_str(&format!(
            "[[policy.parents]]\nname = \"{name}\"\nurl = \"{url}\"\n"
        ));
    }
    client_side_with(&text)
}

pub fn client_side_with(policy_toml: &str) -> (Connector, Policy) {
    let text = format!(
        "[[listeners]]\nname = \"client\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n\
         [dns]\nservers = [\"127.0.0.1:9\"]\ntimeout = \"200ms\"\nattempts = 1\n\
         [upstream]\nconnect_timeout = \"2s\"\n{policy_toml}"
    );
    let cfg = Config::parse(&text).unwrap_or_else(|e| panic!("config: {e:?}"));
    let connector =
        Connector::new(&cfg.dns, &cfg.upstream, Arc::new(Metrics::new())).expect("connector");
    let policy = Policy::compile(&cfg.policy, Vec::new()).expect("policy");
    (connector, policy)
}

/// An address nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

/// A SOCKS5 parent built on the `fast-socks5` crate's server, CONNECT only, optionally
/// requiring a username and password.
pub async fn socks5_parent(creds: Option<(&'static str, &'static str)>) -> SocketAddr {
    use fast_socks5::server::{run_tcp_proxy, DnsResolveHelper as _, Socks5ServerProtocol};
    use fast_socks5::{ReplyError, Socks5Command};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind socks");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let proto = match creds {
                    None => Socks5ServerProtocol::accept_no_auth(socket).await,
                    Some((u, p)) => {
                        Socks5ServerProtocol::accept_password_auth(socket, move |user, pass| {
                            user == u && pass == p
                        })
                        .await
                        .map(|(proto, _)| proto)
                    }
                };
                let Ok(proto) = proto else { return };
                let Ok((proto, cmd, target)) = proto.read_command().await else {
                    return;
                };
                let Ok((proto, cmd, target)) = (proto, cmd, target).resolve_dns().await else {
                    return;
                };
                match cmd {
                    Socks5Command::TCPConnect => {
                        let _ = run_tcp_proxy(proto, &target, Duration::from_secs(5), false).await;
                    }
                    _ => {
                        let _ = proto.reply_error(&ReplyError::CommandNotSupported).await;
                    }
                }
            });
        }
    });
    addr
}
