//! `/allocations/comments/` (domain.md §7.7): discussion on allocation requests. Any member
//! of the request's team may read and write the team's public comments; private comments
//! exist for staff only (hidden from lists and 403 on items for everyone else).

use super::shared::{self, AllocationRequestSummaryDoc, REQUESTS};
use crate::domain::validation::{Text, Validator};
use crate::on_db;
use crate::store::audit::Action;
use crate::store::users::User;
use crate::store::{Db, Tx};
use crate::web::ApiError;
use crate::web::api::Caller;
use crate::web::api::body::Body;
use crate::web::api::list::{Column, Kind, ListSpec, search, search_via};
use crate::web::api::resource::{self, Docs, Field, Policy, Resource, Val, Write};
use crate::web::api::summaries::{self, render_datetime};
use crate::web::api::summaries::{AuditLogSummaryDoc, UserSummaryDoc};
use chrono::{DateTime, SubsecRound, Utc};
use chrono_tz::Tz;
use salvo::oapi::ToSchema;
use sea_query::{Alias, Expr, ExprTrait, SelectStatement};
use serde::Serialize;

pub const CONTENT_TYPE: &str = "allocations | Comment";
const MODEL: &str = "Comment";
const CONTENT_MAX: usize = 2000;
const PRIVATE_STAFF_ONLY: &str = "Only staff users can write comments marked as private.";
const AUTHOR_IS_CALLER: &str = "Comment author must be the requesting user.";

const FIELDS: [Field<CommentRow>; 6] = [
    Field::id(|c| Val::Int(c.id)),
    Field::new("content", Kind::Text, |c| Val::Text(c.content.clone())),
    Field::new("created", Kind::DateTime, |c: &CommentRow| {
        Val::DateTime(c.created)
    })
    .write(Write::Create),
    Field::new("private", Kind::Bool, |c| Val::Bool(c.private)),
    Field::new("user", Kind::Fk("users_user"), |c| Val::Int(c.user_id)),
    Field::new("request", Kind::Fk(REQUESTS), |c| Val::Int(c.request_id)),
];
const COLUMNS: &[Column] = &resource::columns(&FIELDS);

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

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CommentRow {
    pub id: i64,
    pub content: String,
    pub created: DateTime<Utc>,
    pub private: bool,
    pub user_id: i64,
    pub request_id: i64,
}

// A comment as the API renders and documents it (a doc comment here would become the
// schema's description).
#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "Comment"))]
pub struct Comment {
    pub id: i64,
    pub user: i64,
    #[salvo(schema(value_type = UserSummaryDoc))]
    pub _user: Option<crate::web::api::summaries::Embedded>,
    #[salvo(schema(value_type = AllocationRequestSummaryDoc))]
    pub _request: Option<crate::web::api::summaries::Embedded>,
    #[salvo(schema(value_type = Vec<AuditLogSummaryDoc>))]
    pub _history: Vec<crate::web::api::summaries::AuditLogSummaryDoc>,
    #[salvo(schema(max_length = 2000))]
    pub content: String,
    pub created: String,
    pub private: bool,
    pub request: i64,
}

/// Non-staff: comments on their teams' requests, public ones only.
fn scope(q: &mut SelectStatement, caller: &Caller) {
    if !caller.is_staff() {
        shared::scope_via_request(q, caller, "request_id");
        q.and_where(Expr::col(Alias::new("private")).eq(false));
    }
}

/// The rule of every item method (reads and writes alike): staff, or a member of the
/// request's team when the comment is public (403).
async fn check_visible(db: &Db, caller: &Caller, c: &CommentRow) -> Result<(), ApiError> {
    ApiError::forbidden_unless(
        caller.is_staff() || (!c.private && super::sees_request(db, caller, c.request_id).await?),
    )
}

/// View-level rule: non-staff must be a member of the body request's team. On create a
/// missing, garbled or unknown request is 403 too; on update it is left to validation.
async fn check_body_request(
    db: &Db,
    caller: &Caller,
    body: &Body,
    action: Action,
) -> Result<(), ApiError> {
    if caller.is_staff() {
        return Ok(());
    }
    let Some(team) = shared::body_request_team(db, body).await? else {
        return match action {
            Action::Create => Err(ApiError::forbidden()),
            _ => Ok(()),
        };
    };
    // ⚑ Upstream lets a member move a comment to any team's request; Keystone requires
    // membership in the new request's team too (domain.md §7.7).
    ApiError::forbidden_unless(crate::store::teams::is_member(db, caller.id(), team).await?)
}

async fn repr(tx: &mut Tx, c: &CommentRow) -> Result<String, ApiError> {
    let username = crate::store::users::username_in(tx, c.user_id).await?;
    Ok(format!(
        "Comment #{} - by {} on request #{}",
        c.id, username, c.request_id
    ))
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
        && shared::request_team(db, r).await?.is_none()
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

/// The comment resource.
pub struct Comments;

crate::document_resource!(Comments);

impl Resource for Comments {
    type Row = CommentRow;
    type Repr = Comment;
    type Extra = ();

    const PATH: &'static str = "allocations/comments/";
    const TABLE: &'static str = "allocations_comment";
    const CONTENT_TYPE: &'static str = CONTENT_TYPE;
    const MODEL: &'static str = MODEL;
    const FIELDS: &'static [Field<CommentRow>] = &FIELDS;
    const SPEC: ListSpec = SPEC;
    /// Staff, or members of the request's team: the record's (object level) and, on
    /// writes, the body's (view level, read after the record).
    const POLICY: Policy = Policy::OPEN;
    const DOCS: Docs = Docs {
        tag: "Allocations - Request Comments",
        id: "A unique integer value identifying this comment.",
        list_name: "Comment List",
        item_name: "Comment Instance",
        list: (
            "List comments.",
            "Returns a list of comments made on allocation requests. Non-staff users are \
             only returned public comments belonging to teams where they hold membership. \
             Staff users are returned all comments, including private comments.",
        ),
        retrieve: (
            "Retrieve a comment.",
            "Returns a single comment by ID. Read access is granted to staff users and team \
             members for public comments. Private comments are only accessible to staff \
             users.",
        ),
        create: (
            "Create a comment.",
            "Creates a new comment on an allocation request. Write access is granted to \
             staff users and team members. Only staff users may create comments marked as \
             private.",
        ),
        update: (
            "Update a comment.",
            "Replaces an existing comment with new values. Write access is granted to staff \
             users and team members for public comments. Only staff users may modify private \
             comments.",
        ),
        partial_update: (
            "Partially update a comment.",
            "Partially updates an existing comment with new values. Write access is granted \
             to staff users and team members for public comments. Only staff users may \
             modify private comments.",
        ),
        destroy: (
            "Delete a comment.",
            "Deletes a comment by ID. Write access is granted to staff users and team \
             members for public comments. Only staff users may delete private comments.",
        ),
    };

    crate::record_id!();

    async fn repr(tx: &mut Tx, row: &CommentRow) -> Result<String, ApiError> {
        repr(tx, row).await
    }

    async fn validate(
        db: &Db,
        caller: &Caller,
        body: &Body,
        partial: bool,
        current: Option<&CommentRow>,
    ) -> Result<(CommentRow, ()), ApiError> {
        Ok((
            validate(db, &caller.user, body, partial, current).await?,
            (),
        ))
    }

    /// Representations of a page: authors, requests and history in four queries whatever the
    /// page size.
    async fn represent(db: &Db, tz: Tz, rows: &[CommentRow]) -> Result<Vec<Comment>, ApiError> {
        let ids: Vec<i64> = rows.iter().map(|c| c.id).collect();
        let user_ids: Vec<i64> = rows.iter().map(|c| c.user_id).collect();
        let request_ids: Vec<i64> = rows.iter().map(|c| c.request_id).collect();
        let users = summaries::users_by_id(db, &user_ids).await?;
        let requests = shared::summaries_by_id(db, &request_ids).await?;
        let mut history = summaries::history(db, tz, CONTENT_TYPE, &ids).await?;
        Ok(rows
            .iter()
            .map(|c| Comment {
                id: c.id,
                user: c.user_id,
                _user: users.get(&c.user_id).cloned(),
                _request: requests.get(&c.request_id).cloned(),
                _history: history.remove(&c.id).unwrap_or_default(),
                content: c.content.clone(),
                created: render_datetime(&c.created, tz),
                private: c.private,
                request: c.request_id,
            })
            .collect())
    }

    fn scope(q: &mut SelectStatement, caller: &Caller) {
        scope(q, caller)
    }

    async fn check_record(db: &Db, caller: &Caller, row: &CommentRow) -> Result<(), ApiError> {
        check_visible(db, caller, row).await
    }

    async fn check_body(
        db: &Db,
        caller: &Caller,
        body: &Body,
        action: Action,
    ) -> Result<(), ApiError> {
        check_body_request(db, caller, body, action).await
    }
}
