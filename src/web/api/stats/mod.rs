//! `/stats/` (domain.md §11): aggregates over the caller's visible records. Each endpoint
//! applies the same field filters as the corresponding list, then the caller's scope, and
//! aggregates in SQL (a fixed number of queries whatever the number of rows). `_order`,
//! `_search`, `_limit` and `_offset` are ignored.

pub mod notifications;
pub mod requests;
pub mod research;

use crate::config::Engine;
use crate::web::api::list::{self as listing, ListSpec};
use crate::web::{ApiError, AppState};
use chrono::{NaiveDate, Utc};
use salvo::prelude::*;
use sea_query::{Cond, Expr};

/// The routes of this family.
pub fn routes() -> crate::web::route::Routes {
    crate::web::route::Routes::new()
        .push(super::read_only!(
            "stats/requests/",
            requests::retrieve,
            "Allocation Request Stats"
        ))
        .push(super::read_only!(
            "stats/grants/",
            research::grant_stats,
            "Grant Stats"
        ))
        .push(super::read_only!(
            "stats/publications/",
            research::publication_stats,
            "Publication Stats"
        ))
        .push(super::read_only!(
            "stats/notifications/",
            notifications::retrieve,
            "Notification Stats"
        ))
}

/// The filter condition of a stats request: the list's field filters, their errors and
/// unknown foreign-key ids reported together in one 400 as by the lists; reserved `_`
/// parameters are ignored.
pub async fn filters(req: &Request, app: &AppState, spec: &ListSpec) -> Result<Cond, ApiError> {
    let params: Vec<(String, String)> = listing::query_pairs(req)
        .into_iter()
        .filter(|(k, _)| !k.starts_with('_'))
        .collect();
    let query = listing::parse_checked(&params, spec, &app.db, app.timezone, &[]).await?;
    Ok(query.condition)
}

/// Today in the server time zone.
pub fn today(app: &AppState) -> NaiveDate {
    Utc::now().with_timezone(&app.timezone).date_naive()
}

/// `SUM(<expr>)` as a BIGINT that is 0 over no rows (PostgreSQL sums BIGINTs as NUMERIC).
pub fn sum_int(expr: &str) -> String {
    format!("CAST(COALESCE(SUM({expr}), 0) AS BIGINT)")
}

/// A custom SQL expression where every `{today}` is today's date as a bound value (written
/// in the placeholder style sea-query expects from the backend's builder).
pub fn with_today(engine: Engine, today: NaiveDate, sql: &str) -> Expr {
    match engine {
        Engine::Postgres => Expr::cust_with_values(sql.replace("{today}", "$1"), [today]),
        Engine::Sqlite => {
            let n = sql.matches("{today}").count();
            Expr::cust_with_values(sql.replace("{today}", "?"), vec![today; n])
        }
    }
}

/// How many rows satisfy `cond`.
pub fn count_if(cond: &str) -> String {
    sum_int(&format!("CASE WHEN {cond} THEN 1 ELSE 0 END"))
}
