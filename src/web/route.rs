//! The route table: every route is declared with its access policy, and the policy is
//! enforced by a hoop on the route the router matched — never by comparing the raw request
//! path with string prefixes. A route also answers every method it does not map itself
//! (405 with `Allow`), so its policy runs first for those too (domain.md §1.3: an anonymous
//! caller gets 401 for every method on a protected route).

use super::ApiError;
use super::access::{Gate, StaffOnly};
use super::negotiation::{self, Negotiate, Renderer};
use salvo::http::Method;
use salvo::http::header::{self, HeaderValue};
use salvo::prelude::*;
use salvo::routing::filters::MethodFilter;
use serde::Serialize;
use std::sync::Arc;

/// Who may reach a route at all; finer rules (staff, team roles) are the handlers' and are
/// only reached with an authenticated [`crate::web::api::Caller`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Anyone; a valid session or token is still identified (and CSRF-checked).
    Public,
    /// An authenticated caller; anonymous requests get 401 for every method.
    Authenticated,
    /// An authenticated staff caller: anonymous requests get 401 for every method, other
    /// callers 403 for every method the route maps (the others still answer 405).
    Staff,
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
    /// A staff-only API view (the logs): throttled.
    pub const STAFF: Policy = Policy {
        access: Access::Staff,
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
    goals: Vec<Arc<dyn Handler>>,
    /// `None`: not negotiated (not an API view, or a file download).
    renderers: Option<&'static [Renderer]>,
    format_suffix: bool,
}

macro_rules! method {
    ($name:ident, $method:ident) => {
        pub fn $name<H: Handler>(mut self, handler: H) -> Self {
            self.goals.push(Arc::new(handler));
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

    /// A route whose handlers need an authenticated staff caller.
    pub fn staff(path: impl Into<String>) -> Self {
        Self::new(path, Policy::STAFF)
    }

    /// A route open to anonymous callers.
    pub fn public(path: impl Into<String>) -> Self {
        Self::new(path, Policy::PUBLIC)
    }

    pub fn new(path: impl Into<String>, policy: Policy) -> Self {
        Endpoint {
            path: path.into(),
            policy,
            methods: Vec::new(),
            goals: Vec::new(),
            // Upstream's API views are the throttled ones; each negotiates its renderers.
            renderers: policy.throttled.then_some(negotiation::JSON),
            format_suffix: false,
        }
    }

    /// What the route renders, when it is not JSON alone (content negotiation).
    pub fn renders(mut self, renderers: &'static [Renderer]) -> Self {
        self.renderers = Some(renderers);
        self
    }

    /// A file download: the body is the file's own type, whatever the `Accept` header
    /// names, so no negotiation (its errors are still JSON).
    pub fn unnegotiated(mut self) -> Self {
        self.renderers = None;
        self
    }

    /// The route of a resource router upstream also answers with a format suffix
    /// (`/users/teams.json`, `/users/teams/5.json/`, `/users/.json`): the suffixed path
    /// reaches this same route, its gate and its handlers.
    pub fn format_suffix(mut self) -> Self {
        self.format_suffix = true;
        self
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
        let build = |path: &str, shared: bool| {
            let mut router = Router::with_path(path);
            for (method, goal) in self.methods.iter().zip(&self.goals) {
                let mut child = Router::with_filter(MethodFilter::new(method.clone()));
                if self.policy.access == Access::Staff {
                    child = child.hoop(StaffOnly);
                }
                if shared {
                    child = child.goal(Shared(goal.clone()));
                } else {
                    // The handler itself, so the OpenAPI document finds its annotations.
                    child.goal = Some(goal.clone());
                }
                router = router.push(child);
            }
            // Negotiation runs first, as in upstream's views (domain.md §1.3); then the gate.
            if let Some(renderers) = self.renderers {
                router = router.hoop(Negotiate(renderers));
            }
            router.hoop(Gate(self.policy)).goal(NotAllowed {
                allow: allow.clone(),
            })
        };
        let plain = build(&self.path, false);
        match suffixed(&self.path).filter(|_| self.format_suffix) {
            // The suffixed path first: the plain `{id}` would also take `5.json`.
            Some(path) => Router::new().push(build(&path, true)).push(plain),
            None => plain,
        }
    }
}

/// The format-suffixed template of a route path, as upstream's `format_suffix_patterns`
/// derives it from a router's pattern (the part after the first segment, the router's
/// prefix): its trailing slash dropped, then `.{format}` (`[a-z0-9]+`), the final slash
/// optional. An `{id}` stops at a dot, as upstream's `[^/.]+`. The router's own root
/// (`users/`) becomes `users/.{format}`.
fn suffixed(path: &str) -> Option<String> {
    let (prefix, pattern) = path.split_once('/')?;
    let pattern = pattern
        .strip_suffix('/')
        .unwrap_or(pattern)
        .replace("{id}", "{id|[^.]+}");
    Some(if pattern.is_empty() {
        format!("{prefix}/.{{format|[a-z0-9]+}}")
    } else {
        format!("{prefix}/{pattern}.{{format|[a-z0-9]+}}")
    })
}

/// A handler shared by a route's plain and suffixed paths. The suffixed path does not
/// appear in the OpenAPI document (upstream's does not list it either): the document only
/// knows the annotated handler types, and this wrapper is not one.
struct Shared(Arc<dyn Handler>);

#[async_trait]
impl Handler for Shared {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        self.0.handle(req, depot, res, ctrl).await;
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
/// `{param}` matching any one segment, `{id}` one without a dot): upstream redirects an
/// unslashed path only when the slashed path resolves (Django's `APPEND_SLASH`), and
/// answers 404 otherwise.
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
                // An `{id}` is upstream's `[^/.]+`: `5.json` is a format suffix, not an id.
                (pattern == "{id}" && !segment.is_empty() && !segment.contains('.'))
                    || (pattern != "{id}"
                        && pattern.starts_with('{')
                        && pattern.ends_with('}')
                        && !segment.is_empty())
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

#[handler]
impl NotAllowed {
    async fn handle(&self, req: &Request, res: &mut Response) {
        ApiError::MethodNotAllowed(req.method().to_string()).render(res);
        res.headers_mut().insert(header::ALLOW, self.allow.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::{Access, resolves, suffixed};

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
        assert!(!resolves("/users/teams/5.json/"));
    }

    #[test]
    fn suffixed_templates_follow_upstreams_format_suffix_patterns() {
        assert_eq!(
            suffixed("users/teams/").as_deref(),
            Some("users/teams.{format|[a-z0-9]+}")
        );
        assert_eq!(
            suffixed("users/teams/{id}/").as_deref(),
            Some("users/teams/{id|[^.]+}.{format|[a-z0-9]+}")
        );
        assert_eq!(
            suffixed("users/").as_deref(),
            Some("users/.{format|[a-z0-9]+}")
        );
        assert_eq!(suffixed(""), None);
    }
}
