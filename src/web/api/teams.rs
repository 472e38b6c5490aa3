//! `/users/teams/` (domain.md §6.2): research teams. Anyone authenticated may create one;
//! staff and the team's admins/owners may change its `is_active` or delete it.

use super::Caller;
use super::body::Body;
use super::list::{Column, Kind, ListSpec, search};
use super::resource::{self, Docs, Field, Policy, Resource, Val, Write};
use super::summaries::{self, TeamRow};
use super::summaries::{AuditLogSummaryDoc, UserSummaryDoc};
use crate::domain::policy;
use crate::domain::validation::{Text, Validator};
use crate::on_db;
use crate::store::audit::{Action, AuditContext};
use crate::store::{Db, Tx};
use crate::web::ApiError;
use chrono_tz::Tz;
use salvo::oapi::ToSchema;
use sea_query::{Alias, Expr, ExprTrait, Query};
use serde::Serialize;

pub const CONTENT_TYPE: &str = "users | Team";
const MODEL: &str = "Team";

/// `name` (and its `slug`) is set on creation only.
const FIELDS: [Field<TeamRow>; 4] = [
    Field::id(|t| Val::Int(t.id)),
    Field::new("name", Kind::Text, |t: &TeamRow| Val::Text(t.name.clone())).write(Write::Create),
    Field::new("slug", Kind::Text, |t: &TeamRow| Val::Text(t.slug.clone())).write(Write::Create),
    Field::new("is_active", Kind::Bool, |t| Val::Bool(t.is_active)),
];
const COLUMNS: &[Column] = &resource::columns(&FIELDS);

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
    #[salvo(schema(value_type = UserSummaryDoc))]
    pub _user: Option<crate::web::api::summaries::Embedded>,
}

// A team as the API renders and documents it (a doc comment here would become the schema's
// description).
#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "Team"))]
pub struct Team {
    pub id: i64,
    pub slug: String,
    pub is_active: bool,
    pub _membership: Vec<UserRole>,
    #[salvo(schema(value_type = Vec<AuditLogSummaryDoc>))]
    pub _history: Vec<crate::web::api::summaries::AuditLogSummaryDoc>,
    pub name: String,
    pub users: Vec<i64>,
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

pub fn repr(t: &TeamRow) -> String {
    format!("Team #{} - {}", t.id, t.name)
}

/// A new team: a unique name (and slug), active unless staff say otherwise.
async fn validate_new(db: &Db, caller: &Caller, body: &Body) -> Result<TeamRow, ApiError> {
    body.require_object()?;
    let mut v = Validator::new(&body.fields, false);
    let name = v.text("name", Text::required(255)).flatten();
    let is_active = v.boolean("is_active").unwrap_or(true);
    if let Some(name) = &name {
        let exact: i64 = on_db!(db, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM users_team WHERE name = $1"
        )
        .bind(name)
        .fetch_one(p)
        .await)?;
        if exact > 0 {
            v.error("name", "team with this name already exists.");
        } else {
            let slug_taken: i64 = on_db!(db, |p| sqlx::query_scalar(
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
    Ok(TeamRow {
        id: 0,
        slug: slugify(&name),
        name,
        is_active,
    })
}

/// A change of a team: `name` is immutable after creation (changes are ignored), and a PUT
/// without `is_active` sets it to true (its default).
fn validate_change(body: &Body, partial: bool, team: &TeamRow) -> Result<TeamRow, ApiError> {
    body.require_object()?;
    let mut v = Validator::new(&body.fields, partial);
    let is_active = v.boolean("is_active");
    v.finish()?;
    let mut after = team.clone();
    after.is_active = match is_active {
        Some(b) => b,
        None if partial => team.is_active,
        None => true,
    };
    Ok(after)
}

/// The team resource.
pub struct Teams;

crate::document_resource!(Teams);

impl Resource for Teams {
    type Row = TeamRow;
    type Repr = Team;
    type Extra = ();

    const PATH: &'static str = "users/teams/";
    const TABLE: &'static str = "users_team";
    const CONTENT_TYPE: &'static str = CONTENT_TYPE;
    const MODEL: &'static str = MODEL;
    const FIELDS: &'static [Field<TeamRow>] = &FIELDS;
    const SPEC: ListSpec = SPEC;
    /// Anyone creates; staff or the team's admins/owners change and delete (`check_write`).
    const POLICY: Policy = Policy::OPEN;
    const DOCS: Docs = Docs {
        tag: "Users - Teams",
        id: "A unique integer value identifying this team.",
        list_name: "Team List",
        item_name: "Team Instance",
        list: (
            "List teams.",
            "Returns a list of teams. Non-staff users are only returned active teams they are \
             a member of.",
        ),
        retrieve: ("Retrieve a team.", "Returns a single team by ID."),
        create: (
            "Create a team.",
            "Creates a new team. The creator is not made a member.",
        ),
        update: (
            "Update a team.",
            "Replaces a team's writable fields (`is_active`). Staff or a team admin/owner.",
        ),
        partial_update: (
            "Partially update a team.",
            "Updates a team's `is_active`. Staff or a team admin/owner.",
        ),
        destroy: (
            "Delete a team.",
            "Deletes a team and everything that belongs to it. Staff or a team admin/owner.",
        ),
    };

    crate::record_id!();

    async fn repr(_tx: &mut Tx, row: &TeamRow) -> Result<String, ApiError> {
        Ok(repr(row))
    }

    async fn validate(
        db: &Db,
        caller: &Caller,
        body: &Body,
        partial: bool,
        current: Option<&TeamRow>,
    ) -> Result<(TeamRow, ()), ApiError> {
        let row = match current {
            Some(team) => validate_change(body, partial, team)?,
            None => validate_new(db, caller, body).await?,
        };
        Ok((row, ()))
    }

    async fn represent(db: &Db, tz: Tz, teams: &[TeamRow]) -> Result<Vec<Team>, ApiError> {
        let ids: Vec<i64> = teams.iter().map(|t| t.id).collect();
        let memberships = summaries::memberships_where(db, "team_id", &ids).await?;
        let user_ids: Vec<i64> = memberships.iter().map(|m| m.user_id).collect();
        let users = summaries::users_by_id(db, &user_ids).await?;
        let mut history = summaries::history(db, tz, CONTENT_TYPE, &ids).await?;
        Ok(teams
            .iter()
            .map(|t| {
                let mine: Vec<&summaries::MembershipRow> =
                    memberships.iter().filter(|m| m.team_id == t.id).collect();
                let membership: Vec<UserRole> = mine
                    .iter()
                    .map(|m| UserRole {
                        id: m.id,
                        user: m.user_id,
                        role: m.role.clone(),
                        _user: users.get(&m.user_id).cloned(),
                    })
                    .collect();
                let mut member_ids: Vec<i64> = mine.iter().map(|m| m.user_id).collect();
                member_ids.sort_unstable();
                Team {
                    id: t.id,
                    slug: t.slug.clone(),
                    is_active: t.is_active,
                    _membership: membership,
                    _history: history.remove(&t.id).unwrap_or_default(),
                    name: t.name.clone(),
                    users: member_ids,
                }
            })
            .collect())
    }

    fn scope(q: &mut sea_query::SelectStatement, caller: &Caller) {
        list_scope(q, caller)
    }

    /// Inactive teams are 404 for non-staff.
    async fn check_record(_db: &Db, caller: &Caller, row: &TeamRow) -> Result<(), ApiError> {
        if !policy::team_visible(caller.is_staff(), row.is_active) {
            return Err(ApiError::no_match(MODEL));
        }
        Ok(())
    }

    /// Staff or an admin/owner of the team, else 403.
    async fn check_write(
        db: &Db,
        caller: &Caller,
        row: &TeamRow,
        _action: Action,
    ) -> Result<(), ApiError> {
        ApiError::forbidden_unless(
            caller.is_staff()
                || crate::store::teams::is_privileged(db, caller.id(), row.id).await?,
        )
    }

    /// The team's memberships, allocation requests (with what hangs on them) and research
    /// records go with it; the requests' attachment files once the delete is committed.
    async fn cascade(
        tx: &mut Tx,
        ctx: &AuditContext,
        team: &TeamRow,
    ) -> Result<Vec<String>, ApiError> {
        super::cascade::team(tx, ctx, team.id).await
    }
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
