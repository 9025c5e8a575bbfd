//! Why a route failed, and the one mapping from each cause to what a client is told: an HTTP
//! status with its `Proxy-Status` error type (RFC 9209 section 2.3), or a SOCKS5 reply code.

use std::io;
use std::time::Duration;

use crate::connector::ConnectError;
use crate::http::error::ProxyError;
use crate::policy::config::ParentKind;

/// Every failure happens before a byte of the client's is sent, so trying the next parent is
/// always safe.
#[derive(Debug, thiserror::Error)]
pub enum ParentError {
    /// The parent itself could not be reached.
    #[error("parent {parent}: {source}")]
    Connect {
        parent: String,
        source: ConnectError,
    },
    /// The `direct` entry of a route could not connect.
    #[error("direct: {0}")]
    Direct(ConnectError),
    /// The `direct` entry was not allowed (the caller had no checked addresses for it).
    #[error("direct connection refused: {0}")]
    DirectForbidden(&'static str),
    #[error("parent {parent} did not finish the handshake within {timeout:?}")]
    Timeout {
        parent: String,
        kind: ParentKind,
        timeout: Duration,
    },
    /// HTTP 407, SOCKS5 "no acceptable method" or a failed RFC 1929 login: our credentials
    /// for the parent are missing or wrong.
    #[error("parent {parent} rejected the credentials ({detail})")]
    AuthRejected { parent: String, detail: String },
    /// An HTTP parent answered CONNECT with a non-2xx status.
    #[error("parent {parent} refused the tunnel to {target}: HTTP {status}")]
    HttpRefused {
        parent: String,
        target: String,
        status: u16,
    },
    /// A SOCKS5 parent answered with a failure reply.
    #[error("parent {parent} refused the connection to {target}: {text} ({code:#04x})", text = super::socks5::reply_text(*.code))]
    SocksRefused {
        parent: String,
        target: String,
        code: u8,
    },
    /// The parent's answer could not be understood.
    #[error("parent {parent} sent a malformed answer: {detail}")]
    Protocol {
        parent: String,
        kind: ParentKind,
        detail: String,
    },
    /// The parent closed or reset the connection during the handshake.
    #[error("parent {parent} closed the connection during the handshake: {source}")]
    Closed { parent: String, source: io::Error },
    /// A route names a parent that the current policy does not have.
    #[error("no parent named {0:?}")]
    UnknownParent(String),
    #[error("the route names no parent")]
    EmptyRoute,
}

impl ParentError {
    /// The parent this error is about (`"direct"` for the direct entry).
    pub fn parent(&self) -> Option<&str> {
        match self {
            ParentError::Connect { parent, .. }
            | ParentError::Timeout { parent, .. }
            | ParentError::AuthRejected { parent, .. }
            | ParentError::HttpRefused { parent, .. }
            | ParentError::SocksRefused { parent, .. }
            | ParentError::Protocol { parent, .. }
            | ParentError::Closed { parent, .. } => Some(parent),
            ParentError::Direct(_) | ParentError::DirectForbidden(_) => Some("direct"),
            ParentError::UnknownParent(_) | ParentError::EmptyRoute => None,
        }
    }

    /// RFC 9209 section 2.3 error type for `Proxy-Status` (with `next-hop` = [`Self::parent`]).
    pub fn proxy_status_kind(&self) -> &'static str {
        match self {
            ParentError::Connect { source, .. } | ParentError::Direct(source) => {
                connect_kind(source)
            }
            ParentError::DirectForbidden(_) => "destination_ip_prohibited",
            ParentError::Timeout {
                kind: ParentKind::Http,
                ..
            } => "http_response_timeout",
            ParentError::Timeout { .. } => "connection_timeout",
            // Our configuration holds the wrong credentials, not the client's request.
            ParentError::AuthRejected { .. } => "proxy_configuration_error",
            ParentError::HttpRefused { status: 504, .. } => "connection_timeout",
            ParentError::HttpRefused { .. } => "destination_unavailable",
            ParentError::SocksRefused { code, .. } => match code {
                0x02 => "destination_ip_prohibited",
                0x03 => "destination_ip_unroutable",
                0x05 => "connection_refused",
                0x06 => "connection_timeout",
                _ => "destination_unavailable",
            },
            ParentError::Protocol {
                kind: ParentKind::Http,
                ..
            } => "http_protocol_error",
            ParentError::Protocol { .. } => "destination_unavailable",
            ParentError::Closed { .. } => "connection_terminated",
            ParentError::UnknownParent(_) | ParentError::EmptyRoute => "proxy_configuration_error",
        }
    }

    /// The status an HTTP client gets: 504 for timeouts, 403 when `direct` was forbidden,
    /// 500 for a broken route, 502 otherwise.
    pub fn http_status(&self) -> u16 {
        match self {
            ParentError::Connect { source, .. } | ParentError::Direct(source) => {
                connect_status(source)
            }
            ParentError::Timeout { .. } | ParentError::HttpRefused { status: 504, .. } => 504,
            ParentError::SocksRefused { code: 0x06, .. } => 504,
            ParentError::DirectForbidden(_) => 403,
            ParentError::UnknownParent(_) | ParentError::EmptyRoute => 500,
            _ => 502,
        }
    }

    /// The status the parent itself answered, for `Proxy-Status`'s `received-status`.
    pub fn received_status(&self) -> Option<u16> {
        match self {
            ParentError::HttpRefused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The SOCKS5 reply code (RFC 1928 section 6) a SOCKS client gets.
    pub fn socks_reply(&self) -> u8 {
        match self {
            ParentError::Direct(e) => connect_socks_reply(e),
            // An unreachable parent says nothing about the destination.
            ParentError::Connect {
                source: ConnectError::Timeout { .. } | ConnectError::DnsTimeout { .. },
                ..
            } => 0x06,
            ParentError::Connect { .. } => 0x01,
            ParentError::DirectForbidden(_) => 0x02,
            ParentError::Timeout { .. } => 0x06,
            ParentError::SocksRefused { code, .. } if (1..=8).contains(code) => *code,
            ParentError::HttpRefused { status, .. } => match status {
                403 => 0x02,
                502 => 0x04,
                504 => 0x06,
                _ => 0x01,
            },
            _ => 0x01,
        }
    }
}

fn connect_kind(e: &ConnectError) -> &'static str {
    match e {
        ConnectError::Dns { .. } => "dns_error",
        ConnectError::DnsTimeout { .. } => "dns_timeout",
        ConnectError::Refused { .. } => "connection_refused",
        ConnectError::Timeout { .. } => "connection_timeout",
        ConnectError::Unreachable { .. } => "destination_ip_unroutable",
        ConnectError::Io { .. } => "proxy_internal_error",
    }
}

/// As the SOCKS server answers its own connect failures (Dante does the same).
fn connect_socks_reply(e: &ConnectError) -> u8 {
    let io_reply = |e: &io::Error| match e.kind() {
        io::ErrorKind::NetworkUnreachable | io::ErrorKind::AddrNotAvailable => 0x03,
        io::ErrorKind::HostUnreachable => 0x04,
        io::ErrorKind::ConnectionRefused => 0x05,
        io::ErrorKind::TimedOut => 0x06,
        _ => 0x01,
    };
    match e {
        ConnectError::Dns { .. } | ConnectError::DnsTimeout { .. } => 0x04,
        ConnectError::Refused { .. } => 0x05,
        ConnectError::Timeout { .. } => 0x06,
        ConnectError::Unreachable { source, .. } | ConnectError::Io { source, .. } => {
            io_reply(source)
        }
    }
}

fn connect_status(e: &ConnectError) -> u16 {
    match e {
        ConnectError::DnsTimeout { .. } | ConnectError::Timeout { .. } => 504,
        _ => 502,
    }
}

/// The HTTP door's error: status, `Proxy-Status` type and `next-hop`. (`received-status` is
/// an sf-integer, which `ProxyError`'s string parameters cannot carry: add it from
/// [`ParentError::received_status`] where the field is written.)
impl From<ParentError> for ProxyError {
    fn from(e: ParentError) -> Self {
        let mut err = ProxyError::new(e.http_status(), e.proxy_status_kind(), e.to_string());
        if let ParentError::Connect {
            source: ConnectError::Dns { rcode: Some(r), .. },
            ..
        }
        | ParentError::Direct(ConnectError::Dns { rcode: Some(r), .. }) = &e
        {
            err.params.push(("rcode", r.clone()));
        }
        if let Some(p) = e.parent() {
            err.params.push(("next-hop", p.to_string()));
        }
        err
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
    fn each_cause_maps_to_status_kind_and_reply() {
        let p = || "up".to_string();
        let cases: Vec<(ParentError, u16, &str, u8)> = vec![
            (
                ParentError::Connect {
                    parent: p(),
                    source: ConnectError::Refused { addr: addr() },
                },
                502,
                "connection_refused",
                0x01,
            ),
            (
                ParentError::Direct(ConnectError::Refused { addr: addr() }),
                502,
                "connection_refused",
                0x05,
            ),
            (
                ParentError::Direct(ConnectError::Timeout { target: "t".into() }),
                504,
                "connection_timeout",
                0x06,
            ),
            (
                ParentError::Timeout {
                    parent: p(),
                    kind: ParentKind::Http,
                    timeout: Duration::from_secs(1),
                },
                504,
                "http_response_timeout",
                0x06,
            ),
            (
                ParentError::AuthRejected {
                    parent: p(),
                    detail: "HTTP 407".into(),
                },
                502,
                "proxy_configuration_error",
                0x01,
            ),
            (
                ParentError::HttpRefused {
                    parent: p(),
                    target: "x:1".into(),
                    status: 403,
                },
                502,
                "destination_unavailable",
                0x02,
            ),
            (
                ParentError::SocksRefused {
                    parent: p(),
                    target: "x:1".into(),
                    code: 5,
                },
                502,
                "connection_refused",
                0x05,
            ),
            (
                ParentError::Protocol {
                    parent: p(),
                    kind: ParentKind::Http,
                    detail: "x".into(),
                },
                502,
                "http_protocol_error",
                0x01,
            ),
            (
                ParentError::DirectForbidden("guard"),
                403,
                "destination_ip_prohibited",
                0x02,
            ),
            (
                ParentError::EmptyRoute,
                500,
                "proxy_configuration_error",
                0x01,
            ),
        ];
        for (e, status, kind, reply) in cases {
            assert_eq!(e.http_status(), status, "{e}");
            assert_eq!(e.proxy_status_kind(), kind, "{e}");
            assert_eq!(e.socks_reply(), reply, "{e}");
        }
    }

    #[test]
    fn http_error_names_the_next_hop() {
        let e = ParentError::HttpRefused {
            parent: "squid".into(),
            target: "example.test:443".into(),
            status: 403,
        };
        assert_eq!(
            e.to_string(),
            "parent squid refused the tunnel to example.test:443: HTTP 403"
        );
        let pe = ProxyError::from(e);
        let v = pe.proxy_status("gatehouse");
        assert!(
            v.starts_with("gatehouse; error=destination_unavailable; next-hop=\"squid\""),
            "{v}"
        );
        let s = ParentError::SocksRefused {
            parent: "dante".into(),
            target: "x:1".into(),
            code: 2,
        };
        assert_eq!(
            s.to_string(),
            "parent dante refused the connection to x:1: connection not allowed by ruleset (0x02)"
        );
    }
}
