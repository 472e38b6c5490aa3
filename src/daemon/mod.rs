//! Process plumbing shared by every role: log setup (journald or stderr), systemd
//! notifications, inherited listening sockets, the shutdown signal, Redis connections
//! ([`redis`]) and handing freed heap memory back to the system.

pub mod redis;

use crate::config::{BindAddr, Config, level_filter};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// True when systemd says stderr is connected to the journal (`JOURNAL_STREAM=dev:inode`
/// matching fd 2), so structured records should go to journald's native socket.
pub fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let Ok(fd) = io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(meta) => meta.dev() == dev && meta.ino() == ino,
        Err(_) => false,
    }
}

/// The role this process runs, sent with every journald record as `KEYSTONE_ROLE`.
static ROLE: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Names the process's role (`web`, `worker`, `beat`, `all`) before logging starts;
/// one-shot commands stay `cli`.
pub fn set_role(role: &'static str) {
    let _ = ROLE.set(role);
}

/// Installs the global subscriber. `level` overrides `logging.level` (the `--log-level` flag).
///
/// Under journald every record carries `KEYSTONE_ROLE`, and the fields of the spans it was
/// logged in: `KEYSTONE_CID` and `KEYSTONE_USER_ID` for requests, `KEYSTONE_TASK` and
/// `KEYSTONE_TASK_ID` for task runs.
pub fn init_logging(config: &Config, level: Option<&str>) {
    let level = level.unwrap_or(&config.settings.logging.level);
    let directive = level_filter(level).unwrap_or("warn");
    // Dependencies speak at warn and above unless tracing is asked for.
    let filter = if directive == "debug" || directive == "trace" {
        format!("warn,keystone={directive}")
    } else {
        directive.to_string()
    };
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("warn"));
    let registry = tracing_subscriber::registry().with(filter);
    if stderr_is_journal()
        && let Ok(layer) = tracing_journald::layer()
    {
        let role = ROLE.get().copied().unwrap_or("cli");
        let layer = layer
            .with_syslog_identifier("keystone".into())
            .with_field_prefix(None)
            .with_custom_fields([("KEYSTONE_ROLE", role)]);
        let _ = registry.with(layer).try_init();
        return;
    }
    if config.settings.logging.format.eq_ignore_ascii_case("json") {
        let _ = registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(io::stderr),
            )
            .try_init();
    } else {
        let _ = registry
            .with(tracing_subscriber::fmt::layer().with_writer(io::stderr))
            .try_init();
    }
}

/// Sends a state list to systemd when `NOTIFY_SOCKET` is set; a no-op otherwise.
pub fn notify(states: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

pub fn notify_status(status: &str) {
    notify(&[sd_notify::NotifyState::Status(status)]);
}

pub fn notify_ready(status: &str) {
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

pub fn notify_stopping() {
    notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping"),
    ]);
}

/// Pings the systemd watchdog at half its interval while the returned task runs.
pub fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let interval = sd_notify::watchdog_enabled()?;
    let period = (interval / 2).max(std::time::Duration::from_millis(100));
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            notify(&[sd_notify::NotifyState::Watchdog]);
        }
    }))
}

/// A listening socket for the web role, taken from systemd or bound here.
#[derive(Debug)]
pub enum Listener {
    Tcp(std::net::TcpListener),
    Unix {
        listener: std::os::unix::net::UnixListener,
        /// Set when we created the socket file and should remove it on exit.
        path: Option<PathBuf>,
    },
}

impl Listener {
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "tcp".into()),
            Listener::Unix { listener, path } => {
                let p = path.clone().or_else(|| {
                    listener
                        .local_addr()
                        .ok()
                        .and_then(|a| a.as_pathname().map(|p| p.to_path_buf()))
                });
                match p {
                    Some(p) => format!("unix:{}", p.display()),
                    None => "unix socket".into(),
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "systemd passed {0} sockets; the web role expects exactly one stream socket (check the .socket unit)"
    )]
    TooMany(usize),
    #[error("the socket passed by systemd is neither a TCP nor a Unix stream socket")]
    WrongType,
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
}

/// Takes the socket systemd passed (`LISTEN_FDS`), else binds `addr`. Must run before the
/// tokio runtime starts other threads, because it clears the `LISTEN_*` variables.
pub fn take_listener(addr: &BindAddr) -> Result<Listener, ListenError> {
    let mut fds = listenfd::ListenFd::from_env();
    // SAFETY-free: remove_var is unsafe in edition 2024 only because of threads; we are
    // still single-threaded here (called from main before the runtime is built).
    if fds.len() > 1 {
        return Err(ListenError::TooMany(fds.len()));
    }
    if fds.len() == 1 {
        if let Ok(Some(l)) = fds.take_tcp_listener(0) {
            return Ok(Listener::Tcp(l));
        }
        if let Ok(Some(l)) = fds.take_unix_listener(0) {
            return Ok(Listener::Unix {
                listener: l,
                path: None,
            });
        }
        return Err(ListenError::WrongType);
    }
    match addr {
        BindAddr::Tcp(a) => std::net::TcpListener::bind(a.as_str())
            .map(Listener::Tcp)
            .map_err(|source| ListenError::Bind {
                addr: a.clone(),
                source,
            }),
        BindAddr::Unix(path) => {
            // A stale socket file from a previous run is replaced; anything else is kept.
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                use std::os::unix::fs::FileTypeExt;
                if meta.file_type().is_socket() {
                    let _ = std::fs::remove_file(path);
                }
            }
            std::os::unix::net::UnixListener::bind(path)
                .map(|l| Listener::Unix {
                    listener: l,
                    path: Some(path.clone()),
                })
                .map_err(|source| ListenError::Bind {
                    addr: format!("unix:{}", path.display()),
                    source,
                })
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `keystone@<hostname>:<pid>`, unique per worker process.
/// How often a serving process hands heap memory freed after a burst back to the system.
const TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// glibc keeps memory freed after a burst of requests in its per-thread arenas for reuse,
/// so a daemon would hold its peak for ever; every [`TRIM_INTERVAL`] it is returned
/// (`bench/wrk.sh` reports each role's resident memory after a load test).
pub fn spawn_memory_trim() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(TRIM_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            trim_memory();
        }
    })
}

/// Returns free heap memory to the system.
pub fn trim_memory() {
    // SAFETY: malloc_trim takes no pointers; glibc locks each arena while it trims.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

pub fn node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("keystone@{host}:{}", std::process::id())
}
