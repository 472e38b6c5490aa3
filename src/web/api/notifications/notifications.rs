//! `/notifications/notifications/` (domain.md §9.1): staff list everyone's notifications,
//! other users their own; only the recipient retrieves one or changes its `read` flag.
//! Notifications are created by background jobs and not audited; the API offers no create,
//! full update or delete (405).

use crate::domain::validation::Validator;
use crate::store::{Db, Tx};
use crate::web::ApiError;
use crate::web::api::Caller;
use crate::web::api::body::Body;
use crate::web::api::list::{Column, Kind, ListSpec, search, search_via};
use crate::web::api::resource::{Docs, Field, Op, Policy, Resource, UNOFFERED, Val, Write};
use crate::web::api::summaries::UserSummaryDoc;
use crate::web::api::summaries::{self, render_datetime};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use salvo::oapi::ToSchema;
use sea_query::{Alias, Expr, ExprTrait, SelectStatement};
use serde::Serialize;

const MODEL: &str = "Notification";
pub const TABLE: &str = "notifications_notification";
pub const TYPES: &[&str] = &["GM", "RE", "RD"];

/// Only `read` is written through the API.
const FIELDS: [Field<NotificationRow>; 7] = [
    Field::id(|n| Val::Int(n.id)),
    Field::new("time", Kind::DateTime, |n: &NotificationRow| {
        Val::DateTime(n.time)
    })
    .write(Write::Create),
    Field::new("read", Kind::Bool, |n| Val::Bool(n.read)),
    Field::new("subject", Kind::Text, |n: &NotificationRow| {
        Val::Text(n.subject.clone())
    })
    .write(Write::Create),
    Field::new("message_html", Kind::Text, |n: &NotificationRow| {
        Val::Text(n.message_html.clone())
    })
    .write(Write::Create),
    Field::new(
        "notification_type",
        Kind::Choice(TYPES),
        |n: &NotificationRow| Val::Text(n.notification_type.clone()),
    )
    .write(Write::Create),
    Field::new("user", Kind::Fk("users_user"), |n: &NotificationRow| {
        Val::Int(n.user_id)
    })
    .write(Write::Create),
];

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

// A notification as the API renders and documents it (a doc comment here would become the
// schema's description).
#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "Notification"))]
pub struct Notification {
    pub id: i64,
    pub time: String,
    pub read: bool,
    pub subject: String,
    pub message_html: String,
    pub notification_type: String,
    pub user: i64,
    #[salvo(schema(value_type = UserSummaryDoc))]
    pub _user: Option<crate::web::api::summaries::Embedded>,
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

/// A patch of the recipient's notification: only `read` is writable, every other key is
/// ignored.
fn validate(body: &Body, current: Option<&NotificationRow>) -> Result<NotificationRow, ApiError> {
    body.require_object()?;
    let mut v = Validator::new(&body.fields, true);
    let read = v.boolean("read");
    v.finish()?;
    let mut row = current.cloned().ok_or(ApiError::Internal)?;
    if let Some(read) = read {
        row.read = read;
    }
    Ok(row)
}

/// The notification resource.
pub struct Notifications;

crate::document_resource!(Notifications);

impl Resource for Notifications {
    type Row = NotificationRow;
    type Repr = Notification;
    type Extra = ();

    const PATH: &'static str = "notifications/notifications/";
    const TABLE: &'static str = TABLE;
    const CONTENT_TYPE: &'static str = "notifications | Notification";
    const AUDITED: bool = false;
    const MODEL: &'static str = MODEL;
    const FIELDS: &'static [Field<NotificationRow>] = &FIELDS;
    const SPEC: ListSpec = SPEC;
    /// The recipient only, staff included (`check_record`).
    const POLICY: Policy = Policy::OPEN;
    const DOCS: Docs = Docs {
        tag: "Notifications - Notifications",
        id: "A unique integer value identifying this notification.",
        list_name: "Notification List",
        item_name: "Notification Instance",
        list: (
            "List notifications.",
            "Returns a list of user notifications. Non-staff users are only returned their \
             own notifications. Staff users are returned all notifications.",
        ),
        retrieve: (
            "Retrieve a notification.",
            "Returns a single notification by its ID. Read and patch access is limited to the \
             notification owner.",
        ),
        create: UNOFFERED,
        update: UNOFFERED,
        partial_update: (
            "Partially update a notification.",
            "Updates the `read` status of a notification. Patch access is limited to the \
             notification owner.",
        ),
        destroy: UNOFFERED,
    };
    const OPS: &'static [Op] = &[Op::List, Op::Retrieve, Op::PartialUpdate];

    crate::record_id!();

    /// Not audited: never called.
    async fn repr(_tx: &mut Tx, row: &NotificationRow) -> Result<String, ApiError> {
        Ok(format!("Notification #{}", row.id))
    }

    async fn validate(
        _db: &Db,
        _caller: &Caller,
        body: &Body,
        _partial: bool,
        current: Option<&NotificationRow>,
    ) -> Result<(NotificationRow, ()), ApiError> {
        Ok((validate(body, current)?, ()))
    }

    /// Representations of a page: the recipients in one query whatever the page size.
    async fn represent(
        db: &Db,
        tz: Tz,
        rows: &[NotificationRow],
    ) -> Result<Vec<Notification>, ApiError> {
        let user_ids: Vec<i64> = rows.iter().map(|n| n.user_id).collect();
        let users = summaries::users_by_id(db, &user_ids).await?;
        Ok(rows
            .iter()
            .map(|n| Notification {
                id: n.id,
                time: render_datetime(&n.time, tz),
                read: n.read,
                subject: n.subject.clone(),
                message_html: n.message_html.clone(),
                notification_type: n.notification_type.clone(),
                user: n.user_id,
                _user: users.get(&n.user_id).cloned(),
            })
            .collect())
    }

    fn scope(q: &mut SelectStatement, caller: &Caller) {
        scope(q, caller)
    }

    /// The recipient (403 for anyone else, staff included).
    async fn check_record(
        _db: &Db,
        caller: &Caller,
        row: &NotificationRow,
    ) -> Result<(), ApiError> {
        ApiError::forbidden_unless(row.user_id == caller.id())
    }
}
