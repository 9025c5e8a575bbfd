//! TLS for the agent-relay transport (rustls, ring provider): the relay's acceptor from PEM
//! files, and the agent's connector, which checks the relay's certificate either against a
//! CA (or the relay's own self-signed certificate) for the configured name, or by its pinned
//! SHA-256 fingerprint.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use sha2::Digest as _;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::RelayVerify;

/// The ALPN the transport speaks (HTTP/2 with reversed roles after a hello).
pub const ALPN: &[u8] = b"gatehouse-tunnel/1";

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{}: no certificate found",
        path.display()
    );
    Ok(certs)
}

fn key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("{}: not a PEM private key", path.display()))?
        .with_context(|| format!("{}: no private key found", path.display()))
}

/// ring's suites with AES-128-GCM first (ring lists AES-256-GCM first): the same TLS 1.3
/// AEAD family at ten rounds instead of fourteen, which is most of a bulk stream's cost.
/// Both ends list it first, so it is what they agree on; the others stay as fallbacks.
fn provider() -> tokio_rustls::rustls::crypto::CryptoProvider {
    let mut p = ring::default_provider();
    let first = |s: &tokio_rustls::rustls::SupportedCipherSuite| {
        s.suite() != tokio_rustls::rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
    };
    // A stable sort: the rest keep ring's order.
    p.cipher_suites.sort_by_key(first);
    p
}

/// The relay's side: its certificate chain and key.
pub fn acceptor(cert: &Path, key_path: &Path) -> anyhow::Result<TlsAcceptor> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs(cert)?, key(key_path)?)
        .context("certificate and key do not form a usable pair")?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The agent's side.
pub fn connector(verify: &RelayVerify) -> anyhow::Result<TlsConnector> {
    let provider = Arc::new(provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let mut config = match verify {
        RelayVerify::Ca(path) => {
            let mut roots = RootCertStore::empty();
            for c in certs(path)? {
                roots
                    .add(c)
                    .with_context(|| format!("{}: not a usable CA certificate", path.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        RelayVerify::Fingerprint(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                pin: *pin,
                provider,
            }))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// SHA-256 of the CA file's contents (`ca = ...`; `None` for a pinned fingerprint or a file
/// that cannot be read), so a reload notices a CA replaced under the same path.
pub fn ca_digest(verify: &RelayVerify) -> Option<[u8; 32]> {
    match verify {
        RelayVerify::Ca(path) => std::fs::read(path).ok().map(|b| fingerprint(&b)),
        RelayVerify::Fingerprint(_) => None,
    }
}

/// SHA-256 of a certificate (DER), what `gatehouse cert` prints and `fingerprint` pins.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    let d = sha2::Sha256::digest(der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_slice());
    out
}

/// Accepts exactly the certificate with the pinned fingerprint (whatever name it carries);
/// the handshake signature is still checked against its key.
#[derive(Debug)]
struct Pinned {
    pin: [u8; 32],
    provider: Arc<tokio_rustls::rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        // Not secret: a plain comparison is fine for a public certificate's digest.
        if fingerprint(end_entity.as_ref()) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(TlsError::General(
                "the relay's certificate does not have the pinned fingerprint".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `gatehouse cert`: a self-signed certificate for `name` and its key, as PEM, and the
/// certificate's fingerprint.
pub fn self_signed(name: &str) -> anyhow::Result<(String, String, [u8; 32])> {
    let key = rcgen::KeyPair::generate().context("generating a key")?;
    let params = rcgen::CertificateParams::new(vec![name.to_string()])
        .with_context(|| format!("{name:?} is not a usable certificate name"))?;
    let cert = params
        .self_signed(&key)
        .context("signing the certificate")?;
    let fp = fingerprint(cert.der());
    Ok((cert.pem(), key.serialize_pem(), fp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_loads_on_both_sides() {
        let dir = tempfile::tempdir().expect("dir");
        let (cert, key_pem, fp) = self_signed("relay.test").expect("cert");
        let c = dir.path().join("c.crt");
        let k = dir.path().join("c.key");
        std::fs::write(&c, cert).expect("write");
        std::fs::write(&k, key_pem).expect("write");
        acceptor(&c, &k).expect("acceptor");
        assert_eq!(
            provider().cipher_suites[0].suite(),
            tokio_rustls::rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        connector(&RelayVerify::Ca(c.clone())).expect("CA connector");
        connector(&RelayVerify::Fingerprint(fp)).expect("pinned connector");
        let der = certs(&c).expect("certs");
        assert_eq!(fingerprint(der[0].as_ref()), fp);
    }
}
