//! Postgres ⇄ Iceberg ⇄ Arrow type mapping.
//!
//! Every column maps to exactly one Iceberg type, losslessly, or is refused
//! up front (by `check` and before `archive` touches a row) with a message
//! naming the column and its type.  Values that a mapping cannot hold (an
//! `infinity` timestamp, a multi-dimensional array) are refused when they are
//! met, naming column and value, before anything is deleted.
//!
//! | Postgres | Iceberg | how | why |
//! |---|---|---|---|
//! | smallint, integer | int | binary | |
//! | bigint, oid | long | binary (`oid` via `::int8`) | |
//! | real / double precision | float / double | binary | NaN and ±Infinity are IEEE values in every reader |
//! | numeric(p,s), p ≤ 38, 0 ≤ s ≤ p | decimal(p,s) | binary | |
//! | numeric without precision, p > 38, s < 0 | string | `::text` | exact digits, NaN and ±Infinity kept; no silent rounding |
//! | money | decimal(19, frac digits of `lc_monetary`) | `::numeric` | |
//! | boolean | boolean | binary | |
//! | text, varchar(n), char(n), name, citext, enums, xml, "char" | string | binary (`"char"` via `::text`) | |
//! | json, jsonb | string (JSON text) | binary | every engine has JSON functions over strings |
//! | bytea | binary | binary | |
//! | uuid | uuid | binary | Trino, Spark, DuckDB and PyIceberg read Iceberg uuid; Athena reads it as a string |
//! | date, time | date, time (µs) | binary | |
//! | timetz | string | `::text` | Iceberg has no time with zone; `12:34:56+02` keeps the offset |
//! | timestamp / timestamptz | timestamp / timestamptz (µs, UTC) | binary | |
//! | interval | struct<months int, days int, microseconds long> | binary | Postgres' own three parts: no month length is assumed |
//! | inet, cidr, macaddr, macaddr8, bit, varbit | string | `::text` | their canonical text forms |
//! | domains | their base type | | |
//! | one-dimensional arrays of the above | list | binary (`::text[]` for text forms) | NULL elements and empty arrays kept |
//! | composite types | struct | binary | fields mapped recursively |
//! | anything else | refused, or string via `text_columns` | `::text` | |

use iceberg::spec::{ListType, NestedField, PrimitiveType, StructType, Type};
use serde::Serialize;

/// Postgres type OIDs permafrost knows.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const XML: u32 = 142;
    pub const CIDR: u32 = 650;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const MACADDR8: u32 = 774;
    pub const MONEY: u32 = 790;
    pub const MACADDR: u32 = 829;
    pub const INET: u32 = 869;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const TIMETZ: u32 = 1266;
    pub const BIT: u32 = 1560;
    pub const VARBIT: u32 = 1562;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// How a value arrives in the binary COPY stream and what Iceberg stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PgKind {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric {
        precision: u8,
        scale: u8,
    },
    /// UTF-8 text (text, varchar, char, name, citext, enums, xml, json, and
    /// everything read through `::text`).
    Text,
    /// jsonb: a version byte, then the JSON text.
    Jsonb,
    Bytea,
    Uuid,
    Date,
    Time,
    Timestamp,
    Timestamptz,
    /// months, days, microseconds.
    Interval,
    Array {
        element: Box<PgKind>,
    },
    Composite {
        fields: Vec<CompositeField>,
    },
}

/// A field of a composite type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompositeField {
    pub name: String,
    pub kind: PgKind,
}

/// What the Postgres catalog says about a type (gathered by introspection).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TypeInfo {
    pub oid: u32,
    pub typmod: i32,
    /// `format_type(oid, typmod)`, e.g. `numeric(12,2)`, `integer[]`.
    pub display: String,
    /// `pg_type.typname`, e.g. `citext`.
    pub typname: String,
    /// `b` base, `c` composite, `d` domain, `e` enum, `p` pseudo, `r` range, `m` multirange.
    pub typtype: char,
    /// The element type of an array type.
    pub element: Option<Box<TypeInfo>>,
    /// The base type of a domain (with the domain's typmod applied).
    pub base: Option<Box<TypeInfo>>,
    /// The fields of a composite type.
    pub fields: Vec<(String, TypeInfo)>,
}

/// A column's mapping: how it is selected and what it becomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mapping {
    pub kind: PgKind,
    /// Cast in the select list (`text`, `numeric`, `int8`, `text[]`), when
    /// the column is not read in its own binary form.
    pub cast: Option<String>,
}

impl Mapping {
    fn binary(kind: PgKind) -> Self {
        Self { kind, cast: None }
    }

    fn cast(kind: PgKind, cast: &str) -> Self {
        Self {
            kind,
            cast: Some(cast.to_string()),
        }
    }

    /// `text` when read through `::text` (or `::text[]`), for display.
    pub fn encoding(&self) -> &str {
        match self.cast.as_deref() {
            None => "binary",
            Some(c) if c.starts_with("text") => "text",
            Some(c) => c,
        }
    }
}

/// Session facts a mapping depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapContext {
    /// Fraction digits of `money` under the server's `lc_monetary`.
    pub money_scale: u8,
}

impl Default for MapContext {
    fn default() -> Self {
        Self { money_scale: 2 }
    }
}

fn numeric_typmod(typmod: i32) -> Option<(i32, i32)> {
    if typmod < 4 {
        return None;
    }
    let m = typmod - 4;
    Some(((m >> 16) & 0xffff, ((m & 0x7ff) ^ 1024) - 1024))
}

fn unsupported(t: &TypeInfo) -> String {
    format!(
        "type {} has no lossless Iceberg mapping; list the column in `text_columns` to archive its text form, or in `exclude_columns`",
        t.display
    )
}

/// Maps a type, or explains why it cannot be archived as is.
pub fn map_type(t: &TypeInfo, ctx: MapContext) -> Result<Mapping, String> {
    if let Some(base) = &t.base {
        return map_type(base, ctx);
    }
    if let Some(el) = &t.element {
        let m = map_type(el, ctx)?;
        if matches!(m.kind, PgKind::Array { .. }) {
            return Err(format!(
                "type {} (arrays of arrays) is not supported",
                t.display
            ));
        }
        let cast = match &m.cast {
            None => None,
            Some(c) if matches!(m.kind, PgKind::Composite { .. }) => {
                return Err(format!("{}: {c}", unsupported(t)));
            }
            Some(c) => Some(format!("{c}[]")),
        };
        return Ok(Mapping {
            kind: PgKind::Array {
                element: Box::new(m.kind),
            },
            cast,
        });
    }
    if t.typtype == 'c' {
        let mut fields = Vec::with_capacity(t.fields.len());
        for (name, ft) in &t.fields {
            let m =
                map_type(ft, ctx).map_err(|e| format!("field `{name}` of {}: {e}", t.display))?;
            if m.cast.is_some() {
                return Err(format!(
                    "field `{name}` of {} is stored as {}, which a composite cannot carry; list the column in `text_columns`",
                    t.display, ft.display
                ));
            }
            fields.push(CompositeField {
                name: name.clone(),
                kind: m.kind,
            });
        }
        if fields.is_empty() {
            return Err(format!("composite type {} has no fields", t.display));
        }
        return Ok(Mapping::binary(PgKind::Composite { fields }));
    }
    if t.typtype == 'e' || t.typname == "citext" {
        return Ok(Mapping::binary(PgKind::Text));
    }
    Ok(match t.oid {
        oid::BOOL => Mapping::binary(PgKind::Bool),
        oid::INT2 => Mapping::binary(PgKind::Int2),
        oid::INT4 => Mapping::binary(PgKind::Int4),
        oid::INT8 => Mapping::binary(PgKind::Int8),
        oid::OID => Mapping::cast(PgKind::Int8, "int8"),
        oid::FLOAT4 => Mapping::binary(PgKind::Float4),
        oid::FLOAT8 => Mapping::binary(PgKind::Float8),
        oid::NUMERIC => match numeric_typmod(t.typmod) {
            Some((p, s)) if (1..=38).contains(&p) && (0..=p).contains(&s) => {
                Mapping::binary(PgKind::Numeric {
                    precision: p as u8,
                    scale: s as u8,
                })
            }
            // Unconstrained, too wide or a negative scale: exact text.
            _ => Mapping::cast(PgKind::Text, "text"),
        },
        oid::MONEY => Mapping::cast(
            PgKind::Numeric {
                precision: 19,
                scale: ctx.money_scale,
            },
            "numeric",
        ),
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::JSON | oid::XML => {
            Mapping::binary(PgKind::Text)
        }
        oid::CHAR => Mapping::cast(PgKind::Text, "text"),
        oid::JSONB => Mapping::binary(PgKind::Jsonb),
        oid::BYTEA => Mapping::binary(PgKind::Bytea),
        oid::UUID => Mapping::binary(PgKind::Uuid),
        oid::DATE => Mapping::binary(PgKind::Date),
        oid::TIME => Mapping::binary(PgKind::Time),
        oid::TIMESTAMP => Mapping::binary(PgKind::Timestamp),
        oid::TIMESTAMPTZ => Mapping::binary(PgKind::Timestamptz),
        oid::INTERVAL => Mapping::binary(PgKind::Interval),
        oid::TIMETZ
        | oid::INET
        | oid::CIDR
        | oid::MACADDR
        | oid::MACADDR8
        | oid::BIT
        | oid::VARBIT => Mapping::cast(PgKind::Text, "text"),
        _ => return Err(unsupported(t)),
    })
}

/// The mapping for a column listed in `text_columns`: its Postgres text form,
/// one string per value (an array's text keeps its dimensions and bounds).
pub fn text_mapping(_t: &TypeInfo) -> Mapping {
    Mapping::cast(PgKind::Text, "text")
}

impl PgKind {
    /// The Iceberg type; nested field ids come from `next_id`.
    pub fn iceberg_type(&self, next_id: &mut i32) -> Type {
        let mut id = || {
            *next_id += 1;
            *next_id
        };
        match self {
            Self::Array { element } => {
                let eid = id();
                let et = element.iceberg_type(next_id);
                Type::List(ListType::new(
                    NestedField::list_element(eid, et, false).into(),
                ))
            }
            Self::Composite { fields } => {
                let ids: Vec<i32> = fields.iter().map(|_| id()).collect();
                let nested = fields
                    .iter()
                    .zip(ids)
                    .map(|(f, fid)| {
                        NestedField::optional(fid, &f.name, f.kind.iceberg_type(next_id)).into()
                    })
                    .collect();
                Type::Struct(StructType::new(nested))
            }
            Self::Interval => {
                let (m, d, u) = (id(), id(), id());
                Type::Struct(StructType::new(vec![
                    NestedField::required(m, "months", Type::Primitive(PrimitiveType::Int)).into(),
                    NestedField::required(d, "days", Type::Primitive(PrimitiveType::Int)).into(),
                    NestedField::required(u, "microseconds", Type::Primitive(PrimitiveType::Long))
                        .into(),
                ]))
            }
            other => Type::Primitive(other.primitive()),
        }
    }

    fn primitive(&self) -> PrimitiveType {
        match self {
            Self::Bool => PrimitiveType::Boolean,
            Self::Int2 | Self::Int4 => PrimitiveType::Int,
            Self::Int8 => PrimitiveType::Long,
            Self::Float4 => PrimitiveType::Float,
            Self::Float8 => PrimitiveType::Double,
            Self::Numeric { precision, scale } => PrimitiveType::Decimal {
                precision: *precision as u32,
                scale: *scale as u32,
            },
            Self::Text | Self::Jsonb => PrimitiveType::String,
            Self::Bytea => PrimitiveType::Binary,
            Self::Uuid => PrimitiveType::Uuid,
            Self::Date => PrimitiveType::Date,
            Self::Time => PrimitiveType::Time,
            Self::Timestamp => PrimitiveType::Timestamp,
            Self::Timestamptz => PrimitiveType::Timestamptz,
            Self::Interval | Self::Array { .. } | Self::Composite { .. } => PrimitiveType::String,
        }
    }

    /// True for the types a time column may have.
    pub fn is_timestamp(&self) -> bool {
        matches!(self, Self::Timestamp | Self::Timestamptz)
    }

    /// A short description of the Iceberg type (for `check`), e.g.
    /// `list<decimal(10,2)>`, `struct<months: int, days: int, microseconds: long>`.
    pub fn describe(&self) -> String {
        match self {
            Self::Array { element } => format!("list<{}>", element.describe()),
            Self::Composite { fields } => format!(
                "struct<{}>",
                fields
                    .iter()
                    .map(|f| format!("{}: {}", f.name, f.kind.describe()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Self::Interval => "struct<months: int, days: int, microseconds: long>".into(),
            Self::Numeric { precision, scale } => format!("decimal({precision},{scale})"),
            other => other.primitive().to_string(),
        }
    }

    /// True when the Iceberg type of `self` equals `t`, ignoring field ids.
    pub fn matches_iceberg(&self, t: &Type) -> bool {
        match (self, t) {
            (Self::Array { element }, Type::List(l)) => {
                element.matches_iceberg(&l.element_field.field_type)
            }
            (Self::Composite { fields }, Type::Struct(s)) => {
                fields.len() == s.fields().len()
                    && fields
                        .iter()
                        .zip(s.fields())
                        .all(|(f, g)| f.name == g.name && f.kind.matches_iceberg(&g.field_type))
            }
            (Self::Interval, Type::Struct(s)) => {
                let names: Vec<&str> = s.fields().iter().map(|f| f.name.as_str()).collect();
                names == ["months", "days", "microseconds"]
            }
            (Self::Array { .. } | Self::Composite { .. } | Self::Interval, _) => false,
            (k, Type::Primitive(p)) => k.primitive() == *p,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(oid: u32, typmod: i32, display: &str) -> TypeInfo {
        TypeInfo {
            oid,
            typmod,
            display: display.into(),
            typname: display.into(),
            typtype: 'b',
            ..Default::default()
        }
    }

    fn numeric_typmod_of(p: i32, s: i32) -> i32 {
        ((p << 16) | (s & 0x7ff)) + 4
    }

    fn map(t: &TypeInfo) -> Result<Mapping, String> {
        map_type(t, MapContext::default())
    }

    #[test]
    fn numerics_decimal_or_exact_text() {
        let m = map(&ty(oid::NUMERIC, numeric_typmod_of(12, 2), "numeric(12,2)")).unwrap();
        assert_eq!(
            m,
            Mapping::binary(PgKind::Numeric {
                precision: 12,
                scale: 2
            })
        );
        for (typmod, name) in [
            (-1, "numeric"),
            (numeric_typmod_of(40, 2), "numeric(40,2)"),
            (numeric_typmod_of(5, -2), "numeric(5,-2)"),
        ] {
            let m = map(&ty(oid::NUMERIC, typmod, name)).unwrap();
            assert_eq!(m, Mapping::cast(PgKind::Text, "text"), "{name}");
        }
    }

    #[test]
    fn text_forms_and_refusals() {
        assert_eq!(map(&ty(oid::INET, -1, "inet")).unwrap().encoding(), "text");
        assert_eq!(
            map(&ty(oid::MONEY, -1, "money")).unwrap().kind,
            PgKind::Numeric {
                precision: 19,
                scale: 2
            }
        );
        let e = map(&ty(600, -1, "point")).unwrap_err();
        assert!(e.contains("point") && e.contains("text_columns"), "{e}");
        assert_eq!(
            text_mapping(&ty(600, -1, "point")),
            Mapping::cast(PgKind::Text, "text")
        );
    }

    #[test]
    fn arrays_domains_composites_enums() {
        let int_arr = TypeInfo {
            element: Some(Box::new(ty(oid::INT4, -1, "integer"))),
            ..ty(1007, -1, "integer[]")
        };
        assert_eq!(
            map(&int_arr).unwrap().kind,
            PgKind::Array {
                element: Box::new(PgKind::Int4)
            }
        );
        let inet_arr = TypeInfo {
            element: Some(Box::new(ty(oid::INET, -1, "inet"))),
            ..ty(1041, -1, "inet[]")
        };
        assert_eq!(map(&inet_arr).unwrap().cast.as_deref(), Some("text[]"));
        let domain = TypeInfo {
            typtype: 'd',
            base: Some(Box::new(ty(oid::INT8, -1, "bigint"))),
            ..ty(99999, -1, "positive_id")
        };
        assert_eq!(map(&domain).unwrap().kind, PgKind::Int8);
        let en = TypeInfo {
            typtype: 'e',
            ..ty(88888, -1, "mood")
        };
        assert_eq!(map(&en).unwrap().kind, PgKind::Text);
        let comp = TypeInfo {
            typtype: 'c',
            fields: vec![
                ("x".into(), ty(oid::FLOAT8, -1, "double precision")),
                ("tag".into(), ty(oid::TEXT, -1, "text")),
            ],
            ..ty(77777, -1, "reading")
        };
        let m = map(&comp).unwrap();
        let mut n = 0;
        let t = m.kind.iceberg_type(&mut n);
        assert_eq!(n, 2);
        assert!(m.kind.matches_iceberg(&t));
        let bad = TypeInfo {
            typtype: 'c',
            fields: vec![("a".into(), ty(oid::INET, -1, "inet"))],
            ..ty(1, -1, "c2")
        };
        assert!(map(&bad).unwrap_err().contains("text_columns"));
    }

    #[test]
    fn interval_is_three_parts() {
        let mut n = 10;
        let t = PgKind::Interval.iceberg_type(&mut n);
        assert_eq!(n, 13);
        let Type::Struct(st) = &t else {
            panic!("not a struct")
        };
        let f: Vec<(i32, &str, bool)> = st
            .fields()
            .iter()
            .map(|f| (f.id, f.name.as_str(), f.required))
            .collect();
        assert_eq!(
            f,
            vec![
                (11, "months", true),
                (12, "days", true),
                (13, "microseconds", true)
            ]
        );
        assert_eq!(
            PgKind::Interval.describe(),
            "struct<months: int, days: int, microseconds: long>"
        );
        let arr = PgKind::Array {
            element: Box::new(PgKind::Numeric {
                precision: 10,
                scale: 2,
            }),
        };
        assert_eq!(arr.describe(), "list<decimal(10,2)>");
    }
}
