//! The worker role (operations.md §2.1): takes queued tasks as slots free up, runs them with
//! their task-result rows recorded, retries or dead-letters failures, keeps long runs from
//! being reclaimed, and stops taking work on shutdown. Also the liveness record (heartbeat
//! row) the `Celery` health check reads.

use crate::config::Config;
use crate::on_db;
use crate::queue::{Delivery, Message, Queue, QuietWarnings, Tasks};
use crate::store::Db;
use crate::tasks::results::{self, Run, Status};
use crate::tasks::{TaskContext, TaskError};
use chrono::Utc;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// The liveness record of one worker process.
pub struct Heartbeat {
    db: Db,
    worker: String,
    role: String,
    started: chrono::DateTime<Utc>,
}

/// The queue's producer is how tasks enqueue sub-tasks; the queue itself knows task names,
/// not task code, so the link between the two is made here, where both are used.
#[async_trait::async_trait]
impl crate::tasks::Enqueue for crate::queue::Tasks {
    async fn enqueue(
        &self,
        name: &'static str,
        args: Vec<serde_json::Value>,
    ) -> Result<String, TaskError> {
        Ok(self.submit(Message::new(name, args)).await?)
    }
}

impl From<crate::queue::BrokerError> for TaskError {
    fn from(e: crate::queue::BrokerError) -> Self {
        TaskError::new("OperationalError", "keystone.broker", e.to_string())
    }
}

impl Heartbeat {
    /// The record of this process (`role` is the serve role: `worker` or `all`).
    pub fn new(db: Db, role: &str) -> Self {
        Heartbeat {
            db,
            worker: crate::daemon::node_id(),
            role: role.to_string(),
            started: Utc::now(),
        }
    }

    /// Records that this worker is alive now.
    pub async fn beat(&self) -> Result<(), sqlx::Error> {
        on_db!(&self.db, |p| sqlx::query(
            "INSERT INTO keystone_worker_heartbeat (worker, role, started_at, seen_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (worker) DO UPDATE SET seen_at = excluded.seen_at"
        )
        .bind(&self.worker)
        .bind(&self.role)
        .bind(self.started)
        .bind(Utc::now())
        .execute(p)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// Beats every `interval` until aborted; a failed beat is logged and retried next time.
    pub fn spawn(self, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                if let Err(e) = self.beat().await {
                    tracing::warn!("worker heartbeat failed: {e}");
                }
            }
        })
    }

    /// Removes this worker's row on a clean stop, so health reflects it at once.
    pub async fn remove(&self) {
        let r = on_db!(&self.db, |p| sqlx::query(
            "DELETE FROM keystone_worker_heartbeat WHERE worker = $1"
        )
        .bind(&self.worker)
        .execute(p)
        .await
        .map(|_| ()));
        if let Err(e) = r {
            tracing::warn!("cannot remove the worker heartbeat: {e}");
        }
    }
}

/// How long one fetch waits for work before checking for shutdown again.
const FETCH_WAIT: Duration = Duration::from_secs(1);
/// How often due retries are moved back and the queue is trimmed and measured.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);

/// The delay before retry `n` (0, 1, 2, …) of a task that retries on error (§2.5): a
/// uniformly random whole number of seconds in `[0, min(16, 2 × 2^n)]`.
pub fn retry_delay(n: u32) -> Duration {
    use rand::Rng;
    let cap = 2u64.saturating_mul(1u64 << n.min(10)).min(16);
    Duration::from_secs(rand::rng().random_range(0..=cap))
}

/// What a worker needs; shared by its running tasks.
struct Shared {
    config: Arc<Config>,
    db: Db,
    queue: Arc<dyn Queue>,
    identity: String,
    max_deliveries: u64,
    /// How often a running task tells the queue it is still alive.
    extend_every: Duration,
    /// How long one run may take (`worker.time_limit`; None: no limit).
    time_limit: Option<Duration>,
    /// Deliveries being run, by receipt (released on a shutdown that outlasts the grace).
    in_flight: Mutex<HashMap<String, Delivery>>,
    warnings: QuietWarnings,
}

impl Shared {
    /// The context of a message's run on this worker and the identity of its result row.
    fn run_of<'a>(&'a self, msg: &'a Message) -> (TaskContext, Run<'a>) {
        let tasks = Arc::new(Tasks::new(self.queue.clone(), self.db.clone()));
        let ctx = TaskContext::new(self.config.clone(), self.db.clone(), msg.id.clone(), tasks);
        let run = Run {
            task_id: &msg.id,
            task_name: &msg.task,
            periodic_task_name: msg.periodic.as_deref(),
            args: &msg.args,
            worker: &self.identity,
        };
        (ctx, run)
    }

    fn track(&self, d: &Delivery, running: bool) {
        if let Ok(mut m) = self.in_flight.lock() {
            if running {
                m.insert(d.receipt.clone(), d.clone());
            } else {
                m.remove(&d.receipt);
            }
            crate::infra::metrics::tasks_running(m.len());
        }
    }
}

/// Runs the worker until `stop` turns true, then lets running tasks finish within
/// `shutdown.grace_seconds`; tasks still running after that are left unacknowledged (and
/// released to other workers at once where the queue supports it).
pub fn spawn(
    config: Arc<Config>,
    db: Db,
    queue: Arc<dyn Queue>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let visibility = Duration::from_secs(config.settings.worker.visibility_timeout.max(1));
    let shared = Arc::new(Shared {
        identity: crate::daemon::node_id(),
        max_deliveries: u64::from(config.settings.worker.max_deliveries.max(1)),
        extend_every: (visibility / 3).max(Duration::from_millis(200)),
        time_limit: (config.settings.worker.time_limit > 0)
            .then(|| Duration::from_secs(config.settings.worker.time_limit)),
        config,
        db,
        queue,
        in_flight: Mutex::new(HashMap::new()),
        warnings: QuietWarnings::new(),
    });
    tokio::spawn(run(shared, stop))
}

async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let concurrency = shared.config.worker_concurrency().max(1);
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut running = JoinSet::new();
    let housekeeping = tokio::spawn(housekeeping(shared.clone(), stop.clone()));
    tracing::info!(
        "worker {} consuming {} with {concurrency} slot(s)",
        shared.identity,
        shared.queue.describe()
    );
    let mut db_backoff = Duration::from_secs(1);
    let db_warnings = QuietWarnings::new();
    loop {
        while running.try_join_next().is_some() {}
        if *stop.borrow() {
            break;
        }
        let first = tokio::select! {
            permit = slots.clone().acquire_owned() => permit,
            _ = stop.changed() => break,
        };
        let Ok(first) = first else { break };
        // No task is taken while the database does not answer: it would fail without
        // running, and each reclaim would count as a delivery until the task was set aside
        // as lost. Tried again after 1 s, doubling up to 30 s.
        if let Err(e) = shared.db.ping().await {
            db_warnings.warn("database unavailable; taking no tasks", &e);
            drop(first);
            tokio::select! {
                _ = tokio::time::sleep(db_backoff) => {}
                _ = stop.changed() => {}
            }
            db_backoff = (db_backoff * 2).min(Duration::from_secs(30));
            continue;
        }
        db_warnings.recovered("database");
        db_backoff = Duration::from_secs(1);
        // Only as many as there are free slots, so nothing waits in this process while
        // another worker could run it.
        let free = slots.available_permits() + 1;
        let batch = match shared.queue.fetch(free, FETCH_WAIT).await {
            Ok(batch) => {
                shared.warnings.recovered("task queue");
                batch
            }
            Err(e) => {
                shared.warnings.warn("task queue unavailable, retrying", &e);
                drop(first);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
        };
        if *stop.borrow() {
            // Stopping: hand back what arrived meanwhile instead of starting it.
            for d in &batch {
                if let Err(e) = shared.queue.release(d).await {
                    tracing::warn!("cannot hand a task back to the queue: {e}");
                }
            }
            break;
        }
        let mut permit = Some(first);
        for d in batch {
            let p = match permit.take() {
                Some(p) => p,
                None => match slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let shared = shared.clone();
            running.spawn(async move {
                let _slot = p;
                handle(&shared, d).await;
            });
        }
    }

    let grace = Duration::from_secs(shared.config.settings.shutdown.grace_seconds);
    if !running.is_empty() {
        tracing::info!(
            "worker stopping: waiting up to {grace:?} for {} running task(s)",
            running.len()
        );
    }
    let drained = tokio::time::timeout(grace, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    let mut unfinished = 0;
    if drained.is_err() {
        let released: Vec<Delivery> = shared
            .in_flight
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        for d in &released {
            let _ = tokio::time::timeout(Duration::from_secs(2), shared.queue.release(d)).await;
        }
        running.abort_all();
        unfinished = released.len();
    }
    housekeeping.abort();
    match shared.queue.abandon() {
        None if unfinished > 0 => tracing::warn!(
            "{unfinished} task(s) did not finish within {grace:?}; they stay queued for another worker"
        ),
        None => {}
        Some(lost) => record_lost(&shared, lost).await,
    }
    shared.queue.retire().await;
}

/// At exit, records the tasks an in-process queue loses with this process as FAILURE
/// (`WorkerLostError`), so no row stays PENDING for a run that will never come.
async fn record_lost(shared: &Arc<Shared>, lost: Vec<Result<Message, String>>) {
    if lost.is_empty() {
        return;
    }
    tracing::warn!(
        "{} task(s) queued, waiting for a retry or stopped unfinished in this process are lost \
         with it (the in-process queue of `serve --role all` keeps nothing; run Redis to keep \
         tasks across restarts); their results are recorded as FAILURE",
        lost.len()
    );
    for msg in lost.iter().flatten() {
        let (ctx, run) = shared.run_of(msg);
        let attempt = results::Attempt {
            started: Utc::now(),
            elapsed: Duration::ZERO,
            outcome: Err(worker_lost(
                "the process stopped before this task finished; the in-process queue keeps \
                 nothing (run it again with `keystone task run`)",
            )),
        };
        if let Err(e) = results::finish(&ctx, &run, &attempt, Status::Failure).await {
            tracing::warn!(task = %msg.task, task_id = %msg.id, "cannot record the lost task: {e}");
        }
    }
}

/// Moves due retries back, trims the queue and samples its size, once a second; every
/// visibility timeout, sweeps the rows whose message the queue no longer holds.
async fn housekeeping(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let warnings = QuietWarnings::new();
    let visibility = Duration::from_secs(shared.config.settings.worker.visibility_timeout.max(1));
    let mut next_sweep = tokio::time::Instant::now() + visibility;
    loop {
        if tokio::time::Instant::now() >= next_sweep {
            sweep(&shared, visibility * 2).await;
            next_sweep = tokio::time::Instant::now() + visibility;
        }
        match shared.queue.housekeeping().await {
            Ok(stats) => {
                warnings.recovered("task queue housekeeping");
                crate::infra::metrics::queue_depth(stats.ready, stats.delayed, stats.unacked);
            }
            Err(e) => warnings.warn("task queue housekeeping failed", &e),
        }
        tokio::select! {
            _ = tokio::time::sleep(HOUSEKEEPING_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Records as FAILURE the runs that have been waiting (PENDING, RETRY) for longer than
/// `age` while the queue holds no message for them: Redis lost its data (restarted
/// without persistence, or rolled back), so no worker will ever run them, and their rows
/// would wait forever.
async fn sweep(shared: &Shared, age: Duration) {
    // The queue is read first: a message queued after this has a younger row.
    let held = match shared.queue.task_ids().await {
        Ok(Some(ids)) => ids,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!("cannot list queued tasks for the sweep: {e}");
            return;
        }
    };
    let before = Utc::now() - chrono::Duration::from_std(age).unwrap_or_default();
    let waiting = match crate::store::task_results::waiting_since(&shared.db, before).await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::debug!("cannot list waiting task results for the sweep: {e}");
            return;
        }
    };
    let failure = results::failure(&worker_lost(
        "the task queue no longer holds this task (Redis lost its data: restarted without \
         persistence or rolled back); it will not run (queue it again with `keystone task run`)",
    ));
    let mut lost = 0;
    for id in waiting.iter().filter(|id| !held.contains(*id)) {
        match crate::store::task_results::fail_waiting(&shared.db, id, before, &failure).await {
            Ok(true) => lost += 1,
            Ok(false) => {}
            Err(e) => tracing::debug!("cannot record the lost task {id}: {e}"),
        }
    }
    if lost > 0 {
        tracing::warn!(
            "{lost} task(s) waiting for longer than {}s are no longer in the task queue \
             (Redis lost its data); recorded as FAILURE",
            age.as_secs()
        );
    }
}

/// Aborts a spawned task when dropped (also when the owner is aborted or unwinds).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs one delivery to its end: recorded, then acknowledged, retried or dead-lettered.
async fn handle(shared: &Arc<Shared>, d: Delivery) {
    shared.track(&d, true);
    // In its own tokio task so that a panic in task code ends only this run.
    let mut run = AbortOnDrop(tokio::spawn({
        let shared = shared.clone();
        let d = d.clone();
        async move { process(&shared, &d).await }
    }));
    if let Err(e) = (&mut run.0).await
        && e.is_panic()
    {
        let what = e.into_panic();
        let what = what
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| what.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown cause".into());
        record_panic(shared, &d, &what).await;
    }
    shared.track(&d, false);
}

/// A run whose code panicked: FAILURE and dead letter (it would likely panic again).
async fn record_panic(shared: &Arc<Shared>, d: &Delivery, what: &str) {
    let err = TaskError::new(
        "WorkerPanic",
        "keystone.worker",
        format!("the task panicked: {what}"),
    );
    tracing::error!(entry = %d.receipt, "{err}");
    if let Ok(msg) = &d.message {
        let (ctx, run) = shared.run_of(msg);
        let attempt = results::Attempt {
            started: Utc::now(),
            elapsed: Duration::ZERO,
            outcome: Err(err.clone()),
        };
        if !store(&ctx, &run, &attempt, Status::Failure).await {
            return;
        }
    }
    let reason = err.to_string();
    queue_op(shared, "dead-letter", || {
        shared.queue.dead_letter(d, &reason)
    })
    .await;
}

async fn process(shared: &Arc<Shared>, d: &Delivery) {
    let msg = match &d.message {
        Ok(m) => m.clone(),
        Err(why) => {
            tracing::error!(entry = %d.receipt, "{why}; moved to the dead letters");
            queue_op(shared, "dead-letter", || shared.queue.dead_letter(d, why)).await;
            return;
        }
    };
    let (ctx, run) = shared.run_of(&msg);

    if d.deliveries > 1 {
        // A redelivery: a previous delivery may have stored the outcome and then lost its
        // acknowledgement (worker killed, Redis gone); do not run it again.
        if let Ok(Some((status, _))) = results::status(&shared.db, &msg.id).await
            && results::is_terminal(&status)
        {
            tracing::info!(task = %msg.task, task_id = %msg.id, "already finished ({status}); acknowledging the redelivery");
            queue_op(shared, "acknowledge", || shared.queue.ack(d)).await;
            return;
        }
    }
    if d.deliveries > shared.max_deliveries {
        let err = worker_lost(format!(
            "delivered {} times without finishing (its workers stopped or were killed); not run again",
            d.deliveries - 1
        ));
        tracing::error!(task = %msg.task, task_id = %msg.id, "{err}");
        let attempt = results::Attempt {
            started: Utc::now(),
            elapsed: Duration::ZERO,
            outcome: Err(err.clone()),
        };
        if store(&ctx, &run, &attempt, Status::Failure).await {
            let reason = err.to_string();
            queue_op(shared, "dead-letter", || {
                shared.queue.dead_letter(d, &reason)
            })
            .await;
        }
        return;
    }

    // Keep the delivery ours while it runs, however long that takes; if another worker
    // took it over meanwhile (this one was stopped or cut off for longer than the
    // visibility timeout), this run stops: the other one records the outcome.
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
    let extender = AbortOnDrop({
        let shared = shared.clone();
        let d = d.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(shared.extend_every).await;
                match shared.queue.extend(&d).await {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = lost_tx.send(());
                        return;
                    }
                    Err(e) => shared.warnings.warn("cannot extend a running task", &e),
                }
            }
        })
    });
    tracing::info!(task = %msg.task, task_id = %msg.id, attempt = msg.attempt + 1, "task started");
    let began = Utc::now();
    let run_to_end = async {
        match shared.time_limit {
            None => (results::start(&ctx, &run).await, false),
            // Past the limit the run is dropped: its pending work is cancelled and the
            // commands it started are killed (they are started with kill-on-drop).
            Some(limit) => match tokio::time::timeout(limit, results::start(&ctx, &run)).await {
                Ok(attempt) => (attempt, false),
                Err(_) => {
                    let err = time_limit_exceeded(limit);
                    tracing::error!(task = %msg.task, task_id = %msg.id, "{err}");
                    let attempt = results::Attempt {
                        started: began,
                        elapsed: limit,
                        outcome: Err(err),
                    };
                    (attempt, true)
                }
            },
        }
    };
    let ended = tokio::select! {
        ended = run_to_end => Some(ended),
        Ok(()) = lost_rx => None,
    };
    drop(extender);
    // The claim is checked once more before anything is stored: a run that ended while
    // its worker was stopped must not record over the run that took it over.
    let recheck = tokio::time::timeout(Duration::from_secs(5), shared.queue.extend(d));
    let claimed = ended.is_some() && !matches!(recheck.await, Ok(Ok(false)));
    let Some((attempt, timed_out)) = ended.filter(|_| claimed) else {
        tracing::warn!(
            task = %msg.task, task_id = %msg.id, entry = %d.receipt,
            "another worker took this task over (this one was silent for longer than \
             worker.visibility_timeout); this run stopped without recording anything"
        );
        return;
    };
    // A run that took the task over may already have finished it (and released the entry).
    if let Ok(Some((status, _))) = results::status(&shared.db, &msg.id).await
        && results::is_terminal(&status)
    {
        tracing::warn!(
            task = %msg.task, task_id = %msg.id,
            "another run already finished this task ({status}); this one records nothing"
        );
        queue_op(shared, "acknowledge", || shared.queue.ack(d)).await;
        return;
    }

    let retries = crate::tasks::lookup(&msg.task).map_or(0, |def| def.retries);
    match &attempt.outcome {
        Ok(()) => {
            tracing::info!(task = %msg.task, task_id = %msg.id, "task succeeded in {:.3}s", attempt.elapsed.as_secs_f64());
            if store(&ctx, &run, &attempt, Status::Success).await {
                queue_op(shared, "acknowledge", || shared.queue.ack(d)).await;
            }
        }
        Err(e) if msg.attempt < retries && !timed_out => {
            let delay = retry_delay(msg.attempt);
            tracing::warn!(
                task = %msg.task, task_id = %msg.id,
                "task failed: {e}; will retry ({} of {retries}) in {}s",
                msg.attempt + 1,
                delay.as_secs()
            );
            if store(&ctx, &run, &attempt, Status::Retry).await {
                let next = Message {
                    attempt: msg.attempt + 1,
                    ..msg.clone()
                };
                queue_op(shared, "schedule the retry of", || {
                    shared.queue.retry_later(d, &next, delay)
                })
                .await;
            }
        }
        Err(e) => {
            tracing::error!(task = %msg.task, task_id = %msg.id, "task failed: {e}");
            if store(&ctx, &run, &attempt, Status::Failure).await {
                // Runs that retry on error and ran out of attempts, and names this worker
                // does not know, go to the dead letters; other failures are just FAILURE.
                if retries > 0 || crate::tasks::lookup(&msg.task).is_none() {
                    let reason = format!("{e} (after {} attempt(s))", msg.attempt + 1);
                    queue_op(shared, "dead-letter", || {
                        shared.queue.dead_letter(d, &reason)
                    })
                    .await;
                } else {
                    queue_op(shared, "acknowledge", || shared.queue.ack(d)).await;
                }
            }
        }
    }
}

/// The error of a task no worker will run (Celery's `WorkerLostError`), saying `why`.
fn worker_lost(why: impl Into<String>) -> TaskError {
    TaskError::new("WorkerLostError", "keystone.worker", why.into())
}

/// The error of a run stopped at `worker.time_limit`: Celery's hard time limit, whose
/// exception type upstream's task results record.
fn time_limit_exceeded(limit: Duration) -> TaskError {
    TaskError::new(
        "TimeLimitExceeded",
        "billiard.exceptions",
        format!(
            "the run took longer than worker.time_limit ({}s) and was stopped; it is not retried",
            limit.as_secs()
        ),
    )
}

/// Stores an attempt's outcome, trying a few times: a run whose result cannot be stored is
/// not acknowledged (at-least-once), so another delivery records it later.
async fn store(
    ctx: &TaskContext,
    run: &Run<'_>,
    attempt: &results::Attempt,
    status: Status,
) -> bool {
    for wait in [1u64, 2, 4, 0] {
        match results::finish(ctx, run, attempt, status).await {
            Ok(()) => return true,
            Err(e) if wait == 0 => {
                tracing::error!(
                    task = run.task_name,
                    task_id = run.task_id,
                    "cannot store the task result: {e}; leaving the task queued for redelivery"
                );
            }
            Err(e) => {
                tracing::warn!(
                    task = run.task_name,
                    task_id = run.task_id,
                    "cannot store the task result ({e}); retrying in {wait}s"
                );
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
        }
    }
    false
}

/// Runs a queue operation after the result is stored, retrying for a while when the queue
/// is unavailable (a lost acknowledgement only means one harmless redelivery).
async fn queue_op<F, Fut>(shared: &Shared, what: &str, op: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::queue::BrokerError>>,
{
    let mut wait = Duration::from_millis(250);
    for _ in 0..8 {
        match op().await {
            Ok(()) => return,
            Err(e) => {
                shared.warnings.warn(&format!("cannot {what} a task"), &e);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::error!("gave up trying to {what} a task; it will be delivered again");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_follow_the_ldap_sync_backoff() {
        for _ in 0..200 {
            assert!(retry_delay(0) <= Duration::from_secs(2));
            assert!(retry_delay(1) <= Duration::from_secs(4));
            assert!(retry_delay(2) <= Duration::from_secs(8));
            assert!(retry_delay(5) <= Duration::from_secs(16));
            assert!(retry_delay(60) <= Duration::from_secs(16));
        }
        let seen: std::collections::BTreeSet<u64> =
            (0..500).map(|_| retry_delay(2).as_secs()).collect();
        assert_eq!(seen.len(), 9, "whole seconds 0..=8 all occur: {seen:?}");
    }
}
