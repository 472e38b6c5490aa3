//! `/batch/` (domain.md §12): references between steps, one transaction (a failing step
//! leaves the database, the audit trail and the upload directory exactly as before),
//! per-step permissions, dry runs, nested jobs, uploaded file parts and upstream's error
//! bodies — on both backends.

use crate::accounts::World;
use crate::common::http::Response;
use crate::common::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;

const BOUNDARY: &str = "----keystone-batch-test-boundary-b2Vk";

fn batch(w: &World, role: &str, job: Value) -> Response {
    w.call(role, "POST", "/batch/", Some(json!({ "job": job })))
}

/// Everything a batch could have changed, read back through the API and the upload dir.
fn snapshot(w: &World) -> Value {
    let mut out = serde_json::Map::new();
    for path in [
        "/users/teams/?_order=id",
        "/users/memberships/?_order=id",
        "/users/users/?_order=id",
        "/allocations/attachments/?_order=id",
        "/logs/audit/?_order=id",
    ] {
        let r = w.call("STAFF", "GET", path, None);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let mut page = r.json();
        // Users' last_login moves with every token use; the rest must not change.
        if let Some(rows) = page["results"].as_array_mut() {
            for row in rows {
                if let Some(o) = row.as_object_mut() {
                    o.remove("last_login");
                }
            }
        }
        out.insert(path.to_string(), page);
    }
    let mut files = BTreeMap::new();
    let media = w.site.path("state/media");
    if let Ok(entries) = walk(&media) {
        for (name, content) in entries {
            files.insert(name, Value::String(format!("{} bytes", content.len())));
        }
    }
    out.insert("files".into(), json!(files));
    Value::Object(out)
}

fn walk(root: &std::path::Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                out.push((rel, std::fs::read(&path)?));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn team_ids(w: &World) -> Vec<i64> {
    w.call("STAFF", "GET", "/users/teams/?_order=id", None)
        .json()["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|t| t["id"].as_i64().expect("id"))
        .collect()
}

fn multipart_batch(w: &World, role: &str, job: &Value, files: &[(&str, &str, &[u8])]) -> Response {
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"job\"\r\n\r\n{job}\r\n")
            .as_bytes(),
    );
    for (field, filename, content) in files {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\nContent-Type: text/plain\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    let auth = format!("Token {}", w.tokens[role]);
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    w.web.request(
        "POST",
        "/batch/",
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", ct.as_str()),
        ],
        &body,
    )
}

#[test]
fn batch_references_transactions_and_permissions() {
    for backend in backends() {
        let w = World::new(backend, &[]);
        let name = backend.name();

        // Methods and anonymous callers (§13).
        assert_eq!(
            w.call("ANON", "POST", "/batch/", None).status,
            401,
            "{name}"
        );
        assert_eq!(w.call("AUTH", "GET", "/batch/", None).status, 405, "{name}");
        assert_eq!(
            w.call("AUTH", "OPTIONS", "/batch/", None).status,
            200,
            "{name}"
        );
        assert_eq!(
            w.call("AUTH", "DELETE", "/batch/", None).status,
            405,
            "{name}"
        );

        // The spec's example, run by staff: references into earlier steps' bodies, in
        // paths, whole-string payload values (type kept) and embedded text.
        let mb = w.id("MB");
        let r = batch(
            &w,
            "STAFF",
            json!({"actions": [
                {"ref": "t", "method": "POST", "path": "/users/teams/", "payload": {"name": "Batch Team"}},
                {"ref": "m", "method": "POST", "path": "/users/memberships/",
                 "payload": {"team": "@ref{t.id}", "user": mb, "role": "OW"}},
                {"method": "PATCH", "path": "/users/users/@ref{m.user}/",
                 "payload": {"last_name": "of @ref{t.slug} #@ref{t.id}"}},
                {"method": "DELETE", "path": "/users/memberships/@ref{m.id}/"},
                {"ref": "lst", "method": "GET", "path": "/users/teams/",
                 "query_params": {"name": "Batch Team"}},
            ]}),
        );
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let results = r.json()["results"].as_array().expect("results").clone();
        assert_eq!(results.len(), 5, "{name}");
        let team = results[0]["body"]["id"].as_i64().expect("team id");
        assert_eq!(results[0]["ref"], "t");
        assert_eq!(results[0]["index"], 1);
        assert_eq!(results[0]["status"], 201);
        assert_eq!(
            results[1]["body"]["team"], team,
            "{name}: ref kept its integer type"
        );
        assert_eq!(
            results[2]["ref"], "",
            "{name}: unnamed steps have an empty ref"
        );
        assert_eq!(results[2]["path"], format!("/users/users/{mb}/"));
        assert_eq!(
            results[2]["body"]["last_name"],
            format!("of batch-team #{team}")
        );
        assert_eq!(results[3]["status"], 204);
        assert_eq!(results[3]["body"], Value::Null);
        assert_eq!(
            results[4]["path"], "/users/teams/",
            "{name}: query_params not in path"
        );
        assert_eq!(
            results[4]["body"]["count"], 1,
            "{name}: query_params applied"
        );
        // Committed: visible afterwards.
        assert!(team_ids(&w).contains(&team), "{name}");
        let user = w
            .call("STAFF", "GET", &format!("/users/users/{mb}/"), None)
            .json();
        assert_eq!(user["last_name"], format!("of batch-team #{team}"));
        let m = w.call(
            "STAFF",
            "GET",
            &format!("/users/memberships/?team={team}"),
            None,
        );
        assert_eq!(
            m.json()["count"],
            0,
            "{name}: the membership was deleted in step 4"
        );

        // The steps' audit entries carry the batch caller and the batch request's cid.
        let cid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
        let auth = format!("Token {}", w.tokens["STAFF"]);
        let r = w.web.request(
            "POST",
            "/batch/",
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
                ("X-KEYSTONE-CID", cid),
            ],
            json!({"job": {"actions": [
                {"method": "POST", "path": "/users/teams/", "payload": {"name": "Audited In Batch"}}
            ]}})
            .to_string()
            .as_bytes(),
        );
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let created = r.json()["results"][0]["body"]["id"].as_i64().expect("id");
        let audit = w
            .call(
                "STAFF",
                "GET",
                &format!("/logs/audit/?object_id={created}&content_type=users%20%7C%20Team"),
                None,
            )
            .json();
        assert_eq!(audit["count"], 1, "{name}: {audit}");
        assert_eq!(audit["results"][0]["actor"], w.id("STAFF"));
        assert_eq!(audit["results"][0]["cid"], cid);

        // A third step that fails leaves everything exactly as before: rows, audit trail.
        let before = snapshot(&w);
        let r = batch(
            &w,
            "STAFF",
            json!({"actions": [
                {"ref": "t", "method": "POST", "path": "/users/teams/", "payload": {"name": "Doomed Team"}},
                {"method": "POST", "path": "/users/memberships/",
                 "payload": {"team": "@ref{t.id}", "user": mb, "role": "AD"}},
                {"method": "POST", "path": "/users/teams/", "payload": {"name": ""}},
                {"method": "DELETE", "path": "/users/teams/@ref{t.id}/"},
            ]}),
        );
        assert_eq!(r.status, 422, "{name}: {}", r.text());
        let body = r.json();
        assert_eq!(body["step"], 3, "{name}");
        assert_eq!(body["status"], 400);
        assert_eq!(
            body["detail"],
            "Step #3 (POST /users/teams/) failed with status 400"
        );
        assert_eq!(body["body"]["name"][0], "This field may not be blank.");
        assert_eq!(
            snapshot(&w),
            before,
            "{name}: a failed batch changed something"
        );

        // Permissions are checked per step as for separate requests: a non-staff caller may
        // create a team but is not made its admin, so adding a member is refused, and the
        // team of step 1 is rolled back with it.
        let teams_before = team_ids(&w);
        let r = batch(
            &w,
            "AUTH",
            json!({"actions": [
                {"ref": "t", "method": "POST", "path": "/users/teams/", "payload": {"name": "Auth Team"}},
                {"method": "POST", "path": "/users/memberships/",
                 "payload": {"team": "@ref{t.id}", "user": mb, "role": "MB"}},
            ]}),
        );
        assert_eq!(r.status, 422, "{name}: {}", r.text());
        assert_eq!(r.json()["step"], 2);
        assert_eq!(r.json()["status"], 403);
        assert_eq!(
            r.json()["body"]["detail"],
            "You do not have permission to perform this action."
        );
        assert_eq!(team_ids(&w), teams_before, "{name}");
        let r = batch(
            &w,
            "MB",
            json!({"actions": [{"method": "DELETE", "path": format!("/users/teams/{}/", w.id("TEAM"))}]}),
        );
        assert_eq!(r.status, 422, "{name}: {}", r.text());
        assert_eq!(
            r.json()["status"],
            403,
            "{name}: a member may not delete the team"
        );
        assert!(team_ids(&w).contains(&w.id("TEAM")));

        // Dry run: every step runs, nothing stays.
        let teams_before = team_ids(&w);
        let r = batch(
            &w,
            "STAFF",
            json!({"dry_run": true, "actions": [
                {"ref": "t", "method": "POST", "path": "/users/teams/", "payload": {"name": "Dry Team"}},
                {"method": "GET", "path": "/users/teams/@ref{t.id}/"},
            ]}),
        );
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_eq!(
            r.json()["results"][1]["body"]["name"],
            "Dry Team",
            "{name}: read own write"
        );
        assert_eq!(team_ids(&w), teams_before, "{name}: dry run kept a row");

        // Nested batch: runs inside the outer transaction; its body is null; an outer
        // failure after it undoes it too; a nested dry run undoes only itself.
        let teams_before = team_ids(&w);
        let r = batch(
            &w,
            "STAFF",
            json!({"actions": [
                {"method": "POST", "path": "/batch/", "payload": {"job": {"actions": [
                    {"method": "POST", "path": "/users/teams/", "payload": {"name": "Nested Team"}}
                ]}}},
                {"method": "GET", "path": "/users/teams/", "query_params": {"name": "Nested Team"}},
                {"method": "GET", "path": "/users/teams/999999/"},
            ]}),
        );
        assert_eq!(r.status, 422, "{name}: {}", r.text());
        assert_eq!(r.json()["step"], 3);
        assert_eq!(r.json()["status"], 404);
        assert_eq!(
            team_ids(&w),
            teams_before,
            "{name}: nested work survived a failed job"
        );
        let r = batch(
            &w,
            "STAFF",
            json!({"actions": [
                {"method": "POST", "path": "/batch/", "payload": {"job": {"dry_run": true, "actions": [
                    {"method": "POST", "path": "/users/teams/", "payload": {"name": "Nested Dry"}}
                ]}}},
                {"method": "POST", "path": "/users/teams/", "payload": {"name": "Outer Kept"}},
            ]}),
        );
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let results = r.json()["results"].clone();
        assert_eq!(results[0]["status"], 200);
        assert_eq!(
            results[0]["body"],
            Value::Null,
            "{name}: a nested batch has no body"
        );
        let names: Vec<String> = w.call("STAFF", "GET", "/users/teams/", None).json()["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|t| t["name"].as_str().unwrap_or_default().to_string())
            .collect();
        assert!(
            names.contains(&"Outer Kept".to_string()),
            "{name}: {names:?}"
        );
        assert!(
            !names.contains(&"Nested Dry".to_string()),
            "{name}: {names:?}"
        );
    }
}

#[test]
fn batch_errors_have_upstream_bodies() {
    for backend in backends() {
        let w = World::new(backend, &[]);
        let name = backend.name();
        let check = |r: Response, status: u16, body: Value| {
            assert_eq!(r.status, status, "{name}: {}", r.text());
            assert_eq!(r.json(), body, "{name}");
        };
        check(
            w.call("AUTH", "POST", "/batch/", Some(json!({}))),
            400,
            json!({"non_field_errors": ["No data provided"]}),
        );
        check(
            w.call("AUTH", "POST", "/batch/", Some(json!({"job": "{not json"}))),
            400,
            json!({"detail": "The `job` field is not valid JSON."}),
        );
        check(
            batch(&w, "AUTH", json!({"actions": []})),
            400,
            json!({"actions": {"non_field_errors": ["This list may not be empty."]}}),
        );
        check(
            batch(
                &w,
                "AUTH",
                json!({"actions": [{"method": "TRACE", "path": "/x/"}]}),
            ),
            400,
            json!({"actions": [{"method": ["\"TRACE\" is not a valid choice."]}]}),
        );
        // The default bounds: 100 steps per job, one level of nested jobs.
        let many = vec![json!({"method": "GET", "path": "/users/teams/"}); 101];
        check(
            batch(&w, "AUTH", json!({ "actions": many })),
            400,
            json!({"actions": {"non_field_errors": ["Ensure this field has no more than 100 elements."]}}),
        );
        let nested =
            |job: Value| json!({"method": "POST", "path": "/batch/", "payload": {"job": job}});
        let leaf = json!({"actions": [{"method": "GET", "path": "/users/teams/"}]});
        let r = batch(&w, "AUTH", json!({"actions": [nested(leaf.clone())]}));
        assert_eq!(r.status, 200, "{name}: one level is allowed: {}", r.text());
        check(
            batch(
                &w,
                "AUTH",
                json!({"actions": [nested(json!({"actions": [nested(leaf)]}))]}),
            ),
            400,
            json!({"detail": "Ensure batch jobs are nested no more than 1 level deep."}),
        );
        // `job` may be a string holding the JSON.
        let job = json!({"actions": [{"method": "GET", "path": "/users/teams/"}]}).to_string();
        let r = w.call("AUTH", "POST", "/batch/", Some(json!({ "job": job })));
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        // Only JSON and multipart.
        let auth = format!("Token {}", w.tokens["AUTH"]);
        let r = w.web.request(
            "POST",
            "/batch/",
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            b"job=x",
        );
        assert_eq!(r.status, 415, "{name}: {}", r.text());

        // Unknown paths and paths without the trailing slash are not redirected.
        for path in ["/no/such/path/", "/users/teams"] {
            let r = batch(
                &w,
                "AUTH",
                json!({"actions": [{"method": "GET", "path": path}]}),
            );
            assert_eq!(r.status, 422, "{name}: {}", r.text());
            assert_eq!(r.json()["status"], 404);
            assert_eq!(
                r.json()["body"],
                json!({"detail": format!("No route matched: {path}")}),
                "{name}"
            );
        }

        // Reference errors stop the job with 422 naming the token.
        let r = batch(
            &w,
            "AUTH",
            json!({"actions": [
                {"ref": "lst", "method": "GET", "path": "/users/teams/"},
                {"method": "GET", "path": "/users/teams/@ref{lst.results.99.id}/"},
            ]}),
        );
        check(
            r,
            422,
            json!({
                "detail": "Cannot resolve reference \"@ref{lst.results.99.id}\": Invalid list index \"99\"",
                "token": "@ref{lst.results.99.id}",
            }),
        );
        let r = batch(
            &w,
            "AUTH",
            json!({"actions": [{"method": "POST", "path": "/users/teams/",
                                "payload": {"name": "@ref{later.name}"}}]}),
        );
        assert_eq!(r.status, 422, "{name}");
        assert_eq!(
            r.json()["detail"],
            "Cannot resolve reference \"@ref{later.name}\": Alias \"later\" has not been defined by a previous step"
        );
        let r = batch(
            &w,
            "AUTH",
            json!({"actions": [{"method": "POST", "path": "/users/teams/",
                                "payload": {"name": "@file{doc}"}}]}),
        );
        assert_eq!(
            r.json()["detail"],
            "Cannot resolve reference \"@file{doc}\": File part \"doc\" was not uploaded with this request",
            "{name}"
        );
    }
}

#[test]
fn batch_file_parts_and_upload_directory() {
    for backend in backends() {
        let w = World::new(backend, &[]);
        let name = backend.name();
        let (team, mb) = (w.id("TEAM"), w.id("MB"));
        w.site.sql(&format!(
            "INSERT INTO allocations_allocationrequest (id, title, description, status, submitter_id, team_id) \
             VALUES (1, 'Request One', 'First', 'PD', {mb}, {team});"
        ));
        let media = w.site.path("state/media");
        let files = || walk(&media).unwrap_or_default();

        // An uploaded part referenced by @file{...} becomes the step's file.
        let job = json!({"actions": [
            {"ref": "a", "method": "POST", "path": "/allocations/attachments/",
             "payload": {"request": 1, "file": "@file{doc}", "name": "Notes for @ref{a}"}}
        ]});
        let r = multipart_batch(&w, "STAFF", &job, &[("doc", "notes.txt", b"hello batch")]);
        assert_eq!(
            r.status,
            422,
            "{name}: a label without a path is refused: {}",
            r.text()
        );
        assert!(
            files().is_empty(),
            "{name}: nothing stored for a refused job"
        );
        let job = json!({"actions": [
            {"ref": "a", "method": "POST", "path": "/allocations/attachments/",
             "payload": {"request": 1, "file": "@file{doc}"}},
            {"method": "GET", "path": "/allocations/attachments/@ref{a.id}/"}
        ]});
        let r = multipart_batch(&w, "STAFF", &job, &[("doc", "notes.txt", b"hello batch")]);
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let attachment = r.json()["results"][0]["body"].clone();
        assert_eq!(attachment["name"], "notes.txt", "{name}: {attachment}");
        let stored = files();
        assert_eq!(stored.len(), 1, "{name}: {stored:?}");
        assert_eq!(stored[0].1, b"hello batch");

        // A batch that uploads and then fails leaves no file behind.
        let job = json!({"actions": [
            {"method": "POST", "path": "/allocations/attachments/",
             "payload": {"request": 1, "file": "@file{doc}"}},
            {"method": "GET", "path": "/users/teams/999999/"}
        ]});
        let r = multipart_batch(&w, "STAFF", &job, &[("doc", "other.txt", b"rolled back")]);
        assert_eq!(r.status, 422, "{name}: {}", r.text());
        assert_eq!(
            files(),
            stored,
            "{name}: the upload of a failed job was kept"
        );

        // A batch that deletes the attachment and then fails keeps the file; one that
        // commits removes it.
        let id = attachment["id"].as_i64().expect("id");
        let r = batch(
            &w,
            "STAFF",
            json!({"actions": [
                {"method": "DELETE", "path": format!("/allocations/attachments/{id}/")},
                {"method": "GET", "path": "/users/teams/999999/"}
            ]}),
        );
        assert_eq!(r.status, 422, "{name}");
        assert_eq!(
            files(),
            stored,
            "{name}: a rolled-back delete removed the file"
        );
        let r = w.call(
            "STAFF",
            "GET",
            &format!("/allocations/attachments/{id}/"),
            None,
        );
        assert_eq!(r.status, 200, "{name}");
        let r = batch(
            &w,
            "STAFF",
            json!({"actions": [{"method": "DELETE", "path": format!("/allocations/attachments/{id}/")}]}),
        );
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert!(files().is_empty(), "{name}: committed delete kept the file");
    }
}

fn nested(job: Value) -> Value {
    json!({"method": "POST", "path": "/batch/", "payload": {"job": job}})
}

fn post_team(name: &str) -> Value {
    json!({"method": "POST", "path": "/users/teams/", "payload": {"name": name}})
}

/// Each `[batch]` limit, set small, refuses the job with its 400 body and leaves the
/// database, the audit trail and the upload directory as they were.
#[test]
fn batch_limits_are_configurable_and_refuse_without_storing() {
    for backend in backends() {
        let w = World::new(
            backend,
            &[
                ("KEYSTONE_BATCH__MAX_STEPS", "4"),
                ("KEYSTONE_BATCH__MAX_EXPANSIONS", "6"),
                ("KEYSTONE_SERVER__MAX_BODY_SIZE", "16384"),
            ],
        );
        let name = backend.name();
        let refused = |job: Value, body: Value| {
            let before = snapshot(&w);
            let r = batch(&w, "STAFF", job);
            assert_eq!(r.status, 400, "{name}: {}", r.text());
            assert_eq!(r.json(), body, "{name}");
            assert_eq!(
                snapshot(&w),
                before,
                "{name}: a refused job stored something"
            );
        };
        let get = || json!({"method": "GET", "path": "/users/teams/"});

        // Steps: four run, five are refused before anything runs.
        let r = batch(
            &w,
            "STAFF",
            json!({"dry_run": true, "actions": [post_team("Four Steps"), get(), get(), get()]}),
        );
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        refused(
            json!({"actions": [post_team("Five Steps"), get(), get(), get(), get()]}),
            json!({"actions": {"non_field_errors": ["Ensure this field has no more than 4 elements."]}}),
        );
        // A nested job over the limit ends the whole request with its body, after the
        // outer job's first step had already created a team.
        refused(
            json!({"actions": [
                post_team("Outer Of Nested"),
                nested(json!({"actions": [post_team("Nested Five"), get(), get(), get(), get()]})),
            ]}),
            json!({"actions": {"non_field_errors": ["Ensure this field has no more than 4 elements."]}}),
        );
        // Depth (default 1): a second level is refused, the outer levels' writes undone.
        refused(
            json!({"actions": [
                post_team("Depth Zero"),
                nested(json!({"actions": [
                    post_team("Depth One"),
                    nested(json!({"actions": [post_team("Depth Two")]})),
                ]})),
            ]}),
            json!({"detail": "Ensure batch jobs are nested no more than 1 level deep."}),
        );

        // Expansions: six tokens per request, counted across steps.
        let expand = || {
            json!({"method": "PATCH", "path": "/users/teams/@ref{t.id}/",
                   "payload": {"name": "@ref{t.name} x @ref{t.name}"}})
        };
        let mut first = post_team("Seven Refs");
        first["ref"] = json!("t");
        let mut six = json!({"dry_run": true, "actions": [first, expand(), expand()]});
        let r = batch(&w, "STAFF", six.clone());
        assert_eq!(
            r.status,
            200,
            "{name}: six tokens are allowed: {}",
            r.text()
        );
        six["dry_run"] = json!(false);
        six["actions"]
            .as_array_mut()
            .expect("actions")
            .push(json!({"method": "GET", "path": "/users/teams/@ref{t.id}/"}));
        refused(
            six,
            json!({
                "detail": "Cannot resolve reference \"@ref{t.id}\": Ensure this job resolves no more than 6 references.",
                "token": "@ref{t.id}",
            }),
        );

        // Size: a few references to a large response, embedded in one string, would make
        // a step body larger than server.max_body_size.
        let users = w.call("STAFF", "GET", "/users/users/", None);
        let users_len = users.json()["results"].to_string().len();
        assert!(
            (4000..12000).contains(&users_len),
            "{name}: the user list is {users_len} bytes"
        );
        let mut first = post_team("Too Large");
        first["ref"] = json!("t");
        refused(
            json!({"actions": [
                first,
                {"ref": "u", "method": "GET", "path": "/users/users/"},
                {"method": "PATCH", "path": "/users/teams/@ref{t.id}/",
                 "payload": {"name": "@ref{u.results} @ref{u.results} @ref{u.results} @ref{u.results} @ref{u.results}"}},
            ]}),
            json!({
                "detail": "Step #3 (PATCH /users/teams/@ref{t.id}/) is too large once its references are resolved: the limit is 16384 bytes.",
                "step": 3,
            }),
        );
        // One copy fits, and reaches the endpoint (which refuses so long a name).
        let mut first = post_team("Fits");
        first["ref"] = json!("t");
        let r = batch(
            &w,
            "STAFF",
            json!({"actions": [
                first,
                {"ref": "u", "method": "GET", "path": "/users/users/"},
                {"method": "POST", "path": "/users/teams/",
                 "payload": {"name": "x @ref{u.results}"}},
            ]}),
        );
        assert_eq!(r.status, 422, "{name}: {}", r.text());
        assert_eq!(r.json()["status"], 400, "{name}: {}", r.text());
    }
}

/// A job that runs past `batch.time_limit` is rolled back whole (rows, audit entries and
/// uploaded files) and answered 422 soon after the limit.
#[test]
fn batch_time_limit_rolls_back_the_whole_job() {
    for backend in backends() {
        let w = World::new(
            backend,
            &[
                ("KEYSTONE_BATCH__TIME_LIMIT", "1"),
                ("KEYSTONE_THROTTLE__USER", "1000000/min"),
            ],
        );
        let name = backend.name();
        let (team, mb) = (w.id("TEAM"), w.id("MB"));
        w.site.sql(&format!(
            "INSERT INTO allocations_allocationrequest (id, title, description, status, submitter_id, team_id) \
             VALUES (1, 'Request One', 'First', 'PD', {mb}, {team});"
        ));
        let before = snapshot(&w);
        // Thousands of list requests in nested jobs: far more than a second's work.
        let slow = json!({"actions": vec![
            json!({"method": "GET", "path": "/users/users/", "query_params": {"_order": "id"}});
            100
        ]});
        let mut actions = vec![
            json!({"method": "POST", "path": "/allocations/attachments/",
                   "payload": {"request": 1, "file": "@file{doc}"}}),
            post_team("Slow Team"),
        ];
        actions.extend((0..98).map(|_| nested(slow.clone())));
        let job = json!({ "actions": actions });
        let started = std::time::Instant::now();
        let r = multipart_batch(&w, "STAFF", &job, &[("doc", "notes.txt", b"slow job")]);
        let took = started.elapsed();
        assert_eq!(r.status, 422, "{name}: {}", r.text());
        let body = r.json();
        let step = body["step"].as_i64().expect("step");
        assert!(step >= 3, "{name}: {body}");
        assert_eq!(
            body["detail"],
            format!(
                "Job exceeded its time limit of 1 second at step #{step} (POST /batch/); no changes were saved."
            ),
            "{name}"
        );
        assert_eq!(body["body"], json!({}), "{name}");
        eprintln!(
            "{name}: the time limit stopped the job at step #{step}, answered after {took:?}"
        );
        assert!(
            took < std::time::Duration::from_secs(8),
            "{name}: answered after {took:?}"
        );
        assert_eq!(
            snapshot(&w),
            before,
            "{name}: a timed-out job stored something"
        );

        if backend == Backend::Postgres {
            // A step waiting on a lock gives up at the deadline (statement_timeout) and
            // frees its connection, instead of waiting as long as the lock is held.
            let site_sql = {
                let site = &w.site;
                let statements = "BEGIN; LOCK TABLE users_team IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(6); COMMIT;";
                std::thread::scope(|s| {
                    let holder = s.spawn(move || site.sql(statements));
                    std::thread::sleep(std::time::Duration::from_millis(500));
                    let started = std::time::Instant::now();
                    let r = batch(&w, "STAFF", json!({"actions": [post_team("Blocked Team")]}));
                    let took = started.elapsed();
                    holder.join().expect("lock holder");
                    (r, took)
                })
            };
            let (r, took) = site_sql;
            assert_eq!(r.status, 422, "{name}: {}", r.text());
            assert_eq!(r.json()["step"], 1, "{name}");
            assert!(
                took < std::time::Duration::from_secs(4),
                "{name}: the blocked step held on for {took:?}"
            );
            assert_eq!(
                snapshot(&w),
                before,
                "{name}: the blocked job stored something"
            );
        }
    }
}
