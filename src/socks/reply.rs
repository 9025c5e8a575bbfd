//! The one mapping from what went wrong to what the client is told: a SOCKS5 reply code
//! (RFC 1928 section 6), the SOCKS4 code, and the HTTP-like status class used by metrics.

use std::io;

use super::codec::Malformed;
use crate::connector::ConnectError;
use crate::upstream::ParentError;

/// RFC 1928 section 6, `REP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    Succeeded = 0x00,
    GeneralFailure = 0x01,
    NotAllowed = 0x02,
    NetworkUnreachable = 0x03,
    HostUnreachable = 0x04,
    ConnectionRefused = 0x05,
    TtlExpired = 0x06,
    CommandNotSupported = 0x07,
    AddressTypeNotSupported = 0x08,
}

/// SOCKS4 `CD`: request granted.
pub const SOCKS4_GRANTED: u8 = 90;
/// SOCKS4 `CD`: request rejected or failed (92 and 93 are about identd, which is not used).
pub const SOCKS4_REJECTED: u8 = 91;

impl Reply {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The reply for a code from elsewhere (a parent's answer); unknown codes are failures.
    pub fn from_code(code: u8) -> Reply {
        match code {
            0x00 => Reply::Succeeded,
            0x02 => Reply::NotAllowed,
            0x03 => Reply::NetworkUnreachable,
            0x04 => Reply::HostUnreachable,
            0x05 => Reply::ConnectionRefused,
            0x06 => Reply::TtlExpired,
            0x07 => Reply::CommandNotSupported,
            0x08 => Reply::AddressTypeNotSupported,
            _ => Reply::GeneralFailure,
        }
    }

    /// SOCKS4 has one failure code for everything.
    pub fn socks4(self) -> u8 {
        match self {
            Reply::Succeeded => SOCKS4_GRANTED,
            _ => SOCKS4_REJECTED,
        }
    }

    /// The HTTP status class a reply counts as in `gatehouse_requests` (2xx success, 4xx the
    /// client's fault or refused by policy, 5xx the upstream's or ours).
    pub fn metrics_status(self) -> u16 {
        match self {
            Reply::Succeeded => 200,
            Reply::NotAllowed => 403,
            Reply::CommandNotSupported | Reply::AddressTypeNotSupported => 400,
            Reply::TtlExpired => 504,
            _ => 502,
        }
    }
}

/// Everything that can end a SOCKS session early. [`SocksError::reply`] is the single place
/// where these become reply codes.
#[derive(Debug, thiserror::Error)]
pub enum SocksError {
    #[error("malformed message: {0}")]
    Malformed(#[from] Malformed),
    #[error("client closed the connection mid-message")]
    Truncated,
    #[error("handshake not finished in time")]
    HandshakeTimeout,
    #[error("client offered no acceptable authentication method")]
    NoAcceptableMethod,
    #[error("authentication failed")]
    AuthFailed,
    #[error("SOCKS4 is switched off on this listener")]
    Socks4Disabled,
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("SOCKS4 cannot carry the IPv6 address {0}")]
    Socks4Ipv6(std::net::SocketAddr),
    #[error("no peer connected to the BIND port in time")]
    BindTimeout,
    #[error("BIND peer {got} is not the expected host")]
    BindWrongPeer { got: std::net::SocketAddr },
    #[error("the server is shutting down")]
    Draining,
    #[error("denied by rule {rule}{}", refusal.map(|r| format!(": {}", r.as_str())).unwrap_or_default())]
    Denied {
        rule: std::sync::Arc<str>,
        refusal: Option<crate::policy::Refusal>,
    },
    #[error("rule {0} routes through parents, which cannot carry {1}")]
    RouteUnsupported(std::sync::Arc<str>, &'static str),
    #[error("too many failed logins from this address")]
    LoginBlocked,
    #[error("too many logins being checked; retry shortly")]
    LoginBusy,
    #[error("the user directory is unavailable")]
    LoginUnavailable,
    #[error("this listener requires a login, which SOCKS4 cannot carry")]
    Socks4NeedsLogin,
    #[error("{0}")]
    Limit(#[from] crate::limits::LimitError),
    #[error("{0}")]
    Parent(#[from] ParentError),
    #[error("GSSAPI: {0}")]
    Gssapi(String),
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Through a tunnel agent: what the agent (or the relay, without one) answered.
    #[error("tunnel: {0}")]
    Tunnel(crate::tunnel::proto::OpenError),
}

impl SocksError {
    pub fn reply(&self) -> Reply {
        match self {
            SocksError::Malformed(Malformed::Command(_)) => Reply::CommandNotSupported,
            SocksError::Malformed(Malformed::AddressType(_)) => Reply::AddressTypeNotSupported,
            // A name that is not a host name cannot be looked up.
            SocksError::Malformed(Malformed::Domain) => Reply::HostUnreachable,
            SocksError::Malformed(_) | SocksError::Truncated | SocksError::HandshakeTimeout => {
                Reply::GeneralFailure
            }
            SocksError::NoAcceptableMethod
            | SocksError::AuthFailed
            | SocksError::Socks4Disabled => Reply::NotAllowed,
            SocksError::Connect(e) => connect_reply(e),
            SocksError::Socks4Ipv6(_) => Reply::AddressTypeNotSupported,
            SocksError::BindTimeout => Reply::TtlExpired,
            SocksError::BindWrongPeer { .. } => Reply::NotAllowed,
            SocksError::Draining => Reply::GeneralFailure,
            SocksError::Denied { .. }
            | SocksError::RouteUnsupported(..)
            | SocksError::LoginBlocked
            | SocksError::LoginBusy
            | SocksError::LoginUnavailable
            | SocksError::Socks4NeedsLogin
            | SocksError::Limit(_) => Reply::NotAllowed,
            SocksError::Parent(e) => Reply::from_code(e.socks_reply()),
            SocksError::Gssapi(_) => Reply::NotAllowed,
            SocksError::Io(e) => io_reply(e),
            SocksError::Tunnel(e) => Reply::from_code(e.socks_reply()),
        }
    }

    /// A short name for the access log's error field.
    pub fn kind(&self) -> &'static str {
        match self {
            SocksError::Malformed(_) => "bad_request",
            SocksError::Truncated => "truncated",
            SocksError::HandshakeTimeout => "handshake_timeout",
            SocksError::NoAcceptableMethod => "no_acceptable_method",
            SocksError::AuthFailed => "auth_failed",
            SocksError::Socks4Disabled => "socks4_disabled",
            SocksError::Connect(ConnectError::Dns { .. }) => "dns_error",
            SocksError::Connect(ConnectError::DnsTimeout { .. }) => "dns_timeout",
            SocksError::Connect(ConnectError::Refused { .. }) => "connection_refused",
            SocksError::Connect(ConnectError::Timeout { .. }) => "connection_timeout",
            SocksError::Connect(ConnectError::Unreachable { .. }) => "unreachable",
            SocksError::Connect(ConnectError::Io { .. }) => "connect_failed",
            SocksError::Socks4Ipv6(_) => "address_type",
            SocksError::BindTimeout => "bind_timeout",
            SocksError::BindWrongPeer { .. } => "bind_wrong_peer",
            SocksError::Draining => "draining",
            SocksError::Denied { .. } => "denied",
            SocksError::RouteUnsupported(..) => "route_unsupported",
            SocksError::LoginBlocked => "login_blocked",
            SocksError::LoginBusy => "login_busy",
            SocksError::LoginUnavailable => "login_unavailable",
            SocksError::Socks4NeedsLogin => "auth_required",
            SocksError::Limit(e) => e.kind(),
            SocksError::Parent(e) => e.proxy_status_kind(),
            SocksError::Gssapi(_) => "gssapi_failed",
            SocksError::Io(_) => "io_error",
            SocksError::Tunnel(e) => e.as_str(),
        }
    }
}

fn connect_reply(e: &ConnectError) -> Reply {
    match e {
        // Dante and 3proxy answer a failed lookup with "host unreachable" too.
        ConnectError::Dns { .. } | ConnectError::DnsTimeout { .. } => Reply::HostUnreachable,
        ConnectError::Refused { .. } => Reply::ConnectionRefused,
        // The upstream did not answer within the connect timeout.
        ConnectError::Timeout { .. } => Reply::TtlExpired,
        ConnectError::Unreachable { source, .. } => io_reply(source),
        ConnectError::Io { source, .. } => io_reply(source),
    }
}

fn io_reply(e: &io::Error) -> Reply {
    match e.kind() {
        io::ErrorKind::NetworkUnreachable => Reply::NetworkUnreachable,
        io::ErrorKind::HostUnreachable => Reply::HostUnreachable,
        io::ErrorKind::ConnectionRefused => Reply::ConnectionRefused,
        io::ErrorKind::TimedOut => Reply::TtlExpired,
        io::ErrorKind::AddrNotAvailable => Reply::NetworkUnreachable,
        _ => Reply::GeneralFailure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn addr() -> SocketAddr {
        "127.0.0.1:9".parse().expect("addr")
    }

    #[test]
    fn every_reply_code_has_a_cause() {
        let cases: Vec<(SocksError, Reply)> = vec![
            (SocksError::Truncated, Reply::GeneralFailure),
            (SocksError::AuthFailed, Reply::NotAllowed),
            (
                SocksError::Io(io::Error::from(io::ErrorKind::NetworkUnreachable)),
                Reply::NetworkUnreachable,
            ),
            (
                ConnectError::Dns {
                    host: "x.test".into(),
                    rcode: Some("NXDOMAIN".into()),
                    detail: String::new(),
                }
                .into(),
                Reply::HostUnreachable,
            ),
            (
                ConnectError::Refused { addr: addr() }.into(),
                Reply::ConnectionRefused,
            ),
            (
                ConnectError::Timeout { target: "t".into() }.into(),
                Reply::TtlExpired,
            ),
            (Malformed::Command(9).into(), Reply::CommandNotSupported),
            (
                Malformed::AddressType(9).into(),
                Reply::AddressTypeNotSupported,
            ),
            (Malformed::Version(4).into(), Reply::GeneralFailure),
            (
                ConnectError::Unreachable {
                    addr: addr(),
                    source: io::Error::from(io::ErrorKind::HostUnreachable),
                }
                .into(),
                Reply::HostUnreachable,
            ),
            (SocksError::BindWrongPeer { got: addr() }, Reply::NotAllowed),
            (SocksError::BindTimeout, Reply::TtlExpired),
            (
                SocksError::Denied {
                    rule: "r".into(),
                    refusal: None,
                },
                Reply::NotAllowed,
            ),
            (
                SocksError::RouteUnsupported("r".into(), "BIND"),
                Reply::NotAllowed,
            ),
            (SocksError::LoginBlocked, Reply::NotAllowed),
            (SocksError::LoginBusy, Reply::NotAllowed),
            (SocksError::Socks4NeedsLogin, Reply::NotAllowed),
            (
                ParentError::DirectForbidden("guard").into(),
                Reply::NotAllowed,
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.reply(), want, "{err}");
        }
        assert_eq!(Reply::Succeeded.code(), 0);
        assert_eq!(Reply::AddressTypeNotSupported.code(), 8);
        for code in 0..=8 {
            assert_eq!(Reply::from_code(code).code(), code);
        }
        assert_eq!(Reply::from_code(0x5a), Reply::GeneralFailure);
    }

    #[test]
    fn socks4_and_metrics_views() {
        assert_eq!(Reply::Succeeded.socks4(), 90);
        assert_eq!(Reply::ConnectionRefused.socks4(), 91);
        assert_eq!(Reply::Succeeded.metrics_status(), 200);
        assert_eq!(Reply::NotAllowed.metrics_status(), 403);
        assert_eq!(Reply::HostUnreachable.metrics_status(), 502);
    }
}
