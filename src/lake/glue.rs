//! An AWS Glue catalog for iceberg-rust: Glue databases are namespaces, Glue
//! tables point at Iceberg metadata files (`table_type=ICEBERG`,
//! `metadata_location`).
//!
//! Why our own: iceberg-catalog-glue 0.10.1 refuses any table with a
//! `timestamptz` column ("Conversion from Timestamptz is not supported") while
//! building the Glue column list.  Glue column types are informational (engines
//! read the Iceberg metadata) and have no zone; like PyIceberg and the Java
//! implementation, we describe `timestamptz` as Glue `timestamp`.  The Iceberg
//! schema, in the metadata file, keeps `timestamptz`.
//!
//! Everything Iceberg is iceberg-rust's: metadata built by
//! `TableMetadataBuilder`, commits applied by `TableCommit::apply`, files
//! written by `TableMetadata::write_to`.  This module only talks to Glue, with
//! the AWS SDK and the standard credential chain (environment, profile, web
//! identity / IRSA, instance metadata), and swaps `metadata_location` on
//! commit under Glue's optimistic lock (`VersionId`), after checking that the
//! table still points at the metadata the commit was based on.
//!
//! Properties: `warehouse` (required, e.g. `s3://bucket/path`), `uri` (a Glue
//! endpoint, for tests or VPC endpoints), `region_name`, `profile_name`,
//! `aws_access_key_id`, `aws_secret_access_key`, `aws_session_token`,
//! `catalog_id`, `glue.skip-archive` (default true), and `s3.*` for the data
//! files.  Static keys and the region also serve S3 unless `s3.*` says
//! otherwise; without static keys S3 signs with the same refreshing chain
//! as Glue ([`crate::aws`]).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_glue::Client;
use aws_sdk_glue::error::ProvideErrorMetadata;
use aws_sdk_glue::types::{Column, DatabaseInput, StorageDescriptor, TableInput};
use iceberg::io::{FileIO, FileIOBuilder, StorageFactory};
use iceberg::spec::{PrimitiveType, TableMetadata, TableMetadataBuilder, TableMetadataRef, Type};
use iceberg::table::Table;
use iceberg::{
    Catalog, Error as IcebergError, ErrorKind as IceKind, MetadataLocation, Namespace,
    NamespaceIdent, Result as IceResult, TableCommit, TableCreation, TableIdent,
};

use super::storage::WarehouseStorageFactory;

/// The Glue table parameter naming the current metadata file.
pub const METADATA_LOCATION: &str = "metadata_location";
const PREVIOUS_METADATA_LOCATION: &str = "previous_metadata_location";
const TABLE_TYPE: &str = "table_type";

/// A Glue-backed Iceberg catalog.
pub struct GlueCatalog {
    name: String,
    client: Client,
    catalog_id: Option<String>,
    skip_archive: bool,
    warehouse: String,
    file_io: FileIO,
    runtime: iceberg::Runtime,
}

impl fmt::Debug for GlueCatalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlueCatalog")
            .field("name", &self.name)
            .field("warehouse", &self.warehouse)
            .finish_non_exhaustive()
    }
}

fn err(kind: IceKind, msg: impl Into<String>) -> IcebergError {
    IcebergError::new(kind, msg.into())
}

/// A Glue SDK error as an iceberg error, naming the call and Glue's code.
fn glue_err<E, R>(call: &str, e: aws_sdk_glue::error::SdkError<E, R>) -> IcebergError
where
    E: aws_sdk_glue::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: fmt::Debug + Send + Sync + 'static,
{
    let code = e.code().unwrap_or("").to_string();
    let message = e.message().map(str::to_string).unwrap_or_else(|| {
        // The causes, one line: "dispatch failure: … Connection refused".
        let mut parts: Vec<String> = vec![e.to_string()];
        let mut cur = std::error::Error::source(&e);
        while let Some(c) = cur {
            let m = c.to_string();
            if !parts.iter().any(|p| p.contains(&m)) {
                parts.push(m);
            }
            cur = c.source();
        }
        parts.join(": ")
    });
    let kind = match code.as_str() {
        "EntityNotFoundException" => IceKind::TableNotFound,
        "AlreadyExistsException" => IceKind::TableAlreadyExists,
        "ConcurrentModificationException" => IceKind::CatalogCommitConflicts,
        _ => IceKind::Unexpected,
    };
    let mut ie = err(
        kind,
        format!(
            "Glue {call} failed: {}{message}",
            if code.is_empty() {
                String::new()
            } else {
                format!("{code}: ")
            }
        ),
    );
    if kind == IceKind::CatalogCommitConflicts {
        ie = ie.with_retryable(true);
    }
    ie
}

fn is_not_found<E, R>(e: &aws_sdk_glue::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_glue::error::ProvideErrorMetadata,
{
    e.code() == Some("EntityNotFoundException")
}

/// The database of a namespace (Glue has one level).
fn database(ns: &NamespaceIdent) -> IceResult<String> {
    match ns.as_ref().as_slice() {
        [db] => Ok(db.clone()),
        _ => Err(err(
            IceKind::DataInvalid,
            format!(
                "Glue namespaces have exactly one level, not `{}`",
                ns.join(".")
            ),
        )),
    }
}

/// The Glue column type describing an Iceberg type (informational: engines
/// read the Iceberg schema).  `timestamptz` is `timestamp`: Glue has no zone.
pub fn glue_type(t: &Type) -> String {
    match t {
        Type::Primitive(p) => match p {
            PrimitiveType::Boolean => "boolean".into(),
            PrimitiveType::Int => "int".into(),
            PrimitiveType::Long => "bigint".into(),
            PrimitiveType::Float => "float".into(),
            PrimitiveType::Double => "double".into(),
            PrimitiveType::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            PrimitiveType::Date => "date".into(),
            PrimitiveType::Time | PrimitiveType::String | PrimitiveType::Uuid => "string".into(),
            PrimitiveType::Timestamp | PrimitiveType::Timestamptz => "timestamp".into(),
            PrimitiveType::TimestampNs | PrimitiveType::TimestamptzNs => "timestamp".into(),
            PrimitiveType::Binary | PrimitiveType::Fixed(_) => "binary".into(),
        },
        Type::List(l) => format!("array<{}>", glue_type(&l.element_field.field_type)),
        Type::Map(m) => format!(
            "map<{},{}>",
            glue_type(&m.key_field.field_type),
            glue_type(&m.value_field.field_type)
        ),
        Type::Struct(s) => format!(
            "struct<{}>",
            s.fields()
                .iter()
                .map(|f| format!("{}:{}", f.name, glue_type(&f.field_type)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// What a Glue table says now: where its metadata is, its version, and what
/// other tools set on it (kept on update).
struct GlueTable {
    location: String,
    version_id: Option<String>,
    parameters: HashMap<String, String>,
    description: Option<String>,
    owner: Option<String>,
}

/// The Glue table input for `metadata` at `location`.  On update
/// (`existing`), the parameters, description and owner other tools (Athena,
/// Lake Formation, crawlers, people) set stay; ours are overwritten.
fn table_input(
    name: &str,
    metadata: &TableMetadata,
    location: &str,
    existing: Option<&GlueTable>,
) -> IceResult<TableInput> {
    let mut columns = Vec::new();
    for f in metadata.current_schema().as_struct().fields() {
        let mut params = HashMap::new();
        params.insert("iceberg.field.id".to_string(), f.id.to_string());
        params.insert(
            "iceberg.field.optional".to_string(),
            (!f.required).to_string(),
        );
        params.insert("iceberg.field.current".to_string(), "true".to_string());
        let mut c = Column::builder()
            .name(&f.name)
            .r#type(glue_type(&f.field_type))
            .set_parameters(Some(params));
        if let Some(doc) = &f.doc {
            c = c.comment(doc);
        }
        columns.push(
            c.build()
                .map_err(|e| err(IceKind::Unexpected, format!("Glue column: {e}")))?,
        );
    }
    let mut params = existing.map(|t| t.parameters.clone()).unwrap_or_default();
    params.insert(TABLE_TYPE.to_string(), "ICEBERG".to_string());
    params.insert(METADATA_LOCATION.to_string(), location.to_string());
    if let Some(t) = existing {
        params.insert(PREVIOUS_METADATA_LOCATION.to_string(), t.location.clone());
    }
    TableInput::builder()
        .name(name)
        .table_type("EXTERNAL_TABLE")
        .set_description(existing.and_then(|t| t.description.clone()))
        .set_owner(existing.and_then(|t| t.owner.clone()))
        .set_parameters(Some(params))
        .storage_descriptor(
            StorageDescriptor::builder()
                .location(metadata.location())
                .set_columns(Some(columns))
                .build(),
        )
        .build()
        .map_err(|e| err(IceKind::Unexpected, format!("Glue table input: {e}")))
}

impl GlueCatalog {
    /// The FileIO tables are written through, and where `ident` goes when
    /// created in a namespace without a `location` (`None`: not a Glue
    /// namespace).
    pub fn new_table_io(&self, ident: &TableIdent) -> Option<(FileIO, String)> {
        let db = database(ident.namespace()).ok()?;
        Some((
            self.file_io.clone(),
            self.default_location(&db, ident.name()),
        ))
    }

    /// `<warehouse>/<database>.db/<table>`: where a table goes when its
    /// namespace has no `location`.
    fn default_location(&self, db: &str, table: &str) -> String {
        format!("{}/{db}.db/{table}", self.warehouse)
    }

    /// Connects with the standard AWS credential chain, overridden by the
    /// static keys, profile, region and endpoint in `props`.
    pub async fn new(name: String, props: HashMap<String, String>) -> IceResult<Self> {
        // `${VAR:-}` in a config leaves empty values: those are unset.
        let props: HashMap<String, String> =
            props.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        let warehouse = props
            .get("warehouse")
            .cloned()
            .ok_or_else(|| err(IceKind::DataInvalid, "the Glue catalog needs `warehouse`"))?
            .trim_end_matches('/')
            .to_string();
        let static_keys = match (
            props.get("aws_access_key_id"),
            props.get("aws_secret_access_key"),
        ) {
            (Some(k), Some(s)) => Some((
                k.as_str(),
                s.as_str(),
                props.get("aws_session_token").map(String::as_str),
            )),
            _ => None,
        };
        let sdk = crate::aws::sdk_config(&crate::aws::ChainSettings {
            region: props.get("region_name").map(String::as_str),
            profile: props.get("profile_name").map(String::as_str),
            static_keys,
            endpoint: props.get("uri").map(String::as_str),
        })
        .await;
        let client = Client::new(&sdk);

        // Data files: `s3.*` as given; static keys and the region serve S3
        // too.  Without static keys S3 signs with the chain Glue uses,
        // refreshed as it expires (never a copy of temporary keys).
        let mut io_props = props.clone();
        for (from, to) in [
            ("aws_access_key_id", "s3.access-key-id"),
            ("aws_secret_access_key", "s3.secret-access-key"),
            ("aws_session_token", "s3.session-token"),
            ("region_name", "s3.region"),
        ] {
            if let Some(v) = props.get(from) {
                io_props.entry(to.to_string()).or_insert_with(|| v.clone());
            }
        }
        if !io_props.contains_key("s3.region")
            && let Some(r) = sdk.region()
        {
            io_props.insert("s3.region".into(), r.to_string());
        }
        let factory: Arc<dyn StorageFactory> = Arc::new(match sdk.credentials_provider() {
            Some(chain) => WarehouseStorageFactory::signed_by(crate::aws::s3_credentials(chain)),
            None => WarehouseStorageFactory::default(),
        });
        let file_io = FileIOBuilder::new(factory).with_props(io_props).build();
        let runtime = iceberg::Runtime::try_current()?;
        Ok(Self {
            name,
            runtime,
            client,
            catalog_id: props.get("catalog_id").cloned(),
            skip_archive: props
                .get("glue.skip-archive")
                .is_none_or(|v| !v.eq_ignore_ascii_case("false")),
            warehouse,
            file_io,
        })
    }

    /// The catalog's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Glue table of `ident`, which must be an Iceberg table.
    async fn glue_table(&self, ident: &TableIdent) -> IceResult<GlueTable> {
        let db = database(ident.namespace())?;
        let out = self
            .client
            .get_table()
            .set_catalog_id(self.catalog_id.clone())
            .database_name(&db)
            .name(ident.name())
            .send()
            .await
            .map_err(|e| {
                if is_not_found(&e) {
                    err(IceKind::TableNotFound, format!("no table {ident} in Glue"))
                } else {
                    glue_err("GetTable", e)
                }
            })?;
        let t = out
            .table()
            .ok_or_else(|| err(IceKind::Unexpected, "Glue GetTable returned no table"))?;
        let params = t.parameters().cloned().unwrap_or_default();
        let is_iceberg = params
            .get(TABLE_TYPE)
            .is_some_and(|v| v.eq_ignore_ascii_case("iceberg"));
        let location = params.get(METADATA_LOCATION).cloned();
        match (is_iceberg, location) {
            (true, Some(location)) => Ok(GlueTable {
                location,
                version_id: t.version_id().map(str::to_string),
                parameters: params,
                description: t.description().map(str::to_string),
                owner: t.owner().map(str::to_string),
            }),
            _ => Err(err(
                IceKind::DataInvalid,
                format!("Glue table {ident} is not an Iceberg table"),
            )),
        }
    }

    fn table(
        &self,
        ident: TableIdent,
        location: String,
        metadata: impl Into<TableMetadataRef>,
    ) -> IceResult<Table> {
        Table::builder()
            .runtime(self.runtime.clone())
            .file_io(self.file_io.clone())
            .identifier(ident)
            .metadata_location(location)
            .metadata(metadata)
            .build()
    }

    /// Writes `metadata` as the next version after `current` and points the
    /// Glue table at it, if the table still points at `current` (and, where
    /// Glue enforces it, its version is still the one read).  Like PyIceberg,
    /// the update skips Glue's table-version archive (`glue.skip-archive`,
    /// default true): every commit would otherwise add a version, and Glue
    /// caps them per table.
    pub async fn swap(
        &self,
        ident: &TableIdent,
        current: &str,
        metadata: TableMetadataRef,
    ) -> IceResult<Table> {
        let now = self.glue_table(ident).await?;
        if now.location != current {
            return Err(err(
                IceKind::CatalogCommitConflicts,
                format!("{ident} changed in Glue since it was loaded"),
            )
            .with_retryable(true));
        }
        let next = MetadataLocation::from_str(current)?
            .with_next_version()
            .with_new_metadata(&metadata);
        metadata.write_to(&self.file_io, &next).await?;
        let next = next.to_string();
        let input = table_input(ident.name(), &metadata, &next, Some(&now))?;
        self.client
            .update_table()
            .set_catalog_id(self.catalog_id.clone())
            .database_name(database(ident.namespace())?)
            .table_input(input)
            .skip_archive(self.skip_archive)
            .set_version_id(now.version_id)
            .send()
            .await
            .map_err(|e| glue_err("UpdateTable", e))?;
        self.table(ident.clone(), next, metadata)
    }
}

#[async_trait]
impl Catalog for GlueCatalog {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> IceResult<Vec<NamespaceIdent>> {
        if parent.is_some() {
            return Ok(vec![]);
        }
        let mut out = Vec::new();
        let mut pages = self
            .client
            .get_databases()
            .set_catalog_id(self.catalog_id.clone())
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| glue_err("GetDatabases", e))?;
            for db in page.database_list() {
                out.push(NamespaceIdent::new(db.name().to_string()));
            }
        }
        Ok(out)
    }

    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> IceResult<Namespace> {
        let db = database(namespace)?;
        let mut input = DatabaseInput::builder().name(&db);
        if let Some(loc) = properties.get("location") {
            input = input.location_uri(loc);
        }
        if let Some(d) = properties.get("comment") {
            input = input.description(d);
        }
        let input = input
            .set_parameters(Some(properties.clone()))
            .build()
            .map_err(|e| err(IceKind::Unexpected, format!("Glue database input: {e}")))?;
        self.client
            .create_database()
            .set_catalog_id(self.catalog_id.clone())
            .database_input(input)
            .send()
            .await
            .map_err(|e| {
                if e.code() == Some("AlreadyExistsException") {
                    err(
                        IceKind::NamespaceAlreadyExists,
                        format!("Glue database {db} exists"),
                    )
                } else {
                    glue_err("CreateDatabase", e)
                }
            })?;
        Ok(Namespace::with_properties(namespace.clone(), properties))
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> IceResult<Namespace> {
        let db = database(namespace)?;
        let out = self
            .client
            .get_database()
            .set_catalog_id(self.catalog_id.clone())
            .name(&db)
            .send()
            .await
            .map_err(|e| {
                if is_not_found(&e) {
                    err(IceKind::NamespaceNotFound, format!("no Glue database {db}"))
                } else {
                    glue_err("GetDatabase", e)
                }
            })?;
        let mut props = out
            .database()
            .and_then(|d| d.parameters().cloned())
            .unwrap_or_default();
        if let Some(loc) = out.database().and_then(|d| d.location_uri()) {
            props.insert("location".into(), loc.to_string());
        }
        Ok(Namespace::with_properties(namespace.clone(), props))
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> IceResult<bool> {
        match self.get_namespace(namespace).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == IceKind::NamespaceNotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> IceResult<()> {
        let db = database(namespace)?;
        let input = DatabaseInput::builder()
            .name(&db)
            .set_parameters(Some(properties))
            .build()
            .map_err(|e| err(IceKind::Unexpected, format!("Glue database input: {e}")))?;
        self.client
            .update_database()
            .set_catalog_id(self.catalog_id.clone())
            .name(&db)
            .database_input(input)
            .send()
            .await
            .map_err(|e| glue_err("UpdateDatabase", e))?;
        Ok(())
    }

    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> IceResult<()> {
        let db = database(namespace)?;
        self.client
            .delete_database()
            .set_catalog_id(self.catalog_id.clone())
            .name(&db)
            .send()
            .await
            .map_err(|e| glue_err("DeleteDatabase", e))?;
        Ok(())
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> IceResult<Vec<TableIdent>> {
        let db = database(namespace)?;
        let mut out = Vec::new();
        let mut pages = self
            .client
            .get_tables()
            .set_catalog_id(self.catalog_id.clone())
            .database_name(&db)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| glue_err("GetTables", e))?;
            for t in page.table_list() {
                let iceberg = t
                    .parameters()
                    .and_then(|p| p.get(TABLE_TYPE))
                    .is_some_and(|v| v.eq_ignore_ascii_case("iceberg"));
                if iceberg {
                    out.push(TableIdent::new(namespace.clone(), t.name().to_string()));
                }
            }
        }
        Ok(out)
    }

    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> IceResult<Table> {
        let db = database(namespace)?;
        let ident = TableIdent::new(namespace.clone(), creation.name.clone());
        let location = match &creation.location {
            Some(l) => l.clone(),
            None => {
                let ns = self.get_namespace(namespace).await?;
                match ns.properties().get("location") {
                    Some(l) => format!("{}/{}", l.trim_end_matches('/'), creation.name),
                    None => self.default_location(&db, &creation.name),
                }
            }
        };
        let creation = TableCreation {
            location: Some(location.clone()),
            ..creation
        };
        let metadata = TableMetadataBuilder::from_table_creation(creation)?
            .build()?
            .metadata;
        let metadata_location = MetadataLocation::new_with_metadata(location, &metadata);
        metadata.write_to(&self.file_io, &metadata_location).await?;
        let metadata_location = metadata_location.to_string();
        let input = table_input(ident.name(), &metadata, &metadata_location, None)?;
        self.client
            .create_table()
            .set_catalog_id(self.catalog_id.clone())
            .database_name(&db)
            .table_input(input)
            .send()
            .await
            .map_err(|e| glue_err("CreateTable", e))?;
        self.table(ident, metadata_location, metadata)
    }

    async fn load_table(&self, ident: &TableIdent) -> IceResult<Table> {
        let location = self.glue_table(ident).await?.location;
        let metadata = TableMetadata::read_from(&self.file_io, &location).await?;
        self.table(ident.clone(), location, metadata)
    }

    async fn drop_table(&self, ident: &TableIdent) -> IceResult<()> {
        self.client
            .delete_table()
            .set_catalog_id(self.catalog_id.clone())
            .database_name(database(ident.namespace())?)
            .name(ident.name())
            .send()
            .await
            .map_err(|e| glue_err("DeleteTable", e))?;
        Ok(())
    }

    async fn purge_table(&self, ident: &TableIdent) -> IceResult<()> {
        self.drop_table(ident).await
    }

    async fn table_exists(&self, ident: &TableIdent) -> IceResult<bool> {
        match self.glue_table(ident).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == IceKind::TableNotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn rename_table(&self, _src: &TableIdent, _dest: &TableIdent) -> IceResult<()> {
        Err(err(
            IceKind::FeatureUnsupported,
            "renaming tables is not supported by permafrost's Glue catalog",
        ))
    }

    async fn register_table(
        &self,
        ident: &TableIdent,
        metadata_location: String,
    ) -> IceResult<Table> {
        let metadata = TableMetadata::read_from(&self.file_io, &metadata_location).await?;
        let input = table_input(ident.name(), &metadata, &metadata_location, None)?;
        self.client
            .create_table()
            .set_catalog_id(self.catalog_id.clone())
            .database_name(database(ident.namespace())?)
            .table_input(input)
            .send()
            .await
            .map_err(|e| glue_err("CreateTable", e))?;
        self.table(ident.clone(), metadata_location, metadata)
    }

    async fn update_table(&self, commit: TableCommit) -> IceResult<Table> {
        let ident = commit.identifier().clone();
        let current = self.load_table(&ident).await?;
        let current_location = current.metadata_location_result()?.to_string();
        // Requirements are checked against what Glue points at now.
        let staged = commit.apply(current)?;
        self.swap(&ident, &current_location, staged.metadata_ref())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iceberg::spec::{ListType, NestedField, StructType};

    #[test]
    fn glue_types_keep_iceberg_readable() {
        assert_eq!(
            glue_type(&Type::Primitive(PrimitiveType::Timestamptz)),
            "timestamp"
        );
        assert_eq!(
            glue_type(&Type::Primitive(PrimitiveType::Decimal {
                precision: 12,
                scale: 3
            })),
            "decimal(12,3)"
        );
        let s = Type::Struct(StructType::new(vec![
            NestedField::optional(2, "x", Type::Primitive(PrimitiveType::Double)).into(),
            NestedField::optional(3, "at", Type::Primitive(PrimitiveType::Timestamptz)).into(),
        ]));
        assert_eq!(glue_type(&s), "struct<x:double,at:timestamp>");
        let l = Type::List(ListType::new(
            NestedField::list_element(4, Type::Primitive(PrimitiveType::Uuid), false).into(),
        ));
        assert_eq!(glue_type(&l), "array<string>");
    }
}
