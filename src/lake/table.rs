//! The archive table: schema, partition spec, sort order and properties
//! derived from the source table, created once and checked on every run.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_schema::SchemaRef as ArrowSchemaRef;
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, NamespaceIdent, TableCreation, TableIdent, TableRequirement, TableUpdate};

use crate::config::TableConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::lake::catalog::CatalogHandle;
use crate::lake::evolve::{self, Change, ColumnNow, Evolution};
use crate::lake::layout;
use crate::lake::metadata_commit;
pub use crate::lake::schema::{RecordedColumn, derive_schema, recorded_columns};
use crate::ledger::props;
use crate::plan::window::Granularity;
use crate::source::SourceTable;
use crate::types::PgKind;

/// The archive table, ready for writing batches of the source table.
#[derive(Clone)]
pub struct ArchiveTable {
    pub ident: TableIdent,
    pub table: Table,
    /// Arrow schema of the rows (with Iceberg field ids), in write order.
    pub arrow_schema: ArrowSchemaRef,
    /// Source column names, in write order (the COPY select list).
    pub columns: Vec<String>,
    /// Decoder kind per column, in write order.
    pub kinds: Vec<PgKind>,
    /// Select-list expression per column, in write order (`"c"` or `"c"::text`).
    pub select: Vec<String>,
    /// Index of the time column in `columns`.
    pub time_index: usize,
    pub granularity: Granularity,
    /// Name of the partition field, e.g. `recorded_at_day`.
    pub partition_field: String,
}

/// The table identifier in the catalog.
pub fn ident(t: &TableConfig) -> Result<TableIdent> {
    let ns = NamespaceIdent::from_vec(t.namespace.clone())
        .map_err(|e| Error::iceberg(format!("invalid namespace for {}", t.source_name()), e))?;
    Ok(TableIdent::new(ns, t.table.clone()))
}

/// Table properties recorded at creation.
fn creation_properties(cfg: &TableConfig, src: &SourceTable) -> Result<HashMap<String, String>> {
    let cols = recorded_columns(src);
    let mut p = HashMap::new();
    p.insert(props::SOURCE.into(), src.source_id());
    p.insert(props::TIME_COLUMN.into(), src.time_column().name.clone());
    p.insert(props::PARTITION_BY.into(), cfg.partition_by.name().into());
    p.insert(
        props::PG_COLUMNS.into(),
        serde_json::to_string(&cols).map_err(|e| Error::internal(e.to_string()))?,
    );
    p.insert(
        props::PG_PRIMARY_KEY.into(),
        serde_json::to_string(&src.primary_key).map_err(|e| Error::internal(e.to_string()))?,
    );
    p.insert(props::VERSION.into(), crate::VERSION.into());
    p.insert("write.format.default".into(), "parquet".into());
    p.insert("write.parquet.compression-codec".into(), "zstd".into());
    p.insert(
        "write.parquet.compression-level".into(),
        cfg.zstd_level.to_string(),
    );
    p.insert(
        "write.target-file-size-bytes".into(),
        cfg.target_file_size.to_string(),
    );
    Ok(p)
}

/// What the catalog holds for a configured table (read-only view).
pub enum TableState {
    /// No table yet: the first archive run creates it.
    Missing,
    /// The table matches the source.
    Ready(Box<ArchiveTable>),
    /// The source changed; the next archive run evolves the schema so.
    Evolves {
        table: Box<Table>,
        changes: Vec<Change>,
    },
}

async fn load(catalog: &dyn Catalog, ident: &TableIdent) -> Result<Option<Table>> {
    let exists = catalog
        .table_exists(ident)
        .await
        .map_err(|e| Error::iceberg(format!("cannot look up {ident} in the catalog"), e))?;
    if !exists {
        return Ok(None);
    }
    catalog
        .load_table(ident)
        .await
        .map(Some)
        .map_err(|e| Error::iceberg(format!("cannot load {ident} from the catalog"), e))
}

fn incompatible(ident: &TableIdent, src: &SourceTable, what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Schema, format!("Iceberg table {ident} does not match {}: {what}", src.qualified())).with_hint(
        "point `namespace`/`table` of this table at a new Iceberg table, or align the source; nothing was written",
    )
}

/// The schema evolution `src` needs from `table`, and the columns to record.
fn evolution_for(
    table: &Table,
    src: &SourceTable,
) -> Result<(Option<Evolution>, Vec<RecordedColumn>)> {
    let md = table.metadata();
    let recorded: Vec<RecordedColumn> = md
        .properties()
        .get(props::PG_COLUMNS)
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default();
    let mut now = Vec::new();
    for c in src.archived_columns() {
        let kind = c.kind().map_err(|e| Error::new(ErrorKind::Schema, e))?;
        now.push(ColumnNow {
            attnum: c.attnum,
            name: c.name.clone(),
            pg_type: c.pg_type.clone(),
            kind,
            not_null: c.not_null,
        });
    }
    let ev = evolve::plan(
        md.current_schema(),
        md.last_column_id(),
        &now,
        &recorded,
        &src.primary_key,
    )
    .map_err(|e| incompatible(table.identifier(), src, e))?;
    Ok((ev, recorded))
}

/// The state of the archive table of `cfg`, without changing anything.
pub async fn inspect_table(
    catalog: &dyn Catalog,
    cfg: &TableConfig,
    src: &SourceTable,
) -> Result<TableState> {
    let ident = ident(cfg)?;
    let Some(table) = load(catalog, &ident).await? else {
        layout::derive(src, cfg.partition_by)?
            .prove_readable()
            .await?;
        return Ok(TableState::Missing);
    };
    check_layout(cfg, src, &table)?;
    match evolution_for(&table, src)? {
        (None, _) => Ok(TableState::Ready(Box::new(bind(cfg, src, ident, table)?))),
        (Some(ev), _) => Ok(TableState::Evolves {
            table: Box::new(table),
            changes: ev.changes,
        }),
    }
}

/// The archive table of `cfg`, ready to write: created when missing (with its
/// namespace), its schema evolved when the source changed (see
/// [`crate::lake::evolve`]).  Refuses a table whose layout or schema cannot
/// follow the source; nothing is written then.  Call under the table's lock.
pub async fn ensure_table(
    catalog: &CatalogHandle,
    cfg: &TableConfig,
    src: &SourceTable,
) -> Result<ArchiveTable> {
    let ident = ident(cfg)?;
    let table = match load(catalog.iceberg(), &ident).await? {
        Some(t) if unreadable_partition_field(&t).is_some() => {
            repair_unreadable(catalog.iceberg(), cfg, src, &ident, &t).await?
        }
        Some(t) => t,
        None => create(catalog.iceberg(), cfg, src, &ident).await?,
    };
    let prepared = async {
        check_layout(cfg, src, &table)?;
        let (ev, recorded) = evolution_for(&table, src)?;
        let now = recorded_columns(src);
        let cols = serde_json::to_string(&now).map_err(|e| Error::internal(e.to_string()))?;
        match ev {
            Some(ev) => {
                let current = table.metadata().current_schema_id();
                metadata_commit::commit(
                    catalog,
                    &table,
                    vec![TableRequirement::CurrentSchemaIdMatch {
                        current_schema_id: current,
                    }],
                    vec![
                        TableUpdate::AddSchema {
                            schema: ev.schema.clone(),
                        },
                        TableUpdate::SetCurrentSchema { schema_id: -1 },
                        metadata_commit::set_property(props::PG_COLUMNS, cols),
                    ],
                )
                .await?;
                let changes: Vec<String> = ev.changes.iter().map(ToString::to_string).collect();
                tracing::info!("evolved the schema of {ident}: {}", changes.join(", "));
            }
            None if now != recorded => {
                // Same Iceberg types, new Postgres types (varchar(10) → text, …).
                let tx = Transaction::new(&table);
                let action = tx
                    .update_table_properties()
                    .set(props::PG_COLUMNS.to_string(), cols);
                let tx = action
                    .apply(tx)
                    .map_err(|e| Error::iceberg("cannot prepare the commit", e))?;
                tx.commit(catalog.iceberg()).await.map_err(|e| {
                    Error::iceberg(format!("cannot record the column types of {ident}"), e)
                })?;
            }
            None => return bind(cfg, src, ident.clone(), table.clone()),
        }
        let fresh = load(catalog.iceberg(), &ident)
            .await?
            .ok_or_else(|| Error::internal("table vanished"))?;
        bind(cfg, src, ident.clone(), fresh)
    }
    .await;
    match prepared {
        Ok(t) => Ok(t),
        // A table permafrost created for this source that never received a
        // batch (a first run refused a value, say) holds nothing: recreate it
        // to match the source as it is now.
        Err(e)
            if e.kind() == ErrorKind::Schema
                && table.metadata().current_snapshot().is_none()
                && table.metadata().properties().get(props::SOURCE) == Some(&src.source_id()) =>
        {
            tracing::info!(
                "recreating the empty Iceberg table {ident} to match {}",
                src.qualified()
            );
            catalog
                .iceberg()
                .drop_table(&ident)
                .await
                .map_err(|e| Error::iceberg(format!("cannot drop the empty table {ident}"), e))?;
            let t = create(catalog.iceberg(), cfg, src, &ident).await?;
            bind(cfg, src, ident, t)
        }
        Err(e) => Err(e),
    }
}

async fn create(
    catalog: &dyn Catalog,
    cfg: &TableConfig,
    src: &SourceTable,
    ident: &TableIdent,
) -> Result<Table> {
    let layout = layout::derive(src, cfg.partition_by)?;
    layout.prove_readable().await?;
    let ns = ident.namespace();
    let ns_exists = catalog
        .namespace_exists(ns)
        .await
        .map_err(|e| Error::iceberg(format!("cannot look up namespace {ns}"), e))?;
    if !ns_exists && let Err(e) = catalog.create_namespace(ns, HashMap::new()).await {
        // Another table (or instance) may have created it meanwhile; the
        // SQL catalog reports that as a generic constraint error.
        let now_exists = catalog.namespace_exists(ns).await.unwrap_or(false);
        if e.kind() != iceberg::ErrorKind::NamespaceAlreadyExists && !now_exists {
            return Err(Error::iceberg(format!("cannot create namespace {ns}"), e));
        }
    }
    let creation = TableCreation::builder()
        .name(ident.name().to_string())
        .schema(layout.schema)
        .partition_spec(layout.spec)
        .sort_order(layout.sort)
        .properties(creation_properties(cfg, src)?)
        .build();
    match catalog.create_table(ns, creation).await {
        Ok(t) => {
            tracing::info!("created Iceberg table {ident}");
            Ok(t)
        }
        Err(e) if e.kind() == iceberg::ErrorKind::TableAlreadyExists => load(catalog, ident)
            .await?
            .ok_or_else(|| Error::internal("table vanished")),
        Err(e) => Err(Error::iceberg(format!("cannot create {ident}"), e)),
    }
}

/// The name of the table's partition field when it is not a valid Avro name
/// (tables created by permafrost before names were sanitised): no engine can
/// read such a table's manifests.
pub fn unreadable_partition_field(table: &Table) -> Option<String> {
    table
        .metadata()
        .default_partition_spec()
        .fields()
        .iter()
        .find(|f| !layout::is_avro_name(&f.name))
        .map(|f| f.name.clone())
}

fn unreadable_error(table: &Table, field: &str) -> Error {
    Error::new(
        ErrorKind::Schema,
        format!(
            "Iceberg table {} has the partition field `{field}`, which is not a valid Avro name: no engine can read its manifests",
            table.identifier()
        ),
    )
}

/// Replaces a table whose manifests nobody can read (see
/// [`unreadable_partition_field`]) by a new one with a valid partition field
/// name.  Safe because no batch of it ever read back, so none of its rows was
/// deleted from Postgres: refused unless the table archives this source and
/// every snapshot is a permafrost batch.
async fn repair_unreadable(
    catalog: &dyn Catalog,
    cfg: &TableConfig,
    src: &SourceTable,
    ident: &TableIdent,
    table: &Table,
) -> Result<Table> {
    let field = unreadable_partition_field(table).unwrap_or_default();
    let md = table.metadata();
    let ours = md.properties().get(props::SOURCE) == Some(&src.source_id())
        && md.snapshots().all(|s| {
            s.summary()
                .additional_properties
                .contains_key(crate::ledger::keys::BATCH_ID)
        });
    if !ours {
        return Err(unreadable_error(table, &field).with_hint(
            "it holds snapshots permafrost did not write, so it is not replaced automatically; drop it in your engine and run `archive` again",
        ));
    }
    tracing::warn!(
        "replacing Iceberg table {ident}: its partition field `{field}` is not a valid Avro name, so its {} snapshot(s) never read back and none of their rows was deleted from {}",
        md.snapshots().count(),
        src.qualified()
    );
    catalog
        .drop_table(ident)
        .await
        .map_err(|e| Error::iceberg(format!("cannot drop the unreadable table {ident}"), e))?;
    create(catalog, cfg, src, ident).await
}

/// The table archives this source and is partitioned by the configured
/// transform of the time column.
fn check_layout(cfg: &TableConfig, src: &SourceTable, table: &Table) -> Result<()> {
    let md = table.metadata();
    let ident = table.identifier();
    if let Some(recorded) = md.properties().get(props::SOURCE)
        && recorded != &src.source_id()
    {
        return Err(incompatible(ident, src, format!("it archives {recorded}")));
    }
    if let Some(field) = unreadable_partition_field(table) {
        return Err(unreadable_error(table, &field).with_hint(format!(
            "run `permafrost archive -t {}`: it replaces the table (its batches never read back, so their rows are all still in Postgres)",
            cfg.source_name()
        )));
    }
    let schema = md.current_schema();
    let time_name = &src.time_column().name;
    // The time column may have been renamed: find its field by the partition's source id.
    let spec = md.default_partition_spec();
    let fields = spec.fields();
    let time_field = fields.first().and_then(|f| schema.field_by_id(f.source_id));
    let ok = fields.len() == 1
        && time_field.is_some()
        && fields[0].transform == cfg.partition_by.transform();
    if !ok {
        let desc: Vec<String> = fields
            .iter()
            .map(|f| format!("{}({})", f.transform, f.source_id))
            .collect();
        return Err(incompatible(
            ident,
            src,
            format!(
                "it is partitioned by [{}], not {}({})",
                desc.join(", "),
                cfg.partition_by.name(),
                time_name
            ),
        ));
    }
    Ok(())
}

/// Checks an existing table against the source and prepares the write layout.
pub fn bind(
    cfg: &TableConfig,
    src: &SourceTable,
    ident: TableIdent,
    table: Table,
) -> Result<ArchiveTable> {
    let md = table.metadata();
    let schema = md.current_schema().clone();
    let incompatible = |what: String| {
        Error::new(ErrorKind::Schema, format!("Iceberg table {ident} does not match {}: {what}", src.qualified()))
            .with_hint("point `namespace`/`table` of this table at a new Iceberg table, or align the source; nothing was written")
    };
    if let Some(recorded) = md.properties().get(props::SOURCE)
        && recorded != &src.source_id()
    {
        return Err(incompatible(format!("it archives {recorded}")));
    }
    if let Some(bad) = src.unsupported().into_iter().next() {
        return Err(
            Error::new(ErrorKind::Schema, format!("{}: {bad}", src.qualified()))
                .with_hint("permafrost refuses columns it cannot store losslessly; nothing was changed (see README, \"Types\")"),
        );
    }
    let archived: Vec<_> = src.archived_columns().collect();
    for c in &archived {
        let kind = c.kind().map_err(|e| Error::new(ErrorKind::Schema, e))?;
        let Some(field) = schema.field_by_name(&c.name) else {
            return Err(incompatible(format!(
                "column `{}` is not in the Iceberg schema",
                c.name
            )));
        };
        if !kind.matches_iceberg(&field.field_type) {
            return Err(incompatible(format!(
                "column `{}` is {} in Postgres ({}) but {} in Iceberg",
                c.name,
                c.pg_type,
                kind.describe(),
                field.field_type
            )));
        }
        if field.required && !c.not_null {
            return Err(incompatible(format!(
                "column `{}` is required in Iceberg but nullable in Postgres",
                c.name
            )));
        }
    }
    for f in schema.as_struct().fields() {
        if !archived.iter().any(|c| c.name == f.name) {
            return Err(incompatible(format!(
                "Iceberg column `{}` is not archived from the source table",
                f.name
            )));
        }
    }
    // Write order = Iceberg schema order.
    let mut columns = Vec::new();
    let mut kinds = Vec::new();
    let mut select = Vec::new();
    for f in schema.as_struct().fields() {
        let c = archived
            .iter()
            .find(|c| c.name == f.name)
            .ok_or_else(|| Error::internal("column vanished"))?;
        let m = c
            .mapping
            .clone()
            .map_err(|e| Error::new(ErrorKind::Schema, e))?;
        let quoted = crate::filter::quote_ident(&c.name);
        select.push(match &m.cast {
            Some(cast) => format!("{quoted}::{cast}"),
            None => quoted,
        });
        columns.push(c.name.clone());
        kinds.push(m.kind);
    }
    let time_name = &src.time_column().name;
    let time_index = columns
        .iter()
        .position(|c| c == time_name)
        .ok_or_else(|| Error::internal("time column vanished"))?;
    let time_field = schema
        .field_by_name(time_name)
        .ok_or_else(|| Error::internal("time field vanished"))?;
    let spec = md.default_partition_spec();
    let fields = spec.fields();
    let ok = fields.len() == 1
        && fields[0].source_id == time_field.id
        && fields[0].transform == cfg.partition_by.transform();
    if !ok {
        let desc: Vec<String> = fields
            .iter()
            .map(|f| format!("{}({})", f.transform, f.source_id))
            .collect();
        return Err(incompatible(format!(
            "it is partitioned by [{}], not {}({})",
            desc.join(", "),
            cfg.partition_by.name(),
            time_name
        )));
    }
    let partition_field = fields[0].name.clone();
    let arrow_schema = Arc::new(
        iceberg::arrow::schema_to_arrow_schema(&schema)
            .map_err(|e| Error::iceberg("cannot derive the Arrow schema", e))?,
    );
    Ok(ArchiveTable {
        ident,
        table,
        arrow_schema,
        columns,
        kinds,
        select,
        time_index,
        granularity: cfg.partition_by,
        partition_field,
    })
}

impl ArchiveTable {
    /// The select list in write order: quoted names, with casts where the
    /// mapping reads a text (or other) form.
    pub fn select_list(&self) -> String {
        self.select.join(", ")
    }
}
