//! Team membership lookups the access rules of several resources share.

use crate::domain::policy::Role;
use crate::on_db;
use crate::store::{Db, DbError};

/// `SELECT team_id FROM users_membership WHERE user_id = <id>`: every team the user holds a
/// membership in (any role, active or not), as a subquery for list scopes.
pub fn of_user(user_id: i64) -> sea_query::SelectStatement {
    use sea_query::{Alias, Expr, ExprTrait, Query};
    let mut q = Query::select();
    q.column(Alias::new("team_id"))
        .from(Alias::new("users_membership"))
        .and_where(Expr::col(Alias::new("user_id")).eq(user_id));
    q
}

/// Whether a team is active; `None` when it does not exist.
pub async fn active(db: &Db, team_id: i64) -> Result<Option<bool>, DbError> {
    crate::store::is_active(db, "users_team", team_id).await
}

/// The user's role code in a team (`MB`, `AD`, `OW`), if a member.
pub async fn role_in(db: &Db, user_id: i64, team_id: i64) -> Result<Option<String>, DbError> {
    Ok(on_db!(db, |p| sqlx::query_scalar::<_, String>(
        "SELECT role FROM users_membership WHERE user_id = $1 AND team_id = $2"
    )
    .bind(user_id)
    .bind(team_id)
    .fetch_optional(p)
    .await)?)
}

/// Whether the user holds any membership in the team.
pub async fn is_member(db: &Db, user_id: i64, team_id: i64) -> Result<bool, DbError> {
    Ok(role_in(db, user_id, team_id).await?.is_some())
}

/// Admin or owner of the team.
pub async fn is_privileged(db: &Db, user_id: i64, team_id: i64) -> Result<bool, DbError> {
    Ok(role_in(db, user_id, team_id)
        .await?
        .as_deref()
        .and_then(Role::from_code)
        .is_some_and(Role::is_privileged))
}

/// Whether the user belongs to the team of allocation request `request_id` (false when the
/// request does not exist).
pub async fn in_request_team(db: &Db, user_id: i64, request_id: i64) -> Result<bool, DbError> {
    let n: i64 = on_db!(db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM users_membership m \
         JOIN allocations_allocationrequest r ON r.team_id = m.team_id \
         WHERE r.id = $1 AND m.user_id = $2"
    )
    .bind(request_id)
    .bind(user_id)
    .fetch_one(p)
    .await)?;
    Ok(n > 0)
}
