//! The web role while its PostgreSQL cannot be reached: the database sits behind a TCP relay
//! that the test cuts (every connection reset, new ones refused) and restores. Requests
//! during the outage get a prompt 503 with a JSON body, never a 500 or a hang, and the pool
//! recovers by itself.

use crate::common::relay::Relay;
use crate::common::*;
use std::time::{Duration, Instant};

#[test]
fn a_database_outage_is_a_prompt_503_and_the_pool_recovers() {
    if !postgres_available() {
        return;
    }
    let mut site = Site::new(Backend::Postgres);
    site.migrate();
    let out = site.run_with_input(
        &[
            "user",
            "create",
            "--username",
            "ops",
            "--staff",
            "--no-input",
            "--password-stdin",
        ],
        "Outage-Pass-123\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&site.run(&["token", "create", "ops"]))
        .trim()
        .to_string();
    let mut relay = Relay::to_postgres();
    site.set("KEYSTONE_DATABASE__HOST", "127.0.0.1")
        .set("KEYSTONE_DATABASE__PORT", &relay.port.to_string());
    let web = site.serve("web", &[]);
    let addr = format!("127.0.0.1:{}", web.port.expect("port"));
    let auth = format!("Token {token}");
    let get = |path: &str| {
        crate::common::http::request(&addr, "GET", path, &[("Authorization", &auth)], b"")
    };
    assert_eq!(get("/users/users/").status, 200);

    relay.cut();
    for path in ["/users/users/", "/users/teams/", "/authentication/whoami/"] {
        let started = Instant::now();
        let r = get(path);
        let took = started.elapsed();
        assert_eq!(
            r.status,
            503,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            r.json()["detail"],
            "The database is temporarily unavailable. Try again shortly.",
            "{path}"
        );
        // database.acquire_timeout (3 s) bounds the wait for a connection.
        assert!(
            took < Duration::from_secs(4),
            "{path}: answered after {took:?}"
        );
    }
    let comment = crate::common::http::request(
        &addr,
        "POST",
        "/users/teams/",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        br#"{"name": "Written during the outage"}"#,
    );
    assert_eq!(comment.status, 503);

    relay.restore();
    let started = Instant::now();
    let mut status = 0;
    while started.elapsed() < Duration::from_secs(20) {
        status = get("/users/users/").status;
        if status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(status, 200, "the pool reconnected by itself");
    let teams = get("/users/teams/").json();
    assert!(
        !teams.to_string().contains("Written during the outage"),
        "a write answered 503 was not stored: {teams}"
    );
    let (exit, out) = web.stop();
    assert_eq!(exit.code(), Some(0), "{out}");
    assert!(
        !out.contains("database error"),
        "logged as unavailable, not as an error: {out}"
    );
}
