//! Accounts and access: the permission matrices of domain.md §13 for users, teams and
//! memberships (every method as every role), sessions with CSRF, API keys, logout, password
//! changes, Django hashes, LDAP login, list conventions and throttling — on both backends.

use crate::common::http::Response;
use crate::common::redis::PrivateRedis;
use crate::common::*;
use serde_json::{Value, json};
use std::collections::HashMap;

const PASSWORD: &str = "Str0ng-Pass-99";

pub struct World {
    pub site: Site,
    pub web: Daemon,
    pub tokens: HashMap<&'static str, String>,
    pub ids: HashMap<&'static str, i64>,
}

impl World {
    pub fn new(backend: Backend, extra_env: &[(&str, &str)]) -> World {
        let mut site = Site::new(backend);
        for (k, v) in extra_env {
            site.set(k, v);
        }
        site.migrate();
        let out = site.run_with_input(
            &[
                "user",
                "create",
                "--username",
                "staff",
                "--superuser",
                "--no-input",
                "--password-stdin",
            ],
            &format!("{PASSWORD}\n"),
        );
        assert!(out.status.success(), "user create: {}", stderr(&out));
        let web = site.serve("web", &[]);
        let mut world = World {
            site,
            web,
            tokens: HashMap::new(),
            ids: HashMap::new(),
        };
        world.tokens.insert("STAFF", world.token_for("staff"));
        world
            .ids
            .insert("STAFF", world.whoami("STAFF")["id"].as_i64().expect("id"));
        for name in ["mb", "ad", "ow", "auth", "x1", "x2", "x3"] {
            let r = world.call(
                "STAFF",
                "POST",
                "/users/users/",
                Some(json!({"username": name, "password": PASSWORD, "first_name": name.to_uppercase()})),
            );
            assert_eq!(r.status, 201, "create {name}: {}", r.text());
            let id = r.json()["id"].as_i64().expect("id");
            world.ids.insert(role_key(name), id);
        }
        let team = world.call(
            "STAFF",
            "POST",
            "/users/teams/",
            Some(json!({"name": "Team One"})),
        );
        assert_eq!(team.status, 201, "{}", team.text());
        world
            .ids
            .insert("TEAM", team.json()["id"].as_i64().expect("team id"));
        for (name, role) in [("mb", "MB"), ("ad", "AD"), ("ow", "OW")] {
            let body =
                json!({"user": world.ids[role_key(name)], "team": world.ids["TEAM"], "role": role});
            let r = world.call("STAFF", "POST", "/users/memberships/", Some(body));
            assert_eq!(r.status, 201, "{}", r.text());
            world.ids.insert(
                membership_key(role),
                r.json()["id"].as_i64().expect("membership id"),
            );
        }
        for name in ["mb", "ad", "ow", "auth"] {
            let t = world.token_for(name);
            world.tokens.insert(role_key(name), t);
        }
        world
    }

    pub fn token_for(&self, username: &str) -> String {
        let out = self
            .site
            .run(&["token", "create", username, "--name", "tests"]);
        assert!(out.status.success(), "token create: {}", stderr(&out));
        stdout(&out).trim().to_string()
    }

    /// A request as `role` (`ANON` sends no credentials).
    pub fn call(&self, role: &str, method: &str, path: &str, body: Option<Value>) -> Response {
        let auth = self.tokens.get(role).map(|t| format!("Token {t}"));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let raw = body.map(|b| b.to_string()).unwrap_or_default();
        if !raw.is_empty() {
            headers.push(("Content-Type", "application/json"));
        }
        self.web.request(method, path, &headers, raw.as_bytes())
    }

    pub fn whoami(&self, role: &str) -> Value {
        self.call(role, "GET", "/authentication/whoami/", None)
            .json()
    }

    pub fn id(&self, key: &str) -> i64 {
        self.ids[key]
    }
}

fn role_key(name: &str) -> &'static str {
    match name {
        "mb" => "MB",
        "ad" => "AD",
        "ow" => "OW",
        "auth" => "AUTH",
        "x1" => "X1",
        "x2" => "X2",
        _ => "X3",
    }
}

fn membership_key(role: &str) -> &'static str {
    match role {
        "MB" => "M_MB",
        "AD" => "M_AD",
        _ => "M_OW",
    }
}

const ROLES: [&str; 6] = ["ANON", "AUTH", "MB", "AD", "OW", "STAFF"];

/// Checks one row of a matrix: `expected[i]` for `ROLES[i]`.
fn expect_row(w: &World, method: &str, path: &str, body: Option<Value>, expected: [u16; 6]) {
    for (role, want) in ROLES.iter().zip(expected) {
        let r = w.call(role, method, path, body.clone());
        assert_eq!(r.status, want, "{method} {path} as {role}: {}", r.text());
    }
}

#[test]
fn permission_matrix_collections() {
    for backend in backends() {
        let w = World::new(backend, &[]);
        for path in [
            "/users/users/",
            "/users/teams/",
            "/users/memberships/",
            "/users/membership-choices/role/",
        ] {
            for method in ["GET", "HEAD", "OPTIONS"] {
                expect_row(&w, method, path, None, [401, 200, 200, 200, 200, 200]);
            }
            for method in ["PUT", "PATCH", "DELETE", "TRACE"] {
                expect_row(&w, method, path, None, [401, 405, 405, 405, 405, 405]);
            }
        }
        expect_row(
            &w,
            "POST",
            "/users/membership-choices/role/",
            None,
            [401, 405, 405, 405, 405, 405],
        );
        // Users: only staff create.
        for (role, want) in ROLES.iter().zip([401, 403, 403, 403, 403, 201]) {
            let body =
                json!({"username": format!("new-{}", role.to_lowercase()), "password": PASSWORD});
            assert_eq!(
                w.call(role, "POST", "/users/users/", Some(body)).status,
                want,
                "POST users as {role}"
            );
        }
        // Teams: anyone authenticated creates.
        for (role, want) in ROLES.iter().zip([401, 201, 201, 201, 201, 201]) {
            let body = json!({"name": format!("Team of {role}")});
            assert_eq!(
                w.call(role, "POST", "/users/teams/", Some(body)).status,
                want,
                "POST teams as {role}"
            );
        }
        // Memberships: privileged members of the named team and staff.
        let team = w.id("TEAM");
        let targets = [
            ("AUTH", "X1"),
            ("MB", "X1"),
            ("AD", "X1"),
            ("OW", "X2"),
            ("STAFF", "X3"),
        ];
        for ((role, target), want) in targets.iter().zip([403, 403, 201, 201, 201]) {
            let body = json!({"user": w.id(target), "team": team, "role": "MB"});
            let r = w.call(role, "POST", "/users/memberships/", Some(body));
            assert_eq!(r.status, want, "POST memberships as {role}: {}", r.text());
        }
        let r = w.call(
            "ANON",
            "POST",
            "/users/memberships/",
            Some(json!({"team": team})),
        );
        assert_eq!(r.status, 401);
    }
}

#[test]
fn permission_matrix_items() {
    for backend in backends() {
        let w = World::new(backend, &[]);
        let mb = w.id("MB");
        let team = w.id("TEAM");
        let m_mb = w.id("M_MB");
        // users/{mb}: the record is MB's own account.
        let user = format!("/users/users/{mb}/");
        for method in ["GET", "HEAD", "OPTIONS"] {
            expect_row(&w, method, &user, None, [401, 200, 200, 200, 200, 200]);
        }
        expect_row(&w, "POST", &user, None, [401, 405, 405, 405, 405, 405]);
        expect_row(&w, "TRACE", &user, None, [401, 405, 405, 405, 405, 405]);
        let put = json!({"username": "mb", "password": "Another-Pass-12"});
        expect_row(&w, "PUT", &user, Some(put), [401, 403, 200, 403, 403, 200]);
        expect_row(
            &w,
            "PATCH",
            &user,
            Some(json!({"department": "Physics"})),
            [401, 403, 200, 403, 403, 200],
        );
        for role in ["ANON", "AUTH", "AD", "OW"] {
            let want = if role == "ANON" { 401 } else { 403 };
            assert_eq!(
                w.call(role, "DELETE", &user, None).status,
                want,
                "DELETE user as {role}"
            );
        }
        // teams/{team}
        let t = format!("/users/teams/{team}/");
        for method in ["GET", "HEAD", "OPTIONS"] {
            expect_row(&w, method, &t, None, [401, 200, 200, 200, 200, 200]);
        }
        expect_row(&w, "POST", &t, None, [401, 405, 405, 405, 405, 405]);
        expect_row(
            &w,
            "PUT",
            &t,
            Some(json!({"is_active": true})),
            [401, 403, 403, 200, 200, 200],
        );
        expect_row(
            &w,
            "PATCH",
            &t,
            Some(json!({"is_active": true})),
            [401, 403, 403, 200, 200, 200],
        );
        for role in ["ANON", "AUTH", "MB"] {
            let want = if role == "ANON" { 401 } else { 403 };
            assert_eq!(
                w.call(role, "DELETE", &t, None).status,
                want,
                "DELETE team as {role}"
            );
        }
        // memberships/{MB's own}
        let m = format!("/users/memberships/{m_mb}/");
        for method in ["GET", "HEAD", "OPTIONS"] {
            expect_row(&w, method, &m, None, [401, 200, 200, 200, 200, 200]);
        }
        expect_row(&w, "POST", &m, None, [401, 405, 405, 405, 405, 405]);
        let body = json!({"role": "MB", "user": mb, "team": team});
        expect_row(
            &w,
            "PUT",
            &m,
            Some(body.clone()),
            [401, 403, 403, 200, 200, 200],
        );
        expect_row(
            &w,
            "PATCH",
            &m,
            Some(json!({"role": "MB"})),
            [401, 403, 403, 200, 200, 200],
        );
        assert_eq!(w.call("AUTH", "DELETE", &m, None).status, 403);
        // Anyone may leave a team: MB deletes their own membership.
        assert_eq!(w.call("MB", "DELETE", &m, None).status, 204);
        assert_eq!(w.call("STAFF", "GET", &m, None).status, 404);
    }
}

#[test]
fn deletes_by_privileged_members_and_staff() {
    let w = World::new(Backend::Sqlite, &[]);
    // AD deletes another member's membership; OW deletes the team; staff deletes a user.
    let m_ow = w.id("M_OW");
    assert_eq!(
        w.call("MB", "DELETE", &format!("/users/memberships/{m_ow}/"), None)
            .status,
        403
    );
    assert_eq!(
        w.call("AD", "DELETE", &format!("/users/memberships/{m_ow}/"), None)
            .status,
        204
    );
    let team = w.id("TEAM");
    assert_eq!(
        w.call("OW", "DELETE", &format!("/users/teams/{team}/"), None)
            .status,
        403,
        "OW left with the deleted membership"
    );
    assert_eq!(
        w.call("AD", "DELETE", &format!("/users/teams/{team}/"), None)
            .status,
        204
    );
    assert_eq!(
        w.call("STAFF", "GET", &format!("/users/teams/{team}/"), None)
            .status,
        404
    );
    let x1 = w.id("X1");
    assert_eq!(
        w.call("STAFF", "DELETE", &format!("/users/users/{x1}/"), None)
            .status,
        204
    );
    // A user deleting their own account is logged out with it.
    let auth = w.id("AUTH");
    assert_eq!(
        w.call("AUTH", "DELETE", &format!("/users/users/{auth}/"), None)
            .status,
        204
    );
    assert_eq!(
        w.call("AUTH", "GET", "/authentication/whoami/", None)
            .status,
        401
    );
    // Audit: the self-deletion entry has no actor.
    let entries = w.call(
        "STAFF",
        "GET",
        &format!("/users/users/{}/", w.id("STAFF")),
        None,
    );
    assert_eq!(entries.status, 200);
}

#[test]
fn visibility_for_non_staff() {
    let w = World::new(Backend::Sqlite, &[]);
    let team = w.id("TEAM");
    // Teams list: members see their active team, non-members see none.
    assert_eq!(
        w.call("MB", "GET", "/users/teams/", None).json()["count"],
        1
    );
    assert_eq!(
        w.call("AUTH", "GET", "/users/teams/", None).json()["count"],
        0
    );
    // ...but may read it by id.
    assert_eq!(
        w.call("AUTH", "GET", &format!("/users/teams/{team}/"), None)
            .status,
        200
    );
    // Deactivated: members lose it (404), staff keep it.
    assert_eq!(
        w.call(
            "OW",
            "PATCH",
            &format!("/users/teams/{team}/"),
            Some(json!({"is_active": false}))
        )
        .status,
        200
    );
    assert_eq!(
        w.call("OW", "GET", &format!("/users/teams/{team}/"), None)
            .status,
        404
    );
    assert_eq!(
        w.call(
            "OW",
            "PATCH",
            &format!("/users/teams/{team}/"),
            Some(json!({"is_active": true}))
        )
        .status,
        404
    );
    assert_eq!(
        w.call("STAFF", "GET", &format!("/users/teams/{team}/"), None)
            .status,
        200
    );
    // Memberships of an inactive team are hidden from non-staff.
    let m = w.id("M_MB");
    assert_eq!(
        w.call("MB", "GET", &format!("/users/memberships/{m}/"), None)
            .status,
        404
    );
    assert_eq!(
        w.call("STAFF", "GET", &format!("/users/memberships/{m}/"), None)
            .status,
        200
    );
    // Inactive users: hidden from non-staff lists and lookups.
    let x2 = w.id("X2");
    assert_eq!(
        w.call(
            "STAFF",
            "PATCH",
            &format!("/users/users/{x2}/"),
            Some(json!({"is_active": false}))
        )
        .status,
        200
    );
    assert_eq!(
        w.call("MB", "GET", &format!("/users/users/{x2}/"), None)
            .status,
        404
    );
    let all = w
        .call("STAFF", "GET", "/users/users/?_limit=1000", None)
        .json()["count"]
        .as_i64()
        .unwrap_or(0);
    let visible = w
        .call("MB", "GET", "/users/users/?_limit=1000", None)
        .json()["count"]
        .as_i64()
        .unwrap_or(0);
    assert_eq!(visible, all - 1);
    // Non-staff writes to privileged fields are ignored.
    let mb = w.id("MB");
    let r = w.call(
        "MB",
        "PATCH",
        &format!("/users/users/{mb}/"),
        Some(json!({"is_staff": true, "is_superuser": true})),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["is_staff"], false);
    assert_eq!(r.json()["is_superuser"], false);
}

#[test]
fn validation_errors_name_their_fields() {
    let w = World::new(Backend::Sqlite, &[]);
    let r = w.call("STAFF", "POST", "/users/users/", Some(json!({})));
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"username": ["This field is required."], "password": ["This field is required."]})
    );
    let r = w.call(
        "STAFF",
        "POST",
        "/users/users/",
        Some(json!({"username": "mb", "password": PASSWORD})),
    );
    assert_eq!(
        r.json(),
        json!({"username": ["user with this username already exists."]})
    );
    let r = w.call(
        "STAFF",
        "POST",
        "/users/users/",
        Some(json!({"username": "bad name!", "password": PASSWORD, "email": "nope"})),
    );
    let body = r.json();
    assert!(
        body["username"][0]
            .as_str()
            .unwrap_or("")
            .starts_with("Enter a valid username.")
    );
    assert_eq!(body["email"], json!(["Enter a valid email address."]));
    let r = w.call(
        "STAFF",
        "POST",
        "/users/users/",
        Some(json!({"username": "shorty", "password": "1234"})),
    );
    assert_eq!(
        r.json(),
        json!({"non_field_errors": [
            "This password is too short. It must contain at least 8 characters.",
            "This password is too common.",
            "This password is entirely numeric."
        ]})
    );
    let r = w.call("STAFF", "POST", "/users/users/", Some(json!(["a list"])));
    assert_eq!(
        r.json(),
        json!({"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]})
    );
    let r = w.web.request(
        "POST",
        "/users/teams/",
        &[
            ("Authorization", &format!("Token {}", w.tokens["STAFF"])),
            ("Content-Type", "application/json"),
        ],
        b"{bad",
    );
    assert_eq!(r.status, 400);
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap_or("")
            .starts_with("JSON parse error - ")
    );
    let r = w.web.request(
        "POST",
        "/users/teams/",
        &[
            ("Authorization", &format!("Token {}", w.tokens["STAFF"])),
            ("Content-Type", "text/plain"),
        ],
        b"x",
    );
    assert_eq!(r.status, 415);
    assert_eq!(
        r.json()["detail"],
        "Unsupported media type \"text/plain\" in request."
    );
    // Teams: exact and slug collisions; non-staff may not create inactive teams.
    let r = w.call(
        "MB",
        "POST",
        "/users/teams/",
        Some(json!({"name": "Team One"})),
    );
    assert_eq!(
        r.json(),
        json!({"name": ["team with this name already exists."]})
    );
    let r = w.call(
        "MB",
        "POST",
        "/users/teams/",
        Some(json!({"name": "team  one"})),
    );
    assert_eq!(
        r.json(),
        json!({"name": ["A team with this name already exists."]})
    );
    let r = w.call(
        "MB",
        "POST",
        "/users/teams/",
        Some(json!({"name": "Quiet", "is_active": false})),
    );
    assert_eq!(
        r.json(),
        json!({"is_active": ["This field cannot be set to False on new records by non-staff users."]})
    );
    let r = w.call(
        "MB",
        "POST",
        "/users/teams/",
        Some(json!({"name": "Équipe Ünïcode"})),
    );
    assert_eq!(r.json()["slug"], "equipe-unicode");
    // Memberships: choice, unknown pk, uniqueness, non-numeric team.
    let team = w.id("TEAM");
    let r = w.call(
        "STAFF",
        "POST",
        "/users/memberships/",
        Some(json!({"role": "XX", "user": 99999, "team": team})),
    );
    assert_eq!(
        r.json(),
        json!({"role": ["\"XX\" is not a valid choice."], "user": ["Invalid pk \"99999\" - object does not exist."]})
    );
    let r = w.call(
        "STAFF",
        "POST",
        "/users/memberships/",
        Some(json!({"role": "MB", "user": w.id("MB"), "team": team})),
    );
    assert_eq!(
        r.json(),
        json!({"non_field_errors": ["The fields user, team must make a unique set."]})
    );
    let r = w.call(
        "MB",
        "POST",
        "/users/memberships/",
        Some(json!({"role": "MB", "user": w.id("MB"), "team": "abc"})),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"team": ["Incorrect type. Expected pk value, received str."]})
    );
    // A bad id in the path is a plain 404.
    assert_eq!(
        w.call("STAFF", "GET", "/users/users/abc/", None).json(),
        json!({"detail": "Not found."})
    );
    assert_eq!(
        w.call("STAFF", "GET", "/users/users/99999/", None).json(),
        json!({"detail": "No User matches the given query."})
    );
}

#[test]
fn list_filters_order_search_and_pagination() {
    for backend in backends() {
        let w = World::new(backend, &[]);
        let get = |path: &str| {
            let r = w.call("STAFF", "GET", path, None);
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            r.json()
        };
        let names = |v: &Value| -> Vec<String> {
            v["results"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|u| u["username"].as_str().unwrap_or("").to_string())
                        .collect()
                })
                .unwrap_or_default()
        };
        // Numeric lookups.
        let mb = w.id("MB");
        assert_eq!(get(&format!("/users/users/?id={mb}"))["count"], 1);
        assert_eq!(
            get(&format!("/users/users/?id__in={mb},,{}", w.id("AD")))["count"],
            2
        );
        assert_eq!(get("/users/users/?id__in=,")["count"], 0);
        assert_eq!(get("/users/users/?id__not_in=,")["count"], 8);
        assert_eq!(
            get(&format!("/users/users/?id__gt={mb}&id__lte={}", w.id("OW")))["count"],
            2
        );
        assert_eq!(get(&format!("/users/users/?id__not_eq={mb}"))["count"], 7);
        assert_eq!(
            get("/users/users/?id=")["count"],
            8,
            "an empty value disables the filter"
        );
        // Text lookups are case-sensitive.
        assert_eq!(
            names(&get(
                "/users/users/?username__startswith=x&_order=-username"
            )),
            ["x3", "x2", "x1"]
        );
        assert_eq!(get("/users/users/?username__startswith=X")["count"], 0);
        assert_eq!(get("/users/users/?first_name__contains=X")["count"], 3);
        assert_eq!(get("/users/users/?username__endswith=b")["count"], 1);
        assert_eq!(get("/users/users/?username__not_contains=x")["count"], 5);
        assert_eq!(get("/users/users/?email__isnull=true")["count"], 8);
        // Booleans: unknown words disable the filter.
        assert_eq!(get("/users/users/?is_staff=true")["count"], 1);
        assert_eq!(get("/users/users/?is_staff=False")["count"], 7);
        assert_eq!(get("/users/users/?is_staff=maybe")["count"], 8);
        // Datetimes.
        let year = chrono::Utc::now().format("%Y").to_string();
        assert_eq!(
            get(&format!("/users/users/?date_joined__year={year}"))["count"],
            8
        );
        assert_eq!(get("/users/users/?date_joined__lt=2000-01-01")["count"], 0);
        assert_eq!(get("/users/users/?last_login__isnull=false")["count"], 0);
        // Choices and foreign keys.
        assert_eq!(get("/users/memberships/?role=OW")["count"], 1);
        assert_eq!(get("/users/memberships/?role__in=OW,AD")["count"], 2);
        assert_eq!(
            get(&format!("/users/memberships/?team={}", w.id("TEAM")))["count"],
            3
        );
        // Errors: all together, never a 500.
        let r = w.call(
            "STAFF",
            "GET",
            "/users/users/?id=x&date_joined__gte=never&last_login__year=abc",
            None,
        );
        assert_eq!(r.status, 400);
        assert_eq!(
            r.json(),
            json!({
                "id": ["Enter a number."],
                "date_joined__gte": ["Enter a valid date/time."],
                "last_login__year": ["Enter a number."]
            })
        );
        let r = w.call("STAFF", "GET", "/users/memberships/?role=XX", None);
        assert_eq!(
            r.json(),
            json!({"role": ["Select a valid choice. XX is not one of the available choices."]})
        );
        let r = w.call("STAFF", "GET", "/users/memberships/?user=99999", None);
        assert_eq!(
            r.json(),
            json!({"user": ["Select a valid choice. That choice is not one of the available choices."]})
        );
        // No filter on password, unknown parameters ignored.
        assert_eq!(get("/users/users/?password__startswith=argon2")["count"], 8);
        assert_eq!(get("/users/users/?nonsense=1")["count"], 8);
        // Search: every term in some field, case-insensitive; related fields on memberships.
        assert_eq!(get("/users/users/?_search=X")["count"], 3);
        assert_eq!(get("/users/users/?_search=x%201")["count"], 1);
        assert_eq!(get("/users/memberships/?_search=team%20one")["count"], 3);
        assert_eq!(get("/users/memberships/?_search=ow")["count"], 1);
        // Ordering: unknown names dropped, booleans false first.
        assert_eq!(
            names(&get("/users/users/?_order=-is_staff,nonsense&_limit=1")),
            ["staff"]
        );
        // Pagination links keep other parameters and carry _limit.
        let page = get("/users/users/?_limit=3&_offset=3&_order=username&nonsense=1");
        assert_eq!(page["count"], 8);
        let base = "http://localhost".to_string();
        assert_eq!(
            page["next"],
            format!("{base}/users/users/?_order=username&nonsense=1&_limit=3&_offset=6")
        );
        assert_eq!(
            page["previous"],
            format!("{base}/users/users/?_order=username&nonsense=1&_limit=3")
        );
        assert_eq!(names(&page), ["ow", "staff", "x1"]);
        let last = get("/users/users/?_limit=5&_offset=1000");
        assert_eq!(last["results"], json!([]));
        assert_eq!(last["next"], Value::Null);
        assert!(
            last["previous"]
                .as_str()
                .unwrap_or("")
                .ends_with("_limit=5&_offset=995")
        );
        assert_eq!(
            get("/users/users/?_limit=0")["results"]
                .as_array()
                .map(|a| a.len()),
            Some(8)
        );
        assert_eq!(
            get("/users/users/?_limit=5000&_offset=-3")["results"]
                .as_array()
                .map(|a| a.len()),
            Some(8)
        );
    }
}

fn session_login(w: &World, username: &str, password: &str) -> (Response, String, String) {
    let body = json!({"username": username, "password": password}).to_string();
    let r = w.web.request(
        "POST",
        "/authentication/login/",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    let cookie = |name: &str| {
        r.headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .find_map(|(_, v)| {
                v.strip_prefix(&format!("{name}="))
                    .map(|rest| rest.split(';').next().unwrap_or("").to_string())
            })
            .unwrap_or_default()
    };
    let (s, c) = (cookie("sessionid"), cookie("csrftoken"));
    (r, s, c)
}

#[test]
fn sessions_csrf_logout_and_password_changes() {
    for backend in backends() {
        let w = World::new(backend, &[]);
        let bad = w.web.request(
            "POST",
            "/authentication/login/",
            &[("Content-Type", "application/json")],
            br#"{"username":"mb","password":"wrong-password"}"#,
        );
        assert_eq!(bad.status, 400);
        assert_eq!(
            bad.json(),
            json!({"non_field_errors": ["Invalid username or password."]})
        );
        assert!(
            bad.header("set-cookie").is_none(),
            "a failed login sets no cookie"
        );
        let unknown = w.web.request(
            "POST",
            "/authentication/login/",
            &[("Content-Type", "application/json")],
            br#"{"username":"ghost","password":"wrong-password"}"#,
        );
        assert_eq!(
            unknown.json(),
            bad.json(),
            "unknown users are indistinguishable"
        );
        let empty = w.web.request(
            "POST",
            "/authentication/login/",
            &[("Content-Type", "application/json")],
            b"{}",
        );
        assert_eq!(
            empty.json(),
            json!({"username": ["This field is required."], "password": ["This field is required."]})
        );

        let (ok, session, csrf) = session_login(&w, "mb", PASSWORD);
        assert_eq!(ok.status, 200, "{}", ok.text());
        assert_eq!(ok.json()["username"], "mb");
        let cookies: Vec<&str> = ok
            .headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .map(|(_, v)| v.as_str())
            .collect();
        assert!(
            cookies.iter().any(|c| c.starts_with("sessionid=")
                && c.contains("HttpOnly")
                && c.contains("SameSite=Lax")
                && c.contains("Max-Age=1209600")),
            "{cookies:?}"
        );
        assert!(
            cookies.iter().any(|c| c.starts_with("csrftoken=")
                && !c.contains("HttpOnly")
                && c.contains("Max-Age=31449600")),
            "{cookies:?}"
        );
        let jar = format!("sessionid={session}; csrftoken={csrf}");
        let me = w
            .web
            .request("GET", "/authentication/whoami/", &[("Cookie", &jar)], b"");
        assert_eq!(me.status, 200);
        assert_eq!(me.json()["username"], "mb");
        assert!(me.json().get("password").is_none());
        // Unsafe methods need the CSRF header matching the cookie.
        let body = br#"{"name":"Session Team"}"#;
        let no_csrf = w.web.request(
            "POST",
            "/users/teams/",
            &[("Cookie", &jar), ("Content-Type", "application/json")],
            body,
        );
        assert_eq!(no_csrf.status, 403);
        assert_eq!(
            no_csrf.json(),
            json!({"detail": "CSRF Failed: CSRF token missing."})
        );
        let wrong = "x".repeat(32);
        let bad_csrf = w.web.request(
            "POST",
            "/users/teams/",
            &[
                ("Cookie", &jar),
                ("X-CSRFToken", &wrong),
                ("Content-Type", "application/json"),
            ],
            body,
        );
        assert_eq!(
            bad_csrf.json(),
            json!({"detail": "CSRF Failed: CSRF token from the 'X-Csrftoken' HTTP header incorrect."})
        );
        let evil = w.web.request(
            "POST",
            "/users/teams/",
            &[
                ("Cookie", &jar),
                ("X-CSRFToken", &csrf),
                ("Origin", "http://evil.example"),
                ("Content-Type", "application/json"),
            ],
            body,
        );
        assert_eq!(
            evil.json(),
            json!({"detail": "CSRF Failed: Origin checking failed - http://evil.example does not match any trusted origins."})
        );
        let good = w.web.request(
            "POST",
            "/users/teams/",
            &[
                ("Cookie", &jar),
                ("X-CSRFToken", &csrf),
                ("Origin", "http://localhost:4200"),
                ("Content-Type", "application/json"),
            ],
            body,
        );
        assert_eq!(good.status, 201, "{}", good.text());
        assert_eq!(
            w.call("STAFF", "GET", "/users/teams/?name=Session%20Team", None)
                .json()["count"],
            1
        );
        // Nothing was written by the refused requests.
        // API keys need no CSRF.
        assert_eq!(
            w.call(
                "MB",
                "POST",
                "/users/teams/",
                Some(json!({"name": "Token Team"}))
            )
            .status,
            201
        );
        // Token header errors.
        for (header, detail) in [
            ("Token", "Invalid token header. No credentials provided."),
            (
                "Token a b",
                "Invalid token header. Token string should not contain spaces.",
            ),
            (
                "Token 0123456789abcdef0123456789abcdef01234567",
                "Invalid token.",
            ),
        ] {
            let r = w
                .web
                .request("GET", "/version/", &[("Authorization", header)], b"");
            assert_eq!(r.status, 401, "{header}");
            assert_eq!(r.header("www-authenticate"), Some("Token"));
            assert_eq!(r.json()["detail"], detail);
        }
        let bearer = w
            .web
            .request("GET", "/version/", &[("Authorization", "Bearer abc")], b"");
        assert_eq!(bearer.status, 200, "other schemes are ignored");

        // Two sessions; logout ends only the one that carried it, also against replay.
        let (_, session2, csrf2) = session_login(&w, "mb", PASSWORD);
        let jar2 = format!("sessionid={session2}; csrftoken={csrf2}");
        let out = w.web.request(
            "POST",
            "/authentication/logout/",
            &[("Cookie", &jar), ("X-CSRFToken", &csrf)],
            b"",
        );
        assert_eq!(out.status, 200);
        assert!(out.body.is_empty());
        assert!(out.headers.iter().any(|(k, v)| k == "set-cookie"
            && v.starts_with("sessionid=;")
            && v.contains("Max-Age=0")));
        assert_eq!(
            w.web
                .request("GET", "/authentication/whoami/", &[("Cookie", &jar)], b"")
                .status,
            401,
            "replayed cookie"
        );
        assert_eq!(
            w.web
                .request("GET", "/authentication/whoami/", &[("Cookie", &jar2)], b"")
                .status,
            200
        );
        // A password change ends every session of that account (the request itself succeeds).
        let mb = w.id("MB");
        let change = w.web.request(
            "PATCH",
            &format!("/users/users/{mb}/"),
            &[
                ("Cookie", &jar2),
                ("X-CSRFToken", &csrf2),
                ("Content-Type", "application/json"),
            ],
            br#"{"password":"Brand-New-Pass-7"}"#,
        );
        assert_eq!(change.status, 200, "{}", change.text());
        assert_eq!(
            change.json()["_history"][0]["changes"]["password"][0]
                .as_str()
                .map(|s| s.starts_with("****")),
            Some(true)
        );
        assert_eq!(
            w.web
                .request("GET", "/authentication/whoami/", &[("Cookie", &jar2)], b"")
                .status,
            401
        );
        assert_eq!(
            session_login(&w, "mb", PASSWORD).0.status,
            400,
            "old password gone"
        );
        assert_eq!(session_login(&w, "mb", "Brand-New-Pass-7").0.status, 200);
        // Deactivated accounts cannot log in and their keys stop working.
        assert_eq!(
            w.call(
                "STAFF",
                "PATCH",
                &format!("/users/users/{}/", w.id("AUTH")),
                Some(json!({"is_active": false}))
            )
            .status,
            200
        );
        assert_eq!(session_login(&w, "auth", PASSWORD).0.status, 400);
        let r = w.call("AUTH", "GET", "/authentication/whoami/", None);
        assert_eq!(r.json(), json!({"detail": "User inactive or deleted."}));
        // Revoked keys are refused.
        let out = w.site.run(&["token", "list", "ad"]);
        let prefix = &w.tokens["AD"][..8];
        assert!(stdout(&out).contains(prefix));
        assert!(w.site.run(&["token", "revoke", prefix]).status.success());
        assert_eq!(
            w.call("AD", "GET", "/authentication/whoami/", None).json(),
            json!({"detail": "Invalid token."})
        );
        assert!(!stdout(&w.site.run(&["token", "list"])).contains(prefix));
    }
}

#[test]
fn django_hashes_log_in_and_are_rehashed() {
    for backend in backends() {
        let w = World::new(backend, &[]);
        // Django's pbkdf2_sha256 of "correct horse battery", 1000 iterations.
        let django = "pbkdf2_sha256$1000$c2FsdHNhbHQ$";
        let hash = {
            use base64::Engine;
            let mut out = [0u8; 32];
            pbkdf2::pbkdf2_hmac::<sha2::Sha256>(
                b"correct horse battery",
                b"c2FsdHNhbHQ",
                1000,
                &mut out,
            );
            format!(
                "{django}{}",
                base64::engine::general_purpose::STANDARD.encode(out)
            )
        };
        w.site.sql(&format!(
            "UPDATE users_user SET password = '{hash}' WHERE username = 'x1'"
        ));
        let (r, _, _) = session_login(&w, "x1", "correct horse battery");
        assert_eq!(r.status, 200, "{}", r.text());
        let out = w.site.run(&["user", "list"]);
        assert!(out.status.success());
        // The stored hash is now argon2id; the same password still works.
        let (again, _, _) = session_login(&w, "x1", "correct horse battery");
        assert_eq!(again.status, 200);
        let history = w
            .call(
                "STAFF",
                "GET",
                &format!("/users/users/{}/", w.id("X1")),
                None,
            )
            .json();
        assert!(history["last_login"].is_string());
        assert_eq!(session_login(&w, "x1", "wrong horse battery").0.status, 400);
    }
}

#[test]
fn throttling_answers_429_with_retry_after() {
    let mut site = Site::new(Backend::Sqlite);
    site.set("KEYSTONE_THROTTLE__ANON", "3/min");
    site.set("KEYSTONE_THROTTLE__USER", "5/min");
    // As behind nginx: the proxy's X-Forwarded-For entry names the client.
    site.set("KEYSTONE_SERVER__TRUST_FORWARDED_FOR", "true");
    site.migrate();
    let mut tokens = Vec::new();
    for name in ["one", "two"] {
        let out = site.run_with_input(
            &[
                "user",
                "create",
                "--username",
                name,
                "--no-input",
                "--password-stdin",
            ],
            &format!("{PASSWORD}\n"),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        tokens.push(
            stdout(&site.run(&["token", "create", name]))
                .trim()
                .to_string(),
        );
    }
    let web = site.serve("web", &[]);
    // Anonymous callers: the anon rate.
    let codes: Vec<u16> = (0..4).map(|_| web.get("/version/").status).collect();
    assert_eq!(codes, [200, 200, 200, 429]);
    let r = web.get("/version/");
    assert_eq!(r.status, 429);
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=60).contains(&retry));
    let detail = r.json()["detail"].as_str().unwrap_or("").to_string();
    assert!(
        detail.starts_with("Request was throttled. Expected available in "),
        "{detail}"
    );
    // The site root is not throttled; another client (named by the trusted proxy's
    // X-Forwarded-For entry) has its own budget.
    assert_eq!(web.get("/").status, 200);
    assert_eq!(
        web.request("GET", "/version/", &[("X-Forwarded-For", "10.9.8.7")], b"")
            .status,
        200
    );
    // Authenticated callers: the user rate, per user.
    let call = |t: &str| {
        let h = format!("Token {t}");
        web.request(
            "GET",
            "/users/membership-choices/role/",
            &[("Authorization", h.as_str())],
            b"",
        )
        .status
    };
    let codes: Vec<u16> = (0..6).map(|_| call(&tokens[0])).collect();
    assert_eq!(codes, [200, 200, 200, 200, 200, 429]);
    assert_eq!(call(&tokens[1]), 200);
}

#[test]
fn forwarded_for_buys_no_throttle_budget() {
    for trust in ["false", "true"] {
        let mut site = Site::new(Backend::Sqlite);
        site.set("KEYSTONE_THROTTLE__ANON", "2/min");
        site.set("KEYSTONE_SERVER__TRUST_FORWARDED_FOR", trust);
        site.migrate();
        let web = site.serve("web", &[]);
        let get = |forwarded: Option<&str>| {
            let headers: Vec<(&str, &str)> = forwarded
                .map(|f| ("X-Forwarded-For", f))
                .into_iter()
                .collect();
            web.request("GET", "/version/", &headers, b"").status
        };
        assert_eq!([get(None), get(None), get(None)], [200, 200, 429]);
        if trust == "false" {
            // Without a trusted proxy the header is the client's own word: ignored.
            assert_eq!(get(Some("203.0.113.50")), 429);
        } else {
            // Only the proxy's own (right-most) entry counts; what the client put to its
            // left changes nothing.
            assert_eq!(get(Some("203.0.113.50, 127.0.0.1")), 429);
            assert_eq!(get(Some("203.0.113.50, 198.51.100.9")), 200);
        }
    }
}

#[test]
fn ldap_login_creates_and_refreshes_the_local_account() {
    if !crate::ldap::slapd_available() {
        return;
    }
    let slapd = crate::ldap::Slapd::start();
    let uri = format!("ldap://127.0.0.1:{}", slapd.port);
    let w = World::new(
        Backend::Sqlite,
        &[
            ("AUTH_LDAP_SERVER_URI", &uri),
            ("AUTH_LDAP_START_TLS", "false"),
            ("AUTH_LDAP_USER_SEARCH", "ou=people,dc=example,dc=org"),
            (
                "AUTH_LDAP_ATTR_MAP",
                "first_name=givenName,last_name=sn,email=mail",
            ),
        ],
    );
    let (r, _, _) = session_login(&w, "alice", crate::ldap::ALICE_PASSWORD);
    assert_eq!(r.status, 200, "{}", r.text());
    let alice = r.json();
    assert_eq!(alice["username"], "alice");
    assert!(alice["email"].as_str().unwrap_or("").contains('@'));
    assert_eq!(
        alice["is_ldap_user"], false,
        "login does not mark LDAP users; the sync does"
    );
    assert_eq!(session_login(&w, "alice", "wrong").0.status, 400);
    assert_eq!(
        session_login(&w, "*", crate::ldap::ALICE_PASSWORD).0.status,
        400
    );
    // Local accounts still log in with their local password.
    assert_eq!(session_login(&w, "mb", PASSWORD).0.status, 200);
    let health = w.web.get("/health/json/").json();
    assert!(
        health["data"]
            .as_array()
            .map(|a| a
                .iter()
                .any(|c| c["check"] == "LDAP" && c["healthy"] == true))
            .unwrap_or(false),
        "{health}"
    );
}

#[test]
fn ldap_login_never_takes_over_a_local_account() {
    if !crate::ldap::slapd_available() {
        return;
    }
    let slapd = crate::ldap::Slapd::start();
    let uri = format!("ldap://127.0.0.1:{}", slapd.port);
    for backend in backends() {
        let w = World::new(
            backend,
            &[
                ("AUTH_LDAP_SERVER_URI", &uri),
                ("AUTH_LDAP_START_TLS", "false"),
                ("AUTH_LDAP_USER_SEARCH", "ou=people,dc=example,dc=org"),
                ("AUTH_LDAP_USER_FILTER", "(objectClass=inetOrgPerson)"),
                (
                    "AUTH_LDAP_ATTR_MAP",
                    "first_name=givenName,last_name=sn,email=mail",
                ),
            ],
        );
        // A local staff account whose username a directory entry also carries.
        let created = w.call(
            "STAFF",
            "POST",
            "/users/users/",
            Some(json!({"username": "alice", "password": PASSWORD, "first_name": "Local"})),
        );
        assert_eq!(created.status, 201, "{}", created.text());
        w.site
            .sql("UPDATE users_user SET is_staff = TRUE WHERE username = 'alice'");
        let directory_login = |name: &str| {
            let (r, session, _) = session_login(&w, name, crate::ldap::ALICE_PASSWORD);
            assert_eq!(r.status, 400, "{name}: {}", r.text());
            assert!(session.is_empty(), "{name}");
        };
        // The directory's password does not open the local account, under any spelling the
        // directory would match.
        directory_login("alice");
        directory_login("ALICE");
        let (r, _, _) = session_login(&w, "alice", PASSWORD);
        assert_eq!(r.status, 200, "its own password still works: {}", r.text());
        assert_eq!(
            r.json()["first_name"],
            "Local",
            "the directory entry changed nothing"
        );
        assert_eq!(r.json()["is_staff"], true);
        // A directory user without a local account gets an LDAP account (no usable password)
        // and keeps logging in through the directory.
        for _ in 0..2 {
            let (r, _, _) = session_login(&w, "bob", crate::ldap::BOB_PASSWORD);
            assert_eq!(r.status, 200, "{}", r.text());
        }
        // The sync marks every account named in the directory as an LDAP user (operations.md
        // §2.5); the flag does not open the local account to directory logins either.
        let out = w.site.run(&["ldap", "sync"]);
        assert!(out.status.success(), "ldap sync: {}", stderr(&out));
        let listed = w
            .call("STAFF", "GET", "/users/users/?username=alice", None)
            .json();
        assert_eq!(listed["results"][0]["is_ldap_user"], true, "{listed}");
        directory_login("alice");
        assert_eq!(session_login(&w, "alice", PASSWORD).0.status, 200);
        assert_eq!(
            session_login(&w, "bob", crate::ldap::BOB_PASSWORD).0.status,
            200
        );
    }
}

#[test]
fn logout_stays_in_force_when_redis_loses_its_keys() {
    let Some(mut redis) = PrivateRedis::start() else {
        return;
    };
    for backend in backends() {
        let w = World::new(backend, &[("KEYSTONE_REDIS__URL", &redis.url())]);
        // A second web process on the same database and Redis.
        let other = w.site.serve("web", &[]);
        let (_, session, csrf) = session_login(&w, "mb", PASSWORD);
        let jar = format!("sessionid={session}; csrftoken={csrf}");
        let whoami = |web: &Daemon| {
            web.request("GET", "/authentication/whoami/", &[("Cookie", &jar)], b"")
                .status
        };
        assert_eq!(whoami(&other), 200);
        let out = w.web.request(
            "POST",
            "/authentication/logout/",
            &[("Cookie", &jar), ("X-CSRFToken", &csrf)],
            b"",
        );
        assert_eq!(out.status, 200);
        assert_eq!(whoami(&other), 401, "revoked for every web process");
        // Redis forgets everything (FLUSHDB, eviction, a restart without persistence): the
        // logged-out session must not come back.
        assert_eq!(redis.cli(&["FLUSHDB"]), "OK");
        assert_eq!(whoami(&other), 401);
        assert_eq!(whoami(&w.web), 401);
        // Other sessions are unaffected.
        let (_, fresh, _) = session_login(&w, "mb", PASSWORD);
        let jar = format!("sessionid={fresh}");
        assert_eq!(
            other
                .request("GET", "/authentication/whoami/", &[("Cookie", &jar)], b"")
                .status,
            200
        );
    }
}

#[test]
fn session_changes_reach_every_web_process_before_the_answer() {
    // Each web process keeps the sessions it resolved in memory when Redis is configured;
    // a change made through one process (or a command) must be in force in the other one
    // as soon as its answer is back, and with Redis gone the database decides again.
    let Some(mut redis) = PrivateRedis::start() else {
        return;
    };
    for backend in backends() {
        let w = World::new(backend, &[("KEYSTONE_REDIS__URL", &redis.url())]);
        let other = w.site.serve("web", &[]);
        let whoami = |web: &Daemon, jar: &str| {
            web.request("GET", "/authentication/whoami/", &[("Cookie", jar)], b"")
        };
        let login = |name: &str| {
            let (r, session, _) = session_login(&w, name, PASSWORD);
            assert_eq!(r.status, 200, "login {name}: {}", r.text());
            format!("sessionid={session}")
        };

        // A changed name shows at once; deactivation ends the session at once.
        let jar = login("mb");
        for _ in 0..3 {
            assert_eq!(whoami(&other, &jar).json()["first_name"], "MB");
        }
        let mb = w.ids["MB"];
        let path = format!("/users/users/{mb}/");
        let r = w.call(
            "STAFF",
            "PATCH",
            &path,
            Some(json!({"first_name": "Renamed"})),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(whoami(&other, &jar).json()["first_name"], "Renamed");
        // Through /batch/: held back until the job is committed, then in force at once.
        let job = json!({"job": {"actions": [
            {"method": "PATCH", "path": path, "payload": {"first_name": "Batched"}},
        ]}});
        let r = w.call("STAFF", "POST", "/batch/", Some(job));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(whoami(&other, &jar).json()["first_name"], "Batched");
        let r = w.call("STAFF", "PATCH", &path, Some(json!({"is_active": false})));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(whoami(&other, &jar).status, 401, "deactivated everywhere");

        // A password set from the command line ends the sessions it was issued under.
        let jar = login("ad");
        assert_eq!(whoami(&other, &jar).status, 200);
        let out = w.site.run_with_input(
            &["user", "set-password", "ad", "--password-stdin"],
            "Another-Pass-456\n",
        );
        assert!(out.status.success(), "set-password: {}", stderr(&out));
        assert_eq!(whoami(&other, &jar).status, 401, "old password's session");

        // Redis gone: the other process stops trusting what it cached and asks the
        // database, so a logout through the first one still holds there.
        let jar = login("ow");
        let csrf = session_login(&w, "ow", PASSWORD).2;
        assert_eq!(whoami(&other, &jar).status, 200);
        redis.stop();
        let cookie = format!("{jar}; csrftoken={csrf}");
        let out = w.web.request(
            "POST",
            "/authentication/logout/",
            &[("Cookie", &cookie), ("X-CSRFToken", &csrf)],
            b"",
        );
        assert_eq!(out.status, 200, "{}", out.text());
        assert_eq!(whoami(&other, &jar).status, 401, "logout without Redis");
        redis.restart();
    }
}

#[test]
fn password_hashing_does_not_hold_up_other_requests() {
    // Two request threads, one hashing slot, four wrong-password logins at once against a
    // slow PBKDF2 hash. Were the hashing done on the request threads, both would be busy and
    // /version/ would wait for a login to finish.
    let w = World::new(
        Backend::Sqlite,
        &[
            ("TOKIO_WORKER_THREADS", "2"),
            ("KEYSTONE_SECURITY__PASSWORD_HASH_CONCURRENCY", "1"),
            ("KEYSTONE_SECURITY__LOGIN_FAILURES", ""),
        ],
    );
    let slow = format!("pbkdf2_sha256$300000$c2FsdA${}", "A".repeat(43) + "=");
    w.site.sql(&format!(
        "UPDATE users_user SET password = '{slow}' WHERE username IN ('x1', 'x2')"
    ));
    // How long one such login takes on this machine and build.
    let alone = std::time::Instant::now();
    assert_eq!(session_login(&w, "x1", "not the password").0.status, 400);
    let one_login = alone.elapsed();
    let started = std::time::Instant::now();
    let (version, version_done, logins) = std::thread::scope(|s| {
        let logins: Vec<_> = ["x1", "x2", "x1", "x2"]
            .into_iter()
            .map(|name| {
                let w = &w;
                s.spawn(move || {
                    let status = session_login(w, name, "not the password").0.status;
                    (status, std::time::Instant::now())
                })
            })
            .collect();
        // Let the logins arrive and the first hash get under way.
        std::thread::sleep(one_login / 3);
        let version = w.web.get("/version/");
        let version_done = std::time::Instant::now();
        let logins: Vec<(u16, std::time::Instant)> = logins
            .into_iter()
            .map(|h| h.join().expect("login thread"))
            .collect();
        (version, version_done, logins)
    });
    assert_eq!(version.status, 200, "{}", version.text());
    assert!(
        logins.iter().all(|(status, _)| *status == 400),
        "{logins:?}"
    );
    let first_login = logins.iter().map(|(_, at)| *at).min().expect("logins");
    let last_login = logins.iter().map(|(_, at)| *at).max().expect("logins");
    assert!(
        version_done < first_login,
        "/version/ answered after {:?}, the first login after {:?} (one login alone: {:?})",
        version_done - started,
        first_login - started,
        one_login
    );
    eprintln!(
        "one login alone {one_login:?}; during the burst /version/ answered after {:?}, \
         logins after {:?} .. {:?}",
        version_done - started,
        first_login - started,
        last_login - started
    );
    // One slot: the hashes ran one after another, not side by side.
    assert!(
        last_login - first_login > (first_login - started) * 3 / 2,
        "logins finished at {:?} .. {:?}",
        first_login - started,
        last_login - started
    );
}

#[test]
fn failed_logins_are_limited_per_username() {
    let w = World::new(
        Backend::Sqlite,
        &[("KEYSTONE_SECURITY__LOGIN_FAILURES", "3/15m")],
    );
    for _ in 0..3 {
        assert_eq!(session_login(&w, "x2", "wrong password").0.status, 400);
    }
    // The fourth attempt is refused before the password is checked, even the right one, and
    // under any spelling of the username.
    for (name, password) in [("x2", PASSWORD), ("X2", PASSWORD), ("x2", "wrong")] {
        let (r, session, _) = session_login(&w, name, password);
        assert_eq!(r.status, 429, "{name}: {}", r.text());
        assert!(session.is_empty(), "no session for a refused login");
        let retry: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After");
        assert!((890..=900).contains(&retry), "{retry}");
        assert_eq!(
            r.json(),
            json!({"detail": format!("Request was throttled. Expected available in {retry} seconds.")})
        );
    }
    // Other usernames keep their own budget.
    assert_eq!(session_login(&w, "x3", PASSWORD).0.status, 200);
    // Successful logins do not count, and do not wipe earlier failures either.
    assert_eq!(session_login(&w, "x1", "wrong").0.status, 400);
    assert_eq!(session_login(&w, "x1", "wrong").0.status, 400);
    assert_eq!(session_login(&w, "x1", PASSWORD).0.status, 200);
    assert_eq!(session_login(&w, "x1", PASSWORD).0.status, 200);
    assert_eq!(session_login(&w, "x1", "wrong").0.status, 400);
    assert_eq!(session_login(&w, "x1", PASSWORD).0.status, 429);
    // Unknown usernames are limited the same way.
    for _ in 0..3 {
        assert_eq!(session_login(&w, "nobody", "guess").0.status, 400);
    }
    assert_eq!(session_login(&w, "nobody", "guess").0.status, 429);
}

#[test]
fn failed_logins_are_counted_across_web_processes_with_redis() {
    if !redis_available() {
        return;
    }
    let w = World::new(
        Backend::Sqlite,
        &[
            ("KEYSTONE_REDIS__URL", &redis_url()),
            ("KEYSTONE_SECURITY__LOGIN_FAILURES", "3/15m"),
        ],
    );
    let other = w.site.serve("web", &[]);
    // A username no earlier run left failures for in the shared Redis.
    let name = format!("lf-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let created = w.call(
        "STAFF",
        "POST",
        "/users/users/",
        Some(json!({"username": name, "password": PASSWORD})),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let login = |web: &Daemon, password: &str| {
        let body = json!({"username": name, "password": password}).to_string();
        web.request(
            "POST",
            "/authentication/login/",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .status
    };
    assert_eq!(login(&w.web, "wrong"), 400);
    assert_eq!(login(&other, "wrong"), 400);
    assert_eq!(login(&w.web, PASSWORD), 200);
    assert_eq!(login(&other, "wrong"), 400);
    assert_eq!(
        login(&w.web, PASSWORD),
        429,
        "three failures over two processes"
    );
    assert_eq!(login(&other, PASSWORD), 429);
}

#[test]
fn api_roots_link_each_collection() {
    let w = World::new(Backend::Sqlite, &[]);
    assert_eq!(w.call("ANON", "GET", "/users/", None).status, 401);
    let users = w.call("MB", "GET", "/users/", None);
    assert_eq!(users.status, 200);
    assert_eq!(
        users.json(),
        json!({
            "memberships": "http://localhost/users/memberships/",
            "teams": "http://localhost/users/teams/",
            "users": "http://localhost/users/users/"
        })
    );
    let alloc = w.call("MB", "GET", "/allocations/", None).json();
    assert_eq!(alloc["requests"], "http://localhost/allocations/requests/");
    assert_eq!(
        w.call("MB", "GET", "/research/", None).json()["grants"],
        "http://localhost/research/grants/"
    );
    assert_eq!(
        w.call("MB", "GET", "/notifications/", None).json()["preferences"],
        "http://localhost/notifications/preferences/"
    );
    assert_eq!(w.call("MB", "POST", "/users/", None).status, 405);
    // Unknown filters' id errors come with the other filter errors in one 400.
    let r = w.call(
        "STAFF",
        "GET",
        "/users/memberships/?role=XX&user=99999",
        None,
    );
    assert_eq!(
        r.json(),
        json!({
            "role": ["Select a valid choice. XX is not one of the available choices."],
            "user": ["Select a valid choice. That choice is not one of the available choices."]
        })
    );
}
