//! `list`.

use super::*;

pub(super) async fn list_cmd(a: ListArgs) -> Result<ExitCode> {
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
                if l.row_deletes {
                    format!("{}*", num(l.rows))
                } else {
                    num(l.rows)
                },
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
    if lines.iter().any(|l| l.row_deletes) {
        output::line(
            "* row-level deletes (another engine's) apply: rows before them; fetch and restore apply them",
        );
    }
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
