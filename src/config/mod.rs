//! Configuration: built-in defaults < TOML file < upstream env aliases < `KEYSTONE_*` env <
//! CLI flags (spec/operations.md §1.1), merged with figment, validated before anything starts.
//! Every leaf key remembers the layer that set it, for error messages and `config show`.

mod lenient;
mod settings;

pub use settings::*;

use figment::Figment;
use figment::providers::Serialized;
use figment::value::{Dict, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/keystone/keystone.toml";
pub const PACKAGED_STATE_DIR: &str = "/var/lib/keystone";
pub const LOCAL_STATE_DIR: &str = "keystone-data";

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File { path: PathBuf, line: Option<usize> },
    Alias(String),
    Env(String),
    Cli(String),
    Derived(String),
}

impl Source {
    fn rank(&self) -> u8 {
        match self {
            Source::Default | Source::Derived(_) => 0,
            Source::File { .. } => 1,
            Source::Alias(_) => 2,
            Source::Env(_) => 3,
            Source::Cli(_) => 4,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("built-in default"),
            Source::File {
                path,
                line: Some(l),
            } => write!(f, "{}:{l}", path.display()),
            Source::File { path, line: None } => write!(f, "{}", path.display()),
            Source::Alias(v) => write!(f, "environment variable {v} (upstream name)"),
            Source::Env(v) => write!(f, "environment variable {v}"),
            Source::Cli(flag) => write!(f, "command-line option {flag}"),
            Source::Derived(why) => write!(f, "derived: {why}"),
        }
    }
}

/// One configuration error: the key, the offending value (redacted for secrets), where it came
/// from, and what is wrong. Printed as one line; the process then exits with 78.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub key: Option<String>,
    pub value: Option<String>,
    pub source: Option<Source>,
    pub message: String,
}

impl ConfigError {
    fn plain(message: impl Into<String>) -> Self {
        ConfigError {
            key: None,
            value: None,
            source: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("configuration error: ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}")?;
            if let Some(v) = &self.value {
                write!(f, " = {v}")?;
            }
            if let Some(src) = &self.source {
                write!(f, " (from {src})")?;
            }
            f.write_str(": ")?;
        } else if let Some(src) = &self.source {
            write!(f, "{src}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// What the caller knows before loading: the CLI's `--config` and the flags that set keys.
#[derive(Debug, Default, Clone)]
pub struct LoadOptions {
    pub config_path: Option<PathBuf>,
    /// (key, value, flag name), e.g. ("server.bind", "unix:/run/k.sock", "--bind").
    pub cli: Vec<(String, String, String)>,
    /// Directory relative paths are resolved against when `state_dir` itself is relative.
    pub cwd: Option<PathBuf>,
}

/// The validated configuration plus everything needed to explain it.
#[derive(Debug, Clone)]
pub struct Config {
    pub settings: Settings,
    /// Absolute state directory.
    pub state_dir: PathBuf,
    pub config_file: Option<PathBuf>,
    pub sources: BTreeMap<String, Source>,
    /// Messages to log once logging is up (unknown variables, alias use).
    pub warnings: Vec<String>,
    pub notices: Vec<String>,
}

/// Upstream environment names and the key each sets (§1.4).
const ALIASES: [(&str, &str); 53] = [
    ("SECURE_SECRET_KEY", "security.secret_key"),
    ("SECURE_ALLOWED_HOSTS", "security.allowed_hosts"),
    ("SECURE_ALLOWED_ORIGINS", "security.allowed_origins"),
    ("SECURE_SSL_TOKENS", "security.ssl_tokens"),
    ("SECURE_SESSION_AGE", "security.session_age"),
    ("SECURE_TOKEN_DOMAIN", "security.token_domain"),
    ("SECURE_SSL_REDIRECT", "security.ssl_redirect"),
    ("SECURE_HSTS_SECONDS", "security.hsts_seconds"),
    ("SECURE_HSTS_SUBDOMAINS", "security.hsts_subdomains"),
    ("SECURE_HSTS_PRELOAD", "security.hsts_preload"),
    ("CONFIG_TIMEZONE", "server.timezone"),
    ("CONFIG_STATIC_DIR", "server.static_dir"),
    ("CONFIG_UPLOAD_DIR", "upload.dir"),
    ("CONFIG_UPLOAD_SIZE", "upload.max_size"),
    ("CONFIG_UPLOAD_COUNT", "upload.max_count"),
    ("CONFIG_METRICS_PORTS", "metrics.ports"),
    ("LOG_APP_LEVEL", "logging.level"),
    ("LOG_APP_FILE", "logging.file"),
    ("LOG_APP_RETENTION_BYTES", "logging.max_bytes"),
    ("LOG_APP_RETENTION_FILES", "logging.backup_count"),
    ("LOG_REQ_RETENTION_SEC", "logging.request_retention"),
    ("LOG_AUD_RETENTION_SEC", "logging.audit_retention"),
    ("LOG_TSK_RETENTION_SEC", "logging.task_retention"),
    ("API_THROTTLE_ANON", "throttle.anon"),
    ("API_THROTTLE_USER", "throttle.user"),
    ("DB_POSTGRES_ENABLE", "database.engine"),
    ("DB_NAME", "database.name"),
    ("DB_USER", "database.user"),
    ("DB_PASSWORD", "database.password"),
    ("DB_HOST", "database.host"),
    ("DB_PORT", "database.port"),
    ("REDIS_HOST", "redis.host"),
    ("REDIS_PORT", "redis.port"),
    ("REDIS_DB", "redis.db"),
    ("REDIS_PASSWORD", "redis.password"),
    ("EMAIL_HOST", "email.host"),
    ("EMAIL_PORT", "email.port"),
    ("EMAIL_HOST_USER", "email.user"),
    ("EMAIL_HOST_PASSWORD", "email.password"),
    ("EMAIL_USE_TLS", "email.use_tls"),
    ("EMAIL_FROM_ADDRESS", "email.from_address"),
    ("EMAIL_TEMPLATE_DIR", "email.template_dir"),
    ("EMAIL_DEBUG_DIR", "email.debug_dir"),
    ("AUTH_LDAP_SERVER_URI", "ldap.server_uri"),
    ("AUTH_LDAP_START_TLS", "ldap.start_tls"),
    ("AUTH_LDAP_BIND_DN", "ldap.bind_dn"),
    ("AUTH_LDAP_BIND_PASSWORD", "ldap.bind_password"),
    ("AUTH_LDAP_USER_SEARCH", "ldap.user_search"),
    ("AUTH_LDAP_USER_FILTER", "ldap.user_filter"),
    ("AUTH_LDAP_LOGIN_FILTER", "ldap.login_filter"),
    ("AUTH_LDAP_REQUIRE_CERT", "ldap.require_cert"),
    ("AUTH_LDAP_ATTR_MAP", "ldap.attr_map"),
    ("AUTH_LDAP_TIMEOUT", "ldap.timeout"),
];

/// Names that are read elsewhere or only warned about, never as settings.
const NOT_SETTINGS: [&str; 3] = [
    "KEYSTONE_CONFIG",
    "KEYSTONE_SUPERUSER_PASSWORD",
    "KEYSTONE_SUPERUSER_USERNAME",
];

/// Keys whose value is a map: deeper env paths below them are map entries, not unknown keys.
const MAP_KEYS: [&str; 1] = ["ldap.attr_map"];

type Env = BTreeMap<String, String>;

/// Reads the process environment into a map (non-UTF-8 variables are skipped).
pub fn process_env() -> Env {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// The built-in defaults alone (no file, no environment), for tests.
#[cfg(test)]
pub(crate) fn built_in() -> Config {
    load(
        &LoadOptions {
            config_path: None,
            ..Default::default()
        },
        &Default::default(),
    )
    .expect("defaults")
}

/// Loads, merges, resolves and validates the configuration.
pub fn load(opts: &LoadOptions, env: &Env) -> Result<Config, ConfigError> {
    let mut sources: BTreeMap<String, Source> = BTreeMap::new();
    let mut warnings = Vec::new();
    let mut notices = Vec::new();
    let defaults = Settings::default();
    let known = known_keys(&defaults);
    for key in &known {
        sources.insert(key.clone(), Source::Default);
    }

    // Layer 2: TOML file.
    let (file_path, explicit) = match (&opts.config_path, env.get("KEYSTONE_CONFIG")) {
        (Some(p), _) => (PathBuf::from(p), true),
        (None, Some(p)) if !p.is_empty() => (PathBuf::from(p), true),
        _ => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let mut file_dict = Dict::new();
    let mut config_file = None;
    match std::fs::read_to_string(&file_path) {
        Ok(text) => {
            let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError {
                key: None,
                value: None,
                source: Some(Source::File {
                    path: file_path.clone(),
                    line: None,
                }),
                message: format!("invalid TOML: {}", one_line(&e.to_string())),
            })?;
            let value = Value::serialize(&table).map_err(|e| ConfigError::plain(e.to_string()))?;
            if let Value::Dict(_, d) = value {
                file_dict = d;
            }
            for key in leaf_keys(&file_dict) {
                let line = find_line(&text, &key);
                sources.insert(
                    key,
                    Source::File {
                        path: file_path.clone(),
                        line,
                    },
                );
            }
            config_file = Some(file_path.clone());
        }
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(ConfigError {
                key: None,
                value: None,
                source: Some(Source::File {
                    path: file_path.clone(),
                    line: None,
                }),
                message: format!("cannot read configuration file: {e}"),
            });
        }
    }

    // Layer 3: upstream names.
    let mut alias_dict = Dict::new();
    for (var, key) in ALIASES {
        let Some(raw) = env.get(var) else { continue };
        let value = if var == "DB_POSTGRES_ENABLE" {
            match lenient::parse_bool(raw) {
                Some(true) => "postgres".to_string(),
                Some(false) => "sqlite".to_string(),
                None => {
                    return Err(ConfigError {
                        key: Some(key.to_string()),
                        value: Some(format!("\"{raw}\"")),
                        source: Some(Source::Alias(var.to_string())),
                        message: "expected a boolean (true/false, yes/no, on/off, 1/0)".into(),
                    });
                }
            }
        } else {
            raw.clone()
        };
        insert_path(&mut alias_dict, key, Value::from(value));
        notices.push(format!(
            "using upstream environment variable {var} for {key}"
        ));
        sources.insert(key.to_string(), Source::Alias(var.to_string()));
    }
    if let Some(raw) = env.get("STORAGE_UPLOAD_DIR") {
        if !env.contains_key("CONFIG_UPLOAD_DIR") {
            insert_path(&mut alias_dict, "upload.dir", Value::from(raw.clone()));
            sources.insert(
                "upload.dir".into(),
                Source::Alias("STORAGE_UPLOAD_DIR".into()),
            );
        }
        warnings.push(
            "STORAGE_UPLOAD_DIR is an obsolete name: it is read as upload.dir; set CONFIG_UPLOAD_DIR or KEYSTONE_UPLOAD__DIR instead".into(),
        );
    }
    for var in ["DJANGO_SETTINGS_MODULE", "STORAGE_STATIC_DIR"] {
        if env.contains_key(var) {
            warnings.push(format!(
                "{var} is obsolete and ignored by Keystone; remove it from the environment"
            ));
        }
    }

    // Layer 4: KEYSTONE_<SECTION>__<KEY>.
    let mut env_dict = Dict::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix("KEYSTONE_") else {
            continue;
        };
        if NOT_SETTINGS.contains(&var.as_str()) {
            continue;
        }
        let key = rest.to_lowercase().replace("__", ".");
        let known_key = known.contains(&key)
            || MAP_KEYS
                .iter()
                .any(|m| key.starts_with(&format!("{m}.")) && key.len() > m.len() + 1);
        if !known_key {
            warnings.push(format!(
                "unknown environment variable {var} ignored (no setting {key})"
            ));
            continue;
        }
        if let Some(alias) = ALIASES.iter().find(|(_, k)| *k == key).map(|(a, _)| *a)
            && env.contains_key(alias)
        {
            warnings.push(format!(
                "both {var} and the upstream name {alias} are set; {var} wins"
            ));
        }
        insert_path(&mut env_dict, &key, Value::from(raw.clone()));
        let leaf = MAP_KEYS
            .iter()
            .find(|m| key.starts_with(&format!("{m}.")))
            .map(|m| m.to_string())
            .unwrap_or(key);
        sources.insert(leaf, Source::Env(var.clone()));
    }

    // Layer 5: CLI flags.
    let mut cli_dict = Dict::new();
    for (key, value, flag) in &opts.cli {
        insert_path(&mut cli_dict, key, Value::from(value.clone()));
        sources.insert(key.clone(), Source::Cli(flag.clone()));
    }

    let figment = Figment::from(Serialized::defaults(&defaults))
        .merge(Serialized::defaults(file_dict))
        .merge(Serialized::defaults(alias_dict))
        .merge(Serialized::defaults(env_dict))
        .merge(Serialized::defaults(cli_dict));
    let mut settings: Settings = figment.extract().map_err(|e| figment_error(e, &sources))?;

    resolve_secret_files(&mut settings, &mut sources)?;
    let state_dir = resolve_state_dir(&settings, &sources, env, config_file.is_some(), opts);
    if settings.server.state_dir.is_none() {
        sources.insert(
            "server.state_dir".into(),
            Source::Derived(if env.contains_key("STATE_DIRECTORY") {
                "systemd StateDirectory".into()
            } else if config_file.is_some() || env.contains_key("INVOCATION_ID") {
                "packaged default".into()
            } else {
                "no configuration file: local directory".into()
            }),
        );
    }
    let mut config = Config {
        settings,
        state_dir,
        config_file,
        sources,
        warnings,
        notices,
    };
    config.validate()?;
    if config.settings.logging.file.is_some() {
        // Deliberately not implemented: journald (or stderr) is the one log channel.
        let source = config
            .sources
            .get("logging.file")
            .map(|s| format!(" (from {s})"))
            .unwrap_or_default();
        config.warnings.push(format!(
            "logging.file{source} is not supported and ignored: Keystone logs to journald, or to \
             stderr outside systemd, and writes no log file"
        ));
    }
    if let Some(key) = &config.settings.security.secret_key
        && key.len() < MIN_SECRET_KEY_BYTES
    {
        // SQLite (a trial or small site) keeps working with a short key, but says so.
        let source = config
            .sources
            .get("security.secret_key")
            .map(|s| format!(" (from {s})"))
            .unwrap_or_default();
        let warning = format!(
            "security.secret_key{source} is {} bytes; session tokens signed with it are \
             guessable, use at least {MIN_SECRET_KEY_BYTES} random bytes (PostgreSQL sites \
             refuse to start with a shorter key)",
            key.len()
        );
        config.warnings.push(warning);
    }
    Ok(config)
}

/// The shortest `security.secret_key` a PostgreSQL (production) site accepts: 256 bits.
pub const MIN_SECRET_KEY_BYTES: usize = 32;

/// Why a PostgreSQL site refuses a secret key of `len` bytes.
pub fn weak_secret_message(len: usize) -> String {
    format!(
        "too short for a production (PostgreSQL) deployment: {len} bytes, at least \
         {MIN_SECRET_KEY_BYTES} needed; generate one with `head -c 48 /dev/urandom | base64`"
    )
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn figment_error(e: figment::Error, sources: &BTreeMap<String, Source>) -> ConfigError {
    let path: Vec<String> = e
        .path
        .iter()
        .filter(|p| p.as_str() != "default")
        .cloned()
        .collect();
    let mut key = path.join(".");
    // An unknown field error points at its parent; name the field itself.
    if let figment::error::Kind::UnknownField(field, _) = &e.kind {
        if e.path.last() != Some(field) {
            key = if key.is_empty() {
                field.clone()
            } else {
                format!("{key}.{field}")
            };
        }
        let source = sources.get(&key).cloned();
        return ConfigError {
            key: Some(key),
            value: None,
            source,
            message: "unknown setting (check the spelling; keystone.toml.example lists every key)"
                .into(),
        };
    }
    let source = sources.get(&key).cloned().or_else(|| {
        MAP_KEYS
            .iter()
            .find(|m| key.starts_with(*m))
            .and_then(|m| sources.get(*m).cloned())
    });
    let secret = is_secret(&key);
    let message = match &e.kind {
        figment::error::Kind::Message(m) => m.clone(),
        figment::error::Kind::InvalidType(actual, expected) => {
            if secret {
                format!("invalid type: expected {expected}")
            } else {
                format!("invalid type: found {actual}, expected {expected}")
            }
        }
        figment::error::Kind::UnknownVariant(v, expected) => {
            format!(
                "unknown value \"{v}\", expected one of: {}",
                expected.join(", ")
            )
        }
        other => other.to_string(),
    };
    ConfigError {
        key: if key.is_empty() { None } else { Some(key) },
        value: None,
        source,
        message,
    }
}

/// Reads `<key>_file` secrets unless a higher-priority layer set the key itself.
fn resolve_secret_files(
    s: &mut Settings,
    sources: &mut BTreeMap<String, Source>,
) -> Result<(), ConfigError> {
    fn read(
        key: &str,
        path: &Option<String>,
        target: &mut String,
        sources: &mut BTreeMap<String, Source>,
    ) -> Result<(), ConfigError> {
        let Some(path) = path else { return Ok(()) };
        let file_key = format!("{key}_file");
        let file_src = sources.get(&file_key).cloned().unwrap_or(Source::Default);
        let value_rank = sources.get(key).map(Source::rank).unwrap_or(0);
        if !target.is_empty() && value_rank > file_src.rank() {
            return Ok(());
        }
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            key: Some(file_key.clone()),
            value: Some(format!("\"{path}\"")),
            source: Some(file_src.clone()),
            message: format!("cannot read the secret file: {e}"),
        })?;
        *target = text.trim().to_string();
        sources.insert(
            key.to_string(),
            Source::Derived(format!("read from {path}")),
        );
        Ok(())
    }
    let mut secret_key = s.security.secret_key.clone().unwrap_or_default();
    read(
        "security.secret_key",
        &s.security.secret_key_file,
        &mut secret_key,
        sources,
    )?;
    s.security.secret_key = Some(secret_key).filter(|k| !k.is_empty());
    read(
        "database.password",
        &s.database.password_file,
        &mut s.database.password,
        sources,
    )?;
    read(
        "redis.password",
        &s.redis.password_file,
        &mut s.redis.password,
        sources,
    )?;
    let mut url = s.redis.url.clone().unwrap_or_default();
    read("redis.url", &s.redis.url_file, &mut url, sources)?;
    s.redis.url = Some(url).filter(|u| !u.is_empty());
    read(
        "email.password",
        &s.email.password_file,
        &mut s.email.password,
        sources,
    )?;
    read(
        "ldap.bind_password",
        &s.ldap.bind_password_file,
        &mut s.ldap.bind_password,
        sources,
    )?;
    Ok(())
}

fn resolve_state_dir(
    s: &Settings,
    _sources: &BTreeMap<String, Source>,
    env: &Env,
    have_file: bool,
    opts: &LoadOptions,
) -> PathBuf {
    let dir = if let Some(d) = &s.server.state_dir {
        PathBuf::from(d)
    } else if let Some(d) = env.get("STATE_DIRECTORY").and_then(|v| v.split(':').next()) {
        PathBuf::from(d)
    } else if have_file || env.contains_key("INVOCATION_ID") {
        PathBuf::from(PACKAGED_STATE_DIR)
    } else {
        PathBuf::from(LOCAL_STATE_DIR)
    };
    if dir.is_absolute() {
        dir
    } else {
        let cwd = opts
            .cwd
            .clone()
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("/"));
        cwd.join(dir)
    }
}

/// The keys of the defaults, flattened (`server.bind`, ...), plus `_file` variants of secrets.
fn known_keys(defaults: &Settings) -> Vec<String> {
    let json = serde_json::to_value(defaults).unwrap_or_default();
    let mut out = Vec::new();
    if let serde_json::Value::Object(sections) = json {
        for (section, fields) in sections {
            if let serde_json::Value::Object(fields) = fields {
                for field in fields.keys() {
                    out.push(format!("{section}.{field}"));
                }
            }
        }
    }
    out
}

fn leaf_keys(dict: &Dict) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in dict {
        match v {
            Value::Dict(_, inner) if !MAP_KEYS.iter().any(|m| m.ends_with(&format!(".{k}"))) => {
                for sub in leaf_keys(inner) {
                    out.push(format!("{k}.{sub}"));
                }
            }
            _ => out.push(k.clone()),
        }
    }
    out
}

fn insert_path(dict: &mut Dict, key: &str, value: Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or_default().to_string();
    let mut cur = dict;
    for p in parts {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| Value::from(Dict::new()));
        if !matches!(entry, Value::Dict(..)) {
            *entry = Value::from(Dict::new());
        }
        let Value::Dict(_, inner) = entry else {
            return;
        };
        cur = inner;
    }
    cur.insert(last, value);
}

/// The line of `section.key` in TOML text: after `[section]`, the first `key =` line.
fn find_line(text: &str, key: &str) -> Option<usize> {
    let (section, field) = key.rsplit_once('.')?;
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            current = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            continue;
        }
        if let Some((k, _)) = t.split_once('=') {
            let k = k.trim().trim_matches('"');
            if current == section && k == field {
                return Some(i + 1);
            }
            if current.is_empty() && k == key {
                return Some(i + 1);
            }
        }
    }
    None
}

/// The inclusive limit of a throttle rate: count per period in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub period_secs: u64,
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (count, period) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| "expected <count>/<period>, e.g. 120/min".to_string())?;
        let count: u64 = count
            .trim()
            .parse()
            .map_err(|_| format!("invalid request count \"{count}\""))?;
        // DRF reads only the unit's first letter; a leading number of units (`15m`) is a
        // Keystone extension.
        let period_text = period.trim();
        let unit_at = period_text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(period_text.len());
        let (units, unit) = period_text.split_at(unit_at);
        let units: u64 = match units {
            "" => 1,
            n => n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                format!("invalid period \"{period}\": the number of units must be at least 1")
            })?,
        };
        let unit_secs = match unit.chars().next() {
            Some('s') => 1,
            Some('m') => 60,
            Some('h') => 3600,
            Some('d') => 86400,
            _ => {
                return Err(format!(
                    "invalid period \"{period}\": expected s, m, h or d (second, minute, hour, day)"
                ));
            }
        };
        let period_secs = units
            .checked_mul(unit_secs)
            .ok_or_else(|| format!("invalid period \"{period}\": too long"))?;
        Ok(Rate { count, period_secs })
    }
}

/// Where the web role listens when no socket is inherited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindAddr {
    Tcp(String),
    Unix(PathBuf),
}

impl FromStr for BindAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("expected unix:/path/to/socket".into());
            }
            return Ok(BindAddr::Unix(PathBuf::from(path)));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| "expected host:port or unix:/path".to_string())?;
        port.parse::<u16>()
            .map_err(|_| format!("invalid port \"{port}\""))?;
        if host.is_empty() {
            return Err("missing host (use 0.0.0.0:PORT for all interfaces)".into());
        }
        Ok(BindAddr::Tcp(s.to_string()))
    }
}

pub const LOG_LEVELS: [&str; 8] = [
    "critical", "error", "warning", "warn", "info", "debug", "trace", "off",
];

/// The `tracing` filter directive for a configured level name.
pub fn level_filter(level: &str) -> Option<&'static str> {
    Some(match level.trim().to_ascii_lowercase().as_str() {
        "critical" | "error" => "error",
        "warning" | "warn" => "warn",
        "info" => "info",
        "debug" => "debug",
        "trace" => "trace",
        "off" => "off",
        _ => return None,
    })
}

impl Config {
    fn err(&self, key: &str, value: Option<String>, message: impl Into<String>) -> ConfigError {
        let value = if is_secret(key) {
            value.map(|_| "***".to_string())
        } else {
            value
        };
        ConfigError {
            key: Some(key.to_string()),
            value,
            source: self.sources.get(key).cloned(),
            message: message.into(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.settings;
        let q = |v: &str| Some(format!("\"{v}\""));
        s.server
            .bind
            .parse::<BindAddr>()
            .map_err(|m| self.err("server.bind", q(&s.server.bind), m))?;
        s.server.timezone.parse::<chrono_tz::Tz>().map_err(|_| {
            self.err(
                "server.timezone",
                q(&s.server.timezone),
                "unknown time zone (use an IANA name such as UTC or Europe/Berlin)",
            )
        })?;
        if level_filter(&s.logging.level).is_none() {
            return Err(self.err(
                "logging.level",
                q(&s.logging.level),
                "expected one of CRITICAL, ERROR, WARNING, INFO, DEBUG, TRACE",
            ));
        }
        if !["text", "json"].contains(&s.logging.format.to_ascii_lowercase().as_str()) {
            return Err(self.err(
                "logging.format",
                q(&s.logging.format),
                "expected text or json",
            ));
        }
        s.throttle
            .anon
            .parse::<Rate>()
            .map_err(|m| self.err("throttle.anon", q(&s.throttle.anon), m))?;
        s.throttle
            .user
            .parse::<Rate>()
            .map_err(|m| self.err("throttle.user", q(&s.throttle.user), m))?;
        if !s.security.login_failures.trim().is_empty() {
            let rate = s.security.login_failures.parse::<Rate>().map_err(|m| {
                self.err("security.login_failures", q(&s.security.login_failures), m)
            })?;
            if rate.count == 0 {
                return Err(self.err(
                    "security.login_failures",
                    q(&s.security.login_failures),
                    "allow at least 1 failure per period, or set \"\" to turn the limit off",
                ));
            }
        }
        if s.server.trusted_proxies == 0 {
            return Err(self.err(
                "server.trusted_proxies",
                Some("0".into()),
                "must be at least 1 (turn server.trust_forwarded_for off to ignore X-Forwarded-For)",
            ));
        }
        for origin in &s.security.allowed_origins {
            let ok = url::Url::parse(origin)
                .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .unwrap_or(false);
            if !ok {
                return Err(self.err(
                    "security.allowed_origins",
                    q(origin),
                    "each origin needs a scheme and host, e.g. https://keystone.example.org",
                ));
            }
        }
        if s.security.session_age == 0 {
            return Err(self.err(
                "security.session_age",
                Some("0".into()),
                "must be at least 1 second",
            ));
        }
        if s.database.pool_size == 0 {
            return Err(self.err("database.pool_size", Some("0".into()), "must be at least 1"));
        }
        if s.database.engine == Engine::Postgres
            && let Some(key) = &s.security.secret_key
            && key.len() < MIN_SECRET_KEY_BYTES
        {
            return Err(self.err(
                "security.secret_key",
                Some(String::new()),
                weak_secret_message(key.len()),
            ));
        }
        if s.database.engine == Engine::Postgres && s.database.name.is_empty() {
            return Err(self.err(
                "database.name",
                q(""),
                "a PostgreSQL database name is required",
            ));
        }
        if let Some(url) = &s.redis.url {
            let ok = url::Url::parse(url)
                .map(|u| matches!(u.scheme(), "redis" | "rediss") && u.host().is_some())
                .unwrap_or(false);
            if !ok {
                return Err(self.err(
                    "redis.url",
                    Some(url.clone()),
                    "expected a redis://host[:port][/db] or rediss:// URL",
                ));
            }
        }
        if let Some(host) = &s.redis.host
            && (host.contains('/') || host.contains(' '))
        {
            return Err(self.err(
                "redis.host",
                q(host),
                "expected a bare host name or address (use redis.url for a full URL)",
            ));
        }
        if s.email.use_tls && s.email.use_ssl {
            return Err(self.err(
                "email.use_ssl",
                Some("true".into()),
                "use_tls (STARTTLS) and use_ssl (implicit TLS) cannot both be on",
            ));
        }
        let uri = &s.ldap.server_uri;
        if !(uri.is_empty() || uri.starts_with("ldap://") || uri.starts_with("ldaps://")) {
            return Err(self.err(
                "ldap.server_uri",
                q(&s.ldap.server_uri),
                "expected an ldap:// or ldaps:// URI",
            ));
        }
        const LDAP_FIELDS: [&str; 6] = [
            "username",
            "first_name",
            "last_name",
            "email",
            "department",
            "role",
        ];
        for field in s.ldap.attr_map.keys() {
            if !LDAP_FIELDS.contains(&field.as_str()) {
                return Err(self.err(
                    "ldap.attr_map",
                    q(field),
                    format!("unknown user field; allowed: {}", LDAP_FIELDS.join(", ")),
                ));
            }
        }
        if !(0.0..=1.0).contains(&s.ldap.max_deactivate_fraction) {
            return Err(self.err(
                "ldap.max_deactivate_fraction",
                Some(s.ldap.max_deactivate_fraction.to_string()),
                "expected a fraction between 0 and 1",
            ));
        }
        self.metrics_ports()?;
        s.metrics.address.parse::<IpAddr>().map_err(|_| {
            self.err(
                "metrics.address",
                q(&s.metrics.address),
                "expected an IP address",
            )
        })?;
        if s.worker.heartbeat == 0 {
            return Err(self.err(
                "worker.heartbeat",
                Some("0".into()),
                "must be at least 1 second",
            ));
        }
        for (key, value) in [
            ("database.acquire_timeout", s.database.acquire_timeout),
            ("worker.visibility_timeout", s.worker.visibility_timeout),
            ("worker.max_deliveries", u64::from(s.worker.max_deliveries)),
            ("beat.lease", s.beat.lease),
            ("batch.max_steps", s.batch.max_steps),
            ("batch.time_limit", s.batch.time_limit),
        ] {
            if value == 0 {
                return Err(self.err(key, Some("0".into()), "must be at least 1"));
            }
        }
        if s.batch.max_depth > MAX_BATCH_DEPTH {
            return Err(self.err(
                "batch.max_depth",
                Some(s.batch.max_depth.to_string()),
                format!("must be at most {MAX_BATCH_DEPTH}"),
            ));
        }
        if s.redis.prefix.is_empty() || s.redis.prefix.contains(char::is_whitespace) {
            return Err(self.err(
                "redis.prefix",
                q(&s.redis.prefix),
                "expected a non-empty key prefix without spaces, e.g. keystone",
            ));
        }
        for (key, _, cron) in s.schedule.entries() {
            if cron.trim().is_empty() {
                continue;
            }
            parse_cron(cron).map_err(|m| self.err(&format!("schedule.{key}"), q(cron), m))?;
        }
        Ok(())
    }

    /// Metrics ports in order of preference, from `metrics.ports`.
    pub fn metrics_ports(&self) -> Result<Vec<u16>, ConfigError> {
        let mut out = Vec::new();
        for item in &self.settings.metrics.ports {
            let bad = || {
                self.err(
                    "metrics.ports",
                    Some(format!("\"{item}\"")),
                    "expected port numbers or an inclusive range such as 9101-9149",
                )
            };
            if let Some((a, b)) = item.split_once('-') {
                let a: u16 = a.trim().parse().map_err(|_| bad())?;
                let b: u16 = b.trim().parse().map_err(|_| bad())?;
                if a == 0 || b < a {
                    return Err(bad());
                }
                out.extend(a..=b);
            } else {
                let p: u16 = item.trim().parse().map_err(|_| bad())?;
                if p == 0 {
                    return Err(bad());
                }
                out.push(p);
            }
        }
        Ok(out)
    }

    pub fn bind(&self) -> BindAddr {
        self.settings
            .server
            .bind
            .parse()
            .unwrap_or_else(|_| BindAddr::Tcp("127.0.0.1:8000".into()))
    }

    /// An absolute path for a path setting (relative ones live under the state directory).
    pub fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.state_dir.join(p)
        }
    }

    pub fn upload_dir(&self) -> PathBuf {
        match &self.settings.upload.dir {
            Some(d) => self.path(d),
            None => self.state_dir.join("media"),
        }
    }

    /// The SQLite file: `database.path`, else `<state_dir>/<name with extension replaced by .db>`.
    pub fn sqlite_path(&self) -> PathBuf {
        if let Some(p) = &self.settings.database.path {
            return self.path(p);
        }
        let name = Path::new(&self.settings.database.name);
        if name.is_absolute() {
            return name.to_path_buf();
        }
        self.path(&name.with_extension("db").to_string_lossy())
    }

    /// The Redis URL, or None when Redis is not configured.
    pub fn redis_url(&self) -> Option<String> {
        let r = &self.settings.redis;
        if let Some(url) = &r.url {
            return Some(url.clone());
        }
        let host = r.host.as_ref()?;
        let auth = if r.password.is_empty() {
            String::new()
        } else {
            let encoded: String =
                url::form_urlencoded::byte_serialize(r.password.as_bytes()).collect();
            format!(":{}@", encoded.replace('+', "%20"))
        };
        Some(format!("redis://{auth}{host}:{}/{}", r.port, r.db))
    }

    pub fn timezone(&self) -> chrono_tz::Tz {
        self.settings
            .server
            .timezone
            .parse()
            .unwrap_or(chrono_tz::UTC)
    }

    /// The per-username failed-login limit, None when `security.login_failures` is empty.
    pub fn login_failure_limit(&self) -> Option<Rate> {
        let text = self.settings.security.login_failures.trim();
        if text.is_empty() {
            return None;
        }
        text.parse().ok()
    }

    pub fn worker_concurrency(&self) -> usize {
        match self.settings.worker.concurrency {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n as usize,
        }
    }

    /// Effective settings as TOML with secrets shown as `***`; with `sources`, each key is
    /// followed by a comment naming the layer that set it.
    pub fn render(&self, with_sources: bool) -> String {
        let json = serde_json::to_value(&self.settings).unwrap_or_default();
        let mut out = String::new();
        let serde_json::Value::Object(sections) = json else {
            return out;
        };
        for (i, (section, fields)) in sections.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&format!("[{section}]\n"));
            let serde_json::Value::Object(fields) = fields else {
                continue;
            };
            for (field, value) in fields {
                let key = format!("{section}.{field}");
                let value = match value {
                    serde_json::Value::Null => {
                        if with_sources {
                            out.push_str(&format!("# {field} is unset\n"));
                        }
                        continue;
                    }
                    serde_json::Value::String(s) if is_secret(&key) && !s.is_empty() => {
                        "\"***\"".to_string()
                    }
                    serde_json::Value::Object(map) => {
                        let items: Vec<String> = map
                            .iter()
                            .map(|(k, v)| format!("{k} = {}", toml_scalar(v)))
                            .collect();
                        format!("{{ {} }}", items.join(", "))
                    }
                    v => toml_scalar(v),
                };
                out.push_str(&format!("{field} = {value}"));
                if with_sources {
                    let src = self.sources.get(&key).cloned().unwrap_or(Source::Default);
                    out.push_str(&format!("  # {src}"));
                }
                out.push('\n');
            }
            if section == "server" && with_sources {
                out.push_str(&format!(
                    "# effective state directory: {}\n",
                    self.state_dir.display()
                ));
            }
        }
        out
    }
}

fn toml_scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => toml::Value::String(s.clone()).to_string(),
        serde_json::Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(toml_scalar).collect();
            format!("[{}]", parts.join(", "))
        }
        other => other.to_string(),
    }
}

/// Parses a five-field crontab expression.
/// A schedule's cron expression: the five standard fields (minute hour day-of-month month
/// day-of-week). Six fields are also accepted, the first being seconds (`*/5 * * * * *`):
/// an extension for sub-minute schedules such as the beat tests use.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    let invalid = |e: croner::errors::CronError| format!("invalid cron expression: {e}");
    match expr.split_whitespace().count() {
        5 => croner::Cron::from_str(expr).map_err(invalid),
        6 => croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .build()
            .parse(expr)
            .map_err(invalid),
        _ => Err("expected five fields: minute hour day-of-month month day-of-week".into()),
    }
}

#[cfg(test)]
mod tests;
