//! `serve`: a read-only HTTP API over the archive (cargo feature `query`).
//!
//! Routes (under `/api/v1`): the configured archives, one table's schema and
//! history, its snapshots and windows, page or stream queries with field
//! filters, an expression filter, time range and time travel, and SQL.  The
//! OpenAPI document at `/api/v1/openapi.json` is generated from the handlers
//! ([`openapi`]).
//!
//! Contract:
//! - **Read-only.** Nothing here writes to the catalog, the storage or
//!   Postgres; SQL is limited to queries ([`crate::inspect::query::prepare`]).
//! - **One catalog handle** for the life of the server; each request reloads
//!   the table's current metadata through it, so answers follow new archive
//!   runs and other engines' commits without a restart.
//! - **Bounded.** At most `serve.max_concurrent` queries run at once (the
//!   rest wait for a slot, within the timeout); a JSON page holds at most
//!   `serve.max_rows` rows and is sorted in memory over at most
//!   `serve.max_offset` rows; streams flow through a small channel, so a slow
//!   client slows the scan instead of filling memory; every request is cut off
//!   after `serve.request_timeout`; bodies over `serve.max_body_bytes` are
//!   refused.
//! - **Authenticated** with bearer tokens (`serve.tokens`, compared in
//!   constant time) when configured; without tokens only a loopback address
//!   is accepted (unless `--insecure-no-auth`).  `/healthz` and the OpenAPI
//!   document need no token.
//! - **Errors** are JSON `{error, hint}` with a status code (`error`); no
//!   secret and no internal detail is ever in an answer or a log line.

mod auth;
mod error;
pub mod openapi;
mod page;
mod request;
mod routes;
mod stream;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

pub use error::ApiError;

/// Options of `permafrost serve`.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Overrides `serve.listen`.
    pub listen: Option<SocketAddr>,
    /// Serve without tokens on a non-loopback address.
    pub insecure_no_auth: bool,
}

/// What every handler shares: the config, the one catalog handle, the query
/// slots and the metrics.
pub(crate) struct AppState {
    pub cfg: Config,
    pub catalog: Arc<crate::lake::catalog::CatalogHandle>,
    slots: Arc<Semaphore>,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// A query slot, waited for at most the request timeout (then 503).
    pub async fn slot(&self) -> std::result::Result<OwnedSemaphorePermit, ApiError> {
        let wait = self.cfg.serve.request_timeout;
        match tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(ApiError::busy(wait)),
        }
    }

    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        self.cfg.serve.request_timeout
    }

    /// `work`, cut off at the request's `deadline` (then 504).
    pub async fn by<T, E>(
        &self,
        deadline: std::time::Instant,
        work: impl Future<Output = std::result::Result<T, E>>,
    ) -> std::result::Result<T, ApiError>
    where
        ApiError: From<E>,
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match tokio::time::timeout(left, work).await {
            Ok(r) => r.map_err(ApiError::from),
            Err(_) => Err(ApiError::timeout(self.timeout())),
        }
    }
}

/// Refuses to serve the archive to the network without authentication.
pub fn check_exposure(cfg: &Config, listen: SocketAddr, insecure_no_auth: bool) -> Result<()> {
    let s = &cfg.serve;
    if s.tokens.is_empty() && !listen.ip().is_loopback() && !insecure_no_auth {
        return Err(Error::config(format!(
            "serve: {listen} is reachable from other machines, but `serve.tokens` is empty"
        ))
        .with_hint("set `serve.tokens` (e.g. [\"${PERMAFROST_API_TOKEN}\"]), listen on 127.0.0.1, or pass --insecure-no-auth"));
    }
    if !s.tokens.is_empty() && s.tls.is_none() && !listen.ip().is_loopback() {
        tracing::warn!(
            "serve: tokens travel in clear text on {listen}; set `serve.tls` or terminate TLS in front of permafrost"
        );
    }
    Ok(())
}

/// The router with every route, authentication, limits and metrics.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let limit = state.cfg.serve.max_body_bytes;
    routes::routes()
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(openapi::openapi_json),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::observe,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .fallback(routes::not_found)
        .with_state(state)
}

/// Serves until SIGINT/SIGTERM.  Prints the URL it listens on as the first
/// line of stdout (with the port chosen when `:0` was asked for).
pub async fn serve(cfg: Config, opts: ServeOptions) -> Result<()> {
    let listen = opts.listen.unwrap_or(cfg.serve.listen);
    check_exposure(&cfg, listen, opts.insecure_no_auth)?;
    let tls = match &cfg.serve.tls {
        Some(t) => Some(tls::server_config(t)?),
        None => None,
    };
    let catalog = crate::lake::open_catalog(&cfg.catalog).await?;
    let state = Arc::new(AppState {
        slots: Arc::new(Semaphore::new(cfg.serve.max_concurrent)),
        catalog,
        metrics: Arc::new(Metrics::new()),
        cfg,
    });
    let app = router(state);
    let tcp = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        Error::config(format!("serve: cannot listen on {listen}: {e}"))
            .with_hint("choose another `--listen` address or port")
    })?;
    let bound = tcp
        .local_addr()
        .map_err(|e| Error::io("cannot read the bound address", e))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    announce(&format!("{scheme}://{bound}"))?;
    tracing::info!("serving the archive API on {scheme}://{bound}/api/v1/tables");
    let result = match tls {
        Some(config) => {
            axum::serve(tls::TlsListener::new(tcp, config), app)
                .with_graceful_shutdown(stop_signal())
                .await
        }
        None => {
            axum::serve(tcp, app)
                .with_graceful_shutdown(stop_signal())
                .await
        }
    };
    result.map_err(|e| Error::io("the HTTP server stopped", e))?;
    tracing::info!("serve: stopped");
    Ok(())
}

fn announce(url: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{url}")
        .and_then(|_| out.flush())
        .map_err(|e| Error::io("cannot write to stdout", e))
}

/// SIGINT or SIGTERM: stop accepting, finish the requests in flight.
async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("serve: stopping (requests in flight finish)");
}
