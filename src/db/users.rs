//! User rows needed outside the API: the first administrator (quickstart, `user create`).

use super::{Db, DbError};
use crate::on_db;
use chrono::Utc;

/// Fields of a new local account.
#[derive(Debug, Clone, Default)]
pub struct NewUser {
    pub username: String,
    pub email: Option<String>,
    pub password_hash: String,
    pub is_staff: bool,
    pub is_superuser: bool,
}

pub async fn count(db: &Db) -> Result<i64, DbError> {
    Ok(on_db!(db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM users_user"
    )
    .fetch_one(p)
    .await)?)
}

pub async fn username_exists(db: &Db, username: &str) -> Result<bool, DbError> {
    let n: i64 = on_db!(db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM users_user WHERE username = $1"
    )
    .bind(username)
    .fetch_one(p)
    .await)?;
    Ok(n > 0)
}

/// Inserts an active local (non-LDAP) account and returns its id.
pub async fn create(db: &Db, user: &NewUser) -> Result<i64, DbError> {
    let id: i64 = on_db!(db, |p| sqlx::query_scalar(
        "INSERT INTO users_user (username, password, email, is_active, is_staff, is_superuser, \
         is_ldap_user, date_joined) VALUES ($1, $2, $3, TRUE, $4, $5, FALSE, $6) RETURNING id"
    )
    .bind(&user.username)
    .bind(&user.password_hash)
    .bind(&user.email)
    .bind(user.is_staff || user.is_superuser)
    .bind(user.is_superuser)
    .bind(Utc::now())
    .fetch_one(p)
    .await)?;
    Ok(id)
}
