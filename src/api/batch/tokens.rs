//! `@ref{alias.path}` and `@file{name}` tokens of batch steps (domain.md §12.2).

use crate::api::fields::type_name;
use serde_json::{Map, Value};
use std::path::PathBuf;

/// An uploaded part of the batch request.
#[derive(Debug, Clone, PartialEq)]
pub struct FilePart {
    /// Multipart field name: the label `@file{...}` refers to.
    pub field: String,
    /// Client file name, sent on with the step.
    pub name: String,
    pub path: PathBuf,
}

/// A token that cannot be resolved, and why (§12.2 reason texts).
#[derive(Debug, Clone, PartialEq)]
pub struct ResolveError {
    pub token: String,
    pub reason: String,
}

/// A resolved payload value: JSON, or an uploaded file (whole-string `@file{...}`).
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved {
    Value(Value),
    File(FilePart),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Ref,
    File,
}

/// One token found in a string: its byte range, kind and label.
#[derive(Debug, Clone, PartialEq)]
struct Token<'a> {
    start: usize,
    end: usize,
    kind: Kind,
    label: &'a str,
}

impl Token<'_> {
    fn text<'s>(&self, s: &'s str) -> &'s str {
        &s[self.start..self.end]
    }
}

/// Finds `@ref{label}` and `@file{label}` (label: everything up to the next `}`, not empty).
fn scan(s: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = s[from..].find('@').map(|i| i + from) {
        let rest = &s[at + 1..];
        let (kind, open) = if rest.starts_with("ref{") {
            (Kind::Ref, 4)
        } else if rest.starts_with("file{") {
            (Kind::File, 5)
        } else {
            from = at + 1;
            continue;
        };
        let label_start = at + 1 + open;
        match s[label_start..].find('}') {
            Some(len) if len > 0 => {
                out.push(Token {
                    start: at,
                    end: label_start + len + 1,
                    kind,
                    label: &s[label_start..label_start + len],
                });
                from = label_start + len + 1;
            }
            _ => from = at + 1,
        }
    }
    out
}

const LABEL_REASON: &str = "Reference labels may only contain letters, numbers, and underscores";

fn word(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `^[A-Za-z0-9_]+\.[A-Za-z0-9_.]+$`
fn ref_label(label: &str) -> Option<(&str, &str)> {
    let (alias, path) = label.split_once('.')?;
    let path_ok = !path.is_empty()
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    (word(alias) && path_ok).then_some((alias, path))
}

fn lookup(token: &str, label: &str, bodies: &Map<String, Value>) -> Result<Value, ResolveError> {
    let fail = |reason: String| ResolveError {
        token: token.to_string(),
        reason,
    };
    let (alias, path) = ref_label(label).ok_or_else(|| fail(LABEL_REASON.to_string()))?;
    let mut current = bodies.get(alias).ok_or_else(|| {
        fail(format!(
            "Alias \"{alias}\" has not been defined by a previous step"
        ))
    })?;
    for segment in path.split('.') {
        current = match current {
            Value::Object(m) => m
                .get(segment)
                .ok_or_else(|| fail(format!("Key \"{segment}\" not found in response")))?,
            Value::Array(items) => segment
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get(i))
                .ok_or_else(|| fail(format!("Invalid list index \"{segment}\"")))?,
            scalar => {
                return Err(fail(format!(
                    "Cannot traverse into {} with \"{segment}\"",
                    type_name(scalar)
                )));
            }
        };
    }
    Ok(current.clone())
}

fn file<'f>(token: &str, label: &str, files: &'f [FilePart]) -> Result<&'f FilePart, ResolveError> {
    let fail = |reason: String| ResolveError {
        token: token.to_string(),
        reason,
    };
    if !word(label) {
        return Err(fail(LABEL_REASON.to_string()));
    }
    files
        .iter()
        .rev()
        .find(|f| f.field == label)
        .ok_or_else(|| {
            fail(format!(
                "File part \"{label}\" was not uploaded with this request"
            ))
        })
}

/// Resolves the tokens of one string. A string that is exactly one token becomes the value
/// (type kept) or the file; otherwise each token is replaced by its text.
fn resolve_str(
    s: &str,
    bodies: &Map<String, Value>,
    files: &[FilePart],
) -> Result<Resolved, ResolveError> {
    let tokens = scan(s);
    if tokens.is_empty() {
        return Ok(Resolved::Value(Value::String(s.to_string())));
    }
    if tokens.len() == 1 && tokens[0].start == 0 && tokens[0].end == s.len() {
        let t = &tokens[0];
        return match t.kind {
            Kind::Ref => lookup(s, t.label, bodies).map(Resolved::Value),
            Kind::File => file(s, t.label, files).cloned().map(Resolved::File),
        };
    }
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for t in &tokens {
        out.push_str(&s[last..t.start]);
        let text = t.text(s);
        match t.kind {
            Kind::Ref => out.push_str(&python_text(&lookup(text, t.label, bodies)?)),
            Kind::File => out.push_str(&file(text, t.label, files)?.name),
        }
        last = t.end;
    }
    out.push_str(&s[last..]);
    Ok(Resolved::Value(Value::String(out)))
}

/// Resolves a payload value: strings at any depth (object values and array items; keys
/// are left alone). Files can only stand as top-level payload values; deeper down a file
/// token becomes the file's name.
pub fn resolve(
    v: &Value,
    bodies: &Map<String, Value>,
    files: &[FilePart],
) -> Result<Resolved, ResolveError> {
    fn inner(
        v: &Value,
        bodies: &Map<String, Value>,
        files: &[FilePart],
    ) -> Result<Value, ResolveError> {
        Ok(match v {
            Value::String(s) => match resolve_str(s, bodies, files)? {
                Resolved::Value(v) => v,
                Resolved::File(f) => Value::String(f.name),
            },
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| inner(i, bodies, files))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| Ok((k.clone(), inner(v, bodies, files)?)))
                    .collect::<Result<_, ResolveError>>()?,
            ),
            other => other.clone(),
        })
    }
    match v {
        Value::String(s) => resolve_str(s, bodies, files),
        other => inner(other, bodies, files).map(Resolved::Value),
    }
}

/// Resolves the tokens of a path; every value is rendered as text.
pub fn resolve_text(s: &str, bodies: &Map<String, Value>) -> Result<String, ResolveError> {
    Ok(match resolve_str(s, bodies, &[])? {
        Resolved::Value(Value::String(text)) => text,
        Resolved::Value(other) => python_text(&other),
        Resolved::File(f) => f.name,
    })
}

/// A value as upstream renders it into text: strings as they are, numbers in decimal,
/// `True`/`False`/`None`, containers in Python literal notation.
pub fn python_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => python_repr(other),
    }
}

fn python_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let quote = if s.contains('\'') && !s.contains('"') {
                '"'
            } else {
                '\''
            };
            let mut out = String::with_capacity(s.len() + 2);
            out.push(quote);
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c == quote => {
                        out.push('\\');
                        out.push(c);
                    }
                    c => out.push(c),
                }
            }
            out.push(quote);
            out
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(python_repr).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!(
                    "{}: {}",
                    python_repr(&Value::String(k.clone())),
                    python_repr(v)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bodies() -> Map<String, Value> {
        json!({
            "t": {"id": 7, "slug": "batch-team", "active": true, "none": null, "tags": ["a", "b"]},
            "lst": {"results": [{"id": 3}, {"id": 4}]},
            "gone": null
        })
        .as_object()
        .cloned()
        .unwrap()
    }

    fn value(s: &str) -> Value {
        match resolve(&json!(s), &bodies(), &[]).unwrap() {
            Resolved::Value(v) => v,
            Resolved::File(f) => panic!("file {f:?}"),
        }
    }

    fn reason(s: &str) -> (String, String) {
        let e = resolve(&json!(s), &bodies(), &[]).unwrap_err();
        (e.token, e.reason)
    }

    #[test]
    fn whole_string_tokens_keep_their_type() {
        assert_eq!(value("@ref{t.id}"), json!(7));
        assert_eq!(value("@ref{t.active}"), json!(true));
        assert_eq!(value("@ref{t.none}"), Value::Null);
        assert_eq!(value("@ref{t.tags}"), json!(["a", "b"]));
        assert_eq!(value("@ref{lst.results.1.id}"), json!(4));
    }

    #[test]
    fn embedded_tokens_render_python_text() {
        assert_eq!(
            value("member of @ref{t.slug} #@ref{t.id}"),
            json!("member of batch-team #7")
        );
        assert_eq!(value("x@ref{t.active}/@ref{t.none}"), json!("xTrue/None"));
        assert_eq!(value("tags: @ref{t.tags}"), json!("tags: ['a', 'b']"));
        assert_eq!(value("no token @ref{} here"), json!("no token @ref{} here"));
        assert_eq!(
            resolve_text("/users/teams/@ref{t.id}/", &bodies()).unwrap(),
            "/users/teams/7/"
        );
    }

    #[test]
    fn nested_payload_strings_are_resolved() {
        let v = json!({"a": ["@ref{t.id}", {"b": "id=@ref{t.id}"}], "@ref{t.id}": 1});
        let Resolved::Value(out) = resolve(&v, &bodies(), &[]).unwrap() else {
            panic!()
        };
        assert_eq!(out, json!({"a": [7, {"b": "id=7"}], "@ref{t.id}": 1}));
    }

    #[test]
    fn resolution_errors_use_upstream_reasons() {
        assert_eq!(reason("@ref{me}").1, LABEL_REASON);
        assert_eq!(reason("@ref{bad-label!.id}").1, LABEL_REASON);
        assert_eq!(reason("@file{bad-label!}").1, LABEL_REASON);
        assert_eq!(
            reason("@ref{x.id}"),
            (
                "@ref{x.id}".to_string(),
                "Alias \"x\" has not been defined by a previous step".to_string()
            )
        );
        assert_eq!(
            reason("@ref{t.nope}").1,
            "Key \"nope\" not found in response"
        );
        assert_eq!(
            reason("@ref{lst.results.9.id}").1,
            "Invalid list index \"9\""
        );
        assert_eq!(reason("@ref{lst.results.x}").1, "Invalid list index \"x\"");
        assert_eq!(
            reason("@ref{t.id.x}").1,
            "Cannot traverse into int with \"x\""
        );
        assert_eq!(
            reason("@ref{gone.id}").1,
            "Cannot traverse into NoneType with \"id\""
        );
        assert_eq!(reason("a @ref{t.slug.x} b").0, "@ref{t.slug.x}");
        assert_eq!(
            reason("@file{upload}").1,
            "File part \"upload\" was not uploaded with this request"
        );
    }

    #[test]
    fn file_tokens_resolve_to_parts() {
        let parts = vec![FilePart {
            field: "doc".into(),
            name: "report.pdf".into(),
            path: PathBuf::from("/tmp/x"),
        }];
        assert_eq!(
            resolve(&json!("@file{doc}"), &bodies(), &parts).unwrap(),
            Resolved::File(parts[0].clone())
        );
        assert_eq!(
            resolve(&json!("see @file{doc}"), &bodies(), &parts).unwrap(),
            Resolved::Value(json!("see report.pdf"))
        );
    }

    #[test]
    fn python_repr_of_strings() {
        assert_eq!(python_repr(&json!("it's")), "\"it's\"");
        assert_eq!(python_repr(&json!("a'b\"c")), "'a\\'b\"c'");
        assert_eq!(python_text(&json!({"k": [1, null]})), "{'k': [1, None]}");
    }
}
