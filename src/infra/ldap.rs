//! LDAP directory access for login, the scheduled sync and the health check
//! (spec/operations.md §1.2.10, §2.5, §3.7). Pure I/O: it returns directory users and
//! leaves sessions, HTTP and the database to its callers.
//!
//! Every connection does StartTLS (when configured) before any bind, applies
//! `ldap.timeout` to the connection and to each operation, and verifies the server
//! certificate against the system trust store only when `require_cert` is set.

use crate::config;
use ldap3::{LdapConnAsync, LdapConnSettings, ResultEntry, Scope, SearchEntry};
use std::collections::BTreeMap;
use std::sync::Once;
use std::time::Duration;

pub use ldap3::Ldap;

/// Attribute holding the username when `attr_map` has no `username` key.
const DEFAULT_USERNAME_ATTRIBUTE: &str = "uid";
/// The placeholder in `login_filter` (upstream's Python `%` formatting syntax).
const USER_PLACEHOLDER: &str = "%(user)s";
/// LDAP result code invalidCredentials (RFC 4511 appendix A).
const RC_INVALID_CREDENTIALS: u32 = 49;

/// Why an LDAP operation failed. Messages name DNs and operations, never passwords (the
/// ldap3 error is flattened to its display text because its `Debug` form can carry the
/// bind request, password included).
#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    #[error("LDAP is not configured (ldap.server_uri is empty)")]
    NotConfigured,
    #[error("invalid LDAP server URI {uri:?}: {message}")]
    InvalidUri { uri: String, message: String },
    #[error("LDAP server not reachable during {op}: {message}")]
    Unreachable { op: &'static str, message: String },
    #[error("LDAP {op} timed out after {seconds} s")]
    Timeout { op: &'static str, seconds: u64 },
    #[error("TLS with the LDAP server failed during {op}: {message}")]
    Tls { op: &'static str, message: String },
    #[error("LDAP bind as {dn:?} failed: invalid credentials")]
    InvalidCredentials { dn: String },
    #[error("LDAP {op} failed with result code {rc}: {text}")]
    Result {
        op: &'static str,
        rc: u32,
        text: String,
    },
    #[error("invalid LDAP filter {filter:?}")]
    Filter { filter: String },
    #[error("LDAP {op} failed: {message}")]
    Other { op: &'static str, message: String },
}

impl LdapError {
    fn from_ldap3(op: &'static str, seconds: u64, e: ldap3::LdapError) -> LdapError {
        use ldap3::LdapError as E;
        match e {
            // tokio-rustls reports handshake and certificate failures as InvalidData.
            E::Io { source } if source.kind() == std::io::ErrorKind::InvalidData => {
                LdapError::Tls {
                    op,
                    message: source.to_string(),
                }
            }
            E::Io { source } => LdapError::Unreachable {
                op,
                message: source.to_string(),
            },
            E::Timeout { .. } => LdapError::Timeout { op, seconds },
            E::OpSend { .. }
            | E::ResultRecv { .. }
            | E::IdScrubSend { .. }
            | E::MiscSend { .. }
            | E::EndOfStream => LdapError::Unreachable {
                op,
                message: "connection closed".into(),
            },
            e @ (E::Rustls { .. } | E::DNSName { .. }) => LdapError::Tls {
                op,
                message: e.to_string(),
            },
            E::LdapResult { result } => LdapError::Result {
                op,
                rc: result.rc,
                text: result.text,
            },
            other => LdapError::Other {
                op,
                message: other.to_string(),
            },
        }
    }
}

/// A directory entry turned into Keystone user fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapUser {
    pub dn: String,
    pub username: String,
    /// Every `attr_map` field except `username`: the first value of the mapped attribute,
    /// or `None` when the entry has none.
    pub fields: BTreeMap<String, Option<String>>,
}

/// LDAP is enabled exactly when a server URI is configured.
pub fn enabled(s: &config::Ldap) -> bool {
    !s.server_uri.is_empty()
}

/// Escapes a value for use inside a search filter (RFC 4515 §3): the filter
/// metacharacters, NUL and every non-ASCII byte become `\xx`.
pub fn escape_filter_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        match b {
            b'*' | b'(' | b')' | b'\\' | 0 | 0x80..=0xff => {
                out.push_str(&format!("\\{b:02x}"));
            }
            _ => out.push(char::from(b)),
        }
    }
    out
}

/// `login_filter` with the placeholder replaced by the escaped username.
pub fn login_filter(s: &config::Ldap, username: &str) -> String {
    s.login_filter
        .replace(USER_PLACEHOLDER, &escape_filter_value(username))
}

/// The attribute holding the username: `attr_map["username"]`, default `uid`.
pub fn username_attribute(s: &config::Ldap) -> &str {
    s.attr_map
        .get("username")
        .map(String::as_str)
        .unwrap_or(DEFAULT_USERNAME_ATTRIBUTE)
}

fn timeout(s: &config::Ldap) -> Duration {
    // A zero timeout would fail every operation at once; treat it as the shortest useful one.
    Duration::from_secs(s.timeout.max(1))
}

fn uses_tls(s: &config::Ldap) -> bool {
    let uri = s.server_uri.to_ascii_lowercase();
    uri.starts_with("ldaps://") || (uri.starts_with("ldap://") && s.start_tls)
}

/// Opens a connection (StartTLS included), without binding.
async fn open(s: &config::Ldap) -> Result<Ldap, LdapError> {
    if !enabled(s) {
        return Err(LdapError::NotConfigured);
    }
    let url = url::Url::parse(&s.server_uri).map_err(|e| LdapError::InvalidUri {
        uri: s.server_uri.clone(),
        message: e.to_string(),
    })?;
    let tls = uses_tls(s);
    if tls && !s.require_cert {
        static WARNED: Once = Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                server_uri = %s.server_uri,
                "LDAP uses TLS without verifying the server certificate \
                 (set ldap.require_cert = true to verify it against the system trust store)"
            );
        });
    }
    // StartTLS is part of ldap3's connect (for ldap:// URLs with starttls set), so it is
    // always done before the first bind. Without `no_tls_verify` ldap3 validates against
    // the system trust store (rustls-native-certs); with it, ldap3 installs a rustls
    // verifier that accepts any certificate.
    let settings = LdapConnSettings::new()
        .set_conn_timeout(timeout(s))
        .set_starttls(s.start_tls && url.scheme().eq_ignore_ascii_case("ldap"))
        .set_no_tls_verify(!s.require_cert);
    let (conn, ldap) = LdapConnAsync::from_url_with_settings(settings, &url)
        .await
        .map_err(|e| match e {
            ldap3::LdapError::UnknownScheme(_) | ldap3::LdapError::UrlParsing { .. } => {
                LdapError::InvalidUri {
                    uri: s.server_uri.clone(),
                    message: e.to_string(),
                }
            }
            e => LdapError::from_ldap3("connect", s.timeout, e),
        })?;
    ldap3::drive!(conn);
    Ok(ldap)
}

/// Simple bind; invalid credentials become [`LdapError::InvalidCredentials`].
async fn bind(
    s: &config::Ldap,
    ldap: &mut Ldap,
    dn: &str,
    password: &str,
) -> Result<(), LdapError> {
    let result = ldap
        .with_timeout(timeout(s))
        .simple_bind(dn, password)
        .await
        .map_err(|e| LdapError::from_ldap3("bind", s.timeout, e))?;
    match result.rc {
        0 => Ok(()),
        RC_INVALID_CREDENTIALS => Err(LdapError::InvalidCredentials { dn: dn.to_string() }),
        rc => Err(LdapError::Result {
            op: "bind",
            rc,
            text: result.text,
        }),
    }
}

/// Ends a connection politely; errors do not matter at this point.
async fn close(s: &config::Ldap, mut ldap: Ldap) {
    let _ = tokio::time::timeout(timeout(s), ldap.unbind()).await;
}

/// Connects to `server_uri`, does StartTLS when configured, then binds as `bind_dn` when
/// it is set (anonymous otherwise). `ldap.timeout` bounds the connection (StartTLS
/// included) and the bind; callers issuing further operations should set it per operation
/// with `Ldap::with_timeout`, as ldap3 has no connection-wide operation timeout.
pub async fn connect(s: &config::Ldap) -> Result<Ldap, LdapError> {
    let mut ldap = open(s).await?;
    if !s.bind_dn.is_empty()
        && let Err(e) = bind(s, &mut ldap, &s.bind_dn, &s.bind_password).await
    {
        close(s, ldap).await;
        return Err(e);
    }
    Ok(ldap)
}

/// Checks a login against the directory. `Ok(None)` means "not these credentials" (empty
/// password, no or several matching entries, wrong password); `Err` means the directory
/// could not answer.
pub async fn authenticate(
    s: &config::Ldap,
    username: &str,
    password: &str,
) -> Result<Option<LdapUser>, LdapError> {
    // An empty password would make the user bind unauthenticated, which servers may accept.
    if password.is_empty() || username.is_empty() {
        return Ok(None);
    }
    let mut service = connect(s).await?;
    let found = search(s, &mut service, &login_filter(s, username)).await;
    close(s, service).await;
    let mut entries = found?;
    if entries.len() != 1 {
        if entries.len() > 1 {
            tracing::warn!(
                count = entries.len(),
                "LDAP login lookup matched several entries; refusing the login"
            );
        }
        return Ok(None);
    }
    let entry = entries.remove(0);
    if entry.dn.is_empty() {
        return Ok(None);
    }

    let mut user_conn = open(s).await?;
    let bound = bind(s, &mut user_conn, &entry.dn, password).await;
    close(s, user_conn).await;
    match bound {
        Ok(()) => {}
        Err(LdapError::InvalidCredentials { .. }) => return Ok(None),
        Err(e) => return Err(e),
    }
    let fallback = username.to_string();
    Ok(Some(to_user(s, entry).unwrap_or_else(|entry| LdapUser {
        // The login filter may match on another attribute than the username one; the
        // entry still authenticated, so the submitted name stands in.
        username: fallback,
        fields: mapped_fields(s, &entry.attrs),
        dn: entry.dn,
    })))
}

/// All entries under `user_search` matching `user_filter`, as users for the sync task
/// (§2.5 steps 2–4): entries without a DN or a username are skipped, and of two entries
/// with the same username the first one wins.
pub async fn search_users(s: &config::Ldap) -> Result<Vec<LdapUser>, LdapError> {
    let mut ldap = connect(s).await?;
    let found = search(s, &mut ldap, &s.user_filter).await;
    close(s, ldap).await;
    Ok(users_from_entries(s, found?))
}

/// §2.5 step 4 over the search result, in the server's order.
fn users_from_entries(s: &config::Ldap, entries: Vec<SearchEntry>) -> Vec<LdapUser> {
    let mut seen = std::collections::HashSet::new();
    let mut users = Vec::new();
    for entry in entries {
        if entry.dn.is_empty() {
            continue;
        }
        let Ok(user) = to_user(s, entry) else {
            continue;
        };
        if !seen.insert(user.username.clone()) {
            tracing::warn!(
                username = %user.username,
                dn = %user.dn,
                "LDAP sync: duplicate username; keeping the first entry"
            );
            continue;
        }
        users.push(user);
    }
    users
}

/// The `LDAP` health check (§3.7): connect, StartTLS, bind and "Who am I?" within
/// `ldap.timeout`; the error is the exact string the health endpoints report.
pub async fn health_check(s: &config::Ldap) -> Result<(), String> {
    const CREDENTIALS: &str = "Unavailable: Invalid LDAP credentials.";
    const UNREACHABLE: &str = "Unavailable: LDAP server not reachable.";
    const UNEXPECTED: &str = "Unavailable: Unexpected error.";
    let check = async {
        let mut ldap = connect(s).await?;
        let answer = ldap
            .with_timeout(timeout(s))
            .extended(ldap3::exop::WhoAmI)
            .await
            .map_err(|e| LdapError::from_ldap3("Who am I?", s.timeout, e))
            .and_then(|r| {
                r.success()
                    .map_err(|e| LdapError::from_ldap3("Who am I?", s.timeout, e))
            });
        close(s, ldap).await;
        answer.map(|_| ())
    };
    let outcome = match tokio::time::timeout(timeout(s), check).await {
        Ok(outcome) => outcome,
        Err(_) => Err(LdapError::Timeout {
            op: "health check",
            seconds: s.timeout,
        }),
    };
    outcome.map_err(|e| {
        tracing::warn!(error = %e, "LDAP health check failed");
        match e {
            LdapError::InvalidCredentials { .. } => CREDENTIALS,
            LdapError::Unreachable { .. } | LdapError::Timeout { .. } => UNREACHABLE,
            _ => UNEXPECTED,
        }
        .to_string()
    })
}

/// Subtree search under `user_search` returning the mapped attributes of each entry.
async fn search(
    s: &config::Ldap,
    ldap: &mut Ldap,
    filter: &str,
) -> Result<Vec<SearchEntry>, LdapError> {
    let mut attributes: Vec<&str> = vec![username_attribute(s)];
    for (field, attribute) in &s.attr_map {
        if field != "username" && !attributes.contains(&attribute.as_str()) {
            attributes.push(attribute);
        }
    }
    let result = ldap
        .with_timeout(timeout(s))
        .search(&s.user_search, Scope::Subtree, filter, attributes)
        .await
        .map_err(|e| match e {
            ldap3::LdapError::FilterParsing => LdapError::Filter {
                filter: filter.to_string(),
            },
            e => LdapError::from_ldap3("search", s.timeout, e),
        })?;
    // A partial result (size limit, referral) must not pass for a complete one: the sync
    // deactivates whoever is missing.
    let (entries, _) = result
        .success()
        .map_err(|e| LdapError::from_ldap3("search", s.timeout, e))?;
    Ok(entries.into_iter().filter_map(parse_entry).collect())
}

/// Decodes a search result entry without ldap3's panicking `SearchEntry::construct`;
/// referrals, intermediate messages and malformed entries yield `None`. Values that are
/// not UTF-8 are dropped (no Keystone field can hold them).
fn parse_entry(entry: ResultEntry) -> Option<SearchEntry> {
    if entry.is_ref() || entry.is_intermediate() {
        return None;
    }
    let mut parts = entry.0.match_id(4)?.expect_constructed()?.into_iter();
    let dn = String::from_utf8(parts.next()?.expect_primitive()?).ok()?;
    let mut attrs = std::collections::HashMap::new();
    for attribute in parts.next()?.expect_constructed()? {
        let mut pieces = attribute.expect_constructed()?.into_iter();
        let name = String::from_utf8(pieces.next()?.expect_primitive()?).ok()?;
        let values: Vec<String> = pieces
            .next()?
            .expect_constructed()?
            .into_iter()
            .filter_map(|v| String::from_utf8(v.expect_primitive()?).ok())
            .collect();
        attrs.insert(name, values);
    }
    Some(SearchEntry {
        dn,
        attrs,
        bin_attrs: std::collections::HashMap::new(),
    })
}

/// The first value of `attribute`, matching the name case-insensitively.
fn first_value<'a>(
    attrs: &'a std::collections::HashMap<String, Vec<String>>,
    attribute: &str,
) -> Option<&'a String> {
    attrs
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(attribute))
        .find_map(|(_, values)| values.first())
}

fn mapped_fields(
    s: &config::Ldap,
    attrs: &std::collections::HashMap<String, Vec<String>>,
) -> BTreeMap<String, Option<String>> {
    s.attr_map
        .iter()
        .filter(|(field, _)| field.as_str() != "username")
        .map(|(field, attribute)| (field.clone(), first_value(attrs, attribute).cloned()))
        .collect()
}

/// The entry as a user, or the entry back when it has no username value.
fn to_user(s: &config::Ldap, entry: SearchEntry) -> Result<LdapUser, SearchEntry> {
    let Some(username) = first_value(&entry.attrs, username_attribute(s)).cloned() else {
        return Err(entry);
    };
    Ok(LdapUser {
        fields: mapped_fields(s, &entry.attrs),
        username,
        dn: entry.dn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_filter_metacharacters() {
        let cases = [
            ("alice", "alice"),
            ("*", "\\2a"),
            ("a*b(c)", "a\\2ab\\28c\\29"),
            ("back\\slash", "back\\5cslash"),
            ("nul\0", "nul\\00"),
            ("Åsa", "\\c3\\85sa"),
            ("", ""),
            ("x)(uid=*", "x\\29\\28uid=\\2a"),
        ];
        for (raw, escaped) in cases {
            assert_eq!(escape_filter_value(raw), escaped, "{raw:?}");
        }
    }

    #[test]
    fn login_filter_substitutes_the_escaped_username() {
        let s = config::Ldap {
            login_filter: "(&(objectClass=person)(uid=%(user)s))".into(),
            ..Default::default()
        };
        assert_eq!(
            login_filter(&s, "a*b(c)"),
            "(&(objectClass=person)(uid=a\\2ab\\28c\\29))"
        );
    }

    #[test]
    fn username_attribute_defaults_to_uid() {
        let mut s = config::Ldap::default();
        assert_eq!(username_attribute(&s), "uid");
        s.attr_map
            .insert("username".into(), "sAMAccountName".into());
        assert_eq!(username_attribute(&s), "sAMAccountName");
    }

    #[test]
    fn maps_fields_case_insensitively_and_marks_absent_ones() {
        let mut s = config::Ldap::default();
        s.attr_map.insert("first_name".into(), "givenName".into());
        s.attr_map.insert("email".into(), "mail".into());
        s.attr_map.insert("department".into(), "ou".into());
        s.attr_map.insert("username".into(), "UID".into());
        let attrs = [
            ("uid", vec!["alice"]),
            ("GIVENNAME", vec!["Alice", "Ali"]),
            ("mail", vec![]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
        .collect();
        let entry = SearchEntry {
            dn: "uid=alice,dc=example,dc=org".into(),
            attrs,
            bin_attrs: Default::default(),
        };
        let user = to_user(&s, entry).expect("has a username");
        assert_eq!(user.username, "alice");
        assert_eq!(
            user.fields,
            BTreeMap::from([
                ("department".to_string(), None),
                ("email".to_string(), None),
                ("first_name".to_string(), Some("Alice".to_string())),
            ])
        );
    }

    fn entry(dn: &str, attrs: &[(&str, &str)]) -> SearchEntry {
        SearchEntry {
            dn: dn.into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                .collect(),
            bin_attrs: Default::default(),
        }
    }

    #[test]
    fn sync_skips_entries_without_dn_or_username_and_keeps_the_first_duplicate() {
        let mut s = config::Ldap::default();
        s.attr_map.insert("first_name".into(), "givenName".into());
        let users = users_from_entries(
            &s,
            vec![
                entry("uid=a,ou=one", &[("uid", "a"), ("givenName", "First")]),
                entry("", &[("uid", "referral")]),
                entry("cn=nouid,ou=one", &[("givenName", "Nobody")]),
                entry("uid=b,ou=one", &[("uid", "b")]),
                entry("uid=a,ou=two", &[("uid", "a"), ("givenName", "Second")]),
            ],
        );
        let summary: Vec<(&str, &str, Option<&str>)> = users
            .iter()
            .map(|u| {
                (
                    u.username.as_str(),
                    u.dn.as_str(),
                    u.fields["first_name"].as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("a", "uid=a,ou=one", Some("First")),
                ("b", "uid=b,ou=one", None)
            ]
        );
    }

    #[test]
    fn tls_is_in_use_for_ldaps_and_starttls_only() {
        let mut s = config::Ldap {
            server_uri: "ldap://ldap.example.org".into(),
            start_tls: false,
            ..Default::default()
        };
        assert!(!uses_tls(&s));
        s.start_tls = true;
        assert!(uses_tls(&s));
        s.server_uri = "LDAPS://ldap.example.org".into();
        s.start_tls = false;
        assert!(uses_tls(&s));
    }
}
