//! The `keystone` command line (spec/operations.md §4): parsing, and each command's run.

pub mod admin;
pub mod assets;
pub mod ldap;
pub mod operator;
pub mod quickstart;
pub mod seed;
pub mod tasks;

use crate::config::{self, Config, ConfigError, LoadOptions};
use crate::daemon;
use crate::roles::serve::{self, Role};
use crate::store::Db;
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

const AFTER_HELP: &str = "\
Configuration is read from built-in defaults, then /etc/keystone/keystone.toml (or --config,
or $KEYSTONE_CONFIG), then upstream variable names (DB_HOST, REDIS_HOST, ...), then
KEYSTONE_<SECTION>__<KEY> variables. `keystone config show --sources` prints the result.

Exit codes: 0 success, 1 failure, 2 usage error, 78 configuration error, 130 interrupted.";

#[derive(Debug, Parser)]
#[command(
    name = "keystone",
    version,
    about = "Keystone: the HPC allocation-management API (web, worker and beat roles in one binary)",
    after_help = AFTER_HELP,
    propagate_version = true
)]
pub struct Cli {
    /// TOML configuration file (default: /etc/keystone/keystone.toml, absent is fine)
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Log level for this invocation: error, warning, info, debug or trace
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a role: the HTTP API (web), the task worker, the schedule clock (beat), or all three
    Serve(ServeArgs),
    /// Apply pending database migrations (or check for them with --check)
    Migrate(MigrateArgs),
    /// Try Keystone on one machine: SQLite, in-process queue, an admin account, the API on
    /// 127.0.0.1:8000
    Quickstart(QuickstartArgs),
    /// Inspect and validate the configuration
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script (bash, zsh or fish) to stdout
    Completions(CompletionArgs),
    /// Manage local accounts: create, set-password, list
    #[command(subcommand)]
    User(crate::cli::admin::UserCommand),
    /// Manage API keys for scripts (`Authorization: Token <key>`): create, list, revoke
    #[command(subcommand)]
    Token(crate::cli::admin::TokenCommand),
    /// Upstream name of `user create --superuser`
    #[command(hide = true)]
    Createsuperuser(crate::cli::admin::CreateArgs),
    /// Log records: `prune` deletes those past their retention (logging.*_retention)
    #[command(subcommand)]
    Logs(LogsCommand),
    /// Print the OpenAPI document the web role serves
    Openapi {
        /// Output format
        #[arg(long, value_enum, default_value = "json")]
        format: crate::cli::operator::Format,
        /// Write to this file instead of standard output
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// List the HTTP routes with their methods and access policy (who may call them, whether
    /// they are throttled)
    Routes {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Check a running web role's health (exit 0 healthy, 1 unhealthy, 2 unreachable)
    Health {
        /// Web role to ask (default: server.bind)
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Run the checks in this process instead of asking the server
        #[arg(long)]
        direct: bool,
        /// Print the raw JSON
        #[arg(long)]
        json: bool,
    },
    /// Delete application data: uploads, the SQLite database, log files
    Clean {
        /// All targets below
        #[arg(long)]
        all: bool,
        /// Static files (none exist; accepted for compatibility)
        #[arg(long = "static")]
        static_files: bool,
        /// The upload directory and everything in it
        #[arg(long)]
        uploads: bool,
        /// The SQLite database and its -journal, -wal and -shm files
        #[arg(long)]
        sqlite: bool,
        /// The log file (logging.file) and its rotated copies
        #[arg(long)]
        logs: bool,
        /// Do not ask for confirmation
        #[arg(long)]
        yes: bool,
    },
    /// Background tasks: list the catalogue and schedules, run one now, show dead letters
    #[command(subcommand)]
    Task(crate::cli::tasks::TaskCommand),
    /// LDAP directory: `sync` creates, updates and deactivates accounts from it
    #[command(subcommand)]
    Ldap(LdapCommand),
    /// Notification templates: `render` writes sample messages to preview them
    #[command(subcommand)]
    Templates(TemplatesCommand),
    /// Fill the database with realistic random demo data (deterministic with --seed)
    Seed(crate::cli::seed::SeedArgs),
    /// Upstream name of `seed`
    #[command(hide = true)]
    Genseeddata(crate::cli::seed::SeedArgs),
    /// Print the version string
    Version,
    /// No-op kept for upgrade scripts written for upstream (there are no static files)
    #[command(hide = true)]
    Collectstatic(IgnoredArgs),
    /// Write the man page and shell completions (used when building packages)
    #[command(hide = true)]
    GenerateAssets {
        /// Output directory (created when missing)
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct IgnoredArgs {
    #[arg(long = "no-input", alias = "noinput", hide = true)]
    _no_input: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Under systemd the web role takes its listening socket from socket activation (LISTEN_FDS)
and reports READY=1 once it can serve; without it, it binds --bind or server.bind.
Examples:
  keystone serve --role web --bind 127.0.0.1:8000
  keystone serve --role web --bind unix:/run/keystone/keystone.sock
  keystone serve --role all        # web + worker + beat, in-process queue without Redis")]
pub struct ServeArgs {
    /// Which role this process runs
    #[arg(long, value_enum)]
    pub role: Role,
    /// Listen address when no socket is inherited: HOST:PORT or unix:/PATH (server.bind)
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,
    /// Tasks run in parallel by the worker (worker.concurrency; default: number of CPUs)
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Apply nothing: exit 0 when the schema is current, 1 when migrations are pending
    #[arg(long)]
    pub check: bool,
    /// Accepted for compatibility with upstream scripts (migrate never prompts)
    #[arg(long = "no-input", alias = "noinput", hide = true)]
    pub no_input: bool,
}

#[derive(Debug, Args)]
pub struct QuickstartArgs {
    /// All of the actions below
    #[arg(long)]
    pub all: bool,
    /// Create or update the SQLite database schema
    #[arg(long)]
    pub migrate: bool,
    /// Create the administrator `admin` if no user account exists yet
    #[arg(long)]
    pub demo_user: bool,
    /// Password for the demo administrator (default: random, printed once)
    #[arg(long, value_name = "PASSWORD")]
    pub demo_password: Option<String>,
    /// Run the worker and beat roles in-process
    #[arg(long, alias = "worker")]
    pub celery: bool,
    /// Run a debug SMTP sink that prints every message to stdout
    #[arg(long)]
    pub smtp: bool,
    /// Port of the debug SMTP sink
    #[arg(long, value_name = "N", default_value_t = 25)]
    pub smtp_port: u16,
    /// Serve the API in the foreground until interrupted
    #[arg(long)]
    pub server: bool,
    /// Accepted for compatibility; Keystone has no static files
    #[arg(long, hide = true)]
    pub r#static: bool,
    /// Listen address for --server
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8000")]
    pub bind: String,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration as TOML (secrets shown as ***)
    Show {
        /// Annotate each key with the layer that set it
        #[arg(long)]
        sources: bool,
    },
    /// Validate the configuration; exit 0 when valid, 78 otherwise
    Check {
        /// Also connect to the database and Redis
        #[arg(long)]
        connect: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum LdapCommand {
    /// Synchronise accounts with the directory once, now (prints what changed)
    Sync {
        /// Enqueue the task for a worker instead of running it here; prints its task id
        #[arg(long)]
        queue: bool,
        /// Apply the sync even when it would deactivate more than
        /// ldap.max_deactivate_fraction of the LDAP accounts or the directory returned no users
        #[arg(long, conflicts_with = "queue")]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TemplatesCommand {
    /// Write sample upcoming-expiry, past-expiry and general messages as .eml files
    Render {
        /// Directory to write into (default: the current directory)
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Template directory to render (default: email.template_dir, else the built-in ones)
        #[arg(long, value_name = "DIR")]
        templates: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum LogsCommand {
    /// Delete request logs, audit entries and task results older than their retention
    Prune,
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// Target shell
    pub shell: clap_complete::Shell,
}

fn load_config(cli: &Cli, extra: Vec<(String, String, String)>) -> Result<Config, ConfigError> {
    let opts = LoadOptions {
        config_path: cli.config.clone(),
        cli: extra,
        cwd: None,
    };
    config::load(&opts, &config::process_env())
}

fn config_exit(e: &ConfigError) -> ExitCode {
    eprintln!("keystone: {e}");
    ExitCode::from(78)
}

/// Whether standard output can no longer be written: a pipe whose reader is gone
/// (`keystone completions bash | head -1`) or a socket shut by its peer.
fn stdout_closed() -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout; poll reports errors and hang-ups always.
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready == 1 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// Ends the process the way coreutils end when their output is closed: killed by SIGPIPE,
/// nothing printed (the shell reports status 141).
fn die_of_sigpipe() -> ! {
    // SAFETY: restores the default action of one signal and raises it in this thread; the
    // default action terminates the whole process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(128 + libc::SIGPIPE)
}

/// One-shot commands end quietly when their standard output is closed, instead of
/// panicking on the failed write (Rust ignores SIGPIPE, so `println!` panics there). Only
/// the panics that happen while standard output is closed end that way; every other panic
/// reports as before. The process keeps ignoring SIGPIPE, so a socket whose peer is gone is
/// still a plain error; the daemon (`serve`, `quickstart`) installs nothing.
fn quiet_on_closed_stdout() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if stdout_closed() {
            die_of_sigpipe();
        }
        report(info);
    }));
}

/// Ends the command quietly when `e` is a failed write to a closed standard output, as a
/// `println!` to it does.
pub fn end_if_stdout_closed(e: &std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe && stdout_closed() {
        die_of_sigpipe();
    }
}

/// Entry point after parsing; owns the runtime.
pub fn run(cli: Cli) -> ExitCode {
    if !matches!(cli.command, Command::Serve(_) | Command::Quickstart(_)) {
        quiet_on_closed_stdout();
    }
    if let Some(level) = &cli.log_level
        && config::level_filter(level).is_none()
    {
        eprintln!(
            "keystone: invalid --log-level '{level}': expected error, warning, info, debug or trace"
        );
        return ExitCode::from(2);
    }
    match &cli.command {
        Command::Version => {
            println!("{}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Completions(args) => {
            let mut cmd = Cli::command();
            clap_complete::generate(args.shell, &mut cmd, "keystone", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Collectstatic(_) => {
            println!("Keystone serves no static files; nothing to collect.");
            ExitCode::SUCCESS
        }
        Command::GenerateAssets { out } => match crate::cli::assets::write(out) {
            Ok(()) => {
                println!("man page and completions written to {}", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("keystone: cannot write to {}: {e}", out.display());
                ExitCode::from(1)
            }
        },
        Command::Config(cmd) => run_config(&cli, cmd),
        Command::Logs(LogsCommand::Prune) => {
            with_config(&cli, |c| {
                let Ok(rt) = runtime() else {
                    return ExitCode::from(1);
                };
                rt.block_on(async {
                let db = match serve::open_database(c).await {
                    Ok(db) => db,
                    Err(e) => {
                        eprintln!("keystone: {e}");
                        return ExitCode::from(1);
                    }
                };
                match crate::store::retention::prune(&db, &c.settings.logging, chrono::Utc::now()).await {
                    Ok(p) => {
                        println!(
                            "Deleted {} request log(s), {} audit entr(y/ies), {} task result(s).",
                            p.requests, p.audit, p.tasks
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("keystone: {e}");
                        ExitCode::from(1)
                    }
                }
            })
            })
        }
        Command::Openapi { format, output } => {
            crate::cli::operator::openapi(*format, output.as_deref())
        }
        Command::Routes { json } => crate::cli::operator::routes(*json),
        Command::Health { url, direct, json } => match load_config(&cli, Vec::new()) {
            Ok(config) => {
                daemon::init_logging(&config, cli.log_level.as_deref());
                crate::cli::operator::health(config, url.as_deref(), *direct, *json)
            }
            Err(e) => config_exit(&e),
        },
        Command::Clean {
            all,
            static_files,
            uploads,
            sqlite,
            logs,
            yes,
        } => with_config(&cli, |c| {
            let t = crate::cli::operator::CleanTargets {
                static_files: *all || *static_files,
                uploads: *all || *uploads,
                sqlite: *all || *sqlite,
                logs: *all || *logs,
            };
            crate::cli::operator::clean(c, t, *yes)
        }),
        Command::User(cmd) => with_config(&cli, |c| crate::cli::admin::run_user(c, cmd)),
        Command::Token(cmd) => with_config(&cli, |c| crate::cli::admin::run_token(c, cmd)),
        Command::Createsuperuser(args) => with_config(&cli, |c| {
            let mut args = crate::cli::admin::CreateArgs { ..args.clone() };
            args.superuser = true;
            crate::cli::admin::run_user(c, &crate::cli::admin::UserCommand::Create(args))
        }),
        Command::Task(cmd) => with_config(&cli, |c| crate::cli::tasks::run(c, cmd)),
        Command::Ldap(LdapCommand::Sync { queue, force }) => {
            with_config(&cli, |c| ldap::sync(c, *queue, *force))
        }
        Command::Templates(TemplatesCommand::Render { out, templates }) => with_config(&cli, |c| {
            crate::infra::mail::render_samples(c, out.as_deref(), templates.as_deref())
        }),
        Command::Seed(args) | Command::Genseeddata(args) => {
            with_config(&cli, |c| crate::cli::seed::run(c, args))
        }
        Command::Migrate(args) => run_migrate(&cli, args),
        Command::Serve(args) => run_serve(&cli, args),
        Command::Quickstart(args) => crate::cli::quickstart::run(&cli, args),
    }
}

/// Loads the configuration (exit 78 on error), sets up logging, runs `f`.
fn with_config(cli: &Cli, f: impl FnOnce(&Config) -> ExitCode) -> ExitCode {
    match load_config(cli, Vec::new()) {
        Ok(config) => {
            daemon::init_logging(&config, cli.log_level.as_deref());
            f(&config)
        }
        Err(e) => config_exit(&e),
    }
}

/// The inherited or bound HTTP listener when `serves_http` (taken before the runtime starts
/// its threads); an error is printed and becomes the exit code.
pub(crate) fn take_listener(
    config: &Config,
    serves_http: bool,
) -> Result<Option<daemon::Listener>, ExitCode> {
    if !serves_http {
        return Ok(None);
    }
    daemon::take_listener(&config.bind())
        .map(Some)
        .map_err(|e| {
            eprintln!("keystone: {e}");
            ExitCode::from(1)
        })
}

pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn run_config(cli: &Cli, cmd: &ConfigCommand) -> ExitCode {
    let config = match load_config(cli, Vec::new()) {
        Ok(c) => c,
        Err(e) => return config_exit(&e),
    };
    match cmd {
        ConfigCommand::Show { sources } => {
            for w in &config.warnings {
                eprintln!("warning: {w}");
            }
            match &config.config_file {
                Some(p) => println!("# configuration file: {}", p.display()),
                None => println!("# no configuration file (defaults and environment only)"),
            }
            print!("{}", config.render(*sources));
            ExitCode::SUCCESS
        }
        ConfigCommand::Check { connect } => {
            for w in &config.warnings {
                eprintln!("warning: {w}");
            }
            if *connect {
                let Ok(rt) = runtime() else {
                    return ExitCode::from(1);
                };
                let outcome = rt.block_on(async {
                    let db = Db::connect(&config, false)
                        .await
                        .map_err(|e| e.to_string())?;
                    db.ping().await.map_err(|e| e.to_string())?;
                    serve::require_redis(&config)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>(())
                });
                if let Err(e) = outcome {
                    eprintln!("keystone: {e}");
                    return ExitCode::from(78);
                }
            }
            println!("configuration is valid");
            ExitCode::SUCCESS
        }
    }
}

fn run_migrate(cli: &Cli, args: &MigrateArgs) -> ExitCode {
    let config = match load_config(cli, Vec::new()) {
        Ok(c) => c,
        Err(e) => return config_exit(&e),
    };
    daemon::init_logging(&config, cli.log_level.as_deref());
    let Ok(rt) = runtime() else {
        return ExitCode::from(1);
    };
    rt.block_on(async {
        if args.check {
            let db = match Db::connect(&config, false).await {
                Ok(db) => db,
                Err(crate::store::DbError::MissingFile { path }) => {
                    eprintln!("keystone: the SQLite database {path} does not exist yet; run `keystone migrate`");
                    for (version, description) in
                        crate::store::known_migrations(config.settings.database.engine)
                    {
                        println!("pending  {version:04} {description}");
                    }
                    return ExitCode::from(1);
                }
                Err(e) => {
                    eprintln!("keystone: {e}");
                    return ExitCode::from(1);
                }
            };
            return match db.schema_status().await {
                Ok(status) if status.is_current() => {
                    println!("The database schema is up to date (version {}).", status.latest_known);
                    ExitCode::SUCCESS
                }
                Ok(status) => {
                    if let Some(p) = status.problem() {
                        eprintln!("keystone: {p}");
                    }
                    for (version, description) in &status.pending {
                        println!("pending  {version:04} {description}");
                    }
                    ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!("keystone: {e}");
                    ExitCode::from(1)
                }
            };
        }
        match migrate(&config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("keystone: {e}");
                ExitCode::from(1)
            }
        }
    })
}

/// Applies pending migrations, printing one line per migration.
pub(crate) async fn migrate(config: &Config) -> Result<(), String> {
    let db = Db::connect(config, true).await.map_err(|e| e.to_string())?;
    let applied = db.migrate().await.map_err(|e| e.to_string())?;
    if applied.is_empty() {
        println!("The database schema is up to date; no migrations to apply.");
    }
    for (version, description) in applied {
        println!("Applied migration {version:04} {description}... OK");
    }
    db.close().await;
    Ok(())
}

fn run_serve(cli: &Cli, args: &ServeArgs) -> ExitCode {
    let mut extra = Vec::new();
    if let Some(bind) = &args.bind {
        extra.push(("server.bind".into(), bind.clone(), "--bind".into()));
    }
    if let Some(n) = args.concurrency {
        extra.push((
            "worker.concurrency".into(),
            n.to_string(),
            "--concurrency".into(),
        ));
    }
    let config = match load_config(cli, extra) {
        Ok(c) => c,
        Err(e) => return config_exit(&e),
    };
    daemon::set_role(args.role.name());
    daemon::init_logging(&config, cli.log_level.as_deref());
    if let Err(e) = serve::precheck(&config, args.role) {
        eprintln!("keystone: {e}");
        return e.exit_code();
    }
    // Inherited sockets are taken before the runtime starts its threads.
    let listener = match take_listener(&config, args.role.serves_http()) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keystone: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(serve::serve(config, args.role, listener)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("keystone: {e}");
            e.exit_code()
        }
    }
}
