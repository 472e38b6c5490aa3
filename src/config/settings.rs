//! The settings tree (spec/operations.md §1.2): one struct per TOML section, defaults equal
//! to upstream's unless the spec names a Keystone default.

use super::lenient;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Upstream's fixed list of attachment MIME types, in the order `/config/` reports them.
pub const DEFAULT_ALLOWED_TYPES: [&str; 22] = [
    "application/pdf",
    "application/rtf",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.oasis.opendocument.text",
    "application/x-latex",
    "application/x-tex",
    "application/vnd.ms-excel",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "text/plain",
    "text/markdown",
    "text/richtext",
    "text/csv",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/svg+xml",
    "image/tiff",
    "image/bmp",
];

pub const DEFAULT_ALLOWED_ORIGINS: [&str; 8] = [
    "http://localhost:80",
    "https://localhost:443",
    "http://localhost:4200",
    "http://localhost:8000",
    "http://127.0.0.1:80",
    "https://127.0.0.1:443",
    "http://127.0.0.1:4200",
    "http://127.0.0.1:8000",
];

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: Server,
    pub security: Security,
    pub upload: Upload,
    pub metrics: Metrics,
    pub logging: Logging,
    pub throttle: Throttle,
    pub database: Database,
    pub redis: Redis,
    pub email: Email,
    pub ldap: Ldap,
    pub worker: Worker,
    pub slurm: Slurm,
    pub schedule: Schedule,
    pub beat: Beat,
    pub health: Health,
    pub shutdown: Shutdown,
    pub batch: Batch,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Server {
    #[serde(deserialize_with = "lenient::string")]
    pub bind: String,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub state_dir: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    pub timezone: String,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub static_dir: Option<String>,
    /// Take the client address from `X-Forwarded-For` (see `crate::web::client`).
    #[serde(deserialize_with = "lenient::bool")]
    pub trust_forwarded_for: bool,
    /// Reverse proxies in front of Keystone that append to `X-Forwarded-For`.
    #[serde(deserialize_with = "lenient::uint")]
    pub trusted_proxies: u64,
    /// Largest accepted request body in bytes (uploads are checked against
    /// `upload.max_size` separately).
    #[serde(deserialize_with = "lenient::uint")]
    pub max_body_size: u64,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            bind: "127.0.0.1:8000".into(),
            state_dir: None,
            timezone: "UTC".into(),
            static_dir: None,
            trust_forwarded_for: false,
            trusted_proxies: 1,
            max_body_size: 10 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Security {
    #[serde(deserialize_with = "lenient::opt_string")]
    pub secret_key: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub secret_key_file: Option<String>,
    #[serde(deserialize_with = "lenient::bool")]
    pub ssl_redirect: bool,
    #[serde(deserialize_with = "lenient::uint")]
    pub hsts_seconds: u64,
    #[serde(deserialize_with = "lenient::bool")]
    pub hsts_subdomains: bool,
    #[serde(deserialize_with = "lenient::bool")]
    pub hsts_preload: bool,
    #[serde(deserialize_with = "lenient::bool")]
    pub ssl_tokens: bool,
    #[serde(deserialize_with = "lenient::list")]
    pub allowed_hosts: Vec<String>,
    #[serde(deserialize_with = "lenient::list")]
    pub allowed_origins: Vec<String>,
    #[serde(deserialize_with = "lenient::uint")]
    pub session_age: u64,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub token_domain: Option<String>,
    /// Password hashes computed at once per process; 0 = one less than the CPUs (at least 1).
    #[serde(deserialize_with = "lenient::uint")]
    pub password_hash_concurrency: u64,
    /// Failed logins allowed per username and period (`5/15m`); empty disables the limit.
    #[serde(deserialize_with = "lenient::string")]
    pub login_failures: String,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            secret_key: None,
            secret_key_file: None,
            ssl_redirect: false,
            hsts_seconds: 0,
            hsts_subdomains: false,
            hsts_preload: false,
            ssl_tokens: false,
            allowed_hosts: strings(&["localhost", "127.0.0.1"]),
            allowed_origins: strings(&DEFAULT_ALLOWED_ORIGINS),
            session_age: 1_209_600,
            token_domain: None,
            password_hash_concurrency: 0,
            login_failures: "5/15m".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Upload {
    #[serde(deserialize_with = "lenient::opt_string")]
    pub dir: Option<String>,
    #[serde(deserialize_with = "lenient::uint")]
    pub max_size: u64,
    #[serde(deserialize_with = "lenient::uint")]
    pub max_count: u64,
    #[serde(deserialize_with = "lenient::list")]
    pub allowed_types: Vec<String>,
    /// Internal nginx location answering `X-Accel-Redirect` downloads; unset serves files
    /// from the process.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub accel_redirect: Option<String>,
}

impl Default for Upload {
    fn default() -> Self {
        Upload {
            dir: None,
            max_size: 2_621_440,
            max_count: 15,
            allowed_types: strings(&DEFAULT_ALLOWED_TYPES),
            accel_redirect: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    #[serde(deserialize_with = "lenient::bool")]
    pub enabled: bool,
    #[serde(deserialize_with = "lenient::string")]
    pub address: String,
    /// Ports (`[9101, 9102]`) or a range text (`"9101-9149"`, inclusive).
    #[serde(deserialize_with = "lenient::list")]
    pub ports: Vec<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            enabled: true,
            address: "127.0.0.1".into(),
            ports: vec!["9101-9149".into()],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Logging {
    #[serde(deserialize_with = "lenient::string")]
    pub level: String,
    #[serde(deserialize_with = "lenient::string")]
    pub format: String,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub file: Option<String>,
    #[serde(deserialize_with = "lenient::uint")]
    pub max_bytes: u64,
    #[serde(deserialize_with = "lenient::uint")]
    pub backup_count: u32,
    /// Record every request in the request log (`/logs/requests/`).
    #[serde(deserialize_with = "lenient::bool")]
    pub requests: bool,
    #[serde(deserialize_with = "lenient::int")]
    pub request_retention: i64,
    #[serde(deserialize_with = "lenient::int")]
    pub audit_retention: i64,
    #[serde(deserialize_with = "lenient::int")]
    pub task_retention: i64,
}

impl Default for Logging {
    fn default() -> Self {
        Logging {
            level: "WARNING".into(),
            format: "text".into(),
            file: None,
            max_bytes: 10_485_760,
            backup_count: 5,
            requests: true,
            request_retention: 2_592_000,
            audit_retention: 2_592_000,
            task_retention: 2_592_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Throttle {
    #[serde(deserialize_with = "lenient::string")]
    pub anon: String,
    #[serde(deserialize_with = "lenient::string")]
    pub user: String,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            anon: "120/min".into(),
            user: "300/min".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Database {
    pub engine: Engine,
    #[serde(deserialize_with = "lenient::string")]
    pub name: String,
    #[serde(deserialize_with = "lenient::string")]
    pub user: String,
    #[serde(deserialize_with = "lenient::string")]
    pub password: String,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub password_file: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    pub host: String,
    #[serde(deserialize_with = "lenient::uint")]
    pub port: u16,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub path: Option<String>,
    #[serde(deserialize_with = "lenient::uint")]
    pub pool_size: u32,
}

impl Default for Database {
    fn default() -> Self {
        Database {
            engine: Engine::Sqlite,
            name: "keystone".into(),
            user: String::new(),
            password: String::new(),
            password_file: None,
            host: "localhost".into(),
            port: 5432,
            path: None,
            pool_size: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Redis {
    #[serde(deserialize_with = "lenient::opt_string")]
    pub host: Option<String>,
    #[serde(deserialize_with = "lenient::uint")]
    pub port: u16,
    #[serde(deserialize_with = "lenient::uint")]
    pub db: u32,
    #[serde(deserialize_with = "lenient::string")]
    pub password: String,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub password_file: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub url: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub url_file: Option<String>,
    /// Prefix of the task-queue and beat keys (`<prefix>:tasks`, `<prefix>:beat:leader`, ...),
    /// so several installations can share one Redis database.
    #[serde(deserialize_with = "lenient::string")]
    pub prefix: String,
}

impl Default for Redis {
    fn default() -> Self {
        Redis {
            host: None,
            port: 6379,
            db: 0,
            password: String::new(),
            password_file: None,
            url: None,
            url_file: None,
            prefix: "keystone".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Email {
    #[serde(deserialize_with = "lenient::string")]
    pub host: String,
    #[serde(deserialize_with = "lenient::uint")]
    pub port: u16,
    #[serde(deserialize_with = "lenient::string")]
    pub user: String,
    #[serde(deserialize_with = "lenient::string")]
    pub password: String,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub password_file: Option<String>,
    #[serde(deserialize_with = "lenient::bool")]
    pub use_tls: bool,
    #[serde(deserialize_with = "lenient::bool")]
    pub use_ssl: bool,
    #[serde(deserialize_with = "lenient::uint")]
    pub timeout: u64,
    #[serde(deserialize_with = "lenient::string")]
    pub from_address: String,
    #[serde(deserialize_with = "lenient::string")]
    pub template_dir: String,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub debug_dir: Option<String>,
}

impl Default for Email {
    fn default() -> Self {
        Email {
            host: "localhost".into(),
            port: 25,
            user: String::new(),
            password: String::new(),
            password_file: None,
            use_tls: false,
            use_ssl: false,
            timeout: 30,
            from_address: "noreply@keystone.bot".into(),
            template_dir: "/etc/keystone/templates".into(),
            debug_dir: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ldap {
    #[serde(deserialize_with = "lenient::string")]
    pub server_uri: String,
    #[serde(deserialize_with = "lenient::bool")]
    pub start_tls: bool,
    #[serde(deserialize_with = "lenient::string")]
    pub bind_dn: String,
    #[serde(deserialize_with = "lenient::string")]
    pub bind_password: String,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub bind_password_file: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    pub user_search: String,
    #[serde(deserialize_with = "lenient::string")]
    pub user_filter: String,
    #[serde(deserialize_with = "lenient::string")]
    pub login_filter: String,
    #[serde(deserialize_with = "lenient::bool")]
    pub require_cert: bool,
    #[serde(deserialize_with = "lenient::map")]
    pub attr_map: BTreeMap<String, String>,
    #[serde(deserialize_with = "lenient::uint")]
    pub timeout: u64,
    #[serde(deserialize_with = "lenient::bool")]
    pub purge_removed: bool,
    /// Largest share of active LDAP users one sync may deactivate (spec §6.4 decision 5).
    #[serde(deserialize_with = "lenient::float")]
    pub max_deactivate_fraction: f64,
}

impl Default for Ldap {
    fn default() -> Self {
        Ldap {
            server_uri: String::new(),
            start_tls: true,
            bind_dn: String::new(),
            bind_password: String::new(),
            bind_password_file: None,
            user_search: String::new(),
            user_filter: "(objectClass=account)".into(),
            login_filter: "(uid=%(user)s)".into(),
            require_cert: false,
            attr_map: BTreeMap::new(),
            timeout: 10,
            purge_removed: false,
            max_deactivate_fraction: 0.5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Worker {
    /// 0 means "number of CPUs".
    #[serde(deserialize_with = "lenient::uint")]
    pub concurrency: u32,
    #[serde(deserialize_with = "lenient::uint")]
    pub heartbeat: u64,
    /// Seconds after which a task held by a silent worker is handed to another one.
    #[serde(deserialize_with = "lenient::uint")]
    pub visibility_timeout: u64,
    /// Deliveries of one queued task without an outcome (its workers died or were killed)
    /// after which it is moved to the dead-letter stream instead of being run again.
    #[serde(deserialize_with = "lenient::uint")]
    pub max_deliveries: u32,
}

impl Default for Worker {
    fn default() -> Self {
        Worker {
            concurrency: 0,
            heartbeat: 10,
            visibility_timeout: 300,
            max_deliveries: 5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Slurm {
    #[serde(deserialize_with = "lenient::string")]
    pub sacctmgr: String,
    #[serde(deserialize_with = "lenient::string")]
    pub sshare: String,
    #[serde(deserialize_with = "lenient::uint")]
    pub timeout: u64,
}

impl Default for Slurm {
    fn default() -> Self {
        Slurm {
            sacctmgr: "sacctmgr".into(),
            sshare: "sshare".into(),
            timeout: 300,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Schedule {
    #[serde(deserialize_with = "lenient::string")]
    pub ldap_sync: String,
    #[serde(deserialize_with = "lenient::string")]
    pub log_cleanup: String,
    #[serde(deserialize_with = "lenient::string")]
    pub update_limits: String,
    #[serde(deserialize_with = "lenient::string")]
    pub upcoming_expirations: String,
    #[serde(deserialize_with = "lenient::string")]
    pub past_expirations: String,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            ldap_sync: "*/15 * * * *".into(),
            log_cleanup: "0 * * * *".into(),
            update_limits: "0 * * * *".into(),
            upcoming_expirations: "0 0 * * *".into(),
            // Spec §6.4 decision 2: after that night's limit enforcement.
            past_expirations: "15 0 * * *".into(),
        }
    }
}

impl Schedule {
    /// (setting key, upstream schedule entry name, cron text).
    pub fn entries(&self) -> [(&'static str, &'static str, &str); 5] {
        [
            (
                "ldap_sync",
                "apps.users.tasks.ldap_update_users",
                &self.ldap_sync,
            ),
            (
                "log_cleanup",
                "apps.logging.tasks.clear_log_records",
                &self.log_cleanup,
            ),
            (
                "update_limits",
                "apps.allocations.tasks.limits.update_limits",
                &self.update_limits,
            ),
            (
                "upcoming_expirations",
                "apps.notifications.tasks.upcoming_expirations.notify_upcoming_expirations",
                &self.upcoming_expirations,
            ),
            (
                "past_expirations",
                "apps.notifications.tasks.past_expirations.notify_past_expirations",
                &self.past_expirations,
            ),
        ]
    }
}

/// The beat role's leader election (one of several beat processes enqueues the ticks).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Beat {
    /// Seconds the leader lease lasts without renewal (renewed every third of it): how long
    /// a standby beat waits before taking over from a leader that died.
    #[serde(deserialize_with = "lenient::uint")]
    pub lease: u64,
}

impl Default for Beat {
    fn default() -> Self {
        Beat { lease: 30 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Health {
    #[serde(deserialize_with = "lenient::uint")]
    pub cache_seconds: u64,
}

impl Default for Health {
    fn default() -> Self {
        Health { cache_seconds: 60 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Shutdown {
    /// Seconds a stopping process waits for in-flight requests and tasks before it exits.
    #[serde(deserialize_with = "lenient::uint")]
    pub grace_seconds: u64,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown { grace_seconds: 25 }
    }
}

/// Bounds on one `/batch/` request (docs/security.md §3). Each resolved step is also held
/// to `server.max_body_size`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Batch {
    /// Steps one job may list (a nested job is a job of its own).
    #[serde(deserialize_with = "lenient::uint")]
    pub max_steps: u64,
    /// Levels of batch jobs nested below the outermost one; 0 forbids nesting.
    #[serde(deserialize_with = "lenient::uint")]
    pub max_depth: u64,
    /// `@ref{}`/`@file{}` tokens one request may resolve, nested jobs included.
    #[serde(deserialize_with = "lenient::uint")]
    pub max_expansions: u64,
    /// Seconds one request may run its steps; a job that overruns is rolled back whole.
    #[serde(deserialize_with = "lenient::uint")]
    pub time_limit: u64,
}

/// Highest accepted `batch.max_depth`: each level adds a whole request's frames to the
/// stack of the thread that runs the job.
pub const MAX_BATCH_DEPTH: u64 = 8;

impl Default for Batch {
    fn default() -> Self {
        Batch {
            max_steps: 100,
            max_depth: 1,
            max_expansions: 1000,
            time_limit: 30,
        }
    }
}

/// Keys holding secrets: redacted in every output, and each also accepted as `<key>_file`.
pub const SECRET_KEYS: [&str; 6] = [
    "security.secret_key",
    "database.password",
    "redis.password",
    "redis.url",
    "email.password",
    "ldap.bind_password",
];

pub fn is_secret(key: &str) -> bool {
    SECRET_KEYS.contains(&key)
}
