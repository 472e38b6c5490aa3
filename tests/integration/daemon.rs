//! systemd integration of the real binary: socket activation (TCP and Unix) under
//! `systemd-socket-activate`, READY=1/STOPPING=1 on a notify socket, graceful drain on
//! SIGTERM, and the worker and beat roles.

use crate::common::http;
use crate::common::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `systemd-socket-activate` passes only the variables named with `-E`.
fn socket_activated(site: &Site, listen: &str, notify: &NotifySocket) -> Command {
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l").arg(listen);
    for (k, v) in &site.env {
        cmd.arg("-E").arg(format!("{k}={v}"));
    }
    cmd.arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify.path.display()));
    cmd.arg(BIN).args(["serve", "--role", "web"]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn socket_activation_over_tcp_serves_the_first_connection() {
    if !socket_activate_available() {
        return;
    }
    let site = Site::new(Backend::Sqlite);
    site.migrate();
    let port = free_port();
    let mut notify = NotifySocket::bind(site.dir.path());
    let mut child = socket_activated(&site, &format!("127.0.0.1:{port}"), &notify)
        .spawn()
        .expect("systemd-socket-activate");
    // The first connection starts keystone, which must answer it on the inherited socket.
    let res = http::get_retrying(
        &format!("127.0.0.1:{port}"),
        "/version/",
        Duration::from_secs(20),
    );
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), env!("CARGO_PKG_VERSION"));
    let ready = notify
        .wait_for("READY=1", Duration::from_secs(10))
        .expect("READY=1 from the socket-activated service");
    assert!(
        ready.contains(&format!("127.0.0.1:{port}")),
        "status names the listener: {ready}"
    );
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status}: {}", collect(&mut child));
    assert!(
        notify
            .wait_for("STOPPING=1", Duration::from_secs(5))
            .is_some()
    );
}

#[test]
fn socket_activation_over_a_unix_socket() {
    if !socket_activate_available() {
        return;
    }
    let site = Site::new(Backend::Sqlite);
    site.migrate();
    let socket = site.path("keystone.sock");
    let notify = NotifySocket::bind(site.dir.path());
    let mut child = socket_activated(&site, &socket.display().to_string(), &notify)
        .spawn()
        .expect("systemd-socket-activate");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let res = http::request_unix(&socket, "GET", "/version/");
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), env!("CARGO_PKG_VERSION"));
    // A second request on a new connection reaches the same, already running process.
    let res = http::request_unix(&socket, "GET", "/health/json/");
    assert_eq!(res.status, 200);
    assert!(res.json()["data"].is_array());
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status}: {}", collect(&mut child));
}

#[test]
fn serve_binds_a_unix_socket_path_itself_and_removes_it_on_stop() {
    let site = Site::new(Backend::Sqlite);
    site.migrate();
    let socket = site.path("own.sock");
    // A stale socket file from a crashed run is replaced.
    let stale = std::os::unix::net::UnixListener::bind(&socket).expect("stale socket");
    drop(stale);
    let mut cmd = site.command(&["serve", "--role", "web"]);
    cmd.env(
        "KEYSTONE_SERVER__BIND",
        format!("unix:{}", socket.display()),
    );
    let daemon = Daemon::spawn(cmd, site.dir.path(), None);
    let res = http::request_unix(&socket, "GET", "/version/");
    assert_eq!(res.status, 200);
    let (status, out) = daemon.stop();
    assert!(status.success(), "{out}");
    assert!(!socket.exists(), "socket file removed on a clean stop");
}

#[test]
fn ready_and_stopping_are_notified_and_sigterm_exits_zero() {
    for backend in backends() {
        let mut site = Site::new(backend);
        site.migrate();
        site.set("KEYSTONE_LOGGING__LEVEL", "info");
        let mut daemon = site.serve("web", &[]);
        let ready = daemon
            .notify
            .wait_for("READY=1", Duration::from_secs(1))
            .expect("ready");
        assert!(
            ready.contains("STATUS="),
            "READY=1 carries a status line: {ready}"
        );
        assert!(ready.contains("listening on 127.0.0.1:"), "{ready}");
        assert_eq!(daemon.get("/version/").status, 200);
        daemon.signal(libc::SIGTERM);
        let stopping = daemon
            .notify
            .wait_for("STOPPING=1", Duration::from_secs(10));
        assert!(stopping.is_some(), "STOPPING=1 after SIGTERM ({backend:?})");
        let status = wait_exit(&mut daemon.child, Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "{backend:?}");
    }
}

/// An SMTP server that waits before its greeting, so `/health/json/` takes that long.
fn slow_smtp(delay: Duration) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let mut w = stream.try_clone().expect("clone");
                let _ = w.write_all(b"220 slow.test ESMTP\r\n");
                let reader = BufReader::new(stream);
                for line in reader.lines().map_while(Result::ok) {
                    let up = line.to_ascii_uppercase();
                    let reply: &[u8] = if up.starts_with("EHLO") || up.starts_with("HELO") {
                        b"250 slow.test\r\n"
                    } else if up.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n");
                        break;
                    } else {
                        b"250 OK\r\n"
                    };
                    let _ = w.write_all(reply);
                }
            });
        }
    });
    port
}

/// Whether a new connection gets an HTTP answer (a kernel backlog may still take the
/// connection after the listener stopped accepting; what matters is that nobody answers it).
fn served(addr: &str) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /version/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    matches!(s.read(&mut buf), Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1"))
}

#[test]
fn sigterm_drains_a_slow_request_and_refuses_new_connections() {
    let site = Site::new(Backend::Sqlite);
    site.migrate();
    let smtp_port = slow_smtp(Duration::from_secs(3));
    let daemon = site.serve(
        "web",
        &[
            ("KEYSTONE_EMAIL__PORT", &smtp_port.to_string()),
            ("KEYSTONE_SHUTDOWN__GRACE_SECONDS", "20"),
        ],
    );
    let base = daemon.base();
    let started = Instant::now();
    let slow = std::thread::spawn(move || http::request(&base, "GET", "/health/json/", &[], b""));
    std::thread::sleep(Duration::from_millis(700));
    daemon.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    // While the slow request drains, the listener no longer accepts.
    let refused = !served(&daemon.base());
    let res = slow.join().expect("slow request thread");
    assert_eq!(res.status, 200, "the in-flight request completes");
    let smtp = &res.json()["data"][0];
    assert_eq!(smtp["check"], "SMTP");
    assert_eq!(smtp["healthy"], true, "{smtp}");
    assert!(started.elapsed() >= Duration::from_secs(3));
    let (status, out) = daemon.stop();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(refused, "a new connection after SIGTERM is not served");
}

#[test]
fn worker_and_beat_roles_with_redis() {
    if !redis_available() {
        return;
    }
    for backend in backends() {
        let mut site = Site::new(backend);
        site.migrate();
        site.set("KEYSTONE_REDIS__URL", &redis_url());
        let worker = site.serve("worker", &[]);
        let beat = site.serve("beat", &[]);
        // The web role's Celery check sees the live worker through its heartbeat.
        let web = site.serve("web", &[]);
        let health = web.get("/health/json/").json();
        let checks: Vec<(&str, bool)> = health["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|c| (c["check"].as_str().unwrap_or(""), c["healthy"] == true))
            .collect();
        assert!(checks.contains(&("Redis", true)), "{health}");
        assert!(checks.contains(&("Celery", true)), "{health}");
        for d in [worker, beat, web] {
            let (status, out) = d.stop();
            assert_eq!(status.code(), Some(0), "{backend:?}: {out}");
        }
    }
}

#[test]
fn worker_without_a_live_worker_reports_celery_unavailable() {
    let site = Site::new(Backend::Sqlite);
    site.migrate();
    let web = site.serve("web", &[]);
    let health = web.get("/health/json/").json();
    let celery = health["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|c| c["check"] == "Celery")
        .cloned()
        .expect("Celery check");
    assert_eq!(celery["healthy"], false);
    assert_eq!(celery["error"], "Unavailable: Celery workers unavailable");
    assert_eq!(web.get("/health/").status, 500);
}

#[test]
fn unreachable_redis_stops_the_worker_with_a_clear_error() {
    let mut site = Site::new(Backend::Sqlite);
    site.migrate();
    site.set(
        "KEYSTONE_REDIS__URL",
        &format!("redis://127.0.0.1:{}/0", free_port()),
    );
    let out = site.run(&["serve", "--role", "worker"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Redis is not reachable"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn metrics_are_served_on_the_first_free_port_of_the_range() {
    let site = Site::new(Backend::Sqlite);
    site.migrate();
    // The first port of the range is taken: the next one is used.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let first = busy.local_addr().expect("addr").port();
    let second = free_port();
    let ports = format!("{first},{second}");
    let mut daemon = site.serve("web", &[("KEYSTONE_METRICS__PORTS", &ports)]);
    let ready = daemon
        .notify
        .wait_for("READY=1", Duration::from_secs(1))
        .expect("ready");
    assert!(
        ready.contains(&format!("metrics on http://127.0.0.1:{second}/metrics")),
        "{ready}"
    );
    for _ in 0..3 {
        assert_eq!(daemon.get("/version/").status, 200);
    }
    assert_eq!(daemon.get("/no-such-page/").status, 404);
    let metrics = http::request(&format!("127.0.0.1:{second}"), "GET", "/metrics", &[], b"");
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    let has = |needle: &str| text.lines().any(|l| l.starts_with(needle));
    assert!(
        has("keystone_http_requests_total{method=\"GET\",route=\"/version/\",status=\"200\"} 3"),
        "{text}"
    );
    assert!(
        has("keystone_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"} 1"),
        "{text}"
    );
    assert!(
        has("keystone_http_request_duration_seconds_bucket{method=\"GET\",route=\"/version/\""),
        "{text}"
    );
    assert!(has("keystone_http_requests_in_flight"), "{text}");
    assert!(
        has("keystone_db_pool_connections{state=\"idle\"}"),
        "{text}"
    );
    assert!(has("keystone_request_log_dropped 0"), "{text}");
    assert_eq!(
        http::request(&format!("127.0.0.1:{second}"), "GET", "/other", &[], b"").status,
        404
    );
    drop(busy);
    let (status, out) = daemon.stop();
    assert!(status.success(), "{out}");
}
