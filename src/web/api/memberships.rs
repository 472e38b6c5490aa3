//! `/users/memberships/` (domain.md §6.3): who belongs to which team in which role. Team
//! admins and owners manage their team's memberships; anyone may leave a team.

use super::fields::Validator;
use super::list::{self as listing, Column, Kind, ListSpec, search_via};
use super::summaries::{self, MembershipRow, user_summary};
use super::{Caller, body, context, path_id};
use crate::store::Db;
use crate::store::audit::{self, Action, Snapshot};
use crate::web::ApiError;
use crate::{on_db, on_tx};
use salvo::http::{Method, StatusCode};
use salvo::oapi::ToSchema;
use salvo::prelude::*;
use sea_query::Expr;
use serde::Serialize;
use serde_json::{Value, json};

pub const CONTENT_TYPE: &str = "users | Membership";
const MODEL: &str = "Membership";
pub const ROLES: &[&str] = &["OW", "AD", "MB"];

const COLUMNS: &[Column] = &[
    Column::new("id", Kind::Int),
    Column::new("role", Kind::Choice(ROLES)),
    Column::new("user", Kind::Fk("users_user")),
    Column::new("team", Kind::Fk("users_team")),
];

pub const SPEC: ListSpec = ListSpec {
    table: "users_membership",
    filters: COLUMNS,
    order: COLUMNS,
    search: &[
        search_via(&[("team_id", "users_team")], "name"),
        search_via(&[("user_id", "users_user")], "username"),
        search_via(&[("user_id", "users_user")], "first_name"),
        search_via(&[("user_id", "users_user")], "last_name"),
    ],
};

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "Membership"))]
pub struct MembershipDoc {
    pub id: i64,
    pub _user: super::users::UserSummaryDoc,
    pub _team: super::users::TeamSummaryDoc,
    pub _history: Vec<super::users::AuditLogSummaryDoc>,
    pub role: String,
    pub user: i64,
    pub team: i64,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "PaginatedMembershipList"))]
pub struct MembershipPage {
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<MembershipDoc>,
}

/// Non-staff see every membership whose team and user are both active.
fn scope(q: &mut sea_query::SelectStatement, caller: &Caller) {
    if !caller.is_staff() {
        q.and_where(Expr::cust(
            "team_id IN (SELECT id FROM users_team WHERE is_active = TRUE) \
             AND user_id IN (SELECT id FROM users_user WHERE is_active = TRUE)",
        ));
    }
}

pub async fn represent(db: &Db, rows: &[MembershipRow]) -> Result<Vec<Value>, ApiError> {
    let ids: Vec<i64> = rows.iter().map(|m| m.id).collect();
    let user_ids: Vec<i64> = rows.iter().map(|m| m.user_id).collect();
    let team_ids: Vec<i64> = rows.iter().map(|m| m.team_id).collect();
    let users = summaries::load_users(db, &user_ids).await?;
    let teams = summaries::teams_by_id(db, &team_ids).await?;
    let mut history = crate::web::api::summaries::history(db, CONTENT_TYPE, &ids).await?;
    Ok(rows
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "_user": users.iter().find(|u| u.id == m.user_id).map(user_summary).unwrap_or(Value::Null),
                "_team": teams.get(&m.team_id).cloned().unwrap_or(Value::Null),
                "_history": history.remove(&m.id).unwrap_or_default(),
                "role": m.role,
                "user": m.user_id,
                "team": m.team_id,
            })
        })
        .collect())
}

async fn represent_one(db: &Db, m: &MembershipRow) -> Result<Value, ApiError> {
    Ok(represent(db, std::slice::from_ref(m))
        .await?
        .pop()
        .unwrap_or(Value::Null))
}

/// List memberships.
///
/// Returns a list of team memberships.
#[endpoint(
    operation_id = "users_memberships_list",
    tags("Users - Memberships"),
    responses((status_code = 200, description = "", body = MembershipPage))
)]
pub async fn list(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let scope = |q: &mut sea_query::SelectStatement| scope(q, &caller);
        let (rows, page) = listing::page::<MembershipRow>(
            req,
            &app.db,
            app.config.timezone(),
            &SPEC,
            &["id", "role", "user_id", "team_id"],
            &scope,
        )
        .await?;
        Ok(page.envelope(represent(&app.db, &rows).await?))
    }
    .await;
    super::respond(res, StatusCode::OK, result);
}

async fn by_id(db: &Db, id: i64) -> Result<Option<MembershipRow>, ApiError> {
    Ok(on_db!(db, |p| sqlx::query_as::<_, MembershipRow>(
        "SELECT id, role, user_id, team_id FROM users_membership WHERE id = $1"
    )
    .bind(id)
    .fetch_optional(p)
    .await)?)
}

/// Whether a team is active, `None` when it does not exist.
async fn team_active(db: &Db, team_id: i64) -> Result<Option<bool>, ApiError> {
    Ok(on_db!(db, |p| sqlx::query_scalar::<_, bool>(
        "SELECT is_active FROM users_team WHERE id = $1"
    )
    .bind(team_id)
    .fetch_optional(p)
    .await)?)
}

async fn user_active(db: &Db, user_id: i64) -> Result<Option<bool>, ApiError> {
    Ok(on_db!(db, |p| sqlx::query_scalar::<_, bool>(
        "SELECT is_active FROM users_user WHERE id = $1"
    )
    .bind(user_id)
    .fetch_optional(p)
    .await)?)
}

/// The view-level rule: a non-staff body naming an existing team needs privileged
/// membership in that team (403); an absent or unknown team passes to validation.
async fn check_body_team(db: &Db, caller: &Caller, body: &body::Body) -> Result<(), ApiError> {
    let me = &caller.user;
    if me.is_staff {
        return Ok(());
    }
    let Some(raw) = body.get("team") else {
        return Ok(());
    };
    let Ok(team_id) = super::fields::pk_value(raw) else {
        return Err(ApiError::field(
            "team",
            "Incorrect type. Expected pk value, received str.",
        ));
    };
    if team_active(db, team_id).await?.is_some()
        && !super::teams::is_privileged(db, me.id, team_id).await?
    {
        return Err(ApiError::forbidden());
    }
    Ok(())
}

/// An item within the caller's visibility (404 otherwise).
async fn visible(db: &Db, caller: &Caller, id: i64) -> Result<MembershipRow, ApiError> {
    let m = by_id(db, id)
        .await?
        .ok_or_else(|| ApiError::no_match(MODEL))?;
    if !caller.is_staff() {
        let team_ok = team_active(db, m.team_id).await?.unwrap_or(false);
        let user_ok = user_active(db, m.user_id).await?.unwrap_or(false);
        if !crate::domain::policy::membership_visible(team_ok, user_ok) {
            return Err(ApiError::no_match(MODEL));
        }
    }
    Ok(m)
}

/// Object-level rule in upstream's order.
async fn object_permission(
    db: &Db,
    caller: &Caller,
    method: &Method,
    m: &MembershipRow,
) -> Result<(), ApiError> {
    let me = &caller.user;
    if *method == Method::DELETE && m.user_id == me.id {
        return Ok(());
    }
    if me.is_staff {
        return Ok(());
    }
    if !team_active(db, m.team_id).await?.unwrap_or(false) {
        return Err(ApiError::forbidden());
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    if super::teams::is_privileged(db, me.id, m.team_id).await? {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}

/// Retrieve a membership.
///
/// Returns a single team membership by ID.
#[endpoint(
    operation_id = "users_memberships_retrieve",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this membership.")),
    tags("Users - Memberships"),
    responses((status_code = 200, description = "", body = MembershipDoc))
)]
pub async fn retrieve(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let m = visible(&app.db, &caller, path_id(req)?).await?;
        represent_one(&app.db, &m).await
    }
    .await;
    super::respond(res, StatusCode::OK, result);
}

fn snapshot(m: &MembershipRow) -> Snapshot {
    vec![
        ("id", audit::int(m.id)),
        ("role", Some(m.role.clone())),
        ("user", audit::int(m.user_id)),
        ("team", audit::int(m.team_id)),
    ]
}

async fn repr(db: &Db, m: &MembershipRow) -> Result<String, ApiError> {
    let names: Option<(String, String)> = on_db!(db, |p| {
        sqlx::query_as(
        "SELECT u.username, t.name FROM users_user u, users_team t WHERE u.id = $1 AND t.id = $2"
    )
    .bind(m.user_id)
    .bind(m.team_id)
    .fetch_optional(p)
    .await
    })?;
    let (username, team) = names.unwrap_or_default();
    Ok(format!(
        "Membership #{} - {username} in Team #{} - {team}",
        m.id, m.team_id
    ))
}

/// Validates role/user/team; `current` is the row being updated.
async fn validate(
    db: &Db,
    caller: &Caller,
    body: &body::Body,
    partial: bool,
    current: Option<&MembershipRow>,
) -> Result<MembershipRow, ApiError> {
    body.require_object()?;
    let mut v = Validator::new(&body.fields, partial);
    let role = v.choice("role", ROLES, true);
    let user = v.pk("user", true);
    let team = v.pk("team", true);
    if let Some(u) = user
        && user_active(db, u).await?.is_none()
    {
        v.error(
            "user",
            format!("Invalid pk \"{u}\" - object does not exist."),
        );
    }
    if let Some(t) = team {
        match team_active(db, t).await? {
            None => v.error(
                "team",
                format!("Invalid pk \"{t}\" - object does not exist."),
            ),
            Some(false) if !caller.is_staff() => v.error(
                "team",
                "Non-staff cannot create a membership for an inactive team.",
            ),
            _ => {}
        }
    }
    if v.has_errors() {
        v.finish()?;
    }
    let row = MembershipRow {
        id: current.map(|c| c.id).unwrap_or(0),
        role: role
            .or_else(|| current.map(|c| c.role.clone()))
            .unwrap_or_default(),
        user_id: user.or(current.map(|c| c.user_id)).unwrap_or_default(),
        team_id: team.or(current.map(|c| c.team_id)).unwrap_or_default(),
    };
    // Moving to another team needs privileged membership in both: the view rule checked
    // the body's team, the object rule the current one.
    let dup: i64 = on_db!(db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM users_membership WHERE user_id = $1 AND team_id = $2 AND id <> $3"
    )
    .bind(row.user_id)
    .bind(row.team_id)
    .bind(row.id)
    .fetch_one(p)
    .await)?;
    if dup > 0 {
        return Err(ApiError::field(
            "non_field_errors",
            "The fields user, team must make a unique set.",
        ));
    }
    Ok(row)
}

/// Create a membership.
///
/// Adds a user to a team. Staff or an admin/owner of that team.
#[endpoint(
    operation_id = "users_memberships_create",
    tags("Users - Memberships"),
    responses((status_code = 201, description = "", body = MembershipDoc))
)]
pub async fn create(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let body = body::read(req).await?;
        check_body_team(&app.db, &caller, &body).await?;
        let mut row = validate(&app.db, &caller, &body, false, None).await?;
        let ctx = super::users::audit_context(req, depot);
        let mut tx = app.db.begin().await?;
        row.id = on_tx!(&mut tx, |c| {
            sqlx::query_scalar(
            "INSERT INTO users_membership (role, user_id, team_id) VALUES ($1, $2, $3) RETURNING id"
        )
        .bind(&row.role)
        .bind(row.user_id)
        .bind(row.team_id)
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
        represent_one(&app.db, &row).await
    }
    .await;
    super::respond(res, StatusCode::CREATED, result);
}

async fn update(req: &mut Request, depot: &mut Depot, partial: bool) -> Result<Value, ApiError> {
    let (app, caller) = context(depot)?;
    let body = body::read(req).await?;
    check_body_team(&app.db, &caller, &body).await?;
    let current = visible(&app.db, &caller, path_id(req)?).await?;
    object_permission(&app.db, &caller, req.method(), &current).await?;
    let after = validate(&app.db, &caller, &body, partial, Some(&current)).await?;
    let ctx = super::users::audit_context(req, depot);
    let mut tx = app.db.begin().await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE users_membership SET role = $1, user_id = $2, team_id = $3 WHERE id = $4"
    )
    .bind(&after.role)
    .bind(after.user_id)
    .bind(after.team_id)
    .bind(after.id)
    .execute(c)
    .await
    .map(|_| ()))?;
    let text = repr(&app.db, &after).await?;
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
    represent_one(&app.db, &after).await
}

/// Update a membership.
///
/// Replaces a membership. Staff or an admin/owner of the team.
#[endpoint(
    operation_id = "users_memberships_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this membership.")),
    tags("Users - Memberships"),
    responses((status_code = 200, description = "", body = MembershipDoc))
)]
pub async fn put(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = update(req, depot, false).await;
    super::respond(res, StatusCode::OK, result);
}

/// Partially update a membership.
///
/// Updates fields of a membership. Staff or an admin/owner of the team.
#[endpoint(
    operation_id = "users_memberships_partial_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this membership.")),
    tags("Users - Memberships"),
    responses((status_code = 200, description = "", body = MembershipDoc))
)]
pub async fn patch(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = update(req, depot, true).await;
    super::respond(res, StatusCode::OK, result);
}

/// Delete a membership.
///
/// Removes a user from a team. Staff, an admin/owner of the team, or the member themself.
#[endpoint(
    operation_id = "users_memberships_destroy",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this membership.")),
    tags("Users - Memberships"),
    responses((status_code = 204, description = "No response body"))
)]
pub async fn destroy(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result: Result<(), ApiError> = async {
        let (app, caller) = context(depot)?;
        let body = body::read(req).await?;
        check_body_team(&app.db, &caller, &body).await?;
        let m = visible(&app.db, &caller, path_id(req)?).await?;
        object_permission(&app.db, &caller, req.method(), &m).await?;
        let ctx = super::users::audit_context(req, depot);
        let text = repr(&app.db, &m).await?;
        audit::delete_audited(
            &app.db,
            &ctx,
            CONTENT_TYPE,
            "users_membership",
            m.id,
            &text,
            &snapshot(&m),
        )
        .await?;
        Ok(())
    }
    .await;
    crate::web::api::no_content(res, result);
}
