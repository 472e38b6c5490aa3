//! Account administration from the command line (spec/operations.md §4.5): `user create`,
//! `user set-password`, `user list`, and API keys for scripts (`token create|list|revoke`).

use crate::config::Config;
use crate::identity::passwords::UserAttributes;
use crate::on_db;
use crate::store::audit::{self, Action, AuditContext};
use crate::store::{Db, users};
use chrono::Utc;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Create a local account (interactive unless --no-input)
    Create(CreateArgs),
    /// Set a user's password (read from standard input with --password-stdin, else prompted)
    SetPassword {
        /// The account's username
        username: String,
        /// Read the new password from the first line of standard input
        #[arg(long)]
        password_stdin: bool,
    },
    /// List accounts
    List,
}

#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    /// Username (or DJANGO_SUPERUSER_USERNAME with --no-input)
    #[arg(long)]
    pub username: Option<String>,
    /// E-mail address
    #[arg(long)]
    pub email: Option<String>,
    /// Staff account (may administer everything through the API)
    #[arg(long)]
    pub staff: bool,
    /// Superuser (implies --staff)
    #[arg(long)]
    pub superuser: bool,
    /// Never prompt; the password comes from --password-stdin or DJANGO_SUPERUSER_PASSWORD
    #[arg(long = "no-input", alias = "noinput")]
    pub no_input: bool,
    /// Read the password from the first line of standard input
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Issue an API key for a user; the key is printed once and stored only as a hash
    Create {
        /// The account's username
        username: String,
        /// A label for the key, e.g. the script using it
        #[arg(long, default_value = "")]
        name: String,
        /// Days until the key expires (default: never)
        #[arg(long, value_name = "DAYS")]
        expires_days: Option<u32>,
    },
    /// List API keys (prefix, owner, name, dates), optionally of one user
    List {
        /// Only this user's keys
        username: Option<String>,
    },
    /// Revoke an API key by its id or its printed prefix
    Revoke {
        /// Key id (from `token list`) or key prefix
        key: String,
    },
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("Error: {msg}");
    ExitCode::from(1)
}

fn read_stdin_line() -> Option<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).ok()?;
    let line = line.trim_end_matches(['\n', '\r']).to_string();
    (!line.is_empty()).then_some(line)
}

fn prompt(label: &str) -> Option<String> {
    print!("{label}");
    let _ = std::io::stdout().flush();
    read_stdin_line()
}

/// Asks twice (hidden) until the password satisfies the rules for this account.
fn prompt_password(user: &UserAttributes<'_>) -> Option<String> {
    loop {
        let first = rpassword::prompt_password("Password: ").ok()?;
        let second = rpassword::prompt_password("Password (again): ").ok()?;
        if first != second {
            eprintln!("Error: Your passwords didn't match.");
            continue;
        }
        let problems = crate::identity::passwords::validate(&first, Some(user));
        if problems.is_empty() {
            return Some(first);
        }
        for p in problems {
            eprintln!("{p}");
        }
    }
}

async fn open(config: &Config) -> Result<Db, String> {
    let db = Db::connect(config, false)
        .await
        .map_err(|e| e.to_string())?;
    db.require_current_schema()
        .await
        .map_err(|e| e.to_string())?;
    Ok(db)
}

/// Runs `command` on a fresh runtime against the opened, current database.
fn with_db(config: &Config, command: impl AsyncFnOnce(&Db) -> ExitCode) -> ExitCode {
    let Ok(rt) = crate::cli::runtime() else {
        return ExitCode::from(1);
    };
    rt.block_on(async {
        match open(config).await {
            Ok(db) => command(&db).await,
            Err(e) => fail(e),
        }
    })
}

pub fn run_user(config: &Config, cmd: &UserCommand) -> ExitCode {
    with_db(config, async |db| match cmd {
        UserCommand::Create(args) => create(db, args).await,
        UserCommand::SetPassword {
            username,
            password_stdin,
        } => set_password(config, db, username, *password_stdin).await,
        UserCommand::List => list(db).await,
    })
}

async fn create(db: &Db, args: &CreateArgs) -> ExitCode {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let interactive = !args.no_input && std::io::stdin().is_terminal();
    let username = args
        .username
        .clone()
        .or_else(|| env("DJANGO_SUPERUSER_USERNAME"))
        .or_else(|| {
            if interactive {
                prompt("Username: ")
            } else {
                None
            }
        });
    let Some(username) = username else {
        eprintln!("Error: a username is required (--username or DJANGO_SUPERUSER_USERNAME).");
        return ExitCode::from(2);
    };
    let email = args.email.clone().or_else(|| {
        if interactive && args.username.is_none() {
            prompt("Email address: ")
        } else {
            None
        }
    });
    // Upstream's createsuperuser checks similarity to the username and the email address.
    let account = UserAttributes {
        username: Some(&username),
        email: email.as_deref(),
        ..Default::default()
    };
    let password = if args.password_stdin {
        read_stdin_line()
    } else if let Some(p) =
        env("DJANGO_SUPERUSER_PASSWORD").or_else(|| env("KEYSTONE_SUPERUSER_PASSWORD"))
    {
        Some(p)
    } else if interactive {
        prompt_password(&account)
    } else {
        None
    };
    let Some(password) = password else {
        eprintln!(
            "Error: a password is required (--password-stdin, DJANGO_SUPERUSER_PASSWORD or KEYSTONE_SUPERUSER_PASSWORD)."
        );
        return ExitCode::from(2);
    };
    let problems = crate::identity::passwords::validate(&password, Some(&account));
    if !problems.is_empty() {
        for p in problems {
            eprintln!("Error: {p}");
        }
        return ExitCode::from(1);
    }
    if !username
        .chars()
        .all(|c| c.is_alphanumeric() || "@.+-_".contains(c))
    {
        return fail(
            "Enter a valid username. This value may contain only letters, numbers, and @/./+/-/_ characters.",
        );
    }
    match users::username_exists(db, &username).await {
        Ok(true) => return fail("That username is already taken."),
        Ok(false) => {}
        Err(e) => return fail(e),
    }
    let hash = match crate::identity::passwords::hash(&password).await {
        Ok(h) => h,
        Err(e) => return fail(e),
    };
    let new = users::NewUser {
        username: username.clone(),
        email: email.filter(|e| !e.is_empty()),
        password_hash: hash,
        is_staff: args.staff || args.superuser,
        is_superuser: args.superuser,
    };
    match crate::web::api::users::insert(
        db,
        &AuditContext::default(),
        &new,
        &crate::web::api::users::UserFields::default(),
    )
    .await
    {
        Ok(user) => {
            println!("User `{}` created (id {}).", user.username, user.id);
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("{:?}", e.body())),
    }
}

async fn set_password(config: &Config, db: &Db, username: &str, from_stdin: bool) -> ExitCode {
    let user = match users::by_username(db, username).await {
        Ok(Some(u)) => u,
        Ok(None) => return fail(format!("user '{username}' does not exist")),
        Err(e) => return fail(e),
    };
    // Upstream's changepassword checks similarity to every attribute of the account.
    let account = UserAttributes {
        username: Some(&user.username),
        first_name: user.first_name.as_deref(),
        last_name: user.last_name.as_deref(),
        email: user.email.as_deref(),
    };
    let password = if from_stdin {
        read_stdin_line()
    } else if std::io::stdin().is_terminal() {
        prompt_password(&account)
    } else {
        None
    };
    let Some(password) = password else {
        eprintln!("Error: no password given (use --password-stdin when not on a terminal).");
        return ExitCode::from(2);
    };
    let problems = crate::identity::passwords::validate(&password, Some(&account));
    if !problems.is_empty() {
        for p in problems {
            eprintln!("Error: {p}");
        }
        return ExitCode::from(1);
    }
    let hash = match crate::identity::passwords::hash(&password).await {
        Ok(h) => h,
        Err(e) => return fail(e),
    };
    let outcome = async {
        let mut tx = db.begin().await?;
        crate::on_tx!(&mut tx, |c| sqlx::query(
            "UPDATE users_user SET password = $1 WHERE id = $2"
        )
        .bind(&hash)
        .bind(user.id)
        .execute(c)
        .await
        .map(|_| ()))?;
        let mut changes = serde_json::Map::new();
        changes.insert(
            "password".into(),
            serde_json::json!([
                audit::mask_password(&user.password),
                audit::mask_password(&hash)
            ]),
        );
        audit::record(
            &mut tx,
            &AuditContext::default(),
            crate::web::api::users::CONTENT_TYPE,
            user.id,
            &crate::web::api::users::repr(&user),
            Action::Update,
            changes,
        )
        .await?;
        tx.commit().await
    }
    .await;
    match outcome {
        Ok(()) => {
            // Sessions of the account end at once in every web process.
            crate::identity::sessions::invalidate_with(
                config,
                crate::identity::sessions::Target::User(user.id),
            )
            .await;
            println!("Password changed successfully for user '{username}'.");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

async fn list(db: &Db) -> ExitCode {
    match crate::web::api::users::all(db).await {
        Ok(all) => {
            println!(
                "{:>6}  {:<24} {:<6} {:<6} {:<6} EMAIL",
                "ID", "USERNAME", "ACTIVE", "STAFF", "LDAP"
            );
            for u in all {
                println!(
                    "{:>6}  {:<24} {:<6} {:<6} {:<6} {}",
                    u.id,
                    u.username,
                    u.is_active,
                    u.is_staff,
                    u.is_ldap_user,
                    u.email.unwrap_or_default()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("{:?}", e.body())),
    }
}

pub fn run_token(config: &Config, cmd: &TokenCommand) -> ExitCode {
    with_db(config, async |db| match cmd {
        TokenCommand::Create {
            username,
            name,
            expires_days,
        } => token_create(db, username, name, *expires_days).await,
        TokenCommand::List { username } => token_list(db, username.as_deref()).await,
        TokenCommand::Revoke { key } => token_revoke(db, key).await,
    })
}

async fn token_create(db: &Db, username: &str, name: &str, days: Option<u32>) -> ExitCode {
    let user = match users::by_username(db, username).await {
        Ok(Some(u)) => u,
        Ok(None) => return fail(format!("user '{username}' does not exist")),
        Err(e) => return fail(e),
    };
    let key = crate::identity::auth::generate_api_key();
    let expires = days.map(|d| Utc::now() + chrono::Duration::days(i64::from(d)));
    let r = on_db!(db, |p| {
        sqlx::query(
        "INSERT INTO keystone_api_token (user_id, name, key_prefix, key_hash, created, expires) \
         VALUES ($1, $2, $3, $4, $5, $6)"
    )
    .bind(user.id)
    .bind(name)
    .bind(&key[..8])
    .bind(crate::identity::auth::hash_api_key(&key))
    .bind(Utc::now())
    .bind(expires)
    .execute(p)
    .await
    .map(|_| ())
    });
    match r {
        Ok(()) => {
            // The key itself is shown once: only its hash is stored.
            println!("{key}");
            eprintln!(
                "API key for '{username}' created; send it as `Authorization: Token <key>`. It cannot be shown again."
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: i64,
    username: String,
    name: String,
    key_prefix: String,
    created: chrono::DateTime<Utc>,
    expires: Option<chrono::DateTime<Utc>>,
}

async fn token_list(db: &Db, username: Option<&str>) -> ExitCode {
    let rows: Result<Vec<TokenRow>, sqlx::Error> = on_db!(db, |p| sqlx::query_as(
        "SELECT t.id, u.username, t.name, t.key_prefix, t.created, t.expires \
         FROM keystone_api_token t JOIN users_user u ON u.id = t.user_id \
         WHERE ($1 IS NULL OR u.username = $1) ORDER BY t.id"
    )
    .bind(username)
    .fetch_all(p)
    .await);
    match rows {
        Ok(rows) => {
            println!(
                "{:>5}  {:<10} {:<20} {:<20} {:<25} EXPIRES",
                "ID", "PREFIX", "USER", "NAME", "CREATED"
            );
            for r in rows {
                println!(
                    "{:>5}  {:<10} {:<20} {:<20} {:<25} {}",
                    r.id,
                    r.key_prefix,
                    r.username,
                    r.name,
                    r.created.format("%Y-%m-%d %H:%M:%S UTC"),
                    r.expires
                        .map(|e| e.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                        .unwrap_or_else(|| "never".into())
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

async fn token_revoke(db: &Db, key: &str) -> ExitCode {
    let id = key.parse::<i64>().ok();
    let deleted = on_db!(db, |p| sqlx::query(
        "DELETE FROM keystone_api_token WHERE id = $1 OR key_prefix = $2"
    )
    .bind(id.unwrap_or(-1))
    .bind(key)
    .execute(p)
    .await
    .map(|r| r.rows_affected()));
    match deleted {
        Ok(0) => fail(format!("no API key matches '{key}'")),
        Ok(n) => {
            println!("Revoked {n} API key(s).");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
