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
}

impl TlsPolicy {
    /// Verified against the system roots (which honour `SSL_CERT_FILE`) plus
    /// `root_cert` from config key `key`.
    pub fn verified(root_cert: Option<std::path::PathBuf>, key: &'static str) -> Self {
        Self {
            verify: true,
            root_cert,
            root_cert_key: key,
        }
    }
}

/// Rewrites `sslmode=verify-ca|verify-full` (which tokio-postgres does not
/// parse) to `require`, and says whether verification was asked for.
pub fn normalize_dsn(dsn: &str) -> (String, bool) {
    let mut verify = false;
    let mut out = dsn.to_string();
    for mode in ["verify-full", "verify-ca"] {
        let needle = format!("sslmode={mode}");
        if out.contains(&needle) {
            verify = true;
            out = out.replace(&needle, "sslmode=require");
        }
    }
    (out, verify)
}

/// A rustls client configuration for `policy`.
pub fn client_config(policy: &TlsPolicy) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("TLS setup: {e}")))?;
    if !policy.verify {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
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
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
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
    fn verify_modes_become_require() {
        assert_eq!(
            normalize_dsn("postgresql://u@h/db?sslmode=verify-full"),
            ("postgresql://u@h/db?sslmode=require".to_string(), true)
        );
        assert_eq!(
            normalize_dsn("host=h sslmode=verify-ca"),
            ("host=h sslmode=require".to_string(), true)
        );
        assert_eq!(
            normalize_dsn("host=h sslmode=require"),
            ("host=h sslmode=require".to_string(), false)
        );
    }

    #[test]
    fn configs_build() {
        assert!(
            client_config(&TlsPolicy {
                verify: false,
                root_cert: None,
                root_cert_key: "database.ssl_root_cert"
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
