//! `restore`.

use super::*;

use crate::restore::{self, Action, Apply, BatchCheck};

/// `SCHEMA.TABLE` or `TABLE` (in `default_schema`).
pub(super) fn table_name(flag: &str, s: &str, default_schema: &str) -> Result<(String, String)> {
    let parts: Vec<&str> = s.split('.').collect();
    match parts.as_slice() {
        [t] if !t.is_empty() => Ok((default_schema.to_string(), t.to_string())),
        [sch, t] if !sch.is_empty() && !t.is_empty() => Ok((sch.to_string(), t.to_string())),
        _ => Err(Error::config(format!(
            "--{flag}: `{s}` is not SCHEMA.TABLE or TABLE"
        ))),
    }
}

pub(super) async fn restore_cmd(a: RestoreArgs, progress: &Progress) -> Result<ExitCode> {
    let cfg = load(&a.config.config)?;
    let (t, table, catalog) = inspect::open_table(&cfg, &a.table).await?;
    let req = request(&a, &t.schema)?;
    let bar = progress.rows_spinner(&format!("restoring {}", t.iceberg_name()));
    let report = restore::restore(&cfg, &t, (&catalog, &table), &req, &bar).await?;
    bar.finish_and_clear();
    let metrics = crate::metrics::Metrics::new();
    metrics.record_restore(&t.source_name(), report.rows_restored());
    emit_metrics(&metrics, &a.metrics).await?;
    if a.json {
        output::json(&report)?;
    } else {
        print_report(&report);
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

/// The flags as a restore request; names without a schema are in the
/// target's schema (the source's when there is no target).
fn request(a: &RestoreArgs, source_schema: &str) -> Result<restore::RestoreRequest> {
    let target = a
        .target
        .as_deref()
        .map(|s| table_name("target", s, source_schema))
        .transpose()?;
    let default_schema = target
        .as_ref()
        .map_or(source_schema, |(s, _)| s.as_str())
        .to_string();
    let apply = if a.attach {
        Apply::Attach {
            replace: a.replace_partition,
        }
    } else if a.merge {
        Apply::Merge(a.on_conflict)
    } else {
        Apply::Stage
    };
    Ok(restore::RestoreRequest {
        range: restore::range(&a.from, &a.to)?,
        snapshot: snapshot_choice(&a.at)?,
        into: a
            .into
            .as_deref()
            .map(|s| table_name("into", s, &default_schema))
            .transpose()?,
        target,
        apply,
        keep_staging: a.keep_staging,
    })
}

fn print_report(report: &restore::RestoreReport) {
    let rows: Vec<Vec<String>> = report
        .checks
        .iter()
        .map(|c| {
            let result = if c.ok { "ok" } else { "FAILED" };
            vec![c.name.clone(), result.to_string(), c.detail.clone()]
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
                    restored(b),
                    status(b),
                ]
            })
            .collect();
        let head = [
            "BATCH",
            "SNAPSHOT",
            "WINDOW START",
            "WINDOW END",
            "ARCHIVED",
            "RESTORED",
            "STATUS",
        ];
        output::table(&head, &rows);
    }
    output::line("");
    output::line(&format!(
        "{} row(s) of snapshot {} from {} file(s), {} to {}: {} ({:.2}s: load {:.2}s, checks {:.2}s, apply {:.2}s)",
        num(report.rows),
        report.snapshot_id,
        report.files,
        report.from,
        report.to,
        what_happened(report),
        report.seconds,
        report.load_seconds,
        report.check_seconds,
        report.apply_seconds
    ));
}

fn what_happened(report: &restore::RestoreReport) -> String {
    match report.action {
        Action::Attached => format!(
            "attached {} as a partition of {}",
            report.staging, report.target
        ),
        Action::Merged => format!(
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
        Action::Staged => format!("staged in {}", report.staging),
        Action::None => format!(
            "nothing applied; staging kept for inspection: {}",
            report.staging
        ),
    }
}

/// The rows restored of a batch, marked as its group's when a compaction
/// merged its files with other batches'.
fn restored(b: &BatchCheck) -> String {
    match b.rewritten_with.len() {
        0 => num(b.restored_rows),
        n => format!("{} (group of {})", num(b.restored_rows), n + 1),
    }
}

/// A batch's status, with the batches it is compared with and why it is not.
fn status(b: &BatchCheck) -> String {
    let mut out = b.status.as_str().to_string();
    if !b.rewritten_with.is_empty() {
        out.push_str(&format!(", compacted with {}", b.rewritten_with.join(" ")));
    }
    if let Some(note) = &b.note {
        out.push_str(&format!(": {note}"));
    }
    out
}
