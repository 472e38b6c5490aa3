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

/// A `users_user` row.
#[derive(Debug, Clone, sqlx::FromRow, PartialEq)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub password: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub department: Option<String>,
    pub role: Option<String>,
    pub is_active: bool,
    pub is_staff: bool,
    pub is_superuser: bool,
    pub is_ldap_user: bool,
    pub date_joined: chrono::DateTime<Utc>,
    pub last_login: Option<chrono::DateTime<Utc>>,
}

impl User {
    /// A new active account as a create starts it (upstream's model defaults): no password,
    /// names or flags yet, joined now; not stored (id 0).
    pub fn new(username: &str) -> User {
        User {
            id: 0,
            username: username.to_string(),
            password: String::new(),
            first_name: None,
            last_name: None,
            email: None,
            department: None,
            role: None,
            is_active: true,
            is_staff: false,
            is_superuser: false,
            is_ldap_user: false,
            date_joined: Utc::now(),
            last_login: None,
        }
    }
}

pub const USER_COLUMNS: &str = "id, username, password, first_name, last_name, email, department, role, \
     is_active, is_staff, is_superuser, is_ldap_user, date_joined, last_login";

/// An account's username inside a write's transaction ("" when there is no such account),
/// for the audit texts that name it.
pub async fn username_in(tx: &mut super::Tx, id: i64) -> Result<String, DbError> {
    let name: Option<String> = crate::on_tx!(tx, |c| sqlx::query_scalar(
        "SELECT username FROM users_user WHERE id = $1"
    )
    .bind(id)
    .fetch_optional(c)
    .await)?;
    Ok(name.unwrap_or_default())
}

/// Whether an account is active; `None` when it does not exist.
pub async fn active(db: &Db, id: i64) -> Result<Option<bool>, DbError> {
    super::is_active(db, "users_user", id).await
}

pub async fn by_id(db: &Db, id: i64) -> Result<Option<User>, DbError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users_user WHERE id = $1");
    Ok(on_db!(db, |p| sqlx::query_as::<_, User>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .bind(id)
    .fetch_optional(p)
    .await)?)
}

pub async fn by_username(db: &Db, username: &str) -> Result<Option<User>, DbError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users_user WHERE username = $1");
    Ok(on_db!(db, |p| sqlx::query_as::<_, User>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .bind(username)
    .fetch_optional(p)
    .await)?)
}

/// The user holding an API key (by its hash), if the key exists and has not expired.
pub async fn by_api_key_hash(db: &Db, hash: &str) -> Result<Option<User>, DbError> {
    let sql = format!(
        "SELECT {} FROM users_user u JOIN keystone_api_token t ON t.user_id = u.id \
         WHERE t.key_hash = $1 AND (t.expires IS NULL OR t.expires > $2)",
        USER_COLUMNS
            .split(", ")
            .map(|c| format!("u.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(on_db!(db, |p| sqlx::query_as::<_, User>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .bind(hash)
    .bind(Utc::now())
    .fetch_optional(p)
    .await)?)
}

pub async fn set_last_login(db: &Db, id: i64) -> Result<(), DbError> {
    on_db!(db, |p| sqlx::query(
        "UPDATE users_user SET last_login = $1 WHERE id = $2"
    )
    .bind(Utc::now())
    .bind(id)
    .execute(p)
    .await
    .map(|_| ()))?;
    Ok(())
}

pub async fn set_password_hash(db: &Db, id: i64, hash: &str) -> Result<(), DbError> {
    on_db!(db, |p| sqlx::query(
        "UPDATE users_user SET password = $1 WHERE id = $2"
    )
    .bind(hash)
    .bind(id)
    .execute(p)
    .await
    .map(|_| ()))?;
    Ok(())
}

/// Session revocation (logout): a table shared by every web process.
pub async fn revoke_session(
    db: &Db,
    jti: &str,
    expires_at: chrono::DateTime<Utc>,
) -> Result<(), DbError> {
    on_db!(db, |p| {
        sqlx::query(
        "INSERT INTO keystone_revoked_session (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING"
    )
    .bind(jti)
    .bind(expires_at)
    .execute(p)
    .await
    .map(|_| ())
    })?;
    // Expired entries can no longer match a valid token: drop them while here.
    on_db!(db, |p| sqlx::query(
        "DELETE FROM keystone_revoked_session WHERE expires_at < $1"
    )
    .bind(Utc::now())
    .execute(p)
    .await
    .map(|_| ()))?;
    Ok(())
}

pub async fn session_revoked(db: &Db, jti: &str) -> Result<bool, DbError> {
    let n: i64 = on_db!(db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM keystone_revoked_session WHERE jti = $1"
    )
    .bind(jti)
    .fetch_one(p)
    .await)?;
    Ok(n > 0)
}
