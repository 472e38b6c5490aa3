//! The Slurm commands Keystone runs (operations.md §2.7.4): their exact argument vectors,
//! running them with the configured binaries and timeout, and reading their output.
//! Service units are hours of Slurm's `billing` TRES; Slurm counts TRES-minutes.

use crate::config as settings;
use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

/// Why a Slurm command failed or could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlurmError {
    /// The command could not start, exited non-zero or ran past `slurm.timeout`. `message` is
    /// Slurm's own message (stderr, or stdout when stderr is empty: `sacctmgr` prints
    /// ` Nothing modified` there).
    #[error("Error executing shell command: {command} \n {message}")]
    Command { command: String, message: String },
    /// The command succeeded but its output has no readable `billing` value.
    #[error("Cannot read the billing value from the output of `{command}`: {reason}: {line:?}")]
    Output {
        command: String,
        line: String,
        reason: String,
    },
}

/// Runs `sacctmgr` and `sshare` as configured (`slurm.sacctmgr`, `slurm.sshare`,
/// `slurm.timeout`).
#[derive(Debug, Clone)]
pub struct Slurm {
    sacctmgr: String,
    sshare: String,
    /// `None` waits forever (`slurm.timeout = 0`).
    timeout: Option<Duration>,
}

impl Slurm {
    /// The adapter for the `[slurm]` settings.
    pub fn new(settings: &settings::Slurm) -> Self {
        Slurm {
            sacctmgr: settings.sacctmgr.clone(),
            sshare: settings.sshare.clone(),
            timeout: (settings.timeout > 0).then(|| Duration::from_secs(settings.timeout)),
        }
    }

    /// S1: the names of the accounts listed under `root` on `cluster` (`root` included, as
    /// Slurm lists it).
    pub async fn accounts(&self, cluster: &str) -> Result<BTreeSet<String>, SlurmError> {
        let argv = self.accounts_argv(cluster);
        let out = run(&argv, self.timeout).await?;
        Ok(parse_accounts(&out))
    }

    /// S2: the account's `billing` limit on `cluster` in SU-hours (0 when it has none).
    pub async fn limit(&self, account: &str, cluster: &str) -> Result<i64, SlurmError> {
        let argv = self.limit_argv(account, cluster);
        let out = run(&argv, self.timeout).await?;
        parse_limit(&out).map_err(|e| e.into_error(&argv))
    }

    /// S3: the account's total `billing` usage on `cluster` in SU-hours (0 when Slurm lists
    /// no association for it).
    pub async fn usage(&self, account: &str, cluster: &str) -> Result<i64, SlurmError> {
        let argv = self.usage_argv(account, cluster);
        let out = run(&argv, self.timeout).await?;
        parse_usage(&out).map_err(|e| e.into_error(&argv))
    }

    /// S4: sets the account's `billing` limit on `cluster` to `hours` SU-hours.
    pub async fn set_limit(
        &self,
        account: &str,
        cluster: &str,
        hours: i64,
    ) -> Result<(), SlurmError> {
        let argv = self.set_limit_argv(account, cluster, hours)?;
        run(&argv, self.timeout).await.map(|_| ())
    }

    fn accounts_argv(&self, cluster: &str) -> Vec<String> {
        argv(
            &self.sacctmgr,
            &[
                "show",
                "-nP",
                "account",
                "withassoc",
                "where",
                "parents=root",
                "format=Account",
            ],
            [format!("cluster={cluster}")],
        )
    }

    fn limit_argv(&self, account: &str, cluster: &str) -> Vec<String> {
        argv(
            &self.sacctmgr,
            &["show", "-nP", "association", "where"],
            [
                format!("account={account}"),
                format!("cluster={cluster}"),
                "format=GrpTRESMins".to_string(),
            ],
        )
    }

    fn usage_argv(&self, account: &str, cluster: &str) -> Vec<String> {
        argv(
            &self.sshare,
            &["-nP", "-A"],
            [
                account.to_string(),
                "-M".to_string(),
                cluster.to_string(),
                "--format=GrpTRESRaw".to_string(),
            ],
        )
    }

    fn set_limit_argv(
        &self,
        account: &str,
        cluster: &str,
        hours: i64,
    ) -> Result<Vec<String>, SlurmError> {
        let argv = argv(
            &self.sacctmgr,
            &["modify", "-i", "account", "where"],
            [
                format!("account={account}"),
                format!("cluster={cluster}"),
                "set".to_string(),
            ],
        );
        let minutes =
            hours
                .checked_mul(60)
                .filter(|m| *m >= 0)
                .ok_or_else(|| SlurmError::Command {
                    command: argv.join(" "),
                    message: format!("refusing to set a billing limit of {hours} SU-hours"),
                })?;
        let mut argv = argv;
        argv.push(format!("GrpTresMins=billing={minutes}"));
        Ok(argv)
    }
}

fn argv<const N: usize>(program: &str, fixed: &[&str], rest: [String; N]) -> Vec<String> {
    std::iter::once(program.to_string())
        .chain(fixed.iter().map(|s| s.to_string()))
        .chain(rest)
        .collect()
}

/// Runs `argv` directly (no shell) with the process's environment and returns its trimmed
/// stdout. A non-zero exit, a start failure or the timeout is logged at ERROR and returned.
async fn run(argv: &[String], timeout: Option<Duration>) -> Result<String, SlurmError> {
    let command = argv.join(" ");
    let fail = |message: String| {
        let e = SlurmError::Command {
            command: command.clone(),
            message,
        };
        tracing::error!("{e}");
        e
    };
    let Some((program, args)) = argv.split_first() else {
        return Err(fail("empty command".to_string()));
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Dropping the wait below on timeout kills the command.
        .kill_on_drop(true)
        // Its own process group: a Ctrl-C in the terminal (SIGINT to the foreground group)
        // reaches only the daemon, which lets the running command finish while it drains.
        .process_group(0)
        .spawn()
        .map_err(|e| fail(format!("cannot start {program}: {e}")))?;
    let output = match timeout {
        Some(limit) => match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(result) => result,
            Err(_) => {
                return Err(fail(format!(
                    "killed after {} s (slurm.timeout)",
                    limit.as_secs()
                )));
            }
        },
        None => child.wait_with_output().await,
    }
    .map_err(|e| fail(format!("cannot read the output of {program}: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        let message = if !stderr.is_empty() {
            stderr
        } else {
            let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
            if stdout.is_empty() {
                format!("{} with no message", output.status)
            } else {
                stdout
            }
        };
        return Err(fail(message));
    }
    match String::from_utf8(output.stdout) {
        Ok(s) => Ok(s.trim().to_string()),
        Err(_) => Err(fail("the output is not UTF-8".to_string())),
    }
}

/// A `billing` value that cannot be read, before the command is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadOutput {
    /// The offending output line.
    pub line: String,
    pub reason: String,
}

impl BadOutput {
    fn into_error(self, argv: &[String]) -> SlurmError {
        SlurmError::Output {
            command: argv.join(" "),
            line: self.line,
            reason: self.reason,
        }
    }
}

/// S1 output: names separated by any whitespace, duplicates collapsed.
pub fn parse_accounts(stdout: &str) -> BTreeSet<String> {
    stdout.split_whitespace().map(str::to_string).collect()
}

/// S2 output (one `GrpTRESMins` value per association, the account's own first): the
/// `billing` item of the first line that has one, wherever it stands in the TRES list, in
/// whole hours. No `billing` item anywhere (an unlimited account, or no association) is 0;
/// a `billing` item that is not a whole number of minutes is an error.
pub fn parse_limit(stdout: &str) -> Result<i64, BadOutput> {
    for line in stdout.lines() {
        if let Some(value) = billing_item(line) {
            return minutes_to_hours(line, value);
        }
    }
    Ok(0)
}

/// S3 output: `sshare -M` prints a `CLUSTER: <name>` line, then one `GrpTRESRaw` value per
/// association (the account's first; child rows may be indented). The `billing` item of the
/// first row that has one, in whole hours. Only the `CLUSTER:` line (an account with no
/// association on the cluster) is 0; rows without any `billing` item, or a `billing` item
/// that is not a whole number of minutes, are an error.
pub fn parse_usage(stdout: &str) -> Result<i64, BadOutput> {
    let rows: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("CLUSTER:"))
        .collect();
    for line in &rows {
        if let Some(value) = billing_item(line) {
            return minutes_to_hours(line, value);
        }
    }
    match rows.first() {
        None => Ok(0),
        Some(line) => Err(BadOutput {
            line: line.to_string(),
            reason: "no billing item".to_string(),
        }),
    }
}

/// The value of the `billing=` item in a TRES list (`cpu=1,billing=60,fs/disk=0`). With `-P`
/// the line may carry other `|`-separated fields; each is searched.
fn billing_item(line: &str) -> Option<&str> {
    line.split('|')
        .flat_map(|field| field.split(','))
        .find_map(|item| item.trim().strip_prefix("billing="))
}

fn minutes_to_hours(line: &str, value: &str) -> Result<i64, BadOutput> {
    let bad = |reason: &str| BadOutput {
        line: line.trim().to_string(),
        reason: reason.to_string(),
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the billing value is not a whole number of minutes"));
    }
    let minutes: i64 = value
        .parse()
        .map_err(|_| bad("the billing value is too large"))?;
    Ok(minutes / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(timeout: u64) -> Slurm {
        Slurm::new(&settings::Slurm {
            sacctmgr: "/opt/slurm/bin/sacctmgr".into(),
            sshare: "sshare".into(),
            timeout,
        })
    }

    #[test]
    fn command_lines_are_the_contract_ones() {
        let s = adapter(300);
        assert_eq!(
            s.accounts_argv("gpu").join(" "),
            "/opt/slurm/bin/sacctmgr show -nP account withassoc where parents=root format=Account cluster=gpu"
        );
        assert_eq!(
            s.limit_argv("team1", "gpu").join(" "),
            "/opt/slurm/bin/sacctmgr show -nP association where account=team1 cluster=gpu format=GrpTRESMins"
        );
        assert_eq!(
            s.usage_argv("team1", "gpu").join(" "),
            "sshare -nP -A team1 -M gpu --format=GrpTRESRaw"
        );
        assert_eq!(
            s.set_limit_argv("team1", "gpu", 350).map(|a| a.join(" ")),
            Ok("/opt/slurm/bin/sacctmgr modify -i account where account=team1 cluster=gpu set GrpTresMins=billing=21000".to_string())
        );
        assert!(s.set_limit_argv("team1", "gpu", -1).is_err());
        assert!(s.set_limit_argv("team1", "gpu", i64::MAX).is_err());
    }

    #[test]
    fn accounts_are_a_set_of_whitespace_separated_names() {
        let names = parse_accounts("root\nteam1\n team2 \nteam1\n");
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            vec!["root", "team1", "team2"]
        );
        assert!(parse_accounts("").is_empty());
    }

    #[test]
    fn limit_reads_billing_wherever_it_stands() {
        assert_eq!(parse_limit("billing=6000"), Ok(100));
        assert_eq!(parse_limit("billing=6000,cpu=100,mem=5M"), Ok(100));
        assert_eq!(parse_limit("cpu=100,billing=6059"), Ok(100));
        assert_eq!(parse_limit("billing=6000,gres/gpu=10"), Ok(100));
        assert_eq!(parse_limit("billing=59"), Ok(0));
    }

    #[test]
    fn limit_without_billing_is_zero() {
        // Unknown account: empty output. New account: an empty line per association.
        assert_eq!(parse_limit(""), Ok(0));
        assert_eq!(parse_limit("\n\n"), Ok(0));
        assert_eq!(parse_limit("cpu=100,mem=5M"), Ok(0));
        // The account's own line has no billing item; a later association line has one.
        assert_eq!(parse_limit("cpu=100\nbilling=120"), Ok(2));
    }

    #[test]
    fn limit_with_an_unreadable_billing_item_is_an_error_naming_the_line() {
        for (text, line) in [
            ("billing=abc", "billing=abc"),
            ("billing=,cpu=1", "billing=,cpu=1"),
            ("cpu=1,billing=-60", "cpu=1,billing=-60"),
            (
                "billing=99999999999999999999999",
                "billing=99999999999999999999999",
            ),
        ] {
            let err = parse_limit(text).expect_err(text);
            assert_eq!(err.line, line);
        }
        let err = parse_limit("billing=1.5")
            .expect_err("decimal")
            .into_error(&["sacctmgr".into(), "show".into()]);
        assert_eq!(
            err.to_string(),
            "Cannot read the billing value from the output of `sacctmgr show`: the billing value is not a whole number of minutes: \"billing=1.5\""
        );
    }

    #[test]
    fn usage_skips_the_cluster_header_and_reads_the_account_row() {
        let real = "CLUSTER: testcluster\ncpu=0,mem=0,energy=0,node=0,billing=7200,fs/disk=0,vmem=0,pages=0";
        assert_eq!(parse_usage(real), Ok(120));
        // An indented child row after the account's row does not count.
        let with_child =
            "CLUSTER: testcluster\ncpu=0,billing=600,fs/disk=0\n cpu=0,billing=60,fs/disk=0";
        assert_eq!(parse_usage(with_child), Ok(10));
        // Without -M there is no header.
        assert_eq!(parse_usage("billing=120,fs/disk=0"), Ok(2));
        // billing last, with no fs/disk after it (upstream read 0 here).
        assert_eq!(parse_usage("CLUSTER: c\ncpu=0,billing=180"), Ok(3));
        // Extra -P fields.
        assert_eq!(parse_usage("CLUSTER: c\nteam1||cpu=0,billing=180"), Ok(3));
    }

    #[test]
    fn usage_of_an_account_without_association_is_zero() {
        assert_eq!(parse_usage("CLUSTER: testcluster"), Ok(0));
        assert_eq!(parse_usage(""), Ok(0));
    }

    #[test]
    fn usage_rows_without_a_readable_billing_item_are_an_error() {
        let err = parse_usage("CLUSTER: c\ncpu=0,mem=0").expect_err("no billing");
        assert_eq!(err.line, "cpu=0,mem=0");
        assert_eq!(err.reason, "no billing item");
        assert!(parse_usage("CLUSTER: c\nbilling=x,fs/disk=0").is_err());
    }

    #[test]
    fn command_errors_read_like_upstream() {
        let e = SlurmError::Command {
            command: "sacctmgr modify -i account".into(),
            message: "Nothing modified".into(),
        };
        assert_eq!(
            e.to_string(),
            "Error executing shell command: sacctmgr modify -i account \n Nothing modified"
        );
    }

    /// A script standing in for a Slurm binary.
    fn script(dir: &std::path::Path, name: &str, body: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path.display().to_string()
    }

    fn with(sacctmgr: String, timeout: u64) -> Slurm {
        Slurm::new(&settings::Slurm {
            sacctmgr,
            sshare: "sshare".into(),
            timeout,
        })
    }

    #[tokio::test]
    async fn a_failed_command_carries_its_command_line_and_message() {
        let dir = tempfile::tempdir().expect("temp dir");
        // What sacctmgr does for an account without an association: message on stdout, rc 1.
        let fake = script(dir.path(), "sacctmgr", "echo ' Nothing modified'; exit 1");
        let err = with(fake.clone(), 10)
            .set_limit("team1", "c1", 5)
            .await
            .expect_err("rc 1");
        assert_eq!(
            err.to_string(),
            format!(
                "Error executing shell command: {fake} modify -i account where account=team1 cluster=c1 set GrpTresMins=billing=300 \n Nothing modified"
            )
        );
        let fake = script(
            dir.path(),
            "sacctmgr2",
            "echo out; echo '  bad cluster ' >&2; exit 3",
        );
        let err = with(fake, 10).accounts("c1").await.expect_err("rc 3");
        assert!(err.to_string().ends_with(" \n bad cluster"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_binary_is_a_command_error() {
        let err = with("/nonexistent/sacctmgr".into(), 10)
            .accounts("c1")
            .await
            .expect_err("missing");
        let text = err.to_string();
        assert!(
            text.starts_with(
                "Error executing shell command: /nonexistent/sacctmgr show -nP account"
            ),
            "{text}"
        );
        assert!(
            text.contains("cannot start /nonexistent/sacctmgr"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_command_running_past_the_timeout_is_killed_and_failed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let marker = dir.path().join("finished");
        let fake = script(
            dir.path(),
            "sacctmgr",
            &format!("sleep 3; touch {}", marker.display()),
        );
        let started = std::time::Instant::now();
        let err = with(fake, 1).accounts("c1").await.expect_err("timeout");
        assert!(started.elapsed() < Duration::from_millis(2500));
        assert!(
            err.to_string()
                .ends_with(" \n killed after 1 s (slurm.timeout)"),
            "{err}"
        );
        tokio::time::sleep(Duration::from_millis(2800)).await;
        assert!(!marker.exists(), "the timed-out command went on running");
    }

    #[tokio::test]
    async fn output_is_trimmed_and_parsed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fake = script(dir.path(), "sacctmgr", "printf 'root\\nteam1\\n\\n'");
        let names = with(fake, 0).accounts("c1").await.expect("accounts");
        assert_eq!(names.into_iter().collect::<Vec<_>>(), vec!["root", "team1"]);
    }
}
