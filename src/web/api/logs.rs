//! `/logs/` (operations.md §3.1–§3.6): request logs, the audit trail, task results and the
//! merged feed, read-only and staff-only, with the shared list conventions.

use super::list::{self as listing, Column, Kind, ListSpec, search, search_via};
use super::summaries::{render_datetime, users_by_id};
use super::{context, path_id};
use crate::store::{Db, FetchRow};
use crate::web::ApiError;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use salvo::http::StatusCode;
use salvo::oapi::ToSchema;
use salvo::prelude::*;
use sea_query::{Alias, Expr, ExprTrait, Query};
use serde::Serialize;
use serde_json::{Value, json};

const USER_HOPS: &[(&str, &str)] = &[("user_id", "users_user")];
const ACTOR_HOPS: &[(&str, &str)] = &[("actor_id", "users_user")];

const REQUEST_COLUMNS: &[Column] = &[
    Column::new("id", Kind::Int),
    Column::new("method", Kind::Text),
    Column::new("endpoint", Kind::Text),
    Column::new("response_code", Kind::Int),
    Column::new("remote_address", Kind::Text),
    Column::new("timestamp", Kind::DateTime),
    Column::new("cid", Kind::Text),
    Column::new("user", Kind::Fk("users_user")),
];

const REQUESTS: ListSpec = ListSpec {
    table: "logging_requestlog",
    filters: REQUEST_COLUMNS,
    order: REQUEST_COLUMNS,
    search: &[
        search("endpoint"),
        search("method"),
        search("response_code"),
        search("remote_address"),
        search("cid"),
        search_via(USER_HOPS, "username"),
        search_via(USER_HOPS, "first_name"),
        search_via(USER_HOPS, "last_name"),
    ],
};

const AUDIT_COLUMNS: &[Column] = &[
    Column::new("id", Kind::Int),
    Column::new("content_type", Kind::Text),
    Column::new("object_pk", Kind::Text),
    Column::new("object_id", Kind::Int),
    Column::new("object_repr", Kind::Text),
    Column::new("action", Kind::Int),
    Column::new("changes_text", Kind::Text),
    Column::new("actor", Kind::Fk("users_user")),
    Column::new("cid", Kind::Text),
    Column::new("remote_addr", Kind::Text),
    Column::new("remote_port", Kind::Int),
    Column::new("timestamp", Kind::DateTime),
    Column::new("actor_email", Kind::Text),
];

const AUDIT: ListSpec = ListSpec {
    table: "auditlog_logentry",
    filters: AUDIT_COLUMNS,
    order: AUDIT_COLUMNS,
    search: &[
        search("content_type"),
        search("object_repr"),
        search("cid"),
        search_via(ACTOR_HOPS, "username"),
        search_via(ACTOR_HOPS, "first_name"),
        search_via(ACTOR_HOPS, "last_name"),
    ],
};

const TASK_COLUMNS: &[Column] = &[
    Column::new("id", Kind::Int),
    Column::new("task_id", Kind::Text),
    Column::new("periodic_task_name", Kind::Text),
    Column::new("task_name", Kind::Text),
    Column::new("task_args", Kind::Text),
    Column::new("task_kwargs", Kind::Text),
    Column::new("status", Kind::Text),
    Column::new("worker", Kind::Text),
    Column::new("content_type", Kind::Text),
    Column::new("content_encoding", Kind::Text),
    Column::new("result", Kind::Text),
    Column::new("date_created", Kind::DateTime),
    Column::new("date_started", Kind::DateTime),
    Column::new("date_done", Kind::DateTime),
    Column::new("traceback", Kind::Text),
    Column::new("meta", Kind::Text),
];

const TASKS: ListSpec = ListSpec {
    table: "django_celery_results_taskresult",
    filters: TASK_COLUMNS,
    order: TASK_COLUMNS,
    search: &[
        search("periodic_task_name"),
        search("task_name"),
        search("status"),
        search("worker"),
        search("result"),
        search("traceback"),
    ],
};

const FEED_COLUMNS: &[Column] = &[
    Column::new("id", Kind::Text),
    Column::new("record_id", Kind::Int),
    Column::new("record_type", Kind::Text),
    Column::new("timestamp", Kind::DateTime),
    Column::new("summary", Kind::Text),
    Column::new("user", Kind::Fk("users_user")),
    Column::new("cid", Kind::Text),
    Column::new("status", Kind::Text),
];

const FEED: ListSpec = ListSpec {
    table: "logging_feedentry",
    filters: FEED_COLUMNS,
    order: FEED_COLUMNS,
    search: &[
        search("status"),
        search("summary"),
        search("cid"),
        search_via(USER_HOPS, "username"),
        search_via(USER_HOPS, "first_name"),
        search_via(USER_HOPS, "last_name"),
    ],
};

#[derive(Debug, sqlx::FromRow)]
struct RequestRow {
    id: i64,
    method: String,
    endpoint: String,
    response_code: i32,
    remote_address: Option<String>,
    timestamp: DateTime<Utc>,
    cid: Option<String>,
    user_id: Option<i64>,
}

#[derive(Debug, sqlx::FromRow)]
struct AuditRow {
    id: i64,
    content_type: String,
    object_id: Option<i64>,
    action: i32,
    changes: Option<String>,
    cid: Option<String>,
    remote_addr: Option<String>,
    remote_port: Option<i32>,
    timestamp: DateTime<Utc>,
    actor_id: Option<i64>,
}

#[derive(Debug, sqlx::FromRow)]
struct TaskRow {
    id: i64,
    task_id: String,
    periodic_task_name: Option<String>,
    task_name: Option<String>,
    task_args: Option<String>,
    task_kwargs: Option<String>,
    status: String,
    worker: Option<String>,
    content_type: String,
    content_encoding: String,
    result: Option<String>,
    date_created: DateTime<Utc>,
    date_started: Option<DateTime<Utc>>,
    date_done: DateTime<Utc>,
    traceback: Option<String>,
    meta: Option<String>,
}

#[derive(Debug, sqlx::FromRow)]
struct FeedRow {
    id: String,
    record_id: i64,
    record_type: String,
    timestamp: DateTime<Utc>,
    summary: Option<String>,
    user_id: Option<i64>,
    cid: Option<String>,
    status: Option<String>,
}

const REQUEST_FIELDS: &[&str] = &[
    "id",
    "method",
    "endpoint",
    "response_code",
    "remote_address",
    "timestamp",
    "cid",
    "user_id",
];
const AUDIT_FIELDS: &[&str] = &[
    "id",
    "content_type",
    "object_id",
    "action",
    "changes",
    "cid",
    "remote_addr",
    "remote_port",
    "timestamp",
    "actor_id",
];
const TASK_FIELDS: &[&str] = &[
    "id",
    "task_id",
    "periodic_task_name",
    "task_name",
    "task_args",
    "task_kwargs",
    "status",
    "worker",
    "content_type",
    "content_encoding",
    "result",
    "date_created",
    "date_started",
    "date_done",
    "traceback",
    "meta",
];
const FEED_FIELDS: &[&str] = &[
    "id",
    "record_id",
    "record_type",
    "timestamp",
    "summary",
    "user_id",
    "cid",
    "status",
];

/// One staff-only log: its list conventions, the columns it reads, its default order and
/// its representation.
trait LogView: FetchRow {
    /// The representation: renders the responses and documents them.
    type Repr: Serialize + Send;
    const SPEC: ListSpec;
    const FIELDS: &'static [&'static str];
    const DEFAULT_ORDER: &'static [(&'static str, bool)];

    fn represent(
        db: &Db,
        tz: Tz,
        rows: &[Self],
    ) -> impl Future<Output = Result<Vec<Self::Repr>, ApiError>> + Send;
}

impl LogView for RequestRow {
    type Repr = RequestLogDoc;
    const SPEC: ListSpec = REQUESTS;
    const FIELDS: &'static [&'static str] = REQUEST_FIELDS;
    const DEFAULT_ORDER: &'static [(&'static str, bool)] = &[];

    async fn represent(db: &Db, tz: Tz, rows: &[Self]) -> Result<Vec<RequestLogDoc>, ApiError> {
        let ids: Vec<i64> = rows.iter().filter_map(|r| r.user_id).collect();
        let users = users_by_id(db, &ids).await?;
        Ok(rows
            .iter()
            .map(|r| RequestLogDoc {
                id: r.id,
                _user: r.user_id.and_then(|u| users.get(&u).cloned()),
                method: r.method.clone(),
                endpoint: r.endpoint.clone(),
                response_code: r.response_code,
                remote_address: r.remote_address.clone(),
                timestamp: render_datetime(&r.timestamp, tz),
                cid: r.cid.clone(),
                user: r.user_id,
            })
            .collect())
    }
}

impl LogView for AuditRow {
    type Repr = AuditLogDoc;
    const SPEC: ListSpec = AUDIT;
    const FIELDS: &'static [&'static str] = AUDIT_FIELDS;
    const DEFAULT_ORDER: &'static [(&'static str, bool)] = &[("timestamp", true)];

    async fn represent(db: &Db, tz: Tz, rows: &[Self]) -> Result<Vec<AuditLogDoc>, ApiError> {
        let ids: Vec<i64> = rows.iter().filter_map(|r| r.actor_id).collect();
        let users = users_by_id(db, &ids).await?;
        Ok(rows
            .iter()
            .map(|r| AuditLogDoc {
                id: r.id,
                record_name: r.content_type.clone(),
                record_id: r.object_id,
                action: crate::store::audit::action_label(r.action).to_string(),
                changes: r
                    .changes
                    .clone()
                    .and_then(super::summaries::Embedded::parse),
                cid: r.cid.clone(),
                remote_addr: r.remote_addr.clone(),
                remote_port: r.remote_port,
                timestamp: render_datetime(&r.timestamp, tz),
                actor: r.actor_id,
                _actor: r.actor_id.and_then(|u| users.get(&u).cloned()),
            })
            .collect())
    }
}

impl LogView for TaskRow {
    type Repr = TaskResultDoc;
    const SPEC: ListSpec = TASKS;
    const FIELDS: &'static [&'static str] = TASK_FIELDS;
    const DEFAULT_ORDER: &'static [(&'static str, bool)] = &[("date_done", true)];

    async fn represent(_db: &Db, tz: Tz, rows: &[Self]) -> Result<Vec<TaskResultDoc>, ApiError> {
        Ok(rows
            .iter()
            .map(|r| TaskResultDoc {
                id: r.id,
                task_id: r.task_id.clone(),
                periodic_task_name: r.periodic_task_name.clone(),
                task_name: r.task_name.clone(),
                task_args: r.task_args.clone(),
                task_kwargs: r.task_kwargs.clone(),
                status: r.status.clone(),
                worker: r.worker.clone(),
                content_type: r.content_type.clone(),
                content_encoding: r.content_encoding.clone(),
                result: r.result.clone(),
                date_created: render_datetime(&r.date_created, tz),
                date_started: r.date_started.map(|d| render_datetime(&d, tz)),
                date_done: render_datetime(&r.date_done, tz),
                traceback: r.traceback.clone(),
                meta: r.meta.clone(),
            })
            .collect())
    }
}

impl LogView for FeedRow {
    type Repr = FeedEntryDoc;
    const SPEC: ListSpec = FEED;
    const FIELDS: &'static [&'static str] = FEED_FIELDS;
    const DEFAULT_ORDER: &'static [(&'static str, bool)] = &[("timestamp", true)];

    async fn represent(db: &Db, tz: Tz, rows: &[Self]) -> Result<Vec<FeedEntryDoc>, ApiError> {
        let ids: Vec<i64> = rows.iter().filter_map(|r| r.user_id).collect();
        let users = users_by_id(db, &ids).await?;
        Ok(rows
            .iter()
            .map(|r| FeedEntryDoc {
                id: r.id.clone(),
                _user: r.user_id.and_then(|u| users.get(&u).cloned()),
                record_id: r.record_id,
                record_type: r.record_type.clone(),
                timestamp: render_datetime(&r.timestamp, tz),
                summary: r.summary.clone(),
                cid: r.cid.clone(),
                status: r.status.clone(),
                user: r.user_id,
            })
            .collect())
    }
}

/// One staff-only list: parse, page in the log's default order, represent.
async fn staff_list<R: LogView>(
    req: &Request,
    depot: &Depot,
) -> Result<listing::Envelope<Vec<R::Repr>>, ApiError> {
    let (app, _) = context(depot)?;
    let (rows, page) = listing::page_ordered::<R>(
        req,
        &app.db,
        app.timezone,
        &R::SPEC,
        R::FIELDS,
        &|_| {},
        R::DEFAULT_ORDER,
    )
    .await?;
    let results = R::represent(&app.db, app.timezone, &rows).await?;
    Ok(page.envelope(results))
}

/// One staff-only record by id; `model` names it in the 404 message.
async fn staff_item<R: LogView>(
    req: &Request,
    depot: &Depot,
    model: &str,
) -> Result<Value, ApiError> {
    let (app, _) = context(depot)?;
    let id = path_id(req)?;
    let mut q = Query::select();
    q.columns(R::FIELDS.iter().map(|f| Alias::new(*f)))
        .from(Alias::new(R::SPEC.table))
        .and_where(Expr::col(Alias::new("id")).eq(id));
    let rows: Vec<R> = crate::store::fetch_all(&app.db, &q).await?;
    if rows.is_empty() {
        return Err(ApiError::no_match(model));
    }
    let represented = R::represent(&app.db, app.timezone, &rows).await?;
    serde_json::to_value(represented.first()).map_err(|_| ApiError::Internal)
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "RequestLog"))]
pub struct RequestLogDoc {
    pub id: i64,
    #[salvo(schema(value_type = Option<super::summaries::UserSummaryDoc>))]
    pub _user: Option<super::summaries::Embedded>,
    pub method: String,
    pub endpoint: String,
    pub response_code: i32,
    pub remote_address: Option<String>,
    pub timestamp: String,
    pub cid: Option<String>,
    pub user: Option<i64>,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "PaginatedRequestLogList"))]
pub struct RequestLogPage {
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<RequestLogDoc>,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "AuditLog"))]
pub struct AuditLogDoc {
    pub id: i64,
    pub record_name: String,
    pub record_id: Option<i64>,
    pub action: String,
    #[salvo(schema(value_type = Option<serde_json::Map<String, Value>>))]
    pub changes: Option<super::summaries::Embedded>,
    pub cid: Option<String>,
    pub remote_addr: Option<String>,
    pub remote_port: Option<i32>,
    pub timestamp: String,
    pub actor: Option<i64>,
    #[salvo(schema(value_type = Option<super::summaries::UserSummaryDoc>))]
    pub _actor: Option<super::summaries::Embedded>,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "PaginatedAuditLogList"))]
pub struct AuditLogPage {
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<AuditLogDoc>,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "TaskResult"))]
pub struct TaskResultDoc {
    pub id: i64,
    pub task_id: String,
    pub periodic_task_name: Option<String>,
    pub task_name: Option<String>,
    pub task_args: Option<String>,
    pub task_kwargs: Option<String>,
    pub status: String,
    pub worker: Option<String>,
    pub content_type: String,
    pub content_encoding: String,
    pub result: Option<String>,
    pub date_created: String,
    pub date_started: Option<String>,
    pub date_done: String,
    pub traceback: Option<String>,
    pub meta: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "PaginatedTaskResultList"))]
pub struct TaskResultPage {
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<TaskResultDoc>,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "FeedEntry"))]
pub struct FeedEntryDoc {
    pub id: String,
    #[salvo(schema(value_type = Option<super::summaries::UserSummaryDoc>))]
    pub _user: Option<super::summaries::Embedded>,
    pub record_id: i64,
    pub record_type: String,
    pub timestamp: String,
    pub summary: Option<String>,
    pub cid: Option<String>,
    pub status: Option<String>,
    pub user: Option<i64>,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "PaginatedFeedEntryList"))]
pub struct FeedEntryPage {
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<FeedEntryDoc>,
}

/// The log index: links to the three log collections.
#[handler]
pub async fn index(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = context(depot).map(|(_, _caller)| {
        let base = super::base_url(req);
        json!({
            "audit": format!("{base}/logs/audit/"),
            "requests": format!("{base}/logs/requests/"),
            "tasks": format!("{base}/logs/tasks/"),
        })
    });
    super::respond(res, StatusCode::OK, result);
}

/// List request logs.
///
/// Returns a list of HTTP request records. Staff only.
#[endpoint(
    operation_id = "logs_requests_list",
    tags("Admin - Logging"),
    responses((status_code = 200, description = "", body = RequestLogPage))
)]
pub async fn requests(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    super::respond(
        res,
        StatusCode::OK,
        staff_list::<RequestRow>(req, depot).await,
    );
}

/// Retrieve a request log.
///
/// Returns one HTTP request record. Staff only.
#[endpoint(
    operation_id = "logs_requests_retrieve",
    tags("Admin - Logging"),
    parameters(("id" = i64, Path, description = "A unique integer value identifying this request log.")),
    responses((status_code = 200, description = "", body = RequestLogDoc))
)]
pub async fn request(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = staff_item::<RequestRow>(req, depot, "RequestLog").await;
    super::respond(res, StatusCode::OK, result);
}

/// List audit log entries.
///
/// Returns the record change history, newest first. Staff only.
#[endpoint(
    operation_id = "logs_audit_list",
    tags("Admin - Logging"),
    responses((status_code = 200, description = "", body = AuditLogPage))
)]
pub async fn audit_entries(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    super::respond(
        res,
        StatusCode::OK,
        staff_list::<AuditRow>(req, depot).await,
    );
}

/// Retrieve an audit log entry.
///
/// Returns one record change. Staff only.
#[endpoint(
    operation_id = "logs_audit_retrieve",
    tags("Admin - Logging"),
    parameters(("id" = i64, Path, description = "A unique integer value identifying this log entry.")),
    responses((status_code = 200, description = "", body = AuditLogDoc))
)]
pub async fn audit_entry(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = staff_item::<AuditRow>(req, depot, "LogEntry").await;
    super::respond(res, StatusCode::OK, result);
}

/// List task results.
///
/// Returns background task runs, most recently finished first. Staff only.
#[endpoint(
    operation_id = "logs_tasks_list",
    tags("Admin - Logging"),
    responses((status_code = 200, description = "", body = TaskResultPage))
)]
pub async fn tasks(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    super::respond(res, StatusCode::OK, staff_list::<TaskRow>(req, depot).await);
}

/// Retrieve a task result.
///
/// Returns one background task run. Staff only.
#[endpoint(
    operation_id = "logs_tasks_retrieve",
    tags("Admin - Logging"),
    parameters(("id" = i64, Path, description = "A unique integer value identifying this task result.")),
    responses((status_code = 200, description = "", body = TaskResultDoc))
)]
pub async fn task(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = staff_item::<TaskRow>(req, depot, "TaskResult").await;
    super::respond(res, StatusCode::OK, result);
}

/// List the activity feed.
///
/// Returns requests, task runs and record changes merged, newest first. Staff only.
#[endpoint(
    operation_id = "logs_feed_list",
    tags("Logging - Feed"),
    responses((status_code = 200, description = "", body = FeedEntryPage))
)]
pub async fn feed(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    super::respond(res, StatusCode::OK, staff_list::<FeedRow>(req, depot).await);
}

/// The routes of the log views.
pub fn routes() -> crate::web::route::Routes {
    use crate::web::route::{Endpoint, Routes};
    // A staff-only read view (the route refuses everyone else, OPTIONS included; writes
    // are 405): GET and HEAD, OPTIONS, format suffix.
    macro_rules! staff_view {
        ($path:literal, $handler:ident) => {
            Endpoint::staff($path)
                .get($handler)
                .head($handler)
                .options(super::meta("Log", ""))
                .format_suffix()
        };
    }
    Routes::new()
        .push(
            Endpoint::protected("logs/")
                .get(index)
                .head(index)
                .options(super::meta("Log Index", ""))
                .format_suffix(),
        )
        .push(staff_view!("logs/requests/", requests))
        .push(staff_view!("logs/requests/{id}/", request))
        .push(staff_view!("logs/audit/", audit_entries))
        .push(staff_view!("logs/audit/{id}/", audit_entry))
        .push(staff_view!("logs/tasks/", tasks))
        .push(staff_view!("logs/tasks/{id}/", task))
        .push(
            Endpoint::staff("logs/feed/")
                .get(feed)
                .head(feed)
                .options(super::meta("Log", "")),
        )
}
