//! Chaining: reaching a destination through parent proxies (`route` rules).
//!
//! - [`http_connect`]: CONNECT to an HTTP parent, `Proxy-Authorization` (pure).
//! - [`socks5`]: the SOCKS5 client messages (pure).
//! - [`error`]: [`ParentError`] and its mapping to HTTP status, `Proxy-Status` and SOCKS replies.
//! - here: the thin async layer - connect to the parent with the [`Connector`], drive the
//!   handshake within a timeout, and try a route's parents in order.
//!
//! Any door can use any parent kind: an HTTP client's CONNECT or a SOCKS client's CONNECT
//! goes through [`connect_route`] in [`Mode::Tunnel`] and gets a byte stream to the
//! destination, whatever the parent speaks. A plain HTTP request uses [`Mode::HttpForward`]:
//! an HTTP parent is then only connected to (the caller sends the absolute-form request with
//! [`proxy_authorization`]), a SOCKS5 parent still opens a tunnel to the origin.

pub mod error;
pub mod http_connect;
pub mod socks5;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use error::ParentError;
pub use http_connect::proxy_authorization;

use crate::connector::{Connector, Host};
use crate::policy::config::{ParentKind, ParentSpec};
use crate::policy::Policy;
use http_connect::{ConnectAnswer, MAX_RESPONSE_HEAD};

/// The route entry that means "no parent".
pub const DIRECT: &str = "direct";

/// How a rule's `agent = "NAME"` is kept in its route: the one entry `agent:NAME`.
pub const AGENT_PREFIX: &str = "agent:";

/// The tunnel agent a route goes through (a rule with `agent = ...`), if it does: its
/// first entry. The entries after it are the fallback ([`agent_fallback`]).
pub fn route_agent(route: &[String]) -> Option<&str> {
    route.first()?.strip_prefix(AGENT_PREFIX)
}

/// A route to an agent: the parents (or `direct`) tried, in order, when no agent of that
/// name is connected or the open fails (a rule's `parents` beside `agent`). Empty: none,
/// the failure is the answer. Not an agent route: empty.
pub fn agent_fallback(route: &[String]) -> &[String] {
    match route_agent(route) {
        Some(_) => &route[1..],
        None => &[],
    }
}

/// What the stream is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A byte tunnel to the destination (HTTP CONNECT, SOCKS CONNECT).
    Tunnel,
    /// A plain HTTP request: HTTP parents get it in absolute-form (no CONNECT).
    HttpForward,
}

/// How the `direct` entry of a route may connect. A route verdict skips the destination
/// guard (parents resolve names themselves), so `direct` must be given checked addresses or
/// be explicitly allowed to resolve.
#[derive(Debug, Clone, Copy)]
pub enum Direct<'a> {
    /// Connect only to these addresses (checked by the caller, e.g. with the guard).
    Addrs(&'a [SocketAddr]),
    /// Resolve the destination and connect, unchecked.
    Resolve,
    /// `direct` entries fail with [`ParentError::DirectForbidden`] and the next one is tried.
    Forbidden(&'static str),
}

/// Which route entry carried the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteUsed {
    Direct,
    Parent {
        name: String,
        kind: ParentKind,
        /// An HTTP parent in [`Mode::HttpForward`]: send absolute-form requests with
        /// [`proxy_authorization`]; the stream is to the parent, not the origin.
        absolute_form: bool,
    },
}

impl RouteUsed {
    /// For the access log: `direct` or the parent's name.
    pub fn name(&self) -> &str {
        match self {
            RouteUsed::Direct => DIRECT,
            RouteUsed::Parent { name, .. } => name,
        }
    }
}

/// A stream ready for the client's bytes.
#[derive(Debug)]
pub struct Routed {
    pub stream: TcpStream,
    /// Bytes the parent sent after its answer: the destination's first bytes. Send them to
    /// the client before relaying.
    pub leftover: BytesMut,
    /// The TCP peer: the parent, or the destination for `direct`.
    pub peer: SocketAddr,
    pub used: RouteUsed,
    /// The entries tried before, and why each failed (for the log).
    pub failures: Vec<ParentError>,
}

/// Connects to `host:port` through `parent`: TCP to the parent with the connector (its own
/// connect timeout), then the handshake within `timeout`. Returns the stream and any bytes
/// that arrived past the parent's answer.
pub async fn connect_via(
    parent: &ParentSpec,
    connector: &Connector,
    host: &Host,
    port: u16,
    timeout: Duration,
) -> Result<(TcpStream, BytesMut), ParentError> {
    let (stream, _) = reach(parent, connector).await?;
    handshake(parent, stream, host, port, timeout).await
}

/// Tries each entry of `route` in order until one gives a stream; `"direct"` connects
/// without a parent as `direct` allows. On failure of all, the last entry's error.
#[allow(clippy::too_many_arguments)]
pub async fn connect_route(
    route: &[String],
    policy: &Policy,
    connector: &Connector,
    host: &Host,
    port: u16,
    mode: Mode,
    direct: Direct<'_>,
    timeout: Duration,
) -> Result<Routed, ParentError> {
    let mut failures = Vec::new();
    for name in route {
        let attempt = if name == DIRECT {
            connect_direct(connector, host, port, direct).await
        } else {
            match policy.parent(name) {
                None => Err(ParentError::UnknownParent(name.clone())),
                Some(p) => {
                    let r = connect_parent(p, connector, host, port, mode, timeout).await;
                    let seen = r.as_ref().map(|_| ()).map_err(ToString::to_string);
                    connector.metrics().stats.parent_result(name, seen);
                    r
                }
            }
        };
        match attempt {
            Ok((stream, leftover, peer, used)) => {
                return Ok(Routed {
                    stream,
                    leftover,
                    peer,
                    used,
                    failures,
                })
            }
            Err(e) => {
                tracing::warn!(route = %name, target = %format_args!("{host}:{port}"), error = %e, "route entry failed");
                failures.push(e);
            }
        }
    }
    Err(failures.pop().unwrap_or(ParentError::EmptyRoute))
}

type Attempt = Result<(TcpStream, BytesMut, SocketAddr, RouteUsed), ParentError>;

async fn connect_direct(
    connector: &Connector,
    host: &Host,
    port: u16,
    direct: Direct<'_>,
) -> Attempt {
    let c = match direct {
        Direct::Forbidden(why) => return Err(ParentError::DirectForbidden(why)),
        Direct::Resolve => connector.connect(host, port).await,
        Direct::Addrs(addrs) => {
            connector
                .connect_addrs(addrs, &format!("{host}:{port}"))
                .await
        }
    }
    .map_err(ParentError::Direct)?;
    Ok((c.stream, BytesMut::new(), c.peer, RouteUsed::Direct))
}

async fn connect_parent(
    p: &ParentSpec,
    connector: &Connector,
    host: &Host,
    port: u16,
    mode: Mode,
    timeout: Duration,
) -> Attempt {
    let (stream, peer) = reach(p, connector).await?;
    let absolute_form = mode == Mode::HttpForward && p.kind == ParentKind::Http;
    let (stream, leftover) = if absolute_form {
        (stream, BytesMut::new())
    } else {
        handshake(p, stream, host, port, timeout).await?
    };
    let used = RouteUsed::Parent {
        name: p.name.clone(),
        kind: p.kind,
        absolute_form,
    };
    Ok((stream, leftover, peer, used))
}

async fn reach(
    p: &ParentSpec,
    connector: &Connector,
) -> Result<(TcpStream, SocketAddr), ParentError> {
    let c = connector
        .connect(&p.host, p.port)
        .await
        .map_err(|source| ParentError::Connect {
            parent: p.name.clone(),
            source,
        })?;
    Ok((c.stream, c.peer))
}

async fn handshake(
    p: &ParentSpec,
    mut stream: TcpStream,
    host: &Host,
    port: u16,
    timeout: Duration,
) -> Result<(TcpStream, BytesMut), ParentError> {
    let work = async {
        match p.kind {
            ParentKind::Http => http_tunnel(p, &mut stream, host, port).await,
            ParentKind::Socks5 => socks5_tunnel(p, &mut stream, host, port).await,
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(leftover)) => Ok((stream, leftover)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ParentError::Timeout {
            parent: p.name.clone(),
            kind: p.kind,
            timeout,
        }),
    }
}

/// An HTTP CONNECT through the parent `p` on `s`: the bytes read past its answer head.
pub(crate) async fn http_tunnel(
    p: &ParentSpec,
    s: &mut TcpStream,
    host: &Host,
    port: u16,
) -> Result<BytesMut, ParentError> {
    let closed = |source| ParentError::Closed {
        parent: p.name.clone(),
        source,
    };
    s.write_all(&http_connect::encode_connect(p, host, port))
        .await
        .map_err(closed)?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let answer = http_connect::decode_answer(&buf).map_err(|e| ParentError::Protocol {
            parent: p.name.clone(),
            kind: p.kind,
            detail: e.to_string(),
        })?;
        match answer {
            ConnectAnswer::Open { head_len } => {
                let _ = buf.split_to(head_len);
                return Ok(buf);
            }
            ConnectAnswer::Refused { head } if head.status == 407 => {
                return Err(ParentError::AuthRejected {
                    parent: p.name.clone(),
                    detail: format!("HTTP 407, credentials {}", sent(p)),
                })
            }
            ConnectAnswer::Refused { head } => {
                return Err(ParentError::HttpRefused {
                    parent: p.name.clone(),
                    target: format!("{host}:{port}"),
                    status: head.status,
                })
            }
            ConnectAnswer::Incomplete => {
                read_more(s, &mut buf, MAX_RESPONSE_HEAD + 1)
                    .await
                    .map_err(closed)?;
            }
        }
    }
}

fn sent(p: &ParentSpec) -> &'static str {
    if p.username.is_some() {
        "sent"
    } else {
        "not configured"
    }
}

/// A SOCKS5 CONNECT through the parent `p` on `s`: the bytes read past its reply.
pub(crate) async fn socks5_tunnel(
    p: &ParentSpec,
    s: &mut TcpStream,
    host: &Host,
    port: u16,
) -> Result<BytesMut, ParentError> {
    let closed = |source| ParentError::Closed {
        parent: p.name.clone(),
        source,
    };
    let bad = |e: socks5::Socks5Error| ParentError::Protocol {
        parent: p.name.clone(),
        kind: p.kind,
        detail: e.to_string(),
    };
    let creds = p.username.as_deref().zip(p.password.as_ref());
    let mut out = Vec::with_capacity(600);
    socks5::encode_greeting(creds.is_some(), &mut out);
    // Credentials and the request may follow the greeting at once only when no method
    // choice is pending on them: send step by step.
    s.write_all(&out).await.map_err(closed)?;
    let mut buf = BytesMut::with_capacity(socks5::MAX_REPLY);
    let method = read_msg(s, &mut buf, |b| socks5::decode_method(b, creds.is_some()))
        .await
        .map_err(closed)?
        .map_err(bad)?;
    if method == socks5::METHOD_NO_ACCEPTABLE {
        return Err(ParentError::AuthRejected {
            parent: p.name.clone(),
            detail: format!("no acceptable SOCKS5 method, credentials {}", sent(p)),
        });
    }
    if let Some((user, password)) = creds {
        out.clear();
        socks5::encode_password(user, password.expose(), &mut out);
        s.write_all(&out).await.map_err(closed)?;
        let ok = read_msg(s, &mut buf, socks5::decode_password_status)
            .await
            .map_err(closed)?
            .map_err(bad)?;
        if !ok {
            return Err(ParentError::AuthRejected {
                parent: p.name.clone(),
                detail: "SOCKS5 login failed".into(),
            });
        }
    }
    out.clear();
    socks5::encode_connect(host, port, &mut out);
    s.write_all(&out).await.map_err(closed)?;
    let (code, _bound) = read_msg(s, &mut buf, socks5::decode_reply)
        .await
        .map_err(closed)?
        .map_err(bad)?;
    if code != 0 {
        return Err(ParentError::SocksRefused {
            parent: p.name.clone(),
            target: format!("{host}:{port}"),
            code,
        });
    }
    Ok(buf)
}

/// Reads until `decode` gives a message (consumed from `buf`) or rejects the bytes. The outer
/// `Err` is I/O (including EOF), the inner one the decoder's verdict.
async fn read_msg<T, E>(
    s: &mut TcpStream,
    buf: &mut BytesMut,
    decode: impl Fn(&[u8]) -> Result<Option<(T, usize)>, E>,
) -> std::io::Result<Result<T, E>> {
    loop {
        match decode(buf) {
            Ok(Some((msg, used))) => {
                let _ = buf.split_to(used);
                return Ok(Ok(msg));
            }
            Err(e) => return Ok(Err(e)),
            Ok(None) => read_more(s, buf, socks5::MAX_REPLY).await?,
        }
    }
}

/// One read into `buf`, which may hold at most `limit` bytes. EOF is an error here: every
/// caller is waiting for the rest of a message.
async fn read_more(s: &mut TcpStream, buf: &mut BytesMut, limit: usize) -> std::io::Result<()> {
    if buf.len() >= limit {
        return Err(std::io::Error::other("answer larger than its bound"));
    }
    buf.reserve(limit.min(4096));
    let n = (&mut *s)
        .take((limit - buf.len()) as u64)
        .read_buf(buf)
        .await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}
