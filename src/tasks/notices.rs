//! Upcoming- and past-expiry notices (operations.md §2.8–§2.10). The daily sweeps pick the
//! (user, request) pairs due a notice and enqueue one sender each; a sender checks again
//! (state may have changed), renders the template, records the notification row and only then
//! mails it, so the row's unique (user, type, metadata) key keeps a notice from going out twice.

use super::{SEND_PAST, SEND_UPCOMING, TaskContext, TaskError};
use crate::domain::notifications::{DEFAULT_THRESHOLDS, next_expiry_threshold, thresholds_of};
use crate::infra::mail::{self, MailError, Mailer, Templates};
use crate::on_db;
use crate::store::Db;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use minijinja::Value;
use serde_json::json;
use std::collections::BTreeMap;

/// Notification type codes (domain.md §3.7.1).
const UPCOMING: &str = "RE";
const PAST: &str = "RD";

/// How long the past-expiry sweep waits for a running limit task (§6.4 decision 2), and how
/// old a `STARTED` limit row may be before it counts as abandoned by a dead worker.
const LIMITS_WAIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);
const LIMITS_POLL: std::time::Duration = std::time::Duration::from_secs(5);
const LIMITS_STALE_HOURS: i64 = 2;

#[derive(Debug, Clone, sqlx::FromRow)]
struct UserRow {
    id: i64,
    username: String,
    first_name: Option<String>,
    last_name: Option<String>,
    email: Option<String>,
    date_joined: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct RequestRow {
    id: i64,
    title: String,
    submitted: DateTime<Utc>,
    active: Option<NaiveDate>,
    expire: Option<NaiveDate>,
    team_id: i64,
    team_name: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct TeamRequestRow {
    id: i64,
    title: String,
    submitted: DateTime<Utc>,
    active: Option<NaiveDate>,
    expire: Option<NaiveDate>,
    status: String,
}

const USER_COLUMNS: &str = "u.id, u.username, u.first_name, u.last_name, u.email, u.date_joined";
const REQUEST_COLUMNS: &str =
    "r.id, r.title, r.submitted, r.active, r.expire, r.team_id, t.name AS team_name";

/// Today in `server.timezone` (operations.md: "today").
fn today(ctx: &TaskContext) -> NaiveDate {
    Utc::now()
        .with_timezone(&ctx.config.timezone())
        .date_naive()
}

async fn load_user(db: &Db, id: i64) -> Result<UserRow, TaskError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users_user u WHERE u.id = $1");
    let row: Option<UserRow> = on_db!(db, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(id)
        .fetch_optional(p)
        .await)?;
    row.ok_or_else(|| {
        TaskError::new(
            "DoesNotExist",
            "apps.users.models",
            "User matching query does not exist.",
        )
    })
}

async fn load_request(db: &Db, id: i64) -> Result<RequestRow, TaskError> {
    let sql = format!(
        "SELECT {REQUEST_COLUMNS} FROM allocations_allocationrequest r \
         JOIN users_team t ON t.id = r.team_id WHERE r.id = $1"
    );
    let row: Option<RequestRow> =
        on_db!(db, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .fetch_optional(p)
            .await)?;
    row.ok_or_else(|| {
        TaskError::new(
            "DoesNotExist",
            "apps.allocations.models",
            "AllocationRequest matching query does not exist.",
        )
    })
}

/// Approved requests of active teams whose expiry date is in `(after, until]` (`until`
/// open-ended when `None`).
async fn approved_requests(
    db: &Db,
    after: NaiveDate,
    until: Option<NaiveDate>,
) -> Result<Vec<RequestRow>, TaskError> {
    let sql = format!(
        "SELECT {REQUEST_COLUMNS} FROM allocations_allocationrequest r \
         JOIN users_team t ON t.id = r.team_id \
         WHERE r.status = 'AP' AND t.is_active = TRUE AND r.expire > $1 \
         AND ($2 IS NULL OR r.expire <= $3) ORDER BY r.id"
    );
    Ok(on_db!(db, |p| sqlx::query_as(sqlx::AssertSqlSafe(
        sql.as_str()
    ))
    .bind(after)
    .bind(until.is_some().then_some(1_i64))
    .bind(until)
    .fetch_all(p)
    .await)?)
}

/// Active members of a team, any membership role.
async fn active_members(db: &Db, team_id: i64) -> Result<Vec<UserRow>, TaskError> {
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM users_membership m JOIN users_user u ON u.id = m.user_id \
         WHERE m.team_id = $1 AND u.is_active = TRUE ORDER BY u.id"
    );
    Ok(on_db!(db, |p| sqlx::query_as(sqlx::AssertSqlSafe(
        sql.as_str()
    ))
    .bind(team_id)
    .fetch_all(p)
    .await)?)
}

/// A user's preference (thresholds, notify on expiration), created with the defaults when
/// missing, as upstream's get-or-create does.
async fn preference(db: &Db, user_id: i64) -> Result<(Vec<i64>, bool), TaskError> {
    async fn read(db: &Db, user_id: i64) -> Result<Option<(String, bool)>, sqlx::Error> {
        on_db!(db, |p| sqlx::query_as(
            "SELECT request_expiry_thresholds, notify_on_expiration \
             FROM notifications_preference WHERE user_id = $1"
        )
        .bind(user_id)
        .fetch_optional(p)
        .await)
    }
    let row = match read(db, user_id).await? {
        Some(row) => row,
        None => {
            let defaults = serde_json::to_string(&DEFAULT_THRESHOLDS)
                .unwrap_or_else(|_| "[30, 14]".to_string());
            // A concurrent creation wins; read whichever row exists afterwards.
            on_db!(db, |p| sqlx::query(
                "INSERT INTO notifications_preference (request_expiry_thresholds, \
                 notify_on_expiration, user_id) VALUES ($1, TRUE, $2) \
                 ON CONFLICT (user_id) DO NOTHING"
            )
            .bind(&defaults)
            .bind(user_id)
            .execute(p)
            .await
            .map(|_| ()))?;
            read(db, user_id).await?.unwrap_or((defaults, true))
        }
    };
    let thresholds = serde_json::from_str(&row.0)
        .map(|v| thresholds_of(&v))
        .unwrap_or_default();
    Ok((thresholds, row.1))
}

/// The metadata of the user's notifications of one type.
async fn notification_metadata(
    db: &Db,
    user_id: i64,
    kind: &str,
) -> Result<Vec<serde_json::Value>, TaskError> {
    let rows: Vec<Option<String>> = on_db!(db, |p| sqlx::query_scalar(
        "SELECT CAST(metadata AS TEXT) FROM notifications_notification \
         WHERE user_id = $1 AND notification_type = $2"
    )
    .bind(user_id)
    .bind(kind)
    .fetch_all(p)
    .await)?;
    Ok(rows
        .into_iter()
        .flatten()
        .filter_map(|m| serde_json::from_str(&m).ok())
        .collect())
}

fn meta_int(meta: &serde_json::Value, key: &str) -> Option<i64> {
    meta.get(key).and_then(serde_json::Value::as_i64)
}

/// §2.8 `should_notify`: the days left to announce, or `None` at the first rule that says
/// no. Creates the user's preference when missing.
async fn upcoming_due(
    db: &Db,
    today: NaiveDate,
    user: &UserRow,
    request: &RequestRow,
) -> Result<Option<i64>, TaskError> {
    let Some(expire) = request.expire else {
        return Ok(None);
    };
    if expire <= today {
        return Ok(None);
    }
    let days = (expire - today).num_days();
    let (thresholds, _) = preference(db, user.id).await?;
    let Some(threshold) = next_expiry_threshold(&thresholds, days) else {
        return Ok(None);
    };
    // Thresholds are unvalidated user input: one reaching past the calendar's start puts
    // every join date inside the window (rule 4), so there is nothing to send.
    let Some(horizon) = Duration::try_days(threshold).and_then(|d| today.checked_sub_signed(d))
    else {
        return Ok(None);
    };
    if user.date_joined.date_naive() >= horizon {
        return Ok(None);
    }
    match request.active {
        Some(active) if active < horizon => {}
        _ => return Ok(None),
    }
    let already = notification_metadata(db, user.id, UPCOMING)
        .await?
        .iter()
        .any(|m| {
            meta_int(m, "request_id") == Some(request.id)
                && meta_int(m, "days_to_expire").is_some_and(|d| d <= threshold)
        });
    Ok((!already).then_some(days))
}

/// §2.9 `should_notify`. Creates the user's preference when missing.
async fn past_due(
    db: &Db,
    today: NaiveDate,
    user: &UserRow,
    request: &RequestRow,
) -> Result<bool, TaskError> {
    match request.expire {
        Some(expire) if expire <= today => {}
        _ => return Ok(false),
    }
    let already = notification_metadata(db, user.id, PAST)
        .await?
        .iter()
        .any(|m| meta_int(m, "request_id") == Some(request.id));
    if already {
        return Ok(false);
    }
    Ok(preference(db, user.id).await?.1)
}

/// Upcoming-expiry sweep (§2.8): one `send_upcoming_expiration_notice` per due pair.
pub async fn notify_upcoming(ctx: &TaskContext) -> Result<(), TaskError> {
    let today = today(ctx);
    for request in approved_requests(&ctx.db, today, None).await? {
        for user in active_members(&ctx.db, request.team_id).await? {
            if upcoming_due(&ctx.db, today, &user, &request)
                .await?
                .is_some()
            {
                ctx.spawn(SEND_UPCOMING, vec![json!(user.id), json!(request.id)])
                    .await?;
            }
        }
    }
    Ok(())
}

/// Sender of one upcoming-expiry notice (§2.8).
pub async fn send_upcoming(ctx: &TaskContext, user_id: i64, req_id: i64) -> Result<(), TaskError> {
    let user = load_user(&ctx.db, user_id).await?;
    let request = load_request(&ctx.db, req_id).await?;
    let today = today(ctx);
    let Some(days) = upcoming_due(&ctx.db, today, &user, &request).await? else {
        return Ok(());
    };
    let context = notice_context(&ctx.db, today, &user, &request, Some(days)).await?;
    deliver(
        ctx,
        &user,
        &format!("Your HPC allocation #{req_id} is expiring soon"),
        mail::UPCOMING_TEMPLATE,
        &context,
        UPCOMING,
        json!({"request_id": req_id, "days_to_expire": days}),
    )
    .await
}

/// Past-expiry sweep (§2.9): requests that expired today or on the two days before.
pub async fn notify_past(ctx: &TaskContext) -> Result<(), TaskError> {
    wait_for_limits(&ctx.db).await;
    let today = today(ctx);
    let after = today - Duration::days(3);
    for request in approved_requests(&ctx.db, after, Some(today)).await? {
        for user in active_members(&ctx.db, request.team_id).await? {
            if past_due(&ctx.db, today, &user, &request).await? {
                ctx.spawn(SEND_PAST, vec![json!(user.id), json!(request.id)])
                    .await?;
            }
        }
    }
    Ok(())
}

/// Sender of one past-expiry notice (§2.9).
pub async fn send_past(ctx: &TaskContext, user_id: i64, req_id: i64) -> Result<(), TaskError> {
    let user = load_user(&ctx.db, user_id).await?;
    let request = load_request(&ctx.db, req_id).await?;
    let today = today(ctx);
    if !past_due(&ctx.db, today, &user, &request).await? {
        return Ok(());
    }
    let context = notice_context(&ctx.db, today, &user, &request, None).await?;
    deliver(
        ctx,
        &user,
        &format!("Your HPC allocation #{req_id} has expired"),
        mail::PAST_TEMPLATE,
        &context,
        PAST,
        json!({"request_id": req_id}),
    )
    .await
}

/// §6.4 decision 2: the past-expiry notice reports final usage, so the sweep waits (bounded)
/// while a limit-enforcement run is in progress. Rows started long ago belong to a dead
/// worker and do not hold the sweep up.
async fn wait_for_limits(db: &Db) {
    let deadline = tokio::time::Instant::now() + LIMITS_WAIT;
    loop {
        let since = Utc::now() - Duration::hours(LIMITS_STALE_HOURS);
        let running: Result<i64, sqlx::Error> = on_db!(db, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM django_celery_results_taskresult \
             WHERE status = 'STARTED' AND task_name IN ($1, $2) AND date_started > $3"
        )
        .bind(super::UPDATE_LIMITS)
        .bind(super::UPDATE_LIMITS_CLUSTER)
        .bind(since)
        .fetch_one(p)
        .await);
        match running {
            Ok(0) => return,
            Ok(n) if tokio::time::Instant::now() < deadline => {
                tracing::info!("past-expiry sweep waits for {n} running limit task(s)");
                tokio::time::sleep(LIMITS_POLL).await;
            }
            Ok(n) => {
                tracing::warn!(
                    "{n} limit task(s) still running after {} minutes; sending past-expiry notices anyway",
                    LIMITS_WAIT.as_secs() / 60
                );
                return;
            }
            Err(e) => {
                tracing::warn!("cannot check for running limit tasks: {e}");
                return;
            }
        }
    }
}

/// The template context of §2.8 (`days_left` given) or §2.9 (`None`).
async fn notice_context(
    db: &Db,
    today: NaiveDate,
    user: &UserRow,
    request: &RequestRow,
    days_left: Option<i64>,
) -> Result<Value, TaskError> {
    let allocations: Vec<(String, i32, Option<i32>, Option<i32>)> = on_db!(db, |p| {
        sqlx::query_as(
            "SELECT c.name, ra.requested, ra.awarded, ra.final \
             FROM allocations_resourceallocation ra \
             JOIN allocations_cluster c ON c.id = ra.cluster_id \
             WHERE ra.request_id = $1 ORDER BY ra.id",
        )
        .bind(request.id)
        .fetch_all(p)
        .await
    })?;
    let upcoming: Vec<TeamRequestRow> = on_db!(db, |p| {
        sqlx::query_as(
            "SELECT id, title, submitted, active, expire, status \
             FROM allocations_allocationrequest \
             WHERE team_id = $1 AND (status = 'PD' \
             OR (status = 'AP' AND (expire > $2 OR expire IS NULL))) ORDER BY id",
        )
        .bind(request.team_id)
        .bind(today)
        .fetch_all(p)
        .await
    })?;

    let mut ctx: BTreeMap<&str, Value> = BTreeMap::new();
    ctx.insert("user_name", Value::from(user.username.as_str()));
    ctx.insert("user_first", mail::opt_str(user.first_name.as_deref()));
    ctx.insert("user_last", mail::opt_str(user.last_name.as_deref()));
    ctx.insert("req_id", Value::from(request.id));
    ctx.insert("req_title", Value::from(request.title.as_str()));
    ctx.insert("req_team", Value::from(request.team_name.as_str()));
    ctx.insert(
        "req_submitted",
        mail::datetime_value(Some(request.submitted)),
    );
    ctx.insert("req_active", mail::date_value(request.active));
    ctx.insert("req_expire", mail::date_value(request.expire));
    if let Some(days) = days_left {
        ctx.insert("req_days_left", Value::from(days));
    }
    let past = days_left.is_none();
    let allocations: Vec<Value> = allocations
        .into_iter()
        .map(|(cluster, requested, awarded, fin)| {
            let mut a: BTreeMap<&str, Value> = BTreeMap::new();
            a.insert("alloc_cluster", Value::from(cluster));
            a.insert("alloc_requested", Value::from(requested));
            a.insert("alloc_awarded", Value::from(awarded.unwrap_or(0)));
            if past {
                a.insert("alloc_final", Value::from(fin.unwrap_or(0)));
            }
            Value::from(a)
        })
        .collect();
    ctx.insert("allocations", Value::from(allocations));
    let upcoming: Vec<Value> = upcoming
        .into_iter()
        .map(|r| {
            let mut m: BTreeMap<&str, Value> = BTreeMap::new();
            m.insert("id", Value::from(r.id));
            m.insert("title", Value::from(r.title));
            m.insert("submitted", mail::datetime_value(Some(r.submitted)));
            m.insert("active", mail::date_value(r.active));
            m.insert("expire", mail::date_value(r.expire));
            let label = match r.status.as_str() {
                "PD" => "Pending",
                "AP" => "Approved",
                "DC" => "Declined",
                "CR" => "Changes Requested",
                other => other,
            };
            m.insert("status", Value::from(label));
            Value::from(m)
        })
        .collect();
    ctx.insert("upcoming_requests", Value::from(upcoming));
    Ok(Value::from(ctx))
}

/// The task error a delivery failure ends the run with.
fn mail_error(e: MailError) -> TaskError {
    let (kind, module) = match &e {
        MailError::TemplateNotFound(_) => ("FileNotFoundError", "builtins"),
        MailError::InsecureTemplate(_) => ("PermissionError", "builtins"),
        MailError::EmptyTemplate => ("RuntimeError", "builtins"),
        MailError::Render(_) => ("TemplateError", "jinja2.exceptions"),
        MailError::Address { .. } | MailError::Build(_) => ("ValueError", "builtins"),
        MailError::Smtp { refused: true, .. } => ("ConnectionRefusedError", "builtins"),
        MailError::Smtp { .. } => ("SMTPException", "smtplib"),
        MailError::DebugFile { .. } => ("OSError", "builtins"),
    };
    TaskError::new(kind, module, e.to_string())
}

/// §2.10: render, record the notification row, then mail it (users without an e-mail
/// address get the row only). A duplicate row fails the run before anything is sent; a
/// failed send leaves the row, so the notice is never sent twice.
async fn deliver(
    ctx: &TaskContext,
    user: &UserRow,
    subject: &str,
    template: &str,
    context: &Value,
    kind: &str,
    metadata: serde_json::Value,
) -> Result<(), TaskError> {
    let body = Templates::from_config(&ctx.config)
        .render(template, context)
        .map_err(mail_error)?;
    // Build the transport before recording, so a configuration error sends nothing and
    // records nothing.
    let mailer = Mailer::from_config(&ctx.config).map_err(mail_error)?;
    let inserted = on_db!(&ctx.db, |p| sqlx::query(
        "INSERT INTO notifications_notification \
         (time, read, subject, message_text, message_html, metadata, notification_type, user_id) \
         VALUES ($1, FALSE, $2, $3, $4, $5, $6, $7)"
    )
    .bind(Utc::now())
    .bind(subject)
    .bind(&body.text)
    .bind(&body.html)
    .bind(sqlx::types::Json(&metadata))
    .bind(kind)
    .bind(user.id)
    .execute(p)
    .await
    .map(|_| ()));
    if let Err(e) = inserted {
        let duplicate = e
            .as_database_error()
            .is_some_and(|d| d.is_unique_violation());
        return Err(if duplicate {
            TaskError::new(
                "IntegrityError",
                "django.db.utils",
                format!(
                    "duplicate key value violates unique constraint \"unique_user_type_metadata\": \
                     user {} already has a {kind} notification with metadata {metadata}",
                    user.id
                ),
            )
        } else {
            e.into()
        });
    }
    match user.email.as_deref().map(str::trim) {
        Some(to) if !to.is_empty() => mailer.send(to, subject, &body).await.map_err(mail_error),
        _ => {
            tracing::info!(
                user = user.id,
                "user has no e-mail address; notification recorded, nothing sent"
            );
            Ok(())
        }
    }
}
