//! Log retention (operations.md §2.6): request logs, audit entries and task results older
//! than their retention are deleted (a record exactly at the cut-off too); a retention of 0
//! keeps everything. Used by the log-cleanup task and `keystone logs prune`.

use crate::config::Logging;
use crate::on_db;
use crate::store::{Db, DbError};
use chrono::{DateTime, Duration, Utc};

/// Rows deleted per table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub requests: u64,
    pub audit: u64,
    pub tasks: u64,
}

/// (table, time column) for each kind of record.
const TABLES: [(&str, &str); 3] = [
    ("logging_requestlog", "timestamp"),
    ("auditlog_logentry", "timestamp"),
    ("django_celery_results_taskresult", "date_done"),
];

async fn delete_older(
    db: &Db,
    table: &str,
    column: &str,
    cutoff: DateTime<Utc>,
) -> Result<u64, DbError> {
    let sql = format!("DELETE FROM {table} WHERE {column} <= $1");
    Ok(on_db!(db, |p| sqlx::query(sqlx::AssertSqlSafe(
        sql.clone()
    ))
    .bind(cutoff)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?)
}

/// Deletes expired records as of `now`.
pub async fn prune(db: &Db, settings: &Logging, now: DateTime<Utc>) -> Result<Pruned, DbError> {
    let retentions = [
        settings.request_retention,
        settings.audit_retention,
        settings.task_retention,
    ];
    let mut counts = [0u64; 3];
    for (i, ((table, column), retention)) in TABLES.iter().zip(retentions).enumerate() {
        if retention > 0 {
            counts[i] = delete_older(db, table, column, now - Duration::seconds(retention)).await?;
        }
    }
    Ok(Pruned {
        requests: counts[0],
        audit: counts[1],
        tasks: counts[2],
    })
}
