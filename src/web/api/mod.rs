//! The resource API: who is calling, request bodies, and one module per resource family.
//! Shared list machinery (filters, search, ordering, pagination) lives in `list`.

pub mod allocations;
pub mod authentication;
pub mod batch;
pub mod body;
pub mod cascade;
pub mod choices;
pub mod client_config;
pub mod list;
pub mod logs;
pub mod memberships;
pub mod notifications;
pub mod research;
pub mod resource;
pub mod stats;
pub mod summaries;
pub mod teams;
pub mod users;

use crate::identity::auth::SessionClaims;
use crate::store::users::User;
use crate::web::route::{Endpoint, Routes};
use crate::web::{ApiError, AppState};
use salvo::prelude::*;
use std::sync::Arc;

/// How the caller authenticated.
#[derive(Debug, Clone)]
pub enum Via {
    Session(SessionClaims),
    Token,
}

/// The authenticated user of a request. Only the route gate (`crate::web::access`) puts one
/// in the depot, after it has checked the credentials; handlers of protected routes get it
/// through [`context`], so a handler cannot run as an anonymous caller by forgetting a check.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: User,
    pub via: Via,
}

impl Caller {
    pub fn is_staff(&self) -> bool {
        self.user.is_staff
    }

    pub fn id(&self) -> i64 {
        self.user.id
    }
}

/// State and authenticated caller of the current request; 401 when the request carries no
/// valid credentials (the gate of a protected route has already answered that case).
pub fn context(depot: &Depot) -> Result<(Arc<AppState>, Caller), ApiError> {
    let app = crate::web::state(depot)
        .map_err(|_| ApiError::Internal)?
        .clone();
    let caller = depot
        .get_typed::<Caller>()
        .cloned()
        .map_err(|_| ApiError::not_authenticated())?;
    Ok((app, caller))
}

/// The shared state, for public routes (login) that have no caller to require.
pub fn app(depot: &Depot) -> Result<Arc<AppState>, ApiError> {
    Ok(crate::web::state(depot)
        .map_err(|_| ApiError::Internal)?
        .clone())
}

/// The authenticated caller, if any: for the few public routes (login) that behave
/// differently for a caller who already holds a session.
pub fn identity(depot: &Depot) -> Option<Caller> {
    depot.get_typed::<Caller>().ok().cloned()
}

/// Parses the `{id}` path parameter: anything but a non-negative integer is a plain 404.
pub fn path_id(req: &Request) -> Result<i64, ApiError> {
    req.param::<String>("id")
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|id| *id >= 0)
        .ok_or_else(ApiError::not_found)
}

/// `scheme://host` as the client addressed this server, for absolute links.
pub fn base_url(req: &Request) -> String {
    let forwarded_https = req
        .headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().eq_ignore_ascii_case("https"))
        .unwrap_or(false);
    let scheme = if forwarded_https || req.uri().scheme_str() == Some("https") {
        "https"
    } else {
        "http"
    };
    let host = req
        .headers()
        .get(salvo::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    format!("{scheme}://{host}")
}

/// Renders a result as JSON with a status, or the error.
pub fn respond<T: serde::Serialize + Send>(
    res: &mut Response,
    status: salvo::http::StatusCode,
    result: Result<T, ApiError>,
) {
    match result {
        Ok(v) => {
            res.status_code(status);
            json_body(res, &v);
        }
        Err(e) => e.render(res),
    }
}

/// Writes `value` as the JSON body: the bytes `Json` renders, serialized into one growing
/// buffer (a 100-record page is about 400 KB) rather than through many small writes.
pub fn json_body<T: serde::Serialize>(res: &mut Response, value: &T) {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            if !res
                .headers()
                .contains_key(salvo::http::header::CONTENT_TYPE)
            {
                res.headers_mut().insert(
                    salvo::http::header::CONTENT_TYPE,
                    salvo::http::HeaderValue::from_static("application/json; charset=utf-8"),
                );
            }
            res.body(bytes);
        }
        Err(e) => {
            tracing::error!("could not serialize a response: {e}");
            ApiError::Internal.render(res);
        }
    }
}

use crate::web::base::Metadata;

const JSON: &[&str] = &["application/json"];

pub(crate) fn meta(name: &'static str, description: &'static str) -> Metadata {
    Metadata {
        name,
        description,
        renders: JSON,
    }
}

macro_rules! read_only {
    ($path:expr, $get:expr, $name:expr) => {
        $crate::web::route::Endpoint::protected($path)
            .get($get)
            .head($get)
            .options($crate::web::api::meta($name, ""))
    };
}

// The route shape of read-only endpoints beside the declared resources.
#[allow(unused_imports)]
pub(crate) use read_only;

/// Every resource route, with upstream's exact paths.
pub fn routes() -> Routes {
    Routes::new()
        .push(
            Endpoint::public("authentication/login/")
                .post(authentication::login)
                .options(meta("Login", "")),
        )
        .push(
            Endpoint::protected("authentication/logout/")
                .post(authentication::logout)
                .options(meta("Logout", "")),
        )
        .push(read_only!(
            "authentication/whoami/",
            authentication::whoami,
            "Who Am I"
        ))
        .push(resource::routes::<users::Users>())
        .push(resource::routes::<teams::Teams>())
        .push(resource::routes::<memberships::Memberships>())
        .push(read_only!(
            "users/membership-choices/role/",
            choices::membership_role,
            "Membership Role Choices"
        ))
        .push(read_only!(
            "allocations/request-choices/status/",
            choices::request_status,
            "Allocation Request Status Choices"
        ))
        .push(read_only!(
            "allocations/review-choices/status/",
            choices::review_status,
            "Allocation Review Status Choices"
        ))
        .push(read_only!(
            "allocations/cluster-choices/access-mode/",
            choices::cluster_access_mode,
            "Cluster Access Mode Choices"
        ))
        .push(read_only!(
            "notifications/notification-choices/type/",
            choices::notification_type,
            "Notification Type Choices"
        ))
        .push(read_only!("config/", client_config::retrieve, "Config"))
        .push(logs::routes())
        .push(roots())
        .push(allocations::routes())
        .push(research::routes())
        .push(notifications::routes())
        .push(stats::routes())
        .push(batch::routes())
}

/// Resource names of each router prefix, for the API roots (domain.md §1.1).
const ROOTS: [(&str, &[&str]); 4] = [
    ("users", &["memberships", "teams", "users"]),
    (
        "allocations",
        &[
            "allocations",
            "attachments",
            "clusters",
            "comments",
            "requests",
            "reviews",
        ],
    ),
    ("research", &["grants", "publications"]),
    ("notifications", &["notifications", "preferences"]),
];

/// `GET /<prefix>/`: each resource name mapped to its absolute collection URL.
#[handler]
async fn api_root(req: &mut Request, depot: &mut Depot, res: &mut Response) {
    let result = context(depot).map(|(_, _caller)| {
        // The router prefix: the first segment (also of the suffixed `/users/.json`).
        let prefix = req
            .uri()
            .path()
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let base = base_url(req);
        let names = ROOTS
            .iter()
            .find(|(p, _)| *p == prefix)
            .map(|(_, names)| *names)
            .unwrap_or(&[]);
        let map: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .map(|n| (n.to_string(), format!("{base}/{prefix}/{n}/").into()))
            .collect();
        serde_json::Value::Object(map)
    });
    respond(res, salvo::http::StatusCode::OK, result);
}

/// The API roots of the four router prefixes.
pub fn roots() -> Routes {
    ROOTS.iter().fold(Routes::new(), |r, (prefix, _)| {
        r.push(
            Endpoint::protected(format!("{prefix}/"))
                .get(api_root)
                .head(api_root)
                .options(meta("Api Root", ""))
                .format_suffix(),
        )
    })
}

/// 204 with an empty body, or the error.
pub fn no_content(res: &mut Response, result: Result<(), ApiError>) {
    match result {
        Ok(()) => {
            res.status_code(salvo::http::StatusCode::NO_CONTENT);
        }
        Err(e) => e.render(res),
    }
}
