//! Notification preferences: the expiry and usage thresholds a user is warned at (domain.md
//! §3.7.2), read tolerantly from their stored JSON.

use serde_json::Value;

/// Days before expiry at which a user is warned when they have set nothing.
pub const DEFAULT_THRESHOLDS: [i64; 2] = [30, 14];

/// Tolerant reader of `request_expiry_thresholds`: only a list of integers counts.
pub fn thresholds_of(v: &Value) -> Vec<i64> {
    match v {
        Value::Array(items) => {
            let ints: Option<Vec<i64>> = items.iter().map(Value::as_i64).collect();
            ints.unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

/// The smallest threshold `>= days`, if any (§3.7.2).
pub fn next_expiry_threshold(thresholds: &[i64], days: i64) -> Option<i64> {
    thresholds.iter().copied().filter(|t| *t >= days).min()
}

/// The largest threshold `<= percent`, if any (§3.7.2).
pub fn usage_threshold(thresholds: &[i64], percent: i64) -> Option<i64> {
    thresholds.iter().copied().filter(|t| *t <= percent).max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn thresholds_are_read_tolerantly() {
        assert_eq!(thresholds_of(&json!([30, 14])), vec![30, 14]);
        assert!(thresholds_of(&json!("abc")).is_empty());
        assert!(thresholds_of(&json!([30, "x"])).is_empty());
        assert_eq!(next_expiry_threshold(&[30, 14], 10), Some(14));
        assert_eq!(next_expiry_threshold(&[30, 14], 20), Some(30));
        assert_eq!(next_expiry_threshold(&[30, 14], 31), None);
        assert_eq!(usage_threshold(&[30, 14], 20), Some(14));
    }
}
