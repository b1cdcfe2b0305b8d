//! Failure notifications: a JSON POST to `notify.webhook_url`.
//!
//! The payload follows the seed tool's shape (`service`, `event`, `table`,
//! `batch_id`, `window_start`, `window_end`, `error`).  A notification that
//! cannot be delivered is logged and never fails the run.

use std::time::Duration;

use serde::Serialize;

/// One failure event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub service: &'static str,
    pub event: &'static str,
    pub table: String,
    pub batch_id: Option<String>,
    pub window_start: Option<String>,
    pub window_end: Option<String>,
    pub error: String,
}

/// Posts `event` to `url`; logs and swallows any failure.
pub async fn send(url: Option<&str>, event: &Event) {
    let Some(url) = url else { return };
    let client =
        match crate::http::client(None, "notify.webhook_url", Some(Duration::from_secs(10))) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("webhook client: {e}");
                return;
            }
        };
    match client.post(url).json(event).send().await {
        Ok(r) if r.status().is_success() => tracing::debug!("webhook delivered ({})", r.status()),
        Ok(r) => tracing::warn!("webhook answered {}; continuing", r.status()),
        Err(e) => tracing::warn!("webhook could not be delivered: {e}; continuing"),
    }
}

/// A heartbeat ping (healthchecks.io's protocol, which Cronitor and
/// Better Uptime accept too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// `URL/start`: a run started (measures its duration).
    Start,
    /// `URL`: the run succeeded.
    Success,
    /// `URL/fail`: the run failed.
    Fail,
    /// `URL/log`: the run only found its tables busy (another instance is
    /// archiving them and will report): recorded, state unchanged.
    Log,
}

/// Pings `url` (POST, the one-line `summary` as the body); logs and
/// swallows any failure, like [`send`].
pub async fn heartbeat(url: Option<&str>, beat: Beat, summary: &str) {
    let Some(url) = url else { return };
    let base = url.trim_end_matches('/');
    let target = match beat {
        Beat::Start => format!("{base}/start"),
        Beat::Success => base.to_string(),
        Beat::Fail => format!("{base}/fail"),
        Beat::Log => format!("{base}/log"),
    };
    let client =
        match crate::http::client(None, "notify.heartbeat_url", Some(Duration::from_secs(10))) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("heartbeat client: {e}");
                return;
            }
        };
    let body = crate::secret::redact(summary);
    match client.post(&target).body(body).send().await {
        Ok(r) if r.status().is_success() => tracing::debug!("heartbeat {beat:?} delivered"),
        Ok(r) => tracing::warn!("heartbeat {beat:?} answered {}; continuing", r.status()),
        Err(e) => tracing::warn!(
            "heartbeat {beat:?} could not be delivered: {}; continuing",
            crate::secret::redact(&e.to_string())
        ),
    }
}
