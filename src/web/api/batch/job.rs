//! The job document of `/batch/` and its validation, with upstream's field errors (§12.1).

use crate::domain::validation::type_name;
use crate::web::ApiError;
use salvo::oapi::ToSchema;
use serde::Serialize;
use serde_json::{Map, Value, json};

/// Methods a step may use (upper-case only).
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];
const MAX_PATH: usize = 2048;

/// A validated job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub dry_run: bool,
    pub steps: Vec<Step>,
}

/// A validated step, tokens not yet resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub reference: String,
    pub method: String,
    pub path: String,
    pub payload: Map<String, Value>,
    pub query: Map<String, Value>,
}

fn list(msg: impl Into<String>) -> Value {
    json!([msg.into()])
}

/// DRF's BooleanField.
fn boolean(v: &Value) -> Result<bool, &'static str> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Null => Err("This field may not be null."),
        Value::Number(n) if n.as_f64() == Some(1.0) => Ok(true),
        Value::Number(n) if n.as_f64() == Some(0.0) => Ok(false),
        Value::String(s) => match s.as_str() {
            "t" | "T" | "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on"
            | "On" | "ON" | "1" => Ok(true),
            "f" | "F" | "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off"
            | "Off" | "OFF" | "0" => Ok(false),
            _ => Err("Must be a valid boolean."),
        },
        _ => Err("Must be a valid boolean."),
    }
}

/// DRF's CharField input: strings and numbers, whitespace trimmed.
fn text(v: &Value) -> Result<String, &'static str> {
    match v {
        Value::Null => Err("This field may not be null."),
        Value::String(s) => Ok(s.trim().to_string()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err("Not a valid string."),
    }
}

/// DRF's DictField input.
fn dict(v: &Value) -> Result<Map<String, Value>, String> {
    match v {
        Value::Object(m) => Ok(m.clone()),
        Value::Null => Err("This field may not be null.".into()),
        other => Err(format!(
            "Expected a dictionary of items but got type \"{}\".",
            type_name(other)
        )),
    }
}

fn parse_step(item: &Value) -> Result<Step, Map<String, Value>> {
    let mut errors = Map::new();
    let Value::Object(obj) = item else {
        errors.insert(
            "non_field_errors".into(),
            list(format!(
                "Invalid data. Expected a dictionary, but got {}.",
                type_name(item)
            )),
        );
        return Err(errors);
    };
    let reference = match obj.get("ref") {
        None => String::new(),
        Some(v) => match text(v) {
            Ok(r) if r.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => r,
            Ok(_) => {
                errors.insert(
                    "ref".into(),
                    list("Reference aliases may only contain alphanumeric characters and underscores."),
                );
                String::new()
            }
            Err(m) => {
                errors.insert("ref".into(), list(m));
                String::new()
            }
        },
    };
    let method = match obj.get("method") {
        None => {
            errors.insert("method".into(), list("This field is required."));
            String::new()
        }
        Some(Value::Null) => {
            errors.insert("method".into(), list("This field may not be null."));
            String::new()
        }
        Some(v) => {
            let shown = super::tokens::python_text(v);
            if METHODS.contains(&shown.as_str()) {
                shown
            } else {
                errors.insert(
                    "method".into(),
                    list(format!("\"{shown}\" is not a valid choice.")),
                );
                String::new()
            }
        }
    };
    let path = match obj.get("path") {
        None => {
            errors.insert("path".into(), list("This field is required."));
            String::new()
        }
        Some(v) => match text(v) {
            Ok(p) if p.is_empty() => {
                errors.insert("path".into(), list("This field may not be blank."));
                p
            }
            Ok(p) if p.chars().count() > MAX_PATH => {
                errors.insert(
                    "path".into(),
                    list(format!(
                        "Ensure this field has no more than {MAX_PATH} characters."
                    )),
                );
                p
            }
            Ok(p) => p,
            Err(m) => {
                errors.insert("path".into(), list(m));
                String::new()
            }
        },
    };
    let mut field_dict = |name: &str| match obj.get(name) {
        None => Map::new(),
        Some(v) => dict(v).unwrap_or_else(|m| {
            errors.insert(name.into(), list(m));
            Map::new()
        }),
    };
    let payload = field_dict("payload");
    let query = field_dict("query_params");
    if errors.is_empty() {
        Ok(Step {
            reference,
            method,
            path,
            payload,
            query,
        })
    } else {
        Err(errors)
    }
}

/// A refused job: its field errors (400), and whether they include the step limit (a
/// nested job that breaks a limit ends the whole request).
#[derive(Debug)]
pub struct Invalid {
    pub error: ApiError,
    pub over_limit: bool,
}

impl From<ApiError> for Invalid {
    fn from(error: ApiError) -> Self {
        Invalid {
            error,
            over_limit: false,
        }
    }
}

/// DRF's ListField/ListSerializer `max_length` message.
pub fn too_many_steps(max_steps: usize) -> Value {
    json!({"non_field_errors": [format!(
        "Ensure this field has no more than {max_steps} elements."
    )]})
}

/// Validates the value of `job` (already decoded when it came as a string). A job listing
/// more than `max_steps` steps is refused before its steps are looked at, as DRF checks a
/// list's length before its items.
pub fn parse(job: &Value, max_steps: usize) -> Result<Job, Invalid> {
    let obj = match job {
        Value::Null => return Err(ApiError::field("non_field_errors", "No data provided").into()),
        Value::Object(m) => m,
        other => {
            return Err(ApiError::field(
                "non_field_errors",
                format!(
                    "Invalid data. Expected a dictionary, but got {}.",
                    type_name(other)
                ),
            )
            .into());
        }
    };
    let mut over_limit = false;
    let mut errors = Map::new();
    let dry_run = match obj.get("dry_run") {
        None => false,
        Some(v) => boolean(v).unwrap_or_else(|m| {
            errors.insert("dry_run".into(), list(m));
            false
        }),
    };
    let mut steps = Vec::new();
    match obj.get("actions") {
        None => {
            errors.insert("actions".into(), list("This field is required."));
        }
        Some(Value::Null) => {
            errors.insert("actions".into(), list("This field may not be null."));
        }
        Some(Value::Array(items)) if items.is_empty() => {
            errors.insert(
                "actions".into(),
                json!({"non_field_errors": ["This list may not be empty."]}),
            );
        }
        Some(Value::Array(items)) if items.len() > max_steps => {
            over_limit = true;
            errors.insert("actions".into(), too_many_steps(max_steps));
        }
        Some(Value::Array(items)) => {
            let mut per_step = Vec::with_capacity(items.len());
            let mut failed = false;
            for item in items {
                match parse_step(item) {
                    Ok(step) => {
                        steps.push(step);
                        per_step.push(json!({}));
                    }
                    Err(e) => {
                        failed = true;
                        per_step.push(Value::Object(e));
                    }
                }
            }
            if failed {
                errors.insert("actions".into(), Value::Array(per_step));
            } else {
                let mut seen = std::collections::HashSet::new();
                let duplicate = steps
                    .iter()
                    .filter(|s| !s.reference.is_empty())
                    .any(|s| !seen.insert(s.reference.as_str()));
                if duplicate {
                    errors.insert(
                        "actions".into(),
                        list("Reference aliases must be unique within a job."),
                    );
                }
            }
        }
        Some(other) => {
            errors.insert(
                "actions".into(),
                json!({"non_field_errors": [format!(
                    "Expected a list of items but got type \"{}\".",
                    type_name(other)
                )]}),
            );
        }
    }
    if errors.is_empty() {
        Ok(Job { dry_run, steps })
    } else {
        Err(Invalid {
            error: ApiError::Fields(errors),
            over_limit,
        })
    }
}

// ---------------------------------------------------------------------------------------
// OpenAPI schemas (upstream's component names)
// ---------------------------------------------------------------------------------------

/// Method of a step.
///
/// * `GET` - GET
/// * `POST` - POST
/// * `PUT` - PUT
/// * `PATCH` - PATCH
/// * `DELETE` - DELETE
#[derive(Serialize, ToSchema)]
#[allow(clippy::upper_case_acronyms, dead_code)]
pub enum StepMethodDoc {
    GET,
    POST,
    PUT,
    PATCH,
    DELETE,
}

/// Object serializer for a single step within a user submitted job.
#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "JobStepRequest"))]
pub struct JobStepRequestDoc {
    #[serde(rename = "ref")]
    #[salvo(schema(required = false, default = ""))]
    pub reference: String,
    pub method: StepMethodDoc,
    #[salvo(schema(min_length = 1, max_length = 2048))]
    pub path: String,
    #[salvo(schema(required = false))]
    pub payload: Map<String, Value>,
    #[salvo(schema(required = false))]
    pub query_params: Map<String, Value>,
}

/// Object serializer for user submitted jobs comprising one or more steps.
#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "JobRequest"))]
pub struct JobRequestDoc {
    #[salvo(schema(required = false, default = false))]
    pub dry_run: bool,
    #[salvo(schema(min_items = 1))]
    pub actions: Vec<JobStepRequestDoc>,
}

/// Outer envelope serializer for batch job requests.
#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "JobRequestRequest"))]
pub struct JobRequestRequestDoc {
    pub job: JobRequestDoc,
}

/// Object serializer for the outcome of a single job step.
#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "JobStepResult"))]
pub struct JobStepResultDoc {
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    pub index: i64,
    pub method: String,
    pub path: String,
    pub status: i64,
    pub body: Map<String, Value>,
}

/// Object serializer for the outcome of a batch job.
#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "JobResult"))]
pub struct JobResultDoc {
    pub results: Vec<JobStepResultDoc>,
}

/// Job result serializer for jobs that fail with a `JobExecutionError`.
#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "JobExecutionError"))]
pub struct JobExecutionErrorDoc {
    pub detail: String,
    pub step: i64,
    pub status: i64,
    pub body: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(v: Value) -> Value {
        match parse(&v, 100) {
            Err(e) => e.error.body(),
            Ok(j) => panic!("accepted: {j:?}"),
        }
    }

    #[test]
    fn upstream_messages_for_bad_jobs() {
        assert_eq!(
            err(Value::Null),
            json!({"non_field_errors": ["No data provided"]})
        );
        assert_eq!(
            err(json!({"actions": []})),
            json!({"actions": {"non_field_errors": ["This list may not be empty."]}})
        );
        assert_eq!(
            err(json!({"actions": [{"method": "TRACE", "path": "/x/"}]})),
            json!({"actions": [{"method": ["\"TRACE\" is not a valid choice."]}]})
        );
        assert_eq!(
            err(
                json!({"actions": [{"method": "GET", "path": "/x/"}, {"method": "get", "path": "/x/"}]})
            ),
            json!({"actions": [{}, {"method": ["\"get\" is not a valid choice."]}]})
        );
        assert_eq!(
            err(json!({"actions": [{"method": "GET"}]})),
            json!({"actions": [{"path": ["This field is required."]}]})
        );
        assert_eq!(
            err(json!({"actions": [{"ref": "bad-ref", "method": "GET", "path": "/x/"}]})),
            json!({"actions": [{"ref": ["Reference aliases may only contain alphanumeric characters and underscores."]}]})
        );
        assert_eq!(
            err(json!({"actions": [
                {"ref": "a", "method": "GET", "path": "/x/"},
                {"ref": "a", "method": "GET", "path": "/y/"}
            ]})),
            json!({"actions": ["Reference aliases must be unique within a job."]})
        );
        assert_eq!(
            err(json!({"actions": {"a": 1}})),
            json!({"actions": {"non_field_errors": ["Expected a list of items but got type \"dict\"."]}})
        );
        assert_eq!(
            err(json!([1])),
            json!({"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]})
        );
        let long = "/".repeat(2049);
        assert_eq!(
            err(json!({"actions": [{"method": "GET", "path": long, "payload": []}]})),
            json!({"actions": [{
                "path": ["Ensure this field has no more than 2048 characters."],
                "payload": ["Expected a dictionary of items but got type \"list\"."]
            }]})
        );
    }

    #[test]
    fn step_limit_uses_drf_list_message_before_items_are_checked() {
        let steps = |n: usize| json!({"actions": vec![json!({"method": "TRACE"}); n]});
        let refused = parse(&steps(4), 3).unwrap_err();
        assert!(refused.over_limit);
        assert_eq!(
            refused.error.body(),
            json!({"actions": {"non_field_errors": ["Ensure this field has no more than 3 elements."]}})
        );
        // At the limit the steps themselves are validated.
        let refused = parse(&steps(3), 3).unwrap_err();
        assert!(!refused.over_limit);
        assert_eq!(
            refused.error.body()["actions"].as_array().map(Vec::len),
            Some(3)
        );
        // Other fields are still reported alongside, as DRF does.
        let refused = parse(
            &json!({"dry_run": "maybe", "actions": vec![json!({}); 2]}),
            1,
        )
        .unwrap_err();
        assert_eq!(
            refused.error.body(),
            json!({
                "dry_run": ["Must be a valid boolean."],
                "actions": {"non_field_errors": ["Ensure this field has no more than 1 elements."]}
            })
        );
    }

    #[test]
    fn defaults_and_unnamed_steps() {
        let job = parse(
            &json!({"actions": [
            {"method": "GET", "path": " /users/teams/ "},
            {"ref": "", "method": "DELETE", "path": "/x/1/"},
            {"ref": "t", "method": "POST", "path": "/x/", "payload": {"a": 1}}
        ], "dry_run": "true"}),
            100,
        )
        .unwrap();
        assert!(job.dry_run);
        assert_eq!(job.steps[0].reference, "");
        assert_eq!(job.steps[0].path, "/users/teams/");
        assert_eq!(job.steps[2].payload.get("a"), Some(&json!(1)));
        // Empty references never clash with each other.
        assert_eq!(job.steps.len(), 3);
    }
}
