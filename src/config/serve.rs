//! `serve:`: settings of `permafrost serve`, the read-only HTTP query API.
//!
//! ```yaml
//! serve:
//!   listen: 127.0.0.1:8080          # loopback by default
//!   tokens: ["${PERMAFROST_API_TOKEN}"]
//!   tls: { cert: /etc/permafrost/tls.crt, key: /etc/permafrost/tls.key }
//!   max_rows: 10000                  # page size cap (`limit`) and `/sql` JSON rows
//!   max_offset: 100000               # `offset + limit` cap of a page
//!   request_timeout: 30s
//!   max_concurrent: 8                # queries running at once; the rest wait
//!   max_body_bytes: 65536
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{opt_scalar, parse_duration};
use crate::error::{Error, Result};
use crate::secret;

/// The default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// `serve`: how the HTTP API listens, who may ask, and how much it answers.
#[derive(Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// Bearer tokens accepted (none: no authentication, loopback only).
    /// Never printed.
    pub tokens: Vec<String>,
    /// PEM certificate chain and private key: serve HTTPS.
    pub tls: Option<ServeTls>,
    /// Rows a JSON page (and a JSON `/sql` answer) holds at most.
    pub max_rows: usize,
    /// `offset + limit` of a page at most (a page is sorted in memory).
    pub max_offset: usize,
    /// A request (a whole streamed answer included) is cut off after this.
    pub request_timeout: Duration,
    /// Queries running at once; more wait for a slot (within the timeout).
    pub max_concurrent: usize,
    /// Request bodies larger than this are refused (413).
    pub max_body_bytes: usize,
}

/// `serve.tls`.
#[derive(Debug, Clone)]
pub struct ServeTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tokens: Vec::new(),
            tls: None,
            max_rows: 10_000,
            max_offset: 100_000,
            request_timeout: Duration::from_secs(30),
            max_concurrent: 8,
            max_body_bytes: 64 * 1024,
        }
    }
}

impl fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeConfig")
            .field("listen", &self.listen)
            .field("tokens", &format_args!("<{} redacted>", self.tokens.len()))
            .field("tls", &self.tls)
            .field("max_rows", &self.max_rows)
            .field("max_offset", &self.max_offset)
            .field("request_timeout", &self.request_timeout)
            .field("max_concurrent", &self.max_concurrent)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServe {
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    tokens: Vec<String>,
    #[serde(default)]
    tls: Option<RawServeTls>,
    #[serde(default, deserialize_with = "opt_scalar")]
    max_rows: Option<usize>,
    #[serde(default, deserialize_with = "opt_scalar")]
    max_offset: Option<usize>,
    #[serde(default)]
    request_timeout: Option<String>,
    #[serde(default, deserialize_with = "opt_scalar")]
    max_concurrent: Option<usize>,
    #[serde(default, deserialize_with = "opt_scalar")]
    max_body_bytes: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServeTls {
    cert: PathBuf,
    key: PathBuf,
}

/// Parses an address for `what` (`serve.listen`, `--listen`).
pub fn parse_listen(what: &str, a: &str) -> Result<SocketAddr> {
    a.parse().map_err(|e| {
        Error::config(format!("{what}: `{a}` is not an address: {e}"))
            .with_hint("host:port, e.g. 127.0.0.1:8080 or 0.0.0.0:8443")
    })
}

pub(super) fn serve_config(raw: RawServe) -> Result<ServeConfig> {
    let d = ServeConfig::default();
    let positive = |key: &str, v: Option<usize>, default: usize| match v {
        Some(0) => Err(Error::config(format!("`serve.{key}` must be at least 1"))),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    let mut tokens = Vec::new();
    for t in raw.tokens {
        if t.trim().len() < 16 {
            return Err(
                Error::config("`serve.tokens`: a token is shorter than 16 characters")
                    .with_hint("use long random tokens, e.g. `openssl rand -hex 32`"),
            );
        }
        secret::register(t.clone());
        tokens.push(t);
    }
    let cfg = ServeConfig {
        listen: match &raw.listen {
            Some(a) => parse_listen("`serve.listen`", a)?,
            None => d.listen,
        },
        tokens,
        tls: raw.tls.map(|t| ServeTls {
            cert: t.cert,
            key: t.key,
        }),
        max_rows: positive("max_rows", raw.max_rows, d.max_rows)?,
        max_offset: positive("max_offset", raw.max_offset, d.max_offset)?,
        request_timeout: match &raw.request_timeout {
            Some(s) => parse_duration(s)
                .map_err(|m| Error::config(format!("`serve.request_timeout`: {m}")))?,
            None => d.request_timeout,
        },
        max_concurrent: positive("max_concurrent", raw.max_concurrent, d.max_concurrent)?,
        max_body_bytes: positive("max_body_bytes", raw.max_body_bytes, d.max_body_bytes)?,
    };
    if cfg.request_timeout.is_zero() {
        return Err(Error::config("`serve.request_timeout` must be above 0"));
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ServeConfig> {
        let raw: RawServe =
            serde_norway::from_str(yaml).map_err(|e| Error::config(e.to_string()))?;
        serve_config(raw)
    }

    #[test]
    fn defaults_listen_on_loopback_without_tokens() {
        let c = parse("{}").unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert!(c.tokens.is_empty());
        assert_eq!(c.max_rows, 10_000);
    }

    #[test]
    fn short_tokens_and_zero_limits_are_refused() {
        assert!(parse("tokens: [abc]").is_err());
        assert!(parse("max_rows: 0").is_err());
        assert!(parse("listen: nowhere").is_err());
        let c = parse("tokens: [0123456789abcdef0123]\nrequest_timeout: 5s").unwrap();
        assert_eq!(c.request_timeout, Duration::from_secs(5));
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
    }
}
