//! Hostile edges (issue 14, items 8 and 10): unknown, malformed and overlong methods are
//! answered without costing other requests their request-log rows, metric labels stay in a
//! fixed set whatever methods and paths clients send, and a production site refuses a weak
//! secret key.

use crate::common::http::{self, Response};
use crate::common::*;
use rand::Rng;
use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};

/// A site with one staff account and its API key, serving the web role.
struct Staffed {
    // Fields drop in order: the daemon stops before its site (kept for its lifetime) goes.
    web: Daemon,
    _site: Site,
    token: String,
}

impl Staffed {
    fn new(backend: Backend, env: &[(&str, &str)]) -> Staffed {
        let mut site = Site::new(backend);
        for (k, v) in env {
            site.set(k, v);
        }
        site.set("API_THROTTLE_ANON", "100000/min");
        site.set("API_THROTTLE_USER", "100000/min");
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
            "Str0ng-Pass-99\n",
        );
        assert!(out.status.success(), "user create: {}", stderr(&out));
        let out = site.run(&["token", "create", "staff", "--name", "tests"]);
        assert!(out.status.success(), "token create: {}", stderr(&out));
        let token = stdout(&out).trim().to_string();
        let web = site.serve("web", &[]);
        Staffed {
            web,
            _site: site,
            token,
        }
    }

    /// The request-log rows stored for a cid, read back as staff.
    fn logged(&self, cid: &str) -> serde_json::Value {
        let auth = format!("Token {}", self.token);
        let r = self.web.request(
            "GET",
            &format!("/logs/requests/?cid={cid}"),
            &[("Authorization", &auth)],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }
}

/// One request of the burst and what its answer must be.
struct Probe {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    /// Expected status, or None when only "answered" matters.
    status: Option<u16>,
    /// Whether the request is one of the well-behaved ones whose row is the point.
    good: bool,
}

fn probes(round: usize, staff_token: &str) -> Vec<Probe> {
    let probe = |method: &str, path: String, status: Option<u16>, good: bool| Probe {
        method: method.to_string(),
        path,
        headers: Vec::new(),
        status,
        good,
    };
    let mut out = Vec::new();
    for i in 0..6 {
        out.push(probe(
            "GET",
            format!("/version/?round={round}&i={i}"),
            Some(200),
            true,
        ));
    }
    let mut whoami = probe("GET", "/authentication/whoami/".into(), Some(200), true);
    whoami
        .headers
        .push(("Authorization".into(), format!("Token {staff_token}")));
    out.push(whoami);
    out.push(probe("POST", "/version/".into(), Some(405), true));
    // The hostile ones.
    out.push(probe(
        &"A".repeat(200),
        "/version/".into(),
        Some(400),
        false,
    ));
    out.push(probe("get", "/version/".into(), Some(400), false));
    out.push(probe("FOO", "/version/".into(), Some(405), false));
    out.push(probe("PROPFIND", "/version/".into(), Some(405), false));
    out.push(probe("MKWORKSPACE", "/version/".into(), Some(400), false));
    out.push(probe("GET", "/version/?q=%00%ff".into(), Some(200), false));
    out.push(probe(
        "GET",
        format!("/{}/", "a".repeat(3000)),
        Some(404),
        false,
    ));
    let mut forwarded = probe("GET", "/version/".into(), Some(200), false);
    forwarded
        .headers
        .push(("X-Forwarded-For".into(), "x".repeat(300)));
    forwarded
        .headers
        .push(("User-Agent".into(), "agent \u{e9}\u{2603}".into()));
    out.push(forwarded);
    out
}

/// Sends every probe at once (a barrier releases them together, so they share request-log
/// batches) and returns the answers with the cid each request carried.
fn burst(addr: &str, probes: Vec<Probe>) -> Vec<(Probe, String, Response)> {
    let barrier = Arc::new(Barrier::new(probes.len()));
    let handles: Vec<_> = probes
        .into_iter()
        .map(|p| {
            let addr = addr.to_string();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let cid = uuid::Uuid::new_v4().to_string();
                let mut headers: Vec<(&str, &str)> = vec![("X-KEYSTONE-CID", cid.as_str())];
                headers.extend(p.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                barrier.wait();
                let r = http::request(&addr, &p.method, &p.path, &headers, b"");
                (p, cid, r)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect()
}

#[test]
fn hostile_methods_are_answered_and_never_cost_other_requests_their_log_rows() {
    for backend in backends() {
        let s = Staffed::new(backend, &[]);
        let mut sent = Vec::new();
        for round in 0..4 {
            sent.extend(burst(&s.web.base(), probes(round, &s.token)));
        }
        for (p, _, r) in &sent {
            let what = format!("{backend:?} {:.20} {:.40}", p.method, p.path);
            if let Some(status) = p.status {
                assert_eq!(r.status, status, "{what}: {}", r.text());
            }
            if r.status == 405 {
                let allow = r.header("allow").unwrap_or_default();
                assert!(allow.contains("GET"), "{what}: Allow {allow:?}");
            }
            if r.status == 400 {
                assert_eq!(
                    r.json(),
                    serde_json::json!({"detail": "Invalid HTTP method."}),
                    "{what}"
                );
            }
        }
        // Every request, good or hostile, has its row; the good ones are the point.
        for (p, cid, r) in &sent {
            let page = s.logged(cid);
            let what = format!(
                "{backend:?} {:.20} {:.40} (good: {})",
                p.method, p.path, p.good
            );
            assert_eq!(page["count"], 1, "{what}: {page}");
            let row = &page["results"][0];
            assert_eq!(row["response_code"], r.status, "{what}");
            let method = row["method"].as_str().unwrap_or_default();
            assert!(
                method.len() <= 10 && p.method.starts_with(method),
                "{what}: {method}"
            );
            let endpoint = row["endpoint"].as_str().unwrap_or_default();
            assert!(
                endpoint.chars().count() <= 2048 && p.path.starts_with(endpoint),
                "{what}: {endpoint:.60}"
            );
        }
        let whoami = sent
            .iter()
            .find(|(p, _, _)| p.path == "/authentication/whoami/")
            .expect("whoami sent");
        assert!(s.logged(&whoami.1)["results"][0]["user"].is_i64());
    }
}

const METHOD_LABELS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "OTHER",
];

/// The values of `label` on the `keystone_http_*` series of a Prometheus text page.
fn label_values(page: &str, label: &str) -> BTreeSet<String> {
    let needle = format!("{label}=\"");
    page.lines()
        .filter(|l| l.starts_with("keystone_http_"))
        .filter_map(|l| {
            let start = l.find(&needle)? + needle.len();
            let rest = &l[start..];
            Some(rest[..rest.find('"')?].to_string())
        })
        .collect()
}

#[test]
fn metric_labels_stay_in_a_fixed_set_whatever_clients_send() {
    let port = free_port().to_string();
    let s = Staffed::new(Backend::Sqlite, &[("KEYSTONE_METRICS__PORTS", &port)]);
    let mut rng = rand::rng();
    let letters: Vec<char> = ('A'..='Z').collect();
    for i in 0..300 {
        let token: String = (0..rng.random_range(1..=12))
            .map(|_| letters[rng.random_range(0..letters.len())])
            .collect();
        let method = match i % 4 {
            0 => token,
            1 => token.to_lowercase(),
            2 => "GET".to_string(),
            _ => ["POST", "DELETE", "OPTIONS", "HEAD"][i % 3].to_string(),
        };
        let n: u32 = rng.random();
        let path = match i % 5 {
            0 => format!("/zz{n}/"),
            1 => format!("/users/users/{n}/"),
            2 => format!("/version/?zz={n}"),
            3 => format!("/zz{n}"),
            _ => format!("/users/users/?zz{n}=1"),
        };
        let r = s.web.request(&method, &path, &[], b"");
        assert!(r.status < 500, "{method} {path}: {}", r.status);
    }
    let page = http::request(&format!("127.0.0.1:{port}"), "GET", "/metrics", &[], b"").text();
    let methods = label_values(&page, "method");
    for m in &methods {
        assert!(METHOD_LABELS.contains(&m.as_str()), "method label {m:?}");
    }
    assert!(methods.contains("OTHER"), "{page}");
    let routes = label_values(&page, "route");
    assert!(!routes.is_empty(), "{page}");
    for r in &routes {
        assert!(
            [
                "unmatched",
                "/version/",
                "/users/users/",
                "/users/users/{id}/"
            ]
            .contains(&r.as_str()),
            "route label {r:?}"
        );
    }
    assert!(
        page.contains("keystone_http_requests_in_flight 0"),
        "{page}"
    );
}

fn config_check(site: &Site) -> (Option<i32>, String) {
    let out = site.run(&["config", "check"]);
    (out.status.code(), stderr(&out))
}

#[test]
fn postgres_refuses_a_secret_key_shorter_than_32_bytes() {
    // No database is reached: the key is refused while the configuration loads.
    let mut site = Site::new(Backend::Sqlite);
    site.set("KEYSTONE_DATABASE__ENGINE", "postgres");
    site.set("KEYSTONE_DATABASE__NAME", "keystone");
    site.set(
        "KEYSTONE_SECURITY__SECRET_KEY",
        "short-but-not-empty-31-bytes-xx",
    );
    let (code, err) = config_check(&site);
    assert_eq!(code, Some(78), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with(
            "keystone: configuration error: security.secret_key = *** (from environment variable KEYSTONE_SECURITY__SECRET_KEY): too short"
        ),
        "{err}"
    );
    assert!(!err.contains("short-but"), "the key is not shown: {err}");
    let out = site.run(&["serve", "--role", "web", "--bind", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("security.secret_key"),
        "{}",
        stderr(&out)
    );

    // The upstream name and a key file are named as the source.
    site.env.remove("KEYSTONE_SECURITY__SECRET_KEY");
    site.set("SECURE_SECRET_KEY", "tiny");
    let (code, err) = config_check(&site);
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("(from environment variable SECURE_SECRET_KEY"),
        "{err}"
    );
    site.env.remove("SECURE_SECRET_KEY");
    let file = site.path("secret_key.txt");
    std::fs::write(&file, "tiny\n").expect("key file");
    site.set(
        "KEYSTONE_SECURITY__SECRET_KEY_FILE",
        &file.display().to_string(),
    );
    let (code, err) = config_check(&site);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");

    // 32 bytes are enough.
    std::fs::write(&file, "0123456789abcdef0123456789abcdef\n").expect("key file");
    let (code, err) = config_check(&site);
    assert_eq!(code, Some(0), "{err}");

    // A short key stored in the state directory is refused too.
    site.env.remove("KEYSTONE_SECURITY__SECRET_KEY_FILE");
    std::fs::create_dir_all(site.path("state")).expect("state dir");
    std::fs::write(site.path("state/secret_key"), "tiny").expect("stored key");
    let out = site.run(&["serve", "--role", "web", "--bind", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("security.secret_key (from ")
            && stderr(&out).contains("state/secret_key): too short"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn sqlite_keeps_working_with_a_short_secret_key_and_warns() {
    let mut site = Site::new(Backend::Sqlite);
    site.set("KEYSTONE_SECURITY__SECRET_KEY", "tiny");
    let (code, err) = config_check(&site);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning: security.secret_key (from environment variable KEYSTONE_SECURITY__SECRET_KEY) is 4 bytes"),
        "{err}"
    );
    site.migrate();
    let web = site.serve("web", &[]);
    assert_eq!(web.get("/version/").status, 200);
}
