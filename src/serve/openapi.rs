//! The OpenAPI 3 document, generated from the handlers' annotations
//! (`GET /api/v1/openapi.json`, `permafrost serve --openapi`).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{error, request, routes};
use crate::inspect::{list, show, snapshots};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "permafrost archive API",
        description = "Read-only queries over the Iceberg archives of PostgreSQL tables: metadata, snapshots, windows, filtered and time-travelling queries, and SQL."
    ),
    paths(
        openapi_json,
        routes::tables,
        routes::table_info,
        routes::table_snapshots,
        routes::table_windows,
        routes::query_post,
        routes::query_get,
        routes::window_query_post,
        routes::window_query_get,
        routes::sql,
    ),
    components(schemas(
        error::ErrorBody,
        request::QueryRequest,
        routes::TableSummary,
        routes::QueryPage,
        routes::ColumnMeta,
        routes::SqlRequest,
        routes::SqlAnswer,
        routes::PinnedTable,
        show::TableInfo,
        show::ColumnInfo,
        show::SchemaSpan,
        snapshots::SnapshotInfo,
        list::WindowLine,
        crate::plan::WindowState,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "tables", description = "What is archived"),
        (name = "query", description = "Rows of the archive"),
        (name = "meta", description = "This API")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `GET /api/v1/openapi.json`.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "This document", content_type = "application/json")))]
pub(super) async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(document())
}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The document as pretty JSON.
pub fn json() -> String {
    document()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
