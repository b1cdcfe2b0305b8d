//! Query requests: the JSON body of `POST …/query`, the same as `GET`
//! parameters, and their validation against the table's columns (pure).
//!
//! The shape follows the seed's API: `columns`, field `filters` keyed
//! `column[_op]` (`{"amount_gte": 1000, "status": "completed"}`), an
//! expression `filter` (`amount >= 1000 AND status = 'completed'`), `limit`,
//! `offset`; plus a time range (`from`, `to`), time travel (`snapshot_id` or
//! `as_of`) and `order_by`.  Values are never pasted into SQL: filters become
//! Iceberg predicates with each literal converted to its column's type.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::ApiError;
use crate::filter::{FieldOp, Filter};
use crate::inspect::SnapshotChoice;
use crate::plan::window::{Micros, parse_instant};

/// Rows a page holds when the request sets no `limit`.
pub const DEFAULT_LIMIT: usize = 1000;

/// A query over one archive table.
#[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// Columns to return, in this order (default: all).
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Field filters, all of which must hold: `{"status": "completed",
    /// "amount_gte": 1000, "sensor_id_in": [1, 2]}`.  Operators (suffix after
    /// the column): none or `_eq`, `_ne`, `_lt`, `_lte`, `_gt`, `_gte`, `_in`,
    /// `_not_in`, `_like` (`'prefix%'`), `_is_null` (true/false).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub filters: BTreeMap<String, serde_json::Value>,
    /// An expression filter: `amount >= 1000 AND status = 'completed'`
    /// (comparisons, AND/OR/NOT, IN, BETWEEN, IS NULL, LIKE 'prefix%').
    #[serde(default)]
    pub filter: Option<String>,
    /// Start of the time range (inclusive), date or RFC 3339.
    #[serde(default)]
    pub from: Option<String>,
    /// End of the time range (exclusive).
    #[serde(default)]
    pub to: Option<String>,
    /// Read this snapshot (time travel).
    #[serde(default)]
    pub snapshot_id: Option<i64>,
    /// Read the snapshot current at this instant (time travel).
    #[serde(default)]
    pub as_of: Option<String>,
    /// Sort keys, comma-separated, each `column` or `column desc` (default:
    /// the time column, then every returned column).
    #[serde(default)]
    pub order_by: Option<String>,
    /// Rows in the page (default 1000, at most `serve.max_rows`).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Rows skipped before the page.
    #[serde(default)]
    pub offset: Option<usize>,
}

/// One sort key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub column: String,
    pub descending: bool,
}

/// A validated query.
#[derive(Debug, Clone)]
pub struct QuerySpec {
    /// Returned columns, in order.
    pub columns: Vec<String>,
    pub filter: Option<Filter>,
    pub range: (Option<Micros>, Option<Micros>),
    pub snapshot: SnapshotChoice,
    pub order: Vec<SortKey>,
    pub limit: usize,
    pub offset: usize,
    /// The request asked for an order, a limit or an offset (a streamed
    /// answer then sorts and pages too; otherwise it streams every row).
    pub paged: bool,
}

/// Limits that validation applies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_rows: usize,
    pub max_offset: usize,
}

impl QueryRequest {
    /// The request from `GET` parameters: the named ones as in the body, every
    /// other one a field filter (`?status=completed&amount_gte=1000`; `_in`
    /// lists are comma-separated).
    pub fn from_params(params: HashMap<String, String>) -> Result<Self, ApiError> {
        let mut r = QueryRequest::default();
        let number = |k: &str, v: &str| {
            v.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("`{k}`: `{v}` is not a count")))
        };
        for (k, v) in params {
            match k.as_str() {
                "columns" => {
                    r.columns = Some(v.split(',').map(|c| c.trim().to_string()).collect());
                }
                "filter" => r.filter = Some(v),
                "from" => r.from = Some(v),
                "to" => r.to = Some(v),
                "as_of" => r.as_of = Some(v),
                "order_by" => r.order_by = Some(v),
                "snapshot_id" => {
                    r.snapshot_id = Some(v.parse().map_err(|_| {
                        ApiError::bad_request(format!("`snapshot_id`: `{v}` is not a snapshot id"))
                    })?)
                }
                "limit" => r.limit = Some(number(&k, &v)?),
                "offset" => r.offset = Some(number(&k, &v)?),
                _ if k.ends_with("_in") => {
                    let items = v.split(',').map(|s| serde_json::Value::from(s.trim()));
                    r.filters
                        .insert(k, serde_json::Value::Array(items.collect()));
                }
                _ => {
                    r.filters.insert(k, serde_json::Value::String(v));
                }
            }
        }
        Ok(r)
    }

    /// Validates the request against the table's `columns`.
    pub fn validate(
        &self,
        columns: &[String],
        time_column: &str,
        limits: Limits,
    ) -> Result<QuerySpec, ApiError> {
        let known = |c: &str| -> Result<String, ApiError> {
            if columns.iter().any(|k| k == c) {
                Ok(c.to_string())
            } else {
                Err(unknown_column(c, columns))
            }
        };
        let returned = match &self.columns {
            Some(cs) if cs.is_empty() => return Err(ApiError::bad_request("`columns` is empty")),
            Some(cs) => cs.iter().map(|c| known(c)).collect::<Result<Vec<_>, _>>()?,
            None => columns.to_vec(),
        };
        let filter = self.filter(columns)?;
        let range = (
            self.from
                .as_deref()
                .map(|s| instant("from", s))
                .transpose()?,
            self.to.as_deref().map(|s| instant("to", s)).transpose()?,
        );
        if let (Some(a), Some(b)) = range
            && a >= b
        {
            return Err(ApiError::bad_request("`from` must be before `to`"));
        }
        let snapshot = match (self.snapshot_id, &self.as_of) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "give `snapshot_id` or `as_of`, not both",
                ));
            }
            (Some(id), None) => SnapshotChoice::Id(id),
            (None, Some(t)) => SnapshotChoice::AsOf(instant("as_of", t)?),
            (None, None) => SnapshotChoice::Current,
        };
        let order = self.order(columns, time_column, &returned)?;
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT).min(limits.max_rows);
        let offset = self.offset.unwrap_or(0);
        if offset.saturating_add(limit) > limits.max_offset {
            return Err(ApiError::bad_request(format!(
                "offset + limit ({}) is above `serve.max_offset` ({})",
                offset.saturating_add(limit),
                limits.max_offset
            ))
            .with_hint(
                "page by time with `from`/`to`, or ask for a stream (Accept: application/x-ndjson)",
            ));
        }
        Ok(QuerySpec {
            columns: returned,
            filter,
            range,
            snapshot,
            order,
            limit,
            offset,
            paged: self.order_by.is_some() || self.limit.is_some() || self.offset.is_some(),
        })
    }

    /// The field filters and the expression filter, ANDed.
    fn filter(&self, columns: &[String]) -> Result<Option<Filter>, ApiError> {
        let mut all: Option<Filter> = None;
        let mut add = |f: Filter| {
            all = Some(match all.take() {
                Some(a) => a.and(f),
                None => f,
            })
        };
        for (key, value) in &self.filters {
            let (column, op) = FieldOp::split(key, columns).ok_or_else(|| {
                unknown_column(key, columns).with_hint(format!(
                    "filters are keyed `column` or `column_op` (op: {}); columns: {}",
                    FieldOp::ALL.map(|(s, _)| s).join(", "),
                    columns.join(", ")
                ))
            })?;
            add(Filter::field(column, op, values(key, value)?)?);
        }
        if let Some(expr) = &self.filter {
            let f = Filter::parse(expr)?;
            f.validate_columns(columns)?;
            add(f);
        }
        Ok(all)
    }

    fn order(
        &self,
        columns: &[String],
        time_column: &str,
        returned: &[String],
    ) -> Result<Vec<SortKey>, ApiError> {
        let mut keys = Vec::new();
        if let Some(spec) = &self.order_by {
            for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let mut words = item.split_whitespace();
                let column = words.next().unwrap_or_default();
                let descending = match words.next().map(|w| w.to_ascii_lowercase()) {
                    None => false,
                    Some(w) if w == "asc" => false,
                    Some(w) if w == "desc" => true,
                    Some(w) => {
                        return Err(ApiError::bad_request(format!(
                            "`order_by`: `{w}` is not asc or desc"
                        )));
                    }
                };
                if words.next().is_some() {
                    return Err(ApiError::bad_request(format!(
                        "`order_by`: `{item}` is not `column [asc|desc]`"
                    )));
                }
                if !columns.iter().any(|c| c == column) {
                    return Err(unknown_column(column, columns));
                }
                keys.push(SortKey {
                    column: column.to_string(),
                    descending,
                });
            }
        }
        // Ties broken by the time column and every returned column, so pages
        // never overlap or skip rows.
        for c in std::iter::once(time_column).chain(returned.iter().map(String::as_str)) {
            if !keys.iter().any(|k| k.column == c) {
                keys.push(SortKey {
                    column: c.to_string(),
                    descending: false,
                });
            }
        }
        Ok(keys)
    }
}

/// The instant a request parameter names (date or RFC 3339); 400 otherwise.
pub fn instant(key: &str, s: &str) -> Result<Micros, ApiError> {
    parse_instant(s).ok_or_else(|| {
        ApiError::bad_request(format!("`{key}`: `{s}` is not a date or timestamp"))
            .with_hint("e.g. 2024-01-01 or 2024-01-01T06:00:00Z")
    })
}

fn unknown_column(c: &str, columns: &[String]) -> ApiError {
    ApiError::bad_request(format!("unknown column `{c}`"))
        .with_hint(format!("columns: {}", columns.join(", ")))
}

/// The values of one field filter as text (converted to the column's type
/// later): a scalar, or a list of scalars.
fn values(key: &str, v: &serde_json::Value) -> Result<Vec<String>, ApiError> {
    use serde_json::Value as V;
    let scalar = |v: &V| match v {
        V::String(s) => Ok(s.clone()),
        V::Number(n) => Ok(n.to_string()),
        V::Bool(b) => Ok(b.to_string()),
        _ => Err(ApiError::bad_request(format!(
            "filter `{key}`: {v} is not a string, number or boolean"
        ))
        .with_hint("use `column_is_null: true` for NULL")),
    };
    match v {
        V::Array(items) => items.iter().map(scalar).collect(),
        other => Ok(vec![scalar(other)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols() -> Vec<String> {
        ["id", "ts", "amount", "status"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    const LIMITS: Limits = Limits {
        max_rows: 500,
        max_offset: 10_000,
    };

    fn body(json: &str) -> QueryRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_seed_request_validates_with_its_defaults() {
        let r = body(
            r#"{"columns":["id","amount"],"filters":{"amount_gte":1000,"status":"completed"},"limit":100,"offset":200}"#,
        );
        let q = r.validate(&cols(), "ts", LIMITS).unwrap();
        assert_eq!(q.columns, vec!["id", "amount"]);
        assert_eq!((q.limit, q.offset, q.paged), (100, 200, true));
        let order: Vec<_> = q.order.iter().map(|k| k.column.as_str()).collect();
        assert_eq!(order, vec!["ts", "id", "amount"]);
        assert_eq!(
            q.filter.unwrap().to_sql(),
            "((\"amount\" >= '1000') AND (\"status\" = 'completed'))"
        );
    }

    #[test]
    fn get_parameters_are_the_same_request() {
        let params: HashMap<String, String> = [
            ("columns", "id,amount"),
            ("status", "completed"),
            ("id_in", "1, 2,3"),
            ("limit", "50"),
            ("order_by", "amount desc"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let q = QueryRequest::from_params(params)
            .unwrap()
            .validate(&cols(), "ts", LIMITS)
            .unwrap();
        assert_eq!(q.limit, 50);
        assert_eq!(
            q.order[0],
            SortKey {
                column: "amount".into(),
                descending: true
            }
        );
        assert!(
            q.filter
                .unwrap()
                .to_sql()
                .contains("\"id\" IN ('1', '2', '3')")
        );
    }

    #[test]
    fn mistakes_are_400s_that_name_the_culprit() {
        let bad = |json: &str| body(json).validate(&cols(), "ts", LIMITS).unwrap_err();
        assert!(bad(r#"{"columns":["nope"]}"#).error.contains("`nope`"));
        assert!(
            bad(r#"{"filters":{"nope_gte":1}}"#)
                .error
                .contains("`nope_gte`")
        );
        assert!(bad(r#"{"filter":"nope = 1"}"#).error.contains("`nope`"));
        assert!(bad(r#"{"filter":"1=1; DROP TABLE t"}"#).status == 400);
        assert!(bad(r#"{"from":"yesterday"}"#).error.contains("from"));
        assert!(bad(r#"{"from":"2024-02-01","to":"2024-01-01"}"#).status == 400);
        assert!(bad(r#"{"snapshot_id":1,"as_of":"2024-01-01"}"#).status == 400);
        assert!(bad(r#"{"order_by":"amount sideways"}"#).status == 400);
        assert!(
            bad(r#"{"offset":9999,"limit":10}"#)
                .error
                .contains("max_offset")
        );
        assert!(bad(r#"{"filters":{"status":null}}"#).status == 400);
        assert!(serde_json::from_str::<QueryRequest>(r#"{"colums":["id"]}"#).is_err());
    }

    #[test]
    fn limit_is_capped_by_config() {
        let q = body(r#"{"limit":100000}"#)
            .validate(&cols(), "ts", LIMITS)
            .unwrap();
        assert_eq!(q.limit, 500);
        let q = body("{}").validate(&cols(), "ts", LIMITS).unwrap();
        assert_eq!((q.limit, q.paged), (500, false));
    }
}
