//! `GET /stats/requests/` (domain.md §11.1): counts over the scoped and filtered allocation
//! requests R, and service-unit totals over the resource allocations A of those requests.
//! Two aggregate queries whatever the number of rows.

use super::{count_if, filters, sum_int, today, with_today};
use crate::config::Engine;
use crate::web::ApiError;
use crate::web::api::allocations::requests::{self as resource, TABLE};
use crate::web::api::context;
use crate::web::api::list::ListSpec;
use crate::web::api::research::team_scope;
use salvo::http::StatusCode;
use salvo::oapi::ToSchema;
use salvo::prelude::*;
use sea_query::{Alias, Expr, ExprTrait, JoinType, Query};
use serde::Serialize;

/// The filters of `/allocations/requests/` (domain.md §2.5), without its ordering and search.
const SPEC: ListSpec = ListSpec {
    table: TABLE,
    filters: resource::SPEC.filters,
    order: &[],
    search: &[],
};

#[derive(Debug, Serialize, ToSchema)]
#[salvo(schema(name = "AllocationRequestStats"))]
pub struct AllocationRequestStats {
    pub request_count: i64,
    pub request_pending_count: i64,
    pub request_approved_count: i64,
    pub request_declined_count: i64,
    pub request_upcoming_count: i64,
    pub request_active_count: i64,
    pub request_expired_count: i64,
    pub su_pending_total: f64,
    pub su_declined_total: f64,
    pub su_approved_total: f64,
    pub su_upcoming_total: f64,
    pub su_active_total: f64,
    pub su_expired_total: f64,
    pub su_requested_total: f64,
    pub su_awarded_total: f64,
    pub su_finalized_total: f64,
    pub days_pending_average: Option<f64>,
    pub days_active_average: Option<f64>,
}

#[derive(Debug, sqlx::FromRow)]
struct RequestAggregates {
    request_count: i64,
    request_pending_count: i64,
    request_approved_count: i64,
    request_declined_count: i64,
    request_upcoming_count: i64,
    request_active_count: i64,
    request_expired_count: i64,
    pending_rows: i64,
    /// Sum of `active` (midnight UTC) − `submitted`, as text (PostgreSQL: µs, SQLite: ms).
    pending_sum: Option<String>,
    active_rows: i64,
    active_days: i64,
}

#[derive(Debug, sqlx::FromRow)]
struct AllocationAggregates {
    su_pending_total: i64,
    su_declined_total: i64,
    su_approved_total: i64,
    su_upcoming_total: i64,
    su_active_total: i64,
    su_expired_total: i64,
    su_requested_total: i64,
    su_awarded_total: i64,
    su_finalized_total: i64,
}

// Request conditions; `{r}` is the request table's qualifier (empty or `r.`).
const PENDING: &str = "{r}status = 'PD'";
const APPROVED: &str = "{r}status = 'AP'";
const DECLINED: &str = "{r}status = 'DC'";
const UPCOMING: &str = "{r}status = 'AP' AND {r}active > {today}";
const ACTIVE: &str = "{r}status = 'AP' AND {r}active <= {today} AND {r}expire >= {today}";
const EXPIRED: &str = "{r}status = 'AP' AND {r}expire < {today}";

fn on(qualifier: &str, cond: &str) -> String {
    cond.replace("{r}", qualifier)
}

/// Per-row pending time and its unit per day. PostgreSQL: exact microseconds, summed as
/// NUMERIC; SQLite: `julianday` is good to the millisecond.
fn pending_sql(engine: Engine) -> (&'static str, i128) {
    match engine {
        Engine::Postgres => (
            "CAST(SUM(CAST(EXTRACT(EPOCH FROM (CAST(active AS TIMESTAMP) AT TIME ZONE 'UTC' - submitted)) * 1000000 AS BIGINT)) AS TEXT)",
            86_400_000_000,
        ),
        Engine::Sqlite => (
            "CAST(SUM(CAST(ROUND((julianday(active) - julianday(submitted)) * 86400000) AS INTEGER)) AS TEXT)",
            86_400_000,
        ),
    }
}

fn active_days_sql(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => "expire - active",
        Engine::Sqlite => "CAST(julianday(expire) - julianday(active) AS INTEGER)",
    }
}

/// A mean floored to whole days, as a float (`9.0`), or null over no rows.
fn floored_days(sum: i128, rows: i64, per_day: i128) -> Option<f64> {
    (rows > 0).then(|| sum.div_euclid(i128::from(rows) * per_day) as f64)
}

/// Retrieve aggregated allocation request statistics.
///
/// Returns cumulative statistics for allocation requests and awards. Staff users are
/// returned statistics across all teams. Non-staff users are returned statistics limited to
/// teams where they hold membership.
#[endpoint(
    operation_id = "stats_requests_retrieve",
    tags("Statistics"),
    responses((status_code = 200, description = "", body = AllocationRequestStats))
)]
pub async fn retrieve(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let cond = filters(req, &app, &SPEC).await?;
        let today = today(&app);
        let engine = app.db.engine();
        let t = |sql: String| with_today(engine, today, &sql);
        let (pending_sum, per_day) = pending_sql(engine);

        // R: the scoped, filtered requests.
        let mut q = Query::select();
        q.expr_as(Expr::cust("COUNT(*)"), Alias::new("request_count"))
            .expr_as(
                Expr::cust(count_if(&on("", PENDING))),
                Alias::new("request_pending_count"),
            )
            .expr_as(
                Expr::cust(count_if(&on("", APPROVED))),
                Alias::new("request_approved_count"),
            )
            .expr_as(
                Expr::cust(count_if(&on("", DECLINED))),
                Alias::new("request_declined_count"),
            )
            .expr_as(
                t(count_if(&on("", UPCOMING))),
                Alias::new("request_upcoming_count"),
            )
            .expr_as(
                t(count_if(&on("", ACTIVE))),
                Alias::new("request_active_count"),
            )
            .expr_as(
                t(count_if(&on("", EXPIRED))),
                Alias::new("request_expired_count"),
            )
            .expr_as(
                Expr::cust(count_if("active IS NOT NULL")),
                Alias::new("pending_rows"),
            )
            .expr_as(Expr::cust(pending_sum), Alias::new("pending_sum"))
            .expr_as(
                Expr::cust(count_if("active IS NOT NULL AND expire IS NOT NULL")),
                Alias::new("active_rows"),
            )
            .expr_as(
                Expr::cust(sum_int(active_days_sql(engine))),
                Alias::new("active_days"),
            )
            .from(Alias::new(TABLE))
            .cond_where(cond.clone());
        team_scope(&mut q, &caller);
        let r: RequestAggregates = crate::store::fetch_all(&app.db, &q)
            .await?
            .pop()
            .ok_or(ApiError::Internal)?;

        // A: the allocations of those requests, with their request's status and dates.
        let mut ids = Query::select();
        ids.column(Alias::new("id"))
            .from(Alias::new(TABLE))
            .cond_where(cond);
        team_scope(&mut ids, &caller);
        let awarded_if = |c: &str| {
            let c = on("r.", c);
            t(sum_int(&format!("CASE WHEN {c} THEN a.awarded ELSE 0 END")))
        };
        let mut a = Query::select();
        a.expr_as(awarded_if(PENDING), Alias::new("su_pending_total"))
            .expr_as(awarded_if(DECLINED), Alias::new("su_declined_total"))
            .expr_as(awarded_if(APPROVED), Alias::new("su_approved_total"))
            .expr_as(awarded_if(UPCOMING), Alias::new("su_upcoming_total"))
            .expr_as(awarded_if(ACTIVE), Alias::new("su_active_total"))
            .expr_as(awarded_if(EXPIRED), Alias::new("su_expired_total"))
            .expr_as(
                Expr::cust(sum_int("a.requested")),
                Alias::new("su_requested_total"),
            )
            .expr_as(
                Expr::cust(sum_int("a.awarded")),
                Alias::new("su_awarded_total"),
            )
            .expr_as(
                Expr::cust(sum_int("a.final")),
                Alias::new("su_finalized_total"),
            )
            .from_as(
                Alias::new("allocations_resourceallocation"),
                Alias::new("a"),
            )
            .join_as(
                JoinType::InnerJoin,
                Alias::new(TABLE),
                Alias::new("r"),
                Expr::col((Alias::new("r"), Alias::new("id")))
                    .equals((Alias::new("a"), Alias::new("request_id"))),
            )
            .and_where(Expr::col((Alias::new("a"), Alias::new("request_id"))).in_subquery(ids));
        let s: AllocationAggregates = crate::store::fetch_all(&app.db, &a)
            .await?
            .pop()
            .ok_or(ApiError::Internal)?;

        let pending_sum: i128 = r
            .pending_sum
            .as_deref()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Ok(AllocationRequestStats {
            request_count: r.request_count,
            request_pending_count: r.request_pending_count,
            request_approved_count: r.request_approved_count,
            request_declined_count: r.request_declined_count,
            request_upcoming_count: r.request_upcoming_count,
            request_active_count: r.request_active_count,
            request_expired_count: r.request_expired_count,
            su_pending_total: s.su_pending_total as f64,
            su_declined_total: s.su_declined_total as f64,
            su_approved_total: s.su_approved_total as f64,
            su_upcoming_total: s.su_upcoming_total as f64,
            su_active_total: s.su_active_total as f64,
            su_expired_total: s.su_expired_total as f64,
            su_requested_total: s.su_requested_total as f64,
            su_awarded_total: s.su_awarded_total as f64,
            su_finalized_total: s.su_finalized_total as f64,
            days_pending_average: floored_days(pending_sum, r.pending_rows, per_day),
            days_active_average: floored_days(i128::from(r.active_days), r.active_rows, 1),
        })
    }
    .await;
    crate::web::api::respond(res, StatusCode::OK, result);
}
