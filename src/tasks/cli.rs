//! `keystone task list|run|failed` (operations.md §4.12).

use crate::config::Config;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Print the task catalogue with each schedule and its next fire time
    List,
}

pub fn run(_config: &Config, _cmd: &TaskCommand) -> ExitCode {
    eprintln!("not implemented yet");
    ExitCode::from(1)
}
