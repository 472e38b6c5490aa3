//! `GET /stats/notifications/` (domain.md §11.4): the caller's notifications (staff: all).

use super::{count_if, filters};
use crate::web::ApiError;
use crate::web::api::context;
use crate::web::api::list::ListSpec;
use crate::web::api::notifications::notifications::{self as notes, FILTERS, TABLE};
use salvo::http::StatusCode;
use salvo::oapi::ToSchema;
use salvo::prelude::*;
use sea_query::{Alias, Expr, Query};
use serde::Serialize;

const SPEC: ListSpec = ListSpec {
    table: TABLE,
    filters: FILTERS,
    order: &[],
    search: &[],
};

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
#[salvo(schema(name = "NotificationStats"))]
pub struct NotificationStats {
    pub total: i64,
    pub unread: i64,
}

/// Retrieve aggregated user notification statistics.
///
/// Returns cumulative statistics for user notifications. Staff users are returned statistics
/// across all users. Non-staff users are returned statistics limited to their own
/// notifications.
#[endpoint(
    operation_id = "stats_notifications_retrieve",
    tags("Statistics"),
    responses((status_code = 200, description = "", body = NotificationStats))
)]
pub async fn retrieve(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let cond = filters(req, &app, &SPEC).await?;
        let mut q = Query::select();
        q.expr_as(Expr::cust("COUNT(*)"), Alias::new("total"))
            .expr_as(Expr::cust(count_if("NOT \"read\"")), Alias::new("unread"))
            .from(Alias::new(TABLE))
            .cond_where(cond);
        notes::scope(&mut q, &caller);
        let mut rows: Vec<NotificationStats> = crate::store::fetch_all(&app.db, &q).await?;
        rows.pop().ok_or(ApiError::Internal)
    }
    .await;
    crate::web::api::respond(res, StatusCode::OK, result);
}
