//! `/allocations/comments/` (domain.md §7.7): discussion on allocation requests. Any member
//! of the request's team may read and write the team's public comments; private comments
//! exist for staff only (hidden from lists and 403 on items for everyone else).

use super::attachments::{
    REQUESTS, body_request, is_member_or_staff, request_summary, request_team, requests_by_id,
    scope_to_caller_teams,
};
use crate::store::Db;
use crate::store::audit::{self, Action, Snapshot};
use crate::store::users::User;
use crate::web::ApiError;
use crate::web::api::body::{self, Body};
use crate::web::api::fields::{Text, Validator};
use crate::web::api::list::{self as listing, Column, Kind, ListSpec, search, search_via};
use crate::web::api::summaries::{self, render_datetime};
use crate::web::api::{Caller, context, path_id};
use crate::{on_db, on_tx};
use chrono::{DateTime, SubsecRound, Utc};
use chrono_tz::Tz;
use salvo::http::StatusCode;
use salvo::oapi::ToSchema;
use salvo::prelude::*;
use sea_query::{Alias, Expr, ExprTrait, SelectStatement};
use serde::Serialize;
use serde_json::{Value, json};

pub const CONTENT_TYPE: &str = "allocations | Comment";
const MODEL: &str = "Comment";
const CONTENT_MAX: usize = 2000;
const PRIVATE_STAFF_ONLY: &str = "Only staff users can write comments marked as private.";
const AUTHOR_IS_CALLER: &str = "Comment author must be the requesting user.";

const COLUMNS: &[Column] = &[
    Column::new("id", Kind::Int),
    Column::new("content", Kind::Text),
    Column::new("created", Kind::DateTime),
    Column::new("private", Kind::Bool),
    Column::new("user", Kind::Fk("users_user")),
    Column::new("request", Kind::Fk(REQUESTS)),
];

pub const SPEC: ListSpec = ListSpec {
    table: "allocations_comment",
    filters: COLUMNS,
    order: COLUMNS,
    search: &[
        search("content"),
        search_via(&[("request_id", REQUESTS)], "title"),
        search_via(&[("user_id", "users_user")], "username"),
        search_via(&[("user_id", "users_user")], "first_name"),
        search_via(&[("user_id", "users_user")], "last_name"),
    ],
};

const ROW_COLUMNS: [&str; 6] = [
    "id",
    "content",
    "created",
    "private",
    "user_id",
    "request_id",
];

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CommentRow {
    pub id: i64,
    pub content: String,
    pub created: DateTime<Utc>,
    pub private: bool,
    pub user_id: i64,
    pub request_id: i64,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "Comment"))]
pub struct CommentDoc {
    pub id: i64,
    pub user: i64,
    pub _user: crate::web::api::summaries::UserSummaryDoc,
    pub _request: super::requests::AllocationRequestSummaryDoc,
    pub _history: Vec<crate::web::api::summaries::AuditLogSummaryDoc>,
    #[salvo(schema(max_length = 2000))]
    pub content: String,
    pub created: String,
    pub private: bool,
    pub request: i64,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "PaginatedCommentList"))]
pub struct CommentPage {
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<CommentDoc>,
}

/// Non-staff: comments on their teams' requests, public ones only.
fn scope(q: &mut SelectStatement, caller: &Caller) {
    if !caller.is_staff() {
        scope_to_caller_teams(q, caller);
        q.and_where(Expr::col(Alias::new("private")).eq(false));
    }
}

/// Representations of a page: authors, requests and history in four queries whatever the
/// page size.
pub async fn represent(db: &Db, tz: Tz, rows: &[CommentRow]) -> Result<Vec<Value>, ApiError> {
    let ids: Vec<i64> = rows.iter().map(|c| c.id).collect();
    let user_ids: Vec<i64> = rows.iter().map(|c| c.user_id).collect();
    let request_ids: Vec<i64> = rows.iter().map(|c| c.request_id).collect();
    let users = summaries::users_by_id(db, &user_ids).await?;
    let requests = requests_by_id(db, &request_ids).await?;
    let mut history = crate::web::api::summaries::history(db, tz, CONTENT_TYPE, &ids).await?;
    Ok(rows
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "user": c.user_id,
                "_user": users.get(&c.user_id).cloned().unwrap_or(Value::Null),
                "_request": requests.get(&c.request_id).map(request_summary).unwrap_or(Value::Null),
                "_history": history.remove(&c.id).unwrap_or_default(),
                "content": c.content,
                "created": render_datetime(&c.created, tz),
                "private": c.private,
                "request": c.request_id,
            })
        })
        .collect())
}

async fn represent_one(db: &Db, tz: Tz, c: &CommentRow) -> Result<Value, ApiError> {
    Ok(represent(db, tz, std::slice::from_ref(c))
        .await?
        .pop()
        .unwrap_or(Value::Null))
}

/// List comments.
///
/// Returns a list of comments made on allocation requests. Non-staff users are only
/// returned public comments belonging to teams where they hold membership. Staff users are
/// returned all comments, including private comments.
#[endpoint(
    operation_id = "allocations_comments_list",
    tags("Allocations - Request Comments"),
    responses((status_code = 200, description = "", body = CommentPage))
)]
pub async fn list(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let scope = |q: &mut SelectStatement| scope(q, &caller);
        let (rows, page) = listing::page::<CommentRow>(
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

async fn by_id(db: &Db, id: i64) -> Result<Option<CommentRow>, ApiError> {
    Ok(on_db!(db, |p| sqlx::query_as::<_, CommentRow>(
        "SELECT id, content, created, private, user_id, request_id FROM allocations_comment \
         WHERE id = $1"
    )
    .bind(id)
    .fetch_optional(p)
    .await)?)
}

/// A comment the caller may read and write (the same rule for every item method): 404 when
/// missing; 403 unless staff, or a member of the request's team and the comment is public.
async fn accessible(db: &Db, caller: &Caller, id: i64) -> Result<CommentRow, ApiError> {
    let c = by_id(db, id)
        .await?
        .ok_or_else(|| ApiError::no_match(MODEL))?;
    if caller.user.is_staff {
        return Ok(c);
    }
    let member = match request_team(db, c.request_id).await? {
        Some(team) => is_member_or_staff(db, caller, team).await?,
        None => false,
    };
    if member && !c.private {
        Ok(c)
    } else {
        Err(ApiError::forbidden())
    }
}

/// Retrieve a comment.
///
/// Returns a single comment by ID. Read access is granted to staff users and team members
/// for public comments. Private comments are only accessible to staff users.
#[endpoint(
    operation_id = "allocations_comments_retrieve",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this comment.")),
    tags("Allocations - Request Comments"),
    responses((status_code = 200, description = "", body = CommentDoc))
)]
pub async fn retrieve(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let c = accessible(&app.db, &caller, path_id(req)?).await?;
        represent_one(&app.db, app.config.timezone(), &c).await
    }
    .await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

fn snapshot(c: &CommentRow) -> Snapshot {
    vec![
        ("id", audit::int(c.id)),
        ("content", Some(c.content.clone())),
        ("created", audit::datetime(&c.created)),
        ("private", audit::boolean(c.private)),
        ("user", audit::int(c.user_id)),
        ("request", audit::int(c.request_id)),
    ]
}

fn repr_with(c: &CommentRow, username: &str) -> String {
    format!(
        "Comment #{} - by {username} on request #{}",
        c.id, c.request_id
    )
}

async fn author_name(db: &Db, user_id: i64) -> Result<String, ApiError> {
    let username: Option<String> = on_db!(db, |p| sqlx::query_scalar(
        "SELECT username FROM users_user WHERE id = $1"
    )
    .bind(user_id)
    .fetch_optional(p)
    .await)?;
    Ok(username.unwrap_or_default())
}

async fn repr(db: &Db, c: &CommentRow) -> Result<String, ApiError> {
    Ok(repr_with(c, &author_name(db, c.user_id).await?))
}

/// Validates a body against the stored comment (`current`, None on create).
async fn validate(
    db: &Db,
    me: &User,
    body: &Body,
    partial: bool,
    current: Option<&CommentRow>,
) -> Result<CommentRow, ApiError> {
    body.require_object()?;
    let mut v = Validator::new(&body.fields, partial);
    let content = v.text("content", Text::required(CONTENT_MAX)).flatten();
    let private = v.boolean("private");
    let user = v.pk("user", false);
    let request = v.pk("request", true);
    if let Some(u) = user {
        let exists: i64 = on_db!(db, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM users_user WHERE id = $1"
        )
        .bind(u)
        .fetch_one(p)
        .await)?;
        if exists == 0 {
            v.error(
                "user",
                format!("Invalid pk \"{u}\" - object does not exist."),
            );
        } else if !me.is_staff && u != me.id {
            // ⚑ Upstream lets anyone name any author (domain.md §7.7); Keystone does not.
            v.error("user", AUTHOR_IS_CALLER);
        }
    }
    if let Some(r) = request
        && request_team(db, r).await?.is_none()
    {
        v.error(
            "request",
            format!("Invalid pk \"{r}\" - object does not exist."),
        );
    }
    v.finish()?;
    let private = private.or(current.map(|c| c.private)).unwrap_or(false);
    if private && !me.is_staff {
        return Err(ApiError::field("private", PRIVATE_STAFF_ONLY));
    }
    // An omitted author is the caller on create and on PUT (upstream re-assigns it); PATCH
    // keeps the stored one.
    let user_id = match (user, current) {
        (Some(u), _) => u,
        (None, Some(c)) if partial => c.user_id,
        (None, _) => me.id,
    };
    Ok(CommentRow {
        id: current.map(|c| c.id).unwrap_or(0),
        content: content
            .or_else(|| current.map(|c| c.content.clone()))
            .unwrap_or_default(),
        created: current
            .map(|c| c.created)
            .unwrap_or_else(|| Utc::now().trunc_subsecs(6)),
        private,
        user_id,
        request_id: request
            .or(current.map(|c| c.request_id))
            .unwrap_or_default(),
    })
}

/// Create a comment.
///
/// Creates a new comment on an allocation request. Write access is granted to staff users
/// and team members. Only staff users may create comments marked as private.
#[endpoint(
    operation_id = "allocations_comments_create",
    tags("Allocations - Request Comments"),
    responses((status_code = 201, description = "", body = CommentDoc))
)]
pub async fn create(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let me = caller.user.clone();
        let body = body::read(req).await?;
        // View-level rule: non-staff must be a member of the body request's team; a
        // missing, garbled or unknown request is 403 too.
        if !me.is_staff {
            let Some(r) = body_request(&app.db, &body).await? else {
                return Err(ApiError::forbidden());
            };
            if !is_member_or_staff(&app.db, &caller, r.team_id).await? {
                return Err(ApiError::forbidden());
            }
        }
        let mut row = validate(&app.db, &me, &body, false, None).await?;
        let ctx = crate::web::access::audit_context(req, depot);
        let author = author_name(&app.db, row.user_id).await?;
        let mut tx = app.db.begin().await?;
        row.id = on_tx!(&mut tx, |c| sqlx::query_scalar(
            "INSERT INTO allocations_comment (content, created, private, user_id, request_id) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id"
        )
        .bind(&row.content)
        .bind(row.created)
        .bind(row.private)
        .bind(row.user_id)
        .bind(row.request_id)
        .fetch_one(c)
        .await)?;
        let text = repr_with(&row, &author);
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

async fn update(req: &mut Request, depot: &mut Depot, partial: bool) -> Result<Value, ApiError> {
    let (app, caller) = context(depot)?;
    let me = caller.user.clone();
    let current = accessible(&app.db, &caller, path_id(req)?).await?;
    let body = body::read(req).await?;
    // ⚑ Upstream lets a member move a comment to any team's request; Keystone requires
    // membership in the new request's team too (domain.md §7.7).
    if !me.is_staff
        && let Some(r) = body_request(&app.db, &body).await?
        && !is_member_or_staff(&app.db, &caller, r.team_id).await?
    {
        return Err(ApiError::forbidden());
    }
    let after = validate(&app.db, &me, &body, partial, Some(&current)).await?;
    let ctx = crate::web::access::audit_context(req, depot);
    let text = repr(&app.db, &after).await?;
    let mut tx = app.db.begin().await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE allocations_comment SET content = $1, private = $2, user_id = $3, \
         request_id = $4 WHERE id = $5"
    )
    .bind(&after.content)
    .bind(after.private)
    .bind(after.user_id)
    .bind(after.request_id)
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

/// Update a comment.
///
/// Replaces an existing comment with new values. Write access is granted to staff users
/// and team members for public comments. Only staff users may modify private comments.
#[endpoint(
    operation_id = "allocations_comments_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this comment.")),
    tags("Allocations - Request Comments"),
    responses((status_code = 200, description = "", body = CommentDoc))
)]
pub async fn put(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = update(req, depot, false).await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

/// Partially update a comment.
///
/// Partially updates an existing comment with new values. Write access is granted to staff
/// users and team members for public comments. Only staff users may modify private
/// comments.
#[endpoint(
    operation_id = "allocations_comments_partial_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this comment.")),
    tags("Allocations - Request Comments"),
    responses((status_code = 200, description = "", body = CommentDoc))
)]
pub async fn patch(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = update(req, depot, true).await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

/// Delete a comment.
///
/// Deletes a comment by ID. Write access is granted to staff users and team members for
/// public comments. Only staff users may delete private comments.
#[endpoint(
    operation_id = "allocations_comments_destroy",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this comment.")),
    tags("Allocations - Request Comments"),
    responses((status_code = 204, description = "No response body"))
)]
pub async fn destroy(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result: Result<(), ApiError> = async {
        let (app, caller) = context(depot)?;
        let c = accessible(&app.db, &caller, path_id(req)?).await?;
        let ctx = crate::web::access::audit_context(req, depot);
        let text = repr(&app.db, &c).await?;
        audit::delete_audited(
            &app.db,
            &ctx,
            CONTENT_TYPE,
            "allocations_comment",
            c.id,
            &text,
            &snapshot(&c),
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
            "allocations/comments/",
            list,
            create,
            "Comment List"
        ))
        .push(crate::web::api::item!(
            "allocations/comments/{id}/",
            retrieve,
            put,
            patch,
            destroy,
            "Comment Instance"
        ))
}
