//! Logs on stderr: text for people (default) or JSON Lines for log
//! pipelines (`--log-format json`).
//!
//! A JSON line is one object: `time` (RFC 3339, UTC), `level`, `message`,
//! the event's own fields, and the fields of the spans it happened in —
//! `table` for everything about one table, `batch`, `window_start` and
//! `window_end` inside a batch.  Every string is redacted before it is
//! encoded (a secret with a quote in it would otherwise escape the text
//! redaction), and the line goes through [`crate::secret::RedactingStderr`]
//! like text logs do.
//!
//! The context spans use the target [`CONTEXT`] at TRACE level: text logs
//! leave them out (the messages name their table already); JSON logs enable
//! them.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::secret;

/// Target of the spans that give log lines their table and batch.
pub const CONTEXT: &str = "permafrost::ctx";

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the process's logger: `level` for permafrost's own lines.
pub fn init(level: &str, format: LogFormat) {
    let directives = format!(
        "warn,permafrost={level},iceberg=warn,iceberg_catalog_rest=warn,iceberg_catalog_sql=warn"
    );
    let filter = |extra: &str| {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{directives}{extra}")))
    };
    match format {
        LogFormat::Text => {
            let ansi = std::env::var_os("NO_COLOR").is_none()
                && std::io::IsTerminal::is_terminal(&std::io::stderr());
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter(""))
                .with_writer(secret::RedactingStderr)
                .with_target(false)
                .with_ansi(ansi)
                .try_init();
        }
        LogFormat::Json => {
            let _ = tracing_subscriber::registry()
                .with(filter(&format!(",{CONTEXT}=trace")))
                .with(SpanFields)
                .with(
                    tracing_subscriber::fmt::layer()
                        .event_format(JsonLines)
                        .with_writer(secret::RedactingStderr),
                )
                .try_init();
        }
    }
}

/// The fields a span was created (or later recorded) with.
struct Fields(Map<String, Value>);

/// Keeps each span's fields in its extensions for [`JsonLines`].
struct SpanFields;

impl<S> Layer<S> for SpanFields
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Map::new();
        attrs.record(&mut Visitor(&mut fields));
        span.extensions_mut().insert(Fields(fields));
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(Fields(map)) = ext.get_mut::<Fields>() {
            values.record(&mut Visitor(map));
        }
    }
}

/// One JSON object per event (see the module doc).
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut obj = Map::new();
        obj.insert(
            "time".into(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        );
        obj.insert(
            "level".into(),
            Value::String(event.metadata().level().as_str().to_ascii_lowercase()),
        );
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(Fields(map)) = span.extensions().get::<Fields>() {
                    obj.extend(map.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
        event.record(&mut Visitor(&mut obj));
        writeln!(writer, "{}", Value::Object(obj))
    }
}

/// Records fields into a JSON map, strings redacted.
struct Visitor<'a>(&'a mut Map<String, Value>);

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(secret::redact(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `message` and `%display` fields arrive here.
        self.0.insert(
            field.name().into(),
            Value::String(secret::redact(&format!("{value:?}"))),
        );
    }
}
