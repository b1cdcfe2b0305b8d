//! Building an iceberg-rust catalog from the `catalog` section.

use std::collections::HashMap;
use std::sync::Arc;

use iceberg::io::FileIOBuilder;
use iceberg::{Catalog, CatalogBuilder};
use iceberg_catalog_sql::SqlCatalogBuilder;

use super::glue::GlueCatalog;
use super::probe::ProbeTarget;
use super::rest_signer::Forwarder;
use super::rest_token::{RenewingRest, RestRoot, TokenCache};
use super::storage::WarehouseStorageFactory;
use crate::config::{CatalogConfig, CatalogKind};
use crate::error::{Error, ErrorKind, Result};

/// The catalog of one command (`archive`, `serve`, `run`, …): opened once
/// and shared: iceberg-rust's [`Catalog`] ([`CatalogHandle::iceberg`]); permafrost's own
/// metadata commits ([`super::metadata_commit`]: iceberg-rust 0.10.1 has no
/// public way to commit arbitrary table updates) go through it too, with
/// their clients opened once, on first use.
pub struct CatalogHandle {
    catalog: Arc<dyn Catalog>,
    pub(crate) cfg: CatalogConfig,
    /// For a Glue catalog, the same client (metadata commits swap through it).
    pub(crate) glue: Option<Arc<GlueCatalog>>,
    /// For a REST catalog, the HTTP client and the token that iceberg-rust's
    /// calls and permafrost's own commits share.
    pub(crate) rest: Option<RestAuth>,
    pub(crate) committer: tokio::sync::OnceCell<Committer>,
    /// The storage of the catalog's tables (see [`storage_of`]).
    storage: Arc<WarehouseStorageFactory>,
}

/// The clients of permafrost's own metadata commits, per catalog kind.
pub(crate) enum Committer {
    /// The SQL catalog's database (one connection).
    Sql(sqlx::AnyPool),
    /// The REST catalog: the `…/v1[/{prefix}]` URL its config endpoint
    /// gave (its client and token are the handle's [`RestAuth`]).
    Rest { root: url::Url },
    /// Glue commits through [`CatalogHandle::glue`].
    Glue,
}

impl CatalogHandle {
    /// iceberg-rust's catalog client.
    pub fn iceberg(&self) -> &dyn Catalog {
        self.catalog.as_ref()
    }

    /// Where the data files of `ident` would go if the table were created
    /// now (the namespace's `location`, else the catalog's default under
    /// the warehouse), and a FileIO for it — where permafrost holds the
    /// storage properties (SQL and Glue catalogs).  `None` for a REST
    /// catalog, which hands out storage access per table.
    pub async fn new_table_io(&self, ident: &iceberg::TableIdent) -> Option<ProbeTarget> {
        let (io, default) = match (&self.glue, self.cfg.kind) {
            (Some(glue), _) => glue.new_table_io(ident)?,
            (None, CatalogKind::Sql) => {
                let warehouse = self.cfg.properties.get("warehouse")?;
                let io = FileIOBuilder::new(self.storage.clone())
                    .with_props(self.cfg.properties.clone())
                    .build();
                let ns = ident.namespace().join("/");
                let w = warehouse.trim_end_matches('/');
                (io, format!("{w}/{ns}/{}", ident.name()))
            }
            _ => return None,
        };
        let ns_location = match self.catalog.get_namespace(ident.namespace()).await {
            Ok(ns) => ns.properties().get("location").cloned(),
            Err(_) => None,
        };
        let table = match ns_location {
            Some(l) => format!("{}/{}", l.trim_end_matches('/'), ident.name()),
            None => default,
        };
        Some(ProbeTarget {
            io,
            location: format!("{table}/data"),
        })
    }
}

/// Opens the configured catalog.  Properties are passed to iceberg-rust
/// unchanged; storage (`file://`, `s3://`) is chosen per path
/// ([`super::storage`]).
pub async fn open_catalog(cfg: &CatalogConfig) -> Result<Arc<CatalogHandle>> {
    let props: HashMap<String, String> = cfg.properties.clone().into_iter().collect();
    let storage = Arc::new(match cfg.kind {
        CatalogKind::Glue => WarehouseStorageFactory::default(),
        _ => storage_of(&props),
    });
    let Clients {
        catalog,
        glue,
        rest,
    } = open_client(cfg, props, storage.clone()).await?;
    Ok(Arc::new(CatalogHandle {
        catalog,
        cfg: cfg.clone(),
        glue,
        rest,
        committer: tokio::sync::OnceCell::new(),
        storage,
    }))
}

/// The storage of a SQL or REST catalog's tables: S3 without keys — none
/// in the config, none vended with the table — signs with the AWS credential
/// chain, as Glue's does (SSO, `credential_process`, `role_arn`, IRSA, ECS,
/// instance metadata), its keys held and renewed by [`crate::aws`] instead
/// of asked for again by every request (OpenDAL's own chain caches nothing
/// and runs no `credential_process`).  The chain is built when first asked,
/// so a local warehouse or vended keys never touch it.
fn storage_of(props: &HashMap<String, String>) -> WarehouseStorageFactory {
    match props.contains_key("s3.access-key-id") {
        true => WarehouseStorageFactory::default(),
        false => WarehouseStorageFactory::signed_by(crate::aws::s3_credentials_when_asked(
            props.get("s3.region").cloned(),
        )),
    }
}

/// A REST catalog's HTTP client and access token, one of each per handle.
pub(crate) struct RestAuth {
    pub(crate) client: reqwest::Client,
    pub(crate) tokens: Arc<TokenCache>,
    /// Where the catalog's requests go: its `uri`, or for one signed with
    /// SigV4 the forwarder that signs them (held here: it stops with the
    /// handle).
    pub(crate) uri: String,
    /// Its `…/v1[/{prefix}]`, shared with the catalog client.
    pub(crate) root: RestRoot,
    _signing: Option<Forwarder>,
}

/// The clients [`open_client`] opened.
struct Clients {
    catalog: Arc<dyn Catalog>,
    glue: Option<Arc<GlueCatalog>>,
    rest: Option<RestAuth>,
}

async fn open_client(
    cfg: &CatalogConfig,
    props: HashMap<String, String>,
    storage: Arc<WarehouseStorageFactory>,
) -> Result<Clients> {
    let factory = || storage.clone();
    let catalog: Arc<dyn Catalog> =
        match cfg.kind {
            CatalogKind::Glue => {
                let glue = Arc::new(GlueCatalog::new(cfg.name.clone(), props).await.map_err(
                    |e| Error::iceberg(format!("cannot open the {}", cfg.describe()), e),
                )?);
                return Ok(Clients {
                    catalog: glue.clone(),
                    glue: Some(glue),
                    rest: None,
                });
            }
            CatalogKind::Rest => {
                let client = crate::http::catalog_client(cfg)?;
                let tokens = Arc::new(TokenCache::default());
                let (props, signing) = signed(cfg, props, &client).await?;
                let uri = props["uri"].clone();
                let root = RestRoot::default();
                let rest = RenewingRest::new(
                    cfg,
                    props,
                    client.clone(),
                    tokens.clone(),
                    (factory(), root.clone()),
                );
                return Ok(Clients {
                    catalog: Arc::new(rest),
                    glue: None,
                    rest: Some(RestAuth {
                        client,
                        tokens,
                        uri,
                        root,
                        _signing: signing,
                    }),
                });
            }
            CatalogKind::Sql => {
                if let Some(path) = sqlite_path(&cfg.properties["uri"])
                    && let Some(dir) = std::path::Path::new(&path).parent()
                {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        Error::io(
                            format!(
                                "cannot create the directory of the SQLite catalog {}",
                                dir.display()
                            ),
                            e,
                        )
                    })?;
                }
                if let Some(dir) = cfg
                    .properties
                    .get("warehouse")
                    .and_then(|w| w.strip_prefix("file://"))
                {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        Error::io(format!("cannot create the warehouse directory {dir}"), e)
                    })?;
                }
                Arc::new(
                    SqlCatalogBuilder::default()
                        .with_storage_factory(factory())
                        .load(cfg.name.clone(), props)
                        .await
                        .map_err(|e| {
                            Error::iceberg(format!("cannot open the {}", cfg.describe()), e)
                        })?,
                )
            }
        };
    Ok(Clients {
        catalog,
        glue: None,
        rest: None,
    })
}

/// A REST catalog's properties as its clients use them: for one signed
/// with SigV4 ([`CatalogConfig::sigv4`]), the forwarder that signs its
/// requests is started and `uri` names it; else unchanged.
async fn signed(
    cfg: &CatalogConfig,
    mut props: HashMap<String, String>,
    client: &reqwest::Client,
) -> Result<(HashMap<String, String>, Option<Forwarder>)> {
    let Some(sigv4) = cfg.sigv4() else {
        return Ok((props, None));
    };
    let chain = crate::aws::ChainSettings {
        region: sigv4.region.as_deref(),
        profile: sigv4.profile.as_deref(),
        static_keys: sigv4
            .keys
            .as_ref()
            .map(|(id, secret, token)| (id.as_str(), secret.as_str(), token.as_deref())),
        endpoint: None,
    };
    let signer = crate::aws::RequestSigner::new(&chain, &sigv4.service).await?;
    let forwarder = Forwarder::start(&cfg.properties["uri"], signer, client.clone()).await?;
    props.insert("uri".into(), forwarder.local_uri().to_string());
    Ok((props, Some(forwarder)))
}

/// Checks the catalog answers (and accepts our credentials) with a cheap call.
/// An empty catalog may answer "namespace not found": that is an answer.
pub async fn ping(catalog: &dyn Catalog, cfg: &CatalogConfig) -> Result<()> {
    match catalog.list_namespaces(None).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == iceberg::ErrorKind::NamespaceNotFound => Ok(()),
        Err(e) => {
            let err = Error::iceberg(format!("the {} does not answer", cfg.describe()), e);
            Err(
                if err.kind() == ErrorKind::Catalog && err.hint().is_none() {
                    err.with_hint("check the `catalog` section: uri, warehouse and credentials")
                } else {
                    err
                },
            )
        }
    }
}

fn sqlite_path(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix("sqlite://")?;
    let path = rest.split('?').next()?;
    if path.is_empty() || path == ":memory:" {
        None
    } else {
        Some(path.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_path("sqlite:///a/b/c.db?mode=rwc").as_deref(),
            Some("/a/b/c.db")
        );
        assert_eq!(sqlite_path("sqlite://rel.db").as_deref(), Some("rel.db"));
        assert_eq!(sqlite_path("postgresql://x/y"), None);
    }
}
