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

/// One `[section]` of the settings: its fields, each with its default (upstream's) after
/// `=`. Every field is read leniently (native TOML or text, `lenient::value`); unknown keys
/// are refused and missing ones take their default.
macro_rules! section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident: $ty:ty = $default:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $(
                $(#[$field_meta])*
                #[serde(deserialize_with = "lenient::value")]
                pub $field: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: $default, )* }
            }
        }
    };
}

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

section! {
    pub struct Server {
        pub bind: String = "127.0.0.1:8000".into(),
        pub state_dir: Option<String> = None,
        pub timezone: String = "UTC".into(),
        pub static_dir: Option<String> = None,
        /// Take the client address from `X-Forwarded-For` (see `crate::web::client`).
        pub trust_forwarded_for: bool = false,
        /// Reverse proxies in front of Keystone that append to `X-Forwarded-For`.
        pub trusted_proxies: u64 = 1,
        /// Largest accepted request body in bytes (uploads are checked against
        /// `upload.max_size` separately).
        pub max_body_size: u64 = 10 * 1024 * 1024,
    }
}

section! {
    pub struct Security {
        pub secret_key: Option<String> = None,
        pub secret_key_file: Option<String> = None,
        pub ssl_redirect: bool = false,
        pub hsts_seconds: u64 = 0,
        pub hsts_subdomains: bool = false,
        pub hsts_preload: bool = false,
        pub ssl_tokens: bool = false,
        pub allowed_hosts: Vec<String> = strings(&["localhost", "127.0.0.1"]),
        pub allowed_origins: Vec<String> = strings(&DEFAULT_ALLOWED_ORIGINS),
        pub session_age: u64 = 1_209_600,
        pub token_domain: Option<String> = None,
        /// Password hashes computed at once per process; 0 = one less than the CPUs (at least 1).
        pub password_hash_concurrency: u64 = 0,
        /// Failed logins allowed per username and period (`5/15m`); empty disables the limit.
        pub login_failures: String = "5/15m".into(),
    }
}

section! {
    pub struct Upload {
        pub dir: Option<String> = None,
        pub max_size: u64 = 2_621_440,
        pub max_count: u64 = 15,
        pub allowed_types: Vec<String> = strings(&DEFAULT_ALLOWED_TYPES),
        /// Internal nginx location answering `X-Accel-Redirect` downloads; unset serves files
        /// from the process.
        pub accel_redirect: Option<String> = None,
    }
}

section! {
    pub struct Metrics {
        pub enabled: bool = true,
        pub address: String = "127.0.0.1".into(),
        /// Ports (`[9101, 9102]`) or a range text (`"9101-9149"`, inclusive).
        pub ports: Vec<String> = vec!["9101-9149".into()],
    }
}

section! {
    pub struct Logging {
        pub level: String = "WARNING".into(),
        pub format: String = "text".into(),
        pub file: Option<String> = None,
        pub max_bytes: u64 = 10_485_760,
        pub backup_count: u32 = 5,
        /// Record every request in the request log (`/logs/requests/`).
        pub requests: bool = true,
        pub request_retention: i64 = 2_592_000,
        pub audit_retention: i64 = 2_592_000,
        pub task_retention: i64 = 2_592_000,
    }
}

section! {
    pub struct Throttle {
        pub anon: String = "120/min".into(),
        pub user: String = "300/min".into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl lenient::Lenient for Engine {
    fn read<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Engine::deserialize(d)
    }
}

section! {
    pub struct Database {
        pub engine: Engine = Engine::Sqlite,
        pub name: String = "keystone".into(),
        pub user: String = String::new(),
        pub password: String = String::new(),
        pub password_file: Option<String> = None,
        pub host: String = "localhost".into(),
        pub port: u16 = 5432,
        pub path: Option<String> = None,
        pub pool_size: u32 = 10,
        /// PostgreSQL: seconds a request waits for a connection (the server unreachable or
        /// restarting, or every connection busy) before it is answered 503.
        pub acquire_timeout: u64 = 3,
    }
}

section! {
    pub struct Redis {
        pub host: Option<String> = None,
        pub port: u16 = 6379,
        pub db: u32 = 0,
        pub password: String = String::new(),
        pub password_file: Option<String> = None,
        pub url: Option<String> = None,
        pub url_file: Option<String> = None,
        /// Prefix of the task-queue and beat keys (`<prefix>:tasks`, `<prefix>:beat:leader`, ...),
        /// so several installations can share one Redis database.
        pub prefix: String = "keystone".into(),
    }
}

section! {
    pub struct Email {
        pub host: String = "localhost".into(),
        pub port: u16 = 25,
        pub user: String = String::new(),
        pub password: String = String::new(),
        pub password_file: Option<String> = None,
        pub use_tls: bool = false,
        pub use_ssl: bool = false,
        pub timeout: u64 = 30,
        pub from_address: String = "noreply@keystone.bot".into(),
        pub template_dir: String = "/etc/keystone/templates".into(),
        pub debug_dir: Option<String> = None,
    }
}

section! {
    pub struct Ldap {
        pub server_uri: String = String::new(),
        pub start_tls: bool = true,
        pub bind_dn: String = String::new(),
        pub bind_password: String = String::new(),
        pub bind_password_file: Option<String> = None,
        pub user_search: String = String::new(),
        pub user_filter: String = "(objectClass=account)".into(),
        pub login_filter: String = "(uid=%(user)s)".into(),
        pub require_cert: bool = false,
        pub attr_map: BTreeMap<String, String> = BTreeMap::new(),
        pub timeout: u64 = 10,
        pub purge_removed: bool = false,
        /// Largest share of active LDAP users one sync may deactivate (spec §6.4 decision 5).
        pub max_deactivate_fraction: f64 = 0.5,
    }
}

section! {
    pub struct Worker {
        /// 0 means "number of CPUs".
        pub concurrency: u32 = 0,
        pub heartbeat: u64 = 10,
        /// Seconds after which a task held by a silent worker is handed to another one.
        pub visibility_timeout: u64 = 300,
        /// Deliveries of one queued task without an outcome (its workers died or were killed)
        /// after which it is moved to the dead-letter stream instead of being run again.
        pub max_deliveries: u32 = 5,
        /// Seconds one run of a task may take before it is stopped and recorded as FAILURE
        /// (`TimeLimitExceeded`, not retried); 0 means no limit.
        pub time_limit: u64 = 3600,
    }
}

section! {
    pub struct Slurm {
        pub sacctmgr: String = "sacctmgr".into(),
        pub sshare: String = "sshare".into(),
        pub timeout: u64 = 300,
    }
}

section! {
    pub struct Schedule {
        pub ldap_sync: String = "*/15 * * * *".into(),
        pub log_cleanup: String = "0 * * * *".into(),
        pub update_limits: String = "0 * * * *".into(),
        pub upcoming_expirations: String = "0 0 * * *".into(),
        // Spec §6.4 decision 2: after that night's limit enforcement.
        pub past_expirations: String = "15 0 * * *".into(),
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

section! {
    /// The beat role's leader election (one of several beat processes enqueues the ticks).
    pub struct Beat {
        /// Seconds the leader lease lasts without renewal (renewed every third of it): how long
        /// a standby beat waits before taking over from a leader that died.
        pub lease: u64 = 30,
    }
}

section! {
    pub struct Health {
        pub cache_seconds: u64 = 60,
    }
}

section! {
    pub struct Shutdown {
        /// Seconds a stopping process waits for in-flight requests and tasks before it exits.
        pub grace_seconds: u64 = 25,
    }
}

section! {
    /// Bounds on one `/batch/` request (docs/security.md §3). Each resolved step is also held
    /// to `server.max_body_size`.
    pub struct Batch {
        /// Steps one job may list (a nested job is a job of its own).
        pub max_steps: u64 = 100,
        /// Levels of batch jobs nested below the outermost one; 0 forbids nesting.
        pub max_depth: u64 = 1,
        /// `@ref{}`/`@file{}` tokens one request may resolve, nested jobs included.
        pub max_expansions: u64 = 1000,
        /// Seconds one request may run its steps; a job that overruns is rolled back whole.
        pub time_limit: u64 = 30,
    }
}

/// Highest accepted `batch.max_depth`: each level adds a whole request's frames to the
/// stack of the thread that runs the job.
pub const MAX_BATCH_DEPTH: u64 = 8;

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
