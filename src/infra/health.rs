//! Health checks behind `/health/*` (spec/operations.md §3.7): SMTP, database, storage,
//! Redis and worker liveness, run concurrently and cached so only one refresh runs at a time.

use crate::config::Config;
use crate::on_db;
use crate::store::Db;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CheckResult {
    pub check: String,
    pub healthy: bool,
    pub error: Option<String>,
    pub time_taken: f64,
}

const UNKNOWN: &str = "Unknown Error: unknown error";

/// Runs the checks; shared by the web role and `keystone health --direct`.
pub struct HealthChecker {
    config: Arc<Config>,
    db: Db,
    cache: Mutex<Option<(Instant, Vec<CheckResult>)>>,
}

impl HealthChecker {
    pub fn new(config: Arc<Config>, db: Db) -> Self {
        HealthChecker {
            config,
            db,
            cache: Mutex::new(None),
        }
    }

    /// Cached results, refreshed when older than `health.cache_seconds`. Concurrent callers
    /// wait for the one refresh in progress.
    pub async fn results(&self) -> Vec<CheckResult> {
        let max_age = Duration::from_secs(self.config.settings.health.cache_seconds);
        let mut cache = self.cache.lock().await;
        if let Some((at, results)) = cache.as_ref()
            && at.elapsed() < max_age
        {
            return results.clone();
        }
        let results = self.run().await;
        *cache = Some((Instant::now(), results.clone()));
        results
    }

    pub async fn run(&self) -> Vec<CheckResult> {
        let redis = async {
            match self.config.redis_url() {
                Some(url) => Some(timed("Redis", check_redis(&url)).await),
                None => None,
            }
        };
        let ldap = async {
            let settings = &self.config.settings.ldap;
            if crate::infra::ldap::enabled(settings) {
                Some(timed("LDAP", crate::infra::ldap::health_check(settings)).await)
            } else {
                None
            }
        };
        let (smtp, database, storage, redis, celery, ldap) = tokio::join!(
            timed("SMTP", check_smtp(&self.config)),
            timed("Database", check_database(&self.db)),
            timed("Storage", check_storage(&self.config)),
            redis,
            timed("Celery", check_workers(&self.config, &self.db)),
            ldap,
        );
        let mut out = vec![smtp, database, storage];
        out.extend(redis);
        out.push(celery);
        out.extend(ldap);
        out
    }
}

async fn timed<F>(name: &str, check: F) -> CheckResult
where
    F: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    let outcome = check.await;
    CheckResult {
        check: name.to_string(),
        healthy: outcome.is_ok(),
        error: outcome.err(),
        time_taken: start.elapsed().as_secs_f64(),
    }
}

async fn check_smtp(config: &Config) -> Result<(), String> {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, Tokio1Executor};
    let e = &config.settings.email;
    if let Some(dir) = &e.debug_dir {
        // Debug delivery writes files instead of talking SMTP (upstream's file backend):
        // the check is whether a delivery could write one, no SMTP server is dialled.
        let dir = config.path(dir);
        return match crate::infra::mail::check_debug_dir(&dir).await {
            Ok(()) => Ok(()),
            Err(err) => {
                tracing::warn!(
                    "health: debug mail directory {} is not writable: {err}",
                    dir.display()
                );
                Err("Unavailable: Failed to open connection with SMTP server".into())
            }
        };
    }
    let builder = if e.use_ssl {
        AsyncSmtpTransport::<Tokio1Executor>::relay(&e.host)
    } else if e.use_tls {
        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&e.host)
    } else {
        Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
            &e.host,
        ))
    };
    let mut builder = match builder {
        Ok(b) => b.port(e.port).timeout(Some(Duration::from_secs(15))),
        Err(err) => {
            tracing::warn!("health: SMTP setup failed: {err}");
            return Err(UNKNOWN.into());
        }
    };
    if !e.user.is_empty() {
        builder = builder.credentials(Credentials::new(e.user.clone(), e.password.clone()));
    }
    match builder.build::<Tokio1Executor>().test_connection().await {
        Ok(true) => Ok(()),
        Ok(false) => Err("Unavailable: Failed to open connection with SMTP server".into()),
        Err(err) => {
            let refused = std::error::Error::source(&err)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .map(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
                .unwrap_or(false)
                || err.to_string().contains("Connection refused");
            if refused {
                Err("Unavailable: Connection refused error".into())
            } else if err.is_permanent() || err.is_transient() || err.is_response() {
                Err("Unavailable: Failed to open connection with SMTP server".into())
            } else {
                tracing::info!("health: SMTP check failed: {err}");
                Err(UNKNOWN.into())
            }
        }
    }
}

async fn check_database(db: &Db) -> Result<(), String> {
    match db.ping().await {
        Ok(()) => Ok(()),
        Err(crate::store::DbError::Schema(m)) => Err(format!("Unavailable: {m}")),
        Err(err) => {
            let text = err.to_string();
            let first = text
                .trim_start_matches("database error: ")
                .split(':')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            Err(format!("Unavailable: {first}"))
        }
    }
}

async fn check_storage(config: &Config) -> Result<(), String> {
    let dir = config.upload_dir().join("health_check_storage_test");
    let file = dir.join(format!("test-{}.txt", uuid::Uuid::new_v4()));
    let content = b"this is a health check test file\n";
    let io = |err: std::io::Error| {
        tracing::warn!("health: storage check in {} failed: {err}", dir.display());
        UNKNOWN.to_string()
    };
    tokio::fs::create_dir_all(&dir).await.map_err(io)?;
    tokio::fs::write(&file, content).await.map_err(io)?;
    match tokio::fs::read(&file).await {
        Ok(read) if read == content => {}
        Ok(_) => {
            let _ = tokio::fs::remove_file(&file).await;
            return Err("Unavailable: File content does not match".into());
        }
        Err(_) => return Err("Unavailable: File does not exist".into()),
    }
    tokio::fs::remove_file(&file).await.map_err(io)?;
    if tokio::fs::try_exists(&file).await.unwrap_or(true) {
        return Err("Unavailable: File was not deleted".into());
    }
    let _ = tokio::fs::remove_dir(&dir).await;
    Ok(())
}

pub async fn check_redis(url: &str) -> Result<(), String> {
    use fred::prelude::*;
    let prefix = "Unavailable: Unable to connect to Redis";
    let config = Config::from_url(url).map_err(|_| format!("{prefix}: Connection Error"))?;
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(3);
            c.internal_command_timeout = Duration::from_secs(3);
        })
        .with_performance_config(|p| {
            p.default_command_timeout = Duration::from_secs(3);
        })
        .build()
        .map_err(|_| format!("{prefix}: Connection Error"))?;
    let outcome = async {
        client.init().await?;
        client.ping::<String>(None).await
    };
    let result = tokio::time::timeout(Duration::from_secs(5), outcome).await;
    let _ = client.quit().await;
    match result {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => {
            let details = err.details().to_lowercase();
            if details.contains("refused") {
                Err(format!("{prefix}: Connection was refused."))
            } else if matches!(err.kind(), ErrorKind::Timeout) {
                Err(format!("{prefix}: Timeout."))
            } else {
                Err(format!("{prefix}: Connection Error"))
            }
        }
        Err(_) => Err(format!("{prefix}: Timeout.")),
    }
}

/// At least one worker heartbeat younger than three heartbeat intervals.
async fn check_workers(config: &Config, db: &Db) -> Result<(), String> {
    let cutoff =
        chrono::Utc::now() - chrono::Duration::seconds(3 * config.settings.worker.heartbeat as i64);
    let live: Result<i64, sqlx::Error> = on_db!(db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM keystone_worker_heartbeat WHERE seen_at > $1"
    )
    .bind(cutoff)
    .fetch_one(p)
    .await);
    match live {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err("Unavailable: Celery workers unavailable".into()),
        Err(err) => {
            tracing::warn!("health: worker heartbeat lookup failed: {err}");
            Err("Unavailable: Celery workers unavailable".into())
        }
    }
}

/// The byte-exact Prometheus body of `/health/prom/`.
pub fn prometheus(results: &[CheckResult]) -> String {
    let mut out = String::from(
        "# HELP keystone_health_check_status Health check status (200 = healthy, 500 = unhealthy)\n# TYPE keystone_health_check_status gauge\n",
    );
    for r in results {
        let v = if r.healthy { "200.0" } else { "500.0" };
        out.push_str(&format!(
            "keystone_health_check_status{{check=\"{}\"}} {v}\n",
            r.check
        ));
    }
    out.push_str("\n# HELP keystone_health_check_eval_time_seconds Health check evaluation time in seconds\n# TYPE keystone_health_check_eval_time_seconds gauge\n");
    for r in results {
        out.push_str(&format!(
            "keystone_health_check_eval_time_seconds{{check=\"{}\"}} {:.6}\n",
            r.check, r.time_taken
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_body_matches_the_spec_layout() {
        let results = vec![
            CheckResult {
                check: "Storage".into(),
                healthy: true,
                error: None,
                time_taken: 0.012,
            },
            CheckResult {
                check: "Celery".into(),
                healthy: false,
                error: Some("Unavailable: Celery workers unavailable".into()),
                time_taken: 1.001,
            },
        ];
        let expected = "# HELP keystone_health_check_status Health check status (200 = healthy, 500 = unhealthy)
# TYPE keystone_health_check_status gauge
keystone_health_check_status{check=\"Storage\"} 200.0
keystone_health_check_status{check=\"Celery\"} 500.0

# HELP keystone_health_check_eval_time_seconds Health check evaluation time in seconds
# TYPE keystone_health_check_eval_time_seconds gauge
keystone_health_check_eval_time_seconds{check=\"Storage\"} 0.012000
keystone_health_check_eval_time_seconds{check=\"Celery\"} 1.001000
";
        assert_eq!(prometheus(&results), expected);
    }
}
