//! The OpenAPI document (spec/operations.md §3.11): generated from the router's endpoint
//! annotations, adjusted to OpenAPI 3.0.3 as upstream publishes it, and serialised once as
//! JSON and as YAML in the reference document's layout.

use salvo::Router;
use salvo::oapi::OpenApi;
use serde_json::{Map, Value};

pub const TITLE: &str = "Keystone API";
pub const DESCRIPTION: &str = "The backend REST API for the Keystone HPC utility.";

/// The serialised documents served by `/openapi/json/` and `/openapi/yaml/`.
#[derive(Debug, Clone)]
pub struct Documents {
    pub json: String,
    pub yaml: String,
}

/// Builds the document for a router.
pub fn document(router: &Router) -> Value {
    let doc = OpenApi::new(TITLE, super::base::VERSION).merge_router(router);
    let raw = serde_json::to_value(&doc).unwrap_or(Value::Null);
    let mut out = Map::new();
    out.insert("openapi".into(), Value::from("3.0.3"));
    out.insert(
        "info".into(),
        serde_json::json!({
            "title": TITLE,
            "version": super::base::VERSION,
            "description": DESCRIPTION,
        }),
    );
    let mut paths = Map::new();
    if let Some(Value::Object(raw_paths)) = raw.get("paths") {
        let mut keys: Vec<&String> = raw_paths.keys().collect();
        keys.sort();
        for key in keys {
            let mut item = raw_paths[key].clone();
            if let Value::Object(ops) = &mut item {
                ops.retain(|method, _| {
                    matches!(method.as_str(), "get" | "post" | "put" | "patch" | "delete")
                });
                // Doc comments wrap lines; the document keeps each description on one line.
                for op in ops.values_mut() {
                    if let Some(Value::String(d)) = op.get_mut("description") {
                        *d = d.split_whitespace().collect::<Vec<_>>().join(" ");
                    }
                }
            }
            let path = if key.ends_with('/') {
                key.clone()
            } else {
                format!("{key}/")
            };
            paths.insert(path, item);
        }
    }
    out.insert("paths".into(), Value::Object(paths));
    let mut components = raw
        .get("components")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    if let Value::Object(c) = &mut components
        && !c.contains_key("schemas")
    {
        c.insert("schemas".into(), serde_json::json!({}));
    }
    out.insert("components".into(), components);
    let mut doc = Value::Object(out);
    to_openapi_30(&mut doc);
    doc
}

pub fn documents(router: &Router) -> Documents {
    let doc = document(router);
    Documents {
        json: serde_json::to_string(&doc).unwrap_or_else(|_| "{}".into()),
        yaml: to_yaml(&doc),
    }
}

/// Rewrites OpenAPI 3.1 nullability (`type: [T, "null"]`, `oneOf` with a null schema) into
/// 3.0's `nullable: true`.
fn to_openapi_30(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get("type").cloned() {
                let non_null: Vec<Value> = types
                    .iter()
                    .filter(|t| t.as_str() != Some("null"))
                    .cloned()
                    .collect();
                if non_null.len() == 1 {
                    map.insert("type".into(), non_null[0].clone());
                    if non_null.len() < types.len() {
                        map.insert("nullable".into(), Value::Bool(true));
                    }
                }
            }
            for key in ["oneOf", "anyOf"] {
                if let Some(Value::Array(options)) = map.get(key).cloned() {
                    let non_null: Vec<Value> = options
                        .iter()
                        .filter(|o| o.get("type").and_then(Value::as_str) != Some("null"))
                        .cloned()
                        .collect();
                    if non_null.len() < options.len() && non_null.len() == 1 {
                        map.remove(key);
                        map.insert("allOf".into(), Value::Array(non_null));
                        map.insert("nullable".into(), Value::Bool(true));
                    }
                }
            }
            for child in map.values_mut() {
                to_openapi_30(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(to_openapi_30),
        _ => {}
    }
}

/// Block-style YAML with two-space indentation, sequences at their parent's indentation and
/// keys in document order, matching the layout of the reference document.
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn write_map(out: &mut String, map: &Map<String, Value>, indent: usize) {
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 || !out.ends_with("- ") {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(&scalar(&Value::String(k.clone())));
        out.push(':');
        write_value(out, v, indent);
    }
}

fn write_value(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_map(out, m, indent + 2);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            write_seq(out, a, indent);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn write_seq(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        out.push_str(&" ".repeat(indent));
        out.push_str("- ");
        match item {
            Value::Object(m) if !m.is_empty() => write_map(out, m, indent + 2),
            Value::Array(a) if !a.is_empty() => {
                out.push('\n');
                write_seq(out, a, indent + 2);
            }
            other => {
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        Value::String(s) => {
            if s.contains('\n') || s.chars().any(|c| c.is_control()) {
                serde_json::to_string(s).unwrap_or_default()
            } else if plain_ok(s) {
                s.clone()
            } else {
                format!("'{}'", s.replace('\'', "''"))
            }
        }
    }
}

/// Whether a string can be written unquoted and still read back as the same string.
fn plain_ok(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    // A leading indicator character forces quoting, except a dash that starts a word.
    let dash_word = first == '-' && s.len() > 1 && !s.starts_with("- ") && !s.starts_with("---");
    if "-?:,[]{}#&*!|>'\"%@`".contains(first) && !dash_word {
        return false;
    }
    if first == ' ' || s.ends_with(' ') || s.ends_with(':') {
        return false;
    }
    if s.contains(": ") || s.contains(" #") {
        return false;
    }
    let lower = s.to_ascii_lowercase();
    const RESERVED: [&str; 12] = [
        "true", "false", "yes", "no", "on", "off", "y", "n", "null", "~", ".nan", ".inf",
    ];
    if RESERVED.contains(&lower.as_str()) {
        return false;
    }
    // Anything YAML 1.1 would read as a number, date or time stays quoted.
    let digits_and = |extra: &str| s.chars().all(|c| c.is_ascii_digit() || extra.contains(c));
    let numeric = s.parse::<f64>().is_ok()
        || (digits_and("_+-") && s.chars().any(|c| c.is_ascii_digit()))
        || s.starts_with("0x")
        || s.starts_with("0o");
    let date_or_time = (digits_and("-") && s.len() >= 8 && s.matches('-').count() == 2)
        || (digits_and(":.") && s.contains(':'));
    !(numeric || date_or_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_layout_matches_the_reference_style() {
        let doc = serde_json::json!({
            "openapi": "3.0.3",
            "paths": {
                "/users/users/{id}/": {
                    "get": {
                        "tags": ["Users"],
                        "parameters": [{"name": "_limit", "required": false}],
                        "responses": {"200": {"$ref": "#/components/schemas/X", "description": ""}}
                    }
                }
            }
        });
        let yaml = to_yaml(&doc);
        let expected = "openapi: 3.0.3
paths:
  /users/users/{id}/:
    get:
      tags:
      - Users
      parameters:
      - name: _limit
        required: false
      responses:
        '200':
          $ref: '#/components/schemas/X'
          description: ''
";
        assert_eq!(yaml, expected);
    }

    #[test]
    fn nullable_types_become_openapi_30() {
        let mut v = serde_json::json!({"type": ["string", "null"]});
        to_openapi_30(&mut v);
        assert_eq!(v, serde_json::json!({"type": "string", "nullable": true}));
    }
}
