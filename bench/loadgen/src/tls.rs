//! `tls-handshakes`: new TLS connections as fast as the server takes them, each a full
//! handshake (resumption off: no ticket or session id is ever offered), then closed.
//! TLS 1.3, TLS_AES_128_GCM_SHA256 and X25519 only, as the other clients of bench/reverse.sh.
//! The server's certificate is not checked against a CA (the benchmark's is self-signed), but
//! its CertificateVerify signature is, so the client does the work a real one does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::client::Resumption;
use tokio_rustls::rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio_rustls::TlsConnector;

use crate::Error;

#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, tokio_rustls::rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// ring's provider, as Gatehouse uses; it is deprecated for lacking post-quantum key exchange,
// and this client offers X25519 alone on purpose.
#[allow(deprecated)]
fn config() -> Result<ClientConfig, Error> {
    let provider = Arc::new(CryptoProvider {
        cipher_suites: vec![ring::cipher_suite::TLS13_AES_128_GCM_SHA256],
        kx_groups: vec![ring::kx_group::X25519],
        ..ring::default_provider()
    });
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&tokio_rustls::rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// `conc` loops for `secs`: connect, handshake (10 s cap each), close. Prints
/// `handshakes= failed= secs= per_s= p99_ms=`.
pub async fn handshakes(target: SocketAddr, secs: Duration, conc: u64) -> Result<(), Error> {
    let connector = TlsConnector::from(Arc::new(config()?));
    let name = ServerName::IpAddress(target.ip().into());
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + secs;
    let mut workers = Vec::new();
    for _ in 0..conc {
        let (connector, name, failed) = (connector.clone(), name.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let one = async {
                    let tcp = TcpStream::connect(target).await?;
                    tcp.set_nodelay(true)?;
                    let tls = connector.connect(name.clone(), tcp).await?;
                    drop(tls);
                    Ok::<_, Error>(())
                };
                match tokio::time::timeout(Duration::from_secs(10), one).await {
                    Ok(Ok(())) => lat.push(t.elapsed()),
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.await.map_err(|e| e.to_string())?);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    let p99 = lat
        .get((lat.len() * 99 / 100).min(lat.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default();
    println!(
        "handshakes={} failed={} secs={secs:.3} per_s={:.1} p99_ms={:.2}",
        lat.len(),
        failed.load(Ordering::Relaxed),
        lat.len() as f64 / secs,
        p99.as_secs_f64() * 1000.0
    );
    Ok(())
}
