//! Committing metadata updates that iceberg-rust 0.10.1 has no transaction
//! action for (renaming a column, widening a type, making a column optional).
//!
//! The updates are iceberg-rust's own [`TableUpdate`]s and the requirements
//! its [`TableRequirement`]s; iceberg-rust applies them to the metadata and
//! serializes it.  What this module adds is only the catalog's side of a
//! commit, the same two steps iceberg-rust's catalogs take:
//! - **SQL catalog**: write the new metadata file next to the current one and
//!   swap the table's pointer row with a compare-and-set on the old location;
//! - **REST catalog**: `POST /v1/{prefix}/namespaces/{ns}/tables/{table}` with
//!   the requirements and updates (the REST spec's commit).
//!
//! A lost race (another writer committed first) is a `CatalogCommitConflicts`
//! error; nothing is half-applied.
//!
//! The clients are the run's [`CatalogHandle`]'s, opened on its first such
//! commit and kept (the Glue client is the catalog's own).  The REST access
//! token is asked for on each commit (iceberg-rust does not share its own;
//! these commits are rare: schema changes, maintenance), so a long-lived
//! `serve` or `run` never commits with an expired one.

use std::collections::HashMap;
use std::str::FromStr;

use iceberg::table::Table;
use iceberg::{MetadataLocation, TableRequirement, TableUpdate};
use serde_json::json;

use super::catalog::{CatalogHandle, Committer};
use super::rest_token::{bearer, renewable, rest_root, table_url, unreachable};
use crate::config::{CatalogConfig, CatalogKind};
use crate::error::{Error, ErrorKind, Result};

fn ice(what: &str, e: iceberg::Error) -> Error {
    Error::iceberg(what, e)
}

/// Commits `updates` to `table` under `requirements`.
pub async fn commit(
    catalog: &CatalogHandle,
    table: &Table,
    requirements: Vec<TableRequirement>,
    updates: Vec<TableUpdate>,
) -> Result<()> {
    for r in &requirements {
        r.check(Some(table.metadata())).map_err(|e| {
            ice("the table changed under us", e)
                .with_hint("run again")
                .as_conflict()
        })?;
    }
    let committer = catalog
        .committer
        .get_or_try_init(|| open_committer(catalog))
        .await?;
    match committer {
        Committer::Sql(pool) => commit_sql(&catalog.cfg, pool, table, updates).await,
        Committer::Rest { .. } => {
            let rest = Rest::of(catalog, committer)
                .ok_or_else(|| Error::internal("a REST committer that is not"))?;
            commit_rest(&rest, table, requirements, updates).await
        }
        Committer::Glue => {
            let glue = catalog
                .glue
                .as_deref()
                .ok_or_else(|| Error::internal("a Glue catalog handle without its client"))?;
            commit_glue(glue, table, updates).await
        }
    }
}

/// Opens the clients the catalog's kind commits with.
async fn open_committer(catalog: &CatalogHandle) -> Result<Committer> {
    let cfg = &catalog.cfg;
    Ok(match cfg.kind {
        CatalogKind::Glue => Committer::Glue,
        CatalogKind::Sql => {
            sqlx::any::install_default_drivers();
            let pool = sqlx::any::AnyPoolOptions::new()
                .max_connections(1)
                .connect(&cfg.properties["uri"])
                .await
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Catalog,
                        format!("cannot open the SQL catalog: {e}"),
                    )
                })?;
            Committer::Sql(pool)
        }
        CatalogKind::Rest => {
            let auth = catalog
                .rest
                .as_ref()
                .ok_or_else(|| Error::internal("a REST catalog handle without its client"))?;
            Committer::Rest {
                root: auth
                    .root
                    .get_or_try_init(|| rest_root(cfg, &auth.client, &auth.tokens, &auth.uri))
                    .await?
                    .clone(),
            }
        }
    })
}

/// `table`'s metadata with `updates` applied by iceberg-rust.
pub(crate) fn apply_updates(
    table: &Table,
    updates: Vec<TableUpdate>,
) -> iceberg::Result<iceberg::spec::TableMetadata> {
    let current = table.metadata_location_result()?.to_string();
    let mut builder = table.metadata().clone().into_builder(Some(current));
    for u in updates {
        builder = u.apply(builder)?;
    }
    Ok(builder.build()?.metadata)
}

/// The table's current metadata location, and its metadata with `updates`
/// applied ([`apply_updates`]).
fn applied(
    table: &Table,
    updates: Vec<TableUpdate>,
) -> Result<(String, iceberg::spec::TableMetadata)> {
    let current = table
        .metadata_location()
        .ok_or_else(|| Error::internal("the table has no metadata location"))?
        .to_string();
    let metadata =
        apply_updates(table, updates).map_err(|e| ice("cannot apply the schema update", e))?;
    Ok((current, metadata))
}

async fn commit_glue(
    glue: &super::glue::GlueCatalog,
    table: &Table,
    updates: Vec<TableUpdate>,
) -> Result<()> {
    let (current, metadata) = applied(table, updates)?;
    glue.swap(table.identifier(), &current, metadata.into())
        .await
        .map_err(|e| ice("cannot commit the schema update", e))?;
    Ok(())
}

async fn commit_sql(
    cfg: &CatalogConfig,
    pool: &sqlx::AnyPool,
    table: &Table,
    updates: Vec<TableUpdate>,
) -> Result<()> {
    let (_, metadata) = applied(table, updates)?;
    swap_sql(cfg, pool, table, metadata.into())
        .await
        .map_err(|e| match e.kind() {
            iceberg::ErrorKind::CatalogCommitConflicts => Error::new(
                ErrorKind::Catalog,
                format!(
                    "commit conflict on {}: another writer committed first",
                    table.identifier()
                ),
            )
            .with_hint("run again")
            .as_conflict(),
            _ => ice("cannot commit the schema update", e),
        })?;
    Ok(())
}

/// Whether a commit to `catalog` is the client's work ([`swap`]): SQL and
/// Glue.  A REST catalog's server applies the updates itself.
pub(crate) fn swaps(catalog: &CatalogHandle) -> bool {
    catalog.cfg.kind != CatalogKind::Rest
}

/// Points the catalog at `metadata` instead of `table`'s metadata, if it
/// still points at `table`'s: the new file is written next to the current
/// one, then swapped in with a compare-and-set on the current location (the
/// SQL catalog's row; Glue's table version).  What iceberg-rust's SQL
/// catalog and ours do on a commit, without loading the table again first:
/// the caller holds it.  A catalog that points elsewhere (another writer
/// committed since `table` was loaded) is a retryable
/// `CatalogCommitConflicts`, and nothing is swapped; the written file stays
/// unreferenced (an orphan for `maintain`).  Only where [`swaps`].
pub(crate) async fn swap(
    catalog: &CatalogHandle,
    table: &Table,
    metadata: iceberg::spec::TableMetadataRef,
) -> iceberg::Result<Table> {
    let unexpected = |e: String| iceberg::Error::new(iceberg::ErrorKind::Unexpected, e);
    if let Some(glue) = catalog.glue.as_deref() {
        let current = table.metadata_location_result()?.to_string();
        return glue.swap(table.identifier(), &current, metadata).await;
    }
    let committer = catalog
        .committer
        .get_or_try_init(|| open_committer(catalog))
        .await
        .map_err(|e| unexpected(e.to_string()))?;
    match committer {
        Committer::Sql(pool) => swap_sql(&catalog.cfg, pool, table, metadata).await,
        _ => Err(unexpected(format!(
            "the {} has no pointer to swap",
            catalog.cfg.describe()
        ))),
    }
}

/// [`swap`] on a SQL catalog's database.
async fn swap_sql(
    cfg: &CatalogConfig,
    pool: &sqlx::AnyPool,
    table: &Table,
    metadata: iceberg::spec::TableMetadataRef,
) -> iceberg::Result<Table> {
    let current = table.metadata_location_result()?.to_string();
    let next = MetadataLocation::from_str(&current)?
        .with_next_version()
        .with_new_metadata(&metadata);
    metadata.write_to(table.file_io(), &next).await?;

    let postgres = cfg.properties["uri"].starts_with("postgres");
    let p = |n: usize| {
        if postgres {
            format!("${n}")
        } else {
            "?".to_string()
        }
    };
    let sql = format!(
        "UPDATE iceberg_tables SET metadata_location = {}, previous_metadata_location = {} \
         WHERE catalog_name = {} AND table_namespace = {} AND table_name = {} \
         AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL) AND metadata_location = {}",
        p(1),
        p(2),
        p(3),
        p(4),
        p(5),
        p(6)
    );
    let ident = table.identifier();
    let next = next.to_string();
    let done = sqlx::query(&sql)
        .bind(&next)
        .bind(&current)
        .bind(&cfg.name)
        .bind(ident.namespace().join("."))
        .bind(ident.name())
        .bind(&current)
        .execute(pool)
        .await
        .map_err(|e| {
            iceberg::Error::new(
                iceberg::ErrorKind::Unexpected,
                format!("cannot update the SQL catalog: {e}"),
            )
        })?;
    if done.rows_affected() != 1 {
        return Err(iceberg::Error::new(
            iceberg::ErrorKind::CatalogCommitConflicts,
            format!("{ident} changed in the SQL catalog since it was loaded"),
        )
        .with_retryable(true));
    }
    Table::builder()
        .identifier(ident.clone())
        .metadata(metadata)
        .metadata_location(next)
        .file_io(table.file_io().clone())
        .runtime(iceberg::Runtime::try_current()?)
        .build()
}

/// The REST catalog's side of a commit: its client, the `…/v1[/{prefix}]`
/// root, and the token commits authenticate with.
struct Rest<'a> {
    cfg: &'a CatalogConfig,
    client: &'a reqwest::Client,
    root: &'a url::Url,
    token: &'a super::rest_token::TokenCache,
}

impl<'a> Rest<'a> {
    /// The REST side of `committer`, opened for `catalog`; `None` for
    /// another kind.
    fn of(catalog: &'a CatalogHandle, committer: &'a Committer) -> Option<Self> {
        match (committer, &catalog.rest) {
            (Committer::Rest { root }, Some(auth)) => Some(Self {
                cfg: &catalog.cfg,
                client: &auth.client,
                root,
                token: &auth.tokens,
            }),
            _ => None,
        }
    }

    /// `POST …/namespaces/{ns}/tables/{table}` with the requirements and
    /// updates (the REST spec's commit), with the configured `header.*`
    /// headers; a refused token (401) is renewed and the commit sent once
    /// more (a 401 applied nothing).  Returns the status and the body.
    async fn post(
        &self,
        ident: &iceberg::TableIdent,
        requirements: &[TableRequirement],
        updates: &[TableUpdate],
    ) -> Result<(reqwest::StatusCode, String)> {
        let url = table_url(self.root, ident)?;
        let body = json!({
            "identifier": {"namespace": ident.namespace().as_ref(), "name": ident.name()},
            "requirements": requirements,
            "updates": updates,
        });
        let mut refused = None;
        loop {
            let token = self
                .token
                .get(self.client, self.cfg, refused.as_ref())
                .await?;
            let mut rb = bearer(self.client.post(url.clone()).json(&body), &token.value);
            for (k, v) in &self.cfg.properties {
                if let Some(name) = k.strip_prefix("header.") {
                    rb = rb.header(name, v);
                }
            }
            let resp = rb.send().await.map_err(unreachable)?;
            let status = resp.status();
            if status == reqwest::StatusCode::UNAUTHORIZED
                && refused.is_none()
                && renewable(self.cfg)
            {
                refused = Some(token);
                continue;
            }
            let text = resp.text().await.map_err(unreachable)?;
            return Ok((status, text));
        }
    }
}

/// The `error.message` of a REST error response, else its body.
fn rest_message(text: String) -> String {
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or(text)
}

async fn commit_rest(
    rest: &Rest<'_>,
    table: &Table,
    requirements: Vec<TableRequirement>,
    updates: Vec<TableUpdate>,
) -> Result<()> {
    let ident = table.identifier();
    let (status, text) = rest.post(ident, &requirements, &updates).await?;
    if status.is_success() {
        return Ok(());
    }
    let message = rest_message(text);
    let e = Error::new(
        ErrorKind::Catalog,
        format!("the REST catalog refused the schema commit on {ident} ({status}): {message}"),
    );
    Err(if status.as_u16() == 409 {
        e.with_hint("another writer committed first; run again")
            .as_conflict()
    } else {
        e
    })
}

/// A batch commit to the REST catalog ([`super::commit`]): `requirements`
/// and `updates` onto `table`, answered with the table the catalog serves
/// after it (with `table`'s `FileIO`).  A conflict (409: `main` moved) is a
/// `CatalogCommitConflicts`, any other refusal or a lost answer
/// `Unexpected`: the caller reloads to learn whether it landed.
pub(crate) async fn send_rest(
    catalog: &CatalogHandle,
    table: &Table,
    requirements: Vec<TableRequirement>,
    updates: Vec<TableUpdate>,
) -> iceberg::Result<Table> {
    let unexpected = |e: String| iceberg::Error::new(iceberg::ErrorKind::Unexpected, e);
    let committer = catalog
        .committer
        .get_or_try_init(|| open_committer(catalog))
        .await
        .map_err(|e| unexpected(e.to_string()))?;
    let rest = Rest::of(catalog, committer).ok_or_else(|| {
        unexpected(format!(
            "the {} is not a REST catalog",
            catalog.cfg.describe()
        ))
    })?;
    let ident = table.identifier();
    let (status, text) = rest
        .post(ident, &requirements, &updates)
        .await
        .map_err(|e| unexpected(e.to_string()))?;
    if !status.is_success() {
        let kind = if status == reqwest::StatusCode::CONFLICT {
            iceberg::ErrorKind::CatalogCommitConflicts
        } else {
            iceberg::ErrorKind::Unexpected
        };
        let message = rest_message(text);
        return Err(iceberg::Error::new(
            kind,
            format!("the REST catalog answered the commit on {ident} with {status}: {message}"),
        ));
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "metadata-location")]
        metadata_location: String,
        metadata: iceberg::spec::TableMetadata,
    }
    let answer: Answer = serde_json::from_str(&text)
        .map_err(|e| unexpected(format!("bad commit answer from the REST catalog: {e}")))?;
    Table::builder()
        .identifier(ident.clone())
        .metadata(answer.metadata)
        .metadata_location(answer.metadata_location)
        .file_io(table.file_io().clone())
        .runtime(iceberg::Runtime::try_current()?)
        .build()
}

/// `SetProperties` for one key.
pub fn set_property(key: &str, value: String) -> TableUpdate {
    TableUpdate::SetProperties {
        updates: HashMap::from([(key.to_string(), value)]),
    }
}
