//! `/authentication/` (domain.md §5): login with a local password (Django hashes are
//! rehashed to argon2id) or LDAP, within a per-username failed-login budget; session and
//! CSRF cookies, logout revoking the session, and whoami.

use super::{Via, body, context};
use crate::domain::validation::{Text, Validator};
use crate::store::users::{self, User};
use crate::web::access::{CSRF_COOKIE, SESSION_COOKIE};
use crate::web::{ApiError, AppState};
use salvo::http::StatusCode;
use salvo::http::cookie::{Cookie, SameSite};
use salvo::prelude::*;

const INVALID: &str = "Invalid username or password.";
const CSRF_MAX_AGE: i64 = 31_449_600;

fn cookie(
    app: &AppState,
    name: &'static str,
    value: String,
    max_age: i64,
    http_only: bool,
) -> Cookie<'static> {
    let s = &app.config.settings.security;
    let mut c = Cookie::build((name, value))
        .path("/")
        .http_only(http_only)
        .same_site(SameSite::Lax)
        .secure(s.ssl_tokens)
        .max_age(salvo::http::cookie::time::Duration::seconds(max_age));
    if let Some(domain) = &s.token_domain {
        c = c.domain(domain.clone());
    }
    c.build()
}

/// Throttle scope of the per-username failed-login budget (`security.login_failures`).
const LOGIN_FAILURES: &str = "login-failures";

/// Checks the local password, then LDAP; returns the user on success.
///
/// Every attempt costs one password verification, whether or not the username exists, is
/// active or has a usable password (those verify against a dummy hash), so the time taken
/// does not tell which usernames exist. An account with a usable local password is only
/// ever reached with that password: the directory is not asked, and an LDAP login whose
/// entry carries the same username is refused (see `upsert_ldap_login`).
async fn check_credentials(
    app: &AppState,
    username: &str,
    password: &str,
) -> Result<Option<User>, ApiError> {
    let found = users::by_username(&app.db, username).await?;
    let local = found.filter(|u| crate::identity::passwords::has_usable_password(&u.password));
    let verified =
        crate::identity::passwords::verify(password, local.as_ref().map(|u| u.password.as_str()))
            .await;
    if let Some(user) = local {
        if !verified || !user.is_active {
            return Ok(None);
        }
        if crate::identity::passwords::needs_rehash(&user.password) {
            // Upstream (Django) hashes move to argon2id on first successful login.
            if let Ok(new_hash) = crate::identity::passwords::hash(password).await {
                users::set_password_hash(&app.db, user.id, &new_hash).await?;
                let mut user = user;
                user.password = new_hash;
                return Ok(Some(user));
            }
        }
        return Ok(Some(user));
    }
    let ldap = &app.config.settings.ldap;
    if !crate::infra::ldap::enabled(ldap) {
        return Ok(None);
    }
    match crate::infra::ldap::authenticate(ldap, username, password).await {
        Ok(Some(account)) => {
            let user = crate::web::api::users::upsert_ldap_login(&app.db, &account).await?;
            Ok(user.filter(|u| u.is_active))
        }
        Ok(None) => Ok(None),
        Err(e) => {
            tracing::warn!("LDAP login for a user failed: {e}");
            Ok(None)
        }
    }
}

/// [`check_credentials`] within the username's failed-login budget: refused with 429 (and
/// no password check) once `security.login_failures` failures fall within its period. The
/// attempt is counted before the check, so parallel attempts cannot overrun the budget, and
/// taken back unless it failed on the credentials; a success does not clear earlier
/// failures. Usernames are compared case-insensitively, as directories match them.
async fn check_within_budget(
    app: &AppState,
    username: &str,
    password: &str,
) -> Result<Option<User>, ApiError> {
    let Some(limit) = app.config.login_failure_limit() else {
        return check_credentials(app, username, password).await;
    };
    let attempt = app
        .throttle
        .reserve(LOGIN_FAILURES, &username.to_lowercase(), limit)
        .await
        .map_err(|wait| ApiError::Throttled(wait.seconds))?;
    let outcome = check_credentials(app, username, password).await;
    if !matches!(outcome, Ok(None)) {
        app.throttle.release(attempt).await;
    }
    outcome
}

/// Log in.
///
/// Authenticates with a username and password. On success the response sets the `sessionid`
/// and `csrftoken` cookies and returns the user.
#[endpoint(
    operation_id = "authentication_login_create",
    tags("Authentication"),
    responses((status_code = 200, description = "", body = super::users::UserDoc))
)]
pub async fn login(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = async {
        let app = super::app(depot)?;
        let body = body::read(req).await?;
        body.require_object()?;
        let mut v = Validator::new(&body.fields, false);
        let username = v.text("username", Text::required(150)).flatten();
        let password = v.text(
            "password",
            Text {
                max: 4096,
                required: true,
                nullable: false,
                blank: false,
                trim: false,
            },
        );
        v.finish()?;
        let (Some(username), Some(Some(password))) = (username, password) else {
            return Err(ApiError::field("non_field_errors", INVALID));
        };
        let Some(user) = check_within_budget(&app, &username, &password).await? else {
            return Err(ApiError::field("non_field_errors", INVALID));
        };
        users::set_last_login(&app.db, user.id).await?;
        // The login may have rehashed the password or refreshed the account from LDAP.
        app.sessions
            .invalidate(crate::identity::sessions::Target::User(user.id))
            .await;
        let user = users::by_id(&app.db, user.id).await?.unwrap_or(user);
        let secret = app.secret_key.as_deref().ok_or(ApiError::Internal)?;
        let age = app.config.settings.security.session_age;
        let (token, _) = crate::identity::auth::issue_session(secret, user.id, &user.password, age)
            .map_err(|_| ApiError::Internal)?;
        let body =
            super::resource::represent_one::<super::users::Users>(&app.db, app.timezone, &user)
                .await?;
        Ok((token, age, body))
    }
    .await;
    match result {
        Ok((token, age, body)) => {
            let app = super::app(depot);
            if let Ok(app) = app {
                res.add_cookie(cookie(&app, SESSION_COOKIE, token, age as i64, true));
                res.add_cookie(cookie(
                    &app,
                    CSRF_COOKIE,
                    crate::identity::auth::new_csrf_token(),
                    CSRF_MAX_AGE,
                    false,
                ));
            }
            res.render(Json(body));
        }
        Err(e) => e.render(res),
    }
}

/// Log out.
///
/// Ends the session that carried the request. Other sessions of the user stay valid.
#[endpoint(
    operation_id = "authentication_logout_create",
    tags("Authentication"),
    responses((status_code = 200, description = "No response body"))
)]
pub async fn logout(_req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result: Result<(), ApiError> = async {
        let (app, caller) = context(depot)?;
        if let Via::Session(claims) = &caller.via {
            let expires =
                chrono::DateTime::from_timestamp(claims.exp, 0).unwrap_or_else(chrono::Utc::now);
            app.sessions.revoke(&claims.jti, expires).await?;
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            // Deletes the cookie: empty value, expired.
            let removal = Cookie::build((SESSION_COOKIE, ""))
                .path("/")
                .same_site(SameSite::Lax)
                .max_age(salvo::http::cookie::time::Duration::ZERO)
                .expires(salvo::http::cookie::time::OffsetDateTime::UNIX_EPOCH)
                .build();
            res.add_cookie(removal);
            res.headers_mut().insert(
                salvo::http::header::CONTENT_TYPE,
                salvo::http::HeaderValue::from_static("application/json"),
            );
            res.status_code(StatusCode::OK);
            res.body(salvo::http::ResBody::Once(Default::default()));
        }
        Err(e) => e.render(res),
    }
}

/// Who am I.
///
/// Returns the authenticated user.
#[endpoint(
    operation_id = "authentication_whoami_retrieve",
    tags("Authentication"),
    responses((status_code = 200, description = "", body = super::users::UserDoc))
)]
pub async fn whoami(_req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result: Result<super::users::UserDoc, ApiError> = async {
        let (app, caller) = context(depot)?;
        let me = &caller.user;
        super::resource::represent_one::<super::users::Users>(&app.db, app.timezone, me).await
    }
    .await;
    super::respond(res, StatusCode::OK, result);
}
