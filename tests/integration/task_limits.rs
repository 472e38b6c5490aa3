//! Slurm limit enforcement (operations.md §2.7; issues #6 and #8) through
//! `keystone task run update-limits --inline`, on both database backends, against the fake
//! `sacctmgr`/`sshare` of tests/fixtures/fake-slurm and against a real Slurm accounting stack
//! (/work/shared/slurm/start-local-slurm.sh, started once per test run).
//!
//! One case table (teams, allocations, Slurm accounts, expected `GrpTRESMins` afterwards) runs
//! against both; the fake alone also runs the cases real Slurm cannot produce (usage is always
//! 0 without `slurmd`, garbled output, a dead `slurmdbd`, slow commands). A transcript of
//! command lines with their exact stdout, stderr and exit codes keeps the fake honest: it is
//! checked against the fake always and against real Slurm when the stack can start.

use crate::common::*;
use crate::task_ldap::query;
use chrono::{Duration, NaiveDate, Utc};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};

const FAKE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fake-slurm");
const CLUSTER: &str = "testcluster";
const FOR_CLUSTER: &str = "apps.allocations.tasks.limits.update_limits_for_cluster";
const DISPATCHER: &str = "apps.allocations.tasks.limits.update_limits";
/// Debian packages the real stack needs (what `start-local-slurm.sh` would install).
const SLURM_PACKAGES: &str =
    "munge slurmdbd slurmctld slurm-client mariadb-server mariadb-client-core";

// ------------------------------------------------------------------------------------------
// Slurm: the fake or the real stack

/// Where Slurm commands go.
enum Slurm {
    Fake {
        _dir: tempfile::TempDir,
        state: PathBuf,
        log: PathBuf,
    },
    Real {
        conf: String,
        _serial: MutexGuard<'static, ()>,
    },
}

impl Slurm {
    fn fake() -> Slurm {
        assert!(
            Path::new("/usr/bin/python3").exists(),
            "the fake Slurm needs /usr/bin/python3 (Debian package python3)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("slurm-state.json");
        let log = dir.path().join("slurm-calls.log");
        Slurm::Fake {
            _dir: dir,
            state,
            log,
        }
    }

    /// The real stack, emptied of every account but `root`; `None` (after a skip message)
    /// when it cannot start. Holds a lock: real-Slurm tests share one stack and run one at
    /// a time.
    fn real() -> Option<Slurm> {
        let stack = real_stack()?;
        let serial = stack.serial.lock().unwrap_or_else(|e| e.into_inner());
        let slurm = Slurm::Real {
            conf: stack.conf.clone(),
            _serial: serial,
        };
        slurm.reset();
        Some(slurm)
    }

    fn is_fake(&self) -> bool {
        matches!(self, Slurm::Fake { .. })
    }

    /// Settings for a `keystone` that should use this Slurm.
    fn configure(&self, site: &mut Site) {
        match self {
            Slurm::Fake { state, log, .. } => {
                let path = format!("{FAKE_DIR}:{}", std::env::var("PATH").unwrap_or_default());
                site.set("PATH", &path)
                    .set("FAKE_SLURM_STATE", &state.display().to_string())
                    .set("FAKE_SLURM_LOG", &log.display().to_string());
            }
            Slurm::Real { conf, .. } => {
                site.set("SLURM_CONF", conf);
            }
        }
    }

    /// Runs `sacctmgr` or `sshare` (`args` split on spaces) as a test set-up step; the fake
    /// does not log these calls.
    fn tool(&self, tool: &str, args: &str) -> Output {
        let args: Vec<&str> = args.split(' ').filter(|a| !a.is_empty()).collect();
        let mut cmd = match self {
            Slurm::Fake { state, .. } => {
                let mut c = Command::new(Path::new(FAKE_DIR).join(tool));
                c.env("FAKE_SLURM_STATE", state)
                    .env_remove("FAKE_SLURM_LOG");
                c
            }
            Slurm::Real { conf, .. } => {
                let mut c = Command::new(tool);
                c.env("SLURM_CONF", conf);
                c
            }
        };
        cmd.args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run a Slurm command")
    }

    /// A set-up step that must succeed.
    fn ok(&self, tool: &str, args: &str) {
        let out = self.tool(tool, args);
        assert!(
            out.status.success(),
            "{tool} {args}: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }

    /// Sets the raw billing usage sshare reports (only the fake can; real usage stays 0).
    fn set_usage(&self, account: &str, minutes: i64) {
        self.fake_admin(&["set-usage", account, CLUSTER, &minutes.to_string()]);
    }

    fn fake_admin(&self, args: &[&str]) {
        let Slurm::Fake { state, .. } = self else {
            panic!("only the fake Slurm can do {args:?}");
        };
        let out = Command::new(Path::new(FAKE_DIR).join("fake_slurm.py"))
            .args(args)
            .env("FAKE_SLURM_STATE", state)
            .output()
            .expect("fake_slurm.py");
        assert!(
            out.status.success(),
            "fake_slurm.py {args:?}: {}",
            stderr(&out)
        );
    }

    /// `GrpTRESMins` of the account's associations, exactly as `sacctmgr` prints them.
    fn limits(&self, account: &str) -> String {
        let out = self.tool(
            "sacctmgr",
            &format!(
                "show -nP association where account={account} cluster={CLUSTER} format=GrpTRESMins"
            ),
        );
        assert!(out.status.success(), "show association: {}", stderr(&out));
        stdout(&out)
    }

    /// The command lines `keystone` ran (fake only).
    fn calls(&self) -> Vec<String> {
        let Slurm::Fake { log, .. } = self else {
            panic!("only the fake Slurm records calls");
        };
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let argv: Vec<String> = serde_json::from_str(l).expect("log line");
                argv.join(" ")
            })
            .collect()
    }

    /// Deletes every account but `root` and clears `root`'s limit.
    fn reset(&self) {
        let out = self.tool(
            "sacctmgr",
            &format!(
                "show -nP account withassoc where parents=root format=Account cluster={CLUSTER}"
            ),
        );
        let others: Vec<String> = stdout(&out)
            .split_whitespace()
            .filter(|a| *a != "root")
            .map(str::to_string)
            .collect();
        if !others.is_empty() {
            self.ok(
                "sacctmgr",
                &format!("-i delete account {}", others.join(",")),
            );
        }
        self.ok(
            "sacctmgr",
            &format!(
                "-i modify account where account=root cluster={CLUSTER} set GrpTresMins=billing=-1"
            ),
        );
    }
}

// ------------------------------------------------------------------------------------------
// The real stack: started once per test run, stopped when the test binary exits

struct RealStack {
    dir: PathBuf,
    scripts: PathBuf,
    conf: String,
    db_name: String,
    serial: Mutex<()>,
}

static REAL: OnceLock<Option<RealStack>> = OnceLock::new();

fn real_stack() -> Option<&'static RealStack> {
    REAL.get_or_init(|| match start_real_stack() {
        Ok(stack) => {
            // SAFETY: registers a plain `extern "C" fn` with the C library.
            unsafe {
                libc::atexit(stop_real_stack);
            }
            Some(stack)
        }
        Err(why) => {
            unavailable("slurm", &why);
            None
        }
    })
    .as_ref()
}

fn scripts_dir() -> PathBuf {
    std::env::var_os("KEYSTONE_TEST_SLURM_SCRIPTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/slurm"))
}

fn on_path(name: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|d| Path::new(d).join(name).is_file())
}

/// What `start-local-slurm.sh` needs that it would otherwise install or cannot have.
fn real_prerequisites(scripts: &Path) -> Result<(), String> {
    if !scripts.join("start-local-slurm.sh").is_file() {
        return Err(format!(
            "{} not found (set KEYSTONE_TEST_SLURM_SCRIPTS to the folder holding start-local-slurm.sh)",
            scripts.join("start-local-slurm.sh").display()
        ));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("start-local-slurm.sh must run as root".into());
    }
    let mut missing = Vec::new();
    for (program, package) in [
        ("sacctmgr", "slurm-client"),
        ("sshare", "slurm-client"),
        ("slurmctld", "slurmctld"),
        ("slurmdbd", "slurmdbd"),
        ("munged", "munge"),
        ("mysql", "mariadb-client-core"),
    ] {
        if !on_path(program) && !missing.contains(&package) {
            missing.push(package);
        }
    }
    let db_port = std::env::var("SLURM_TEST_DB_PORT").unwrap_or_else(|_| "3306".into());
    let db_up = std::net::TcpStream::connect(format!("127.0.0.1:{db_port}")).is_ok();
    if !db_up && !on_path("mariadbd") {
        missing.push("mariadb-server");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "Debian packages missing: {} (apt-get install -y --no-install-recommends {SLURM_PACKAGES})",
            missing.join(" ")
        ))
    }
}

fn start_real_stack() -> Result<RealStack, String> {
    let scripts = scripts_dir();
    real_prerequisites(&scripts)?;
    let dir = tempfile::Builder::new()
        .prefix("keystone-slurm-")
        .tempdir_in("/tmp")
        .map_err(|e| format!("temp dir: {e}"))?
        .keep();
    // Own ports and database, so another test run on this machine does not collide.
    let mut ports = Vec::new();
    while ports.len() < 3 {
        let p = free_port();
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    let db_name = format!("keystone_slurm_{}", std::process::id());
    let out = Command::new("bash")
        .arg(scripts.join("start-local-slurm.sh"))
        .arg(&dir)
        .env("SLURM_TEST_CTLD_PORT", ports[0].to_string())
        .env("SLURM_TEST_SLURMD_PORT", ports[1].to_string())
        .env("SLURM_TEST_DBD_PORT", ports[2].to_string())
        .env("SLURM_TEST_DB_NAME", &db_name)
        .env("SLURM_TEST_CLUSTER", CLUSTER)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run start-local-slurm.sh: {e}"))?;
    let conf = stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix("export SLURM_CONF="))
        .map(str::to_string);
    let stack = RealStack {
        dir,
        scripts,
        conf: conf.clone().unwrap_or_default(),
        db_name,
        serial: Mutex::new(()),
    };
    match conf {
        Some(_) if out.status.success() => Ok(stack),
        _ => {
            let log = stderr(&out);
            stack.stop();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            Err(format!(
                "start-local-slurm.sh failed ({}):\n{}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ))
        }
    }
}

impl RealStack {
    /// Stops the daemons, drops the accounting database and removes the folder.
    fn stop(&self) {
        let _ = Command::new("bash")
            .arg(self.scripts.join("stop-local-slurm.sh"))
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let drop = format!("DROP DATABASE IF EXISTS `{}`", self.db_name);
        for protocol in [
            &["--protocol=tcp", "-h", "127.0.0.1"][..],
            &["--protocol=socket"],
        ] {
            let done = Command::new("mysql")
                .args(protocol)
                .args(["-u", "root", "--batch", "-e", &drop])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if done {
                break;
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

extern "C" fn stop_real_stack() {
    if let Some(Some(stack)) = REAL.get() {
        stack.stop();
    }
}

// ------------------------------------------------------------------------------------------
// Keystone data

/// Teams, clusters, requests and resource allocations, written as SQL with fixed ids.
struct Data {
    sql: String,
    teams: i64,
    requests: i64,
    allocations: i64,
}

/// One resource allocation: request status, awarded, final, request active/expire in days
/// from today (`None` = null), and the cluster id.
#[derive(Clone, Copy)]
struct Alloc {
    status: &'static str,
    awarded: Option<i64>,
    final_value: Option<i64>,
    active: Option<i64>,
    expire: Option<i64>,
    cluster: i64,
}

/// An approved allocation on the test cluster (id 1).
const fn ap(awarded: i64, final_value: Option<i64>, active: i64, expire: i64) -> Alloc {
    Alloc {
        status: "AP",
        awarded: Some(awarded),
        final_value,
        active: Some(active),
        expire: Some(expire),
        cluster: 1,
    }
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

fn date(offset: Option<i64>) -> String {
    match offset {
        Some(d) => format!("'{}'", today() + Duration::days(d)),
        None => "NULL".into(),
    }
}

fn opt(v: Option<i64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "NULL".into())
}

impl Data {
    /// A submitter and the clusters: `testcluster` (id 1, enabled) plus `extra`
    /// (name, enabled) from id 2 on.
    fn new(extra: &[(&str, bool)]) -> Data {
        let mut sql = String::from(
            "INSERT INTO users_user (id, password, username) VALUES (1, '!', 'submitter');\n",
        );
        sql += &format!(
            "INSERT INTO allocations_cluster (id, name, enabled) VALUES (1, '{CLUSTER}', TRUE);\n"
        );
        for (i, (name, enabled)) in extra.iter().enumerate() {
            sql += &format!(
                "INSERT INTO allocations_cluster (id, name, enabled) VALUES ({}, '{name}', {});\n",
                i + 2,
                if *enabled { "TRUE" } else { "FALSE" }
            );
        }
        Data {
            sql,
            teams: 0,
            requests: 0,
            allocations: 0,
        }
    }

    fn team(&mut self, slug: &str, active: bool) -> i64 {
        self.teams += 1;
        self.sql += &format!(
            "INSERT INTO users_team (id, name, slug, is_active) VALUES ({id}, 'Team {slug}', '{slug}', {});\n",
            if active { "TRUE" } else { "FALSE" },
            id = self.teams
        );
        self.teams
    }

    /// One request with one allocation; returns the allocation id.
    fn allocation(&mut self, team: i64, a: Alloc) -> i64 {
        self.requests += 1;
        self.allocations += 1;
        self.sql += &format!(
            "INSERT INTO allocations_allocationrequest (id, title, description, active, expire, status, submitter_id, team_id) \
             VALUES ({r}, 'Request {r}', 'Compute', {}, {}, '{}', 1, {team});\n\
             INSERT INTO allocations_resourceallocation (id, requested, awarded, final, cluster_id, request_id) \
             VALUES ({id}, 1, {}, {}, {}, {r});\n",
            date(a.active),
            date(a.expire),
            a.status,
            opt(a.awarded),
            opt(a.final_value),
            a.cluster,
            r = self.requests,
            id = self.allocations
        );
        self.allocations
    }
}

/// `final` of every allocation, by id.
fn finals(site: &Site) -> Vec<Option<i64>> {
    query(
        site,
        "SELECT COALESCE(CAST(final AS TEXT), '-') FROM allocations_resourceallocation ORDER BY id",
    )
    .iter()
    .map(|v| v.parse().ok())
    .collect()
}

/// A recorded task run.
#[derive(Debug)]
struct TaskRow {
    name: String,
    args: Value,
    status: String,
    result: Value,
    meta: Value,
}

impl TaskRow {
    fn errors(&self) -> Vec<String> {
        self.meta["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn task_rows(site: &Site) -> Vec<TaskRow> {
    query(
        site,
        "SELECT task_name || '\u{1f}' || COALESCE(task_args, 'null') || '\u{1f}' || status || '\u{1f}' || \
         COALESCE(result, 'null') || '\u{1f}' || COALESCE(meta, '{}') \
         FROM django_celery_results_taskresult ORDER BY id",
    )
    .iter()
    .map(|row| {
        let f: Vec<&str> = row.split('\u{1f}').collect();
        let json = |s: &str| serde_json::from_str(s).unwrap_or(Value::Null);
        TaskRow {
            name: f[0].to_string(),
            args: json(f[1]),
            status: f[2].to_string(),
            result: json(f[3]),
            meta: json(f[4]),
        }
    })
    .collect()
}

/// A migrated site using `slurm`, with `data` loaded.
fn site_with(backend: Backend, slurm: &Slurm, data: &Data) -> Site {
    let mut site = Site::new(backend);
    slurm.configure(&mut site);
    site.migrate();
    site.sql(&data.sql);
    site
}

/// Runs `keystone task run <args> --inline`; returns (exit code, stdout + stderr).
fn run_task(site: &Site, args: &[&str]) -> (i32, String) {
    let mut argv = vec!["task", "run"];
    argv.extend_from_slice(args);
    argv.push("--inline");
    let out = site.run(&argv);
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

// ------------------------------------------------------------------------------------------
// The case table

/// The Slurm side of one case.
#[derive(Clone, Copy)]
enum Account {
    /// No Slurm account at all.
    Absent,
    /// The account exists but its association on the cluster was deleted (Slurm still lists
    /// it among the accounts).
    NoAssociation,
    /// An association under `root`, with this `GrpTresMins` (if any), the user `root` in it
    /// (a child row in `sshare`, another line in `show association`) and this raw billing
    /// usage in minutes (non-zero only on the fake).
    Assoc {
        limit: Option<&'static str>,
        root_user: bool,
        usage: i64,
    },
}

#[derive(Clone, Copy)]
enum Expect {
    /// `show association … format=GrpTRESMins` prints exactly this afterwards.
    Limits(&'static str),
    /// It prints what it printed before the run.
    Unchanged,
}

struct Case {
    slug: &'static str,
    /// The Keystone team: `None` = no team, `Some(is_active)`.
    team: Option<bool>,
    account: Account,
    allocations: &'static [Alloc],
    limits: Expect,
    /// `final` of each allocation afterwards.
    finals: &'static [Option<i64>],
    /// A `meta.errors` entry of the cluster run contains this (and names the account).
    error: Option<&'static str>,
}

const fn assoc(limit: Option<&'static str>, usage: i64) -> Account {
    Account::Assoc {
        limit,
        root_user: false,
        usage,
    }
}

/// Cases real Slurm can reproduce (usage 0): run against the fake and the real stack.
const SHARED: &[Case] = &[
    // Example 8: the expired allocation gets final 0; a pending request and an allocation
    // on a disabled cluster count for nothing; `root` is a child user of the account.
    Case {
        slug: "expired",
        team: Some(true),
        account: Account::Assoc {
            limit: Some("billing=90000"),
            root_user: true,
            usage: 0,
        },
        allocations: &[
            ap(500, None, -400, -30),
            ap(1000, None, -30, 335),
            Alloc {
                status: "PD",
                ..ap(700, None, -30, 335)
            },
            Alloc {
                cluster: 2,
                ..ap(900, None, -30, 335)
            },
        ],
        limits: Expect::Limits("billing=60000\n\n"),
        finals: &[Some(0), None, None, None],
        error: None,
    },
    // An expired allocation with a final value: current usage falls back to historical.
    Case {
        slug: "finalised",
        team: Some(true),
        account: assoc(Some("billing=30000"), 0),
        allocations: &[ap(300, Some(200), -400, -35), ap(300, None, -30, 335)],
        limits: Expect::Limits("billing=30000\n"),
        finals: &[Some(200), None],
        error: None,
    },
    // Example 13: an inactive team is locked at its current usage; no final is written.
    Case {
        slug: "inactive",
        team: Some(false),
        account: assoc(Some("billing=18000"), 0),
        allocations: &[ap(100, None, -400, -35), ap(200, None, -30, 335)],
        limits: Expect::Limits("billing=0\n"),
        finals: &[None, None],
        error: None,
    },
    // A Slurm account with no Keystone team is left alone.
    Case {
        slug: "orphan",
        team: None,
        account: assoc(Some("billing=6000"), 0),
        allocations: &[],
        limits: Expect::Unchanged,
        finals: &[],
        error: None,
    },
    // A fresh account (no limit) with an open-ended allocation.
    Case {
        slug: "fresh",
        team: Some(true),
        account: assoc(None, 0),
        allocations: &[Alloc {
            expire: None,
            ..ap(100, None, -5, 0)
        }],
        limits: Expect::Limits("billing=6000\n"),
        finals: &[None],
        error: None,
    },
    // The billing item is read wherever it stands; other TRES limits are kept.
    Case {
        slug: "multitres",
        team: Some(true),
        account: assoc(Some("cpu=100,billing=6000"), 0),
        allocations: &[ap(250, None, -10, 100)],
        limits: Expect::Limits("billing=15000,cpu=100\n"),
        finals: &[None],
        error: None,
    },
    // Listed by Slurm but without an association: `sacctmgr modify` answers
    // " Nothing modified" with exit code 1; recorded, the others go on.
    Case {
        slug: "noassoc",
        team: Some(true),
        account: Account::NoAssociation,
        allocations: &[ap(100, None, -30, 335)],
        limits: Expect::Limits(""),
        finals: &[None],
        error: Some(
            "Error executing shell command: sacctmgr modify -i account where account=noassoc cluster=testcluster set GrpTresMins=billing=6000 \n Nothing modified",
        ),
    },
    // A Keystone team with allocations but no Slurm account: reported, the others go on.
    Case {
        slug: "missing",
        team: Some(true),
        account: Account::Absent,
        allocations: &[ap(100, None, -30, 335)],
        limits: Expect::Limits(""),
        finals: &[None],
        error: Some(
            "Team 'missing' has allocations on cluster 'testcluster' but no Slurm account there",
        ),
    },
    // `root` is never touched, even with a team of that slug.
    Case {
        slug: "root",
        team: Some(true),
        account: Account::Assoc {
            limit: Some("billing=6000"),
            root_user: false,
            usage: 0,
        },
        allocations: &[ap(100, None, -30, 335)],
        limits: Expect::Unchanged,
        finals: &[None],
        error: None,
    },
];

/// The worked examples of §2.7.3 that need usage, and output only the fake can give.
const FAKE_ONLY: &[Case] = &[
    Case {
        slug: "ex2",
        team: Some(true),
        account: assoc(Some("billing=3000"), 200 * 60),
        allocations: &[ap(200, Some(50), -400, -35), ap(300, None, -30, 335)],
        limits: Expect::Limits("billing=21000\n"),
        finals: &[Some(50), None],
        error: None,
    },
    Case {
        slug: "ex3",
        team: Some(true),
        account: assoc(Some("billing=90000"), 350 * 60),
        allocations: &[ap(500, None, -400, -10), ap(1000, None, -30, 335)],
        limits: Expect::Limits("billing=81000\n"),
        finals: &[Some(350), None],
        error: None,
    },
    Case {
        slug: "ex6",
        team: Some(true),
        account: Account::Assoc {
            limit: Some("billing=30000"),
            root_user: true,
            usage: 250 * 60 + 59,
        },
        allocations: &[
            ap(200, Some(100), -400, -40),
            ap(100, None, -400, -10),
            ap(100, None, -400, -30),
            ap(100, None, -400, -20),
            ap(100, None, -30, 400),
        ],
        limits: Expect::Limits("billing=21000\n\n"),
        finals: &[Some(100), Some(0), Some(100), Some(50), None],
        error: None,
    },
    Case {
        slug: "ex7",
        team: Some(true),
        account: assoc(Some("billing=90000"), 800 * 60),
        allocations: &[
            ap(200, None, -400, -30),
            ap(300, None, -400, -20),
            ap(1000, None, -30, 335),
        ],
        limits: Expect::Limits("billing=90000\n"),
        finals: &[Some(200), Some(300), None],
        error: None,
    },
    Case {
        slug: "ex10",
        team: Some(true),
        account: assoc(Some("billing=6000"), 180 * 60),
        allocations: &[ap(50, None, -400, -35), ap(200, None, -30, 335)],
        limits: Expect::Limits("billing=15000\n"),
        finals: &[Some(50), None],
        error: None,
    },
    Case {
        slug: "ex12",
        team: Some(false),
        account: assoc(Some("billing=30000"), 250 * 60),
        allocations: &[ap(100, None, -400, -35), ap(300, None, -30, 335)],
        limits: Expect::Limits("billing=9000\n"),
        finals: &[None, None],
        error: None,
    },
    Case {
        slug: "ex14",
        team: Some(false),
        account: assoc(Some("billing=30000"), 50 * 60),
        allocations: &[ap(300, Some(200), -400, -35), ap(300, None, -30, 335)],
        limits: Expect::Limits("billing=12000\n"),
        finals: &[Some(200), None],
        error: None,
    },
    // A billing value that is not a number fails the account, naming the raw line.
    Case {
        slug: "garbled",
        team: Some(true),
        account: assoc(None, 0),
        allocations: &[ap(500, None, -400, -30), ap(100, None, -30, 335)],
        limits: Expect::Unchanged,
        finals: &[None, None],
        error: Some(
            "Cannot read the billing value from the output of `sacctmgr show -nP association where account=garbled cluster=testcluster format=GrpTRESMins`: the billing value is not a whole number of minutes: \"billing=12x0\"",
        ),
    },
    // An expiring allocation without an awarded amount: nothing is written for the account.
    Case {
        slug: "noaward",
        team: Some(true),
        account: assoc(Some("billing=6000"), 60 * 60),
        allocations: &[
            ap(100, None, -400, -40),
            Alloc {
                awarded: None,
                ..ap(0, None, -400, -30)
            },
            ap(100, None, -30, 335),
        ],
        limits: Expect::Unchanged,
        finals: &[None, None, None],
        error: Some("has expired but has no awarded amount"),
    },
];

/// Sets up Slurm and Keystone for `cases`, runs `update-limits` and checks every case.
fn run_cases(backend: Backend, slurm: &Slurm, cases: &[&Case]) {
    let mut data = Data::new(&[("archive", false)]);
    let mut alloc_ids = Vec::new();
    for case in cases {
        let team = case.team.map(|active| data.team(case.slug, active));
        let ids: Vec<i64> = case
            .allocations
            .iter()
            .map(|a| data.allocation(team.expect("allocations need a team"), *a))
            .collect();
        alloc_ids.push(ids);
        match case.account {
            Account::Absent => {}
            Account::NoAssociation => {
                slurm.ok(
                    "sacctmgr",
                    &format!("-i add account {} cluster={CLUSTER} parent=root", case.slug),
                );
                slurm.ok(
                    "sacctmgr",
                    &format!("-i delete account {} cluster={CLUSTER}", case.slug),
                );
            }
            Account::Assoc {
                limit,
                root_user,
                usage,
            } => {
                if case.slug != "root" {
                    slurm.ok(
                        "sacctmgr",
                        &format!("-i add account {} cluster={CLUSTER} parent=root", case.slug),
                    );
                }
                if let Some(limit) = limit {
                    slurm.ok(
                        "sacctmgr",
                        &format!(
                            "-i modify account where account={} cluster={CLUSTER} set GrpTresMins={limit}",
                            case.slug
                        ),
                    );
                }
                if root_user {
                    slurm.ok(
                        "sacctmgr",
                        &format!("-i add user root account={} cluster={CLUSTER}", case.slug),
                    );
                }
                if usage != 0 {
                    slurm.set_usage(case.slug, usage);
                }
            }
        }
        if case.slug == "garbled" {
            slurm.fake_admin(&["set-raw-limit", "garbled", CLUSTER, "billing=12x0"]);
        }
    }
    let before: Vec<String> = cases.iter().map(|c| slurm.limits(c.slug)).collect();

    let site = site_with(backend, slurm, &data);
    let (code, output) = run_task(&site, &["update-limits"]);
    assert_eq!(code, 0, "update-limits: {output}");

    let rows = task_rows(&site);
    let parent = rows
        .iter()
        .find(|r| r.name == DISPATCHER)
        .unwrap_or_else(|| panic!("no dispatcher row in {rows:?}"));
    assert_eq!(parent.status, "SUCCESS", "{parent:?}");
    let runs: Vec<&TaskRow> = rows.iter().filter(|r| r.name == FOR_CLUSTER).collect();
    // One sub-task, for the enabled cluster only.
    assert_eq!(runs.len(), 1, "{rows:?}");
    let run = runs[0];
    assert_eq!(run.args, serde_json::json!([CLUSTER]));
    assert_eq!(run.status, "SUCCESS", "{run:?}");
    assert_eq!(run.result, Value::Null, "{run:?}");
    assert_eq!(parent.meta["children"].as_array().map(Vec::len), Some(1));

    let errors = run.errors();
    let finals_now = finals(&site);
    for (i, case) in cases.iter().enumerate() {
        let after = slurm.limits(case.slug);
        match case.limits {
            Expect::Limits(text) => {
                assert_eq!(after, text, "{}: GrpTRESMins after the run", case.slug)
            }
            Expect::Unchanged => {
                assert_eq!(after, before[i], "{}: GrpTRESMins changed", case.slug)
            }
        }
        let got: Vec<Option<i64>> = alloc_ids[i]
            .iter()
            .map(|id| finals_now[(*id - 1) as usize])
            .collect();
        assert_eq!(got, case.finals, "{}: finals", case.slug);
        let mine: Vec<&String> = errors
            .iter()
            .filter(|e| e.contains(&format!("'{}'", case.slug)))
            .collect();
        match case.error {
            Some(text) => assert!(
                mine.iter().any(|e| e.contains(text)),
                "{}: no error containing {text:?} in {errors:#?}",
                case.slug
            ),
            None => assert!(mine.is_empty(), "{}: unexpected {mine:?}", case.slug),
        }
    }
    let expected_errors = cases.iter().filter(|c| c.error.is_some()).count();
    assert_eq!(errors.len(), expected_errors, "{errors:#?}");

    if slurm.is_fake() {
        // `root` is never asked about, whatever team exists; teamless accounts neither.
        for call in slurm.calls() {
            assert!(
                !call.contains("account=root ")
                    && !call.contains("-A root ")
                    && !call.contains("account=orphan ")
                    && !call.contains("-A orphan "),
                "{call}"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// Tests: fake Slurm

#[test]
fn limits_follow_the_spec_arithmetic_with_fake_slurm() {
    let cases: Vec<&Case> = SHARED.iter().chain(FAKE_ONLY).collect();
    for backend in backends() {
        run_cases(backend, &Slurm::fake(), &cases);
    }
}

#[test]
fn commands_are_the_contract_ones_in_order() {
    for backend in backends() {
        let slurm = Slurm::fake();
        slurm.ok(
            "sacctmgr",
            "-i add account team-a cluster=testcluster parent=root",
        );
        slurm.ok(
            "sacctmgr",
            "-i add account other cluster=testcluster parent=root",
        );
        slurm.set_usage("team-a", 150 * 60);
        let mut data = Data::new(&[]);
        let team = data.team("team-a", true);
        data.allocation(team, ap(400, None, -30, 100));
        let site = site_with(backend, &slurm, &data);
        let (code, output) = run_task(&site, &["update-limits-cluster", CLUSTER]);
        assert_eq!(code, 0, "{output}");
        assert_eq!(
            slurm.calls(),
            vec![
                "sacctmgr show -nP account withassoc where parents=root format=Account cluster=testcluster",
                "sacctmgr show -nP association where account=team-a cluster=testcluster format=GrpTRESMins",
                "sshare -nP -A team-a -M testcluster --format=GrpTRESRaw",
                "sacctmgr modify -i account where account=team-a cluster=testcluster set GrpTresMins=billing=24000",
            ]
        );
        assert_eq!(slurm.limits("team-a"), "billing=24000\n");
        // A second run with the same usage writes the same limit.
        let (code, _) = run_task(&site, &["update-limits-cluster", CLUSTER]);
        assert_eq!(code, 0);
        assert_eq!(slurm.limits("team-a"), "billing=24000\n");
    }
}

#[test]
fn one_sub_task_per_enabled_cluster() {
    for backend in backends() {
        let slurm = Slurm::fake();
        for c in ["gpu", "cpu", "retired"] {
            slurm.ok("sacctmgr", &format!("-i add cluster {c}"));
        }
        let data = Data::new(&[("gpu", true), ("cpu", true), ("retired", false)]);
        let site = site_with(backend, &slurm, &data);
        let (code, output) = run_task(&site, &["update-limits"]);
        assert_eq!(code, 0, "{output}");
        let rows = task_rows(&site);
        let mut clusters: Vec<String> = rows
            .iter()
            .filter(|r| r.name == FOR_CLUSTER)
            .map(|r| {
                assert_eq!(r.status, "SUCCESS", "{r:?}");
                r.args[0].as_str().unwrap_or_default().to_string()
            })
            .collect();
        clusters.sort();
        assert_eq!(clusters, ["cpu", "gpu", CLUSTER]);
        let parent = rows.iter().find(|r| r.name == DISPATCHER).expect("parent");
        assert_eq!(parent.status, "SUCCESS");
        assert_eq!(parent.meta["children"].as_array().map(Vec::len), Some(3));
        let mut listed: Vec<String> = slurm
            .calls()
            .iter()
            .filter_map(|c| c.strip_prefix("sacctmgr show -nP account withassoc where parents=root format=Account cluster=").map(str::to_string))
            .collect();
        listed.sort();
        assert_eq!(listed, ["cpu", "gpu", CLUSTER]);
    }
}

#[test]
fn an_unknown_cluster_is_logged_and_succeeds() {
    for backend in backends() {
        let slurm = Slurm::fake();
        let site = site_with(backend, &slurm, &Data::new(&[]));
        let (code, output) = run_task(&site, &["update-limits-cluster", "nosuch"]);
        assert_eq!(code, 0, "{output}");
        let rows = task_rows(&site);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].status, "SUCCESS");
        assert_eq!(rows[0].args, serde_json::json!(["nosuch"]));
        assert!(slurm.calls().is_empty(), "{:?}", slurm.calls());
    }
}

#[test]
fn a_failed_account_listing_fails_the_run_with_the_command_and_message() {
    for backend in backends() {
        let slurm = Slurm::fake();
        slurm.fake_admin(&["down"]);
        let site = site_with(backend, &slurm, &Data::new(&[]));
        let (code, output) = run_task(&site, &["update-limits-cluster", CLUSTER]);
        assert_eq!(code, 1, "{output}");
        let rows = task_rows(&site);
        assert_eq!(rows[0].status, "FAILURE");
        assert_eq!(rows[0].result["exc_type"], "RuntimeError");
        assert_eq!(
            rows[0].result["exc_message"][0],
            "Error executing shell command: sacctmgr show -nP account withassoc where parents=root format=Account cluster=testcluster \n sacctmgr: error: slurm_persist_conn_open_without_init: failed to open persistent connection to host:localhost:6819: Connection refused\nsacctmgr: error: Sending PersistInit msg: Connection refused"
        );
    }
}

#[test]
fn slow_commands_are_killed_after_the_timeout_and_the_others_continue() {
    let slurm = Slurm::fake();
    slurm.ok(
        "sacctmgr",
        "-i add account slow1 cluster=testcluster parent=root",
    );
    slurm.ok(
        "sacctmgr",
        "-i add account slow2 cluster=testcluster parent=root",
    );
    slurm.fake_admin(&["delay", "sshare", "5"]);
    let mut data = Data::new(&[]);
    for slug in ["slow1", "slow2"] {
        let team = data.team(slug, true);
        data.allocation(team, ap(100, None, -30, 100));
    }
    let mut site = Site::new(Backend::Sqlite);
    slurm.configure(&mut site);
    site.set("KEYSTONE_SLURM__TIMEOUT", "1");
    site.migrate();
    site.sql(&data.sql);
    let started = std::time::Instant::now();
    let (code, output) = run_task(&site, &["update-limits-cluster", CLUSTER]);
    assert_eq!(code, 0, "{output}");
    assert!(started.elapsed() < std::time::Duration::from_secs(8));
    let rows = task_rows(&site);
    assert_eq!(rows[0].status, "SUCCESS");
    assert_eq!(
        rows[0].errors(),
        ["slow1", "slow2"].map(|a| format!(
            "Failed to update limit for account '{a}' on cluster 'testcluster': Error executing shell command: sshare -nP -A {a} -M testcluster --format=GrpTRESRaw \n killed after 1 s (slurm.timeout)"
        ))
    );
    assert_eq!(slurm.limits("slow1"), "\n");
}

#[test]
fn binaries_come_from_the_configured_paths() {
    let slurm = Slurm::fake();
    slurm.ok(
        "sacctmgr",
        "-i add account team-b cluster=testcluster parent=root",
    );
    let mut data = Data::new(&[]);
    let team = data.team("team-b", true);
    data.allocation(team, ap(42, None, -30, 100));
    let mut site = Site::new(Backend::Sqlite);
    slurm.configure(&mut site);
    // Not on PATH: only the configured paths can reach the fake.
    site.set("PATH", "/usr/bin:/bin")
        .set("KEYSTONE_SLURM__SACCTMGR", &format!("{FAKE_DIR}/sacctmgr"))
        .set("KEYSTONE_SLURM__SSHARE", &format!("{FAKE_DIR}/sshare"));
    site.migrate();
    site.sql(&data.sql);
    let (code, output) = run_task(&site, &["update-limits-cluster", CLUSTER]);
    assert_eq!(code, 0, "{output}");
    assert_eq!(task_rows(&site)[0].errors(), Vec::<String>::new());
    assert_eq!(slurm.limits("team-b"), "billing=2520\n");
    assert_eq!(slurm.calls().len(), 4);
}

// ------------------------------------------------------------------------------------------
// Tests: real Slurm, and the fake checked against it

#[test]
fn limits_follow_the_spec_arithmetic_with_real_slurm() {
    let Some(slurm) = Slurm::real() else {
        return;
    };
    let cases: Vec<&Case> = SHARED.iter().collect();
    for backend in backends() {
        slurm.reset();
        run_cases(backend, &slurm, &cases);
    }
}

/// (tool, arguments, exit code, stdout, stderr) as real Slurm 22.05 answers them on a fresh
/// stack; the fake must answer the same.
const TRANSCRIPT: &[(&str, &str, i32, &str, &str)] = &[
    (
        "sacctmgr",
        "-i add account tx1 cluster=testcluster parent=root",
        0,
        " Adding Account(s)\n  tx1\n Settings\n  Description     = Account Name\n  Organization    = Parent/Account Name\n Associations\n  A = tx1        C = testcluste\n Settings\n  Parent        = root\n",
        "",
    ),
    (
        "sacctmgr",
        "-i add account tx1 cluster=testcluster parent=root",
        1,
        " Nothing new added.\n",
        "",
    ),
    (
        "sacctmgr",
        "-i add account tx3,tx2 cluster=testcluster",
        0,
        " Adding Account(s)\n  tx3\n  tx2\n Settings\n  Description     = Account Name\n  Organization    = Parent/Account Name\n Associations\n  A = tx3        C = testcluste\n  A = tx2        C = testcluste\n",
        "",
    ),
    (
        "sacctmgr",
        "-i add user root account=tx1 cluster=testcluster",
        0,
        " Associations =\n  U = root      A = tx1        C = testcluste\n Non Default Settings\n",
        "",
    ),
    (
        "sacctmgr",
        "show -nP account withassoc where parents=root format=Account cluster=testcluster",
        0,
        "root\ntx1\ntx2\ntx3\n",
        "",
    ),
    (
        "sacctmgr",
        "show -nP association where account=tx1 cluster=testcluster format=GrpTRESMins",
        0,
        "\n\n",
        "",
    ),
    (
        "sacctmgr",
        "modify -i account where account=tx1 cluster=testcluster set GrpTresMins=cpu=100,billing=6000",
        0,
        " Modified account associations...\n  C = testcluster A = tx1 of root\n",
        "",
    ),
    (
        "sacctmgr",
        "show -nP association where account=tx1 cluster=testcluster format=GrpTRESMins",
        0,
        "billing=6000,cpu=100\n\n",
        "",
    ),
    (
        "sacctmgr",
        "modify -i account where account=tx1 cluster=testcluster set GrpTresMins=billing=-1",
        0,
        " Modified account associations...\n  C = testcluster A = tx1 of root\n",
        "",
    ),
    (
        "sacctmgr",
        "show -nP association where account=tx1 cluster=testcluster format=GrpTRESMins",
        0,
        "cpu=100\n\n",
        "",
    ),
    (
        "sshare",
        "-nP -A tx1 -M testcluster --format=GrpTRESRaw",
        0,
        "CLUSTER: testcluster\ncpu=0,mem=0,energy=0,node=0,billing=0,fs/disk=0,vmem=0,pages=0\ncpu=0,mem=0,energy=0,node=0,billing=0,fs/disk=0,vmem=0,pages=0\n",
        "",
    ),
    (
        "sshare",
        "-nP -A tx1 -M testcluster --format=Account,User,GrpTRESRaw",
        0,
        "CLUSTER: testcluster\ntx1||cpu=0,mem=0,energy=0,node=0,billing=0,fs/disk=0,vmem=0,pages=0\n tx1|root|cpu=0,mem=0,energy=0,node=0,billing=0,fs/disk=0,vmem=0,pages=0\n",
        "",
    ),
    (
        "sshare",
        "-nP -A nosuch -M testcluster --format=GrpTRESRaw",
        0,
        "CLUSTER: testcluster\n",
        "",
    ),
    (
        "sshare",
        "-nP -A tx1 -M nocluster --format=GrpTRESRaw",
        1,
        "",
        "sshare: error: No cluster 'nocluster' known by database.\nsshare: error: 'nocluster' can't be reached now, or it is an invalid entry for --cluster.  Use 'sacctmgr list clusters' to see available clusters.\n",
    ),
    (
        "sacctmgr",
        "show -nP association where account=nosuch cluster=testcluster format=GrpTRESMins",
        0,
        "",
        "",
    ),
    (
        "sacctmgr",
        "modify -i account where account=nosuch cluster=testcluster set GrpTresMins=billing=6000",
        1,
        " Nothing modified\n",
        "",
    ),
    (
        "sacctmgr",
        "-i delete account tx3 cluster=testcluster",
        0,
        " Deleting account associations...\n  C = testcluster A = tx3 of root\n",
        "",
    ),
    (
        "sacctmgr",
        "show -nP account withassoc where parents=root format=Account cluster=testcluster",
        0,
        "root\ntx1\ntx2\ntx3\n",
        "",
    ),
    (
        "sacctmgr",
        "show -nP association where account=tx3 cluster=testcluster format=GrpTRESMins",
        0,
        "",
        "",
    ),
    (
        "sacctmgr",
        "modify -i account where account=tx3 cluster=testcluster set GrpTresMins=billing=0",
        1,
        " Nothing modified\n",
        "",
    ),
    (
        "sacctmgr",
        "-i delete account tx3 cluster=testcluster",
        1,
        " Nothing deleted\n",
        "",
    ),
    (
        "sacctmgr",
        "-i delete account tx3,tx1,tx2",
        0,
        " Deleting accounts...\n  tx1\n  tx2\n  tx3\n",
        "",
    ),
    (
        "sacctmgr",
        "show -nP account withassoc where parents=root format=Account cluster=testcluster",
        0,
        "root\n",
        "",
    ),
];

fn check_transcript(slurm: &Slurm) {
    let kind = if slurm.is_fake() { "fake" } else { "real" };
    for (tool, args, code, out, err) in TRANSCRIPT {
        let o = slurm.tool(tool, args);
        assert_eq!(
            (o.status.code(), stdout(&o).as_str(), stderr(&o).as_str()),
            (Some(*code), *out, *err),
            "{kind} `{tool} {args}`"
        );
    }
}

#[test]
fn the_fake_answers_like_real_slurm() {
    check_transcript(&Slurm::fake());
    if let Some(real) = Slurm::real() {
        check_transcript(&real);
    }
}
