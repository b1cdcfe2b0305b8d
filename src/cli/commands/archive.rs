//! `archive` and `replay`, and the report they print.

use super::*;

pub(super) async fn archive_cmd(a: ArchiveArgs, progress: &Progress) -> Result<ExitCode> {
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

pub(super) async fn replay_cmd(a: ReplayArgs, progress: &Progress) -> Result<ExitCode> {
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

pub(super) async fn run_archive(
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

pub(super) fn print_archive(reports: &[crate::archive::TableReport], dry_run: bool) {
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
        if let Some(u) = &r.unchanged {
            output::line(&format!(
                "  {} kept range(s), {} row(s): as copied before, not read again",
                u.ranges,
                num(u.rows)
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
