//! Research products, notifications and statistics (domain.md §8, §9, §11, §13): the
//! permission matrix of every endpoint for every role, visibility, validation messages with
//! their fields, and the `/stats/` aggregates against values computed by hand on seeded
//! data, with filters — on both backends.

use crate::accounts::World;
use crate::common::*;
use chrono::{Duration, NaiveDate, Utc};
use serde_json::{Value, json};

const ROLES: [&str; 6] = ["ANON", "AUTH", "MB", "AD", "OW", "STAFF"];

/// Checks one row of a matrix: `expected[i]` for `ROLES[i]`.
fn row(w: &World, method: &str, path: &str, body: Option<Value>, expected: [u16; 6]) {
    for (role, want) in ROLES.iter().zip(expected) {
        let r = w.call(role, method, path, body.clone());
        assert_eq!(r.status, want, "{method} {path} as {role}: {}", r.text());
    }
}

/// A request that must answer `status`; returns its JSON body (if any).
fn ok(w: &World, role: &str, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
    let r = w.call(role, method, path, body);
    assert_eq!(r.status, status, "{method} {path} as {role}: {}", r.text());
    if r.text().is_empty() {
        Value::Null
    } else {
        r.json()
    }
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

/// `today + n days` as `YYYY-MM-DD`.
fn day(n: i64) -> String {
    (today() + Duration::days(n)).format("%Y-%m-%d").to_string()
}

fn grant(team: i64, title: &str) -> Value {
    json!({"title": title, "agency": "NSF", "amount": "10.00", "start_date": "2024-01-01", "team": team})
}

/// A second team, with X1 as its only member.
fn team_two(w: &World) -> i64 {
    let t = ok(
        w,
        "STAFF",
        "POST",
        "/users/teams/",
        Some(json!({"name": "Team Two"})),
        201,
    );
    let id = t["id"].as_i64().expect("team id");
    let body = json!({"user": w.id("X1"), "team": id, "role": "OW"});
    ok(w, "STAFF", "POST", "/users/memberships/", Some(body), 201);
    id
}

#[test]
fn research_permission_matrix_visibility_and_validation() {
    for backend in backends() {
        let w = World::new(backend, &[]);
        let team = w.id("TEAM");
        let other = team_two(&w);
        for (kind, body) in [
            ("grants", grant(team, "Matrix grant")),
            (
                "publications",
                json!({"title": "Matrix paper", "team": team}),
            ),
        ] {
            let coll = format!("/research/{kind}/");
            for method in ["GET", "HEAD", "OPTIONS"] {
                row(&w, method, &coll, None, [401, 200, 200, 200, 200, 200]);
            }
            for method in ["PUT", "PATCH", "DELETE", "TRACE"] {
                row(&w, method, &coll, None, [401, 405, 405, 405, 405, 405]);
            }
            // Any member (MB included) creates for their team; a non-member is refused.
            row(
                &w,
                "POST",
                &coll,
                Some(body.clone()),
                [401, 403, 201, 201, 201, 201],
            );

            let id = ok(&w, "STAFF", "POST", &coll, Some(body.clone()), 201)["id"]
                .as_i64()
                .expect("id");
            let item = format!("/research/{kind}/{id}/");
            for method in ["GET", "HEAD"] {
                row(&w, method, &item, None, [401, 403, 200, 200, 200, 200]);
            }
            row(&w, "OPTIONS", &item, None, [401, 200, 200, 200, 200, 200]);
            for method in ["POST", "TRACE"] {
                row(&w, method, &item, None, [401, 405, 405, 405, 405, 405]);
            }
            row(
                &w,
                "PUT",
                &item,
                Some(body.clone()),
                [401, 403, 200, 200, 200, 200],
            );
            row(
                &w,
                "PATCH",
                &item,
                Some(json!({"title": "Renamed"})),
                [401, 403, 200, 200, 200, 200],
            );
            for (role, want) in ROLES.iter().zip([401, 403, 204, 204, 204, 204]) {
                let id = ok(&w, "STAFF", "POST", &coll, Some(body.clone()), 201)["id"]
                    .as_i64()
                    .expect("id");
                let path = format!("/research/{kind}/{id}/");
                assert_eq!(
                    w.call(role, "DELETE", &path, None).status,
                    want,
                    "DELETE {path} as {role}"
                );
                let after = w.call("STAFF", "GET", &path, None).status;
                assert_eq!(
                    after,
                    if want == 204 { 404 } else { 200 },
                    "{path} after DELETE as {role}"
                );
            }
            let missing = w.call("MB", "GET", &format!("/research/{kind}/999999/"), None);
            assert_eq!(missing.status, 404);
            let model = if kind == "grants" {
                "Grant"
            } else {
                "Publication"
            };
            assert_eq!(
                missing.json()["detail"],
                format!("No {model} matches the given query.")
            );

            // View level: a body naming an existing team the caller is not in → 403, before
            // validation; unknown or malformed teams are validation errors.
            let mut foreign = body.clone();
            foreign["team"] = json!(other);
            ok(&w, "MB", "POST", &coll, Some(foreign.clone()), 403);
            ok(&w, "MB", "PATCH", &item, Some(json!({"team": other})), 403);
            let mut unknown = body.clone();
            unknown["team"] = json!(999999);
            let e = ok(&w, "MB", "POST", &coll, Some(unknown), 400);
            assert_eq!(
                e,
                json!({"team": ["Invalid pk \"999999\" - object does not exist."]})
            );
            let mut garbled = body.clone();
            garbled["team"] = json!("abc");
            let e = ok(&w, "MB", "POST", &coll, Some(garbled), 400);
            assert_eq!(
                e,
                json!({"team": ["Incorrect type. Expected pk value, received str."]})
            );
            // Staff move a record to another team; X1's team then sees it, Team One no longer.
            let moved = ok(
                &w,
                "STAFF",
                "PATCH",
                &item,
                Some(json!({"team": other})),
                200,
            );
            assert_eq!(moved["team"], other);
            assert_eq!(moved["_team"]["name"], "Team Two");
            ok(&w, "MB", "GET", &item, None, 403);

            // Visibility of the list: own teams only; staff everything.
            let count = |role: &str| {
                ok(&w, role, "GET", &coll, None, 200)["count"]
                    .as_i64()
                    .unwrap_or(-1)
            };
            let all = count("STAFF");
            assert_eq!(count("AUTH"), 0);
            assert_eq!(
                count("MB"),
                all - 1,
                "the moved record is hidden from Team One"
            );
            assert_eq!(count("MB"), count("OW"));
        }

        // Grant fields, values and messages.
        let g = ok(
            &w,
            "MB",
            "POST",
            "/research/grants/",
            Some(
                json!({"title": "  Big grant ", "agency": "DOE", "amount": 1234.5, "start_date": "2025-02-01",
                        "end_date": "2025-01-01", "pi": "Dr. P", "team": team}),
            ),
            201,
        );
        assert_eq!(g["title"], "Big grant", "text is trimmed");
        assert_eq!(g["amount"], "1234.50");
        assert_eq!(
            g["end_date"], "2025-01-01",
            "an end before the start is accepted"
        );
        assert_eq!(g["grant_number"], Value::Null);
        assert_eq!(
            g["_team"],
            json!({"id": team, "slug": "team-one", "name": "Team One", "is_active": true})
        );
        let history = g["_history"].as_array().expect("history");
        assert_eq!(history.len(), 1);
        assert_eq!(history[0]["action"], "create");
        assert_eq!(history[0]["actor"], w.id("MB"));
        assert_eq!(history[0]["changes"]["amount"], json!(["None", "1234.50"]));
        let gid = g["id"].as_i64().expect("id");
        let e = ok(&w, "MB", "POST", "/research/grants/", Some(json!({})), 400);
        assert_eq!(
            e,
            json!({"title": ["This field is required."], "agency": ["This field is required."],
                   "amount": ["This field is required."], "start_date": ["This field is required."],
                   "team": ["This field is required."]})
        );
        let long = "x".repeat(251);
        let e = ok(
            &w,
            "MB",
            "POST",
            "/research/grants/",
            Some(
                json!({"title": long, "agency": "y".repeat(101), "pi": "z".repeat(101), "amount": "abc",
                        "start_date": "01/02/2025", "end_date": "2025-02-30", "grant_number": "n".repeat(251),
                        "team": team}),
            ),
            400,
        );
        assert_eq!(
            e,
            json!({"title": ["Ensure this field has no more than 250 characters."],
                   "agency": ["Ensure this field has no more than 100 characters."],
                   "pi": ["Ensure this field has no more than 100 characters."],
                   "amount": ["A valid number is required."],
                   "grant_number": ["Ensure this field has no more than 250 characters."],
                   "start_date": ["Date has wrong format. Use one of these formats instead: YYYY-MM-DD."],
                   "end_date": ["Date has wrong format. Use one of these formats instead: YYYY-MM-DD."]})
        );
        for (amount, message) in [
            (
                json!("1.001"),
                "Ensure that there are no more than 2 decimal places.",
            ),
            (
                json!("123456789012345"),
                "Ensure that there are no more than 14 digits in total.",
            ),
            (
                json!("1234567890123"),
                "Ensure that there are no more than 12 digits before the decimal point.",
            ),
            (json!(null), "This field may not be null."),
            (json!(true), "A valid number is required."),
        ] {
            let e = ok(
                &w,
                "MB",
                "PATCH",
                &format!("/research/grants/{gid}/"),
                Some(json!({"amount": amount})),
                400,
            );
            assert_eq!(e, json!({"amount": [message]}), "amount {amount}");
        }
        for (amount, shown) in [
            ("-999999999999.99", "-999999999999.99"),
            ("7", "7.00"),
            ("0.1", "0.10"),
        ] {
            let r = ok(
                &w,
                "MB",
                "PATCH",
                &format!("/research/grants/{gid}/"),
                Some(json!({"amount": amount})),
                200,
            );
            assert_eq!(r["amount"], shown);
            assert_eq!(
                ok(
                    &w,
                    "MB",
                    "GET",
                    &format!("/research/grants/{gid}/"),
                    None,
                    200
                )["amount"],
                shown
            );
        }
        // PUT requires the required fields and keeps omitted optional ones.
        let e = ok(
            &w,
            "MB",
            "PUT",
            &format!("/research/grants/{gid}/"),
            Some(json!({"title": "T"})),
            400,
        );
        assert_eq!(
            e.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()),
            Some(vec![
                "agency".into(),
                "amount".into(),
                "start_date".into(),
                "team".into()
            ])
        );
        let put = ok(
            &w,
            "MB",
            "PUT",
            &format!("/research/grants/{gid}/"),
            Some(
                json!({"title": "T", "agency": "A", "amount": "5", "start_date": "2024-05-05", "team": team}),
            ),
            200,
        );
        assert_eq!(
            (put["pi"].clone(), put["amount"].clone()),
            (json!("Dr. P"), json!("5.00"))
        );
        let history = put["_history"].as_array().expect("history");
        assert_eq!(history[0]["action"], "update");
        assert_eq!(history[0]["changes"]["title"], json!(["Big grant", "T"]));
        // Filters, search and ordering.
        let list = ok(
            &w,
            "MB",
            "GET",
            "/research/grants/?amount__gte=5&amount__lt=5.01&_search=dr.",
            None,
            200,
        );
        assert_eq!(list["count"], 1);
        assert_eq!(list["results"][0]["id"], gid);
        let list = ok(
            &w,
            "MB",
            "GET",
            "/research/grants/?_search=team%20one&_order=-amount",
            None,
            200,
        );
        let amounts: Vec<String> = list["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| r["amount"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(amounts.first().map(String::as_str), Some("10.00"));
        assert_eq!(amounts.last().map(String::as_str), Some("5.00"));
        let e = ok(
            &w,
            "MB",
            "GET",
            "/research/grants/?amount=x&start_date__gt=nope",
            None,
            400,
        );
        assert_eq!(
            e,
            json!({"amount": ["Enter a number."], "start_date__gt": ["Enter a valid date."]})
        );
        let e = ok(&w, "MB", "GET", "/research/grants/?team=999999", None, 400);
        assert_eq!(
            e,
            json!({"team": ["Select a valid choice. That choice is not one of the available choices."]})
        );

        // Publication fields and the DOI rule.
        let p = ok(
            &w,
            "AD",
            "POST",
            "/research/publications/",
            Some(
                json!({"title": "Paper", "doi": "10.1/abc", "journal": "J", "submitted": "2024-01-01",
                        "published": null, "team": team}),
            ),
            201,
        );
        assert_eq!(p["published"], Value::Null);
        assert_eq!(p["abstract"], Value::Null);
        let pid = p["id"].as_i64().expect("id");
        let e = ok(
            &w,
            "AD",
            "POST",
            "/research/publications/",
            Some(
                json!({"title": "", "doi": "10.1/abc", "volume": "v".repeat(21), "issue": "i".repeat(21),
                        "journal": "j".repeat(101), "published": "2024", "team": team}),
            ),
            400,
        );
        assert_eq!(
            e,
            json!({"title": ["This field may not be blank."],
                   "doi": ["publication with this doi already exists."],
                   "volume": ["Ensure this field has no more than 20 characters."],
                   "issue": ["Ensure this field has no more than 20 characters."],
                   "journal": ["Ensure this field has no more than 100 characters."],
                   "published": ["Date has wrong format. Use one of these formats instead: YYYY-MM-DD."]})
        );
        // Keeping its own DOI is no conflict; an empty DOI is unique too.
        ok(
            &w,
            "AD",
            "PUT",
            &format!("/research/publications/{pid}/"),
            Some(json!({"title": "Paper 2", "doi": "10.1/abc", "team": team})),
            200,
        );
        ok(
            &w,
            "AD",
            "POST",
            "/research/publications/",
            Some(json!({"title": "E1", "doi": "", "team": team})),
            201,
        );
        let e = ok(
            &w,
            "AD",
            "POST",
            "/research/publications/",
            Some(json!({"title": "E2", "doi": "", "team": team})),
            400,
        );
        assert_eq!(
            e,
            json!({"doi": ["publication with this doi already exists."]})
        );
        let list = ok(
            &w,
            "AD",
            "GET",
            "/research/publications/?doi__startswith=10.1&_search=paper",
            None,
            200,
        );
        assert_eq!(list["count"], 1);
        assert_eq!(list["results"][0]["title"], "Paper 2");
        assert_eq!(
            list["results"][0]["journal"], "J",
            "PUT keeps omitted optional fields"
        );
        let deleted = ok(
            &w,
            "AD",
            "DELETE",
            &format!("/research/publications/{pid}/"),
            None,
            204,
        );
        assert_eq!(deleted, Value::Null);
    }
}

/// Inserts a notification for `user` (there is no API to create one).
/// Deleting a team deletes its memberships, grants and publications with it (domain.md
/// §6.2), and each of them gets its own `delete` entry in the audit trail, children first,
/// with the text and the last values upstream records, before the team's own entry.
#[test]
fn deleting_a_team_audits_each_record_that_goes_with_it() {
    for backend in backends() {
        let w = World::new(backend, &[]);
        let team = team_two(&w);
        let member = w.id("X1");
        let g = ok(
            &w,
            "STAFF",
            "POST",
            "/research/grants/",
            Some(grant(team, "Going")),
            201,
        );
        let body = json!({"title": "Paper", "journal": "J", "team": team});
        let p = ok(
            &w,
            "STAFF",
            "POST",
            "/research/publications/",
            Some(body),
            201,
        );
        let (g, p) = (g["id"].as_i64().expect("id"), p["id"].as_i64().expect("id"));
        let m = ok(
            &w,
            "STAFF",
            "GET",
            &format!("/users/memberships/?team={team}"),
            None,
            200,
        );
        let m = m["results"][0]["id"].as_i64().expect("membership id");
        ok(
            &w,
            "STAFF",
            "DELETE",
            &format!("/users/teams/{team}/"),
            None,
            204,
        );

        let log = ok(
            &w,
            "STAFF",
            "GET",
            "/logs/audit/?_order=-id&_limit=4",
            None,
            200,
        );
        let mut entries: Vec<Value> = log["results"].as_array().expect("results").clone();
        entries.reverse();
        let seen: Vec<(String, i64, String)> = entries
            .iter()
            .map(|e| {
                let name = e["record_name"].as_str().expect("record_name").to_string();
                let action = e["action"].as_str().expect("action").to_string();
                (name, e["record_id"].as_i64().expect("record_id"), action)
            })
            .collect();
        let delete = |name: &str, id: i64| (name.to_string(), id, "delete".to_string());
        assert_eq!(
            seen,
            [
                delete("users | Membership", m),
                delete("research_products | Grant", g),
                delete("research_products | Publication", p),
                delete("users | Team", team),
            ],
            "{backend:?}: {log}"
        );
        let gone = |v: &str| json!([v, "None"]);
        assert_eq!(
            entries[0]["changes"],
            json!({"id": gone(&m.to_string()), "role": gone("OW"),
                   "user": gone(&member.to_string()), "team": gone(&team.to_string())}),
            "{backend:?}"
        );
        assert_eq!(
            entries[1]["changes"]["amount"],
            gone("10.00"),
            "{backend:?}"
        );
        assert_eq!(entries[1]["changes"]["title"], gone("Going"), "{backend:?}");
        assert_eq!(entries[2]["changes"]["journal"], gone("J"), "{backend:?}");
        // The texts name the records as they were (the team is still there when they are
        // written).
        for text in [
            format!("Membership #{m} - x1 in Team #{team} - Team Two"),
            format!("Grant #{g} - Going"),
            format!("Publication #{p} - Paper"),
        ] {
            let text: String = url::form_urlencoded::byte_serialize(text.as_bytes()).collect();
            let found = ok(
                &w,
                "STAFF",
                "GET",
                &format!("/logs/audit/?action=2&object_repr={text}"),
                None,
                200,
            );
            assert_eq!(found["count"], 1, "{backend:?}: {text}");
        }
    }
}

fn notify(w: &World, user: i64, kind: &str, subject: &str, read: bool, time: &str) {
    let read = if read { "TRUE" } else { "FALSE" };
    w.site.sql(&format!(
        "INSERT INTO notifications_notification (time, read, subject, message_text, message_html, \
         metadata, notification_type, user_id) VALUES ('{time}', {read}, '{subject}', 'text of {subject}', \
         '<p>{subject}</p>', '{{\"request_id\": 7}}', '{kind}', {user})"
    ));
}

fn notification_id(w: &World, role: &str, subject: &str) -> i64 {
    let list = ok(
        w,
        role,
        "GET",
        &format!("/notifications/notifications/?subject={subject}"),
        None,
        200,
    );
    list["results"][0]["id"].as_i64().expect("notification id")
}

#[test]
fn notifications_and_preferences() {
    for backend in backends() {
        let w = World::new(backend, &[]);
        let mb = w.id("MB");
        notify(&w, mb, "GM", "welcome", true, "2025-03-01T10:00:00+00:00");
        notify(&w, mb, "RE", "expiring", false, "2025-03-02T10:00:00+00:00");
        notify(&w, mb, "RD", "expired", false, "2025-03-03T10:00:00+00:00");
        notify(
            &w,
            w.id("AD"),
            "GM",
            "hello-admin",
            false,
            "2025-03-04T10:00:00+00:00",
        );

        // Matrix (recipient = MB).
        let coll = "/notifications/notifications/";
        for method in ["GET", "HEAD", "OPTIONS"] {
            row(&w, method, coll, None, [401, 200, 200, 200, 200, 200]);
        }
        for method in ["POST", "PUT", "PATCH", "DELETE", "TRACE"] {
            row(&w, method, coll, None, [401, 405, 405, 405, 405, 405]);
        }
        let nid = notification_id(&w, "MB", "expiring");
        let item = format!("/notifications/notifications/{nid}/");
        for method in ["GET", "HEAD"] {
            row(&w, method, &item, None, [401, 403, 200, 403, 403, 403]);
        }
        row(&w, "OPTIONS", &item, None, [401, 200, 200, 200, 200, 200]);
        for method in ["POST", "PUT", "DELETE", "TRACE"] {
            row(
                &w,
                method,
                &item,
                Some(json!({"read": true})),
                [401, 405, 405, 405, 405, 405],
            );
        }
        row(
            &w,
            "PATCH",
            &item,
            Some(json!({"read": false})),
            [401, 403, 200, 403, 403, 403],
        );
        let missing = ok(
            &w,
            "MB",
            "GET",
            "/notifications/notifications/999999/",
            None,
            404,
        );
        assert_eq!(
            missing["detail"],
            "No Notification matches the given query."
        );

        // Visibility: own rows; staff all.
        let count = |role: &str, q: &str| {
            ok(&w, role, "GET", &format!("{coll}{q}"), None, 200)["count"]
                .as_i64()
                .unwrap_or(-1)
        };
        assert_eq!(
            [
                count("AUTH", ""),
                count("MB", ""),
                count("AD", ""),
                count("STAFF", "")
            ],
            [0, 3, 1, 4]
        );
        assert_eq!(count("MB", "?notification_type=RE"), 1);
        assert_eq!(count("MB", "?read=false"), 2);
        assert_eq!(
            count("MB", "?read=maybe"),
            3,
            "junk booleans disable the filter"
        );
        assert_eq!(count("MB", "?message_text__contains=text%20of%20exp"), 2);
        assert_eq!(count("STAFF", "?_search=admin"), 1);
        assert_eq!(
            count("STAFF", &format!("?user={mb}&time__gte=2025-03-02")),
            2
        );
        let e = ok(
            &w,
            "MB",
            "GET",
            &format!("{coll}?notification_type=XX"),
            None,
            400,
        );
        assert_eq!(
            e,
            json!({"notification_type": ["Select a valid choice. XX is not one of the available choices."]})
        );
        let first = ok(
            &w,
            "MB",
            "GET",
            &format!("{coll}?_order=-time&_limit=1"),
            None,
            200,
        );
        assert_eq!(first["results"][0]["subject"], "expired");

        // Representation: never message_text or metadata.
        let n = ok(&w, "MB", "GET", &item, None, 200);
        let mut keys: Vec<&str> = n
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "_user",
                "id",
                "message_html",
                "notification_type",
                "read",
                "subject",
                "time",
                "user"
            ]
        );
        assert_eq!(n["time"], "2025-03-02T10:00:00Z");
        assert_eq!(n["message_html"], "<p>expiring</p>");
        assert_eq!(n["_user"]["username"], "mb");

        // Only `read` changes.
        let p = ok(
            &w,
            "MB",
            "PATCH",
            &item,
            Some(json!({"read": true, "subject": "x", "user": w.id("AD")})),
            200,
        );
        assert_eq!(
            (p["read"].clone(), p["subject"].clone(), p["user"].clone()),
            (json!(true), json!("expiring"), json!(mb))
        );
        let e = ok(
            &w,
            "MB",
            "PATCH",
            &item,
            Some(json!({"read": "maybe"})),
            400,
        );
        assert_eq!(e, json!({"read": ["Must be a valid boolean."]}));
        let e = ok(&w, "MB", "PATCH", &item, Some(json!({"read": null})), 400);
        assert_eq!(e, json!({"read": ["This field may not be null."]}));
        assert_eq!(ok(&w, "MB", "GET", &item, None, 200)["read"], true);

        // Preferences: collection matrix; every role creates its own row once.
        let pcoll = "/notifications/preferences/";
        for method in ["GET", "HEAD", "OPTIONS"] {
            row(&w, method, pcoll, None, [401, 200, 200, 200, 200, 200]);
        }
        for method in ["PUT", "PATCH", "DELETE", "TRACE"] {
            row(&w, method, pcoll, None, [401, 405, 405, 405, 405, 405]);
        }
        assert_eq!(
            ok(&w, "MB", "GET", pcoll, None, 200)["count"],
            0,
            "no row before the first POST"
        );
        row(&w, "POST", pcoll, None, [401, 201, 201, 201, 201, 201]);
        row(
            &w,
            "POST",
            pcoll,
            Some(json!({})),
            [401, 400, 400, 400, 400, 400],
        );
        let e = ok(&w, "MB", "POST", pcoll, None, 400);
        assert_eq!(
            e,
            json!({"user": ["preference with this user already exists."]})
        );
        let mine = ok(&w, "MB", "GET", pcoll, None, 200);
        assert_eq!(mine["count"], 1);
        let pref = &mine["results"][0];
        assert_eq!(
            (
                pref["request_expiry_thresholds"].clone(),
                pref["notify_on_expiration"].clone(),
                pref["user"].clone()
            ),
            (json!([30, 14]), json!(true), json!(mb))
        );
        assert_eq!(pref["_user"]["id"], mb);
        assert_eq!(ok(&w, "STAFF", "GET", pcoll, None, 200)["count"], 5);
        let pid = pref["id"].as_i64().expect("preference id");
        let pitem = format!("/notifications/preferences/{pid}/");
        for method in ["GET", "HEAD"] {
            row(&w, method, &pitem, None, [401, 403, 200, 403, 403, 200]);
        }
        row(&w, "OPTIONS", &pitem, None, [401, 200, 200, 200, 200, 200]);
        for method in ["POST", "TRACE"] {
            row(&w, method, &pitem, None, [401, 405, 405, 405, 405, 405]);
        }
        row(
            &w,
            "PUT",
            &pitem,
            Some(json!({})),
            [401, 403, 200, 403, 403, 200],
        );
        row(
            &w,
            "PATCH",
            &pitem,
            Some(json!({"notify_on_expiration": true})),
            [401, 403, 200, 403, 403, 200],
        );
        assert_eq!(
            ok(
                &w,
                "MB",
                "GET",
                "/notifications/preferences/999999/",
                None,
                404
            )["detail"],
            "No Preference matches the given query."
        );

        // Values: any JSON thresholds; PUT keeps omitted keys; staff edits keep the owner.
        let p = ok(
            &w,
            "MB",
            "PATCH",
            &pitem,
            Some(json!({"request_expiry_thresholds": "abc"})),
            200,
        );
        assert_eq!(p["request_expiry_thresholds"], "abc");
        let p = ok(
            &w,
            "MB",
            "PUT",
            &pitem,
            Some(json!({"request_expiry_thresholds": [7, 3, 1]})),
            200,
        );
        assert_eq!(
            (
                p["request_expiry_thresholds"].clone(),
                p["notify_on_expiration"].clone()
            ),
            (json!([7, 3, 1]), json!(true))
        );
        let p = ok(
            &w,
            "STAFF",
            "PUT",
            &pitem,
            Some(json!({"notify_on_expiration": false})),
            200,
        );
        assert_eq!(
            (
                p["user"].clone(),
                p["notify_on_expiration"].clone(),
                p["request_expiry_thresholds"].clone()
            ),
            (json!(mb), json!(false), json!([7, 3, 1]))
        );
        let e = ok(
            &w,
            "MB",
            "PATCH",
            &pitem,
            Some(json!({"request_expiry_thresholds": null, "notify_on_expiration": "sometimes"})),
            400,
        );
        assert_eq!(
            e,
            json!({"request_expiry_thresholds": ["This field may not be null."],
                             "notify_on_expiration": ["Must be a valid boolean."]})
        );
        // `user`: the uniqueness error wins over the different-user rule; staff may name anyone.
        let e = ok(
            &w,
            "MB",
            "PATCH",
            &pitem,
            Some(json!({"user": w.id("AD")})),
            400,
        );
        assert_eq!(
            e,
            json!({"user": ["preference with this user already exists."]})
        );
        let e = ok(
            &w,
            "MB",
            "PATCH",
            &pitem,
            Some(json!({"user": w.id("X1")})),
            400,
        );
        assert_eq!(
            e,
            json!({"user": ["User field cannot be set to a different user than the request submitter."]})
        );
        let e = ok(
            &w,
            "AD",
            "POST",
            pcoll,
            Some(json!({"user": w.id("X2")})),
            400,
        );
        assert_eq!(
            e,
            json!({"user": ["User field cannot be set to a different user than the request submitter."]})
        );
        let e = ok(&w, "AD", "POST", pcoll, Some(json!({"user": 999999})), 400);
        assert_eq!(
            e,
            json!({"user": ["Invalid pk \"999999\" - object does not exist."]})
        );
        let x2 = ok(
            &w,
            "STAFF",
            "POST",
            pcoll,
            Some(json!({"user": w.id("X2"), "request_expiry_thresholds": {"a": 1}})),
            201,
        );
        assert_eq!(
            (x2["user"].clone(), x2["request_expiry_thresholds"].clone()),
            (json!(w.id("X2")), json!({"a": 1}))
        );
        // Delete restores the defaults: a new POST starts from them again.
        for (role, want) in ROLES.iter().zip([401, 403, 204, 403, 403, 204]) {
            let mine = ok(&w, "MB", "GET", pcoll, None, 200);
            let id = match mine["results"][0]["id"].as_i64() {
                Some(id) => id,
                None => ok(&w, "MB", "POST", pcoll, None, 201)["id"]
                    .as_i64()
                    .expect("id"),
            };
            let path = format!("/notifications/preferences/{id}/");
            assert_eq!(
                w.call(role, "DELETE", &path, None).status,
                want,
                "DELETE preference as {role}"
            );
        }
        let fresh = ok(&w, "MB", "POST", pcoll, Some(json!({"user": mb})), 201);
        assert_eq!(
            (
                fresh["request_expiry_thresholds"].clone(),
                fresh["notify_on_expiration"].clone()
            ),
            (json!([30, 14]), json!(true))
        );
    }
}

#[test]
fn stats_match_hand_computed_values_with_filters_and_scope() {
    for backend in backends() {
        let w = World::new(backend, &[]);
        let team = w.id("TEAM");
        let other = team_two(&w);
        for path in [
            "/stats/requests/",
            "/stats/grants/",
            "/stats/publications/",
            "/stats/notifications/",
        ] {
            for method in ["GET", "HEAD", "OPTIONS"] {
                row(&w, method, path, None, [401, 200, 200, 200, 200, 200]);
            }
            for method in ["POST", "PUT", "PATCH", "DELETE", "TRACE"] {
                row(&w, method, path, None, [401, 405, 405, 405, 405, 405]);
            }
        }

        // Grants. Team One: g1 upcoming, g2 active, g3 expired (ends today), g4 open-ended
        // (counted only in grant_count); agencies NSF, DOE, nsf. Team Two: g5 active.
        for (title, agency, amount, start, end, t) in [
            ("g1", "NSF", "100.10", day(10), None, team),
            ("g2", "NSF", "200.00", day(-10), Some(day(10)), team),
            ("g3", "DOE", "300.00", day(-100), Some(day(0)), team),
            ("g4", "nsf", "400.00", day(-5), None, team),
            ("g5", "NIH", "999.99", day(-1), Some(day(1)), other),
        ] {
            let body = json!({"title": title, "agency": agency, "amount": amount, "start_date": start,
                              "end_date": end, "team": t});
            ok(&w, "STAFF", "POST", "/research/grants/", Some(body), 201);
        }
        let grants =
            |role: &str, q: &str| ok(&w, role, "GET", &format!("/stats/grants/{q}"), None, 200);
        assert_eq!(
            grants("MB", ""),
            json!({"grant_count": 4, "upcoming_count": 1, "active_count": 1, "expired_count": 1, "agency_count": 3,
                   "funding_total": "1000.10", "funding_upcoming": "100.10", "funding_active": "200.00",
                   "funding_expired": "300.00", "funding_average": "250.02"})
        );
        assert_eq!(
            grants("STAFF", "?_order=grant_count&_search=zzz&_limit=1"),
            json!({"grant_count": 5, "upcoming_count": 1, "active_count": 2, "expired_count": 1, "agency_count": 4,
                   "funding_total": "2000.09", "funding_upcoming": "100.10", "funding_active": "1199.99",
                   "funding_expired": "300.00", "funding_average": "400.02"})
        );
        assert_eq!(
            grants("MB", "?agency=NSF"),
            json!({"grant_count": 2, "upcoming_count": 1, "active_count": 1, "expired_count": 0, "agency_count": 1,
                   "funding_total": "300.10", "funding_upcoming": "100.10", "funding_active": "200.00",
                   "funding_expired": "0.00", "funding_average": "150.05"})
        );
        // 1899.99 / 4 = 474.9975 → 475.00.
        let s = grants("STAFF", "?amount__gte=200");
        assert_eq!(
            (
                s["grant_count"].clone(),
                s["funding_total"].clone(),
                s["funding_average"].clone()
            ),
            (json!(4), json!("1899.99"), json!("475.00"))
        );
        let empty = json!({"grant_count": 0, "upcoming_count": 0, "active_count": 0, "expired_count": 0, "agency_count": 0,
                           "funding_total": "0.00", "funding_upcoming": "0.00", "funding_active": "0.00",
                           "funding_expired": "0.00", "funding_average": "0.00"});
        assert_eq!(grants("AUTH", ""), empty);
        assert_eq!(
            grants("MB", &format!("?team={other}")),
            empty,
            "filters cannot widen the scope"
        );
        let e = ok(
            &w,
            "MB",
            "GET",
            "/stats/grants/?start_date=bad&amount__lt=x",
            None,
            400,
        );
        assert_eq!(
            e,
            json!({"start_date": ["Enter a valid date."], "amount__lt": ["Enter a number."]})
        );
        let e = ok(&w, "MB", "GET", "/stats/grants/?team=999999", None, 400);
        assert_eq!(
            e,
            json!({"team": ["Select a valid choice. That choice is not one of the available choices."]})
        );
        // An unknown id comes in the same single 400 as the other filter errors, as on the
        // list (domain.md §2.4).
        let e = ok(
            &w,
            "MB",
            "GET",
            "/stats/grants/?team=999999&amount__lt=x",
            None,
            400,
        );
        assert_eq!(
            e,
            json!({"team": ["Select a valid choice. That choice is not one of the available choices."], "amount__lt": ["Enter a number."]})
        );
        assert_eq!(
            e,
            ok(
                &w,
                "MB",
                "GET",
                "/research/grants/?team=999999&amount__lt=x",
                None,
                400
            )
        );
        let e = ok(
            &w,
            "MB",
            "GET",
            "/stats/publications/?team=999999&submitted=bad",
            None,
            400,
        );
        assert_eq!(
            e,
            json!({"team": ["Select a valid choice. That choice is not one of the available choices."], "submitted": ["Enter a valid date."]})
        );

        // Publications. Team One: draft, submitted, accepted after 30 days, accepted after 1 day,
        // accepted without submission date. Team Two: accepted after 10 days.
        for (title, submitted, published, journal, t) in [
            ("p1", None, None, Some("J1"), team),
            ("p2", Some("2024-01-01"), None, Some("J1"), team),
            (
                "p3",
                Some("2024-01-01"),
                Some("2024-01-31"),
                Some("J2"),
                team,
            ),
            ("p4", Some("2024-02-01"), Some("2024-02-02"), None, team),
            ("p5", None, Some("2024-03-01"), Some("j2"), team),
            (
                "p6",
                Some("2024-01-01"),
                Some("2024-01-11"),
                Some("J3"),
                other,
            ),
        ] {
            let body = json!({"title": title, "submitted": submitted, "published": published, "journal": journal, "team": t});
            ok(
                &w,
                "STAFF",
                "POST",
                "/research/publications/",
                Some(body),
                201,
            );
        }
        let pubs = |role: &str, q: &str| {
            ok(
                &w,
                role,
                "GET",
                &format!("/stats/publications/{q}"),
                None,
                200,
            )
        };
        assert_eq!(
            pubs("MB", ""),
            json!({"publications_count": 5, "draft_count": 1, "submitted_count": 1, "accepted_count": 3,
                   "journals_count": 3, "review_average": "15 12:00:00"})
        );
        // (30 + 1 + 10) / 3 days = 13 days 16 hours.
        assert_eq!(
            pubs("STAFF", ""),
            json!({"publications_count": 6, "draft_count": 1, "submitted_count": 1, "accepted_count": 4,
                   "journals_count": 4, "review_average": "13 16:00:00"})
        );
        assert_eq!(
            pubs("MB", "?journal=J1"),
            json!({"publications_count": 2, "draft_count": 1, "submitted_count": 1, "accepted_count": 0,
                   "journals_count": 1, "review_average": null})
        );
        assert_eq!(
            pubs("MB", "?published__year=2024&submitted__isnull=false"),
            json!({"publications_count": 2, "draft_count": 0, "submitted_count": 0, "accepted_count": 2,
                   "journals_count": 1, "review_average": "15 12:00:00"})
        );
        assert_eq!(pubs("AUTH", "")["review_average"], Value::Null);
        assert_eq!(pubs("AUTH", "")["publications_count"], 0);

        // Notifications: MB has 3 (one read), AD 1 unread.
        let mb = w.id("MB");
        notify(&w, mb, "GM", "n1", true, "2025-03-01T10:00:00+00:00");
        notify(&w, mb, "RE", "n2", false, "2025-03-02T10:00:00+00:00");
        notify(&w, mb, "RD", "n3", false, "2025-03-03T10:00:00+00:00");
        notify(
            &w,
            w.id("AD"),
            "GM",
            "n4",
            false,
            "2025-03-04T10:00:00+00:00",
        );
        let notes = |role: &str, q: &str| {
            ok(
                &w,
                role,
                "GET",
                &format!("/stats/notifications/{q}"),
                None,
                200,
            )
        };
        assert_eq!(notes("MB", ""), json!({"total": 3, "unread": 2}));
        assert_eq!(notes("STAFF", ""), json!({"total": 4, "unread": 3}));
        assert_eq!(notes("AUTH", ""), json!({"total": 0, "unread": 0}));
        assert_eq!(
            notes("STAFF", "?notification_type=GM"),
            json!({"total": 2, "unread": 1})
        );
        assert_eq!(
            notes("STAFF", "?read=false"),
            json!({"total": 3, "unread": 3})
        );
        assert_eq!(
            notes("MB", "?time__gte=2025-03-02T00:00:00Z"),
            json!({"total": 2, "unread": 2})
        );
        let n2 = notification_id(&w, "MB", "n2");
        ok(
            &w,
            "MB",
            "PATCH",
            &format!("/notifications/notifications/{n2}/"),
            Some(json!({"read": true})),
            200,
        );
        assert_eq!(notes("MB", ""), json!({"total": 3, "unread": 1}));
        let e = ok(
            &w,
            "MB",
            "GET",
            "/stats/notifications/?notification_type=XX",
            None,
            400,
        );
        assert_eq!(
            e,
            json!({"notification_type": ["Select a valid choice. XX is not one of the available choices."]})
        );
        let e = ok(
            &w,
            "STAFF",
            "GET",
            "/stats/notifications/?notification_type=XX&user=999999",
            None,
            400,
        );
        assert_eq!(
            e,
            json!({"notification_type": ["Select a valid choice. XX is not one of the available choices."],
                   "user": ["Select a valid choice. That choice is not one of the available choices."]})
        );

        // Requests and allocations (no API here: seeded with SQL). D(n) = today + n days.
        w.site.sql("INSERT INTO allocations_cluster (name, enabled, access_mode) VALUES ('c1', TRUE, 'OP')");
        let requests = [
            // title, status, submitted, active, expire, team
            (
                "r1",
                "PD",
                format!("{}T06:00:00+00:00", day(-5)),
                None,
                None,
                team,
            ),
            (
                "r2",
                "AP",
                format!("{}T12:00:00+00:00", day(-10)),
                Some(day(5)),
                Some(day(100)),
                team,
            ),
            (
                "r3",
                "AP",
                format!("{}T00:00:00+00:00", day(-40)),
                Some(day(-30)),
                Some(day(0)),
                team,
            ),
            (
                "r4",
                "AP",
                format!("{}T18:00:00+00:00", day(-400)),
                Some(day(-390)),
                Some(day(-1)),
                team,
            ),
            (
                "r5",
                "DC",
                format!("{}T00:00:00+00:00", day(-3)),
                None,
                None,
                team,
            ),
            (
                "r6",
                "CR",
                format!("{}T00:00:00+00:00", day(-2)),
                None,
                None,
                team,
            ),
            (
                "r7",
                "AP",
                format!("{}T00:00:00+00:00", day(-50)),
                Some(day(-20)),
                Some(day(20)),
                other,
            ),
        ];
        let quoted = |d: &Option<String>| {
            d.as_ref()
                .map(|d| format!("'{d}'"))
                .unwrap_or_else(|| "NULL".into())
        };
        for (title, status, submitted, active, expire, t) in &requests {
            w.site.sql(&format!(
                "INSERT INTO allocations_allocationrequest (title, description, submitted, active, expire, status, \
                 submitter_id, team_id) VALUES ('{title}', 'd', '{submitted}', {}, {}, '{status}', {mb}, {t})",
                quoted(active),
                quoted(expire)
            ));
        }
        for (request, requested, awarded, fin) in [
            ("r1", 100, Some(50), None),
            ("r2", 200, Some(150), None),
            ("r3", 300, Some(250), Some(10)),
            ("r3", 50, None, None),
            ("r4", 400, Some(400), Some(380)),
            ("r5", 60, Some(10), None),
            ("r6", 70, None, None),
            ("r7", 1000, Some(900), None),
        ] {
            let n = |v: Option<i32>| v.map(|v| v.to_string()).unwrap_or_else(|| "NULL".into());
            w.site.sql(&format!(
                "INSERT INTO allocations_resourceallocation (requested, awarded, final, cluster_id, request_id) \
                 VALUES ({requested}, {}, {}, (SELECT id FROM allocations_cluster WHERE name = 'c1'), \
                 (SELECT id FROM allocations_allocationrequest WHERE title = '{request}'))",
                n(awarded),
                n(fin)
            ));
        }
        let reqs =
            |role: &str, q: &str| ok(&w, role, "GET", &format!("/stats/requests/{q}"), None, 200);
        // Team One. Pending days over rows with `active`: r2 14.5, r3 10, r4 9.25 → 11.25 → 11.
        // Active spans: 95, 30, 389 → 171.33 → 171.
        let team_one = reqs("MB", "");
        assert_eq!(
            team_one,
            json!({"request_count": 6, "request_pending_count": 1, "request_approved_count": 3,
                   "request_declined_count": 1, "request_upcoming_count": 1, "request_active_count": 1,
                   "request_expired_count": 1, "su_pending_total": 50.0, "su_declined_total": 10.0,
                   "su_approved_total": 800.0, "su_upcoming_total": 150.0, "su_active_total": 250.0,
                   "su_expired_total": 400.0, "su_requested_total": 1180.0, "su_awarded_total": 860.0,
                   "su_finalized_total": 390.0, "days_pending_average": 11.0, "days_active_average": 171.0})
        );
        assert!(team_one["su_pending_total"].is_f64() && team_one["days_pending_average"].is_f64());
        // Staff add r7: pending (33.75 + 30) / 4 = 15.94 → 15; spans (514 + 40) / 4 = 138.5 → 138.
        assert_eq!(
            reqs("STAFF", "?_order=request_count"),
            json!({"request_count": 7, "request_pending_count": 1, "request_approved_count": 4,
                   "request_declined_count": 1, "request_upcoming_count": 1, "request_active_count": 2,
                   "request_expired_count": 1, "su_pending_total": 50.0, "su_declined_total": 10.0,
                   "su_approved_total": 1700.0, "su_upcoming_total": 150.0, "su_active_total": 1150.0,
                   "su_expired_total": 400.0, "su_requested_total": 2180.0, "su_awarded_total": 1760.0,
                   "su_finalized_total": 390.0, "days_pending_average": 15.0, "days_active_average": 138.0})
        );
        assert_eq!(
            reqs("MB", "?status=AP"),
            json!({"request_count": 3, "request_pending_count": 0, "request_approved_count": 3,
                   "request_declined_count": 0, "request_upcoming_count": 1, "request_active_count": 1,
                   "request_expired_count": 1, "su_pending_total": 0.0, "su_declined_total": 0.0,
                   "su_approved_total": 800.0, "su_upcoming_total": 150.0, "su_active_total": 250.0,
                   "su_expired_total": 400.0, "su_requested_total": 950.0, "su_awarded_total": 800.0,
                   "su_finalized_total": 390.0, "days_pending_average": 11.0, "days_active_average": 171.0})
        );
        // Submitted in the last 15 days: r1, r2, r5, r6.
        assert_eq!(
            reqs("MB", &format!("?submitted__gte={}T00:00:00Z", day(-15))),
            json!({"request_count": 4, "request_pending_count": 1, "request_approved_count": 1,
                   "request_declined_count": 1, "request_upcoming_count": 1, "request_active_count": 0,
                   "request_expired_count": 0, "su_pending_total": 50.0, "su_declined_total": 10.0,
                   "su_approved_total": 150.0, "su_upcoming_total": 150.0, "su_active_total": 0.0,
                   "su_expired_total": 0.0, "su_requested_total": 430.0, "su_awarded_total": 210.0,
                   "su_finalized_total": 0.0, "days_pending_average": 14.0, "days_active_average": 95.0})
        );
        let nothing = json!({"request_count": 0, "request_pending_count": 0, "request_approved_count": 0,
                             "request_declined_count": 0, "request_upcoming_count": 0, "request_active_count": 0,
                             "request_expired_count": 0, "su_pending_total": 0.0, "su_declined_total": 0.0,
                             "su_approved_total": 0.0, "su_upcoming_total": 0.0, "su_active_total": 0.0,
                             "su_expired_total": 0.0, "su_requested_total": 0.0, "su_awarded_total": 0.0,
                             "su_finalized_total": 0.0, "days_pending_average": null, "days_active_average": null});
        assert_eq!(reqs("AUTH", ""), nothing);
        assert_eq!(reqs("MB", &format!("?team={other}")), nothing);
        let e = ok(
            &w,
            "MB",
            "GET",
            "/stats/requests/?status=XX&active__gt=x",
            None,
            400,
        );
        assert_eq!(
            e,
            json!({"status": ["Select a valid choice. XX is not one of the available choices."],
                             "active__gt": ["Enter a valid date."]})
        );
        let e = ok(
            &w,
            "MB",
            "GET",
            "/stats/requests/?submitter=999999",
            None,
            400,
        );
        assert_eq!(
            e,
            json!({"submitter": ["Select a valid choice. That choice is not one of the available choices."]})
        );
        let e = ok(
            &w,
            "MB",
            "GET",
            "/stats/requests/?submitter=999999&status=XX",
            None,
            400,
        );
        assert_eq!(
            e,
            json!({"submitter": ["Select a valid choice. That choice is not one of the available choices."],
                   "status": ["Select a valid choice. XX is not one of the available choices."]})
        );

        // Scope includes inactive teams the caller belongs to (lists and stats alike).
        ok(
            &w,
            "STAFF",
            "PATCH",
            &format!("/users/teams/{team}/"),
            Some(json!({"is_active": false})),
            200,
        );
        assert_eq!(grants("MB", "")["grant_count"], 4);
        assert_eq!(reqs("MB", "")["request_count"], 6);
        assert_eq!(
            ok(&w, "MB", "GET", "/research/publications/", None, 200)["count"],
            5
        );
    }
}
