//! `snapshots`.

use super::*;

pub(super) async fn snapshots_cmd(a: SnapshotsArgs) -> Result<ExitCode> {
    let cfg = load(&a.config.config)?;
    let (_, table, _) = inspect::open_table(&cfg, &a.table).await?;
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
