//! Canonical request paths. The router matches a normalised path (empty segments dropped,
//! segments percent-decoded), so a spelling such as `//users/users/` would otherwise reach
//! the same handler as `/users/users/`. Keystone answers such spellings as upstream does
//! (Django resolves the raw path and gives 404 for `//users/users/`, dot segments and
//! backslashes), before any redirect or handler runs; a percent-encoded ordinary character
//! (`/%75sers/users/`) is decoded, as Django does, and reaches its route's full checks.

use percent_encoding::percent_decode_str;

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
        if !well_formed_escapes(segment) {
            return Err("has a malformed percent-escape");
        }
        let Ok(decoded) = percent_decode_str(segment).decode_utf8() else {
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

/// Every `%` starts a two-digit hex escape.
fn well_formed_escapes(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: Option<&u8>| b.is_some_and(u8::is_ascii_hexdigit);
            if !hex(bytes.get(i + 1)) || !hex(bytes.get(i + 2)) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::check;

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
