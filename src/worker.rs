//! The worker role's liveness record: a heartbeat row the `Celery` health check reads.

use crate::db::Db;
use crate::on_db;
use chrono::Utc;
use std::time::Duration;

pub struct Heartbeat {
    db: Db,
    worker: String,
    role: String,
    started: chrono::DateTime<Utc>,
}

/// `keystone@<hostname>:<pid>`, unique per worker process.
pub fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("keystone@{host}:{}", std::process::id())
}

impl Heartbeat {
    pub fn new(db: Db, role: &str) -> Self {
        Heartbeat {
            db,
            worker: identity(),
            role: role.to_string(),
            started: Utc::now(),
        }
    }

    /// Records that this worker is alive now.
    pub async fn beat(&self) -> Result<(), sqlx::Error> {
        on_db!(&self.db, |p| sqlx::query(
            "INSERT INTO keystone_worker_heartbeat (worker, role, started_at, seen_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (worker) DO UPDATE SET seen_at = excluded.seen_at"
        )
        .bind(&self.worker)
        .bind(&self.role)
        .bind(self.started)
        .bind(Utc::now())
        .execute(p)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// Beats every `interval` until aborted; a failed beat is logged and retried next time.
    pub fn spawn(self, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                if let Err(e) = self.beat().await {
                    tracing::warn!("worker heartbeat failed: {e}");
                }
            }
        })
    }

    /// Removes this worker's row on a clean stop, so health reflects it at once.
    pub async fn remove(&self) {
        let r = on_db!(&self.db, |p| sqlx::query(
            "DELETE FROM keystone_worker_heartbeat WHERE worker = $1"
        )
        .bind(&self.worker)
        .execute(p)
        .await
        .map(|_| ()));
        if let Err(e) = r {
            tracing::warn!("cannot remove the worker heartbeat: {e}");
        }
    }
}
