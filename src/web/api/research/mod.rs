//! `/research/` (domain.md §8): grants and publications. Both share one permission model:
//! staff, or a member (any role) of the body's team (view level) and of the record's team
//! (object level). Lists show non-staff the records of every team they belong to.

pub mod grants;
pub mod publications;
pub mod values;

use super::Caller;
use super::body::Body;
use crate::store::Db;
use crate::web::ApiError;
use sea_query::{Alias, Expr, ExprTrait, SelectStatement};

/// The routes of this family.
pub fn routes() -> crate::web::route::Routes {
    crate::web::route::Routes::new()
        .push(super::resource::routes::<grants::Grants>())
        .push(super::resource::routes::<publications::Publications>())
}

/// List and stats scope of team-owned records: non-staff see the rows of their teams.
pub fn team_scope(q: &mut SelectStatement, caller: &Caller) {
    if !caller.is_staff() {
        let me = caller.id();
        q.and_where(Expr::col(Alias::new("team_id")).in_subquery(crate::store::teams::of_user(me)));
    }
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
    if crate::store::teams::active(db, team_id).await?.is_some()
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
