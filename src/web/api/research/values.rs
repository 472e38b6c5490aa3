//! Value parsers the research resources need beyond `validation::Validator`: DRF's `DateField`
//! and `DecimalField(max_digits=14, decimal_places=2)` with their exact messages, and the
//! rendering of decimals as strings with two places (domain.md §1.5, §3.6.1).

use crate::config::Engine;
use crate::domain::validation::{NOT_NULL, REQUIRED, Validator};
use chrono::NaiveDate;
use serde_json::{Map, Value};

pub const DATE_FORMAT: &str =
    "Date has wrong format. Use one of these formats instead: YYYY-MM-DD.";
pub const NUMBER: &str = "A valid number is required.";

/// Django's `parse_date`: ISO `YYYY-MM-DD` (also `YYYYMMDD`) or `YYYY-M-D`.
pub fn parse_date(s: &str) -> Option<NaiveDate> {
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        // chrono accepts 1-digit fields and signs; keep Django's shape: 4-digit year.
        let year = s.split('-').next().unwrap_or("");
        if year.len() == 4 && year.chars().all(|c| c.is_ascii_digit()) {
            let rest: Vec<&str> = s.split('-').skip(1).collect();
            if rest.len() == 2
                && rest
                    .iter()
                    .all(|p| (1..=2).contains(&p.len()) && p.chars().all(|c| c.is_ascii_digit()))
            {
                return Some(d);
            }
        }
    }
    if s.len() == 8 && s.chars().all(|c| c.is_ascii_digit()) {
        return NaiveDate::parse_from_str(s, "%Y%m%d").ok();
    }
    None
}

/// DRF's `DecimalField(max_digits=14, decimal_places=2)`: returns the value in cents.
pub fn parse_amount(raw: &str) -> Result<i64, String> {
    let s = raw.trim();
    if s.chars().count() > 1000 {
        return Err("String value too large.".into());
    }
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((i, f)) => (i, f),
        None => (mantissa, ""),
    };
    let digits_ok = |p: &str| p.chars().all(|c| c.is_ascii_digit());
    if (int_part.is_empty() && frac_part.is_empty())
        || !digits_ok(int_part)
        || !digits_ok(frac_part)
    {
        return Err(NUMBER.into());
    }
    let exponent: i64 = match exp {
        None => 0,
        Some(e) => {
            let e_digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if e_digits.is_empty() || !digits_ok(e_digits) || e_digits.len() > 6 {
                return Err(NUMBER.into());
            }
            e.parse().map_err(|_| NUMBER.to_string())?
        }
    };
    let exponent = exponent - frac_part.len() as i64;
    let all: String = format!("{int_part}{frac_part}");
    let trimmed = all.trim_start_matches('0');
    let digits = if trimmed.is_empty() { "0" } else { trimmed };
    let n = digits.len() as i64;
    // Python's Decimal.as_tuple() arithmetic, as in DRF's validate_precision.
    let (total, whole, places) = if exponent >= 0 {
        (n + exponent, n + exponent, 0)
    } else if n > -exponent {
        (n, n + exponent, -exponent)
    } else {
        (-exponent, 0, -exponent)
    };
    if total > 14 {
        return Err("Ensure that there are no more than 14 digits in total.".into());
    }
    if places > 2 {
        return Err("Ensure that there are no more than 2 decimal places.".into());
    }
    if whole > 12 {
        return Err(
            "Ensure that there are no more than 12 digits before the decimal point.".into(),
        );
    }
    let coefficient: i64 = digits.parse().map_err(|_| NUMBER.to_string())?;
    let cents = coefficient * 10_i64.pow((exponent + 2) as u32);
    Ok(if negative { -cents } else { cents })
}

/// Cents as a decimal string with exactly two places.
pub fn render_cents(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// Cents of a stored amount as read back (`"1234.50"`, `"-3.00"`).
pub fn cents_of(stored: &str) -> i64 {
    parse_amount(stored).unwrap_or(0)
}

/// `numerator / denominator` rounded half to even (denominator > 0).
pub fn div_half_even(numerator: i128, denominator: i128) -> i128 {
    let q = numerator.div_euclid(denominator);
    let r = numerator.rem_euclid(denominator);
    match (2 * r).cmp(&denominator) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => {
            if q % 2 == 0 {
                q
            } else {
                q + 1
            }
        }
    }
}

/// SQL reading the grant amount as text with two decimals.
pub fn amount_text_sql(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => "CAST(amount AS TEXT)",
        Engine::Sqlite => "printf('%.2f', amount)",
    }
}

/// An empty form value (forms cannot send null).
fn is_blank_form(form: bool, v: &Value) -> bool {
    form && v.as_str() == Some("")
}

/// A date field. `Some(None)` = explicit null; `None` = absent or invalid.
pub fn date(
    v: &mut Validator,
    body: &Map<String, Value>,
    name: &str,
    required: bool,
    nullable: bool,
    partial: bool,
    form: bool,
) -> Option<Option<NaiveDate>> {
    let Some(raw) = body.get(name) else {
        if required && !partial {
            v.error(name, REQUIRED);
        }
        return None;
    };
    // Form encodings send an empty value for "no date" on nullable fields.
    if raw.is_null() || (nullable && is_blank_form(form, raw)) {
        if nullable {
            return Some(None);
        }
        v.error(name, NOT_NULL);
        return None;
    }
    match raw.as_str().and_then(parse_date) {
        Some(d) => Some(Some(d)),
        None => {
            v.error(name, DATE_FORMAT);
            None
        }
    }
}

/// The grant amount: cents, or `None` when absent or invalid.
pub fn amount(
    v: &mut Validator,
    body: &Map<String, Value>,
    name: &str,
    partial: bool,
) -> Option<i64> {
    let Some(raw) = body.get(name) else {
        if !partial {
            v.error(name, REQUIRED);
        }
        return None;
    };
    let text = match raw {
        Value::Null => {
            v.error(name, NOT_NULL);
            return None;
        }
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => {
            v.error(name, NUMBER);
            return None;
        }
    };
    match parse_amount(&text) {
        Ok(c) => Some(c),
        Err(msg) => {
            v.error(name, msg);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_follow_drf_precision_rules() {
        assert_eq!(parse_amount("1234.5"), Ok(123450));
        assert_eq!(parse_amount(" -3 "), Ok(-300));
        assert_eq!(parse_amount("1E+2"), Ok(10000));
        assert_eq!(parse_amount("0.00"), Ok(0));
        assert_eq!(parse_amount("999999999999.99"), Ok(99999999999999));
        assert_eq!(
            parse_amount("1.001"),
            Err("Ensure that there are no more than 2 decimal places.".into())
        );
        assert_eq!(
            parse_amount("1.000"),
            Err("Ensure that there are no more than 2 decimal places.".into())
        );
        assert_eq!(
            parse_amount("123456789012345"),
            Err("Ensure that there are no more than 14 digits in total.".into())
        );
        assert_eq!(
            parse_amount("1234567890123.4"),
            Err("Ensure that there are no more than 12 digits before the decimal point.".into())
        );
        for bad in ["", "abc", "1.2.3", "NaN", "Infinity", "1e", "--1", "."] {
            assert_eq!(parse_amount(bad), Err(NUMBER.into()), "{bad}");
        }
    }

    #[test]
    fn cents_render_with_two_places_and_average_rounds_half_even() {
        assert_eq!(render_cents(123450), "1234.50");
        assert_eq!(render_cents(-5), "-0.05");
        assert_eq!(render_cents(0), "0.00");
        // 1000.10 / 4 = 250.025 -> 250.02
        assert_eq!(div_half_even(100010, 4), 25002);
        assert_eq!(div_half_even(100030, 4), 25008); // 250.075 -> 250.08
        assert_eq!(div_half_even(-100010, 4), -25002);
    }

    #[test]
    fn dates_accept_django_shapes() {
        assert!(parse_date("2024-01-05").is_some());
        assert!(parse_date("2024-1-5").is_some());
        assert!(parse_date("20240105").is_some());
        for bad in [
            "2024-02-30",
            "24-01-05",
            "2024/01/05",
            "2024-01-05T00:00",
            "",
        ] {
            assert!(parse_date(bad).is_none(), "{bad}");
        }
    }
}
