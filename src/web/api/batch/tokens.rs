//! `@ref{alias.path}` and `@file{name}` tokens of batch steps (domain.md §12.2), resolved
//! under a [`Meter`]: a request resolves a bounded number of tokens, and a step's resolved
//! path and payload stay within the request body limit while they are being built (a few
//! references to a large value cannot fan out into memory).
//!
//! Recursion follows the payload's own nesting, which serde_json caps at 128 levels when
//! the request is read (the job itself, or the `job` string); referenced values are cloned
//! whole, never walked further than their size.

use crate::domain::validation::type_name;
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

/// Why resolution stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// A token that does not resolve (422, §12.2).
    Unresolved(ResolveError),
    /// The request has used up `batch.max_expansions`; the token that would exceed it.
    Expansions { token: String },
    /// The resolved path and payload would exceed the request body limit.
    TooLarge,
}

impl From<ResolveError> for Failure {
    fn from(e: ResolveError) -> Self {
        Failure::Unresolved(e)
    }
}

/// What a step may still spend while its tokens are resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Meter {
    /// Tokens the request may still resolve.
    pub expansions: usize,
    /// Bytes the step's resolved path and payload may still take (JSON-encoded, counted
    /// without escapes: never more than the encoded size).
    pub bytes: usize,
}

impl Meter {
    fn expand(&mut self, token: &str) -> Result<(), Failure> {
        match self.expansions.checked_sub(1) {
            Some(left) => {
                self.expansions = left;
                Ok(())
            }
            None => Err(Failure::Expansions {
                token: token.to_string(),
            }),
        }
    }

    fn spend(&mut self, bytes: usize) -> Result<(), Failure> {
        match self.bytes.checked_sub(bytes) {
            Some(left) => {
                self.bytes = left;
                Ok(())
            }
            None => Err(Failure::TooLarge),
        }
    }
}

/// The JSON-encoded size of a value, escapes not counted (a lower bound of
/// `serde_json::to_vec(v).len()`, and of its Python rendering's length).
pub fn encoded_len(v: &Value) -> usize {
    match v {
        Value::Null => 4,
        Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(n) => n.to_string().len(),
        Value::String(s) => s.len() + 2,
        Value::Array(items) => {
            2 + items.len().saturating_sub(1) + items.iter().map(encoded_len).sum::<usize>()
        }
        Value::Object(m) => {
            2 + m.len().saturating_sub(1)
                + m.iter()
                    .map(|(k, v)| k.len() + 3 + encoded_len(v))
                    .sum::<usize>()
        }
    }
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

fn lookup<'b>(
    token: &str,
    label: &str,
    bodies: &'b Map<String, Value>,
) -> Result<&'b Value, ResolveError> {
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
    Ok(current)
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
/// (type kept) or the file; otherwise each token is replaced by its text. Every token costs
/// one expansion; the result's size is charged to the meter before it is built.
fn resolve_str(
    s: &str,
    bodies: &Map<String, Value>,
    files: &[FilePart],
    meter: &mut Meter,
) -> Result<Resolved, Failure> {
    let tokens = scan(s);
    if tokens.is_empty() {
        meter.spend(s.len() + 2)?;
        return Ok(Resolved::Value(Value::String(s.to_string())));
    }
    if tokens.len() == 1 && tokens[0].start == 0 && tokens[0].end == s.len() {
        let t = &tokens[0];
        meter.expand(s)?;
        return match t.kind {
            Kind::Ref => {
                let v = lookup(s, t.label, bodies)?;
                meter.spend(encoded_len(v))?;
                Ok(Resolved::Value(v.clone()))
            }
            Kind::File => {
                let f = file(s, t.label, files)?;
                meter.spend(f.name.len() + 2)?;
                Ok(Resolved::File(f.clone()))
            }
        };
    }
    meter.spend(2)?;
    let mut out = String::new();
    let mut last = 0;
    for t in &tokens {
        let text = t.text(s);
        meter.expand(text)?;
        let literal = &s[last..t.start];
        meter.spend(literal.len())?;
        out.push_str(literal);
        match t.kind {
            Kind::Ref => {
                let v = lookup(text, t.label, bodies)?;
                // Charged before rendering, which is at least this long, then corrected.
                let estimate = match v {
                    Value::String(s) => s.len(),
                    other => encoded_len(other),
                };
                meter.spend(estimate)?;
                let rendered = python_text(v);
                meter.spend(rendered.len().saturating_sub(estimate))?;
                out.push_str(&rendered);
            }
            Kind::File => {
                let name = &file(text, t.label, files)?.name;
                meter.spend(name.len())?;
                out.push_str(name);
            }
        }
        last = t.end;
    }
    let rest = &s[last..];
    meter.spend(rest.len())?;
    out.push_str(rest);
    Ok(Resolved::Value(Value::String(out)))
}

/// Resolves a payload value: strings at any depth (object values and array items; keys
/// are left alone). Files can only stand as top-level payload values; deeper down a file
/// token becomes the file's name.
pub fn resolve(
    v: &Value,
    bodies: &Map<String, Value>,
    files: &[FilePart],
    meter: &mut Meter,
) -> Result<Resolved, Failure> {
    fn inner(
        v: &Value,
        bodies: &Map<String, Value>,
        files: &[FilePart],
        meter: &mut Meter,
    ) -> Result<Value, Failure> {
        Ok(match v {
            Value::String(s) => match resolve_str(s, bodies, files, meter)? {
                Resolved::Value(v) => v,
                Resolved::File(f) => Value::String(f.name),
            },
            Value::Array(items) => {
                meter.spend(2 + items.len().saturating_sub(1))?;
                Value::Array(
                    items
                        .iter()
                        .map(|i| inner(i, bodies, files, meter))
                        .collect::<Result<_, _>>()?,
                )
            }
            Value::Object(m) => {
                meter.spend(2 + m.len().saturating_sub(1))?;
                Value::Object(
                    m.iter()
                        .map(|(k, v)| {
                            meter.spend(k.len() + 3)?;
                            Ok((k.clone(), inner(v, bodies, files, meter)?))
                        })
                        .collect::<Result<_, Failure>>()?,
                )
            }
            other => {
                meter.spend(encoded_len(other))?;
                other.clone()
            }
        })
    }
    match v {
        Value::String(s) => resolve_str(s, bodies, files, meter),
        other => inner(other, bodies, files, meter).map(Resolved::Value),
    }
}

/// Resolves the tokens of a path; every value is rendered as text.
pub fn resolve_text(
    s: &str,
    bodies: &Map<String, Value>,
    meter: &mut Meter,
) -> Result<String, Failure> {
    Ok(match resolve_str(s, bodies, &[], meter)? {
        Resolved::Value(Value::String(text)) => text,
        Resolved::Value(other) => {
            let text = python_text(&other);
            meter.spend(text.len().saturating_sub(encoded_len(&other)))?;
            text
        }
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

    fn unlimited() -> Meter {
        Meter {
            expansions: usize::MAX,
            bytes: usize::MAX,
        }
    }

    fn value(s: &str) -> Value {
        match resolve(&json!(s), &bodies(), &[], &mut unlimited()).unwrap() {
            Resolved::Value(v) => v,
            Resolved::File(f) => panic!("file {f:?}"),
        }
    }

    fn reason(s: &str) -> (String, String) {
        match resolve(&json!(s), &bodies(), &[], &mut unlimited()) {
            Err(Failure::Unresolved(e)) => (e.token, e.reason),
            other => panic!("{other:?}"),
        }
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
            resolve_text("/users/teams/@ref{t.id}/", &bodies(), &mut unlimited()).unwrap(),
            "/users/teams/7/"
        );
    }

    #[test]
    fn nested_payload_strings_are_resolved() {
        let v = json!({"a": ["@ref{t.id}", {"b": "id=@ref{t.id}"}], "@ref{t.id}": 1});
        let Resolved::Value(out) = resolve(&v, &bodies(), &[], &mut unlimited()).unwrap() else {
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
            resolve(&json!("@file{doc}"), &bodies(), &parts, &mut unlimited()).unwrap(),
            Resolved::File(parts[0].clone())
        );
        assert_eq!(
            resolve(
                &json!("see @file{doc}"),
                &bodies(),
                &parts,
                &mut unlimited()
            )
            .unwrap(),
            Resolved::Value(json!("see report.pdf"))
        );
    }

    #[test]
    fn python_repr_of_strings() {
        assert_eq!(python_repr(&json!("it's")), "\"it's\"");
        assert_eq!(python_repr(&json!("a'b\"c")), "'a\\'b\"c'");
        assert_eq!(python_text(&json!({"k": [1, null]})), "{'k': [1, None]}");
    }

    #[test]
    fn every_token_costs_one_expansion() {
        let v = json!({"a": "@ref{t.id}", "b": ["x @ref{t.id} @ref{t.slug}", "@file{doc}"]});
        let parts = vec![FilePart {
            field: "doc".into(),
            name: "report.pdf".into(),
            path: PathBuf::from("/tmp/x"),
        }];
        let mut meter = Meter {
            expansions: 4,
            bytes: usize::MAX,
        };
        assert!(resolve(&v, &bodies(), &parts, &mut meter).is_ok());
        assert_eq!(meter.expansions, 0);
        let mut meter = Meter {
            expansions: 3,
            bytes: usize::MAX,
        };
        assert_eq!(
            resolve(&v, &bodies(), &parts, &mut meter),
            Err(Failure::Expansions {
                token: "@file{doc}".into()
            })
        );
        // Tokens that fail to resolve count too: the limit is on work, not on successes.
        let mut meter = Meter {
            expansions: 0,
            bytes: usize::MAX,
        };
        assert_eq!(
            resolve_text("/x/@ref{nope.id}/", &bodies(), &mut meter),
            Err(Failure::Expansions {
                token: "@ref{nope.id}".into()
            })
        );
    }

    #[test]
    fn resolved_size_is_bounded_before_it_is_built() {
        let big: Map<String, Value> = json!({"u": {"text": "x".repeat(10_000)}})
            .as_object()
            .cloned()
            .unwrap();
        let payload = json!({"a": "@ref{u.text}", "b": "@ref{u.text} again"});
        let exact = serde_json::to_vec(
            &json!({"a": "x".repeat(10_000), "b": format!("{} again", "x".repeat(10_000))}),
        )
        .unwrap()
        .len();
        let mut meter = Meter {
            expansions: 100,
            bytes: exact,
        };
        assert!(
            resolve(&payload, &big, &[], &mut meter).is_ok(),
            "fits exactly"
        );
        let mut meter = Meter {
            expansions: 100,
            bytes: 15_000,
        };
        assert_eq!(
            resolve(&payload, &big, &[], &mut meter),
            Err(Failure::TooLarge)
        );
        // A thousand embedded references to the value stop at the first one that does not
        // fit, not after building the whole string.
        let many = json!("@ref{u.text}".repeat(1000));
        let mut meter = Meter {
            expansions: 10_000,
            bytes: 25_000,
        };
        assert_eq!(
            resolve(&many, &big, &[], &mut meter),
            Err(Failure::TooLarge)
        );
        assert!(meter.expansions >= 10_000 - 3, "{meter:?}");
    }

    #[test]
    fn encoded_len_never_exceeds_the_encoding() {
        for v in [
            json!(null),
            json!(true),
            json!(false),
            json!(-12.5),
            json!("a\"b\\c\n"),
            json!({"k": [1, {"x": null}], "": "é"}),
            json!([]),
            json!({}),
        ] {
            let exact = serde_json::to_vec(&v).unwrap().len();
            assert!(encoded_len(&v) <= exact, "{v}");
            assert!(encoded_len(&v) <= python_text(&v).len() + 2, "{v}");
        }
        assert_eq!(encoded_len(&json!({"k": [1, {"x": null}]})), 20);
    }
}
