//! What an audit entry records (operations.md §3.4): field snapshots rendered as Django
//! renders them, the changes between two snapshots, masked passwords and truncated reprs.
//! Writing and reading entries is `store::audit`.

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create = 0,
    Update = 1,
    Delete = 2,
}

pub fn action_label(code: i32) -> &'static str {
    match code {
        0 => "create",
        1 => "update",
        2 => "delete",
        _ => "access",
    }
}

/// Who made a change and from where (null outside requests).
#[derive(Debug, Clone, Default)]
pub struct AuditContext {
    pub actor: Option<i64>,
    pub actor_email: Option<String>,
    pub cid: Option<String>,
    pub remote_addr: Option<String>,
    pub remote_port: Option<i32>,
}

/// A record's tracked fields as audit strings, in field order (`None` = null).
pub type Snapshot = Vec<(&'static str, Option<String>)>;

pub fn text(v: &Option<String>) -> Option<String> {
    v.clone()
}

pub fn boolean(b: bool) -> Option<String> {
    Some(if b { "True" } else { "False" }.to_string())
}

pub fn int(n: i64) -> Option<String> {
    Some(n.to_string())
}

pub fn opt_int(n: Option<i64>) -> Option<String> {
    n.map(|n| n.to_string())
}

/// Naive UTC `YYYY-MM-DD HH:MM:SS[.ffffff]`, as Django renders datetimes in changes.
pub fn datetime(dt: &DateTime<Utc>) -> Option<String> {
    let base = dt.format("%Y-%m-%d %H:%M:%S").to_string();
    let micros = dt.timestamp_subsec_micros();
    Some(if micros == 0 {
        base
    } else {
        format!("{base}.{micros:06}")
    })
}

pub fn date(d: &Option<NaiveDate>) -> Option<String> {
    d.map(|d| d.format("%Y-%m-%d").to_string())
}

/// Field-level changes: create (old `None`, null fields omitted), update (changed fields
/// only), delete (new `None`, null old values omitted).
pub fn changes(before: Option<&Snapshot>, after: Option<&Snapshot>) -> Map<String, Value> {
    let none = || "None".to_string();
    let mut out = Map::new();
    match (before, after) {
        (None, Some(after)) => {
            for (field, v) in after {
                if let Some(v) = v {
                    out.insert(field.to_string(), serde_json::json!([none(), v]));
                }
            }
        }
        (Some(before), None) => {
            for (field, v) in before {
                if let Some(v) = v {
                    out.insert(field.to_string(), serde_json::json!([v, none()]));
                }
            }
        }
        (Some(before), Some(after)) => {
            for ((field, old), (_, new)) in before.iter().zip(after.iter()) {
                if old != new {
                    out.insert(
                        field.to_string(),
                        serde_json::json!([
                            old.clone().unwrap_or_else(none),
                            new.clone().unwrap_or_else(none)
                        ]),
                    );
                }
            }
        }
        (None, None) => {}
    }
    out
}

/// `password` values are masked: the first half replaced by `*`.
pub fn mask_password(hash: &str) -> String {
    let n = hash.chars().count() / 2;
    hash.chars()
        .enumerate()
        .map(|(i, c)| if i < n { '*' } else { c })
        .collect()
}

/// "Truncated" object reprs: longer than 100 characters → first 99 + `…`.
pub fn truncate(s: &str) -> String {
    if s.chars().count() > 100 {
        let mut t: String = s.chars().take(99).collect();
        t.push('…');
        t
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_update_delete_changes() {
        let a: Snapshot = vec![("name", Some("x".into())), ("note", None)];
        let b: Snapshot = vec![("name", Some("y".into())), ("note", None)];
        assert_eq!(
            Value::Object(changes(None, Some(&a))),
            serde_json::json!({"name": ["None", "x"]})
        );
        assert_eq!(
            Value::Object(changes(Some(&a), Some(&b))),
            serde_json::json!({"name": ["x", "y"]})
        );
        assert!(changes(Some(&a), Some(&a)).is_empty());
        assert_eq!(
            Value::Object(changes(Some(&b), None)),
            serde_json::json!({"name": ["y", "None"]})
        );
    }

    #[test]
    fn formats_match_django() {
        assert_eq!(mask_password("abcdef"), "***def");
        assert_eq!(boolean(true).as_deref(), Some("True"));
        let dt = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.000120Z")
            .expect("dt")
            .with_timezone(&Utc);
        assert_eq!(datetime(&dt).as_deref(), Some("2026-01-02 03:04:05.000120"));
        assert_eq!(truncate(&"x".repeat(101)).chars().count(), 100);
    }
}
