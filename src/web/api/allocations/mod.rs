//! `/allocations/` (domain.md §7): clusters, allocation requests, reviews, resource
//! allocations, attachments and comments.

pub mod attachments;
pub mod clusters;
pub mod comments;
pub mod requests;
pub mod resource_allocations;
pub mod reviews;
pub mod shared;

use super::resource;
use crate::domain::validation::pk_value;
use crate::store::Db;
use crate::web::ApiError;
use crate::web::api::Caller;
use crate::web::api::body::Body;
use chrono::NaiveDate;
use sea_query::{Alias, Expr, ExprTrait, Query, SelectStatement};
use serde_json::{Value, json};
use std::collections::HashMap;

/// Staff, or a member of the team of allocation request `request_id` (not when the request
/// is gone): who may see a request's reviews, allocations, attachments and comments.
pub async fn sees_request(db: &Db, caller: &Caller, request_id: i64) -> Result<bool, ApiError> {
    Ok(caller.is_staff()
        || crate::store::teams::in_request_team(db, caller.id(), request_id).await?)
}

// ---------------------------------------------------------------------------------------
// Parent requests of attachments and comments: summaries, teams and the caller's team scope.
// ---------------------------------------------------------------------------------------

pub(crate) const REQUESTS: &str = "allocations_allocationrequest";

/// The columns of an allocation request that its children need.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RequestRef {
    pub id: i64,
    pub title: String,
    pub status: String,
    pub active: Option<NaiveDate>,
    pub expire: Option<NaiveDate>,
    pub team_id: i64,
}

/// Requests by id (one query).
pub async fn requests_by_id(db: &Db, ids: &[i64]) -> Result<HashMap<i64, RequestRef>, ApiError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut q = Query::select();
    q.columns(["id", "title", "status", "active", "expire", "team_id"].map(Alias::new))
        .from(Alias::new(REQUESTS))
        .and_where(Expr::col(Alias::new("id")).is_in(ids));
    let rows: Vec<RequestRef> = crate::store::fetch_all(db, &q).await?;
    Ok(rows.into_iter().map(|r| (r.id, r)).collect())
}

/// AllocationRequestSummary (domain.md §4).
pub fn request_summary(r: &RequestRef) -> Value {
    let date = |d: &Option<NaiveDate>| d.map(|d| d.format("%Y-%m-%d").to_string());
    json!({
        "id": r.id,
        "title": r.title,
        "status": r.status,
        "active": date(&r.active),
        "expire": date(&r.expire),
    })
}

/// List scope of request children for non-staff callers: rows whose request belongs to a
/// team in which the caller holds any membership (active or inactive team).
pub fn scope_to_caller_teams(q: &mut SelectStatement, caller: &Caller) {
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
    q.and_where(Expr::col(Alias::new("request_id")).in_subquery(requests));
}

/// Staff, or any member of the team.
pub async fn is_member_or_staff(db: &Db, caller: &Caller, team_id: i64) -> Result<bool, ApiError> {
    Ok(caller.is_staff() || crate::store::teams::is_member(db, caller.id(), team_id).await?)
}

/// The request named by a body's `request` key, when it parses and exists.
pub async fn body_request(db: &Db, body: &Body) -> Result<Option<RequestRef>, ApiError> {
    let Some(id) = body.get("request").and_then(|v| pk_value(v).ok()) else {
        return Ok(None);
    };
    Ok(requests_by_id(db, &[id]).await?.remove(&id))
}

/// The routes of this family.
pub fn routes() -> crate::web::route::Routes {
    crate::web::route::Routes::new()
        .push(resource::routes::<clusters::Clusters>())
        .push(resource::routes::<requests::Requests>())
        .push(resource::routes::<reviews::Reviews>())
        .push(resource::routes::<resource_allocations::ResourceAllocations>())
        .push(resource::routes::<attachments::Attachments>())
        .push(attachments::download_routes())
        .push(resource::routes::<comments::Comments>())
}
