//! TLS for every listener and every upstream, on rustls with the ring provider.
//!
//! - [`names`]: which certificate a ClientHello's SNI gets (pure, unit-tested).
//! - [`server`]: [`TlsServer`], a listener's certificates (several, chosen by SNI), ALPN and
//!   versions, reloadable: [`TlsServer::reload`] swaps in new files for the connections
//!   accepted after it; established ones keep their session.
//! - [`client`]: [`TlsClient`], TLS to a pool's servers (CA file or the system's roots, SNI,
//!   optional client certificate).
//!
//! Files are read here (PEM certificate chains and private keys); every error names the file.

pub mod client;
pub mod names;
pub mod server;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, SupportedProtocolVersion};

pub use client::TlsClient;
pub use server::{LoadError, TlsFile, TlsServer};

use crate::config::TlsVersion;

/// The one crypto provider (ring), shared by every config built here.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::LazyLock<Arc<CryptoProvider>> =
        std::sync::LazyLock::new(|| Arc::new(ring::default_provider()));
    PROVIDER.clone()
}

/// The versions allowed from `min` up.
fn versions(min: TlsVersion) -> &'static [&'static SupportedProtocolVersion] {
    static BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
    static ONLY_13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
    match min {
        TlsVersion::V1_2 => BOTH,
        TlsVersion::V1_3 => ONLY_13,
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Every certificate in a PEM file (at least one).
pub fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate found", path.display());
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("{}: not a PEM private key", path.display()))?
        .with_context(|| format!("{}: no private key found", path.display()))
}

/// ALPN names as rustls wants them.
fn alpn_bytes(alpn: &[String]) -> Vec<Vec<u8>> {
    alpn.iter().map(|a| a.as_bytes().to_vec()).collect()
}
