//! `demo`.

use super::*;

pub(super) async fn demo_cmd(a: DemoArgs, progress: &Progress) -> Result<ExitCode> {
    let dir = crate::demo::absolute(&a.dir)?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let throwaway = match &a.dsn {
        Some(_) => None,
        None => {
            tracing::info!("starting a throwaway PostgreSQL cluster");
            Some(crate::demo::ThrowawayPostgres::start()?)
        }
    };
    let dsn = a
        .dsn
        .clone()
        .or_else(|| throwaway.as_ref().map(|p| p.dsn()))
        .unwrap_or_default();
    let cfg_path = dir.join("permafrost.yaml");
    std::fs::write(&cfg_path, crate::demo::demo_config(&dsn))
        .map_err(|e| Error::io(format!("cannot write {}", cfg_path.display()), e))?;
    let cfg = Config::load(&cfg_path)?;
    let client = source::connect(&cfg.database).await?;
    tracing::info!("loading {} sample sensor readings", num(a.rows));
    crate::demo::load_sample(&client, a.rows).await?;

    let reports = crate::archive::run(&cfg, &ArchiveOptions::default(), progress).await?;
    print_archive(&reports, false);
    if let Some(r) = reports
        .iter()
        .find(|r| matches!(r.outcome, Outcome::Failed { .. }))
    {
        return Err(Error::new(
            ErrorKind::Internal,
            format!("demo archive of {} failed", r.source),
        ));
    }
    output::line("");
    print_status(&inspect::status(&cfg, None, None).await?);

    let catalog = lake::open_catalog(&cfg.catalog).await?;
    let t = &cfg.tables[0];
    let table = catalog
        .iceberg()
        .load_table(&lake::table::ident(t)?)
        .await
        .map_err(|e| Error::iceberg("cannot load the demo table", e))?;
    output::line("");
    output::line(&format!("snapshots of {}:", t.iceberg_name()));
    let mut rows = Vec::new();
    for s in crate::ledger::read::ancestry(&table).iter().rev().take(10) {
        let p = &s.summary().additional_properties;
        let g = |k: &str| p.get(k).cloned().unwrap_or_default();
        rows.push(vec![
            s.snapshot_id().to_string(),
            g(crate::ledger::keys::BATCH_ID),
            g(crate::ledger::keys::WINDOW_START),
            g(crate::ledger::keys::WINDOW_END),
            g(crate::ledger::keys::ROWS),
        ]);
    }
    output::table(
        &["SNAPSHOT", "BATCH", "WINDOW START", "WINDOW END", "ROWS"],
        &rows,
    );

    // SQLAlchemy (PyIceberg) spells an absolute SQLite path with four slashes.
    let uri = &cfg.catalog.properties["uri"];
    let path = uri
        .trim_start_matches("sqlite://")
        .trim_end_matches("?mode=rwc");
    let sqlite = format!("sqlite:///{path}");
    let warehouse = &cfg.catalog.properties["warehouse"];
    output::line("");
    output::line("Read the archive with PyIceberg (pip install 'pyiceberg[pyarrow,sql-sqlite]'):");
    output::line(&format!(
        "  python3 -c \"from pyiceberg.catalog.sql import SqlCatalog; c = SqlCatalog('{}', uri='{}', warehouse='{}'); t = c.load_table('{}'); print(t.scan().to_arrow().num_rows, 'rows'); print(t.current_snapshot().summary.additional_properties)\"",
        cfg.catalog.name,
        sqlite,
        warehouse,
        t.iceberg_name()
    ));
    output::line("Read it with DuckDB (duckdb + its iceberg extension):");
    output::line(&format!(
        "  duckdb -c \"INSTALL iceberg; LOAD iceberg; SELECT date_trunc('day', recorded_at) AS day, count(*) FROM iceberg_scan('{}') GROUP BY 1 ORDER BY 1\"",
        table.metadata_location().unwrap_or_default()
    ));
    output::line(&format!(
        "Config: {}   (try: permafrost status -c {})",
        cfg_path.display(),
        cfg_path.display()
    ));
    drop(client);
    drop(throwaway);
    Ok(ExitCode::SUCCESS)
}
