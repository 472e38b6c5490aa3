//! Task-result rows (operations.md §2.4) and running a task with its row recorded. The
//! worker (`crate::roles::worker`) records queued runs through [`start`] and [`finish`]; inline runs
//! (`keystone task run --inline`, `keystone ldap sync`) through [`run_recorded`].

use super::{Enqueue, TaskContext, TaskError};
use crate::config::Config;
use crate::store::Db;
use crate::store::task_results;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::sync::Arc;

pub use crate::store::task_results::{Run, Status, is_terminal, status, write_pending};

/// Inserts or updates the run's row (keyed by `task_id`); retries of a run update its row.
/// The errors the run logged and went on past are listed in `meta.errors` (the key is left
/// out when there are none).
pub async fn write(
    db: &Db,
    run: &Run<'_>,
    status: Status,
    started: Option<DateTime<Utc>>,
    error: Option<&TaskError>,
    children: &[String],
    errors: &[String],
) -> Result<(), crate::store::DbError> {
    task_results::write(
        db,
        run,
        status,
        started,
        error.map(failure),
        children,
        errors,
    )
    .await
}

/// How an error is stored in a failed run's row (`result` JSON and `traceback`).
pub fn failure(e: &TaskError) -> task_results::Failure {
    task_results::Failure {
        result: e.result_json().to_string(),
        traceback: e.traceback.clone().unwrap_or_else(|| e.to_string()),
    }
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
    if let Err(e) = write(&ctx.db, run, Status::Started, Some(started), None, &[], &[]).await {
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
) -> Result<(), crate::store::DbError> {
    write(
        &ctx.db,
        run,
        status,
        Some(attempt.started),
        attempt.outcome.as_ref().err(),
        &ctx.children(),
        &ctx.errors(),
    )
    .await?;
    crate::infra::metrics::task_finished(run.task_name, status.as_str(), attempt.elapsed);
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
    let worker = crate::daemon::node_id();
    let id = uuid::Uuid::new_v4().to_string();
    let queue = InlineQueue::new(config.clone(), db.clone(), worker.clone());
    let ctx = TaskContext::new(config, db, id.clone(), queue);
    let outcome = run_recorded(&ctx, def.name, None, &args, &worker).await;
    (id, outcome)
}
