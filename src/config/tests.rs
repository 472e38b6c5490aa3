//! Config layering and validation: every source and every error path.

use super::*;
use std::io::Write;

fn env(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(text.as_bytes()).expect("write");
    f
}

fn with_file(f: &tempfile::NamedTempFile) -> LoadOptions {
    LoadOptions {
        config_path: Some(f.path().to_path_buf()),
        cwd: Some(PathBuf::from("/srv")),
        ..Default::default()
    }
}

fn no_file() -> LoadOptions {
    LoadOptions {
        config_path: None,
        cwd: Some(PathBuf::from("/srv")),
        ..Default::default()
    }
}

/// Loads with `/nonexistent` as default path so the host's /etc does not leak in.
fn load_env(e: &Env) -> Result<Config, ConfigError> {
    let mut e = e.clone();
    e.entry("KEYSTONE_CONFIG".into())
        .or_insert_with(|| "/nonexistent/keystone.toml".into());
    let f = file("");
    let mut opts = with_file(&f);
    if e.get("KEYSTONE_CONFIG").map(String::as_str) == Some("/nonexistent/keystone.toml") {
        e.remove("KEYSTONE_CONFIG");
        opts = no_file();
        // The default path is absent on test machines; an absent default is not an error.
        opts.config_path = None;
    }
    load(&opts, &e)
}

#[test]
fn defaults_equal_upstream() {
    let c = load_env(&env(&[])).expect("defaults load");
    let s = &c.settings;
    assert_eq!(s.server.bind, "127.0.0.1:8000");
    assert_eq!(s.security.allowed_hosts, vec!["localhost", "127.0.0.1"]);
    assert_eq!(s.security.allowed_origins.len(), 8);
    assert_eq!(s.security.session_age, 1_209_600);
    assert_eq!(s.upload.max_size, 2_621_440);
    assert_eq!(s.upload.allowed_types.len(), 22);
    assert_eq!(s.throttle.anon, "120/min");
    assert_eq!(s.database.engine, Engine::Sqlite);
    assert_eq!(c.metrics_ports().expect("ports").len(), 49);
    assert!(c.redis_url().is_none());
    assert_eq!(c.sources.get("server.bind"), Some(&Source::Default));
}

#[test]
fn state_dir_is_local_without_config_and_packaged_with_one() {
    let c = load_env(&env(&[])).expect("load");
    if !Path::new(DEFAULT_CONFIG_PATH).exists() {
        assert_eq!(c.state_dir, PathBuf::from("/srv/keystone-data"));
        assert_eq!(
            c.sqlite_path(),
            PathBuf::from("/srv/keystone-data/keystone.db")
        );
    }
    let f = file("[server]\ntimezone = \"UTC\"\n");
    let c = load(&with_file(&f), &env(&[])).expect("load");
    assert_eq!(c.state_dir, PathBuf::from(PACKAGED_STATE_DIR));
    let c = load(&with_file(&f), &env(&[("STATE_DIRECTORY", "/var/lib/ks")])).expect("load");
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/ks"));
    assert_eq!(c.upload_dir(), PathBuf::from("/var/lib/ks/media"));
}

#[test]
fn file_then_alias_then_keystone_env_then_cli() {
    let f = file(
        "[server]\nbind = \"127.0.0.1:7000\"\n\n[database]\nhost = \"file-host\"\nport = 5433\n",
    );
    let opts = with_file(&f);
    let c = load(&opts, &env(&[])).expect("file");
    assert_eq!(c.settings.server.bind, "127.0.0.1:7000");
    assert_eq!(c.settings.database.port, 5433);
    assert_eq!(
        c.sources.get("database.host"),
        Some(&Source::File {
            path: f.path().to_path_buf(),
            line: Some(5)
        })
    );

    let c = load(&opts, &env(&[("DB_HOST", "alias-host")])).expect("alias");
    assert_eq!(c.settings.database.host, "alias-host");
    assert_eq!(
        c.sources.get("database.host"),
        Some(&Source::Alias("DB_HOST".into()))
    );

    let c = load(
        &opts,
        &env(&[
            ("DB_HOST", "alias-host"),
            ("KEYSTONE_DATABASE__HOST", "env-host"),
        ]),
    )
    .expect("env");
    assert_eq!(c.settings.database.host, "env-host");
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("KEYSTONE_DATABASE__HOST") && w.contains("DB_HOST")),
        "{:?}",
        c.warnings
    );

    let mut opts = opts.clone();
    opts.cli.push((
        "server.bind".into(),
        "unix:/run/k.sock".into(),
        "--bind".into(),
    ));
    let c = load(&opts, &env(&[("KEYSTONE_SERVER__BIND", "127.0.0.1:1")])).expect("cli");
    assert_eq!(c.bind(), BindAddr::Unix(PathBuf::from("/run/k.sock")));
    assert_eq!(
        c.sources.get("server.bind"),
        Some(&Source::Cli("--bind".into()))
    );
}

#[test]
fn upstream_aliases_convert_their_values() {
    let c = load_env(&env(&[
        ("DB_POSTGRES_ENABLE", "yes"),
        ("DB_NAME", "ks"),
        ("SECURE_ALLOWED_HOSTS", "localhost, api.example.org,"),
        ("AUTH_LDAP_ATTR_MAP", "first_name=givenName,last_name=sn"),
        ("CONFIG_UPLOAD_SIZE", "2621440.0"),
        ("SECURE_SSL_TOKENS", "on"),
        ("REDIS_HOST", "127.0.0.1"),
        ("REDIS_PASSWORD", "p@ss:w/rd"),
    ]))
    .expect("aliases");
    let s = &c.settings;
    assert_eq!(s.database.engine, Engine::Postgres);
    assert_eq!(s.database.name, "ks");
    assert_eq!(
        s.security.allowed_hosts,
        vec!["localhost", "api.example.org"]
    );
    assert_eq!(
        s.ldap.attr_map.get("last_name").map(String::as_str),
        Some("sn")
    );
    assert_eq!(s.upload.max_size, 2_621_440);
    assert!(s.security.ssl_tokens);
    assert_eq!(
        c.redis_url().as_deref(),
        Some("redis://:p%40ss%3Aw%2Frd@127.0.0.1:6379/0")
    );
    assert!(c.notices.iter().any(|n| n.contains("DB_POSTGRES_ENABLE")));
}

#[test]
fn sqlite_path_follows_upstream_db_name_rule() {
    let c = load_env(&env(&[("DB_NAME", "my.data")])).expect("load");
    assert_eq!(c.sqlite_path(), c.state_dir.join("my.db"));
    let c = load_env(&env(&[("DB_NAME", "/app/keystone/keystone.db")])).expect("load");
    assert_eq!(c.sqlite_path(), PathBuf::from("/app/keystone/keystone.db"));
}

#[test]
fn storage_upload_dir_is_honoured_with_a_warning() {
    let c = load_env(&env(&[
        ("STORAGE_UPLOAD_DIR", "/data/media"),
        ("DJANGO_SETTINGS_MODULE", "x"),
    ]))
    .expect("load");
    assert_eq!(c.upload_dir(), PathBuf::from("/data/media"));
    assert!(c.warnings.iter().any(|w| w.contains("STORAGE_UPLOAD_DIR")));
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("DJANGO_SETTINGS_MODULE"))
    );
}

#[test]
fn unknown_keystone_variable_is_a_warning_not_an_error() {
    // KEYSTONE_CONFIG names a file explicitly: a missing one is an error.
    let e = load(
        &no_file(),
        &env(&[("KEYSTONE_CONFIG", "/nonexistent/keystone.toml")]),
    )
    .expect_err("missing KEYSTONE_CONFIG file");
    assert!(e.to_string().contains("/nonexistent/keystone.toml"), "{e}");
    let c = load_env(&env(&[
        ("KEYSTONE_SERVER__BINDD", "x"),
        ("KEYSTONE_SUPERUSER_PASSWORD", "secret"),
        ("KEYSTONE_LDAP__ATTR_MAP__EMAIL", "mail"),
    ]))
    .expect("load");
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("KEYSTONE_SERVER__BINDD"));
    assert_eq!(
        c.settings.ldap.attr_map.get("email").map(String::as_str),
        Some("mail")
    );
}

#[test]
fn unknown_key_in_file_is_an_error_naming_key_and_file() {
    let f = file("[server]\nbnd = \"127.0.0.1:1\"\n");
    let e = load(&with_file(&f), &env(&[])).expect_err("typo must fail");
    assert_eq!(e.key.as_deref(), Some("server.bnd"));
    let text = e.to_string();
    assert!(text.contains(&f.path().display().to_string()), "{text}");
    assert!(text.contains(":2"), "line number: {text}");
    let f = file("[sevrer]\nbind = \"x\"\n");
    let e = load(&with_file(&f), &env(&[])).expect_err("unknown section");
    assert_eq!(e.key.as_deref(), Some("sevrer"));
}

#[test]
fn wrong_types_name_key_value_and_source() {
    let e = load_env(&env(&[("KEYSTONE_SECURITY__SESSION_AGE", "two weeks")])).expect_err("int");
    assert_eq!(e.key.as_deref(), Some("security.session_age"));
    assert_eq!(
        e.source,
        Some(Source::Env("KEYSTONE_SECURITY__SESSION_AGE".into()))
    );
    assert!(e.to_string().contains("two weeks"), "{e}");

    let e = load_env(&env(&[("SECURE_SSL_REDIRECT", "maybe")])).expect_err("bool");
    assert_eq!(e.key.as_deref(), Some("security.ssl_redirect"));
    assert_eq!(e.source, Some(Source::Alias("SECURE_SSL_REDIRECT".into())));

    let e = load_env(&env(&[("DB_POSTGRES_ENABLE", "perhaps")])).expect_err("engine alias");
    assert_eq!(e.key.as_deref(), Some("database.engine"));

    let f = file("[database]\nengine = \"mysql\"\n");
    let e = load(&with_file(&f), &env(&[])).expect_err("enum");
    assert_eq!(e.key.as_deref(), Some("database.engine"));
    assert!(e.to_string().contains("mysql"), "{e}");

    let e = load_env(&env(&[("DB_PORT", "70000")])).expect_err("port range");
    assert_eq!(e.key.as_deref(), Some("database.port"));
}

#[test]
fn semantic_validation_errors() {
    let cases: &[(&str, &str, &str)] = &[
        ("KEYSTONE_SERVER__BIND", "nonsense", "server.bind"),
        ("CONFIG_TIMEZONE", "Mars/Olympus", "server.timezone"),
        ("LOG_APP_LEVEL", "LOUD", "logging.level"),
        ("KEYSTONE_LOGGING__FORMAT", "xml", "logging.format"),
        ("API_THROTTLE_ANON", "ten/min", "throttle.anon"),
        ("API_THROTTLE_USER", "10/fortnight", "throttle.user"),
        (
            "SECURE_ALLOWED_ORIGINS",
            "example.org",
            "security.allowed_origins",
        ),
        ("KEYSTONE_REDIS__URL", "http://x", "redis.url"),
        ("AUTH_LDAP_SERVER_URI", "http://ldap", "ldap.server_uri"),
        ("AUTH_LDAP_ATTR_MAP", "shoe_size=x", "ldap.attr_map"),
        ("AUTH_LDAP_ATTR_MAP", "a=b=c", "ldap.attr_map"),
        ("CONFIG_METRICS_PORTS", "9200-9100", "metrics.ports"),
        ("KEYSTONE_METRICS__ADDRESS", "localhost", "metrics.address"),
        (
            "KEYSTONE_SCHEDULE__LDAP_SYNC",
            "every minute",
            "schedule.ldap_sync",
        ),
        ("KEYSTONE_DATABASE__POOL_SIZE", "0", "database.pool_size"),
        (
            "KEYSTONE_WORKER__VISIBILITY_TIMEOUT",
            "0",
            "worker.visibility_timeout",
        ),
        (
            "KEYSTONE_WORKER__MAX_DELIVERIES",
            "0",
            "worker.max_deliveries",
        ),
        ("KEYSTONE_BEAT__LEASE", "0", "beat.lease"),
        ("KEYSTONE_REDIS__PREFIX", "my queue", "redis.prefix"),
        (
            "KEYSTONE_SCHEDULE__LOG_CLEANUP",
            "* * * * * * *",
            "schedule.log_cleanup",
        ),
    ];
    for (var, value, key) in cases {
        let e = load_env(&env(&[(var, value)])).expect_err(var);
        assert_eq!(e.key.as_deref(), Some(*key), "{var}={value}: {e}");
        assert!(e.source.is_some(), "{var}: source named: {e}");
    }
    let e = load_env(&env(&[
        ("EMAIL_USE_TLS", "1"),
        ("KEYSTONE_EMAIL__USE_SSL", "1"),
    ]))
    .expect_err("tls+ssl");
    assert_eq!(e.key.as_deref(), Some("email.use_ssl"));
}

#[test]
fn secrets_come_from_files_and_are_redacted() {
    let secret = file("  s3cr3t-from-file \n");
    let path = secret.path().display().to_string();
    let c = load_env(&env(&[
        ("KEYSTONE_SECURITY__SECRET_KEY_FILE", &path),
        ("DB_PASSWORD", "hunter2"),
    ]))
    .expect("load");
    assert_eq!(
        c.settings.security.secret_key.as_deref(),
        Some("s3cr3t-from-file")
    );
    let shown = c.render(true);
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        shown.contains("password = \"***\"  # environment variable DB_PASSWORD (upstream name)"),
        "{shown}"
    );

    let e = load_env(&env(&[(
        "KEYSTONE_DATABASE__PASSWORD_FILE",
        "/nonexistent/secret",
    )]))
    .expect_err("unreadable secret file");
    assert_eq!(e.key.as_deref(), Some("database.password_file"));

    let e = load_env(&env(&[("KEYSTONE_REDIS__URL", "ftp://user:topsecret@x")])).expect_err("url");
    assert!(!e.to_string().contains("topsecret"), "{e}");
}

#[test]
fn missing_explicit_file_and_bad_toml_are_errors() {
    let opts = LoadOptions {
        config_path: Some(PathBuf::from("/nonexistent/keystone.toml")),
        ..Default::default()
    };
    let e = load(&opts, &env(&[])).expect_err("missing");
    assert!(e.to_string().contains("/nonexistent/keystone.toml"), "{e}");
    let f = file("[server\nbind = 1");
    let e = load(&with_file(&f), &env(&[])).expect_err("syntax");
    assert!(e.to_string().contains("invalid TOML"), "{e}");
}

#[test]
fn bool_and_list_syntax_from_toml_strings_and_arrays() {
    let f = file(
        "[security]\nssl_tokens = \"yes\"\nallowed_hosts = [\" a \", \"\", \"b\"]\n[metrics]\nports = [9300, 9301]\n",
    );
    let c = load(&with_file(&f), &env(&[])).expect("load");
    assert!(c.settings.security.ssl_tokens);
    assert_eq!(c.settings.security.allowed_hosts, vec!["a", "b"]);
    assert_eq!(c.metrics_ports().expect("ports"), vec![9300, 9301]);
}

#[test]
fn rates_parse_first_letter_of_period() {
    assert_eq!(
        "120/min".parse::<Rate>(),
        Ok(Rate {
            count: 120,
            period_secs: 60
        })
    );
    assert_eq!(
        "5/sec".parse::<Rate>(),
        Ok(Rate {
            count: 5,
            period_secs: 1
        })
    );
    assert_eq!(
        "1000/day".parse::<Rate>(),
        Ok(Rate {
            count: 1000,
            period_secs: 86400
        })
    );
    assert!("x/min".parse::<Rate>().is_err());
    assert!("10".parse::<Rate>().is_err());
}

/// keystone.toml.example documents every key, and its documented values load cleanly.
#[test]
fn schedules_take_five_fields_or_six_with_seconds() {
    let c = load_env(&env(&[
        ("KEYSTONE_SCHEDULE__LDAP_SYNC", "*/10 * * * * *"),
        ("KEYSTONE_REDIS__PREFIX", "site-a"),
        ("KEYSTONE_BEAT__LEASE", "5"),
    ]))
    .expect("six fields load");
    assert_eq!(c.settings.redis.prefix, "site-a");
    assert_eq!(c.settings.beat.lease, 5);
    let cron = parse_cron(&c.settings.schedule.ldap_sync).expect("cron");
    let at = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:03Z")
        .expect("time")
        .with_timezone(&chrono::Utc);
    let next = cron.find_next_occurrence(&at, false).expect("next");
    assert_eq!(next.to_rfc3339(), "2026-01-01T00:00:10+00:00");
    let hourly = parse_cron("0 * * * *").expect("five fields");
    let next = hourly.find_next_occurrence(&at, false).expect("next");
    assert_eq!(next.to_rfc3339(), "2026-01-01T01:00:00+00:00");
    let defaults = load_env(&env(&[])).expect("defaults");
    assert_eq!(defaults.settings.redis.prefix, "keystone");
    assert_eq!(defaults.settings.worker.max_deliveries, 5);
    assert_eq!(defaults.settings.beat.lease, 30);
}

#[test]
fn example_file_lists_every_key_and_loads() {
    let text = include_str!("../../keystone.toml.example");
    let mut section = String::new();
    let mut documented = Vec::new();
    let mut uncommented = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.trim_matches(|c| c == '[' || c == ']').to_string();
            uncommented.push_str(&format!("{t}\n"));
            continue;
        }
        if let Some(rest) = t.strip_prefix("# ")
            && let Some((key, _)) = rest.split_once(" = ")
            && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            documented.push(format!("{section}.{key}"));
            if !key.ends_with("_file") {
                uncommented.push_str(rest);
                uncommented.push('\n');
            }
        }
    }
    for key in known_keys(&Settings::default()) {
        assert!(
            documented.contains(&key),
            "{key} missing from keystone.toml.example"
        );
    }
    let f = file(&uncommented);
    let c = load(&with_file(&f), &env(&[])).expect("example values load");
    assert_eq!(c.settings.ldap.attr_map.len(), 3);
}

#[test]
fn periods_may_count_units_and_login_failures_validate() {
    let rate = |count, period_secs| Ok(Rate { count, period_secs });
    assert_eq!("5/15m".parse::<Rate>(), rate(5, 900));
    assert_eq!("5/15min".parse::<Rate>(), rate(5, 900));
    assert_eq!("3/2h".parse::<Rate>(), rate(3, 7200));
    assert_eq!("3/1d".parse::<Rate>(), rate(3, 86400));
    assert!("5/0m".parse::<Rate>().is_err());
    assert!("5/15".parse::<Rate>().is_err());
    assert!("5/99999999999999999999m".parse::<Rate>().is_err());

    let defaults = load_env(&env(&[])).expect("defaults");
    assert_eq!(
        defaults.login_failure_limit(),
        Some(Rate {
            count: 5,
            period_secs: 900
        })
    );
    assert!(!defaults.settings.server.trust_forwarded_for);
    assert_eq!(defaults.settings.server.trusted_proxies, 1);
    assert_eq!(defaults.settings.security.password_hash_concurrency, 0);
    let off = load_env(&env(&[("KEYSTONE_SECURITY__LOGIN_FAILURES", "")])).expect("off");
    assert_eq!(off.login_failure_limit(), None);
    for (key, value) in [
        ("KEYSTONE_SECURITY__LOGIN_FAILURES", "0/15m"),
        ("KEYSTONE_SECURITY__LOGIN_FAILURES", "five"),
        ("KEYSTONE_SERVER__TRUSTED_PROXIES", "0"),
    ] {
        let e = load_env(&env(&[(key, value)])).expect_err(value);
        let expected = key
            .trim_start_matches("KEYSTONE_")
            .to_ascii_lowercase()
            .replace("__", ".");
        assert_eq!(e.key.as_deref(), Some(expected.as_str()), "{value}");
    }
}

#[test]
fn postgres_refuses_a_secret_key_shorter_than_32_bytes_and_sqlite_warns() {
    let short = "k".repeat(31);
    let e = load_env(&env(&[
        ("DB_POSTGRES_ENABLE", "true"),
        ("SECURE_SECRET_KEY", &short),
    ]))
    .expect_err("short key with PostgreSQL");
    assert_eq!(e.key.as_deref(), Some("security.secret_key"));
    let text = e.to_string();
    assert!(
        text.starts_with("configuration error: security.secret_key = *** (from environment variable SECURE_SECRET_KEY")
            && text.contains("31 bytes, at least 32 needed"),
        "{text}"
    );
    assert!(!text.contains(&short), "the key is never shown: {text}");
    let enough = "k".repeat(32);
    load_env(&env(&[
        ("DB_POSTGRES_ENABLE", "true"),
        ("SECURE_SECRET_KEY", &enough),
    ]))
    .expect("32 bytes are enough");
    let sqlite = load_env(&env(&[("SECURE_SECRET_KEY", &short)])).expect("SQLite accepts it");
    assert!(
        sqlite.warnings.iter().any(|w| w
            .starts_with("security.secret_key (from environment variable SECURE_SECRET_KEY")
            && w.contains("is 31 bytes")),
        "{:?}",
        sqlite.warnings
    );
}

#[test]
fn a_log_file_is_warned_about_not_refused() {
    for (var, source) in [
        (
            "LOG_APP_FILE",
            "environment variable LOG_APP_FILE (upstream name)",
        ),
        (
            "KEYSTONE_LOGGING__FILE",
            "environment variable KEYSTONE_LOGGING__FILE",
        ),
    ] {
        let c = load_env(&env(&[(var, "/var/log/keystone.log")])).expect("not an error");
        let warnings: Vec<&String> = c
            .warnings
            .iter()
            .filter(|w| w.contains("logging.file"))
            .collect();
        assert_eq!(warnings.len(), 1, "{:?}", c.warnings);
        assert!(warnings[0].contains(source), "{}", warnings[0]);
        assert!(warnings[0].contains("not supported"), "{}", warnings[0]);
        assert!(!warnings[0].contains('\n'));
    }
    let f = file("[logging]\nfile = \"keystone.log\"\n");
    let c = load(&with_file(&f), &env(&[])).expect("not an error");
    assert!(
        c.warnings
            .iter()
            .any(|w| w.starts_with("logging.file (from ") && w.contains(":2)")),
        "{:?}",
        c.warnings
    );
    let c = load_env(&env(&[])).expect("load");
    assert!(!c.warnings.iter().any(|w| w.contains("logging.file")));
}
