//! `/notifications/notifications/` (domain.md §9.1): staff list everyone's notifications,
//! other users their own; only the recipient retrieves one or changes its `read` flag.

use crate::on_db;
use crate::store::Db;
use crate::web::ApiError;
use crate::web::api::fields::Validator;
use crate::web::api::list::{self as listing, Column, Kind, ListSpec, search, search_via};
use crate::web::api::summaries::{self, render_datetime, user_summary};
use crate::web::api::{Caller, body, context, path_id};
use chrono::{DateTime, Utc};
use salvo::http::StatusCode;
use salvo::oapi::ToSchema;
use salvo::prelude::*;
use sea_query::{Alias, Expr, ExprTrait, SelectStatement};
use serde::Serialize;
use serde_json::{Value, json};

const MODEL: &str = "Notification";
pub const TABLE: &str = "notifications_notification";
pub const TYPES: &[&str] = &["GM", "RE", "RD"];

pub const FILTERS: &[Column] = &[
    Column::new("id", Kind::Int),
    Column::new("time", Kind::DateTime),
    Column::new("read", Kind::Bool),
    Column::new("subject", Kind::Text),
    Column::new("message_text", Kind::Text),
    Column::new("message_html", Kind::Text),
    Column::new("notification_type", Kind::Choice(TYPES)),
    Column::new("user", Kind::Fk("users_user")),
];

const ORDER: &[Column] = &[
    Column::new("id", Kind::Int),
    Column::new("time", Kind::DateTime),
    Column::new("read", Kind::Bool),
    Column::new("subject", Kind::Text),
    Column::new("message_html", Kind::Text),
    Column::new("notification_type", Kind::Choice(TYPES)),
    Column::new("user", Kind::Fk("users_user")),
];

pub const SPEC: ListSpec = ListSpec {
    table: TABLE,
    filters: FILTERS,
    order: ORDER,
    search: &[
        search("subject"),
        search_via(&[("user_id", "users_user")], "username"),
        search_via(&[("user_id", "users_user")], "first_name"),
        search_via(&[("user_id", "users_user")], "last_name"),
    ],
};

const SELECT_COLUMNS: [&str; 7] = [
    "id",
    "time",
    "read",
    "subject",
    "message_html",
    "notification_type",
    "user_id",
];

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "Notification"))]
pub struct NotificationDoc {
    pub id: i64,
    pub time: String,
    pub read: bool,
    pub subject: String,
    pub message_html: String,
    pub notification_type: String,
    pub user: i64,
    pub _user: crate::web::api::users::UserSummaryDoc,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "PaginatedNotificationList"))]
pub struct NotificationPage {
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<NotificationDoc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NotificationRow {
    pub id: i64,
    pub time: DateTime<Utc>,
    pub read: bool,
    pub subject: String,
    pub message_html: String,
    pub notification_type: String,
    pub user_id: i64,
}

/// List and stats scope: staff see every notification, other users their own.
pub fn scope(q: &mut SelectStatement, caller: &Caller) {
    if !caller.is_staff() {
        q.and_where(Expr::col(Alias::new("user_id")).eq(caller.id()));
    }
}

/// Representations of a page: the recipients in one query whatever the page size.
pub async fn represent(db: &Db, rows: &[NotificationRow]) -> Result<Vec<Value>, ApiError> {
    let user_ids: Vec<i64> = rows.iter().map(|n| n.user_id).collect();
    let users = summaries::load_users(db, &user_ids).await?;
    Ok(rows
        .iter()
        .map(|n| {
            json!({
                "id": n.id,
                "time": render_datetime(&n.time),
                "read": n.read,
                "subject": n.subject,
                "message_html": n.message_html,
                "notification_type": n.notification_type,
                "user": n.user_id,
                "_user": users.iter().find(|u| u.id == n.user_id).map(user_summary).unwrap_or(Value::Null),
            })
        })
        .collect())
}

/// List notifications.
///
/// Returns a list of user notifications. Non-staff users are only returned their own
/// notifications. Staff users are returned all notifications.
#[endpoint(
    operation_id = "notifications_notifications_list",
    tags("Notifications - Notifications"),
    responses((status_code = 200, description = "", body = NotificationPage))
)]
pub async fn list(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let scope = |q: &mut SelectStatement| scope(q, &caller);
        let (rows, page) = listing::page::<NotificationRow>(
            req,
            &app.db,
            app.config.timezone(),
            &SPEC,
            &SELECT_COLUMNS,
            &scope,
        )
        .await?;
        Ok(page.envelope(represent(&app.db, &rows).await?))
    }
    .await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

/// The notification, if the caller is its recipient (404 when missing, 403 otherwise;
/// staff are no exception).
async fn own(db: &Db, caller: &Caller, id: i64) -> Result<NotificationRow, ApiError> {
    let me = &caller.user;
    let n: NotificationRow = on_db!(db, |p| sqlx::query_as(
        "SELECT id, time, read, subject, message_html, notification_type, user_id \
         FROM notifications_notification WHERE id = $1"
    )
    .bind(id)
    .fetch_optional(p)
    .await)?
    .ok_or_else(|| ApiError::no_match(MODEL))?;
    if n.user_id != me.id {
        return Err(ApiError::forbidden());
    }
    Ok(n)
}

async fn represent_one(db: &Db, n: &NotificationRow) -> Result<Value, ApiError> {
    Ok(represent(db, std::slice::from_ref(n))
        .await?
        .pop()
        .unwrap_or(Value::Null))
}

/// Retrieve a notification.
///
/// Returns a single notification by its ID. Read and patch access is limited to the
/// notification owner.
#[endpoint(
    operation_id = "notifications_notifications_retrieve",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this notification.")),
    tags("Notifications - Notifications"),
    responses((status_code = 200, description = "", body = NotificationDoc))
)]
pub async fn retrieve(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let n = own(&app.db, &caller, path_id(req)?).await?;
        represent_one(&app.db, &n).await
    }
    .await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

/// Partially update a notification.
///
/// Updates the `read` status of a notification. Patch access is limited to the notification
/// owner.
#[endpoint(
    operation_id = "notifications_notifications_partial_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this notification.")),
    tags("Notifications - Notifications"),
    responses((status_code = 200, description = "", body = NotificationDoc))
)]
pub async fn patch(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let mut n = own(&app.db, &caller, path_id(req)?).await?;
        let body = body::read(req).await?;
        body.require_object()?;
        // Only `read` is writable; every other key is ignored.
        let mut v = Validator::new(&body.fields, true);
        let read = v.boolean("read");
        v.finish()?;
        if let Some(read) = read
            && read != n.read
        {
            on_db!(&app.db, |p| sqlx::query(
                "UPDATE notifications_notification SET read = $1 WHERE id = $2"
            )
            .bind(read)
            .bind(n.id)
            .execute(p)
            .await
            .map(|_| ()))?;
            n.read = read;
        }
        represent_one(&app.db, &n).await
    }
    .await;
    crate::web::api::respond(res, StatusCode::OK, result);
}
