//! The task broker, worker and beat against real Redis and both databases: `keystone task`
//! commands, at-least-once delivery when a worker is killed, graceful stop, reconnects,
//! retries and dead letters, beat's exactly-once ticks with two beat processes and its
//! catch-up. Every Redis test uses its own key prefix (`redis.prefix`).

use crate::common::*;
use fred::prelude::{Builder, ClientLike, Config as RedisConfig, KeysInterface, StreamsInterface};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const LDAP_SYNC: &str = "apps.users.tasks.ldap_update_users";
const LOG_CLEANUP: &str = "apps.logging.tasks.clear_log_records";
const CLUSTER_TASK: &str = "apps.allocations.tasks.limits.update_limits_for_cluster";
const SCHEDULES: [&str; 5] = [
    "KEYSTONE_SCHEDULE__LDAP_SYNC",
    "KEYSTONE_SCHEDULE__LOG_CLEANUP",
    "KEYSTONE_SCHEDULE__UPDATE_LIMITS",
    "KEYSTONE_SCHEDULE__UPCOMING_EXPIRATIONS",
    "KEYSTONE_SCHEDULE__PAST_EXPIRATIONS",
];

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Polls `check` every 100 ms until it holds or `timeout` passes.
fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One row of the task-results table.
#[derive(Debug, Clone)]
struct TaskRow {
    task_id: String,
    task_name: Option<String>,
    periodic: Option<String>,
    status: String,
    worker: Option<String>,
    result: Option<String>,
}

type RowTuple = (
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
);

const ROWS_SQL: &str = "SELECT task_id, task_name, periodic_task_name, status, worker, result \
                        FROM django_celery_results_taskresult ORDER BY id";

fn database_url(site: &Site) -> String {
    match site.backend {
        Backend::Sqlite => format!("sqlite://{}", site.path("state/keystone.db").display()),
        Backend::Postgres => {
            let admin = postgres_admin_url();
            let base = admin
                .rsplit_once('/')
                .map(|(b, _)| b.to_string())
                .unwrap_or(admin);
            format!("{base}/{}", site.pg_database.clone().unwrap_or_default())
        }
    }
}

fn task_rows(site: &Site) -> Vec<TaskRow> {
    let url = database_url(site);
    let rows: Vec<RowTuple> = rt().block_on(async move {
        use sqlx::Connection;
        if url.starts_with("sqlite:") {
            let mut c = sqlx::SqliteConnection::connect(&url).await.expect("sqlite");
            sqlx::query_as(ROWS_SQL)
                .fetch_all(&mut c)
                .await
                .expect("rows")
        } else {
            let mut c = sqlx::PgConnection::connect(&url).await.expect("postgres");
            sqlx::query_as(ROWS_SQL)
                .fetch_all(&mut c)
                .await
                .expect("rows")
        }
    });
    rows.into_iter()
        .map(
            |(task_id, task_name, periodic, status, worker, result)| TaskRow {
                task_id,
                task_name,
                periodic,
                status,
                worker,
                result,
            },
        )
        .collect()
}

fn rows_for(site: &Site, task_id: &str) -> Vec<TaskRow> {
    task_rows(site)
        .into_iter()
        .filter(|r| r.task_id == task_id)
        .collect()
}

/// Whether the (one) row of a run was written by `daemon`'s worker.
fn recorded_by(rows: &[TaskRow], daemon: &Daemon) -> bool {
    rows.first()
        .and_then(|r| r.worker.as_deref())
        .is_some_and(|w| w.ends_with(&format!(":{}", daemon.child.id())))
}

fn status_of(site: &Site, task_id: &str) -> Option<String> {
    rows_for(site, task_id).first().map(|r| r.status.clone())
}

/// A Redis client for looking at and disturbing what the daemons do.
struct Probe {
    rt: tokio::runtime::Runtime,
    client: fred::prelude::Client,
}

impl Probe {
    fn at(url: &str) -> Probe {
        let rt = rt();
        let client = Builder::from_config(RedisConfig::from_url(url).expect("url"))
            .build()
            .expect("client");
        rt.block_on(client.init()).expect("redis");
        Probe { rt, client }
    }

    fn get(&self, key: &str) -> Option<String> {
        self.rt.block_on(self.client.get(key)).expect("GET")
    }

    /// The queued messages of a stream, oldest first.
    fn messages(&self, stream: &str) -> Vec<serde_json::Value> {
        let entries: Vec<(String, HashMap<String, String>)> = self
            .rt
            .block_on(self.client.xrange(stream, "-", "+", None))
            .expect("XRANGE");
        entries
            .into_iter()
            .map(|(_, fields)| {
                serde_json::from_str(fields.get("task").map(String::as_str).unwrap_or("null"))
                    .expect("message JSON")
            })
            .collect()
    }

    fn command(&self, args: &[&str]) -> fred::prelude::Value {
        let cmd = fred::types::CustomCommand::new(args[0].to_string(), None::<u16>, false);
        let rest: Vec<String> = args[1..].iter().map(|s| s.to_string()).collect();
        self.rt
            .block_on(self.client.custom(cmd, rest))
            .expect("redis command")
    }

    /// Closes every Redis connection of process `pid` (found through /proc: the local ports
    /// of its TCP sockets), as a Redis restart would, without touching other clients.
    fn kill_connections_of(&self, pid: u32) -> usize {
        let mut inodes = BTreeSet::new();
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                if let Ok(target) = std::fs::read_link(fd.path()) {
                    let t = target.display().to_string();
                    if let Some(inode) =
                        t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']'))
                    {
                        inodes.insert(inode.to_string());
                    }
                }
            }
        }
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        let mut killed = 0;
        for line in table.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(inode)) = (cols.get(1), cols.get(2), cols.get(9))
            else {
                continue;
            };
            let port = |addr: &str| {
                addr.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            if !inodes.contains(*inode) || port(remote) != Some(6379) {
                continue;
            }
            if let Some(local_port) = port(local) {
                let addr = format!("127.0.0.1:{local_port}");
                let _ = self.command(&["CLIENT", "KILL", "ADDR", &addr]);
                killed += 1;
            }
        }
        killed
    }

    /// Deletes every key under a test's prefix.
    fn cleanup(&self, prefix: &str) {
        let keys: Vec<String> = self
            .command(&["KEYS", &format!("{prefix}:*")])
            .into_array()
            .into_iter()
            .filter_map(|v| v.as_string())
            .collect();
        for key in keys {
            let _: Result<i64, _> = self.rt.block_on(self.client.del(key));
        }
    }
}

/// A site using Redis under its own key prefix, with every schedule off (tests turn on the
/// ones they need) and quiet metrics.
struct RedisSite {
    site: Site,
    prefix: String,
    probe: Probe,
}

impl RedisSite {
    fn new(backend: Backend) -> RedisSite {
        RedisSite::on(backend, &redis_url())
    }

    /// A site whose broker is the Redis at `url`.
    fn on(backend: Backend, url: &str) -> RedisSite {
        let mut site = Site::new(backend);
        let prefix = format!("kstest-{}", uuid::Uuid::new_v4().simple());
        site.set("KEYSTONE_REDIS__URL", url)
            .set("KEYSTONE_REDIS__PREFIX", &prefix)
            .set("KEYSTONE_METRICS__ENABLED", "false")
            .set("KEYSTONE_LOGGING__LEVEL", "INFO");
        for key in SCHEDULES {
            site.set(key, "");
        }
        site.migrate();
        RedisSite {
            site,
            prefix,
            probe: Probe::at(url),
        }
    }

    fn stream(&self) -> String {
        format!("{}:tasks", self.prefix)
    }
}

impl Drop for RedisSite {
    fn drop(&mut self) {
        self.probe.cleanup(&self.prefix);
    }
}

/// A `sacctmgr` that records each call in `runs.log`, then sleeps: a Slurm limit update
/// for a cluster with no accounts that takes `seconds`.
fn slow_sacctmgr(site: &mut Site, seconds: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let log = site.path("runs.log");
    let script = site.path("sacctmgr");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$$ $*\" >> '{}'\nsleep {seconds}\nexit 0\n",
            log.display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    site.set("KEYSTONE_SLURM__SACCTMGR", &script.display().to_string());
    site.sql("INSERT INTO allocations_cluster (name, enabled, access_mode) VALUES ('slowpoke', TRUE, 'OP')");
    log
}

fn calls(log: &PathBuf) -> usize {
    std::fs::read_to_string(log)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// `keystone task run …` that must succeed; returns the printed task id.
fn queue_task(site: &Site, args: &[&str]) -> String {
    let mut argv = vec!["task", "run"];
    argv.extend_from_slice(args);
    let out = site.run(&argv);
    assert!(out.status.success(), "task run failed: {}", stderr(&out));
    let id = stdout(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    assert_eq!(id.len(), 36, "a task id: {}", stdout(&out));
    id
}

#[test]
fn task_commands_without_a_broker() {
    let mut site = Site::new(Backend::Sqlite);
    site.migrate();
    site.set("KEYSTONE_SCHEDULE__LOG_CLEANUP", "");

    let out = site.run(&["task", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for short in [
        "ldap-sync",
        "log-cleanup",
        "update-limits",
        "update-limits-cluster",
        "notify-upcoming",
        "send-upcoming",
        "notify-past",
        "send-past",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{short} "))),
            "{short} listed:\n{text}"
        );
    }
    let ldap = text
        .lines()
        .find(|l| l.starts_with("ldap-sync "))
        .expect("row");
    assert!(
        ldap.contains(LDAP_SYNC) && ldap.contains("*/15 * * * *"),
        "{ldap}"
    );
    let cleanup = text
        .lines()
        .find(|l| l.starts_with("log-cleanup "))
        .expect("row");
    assert!(cleanup.contains("disabled"), "{cleanup}");

    let out = site.run(&["task", "run", "no-such-task"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown task 'no-such-task'"),
        "{}",
        stderr(&out)
    );

    let out = site.run(&["task", "run", "update-limits-cluster"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cluster_name"), "{}", stderr(&out));

    let out = site.run(&["task", "run", "send-past", "1", "two"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("req_id must be an integer"),
        "{}",
        stderr(&out)
    );

    // Queuing needs a broker; --inline does not.
    let out = site.run(&["task", "run", "ldap-sync"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("--inline"), "{}", stderr(&out));
    let out = site.run(&["task", "failed"]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));

    let out = site.run(&["task", "run", CLUSTER_TASK, "nowhere", "--inline"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(
        lines.get(1).map(String::as_str),
        Some("SUCCESS"),
        "{lines:?}"
    );
    let rows = rows_for(&site, &lines[0]);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "SUCCESS");
    assert_eq!(rows[0].task_name.as_deref(), Some(CLUSTER_TASK));
    assert_eq!(rows[0].periodic, None);
}

#[test]
fn the_in_process_queue_runs_beat_ticks_and_catches_up_once() {
    for backend in backends() {
        let mut site = Site::new(backend);
        site.migrate();
        site.set("KEYSTONE_METRICS__ENABLED", "false");
        for key in SCHEDULES {
            site.set(key, "");
        }
        // Both entries last fired at midnight: LDAP sync ran two days ago, log cleanup never.
        site.set("KEYSTONE_SCHEDULE__LDAP_SYNC", "0 0 * * *")
            .set("KEYSTONE_SCHEDULE__LOG_CLEANUP", "0 0 * * *");
        let long_ago = (chrono::Utc::now() - chrono::Duration::days(2))
            .format("%Y-%m-%dT%H:%M:%S+00:00")
            .to_string();
        site.sql(&format!(
            "INSERT INTO keystone_beat_state (entry, last_run_at) VALUES ('{LDAP_SYNC}', '{long_ago}')"
        ));
        let daemon = site.serve("all", &[]);
        let caught_up = wait_until(Duration::from_secs(15), || {
            task_rows(&site)
                .iter()
                .any(|r| r.periodic.as_deref() == Some(LDAP_SYNC) && r.status == "SUCCESS")
        });
        std::thread::sleep(Duration::from_millis(1500));
        let (status, out) = daemon.stop();
        assert!(caught_up, "{backend:?}: the missed LDAP sync ran: {out}");
        assert_eq!(status.code(), Some(0), "{out}");
        let rows = task_rows(&site);
        let ldap: Vec<&TaskRow> = rows
            .iter()
            .filter(|r| r.periodic.as_deref() == Some(LDAP_SYNC))
            .collect();
        assert_eq!(ldap.len(), 1, "caught up once, not back-filled: {rows:?}");
        assert_eq!(ldap[0].task_name.as_deref(), Some(LDAP_SYNC));
        assert!(
            rows.iter()
                .all(|r| r.task_name.as_deref() != Some(LOG_CLEANUP)),
            "an entry never run waits for its next tick: {rows:?}"
        );

        // A schedule every second: the in-process worker runs each tick.
        site.set("KEYSTONE_SCHEDULE__LDAP_SYNC", "* * * * * *")
            .set("KEYSTONE_SCHEDULE__LOG_CLEANUP", "");
        let before = task_rows(&site).len();
        let daemon = site.serve("all", &[]);
        let ticking = wait_until(Duration::from_secs(15), || {
            task_rows(&site)
                .iter()
                .skip(before)
                .filter(|r| r.status == "SUCCESS")
                .count()
                >= 3
        });
        let (status, out) = daemon.stop();
        assert!(ticking, "{backend:?}: per-second ticks ran: {out}");
        assert_eq!(status.code(), Some(0), "{out}");
    }
}

/// `serve --role all` without Redis keeps its queue in memory: at exit the tasks it still
/// holds are counted in a warning and recorded as FAILURE, not left PENDING or STARTED,
/// and the log does not claim they stay queued.
#[test]
fn the_in_process_queue_records_what_it_loses_at_exit() {
    let mut site = Site::new(Backend::Sqlite);
    site.migrate();
    site.set("KEYSTONE_METRICS__ENABLED", "false")
        .set("KEYSTONE_LOGGING__LEVEL", "INFO");
    for key in SCHEDULES {
        site.set(key, "");
    }
    let log = slow_sacctmgr(&mut site, 30);
    site.set("KEYSTONE_SCHEDULE__UPDATE_LIMITS", "* * * * * *");
    let daemon = site.serve(
        "all",
        &[
            ("KEYSTONE_WORKER__CONCURRENCY", "1"),
            ("KEYSTONE_SHUTDOWN__GRACE_SECONDS", "1"),
        ],
    );
    assert!(wait_until(Duration::from_secs(15), || calls(&log) == 1));
    // Ticks pile up behind the slow run.
    assert!(wait_until(Duration::from_secs(15), || {
        task_rows(&site)
            .iter()
            .filter(|r| r.status == "PENDING")
            .count()
            >= 3
    }));
    let (status, out) = daemon.stop();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(!out.contains("stay queued"), "{out}");
    assert!(out.contains("are lost with it"), "{out}");
    let rows = task_rows(&site);
    let open: Vec<&TaskRow> = rows
        .iter()
        .filter(|r| ["PENDING", "STARTED", "RETRY"].contains(&r.status.as_str()))
        .collect();
    assert!(
        open.is_empty(),
        "no row waits for a run that will never come: {open:?}"
    );
    let lost = rows
        .iter()
        .filter(|r| {
            r.status == "FAILURE"
                && r.result
                    .as_deref()
                    .is_some_and(|t| t.contains("WorkerLostError"))
        })
        .count();
    assert!(lost >= 3, "{rows:?}");
}

#[test]
fn queued_tasks_run_once_and_failures_retry_then_land_in_the_dead_letters() {
    if !redis_available() {
        return;
    }
    let mut t = RedisSite::new(Backend::Sqlite);
    // LDAP is configured but nothing listens: every sync attempt fails at once.
    let closed = free_port();
    t.site
        .set(
            "KEYSTONE_LDAP__SERVER_URI",
            &format!("ldap://127.0.0.1:{closed}"),
        )
        .set("KEYSTONE_LDAP__START_TLS", "false")
        .set("KEYSTONE_LDAP__TIMEOUT", "2");
    // Queued before any worker exists: the worker still gets it.
    let early = queue_task(&t.site, &["update-limits-cluster", "nowhere"]);
    assert_eq!(status_of(&t.site, &early).as_deref(), Some("PENDING"));
    let worker = t
        .site
        .serve("worker", &[("KEYSTONE_WORKER__CONCURRENCY", "2")]);

    let out = t
        .site
        .run(&["task", "run", "update-limits-cluster", "nowhere", "--wait"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let printed = stdout(&out);
    let lines: Vec<&str> = printed.lines().collect();
    let id = lines[0].to_string();
    assert_eq!(lines.get(1), Some(&"SUCCESS"), "{lines:?}");
    let rows = rows_for(&t.site, &id);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].task_name.as_deref(), Some(CLUSTER_TASK));
    assert!(
        rows[0].worker.as_deref().is_some_and(
            |w| w.starts_with("keystone@") && w.ends_with(&format!(":{}", worker.child.id()))
        ),
        "{rows:?}"
    );
    assert!(wait_until(Duration::from_secs(10), || {
        status_of(&t.site, &early).as_deref() == Some("SUCCESS")
    }));

    // LDAP sync retries 3 times with backoff (at most 2 + 4 + 8 s), then fails for good.
    let started = Instant::now();
    let out = t.site.run(&["task", "run", "ldap-sync", "--wait"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(40));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    let ldap_id = lines[0].clone();
    assert!(
        lines.get(1).is_some_and(|l| l.starts_with("FAILURE")),
        "{lines:?}"
    );
    let rows = rows_for(&t.site, &ldap_id);
    assert_eq!(rows.len(), 1, "retries update the run's one row: {rows:?}");
    assert_eq!(rows[0].status, "FAILURE");
    assert!(
        rows[0]
            .result
            .as_deref()
            .is_some_and(|r| r.contains("exc_type")),
        "{rows:?}"
    );

    let out = t.site.run(&["task", "failed"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = stdout(&out);
    let line = listed
        .lines()
        .find(|l| l.contains(&ldap_id))
        .unwrap_or_else(|| panic!("dead letter listed:\n{listed}"));
    assert!(
        line.contains("ldap-sync") && line.contains("attempts 4"),
        "{line}"
    );
    assert!(
        !listed.contains(&id),
        "a successful run is not a dead letter:\n{listed}"
    );

    let (status, out) = worker.stop();
    assert_eq!(status.code(), Some(0), "{out}");
    assert_eq!(
        out.matches("will retry").count(),
        3,
        "three retries were scheduled:\n{out}"
    );
}

#[test]
fn a_task_of_a_killed_worker_is_run_again_by_another_worker() {
    if !redis_available() {
        return;
    }
    for backend in backends() {
        let mut t = RedisSite::new(backend);
        t.site.set("KEYSTONE_WORKER__VISIBILITY_TIMEOUT", "2");
        let log = slow_sacctmgr(&mut t.site, 3);
        let mut first = t
            .site
            .serve("worker", &[("KEYSTONE_WORKER__CONCURRENCY", "1")]);
        let id = queue_task(&t.site, &["update-limits-cluster", "slowpoke"]);
        assert!(
            wait_until(Duration::from_secs(15), || calls(&log) == 1),
            "{backend:?}: the first worker started the task"
        );
        // Longer than the visibility timeout would be needed if the running task did not
        // keep its delivery alive: nobody else may take it while its worker lives.
        first.signal(libc::SIGKILL);
        let _ = wait_exit(&mut first.child, Duration::from_secs(10));
        assert_eq!(status_of(&t.site, &id).as_deref(), Some("STARTED"));

        let second = t
            .site
            .serve("worker", &[("KEYSTONE_WORKER__CONCURRENCY", "1")]);
        assert!(
            wait_until(Duration::from_secs(30), || {
                status_of(&t.site, &id).as_deref() == Some("SUCCESS")
            }),
            "{backend:?}: the second worker finished the task"
        );
        assert_eq!(calls(&log), 2, "the task ran again from the start");
        let rows = rows_for(&t.site, &id);
        assert_eq!(rows.len(), 1, "one row per run: {rows:?}");
        assert!(recorded_by(&rows, &second), "{rows:?}");
        let (status, out) = second.stop();
        assert_eq!(status.code(), Some(0), "{out}");
        assert!(out.contains("reclaimed"), "{out}");
    }
}

/// A worker stopped (SIGSTOP) for longer than the visibility timeout loses its task to
/// another worker; once it runs again it stops its own run instead of recording an
/// outcome over the run that took the task over.
#[test]
fn a_worker_that_lost_its_claim_records_nothing() {
    if !redis_available() {
        return;
    }
    let mut t = RedisSite::new(Backend::Sqlite);
    t.site.set("KEYSTONE_WORKER__VISIBILITY_TIMEOUT", "2");
    let log = slow_sacctmgr(&mut t.site, 8);
    let first = t
        .site
        .serve("worker", &[("KEYSTONE_WORKER__CONCURRENCY", "1")]);
    let id = queue_task(&t.site, &["update-limits-cluster", "slowpoke"]);
    assert!(wait_until(Duration::from_secs(15), || calls(&log) == 1));
    let first_started = Instant::now();
    first.signal(libc::SIGSTOP);
    let second = t
        .site
        .serve("worker", &[("KEYSTONE_WORKER__CONCURRENCY", "1")]);
    assert!(
        wait_until(Duration::from_secs(20), || calls(&log) == 2),
        "the second worker reclaimed the task"
    );
    first.signal(libc::SIGCONT);
    // Past the end of the first run's command: it must not have recorded anything.
    let until_first_done = Duration::from_secs(9).saturating_sub(first_started.elapsed());
    std::thread::sleep(until_first_done);
    let rows = rows_for(&t.site, &id);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        rows[0].status, "STARTED",
        "only the second run is recorded: {rows:?}"
    );
    assert!(recorded_by(&rows, &second), "{rows:?}");
    assert!(
        wait_until(Duration::from_secs(20), || {
            status_of(&t.site, &id).as_deref() == Some("SUCCESS")
        }),
        "the second run finished"
    );
    let rows = rows_for(&t.site, &id);
    assert!(recorded_by(&rows, &second), "{rows:?}");
    let (_, out) = first.stop();
    assert!(
        out.contains("this run stopped without recording anything"),
        "{out}"
    );
    let (status, out) = second.stop();
    assert_eq!(status.code(), Some(0), "{out}");
}

#[test]
fn sigterm_lets_the_running_task_finish_and_takes_no_other() {
    if !redis_available() {
        return;
    }
    let mut t = RedisSite::new(Backend::Sqlite);
    let log = slow_sacctmgr(&mut t.site, 3);
    let worker = t
        .site
        .serve("worker", &[("KEYSTONE_WORKER__CONCURRENCY", "1")]);
    let running = queue_task(&t.site, &["update-limits-cluster", "slowpoke"]);
    let waiting = queue_task(&t.site, &["update-limits-cluster", "slowpoke"]);
    assert!(wait_until(Duration::from_secs(15), || calls(&log) == 1));
    let started = Instant::now();
    let (status, out) = worker.stop();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "it waited for the task"
    );
    assert_eq!(status_of(&t.site, &running).as_deref(), Some("SUCCESS"));
    assert_eq!(status_of(&t.site, &waiting).as_deref(), Some("PENDING"));
    assert_eq!(calls(&log), 1, "no other task was started");

    // The waiting task is still queued for the next worker.
    let next = t.site.serve("worker", &[]);
    assert!(wait_until(Duration::from_secs(15), || {
        status_of(&t.site, &waiting).as_deref() == Some("SUCCESS")
    }));
    let (status, out) = next.stop();
    assert_eq!(status.code(), Some(0), "{out}");
    assert_eq!(calls(&log), 2);
}

/// While a worker's database does not answer, it takes no task: before, each fetched task
/// failed without running, every reclaim counted as a delivery, and once the database was
/// back the tasks were set aside as lost without ever having run.
#[test]
fn a_worker_takes_no_task_while_its_database_is_away() {
    if !redis_available() || !postgres_available() {
        return;
    }
    let mut t = RedisSite::new(Backend::Postgres);
    t.site
        .set("KEYSTONE_WORKER__VISIBILITY_TIMEOUT", "2")
        .set("KEYSTONE_WORKER__MAX_DELIVERIES", "2");
    let log = slow_sacctmgr(&mut t.site, 0);
    let mut relay = crate::common::relay::Relay::to_postgres();
    let port = relay.port.to_string();
    let worker = t.site.serve(
        "worker",
        &[
            ("KEYSTONE_DATABASE__HOST", "127.0.0.1"),
            ("KEYSTONE_DATABASE__PORT", &port),
        ],
    );
    relay.cut();
    // Past the fetch that may be waiting now: the next one finds the database away.
    std::thread::sleep(Duration::from_millis(1500));
    let ids: Vec<String> = (0..2)
        .map(|_| queue_task(&t.site, &["update-limits-cluster", "slowpoke"]))
        .collect();
    // Four visibility timeouts: enough for each task to be delivered past its budget.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(calls(&log), 0, "nothing ran while the database was away");
    relay.restore();
    let done = wait_until(Duration::from_secs(40), || {
        ids.iter()
            .all(|id| status_of(&t.site, id).as_deref() == Some("SUCCESS"))
    });
    let (status, out) = worker.stop();
    assert!(
        done,
        "both tasks ran once the database was back: {:?} {out}",
        task_rows(&t.site)
    );
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(
        out.contains("database unavailable; taking no tasks"),
        "{out}"
    );
}

/// Redis restarted without its data loses the queued messages: their rows would stay
/// PENDING forever. A worker's sweep records them as FAILURE (`WorkerLostError`) once they
/// have waited two visibility timeouts, and leaves alone what the queue still holds.
#[test]
fn rows_whose_messages_redis_lost_are_recorded_as_failures() {
    let Some(mut redis) = crate::common::redis::PrivateRedis::start() else {
        return;
    };
    let mut t = RedisSite::on(Backend::Sqlite, &redis.url());
    t.site.set("KEYSTONE_WORKER__VISIBILITY_TIMEOUT", "2");
    let log = slow_sacctmgr(&mut t.site, 0);
    let lost: Vec<String> = (0..2)
        .map(|_| queue_task(&t.site, &["update-limits-cluster", "slowpoke"]))
        .collect();
    assert_eq!(redis.cli(&["FLUSHALL"]), "OK");
    let worker = t.site.serve("worker", &[]);
    let kept = queue_task(&t.site, &["update-limits-cluster", "slowpoke"]);
    let swept = wait_until(Duration::from_secs(20), || {
        lost.iter()
            .all(|id| status_of(&t.site, id).as_deref() == Some("FAILURE"))
    });
    let (status, out) = worker.stop();
    assert!(swept, "{:?} {out}", task_rows(&t.site));
    assert_eq!(status.code(), Some(0), "{out}");
    for id in &lost {
        let result = rows_for(&t.site, id)[0].result.clone().unwrap_or_default();
        assert!(result.contains("WorkerLostError"), "{result}");
    }
    assert_eq!(status_of(&t.site, &kept).as_deref(), Some("SUCCESS"));
    assert_eq!(calls(&log), 1, "only the task the queue held ran");
    assert!(out.contains("no longer in the task queue"), "{out}");
}

/// `task run --wait` gives up after `--timeout` when no worker finishes the run (here none
/// runs; a message lost with Redis's data would wait the same way).
#[test]
fn task_run_wait_gives_up_after_its_timeout() {
    if !redis_available() {
        return;
    }
    let t = RedisSite::new(Backend::Sqlite);
    let started = Instant::now();
    let out = t.site.run(&[
        "task",
        "run",
        "update-limits-cluster",
        "nowhere",
        "--wait",
        "--timeout",
        "2",
    ]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("did not finish within 2 s (status PENDING)"),
        "{}",
        stderr(&out)
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    let bad = t.site.run(&["task", "run", "ldap-sync", "--timeout", "5"]);
    assert_eq!(bad.status.code(), Some(2), "--timeout needs --wait");
}

/// A run past `worker.time_limit` is stopped, its Slurm command killed, and recorded as
/// FAILURE (`TimeLimitExceeded`) without a retry; the slot is free for the next task.
#[test]
fn a_run_past_the_time_limit_is_stopped_and_recorded_as_failure() {
    if !redis_available() {
        return;
    }
    let mut t = RedisSite::new(Backend::Sqlite);
    let log = slow_sacctmgr(&mut t.site, 30);
    let worker = t.site.serve(
        "worker",
        &[
            ("KEYSTONE_WORKER__CONCURRENCY", "1"),
            ("KEYSTONE_WORKER__TIME_LIMIT", "2"),
            ("KEYSTONE_SHUTDOWN__GRACE_SECONDS", "1"),
        ],
    );
    let id = queue_task(&t.site, &["update-limits-cluster", "slowpoke"]);
    assert!(wait_until(Duration::from_secs(15), || calls(&log) == 1));
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(15), || {
            status_of(&t.site, &id).as_deref() == Some("FAILURE")
        }),
        "the run was stopped: {:?}",
        rows_for(&t.site, &id)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let rows = rows_for(&t.site, &id);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let result = rows[0].result.clone().unwrap_or_default();
    assert!(result.contains("TimeLimitExceeded"), "{result}");
    // The command it ran (the shell that recorded its pid) was killed.
    let pid: i32 = std::fs::read_to_string(&log)
        .expect("log")
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("pid");
    // SAFETY: kill(2) with signal 0 only checks whether the process exists.
    assert!(
        wait_until(Duration::from_secs(5), || unsafe { libc::kill(pid, 0) }
            != 0),
        "sacctmgr {pid} was killed"
    );
    // Not retried, and the slot is free again.
    let next = queue_task(&t.site, &["update-limits-cluster", "slowpoke"]);
    assert!(wait_until(Duration::from_secs(15), || calls(&log) == 2));
    assert_eq!(status_of(&t.site, &id).as_deref(), Some("FAILURE"));
    assert_eq!(status_of(&t.site, &next).as_deref(), Some("STARTED"));
    let (status, out) = worker.stop();
    assert!(out.contains("worker.time_limit"), "{out}");
    let _ = status;
}

/// Ctrl-C in a terminal sends SIGINT to the whole foreground process group: the worker
/// drains, and the Slurm command it runs (in a group of its own) is not interrupted.
#[test]
fn ctrl_c_lets_the_running_slurm_command_finish() {
    use std::os::unix::process::CommandExt;
    if !redis_available() {
        return;
    }
    let mut t = RedisSite::new(Backend::Sqlite);
    let log = slow_sacctmgr(&mut t.site, 2);
    let mut cmd = t.site.command(&["serve", "--role", "worker"]);
    cmd.env("KEYSTONE_WORKER__CONCURRENCY", "1")
        .process_group(0);
    let mut worker = Daemon::spawn(cmd, &t.site.path("."), None);
    let id = queue_task(&t.site, &["update-limits-cluster", "slowpoke"]);
    assert!(wait_until(Duration::from_secs(15), || calls(&log) == 1));
    // SAFETY: kill(2) on the process group the test made for the worker.
    unsafe {
        libc::kill(-(worker.child.id() as i32), libc::SIGINT);
    }
    let status = wait_exit(&mut worker.child, Duration::from_secs(30));
    let out = collect(&mut worker.child);
    assert_eq!(status.code(), Some(0), "{out}");
    assert_eq!(
        status_of(&t.site, &id).as_deref(),
        Some("SUCCESS"),
        "the command finished: {out}"
    );
}

#[test]
fn two_beats_enqueue_each_tick_once_across_a_failover() {
    if !redis_available() {
        return;
    }
    for backend in backends() {
        let mut t = RedisSite::new(backend);
        t.site
            .set("KEYSTONE_SCHEDULE__LDAP_SYNC", "* * * * * *")
            .set("KEYSTONE_BEAT__LEASE", "2");
        let a = t.site.serve("beat", &[]);
        let b = t.site.serve("beat", &[]);
        std::thread::sleep(Duration::from_secs(4));
        let leader_key = format!("{}:beat:leader", t.prefix);
        let token = t.probe.get(&leader_key).expect("a leader holds the lease");
        let (mut leader, standby) = if token.contains(&format!(":{}#", a.child.id())) {
            (a, b)
        } else {
            (b, a)
        };
        // The leader dies without releasing its lease: the standby takes over once it
        // expires, with a new fencing epoch.
        leader.signal(libc::SIGKILL);
        let _ = wait_exit(&mut leader.child, Duration::from_secs(10));
        let killed_at = chrono::Utc::now();
        assert!(
            wait_until(Duration::from_secs(10), || {
                t.probe
                    .get(&leader_key)
                    .is_some_and(|k| k.contains(&format!(":{}#", standby.child.id())))
            }),
            "{backend:?}: the standby became leader"
        );
        std::thread::sleep(Duration::from_secs(3));
        let (status, out) = standby.stop();
        assert_eq!(status.code(), Some(0), "{out}");
        assert!(out.contains("beat: leader"), "{out}");
        assert_eq!(
            t.probe.get(&leader_key),
            None,
            "the lease was released on stop"
        );

        let messages = t.probe.messages(&t.stream());
        let ticks: Vec<String> = messages
            .iter()
            .map(|m| {
                assert_eq!(m["task"], LDAP_SYNC);
                assert_eq!(m["periodic"], LDAP_SYNC);
                m["scheduled_for"].as_str().expect("tick time").to_string()
            })
            .collect();
        let distinct: BTreeSet<&String> = ticks.iter().collect();
        assert_eq!(
            distinct.len(),
            ticks.len(),
            "{backend:?}: a tick enqueued twice: {ticks:?}"
        );
        assert!(
            ticks.len() >= 5,
            "{backend:?}: ticks every second: {ticks:?}"
        );
        let after_failover = ticks
            .iter()
            .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .filter(|t| *t > killed_at)
            .count();
        assert!(
            after_failover >= 2,
            "{backend:?}: the new leader fired: {ticks:?}"
        );
        // Each queued tick has its PENDING row.
        let rows = task_rows(&t.site);
        assert_eq!(
            rows.iter()
                .filter(|r| r.periodic.as_deref() == Some(LDAP_SYNC) && r.status == "PENDING")
                .count(),
            ticks.len(),
            "{rows:?}"
        );
    }
}

/// A tick whose every push fails (here Redis refuses writes, out of memory, for longer
/// than beat's three attempts, while the lease stays valid) is tried again once Redis takes
/// writes again: it is enqueued, once, rather than lost.
#[test]
fn a_tick_beat_could_not_enqueue_is_retried_not_lost() {
    let Some(mut redis) = crate::common::redis::PrivateRedis::start() else {
        return;
    };
    let mut t = RedisSite::on(Backend::Sqlite, &redis.url());
    // One tick a minute, 12 s from now: pushes fail from 4 s before it until 6 s after.
    let tick = chrono::Utc::now() + chrono::Duration::seconds(12);
    let second = chrono::Timelike::second(&tick);
    t.site
        .set(
            "KEYSTONE_SCHEDULE__LDAP_SYNC",
            &format!("{second} * * * * *"),
        )
        .set("KEYSTONE_BEAT__LEASE", "60");
    let beat = t.site.serve("beat", &[]);
    let leader_key = format!("{}:beat:leader", t.prefix);
    assert!(
        wait_until(Duration::from_secs(5), || t
            .probe
            .get(&leader_key)
            .is_some()),
        "beat took the lease"
    );
    let until = |at: chrono::DateTime<chrono::Utc>| {
        if let Ok(d) = (at - chrono::Utc::now()).to_std() {
            std::thread::sleep(d);
        }
    };
    until(tick - chrono::Duration::seconds(4));
    assert_eq!(
        redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]),
        "OK"
    );
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory", "1"]), "OK");
    until(tick + chrono::Duration::seconds(6));
    assert!(
        t.probe.messages(&t.stream()).is_empty(),
        "no push got through while Redis refused writes"
    );
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory", "0"]), "OK");
    let enqueued = wait_until(Duration::from_secs(15), || {
        !t.probe.messages(&t.stream()).is_empty()
    });
    std::thread::sleep(Duration::from_secs(1));
    let (status, out) = beat.stop();
    assert!(
        enqueued,
        "the failed tick was enqueued once Redis took writes: {out}"
    );
    assert_eq!(status.code(), Some(0), "{out}");
    let messages = t.probe.messages(&t.stream());
    assert_eq!(messages.len(), 1, "{messages:?}");
    let at = chrono::DateTime::parse_from_rfc3339(
        messages[0]["scheduled_for"].as_str().expect("tick time"),
    )
    .expect("tick time");
    assert_eq!(
        at.timestamp(),
        tick.timestamp(),
        "the tick that failed, not a later one"
    );
    let rows = task_rows(&t.site);
    assert_eq!(
        rows.iter()
            .filter(|r| r.periodic.as_deref() == Some(LDAP_SYNC) && r.status == "PENDING")
            .count(),
        1,
        "{rows:?}"
    );
}

#[test]
fn worker_and_beat_reconnect_after_losing_redis() {
    if !redis_available() {
        return;
    }
    let mut t = RedisSite::new(Backend::Sqlite);
    let metrics_port = free_port();
    t.site
        .set("KEYSTONE_SCHEDULE__LDAP_SYNC", "* * * * * *")
        .set("KEYSTONE_METRICS__ENABLED", "true")
        .set("KEYSTONE_METRICS__PORTS", &metrics_port.to_string());
    let daemon = t.site.serve("all", &[]);
    let successes = |site: &Site| {
        task_rows(site)
            .iter()
            .filter(|r| r.periodic.as_deref() == Some(LDAP_SYNC) && r.status == "SUCCESS")
            .count()
    };
    assert!(wait_until(Duration::from_secs(15), || successes(&t.site) >= 2));

    let killed = t.probe.kill_connections_of(daemon.child.id());
    assert!(
        killed >= 2,
        "the worker's and beat's connections were closed ({killed})"
    );
    let before = successes(&t.site);
    let recovered = wait_until(Duration::from_secs(20), || successes(&t.site) >= before + 3);
    let mut daemon = daemon;
    assert!(
        daemon.child.try_wait().ok().flatten().is_none(),
        "the process kept running"
    );
    let metrics = crate::common::http::request(
        &format!("127.0.0.1:{metrics_port}"),
        "GET",
        "/metrics",
        &[],
        b"",
    );
    let (status, out) = daemon.stop();
    assert!(
        recovered,
        "ticks were enqueued and run again after the reconnect: {out}"
    );
    assert_eq!(status.code(), Some(0), "{out}");
    assert_eq!(
        t.probe.get(&format!("{}:beat:leader", t.prefix)),
        None,
        "beat released its lease on stop: {out}"
    );
    let body = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(
        body.contains(&format!(
            "keystone_tasks_total{{task=\"{LDAP_SYNC}\",status=\"SUCCESS\"}}"
        )),
        "{body}"
    );
    assert!(
        body.contains("keystone_queue_depth{state=\"ready\"}"),
        "{body}"
    );
    assert!(body.contains("keystone_task_duration_seconds"), "{body}");
}
