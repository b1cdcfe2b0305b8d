//! REST catalogs that need AWS SigV4 (`rest.sigv4-enabled: true`): the
//! Iceberg REST endpoints of S3 Tables and of Glue.
//!
//! iceberg-rust 0.10.1's REST client cannot sign its requests and takes only
//! a `reqwest::Client`, which has no request middleware.  So the handle of
//! such a catalog starts a [`Forwarder`]: an HTTP endpoint on loopback that
//! iceberg-rust's client — and permafrost's own REST commits — talk to
//! instead of the catalog.  It signs every request with the AWS credential
//! chain's current keys ([`crate::aws::RequestSigner`]) and sends it on to
//! the configured `uri` over the handle's TLS client; the catalog's answer
//! comes back unchanged (but for a `uri` in its `/v1/config` answer that
//! names the catalog itself, pointed back at the forwarder).  Nothing is
//! retried or cached here: what the catalog answers is what the client sees.
//!
//! Only this process can use it: it listens on 127.0.0.1 only, and every
//! path it serves starts with a random 128-bit secret (registered with
//! [`crate::secret`], so never printed); a request without it is refused
//! (403) and never signed.  It stops when the handle is dropped.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::aws::RequestSigner;
use crate::error::{Error, Result};

/// The largest request body forwarded (a commit of many snapshot updates is
/// far smaller).
const MAX_REQUEST_BODY: usize = 64 << 20;

/// The SHA-256 of no bytes, hex.
const EMPTY_BODY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The headers not passed on: hop-by-hop ones, the ones the HTTP client
/// sets itself, and any `authorization` (the signature is the only one).
/// `accept-encoding` too: the catalog then answers uncompressed, which is
/// what the client asked us for.
const NOT_FORWARDED: [&str; 10] = [
    "host",
    "connection",
    "keep-alive",
    "content-length",
    "transfer-encoding",
    "te",
    "upgrade",
    "proxy-authorization",
    "authorization",
    "accept-encoding",
];

/// The loopback endpoint of one catalog handle (see the module docs).
pub struct Forwarder {
    /// `http://127.0.0.1:{port}/{secret}`, then the path of the `uri`.
    local_uri: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Forwarder {
    /// Starts forwarding to the catalog at `uri`, signing with `signer`,
    /// over `client`.
    pub async fn start(uri: &str, signer: RequestSigner, client: reqwest::Client) -> Result<Self> {
        let upstream = url::Url::parse(uri)
            .map_err(|e| Error::config(format!("`catalog.uri` {uri:?}: {e}")))?;
        let origin = upstream.origin().ascii_serialization();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::io("cannot open the catalog's signing endpoint on loopback", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::io("cannot open the catalog's signing endpoint on loopback", e))?
            .port();
        let secret = uuid::Uuid::new_v4().simple().to_string();
        crate::secret::register(secret.clone());
        let local = format!("http://127.0.0.1:{port}/{secret}");
        let state = Arc::new(Route {
            secret,
            origin,
            local: local.clone(),
            signer,
            client,
        });
        let app = axum::Router::new().fallback(forward).with_state(state);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!("the catalog's signing endpoint stopped: {e}");
            }
        });
        let path = upstream.path().trim_end_matches('/');
        Ok(Self {
            local_uri: format!("{local}{path}"),
            task,
        })
    }

    /// The `uri` the catalog's clients use instead of the configured one.
    pub fn local_uri(&self) -> &str {
        &self.local_uri
    }
}

/// Where requests go and how they are signed.
struct Route {
    secret: String,
    /// The catalog's `scheme://host[:port]`.
    origin: String,
    /// The forwarder's own `http://127.0.0.1:{port}/{secret}`.
    local: String,
    signer: RequestSigner,
    client: reqwest::Client,
}

async fn forward(State(route): State<Arc<Route>>, request: Request) -> Response {
    match route.forward(request).await {
        Ok(response) => response,
        Err((status, message)) => {
            // An Iceberg REST error, which the catalog client reports.
            let body = serde_json::json!({
                "error": {"message": message, "type": "PermafrostSigningError", "code": status.as_u16()}
            });
            (status, axum::Json(body)).into_response()
        }
    }
}

type Refusal = (StatusCode, String);

impl Route {
    async fn forward(&self, request: Request) -> std::result::Result<Response, Refusal> {
        let (parts, body) = request.into_parts();
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let rest = without_secret(target, &self.secret).ok_or((
            StatusCode::FORBIDDEN,
            "not a request of this process".to_string(),
        ))?;
        let url = format!("{}{rest}", self.origin);
        let body = axum::body::to_bytes(body, MAX_REQUEST_BODY)
            .await
            .map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request: {e}"),
                )
            })?;
        let mut headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .filter(|(name, _)| !NOT_FORWARDED.contains(&name.as_str()))
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
            .collect();
        if body.is_empty() {
            // As Iceberg's Java and Python signers send it (signed).
            headers.push(("x-amz-content-sha256".into(), EMPTY_BODY_SHA256.into()));
        }
        let failed = |e: Error| (StatusCode::BAD_GATEWAY, e.as_told());
        let signature = self
            .signer
            .sign(parts.method.as_str(), &url, &headers, &body)
            .await
            .map_err(failed)?;
        let mut call = self.client.request(parts.method.clone(), &url);
        for (name, value) in headers.iter().chain(&signature) {
            call = call.header(name, value);
        }
        let answer = call
            .body(body)
            .send()
            .await
            .map_err(|e| failed(Error::catalog_request("cannot reach the REST catalog", e)))?;
        self.answer(rest, answer).await
    }

    /// The catalog's answer to `rest`, as the client gets it.
    async fn answer(
        &self,
        rest: &str,
        answer: reqwest::Response,
    ) -> std::result::Result<Response, Refusal> {
        let status = answer.status();
        let headers = answer.headers().clone();
        let bytes = answer.bytes().await.map_err(|e| {
            (
                StatusCode::BAD_GATEWAY,
                Error::catalog_request("cannot read the REST catalog's answer", e).as_told(),
            )
        })?;
        let path = rest.split('?').next().unwrap_or(rest);
        let bytes = match path.ends_with("/v1/config") && status.is_success() {
            true => pointed_back(&bytes, &self.origin, &self.local).unwrap_or(bytes.to_vec()),
            false => bytes.to_vec(),
        };
        let mut response = Response::new(Body::from(bytes));
        *response.status_mut() = status;
        for (name, value) in &headers {
            if !NOT_FORWARDED.contains(&name.as_str())
                && name != HeaderName::from_static("content-encoding")
            {
                response.headers_mut().append(name, value.clone());
            }
        }
        Ok(response)
    }
}

/// `target` without its leading `/{secret}` (compared in constant time),
/// or `None` when it does not start with it.
fn without_secret<'t>(target: &'t str, secret: &str) -> Option<&'t str> {
    let rest = target.strip_prefix('/')?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let given = &rest.as_bytes()[..end];
    bool::from(given.ct_eq(secret.as_bytes())).then_some(&rest[end..])
}

/// A `/v1/config` answer whose `uri` (in `defaults` or `overrides`) names
/// the catalog at `origin`, with that origin replaced by `local` — so the
/// client keeps talking through the forwarder; `None` when there is none.
/// (A `uri` naming another host is left: requests there go unsigned.)
fn pointed_back(config: &[u8], origin: &str, local: &str) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(config).ok()?;
    let mut changed = false;
    for section in ["defaults", "overrides"] {
        if let Some(uri) = v[section]["uri"].as_str()
            && let Some(path) = uri.strip_prefix(origin)
            && (path.is_empty() || path.starts_with('/'))
        {
            v[section]["uri"] = serde_json::Value::String(format!("{local}{path}"));
            changed = true;
        }
    }
    changed.then(|| serde_json::to_vec(&v).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_under_the_secret_are_forwarded() {
        let s = "0123456789abcdef";
        assert_eq!(
            without_secret("/0123456789abcdef/iceberg/v1/config?w=1", s),
            Some("/iceberg/v1/config?w=1")
        );
        assert_eq!(without_secret("/0123456789abcdef?x", s), Some("?x"));
        assert_eq!(without_secret("/0123456789abcdef", s), Some(""));
        for other in [
            "/",
            "/iceberg/v1/config",
            "/0123456789abcdeX/v1",
            "/0123456789abcdef0/v1",
            "0123456789abcdef/v1",
        ] {
            assert_eq!(without_secret(other, s), None, "{other}");
        }
    }

    #[test]
    fn a_uri_override_naming_the_catalog_points_back_at_the_forwarder() {
        let config = br#"{"defaults":{"uri":"https://glue.x.amazonaws.com/iceberg"},"overrides":{"prefix":"p"}}"#;
        let out = pointed_back(
            config,
            "https://glue.x.amazonaws.com",
            "http://127.0.0.1:9/s",
        )
        .expect("rewritten");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["defaults"]["uri"], "http://127.0.0.1:9/s/iceberg");
        assert_eq!(v["overrides"]["prefix"], "p");
        // Another host, a longer host name, or no uri at all: unchanged.
        for other in [
            &br#"{"overrides":{"uri":"https://elsewhere.example/iceberg"}}"#[..],
            br#"{"overrides":{"uri":"https://glue.x.amazonaws.com.evil/iceberg"}}"#,
            br#"{"overrides":{"prefix":"p"}}"#,
        ] {
            assert_eq!(
                pointed_back(other, "https://glue.x.amazonaws.com", "http://l"),
                None
            );
        }
    }
}
