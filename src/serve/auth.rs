//! Bearer tokens: `Authorization: Bearer <token>`, compared in constant time
//! against every configured token.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};

/// Paths answered without a token.
const OPEN: [&str; 2] = ["/healthz", "/api/v1/openapi.json"];

/// Whether `presented` is one of `tokens`; every token is compared, in
/// constant time, whatever matches.
pub fn accepted(tokens: &[String], presented: &str) -> bool {
    let mut ok = subtle::Choice::from(0);
    for t in tokens {
        ok |= t.as_bytes().ct_eq(presented.as_bytes());
    }
    ok.into()
}

/// Middleware: 401 unless tokens are off, the path is open, or the request
/// carries an accepted token.
pub async fn require_token(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let tokens = &state.cfg.serve.tokens;
    if tokens.is_empty() || OPEN.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented {
        Some(p) if accepted(tokens, p) => next.run(req).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "the bearer token is not accepted")
            .with_hint("use a token from `serve.tokens`")
            .into_response(),
        None => ApiError::new(StatusCode::UNAUTHORIZED, "a bearer token is required")
            .with_hint("send `Authorization: Bearer <token>`")
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_tokens_are_accepted() {
        let tokens = vec!["a".repeat(20), "b".repeat(24)];
        assert!(accepted(&tokens, &"a".repeat(20)));
        assert!(accepted(&tokens, &"b".repeat(24)));
        assert!(!accepted(&tokens, &"a".repeat(19)));
        assert!(!accepted(&tokens, ""));
        assert!(!accepted(&[], "x"));
    }
}
