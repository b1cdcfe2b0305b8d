//! `permafrost run`: archive every table on a schedule ([`crate::schedule`]), in one long-running
//! process, with Prometheus metrics and health endpoints.
//!
//! # Contract
//! - Each tick runs exactly what `archive` runs (and `maintain` after it when
//!   `maintenance.after_archive` is set), with the same per-table advisory
//!   locks: two `run` processes, or a `run` and a cron `archive`, never
//!   archive one table at once — the one that finds a table locked skips it
//!   and counts a lock-busy skip.
//! - Ticks never overlap: the next one is planned when a run ends, at the
//!   schedule's next time after that (plus a random jitter below `jitter`),
//!   so a run longer than the interval delays the next instead of stacking.
//! - SIGHUP reloads the config file for the next tick; a config that does
//!   not load is logged and the previous one kept.
//! - SIGTERM/SIGINT stop as [`crate::shutdown`] says; `run` then exits 0.
//! - `/healthz` answers 200 while the process serves; `/readyz` 200 once the
//!   last run reached Postgres and the catalog (503 before the first run and
//!   while they fail); `/metrics` is [`crate::metrics::Metrics::encode`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;

use crate::archive::{ArchiveOptions, Outcome, TableReport};
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::schedule::{Schedule, jitter};

/// Settings of `run`, from flags over the config's `schedule:` section.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    pub schedule: Schedule,
    /// Each run starts up to this much later, at random (spreads many
    /// instances' load on a shared catalog or database).
    pub jitter: Duration,
    pub metrics_listen: Option<SocketAddr>,
    pub grace: Duration,
}

/// Runs until stopped (see the module doc).  Returns when a stop was asked
/// for and the run in flight ended.
pub async fn run(opts: RunOptions, mut cfg: Config) -> Result<()> {
    crate::shutdown::install(opts.grace);
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = opts.metrics_listen {
        serve_metrics(addr, metrics.clone(), ready.clone()).await?;
    }
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| Error::io("cannot listen for SIGHUP", e))?;
    loop {
        if crate::shutdown::stop_requested() {
            break;
        }
        let reached = tick(&cfg, &metrics).await;
        ready.store(reached, Ordering::SeqCst);
        if crate::shutdown::stop_requested() {
            break;
        }
        let next = opts.schedule.next_after(Utc::now())? + jitter(opts.jitter);
        tracing::info!("next run at {}", next.to_rfc3339());
        loop {
            let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = tokio::time::sleep(wait) => break,
                _ = crate::shutdown::stopped() => break,
                _ = hup.recv() => cfg = reload(&opts.config, cfg),
            }
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// One scheduled run ([`archive_once`]).  Returns whether Postgres and the
/// catalog were reached.
async fn tick(cfg: &Config, metrics: &Metrics) -> bool {
    let started = std::time::Instant::now();
    let reports = match archive_once(
        cfg,
        &ArchiveOptions::default(),
        &Progress::hidden(),
        Some(metrics),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            crate::cli::output::error(&e);
            return false;
        }
    };
    summarize(&reports, started.elapsed());
    !reports.iter().any(|r| {
        matches!(
            &r.outcome,
            Outcome::Failed { kind, .. }
                if matches!(kind, ErrorKind::Postgres | ErrorKind::Catalog | ErrorKind::Storage)
        )
    })
}

/// How a whole run ended, for the exit code and the heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Done,
    /// Some table was skipped because another instance held it; none failed.
    Busy,
    /// The first failed table's kind.
    Failed(ErrorKind),
}

impl RunOutcome {
    /// Pure: failures first (the first failed table's kind), then busy.
    pub fn of(reports: &[TableReport]) -> Self {
        if let Some(kind) = reports.iter().find_map(|r| match &r.outcome {
            Outcome::Failed { kind, .. } => Some(*kind),
            _ => None,
        }) {
            return Self::Failed(kind);
        }
        if reports
            .iter()
            .any(|r| matches!(r.outcome, Outcome::Skipped { .. }))
        {
            return Self::Busy;
        }
        Self::Done
    }

    /// The documented exit code: 0, 6 (busy) or the failure kind's.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Done => 0,
            Self::Busy => ErrorKind::Busy.exit_code(),
            Self::Failed(kind) => kind.exit_code(),
        }
    }
}

/// One archive run as cron and `run` mode make it: heartbeat start,
/// `archive`, then — unless it failed or was a dry run — `maintain` when
/// `maintenance.after_archive` says so, metrics, heartbeat end.
pub async fn archive_once(
    cfg: &Config,
    opts: &ArchiveOptions,
    progress: &Progress,
    metrics: Option<&Metrics>,
) -> Result<Vec<TableReport>> {
    let beat = cfg
        .notify
        .heartbeat_url
        .as_deref()
        .filter(|_| !opts.dry_run);
    crate::notify::heartbeat(beat, crate::notify::Beat::Start, "").await;
    let reports = match crate::archive::run(cfg, opts, progress).await {
        Ok(r) => r,
        Err(e) => {
            crate::notify::heartbeat(beat, crate::notify::Beat::Fail, e.message()).await;
            return Err(e);
        }
    };
    let outcome = RunOutcome::of(&reports);
    if let Some(metrics) = metrics.filter(|_| !opts.dry_run) {
        metrics.record_archive(&reports, Utc::now().timestamp_millis() as f64 / 1000.0);
        record_tables(cfg, &reports, metrics).await;
    }
    if matches!(outcome, RunOutcome::Done | RunOutcome::Busy)
        && !opts.dry_run
        && cfg.maintenance.after_archive
    {
        crate::maintain::after_archive(cfg, opts.table.as_deref()).await?;
    }
    let rows: u64 = reports
        .iter()
        .flat_map(|r| &r.batches)
        .map(|b| b.rows)
        .sum();
    let summary = format!("{rows} row(s) archived; outcome {outcome:?}");
    let b = match outcome {
        RunOutcome::Done => crate::notify::Beat::Success,
        RunOutcome::Busy => crate::notify::Beat::Log,
        RunOutcome::Failed(_) => crate::notify::Beat::Fail,
    };
    crate::notify::heartbeat(beat, b, &summary).await;
    Ok(reports)
}

/// Pending rows and the archive table's shape, per table, into `metrics`.
async fn record_tables(cfg: &Config, reports: &[TableReport], metrics: &Metrics) {
    let now_s = Utc::now().timestamp_millis() as f64 / 1000.0;
    for r in reports {
        if let Some(p) = &r.pending {
            metrics.set_pending(
                &r.source,
                p.rows,
                p.oldest_us
                    .map_or(0.0, |us| (now_s - us as f64 / 1e6).max(0.0)),
            );
        }
    }
    let tables: Vec<&str> = reports.iter().map(|r| r.source.as_str()).collect();
    match crate::inspect::status::shapes(cfg, &tables).await {
        Ok(shapes) => {
            for (source, shape) in shapes {
                metrics.set_shape(&source, &shape);
            }
        }
        Err(e) => tracing::warn!("cannot read the archive tables' shape for metrics: {e}"),
    }
}

fn summarize(reports: &[TableReport], took: Duration) {
    let rows: u64 = reports
        .iter()
        .flat_map(|r| &r.batches)
        .map(|b| b.rows)
        .sum();
    let batches: usize = reports.iter().map(|r| r.batches.len()).sum();
    for r in reports {
        match &r.outcome {
            Outcome::Skipped { reason } => tracing::warn!("{}: skipped: {reason}", r.source),
            Outcome::Failed { error, .. } => tracing::error!("{}: {error}", r.source),
            Outcome::Done => {}
        }
    }
    tracing::info!(
        "run done in {:.1}s: {batches} batch(es), {rows} row(s) archived",
        took.as_secs_f64()
    );
}

fn reload(path: &std::path::Path, old: Config) -> Config {
    match Config::load(path) {
        Ok(c) => {
            tracing::info!("SIGHUP: configuration reloaded from {}", path.display());
            c
        }
        Err(e) => {
            tracing::error!(
                "SIGHUP: {} does not load ({}); keeping the previous configuration",
                path.display(),
                e.message()
            );
            old
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` in the background.
async fn serve_metrics(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) -> Result<()> {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let r = ready.load(Ordering::SeqCst);
                async move {
                    if r {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: Postgres or the catalog was not reached yet\n",
                        )
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::new(ErrorKind::Config, format!("cannot listen on {addr}: {e}"))
            .with_hint("choose another `--metrics-listen` address or port")
    })?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io("cannot read the bound address", e))?;
    tracing::info!("metrics on http://{bound}/metrics (also /healthz, /readyz)");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the metrics server stopped: {e}");
        }
    });
    Ok(())
}
