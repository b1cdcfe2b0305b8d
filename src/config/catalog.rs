//! `catalog:`: which Iceberg catalog, and the properties iceberg-rust gets —
//! the keys users bring from PyIceberg and Spark read under the names
//! permafrost uses, secret ones masked, SigV4 signing for REST catalogs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use super::{absolute, redact_url_password, url_password};
use crate::error::{Error, Result};
use crate::secret;

/// Which catalog implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogKind {
    Rest,
    Sql,
    Glue,
}

/// The Iceberg catalog; `properties` go to iceberg-rust unchanged.
#[derive(Clone)]
pub struct CatalogConfig {
    pub kind: CatalogKind,
    pub name: String,
    pub properties: BTreeMap<String, String>,
}

impl fmt::Debug for CatalogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let props: BTreeMap<_, _> = self
            .properties
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    if is_secret_property(k) {
                        "***".to_string()
                    } else {
                        secret::redact(v)
                    },
                )
            })
            .collect();
        f.debug_struct("CatalogConfig")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("properties", &props)
            .finish()
    }
}

impl CatalogConfig {
    /// The embedded default: a SQL catalog in SQLite under `dir/permafrost/`
    /// with a `file://` warehouse beside it.
    pub fn embedded(dir: &Path) -> Result<Self> {
        let root = absolute(&dir.join("permafrost"))?;
        let db = root.join("catalog.db");
        let warehouse = root.join("warehouse");
        let mut properties = BTreeMap::new();
        properties.insert("uri".into(), format!("sqlite://{}?mode=rwc", db.display()));
        properties.insert(
            "warehouse".into(),
            format!("file://{}", warehouse.display()),
        );
        properties.insert("sql_bind_style".into(), "QMark".into());
        Ok(Self {
            kind: CatalogKind::Sql,
            name: "permafrost".into(),
            properties,
        })
    }

    /// A short description for messages, without secrets.
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            CatalogKind::Rest => "rest",
            CatalogKind::Sql => "sql",
            CatalogKind::Glue => "glue",
        };
        let uri = self
            .properties
            .get("uri")
            .map(|u| secret::redact(&redact_url_password(u)))
            .unwrap_or_default();
        match self.sigv4() {
            Some(sig) => format!(
                "{kind} catalog `{}` at {uri} (SigV4, {})",
                self.name, sig.service
            ),
            None => format!("{kind} catalog `{}` at {uri}", self.name),
        }
    }
}

/// `catalog:`: its type and name, and the properties passed to
/// iceberg-rust, under the names it reads.
pub(super) fn parse_catalog(map: BTreeMap<String, serde_norway::Value>) -> Result<CatalogConfig> {
    let mut properties = BTreeMap::new();
    let mut kind = None;
    let mut name = None;
    for (k, v) in map {
        let value = match v {
            serde_norway::Value::String(s) => s,
            serde_norway::Value::Number(n) => n.to_string(),
            serde_norway::Value::Bool(b) => b.to_string(),
            serde_norway::Value::Null => continue,
            _ => {
                return Err(Error::config(format!(
                    "`catalog.{k}` must be a string, number or boolean (catalog properties are passed to iceberg-rust as strings)"
                )));
            }
        };
        match k.as_str() {
            "type" => kind = Some(value),
            "name" => name = Some(value),
            // An empty value (`${VAR:-}` with VAR unset) leaves the key
            // out, as a missing one: the service's default applies.
            _ if value.trim().is_empty() => continue,
            _ => {
                if is_secret_property(&k) {
                    secret::register(value.clone());
                    if let Some((_, s)) = value.split_once(':') {
                        secret::register(s.to_string());
                    }
                }
                if let Some(pw) = url_password(&value) {
                    secret::register(pw);
                }
                properties.insert(k, value);
            }
        }
    }
    let kind = match kind.as_deref() {
        Some("rest") => CatalogKind::Rest,
        Some("sql") => CatalogKind::Sql,
        Some("glue") => CatalogKind::Glue,
        Some(other) => {
            return Err(
                Error::config(format!("`catalog.type`: unknown catalog type `{other}`"))
                    .with_hint("expected one of: rest, sql, glue"),
            );
        }
        None => {
            return Err(Error::config("`catalog.type` is missing")
                .with_hint("expected one of: rest, sql, glue"));
        }
    };
    let name = name.unwrap_or_else(|| "permafrost".into());
    if name.trim().is_empty() {
        return Err(Error::config("`catalog.name` is empty"));
    }
    let mut properties = canonical_keys(kind, properties)?;
    if !properties.contains_key("uri") {
        match kind {
            CatalogKind::Rest => {
                return Err(Error::config("`catalog.uri` is missing")
                    .with_hint("the REST catalog's base URL, e.g. http://localhost:8181"));
            }
            CatalogKind::Sql => {
                return Err(Error::config("`catalog.uri` is missing").with_hint(
                    "a sqlx URL, e.g. sqlite:///var/lib/permafrost/catalog.db or postgresql://…",
                ));
            }
            // Glue: the AWS endpoint of the region unless `uri` names another.
            CatalogKind::Glue => {}
        }
    }
    if kind == CatalogKind::Rest {
        check_sigv4(&properties)?;
    }
    if kind == CatalogKind::Glue && !properties.contains_key("warehouse") {
        return Err(Error::config("`catalog.warehouse` is missing")
            .with_hint("where new tables go, e.g. s3://my-bucket/archive"));
    }
    if kind == CatalogKind::Sql {
        if !properties.contains_key("warehouse") {
            return Err(Error::config("`catalog.warehouse` is missing")
                .with_hint("where table data goes, e.g. file:///var/lib/permafrost/warehouse or s3://bucket/path"));
        }
        if !properties.contains_key("sql_bind_style") {
            let uri = &properties["uri"];
            let style = if uri.starts_with("postgres") {
                "DollarNumeric"
            } else {
                "QMark"
            };
            properties.insert("sql_bind_style".into(), style.into());
        }
        if let Some(uri) = properties.get_mut("uri") {
            *uri = sqlite_created(uri);
        }
    }
    Ok(CatalogConfig {
        kind,
        name,
        properties,
    })
}

/// `rest.sigv4-enabled` is `true` or `false`, and a catalog signed with
/// SigV4 is not given an OAuth2 `credential` or `token` too.
fn check_sigv4(properties: &BTreeMap<String, String>) -> Result<()> {
    match properties.get(SIGV4_ENABLED).map(String::as_str) {
        None | Some("false") => Ok(()),
        Some("true") => match ["credential", "token"]
            .into_iter()
            .find(|k| properties.contains_key(*k))
        {
            Some(k) => Err(Error::config(format!(
                "`catalog.{k}` and `catalog.{SIGV4_ENABLED}`: a REST catalog is signed with AWS SigV4 or authenticated with OAuth2, not both"
            ))
            .with_hint(format!("remove `{k}` (S3 Tables and Glue take SigV4), or `{SIGV4_ENABLED}`"))),
            None => Ok(()),
        },
        Some(other) => Err(Error::config(format!(
            "`catalog.{SIGV4_ENABLED}`: {other:?} is not `true` or `false`"
        ))),
    }
}

/// PyIceberg's keys for a REST catalog signed with AWS SigV4.
const SIGV4_ENABLED: &str = "rest.sigv4-enabled";
const SIGNING_REGION: &str = "rest.signing-region";
const SIGNING_NAME: &str = "rest.signing-name";

/// How a REST catalog's requests are signed with AWS SigV4
/// (`rest.sigv4-enabled: true`; the Iceberg REST endpoints of S3 Tables and
/// Glue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigV4 {
    /// `rest.signing-region`, else `client.region`; `None`: the AWS
    /// credential chain's region (AWS_REGION, the profile's).
    pub region: Option<String>,
    /// `rest.signing-name`, else from the `uri`'s host: `s3tables` for S3
    /// Tables (`s3tables.<region>.amazonaws.com`), `glue` for Glue
    /// (`glue.<region>.amazonaws.com`), else `execute-api` (PyIceberg's
    /// default: an API Gateway in front of a catalog).
    pub service: String,
    /// `client.profile-name`: the AWS profile whose keys sign.
    pub profile: Option<String>,
    /// `client.access-key-id`, `client.secret-access-key` and
    /// `client.session-token`: static keys instead of the chain's, as
    /// PyIceberg's signer takes them (never renewed).
    pub keys: Option<(String, String, Option<String>)>,
}

impl CatalogConfig {
    /// The SigV4 signing of a REST catalog that asks for it.
    pub fn sigv4(&self) -> Option<SigV4> {
        let p = &self.properties;
        if self.kind != CatalogKind::Rest || p.get(SIGV4_ENABLED).is_none_or(|v| v != "true") {
            return None;
        }
        let host = p
            .get("uri")
            .and_then(|u| url::Url::parse(u).ok())
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default();
        let service = p.get(SIGNING_NAME).cloned().unwrap_or_else(|| {
            match host.split('.').next() {
                Some("s3tables") => "s3tables",
                Some("glue") => "glue",
                _ => "execute-api",
            }
            .to_string()
        });
        let keys = match (
            p.get("client.access-key-id"),
            p.get("client.secret-access-key"),
        ) {
            (Some(id), Some(secret)) => Some((
                id.clone(),
                secret.clone(),
                p.get("client.session-token").cloned(),
            )),
            _ => None,
        };
        Some(SigV4 {
            region: p.get(SIGNING_REGION).or(p.get("client.region")).cloned(),
            service,
            profile: p.get("client.profile-name").cloned(),
            keys,
        })
    }
}

/// A SQLite catalog URI that creates its file when missing, as PyIceberg's
/// does (sqlx opens an existing file only, unless told `mode=rwc`); a URI
/// that states a `mode`, or names no file, is kept.
pub(super) fn sqlite_created(uri: &str) -> String {
    let Some(rest) = uri.strip_prefix("sqlite:") else {
        return uri.to_string();
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let stated = query.split('&').any(|kv| kv.starts_with("mode="));
    if stated || path.trim_start_matches('/').is_empty() || path.contains(":memory:") {
        return uri.to_string();
    }
    let sep = if query.is_empty() { "?" } else { "&" };
    format!("{}{sep}mode=rwc", uri.trim_end_matches('?'))
}

/// Catalog keys users bring from `.pyiceberg.yaml` and Spark/Java Iceberg,
/// and the name permafrost reads them under.
const KEY_ALIASES: [(CatalogKind, &str, &str); 14] = [
    (CatalogKind::Glue, "glue.region", "region_name"),
    (CatalogKind::Glue, "client.region", "region_name"),
    (CatalogKind::Glue, "region", "region_name"),
    (CatalogKind::Glue, "glue.endpoint", "uri"),
    (CatalogKind::Glue, "glue.id", "catalog_id"),
    (CatalogKind::Glue, "glue.profile-name", "profile_name"),
    (CatalogKind::Glue, "glue.access-key-id", "aws_access_key_id"),
    (
        CatalogKind::Glue,
        "client.access-key-id",
        "aws_access_key_id",
    ),
    (
        CatalogKind::Glue,
        "glue.secret-access-key",
        "aws_secret_access_key",
    ),
    (
        CatalogKind::Glue,
        "client.secret-access-key",
        "aws_secret_access_key",
    ),
    (CatalogKind::Glue, "glue.session-token", "aws_session_token"),
    (
        CatalogKind::Glue,
        "client.session-token",
        "aws_session_token",
    ),
    (
        CatalogKind::Rest,
        "rest.oauth2-server-uri",
        "oauth2-server-uri",
    ),
    (CatalogKind::Rest, "ssl.cabundle", "ssl.ca-cert"),
];

/// The keys each catalog reads (besides `s3.*`, `file.*`, `header.*`,
/// `client.*` and `adls.*`/`gcs.*` storage keys, passed on as they are).
fn known_keys(kind: CatalogKind) -> &'static [&'static str] {
    match kind {
        CatalogKind::Rest => &[
            "uri",
            "warehouse",
            "credential",
            "token",
            "oauth2-server-uri",
            "scope",
            "audience",
            "resource",
            "prefix",
            "ssl.ca-cert",
            SIGV4_ENABLED,
            SIGNING_REGION,
            SIGNING_NAME,
        ],
        CatalogKind::Sql => &["uri", "warehouse", "sql_bind_style"],
        CatalogKind::Glue => &[
            "uri",
            "warehouse",
            "region_name",
            "profile_name",
            "aws_access_key_id",
            "aws_secret_access_key",
            "aws_session_token",
            "catalog_id",
            "glue.skip-archive",
        ],
    }
}

/// Renames alias keys to the names permafrost reads (refusing two spellings
/// of one key) and warns about keys no catalog reads, naming the closest.
fn canonical_keys(
    kind: CatalogKind,
    props: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (k, v) in props {
        let key = KEY_ALIASES
            .iter()
            .find(|(c, alias, _)| *c == kind && *alias == k)
            .map(|(_, _, to)| to.to_string())
            .unwrap_or(k.clone());
        let passed_on = [
            "s3.", "file.", "header.", "client.", "adls.", "gcs.", "oss.",
        ]
        .iter()
        .any(|p| key.starts_with(p));
        if !passed_on && !known_keys(kind).contains(&key.as_str()) {
            let closest = known_keys(kind)
                .iter()
                .chain(KEY_ALIASES.iter().filter(|a| a.0 == kind).map(|a| &a.1))
                .min_by_key(|c| edit_distance(c, &key))
                .copied()
                .unwrap_or("uri");
            tracing::warn!(
                "`catalog.{k}` is not a key the {kind:?} catalog reads (passed on unchanged); did you mean `{closest}`?"
            );
        }
        if out.insert(key.clone(), v).is_some() {
            return Err(Error::config(format!(
                "`catalog.{key}` is given twice (as `{k}` and under another name)"
            )));
        }
    }
    Ok(out)
}

/// Levenshtein distance, for "did you mean".
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Catalog property names whose values are secret.
pub fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k == "credential"
        || k == "token"
        || k.ends_with("secret-access-key")
        || k.ends_with("session-token")
        || k.ends_with("session_token")
        || k.ends_with("password")
        || k.contains("secret")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sqlite_catalog_file_is_created_unless_a_mode_is_stated() {
        for (given, want) in [
            ("sqlite:///a/c.db", "sqlite:///a/c.db?mode=rwc"),
            ("sqlite:///a/c.db?", "sqlite:///a/c.db?mode=rwc"),
            (
                "sqlite://rel.db?cache=shared",
                "sqlite://rel.db?cache=shared&mode=rwc",
            ),
            ("sqlite:///a/c.db?mode=ro", "sqlite:///a/c.db?mode=ro"),
            ("sqlite::memory:", "sqlite::memory:"),
            ("sqlite://", "sqlite://"),
            ("postgresql://h/db", "postgresql://h/db"),
        ] {
            assert_eq!(sqlite_created(given), want, "{given}");
        }
    }

    #[test]
    fn edit_distance_counts_single_character_edits() {
        assert_eq!(edit_distance("warehose", "warehouse"), 1);
        assert_eq!(edit_distance("uri", "uri"), 0);
        assert_eq!(edit_distance("region", "region_name"), 5);
    }
}
