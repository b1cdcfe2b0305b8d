//! `query` (SQL, feature `query`).

use super::*;

#[cfg(not(feature = "query"))]
pub(super) async fn query_cmd(_a: QueryArgs, _progress: &Progress) -> Result<ExitCode> {
    Err(Error::new(
        ErrorKind::Config,
        "this permafrost was built without SQL support (cargo feature `query`)",
    )
    .with_hint(
        "install it with `cargo install --path . --features query`, or use `permafrost fetch`",
    ))
}

#[cfg(feature = "query")]
pub(super) async fn query_cmd(a: QueryArgs, progress: &Progress) -> Result<ExitCode> {
    use crate::cli::args::QueryFormatArg;
    use inspect::query::{self, QueryFormat};
    let cfg = load(&a.config.config)?;
    let as_of = a
        .as_of
        .as_deref()
        .map(|t| inspect::fetch::instant("as-of", t))
        .transpose()?;
    let catalog = crate::lake::open_catalog(&cfg.catalog).await?;
    let prepared = query::prepare(&cfg, catalog.iceberg(), &a.sql, as_of).await?;
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
    let Some(stats) = reader_may_leave(result)? else {
        return Ok(ExitCode::SUCCESS);
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
