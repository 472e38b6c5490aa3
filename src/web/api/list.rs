//! List-query conventions shared by every collection (domain.md §2): `_limit`/`_offset`,
//! `_order`, `_search`, and field filters with lookups, declared per resource as data and
//! turned into bound SQL conditions. Request text never becomes SQL: column names come from
//! the declarations, values are bound parameters.

use crate::config::Engine;
use crate::web::ApiError;
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeZone, Utc};
use sea_query::{Cond, Expr, ExprTrait, Func, LikeExpr, Order, SelectStatement, Value};
use serde_json::{Map, Value as Json};

/// How a filterable column's values are parsed and which lookups it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Decimal,
    Text,
    Date,
    DateTime,
    Bool,
    /// Foreign key to a table (the column is `<name>_id`).
    Fk(&'static str),
    /// Stored codes of an enumeration.
    Choice(&'static [&'static str]),
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
}

impl Column {
    pub const fn new(name: &'static str, kind: Kind) -> Self {
        Column { name, kind }
    }

    /// The SQL column: foreign keys are stored as `<name>_id`.
    pub fn sql(&self) -> String {
        match self.kind {
            Kind::Fk(_) => format!("{}_id", self.name),
            _ => self.name.to_string(),
        }
    }
}

/// One step of a search path across a foreign key: (`<fk>_id` column, referenced table).
pub type Hop = (&'static str, &'static str);

/// A search field: a column of the resource's table, or one reached through foreign keys.
#[derive(Debug, Clone, Copy)]
pub struct SearchField {
    pub hops: &'static [Hop],
    pub column: &'static str,
}

pub const fn search(column: &'static str) -> SearchField {
    SearchField { hops: &[], column }
}

pub const fn search_via(hops: &'static [Hop], column: &'static str) -> SearchField {
    SearchField { hops, column }
}

/// What a collection declares about itself.
#[derive(Debug, Clone, Copy)]
pub struct ListSpec {
    pub table: &'static str,
    pub filters: &'static [Column],
    /// Orderable names; foreign keys order by their id column.
    pub order: &'static [Column],
    pub search: &'static [SearchField],
}

/// A parsed list request.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub limit: u64,
    pub offset: u64,
    pub order: Vec<(String, bool)>,
    pub condition: Cond,
    /// Foreign-key ids named by filters, which must exist: (param, table, ids).
    pub fk_checks: Vec<(String, &'static str, Vec<i64>)>,
}

pub const DEFAULT_LIMIT: u64 = 100;
pub const MAX_LIMIT: u64 = 1000;
/// Elements of one `__in`/`__not_in` list (a page of ids, at the largest page size).
pub const MAX_LIST_VALUES: usize = 1000;
/// Elements of all `__in`/`__not_in` lists of one request together. Each element is a bound
/// parameter: this keeps a query well below SQLite's 32766 and PostgreSQL's 65535.
pub const MAX_REQUEST_VALUES: usize = 5000;
/// Terms of one `_search` (each term is one bound parameter per search field).
pub const MAX_SEARCH_TERMS: usize = 100;

const NUMBER: &str = "Enter a number.";
const DATE: &str = "Enter a valid date.";
const DATETIME: &str = "Enter a valid date/time.";

fn add_error(errors: &mut Map<String, Json>, param: &str, msg: String) {
    let entry = errors
        .entry(param.to_string())
        .or_insert_with(|| Json::Array(Vec::new()));
    if let Json::Array(list) = entry
        && !list.iter().any(|m| m.as_str() == Some(&msg))
    {
        list.push(Json::String(msg));
    }
}

/// Splits `_search` into terms: whitespace and commas separate; quoted phrases stay whole.
pub fn search_terms(text: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match quote {
            Some(q) if c == q => {
                quote = None;
                if !current.is_empty() {
                    terms.push(std::mem::take(&mut current));
                }
            }
            Some(_) => current.push(c),
            None if c == '"' || c == '\'' => {
                if !current.is_empty() {
                    terms.push(std::mem::take(&mut current));
                }
                quote = Some(c);
            }
            None if c.is_whitespace() || c == ',' => {
                if !current.is_empty() {
                    terms.push(std::mem::take(&mut current));
                }
            }
            None => current.push(c),
        }
    }
    if !current.is_empty() {
        terms.push(current);
    }
    terms
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// A parsed filter value.
enum Parsed {
    V(Value),
    /// The parameter is disabled (booleans with unknown words).
    Skip,
}

fn parse_value(
    kind: Kind,
    raw: &str,
    tz: chrono_tz::Tz,
    param: &str,
    errors: &mut Map<String, Json>,
) -> Option<Parsed> {
    match kind {
        Kind::Int | Kind::Fk(_) => match raw.trim().parse::<i64>() {
            Ok(v) => Some(Parsed::V(v.into())),
            Err(_) => {
                // Integral decimals ("5.0") are numbers too.
                match raw.trim().parse::<f64>() {
                    Ok(f) if f.fract() == 0.0 && f.is_finite() && matches!(kind, Kind::Int) => {
                        Some(Parsed::V((f as i64).into()))
                    }
                    _ => {
                        let msg = if matches!(kind, Kind::Fk(_)) {
                            "Select a valid choice. That choice is not one of the available choices."
                        } else {
                            NUMBER
                        };
                        add_error(errors, param, msg.into());
                        None
                    }
                }
            }
        },
        Kind::Decimal => match raw.trim().parse::<f64>() {
            Ok(v) if v.is_finite() => Some(Parsed::V(v.into())),
            _ => {
                add_error(errors, param, NUMBER.into());
                None
            }
        },
        Kind::Text | Kind::Choice(_) => Some(Parsed::V(raw.to_string().into())),
        Kind::Bool => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Some(Parsed::V(true.into())),
            "false" | "0" => Some(Parsed::V(false.into())),
            _ => Some(Parsed::Skip),
        },
        Kind::Date => match NaiveDate::parse_from_str(raw.trim(), "%Y-%m-%d")
            .ok()
            .filter(|d| SUPPORTED_YEARS.contains(&d.year()))
        {
            Some(d) => Some(Parsed::V(d.into())),
            None => {
                add_error(errors, param, DATE.into());
                None
            }
        },
        Kind::DateTime => match parse_datetime(raw.trim(), tz) {
            Some(dt) => Some(Parsed::V(dt.into())),
            None => {
                add_error(errors, param, DATETIME.into());
                None
            }
        },
    }
}

/// Years a date or datetime filter accepts: upstream's (Python's `date`), which both databases
/// store (PostgreSQL refuses dates before 4713 BC with an error, not an empty result).
const SUPPORTED_YEARS: std::ops::RangeInclusive<i32> = 1..=9999;

/// ISO 8601 datetime; a bare date is midnight; naive values are in the server time zone.
/// Years outside 1..=9999 (after conversion to UTC) are not valid.
pub fn parse_datetime(s: &str, tz: chrono_tz::Tz) -> Option<DateTime<Utc>> {
    parse_any_datetime(s, tz).filter(|dt| SUPPORTED_YEARS.contains(&dt.year()))
}

fn parse_any_datetime(s: &str, tz: chrono_tz::Tz) -> Option<DateTime<Utc>> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.with_timezone(&Utc));
    }
    let s = s.replace(' ', "T");
    if let Ok(dt) = DateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M:%S%.f%z") {
        return Some(dt.with_timezone(&Utc));
    }
    if let Ok(dt) = DateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M%z") {
        return Some(dt.with_timezone(&Utc));
    }
    let naive = NaiveDateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M"))
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(&s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })?;
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|dt| dt.with_timezone(&Utc))
}

fn lookups_for(kind: Kind) -> &'static [&'static str] {
    const COMMON: [&str; 5] = ["not_eq", "in", "not_in", "isnull", ""];
    let _ = COMMON;
    match kind {
        Kind::Int | Kind::Decimal => &[
            "", "not_eq", "in", "not_in", "isnull", "lt", "lte", "gt", "gte",
        ],
        Kind::Text | Kind::Choice(_) => &[
            "",
            "not_eq",
            "in",
            "not_in",
            "isnull",
            "contains",
            "startswith",
            "endswith",
            "not_contains",
            "not_startswith",
            "not_endswith",
        ],
        Kind::Date => &[
            "", "not_eq", "in", "not_in", "isnull", "lt", "lte", "gt", "gte", "year", "month",
            "day", "week", "week_day",
        ],
        Kind::DateTime => &[
            "", "not_eq", "in", "not_in", "isnull", "lt", "lte", "gt", "gte", "year", "month",
            "day", "week", "week_day", "hour", "minute", "second",
        ],
        Kind::Bool | Kind::Fk(_) => &["", "not_eq", "in", "not_in", "isnull"],
    }
}

/// SQL extracting a calendar or clock part as an integer.
fn part_sql(engine: Engine, col: &str, part: &str) -> String {
    match engine {
        Engine::Postgres => {
            let field = match part {
                "week_day" => "DOW",
                "week" => "WEEK",
                other => {
                    return format!(
                        "CAST(EXTRACT({} FROM {col}) AS INTEGER)",
                        other.to_uppercase()
                    );
                }
            };
            if part == "week_day" {
                // Django: 1 = Sunday ... 7 = Saturday.
                format!("(CAST(EXTRACT({field} FROM {col}) AS INTEGER) + 1)")
            } else {
                format!("CAST(EXTRACT({field} FROM {col}) AS INTEGER)")
            }
        }
        Engine::Sqlite => {
            let fmt = match part {
                "year" => "%Y",
                "month" => "%m",
                "day" => "%d",
                "hour" => "%H",
                "minute" => "%M",
                "second" => "%S",
                "week" => "%W",
                _ => "%w",
            };
            let base = format!("CAST(strftime('{fmt}', {col}) AS INTEGER)");
            match part {
                "week_day" => format!("({base} + 1)"),
                // ISO week: SQLite >= 3.46 has %V; compute from the Thursday of the week.
                "week" => format!(
                    "((CAST(strftime('%j', date({col}, '-3 days', 'weekday 4')) AS INTEGER) - 1) / 7 + 1)"
                ),
                _ => base,
            }
        }
    }
}

fn column_expr(col: &str) -> Expr {
    Expr::col(sea_query::Alias::new(col))
}

/// Parses the query string for a collection: all filter errors together in one 400.
pub fn parse(
    params: &[(String, String)],
    spec: &ListSpec,
    engine: Engine,
    tz: chrono_tz::Tz,
) -> Result<ListQuery, ApiError> {
    parse_ordered(params, spec, engine, tz, &[])
}

/// `parse` with a default order other than ascending id (e.g. newest first for logs).
pub fn parse_ordered(
    params: &[(String, String)],
    spec: &ListSpec,
    engine: Engine,
    tz: chrono_tz::Tz,
    default_order: &[(&str, bool)],
) -> Result<ListQuery, ApiError> {
    let (query, errors) = parse_collect(params, spec, engine, tz, default_order);
    if errors.is_empty() {
        Ok(query)
    } else {
        Err(ApiError::Fields(errors))
    }
}

/// Parses the query string and checks the ids its foreign-key filters name: the filter
/// errors and the unknown ids together in one 400 (lists and `/stats/` alike).
pub async fn parse_checked(
    params: &[(String, String)],
    spec: &ListSpec,
    db: &crate::store::Db,
    tz: chrono_tz::Tz,
    default_order: &[(&str, bool)],
) -> Result<ListQuery, ApiError> {
    let (query, mut errors) = parse_collect(params, spec, db.engine(), tz, default_order);
    query.foreign_key_errors(db, &mut errors).await?;
    if errors.is_empty() {
        Ok(query)
    } else {
        Err(ApiError::Fields(errors))
    }
}

/// Parses everything it can and returns the errors beside the query, so that callers can
/// add the foreign-key errors and report all of them in one 400.
fn parse_collect(
    params: &[(String, String)],
    spec: &ListSpec,
    engine: Engine,
    tz: chrono_tz::Tz,
    default_order: &[(&str, bool)],
) -> (ListQuery, Map<String, Json>) {
    let mut errors = Map::new();
    let mut limit = DEFAULT_LIMIT;
    let mut offset = 0;
    let mut order = Vec::new();
    let mut cond = Cond::all();
    let mut fk_checks = Vec::new();
    let mut list_values = 0usize;
    // A repeated parameter counts once, with its last value, as upstream's `QueryDict.get`.
    let last: std::collections::HashMap<&str, usize> = params
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.as_str(), i))
        .collect();
    for (i, (key, raw)) in params.iter().enumerate() {
        if last.get(key.as_str()) != Some(&i) {
            continue;
        }
        match key.as_str() {
            "_limit" => {
                limit = match raw.trim().parse::<i64>() {
                    Ok(n) if n > 0 => std::cmp::min(n as u64, MAX_LIMIT),
                    _ => DEFAULT_LIMIT,
                };
                continue;
            }
            "_offset" => {
                offset = raw
                    .trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .unwrap_or(0) as u64;
                continue;
            }
            "_order" => {
                order.clear();
                for name in raw.split(',') {
                    let name = name.trim();
                    let (desc, bare) = match name.strip_prefix('-') {
                        Some(b) => (true, b),
                        None => (false, name),
                    };
                    if let Some(c) = spec.order.iter().find(|c| c.name == bare) {
                        order.push((c.sql(), desc));
                    }
                }
                continue;
            }
            "_search" => {
                if raw.contains('\0') {
                    add_error(
                        &mut errors,
                        "_search",
                        "Null characters are not allowed.".into(),
                    );
                    continue;
                }
                if spec.search.is_empty() {
                    continue;
                }
                let terms = search_terms(raw);
                if terms.len() > MAX_SEARCH_TERMS {
                    add_error(
                        &mut errors,
                        "_search",
                        format!("Ensure this field has no more than {MAX_SEARCH_TERMS} terms."),
                    );
                    continue;
                }
                for term in terms {
                    let pattern = format!("%{}%", like_escape(&term.to_lowercase()));
                    let mut any = Cond::any();
                    for field in spec.search {
                        any = any.add(search_condition(field, &pattern));
                    }
                    cond = cond.add(any);
                }
                continue;
            }
            _ => {}
        }
        let (name, lookup) = match key.split_once("__") {
            Some((n, l)) => (n, l),
            None => (key.as_str(), ""),
        };
        let Some(column) = spec.filters.iter().find(|c| c.name == name) else {
            continue; // unknown parameters are ignored
        };
        if !lookups_for(column.kind).contains(&lookup) {
            continue;
        }
        if raw.is_empty() {
            continue; // an empty value disables the filter
        }
        if raw.contains('\0') {
            add_error(&mut errors, key, "Null characters are not allowed.".into());
            continue;
        }
        let col = column.sql();
        match lookup {
            "isnull" => match raw.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => cond = cond.add(column_expr(&col).is_null()),
                "false" | "0" => cond = cond.add(column_expr(&col).is_not_null()),
                _ => {}
            },
            "in" | "not_in" => {
                let items: Vec<&str> = raw.split(',').filter(|i| !i.is_empty()).collect();
                if items.len() > MAX_LIST_VALUES {
                    add_error(
                        &mut errors,
                        key,
                        format!("Ensure this field has no more than {MAX_LIST_VALUES} elements."),
                    );
                    continue;
                }
                list_values += items.len();
                if list_values > MAX_REQUEST_VALUES {
                    add_error(
                        &mut errors,
                        key,
                        format!(
                            "Ensure the list filters of one request have no more than \
                             {MAX_REQUEST_VALUES} elements together."
                        ),
                    );
                    continue;
                }
                let mut values = Vec::new();
                let mut ok = true;
                for item in items {
                    match parse_value(column.kind, item, tz, key, &mut errors) {
                        Some(Parsed::V(v)) => values.push(v),
                        Some(Parsed::Skip) => {}
                        None => ok = false,
                    }
                }
                if !ok {
                    continue;
                }
                if let Kind::Fk(table) = column.kind {
                    let ids = values.iter().filter_map(value_i64).collect();
                    fk_checks.push((key.clone(), table, ids));
                }
                let expr = if values.is_empty() {
                    // `x__in=,` matches nothing; `x__not_in=,` excludes nothing.
                    if lookup == "in" {
                        Expr::cust("1 = 0")
                    } else {
                        Expr::cust("1 = 1")
                    }
                } else if lookup == "in" {
                    column_expr(&col).is_in(values)
                } else {
                    column_expr(&col)
                        .is_in(values)
                        .not()
                        .or(column_expr(&col).is_null())
                };
                cond = cond.add(expr);
            }
            "contains" | "startswith" | "endswith" | "not_contains" | "not_startswith"
            | "not_endswith" => {
                let base = lookup.trim_start_matches("not_");
                let esc = like_escape(raw);
                let pattern = match base {
                    "contains" => format!("%{esc}%"),
                    "startswith" => format!("{esc}%"),
                    _ => format!("%{esc}"),
                };
                let like = column_expr(&col).like(LikeExpr::new(pattern).escape('\\'));
                cond = cond.add(if lookup.starts_with("not_") {
                    like.not().or(column_expr(&col).is_null())
                } else {
                    like
                });
            }
            "year" | "month" | "day" | "week" | "week_day" | "hour" | "minute" | "second" => {
                match raw.trim().parse::<i64>() {
                    Ok(n) => {
                        let sql = part_sql(engine, &col, lookup);
                        cond = cond.add(Expr::cust(sql).eq(n));
                    }
                    Err(_) => add_error(&mut errors, key, NUMBER.into()),
                }
            }
            _ => {
                let Some(parsed) = parse_value(column.kind, raw, tz, key, &mut errors) else {
                    continue;
                };
                let Parsed::V(v) = parsed else { continue };
                if let Kind::Choice(codes) = column.kind
                    && matches!(lookup, "" | "not_eq")
                    && !codes.contains(&raw.as_str())
                {
                    add_error(
                        &mut errors,
                        key,
                        format!(
                            "Select a valid choice. {raw} is not one of the available choices."
                        ),
                    );
                    continue;
                }
                if let Kind::Fk(table) = column.kind
                    && let Some(id) = value_i64(&v)
                {
                    fk_checks.push((key.clone(), table, vec![id]));
                }
                let c = column_expr(&col);
                let expr = match lookup {
                    "" => c.eq(v),
                    "not_eq" => c.clone().eq(v).not().or(column_expr(&col).is_null()),
                    "lt" => c.lt(v),
                    "lte" => c.lte(v),
                    "gt" => c.gt(v),
                    "gte" => c.gte(v),
                    _ => continue,
                };
                cond = cond.add(expr);
            }
        }
    }
    if order.is_empty() {
        order.extend(default_order.iter().map(|(c, d)| (c.to_string(), *d)));
    }
    if order.is_empty() {
        order.push(("id".to_string(), false));
    } else if !order.iter().any(|(c, _)| c == "id") {
        // Ties are broken by id so pages never overlap.
        order.push(("id".to_string(), false));
    }
    let query = ListQuery {
        limit,
        offset,
        order,
        condition: cond,
        fk_checks,
    };
    (query, errors)
}

fn value_i64(v: &Value) -> Option<i64> {
    match v {
        Value::BigInt(Some(n)) => Some(*n),
        Value::Int(Some(n)) => Some(i64::from(*n)),
        _ => None,
    }
}

/// `lower(column) LIKE pattern`, through nested `IN (SELECT id ...)` for related fields.
fn search_condition(field: &SearchField, pattern: &str) -> Expr {
    // Non-text columns (status codes, ids) are searched through their text form.
    let text = Func::cast_as(column_expr(field.column), sea_query::Alias::new("TEXT"));
    let mut expr =
        Expr::expr(Func::lower(text)).like(LikeExpr::new(pattern.to_string()).escape('\\'));
    for (fk, table) in field.hops.iter().rev() {
        let mut sub = sea_query::Query::select();
        sub.column(sea_query::Alias::new("id"))
            .from(sea_query::Alias::new(*table))
            .and_where(expr);
        expr = column_expr(fk).in_subquery(sub);
    }
    expr
}

impl ListQuery {
    /// Applies ordering and the page window to a select over the resource's table.
    pub fn apply_page(&self, select: &mut SelectStatement) {
        for (col, desc) in &self.order {
            select.order_by(
                sea_query::Alias::new(col.as_str()),
                if *desc { Order::Desc } else { Order::Asc },
            );
        }
        select.limit(self.limit).offset(self.offset);
    }

    /// Adds an error for each foreign-key filter naming an id that does not exist.
    async fn foreign_key_errors(
        &self,
        db: &crate::store::Db,
        errors: &mut Map<String, Json>,
    ) -> Result<(), ApiError> {
        for (param, table, ids) in &self.fk_checks {
            if ids.is_empty() {
                continue;
            }
            let mut unique = ids.clone();
            unique.sort_unstable();
            unique.dedup();
            let mut q = sea_query::Query::select();
            q.expr(Expr::cust("COUNT(*)"))
                .from(sea_query::Alias::new(*table))
                .and_where(column_expr("id").is_in(unique.clone()));
            let found: i64 = crate::store::fetch_scalar(db, &q).await?;
            if found != unique.len() as i64 {
                add_error(
                    errors,
                    param,
                    "Select a valid choice. That choice is not one of the available choices."
                        .into(),
                );
            }
        }
        Ok(())
    }
}

/// The page envelope with absolute `next`/`previous` links (domain.md §2.1).
/// A page as the API answers it. The results are serialized as they are, straight into the
/// response body: no `Value` tree is built for them.
#[derive(Debug, serde::Serialize)]
pub struct Envelope<T> {
    pub count: i64,
    pub next: Json,
    pub previous: Json,
    pub results: T,
}

pub fn envelope<T: serde::Serialize>(
    base_url: &str,
    path: &str,
    params: &[(String, String)],
    q: &ListQuery,
    count: i64,
    results: T,
) -> Envelope<T> {
    let link = |offset: Option<u64>| {
        let mut pairs: Vec<(String, String)> = params
            .iter()
            .filter(|(k, _)| k != "_limit" && k != "_offset")
            .cloned()
            .collect();
        pairs.push(("_limit".into(), q.limit.to_string()));
        if let Some(o) = offset {
            pairs.push(("_offset".into(), o.to_string()));
        }
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .finish();
        Json::String(format!("{base_url}{path}?{query}"))
    };
    let count_u = u64::try_from(count).unwrap_or(0);
    let next = if q.offset + q.limit < count_u {
        link(Some(q.offset + q.limit))
    } else {
        Json::Null
    };
    let previous = if q.offset == 0 {
        Json::Null
    } else if q.offset <= q.limit {
        link(None)
    } else {
        link(Some(q.offset - q.limit))
    };
    Envelope {
        count,
        next,
        previous,
        results,
    }
}

/// The query string as decoded pairs, in order.
pub fn query_pairs(req: &salvo::Request) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// A page being served: what `envelope` needs besides the results.
pub struct Page {
    pub count: i64,
    query: ListQuery,
    params: Vec<(String, String)>,
    base_url: String,
    path: String,
}

impl Page {
    pub fn envelope<T: serde::Serialize>(&self, results: T) -> Envelope<T> {
        envelope(
            &self.base_url,
            &self.path,
            &self.params,
            &self.query,
            self.count,
            results,
        )
    }
}

/// A collection request of an authenticated caller: the page of rows `scope` lets the
/// caller see, with the state and the caller for representing them.
pub async fn caller_page<R: crate::store::FetchRow>(
    req: &salvo::Request,
    depot: &salvo::Depot,
    spec: &ListSpec,
    columns: &[&str],
    scope: fn(&mut SelectStatement, &super::Caller),
) -> Result<CallerPage<R>, ApiError> {
    let (app, caller) = super::context(depot)?;
    let caller_scope = |q: &mut SelectStatement| scope(q, &caller);
    let (rows, page) = page::<R>(req, &app.db, app.timezone, spec, columns, &caller_scope).await?;
    Ok(CallerPage {
        app,
        caller,
        rows,
        page,
    })
}

/// What [`caller_page`] returns.
pub struct CallerPage<R> {
    pub app: std::sync::Arc<crate::web::AppState>,
    pub caller: super::Caller,
    pub rows: Vec<R>,
    pub page: Page,
}

/// Runs a collection request: parses the query, applies the caller's `scope` to the count
/// and the page, and returns the page's rows (two queries).
pub async fn page<R: crate::store::FetchRow>(
    req: &salvo::Request,
    db: &crate::store::Db,
    tz: chrono_tz::Tz,
    spec: &ListSpec,
    columns: &[&str],
    scope: &(dyn Fn(&mut SelectStatement) + Send + Sync),
) -> Result<(Vec<R>, Page), ApiError> {
    page_ordered(req, db, tz, spec, columns, scope, &[]).await
}

/// `page` with a default order other than ascending id.
pub async fn page_ordered<R: crate::store::FetchRow>(
    req: &salvo::Request,
    db: &crate::store::Db,
    tz: chrono_tz::Tz,
    spec: &ListSpec,
    columns: &[&str],
    scope: &(dyn Fn(&mut SelectStatement) + Send + Sync),
    default_order: &[(&str, bool)],
) -> Result<(Vec<R>, Page), ApiError> {
    let mut page_q = sea_query::Query::select();
    page_q
        .columns(columns.iter().map(|c| sea_query::Alias::new(*c)))
        .from(sea_query::Alias::new(spec.table));
    page_from(req, db, tz, spec, page_q, scope, default_order).await
}

/// `page_ordered` over a prepared select of the resource's table (columns and computed
/// expressions already chosen): the query's conditions, the scope and the window are added.
pub async fn page_from<R: crate::store::FetchRow>(
    req: &salvo::Request,
    db: &crate::store::Db,
    tz: chrono_tz::Tz,
    spec: &ListSpec,
    mut page_q: SelectStatement,
    scope: &(dyn Fn(&mut SelectStatement) + Send + Sync),
    default_order: &[(&str, bool)],
) -> Result<(Vec<R>, Page), ApiError> {
    let params = query_pairs(req);
    let query = parse_checked(&params, spec, db, tz, default_order).await?;
    let mut count_q = sea_query::Query::select();
    count_q
        .expr(Expr::cust("COUNT(*)"))
        .from(sea_query::Alias::new(spec.table))
        .cond_where(query.condition.clone());
    scope(&mut count_q);
    let count: i64 = crate::store::fetch_scalar(db, &count_q).await?;
    page_q.cond_where(query.condition.clone());
    scope(&mut page_q);
    query.apply_page(&mut page_q);
    let rows: Vec<R> = crate::store::fetch_all(db, &page_q).await?;
    let page = Page {
        count,
        query,
        params,
        base_url: crate::web::api::base_url(req),
        path: req.uri().path().to_string(),
    };
    Ok((rows, page))
}

#[cfg(test)]
#[path = "list_props.rs"]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_terms_split_on_space_and_comma_and_keep_quoted_phrases() {
        assert_eq!(search_terms("a b,c"), vec!["a", "b", "c"]);
        assert_eq!(search_terms("\"big team\" x"), vec!["big team", "x"]);
        assert_eq!(search_terms("'o ne',,"), vec!["o ne"]);
        assert!(search_terms("  , ").is_empty());
    }

    #[test]
    fn datetimes_accept_iso_and_bare_dates() {
        let tz = chrono_tz::UTC;
        assert!(parse_datetime("2026-01-02T03:04:05Z", tz).is_some());
        assert!(parse_datetime("2026-01-02T03:04:05.123456+02:00", tz).is_some());
        assert_eq!(
            parse_datetime("2026-01-02", tz).map(|d| d.to_rfc3339()),
            Some("2026-01-02T00:00:00+00:00".into())
        );
        assert!(parse_datetime("yesterday", tz).is_none());
    }
}
