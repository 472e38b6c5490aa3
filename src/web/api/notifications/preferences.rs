//! `/notifications/preferences/` (domain.md §9.2, §3.7.2): one optional row per user; a
//! user without one gets the defaults (`[30, 14]`, notify on expiration). Staff may manage
//! anyone's row, other users only their own. Preferences are not audited.

use crate::domain::notifications::DEFAULT_THRESHOLDS;
use crate::domain::validation::{NOT_NULL, Validator};
use crate::on_db;
use crate::store::{Db, Tx};
use crate::web::ApiError;
use crate::web::api::Caller;
use crate::web::api::body::Body;
use crate::web::api::list::{Column, Kind, ListSpec, search_via};
use crate::web::api::resource::{Docs, Field, Policy, Resource, Val};
use crate::web::api::summaries;
use crate::web::api::summaries::UserSummaryDoc;
use chrono_tz::Tz;
use salvo::oapi::ToSchema;
use sea_query::{Alias, Expr, ExprTrait, SelectStatement};
use serde::Serialize;
use serde_json::{Map, Value};

const MODEL: &str = "Preference";
pub const TABLE: &str = "notifications_preference";
const TAKEN: &str = "preference with this user already exists.";
const OTHER_USER: &str = "User field cannot be set to a different user than the request submitter.";

const FIELDS: [Field<PreferenceRow>; 4] = [
    Field::id(|p| Val::Int(p.id)),
    // JSON text; neither filtered nor ordered on.
    Field::new("request_expiry_thresholds", Kind::Text, |p| {
        Val::Text(p.request_expiry_thresholds.clone())
    }),
    Field::new("notify_on_expiration", Kind::Bool, |p| {
        Val::Bool(p.notify_on_expiration)
    }),
    Field::new("user", Kind::Fk("users_user"), |p| Val::Int(p.user_id)),
];

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

// A preference as the API renders and documents it (a doc comment here would become the
// schema's description).
#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "Preference"))]
pub struct Preference {
    pub id: i64,
    #[salvo(schema(value_type = UserSummaryDoc))]
    pub _user: Option<crate::web::api::summaries::Embedded>,
    /// Any JSON value; by default `[30, 14]`.
    pub request_expiry_thresholds: Value,
    pub notify_on_expiration: bool,
    pub user: i64,
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
}

/// List scope: staff see every row, other users their own.
fn scope(q: &mut SelectStatement, caller: &Caller) {
    if !caller.is_staff() {
        q.and_where(Expr::col(Alias::new("user_id")).eq(caller.id()));
    }
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

/// Validates a body; `current` is the row being updated. Every key is optional, so a full
/// update behaves like a partial one (domain.md §9.2): omitted keys keep their stored values
/// (or the defaults on create; `user` = the caller).
async fn validate(
    db: &Db,
    caller: &Caller,
    body: &Body,
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

/// The preference resource.
pub struct Preferences;

crate::document_resource!(Preferences);

impl Resource for Preferences {
    type Row = PreferenceRow;
    type Repr = Preference;
    type Extra = ();

    const PATH: &'static str = "notifications/preferences/";
    const TABLE: &'static str = TABLE;
    const CONTENT_TYPE: &'static str = "notifications | Preference";
    const AUDITED: bool = false;
    const MODEL: &'static str = MODEL;
    const FIELDS: &'static [Field<PreferenceRow>] = &FIELDS;
    const SPEC: ListSpec = SPEC;
    /// Anyone for their own row (`check_record`), staff for any.
    const POLICY: Policy = Policy::OPEN;
    const DOCS: Docs = Docs {
        tag: "Notifications - Preferences",
        id: "A unique integer value identifying this preference.",
        list_name: "Preference List",
        item_name: "Preference Instance",
        list: (
            "List notification preferences.",
            "Returns a list of notification preferences. Non-staff users are only returned \
             their own preferences. Staff users are returned all preferences.",
        ),
        retrieve: (
            "Retrieve a notification preference.",
            "Returns a single notification preference by its ID. Access is granted to staff \
             users and the preference owner.",
        ),
        create: (
            "Create a custom notification preference.",
            "Creates a custom notification preference in lieu of application defaults. The \
             `user` field defaults to the authenticated user if not specified. Access is \
             granted to staff users and the preference owner.",
        ),
        update: (
            "Update a notification preference.",
            "Replaces an existing notification preference with new values. Access is granted \
             to staff users and the preference owner.",
        ),
        partial_update: (
            "Partially update a notification preference.",
            "Partially updates an existing notification preference with new values. Access \
             is granted to staff users and the preference owner.",
        ),
        destroy: (
            "Delete a notification preference.",
            "Deletes a single notification preference by ID, restoring default settings. \
             Access is granted to staff users and the preference owner.",
        ),
    };

    crate::record_id!();

    /// Not audited: never called.
    async fn repr(_tx: &mut Tx, row: &PreferenceRow) -> Result<String, ApiError> {
        Ok(format!("Preference #{}", row.id))
    }

    async fn validate(
        db: &Db,
        caller: &Caller,
        body: &Body,
        _partial: bool,
        current: Option<&PreferenceRow>,
    ) -> Result<(PreferenceRow, ()), ApiError> {
        Ok((validate(db, caller, body, current).await?, ()))
    }

    async fn represent(
        db: &Db,
        _tz: Tz,
        rows: &[PreferenceRow],
    ) -> Result<Vec<Preference>, ApiError> {
        let user_ids: Vec<i64> = rows.iter().map(|r| r.user_id).collect();
        let users = summaries::users_by_id(db, &user_ids).await?;
        Ok(rows
            .iter()
            .map(|r| Preference {
                id: r.id,
                _user: users.get(&r.user_id).cloned(),
                request_expiry_thresholds: r.thresholds_json(),
                notify_on_expiration: r.notify_on_expiration,
                user: r.user_id,
            })
            .collect())
    }

    fn scope(q: &mut SelectStatement, caller: &Caller) {
        scope(q, caller)
    }

    /// The owner or staff (403).
    async fn check_record(_db: &Db, caller: &Caller, row: &PreferenceRow) -> Result<(), ApiError> {
        ApiError::forbidden_unless(caller.is_staff() || row.user_id == caller.id())
    }

    /// A concurrent creation for the same user surfaces as the same field error.
    fn duplicate() -> Option<ApiError> {
        Some(ApiError::field("user", TAKEN))
    }
}
