//! `diff`.

use super::*;

pub(super) async fn diff_cmd(a: DiffArgs) -> Result<ExitCode> {
    let cfg = load(&a.config.config)?;
    let (_, table, _) = inspect::open_table(&cfg, &a.table).await?;
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
