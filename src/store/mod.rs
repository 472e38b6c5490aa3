//! Database access: one pool type per backend behind `Db`, the schema-version check every role
//! runs before it serves, and `keystone migrate`. Queries are written once and run on either
//! backend through `on_db!`.

use crate::config::{Config, Engine};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};
use std::time::Duration;

pub mod attachments;
pub mod audit;
pub mod clusters;
pub mod retention;
pub mod task_results;
pub mod teams;
pub mod users;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");

fn migrator(engine: Engine) -> &'static Migrator {
    match engine {
        Engine::Postgres => &POSTGRES_MIGRATIONS,
        Engine::Sqlite => &SQLITE_MIGRATIONS,
    }
}

/// The migrations compiled into this binary for a backend: (version, description).
pub fn known_migrations(engine: Engine) -> Vec<(i64, String)> {
    migrator(engine)
        .iter()
        .map(|m| (m.version, m.description.to_string()))
        .collect()
}

/// A connection pool for the configured backend, or one open transaction that every query
/// goes through (a `/batch/` job: its steps see each other's writes and commit or roll back
/// together).
#[derive(Clone)]
pub enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
    PostgresPinned(Pinned<sqlx::Postgres>),
    SqlitePinned(Pinned<sqlx::Sqlite>),
}

/// A transaction shared by the steps of a batch; each statement holds the lock only while
/// it runs.
pub type Pinned<DB> = std::sync::Arc<Shared<DB>>;

/// The shared transaction, and the stored files whose fate depends on how it ends.
pub struct Shared<DB: sqlx::Database> {
    pub tx: tokio::sync::Mutex<sqlx::Transaction<'static, DB>>,
    /// Upload-relative files to delete once the transaction commits (deleted records).
    on_commit: std::sync::Mutex<Vec<String>>,
    /// Upload-relative files to delete if it rolls back (records created inside it).
    on_rollback: std::sync::Mutex<Vec<String>>,
}

impl<DB: sqlx::Database> Shared<DB> {
    fn new(tx: sqlx::Transaction<'static, DB>) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Shared {
            tx: tokio::sync::Mutex::new(tx),
            on_commit: Default::default(),
            on_rollback: Default::default(),
        })
    }
}

/// Files to remove from storage after a pinned transaction ended.
pub type Leftovers = Vec<String>;

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Db::Postgres(p) => f.debug_tuple("Postgres").field(p).finish(),
            Db::Sqlite(p) => f.debug_tuple("Sqlite").field(p).finish(),
            Db::PostgresPinned(_) => f.write_str("PostgresPinned"),
            Db::SqlitePinned(_) => f.write_str("SqlitePinned"),
        }
    }
}

/// Runs the same expression against whichever pool `db` holds; the expression is compiled
/// once per backend, so one query text serves both (use `$1`-style placeholders, which SQLite
/// also understands). In a pinned transaction `$pool` is the transaction's connection.
#[macro_export]
macro_rules! on_db {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::store::Db::Postgres($pool) => $body,
            $crate::store::Db::Sqlite($pool) => $body,
            $crate::store::Db::PostgresPinned(pinned) => {
                let mut guard = pinned.tx.lock().await;
                let $pool = &mut **guard;
                $body
            }
            $crate::store::Db::SqlitePinned(pinned) => {
                let mut guard = pinned.tx.lock().await;
                let $pool = &mut **guard;
                $body
            }
        }
    };
}

/// Whether `e` means the database cannot be reached right now rather than that the
/// statement was wrong: no connection to be had (refused, reset, pool timed out or closed),
/// or the server shutting down or not yet accepting connections (SQLSTATE class 08,
/// 57P01-57P03, 53300). Such a request can be tried again later.
pub fn unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("SQLite database {path} does not exist; run `keystone migrate` to create it")]
    MissingFile { path: String },
    #[error("cannot create the database directory {path}: {source}")]
    Directory {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to the database: {0}")]
    Connect(sqlx::Error),
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Schema(String),
}

/// How the database schema compares with the migrations compiled into this binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    /// Versions compiled in but not applied, with their descriptions.
    pub pending: Vec<(i64, String)>,
    /// Versions applied in the database that this binary does not know (a newer release ran).
    pub unknown: Vec<i64>,
    /// A migration that started but did not finish.
    pub dirty: Option<i64>,
    pub latest_known: i64,
    pub latest_applied: Option<i64>,
}

impl SchemaStatus {
    pub fn is_current(&self) -> bool {
        self.pending.is_empty() && self.unknown.is_empty() && self.dirty.is_none()
    }

    /// The refusal message `serve` prints when the schema is not current.
    pub fn problem(&self) -> Option<String> {
        if let Some(v) = self.dirty {
            return Some(format!(
                "database migration {v} did not complete; restore the database backup and run `keystone migrate` again"
            ));
        }
        if !self.unknown.is_empty() {
            return Some(format!(
                "the database schema (version {}) is newer than this keystone binary (knows up to {}); install the newer keystone release that migrated it",
                self.latest_applied.unwrap_or_default(),
                self.latest_known
            ));
        }
        if !self.pending.is_empty() {
            let applied = match self.latest_applied {
                Some(v) => format!("at version {v}"),
                None => "not migrated".to_string(),
            };
            return Some(format!(
                "the database schema is {applied} but this keystone binary needs version {} ({} pending migration(s)); run `keystone migrate`",
                self.latest_known,
                self.pending.len()
            ));
        }
        None
    }
}

impl Db {
    /// Opens a pool. With `create` the SQLite file and its directory are created when missing
    /// (only `migrate` and `quickstart` do that; serving roles refuse a missing file).
    pub async fn connect(config: &Config, create: bool) -> Result<Db, DbError> {
        let s = &config.settings.database;
        match s.engine {
            Engine::Postgres => {
                let mut opts = PgConnectOptions::new()
                    .host(&s.host)
                    .port(s.port)
                    .database(&s.name)
                    .application_name("keystone");
                if !s.user.is_empty() {
                    opts = opts.username(&s.user);
                }
                if !s.password.is_empty() {
                    opts = opts.password(&s.password);
                }
                let pool = PgPoolOptions::new()
                    .max_connections(s.pool_size)
                    .acquire_timeout(Duration::from_secs(s.acquire_timeout.max(1)))
                    .connect_with(opts)
                    .await
                    .map_err(DbError::Connect)?;
                Ok(Db::Postgres(pool))
            }
            Engine::Sqlite => {
                let path = config.sqlite_path();
                if create {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir).map_err(|source| DbError::Directory {
                            path: dir.display().to_string(),
                            source,
                        })?;
                    }
                } else if !path.exists() {
                    return Err(DbError::MissingFile {
                        path: path.display().to_string(),
                    });
                }
                let opts = SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(create)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(30))
                    .foreign_keys(true)
                    // Text lookups (`contains`, `startswith`) are case-sensitive, as on PostgreSQL.
                    .pragma("case_sensitive_like", "ON");
                let pool = SqlitePoolOptions::new()
                    .max_connections(s.pool_size)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(opts)
                    .await
                    .map_err(DbError::Connect)?;
                Ok(Db::Sqlite(pool))
            }
        }
    }

    pub fn engine(&self) -> Engine {
        match self {
            Db::Postgres(_) | Db::PostgresPinned(_) => Engine::Postgres,
            Db::Sqlite(_) | Db::SqlitePinned(_) => Engine::Sqlite,
        }
    }

    /// Whether queries go through one shared transaction (inside a batch).
    pub fn is_pinned(&self) -> bool {
        matches!(self, Db::PostgresPinned(_) | Db::SqlitePinned(_))
    }

    /// Opens a transaction that becomes a `Db` of its own: every query and every nested
    /// `begin` on the returned handle runs inside it. On SQLite it takes the write lock at
    /// once (`BEGIN IMMEDIATE`), so a step that reads and then writes cannot fail to
    /// upgrade its lock.
    pub async fn pin(&self) -> Result<Db, DbError> {
        Ok(match self {
            Db::Postgres(p) => Db::PostgresPinned(Shared::new(p.begin().await?)),
            Db::Sqlite(p) => Db::SqlitePinned(Shared::new(p.begin_with("BEGIN IMMEDIATE").await?)),
            Db::PostgresPinned(_) | Db::SqlitePinned(_) => self.clone(),
        })
    }

    /// Ends a transaction opened by [`Db::pin`]: commits it when `commit`, else rolls it
    /// back. Returns the stored files that are now orphaned, for the caller to remove.
    /// Fails (and rolls back, by dropping) when another handle to it is still alive.
    pub async fn finish(self, commit: bool) -> Result<Leftovers, DbError> {
        async fn end<DB: sqlx::Database>(
            p: Pinned<DB>,
            commit: bool,
        ) -> Result<Leftovers, DbError> {
            let shared = std::sync::Arc::try_unwrap(p)
                .map_err(|_| DbError::Schema("the batch transaction is still in use".into()))?;
            let t = shared.tx.into_inner();
            let list = if commit {
                shared.on_commit
            } else {
                shared.on_rollback
            };
            if commit {
                t.commit().await?;
            } else {
                t.rollback().await?;
            }
            Ok(list.into_inner().unwrap_or_default())
        }
        match self {
            Db::PostgresPinned(p) => end(p, commit).await,
            Db::SqlitePinned(p) => end(p, commit).await,
            Db::Postgres(_) | Db::Sqlite(_) => Ok(Vec::new()),
        }
    }

    /// Stored files of records deleted in this transaction: inside a batch they are kept
    /// until it commits (returns true); otherwise the caller removes them now (false).
    pub fn defer_removal(&self, files: &[String]) -> bool {
        let list = match self {
            Db::PostgresPinned(p) => &p.on_commit,
            Db::SqlitePinned(p) => &p.on_commit,
            Db::Postgres(_) | Db::Sqlite(_) => return false,
        };
        if let Ok(mut l) = list.lock() {
            l.extend(files.iter().cloned());
        }
        true
    }

    /// A stored file written for a record created in this transaction: inside a batch it
    /// is removed again if the batch rolls back.
    pub fn remove_on_rollback(&self, file: &str) {
        let list = match self {
            Db::PostgresPinned(p) => &p.on_rollback,
            Db::SqlitePinned(p) => &p.on_rollback,
            Db::Postgres(_) | Db::Sqlite(_) => return,
        };
        if let Ok(mut l) = list.lock() {
            l.push(file.to_string());
        }
    }

    /// Runs one statement on the connection (savepoints of nested batches).
    pub async fn execute_raw(&self, sql: &'static str) -> Result<(), DbError> {
        on_db!(self, |p| sqlx::query(sql).execute(p).await.map(|_| ()))?;
        Ok(())
    }

    fn migrator(&self) -> &'static Migrator {
        migrator(self.engine())
    }

    /// `SELECT 1` must answer exactly 1.
    pub async fn ping(&self) -> Result<(), DbError> {
        let one: i32 = on_db!(self, |p| sqlx::query_scalar("SELECT 1").fetch_one(p).await)?;
        if one == 1 {
            Ok(())
        } else {
            Err(DbError::Schema(
                "Health Check query did not return the expected result.".into(),
            ))
        }
    }

    pub async fn schema_status(&self) -> Result<SchemaStatus, DbError> {
        let exists_sql = match self.engine() {
            Engine::Postgres => {
                "SELECT COUNT(*) FROM pg_tables WHERE tablename = '_sqlx_migrations' AND schemaname = current_schema()"
            }
            Engine::Sqlite => {
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
            }
        };
        let exists: i64 = on_db!(self, |p| sqlx::query_scalar(exists_sql).fetch_one(p).await)?;
        let applied: Vec<(i64, bool)> = if exists > 0 {
            on_db!(self, |p| sqlx::query_as(
                "SELECT version, success FROM _sqlx_migrations ORDER BY version"
            )
            .fetch_all(p)
            .await)?
        } else {
            Vec::new()
        };
        let migrator = self.migrator();
        let known: Vec<i64> = migrator.iter().map(|m| m.version).collect();
        let pending = migrator
            .iter()
            .filter(|m| !applied.iter().any(|(v, _)| *v == m.version))
            .map(|m| (m.version, m.description.to_string()))
            .collect();
        let unknown = applied
            .iter()
            .filter(|(v, _)| !known.contains(v))
            .map(|(v, _)| *v)
            .collect();
        let dirty = applied.iter().find(|(_, ok)| !ok).map(|(v, _)| *v);
        Ok(SchemaStatus {
            pending,
            unknown,
            dirty,
            latest_known: known.last().copied().unwrap_or(0),
            latest_applied: applied.last().map(|(v, _)| *v),
        })
    }

    /// Applies pending migrations (each in a transaction, under the database-wide migration
    /// lock) and returns those applied. Refuses a schema newer than the binary.
    pub async fn migrate(&self) -> Result<Vec<(i64, String)>, DbError> {
        let status = self.schema_status().await?;
        if !status.unknown.is_empty() || status.dirty.is_some() {
            return Err(DbError::Schema(status.problem().unwrap_or_default()));
        }
        on_db!(self, |p| self.migrator().run(p).await)?;
        Ok(status.pending)
    }

    /// Returns an error naming what to run unless the schema matches this binary exactly.
    pub async fn require_current_schema(&self) -> Result<(), DbError> {
        let status = self.schema_status().await?;
        match status.problem() {
            Some(p) => Err(DbError::Schema(p)),
            None => Ok(()),
        }
    }

    pub async fn close(&self) {
        match self {
            Db::Postgres(p) => p.close().await,
            Db::Sqlite(p) => p.close().await,
            Db::PostgresPinned(_) | Db::SqlitePinned(_) => {}
        }
    }

    /// Connections in use and idle, for metrics and status lines.
    pub fn pool_usage(&self) -> (u32, usize) {
        match self {
            Db::Postgres(p) => (p.size(), p.num_idle()),
            Db::Sqlite(p) => (p.size(), p.num_idle()),
            Db::PostgresPinned(_) | Db::SqlitePinned(_) => (1, 0),
        }
    }
}

/// Like `on_db!`, also naming the sea-query builder of the backend.
macro_rules! on_backend {
    ($db:expr, |$pool:ident, $builder:ident| $body:expr) => {
        match $db {
            Db::Postgres($pool) => {
                let $builder = sea_query::PostgresQueryBuilder;
                $body
            }
            Db::Sqlite($pool) => {
                let $builder = sea_query::SqliteQueryBuilder;
                $body
            }
            Db::PostgresPinned(pinned) => {
                let mut guard = pinned.tx.lock().await;
                let $pool = &mut **guard;
                let $builder = sea_query::PostgresQueryBuilder;
                $body
            }
            Db::SqlitePinned(pinned) => {
                let mut guard = pinned.tx.lock().await;
                let $pool = &mut **guard;
                let $builder = sea_query::SqliteQueryBuilder;
                $body
            }
        }
    };
}

/// The `is_active` flag of row `id` of `table` (a table name of this crate, never input);
/// `None` when there is no such row.
pub async fn is_active(db: &Db, table: &'static str, id: i64) -> Result<Option<bool>, DbError> {
    let sql = format!("SELECT is_active FROM {table} WHERE id = $1");
    Ok(on_db!(db, |p| sqlx::query_scalar::<_, bool>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .bind(id)
    .fetch_optional(p)
    .await)?)
}

/// The first id of `ids` missing from `table` (a table name of this crate), if any: one
/// query, whatever the number of ids.
pub async fn first_missing(db: &Db, table: &str, ids: &[i64]) -> Result<Option<i64>, DbError> {
    use sea_query::{Alias, Expr, ExprTrait, Query};
    if ids.is_empty() {
        return Ok(None);
    }
    let mut unique = ids.to_vec();
    unique.sort_unstable();
    unique.dedup();
    let mut q = Query::select();
    q.column(Alias::new("id"))
        .from(Alias::new(table))
        .and_where(Expr::col(Alias::new("id")).is_in(unique));
    let found: Vec<(i64,)> = fetch_all(db, &q).await?;
    Ok(ids
        .iter()
        .find(|id| !found.iter().any(|(f,)| f == *id))
        .copied())
}

/// Runs a sea-query select returning one value.
pub async fn fetch_scalar<T>(db: &Db, q: &sea_query::SelectStatement) -> Result<T, DbError>
where
    T: Send
        + Unpin
        + for<'r> sqlx::Decode<'r, sqlx::Postgres>
        + sqlx::Type<sqlx::Postgres>
        + for<'r> sqlx::Decode<'r, sqlx::Sqlite>
        + sqlx::Type<sqlx::Sqlite>,
{
    use sea_query_sqlx::SqlxBinder;
    Ok(on_backend!(db, |p, builder| {
        let (sql, values) = q.build_sqlx(builder);
        sqlx::query_scalar_with(sqlx::AssertSqlSafe(sql), values)
            .fetch_one(p)
            .await?
    }))
}

/// A row type read from either backend (a `sqlx::FromRow` for both).
pub trait FetchRow:
    Send
    + Unpin
    + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
    + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
{
}

impl<T> FetchRow for T where
    T: Send
        + Unpin
        + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
        + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
{
}

/// Runs a sea-query select into rows of `T`.
pub async fn fetch_all<T: FetchRow>(
    db: &Db,
    q: &sea_query::SelectStatement,
) -> Result<Vec<T>, DbError> {
    use sea_query_sqlx::SqlxBinder;
    Ok(on_backend!(db, |p, builder| {
        let (sql, values) = q.build_sqlx(builder);
        sqlx::query_as_with(sqlx::AssertSqlSafe(sql), values)
            .fetch_all(p)
            .await?
    }))
}

/// Runs a sea-query insert.
pub async fn execute_insert(db: &Db, q: &sea_query::InsertStatement) -> Result<(), DbError> {
    use sea_query_sqlx::SqlxBinder;
    on_backend!(db, |p, builder| {
        let (sql, values) = q.build_sqlx(builder);
        sqlx::query_with(sqlx::AssertSqlSafe(sql), values)
            .execute(p)
            .await?;
    });
    Ok(())
}

/// A transaction on either backend. Inside a batch it is the batch's own transaction:
/// committing it is a no-op, the batch commits or rolls back everything at its end.
pub enum Tx {
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    PostgresPinned(Pinned<sqlx::Postgres>),
    SqlitePinned(Pinned<sqlx::Sqlite>),
}

/// Like `on_db!`, for a transaction: `$conn` is a `&mut` connection of the right backend.
#[macro_export]
macro_rules! on_tx {
    ($tx:expr, |$conn:ident| $body:expr) => {
        match $tx {
            $crate::store::Tx::Postgres(t) => {
                let $conn = &mut **t;
                $body
            }
            $crate::store::Tx::Sqlite(t) => {
                let $conn = &mut **t;
                $body
            }
            $crate::store::Tx::PostgresPinned(pinned) => {
                let mut guard = pinned.tx.lock().await;
                let $conn = &mut **guard;
                $body
            }
            $crate::store::Tx::SqlitePinned(pinned) => {
                let mut guard = pinned.tx.lock().await;
                let $conn = &mut **guard;
                $body
            }
        }
    };
}

impl Db {
    /// Opens a transaction. On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`):
    /// a deferred transaction that reads and then writes fails at once with "database is
    /// locked" (SQLITE_BUSY_SNAPSHOT) when another request committed in between, whatever
    /// the busy timeout, while an immediate one waits for the lock.
    pub async fn begin(&self) -> Result<Tx, DbError> {
        Ok(match self {
            Db::Postgres(p) => Tx::Postgres(p.begin().await?),
            Db::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Db::PostgresPinned(p) => Tx::PostgresPinned(p.clone()),
            Db::SqlitePinned(p) => Tx::SqlitePinned(p.clone()),
        })
    }
}

impl Tx {
    pub async fn commit(self) -> Result<(), DbError> {
        match self {
            Tx::Postgres(t) => t.commit().await?,
            Tx::Sqlite(t) => t.commit().await?,
            Tx::PostgresPinned(_) | Tx::SqlitePinned(_) => {}
        }
        Ok(())
    }

    pub fn engine(&self) -> Engine {
        match self {
            Tx::Postgres(_) | Tx::PostgresPinned(_) => Engine::Postgres,
            Tx::Sqlite(_) | Tx::SqlitePinned(_) => Engine::Sqlite,
        }
    }
}
