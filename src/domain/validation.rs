//! Field validation with DRF's messages (domain.md §1.4): every field is checked and all
//! errors are reported together, keyed by field name.

use super::error::DomainError;
use serde_json::{Map, Value};

pub const REQUIRED: &str = "This field is required.";
pub const NOT_NULL: &str = "This field may not be null.";
pub const NOT_BLANK: &str = "This field may not be blank.";

/// Collects the errors of one request body.
pub struct Validator<'a> {
    body: &'a Map<String, Value>,
    /// PATCH: absent fields are not required.
    partial: bool,
    errors: Map<String, Value>,
}

/// The Python type name DRF reports for a JSON value (`list`, `str`, `NoneType`, ...).
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// Text rules for a string field.
#[derive(Clone, Copy)]
pub struct Text {
    pub max: usize,
    pub required: bool,
    pub nullable: bool,
    pub blank: bool,
    pub trim: bool,
}

impl Text {
    pub const fn required(max: usize) -> Text {
        Text {
            max,
            required: true,
            nullable: false,
            blank: false,
            trim: true,
        }
    }
    pub const fn optional(max: usize) -> Text {
        Text {
            max,
            required: false,
            nullable: true,
            blank: true,
            trim: true,
        }
    }
}

impl<'a> Validator<'a> {
    pub fn new(body: &'a Map<String, Value>, partial: bool) -> Self {
        Validator {
            body,
            partial,
            errors: Map::new(),
        }
    }

    pub fn error(&mut self, field: &str, message: impl Into<String>) {
        let entry = self
            .errors
            .entry(field.to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = entry {
            list.push(Value::String(message.into()));
        }
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    pub fn has_error(&self, field: &str) -> bool {
        self.errors.contains_key(field)
    }

    pub fn finish(self) -> Result<(), DomainError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(DomainError::Invalid(self.errors))
        }
    }

    /// The raw value when present; reports "required" when absent and required (not PATCH).
    fn raw(&mut self, name: &str, required: bool) -> Option<&'a Value> {
        match self.body.get(name) {
            Some(v) => Some(v),
            None => {
                if required && !self.partial {
                    self.error(name, REQUIRED);
                }
                None
            }
        }
    }

    /// A string field. `Some(None)` = explicit null; `None` = absent or invalid.
    pub fn text(&mut self, name: &str, rules: Text) -> Option<Option<String>> {
        let v = self.raw(name, rules.required)?;
        let s = match v {
            Value::Null => {
                if rules.nullable {
                    return Some(None);
                }
                self.error(name, NOT_NULL);
                return None;
            }
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => {
                self.error(name, "Not a valid string.");
                return None;
            }
        };
        let s = if rules.trim { s.trim().to_string() } else { s };
        if s.is_empty() && !rules.blank {
            self.error(name, NOT_BLANK);
            return None;
        }
        if s.contains('\0') {
            self.error(name, "Null characters are not allowed.");
            return None;
        }
        if s.chars().count() > rules.max {
            self.error(
                name,
                format!(
                    "Ensure this field has no more than {} characters.",
                    rules.max
                ),
            );
            return None;
        }
        Some(Some(s))
    }

    /// A boolean field (JSON booleans, 1/0, and the usual words in three casings).
    pub fn boolean(&mut self, name: &str) -> Option<bool> {
        let v = self.raw(name, false)?;
        let parsed = match v {
            Value::Bool(b) => Some(*b),
            Value::Number(n) => match n.as_i64() {
                Some(1) => Some(true),
                Some(0) => Some(false),
                _ => None,
            },
            Value::String(s) => {
                const T: [&str; 6] = ["true", "yes", "on", "y", "1", "t"];
                const F: [&str; 6] = ["false", "no", "off", "n", "0", "f"];
                let cased = |w: &str| {
                    s == w
                        || *s == w.to_uppercase()
                        || *s == {
                            let mut c = w.chars();
                            c.next()
                                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                                .unwrap_or_default()
                        }
                };
                if T.iter().any(|w| cased(w)) {
                    Some(true)
                } else if F.iter().any(|w| cased(w)) {
                    Some(false)
                } else {
                    None
                }
            }
            Value::Null => {
                self.error(name, NOT_NULL);
                return None;
            }
            _ => None,
        };
        if parsed.is_none() {
            self.error(name, "Must be a valid boolean.");
        }
        parsed
    }

    /// One of the stored codes of an enumeration.
    pub fn choice(&mut self, name: &str, codes: &[&str], required: bool) -> Option<String> {
        let v = self.raw(name, required)?;
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Null => {
                self.error(name, NOT_NULL);
                return None;
            }
            other => other.to_string(),
        };
        if codes.contains(&s.as_str()) {
            Some(s)
        } else {
            self.error(name, format!("\"{s}\" is not a valid choice."));
            None
        }
    }

    /// A primary-key reference: an integer or numeric string (existence is checked later).
    pub fn pk(&mut self, name: &str, required: bool) -> Option<i64> {
        let v = self.raw(name, required)?;
        match pk_value(v) {
            Ok(id) => Some(id),
            Err(msg) => {
                self.error(name, msg);
                None
            }
        }
    }

    /// A list of primary keys (form encodings repeat the key; one value is a one-item list).
    pub fn pk_list(&mut self, name: &str, form: bool) -> Option<Vec<i64>> {
        let v = self.raw(name, false)?;
        let items: Vec<&Value> = match v {
            Value::Array(items) => items.iter().collect(),
            Value::String(_) if form => vec![v],
            other => {
                self.error(
                    name,
                    format!(
                        "Expected a list of items but got type \"{}\".",
                        type_name(other)
                    ),
                );
                return None;
            }
        };
        let mut out = Vec::new();
        for item in items {
            match pk_value(item) {
                Ok(id) => out.push(id),
                Err(msg) => {
                    self.error(name, msg);
                    return None;
                }
            }
        }
        Some(out)
    }

    /// An e-mail address (nullable, blank allowed).
    pub fn email(&mut self, name: &str, max: usize) -> Option<Option<String>> {
        let value = self.text(name, Text::optional(max))?;
        match &value {
            Some(s) if !s.is_empty() && !valid_email(s) => {
                self.error(name, "Enter a valid email address.");
                None
            }
            _ => Some(value),
        }
    }
}

/// Parses a pk reference as DRF does.
pub fn pk_value(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| "Incorrect type. Expected pk value, received float.".to_string()),
        Value::String(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| "Incorrect type. Expected pk value, received str.".to_string()),
        Value::Null => Err(NOT_NULL.to_string()),
        other => Err(format!(
            "Incorrect type. Expected pk value, received {}.",
            type_name(other)
        )),
    }
}

/// Django's EmailValidator, simplified: one `@`, a non-empty local part of ASCII letters,
/// digits and the allowed symbols (Django's `user_regex` is ASCII only), and a dotted domain
/// of letters, digits and hyphens, where letters may be non-ASCII (Django retries such a
/// domain in its IDNA form), or a bracketed literal.
pub fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    if local.is_empty() || domain.is_empty() || s.chars().any(char::is_whitespace) {
        return false;
    }
    let local_ok = local.split('.').all(|part| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c))
    }) || (local.starts_with('"')
        && local.ends_with('"')
        && local.len() >= 2
        && local.is_ascii());
    if !local_ok {
        return false;
    }
    if domain.starts_with('[') && domain.ends_with(']') {
        return domain[1..domain.len() - 1]
            .parse::<std::net::IpAddr>()
            .is_ok();
    }
    if domain == "localhost" {
        return true;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
        && labels
            .last()
            .map(|tld| tld.len() >= 2 && !tld.chars().all(|c| c.is_ascii_digit()))
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for ok in [
            "a@example.org",
            "first.last+tag@sub.example.co",
            "x@localhost",
            "ops@bücher.example",
        ] {
            assert!(valid_email(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            "a@",
            "@b.org",
            "a@b",
            "a b@c.org",
            "a@-b.org",
            "a..b@c.org",
            "é@é.ée",
            "jürgen@example.org",
            "\"jü\"@example.org",
        ] {
            assert!(!valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn all_errors_are_collected() {
        let body = serde_json::json!({"name": "", "flag": "maybe", "team": "abc"});
        let body = body.as_object().expect("object");
        let mut v = Validator::new(body, false);
        v.text("name", Text::required(10));
        v.boolean("flag");
        v.pk("team", true);
        v.text("missing", Text::required(10));
        let Err(DomainError::Invalid(errors)) = v.finish() else {
            panic!("errors expected");
        };
        assert_eq!(errors["name"], serde_json::json!([NOT_BLANK]));
        assert_eq!(
            errors["flag"],
            serde_json::json!(["Must be a valid boolean."])
        );
        assert_eq!(
            errors["team"],
            serde_json::json!(["Incorrect type. Expected pk value, received str."])
        );
        assert_eq!(errors["missing"], serde_json::json!([REQUIRED]));
    }

    #[test]
    fn booleans_accept_three_casings() {
        let body = serde_json::json!({"a": "TRUE", "b": "No", "c": 1, "d": "tRUE"});
        let body = body.as_object().expect("object");
        let mut v = Validator::new(body, true);
        assert_eq!(v.boolean("a"), Some(true));
        assert_eq!(v.boolean("b"), Some(false));
        assert_eq!(v.boolean("c"), Some(true));
        assert_eq!(v.boolean("d"), None);
    }
}
