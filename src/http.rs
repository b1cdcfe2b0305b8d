//! The one place HTTP clients are built.
//!
//! Every HTTP client permafrost uses — the REST catalog and its OAuth2 token
//! endpoint, our own schema commits, webhooks — speaks TLS through rustls
//! with certificate and hostname verification: the system roots (rustls
//! honours `SSL_CERT_FILE`) plus, for the catalog, the extra CA bundle of
//! `catalog.ssl.ca-cert`.  No client is built without TLS support.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::CatalogConfig;
use crate::error::{Error, Result};
use crate::source::tls::{TlsPolicy, client_config};

/// Catalog properties that name an extra CA bundle (PEM), ours and PyIceberg's.
pub const CA_CERT_KEYS: [&str; 2] = ["ssl.ca-cert", "ssl.cabundle"];

/// Installs aws-lc-rs as the process's rustls provider (once), so a client
/// another crate builds with reqwest's defaults has one too instead of
/// panicking.  [`client`] calls it; so does `main`.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// A client trusting the system roots plus `extra_ca` (named by config key
/// `key` in messages); `timeout` bounds each whole request.
pub fn client(
    extra_ca: Option<PathBuf>,
    key: &'static str,
    timeout: Option<Duration>,
) -> Result<reqwest::Client> {
    install_crypto_provider();
    let tls = client_config(&TlsPolicy::verified(extra_ca, key))?;
    let mut b = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(Duration::from_secs(10));
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b.build()
        .map_err(|e| Error::internal(format!("cannot build an HTTP client: {e}")))
}

/// The client for the configured catalog (REST requests, OAuth2, commits).
pub fn catalog_client(cfg: &CatalogConfig) -> Result<reqwest::Client> {
    let ca = CA_CERT_KEYS
        .iter()
        .find_map(|k| cfg.properties.get(*k))
        .map(PathBuf::from);
    client(ca, "catalog.ssl.ca-cert", None)
}
