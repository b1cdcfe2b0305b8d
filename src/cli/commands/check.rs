//! `check`: the config, the services and every table, read-only.

use super::*;

pub(super) async fn check_cmd(a: CheckArgs) -> Result<ExitCode> {
    let cfg = load(&a.config.config)?;
    let report = crate::check::check(&cfg, a.table.as_deref()).await?;
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
