//! Errors of the HTTP API: JSON `{error, hint}` with a status code.
//!
//! | status | when |
//! |---|---|
//! | 400 | bad request: malformed JSON, unknown column, invalid filter or SQL |
//! | 401 | no or wrong bearer token |
//! | 404 | unknown route, table or snapshot; the table does not exist yet |
//! | 413 | request body over `serve.max_body_bytes` |
//! | 503 | no query slot free within the timeout; Postgres, the catalog or the storage failed |
//! | 504 | the request did not finish within `serve.request_timeout` |
//! | 500 | a bug; the answer says nothing more, the log has the error |

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::{Error, ErrorKind};
use crate::secret;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub hint: Option<String>,
}

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in one line.
    pub error: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn bad_request(error: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error)
    }

    pub fn not_found(error: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, error)
    }

    pub fn timeout(after: Duration) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the request did not finish within {}s", after.as_secs_f64()),
        )
        .with_hint("narrow the time range or the filter, or raise `serve.request_timeout`")
    }

    pub fn busy(waited: Duration) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("every query slot stayed busy for {}s", waited.as_secs_f64()),
        )
        .with_hint("retry later, or raise `serve.max_concurrent`")
    }

    /// A permafrost error as an answer: the user's mistakes are 400, missing
    /// things 404 (decided by the caller), outages 503, bugs 500 without detail.
    pub fn from_error(e: Error) -> Self {
        let status = match e.kind() {
            ErrorKind::Config | ErrorKind::Schema | ErrorKind::Unsupported => {
                StatusCode::BAD_REQUEST
            }
            ErrorKind::Postgres
            | ErrorKind::Catalog
            | ErrorKind::Storage
            | ErrorKind::Busy
            | ErrorKind::Interrupted => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Verification | ErrorKind::Io | ErrorKind::Internal => {
                tracing::error!("serve: internal error: {e}");
                return Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
                    .with_hint("the server log has the details");
            }
        };
        Self {
            status,
            error: e.message().to_string(),
            hint: e.hint().map(str::to_string),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self::from_error(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: secret::redact(&self.error),
            hint: self.hint.map(|h| secret::redact(&h)),
        };
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_statuses_and_bugs_say_nothing() {
        let e = ApiError::from(Error::config("unknown column `x`").with_hint("columns: a"));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.hint.as_deref(), Some("columns: a"));
        let e = ApiError::from(Error::new(ErrorKind::Catalog, "catalog down"));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        let e = ApiError::from(Error::internal("index out of bounds at src/x.rs"));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.error, "internal error");
    }
}
