//! `[listeners.tls]` (TLS terminated by a listener) and `[pools.tls]` (TLS to a pool's
//! servers): file paths and choices only; `crate::tls` loads the files and builds rustls.

use std::path::PathBuf;

use super::reader::Section;

/// One certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Lowest TLS version a side accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[default]
    V1_2,
    V1_3,
}

/// A listener's TLS: its certificates (chosen by SNI), ALPN and versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// At least one; each one's names are its SAN DNS names.
    pub certificates: Vec<TlsFiles>,
    /// Index into `certificates` of the one served when no name matches (none with
    /// `strict_sni`).
    pub default_cert: Option<usize>,
    /// Refuse the handshake when the SNI matches no certificate (or there is none).
    pub strict_sni: bool,
    /// ALPN protocols offered, in preference order (empty: no ALPN).
    pub alpn: Vec<String>,
    pub min_version: TlsVersion,
    /// Written as `certificates = [...]` (not `cert`/`key`): how errors name a file's key.
    pub listed: bool,
}

impl ServerTls {
    /// The one-certificate form with every other setting at its default.
    pub fn single(files: TlsFiles) -> ServerTls {
        ServerTls {
            certificates: vec![files],
            default_cert: Some(0),
            strict_sni: false,
            alpn: Vec::new(),
            min_version: TlsVersion::V1_2,
            listed: false,
        }
    }
}

/// TLS from Gatehouse to a pool's servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// Trust anchors (PEM); `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// SNI and the name verified; `None`: each server's own host (name or IP address).
    pub server_name: Option<String>,
    /// Verify the server's certificate (chain and name). `false` is for tests only.
    pub verify: bool,
    /// A client certificate for servers that require one (mTLS).
    pub client_cert: Option<TlsFiles>,
    pub alpn: Vec<String>,
    pub min_version: TlsVersion,
}

fn alpn_list(t: &Section<'_>) -> Option<Vec<String>> {
    t.array("alpn", "a protocol name such as \"h2\"", |v| {
        let s = v.as_str().ok_or("not a string")?;
        if s.is_empty() || s.len() > 255 {
            return Err("empty or longer than 255 bytes".into());
        }
        Ok(s.to_string())
    })
}

fn min_version(t: &Section<'_>) -> TlsVersion {
    match t.string("min_version").as_deref() {
        None | Some("1.2") => TlsVersion::V1_2,
        Some("1.3") => TlsVersion::V1_3,
        Some(other) => {
            t.error_at(
                "min_version",
                format!("expected \"1.2\" or \"1.3\", found {other:?}"),
            );
            TlsVersion::V1_2
        }
    }
}

/// `cert` and `key` of one table (both required).
fn files(t: &Section<'_>) -> Option<TlsFiles> {
    let cert = t.string("cert").map(PathBuf::from);
    let key = t.string("key").map(PathBuf::from);
    if !t.has("cert") {
        t.error_here("`cert` (a PEM file) is required");
    }
    if !t.has("key") {
        t.error_here("`key` (a PEM file) is required");
    }
    cert.zip(key).map(|(cert, key)| TlsFiles { cert, key })
}

/// A listener's `tls = { cert, key }` when one certificate is all it takes (the reverse
/// tunnel's relay end).
pub(super) fn read_tls_files(l: &Section<'_>) -> Option<TlsFiles> {
    if !l.has_table("tls") {
        return None;
    }
    let t = l.table("tls");
    let f = files(&t);
    t.finish();
    f
}

/// A listener's `tls` table, if any. `alpn` is the listener kind's default ALPN list.
pub(super) fn read_server_tls(l: &Section<'_>, alpn: &[&str]) -> Option<ServerTls> {
    if !l.has_table("tls") {
        return None;
    }
    let t = l.table("tls");
    let mut certificates = Vec::new();
    let single = t.has("cert") || t.has("key");
    if single && t.has("certificates") {
        t.error_here("give either `cert`/`key` or `certificates`, not both");
    }
    if single {
        certificates.extend(files(&t));
    } else if t.has("certificates") {
        let list = t.tables("certificates");
        if list.is_empty() {
            t.error_at("certificates", "at least one { cert, key } is required");
        }
        for c in list {
            certificates.extend(files(&c));
            c.finish();
        }
    } else {
        t.error_here("`cert` and `key` (PEM files), or `certificates`, are required");
    }
    let strict_sni = t.bool("strict_sni", false);
    let default_cert = match t.string("default_cert") {
        None => (!strict_sni).then_some(0),
        Some(_) if strict_sni => {
            t.error_at(
                "default_cert",
                "strict_sni = true refuses unknown names; a default certificate would never be served",
            );
            None
        }
        Some(path) => {
            let i = certificates
                .iter()
                .position(|c| c.cert == std::path::Path::new(&path));
            if i.is_none() {
                t.error_at(
                    "default_cert",
                    format!("{path:?} is not the `cert` of one of `certificates`"),
                );
            }
            i
        }
    };
    let alpn = alpn_list(&t).unwrap_or_else(|| alpn.iter().map(|s| s.to_string()).collect());
    let min_version = min_version(&t);
    t.finish();
    if certificates.is_empty() {
        return None;
    }
    Some(ServerTls {
        certificates,
        default_cert,
        strict_sni,
        alpn,
        min_version,
        listed: !single,
    })
}

/// A pool's `tls` table, if present and enabled.
pub(super) fn read_client_tls(p: &Section<'_>) -> Option<ClientTls> {
    if !p.has_table("tls") {
        return None;
    }
    let t = p.table("tls");
    let enabled = t.bool("enabled", true);
    let ca_file = t.string("ca_file").map(PathBuf::from);
    let server_name = t.parse("server_name", "a host name", |v| {
        let s = v
            .as_str()
            .ok_or("not a string")?
            .trim()
            .to_ascii_lowercase();
        tokio_rustls::rustls::pki_types::ServerName::try_from(s.as_str())
            .map_err(|e| e.to_string())?;
        Ok(s)
    });
    let verify = t.bool("verify", true);
    let cert = t.string("client_cert").map(PathBuf::from);
    let key = t.string("client_key").map(PathBuf::from);
    let client_cert = match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        (Some(_), None) => {
            t.error_here("`client_cert` needs `client_key`");
            None
        }
        (None, Some(_)) => {
            t.error_here("`client_key` needs `client_cert`");
            None
        }
    };
    if !verify && ca_file.is_some() {
        t.error_at("ca_file", "verify = false ignores the CA file; remove one");
    }
    let alpn = alpn_list(&t).unwrap_or_default();
    let min_version = min_version(&t);
    t.finish();
    enabled.then_some(ClientTls {
        ca_file,
        server_name,
        verify,
        client_cert,
        alpn,
        min_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ListenerKind};

    const POOL: &str = "[[pools]]\nname = \"p\"\n[[pools.servers]]\naddress = \"127.0.0.1:1\"\n";

    fn tcp_tls(tls: &str) -> Result<Option<ServerTls>, Vec<String>> {
        let text = format!(
            "[[listeners]]\nname = \"t\"\nkind = \"tcp\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n{tls}\n{POOL}"
        );
        match Config::parse(&text) {
            Ok(c) => match &c.listeners[0].kind {
                ListenerKind::Tcp(t) => Ok(t.tls.clone()),
                other => panic!("not tcp: {other:?}"),
            },
            Err(e) => Err(e.into_iter().map(|e| e.path).collect()),
        }
    }

    fn pool_tls(tls: &str) -> Result<Option<ClientTls>, Vec<String>> {
        let text = format!(
            "[[listeners]]\nname = \"t\"\nkind = \"tcp\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n{POOL}[pools.tls]\n{tls}\n"
        );
        Config::parse(&text)
            .map(|c| c.pools[0].tls.clone())
            .map_err(|e| e.into_iter().map(|e| e.path).collect())
    }

    #[test]
    fn single_and_many_certificates() {
        let one = tcp_tls("tls = { cert = \"c.pem\", key = \"k.pem\" }")
            .expect("valid")
            .expect("tls");
        assert_eq!(
            one,
            ServerTls::single(TlsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into()
            })
        );
        let many = tcp_tls(
            "[listeners.tls]\ncertificates = [{ cert = \"a.pem\", key = \"a.key\" }, { cert = \"b.pem\", key = \"b.key\" }]\n\
             default_cert = \"b.pem\"\nalpn = [\"h2\", \"http/1.1\"]\nmin_version = \"1.3\"\n",
        )
        .expect("valid")
        .expect("tls");
        assert_eq!(many.certificates.len(), 2);
        assert_eq!(many.default_cert, Some(1));
        assert_eq!(many.alpn, ["h2", "http/1.1"]);
        assert_eq!(many.min_version, TlsVersion::V1_3);
        let strict = tcp_tls(
            "[listeners.tls]\ncertificates = [{ cert = \"a.pem\", key = \"a.key\" }]\nstrict_sni = true\n",
        )
        .expect("valid")
        .expect("tls");
        assert!(strict.strict_sni && strict.default_cert.is_none());
    }

    #[test]
    fn bad_server_settings_are_named() {
        let err = |s: &str| tcp_tls(s).expect_err("invalid");
        assert_eq!(err("tls = { cert = \"c.pem\" }"), ["listeners[0].tls"]);
        assert_eq!(err("[listeners.tls]\nalpn = []"), ["listeners[0].tls"]);
        assert_eq!(
            err("[listeners.tls]\ncert = \"c\"\nkey = \"k\"\nmin_version = \"1.1\""),
            ["listeners[0].tls.min_version"]
        );
        assert_eq!(
            err("[listeners.tls]\ncert = \"c\"\nkey = \"k\"\ndefault_cert = \"x\""),
            ["listeners[0].tls.default_cert"]
        );
        assert_eq!(
            err("[listeners.tls]\ncert = \"c\"\nkey = \"k\"\nstrict_sni = true\ndefault_cert = \"c\""),
            ["listeners[0].tls.default_cert"]
        );
        assert_eq!(
            err("[listeners.tls]\ncertificates = [{ cert = \"a\" }]"),
            ["listeners[0].tls.certificates[0]"]
        );
        assert_eq!(
            err("[listeners.tls]\ncert = \"c\"\nkey = \"k\"\nalpn = [\"\"]"),
            ["listeners[0].tls.alpn[0]"]
        );
    }

    #[test]
    fn pool_tls_settings() {
        assert_eq!(pool_tls("enabled = false"), Ok(None));
        let t = pool_tls(
            "ca_file = \"ca.pem\"\nserver_name = \"Backend.test\"\nclient_cert = \"c\"\nclient_key = \"k\"\nalpn = [\"h2\"]",
        )
        .expect("valid")
        .expect("enabled");
        assert!(t.verify);
        assert_eq!(t.server_name.as_deref(), Some("backend.test"));
        assert_eq!(t.client_cert.expect("mtls").key, PathBuf::from("k"));
        assert_eq!(
            pool_tls("client_cert = \"c\""),
            Err(vec!["pools[0].tls".to_string()])
        );
        assert_eq!(
            pool_tls("server_name = \"a b\""),
            Err(vec!["pools[0].tls.server_name".to_string()])
        );
        assert_eq!(
            pool_tls("verify = false\nca_file = \"x\""),
            Err(vec!["pools[0].tls.ca_file".to_string()])
        );
        assert_eq!(
            pool_tls("colour = 1"),
            Err(vec!["pools[0].tls.colour".to_string()])
        );
    }
}
