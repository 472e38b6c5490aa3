//! What the resources hanging off an allocation request share about it: its table, its
//! summary (domain.md §4), the membership scope of its children (§7.2) and the small pieces
//! of their validation (creation times, unknown ids).

use crate::domain::validation::pk_value;
use crate::on_db;
use crate::store::Db;
use crate::web::ApiError;
use crate::web::api::Caller;
use crate::web::api::body::Body;
use crate::web::api::summaries::Embedded;
use chrono::{DateTime, NaiveDate, SubsecRound, Utc};
use salvo::oapi::ToSchema;
use sea_query::{Alias, Expr, ExprTrait, Query};
use serde::Serialize;
use std::collections::HashMap;

/// The allocation request table.
pub const REQUESTS: &str = "allocations_allocationrequest";

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "AllocationRequestSummary"))]
pub struct AllocationRequestSummaryDoc {
    pub id: i64,
    #[salvo(schema(max_length = 250))]
    pub title: String,
    pub status: String,
    pub active: Option<String>,
    pub expire: Option<String>,
}

/// A date as response bodies render it (`YYYY-MM-DD`), or null.
pub fn date_text(d: &Option<NaiveDate>) -> Option<String> {
    d.map(|d| d.format("%Y-%m-%d").to_string())
}

/// A timestamp for a new row, at the precision both backends keep.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// The error for a related id that does not exist.
pub fn invalid_pk(id: i64) -> String {
    format!("Invalid pk \"{id}\" - object does not exist.")
}

/// Non-staff visibility of a team-scoped resource whose `column` names a request: rows of
/// requests of every team the caller has a membership in (domain.md §7.2).
pub fn scope_via_request(q: &mut sea_query::SelectStatement, caller: &Caller, column: &str) {
    if caller.is_staff() {
        return;
    }
    let mut requests = Query::select();
    requests
        .column(Alias::new("id"))
        .from(Alias::new(REQUESTS))
        .and_where(
            Expr::col(Alias::new("team_id")).in_subquery(crate::store::teams::of_user(caller.id())),
        );
    q.and_where(Expr::col(Alias::new(column)).in_subquery(requests));
}

/// Whether request `id` does not exist.
pub async fn missing(db: &Db, id: i64) -> Result<bool, ApiError> {
    Ok(crate::store::first_missing(db, REQUESTS, &[id])
        .await?
        .is_some())
}

/// The team of request `id`, if the request exists.
pub async fn request_team(db: &Db, id: i64) -> Result<Option<i64>, ApiError> {
    Ok(on_db!(db, |p| sqlx::query_scalar(
        "SELECT team_id FROM allocations_allocationrequest WHERE id = $1"
    )
    .bind(id)
    .fetch_optional(p)
    .await)?)
}

#[derive(sqlx::FromRow)]
struct SummaryRow {
    id: i64,
    title: String,
    status: String,
    active: Option<NaiveDate>,
    expire: Option<NaiveDate>,
}

/// AllocationRequestSummary objects by id (one query).
pub async fn summaries_by_id(db: &Db, ids: &[i64]) -> Result<HashMap<i64, Embedded>, ApiError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut q = Query::select();
    q.columns(["id", "title", "status", "active", "expire"].map(Alias::new))
        .from(Alias::new(REQUESTS))
        .and_where(Expr::col(Alias::new("id")).is_in(ids));
    let rows: Vec<SummaryRow> = crate::store::fetch_all(db, &q).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let summary = Embedded::of(&AllocationRequestSummaryDoc {
                id: r.id,
                title: r.title.clone(),
                status: r.status.clone(),
                active: date_text(&r.active),
                expire: date_text(&r.expire),
            });
            (r.id, summary)
        })
        .collect())
}

/// The team of the request a body's `request` key names, when it parses and the request
/// exists (the view-level rules of the children's writes).
pub async fn body_request_team(db: &Db, body: &Body) -> Result<Option<i64>, ApiError> {
    match body.get("request").and_then(|v| pk_value(v).ok()) {
        Some(id) => request_team(db, id).await,
        None => Ok(None),
    }
}
