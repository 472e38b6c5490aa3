//! The web role while its PostgreSQL cannot be reached: the database sits behind a TCP relay
//! that the test cuts (every connection reset, new ones refused) and restores. Requests
//! during the outage get a prompt 503 with a JSON body, never a 500 or a hang, and the pool
//! recovers by itself.

use crate::common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A TCP relay from a loopback port to `target`, which can be cut and restored.
struct Relay {
    port: u16,
    target: String,
    up: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    listener: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(target: &str) -> Relay {
        let mut relay = Relay {
            port: free_port(),
            target: target.to_string(),
            up: Arc::new(AtomicBool::new(false)),
            streams: Arc::default(),
            listener: None,
        };
        relay.restore();
        relay
    }

    fn pipe(mut from: TcpStream, mut to: TcpStream) {
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
        });
    }

    /// Listens again and relays every new connection.
    fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("relay port");
        self.up.store(true, Ordering::SeqCst);
        let (up, streams, target) = (self.up.clone(), self.streams.clone(), self.target.clone());
        self.listener = Some(std::thread::spawn(move || {
            for client in listener.incoming() {
                if !up.load(Ordering::SeqCst) {
                    break; // the listener is dropped: new connections are refused
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let mut kept = streams.lock().expect("streams");
                for s in [&client, &server] {
                    kept.push(s.try_clone().expect("clone"));
                }
                Relay::pipe(
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                Relay::pipe(server, client);
            }
        }));
    }

    /// Resets every relayed connection and refuses new ones.
    fn cut(&mut self) {
        self.up.store(false, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes the accept loop
        if let Some(l) = self.listener.take() {
            let _ = l.join();
        }
        for s in self.streams.lock().expect("streams").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

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
    let url = url::Url::parse(&postgres_admin_url()).expect("postgres url");
    let mut relay = Relay::start(&format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(5432)
    ));
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
