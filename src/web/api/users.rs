//! `/users/users/` (domain.md §6.1): accounts, visible to every authenticated user (non-staff
//! see active accounts only), created by staff, edited by staff or the account itself.

use super::list::{self as listing, Column, Kind, ListSpec, search};
use super::summaries::{
    self, AuditLogSummaryDoc, TeamSummaryDoc, render_datetime, render_opt_datetime, team_summary,
};
use super::{Caller, Via, body, context, path_id};
use crate::domain::validation::{Text, Validator};
use crate::store::audit::{self, Action, AuditContext, Snapshot};
use crate::store::users::{USER_COLUMNS, User};
use crate::store::{Db, Tx};
use crate::web::ApiError;
use crate::{on_db, on_tx};
use chrono_tz::Tz;
use salvo::http::StatusCode;
use salvo::oapi::ToSchema;
use salvo::prelude::*;
use sea_query::{Alias, Expr, ExprTrait, Query};
use serde::Serialize;
use serde_json::{Value, json};

pub const CONTENT_TYPE: &str = "users | User";
const MODEL: &str = "User";

const COLUMNS: &[Column] = &[
    Column::new("id", Kind::Int),
    Column::new("username", Kind::Text),
    Column::new("first_name", Kind::Text),
    Column::new("last_name", Kind::Text),
    Column::new("email", Kind::Text),
    Column::new("department", Kind::Text),
    Column::new("role", Kind::Text),
    Column::new("is_active", Kind::Bool),
    Column::new("is_staff", Kind::Bool),
    Column::new("is_ldap_user", Kind::Bool),
    Column::new("is_superuser", Kind::Bool),
    Column::new("date_joined", Kind::DateTime),
    Column::new("last_login", Kind::DateTime),
];

pub const SPEC: ListSpec = ListSpec {
    table: "users_user",
    filters: COLUMNS,
    order: COLUMNS,
    search: &[
        search("username"),
        search("first_name"),
        search("last_name"),
        search("email"),
        search("department"),
        search("role"),
    ],
};

/// Role of a user in one team, as listed in `User._membership`.
#[derive(Serialize, ToSchema)]
pub struct TeamRole {
    pub id: i64,
    pub team: i64,
    pub role: String,
    pub _team: TeamSummaryDoc,
}

/// The user representation (same keys for every caller).
#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "User"))]
pub struct UserDoc {
    pub id: i64,
    pub display_name: String,
    pub abbreviation: String,
    pub _membership: Vec<TeamRole>,
    pub _history: Vec<AuditLogSummaryDoc>,
    pub is_superuser: bool,
    pub username: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub department: Option<String>,
    pub role: Option<String>,
    pub is_active: bool,
    pub is_staff: bool,
    pub is_ldap_user: bool,
    pub date_joined: String,
    pub last_login: Option<String>,
    pub groups: Vec<i64>,
    pub user_permissions: Vec<i64>,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "PaginatedUserList"))]
pub struct UserPage {
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<UserDoc>,
}

/// Representations of a page of users: memberships, their teams, history and its actors in
/// four queries whatever the page size.
pub async fn represent(db: &Db, tz: Tz, users: &[User]) -> Result<Vec<Value>, ApiError> {
    let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
    let memberships = summaries::memberships_where(db, "user_id", &ids).await?;
    let team_ids: Vec<i64> = memberships.iter().map(|m| m.team_id).collect();
    let mut q = Query::select();
    q.columns(["id", "name", "slug", "is_active"].map(Alias::new))
        .from(Alias::new("users_team"))
        .and_where(Expr::col(Alias::new("id")).is_in(team_ids));
    let teams: Vec<summaries::TeamRow> = if memberships.is_empty() {
        Vec::new()
    } else {
        crate::store::fetch_all(db, &q).await?
    };
    let mut history = crate::web::api::summaries::history(db, tz, CONTENT_TYPE, &ids).await?;
    Ok(users
        .iter()
        .map(|u| {
            let membership: Vec<Value> = memberships
                .iter()
                .filter(|m| m.user_id == u.id)
                .map(|m| {
                    let team = teams
                        .iter()
                        .find(|t| t.id == m.team_id)
                        .map(team_summary)
                        .unwrap_or(Value::Null);
                    json!({"id": m.id, "team": m.team_id, "role": m.role, "_team": team})
                })
                .collect();
            json!({
                "id": u.id,
                "display_name": summaries::display_name(u),
                "abbreviation": summaries::abbreviation(u),
                "_membership": membership,
                "_history": history.remove(&u.id).unwrap_or_default(),
                "is_superuser": u.is_superuser,
                "username": u.username,
                "first_name": u.first_name,
                "last_name": u.last_name,
                "email": u.email,
                "department": u.department,
                "role": u.role,
                "is_active": u.is_active,
                "is_staff": u.is_staff,
                "is_ldap_user": u.is_ldap_user,
                "date_joined": render_datetime(&u.date_joined, tz),
                "last_login": render_opt_datetime(&u.last_login, tz),
                "groups": [],
                "user_permissions": [],
            })
        })
        .collect())
}

pub async fn represent_one(db: &Db, tz: Tz, user: &User) -> Result<Value, ApiError> {
    Ok(represent(db, tz, std::slice::from_ref(user))
        .await?
        .pop()
        .unwrap_or(Value::Null))
}

/// Visibility: non-staff callers see active accounts only.
fn scope(q: &mut sea_query::SelectStatement, caller: &Caller) {
    if !caller.is_staff() {
        q.and_where(Expr::col(Alias::new("is_active")).eq(true));
    }
}

/// List users.
///
/// Returns a list of user accounts. Non-staff users are only returned active accounts.
#[endpoint(
    operation_id = "users_users_list",
    tags("Users - Accounts"),
    responses((status_code = 200, description = "", body = UserPage))
)]
pub async fn list(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let listing::CallerPage {
            app, rows, page, ..
        } = listing::caller_page::<User>(
            req,
            depot,
            &SPEC,
            &USER_COLUMNS.split(", ").collect::<Vec<_>>(),
            scope,
        )
        .await?;
        Ok(page.envelope(represent(&app.db, app.config.timezone(), &rows).await?))
    }
    .await;
    super::respond(res, StatusCode::OK, result);
}

async fn visible_user(
    app: &crate::web::AppState,
    caller: &Caller,
    id: i64,
) -> Result<User, ApiError> {
    let user = crate::store::users::by_id(&app.db, id)
        .await?
        .ok_or_else(|| ApiError::no_match(MODEL))?;
    if !crate::domain::policy::user_visible(caller.is_staff(), user.is_active) {
        return Err(ApiError::no_match(MODEL));
    }
    Ok(user)
}

/// Retrieve a user.
///
/// Returns a single user account by ID.
#[endpoint(
    operation_id = "users_users_retrieve",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this user.")),
    tags("Users - Accounts"),
    responses((status_code = 200, description = "", body = UserDoc))
)]
pub async fn retrieve(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        let id = path_id(req)?;
        let user = visible_user(&app, &caller, id).await?;
        represent_one(&app.db, app.config.timezone(), &user).await
    }
    .await;
    super::respond(res, StatusCode::OK, result);
}

/// Django's username rule: Unicode letters, digits and `@.+-_`.
fn valid_username(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_alphanumeric() || "@.+-_".contains(c))
}

/// Values a write may set; `None` = not supplied.
#[derive(Default)]
struct Changes {
    username: Option<String>,
    first_name: Option<Option<String>>,
    last_name: Option<Option<String>>,
    email: Option<Option<String>>,
    department: Option<Option<String>>,
    role: Option<Option<String>>,
    is_active: Option<bool>,
    is_staff: Option<bool>,
    is_ldap_user: Option<bool>,
    is_superuser: Option<bool>,
    password: Option<String>,
}

/// Validates a create (`existing` None) or update body.
async fn validate(
    db: &Db,
    body: &body::Body,
    partial: bool,
    staff: bool,
    existing: Option<&User>,
) -> Result<Changes, ApiError> {
    body.require_object()?;
    let mut v = Validator::new(&body.fields, partial);
    let mut c = Changes {
        username: v.text("username", Text::required(150)).flatten(),
        first_name: v.text("first_name", Text::optional(150)),
        last_name: v.text("last_name", Text::optional(150)),
        email: v.email("email", 254),
        department: v.text("department", Text::optional(1000)),
        role: v.text("role", Text::optional(1000)),
        ..Default::default()
    };
    // Staff-only flags are silently ignored for everyone else (domain.md §6.1).
    if staff {
        c.is_active = v.boolean("is_active");
        c.is_staff = v.boolean("is_staff");
        c.is_ldap_user = v.boolean("is_ldap_user");
        c.is_superuser = v.boolean("is_superuser");
        v.pk_list("groups", body.form);
        v.pk_list("user_permissions", body.form);
    }
    let password = v.text(
        "password",
        Text {
            max: 128,
            required: true,
            nullable: false,
            blank: false,
            trim: false,
        },
    );
    if let Some(name) = &c.username {
        if !valid_username(name) {
            v.error(
                "username",
                "Enter a valid username. This value may contain only letters, numbers, and @/./+/-/_ characters.",
            );
        } else if existing.map(|e| &e.username != name).unwrap_or(true)
            && crate::store::users::username_exists(db, name).await?
        {
            v.error("username", "user with this username already exists.");
        }
    }
    if v.has_errors() {
        return v.finish().map(|_| c).map_err(Into::into);
    }
    if let Some(Some(p)) = password {
        // Without the account, as upstream's serializer validates: the similarity rule
        // does not apply through the API (domain.md §6.1).
        let problems = crate::identity::passwords::validate(&p, None);
        if !problems.is_empty() {
            for p in problems {
                v.error("non_field_errors", p);
            }
            return v.finish().map(|_| c).map_err(Into::into);
        }
        c.password = Some(p);
    }
    Ok(c)
}

/// The tracked fields as audit strings (`last_login` is never tracked; password masked).
fn snapshot(u: &User) -> Snapshot {
    vec![
        ("password", Some(audit::mask_password(&u.password))),
        ("is_superuser", audit::boolean(u.is_superuser)),
        ("username", Some(u.username.clone())),
        ("first_name", audit::text(&u.first_name)),
        ("last_name", audit::text(&u.last_name)),
        ("email", audit::text(&u.email)),
        ("is_staff", audit::boolean(u.is_staff)),
        ("is_active", audit::boolean(u.is_active)),
        ("date_joined", audit::datetime(&u.date_joined)),
        ("department", audit::text(&u.department)),
        ("role", audit::text(&u.role)),
        ("is_ldap_user", audit::boolean(u.is_ldap_user)),
    ]
}

pub fn repr(u: &User) -> String {
    format!("User #{} - {}", u.id, u.username)
}

async fn load_in_tx(tx: &mut Tx, id: i64) -> Result<User, ApiError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users_user WHERE id = $1");
    let user: Option<User> = on_tx!(tx, |c| sqlx::query_as::<_, User>(sqlx::AssertSqlSafe(
        sql.clone()
    ))
    .bind(id)
    .fetch_optional(c)
    .await)?;
    user.ok_or_else(|| ApiError::no_match(MODEL))
}

/// Creates an account in a transaction with its audit entry; used by the API and the CLI.
pub async fn insert(
    db: &Db,
    ctx: &AuditContext,
    new: &crate::store::users::NewUser,
    fields: &UserFields,
) -> Result<User, ApiError> {
    let mut tx = db.begin().await?;
    let id: i64 = on_tx!(&mut tx, |c| sqlx::query_scalar(
        "INSERT INTO users_user (username, password, first_name, last_name, email, department, \
         role, is_active, is_staff, is_superuser, is_ldap_user, date_joined) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id"
    )
    .bind(&new.username)
    .bind(&new.password_hash)
    .bind(&fields.first_name)
    .bind(&fields.last_name)
    .bind(&new.email)
    .bind(&fields.department)
    .bind(&fields.role)
    .bind(fields.is_active)
    .bind(new.is_staff || new.is_superuser)
    .bind(new.is_superuser)
    .bind(fields.is_ldap_user)
    .bind(chrono::Utc::now())
    .fetch_one(c)
    .await)?;
    let user = load_in_tx(&mut tx, id).await?;
    audit::record(
        &mut tx,
        ctx,
        CONTENT_TYPE,
        id,
        &repr(&user),
        Action::Create,
        audit::changes(None, Some(&snapshot(&user))),
    )
    .await?;
    tx.commit().await?;
    Ok(user)
}

/// Profile fields of a new account besides the credentials.
#[derive(Debug, Clone)]
pub struct UserFields {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub department: Option<String>,
    pub role: Option<String>,
    pub is_active: bool,
    pub is_ldap_user: bool,
}

impl Default for UserFields {
    fn default() -> Self {
        UserFields {
            first_name: None,
            last_name: None,
            department: None,
            role: None,
            is_active: true,
            is_ldap_user: false,
        }
    }
}

/// Create a user.
///
/// Creates a new user account. Staff only.
#[endpoint(
    operation_id = "users_users_create",
    tags("Users - Accounts"),
    responses((status_code = 201, description = "", body = UserDoc))
)]
pub async fn create(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let (app, caller) = context(depot)?;
        if !caller.is_staff() {
            return Err(ApiError::forbidden());
        }
        let body = body::read(req).await?;
        let c = validate(&app.db, &body, false, true, None).await?;
        let password = c.password.clone().unwrap_or_default();
        let hash = crate::identity::passwords::hash(&password)
            .await
            .map_err(|_| ApiError::Internal)?;
        let new = crate::store::users::NewUser {
            username: c.username.clone().unwrap_or_default(),
            email: c.email.clone().flatten(),
            password_hash: hash,
            is_staff: c.is_staff.unwrap_or(false),
            is_superuser: c.is_superuser.unwrap_or(false),
        };
        let fields = UserFields {
            first_name: c.first_name.clone().flatten(),
            last_name: c.last_name.clone().flatten(),
            department: c.department.clone().flatten(),
            role: c.role.clone().flatten(),
            is_active: c.is_active.unwrap_or(true),
            is_ldap_user: c.is_ldap_user.unwrap_or(false),
        };
        let ctx = crate::web::access::audit_context(req, depot);
        let user = insert(&app.db, &ctx, &new, &fields).await?;
        represent_one(&app.db, app.config.timezone(), &user).await
    }
    .await;
    super::respond(res, StatusCode::CREATED, result);
}

async fn update(req: &mut Request, depot: &mut Depot, partial: bool) -> Result<Value, ApiError> {
    let (app, caller) = context(depot)?;
    let me = caller.user.clone();
    let id = path_id(req)?;
    let target = visible_user(&app, &caller, id).await?;
    if !me.is_staff && me.id != target.id {
        return Err(ApiError::forbidden());
    }
    let body = body::read(req).await?;
    let c = validate(&app.db, &body, partial, me.is_staff, Some(&target)).await?;
    let mut after = target.clone();
    if let Some(u) = c.username {
        after.username = u;
    }
    macro_rules! set {
        ($field:ident) => {
            if let Some(v) = c.$field {
                after.$field = v;
            }
        };
    }
    set!(first_name);
    set!(last_name);
    set!(email);
    set!(department);
    set!(role);
    set!(is_active);
    set!(is_staff);
    set!(is_ldap_user);
    set!(is_superuser);
    if let Some(p) = &c.password {
        after.password = crate::identity::passwords::hash(p)
            .await
            .map_err(|_| ApiError::Internal)?;
    }
    let ctx = crate::web::access::audit_context(req, depot);
    let mut tx = app.db.begin().await?;
    on_tx!(&mut tx, |conn| sqlx::query(
        "UPDATE users_user SET username = $1, password = $2, first_name = $3, last_name = $4, \
         email = $5, department = $6, role = $7, is_active = $8, is_staff = $9, \
         is_ldap_user = $10, is_superuser = $11 WHERE id = $12"
    )
    .bind(&after.username)
    .bind(&after.password)
    .bind(&after.first_name)
    .bind(&after.last_name)
    .bind(&after.email)
    .bind(&after.department)
    .bind(&after.role)
    .bind(after.is_active)
    .bind(after.is_staff)
    .bind(after.is_ldap_user)
    .bind(after.is_superuser)
    .bind(after.id)
    .execute(conn)
    .await
    .map(|_| ()))?;
    audit::record(
        &mut tx,
        &ctx,
        CONTENT_TYPE,
        after.id,
        &repr(&after),
        Action::Update,
        audit::changes(Some(&snapshot(&target)), Some(&snapshot(&after))),
    )
    .await?;
    tx.commit().await?;
    represent_one(&app.db, app.config.timezone(), &after).await
}

/// Update a user.
///
/// Replaces an existing user account. Staff or the account itself.
#[endpoint(
    operation_id = "users_users_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this user.")),
    tags("Users - Accounts"),
    responses((status_code = 200, description = "", body = UserDoc))
)]
pub async fn put(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = update(req, depot, false).await;
    super::respond(res, StatusCode::OK, result);
}

/// Partially update a user.
///
/// Updates the given fields of a user account. Staff or the account itself.
#[endpoint(
    operation_id = "users_users_partial_update",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this user.")),
    tags("Users - Accounts"),
    responses((status_code = 200, description = "", body = UserDoc))
)]
pub async fn patch(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = update(req, depot, true).await;
    super::respond(res, StatusCode::OK, result);
}

/// Delete a user.
///
/// Deletes a user account. Staff or the account itself. Refused with 409 while the account
/// submitted requests, reviewed or commented.
#[endpoint(
    operation_id = "users_users_destroy",
    parameters(("id" = i64, Path, description = "A unique integer value identifying this user.")),
    tags("Users - Accounts"),
    responses((status_code = 204, description = "No response body"))
)]
pub async fn destroy(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result: Result<(), ApiError> = async {
        let (app, caller) = context(depot)?;
        let me = caller.user.clone();
        let id = path_id(req)?;
        let target = visible_user(&app, &caller, id).await?;
        if !me.is_staff && me.id != target.id {
            return Err(ApiError::forbidden());
        }
        let blockers = protected_references(&app.db, target.id).await?;
        if !blockers.is_empty() {
            return Err(ApiError::Conflict(format!(
                "Cannot delete some instances of model 'User' because they are referenced through protected foreign keys: {}.",
                blockers.join(", ")
            )));
        }
        let mut ctx = crate::web::access::audit_context(req, depot);
        if me.id == target.id {
            // The deleted account cannot be the actor of its own deletion entry.
            ctx.actor = None;
        }
        audit::delete_audited(
            &app.db,
            &ctx,
            CONTENT_TYPE,
            "users_user",
            target.id,
            &repr(&target),
            &snapshot(&target),
        )
        .await?;
        Ok(())
    }
    .await;
    crate::web::api::no_content(res, result);
}

/// PROTECT references that block deleting a user: `'<Model>.<field>'` names.
pub async fn protected_references(db: &Db, user_id: i64) -> Result<Vec<String>, ApiError> {
    let checks = [
        (
            "allocations_allocationrequest",
            "submitter_id",
            "'AllocationRequest.submitter'",
        ),
        (
            "allocations_allocationreview",
            "reviewer_id",
            "'AllocationReview.reviewer'",
        ),
        ("allocations_comment", "user_id", "'Comment.user'"),
    ];
    let mut out = Vec::new();
    for (table, column, name) in checks {
        let mut q = Query::select();
        q.expr(Expr::cust("COUNT(*)"))
            .from(Alias::new(table))
            .and_where(Expr::col(Alias::new(column)).eq(user_id));
        let n: i64 = crate::store::fetch_scalar(db, &q).await?;
        if n > 0 {
            out.push(name.to_string());
        }
    }
    Ok(out)
}

/// Whether the caller authenticated by session (used by logout).
pub fn session_of(caller: &Caller) -> Option<&crate::identity::auth::SessionClaims> {
    match &caller.via {
        Via::Session(c) => Some(c),
        Via::Token => None,
    }
}

/// Counts users (unused by the API; kept for the CLI's `user list`).
pub async fn all(db: &Db) -> Result<Vec<User>, ApiError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users_user ORDER BY id");
    Ok(on_db!(db, |p| sqlx::query_as::<_, User>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .fetch_all(p)
    .await)?)
}

/// After a successful LDAP login: create the local account (not yet marked as an LDAP user;
/// the sync does that) or refresh its mapped fields. Returns the current row, or None when
/// the username belongs to an account with a usable local password: a directory entry never
/// logs in as (or edits) such an account, whatever its `is_ldap_user` flag says.
pub async fn upsert_ldap_login(
    db: &Db,
    account: &crate::infra::ldap::LdapUser,
) -> Result<Option<User>, ApiError> {
    let field = |name: &str| account.fields.get(name).cloned().flatten();
    let ctx = AuditContext::default();
    match crate::store::users::by_username(db, &account.username).await? {
        None => {
            let unusable = format!("!{}", crate::identity::passwords::generate(40));
            let new = crate::store::users::NewUser {
                username: account.username.clone(),
                email: field("email"),
                password_hash: unusable,
                is_staff: false,
                is_superuser: false,
            };
            let fields = UserFields {
                first_name: field("first_name"),
                last_name: field("last_name"),
                department: field("department"),
                role: field("role"),
                is_active: true,
                is_ldap_user: false,
            };
            Ok(Some(insert(db, &ctx, &new, &fields).await?))
        }
        Some(before) if crate::identity::passwords::has_usable_password(&before.password) => {
            tracing::warn!(
                username = %before.username,
                "LDAP login refused: a local account with its own password has this username"
            );
            Ok(None)
        }
        Some(before) => {
            let mut after = before.clone();
            for (name, value) in &account.fields {
                match name.as_str() {
                    "first_name" => after.first_name = value.clone(),
                    "last_name" => after.last_name = value.clone(),
                    "email" => after.email = value.clone(),
                    "department" => after.department = value.clone(),
                    "role" => after.role = value.clone(),
                    _ => {}
                }
            }
            if after == before {
                return Ok(Some(before));
            }
            let mut tx = db.begin().await?;
            on_tx!(&mut tx, |conn| sqlx::query(
                "UPDATE users_user SET first_name = $1, last_name = $2, email = $3, \
                 department = $4, role = $5 WHERE id = $6"
            )
            .bind(&after.first_name)
            .bind(&after.last_name)
            .bind(&after.email)
            .bind(&after.department)
            .bind(&after.role)
            .bind(after.id)
            .execute(conn)
            .await
            .map(|_| ()))?;
            audit::record(
                &mut tx,
                &ctx,
                CONTENT_TYPE,
                after.id,
                &repr(&after),
                Action::Update,
                audit::changes(Some(&snapshot(&before)), Some(&snapshot(&after))),
            )
            .await?;
            tx.commit().await?;
            Ok(Some(after))
        }
    }
}
