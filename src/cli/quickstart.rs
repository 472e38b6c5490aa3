//! `keystone quickstart` (spec/operations.md §4.4): a one-machine trial with SQLite, the
//! in-process queue, a generated administrator and a debug SMTP sink.

use crate::cli::{Cli, QuickstartArgs, take_listener};
use crate::config::{self, LoadOptions};
use crate::daemon;
use crate::roles::serve::{self, Role};
use crate::store::{Db, users};
use std::io::Write;
use std::process::ExitCode;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

pub fn run(cli: &Cli, args: &QuickstartArgs) -> ExitCode {
    let migrate = args.all || args.migrate;
    let demo_user = args.all || args.demo_user;
    let worker = args.all || args.celery;
    let smtp = args.all || args.smtp;
    let server = args.all || args.server;
    if !(migrate || demo_user || worker || smtp || server || args.r#static) {
        eprintln!("At least one action is required. See `quickstart --help` for details.");
        return ExitCode::from(2);
    }
    let mut extra = vec![(
        "server.bind".to_string(),
        args.bind.clone(),
        "--bind".to_string(),
    )];
    if smtp {
        extra.push(("email.host".into(), "127.0.0.1".into(), "--smtp".into()));
        extra.push((
            "email.port".into(),
            args.smtp_port.to_string(),
            "--smtp-port".into(),
        ));
        extra.push(("email.use_tls".into(), "false".into(), "--smtp".into()));
        extra.push(("email.use_ssl".into(), "false".into(), "--smtp".into()));
    }
    let opts = LoadOptions {
        config_path: cli.config.clone(),
        cli: extra,
        cwd: None,
    };
    let config = match config::load(&opts, &config::process_env()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keystone: {e}");
            return ExitCode::from(78);
        }
    };
    daemon::init_logging(&config, cli.log_level.as_deref());
    // The quickstart is a trial: it may generate and store the signing key.
    if let Err(e) = crate::identity::secret::resolve(&config, true) {
        eprintln!("keystone: {e}");
        return ExitCode::from(1);
    }
    let listener = match take_listener(&config, server) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let Ok(rt) = crate::cli::runtime() else {
        return ExitCode::from(1);
    };
    rt.block_on(async move {
        if migrate {
            println!("Applying database migrations...");
            if let Err(e) = crate::cli::migrate(&config).await {
                eprintln!("keystone: {e}");
                return ExitCode::from(1);
            }
        }
        if demo_user
            && let Err(e) = create_demo_user(&config, args.demo_password.as_deref()).await {
                eprintln!("keystone: {e}");
                return ExitCode::from(1);
            }
        if smtp {
            match tokio::net::TcpListener::bind(("127.0.0.1", args.smtp_port)).await {
                Ok(l) => {
                    println!("Debug SMTP sink listening on 127.0.0.1:{}", args.smtp_port);
                    tokio::spawn(smtp_sink(l));
                }
                Err(e) => eprintln!(
                    "warning: cannot start the debug SMTP sink on 127.0.0.1:{} ({e}); use --smtp-port with a free port",
                    args.smtp_port
                ),
            }
        }
        let role = match (server, worker) {
            (true, true) => Role::All,
            (true, false) => Role::Web,
            (false, true) => Role::All,
            (false, false) => return ExitCode::SUCCESS,
        };
        if let Some(l) = &listener {
            println!("Serving Keystone on {} (Ctrl-C to stop)", l.describe());
        }
        let _ = std::io::stdout().flush();
        match serve::serve(config, role, listener).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("keystone: {e}");
                e.exit_code()
            }
        }
    })
}

/// Creates `admin` when no account exists; prints the password once (never logged).
async fn create_demo_user(config: &config::Config, password: Option<&str>) -> Result<(), String> {
    let db = Db::connect(config, false)
        .await
        .map_err(|e| e.to_string())?;
    if users::count(&db).await.map_err(|e| e.to_string())? > 0 {
        println!("User accounts already exist - skipping.");
        return Ok(());
    }
    let password = password
        .map(str::to_string)
        .unwrap_or_else(|| crate::identity::passwords::generate(20));
    let hash = crate::identity::passwords::hash(&password).await?;
    print!("Creating user `admin`... ");
    users::create(
        &db,
        &users::NewUser {
            username: "admin".into(),
            email: None,
            password_hash: hash,
            is_staff: true,
            is_superuser: true,
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    println!("OK");
    println!("  username: admin");
    println!("  password: {password}");
    println!("  (shown once: store it now)");
    db.close().await;
    Ok(())
}

/// A minimal SMTP server that accepts every message and prints its envelope and content.
async fn smtp_sink(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            if let Err(e) = smtp_session(stream).await {
                tracing::debug!("debug SMTP session ended: {e}");
            }
        });
    }
}

async fn smtp_session(stream: tokio::net::TcpStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 keystone debug SMTP sink\r\n").await?;
    let mut from = String::new();
    let mut to = Vec::new();
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            b"250 keystone\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            from = line[10..].trim().to_string();
            b"250 OK\r\n"
        } else if upper.starts_with("RCPT TO:") {
            to.push(line[8..].trim().to_string());
            b"250 OK\r\n"
        } else if upper == "DATA" {
            write
                .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                .await?;
            let mut body = Vec::new();
            while let Some(l) = lines.next_line().await? {
                if l == "." {
                    break;
                }
                body.push(l.strip_prefix('.').map(str::to_string).unwrap_or(l));
            }
            let mut out = String::from("---------- MESSAGE FOLLOWS ----------\n");
            out.push_str(&format!("From: {from}\nTo: {}\n", to.join(", ")));
            for l in &body {
                out.push_str(l);
                out.push('\n');
            }
            out.push_str("------------ END MESSAGE ------------\n");
            print!("{out}");
            let _ = std::io::stdout().flush();
            to.clear();
            b"250 OK: message accepted\r\n"
        } else if upper == "QUIT" {
            write.write_all(b"221 Bye\r\n").await?;
            return Ok(());
        } else if upper == "RSET" || upper == "NOOP" {
            b"250 OK\r\n"
        } else {
            b"502 Command not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
    Ok(())
}
