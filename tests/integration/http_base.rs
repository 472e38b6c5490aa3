//! The HTTP base every later endpoint builds on: site root, version, health, OpenAPI,
//! error bodies, redirects, host check, body limit and security headers.

use crate::common::*;

fn site_and_server(backend: Backend) -> (Site, Daemon) {
    let site = Site::new(backend);
    site.migrate();
    let daemon = site.serve("web", &[]);
    (site, daemon)
}

#[test]
fn root_and_version() {
    for backend in backends() {
        let (_site, d) = site_and_server(backend);
        let version = env!("CARGO_PKG_VERSION");
        let root = d.get("/");
        assert_eq!(root.status, 200);
        assert_eq!(root.text(), format!("Keystone API Version {version}"));
        assert_eq!(
            root.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        let v = d.get("/version/");
        assert_eq!(v.status, 200);
        assert_eq!(v.text(), version, "no newline, no whitespace");
        assert!(
            v.header("content-type")
                .unwrap_or("")
                .starts_with("text/plain")
        );
        let head = d.request("HEAD", "/version/", &[], b"");
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
        let post = d.request("POST", "/version/", &[], b"");
        assert_eq!(post.status, 405);
        assert_eq!(post.json()["detail"], "Method \"POST\" not allowed.");
        assert_eq!(post.header("allow"), Some("GET, HEAD, OPTIONS"));
        let opts = d.request("OPTIONS", "/version/", &[], b"");
        assert_eq!(opts.status, 200);
        assert_eq!(opts.json()["name"], "Version");
    }
}

#[test]
fn every_response_carries_the_security_headers() {
    let (_site, d) = site_and_server(Backend::Sqlite);
    for path in ["/", "/version/", "/no-such-page/", "/health/json/"] {
        let r = d.get(path);
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(r.header("referrer-policy"), Some("same-origin"), "{path}");
        assert_eq!(
            r.header("cross-origin-opener-policy"),
            Some("same-origin"),
            "{path}"
        );
    }
}

#[test]
fn unknown_paths_missing_slashes_hosts_and_large_bodies() {
    let mut site = Site::new(Backend::Sqlite);
    site.migrate();
    site.set("KEYSTONE_SERVER__MAX_BODY_SIZE", "1000");
    let d = site.serve("web", &[]);
    let missing = d.get("/no-such-page/");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json(), serde_json::json!({"detail": "Not found."}));

    let redirect = d.get("/version?x=1");
    assert_eq!(redirect.status, 301);
    assert_eq!(redirect.header("location"), Some("/version/?x=1"));

    let bad_host = d.request("GET", "/version/", &[("Host", "evil.example")], b"");
    assert_eq!(bad_host.status, 400);
    let ok_host = d.request("GET", "/version/", &[("Host", "localhost:8000")], b"");
    assert_eq!(ok_host.status, 200, "the port is ignored");

    let big = vec![b'x'; 5000];
    let too_large = d.request(
        "POST",
        "/version/",
        &[("Content-Type", "application/json")],
        &big,
    );
    assert_eq!(too_large.status, 413);
    assert!(
        too_large.json()["detail"]
            .as_str()
            .unwrap_or("")
            .contains("1000")
    );
}

#[test]
fn ssl_redirect_honours_the_proxy_header() {
    let mut site = Site::new(Backend::Sqlite);
    site.migrate();
    site.set("SECURE_SSL_REDIRECT", "true");
    site.set("SECURE_HSTS_SECONDS", "3600");
    let d = site.serve("web", &[]);
    let plain = d.get("/version/?a=b");
    assert_eq!(plain.status, 301);
    assert_eq!(
        plain.header("location"),
        Some("https://localhost/version/?a=b")
    );
    let proxied = d.request("GET", "/version/", &[("X-Forwarded-Proto", "https")], b"");
    assert_eq!(proxied.status, 200, "no redirect loop behind a TLS proxy");
    assert_eq!(
        proxied.header("strict-transport-security"),
        Some("max-age=3600")
    );
}

#[test]
fn health_endpoints_report_real_checks() {
    for backend in backends() {
        let (site, d) = site_and_server(backend);
        let json = d.get("/health/json/");
        assert_eq!(json.status, 200);
        let data = json.json()["data"].as_array().cloned().expect("data array");
        let names: Vec<&str> = data
            .iter()
            .map(|c| c["check"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            names,
            ["SMTP", "Database", "Storage", "Celery"],
            "{backend:?}"
        );
        let by = |n: &str| data.iter().find(|c| c["check"] == n).cloned().expect(n);
        assert_eq!(by("Database")["healthy"], true);
        assert_eq!(by("Database")["error"], serde_json::Value::Null);
        assert_eq!(by("Storage")["healthy"], true);
        // Port 9 is closed: a refused connection.
        assert_eq!(by("SMTP")["error"], "Unavailable: Connection refused error");
        assert!(by("SMTP")["time_taken"].as_f64().is_some());
        // The storage probe leaves no file behind.
        let probe_dir = site.path("state/media/health_check_storage_test");
        assert!(
            !probe_dir.exists()
                || std::fs::read_dir(&probe_dir)
                    .map(|d| d.count())
                    .unwrap_or(0)
                    == 0
        );
        let plain = d.get("/health/");
        assert_eq!(plain.status, 500, "SMTP and Celery are down");
        assert!(plain.body.is_empty());
        let prom = d.get("/health/prom/");
        assert_eq!(prom.status, 200);
        assert_eq!(
            prom.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        let text = prom.text();
        assert!(text.starts_with("# HELP keystone_health_check_status Health check status (200 = healthy, 500 = unhealthy)\n# TYPE keystone_health_check_status gauge\nkeystone_health_check_status{check=\"SMTP\"} 500.0\nkeystone_health_check_status{check=\"Database\"} 200.0\n"), "{text}");
        assert!(text.ends_with('\n'));
        assert_eq!(d.request("DELETE", "/health/", &[], b"").status, 405);
        assert_eq!(d.request("OPTIONS", "/health/", &[], b"").status, 200);
    }
}

#[test]
fn health_reports_a_broken_database() {
    let site = Site::new(Backend::Sqlite);
    site.migrate();
    let d = site.serve("web", &[("KEYSTONE_HEALTH__CACHE_SECONDS", "0")]);
    assert_eq!(d.get("/health/json/").status, 200);
    // Remove the storage directory's write permission: the Storage check must say so.
    let media = site.path("state/media");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&media, std::fs::Permissions::from_mode(0o500)).expect("chmod");
    let running_as_root = unsafe { libc::geteuid() } == 0;
    let data = d.get("/health/json/").json()["data"].clone();
    let storage = data
        .as_array()
        .expect("data")
        .iter()
        .find(|c| c["check"] == "Storage")
        .cloned()
        .expect("storage");
    std::fs::set_permissions(&media, std::fs::Permissions::from_mode(0o770)).expect("chmod");
    if !running_as_root {
        assert_eq!(storage["healthy"], false, "{storage}");
        assert_eq!(storage["error"], "Unknown Error: unknown error");
    }
}

#[test]
fn openapi_documents_in_json_and_yaml() {
    let (_site, d) = site_and_server(Backend::Sqlite);
    let json = d.get("/openapi/json/");
    assert_eq!(json.status, 200);
    assert_eq!(
        json.header("content-type"),
        Some("application/vnd.oai.openapi+json")
    );
    let doc = json.json();
    assert_eq!(doc["openapi"], "3.0.3");
    assert_eq!(doc["info"]["title"], "Keystone API");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        doc["info"]["description"],
        "The backend REST API for the Keystone HPC utility."
    );
    for path in ["/version/", "/health/", "/health/json/", "/health/prom/"] {
        assert!(doc["paths"][path]["get"].is_object(), "{path} documented");
    }
    let paths = doc["paths"].as_object().expect("paths");
    assert!(
        !paths.contains_key("/openapi/json/"),
        "schema endpoints are not documented"
    );
    assert!(!paths.contains_key("/"), "the site root is not documented");
    let asked = d.request(
        "GET",
        "/openapi/json/",
        &[("Accept", "application/json")],
        b"",
    );
    assert_eq!(asked.header("content-type"), Some("application/json"));

    let yaml = d.get("/openapi/yaml/");
    assert_eq!(yaml.status, 200);
    assert_eq!(
        yaml.header("content-type"),
        Some("application/vnd.oai.openapi; charset=utf-8")
    );
    let text = yaml.text();
    assert!(
        text.starts_with("openapi: 3.0.3\ninfo:\n"),
        "{}",
        &text[..80.min(text.len())]
    );
    assert!(text.contains("\npaths:\n  /"), "paths block");
    assert!(text.contains("\n  /health/:\n"), "plain path keys");
    assert!(
        text.contains("\n  /users/users/{id}/:\n"),
        "templated path keys stay plain"
    );
    let keys: Vec<&str> = text
        .lines()
        // Blank lines belong to block scalars (upstream's document has them too).
        .filter(|l| !l.is_empty() && !l.starts_with(' ') && !l.starts_with('-'))
        .map(|l| l.split(':').next().unwrap_or(""))
        .collect();
    assert_eq!(keys, ["openapi", "info", "paths", "components"]);
    let asked = d.request(
        "GET",
        "/openapi/yaml/",
        &[("Accept", "application/yaml")],
        b"",
    );
    assert_eq!(
        asked.header("content-type"),
        Some("application/yaml; charset=utf-8")
    );

    // Upstream's coverage tool, where the shared folder is beside the clone.
    let tool =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/openapi-coverage");
    if tool.exists() {
        let out = std::process::Command::new("python3")
            .arg(&tool)
            .arg(format!("http://{}/openapi/json/", d.base()))
            .arg("--fields")
            .output()
            .expect("openapi-coverage");
        let report = String::from_utf8_lossy(&out.stdout).to_string();
        for op in [
            "GET    /version/",
            "GET    /health/",
            "GET    /health/json/",
            "GET    /health/prom/",
        ] {
            assert!(
                !report.contains(&format!("missing  {op}")),
                "{op}: {report}"
            );
        }
        // The only operation upstream lacks is the attachment download (upstream serves
        // uploads publicly; Keystone checks permissions, spec §6.4 decision 3).
        assert!(
            report
                .lines()
                .filter(|l| l.starts_with("extra "))
                .all(|l| l.ends_with("/allocations/attachments/{id}/download/")),
            "no other operation upstream lacks: {report}"
        );
        assert!(
            report.contains("0 with missing response fields"),
            "{report}"
        );
    } else {
        eprintln!("SKIPPED openapi-coverage comparison (../shared/tools not beside this clone)");
    }
}
