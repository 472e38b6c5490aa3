//! `/users/users/` (domain.md §6.1): accounts, visible to every authenticated user (non-staff
//! see active accounts only), created by staff, edited by staff or the account itself.

use super::list::{Column, Kind, ListSpec, search};
use super::resource::{self, Docs, Field, Policy, Resource, Val, Who, Write};
use super::summaries::{self, AuditLogSummaryDoc, TeamSummaryDoc, render_datetime};
use super::{Caller, Via, body};
use crate::domain::validation::{Text, Validator};
use crate::store::audit::{self, Action, AuditContext, Snapshot};
use crate::store::users::{USER_COLUMNS, User};
use crate::store::{Db, Tx};
use crate::web::ApiError;
use crate::{on_db, on_tx};
use chrono_tz::Tz;
use salvo::oapi::ToSchema;
use sea_query::{Alias, Expr, ExprTrait, Query};
use serde::Serialize;
use std::collections::HashMap;

pub const CONTENT_TYPE: &str = "users | User";
const MODEL: &str = "User";

/// The stored fields, listed ones first; the password is written but neither filtered nor
/// ordered on.
const FIELDS: [Field<User>; 14] = [
    Field::id(|u| Val::Int(u.id)),
    Field::new("username", Kind::Text, |u| Val::Text(u.username.clone())),
    Field::new("first_name", Kind::Text, |u| {
        Val::OptText(u.first_name.clone())
    }),
    Field::new("last_name", Kind::Text, |u| {
        Val::OptText(u.last_name.clone())
    }),
    Field::new("email", Kind::Text, |u| Val::OptText(u.email.clone())),
    Field::new("department", Kind::Text, |u| {
        Val::OptText(u.department.clone())
    }),
    Field::new("role", Kind::Text, |u| Val::OptText(u.role.clone())),
    Field::new("is_active", Kind::Bool, |u| Val::Bool(u.is_active)),
    Field::new("is_staff", Kind::Bool, |u| Val::Bool(u.is_staff)),
    Field::new("is_ldap_user", Kind::Bool, |u| Val::Bool(u.is_ldap_user)),
    Field::new("is_superuser", Kind::Bool, |u| Val::Bool(u.is_superuser)),
    Field::new("date_joined", Kind::DateTime, |u: &User| {
        Val::DateTime(u.date_joined)
    })
    .write(Write::Create),
    Field::new("last_login", Kind::DateTime, |u: &User| {
        Val::OptText(u.last_login.as_ref().and_then(audit::datetime))
    })
    .write(Write::Never),
    Field::new("password", Kind::Text, |u| Val::Text(u.password.clone())),
];
const COLUMNS: &[Column] = &resource::columns(&FIELDS);
/// Every column but the password.
const LISTED: &[Column] = COLUMNS.split_at(13).0;

pub const SPEC: ListSpec = ListSpec {
    table: "users_user",
    filters: LISTED,
    order: LISTED,
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
    #[salvo(schema(value_type = TeamSummaryDoc))]
    pub _team: Option<summaries::Embedded>,
}

/// The user representation (same keys for every caller).
#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "User"))]
pub struct UserDoc {
    pub id: i64,
    pub display_name: String,
    pub abbreviation: String,
    pub _membership: Vec<TeamRole>,
    #[salvo(schema(value_type = Vec<AuditLogSummaryDoc>))]
    pub _history: Vec<crate::web::api::summaries::AuditLogSummaryDoc>,
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

/// The account after a write: `changes` applied to the stored account (`existing`), or to a
/// new one, with the new password hashed.
async fn apply(c: Changes, existing: Option<&User>) -> Result<User, ApiError> {
    let mut after = match existing {
        Some(user) => user.clone(),
        None => User::new(""),
    };
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
    if existing.is_none() {
        // A superuser is staff.
        after.is_staff |= after.is_superuser;
    }
    if let Some(p) = &c.password {
        after.password = crate::identity::passwords::hash(p)
            .await
            .map_err(|_| ApiError::Internal)?;
    }
    Ok(after)
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

fn blocked(blockers: &[String]) -> ApiError {
    ApiError::Conflict(format!(
        "Cannot delete some instances of model 'User' because they are referenced through protected foreign keys: {}.",
        blockers.join(", ")
    ))
}

/// The user resource.
pub struct Users;

crate::document_resource!(Users);

impl Resource for Users {
    type Row = User;
    type Repr = UserDoc;
    type Extra = ();

    const PATH: &'static str = "users/users/";
    const TABLE: &'static str = "users_user";
    const CONTENT_TYPE: &'static str = CONTENT_TYPE;
    const MODEL: &'static str = MODEL;
    const FIELDS: &'static [Field<User>] = &FIELDS;
    const SPEC: ListSpec = SPEC;
    /// Staff create; staff or the account itself change and delete (`check_write`).
    const POLICY: Policy = Policy {
        create: Who::Staff,
        ..Policy::OPEN
    };
    const DOCS: Docs = Docs {
        tag: "Users - Accounts",
        id: "A unique integer value identifying this user.",
        list_name: "User List",
        item_name: "User Instance",
        list: (
            "List users.",
            "Returns a list of user accounts. Non-staff users are only returned active accounts.",
        ),
        retrieve: ("Retrieve a user.", "Returns a single user account by ID."),
        create: ("Create a user.", "Creates a new user account. Staff only."),
        update: (
            "Update a user.",
            "Replaces an existing user account. Staff or the account itself.",
        ),
        partial_update: (
            "Partially update a user.",
            "Updates the given fields of a user account. Staff or the account itself.",
        ),
        destroy: (
            "Delete a user.",
            "Deletes a user account. Staff or the account itself. Refused with 409 while the \
             account submitted requests, reviewed or commented.",
        ),
    };

    crate::record_id!();

    async fn repr(_tx: &mut Tx, row: &User) -> Result<String, ApiError> {
        Ok(repr(row))
    }

    /// A changed or deleted account (flags, password, the account itself) changes what its
    /// sessions may do: every web process looks them up afresh before this answer is sent.
    async fn after_commit(
        app: &crate::web::AppState,
        before: Option<&User>,
        after: Option<&User>,
    ) -> Result<(), ApiError> {
        if let Some(id) = before.or(after).map(|u| u.id) {
            app.sessions
                .invalidate(crate::identity::sessions::Target::User(id))
                .await;
        }
        Ok(())
    }

    /// Staff-only flags are read from staff callers only (`validate`).
    async fn validate(
        db: &Db,
        caller: &Caller,
        body: &body::Body,
        partial: bool,
        current: Option<&User>,
    ) -> Result<(User, ()), ApiError> {
        let c = validate(db, body, partial, caller.is_staff(), current).await?;
        Ok((apply(c, current).await?, ()))
    }

    /// Representations of a page of users: memberships, their teams, history and its actors in
    /// four queries whatever the page size.
    async fn represent(db: &Db, tz: Tz, users: &[User]) -> Result<Vec<UserDoc>, ApiError> {
        let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
        let memberships = summaries::memberships_where(db, "user_id", &ids).await?;
        let team_ids: Vec<i64> = memberships.iter().map(|m| m.team_id).collect();
        let teams = summaries::teams_by_id(db, &team_ids).await?;
        let mut roles: HashMap<i64, Vec<TeamRole>> = HashMap::new();
        for m in memberships {
            roles.entry(m.user_id).or_default().push(TeamRole {
                id: m.id,
                team: m.team_id,
                role: m.role,
                _team: teams.get(&m.team_id).cloned(),
            });
        }
        let mut history = crate::web::api::summaries::history(db, tz, CONTENT_TYPE, &ids).await?;
        Ok(users
            .iter()
            .map(|u| UserDoc {
                id: u.id,
                display_name: summaries::display_name(u),
                abbreviation: summaries::abbreviation(u),
                _membership: roles.remove(&u.id).unwrap_or_default(),
                _history: history.remove(&u.id).unwrap_or_default(),
                is_superuser: u.is_superuser,
                username: u.username.clone(),
                first_name: u.first_name.clone(),
                last_name: u.last_name.clone(),
                email: u.email.clone(),
                department: u.department.clone(),
                role: u.role.clone(),
                is_active: u.is_active,
                is_staff: u.is_staff,
                is_ldap_user: u.is_ldap_user,
                date_joined: render_datetime(&u.date_joined, tz),
                last_login: u.last_login.as_ref().map(|t| render_datetime(t, tz)),
                groups: Vec::new(),
                user_permissions: Vec::new(),
            })
            .collect())
    }

    /// Non-staff callers see active accounts only.
    fn scope(q: &mut sea_query::SelectStatement, caller: &Caller) {
        if !caller.is_staff() {
            q.and_where(Expr::col(Alias::new("is_active")).eq(true));
        }
    }

    /// An account the caller may not see is missing (404).
    async fn check_record(_db: &Db, caller: &Caller, row: &User) -> Result<(), ApiError> {
        if crate::domain::policy::user_visible(caller.is_staff(), row.is_active) {
            Ok(())
        } else {
            Err(ApiError::no_match(MODEL))
        }
    }

    /// Staff or the account itself (403); a delete is refused while protected references
    /// remain (409).
    async fn check_write(
        db: &Db,
        caller: &Caller,
        row: &User,
        action: Action,
    ) -> Result<(), ApiError> {
        ApiError::forbidden_unless(caller.is_staff() || caller.id() == row.id)?;
        if action == Action::Delete {
            let blockers = protected_references(db, row.id).await?;
            if !blockers.is_empty() {
                return Err(blocked(&blockers));
            }
        }
        Ok(())
    }

    /// The deleted account cannot be the actor of its own deletion entry.
    fn delete_context(ctx: &mut AuditContext, caller: &Caller, row: &User) {
        if caller.id() == row.id {
            ctx.actor = None;
        }
    }

    fn snapshot(row: &User) -> Snapshot {
        snapshot(row)
    }
}
