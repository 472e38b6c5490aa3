//! Task-result rows (operations.md §2.4) and running a task with its row recorded. The
//! worker (`crate::worker`) records queued runs through [`start`] and [`finish`]; inline runs
//! (`keystone task run --inline`, `keystone ldap sync`) through [`run_recorded`].

use super::{Enqueue, TaskContext, TaskError};
use crate::config::Config;
use crate::db::Db;
use crate::on_db;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::sync::Arc;

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

/// Inserts or updates the run's row (keyed by `task_id`); retries of a run update its row.
pub async fn write(
    db: &Db,
    run: &Run<'_>,
    status: Status,
    started: Option<DateTime<Utc>>,
    error: Option<&TaskError>,
    children: &[String],
) -> Result<(), crate::db::DbError> {
    write_with_errors(db, run, status, started, error, children, &[]).await
}

/// [`write`], with the errors the run logged and went on past listed in `meta.errors`
/// (the key is left out when there are none).
pub async fn write_with_errors(
    db: &Db,
    run: &Run<'_>,
    status: Status,
    started: Option<DateTime<Utc>>,
    error: Option<&TaskError>,
    children: &[String],
    errors: &[String],
) -> Result<(), crate::db::DbError> {
    let now = Utc::now();
    let result = match error {
        Some(e) => e.result_json().to_string(),
        None => "null".to_string(),
    };
    let traceback = error.map(|e| e.traceback.clone().unwrap_or_else(|| e.to_string()));
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
pub async fn write_pending(db: &Db, run: &Run<'_>) -> Result<(), crate::db::DbError> {
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
pub async fn status(
    db: &Db,
    task_id: &str,
) -> Result<Option<(String, Option<String>)>, crate::db::DbError> {
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

/// Whether a stored status is final (the run will not change any more).
pub fn is_terminal(status: &str) -> bool {
    matches!(status, "SUCCESS" | "FAILURE" | "REVOKED")
}

/// One attempt of a queued run: its `STARTED` row written, its code run.
pub struct Attempt {
    pub started: DateTime<Utc>,
    pub elapsed: std::time::Duration,
    pub outcome: Result<(), TaskError>,
}

/// Records `STARTED` and runs the task's code; the caller records the outcome with
/// [`finish`] (a failed start record is only logged: the run still happens).
pub async fn start(ctx: &TaskContext, run: &Run<'_>) -> Attempt {
    let started = Utc::now();
    if let Err(e) = write(&ctx.db, run, Status::Started, Some(started), None, &[]).await {
        tracing::warn!(task = run.task_name, task_id = %ctx.task_id, "cannot record the task start: {e}");
    }
    let clock = std::time::Instant::now();
    let outcome = super::execute(ctx, run.task_name, run.args).await;
    Attempt {
        started,
        elapsed: clock.elapsed(),
        outcome,
    }
}

/// Records how an attempt ended (`SUCCESS`, `RETRY` or `FAILURE`) and counts it in the task
/// metrics.
pub async fn finish(
    ctx: &TaskContext,
    run: &Run<'_>,
    attempt: &Attempt,
    status: Status,
) -> Result<(), crate::db::DbError> {
    write_with_errors(
        &ctx.db,
        run,
        status,
        Some(attempt.started),
        attempt.outcome.as_ref().err(),
        &ctx.children(),
        &ctx.errors(),
    )
    .await?;
    crate::metrics::task_finished(run.task_name, status.as_str(), attempt.elapsed);
    Ok(())
}

/// Runs a task's code with its row recorded: `STARTED` when it begins, `SUCCESS` or
/// `FAILURE` when it ends. Returns the error of a failed run.
pub async fn run_recorded(
    ctx: &TaskContext,
    task_name: &str,
    periodic_task_name: Option<&str>,
    args: &[Value],
    worker: &str,
) -> Result<(), TaskError> {
    let run = Run {
        task_id: &ctx.task_id,
        task_name,
        periodic_task_name,
        args,
        worker,
    };
    let attempt = start(ctx, &run).await;
    let status = if attempt.outcome.is_ok() {
        Status::Success
    } else {
        Status::Failure
    };
    finish(ctx, &run, &attempt, status).await?;
    attempt.outcome
}

/// Sub-tasks of an inline run run at once, one after another, each with its own row.
pub struct InlineQueue {
    config: Arc<Config>,
    db: Db,
    worker: String,
}

impl InlineQueue {
    pub fn new(config: Arc<Config>, db: Db, worker: String) -> Arc<Self> {
        Arc::new(InlineQueue { config, db, worker })
    }
}

#[async_trait::async_trait]
impl Enqueue for InlineQueue {
    async fn enqueue(&self, name: &'static str, args: Vec<Value>) -> Result<String, TaskError> {
        let id = uuid::Uuid::new_v4().to_string();
        let queue = InlineQueue::new(self.config.clone(), self.db.clone(), self.worker.clone());
        let ctx = TaskContext::new(self.config.clone(), self.db.clone(), id.clone(), queue);
        // A failed sub-task is recorded on its own row; the parent goes on.
        let run = Box::pin(run_recorded(&ctx, name, None, &args, &self.worker));
        if let Err(e) = run.await {
            tracing::warn!(task = name, task_id = %id, "sub-task failed: {e}");
        }
        Ok(id)
    }
}

/// Runs a task in this process (`keystone task run --inline`, `keystone ldap sync`), its row
/// and its sub-tasks' rows recorded. Returns the task id and the outcome.
pub async fn run_inline(
    config: Arc<Config>,
    db: Db,
    name: &str,
    args: Vec<Value>,
) -> (String, Result<(), TaskError>) {
    let Some(def) = super::lookup(name) else {
        return (
            String::new(),
            Err(TaskError::new(
                "NotRegistered",
                "celery.exceptions",
                format!("'{name}'"),
            )),
        );
    };
    let worker = crate::worker::identity();
    let id = uuid::Uuid::new_v4().to_string();
    let queue = InlineQueue::new(config.clone(), db.clone(), worker.clone());
    let ctx = TaskContext::new(config, db, id.clone(), queue);
    let outcome = run_recorded(&ctx, def.name, None, &args, &worker).await;
    (id, outcome)
}
