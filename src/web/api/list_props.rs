//! Property tests of the list-query parser (`_limit`/`_offset`, `_order`, `_search`, field
//! filters with lookups), over every public collection declaration and a synthetic one with
//! every column kind. Hostile query strings (percent-encoding, NUL, huge numbers, repeated
//! keys, unicode) never panic and give either a query or a field-error map; parsing is
//! deterministic; request text never reaches the SQL; the bound parameters stay within both
//! databases' limits; well-formed queries are accepted.
//!
//! CI runs proptest's default 256 cases per property (a few seconds). A long run:
//! `PROPTEST_CASES=100000 cargo test --lib api::list::props -- --nocapture`
//! (each property prints how many cases it ran).

use super::*;
use proptest::prelude::*;
use sea_query::{PostgresQueryBuilder, SqliteQueryBuilder};

const CODES: &[&str] = &["PD", "AP", "DC"];

/// One column of every kind, so the synthetic declaration reaches every parser branch.
const SYNTHETIC: ListSpec = ListSpec {
    table: "synthetic",
    filters: &[
        Column::new("id", Kind::Int),
        Column::new("amount", Kind::Decimal),
        Column::new("title", Kind::Text),
        Column::new("active", Kind::Date),
        Column::new("submitted", Kind::DateTime),
        Column::new("is_open", Kind::Bool),
        Column::new("team", Kind::Fk("users_team")),
        Column::new("status", Kind::Choice(CODES)),
    ],
    order: &[
        Column::new("id", Kind::Int),
        Column::new("title", Kind::Text),
        Column::new("team", Kind::Fk("users_team")),
    ],
    search: &[
        search("title"),
        search_via(&[("team_id", "users_team")], "name"),
    ],
};

fn specs() -> Vec<&'static ListSpec> {
    use crate::web::api::{allocations, memberships, notifications, research, teams, users};
    vec![
        &SYNTHETIC,
        &users::SPEC,
        &teams::SPEC,
        &memberships::SPEC,
        &research::grants::SPEC,
        &research::publications::SPEC,
        &notifications::notifications::SPEC,
        &notifications::preferences::SPEC,
        &allocations::requests::SPEC,
        &allocations::clusters::SPEC,
        &allocations::resource_allocations::SPEC,
        &allocations::attachments::SPEC,
        &allocations::reviews::SPEC,
        &allocations::comments::SPEC,
    ]
}

/// Text that must never appear in generated SQL: request values are bound, never pasted.
const MARKER: &str = "zq'\"marker";

const LOOKUPS: &[&str] = &[
    "",
    "not_eq",
    "in",
    "not_in",
    "isnull",
    "lt",
    "lte",
    "gt",
    "gte",
    "contains",
    "startswith",
    "endswith",
    "not_contains",
    "not_startswith",
    "not_endswith",
    "year",
    "month",
    "day",
    "week",
    "week_day",
    "hour",
    "minute",
    "second",
    "exact",
    "iexact",
    "regex",
];

/// One value a client might send, well-formed or hostile.
fn hostile_value() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        any::<String>(),
        "[0-9]{1,30}",
        "[+-]?[0-9]{0,25}(\\.[0-9]{0,5})?([eE][+-]?[0-9]{1,4})?",
        "[+-]?[0-9]{1,7}-[0-9]{1,3}-[0-9]{1,3}",
        "[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{1,9})?)?)?(Z|[+-][0-9]{2}:?[0-9]{2})?",
        Just(String::new()),
        Just("\0".to_string()),
        Just(MARKER.to_string()),
        prop_oneof![
            Just("true"),
            Just("FALSE"),
            Just("1"),
            Just("0"),
            Just("NaN"),
            Just("inf"),
            Just("-inf"),
            Just("1e309"),
            Just("9223372036854775807"),
            Just("9223372036854775808"),
            Just("-9223372036854775809"),
            Just("-100000-01-01"),
            Just("+262143-12-31"),
            Just("0000-01-01"),
            Just("9999-12-31T23:59:59-14:00"),
            Just("PD"),
            Just("\\"),
            Just("%"),
            Just("_"),
            Just("'"),
            Just("\" OR 1=1 --"),
        ]
        .prop_map(str::to_string),
    ];
    prop_oneof![
        4 => atom.clone(),
        1 => proptest::collection::vec(atom, 0..8).prop_map(|v| v.join(",")),
    ]
}

/// A parameter name: reserved, a declared filter with any lookup, or anything.
fn hostile_key(spec: &'static ListSpec) -> impl Strategy<Value = String> {
    let names: Vec<&'static str> = spec.filters.iter().map(|c| c.name).collect();
    prop_oneof![
        2 => prop_oneof![
            Just("_limit"),
            Just("_offset"),
            Just("_order"),
            Just("_search"),
            Just("format"),
        ]
        .prop_map(str::to_string),
        4 => (proptest::sample::select(names), proptest::sample::select(LOOKUPS)).prop_map(
            |(n, l)| if l.is_empty() {
                n.to_string()
            } else {
                format!("{n}__{l}")
            }
        ),
        1 => any::<String>(),
        1 => Just(format!("id__{MARKER}")),
    ]
}

/// Percent-encodes every byte (a client may encode anything, also what needs no encoding).
fn encode_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// A raw query string as it arrives after `?`: pairs joined by `&`, parts encoded or not,
/// plus stray bytes and broken escapes; decoded exactly as `query_pairs` decodes it.
fn hostile_query(spec: &'static ListSpec) -> impl Strategy<Value = Vec<(String, String)>> {
    let pair = (hostile_key(spec), hostile_value(), 0..4u8).prop_map(|(k, v, how)| match how {
        0 => format!("{k}={v}"),
        1 => format!("{}={}", encode_all(&k), encode_all(&v)),
        2 => {
            let v: String = url::form_urlencoded::byte_serialize(v.as_bytes()).collect();
            format!("{k}={v}")
        }
        _ => k,
    });
    let junk = prop_oneof![
        Just("%".to_string()),
        Just("%zz".to_string()),
        Just("%00".to_string()),
        Just("%FF%FE".to_string()),
        Just("==".to_string()),
        Just("+".to_string()),
        any::<String>(),
    ];
    proptest::collection::vec(prop_oneof![6 => pair, 1 => junk], 0..24).prop_map(|parts| {
        let raw = parts.join("&");
        url::form_urlencoded::parse(raw.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    })
}

/// A well-formed value for a column and lookup.
fn valid_value(kind: Kind, lookup: &str) -> BoxedStrategy<String> {
    let date = (1i32..=9999, 1u32..=12, 1u32..=28)
        .prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}"))
        .boxed();
    let datetime = (1i32..=9998, 1u32..=12, 1u32..=28, 0u32..24, 0u32..60)
        .prop_map(|(y, mo, d, h, mi)| format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:00Z"))
        .boxed();
    let scalar = match kind {
        Kind::Int | Kind::Fk(_) => any::<i64>().prop_map(|n| n.to_string()).boxed(),
        Kind::Decimal => (-1.0e12f64..1.0e12).prop_map(|f| f.to_string()).boxed(),
        Kind::Text => "[a-zA-Z0-9 _%\\\\'\"-]{1,20}".boxed(),
        Kind::Choice(codes) => proptest::sample::select(codes.to_vec())
            .prop_map(str::to_string)
            .boxed(),
        Kind::Bool => proptest::sample::select(vec!["true", "false", "1", "0", "True"])
            .prop_map(str::to_string)
            .boxed(),
        Kind::Date => date,
        Kind::DateTime => datetime,
    };
    match lookup {
        "isnull" => proptest::sample::select(vec!["true", "false"])
            .prop_map(str::to_string)
            .boxed(),
        "in" | "not_in" => proptest::collection::vec(scalar, 1..20)
            .prop_map(|v| {
                // Text values containing commas would be split: keep the list well-formed.
                v.iter()
                    .map(|s| s.replace(',', ""))
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .boxed(),
        "year" | "month" | "day" | "week" | "week_day" | "hour" | "minute" | "second" => {
            (0i64..10_000).prop_map(|n| n.to_string()).boxed()
        }
        _ => scalar,
    }
}

/// A well-formed query: declared filters with lookups their kind has, valid values, and
/// valid reserved parameters.
fn valid_query(spec: &'static ListSpec) -> impl Strategy<Value = Vec<(String, String)>> {
    let filter = proptest::sample::select(spec.filters.to_vec()).prop_flat_map(|column| {
        let lookups: Vec<&'static str> = lookups_for(column.kind).to_vec();
        proptest::sample::select(lookups).prop_flat_map(move |lookup| {
            let key = if lookup.is_empty() {
                column.name.to_string()
            } else {
                format!("{}__{lookup}", column.name)
            };
            valid_value(column.kind, lookup).prop_map(move |v| (key.clone(), v))
        })
    });
    let orders: Vec<String> = spec
        .order
        .iter()
        .flat_map(|c| [c.name.to_string(), format!("-{}", c.name)])
        .collect();
    let order = proptest::collection::vec(proptest::sample::select(orders), 1..4)
        .prop_map(|names| ("_order".to_string(), names.join(",")));
    let reserved = prop_oneof![
        (1u64..=5000).prop_map(|n| ("_limit".to_string(), n.to_string())),
        (0u64..=1_000_000).prop_map(|n| ("_offset".to_string(), n.to_string())),
        "[a-zA-Z0-9 ,'\"%_-]{0,40}".prop_map(|s| ("_search".to_string(), s)),
        order,
    ];
    proptest::collection::vec(prop_oneof![3 => filter, 1 => reserved], 0..10)
}

/// The SQL of a count and of a page for a parsed query, on both backends, with the number
/// of bound parameters of each.
fn statements(spec: &ListSpec, q: &ListQuery) -> Vec<(String, usize)> {
    let mut count = sea_query::Query::select();
    count
        .expr(Expr::cust("COUNT(*)"))
        .from(sea_query::Alias::new(spec.table))
        .cond_where(q.condition.clone());
    let mut page = sea_query::Query::select();
    page.column(sea_query::Alias::new("id"))
        .from(sea_query::Alias::new(spec.table))
        .cond_where(q.condition.clone());
    q.apply_page(&mut page);
    let mut out = Vec::new();
    for s in [&count, &page] {
        let (sql, values) = s.build(PostgresQueryBuilder);
        out.push((sql, values.0.len()));
        let (sql, values) = s.build(SqliteQueryBuilder);
        out.push((sql, values.0.len()));
    }
    out
}

/// Everything observable about one parse, for comparing two runs.
fn outcome(
    params: &[(String, String)],
    spec: &ListSpec,
    engine: Engine,
) -> (String, Vec<(String, usize)>, Map<String, Json>) {
    let (q, errors) = parse_collect(params, spec, engine, TZ, &[]);
    let sql = statements(spec, &q);
    (format!("{q:?}"), sql, errors)
}

/// A zone with daylight saving time, so naive datetimes meet gaps and folds.
const TZ: chrono_tz::Tz = chrono_tz::Europe::Berlin;

fn check_hostile(params: &[(String, String)], spec: &ListSpec) -> Result<(), TestCaseError> {
    for engine in [Engine::Postgres, Engine::Sqlite] {
        let first = outcome(params, spec, engine);
        let second = outcome(params, spec, engine);
        prop_assert_eq!(&first, &second, "parsing is deterministic");
        let (_, sql, errors) = first;
        for (statement, bound) in &sql {
            prop_assert!(
                !statement.contains(MARKER),
                "request text reached the SQL: {}",
                statement
            );
            prop_assert!(*bound < 32_766, "{} bound parameters", bound);
        }
        match parse(params, spec, engine, TZ) {
            Ok(q) => {
                prop_assert!(errors.is_empty());
                prop_assert!((1..=MAX_LIMIT).contains(&q.limit));
                prop_assert!(q.order.iter().any(|(c, _)| c == "id"), "ties broken by id");
                for (col, _) in &q.order {
                    prop_assert!(
                        col == "id" || spec.order.iter().any(|c| &c.sql() == col),
                        "order column {} is declared",
                        col
                    );
                }
                // The page envelope's arithmetic holds for any count.
                for count in [0, 1, i64::MAX, -1] {
                    let _ = envelope("http://h", "/p/", params, &q, count, Vec::<u8>::new());
                }
            }
            Err(ApiError::Fields(map)) => {
                prop_assert_eq!(&map, &errors);
                prop_assert!(!map.is_empty());
                for (key, messages) in &map {
                    prop_assert!(
                        params.iter().any(|(k, _)| k == key),
                        "error key {} is a parameter",
                        key
                    );
                    let list = messages.as_array().cloned().unwrap_or_default();
                    prop_assert!(!list.is_empty());
                    for m in list {
                        prop_assert!(m.as_str().is_some_and(|m| !m.is_empty()));
                    }
                }
            }
            Err(other) => prop_assert!(false, "unexpected error {:?}", other),
        }
    }
    Ok(())
}

fn check_valid(params: &[(String, String)], spec: &ListSpec) -> Result<(), TestCaseError> {
    for engine in [Engine::Postgres, Engine::Sqlite] {
        let q = parse(params, spec, engine, TZ);
        prop_assert!(q.is_ok(), "{:?} refused: {:?}", params, q.err());
    }
    check_hostile(params, spec)?;
    // The last `_order` decides, names in the order given.
    if let Some((_, names)) = params.iter().rev().find(|(k, _)| k == "_order")
        && let Ok(q) = parse(params, spec, Engine::Sqlite, TZ)
    {
        let first = names.split(',').next().unwrap_or("");
        let (desc, name) = match first.strip_prefix('-') {
            Some(n) => (true, n),
            None => (false, first),
        };
        let column = spec.order.iter().find(|c| c.name == name).map(|c| c.sql());
        prop_assert_eq!(q.order.first().cloned(), column.map(|c| (c, desc)));
    }
    Ok(())
}

/// A property of one parsed query string.
type Check = fn(&[(String, String)], &ListSpec) -> Result<(), TestCaseError>;

/// Runs one property over every declaration with proptest's configuration (`PROPTEST_CASES`
/// cases, 256 by default) and prints how many cases passed.
fn run_property<S>(name: &str, strategy: impl Fn(&'static ListSpec) -> S, check: Check)
where
    S: Strategy<Value = Vec<(String, String)>>,
{
    // Failures print their minimal input; there is no regressions file to replay.
    let config = ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config.clone());
    let started = std::time::Instant::now();
    let all = proptest::sample::select(specs()).prop_flat_map(move |spec| {
        let s: &'static ListSpec = spec;
        (Just(s), strategy(s))
    });
    let result = runner.run(&all, |(spec, params)| check(&params, spec));
    eprintln!(
        "{name}: {} cases in {:.1} s",
        config.cases,
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

#[test]
fn hostile_query_strings_give_a_query_or_field_errors() {
    run_property("hostile query strings", hostile_query, check_hostile);
}

#[test]
fn well_formed_queries_are_accepted() {
    run_property("well-formed queries", valid_query, check_valid);
}

#[test]
fn list_filters_are_bounded() {
    let spec = &SYNTHETIC;
    let many: Vec<String> = (0..=MAX_LIST_VALUES).map(|n| n.to_string()).collect();
    let params = vec![("id__in".to_string(), many.join(","))];
    let Err(ApiError::Fields(errors)) = parse(&params, spec, Engine::Sqlite, chrono_tz::UTC) else {
        panic!("{} values accepted", MAX_LIST_VALUES + 1);
    };
    assert_eq!(
        errors["id__in"][0],
        "Ensure this field has no more than 1000 elements."
    );
    let terms = vec!["x"; MAX_SEARCH_TERMS + 1].join(" ");
    let params = vec![("_search".to_string(), terms)];
    assert!(parse(&params, spec, Engine::Sqlite, chrono_tz::UTC).is_err());
    // Six lists of 1000 values each: more than one request may bind.
    let lists: Vec<(String, String)> = ["id__in", "id__not_in", "team__in", "team__not_in"]
        .iter()
        .chain(["status__in", "status__not_in"].iter())
        .map(|k| (k.to_string(), many[..MAX_LIST_VALUES].join(",")))
        .collect();
    let Err(ApiError::Fields(errors)) = parse(&lists, spec, Engine::Sqlite, chrono_tz::UTC) else {
        panic!("6000 list values accepted");
    };
    assert!(errors.contains_key("status__not_in"), "{errors:?}");
}

#[test]
fn a_repeated_parameter_counts_once_with_its_last_value() {
    let params: Vec<(String, String)> = (0..50_000)
        .map(|n| ("id".to_string(), n.to_string()))
        .collect();
    let q = parse(&params, &SYNTHETIC, Engine::Postgres, chrono_tz::UTC).expect("parsed");
    let mut page = sea_query::Query::select();
    page.column(sea_query::Alias::new("id"))
        .from(sea_query::Alias::new("synthetic"))
        .cond_where(q.condition.clone());
    let (_, values) = page.build(PostgresQueryBuilder);
    assert_eq!(values.0.len(), 1, "one condition, not 50000");
    assert_eq!(values.0[0], Value::BigInt(Some(49_999)));
}

#[test]
fn dates_outside_years_1_to_9999_are_invalid() {
    for raw in ["-100000-01-01", "0000-12-31", "+10000-01-01"] {
        for key in ["active", "active__gte", "submitted__lt", "active__in"] {
            let params = vec![(key.to_string(), raw.to_string())];
            let result = parse(&params, &SYNTHETIC, Engine::Postgres, chrono_tz::UTC);
            assert!(
                matches!(result, Err(ApiError::Fields(ref m)) if m.contains_key(key)),
                "{key}={raw}: {result:?}"
            );
        }
    }
    let params = vec![("active__lte".to_string(), "9999-12-31".to_string())];
    assert!(parse(&params, &SYNTHETIC, Engine::Postgres, chrono_tz::UTC).is_ok());
}
