//! Background tasks (operations.md §2): the catalogue, the context a task runs with, and the
//! dispatch from a recorded task name to its code. The broker (`crate::queue`), the worker
//! and beat roles and `keystone task …` all go through [`execute`].

pub mod cleanup;
pub mod ldap_sync;
pub mod limits;
pub mod notices;
pub mod results;

use crate::config::Config;
use crate::store::Db;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use tracing::Instrument;

/// One catalogue entry (§2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskDef {
    /// Dotted name recorded as `task_name`.
    pub name: &'static str,
    /// Name accepted by the CLI.
    pub short: &'static str,
    /// Names of the positional arguments, for `task list` and argument checks.
    pub args: &'static [&'static str],
    /// Automatic retries on error (only LDAP sync retries upstream).
    pub retries: u32,
}

pub const LDAP_SYNC: &str = "apps.users.tasks.ldap_update_users";
pub const LOG_CLEANUP: &str = "apps.logging.tasks.clear_log_records";
pub const UPDATE_LIMITS: &str = "apps.allocations.tasks.limits.update_limits";
pub const UPDATE_LIMITS_CLUSTER: &str = "apps.allocations.tasks.limits.update_limits_for_cluster";
pub const NOTIFY_UPCOMING: &str =
    "apps.notifications.tasks.upcoming_expirations.notify_upcoming_expirations";
pub const SEND_UPCOMING: &str =
    "apps.notifications.tasks.upcoming_expirations.send_upcoming_expiration_notice";
pub const NOTIFY_PAST: &str = "apps.notifications.tasks.past_expirations.notify_past_expirations";
pub const SEND_PAST: &str = "apps.notifications.tasks.past_expirations.send_past_expiration_notice";

pub const CATALOGUE: &[TaskDef] = &[
    TaskDef {
        name: LDAP_SYNC,
        short: "ldap-sync",
        args: &[],
        retries: 3,
    },
    TaskDef {
        name: LOG_CLEANUP,
        short: "log-cleanup",
        args: &[],
        retries: 0,
    },
    TaskDef {
        name: UPDATE_LIMITS,
        short: "update-limits",
        args: &[],
        retries: 0,
    },
    TaskDef {
        name: UPDATE_LIMITS_CLUSTER,
        short: "update-limits-cluster",
        args: &["cluster_name"],
        retries: 0,
    },
    TaskDef {
        name: NOTIFY_UPCOMING,
        short: "notify-upcoming",
        args: &[],
        retries: 0,
    },
    TaskDef {
        name: SEND_UPCOMING,
        short: "send-upcoming",
        args: &["user_id", "req_id"],
        retries: 0,
    },
    TaskDef {
        name: NOTIFY_PAST,
        short: "notify-past",
        args: &[],
        retries: 0,
    },
    TaskDef {
        name: SEND_PAST,
        short: "send-past",
        args: &["user_id", "req_id"],
        retries: 0,
    },
];

/// The catalogue entry for a dotted or short name.
pub fn lookup(name: &str) -> Option<&'static TaskDef> {
    CATALOGUE.iter().find(|t| t.name == name || t.short == name)
}

/// Why a run failed; becomes the task result's `result` (`exc_type`, `exc_message`,
/// `exc_module`) and `traceback`.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskError {
    pub exc_type: String,
    pub message: String,
    pub module: String,
    /// The error chain, when there is more than the message.
    pub traceback: Option<String>,
}

impl TaskError {
    pub fn new(exc_type: &str, module: &str, message: impl Into<String>) -> Self {
        TaskError {
            exc_type: exc_type.to_string(),
            message: message.into(),
            module: module.to_string(),
            traceback: None,
        }
    }

    pub fn with_traceback(mut self, traceback: impl Into<String>) -> Self {
        self.traceback = Some(traceback.into());
        self
    }

    /// The JSON stored in `result` on failure.
    pub fn result_json(&self) -> Value {
        serde_json::json!({
            "exc_type": self.exc_type,
            "exc_message": [self.message],
            "exc_module": self.module,
        })
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.exc_type, self.message)
    }
}

impl std::error::Error for TaskError {}

impl From<crate::store::DbError> for TaskError {
    fn from(e: crate::store::DbError) -> Self {
        TaskError::new("DatabaseError", "keystone.db", e.to_string())
    }
}

impl From<sqlx::Error> for TaskError {
    fn from(e: sqlx::Error) -> Self {
        TaskError::new("DatabaseError", "keystone.db", e.to_string())
    }
}

/// Enqueues sub-tasks (`update_limits` → one per cluster; notice sweeps → one per user and
/// request). The broker implements it; inline runs use one that runs the sub-task at once.
#[async_trait::async_trait]
pub trait Enqueue: Send + Sync {
    /// Queues `name(args)` and returns its `task_id`.
    async fn enqueue(&self, name: &'static str, args: Vec<Value>) -> Result<String, TaskError>;
}

/// What a running task may use.
pub struct TaskContext {
    pub config: Arc<Config>,
    pub db: Db,
    /// This run's `task_id`.
    pub task_id: String,
    pub queue: Arc<dyn Enqueue>,
    children: Mutex<Vec<String>>,
    errors: Mutex<Vec<String>>,
}

impl TaskContext {
    pub fn new(config: Arc<Config>, db: Db, task_id: String, queue: Arc<dyn Enqueue>) -> Self {
        TaskContext {
            config,
            db,
            task_id,
            queue,
            children: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
        }
    }

    /// Enqueues a sub-task and remembers its id for this run's `meta.children`.
    pub async fn spawn(&self, name: &'static str, args: Vec<Value>) -> Result<String, TaskError> {
        let id = self.queue.enqueue(name, args).await?;
        if let Ok(mut c) = self.children.lock() {
            c.push(id.clone());
        }
        Ok(id)
    }

    /// Ids of the sub-tasks enqueued so far.
    pub fn children(&self) -> Vec<String> {
        self.children.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Records an error the task logged and went on past (a run that swallows errors still
    /// ends `SUCCESS`); the result row lists them in `meta.errors`.
    pub fn record_error(&self, message: impl Into<String>) {
        if let Ok(mut e) = self.errors.lock() {
            e.push(message.into());
        }
    }

    /// The errors recorded so far.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

fn arg_str(args: &[Value], i: usize, name: &str) -> Result<String, TaskError> {
    match args.get(i) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Ok(other.to_string()),
        None => Err(TaskError::new(
            "TypeError",
            "builtins",
            format!("missing required positional argument: '{name}'"),
        )),
    }
}

fn arg_int(args: &[Value], i: usize, name: &str) -> Result<i64, TaskError> {
    let v = args.get(i).ok_or_else(|| {
        TaskError::new(
            "TypeError",
            "builtins",
            format!("missing required positional argument: '{name}'"),
        )
    })?;
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .ok_or_else(|| {
            TaskError::new(
                "ValueError",
                "builtins",
                format!("invalid literal for int() with base 10: {v}"),
            )
        })
}

/// Runs one task's code (no recording, no retries: see `results` and the broker).
pub async fn execute(ctx: &TaskContext, name: &str, args: &[Value]) -> Result<(), TaskError> {
    let def = lookup(name)
        .ok_or_else(|| TaskError::new("NotRegistered", "celery.exceptions", format!("'{name}'")))?;
    if args.len() > def.args.len() {
        return Err(TaskError::new(
            "TypeError",
            "builtins",
            format!(
                "{}() takes {} positional arguments but {} were given",
                def.short,
                def.args.len(),
                args.len()
            ),
        ));
    }
    // Every record the task logs carries its name and id (journald KEYSTONE_TASK,
    // KEYSTONE_TASK_ID); ERROR level, so the span exists whatever the configured level.
    let span = tracing::error_span!(
        "task",
        keystone_task = def.name,
        keystone_task_id = %ctx.task_id
    );
    async move {
        match def.name {
            LDAP_SYNC => ldap_sync::run(ctx).await.map(|_| ()),
            LOG_CLEANUP => cleanup::run(ctx).await,
            UPDATE_LIMITS => limits::update_limits(ctx).await,
            UPDATE_LIMITS_CLUSTER => {
                limits::update_limits_for_cluster(ctx, &arg_str(args, 0, "cluster_name")?).await
            }
            NOTIFY_UPCOMING => notices::notify_upcoming(ctx).await,
            SEND_UPCOMING => {
                notices::send_upcoming(
                    ctx,
                    arg_int(args, 0, "user_id")?,
                    arg_int(args, 1, "req_id")?,
                )
                .await
            }
            NOTIFY_PAST => notices::notify_past(ctx).await,
            SEND_PAST => {
                notices::send_past(
                    ctx,
                    arg_int(args, 0, "user_id")?,
                    arg_int(args, 1, "req_id")?,
                )
                .await
            }
            _ => Err(TaskError::new(
                "NotRegistered",
                "celery.exceptions",
                format!("'{name}'"),
            )),
        }
    }
    .instrument(span)
    .await
}
