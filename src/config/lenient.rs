//! Deserializers for the value syntax of spec/operations.md §1.1, shared by TOML values and
//! environment strings: every setting may arrive as its native TOML type or as text.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;

const TRUE_WORDS: [&str; 6] = ["true", "1", "yes", "y", "on", "ok"];
const FALSE_WORDS: [&str; 4] = ["false", "0", "no", "n"];

/// Parses the accepted boolean spellings (case-insensitive); anything else is an error,
/// unlike upstream, which reads unknown words as false.
pub fn parse_bool(text: &str) -> Option<bool> {
    let t = text.trim().to_ascii_lowercase();
    if TRUE_WORDS.contains(&t.as_str()) {
        Some(true)
    } else if FALSE_WORDS.contains(&t.as_str()) || t == "off" {
        Some(false)
    } else {
        None
    }
}

/// Splits a comma-separated list, trimming items and dropping empty ones.
pub fn split_list(text: &str) -> Vec<String> {
    let t = text.trim();
    if t.starts_with('[')
        && t.ends_with(']')
        && let Ok(items) = toml::from_str::<BTreeMap<String, Vec<String>>>(&format!("v = {t}"))
        && let Some(v) = items.get("v")
    {
        return v
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
    }
    t.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A setting's type with its lenient reading: the deserializer of this module that fits it.
/// [`value`] reads any of them, so a settings field needs no per-type attribute.
pub trait Lenient: Sized {
    fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
}

/// The lenient reading of a setting of type `T` (`#[serde(deserialize_with = ...)]`).
pub fn value<'de, D: Deserializer<'de>, T: Lenient>(d: D) -> Result<T, D::Error> {
    T::read(d)
}

macro_rules! lenient {
    ($($t:ty => $read:expr),* $(,)?) => {
        $(impl Lenient for $t {
            fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $read(d)
            }
        })*
    };
}

lenient! {
    bool => bool,
    i64 => int,
    f64 => float,
    u16 => uint,
    u32 => uint,
    u64 => uint,
    String => string,
    Option<String> => opt_string,
    Vec<String> => list,
    BTreeMap<String, String> => map,
}

pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a boolean (true/false, yes/no, on/off, 1/0)")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
            match v {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(E::custom(format!(
                    "invalid boolean {v}: expected true/false, yes/no, on/off or 1/0"
                ))),
            }
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
            self.visit_i64(v as i64)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
            parse_bool(v).ok_or_else(|| {
                E::custom(format!(
                    "invalid boolean \"{v}\": expected true/false, yes/no, on/off or 1/0"
                ))
            })
        }
    }
    d.deserialize_any(V)
}

fn int_from_str<E: de::Error>(v: &str) -> Result<i64, E> {
    let t = v.trim();
    if let Ok(n) = t.parse::<i64>() {
        return Ok(n);
    }
    // Upstream writes some integral defaults as floats ("2621440.0").
    if let Ok(f) = t.parse::<f64>()
        && f.fract() == 0.0
        && f.is_finite()
        && f.abs() < 9.0e15
    {
        return Ok(f as i64);
    }
    Err(E::custom(format!("invalid integer \"{v}\"")))
}

struct IntVisitor;
impl Visitor<'_> for IntVisitor {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom(format!("integer {v} is too large")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        if v.fract() == 0.0 && v.abs() < 9.0e15 {
            Ok(v as i64)
        } else {
            Err(E::custom(format!("invalid integer {v}")))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        int_from_str(v)
    }
}

pub fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(IntVisitor)
}

pub fn float<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = f64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            v.trim()
                .parse::<f64>()
                .map_err(|_| E::custom(format!("invalid number \"{v}\"")))
        }
    }
    d.deserialize_any(V)
}

/// A non-negative integer that fits the target type.
pub fn uint<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64>,
{
    let n = d.deserialize_any(IntVisitor)?;
    T::try_from(n).map_err(|_| {
        de::Error::custom(format!(
            "invalid value {n}: expected a non-negative integer in range"
        ))
    })
}

pub fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list (array, or comma-separated text)")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(split_list(v))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element::<ScalarText>()? {
                let t = item.0.trim().to_string();
                if !t.is_empty() {
                    out.push(t);
                }
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// A string, or a number/bool written where text was meant (env values are all text, but a
/// TOML list may contain `[9101, 9102]`).
struct ScalarText(String);
impl<'de> de::Deserialize<'de> for ScalarText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ScalarText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A map field → text: a table, or `k1=v1,k2=v2` text.
pub fn map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map (table, or k1=v1,k2=v2 text)")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            let mut out = BTreeMap::new();
            for item in split_list(v) {
                let parts: Vec<&str> = item.split('=').collect();
                if parts.len() != 2 || parts[0].trim().is_empty() {
                    return Err(E::custom(format!(
                        "invalid map item \"{item}\": expected exactly one '=' as in key=value"
                    )));
                }
                out.insert(parts[0].trim().to_string(), parts[1].trim().to_string());
            }
            Ok(out)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = m.next_entry::<String, ScalarText>()? {
                out.insert(k.to_lowercase(), v.0);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// Text for a string setting; numbers and booleans are accepted and kept as written, since an
/// environment value such as `DB_PASSWORD=1234` is still a password.
pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    de::Deserialize::deserialize(d).map(|s: ScalarText| s.0)
}

pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s: Option<ScalarText> = de::Deserialize::deserialize(d)?;
    Ok(s.map(|s| s.0).filter(|s| !s.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_accept_the_documented_words_only() {
        for t in ["true", "TRUE", "1", "yes", "Y", "on", "ok"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for t in ["false", "0", "No", "n", "OFF"] {
            assert_eq!(parse_bool(t), Some(false), "{t}");
        }
        for t in ["", "maybe", "2", "tru"] {
            assert_eq!(parse_bool(t), None, "{t}");
        }
    }

    #[test]
    fn lists_are_trimmed_and_empty_items_dropped() {
        assert_eq!(
            split_list("localhost, 127.0.0.1,,"),
            vec!["localhost", "127.0.0.1"]
        );
        assert_eq!(split_list(r#"["a", " b "]"#), vec!["a", "b"]);
        assert!(split_list("  ").is_empty());
    }
}
