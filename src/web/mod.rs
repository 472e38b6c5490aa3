//! The HTTP surface: router with upstream's exact paths, the middleware every response passes
//! through (host check, HTTPS redirect, trailing-slash redirect, body limit, security headers),
//! and the mapping of errors to upstream's JSON bodies.

pub mod access;
pub mod api;
pub(crate) mod base;
pub mod canonical;
pub mod client;
pub mod files;
pub mod negotiation;
pub mod openapi;
mod panic;
pub mod request_log;
pub mod route;
pub mod throttle;
mod unix;

use crate::config::Config;
use crate::infra::health::HealthChecker;
use crate::store::Db;
use salvo::catcher::Catcher;
use salvo::http::StatusCode;
use salvo::http::header::{self, HeaderValue};
use salvo::prelude::*;
use std::sync::Arc;

pub use unix::InheritedUnixAcceptor;

/// Everything a handler needs, injected into every request's depot. Cheap to clone: a
/// `/batch/` job runs its steps with a copy whose `db` is the job's transaction.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    /// The site's zone (`server.timezone`), parsed once: every response renders its
    /// datetimes in it.
    pub timezone: chrono_tz::Tz,
    pub db: Db,
    /// Signing key of session tokens.
    pub secret_key: Option<String>,
    pub throttle: Arc<crate::web::throttle::Throttle>,
    /// Session lookups (cached with Redis), logouts and their invalidation everywhere.
    pub sessions: Arc<crate::identity::sessions::Sessions>,
    /// Request logging (None disables it, e.g. in benchmarks of the bare stack).
    pub request_log: Option<request_log::RequestLog>,
    pub health: Arc<HealthChecker>,
    pub openapi: Arc<openapi::Documents>,
}

/// Fetches the shared state from the depot (present on every route by construction).
pub fn state(depot: &Depot) -> Result<&Arc<AppState>, StatusError> {
    depot
        .get_typed::<Arc<AppState>>()
        .map_err(|_| StatusError::internal_server_error())
}

/// The JSON error bodies of upstream (`{"detail": ...}` or field errors), rendered in one place.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    BadRequest(String),
    /// 400 with field errors: `{"field": ["message", ...]}`.
    Fields(serde_json::Map<String, serde_json::Value>),
    /// 401 with `WWW-Authenticate: Token`.
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    MethodNotAllowed(String),
    /// 406: the `Accept` header names nothing the route renders.
    NotAcceptable,
    Conflict(String),
    PayloadTooLarge(u64),
    UnsupportedMediaType(String),
    Throttled(u64),
    /// 503: the database cannot be reached right now (restarting, failing over, refusing
    /// connections); the client may try again.
    Unavailable,
    Internal,
}

/// The one place a domain refusal becomes an HTTP answer (status and upstream's body).
impl From<crate::domain::DomainError> for ApiError {
    fn from(e: crate::domain::DomainError) -> Self {
        use crate::domain::DomainError as D;
        match e {
            D::Invalid(fields) => ApiError::Fields(fields),
            D::Unauthenticated => ApiError::not_authenticated(),
            D::Forbidden => ApiError::forbidden(),
            D::NotOffered(method) => ApiError::MethodNotAllowed(method.into()),
            D::NotFound(model) => ApiError::no_match(model),
            D::Conflict(message) => ApiError::Conflict(message),
        }
    }
}

pub const NOT_AUTHENTICATED: &str = "Authentication credentials were not provided.";
pub const NO_PERMISSION: &str = "You do not have permission to perform this action.";

impl ApiError {
    pub fn not_authenticated() -> Self {
        ApiError::Unauthorized(NOT_AUTHENTICATED.into())
    }

    pub fn forbidden() -> Self {
        ApiError::Forbidden(NO_PERMISSION.into())
    }

    /// `Ok` when the caller is `allowed`, else 403 (the object- and view-level rules).
    pub fn forbidden_unless(allowed: bool) -> Result<(), ApiError> {
        if allowed {
            Ok(())
        } else {
            Err(ApiError::forbidden())
        }
    }

    pub fn not_found() -> Self {
        ApiError::NotFound("Not found.".into())
    }

    /// `No <Model> matches the given query.`
    pub fn no_match(model: &str) -> Self {
        ApiError::NotFound(format!("No {model} matches the given query."))
    }

    /// One field error.
    pub fn field(name: &str, message: impl Into<String>) -> Self {
        let mut m = serde_json::Map::new();
        m.insert(
            name.to_string(),
            serde_json::Value::Array(vec![serde_json::Value::String(message.into())]),
        );
        ApiError::Fields(m)
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::Fields(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn body(&self) -> serde_json::Value {
        let detail = match self {
            ApiError::Fields(m) => return serde_json::Value::Object(m.clone()),
            ApiError::BadRequest(m)
            | ApiError::Unauthorized(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m) => m.clone(),
            ApiError::MethodNotAllowed(m) => format!("Method \"{m}\" not allowed."),
            ApiError::NotAcceptable => negotiation::NOT_ACCEPTABLE.into(),
            ApiError::PayloadTooLarge(limit) => {
                format!("Request body too large: the limit is {limit} bytes.")
            }
            ApiError::UnsupportedMediaType(t) => {
                format!("Unsupported media type \"{t}\" in request.")
            }
            ApiError::Throttled(secs) => crate::web::throttle::wait_message(*secs),
            ApiError::Unavailable => {
                "The database is temporarily unavailable. Try again shortly.".into()
            }
            ApiError::Internal => "Internal server error.".into(),
        };
        serde_json::json!({ "detail": detail })
    }

    pub fn render(&self, res: &mut Response) {
        res.status_code(self.status());
        match self {
            ApiError::Unauthorized(_) => {
                res.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Token"));
            }
            ApiError::Throttled(secs) => {
                if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                    res.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            _ => {}
        }
        res.render(Json(self.body()));
    }
}

impl From<crate::store::DbError> for ApiError {
    fn from(e: crate::store::DbError) -> Self {
        match &e {
            crate::store::DbError::Query(q) | crate::store::DbError::Connect(q) => {
                ApiError::from_sqlx(q)
            }
            _ => {
                tracing::error!("database error: {e}");
                ApiError::Internal
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::from_sqlx(&e)
    }
}

impl ApiError {
    /// 503 while the database cannot be reached (the request did nothing, or its
    /// transaction was rolled back), 500 for any other database error.
    fn from_sqlx(e: &sqlx::Error) -> Self {
        if crate::store::unavailable(e) {
            tracing::warn!("database unavailable: {e}");
            ApiError::Unavailable
        } else {
            tracing::error!("database error: {e}");
            ApiError::Internal
        }
    }
}

#[async_trait]
impl Writer for ApiError {
    async fn write(self, _req: &mut Request, _depot: &mut Depot, res: &mut Response) {
        self.render(res);
    }
}

/// Injects the shared state.
pub(crate) struct InjectState(pub(crate) Arc<AppState>);

#[handler]
impl InjectState {
    async fn handle(&self, depot: &mut Depot) {
        depot.insert_typed(self.0.clone());
    }
}

/// Host name of the request without port, lower-cased.
fn request_host(req: &Request) -> Option<String> {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().host().map(str::to_string))?;
    let host = if raw.starts_with('[') {
        raw.split(']').next().map(|h| format!("{h}]"))?
    } else {
        raw.split(':').next()?.to_string()
    };
    Some(host.to_ascii_lowercase())
}

/// `security.allowed_hosts` matching: `*`, exact, or `.domain` for the domain and subdomains.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|pattern| {
        let p = pattern.to_ascii_lowercase();
        if p == "*" {
            return true;
        }
        if let Some(domain) = p.strip_prefix('.') {
            return host == domain || host.ends_with(&p);
        }
        host == p
            || host.trim_matches(|c| c == '[' || c == ']')
                == p.trim_matches(|c| c == '[' || c == ']')
    })
}

/// `301` with an empty body, as upstream's redirects.
fn moved_permanently(res: &mut Response, target: &str) {
    res.status_code(StatusCode::MOVED_PERMANENTLY);
    match HeaderValue::from_str(target) {
        Ok(v) => {
            res.headers_mut().insert(header::LOCATION, v);
        }
        Err(_) => ApiError::BadRequest("Invalid redirect target.".into()).render(res),
    }
}

fn is_secure(req: &Request) -> bool {
    req.uri().scheme_str() == Some("https")
        || req
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(',')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("https")
            })
            .unwrap_or(false)
}

/// Runs before routing decisions matter: host check, HTTPS redirect, trailing slash, body
/// limit; and after the handler: the security headers every response carries.
#[handler]
async fn gatekeeper(req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
    let Ok(app) = state(depot).cloned() else {
        ApiError::Internal.render(res);
        ctrl.skip_rest();
        return;
    };
    let s = &app.config.settings;
    let secure = is_secure(req);
    let host_ok = request_host(req)
        .map(|h| host_allowed(&h, &s.security.allowed_hosts))
        .unwrap_or(false);
    if !host_ok {
        ApiError::BadRequest("Invalid Host header.".into()).render(res);
        ctrl.skip_rest();
    } else if s.security.ssl_redirect && !secure {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("localhost")
            .to_string();
        let target = format!(
            "https://{host}{}",
            req.uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
        );
        moved_permanently(res, &target);
        ctrl.skip_rest();
    } else if let Err(why) = canonical::check(req.uri().path()) {
        // Never routed: the router would normalise it into some other route's path.
        tracing::debug!("refused a non-canonical path: {why}");
        ApiError::not_found().render(res);
        ctrl.skip_rest();
    } else if !req.uri().path().ends_with('/') && route::resolves(&format!("{}/", req.uri().path()))
    {
        // Every route ends with a slash; upstream answers the unslashed path of a route with
        // a 301 (and an unknown one with 404). The path is canonical here (one leading
        // slash), so the target stays on this host.
        let target = match req.uri().query() {
            Some(q) => format!("{}/?{q}", req.uri().path()),
            None => format!("{}/", req.uri().path()),
        };
        moved_permanently(res, &target);
        ctrl.skip_rest();
    } else if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|len| *len > s.server.max_body_size)
    {
        tracing::debug!("refused a {len}-byte body");
        ApiError::PayloadTooLarge(s.server.max_body_size).render(res);
        ctrl.skip_rest();
    } else {
        ctrl.call_next(req, depot, res).await;
    }
    let headers = res.headers_mut();
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    if secure && s.security.hsts_seconds > 0 {
        let mut value = format!("max-age={}", s.security.hsts_seconds);
        if s.security.hsts_subdomains {
            value.push_str("; includeSubDomains");
        }
        if s.security.hsts_preload {
            value.push_str("; preload");
        }
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(header::STRICT_TRANSPORT_SECURITY, v);
        }
    }
}

/// `scheme://host[:port]` with default ports dropped, for comparing origins.
fn normalize_origin(o: &str) -> String {
    url::Url::parse(o)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| o.trim_end_matches('/').to_ascii_lowercase())
}

const CORS_METHODS: &str = "DELETE, GET, OPTIONS, PATCH, POST, PUT";
const CORS_HEADERS: &str = "accept, authorization, content-type, user-agent, x-csrftoken, x-requested-with, x-keystone-cid";

/// CORS for `security.allowed_origins`, with credentials. Preflights are answered here,
/// before logging and authentication.
#[handler]
async fn cors(req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let allowed = match (state(depot), &origin) {
        (Ok(app), Some(o)) => {
            let n = normalize_origin(o);
            app.config
                .settings
                .security
                .allowed_origins
                .iter()
                .any(|a| normalize_origin(a) == n)
        }
        _ => false,
    };
    let preflight = req.method() == salvo::http::Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        res.status_code(StatusCode::OK);
        res.body(salvo::http::ResBody::Once(Default::default()));
        if allowed {
            let h = res.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(CORS_METHODS),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(CORS_HEADERS),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            );
        }
        ctrl.skip_rest();
    } else {
        ctrl.call_next(req, depot, res).await;
    }
    if let (true, Some(o)) = (allowed, origin)
        && let Ok(v) = HeaderValue::from_str(&o)
    {
        {
            let h = res.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
            h.append(header::VARY, HeaderValue::from_static("origin"));
        }
    }
}

/// Gives framework-generated errors (unknown path, wrong method, panics) upstream's bodies.
#[handler]
async fn json_errors(req: &Request, res: &mut Response, ctrl: &mut FlowCtrl) {
    render_framework_error(req, res);
    ctrl.skip_rest();
}

/// Renders the status the framework set (404, 405, 413, 5xx) as upstream's JSON body.
pub(crate) fn render_framework_error(req: &Request, res: &mut Response) {
    let status = res.status_code.unwrap_or(StatusCode::NOT_FOUND);
    let error = match status {
        StatusCode::NOT_FOUND => ApiError::not_found(),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed(req.method().to_string()),
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge(salvo::http::request::global_secure_max_size() as u64)
        }
        s if s.is_server_error() => ApiError::Internal,
        s => ApiError::BadRequest(s.canonical_reason().unwrap_or("Bad request").to_string()),
    };
    let allow = res.headers().get(header::ALLOW).cloned();
    error.render(res);
    res.status_code(status);
    if let Some(allow) = allow {
        res.headers_mut().insert(header::ALLOW, allow);
    }
}

/// Every route with its access policy, in matching order.
pub fn routes() -> route::Routes {
    base::routes().push(crate::web::api::routes())
}

/// All routes. Kept free of state so the OpenAPI document can be generated from it alone.
pub fn router() -> Router {
    routes().into_router()
}

/// The service: routes, middleware and error bodies around the given state.
pub fn service(state: Arc<AppState>) -> Service {
    salvo::http::request::set_global_secure_max_size(
        usize::try_from(state.config.settings.server.max_body_size).unwrap_or(usize::MAX),
    );
    // Service-level hoops run for unmatched paths too (404/405 get headers and redirects).
    Service::new(router())
        .hoop(crate::infra::metrics::http_metrics)
        .hoop(InjectState(state))
        .hoop(cors)
        .hoop(request_log::log_requests)
        .hoop(panic::catch_panics)
        .hoop(gatekeeper)
        .catcher(Catcher::default().hoop(json_errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_hosts_match_exact_wildcard_and_subdomains() {
        let allowed: Vec<String> = vec!["localhost".into(), ".example.org".into()];
        assert!(host_allowed("localhost", &allowed));
        assert!(host_allowed("example.org", &allowed));
        assert!(host_allowed("api.example.org", &allowed));
        assert!(!host_allowed("evil.org", &allowed));
        assert!(!host_allowed("badexample.org", &allowed));
        assert!(host_allowed("anything", &["*".to_string()]));
    }

    /// Each domain refusal answers with upstream's status and body.
    #[test]
    fn domain_refusals_become_upstreams_answers() {
        use crate::domain::DomainError as D;
        let answer = |e: D| {
            let e = ApiError::from(e);
            (e.status().as_u16(), e.body())
        };
        assert_eq!(
            answer(D::field("name", "This field is required.")),
            (
                400,
                serde_json::json!({"name": ["This field is required."]})
            )
        );
        assert_eq!(
            answer(D::Unauthenticated),
            (401, serde_json::json!({"detail": NOT_AUTHENTICATED}))
        );
        assert_eq!(
            answer(D::Forbidden),
            (403, serde_json::json!({"detail": NO_PERMISSION}))
        );
        assert_eq!(
            answer(D::NotOffered("PUT")),
            (
                405,
                serde_json::json!({"detail": "Method \"PUT\" not allowed."})
            )
        );
        assert_eq!(
            answer(D::NotFound("Team")),
            (
                404,
                serde_json::json!({"detail": "No Team matches the given query."})
            )
        );
        assert_eq!(
            answer(D::Conflict("busy".into())),
            (409, serde_json::json!({"detail": "busy"}))
        );
    }
}
