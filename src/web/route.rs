//! The route table: every route is declared with its access policy, and the policy is
//! enforced by a hoop on the route the router matched — never by comparing the raw request
//! path with string prefixes. A route also answers every method it does not map itself
//! (405 with `Allow`), so its policy runs first for those too (domain.md §1.3: an anonymous
//! caller gets 401 for every method on a protected route).

use super::ApiError;
use super::access::Gate;
use salvo::http::Method;
use salvo::http::header::{self, HeaderValue};
use salvo::prelude::*;
use serde::Serialize;

/// Who may reach a route at all; finer rules (staff, team roles) are the handlers' and are
/// only reached with an authenticated [`crate::web::api::Caller`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Anyone; a valid session or token is still identified (and CSRF-checked).
    Public,
    /// An authenticated caller; anonymous requests get 401 for every method.
    Authenticated,
}

/// The access rules of one route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub access: Access,
    /// Whether the route is a DRF view, throttled with the `anon`/`user` rates (§1.6).
    pub throttled: bool,
}

impl Policy {
    /// A resource route: authenticated callers only, throttled.
    pub const PROTECTED: Policy = Policy {
        access: Access::Authenticated,
        throttled: true,
    };
    /// An open API view (login, version, health, OpenAPI): throttled.
    pub const PUBLIC: Policy = Policy {
        access: Access::Public,
        throttled: true,
    };
    /// Not an API view (the site root): open and never throttled.
    pub const OPEN: Policy = Policy {
        access: Access::Public,
        throttled: false,
    };
}

/// One route: its path template, the methods it maps, and its policy.
pub struct Endpoint {
    path: String,
    policy: Policy,
    methods: Vec<Method>,
    router: Router,
}

macro_rules! method {
    ($name:ident, $method:ident) => {
        pub fn $name<H: Handler>(mut self, handler: H) -> Self {
            self.router = self.router.$name(handler);
            self.methods.push(Method::$method);
            self
        }
    };
}

impl Endpoint {
    /// A route whose handlers need an authenticated caller.
    pub fn protected(path: impl Into<String>) -> Self {
        Self::new(path, Policy::PROTECTED)
    }

    /// A route open to anonymous callers.
    pub fn public(path: impl Into<String>) -> Self {
        Self::new(path, Policy::PUBLIC)
    }

    pub fn new(path: impl Into<String>, policy: Policy) -> Self {
        let path = path.into();
        Endpoint {
            router: Router::with_path(path.clone()),
            path,
            policy,
            methods: Vec::new(),
        }
    }

    method!(get, GET);
    method!(head, HEAD);
    method!(post, POST);
    method!(put, PUT);
    method!(patch, PATCH);
    method!(delete, DELETE);
    method!(options, OPTIONS);

    fn into_router(self) -> Router {
        let mut allow: Vec<&str> = self.methods.iter().map(Method::as_str).collect();
        allow.sort_unstable();
        allow.dedup();
        let allow =
            HeaderValue::from_str(&allow.join(", ")).unwrap_or(HeaderValue::from_static(""));
        self.router
            .hoop(Gate(self.policy))
            .goal(NotAllowed { allow })
    }
}

/// What the route table says about one route (for `keystone routes` and the path tests).
#[derive(Debug, Clone, Serialize)]
pub struct RouteInfo {
    /// Path template with a leading slash, e.g. `/users/users/{id}/`.
    pub path: String,
    pub methods: Vec<String>,
    #[serde(flatten)]
    pub policy: Policy,
}

/// An ordered set of routes (first match wins, as in the router).
#[derive(Default)]
pub struct Routes {
    endpoints: Vec<Endpoint>,
}

impl Routes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one route or every route of another set.
    #[allow(clippy::should_implement_trait)]
    pub fn push(mut self, more: impl Into<Routes>) -> Self {
        self.endpoints.extend(more.into().endpoints);
        self
    }

    pub fn describe(&self) -> Vec<RouteInfo> {
        self.endpoints
            .iter()
            .map(|e| RouteInfo {
                path: if e.path.is_empty() {
                    "/".into()
                } else {
                    format!("/{}", e.path)
                },
                methods: e.methods.iter().map(|m| m.to_string()).collect(),
                policy: e.policy,
            })
            .collect()
    }

    pub fn into_router(self) -> Router {
        self.endpoints
            .into_iter()
            .fold(Router::new(), |r, e| r.push(e.into_router()))
    }
}

impl From<Endpoint> for Routes {
    fn from(e: Endpoint) -> Self {
        Routes { endpoints: vec![e] }
    }
}

/// Whether some route's template matches this canonical path (segments percent-decoded,
/// `{param}` matching any one segment): upstream redirects an unslashed path only when the
/// slashed path resolves (Django's `APPEND_SLASH`), and answers 404 otherwise.
pub fn resolves(path: &str) -> bool {
    static TEMPLATES: std::sync::OnceLock<Vec<Vec<String>>> = std::sync::OnceLock::new();
    let templates = TEMPLATES.get_or_init(|| {
        super::routes()
            .describe()
            .into_iter()
            .map(|r| segments(&r.path).map(str::to_string).collect())
            .collect()
    });
    let wanted: Vec<String> = segments(path)
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    templates.iter().any(|t| {
        t.len() == wanted.len()
            && t.iter().zip(&wanted).all(|(pattern, segment)| {
                (pattern.starts_with('{') && pattern.ends_with('}') && !segment.is_empty())
                    || pattern == segment
            })
    })
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// The goal of a route for the methods it does not map: 405 with the route's `Allow`.
struct NotAllowed {
    allow: HeaderValue,
}

#[async_trait]
impl Handler for NotAllowed {
    async fn handle(
        &self,
        req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        ApiError::MethodNotAllowed(req.method().to_string()).render(res);
        res.headers_mut().insert(header::ALLOW, self.allow.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::{Access, resolves};

    /// A new route is protected unless it is added here on purpose.
    #[test]
    fn only_the_open_views_are_public() {
        let public: Vec<String> = crate::web::routes()
            .describe()
            .into_iter()
            .filter(|r| r.policy.access == Access::Public)
            .map(|r| r.path)
            .collect();
        assert_eq!(
            public,
            [
                "/",
                "/version/",
                "/health/",
                "/health/json/",
                "/health/prom/",
                "/openapi/json/",
                "/openapi/yaml/",
                "/authentication/login/",
            ]
        );
    }

    #[test]
    fn slashed_paths_resolve_only_to_declared_routes() {
        assert!(resolves("/users/users/"));
        assert!(resolves("/users/users/12/"));
        assert!(resolves("/%75sers/users/"));
        assert!(resolves("/"));
        assert!(resolves("/media/allocations/report.pdf/"));
        assert!(!resolves("/nope/"));
        assert!(!resolves("/users/users/12/extra/"));
        assert!(!resolves("/evil.example/"));
    }
}
