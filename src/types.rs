//! Postgres ⇄ Iceberg ⇄ Arrow type mapping.
//!
//! Every supported Postgres type maps to exactly one Iceberg type, losslessly;
//! anything else is refused up front (by `check` and before `archive` touches a
//! row) with a message naming the column and its type.
//!
//! | Postgres                         | Iceberg            | Arrow                         |
//! |----------------------------------|--------------------|-------------------------------|
//! | smallint, integer                | int                | Int32                         |
//! | bigint                           | long               | Int64                         |
//! | real / double precision          | float / double     | Float32 / Float64             |
//! | numeric(p,s), p ≤ 38, s ≥ 0      | decimal(p,s)       | Decimal128(p,s)               |
//! | boolean                          | boolean            | Boolean                       |
//! | text, varchar(n), char(n), name  | string             | Utf8                          |
//! | json, jsonb                      | string (JSON text) | Utf8                          |
//! | bytea                            | binary             | LargeBinary                   |
//! | uuid                             | uuid               | FixedSizeBinary(16)           |
//! | date                             | date               | Date32                        |
//! | timestamp                        | timestamp (µs)     | Timestamp(µs)                 |
//! | timestamptz                      | timestamptz (µs)   | Timestamp(µs, "+00:00")       |
//! | a domain over any of these       | its base type      |                               |

use iceberg::spec::{PrimitiveType, Type};
use serde::Serialize;

/// Postgres type OIDs permafrost knows.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// How a column's binary COPY values are decoded and stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    /// text, varchar, char, name, json: UTF-8 text.
    Text,
    /// jsonb: a version byte, then the JSON text.
    Jsonb,
    Bytea,
    Uuid,
    Date,
    Timestamp,
    Timestamptz,
}

impl PgKind {
    /// Maps a Postgres type (after resolving domains) to a kind, or explains why not.
    pub fn from_pg(type_oid: u32, typmod: i32, type_name: &str) -> Result<Self, String> {
        Ok(match type_oid {
            oid::BOOL => Self::Bool,
            oid::INT2 => Self::Int2,
            oid::INT4 => Self::Int4,
            oid::INT8 => Self::Int8,
            oid::FLOAT4 => Self::Float4,
            oid::FLOAT8 => Self::Float8,
            oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::JSON => Self::Text,
            oid::JSONB => Self::Jsonb,
            oid::BYTEA => Self::Bytea,
            oid::UUID => Self::Uuid,
            oid::DATE => Self::Date,
            oid::TIMESTAMP => Self::Timestamp,
            oid::TIMESTAMPTZ => Self::Timestamptz,
            oid::NUMERIC => {
                if typmod < 4 {
                    return Err(format!(
                        "{type_name} without precision cannot be stored as an Iceberg decimal without rounding; declare it numeric(p,s) with p ≤ 38"
                    ));
                }
                let m = typmod - 4;
                let precision = (m >> 16) & 0xffff;
                let scale = ((m & 0x7ff) ^ 1024) - 1024;
                if precision > 38 {
                    return Err(format!(
                        "{type_name}: precision {precision} is above Iceberg's maximum of 38"
                    ));
                }
                if scale < 0 || scale > precision {
                    return Err(format!(
                        "{type_name}: scale {scale} is not supported by Iceberg decimals"
                    ));
                }
                Self::Numeric {
                    precision: precision as u8,
                    scale: scale as u8,
                }
            }
            _ => return Err(format!("type {type_name} is not supported yet")),
        })
    }

    /// The Iceberg type this kind is stored as.
    pub fn iceberg_type(self) -> Type {
        Type::Primitive(match self {
            Self::Bool => PrimitiveType::Boolean,
            Self::Int2 | Self::Int4 => PrimitiveType::Int,
            Self::Int8 => PrimitiveType::Long,
            Self::Float4 => PrimitiveType::Float,
            Self::Float8 => PrimitiveType::Double,
            Self::Numeric { precision, scale } => PrimitiveType::Decimal {
                precision: precision as u32,
                scale: scale as u32,
            },
            Self::Text | Self::Jsonb => PrimitiveType::String,
            Self::Bytea => PrimitiveType::Binary,
            Self::Uuid => PrimitiveType::Uuid,
            Self::Date => PrimitiveType::Date,
            Self::Timestamp => PrimitiveType::Timestamp,
            Self::Timestamptz => PrimitiveType::Timestamptz,
        })
    }

    /// True for the types a time column may have.
    pub fn is_timestamp(self) -> bool {
        matches!(self, Self::Timestamp | Self::Timestamptz)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_typmod(p: i32, s: i32) -> i32 {
        ((p << 16) | (s & 0x7ff)) + 4
    }

    #[test]
    fn numeric_typmods() {
        assert_eq!(
            PgKind::from_pg(oid::NUMERIC, numeric_typmod(12, 2), "numeric(12,2)").unwrap(),
            PgKind::Numeric {
                precision: 12,
                scale: 2
            }
        );
        assert!(
            PgKind::from_pg(oid::NUMERIC, -1, "numeric")
                .unwrap_err()
                .contains("without precision")
        );
        assert!(PgKind::from_pg(oid::NUMERIC, numeric_typmod(40, 2), "numeric(40,2)").is_err());
        assert!(PgKind::from_pg(oid::NUMERIC, numeric_typmod(5, -2), "numeric(5,-2)").is_err());
    }

    #[test]
    fn unsupported_types_are_named() {
        let e = PgKind::from_pg(1186, -1, "interval").unwrap_err();
        assert!(e.contains("interval"), "{e}");
    }

    #[test]
    fn iceberg_types() {
        assert_eq!(
            PgKind::Int2.iceberg_type(),
            Type::Primitive(PrimitiveType::Int)
        );
        assert_eq!(
            PgKind::Jsonb.iceberg_type(),
            Type::Primitive(PrimitiveType::String)
        );
        assert_eq!(
            PgKind::Timestamptz.iceberg_type(),
            Type::Primitive(PrimitiveType::Timestamptz)
        );
    }
}
