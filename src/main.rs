use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    keystone::cli::run(keystone::cli::Cli::parse())
}
