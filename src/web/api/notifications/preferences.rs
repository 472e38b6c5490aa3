//! `/notifications/preferences/` (domain.md §9.2, §3.7.2): one optional row per user; a
//! user without one gets the defaults (`[30, 14]`, notify on expiration). Staff may manage
//! anyone's row, other users only their own.

use crate::domain::notifications::{DEFAULT_THRESHOLDS, thresholds_of};
use crate::on_db;
use crate::store::Db;
use crate::web::ApiError;
use crate::web::api::fields::{NOT_NULL, Validator};
use crate::web::api::list::{self as listing, Column, Kind, ListSpec, search_via};
use crate::web::api::summaries::{self, user_summary};
use crate::web::api::{Caller, body, context, path_id};
use salvo::http::StatusCode;
use salvo::oapi::ToSchema;
use salvo::prelude::*;
use sea_query::{Alias, Expr, ExprTrait, SelectStatement};
use serde::Serialize;
use serde_json::{Map, Value, json};

const MODEL: &str = "Preference";
pub const TABLE: &str = "notifications_preference";
const TAKEN: &str = "preference with this user already exists.";
const OTHER_USER: &str = "User field cannot be set to a different user than the request submitter.";

const FILTERS: &[Column] = &[
    Column::new("id", Kind::Int),
    Column::new("notify_on_expiration", Kind::Bool),
];

const ORDER: &[Column] = &[
    Column::new("id", Kind::Int),
    Column::new("notify_on_expiration", Kind::Bool),
    Column::new("user", Kind::Fk("users_user")),
];

pub const SPEC: ListSpec = ListSpec {
    table: TABLE,
    filters: FILTERS,
    order: ORDER,
    search: &[
        search_via(&[("user_id", "users_user")], "username"),
        search_via(&[("user_id", "users_user")], "first_name"),
        search_via(&[("user_id", "users_user")], "last_name"),
    ],
};

const SELECT_COLUMNS: [&str; 4] = [
    "id",
    "request_expiry_thresholds",
    "notify_on_expiration",
    "user_id",
];

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "Preference"))]
pub struct PreferenceDoc {
    pub id: i64,
    pub _user: crate::web::api::users::UserSummaryDoc,
    /// Any JSON value; by default `[30, 14]`.
    pub request_expiry_thresholds: Value,
    pub notify_on_expiration: bool,
    pub user: i64,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "PaginatedPreferenceList"))]
pub struct PreferencePage {
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<PreferenceDoc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PreferenceRow {
    pub id: i64,
    /// JSON text, any value.
    pub request_expiry_thresholds: String,
    pub notify_on_expiration: bool,
    pub user_id: i64,
}

impl PreferenceRow {
    pub fn thresholds_json(&self) -> Value {
        serde_json::from_str(&self.request_expiry_thresholds)
            .unwrap_or_else(|_| Value::String(self.request_expiry_thresholds.clone()))
    }

    /// The thresholds the notification jobs use: a list of integers, or none at all
    /// when the stored value is anything else (it is not validated on input).
    pub fn thresholds(&self) -> Vec<i64> {
        thresholds_of(&self.thresholds_json())
    }
}

async fn row_for_user(db: &Db, user_id: i64) -> Result<Option<PreferenceRow>, ApiError> {
    Ok(on_db!(db, |p| sqlx::query_as(
        "SELECT id, request_expiry_thresholds, notify_on_expiration, user_id \
         FROM notifications_preference WHERE user_id = $1"
    )
    .bind(user_id)
    .fetch_optional(p)
    .await)?)
}

/// A user's preference, created with the defaults on first use (background jobs).
pub async fn get_or_create(db: &Db, user_id: i64) -> Result<PreferenceRow, ApiError> {
    if let Some(row) = row_for_user(db, user_id).await? {
        return Ok(row);
    }
    let defaults = serde_json::to_string(&DEFAULT_THRESHOLDS).unwrap_or_default();
    // A concurrent creation wins; read whatever row exists afterwards.
    on_db!(db, |p| sqlx::query(
        "INSERT INTO notifications_preference (request_expiry_thresholds, notify_on_expiration, \
         user_id) VALUES ($1, TRUE, $2) ON CONFLICT (user_id) DO NOTHING"
    )
    .bind(&defaults)
    .bind(user_id)
    .execute(p)
    .await
    .map(|_| ()))?;
    row_for_user(db, user_id)
        .await?
        .ok_or_else(|| ApiError::no_match(MODEL))
}

/// List scope: staff see every row, other users their own.
fn scope(q: &mut SelectStatement, caller: &Caller) {
    if !caller.is_staff() {
        q.and_where(Expr::col(Alias::new("user_id")).eq(caller.id()));
    }
}

pub async fn represent(db: &Db, rows: &[PreferenceRow]) -> Result<Vec<Value>, ApiError> {
    let user_ids: Vec<i64> = rows.iter().map(|r| r.user_id).collect();
    let users = summaries::load_users(db, &user_ids).await?;
    Ok(rows
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "_user": users.iter().find(|u| u.id == r.user_id).map(user_summary).unwrap_or(Value::Null),
                "request_expiry_thresholds": r.thresholds_json(),
                "notify_on_expiration": r.notify_on_expiration,
                "user": r.user_id,
            })
        })
        .collect())
}

async fn represent_one(db: &Db, r: &PreferenceRow) -> Result<Value, ApiError> {
    Ok(represent(db, std::slice::from_ref(r))
        .await?
        .pop()
        .unwrap_or(Value::Null))
}

/// List notification preferences.
///
/// Returns a list of notification preferences. Non-staff users are only returned their own
/// preferences. Staff users are returned all preferences.
#[endpoint(
    operation_id = "notifications_preferences_list",
    tags("Notifications - Preferences"),
    responses((status_code = 200, description = "", body = PreferencePage))
)]
pub async fn list(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let scope = |q: &mut SelectStatement| scope(q, &caller);
        let (rows, page) = listing::page::<PreferenceRow>(
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

/// The row, if the caller owns it or is staff (404 when missing, 403 otherwise).
async fn accessible(db: &Db, caller: &Caller, id: i64) -> Result<PreferenceRow, ApiError> {
    let me = &caller.user;
    let row: PreferenceRow = on_db!(db, |p| sqlx::query_as(
        "SELECT id, request_expiry_thresholds, notify_on_expiration, user_id \
         FROM notifications_preference WHERE id = $1"
    )
    .bind(id)
    .fetch_optional(p)
    .await)?
    .ok_or_else(|| ApiError::no_match(MODEL))?;
    if !me.is_staff && row.user_id != me.id {
        return Err(ApiError::forbidden());
    }
    Ok(row)
}

/// Retrieve a notification preference.
///
/// Returns a single notification preference by its ID. Access is granted to staff users and
/// the preference owner.
#[endpoint(
    operation_id = "notifications_preferences_retrieve",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this preference.")),
    tags("Notifications - Preferences"),
    responses((status_code = 200, description = "", body = PreferenceDoc))
)]
pub async fn retrieve(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let row = accessible(&app.db, &caller, path_id(req)?).await?;
        represent_one(&app.db, &row).await
    }
    .await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

/// `request_expiry_thresholds`: any JSON value but null. Form encodings carry it as JSON text.
fn json_value(
    v: &mut Validator,
    fields: &Map<String, Value>,
    name: &str,
    form: bool,
) -> Option<Value> {
    let raw = fields.get(name)?;
    match raw {
        Value::Null => {
            v.error(name, NOT_NULL);
            None
        }
        Value::String(s) if form => match serde_json::from_str::<Value>(s) {
            Ok(Value::Null) => {
                v.error(name, NOT_NULL);
                None
            }
            Ok(parsed) => Some(parsed),
            Err(_) => {
                v.error(name, "Value must be valid JSON.");
                None
            }
        },
        other => Some(other.clone()),
    }
}

/// Validates a body; `current` is the row being updated. Every key is optional: omitted
/// keys keep their stored values (or the defaults on create; `user` = the caller).
async fn validate(
    db: &Db,
    caller: &Caller,
    body: &body::Body,
    current: Option<&PreferenceRow>,
) -> Result<PreferenceRow, ApiError> {
    let me = &caller.user;
    body.require_object()?;
    let fields = &body.fields;
    let mut v = Validator::new(fields, true);
    let thresholds = json_value(&mut v, fields, "request_expiry_thresholds", body.form);
    let notify = v.boolean("notify_on_expiration");
    let user = v.pk("user", false);
    if let Some(u) = user {
        let exists: i64 = on_db!(db, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM users_user WHERE id = $1"
        )
        .bind(u)
        .fetch_one(p)
        .await)?;
        if exists == 0 {
            v.error(
                "user",
                format!("Invalid pk \"{u}\" - object does not exist."),
            );
        }
    }
    let owner = user.or(current.map(|c| c.user_id)).unwrap_or(me.id);
    if !v.has_error("user") {
        let taken: i64 = on_db!(db, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM notifications_preference WHERE user_id = $1 AND id <> $2"
        )
        .bind(owner)
        .bind(current.map(|c| c.id).unwrap_or(0))
        .fetch_one(p)
        .await)?;
        if taken > 0 {
            v.error("user", TAKEN);
        } else if let Some(u) = user
            && u != me.id
            && !me.is_staff
        {
            v.error("user", OTHER_USER);
        }
    }
    v.finish()?;
    let thresholds = match thresholds {
        Some(value) => value.to_string(),
        None => match current {
            Some(c) => c.request_expiry_thresholds.clone(),
            None => serde_json::to_string(&DEFAULT_THRESHOLDS).unwrap_or_default(),
        },
    };
    Ok(PreferenceRow {
        id: current.map(|c| c.id).unwrap_or(0),
        request_expiry_thresholds: thresholds,
        notify_on_expiration: notify
            .or(current.map(|c| c.notify_on_expiration))
            .unwrap_or(true),
        user_id: owner,
    })
}

/// A concurrent creation for the same user surfaces as the same field error.
fn user_conflict(e: sqlx::Error) -> ApiError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => ApiError::field("user", TAKEN),
        _ => e.into(),
    }
}

/// Create a custom notification preference.
///
/// Creates a custom notification preference in lieu of application defaults. The `user`
/// field defaults to the authenticated user if not specified. Access is granted to staff
/// users and the preference owner.
#[endpoint(
    operation_id = "notifications_preferences_create",
    tags("Notifications - Preferences"),
    responses((status_code = 201, description = "", body = PreferenceDoc))
)]
pub async fn create(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let body = body::read(req).await?;
        let mut row = validate(&app.db, &caller, &body, None).await?;
        row.id = on_db!(&app.db, |p| sqlx::query_scalar(
            "INSERT INTO notifications_preference (request_expiry_thresholds, \
             notify_on_expiration, user_id) VALUES ($1, $2, $3) RETURNING id"
        )
        .bind(&row.request_expiry_thresholds)
        .bind(row.notify_on_expiration)
        .bind(row.user_id)
        .fetch_one(p)
        .await)
        .map_err(user_conflict)?;
        represent_one(&app.db, &row).await
    }
    .await;
    crate::web::api::respond(res, StatusCode::CREATED, result);
}

async fn update(req: &mut Request, depot: &mut Depot) -> Result<Value, ApiError> {
    let (app, caller) = context(depot)?;
    let current = accessible(&app.db, &caller, path_id(req)?).await?;
    let body = body::read(req).await?;
    let after = validate(&app.db, &caller, &body, Some(&current)).await?;
    on_db!(&app.db, |p| sqlx::query(
        "UPDATE notifications_preference SET request_expiry_thresholds = $1, \
         notify_on_expiration = $2, user_id = $3 WHERE id = $4"
    )
    .bind(&after.request_expiry_thresholds)
    .bind(after.notify_on_expiration)
    .bind(after.user_id)
    .bind(after.id)
    .execute(p)
    .await
    .map(|_| ()))
    .map_err(user_conflict)?;
    represent_one(&app.db, &after).await
}

/// Update a notification preference.
///
/// Replaces an existing notification preference with new values. Access is granted to staff
/// users and the preference owner.
#[endpoint(
    operation_id = "notifications_preferences_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this preference.")),
    tags("Notifications - Preferences"),
    responses((status_code = 200, description = "", body = PreferenceDoc))
)]
pub async fn put(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    // No key is required, so a full update behaves like a partial one (domain.md §9.2).
    let result = update(req, depot).await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

/// Partially update a notification preference.
///
/// Partially updates an existing notification preference with new values. Access is granted
/// to staff users and the preference owner.
#[endpoint(
    operation_id = "notifications_preferences_partial_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this preference.")),
    tags("Notifications - Preferences"),
    responses((status_code = 200, description = "", body = PreferenceDoc))
)]
pub async fn patch(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = update(req, depot).await;
    crate::web::api::respond(res, StatusCode::OK, result);
}

/// Delete a notification preference.
///
/// Deletes a single notification preference by ID, restoring default settings. Access is
/// granted to staff users and the preference owner.
#[endpoint(
    operation_id = "notifications_preferences_destroy",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this preference.")),
    tags("Notifications - Preferences"),
    responses((status_code = 204, description = "No response body"))
)]
pub async fn destroy(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result: Result<(), ApiError> = async {
        let (app, caller) = context(depot)?;
        let row = accessible(&app.db, &caller, path_id(req)?).await?;
        on_db!(&app.db, |p| sqlx::query(
            "DELETE FROM notifications_preference WHERE id = $1"
        )
        .bind(row.id)
        .execute(p)
        .await
        .map(|_| ()))?;
        Ok(())
    }
    .await;
    crate::web::api::no_content(res, result);
}
