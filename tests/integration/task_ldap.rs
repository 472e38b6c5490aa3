//! The LDAP sync task through `keystone ldap sync` against a real `slapd` (the fixture of
//! `ldap.rs`), on both backends: accounts created with the mapped attributes, a second run
//! changing nothing, attribute changes, removed users deactivated (or deleted with
//! `ldap.purge_removed`), local accounts untouched, the mass-deactivation safety valve, and
//! the recorded task results. Also the log-cleanup task through `keystone task run --inline`.

use crate::common::*;
use crate::ldap::{Slapd, slapd_available};
use std::process::{Command, Output, Stdio};

const PEOPLE: &str = "ou=people,dc=example,dc=org";
/// The fixture's directory manager (tests/integration/ldap.rs).
const ADMIN_DN: &str = "cn=admin,dc=example,dc=org";
const ADMIN_PASSWORD: &str = "admin-secret";
const LDAP_SYNC: &str = "apps.users.tasks.ldap_update_users";
const LOCAL_PASSWORD: &str = "Str0ng-Pass-99";

/// Rows of a query returning one text column, run on the site's database (assertions only).
pub(crate) fn query(site: &Site, sql: &str) -> Vec<String> {
    let target = match site.backend {
        Backend::Sqlite => format!("sqlite://{}", site.path("state/keystone.db").display()),
        Backend::Postgres => {
            let admin = postgres_admin_url();
            let base = admin
                .rsplit_once('/')
                .map(|(b, _)| b.to_string())
                .unwrap_or(admin);
            format!("{base}/{}", site.pg_database.clone().unwrap_or_default())
        }
    };
    let sql = sql.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            use sqlx::Connection;
            if target.starts_with("sqlite:") {
                let mut c = sqlx::SqliteConnection::connect(&target).await?;
                sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&mut c)
                    .await
            } else {
                let mut c = sqlx::PgConnection::connect(&target).await?;
                sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&mut c)
                    .await
            }
        })
    })
    .join()
    .expect("query thread")
    .expect("test query")
}

/// One line per account, sorted: `username|first|last|email|department|active|ldap|password`.
fn accounts(site: &Site) -> Vec<String> {
    let mut rows = query(
        site,
        "SELECT username || '|' || COALESCE(first_name, '-') || '|' || COALESCE(last_name, '-') \
         || '|' || COALESCE(email, '-') || '|' || COALESCE(department, '-') || '|' || \
         CASE WHEN is_active THEN 'active' ELSE 'inactive' END || '|' || \
         CASE WHEN is_ldap_user THEN 'ldap' ELSE 'local' END || '|' || \
         CASE WHEN password LIKE '!%' THEN 'unusable' ELSE 'usable' END FROM users_user",
    );
    rows.sort();
    rows
}

/// `status|periodic_task_name|result` of every LDAP sync run, oldest first.
fn sync_results(site: &Site) -> Vec<String> {
    query(
        site,
        &format!(
            "SELECT status || '|' || COALESCE(periodic_task_name, '-') || '|' || \
             COALESCE(result, '-') FROM django_celery_results_taskresult \
             WHERE task_name = '{LDAP_SYNC}' ORDER BY id"
        ),
    )
}

/// A migrated site syncing from the fixture's ou=people, with a local account `carol` and a
/// local account `bob` that the directory also lists.
fn site_for(backend: Backend, slapd: &Slapd, extra: &[(&str, &str)]) -> Site {
    let mut site = Site::new(backend);
    site.set(
        "AUTH_LDAP_SERVER_URI",
        &format!("ldap://127.0.0.1:{}", slapd.port),
    )
    .set("AUTH_LDAP_START_TLS", "false")
    .set("AUTH_LDAP_USER_SEARCH", PEOPLE)
    .set("AUTH_LDAP_USER_FILTER", "(objectClass=inetOrgPerson)")
    .set(
        "AUTH_LDAP_ATTR_MAP",
        "first_name=givenName,last_name=sn,email=mail,department=departmentNumber",
    );
    for (k, v) in extra {
        site.set(k, v);
    }
    site.migrate();
    for name in ["carol", "bob"] {
        let out = site.run_with_input(
            &[
                "user",
                "create",
                "--username",
                name,
                "--no-input",
                "--password-stdin",
            ],
            &format!("{LOCAL_PASSWORD}\n"),
        );
        assert!(out.status.success(), "user create: {}", stderr(&out));
    }
    site
}

/// Applies an LDIF change record to the fixture's directory as its manager.
fn ldap_change(slapd: &Slapd, ldif: &str) {
    use std::io::Write;
    let mut child = Command::new("ldapmodify")
        .args(["-x", "-H", &format!("ldap://127.0.0.1:{}", slapd.port)])
        .args(["-D", ADMIN_DN, "-w", ADMIN_PASSWORD])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ldapmodify");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(ldif.as_bytes()).expect("write ldif");
    }
    let out = child.wait_with_output().expect("ldapmodify output");
    assert!(
        out.status.success(),
        "ldapmodify failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
}

fn delete_entry(slapd: &Slapd, uid: &str) {
    ldap_change(
        slapd,
        &format!("dn: uid={uid},{PEOPLE}\nchangetype: delete\n"),
    );
}

fn sync(site: &Site, args: &[&str]) -> Output {
    let mut all = vec!["ldap", "sync"];
    all.extend_from_slice(args);
    site.run(&all)
}

fn assert_summary(out: &Output, expected: &str) {
    assert!(
        out.status.success(),
        "ldap sync failed ({:?}): {}{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
    assert_eq!(stdout(out), format!("{expected}\n"), "{}", stderr(out));
}

#[test]
fn ldap_sync_creates_updates_and_deactivates_accounts() {
    if !slapd_available() {
        return;
    }
    for backend in backends() {
        let slapd = Slapd::start();
        let site = site_for(backend, &slapd, &[]);

        // alice and a*b(c) are new; the local bob becomes an LDAP account; the entry without
        // a uid is skipped; carol (not in the directory) stays local.
        assert_summary(&sync(&site, &[]), "created 2, updated 1, deactivated 0");
        assert_eq!(
            accounts(&site),
            [
                "a*b(c)|Star|Asterisk|star@example.org|-|active|ldap|unusable",
                "alice|Alice|Anders|alice@example.org|Physics|active|ldap|unusable",
                "bob|Bjørn|Brown|bob@example.org|-|active|ldap|usable",
                "carol|-|-|-|-|active|local|usable",
            ],
            "{backend:?}"
        );

        // Idempotent: the same directory changes nothing.
        let before = accounts(&site);
        assert_summary(&sync(&site, &[]), "created 0, updated 0, deactivated 0");
        assert_eq!(accounts(&site), before);

        // An attribute change updates exactly that account. With alice's departmentNumber
        // gone no entry carries a department any more, so that field is left as it was.
        ldap_change(
            &slapd,
            &format!(
                "dn: uid=alice,{PEOPLE}\nchangetype: modify\nreplace: sn\nsn: Andersson\n-\n\
                 delete: departmentNumber\n"
            ),
        );
        assert_summary(&sync(&site, &[]), "created 0, updated 1, deactivated 0");
        assert!(accounts(&site).contains(
            &"alice|Alice|Andersson|alice@example.org|Physics|active|ldap|unusable".into()
        ));

        // A user removed from the directory is deactivated, not deleted; local carol stays.
        delete_entry(&slapd, "bob");
        assert_summary(&sync(&site, &[]), "created 0, updated 0, deactivated 1");
        let now = accounts(&site);
        assert!(now.contains(&"bob|Bjørn|Brown|bob@example.org|-|inactive|ldap|usable".into()));
        assert!(now.contains(&"carol|-|-|-|-|active|local|usable".into()));

        // Coming back does not reactivate.
        ldap_change(
            &slapd,
            &format!(
                "dn: uid=bob,{PEOPLE}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: bob\n\
                 cn: bob\ngivenName:: QmrDuHJu\nsn: Brown\nmail: bob@example.org\n"
            ),
        );
        assert_summary(&sync(&site, &[]), "created 0, updated 0, deactivated 0");
        assert!(
            accounts(&site)
                .contains(&"bob|Bjørn|Brown|bob@example.org|-|inactive|ldap|usable".into())
        );

        // Every run is recorded as a manual (non-periodic) successful run.
        assert_eq!(
            sync_results(&site),
            vec!["SUCCESS|-|null".to_string(); 5],
            "{backend:?}"
        );
    }
}

#[test]
fn ldap_sync_refuses_mass_deactivation_and_purges_when_asked() {
    if !slapd_available() {
        return;
    }
    for backend in backends() {
        let slapd = Slapd::start();
        let site = site_for(backend, &slapd, &[("KEYSTONE_LDAP__PURGE_REMOVED", "true")]);
        assert_summary(
            &sync(&site, &[]),
            "created 2, updated 1, deactivated 0, deleted 0",
        );
        // alice submitted a request: her account cannot be deleted, only deactivated.
        site.sql(
            "INSERT INTO users_team (name, slug) VALUES ('Team', 'team');
             INSERT INTO allocations_allocationrequest (title, description, status, submitter_id, team_id)
             SELECT 'Request', 'Text', 'PD', u.id, t.id FROM users_user u, users_team t
             WHERE u.username = 'alice';",
        );

        // Two of three active LDAP accounts leaving is more than half: nothing changes.
        delete_entry(&slapd, "alice");
        delete_entry(&slapd, "bob");
        let before = accounts(&site);
        let out = sync(&site, &[]);
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        let err = stderr(&out);
        assert!(err.contains("LDAP sync failed: "), "{err}");
        assert!(err.contains("2 of 3 active"), "{err}");
        assert_eq!(stdout(&out), "");
        assert_eq!(accounts(&site), before);
        let results = sync_results(&site);
        assert!(
            results[1].starts_with("FAILURE|-|") && results[1].contains("SyncAborted"),
            "{results:?}"
        );

        // --force applies it: bob (referenced by nothing) is deleted, alice deactivated.
        assert_summary(
            &sync(&site, &["--force"]),
            "created 0, updated 0, deactivated 1, deleted 1",
        );
        let now = accounts(&site);
        assert!(!now.iter().any(|a| a.starts_with("bob|")), "{now:?}");
        assert!(now.contains(
            &"alice|Alice|Anders|alice@example.org|Physics|inactive|ldap|unusable".into()
        ));
        assert!(now.contains(&"carol|-|-|-|-|active|local|usable".into()));

        // An empty directory is refused even when any fraction is allowed.
        delete_entry(&slapd, "a*b(c)");
        let out = site
            .command(&["ldap", "sync"])
            .env("KEYSTONE_LDAP__MAX_DEACTIVATE_FRACTION", "1")
            .output()
            .expect("run keystone");
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        assert!(
            stderr(&out).contains("returned no users"),
            "{}",
            stderr(&out)
        );
        assert!(accounts(&site).iter().any(|a| a.starts_with("a*b(c)|")));
    }
}

#[test]
fn ldap_sync_without_ldap_does_nothing() {
    let site = Site::new(Backend::Sqlite);
    site.migrate();
    let out = site.run_with_input(
        &[
            "user",
            "create",
            "--username",
            "carol",
            "--no-input",
            "--password-stdin",
        ],
        &format!("{LOCAL_PASSWORD}\n"),
    );
    assert!(out.status.success(), "user create: {}", stderr(&out));
    let out = sync(&site, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "LDAP is not configured (ldap.server_uri is empty): nothing was done.\n"
    );
    assert_eq!(accounts(&site), ["carol|-|-|-|-|active|local|usable"]);
    assert_eq!(sync_results(&site), ["SUCCESS|-|null"]);
}

#[test]
fn ldap_sync_reports_an_unreachable_server() {
    let mut site = Site::new(Backend::Sqlite);
    site.set(
        "AUTH_LDAP_SERVER_URI",
        &format!("ldap://127.0.0.1:{}", free_port()),
    )
    .set("AUTH_LDAP_START_TLS", "false")
    .set("AUTH_LDAP_USER_SEARCH", PEOPLE)
    .set("KEYSTONE_LDAP__TIMEOUT", "2");
    site.migrate();
    let out = sync(&site, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.lines()
            .any(|l| l.starts_with("LDAP sync failed: ") && l.contains("not reachable")),
        "{err}"
    );
    assert_eq!(stdout(&out), "");
    let results = sync_results(&site);
    assert_eq!(results.len(), 1);
    assert!(
        results[0].starts_with("FAILURE|-|") && results[0].contains("SERVER_DOWN"),
        "{results:?}"
    );

    // --force needs a run here; it cannot go through the queue.
    let out = sync(&site, &["--queue", "--force"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn log_cleanup_deletes_what_is_past_its_retention() {
    for backend in backends() {
        let mut site = Site::new(backend);
        site.set("KEYSTONE_LOGGING__REQUEST_RETENTION", "86400")
            .set("KEYSTONE_LOGGING__AUDIT_RETENTION", "0")
            .set("KEYSTONE_LOGGING__TASK_RETENTION", "86400");
        site.migrate();
        let (old, recent) = match backend {
            Backend::Sqlite => (
                "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '-2 days')",
                "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '-1 hours')",
            ),
            Backend::Postgres => ("now() - interval '2 days'", "now() - interval '1 hour'"),
        };
        site.sql(&format!(
            "INSERT INTO logging_requestlog (method, endpoint, response_code, timestamp) VALUES
               ('GET', '/old/', 200, {old}), ('GET', '/recent/', 200, {recent});
             INSERT INTO auditlog_logentry (content_type, object_pk, object_repr, action, timestamp)
               VALUES ('users | User', '1', 'old', 0, {old}), ('users | User', '2', 'recent', 0, {recent});
             INSERT INTO django_celery_results_taskresult (task_id, task_name, status, date_done)
               VALUES ('old-task', 'x', 'SUCCESS', {old}), ('recent-task', 'x', 'SUCCESS', {recent});"
        ));
        let out = site.run(&["task", "run", "log-cleanup", "--inline"]);
        assert!(
            out.status.success(),
            "{backend:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        assert_eq!(
            query(&site, "SELECT endpoint FROM logging_requestlog ORDER BY id"),
            ["/recent/"]
        );
        // Audit retention 0 keeps everything.
        assert_eq!(
            query(
                &site,
                "SELECT object_repr FROM auditlog_logentry ORDER BY id"
            ),
            ["old", "recent"]
        );
        let mut tasks = query(
            &site,
            "SELECT task_id || '|' || COALESCE(task_name, '-') || '|' || status \
             FROM django_celery_results_taskresult ORDER BY id",
        );
        // The cleanup run records its own result.
        let own = tasks.pop().expect("the cleanup's own row");
        assert!(
            own.ends_with("|apps.logging.tasks.clear_log_records|SUCCESS"),
            "{own}"
        );
        assert_eq!(tasks, ["recent-task|x|SUCCESS"], "{backend:?}");
    }
}
