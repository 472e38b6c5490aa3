//! Team membership lookups the access rules of several resources share.

use crate::domain::policy::Role;
use crate::on_db;
use crate::store::{Db, DbError};

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

/// Admin or owner of the team.
pub async fn is_privileged(db: &Db, user_id: i64, team_id: i64) -> Result<bool, DbError> {
    Ok(role_in(db, user_id, team_id)
        .await?
        .as_deref()
        .and_then(Role::from_code)
        .is_some_and(Role::is_privileged))
}
