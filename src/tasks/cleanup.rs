//! Log cleanup (operations.md §2.6): deletes request logs, audit entries and task results
//! past their retention.

use super::{TaskContext, TaskError};

pub async fn run(_ctx: &TaskContext) -> Result<(), TaskError> {
    Err(TaskError::new(
        "NotImplementedError",
        "builtins",
        "log cleanup",
    ))
}
