//! Plain text from rendered HTML (operations.md §2.10 step 4): a small html5ever token walk
//! producing what Python's html2text gives upstream with its settings.

/// Converts rendered HTML to Markdown-flavoured plain text in the manner of Python's
/// html2text with `body_width=0`, `ignore_emphasis` and `single_line_break`: blocks end with
/// one line break, `#` headings, `*` list items, `<br>` as two spaces and a newline,
/// `[text](url)` links, cells of a row joined with ` | `, `head`/`script`/`style` dropped.
pub fn html_to_text(html: &str) -> String {
    use html5ever::tendril::StrTendril;
    use html5ever::tokenizer::{BufferQueue, Tokenizer, TokenizerOpts};
    let sink = TextSink::default();
    let tokenizer = Tokenizer::new(sink, TokenizerOpts::default());
    let input = BufferQueue::default();
    input.push_back(StrTendril::from(html));
    let _ = tokenizer.feed(&input);
    tokenizer.end();
    let text = tokenizer.sink.state.borrow().out.clone();
    // One line break between blocks, no trailing blanks other than a `<br>`'s two spaces.
    let mut lines: Vec<&str> = Vec::new();
    for line in text.split('\n') {
        let kept = if line.ends_with("  ") && !line.trim().is_empty() {
            line
        } else {
            line.trim_end()
        };
        if !kept.trim().is_empty() {
            lines.push(kept);
        }
    }
    lines.join("\n").trim().to_string()
}

#[derive(Default)]
struct TextSink {
    state: std::cell::RefCell<TextState>,
}

#[derive(Default)]
struct TextState {
    out: String,
    /// Depth inside `head`, `script`, `style`, `title`: text there is dropped.
    quiet: usize,
    /// A whitespace run is pending (emitted as one space before the next word).
    space: bool,
    /// Ordered-list counters (`None` for `ul`).
    lists: Vec<Option<u32>>,
    /// Per open table row: whether a cell already produced text, and whether the current
    /// cell still owes the ` | ` separator.
    rows: Vec<(bool, bool)>,
    /// Output offset and target of each open link.
    links: Vec<(usize, Option<String>)>,
}

impl TextState {
    fn at_line_start(&self) -> bool {
        self.out.is_empty() || self.out.ends_with('\n')
    }

    fn newline(&mut self) {
        if !self.at_line_start() {
            self.out.push('\n');
        }
        self.space = false;
    }

    fn text(&mut self, s: &str) {
        if self.quiet > 0 {
            return;
        }
        for (idx, word) in s
            .split(|c: char| c.is_whitespace() || c == '\u{a0}')
            .enumerate()
        {
            if idx > 0 {
                self.space = true;
            }
            if word.is_empty() {
                continue;
            }
            if let Some(row) = self.rows.last_mut() {
                if row.1 {
                    row.1 = false;
                    if !self.out.ends_with('\n') && !self.out.is_empty() {
                        self.out.push_str(" | ");
                    }
                    self.space = false;
                }
                row.0 = true;
            }
            if self.space && !self.at_line_start() {
                self.out.push(' ');
            }
            self.space = false;
            self.out.push_str(word);
        }
    }

    fn start(&mut self, name: &str, attrs: &[html5ever::Attribute]) {
        let attr = |n: &str| {
            attrs
                .iter()
                .find(|a| &*a.name.local == n)
                .map(|a| a.value.to_string())
        };
        match name {
            "head" | "script" | "style" | "title" => self.quiet += 1,
            "p" | "div" | "table" | "blockquote" | "pre" | "section" | "article" | "header"
            | "footer" | "nav" | "aside" | "dl" | "dt" | "dd" | "figure" | "figcaption"
            | "caption" | "thead" | "tbody" | "details" | "summary" | "center" | "hgroup"
            | "address" | "main" => self.newline(),
            "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                self.newline();
                let level = name[1..].parse::<usize>().unwrap_or(1);
                self.out.push_str(&"#".repeat(level));
                self.out.push(' ');
            }
            "ul" => {
                self.newline();
                self.lists.push(None);
            }
            "ol" => {
                self.newline();
                let start = attr("start")
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(1);
                self.lists.push(Some(start));
            }
            "li" => {
                self.newline();
                let depth = self.lists.len().saturating_sub(1);
                self.out.push_str(&"  ".repeat(depth));
                match self.lists.last_mut() {
                    Some(Some(n)) => {
                        self.out.push_str(&format!("{n}. "));
                        *n += 1;
                    }
                    _ => self.out.push_str("* "),
                }
            }
            "tr" => {
                self.newline();
                self.rows.push((false, false));
            }
            "td" | "th" => {
                if let Some(row) = self.rows.last_mut() {
                    row.1 = row.0;
                }
            }
            "br" if self.quiet == 0 => {
                self.out.push_str("  \n");
                self.space = false;
            }
            "hr" => {
                self.newline();
                self.out.push_str("* * *\n");
            }
            "a" => {
                // A pending space belongs before the link, not inside its brackets.
                if self.quiet == 0 && self.space && !self.at_line_start() {
                    self.out.push(' ');
                    self.space = false;
                }
                let at = self.out.len();
                self.links.push((at, attr("href")));
            }
            "img" => {
                if let Some(alt) = attr("alt").filter(|a| !a.trim().is_empty()) {
                    self.text(&alt);
                }
            }
            _ => {}
        }
    }

    fn end(&mut self, name: &str) {
        match name {
            "head" | "script" | "style" | "title" => self.quiet = self.quiet.saturating_sub(1),
            "p" | "div" | "table" | "blockquote" | "pre" | "section" | "article" | "header"
            | "footer" | "nav" | "aside" | "dl" | "dt" | "dd" | "figure" | "figcaption"
            | "caption" | "thead" | "tbody" | "details" | "summary" | "center" | "hgroup"
            | "address" | "main" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "li" => self.newline(),
            "ul" | "ol" => {
                self.lists.pop();
                self.newline();
            }
            "tr" => {
                self.rows.pop();
                self.newline();
            }
            "a" => {
                if let Some((at, href)) = self.links.pop() {
                    let inside = self.out.get(at..).unwrap_or("");
                    let label = inside.trim().to_string();
                    let at = at + (inside.len() - inside.trim_start().len());
                    match href {
                        Some(h) if !label.is_empty() && !h.trim().is_empty() => {
                            self.out.insert(at, '[');
                            self.out.push_str(&format!("]({})", h.trim()));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

impl html5ever::tokenizer::TokenSink for TextSink {
    type Handle = ();

    fn process_token(
        &self,
        token: html5ever::tokenizer::Token,
        _line: u64,
    ) -> html5ever::tokenizer::TokenSinkResult<()> {
        use html5ever::tokenizer::states::RawKind;
        use html5ever::tokenizer::{TagKind, Token, TokenSinkResult};
        let mut st = self.state.borrow_mut();
        match token {
            Token::TagToken(tag) => {
                let name = tag.name.to_ascii_lowercase();
                match tag.kind {
                    TagKind::StartTag => {
                        st.start(&name, &tag.attrs);
                        if tag.self_closing {
                            st.end(&name);
                        }
                        // Let the tokenizer read script/style bodies as raw text.
                        match name.as_str() {
                            "script" if !tag.self_closing => {
                                return TokenSinkResult::RawData(RawKind::ScriptData);
                            }
                            "style" if !tag.self_closing => {
                                return TokenSinkResult::RawData(RawKind::Rawtext);
                            }
                            "title" | "textarea" if !tag.self_closing => {
                                return TokenSinkResult::RawData(RawKind::Rcdata);
                            }
                            _ => {}
                        }
                    }
                    TagKind::EndTag => st.end(&name),
                }
            }
            Token::CharacterTokens(t) => st.text(&t),
            _ => {}
        }
        TokenSinkResult::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_markdown_flavoured() {
        let html = "<html><head><title>T</title><style>p { x: y }</style></head><body>\
            <table><tr><td>&nbsp;</td><td><h3>Recommended  Actions</h3>\
            <p>Dear <strong>John</strong>\n   Smith,<br>next &amp; more <a href=\"https://x.example/a\">link</a></p>\
            <ul><li>one</li><li>two</li></ul>\
            <table><tr><th>Cluster</th><th>Awarded SUs</th></tr><tr><td>Cluster 1</td><td>100,000</td></tr></table>\
            <script>alert(1)</script></td><td>&nbsp;</td></tr></table></body></html>";
        assert_eq!(
            html_to_text(html),
            "### Recommended Actions\nDear John Smith,  \nnext & more [link](https://x.example/a)\n\
             * one\n* two\nCluster | Awarded SUs\nCluster 1 | 100,000"
        );
    }
}
