//! The gate of every route, in upstream's order (domain.md §1.3, §5.1): token first, then
//! the session cookie; CSRF for session-authenticated unsafe requests; 401 for anonymous
//! callers of protected routes whatever the method; then throttling. What applies is the
//! [`Policy`] the matched route was declared with (`crate::web::route`), never the raw path.

use super::route::{Access, Policy};
use super::{ApiError, state};
use crate::identity::auth;
use crate::store::users;
use crate::web::api::{Caller, Via};
use salvo::http::{Method, header};
use salvo::prelude::*;

pub const SESSION_COOKIE: &str = "sessionid";
pub const CSRF_COOKIE: &str = "csrftoken";

fn unsafe_method(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

fn header_str<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Token authentication: `Some(Ok(user))`, `Some(Err(401))`, or `None` when no token header.
async fn token_user(req: &Request, db: &crate::store::Db) -> Option<Result<users::User, ApiError>> {
    let value = header_str(req, header::AUTHORIZATION.as_str())?;
    let mut parts = value.split(' ').filter(|p| !p.is_empty());
    let keyword = parts.next()?;
    if !keyword.eq_ignore_ascii_case("token") {
        return None;
    }
    let rest: Vec<&str> = parts.collect();
    let key = match rest.as_slice() {
        [] => {
            return Some(Err(ApiError::Unauthorized(
                "Invalid token header. No credentials provided.".into(),
            )));
        }
        [key] => *key,
        _ => {
            return Some(Err(ApiError::Unauthorized(
                "Invalid token header. Token string should not contain spaces.".into(),
            )));
        }
    };
    match users::by_api_key_hash(db, &auth::hash_api_key(key)).await {
        Ok(Some(user)) if user.is_active => Some(Ok(user)),
        Ok(Some(_)) => Some(Err(ApiError::Unauthorized(
            "User inactive or deleted.".into(),
        ))),
        Ok(None) => Some(Err(ApiError::Unauthorized("Invalid token.".into()))),
        Err(e) => Some(Err(e.into())),
    }
}

/// Session authentication; any problem (bad signature, expired, revoked, password changed,
/// inactive or deleted user) makes the caller anonymous.
async fn session_user(
    req: &Request,
    app: &super::AppState,
    secret: &str,
) -> Result<Option<(users::User, auth::SessionClaims)>, ApiError> {
    let Some(cookie) = req.cookie(SESSION_COOKIE) else {
        return Ok(None);
    };
    let Some(claims) = auth::decode_session(secret, cookie.value()) else {
        return Ok(None);
    };
    Ok(app.sessions.user(&claims).await?.map(|user| (user, claims)))
}

/// The hoop of each method a staff-only route maps, after its [`Gate`]: 403 for a caller
/// who is not staff, so no handler of such a route runs for one.
pub struct StaffOnly;

#[handler]
impl StaffOnly {
    async fn handle(&self, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
        let staff = depot
            .get_typed::<Caller>()
            .is_ok_and(|caller| caller.is_staff());
        if !staff {
            ApiError::forbidden().render(res);
            ctrl.skip_rest();
        }
    }
}

/// The hoop of a route: identifies the caller, applies the route's policy, and puts the
/// authenticated [`Caller`] (if any) in the depot for the handlers.
pub struct Gate(pub Policy);

#[handler]
impl Gate {
    async fn handle(
        &self,
        req: &Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        if let Err(e) = self.admit(req, depot).await {
            e.render(res);
            ctrl.skip_rest();
        }
    }

    /// Identifies the caller and applies the policy; an error is the response to send.
    async fn admit(&self, req: &Request, depot: &mut Depot) -> Result<(), ApiError> {
        let app = state(depot).cloned().map_err(|_| ApiError::Internal)?;
        if depot.get_typed::<Cid>().is_err() {
            depot.insert_typed(Cid(correlation_id(req)));
        }
        // Steps of a batch carry the batch caller's identity (no cookies, no CSRF).
        let caller = match depot.get_typed::<Delegated>() {
            Ok(d) => Some(d.0.clone()),
            Err(_) => identify(req, &app).await?,
        };
        if caller.is_none() && self.0.access != Access::Public {
            return Err(ApiError::not_authenticated());
        }
        if self.0.throttled
            && let Err(wait) = check_throttle(req, &app, caller.as_ref()).await
        {
            return Err(ApiError::Throttled(wait));
        }
        if let Some(caller) = caller {
            tracing::Span::current().record("keystone_user_id", caller.id());
            depot.insert_typed(caller);
        }
        Ok(())
    }
}

/// The identity a `/batch/` step runs as: the authenticated caller of the batch request.
#[derive(Debug, Clone)]
pub struct Delegated(pub Caller);

async fn identify(req: &Request, app: &super::AppState) -> Result<Option<Caller>, ApiError> {
    if let Some(result) = token_user(req, &app.db).await {
        return Ok(Some(Caller {
            user: result?,
            via: Via::Token,
        }));
    }
    let Some(secret) = app.secret_key.as_deref() else {
        return Ok(None);
    };
    let Some((user, claims)) = session_user(req, app, secret).await? else {
        return Ok(None);
    };
    if unsafe_method(req.method()) {
        let s = &app.config.settings;
        let own_origin = crate::web::api::base_url(req);
        let check = auth::CsrfRequest {
            secure: own_origin.starts_with("https://"),
            own_origin,
            origin: header_str(req, "origin"),
            referer: header_str(req, "referer"),
            cookie: req.cookie(CSRF_COOKIE).map(|c| c.value()),
            header: header_str(req, "x-csrftoken"),
            trusted_origins: &s.security.allowed_origins,
        };
        if let Err(failure) = auth::check_csrf(&check) {
            return Err(ApiError::Forbidden(failure.detail()));
        }
    }
    Ok(Some(Caller {
        user,
        via: Via::Session(claims),
    }))
}

/// Anonymous callers count against both the anon and the user rate (keyed by client
/// identity); authenticated ones against the user rate keyed by user id.
async fn check_throttle(
    req: &Request,
    app: &super::AppState,
    caller: Option<&Caller>,
) -> Result<(), u64> {
    let s = &app.config.settings;
    let (Ok(anon), Ok(user)) = (
        s.throttle.anon.parse::<crate::config::Rate>(),
        s.throttle.user.parse::<crate::config::Rate>(),
    ) else {
        return Ok(());
    };
    match caller.map(Caller::id) {
        Some(id) => app
            .throttle
            .check("user", &id.to_string(), user)
            .await
            .map_err(|w| w.seconds),
        None => {
            // Anonymous callers are told apart by their address (section 5 of
            // docs/security.md); requests with none (a Unix-socket peer without a trusted
            // proxy header) share one bucket.
            let ident = super::client::client_ip(req, s)
                .map(|ip| ip.to_string())
                .unwrap_or_else(|| "-".into());
            // Both budgets are always counted; with Redis the two scripts run side by side.
            let (a, u) = tokio::join!(
                app.throttle.check("anon", &ident, anon),
                app.throttle.check("user", &ident, user)
            );
            match (a, u) {
                (Ok(()), Ok(())) => Ok(()),
                (a, u) => Err(a
                    .err()
                    .map(|w| w.seconds)
                    .max(u.err().map(|w| w.seconds))
                    .unwrap_or(1)),
            }
        }
    }
}

/// The correlation id of a request (`X-KEYSTONE-CID` when it is a UUID of at most 36
/// characters, kept verbatim; otherwise a generated one), decided before handling.
#[derive(Debug, Clone)]
pub struct Cid(pub String);

pub fn correlation_id(req: &Request) -> String {
    header_str(req, "x-keystone-cid")
        .filter(|v| v.len() <= 36 && uuid::Uuid::parse_str(v).is_ok())
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Who and where, for audit entries written while handling this request.
pub fn audit_context(req: &Request, depot: &Depot) -> crate::store::audit::AuditContext {
    let caller = depot.get_typed::<Caller>().ok();
    let cid = depot
        .get_typed::<Cid>()
        .ok()
        .map(|c| c.0.clone())
        .unwrap_or_else(|| correlation_id(req));
    let trusted = state(depot).ok().map(|app| &app.config.settings);
    let remote_addr = trusted
        .and_then(|s| super::client::client_ip(req, s))
        .map(|ip| ip.to_string());
    // The port a trusted proxy reports, else the peer's own.
    let remote_port = match trusted {
        Some(s) if s.server.trust_forwarded_for => {
            header_str(req, "x-forwarded-port").and_then(|p| p.trim().parse::<i32>().ok())
        }
        _ => req
            .remote_addr()
            .as_ipv4()
            .map(|a| i32::from(a.port()))
            .or_else(|| req.remote_addr().as_ipv6().map(|a| i32::from(a.port()))),
    };
    crate::store::audit::AuditContext {
        actor: caller.map(Caller::id),
        actor_email: caller.and_then(|c| c.user.email.clone()),
        cid: Some(cid),
        remote_addr,
        remote_port,
    }
}
