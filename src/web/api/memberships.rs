//! `/users/memberships/` (domain.md §6.3): who belongs to which team in which role. Team
//! admins and owners manage their team's memberships; anyone may leave a team.

use super::Caller;
use super::body::Body;
use super::list::{Column, Kind, ListSpec, search_via};
use super::resource::{self, Docs, Field, Policy, Resource, Val};
use super::summaries::{self, MembershipRow};
use super::summaries::{AuditLogSummaryDoc, TeamSummaryDoc, UserSummaryDoc};
use crate::domain::validation::Validator;
use crate::store::audit::Action;
use crate::store::{Db, Tx};
use crate::web::ApiError;
use crate::{on_db, on_tx};
use chrono_tz::Tz;
use salvo::oapi::ToSchema;
use sea_query::Expr;
use serde::Serialize;

pub const CONTENT_TYPE: &str = "users | Membership";
const MODEL: &str = "Membership";
pub const ROLES: &[&str] = &["OW", "AD", "MB"];

const FIELDS: [Field<MembershipRow>; 4] = [
    Field::id(|m| Val::Int(m.id)),
    Field::new("role", Kind::Choice(ROLES), |m| Val::Text(m.role.clone())),
    Field::new("user", Kind::Fk("users_user"), |m| Val::Int(m.user_id)),
    Field::new("team", Kind::Fk("users_team"), |m| Val::Int(m.team_id)),
];
const COLUMNS: &[Column] = &resource::columns(&FIELDS);

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

// A membership as the API renders and documents it (a doc comment here would become the
// schema's description).
#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "Membership"))]
pub struct Membership {
    pub id: i64,
    #[salvo(schema(value_type = UserSummaryDoc))]
    pub _user: Option<crate::web::api::summaries::Embedded>,
    #[salvo(schema(value_type = TeamSummaryDoc))]
    pub _team: Option<crate::web::api::summaries::Embedded>,
    #[salvo(schema(value_type = Vec<AuditLogSummaryDoc>))]
    pub _history: Vec<crate::web::api::summaries::AuditLogSummaryDoc>,
    pub role: String,
    pub user: i64,
    pub team: i64,
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

/// The view-level rule: a non-staff body naming an existing team needs privileged
/// membership in that team (403); an absent or unknown team passes to validation.
async fn check_body_team(db: &Db, caller: &Caller, body: &Body) -> Result<(), ApiError> {
    let me = &caller.user;
    if me.is_staff {
        return Ok(());
    }
    let Some(raw) = body.get("team") else {
        return Ok(());
    };
    let Ok(team_id) = crate::domain::validation::pk_value(raw) else {
        return Err(ApiError::field(
            "team",
            "Incorrect type. Expected pk value, received str.",
        ));
    };
    if crate::store::teams::active(db, team_id).await?.is_some()
        && !crate::store::teams::is_privileged(db, me.id, team_id).await?
    {
        return Err(ApiError::forbidden());
    }
    Ok(())
}

/// An item within the caller's visibility (404 otherwise).
async fn check_visible(db: &Db, caller: &Caller, m: &MembershipRow) -> Result<(), ApiError> {
    if !caller.is_staff() {
        let team_ok = crate::store::teams::active(db, m.team_id)
            .await?
            .unwrap_or(false);
        let user_ok = crate::store::users::active(db, m.user_id)
            .await?
            .unwrap_or(false);
        if !crate::domain::policy::membership_visible(team_ok, user_ok) {
            return Err(ApiError::no_match(MODEL));
        }
    }
    Ok(())
}

/// Object-level rule of the writes, in upstream's order: the member may delete their own
/// membership; otherwise staff, or an admin/owner of the (active) team.
async fn check_write(
    db: &Db,
    caller: &Caller,
    action: Action,
    m: &MembershipRow,
) -> Result<(), ApiError> {
    let me = &caller.user;
    if action == Action::Delete && m.user_id == me.id {
        return Ok(());
    }
    if me.is_staff {
        return Ok(());
    }
    if !crate::store::teams::active(db, m.team_id)
        .await?
        .unwrap_or(false)
    {
        return Err(ApiError::forbidden());
    }
    ApiError::forbidden_unless(crate::store::teams::is_privileged(db, me.id, m.team_id).await?)
}

async fn repr(tx: &mut Tx, m: &MembershipRow) -> Result<String, ApiError> {
    let names: Option<(String, String)> = on_tx!(tx, |c| {
        sqlx::query_as(
        "SELECT u.username, t.name FROM users_user u, users_team t WHERE u.id = $1 AND t.id = $2"
    )
    .bind(m.user_id)
    .bind(m.team_id)
    .fetch_optional(c)
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
    body: &Body,
    partial: bool,
    current: Option<&MembershipRow>,
) -> Result<MembershipRow, ApiError> {
    body.require_object()?;
    let mut v = Validator::new(&body.fields, partial);
    let role = v.choice("role", ROLES, true);
    let user = v.pk("user", true);
    let team = v.pk("team", true);
    if let Some(u) = user
        && crate::store::users::active(db, u).await?.is_none()
    {
        v.error(
            "user",
            format!("Invalid pk \"{u}\" - object does not exist."),
        );
    }
    if let Some(t) = team {
        match crate::store::teams::active(db, t).await? {
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

/// The membership resource.
pub struct Memberships;

crate::document_resource!(Memberships);

impl Resource for Memberships {
    type Row = MembershipRow;
    type Repr = Membership;
    type Extra = ();

    const PATH: &'static str = "users/memberships/";
    const TABLE: &'static str = "users_membership";
    const CONTENT_TYPE: &'static str = CONTENT_TYPE;
    const MODEL: &'static str = MODEL;
    const FIELDS: &'static [Field<MembershipRow>] = &FIELDS;
    const SPEC: ListSpec = SPEC;
    /// Staff, or admins/owners of the body's team (view level) and of the record's team;
    /// the member may leave.
    const POLICY: Policy = Policy::BODY_FIRST;
    const DOCS: Docs = Docs {
        tag: "Users - Memberships",
        id: "A unique integer value identifying this membership.",
        list_name: "Membership List",
        item_name: "Membership Instance",
        list: ("List memberships.", "Returns a list of team memberships."),
        retrieve: (
            "Retrieve a membership.",
            "Returns a single team membership by ID.",
        ),
        create: (
            "Create a membership.",
            "Adds a user to a team. Staff or an admin/owner of that team.",
        ),
        update: (
            "Update a membership.",
            "Replaces a membership. Staff or an admin/owner of the team.",
        ),
        partial_update: (
            "Partially update a membership.",
            "Updates fields of a membership. Staff or an admin/owner of the team.",
        ),
        destroy: (
            "Delete a membership.",
            "Removes a user from a team. Staff, an admin/owner of the team, or the member \
             themself.",
        ),
    };

    crate::record_id!();

    async fn repr(tx: &mut Tx, row: &MembershipRow) -> Result<String, ApiError> {
        repr(tx, row).await
    }

    async fn validate(
        db: &Db,
        caller: &Caller,
        body: &Body,
        partial: bool,
        current: Option<&MembershipRow>,
    ) -> Result<(MembershipRow, ()), ApiError> {
        Ok((validate(db, caller, body, partial, current).await?, ()))
    }

    async fn represent(
        db: &Db,
        tz: Tz,
        rows: &[MembershipRow],
    ) -> Result<Vec<Membership>, ApiError> {
        let ids: Vec<i64> = rows.iter().map(|m| m.id).collect();
        let user_ids: Vec<i64> = rows.iter().map(|m| m.user_id).collect();
        let team_ids: Vec<i64> = rows.iter().map(|m| m.team_id).collect();
        let users = summaries::users_by_id(db, &user_ids).await?;
        let teams = summaries::teams_by_id(db, &team_ids).await?;
        let mut history = summaries::history(db, tz, CONTENT_TYPE, &ids).await?;
        Ok(rows
            .iter()
            .map(|m| Membership {
                id: m.id,
                _user: users.get(&m.user_id).cloned(),
                _team: teams.get(&m.team_id).cloned(),
                _history: history.remove(&m.id).unwrap_or_default(),
                role: m.role.clone(),
                user: m.user_id,
                team: m.team_id,
            })
            .collect())
    }

    fn scope(q: &mut sea_query::SelectStatement, caller: &Caller) {
        scope(q, caller)
    }

    async fn check_record(db: &Db, caller: &Caller, row: &MembershipRow) -> Result<(), ApiError> {
        check_visible(db, caller, row).await
    }

    async fn check_write(
        db: &Db,
        caller: &Caller,
        row: &MembershipRow,
        action: Action,
    ) -> Result<(), ApiError> {
        check_write(db, caller, action, row).await
    }

    async fn check_body(
        db: &Db,
        caller: &Caller,
        body: &Body,
        _action: Action,
    ) -> Result<(), ApiError> {
        check_body_team(db, caller, body).await
    }
}
