//! LDAP login, the sync search and the health check against a real OpenLDAP `slapd`
//! (Debian packages `slapd` and `ldap-utils`), started per test on a free loopback port
//! with a throw-away slapd.conf and mdb database, seeded with `ldapadd`.

use crate::common::*;
use keystone::config;
use keystone::infra::ldap::{self, LdapError, LdapUser};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SLAPD: &str = "/usr/sbin/slapd";
const SLAPPASSWD: &str = "/usr/sbin/slappasswd";
const LDAPADD: &str = "ldapadd";

const BASE: &str = "dc=example,dc=org";
const PEOPLE: &str = "ou=people,dc=example,dc=org";
const ADMIN_DN: &str = "cn=admin,dc=example,dc=org";
const ADMIN_PASSWORD: &str = "admin-secret";

pub(crate) const ALICE_PASSWORD: &str = "alice-secret";
pub(crate) const BOB_PASSWORD: &str = "bob secret";
const STAR_PASSWORD: &str = "star-secret";
const CAROL_PASSWORD: &str = "carol-secret";

/// Whether slapd and the client tools are installed (checked once per test binary).
pub(crate) fn slapd_available() -> bool {
    static OK: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let r = OK.get_or_init(|| {
        for tool in [SLAPD, SLAPPASSWD] {
            if !Path::new(tool).exists() {
                return Err(format!("{tool} not found (Debian package slapd)"));
            }
        }
        Command::new(LDAPADD)
            .arg("-VV")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|_| ())
            .map_err(|e| format!("{LDAPADD}: {e} (Debian package ldap-utils)"))
    });
    match r {
        Ok(()) => true,
        Err(e) => {
            unavailable("slapd", e);
            false
        }
    }
}

/// A private slapd: killed and its directory removed on drop.
pub(crate) struct Slapd {
    child: Child,
    pub(crate) port: u16,
    /// With TLS: the ldaps:// port. slapd then refuses simple binds without TLS.
    tls_port: Option<u16>,
    dir: tempfile::TempDir,
}

impl Slapd {
    pub(crate) fn start() -> Slapd {
        Slapd::launch(false)
    }

    /// With a self-signed certificate for 127.0.0.1, StartTLS and an ldaps:// listener,
    /// and `security simple_bind=1`: a password sent before TLS is refused.
    fn start_tls() -> Slapd {
        Slapd::launch(true)
    }

    fn launch(tls: bool) -> Slapd {
        // free_port() hands out a port another test might grab first: retry on a new one.
        let mut last = String::new();
        for _ in 0..3 {
            match Slapd::try_start(tls) {
                Ok(slapd) => {
                    slapd.seed();
                    return slapd;
                }
                Err(e) => last = e,
            }
        }
        panic!("slapd did not start: {last}");
    }

    fn try_start(tls: bool) -> Result<Slapd, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let db = dir.path().join("db");
        std::fs::create_dir(&db).map_err(|e| e.to_string())?;
        let d = dir.path().display();
        let tls_conf = if tls {
            self_signed_certificate(dir.path())?;
            format!(
                "TLSCertificateFile {d}/cert.pem\nTLSCertificateKeyFile {d}/key.pem\n\
                 security simple_bind=1\n"
            )
        } else {
            String::new()
        };
        let conf = format!(
            "include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile {d}/slapd.pid
argsfile {d}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
{tls_conf}database mdb
maxsize 10485760
suffix \"{BASE}\"
rootdn \"{ADMIN_DN}\"
rootpw {rootpw}
directory {db}
access to attrs=userPassword by self write by anonymous auth by * none
access to dn.subtree=\"ou=staff,{BASE}\" by users read by anonymous auth by * none
access to * by * read
",
            rootpw = hash(ADMIN_PASSWORD),
            db = db.display(),
        );
        let conf_path = dir.path().join("slapd.conf");
        std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.path().join("slapd.log")).map_err(|e| e.to_string())?;
        let port = free_port();
        let tls_port = tls.then(free_port);
        let mut listeners = format!("ldap://127.0.0.1:{port}/");
        if let Some(p) = tls_port {
            listeners += &format!(" ldaps://127.0.0.1:{p}/");
        }
        // `-d 0` keeps slapd in the foreground as our child, with no debug output.
        let child = Command::new(SLAPD)
            .args(["-d", "0", "-h", &listeners])
            .arg("-f")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {SLAPD}: {e}"))?;
        let mut slapd = Slapd {
            child,
            port,
            tls_port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(slapd);
            }
            if let Ok(Some(status)) = slapd.child.try_wait() {
                return Err(format!("slapd exited with {status}: {}", slapd.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("slapd not listening after 10 s: {}", slapd.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }

    fn uri(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// ou=people holds alice, bob, `a*b(c)` and an entry without uid; ou=staff, which
    /// anonymous clients cannot read, holds carol and a second alice.
    fn seed(&self) {
        let person = |ou: &str, uid: &str, attrs: &str, password: &str| {
            format!(
                "dn: uid={uid},ou={ou},{BASE}\nobjectClass: inetOrgPerson\nuid: {uid}\n\
                 cn: {uid}\n{attrs}userPassword: {}\n\n",
                hash(password)
            )
        };
        let mut ldif = format!(
            "dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: Example\n\
             dc: example\n\ndn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n"
        );
        ldif += &person(
            "people",
            "alice",
            "givenName: Alice\nsn: Anders\nmail: alice@example.org\ndepartmentNumber: Physics\n",
            ALICE_PASSWORD,
        );
        // givenName "Bjørn", base64 because plain LDIF values are ASCII.
        ldif += &person(
            "people",
            "bob",
            "givenName:: QmrDuHJu\nsn: Brown\nmail: bob@example.org\n",
            BOB_PASSWORD,
        );
        ldif += &person(
            "people",
            "a*b(c)",
            "givenName: Star\nsn: Asterisk\nmail: star@example.org\n",
            STAR_PASSWORD,
        );
        ldif += &format!(
            "dn: cn=No Uid,{PEOPLE}\nobjectClass: inetOrgPerson\ncn: No Uid\nsn: Nouid\n\n\
             dn: ou=staff,{BASE}\nobjectClass: organizationalUnit\nou: staff\n\n"
        );
        ldif += &person(
            "staff",
            "carol",
            "givenName: Carol\nsn: Clark\n",
            CAROL_PASSWORD,
        );
        ldif += &person(
            "staff",
            "alice",
            "givenName: Other\nsn: Alice\n",
            ALICE_PASSWORD,
        );
        let path = self.dir.path().join("seed.ldif");
        std::fs::write(&path, ldif).expect("write seed.ldif");
        let mut ldapadd = Command::new(LDAPADD);
        if self.tls_port.is_some() {
            // StartTLS (required for the admin bind), trusting the self-signed certificate.
            ldapadd.arg("-ZZ").env("LDAPTLS_REQCERT", "never");
        }
        let out = ldapadd
            .args([
                "-x",
                "-H",
                &self.uri(),
                "-D",
                ADMIN_DN,
                "-w",
                ADMIN_PASSWORD,
                "-f",
            ])
            .arg(&path)
            .output()
            .expect("run ldapadd");
        assert!(
            out.status.success(),
            "ldapadd failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Anonymous service access, searching ou=people, no TLS.
    fn settings(&self) -> config::Ldap {
        config::Ldap {
            server_uri: self.uri(),
            start_tls: false,
            user_search: PEOPLE.into(),
            user_filter: "(objectClass=inetOrgPerson)".into(),
            login_filter: "(uid=%(user)s)".into(),
            attr_map: BTreeMap::from(
                [
                    ("first_name", "givenName"),
                    ("last_name", "sn"),
                    ("email", "mail"),
                    ("department", "departmentNumber"),
                ]
                .map(|(k, v)| (k.to_string(), v.to_string())),
            ),
            timeout: 5,
            ..Default::default()
        }
    }

    /// As the admin service account, searching the whole suffix.
    fn service_settings(&self) -> config::Ldap {
        config::Ldap {
            bind_dn: ADMIN_DN.into(),
            bind_password: ADMIN_PASSWORD.into(),
            user_search: BASE.into(),
            ..self.settings()
        }
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed P-256 certificate for 127.0.0.1 as `cert.pem` and `key.pem` in `dir`.
fn self_signed_certificate(dir: &Path) -> Result<(), String> {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
        ])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn hash(password: &str) -> String {
    let out = Command::new(SLAPPASSWD)
        .args(["-s", password])
        .output()
        .expect("run slappasswd");
    assert!(out.status.success(), "slappasswd failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn fields(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.map(String::from)))
        .collect()
}

fn alice() -> LdapUser {
    LdapUser {
        dn: format!("uid=alice,{PEOPLE}"),
        username: "alice".into(),
        fields: fields(&[
            ("department", Some("Physics")),
            ("email", Some("alice@example.org")),
            ("first_name", Some("Alice")),
            ("last_name", Some("Anders")),
        ]),
    }
}

/// Settings pointing at a loopback port nothing listens on.
fn closed_port_settings() -> config::Ldap {
    config::Ldap {
        server_uri: format!("ldap://127.0.0.1:{}", free_port()),
        start_tls: false,
        user_search: PEOPLE.into(),
        timeout: 2,
        ..Default::default()
    }
}

#[tokio::test]
async fn login_checks_the_password_against_the_directory() {
    if !slapd_available() {
        return;
    }
    let slapd = Slapd::start();
    let s = slapd.settings();

    let user = ldap::authenticate(&s, "alice", ALICE_PASSWORD).await;
    assert_eq!(user.expect("directory answers"), Some(alice()));

    let bob = ldap::authenticate(&s, "bob", BOB_PASSWORD)
        .await
        .expect("directory answers")
        .expect("bob logs in");
    assert_eq!(bob.fields["first_name"].as_deref(), Some("Bjørn"));
    assert_eq!(bob.fields["department"], None, "absent attribute");

    for (username, password) in [
        ("alice", "wrong"),
        ("alice", "ALICE-SECRET"),
        ("alice", BOB_PASSWORD),
        ("nobody", ALICE_PASSWORD),
        ("alice", ""),
        ("", ALICE_PASSWORD),
        ("No Uid", "anything"),
    ] {
        let r = ldap::authenticate(&s, username, password).await;
        assert!(matches!(r, Ok(None)), "{username:?}/{password:?}: {r:?}");
    }
}

#[tokio::test]
async fn login_names_cannot_smuggle_filter_syntax() {
    if !slapd_available() {
        return;
    }
    let slapd = Slapd::start();
    let s = slapd.settings();

    // Unescaped, `al*` would match exactly alice and log in; `*` would match everybody.
    for username in ["*", "al*", "a*", "alice)(uid=*", "*)(|(uid=*", "alic\\65"] {
        let r = ldap::authenticate(&s, username, ALICE_PASSWORD).await;
        assert!(matches!(r, Ok(None)), "{username:?}: {r:?}");
    }
    // The escaped name matches the one entry literally called `a*b(c)` (unescaped it
    // would not even parse as a filter).
    let star = ldap::authenticate(&s, "a*b(c)", STAR_PASSWORD)
        .await
        .expect("directory answers")
        .expect("a*b(c) logs in");
    assert_eq!(star.username, "a*b(c)");
    assert_eq!(star.dn, format!("uid=a*b(c),{PEOPLE}"));
    assert!(matches!(
        ldap::authenticate(&s, "a*b(c)", ALICE_PASSWORD).await,
        Ok(None)
    ));
}

#[tokio::test]
async fn login_searches_as_the_service_account_when_one_is_set() {
    if !slapd_available() {
        return;
    }
    let slapd = Slapd::start();

    // ou=staff is invisible to anonymous searches: carol exists only for the service DN.
    let anonymous = config::Ldap {
        user_search: BASE.into(),
        ..slapd.settings()
    };
    let service = slapd.service_settings();
    assert!(matches!(
        ldap::authenticate(&anonymous, "carol", CAROL_PASSWORD).await,
        Ok(None)
    ));
    let carol = ldap::authenticate(&service, "carol", CAROL_PASSWORD)
        .await
        .expect("directory answers")
        .expect("carol logs in");
    assert_eq!(carol.dn, format!("uid=carol,ou=staff,{BASE}"));
    assert_eq!(carol.fields["email"], None);

    // Anonymous sees one alice; the service account sees two, and an ambiguous lookup
    // refuses the login.
    assert_eq!(
        ldap::authenticate(&anonymous, "alice", ALICE_PASSWORD)
            .await
            .expect("directory answers"),
        Some(alice())
    );
    assert!(matches!(
        ldap::authenticate(&service, "alice", ALICE_PASSWORD).await,
        Ok(None)
    ));

    // A wrong service password is a configuration error, not a failed login.
    let wrong = config::Ldap {
        bind_password: "not-the-admin-password".into(),
        ..service.clone()
    };
    let err = ldap::authenticate(&wrong, "carol", CAROL_PASSWORD)
        .await
        .expect_err("service bind fails");
    assert!(
        matches!(&err, LdapError::InvalidCredentials { dn } if dn == ADMIN_DN),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains("not-the-admin-password"));
}

#[tokio::test]
async fn an_unreachable_server_is_an_error() {
    let s = closed_port_settings();
    let err = ldap::authenticate(&s, "alice", ALICE_PASSWORD)
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, LdapError::Unreachable { .. }), "{err:?}");
    let err = ldap::search_users(&s).await.expect_err("nothing listens");
    assert!(matches!(err, LdapError::Unreachable { .. }), "{err:?}");

    let off = config::Ldap::default();
    assert!(!ldap::enabled(&off));
    assert!(matches!(
        ldap::authenticate(&off, "alice", "x").await,
        Err(LdapError::NotConfigured)
    ));
}

#[tokio::test]
async fn search_users_returns_the_mapped_directory_users() {
    if !slapd_available() {
        return;
    }
    let slapd = Slapd::start();

    // The entry without uid is skipped; ou=staff is invisible anonymously.
    let users = ldap::search_users(&slapd.settings())
        .await
        .expect("search works");
    // Entries come in the server's order (slapd's mdb orders siblings by RDN length).
    let by_name: BTreeMap<&str, &LdapUser> =
        users.iter().map(|u| (u.username.as_str(), u)).collect();
    assert_eq!(users.len(), 3);
    assert_eq!(
        by_name.keys().copied().collect::<Vec<_>>(),
        ["a*b(c)", "alice", "bob"]
    );
    assert_eq!(by_name["alice"], &alice());
    assert_eq!(
        by_name["bob"].fields,
        fields(&[
            ("department", None),
            ("email", Some("bob@example.org")),
            ("first_name", Some("Bjørn")),
            ("last_name", Some("Brown")),
        ])
    );

    // The whole suffix as the service account: carol appears, and of the two alices only
    // one (the first the server returned) is kept.
    let users = ldap::search_users(&slapd.service_settings())
        .await
        .expect("search works");
    let mut names: Vec<&str> = users.iter().map(|u| u.username.as_str()).collect();
    names.sort();
    assert_eq!(names, ["a*b(c)", "alice", "bob", "carol"]);

    // Attribute names in attr_map match whatever case the server uses.
    let mut shouting = slapd.settings();
    shouting.attr_map = BTreeMap::from([
        ("username".to_string(), "UID".to_string()),
        ("email".to_string(), "MAIL".to_string()),
    ]);
    let users = ldap::search_users(&shouting).await.expect("search works");
    let alice = users
        .iter()
        .find(|u| u.username == "alice")
        .expect("alice found");
    assert_eq!(
        alice.fields,
        fields(&[("email", Some("alice@example.org"))])
    );

    // A filter matching nothing is an empty list, not an error.
    let none = config::Ldap {
        user_filter: "(objectClass=account)".into(),
        ..slapd.settings()
    };
    assert_eq!(ldap::search_users(&none).await.expect("search works"), []);
}

#[tokio::test]
async fn health_check_reports_the_spec_error_strings() {
    if !slapd_available() {
        return;
    }
    let slapd = Slapd::start();
    assert_eq!(ldap::health_check(&slapd.settings()).await, Ok(()));
    assert_eq!(ldap::health_check(&slapd.service_settings()).await, Ok(()));

    let wrong = config::Ldap {
        bind_password: "wrong".into(),
        ..slapd.service_settings()
    };
    assert_eq!(
        ldap::health_check(&wrong).await,
        Err("Unavailable: Invalid LDAP credentials.".to_string())
    );
    assert_eq!(
        ldap::health_check(&closed_port_settings()).await,
        Err("Unavailable: LDAP server not reachable.".to_string())
    );

    // A server that accepts connections but never answers runs into the timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mute = config::Ldap {
        server_uri: format!("ldap://{}", silent.local_addr().expect("addr")),
        timeout: 1,
        ..slapd.service_settings()
    };
    let started = Instant::now();
    assert_eq!(
        ldap::health_check(&mute).await,
        Err("Unavailable: LDAP server not reachable.".to_string())
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn tls_is_negotiated_before_any_password_is_sent() {
    if !slapd_available() {
        return;
    }
    if Command::new("openssl").arg("version").output().is_err() {
        unavailable("slapd", "openssl (for a test certificate) not found");
        return;
    }
    let slapd = Slapd::start_tls();
    let plain = slapd.service_settings();
    let starttls = config::Ldap {
        start_tls: true,
        ..slapd.service_settings()
    };
    let ldaps = config::Ldap {
        server_uri: format!("ldaps://127.0.0.1:{}", slapd.tls_port.expect("tls port")),
        ..slapd.service_settings()
    };

    // The server refuses simple binds in the clear (confidentialityRequired)...
    let err = ldap::authenticate(&plain, "carol", CAROL_PASSWORD)
        .await
        .expect_err("bind in the clear refused");
    assert!(
        matches!(
            err,
            LdapError::Result {
                op: "bind",
                rc: 13,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        ldap::health_check(&plain).await,
        Err("Unavailable: Unexpected error.".to_string())
    );

    // ...so these only pass when TLS comes first, for the service and the user bind alike.
    for s in [&starttls, &ldaps] {
        assert_eq!(ldap::health_check(s).await, Ok(()), "{}", s.server_uri);
        let carol = ldap::authenticate(s, "carol", CAROL_PASSWORD)
            .await
            .expect("directory answers");
        assert_eq!(
            carol.map(|u| u.username),
            Some("carol".to_string()),
            "{}",
            s.server_uri
        );
        assert!(matches!(
            ldap::authenticate(s, "carol", ALICE_PASSWORD).await,
            Ok(None)
        ));
        assert_eq!(ldap::search_users(s).await.expect("search works").len(), 4);
    }

    // require_cert = true: a self-signed certificate is not in the system trust store.
    for s in [&starttls, &ldaps] {
        let strict = config::Ldap {
            require_cert: true,
            ..s.clone()
        };
        let err = ldap::authenticate(&strict, "carol", CAROL_PASSWORD)
            .await
            .expect_err("certificate rejected");
        assert!(matches!(err, LdapError::Tls { .. }), "{err:?}");
        assert_eq!(
            ldap::health_check(&strict).await,
            Err("Unavailable: Unexpected error.".to_string())
        );
    }
}
