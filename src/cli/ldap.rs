//! `keystone ldap sync [--queue] [--force]`: the LDAP sync task run from the command line.

use crate::config::Config;
use crate::infra::ldap;
use crate::tasks::ldap_sync::{CLI_RUN, CliRun};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

/// `keystone ldap sync [--queue] [--force]` (§4.6): runs the sync here with its task result
/// recorded, or queues it for a worker.
pub fn sync(config: &Config, queue: bool, force: bool) -> ExitCode {
    if queue {
        return queue_sync(config);
    }
    let Ok(rt) = crate::cli::runtime() else {
        eprintln!("keystone: cannot start the async runtime");
        return ExitCode::from(1);
    };
    rt.block_on(async {
        let db = match crate::roles::serve::open_database(config).await {
            Ok(db) => db,
            Err(e) => {
                eprintln!("LDAP sync failed: {e}");
                return ExitCode::from(1);
            }
        };
        let scope = Arc::new(CliRun {
            force,
            summary: Mutex::new(None),
        });
        let run = CLI_RUN.scope(
            scope.clone(),
            crate::tasks::results::run_inline(
                Arc::new(config.clone()),
                db,
                crate::tasks::LDAP_SYNC,
                Vec::new(),
            ),
        );
        let outcome = tokio::select! {
            (_, outcome) = run => outcome,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("LDAP sync interrupted; nothing was changed");
                return ExitCode::from(130);
            }
        };
        match outcome {
            Err(e) => {
                eprintln!("LDAP sync failed: {}", e.message);
                ExitCode::from(1)
            }
            Ok(()) if !ldap::enabled(&config.settings.ldap) => {
                println!("LDAP is not configured (ldap.server_uri is empty): nothing was done.");
                ExitCode::SUCCESS
            }
            Ok(()) => {
                let summary = scope
                    .summary
                    .lock()
                    .ok()
                    .and_then(|s| s.clone())
                    .unwrap_or_default();
                println!("{}", summary.line(config.settings.ldap.purge_removed));
                ExitCode::SUCCESS
            }
        }
    })
}

/// `--queue`: hands the task to the broker and prints its `task_id` (a worker runs it, with
/// the automatic retries of §2.5).
fn queue_sync(config: &Config) -> ExitCode {
    crate::cli::tasks::queue_from_cli(config, crate::tasks::LDAP_SYNC, Vec::new(), None)
}
