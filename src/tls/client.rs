//! TLS from Gatehouse to a pool's servers: [`TlsClient::connect`] over a connected socket.
//!
//! Verification is on by default: the chain against `ca_file` (or the system's roots, read
//! once through `rustls-native-certs`) and the name against `server_name` (or the server's
//! own host, a name or an IP address). `verify = false` accepts any certificate; start-up
//! and `check` warn about it.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, ClientConfig, DigitallySignedStruct, RootCertStore};

use crate::config::ClientTls;

/// The setting a client TLS problem is in (the key under `[pools.tls]` to blame).
#[derive(Debug, thiserror::Error)]
#[error("{error:#}")]
pub struct ClientLoadError {
    pub key: &'static str,
    pub error: anyhow::Error,
}

/// TLS to the servers of one pool.
pub struct TlsClient {
    config: Arc<ClientConfig>,
    /// `server_name`, when set: SNI and the verified name for every server.
    name: Option<ServerName<'static>>,
}

/// A TLS session to an upstream server.
pub type TlsStream<IO> = tokio_rustls::client::TlsStream<IO>;

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The system's trust anchors, read once.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: std::sync::LazyLock<Result<Arc<RootCertStore>, String>> =
        std::sync::LazyLock::new(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                return Err(format!("no system CA certificates found{why}; set ca_file"));
            }
            Ok(Arc::new(store))
        });
    ROOTS.clone()
}

impl TlsClient {
    /// Reads the CA file (or the system's roots) and the client certificate.
    pub fn new(cfg: &ClientTls) -> Result<TlsClient, ClientLoadError> {
        let err = |key, error| ClientLoadError { key, error };
        let provider = super::provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(super::versions(cfg.min_version))
            .map_err(|e| err("min_version", anyhow::anyhow!("TLS protocol versions: {e}")))?;
        let builder = if !cfg.verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        } else {
            let roots = match &cfg.ca_file {
                Some(path) => {
                    let certs = super::read_certs(path).map_err(|e| err("ca_file", e))?;
                    let mut store = RootCertStore::empty();
                    let (added, _) = store.add_parsable_certificates(certs);
                    if added == 0 {
                        return Err(err(
                            "ca_file",
                            anyhow::anyhow!("{}: no usable CA certificate", path.display()),
                        ));
                    }
                    Arc::new(store)
                }
                None => system_roots().map_err(|e| err("ca_file", anyhow::anyhow!(e)))?,
            };
            builder.with_root_certificates(roots)
        };
        let mut config = match &cfg.client_cert {
            None => builder.with_no_client_auth(),
            Some(files) => {
                let chain = super::read_certs(&files.cert).map_err(|e| err("client_cert", e))?;
                let key = super::read_key(&files.key).map_err(|e| err("client_key", e))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    err(
                        "client_key",
                        anyhow::anyhow!(
                            "{} and {} do not form a usable pair: {e}",
                            files.cert.display(),
                            files.key.display()
                        ),
                    )
                })?
            }
        };
        config.alpn_protocols = super::alpn_bytes(&cfg.alpn);
        let name = match &cfg.server_name {
            Some(n) => Some(
                ServerName::try_from(n.clone())
                    .map_err(|e| err("server_name", anyhow::anyhow!("{n:?}: {e}")))?,
            ),
            None => None,
        };
        Ok(TlsClient {
            config: Arc::new(config),
            name,
        })
    }

    /// The name sent as SNI and verified: `server_name`, else `host` (a pool server's host as
    /// configured: a name, an IP address, or a bracketed IPv6 address).
    pub fn server_name(&self, host: &str) -> std::io::Result<ServerName<'static>> {
        if let Some(n) = &self.name {
            return Ok(n.clone());
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(bare.to_string()).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host:?}: {e}"))
        })
    }

    /// The handshake over a connected socket to server `host`; the caller bounds it in time.
    /// A certificate that does not verify is an error (`InvalidData`).
    pub async fn connect<IO>(&self, io: IO, host: &str) -> std::io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = self.server_name(host)?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, io)
            .await
    }
}

/// `verify = false`: any certificate is accepted (signatures are still checked, so the
/// handshake itself is sound; who holds the key is not).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unverified(server_name: Option<&str>) -> TlsClient {
        TlsClient::new(&ClientTls {
            ca_file: None,
            server_name: server_name.map(str::to_string),
            verify: false,
            client_cert: None,
            alpn: vec!["h2".into()],
            min_version: crate::config::TlsVersion::V1_3,
        })
        .expect("no files to read")
    }

    #[test]
    fn the_name_sent_and_verified() {
        let c = unverified(None);
        let name = |h: &str| c.server_name(h).map(|n| n.to_str().into_owned());
        assert_eq!(name("backend.test").expect("name"), "backend.test");
        assert_eq!(name("10.0.0.1").expect("ip"), "10.0.0.1");
        assert_eq!(name("[::1]").expect("bracketed v6"), "::1");
        assert!(name("a b").is_err());
        let c = unverified(Some("fixed.test"));
        assert_eq!(
            c.server_name("10.0.0.1").expect("fixed").to_str(),
            "fixed.test"
        );
    }

    #[test]
    fn missing_files_name_their_key() {
        let mut cfg = ClientTls {
            ca_file: Some("/nonexistent/ca.pem".into()),
            server_name: None,
            verify: true,
            client_cert: None,
            alpn: Vec::new(),
            min_version: crate::config::TlsVersion::V1_2,
        };
        assert_eq!(TlsClient::new(&cfg).expect_err("no ca").key, "ca_file");
        cfg.ca_file = None;
        cfg.verify = false;
        cfg.client_cert = Some(crate::config::TlsFiles {
            cert: "/nonexistent/c.pem".into(),
            key: "/nonexistent/k.pem".into(),
        });
        assert_eq!(
            TlsClient::new(&cfg).expect_err("no cert").key,
            "client_cert"
        );
    }
}
