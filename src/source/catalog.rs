//! The Postgres catalog, in one place: relations, columns, primary keys,
//! CHECK constraints, indexes and types, what a DELETE of a table sets off
//! (keys, triggers, rules, publications), and whether the server takes
//! writes.  Source introspection, restore
//! validation and attach all ask here, by relation oid
//! ([`oid_of`] resolves a name).  Each query is one round trip
//! (`query_typed`: parameters typed here, no statement prepared first).

use tokio_postgres::Client;
use tokio_postgres::types::Type;

use crate::error::{Error, ErrorKind, Result};
use crate::types::{MapContext, TypeInfo};

/// A relation found by schema and name.
#[derive(Debug, Clone)]
pub struct Relation {
    pub oid: u32,
    /// `r` table, `p` partitioned table, `v` view, …
    pub relkind: char,
    pub database: String,
}

/// Looks up `schema.name` (case-sensitive); `None` when there is none.
pub async fn find_relation(client: &Client, schema: &str, name: &str) -> Result<Option<Relation>> {
    let rows = client
        .query_typed(
            "SELECT c.oid, c.relkind::text, current_database()::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
            &[(&schema, Type::NAME), (&name, Type::NAME)],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the Postgres catalog", e))?;
    Ok(rows.first().map(|r| Relation {
        oid: r.get(0),
        relkind: r.get::<_, String>(1).chars().next().unwrap_or('?'),
        database: r.get(2),
    }))
}

/// Up to five `schema.name`s of relations named like `name` in another case.
pub async fn similar_names(client: &Client, name: &str) -> Vec<String> {
    client
        .query(
            "SELECT n.nspname::text || '.' || c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE lower(c.relname) = lower($1) AND c.relkind IN ('r','p','v','m','f') LIMIT 5",
            &[&name],
        )
        .await
        .map(|rs| rs.iter().map(|r| r.get::<_, String>(0)).collect())
        .unwrap_or_default()
}

/// The oid of relation `name` (a quoted or search-path name, as `regclass`
/// reads it).
pub async fn oid_of(client: &Client, name: &str) -> Result<u32> {
    Ok(client
        .query_typed_one("SELECT $1::text::regclass::oid", &[(&name, Type::TEXT)])
        .await
        .map_err(|e| Error::postgres(format!("cannot find {name}"), e))?
        .get(0))
}

/// One column (`pg_attribute`, not dropped), in table order.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    pub typmod: i32,
    /// `format_type` of the declared type, e.g. `numeric(12,2)`.
    pub pg_type: String,
    pub not_null: bool,
    /// `pg_attribute.attnum`: stable across renames.
    pub attnum: i16,
    pub has_default: bool,
    /// `attgenerated` is set: Postgres computes it.
    pub generated: bool,
    /// `GENERATED ALWAYS AS IDENTITY`.
    pub identity_always: bool,
}

/// The columns of relation `oid` (a table or a composite type's relation).
pub async fn columns(client: &Client, oid: u32) -> Result<Vec<Column>> {
    let rows = client
        .query_typed(
            "SELECT attname::text, atttypid, atttypmod, format_type(atttypid, atttypmod), attnotnull, attnum, \
                    atthasdef, attgenerated::text <> '', attidentity::text = 'a' \
             FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[(&oid, Type::OID)],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the columns of a table", e))?;
    Ok(rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            type_oid: r.get(1),
            typmod: r.get(2),
            pg_type: r.get(3),
            not_null: r.get(4),
            attnum: r.get(5),
            has_default: r.get(6),
            generated: r.get(7),
            identity_always: r.get(8),
        })
        .collect())
}

/// The primary key's columns, in key order (empty without one).
pub async fn primary_key(client: &Client, oid: u32) -> Result<Vec<String>> {
    let rows = client
        .query_typed(
            "SELECT a.attname::text FROM pg_index i \
             JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) ON true \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
            &[(&oid, Type::OID)],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the primary key", e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The CHECK constraints: `(name, definition)`, by name.
pub async fn check_constraints(client: &Client, oid: u32) -> Result<Vec<(String, String)>> {
    let rows = client
        .query_typed(
            "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE conrelid = $1 AND contype = 'c' ORDER BY conname",
            &[(&oid, Type::OID)],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the CHECK constraints", e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// What the connecting role may do to a table.
#[derive(Debug, Clone, Copy)]
pub struct Privileges {
    pub select: bool,
    pub delete: bool,
}

/// The connecting role's privileges on table `oid`.
pub async fn privileges(client: &Client, oid: u32) -> Result<Privileges> {
    let r = client
        .query_typed_one(
            "SELECT has_table_privilege($1::oid, 'SELECT'), has_table_privilege($1::oid, 'DELETE')",
            &[(&oid, Type::OID)],
        )
        .await
        .map_err(|e| Error::postgres("cannot check privileges", e))?;
    Ok(Privileges {
        select: r.get(0),
        delete: r.get(1),
    })
}

/// Whether an index of the table (or, for a partitioned table, of each
/// partition) leads with column `attnum` (named `name` in the partitions).
pub async fn leads_an_index(client: &Client, oid: u32, attnum: i16, name: &str) -> Result<bool> {
    Ok(client
        .query_typed_one(
            "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = $1 AND i.indkey[0] = $2) \
             OR EXISTS (SELECT 1 FROM pg_inherits h JOIN pg_index i ON i.indrelid = h.inhrelid \
                        JOIN pg_attribute a ON a.attrelid = h.inhrelid AND a.attnum = i.indkey[0] \
                        WHERE h.inhparent = $1 AND a.attname = $3)",
            &[
                (&oid, Type::OID),
                (&attnum, Type::INT2),
                (&name, Type::NAME),
            ],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the table's indexes", e))?
        .get(0))
}

/// Session facts the mappings depend on.
pub async fn map_context(client: &Client) -> Result<MapContext> {
    let row = client
        .query_typed_one("SELECT scale('1'::money::numeric)", &[])
        .await
        .map_err(|e| Error::postgres("cannot read the money format", e))?;
    let scale: i32 = row.get(0);
    Ok(MapContext {
        money_scale: scale.clamp(0, 18) as u8,
    })
}

/// What the Postgres catalog says about type `oid` (recursively: domains,
/// array elements, composite fields).
pub fn resolve_type<'a>(
    client: &'a Client,
    oid: u32,
    typmod: i32,
    depth: u32,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<TypeInfo>> + Send + 'a>> {
    Box::pin(async move {
        if depth > 16 {
            return Err(Error::new(
                ErrorKind::Schema,
                format!("type {oid} nests too deeply"),
            ));
        }
        let r = client
            .query_typed_one(
                "SELECT t.typname::text, t.typtype::text, t.typcategory::text, t.typelem, t.typbasetype, t.typtypmod, \
                 t.typrelid, format_type(t.oid, $2) FROM pg_type t WHERE t.oid = $1",
                &[(&oid, Type::OID), (&typmod, Type::INT4)],
            )
            .await
            .map_err(|e| Error::postgres("cannot read a column type", e))?;
        let typname: String = r.get(0);
        let typtype = r.get::<_, String>(1).chars().next().unwrap_or('b');
        let category = r.get::<_, String>(2).chars().next().unwrap_or('X');
        let elem: u32 = r.get(3);
        let basetype: u32 = r.get(4);
        let typtypmod: i32 = r.get(5);
        let relid: u32 = r.get(6);
        let display: String = r.get(7);
        let mut info = TypeInfo {
            oid,
            typmod,
            display,
            typname,
            typtype,
            ..Default::default()
        };
        if typtype == 'd' {
            let m = if typtypmod >= 0 { typtypmod } else { typmod };
            info.base = Some(Box::new(
                resolve_type(client, basetype, m, depth + 1).await?,
            ));
        } else if category == 'A' && elem != 0 {
            info.element = Some(Box::new(
                resolve_type(client, elem, typmod, depth + 1).await?,
            ));
        } else if typtype == 'c' {
            for f in columns(client, relid).await? {
                let ft = resolve_type(client, f.type_oid, f.typmod, depth + 1).await?;
                info.fields.push((f.name, ft));
            }
        }
        Ok(info)
    })
}

/// A foreign key that references a table's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferencingKey {
    /// The referencing table, as `regclass` prints it.
    pub table: String,
    pub constraint: String,
    /// `confdeltype`: `a` no action, `r` restrict, `c` cascade, `n` set
    /// null, `d` set default.
    pub on_delete: char,
}

impl ReferencingKey {
    /// Whether a row it references cannot be deleted (`NO ACTION`, `RESTRICT`).
    pub fn holds(&self) -> bool {
        matches!(self.on_delete, 'a' | 'r')
    }

    /// `ON DELETE …` as written in SQL.
    pub fn action(&self) -> &'static str {
        match self.on_delete {
            'r' => "ON DELETE RESTRICT",
            'c' => "ON DELETE CASCADE",
            'n' => "ON DELETE SET NULL",
            'd' => "ON DELETE SET DEFAULT",
            _ => "ON DELETE NO ACTION",
        }
    }
}

/// What else a `DELETE` of a table's rows runs into or sets off: the
/// foreign keys that reference them, the triggers and rules that fire on
/// it (on the table or its partitions), and the publications that send it
/// to subscribers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteEffects {
    pub referenced_by: Vec<ReferencingKey>,
    /// Enabled user triggers on DELETE: `(name, fires BEFORE for each row)`.
    pub triggers: Vec<(String, bool)>,
    /// Enabled rules on DELETE (`COPY (DELETE …)` refuses every kind).
    pub rules: Vec<String>,
    /// Publications that publish the table's deletes.
    pub publications: Vec<String>,
    /// A published table (or partition) without a replica identity: no
    /// primary key under the default identity, or `REPLICA IDENTITY NOTHING`.
    /// Postgres refuses to delete its rows.
    pub no_replica_identity: bool,
}

/// The table and its partitions, at any depth (`pg_partition_tree` holds
/// no row for a table outside a partition tree).
const TREE: &str = "(SELECT $1::oid UNION SELECT relid FROM pg_partition_tree($1::oid))";

/// The [`DeleteEffects`] of table `oid`, in one pipelined round trip.
pub async fn delete_effects(client: &Client, oid: u32) -> Result<DeleteEffects> {
    let p = [(
        &oid as &(dyn tokio_postgres::types::ToSql + Sync),
        Type::OID,
    )];
    let keys = client.query_typed(
        "SELECT conrelid::regclass::text, conname::text, confdeltype::text FROM pg_constraint \
         WHERE contype = 'f' AND confrelid = $1 AND conparentid = 0 ORDER BY 1, 2",
        &p,
    );
    let triggers = format!(
        "SELECT DISTINCT tgname::text, tgtype & 3 = 3 FROM pg_trigger WHERE tgrelid IN {TREE} \
         AND NOT tgisinternal AND tgenabled IN ('O', 'A') AND tgtype & 8 <> 0 ORDER BY 1"
    );
    let rules = "SELECT rulename::text FROM pg_rewrite WHERE ev_class = $1 AND ev_type = '4' \
                 AND ev_enabled IN ('O', 'A') ORDER BY 1";
    let publications = format!(
        "SELECT p.pubname::text FROM pg_publication p WHERE p.pubdelete AND (p.puballtables OR \
         EXISTS (SELECT 1 FROM pg_publication_tables t JOIN pg_namespace n ON n.nspname = t.schemaname \
                 JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename \
                 WHERE t.pubname = p.pubname AND c.oid IN {TREE})) ORDER BY 1"
    );
    let identity = format!(
        "SELECT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid IN {TREE} AND c.relkind = 'r' \
         AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS \
              (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))))"
    );
    let (keys, triggers, rules, publications, identity) = futures::try_join!(
        keys,
        client.query_typed(&triggers, &p),
        client.query_typed(rules, &p),
        client.query_typed(&publications, &p),
        client.query_typed_one(&identity, &p),
    )
    .map_err(|e| Error::postgres("cannot read what a DELETE of the table sets off", e))?;
    let publications: Vec<String> = publications.iter().map(|r| r.get(0)).collect();
    Ok(DeleteEffects {
        referenced_by: keys
            .iter()
            .map(|r| ReferencingKey {
                table: r.get(0),
                constraint: r.get(1),
                on_delete: r.get::<_, String>(2).chars().next().unwrap_or('a'),
            })
            .collect(),
        triggers: triggers.iter().map(|r| (r.get(0), r.get(1))).collect(),
        rules: rules.iter().map(|r| r.get(0)).collect(),
        no_replica_identity: !publications.is_empty() && identity.get::<_, bool>(0),
        publications,
    })
}

/// Why the server takes no writes, when it does not: a standby in recovery
/// (a hot standby, a reader endpoint) or a read-only session default.
pub async fn read_only(client: &Client) -> Result<Option<&'static str>> {
    let r = client
        .query_typed_one(
            "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'",
            &[],
        )
        .await
        .map_err(|e| Error::postgres("cannot ask whether the server takes writes", e))?;
    Ok(match (r.get(0), r.get(1)) {
        (true, _) => Some("a standby in recovery"),
        (false, true) => Some("its sessions are read-only (`default_transaction_read_only`)"),
        (false, false) => None,
    })
}

/// How many more connections Postgres admits now, by each limit that
/// bounds them: the connecting role's `CONNECTION LIMIT`, the database's,
/// and the server's `max_connections` (less the slots reserved for
/// superusers, unless the role is one: the role and database limits do not
/// bind a superuser).  Each as (what, its limit, connections it counts
/// now, this one included).
pub async fn connection_limits(client: &Client) -> Result<Vec<(String, i64, i64)>> {
    let r = client
        .query_typed_one(
            "SELECT current_user::text, r.rolconnlimit::int8, r.rolsuper, \
                    (SELECT count(*) FROM pg_stat_activity a WHERE a.usesysid = r.oid \
                       AND a.backend_type = 'client backend'), \
                    current_database()::text, d.datconnlimit::int8, \
                    (SELECT count(*) FROM pg_stat_activity a WHERE a.datid = d.oid \
                       AND a.backend_type = 'client backend'), \
                    current_setting('max_connections')::int8 - CASE WHEN r.rolsuper THEN 0 \
                      ELSE current_setting('superuser_reserved_connections')::int8 END, \
                    (SELECT count(*) FROM pg_stat_activity a WHERE a.backend_type = 'client backend' \
                       OR (a.backend_type IS NULL AND a.usesysid IS NOT NULL)) \
             FROM pg_roles r, pg_database d \
             WHERE r.rolname = current_user AND d.datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the connection limits", e))?;
    let superuser: bool = r.get(2);
    let mut out = Vec::new();
    if r.get::<_, i64>(1) >= 0 && !superuser {
        out.push((
            format!("role `{}`'s CONNECTION LIMIT", r.get::<_, String>(0)),
            r.get(1),
            r.get(3),
        ));
    }
    if r.get::<_, i64>(5) >= 0 && !superuser {
        out.push((
            format!("database `{}`'s CONNECTION LIMIT", r.get::<_, String>(4)),
            r.get(5),
            r.get(6),
        ));
    }
    out.push(("the server's max_connections".into(), r.get(7), r.get(8)));
    Ok(out)
}
