//! Files over HTTP: the response that sends a stored upload (its type, `Content-Disposition`
//! per RFC 6266, or an `X-Accel-Redirect` for nginx), and the file name a multipart part's
//! own header gives, read as multipart parsers read it (before salvo drops the path
//! separators that upstream's base-name rule relies on).

use crate::config::Config;
use crate::infra::uploads;
use crate::web::ApiError;
use crate::web::canonical::percent_decode_strict;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use salvo::http::StatusCode;
use salvo::http::header::{self, HeaderValue};
use salvo::prelude::*;
use std::borrow::Cow;
use std::path::Path;

/// Answers with the stored `file` value: its content, or with `upload.accel_redirect` an
/// `X-Accel-Redirect` for nginx to send it, typed from its extension and offered for download
/// as `name` (the stored file's own name when blank). 404 when the file is not stored.
pub async fn send_stored(
    config: &Config,
    file: &str,
    name: &str,
    res: &mut Response,
) -> Result<(), ApiError> {
    let accel = config
        .settings
        .upload
        .accel_redirect
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string);
    let root = config.upload_dir();
    let stored = file.to_string();
    let with_body = accel.is_none();
    // All file-system work off the async threads: checks, then the content.
    let content =
        tokio::task::spawn_blocking(move || uploads::read_for_download(&root, &stored, with_body))
            .await
            .map_err(|_| ApiError::Internal)?
            .map_err(|e| {
                tracing::warn!("stored file {file:?}: {e}");
                ApiError::not_found()
            })?;
    let mime = uploads::mime_for(file)
        .map(|(_, m)| m)
        .unwrap_or("application/octet-stream");
    let shown = if name.trim().is_empty() {
        file.rsplit('/').next().unwrap_or("attachment")
    } else {
        name
    };
    let mut headers = vec![
        (header::CONTENT_TYPE, mime.to_string()),
        (header::CONTENT_DISPOSITION, content_disposition(shown)),
        (header::CACHE_CONTROL, "private, no-cache".to_string()),
        // Uploaded SVG or HTML-looking content must never run in the API's origin.
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; sandbox".to_string(),
        ),
    ];
    if let Some(prefix) = accel {
        let target = format!(
            "{}/{}",
            prefix.trim_end_matches('/'),
            uploads::percent_encode_path(file)
        );
        headers.push((header::HeaderName::from_static("x-accel-redirect"), target));
    }
    for (name, value) in headers {
        let value = HeaderValue::from_str(&value).map_err(|_| ApiError::Internal)?;
        res.headers_mut().insert(name, value);
    }
    res.status_code(StatusCode::OK);
    if let Some(content) = content {
        res.write_body(content).map_err(|_| ApiError::Internal)?;
    }
    Ok(())
}

/// `attachment` with an ASCII `filename` fallback and the exact name as RFC 5987
/// `filename*` (RFC 6266 §4.3).
pub fn content_disposition(name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| {
            if (c.is_ascii_graphic() || c == ' ') && !matches!(c, '"' | '\\' | '%') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded = utf8_percent_encode(name, NOT_ATTR_CHAR);
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

/// Bytes outside RFC 5987's attr-char, percent-encoded in `filename*`.
const NOT_ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// The file name of the multipart part of `req` stored at `temp`, as its Content-Disposition
/// header gives it (`None` when the body is no form or the part names no file).
pub async fn part_file_name(req: &mut Request, temp: &Path) -> Option<String> {
    let form = req.form_data().await.ok()?;
    form.files
        .iter_all()
        .flat_map(|(_, parts)| parts.iter())
        .find(|p| p.path() == temp)
        .and_then(|p| p.headers().get(header::CONTENT_DISPOSITION))
        .and_then(|v| disposition_file_name(v.as_bytes()))
}

/// The `filename*` (RFC 5987) or `filename` parameter of a part's Content-Disposition, as
/// multipart parsers read it, before any sanitising.
pub fn disposition_file_name(header: &[u8]) -> Option<String> {
    let params = params(header);
    if let Some((_, v)) = params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(b"filename*"))
        && let Some(name) = decode_ext_value(v)
    {
        return Some(name);
    }
    let (_, v) = params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(b"filename"))?;
    let v = v.trim_ascii();
    let raw: Vec<u8> = if let Some(inner) = v.strip_prefix(b"\"") {
        // Only `\"` is an escape: browsers send Windows paths with raw backslashes.
        let mut out = Vec::new();
        let mut i = 0;
        while i < inner.len() {
            match inner[i] {
                b'\\' if inner.get(i + 1) == Some(&b'"') => {
                    out.push(b'"');
                    i += 2;
                }
                b'"' => break,
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    } else {
        v.to_vec()
    };
    // Legacy percent-encoding in `filename` is decoded when it yields UTF-8.
    let decoded = percent_decode_strict(&raw)
        .filter(|d| std::str::from_utf8(d).is_ok())
        .map(Cow::into_owned)
        .unwrap_or(raw);
    Some(String::from_utf8_lossy(&decoded).into_owned())
}

/// `key=value` parameters after the disposition type; `;` inside quotes is part of a value.
fn params(header: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    let mut rest = match header.iter().position(|b| *b == b';') {
        Some(i) => &header[i + 1..],
        None => return out,
    };
    while !rest.is_empty() {
        let (mut quoted, mut escaped) = (false, false);
        let end = rest
            .iter()
            .position(|&b| {
                if escaped {
                    escaped = false;
                } else if quoted && b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    quoted = !quoted;
                } else if !quoted && b == b';' {
                    return true;
                }
                false
            })
            .unwrap_or(rest.len());
        let param = rest[..end].trim_ascii();
        rest = rest.get(end + 1..).unwrap_or_default();
        if let Some(eq) = param.iter().position(|b| *b == b'=') {
            out.push((param[..eq].trim_ascii(), param[eq + 1..].trim_ascii()));
        }
    }
    out
}

/// RFC 5987 `charset'lang'pct-encoded` (UTF-8 or ISO-8859-1).
fn decode_ext_value(v: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(v.trim_ascii()).ok()?;
    let mut parts = text.splitn(3, '\'');
    let charset = parts.next()?;
    let _lang = parts.next()?;
    let bytes = percent_decode_strict(parts.next()?.as_bytes())?;
    if charset.eq_ignore_ascii_case("utf-8") {
        String::from_utf8(bytes.into_owned()).ok()
    } else if charset.eq_ignore_ascii_case("iso-8859-1") {
        Some(bytes.iter().map(|b| char::from(*b)).collect())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disposition_names_are_read_like_multipart_parsers() {
        let h = br#"form-data; name="file"; filename="C:\dir\a; b.txt""#;
        assert_eq!(
            disposition_file_name(h).as_deref(),
            Some("C:\\dir\\a; b.txt")
        );
        let h = b"form-data; name=\"file\"; filename=\"x.txt\"; filename*=UTF-8''%C3%A9t%C3%A9.txt";
        assert_eq!(disposition_file_name(h).as_deref(), Some("été.txt"));
        let h = br#"form-data; name="file"; filename="say \"hi\".txt""#;
        assert_eq!(disposition_file_name(h).as_deref(), Some("say \"hi\".txt"));
        let h = br#"form-data; name="file"; filename="..%2F..%2Fx.txt""#;
        assert_eq!(disposition_file_name(h).as_deref(), Some("../../x.txt"));
        assert_eq!(disposition_file_name(br#"form-data; name="file""#), None);
    }

    #[test]
    fn content_disposition_is_rfc_6266() {
        assert_eq!(
            content_disposition("a b.txt"),
            "attachment; filename=\"a b.txt\"; filename*=UTF-8''a%20b.txt"
        );
        assert_eq!(
            content_disposition("é\"\\.pdf"),
            "attachment; filename=\"___.pdf\"; filename*=UTF-8''%C3%A9%22%5C.pdf"
        );
    }
}
