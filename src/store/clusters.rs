//! Cluster lookups other records' rules need.

use crate::on_db;
use crate::store::{Db, DbError};

/// Whether team `team_id` may use cluster `cluster_id` (domain.md §3.5.1: open, whitelisted
/// with the team on its list, or blacklisted without it); `None` when there is no such
/// cluster.
pub async fn usable_by(db: &Db, cluster_id: i64, team_id: i64) -> Result<Option<bool>, DbError> {
    let found: Option<(String, i64)> = on_db!(db, |p| sqlx::query_as(
        "SELECT c.access_mode, (SELECT COUNT(*) FROM allocations_cluster_access_teams a \
         WHERE a.cluster_id = c.id AND a.team_id = $2) FROM allocations_cluster c WHERE c.id = $1"
    )
    .bind(cluster_id)
    .bind(team_id)
    .fetch_optional(p)
    .await)?;
    Ok(found.map(|(mode, listed)| crate::domain::policy::cluster_usable(&mode, listed > 0)))
}
