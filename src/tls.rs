//! Transport security, on rustls with the ring provider: the listeners'
//! server configuration (`[tls] cert_file`, `key_file`) and the roots the
//! outbound client trusts (Mozilla's, and `[tls] ca_file`).
//!
//! Every configuration names its crypto provider instead of relying on a
//! process-wide default, so no other crate's choice can change ours.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file, or a sentence saying why not.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let what = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {what}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)"));
    }
    Ok(certs)
}

/// The server side of one listener: its certificate chain and key, and the
/// application protocol it speaks (`h2` for gRPC, `http/1.1` for HTTP).
pub fn server_config(cert_file: &Path, key_file: &Path, alpn: &[u8]) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = certificates(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key_file.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("{} and {} do not make a TLS identity: {e}", cert_file.display(), key_file.display()))?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// The client side of outbound HTTPS (gateway, webhooks): Mozilla's roots
/// and, when given, the certificates in `extra_ca` (a private CA).
pub fn client_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = extra_ca {
        for cert in certificates(path)? {
            roots.add(cert).map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Both listeners' acceptors, on one certificate.
#[derive(Clone)]
pub struct Acceptors {
    pub grpc: tokio_rustls::TlsAcceptor,
    pub http: tokio_rustls::TlsAcceptor,
}

impl Acceptors {
    pub fn new(cert_file: &Path, key_file: &Path) -> Result<Acceptors, String> {
        let grpc = server_config(cert_file, key_file, b"h2")?;
        let http = server_config(cert_file, key_file, b"http/1.1")?;
        Ok(Acceptors { grpc: grpc.into(), http: http.into() })
    }
}
