//! Request bodies of the operations whose endpoint annotations declare none (their handlers
//! read the body themselves through `api::body`): the fields each accepts, with the rules its
//! validation enforces (domain.md's serializers), in upstream's schema names.

use serde_json::{Value, json};

/// Operation id → request schema (a PATCH takes the schema's `Patched` variant).
pub const BODIES: &[(&str, &str)] = &[
    ("allocations_attachments_create", "AttachmentRequest"),
    ("allocations_attachments_update", "AttachmentRequest"),
    (
        "allocations_attachments_partial_update",
        "AttachmentRequest",
    ),
    ("allocations_comments_create", "CommentRequest"),
    ("allocations_comments_update", "CommentRequest"),
    ("allocations_comments_partial_update", "CommentRequest"),
    ("authentication_login_create", "LoginRequest"),
    (
        "notifications_notifications_partial_update",
        "NotificationRequest",
    ),
    ("notifications_preferences_create", "PreferenceRequest"),
    ("notifications_preferences_update", "PreferenceRequest"),
    (
        "notifications_preferences_partial_update",
        "PreferenceRequest",
    ),
    ("research_grants_create", "GrantRequest"),
    ("research_grants_update", "GrantRequest"),
    ("research_grants_partial_update", "GrantRequest"),
    ("research_publications_create", "PublicationRequest"),
    ("research_publications_update", "PublicationRequest"),
    ("research_publications_partial_update", "PublicationRequest"),
    ("users_memberships_create", "MembershipRequest"),
    ("users_memberships_update", "MembershipRequest"),
    ("users_memberships_partial_update", "MembershipRequest"),
    ("users_teams_create", "TeamRequest"),
    ("users_teams_update", "TeamUpdateRequest"),
    ("users_teams_partial_update", "TeamUpdateRequest"),
    ("users_users_create", "PrivilegedUserRequest"),
    ("users_users_update", "PrivilegedUserRequest"),
    ("users_users_partial_update", "PrivilegedUserRequest"),
];

/// Schemas whose bodies carry a file and so travel as `multipart/form-data`.
pub const MULTIPART: &[&str] = &["AttachmentRequest"];

const ROLE: &str = "* `OW` - Owner\n* `AD` - Admin\n* `MB` - Member";

fn text(min: u64, max: Option<u64>) -> Value {
    let mut v = json!({"type": "string"});
    if min > 0 {
        v["minLength"] = min.into();
    }
    if let Some(max) = max {
        v["maxLength"] = max.into();
    }
    v
}

fn nullable(mut v: Value) -> Value {
    v["nullable"] = true.into();
    v
}

fn date() -> Value {
    json!({"type": "string", "format": "date"})
}

fn id() -> Value {
    json!({"type": "integer", "format": "int64"})
}

fn object(description: &str, properties: Value, required: &[&str]) -> Value {
    let mut v = json!({"type": "object", "description": description, "properties": properties});
    if !required.is_empty() {
        v["required"] = json!(required);
    }
    v
}

/// Every schema named in [`BODIES`].
pub fn schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "AttachmentRequest",
            object(
                "A file attached to an allocation request.",
                json!({
                    "file": {"type": "string", "format": "binary"},
                    "name": text(1, Some(250)),
                    "request": id(),
                }),
                &["file", "request"],
            ),
        ),
        (
            "CommentRequest",
            object(
                "A comment on an allocation request.",
                json!({
                    "user": id(),
                    "content": text(1, Some(2000)),
                    "private": {"type": "boolean"},
                    "request": id(),
                }),
                &["content", "request"],
            ),
        ),
        (
            "LoginRequest",
            object(
                "User credentials.",
                json!({
                    "username": {"type": "string", "writeOnly": true, "minLength": 1},
                    "password": {"type": "string", "writeOnly": true, "minLength": 1},
                }),
                &["password", "username"],
            ),
        ),
        (
            "MembershipRequest",
            object(
                "A user's role in a team.",
                json!({
                    "role": {"type": "string", "enum": ["OW", "AD", "MB"], "description": ROLE},
                    "user": id(),
                    "team": id(),
                }),
                &["role", "team", "user"],
            ),
        ),
        (
            "NotificationRequest",
            object(
                "A notification (only its read flag changes).",
                json!({"read": {"type": "boolean"}}),
                &[],
            ),
        ),
        (
            "PreferenceRequest",
            object(
                "A user's notification preferences.",
                json!({
                    "request_expiry_thresholds": {
                        "description": "Days before an allocation expires on which to notify, \
                            as a list of integers. Any JSON value is stored, as upstream; \
                            anything but a list of integers means no notices."
                    },
                    "notify_on_expiration": {"type": "boolean"},
                    "user": id(),
                }),
                &[],
            ),
        ),
        (
            "GrantRequest",
            object(
                "A research grant.",
                json!({
                    "title": text(1, Some(250)),
                    "agency": text(1, Some(100)),
                    "pi": nullable(text(0, Some(100))),
                    "amount": {
                        "type": "string",
                        "format": "decimal",
                        "pattern": "^-?\\d{0,12}(?:\\.\\d{0,2})?$"
                    },
                    "grant_number": nullable(text(0, Some(250))),
                    "start_date": date(),
                    "end_date": nullable(date()),
                    "description": nullable(text(0, None)),
                    "team": id(),
                }),
                &["agency", "amount", "start_date", "team", "title"],
            ),
        ),
        (
            "PublicationRequest",
            object(
                "A research publication.",
                json!({
                    "title": text(1, Some(250)),
                    "abstract": nullable(text(0, None)),
                    "published": nullable(date()),
                    "submitted": nullable(date()),
                    "journal": nullable(text(0, Some(100))),
                    "doi": nullable(text(0, Some(50))),
                    "volume": nullable(text(0, Some(20))),
                    "issue": nullable(text(0, Some(20))),
                    "team": id(),
                }),
                &["team", "title"],
            ),
        ),
        (
            "TeamRequest",
            object(
                "A new team.",
                json!({
                    "is_active": {"type": "boolean", "default": true},
                    "name": text(1, Some(255)),
                }),
                &["name"],
            ),
        ),
        (
            "TeamUpdateRequest",
            object(
                "The changeable fields of a team.",
                json!({"is_active": {"type": "boolean", "default": true}}),
                &[],
            ),
        ),
        (
            "PrivilegedUserRequest",
            object(
                "A user account, with the fields only staff may set.",
                json!({
                    "is_superuser": {"type": "boolean"},
                    "username": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 150,
                        "pattern": "^[\\w.@+-]+$"
                    },
                    "password": {"type": "string", "writeOnly": true, "minLength": 1, "maxLength": 128},
                    "first_name": nullable(text(0, Some(150))),
                    "last_name": nullable(text(0, Some(150))),
                    "email": nullable(json!({"type": "string", "format": "email", "maxLength": 254})),
                    "department": nullable(text(0, Some(1000))),
                    "role": nullable(text(0, Some(1000))),
                    "is_active": {"type": "boolean"},
                    "is_staff": {"type": "boolean"},
                    "is_ldap_user": {"type": "boolean"},
                    "groups": {"type": "array", "items": id()},
                    "user_permissions": {"type": "array", "items": id()},
                }),
                &["password", "username"],
            ),
        ),
    ]
}
