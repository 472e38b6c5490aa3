//! Canonical request paths. The router matches a normalised path (empty segments dropped,
//! segments percent-decoded), so a spelling such as `//users/users/` would otherwise reach
//! the same handler as `/users/users/`. Keystone answers such spellings as upstream does
//! (Django resolves the raw path and gives 404 for `//users/users/`, dot segments and
//! backslashes), before any redirect or handler runs; a percent-encoded ordinary character
//! (`/%75sers/users/`) is decoded, as Django does, and reaches its route's full checks.

use percent_encoding::percent_decode;
use std::borrow::Cow;

/// Whether the raw path of a request is one the router may see. `Err` carries the reason
/// (for the debug log).
pub fn check(path: &str) -> Result<(), &'static str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("does not start with a slash");
    };
    if path.contains('\\') {
        return Err("contains a backslash");
    }
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() {
            // Only the segment after the trailing slash may be empty.
            if segments.peek().is_none() {
                continue;
            }
            return Err("has an empty segment");
        }
        let Some(decoded) = percent_decode_strict(segment.as_bytes()) else {
            return Err("has a malformed percent-escape");
        };
        let Ok(decoded) = std::str::from_utf8(&decoded) else {
            return Err("is not UTF-8 once decoded");
        };
        if decoded == "." || decoded == ".." {
            return Err("has a dot segment");
        }
        if decoded
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
        {
            return Err("has an encoded slash, backslash or control character");
        }
    }
    Ok(())
}

/// Percent-decodes `bytes`, or `None` unless every `%` starts a two-digit hex escape (the
/// crate's decoder keeps a malformed escape as it is).
pub fn percent_decode_strict(bytes: &[u8]) -> Option<Cow<'_, [u8]>> {
    let decoded: Cow<'_, [u8]> = percent_decode(bytes).into();
    // Each well-formed escape turns its three bytes into one; a malformed `%` stays one byte.
    let escapes = bytes.iter().filter(|b| **b == b'%').count();
    (decoded.len() + 2 * escapes == bytes.len()).then_some(decoded)
}

#[cfg(test)]
mod tests {
    use super::{check, percent_decode_strict};

    #[test]
    fn strict_decoding_refuses_malformed_escapes() {
        let decode = |s: &str| percent_decode_strict(s.as_bytes()).map(|d| d.into_owned());
        assert_eq!(decode("a%2Fb%20c"), Some(b"a/b c".to_vec()));
        assert_eq!(decode("%C3%A9"), Some("é".as_bytes().to_vec()));
        assert_eq!(decode("%25zz"), Some(b"%zz".to_vec()));
        assert_eq!(decode("plain"), Some(b"plain".to_vec()));
        for malformed in ["%", "%4", "%zz", "%%41", "a%+1", "%4g"] {
            assert_eq!(decode(malformed), None, "{malformed}");
        }
    }

    #[test]
    fn canonical_paths_pass() {
        for p in [
            "/",
            "/users/users/",
            "/users/users/12/",
            "/users/users",
            "/%75sers/users/",
            "/media/allocations/report%20v2.pdf/",
            "/stats/requests/",
        ] {
            assert_eq!(check(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn non_canonical_paths_are_refused() {
        for p in [
            "",
            "users/users/",
            "//users/users/",
            "/users//users/",
            "//evil.example",
            "/users/./users/",
            "/users/../users/users/",
            "/users/%2e%2e/users/",
            "/users/%2E/users/",
            "/users%2fusers/",
            "/users%5Cusers/",
            "/users\\users/",
            "/\\evil.example/",
            "/users/%00/",
            "/users/%0a/",
            "/users/%zz/",
            "/users/%4/",
            "/users/%ff/",
        ] {
            assert!(check(p).is_err(), "{p}");
        }
    }
}
