//! `keystone seed` (operations.md §4.9): demo data within the requested sizes on both
//! backends, usable through the API (attachments included), identical for the same `--seed`
//! and `--as-of`, and usage errors for bad ranges.

use crate::common::*;
use crate::task_ldap::query;
use std::collections::BTreeMap;

const SMALL: &[&str] = &[
    "--n-staff",
    "3",
    "--n-clusters",
    "2",
    "--n-teams",
    "3",
    "--n-team-members",
    "2",
    "3",
    "--n-team-grants",
    "1",
    "2",
    "--n-team-pubs",
    "1",
    "2",
    "--n-team-reqs",
    "1",
    "3",
    "--n-req-clusters",
    "1",
    "5",
    "--n-req-grants",
    "1",
    "1",
    "--n-req-pubs",
    "1",
    "1",
    "--n-req-attachments",
    "1",
    "1",
    "--n-req-comments",
    "0",
    "3",
    "--n-req-reviewers",
    "2",
    "9",
    "--n-user-notifications",
    "1",
    "2",
];

const PROGRESS: &str = "Generating mock data:
  Generating staff users... OK
  Generating clusters... OK
  Generating teams... OK
  Generating grants... OK
  Generating publications... OK
  Generating allocation requests... OK
  Generating notifications... OK
";

fn seed(site: &Site, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["seed"];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(extra);
    site.run(&args)
}

/// `COUNT(*)` of a query's rows.
fn count(site: &Site, from: &str) -> usize {
    let n = query(site, &format!("SELECT CAST(COUNT(*) AS TEXT) FROM {from}"));
    n.first().and_then(|v| v.parse().ok()).expect("a count")
}

/// For each group, the number of rows: `SELECT CAST(COUNT(*) AS TEXT) ... GROUP BY`.
fn counts_per(site: &Site, sql: &str) -> Vec<usize> {
    query(site, sql)
        .iter()
        .map(|v| v.parse().expect("a count"))
        .collect()
}

fn all_within(counts: &[usize], min: usize, max: usize) -> bool {
    counts.iter().all(|n| (min..=max).contains(n))
}

#[test]
fn seed_fills_both_backends_within_the_requested_sizes() {
    for backend in backends() {
        let site = Site::new(backend);
        site.migrate();
        let out = seed(&site, &["--seed", "42"]);
        assert!(out.status.success(), "{backend:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), PROGRESS);

        assert_eq!(count(&site, "users_user WHERE is_staff"), 3);
        assert_eq!(count(&site, "allocations_cluster"), 2);
        assert_eq!(count(&site, "users_team"), 3);
        let members = counts_per(
            &site,
            "SELECT CAST(COUNT(*) AS TEXT) FROM users_membership GROUP BY team_id",
        );
        assert_eq!(members.len(), 3);
        assert!(all_within(&members, 2, 3), "{members:?}");
        assert_eq!(
            count(
                &site,
                "users_membership m JOIN users_user u ON u.id = m.user_id WHERE u.is_staff"
            ),
            0,
            "team members are not staff"
        );
        assert_eq!(
            counts_per(
                &site,
                "SELECT CAST(COUNT(*) AS TEXT) FROM users_membership WHERE role = 'OW' GROUP BY team_id"
            )
            .len(),
            3,
            "every team has an owner"
        );
        let grants = counts_per(
            &site,
            "SELECT CAST(COUNT(*) AS TEXT) FROM research_products_grant GROUP BY team_id",
        );
        assert!(grants.len() == 3 && all_within(&grants, 1, 2), "{grants:?}");
        let requests = counts_per(
            &site,
            "SELECT CAST(COUNT(*) AS TEXT) FROM allocations_allocationrequest GROUP BY team_id",
        );
        assert!(
            requests.len() == 3 && all_within(&requests, 1, 3),
            "{requests:?}"
        );
        let n_requests: usize = requests.iter().sum();

        // Per request: allocations on distinct clusters, capped by the 2 clusters; reviewers
        // capped by the 3 staff; one attachment; 0-3 comments.
        let allocations = counts_per(
            &site,
            "SELECT CAST(COUNT(DISTINCT cluster_id) AS TEXT) FROM allocations_resourceallocation \
             GROUP BY request_id",
        );
        assert!(
            allocations.len() == n_requests && all_within(&allocations, 1, 2),
            "{allocations:?}"
        );
        assert_eq!(
            count(&site, "allocations_resourceallocation"),
            allocations.iter().sum::<usize>()
        );
        let assignees = counts_per(
            &site,
            "SELECT CAST(COUNT(*) AS TEXT) FROM allocations_allocationrequest_assignees a \
             JOIN users_user u ON u.id = a.user_id WHERE u.is_staff GROUP BY allocationrequest_id",
        );
        assert!(
            assignees.len() == n_requests && all_within(&assignees, 2, 3),
            "{assignees:?}"
        );
        // Non-pending requests have one review per assignee, with the request's status.
        assert_eq!(
            count(
                &site,
                "allocations_allocationreview v JOIN allocations_allocationrequest r \
                 ON r.id = v.request_id WHERE v.status <> r.status OR r.status = 'PD'"
            ),
            0
        );
        assert_eq!(
            count(&site, "allocations_allocationreview"),
            count(
                &site,
                "allocations_allocationrequest_assignees a JOIN allocations_allocationrequest r \
                 ON r.id = a.allocationrequest_id WHERE r.status <> 'PD'"
            )
        );
        assert_eq!(count(&site, "allocations_attachment"), n_requests);
        assert_eq!(
            count(
                &site,
                "allocations_comment c JOIN users_user u ON u.id = c.user_id \
                 WHERE c.private AND NOT u.is_staff"
            ),
            0,
            "only staff comments are private"
        );
        // Grants and publications attached to a request are the team's own.
        assert_eq!(
            count(
                &site,
                "allocations_allocationrequest_grants l JOIN allocations_allocationrequest r \
                 ON r.id = l.allocationrequest_id JOIN research_products_grant g ON g.id = l.grant_id \
                 WHERE g.team_id <> r.team_id"
            ),
            0
        );
        let notifications = counts_per(
            &site,
            "SELECT CAST(COUNT(n.id) AS TEXT) FROM users_user u LEFT JOIN notifications_notification n \
             ON n.user_id = u.id WHERE NOT u.is_staff GROUP BY u.id",
        );
        assert!(all_within(&notifications, 1, 2), "{notifications:?}");
        assert_eq!(
            count(&site, "notifications_preference"),
            count(&site, "users_user WHERE NOT is_staff")
        );
        assert_eq!(
            count(&site, "users_user WHERE password NOT LIKE '!%'"),
            0,
            "seeded accounts cannot log in"
        );

        // Every attachment's file exists under upload.dir.
        for file in query(&site, "SELECT file FROM allocations_attachment") {
            assert!(file.starts_with("allocations/"), "{file}");
            assert!(site.path("state/media").join(&file).is_file(), "{file}");
        }

        // Seeding again adds a second data set next to the first (new names, no conflicts).
        let users = count(&site, "users_user");
        let out = seed(&site, &["--seed", "42"]);
        assert!(out.status.success(), "{backend:?}: {}", stderr(&out));
        assert_eq!(count(&site, "users_user"), users * 2);
        assert_eq!(count(&site, "users_team"), 6);
    }
}

#[test]
fn seeded_data_is_served_by_the_api() {
    let site = Site::new(Backend::Sqlite);
    site.migrate();
    let out = seed(&site, &["--seed", "5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = site.run_with_input(
        &[
            "user",
            "create",
            "--username",
            "admin",
            "--superuser",
            "--no-input",
            "--password-stdin",
        ],
        "Str0ng-Pass-99\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = site.run(&["token", "create", "admin", "--name", "tests"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let auth = format!("Token {}", stdout(&out).trim());
    let web = site.serve("web", &[]);
    let get = |path: &str| {
        let r = web.request("GET", path, &[("Authorization", auth.as_str())], b"");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r.json()
    };
    for (path, table) in [
        ("/users/teams/", "users_team"),
        ("/users/users/", "users_user"),
        ("/users/memberships/", "users_membership"),
        ("/allocations/clusters/", "allocations_cluster"),
        ("/allocations/requests/", "allocations_allocationrequest"),
        ("/allocations/reviews/", "allocations_allocationreview"),
        (
            "/allocations/allocations/",
            "allocations_resourceallocation",
        ),
        ("/allocations/attachments/", "allocations_attachment"),
        ("/allocations/comments/", "allocations_comment"),
        ("/research/grants/", "research_products_grant"),
        ("/research/publications/", "research_products_publication"),
        ("/notifications/preferences/", "notifications_preference"),
    ] {
        let page = get(path);
        assert_eq!(
            page["count"].as_u64(),
            Some(count(&site, table) as u64),
            "{path}"
        );
    }
    let team = &get("/users/teams/")["results"][0];
    assert!(!team["slug"].as_str().unwrap_or("").is_empty(), "{team}");
    let request = &get("/allocations/requests/")["results"][0];
    assert!(request["title"].as_str().is_some_and(|t| !t.is_empty()));

    // An attachment downloads with the content written to upload.dir.
    let attachment = &get("/allocations/attachments/")["results"][0];
    let id = attachment["id"].as_i64().expect("attachment id");
    let file = attachment["file"].as_str().expect("file").to_string();
    let r = web.request(
        "GET",
        &format!("/allocations/attachments/{id}/download/"),
        &[("Authorization", auth.as_str())],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let on_disk = std::fs::read_to_string(site.path("state/media").join(&file)).expect("file");
    assert_eq!(r.text(), on_disk);
}

/// The main tables, one text line per row, ordered by id (every column but none dropped:
/// seeded timestamps derive from `--as-of`, not the clock).
fn dump(site: &Site) -> BTreeMap<&'static str, Vec<String>> {
    const TABLES: &[(&str, &str)] = &[
        (
            "users_user",
            "username, password, first_name, last_name, email, department, role, is_active, \
             is_staff, is_superuser, is_ldap_user, date_joined, last_login",
        ),
        ("users_team", "name, slug, is_active"),
        ("users_membership", "role, user_id, team_id"),
        (
            "allocations_cluster",
            "name, description, enabled, access_mode",
        ),
        (
            "research_products_grant",
            "title, agency, pi, amount, grant_number, start_date, end_date, description, team_id",
        ),
        (
            "research_products_publication",
            "title, abstract, published, submitted, journal, doi, volume, issue, team_id",
        ),
        (
            "allocations_allocationrequest",
            "title, description, submitted, active, expire, status, submitter_id, team_id",
        ),
        (
            "allocations_allocationrequest_assignees",
            "allocationrequest_id, user_id",
        ),
        (
            "allocations_allocationrequest_grants",
            "allocationrequest_id, grant_id",
        ),
        (
            "allocations_allocationrequest_publications",
            "allocationrequest_id, publication_id",
        ),
        (
            "allocations_allocationreview",
            "status, submitted, request_id, reviewer_id",
        ),
        (
            "allocations_resourceallocation",
            "requested, awarded, final, cluster_id, request_id",
        ),
        ("allocations_attachment", "file, name, uploaded, request_id"),
        (
            "allocations_comment",
            "content, created, private, user_id, request_id",
        ),
        (
            "notifications_notification",
            "time, read, subject, message_text, message_html, metadata, notification_type, user_id",
        ),
        (
            "notifications_preference",
            "request_expiry_thresholds, notify_on_expiration, user_id",
        ),
    ];
    TABLES
        .iter()
        .map(|(table, columns)| {
            let row = columns
                .split(", ")
                .map(|c| format!("COALESCE(CAST({c} AS TEXT), '<null>')"))
                .collect::<Vec<_>>()
                .join(" || '|' || ");
            let rows = query(
                site,
                &format!("SELECT CAST(id AS TEXT) || '|' || {row} FROM {table} ORDER BY id"),
            );
            (*table, rows)
        })
        .collect()
}

#[test]
fn the_same_seed_gives_the_same_data() {
    let run = |seed: &str| {
        let site = Site::new(Backend::Sqlite);
        site.migrate();
        let out = seed_with(&site, seed);
        assert!(out.status.success(), "{}", stderr(&out));
        let files: BTreeMap<String, String> =
            query(&site, "SELECT file FROM allocations_attachment")
                .into_iter()
                .map(|f| {
                    let content =
                        std::fs::read_to_string(site.path("state/media").join(&f)).expect("file");
                    (f, content)
                })
                .collect();
        (dump(&site), files)
    };
    let (first, first_files) = run("7");
    let (second, second_files) = run("7");
    assert!(first["users_user"].len() > 3);
    assert!(!first["notifications_notification"].is_empty());
    for (table, rows) in &first {
        assert_eq!(rows, &second[table], "{table}");
    }
    assert_eq!(first_files, second_files);
    let (other, _) = run("8");
    assert_ne!(first["users_user"], other["users_user"]);
}

fn seed_with(site: &Site, seed_value: &str) -> std::process::Output {
    seed(site, &["--seed", seed_value, "--as-of", "2026-01-15"])
}

#[test]
fn bad_arguments_are_usage_errors() {
    let site = Site::new(Backend::Sqlite);
    site.migrate();
    for args in [
        &["seed", "--n-team-members", "5", "3"][..],
        &["seed", "--n-req-jobs", "9", "0"],
        &["seed", "--n-team-members", "3"],
        &["seed", "--n-staff", "-1"],
        &["seed", "--n-teams", "many"],
        &["seed", "--as-of", "yesterday"],
        &["seed", "--no-such-option"],
        &["genseeddata", "--n-req-comments", "4", "1"],
    ] {
        let out = site.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "", "{args:?}");
    }
    let out = site.run(&["seed", "--n-team-members", "5", "3"]);
    assert!(
        stderr(&out).contains("--n-team-members"),
        "{}",
        stderr(&out)
    );
    // Nothing was written by the refused runs.
    assert_eq!(count(&site, "users_user"), 0);

    // The hidden upstream name works like `seed`.
    let out = site.run(&[
        "genseeddata",
        "--seed",
        "1",
        "--n-staff",
        "1",
        "--n-teams",
        "1",
        "--n-clusters",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), PROGRESS);
    assert_eq!(count(&site, "users_team"), 1);
}
