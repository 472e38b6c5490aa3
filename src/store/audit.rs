//! The audit trail (operations.md §3.4): one entry per create, update and delete of an
//! audited record, written in the same transaction as the change, and read back in bulk as
//! the `_history` of a page of records.

use crate::store::{Db, DbError, Tx};
use crate::{on_db, on_tx};
use chrono::{DateTime, Utc};
use sea_query::ExprTrait;
use serde_json::{Map, Value};

pub use crate::domain::audit::*;

/// Writes one entry inside the change's transaction. An update with no changes writes nothing.
pub async fn record(
    tx: &mut Tx,
    ctx: &AuditContext,
    content_type: &str,
    object_id: i64,
    repr: &str,
    action: Action,
    changes: Map<String, Value>,
) -> Result<(), DbError> {
    if action == Action::Update && changes.is_empty() {
        return Ok(());
    }
    let changes = Value::Object(changes).to_string();
    on_tx!(tx, |c| sqlx::query(
        "INSERT INTO auditlog_logentry (content_type, object_pk, object_id, object_repr, action, \
         changes, changes_text, actor_id, actor_email, remote_addr, remote_port, timestamp, cid) \
         VALUES ($1, $2, $3, $4, $5, $6, '', $7, $8, $9, $10, $11, $12)"
    )
    .bind(content_type)
    .bind(object_id.to_string())
    .bind(object_id)
    .bind(repr)
    .bind(action as i32)
    .bind(&changes)
    .bind(ctx.actor)
    .bind(&ctx.actor_email)
    .bind(&ctx.remote_addr)
    .bind(ctx.remote_port)
    .bind(Utc::now())
    .bind(&ctx.cid)
    .execute(c)
    .await
    .map(|_| ()))?;
    Ok(())
}

/// Deletes one row of an audited table and records its `delete` entry, in one transaction.
pub async fn delete_audited(
    db: &Db,
    ctx: &AuditContext,
    content_type: &str,
    table: &str,
    id: i64,
    repr: &str,
    before: &Snapshot,
) -> Result<(), DbError> {
    let mut tx = db.begin().await?;
    record(
        &mut tx,
        ctx,
        content_type,
        id,
        repr,
        Action::Delete,
        changes(Some(before), None),
    )
    .await?;
    let sql = format!("DELETE FROM {table} WHERE id = $1");
    on_tx!(&mut tx, |c| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
        .bind(id)
        .execute(c)
        .await
        .map(|_| ()))?;
    tx.commit().await
}

/// One stored audit entry.
#[derive(sqlx::FromRow)]
pub struct EntryRow {
    pub id: i64,
    pub object_id: Option<i64>,
    pub timestamp: DateTime<Utc>,
    pub action: i32,
    pub actor_id: Option<i64>,
    pub changes: Option<String>,
}

/// The audit entries of `content_type` for `ids`, newest first (one query).
pub async fn entries(db: &Db, content_type: &str, ids: &[i64]) -> Result<Vec<EntryRow>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = sea_query::Query::select();
    q.columns(
        [
            "id",
            "object_id",
            "timestamp",
            "action",
            "actor_id",
            "changes",
        ]
        .map(sea_query::Alias::new),
    )
    .from(sea_query::Alias::new("auditlog_logentry"))
    .and_where(sea_query::Expr::col(sea_query::Alias::new("content_type")).eq(content_type))
    .and_where(sea_query::Expr::col(sea_query::Alias::new("object_id")).is_in(ids.to_vec()))
    .order_by(sea_query::Alias::new("timestamp"), sea_query::Order::Desc)
    .order_by(sea_query::Alias::new("id"), sea_query::Order::Desc);
    crate::store::fetch_all(db, &q).await
}

/// Entries recorded for one record.
pub async fn count(db: &Db, content_type: &str, object_id: i64) -> Result<i64, DbError> {
    Ok(on_db!(db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM auditlog_logentry WHERE content_type = $1 AND object_id = $2"
    )
    .bind(content_type)
    .bind(object_id)
    .fetch_one(p)
    .await)?)
}
