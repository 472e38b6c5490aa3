//! Session revocation (logout). The table is the durable record every web process shares;
//! with Redis configured each revoked session id is also kept there (expiring with the
//! session) so the per-request check is one Redis lookup, falling back to the table when
//! Redis does not answer.

use crate::db::{Db, DbError, users};
use chrono::{DateTime, Utc};
use fred::prelude::*;
use std::time::Duration;

pub struct Revocations {
    db: Db,
    redis: Option<Client>,
}

fn key(jti: &str) -> String {
    format!("keystone:revoked-session:{jti}")
}

impl Revocations {
    /// The same revocation store, writing its rows through `db` (a batch's transaction).
    pub fn on(&self, db: Db) -> Revocations {
        Revocations {
            db,
            redis: self.redis.clone(),
        }
    }

    /// Connects to Redis when a URL is given; without one (or when it is down) the table
    /// alone is used.
    pub async fn connect(db: Db, redis_url: Option<String>) -> Revocations {
        let redis = match redis_url {
            None => None,
            Some(url) => {
                let client = Config::from_url(&url).ok().and_then(|config| {
                    Builder::from_config(config)
                        .with_connection_config(|c| {
                            c.connection_timeout = Duration::from_secs(3);
                        })
                        .with_performance_config(|p| {
                            p.default_command_timeout = Duration::from_secs(2);
                        })
                        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
                        .build()
                        .ok()
                });
                match client {
                    Some(c) => match tokio::time::timeout(Duration::from_secs(5), c.init()).await {
                        Ok(Ok(_)) => Some(c),
                        _ => {
                            tracing::warn!(
                                "session revocation: Redis unreachable, using the database only"
                            );
                            None
                        }
                    },
                    None => None,
                }
            }
        };
        Revocations { db, redis }
    }

    pub fn uses_redis(&self) -> bool {
        self.redis.is_some()
    }

    pub async fn revoke(&self, jti: &str, expires_at: DateTime<Utc>) -> Result<(), DbError> {
        users::revoke_session(&self.db, jti, expires_at).await?;
        if let Some(r) = &self.redis {
            let ttl = (expires_at - Utc::now()).num_seconds().max(1);
            let set: Result<(), Error> = r
                .set(key(jti), "1", Some(Expiration::EX(ttl)), None, false)
                .await;
            if let Err(e) = set {
                tracing::warn!(
                    "session revocation: Redis write failed ({e}); the database still has it"
                );
            }
        }
        Ok(())
    }

    pub async fn is_revoked(&self, jti: &str) -> Result<bool, DbError> {
        if let Some(r) = &self.redis {
            let found: Result<i64, Error> = r.exists(key(jti)).await;
            match found {
                Ok(n) => return Ok(n > 0),
                Err(e) => tracing::warn!(
                    "session revocation: Redis lookup failed ({e}); asking the database"
                ),
            }
        }
        users::session_revoked(&self.db, jti).await
    }
}
