//! Schema evolution: keeping the archive table's schema in step with the
//! source table, with stable field ids.
//!
//! Columns are matched by `pg_attribute.attnum` (recorded in the table
//! property `permafrost.pg-columns`), which survives renames.  Between two
//! runs, a column may be
//! - **added** → a new optional field (old data files read it as NULL);
//! - **dropped** (or excluded) → removed from the current schema (old
//!   snapshots keep it in their own schema);
//! - **renamed** → the same field id under the new name;
//! - **widened** (int → bigint, real → double precision, numeric(p,s) →
//!   numeric(p',s) with p' > p, varchar(n) → text, …) → Iceberg's type
//!   promotion, same field id;
//! - made **nullable** → the field becomes optional.
//!
//! Anything else (a narrowing, a type swap, a change inside a composite) is
//! refused before anything is written or deleted.

use std::collections::HashSet;
use std::sync::Arc;

use iceberg::spec::{NestedField, NestedFieldRef, PrimitiveType, Schema, Type};

use crate::lake::schema::RecordedColumn;
use crate::types::PgKind;

/// A source column as it is now.
#[derive(Debug, Clone)]
pub struct ColumnNow {
    pub attnum: i16,
    pub name: String,
    pub pg_type: String,
    pub kind: PgKind,
    pub not_null: bool,
}

/// One schema change, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Add(String),
    Drop(String),
    Rename {
        from: String,
        to: String,
    },
    Widen {
        column: String,
        from: String,
        to: String,
    },
    MakeOptional(String),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Add(c) => write!(f, "add column `{c}`"),
            Change::Drop(c) => write!(f, "drop column `{c}`"),
            Change::Rename { from, to } => write!(f, "rename `{from}` to `{to}`"),
            Change::Widen { column, from, to } => write!(f, "widen `{column}` from {from} to {to}"),
            Change::MakeOptional(c) => write!(f, "make `{c}` nullable"),
        }
    }
}

/// The evolved schema and what changed; `None` when nothing did.
#[derive(Debug, Clone)]
pub struct Evolution {
    pub schema: Schema,
    pub changes: Vec<Change>,
}

fn promotion(from: &Type, to: &PgKind) -> Option<Type> {
    let Type::Primitive(p) = from else {
        return None;
    };
    let target = match (p, to) {
        (PrimitiveType::Int, PgKind::Int8) => PrimitiveType::Long,
        (PrimitiveType::Float, PgKind::Float8) => PrimitiveType::Double,
        (
            PrimitiveType::Decimal { precision, scale },
            PgKind::Numeric {
                precision: p2,
                scale: s2,
            },
        ) if *s2 as u32 == *scale && *p2 as u32 > *precision => PrimitiveType::Decimal {
            precision: *p2 as u32,
            scale: *scale,
        },
        _ => return None,
    };
    Some(Type::Primitive(target))
}

/// The refusal of a field permafrost did not create (another engine added
/// it, or renamed one of ours): dropping it to follow Postgres would take a
/// column someone else put there out of the table.
fn foreign_field(name: &str, fields: &[NestedFieldRef], recorded: &[RecordedColumn]) -> String {
    let missing: Vec<&str> = recorded
        .iter()
        .filter(|r| r.archived && !fields.iter().any(|f| f.name == r.name))
        .map(|r| r.name.as_str())
        .collect();
    let renamed = match missing.as_slice() {
        [] => String::new(),
        [one] => format!(" (a rename of `{one}`?)"),
        many => format!(" (a rename of one of `{}`?)", many.join("`, `")),
    };
    format!(
        "field `{name}` was not created by permafrost{renamed}: another writer changed the \
         archive table's schema, and following the source would drop it; drop or rename it \
         back with the engine that changed it (nothing was written)"
    )
}

/// Plans the schema for `now`, starting from `current` (whose columns were
/// recorded as `recorded`).  `last_column_id` is the table's last assigned id.
pub fn plan(
    current: &Schema,
    last_column_id: i32,
    now: &[ColumnNow],
    recorded: &[RecordedColumn],
    primary_key: &[String],
) -> Result<Option<Evolution>, String> {
    let fields = current.as_struct().fields();
    // Which existing field is each column now?
    let field_of = |c: &ColumnNow| -> Option<NestedFieldRef> {
        let by_attnum = recorded
            .iter()
            .find(|r| r.attnum != 0 && r.attnum == c.attnum && r.archived);
        let name = match by_attnum {
            Some(r) => r.name.clone(),
            None if recorded.iter().any(|r| r.attnum != 0) => return None, // a new column
            None => c.name.clone(),                                        // old records: by name
        };
        fields.iter().find(|f| f.name == name).cloned()
    };
    let mut changes = Vec::new();
    let mut kept: Vec<NestedFieldRef> = Vec::new();
    let mut matched: HashSet<i32> = HashSet::new();
    let mut new_cols: Vec<&ColumnNow> = Vec::new();
    let mut updated: Vec<(i32, NestedFieldRef)> = Vec::new();
    for c in now {
        let Some(f) = field_of(c) else {
            new_cols.push(c);
            continue;
        };
        matched.insert(f.id);
        let mut nf = (*f).clone();
        if f.name != c.name {
            changes.push(Change::Rename {
                from: f.name.clone(),
                to: c.name.clone(),
            });
            nf.name = c.name.clone();
        }
        if !c.kind.matches_iceberg(&f.field_type) {
            match promotion(&f.field_type, &c.kind) {
                Some(t) => {
                    changes.push(Change::Widen {
                        column: c.name.clone(),
                        from: f.field_type.to_string(),
                        to: t.to_string(),
                    });
                    nf.field_type = Box::new(t);
                }
                None => {
                    return Err(format!(
                        "column `{}` changed to {} ({}), which its Iceberg type {} cannot become; \
                         only widening changes (int → bigint, real → double precision, more numeric precision) evolve",
                        c.name,
                        c.pg_type,
                        c.kind.describe(),
                        f.field_type
                    ));
                }
            }
        }
        if f.required && !c.not_null {
            changes.push(Change::MakeOptional(c.name.clone()));
            nf.required = false;
        }
        updated.push((f.id, Arc::new(nf)));
    }
    for f in fields {
        match updated.iter().find(|(id, _)| *id == f.id) {
            Some((_, nf)) => kept.push(nf.clone()),
            None if !matched.contains(&f.id) => {
                if !recorded.is_empty() && !recorded.iter().any(|r| r.name == f.name) {
                    return Err(foreign_field(&f.name, fields, recorded));
                }
                changes.push(Change::Drop(f.name.clone()))
            }
            None => {}
        }
    }
    let mut next = last_column_id;
    for c in new_cols {
        next += 1;
        let id = next;
        let ty = c.kind.iceberg_type(&mut next);
        changes.push(Change::Add(c.name.clone()));
        kept.push(Arc::new(
            NestedField::optional(id, &c.name, ty).with_doc(format!("postgres: {}", c.pg_type)),
        ));
    }
    if changes.is_empty() {
        return Ok(None);
    }
    let ids: Vec<i32> = primary_key
        .iter()
        .filter_map(|k| {
            kept.iter()
                .find(|f| &f.name == k && f.required)
                .map(|f| f.id)
        })
        .collect();
    let mut b = Schema::builder()
        .with_schema_id(current.schema_id() + 1)
        .with_fields(kept);
    if !ids.is_empty() && ids.len() == primary_key.len() {
        b = b.with_identifier_field_ids(ids);
    }
    let schema = b
        .build()
        .map_err(|e| format!("the evolved schema is invalid: {e}"))?;
    Ok(Some(Evolution { schema, changes }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, attnum: i16, ty: &str) -> RecordedColumn {
        RecordedColumn {
            name: name.into(),
            pg_type: ty.into(),
            not_null: false,
            attnum,
            encoding: "binary".into(),
            archived: true,
        }
    }

    fn col(name: &str, attnum: i16, kind: PgKind, not_null: bool) -> ColumnNow {
        ColumnNow {
            attnum,
            name: name.into(),
            pg_type: format!("{kind:?}"),
            kind,
            not_null,
        }
    }

    fn schema() -> Schema {
        Schema::builder()
            .with_schema_id(0)
            .with_fields(vec![
                Arc::new(NestedField::required(
                    1,
                    "ts",
                    Type::Primitive(PrimitiveType::Timestamptz),
                )),
                Arc::new(NestedField::required(
                    2,
                    "id",
                    Type::Primitive(PrimitiveType::Int),
                )),
                Arc::new(NestedField::optional(
                    3,
                    "v",
                    Type::Primitive(PrimitiveType::Float),
                )),
                Arc::new(NestedField::optional(
                    4,
                    "gone",
                    Type::Primitive(PrimitiveType::String),
                )),
            ])
            .with_identifier_field_ids(vec![2])
            .build()
            .unwrap()
    }

    fn recorded() -> Vec<RecordedColumn> {
        vec![
            rec("ts", 1, "timestamptz"),
            rec("id", 2, "integer"),
            rec("v", 3, "real"),
            rec("gone", 4, "text"),
        ]
    }

    #[test]
    fn unchanged_is_none() {
        let now = vec![
            col("ts", 1, PgKind::Timestamptz, true),
            col("id", 2, PgKind::Int4, true),
            col("v", 3, PgKind::Float4, false),
            col("gone", 4, PgKind::Text, false),
        ];
        assert!(
            plan(&schema(), 4, &now, &recorded(), &["id".into()])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn add_drop_rename_widen_and_nullable() {
        let now = vec![
            col("ts", 1, PgKind::Timestamptz, true),
            col("ident", 2, PgKind::Int8, false), // renamed, widened, made nullable
            col("v", 3, PgKind::Float8, false),   // widened
            col(
                "extra",
                6,
                PgKind::Array {
                    element: Box::new(PgKind::Text),
                },
                true,
            ),
        ];
        let e = plan(&schema(), 4, &now, &recorded(), &[]).unwrap().unwrap();
        let f: Vec<(i32, String, String, bool)> = e
            .schema
            .as_struct()
            .fields()
            .iter()
            .map(|f| (f.id, f.name.clone(), f.field_type.to_string(), f.required))
            .collect();
        assert_eq!(f[0], (1, "ts".into(), "timestamptz".into(), true));
        assert_eq!(f[1], (2, "ident".into(), "long".into(), false));
        assert_eq!(f[2], (3, "v".into(), "double".into(), false));
        assert_eq!(
            (f[3].0, f[3].1.as_str(), f[3].3),
            (5, "extra", false),
            "new field gets the next id, optional"
        );
        assert_eq!(e.schema.highest_field_id(), 6, "nested element id follows");
        assert_eq!(e.schema.schema_id(), 1);
        assert!(e.changes.contains(&Change::Rename {
            from: "id".into(),
            to: "ident".into()
        }));
        assert!(e.changes.contains(&Change::Drop("gone".into())));
        assert!(e.changes.contains(&Change::MakeOptional("ident".into())));
        assert!(e.changes.contains(&Change::Add("extra".into())));
    }

    #[test]
    fn narrowing_and_type_swaps_are_refused() {
        let mut now = vec![
            col("ts", 1, PgKind::Timestamptz, true),
            col("id", 2, PgKind::Int2, true),
            col("v", 3, PgKind::Float4, false),
            col("gone", 4, PgKind::Text, false),
        ];
        assert!(
            plan(&schema(), 4, &now, &recorded(), &[])
                .unwrap()
                .is_none(),
            "smallint still fits an int field"
        );
        now[2] = col("v", 3, PgKind::Text, false);
        let e = plan(&schema(), 4, &now, &recorded(), &[]).unwrap_err();
        assert!(e.contains("column `v`") && e.contains("widening"), "{e}");
    }

    #[test]
    fn fields_another_writer_added_or_renamed_are_refused_not_dropped() {
        let mut fields: Vec<NestedFieldRef> = schema().as_struct().fields().to_vec();
        let last = fields.iter().map(|f| f.id).max().unwrap_or(0);
        fields.push(Arc::new(NestedField::optional(
            last + 1,
            "analyst_note",
            Type::Primitive(PrimitiveType::String),
        )));
        let added = Schema::builder()
            .with_fields(fields.clone())
            .build()
            .expect("schema");
        let now = vec![
            col("ts", 1, PgKind::Timestamptz, true),
            col("id", 2, PgKind::Int4, true),
            col("v", 3, PgKind::Float4, false),
            col("gone", 4, PgKind::Text, false),
        ];
        let e = plan(&added, last + 1, &now, &recorded(), &[]).expect_err("foreign field");
        assert!(
            e.contains("field `analyst_note` was not created by permafrost"),
            "{e}"
        );
        assert!(!e.contains("a rename"), "{e}");
        // Another engine renamed one of ours.
        let renamed: Vec<NestedFieldRef> = fields[..fields.len() - 1]
            .iter()
            .map(|f| {
                let mut f = (**f).clone();
                if f.name == "v" {
                    f.name = "value".into();
                }
                Arc::new(f)
            })
            .collect();
        let renamed = Schema::builder()
            .with_fields(renamed)
            .build()
            .expect("schema");
        let e = plan(&renamed, last, &now, &recorded(), &[]).expect_err("renamed field");
        assert!(
            e.contains("field `value`") && e.contains("a rename of `v`?"),
            "{e}"
        );
    }

    #[test]
    fn a_column_dropped_and_readded_with_the_same_name_gets_a_new_id() {
        let now = vec![
            col("ts", 1, PgKind::Timestamptz, true),
            col("id", 2, PgKind::Int4, true),
            col("v", 3, PgKind::Float4, false),
            col("gone", 7, PgKind::Text, false),
        ];
        let e = plan(&schema(), 4, &now, &recorded(), &[]).unwrap().unwrap();
        let gone = e.schema.field_by_name("gone").unwrap();
        assert_eq!(gone.id, 5);
        assert!(
            e.changes.contains(&Change::Drop("gone".into()))
                && e.changes.contains(&Change::Add("gone".into()))
        );
    }
}
