//! Upcoming- and past-expiry notices (operations.md §2.8–§2.10).

use super::{TaskContext, TaskError};

pub async fn notify_upcoming(_ctx: &TaskContext) -> Result<(), TaskError> {
    Err(TaskError::new(
        "NotImplementedError",
        "builtins",
        "notify_upcoming",
    ))
}

pub async fn send_upcoming(
    _ctx: &TaskContext,
    _user_id: i64,
    _req_id: i64,
) -> Result<(), TaskError> {
    Err(TaskError::new(
        "NotImplementedError",
        "builtins",
        "send_upcoming",
    ))
}

pub async fn notify_past(_ctx: &TaskContext) -> Result<(), TaskError> {
    Err(TaskError::new(
        "NotImplementedError",
        "builtins",
        "notify_past",
    ))
}

pub async fn send_past(_ctx: &TaskContext, _user_id: i64, _req_id: i64) -> Result<(), TaskError> {
    Err(TaskError::new(
        "NotImplementedError",
        "builtins",
        "send_past",
    ))
}
