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

/// What one HTTP endpoint negotiates, as `check` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointTls {
    /// `catalog`, `oauth2`, `s3`, `webhook`.
    pub role: &'static str,
    /// `scheme://host:port`, nothing else of the URL (no credentials).
    pub address: String,
    /// `TLSv1.3, certificate verified`, `no TLS (http)`, or why TLS failed.
    pub tls: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// Connects to `url` and completes a TLS handshake the way our clients do
/// (system roots plus `extra_ca`, hostname verified), or says it is plain
/// HTTP.  Reads nothing and sends no request.
pub async fn probe_tls(
    role: &'static str,
    url: &str,
    extra_ca: Option<PathBuf>,
    key: &'static str,
    hints: &crate::error::TlsHints,
) -> EndpointTls {
    let parsed = url::Url::parse(url).ok();
    let (scheme, host, port) = match &parsed {
        Some(u) => (
            u.scheme().to_string(),
            u.host_str().unwrap_or("").to_string(),
            u.port_or_known_default().unwrap_or(443),
        ),
        None => (String::new(), String::new(), 0),
    };
    let address = format!("{scheme}://{host}:{port}");
    let done = |ok: bool, tls: String, hint: Option<String>| EndpointTls {
        role,
        address: address.clone(),
        tls,
        ok,
        hint,
    };
    match scheme.as_str() {
        "http" => return done(true, "no TLS (http)".into(), None),
        "https" => {}
        _ => return done(false, format!("`{url}` is not an http(s) URL"), None),
    }
    match handshake(&host, port, extra_ca, key).await {
        Ok(version) => done(true, format!("{version}, certificate verified"), None),
        Err(e) => match crate::error::tls_failure_at(&e, hints, Some(format!("{host}:{port}"))) {
            Some((line, hint)) => done(false, line, Some(hint)),
            None => done(false, format!("cannot connect to {host}:{port}: {e}"), None),
        },
    }
}

async fn handshake(
    host: &str,
    port: u16,
    extra_ca: Option<PathBuf>,
    key: &'static str,
) -> std::result::Result<String, std::io::Error> {
    use std::io::{Error as IoError, ErrorKind as IoKind};
    let config = client_config(&TlsPolicy::verified(extra_ca, key))
        .map_err(|e| IoError::other(e.message().to_string()))?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| IoError::new(IoKind::InvalidInput, e))?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((host, port)).await?;
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
    };
    let tls = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| IoError::new(IoKind::TimedOut, "no answer within 10 s"))??;
    let version = tls
        .get_ref()
        .1
        .protocol_version()
        .map(|v| match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
            other => format!("{other:?}"),
        })
        .unwrap_or_else(|| "TLS".into());
    Ok(version)
}
