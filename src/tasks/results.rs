//! Task-result rows (operations.md §2.4) and running a task with its row recorded.

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
    let now = Utc::now();
    let result = match error {
        Some(e) => e.result_json().to_string(),
        None => "null".to_string(),
    };
    let traceback = error.map(|e| e.traceback.clone().unwrap_or_else(|| e.to_string()));
    let meta = serde_json::json!({ "children": children }).to_string();
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
    .bind(run.worker)
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
    let started = Utc::now();
    if let Err(e) = write(&ctx.db, &run, Status::Started, Some(started), None, &[]).await {
        tracing::warn!(task = task_name, task_id = %ctx.task_id, "cannot record the task start: {e}");
    }
    let outcome = super::execute(ctx, task_name, args).await;
    let (status, error) = match &outcome {
        Ok(()) => (Status::Success, None),
        Err(e) => (Status::Failure, Some(e)),
    };
    write(&ctx.db, &run, status, Some(started), error, &ctx.children()).await?;
    outcome
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
