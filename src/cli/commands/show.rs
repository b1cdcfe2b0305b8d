//! `show`.

use super::*;

pub(super) async fn show_cmd(a: ShowArgs) -> Result<ExitCode> {
    let cfg = load(&a.config.config)?;
    let (_, table, _) = inspect::open_table(&cfg, &a.table).await?;
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
        let v = if k == crate::ledger::keys::LEDGER {
            match crate::ledger::durable::parse(v) {
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
