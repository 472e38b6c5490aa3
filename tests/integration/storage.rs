//! Migrations on both backends and the schema check every role runs before serving.

use crate::common::*;

#[test]
fn migrate_applies_once_then_reports_up_to_date() {
    for backend in backends() {
        let site = Site::new(backend);
        let check = site.run(&["migrate", "--check"]);
        assert_eq!(
            check.status.code(),
            Some(1),
            "{backend:?}: pending before migrate"
        );
        assert!(
            stdout(&check).contains("pending  0001"),
            "{}",
            stdout(&check)
        );

        let first = site.run(&["migrate"]);
        assert!(first.status.success(), "{backend:?}: {}", stderr(&first));
        assert!(
            stdout(&first).contains("Applied migration 0001 initial... OK"),
            "{}",
            stdout(&first)
        );
        let second = site.run(&["migrate"]);
        assert!(second.status.success());
        assert!(
            stdout(&second).contains("up to date"),
            "{}",
            stdout(&second)
        );
        let check = site.run(&["migrate", "--check"]);
        assert_eq!(
            check.status.code(),
            Some(0),
            "{backend:?}: {}",
            stderr(&check)
        );
        if backend == Backend::Sqlite {
            assert!(site.path("state/keystone.db").exists());
        }
    }
}

#[test]
fn serve_refuses_an_unmigrated_database() {
    for backend in backends() {
        let site = Site::new(backend);
        let out = site.run(&["serve", "--role", "web", "--bind", "127.0.0.1:0"]);
        assert_eq!(out.status.code(), Some(1), "{backend:?}");
        let err = stderr(&out);
        assert!(err.contains("keystone migrate"), "{backend:?}: {err}");
        if backend == Backend::Sqlite {
            assert!(
                !site.path("state/keystone.db").exists(),
                "serve must not create the database file"
            );
        }
    }
}

#[test]
fn serve_and_migrate_refuse_a_schema_newer_than_the_binary() {
    for backend in backends() {
        let site = Site::new(backend);
        site.migrate();
        let insert = "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (9999, 'from the future', TRUE, X'00', 1)";
        match backend {
            Backend::Sqlite => {
                let db = site.path("state/keystone.db");
                let status = std::process::Command::new("sqlite3")
                    .arg(&db)
                    .arg(insert)
                    .status();
                match status {
                    Ok(s) if s.success() => {}
                    _ => {
                        unavailable("sqlite3", "sqlite3 CLI missing (Debian package sqlite3)");
                        continue;
                    }
                }
            }
            Backend::Postgres => {
                let db = site.pg_database.clone().expect("pg database");
                let url = postgres_admin_url();
                let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&url);
                let status = std::process::Command::new("psql")
                    .arg(format!("{base}/{db}"))
                    .arg("-c")
                    .arg(insert.replace("X'00'", "'\\x00'::bytea"))
                    .output()
                    .expect("psql");
                assert!(status.status.success(), "{}", stderr(&status));
            }
        }
        let out = site.run(&["serve", "--role", "web", "--bind", "127.0.0.1:0"]);
        assert_eq!(out.status.code(), Some(1), "{backend:?}");
        assert!(
            stderr(&out).contains("newer than this keystone binary"),
            "{}",
            stderr(&out)
        );
        let out = site.run(&["migrate"]);
        assert_eq!(out.status.code(), Some(1), "{backend:?}");
        assert!(
            stderr(&out).contains("newer than this keystone binary"),
            "{}",
            stderr(&out)
        );
    }
}
