//! The audit trail (operations.md §3.4): one entry per create, update and delete of an
//! audited record, written in the same transaction as the change, and read back in bulk as
//! the `_history` of a page of records.

use crate::store::{Db, DbError, Tx};
use crate::{on_db, on_tx};
use chrono::{DateTime, NaiveDate, Utc};
use sea_query::ExprTrait;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create = 0,
    Update = 1,
    Delete = 2,
}

pub fn action_label(code: i32) -> &'static str {
    match code {
        0 => "create",
        1 => "update",
        2 => "delete",
        _ => "access",
    }
}

/// Who made a change and from where (null outside requests).
#[derive(Debug, Clone, Default)]
pub struct AuditContext {
    pub actor: Option<i64>,
    pub actor_email: Option<String>,
    pub cid: Option<String>,
    pub remote_addr: Option<String>,
    pub remote_port: Option<i32>,
}

/// A record's tracked fields as audit strings, in field order (`None` = null).
pub type Snapshot = Vec<(&'static str, Option<String>)>;

pub fn text(v: &Option<String>) -> Option<String> {
    v.clone()
}

pub fn boolean(b: bool) -> Option<String> {
    Some(if b { "True" } else { "False" }.to_string())
}

pub fn int(n: i64) -> Option<String> {
    Some(n.to_string())
}

pub fn opt_int(n: Option<i64>) -> Option<String> {
    n.map(|n| n.to_string())
}

/// Naive UTC `YYYY-MM-DD HH:MM:SS[.ffffff]`, as Django renders datetimes in changes.
pub fn datetime(dt: &DateTime<Utc>) -> Option<String> {
    let base = dt.format("%Y-%m-%d %H:%M:%S").to_string();
    let micros = dt.timestamp_subsec_micros();
    Some(if micros == 0 {
        base
    } else {
        format!("{base}.{micros:06}")
    })
}

pub fn date(d: &Option<NaiveDate>) -> Option<String> {
    d.map(|d| d.format("%Y-%m-%d").to_string())
}

/// Field-level changes: create (old `None`, null fields omitted), update (changed fields
/// only), delete (new `None`, null old values omitted).
pub fn changes(before: Option<&Snapshot>, after: Option<&Snapshot>) -> Map<String, Value> {
    let none = || "None".to_string();
    let mut out = Map::new();
    match (before, after) {
        (None, Some(after)) => {
            for (field, v) in after {
                if let Some(v) = v {
                    out.insert(field.to_string(), serde_json::json!([none(), v]));
                }
            }
        }
        (Some(before), None) => {
            for (field, v) in before {
                if let Some(v) = v {
                    out.insert(field.to_string(), serde_json::json!([v, none()]));
                }
            }
        }
        (Some(before), Some(after)) => {
            for ((field, old), (_, new)) in before.iter().zip(after.iter()) {
                if old != new {
                    out.insert(
                        field.to_string(),
                        serde_json::json!([
                            old.clone().unwrap_or_else(none),
                            new.clone().unwrap_or_else(none)
                        ]),
                    );
                }
            }
        }
        (None, None) => {}
    }
    out
}

/// `password` values are masked: the first half replaced by `*`.
pub fn mask_password(hash: &str) -> String {
    let n = hash.chars().count() / 2;
    hash.chars()
        .enumerate()
        .map(|(i, c)| if i < n { '*' } else { c })
        .collect()
}

/// "Truncated" object reprs: longer than 100 characters → first 99 + `…`.
pub fn truncate(s: &str) -> String {
    if s.chars().count() > 100 {
        let mut t: String = s.chars().take(99).collect();
        t.push('…');
        t
    } else {
        s.to_string()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_update_delete_changes() {
        let a: Snapshot = vec![("name", Some("x".into())), ("note", None)];
        let b: Snapshot = vec![("name", Some("y".into())), ("note", None)];
        assert_eq!(
            Value::Object(changes(None, Some(&a))),
            serde_json::json!({"name": ["None", "x"]})
        );
        assert_eq!(
            Value::Object(changes(Some(&a), Some(&b))),
            serde_json::json!({"name": ["x", "y"]})
        );
        assert!(changes(Some(&a), Some(&a)).is_empty());
        assert_eq!(
            Value::Object(changes(Some(&b), None)),
            serde_json::json!({"name": ["y", "None"]})
        );
    }

    #[test]
    fn formats_match_django() {
        assert_eq!(mask_password("abcdef"), "***def");
        assert_eq!(boolean(true).as_deref(), Some("True"));
        let dt = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.000120Z")
            .expect("dt")
            .with_timezone(&Utc);
        assert_eq!(datetime(&dt).as_deref(), Some("2026-01-02 03:04:05.000120"));
        assert_eq!(truncate(&"x".repeat(101)).chars().count(), 100);
    }
}
