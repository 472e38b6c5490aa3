//! Expiry notices (operations.md §2.8–§2.10) and `keystone templates render` (§4.7), on both
//! backends: the real binary runs the sweeps inline and talks SMTP to a capture server in this
//! test, which records each message as a mail client would receive it.

use crate::common::*;
use chrono::{Duration, NaiveDate, Utc};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

// ------------------------------------------------------------------------------------------
// A small SMTP server that captures messages
// ------------------------------------------------------------------------------------------

/// One message as received: envelope and the raw RFC 5322 data.
#[derive(Debug, Clone)]
struct Captured {
    mail_from: String,
    rcpt_to: Vec<String>,
    data: String,
}

impl Captured {
    fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(self.data.as_bytes())
            .unwrap_or_else(|| panic!("unparseable message:\n{}", self.data))
    }

    fn subject(&self) -> String {
        self.parsed().subject().unwrap_or_default().to_string()
    }

    fn text(&self) -> String {
        self.parsed()
            .body_text(0)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    fn html(&self) -> String {
        self.parsed()
            .body_html(0)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }
}

/// Speaks EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP and QUIT on a loopback port. RCPT to an
/// address starting with `reject` is refused with 550.
struct SmtpCapture {
    port: u16,
    messages: Arc<Mutex<Vec<Captured>>>,
    stop: Arc<AtomicBool>,
}

impl SmtpCapture {
    fn start() -> SmtpCapture {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind SMTP capture");
        let port = listener.local_addr().expect("address").port();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (messages.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let m = m.clone();
                    std::thread::spawn(move || {
                        let _ = smtp_session(stream, &m);
                    });
                }
            }
        });
        SmtpCapture {
            port,
            messages,
            stop,
        }
    }

    fn all(&self) -> Vec<Captured> {
        self.messages.lock().expect("messages").clone()
    }

    fn clear(&self) {
        self.messages.lock().expect("messages").clear();
    }

    /// Messages whose envelope recipient is `to`.
    fn to(&self, to: &str) -> Vec<Captured> {
        self.all()
            .into_iter()
            .filter(|m| m.rcpt_to.iter().any(|r| r == to))
            .collect()
    }
}

impl Drop for SmtpCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn angle(arg: &str) -> String {
    let a = arg.trim();
    let a = a.split_whitespace().next().unwrap_or("");
    a.trim_start_matches('<').trim_end_matches('>').to_string()
}

fn smtp_session(stream: TcpStream, store: &Mutex<Vec<Captured>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    out.write_all(b"220 capture.test ESMTP test capture\r\n")?;
    let mut from = String::new();
    let mut to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end_matches(['\r', '\n']).to_string();
        let upper = cmd.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            out.write_all(b"250-capture.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")?;
        } else if upper.starts_with("HELO") {
            out.write_all(b"250 capture.test\r\n")?;
        } else if upper.starts_with("MAIL FROM:") {
            from = angle(&cmd[10..]);
            to.clear();
            out.write_all(b"250 2.1.0 OK\r\n")?;
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = angle(&cmd[8..]);
            if rcpt.starts_with("reject") {
                out.write_all(b"550 5.1.1 mailbox unavailable\r\n")?;
            } else {
                to.push(rcpt);
                out.write_all(b"250 2.1.5 OK\r\n")?;
            }
        } else if upper == "DATA" {
            out.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
            let mut data = String::new();
            loop {
                line.clear();
                if input.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                let l = line.trim_end_matches(['\r', '\n']);
                if l == "." {
                    break;
                }
                data.push_str(
                    l.strip_prefix('.')
                        .filter(|_| l.starts_with(".."))
                        .unwrap_or(l),
                );
                data.push_str("\r\n");
            }
            store.lock().expect("store").push(Captured {
                mail_from: from.clone(),
                rcpt_to: to.clone(),
                data,
            });
            out.write_all(b"250 2.0.0 queued\r\n")?;
        } else if upper == "QUIT" {
            out.write_all(b"221 2.0.0 bye\r\n")?;
            return Ok(());
        } else if upper == "RSET" || upper == "NOOP" {
            out.write_all(b"250 2.0.0 OK\r\n")?;
        } else {
            out.write_all(b"502 5.5.2 command not implemented\r\n")?;
        }
    }
}

// ------------------------------------------------------------------------------------------
// Fixture
// ------------------------------------------------------------------------------------------

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

/// `today + n days` as `YYYY-MM-DD`.
fn day(n: i64) -> String {
    (today() + Duration::days(n)).format("%Y-%m-%d").to_string()
}

/// `today + n days` as the notices print dates (`January 08, 2026`).
fn long_day(n: i64) -> String {
    (today() + Duration::days(n))
        .format("%B %d, %Y")
        .to_string()
}

const OLD: &str = "2020-01-01T00:00:00+00:00";
const FROM: &str = "keystone@hpc.example";

/// A migrated site mailing to a capture server, with two teams and these users (all joined
/// long ago unless said otherwise; team Physics active, Chemistry inactive):
/// 11 alice (owner, Physics), 12 bob (member, thresholds [7, 20], no past notices),
/// 13 carol (member, joined today), 14 dave (inactive user), 15 erin (no e-mail address),
/// 16 frank (Chemistry only), 17 gina (no team).
/// Requests of Physics: 101 AP expires in 30 days, 102 AP in 14, 104 PD, 105 AP in 14 but
/// activated 5 days ago, 106 AP expired yesterday, 107 AP expired 3 days ago, 108 DC in 14;
/// Chemistry: 109 AP in 14.
struct Fixture {
    site: Site,
    smtp: SmtpCapture,
}

impl Fixture {
    fn new(backend: Backend, env: &[(&str, &str)]) -> Fixture {
        let smtp = SmtpCapture::start();
        let mut site = Site::new(backend);
        site.set("KEYSTONE_EMAIL__PORT", &smtp.port.to_string());
        site.set("KEYSTONE_EMAIL__FROM_ADDRESS", FROM);
        let missing = site.path("no-templates").display().to_string();
        site.set("KEYSTONE_EMAIL__TEMPLATE_DIR", &missing);
        for (k, v) in env {
            site.set(k, v);
        }
        site.migrate();
        let now = Utc::now().format("%Y-%m-%dT%H:%M:%S+00:00").to_string();
        let user = |id: i64,
                    name: &str,
                    first: &str,
                    last: &str,
                    email: &str,
                    joined: &str,
                    active: bool| {
            let email = if email.is_empty() {
                "NULL".to_string()
            } else {
                format!("'{email}'")
            };
            format!(
                "INSERT INTO users_user (id, password, username, first_name, last_name, email, \
                 is_active, date_joined) VALUES ({id}, '!', '{name}', '{first}', '{last}', {email}, \
                 {active}, '{joined}');"
            )
        };
        let request =
            |id: i64, team: i64, title: &str, status: &str, active: &str, expire: &str| {
                format!(
                    "INSERT INTO allocations_allocationrequest (id, title, description, submitted, \
                 active, expire, status, submitter_id, team_id) VALUES ({id}, '{title}', 'd', \
                 '2020-01-02T10:00:00+00:00', {active}, {expire}, '{status}', 11, {team});"
                )
            };
        let q = |d: String| format!("'{d}'");
        let mut sql = String::new();
        sql.push_str(&user(
            11,
            "alice",
            "Alice",
            "Archer",
            "alice@example.org",
            OLD,
            true,
        ));
        sql.push_str(&user(
            12,
            "bob",
            "Bob",
            "Baker",
            "bob@example.org",
            OLD,
            true,
        ));
        sql.push_str(&user(13, "carol", "", "", "carol@example.org", &now, true));
        sql.push_str(&user(
            14,
            "dave",
            "Dave",
            "Dunn",
            "dave@example.org",
            OLD,
            false,
        ));
        sql.push_str(&user(15, "erin", "Erin", "Eve", "", OLD, true));
        sql.push_str(&user(
            16,
            "frank",
            "Frank",
            "Fox",
            "frank@example.org",
            OLD,
            true,
        ));
        sql.push_str(&user(
            17,
            "gina",
            "Gina",
            "Gray",
            "gina@example.org",
            OLD,
            true,
        ));
        sql.push_str(
            "INSERT INTO users_team (id, name, slug, is_active) VALUES (1, 'Physics', 'physics', TRUE);\
             INSERT INTO users_team (id, name, slug, is_active) VALUES (2, 'Chemistry', 'chemistry', FALSE);\
             INSERT INTO users_membership (id, role, user_id, team_id) VALUES (1, 'OW', 11, 1);\
             INSERT INTO users_membership (id, role, user_id, team_id) VALUES (2, 'MB', 12, 1);\
             INSERT INTO users_membership (id, role, user_id, team_id) VALUES (3, 'MB', 13, 1);\
             INSERT INTO users_membership (id, role, user_id, team_id) VALUES (4, 'AD', 14, 1);\
             INSERT INTO users_membership (id, role, user_id, team_id) VALUES (5, 'MB', 15, 1);\
             INSERT INTO users_membership (id, role, user_id, team_id) VALUES (6, 'OW', 16, 2);\
             INSERT INTO notifications_preference (request_expiry_thresholds, notify_on_expiration, user_id) \
             VALUES ('[7, 20]', FALSE, 12);\
             INSERT INTO allocations_cluster (id, name) VALUES (1, 'gpu');\
             INSERT INTO allocations_cluster (id, name) VALUES (2, 'cpu');",
        );
        let old = q("2020-01-01".into());
        sql.push_str(&request(101, 1, "Thirty Days", "AP", &old, &q(day(30))));
        sql.push_str(&request(102, 1, "Fourteen Days", "AP", &old, &q(day(14))));
        sql.push_str(&request(104, 1, "Next Year", "PD", "NULL", "NULL"));
        sql.push_str(&request(105, 1, "Fresh", "AP", &q(day(-5)), &q(day(14))));
        sql.push_str(&request(106, 1, "Just Ended", "AP", &old, &q(day(-1))));
        sql.push_str(&request(107, 1, "Long Gone", "AP", &old, &q(day(-3))));
        sql.push_str(&request(108, 1, "Declined", "DC", &old, &q(day(14))));
        sql.push_str(&request(109, 2, "Inactive Team", "AP", &old, &q(day(14))));
        sql.push_str(
            "INSERT INTO allocations_resourceallocation (id, requested, awarded, final, cluster_id, request_id) \
             VALUES (1, 60000, 50000, NULL, 1, 102);\
             INSERT INTO allocations_resourceallocation (id, requested, awarded, final, cluster_id, request_id) \
             VALUES (2, 1000000, 1234567, NULL, 2, 102);\
             INSERT INTO allocations_resourceallocation (id, requested, awarded, final, cluster_id, request_id) \
             VALUES (3, 10000, 8000, 3000, 1, 106);\
             INSERT INTO allocations_resourceallocation (id, requested, awarded, final, cluster_id, request_id) \
             VALUES (4, 5000, NULL, NULL, 2, 106);",
        );
        site.sql(&sql);
        Fixture { site, smtp }
    }

    /// Runs a task inline; returns (success, stdout + stderr).
    fn task(&self, args: &[&str]) -> (bool, String) {
        let mut full = vec!["task", "run"];
        full.extend_from_slice(args);
        full.push("--inline");
        let out = self.site.run(&full);
        (
            out.status.success(),
            format!("{}{}", stdout(&out), stderr(&out)),
        )
    }

    fn sweep(&self, name: &str) {
        let (ok, out) = self.task(&[name]);
        assert!(ok, "{name} failed: {out}");
    }

    /// Notification rows as (user, type, canonical metadata), sorted.
    fn rows(&self) -> Vec<(i64, String, serde_json::Value)> {
        let mut rows: Vec<(i64, String, serde_json::Value)> = query(
            &self.site,
            "SELECT CAST(user_id AS TEXT), notification_type, CAST(metadata AS TEXT) \
             FROM notifications_notification",
        )
        .into_iter()
        .map(|r| {
            (
                r[0].as_deref().and_then(|s| s.parse().ok()).unwrap_or(-1),
                r[1].clone().unwrap_or_default(),
                r[2].as_deref()
                    .and_then(|m| serde_json::from_str(m).ok())
                    .unwrap_or(serde_json::Value::Null),
            )
        })
        .collect();
        rows.sort_by_key(|r| (r.0, r.1.clone(), r.2.to_string()));
        rows
    }
}

fn re(user: i64, req: i64, days: i64) -> (i64, String, serde_json::Value) {
    (
        user,
        "RE".into(),
        serde_json::json!({"request_id": req, "days_to_expire": days}),
    )
}

fn rd(user: i64, req: i64) -> (i64, String, serde_json::Value) {
    (user, "RD".into(), serde_json::json!({"request_id": req}))
}

/// Runs a query on the site's database, every column read as optional text.
fn query(site: &Site, sql: &str) -> Vec<Vec<Option<String>>> {
    use sqlx::{Connection, Row};
    let sql = sql.to_string();
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
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let q = sqlx::AssertSqlSafe(sql);
            if target.starts_with("sqlite:") {
                let mut c = sqlx::SqliteConnection::connect(&target).await.expect("db");
                let rows = sqlx::query(q).fetch_all(&mut c).await.expect("query");
                rows.iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| r.get::<Option<String>, _>(i))
                            .collect()
                    })
                    .collect()
            } else {
                let mut c = sqlx::PgConnection::connect(&target).await.expect("db");
                let rows = sqlx::query(q).fetch_all(&mut c).await.expect("query");
                rows.iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| r.get::<Option<String>, _>(i))
                            .collect()
                    })
                    .collect()
            }
        })
    })
    .join()
    .expect("query thread")
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write file");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
}

// ------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------

#[test]
fn upcoming_notices_follow_thresholds_preferences_and_are_never_duplicated() {
    for backend in backends() {
        let f = Fixture::new(backend, &[]);
        f.sweep("notify-upcoming");

        // Who: active members of active teams, joined before the threshold window, of approved
        // requests activated before it; bob's [7, 20] turns 14 days into a notice and 30 into
        // none; erin has no address and gets the row only.
        assert_eq!(
            f.rows(),
            vec![
                re(11, 101, 30),
                re(11, 102, 14),
                re(12, 102, 14),
                re(15, 101, 30),
                re(15, 102, 14)
            ],
            "{backend:?}"
        );
        let all = f.smtp.all();
        assert_eq!(all.len(), 3, "{backend:?}: {all:#?}");
        assert_eq!(f.smtp.to("alice@example.org").len(), 2);
        assert_eq!(f.smtp.to("bob@example.org").len(), 1);

        // The message: envelope, headers, multipart/alternative with plain text and HTML.
        let m = f
            .smtp
            .to("alice@example.org")
            .into_iter()
            .find(|m| m.subject() == "Your HPC allocation #102 is expiring soon")
            .expect("notice for 102");
        assert_eq!(m.mail_from, FROM);
        assert!(m.data.contains("multipart/alternative"), "{}", m.data);
        let parsed = m.parsed();
        assert_eq!(
            parsed
                .from()
                .and_then(|a| a.first())
                .and_then(|a| a.address()),
            Some(FROM)
        );
        assert_eq!(
            parsed
                .to()
                .and_then(|a| a.first())
                .and_then(|a| a.address()),
            Some("alice@example.org")
        );
        let text = m.text();
        assert!(text.contains("Dear Alice Archer,"), "{text}");
        assert!(text.contains("Fourteen Days"), "{text}");
        assert!(
            text.contains(&format!("expires in 14 days, on {}", long_day(14))),
            "{text}"
        );
        assert!(text.contains("gpu | 50,000"), "{text}");
        assert!(text.contains("cpu | 1,234,567"), "{text}");
        // The team's pending and still-active approved requests, the expiring one included.
        assert!(
            text.contains("104 | Next Year | Pending | January 02, 2020 | — | —"),
            "{text}"
        );
        assert!(text.contains("102 | Fourteen Days | Approved"), "{text}");
        assert!(
            !text.contains("Just Ended") && !text.contains("Declined |"),
            "{text}"
        );
        assert!(!text.contains('<'), "plain text has no markup: {text}");
        let html = m.html();
        assert!(html.contains("<table"), "{html}");
        assert!(html.contains("Dear Alice Archer,"), "{html}");
        assert!(!html.contains("<html") && !html.contains("<body") && !html.contains("<meta"));

        // A second run sends and records nothing new.
        f.smtp.clear();
        f.sweep("notify-upcoming");
        assert!(f.smtp.all().is_empty(), "{backend:?}: duplicate mail");
        assert_eq!(f.rows().len(), 5);

        // Time passes. 101 is 20 days out: alice's 30-day notice covers threshold 30, but bob's
        // threshold 20 has had no notice yet.
        f.site.sql(&format!(
            "UPDATE allocations_allocationrequest SET expire = '{}' WHERE id = 101",
            day(20)
        ));
        f.sweep("notify-upcoming");
        let sent: Vec<(Vec<String>, String)> = f
            .smtp
            .all()
            .iter()
            .map(|m| (m.rcpt_to.clone(), m.subject()))
            .collect();
        assert_eq!(
            sent,
            vec![(
                vec!["bob@example.org".to_string()],
                "Your HPC allocation #101 is expiring soon".to_string()
            )],
            "{backend:?}"
        );
        // 14 days out: the 30-day notice does not cover threshold 14, bob's 20 covers his 20.
        f.smtp.clear();
        f.site.sql(&format!(
            "UPDATE allocations_allocationrequest SET expire = '{}' WHERE id = 101",
            day(14)
        ));
        f.sweep("notify-upcoming");
        let sent: Vec<Vec<String>> = f.smtp.all().iter().map(|m| m.rcpt_to.clone()).collect();
        assert_eq!(
            sent,
            vec![vec!["alice@example.org".to_string()]],
            "{backend:?}"
        );
        assert_eq!(
            f.rows(),
            vec![
                re(11, 101, 14),
                re(11, 101, 30),
                re(11, 102, 14),
                re(12, 101, 20),
                re(12, 102, 14),
                re(15, 101, 14),
                re(15, 101, 30),
                re(15, 102, 14)
            ],
            "{backend:?}"
        );

        // Users without a preference got one with the defaults; bob's own stays as it was.
        let prefs: Vec<(String, serde_json::Value)> = query(
            &f.site,
            "SELECT CAST(user_id AS TEXT), request_expiry_thresholds FROM notifications_preference",
        )
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                serde_json::from_str(r[1].as_deref().unwrap_or("null")).unwrap_or_default(),
            )
        })
        .collect();
        assert!(
            prefs.contains(&("11".into(), serde_json::json!([30, 14]))),
            "{prefs:?}"
        );
        assert!(
            prefs.contains(&("12".into(), serde_json::json!([7, 20]))),
            "{prefs:?}"
        );

        // Preferences are not validated: absurd thresholds neither crash the sweep nor mail.
        f.smtp.clear();
        f.site.sql(
            "UPDATE notifications_preference SET request_expiry_thresholds = \
             '[9000000000000000000]' WHERE user_id = 11;\
             UPDATE notifications_preference SET request_expiry_thresholds = '\"abc\"' \
             WHERE user_id = 15;",
        );
        f.site.sql(&format!(
            "UPDATE allocations_allocationrequest SET expire = '{}' WHERE id = 101",
            day(10)
        ));
        f.sweep("notify-upcoming");
        assert!(f.smtp.all().is_empty(), "{backend:?}");
        assert_eq!(f.rows().len(), 8, "{backend:?}");

        // The sender re-checks: asked directly for a pair that is not due, it sends nothing.
        f.smtp.clear();
        let (ok, out) = f.task(&["send-upcoming", "13", "102"]);
        assert!(ok, "{out}");
        let (ok, out) = f.task(&["send-upcoming", "11", "102"]);
        assert!(ok, "{out}");
        assert!(f.smtp.all().is_empty());
        // …and a missing user or request fails the run.
        let (ok, out) = f.task(&["send-upcoming", "999", "102"]);
        assert!(
            !ok && out.contains("User matching query does not exist."),
            "{out}"
        );
        let (ok, out) = f.task(&["send-upcoming", "11", "999"]);
        assert!(
            !ok && out.contains("AllocationRequest matching query does not exist."),
            "{out}"
        );
    }
}

#[test]
fn past_notices_honour_notify_on_expiration_and_are_readable_via_the_api() {
    for backend in backends() {
        let f = Fixture::new(backend, &[]);
        f.sweep("notify-past");
        // 106 expired yesterday (107 three days ago is out of the window); bob opted out;
        // carol joined today but past notices have no join rule; erin gets the row only.
        assert_eq!(
            f.rows(),
            vec![rd(11, 106), rd(13, 106), rd(15, 106)],
            "{backend:?}"
        );
        assert_eq!(f.smtp.all().len(), 2);
        let m = f
            .smtp
            .to("carol@example.org")
            .pop()
            .expect("carol's notice");
        assert_eq!(m.subject(), "Your HPC allocation #106 has expired");
        let text = m.text();
        // No first/last name: greeted by username.
        assert!(text.contains("Dear carol,"), "{text}");
        assert!(
            text.contains(&format!("expired on {}", long_day(-1))),
            "{text}"
        );
        // Utilised SUs with their share of the award; no award → no percentage.
        assert!(text.contains("gpu | 8,000 | 3,000 (38%)"), "{text}");
        assert!(text.contains("cpu | 0 | 0"), "{text}");
        assert!(!text.contains("cpu | 0 | 0 ("), "{text}");
        // Other requests listed: the pending one and those still running, not 106 itself.
        assert!(text.contains("104 | Next Year | Pending"), "{text}");
        assert!(!text.contains("106 | Just Ended"), "{text}");

        f.smtp.clear();
        f.sweep("notify-past");
        assert!(f.smtp.all().is_empty(), "{backend:?}: duplicate mail");
        assert_eq!(f.rows().len(), 3);

        // The rows through the API: own notifications only, HTML body, no text or metadata.
        let out = f.site.run(&["token", "create", "alice", "--name", "tests"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let token = stdout(&out).trim().to_string();
        let web = f.site.serve("web", &[]);
        let auth = format!("Token {token}");
        let r = web.request(
            "GET",
            "/notifications/notifications/",
            &[("Authorization", auth.as_str())],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        assert_eq!(body["count"], 1, "{body}");
        let n = &body["results"][0];
        assert_eq!(n["subject"], "Your HPC allocation #106 has expired");
        assert_eq!(n["notification_type"], "RD");
        assert_eq!(n["read"], false);
        assert_eq!(n["user"], 11);
        assert!(
            n.get("message_text").is_none() && n.get("metadata").is_none(),
            "{n}"
        );
        let html = n["message_html"].as_str().unwrap_or_default();
        assert!(
            html.contains("Dear Alice Archer,") && html.contains("<table"),
            "{html}"
        );
        assert!(
            !html.contains("<script") && !html.contains("<body"),
            "{html}"
        );
    }
}

#[test]
fn smtp_failures_and_missing_addresses_keep_the_row_and_never_resend() {
    for backend in backends() {
        let f = Fixture::new(backend, &[]);
        f.site
            .sql("UPDATE users_user SET email = 'reject-alice@example.org' WHERE id = 11");
        // The sub-task for alice fails on SMTP; the sweep goes on with the others.
        f.sweep("notify-past");
        assert_eq!(
            f.rows(),
            vec![rd(11, 106), rd(13, 106), rd(15, 106)],
            "{backend:?}"
        );
        assert_eq!(f.smtp.all().len(), 1, "only carol's mail went out");
        let failures = query(
            &f.site,
            "SELECT status, task_args, result FROM django_celery_results_taskresult \
             WHERE task_name = 'apps.notifications.tasks.past_expirations.send_past_expiration_notice' \
             AND status = 'FAILURE'",
        );
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(failures[0][1].as_deref(), Some("[11,106]"), "{failures:?}");
        assert!(
            failures[0][2].as_deref().unwrap_or("").contains("SMTP"),
            "{failures:?}"
        );
        // Sending directly again: the recorded row stops it (at-most-once mail).
        f.site
            .sql("UPDATE users_user SET email = 'alice@example.org' WHERE id = 11");
        let (ok, out) = f.task(&["send-past", "11", "106"]);
        assert!(ok, "{out}");
        assert!(f.smtp.to("alice@example.org").is_empty());

        // An unreachable SMTP server fails the run after the row is committed; later sweeps
        // do not send it again.
        let mut f = f;
        let port = f.smtp.port.to_string();
        f.site.set("KEYSTONE_EMAIL__PORT", &free_port().to_string());
        f.site.sql(&format!(
            "UPDATE allocations_allocationrequest SET expire = '{}' WHERE id = 107",
            day(-2)
        ));
        let (ok, out) = f.task(&["send-past", "13", "107"]);
        assert!(!ok, "{out}");
        assert!(out.contains("FAILURE"), "{out}");
        assert!(f.rows().contains(&rd(13, 107)), "{backend:?}");
        f.site.set("KEYSTONE_EMAIL__PORT", &port);
        f.smtp.clear();
        f.sweep("notify-past");
        let sent: Vec<Vec<String>> = f.smtp.all().iter().map(|m| m.rcpt_to.clone()).collect();
        assert_eq!(
            sent,
            vec![vec!["alice@example.org".to_string()]],
            "{backend:?}"
        );

        // With `email.debug_dir` the messages become files instead of SMTP traffic.
        let debug = f.site.path("mail-debug");
        f.site
            .set("KEYSTONE_EMAIL__DEBUG_DIR", &debug.display().to_string());
        f.site.sql(&format!(
            "UPDATE allocations_allocationrequest SET expire = '{}' WHERE id = 102",
            day(0)
        ));
        f.smtp.clear();
        f.sweep("notify-past");
        assert!(f.smtp.all().is_empty(), "{backend:?}");
        let mut files: Vec<String> = std::fs::read_dir(&debug)
            .expect("debug dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        files.sort();
        assert_eq!(files.len(), 2, "{files:?}");
        for name in &files {
            // <YYYYmmdd-HHMMSS>-<unique>.log
            assert!(
                name.ends_with(".log") && name.as_bytes()[8] == b'-',
                "{name}"
            );
            assert!(name[..8].bytes().all(|b| b.is_ascii_digit()), "{name}");
            let content = std::fs::read_to_string(debug.join(name)).expect("debug file");
            assert!(content.contains("Subject: Your HPC allocation #102 has expired"));
            assert!(
                content.ends_with(&format!("{}\n", "-".repeat(79))),
                "{content}"
            );
        }
    }
}

#[test]
fn templates_from_the_configured_directory_override_the_built_in_ones() {
    for backend in backends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display().to_string();
        let f = Fixture::new(backend, &[("KEYSTONE_EMAIL__TEMPLATE_DIR", d.as_str())]);
        // A custom base restyles the built-in past notice; a custom upcoming notice uses the
        // Python idioms upstream templates use.
        write(
            &dir.path().join("base.html"),
            "<div class=\"site-brand\">Site Brand</div>{% block main %}{% endblock %}",
        );
        write(
            &dir.path().join("upcoming_expiration.html"),
            "{% extends \"base.html\" %}{% block main %}<p>Custom notice for {{ user_name }}: \
             #{{ req_id }} has {{ req_days_left }} day{{ \"s\" if req_days_left != 1 }} left \
             ({{ req_expire.strftime('%B %d, %Y') }}), {% for a in allocations %}{{ a.alloc_cluster }} \
             {{ \"{:,}\".format(a.alloc_awarded) }} = {{ '%.0f' % (a.alloc_awarded / 1000) }}k; \
             {% endfor %}</p><script>alert('x')</script>{% endblock %}",
        );
        f.sweep("notify-upcoming");
        f.sweep("notify-past");
        let upcoming = f
            .smtp
            .to("alice@example.org")
            .into_iter()
            .find(|m| m.subject() == "Your HPC allocation #102 is expiring soon")
            .expect("custom upcoming notice");
        let text = upcoming.text();
        assert!(
            text.contains(&format!(
                "Custom notice for alice: #102 has 14 days left ({}), gpu 50,000 = 50k; cpu 1,234,567 = 1235k;",
                long_day(14)
            )),
            "{text}"
        );
        let html = upcoming.html();
        assert!(
            html.contains("Site Brand") && !html.contains("<script") && !html.contains("alert"),
            "{html}"
        );
        let past = f.smtp.to("carol@example.org").pop().expect("past notice");
        assert!(past.html().contains("Site Brand"), "{}", past.html());
        assert!(past.text().contains("expired on"), "{}", past.text());

        // A world-writable template is refused: the run fails, nothing is recorded or sent.
        use std::os::unix::fs::PermissionsExt;
        let top = dir.path().join("upcoming_expiration.html");
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        f.site.sql(&format!(
            "UPDATE allocations_allocationrequest SET expire = '{}' WHERE id = 101",
            day(14)
        ));
        f.smtp.clear();
        let before = f.rows().len();
        let (ok, out) = f.task(&["send-upcoming", "11", "101"]);
        assert!(!ok, "{out}");
        assert!(
            out.contains(&format!(
                "Template file has insecure file permissions: {}",
                top.display()
            )),
            "{out}"
        );
        assert_eq!(f.rows().len(), before);
        assert!(f.smtp.all().is_empty());

        // An undefined variable is an error too (strict rendering).
        write(&top, "<p>{{ no_such_variable }}</p>");
        let (ok, out) = f.task(&["send-upcoming", "11", "101"]);
        assert!(!ok && out.contains("undefined"), "{out}");
        assert_eq!(f.rows().len(), before);
    }
}

#[test]
fn templates_render_writes_sample_messages() {
    let mut site = Site::new(Backend::Sqlite);
    let missing_default = site.path("absent-templates").display().to_string();
    site.set("KEYSTONE_EMAIL__TEMPLATE_DIR", &missing_default);
    site.set("KEYSTONE_EMAIL__FROM_ADDRESS", FROM);
    let out_dir = site.path("out");
    std::fs::create_dir_all(&out_dir).expect("out dir");
    let abs_out = out_dir.canonicalize().expect("canonical");

    // Default template directory missing: the built-ins are rendered, and that is said.
    let out = site.run(&["templates", "render", "--out", "out"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("Templates written to {}\n", abs_out.display())
    );
    assert!(stderr(&out).contains("built-in"), "{}", stderr(&out));
    let year = Utc::now().format("%Y").to_string();
    let expected = [
        (
            "upcoming_expiration.eml",
            "Your HPC allocation 1234 is expiring soon",
        ),
        (
            "past_expiration.eml",
            "Your HPC allocation 1234 has expired",
        ),
        ("general_message.eml", "General notification"),
    ];
    for (file, subject) in expected {
        let raw = std::fs::read(out_dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let m = mail_parser::MessageParser::default()
            .parse(&raw)
            .unwrap_or_else(|| panic!("{file} is not a message"));
        assert_eq!(m.subject(), Some(subject), "{file}");
        assert_eq!(
            m.from().and_then(|a| a.first()).and_then(|a| a.address()),
            Some(FROM)
        );
        assert!(m.to().is_none(), "{file} has no To");
        assert!(
            String::from_utf8_lossy(&raw).contains("multipart/alternative"),
            "{file}"
        );
        let text = m.body_text(0).unwrap_or_default().to_string();
        let html = m.body_html(0).unwrap_or_default().to_string();
        assert!(text.contains("Dear John Smith,"), "{file}: {text}");
        assert!(html.contains("Dear John Smith,"), "{file}: {html}");
        if file == "upcoming_expiration.eml" {
            assert!(
                text.contains(&format!("expires in 7 days, on December 31, {year}")),
                "{text}"
            );
            assert!(text.contains("Cluster 2 | 200,000"), "{text}");
            assert!(text.contains("5678 | Pending Project | Pending"), "{text}");
            assert!(text.contains("9012 | Active Project | Approved"), "{text}");
        }
        if file == "past_expiration.eml" {
            assert!(
                text.contains("Cluster 1 | 100,000 | 50,000 (50%)"),
                "{text}"
            );
            assert!(
                text.contains("Cluster 2 | 200,000 | 175,000 (88%)"),
                "{text}"
            );
        }
        if file == "general_message.eml" {
            assert!(
                text.contains(
                    "This is an important general notification concerning your HPC account."
                ),
                "{text}"
            );
        }
    }

    // A custom directory given on the command line; its general.html replaces the built-in.
    let custom = site.path("custom");
    std::fs::create_dir_all(&custom).expect("custom dir");
    write(
        &custom.join("general.html"),
        "{% extends \"base.html\" %}{% block main %}<p>Site says: {{ message }}</p>{% endblock %}",
    );
    let out = site.run(&[
        "templates",
        "render",
        "--out",
        "out",
        "--templates",
        "custom",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let general = std::fs::read_to_string(out_dir.join("general_message.eml")).expect("general");
    assert!(general.contains("Site says:"), "{general}");

    // Errors: missing directories, insecure and broken templates.
    let out = site.run(&["templates", "render", "--templates", "nowhere"]);
    assert_eq!(out.status.code(), Some(1));
    let expected = format!(
        "No such file or directory: {}",
        site.path("nowhere").display()
    );
    assert!(
        stderr(&out).lines().any(|l| l == expected),
        "{}",
        stderr(&out)
    );
    let out = site.run(&["templates", "render", "--out", "missing-out"]);
    assert_eq!(out.status.code(), Some(1));
    let expected = format!(
        "No such file or directory: {}",
        site.path("missing-out").display()
    );
    assert!(
        stderr(&out).lines().any(|l| l == expected),
        "{}",
        stderr(&out)
    );
    use std::os::unix::fs::PermissionsExt;
    let top = custom.join("general.html");
    std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o646)).expect("chmod");
    let out = site.run(&[
        "templates",
        "render",
        "--out",
        "out",
        "--templates",
        "custom",
    ]);
    assert_eq!(out.status.code(), Some(1));
    // The path as the search found it: the directory as given, then the file name.
    assert!(
        stderr(&out)
            .lines()
            .any(|l| l == "Template file has insecure file permissions: custom/general.html"),
        "{}",
        stderr(&out)
    );
    write(&top, "<p>{{ not_in_the_sample }}</p>");
    let out = site.run(&[
        "templates",
        "render",
        "--out",
        "out",
        "--templates",
        "custom",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("undefined"), "{}", stderr(&out));
    write(&top, "  {# nothing #}  \n");
    let out = site.run(&[
        "templates",
        "render",
        "--out",
        "out",
        "--templates",
        "custom",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Template is empty"),
        "{}",
        stderr(&out)
    );
}
