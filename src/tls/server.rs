//! A listener's TLS: [`TlsServer`] holds the rustls config in force and swaps it on reload.
//!
//! ```text
//! [listeners.tls] --load--> certificates (chain + key + SAN names) --> SniResolver
//!                                                          ServerConfig (ALPN, versions)
//! accept(tcp): the config in force now --> handshake --> TlsStream (ALPN, SNI on it)
//! reload():    load the files again; on success swap, on error keep the old config
//! ```

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::ServerConfig;

use super::names::{san_dns_names, CertNames};
use crate::config::ServerTls;

/// Which file of which certificate a load problem is in (the config key to blame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Cert,
    Key,
}

/// A certificate that could not be loaded: `index` into `certificates`, the file, the cause.
#[derive(Debug, thiserror::Error)]
#[error("{error:#}")]
pub struct LoadError {
    pub index: usize,
    pub file: TlsFile,
    pub error: anyhow::Error,
}

impl LoadError {
    /// The key under the listener's `tls` table: `cert`/`key` for the one-certificate form,
    /// `certificates[i].cert`/`.key` otherwise (`listed` says which form the file used).
    pub fn key(&self, listed: bool) -> String {
        let file = match self.file {
            TlsFile::Cert => "cert",
            TlsFile::Key => "key",
        };
        if listed {
            format!("certificates[{}].{file}", self.index)
        } else {
            file.to_string()
        }
    }
}

/// Picks a listener's certificate by SNI (see [`CertNames`]).
#[derive(Debug)]
struct SniResolver {
    certs: Vec<Arc<CertifiedKey>>,
    names: CertNames,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let i = self.names.choose(hello.server_name());
        if i.is_none() {
            tracing::debug!(sni = ?hello.server_name(), "TLS: no certificate for this name");
        }
        i.and_then(|i| self.certs.get(i).cloned())
    }
}

/// Loads every certificate and builds the rustls config.
pub fn build(cfg: &ServerTls) -> Result<ServerConfig, LoadError> {
    build_named(cfg).map(|(config, _)| config)
}

/// Loads every certificate (as [`build`]) and says what is worth a warning: a certificate
/// with no DNS name (served only as the default, or never), and each of `wanted` (names the
/// listener routes) that no certificate lists.
pub fn check(cfg: &ServerTls, wanted: &[String]) -> Result<Vec<String>, LoadError> {
    let (_, names) = build_named(cfg)?;
    let mut warnings = Vec::new();
    for (i, n) in names.iter().enumerate() {
        if n.is_empty() {
            let path = cfg.certificates[i].cert.display();
            let role = if cfg.default_cert == Some(i) {
                "it is served only to names no other certificate lists"
            } else {
                "it is never served"
            };
            warnings.push(format!(
                "{path} has no DNS subject alternative name; {role}"
            ));
        }
    }
    let listed = CertNames::new(&names, None);
    for w in wanted {
        // A route's `*.suffix` is covered when a name one label under it is.
        let probe = match w.strip_prefix("*.") {
            Some(suffix) => format!("x.{suffix}"),
            None => w.clone(),
        };
        if listed.choose(Some(&probe)).is_none() {
            let what = if cfg.strict_sni {
                "refused (strict_sni)"
            } else {
                "given the default certificate"
            };
            warnings.push(format!(
                "no certificate lists {w:?}, which an SNI route names; its clients are {what}"
            ));
        }
    }
    Ok(warnings)
}

fn build_named(cfg: &ServerTls) -> Result<(ServerConfig, Vec<Vec<String>>), LoadError> {
    let provider = super::provider();
    let mut certs = Vec::with_capacity(cfg.certificates.len());
    let mut names = Vec::with_capacity(cfg.certificates.len());
    for (index, files) in cfg.certificates.iter().enumerate() {
        let err = |file, error| LoadError { index, file, error };
        let chain = super::read_certs(&files.cert).map_err(|e| err(TlsFile::Cert, e))?;
        let san = san_dns_names(&chain[0]).map_err(|e| {
            err(
                TlsFile::Cert,
                anyhow::anyhow!("{}: not a usable certificate: {e}", files.cert.display()),
            )
        })?;
        let key = super::read_key(&files.key).map_err(|e| err(TlsFile::Key, e))?;
        let ck = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
            err(
                TlsFile::Key,
                anyhow::anyhow!(
                    "{} and {} do not form a usable pair: {e}",
                    files.cert.display(),
                    files.key.display()
                ),
            )
        })?;
        certs.push(Arc::new(ck));
        names.push(san);
    }
    let resolver = SniResolver {
        names: CertNames::new(&names, cfg.default_cert),
        certs,
    };
    let listed = names;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(super::versions(cfg.min_version))
        .map_err(|e| LoadError {
            index: 0,
            file: TlsFile::Cert,
            error: anyhow::anyhow!("TLS protocol versions: {e}"),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = super::alpn_bytes(&cfg.alpn);
    Ok((config, listed))
}

/// A listener's TLS: the config in force, swapped by [`TlsServer::reload`].
pub struct TlsServer {
    cfg: ServerTls,
    config: ArcSwap<ServerConfig>,
    /// Each certificate's SAN DNS names, as loaded with `config`.
    names: ArcSwap<Vec<Vec<String>>>,
}

/// A TLS session accepted by a listener, and what the handshake agreed.
pub type TlsStream<IO> = tokio_rustls::server::TlsStream<IO>;

impl TlsServer {
    /// Loads the files; every error names the certificate and file at fault.
    pub fn new(cfg: &ServerTls) -> Result<TlsServer, LoadError> {
        let (config, names) = build_named(cfg)?;
        Ok(TlsServer {
            config: ArcSwap::from_pointee(config),
            names: ArcSwap::from_pointee(names),
            cfg: cfg.clone(),
        })
    }

    /// Re-reads the certificate and key files. On success connections accepted from now on
    /// get the new certificates; on an error the old ones stay and the error is returned.
    pub fn reload(&self) -> Result<(), LoadError> {
        let (config, names) = build_named(&self.cfg)?;
        self.config.store(Arc::new(config));
        self.names.store(Arc::new(names));
        Ok(())
    }

    /// Whether the certificate a handshake with server name `sni` gets also lists `host`
    /// (exactly or by a `*.` wildcard): a connection opened for `sni` may then carry
    /// requests for `host` (RFC 9110 section 7.4, connection reuse across names).
    pub fn covers(&self, sni: &str, host: &str) -> bool {
        let names = self.names.load();
        let Some(i) = CertNames::new(&names, self.cfg.default_cert).choose(Some(sni)) else {
            return false;
        };
        let Some(listed) = names.get(i) else {
            return false;
        };
        CertNames::new(std::slice::from_ref(listed), None)
            .choose(Some(host))
            .is_some()
    }

    /// The rustls config in force now (for a caller that reads the ClientHello first with
    /// `tokio_rustls::LazyConfigAcceptor`).
    pub fn current(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    /// The handshake on an accepted connection, with the certificates in force now. The
    /// caller bounds it in time. After it, `stream.get_ref().1` has the negotiated ALPN
    /// (`alpn_protocol()`) and the client's SNI (`server_name()`); see [`alpn`] and [`sni`].
    pub async fn accept<IO>(&self, io: IO) -> std::io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        tokio_rustls::TlsAcceptor::from(self.current())
            .accept(io)
            .await
    }
}

/// The ALPN protocol the handshake chose, if any.
pub fn alpn<IO>(s: &TlsStream<IO>) -> Option<&[u8]> {
    s.get_ref().1.alpn_protocol()
}

/// The server name the client sent (SNI), if any.
pub fn sni<IO>(s: &TlsStream<IO>) -> Option<&str> {
    s.get_ref().1.server_name()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsFiles;

    #[test]
    fn a_bad_file_at_reload_keeps_the_old_config() {
        let dir = tempfile::tempdir().expect("dir");
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let c = rcgen::generate_simple_self_signed(vec!["a.test".into()]).expect("cert");
        std::fs::write(&cert, c.cert.pem()).expect("write");
        std::fs::write(&key, c.signing_key.serialize_pem()).expect("write");
        let tls = TlsServer::new(&ServerTls::single(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }))
        .expect("loads");
        let before = tls.current();
        tls.reload().expect("same files reload");
        assert!(!Arc::ptr_eq(&before, &tls.current()), "swapped");
        let good = tls.current();
        std::fs::write(&key, "junk").expect("write");
        let e = tls.reload().expect_err("bad key");
        assert_eq!((e.index, e.file), (0, TlsFile::Key));
        assert_eq!(e.key(false), "key");
        assert_eq!(e.key(true), "certificates[0].key");
        assert!(Arc::ptr_eq(&good, &tls.current()), "old config kept");
        // A key that is not the certificate's.
        let other = rcgen::generate_simple_self_signed(vec!["b.test".into()]).expect("cert");
        std::fs::write(&key, other.signing_key.serialize_pem()).expect("write");
        let e = tls.reload().expect_err("mismatched pair");
        assert!(e.to_string().contains("usable pair"), "{e}");
    }

    #[test]
    fn warnings_for_unnamed_certificates_and_uncovered_routes() {
        let dir = tempfile::tempdir().expect("dir");
        let write = |name: &str, names: Vec<String>| {
            let c = rcgen::generate_simple_self_signed(names).expect("cert");
            let files = TlsFiles {
                cert: dir.path().join(format!("{name}.pem")),
                key: dir.path().join(format!("{name}.key")),
            };
            std::fs::write(&files.cert, c.cert.pem()).expect("write");
            std::fs::write(&files.key, c.signing_key.serialize_pem()).expect("write");
            files
        };
        let mut cfg = ServerTls::single(write("a", vec!["*.b.test".into()]));
        cfg.certificates.push(write("none", Vec::new()));
        cfg.listed = true;
        let wanted = ["x.b.test", "*.b.test", "c.test", "*.d.test"].map(String::from);
        let w = check(&cfg, &wanted).expect("loads");
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(
            w[0].contains("none.pem") && w[0].contains("never served"),
            "{w:?}"
        );
        assert!(
            w[1].contains("\"c.test\"") && w[1].contains("default"),
            "{w:?}"
        );
        assert!(w[2].contains("\"*.d.test\""), "{w:?}");
        cfg.strict_sni = true;
        cfg.default_cert = None;
        assert!(check(&cfg, &wanted).expect("loads")[1].contains("strict_sni"));
    }
}
