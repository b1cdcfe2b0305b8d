//! `fetch`.

use super::*;

pub(super) async fn fetch_cmd(a: FetchArgs, progress: &Progress) -> Result<ExitCode> {
    let cfg = load(&a.config.config)?;
    let (t, table, catalog) = inspect::open_table(&cfg, &a.table).await?;
    let storage = std::sync::Arc::new(crate::lake::vended::TableStorage::new(catalog, &table));
    let (from, to) = (
        inspect::fetch::instant("from", &a.from)?,
        inspect::fetch::instant("to", &a.to)?,
    );
    if from >= to {
        return Err(Error::config(format!(
            "--from {} is not before --to {}",
            a.from, a.to
        )));
    }
    let req = inspect::fetch::FetchRequest {
        time_column: t.timestamp_column.clone(),
        range: crate::plan::window::Window {
            start: from,
            end: to,
        },
        snapshot: snapshot_choice(&a.at)?,
        columns: a.columns.clone(),
        filter: a.filter.clone(),
        format: a.format,
    };
    let bar = progress.rows_spinner(&format!("fetching {}", t.iceberg_name()));
    let result = match a.output.as_deref().filter(|p| p.as_os_str() != "-") {
        Some(path) => {
            let f = std::fs::File::create(path)
                .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
            inspect::fetch::fetch((&table, storage), &req, std::io::BufWriter::new(f), &bar).await
        }
        None => {
            let out = std::io::BufWriter::new(std::io::stdout());
            inspect::fetch::fetch((&table, storage), &req, out, &bar).await
        }
    };
    let Some(stats) = reader_may_leave(result)? else {
        return Ok(ExitCode::SUCCESS);
    };
    bar.finish_and_clear();
    tracing::info!(
        "fetched {} row(s) from {} file(s) of snapshot {} in {:.2}s",
        num(stats.rows),
        stats.files,
        opt(&stats.snapshot_id),
        stats.seconds
    );
    Ok(ExitCode::SUCCESS)
}
