//! What templates written for upstream's Jinja2 expect beyond MiniJinja (operations.md §2.10
//! step 2): Python `date`/`datetime` values with `strftime`, and the printf operator
//! `'%.0f' % value`, which MiniJinja lacks and which is rewritten into its `format` filter.

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use minijinja::value::{Object, Value};
use minijinja::{ErrorKind, State};
use std::fmt::Write as _;
use std::sync::Arc;

/// A date as templates see it: renders as `YYYY-MM-DD`, has `strftime`, `isoformat` and
/// `year`/`month`/`day` like a Python `date`.
#[derive(Debug)]
struct PyDate(NaiveDate);

/// A UTC datetime as templates see it: renders like Python's `str(datetime)`.
#[derive(Debug)]
struct PyDateTime(DateTime<Utc>);

/// A date value for a template context (`None` becomes `none`).
pub fn date_value(d: Option<NaiveDate>) -> Value {
    d.map(|d| Value::from_object(PyDate(d)))
        .unwrap_or(Value::from(()))
}

/// A datetime value for a template context (`None` becomes `none`).
pub fn datetime_value(d: Option<DateTime<Utc>>) -> Value {
    d.map(|d| Value::from_object(PyDateTime(d)))
        .unwrap_or(Value::from(()))
}

/// A string value that may be null.
pub fn opt_str(s: Option<&str>) -> Value {
    s.map(Value::from).unwrap_or(Value::from(()))
}

/// `strftime` with chrono's Python-compatible specifiers; an unknown specifier is a template
/// error, never a panic.
fn strftime<T>(value: &T, args: &[Value]) -> Result<Value, minijinja::Error>
where
    T: FormatWith,
{
    let fmt = match args {
        [f] => f.as_str().ok_or_else(|| {
            minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "strftime() argument must be str",
            )
        })?,
        _ => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "strftime() takes exactly one argument",
            ));
        }
    };
    let items: Vec<chrono::format::Item> = chrono::format::StrftimeItems::new(fmt).collect();
    if items.contains(&chrono::format::Item::Error) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("invalid strftime format {fmt:?}"),
        ));
    }
    let mut out = String::new();
    value.write_with(&mut out, &items).map_err(|_| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("invalid strftime format {fmt:?}"),
        )
    })?;
    Ok(Value::from(out))
}

trait FormatWith {
    fn write_with(&self, out: &mut String, items: &[chrono::format::Item]) -> std::fmt::Result;
}

impl FormatWith for NaiveDate {
    fn write_with(&self, out: &mut String, items: &[chrono::format::Item]) -> std::fmt::Result {
        write!(out, "{}", self.format_with_items(items.iter()))
    }
}

impl FormatWith for DateTime<Utc> {
    fn write_with(&self, out: &mut String, items: &[chrono::format::Item]) -> std::fmt::Result {
        write!(out, "{}", self.format_with_items(items.iter()))
    }
}

fn unknown_method(kind: &str, method: &str) -> minijinja::Error {
    minijinja::Error::new(
        ErrorKind::UnknownMethod,
        format!("{kind} has no method named {method}"),
    )
}

impl Object for PyDate {
    fn is_true(self: &Arc<Self>) -> bool {
        true
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "year" => Some(Value::from(self.0.year())),
            "month" => Some(Value::from(self.0.month())),
            "day" => Some(Value::from(self.0.day())),
            _ => None,
        }
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &mut State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, minijinja::Error> {
        match method {
            "strftime" => strftime(&self.0, args),
            "isoformat" => Ok(Value::from(self.0.format("%Y-%m-%d").to_string())),
            _ => Err(unknown_method("date", method)),
        }
    }

    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.format("%Y-%m-%d"))
    }
}

impl PyDateTime {
    /// Python's `str(datetime)`: microseconds only when non-zero, `+00:00` offset.
    fn python_str(&self, sep: char) -> String {
        let d = &self.0;
        let micros = d.timestamp_subsec_micros();
        let frac = if micros == 0 {
            String::new()
        } else {
            format!(".{micros:06}")
        };
        format!(
            "{}{sep}{:02}:{:02}:{:02}{frac}+00:00",
            d.format("%Y-%m-%d"),
            d.hour(),
            d.minute(),
            d.second()
        )
    }
}

impl Object for PyDateTime {
    fn is_true(self: &Arc<Self>) -> bool {
        true
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let d = &self.0;
        match key.as_str()? {
            "year" => Some(Value::from(d.year())),
            "month" => Some(Value::from(d.month())),
            "day" => Some(Value::from(d.day())),
            "hour" => Some(Value::from(d.hour())),
            "minute" => Some(Value::from(d.minute())),
            "second" => Some(Value::from(d.second())),
            _ => None,
        }
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &mut State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, minijinja::Error> {
        match method {
            "strftime" => strftime(&self.0, args),
            "isoformat" => Ok(Value::from(self.python_str('T'))),
            "date" => Ok(Value::from_object(PyDate(self.0.date_naive()))),
            _ => Err(unknown_method("datetime", method)),
        }
    }

    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.python_str(' '))
    }
}

/// Rewrites Python's printf operator `'<format>' % operand` inside template expressions into
/// minijinja's `('<format>'|format(operand))`, which MiniJinja lacks as an operator. A
/// parenthesised tuple operand becomes the argument list. Everything else passes through
/// unchanged; templates without the idiom come out byte-identical.
pub fn rewrite_percent_format(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut copied = 0;
    let mut i = 0;
    while i + 1 < b.len() {
        match (b[i], b[i + 1]) {
            (b'{', b'#') => {
                i = find_from(src, i + 2, "#}").map_or(b.len(), |p| p + 2);
            }
            (b'{', b'{') | (b'{', b'%') => {
                let close = if b[i + 1] == b'{' { b'}' } else { b'%' };
                let start = i + 2;
                // `{% raw %}…{% endraw %}` is literal text.
                if close == b'%' && is_raw_open(&src[start..]) {
                    i = find_endraw(src, start).unwrap_or(b.len());
                    continue;
                }
                let (end, edits) = scan_expression(src, start, close);
                for (from, to, replacement) in edits {
                    out.push_str(&src[copied..from]);
                    out.push_str(&replacement);
                    copied = to;
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    out.push_str(&src[copied..]);
    out
}

fn find_from(src: &str, from: usize, needle: &str) -> Option<usize> {
    src.get(from..)?.find(needle).map(|p| p + from)
}

fn is_raw_open(rest: &str) -> bool {
    let r = rest.trim_start_matches(['-', '+']).trim_start();
    r.starts_with("raw") && {
        let after = r[3..].trim_start().trim_start_matches(['-', '+']);
        after.starts_with("%}")
    }
}

/// The index just past the `%}` closing the `{% endraw %}` after `from`.
fn find_endraw(src: &str, from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(p) = find_from(src, at, "{%") {
        let rest = src[p + 2..].trim_start_matches(['-', '+']).trim_start();
        if rest.starts_with("endraw") {
            return find_from(src, p, "%}").map(|e| e + 2);
        }
        at = p + 2;
    }
    None
}

/// Scans one `{{ … }}` / `{% … %}` body from `start`; returns the index after its closing
/// delimiter and the `%`-format rewrites found in it as (from, to, replacement).
fn scan_expression(src: &str, start: usize, close: u8) -> (usize, Vec<(usize, usize, String)>) {
    let b = src.as_bytes();
    let mut edits = Vec::new();
    let mut i = start;
    while i < b.len() {
        let c = b[i];
        if c == close && b.get(i + 1) == Some(&b'}') {
            return (i + 2, edits);
        }
        if c == b'\'' || c == b'"' {
            let lit_end = skip_string(b, i);
            let mut j = skip_ws(b, lit_end);
            if b.get(j) == Some(&b'%')
                && !matches!(b.get(j + 1), Some(b'}') | Some(b'='))
                && let Some(op_end) = operand_end(b, skip_ws(b, j + 1))
            {
                j = skip_ws(b, j + 1);
                let operand = src[j..op_end].trim();
                let args = tuple_items(operand).unwrap_or_else(|| operand.to_string());
                edits.push((i, op_end, format!("({}|format({args}))", &src[i..lit_end])));
                i = op_end;
                continue;
            }
            i = lit_end;
            continue;
        }
        i += 1;
    }
    (b.len(), edits)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The index after the string literal starting at `i` (backslash escapes honoured).
fn skip_string(b: &[u8], i: usize) -> usize {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            c if c == quote => return j + 1,
            _ => j += 1,
        }
    }
    b.len()
}

/// The index after the bracket group opening at `i`, strings inside skipped.
fn skip_group(b: &[u8], i: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut j = i;
    while j < b.len() {
        match b[j] {
            b'\'' | b'"' => {
                j = skip_string(b, j);
                continue;
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(j + 1);
                }
            }
            _ => {}
        }
        j += 1;
    }
    None
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The end of the right operand of `%`: a unary expression with its postfix chain
/// (attributes, subscripts, calls) and filters, as Jinja binds them tighter than `%`.
fn operand_end(b: &[u8], mut i: usize) -> Option<usize> {
    if matches!(b.get(i), Some(b'-') | Some(b'+')) {
        i = skip_ws(b, i + 1);
    }
    let c = *b.get(i)?;
    i = match c {
        b'(' | b'[' | b'{' => skip_group(b, i)?,
        b'\'' | b'"' => skip_string(b, i),
        c if is_ident(c) => {
            let mut j = i;
            while j < b.len() && (is_ident(b[j]) || (b[j] == b'.' && c.is_ascii_digit())) {
                j += 1;
            }
            j
        }
        _ => return None,
    };
    loop {
        match b.get(i) {
            Some(b'.') if b.get(i + 1).is_some_and(|c| is_ident(*c)) => {
                i += 1;
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
            }
            Some(b'[') | Some(b'(') => i = skip_group(b, i)?,
            _ => {
                let j = skip_ws(b, i);
                if b.get(j) == Some(&b'|') && b.get(j + 1) != Some(&b'|') {
                    let mut k = skip_ws(b, j + 1);
                    let name_start = k;
                    while k < b.len() && (is_ident(b[k]) || b[k] == b'.') {
                        k += 1;
                    }
                    if k == name_start {
                        return Some(i);
                    }
                    i = if b.get(k) == Some(&b'(') {
                        skip_group(b, k)?
                    } else {
                        k
                    };
                } else {
                    return Some(i);
                }
            }
        }
    }
}

/// The items of a parenthesised tuple `(a, b)` as an argument list `a, b`; `None` when the
/// operand is not a tuple (a plain parenthesised expression stays one argument).
fn tuple_items(operand: &str) -> Option<String> {
    let b = operand.as_bytes();
    if b.first() != Some(&b'(') || skip_group(b, 0) != Some(b.len()) {
        return None;
    }
    let inner = &operand[1..operand.len() - 1];
    let ib = inner.as_bytes();
    let mut j = 0;
    let mut comma = false;
    while j < ib.len() {
        match ib[j] {
            b'\'' | b'"' => {
                j = skip_string(ib, j);
                continue;
            }
            b'(' | b'[' | b'{' => {
                j = skip_group(ib, j)?;
                continue;
            }
            b',' => comma = true,
            _ => {}
        }
        j += 1;
    }
    comma.then(|| inner.trim().trim_end_matches(',').to_string())
}
