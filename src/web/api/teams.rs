//! `/users/teams/` (domain.md §6.2): research teams. Anyone authenticated may create one;
//! staff and the team's admins/owners may change its `is_active` or delete it.

use super::fields::{Text, Validator};
use super::list::{self as listing, Column, Kind, ListSpec, search};
use super::summaries::{self, TeamRow, user_summary};
use super::{Caller, body, context, path_id};
use crate::domain::policy::{self, Role};
use crate::store::audit::{self, Action, AuditContext, Snapshot};
use crate::store::{Db, Tx};
use crate::web::ApiError;
use crate::{on_db, on_tx};
use salvo::http::StatusCode;
use salvo::oapi::ToSchema;
use salvo::prelude::*;
use sea_query::{Alias, Expr, ExprTrait, Query};
use serde::Serialize;
use serde_json::{Value, json};

pub const CONTENT_TYPE: &str = "users | Team";
const MODEL: &str = "Team";

const COLUMNS: &[Column] = &[
    Column::new("id", Kind::Int),
    Column::new("name", Kind::Text),
    Column::new("slug", Kind::Text),
    Column::new("is_active", Kind::Bool),
];

pub const SPEC: ListSpec = ListSpec {
    table: "users_team",
    filters: COLUMNS,
    order: COLUMNS,
    search: &[search("name")],
};

#[derive(Serialize, ToSchema)]
pub struct UserRole {
    pub id: i64,
    pub user: i64,
    pub role: String,
    pub _user: super::users::UserSummaryDoc,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "Team"))]
pub struct TeamDoc {
    pub id: i64,
    pub slug: String,
    pub is_active: bool,
    pub _membership: Vec<UserRole>,
    pub _history: Vec<super::users::AuditLogSummaryDoc>,
    pub name: String,
    pub users: Vec<i64>,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "PaginatedTeamList"))]
pub struct TeamPage {
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<TeamDoc>,
}

/// Django's `slugify`: NFKD, ASCII only, drop punctuation, lower-case, runs of spaces and
/// hyphens to one `-`, strip `-` and `_` at both ends.
pub fn slugify(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let ascii: String = name.nfkd().filter(char::is_ascii).collect();
    let kept: String = ascii
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-' || c.is_whitespace())
        .collect::<String>()
        .to_lowercase();
    let mut out = String::new();
    let mut pending_dash = false;
    for c in kept.trim().chars() {
        if c == '-' || c.is_whitespace() {
            pending_dash = true;
        } else {
            if pending_dash && !out.is_empty() {
                out.push('-');
            }
            pending_dash = false;
            out.push(c);
        }
    }
    out.trim_matches(|c| c == '-' || c == '_').to_string()
}

/// List visibility: staff see every team; others the active teams they belong to.
fn list_scope(q: &mut sea_query::SelectStatement, caller: &Caller) {
    if !caller.is_staff() {
        let id = caller.id();
        q.and_where(Expr::col(Alias::new("is_active")).eq(true));
        let mut mine = Query::select();
        mine.column(Alias::new("team_id"))
            .from(Alias::new("users_membership"))
            .and_where(Expr::col(Alias::new("user_id")).eq(id));
        q.and_where(Expr::col(Alias::new("id")).in_subquery(mine));
    }
}

pub async fn represent(db: &Db, teams: &[TeamRow]) -> Result<Vec<Value>, ApiError> {
    let ids: Vec<i64> = teams.iter().map(|t| t.id).collect();
    let memberships = summaries::memberships_where(db, "team_id", &ids).await?;
    let user_ids: Vec<i64> = memberships.iter().map(|m| m.user_id).collect();
    let users = summaries::load_users(db, &user_ids).await?;
    let mut history = crate::web::api::summaries::history(db, CONTENT_TYPE, &ids).await?;
    Ok(teams
        .iter()
        .map(|t| {
            let mine: Vec<&summaries::MembershipRow> =
                memberships.iter().filter(|m| m.team_id == t.id).collect();
            let membership: Vec<Value> = mine
                .iter()
                .map(|m| {
                    let user = users
                        .iter()
                        .find(|u| u.id == m.user_id)
                        .map(user_summary)
                        .unwrap_or(Value::Null);
                    json!({"id": m.id, "user": m.user_id, "role": m.role, "_user": user})
                })
                .collect();
            let mut member_ids: Vec<i64> = mine.iter().map(|m| m.user_id).collect();
            member_ids.sort_unstable();
            json!({
                "id": t.id,
                "slug": t.slug,
                "is_active": t.is_active,
                "_membership": membership,
                "_history": history.remove(&t.id).unwrap_or_default(),
                "name": t.name,
                "users": member_ids,
            })
        })
        .collect())
}

async fn represent_one(db: &Db, t: &TeamRow) -> Result<Value, ApiError> {
    Ok(represent(db, std::slice::from_ref(t))
        .await?
        .pop()
        .unwrap_or(Value::Null))
}

/// List teams.
///
/// Returns a list of teams. Non-staff users are only returned active teams they are a member of.
#[endpoint(
    operation_id = "users_teams_list",
    tags("Users - Teams"),
    responses((status_code = 200, description = "", body = TeamPage))
)]
pub async fn list(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let scope = |q: &mut sea_query::SelectStatement| list_scope(q, &caller);
        let (rows, page) = listing::page::<TeamRow>(
            req,
            &app.db,
            app.config.timezone(),
            &SPEC,
            &["id", "name", "slug", "is_active"],
            &scope,
        )
        .await?;
        Ok(page.envelope(represent(&app.db, &rows).await?))
    }
    .await;
    super::respond(res, StatusCode::OK, result);
}

pub async fn by_id(db: &Db, id: i64) -> Result<Option<TeamRow>, ApiError> {
    Ok(on_db!(db, |p| sqlx::query_as::<_, TeamRow>(
        "SELECT id, name, slug, is_active FROM users_team WHERE id = $1"
    )
    .bind(id)
    .fetch_optional(p)
    .await)?)
}

/// An item any caller may look up: inactive teams are 404 for non-staff.
async fn visible(db: &Db, caller: &Caller, id: i64) -> Result<TeamRow, ApiError> {
    let team = by_id(db, id)
        .await?
        .ok_or_else(|| ApiError::no_match(MODEL))?;
    if !policy::team_visible(caller.is_staff(), team.is_active) {
        return Err(ApiError::no_match(MODEL));
    }
    Ok(team)
}

/// The caller's role in a team, if any.
pub async fn role_in(db: &Db, user_id: i64, team_id: i64) -> Result<Option<String>, ApiError> {
    Ok(on_db!(db, |p| sqlx::query_scalar::<_, String>(
        "SELECT role FROM users_membership WHERE user_id = $1 AND team_id = $2"
    )
    .bind(user_id)
    .bind(team_id)
    .fetch_optional(p)
    .await)?)
}

/// Admin or owner of the team.
pub async fn is_privileged(db: &Db, user_id: i64, team_id: i64) -> Result<bool, ApiError> {
    Ok(role_in(db, user_id, team_id)
        .await?
        .as_deref()
        .and_then(Role::from_code)
        .is_some_and(Role::is_privileged))
}

/// Retrieve a team.
///
/// Returns a single team by ID.
#[endpoint(
    operation_id = "users_teams_retrieve",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this team.")),
    tags("Users - Teams"),
    responses((status_code = 200, description = "", body = TeamDoc))
)]
pub async fn retrieve(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let team = visible(&app.db, &caller, path_id(req)?).await?;
        represent_one(&app.db, &team).await
    }
    .await;
    super::respond(res, StatusCode::OK, result);
}

fn snapshot(t: &TeamRow) -> Snapshot {
    vec![
        ("id", audit::int(t.id)),
        ("name", Some(t.name.clone())),
        ("slug", Some(t.slug.clone())),
        ("is_active", audit::boolean(t.is_active)),
    ]
}

pub fn repr(t: &TeamRow) -> String {
    format!("Team #{} - {}", t.id, t.name)
}

/// Create a team.
///
/// Creates a new team. The creator is not made a member.
#[endpoint(
    operation_id = "users_teams_create",
    tags("Users - Teams"),
    responses((status_code = 201, description = "", body = TeamDoc))
)]
pub async fn create(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let body = body::read(req).await?;
        body.require_object()?;
        let mut v = Validator::new(&body.fields, false);
        let name = v.text("name", Text::required(255)).flatten();
        let is_active = v.boolean("is_active").unwrap_or(true);
        if let Some(name) = &name {
            let exact: i64 = on_db!(&app.db, |p| sqlx::query_scalar(
                "SELECT COUNT(*) FROM users_team WHERE name = $1"
            )
            .bind(name)
            .fetch_one(p)
            .await)?;
            if exact > 0 {
                v.error("name", "team with this name already exists.");
            } else {
                let slug_taken: i64 = on_db!(&app.db, |p| sqlx::query_scalar(
                    "SELECT COUNT(*) FROM users_team WHERE slug = $1"
                )
                .bind(slugify(name))
                .fetch_one(p)
                .await)?;
                if slug_taken > 0 {
                    v.error("name", "A team with this name already exists.");
                }
            }
        }
        if !is_active && !caller.is_staff() && !v.has_error("is_active") {
            v.error(
                "is_active",
                "This field cannot be set to False on new records by non-staff users.",
            );
        }
        v.finish()?;
        let name = name.unwrap_or_default();
        let ctx = crate::web::access::audit_context(req, depot);
        let mut tx = app.db.begin().await?;
        let id: i64 = on_tx!(&mut tx, |c| sqlx::query_scalar(
            "INSERT INTO users_team (name, slug, is_active) VALUES ($1, $2, $3) RETURNING id"
        )
        .bind(&name)
        .bind(slugify(&name))
        .bind(is_active)
        .fetch_one(c)
        .await)?;
        let team = TeamRow {
            id,
            slug: slugify(&name),
            name,
            is_active,
        };
        audit::record(
            &mut tx,
            &ctx,
            CONTENT_TYPE,
            id,
            &repr(&team),
            Action::Create,
            audit::changes(None, Some(&snapshot(&team))),
        )
        .await?;
        tx.commit().await?;
        represent_one(&app.db, &team).await
    }
    .await;
    super::respond(res, StatusCode::CREATED, result);
}

/// Staff or an admin/owner of the (visible) team, else 403.
async fn writable(db: &Db, caller: &Caller, id: i64) -> Result<TeamRow, ApiError> {
    let me = &caller.user;
    let team = visible(db, caller, id).await?;
    if !me.is_staff && !is_privileged(db, me.id, team.id).await? {
        return Err(ApiError::forbidden());
    }
    Ok(team)
}

async fn update(req: &mut Request, depot: &mut Depot, partial: bool) -> Result<Value, ApiError> {
    let (app, caller) = context(depot)?;
    let team = writable(&app.db, &caller, path_id(req)?).await?;
    let body = body::read(req).await?;
    body.require_object()?;
    let mut v = Validator::new(&body.fields, partial);
    // `name` is immutable after creation; changes are ignored. A PUT without `is_active`
    // sets it to true (its default).
    let is_active = v.boolean("is_active");
    v.finish()?;
    let mut after = team.clone();
    after.is_active = match is_active {
        Some(b) => b,
        None if partial => team.is_active,
        None => true,
    };
    let ctx = crate::web::access::audit_context(req, depot);
    let mut tx = app.db.begin().await?;
    on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE users_team SET is_active = $1 WHERE id = $2"
    )
    .bind(after.is_active)
    .bind(after.id)
    .execute(c)
    .await
    .map(|_| ()))?;
    audit::record(
        &mut tx,
        &ctx,
        CONTENT_TYPE,
        after.id,
        &repr(&after),
        Action::Update,
        audit::changes(Some(&snapshot(&team)), Some(&snapshot(&after))),
    )
    .await?;
    tx.commit().await?;
    represent_one(&app.db, &after).await
}

/// Update a team.
///
/// Replaces a team's writable fields (`is_active`). Staff or a team admin/owner.
#[endpoint(
    operation_id = "users_teams_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this team.")),
    tags("Users - Teams"),
    responses((status_code = 200, description = "", body = TeamDoc))
)]
pub async fn put(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = update(req, depot, false).await;
    super::respond(res, StatusCode::OK, result);
}

/// Partially update a team.
///
/// Updates a team's `is_active`. Staff or a team admin/owner.
#[endpoint(
    operation_id = "users_teams_partial_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this team.")),
    tags("Users - Teams"),
    responses((status_code = 200, description = "", body = TeamDoc))
)]
pub async fn patch(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = update(req, depot, true).await;
    super::respond(res, StatusCode::OK, result);
}

/// Writes delete entries for the memberships a team or user deletion cascades to.
pub async fn audit_cascaded_memberships(
    tx: &mut Tx,
    ctx: &AuditContext,
    column: &str,
    id: i64,
) -> Result<(), ApiError> {
    let sql = format!(
        "SELECT m.id, m.role, m.user_id, m.team_id, u.username, t.name FROM users_membership m \
         JOIN users_user u ON u.id = m.user_id JOIN users_team t ON t.id = m.team_id \
         WHERE m.{column} = $1 ORDER BY m.id"
    );
    let rows: Vec<(i64, String, i64, i64, String, String)> =
        on_tx!(tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(id)
            .fetch_all(c)
            .await)?;
    for (mid, role, user_id, team_id, username, team_name) in rows {
        let snap: Snapshot = vec![
            ("id", audit::int(mid)),
            ("role", Some(role)),
            ("user", audit::int(user_id)),
            ("team", audit::int(team_id)),
        ];
        let repr = format!("Membership #{mid} - {username} in Team #{team_id} - {team_name}");
        audit::record(
            tx,
            ctx,
            super::memberships::CONTENT_TYPE,
            mid,
            &repr,
            Action::Delete,
            audit::changes(Some(&snap), None),
        )
        .await?;
    }
    Ok(())
}

/// Delete a team.
///
/// Deletes a team and everything that belongs to it. Staff or a team admin/owner.
#[endpoint(
    operation_id = "users_teams_destroy",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this team.")),
    tags("Users - Teams"),
    responses((status_code = 204, description = "No response body"))
)]
pub async fn destroy(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result: Result<(), ApiError> = async {
        let (app, caller) = context(depot)?;
        let team = writable(&app.db, &caller, path_id(req)?).await?;
        let ctx = crate::web::access::audit_context(req, depot);
        let mut tx = app.db.begin().await?;
        audit_cascaded_memberships(&mut tx, &ctx, "team_id", team.id).await?;
        super::allocations::requests::audit_cascaded_team(&mut tx, &ctx, team.id).await?;
        super::research::audit_cascaded_team(&mut tx, &ctx, team.id).await?;
        // Attachment files go once the rows are gone for good (after the commit).
        let request_ids: Vec<i64> = on_tx!(&mut tx, |c| sqlx::query_scalar(
            "SELECT id FROM allocations_allocationrequest WHERE team_id = $1"
        )
        .bind(team.id)
        .fetch_all(c)
        .await)?;
        let files = super::allocations::attachments::stored_files(&mut tx, &request_ids).await?;
        audit::record(
            &mut tx,
            &ctx,
            CONTENT_TYPE,
            team.id,
            &repr(&team),
            Action::Delete,
            audit::changes(Some(&snapshot(&team)), None),
        )
        .await?;
        on_tx!(&mut tx, |c| sqlx::query(
            "DELETE FROM users_team WHERE id = $1"
        )
        .bind(team.id)
        .execute(c)
        .await
        .map(|_| ()))?;
        tx.commit().await?;
        super::allocations::attachments::remove_files(&app.db, &app.config, &files).await;
        Ok(())
    }
    .await;
    crate::web::api::no_content(res, result);
}

#[cfg(test)]
mod tests {
    use super::slugify;

    #[test]
    fn slugify_matches_django() {
        assert_eq!(slugify("My New Team"), "my-new-team");
        assert_eq!(slugify("Équipe Ünïcode"), "equipe-unicode");
        assert_eq!(slugify("Team-X"), "team-x");
        assert_eq!(slugify("!!!"), "");
        assert_eq!(slugify("  a -- b__ "), "a-b");
    }
}
