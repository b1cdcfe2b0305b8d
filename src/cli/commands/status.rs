//! `status` and its table.

use super::*;

pub(super) async fn status_cmd(a: StatusArgs) -> Result<ExitCode> {
    let cfg = load(&a.config.config)?;
    let st = inspect::status(&cfg, a.table.as_deref(), parse_now(a.now.as_deref())?).await?;
    if a.json {
        output::json(&st)?;
    } else {
        print_status(&st);
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn print_status(st: &[inspect::TableStatus]) {
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
        if s.batches_of_other_history > 0 {
            output::line(&format!(
                "{}: {} batch(es) were archived on another Postgres history than this server's ({}): \
                 a restore to an earlier point, a failover or another cluster; their transaction \
                 ids are not trusted, and rows in their windows are told apart by content",
                s.source,
                s.batches_of_other_history,
                s.pg_history.as_deref().unwrap_or("-")
            ));
        }
        if let Some(sh) = &s.shape {
            output::line(&format!(
                "{}: {} snapshot(s) since {}, {} data manifest(s), {} data file(s) ({} small){}, metadata {} (ledger {})",
                s.source,
                sh.snapshots,
                sh.oldest_snapshot.as_deref().unwrap_or("-"),
                sh.data_manifests,
                sh.data_files,
                sh.small_files,
                match (sh.delete_files, sh.deletion_vectors) {
                    (0, _) => String::new(),
                    (n, 0) => format!(", {n} delete file(s) (row-level deletes of other engines)"),
                    (n, v) => format!(
                        ", {n} delete file(s) (row-level deletes of other engines; {v} deletion \
                         vector(s), which restore, fetch and query refuse)"
                    ),
                },
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
