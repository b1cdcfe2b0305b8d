//! `check`: is the configuration usable?  Config valid, Postgres and the
//! catalog reachable with our credentials, every table present with a
//! timestamp time column, supported column types, the privileges archiving
//! needs, an existing Iceberg table compatible with the source, and the
//! warehouse storage taking a write and a read where the table's data files
//! go.  Writes nothing but that one probe object, which it deletes
//! ([`crate::lake::probe`]); creates no table or namespace.

use serde::Serialize;

use crate::config::{Config, TableConfig};
use crate::error::{Error, Result};
use crate::lake;
use crate::plan::window::Micros;
use crate::source;

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub ok: bool,
    pub postgres: Probe,
    pub catalog: Probe,
    /// Every HTTP endpoint the config names (catalog, OAuth2, S3, webhook)
    /// and the TLS it negotiates.
    pub endpoints: Vec<crate::http::EndpointTls>,
    pub tables: Vec<TableCheck>,
}

/// Reachability of one service.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub ok: bool,
    pub target: String,
    /// What the connection negotiated (Postgres), e.g. `TLSv1.3, certificate verified`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    pub error: Option<String>,
    pub hint: Option<String>,
}

/// One column and its mapping.
#[derive(Debug, Clone, Serialize)]
pub struct ColumnCheck {
    pub name: String,
    pub postgres_type: String,
    pub not_null: bool,
    /// The Iceberg type, or null when unsupported or excluded.
    pub iceberg_type: Option<String>,
    /// `binary`, `text`, `numeric`, `int8`: how the value is read.
    pub encoding: Option<String>,
    /// Listed in `exclude_columns`.
    pub excluded: bool,
    pub error: Option<String>,
}

/// One table.
#[derive(Debug, Clone, Serialize)]
pub struct TableCheck {
    pub source: String,
    pub iceberg_table: String,
    pub ok: bool,
    pub errors: Vec<String>,
    pub hints: Vec<String>,
    pub warnings: Vec<String>,
    pub time_column: String,
    pub partition_by: String,
    pub primary_key: Vec<String>,
    pub columns: Vec<ColumnCheck>,
    /// `exists`, `will be created`, or empty when unknown.
    pub iceberg_state: String,
    /// The warehouse location a probe object was written to, read back from
    /// and deleted from; empty when not probed (see `storage_note`).
    pub storage: String,
    /// Why the storage was not probed, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_note: Option<String>,
}

fn probe_err(target: String, e: &Error) -> Probe {
    Probe {
        ok: false,
        target,
        tls: None,
        error: Some(e.message().to_string()),
        hint: e.hint().map(str::to_string),
    }
}

/// The HTTP endpoints of `cfg` with the CA bundle and hints of the client
/// that talks to each, probed one after another.
async fn probe_endpoints(cfg: &Config) -> Vec<crate::http::EndpointTls> {
    use crate::config::CatalogKind;
    use crate::error::TlsHints;
    let props = &cfg.catalog.properties;
    let catalog_ca = crate::http::CA_CERT_KEYS
        .iter()
        .find_map(|k| props.get(*k))
        .map(std::path::PathBuf::from);
    let mut list: Vec<(&'static str, String, Option<std::path::PathBuf>, &TlsHints)> = vec![];
    match cfg.catalog.kind {
        CatalogKind::Rest => {
            for (role, key) in [("catalog", "uri"), ("oauth2", "oauth2-server-uri")] {
                if let Some(u) = props.get(key) {
                    list.push((role, u.clone(), catalog_ca.clone(), &TlsHints::CATALOG));
                }
            }
        }
        CatalogKind::Glue => {
            let uri = props.get("uri").cloned().or_else(|| {
                props
                    .get("region_name")
                    .map(|r| format!("https://glue.{r}.amazonaws.com"))
            });
            if let Some(u) = uri {
                list.push(("catalog", u, None, &TlsHints::SYSTEM));
            }
        }
        CatalogKind::Sql => {}
    }
    if let Some(u) = props.get("s3.endpoint") {
        list.push(("s3", u.clone(), None, &TlsHints::SYSTEM));
    }
    if let Some(u) = &cfg.notify.webhook_url {
        list.push(("webhook", u.clone(), None, &TlsHints::SYSTEM));
    }
    let mut out = Vec::new();
    for (role, url, ca, hints) in list {
        out.push(crate::http::probe_tls(role, &url, ca, "catalog.ssl.ca-cert", hints).await);
    }
    out
}

/// Runs every check; never fails on what it checks (failures are in the report).
pub async fn check(cfg: &Config, table: Option<&str>) -> Result<CheckReport> {
    let tables = cfg.select_tables(table)?;
    let pg_target = cfg.database.describe();
    let (client, server_now) = match source::connect(&cfg.database).await {
        Ok(c) => match source::server_facts(&c).await {
            Ok((_, now)) => (c, now),
            Err(e) => return Ok(failed_report(probe_err(pg_target, &e), None)),
        },
        Err(e) => return Ok(failed_report(probe_err(pg_target, &e), None)),
    };
    let postgres = Probe {
        ok: true,
        target: pg_target,
        tls: source::tls_description(&client, &cfg.database).await.ok(),
        error: None,
        hint: None,
    };
    let cat_target = cfg.catalog.describe();
    let opened = match lake::open_catalog(&cfg.catalog).await {
        Ok(c) => lake::catalog::ping(c.iceberg(), &cfg.catalog)
            .await
            .map(|()| c),
        Err(e) => Err(e),
    };
    let catalog = match opened {
        Ok(c) => c,
        Err(e) => return Ok(failed_report(postgres, Some(probe_err(cat_target, &e)))),
    };
    let endpoints = probe_endpoints(cfg).await;
    let catalog_probe = Probe {
        ok: true,
        target: cat_target,
        tls: endpoints
            .iter()
            .find(|e| e.role == "catalog")
            .map(|e| e.tls.clone()),
        error: None,
        hint: None,
    };
    let mut out = Vec::new();
    for t in &tables {
        out.push(check_table(&client, &catalog, t, (server_now, cfg)).await);
    }
    Ok(CheckReport {
        ok: out.iter().all(|t| t.ok) && endpoints.iter().all(|e| e.ok),
        postgres,
        catalog: catalog_probe,
        endpoints,
        tables: out,
    })
}

impl TableCheck {
    fn fail(&mut self, e: &Error) {
        self.refuse(e.message().to_string(), e.hint().map(str::to_string));
    }

    /// Fails the table with `error`, and its `hint`.
    fn refuse(&mut self, error: String, hint: Option<String>) {
        self.ok = false;
        self.errors.push(error);
        self.hints.extend(hint);
    }
}

/// Every check of one table, in order: the source's shape and types, its
/// windows, privileges, and the archive table's state.
async fn check_table(
    client: &tokio_postgres::Client,
    catalog: &lake::catalog::CatalogHandle,
    t: &TableConfig,
    (server_now, cfg): (Micros, &Config),
) -> TableCheck {
    let pool_size = cfg.database.pool_size;
    let mut tc = TableCheck {
        source: t.source_name(),
        iceberg_table: t.iceberg_name(),
        ok: true,
        errors: vec![],
        hints: vec![],
        warnings: vec![],
        time_column: t.timestamp_column.clone(),
        partition_by: t.partition_by.name().to_string(),
        primary_key: vec![],
        columns: vec![],
        iceberg_state: String::new(),
        storage: String::new(),
        storage_note: None,
    };
    let src = match source::introspect::introspect(client, t).await {
        Ok(src) => src,
        Err(e) => {
            tc.fail(&e);
            return tc;
        }
    };
    tc.primary_key = src.primary_key.clone();
    tc.columns = src.columns.iter().map(column_check).collect();
    check_types(&mut tc, &src);
    check_time_column(&mut tc, t, &src);
    let cutoff = source::windows::cutoff(t.partition_by, server_now, t.lag);
    match source::windows::unarchivable_counts(client, &src, cutoff).await {
        Ok(left) if left.infinite_time > 0 => tc.warnings.push(format!(
            "{} row(s) have an infinite `{}` (infinity or -infinity): they belong to no window and stay in Postgres",
            left.infinite_time, t.timestamp_column
        )),
        Ok(_) => {}
        Err(e) => tc.fail(&source::explain_lock_timeout(client, &t.quoted_name(), e).await),
    }
    match source::catalog::privileges(client, src.oid).await {
        Ok(p) => check_privileges(&mut tc, &src, p),
        Err(e) => tc.fail(&e),
    }
    match source::catalog::connection_limits(client).await {
        Ok(limits) => tc.warnings.extend(connection_warning(
            run_connections(t, pool_size),
            t.parallel_windows.max(1) + 1,
            &limits,
        )),
        Err(e) => tc.fail(&e),
    }
    match memory_warning(client, &src, t, cfg.global.memory_limit).await {
        Ok(warning) => tc.warnings.extend(warning),
        Err(e) => tc.fail(&e),
    }
    match source::catalog::read_only(client).await {
        Ok(Some(why)) => tc.warnings.push(format!(
            "the server takes no writes ({why}): archiving with deletion and restoring fail there; {}",
            crate::error::READ_ONLY_HINT
        )),
        Ok(None) => {}
        Err(e) => tc.fail(&e),
    }
    match source::catalog::delete_effects(client, src.oid).await {
        Ok(effects) => check_delete_effects(&mut tc, &src, &effects),
        Err(e) => tc.fail(&e),
    }
    if t.drop_partitions && src.relkind == 'p' {
        match source::partitions::held_by_others(client, &src.qualified()).await {
            Ok(Some(why)) => tc.warnings.push(format!(
                "`drop_partitions`: no partition is dropped while {why}; their rows are deleted instead"
            )),
            Ok(None) => {}
            Err(e) => tc.fail(&e),
        }
    }
    if src.unsupported().is_empty() {
        match lake::table::inspect_table(catalog.iceberg(), t, &src).await {
            Ok(state) => {
                tc.iceberg_state = describe_state(&state);
                probe_storage(&mut tc, catalog, t, &state).await;
            }
            Err(e) => tc.fail(&e),
        }
    }
    tc
}

/// What `archive` logs when the table's rows, by Postgres's statistics,
/// are wide enough that `global.memory_limit` holds fewer extraction slots
/// than `parallel_windows` asks; nothing without statistics (a run then
/// learns the width from its first batch).
async fn memory_warning(
    client: &tokio_postgres::Client,
    src: &source::SourceTable,
    t: &TableConfig,
    limit: u64,
) -> Result<Option<String>> {
    if t.parallel_windows < 2 {
        return Ok(None);
    }
    let Some(bytes) = source::windows::row_bytes(client, src).await? else {
        return Ok(None);
    };
    Ok(
        crate::archive::memory::fewer_slots(limit, Some(bytes), t.parallel_windows).map(|f| {
            format!("{f}: the others wait; raise it (and the container's memory) for more")
        }),
    )
}

/// Writes, reads back and deletes a probe object where the table's data
/// files go: its data path, or (no table yet) where the catalog would put
/// it.  A REST catalog's new table is not probed (its storage access comes
/// with the table).
async fn probe_storage(
    tc: &mut TableCheck,
    catalog: &lake::catalog::CatalogHandle,
    t: &TableConfig,
    state: &lake::table::TableState,
) {
    use lake::table::TableState;
    let missing = async || match lake::table::ident(t) {
        Ok(ident) => catalog.new_table_io(&ident).await,
        Err(_) => None,
    };
    let target = match state {
        TableState::Ready(at) => Some(lake::probe::ProbeTarget::of_table(&at.table)),
        TableState::Evolves { table, .. } => Some(lake::probe::ProbeTarget::of_table(table)),
        TableState::Missing => missing().await,
    };
    let Some(target) = target else {
        tc.storage_note = Some(
            "not probed: the REST catalog hands out storage access with a table; the first archive run proves it".into(),
        );
        return;
    };
    match lake::probe::probe(&target).await {
        Ok((location, left)) => {
            tc.storage = location;
            tc.warnings.extend(left);
        }
        Err(e) => tc.fail(&e),
    }
}

fn column_check(c: &source::SourceColumn) -> ColumnCheck {
    ColumnCheck {
        name: c.name.clone(),
        postgres_type: c.pg_type.clone(),
        not_null: c.not_null,
        iceberg_type: if c.excluded {
            None
        } else {
            c.mapping.as_ref().ok().map(|m| m.kind.describe())
        },
        encoding: c.mapping.as_ref().ok().map(|m| m.encoding().to_string()),
        excluded: c.excluded,
        error: if c.excluded {
            None
        } else {
            c.mapping.as_ref().err().cloned()
        },
    }
}

/// Columns permafrost cannot store losslessly fail the table.
fn check_types(tc: &mut TableCheck, src: &source::SourceTable) {
    let unsupported = src.unsupported();
    for u in &unsupported {
        tc.ok = false;
        tc.errors.push(format!("{}: {u}", src.qualified()));
    }
    if !unsupported.is_empty() {
        tc.hints.push(
            "permafrost refuses columns it cannot store losslessly; change the column's type or archive another table (see README, \"Types\")".into(),
        );
    }
}

/// An unindexed or nullable time column is a warning, not a failure.
fn check_time_column(tc: &mut TableCheck, t: &TableConfig, src: &source::SourceTable) {
    if !src.time_indexed {
        tc.warnings.push(format!(
            "no index leads with `{}`: finding windows and deleting them will scan the table",
            t.timestamp_column
        ));
    }
    if !src.time_column().not_null {
        tc.warnings.push(format!(
            "`{}` is nullable: rows with a NULL time are never archived",
            t.timestamp_column
        ));
    }
}

/// The connections an archive run of `t` opens at most: its own, and its
/// batch workers when `parallel_windows` > 1 (see `archive::workers`; a
/// move's, which are more than a copy's).
fn run_connections(t: &TableConfig, pool_size: usize) -> usize {
    let move_ = crate::ledger::BatchMode::Move;
    match crate::archive::worker_count(move_, t.parallel_windows, pool_size, usize::MAX) {
        n if n < 2 => 1,
        n => n + 1,
    }
}

/// The warning when Postgres would admit fewer connections now than an
/// archive run (`archive`) or a restore (`restore`) of the table opens, by
/// the tightest of `limits` (what, limit, connections counted now — this
/// check's among them, which a run would not need).  Runs go on with those
/// admitted, so it is a warning.  Pure.
fn connection_warning(
    archive: usize,
    restore: usize,
    limits: &[(String, i64, i64)],
) -> Option<String> {
    let (what, limit, used) = limits.iter().min_by_key(|(_, l, u)| l - (u - 1))?;
    let room = limit - (used - 1);
    if room >= archive.max(restore) as i64 {
        return None;
    }
    Some(format!(
        "an archive run of this table opens up to {archive} connection(s) (its own, and \
         `parallel_windows` + 3 batch workers within `database.pool_size`), a restore \
         {restore}; {what} ({limit}, {} in use besides this check) admits {} now: runs go on \
         with fewer, more slowly, and a restore needs two",
        used - 1,
        room.max(0)
    ))
}

/// Archiving needs SELECT and DELETE on the table.
fn check_privileges(
    tc: &mut TableCheck,
    src: &source::SourceTable,
    p: source::catalog::Privileges,
) {
    if p.select && p.delete {
        return;
    }
    let missing: Vec<&str> = [
        (!p.select).then_some("SELECT"),
        (!p.delete).then_some("DELETE"),
    ]
    .into_iter()
    .flatten()
    .collect();
    tc.refuse(
        format!(
            "the connecting role lacks {} on {}",
            missing.join(" and "),
            src.qualified()
        ),
        Some(format!(
            "GRANT SELECT, DELETE ON {} TO <role>",
            src.qualified()
        )),
    );
}

/// What an archive's `DELETE` runs into: a rule or a published table
/// without a replica identity fails every batch (an error); foreign keys,
/// triggers and publications change what the `DELETE` does (warnings).
fn check_delete_effects(
    tc: &mut TableCheck,
    src: &source::SourceTable,
    fx: &source::catalog::DeleteEffects,
) {
    let t = src.qualified();
    if !fx.rules.is_empty() {
        tc.refuse(
            format!(
                "rule(s) {} rewrite DELETE on {t}: Postgres cannot run an archive's `COPY (DELETE … RETURNING …)` through a rule, so every batch fails",
                ticked(&fx.rules)
            ),
            Some(format!(
                "drop the rule or `ALTER TABLE {t} DISABLE RULE <name>`, or archive with --no-delete"
            )),
        );
    }
    if fx.no_replica_identity {
        tc.refuse(
            format!(
                "publication(s) {} publish the deletes of {t}, which has no replica identity: Postgres refuses to delete its rows",
                ticked(&fx.publications)
            ),
            Some(format!(
                "`ALTER TABLE {t} REPLICA IDENTITY FULL` (or give it a primary key), publish it without deletes (`publish = 'insert, update'`), or archive with --no-delete"
            )),
        );
    } else if !fx.publications.is_empty() {
        tc.warnings.push(format!(
            "publication(s) {} publish the deletes of {t}: their subscribers (logical replicas, change-data capture) see every archived row deleted",
            ticked(&fx.publications)
        ));
    }
    for k in &fx.referenced_by {
        tc.warnings.push(referencing_warning(&t, k));
    }
    for (name, before_row) in &fx.triggers {
        tc.warnings.push(if *before_row {
            format!(
                "trigger `{name}` runs before each row's DELETE: a row it skips (returns NULL) is not archived and stays in Postgres"
            )
        } else {
            format!("trigger `{name}` runs on every archive's DELETE of {t}")
        });
    }
}

/// The warning for one foreign key that references the table's rows.
fn referencing_warning(t: &str, k: &source::catalog::ReferencingKey) -> String {
    let by = format!(
        "{} references rows of {t} (foreign key `{}`, {})",
        k.table,
        k.constraint,
        k.action()
    );
    match k.on_delete {
        'c' => format!(
            "{by}: deleting archived rows deletes the rows of {} that reference them, which permafrost does not archive",
            k.table
        ),
        'n' | 'd' => format!(
            "{by}: deleting archived rows changes the rows of {} that reference them",
            k.table
        ),
        _ => format!(
            "{by}: a batch holding a row it still references fails and its rows stay; archive {} first, or run with --no-delete",
            k.table
        ),
    }
}

/// `a`, `b` as `` `a`, `b` ``.
fn ticked(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_state(state: &lake::table::TableState) -> String {
    match state {
        lake::table::TableState::Ready(_) => "exists".into(),
        lake::table::TableState::Missing => "will be created".into(),
        lake::table::TableState::Evolves { changes, .. } => {
            let c: Vec<String> = changes.iter().map(ToString::to_string).collect();
            format!("exists; the next archive run will {}", c.join(", "))
        }
    }
}

fn failed_report(postgres: Probe, catalog: Option<Probe>) -> CheckReport {
    CheckReport {
        ok: false,
        postgres,
        catalog: catalog.unwrap_or(Probe {
            ok: false,
            target: String::new(),
            tls: None,
            error: Some("not checked".into()),
            hint: None,
        }),
        endpoints: vec![],
        tables: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_warning_names_the_tightest_limit() {
        let limits = vec![
            ("role `a`'s CONNECTION LIMIT".to_string(), 3, 1),
            ("the server's max_connections".to_string(), 97, 40),
        ];
        let w = connection_warning(6, 5, &limits).expect("6 asked, 3 admitted");
        assert!(
            w.contains("role `a`'s CONNECTION LIMIT (3, 0 in use besides this check) admits 3 now"),
            "{w}"
        );
        assert_eq!(connection_warning(3, 3, &limits), None, "3 fit");
        // The server is the tightest: 10 slots, 8 taken by others and this check.
        let busy = vec![("the server's max_connections".to_string(), 10, 9)];
        let w = connection_warning(6, 3, &busy).expect("2 admitted");
        assert!(
            w.contains("(10, 8 in use besides this check) admits 2 now"),
            "{w}"
        );
        assert_eq!(connection_warning(1, 2, &[]), None, "no limit known");
    }
}
