//! The REST catalog's access token, renewed before it expires.
//!
//! iceberg-rust's REST client exchanges the `credential` for an OAuth2
//! token once and keeps it for the life of the catalog handle (0.10.1:
//! "TODO: support automatic token refreshing"), so a handle that outlives
//! its token — `serve`, a long `archive` or `restore` — has every catalog
//! call refused once it expires (after an hour on Polaris, five minutes on a
//! default Keycloak).  [`RenewingRest`] wraps the client: before each call,
//! once half the token's life is gone, it has the client exchange the
//! credential again.  The life is what the token endpoint says
//! (`expires_in`), read from an exchange of our own when the handle is
//! first used; an endpoint that does not say gets [`UNSTATED_LIFE`].  A
//! fixed `token` in the config cannot be renewed and is used as given.
//!
//! permafrost's own REST commits ([`super::metadata_commit`]) authenticate
//! with a token of their own exchange, kept in a [`TokenCache`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use iceberg::table::Table;
use iceberg::{Catalog, Namespace, NamespaceIdent, Result, TableCommit, TableCreation, TableIdent};
use iceberg_catalog_rest::RestCatalog;

use crate::config::CatalogConfig;

/// The life assumed for a token whose endpoint does not state one (a
/// default Keycloak's is five minutes).
const UNSTATED_LIFE: Duration = Duration::from_secs(300);

/// iceberg-rust's REST catalog, its token renewed (see the module docs).
pub struct RenewingRest {
    inner: RestCatalog,
    /// `None` without a `credential` to exchange.
    renewal: Option<Renewal>,
}

struct Renewal {
    cfg: CatalogConfig,
    client: reqwest::Client,
    /// The token's life and when to renew it, once learnt.
    due: tokio::sync::Mutex<Option<(Duration, Instant)>>,
}

impl std::fmt::Debug for RenewingRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenewingRest").finish_non_exhaustive()
    }
}

impl RenewingRest {
    /// Wraps `inner`, opened from `cfg`; `client` is the HTTP client
    /// `inner` was given.
    pub fn new(inner: RestCatalog, cfg: &CatalogConfig, client: reqwest::Client) -> Self {
        let renewable =
            cfg.properties.contains_key("credential") && !cfg.properties.contains_key("token");
        Self {
            inner,
            renewal: renewable.then(|| Renewal {
                cfg: cfg.clone(),
                client,
                due: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// Renews the client's token when half its life is gone; on first use,
    /// learns that life.  A failed renewal is the call's error.
    async fn fresh(&self) -> Result<()> {
        self.renew(false).await
    }

    /// Renews the client's token when it is due (or at once, `now`); on
    /// first use, learns its life (and renews nothing unless `now`).
    async fn renew(&self, now: bool) -> Result<()> {
        let Some(r) = &self.renewal else {
            return Ok(());
        };
        let mut due = r.due.lock().await;
        let at = Instant::now();
        let life = match *due {
            Some((_, renew)) if at < renew && !now => return Ok(()),
            Some((life, _)) => life,
            None => token_life(&r.cfg, &r.client)
                .await
                .ok()
                .flatten()
                .unwrap_or(UNSTATED_LIFE),
        };
        if now || due.is_some() {
            self.inner.regenerate_token().await?;
            tracing::debug!("the REST catalog's token was renewed");
        }
        *due = Some((life, at + life / 2));
        Ok(())
    }

    /// A read: `call`, and when the catalog refuses the token all the same
    /// (revoked early, or a life shorter than it said) the token renewed at
    /// once and `call` once more.  (Writes are not repeated: iceberg-rust
    /// takes their arguments by value.)
    async fn read<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.fresh().await?;
        match call().await {
            Err(e) if self.renewal.is_some() && refused_token(&e) => {
                self.renew(true).await?;
                call().await
            }
            done => done,
        }
    }
}

/// The access token of permafrost's own REST commits, kept between
/// commits: a fixed `token` as given; one exchanged from `credential`
/// renewed once half its life is gone (the life the endpoint states, else
/// [`UNSTATED_LIFE`]), so a run of thousands of batch commits exchanges the
/// credential once an interval, not once a commit.
#[derive(Default)]
pub(crate) struct TokenCache {
    held: tokio::sync::Mutex<Option<(Option<String>, Instant)>>,
}

impl TokenCache {
    /// The token to send now; `renew` forces a fresh exchange (the catalog
    /// refused the one held).
    pub(crate) async fn get(
        &self,
        client: &reqwest::Client,
        cfg: &CatalogConfig,
        renew: bool,
    ) -> crate::error::Result<Option<String>> {
        if let Some(t) = cfg.properties.get("token") {
            return Ok(Some(t.clone()));
        }
        let mut held = self.held.lock().await;
        let now = Instant::now();
        if let Some((token, due)) = &*held
            && now < *due
            && !renew
        {
            return Ok(token.clone());
        }
        let base = cfg.properties["uri"].trim_end_matches('/').to_string();
        let (token, life) = match exchanged_token(client, &cfg.properties, &base).await? {
            Some((t, life)) => (Some(t), life.unwrap_or(UNSTATED_LIFE)),
            None => (None, Duration::MAX / 4),
        };
        *held = Some((token.clone(), now + life / 2));
        Ok(token)
    }
}

/// The catalog refused the request's token (HTTP 401).
fn refused_token(e: &iceberg::Error) -> bool {
    e.to_string().contains("401 Unauthorized")
}

/// How long the REST catalog's tokens live, by the token endpoint's
/// `expires_in` for an exchange of `credential` (`None` without one, with
/// a fixed `token`, or when the endpoint does not say).
pub(crate) async fn token_life(
    cfg: &CatalogConfig,
    client: &reqwest::Client,
) -> crate::error::Result<Option<std::time::Duration>> {
    if cfg.properties.contains_key("token") {
        return Ok(None);
    }
    let base = cfg.properties["uri"].trim_end_matches('/').to_string();
    Ok(exchanged_token(client, &cfg.properties, &base)
        .await?
        .and_then(|(_, life)| life))
}

/// An OAuth2 client-credentials exchange of `credential`: the token and,
/// if the endpoint says, its life.
async fn exchanged_token(
    client: &reqwest::Client,
    props: &std::collections::BTreeMap<String, String>,
    base: &str,
) -> crate::error::Result<Option<(String, Option<std::time::Duration>)>> {
    let Some(cred) = props.get("credential") else {
        return Ok(None);
    };
    let (id, secret) = cred
        .split_once(':')
        .map(|(a, b)| (Some(a), b))
        .unwrap_or((None, cred.as_str()));
    let endpoint = props
        .get("oauth2-server-uri")
        .cloned()
        .unwrap_or_else(|| format!("{base}/v1/oauth/tokens"));
    let scope = props.get("scope").map(String::as_str).unwrap_or("catalog");
    let mut form: Vec<(&str, &str)> = vec![
        ("grant_type", "client_credentials"),
        ("client_secret", secret),
        ("scope", scope),
    ];
    if let Some(id) = id {
        form.push(("client_id", id));
    }
    let body = serde_urlencoded_pairs(&form);
    let resp = client
        .post(endpoint)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(|e| {
            crate::error::Error::new(
                crate::error::ErrorKind::Catalog,
                format!("cannot reach the catalog's token endpoint: {e}"),
            )
        })?;
    if !resp.status().is_success() {
        return Err(crate::error::Error::new(
            crate::error::ErrorKind::Catalog,
            format!("the catalog refused the credentials ({})", resp.status()),
        )
        .with_hint("check `credential` in the `catalog` section"));
    }
    let v: serde_json::Value = resp.json().await.map_err(|e| {
        crate::error::Error::new(
            crate::error::ErrorKind::Catalog,
            format!("bad token response: {e}"),
        )
    })?;
    let life = v["expires_in"].as_u64().map(std::time::Duration::from_secs);
    Ok(v["access_token"].as_str().map(|t| (t.to_string(), life)))
}

fn serde_urlencoded_pairs(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

#[async_trait]
impl Catalog for RenewingRest {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> Result<Vec<NamespaceIdent>> {
        self.read(|| self.inner.list_namespaces(parent)).await
    }

    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<Namespace> {
        self.fresh().await?;
        self.inner.create_namespace(namespace, properties).await
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> Result<Namespace> {
        self.read(|| self.inner.get_namespace(namespace)).await
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        self.read(|| self.inner.namespace_exists(namespace)).await
    }

    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<()> {
        self.fresh().await?;
        self.inner.update_namespace(namespace, properties).await
    }

    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> Result<()> {
        self.fresh().await?;
        self.inner.drop_namespace(namespace).await
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        self.read(|| self.inner.list_tables(namespace)).await
    }

    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> Result<Table> {
        self.fresh().await?;
        self.inner.create_table(namespace, creation).await
    }

    async fn load_table(&self, ident: &TableIdent) -> Result<Table> {
        self.read(|| self.inner.load_table(ident)).await
    }

    async fn drop_table(&self, ident: &TableIdent) -> Result<()> {
        self.fresh().await?;
        self.inner.drop_table(ident).await
    }

    async fn purge_table(&self, ident: &TableIdent) -> Result<()> {
        self.fresh().await?;
        self.inner.purge_table(ident).await
    }

    async fn table_exists(&self, ident: &TableIdent) -> Result<bool> {
        self.read(|| self.inner.table_exists(ident)).await
    }

    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> Result<()> {
        self.fresh().await?;
        self.inner.rename_table(src, dest).await
    }

    async fn register_table(&self, ident: &TableIdent, metadata_location: String) -> Result<Table> {
        self.fresh().await?;
        self.inner.register_table(ident, metadata_location).await
    }

    async fn update_table(&self, commit: TableCommit) -> Result<Table> {
        self.fresh().await?;
        self.inner.update_table(commit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_token_is_told_by_the_status_iceberg_rust_reports() {
        let refused = iceberg::Error::new(
            iceberg::ErrorKind::Unexpected,
            "Received response with unexpected status code",
        )
        .with_context("status", "401 Unauthorized");
        assert!(refused_token(&refused));
        let forbidden = iceberg::Error::new(iceberg::ErrorKind::Unexpected, "x")
            .with_context("status", "403 Forbidden");
        assert!(!refused_token(&forbidden));
    }
}
