//! LDAP sync (operations.md §2.5 and §4.6).

use super::{TaskContext, TaskError};

/// What a sync changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub created: u64,
    pub updated: u64,
    pub deactivated: u64,
    pub deleted: u64,
}

pub async fn run(_ctx: &TaskContext) -> Result<Summary, TaskError> {
    Err(TaskError::new(
        "NotImplementedError",
        "builtins",
        "LDAP sync",
    ))
}

/// `keystone ldap sync [--queue]` (§4.6).
pub fn cli_sync(_config: &crate::config::Config, _queue: bool) -> std::process::ExitCode {
    eprintln!("not implemented yet");
    std::process::ExitCode::from(1)
}
