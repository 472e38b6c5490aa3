//! What a rule of the domain can refuse, free of HTTP. The web edge maps each kind to its
//! status and upstream's body in one place (`impl From<DomainError> for web::ApiError`).

use serde_json::{Map, Value};

/// A refusal by a domain rule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DomainError {
    /// Field errors, keyed by field name, each a list of messages (400).
    #[error("invalid fields: {}", .0.keys().cloned().collect::<Vec<_>>().join(", "))]
    Invalid(Map<String, Value>),
    /// No credentials where the operation needs them (401).
    #[error("authentication required")]
    Unauthenticated,
    /// The caller's standing does not allow the operation (403).
    #[error("permission denied")]
    Forbidden,
    /// The resource does not offer the operation at all (405), asked with this method.
    #[error("method {0} not offered")]
    NotOffered(&'static str),
    /// A record the request names does not exist, or the caller may not see it (404).
    #[error("No {0} matches the given query.")]
    NotFound(&'static str),
    /// The change conflicts with stored state (409), with upstream's message.
    #[error("{0}")]
    Conflict(String),
}

impl DomainError {
    /// One message on one field.
    pub fn field(name: &str, message: impl Into<String>) -> Self {
        let mut m = Map::new();
        m.insert(
            name.to_string(),
            Value::Array(vec![Value::String(message.into())]),
        );
        DomainError::Invalid(m)
    }
}
