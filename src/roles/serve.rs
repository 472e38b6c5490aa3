//! `keystone serve`: the web, worker and beat roles (alone or all in one process), from
//! start-up checks through readiness to a bounded, graceful stop.

use crate::config::{Config, Engine};
use crate::daemon::{self, Listener};
use crate::identity::secret;
use crate::identity::sessions::{Bus, Cache, Sessions};
use crate::infra::health::HealthChecker;
use crate::store::Db;
use crate::web::{self, AppState, InheritedUnixAcceptor};
use salvo::prelude::*;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Web,
    Worker,
    Beat,
    All,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Web => "web",
            Role::Worker => "worker",
            Role::Beat => "beat",
            Role::All => "all",
        }
    }
    pub fn serves_http(self) -> bool {
        matches!(self, Role::Web | Role::All)
    }
    pub fn runs_worker(self) -> bool {
        matches!(self, Role::Worker | Role::All)
    }
    pub fn runs_beat(self) -> bool {
        matches!(self, Role::Beat | Role::All)
    }
}

/// Why `serve` stopped before serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Startup(String),
}

impl ServeError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            ServeError::Config(_) => ExitCode::from(78),
            ServeError::Startup(_) => ExitCode::from(1),
        }
    }
}

/// Checks that need no I/O: a worker or beat without Redis has nothing to talk to.
pub fn precheck(config: &Config, role: Role) -> Result<(), ServeError> {
    if matches!(role, Role::Worker | Role::Beat) && config.redis_url().is_none() {
        return Err(ServeError::Config(format!(
            "configuration error: redis.host (from {}): the {} role needs Redis; set redis.host or redis.url (REDIS_HOST), or run `keystone serve --role all` for a single process with an in-process queue",
            config
                .sources
                .get("redis.host")
                .cloned()
                .unwrap_or(crate::config::Source::Default),
            role.name()
        )));
    }
    Ok(())
}

/// Opens the database, checks the schema and Redis: the part of readiness every role shares.
pub async fn open_database(config: &Config) -> Result<Db, ServeError> {
    let db = Db::connect(config, false)
        .await
        .map_err(|e| ServeError::Startup(e.to_string()))?;
    db.require_current_schema()
        .await
        .map_err(|e| ServeError::Startup(e.to_string()))?;
    Ok(db)
}

/// Session lookups of a web process: cached, and kept honest through Redis, when Redis is
/// configured; straight from the database otherwise.
async fn sessions(config: &Config, db: &Db) -> Result<Sessions, ServeError> {
    let Some(url) = config.redis_url() else {
        return Ok(Sessions::new(db.clone()));
    };
    let startup = |e: fred::error::Error| {
        ServeError::Startup(format!(
            "Redis is not reachable for session invalidations: {e}"
        ))
    };
    let bus = Arc::new(
        Bus::connect(&url, &config.settings.redis.prefix, &daemon::node_id())
            .await
            .map_err(startup)?,
    );
    let cache = Arc::new(Cache::new());
    bus.listen(cache.clone()).await.map_err(startup)?;
    Ok(Sessions::cached(db.clone(), bus, cache))
}

pub async fn require_redis(config: &Config) -> Result<(), ServeError> {
    if let Some(url) = config.redis_url() {
        crate::infra::health::check_redis(&url)
            .await
            .map_err(|e| ServeError::Startup(format!("Redis is not reachable: {e}")))?;
    }
    Ok(())
}

/// Runs a role until SIGTERM/SIGINT. `listener` is required for roles that serve HTTP.
pub async fn serve(
    config: Config,
    role: Role,
    listener: Option<Listener>,
) -> Result<(), ServeError> {
    let config = Arc::new(config);
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    for n in &config.notices {
        tracing::info!("{n}");
    }
    daemon::notify_status(&format!("{}: starting", role.name()));
    let secret_key = if role.serves_http() {
        Some(
            secret::resolve(&config, config.settings.database.engine == Engine::Sqlite)
                .map_err(ServeError::Config)?,
        )
    } else {
        None
    };
    if role.serves_http() || role.runs_worker() {
        ensure_upload_dir(&config).map_err(ServeError::Startup)?;
    }
    let db = open_database(&config).await?;
    require_redis(&config).await?;

    let mut status = vec![format!("role {}", role.name())];
    let request_log = (role.serves_http() && config.settings.logging.requests)
        .then(|| crate::web::request_log::RequestLog::start(db.clone()));
    let sources = crate::infra::metrics::Sources {
        db: Some(db.clone()),
        request_log_dropped: request_log.as_ref().map(|l| l.dropped.clone()),
    };
    if let Some(addr) = crate::infra::metrics::start(&config, sources) {
        status.push(format!("metrics on http://{addr}/metrics"));
    }
    let mut background = vec![daemon::spawn_memory_trim()];
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stoppable = Vec::new();
    let queue = if role.runs_worker() || role.runs_beat() {
        let queue = open_queue(&config).await?;
        status.push(format!("queue {}", queue.describe()));
        Some(queue)
    } else {
        None
    };
    if let (true, Some(queue)) = (role.runs_worker(), &queue) {
        queue
            .register()
            .await
            .map_err(|e| ServeError::Startup(format!("cannot join the task queue: {e}")))?;
        let heartbeat = crate::roles::worker::Heartbeat::new(db.clone(), role.name());
        heartbeat
            .beat()
            .await
            .map_err(|e| ServeError::Startup(format!("cannot record the worker heartbeat: {e}")))?;
        background.push(heartbeat.spawn(Duration::from_secs(config.settings.worker.heartbeat)));
        stoppable.push((
            "worker",
            crate::roles::worker::spawn(config.clone(), db.clone(), queue.clone(), stop_rx.clone()),
        ));
        status.push(format!(
            "worker concurrency {}",
            config.worker_concurrency()
        ));
    }
    // Beat starts once READY=1 is sent, so its leader/standby STATUS= line comes after it.
    let beat_tasks = match (role.runs_beat(), &queue) {
        (true, Some(queue)) => {
            status.push(format!(
                "beat with {} schedule(s)",
                crate::roles::beat::entries(&config).len()
            ));
            Some(crate::queue::Tasks::new(queue.clone(), db.clone()))
        }
        _ => None,
    };

    let server = match (role.serves_http(), listener) {
        (true, Some(listener)) => {
            let sessions = sessions(&config, &db).await?;
            let state = Arc::new(AppState {
                config: config.clone(),
                timezone: config.timezone(),
                db: db.clone(),
                secret_key: secret_key.clone(),
                throttle: Arc::new(crate::web::throttle::connect(config.redis_url()).await),
                sessions: Arc::new(sessions),
                request_log: request_log.clone(),
                health: Arc::new(HealthChecker::new(config.clone(), db.clone())),
                openapi: Arc::new(web::openapi::documents(&web::router())),
            });
            crate::identity::passwords::configure(
                config.settings.security.password_hash_concurrency,
            );
            status.push(format!("listening on {}", listener.describe()));
            Some(start_http(listener, web::service(state)).await?)
        }
        (true, None) => {
            return Err(ServeError::Startup(
                "internal error: no listener for the web role".into(),
            ));
        }
        _ => None,
    };

    let status = status.join(", ");
    tracing::info!("ready: {status}");
    daemon::notify_ready(&status);
    if let Some(tasks) = beat_tasks {
        stoppable.push((
            "beat",
            crate::roles::beat::spawn(
                config.clone(),
                db.clone(),
                tasks,
                stop_rx.clone(),
                role == Role::Beat,
            ),
        ));
    }
    let watchdog = daemon::spawn_watchdog();

    daemon::shutdown_signal().await;
    daemon::notify_stopping();
    tracing::info!("stopping: finishing in-flight work");
    let grace = Duration::from_secs(config.settings.shutdown.grace_seconds);
    // Worker and beat stop taking work now, while the web role drains its requests.
    let _ = stop_tx.send(true);
    if let Some((handle, task, cleanup)) = server {
        handle.stop_graceful(grace);
        if tokio::time::timeout(grace + Duration::from_secs(1), task)
            .await
            .is_err()
        {
            tracing::warn!("in-flight requests did not finish within {grace:?}");
        }
        if let Some(path) = cleanup {
            let _ = std::fs::remove_file(path);
        }
    }
    for (name, task) in stoppable {
        // The worker bounds its own drain by the grace period; this is a backstop.
        if tokio::time::timeout(grace + Duration::from_secs(5), task)
            .await
            .is_err()
        {
            tracing::warn!("the {name} did not stop in time");
        }
    }
    for task in background {
        task.abort();
    }
    if let Some(w) = watchdog {
        w.abort();
    }
    if role.runs_worker() {
        crate::roles::worker::Heartbeat::new(db.clone(), role.name())
            .remove()
            .await;
    }
    db.close().await;
    Ok(())
}

/// The task queue of the worker and beat roles: Redis when configured, else (only for
/// `--role all`, see [`precheck`]) an in-process queue.
async fn open_queue(config: &Config) -> Result<Arc<dyn crate::queue::Queue>, ServeError> {
    match crate::queue::connect_redis(config, &crate::daemon::node_id()).await {
        Ok(Some(redis)) => Ok(redis),
        Ok(None) => Ok(crate::queue::LocalQueue::new()),
        Err(e) => Err(ServeError::Startup(format!(
            "cannot connect to the task broker: {e}"
        ))),
    }
}

type ServerParts = (
    salvo::server::ServerHandle,
    tokio::task::JoinHandle<()>,
    Option<std::path::PathBuf>,
);

async fn start_http(listener: Listener, service: Service) -> Result<ServerParts, ServeError> {
    let startup = |e: std::io::Error| ServeError::Startup(format!("cannot use the listener: {e}"));
    match listener {
        Listener::Tcp(l) => {
            l.set_nonblocking(true).map_err(startup)?;
            let l = tokio::net::TcpListener::from_std(l).map_err(startup)?;
            let acceptor = salvo::conn::tcp::TcpAcceptor::try_from(l)
                .map_err(|e| ServeError::Startup(format!("cannot use the listener: {e}")))?;
            let server = Server::new(acceptor);
            let handle = server.handle();
            let task = tokio::spawn(async move { server.serve(service).await });
            Ok((handle, task, None))
        }
        Listener::Unix { listener, path } => {
            let acceptor = InheritedUnixAcceptor::new(listener).map_err(startup)?;
            let server = Server::new(acceptor);
            let handle = server.handle();
            let task = tokio::spawn(async move { server.serve(service).await });
            Ok((handle, task, path))
        }
    }
}

/// Creates the upload directory (mode 0770) when missing.
pub fn ensure_upload_dir(config: &Config) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = config.upload_dir();
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o770)
        .create(&dir)
        .map_err(|e| format!("cannot create the upload directory {}: {e}", dir.display()))
}
