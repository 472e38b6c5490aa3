//! ⚑ Self-granted compute (docs/security.md §10): a team admin or owner files allocation
//! requests as pending only, links only the grants and publications of the request's own
//! team, and never sets `awarded` or `final`; staff keep every power. Every way in is tried
//! (JSON, urlencoded and multipart bodies, POST/PUT/PATCH, `/batch/` steps) as member,
//! admin, owner and staff, and every refusal is followed by a read-back that nothing was
//! stored — on both backends.

use crate::accounts::World;
use crate::common::http::Response;
use crate::common::*;
use serde_json::{Value, json};

const FORBIDDEN: &str = "You do not have permission to perform this action.";
const BOUNDARY: &str = "----keystone-compute-test-boundary-Zm9v";
const REQUESTS: &str = "/allocations/requests/";
const ALLOCATIONS: &str = "/allocations/allocations/";

/// The accounts world plus team B (X1 its owner, AD an owner there too), an open cluster,
/// a grant and a publication in each team, and a staff-made request of team A.
fn world(backend: Backend) -> World {
    let mut w = World::new(backend, &[]);
    let post = |w: &World, path: &str, body: Value| -> i64 {
        let r = w.call("STAFF", "POST", path, Some(body.clone()));
        assert_eq!(r.status, 201, "POST {path} {body}: {}", r.text());
        r.json()["id"].as_i64().expect("id")
    };
    let team_a = w.id("TEAM");
    let team_b = post(&w, "/users/teams/", json!({"name": "Team Two"}));
    w.ids.insert("TEAM_B", team_b);
    for who in ["X1", "AD"] {
        post(
            &w,
            "/users/memberships/",
            json!({"user": w.id(who), "team": team_b, "role": "OW"}),
        );
    }
    let cluster = post(&w, "/allocations/clusters/", json!({"name": "open"}));
    w.ids.insert("CLUSTER", cluster);
    for (key, team) in [("GRANT_A", team_a), ("GRANT_B", team_b)] {
        let id = post(
            &w,
            "/research/grants/",
            json!({"title": key, "agency": "NSF", "amount": "10.00",
                   "start_date": "2024-01-01", "team": team}),
        );
        w.ids.insert(key, id);
    }
    for (key, team) in [("PUB_A", team_a), ("PUB_B", team_b)] {
        let id = post(
            &w,
            "/research/publications/",
            json!({"title": key, "team": team}),
        );
        w.ids.insert(key, id);
    }
    let req = post(&w, REQUESTS, request_body(&w, "Staff request"));
    w.ids.insert("REQ_A", req);
    let alloc = post(
        &w,
        ALLOCATIONS,
        json!({"requested": 100, "cluster": cluster, "request": req}),
    );
    w.ids.insert("ALLOC_A", alloc);
    w
}

fn request_body(w: &World, title: &str) -> Value {
    json!({"title": title, "description": "Compute time", "submitter": w.id("MB"),
           "team": w.id("TEAM")})
}

fn with(mut body: Value, key: &str, value: Value) -> Value {
    body[key] = value;
    body
}

/// Everything these tests could change, read back by staff.
fn stored(w: &World) -> Value {
    let mut out = serde_json::Map::new();
    for path in [
        "/allocations/requests/?_order=id",
        "/allocations/allocations/?_order=id",
        "/logs/audit/?_order=id",
    ] {
        let r = w.call("STAFF", "GET", path, None);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        out.insert(path.to_string(), r.json());
    }
    Value::Object(out)
}

/// Asserts upstream's permission 403 and that nothing changed.
fn refused(w: &World, r: &Response, before: &Value, what: &str) {
    assert_eq!(
        (r.status, r.json()),
        (403, json!({"detail": FORBIDDEN})),
        "{what}"
    );
    assert_eq!(
        &stored(w),
        before,
        "{what}: a refused write stored something"
    );
}

fn auth(w: &World, role: &str) -> String {
    format!("Token {}", w.tokens[role])
}

fn urlencoded(w: &World, role: &str, path: &str, fields: &[(&str, String)]) -> Response {
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let a = auth(w, role);
    w.web.request(
        "POST",
        path,
        &[
            ("Authorization", a.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        body.as_bytes(),
    )
}

fn multipart(w: &World, role: &str, path: &str, fields: &[(&str, String)]) -> Response {
    let mut body = String::new();
    for (k, v) in fields {
        body.push_str(&format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        ));
    }
    body.push_str(&format!("--{BOUNDARY}--\r\n"));
    let a = auth(w, role);
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    w.web.request(
        "POST",
        path,
        &[("Authorization", a.as_str()), ("Content-Type", ct.as_str())],
        body.as_bytes(),
    )
}

/// A request's fields as form pairs.
fn request_form(w: &World, title: &str) -> Vec<(&'static str, String)> {
    vec![
        ("title", title.to_string()),
        ("description", "Compute time".to_string()),
        ("submitter", w.id("MB").to_string()),
        ("team", w.id("TEAM").to_string()),
    ]
}

fn batch(w: &World, role: &str, actions: Value) -> Response {
    w.call(
        role,
        "POST",
        "/batch/",
        Some(json!({"job": {"actions": actions}})),
    )
}

/// A batch that failed at `step` with upstream's 403.
fn batch_refused(w: &World, r: &Response, step: i64, before: &Value, what: &str) {
    assert_eq!(r.status, 422, "{what}: {}", r.text());
    let body = r.json();
    assert_eq!(
        (
            body["step"].clone(),
            body["status"].clone(),
            body["body"].clone()
        ),
        (json!(step), json!(403), json!({"detail": FORBIDDEN})),
        "{what}"
    );
    assert_eq!(
        &stored(w),
        before,
        "{what}: a failed batch stored something"
    );
}

#[test]
fn self_granted_compute_requests_are_filed_pending_with_own_team_links() {
    for backend in backends() {
        let w = world(backend);
        let name = backend.name();
        let (grant_a, grant_b) = (w.id("GRANT_A"), w.id("GRANT_B"));
        let (pub_a, pub_b) = (w.id("PUB_A"), w.id("PUB_B"));
        let before = stored(&w);

        // JSON: any status but PD, valid or not, and any link to another team's research.
        // AD is an owner of team B too: holding the foreign grant's team does not help.
        let base = request_body(&w, "Self-approved");
        let mut bodies = Vec::new();
        for status in [
            json!("AP"),
            json!("DC"),
            json!("CR"),
            json!("XX"),
            json!(""),
            json!(null),
            json!(1),
            json!(["PD", "AP"]),
        ] {
            bodies.push(with(base.clone(), "status", status));
        }
        for (key, ids) in [
            ("grants", json!([grant_b])),
            ("grants", json!([grant_a, grant_b])),
            ("grants", json!([grant_b.to_string()])),
            ("publications", json!([pub_b])),
            ("publications", json!([pub_a, pub_b, 99999])),
        ] {
            bodies.push(with(with(base.clone(), "status", json!("PD")), key, ids));
        }
        // View-level rule before validation: refused even with other fields invalid.
        let mut invalid = with(base.clone(), "status", json!("AP"));
        invalid.as_object_mut().expect("object").remove("title");
        bodies.push(invalid);
        for role in ["AD", "OW"] {
            for body in &bodies {
                let r = w.call(role, "POST", REQUESTS, Some(body.clone()));
                refused(&w, &r, &before, &format!("{name}: {role} POST {body}"));
            }
        }

        // Form encodings (repeated keys are lists; one key is a one-item list).
        let form = request_form(&w, "Form request");
        let extend = |extra: &[(&'static str, String)]| {
            let mut f = form.clone();
            f.extend_from_slice(extra);
            f
        };
        let forms = [
            extend(&[("status", "AP".into())]),
            extend(&[("status", "".into())]),
            extend(&[("status", "PD".into()), ("status", "AP".into())]),
            extend(&[
                ("grants", grant_a.to_string()),
                ("grants", grant_b.to_string()),
            ]),
            extend(&[("grants", grant_b.to_string())]),
            extend(&[("publications", pub_b.to_string())]),
        ];
        for fields in &forms {
            let r = urlencoded(&w, "AD", REQUESTS, fields);
            refused(&w, &r, &before, &format!("{name}: urlencoded {fields:?}"));
            let r = multipart(&w, "OW", REQUESTS, fields);
            refused(&w, &r, &before, &format!("{name}: multipart {fields:?}"));
        }

        // `/batch/`: the same handlers, and the step before the refusal is rolled back.
        let r = batch(
            &w,
            "AD",
            json!([
                {"method": "POST", "path": REQUESTS, "payload": with(base.clone(), "status", json!("PD"))},
                {"method": "POST", "path": REQUESTS, "payload": with(base.clone(), "status", json!("AP"))},
            ]),
        );
        batch_refused(&w, &r, 2, &before, &format!("{name}: batch status"));
        let r = batch(
            &w,
            "OW",
            json!([
                {"method": "POST", "path": REQUESTS, "payload": base.clone()},
                {"method": "POST", "path": REQUESTS, "payload": with(base.clone(), "grants", json!([grant_b]))},
            ]),
        );
        batch_refused(&w, &r, 2, &before, &format!("{name}: batch grants"));

        // Updates stay staff-only (404 first for a missing record, then 403).
        let item = format!("/allocations/requests/{}/", w.id("REQ_A"));
        for role in ["MB", "AD", "OW"] {
            for (method, body) in [
                ("PATCH", json!({"status": "AP"})),
                ("PATCH", json!({"grants": [grant_a]})),
                ("PUT", with(base.clone(), "status", json!("AP"))),
            ] {
                let r = w.call(role, method, &item, Some(body.clone()));
                refused(&w, &r, &before, &format!("{name}: {role} {method} {body}"));
                let r = w.call(role, method, "/allocations/requests/99999/", Some(body));
                assert_eq!(r.status, 404, "{name}: {role} {method} missing");
            }
        }
        // A plain member still may not create at all, even a pending request.
        let r = w.call("MB", "POST", REQUESTS, Some(base.clone()));
        refused(&w, &r, &before, &format!("{name}: MB POST"));

        // What stays allowed: pending (sent or defaulted), own team's research; unknown
        // ids remain a validation error.
        let r = w.call(
            "AD",
            "POST",
            REQUESTS,
            Some(with(
                with(
                    with(base.clone(), "status", json!("PD")),
                    "grants",
                    json!([grant_a]),
                ),
                "publications",
                json!([pub_a]),
            )),
        );
        assert_eq!(r.status, 201, "{name}: {}", r.text());
        let id = r.json()["id"].as_i64().expect("id");
        let back = w
            .call(
                "STAFF",
                "GET",
                &format!("/allocations/requests/{id}/"),
                None,
            )
            .json();
        assert_eq!(
            (
                back["status"].clone(),
                back["grants"].clone(),
                back["publications"].clone()
            ),
            (json!("PD"), json!([grant_a]), json!([pub_a])),
            "{name}"
        );
        let r = w.call("OW", "POST", REQUESTS, Some(base.clone()));
        assert_eq!(
            (r.status, r.json()["status"].clone()),
            (201, json!("PD")),
            "{name}"
        );
        let r = urlencoded(
            &w,
            "AD",
            REQUESTS,
            &extend(&[("status", "PD".into()), ("grants", grant_a.to_string())]),
        );
        assert_eq!(
            (r.status, r.json()["grants"].clone()),
            (201, json!([grant_a])),
            "{name}: {}",
            r.text()
        );
        let r = w.call(
            "AD",
            "POST",
            REQUESTS,
            Some(with(base.clone(), "grants", json!([99999]))),
        );
        assert_eq!(
            (r.status, r.json()),
            (
                400,
                json!({"grants": ["Invalid pk \"99999\" - object does not exist."]})
            ),
            "{name}"
        );
        // Team B's research goes on team B's requests.
        let r = w.call(
            "AD",
            "POST",
            REQUESTS,
            Some(with(
                with(base.clone(), "team", json!(w.id("TEAM_B"))),
                "grants",
                json!([grant_b]),
            )),
        );
        assert_eq!(r.status, 201, "{name}: {}", r.text());

        // Staff keep every power: any status, any team's research, on create and update.
        let r = w.call(
            "STAFF",
            "POST",
            REQUESTS,
            Some(with(
                with(
                    with(base.clone(), "status", json!("AP")),
                    "grants",
                    json!([grant_b]),
                ),
                "publications",
                json!([pub_b]),
            )),
        );
        assert_eq!(
            (
                r.status,
                r.json()["status"].clone(),
                r.json()["grants"].clone()
            ),
            (201, json!("AP"), json!([grant_b])),
            "{name}: {}",
            r.text()
        );
        let r = w.call(
            "STAFF",
            "PATCH",
            &item,
            Some(json!({"status": "DC", "publications": [pub_b]})),
        );
        assert_eq!(
            (
                r.status,
                r.json()["status"].clone(),
                r.json()["publications"].clone()
            ),
            (200, json!("DC"), json!([pub_b])),
            "{name}"
        );
    }
}

#[test]
fn self_granted_compute_allocations_are_awarded_by_staff_only() {
    for backend in backends() {
        let w = world(backend);
        let name = backend.name();
        let (cluster, req_a) = (w.id("CLUSTER"), w.id("REQ_A"));
        let base = json!({"requested": 10, "cluster": cluster, "request": req_a});
        let before = stored(&w);

        // JSON: any awarded/final but null, valid or not; refused before validation.
        let mut bodies = Vec::new();
        for (key, value) in [
            ("awarded", json!(8)),
            ("awarded", json!(0)),
            ("awarded", json!("5")),
            ("awarded", json!("abc")),
            ("awarded", json!(-1)),
            ("final", json!(3)),
            ("final", json!(0)),
        ] {
            bodies.push(with(base.clone(), key, value));
        }
        bodies.push(with(
            with(base.clone(), "awarded", json!(5)),
            "final",
            json!(null),
        ));
        bodies.push(json!({"awarded": 5, "cluster": cluster, "request": req_a}));
        for role in ["AD", "OW"] {
            for body in &bodies {
                let r = w.call(role, "POST", ALLOCATIONS, Some(body.clone()));
                refused(&w, &r, &before, &format!("{name}: {role} POST {body}"));
            }
        }
        // Staff get the validation errors instead.
        let r = w.call(
            "STAFF",
            "POST",
            ALLOCATIONS,
            Some(with(base.clone(), "awarded", json!("abc"))),
        );
        assert_eq!(
            (r.status, r.json()),
            (400, json!({"awarded": ["A valid integer is required."]})),
            "{name}"
        );

        // Form encodings.
        let form = vec![
            ("requested", "10".to_string()),
            ("cluster", cluster.to_string()),
            ("request", req_a.to_string()),
        ];
        let extend = |extra: &[(&'static str, String)]| {
            let mut f = form.clone();
            f.extend_from_slice(extra);
            f
        };
        for fields in [
            extend(&[("awarded", "5".into())]),
            extend(&[("final", "0".into())]),
            extend(&[("awarded", "".into()), ("final", "1".into())]),
        ] {
            let r = urlencoded(&w, "AD", ALLOCATIONS, &fields);
            refused(&w, &r, &before, &format!("{name}: urlencoded {fields:?}"));
            let r = multipart(&w, "OW", ALLOCATIONS, &fields);
            refused(&w, &r, &before, &format!("{name}: multipart {fields:?}"));
        }

        // `/batch/`: a pending request in step 1, an award on it in step 2: all rolled back.
        let r = batch(
            &w,
            "AD",
            json!([
                {"ref": "r", "method": "POST", "path": REQUESTS, "payload": request_body(&w, "Batch")},
                {"method": "POST", "path": ALLOCATIONS,
                 "payload": {"requested": 1, "awarded": 1000000, "cluster": cluster, "request": "@ref{r.id}"}},
            ]),
        );
        batch_refused(&w, &r, 2, &before, &format!("{name}: batch award"));

        // Updates stay staff-only: 404 for a missing record, then 403; nothing stored.
        let item = format!("/allocations/allocations/{}/", w.id("ALLOC_A"));
        for role in ["MB", "AD", "OW"] {
            for (method, body) in [
                ("PATCH", json!({"awarded": 100})),
                ("PATCH", json!({"final": 100})),
                ("PUT", with(base.clone(), "awarded", json!(100))),
            ] {
                let r = w.call(role, method, &item, Some(body.clone()));
                refused(&w, &r, &before, &format!("{name}: {role} {method} {body}"));
                let r = w.call(role, method, "/allocations/allocations/99999/", Some(body));
                assert_eq!(r.status, 404, "{name}: {role} {method} missing");
            }
        }
        let r = w.call("MB", "POST", ALLOCATIONS, Some(base.clone()));
        refused(&w, &r, &before, &format!("{name}: MB POST"));

        // What stays allowed: asking (null or empty award), and staff awarding.
        for role in ["AD", "OW"] {
            let r = w.call(
                role,
                "POST",
                ALLOCATIONS,
                Some(with(
                    with(base.clone(), "awarded", json!(null)),
                    "final",
                    json!(null),
                )),
            );
            assert_eq!(
                (
                    r.status,
                    r.json()["awarded"].clone(),
                    r.json()["final"].clone()
                ),
                (201, json!(null), json!(null)),
                "{name}: {role}: {}",
                r.text()
            );
        }
        let r = urlencoded(
            &w,
            "AD",
            ALLOCATIONS,
            &extend(&[("awarded", "".into()), ("final", "".into())]),
        );
        assert_eq!(
            (r.status, r.json()["awarded"].clone()),
            (201, json!(null)),
            "{name}: {}",
            r.text()
        );
        let r = batch(
            &w,
            "OW",
            json!([
                {"ref": "r", "method": "POST", "path": REQUESTS, "payload": request_body(&w, "Batch")},
                {"method": "POST", "path": ALLOCATIONS,
                 "payload": {"requested": 1, "cluster": cluster, "request": "@ref{r.id}"}},
            ]),
        );
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let r = w.call(
            "STAFF",
            "POST",
            ALLOCATIONS,
            Some(with(
                with(base.clone(), "awarded", json!(8)),
                "final",
                json!(3),
            )),
        );
        assert_eq!(
            (
                r.status,
                r.json()["awarded"].clone(),
                r.json()["final"].clone()
            ),
            (201, json!(8), json!(3)),
            "{name}"
        );
        let r = w.call(
            "STAFF",
            "PATCH",
            &item,
            Some(json!({"awarded": 90, "final": 1})),
        );
        assert_eq!(
            (
                r.status,
                r.json()["awarded"].clone(),
                r.json()["final"].clone()
            ),
            (200, json!(90), json!(1)),
            "{name}"
        );
    }
}
