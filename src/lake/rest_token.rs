//! The REST catalog's access token: one per catalog handle, renewed before
//! it expires, shared by iceberg-rust's client and permafrost's own commits
//! — and the catalog's URLs those own requests use (its root, a table's).
//!
//! iceberg-rust's REST client exchanges the `credential` for an OAuth2
//! token once and keeps it for the life of the client (0.10.1: "TODO:
//! support automatic token refreshing"), so a handle that outlives its token
//! — `serve`, a long `archive` or `restore` — would have every catalog call
//! refused once it expires (after an hour on Polaris, five minutes on a
//! default Keycloak).  So permafrost exchanges the credential itself, in a
//! [`TokenCache`]: once per handle, again once half the token's life is gone
//! (the life the token endpoint states, `expires_in`, else
//! [`UNSTATED_LIFE`]), and at once when the catalog refuses the token held.
//! [`RenewingRest`] hands that token to iceberg-rust's client as a fixed
//! `token` (building the client again when the token changes), and
//! permafrost's own REST commits ([`super::metadata_commit`]) send the same
//! one: one exchange per renewal, not one per client.  A fixed `token` in
//! the config cannot be renewed and is used as given.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use iceberg::io::StorageFactory;
use iceberg::table::Table;
use iceberg::{
    Catalog, CatalogBuilder, Namespace, NamespaceIdent, Result, TableCommit, TableCreation,
    TableIdent,
};
use iceberg_catalog_rest::{RestCatalog, RestCatalogBuilder};

use crate::config::CatalogConfig;
use crate::error::{Error, ErrorKind};

/// The life assumed for a token whose endpoint does not state one (a
/// default Keycloak's is five minutes).
const UNSTATED_LIFE: Duration = Duration::from_secs(300);

/// iceberg-rust's REST catalog, authenticating with the handle's
/// [`TokenCache`] (see the module docs).
pub struct RenewingRest {
    /// The client and the token it was built with; `None` until first used.
    current: tokio::sync::Mutex<Option<(Arc<RestCatalog>, Option<String>)>>,
    tokens: Arc<TokenCache>,
    cfg: CatalogConfig,
    /// The properties iceberg-rust's client is built with (without the
    /// `credential`: it never exchanges one itself).
    props: HashMap<String, String>,
    client: reqwest::Client,
    storage: Arc<dyn StorageFactory>,
    /// The catalog's `…/v1[/{prefix}]`, once a table's raw answer is asked
    /// for ([`RenewingRest::with_storage_credentials`]); shared with the
    /// handle's committer, so `/v1/config` is asked once per handle.
    root: RestRoot,
}

/// A REST catalog's `…/v1[/{prefix}]` ([`rest_root`]), asked for at most
/// once and shared by the clients of one catalog handle.
pub(crate) type RestRoot = Arc<tokio::sync::OnceCell<url::Url>>;

impl std::fmt::Debug for RenewingRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenewingRest").finish_non_exhaustive()
    }
}

impl RenewingRest {
    /// The REST catalog `cfg` (its properties `props`) over `client`, its
    /// tables' files read through `storage`, authenticating with `tokens`.
    pub(crate) fn new(
        cfg: &CatalogConfig,
        mut props: HashMap<String, String>,
        client: reqwest::Client,
        tokens: Arc<TokenCache>,
        (storage, root): (Arc<dyn StorageFactory>, RestRoot),
    ) -> Self {
        props.remove("credential");
        Self {
            current: tokio::sync::Mutex::new(None),
            tokens,
            cfg: cfg.clone(),
            props,
            client,
            storage,
            root,
        }
    }

    /// iceberg-rust's client with the token to send now (after `refused`,
    /// a token the catalog refused: a fresh one), built again when that
    /// token is not the one it holds; and that token.
    async fn inner(&self, refused: Option<&Token>) -> Result<(Arc<RestCatalog>, Token)> {
        let token = self
            .tokens
            .get(&self.client, &self.cfg, refused)
            .await
            .map_err(|e| {
                iceberg::Error::new(
                    iceberg::ErrorKind::Unexpected,
                    "cannot authenticate with the REST catalog",
                )
                .with_source(e)
            })?;
        let mut current = self.current.lock().await;
        if let Some((catalog, held)) = &*current
            && *held == token.value
        {
            return Ok((catalog.clone(), token));
        }
        let mut props = self.props.clone();
        if let Some(t) = &token.value {
            props.insert("token".into(), t.clone());
        }
        let catalog = Arc::new(
            RestCatalogBuilder::default()
                .with_storage_factory(self.storage.clone())
                .with_client(self.client.clone())
                .load(self.cfg.name.clone(), props)
                .await?,
        );
        if current.is_some() {
            tracing::debug!("the REST catalog's token was renewed");
        }
        *current = Some((catalog.clone(), token.value.clone()));
        Ok((catalog, token))
    }

    /// A read: `call`, and when the catalog refuses the token all the same
    /// (revoked early, or a life shorter than it said) the token renewed at
    /// once and `call` once more.  (Writes are not repeated: iceberg-rust
    /// takes their arguments by value.)
    async fn read<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(Arc<RestCatalog>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let (catalog, token) = self.inner(None).await?;
        match call(catalog).await {
            Err(e) if renewable(&self.cfg) && refused_token(&e) => {
                call(self.inner(Some(&token)).await?.0).await
            }
            done => done,
        }
    }

    /// iceberg-rust's client for a write.
    async fn writer(&self) -> Result<Arc<RestCatalog>> {
        Ok(self.inner(None).await?.0)
    }

    /// `table` as loaded or created by iceberg-rust, with the storage keys
    /// its catalog vended in the answer's `storage-credentials` (the REST
    /// spec's place for them since Iceberg 1.7, which iceberg-rust 0.10.1
    /// reads no further than its `config`).  Only when the config asks for
    /// vended keys (`header.X-Iceberg-Access-Delegation: vended-credentials`)
    /// and the table came without keys: the table is then asked for again,
    /// once, for its raw answer — the credential whose `prefix` is the
    /// longest one the table's location starts with wins (the spec's rule),
    /// over the answer's `config`; keys set in the config win over both.
    /// Without such a credential, `table` is returned as it is.
    async fn with_storage_credentials(&self, table: Table) -> Result<Table> {
        let props = table.file_io().config().props();
        if !asks_vended(&self.cfg) || props.contains_key(S3_KEY) {
            return Ok(table);
        }
        let answer = self.raw_table(table.identifier()).await.map_err(|e| {
            iceberg::Error::new(
                iceberg::ErrorKind::Unexpected,
                "cannot read the table's storage credentials",
            )
            .with_source(e)
        })?;
        let Some(credential) = storage_credential(&answer, table.metadata().location()) else {
            return Ok(table);
        };
        let mut props = props.clone();
        for (k, v) in credential {
            if !self.props.contains_key(&k) {
                props.insert(k, v);
            }
        }
        let io = iceberg::io::FileIOBuilder::new(self.storage.clone())
            .with_props(props)
            .build();
        let mut builder = Table::builder()
            .identifier(table.identifier().clone())
            .metadata(table.metadata_ref())
            .file_io(io)
            .runtime(iceberg::Runtime::try_current()?);
        if let Some(location) = table.metadata_location() {
            builder = builder.metadata_location(location);
        }
        builder.build()
    }

    /// The catalog's answer to `GET …/tables/{table}`, as JSON, sent as
    /// iceberg-rust's are (the handle's token, the config's `header.*`).
    async fn raw_table(&self, ident: &TableIdent) -> crate::error::Result<serde_json::Value> {
        let uri = self.props["uri"].as_str();
        let root = self
            .root
            .get_or_try_init(|| rest_root(&self.cfg, &self.client, &self.tokens, uri))
            .await?;
        let url = table_url(root, ident)?;
        let token = self.tokens.get(&self.client, &self.cfg, None).await?.value;
        let mut rb = bearer(self.client.get(url), &token);
        for (k, v) in &self.cfg.properties {
            if let Some(name) = k.strip_prefix("header.") {
                rb = rb.header(name, v);
            }
        }
        let resp = rb.send().await.map_err(unreachable)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(Error::new(
                ErrorKind::Catalog,
                format!("the catalog answered {status} for {ident}"),
            ));
        }
        resp.json()
            .await
            .map_err(|e| Error::new(ErrorKind::Catalog, format!("bad table response: {e}")))
    }
}

/// Iceberg's S3 key property (present: the table came with keys).
const S3_KEY: &str = "s3.access-key-id";

/// Whether the config asks the catalog for vended keys.
fn asks_vended(cfg: &CatalogConfig) -> bool {
    cfg.properties.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("header.x-iceberg-access-delegation")
            && v.split(',').any(|m| m.trim() == "vended-credentials")
    })
}

/// The `config` of the credential in a load's `storage-credentials` whose
/// `prefix` is the longest one `location` starts with.
fn storage_credential(
    answer: &serde_json::Value,
    location: &str,
) -> Option<HashMap<String, String>> {
    answer["storage-credentials"]
        .as_array()?
        .iter()
        .filter_map(|c| Some((c["prefix"].as_str()?, c["config"].as_object()?)))
        .filter(|(prefix, _)| location.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, config)| {
            config
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
}

/// The REST catalog's access token, kept for the catalog handle: a fixed
/// `token` as given; one exchanged from `credential` renewed once half its
/// life is gone (the life the endpoint states, else [`UNSTATED_LIFE`]), so
/// a run of thousands of catalog calls exchanges the credential once an
/// interval, not once a call; none without either.
#[derive(Default)]
pub(crate) struct TokenCache {
    /// The token held and when to renew it.
    held: tokio::sync::Mutex<Option<(Token, Instant)>>,
}

/// A token to send ([`TokenCache::get`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct Token {
    /// The bearer token; `None` without `credential` or `token`.
    pub(crate) value: Option<String>,
    /// Which exchange gave it (a catalog may hand out the same string
    /// twice: the exchange, not the string, tells a renewed token).
    exchange: u64,
}

impl TokenCache {
    /// The token to send now.  After `refused` (the token a call was
    /// refused with), a fresh one — unless another call has renewed it
    /// since: many calls refused together exchange the credential once.
    pub(crate) async fn get(
        &self,
        client: &reqwest::Client,
        cfg: &CatalogConfig,
        refused: Option<&Token>,
    ) -> crate::error::Result<Token> {
        if let Some(t) = cfg.properties.get("token") {
            return Ok(Token {
                value: Some(t.clone()),
                exchange: 0,
            });
        }
        let mut held = self.held.lock().await;
        let now = Instant::now();
        if let Some((token, due)) = &*held
            && now < *due
            && refused.is_none_or(|r| r.exchange != token.exchange)
        {
            return Ok(token.clone());
        }
        let base = cfg.properties["uri"].trim_end_matches('/').to_string();
        let (value, life) = match exchanged_token(client, &cfg.properties, &base).await? {
            Some((t, life)) => (Some(t), life.unwrap_or(UNSTATED_LIFE)),
            None => (None, Duration::MAX / 4),
        };
        let exchange = held.as_ref().map_or(0, |(t, _)| t.exchange) + 1;
        let token = Token { value, exchange };
        *held = Some((token.clone(), now + life / 2));
        Ok(token)
    }
}

/// Whether the catalog's token can be renewed: exchanged from a
/// `credential`, not a fixed `token`.
pub(crate) fn renewable(cfg: &CatalogConfig) -> bool {
    cfg.properties.contains_key("credential") && !cfg.properties.contains_key("token")
}

/// The catalog refused the request's token (HTTP 401).
fn refused_token(e: &iceberg::Error) -> bool {
    e.to_string().contains("401 Unauthorized")
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
        .map_err(|e| Error::catalog_request("cannot reach the catalog's token endpoint", e))?;
    if !resp.status().is_success() {
        return Err(Error::new(
            ErrorKind::Catalog,
            format!("the catalog refused the credentials ({})", resp.status()),
        )
        .with_hint("check `credential` in the `catalog` section"));
    }
    let v: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| Error::new(ErrorKind::Catalog, format!("bad token response: {e}")))?;
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
        self.read(|c| async move { c.list_namespaces(parent).await })
            .await
    }

    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<Namespace> {
        self.writer()
            .await?
            .create_namespace(namespace, properties)
            .await
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> Result<Namespace> {
        self.read(|c| async move { c.get_namespace(namespace).await })
            .await
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        self.read(|c| async move { c.namespace_exists(namespace).await })
            .await
    }

    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<()> {
        self.writer()
            .await?
            .update_namespace(namespace, properties)
            .await
    }

    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> Result<()> {
        self.writer().await?.drop_namespace(namespace).await
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        self.read(|c| async move { c.list_tables(namespace).await })
            .await
    }

    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> Result<Table> {
        let table = self
            .writer()
            .await?
            .create_table(namespace, creation)
            .await?;
        self.with_storage_credentials(table).await
    }

    async fn load_table(&self, ident: &TableIdent) -> Result<Table> {
        let table = self
            .read(|c| async move { c.load_table(ident).await })
            .await?;
        self.with_storage_credentials(table).await
    }

    async fn drop_table(&self, ident: &TableIdent) -> Result<()> {
        self.writer().await?.drop_table(ident).await
    }

    async fn purge_table(&self, ident: &TableIdent) -> Result<()> {
        self.writer().await?.purge_table(ident).await
    }

    async fn table_exists(&self, ident: &TableIdent) -> Result<bool> {
        self.read(|c| async move { c.table_exists(ident).await })
            .await
    }

    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> Result<()> {
        self.writer().await?.rename_table(src, dest).await
    }

    async fn register_table(&self, ident: &TableIdent, metadata_location: String) -> Result<Table> {
        self.writer()
            .await?
            .register_table(ident, metadata_location)
            .await
    }

    async fn update_table(&self, commit: TableCommit) -> Result<Table> {
        self.writer().await?.update_table(commit).await
    }
}

/// The REST catalog's `…/v1[/{prefix}]`, from its config endpoint at
/// `uri` (where its requests go: the configured one, or the SigV4
/// forwarder's).
pub(crate) async fn rest_root(
    cfg: &CatalogConfig,
    client: &reqwest::Client,
    tokens: &TokenCache,
    uri: &str,
) -> crate::error::Result<url::Url> {
    let props = &cfg.properties;
    let base = uri.trim_end_matches('/').to_string();
    let token = tokens.get(client, cfg, None).await?.value;
    let mut config_url = url::Url::parse(&format!("{base}/v1/config"))
        .map_err(|e| Error::config(format!("`catalog.uri`: {e}")))?;
    if let Some(w) = props.get("warehouse") {
        config_url.query_pairs_mut().append_pair("warehouse", w);
    }
    let conf: serde_json::Value = bearer(client.get(config_url), &token)
        .send()
        .await
        .map_err(unreachable)?
        .json()
        .await
        .map_err(|e| Error::new(ErrorKind::Catalog, format!("bad config response: {e}")))?;
    let pick = |k: &str| {
        conf["overrides"][k]
            .as_str()
            .or(conf["defaults"][k].as_str())
            .map(str::to_string)
    };
    let root = pick("uri")
        .map(|u| u.trim_end_matches('/').to_string())
        .unwrap_or(base);
    let mut url = url::Url::parse(&format!("{root}/v1"))
        .map_err(|e| Error::config(format!("`catalog.uri`: {e}")))?;
    if let Some(prefix) = pick("prefix") {
        url.path_segments_mut()
            .map_err(|_| Error::config("`catalog.uri` cannot be a base URL"))?
            .push(&prefix);
    }
    Ok(url)
}

/// `…/v1[/{prefix}]/namespaces/{ns}/tables/{table}` under `root`.
pub(crate) fn table_url(
    root: &url::Url,
    ident: &iceberg::TableIdent,
) -> crate::error::Result<url::Url> {
    let mut url = root.clone();
    url.path_segments_mut()
        .map_err(|_| Error::config("`catalog.uri` cannot be a base URL"))?
        .push("namespaces")
        .push(&ident.namespace().join("\u{1f}"))
        .push("tables")
        .push(ident.name());
    Ok(url)
}

pub(crate) fn unreachable(e: reqwest::Error) -> Error {
    Error::catalog_request("cannot reach the REST catalog", e)
}

pub(crate) fn bearer(
    rb: reqwest::RequestBuilder,
    token: &Option<String>,
) -> reqwest::RequestBuilder {
    match token {
        Some(t) => rb.bearer_auth(t),
        None => rb,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storage_credential_of_the_longest_matching_prefix_is_taken() {
        let answer = serde_json::json!({"storage-credentials": [
            {"prefix": "s3://", "config": {"s3.access-key-id": "wide"}},
            {"prefix": "s3://bucket/ns/", "config": {"s3.access-key-id": "ns", "n": 1}},
            {"prefix": "s3://bucket/ns/t/more", "config": {"s3.access-key-id": "deeper"}},
            {"prefix": "s3://other/", "config": {"s3.access-key-id": "other"}},
        ]});
        let c = storage_credential(&answer, "s3://bucket/ns/t").expect("one");
        assert_eq!(c.get("s3.access-key-id").map(String::as_str), Some("ns"));
        assert_eq!(c.get("n"), None, "non-string values are left out");
        let c = storage_credential(&answer, "s3://x/y").expect("the wide one");
        assert_eq!(c["s3.access-key-id"], "wide");
        assert_eq!(
            storage_credential(&serde_json::json!({"config": {}}), "s3://x"),
            None
        );
    }

    #[test]
    fn vended_keys_are_asked_for_by_the_access_delegation_header() {
        let cfg = |props: &[(&str, &str)]| CatalogConfig {
            kind: crate::config::CatalogKind::Rest,
            name: "r".into(),
            properties: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        assert!(asks_vended(&cfg(&[(
            "header.X-Iceberg-Access-Delegation",
            "vended-credentials"
        )])));
        assert!(asks_vended(&cfg(&[(
            "header.x-iceberg-access-delegation",
            "remote-signing, vended-credentials"
        )])));
        assert!(!asks_vended(&cfg(&[(
            "header.X-Iceberg-Access-Delegation",
            "remote-signing"
        )])));
        assert!(!asks_vended(&cfg(&[])));
    }

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
