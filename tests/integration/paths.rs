//! Hostile spellings of request paths. Access is decided on the route the router matched,
//! so no spelling of a path may reach a handler with weaker checks than its canonical form:
//! every route of the route table (`keystone routes --json`), every method it maps plus
//! unmapped ones, as anonymous, stranger, member and staff callers, in several spellings.
//! A percent-encoded ordinary character is decoded and gets exactly the canonical answer;
//! structural variants (empty segments, dot segments, backslashes, encoded slashes) are
//! never routed and get upstream's 404 — never a 2xx, and never more than the canonical
//! spelling allows.

use crate::accounts::World;
use crate::common::*;
use serde_json::Value;

const CALLERS: [&str; 4] = ["ANON", "AUTH", "MB", "STAFF"];

/// The spellings of a canonical path `/a/b/`: `(spelling, decoded_to_canonical)`.
fn spellings(path: &str) -> Vec<(String, bool)> {
    let rest = path.trim_start_matches('/');
    let mut out = Vec::new();
    if let Some(first) = rest.chars().next()
        && first.is_ascii_alphabetic()
    {
        // `/%75sers/...`: an unreserved character percent-encoded.
        out.push((format!("/%{:02X}{}", first as u32, &rest[1..]), true));
        // Lower-case hex digits as well.
        out.push((format!("/%{:02x}{}", first as u32, &rest[1..]), true));
    }
    out.push((format!("//{rest}"), false));
    out.push((format!("/./{rest}"), false));
    out.push((format!("/x/../{rest}"), false));
    out.push((format!("/%2e/{rest}"), false));
    if let Some((head, tail)) = rest.split_once('/')
        && !tail.is_empty()
    {
        out.push((format!("/{head}//{tail}"), false));
        out.push((format!("/{head}\\{tail}"), false));
        out.push((format!("/{head}%2F{tail}"), false));
        out.push((format!("/{head}%5c{tail}"), false));
    }
    out
}

fn concrete(template: &str, id: i64) -> String {
    template
        .replace("{id}", &id.to_string())
        .replace("{name}", "report.pdf")
}

#[test]
fn every_route_answers_non_canonical_spellings_no_better_than_canonical() {
    for backend in backends() {
        let w = World::new(
            backend,
            &[
                ("KEYSTONE_THROTTLE__ANON", "1000000/min"),
                ("KEYSTONE_THROTTLE__USER", "1000000/min"),
            ],
        );
        let out = w.site.run(&["routes", "--json"]);
        assert!(out.status.success(), "routes: {}", stderr(&out));
        let table: Vec<Value> = serde_json::from_str(&stdout(&out)).expect("route table");
        assert!(table.len() > 50, "the whole route table: {}", table.len());
        let team = w.id("TEAM");
        let mut checked = 0;
        for route in &table {
            let template = route["path"].as_str().expect("path");
            let mut methods: Vec<String> = route["methods"]
                .as_array()
                .expect("methods")
                .iter()
                .map(|m| m.as_str().expect("method").to_string())
                .collect();
            // Methods the route does not map: 405 for callers who pass the gate.
            for extra in ["TRACE", "PUT", "DELETE", "PROPFIND"] {
                if !methods.iter().any(|m| m == extra) {
                    methods.push(extra.to_string());
                }
            }
            for method in &methods {
                let safe = matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS");
                // Reads address real records; writes address a record that does not exist (or
                // send an empty body to a collection), so no spelling changes what the next
                // one finds.
                let path = concrete(template, if safe { team } else { 987_654 });
                let body = (!safe && !template.contains('{')).then(|| serde_json::json!({}));
                for caller in CALLERS {
                    // A first canonical call brings the state where it stays (a bare POST
                    // may create a caller's preference once); each decoded spelling is then
                    // compared with the canonical call that follows it.
                    let first = w.call(caller, method, &path, body.clone()).status;
                    if caller == "ANON" && route["access"] == "authenticated" {
                        assert_eq!(first, 401, "{method} {path} as ANON ({backend:?})");
                    }
                    for (spelling, decoded) in spellings(&path) {
                        let got = w.call(caller, method, &spelling, body.clone());
                        let canonical = if decoded {
                            w.call(caller, method, &path, body.clone()).status
                        } else {
                            first
                        };
                        if decoded {
                            assert_eq!(
                                got.status,
                                canonical,
                                "{method} {spelling} as {caller} ({backend:?}): {} — canonical {path} gave {canonical}",
                                got.text()
                            );
                        } else {
                            assert_eq!(
                                got.status,
                                404,
                                "{method} {spelling} as {caller} ({backend:?}): {}",
                                got.text()
                            );
                            assert!(got.header("location").is_none(), "{spelling}");
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 5_000, "{checked} requests checked");
        // Nothing was created or removed by the writes above.
        let teams = w.call("STAFF", "GET", "/users/teams/", None).json();
        assert_eq!(
            teams["count"]
                .as_i64()
                .or(teams.as_array().map(|a| a.len() as i64)),
            Some(1),
            "{teams}"
        );
    }
}

#[test]
fn the_gate_belongs_to_the_route_not_to_the_path_prefix() {
    let w = World::new(Backend::Sqlite, &[]);
    // The attacks of the issue: each reached a handler as an anonymous caller before.
    let r = w.call("ANON", "GET", "//users/users/", None);
    assert_eq!(r.status, 404, "{}", r.text());
    let r = w.call("ANON", "GET", "/%75sers/users/", None);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        r.json()["detail"],
        "Authentication credentials were not provided."
    );
    assert_eq!(r.header("www-authenticate"), Some("Token"));
    let r = w.call(
        "ANON",
        "POST",
        "//users/teams/",
        Some(serde_json::json!({"name": "Intruders"})),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = w.call(
        "ANON",
        "POST",
        "/users/%74eams/",
        Some(serde_json::json!({"name": "Intruders"})),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let teams = w
        .call("STAFF", "GET", "/users/teams/?name=Intruders", None)
        .json();
    assert_eq!(
        teams
            .as_array()
            .map(Vec::len)
            .or(teams["count"].as_u64().map(|c| c as usize)),
        Some(0),
        "{teams}"
    );
    // An anonymous caller gets 401 for methods the route does not map; a caller who passes
    // the gate gets 405 with the route's Allow header.
    let r = w.call("ANON", "TRACE", "/users/teams/", None);
    assert_eq!(r.status, 401);
    let r = w.call("AUTH", "TRACE", "/users/teams/", None);
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["detail"], "Method \"TRACE\" not allowed.");
    assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS, POST"));
    // Public routes stay public in every decoded spelling.
    assert_eq!(w.call("ANON", "GET", "/%76ersion/", None).status, 200);
    // The route table says what the gate enforces.
    let out = w.site.run(&["routes"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.lines()
            .any(|l| l.starts_with("/users/users/ ") && l.contains("authenticated")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("/authentication/login/ ") && l.contains("public")),
        "{text}"
    );
}

#[test]
fn the_trailing_slash_redirect_stays_on_this_host() {
    let site = Site::new(Backend::Sqlite);
    site.migrate();
    let d = site.serve("web", &[]);
    let r = d.get("/users/users?x=1");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/users/users/?x=1"));
    for hostile in [
        "//evil.example",
        "//evil.example/x",
        "/\\evil.example",
        "/%2F%2Fevil.example",
        "/%5Cevil.example",
        "///evil.example",
    ] {
        let r = d.get(hostile);
        assert_eq!(r.status, 404, "{hostile}: {}", r.text());
        assert!(r.header("location").is_none(), "{hostile}");
        assert_eq!(r.json()["detail"], "Not found.");
    }
}
