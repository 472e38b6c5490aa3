//! `/allocations/reviews/` (domain.md §7.4): staff reviews of allocation requests. Staff
//! write them; members of the request's team read them. Reviews have no side effects on the
//! request.

use super::requests::{self, invalid_pk};
use crate::store::Db;
use crate::store::audit::{self, Action, Snapshot};
use crate::web::ApiError;
use crate::web::api::fields::Validator;
use crate::web::api::list::{self as listing, Column, Kind, ListSpec, search_via};
use crate::web::api::summaries::{self, render_datetime};
use crate::web::api::{Caller, body, context, path_id};
use crate::{on_db, on_tx};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use salvo::http::StatusCode;
use salvo::oapi::ToSchema;
use salvo::prelude::*;
use serde::Serialize;
use serde_json::{Value, json};

pub const CONTENT_TYPE: &str = "allocations | AllocationReview";
const MODEL: &str = "AllocationReview";
pub const STATUSES: &[&str] = &["AP", "DC", "CR"];

const COLUMNS: &[Column] = &[
    Column::new("id", Kind::Int),
    Column::new("status", Kind::Choice(STATUSES)),
    Column::new("submitted", Kind::DateTime),
    Column::new("request", Kind::Fk(requests::TABLE)),
    Column::new("reviewer", Kind::Fk("users_user")),
];

pub const SPEC: ListSpec = ListSpec {
    table: "allocations_allocationreview",
    filters: COLUMNS,
    order: COLUMNS,
    // Upstream's dead `public_comments`/`private_comments` are dropped (domain.md §2.3).
    search: &[
        search_via(
            &[("request_id", requests::TABLE), ("team_id", "users_team")],
            "name",
        ),
        search_via(&[("request_id", requests::TABLE)], "title"),
    ],
};

const ROW_COLUMNS: [&str; 5] = ["id", "status", "submitted", "request_id", "reviewer_id"];

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "AllocationReview"))]
pub struct AllocationReviewDoc {
    pub id: i64,
    pub _request: requests::AllocationRequestSummaryDoc,
    pub _reviewer: crate::web::api::summaries::UserSummaryDoc,
    pub _history: Vec<crate::web::api::summaries::AuditLogSummaryDoc>,
    /// * `AP` - Approved
    /// * `DC` - Declined
    /// * `CR` - Changes Requested
    pub status: String,
    pub submitted: String,
    pub request: i64,
    pub reviewer: i64,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "AllocationReviewRequest"))]
pub struct AllocationReviewRequestDoc {
    /// * `AP` - Approved
    /// * `DC` - Declined
    /// * `CR` - Changes Requested
    pub status: String,
    pub request: i64,
    #[salvo(schema(required = false))]
    pub reviewer: i64,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "PatchedAllocationReviewRequest"))]
pub struct PatchedAllocationReviewRequestDoc {
    /// * `AP` - Approved
    /// * `DC` - Declined
    /// * `CR` - Changes Requested
    #[salvo(schema(required = false))]
    pub status: String,
    #[salvo(schema(required = false))]
    pub request: i64,
    #[salvo(schema(required = false))]
    pub reviewer: i64,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "PaginatedAllocationReviewList"))]
pub struct AllocationReviewPage {
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<AllocationReviewDoc>,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ReviewRow {
    pub id: i64,
    pub status: String,
    pub submitted: DateTime<Utc>,
    pub request_id: i64,
    pub reviewer_id: i64,
}

fn scope(q: &mut sea_query::SelectStatement, caller: &Caller) {
    requests::scope_via_request(q, caller, "request_id");
}

/// Representations of a page of reviews: requests, reviewers and history in a constant
/// number of queries.
pub async fn represent(db: &Db, tz: Tz, rows: &[ReviewRow]) -> Result<Vec<Value>, ApiError> {
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let request_ids: Vec<i64> = rows.iter().map(|r| r.request_id).collect();
    let reviewer_ids: Vec<i64> = rows.iter().map(|r| r.reviewer_id).collect();
    let reqs = requests::summaries_by_id(db, &request_ids).await?;
    let users = summaries::users_by_id(db, &reviewer_ids).await?;
    let mut history = crate::web::api::summaries::history(db, tz, CONTENT_TYPE, &ids).await?;
    Ok(rows
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "_request": reqs.get(&r.request_id).cloned().unwrap_or(Value::Null),
                "_reviewer": users.get(&r.reviewer_id).cloned().unwrap_or(Value::Null),
                "_history": history.remove(&r.id).unwrap_or_default(),
                "status": r.status,
                "submitted": render_datetime(&r.submitted, tz),
                "request": r.request_id,
                "reviewer": r.reviewer_id,
            })
        })
        .collect())
}

async fn represent_one(db: &Db, tz: Tz, r: &ReviewRow) -> Result<Value, ApiError> {
    Ok(represent(db, tz, std::slice::from_ref(r))
        .await?
        .pop()
        .unwrap_or(Value::Null))
}

/// List allocation reviews.
///
/// Returns a list of allocation reviews. Non-staff users are only returned reviews belonging
/// to teams where they hold membership. Staff users are returned all reviews.
#[endpoint(
    operation_id = "allocations_reviews_list",
    tags("Allocations - Reviews"),
    responses((status_code = 200, description = "", body = AllocationReviewPage))
)]
pub async fn list(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let scope = |q: &mut sea_query::SelectStatement| scope(q, &caller);
        let (rows, page) = listing::page::<ReviewRow>(
            req,
            &app.db,
            app.config.timezone(),
            &SPEC,
            &ROW_COLUMNS,
            &scope,
        )
        .await?;
        Ok(page.envelope(represent(&app.db, app.config.timezone(), &rows).await?))
    }
    .await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

async fn found(db: &Db, id: i64) -> Result<ReviewRow, ApiError> {
    let row: Option<ReviewRow> = on_db!(db, |p| sqlx::query_as::<_, ReviewRow>(
        "SELECT id, status, submitted, request_id, reviewer_id \
         FROM allocations_allocationreview WHERE id = $1"
    )
    .bind(id)
    .fetch_optional(p)
    .await)?;
    row.ok_or_else(|| ApiError::no_match(MODEL))
}

/// The team of a request (None when the request is gone).
async fn team_of_request(db: &Db, request_id: i64) -> Result<Option<i64>, ApiError> {
    Ok(requests::by_id(db, request_id).await?.map(|r| r.team_id))
}

/// Retrieve an allocation review.
///
/// Returns a single allocation review by ID. Read access is granted to staff users and team
/// members.
#[endpoint(
    operation_id = "allocations_reviews_retrieve",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this allocation review.")),
    tags("Allocations - Reviews"),
    responses((status_code = 200, description = "", body = AllocationReviewDoc))
)]
pub async fn retrieve(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let me = &caller.user;
        let r = found(&app.db, path_id(req)?).await?;
        if !me.is_staff {
            let team = team_of_request(&app.db, r.request_id).await?;
            let member = match team {
                Some(t) => requests::is_member(&app.db, me.id, t).await?,
                None => false,
            };
            if !member {
                return Err(ApiError::forbidden());
            }
        }
        represent_one(&app.db, app.config.timezone(), &r).await
    }
    .await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

pub fn snapshot(r: &ReviewRow) -> Snapshot {
    vec![
        ("id", audit::int(r.id)),
        ("status", Some(r.status.clone())),
        ("submitted", audit::datetime(&r.submitted)),
        ("request", audit::int(r.request_id)),
        ("reviewer", audit::int(r.reviewer_id)),
    ]
}

/// `Allocation Review #<pk> - <reviewer username> review of request #<request id>`.
pub fn repr_with(r: &ReviewRow, reviewer_username: &str) -> String {
    format!(
        "Allocation Review #{} - {} review of request #{}",
        r.id, reviewer_username, r.request_id
    )
}

async fn repr(db: &Db, r: &ReviewRow) -> Result<String, ApiError> {
    let username: Option<String> = on_db!(db, |p| sqlx::query_scalar(
        "SELECT username FROM users_user WHERE id = $1"
    )
    .bind(r.reviewer_id)
    .fetch_optional(p)
    .await)?;
    Ok(repr_with(r, &username.unwrap_or_default()))
}

/// Validates a body; `current` is the review being updated. The caller is staff.
async fn validate(
    db: &Db,
    caller_id: i64,
    body: &body::Body,
    partial: bool,
    current: Option<&ReviewRow>,
) -> Result<ReviewRow, ApiError> {
    body.require_object()?;
    let mut v = Validator::new(&body.fields, partial);
    let status = v.choice("status", STATUSES, true);
    let request = v.pk("request", true);
    let reviewer = v.pk("reviewer", false);
    if let Some(id) = request
        && requests::missing(db, id).await?
    {
        v.error("request", invalid_pk(id));
    }
    if let Some(id) = reviewer {
        if super::clusters::first_missing(db, "users_user", &[id])
            .await?
            .is_some()
        {
            v.error("reviewer", invalid_pk(id));
        } else if id != caller_id {
            v.error(
                "reviewer",
                "Reviewer cannot be set to a different user than the submitter.",
            );
        }
    }
    v.finish()?;
    Ok(ReviewRow {
        id: current.map(|c| c.id).unwrap_or(0),
        status: status
            .or_else(|| current.map(|c| c.status.clone()))
            .unwrap_or_default(),
        submitted: current.map(|c| c.submitted).unwrap_or_else(requests::now),
        request_id: request
            .or(current.map(|c| c.request_id))
            .unwrap_or_default(),
        // Omitted: the caller on create, the stored reviewer on update.
        reviewer_id: reviewer
            .or(current.map(|c| c.reviewer_id))
            .unwrap_or(caller_id),
    })
}

fn staff_only(caller: &Caller) -> Result<i64, ApiError> {
    let me = &caller.user;
    if me.is_staff {
        Ok(me.id)
    } else {
        Err(ApiError::forbidden())
    }
}

/// Create an allocation review.
///
/// Creates a new allocation review. Write access is restricted to staff users. The
/// `reviewer` field defaults to the authenticated user if not specified.
#[endpoint(
    operation_id = "allocations_reviews_create",
    tags("Allocations - Reviews"),
    request_body = AllocationReviewRequestDoc,
    responses((status_code = 201, description = "", body = AllocationReviewDoc))
)]
pub async fn create(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let me = staff_only(&caller)?;
        let body = body::read(req).await?;
        let mut row = validate(&app.db, me, &body, false, None).await?;
        let ctx = crate::web::access::audit_context(req, depot);
        let mut tx = app.db.begin().await?;
        row.id = on_tx!(&mut tx, |c| {
            sqlx::query_scalar(
            "INSERT INTO allocations_allocationreview (status, submitted, request_id, reviewer_id) \
             VALUES ($1, $2, $3, $4) RETURNING id"
        )
        .bind(&row.status)
        .bind(row.submitted)
        .bind(row.request_id)
        .bind(row.reviewer_id)
        .fetch_one(c)
        .await
        })?;
        let text = repr(&app.db, &row).await?;
        audit::record(
            &mut tx,
            &ctx,
            CONTENT_TYPE,
            row.id,
            &text,
            Action::Create,
            audit::changes(None, Some(&snapshot(&row))),
        )
        .await?;
        tx.commit().await?;
        represent_one(&app.db, app.config.timezone(), &row).await
    }
    .await;
    crate::web::api::respond(res, StatusCode::CREATED, result);
}

/// A staff-only item: 404 when missing, then 403 for non-staff.
async fn staff_item(db: &Db, caller: &Caller, id: i64) -> Result<(i64, ReviewRow), ApiError> {
    let me = &caller.user;
    let r = found(db, id).await?;
    if !me.is_staff {
        return Err(ApiError::forbidden());
    }
    Ok((me.id, r))
}

async fn update(req: &mut Request, depot: &mut Depot, partial: bool) -> Result<Value, ApiError> {
    let (app, caller) = context(depot)?;
    let (me, current) = staff_item(&app.db, &caller, path_id(req)?).await?;
    let body = body::read(req).await?;
    let after = validate(&app.db, me, &body, partial, Some(&current)).await?;
    let ctx = crate::web::access::audit_context(req, depot);
    let text = repr(&app.db, &after).await?;
    let mut tx = app.db.begin().await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE allocations_allocationreview SET status = $1, request_id = $2, reviewer_id = $3 \
         WHERE id = $4"
    )
    .bind(&after.status)
    .bind(after.request_id)
    .bind(after.reviewer_id)
    .bind(after.id)
    .execute(c)
    .await
    .map(|_| ()))?;
    audit::record(
        &mut tx,
        &ctx,
        CONTENT_TYPE,
        after.id,
        &text,
        Action::Update,
        audit::changes(Some(&snapshot(&current)), Some(&snapshot(&after))),
    )
    .await?;
    tx.commit().await?;
    represent_one(&app.db, app.config.timezone(), &after).await
}

/// Update an allocation review.
///
/// Replaces an existing allocation review with new values. Write access is restricted to
/// staff users.
#[endpoint(
    operation_id = "allocations_reviews_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this allocation review.")),
    tags("Allocations - Reviews"),
    request_body = AllocationReviewRequestDoc,
    responses((status_code = 200, description = "", body = AllocationReviewDoc))
)]
pub async fn put(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = update(req, depot, false).await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

/// Partially update an allocation review.
///
/// Partially updates an existing allocation review with new values. Write access is
/// restricted to staff users.
#[endpoint(
    operation_id = "allocations_reviews_partial_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this allocation review.")),
    tags("Allocations - Reviews"),
    request_body = PatchedAllocationReviewRequestDoc,
    responses((status_code = 200, description = "", body = AllocationReviewDoc))
)]
pub async fn patch(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = update(req, depot, true).await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

/// Delete an allocation review.
///
/// Deletes a single allocation review by ID. Write access is restricted to staff users.
#[endpoint(
    operation_id = "allocations_reviews_destroy",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this allocation review.")),
    tags("Allocations - Reviews"),
    responses((status_code = 204, description = "No response body"))
)]
pub async fn destroy(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result: Result<(), ApiError> = async {
        let (app, caller) = context(depot)?;
        let (_, r) = staff_item(&app.db, &caller, path_id(req)?).await?;
        let ctx = crate::web::access::audit_context(req, depot);
        let text = repr(&app.db, &r).await?;
        audit::delete_audited(
            &app.db,
            &ctx,
            CONTENT_TYPE,
            "allocations_allocationreview",
            r.id,
            &text,
            &snapshot(&r),
        )
        .await?;
        Ok(())
    }
    .await;
    crate::web::api::no_content(res, result);
}

/// The routes of this resource.
pub fn routes() -> crate::web::route::Routes {
    crate::web::route::Routes::new()
        .push(crate::web::api::collection!(
            "allocations/reviews/",
            list,
            create,
            "Allocation Review List"
        ))
        .push(crate::web::api::item!(
            "allocations/reviews/{id}/",
            retrieve,
            put,
            patch,
            destroy,
            "Allocation Review Instance"
        ))
}
