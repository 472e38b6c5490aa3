//! Task-result rows (`django_celery_results_taskresult`, operations.md §2.4): written by the
//! producer (`PENDING`), the worker and inline runs; read by `keystone task run --wait`.

use crate::on_db;
use crate::store::{Db, DbError};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// Terminal and intermediate states of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Started,
    Retry,
    Success,
    Failure,
}

impl Status {
    /// The stored text (`SUCCESS`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Started => "STARTED",
            Status::Retry => "RETRY",
            Status::Success => "SUCCESS",
            Status::Failure => "FAILURE",
        }
    }
}

/// What is known about one run when its row is written.
#[derive(Debug, Clone)]
pub struct Run<'a> {
    pub task_id: &'a str,
    pub task_name: &'a str,
    pub periodic_task_name: Option<&'a str>,
    pub args: &'a [Value],
    /// Worker identity; empty (stored as NULL) while the run is only queued.
    pub worker: &'a str,
}

/// A failed run's stored `result` JSON text and `traceback`.
#[derive(Debug, Clone)]
pub struct Failure {
    pub result: String,
    pub traceback: String,
}

/// Inserts or updates the run's row (keyed by `task_id`); retries of a run update its row.
/// The errors the run logged and went on past are listed in `meta.errors` (the key is left
/// out when there are none).
pub async fn write(
    db: &Db,
    run: &Run<'_>,
    status: Status,
    started: Option<DateTime<Utc>>,
    failure: Option<Failure>,
    children: &[String],
    errors: &[String],
) -> Result<(), DbError> {
    let now = Utc::now();
    let (result, traceback) = match failure {
        Some(f) => (f.result, Some(f.traceback)),
        None => ("null".to_string(), None),
    };
    let meta = if errors.is_empty() {
        serde_json::json!({ "children": children })
    } else {
        serde_json::json!({ "children": children, "errors": errors })
    }
    .to_string();
    let args = Value::Array(run.args.to_vec()).to_string();
    on_db!(db, |p| {
        sqlx::query(
        "INSERT INTO django_celery_results_taskresult \
         (task_id, periodic_task_name, task_name, task_args, task_kwargs, status, worker, \
          content_type, content_encoding, result, date_created, date_started, date_done, traceback, meta) \
         VALUES ($1, $2, $3, $4, '{}', $5, $6, 'application/json', 'utf-8', $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (task_id) DO UPDATE SET status = excluded.status, worker = excluded.worker, \
         result = excluded.result, date_started = COALESCE(excluded.date_started, django_celery_results_taskresult.date_started), \
         date_done = excluded.date_done, traceback = excluded.traceback, meta = excluded.meta"
    )
    .bind(run.task_id)
    .bind(run.periodic_task_name)
    .bind(run.task_name)
    .bind(&args)
    .bind(status.as_str())
    .bind((!run.worker.is_empty()).then_some(run.worker))
    .bind(&result)
    .bind(now)
    .bind(started)
    .bind(now)
    .bind(traceback)
    .bind(&meta)
    .execute(p)
    .await
    .map(|_| ())
    })?;
    Ok(())
}

/// Inserts the `PENDING` row of a queued run, unless a worker already wrote the run's row
/// (the producer writes it after queuing, so a fast worker may be first).
pub async fn write_pending(db: &Db, run: &Run<'_>) -> Result<(), DbError> {
    let now = Utc::now();
    let args = Value::Array(run.args.to_vec()).to_string();
    on_db!(db, |p| {
        sqlx::query(
            "INSERT INTO django_celery_results_taskresult \
             (task_id, periodic_task_name, task_name, task_args, task_kwargs, status, worker, \
              content_type, content_encoding, result, date_created, date_started, date_done, traceback, meta) \
             VALUES ($1, $2, $3, $4, '{}', 'PENDING', NULL, 'application/json', 'utf-8', 'null', $5, NULL, $6, NULL, $7) \
             ON CONFLICT (task_id) DO NOTHING",
        )
        .bind(run.task_id)
        .bind(run.periodic_task_name)
        .bind(run.task_name)
        .bind(&args)
        .bind(now)
        .bind(now)
        .bind(r#"{"children": []}"#)
        .execute(p)
        .await
        .map(|_| ())
    })?;
    Ok(())
}

/// The stored status of a run (`PENDING`, `STARTED`, `RETRY`, `SUCCESS`, `FAILURE`) and its
/// `result` JSON text, if the run has a row.
pub async fn status(db: &Db, task_id: &str) -> Result<Option<(String, Option<String>)>, DbError> {
    let row: Option<(String, Option<String>)> = on_db!(db, |p| {
        sqlx::query_as(
            "SELECT status, result FROM django_celery_results_taskresult WHERE task_id = $1",
        )
        .bind(task_id)
        .fetch_optional(p)
        .await
    })?;
    Ok(row)
}

/// Runs still waiting to be run (`PENDING` or `RETRY`) whose row last changed before
/// `before`, by task id. (`STARTED` rows are left out: a worker, or an inline run that was
/// never queued, is running them and records their outcome.)
pub async fn waiting_since(db: &Db, before: DateTime<Utc>) -> Result<Vec<String>, DbError> {
    let ids: Vec<String> = on_db!(db, |p| {
        sqlx::query_scalar(
            "SELECT task_id FROM django_celery_results_taskresult \
             WHERE status IN ('PENDING', 'RETRY') AND date_done < $1",
        )
        .bind(before)
        .fetch_all(p)
        .await
    })?;
    Ok(ids)
}

/// Records a waiting run as `FAILURE` with `failure`, unless its row changed since `before`
/// (a worker got to it meanwhile). Whether it was marked.
pub async fn fail_waiting(
    db: &Db,
    task_id: &str,
    before: DateTime<Utc>,
    failure: &Failure,
) -> Result<bool, DbError> {
    let done = on_db!(db, |p| {
        sqlx::query(
            "UPDATE django_celery_results_taskresult SET status = 'FAILURE', result = $1, \
             traceback = $2, date_done = $3 WHERE task_id = $4 \
             AND status IN ('PENDING', 'RETRY') AND date_done < $5",
        )
        .bind(&failure.result)
        .bind(&failure.traceback)
        .bind(Utc::now())
        .bind(task_id)
        .bind(before)
        .execute(p)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(done == 1)
}

/// Whether a stored status is final (the run will not change any more).
pub fn is_terminal(status: &str) -> bool {
    matches!(status, "SUCCESS" | "FAILURE" | "REVOKED")
}
