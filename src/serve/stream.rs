//! Output negotiation (`Accept`) and streamed answers.
//!
//! A streamed answer is encoded batch by batch by the same writers as `fetch`
//! and `query` ([`Sink`]) and flows to the client through a channel of a few
//! chunks: a slow client slows the scan down instead of filling memory.  An
//! error or the timeout after the first byte aborts the connection, so a
//! client never mistakes a cut-off answer for a complete one.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use axum::body::Body;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::TryStreamExt;
use futures::stream::BoxStream;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::ApiError;
use crate::error::Result;
use crate::inspect::fetch::{Format, Sink};

/// What the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A JSON page (the default).
    Page,
    /// The whole result, streamed in a format.
    Stream(Format),
}

/// Media types of the streamed formats.
pub const MEDIA_TYPES: [(&str, Format); 4] = [
    ("application/x-ndjson", Format::Jsonl),
    ("text/csv", Format::Csv),
    ("application/vnd.apache.arrow.stream", Format::Arrow),
    ("application/vnd.apache.parquet", Format::Parquet),
];

/// The answer `Accept` asks for: the first media type listed that we serve
/// (`application/json`, `*/*` and no header are a JSON page); 406 otherwise.
pub fn negotiate(headers: &HeaderMap) -> std::result::Result<Answer, ApiError> {
    let Some(accept) = headers.get(ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(Answer::Page);
    };
    for item in accept.split(',') {
        let media = item.split(';').next().unwrap_or_default().trim();
        if matches!(media, "application/json" | "*/*" | "application/*" | "") {
            return Ok(Answer::Page);
        }
        if let Some((_, f)) = MEDIA_TYPES.iter().find(|(m, _)| *m == media) {
            return Ok(Answer::Stream(*f));
        }
    }
    Err(ApiError::new(
        StatusCode::NOT_ACCEPTABLE,
        format!("cannot answer in `{accept}`"),
    )
    .with_hint(format!(
        "Accept: application/json, {}",
        MEDIA_TYPES.map(|(m, _)| m).join(", ")
    )))
}

fn media_type(f: Format) -> &'static str {
    MEDIA_TYPES
        .iter()
        .find(|(_, g)| *g == f)
        .map(|(m, _)| *m)
        .unwrap_or("application/octet-stream")
}

/// The bytes a [`Sink`] wrote since the last take.
#[derive(Clone, Default)]
struct Chunks(Arc<Mutex<Vec<u8>>>);

impl Chunks {
    fn take(&self) -> Vec<u8> {
        match self.0.lock() {
            Ok(mut b) => std::mem::take(&mut *b),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        }
    }
}

impl Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock() {
            Ok(mut b) => b.extend_from_slice(buf),
            Err(p) => p.into_inner().extend_from_slice(buf),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a stream did, for metrics and the log.
pub type OnDone = Box<dyn FnOnce(u64) + Send>;

/// Streams `batches` (at most `cap` rows) as `format`.  The permit is held
/// until the last byte; past `deadline` the connection is aborted.
pub fn respond(
    format: Format,
    mut batches: BoxStream<'static, Result<RecordBatch>>,
    schema: SchemaRef,
    cap: Option<usize>,
    permit: OwnedSemaphorePermit,
    deadline: Instant,
    on_done: OnDone,
) -> Response {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::spawn(async move {
        let _permit = permit;
        let chunks = Chunks::default();
        let counted = Arc::new(AtomicU64::new(0));
        let produce = {
            let (chunks, counted, tx) = (chunks.clone(), counted.clone(), tx.clone());
            async move {
                let mut sink = Sink::new(format, chunks.clone());
                let mut rows = 0usize;
                while let Some(b) = batches.try_next().await? {
                    let room = cap.map_or(b.num_rows(), |c| c.saturating_sub(rows));
                    let b = if b.num_rows() > room {
                        b.slice(0, room)
                    } else {
                        b
                    };
                    rows += b.num_rows();
                    counted.store(rows as u64, Ordering::Relaxed);
                    sink.write(&b)?;
                    let bytes = chunks.take();
                    if !bytes.is_empty() && tx.send(Ok(Bytes::from(bytes))).await.is_err() {
                        return Ok(false); // the client went away
                    }
                    if cap.is_some_and(|c| rows >= c) {
                        break;
                    }
                }
                sink.finish(schema)?;
                Ok::<bool, crate::error::Error>(true)
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let outcome = tokio::time::timeout(left, produce).await;
        let rows = counted.load(Ordering::Relaxed);
        let failure = match outcome {
            Ok(Ok(true)) => {
                let tail = chunks.take();
                if !tail.is_empty() {
                    let _ = tx.send(Ok(Bytes::from(tail))).await;
                }
                on_done(rows);
                return;
            }
            Ok(Ok(false)) => return,
            Ok(Err(e)) => {
                tracing::warn!("serve: a streamed answer failed after {rows} rows: {e}");
                e.message().to_string()
            }
            Err(_) => {
                tracing::warn!(
                    "serve: a streamed answer hit the request timeout after {rows} rows"
                );
                "the request timeout".to_string()
            }
        };
        let _ = tx.send(Err(std::io::Error::other(failure))).await;
    });
    let body =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    (
        [(CONTENT_TYPE, media_type(format))],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> std::result::Result<Answer, ApiError> {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, v.parse().unwrap());
        negotiate(&h)
    }

    #[test]
    fn accept_headers_choose_the_answer() {
        assert_eq!(negotiate(&HeaderMap::new()).unwrap(), Answer::Page);
        assert_eq!(accept("*/*").unwrap(), Answer::Page);
        assert_eq!(
            accept("application/x-ndjson").unwrap(),
            Answer::Stream(Format::Jsonl)
        );
        assert_eq!(
            accept("text/html, text/csv;q=0.9").unwrap(),
            Answer::Stream(Format::Csv)
        );
        assert_eq!(
            accept("application/vnd.apache.arrow.stream").unwrap(),
            Answer::Stream(Format::Arrow)
        );
        assert_eq!(
            accept("text/html").unwrap_err().status,
            StatusCode::NOT_ACCEPTABLE
        );
    }
}
