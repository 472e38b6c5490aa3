//! Slurm limit enforcement (operations.md §2.7): one sub-task per enabled cluster sets each
//! team account's `billing` limit from its approved allocations and Slurm's usage, and writes
//! the `final` usage of allocations that have expired. The arithmetic is [`plan`]; the
//! commands are [`crate::infra::slurm`].

use super::{TaskContext, TaskError, UPDATE_LIMITS_CLUSTER};
use crate::infra::slurm::{Slurm, SlurmError};
use crate::on_db;
use crate::store::{Db, DbError};
use chrono::{NaiveDate, Utc};
use sea_query::{Alias, Expr, Query};
use std::collections::{BTreeSet, HashMap};

/// `update_limits` (§2.7.1): enqueues `update_limits_for_cluster(name)` for every enabled
/// cluster.
pub async fn update_limits(ctx: &TaskContext) -> Result<(), TaskError> {
    let names: Vec<String> = on_db!(&ctx.db, |p| {
        sqlx::query_scalar("SELECT name FROM allocations_cluster WHERE enabled = $1 ORDER BY id")
            .bind(true)
            .fetch_all(p)
            .await
    })?;
    for name in names {
        ctx.spawn(UPDATE_LIMITS_CLUSTER, vec![serde_json::Value::String(name)])
            .await?;
    }
    Ok(())
}

/// `update_limits_for_cluster(cluster_name)` (§2.7.2). A failure of the account listing
/// fails the run; a failure for one account is logged, recorded in the run's
/// `meta.errors`, and the next account is processed.
pub async fn update_limits_for_cluster(
    ctx: &TaskContext,
    cluster_name: &str,
) -> Result<(), TaskError> {
    let cluster_id: Option<i64> = on_db!(&ctx.db, |p| {
        sqlx::query_scalar("SELECT id FROM allocations_cluster WHERE name = $1")
            .bind(cluster_name)
            .fetch_optional(p)
            .await
    })?;
    let Some(cluster_id) = cluster_id else {
        tracing::error!("Cluster '{cluster_name}' does not exist.");
        return Ok(());
    };
    let cluster = Cluster {
        id: cluster_id,
        name: cluster_name,
    };
    let slurm = Slurm::new(&ctx.config.settings.slurm);
    let accounts = slurm
        .accounts(cluster_name)
        .await
        .map_err(|e| TaskError::new("RuntimeError", "builtins", e.to_string()))?;
    let teams = teams_by_slug(&ctx.db, &accounts).await?;
    let today = Utc::now()
        .with_timezone(&ctx.config.timezone())
        .date_naive();

    for account in &accounts {
        if account == "root" {
            continue;
        }
        let Some(team) = teams.get(account) else {
            tracing::warn!("No existing team for account '{account}' on cluster '{cluster_name}'.");
            continue;
        };
        if let Err(e) = update_account(&ctx.db, &slurm, team, &cluster, today).await {
            let message = format!(
                "Failed to update limit for account '{account}' on cluster '{cluster_name}': {e}"
            );
            tracing::error!("{message}");
            ctx.record_error(message);
        }
    }

    // Not in the upstream task: a team that holds allocations on this cluster but has no
    // Slurm account there is never visited by the loop above, so say so.
    match teams_holding_allocations(&ctx.db, cluster_id, today).await {
        Ok(slugs) => {
            for slug in slugs.difference(&accounts) {
                let message = format!(
                    "Team '{slug}' has allocations on cluster '{cluster_name}' but no Slurm account there; its limit was not set."
                );
                tracing::warn!("{message}");
                ctx.record_error(message);
            }
        }
        Err(e) => tracing::warn!(
            "Cannot list the teams holding allocations on cluster '{cluster_name}': {e}"
        ),
    }
    Ok(())
}

struct Cluster<'a> {
    id: i64,
    name: &'a str,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct Team {
    id: i64,
    slug: String,
    is_active: bool,
}

/// Teams whose slug is one of `accounts`, active or not.
async fn teams_by_slug(
    db: &Db,
    accounts: &BTreeSet<String>,
) -> Result<HashMap<String, Team>, DbError> {
    use sea_query::ExprTrait;
    if accounts.is_empty() {
        return Ok(HashMap::new());
    }
    let mut q = Query::select();
    q.columns(["id", "slug", "is_active"].map(Alias::new))
        .from(Alias::new("users_team"))
        .and_where(Expr::col(Alias::new("slug")).is_in(accounts.iter().cloned()));
    let rows: Vec<Team> = crate::store::fetch_all(db, &q).await?;
    Ok(rows.into_iter().map(|t| (t.slug.clone(), t)).collect())
}

/// A resource allocation of an approved request on a cluster, with its team's slug.
#[derive(Debug, Clone, sqlx::FromRow)]
struct AllocationRow {
    id: i64,
    slug: String,
    awarded: Option<i32>,
    final_value: Option<i32>,
    active: Option<NaiveDate>,
    expire: Option<NaiveDate>,
}

impl AllocationRow {
    fn allocation(&self) -> Allocation {
        Allocation {
            id: self.id,
            awarded: self.awarded.map(i64::from),
            final_value: self.final_value.map(i64::from),
            active: self.active,
            expire: self.expire,
        }
    }
}

/// Slugs of teams whose approved allocations on the cluster are active or awaiting a final
/// value today.
async fn teams_holding_allocations(
    db: &Db,
    cluster_id: i64,
    today: NaiveDate,
) -> Result<BTreeSet<String>, DbError> {
    let rows: Vec<AllocationRow> = on_db!(db, |p| {
        sqlx::query_as(
            "SELECT ra.id, t.slug, ra.awarded, ra.final AS final_value, r.active, r.expire \
             FROM allocations_resourceallocation ra \
             JOIN allocations_allocationrequest r ON r.id = ra.request_id \
             JOIN users_team t ON t.id = r.team_id \
             WHERE ra.cluster_id = $1 AND r.status = 'AP'",
        )
        .bind(cluster_id)
        .fetch_all(p)
        .await
    })?;
    Ok(rows
        .into_iter()
        .filter(|row| {
            let a = row.allocation();
            a.is_active_on(today) || a.is_expiring_on(today)
        })
        .map(|row| row.slug)
        .collect())
}

/// Why one account could not be updated.
#[derive(Debug, thiserror::Error)]
enum AccountError {
    #[error("{0}")]
    Slurm(#[from] SlurmError),
    #[error("{0}")]
    Db(#[from] DbError),
    #[error("{0}")]
    Data(String),
}

impl From<sqlx::Error> for AccountError {
    fn from(e: sqlx::Error) -> Self {
        AccountError::Db(DbError::Query(e))
    }
}

/// §2.7.3 for one team on one cluster: read, compute, write finals, write the limit.
async fn update_account(
    db: &Db,
    slurm: &Slurm,
    team: &Team,
    cluster: &Cluster<'_>,
    today: NaiveDate,
) -> Result<(), AccountError> {
    let rows: Vec<AllocationRow> = on_db!(db, |p| {
        sqlx::query_as(
            "SELECT ra.id, t.slug, ra.awarded, ra.final AS final_value, r.active, r.expire \
             FROM allocations_resourceallocation ra \
             JOIN allocations_allocationrequest r ON r.id = ra.request_id \
             JOIN users_team t ON t.id = r.team_id \
             WHERE ra.cluster_id = $1 AND r.team_id = $2 AND r.status = 'AP' \
             ORDER BY ra.id",
        )
        .bind(cluster.id)
        .bind(team.id)
        .fetch_all(p)
        .await
    })?;
    let allocations: Vec<Allocation> = rows.iter().map(AllocationRow::allocation).collect();

    let current_limit = slurm.limit(&team.slug, cluster.name).await?;
    let total_usage = slurm.usage(&team.slug, cluster.name).await?;
    let plan = plan(
        &allocations,
        today,
        team.is_active,
        current_limit,
        total_usage,
    )
    .map_err(AccountError::Data)?;
    for warning in &plan.warnings {
        tracing::warn!(
            "Account '{}' on cluster '{}': {warning}",
            team.slug,
            cluster.name
        );
    }
    save_finals(db, &plan.finals).await?;
    slurm
        .set_limit(&team.slug, cluster.name, plan.limit)
        .await?;
    tracing::debug!(
        "Setting new TRES limit for account '{}' on cluster '{}': {} -> {}",
        team.slug,
        cluster.name,
        current_limit,
        plan.limit
    );
    Ok(())
}

/// Writes all the new `final` values in one statement.
async fn save_finals(db: &Db, finals: &[(i64, i64)]) -> Result<(), AccountError> {
    if finals.is_empty() {
        return Ok(());
    }
    let mut values = Vec::with_capacity(finals.len());
    for &(id, value) in finals {
        let value = i32::try_from(value).map_err(|_| {
            AccountError::Data(format!(
                "final value {value} of allocation {id} is out of range"
            ))
        })?;
        values.push((id, value));
    }
    let n = values.len();
    let cases: String = (0..n)
        .map(|i| format!(" WHEN ${} THEN ${}", 2 * i + 1, 2 * i + 2))
        .collect();
    let ids: Vec<String> = (0..n).map(|i| format!("${}", 2 * n + i + 1)).collect();
    // Only placeholders are pasted into the text; every value is bound.
    let sql = format!(
        "UPDATE allocations_resourceallocation SET final = CASE id{cases} END WHERE id IN ({})",
        ids.join(", ")
    );
    on_db!(db, |p| {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
        for (id, value) in &values {
            q = q.bind(*id).bind(*value);
        }
        for (id, _) in &values {
            q = q.bind(*id);
        }
        q.execute(p).await.map(|_| ())
    })?;
    Ok(())
}

/// One resource allocation of an approved request, with its request's dates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub id: i64,
    pub awarded: Option<i64>,
    pub final_value: Option<i64>,
    pub active: Option<NaiveDate>,
    pub expire: Option<NaiveDate>,
}

impl Allocation {
    /// In the active set: active on or before today and not yet expired.
    pub fn is_active_on(&self, today: NaiveDate) -> bool {
        matches!(self.active, Some(a) if a <= today) && self.expire.is_none_or(|e| e > today)
    }

    /// Expired on or before today (whatever its `active` date).
    pub fn has_expired_on(&self, today: NaiveDate) -> bool {
        matches!(self.expire, Some(e) if e <= today)
    }

    /// In the expiring set: expired and still without a final value.
    pub fn is_expiring_on(&self, today: NaiveDate) -> bool {
        self.final_value.is_none() && self.has_expired_on(today)
    }
}

/// What to write for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The new `billing` limit in SU-hours.
    pub limit: i64,
    /// New `final` values: (allocation id, value).
    pub finals: Vec<(i64, i64)>,
    /// Inconsistencies worth a WARNING in the log.
    pub warnings: Vec<String>,
}

/// The §2.7.3 arithmetic for one team on one cluster, given its approved allocations there,
/// Slurm's current limit and total usage (SU-hours). Fails, before anything is written, when
/// an allocation awaiting its final value has no awarded amount.
pub fn plan(
    allocations: &[Allocation],
    today: NaiveDate,
    team_is_active: bool,
    current_limit: i64,
    total_usage: i64,
) -> Result<Plan, String> {
    let mut warnings = Vec::new();
    let active_sus: i64 = allocations
        .iter()
        .filter(|a| a.is_active_on(today))
        .filter_map(|a| a.awarded)
        .sum();
    let mut expiring: Vec<&Allocation> = allocations
        .iter()
        .filter(|a| a.is_expiring_on(today))
        .collect();
    expiring.sort_by_key(|a| (a.expire, a.id));
    let expiring_sus: i64 = expiring.iter().filter_map(|a| a.awarded).sum();

    let mut historical = current_limit - active_sus - expiring_sus;
    if historical < 0 {
        warnings.push(format!(
            "negative historical usage: current limit {current_limit}, active SUs {active_sus}, expiring SUs {expiring_sus}, historical usage {historical}; assuming zero"
        ));
        historical = 0;
    }

    let mut current_usage = total_usage - historical;
    if current_usage < 0 {
        warnings.push(format!(
            "negative current usage: total usage {total_usage}, historical usage {historical}, current usage {current_usage}; using the historical usage {historical}"
        ));
        current_usage = historical;
    }

    if !team_is_active {
        // An inactive team is locked at its current usage; expiring allocations keep no final.
        return Ok(Plan {
            limit: current_usage,
            finals: Vec::new(),
            warnings,
        });
    }

    let mut finals = Vec::with_capacity(expiring.len());
    for a in &expiring {
        let awarded = a.awarded.ok_or_else(|| {
            format!(
                "allocation {} has expired but has no awarded amount, so its final usage cannot be set",
                a.id
            )
        })?;
        let value = current_usage.min(awarded);
        current_usage -= value;
        finals.push((a.id, value));
    }

    if current_usage > active_sus {
        warnings.push(format!(
            "usage exceeds its limit: current usage {current_usage}, active SUs {active_sus}"
        ));
    }

    let new_finals: HashMap<i64, i64> = finals.iter().copied().collect();
    let finals_sum: i64 = allocations
        .iter()
        .filter(|a| a.has_expired_on(today))
        .filter_map(|a| new_finals.get(&a.id).copied().or(a.final_value))
        .sum();
    Ok(Plan {
        limit: finals_sum + active_sus,
        finals,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2025, 6, 15).expect("date")
    }

    /// (awarded, final, active offset, expire offset) in days from today.
    fn alloc(
        id: i64,
        awarded: i64,
        final_value: Option<i64>,
        active: i64,
        expire: i64,
    ) -> Allocation {
        Allocation {
            id,
            awarded: Some(awarded),
            final_value,
            active: Some(today() + chrono::Duration::days(active)),
            expire: Some(today() + chrono::Duration::days(expire)),
        }
    }

    /// Runs one worked example of §2.7.3 and returns (limit, finals).
    fn run(allocs: &[Allocation], active: bool, limit: i64, usage: i64) -> (i64, Vec<(i64, i64)>) {
        let p = plan(allocs, today(), active, limit, usage).expect("plan");
        (p.limit, p.finals)
    }

    #[test]
    fn worked_examples_of_the_spec() {
        // 1
        assert_eq!(run(&[], true, 0, 0), (0, vec![]));
        // 2
        let a = [
            alloc(1, 200, Some(50), -400, -35),
            alloc(2, 300, None, -30, 335),
        ];
        assert_eq!(run(&a, true, 50, 200), (350, vec![]));
        // 3 and 4
        let a = [
            alloc(1, 500, None, -400, -10),
            alloc(2, 1000, None, -30, 335),
        ];
        assert_eq!(run(&a, true, 1500, 350), (1350, vec![(1, 350)]));
        assert_eq!(run(&a, true, 1500, 500), (1500, vec![(1, 500)]));
        // 5
        let a = [
            alloc(1, 100, None, -400, -35),
            alloc(2, 300, None, -30, 335),
        ];
        assert_eq!(run(&a, true, 500, 500), (400, vec![(1, 100)]));
        // 6: greedy by expiry, later ones may get 0
        let a = [
            alloc(1, 200, Some(100), -400, -40),
            alloc(4, 100, None, -400, -10),
            alloc(2, 100, None, -400, -30),
            alloc(3, 100, None, -400, -20),
            alloc(5, 100, None, -30, 400),
        ];
        assert_eq!(
            run(&a, true, 500, 250),
            (350, vec![(2, 100), (3, 50), (4, 0)])
        );
        // 7
        let a = [
            alloc(1, 200, None, -400, -30),
            alloc(2, 300, None, -400, -20),
            alloc(3, 1000, None, -30, 335),
        ];
        assert_eq!(run(&a, true, 1500, 800), (1500, vec![(1, 200), (2, 300)]));
        // 8
        let a = [
            alloc(1, 500, None, -400, -30),
            alloc(2, 1000, None, -30, 335),
        ];
        assert_eq!(run(&a, true, 1500, 0), (1000, vec![(1, 0)]));
        // 9
        let a = [alloc(1, 500, None, -400, -30)];
        assert_eq!(run(&a, true, 500, 300), (300, vec![(1, 300)]));
        // 10: historical clamped to 0
        let a = [alloc(1, 50, None, -400, -35), alloc(2, 200, None, -30, 335)];
        assert_eq!(run(&a, true, 100, 180), (250, vec![(1, 50)]));
        // 11: current usage falls back to historical, not 0
        let a = [
            alloc(1, 300, Some(200), -400, -35),
            alloc(2, 300, None, -30, 335),
        ];
        assert_eq!(run(&a, true, 500, 50), (500, vec![]));
    }

    #[test]
    fn inactive_teams_are_locked_at_current_usage_without_finals() {
        // 12
        let a = [
            alloc(1, 100, None, -400, -35),
            alloc(2, 300, None, -30, 335),
        ];
        assert_eq!(run(&a, false, 500, 250), (150, vec![]));
        // 13
        let a = [
            alloc(1, 100, None, -400, -35),
            alloc(2, 200, None, -30, 335),
        ];
        assert_eq!(run(&a, false, 300, 0), (0, vec![]));
        // 14
        let a = [
            alloc(1, 300, Some(200), -400, -35),
            alloc(2, 300, None, -30, 335),
        ];
        assert_eq!(run(&a, false, 500, 50), (200, vec![]));
    }

    #[test]
    fn example_eleven_keeps_its_final_and_example_ten_warns() {
        let a = [
            alloc(1, 300, Some(200), -400, -35),
            alloc(2, 300, None, -30, 335),
        ];
        let p = plan(&a, today(), true, 500, 50).expect("plan");
        assert!(
            p.warnings
                .iter()
                .any(|w| w.starts_with("negative current usage"))
        );
        let a = [alloc(1, 50, None, -400, -35), alloc(2, 200, None, -30, 335)];
        let p = plan(&a, today(), true, 100, 180).expect("plan");
        assert!(
            p.warnings
                .iter()
                .any(|w| w.starts_with("negative historical usage"))
        );
    }

    #[test]
    fn a_second_run_with_the_same_usage_writes_the_same_limit() {
        let mut a = vec![
            alloc(1, 500, None, -400, -10),
            alloc(2, 1000, None, -30, 335),
        ];
        let (limit, finals) = run(&a, true, 1500, 350);
        for (id, v) in finals {
            if let Some(x) = a.iter_mut().find(|x| x.id == id) {
                x.final_value = Some(v);
            }
        }
        assert_eq!(run(&a, true, limit, 350), (limit, vec![]));
    }

    #[test]
    fn the_expiry_day_counts_as_expired_and_null_dates_as_never_active() {
        let on_expiry = alloc(1, 100, None, -30, 0);
        assert!(!on_expiry.is_active_on(today()));
        assert!(on_expiry.is_expiring_on(today()));
        let from_today = alloc(2, 100, None, 0, 10);
        assert!(from_today.is_active_on(today()));
        let future = alloc(3, 100, None, 1, 10);
        assert!(!future.is_active_on(today()) && !future.is_expiring_on(today()));
        let no_active = Allocation {
            active: None,
            ..alloc(4, 100, None, 0, 10)
        };
        assert!(!no_active.is_active_on(today()));
        let open_ended = Allocation {
            expire: None,
            ..alloc(5, 100, None, -5, 0)
        };
        assert!(open_ended.is_active_on(today()) && !open_ended.has_expired_on(today()));
        // Expired with no `active` date still awaits a final value.
        let expired_never_active = Allocation {
            active: None,
            ..alloc(6, 100, None, 0, -1)
        };
        assert!(expired_never_active.is_expiring_on(today()));
    }

    #[test]
    fn null_awarded_amounts_are_ignored_in_sums_but_fail_a_final() {
        let active_null = Allocation {
            awarded: None,
            ..alloc(1, 0, None, -30, 335)
        };
        let a = [active_null.clone(), alloc(2, 100, None, -30, 335)];
        assert_eq!(run(&a, true, 0, 0), (100, vec![]));
        let expiring_null = Allocation {
            awarded: None,
            ..alloc(3, 0, None, -400, -5)
        };
        let a = [expiring_null.clone(), alloc(2, 100, None, -30, 335)];
        let err = plan(&a, today(), true, 100, 10).expect_err("null awarded");
        assert!(err.contains("allocation 3"), "{err}");
        // An inactive team never reaches the finals, so nothing fails.
        assert_eq!(run(&a, false, 100, 10), (10, vec![]));
    }
}
