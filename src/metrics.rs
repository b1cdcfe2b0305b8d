//! Prometheus metrics of archive runs.
//!
//! One registry per process ([`Metrics`]), filled from what the use cases
//! report (never from inside a batch), exposed three ways:
//! - `run` mode serves it at `/metrics` ([`crate::schedule`]);
//! - a cron run writes it to a node-exporter textfile (`--metrics-textfile`,
//!   written to a temporary file and renamed, so the collector never reads
//!   half of it);
//! - or pushes it to a Pushgateway (`--pushgateway URL`, job `permafrost`).
//!
//! Names follow Prometheus conventions: a `permafrost_` prefix, base units
//! (seconds, bytes), `_total` on counters, a `table` label (the source
//! table, `schema.name`).  The text is Prometheus' 0.0.4 exposition format,
//! which Prometheus, the textfile collector and the Pushgateway all read.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::archive::{Outcome, TableReport};
use crate::error::{Error, ErrorKind, Result};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabel {
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    table: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    table: String,
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

type PerTable = Family<TableLabel, Counter>;
type GaugeF = Gauge<f64, AtomicU64>;

fn stage_histogram() -> Histogram {
    // 10 ms … ~5.5 min.
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

fn api_histogram() -> Histogram {
    // 1 ms … ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    rows_archived: PerTable,
    rows_deleted: PerTable,
    bytes_archived: PerTable,
    rows_restored: PerTable,
    batches: Family<OutcomeLabels, Counter>,
    stage_seconds: Family<StageLabels, Histogram, fn() -> Histogram>,
    runs: Family<OutcomeLabels, Counter>,
    lock_busy: PerTable,
    verification_failures: PerTable,
    last_success: Family<TableLabel, GaugeF>,
    last_run: Family<TableLabel, GaugeF>,
    rows_pending: Family<TableLabel, Gauge>,
    oldest_pending_age: Family<TableLabel, GaugeF>,
    snapshots: Family<TableLabel, Gauge>,
    data_manifests: Family<TableLabel, Gauge>,
    data_files: Family<TableLabel, Gauge>,
    metadata_bytes: Family<TableLabel, Gauge>,
    api_requests: Family<RouteLabels, Counter>,
    api_seconds: Family<RouteLabel, Histogram, fn() -> Histogram>,
    api_rows_matched: PerTable,
    api_rows_returned: PerTable,
    api_files_scanned: PerTable,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn table(t: &str) -> TableLabel {
    TableLabel {
        table: t.to_string(),
    }
}

impl Metrics {
    /// An empty registry with every permafrost metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("permafrost");
        let m = Self {
            registry: Registry::default(),
            rows_archived: Default::default(),
            rows_deleted: Default::default(),
            bytes_archived: Default::default(),
            rows_restored: Default::default(),
            batches: Default::default(),
            stage_seconds: Family::new_with_constructor(stage_histogram),
            runs: Default::default(),
            lock_busy: Default::default(),
            verification_failures: Default::default(),
            last_success: Default::default(),
            last_run: Default::default(),
            rows_pending: Default::default(),
            oldest_pending_age: Default::default(),
            snapshots: Default::default(),
            data_manifests: Default::default(),
            data_files: Default::default(),
            metadata_bytes: Default::default(),
            api_requests: Default::default(),
            api_seconds: Family::new_with_constructor(api_histogram),
            api_rows_matched: Default::default(),
            api_rows_returned: Default::default(),
            api_files_scanned: Default::default(),
        };
        registry.register(
            "rows_archived",
            "Rows written to the archive and verified",
            m.rows_archived.clone(),
        );
        registry.register(
            "rows_deleted",
            "Rows deleted from Postgres after verification (incl. rows an earlier unsettled batch had archived)",
            m.rows_deleted.clone(),
        );
        registry.register(
            "archived_bytes",
            "Bytes of data files committed",
            m.bytes_archived.clone(),
        );
        registry.register(
            "rows_restored",
            "Rows restored into Postgres",
            m.rows_restored.clone(),
        );
        registry.register(
            "batches",
            "Batches by outcome (committed, failed)",
            m.batches.clone(),
        );
        registry.register(
            "batch_stage_seconds",
            "Seconds per batch stage (extract_write, commit, verify, settle)",
            m.stage_seconds.clone(),
        );
        registry.register(
            "table_runs",
            "Archive runs of a table by outcome (done, failed, busy, interrupted)",
            m.runs.clone(),
        );
        registry.register(
            "lock_busy_skips",
            "Runs that skipped a table because another instance held it",
            m.lock_busy.clone(),
        );
        registry.register(
            "verification_failures",
            "Batches that did not read back as written",
            m.verification_failures.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "When the last successful archive run of the table ended (Unix time)",
            m.last_success.clone(),
        );
        registry.register(
            "last_run_timestamp_seconds",
            "When the last archive run of the table ended, whatever its outcome (Unix time)",
            m.last_run.clone(),
        );
        registry.register(
            "rows_pending",
            "Rows older than the cutoff still in Postgres after the run, outside kept windows",
            m.rows_pending.clone(),
        );
        registry.register(
            "oldest_pending_row_age_seconds",
            "Age of the oldest row older than the cutoff still in Postgres (0: none)",
            m.oldest_pending_age.clone(),
        );
        registry.register(
            "snapshots",
            "Snapshots the archive table's metadata lists",
            m.snapshots.clone(),
        );
        registry.register(
            "data_manifests",
            "Data manifests of the archive table's current snapshot",
            m.data_manifests.clone(),
        );
        registry.register(
            "data_files",
            "Live data files of the archive table",
            m.data_files.clone(),
        );
        registry.register(
            "metadata_bytes",
            "Size of the archive table's current metadata.json",
            m.metadata_bytes.clone(),
        );
        registry.register(
            "api_requests",
            "HTTP API requests (`serve`), by route and status",
            m.api_requests.clone(),
        );
        registry.register(
            "api_request_seconds",
            "HTTP API request durations (to the first byte of a streamed answer)",
            m.api_seconds.clone(),
        );
        registry.register(
            "api_rows_matched",
            "Rows HTTP API queries read that matched their filters",
            m.api_rows_matched.clone(),
        );
        registry.register(
            "api_rows_returned",
            "Rows HTTP API queries answered",
            m.api_rows_returned.clone(),
        );
        registry.register(
            "api_files_scanned",
            "Data files HTTP API queries read after pruning",
            m.api_files_scanned.clone(),
        );
        Self { registry, ..m }
    }

    /// Records what an `archive` run reported.
    pub fn record_archive(&self, reports: &[TableReport], now_s: f64) {
        for r in reports {
            let t = table(&r.source);
            // Every series exists from the first run on (0 until it moves).
            for family in [
                &self.rows_archived,
                &self.rows_deleted,
                &self.bytes_archived,
                &self.lock_busy,
                &self.verification_failures,
            ] {
                let _ = family.get_or_create(&t);
            }
            for o in ["committed", "failed"] {
                let _ = self.batches.get_or_create(&outcome(&r.source, o));
            }
            for b in &r.batches {
                self.rows_archived.get_or_create(&t).inc_by(b.rows);
                if b.mode == crate::ledger::BatchMode::Move {
                    self.rows_deleted
                        .get_or_create(&t)
                        .inc_by(b.rows + b.reconciled_rows);
                }
                self.bytes_archived.get_or_create(&t).inc_by(b.bytes);
                self.batches
                    .get_or_create(&outcome(&r.source, "committed"))
                    .inc();
                for (stage, s) in b.stages.iter() {
                    self.stage_seconds
                        .get_or_create(&StageLabels {
                            table: r.source.clone(),
                            stage: stage.to_string(),
                        })
                        .observe(s);
                }
            }
            let label = match &r.outcome {
                Outcome::Done => {
                    self.last_success.get_or_create(&t).set(now_s);
                    "done"
                }
                Outcome::Skipped { .. } => {
                    self.lock_busy.get_or_create(&t).inc();
                    "busy"
                }
                Outcome::Failed { kind, .. } => {
                    if *kind == ErrorKind::Verification {
                        self.verification_failures.get_or_create(&t).inc();
                    }
                    if *kind == ErrorKind::Interrupted {
                        "interrupted"
                    } else {
                        self.batches
                            .get_or_create(&outcome(&r.source, "failed"))
                            .inc();
                        "failed"
                    }
                }
            };
            self.runs.get_or_create(&outcome(&r.source, label)).inc();
            self.last_run.get_or_create(&t).set(now_s);
        }
    }

    /// Records one HTTP API request.
    pub fn record_api(&self, route: &str, status: u16, seconds: f64) {
        self.api_requests
            .get_or_create(&RouteLabels {
                route: route.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.api_seconds
            .get_or_create(&RouteLabel {
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// Records what one HTTP API query read and answered.
    pub fn record_api_rows(&self, source: &str, matched: u64, returned: u64, files: u64) {
        self.api_rows_matched
            .get_or_create(&table(source))
            .inc_by(matched);
        self.api_rows_returned
            .get_or_create(&table(source))
            .inc_by(returned);
        self.api_files_scanned
            .get_or_create(&table(source))
            .inc_by(files);
    }

    /// Records rows restored into Postgres.
    pub fn record_restore(&self, source: &str, rows: u64) {
        self.rows_restored
            .get_or_create(&table(source))
            .inc_by(rows);
    }

    /// Sets what is left in Postgres of a table: rows older than the cutoff
    /// and the age of the oldest.
    pub fn set_pending(&self, source: &str, rows: u64, oldest_age_s: f64) {
        let t = table(source);
        self.rows_pending.get_or_create(&t).set(clamp(rows));
        self.oldest_pending_age.get_or_create(&t).set(oldest_age_s);
    }

    /// Sets the archive table's shape.
    pub fn set_shape(&self, source: &str, shape: &crate::lake::maintenance::QuickShape) {
        let t = table(source);
        self.snapshots
            .get_or_create(&t)
            .set(clamp(shape.snapshots as u64));
        self.data_manifests
            .get_or_create(&t)
            .set(clamp(shape.data_manifests as u64));
        if let Some(n) = shape.data_files {
            self.data_files.get_or_create(&t).set(clamp(n));
        }
        self.metadata_bytes
            .get_or_create(&t)
            .set(clamp(shape.metadata_bytes));
    }

    /// The exposition text (Prometheus text format 0.0.4).
    pub fn encode(&self) -> String {
        let mut open = String::new();
        if prometheus_client::encoding::text::encode(&mut open, &self.registry).is_err() {
            return String::new();
        }
        to_prometheus_text(&open)
    }

    /// Writes the exposition to `path` for node-exporter's textfile
    /// collector: a temporary file beside it, renamed over it.
    pub fn write_textfile(&self, path: &std::path::Path) -> Result<()> {
        let text = self.encode();
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            path.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            std::process::id()
        ));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| {
                Error::io(
                    format!("cannot write the metrics file {}", path.display()),
                    e,
                )
            })
    }

    /// Pushes the exposition to a Pushgateway (`PUT {url}/metrics/job/permafrost`).
    pub async fn push(&self, url: &str) -> Result<()> {
        let client = crate::http::client(
            None,
            "pushgateway",
            Some(std::time::Duration::from_secs(10)),
        )?;
        let target = format!("{}/metrics/job/permafrost", url.trim_end_matches('/'));
        let resp = client
            .put(&target)
            .header("content-type", CONTENT_TYPE)
            .body(self.encode())
            .send()
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("cannot push metrics to {}: {e}", crate::secret::redact(url)),
                )
            })?;
        if !resp.status().is_success() {
            return Err(Error::new(
                ErrorKind::Io,
                format!("the Pushgateway answered {}", resp.status()),
            ));
        }
        Ok(())
    }
}

/// The content type of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn outcome(source: &str, o: &str) -> OutcomeLabels {
    OutcomeLabels {
        table: source.to_string(),
        outcome: o.to_string(),
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// OpenMetrics text (what prometheus-client writes) as Prometheus' text
/// format: counters' `# TYPE`/`# HELP` name their `_total` samples, and no
/// `# EOF` / `# UNIT` lines, which the textfile collector would reject.
fn to_prometheus_text(open: &str) -> String {
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let fixed = ["# TYPE ", "# HELP "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(fixed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_is_prometheus_text() {
        let m = Metrics::new();
        m.set_pending("public.t", 3, 120.0);
        m.rows_archived.get_or_create(&table("public.t")).inc_by(5);
        let text = m.encode();
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            text.contains("# TYPE permafrost_rows_archived_total counter"),
            "{text}"
        );
        assert!(
            text.contains("permafrost_rows_archived_total{table=\"public.t\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("permafrost_rows_pending{table=\"public.t\"} 3"),
            "{text}"
        );
    }
}
