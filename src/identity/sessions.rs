//! Session revocation (logout). The database table is the record every web process shares,
//! and it alone decides whether a session was revoked: a lookup that any store could forget
//! (Redis flushed, evicted or restarted without persistence) would bring a logged-out
//! session back to life. The per-request check is one primary-key lookup; entries are
//! dropped once the session they name has expired.

use crate::store::{Db, DbError, users};
use chrono::{DateTime, Utc};

pub struct Revocations {
    db: Db,
}

impl Revocations {
    pub fn new(db: Db) -> Revocations {
        Revocations { db }
    }

    /// The same revocation store, writing its rows through `db` (a batch's transaction).
    pub fn on(&self, db: Db) -> Revocations {
        Revocations { db }
    }

    pub async fn revoke(&self, jti: &str, expires_at: DateTime<Utc>) -> Result<(), DbError> {
        users::revoke_session(&self.db, jti, expires_at).await
    }

    pub async fn is_revoked(&self, jti: &str) -> Result<bool, DbError> {
        users::session_revoked(&self.db, jti).await
    }
}
