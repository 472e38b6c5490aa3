//! Operator commands (spec/operations.md §4.1, §4.8, §4.11): `openapi`, `health` and `clean`.

use crate::config::{BindAddr, Config, Engine};
use crate::infra::health::{CheckResult, HealthChecker};
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Json,
    Yaml,
}

/// Prints (or writes) the OpenAPI document the web role serves.
pub fn openapi(format: Format, output: Option<&std::path::Path>) -> ExitCode {
    let docs = crate::web::openapi::documents(&crate::web::router());
    let body = match format {
        Format::Json => docs.json,
        Format::Yaml => docs.yaml,
    };
    let result = match output {
        Some(path) => std::fs::write(path, body.as_bytes()),
        None => std::io::stdout().write_all(body.as_bytes()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if output.is_none() {
                crate::cli::end_if_stdout_closed(&e);
            }
            eprintln!("keystone: cannot write the document: {e}");
            ExitCode::from(1)
        }
    }
}

/// `keystone routes`: the route table as the web role enforces it.
pub fn routes(json: bool) -> ExitCode {
    let table = crate::web::routes().describe();
    let out = if json {
        match serde_json::to_string_pretty(&table) {
            Ok(s) => s + "\n",
            Err(e) => {
                eprintln!("keystone: cannot encode the route table: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        let width = table.iter().map(|r| r.path.len()).max().unwrap_or(4);
        let mut out = format!(
            "{:width$}  {:13}  {:9}  METHODS\n",
            "PATH", "ACCESS", "THROTTLED"
        );
        for r in &table {
            let access = match r.policy.access {
                crate::web::route::Access::Public => "public",
                crate::web::route::Access::Authenticated => "authenticated",
                crate::web::route::Access::Staff => "staff",
            };
            let throttled = if r.policy.throttled { "yes" } else { "no" };
            out.push_str(&format!(
                "{:width$}  {access:13}  {throttled:9}  {}\n",
                r.path,
                r.methods.join(", ")
            ));
        }
        out
    };
    match std::io::stdout().write_all(out.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keystone: cannot write the route table: {e}");
            ExitCode::from(1)
        }
    }
}

/// `GET /health/json/` over HTTP/1.1 on TCP or a Unix socket.
fn fetch(target: &Target) -> Result<String, String> {
    let request = |host: &str| {
        format!(
            "GET /health/json/ HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        )
    };
    let mut raw = Vec::new();
    match target {
        Target::Tcp { host, port } => {
            let mut s = std::net::TcpStream::connect((host.as_str(), *port))
                .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(60)));
            s.write_all(request(host).as_bytes())
                .map_err(|e| e.to_string())?;
            s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
        }
        Target::Unix(path) => {
            let mut s = std::os::unix::net::UnixStream::connect(path)
                .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
            s.write_all(request("localhost").as_bytes())
                .map_err(|e| e.to_string())?;
            s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
        }
    }
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "malformed HTTP response".to_string())?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "unexpected answer: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    Ok(body.to_string())
}

enum Target {
    Tcp { host: String, port: u16 },
    Unix(std::path::PathBuf),
}

fn target(config: &Config, url: Option<&str>) -> Result<Target, String> {
    if let Some(url) = url {
        let u = url::Url::parse(url).map_err(|e| format!("invalid --url '{url}': {e}"))?;
        if u.scheme() != "http" {
            return Err(
                "only http:// URLs are supported (probe the web role directly, not the TLS proxy)"
                    .into(),
            );
        }
        return Ok(Target::Tcp {
            host: u.host_str().unwrap_or("127.0.0.1").to_string(),
            port: u.port_or_known_default().unwrap_or(80),
        });
    }
    Ok(match config.bind() {
        BindAddr::Unix(p) => Target::Unix(p),
        BindAddr::Tcp(addr) => {
            let (host, port) = addr.rsplit_once(':').unwrap_or(("127.0.0.1", "8000"));
            let host = if host == "0.0.0.0" || host == "[::]" {
                "127.0.0.1"
            } else {
                host
            };
            Target::Tcp {
                host: host.trim_matches(|c| c == '[' || c == ']').to_string(),
                port: port.parse().unwrap_or(8000),
            }
        }
    })
}

/// `keystone health`: 0 healthy, 1 unhealthy, 2 unreachable.
pub fn health(config: Config, url: Option<&str>, direct: bool, json: bool) -> ExitCode {
    let results: Vec<CheckResult> = if direct {
        let Ok(rt) = crate::cli::runtime() else {
            return ExitCode::from(1);
        };
        let outcome = rt.block_on(async {
            let db = crate::store::Db::connect(&config, false)
                .await
                .map_err(|e| e.to_string())?;
            let checker = HealthChecker::new(Arc::new(config), db);
            Ok::<_, String>(checker.run().await)
        });
        match outcome {
            Ok(r) => r,
            Err(e) => {
                eprintln!("keystone: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        let body = match target(&config, url).and_then(|t| fetch(&t)) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("keystone: {e}");
                return ExitCode::from(2);
            }
        };
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(body.trim());
        let Some(data) = parsed.ok().and_then(|v| v.get("data").cloned()) else {
            eprintln!("keystone: the server's health answer is not the expected JSON");
            return ExitCode::from(2);
        };
        match serde_json::from_value::<Vec<serde_json::Value>>(data) {
            Ok(items) => items
                .iter()
                .map(|c| CheckResult {
                    check: c["check"].as_str().unwrap_or("").to_string(),
                    healthy: c["healthy"].as_bool().unwrap_or(false),
                    error: c["error"].as_str().map(str::to_string),
                    time_taken: c["time_taken"].as_f64().unwrap_or(0.0),
                })
                .collect(),
            Err(_) => {
                eprintln!("keystone: the server's health answer is not the expected JSON");
                return ExitCode::from(2);
            }
        }
    };
    if json {
        println!("{}", serde_json::json!({ "data": results }));
    } else {
        for r in &results {
            let status = if r.healthy { "ok" } else { "FAIL" };
            let detail = r.error.as_deref().unwrap_or("");
            println!(
                "{:<9} {:<5} {:.3}s  {detail}",
                r.check, status, r.time_taken
            );
        }
    }
    if results.iter().all(|r| r.healthy) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// What `keystone clean` removes.
#[derive(Debug, Clone, Copy, Default)]
pub struct CleanTargets {
    pub static_files: bool,
    pub uploads: bool,
    pub sqlite: bool,
    pub logs: bool,
}

fn remove_path(path: &std::path::Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// `keystone clean`: asks on a terminal unless `yes`; refuses without `yes` off a terminal.
pub fn clean(config: &Config, t: CleanTargets, yes: bool) -> ExitCode {
    if !(t.static_files || t.uploads || t.sqlite || t.logs) {
        eprintln!("At least one deletion target is required. See `clean --help` for details.");
        return ExitCode::from(2);
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            eprintln!("keystone: refusing to delete data without --yes when not on a terminal");
            return ExitCode::from(1);
        }
        print!("This deletes data permanently. Continue? [y/N] ");
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if answer.trim() != "y" {
            println!("Aborted.");
            return ExitCode::from(1);
        }
    }
    println!("Cleaning application data:");
    let step = |label: &str, action: &dyn Fn() -> std::io::Result<()>| {
        print!("  {label}...");
        let _ = std::io::stdout().flush();
        match action() {
            Ok(()) => {
                println!(" OK");
                true
            }
            Err(e) => {
                println!(" FAILED ({e})");
                false
            }
        }
    };
    let mut ok = true;
    if t.static_files {
        ok &= step("Removing static files", &|| Ok(()));
    }
    if t.uploads {
        ok &= step("Removing user uploads", &|| {
            remove_path(&config.upload_dir())
        });
    }
    if t.sqlite {
        ok &= step("Removing SQLite files", &|| {
            if config.settings.database.engine != Engine::Sqlite {
                return Ok(());
            }
            let db = config.sqlite_path();
            for suffix in ["", "-journal", "-wal", "-shm"] {
                remove_path(std::path::Path::new(&format!("{}{suffix}", db.display())))?;
            }
            Ok(())
        });
    }
    if t.logs {
        ok &= step("Removing app log file", &|| {
            let Some(file) = &config.settings.logging.file else {
                return Ok(());
            };
            let path = config.path(file);
            remove_path(&path)?;
            for n in 1..=config.settings.logging.backup_count.max(1) {
                remove_path(std::path::Path::new(&format!("{}.{n}", path.display())))?;
            }
            Ok(())
        });
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
