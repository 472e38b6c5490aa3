//! `/allocations/requests/` (domain.md §7.2, §7.3): allocation requests of a team. Team
//! admins/owners create them (⚑ pending, with their own team's grants and publications only),
//! staff edit and delete them, every member reads them. Also the
//! helpers the other team-scoped allocation resources share: the membership scope, request
//! summaries, date parsing, and the audit entries of cascading deletes.

use super::clusters::{self, first_missing};
use crate::config::Engine;
use crate::domain::validation::{Text, Validator, pk_value};
use crate::store::audit::{self, Action, AuditContext, Snapshot};
use crate::store::{Db, Tx};
use crate::web::ApiError;
use crate::web::api::list::{self as listing, Column, Kind, ListSpec, search, search_via};
use crate::web::api::summaries::{self, render_datetime};
use crate::web::api::{Caller, body, context, path_id};
use crate::{on_db, on_tx};
use chrono::{DateTime, NaiveDate, SubsecRound, Utc};
use chrono_tz::Tz;
use salvo::http::StatusCode;
use salvo::oapi::ToSchema;
use salvo::prelude::*;
use sea_query::{Alias, Expr, ExprTrait, Query};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;

pub const CONTENT_TYPE: &str = "allocations | AllocationRequest";
const MODEL: &str = "AllocationRequest";
pub const STATUSES: &[&str] = &["PD", "AP", "DC", "CR"];

pub const TABLE: &str = "allocations_allocationrequest";

const COLUMNS: &[Column] = &[
    Column::new("id", Kind::Int),
    Column::new("title", Kind::Text),
    Column::new("description", Kind::Text),
    Column::new("submitted", Kind::DateTime),
    Column::new("active", Kind::Date),
    Column::new("expire", Kind::Date),
    Column::new("status", Kind::Choice(STATUSES)),
    Column::new("submitter", Kind::Fk("users_user")),
    Column::new("team", Kind::Fk("users_team")),
];

pub const SPEC: ListSpec = ListSpec {
    table: TABLE,
    filters: COLUMNS,
    order: COLUMNS,
    search: &[
        search("title"),
        search("description"),
        search_via(&[("team_id", "users_team")], "name"),
        search_via(&[("submitter_id", "users_user")], "username"),
        search_via(&[("submitter_id", "users_user")], "first_name"),
        search_via(&[("submitter_id", "users_user")], "last_name"),
    ],
};

const ROW_COLUMNS: [&str; 9] = [
    "id",
    "title",
    "description",
    "submitted",
    "active",
    "expire",
    "status",
    "submitter_id",
    "team_id",
];

// ---------------------------------------------------------------------------------------
// OpenAPI documentation of the representations
// ---------------------------------------------------------------------------------------

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

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "ResourceAllocationSummary"))]
pub struct ResourceAllocationSummaryDoc {
    pub id: i64,
    pub cluster: i64,
    #[salvo(schema(minimum = 0, maximum = 2147483647))]
    pub requested: i64,
    #[salvo(schema(minimum = 0, maximum = 2147483647))]
    pub awarded: Option<i64>,
    #[salvo(schema(minimum = 0, maximum = 2147483647))]
    pub r#final: Option<i64>,
    pub _cluster: super::clusters::ClusterSummaryDoc,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "AttachmentSummary"))]
pub struct AttachmentSummaryDoc {
    pub file: String,
    pub name: String,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "CommentSummary"))]
pub struct CommentSummaryDoc {
    pub id: i64,
    pub user: i64,
    #[salvo(schema(max_length = 2000))]
    pub content: String,
    pub created: String,
    pub private: bool,
    pub _user: crate::web::api::summaries::UserSummaryDoc,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "GrantSummary"))]
pub struct GrantSummaryDoc {
    pub id: i64,
    #[salvo(schema(max_length = 250))]
    pub title: String,
    #[salvo(schema(max_length = 100))]
    pub agency: String,
    #[salvo(schema(max_length = 100))]
    pub pi: Option<String>,
    pub amount: String,
    #[salvo(schema(max_length = 250))]
    pub grant_number: Option<String>,
    pub start_date: String,
    pub end_date: Option<String>,
    pub description: Option<String>,
    pub team: i64,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "PublicationSummary"))]
pub struct PublicationSummaryDoc {
    pub id: i64,
    #[salvo(schema(max_length = 250))]
    pub title: String,
    pub r#abstract: Option<String>,
    pub published: Option<String>,
    pub submitted: Option<String>,
    #[salvo(schema(max_length = 100))]
    pub journal: Option<String>,
    #[salvo(schema(max_length = 50))]
    pub doi: Option<String>,
    #[salvo(schema(max_length = 20))]
    pub volume: Option<String>,
    #[salvo(schema(max_length = 20))]
    pub issue: Option<String>,
    pub team: i64,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "AllocationRequest"))]
pub struct AllocationRequestDoc {
    pub id: i64,
    pub _submitter: crate::web::api::summaries::UserSummaryDoc,
    pub _team: crate::web::api::summaries::TeamSummaryDoc,
    pub _assignees: Vec<crate::web::api::summaries::UserSummaryDoc>,
    pub _publications: Vec<PublicationSummaryDoc>,
    pub _grants: Vec<GrantSummaryDoc>,
    pub _history: Vec<crate::web::api::summaries::AuditLogSummaryDoc>,
    pub _allocations: Vec<ResourceAllocationSummaryDoc>,
    pub _attachments: Vec<AttachmentSummaryDoc>,
    pub _comments: Vec<CommentSummaryDoc>,
    #[salvo(schema(max_length = 250))]
    pub title: String,
    #[salvo(schema(max_length = 20000))]
    pub description: String,
    pub submitted: String,
    #[salvo(schema(required))]
    pub active: Option<String>,
    #[salvo(schema(required))]
    pub expire: Option<String>,
    /// * `PD` - Pending
    /// * `AP` - Approved
    /// * `DC` - Declined
    /// * `CR` - Changes Requested
    pub status: String,
    pub submitter: i64,
    pub team: i64,
    pub assignees: Vec<i64>,
    pub publications: Vec<i64>,
    pub grants: Vec<i64>,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "AllocationRequestRequest"))]
pub struct AllocationRequestRequestDoc {
    #[salvo(schema(min_length = 1, max_length = 250))]
    pub title: String,
    #[salvo(schema(min_length = 1, max_length = 20000))]
    pub description: String,
    #[salvo(schema(format = Date))]
    pub active: Option<String>,
    #[salvo(schema(format = Date))]
    pub expire: Option<String>,
    /// * `PD` - Pending
    /// * `AP` - Approved
    /// * `DC` - Declined
    /// * `CR` - Changes Requested
    ///
    /// Non-staff callers may only create a request in status `PD` (403 otherwise).
    #[salvo(schema(required = false))]
    pub status: String,
    pub submitter: i64,
    pub team: i64,
    #[salvo(schema(required = false))]
    pub assignees: Vec<i64>,
    /// Non-staff callers may only link publications of the request's team (403 otherwise).
    #[salvo(schema(required = false))]
    pub publications: Vec<i64>,
    /// Non-staff callers may only link grants of the request's team (403 otherwise).
    #[salvo(schema(required = false))]
    pub grants: Vec<i64>,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "PatchedAllocationRequestRequest"))]
pub struct PatchedAllocationRequestRequestDoc {
    #[salvo(schema(min_length = 1, max_length = 250, required = false))]
    pub title: String,
    #[salvo(schema(min_length = 1, max_length = 20000, required = false))]
    pub description: String,
    #[salvo(schema(format = Date))]
    pub active: Option<String>,
    #[salvo(schema(format = Date))]
    pub expire: Option<String>,
    /// * `PD` - Pending
    /// * `AP` - Approved
    /// * `DC` - Declined
    /// * `CR` - Changes Requested
    #[salvo(schema(required = false))]
    pub status: String,
    #[salvo(schema(required = false))]
    pub submitter: i64,
    #[salvo(schema(required = false))]
    pub team: i64,
    #[salvo(schema(required = false))]
    pub assignees: Vec<i64>,
    #[salvo(schema(required = false))]
    pub publications: Vec<i64>,
    #[salvo(schema(required = false))]
    pub grants: Vec<i64>,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "PaginatedAllocationRequestList"))]
pub struct AllocationRequestPage {
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<AllocationRequestDoc>,
}

// ---------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RequestRow {
    pub id: i64,
    pub title: String,
    pub description: String,
    pub submitted: DateTime<Utc>,
    pub active: Option<NaiveDate>,
    pub expire: Option<NaiveDate>,
    pub status: String,
    pub submitter_id: i64,
    pub team_id: i64,
}

pub fn render_date(d: &Option<NaiveDate>) -> Value {
    d.map(|d| Value::String(d.format("%Y-%m-%d").to_string()))
        .unwrap_or(Value::Null)
}

/// A timestamp for a new row, at the precision both backends keep.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
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
        .from(Alias::new(TABLE))
        .and_where(
            Expr::col(Alias::new("team_id")).in_subquery(crate::store::teams::of_user(caller.id())),
        );
    q.and_where(Expr::col(Alias::new(column)).in_subquery(requests));
}

/// Non-staff list visibility of requests: those of the caller's teams.
fn scope(q: &mut sea_query::SelectStatement, caller: &Caller) {
    if !caller.is_staff() {
        q.and_where(
            Expr::col(Alias::new("team_id")).in_subquery(crate::store::teams::of_user(caller.id())),
        );
    }
}

pub async fn by_id(db: &Db, id: i64) -> Result<Option<RequestRow>, ApiError> {
    Ok(on_db!(db, |p| sqlx::query_as::<_, RequestRow>(
        "SELECT id, title, description, submitted, active, expire, status, submitter_id, team_id \
         FROM allocations_allocationrequest WHERE id = $1"
    )
    .bind(id)
    .fetch_optional(p)
    .await)?)
}

/// Requests by id (one query).
pub async fn by_ids(db: &Db, ids: &[i64]) -> Result<HashMap<i64, RequestRow>, ApiError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut q = Query::select();
    q.columns(ROW_COLUMNS.map(Alias::new))
        .from(Alias::new(TABLE))
        .and_where(Expr::col(Alias::new("id")).is_in(ids));
    let rows: Vec<RequestRow> = crate::store::fetch_all(db, &q).await?;
    Ok(rows.into_iter().map(|r| (r.id, r)).collect())
}

/// AllocationRequestSummary (domain.md §4).
pub fn summary(r: &RequestRow) -> Value {
    json!({
        "id": r.id,
        "title": r.title,
        "status": r.status,
        "active": render_date(&r.active),
        "expire": render_date(&r.expire),
    })
}

/// AllocationRequestSummary objects by id (one query).
pub async fn summaries_by_id(db: &Db, ids: &[i64]) -> Result<HashMap<i64, Value>, ApiError> {
    Ok(by_ids(db, ids)
        .await?
        .iter()
        .map(|(id, r)| (*id, summary(r)))
        .collect())
}

/// A date field (`YYYY-MM-DD`), nullable. `Some(None)` = explicit null; `None` = absent or
/// invalid (the error is recorded).
pub fn date_field(v: &mut Validator, body: &body::Body, name: &str) -> Option<Option<NaiveDate>> {
    const WRONG: &str = "Date has wrong format. Use one of these formats instead: YYYY-MM-DD.";
    let raw = body.get(name)?;
    match raw {
        Value::Null => Some(None),
        // Form encodings cannot send null: an empty value means null.
        Value::String(s) if s.is_empty() && body.form => Some(None),
        Value::String(s) => match parse_date(s) {
            Some(d) => Some(Some(d)),
            None => {
                v.error(name, WRONG);
                None
            }
        },
        _ => {
            v.error(name, WRONG);
            None
        }
    }
}

/// `YYYY-MM-DD` (month and day may have one digit, as Django accepts).
pub fn parse_date(s: &str) -> Option<NaiveDate> {
    let mut parts = s.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || y.len() != 4
        || !(1..=2).contains(&m.len())
        || !(1..=2).contains(&d.len())
        || ![y, m, d]
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    NaiveDate::from_ymd_opt(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)
}

/// Whether request `id` does not exist.
pub async fn missing(db: &Db, id: i64) -> Result<bool, ApiError> {
    Ok(first_missing(db, TABLE, &[id]).await?.is_some())
}

/// The error for a related id that does not exist.
pub fn invalid_pk(id: i64) -> String {
    format!("Invalid pk \"{id}\" - object does not exist.")
}

// ---------------------------------------------------------------------------------------
// Representation
// ---------------------------------------------------------------------------------------

#[derive(sqlx::FromRow)]
struct LinkRow {
    owner: i64,
    target: i64,
}

/// (request id, linked id) rows of a many-to-many table for a page of requests.
async fn links(db: &Db, table: &str, column: &str, ids: &[i64]) -> Result<Vec<LinkRow>, ApiError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = Query::select();
    q.expr_as(
        Expr::col(Alias::new("allocationrequest_id")),
        Alias::new("owner"),
    )
    .expr_as(Expr::col(Alias::new(column)), Alias::new("target"))
    .from(Alias::new(table))
    .and_where(Expr::col(Alias::new("allocationrequest_id")).is_in(ids.to_vec()))
    .order_by(Alias::new(column), sea_query::Order::Asc);
    Ok(crate::store::fetch_all(db, &q).await?)
}

#[derive(sqlx::FromRow)]
struct GrantRow {
    id: i64,
    title: String,
    agency: String,
    pi: Option<String>,
    amount: String,
    grant_number: Option<String>,
    start_date: NaiveDate,
    end_date: Option<NaiveDate>,
    description: Option<String>,
    team_id: i64,
}

#[derive(sqlx::FromRow)]
struct PublicationRow {
    id: i64,
    title: String,
    r#abstract: Option<String>,
    published: Option<NaiveDate>,
    submitted: Option<NaiveDate>,
    journal: Option<String>,
    doi: Option<String>,
    volume: Option<String>,
    issue: Option<String>,
    team_id: i64,
}

async fn grants_by_id(db: &Db, ids: &[i64]) -> Result<Vec<GrantRow>, ApiError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // numeric(14,2) as text with two places on both backends (migrations/README.md).
    let amount = match db.engine() {
        Engine::Postgres => "CAST(amount AS TEXT)",
        Engine::Sqlite => "printf('%.2f', amount)",
    };
    let mut q = Query::select();
    q.columns(["id", "title", "agency", "pi"].map(Alias::new))
        .expr_as(Expr::cust(amount), Alias::new("amount"))
        .columns(
            [
                "grant_number",
                "start_date",
                "end_date",
                "description",
                "team_id",
            ]
            .map(Alias::new),
        )
        .from(Alias::new("research_products_grant"))
        .and_where(Expr::col(Alias::new("id")).is_in(ids.to_vec()))
        .order_by(Alias::new("title"), sea_query::Order::Asc)
        .order_by(Alias::new("id"), sea_query::Order::Asc);
    Ok(crate::store::fetch_all(db, &q).await?)
}

async fn publications_by_id(db: &Db, ids: &[i64]) -> Result<Vec<PublicationRow>, ApiError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = Query::select();
    q.columns(
        [
            "id",
            "title",
            "abstract",
            "published",
            "submitted",
            "journal",
            "doi",
            "volume",
            "issue",
            "team_id",
        ]
        .map(Alias::new),
    )
    .from(Alias::new("research_products_publication"))
    .and_where(Expr::col(Alias::new("id")).is_in(ids.to_vec()))
    .order_by(Alias::new("title"), sea_query::Order::Asc)
    .order_by(Alias::new("id"), sea_query::Order::Asc);
    Ok(crate::store::fetch_all(db, &q).await?)
}

#[derive(sqlx::FromRow)]
struct AllocationRow {
    id: i64,
    requested: i32,
    awarded: Option<i32>,
    #[sqlx(rename = "final")]
    final_: Option<i32>,
    cluster_id: i64,
    request_id: i64,
}

#[derive(sqlx::FromRow)]
struct AttachmentRow {
    file: String,
    name: String,
    request_id: i64,
}

#[derive(sqlx::FromRow)]
struct CommentRow {
    id: i64,
    content: String,
    created: DateTime<Utc>,
    private: bool,
    user_id: i64,
    request_id: i64,
}

fn grant_summary(g: &GrantRow) -> Value {
    json!({
        "id": g.id,
        "title": g.title,
        "agency": g.agency,
        "pi": g.pi,
        "amount": g.amount,
        "grant_number": g.grant_number,
        "start_date": g.start_date.format("%Y-%m-%d").to_string(),
        "end_date": render_date(&g.end_date),
        "description": g.description,
        "team": g.team_id,
    })
}

fn publication_summary(p: &PublicationRow) -> Value {
    json!({
        "id": p.id,
        "title": p.title,
        "abstract": p.r#abstract,
        "published": render_date(&p.published),
        "submitted": render_date(&p.submitted),
        "journal": p.journal,
        "doi": p.doi,
        "volume": p.volume,
        "issue": p.issue,
        "team": p.team_id,
    })
}

/// Representations of a page of requests with every expansion, in a constant number of
/// queries whatever the page size. Non-staff callers get public comments only.
pub async fn represent(
    db: &Db,
    tz: Tz,
    caller: &Caller,
    rows: &[RequestRow],
) -> Result<Vec<Value>, ApiError> {
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let assignees = links(
        db,
        "allocations_allocationrequest_assignees",
        "user_id",
        &ids,
    )
    .await?;
    let publication_links = links(
        db,
        "allocations_allocationrequest_publications",
        "publication_id",
        &ids,
    )
    .await?;
    let grant_links = links(db, "allocations_allocationrequest_grants", "grant_id", &ids).await?;

    let mut q = Query::select();
    q.columns(
        [
            "id",
            "requested",
            "awarded",
            "final",
            "cluster_id",
            "request_id",
        ]
        .map(Alias::new),
    )
    .from(Alias::new("allocations_resourceallocation"))
    .and_where(Expr::col(Alias::new("request_id")).is_in(ids.clone()))
    .order_by(Alias::new("id"), sea_query::Order::Asc);
    let allocations: Vec<AllocationRow> = crate::store::fetch_all(db, &q).await?;

    let mut q = Query::select();
    q.columns(["file", "name", "request_id"].map(Alias::new))
        .from(Alias::new("allocations_attachment"))
        .and_where(Expr::col(Alias::new("request_id")).is_in(ids.clone()))
        .order_by(Alias::new("id"), sea_query::Order::Asc);
    let attachments: Vec<AttachmentRow> = crate::store::fetch_all(db, &q).await?;

    let mut q = Query::select();
    q.columns(
        [
            "id",
            "content",
            "created",
            "private",
            "user_id",
            "request_id",
        ]
        .map(Alias::new),
    )
    .from(Alias::new("allocations_comment"))
    .and_where(Expr::col(Alias::new("request_id")).is_in(ids.clone()))
    .order_by(Alias::new("created"), sea_query::Order::Asc)
    .order_by(Alias::new("id"), sea_query::Order::Asc);
    if !caller.is_staff() {
        q.and_where(Expr::col(Alias::new("private")).eq(false));
    }
    let comments: Vec<CommentRow> = crate::store::fetch_all(db, &q).await?;

    let mut user_ids: Vec<i64> = rows.iter().map(|r| r.submitter_id).collect();
    user_ids.extend(assignees.iter().map(|l| l.target));
    user_ids.extend(comments.iter().map(|c| c.user_id));
    let users = summaries::users_by_id(db, &user_ids).await?;
    let team_ids: Vec<i64> = rows.iter().map(|r| r.team_id).collect();
    let teams = summaries::teams_by_id(db, &team_ids).await?;
    let publication_ids: Vec<i64> = publication_links.iter().map(|l| l.target).collect();
    let publications = publications_by_id(db, &publication_ids).await?;
    let grant_ids: Vec<i64> = grant_links.iter().map(|l| l.target).collect();
    let grants = grants_by_id(db, &grant_ids).await?;
    let cluster_ids: Vec<i64> = allocations.iter().map(|a| a.cluster_id).collect();
    let clusters = clusters::by_ids(db, &cluster_ids).await?;
    let mut history = crate::web::api::summaries::history(db, tz, CONTENT_TYPE, &ids).await?;

    let user = |id: i64| users.get(&id).cloned().unwrap_or(Value::Null);
    Ok(rows
        .iter()
        .map(|r| {
            let linked = |links: &[LinkRow]| -> Vec<i64> {
                links
                    .iter()
                    .filter(|l| l.owner == r.id)
                    .map(|l| l.target)
                    .collect()
            };
            let assignee_ids = linked(&assignees);
            let publication_ids = linked(&publication_links);
            let grant_ids = linked(&grant_links);
            // Nested arrays: publications and grants by title; allocations by cluster name;
            // comments by creation time.
            let expanded_publications: Vec<Value> = publications
                .iter()
                .filter(|p| publication_ids.contains(&p.id))
                .map(publication_summary)
                .collect();
            let expanded_grants: Vec<Value> = grants
                .iter()
                .filter(|g| grant_ids.contains(&g.id))
                .map(grant_summary)
                .collect();
            let mut mine: Vec<&AllocationRow> =
                allocations.iter().filter(|a| a.request_id == r.id).collect();
            mine.sort_by(|a, b| {
                let name = |x: &AllocationRow| clusters.get(&x.cluster_id).map(|c| c.name.clone());
                name(a).cmp(&name(b)).then(a.id.cmp(&b.id))
            });
            let expanded_allocations: Vec<Value> = mine
                .iter()
                .map(|a| {
                    json!({
                        "id": a.id,
                        "cluster": a.cluster_id,
                        "requested": a.requested,
                        "awarded": a.awarded,
                        "final": a.final_,
                        "_cluster": clusters.get(&a.cluster_id).map(clusters::summary).unwrap_or(Value::Null),
                    })
                })
                .collect();
            let expanded_attachments: Vec<Value> = attachments
                .iter()
                .filter(|a| a.request_id == r.id)
                .map(|a| json!({"file": a.file, "name": a.name}))
                .collect();
            let expanded_comments: Vec<Value> = comments
                .iter()
                .filter(|c| c.request_id == r.id)
                .map(|c| {
                    json!({
                        "id": c.id,
                        "user": c.user_id,
                        "content": c.content,
                        "created": render_datetime(&c.created, tz),
                        "private": c.private,
                        "_user": user(c.user_id),
                    })
                })
                .collect();
            json!({
                "id": r.id,
                "_submitter": user(r.submitter_id),
                "_team": teams.get(&r.team_id).cloned().unwrap_or(Value::Null),
                "_assignees": assignee_ids.iter().map(|u| user(*u)).collect::<Vec<_>>(),
                "_publications": expanded_publications,
                "_grants": expanded_grants,
                "_history": history.remove(&r.id).unwrap_or_default(),
                "_allocations": expanded_allocations,
                "_attachments": expanded_attachments,
                "_comments": expanded_comments,
                "title": r.title,
                "description": r.description,
                "submitted": render_datetime(&r.submitted, tz),
                "active": render_date(&r.active),
                "expire": render_date(&r.expire),
                "status": r.status,
                "submitter": r.submitter_id,
                "team": r.team_id,
                "assignees": assignee_ids,
                "publications": publication_ids,
                "grants": grant_ids,
            })
        })
        .collect())
}

async fn represent_one(
    db: &Db,
    tz: Tz,
    caller: &Caller,
    r: &RequestRow,
) -> Result<Value, ApiError> {
    Ok(represent(db, tz, caller, std::slice::from_ref(r))
        .await?
        .pop()
        .unwrap_or(Value::Null))
}

// ---------------------------------------------------------------------------------------
// Endpoints
// ---------------------------------------------------------------------------------------

/// List allocation requests.
///
/// Returns a list of allocation requests. Non-staff users are only returned requests
/// belonging to teams where they hold membership. Staff users are returned all requests.
#[endpoint(
    operation_id = "allocations_requests_list",
    tags("Allocations - Requests"),
    responses((status_code = 200, description = "", body = AllocationRequestPage))
)]
pub async fn list(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let listing::CallerPage {
            app,
            caller,
            rows,
            page,
        } = listing::caller_page::<RequestRow>(req, depot, &SPEC, &ROW_COLUMNS, scope).await?;
        Ok(page.envelope(represent(&app.db, app.timezone, &caller, &rows).await?))
    }
    .await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

async fn found(db: &Db, id: i64) -> Result<RequestRow, ApiError> {
    by_id(db, id)
        .await?
        .ok_or_else(|| ApiError::no_match(MODEL))
}

/// Retrieve an allocation request.
///
/// Returns a single allocation request by ID. Read access is granted to staff users and team
/// members.
#[endpoint(
    operation_id = "allocations_requests_retrieve",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this allocation request.")),
    tags("Allocations - Requests"),
    responses((status_code = 200, description = "", body = AllocationRequestDoc))
)]
pub async fn retrieve(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let me = &caller.user;
        let r = found(&app.db, path_id(req)?).await?;
        if !me.is_staff && !crate::store::teams::is_member(&app.db, me.id, r.team_id).await? {
            return Err(ApiError::forbidden());
        }
        represent_one(&app.db, app.timezone, &caller, &r).await
    }
    .await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

pub fn snapshot(r: &RequestRow) -> Snapshot {
    vec![
        ("id", audit::int(r.id)),
        ("title", Some(r.title.clone())),
        ("description", Some(r.description.clone())),
        ("submitted", audit::datetime(&r.submitted)),
        ("active", audit::date(&r.active)),
        ("expire", audit::date(&r.expire)),
        ("status", Some(r.status.clone())),
        ("submitter", audit::int(r.submitter_id)),
        ("team", audit::int(r.team_id)),
    ]
}

/// `Allocation Request #<pk> - '<title, truncated>' for Team #<pk> - <name>`.
pub fn repr_with(r: &RequestRow, team_name: &str) -> String {
    format!(
        "Allocation Request #{} - '{}' for Team #{} - {}",
        r.id,
        audit::truncate(&r.title),
        r.team_id,
        team_name
    )
}

async fn team_name(db: &Db, team_id: i64) -> Result<String, ApiError> {
    let name: Option<String> = on_db!(db, |p| sqlx::query_scalar(
        "SELECT name FROM users_team WHERE id = $1"
    )
    .bind(team_id)
    .fetch_optional(p)
    .await)?;
    Ok(name.unwrap_or_default())
}

/// A validated write: the record after it and the to-many lists it replaces.
struct Write {
    row: RequestRow,
    assignees: Option<Vec<i64>>,
    publications: Option<Vec<i64>>,
    grants: Option<Vec<i64>>,
}

fn sorted(given: Option<Vec<i64>>) -> Option<Vec<i64>> {
    given.map(|mut l| {
        l.sort_unstable();
        l.dedup();
        l
    })
}

async fn validate(
    db: &Db,
    body: &body::Body,
    partial: bool,
    current: Option<&RequestRow>,
) -> Result<Write, ApiError> {
    body.require_object()?;
    let mut v = Validator::new(&body.fields, partial);
    let title = v.text("title", Text::required(250)).flatten();
    let description = v.text("description", Text::required(20_000)).flatten();
    let active = date_field(&mut v, body, "active");
    let expire = date_field(&mut v, body, "expire");
    let status = v.choice("status", STATUSES, false);
    let submitter = v.pk("submitter", true);
    let team = v.pk("team", true);
    let assignees = v.pk_list("assignees", body.form);
    let publications = v.pk_list("publications", body.form);
    let grants = v.pk_list("grants", body.form);
    if let Some(id) = submitter
        && first_missing(db, "users_user", &[id]).await?.is_some()
    {
        v.error("submitter", invalid_pk(id));
    }
    if let Some(id) = team
        && first_missing(db, "users_team", &[id]).await?.is_some()
    {
        v.error("team", invalid_pk(id));
    }
    for (field, table, given) in [
        ("assignees", "users_user", &assignees),
        (
            "publications",
            "research_products_publication",
            &publications,
        ),
        ("grants", "research_products_grant", &grants),
    ] {
        if let Some(ids) = given
            && let Some(bad) = first_missing(db, table, ids).await?
        {
            v.error(field, invalid_pk(bad));
        }
    }
    v.finish()?;
    let row = RequestRow {
        id: current.map(|c| c.id).unwrap_or(0),
        title: title
            .or_else(|| current.map(|c| c.title.clone()))
            .unwrap_or_default(),
        description: description
            .or_else(|| current.map(|c| c.description.clone()))
            .unwrap_or_default(),
        submitted: current.map(|c| c.submitted).unwrap_or_else(now),
        active: active.unwrap_or_else(|| current.and_then(|c| c.active)),
        expire: expire.unwrap_or_else(|| current.and_then(|c| c.expire)),
        status: status
            .or_else(|| current.map(|c| c.status.clone()))
            .unwrap_or_else(|| "PD".to_string()),
        submitter_id: submitter
            .or(current.map(|c| c.submitter_id))
            .unwrap_or_default(),
        team_id: team.or(current.map(|c| c.team_id)).unwrap_or_default(),
    };
    // ⚑ Keystone enforces the model's date rule on the merged record (domain.md §3.5.2).
    if let (Some(a), Some(e)) = (row.active, row.expire)
        && a >= e
    {
        return Err(ApiError::field(
            "non_field_errors",
            "The expiration date must come after the activation date.",
        ));
    }
    Ok(Write {
        row,
        assignees: sorted(assignees),
        publications: sorted(publications),
        grants: sorted(grants),
    })
}

/// Replaces the to-many lists a write supplied.
async fn set_links(tx: &mut Tx, request_id: i64, w: &Write) -> Result<(), ApiError> {
    const TABLES: [(&str, &str, &str); 3] = [
        (
            "DELETE FROM allocations_allocationrequest_assignees WHERE allocationrequest_id = $1",
            "INSERT INTO allocations_allocationrequest_assignees (allocationrequest_id, user_id) VALUES ($1, $2)",
            "assignees",
        ),
        (
            "DELETE FROM allocations_allocationrequest_publications WHERE allocationrequest_id = $1",
            "INSERT INTO allocations_allocationrequest_publications (allocationrequest_id, publication_id) VALUES ($1, $2)",
            "publications",
        ),
        (
            "DELETE FROM allocations_allocationrequest_grants WHERE allocationrequest_id = $1",
            "INSERT INTO allocations_allocationrequest_grants (allocationrequest_id, grant_id) VALUES ($1, $2)",
            "grants",
        ),
    ];
    for (delete, insert, field) in TABLES {
        let given = match field {
            "assignees" => &w.assignees,
            "publications" => &w.publications,
            _ => &w.grants,
        };
        let Some(ids) = given else { continue };
        on_tx!(tx, |c| sqlx::query(delete)
            .bind(request_id)
            .execute(c)
            .await
            .map(|_| ()))?;
        for id in ids {
            on_tx!(tx, |c| sqlx::query(insert)
                .bind(request_id)
                .bind(*id)
                .execute(c)
                .await
                .map(|_| ()))?;
        }
    }
    Ok(())
}

/// ⚑ Whether a non-staff create files the request as pending (docs/security.md §10): no
/// `status`, or exactly `PD`. Any other value, valid or not, is refused before validation.
fn files_as_pending(body: &body::Body) -> bool {
    match body.get("status") {
        None => true,
        Some(Value::String(s)) => s == "PD",
        Some(_) => false,
    }
}

/// The ids a to-many field of the body names, as far as they parse the way validation
/// parses them (validation reports the rest).
fn listed_ids(body: &body::Body, field: &str) -> Vec<i64> {
    let items: Vec<&Value> = match body.get(field) {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(one @ Value::String(_)) if body.form => vec![one],
        _ => Vec::new(),
    };
    let mut ids: Vec<i64> = items.into_iter().filter_map(|v| pk_value(v).ok()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// ⚑ Whether every grant and publication the body links belongs to `team` (docs/security.md
/// §10). Ids that do not exist pass here; validation answers them with 400.
async fn links_stay_in_team(db: &Db, body: &body::Body, team: i64) -> Result<bool, ApiError> {
    for (field, table) in [
        ("grants", "research_products_grant"),
        ("publications", "research_products_publication"),
    ] {
        let ids = listed_ids(body, field);
        if ids.is_empty() {
            continue;
        }
        let mut q = Query::select();
        q.column(Alias::new("id"))
            .from(Alias::new(table))
            .and_where(Expr::col(Alias::new("id")).is_in(ids))
            .and_where(Expr::col(Alias::new("team_id")).ne(team))
            .limit(1);
        let foreign: Vec<(i64,)> = crate::store::fetch_all(db, &q).await?;
        if !foreign.is_empty() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Create an allocation request.
///
/// Creates a new allocation request. Write access is granted to staff users and team
/// administrators. A team administrator may only create a request in status `PD` (pending)
/// and may only link grants and publications of the request's own team; any other status,
/// or a grant or publication of another team, is refused with 403 before validation.
#[endpoint(
    operation_id = "allocations_requests_create",
    tags("Allocations - Requests"),
    request_body = AllocationRequestRequestDoc,
    responses((status_code = 201, description = "", body = AllocationRequestDoc))
)]
pub async fn create(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let me = &caller.user;
        let body = body::read(req).await?;
        // View-level rule: a non-staff caller must be an admin/owner of the body's team; a
        // missing, garbled or unknown team is a 403, not a validation error. ⚑ The request
        // is filed as pending and links only its own team's grants and publications
        // (docs/security.md §10); like the team rule, this runs before validation.
        if !me.is_staff {
            let team = body.get("team").and_then(|t| pk_value(t).ok());
            let allowed = match team {
                Some(t) => {
                    crate::store::teams::is_privileged(&app.db, me.id, t).await?
                        && files_as_pending(&body)
                        && links_stay_in_team(&app.db, &body, t).await?
                }
                None => false,
            };
            if !allowed {
                return Err(ApiError::forbidden());
            }
        }
        let mut w = validate(&app.db, &body, false, None).await?;
        let ctx = crate::web::access::audit_context(req, depot);
        let team = team_name(&app.db, w.row.team_id).await?;
        let mut tx = app.db.begin().await?;
        let r = &mut w.row;
        r.id = on_tx!(&mut tx, |c| sqlx::query_scalar(
            "INSERT INTO allocations_allocationrequest (title, description, submitted, active, \
             expire, status, submitter_id, team_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             RETURNING id"
        )
        .bind(&r.title)
        .bind(&r.description)
        .bind(r.submitted)
        .bind(r.active)
        .bind(r.expire)
        .bind(&r.status)
        .bind(r.submitter_id)
        .bind(r.team_id)
        .fetch_one(c)
        .await)?;
        let id = w.row.id;
        set_links(&mut tx, id, &w).await?;
        audit::record(
            &mut tx,
            &ctx,
            CONTENT_TYPE,
            id,
            &repr_with(&w.row, &team),
            Action::Create,
            audit::changes(None, Some(&snapshot(&w.row))),
        )
        .await?;
        tx.commit().await?;
        represent_one(&app.db, app.timezone, &caller, &w.row).await
    }
    .await;
    crate::web::api::respond(res, StatusCode::CREATED, result);
}

/// The record of a staff-only item write: 404 when missing, 403 for everyone but staff.
async fn staff_item(db: &Db, caller: &Caller, id: i64) -> Result<RequestRow, ApiError> {
    let me = &caller.user;
    let r = found(db, id).await?;
    if !me.is_staff {
        return Err(ApiError::forbidden());
    }
    Ok(r)
}

async fn update(req: &mut Request, depot: &mut Depot, partial: bool) -> Result<Value, ApiError> {
    let (app, caller) = context(depot)?;
    let current = staff_item(&app.db, &caller, path_id(req)?).await?;
    let body = body::read(req).await?;
    let w = validate(&app.db, &body, partial, Some(&current)).await?;
    let ctx = crate::web::access::audit_context(req, depot);
    let team = team_name(&app.db, w.row.team_id).await?;
    let mut tx = app.db.begin().await?;
    let r = &w.row;
    on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE allocations_allocationrequest SET title = $1, description = $2, active = $3, \
         expire = $4, status = $5, submitter_id = $6, team_id = $7 WHERE id = $8"
    )
    .bind(&r.title)
    .bind(&r.description)
    .bind(r.active)
    .bind(r.expire)
    .bind(&r.status)
    .bind(r.submitter_id)
    .bind(r.team_id)
    .bind(r.id)
    .execute(c)
    .await
    .map(|_| ()))?;
    set_links(&mut tx, r.id, &w).await?;
    audit::record(
        &mut tx,
        &ctx,
        CONTENT_TYPE,
        r.id,
        &repr_with(r, &team),
        Action::Update,
        audit::changes(Some(&snapshot(&current)), Some(&snapshot(r))),
    )
    .await?;
    tx.commit().await?;
    represent_one(&app.db, app.timezone, &caller, &w.row).await
}

/// Update an allocation request.
///
/// Replaces an existing allocation request with new values. Write access is restricted to
/// staff users.
#[endpoint(
    operation_id = "allocations_requests_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this allocation request.")),
    tags("Allocations - Requests"),
    request_body = AllocationRequestRequestDoc,
    responses((status_code = 200, description = "", body = AllocationRequestDoc))
)]
pub async fn put(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = update(req, depot, false).await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

/// Partially update an allocation request.
///
/// Partially updates an existing allocation request with new values. Write access is
/// restricted to staff users.
#[endpoint(
    operation_id = "allocations_requests_partial_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this allocation request.")),
    tags("Allocations - Requests"),
    request_body = PatchedAllocationRequestRequestDoc,
    responses((status_code = 200, description = "", body = AllocationRequestDoc))
)]
pub async fn patch(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = update(req, depot, true).await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

/// Delete an allocation request.
///
/// Deletes a single allocation request by ID. Write access is restricted to staff users. The
/// request's allocations, reviews, attachments and comments are deleted with it.
#[endpoint(
    operation_id = "allocations_requests_destroy",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this allocation request.")),
    tags("Allocations - Requests"),
    responses((status_code = 204, description = "No response body"))
)]
pub async fn destroy(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result: Result<(), ApiError> = async {
        let (app, caller) = context(depot)?;
        let r = staff_item(&app.db, &caller, path_id(req)?).await?;
        let ctx = crate::web::access::audit_context(req, depot);
        let mut tx = app.db.begin().await?;
        audit_cascade(&mut tx, &ctx, Cascade::Request(r.id)).await?;
        // The attachments' stored files go once the rows are gone for good.
        let files = super::attachments::stored_files(&mut tx, &[r.id]).await?;
        on_tx!(&mut tx, |c| sqlx::query(
            "DELETE FROM allocations_allocationrequest WHERE id = $1"
        )
        .bind(r.id)
        .execute(c)
        .await
        .map(|_| ()))?;
        tx.commit().await?;
        crate::infra::uploads::remove_files(&app.db, &app.config, &files).await;
        Ok(())
    }
    .await;
    crate::web::api::no_content(res, result);
}

// ---------------------------------------------------------------------------------------
// Audit entries of cascading deletes
// ---------------------------------------------------------------------------------------

/// The requests a cascading delete removes: one request, or every request of a team.
#[derive(Debug, Clone, Copy)]
pub enum Cascade {
    Request(i64),
    Team(i64),
}

impl Cascade {
    fn id(self) -> i64 {
        match self {
            Cascade::Request(id) | Cascade::Team(id) => id,
        }
    }

    /// Condition on a child table's `request_id` column (`$1` is `self.id()`).
    fn children(self, alias: &str) -> String {
        match self {
            Cascade::Request(_) => format!("{alias}.request_id = $1"),
            Cascade::Team(_) => format!(
                "{alias}.request_id IN (SELECT id FROM allocations_allocationrequest WHERE team_id = $1)"
            ),
        }
    }

    /// Condition on the request table (`$1` is `self.id()`).
    fn requests(self, alias: &str) -> String {
        match self {
            Cascade::Request(_) => format!("{alias}.id = $1"),
            Cascade::Team(_) => format!("{alias}.team_id = $1"),
        }
    }
}

/// Writes one `delete` entry per audited record a cascading delete of requests removes:
/// their resource allocations, reviews, attachments and comments, then the requests.
pub async fn audit_cascade(
    tx: &mut Tx,
    ctx: &AuditContext,
    scope: Cascade,
) -> Result<(), ApiError> {
    let id = scope.id();
    // Resource allocations.
    let sql = format!(
        "SELECT a.id, a.requested, a.awarded, a.final, a.cluster_id, a.request_id, c.name, \
         r.team_id, t.name FROM allocations_resourceallocation a \
         JOIN allocations_cluster c ON c.id = a.cluster_id \
         JOIN allocations_allocationrequest r ON r.id = a.request_id \
         JOIN users_team t ON t.id = r.team_id WHERE {} ORDER BY a.id",
        scope.children("a")
    );
    type AllocationTuple = (
        i64,
        i32,
        Option<i32>,
        Option<i32>,
        i64,
        i64,
        String,
        i64,
        String,
    );
    let rows: Vec<AllocationTuple> = on_tx!(&mut *tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(
        sql.clone()
    ))
    .bind(id)
    .fetch_all(c)
    .await)?;
    for (aid, requested, awarded, fin, cluster, request, cluster_name, team, team_name) in rows {
        let snap = super::resource_allocations::snapshot_of(
            aid, requested, awarded, fin, cluster, request,
        );
        let text =
            super::resource_allocations::repr_of(aid, cluster, &cluster_name, team, &team_name);
        audit::record(
            tx,
            ctx,
            super::resource_allocations::CONTENT_TYPE,
            aid,
            &text,
            Action::Delete,
            audit::changes(Some(&snap), None),
        )
        .await?;
    }
    // Reviews.
    let sql = format!(
        "SELECT v.id, v.status, v.submitted, v.request_id, v.reviewer_id, u.username \
         FROM allocations_allocationreview v JOIN users_user u ON u.id = v.reviewer_id \
         WHERE {} ORDER BY v.id",
        scope.children("v")
    );
    let rows: Vec<(i64, String, DateTime<Utc>, i64, i64, String)> =
        on_tx!(&mut *tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(
            sql.clone()
        ))
        .bind(id)
        .fetch_all(c)
        .await)?;
    for (vid, status, submitted, request, reviewer, username) in rows {
        let review = super::reviews::ReviewRow {
            id: vid,
            status,
            submitted,
            request_id: request,
            reviewer_id: reviewer,
        };
        audit::record(
            tx,
            ctx,
            super::reviews::CONTENT_TYPE,
            vid,
            &super::reviews::repr_with(&review, &username),
            Action::Delete,
            audit::changes(Some(&super::reviews::snapshot(&review)), None),
        )
        .await?;
    }
    // Attachments (rows only: the files are not this function's business).
    let sql = format!(
        "SELECT f.id, f.file, f.name, f.uploaded, f.request_id FROM allocations_attachment f \
         WHERE {} ORDER BY f.id",
        scope.children("f")
    );
    let rows: Vec<(i64, String, String, DateTime<Utc>, i64)> =
        on_tx!(&mut *tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(
            sql.clone()
        ))
        .bind(id)
        .fetch_all(c)
        .await)?;
    for (fid, file, name, uploaded, request) in rows {
        let snap: Snapshot = vec![
            ("id", audit::int(fid)),
            ("file", Some(file)),
            ("name", Some(name.clone())),
            ("uploaded", audit::datetime(&uploaded)),
            ("request", audit::int(request)),
        ];
        audit::record(
            tx,
            ctx,
            "allocations | Attachment",
            fid,
            &format!("Attachment #{fid} - '{name}' on request #{request}"),
            Action::Delete,
            audit::changes(Some(&snap), None),
        )
        .await?;
    }
    // Comments.
    let sql = format!(
        "SELECT m.id, m.content, m.created, m.private, m.user_id, m.request_id, u.username \
         FROM allocations_comment m JOIN users_user u ON u.id = m.user_id \
         WHERE {} ORDER BY m.id",
        scope.children("m")
    );
    type CommentTuple = (i64, String, DateTime<Utc>, bool, i64, i64, String);
    let rows: Vec<CommentTuple> = on_tx!(&mut *tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(
        sql.clone()
    ))
    .bind(id)
    .fetch_all(c)
    .await)?;
    for (mid, content, created, private, user, request, username) in rows {
        let snap: Snapshot = vec![
            ("id", audit::int(mid)),
            ("content", Some(content)),
            ("created", audit::datetime(&created)),
            ("private", audit::boolean(private)),
            ("user", audit::int(user)),
            ("request", audit::int(request)),
        ];
        audit::record(
            tx,
            ctx,
            "allocations | Comment",
            mid,
            &format!("Comment #{mid} - by {username} on request #{request}"),
            Action::Delete,
            audit::changes(Some(&snap), None),
        )
        .await?;
    }
    // The requests themselves.
    let sql = format!(
        "SELECT r.id, r.title, r.description, r.submitted, r.active, r.expire, r.status, \
         r.submitter_id, r.team_id, t.name FROM allocations_allocationrequest r \
         JOIN users_team t ON t.id = r.team_id WHERE {} ORDER BY r.id",
        scope.requests("r")
    );
    type RequestTuple = (
        i64,
        String,
        String,
        DateTime<Utc>,
        Option<NaiveDate>,
        Option<NaiveDate>,
        String,
        i64,
        i64,
        String,
    );
    let rows: Vec<RequestTuple> = on_tx!(&mut *tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(
        sql.clone()
    ))
    .bind(id)
    .fetch_all(c)
    .await)?;
    for (rid, title, description, submitted, active, expire, status, submitter, team, team_name) in
        rows
    {
        let r = RequestRow {
            id: rid,
            title,
            description,
            submitted,
            active,
            expire,
            status,
            submitter_id: submitter,
            team_id: team,
        };
        audit::record(
            tx,
            ctx,
            CONTENT_TYPE,
            rid,
            &repr_with(&r, &team_name),
            Action::Delete,
            audit::changes(Some(&snapshot(&r)), None),
        )
        .await?;
    }
    Ok(())
}

/// Delete entries for everything under the requests of a team being deleted (called by the
/// team deletion, in its transaction, before the team row goes).
pub async fn audit_cascaded_team(
    tx: &mut Tx,
    ctx: &AuditContext,
    team_id: i64,
) -> Result<(), ApiError> {
    audit_cascade(tx, ctx, Cascade::Team(team_id)).await
}

/// The routes of this resource.
pub fn routes() -> crate::web::route::Routes {
    crate::web::route::Routes::new()
        .push(crate::web::api::collection!(
            "allocations/requests/",
            list,
            create,
            "Allocation Request List"
        ))
        .push(crate::web::api::item!(
            "allocations/requests/{id}/",
            retrieve,
            put,
            patch,
            destroy,
            "Allocation Request Instance"
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_like_django() {
        assert_eq!(
            parse_date("2026-01-02"),
            NaiveDate::from_ymd_opt(2026, 1, 2)
        );
        assert_eq!(parse_date("2026-1-2"), NaiveDate::from_ymd_opt(2026, 1, 2));
        for bad in [
            "2026-02-30",
            "26-01-02",
            "2026-01-02T00:00",
            "2026/01/02",
            "",
            "x",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn reprs_truncate_titles() {
        let r = RequestRow {
            id: 7,
            title: "t".repeat(120),
            description: String::new(),
            submitted: Utc::now(),
            active: None,
            expire: None,
            status: "PD".into(),
            submitter_id: 1,
            team_id: 3,
        };
        let text = repr_with(&r, "Team One");
        assert!(text.starts_with("Allocation Request #7 - 'ttt"));
        assert!(text.ends_with("…' for Team #3 - Team One"));
    }
}
