//! Request logs, audit trail, feed and `/config/`: what creates the records, read-your-writes
//! by cid, client addresses, and the staff-only access matrix.

use crate::accounts::World;
use crate::common::*;
use serde_json::{Value, json};

const CID: &str = "123e4567-e89b-12d3-a456-426614174000";

#[test]
fn every_request_is_logged_before_its_response_leaves() {
    for backend in backends() {
        let w = World::new(backend, &[]);
        // Any outcome is logged: success, 404, 405, 401, the health probe.
        let cids: Vec<String> = (0..5).map(|_| uuid::Uuid::new_v4().to_string()).collect();
        let probes: [(&str, &str, &str); 5] = [
            ("GET", "/version/?x=1", "200"),
            ("GET", "/no-such-page/", "404"),
            ("POST", "/version/", "405"),
            ("GET", "/users/users/", "401"),
            ("GET", "/health/json/", "200"),
        ];
        for ((method, path, _), cid) in probes.iter().zip(&cids) {
            w.web.request(method, path, &[("X-KEYSTONE-CID", cid)], b"");
        }
        for ((method, path, code), cid) in probes.iter().zip(&cids) {
            let page = w
                .call("STAFF", "GET", &format!("/logs/requests/?cid={cid}"), None)
                .json();
            assert_eq!(page["count"], 1, "{method} {path}: {page}");
            let rec = &page["results"][0];
            assert_eq!(rec["method"], *method);
            assert_eq!(rec["endpoint"], *path, "the query string is kept");
            assert_eq!(rec["response_code"].to_string(), *code);
            assert_eq!(rec["cid"], cid.as_str(), "kept verbatim");
            assert_eq!(rec["remote_address"], "127.0.0.1");
            assert_eq!(rec["user"], Value::Null);
        }
        // An authenticated request records its user; the feed shows it too.
        w.web.request(
            "GET",
            "/authentication/whoami/",
            &[
                ("Authorization", &format!("Token {}", w.tokens["MB"])),
                ("X-KEYSTONE-CID", CID),
            ],
            b"",
        );
        let page = w
            .call("STAFF", "GET", &format!("/logs/requests/?cid={CID}"), None)
            .json();
        assert_eq!(page["results"][0]["user"], w.id("MB"));
        assert_eq!(page["results"][0]["_user"]["username"], "mb");
        let feed = w
            .call("STAFF", "GET", &format!("/logs/feed/?cid={CID}"), None)
            .json();
        assert_eq!(feed["count"], 1);
        assert_eq!(feed["results"][0]["record_type"], "request");
        assert_eq!(feed["results"][0]["status"], "200");
        assert!(
            feed["results"][0]["id"]
                .as_str()
                .unwrap_or("")
                .starts_with('r')
        );
    }
}

#[test]
fn concurrent_requests_are_all_logged_by_cid() {
    // Several batches are stored at once; on PostgreSQL each is one statement over arrays.
    for backend in backends() {
        let w = World::new(
            backend,
            &[
                ("API_THROTTLE_ANON", "100000/min"),
                ("API_THROTTLE_USER", "100000/min"),
            ],
        );
        let base = w.web.base();
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let base = base.clone();
                std::thread::spawn(move || {
                    let mut cids = Vec::new();
                    for _ in 0..15 {
                        let cid = uuid::Uuid::new_v4().to_string();
                        let r = crate::common::http::request(
                            &base,
                            "GET",
                            "/version/",
                            &[("X-KEYSTONE-CID", &cid)],
                            b"",
                        );
                        assert_eq!(r.status, 200);
                        cids.push(cid);
                    }
                    cids
                })
            })
            .collect();
        let cids: Vec<String> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("client"))
            .collect();
        assert_eq!(cids.len(), 240);
        for cid in &cids {
            let page = w
                .call("STAFF", "GET", &format!("/logs/requests/?cid={cid}"), None)
                .json();
            assert_eq!(
                page["count"], 1,
                "{cid} logged exactly once before its response"
            );
        }
    }
}

#[test]
fn client_address_honours_forwarded_for_only_when_trusted() {
    let w = World::new(
        Backend::Sqlite,
        &[("KEYSTONE_SERVER__TRUST_FORWARDED_FOR", "true")],
    );
    w.web.request(
        "GET",
        "/version/",
        &[
            ("X-Forwarded-For", "203.0.113.7, 10.0.0.1"),
            ("X-KEYSTONE-CID", CID),
        ],
        b"",
    );
    let rec = &w
        .call("STAFF", "GET", &format!("/logs/requests/?cid={CID}"), None)
        .json()["results"][0];
    assert_eq!(
        rec["remote_address"], "10.0.0.1",
        "the entry the one trusted proxy appended, not the client's own"
    );
    // Not trusted by default.
    let w = World::new(Backend::Sqlite, &[]);
    w.web.request(
        "GET",
        "/version/",
        &[("X-Forwarded-For", "203.0.113.7"), ("X-KEYSTONE-CID", CID)],
        b"",
    );
    let rec = &w
        .call("STAFF", "GET", &format!("/logs/requests/?cid={CID}"), None)
        .json()["results"][0];
    assert_eq!(
        rec["remote_address"], "127.0.0.1",
        "an untrusted header is ignored"
    );
}

#[test]
fn invalid_cids_are_replaced_and_shared_with_audit_entries() {
    let w = World::new(Backend::Sqlite, &[]);
    let long = format!("{{{CID}}}-extra");
    let r = w.web.request(
        "POST",
        "/users/teams/",
        &[
            ("Authorization", &format!("Token {}", w.tokens["MB"])),
            ("Content-Type", "application/json"),
            ("X-KEYSTONE-CID", &long),
        ],
        br#"{"name":"Audited Team"}"#,
    );
    assert_eq!(r.status, 201);
    assert!(
        r.header("x-keystone-cid").is_none(),
        "the cid is not echoed"
    );
    let team = r.json()["id"].as_i64().expect("id");
    let audit = w
        .call(
            "STAFF",
            "GET",
            &format!("/logs/audit/?object_id={team}&content_type=users%20%7C%20Team"),
            None,
        )
        .json();
    assert_eq!(audit["count"], 1);
    let entry = &audit["results"][0];
    assert_eq!(entry["record_name"], "users | Team");
    assert_eq!(entry["action"], "create");
    assert_eq!(
        entry["actor"],
        w.id("MB"),
        "token-authenticated changes name their actor"
    );
    assert_eq!(entry["changes"]["name"], json!(["None", "Audited Team"]));
    let cid = entry["cid"].as_str().expect("cid").to_string();
    assert_ne!(cid, long);
    assert!(uuid::Uuid::parse_str(&cid).is_ok());
    // The request log row of that request carries the same generated cid.
    let reqs = w
        .call("STAFF", "GET", &format!("/logs/requests/?cid={cid}"), None)
        .json();
    assert_eq!(reqs["count"], 1);
    assert_eq!(reqs["results"][0]["endpoint"], "/users/teams/");
    // An update writes the diff; an update that changes nothing writes no entry.
    let path = format!("/users/teams/{team}/");
    assert_eq!(
        w.call("STAFF", "PATCH", &path, Some(json!({"is_active": false})))
            .status,
        200
    );
    assert_eq!(
        w.call("STAFF", "PATCH", &path, Some(json!({"is_active": false})))
            .status,
        200
    );
    let audit = w
        .call(
            "STAFF",
            "GET",
            &format!("/logs/audit/?object_id={team}&content_type=users%20%7C%20Team"),
            None,
        )
        .json();
    assert_eq!(audit["count"], 2);
    assert_eq!(audit["results"][0]["action"], "update", "newest first");
    assert_eq!(
        audit["results"][0]["changes"],
        json!({"is_active": ["True", "False"]})
    );
    // Searching the audit log works (upstream answers 500 here).
    let found = w.call("STAFF", "GET", "/logs/audit/?_search=audited", None);
    assert_eq!(found.status, 200);
    assert_eq!(found.json()["count"], 2);
}

#[test]
fn log_views_are_staff_only() {
    let w = World::new(Backend::Sqlite, &[]);
    let entry = w
        .call("STAFF", "GET", "/logs/requests/?_limit=1", None)
        .json()["results"][0]["id"]
        .clone();
    let paths = [
        "/logs/requests/".to_string(),
        format!("/logs/requests/{entry}/"),
        "/logs/audit/".to_string(),
        "/logs/tasks/".to_string(),
        "/logs/feed/".to_string(),
        "/logs/requests/999999/".to_string(),
    ];
    for path in &paths {
        for method in ["GET", "HEAD", "OPTIONS"] {
            let want_staff = if path.contains("999999") && method != "OPTIONS" {
                404
            } else {
                200
            };
            for (role, want) in [
                ("ANON", 401),
                ("AUTH", 403),
                ("MB", 403),
                ("STAFF", want_staff),
            ] {
                assert_eq!(
                    w.call(role, method, path, None).status,
                    want,
                    "{method} {path} as {role}"
                );
            }
        }
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            for (role, want) in [("ANON", 401), ("AUTH", 405), ("STAFF", 405)] {
                let r = w.call(role, method, path, None);
                assert_eq!(r.status, want, "{method} {path} as {role}");
                if want == 405 {
                    assert_eq!(
                        r.json()["detail"],
                        format!("Method \"{method}\" not allowed.")
                    );
                }
            }
        }
    }
    let index = w.call("MB", "GET", "/logs/", None);
    assert_eq!(index.status, 200);
    assert_eq!(index.json()["requests"], "http://localhost/logs/requests/");
    assert_eq!(w.call("ANON", "GET", "/logs/", None).status, 401);
    // Filters and errors follow the list conventions.
    assert_eq!(
        w.call(
            "STAFF",
            "GET",
            "/logs/requests/?response_code__gte=400&method=GET",
            None
        )
        .status,
        200
    );
    assert_eq!(
        w.call("STAFF", "GET", "/logs/requests/?response_code=abc", None)
            .json(),
        json!({"response_code": ["Enter a number."]})
    );
}

#[test]
fn client_configuration() {
    let w = World::new(
        Backend::Sqlite,
        &[
            ("CONFIG_UPLOAD_SIZE", "1048576"),
            ("SECURE_SESSION_AGE", "3600"),
        ],
    );
    assert_eq!(w.call("ANON", "GET", "/config/", None).status, 401);
    assert_eq!(w.call("ANON", "POST", "/config/", None).status, 401);
    assert_eq!(w.call("MB", "POST", "/config/", None).status, 405);
    let c = w.call("MB", "GET", "/config/", None).json();
    assert_eq!(c["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(c["max_upload_size"], 1048576);
    assert_eq!(c["max_upload_count"], 15);
    assert_eq!(c["session_age"], 3600);
    assert_eq!(
        c["allowed_file_types"].as_array().map(|a| a.len()),
        Some(22)
    );
    assert_eq!(c["allowed_file_types"][0], "application/pdf");
}

#[test]
fn cors_for_allowed_origins_with_credentials() {
    let w = World::new(Backend::Sqlite, &[]);
    let pre = w.web.request(
        "OPTIONS",
        "/users/users/",
        &[
            ("Origin", "http://localhost:4200"),
            ("Access-Control-Request-Method", "POST"),
            ("X-KEYSTONE-CID", CID),
        ],
        b"",
    );
    assert_eq!(pre.status, 200);
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("http://localhost:4200")
    );
    assert_eq!(pre.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(pre.header("access-control-max-age"), Some("86400"));
    assert!(
        pre.header("access-control-allow-headers")
            .unwrap_or("")
            .contains("x-csrftoken")
    );
    let page = w
        .call("STAFF", "GET", &format!("/logs/requests/?cid={CID}"), None)
        .json();
    assert_eq!(page["count"], 0, "preflights are not logged");
    let other = w.web.request(
        "GET",
        "/version/",
        &[("Origin", "http://evil.example")],
        b"",
    );
    assert!(other.header("access-control-allow-origin").is_none());
    let ok = w.web.request(
        "GET",
        "/version/",
        &[("Origin", "http://127.0.0.1:8000")],
        b"",
    );
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("http://127.0.0.1:8000")
    );
}

#[test]
fn logs_prune_honours_each_retention() {
    for backend in backends() {
        let w = World::new(backend, &[]);
        let old = "2000-01-01T00:00:00.000000+00:00";
        let ts = if backend == Backend::Postgres {
            format!("'{old}'::timestamptz")
        } else {
            format!("'{old}'")
        };
        w.site.sql(&format!(
            "INSERT INTO logging_requestlog (method, endpoint, response_code, timestamp, cid) VALUES ('GET', '/old/', 200, {ts}, 'old');
             INSERT INTO auditlog_logentry (content_type, object_pk, object_id, object_repr, action, changes_text, timestamp) VALUES ('users | Team', '999', 999, 'old', 0, '', {ts});
             INSERT INTO django_celery_results_taskresult (task_id, task_name, status, date_created, date_done) VALUES ('old-task', 'x', 'SUCCESS', {ts}, {ts});"
        ));
        let before = |path: &str| {
            w.call("STAFF", "GET", path, None).json()["count"]
                .as_i64()
                .unwrap_or(-1)
        };
        assert_eq!(before("/logs/requests/?cid=old"), 1);
        // Audit retention 0 keeps everything; the others delete the old rows only.
        let mut site_env = w.site.env.clone();
        site_env.insert("KEYSTONE_LOGGING__AUDIT_RETENTION".into(), "0".into());
        let out = w
            .site
            .command(&["logs", "prune"])
            .envs(&site_env)
            .output()
            .expect("prune");
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stdout(&out).contains("Deleted 1 request log(s), 0 audit"),
            "{}",
            stdout(&out)
        );
        assert_eq!(before("/logs/requests/?cid=old"), 0);
        assert_eq!(before("/logs/tasks/?task_id=old-task"), 0);
        assert_eq!(before("/logs/audit/?object_id=999"), 1);
        assert!(before("/logs/requests/") > 0, "recent records stay");
    }
}

/// Every datetime of a response is rendered in the site's zone (`server.timezone`, upstream's
/// `CONFIG_TIMEZONE`): its offset instead of `Z`, for the record's own fields, the nested
/// `_history` and the logs alike; the default zone is UTC with `Z`.
#[test]
fn datetimes_are_rendered_in_the_configured_zone() {
    let offset = |s: &Value| -> String {
        let text = s.as_str().unwrap_or_default();
        text.get(19..)
            .unwrap_or_default()
            .trim_start_matches(|c: char| c == '.' || c.is_ascii_digit())
            .to_string()
    };
    for (env, expected) in [
        (
            vec![("CONFIG_TIMEZONE", "America/New_York")],
            vec!["-05:00", "-04:00"],
        ),
        (vec![], vec!["Z"]),
    ] {
        let w = World::new(Backend::Sqlite, &env);
        let team = w
            .call(
                "STAFF",
                "POST",
                "/users/teams/",
                Some(json!({"name": "Zone Team"})),
            )
            .json();
        let stamps = [
            team["_history"][0]["timestamp"].clone(),
            w.call(
                "STAFF",
                "GET",
                &format!("/users/users/{}/", w.id("STAFF")),
                None,
            )
            .json()["date_joined"]
                .clone(),
            w.call("STAFF", "GET", "/logs/requests/", None).json()["results"][0]["timestamp"]
                .clone(),
            w.call("STAFF", "GET", "/logs/audit/", None).json()["results"][0]["timestamp"].clone(),
        ];
        for stamp in &stamps {
            assert!(
                expected.contains(&offset(stamp).as_str()),
                "{env:?}: {stamp} should end in one of {expected:?}"
            );
        }
    }
}
