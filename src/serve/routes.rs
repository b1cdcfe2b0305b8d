//! The handlers.  Each one is annotated for the OpenAPI document
//! ([`super::openapi`]); the document is generated from these annotations.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use iceberg::table::Table;
use serde::{Deserialize, Serialize};

use super::page::{self, Scan};
use super::request::{self, Limits, QueryRequest};
use super::stream::{self, Answer};
use super::{ApiError, AppState};
use crate::config::TableConfig;
use crate::inspect::{self, list, query, show, snapshots};
use crate::plan::window::{parse_instant, rfc3339};

type ApiResult<T> = std::result::Result<T, ApiError>;
type Shared = State<Arc<AppState>>;

/// Every route.
pub fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/tables", get(tables))
        .route("/api/v1/tables/{table}", get(table_info))
        .route("/api/v1/tables/{table}/snapshots", get(table_snapshots))
        .route("/api/v1/tables/{table}/windows", get(table_windows))
        .route(
            "/api/v1/tables/{table}/query",
            get(query_get).post(query_post),
        )
        .route(
            "/api/v1/tables/{table}/windows/{window}/query",
            get(window_query_get).post(window_query_post),
        )
        .route("/api/v1/sql", axum::routing::post(sql))
}

/// Unknown routes: a JSON 404.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route").with_hint("routes are listed in /api/v1/openapi.json")
}

/// Middleware: per-route request counts and durations (to the headers of a
/// streamed answer), and an access log line without the query string.
pub async fn observe(State(state): Shared, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().clone();
    let started = Instant::now();
    let response = next.run(req).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    state.metrics.record_api(&route, status, seconds);
    tracing::info!("{method} {route} {status} {:.1}ms", seconds * 1000.0);
    response
}

async fn metrics(State(state): Shared) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.metrics.encode(),
    )
}

/// A configured archive, as `GET /tables` lists it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TableSummary {
    /// The name used in routes and in SQL (`archive.<name>`).
    pub name: String,
    /// The Postgres source table.
    pub source: String,
    /// The Iceberg table identifier.
    pub iceberg: String,
    pub time_column: String,
    /// hour, day, month or year.
    pub partition_by: String,
    /// False until the first archive run creates the Iceberg table.
    pub exists: bool,
    pub partition_spec: Vec<String>,
    /// Rows in the current snapshot.
    pub rows: Option<u64>,
    /// Start of the oldest archived window (RFC 3339).
    pub range_start: Option<String>,
    /// End of the newest archived window.
    pub range_end: Option<String>,
    pub current_snapshot_id: Option<i64>,
    pub snapshots: usize,
}

#[utoipa::path(get, path = "/api/v1/tables", tag = "tables",
    responses((status = 200, body = [TableSummary]), (status = 401, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn tables(State(state): Shared) -> ApiResult<Json<Vec<TableSummary>>> {
    let mut out = Vec::new();
    for t in &state.cfg.tables {
        let table = inspect::open_table_in(state.catalog.iceberg(), t).await?;
        out.push(summary(t, table.as_ref()).await?);
    }
    Ok(Json(out))
}

async fn summary(t: &TableConfig, table: Option<&Table>) -> crate::error::Result<TableSummary> {
    let mut s = TableSummary {
        name: t.table.clone(),
        source: t.source_name(),
        iceberg: crate::lake::table::ident(t)?.to_string(),
        time_column: t.timestamp_column.clone(),
        partition_by: t.partition_by.name().to_string(),
        exists: table.is_some(),
        partition_spec: vec![],
        rows: None,
        range_start: None,
        range_end: None,
        current_snapshot_id: None,
        snapshots: 0,
    };
    let Some(table) = table else {
        return Ok(s);
    };
    let current = table.metadata().current_snapshot();
    s.partition_spec = show::partition_spec(table, table.metadata().current_schema());
    s.current_snapshot_id = current.map(|c| c.snapshot_id());
    s.rows = current.and_then(|c| {
        c.summary()
            .additional_properties
            .get("total-records")
            .and_then(|v| v.parse().ok())
    });
    s.snapshots = crate::ledger::read::ancestry(table).len();
    if let Some(w) = show::archived_range(table, t.partition_by).await? {
        s.range_start = Some(rfc3339(w.start));
        s.range_end = Some(rfc3339(w.end));
    }
    Ok(s)
}

impl AppState {
    /// The configured table `name` (Iceberg name or source name) and its
    /// Iceberg table; 404 when unknown or not created yet.
    pub async fn table(&self, name: &str) -> ApiResult<(TableConfig, Table)> {
        let t = self
            .cfg
            .tables
            .iter()
            .find(|t| t.table == name)
            .cloned()
            .or_else(|| {
                self.cfg
                    .select_tables(Some(name))
                    .ok()
                    .and_then(|v| v.into_iter().next())
            })
            .ok_or_else(|| {
                let names: Vec<&str> = self.cfg.tables.iter().map(|t| t.table.as_str()).collect();
                ApiError::not_found(format!("no archive table `{name}`"))
                    .with_hint(format!("tables: {}", names.join(", ")))
            })?;
        match inspect::open_table_in(self.catalog.iceberg(), &t).await? {
            Some(table) => Ok((t, table)),
            None => {
                let e = inspect::not_created(&t);
                Err(ApiError::not_found(e.message()).with_hint(e.hint().unwrap_or_default()))
            }
        }
    }
}

#[utoipa::path(get, path = "/api/v1/tables/{table}", tag = "tables",
    params(("table" = String, Path, description = "Iceberg table name or source table")),
    responses((status = 200, body = show::TableInfo), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn table_info(
    State(state): Shared,
    Path(name): Path<String>,
) -> ApiResult<Json<show::TableInfo>> {
    let (_, table) = state.table(&name).await?;
    let mut info = show::show(&table, inspect::SnapshotChoice::Current)?;
    info.properties.retain(|k, _| !secret_like(k));
    Ok(Json(info))
}

/// Property keys that may hold credentials (never answered).
fn secret_like(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "secret",
        "password",
        "token",
        "credential",
        "access-key",
        "session",
    ]
    .iter()
    .any(|s| k.contains(s))
}

#[utoipa::path(get, path = "/api/v1/tables/{table}/snapshots", tag = "tables",
    params(("table" = String, Path)),
    responses((status = 200, body = [snapshots::SnapshotInfo]), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn table_snapshots(
    State(state): Shared,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<snapshots::SnapshotInfo>>> {
    let (_, table) = state.table(&name).await?;
    Ok(Json(snapshots::snapshots(&table)))
}

/// Filters of `GET /tables/{table}/windows`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WindowParams {
    /// Windows starting at or after this instant.
    from: Option<String>,
    /// Windows starting before this instant.
    to: Option<String>,
    /// archived, kept, pending, failed, …
    state: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/tables/{table}/windows", tag = "tables",
    params(("table" = String, Path), WindowParams),
    responses((status = 200, body = [list::WindowLine]), (status = 404, body = super::error::ErrorBody),
        (status = 503, description = "Postgres or the catalog is unreachable", body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn table_windows(
    State(state): Shared,
    Path(name): Path<String>,
    params: std::result::Result<Query<WindowParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<list::WindowLine>>> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let _permit = state.slot().await?;
    let (t, _) = state.table(&name).await?;
    let instant =
        |k: &str, v: &Option<String>| v.as_deref().map(|s| request::instant(k, s)).transpose();
    let filter = list::ListFilter {
        table: Some(t.source_name()),
        from: instant("from", &p.from)?,
        to: instant("to", &p.to)?,
        state: match &p.state {
            Some(s) => Some(
                serde_json::from_value(serde_json::Value::String(s.clone()))
                    .map_err(|_| ApiError::bad_request(format!("`state`: unknown state `{s}`")))?,
            ),
            None => None,
        },
    };
    let deadline = Instant::now() + state.timeout();
    let fut = list::list_in(&state.cfg, state.catalog.iceberg(), &filter, None);
    Ok(Json(state.by(deadline, fut).await?))
}

/// A JSON body, or the rejection as an answer: 413 and 415 as they are,
/// everything else (syntax, unknown field, wrong type) 400 with `hint`.
fn body<T>(json: std::result::Result<Json<T>, JsonRejection>, hint: &str) -> ApiResult<T> {
    json.map(|Json(r)| r).map_err(|e| {
        let status = match e.status() {
            s @ (StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE) => s,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.body_text()).with_hint(hint)
    })
}

const QUERY_BODY: &str = "the body is a JSON object; /api/v1/openapi.json describes it";

#[utoipa::path(post, path = "/api/v1/tables/{table}/query", tag = "query",
    params(("table" = String, Path)),
    request_body = QueryRequest,
    responses(
        (status = 200, description = "A page (application/json), or the whole result streamed in the format `Accept` asks for",
            content(
                (QueryPage = "application/json"),
                (String = "application/x-ndjson"),
                (String = "text/csv"),
                (String = "application/vnd.apache.arrow.stream"),
                (String = "application/vnd.apache.parquet"))),
        (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
        (status = 406, body = super::error::ErrorBody), (status = 413, body = super::error::ErrorBody),
        (status = 504, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn query_post(
    State(state): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    json: std::result::Result<Json<QueryRequest>, JsonRejection>,
) -> ApiResult<Response> {
    run_query(state, name, body(json, QUERY_BODY)?, None, headers).await
}

#[utoipa::path(get, path = "/api/v1/tables/{table}/query", tag = "query",
    description = "The POST body's fields as query parameters (`columns` and `_in` lists comma-separated); every other parameter is a field filter, e.g. `?status=completed&amount_gte=1000`.",
    params(("table" = String, Path)),
    responses((status = 200, body = QueryPage), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn query_get(
    State(state): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    run_query(
        state,
        name,
        QueryRequest::from_params(params)?,
        None,
        headers,
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/tables/{table}/windows/{window}/query", tag = "query",
    params(("table" = String, Path), ("window" = String, Path,
        description = "A window: its start (`2024-01-03`, `2024-01-03-05` for an hour, `2024-01`) or partition (`ts_day=2024-01-03`)")),
    request_body = QueryRequest,
    responses((status = 200, body = QueryPage), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn window_query_post(
    State(state): Shared,
    Path((name, window)): Path<(String, String)>,
    headers: HeaderMap,
    json: std::result::Result<Json<QueryRequest>, JsonRejection>,
) -> ApiResult<Response> {
    run_query(state, name, body(json, QUERY_BODY)?, Some(window), headers).await
}

#[utoipa::path(get, path = "/api/v1/tables/{table}/windows/{window}/query", tag = "query",
    params(("table" = String, Path), ("window" = String, Path)),
    responses((status = 200, body = QueryPage), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn window_query_get(
    State(state): Shared,
    Path((name, window)): Path<(String, String)>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    run_query(
        state,
        name,
        QueryRequest::from_params(params)?,
        Some(window),
        headers,
    )
    .await
}

/// A column of an answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ColumnMeta {
    pub name: String,
    /// The Iceberg type (Arrow's for SQL answers).
    #[serde(rename = "type")]
    pub data_type: String,
    /// The Postgres type the column was archived from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_type: Option<String>,
}

/// A page of a query.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueryPage {
    pub columns: Vec<ColumnMeta>,
    /// One JSON object per row.
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<serde_json::Value>,
    pub returned: usize,
    /// Rows matching the filters in all.
    pub matched: u64,
    pub limit: usize,
    pub offset: usize,
    /// The `offset` of the next page, when there is one (pass `snapshot_id`
    /// too, so every page reads the same snapshot).
    pub next_offset: Option<usize>,
    pub snapshot_id: Option<i64>,
    /// Data files read after partition and file pruning.
    pub files_scanned: usize,
    pub elapsed_ms: u64,
}

async fn run_query(
    state: Arc<AppState>,
    name: String,
    mut req: QueryRequest,
    window: Option<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let answer = stream::negotiate(&headers)?;
    let permit = state.slot().await?;
    let started = Instant::now();
    let deadline = started + state.timeout();
    #[cfg(feature = "fault-injection")]
    let permit = held_for_tests(&state, deadline, permit).await?;
    let work = async {
        let (t, table) = state.table(&name).await?;
        if let Some(w) = &window {
            narrow_to_window(&mut req, &t, w)?;
        }
        let columns: Vec<String> = table
            .metadata()
            .current_schema()
            .as_struct()
            .fields()
            .iter()
            .map(|f| f.name.clone())
            .collect();
        let limits = Limits {
            max_rows: state.cfg.serve.max_rows,
            max_offset: state.cfg.serve.max_offset,
        };
        let spec = req.validate(&columns, &t.timestamp_column, limits)?;
        if let Err(e) = inspect::resolve_snapshot(&table, spec.snapshot) {
            return Err(ApiError::not_found(e.message()).with_hint(e.hint().unwrap_or_default()));
        }
        let paged = answer == Answer::Page || spec.paged;
        let scanned = if paged {
            page::scan_columns(&spec)
        } else {
            spec.columns.clone()
        };
        let scan = page::scan(&table, &spec, &t.timestamp_column, &scanned).await?;
        Ok::<_, ApiError>((t, table, spec, scan))
    };
    let (t, table, spec, scan) = state.by(deadline, work).await?;
    let (files, snapshot_id) = (scan.files, scan.snapshot_id);
    let source = t.source_name();
    match answer {
        Answer::Page => {
            let p = state.by(deadline, page::page(scan, &spec)).await?;
            drop(permit);
            let returned = p.batch.num_rows();
            state
                .metrics
                .record_api_rows(&source, p.matched, returned as u64, files as u64);
            let page = QueryPage {
                columns: column_meta(&table, &spec.columns),
                rows: page::rows_json(&p.batch)?,
                returned,
                matched: p.matched,
                limit: spec.limit,
                offset: spec.offset,
                next_offset: ((spec.offset + returned) < p.matched as usize)
                    .then_some(spec.offset + returned),
                snapshot_id,
                files_scanned: files,
                elapsed_ms: started.elapsed().as_millis() as u64,
            };
            Ok(Json(page).into_response())
        }
        Answer::Stream(format) => {
            let (batches, schema): (_, arrow_schema::SchemaRef) = if spec.paged {
                let p = state.by(deadline, page::page(scan, &spec)).await?;
                let schema = p.batch.schema();
                let one: futures::stream::BoxStream<'static, _> =
                    Box::pin(futures::stream::iter([Ok(p.batch)]));
                (one, schema)
            } else {
                let Scan {
                    batches, schema, ..
                } = scan;
                (batches, schema)
            };
            let metrics = state.metrics.clone();
            let on_done: stream::OnDone = Box::new(move |rows| {
                metrics.record_api_rows(&source, rows, rows, files as u64);
            });
            let mut r = stream::respond(format, batches, schema, None, permit, deadline, on_done);
            annotate(&mut r, snapshot_id, files);
            Ok(r)
        }
    }
}

/// Tests hold a query here, with its slot, on a blocking thread (the
/// `serve-query` pause point): the request times out while the slot stays
/// taken until the test resumes it.
#[cfg(feature = "fault-injection")]
async fn held_for_tests(
    state: &AppState,
    deadline: Instant,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> ApiResult<tokio::sync::OwnedSemaphorePermit> {
    let held = tokio::task::spawn_blocking(move || {
        crate::fault::point_blocking("serve-query");
        permit
    });
    let joined = async {
        held.await
            .map_err(|e| crate::error::Error::internal(format!("the held query failed: {e}")))
    };
    state.by(deadline, joined).await
}

/// Headers of a streamed answer: the snapshot read and the files scanned.
fn annotate(r: &mut Response, snapshot_id: Option<i64>, files: usize) {
    let h = r.headers_mut();
    if let Some(id) = snapshot_id
        && let Ok(v) = HeaderValue::from_str(&id.to_string())
    {
        h.insert("x-permafrost-snapshot-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&files.to_string()) {
        h.insert("x-permafrost-files-scanned", v);
    }
}

/// Limits the request to one window of the table's granularity.
fn narrow_to_window(req: &mut QueryRequest, t: &TableConfig, w: &str) -> ApiResult<()> {
    if req.from.is_some() || req.to.is_some() {
        return Err(ApiError::bad_request("a window route takes no `from`/`to`"));
    }
    let value = w.rsplit('=').next().unwrap_or(w);
    let instant = parse_instant(value)
        .or_else(|| {
            // Partition values: 2024-01-03-05 (hour), 2024-01 (month), 2024 (year).
            let parts: Vec<&str> = value.split('-').collect();
            let text = match parts.as_slice() {
                [y, m, d, h] => format!("{y}-{m}-{d}T{h}:00:00Z"),
                [y, m] => format!("{y}-{m}-01"),
                [y] => format!("{y}-01-01"),
                _ => return None,
            };
            parse_instant(&text)
        })
        .ok_or_else(|| {
            ApiError::bad_request(format!("`{w}` is not a window")).with_hint(
                "e.g. 2024-01-03, 2024-01-03-05 (hour), 2024-01 (month) or ts_day=2024-01-03",
            )
        })?;
    let window = t.partition_by.window_of(instant);
    req.from = Some(rfc3339(window.start));
    req.to = Some(rfc3339(window.end));
    Ok(())
}

fn column_meta(table: &Table, names: &[String]) -> Vec<ColumnMeta> {
    let schema = table.metadata().current_schema();
    let all = show::columns(schema, &show::recorded_columns(table));
    names
        .iter()
        .filter_map(|n| all.iter().find(|c| &c.name == n))
        .map(|c| ColumnMeta {
            name: c.name.clone(),
            data_type: c.iceberg_type.clone(),
            postgres_type: c.postgres_type.clone(),
        })
        .collect()
}

/// `POST /sql`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    /// A query (DataFusion dialect) over `archive.<table>`; DDL, DML and
    /// `SET` are refused.
    pub sql: String,
    /// Read every table as it was at this instant.
    #[serde(default)]
    pub as_of: Option<String>,
}

/// A table a SQL answer read, with its snapshot.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PinnedTable {
    pub table: String,
    pub snapshot_id: Option<i64>,
}

/// A SQL answer (JSON).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SqlAnswer {
    pub columns: Vec<ColumnMeta>,
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<serde_json::Value>,
    pub returned: usize,
    /// More rows than `serve.max_rows` (stream the answer to get them all).
    pub truncated: bool,
    pub tables: Vec<PinnedTable>,
    pub files_scanned: usize,
    pub elapsed_ms: u64,
}

#[utoipa::path(post, path = "/api/v1/sql", tag = "query",
    request_body = SqlRequest,
    responses((status = 200, description = "JSON (at most `serve.max_rows` rows) or the whole answer streamed as `Accept` asks",
            content((SqlAnswer = "application/json"), (String = "application/x-ndjson"), (String = "text/csv"),
                (String = "application/vnd.apache.arrow.stream"), (String = "application/vnd.apache.parquet"))),
        (status = 400, body = super::error::ErrorBody), (status = 504, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn sql(
    State(state): Shared,
    headers: HeaderMap,
    json: std::result::Result<Json<SqlRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let req = body(json, "the body is {\"sql\": \"SELECT …\", \"as_of\": null}")?;
    let answer = stream::negotiate(&headers)?;
    let permit = state.slot().await?;
    let started = Instant::now();
    let deadline = started + state.timeout();
    let as_of = req
        .as_of
        .as_deref()
        .map(|s| request::instant("as_of", s))
        .transpose()?;
    let prepared = state
        .by(
            deadline,
            query::prepare(&state.cfg, state.catalog.iceberg(), &req.sql, as_of),
        )
        .await?;
    let running = query::start(prepared)?;
    let files: usize = running.scans.iter().map(|s| s.files).sum();
    let tables = running
        .tables
        .iter()
        .map(|(t, s)| PinnedTable {
            table: t.clone(),
            snapshot_id: *s,
        })
        .collect();
    match answer {
        Answer::Page => {
            let cap = state.cfg.serve.max_rows;
            let collected = collect(running.batches, running.schema.clone(), cap);
            let (batch, truncated) = state.by(deadline, collected).await?;
            drop(permit);
            let columns = batch
                .schema()
                .fields()
                .iter()
                .map(|f| ColumnMeta {
                    name: f.name().clone(),
                    data_type: f.data_type().to_string(),
                    postgres_type: None,
                })
                .collect();
            Ok(Json(SqlAnswer {
                columns,
                rows: page::rows_json(&batch)?,
                returned: batch.num_rows(),
                truncated,
                tables,
                files_scanned: files,
                elapsed_ms: started.elapsed().as_millis() as u64,
            })
            .into_response())
        }
        Answer::Stream(format) => {
            let on_done: stream::OnDone = Box::new(|_| {});
            let mut r = stream::respond(
                format,
                running.batches,
                running.schema,
                None,
                permit,
                deadline,
                on_done,
            );
            annotate(&mut r, None, files);
            Ok(r)
        }
    }
}

/// At most `cap` rows of a SQL answer, and whether there were more.
async fn collect(
    mut batches: futures::stream::BoxStream<
        'static,
        crate::error::Result<arrow_array::RecordBatch>,
    >,
    schema: arrow_schema::SchemaRef,
    cap: usize,
) -> crate::error::Result<(arrow_array::RecordBatch, bool)> {
    use futures::TryStreamExt;
    let mut kept = Vec::new();
    let mut rows = 0usize;
    let mut truncated = false;
    while let Some(b) = batches.try_next().await? {
        let room = cap - rows;
        if b.num_rows() > room {
            kept.push(b.slice(0, room));
            truncated = true;
            break;
        }
        rows += b.num_rows();
        kept.push(b);
    }
    let schema = kept.first().map(|b| b.schema()).unwrap_or(schema);
    let batch = arrow_select::concat::concat_batches(&schema, &kept)
        .map_err(|e| crate::error::Error::arrow("cannot gather the answer", e))?;
    Ok((batch, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_like_properties_are_never_answered() {
        assert!(secret_like("s3.secret-access-key"));
        assert!(secret_like("rest.token"));
        assert!(secret_like("client.access-key-id"));
        assert!(!secret_like("permafrost.source"));
        assert!(!secret_like("write.parquet.compression-codec"));
    }
}
