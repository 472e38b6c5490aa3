//! Log cleanup (operations.md §2.6): deletes request logs, audit entries and task results
//! past their retention (`logging.request_retention`, `audit_retention`, `task_retention`;
//! 0 keeps everything). The rule itself lives in `crate::store::retention`, shared with
//! `keystone logs prune`.

use super::{TaskContext, TaskError};
use chrono::Utc;

/// Deletes every expired record as of now; a database error fails the run (no retry).
pub async fn run(ctx: &TaskContext) -> Result<(), TaskError> {
    let pruned =
        crate::store::retention::prune(&ctx.db, &ctx.config.settings.logging, Utc::now()).await?;
    tracing::info!(
        request_logs = pruned.requests,
        audit_entries = pruned.audit,
        task_results = pruned.tasks,
        "log cleanup finished"
    );
    Ok(())
}
