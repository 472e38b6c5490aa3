//! `/research/` (domain.md §8): grants and publications. Both share one permission model:
//! staff, or a member (any role) of the body's team (view level) and of the record's team
//! (object level). Lists show non-staff the records of every team they belong to.

pub mod grants;
pub mod publications;
pub mod values;

use super::Caller;
use super::body::Body;
use crate::on_db;
use crate::store::Db;
use crate::web::ApiError;
use sea_query::{Alias, Expr, ExprTrait, Query, SelectStatement};

/// The routes of this family.
pub fn routes() -> crate::web::route::Routes {
    crate::web::route::Routes::new()
        .push(super::resource::routes::<grants::Grants>())
        .push(super::resource::routes::<publications::Publications>())
}

/// The ids of the teams `user_id` holds a membership in (any role, active or not), as a
/// subquery.
pub fn teams_of(user_id: i64) -> SelectStatement {
    let mut mine = Query::select();
    mine.column(Alias::new("team_id"))
        .from(Alias::new("users_membership"))
        .and_where(Expr::col(Alias::new("user_id")).eq(user_id));
    mine
}

/// List and stats scope of team-owned records: non-staff see the rows of their teams.
pub fn team_scope(q: &mut SelectStatement, caller: &Caller) {
    if !caller.is_staff() {
        let me = caller.id();
        q.and_where(Expr::col(Alias::new("team_id")).in_subquery(teams_of(me)));
    }
}

pub async fn team_exists(db: &Db, team_id: i64) -> Result<bool, ApiError> {
    let n: i64 = on_db!(db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM users_team WHERE id = $1"
    )
    .bind(team_id)
    .fetch_one(p)
    .await)?;
    Ok(n > 0)
}

/// View-level rule: a non-staff body naming an existing team needs membership in it (403).
/// An absent, unknown or malformed team passes; validation answers 400 for it.
pub async fn check_body_team(db: &Db, caller: &Caller, body: &Body) -> Result<(), ApiError> {
    let me = &caller.user;
    if me.is_staff {
        return Ok(());
    }
    let Some(raw) = body.get("team") else {
        return Ok(());
    };
    let Ok(team_id) = crate::domain::validation::pk_value(raw) else {
        return Ok(());
    };
    if team_exists(db, team_id).await?
        && !crate::store::teams::is_member(db, me.id, team_id).await?
    {
        return Err(ApiError::forbidden());
    }
    Ok(())
}

/// Object-level rule: staff, or a member of the record's current team (403 otherwise).
pub async fn check_record_team(db: &Db, caller: &Caller, team_id: i64) -> Result<(), ApiError> {
    let me = &caller.user;
    ApiError::forbidden_unless(
        me.is_staff || crate::store::teams::is_member(db, me.id, team_id).await?,
    )
}
