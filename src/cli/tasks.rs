//! `keystone task list|run|failed` (operations.md §4.12).

use crate::config::Config;
use crate::store::Db;
use crate::tasks::{CATALOGUE, TaskDef, lookup, results};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Print the task catalogue with each schedule and its next fire time
    List,
    /// Run a task now: queue it for a worker and print its task id, or run it here (--inline)
    Run(RunArgs),
    /// List queued tasks that will not be tried again (the dead letters), newest first
    Failed {
        /// Show at most this many
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Debug, Args)]
#[command(after_help = "\
Names are the short ones of `keystone task list` (update-limits-cluster) or the dotted task
names (apps.allocations.tasks.limits.update_limits_for_cluster). Examples:
  keystone task run ldap-sync --wait
  keystone task run update-limits-cluster gpu-cluster
  keystone task run send-upcoming 12 34 --inline")]
pub struct RunArgs {
    /// Task name, short or dotted
    pub name: String,
    /// The task's positional arguments
    #[arg(value_name = "ARG")]
    pub args: Vec<String>,
    /// Run it in this process instead of queuing it (no broker needed; its result is still
    /// recorded)
    #[arg(long)]
    pub inline: bool,
    /// Wait for the queued run to finish and print its final status (exit 1 on FAILURE)
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds (exit 1; the task may still run later)
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, requires = "wait",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
}

pub fn run(config: &Config, cmd: &TaskCommand) -> ExitCode {
    match cmd {
        TaskCommand::List => {
            print!("{}", catalogue(config, Utc::now()));
            ExitCode::SUCCESS
        }
        TaskCommand::Run(args) => run_task(config, args),
        TaskCommand::Failed { limit } => failed(config, *limit),
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match crate::cli::runtime() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("keystone: cannot start the runtime: {e}");
            None
        }
    }
}

/// The `task list` table: every catalogue entry with its arguments, retries, schedule and
/// next fire time (UTC).
pub fn catalogue(config: &Config, now: DateTime<Utc>) -> String {
    let schedules = crate::roles::beat::entries(config);
    let declared = config.settings.schedule.entries();
    let mut rows = vec![[
        "NAME".to_string(),
        "TASK".to_string(),
        "ARGS".to_string(),
        "RETRIES".to_string(),
        "SCHEDULE (UTC)".to_string(),
        "NEXT RUN (UTC)".to_string(),
    ]];
    for def in CATALOGUE {
        let expr = declared
            .iter()
            .find(|(_, task, _)| *task == def.name)
            .map(|(_, _, expr)| expr.trim().to_string());
        let (schedule, next) = match expr {
            None => ("-".to_string(), "-".to_string()),
            Some(e) if e.is_empty() => ("disabled".to_string(), "-".to_string()),
            Some(e) => {
                let next = schedules
                    .iter()
                    .find(|s| s.task == def.name)
                    .and_then(|s| crate::roles::beat::next_fire(s, now))
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_else(|| "-".into());
                (e, next)
            }
        };
        let args = if def.args.is_empty() {
            "-".to_string()
        } else {
            def.args.join(" ")
        };
        rows.push([
            def.short.to_string(),
            def.name.to_string(),
            args,
            def.retries.to_string(),
            schedule,
            next,
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Turns command-line words into the task's JSON arguments: `*_id` parameters are integers,
/// the others strings.
pub fn parse_args(def: &TaskDef, words: &[String]) -> Result<Vec<Value>, String> {
    if words.len() != def.args.len() {
        let expected = if def.args.is_empty() {
            "no arguments".to_string()
        } else {
            format!("{} argument(s): {}", def.args.len(), def.args.join(" "))
        };
        return Err(format!(
            "{} takes {expected}, got {}",
            def.short,
            words.len()
        ));
    }
    def.args
        .iter()
        .zip(words)
        .map(|(param, word)| {
            if param.ends_with("_id") {
                word.trim()
                    .parse::<i64>()
                    .map(Value::from)
                    .map_err(|_| format!("{param} must be an integer, got '{word}'"))
            } else {
                Ok(Value::String(word.clone()))
            }
        })
        .collect()
}

fn run_task(config: &Config, args: &RunArgs) -> ExitCode {
    let Some(def) = lookup(&args.name) else {
        eprintln!(
            "keystone: unknown task '{}'; `keystone task list` shows the task names",
            args.name
        );
        return ExitCode::from(2);
    };
    let values = match parse_args(def, &args.args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("keystone: {e}");
            return ExitCode::from(2);
        }
    };
    if args.inline {
        return run_inline(config, def, values);
    }
    let wait = args.wait.then(|| Duration::from_secs(args.timeout));
    queue_from_cli(config, def.name, values, wait)
}

/// Runs `command` on a fresh runtime with the database open (exit 1 when it cannot be).
fn with_database(config: &Config, command: impl AsyncFnOnce(&Db) -> ExitCode) -> ExitCode {
    let Some(rt) = runtime() else {
        return ExitCode::from(1);
    };
    rt.block_on(async {
        match crate::roles::serve::open_database(config).await {
            Ok(db) => command(&db).await,
            Err(e) => {
                eprintln!("keystone: {e}");
                ExitCode::from(1)
            }
        }
    })
}

fn run_inline(config: &Config, def: &TaskDef, args: Vec<Value>) -> ExitCode {
    with_database(config, async |db| {
        let (id, outcome) = results::run_inline(
            std::sync::Arc::new(config.clone()),
            db.clone(),
            def.name,
            args,
        )
        .await;
        db.close().await;
        println!("{id}");
        match outcome {
            Ok(()) => {
                println!("SUCCESS");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("FAILURE: {e}");
                ExitCode::from(1)
            }
        }
    })
}

/// Queues `name(args)` for a worker and prints its task id; with `wait`, then waits (at most
/// that long) for the run to end and prints its final status (exit 1 on `FAILURE` or when it
/// did not end in time). For `keystone task run` and `keystone ldap sync --queue`.
pub fn queue_from_cli(
    config: &Config,
    name: &str,
    args: Vec<Value>,
    wait: Option<Duration>,
) -> ExitCode {
    if config.redis_url().is_none() {
        eprintln!(
            "keystone: configuration error: redis.host: no task broker is configured (set redis.host or redis.url); \
             the in-process queue of `keystone serve --role all` cannot be reached from another process. \
             Use --inline to run the task here"
        );
        return ExitCode::from(78);
    }
    with_database(config, async |db| {
        let id = match crate::queue::submit(config, db, name, args).await {
            Ok(id) => id,
            Err(e) => {
                eprintln!("keystone: cannot queue the task: {e}");
                return ExitCode::from(1);
            }
        };
        println!("{id}");
        let Some(limit) = wait else {
            return ExitCode::SUCCESS;
        };
        let code = wait_for(db, &id, limit).await;
        db.close().await;
        code
    })
}

/// Polls the run's row until it is final; prints `SUCCESS` or `FAILURE: <error>`. Gives up
/// after `limit`: a task whose message was lost (Redis restarted without persistence) never
/// ends.
async fn wait_for(db: &Db, id: &str, limit: Duration) -> ExitCode {
    let mut failures = 0;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if tokio::time::Instant::now() >= deadline {
            let status = match results::status(db, id).await {
                Ok(Some((status, _))) => status,
                _ => "unknown".into(),
            };
            eprintln!(
                "keystone: task {id} did not finish within {} s (status {status}); it may still \
                 run later (keystone task failed, /logs/tasks/)",
                limit.as_secs()
            );
            return ExitCode::from(1);
        }
        match results::status(db, id).await {
            Ok(Some((status, result))) if results::is_terminal(&status) => {
                if status == "SUCCESS" {
                    println!("SUCCESS");
                    return ExitCode::SUCCESS;
                }
                match result.as_deref().and_then(describe_error) {
                    Some(why) => println!("{status}: {why}"),
                    None => println!("{status}"),
                }
                return ExitCode::from(1);
            }
            Ok(_) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures >= 10 {
                    eprintln!("keystone: cannot read the task result: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `ExcType: message` from a stored `{"exc_type", "exc_message": [..]}` result.
fn describe_error(result: &str) -> Option<String> {
    let v: Value = serde_json::from_str(result).ok()?;
    let kind = v.get("exc_type")?.as_str()?;
    let message = match v.get("exc_message") {
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(" "),
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    Some(format!("{kind}: {message}"))
}

fn failed(config: &Config, limit: usize) -> ExitCode {
    if config.redis_url().is_none() {
        eprintln!(
            "keystone: configuration error: redis.host: dead letters are kept by the Redis broker (set redis.host or redis.url); \
             without it, failed runs are listed at /logs/tasks/?status=FAILURE"
        );
        return ExitCode::from(78);
    }
    let Some(rt) = runtime() else {
        return ExitCode::from(1);
    };
    rt.block_on(async {
        let queue = match crate::queue::connect_redis(config, &crate::daemon::node_id()).await {
            Ok(Some(q)) => q,
            Ok(None) => return ExitCode::from(78),
            Err(e) => {
                eprintln!("keystone: cannot connect to the task broker: {e}");
                return ExitCode::from(1);
            }
        };
        let letters = crate::queue::Queue::dead_letters(queue.as_ref(), limit).await;
        match letters {
            Ok(letters) if letters.is_empty() => {
                println!("No failed tasks in the dead-letter queue.");
                ExitCode::SUCCESS
            }
            Ok(letters) => {
                for l in letters {
                    let when = l
                        .failed_at
                        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_else(|| "-".into());
                    match l.message() {
                        Some(m) => {
                            let short = lookup(&m.task).map_or(m.task.as_str(), |d| d.short);
                            let args = Value::Array(m.args.clone());
                            println!(
                                "{when}  {}  {short} {args}  attempts {}  deliveries {}",
                                m.id,
                                m.attempt + 1,
                                l.deliveries
                            );
                        }
                        None => println!("{when}  (unreadable message) {}", l.raw),
                    }
                    println!("    {}", l.reason);
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("keystone: cannot read the dead letters: {e}");
                ExitCode::from(1)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked_and_typed() {
        let cluster = lookup("update-limits-cluster").expect("task");
        assert_eq!(
            parse_args(cluster, &["gpu".into()]),
            Ok(vec![Value::String("gpu".into())])
        );
        assert!(parse_args(cluster, &[]).is_err());
        let send = lookup("send-upcoming").expect("task");
        assert_eq!(
            parse_args(send, &["12".into(), "34".into()]),
            Ok(vec![Value::from(12), Value::from(34)])
        );
        let err = parse_args(send, &["12".into(), "x".into()]).expect_err("not an int");
        assert!(err.contains("req_id"), "{err}");
    }

    #[test]
    fn the_list_shows_schedules_and_next_runs() {
        let config = crate::config::built_in();
        let now = DateTime::parse_from_rfc3339("2026-03-01T10:07:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let text = catalogue(&config, now);
        let ldap = text
            .lines()
            .find(|l| l.starts_with("ldap-sync "))
            .expect("ldap row");
        assert!(ldap.contains("*/15 * * * *"), "{ldap}");
        assert!(ldap.contains("2026-03-01 10:15:00"), "{ldap}");
        let cluster = text
            .lines()
            .find(|l| l.starts_with("update-limits-cluster "))
            .expect("cluster row");
        assert!(cluster.contains("cluster_name"), "{cluster}");
        assert_eq!(text.lines().count(), CATALOGUE.len() + 1);
    }
}
