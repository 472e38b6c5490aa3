//! The beat role (operations.md §2.1, §2.2): the declared cron entries (config `[schedule]`,
//! UTC) and the clock that enqueues each tick once. Several beat processes may run: one holds
//! the leader lease and enqueues, the others stand by; each tick also has its own guard key,
//! so a failover never enqueues a tick twice. When a beat becomes leader it catches up on an
//! entry whose most recent tick is later than its last recorded run (once, no back-fill).

use crate::config::{Config, parse_cron};
use crate::on_db;
use crate::queue::{Message, Tasks, Tick, TickOutcome};
use crate::store::Db;
use chrono::{DateTime, SubsecRound, Utc};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often a tick that could not be enqueued is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(5);

/// One declared schedule entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Setting key (`ldap_sync`).
    pub key: &'static str,
    /// Schedule entry name = task name = recorded `periodic_task_name`.
    pub task: &'static str,
    pub cron: croner::Cron,
}

/// The enabled entries (an empty expression disables one). Config validation has already
/// rejected bad expressions.
pub fn entries(config: &Config) -> Vec<Entry> {
    config
        .settings
        .schedule
        .entries()
        .into_iter()
        .filter(|(_, _, expr)| !expr.trim().is_empty())
        .filter_map(|(key, task, expr)| parse_cron(expr).ok().map(|cron| Entry { key, task, cron }))
        .collect()
}

/// The first fire time strictly after `after`. Ticks fall on whole seconds whatever the
/// sub-second part of `after`, so every beat names a tick by the same instant (its guard
/// key and recorded run).
pub fn next_fire(entry: &Entry, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    entry
        .cron
        .find_next_occurrence(&after.trunc_subsecs(0), false)
        .ok()
}

/// The most recent fire time at or before `now` (a whole second).
pub fn previous_fire(entry: &Entry, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    entry
        .cron
        .find_previous_occurrence(&now.trunc_subsecs(0), true)
        .ok()
}

/// The latest tick after `cursor` that is due at `now` (ticks missed in between, e.g. after
/// a suspend, are not back-filled).
pub fn latest_due(
    entry: &Entry,
    cursor: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let first = next_fire(entry, cursor)?;
    if first > now {
        return None;
    }
    previous_fire(entry, now)
        .filter(|t| *t >= first)
        .or(Some(first))
}

/// How long a tick's guard key lives: two periods of the entry, at least a minute, so a
/// new leader's catch-up still sees that the tick was enqueued.
pub fn guard_ttl(entry: &Entry, at: DateTime<Utc>) -> Duration {
    let period = next_fire(entry, at)
        .and_then(|n| (n - at).to_std().ok())
        .unwrap_or(Duration::from_secs(86_400));
    (period * 2).clamp(Duration::from_secs(60), Duration::from_secs(3 * 86_400))
}

/// The recorded last run of an entry.
pub async fn last_run(db: &Db, entry: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    on_db!(db, |p| sqlx::query_scalar(
        "SELECT last_run_at FROM keystone_beat_state WHERE entry = $1"
    )
    .bind(entry)
    .fetch_optional(p)
    .await)
}

async fn record_run(db: &Db, entry: &str, at: DateTime<Utc>) -> Result<(), sqlx::Error> {
    on_db!(db, |p| sqlx::query(
        "INSERT INTO keystone_beat_state (entry, last_run_at) VALUES ($1, $2) \
         ON CONFLICT (entry) DO UPDATE SET last_run_at = excluded.last_run_at"
    )
    .bind(entry)
    .bind(at)
    .execute(p)
    .await
    .map(|_| ()))
}

/// The leader lease as this process sees it.
struct Lease {
    token: String,
    /// Until when the lease is surely ours without a successful renewal.
    valid_until: Instant,
}

struct Clock {
    db: Db,
    tasks: Tasks,
    entries: Vec<Entry>,
    identity: String,
    ttl: Duration,
    lease: Option<Lease>,
    /// A tick whose every push failed, per entry: tried again every [`RETRY_EVERY`] until it
    /// is enqueued, a later tick of the same entry takes its place (no back-fill), or the
    /// lease is lost (the next leader's catch-up enqueues it: its run was never recorded).
    unsent: Vec<Option<DateTime<Utc>>>,
    /// Whether this process reports leadership changes in systemd's STATUS= line.
    report: bool,
}

/// Runs beat until `stop` turns true, then releases the lease.
pub fn spawn(
    config: Arc<Config>,
    db: Db,
    tasks: Tasks,
    stop: watch::Receiver<bool>,
    report_status: bool,
) -> tokio::task::JoinHandle<()> {
    let entries = entries(&config);
    let clock = Clock {
        db,
        tasks,
        unsent: vec![None; entries.len()],
        entries,
        identity: crate::daemon::node_id(),
        ttl: Duration::from_secs(config.settings.beat.lease.max(1)),
        lease: None,
        report: report_status,
    };
    tokio::spawn(clock.run(stop))
}

impl Clock {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let started = Utc::now();
        for e in &self.entries {
            if let Some(next) = next_fire(e, started) {
                tracing::info!("schedule {} ({}) next fires at {next}", e.key, e.task);
            }
        }
        let mut cursors = vec![started; self.entries.len()];
        let lease_every = (self.ttl / 3).max(Duration::from_millis(200));
        let mut next_lease_check = Instant::now();
        let mut next_retry = Instant::now();
        loop {
            if Instant::now() >= next_lease_check {
                self.maintain_lease().await;
                next_lease_check = Instant::now() + lease_every;
            }
            let now = Utc::now();
            let retry_now = Instant::now() >= next_retry;
            for (i, cursor) in cursors.iter_mut().enumerate() {
                let due = latest_due(&self.entries[i], *cursor, now);
                if let Some(at) = due {
                    *cursor = at;
                    self.unsent[i] = Some(at);
                }
                let Some(at) = self.unsent[i] else { continue };
                if self.lease.is_none() {
                    self.unsent[i] = None;
                } else if due.is_some() || retry_now {
                    if due.is_none() {
                        tracing::info!("schedule {} retries its tick of {at}", self.entries[i].key);
                    }
                    if self.fire(i, at).await {
                        self.unsent[i] = None;
                    }
                }
            }
            if retry_now {
                next_retry = Instant::now() + RETRY_EVERY;
            }
            let now = Utc::now();
            let next_tick = self
                .entries
                .iter()
                .zip(&cursors)
                .filter_map(|(e, c)| next_fire(e, *c))
                .min()
                .and_then(|t| (t - now).to_std().ok())
                .unwrap_or(Duration::ZERO);
            let mut wait =
                next_tick.min(next_lease_check.saturating_duration_since(Instant::now()));
            if self.unsent.iter().any(Option::is_some) {
                wait = wait.min(next_retry.saturating_duration_since(Instant::now()));
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
        }
        if let Some(lease) = self.lease.take() {
            match self.tasks.queue().release_lease(&lease.token).await {
                Ok(()) => tracing::info!("beat released the leader lease"),
                Err(e) => tracing::warn!(
                    "beat could not release the leader lease (it expires by itself): {e}"
                ),
            }
        }
    }

    fn status(&self, text: &str) {
        tracing::info!("{text}");
        if self.report {
            crate::daemon::notify_status(text);
        }
    }

    /// Renews the lease we hold, or tries to take it; on becoming leader, catches up.
    async fn maintain_lease(&mut self) {
        let queue = self.tasks.queue().clone();
        if let Some(lease) = &mut self.lease {
            match queue.renew_lease(&lease.token, self.ttl).await {
                Ok(true) => lease.valid_until = Instant::now() + self.ttl,
                Ok(false) => {
                    self.lease = None;
                    self.status("beat: standby (the leader lease passed to another beat)");
                }
                Err(e) => {
                    tracing::warn!("beat cannot renew the leader lease: {e}");
                    if Instant::now() >= lease.valid_until {
                        self.lease = None;
                        self.status("beat: standby (leader lease expired)");
                    }
                }
            }
            return;
        }
        match queue.acquire_lease(&self.identity, self.ttl).await {
            Ok(Some(token)) => {
                let epoch = token.rsplit('#').next().unwrap_or_default().to_string();
                self.lease = Some(Lease {
                    token,
                    valid_until: Instant::now() + self.ttl,
                });
                self.status(&format!("beat: leader (epoch {epoch})"));
                self.catch_up().await;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("beat cannot reach the broker for the leader lease: {e}"),
        }
    }

    /// Enqueues, once, each entry whose most recent tick is later than its recorded last
    /// run; entries never run wait for their next tick.
    async fn catch_up(&mut self) {
        let now = Utc::now();
        for i in 0..self.entries.len() {
            let entry = &self.entries[i];
            let Some(prev) = previous_fire(entry, now) else {
                continue;
            };
            match last_run(&self.db, entry.task).await {
                Ok(Some(last)) if prev > last => {
                    tracing::info!(
                        "schedule {} missed its run at {prev} (last run {last}); enqueuing it now",
                        entry.key
                    );
                    if !self.fire(i, prev).await && self.lease.is_some() {
                        self.unsent[i] = Some(prev);
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("beat cannot read the last run of {}: {e}", entry.key),
            }
        }
    }

    /// Enqueues one tick under our lease. False when every push failed: the tick is still
    /// to be enqueued.
    async fn fire(&mut self, i: usize, at: DateTime<Utc>) -> bool {
        let Some(lease) = &self.lease else {
            return false;
        };
        let entry = &self.entries[i];
        let mut msg = Message::new(entry.task, Vec::new());
        msg.periodic = Some(entry.task.to_string());
        msg.scheduled_for = Some(at);
        let tick = Tick {
            entry: entry.task,
            at,
            lease: &lease.token,
            guard_ttl: guard_ttl(entry, at),
        };
        let mut outcome = Err(crate::queue::BrokerError::Other("not tried".into()));
        for wait in [1u64, 2, 0] {
            outcome = self.tasks.queue().push_tick(&msg, &tick).await;
            match &outcome {
                Err(e) if wait > 0 => {
                    tracing::warn!(
                        "beat cannot enqueue {} ({e}); retrying in {wait}s",
                        entry.key
                    );
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                }
                _ => break,
            }
        }
        match outcome {
            Ok(TickOutcome::Enqueued) => {
                tracing::info!(task_id = %msg.id, "schedule {} fired for {at}: {}", entry.key, entry.task);
                self.tasks.record_pending(&msg).await;
                self.remember(i, at).await;
                true
            }
            Ok(TickOutcome::AlreadyEnqueued) => {
                tracing::debug!("schedule {} tick {at} was already enqueued", entry.key);
                self.remember(i, at).await;
                true
            }
            Ok(TickOutcome::NotLeader) => {
                self.lease = None;
                self.status("beat: standby (the leader lease is no longer ours)");
                false
            }
            Err(e) => {
                tracing::error!(
                    "beat could not enqueue {} for {at}: {e}; trying again every {}s",
                    entry.key,
                    RETRY_EVERY.as_secs()
                );
                false
            }
        }
    }

    async fn remember(&self, i: usize, at: DateTime<Utc>) {
        let entry = &self.entries[i];
        if let Err(e) = record_run(&self.db, entry.task, at).await {
            tracing::warn!("beat cannot record the run of {}: {e}", entry.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn default_schedules_fire_at_upstream_times() {
        let config = crate::config::built_in();
        let all = entries(&config);
        assert_eq!(all.len(), 5);
        let at = Utc
            .with_ymd_and_hms(2026, 11, 26, 10, 7, 0)
            .single()
            .expect("time");
        let ldap = all.iter().find(|e| e.key == "ldap_sync").expect("ldap");
        assert_eq!(
            next_fire(ldap, at),
            Utc.with_ymd_and_hms(2026, 11, 26, 10, 15, 0).single()
        );
        assert_eq!(
            previous_fire(ldap, at),
            Utc.with_ymd_and_hms(2026, 11, 26, 10, 0, 0).single()
        );
        // Ticks missed while suspended are not back-filled: only the latest is due.
        let cursor = Utc
            .with_ymd_and_hms(2026, 11, 26, 9, 0, 0)
            .single()
            .expect("time");
        assert_eq!(
            latest_due(ldap, cursor, at),
            Utc.with_ymd_and_hms(2026, 11, 26, 10, 0, 0).single()
        );
        assert_eq!(latest_due(ldap, at, at), None);
        // Two beats started at different fractions of a second name the same tick.
        let a = at + chrono::Duration::milliseconds(57);
        let b = at + chrono::Duration::milliseconds(444);
        assert_eq!(next_fire(ldap, a), next_fire(ldap, b));
        assert_eq!(
            previous_fire(ldap, a + chrono::Duration::minutes(9)),
            Utc.with_ymd_and_hms(2026, 11, 26, 10, 15, 0).single()
        );
        assert_eq!(
            latest_due(ldap, a, b + chrono::Duration::minutes(9)),
            next_fire(ldap, b)
        );
        assert_eq!(guard_ttl(ldap, at), std::time::Duration::from_secs(60 * 16));
        let upcoming = all
            .iter()
            .find(|e| e.key == "upcoming_expirations")
            .expect("upcoming");
        assert_eq!(
            next_fire(upcoming, at),
            Utc.with_ymd_and_hms(2026, 11, 27, 0, 0, 0).single()
        );
    }
}
