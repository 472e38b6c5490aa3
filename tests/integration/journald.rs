//! Structured journald fields (issue: operator's surface): a web role whose stderr is a
//! journal stream (`JOURNAL_STREAM`) sends native journal records carrying `KEYSTONE_ROLE`,
//! the request's `KEYSTONE_CID` and the caller's `KEYSTONE_USER_ID`, so that
//! `journalctl KEYSTONE_CID=...` follows one request.
//!
//! journald's socket path is fixed (`/run/systemd/journal/socket`). The test binds it
//! itself, so it runs only where no journald owns that path and the test may create it
//! (root in CI); elsewhere it is skipped with a message.

use crate::common::*;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

const SOCKET: &str = "/run/systemd/journal/socket";

/// Parses one datagram of journald's native protocol: `NAME=value\n`, or `NAME\n` followed
/// by a little-endian u64 length, the value and `\n`.
fn parse_record(mut data: &[u8]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    while !data.is_empty() {
        let Some(nl) = data.iter().position(|b| *b == b'\n') else {
            break;
        };
        let line = &data[..nl];
        if let Some(eq) = line.iter().position(|b| *b == b'=') {
            out.insert(
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            );
            data = &data[nl + 1..];
        } else {
            let name = String::from_utf8_lossy(line).into_owned();
            let rest = &data[nl + 1..];
            if rest.len() < 8 {
                break;
            }
            let mut len = [0u8; 8];
            len.copy_from_slice(&rest[..8]);
            let len = usize::try_from(u64::from_le_bytes(len)).unwrap_or(usize::MAX);
            if rest.len() < 8 + len {
                break;
            }
            out.insert(
                name,
                String::from_utf8_lossy(&rest[8..8 + len]).into_owned(),
            );
            data = rest.get(8 + len + 1..).unwrap_or(&[]);
        }
    }
    out
}

#[test]
fn journald_records_carry_role_cid_and_user() {
    if Path::new(SOCKET).exists() {
        unavailable(
            "journald-capture",
            "a journald already owns /run/systemd/journal/socket; this test binds it itself",
        );
        return;
    }
    if std::fs::create_dir_all("/run/systemd/journal").is_err() {
        unavailable(
            "journald-capture",
            "cannot create /run/systemd/journal (needs root)",
        );
        return;
    }
    let journal = match UnixDatagram::bind(SOCKET) {
        Ok(s) => s,
        Err(e) => {
            unavailable("journald-capture", &format!("cannot bind {SOCKET}: {e}"));
            return;
        }
    };
    struct Cleanup;
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(SOCKET);
            let _ = std::fs::remove_dir("/run/systemd/journal");
            let _ = std::fs::remove_dir("/run/systemd");
        }
    }
    let _cleanup = Cleanup;
    journal
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");

    let site = Site::new(Backend::Sqlite);
    site.migrate();
    let out = site.run_with_input(
        &[
            "user",
            "create",
            "--username",
            "journal",
            "--no-input",
            "--password-stdin",
        ],
        "Journal-Pass-4821\n",
    );
    assert!(out.status.success(), "user create: {}", stderr(&out));
    let token = stdout(&site.run(&["token", "create", "journal", "--name", "t"]))
        .trim()
        .to_string();

    // stderr is a file; JOURNAL_STREAM names it, as systemd does for a unit's stderr.
    let err_path = site.path("stderr.log");
    let err_file = std::fs::File::create(&err_path).expect("stderr file");
    let meta = err_file.metadata().expect("metadata");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = site
        .command(&[
            "--log-level",
            "info",
            "serve",
            "--role",
            "web",
            "--bind",
            &addr,
        ])
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stdout(std::process::Stdio::null())
        .stderr(err_file)
        .spawn()
        .expect("spawn web");
    // Stopped however the test ends, so a failed assertion leaves no server behind.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(self.0.id() as i32, libc::SIGTERM);
            }
            wait_exit(&mut self.0, Duration::from_secs(20));
        }
    }
    let server = Stop(child);
    let ready = http::get_retrying(&addr, "/version/", Duration::from_secs(30));
    assert_eq!(ready.status, 200, "web did not come up");

    let cid = "5f0c3f5e-8a55-4e8e-9a53-6f1f3f7d2b11";
    let auth = format!("Token {token}");
    let r = http::request(
        &addr,
        "GET",
        "/authentication/whoami/",
        &[("Authorization", auth.as_str()), ("X-KEYSTONE-CID", cid)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let user_id = r.json()["id"].as_i64().expect("id").to_string();

    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 65536];
    let mut found = None;
    while Instant::now() < deadline && found.is_none() {
        if let Ok(n) = journal.recv(&mut buf) {
            let rec = parse_record(&buf[..n]);
            if rec.get("KEYSTONE_CID").map(String::as_str) == Some(cid) {
                found = Some(rec.clone());
            }
            records.push(rec);
        }
    }
    drop(server);
    let rec = found.unwrap_or_else(|| {
        panic!(
            "no journal record with KEYSTONE_CID={cid}; got {} records: {records:?}",
            records.len()
        )
    });
    assert_eq!(
        rec.get("KEYSTONE_ROLE").map(String::as_str),
        Some("web"),
        "{rec:?}"
    );
    assert_eq!(rec.get("KEYSTONE_USER_ID"), Some(&user_id), "{rec:?}");
    assert_eq!(
        rec.get("SYSLOG_IDENTIFIER").map(String::as_str),
        Some("keystone")
    );
    assert!(
        rec.get("MESSAGE")
            .is_some_and(|m| m.contains("GET /authentication/whoami/ 200")),
        "{rec:?}"
    );
    // Records of the start-up also name the role, but no request.
    assert!(
        records.iter().any(
            |r| r.get("KEYSTONE_ROLE").map(String::as_str) == Some("web")
                && !r.contains_key("KEYSTONE_CID")
        ),
        "{records:?}"
    );
    // Nothing went to the stderr file: records went to the journal socket.
    let text = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(!text.contains(cid), "{text}");

    // A task run by hand: its records name the task and its run; the role is `cli`.
    let err_file = std::fs::File::create(&err_path).expect("stderr file");
    let meta = err_file.metadata().expect("metadata");
    let out = site
        .command(&[
            "--log-level",
            "info",
            "task",
            "run",
            "log-cleanup",
            "--inline",
        ])
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stderr(err_file)
        .output()
        .expect("task run");
    assert!(out.status.success(), "task run: {}", stdout(&out));
    let mut task_records = Vec::new();
    while let Ok(n) = journal.recv(&mut buf) {
        task_records.push(parse_record(&buf[..n]));
    }
    let rec = task_records
        .iter()
        .find(|r| r.contains_key("KEYSTONE_TASK"))
        .unwrap_or_else(|| panic!("no record of the task: {task_records:?}"));
    assert_eq!(rec["KEYSTONE_TASK"], "apps.logging.tasks.clear_log_records");
    assert!(
        uuid::Uuid::parse_str(&rec["KEYSTONE_TASK_ID"]).is_ok(),
        "{rec:?}"
    );
    assert_eq!(rec["KEYSTONE_ROLE"], "cli", "{rec:?}");
}

#[test]
fn native_protocol_parser_reads_both_field_forms() {
    let mut data = b"MESSAGE=hello\nKEYSTONE_ROLE=web\nMULTI\n".to_vec();
    data.extend_from_slice(&5u64.to_le_bytes());
    data.extend_from_slice(b"a\nb c\nLAST=1\n");
    let rec = parse_record(&data);
    assert_eq!(rec["MESSAGE"], "hello");
    assert_eq!(rec["MULTI"], "a\nb c");
    assert_eq!(rec["LAST"], "1");
}
