//! Property tests of the batch job parser and the token resolver. Arbitrary JSON as a job
//! never panics and gives a job that obeys every §12.1 rule or a 400 field-error body;
//! well-formed jobs round-trip (as an object and as a `job` string); resolution of
//! arbitrary payloads against arbitrary earlier bodies terminates, never resolves more
//! tokens than its meter allows, never builds a value larger than its byte budget, and
//! refuses for size only what really is too large.
//!
//! CI runs proptest's default 256 cases per property (well under a second each). A long
//! run: `PROPTEST_CASES=200000 cargo test --lib api::batch::proptests -- --nocapture`
//! (each property prints the cases it ran).

use super::job::{Job, Step, parse};
use super::tokens::{Failure, FilePart, Meter, Resolved, encoded_len, resolve, resolve_text};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};
use std::path::PathBuf;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Runs one property with proptest's configuration (`PROPTEST_CASES` and friends) and
/// reports how many cases it ran.
fn check<S: Strategy>(
    name: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let config = Config {
        failure_persistence: None,
        ..Config::default()
    };
    let cases = config.cases;
    let mut runner = TestRunner::new(config);
    let started = std::time::Instant::now();
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{name}: {e}");
    }
    eprintln!(
        "batch property {name}: {cases} cases passed in {:.1?}",
        started.elapsed()
    );
}

/// Short texts that favour the characters the parser and the scanner care about.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_]{0,6}",
        "[ @{}./a-zA-Z0-9_!-]{0,12}",
        ".{0,8}",
        Just("@ref{".to_string()),
        Just("}".to_string()),
    ]
}

/// Any JSON value, up to a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter_map("finite", serde_json::Number::from_f64)
            .prop_map(Value::Number),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value for one step key: sometimes right, often wrong in a way the parser must name.
fn step_field(right: BoxedStrategy<Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        3 => right.prop_map(Some),
        1 => any_json().prop_map(Some),
        1 => Just(None),
    ]
}

/// Objects shaped like steps, with every key sometimes missing or of the wrong type.
fn step_like() -> impl Strategy<Value = Value> {
    let method = prop_oneof![
        prop::sample::select(METHODS.to_vec()).prop_map(|m| json!(m)),
        Just(json!("get")),
        Just(json!("TRACE")),
    ]
    .boxed();
    let path = prop_oneof![
        "/[a-z]{1,8}/(@ref\\{[a-z]{1,3}\\.[a-z0-9.]{1,6}\\}/)?".prop_map(|p| json!(p)),
        Just(json!("")),
        Just(json!("   ")),
        Just(json!("/".repeat(2049))),
        any::<i32>().prop_map(|n| json!(n)),
    ]
    .boxed();
    let reference = prop_oneof![
        "[a-z_]{0,3}".prop_map(|r| json!(r)),
        Just(json!("bad-ref")),
        Just(json!(7)),
    ]
    .boxed();
    let dict = any_json()
        .prop_map(|v| match v {
            Value::Object(_) => v,
            other => json!({ "k": other }),
        })
        .boxed();
    (
        step_field(method),
        step_field(path),
        step_field(reference),
        step_field(dict.clone()),
        step_field(dict),
    )
        .prop_map(|(method, path, reference, payload, query)| {
            let mut m = Map::new();
            for (key, value) in [
                ("method", method),
                ("path", path),
                ("ref", reference),
                ("payload", payload),
                ("query_params", query),
            ] {
                if let Some(v) = value {
                    m.insert(key.into(), v);
                }
            }
            Value::Object(m)
        })
}

/// Job-shaped documents (mostly) and arbitrary JSON (sometimes).
fn job_like() -> impl Strategy<Value = Value> {
    let actions = prop_oneof![
        4 => prop::collection::vec(step_like(), 0..8).prop_map(Value::Array),
        1 => any_json(),
    ];
    let dry_run = prop_oneof![
        Just(None),
        any::<bool>().prop_map(|b| Some(json!(b))),
        any_json().prop_map(Some),
    ];
    prop_oneof![
        5 => (actions, dry_run).prop_map(|(actions, dry_run)| {
            let mut m = Map::new();
            m.insert("actions".into(), actions);
            if let Some(d) = dry_run {
                m.insert("dry_run".into(), d);
            }
            Value::Object(m)
        }),
        1 => any_json(),
    ]
}

/// A field-error body: an object whose values are lists of messages, per-item lists, or
/// nested field-error objects, with text at every leaf.
fn is_field_errors(v: &Value) -> bool {
    fn messages(v: &Value) -> bool {
        match v {
            Value::String(s) => !s.is_empty(),
            Value::Array(items) => {
                !items.is_empty() && items.iter().all(|i| messages(i) || i == &json!({}))
            }
            Value::Object(m) => m.values().all(messages),
            _ => false,
        }
    }
    matches!(v, Value::Object(m) if !m.is_empty() && m.values().all(messages))
}

fn word(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[test]
fn arbitrary_jobs_validate_or_give_field_errors() {
    check("job parser", (job_like(), 1usize..6), |(doc, max_steps)| {
        match parse(&doc, max_steps) {
            Ok(job) => {
                prop_assert!(!job.steps.is_empty() && job.steps.len() <= max_steps);
                let mut seen = std::collections::HashSet::new();
                for step in &job.steps {
                    prop_assert!(METHODS.contains(&step.method.as_str()), "{:?}", step);
                    prop_assert!(!step.path.is_empty() && step.path.chars().count() <= 2048);
                    prop_assert_eq!(step.path.trim(), step.path.as_str());
                    prop_assert!(word(&step.reference), "{:?}", step);
                    prop_assert!(step.reference.is_empty() || seen.insert(step.reference.clone()));
                }
            }
            Err(invalid) => {
                prop_assert_eq!(invalid.error.status().as_u16(), 400);
                let body = invalid.error.body();
                prop_assert!(is_field_errors(&body), "{}", body);
                let too_many = doc["actions"]
                    .as_array()
                    .is_some_and(|a| a.len() > max_steps);
                prop_assert_eq!(invalid.over_limit, too_many, "{}", body);
            }
        }
        Ok(())
    });
}

/// Well-formed steps, tokens and all.
fn valid_step() -> impl Strategy<Value = Step> {
    let payload = prop::collection::btree_map("[a-z]{1,6}", any_json(), 0..4)
        .prop_map(|m| m.into_iter().collect::<Map<String, Value>>());
    let query = prop::collection::btree_map(
        "[a-z]{1,6}",
        prop_oneof![
            any::<i64>().prop_map(|n| json!(n)),
            "[a-z0-9 ]{0,6}".prop_map(|s| json!(s)),
            any::<bool>().prop_map(|b| json!(b)),
        ],
        0..3,
    )
    .prop_map(|m| m.into_iter().collect::<Map<String, Value>>());
    (
        prop::sample::select(METHODS.to_vec()),
        "/[a-z]{1,8}/([0-9]{1,3}/|@ref\\{[a-z]{1,3}\\.[a-z0-9.]{1,6}\\}/)?(\\?[a-z]=[0-9])?",
        payload,
        query,
    )
        .prop_map(|(method, path, payload, query)| Step {
            reference: String::new(),
            method: method.to_string(),
            path,
            payload,
            query,
        })
}

fn step_document(step: &Step) -> Value {
    let mut m = Map::new();
    if !step.reference.is_empty() || step.path.len().is_multiple_of(2) {
        m.insert("ref".into(), json!(step.reference));
    }
    m.insert("method".into(), json!(step.method));
    m.insert("path".into(), json!(step.path));
    if !step.payload.is_empty() {
        m.insert("payload".into(), Value::Object(step.payload.clone()));
    }
    if !step.query.is_empty() {
        m.insert("query_params".into(), Value::Object(step.query.clone()));
    }
    Value::Object(m)
}

#[test]
fn valid_jobs_round_trip() {
    let job = (
        prop::collection::vec((valid_step(), any::<bool>()), 1..10),
        any::<bool>(),
    )
        .prop_map(|(steps, dry_run)| Job {
            dry_run,
            steps: steps
                .into_iter()
                .enumerate()
                .map(|(i, (mut step, named))| {
                    if named {
                        step.reference = format!("s{i}");
                    }
                    step
                })
                .collect(),
        });
    check("valid job round trip", job, |job| {
        let doc = json!({
            "dry_run": job.dry_run,
            "actions": job.steps.iter().map(step_document).collect::<Vec<_>>(),
        });
        let parsed =
            parse(&doc, 10).map_err(|e| TestCaseError::fail(format!("{:?}", e.error.body())))?;
        prop_assert_eq!(&parsed, &job);
        // The same job sent as a `job` string.
        let text = doc.to_string();
        let decoded: Value =
            serde_json::from_str(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(
            parse(&decoded, 10)
                .map_err(|e| TestCaseError::fail(format!("{:?}", e.error.body())))?,
            job
        );
        Ok(())
    });
}

/// Strings mixing literal text with tokens, well-formed or not.
fn tokenised() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => text(),
        2 => ("[abz]{1,2}", "[a-z0-9_.]{1,8}").prop_map(|(a, p)| format!("@ref{{{a}.{p}}}")),
        1 => "[a-z!-]{0,4}".prop_map(|l| format!("@ref{{{l}}}")),
        1 => "[a-z!-]{0,4}".prop_map(|l| format!("@file{{{l}}}")),
        1 => Just("@ref{big.text}".to_string()),
        1 => Just("é@".to_string()),
    ];
    prop::collection::vec(piece, 0..6).prop_map(|p| p.concat())
}

/// Payloads whose strings carry tokens, a few levels deep.
fn payload() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        3 => tokenised().prop_map(Value::String),
        1 => any::<i64>().prop_map(|n| json!(n)),
        1 => Just(Value::Null),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-z@{}.]{0,6}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Earlier steps' bodies under the aliases the token strategy uses.
fn bodies() -> impl Strategy<Value = Map<String, Value>> {
    (any_json(), any_json(), 0usize..4096).prop_map(|(a, b, n)| {
        let mut m = Map::new();
        m.insert("a".into(), a);
        m.insert("b".into(), b);
        m.insert("big".into(), json!({"text": "x".repeat(n)}));
        m
    })
}

fn parts() -> Vec<FilePart> {
    vec![FilePart {
        field: "doc".into(),
        name: "notes.txt".into(),
        path: PathBuf::from("/nonexistent/notes.txt"),
    }]
}

fn unlimited() -> Meter {
    Meter {
        expansions: usize::MAX,
        bytes: usize::MAX,
    }
}

fn size_of(r: &Resolved) -> usize {
    match r {
        Resolved::Value(v) => encoded_len(v),
        Resolved::File(f) => f.name.len() + 2,
    }
}

#[test]
fn resolution_terminates_within_its_meter() {
    check(
        "token resolution",
        (payload(), bodies(), 0usize..12, 0usize..20_000),
        |(payload, bodies, expansions, bytes)| {
            let files = parts();
            // Unbounded, for reference: how many tokens and how large.
            let mut free = unlimited();
            let reference = resolve(&payload, &bodies, &files, &mut free);
            let tokens_used = usize::MAX - free.expansions;
            let mut meter = Meter { expansions, bytes };
            let bounded = resolve(&payload, &bodies, &files, &mut meter);
            prop_assert!(meter.expansions <= expansions);
            prop_assert!(meter.bytes <= bytes);
            match (&reference, &bounded) {
                (Ok(full), Ok(out)) => {
                    prop_assert_eq!(full, out, "a meter never changes the result");
                    // The meter charges exactly the escape-free encoded size.
                    prop_assert_eq!(bytes - meter.bytes, size_of(out));
                    prop_assert!(tokens_used <= expansions);
                    prop_assert_eq!(expansions - meter.expansions, tokens_used);
                }
                (Ok(full), Err(Failure::TooLarge)) => {
                    // Refused for size only what really does not fit.
                    prop_assert!(size_of(full) > bytes, "{} <= {}", size_of(full), bytes);
                }
                (_, Err(Failure::Expansions { .. })) => {
                    prop_assert!(tokens_used > expansions || reference.is_err());
                }
                (Err(e), Err(Failure::Unresolved(u))) => {
                    prop_assert_eq!(e, &Failure::Unresolved(u.clone()));
                }
                (Err(_), Err(Failure::TooLarge)) => {}
                (Ok(_), Err(e)) => prop_assert!(false, "bounded failed alone: {:?}", e),
                (Err(e), Ok(_)) => prop_assert!(false, "only the unbounded failed: {:?}", e),
            }
            Ok(())
        },
    );
}

#[test]
fn paths_resolve_as_text_or_fail_cleanly() {
    check(
        "path resolution",
        (tokenised(), bodies(), 0usize..4, 0usize..3000),
        |(path, bodies, expansions, bytes)| {
            let mut meter = Meter { expansions, bytes };
            if let Ok(text) = resolve_text(&path, &bodies, &mut meter) {
                prop_assert!(text.len() <= bytes, "{} > {}", text.len(), bytes);
            }
            prop_assert!(meter.expansions <= expansions);
            Ok(())
        },
    );
}

#[test]
fn deep_payloads_resolve_without_exhausting_the_stack() {
    // serde_json refuses documents nested deeper than 128 levels, so a request's payload
    // and every stored body stay below that; a whole-string reference can double it.
    let mut deep = json!("@ref{a.x}");
    for _ in 0..127 {
        deep = json!([deep]);
    }
    let mut value = json!(1);
    for _ in 0..126 {
        value = json!({ "x": value });
    }
    let mut bodies = Map::new();
    bodies.insert("a".into(), value);
    let resolved = resolve(&deep, &bodies, &[], &mut unlimited());
    let Ok(Resolved::Value(out)) = resolved else {
        panic!("{resolved:?}");
    };
    assert!(serde_json::to_vec(&out).is_ok());
    let text = format!("{}1{}", "[".repeat(129), "]".repeat(129));
    assert!(
        serde_json::from_str::<Value>(&text).is_err(),
        "serde_json's recursion limit is what bounds payload depth"
    );
}
