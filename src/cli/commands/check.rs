//! `check`: the config, the services, the warehouse storage and every table.

use super::*;

use crate::check::{CheckReport, ColumnCheck, Probe, TableCheck};

pub(super) async fn check_cmd(a: CheckArgs) -> Result<ExitCode> {
    let cfg = load(&a.config.config)?;
    let report = crate::check::check(&cfg, a.table.as_deref()).await?;
    if a.json {
        output::json(&report)?;
    } else {
        output::line(&format!(
            "config      ok      {}",
            a.config.config.display()
        ));
        print_services(&report);
        for t in &report.tables {
            print_table(t);
        }
    }
    if report.ok {
        return Ok(ExitCode::SUCCESS);
    }
    let e = first_failure(&report);
    output::error(&e);
    Ok(ExitCode::from(e.kind().exit_code()))
}

fn mark(ok: bool) -> &'static str {
    if ok { "ok" } else { "FAILED" }
}

fn print_probe(name: &str, p: &Probe, tls: String) {
    output::line(&format!("{name:<11} {:<6}  {}{tls}", mark(p.ok), p.target));
    if let Some(e) = &p.error {
        output::line(&format!("  error: {e}"));
    }
    if let Some(h) = &p.hint {
        output::line(&format!("  hint: {h}"));
    }
}

fn print_services(report: &CheckReport) {
    let tls = match report.postgres.tls.as_deref() {
        Some(t) if t != "no TLS" => format!("  ({t})"),
        _ => String::new(),
    };
    print_probe("postgres", &report.postgres, tls);
    print_probe("catalog", &report.catalog, String::new());
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
}

fn print_table(t: &TableCheck) {
    output::line("");
    let state = if t.iceberg_state.is_empty() {
        String::new()
    } else {
        format!(", Iceberg table {}", t.iceberg_state)
    };
    output::line(&format!(
        "table {} -> {}  {}  ({}({}){state})",
        t.source,
        t.iceberg_table,
        mark(t.ok),
        t.partition_by,
        t.time_column,
    ));
    if !t.columns.is_empty() {
        let rows: Vec<Vec<String>> = t.columns.iter().map(column_row).collect();
        output::table(&["COLUMN", "POSTGRES", "NULL", "ICEBERG"], &rows);
    }
    if !t.storage.is_empty() {
        output::line(&format!(
            "  storage: ok (wrote and read back a probe object under {})",
            t.storage
        ));
    } else if let Some(note) = &t.storage_note {
        output::line(&format!("  storage: {note}"));
    }
    for (label, lines) in [
        ("error", &t.errors),
        ("hint", &t.hints),
        ("warning", &t.warnings),
    ] {
        for l in lines {
            output::line(&format!("  {label}: {l}"));
        }
    }
}

fn column_row(c: &ColumnCheck) -> Vec<String> {
    let iceberg = if c.excluded {
        "(excluded)".to_string()
    } else {
        match (&c.iceberg_type, c.encoding.as_deref()) {
            (Some(t), Some("binary")) => t.clone(),
            (Some(t), Some(e)) => format!("{t} (via ::{e})"),
            (Some(t), None) => t.clone(),
            (None, _) => format!("UNSUPPORTED: {}", c.error.clone().unwrap_or_default()),
        }
    };
    let null = if c.not_null { "not null" } else { "" };
    vec![
        c.name.clone(),
        c.postgres_type.clone(),
        null.to_string(),
        iceberg,
    ]
}

/// The error the exit code and the `error:` line report: Postgres first,
/// then the catalog, then the first failed table.
fn first_failure(report: &CheckReport) -> Error {
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
    let e = Error::new(kind, first);
    match hint {
        Some(h) => e.with_hint(h),
        None => e,
    }
}
