//! `check`: is the configuration usable?  Config valid, Postgres and the
//! catalog reachable with our credentials, every table present with a
//! timestamp time column, supported column types, the privileges archiving
//! needs, and an existing Iceberg table compatible with the source.
//! Read-only: creates and deletes nothing.

use serde::Serialize;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::lake;
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
            Ok((_, now)) => (Some(c), now),
            Err(e) => return Ok(failed_report(probe_err(pg_target, &e), None)),
        },
        Err(e) => return Ok(failed_report(probe_err(pg_target, &e), None)),
    };
    let tls = match &client {
        Some(c) => source::tls_description(c, &cfg.database).await.ok(),
        None => None,
    };
    let postgres = Probe {
        ok: true,
        target: pg_target,
        tls,
        error: None,
        hint: None,
    };
    let cat_target = cfg.catalog.describe();
    let catalog = match lake::open_catalog(&cfg.catalog).await {
        Ok(c) => match lake::catalog::ping(c.as_ref(), &cfg.catalog).await {
            Ok(()) => Some(c),
            Err(e) => return Ok(failed_report(postgres, Some(probe_err(cat_target, &e)))),
        },
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
    let (Some(client), Some(catalog)) = (client, catalog) else {
        return Err(Error::internal("check lost its connections"));
    };

    let mut out = Vec::new();
    for t in &tables {
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
        };
        let fail = |tc: &mut TableCheck, e: &Error| {
            tc.ok = false;
            tc.errors.push(e.message().to_string());
            if let Some(h) = e.hint() {
                tc.hints.push(h.to_string());
            }
        };
        match source::introspect::introspect(&client, t).await {
            Err(e) => fail(&mut tc, &e),
            Ok(src) => {
                tc.primary_key = src.primary_key.clone();
                for c in &src.columns {
                    tc.columns.push(ColumnCheck {
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
                    });
                }
                for u in src.unsupported() {
                    tc.ok = false;
                    tc.errors.push(format!("{}: {u}", src.qualified()));
                }
                if !src.unsupported().is_empty() {
                    tc.hints.push(
                        "permafrost refuses columns it cannot store losslessly; change the column's type or archive another table (see README, \"Types\")".into(),
                    );
                }
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
                let cutoff = source::windows::cutoff(t.partition_by, server_now, t.lag);
                match source::windows::unarchivable_counts(&client, &src, cutoff).await {
                    Ok(left) if left.infinite_time > 0 => tc.warnings.push(format!(
                        "{} row(s) have an infinite `{}` (infinity or -infinity): they belong to no window and stay in Postgres",
                        left.infinite_time, t.timestamp_column
                    )),
                    Ok(_) => {}
                    Err(e) => {
                        let e = source::explain_lock_timeout(&client, &t.quoted_name(), e).await;
                        fail(&mut tc, &e)
                    }
                }
                match client
                    .query_one(
                        "SELECT has_table_privilege($1::oid, 'SELECT'), has_table_privilege($1::oid, 'DELETE')",
                        &[&src.oid],
                    )
                    .await
                {
                    Ok(r) => {
                        let (sel, del): (bool, bool) = (r.get(0), r.get(1));
                        if !sel || !del {
                            tc.ok = false;
                            tc.errors.push(format!(
                                "the connecting role lacks {} on {}",
                                [(!sel).then_some("SELECT"), (!del).then_some("DELETE")]
                                    .into_iter()
                                    .flatten()
                                    .collect::<Vec<_>>()
                                    .join(" and "),
                                src.qualified()
                            ));
                            tc.hints.push(format!("GRANT SELECT, DELETE ON {} TO <role>", src.qualified()));
                        }
                    }
                    Err(e) => fail(&mut tc, &Error::postgres("cannot check privileges", e)),
                }
                if src.unsupported().is_empty() {
                    match lake::table::inspect_table(catalog.as_ref(), t, &src).await {
                        Ok(lake::table::TableState::Ready(_)) => tc.iceberg_state = "exists".into(),
                        Ok(lake::table::TableState::Missing) => {
                            tc.iceberg_state = "will be created".into()
                        }
                        Ok(lake::table::TableState::Evolves { changes, .. }) => {
                            let c: Vec<String> = changes.iter().map(ToString::to_string).collect();
                            tc.iceberg_state =
                                format!("exists; the next archive run will {}", c.join(", "));
                        }
                        Err(e) => fail(&mut tc, &e),
                    }
                }
            }
        }
        out.push(tc);
    }
    Ok(CheckReport {
        ok: out.iter().all(|t| t.ok) && endpoints.iter().all(|e| e.ok),
        postgres,
        catalog: catalog_probe,
        endpoints,
        tables: out,
    })
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
