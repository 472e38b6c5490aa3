//! Content negotiation as upstream's framework does it at the start of every API view
//! (domain.md §1.1, §2): before authentication, permissions, throttling and method dispatch.
//!
//! * The format asked for — the `.json` suffix of a suffixed route, else the last `format`
//!   query parameter when it is not empty — keeps only the renderers of that format; none
//!   left → `404 {"detail":"Not found."}`.
//! * The `Accept` header (absent: `*/*`) must then name a media type some remaining renderer
//!   produces, by type and subtype or their `*` wildcards; quality values do not count, as
//!   upstream ignores them → else `406 {"detail":"Could not satisfy the request Accept header."}`.

use super::ApiError;
use salvo::http::header;
use salvo::prelude::*;

/// What a route can answer with: a media type and the format name that selects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renderer {
    pub media_type: &'static str,
    /// `None`: the media type is served but no `format` value selects it.
    pub format: Option<&'static str>,
}

const fn renderer(media_type: &'static str, format: &'static str) -> Renderer {
    Renderer {
        media_type,
        format: Some(format),
    }
}

/// Every API view: JSON only.
pub const JSON: &[Renderer] = &[renderer("application/json", "json")];

/// Views whose body is plain text (version, Prometheus health). Upstream negotiates them
/// against its JSON renderer; a client asking for the plain text they actually send is
/// served too.
pub const JSON_OR_TEXT: &[Renderer] = &[
    renderer("application/json", "json"),
    Renderer {
        media_type: "text/plain",
        format: None,
    },
];

/// `/openapi/json/`: the OpenAPI media type first, then plain JSON.
pub const OPENAPI_JSON: &[Renderer] = &[
    renderer("application/vnd.oai.openapi+json", "json"),
    renderer("application/json", "json"),
];

/// `/openapi/yaml/`.
pub const OPENAPI_YAML: &[Renderer] = &[
    renderer("application/vnd.oai.openapi", "yaml"),
    renderer("application/yaml", "yaml"),
];

/// The message of a 406.
pub const NOT_ACCEPTABLE: &str = "Could not satisfy the request Accept header.";

/// Decides whether a request can be answered: `format` is the suffix or query value asked
/// for (if any), `accept` the raw `Accept` header values (none: anything is acceptable).
pub fn negotiate(
    renderers: &[Renderer],
    format: Option<&str>,
    accept: &[String],
) -> Result<(), ApiError> {
    let candidates: Vec<&Renderer> = match format {
        Some(f) => renderers.iter().filter(|r| r.format == Some(f)).collect(),
        None => renderers.iter().collect(),
    };
    if candidates.is_empty() {
        return Err(ApiError::not_found());
    }
    if accept.is_empty() {
        return Ok(());
    }
    let acceptable = accept
        .iter()
        .flat_map(|value| value.split(','))
        .any(|token| {
            candidates
                .iter()
                .any(|r| media_type_matches(r.media_type, token))
        });
    if acceptable {
        Ok(())
    } else {
        Err(ApiError::NotAcceptable)
    }
}

/// Whether one `Accept` entry (`type/subtype[;params]`) admits the renderer's media type.
/// Parameters (including `q`) are ignored; the type names compare case-insensitively.
fn media_type_matches(produced: &str, wanted: &str) -> bool {
    let full = wanted.split(';').next().unwrap_or("").trim();
    let (main, sub) = full.split_once('/').unwrap_or((full, ""));
    let (main, sub) = (main.trim(), sub.trim());
    let (p_main, p_sub) = produced.split_once('/').unwrap_or((produced, ""));
    (main == "*" || main.eq_ignore_ascii_case(p_main))
        && (sub == "*" || sub.eq_ignore_ascii_case(p_sub))
}

/// The format a request asks for: the route's `{format}` suffix, else the last non-empty
/// `format` query parameter (an empty one asks for nothing, as upstream).
pub fn requested_format(req: &Request) -> Option<String> {
    if let Some(suffix) = req.params().get("format") {
        return Some(suffix.clone());
    }
    let query = req.uri().query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "format")
        .last()
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// The raw `Accept` values of a request (header bytes that are not UTF-8 are read
/// lossily: they can only fail to match).
fn accept_values(req: &Request) -> Vec<String> {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// The hoop of a negotiated route, run before its gate.
pub struct Negotiate(pub &'static [Renderer]);

#[handler]
impl Negotiate {
    async fn handle(&self, req: &Request, res: &mut Response, ctrl: &mut FlowCtrl) {
        let format = requested_format(req);
        if let Err(e) = negotiate(self.0, format.as_deref(), &accept_values(req)) {
            e.render(res);
            ctrl.skip_rest();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn json_views_accept_json_and_wildcards_only() {
        for ok in [
            vec![],
            vec!["*/*"],
            vec!["application/json"],
            vec!["application/*"],
            vec!["APPLICATION/JSON"],
            vec!["application/json; indent=4"],
            vec!["application/json;q=0"],
            vec!["text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"],
            vec!["text/html", "application/json"],
            vec!["*/json"],
        ] {
            assert_eq!(negotiate(JSON, None, &accept(&ok)), Ok(()), "{ok:?}");
        }
        for refused in [
            vec!["text/html"],
            vec!["application/xml"],
            vec!["text/*"],
            vec!["*"],
            vec![""],
            vec!["json"],
            vec!["application/jsonx"],
        ] {
            assert_eq!(
                negotiate(JSON, None, &accept(&refused)),
                Err(ApiError::NotAcceptable),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn formats_select_renderers_before_the_accept_header() {
        assert_eq!(negotiate(JSON, Some("json"), &[]), Ok(()));
        assert_eq!(
            negotiate(JSON, Some("xml"), &accept(&["application/json"])),
            Err(ApiError::not_found())
        );
        assert_eq!(
            negotiate(JSON, Some("JSON"), &[]),
            Err(ApiError::not_found())
        );
        // An unknown format wins over an unacceptable Accept header.
        assert_eq!(
            negotiate(JSON, Some("api"), &accept(&["text/html"])),
            Err(ApiError::not_found())
        );
        assert_eq!(
            negotiate(OPENAPI_YAML, Some("yaml"), &accept(&["application/yaml"])),
            Ok(())
        );
        assert_eq!(
            negotiate(OPENAPI_YAML, None, &accept(&["application/json"])),
            Err(ApiError::NotAcceptable)
        );
        assert_eq!(
            negotiate(JSON_OR_TEXT, None, &accept(&["text/plain"])),
            Ok(())
        );
        assert_eq!(
            negotiate(JSON_OR_TEXT, Some("json"), &accept(&["text/plain"])),
            Err(ApiError::NotAcceptable)
        );
    }
}
