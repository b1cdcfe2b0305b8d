//! TLS to PostgreSQL with libpq's `sslmode` semantics.
//!
//! | `sslmode`            | encrypted            | server certificate verified |
//! |----------------------|----------------------|-----------------------------|
//! | `disable`            | no                   | –                           |
//! | `prefer` (default)   | if the server offers | no                          |
//! | `require`            | yes                  | no (as libpq)               |
//! | `verify-ca`, `verify-full` | yes            | yes: system roots plus `database.ssl_root_cert` |
//!
//! Setting `database.ssl_root_cert` (e.g. the Amazon RDS CA bundle) also turns
//! verification on for `require`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::error::{Error, Result};

/// How the connection is secured, derived from the DSN and the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicy {
    /// Verify the server certificate.
    pub verify: bool,
    /// Extra trusted roots (PEM file).
    pub root_cert: Option<std::path::PathBuf>,
    /// The config key that named `root_cert`, for messages.
    pub root_cert_key: &'static str,
    /// Client certificate and key (PEM files) to authenticate with.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl TlsPolicy {
    /// Verified against the system roots (which honour `SSL_CERT_FILE`) plus
    /// `root_cert` from config key `key`.
    pub fn verified(root_cert: Option<std::path::PathBuf>, key: &'static str) -> Self {
        Self {
            verify: true,
            root_cert,
            root_cert_key: key,
            client_cert: None,
        }
    }
}

/// A rustls client configuration for `policy`.
pub fn client_config(policy: &TlsPolicy) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("TLS setup: {e}")))?;
    if !policy.verify {
        let b = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)));
        return with_client_auth(b, policy);
    }
    let mut roots = system_roots();
    if let Some(path) = &policy.root_cert {
        let key = policy.root_cert_key;
        let pem = std::fs::read(path)
            .map_err(|e| Error::config(format!("`{key}`: cannot read {}: {e}", path.display())))?;
        let mut n = 0;
        for cert in rustls_pemfile_certs(&pem) {
            roots.add(cert).map_err(|e| {
                Error::config(format!(
                    "`{key}`: bad certificate in {}: {e}",
                    path.display()
                ))
            })?;
            n += 1;
        }
        if n == 0 {
            return Err(Error::config(format!(
                "`{key}`: no PEM certificate in {}",
                path.display()
            )));
        }
    }
    with_client_auth(builder.with_root_certificates(roots), policy)
}

/// How long the system's roots, once read, serve the clients built after:
/// a run builds several (the catalog's, one per Postgres connection), a
/// daemon that runs for months still sees a renewed bundle.
const SYSTEM_ROOTS_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// The system's root certificates (rustls-native-certs: `SSL_CERT_FILE`,
/// `SSL_CERT_DIR`, the distribution's bundle).  Reading and parsing them
/// takes milliseconds of CPU, so they are read at most once per
/// [`SYSTEM_ROOTS_TTL`].
fn system_roots() -> rustls::RootCertStore {
    type Cached = Option<(std::time::Instant, rustls::RootCertStore)>;
    static CACHE: std::sync::Mutex<Cached> = std::sync::Mutex::new(None);
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((read, roots)) = cache.as_ref()
        && read.elapsed() < SYSTEM_ROOTS_TTL
    {
        return roots.clone();
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    *cache = Some((std::time::Instant::now(), roots.clone()));
    roots
}

/// Finishes `b` with the policy's client certificate, if any.
fn with_client_auth(
    b: rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>,
    policy: &TlsPolicy,
) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let Some((cert, key)) = &policy.client_cert else {
        return Ok(b.with_no_client_auth());
    };
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| {
            Error::config(format!(
                "`sslcert`/`sslkey`: cannot read {}: {e}",
                p.display()
            ))
        })
    };
    let certs = rustls_pemfile_certs(&read(cert)?);
    if certs.is_empty() {
        return Err(Error::config(format!(
            "`sslcert`: no PEM certificate in {}",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| {
        Error::config(format!(
            "`sslkey`: no PEM private key in {}: {e}",
            key.display()
        ))
    })?;
    b.with_client_auth_cert(certs, key)
        .map_err(|e| Error::config(format!("`sslcert`/`sslkey` do not fit: {e}")))
}

/// Parses the PEM certificates in `pem`.
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .filter_map(|c| c.ok())
        .collect()
}

/// libpq's `sslmode=require`: encrypted, certificate not checked.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_build() {
        assert!(
            client_config(&TlsPolicy {
                verify: false,
                ..TlsPolicy::verified(None, "database.ssl_root_cert")
            })
            .is_ok()
        );
        assert!(client_config(&TlsPolicy::verified(None, "database.ssl_root_cert")).is_ok());
        let e = client_config(&TlsPolicy::verified(
            Some("/nonexistent.pem".into()),
            "database.ssl_root_cert",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("ssl_root_cert"));
    }
}
