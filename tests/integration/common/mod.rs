//! Test kit: runs the real `keystone` binary against real SQLite and PostgreSQL databases,
//! reads systemd notifications from a socket the test binds, and speaks plain HTTP/1.1.
//!
//! PostgreSQL tests use `KEYSTONE_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) to create one scratch database per test;
//! Redis tests use `KEYSTONE_TEST_REDIS` (default `redis://127.0.0.1:6379/15`). When a
//! service is unreachable its tests are skipped with a message, unless `KEYSTONE_TEST_REQUIRE`
//! names it (CI sets `KEYSTONE_TEST_REQUIRE=postgres,redis,systemd`), which turns the skip
//! into a failure.

#![allow(dead_code)]

pub mod http;
pub mod redis;
pub mod relay;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_keystone");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

fn required(service: &str) -> bool {
    std::env::var("KEYSTONE_TEST_REQUIRE")
        .map(|v| v.split(',').any(|s| s.trim() == service))
        .unwrap_or(false)
}

/// Reports a missing service: a skip message, or a panic when CI requires the service.
pub fn unavailable(service: &str, why: &str) {
    if required(service) {
        panic!("{service} is required by KEYSTONE_TEST_REQUIRE but unavailable: {why}");
    }
    eprintln!(
        "SKIPPED ({service} unavailable: {why}; set KEYSTONE_TEST_REQUIRE={service} to fail instead)"
    );
}

pub fn postgres_admin_url() -> String {
    std::env::var("KEYSTONE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("KEYSTONE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/15".into())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("test runtime")
}

/// Runs SQL on the PostgreSQL admin connection.
pub fn pg_admin(sql: &str) -> Result<(), String> {
    let url = postgres_admin_url();
    let sql = sql.to_string();
    std::thread::spawn(move || {
        rt().block_on(async move {
            use sqlx::Connection;
            let mut conn =
                tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&url))
                    .await
                    .map_err(|_| "timeout".to_string())?
                    .map_err(|e| e.to_string())?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        })
    })
    .join()
    .unwrap_or_else(|_| Err("panicked".into()))
}

/// Whether PostgreSQL answers (checked once per test binary).
pub fn postgres_available() -> bool {
    static OK: OnceLock<Result<(), String>> = OnceLock::new();
    match OK.get_or_init(|| pg_admin("SELECT 1")) {
        Ok(()) => true,
        Err(e) => {
            unavailable("postgres", e);
            false
        }
    }
}

pub fn redis_available() -> bool {
    static OK: OnceLock<Result<(), String>> = OnceLock::new();
    let r = OK.get_or_init(|| {
        let url = url_host_port(&redis_url()).ok_or("bad KEYSTONE_TEST_REDIS")?;
        std::net::TcpStream::connect_timeout(
            &url.parse().map_err(|_| "bad redis address".to_string())?,
            Duration::from_secs(2),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    });
    match r {
        Ok(()) => true,
        Err(e) => {
            unavailable("redis", e);
            false
        }
    }
}

fn url_host_port(url: &str) -> Option<String> {
    let rest = url.split("://").nth(1)?;
    let hostport = rest.split('/').next()?;
    let hostport = hostport.rsplit('@').next()?;
    Some(if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:6379")
    })
}

/// The backends to run a test on: SQLite always, PostgreSQL when reachable.
pub fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Sqlite];
    if postgres_available() {
        out.push(Backend::Postgres);
    }
    out
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// One isolated installation: a state directory, a config file, a database.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub backend: Backend,
    pub pg_database: Option<String>,
    pub env: BTreeMap<String, String>,
}

impl Site {
    pub fn new(backend: Backend) -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("keystone.toml");
        std::fs::write(&config, "").expect("config file");
        let mut env = BTreeMap::new();
        env.insert("KEYSTONE_CONFIG".into(), config.display().to_string());
        env.insert(
            "KEYSTONE_SERVER__STATE_DIR".into(),
            dir.path().join("state").display().to_string(),
        );
        // No mail server in tests unless one sets it: a closed port fails fast.
        env.insert("KEYSTONE_EMAIL__HOST".into(), "127.0.0.1".into());
        env.insert("KEYSTONE_EMAIL__PORT".into(), "9".into());
        let mut pg_database = None;
        if backend == Backend::Postgres {
            let name = format!("keystone_test_{}", uuid::Uuid::new_v4().simple());
            pg_admin(&format!("CREATE DATABASE {name}")).expect("create test database");
            let url = url::Url::parse(&postgres_admin_url()).expect("postgres url");
            env.insert("KEYSTONE_DATABASE__ENGINE".into(), "postgres".into());
            env.insert("KEYSTONE_DATABASE__NAME".into(), name.clone());
            env.insert(
                "KEYSTONE_DATABASE__HOST".into(),
                url.host_str().unwrap_or("127.0.0.1").into(),
            );
            env.insert(
                "KEYSTONE_DATABASE__PORT".into(),
                url.port().unwrap_or(5432).to_string(),
            );
            env.insert("KEYSTONE_DATABASE__USER".into(), url.username().into());
            if let Some(p) = url.password() {
                env.insert("KEYSTONE_DATABASE__PASSWORD".into(), p.into());
            }
            env.insert(
                "KEYSTONE_SECURITY__SECRET_KEY".into(),
                "integration-test-secret-key-0123456789abcdef".into(),
            );
            pg_database = Some(name);
        }
        Site {
            dir,
            backend,
            pg_database,
            env,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn set(&mut self, key: &str, value: &str) -> &mut Self {
        self.env.insert(key.into(), value.into());
        self
    }

    pub fn write_config(&self, toml: &str) {
        std::fs::write(self.path("keystone.toml"), toml).expect("write config");
    }

    /// A `keystone` command with only this site's environment (nothing leaks in from the
    /// machine running the tests).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .envs(&self.env)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run keystone")
    }

    pub fn migrate(&self) {
        let out = self.run(&["migrate"]);
        assert!(
            out.status.success(),
            "migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `keystone serve` with a notify socket and waits for READY=1.
    pub fn serve(&self, role: &str, extra_env: &[(&str, &str)]) -> Daemon {
        let port = free_port();
        let mut cmd = self.command(&["serve", "--role", role]);
        cmd.env("KEYSTONE_SERVER__BIND", format!("127.0.0.1:{port}"));
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        Daemon::spawn(cmd, self.dir.path(), Some(port))
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(name) = &self.pg_database {
            let _ = pg_admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

/// A datagram socket standing in for systemd's notify socket.
pub struct NotifySocket {
    pub path: PathBuf,
    sock: UnixDatagram,
    pub received: Vec<String>,
}

impl NotifySocket {
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join(format!("notify-{}.sock", uuid::Uuid::new_v4().simple()));
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        NotifySocket {
            path,
            sock,
            received: Vec::new(),
        }
    }

    /// Waits until a datagram contains `line` (e.g. `READY=1`); returns that datagram.
    pub fn wait_for(&mut self, line: &str, timeout: Duration) -> Option<String> {
        if let Some(found) = self.received.iter().find(|d| d.lines().any(|l| l == line)) {
            return Some(found.clone());
        }
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                self.received.push(msg.clone());
                if msg.lines().any(|l| l == line) {
                    return Some(msg);
                }
            }
        }
        None
    }
}

/// A running keystone process.
pub struct Daemon {
    pub child: Child,
    pub port: Option<u16>,
    pub notify: NotifySocket,
}

impl Daemon {
    /// Spawns `cmd` with NOTIFY_SOCKET set and waits for READY=1 (panics with the process
    /// output if it exits or times out first).
    pub fn spawn(mut cmd: Command, dir: &Path, port: Option<u16>) -> Daemon {
        let mut notify = NotifySocket::bind(dir);
        cmd.env("NOTIFY_SOCKET", &notify.path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn keystone");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if notify
                .wait_for("READY=1", Duration::from_millis(200))
                .is_some()
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let out = collect(&mut child);
                panic!("keystone exited with {status} before READY=1:\n{out}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = collect(&mut child);
                panic!("keystone did not send READY=1 within 30 s:\n{out}");
            }
        }
        Daemon {
            child,
            port,
            notify,
        }
    }

    pub fn base(&self) -> String {
        format!("127.0.0.1:{}", self.port.expect("daemon has a port"))
    }

    pub fn get(&self, path: &str) -> http::Response {
        http::request(&self.base(), "GET", path, &[], b"")
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> http::Response {
        http::request(&self.base(), method, path, headers, body)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// SIGTERM, then the exit status (panics after 30 s).
    pub fn stop(mut self) -> (ExitStatus, String) {
        self.signal(libc::SIGTERM);
        let status = wait_exit(&mut self.child, Duration::from_secs(30));
        let out = collect(&mut self.child);
        (status, out)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The captured stdout and stderr of a finished or killed child.
pub fn collect(child: &mut Child) -> String {
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut out);
    }
    out
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Whether `systemd-socket-activate` exists (Debian package `systemd`).
pub fn socket_activate_available() -> bool {
    let ok = Command::new("systemd-socket-activate")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        unavailable(
            "systemd",
            "systemd-socket-activate not found (Debian package systemd)",
        );
    }
    ok
}

impl Site {
    /// Runs SQL statements on this site's database (test set-up only).
    pub fn sql(&self, statements: &str) {
        let statements = statements.to_string();
        let target = match self.backend {
            Backend::Sqlite => format!("sqlite://{}", self.path("state/keystone.db").display()),
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let base = admin
                    .rsplit_once('/')
                    .map(|(b, _)| b.to_string())
                    .unwrap_or(admin);
                format!("{base}/{}", self.pg_database.clone().unwrap_or_default())
            }
        };
        let result = std::thread::spawn(move || {
            rt().block_on(async move {
                use sqlx::Connection;
                if target.starts_with("sqlite:") {
                    let mut c = sqlx::SqliteConnection::connect(&target).await?;
                    sqlx::raw_sql(sqlx::AssertSqlSafe(statements))
                        .execute(&mut c)
                        .await?;
                } else {
                    let mut c = sqlx::PgConnection::connect(&target).await?;
                    sqlx::raw_sql(sqlx::AssertSqlSafe(statements))
                        .execute(&mut c)
                        .await?;
                }
                Ok::<(), sqlx::Error>(())
            })
        })
        .join()
        .expect("sql thread");
        result.expect("test SQL");
    }

    /// Runs `keystone` with `input` on standard input.
    pub fn run_with_input(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keystone");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input.as_bytes());
        }
        child.wait_with_output().expect("keystone output")
    }
}
