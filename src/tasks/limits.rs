//! Slurm limit enforcement (operations.md §2.7).

use super::{TaskContext, TaskError};

pub async fn update_limits(_ctx: &TaskContext) -> Result<(), TaskError> {
    Err(TaskError::new(
        "NotImplementedError",
        "builtins",
        "update_limits",
    ))
}

pub async fn update_limits_for_cluster(
    _ctx: &TaskContext,
    _cluster: &str,
) -> Result<(), TaskError> {
    Err(TaskError::new(
        "NotImplementedError",
        "builtins",
        "update_limits_for_cluster",
    ))
}
