//! Errors on the HTTP request path, each with the status the client gets and the
//! `Proxy-Status` (RFC 9209) error type that names it.

use crate::connector::ConnectError;

#[derive(Debug)]
pub struct ProxyError {
    pub status: u16,
    /// RFC 9209 section 2.3 error type, e.g. `dns_error`.
    pub kind: &'static str,
    /// Extra Proxy-Status parameters, e.g. `("rcode", "NXDOMAIN")`.
    pub params: Vec<(&'static str, String)>,
    pub detail: String,
}

impl ProxyError {
    pub fn new(status: u16, kind: &'static str, detail: impl Into<String>) -> Self {
        ProxyError {
            status,
            kind,
            params: Vec::new(),
            detail: detail.into(),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(400, "http_request_error", detail)
    }

    pub fn denied(detail: impl Into<String>) -> Self {
        Self::new(403, "http_request_denied", detail)
    }

    /// The `Proxy-Status` field value: `name; error=kind; details="..."`.
    pub fn proxy_status(&self, proxy_name: &str) -> String {
        let mut v = format!("{proxy_name}; error={}", self.kind);
        for (k, val) in &self.params {
            v.push_str(&format!("; {k}={}", sf_string(val)));
        }
        if !self.detail.is_empty() {
            v.push_str(&format!("; details={}", sf_string(&self.detail)));
        }
        v
    }

    /// The same error as a reverse proxy shows it to outside clients: the status and the
    /// RFC 9209 error type only. A server error's detail and parameters name servers
    /// (address, port, TLS or DNS findings) that a reverse proxy hides; the log keeps them.
    pub fn without_detail(&self) -> ProxyError {
        ProxyError::new(self.status, self.kind, String::new())
    }
}

impl From<ConnectError> for ProxyError {
    fn from(e: ConnectError) -> Self {
        let detail = e.to_string();
        match e {
            ConnectError::Dns { rcode, .. } => {
                let mut err = ProxyError::new(502, "dns_error", detail);
                if let Some(r) = rcode {
                    err.params.push(("rcode", r));
                }
                err
            }
            ConnectError::DnsTimeout { .. } => ProxyError::new(504, "dns_timeout", detail),
            ConnectError::Refused { .. } => ProxyError::new(502, "connection_refused", detail),
            ConnectError::Timeout { .. } => ProxyError::new(504, "connection_timeout", detail),
            ConnectError::Unreachable { .. } => {
                ProxyError::new(502, "destination_ip_unroutable", detail)
            }
            // Out of descriptors is this proxy's trouble, and passing: try again later.
            ConnectError::Io { source, .. } if crate::fdlimit::is_exhausted(&source) => {
                ProxyError::new(503, "proxy_internal_error", detail)
            }
            ConnectError::Io { .. } => ProxyError::new(502, "proxy_internal_error", detail),
        }
    }
}

/// An RFC 8941 sf-string: printable ASCII in quotes, with `"` and `\` escaped.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_descriptors_at_connect_is_503() {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 80));
        let e = ProxyError::from(ConnectError::Io {
            addr,
            source: std::io::Error::from_raw_os_error(24),
        });
        assert_eq!(e.status, 503);
        let e = ProxyError::from(ConnectError::Io {
            addr,
            source: std::io::Error::other("x"),
        });
        assert_eq!(e.status, 502);
    }

    #[test]
    fn without_detail_keeps_status_and_type_only() {
        let mut e = ProxyError::new(502, "tls_certificate_error", "TLS to 10.0.0.5:443: bad");
        e.params.push(("rcode", "NXDOMAIN".into()));
        let public = e.without_detail();
        assert_eq!(public.status, 502);
        assert_eq!(
            public.proxy_status("gatehouse"),
            "gatehouse; error=tls_certificate_error"
        );
    }

    #[test]
    fn proxy_status_format() {
        let mut e = ProxyError::new(502, "dns_error", "no \"such\" host\n");
        e.params.push(("rcode", "NXDOMAIN".into()));
        assert_eq!(
            e.proxy_status("gatehouse"),
            r#"gatehouse; error=dns_error; rcode="NXDOMAIN"; details="no \"such\" host?""#
        );
    }
}
