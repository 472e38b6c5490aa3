//! The command line as an operator meets it: help, version, config show/check, exit codes.

use crate::common::*;

#[test]
fn help_lists_the_commands() {
    let site = Site::new(Backend::Sqlite);
    let out = site.run(&["--help"]);
    assert!(out.status.success());
    let text = stdout(&out);
    for cmd in [
        "serve",
        "migrate",
        "quickstart",
        "config",
        "completions",
        "version",
    ] {
        assert!(text.contains(cmd), "--help mentions {cmd}: {text}");
    }
    for sub in [
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["quickstart", "--help"],
        vec!["config", "show", "--help"],
    ] {
        let out = site.run(&sub);
        assert!(out.status.success(), "{sub:?}");
        assert!(stdout(&out).contains("Usage: keystone"), "{sub:?}");
    }
}

#[test]
fn version_prints_only_the_version() {
    let site = Site::new(Backend::Sqlite);
    assert_eq!(
        stdout(&site.run(&["version"])),
        format!("{}\n", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        stdout(&site.run(&["--version"])),
        format!("keystone {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_exit_2() {
    let site = Site::new(Backend::Sqlite);
    assert_eq!(
        site.run(&["serve", "--role", "chef"]).status.code(),
        Some(2)
    );
    assert_eq!(site.run(&["no-such-command"]).status.code(), Some(2));
    let out = site.run(&["quickstart"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out)
            .contains("At least one action is required. See `quickstart --help` for details.")
    );
    assert_eq!(
        site.run(&["--log-level", "loud", "version"]).status.code(),
        Some(2)
    );
}

#[test]
fn configuration_errors_exit_78_with_one_line_naming_key_and_source() {
    let mut site = Site::new(Backend::Sqlite);
    site.set("KEYSTONE_SECURITY__SESSION_AGE", "fortnight");
    for args in [
        vec!["serve", "--role", "web"],
        vec!["config", "check"],
        vec!["migrate"],
    ] {
        let out = site.run(&args);
        assert_eq!(out.status.code(), Some(78), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.contains("security.session_age"), "{err}");
        assert!(err.contains("KEYSTONE_SECURITY__SESSION_AGE"), "{err}");
    }
    let site = Site::new(Backend::Sqlite);
    site.write_config("[server]\ntimezon = \"UTC\"\n");
    let out = site.run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("server.timezon"), "{}", stderr(&out));
    assert!(stderr(&out).contains("keystone.toml:2"), "{}", stderr(&out));
    let mut site = Site::new(Backend::Sqlite);
    site.set("KEYSTONE_CONFIG", "/nonexistent/keystone.toml");
    assert_eq!(site.run(&["config", "check"]).status.code(), Some(78));
}

#[test]
fn worker_and_beat_without_redis_are_configuration_errors() {
    let site = Site::new(Backend::Sqlite);
    site.migrate();
    for role in ["worker", "beat"] {
        let out = site.run(&["serve", "--role", role]);
        assert_eq!(out.status.code(), Some(78), "{role}");
        assert!(stderr(&out).contains("redis"), "{}", stderr(&out));
    }
}

#[test]
fn postgres_without_a_secret_key_refuses_to_start() {
    if !postgres_available() {
        return;
    }
    let mut site = Site::new(Backend::Postgres);
    site.migrate();
    site.env.remove("KEYSTONE_SECURITY__SECRET_KEY");
    let out = site.run(&["serve", "--role", "web", "--bind", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr(&out).contains("security.secret_key"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn sqlite_generates_and_keeps_a_secret_key() {
    let site = Site::new(Backend::Sqlite);
    site.migrate();
    let d = site.serve("web", &[]);
    let key_file = site.path("state/secret_key");
    let first = std::fs::read_to_string(&key_file).expect("generated key");
    assert_eq!(first.len(), 50);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    drop(d);
    let d = site.serve("web", &[]);
    assert_eq!(
        std::fs::read_to_string(&key_file).expect("key"),
        first,
        "reused on restart"
    );
    drop(d);
}

#[test]
fn config_show_reports_sources_and_hides_secrets() {
    let mut site = Site::new(Backend::Sqlite);
    site.write_config("[database]\nhost = \"db.example.org\"\n");
    site.set("DB_PASSWORD", "hunter2-secret");
    site.set("KEYSTONE_SERVER__BIND", "127.0.0.1:9999");
    site.set("KEYSTONE_SERVR__BIND", "typo");
    let out = site.run(&["config", "show", "--sources"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        text.contains("password = \"***\"  # environment variable DB_PASSWORD (upstream name)"),
        "{text}"
    );
    assert!(
        text.contains("bind = \"127.0.0.1:9999\"  # environment variable KEYSTONE_SERVER__BIND"),
        "{text}"
    );
    assert!(text.contains("host = \"db.example.org\"  # "), "{text}");
    assert!(text.contains("keystone.toml:2"), "{text}");
    assert!(
        stderr(&out).contains("KEYSTONE_SERVR__BIND"),
        "unknown variable warned: {}",
        stderr(&out)
    );
    let plain = stdout(&site.run(&["config", "show"]));
    assert!(!plain.contains("# environment"), "{plain}");
    let parsed: Result<toml::Table, _> = toml::from_str(&plain);
    assert!(parsed.is_ok(), "config show prints valid TOML: {plain}");
}

#[test]
fn completions_for_each_shell() {
    let site = Site::new(Backend::Sqlite);
    for shell in ["bash", "zsh", "fish"] {
        let out = site.run(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        assert!(stdout(&out).contains("keystone"), "{shell}");
    }
    assert_eq!(site.run(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn quickstart_creates_the_admin_once_and_serves() {
    let site = Site::new(Backend::Sqlite);
    let out = site.run(&["quickstart", "--migrate", "--demo-user"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("Creating user `admin`... OK"), "{text}");
    let password = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("password: "))
        .expect("password printed once")
        .to_string();
    assert!(password.len() >= 16);
    assert!(!stderr(&out).contains(&password), "never logged");
    let again = site.run(&["quickstart", "--migrate", "--demo-user"]);
    assert!(stdout(&again).contains("User accounts already exist - skipping."));

    // --all serves on the given address with the in-process worker.
    let port = free_port();
    let smtp = free_port();
    let cmd = site.command(&[
        "quickstart",
        "--all",
        "--bind",
        &format!("127.0.0.1:{port}"),
        "--smtp-port",
        &smtp.to_string(),
    ]);
    let d = Daemon::spawn(cmd, site.dir.path(), Some(port));
    let health = d.get("/health/json/").json();
    for check in health["data"].as_array().expect("data") {
        assert_eq!(
            check["healthy"], true,
            "all checks pass in the quickstart: {check}"
        );
    }
    let (status, out) = d.stop();
    assert!(status.success(), "{out}");
}

#[test]
fn openapi_command_prints_the_served_document() {
    let site = Site::new(Backend::Sqlite);
    let yaml = site.run(&["openapi", "--format", "yaml"]);
    assert!(yaml.status.success());
    assert!(stdout(&yaml).starts_with("openapi: 3.0.3\n"));
    let file = site.path("doc.json");
    let out = site.run(&["openapi", "--output", &file.display().to_string()]);
    assert!(out.status.success());
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("written")).expect("json");
    assert!(doc["paths"]["/users/users/"]["get"].is_object());
}

#[test]
fn health_command_exit_codes() {
    let site = Site::new(Backend::Sqlite);
    site.migrate();
    let unreachable = site.run(&[
        "health",
        "--url",
        &format!("http://127.0.0.1:{}/", free_port()),
    ]);
    assert_eq!(
        unreachable.status.code(),
        Some(2),
        "{}",
        stderr(&unreachable)
    );
    let web = site.serve("web", &[]);
    let url = format!("http://{}/", web.base());
    // SMTP (closed port) and Celery (no worker) are down: unhealthy.
    let out = site.run(&["health", "--url", &url]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.lines()
            .any(|l| l.starts_with("Database") && l.contains(" ok ")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("SMTP") && l.contains("FAIL")),
        "{text}"
    );
    let json = site.run(&["health", "--url", &url, "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&json).trim()).expect("json");
    assert!(v["data"].as_array().map(|a| a.len() >= 4).unwrap_or(false));
    let direct = site.run(&["health", "--direct"]);
    assert_eq!(direct.status.code(), Some(1));
    assert!(stdout(&direct).contains("Storage"));
}

#[test]
fn clean_needs_a_target_and_confirmation() {
    let site = Site::new(Backend::Sqlite);
    site.migrate();
    let db = site.path("state/keystone.db");
    assert!(db.exists());
    let out = site.run(&["clean"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("At least one deletion target is required."));
    let refused = site.run(&["clean", "--sqlite"]);
    assert_eq!(refused.status.code(), Some(1), "no --yes off a terminal");
    assert!(db.exists(), "nothing deleted without confirmation");
    std::fs::create_dir_all(site.path("state/media/allocations")).expect("media");
    let out = site.run(&["clean", "--all", "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("Cleaning application data:\n"));
    assert!(text.contains("  Removing SQLite files... OK"));
    assert!(text.contains("  Removing user uploads... OK"));
    assert!(!db.exists());
    assert!(!site.path("state/keystone.db-wal").exists());
    assert!(!site.path("state/media").exists());
}

#[test]
fn command_line_passwords_may_not_resemble_the_account() {
    let site = Site::new(Backend::Sqlite);
    site.migrate();
    let create = |args: &[&str], password: &str| {
        let mut full = vec!["user", "create", "--no-input", "--password-stdin"];
        full.extend_from_slice(args);
        site.run_with_input(&full, &format!("{password}\n"))
    };
    let out = create(&["--username", "keystone-admin"], "keystone-admin99");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Error: The password is too similar to the username."),
        "{}",
        stderr(&out)
    );
    let out = create(
        &["--username", "op1", "--email", "kestrel@example.org"],
        "kestrel-2024",
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Error: The password is too similar to the email address."),
        "{}",
        stderr(&out)
    );
    // Listed first, before the other rules' messages, as upstream orders its validators.
    let out = create(&["--username", "zorblax"], "zorblax");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let similar = err
        .find("Error: The password is too similar to the username.")
        .unwrap_or_else(|| panic!("similarity reported: {err}"));
    let short = err
        .find("Error: This password is too short.")
        .unwrap_or_else(|| panic!("length reported: {err}"));
    assert!(similar < short, "{err}");
    let out = create(
        &["--username", "bob.smith", "--superuser"],
        "Unrelated-Pass-7",
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // set-password compares with the account's attributes too.
    let set = |password: &str| {
        site.run_with_input(
            &["user", "set-password", "bob.smith", "--password-stdin"],
            &format!("{password}\n"),
        )
    };
    let out = set("bobsmith-2024");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Error: The password is too similar to the username."),
        "{}",
        stderr(&out)
    );
    let out = set("Another-Pass-8");
    assert!(out.status.success(), "{}", stderr(&out));

    // The API applies the other three rules only: upstream validates there without the
    // account (domain.md §6.1).
    let token = site.run(&["token", "create", "bob.smith", "--name", "tests"]);
    assert!(token.status.success(), "{}", stderr(&token));
    let auth = format!("Token {}", stdout(&token).trim());
    let web = site.serve("web", &[]);
    let body = serde_json::json!({"username": "keystone-admin", "password": "keystone-admin99"});
    let r = web.request(
        "POST",
        "/users/users/",
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
}

#[test]
fn commands_writing_to_a_closed_pipe_end_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let site = Site::new(Backend::Sqlite);
    site.migrate();
    for args in [
        vec!["completions", "bash"],
        vec!["completions", "fish"],
        vec!["openapi"],
        vec!["openapi", "--format", "yaml"],
        vec!["routes"],
        vec!["version"],
        vec!["config", "show"],
        vec!["user", "list"],
        vec!["--help"],
    ] {
        // The reader is gone before the command starts: its first write fails.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = site
            .command(&args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run keystone");
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.contains("Broken pipe"), "{args:?}: {err}");
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
            "{args:?}: {:?} {err}",
            out.status
        );
    }
    // The daemon keeps ignoring SIGPIPE: a client that goes away is no reason to die.
    let web = site.serve("web", &[]);
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", web.child.id())).expect("status");
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("SigIgn");
    assert_ne!(ignored & (1 << (libc::SIGPIPE - 1)), 0, "{status}");
}

/// The SMTP check of `email.debug_dir` (upstream's EMAIL_DEBUG_DIR): the file backend is
/// checked, no SMTP server is dialled (the test site's SMTP port is closed).
#[test]
fn health_checks_the_debug_mail_directory_instead_of_smtp() {
    let mut site = Site::new(Backend::Sqlite);
    site.migrate();
    let smtp = |site: &Site| {
        let out = site.run(&["health", "--direct", "--json"]);
        let v: serde_json::Value = serde_json::from_str(stdout(&out).trim())
            .unwrap_or_else(|e| panic!("{e}: {} {}", stdout(&out), stderr(&out)));
        v["data"]
            .as_array()
            .and_then(|checks| checks.iter().find(|c| c["check"] == "SMTP").cloned())
            .unwrap_or_else(|| panic!("an SMTP check: {v}"))
    };
    assert_eq!(smtp(&site)["healthy"], false, "the SMTP port is closed");
    // A directory that does not exist yet is created, as a delivery creates it.
    let dir = site.path("mail/out");
    site.set("EMAIL_DEBUG_DIR", &dir.display().to_string());
    let check = smtp(&site);
    assert_eq!(check["healthy"], true, "{check}");
    assert!(check["error"].is_null(), "{check}");
    assert!(dir.is_dir());
    let left: Vec<_> = std::fs::read_dir(&dir).expect("dir").collect();
    assert!(left.is_empty(), "no probe file left: {left:?}");
    let web = site.serve("web", &[]);
    let health = web.get("/health/json/").json();
    let check = health["data"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["check"] == "SMTP").cloned())
        .expect("SMTP check");
    assert_eq!(check["healthy"], true, "{health}");
    drop(web);
    // A path that cannot be a directory: unhealthy, with upstream's message.
    let blocker = site.path("not-a-directory");
    std::fs::write(&blocker, "x").expect("file");
    site.set(
        "EMAIL_DEBUG_DIR",
        &blocker.join("mail").display().to_string(),
    );
    let check = smtp(&site);
    assert_eq!(check["healthy"], false, "{check}");
    assert_eq!(
        check["error"],
        "Unavailable: Failed to open connection with SMTP server"
    );
}

/// `logging.file` (upstream's LOG_APP_FILE) is not implemented on purpose: one warning line,
/// no error, no file.
#[test]
fn a_log_file_setting_gives_one_warning_and_no_file() {
    let mut site = Site::new(Backend::Sqlite);
    site.migrate();
    let log = site.path("keystone.log");
    site.set("LOG_APP_FILE", &log.display().to_string());
    let out = site.run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("logging.file")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains("LOG_APP_FILE"), "{err}");
    assert!(warnings[0].contains("not supported"), "{err}");
    // At the daemon's startup too.
    let web = site.serve("web", &[]);
    assert_eq!(web.get("/version/").status, 200);
    let (status, output) = web.stop();
    assert!(status.success(), "{output}");
    let startup: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("logging.file") && l.contains("not supported"))
        .collect();
    assert_eq!(startup.len(), 1, "{output}");
    assert!(!log.exists(), "no log file is written");
    // The TOML key names its line.
    site.env.remove("LOG_APP_FILE");
    site.write_config("[logging]\nfile = \"keystone.log\"\n");
    let out = site.run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("logging.file (from ") && stderr(&out).contains("keystone.toml:2"),
        "{}",
        stderr(&out)
    );
}
