//! Content negotiation and format suffixes (domain.md §1.1, §2): `?format=json` changes
//! nothing and is no filter, any other format is 404, an `Accept` header naming nothing the
//! view renders is 406 — both decided before authentication, as upstream — and the `.json`
//! suffix of a resource route reaches that same route with the same policy.

use crate::accounts::World;
use crate::common::http::Response;
use crate::common::*;
use serde_json::json;

const NOT_ACCEPTABLE: &str = "Could not satisfy the request Accept header.";

/// A request as `role` (`ANON`: no credentials) with extra headers.
fn call(w: &World, role: &str, method: &str, path: &str, extra: &[(&str, &str)]) -> Response {
    let auth = w.tokens.get(role).map(|t| format!("Token {t}"));
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    w.web.request(method, path, &headers, b"")
}

fn assert_detail(r: &Response, status: u16, detail: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert_eq!(r.json(), json!({ "detail": detail }), "{what}");
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("application/json"),
        "{what}"
    );
}

#[test]
fn format_parameter_and_accept_header() {
    let w = World::new(Backend::Sqlite, &[]);
    let plain = call(&w, "STAFF", "GET", "/users/teams/", &[]);
    assert_eq!(plain.status, 200, "{}", plain.text());
    assert_eq!(plain.json()["count"], 1);

    // `format=json` has no effect and is no filter; the links keep it, as upstream.
    let with_format = call(&w, "STAFF", "GET", "/users/teams/?format=json", &[]);
    assert_eq!(with_format.status, 200, "{}", with_format.text());
    assert_eq!(with_format.json()["results"], plain.json()["results"]);
    assert_eq!(with_format.json()["count"], 1);
    let limited = call(
        &w,
        "STAFF",
        "GET",
        "/users/users/?format=json&_limit=1",
        &[],
    );
    assert_eq!(limited.status, 200);
    let next = limited.json()["next"].as_str().unwrap_or("").to_string();
    assert!(next.contains("format=json"), "{next}");
    // An empty value asks for nothing.
    assert_eq!(
        call(&w, "STAFF", "GET", "/users/teams/?format=", &[]).status,
        200
    );

    // Any other format is a plain 404, before authentication, method and object checks.
    for (role, method, path) in [
        ("STAFF", "GET", "/users/teams/?format=xml"),
        ("STAFF", "GET", "/users/teams/?format=JSON"),
        ("STAFF", "GET", "/users/teams/?format=json&format=api"),
        ("ANON", "GET", "/users/teams/?format=xml"),
        ("STAFF", "PUT", "/users/teams/?format=xml"),
        ("STAFF", "GET", "/users/teams/999999/?format=xml"),
        ("STAFF", "OPTIONS", "/users/teams/?format=csv"),
        ("STAFF", "GET", "/stats/grants/?format=xml"),
        ("STAFF", "GET", "/authentication/whoami/?format=api"),
        ("ANON", "POST", "/authentication/login/?format=xml"),
        ("ANON", "GET", "/health/json/?format=yaml"),
        ("ANON", "GET", "/openapi/yaml/?format=json"),
    ] {
        let r = call(&w, role, method, path, &[]);
        assert_detail(&r, 404, "Not found.", &format!("{role} {method} {path}"));
    }
    for (path, status) in [
        ("/version/?format=json", 200),
        ("/health/json/?format=json", 200),
        ("/openapi/json/?format=json", 200),
        ("/openapi/yaml/?format=yaml", 200),
        ("/stats/grants/?format=json", 200),
        ("/authentication/whoami/?format=json", 200),
    ] {
        let r = call(&w, "STAFF", "GET", path, &[]);
        assert_eq!(r.status, status, "{path}: {}", r.text());
    }

    // Accept headers: JSON or a wildcard for it is served; anything else is 406, before
    // authentication (an anonymous caller sees 406, not 401) and method dispatch.
    for accept in [
        "application/json",
        "application/*",
        "*/*",
        "application/json; indent=4",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    ] {
        let r = call(&w, "STAFF", "GET", "/users/teams/", &[("Accept", accept)]);
        assert_eq!(r.status, 200, "Accept: {accept}: {}", r.text());
    }
    for (role, method, path, accept) in [
        ("STAFF", "GET", "/users/teams/", "text/html"),
        ("STAFF", "GET", "/users/teams/", "application/xml"),
        ("STAFF", "GET", "/users/teams/", "text/*"),
        ("ANON", "GET", "/users/teams/", "text/html"),
        ("STAFF", "DELETE", "/users/teams/", "text/html"),
        ("STAFF", "GET", "/stats/requests/", "text/csv"),
        ("ANON", "POST", "/authentication/login/", "text/html"),
        ("ANON", "GET", "/health/json/", "text/plain"),
        ("ANON", "GET", "/openapi/yaml/", "application/json"),
    ] {
        let r = call(&w, role, method, path, &[("Accept", accept)]);
        assert_detail(
            &r,
            406,
            NOT_ACCEPTABLE,
            &format!("{role} {method} {path} Accept: {accept}"),
        );
    }
    // An unknown format wins over an unacceptable Accept header (it is decided first).
    let r = call(
        &w,
        "STAFF",
        "GET",
        "/users/teams/?format=xml",
        &[("Accept", "text/html")],
    );
    assert_detail(&r, 404, "Not found.", "format and Accept");
    // Plain-text views also serve a client asking for plain text; the site root is no API
    // view and is never negotiated.
    for (path, accept) in [
        ("/version/", "text/plain"),
        ("/version/", "application/json"),
        ("/health/prom/", "text/plain"),
        ("/openapi/yaml/", "application/yaml"),
        ("/", "image/png"),
        ("/?format=xml", "*/*"),
    ] {
        let r = call(&w, "ANON", "GET", path, &[("Accept", accept)]);
        assert_eq!(r.status, 200, "{path} Accept: {accept}: {}", r.text());
    }
}

#[test]
fn json_suffix_reaches_the_same_route_and_policy() {
    let w = World::new(Backend::Sqlite, &[]);
    let team = w.id("TEAM");
    let list = call(&w, "STAFF", "GET", "/users/teams/", &[]).json();
    let item = call(&w, "STAFF", "GET", &format!("/users/teams/{team}/"), &[]).json();
    for path in ["/users/teams.json", "/users/teams.json/"] {
        let r = call(&w, "STAFF", "GET", path, &[]);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json(), list, "{path}");
    }
    for path in [
        format!("/users/teams/{team}.json"),
        format!("/users/teams/{team}.json/"),
    ] {
        let r = call(&w, "STAFF", "GET", &path, &[]);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json(), item, "{path}");
    }
    // The API roots and the other router families.
    let root = call(&w, "STAFF", "GET", "/users/.json", &[]);
    assert_eq!(root.status, 200, "{}", root.text());
    assert!(root.json()["teams"].is_string(), "{}", root.text());
    for path in [
        "/allocations/requests.json",
        "/allocations/clusters.json",
        "/research/grants.json",
        "/notifications/notifications.json",
        "/notifications/preferences.json",
        "/logs/requests.json",
        "/logs/.json",
    ] {
        let r = call(&w, "STAFF", "GET", path, &[]);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }

    // Same policy: anonymous callers get 401 on every method, non-members the plain path's
    // answer, unsupported methods the route's 405 with its Allow header.
    for method in ["GET", "POST", "OPTIONS", "DELETE"] {
        let r = call(&w, "ANON", method, "/users/teams.json", &[]);
        assert_detail(
            &r,
            401,
            "Authentication credentials were not provided.",
            &format!("ANON {method}"),
        );
        let r = call(
            &w,
            "ANON",
            method,
            &format!("/users/teams/{team}.json/"),
            &[],
        );
        assert_eq!(r.status, 401, "ANON {method} item");
    }
    for (role, method) in [("AUTH", "DELETE"), ("MB", "DELETE"), ("AUTH", "PATCH")] {
        let plain = call(&w, role, method, &format!("/users/teams/{team}/"), &[]);
        let suffixed = call(&w, role, method, &format!("/users/teams/{team}.json"), &[]);
        assert_eq!(suffixed.status, plain.status, "{role} {method}");
        assert_eq!(suffixed.text(), plain.text(), "{role} {method}");
        assert!(plain.status >= 400, "{role} {method}: {}", plain.text());
    }
    let r = call(&w, "STAFF", "PUT", "/users/teams.json", &[]);
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS, POST"));
    // Staff users may list users, others see their own: the suffix changes nothing.
    let mine = call(&w, "AUTH", "GET", "/users/users.json", &[]).json();
    assert_eq!(
        mine,
        call(&w, "AUTH", "GET", "/users/users/", &[]).json(),
        "same scoping"
    );

    // The suffix selects the format: an unknown one is 404; a suffix the route's pattern
    // does not allow, or on a route that is not a router resource, is no route at all.
    for path in [
        "/users/teams.xml".to_string(),
        "/users/teams.JSON".to_string(),
        format!("/users/teams/{team}.api/"),
        "/users/teams/abc.json".to_string(),
        "/authentication/whoami.json".to_string(),
        "/users/membership-choices/role.json".to_string(),
        "/stats/grants.json".to_string(),
        "/logs/feed.json".to_string(),
        "/batch.json".to_string(),
        "/version.json".to_string(),
        "/users/teams.json.json".to_string(),
        "/users/teams/.json".to_string(),
    ] {
        let r = call(&w, "STAFF", "GET", &path, &[]);
        assert_detail(&r, 404, "Not found.", &path);
    }
    // The suffix wins over the query parameter.
    let r = call(&w, "STAFF", "GET", "/users/teams.json?format=xml", &[]);
    assert_eq!(r.status, 200, "{}", r.text());

    // The OpenAPI document lists no suffixed path.
    let doc = call(&w, "ANON", "GET", "/openapi/json/", &[]).json();
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.contains_key("/users/teams/"));
    assert!(
        paths.keys().all(|p| !p.contains('.')),
        "{:?}",
        paths.keys().filter(|p| p.contains('.')).collect::<Vec<_>>()
    );
}
