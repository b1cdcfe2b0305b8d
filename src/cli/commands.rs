//! One function per command: resolve settings, call the use case, render.

use std::process::ExitCode;

use crate::archive::{self, ArchiveOptions, Outcome};
use crate::cli::args::{
    ArchiveArgs, CheckArgs, Cli, Command, DemoArgs, DiffArgs, FetchArgs, ListArgs, MaintainArgs,
    MetricsOutArgs, OperateArgs, QueryArgs, ReplayArgs, RestoreArgs, RunArgs, ServeArgs, ShowArgs,
    SnapshotArg, SnapshotsArgs, StateArg, StatusArgs,
};
use crate::cli::output::{self, num};
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::progress::Progress;
use crate::{check, demo, inspect, lake, source};

/// Sets up logging to stderr (redacted); `RUST_LOG` overrides `--log-level`.
pub fn init_logging(cli: &Cli) {
    let level = if cli.quiet {
        "warn"
    } else {
        cli.log_level.as_str()
    };
    crate::logging::init(level, cli.log_format);
}

/// Runs the command; maps errors to `error: …` / `hint: …` and an exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let progress = Progress::new(!cli.quiet);
    let result = match cli.command {
        Command::Demo(a) => demo_cmd(a, &progress).await,
        Command::Check(a) => check_cmd(a).await,
        Command::Archive(a) => archive_cmd(a, &progress).await,
        Command::Replay(a) => replay_cmd(a, &progress).await,
        Command::Status(a) => status_cmd(a).await,
        Command::Snapshots(a) => snapshots_cmd(a).await,
        Command::List(a) => list_cmd(a).await,
        Command::Show(a) => show_cmd(a).await,
        Command::Diff(a) => diff_cmd(a).await,
        Command::Fetch(a) => fetch_cmd(a, &progress).await,
        Command::Query(a) => query_cmd(a, &progress).await,
        Command::Serve(a) => serve_cmd(a).await,
        Command::Restore(a) => restore_cmd(a, &progress).await,
        Command::Maintain(a) => maintain_cmd(a).await,
        Command::Run(a) => run_cmd(a).await,
        Command::Completions(a) => {
            clap_complete::generate(
                a.shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "permafrost",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => man_cmd(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            output::error(&e);
            ExitCode::from(e.kind().exit_code())
        }
    }
}

fn load(path: &std::path::Path) -> Result<Config> {
    Config::load(path)
}

fn parse_now(now: Option<&str>) -> Result<Option<i64>> {
    now.map(|s| inspect::fetch::instant("now", s)).transpose()
}

async fn check_cmd(a: CheckArgs) -> Result<ExitCode> {
    let cfg = load(&a.config.config)?;
    let report = check::check(&cfg, a.table.as_deref()).await?;
    if a.json {
        output::json(&report)?;
    } else {
        let mark = |ok: bool| if ok { "ok" } else { "FAILED" };
        output::line(&format!(
            "config      ok      {}",
            a.config.config.display()
        ));
        output::line(&format!(
            "postgres    {:<6}  {}{}",
            mark(report.postgres.ok),
            report.postgres.target,
            match report.postgres.tls.as_deref() {
                Some(t) if t != "no TLS" => format!("  ({t})"),
                _ => String::new(),
            }
        ));
        if let Some(e) = &report.postgres.error {
            output::line(&format!("  error: {e}"));
        }
        if let Some(h) = &report.postgres.hint {
            output::line(&format!("  hint: {h}"));
        }
        output::line(&format!(
            "catalog     {:<6}  {}",
            mark(report.catalog.ok),
            report.catalog.target
        ));
        if let Some(e) = &report.catalog.error {
            output::line(&format!("  error: {e}"));
        }
        if let Some(h) = &report.catalog.hint {
            output::line(&format!("  hint: {h}"));
        }
        for e in &report.endpoints {
            output::line(&format!(
                "  {:<9} {:<6}  {}  ({})",
                e.role,
                mark(e.ok),
                e.address,
                e.tls
            ));
            if let Some(h) = &e.hint {
                output::line(&format!("    hint: {h}"));
            }
        }
        for t in &report.tables {
            output::line("");
            output::line(&format!(
                "table {} -> {}  {}  ({}({}){})",
                t.source,
                t.iceberg_table,
                mark(t.ok),
                t.partition_by,
                t.time_column,
                if t.iceberg_state.is_empty() {
                    String::new()
                } else {
                    format!(", Iceberg table {}", t.iceberg_state)
                }
            ));
            if !t.columns.is_empty() {
                let rows: Vec<Vec<String>> = t
                    .columns
                    .iter()
                    .map(|c| {
                        vec![
                            c.name.clone(),
                            c.postgres_type.clone(),
                            if c.not_null {
                                "not null".into()
                            } else {
                                String::new()
                            },
                            if c.excluded {
                                "(excluded)".to_string()
                            } else {
                                match (&c.iceberg_type, c.encoding.as_deref()) {
                                    (Some(t), Some("binary")) => t.clone(),
                                    (Some(t), Some(e)) => format!("{t} (via ::{e})"),
                                    (Some(t), None) => t.clone(),
                                    (None, _) => format!(
                                        "UNSUPPORTED: {}",
                                        c.error.clone().unwrap_or_default()
                                    ),
                                }
                            },
                        ]
                    })
                    .collect();
                output::table(&["COLUMN", "POSTGRES", "NULL", "ICEBERG"], &rows);
            }
            for e in &t.errors {
                output::line(&format!("  error: {e}"));
            }
            for h in &t.hints {
                output::line(&format!("  hint: {h}"));
            }
            for w in &t.warnings {
                output::line(&format!("  warning: {w}"));
            }
        }
    }
    if report.ok {
        Ok(ExitCode::SUCCESS)
    } else {
        let first = report
            .postgres
            .error
            .clone()
            .or(report.catalog.error.clone())
            .or_else(|| report.tables.iter().find_map(|t| t.errors.first().cloned()))
            .unwrap_or_else(|| "check failed".into());
        let hint = report
            .postgres
            .hint
            .clone()
            .or(report.catalog.hint.clone())
            .or_else(|| report.tables.iter().find_map(|t| t.hints.first().cloned()));
        let kind = if !report.postgres.ok {
            ErrorKind::Postgres
        } else if !report.catalog.ok {
            ErrorKind::Catalog
        } else {
            ErrorKind::Schema
        };
        let mut e = Error::new(kind, first);
        if let Some(h) = hint {
            e = e.with_hint(h);
        }
        output::error(&e);
        Ok(ExitCode::from(kind.exit_code()))
    }
}

async fn archive_cmd(a: ArchiveArgs, progress: &Progress) -> Result<ExitCode> {
    let cfg = load(&a.config.config)?;
    let opts = ArchiveOptions {
        table: a.table.clone(),
        dry_run: a.dry_run,
        no_delete: a.no_delete,
        force: a.force,
        now: parse_now(a.now.as_deref())?,
        range: None,
    };
    run_archive(&cfg, &opts, a.json, progress, Some(&a.operate)).await
}

async fn replay_cmd(a: ReplayArgs, progress: &Progress) -> Result<ExitCode> {
    let cfg = load(&a.config.config)?;
    let instant = inspect::fetch::instant;
    let (from, to) = (instant("from", &a.from)?, instant("to", &a.to)?);
    if from >= to {
        return Err(Error::config(format!(
            "--from {} is not before --to {}",
            a.from, a.to
        )));
    }
    let opts = ArchiveOptions {
        table: Some(a.table.clone()),
        dry_run: a.dry_run,
        no_delete: a.no_delete,
        force: a.force,
        now: None,
        range: Some(crate::plan::window::Window {
            start: from,
            end: to,
        }),
    };
    run_archive(&cfg, &opts, a.json, progress, None).await
}

async fn run_archive(
    cfg: &Config,
    opts: &ArchiveOptions,
    json: bool,
    progress: &Progress,
    operate: Option<&OperateArgs>,
) -> Result<ExitCode> {
    let progress = if json {
        Progress::hidden()
    } else {
        progress.clone()
    };
    let grace = match operate.and_then(|o| o.grace.as_deref()) {
        Some(g) => parse_flag_duration("--grace", g)?,
        None => cfg.schedule.grace_period,
    };
    crate::shutdown::install(grace);
    // Metrics only when they go somewhere: gathering them reads the catalog.
    let metrics = crate::metrics::Metrics::new();
    let wanted = operate
        .is_some_and(|o| o.metrics.metrics_textfile.is_some() || o.metrics.pushgateway.is_some());
    let reports =
        crate::run::archive_once(cfg, opts, &progress, wanted.then_some(&metrics)).await?;
    if json {
        output::json(&reports)?;
    } else {
        print_archive(&reports, opts.dry_run);
    }
    // One failure, one message: each failed table's error is printed once,
    // here (the summary and the log leave it out).
    for r in &reports {
        if let Outcome::Failed { kind, error, hint } = &r.outcome {
            let mut e = Error::new(*kind, format!("{}: {error}", r.source));
            if let Some(h) = hint {
                e = e.with_hint(h.clone());
            }
            output::error(&e);
        }
    }
    if let Some(o) = operate.filter(|_| !opts.dry_run) {
        emit_metrics(&metrics, &o.metrics).await?;
    }
    // The exit code: the first failed table's kind's, else 6 when a table
    // was busy (see README "Exit codes").
    Ok(ExitCode::from(
        crate::run::RunOutcome::of(&reports).exit_code(),
    ))
}

/// Writes and pushes a one-shot command's metrics where the flags say.
async fn emit_metrics(metrics: &crate::metrics::Metrics, out: &MetricsOutArgs) -> Result<()> {
    if let Some(path) = &out.metrics_textfile {
        metrics.write_textfile(path)?;
    }
    if let Some(url) = &out.pushgateway {
        // Monitoring must not fail the command: logged, not returned.
        if let Err(e) = metrics.push(url).await {
            tracing::warn!("{}", e.message());
        }
    }
    Ok(())
}

fn parse_flag_duration(flag: &str, v: &str) -> Result<std::time::Duration> {
    crate::config::parse_duration(v).map_err(|m| Error::config(format!("{flag}: {m}")))
}

fn print_archive(reports: &[archive::TableReport], dry_run: bool) {
    for r in reports {
        match &r.outcome {
            Outcome::Skipped { reason } => {
                output::line(&format!("{}: skipped: {reason}", r.source))
            }
            // Printed once, as the command's error.
            Outcome::Failed { .. } => continue,
            Outcome::Done => {}
        }
        if dry_run {
            output::line(&format!(
                "{} -> {}: {} batch(es) would be archived (cutoff {}); nothing was written or deleted",
                r.source,
                r.iceberg_table,
                r.planned.len(),
                r.cutoff.clone().unwrap_or_default()
            ));
            if !r.planned.is_empty() {
                let rows: Vec<Vec<String>> = r
                    .planned
                    .iter()
                    .map(|p| {
                        vec![
                            p.window_start.clone(),
                            p.window_end.clone(),
                            p.windows.to_string(),
                            num(p.rows),
                            p.batch_id.clone(),
                            if p.reconcile.is_empty() {
                                String::new()
                            } else {
                                format!("settles {}", p.reconcile.join(","))
                            },
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "WINDOW START",
                        "WINDOW END",
                        "WINDOWS",
                        "ROWS",
                        "BATCH",
                        "NOTE",
                    ],
                    &rows,
                );
                let total: u64 = r.planned.iter().map(|p| p.rows).sum();
                output::line(&format!("{} row(s) in total", num(total)));
            }
        } else if matches!(r.outcome, Outcome::Done) || !r.batches.is_empty() {
            let rows: u64 = r.batches.iter().map(|b| b.rows).sum();
            let settled: u64 = r.batches.iter().map(|b| b.reconciled_rows).sum();
            output::line(&format!(
                "{} -> {}: {} batch(es), {} row(s) archived{}",
                r.source,
                r.iceberg_table,
                r.batches.len(),
                num(rows),
                if settled > 0 {
                    format!(", {} already-archived row(s) settled", num(settled))
                } else {
                    String::new()
                }
            ));
        }
        for b in &r.blocked {
            output::line(&format!(
                "  blocked: window {} .. {} by failed batch {} ({}) — review, then `archive --force`",
                b.window_start, b.window_end, b.batch_id, b.reason
            ));
        }
    }
}

/// `run`: flags over the config's `schedule:` section.
async fn run_cmd(a: RunArgs) -> Result<ExitCode> {
    let cfg = load(&a.config.config)?;
    let s = &cfg.schedule;
    let (every, cron) = match (&a.every, &a.cron) {
        (None, None) => (s.every.clone(), s.cron.clone()),
        (e, c) => (e.clone(), c.clone()),
    };
    let schedule = crate::schedule::Schedule::parse(every.as_deref(), cron.as_deref())?;
    let metrics_listen = match &a.metrics_listen {
        Some(l) => Some(l.parse().map_err(|e| {
            Error::config(format!("--metrics-listen: `{l}` is not an address: {e}"))
                .with_hint("host:port, e.g. 127.0.0.1:9187")
        })?),
        None => s.metrics_listen,
    };
    let opts = crate::run::RunOptions {
        config: a.config.config.clone(),
        schedule,
        jitter: match &a.jitter {
            Some(j) => parse_flag_duration("--jitter", j)?,
            None => s.jitter,
        },
        metrics_listen,
        grace: match &a.grace {
            Some(g) => parse_flag_duration("--grace", g)?,
            None => s.grace_period,
        },
    };
    crate::run::run(opts, cfg).await?;
    Ok(ExitCode::SUCCESS)
}

fn man_cmd() -> Result<ExitCode> {
    let page = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
    page.render(&mut std::io::stdout())
        .map_err(|e| Error::io("cannot write the man page", e))?;
    Ok(ExitCode::SUCCESS)
}

async fn maintain_cmd(a: MaintainArgs) -> Result<ExitCode> {
    let cfg = load(&a.config.config)?;
    let m = &cfg.maintenance;
    let older_than = match &a.older_than {
        Some(s) => crate::config::parse_duration(s)
            .map_err(|msg| Error::config(format!("--older-than: {msg}")))?,
        None => m.older_than,
    };
    if a.retain_last == Some(0) || a.max_manifests == Some(0) {
        return Err(Error::config(
            "--retain-last and --max-manifests must be at least 1",
        ));
    }
    let opts = crate::maintain::MaintainOptions {
        dry_run: a.dry_run,
        older_than,
        retain_last: a.retain_last.unwrap_or(m.retain_last),
        max_manifests: a.max_manifests.unwrap_or(m.max_manifests),
        compact: m.compact && !a.no_compact,
        orphan_older_than: match &a.orphan_older_than {
            Some(s) => crate::config::parse_duration(s)
                .map_err(|msg| Error::config(format!("--orphan-older-than: {msg}")))?,
            None => m.orphan_older_than,
        },
        now_ms: parse_now(a.now.as_deref())?
            .map_or_else(|| chrono::Utc::now().timestamp_millis(), |us| us / 1000),
    };
    let reports = crate::maintain::run(&cfg, a.table.as_deref(), &opts).await?;
    if a.json {
        output::json(&reports)?;
    } else {
        let rows: Vec<Vec<String>> = reports
            .iter()
            .map(|r| {
                vec![
                    r.source.clone(),
                    format!(
                        "{} -> {}",
                        r.snapshots_before,
                        r.snapshots_before - r.snapshots_expired
                    ),
                    format!("{} -> {}", r.data_manifests_before, r.data_manifests_after),
                    format!("{} -> {}", r.metadata_bytes_before, r.metadata_bytes_after),
                    format!("{} -> {}", r.compacted.files_in, r.compacted.files_out),
                    format!("{} ({} bytes)", r.orphan_files, r.orphan_bytes),
                ]
            })
            .collect();
        output::table(
            &[
                "TABLE",
                "SNAPSHOTS",
                "DATA MANIFESTS",
                "METADATA BYTES",
                "SMALL FILES",
                "ORPHAN FILES",
            ],
            &rows,
        );
        if a.dry_run {
            output::line("(dry run: nothing changed)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn status_cmd(a: StatusArgs) -> Result<ExitCode> {
    let cfg = load(&a.config.config)?;
    let st = inspect::status(&cfg, a.table.as_deref(), parse_now(a.now.as_deref())?).await?;
    if a.json {
        output::json(&st)?;
    } else {
        print_status(&st);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(st: &[inspect::TableStatus]) {
    let rows: Vec<Vec<String>> = st
        .iter()
        .map(|s| {
            vec![
                s.source.clone(),
                s.iceberg_table.clone(),
                s.windows_archived.to_string(),
                s.windows_pending.to_string(),
                s.windows_kept.to_string(),
                s.windows_failed.to_string(),
                num(s.rows_archived),
                num(s.rows_pending),
                s.latest_window.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    output::table(
        &[
            "TABLE",
            "ICEBERG",
            "ARCHIVED",
            "PENDING",
            "KEPT",
            "FAILED",
            "ROWS ARCHIVED",
            "ROWS PENDING",
            "LATEST WINDOW",
        ],
        &rows,
    );
    for s in st {
        for f in &s.failed_batches {
            output::line(&format!(
                "{}: batch {} ({} .. {}) FAILED: {}",
                s.source, f.batch_id, f.window_start, f.window_end, f.reason
            ));
        }
        if let Some(sh) = &s.shape {
            output::line(&format!(
                "{}: {} snapshot(s) since {}, {} data manifest(s), {} data file(s) ({} small), metadata {} (ledger {})",
                s.source,
                sh.snapshots,
                sh.oldest_snapshot.as_deref().unwrap_or("-"),
                sh.data_manifests,
                sh.data_files,
                sh.small_files,
                output::bytes(sh.metadata_bytes),
                output::bytes(sh.ledger_bytes as u64)
            ));
        }
        if let Some(m) = s
            .maintain_would
            .as_ref()
            .filter(|m| m.expire_snapshots > 0 || m.merge_manifests)
        {
            output::line(&format!(
                "{}: `maintain` would expire {} snapshot(s){}",
                s.source,
                m.expire_snapshots,
                if m.merge_manifests {
                    " and merge the data manifests"
                } else {
                    ""
                }
            ));
        }
        if !s.unsettled_batches.is_empty() {
            output::line(&format!(
                "{}: {} batch(es) committed but not yet settled in Postgres (the next archive run settles them): {}",
                s.source,
                s.unsettled_batches.len(),
                s.unsettled_batches.join(", ")
            ));
        }
        if s.rows_null_time > 0 {
            output::line(&format!(
                "{}: {} row(s) have a NULL time and are never archived",
                s.source,
                num(s.rows_null_time)
            ));
        }
        if s.rows_infinite_time > 0 {
            output::line(&format!(
                "{}: {} row(s) have an infinite time (±infinity) and are never archived",
                s.source,
                num(s.rows_infinite_time)
            ));
        }
    }
}

async fn demo_cmd(a: DemoArgs, progress: &Progress) -> Result<ExitCode> {
    let dir = demo::absolute(&a.dir)?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let throwaway = match &a.dsn {
        Some(_) => None,
        None => {
            tracing::info!("starting a throwaway PostgreSQL cluster");
            Some(demo::ThrowawayPostgres::start()?)
        }
    };
    let dsn = a
        .dsn
        .clone()
        .or_else(|| throwaway.as_ref().map(|p| p.dsn()))
        .unwrap_or_default();
    let cfg_path = dir.join("permafrost.yaml");
    std::fs::write(&cfg_path, demo::demo_config(&dsn))
        .map_err(|e| Error::io(format!("cannot write {}", cfg_path.display()), e))?;
    let cfg = Config::load(&cfg_path)?;
    let client = source::connect(&cfg.database).await?;
    tracing::info!("loading {} sample sensor readings", num(a.rows));
    demo::load_sample(&client, a.rows).await?;

    let reports = archive::run(&cfg, &ArchiveOptions::default(), progress).await?;
    print_archive(&reports, false);
    if let Some(r) = reports
        .iter()
        .find(|r| matches!(r.outcome, Outcome::Failed { .. }))
    {
        return Err(Error::new(
            ErrorKind::Internal,
            format!("demo archive of {} failed", r.source),
        ));
    }
    output::line("");
    print_status(&inspect::status(&cfg, None, None).await?);

    let catalog = lake::open_catalog(&cfg.catalog).await?;
    let t = &cfg.tables[0];
    let table = catalog
        .load_table(&lake::table::ident(t)?)
        .await
        .map_err(|e| Error::iceberg("cannot load the demo table", e))?;
    output::line("");
    output::line(&format!("snapshots of {}:", t.iceberg_name()));
    let mut rows = Vec::new();
    for s in lake::commit::ancestry(&table).iter().rev().take(10) {
        let p = &s.summary().additional_properties;
        let g = |k: &str| p.get(k).cloned().unwrap_or_default();
        rows.push(vec![
            s.snapshot_id().to_string(),
            g(crate::plan::keys::BATCH_ID),
            g(crate::plan::keys::WINDOW_START),
            g(crate::plan::keys::WINDOW_END),
            g(crate::plan::keys::ROWS),
        ]);
    }
    output::table(
        &["SNAPSHOT", "BATCH", "WINDOW START", "WINDOW END", "ROWS"],
        &rows,
    );

    // SQLAlchemy (PyIceberg) spells an absolute SQLite path with four slashes.
    let uri = &cfg.catalog.properties["uri"];
    let path = uri
        .trim_start_matches("sqlite://")
        .trim_end_matches("?mode=rwc");
    let sqlite = format!("sqlite:///{path}");
    let warehouse = &cfg.catalog.properties["warehouse"];
    output::line("");
    output::line("Read the archive with PyIceberg (pip install 'pyiceberg[pyarrow,sql-sqlite]'):");
    output::line(&format!(
        "  python3 -c \"from pyiceberg.catalog.sql import SqlCatalog; c = SqlCatalog('{}', uri='{}', warehouse='{}'); t = c.load_table('{}'); print(t.scan().to_arrow().num_rows, 'rows'); print(t.current_snapshot().summary.additional_properties)\"",
        cfg.catalog.name,
        sqlite,
        warehouse,
        t.iceberg_name()
    ));
    output::line("Read it with DuckDB (duckdb + its iceberg extension):");
    output::line(&format!(
        "  duckdb -c \"INSTALL iceberg; LOAD iceberg; SELECT date_trunc('day', recorded_at) AS day, count(*) FROM iceberg_scan('{}') GROUP BY 1 ORDER BY 1\"",
        table.metadata_location().unwrap_or_default()
    ));
    output::line(&format!(
        "Config: {}   (try: permafrost status -c {})",
        cfg_path.display(),
        cfg_path.display()
    ));
    drop(client);
    drop(throwaway);
    Ok(ExitCode::SUCCESS)
}

fn snapshot_choice(a: &SnapshotArg) -> Result<inspect::SnapshotChoice> {
    Ok(match (a.snapshot, &a.as_of) {
        (Some(id), _) => inspect::SnapshotChoice::Id(id),
        (None, Some(t)) => inspect::SnapshotChoice::AsOf(inspect::fetch::instant("as-of", t)?),
        (None, None) => inspect::SnapshotChoice::Current,
    })
}

fn opt(v: &Option<impl ToString>) -> String {
    v.as_ref()
        .map(|x| x.to_string())
        .unwrap_or_else(|| "-".into())
}

async fn snapshots_cmd(a: SnapshotsArgs) -> Result<ExitCode> {
    let cfg = load(&a.config.config)?;
    let (_, table) = inspect::open_table(&cfg, &a.table).await?;
    let snaps = inspect::snapshots::snapshots(&table);
    if a.json {
        output::json(&snaps)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = snaps
        .iter()
        .map(|s| {
            vec![
                s.snapshot_id.to_string(),
                s.committed_at.clone(),
                s.operation.clone(),
                opt(&s.batch_id),
                opt(&s.window_start),
                opt(&s.window_end),
                s.rows.map(num).unwrap_or_else(|| "-".into()),
                opt(&s.files),
                s.bytes.map(output::bytes).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    output::table(
        &[
            "SNAPSHOT",
            "COMMITTED AT",
            "OPERATION",
            "BATCH",
            "WINDOW START",
            "WINDOW END",
            "ROWS",
            "FILES",
            "SIZE",
        ],
        &rows,
    );
    output::line(&format!("{} snapshot(s)", snaps.len()));
    Ok(ExitCode::SUCCESS)
}

async fn list_cmd(a: ListArgs) -> Result<ExitCode> {
    let cfg = load(&a.config.config)?;
    let day = |flag: &str, v: &Option<String>| {
        v.as_deref()
            .map(|s| inspect::fetch::instant(flag, s))
            .transpose()
    };
    let filter = inspect::list::ListFilter {
        table: a.table.clone(),
        from: day("from", &a.from)?,
        to: day("to", &a.to)?,
        state: a.status.map(|s| match s {
            StateArg::Archived => crate::plan::WindowState::Archived,
            StateArg::Kept => crate::plan::WindowState::Kept,
            StateArg::Pending => crate::plan::WindowState::Pending,
            StateArg::Failed => crate::plan::WindowState::Failed,
        }),
    };
    let lines = inspect::list::list(&cfg, &filter, parse_now(a.now.as_deref())?).await?;
    if a.json {
        output::json(&lines)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|l| {
            vec![
                l.table.clone(),
                l.partition.clone(),
                serde_json::to_value(l.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_uppercase))
                    .unwrap_or_default(),
                num(l.rows),
                l.files.to_string(),
                output::bytes(l.bytes),
                num(l.rows_in_postgres),
                opt(&l.snapshot_id),
                opt(&l.archived_at),
            ]
        })
        .collect();
    output::table(
        &[
            "TABLE",
            "PARTITION",
            "STATE",
            "ROWS",
            "FILES",
            "SIZE",
            "IN POSTGRES",
            "SNAPSHOT",
            "ARCHIVED AT",
        ],
        &rows,
    );
    output::line(&format!(
        "{} window(s)  {} row(s) archived  {} file(s)  {}  {} row(s) in Postgres",
        lines.len(),
        num(lines.iter().map(|l| l.rows).sum()),
        lines.iter().map(|l| l.files).sum::<u64>(),
        output::bytes(lines.iter().map(|l| l.bytes).sum()),
        num(lines.iter().map(|l| l.rows_in_postgres).sum()),
    ));
    Ok(ExitCode::SUCCESS)
}

async fn show_cmd(a: ShowArgs) -> Result<ExitCode> {
    let cfg = load(&a.config.config)?;
    let (_, table) = inspect::open_table(&cfg, &a.table).await?;
    let info = inspect::show::show(&table, snapshot_choice(&a.at)?)?;
    if a.json {
        output::json(&info)?;
        return Ok(ExitCode::SUCCESS);
    }
    output::line(&format!("table        {}", info.table));
    output::line(&format!("location     {}", info.location));
    output::line(&format!("format       v{}", info.format_version));
    output::line(&format!(
        "snapshot     {}   schema {}",
        opt(&info.snapshot_id),
        info.schema_id
    ));
    output::line(&format!("partitioned  {}", info.partition_spec.join(", ")));
    output::line(&format!("sorted       {}", info.sort_order.join(", ")));
    output::line("");
    let rows: Vec<Vec<String>> = info
        .columns
        .iter()
        .map(|c| {
            vec![
                c.id.to_string(),
                c.name.clone(),
                c.iceberg_type.clone(),
                if c.required {
                    "required".into()
                } else {
                    String::new()
                },
                opt(&c.postgres_type),
            ]
        })
        .collect();
    output::table(&["ID", "COLUMN", "ICEBERG", "REQUIRED", "POSTGRES"], &rows);
    output::line("");
    output::line("schema history:");
    for s in &info.schema_history {
        output::line(&format!(
            "  schema {}: {} snapshot(s) {} .. {}  ({})",
            s.schema_id,
            s.snapshots,
            s.first_snapshot,
            s.last_snapshot,
            s.columns.join(", ")
        ));
    }
    output::line("");
    output::line("properties:");
    for (k, v) in &info.properties {
        let v = if k == crate::plan::keys::LEDGER {
            match crate::plan::ledger::parse(v) {
                Ok(b) => format!("{} batch(es) (the durable ledger)", b.len()),
                Err(e) => e,
            }
        } else if v.len() > 100 {
            format!(
                "{}…",
                &v[..v.char_indices().nth(100).map(|(i, _)| i).unwrap_or(v.len())]
            )
        } else {
            v.clone()
        };
        output::line(&format!("  {k} = {v}"));
    }
    Ok(ExitCode::SUCCESS)
}

async fn diff_cmd(a: DiffArgs) -> Result<ExitCode> {
    let cfg = load(&a.config.config)?;
    let (_, table) = inspect::open_table(&cfg, &a.table).await?;
    let d = inspect::snapshots::diff(&table, a.from_snapshot, a.to_snapshot).await?;
    if a.json {
        output::json(&d)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = d
        .snapshots
        .iter()
        .map(|s| {
            vec![
                s.snapshot_id.to_string(),
                s.committed_at.clone(),
                opt(&s.batch_id),
                opt(&s.window_start),
                opt(&s.window_end),
                s.rows.map(num).unwrap_or_else(|| "-".into()),
                opt(&s.files),
            ]
        })
        .collect();
    output::table(
        &[
            "SNAPSHOT",
            "COMMITTED AT",
            "BATCH",
            "WINDOW START",
            "WINDOW END",
            "ROWS",
            "FILES",
        ],
        &rows,
    );
    output::line(&format!(
        "{} snapshot(s) after {} up to {}: {} window(s), {} file(s), {} row(s), {} added",
        d.snapshots.len(),
        d.from_snapshot,
        d.to_snapshot,
        d.windows.len(),
        d.files_added,
        num(d.rows_added),
        output::bytes(d.bytes_added)
    ));
    Ok(ExitCode::SUCCESS)
}

async fn fetch_cmd(a: FetchArgs, progress: &Progress) -> Result<ExitCode> {
    let cfg = load(&a.config.config)?;
    let (t, table) = inspect::open_table(&cfg, &a.table).await?;
    let (from, to) = (
        inspect::fetch::instant("from", &a.from)?,
        inspect::fetch::instant("to", &a.to)?,
    );
    if from >= to {
        return Err(Error::config(format!(
            "--from {} is not before --to {}",
            a.from, a.to
        )));
    }
    let req = inspect::fetch::FetchRequest {
        time_column: t.timestamp_column.clone(),
        range: crate::plan::window::Window {
            start: from,
            end: to,
        },
        snapshot: snapshot_choice(&a.at)?,
        columns: a.columns.clone(),
        filter: a.filter.clone(),
        format: a.format,
    };
    let bar = progress.rows_spinner(&format!("fetching {}", t.iceberg_name()));
    let result = match a.output.as_deref().filter(|p| p.as_os_str() != "-") {
        Some(path) => {
            let f = std::fs::File::create(path)
                .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
            inspect::fetch::fetch(&table, &req, std::io::BufWriter::new(f), &bar).await
        }
        None => {
            let out = std::io::BufWriter::new(std::io::stdout());
            inspect::fetch::fetch(&table, &req, out, &bar).await
        }
    };
    let stats = match result {
        Ok(s) => s,
        // The reader went away (`| head`): not an error.
        Err(e) if e.kind() == ErrorKind::Io && e.message().contains("Broken pipe") => {
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e),
    };
    bar.finish_and_clear();
    tracing::info!(
        "fetched {} row(s) from {} file(s) of snapshot {} in {:.2}s",
        num(stats.rows),
        stats.files,
        opt(&stats.snapshot_id),
        stats.seconds
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "query"))]
async fn query_cmd(_a: QueryArgs, _progress: &Progress) -> Result<ExitCode> {
    Err(Error::new(
        ErrorKind::Config,
        "this permafrost was built without SQL support (cargo feature `query`)",
    )
    .with_hint(
        "install it with `cargo install --path . --features query`, or use `permafrost fetch`",
    ))
}

#[cfg(not(feature = "query"))]
async fn serve_cmd(_a: ServeArgs) -> Result<ExitCode> {
    Err(Error::new(
        ErrorKind::Config,
        "this permafrost was built without the HTTP API (cargo feature `query`)",
    )
    .with_hint("install it with `cargo install --path . --features query`"))
}

#[cfg(feature = "query")]
async fn serve_cmd(a: ServeArgs) -> Result<ExitCode> {
    if a.openapi {
        println!("{}", crate::serve::openapi::json());
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = load(&a.config.config)?;
    let listen = a
        .listen
        .as_deref()
        .map(|l| crate::config::parse_listen("--listen", l))
        .transpose()?;
    crate::serve::serve(
        cfg,
        crate::serve::ServeOptions {
            listen,
            insecure_no_auth: a.insecure_no_auth,
        },
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "query")]
async fn query_cmd(a: QueryArgs, progress: &Progress) -> Result<ExitCode> {
    use crate::cli::args::QueryFormatArg;
    use inspect::query::{self, QueryFormat};
    let cfg = load(&a.config.config)?;
    let as_of = a
        .as_of
        .as_deref()
        .map(|t| inspect::fetch::instant("as-of", t))
        .transpose()?;
    let catalog = crate::lake::open_catalog(&cfg.catalog).await?;
    let prepared = query::prepare(&cfg, catalog.as_ref(), &a.sql, as_of).await?;
    if a.explain {
        if a.json {
            output::json(&prepared.scans)?;
        } else {
            let rows: Vec<Vec<String>> = prepared
                .scans
                .iter()
                .map(|s| {
                    vec![
                        s.table.clone(),
                        opt(&s.snapshot_id),
                        s.files.to_string(),
                        s.predicate.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            output::table(&["TABLE", "SNAPSHOT", "FILES", "PUSHED-DOWN FILTER"], &rows);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let format = match a.format {
        QueryFormatArg::Table => QueryFormat::Table,
        QueryFormatArg::Csv => QueryFormat::Csv,
        QueryFormatArg::Json => QueryFormat::Json,
        QueryFormatArg::Jsonl => QueryFormat::Jsonl,
        QueryFormatArg::Parquet => QueryFormat::Parquet,
        QueryFormatArg::Arrow => QueryFormat::Arrow,
    };
    let bar = progress.rows_spinner("querying");
    let result = match a.output.as_deref().filter(|p| p.as_os_str() != "-") {
        Some(path) => {
            let f = std::fs::File::create(path)
                .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
            query::run(prepared, format, std::io::BufWriter::new(f), &bar).await
        }
        None => {
            let out = std::io::BufWriter::new(std::io::stdout());
            query::run(prepared, format, out, &bar).await
        }
    };
    let stats = match result {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::Io && e.message().contains("Broken pipe") => {
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e),
    };
    bar.finish_and_clear();
    if stats.truncated > 0 {
        tracing::warn!(
            "showing the first {} of {} rows; use --format csv|json|jsonl|parquet for all",
            num(query::TABLE_ROW_LIMIT as u64),
            num(stats.rows)
        );
    }
    tracing::info!(
        "{} row(s) in {:.2}s; {} scan(s) read {} data file(s)",
        num(stats.rows),
        stats.seconds,
        stats.scans.len(),
        stats.files()
    );
    Ok(ExitCode::SUCCESS)
}

/// `SCHEMA.TABLE` or `TABLE` (in `default_schema`).
fn table_name(flag: &str, s: &str, default_schema: &str) -> Result<(String, String)> {
    let parts: Vec<&str> = s.split('.').collect();
    match parts.as_slice() {
        [t] if !t.is_empty() => Ok((default_schema.to_string(), t.to_string())),
        [sch, t] if !sch.is_empty() && !t.is_empty() => Ok((sch.to_string(), t.to_string())),
        _ => Err(Error::config(format!(
            "--{flag}: `{s}` is not SCHEMA.TABLE or TABLE"
        ))),
    }
}

async fn restore_cmd(a: RestoreArgs, progress: &Progress) -> Result<ExitCode> {
    use crate::restore::{self, Apply};
    let cfg = load(&a.config.config)?;
    let (t, table) = inspect::open_table(&cfg, &a.table).await?;
    let target = a
        .target
        .as_deref()
        .map(|s| table_name("target", s, &t.schema))
        .transpose()?;
    let default_schema = target
        .as_ref()
        .map(|(s, _)| s.clone())
        .unwrap_or(t.schema.clone());
    let req = restore::RestoreRequest {
        range: restore::range(&a.from, &a.to)?,
        snapshot: snapshot_choice(&a.at)?,
        into: a
            .into
            .as_deref()
            .map(|s| table_name("into", s, &default_schema))
            .transpose()?,
        target,
        apply: if a.attach {
            Apply::Attach {
                replace: a.replace_partition,
            }
        } else if a.merge {
            Apply::Merge(a.on_conflict)
        } else {
            Apply::Stage
        },
        keep_staging: a.keep_staging,
    };
    let bar = progress.rows_spinner(&format!("restoring {}", t.iceberg_name()));
    let report = restore::restore(&cfg, &t, &table, &req, &bar).await?;
    bar.finish_and_clear();
    let metrics = crate::metrics::Metrics::new();
    metrics.record_restore(&t.source_name(), report.rows_restored());
    emit_metrics(&metrics, &a.metrics).await?;
    if a.json {
        output::json(&report)?;
    } else {
        let rows: Vec<Vec<String>> = report
            .checks
            .iter()
            .map(|c| {
                vec![
                    c.name.clone(),
                    if c.ok { "ok" } else { "FAILED" }.to_string(),
                    c.detail.clone(),
                ]
            })
            .collect();
        output::table(&["CHECK", "RESULT", "DETAIL"], &rows);
        if !report.batches.is_empty() {
            output::line("");
            let rows: Vec<Vec<String>> = report
                .batches
                .iter()
                .map(|b| {
                    vec![
                        b.batch_id.clone(),
                        b.snapshot_id.to_string(),
                        b.window_start.clone(),
                        b.window_end.clone(),
                        num(b.archived_rows),
                        num(b.restored_rows),
                        b.status.clone(),
                    ]
                })
                .collect();
            output::table(
                &[
                    "BATCH",
                    "SNAPSHOT",
                    "WINDOW START",
                    "WINDOW END",
                    "ARCHIVED",
                    "RESTORED",
                    "STATUS",
                ],
                &rows,
            );
        }
        output::line("");
        let what = match report.action.as_str() {
            "attached" => format!(
                "attached {} as a partition of {}",
                report.staging, report.target
            ),
            "merged" => format!(
                "merged into {}: {} inserted, {} updated, {} skipped{}",
                report.target,
                num(report.inserted.unwrap_or(0)),
                num(report.updated.unwrap_or(0)),
                num(report.skipped.unwrap_or(0)),
                if report.staging_kept {
                    format!("; staging kept: {}", report.staging)
                } else {
                    String::new()
                }
            ),
            "staged" => format!("staged in {}", report.staging),
            _ => format!(
                "nothing applied; staging kept for inspection: {}",
                report.staging
            ),
        };
        output::line(&format!(
            "{} row(s) of snapshot {} from {} file(s), {} to {}: {what} ({:.2}s)",
            num(report.rows),
            report.snapshot_id,
            report.files,
            report.from,
            report.to,
            report.seconds
        ));
    }
    if !report.valid {
        return Err(Error::new(
            ErrorKind::Verification,
            format!("restore validation failed; nothing was attached or merged; the staging table {} is kept", report.staging),
        )
        .with_hint(format!("inspect it, then `DROP TABLE {}` before trying again", report.staging)));
    }
    Ok(ExitCode::SUCCESS)
}
