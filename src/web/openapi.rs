//! The OpenAPI document (spec/operations.md §3.11): generated from the router's endpoint
//! annotations, adjusted to OpenAPI 3.0.3 as upstream publishes it, and serialised once as
//! JSON and as YAML in the reference document's layout.

mod request_bodies;

use super::api::{batch, body};
use super::route::{Access, RouteInfo};
use salvo::Router;
use salvo::oapi::OpenApi;
use serde_json::{Map, Value, json};

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
    let mut extra_schemas = add_request_bodies(&mut paths);
    describe_access_and_errors(&mut paths, &super::routes().describe());
    out.insert("paths".into(), Value::Object(paths));
    let mut components = raw
        .get("components")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    if let Value::Object(c) = &mut components {
        let schemas = c.entry("schemas").or_insert_with(|| json!({}));
        if let Value::Object(schemas) = schemas {
            extra_schemas.insert("ErrorDetail".into(), error_detail_schema());
            extra_schemas.insert("ValidationError".into(), validation_error_schema());
            schemas.append(&mut extra_schemas);
            for (name, schema) in schemas.iter_mut() {
                if name.ends_with("Request") {
                    choices_as_enums(schema);
                }
            }
            sort_keys(schemas);
        }
        c.insert("securitySchemes".into(), security_schemes());
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

/// Declares the request bodies the endpoint annotations leave out (see
/// [`request_bodies::BODIES`]) and returns the schemas they name. A PATCH body is never
/// required and takes the schema's `Patched` variant (no field required).
fn add_request_bodies(paths: &mut Map<String, Value>) -> Map<String, Value> {
    let defined: Map<String, Value> = request_bodies::schemas()
        .into_iter()
        .map(|(name, schema)| (name.to_string(), schema))
        .collect();
    let mut used = Map::new();
    for item in paths.values_mut() {
        let Value::Object(ops) = item else { continue };
        for (method, op) in ops.iter_mut() {
            let Value::Object(op) = op else { continue };
            let patch = method == "patch";
            if !op.contains_key("requestBody") {
                let Some(name) = op
                    .get("operationId")
                    .and_then(Value::as_str)
                    .and_then(|id| request_bodies::BODIES.iter().find(|(op, _)| *op == id))
                    .map(|(_, name)| *name)
                else {
                    continue;
                };
                let Some(schema) = defined.get(name) else {
                    continue;
                };
                let mut schema = schema.clone();
                let name = if patch {
                    if let Value::Object(o) = &mut schema {
                        o.remove("required");
                    }
                    format!("Patched{name}")
                } else {
                    name.to_string()
                };
                let media = if request_bodies::MULTIPART.iter().any(|m| name.ends_with(m)) {
                    "multipart/form-data"
                } else {
                    "application/json"
                };
                let reference = json!({"schema": {"$ref": format!("#/components/schemas/{name}")}});
                // A missing body reads as `{}`: it is required only when fields are.
                let required = !patch && schema.get("required").is_some();
                // Upstream states `required` only when it is true.
                let mut body = json!({"content": {media: reference}});
                if required {
                    body["required"] = Value::Bool(true);
                }
                op.insert("requestBody".into(), body);
                used.insert(name, schema);
            }
            // A partial update with no body changes nothing and succeeds, as upstream.
            if patch && let Some(Value::Object(body)) = op.get_mut("requestBody") {
                body.remove("required");
            }
            let batch = op.get("operationId").and_then(Value::as_str) == Some("batch_create");
            if let Some(Value::Object(body)) = op.get_mut("requestBody") {
                every_media_type(body, batch);
            }
        }
    }
    used
}

/// Lists the body's schema under every media type the endpoint reads, in upstream's order:
/// JSON, form and multipart for the resources ([`body::MEDIA_TYPES`]), multipart and JSON
/// for `/batch/` ([`batch::MEDIA_TYPES`]).
fn every_media_type(body: &mut Map<String, Value>, batch: bool) {
    let Some(Value::Object(content)) = body.get_mut("content") else {
        return;
    };
    let Some(schema) = content.values().next().cloned() else {
        return;
    };
    let media: &[&str] = if batch {
        &batch::MEDIA_TYPES
    } else {
        &body::MEDIA_TYPES
    };
    *content = media
        .iter()
        .map(|m| (m.to_string(), schema.clone()))
        .collect();
}

/// Adds `enum` to string properties whose description lists their choices the way DRF does
/// (`* \`PD\` - Pending` lines), so the document states what the validation accepts.
fn choices_as_enums(schema: &mut Value) {
    let Some(Value::Object(props)) = schema.get_mut("properties") else {
        return;
    };
    for prop in props.values_mut() {
        let Value::Object(p) = prop else { continue };
        if p.contains_key("enum") || p.get("type").and_then(Value::as_str) != Some("string") {
            continue;
        }
        let Some(description) = p.get("description").and_then(Value::as_str) else {
            continue;
        };
        let codes: Vec<Value> = description
            .lines()
            .filter_map(|l| l.strip_prefix("* `"))
            .filter_map(|l| l.split_once("` - "))
            .map(|(code, _)| Value::from(code))
            .collect();
        if !codes.is_empty() {
            p.insert("enum".into(), Value::Array(codes));
        }
    }
}

/// The credentials a protected operation takes, as upstream documents them.
fn security_schemes() -> Value {
    json!({
        "cookieAuth": {"type": "apiKey", "in": "cookie", "name": "sessionid"},
        "tokenAuth": {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "Token-based authentication with required prefix \"Token\""
        }
    })
}

/// `{"detail": "..."}`: every error that is not about single fields.
fn error_detail_schema() -> Value {
    json!({
        "type": "object",
        "description": "An error about the request as a whole.",
        "required": ["detail"],
        "properties": {"detail": {"type": "string"}}
    })
}

/// A 400 body: messages keyed by field name (`non_field_errors` for the body as a whole,
/// nested objects for nested fields), or `detail` for a request that could not be read.
fn validation_error_schema() -> Value {
    json!({
        "type": "object",
        "description": "Messages keyed by field name, or `detail` for an unreadable request.",
        "additionalProperties": {}
    })
}

/// An error response with its body schema.
fn error_response(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
    })
}

/// `/users/users/{id}/` and `/users/users/{pk}/` name the same route.
fn route_key(path: &str) -> String {
    let path = path.trim_end_matches('/');
    path.split('/')
        .map(|seg| if seg.starts_with('{') { "{}" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

/// Adds, from the route table, what the endpoint annotations leave out: the credentials a
/// protected route needs (`security`) and the error answers every route can give (400 for a
/// body or query it rejects, 401/403 from authentication and permissions, 404 for an
/// unknown id, 415 for a body it cannot read, 429 from the throttle). Responses an
/// endpoint documents itself are kept.
fn describe_access_and_errors(paths: &mut Map<String, Value>, routes: &[RouteInfo]) {
    for (path, item) in paths.iter_mut() {
        let Value::Object(ops) = item else { continue };
        let route = routes
            .iter()
            .find(|r| route_key(&r.path) == route_key(path));
        let protected = route.is_none_or(|r| r.policy.access != Access::Public);
        let throttled = route.is_none_or(|r| r.policy.throttled);
        let has_id = path.contains('{');
        for (method, op) in ops.iter_mut() {
            let Value::Object(op) = op else { continue };
            let unsafe_method = method != "get";
            let has_body = op.contains_key("requestBody");
            let lists = method == "get" && !has_id && is_page(op);
            let mut errors: Vec<(&str, &str, &str)> = Vec::new();
            // An unsafe method can carry a body that cannot be read (e.g. a DELETE that
            // claims a multipart body and sends none).
            if has_body || lists || unsafe_method {
                errors.push(("400", "Invalid request.", "ValidationError"));
            }
            if throttled {
                errors.push(("401", "Missing or invalid credentials.", "ErrorDetail"));
            }
            if protected || unsafe_method {
                errors.push(("403", "Permission denied.", "ErrorDetail"));
            }
            if has_id {
                errors.push(("404", "No such record.", "ErrorDetail"));
            }
            if method == "delete" {
                errors.push(("409", "Still referenced by other records.", "ErrorDetail"));
            }
            if has_body {
                errors.push(("415", "Unsupported media type.", "ErrorDetail"));
            }
            if throttled {
                errors.push(("429", "Request was throttled.", "ErrorDetail"));
            }
            if protected {
                op.insert(
                    "security".into(),
                    json!([{"tokenAuth": []}, {"cookieAuth": []}]),
                );
            }
            let responses = op.entry("responses").or_insert_with(|| json!({}));
            if let Value::Object(responses) = responses {
                for (status, description, schema) in errors {
                    responses
                        .entry(status)
                        .or_insert_with(|| error_response(description, schema));
                }
                sort_keys(responses);
            }
        }
    }
}

/// Whether an operation answers a paginated list.
fn is_page(op: &Map<String, Value>) -> bool {
    op.get("responses")
        .and_then(|r| r.get("200"))
        .and_then(|r| r.pointer("/content/application~1json/schema/$ref"))
        .and_then(Value::as_str)
        .is_some_and(|r| r.contains("/Paginated"))
}

/// Entries in key order: responses by status, schemas by name.
fn sort_keys(responses: &mut Map<String, Value>) {
    let mut entries: Vec<(String, Value)> = std::mem::take(responses).into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    responses.extend(entries);
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

/// YAML in the layout of upstream's document (PyYAML as drf-spectacular runs it): block style,
/// two-space indentation, sequences at their parent's indentation, keys in document order,
/// single quotes only where a plain scalar would read as something else, and `|-` blocks for
/// multi-line strings. One difference remains: PyYAML folds long plain and single-quoted
/// scalars at 80 columns, serde_norway (libyaml with an unlimited width) keeps each on one
/// line; both read back as the same string.
pub fn to_yaml(v: &Value) -> String {
    serde_norway::to_string(v).unwrap_or_else(|_| "{}\n".into())
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

    /// Joins the lines PyYAML folds a long plain or single-quoted scalar into, the one layout
    /// difference [`to_yaml`] keeps (see there): a continuation line is indented deeper than
    /// the line it continues and neither starts a key, a list item nor belongs to a block
    /// scalar (`|-`).
    fn unfold(text: &str) -> String {
        let indent = |l: &str| l.len() - l.trim_start_matches(' ').len();
        let mut out: Vec<String> = Vec::new();
        // Indentation of the line that opened a block scalar.
        let mut block: Option<usize> = None;
        for line in text.lines() {
            if let Some(owner) = block {
                if line.trim().is_empty() || indent(line) > owner {
                    out.push(line.to_string());
                    continue;
                }
                block = None;
            }
            let rest = line.trim_start();
            let starts_item = rest.starts_with("- ") || rest == "-";
            let starts_key = rest.contains(": ") || rest.ends_with(':');
            match out.last_mut() {
                Some(prev) if indent(line) > indent(prev) && !starts_item && !starts_key => {
                    prev.push(' ');
                    prev.push_str(rest);
                }
                _ => {
                    if rest.ends_with(" |-") || rest.ends_with(" |") {
                        block = Some(indent(line));
                    }
                    out.push(line.to_string());
                }
            }
        }
        out.iter().map(|l| format!("{l}\n")).collect()
    }

    /// Asserts `ours` equals `want` line by line, naming the first line that differs.
    fn assert_same_lines(ours: &str, want: &str) {
        for (i, (a, b)) in ours.lines().zip(want.lines()).enumerate() {
            assert_eq!(a, b, "line {}", i + 1);
        }
        assert_eq!(ours.lines().count(), want.lines().count());
        assert_eq!(ours, want);
    }

    /// The excerpt is upstream's document cut to two operations, the health metrics example
    /// (a multi-line string inside a list), two schemas and the security schemes, written by
    /// upstream's own YAML renderer (drf-spectacular's PyYAML dumper, which reproduces the
    /// full reference byte for byte): key order, quoting, list indentation and `|-` blocks
    /// match exactly; only PyYAML's folding at 80 columns differs.
    #[test]
    fn yaml_matches_upstreams_layout_on_a_reference_excerpt() {
        let excerpt = include_str!("openapi/reference-excerpt.yml");
        let value: Value = serde_norway::from_str(excerpt).expect("the excerpt parses");
        let ours = to_yaml(&value);
        assert_same_lines(&ours, &unfold(excerpt));
        // The folded lines are the only difference, and they read back the same.
        assert_ne!(ours, excerpt);
        assert_eq!(
            serde_norway::from_str::<Value>(&ours).expect("ours parses"),
            value
        );
        for expected in [
            "      - Allocations - Request Attachments\n",
            "              $ref: '#/components/schemas/AttachmentRequest'\n",
            "        '201':\n",
            "          description: ''\n",
            "        description: |-\n          * `WL` - Whitelist\n          * `BL` - Blacklist\n",
            "                  - |-\n                    # HELP keystone_health_check_status",
            "          title: ' access teams'\n",
            "      description: Token-based authentication with required prefix \"Token\"\n",
        ] {
            assert!(ours.contains(expected), "{expected:?} in\n{ours}");
        }
    }

    /// The whole reference document (where the shared folder is beside this clone), from its
    /// JSON form, comes out as upstream's YAML up to the folding.
    #[test]
    fn yaml_re_emits_the_whole_reference_document() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference");
        let (Ok(json), Ok(yaml)) = (
            std::fs::read_to_string(dir.join("openapi.json")),
            std::fs::read_to_string(dir.join("openapi.yml")),
        ) else {
            eprintln!("SKIPPED whole-reference YAML comparison (../shared not beside this clone)");
            return;
        };
        let value: Value = serde_json::from_str(&json).expect("reference JSON");
        let parsed: Value = serde_norway::from_str(&yaml).expect("reference YAML");
        assert_eq!(parsed, value, "the two reference files are one document");
        assert_same_lines(&to_yaml(&value), &unfold(&yaml));
    }

    #[test]
    fn the_served_yaml_reads_back_as_the_served_json() {
        let docs = documents(&crate::web::router());
        let json: Value = serde_json::from_str(&docs.json).expect("json");
        let yaml: Value = serde_norway::from_str(&docs.yaml).expect("yaml");
        assert_eq!(yaml, json);
        // Choice descriptions are multi-line strings: literal blocks, as upstream writes them.
        let lines: Vec<&str> = docs.yaml.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.trim() == "* `WL` - Whitelist")
            .expect("the access modes");
        assert!(
            lines[at - 1].ends_with("description: |-"),
            "{}",
            lines[at - 1]
        );
    }

    /// Every `$ref` of a document, with where it appears.
    fn refs(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    if k == "$ref"
                        && let Some(r) = child.as_str()
                    {
                        out.push((at.to_string(), r.to_string()));
                    }
                    refs(child, &format!("{at}/{k}"), out);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| refs(i, at, out)),
            _ => {}
        }
    }

    #[test]
    fn the_served_document_declares_credentials_bodies_and_errors() {
        let doc = document(&crate::web::router());
        let op = |path: &str, method: &str| doc["paths"][path][method].clone();
        let token = serde_json::json!([{"tokenAuth": []}, {"cookieAuth": []}]);
        assert_eq!(
            doc["components"]["securitySchemes"]["tokenAuth"]["name"],
            "Authorization"
        );
        // Protected routes take credentials; public ones document none, as upstream.
        assert_eq!(op("/users/users/", "get")["security"], token);
        assert_eq!(op("/authentication/logout/", "post")["security"], token);
        assert!(
            op("/authentication/login/", "post")
                .get("security")
                .is_none()
        );
        assert!(op("/health/", "get").get("security").is_none());
        // Request bodies the handlers read themselves; a PATCH body is never required.
        let create = op("/users/users/", "post");
        assert_eq!(
            create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/PrivilegedUserRequest"
        );
        assert_eq!(create["requestBody"]["required"], true);
        let patch = op("/users/users/{id}/", "patch");
        assert_eq!(
            patch["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/PatchedPrivilegedUserRequest"
        );
        assert!(patch["requestBody"].get("required").is_none());
        assert!(
            doc["components"]["schemas"]["PatchedPrivilegedUserRequest"]
                .get("required")
                .is_none()
        );
        let upload = op("/allocations/attachments/", "post");
        assert!(upload["requestBody"]["content"]["multipart/form-data"].is_object());
        // Choices listed in a description become an enum.
        assert_eq!(
            doc["components"]["schemas"]["ClusterRequest"]["properties"]["access_mode"]["enum"],
            serde_json::json!(["WL", "BL", "OP"])
        );
        // Error answers: credentials, permissions, unknown ids, conflicts, throttling.
        let statuses = |o: &Value| -> Vec<String> {
            o["responses"]
                .as_object()
                .map(|r| r.keys().cloned().collect())
                .unwrap_or_default()
        };
        assert_eq!(
            statuses(&create),
            ["201", "400", "401", "403", "415", "429"]
        );
        assert_eq!(
            statuses(&op("/users/users/{id}/", "delete")),
            ["204", "400", "401", "403", "404", "409", "429"]
        );
        assert_eq!(statuses(&op("/version/", "get")), ["200", "401", "429"]);
        assert_eq!(
            op("/users/users/{id}/", "get")["responses"]["404"]["content"]["application/json"]["schema"]
                ["$ref"],
            "#/components/schemas/ErrorDetail"
        );
    }

    #[test]
    fn every_reference_of_the_served_document_resolves() {
        let doc = document(&crate::web::router());
        let mut found = Vec::new();
        refs(&doc, "", &mut found);
        assert!(found.len() > 100, "{}", found.len());
        for (at, r) in found {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or(&r);
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{at}: {r} does not resolve"
            );
        }
    }

    /// Every request body lists the media types upstream lists for it, in upstream's order,
    /// each with the same schema (compared with the reference where it is beside this clone).
    #[test]
    fn request_bodies_list_every_media_type_the_endpoint_reads() {
        let doc = document(&crate::web::router());
        let bodies = |doc: &Value| -> Vec<(String, Vec<String>)> {
            let mut out = Vec::new();
            for (path, ops) in doc["paths"].as_object().into_iter().flatten() {
                for (method, op) in ops.as_object().into_iter().flatten() {
                    if let Some(content) = op["requestBody"]["content"].as_object() {
                        out.push((
                            format!("{method} {path}"),
                            content.keys().cloned().collect(),
                        ));
                    }
                }
            }
            out.sort();
            out
        };
        let ours = bodies(&doc);
        assert!(ours.len() > 30, "{}", ours.len());
        for (op, media) in &ours {
            let want: &[&str] = if op == "post /batch/" {
                &batch::MEDIA_TYPES
            } else {
                &body::MEDIA_TYPES
            };
            assert_eq!(media, want, "{op}");
            let content = &doc["paths"][op.split_once(' ').map_or("", |p| p.1)]
                [op.split_once(' ').map_or("", |p| p.0)]["requestBody"]["content"];
            let schemas: Vec<&Value> = media.iter().map(|m| &content[m.as_str()]).collect();
            assert!(schemas.windows(2).all(|w| w[0] == w[1]), "{op}: one schema");
        }
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/reference/openapi.json");
        let Ok(reference) = std::fs::read_to_string(path) else {
            eprintln!("SKIPPED request-body comparison (../shared not beside this clone)");
            return;
        };
        let reference: Value = serde_json::from_str(&reference).expect("reference JSON");
        let upstream = bodies(&reference);
        assert_eq!(ours, upstream, "the same operations take bodies");
        for (op, _) in &upstream {
            let (method, path) = op.split_once(' ').unwrap_or_default();
            assert_eq!(
                doc["paths"][path][method]["requestBody"],
                reference["paths"][path][method]["requestBody"],
                "{op}: the body as upstream documents it"
            );
        }
    }

    #[test]
    fn nullable_types_become_openapi_30() {
        let mut v = serde_json::json!({"type": ["string", "null"]});
        to_openapi_30(&mut v);
        assert_eq!(v, serde_json::json!({"type": "string", "nullable": true}));
    }
}
