//! Clusters, allocation requests, reviews and resource allocations (domain.md §7.1–§7.5,
//! §13, §14): the permission matrices (every method as every role), list visibility for
//! members of team A vs team B, every validation rule with its field, cluster access rules,
//! the status/date/reviewer rules, audit texts and cascading deletes — on both backends.

use crate::accounts::World;
use crate::common::*;
use serde_json::{Value, json};

const ROLES: [&str; 6] = ["ANON", "AUTH", "MB", "AD", "OW", "STAFF"];
const PASSWORD: &str = "Str0ng-Pass-99";

/// Checks one row of a matrix: `expected[i]` for `ROLES[i]`.
fn expect_row(w: &World, method: &str, path: &str, body: Option<Value>, expected: [u16; 6]) {
    for (role, want) in ROLES.iter().zip(expected) {
        let r = w.call(role, method, path, body.clone());
        assert_eq!(r.status, want, "{method} {path} as {role}: {}", r.text());
    }
}

/// Percent-encodes a query-string value (everything but unreserved characters).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The allocations fixture on top of the accounts `World`.
trait AllocationsWorld {
    /// POSTs as `role`, asserts 201 and returns the new id.
    fn create(&self, role: &str, path: &str, body: Value) -> i64;
    /// Asserts a 400 whose body names `field` with `message`.
    fn rejects(
        &self,
        role: &str,
        method: &str,
        path: &str,
        body: Value,
        field: &str,
        message: &str,
    );
    /// Team B with X1 as its member (token `X1`), five clusters, and one request with an
    /// allocation and a review in each team.
    fn seed(&mut self);
    /// Audit entries matching a `/logs/audit/` query.
    fn audit_count(&self, query: &str) -> i64;
}

impl AllocationsWorld for World {
    fn create(&self, role: &str, path: &str, body: Value) -> i64 {
        let r = self.call(role, "POST", path, Some(body.clone()));
        assert_eq!(r.status, 201, "POST {path} {body} as {role}: {}", r.text());
        r.json()["id"].as_i64().expect("id")
    }

    fn rejects(
        &self,
        role: &str,
        method: &str,
        path: &str,
        body: Value,
        field: &str,
        message: &str,
    ) {
        let r = self.call(role, method, path, Some(body.clone()));
        assert_eq!(r.status, 400, "{method} {path} {body}: {}", r.text());
        let errors = r.json();
        let list = errors[field]
            .as_array()
            .unwrap_or_else(|| panic!("{method} {path} {body}: no `{field}` in {errors}"));
        assert!(
            list.iter().any(|m| m.as_str() == Some(message)),
            "{method} {path} {body}: `{field}` lacks {message:?}: {errors}"
        );
    }

    fn seed(&mut self) {
        let team_a = self.id("TEAM");
        let team_b = self.create("STAFF", "/users/teams/", json!({"name": "Team Two"}));
        self.ids.insert("TEAM_B", team_b);
        let x1 = self.id("X1");
        self.create(
            "STAFF",
            "/users/memberships/",
            json!({"user": x1, "team": team_b, "role": "OW"}),
        );
        let token = self.token_for("x1");
        self.tokens.insert("X1", token);
        for (key, name, mode, teams) in [
            ("C_OPEN", "open", "OP", vec![]),
            ("C_WL", "white-a", "WL", vec![team_a]),
            ("C_BL", "black-a", "BL", vec![team_a]),
            ("C_WL_B", "white-b", "WL", vec![team_b]),
            ("C_BL_B", "black-b", "BL", vec![team_b]),
        ] {
            let id = self.create(
                "STAFF",
                "/allocations/clusters/",
                json!({"name": name, "access_mode": mode, "access_teams": teams}),
            );
            self.ids.insert(key, id);
        }
        let staff = self.id("STAFF");
        for (suffix, team) in [("A", team_a), ("B", team_b)] {
            let req = self.create(
                "STAFF",
                "/allocations/requests/",
                json!({"title": format!("Request {suffix}"), "description": "Compute time",
                       "submitter": staff, "team": team}),
            );
            let alloc = self.create(
                "STAFF",
                "/allocations/allocations/",
                json!({"requested": 100, "cluster": self.id("C_OPEN"), "request": req}),
            );
            let review = self.create(
                "STAFF",
                "/allocations/reviews/",
                json!({"status": "CR", "request": req}),
            );
            let (rk, ak, vk) = if suffix == "A" {
                ("REQ_A", "ALLOC_A", "REV_A")
            } else {
                ("REQ_B", "ALLOC_B", "REV_B")
            };
            self.ids.insert(rk, req);
            self.ids.insert(ak, alloc);
            self.ids.insert(vk, review);
        }
    }

    fn audit_count(&self, query: &str) -> i64 {
        let r = self.call("STAFF", "GET", &format!("/logs/audit/?{query}"), None);
        assert_eq!(r.status, 200, "audit {query}: {}", r.text());
        r.json()["count"].as_i64().expect("count")
    }
}

fn seeded(backend: Backend) -> World {
    let mut w = World::new(backend, &[]);
    w.seed();
    w
}

fn request_body(w: &World, title: &str) -> Value {
    json!({"title": title, "description": "More compute", "submitter": w.id("MB"),
           "team": w.id("TEAM")})
}

#[test]
fn allocations_core_permission_matrix_collections() {
    for backend in backends() {
        let w = seeded(backend);
        for path in [
            "/allocations/clusters/",
            "/allocations/requests/",
            "/allocations/reviews/",
            "/allocations/allocations/",
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
            "/allocations/clusters/",
            Some(json!({"name": "matrix"})),
            [401, 403, 403, 403, 403, 201],
        );
        expect_row(
            &w,
            "POST",
            "/allocations/requests/",
            Some(request_body(&w, "Matrix")),
            [401, 403, 403, 201, 201, 201],
        );
        expect_row(
            &w,
            "POST",
            "/allocations/reviews/",
            Some(json!({"status": "AP", "request": w.id("REQ_A")})),
            [401, 403, 403, 403, 403, 201],
        );
        expect_row(
            &w,
            "POST",
            "/allocations/allocations/",
            Some(json!({"requested": 5, "cluster": w.id("C_OPEN"), "request": w.id("REQ_A")})),
            [401, 403, 403, 201, 201, 201],
        );
    }
}

#[test]
fn allocations_core_permission_matrix_items() {
    for backend in backends() {
        let w = seeded(backend);
        let staff = w.id("STAFF");
        let req_a = w.id("REQ_A");
        // Records to delete last (STAFF is the last role of every row).
        let doomed_cluster = w.create("STAFF", "/allocations/clusters/", json!({"name": "doomed"}));
        let doomed_request = w.create(
            "STAFF",
            "/allocations/requests/",
            request_body(&w, "Doomed"),
        );
        let items = [
            (
                format!("/allocations/clusters/{}/", w.id("C_WL")),
                format!("/allocations/clusters/{doomed_cluster}/"),
                json!({"name": "white-a", "access_mode": "WL", "access_teams": [w.id("TEAM")]}),
                json!({"description": "Main cluster"}),
                [401, 200, 200, 200, 200, 200],
            ),
            (
                format!("/allocations/requests/{req_a}/"),
                format!("/allocations/requests/{doomed_request}/"),
                json!({"title": "Request A", "description": "Compute time", "submitter": staff,
                       "team": w.id("TEAM")}),
                json!({"status": "AP"}),
                [401, 403, 200, 200, 200, 200],
            ),
            (
                format!("/allocations/reviews/{}/", w.id("REV_A")),
                format!("/allocations/reviews/{}/", w.id("REV_A")),
                json!({"status": "DC", "request": req_a}),
                json!({"status": "AP"}),
                [401, 403, 200, 200, 200, 200],
            ),
            (
                format!("/allocations/allocations/{}/", w.id("ALLOC_A")),
                format!("/allocations/allocations/{}/", w.id("ALLOC_A")),
                json!({"requested": 50, "cluster": w.id("C_OPEN"), "request": req_a}),
                json!({"awarded": 40}),
                [401, 403, 200, 200, 200, 200],
            ),
        ];
        for (path, doomed, put, patch, reads) in &items {
            for method in ["GET", "HEAD"] {
                expect_row(&w, method, path, None, *reads);
            }
            expect_row(&w, "OPTIONS", path, None, [401, 200, 200, 200, 200, 200]);
            for method in ["POST", "TRACE"] {
                expect_row(&w, method, path, None, [401, 405, 405, 405, 405, 405]);
            }
            expect_row(
                &w,
                "PUT",
                path,
                Some(put.clone()),
                [401, 403, 403, 403, 403, 200],
            );
            expect_row(
                &w,
                "PATCH",
                path,
                Some(patch.clone()),
                [401, 403, 403, 403, 403, 200],
            );
            expect_row(&w, "DELETE", doomed, None, [401, 403, 403, 403, 403, 204]);
            // Gone now; OPTIONS never looks the record up.
            assert_eq!(w.call("STAFF", "GET", doomed, None).status, 404);
            assert_eq!(w.call("MB", "OPTIONS", doomed, None).status, 200);
        }
        // Missing and malformed ids.
        for (path, model) in [
            ("/allocations/clusters/", "Cluster"),
            ("/allocations/requests/", "AllocationRequest"),
            ("/allocations/reviews/", "AllocationReview"),
            ("/allocations/allocations/", "ResourceAllocation"),
        ] {
            for role in ["AUTH", "MB", "STAFF"] {
                let r = w.call(role, "GET", &format!("{path}99999/"), None);
                assert_eq!(r.status, 404, "{path} as {role}");
                assert_eq!(
                    r.json(),
                    json!({"detail": format!("No {model} matches the given query.")})
                );
            }
            let r = w.call("STAFF", "GET", &format!("{path}abc/"), None);
            assert_eq!((r.status, r.json()), (404, json!({"detail": "Not found."})));
            let r = w.call("STAFF", "PATCH", &format!("{path}99999/"), Some(json!({})));
            assert_eq!(r.status, 404, "PATCH missing {path}");
        }
        // Non-staff writes to a missing request/review/allocation are 404 (lookup first).
        for path in [
            "/allocations/requests/99999/",
            "/allocations/reviews/99999/",
            "/allocations/allocations/99999/",
        ] {
            assert_eq!(w.call("AD", "DELETE", path, None).status, 404, "{path}");
        }
    }
}

#[test]
fn allocations_core_visibility_team_a_vs_team_b() {
    for backend in backends() {
        let w = seeded(backend);
        let (team_a, team_b) = (w.id("TEAM"), w.id("TEAM_B"));
        let list = |role: &str, path: &str| -> Value {
            let r = w.call(role, "GET", path, None);
            assert_eq!(r.status, 200, "{path} as {role}: {}", r.text());
            r.json()
        };
        let ids = |v: &Value| -> Vec<i64> {
            v["results"]
                .as_array()
                .expect("results")
                .iter()
                .map(|r| r["id"].as_i64().expect("id"))
                .collect()
        };
        for (path, a, b) in [
            ("/allocations/requests/", "REQ_A", "REQ_B"),
            ("/allocations/reviews/", "REV_A", "REV_B"),
            ("/allocations/allocations/", "ALLOC_A", "ALLOC_B"),
        ] {
            for role in ["MB", "AD", "OW"] {
                assert_eq!(ids(&list(role, path)), vec![w.id(a)], "{path} as {role}");
            }
            assert_eq!(ids(&list("X1", path)), vec![w.id(b)], "{path} as X1");
            assert_eq!(list("AUTH", path)["count"], 0, "{path} as AUTH");
            assert_eq!(ids(&list("STAFF", path)), vec![w.id(a), w.id(b)]);
            // Items of the other team are found but refused.
            let item_a = format!("{path}{}/", w.id(a));
            let item_b = format!("{path}{}/", w.id(b));
            assert_eq!(w.call("MB", "GET", &item_b, None).status, 403);
            assert_eq!(
                w.call("MB", "GET", &item_b, None).json(),
                json!({"detail": "You do not have permission to perform this action."})
            );
            assert_eq!(w.call("X1", "GET", &item_a, None).status, 403);
            assert_eq!(w.call("X1", "GET", &item_b, None).status, 200);
        }
        // Scoped rows follow the request's team.
        let requests = list("MB", "/allocations/requests/");
        assert!(
            requests["results"]
                .as_array()
                .expect("results")
                .iter()
                .all(|r| r["team"] == team_a)
        );
        // A membership in an inactive team still counts (domain.md §7.2).
        let r = w.call(
            "STAFF",
            "PATCH",
            &format!("/users/teams/{team_b}/"),
            Some(json!({"is_active": false})),
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            ids(&list("X1", "/allocations/requests/")),
            vec![w.id("REQ_B")]
        );
        let item = format!("/allocations/requests/{}/", w.id("REQ_B"));
        assert_eq!(w.call("X1", "GET", &item, None).status, 200);

        // Clusters: open, whitelists naming a caller's team, blacklists naming none.
        let names = |role: &str| -> Vec<String> {
            let mut n: Vec<String> = list(role, "/allocations/clusters/")["results"]
                .as_array()
                .expect("results")
                .iter()
                .map(|c| c["name"].as_str().expect("name").to_string())
                .collect();
            n.sort();
            n
        };
        assert_eq!(names("MB"), ["black-b", "open", "white-a"]);
        assert_eq!(
            names("X1"),
            ["black-a", "open", "white-b"],
            "inactive team counts"
        );
        assert_eq!(names("AUTH"), ["black-a", "black-b", "open"]);
        assert_eq!(
            names("STAFF"),
            ["black-a", "black-b", "open", "white-a", "white-b"]
        );
        // Disabled clusters stay listed; any cluster is readable by id.
        let wl_b = w.id("C_WL_B");
        let r = w.call(
            "STAFF",
            "PATCH",
            &format!("/allocations/clusters/{}/", w.id("C_OPEN")),
            Some(json!({"enabled": false})),
        );
        assert_eq!((r.status, r.json()["enabled"].clone()), (200, json!(false)));
        assert!(names("AUTH").contains(&"open".to_string()));
        let r = w.call("MB", "GET", &format!("/allocations/clusters/{wl_b}/"), None);
        assert_eq!(r.status, 200);
        let c = r.json();
        assert_eq!(c["access_teams"], json!([team_b]));
        assert_eq!(c["_access_teams"][0]["id"], team_b);
        assert_eq!(
            c["_access_teams"][0]
                .as_object()
                .expect("team")
                .keys()
                .collect::<Vec<_>>(),
            ["id", "slug", "name", "is_active"]
        );

        // Private comments appear in `_comments` for staff only; attachments as {file, name}.
        let req_a = w.id("REQ_A");
        let mb = w.id("MB");
        w.site.sql(&format!(
            "INSERT INTO allocations_comment (content, created, private, user_id, request_id) \
             VALUES ('public note', '2026-01-01T00:00:00+00:00', FALSE, {mb}, {req_a}); \
             INSERT INTO allocations_comment (content, created, private, user_id, request_id) \
             VALUES ('staff only', '2026-01-02T00:00:00+00:00', TRUE, {mb}, {req_a}); \
             INSERT INTO allocations_attachment (file, name, uploaded, request_id) \
             VALUES ('allocations/a.pdf', 'a.pdf', '2026-01-01T00:00:00+00:00', {req_a});"
        ));
        let item = format!("/allocations/requests/{req_a}/");
        let mine = w.call("MB", "GET", &item, None).json();
        assert_eq!(mine["_comments"].as_array().expect("comments").len(), 1);
        assert_eq!(mine["_comments"][0]["content"], "public note");
        assert_eq!(mine["_comments"][0]["_user"]["id"], mb);
        assert_eq!(
            mine["_attachments"],
            json!([{"file": "allocations/a.pdf", "name": "a.pdf"}])
        );
        let listed = list("MB", "/allocations/requests/");
        assert_eq!(
            listed["results"][0]["_comments"]
                .as_array()
                .expect("comments")
                .len(),
            1
        );
        let all = w.call("STAFF", "GET", &item, None).json();
        assert_eq!(all["_comments"].as_array().expect("comments").len(), 2);
        assert_eq!(all["_comments"][1]["private"], true);

        // Grants and publications (of any team) link by id; expanded by title.
        w.site.sql(&format!(
            "INSERT INTO research_products_grant (title, agency, amount, start_date, team_id) \
             VALUES ('Zeta grant', 'NSF', 1234.5, '2025-01-01', {team_b}); \
             INSERT INTO research_products_grant (title, agency, amount, start_date, team_id) \
             VALUES ('Alpha grant', 'DOE', -7, '2025-02-01', {team_a}); \
             INSERT INTO research_products_publication (title, published, team_id) \
             VALUES ('Paper', '2025-03-04', {team_a});"
        ));
        let r = w.call(
            "STAFF",
            "PATCH",
            &item,
            Some(json!({"grants": [2, 1], "publications": [1], "assignees": [mb]})),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(
            (v["grants"].clone(), v["publications"].clone()),
            (json!([1, 2]), json!([1]))
        );
        assert_eq!(v["_grants"][0]["title"], "Alpha grant");
        assert_eq!(v["_grants"][0]["amount"], "-7.00");
        assert_eq!(v["_grants"][1]["amount"], "1234.50");
        assert_eq!(v["_grants"][1]["team"], team_b);
        assert_eq!(v["_grants"][1]["end_date"], Value::Null);
        assert_eq!(
            v["_grants"][1]
                .as_object()
                .expect("grant")
                .keys()
                .collect::<Vec<_>>(),
            [
                "id",
                "title",
                "agency",
                "pi",
                "amount",
                "grant_number",
                "start_date",
                "end_date",
                "description",
                "team"
            ]
        );
        assert_eq!(v["_publications"][0]["published"], "2025-03-04");
        assert_eq!(v["_assignees"][0]["username"], "mb");
        let all = w.call("STAFF", "GET", &item, None).json();

        // Representation keys, in order.
        let keys: Vec<&String> = all.as_object().expect("object").keys().collect();
        assert_eq!(
            keys,
            [
                "id",
                "_submitter",
                "_team",
                "_assignees",
                "_publications",
                "_grants",
                "_history",
                "_allocations",
                "_attachments",
                "_comments",
                "title",
                "description",
                "submitted",
                "active",
                "expire",
                "status",
                "submitter",
                "team",
                "assignees",
                "publications",
                "grants"
            ]
        );
        assert_eq!(all["_allocations"][0]["_cluster"]["name"], "open");
        let review = list("STAFF", "/allocations/reviews/")["results"][0].clone();
        let keys: Vec<&String> = review.as_object().expect("object").keys().collect();
        assert_eq!(
            keys,
            [
                "id",
                "_request",
                "_reviewer",
                "_history",
                "status",
                "submitted",
                "request",
                "reviewer"
            ]
        );
        let alloc = list("STAFF", "/allocations/allocations/")["results"][0].clone();
        let keys: Vec<&String> = alloc.as_object().expect("object").keys().collect();
        assert_eq!(
            keys,
            [
                "id",
                "_cluster",
                "_request",
                "_history",
                "requested",
                "awarded",
                "final",
                "cluster",
                "request"
            ]
        );
        assert_eq!(
            alloc["_request"],
            json!({"id": req_a, "title": "Request A", "status": "PD", "active": null, "expire": null})
        );

        // Filters, search and ordering on these lists.
        assert_eq!(
            list("STAFF", "/allocations/requests/?status=PD")["count"],
            2
        );
        let r = w.call("STAFF", "GET", "/allocations/requests/?status=XX", None);
        assert_eq!(
            (r.status, r.json()),
            (
                400,
                json!({"status": ["Select a valid choice. XX is not one of the available choices."]})
            )
        );
        assert_eq!(
            list("STAFF", "/allocations/requests/?_search=%22Team%20Two%22")["count"],
            1
        );
        assert_eq!(
            list("MB", "/allocations/reviews/?_search=request")["count"],
            1
        );
        assert_eq!(
            list("STAFF", "/allocations/allocations/?_search=open")["count"],
            2
        );
        assert_eq!(
            ids(&list("STAFF", "/allocations/requests/?_order=-id")),
            vec![w.id("REQ_B"), req_a]
        );
        assert_eq!(
            list("STAFF", "/allocations/clusters/?access_mode=WL")["count"],
            2
        );
        assert_eq!(
            list(
                "STAFF",
                &format!("/allocations/allocations/?request={req_a}")
            )["count"],
            1
        );
        let r = w.call("STAFF", "GET", "/allocations/reviews/?request=99999", None);
        assert_eq!(r.status, 400);
        assert_eq!(
            list("STAFF", "/allocations/requests/?_limit=1")["next"]
                .as_str()
                .map(|s| s.contains("_offset=1")),
            Some(true)
        );
    }
}

#[test]
fn allocations_core_validation_names_fields() {
    for backend in backends() {
        let w = seeded(backend);
        let (team, staff, mb) = (w.id("TEAM"), w.id("STAFF"), w.id("MB"));
        let req_a = w.id("REQ_A");
        // Clusters.
        let c = "/allocations/clusters/";
        let ci = format!("/allocations/clusters/{}/", w.id("C_WL"));
        w.rejects(
            "STAFF",
            "POST",
            c,
            json!({}),
            "name",
            "This field is required.",
        );
        w.rejects(
            "STAFF",
            "POST",
            c,
            json!({"name": " "}),
            "name",
            "This field may not be blank.",
        );
        w.rejects(
            "STAFF",
            "POST",
            c,
            json!({"name": "x".repeat(51)}),
            "name",
            "Ensure this field has no more than 50 characters.",
        );
        w.rejects(
            "STAFF",
            "POST",
            c,
            json!({"name": "open"}),
            "name",
            "cluster with this name already exists.",
        );
        w.rejects(
            "STAFF",
            "PATCH",
            &ci,
            json!({"name": "open"}),
            "name",
            "cluster with this name already exists.",
        );
        w.rejects(
            "STAFF",
            "POST",
            c,
            json!({"name": "n1", "description": "d".repeat(151)}),
            "description",
            "Ensure this field has no more than 150 characters.",
        );
        w.rejects(
            "STAFF",
            "POST",
            c,
            json!({"name": "n1", "access_mode": "XX"}),
            "access_mode",
            "\"XX\" is not a valid choice.",
        );
        w.rejects(
            "STAFF",
            "POST",
            c,
            json!({"name": "n1", "enabled": "maybe"}),
            "enabled",
            "Must be a valid boolean.",
        );
        w.rejects(
            "STAFF",
            "POST",
            c,
            json!({"name": "n1", "access_teams": [99999]}),
            "access_teams",
            "Invalid pk \"99999\" - object does not exist.",
        );
        w.rejects(
            "STAFF",
            "POST",
            c,
            json!({"name": "n1", "access_teams": 5}),
            "access_teams",
            "Expected a list of items but got type \"int\".",
        );
        w.rejects(
            "STAFF",
            "PUT",
            &ci,
            json!({"enabled": true}),
            "name",
            "This field is required.",
        );
        // A valid PATCH keeps the rest; a PUT replaces the access list when given.
        let r = w.call(
            "STAFF",
            "PATCH",
            &ci,
            Some(json!({"description": "GPU nodes"})),
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["access_teams"], json!([team]));
        let r = w.call(
            "STAFF",
            "PUT",
            &ci,
            Some(json!({"name": "white-a", "access_teams": []})),
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            (
                r.json()["access_teams"].clone(),
                r.json()["access_mode"].clone(),
                r.json()["description"].clone()
            ),
            (json!([]), json!("WL"), json!("GPU nodes"))
        );

        // Allocation requests.
        let rq = "/allocations/requests/";
        let ri = format!("/allocations/requests/{req_a}/");
        for field in ["title", "description", "submitter", "team"] {
            w.rejects(
                "STAFF",
                "POST",
                rq,
                json!({}),
                field,
                "This field is required.",
            );
        }
        let mut body = request_body(&w, "Valid");
        let with = |key: &str, value: Value| {
            let mut b = body.clone();
            b[key] = value;
            b
        };
        w.rejects(
            "STAFF",
            "POST",
            rq,
            with("title", json!("t".repeat(251))),
            "title",
            "Ensure this field has no more than 250 characters.",
        );
        w.rejects(
            "STAFF",
            "POST",
            rq,
            with("title", json!("")),
            "title",
            "This field may not be blank.",
        );
        w.rejects(
            "STAFF",
            "POST",
            rq,
            with("description", json!("d".repeat(20_001))),
            "description",
            "Ensure this field has no more than 20000 characters.",
        );
        let wrong_date = "Date has wrong format. Use one of these formats instead: YYYY-MM-DD.";
        w.rejects(
            "STAFF",
            "POST",
            rq,
            with("active", json!("2026/01/01")),
            "active",
            wrong_date,
        );
        w.rejects(
            "STAFF",
            "POST",
            rq,
            with("expire", json!("2026-02-30")),
            "expire",
            wrong_date,
        );
        w.rejects(
            "STAFF",
            "POST",
            rq,
            with("expire", json!(20260101)),
            "expire",
            wrong_date,
        );
        w.rejects(
            "STAFF",
            "POST",
            rq,
            with("status", json!("XX")),
            "status",
            "\"XX\" is not a valid choice.",
        );
        w.rejects(
            "STAFF",
            "POST",
            rq,
            with("status", json!("Pending")),
            "status",
            "\"Pending\" is not a valid choice.",
        );
        w.rejects(
            "STAFF",
            "POST",
            rq,
            with("submitter", json!(99999)),
            "submitter",
            "Invalid pk \"99999\" - object does not exist.",
        );
        w.rejects(
            "STAFF",
            "POST",
            rq,
            with("submitter", json!(null)),
            "submitter",
            "This field may not be null.",
        );
        w.rejects(
            "STAFF",
            "POST",
            rq,
            with("team", json!(99999)),
            "team",
            "Invalid pk \"99999\" - object does not exist.",
        );
        w.rejects(
            "STAFF",
            "POST",
            rq,
            with("team", json!("abc")),
            "team",
            "Incorrect type. Expected pk value, received str.",
        );
        w.rejects(
            "STAFF",
            "POST",
            rq,
            with("assignees", json!([99999])),
            "assignees",
            "Invalid pk \"99999\" - object does not exist.",
        );
        w.rejects(
            "STAFF",
            "POST",
            rq,
            with("publications", json!([99999])),
            "publications",
            "Invalid pk \"99999\" - object does not exist.",
        );
        w.rejects(
            "STAFF",
            "POST",
            rq,
            with("grants", json!([99999])),
            "grants",
            "Invalid pk \"99999\" - object does not exist.",
        );
        // ⚑ Date order (domain.md §3.5.2, §14 #9): create, PUT and PATCH, merged record.
        let order = "The expiration date must come after the activation date.";
        body["active"] = json!("2026-03-01");
        body["expire"] = json!("2026-03-01");
        w.rejects("STAFF", "POST", rq, body.clone(), "non_field_errors", order);
        w.rejects("AD", "POST", rq, body.clone(), "non_field_errors", order);
        body["expire"] = json!("2026-02-01");
        w.rejects("STAFF", "PUT", &ri, body.clone(), "non_field_errors", order);
        let r = w.call(
            "STAFF",
            "PATCH",
            &ri,
            Some(json!({"active": "2026-01-01", "expire": "2026-06-30"})),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        w.rejects(
            "STAFF",
            "PATCH",
            &ri,
            json!({"active": "2026-07-01"}),
            "non_field_errors",
            order,
        );
        w.rejects(
            "STAFF",
            "PATCH",
            &ri,
            json!({"expire": "2025-12-31"}),
            "non_field_errors",
            order,
        );
        // Field errors suppress the date rule.
        let r = w.call(
            "STAFF",
            "POST",
            rq,
            Some(
                json!({"title": "", "description": "x", "submitter": mb, "team": team,
                        "active": "2026-05-01", "expire": "2026-01-01"}),
            ),
        );
        assert_eq!(r.status, 400);
        assert!(r.json().get("non_field_errors").is_none(), "{}", r.text());
        // A PUT keeps what it omits; nulls clear dates; a valid create returns the record.
        let r = w.call(
            "STAFF",
            "PUT",
            &ri,
            Some(
                json!({"title": "Request A", "description": "Compute time", "submitter": staff,
                        "team": team, "expire": null}),
            ),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(
            (v["active"].clone(), v["expire"].clone()),
            (json!("2026-01-01"), Value::Null)
        );
        let r = w.call(
            "STAFF",
            "POST",
            rq,
            Some(
                json!({"title": "  Padded  ", "description": "x", "submitter": "2", "team": team,
                        "assignees": [staff, mb], "active": "2026-01-01", "expire": "2026-12-31"}),
            ),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        let v = r.json();
        assert_eq!(v["title"], "Padded");
        assert_eq!(v["status"], "PD");
        assert_eq!(v["submitter"], 2);
        assert_eq!(v["assignees"], json!([staff, mb]));
        assert_eq!(v["_assignees"][1]["username"], "mb");
        assert_eq!(v["_team"]["name"], "Team One");
        assert!(v["submitted"].as_str().expect("submitted").ends_with('Z'));

        // Reviews.
        let rv = "/allocations/reviews/";
        let rvi = format!("/allocations/reviews/{}/", w.id("REV_A"));
        for field in ["status", "request"] {
            w.rejects(
                "STAFF",
                "POST",
                rv,
                json!({}),
                field,
                "This field is required.",
            );
        }
        w.rejects(
            "STAFF",
            "POST",
            rv,
            json!({"status": "PD", "request": req_a}),
            "status",
            "\"PD\" is not a valid choice.",
        );
        w.rejects(
            "STAFF",
            "POST",
            rv,
            json!({"status": "AP", "request": 99999}),
            "request",
            "Invalid pk \"99999\" - object does not exist.",
        );
        w.rejects(
            "STAFF",
            "POST",
            rv,
            json!({"status": "AP", "request": req_a, "reviewer": mb}),
            "reviewer",
            "Reviewer cannot be set to a different user than the submitter.",
        );
        w.rejects(
            "STAFF",
            "PATCH",
            &rvi,
            json!({"reviewer": mb}),
            "reviewer",
            "Reviewer cannot be set to a different user than the submitter.",
        );
        w.rejects(
            "STAFF",
            "POST",
            rv,
            json!({"status": "AP", "request": req_a, "reviewer": 99999}),
            "reviewer",
            "Invalid pk \"99999\" - object does not exist.",
        );
        w.rejects(
            "STAFF",
            "PUT",
            &rvi,
            json!({"status": "AP"}),
            "request",
            "This field is required.",
        );

        // Resource allocations.
        let al = "/allocations/allocations/";
        let open = w.id("C_OPEN");
        let ok = json!({"requested": 10, "cluster": open, "request": req_a});
        for field in ["requested", "cluster", "request"] {
            w.rejects(
                "STAFF",
                "POST",
                al,
                json!({}),
                field,
                "This field is required.",
            );
        }
        let su = |key: &str, value: Value| {
            let mut b = ok.clone();
            b[key] = value;
            b
        };
        let ge0 = "Ensure this value is greater than or equal to 0.";
        let le_max = "Ensure this value is less than or equal to 2147483647.";
        let integer = "A valid integer is required.";
        w.rejects(
            "STAFF",
            "POST",
            al,
            su("requested", json!(-1)),
            "requested",
            ge0,
        );
        w.rejects(
            "STAFF",
            "POST",
            al,
            su("requested", json!(2_147_483_648_i64)),
            "requested",
            le_max,
        );
        w.rejects(
            "STAFF",
            "POST",
            al,
            su("requested", json!("99999999999999999999")),
            "requested",
            le_max,
        );
        w.rejects(
            "STAFF",
            "POST",
            al,
            su("requested", json!("abc")),
            "requested",
            integer,
        );
        w.rejects(
            "STAFF",
            "POST",
            al,
            su("requested", json!(1.5)),
            "requested",
            integer,
        );
        w.rejects(
            "STAFF",
            "POST",
            al,
            su("requested", json!(true)),
            "requested",
            integer,
        );
        w.rejects(
            "STAFF",
            "POST",
            al,
            su("requested", json!(null)),
            "requested",
            "This field may not be null.",
        );
        w.rejects(
            "STAFF",
            "POST",
            al,
            su("awarded", json!(-5)),
            "awarded",
            ge0,
        );
        w.rejects(
            "STAFF",
            "POST",
            al,
            su("final", json!("1e3")),
            "final",
            integer,
        );
        w.rejects(
            "STAFF",
            "POST",
            al,
            su("cluster", json!(99999)),
            "cluster",
            "Invalid pk \"99999\" - object does not exist.",
        );
        w.rejects(
            "STAFF",
            "POST",
            al,
            su("request", json!(99999)),
            "request",
            "Invalid pk \"99999\" - object does not exist.",
        );
        let r = w.call(
            "STAFF",
            "POST",
            al,
            Some(su("requested", json!("2147483647.0"))),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(r.json()["requested"], 2_147_483_647_i64);
        let r = w.call("STAFF", "POST", al, Some(json!({"requested": 0, "awarded": null, "final": 7, "cluster": open, "request": req_a})));
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(
            (r.json()["awarded"].clone(), r.json()["final"].clone()),
            (Value::Null, json!(7))
        );

        // Bodies that are not objects.
        let r = w.call("STAFF", "POST", c, Some(json!([1])));
        assert_eq!(
            (r.status, r.json()),
            (
                400,
                json!({"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]})
            )
        );
    }
}

#[test]
fn allocations_core_cluster_access_status_and_reviewer_rules() {
    for backend in backends() {
        let mut w = seeded(backend);
        let (team, team_b, mb) = (w.id("TEAM"), w.id("TEAM_B"), w.id("MB"));
        let req_a = w.id("REQ_A");
        let al = "/allocations/allocations/";
        let on =
            |cluster: &str| json!({"requested": 1, "cluster": w.id(cluster), "request": req_a});
        // Team A may use: open, its whitelist, the blacklist of team B only.
        for role in ["AD", "OW"] {
            for (cluster, want) in [
                ("C_OPEN", 201),
                ("C_WL", 201),
                ("C_BL_B", 201),
                ("C_BL", 403),
                ("C_WL_B", 403),
            ] {
                let r = w.call(role, "POST", al, Some(on(cluster)));
                assert_eq!(r.status, want, "{role} on {cluster}: {}", r.text());
            }
        }
        for cluster in ["C_BL", "C_WL_B"] {
            assert_eq!(
                w.call("STAFF", "POST", al, Some(on(cluster))).status,
                201,
                "staff bypass"
            );
            assert_eq!(w.call("MB", "POST", al, Some(on(cluster))).status, 403);
        }
        // Changing the access list changes the answer at once.
        let r = w.call(
            "STAFF",
            "PATCH",
            &format!("/allocations/clusters/{}/", w.id("C_WL_B")),
            Some(json!({"access_teams": [team_b, team]})),
        );
        assert_eq!(r.status, 200);
        assert_eq!(w.call("AD", "POST", al, Some(on("C_WL_B"))).status, 201);
        // Missing, garbled or unknown keys of the permission check → 403 for non-staff.
        let open = w.id("C_OPEN");
        for body in [
            json!({"requested": 1, "cluster": open}),
            json!({"requested": 1, "request": req_a}),
            json!({"requested": 1, "cluster": open, "request": 99999}),
            json!({"requested": 1, "cluster": 99999, "request": req_a}),
            json!({"requested": 1, "cluster": "abc", "request": req_a}),
            json!({"requested": 1, "cluster": open, "request": w.id("REQ_B")}),
        ] {
            let r = w.call("AD", "POST", al, Some(body.clone()));
            assert_eq!(r.status, 403, "{body}: {}", r.text());
        }
        // ...while staff get validation errors.
        let r = w.call(
            "STAFF",
            "POST",
            al,
            Some(json!({"requested": 1, "cluster": open})),
        );
        assert_eq!(r.json(), json!({"request": ["This field is required."]}));
        // ⚑ Awarding is staff work (docs/security.md §10): a team owner may not set awarded
        // or final (upstream lets them, domain.md §7.5); self_granted_compute.rs has the rest.
        let r = w.call(
            "OW",
            "POST",
            al,
            Some(json!({"requested": 10, "awarded": 8, "final": 3, "cluster": open, "request": req_a})),
        );
        assert_eq!(r.status, 403, "{}", r.text());

        // Requests: the body's team decides; 403 (not 400) when missing or unknown.
        let rq = "/allocations/requests/";
        for team_value in [Value::Null, json!(99999), json!("abc"), json!(team_b)] {
            let mut body = request_body(&w, "Nope");
            if team_value.is_null() {
                body.as_object_mut().expect("object").remove("team");
            } else {
                body["team"] = team_value.clone();
            }
            let r = w.call("AD", "POST", rq, Some(body));
            assert_eq!(r.status, 403, "team {team_value}: {}", r.text());
        }
        // ⚑ An admin may not create a request already approved (docs/security.md §10;
        // upstream allows it, domain.md §7.3)...
        let mut body = request_body(&w, "Pre-approved");
        body["status"] = json!("AP");
        body["assignees"] = json!([w.id("STAFF")]);
        let r = w.call("AD", "POST", rq, Some(body.clone()));
        assert_eq!(r.status, 403, "{}", r.text());
        // ⚠ ...but still, as upstream, a pending one for another submitter.
        body["status"] = json!("PD");
        let r = w.call("AD", "POST", rq, Some(body));
        assert_eq!(r.status, 201, "{}", r.text());
        let created = r.json();
        assert_eq!(
            (created["status"].clone(), created["submitter"].clone()),
            (json!("PD"), json!(mb))
        );
        // Members cannot change status; staff may set any status at any time.
        let item = format!("/allocations/requests/{}/", created["id"]);
        for role in ["MB", "AD", "OW"] {
            assert_eq!(
                w.call(role, "PATCH", &item, Some(json!({"status": "DC"})))
                    .status,
                403
            );
        }
        for status in ["DC", "CR", "PD", "AP"] {
            let r = w.call("STAFF", "PATCH", &item, Some(json!({"status": status})));
            assert_eq!((r.status, r.json()["status"].clone()), (200, json!(status)));
        }

        // Reviews: reviewer defaults to the caller; no side effect on the request.
        let staff2_id = w.create(
            "STAFF",
            "/users/users/",
            json!({"username": "staff2", "password": PASSWORD, "is_staff": true}),
        );
        let token = w.token_for("staff2");
        w.tokens.insert("STAFF2", token);
        let before = w
            .call(
                "STAFF",
                "GET",
                &format!("/allocations/requests/{req_a}/"),
                None,
            )
            .json()["status"]
            .clone();
        let r = w.call(
            "STAFF",
            "POST",
            "/allocations/reviews/",
            Some(json!({"status": "AP", "request": req_a})),
        );
        assert_eq!(r.status, 201);
        let review = r.json();
        assert_eq!(review["reviewer"], w.id("STAFF"));
        assert_eq!(review["_reviewer"]["username"], "staff");
        assert_eq!(review["_request"]["id"], req_a);
        let after = w
            .call(
                "STAFF",
                "GET",
                &format!("/allocations/requests/{req_a}/"),
                None,
            )
            .json()["status"]
            .clone();
        assert_eq!(before, after, "a review does not change the request");
        // Another staff user may PUT without `reviewer`: the stored reviewer stays.
        let rvi = format!("/allocations/reviews/{}/", review["id"]);
        let r = w.call(
            "STAFF2",
            "PUT",
            &rvi,
            Some(json!({"status": "DC", "request": req_a})),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            (r.json()["status"].clone(), r.json()["reviewer"].clone()),
            (json!("DC"), json!(w.id("STAFF")))
        );
        // ...and may only name themself.
        let r = w.call(
            "STAFF2",
            "PATCH",
            &rvi,
            Some(json!({"reviewer": staff2_id})),
        );
        assert_eq!(
            (r.status, r.json()["reviewer"].clone()),
            (200, json!(staff2_id))
        );
        let r = w.call(
            "STAFF2",
            "POST",
            "/allocations/reviews/",
            Some(json!({"status": "CR", "request": req_a, "reviewer": staff2_id})),
        );
        assert_eq!(r.status, 201);
    }
}

#[test]
fn allocations_core_audit_texts_cascades_and_protected_clusters() {
    for backend in backends() {
        let w = seeded(backend);
        let (team, team_b) = (w.id("TEAM"), w.id("TEAM_B"));
        let open = w.id("C_OPEN");
        let ct = |model: &str| enc(&format!("allocations | {model}"));
        // object_repr texts (operations.md §3.4).
        let req_a = w.id("REQ_A");
        let alloc_a = w.id("ALLOC_A");
        let rev_a = w.id("REV_A");
        for (model, id, text) in [
            ("Cluster", open, format!("Cluster #{open} - open")),
            (
                "AllocationRequest",
                req_a,
                format!("Allocation Request #{req_a} - 'Request A' for Team #{team} - Team One"),
            ),
            (
                "AllocationReview",
                rev_a,
                format!("Allocation Review #{rev_a} - staff review of request #{req_a}"),
            ),
            (
                "ResourceAllocation",
                alloc_a,
                format!(
                    "Resource Allocation #{alloc_a} - Cluster #{open} - open allocation for Team #{team} - Team One"
                ),
            ),
        ] {
            let q = format!(
                "content_type={}&object_id={id}&action=0&object_repr={}",
                ct(model),
                enc(&text)
            );
            assert_eq!(w.audit_count(&q), 1, "{model} create entry {text:?}");
        }
        let long = "L".repeat(120);
        let id = w.create("STAFF", "/allocations/requests/", request_body(&w, &long));
        let text = format!(
            "Allocation Request #{id} - '{}…' for Team #{team} - Team One",
            "L".repeat(99)
        );
        assert_eq!(
            w.audit_count(&format!("object_repr={}", enc(&text))),
            1,
            "truncated title"
        );

        // `_history`: newest first, with changes as strings; an unchanged PUT writes nothing.
        let item = format!("/allocations/allocations/{alloc_a}/");
        let r = w.call("STAFF", "PATCH", &item, Some(json!({"awarded": 90})));
        assert_eq!(r.status, 200);
        let r = w.call("STAFF", "PATCH", &item, Some(json!({"awarded": 90})));
        let history = r.json()["_history"].clone();
        assert_eq!(history.as_array().expect("history").len(), 2);
        assert_eq!(history[0]["action"], "update");
        assert_eq!(history[0]["changes"], json!({"awarded": ["None", "90"]}));
        assert_eq!(history[0]["_actor"]["username"], "staff");
        assert_eq!(history[1]["action"], "create");
        let r = w.call(
            "STAFF",
            "PATCH",
            &format!("/allocations/clusters/{open}/"),
            Some(json!({"enabled": false})),
        );
        assert_eq!(
            r.json()["_history"][0]["changes"],
            json!({"enabled": ["True", "False"]})
        );

        // A cluster in use cannot be deleted (409 with a detail), nor its allocation's cluster.
        let r = w.call(
            "STAFF",
            "DELETE",
            &format!("/allocations/clusters/{open}/"),
            None,
        );
        assert_eq!(r.status, 409, "{}", r.text());
        assert_eq!(
            r.json(),
            json!({"detail": "Cannot delete some instances of model 'Cluster' because they are referenced through protected foreign keys: 'ResourceAllocation.cluster'."})
        );
        assert_eq!(
            w.call(
                "STAFF",
                "GET",
                &format!("/allocations/clusters/{open}/"),
                None
            )
            .status,
            200
        );
        let cluster_deletes = format!("content_type={}&action=2", ct("Cluster"));
        assert_eq!(w.audit_count(&cluster_deletes), 0);

        // Deleting a request deletes (and audits) its allocations, reviews, comments and
        // attachments.
        let staff = w.id("STAFF");
        w.site.sql(&format!(
            "INSERT INTO allocations_comment (content, created, private, user_id, request_id) \
             VALUES ('bye', '2026-01-01T00:00:00+00:00', FALSE, {staff}, {req_a}); \
             INSERT INTO allocations_attachment (file, name, uploaded, request_id) \
             VALUES ('allocations/x.txt', 'x.txt', '2026-01-01T00:00:00+00:00', {req_a});"
        ));
        let stored = w.site.path("state/media/allocations/x.txt");
        std::fs::create_dir_all(stored.parent().expect("dir")).expect("upload dir");
        std::fs::write(&stored, b"x").expect("stored file");
        let r = w.call(
            "STAFF",
            "DELETE",
            &format!("/allocations/requests/{req_a}/"),
            None,
        );
        assert_eq!((r.status, r.body.len()), (204, 0));
        assert!(
            !stored.exists(),
            "the attachment's file goes with the request"
        );
        for (model, id) in [
            ("ResourceAllocation", alloc_a),
            ("AllocationReview", rev_a),
            ("AllocationRequest", req_a),
        ] {
            assert_eq!(
                w.audit_count(&format!(
                    "content_type={}&action=2&object_id={id}",
                    ct(model)
                )),
                1,
                "delete entry of {model}"
            );
            let path = match model {
                "ResourceAllocation" => format!("/allocations/allocations/{id}/"),
                "AllocationReview" => format!("/allocations/reviews/{id}/"),
                _ => format!("/allocations/requests/{id}/"),
            };
            assert_eq!(w.call("STAFF", "GET", &path, None).status, 404);
        }
        assert_eq!(
            w.audit_count(&format!("content_type={}&action=2", ct("Comment"))),
            1
        );
        assert_eq!(
            w.audit_count(&format!("content_type={}&action=2", ct("Attachment"))),
            1
        );
        let q = format!(
            "content_type={}&action=2&object_repr={}",
            ct("Attachment"),
            enc(&format!("Attachment #1 - 'x.txt' on request #{req_a}"))
        );
        assert_eq!(w.audit_count(&q), 1);
        // The cluster is free once nothing references it... except team B's allocation.
        let r = w.call(
            "STAFF",
            "DELETE",
            &format!("/allocations/clusters/{open}/"),
            None,
        );
        assert_eq!(r.status, 409);

        // Deleting team B audits its request, allocation and review.
        let (req_b, alloc_b, rev_b) = (w.id("REQ_B"), w.id("ALLOC_B"), w.id("REV_B"));
        let r = w.call("STAFF", "DELETE", &format!("/users/teams/{team_b}/"), None);
        assert_eq!(r.status, 204, "{}", r.text());
        for (model, id) in [
            ("ResourceAllocation", alloc_b),
            ("AllocationReview", rev_b),
            ("AllocationRequest", req_b),
        ] {
            assert_eq!(
                w.audit_count(&format!(
                    "content_type={}&action=2&object_id={id}",
                    ct(model)
                )),
                1,
                "team cascade entry of {model}"
            );
        }
        assert_eq!(
            w.call("STAFF", "GET", "/allocations/requests/", None)
                .json()["count"],
            1
        );
        // Now unreferenced: 204 and a delete entry; its access-list rows go with it.
        let r = w.call(
            "STAFF",
            "DELETE",
            &format!("/allocations/clusters/{open}/"),
            None,
        );
        assert_eq!(r.status, 204, "{}", r.text());
        assert_eq!(w.audit_count(&cluster_deletes), 1);
        let wl = w.id("C_WL");
        assert_eq!(
            w.call(
                "STAFF",
                "DELETE",
                &format!("/allocations/clusters/{wl}/"),
                None
            )
            .status,
            204
        );
    }
}
