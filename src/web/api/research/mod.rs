//! `/research/` (domain.md §8): grants and publications. Both share one permission model:
//! staff, or a member (any role) of the body's team (view level) and of the record's team
//! (object level). Lists show non-staff the records of every team they belong to.

pub mod grants;
pub mod publications;
pub mod values;

use super::Caller;
use super::body::Body;
use crate::store::audit::{self, Action, AuditContext};
use crate::store::{Db, Tx};
use crate::web::ApiError;
use crate::{on_db, on_tx};
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
    if me.is_staff || crate::store::teams::is_member(db, me.id, team_id).await? {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}

/// Writes the `delete` entries of the grants and publications a team deletion cascades to.
/// Call it inside the team deletion's transaction, before the team row is deleted.
pub async fn audit_cascaded_team(
    tx: &mut Tx,
    ctx: &AuditContext,
    team_id: i64,
) -> Result<(), ApiError> {
    let sql = match tx.engine() {
        crate::config::Engine::Postgres => grants::SELECT_BY_TEAM_PG,
        crate::config::Engine::Sqlite => grants::SELECT_BY_TEAM_SQLITE,
    };
    let grants: Vec<grants::GrantRow> = crate::on_tx!(tx, |conn| {
        sqlx::query_as(sql).bind(team_id).fetch_all(conn).await?
    });
    for g in &grants {
        audit::record(
            tx,
            ctx,
            grants::CONTENT_TYPE,
            g.id,
            &grants::repr(g),
            Action::Delete,
            audit::changes(Some(&grants::snapshot(g)), None),
        )
        .await?;
    }
    let publications: Vec<publications::PublicationRow> = on_tx!(tx, |c| {
        sqlx::query_as(
        "SELECT id, title, abstract, published, submitted, journal, doi, volume, issue, team_id \
         FROM research_products_publication WHERE team_id = $1 ORDER BY id"
    )
    .bind(team_id)
    .fetch_all(c)
    .await
    })?;
    for p in &publications {
        audit::record(
            tx,
            ctx,
            publications::CONTENT_TYPE,
            p.id,
            &publications::repr(p),
            Action::Delete,
            audit::changes(Some(&publications::snapshot(p)), None),
        )
        .await?;
    }
    Ok(())
}
