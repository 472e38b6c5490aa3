//! HTML sanitising (operations.md §2.10 step 3): ammonia with upstream's nh3 settings, then
//! the CSS clean-up upstream applies to `style` attributes and `<style>` elements.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

/// Tags kept by the sanitizer (upstream's nh3 defaults); others are unwrapped.
const ALLOWED_TAGS: &str = "a abbr acronym area article aside b bdi bdo blockquote br caption \
    center cite code col colgroup data dd del details dfn div dl dt em figcaption figure font \
    footer h1 h2 h3 h4 h5 h6 header hgroup hr i img ins kbd li map mark nav ol p pre q rp rt rtc \
    ruby s samp small span strike strong style sub summary sup table tbody td th thead time title \
    tr tt u ul var wbr";

/// Attributes allowed on every tag.
const GENERIC_ATTRIBUTES: &str = "accesskey aria-atomic aria-busy aria-controls \
    aria-describedby aria-expanded aria-hidden aria-label aria-labelledby aria-live \
    aria-relevant class contenteditable dir draggable hidden id lang role spellcheck style \
    tabindex title translate";

/// Further attributes per tag.
const TAG_ATTRIBUTES: &[(&str, &str)] = &[
    ("a", "download href hreflang name target type"),
    ("abbr", "title"),
    ("area", "alt coords download href shape target"),
    ("bdo", "dir"),
    ("blockquote", "cite"),
    ("caption", "align"),
    ("col", "align span valign width"),
    ("colgroup", "align span valign width"),
    ("data", "value"),
    ("del", "cite datetime"),
    ("details", "name open"),
    ("dfn", "title"),
    ("div", "align"),
    ("font", "color face size"),
    ("h1", "align"),
    ("h2", "align"),
    ("h3", "align"),
    ("h4", "align"),
    ("h5", "align"),
    ("h6", "align"),
    ("hr", "align noshade size width"),
    (
        "img",
        "alt border crossorigin decoding height ismap loading sizes src srcset usemap width",
    ),
    ("ins", "cite datetime"),
    ("li", "type value"),
    ("map", "name"),
    ("ol", "reversed start type"),
    ("p", "align"),
    ("pre", "width"),
    ("q", "cite"),
    (
        "table",
        "align bgcolor border cellpadding cellspacing frame height rules summary width",
    ),
    ("tbody", "align valign"),
    ("thead", "align valign"),
    (
        "td",
        "abbr align bgcolor colspan headers height nowrap rowspan scope valign width",
    ),
    (
        "th",
        "abbr align bgcolor colspan headers height nowrap rowspan scope valign width",
    ),
    ("time", "datetime"),
    ("tr", "align bgcolor valign"),
    ("ul", "type"),
];

static SANITIZER: LazyLock<ammonia::Builder<'static>> = LazyLock::new(|| {
    let mut b = ammonia::Builder::default();
    b.tags(ALLOWED_TAGS.split_whitespace().collect())
        .clean_content_tags(HashSet::from(["script"]))
        .generic_attributes(GENERIC_ATTRIBUTES.split_whitespace().collect())
        .tag_attributes(
            TAG_ATTRIBUTES
                .iter()
                .map(|(t, a)| (*t, a.split_whitespace().collect()))
                .collect::<HashMap<_, _>>(),
        )
        .url_schemes(HashSet::from(["http", "https", "mailto"]))
        .link_rel(Some("noopener noreferrer"))
        .strip_comments(true)
        .attribute_filter(style_filter);
    b
});

fn style_filter<'u>(_element: &str, attr: &str, value: &'u str) -> Option<Cow<'u, str>> {
    if attr == "style" {
        Some(Cow::Owned(clean_css(value)))
    } else {
        Some(Cow::Borrowed(value))
    }
}

/// Sanitizes rendered HTML with upstream's nh3 settings, then neutralises CSS in `<style>`
/// elements the way the attribute filter does for `style` attributes.
pub fn sanitize(html: &str) -> String {
    let cleaned = SANITIZER.clean(html).to_string();
    clean_style_elements(&cleaned)
}

fn clean_style_elements(html: &str) -> String {
    let lower = html.to_ascii_lowercase();
    let mut out = String::with_capacity(html.len());
    let mut copied = 0;
    let mut at = 0;
    while let Some(p) = find_at(&lower, at, "<style") {
        let after_name = lower.as_bytes().get(p + 6).copied();
        if !matches!(
            after_name,
            Some(b'>') | Some(b' ') | Some(b'\t') | Some(b'\n') | Some(b'/')
        ) {
            at = p + 6;
            continue;
        }
        let Some(open_end) = find_at(&lower, p, ">").map(|e| e + 1) else {
            break;
        };
        let close = find_at(&lower, open_end, "</style").unwrap_or(html.len());
        out.push_str(&html[copied..open_end]);
        out.push_str(&clean_css(&html[open_end..close]));
        copied = close;
        at = close;
    }
    out.push_str(&html[copied..]);
    out
}

static CSS_RULES: LazyLock<Vec<(regex::Regex, &'static str)>> = LazyLock::new(|| {
    [
        (r"(?i)@import[^;]*;?", ""),
        (r"(?is)@font-face\s*\{[^}]*\}?", ""),
        (r#"(?i)url\(\s*['"]?\s*(?:https?:|//)[^)]*\)"#, "url()"),
        (r"(?i)expression\s*\([^)]*\)?", ""),
        (r"(?i)(?:-moz-binding|behavior)\s*:[^;}]*;?", ""),
    ]
    .into_iter()
    .filter_map(|(re, rep)| regex::Regex::new(re).ok().map(|r| (r, rep)))
    .collect()
});

/// Removes `@import` rules, `@font-face` blocks, remote `url(…)` targets, `expression(…)` and
/// `behavior`/`-moz-binding` declarations from CSS text.
pub fn clean_css(css: &str) -> String {
    let mut s = css.to_string();
    for (re, rep) in CSS_RULES.iter() {
        s = re.replace_all(&s, *rep).into_owned();
    }
    s
}

fn find_at(s: &str, from: usize, needle: &str) -> Option<usize> {
    s.get(from..)?.find(needle).map(|p| p + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizer_follows_the_upstream_rules() {
        let html = "<html><head><meta charset=\"utf-8\"><title>T</title>\
            <style>@import url(x.css); body { background: url(https://evil/x.png); behavior: url(a.htc); }</style></head>\
            <body><p onclick=\"x()\" style=\"color: red; -moz-binding: url(b); width: expression(alert(1))\">Hi\
            <script>alert(1)</script><!-- note --><blink>kept</blink>\
            <a href=\"javascript:alert(1)\">bad</a><a href=\"https://ok.example/\">good</a></p></body></html>";
        let out = sanitize(html);
        assert!(out.contains("<title>T</title>"), "{out}");
        assert!(!out.contains("<html") && !out.contains("<body") && !out.contains("<meta"));
        assert!(!out.contains("@import") && !out.contains("evil") && !out.contains("behavior"));
        assert!(out.contains("url()"), "{out}");
        assert!(!out.contains("onclick") && !out.contains("-moz-binding"));
        assert!(!out.contains("expression"), "{out}");
        assert!(out.contains("color: red"), "{out}");
        assert!(!out.contains("alert(1)</script") && !out.contains("<script"));
        assert!(!out.contains("note") && !out.contains("<blink") && out.contains("kept"));
        assert!(!out.contains("javascript:"));
        assert!(
            out.contains("<a href=\"https://ok.example/\" rel=\"noopener noreferrer\">good</a>"),
            "{out}"
        );
    }
}
