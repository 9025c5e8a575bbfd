//! TLS for a listener (SOCKS5 over TLS): certificate chain and key from PEM files, rustls with
//! the ring provider.

use std::sync::Arc;

use anyhow::Context as _;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// Which of the two files a TLS set-up problem is in (the config key to blame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Cert,
    Key,
}

/// Loads the files and builds the acceptor; errors name the file at fault.
pub fn acceptor(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    load(files).map_err(|(_, e)| e)
}

/// Like [`acceptor`], and says which file (key) the problem is in.
pub fn load(files: &TlsFiles) -> Result<TlsAcceptor, (TlsFile, anyhow::Error)> {
    let cert = |e: anyhow::Error| (TlsFile::Cert, e);
    let key = |e: anyhow::Error| (TlsFile::Key, e);
    let certs = read_certs(files).map_err(cert)?;
    let key_der = read_key(files).map_err(key)?;
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")
        .map_err(cert)?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .context("certificate and key do not form a usable pair")
        .map_err(key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn read_certs(
    files: &TlsFiles,
) -> anyhow::Result<Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>> {
    let cert_pem = read(&files.cert)?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", files.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate found", files.cert.display());
    }
    Ok(certs)
}

fn read_key(
    files: &TlsFiles,
) -> anyhow::Result<tokio_rustls::rustls::pki_types::PrivateKeyDer<'static>> {
    let key_pem = read(&files.key)?;
    rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("{}: not a PEM private key", files.key.display()))?
        .with_context(|| format!("{}: no private key found", files.key.display()))
}
