//! The beat role's schedule clock: the declared cron entries (config `[schedule]`, UTC) and
//! their next fire times.

use crate::config::{Config, parse_cron};
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// One declared schedule entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: &'static str,
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

pub fn next_fire(entry: &Entry, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    entry.cron.find_next_occurrence(&after, false).ok()
}

/// Logs each entry's next fire time as it comes round.
pub fn spawn(config: Arc<Config>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let entries = entries(&config);
        for e in &entries {
            if let Some(next) = next_fire(e, Utc::now()) {
                tracing::info!("schedule {} ({}) next fires at {next}", e.key, e.task);
            }
        }
        loop {
            let now = Utc::now();
            let Some((entry, at)) = entries
                .iter()
                .filter_map(|e| next_fire(e, now).map(|t| (e, t)))
                .min_by_key(|(_, t)| *t)
            else {
                std::future::pending::<()>().await;
                return;
            };
            let wait = (at - now).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
            tracing::info!("schedule {} is due: {}", entry.key, entry.task);
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn default_schedules_fire_at_upstream_times() {
        let config = crate::config::load(
            &crate::config::LoadOptions {
                config_path: None,
                ..Default::default()
            },
            &Default::default(),
        )
        .expect("defaults");
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
