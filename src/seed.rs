//! `keystone seed` (operations.md §4.9): realistic random demo data.

use clap::Args;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// Seed of the random generator (same seed and binary, same data)
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
}

pub fn run(_config: &crate::config::Config, _args: &SeedArgs) -> ExitCode {
    eprintln!("not implemented yet");
    ExitCode::from(1)
}
