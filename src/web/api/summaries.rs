//! Nested `_x` summaries (domain.md §4) fetched in bulk for a whole page, and the value
//! formats of response bodies (§1.5).

use crate::store::users::User;
use crate::store::{Db, DbError};
use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use salvo::oapi::ToSchema;
use sea_query::{Alias, Expr, ExprTrait, Query};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Arc;

/// ISO 8601; microseconds only when non-zero (then exactly six digits); `Z` for UTC, else the
/// offset of `tz`, the site's zone (`server.timezone`).
pub fn render_datetime(dt: &DateTime<Utc>, tz: Tz) -> String {
    let secs = if dt.timestamp_subsec_micros() == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::Micros
    };
    if tz == chrono_tz::UTC {
        dt.to_rfc3339_opts(secs, true)
    } else {
        dt.with_timezone(&tz).to_rfc3339_opts(secs, false)
    }
}

pub fn render_opt_datetime(dt: &Option<DateTime<Utc>>, tz: Tz) -> Value {
    dt.as_ref()
        .map(|d| Value::String(render_datetime(d, tz)))
        .unwrap_or(Value::Null)
}

// The nested summaries as the OpenAPI document names them (the `_x` fields of every
// representation that embeds them).

// Each is built by the function that renders it (`team_summary`, `user_summary`,
// `history`), so the body and the document cannot drift apart.

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "TeamSummary"))]
pub struct TeamSummaryDoc {
    pub id: i64,
    pub slug: String,
    pub name: String,
    pub is_active: bool,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "ClusterSummary"))]
pub struct ClusterSummaryDoc {
    pub id: i64,
    #[salvo(schema(max_length = 50))]
    pub name: String,
    pub enabled: bool,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "UserSummary"))]
pub struct UserSummaryDoc {
    pub id: i64,
    pub username: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub display_name: String,
    pub abbreviation: String,
    pub email: Option<String>,
    pub department: Option<String>,
    pub role: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[salvo(schema(name = "AuditLogSummary"))]
pub struct AuditLogSummaryDoc {
    pub id: i64,
    pub timestamp: String,
    pub action: String,
    pub actor: Option<i64>,
    #[salvo(schema(value_type = Option<UserSummaryDoc>))]
    pub _actor: Option<Embedded>,
    #[salvo(schema(value_type = Option<serde_json::Map<String, Value>>))]
    pub changes: Option<Embedded>,
}

/// A nested summary rendered to JSON once per page and embedded wherever it appears (a user
/// may be the submitter of one request, an assignee of another and the author of comments):
/// cloning shares the text, serialising writes it as it is.
#[derive(Debug, Clone)]
pub struct Embedded(Arc<RawValue>);

impl Embedded {
    /// `summary` as JSON text (serialising these types cannot fail; null if it did).
    pub fn of(summary: &impl Serialize) -> Embedded {
        serde_json::value::to_raw_value(summary)
            .map(|raw| Embedded(raw.into()))
            .unwrap_or_else(|_| Embedded::null())
    }

    /// Stored JSON text, embedded as it is; None unless it is one JSON value.
    pub fn parse(text: String) -> Option<Embedded> {
        RawValue::from_string(text)
            .ok()
            .map(|raw| Embedded(raw.into()))
    }

    pub fn null() -> Embedded {
        Embedded(Arc::from(RawValue::NULL.to_owned()))
    }
}

impl Serialize for Embedded {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// "first last" when both are set, else the first name, else the username.
pub fn display_name(u: &User) -> String {
    match (non_empty(&u.first_name), non_empty(&u.last_name)) {
        (Some(f), Some(l)) => format!("{f} {l}"),
        (Some(f), None) => f.to_string(),
        _ => u.username.clone(),
    }
}

/// Initials of first and last name, else the first initial, else two username characters.
pub fn abbreviation(u: &User) -> String {
    let first = |s: &str| s.chars().next().map(|c| c.to_string()).unwrap_or_default();
    let abbr = match (non_empty(&u.first_name), non_empty(&u.last_name)) {
        (Some(f), Some(l)) => format!("{}{}", first(f), first(l)),
        (Some(f), None) => first(f),
        _ => u.username.chars().take(2).collect(),
    };
    abbr.to_uppercase()
}

pub fn user_summary(u: &User) -> Embedded {
    Embedded::of(&UserSummaryDoc {
        id: u.id,
        username: u.username.clone(),
        first_name: u.first_name.clone(),
        last_name: u.last_name.clone(),
        display_name: display_name(u),
        abbreviation: abbreviation(u),
        email: u.email.clone(),
        department: u.department.clone(),
        role: u.role.clone(),
    })
}

fn user_columns() -> Vec<Alias> {
    crate::store::users::USER_COLUMNS
        .split(", ")
        .map(Alias::new)
        .collect()
}

/// Users by id (one query).
async fn load_users(db: &Db, ids: &[i64]) -> Result<Vec<User>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut q = Query::select();
    q.columns(user_columns())
        .from(Alias::new("users_user"))
        .and_where(Expr::col(Alias::new("id")).is_in(ids));
    crate::store::fetch_all(db, &q).await
}

/// UserSummary objects by id (one query).
pub async fn users_by_id(db: &Db, ids: &[i64]) -> Result<HashMap<i64, Embedded>, DbError> {
    Ok(load_users(db, ids)
        .await?
        .iter()
        .map(|u| (u.id, user_summary(u)))
        .collect())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TeamRow {
    pub id: i64,
    pub name: String,
    pub slug: String,
    pub is_active: bool,
}

pub fn team_summary(t: &TeamRow) -> Embedded {
    Embedded::of(&TeamSummaryDoc {
        id: t.id,
        slug: t.slug.clone(),
        name: t.name.clone(),
        is_active: t.is_active,
    })
}

/// TeamSummary objects by id (one query).
pub async fn teams_by_id(db: &Db, ids: &[i64]) -> Result<HashMap<i64, Embedded>, DbError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut q = Query::select();
    q.columns(["id", "name", "slug", "is_active"].map(Alias::new))
        .from(Alias::new("users_team"))
        .and_where(Expr::col(Alias::new("id")).is_in(ids.to_vec()));
    let rows: Vec<TeamRow> = crate::store::fetch_all(db, &q).await?;
    Ok(rows.iter().map(|t| (t.id, team_summary(t))).collect())
}

#[derive(sqlx::FromRow)]
struct ClusterSummaryRow {
    id: i64,
    name: String,
    enabled: bool,
}

/// A cluster's summary, and its name to order by.
#[derive(Debug, Clone)]
pub struct ClusterSummary {
    pub name: String,
    pub summary: Embedded,
}

/// ClusterSummary objects by id (one query).
pub async fn clusters_by_id(db: &Db, ids: &[i64]) -> Result<HashMap<i64, ClusterSummary>, DbError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut q = Query::select();
    q.columns(["id", "name", "enabled"].map(Alias::new))
        .from(Alias::new("allocations_cluster"))
        .and_where(Expr::col(Alias::new("id")).is_in(ids.to_vec()));
    let rows: Vec<ClusterSummaryRow> = crate::store::fetch_all(db, &q).await?;
    Ok(rows
        .into_iter()
        .map(|c| {
            let summary = Embedded::of(&ClusterSummaryDoc {
                id: c.id,
                name: c.name.clone(),
                enabled: c.enabled,
            });
            let name = c.name;
            (c.id, ClusterSummary { name, summary })
        })
        .collect())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MembershipRow {
    pub id: i64,
    pub role: String,
    pub user_id: i64,
    pub team_id: i64,
}

/// Memberships where `column` (`user_id` or `team_id`) is one of `ids` (one query).
pub async fn memberships_where(
    db: &Db,
    column: &str,
    ids: &[i64],
) -> Result<Vec<MembershipRow>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = Query::select();
    q.columns(["id", "role", "user_id", "team_id"].map(Alias::new))
        .from(Alias::new("users_membership"))
        .and_where(Expr::col(Alias::new(column)).is_in(ids.to_vec()))
        .order_by(Alias::new("id"), sea_query::Order::Asc);
    crate::store::fetch_all(db, &q).await
}

/// `_history` for a page: entries of `content_type` for `ids`, newest first, with `_actor`
/// summaries, in two queries whatever the page size; timestamps in the site's zone `tz`.
/// `changes` is embedded as stored ([`crate::store::audit::changes`]), not parsed per entry.
pub async fn history(
    db: &Db,
    tz: Tz,
    content_type: &str,
    ids: &[i64],
) -> Result<HashMap<i64, Vec<AuditLogSummaryDoc>>, DbError> {
    let mut out: HashMap<i64, Vec<AuditLogSummaryDoc>> = HashMap::new();
    let rows = crate::store::audit::entries(db, content_type, ids).await?;
    let actor_ids: Vec<i64> = rows.iter().filter_map(|r| r.actor_id).collect();
    let actors = users_by_id(db, &actor_ids).await?;
    for r in rows {
        let Some(object_id) = r.object_id else {
            continue;
        };
        out.entry(object_id).or_default().push(AuditLogSummaryDoc {
            id: r.id,
            timestamp: render_datetime(&r.timestamp, tz),
            action: crate::store::audit::action_label(r.action).to_string(),
            actor: r.actor_id,
            _actor: r.actor_id.and_then(|a| actors.get(&a).cloned()),
            changes: r.changes.and_then(Embedded::parse),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(first: Option<&str>, last: Option<&str>, username: &str) -> User {
        User {
            id: 1,
            first_name: first.map(str::to_string),
            last_name: last.map(str::to_string),
            ..User::new(username)
        }
    }

    #[test]
    fn display_name_and_abbreviation_follow_the_spec_examples() {
        let u = user(Some("Ann"), Some("Lee"), "ann");
        assert_eq!(
            (display_name(&u), abbreviation(&u)),
            ("Ann Lee".into(), "AL".into())
        );
        let u = user(Some(""), Some("Smith"), "q");
        assert_eq!(
            (display_name(&u), abbreviation(&u)),
            ("q".into(), "Q".into())
        );
        let u = user(None, None, "zed");
        assert_eq!(
            (display_name(&u), abbreviation(&u)),
            ("zed".into(), "ZE".into())
        );
    }

    #[test]
    fn datetimes_render_with_z_and_micros_only_when_non_zero() {
        let dt = DateTime::parse_from_rfc3339("2026-11-26T07:31:35.524305Z")
            .expect("dt")
            .with_timezone(&Utc);
        assert_eq!(render_datetime(&dt, Tz::UTC), "2026-11-26T07:31:35.524305Z");
        let dt = DateTime::parse_from_rfc3339("2026-11-26T07:31:35Z")
            .expect("dt")
            .with_timezone(&Utc);
        assert_eq!(render_datetime(&dt, Tz::UTC), "2026-11-26T07:31:35Z");
        // Another zone: its offset instead of `Z`, the same instant.
        assert_eq!(
            render_datetime(&dt, chrono_tz::America::New_York),
            "2026-11-26T02:31:35-05:00"
        );
    }
}
