//! `GET /stats/grants/` and `GET /stats/publications/` (domain.md §11.2, §11.3).
//!
//! Grant amounts are summed in SQL as integer cents (exact on both backends: SQLite's own
//! `SUM` over NUMERIC is floating point); the average is rounded half to even in Rust.

use super::{count_if, filters, sum_int, today, with_today};
use crate::config::Engine;
use crate::web::ApiError;
use crate::web::api::context;
use crate::web::api::list::ListSpec;
use crate::web::api::research::values::{div_half_even, render_cents};
use crate::web::api::research::{grants, publications, team_scope};
use salvo::http::StatusCode;
use salvo::oapi::ToSchema;
use salvo::prelude::*;
use sea_query::{Alias, Expr, Query};
use serde::Serialize;

const GRANTS: ListSpec = ListSpec {
    table: grants::TABLE,
    filters: grants::COLUMNS,
    order: &[],
    search: &[],
};

const PUBLICATIONS: ListSpec = ListSpec {
    table: publications::TABLE,
    filters: publications::COLUMNS,
    order: &[],
    search: &[],
};

#[derive(Debug, Serialize, ToSchema)]
#[salvo(schema(name = "GrantStats"))]
pub struct GrantStats {
    pub grant_count: i64,
    pub upcoming_count: i64,
    pub active_count: i64,
    pub expired_count: i64,
    pub agency_count: i64,
    pub funding_total: String,
    pub funding_upcoming: String,
    pub funding_active: String,
    pub funding_expired: String,
    pub funding_average: String,
}

#[derive(Debug, sqlx::FromRow)]
struct GrantAggregates {
    grant_count: i64,
    upcoming_count: i64,
    active_count: i64,
    expired_count: i64,
    agency_count: i64,
    cents_total: i64,
    cents_upcoming: i64,
    cents_active: i64,
    cents_expired: i64,
}

const UPCOMING: &str = "start_date > {today}";
const ACTIVE: &str = "start_date <= {today} AND end_date > {today}";
const EXPIRED: &str = "end_date <= {today}";
const CENTS: &str = "CAST(ROUND(amount * 100) AS BIGINT)";

fn cents_if(cond: &str) -> String {
    sum_int(&format!("CASE WHEN {cond} THEN {CENTS} ELSE 0 END"))
}

/// Retrieve aggregated grant statistics.
///
/// Returns cumulative grant statistics. Staff users are returned statistics across all teams.
/// Non-staff users are returned statistics limited to teams where they hold membership.
#[endpoint(
    operation_id = "stats_grants_retrieve",
    tags("Statistics"),
    responses((status_code = 200, description = "", body = GrantStats))
)]
pub async fn grant_stats(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let cond = filters(req, &app, &GRANTS).await?;
        let today = today(&app);
        let engine = app.db.engine();
        let with_today = |sql: String| with_today(engine, today, &sql);
        let mut q = Query::select();
        q.expr_as(Expr::cust("COUNT(*)"), Alias::new("grant_count"))
            .expr_as(with_today(count_if(UPCOMING)), Alias::new("upcoming_count"))
            .expr_as(with_today(count_if(ACTIVE)), Alias::new("active_count"))
            .expr_as(with_today(count_if(EXPIRED)), Alias::new("expired_count"))
            .expr_as(
                Expr::cust("COUNT(DISTINCT agency)"),
                Alias::new("agency_count"),
            )
            .expr_as(Expr::cust(sum_int(CENTS)), Alias::new("cents_total"))
            .expr_as(with_today(cents_if(UPCOMING)), Alias::new("cents_upcoming"))
            .expr_as(with_today(cents_if(ACTIVE)), Alias::new("cents_active"))
            .expr_as(with_today(cents_if(EXPIRED)), Alias::new("cents_expired"))
            .from(Alias::new(grants::TABLE))
            .cond_where(cond);
        team_scope(&mut q, &caller);
        let a: GrantAggregates = crate::store::fetch_all(&app.db, &q)
            .await?
            .pop()
            .ok_or(ApiError::Internal)?;
        let average = if a.grant_count == 0 {
            0
        } else {
            div_half_even(i128::from(a.cents_total), i128::from(a.grant_count)) as i64
        };
        Ok(GrantStats {
            grant_count: a.grant_count,
            upcoming_count: a.upcoming_count,
            active_count: a.active_count,
            expired_count: a.expired_count,
            agency_count: a.agency_count,
            funding_total: render_cents(a.cents_total),
            funding_upcoming: render_cents(a.cents_upcoming),
            funding_active: render_cents(a.cents_active),
            funding_expired: render_cents(a.cents_expired),
            funding_average: render_cents(average),
        })
    }
    .await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

#[derive(Debug, Serialize, ToSchema)]
#[salvo(schema(name = "PublicationStats"))]
pub struct PublicationStats {
    pub publications_count: i64,
    pub draft_count: i64,
    pub submitted_count: i64,
    pub accepted_count: i64,
    pub journals_count: i64,
    /// Mean review time as a duration `[D ]HH:MM:SS[.ffffff]`.
    pub review_average: Option<String>,
}

#[derive(Debug, sqlx::FromRow)]
struct PublicationAggregates {
    publications_count: i64,
    draft_count: i64,
    submitted_count: i64,
    accepted_count: i64,
    journals_count: i64,
    reviewed_count: i64,
    review_days: i64,
}

/// Whole days from `submitted` to `published` (NULL unless both are set).
fn review_days_sql(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => "published - submitted",
        Engine::Sqlite => "CAST(julianday(published) - julianday(submitted) AS INTEGER)",
    }
}

/// Django's `duration_string`: `[D ]HH:MM:SS[.ffffff]`, days floored (negative days keep a
/// positive time of day, as Python's timedelta normalises them).
pub fn duration_string(micros: i128) -> String {
    const DAY: i128 = 86_400_000_000;
    let days = micros.div_euclid(DAY);
    let rest = micros.rem_euclid(DAY);
    let secs = rest / 1_000_000;
    let us = rest % 1_000_000;
    let mut out = format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    );
    if days != 0 {
        out = format!("{days} {out}");
    }
    if us != 0 {
        out.push_str(&format!(".{us:06}"));
    }
    out
}

/// Retrieve aggregated publication statistics.
///
/// Returns cumulative publication statistics. Staff users are returned statistics across all
/// teams. Non-staff users are returned statistics limited to teams where they hold
/// membership.
#[endpoint(
    operation_id = "stats_publications_retrieve",
    tags("Statistics"),
    responses((status_code = 200, description = "", body = PublicationStats))
)]
pub async fn publication_stats(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let cond = filters(req, &app, &PUBLICATIONS).await?;
        let mut q = Query::select();
        q.expr_as(Expr::cust("COUNT(*)"), Alias::new("publications_count"))
            .expr_as(
                Expr::cust(count_if("submitted IS NULL AND published IS NULL")),
                Alias::new("draft_count"),
            )
            .expr_as(
                Expr::cust(count_if("submitted IS NOT NULL AND published IS NULL")),
                Alias::new("submitted_count"),
            )
            .expr_as(
                Expr::cust(count_if("published IS NOT NULL")),
                Alias::new("accepted_count"),
            )
            .expr_as(
                Expr::cust("COUNT(DISTINCT journal)"),
                Alias::new("journals_count"),
            )
            .expr_as(
                Expr::cust(count_if("published IS NOT NULL AND submitted IS NOT NULL")),
                Alias::new("reviewed_count"),
            )
            .expr_as(
                Expr::cust(sum_int(review_days_sql(app.db.engine()))),
                Alias::new("review_days"),
            )
            .from(Alias::new(publications::TABLE))
            .cond_where(cond);
        team_scope(&mut q, &caller);
        let a: PublicationAggregates = crate::store::fetch_all(&app.db, &q)
            .await?
            .pop()
            .ok_or(ApiError::Internal)?;
        // PostgreSQL averages `interval '1 day' * (published - submitted)` to microseconds.
        let review_average = (a.reviewed_count > 0).then(|| {
            duration_string(div_half_even(
                i128::from(a.review_days) * 86_400_000_000,
                i128::from(a.reviewed_count),
            ))
        });
        Ok(PublicationStats {
            publications_count: a.publications_count,
            draft_count: a.draft_count,
            submitted_count: a.submitted_count,
            accepted_count: a.accepted_count,
            journals_count: a.journals_count,
            review_average,
        })
    }
    .await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

#[cfg(test)]
mod tests {
    use super::duration_string;

    #[test]
    fn durations_render_like_django() {
        const DAY: i128 = 86_400_000_000;
        assert_eq!(duration_string(DAY * 31 / 2), "15 12:00:00");
        assert_eq!(duration_string(0), "00:00:00");
        assert_eq!(duration_string(DAY / 7 + 1), "03:25:42.857143");
        assert_eq!(duration_string(-DAY / 2), "-1 12:00:00");
        assert_eq!(duration_string(DAY * 3), "3 00:00:00");
    }
}
