//! Request bodies: JSON, form-urlencoded or multipart, all read into one JSON object so that
//! validation is written once (domain.md §1.2), and the file fields of multipart bodies.

use crate::web::ApiError;
use salvo::prelude::*;
use serde_json::{Map, Value};
use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;

/// A parsed body. Form encodings repeat a key for list fields; such keys become arrays.
#[derive(Debug, Clone, Default)]
pub struct Body {
    pub fields: Map<String, Value>,
    /// Uploaded files of a multipart body: (field, client file name, temp path, size).
    pub files: Vec<(String, Option<String>, std::path::PathBuf, u64)>,
    /// Set when a JSON body was valid but not an object (DRF's "Expected a dictionary").
    pub not_object: Option<&'static str>,
    /// Whether the body came as a form (values are strings).
    pub form: bool,
    /// What a resource's `Resource::read_input` took from the request beside the body, for
    /// its validation (`input` reads it back).
    pub input: Option<Arc<dyn Any + Send + Sync>>,
}

impl Body {
    pub fn has(&self, key: &str) -> bool {
        self.fields.contains_key(key)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.get(key)
    }

    /// The value `Resource::read_input` left in `input`, when it is a `T`.
    pub fn input<T: Any>(&self) -> Option<&T> {
        self.input.as_deref()?.downcast_ref()
    }

    /// The error create/update endpoints give for a non-object JSON body.
    pub fn require_object(&self) -> Result<(), ApiError> {
        match self.not_object {
            Some(kind) => Err(ApiError::field(
                "non_field_errors",
                format!("Invalid data. Expected a dictionary, but got {kind}."),
            )),
            None => Ok(()),
        }
    }
}

/// The media types `read` accepts, as the OpenAPI document lists them.
pub const MEDIA_TYPES: [&str; 3] = [
    "application/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data",
];

fn media_type(req: &Request) -> Option<String> {
    req.headers()
        .get(salvo::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.to_string())
}

/// Reads the body. A missing or empty body is an empty object on every endpoint.
pub async fn read(req: &mut Request) -> Result<Body, ApiError> {
    let content_type = media_type(req);
    let essence = content_type.as_deref().map(|c| {
        c.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    match essence.as_deref() {
        Some("multipart/form-data") | Some("application/x-www-form-urlencoded") => {
            read_form(req).await
        }
        _ => {
            let bytes = req.payload().await.map_err(payload_error)?.clone();
            if bytes.is_empty() {
                return Ok(Body::default());
            }
            match essence.as_deref() {
                Some("application/json") | Some("application/vnd.api+json") => {}
                Some(_) | None => {
                    let shown = content_type.unwrap_or_default();
                    return Err(ApiError::UnsupportedMediaType(shown));
                }
            }
            let value: Value = serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::BadRequest(format!("JSON parse error - {e}")))?;
            match value {
                Value::Object(fields) => Ok(Body {
                    fields,
                    ..Default::default()
                }),
                other => Ok(Body {
                    not_object: Some(crate::domain::validation::type_name(&other)),
                    ..Default::default()
                }),
            }
        }
    }
}

/// What a client sent as a file field.
#[derive(Debug, Clone)]
pub enum FileField {
    Absent,
    Null,
    /// A plain form/JSON value instead of a file part.
    NotAFile,
    /// A file part without a usable file name (empty, `.` or `..` after sanitising).
    Nameless,
    Part {
        /// The client's base name, sanitised; display only.
        name: String,
        temp: PathBuf,
        size: u64,
    },
}

/// The file field `name` of a body: its last part in a multipart body (as Django's
/// `MultiValueDict` picks it), with the client's file name reduced to a base name.
pub async fn file_field(req: &mut Request, body: &Body, name: &str) -> FileField {
    if let Some((_, salvo_name, temp, size)) = body.files.iter().rev().find(|f| f.0 == name) {
        // salvo strips `/` and `\` from names (so `../x` reads `..x`); the raw header keeps
        // them, which lets us take the base name as upstream does.
        let base = crate::web::files::part_file_name(req, temp)
            .await
            .or_else(|| salvo_name.clone())
            .and_then(|n| crate::infra::uploads::client_base_name(&n));
        return match base {
            Some(name) => FileField::Part {
                name,
                temp: temp.clone(),
                size: *size,
            },
            None => FileField::Nameless,
        };
    }
    match body.get(name) {
        None => FileField::Absent,
        Some(Value::Null) => FileField::Null,
        Some(_) => FileField::NotAFile,
    }
}

fn payload_error(e: salvo::http::ParseError) -> ApiError {
    let text = e.to_string();
    if text.to_ascii_lowercase().contains("too large") || text.contains("exceed") {
        ApiError::PayloadTooLarge(salvo::http::request::global_secure_max_size() as u64)
    } else {
        ApiError::BadRequest(format!("Malformed request body: {text}"))
    }
}

async fn read_form(req: &mut Request) -> Result<Body, ApiError> {
    let form = req.form_data().await.map_err(payload_error)?;
    let mut fields = Map::new();
    for (key, values) in form.fields.iter_all() {
        let vals: Vec<Value> = values.iter().map(|v| Value::String(v.clone())).collect();
        let value = if vals.len() == 1 {
            vals.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::Array(vals)
        };
        fields.insert(key.clone(), value);
    }
    let mut files = Vec::new();
    for (key, list) in form.files.iter_all() {
        for f in list {
            files.push((
                key.clone(),
                f.name().map(str::to_string),
                f.path().to_path_buf(),
                f.size(),
            ));
        }
    }
    Ok(Body {
        fields,
        files,
        form: true,
        ..Default::default()
    })
}
