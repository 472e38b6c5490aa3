//! Notification e-mail (operations.md §2.10, §4.7): finding and rendering the Jinja-compatible
//! templates (built-in ones embedded, overridable from `email.template_dir`), sanitising the
//! HTML, deriving the plain text, building the MIME message and handing it to SMTP or to the
//! debug directory. `keystone templates render` writes sample messages.

mod pycompat;
mod sanitize;
mod text;

pub use pycompat::{date_value, datetime_value, opt_str, rewrite_percent_format};
pub use sanitize::{clean_css, sanitize};
pub use text::html_to_text;

use crate::config::Config;
use chrono::{Datelike, NaiveDate, Utc};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// The built-in templates (`templates/` in the source tree), searched after
/// `email.template_dir`.
const BUILTIN: [(&str, &str); 4] = [
    ("base.html", include_str!("../../templates/base.html")),
    ("general.html", include_str!("../../templates/general.html")),
    (
        "upcoming_expiration.html",
        include_str!("../../templates/upcoming_expiration.html"),
    ),
    (
        "past_expiration.html",
        include_str!("../../templates/past_expiration.html"),
    ),
];

/// Template used by upcoming-expiry notices (§2.8).
pub const UPCOMING_TEMPLATE: &str = "upcoming_expiration.html";
/// Template used by past-expiry notices (§2.9).
pub const PAST_TEMPLATE: &str = "past_expiration.html";
/// Template used by general messages.
pub const GENERAL_TEMPLATE: &str = "general.html";

/// Everything that can go wrong between a template name and a delivered message.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("Template file not found '{0}'")]
    TemplateNotFound(String),
    #[error("Template file has insecure file permissions: {}", .0.display())]
    InsecureTemplate(PathBuf),
    #[error("Template is empty")]
    EmptyTemplate,
    #[error("{0}")]
    Render(String),
    #[error("invalid e-mail address {address:?} in {field}: {reason}")]
    Address {
        field: &'static str,
        address: String,
        reason: String,
    },
    #[error("cannot build the e-mail message: {0}")]
    Build(String),
    #[error("SMTP delivery to {host}:{port} failed: {reason}")]
    Smtp {
        host: String,
        port: u16,
        reason: String,
        refused: bool,
    },
    #[error("cannot write the e-mail to {}: {reason}", path.display())]
    DebugFile { path: PathBuf, reason: String },
}

// ------------------------------------------------------------------------------------------
// Finding templates
// ------------------------------------------------------------------------------------------

/// Where templates are searched: an optional site directory, then the built-in set.
#[derive(Debug, Clone, Default)]
pub struct Templates {
    dir: Option<PathBuf>,
}

impl Templates {
    /// Search `dir` first (when given), then the built-in templates.
    pub fn new(dir: Option<PathBuf>) -> Self {
        Templates { dir }
    }

    /// The search path of a configuration: `email.template_dir`, whether or not it exists.
    pub fn from_config(config: &Config) -> Self {
        Templates::new(Some(config.path(&config.settings.email.template_dir)))
    }

    /// Reads a template by name: the site directory first, then the built-ins. Names that
    /// would leave the directory (absolute, `..`) are never found.
    fn source(dir: Option<&Path>, name: &str) -> Result<Option<(String, Option<PathBuf>)>, String> {
        if !is_plain_name(name) {
            return Ok(None);
        }
        if let Some(dir) = dir {
            let path = dir.join(name);
            if path.is_file() {
                return std::fs::read_to_string(&path)
                    .map(|s| Some((s, Some(path.clone()))))
                    .map_err(|e| format!("cannot read template {}: {e}", path.display()));
            }
        }
        Ok(BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| (s.to_string(), None)))
    }

    /// Renders `name` with `context` into (sanitized HTML, plain text) (§2.10 steps 1–4).
    pub fn render(&self, name: &str, context: &Value) -> Result<Rendered, MailError> {
        // Step 1: the top-level template must exist and must not be world-writable.
        let (_, path) = Templates::source(self.dir.as_deref(), name)
            .map_err(MailError::Render)?
            .ok_or_else(|| MailError::TemplateNotFound(name.to_string()))?;
        if let Some(path) = path {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .map_err(|e| MailError::Render(format!("cannot read {}: {e}", path.display())))?
                .permissions()
                .mode();
            if mode & 0o002 != 0 {
                return Err(MailError::InsecureTemplate(path));
            }
        }
        // Step 2: render.
        let env = self.environment();
        let rendered = env
            .get_template(name)
            .and_then(|t| t.render(context))
            .map_err(|e| MailError::Render(describe(&e)))?;
        // Steps 3 and 4.
        let html = sanitize(&rendered).trim().to_string();
        let text = html_to_text(&rendered);
        if html.is_empty() || text.is_empty() {
            return Err(MailError::EmptyTemplate);
        }
        Ok(Rendered { html, text })
    }

    fn environment(&self) -> Environment<'static> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| AutoEscape::Html);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        let dir = self.dir.clone();
        env.set_loader(move |name| {
            Templates::source(dir.as_deref(), name)
                .map(|found| found.map(|(src, _)| rewrite_percent_format(&src)))
                .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e))
        });
        env
    }
}

fn is_plain_name(name: &str) -> bool {
    let p = Path::new(name);
    !name.is_empty()
        && !name.contains('\\')
        && p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// A template error with its cause chain on one line.
fn describe(e: &minijinja::Error) -> String {
    let mut out = format!("Template error: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(&format!(": {s}"));
        source = s.source();
    }
    out
}

/// A rendered notification body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Sanitized HTML (§2.10 step 3).
    pub html: String,
    /// Markdown-flavoured plain text (§2.10 step 4).
    pub text: String,
}

// ------------------------------------------------------------------------------------------
// Messages and delivery (§2.10 step 6, §1.2.9)
// ------------------------------------------------------------------------------------------

fn mailbox(field: &'static str, address: &str) -> Result<Mailbox, MailError> {
    address
        .trim()
        .parse::<Mailbox>()
        .map_err(|e| MailError::Address {
            field,
            address: address.to_string(),
            reason: e.to_string(),
        })
}

/// A `multipart/alternative` message (plain text, then HTML; UTF-8). Without `to` there is
/// no `To` header (the samples of `templates render`).
pub fn build_message(
    from: &str,
    to: Option<&str>,
    subject: &str,
    body: &Rendered,
) -> Result<Message, MailError> {
    let from = mailbox("email.from_address", from)?;
    let mut builder = Message::builder().from(from.clone()).subject(subject);
    match to {
        Some(to) => builder = builder.to(mailbox("the recipient's e-mail", to)?),
        None => {
            let envelope =
                lettre::address::Envelope::new(Some(from.email.clone()), vec![from.email.clone()])
                    .map_err(|e| MailError::Build(e.to_string()))?;
            builder = builder.envelope(envelope);
        }
    }
    builder
        .multipart(MultiPart::alternative_plain_html(
            body.text.clone(),
            body.html.clone(),
        ))
        .map_err(|e| MailError::Build(e.to_string()))
}

/// Creates the debug mail directory when it is missing, as a delivery to it does.
async fn prepare_debug_dir(dir: &Path) -> std::io::Result<()> {
    tokio::fs::create_dir_all(dir).await
}

/// Whether file delivery to `email.debug_dir` works: the directory is there (created as a
/// delivery would create it) and accepts a file. The probe file is removed again.
pub async fn check_debug_dir(dir: &Path) -> std::io::Result<()> {
    prepare_debug_dir(dir).await?;
    let probe = dir.join(format!(
        ".keystone-health-{}",
        uuid::Uuid::new_v4().simple()
    ));
    tokio::fs::write(&probe, b"").await?;
    let _ = tokio::fs::remove_file(&probe).await;
    Ok(())
}

/// Delivers messages as the configuration says: SMTP, or files in `email.debug_dir`.
pub struct Mailer {
    from: String,
    transport: Transport,
}

enum Transport {
    Smtp {
        client: AsyncSmtpTransport<Tokio1Executor>,
        host: String,
        port: u16,
    },
    Files {
        dir: PathBuf,
        tz: chrono_tz::Tz,
    },
}

impl Mailer {
    /// Builds the transport from `[email]`; no connection is made until a message is sent.
    pub fn from_config(config: &Config) -> Result<Mailer, MailError> {
        use lettre::transport::smtp::authentication::Credentials;
        let e = &config.settings.email;
        let transport = if let Some(dir) = &e.debug_dir {
            Transport::Files {
                dir: config.path(dir),
                tz: config.timezone(),
            }
        } else {
            let smtp_error = |reason: String| MailError::Smtp {
                host: e.host.clone(),
                port: e.port,
                reason,
                refused: false,
            };
            let builder = if e.use_ssl {
                AsyncSmtpTransport::<Tokio1Executor>::relay(&e.host)
                    .map_err(|err| smtp_error(err.to_string()))?
            } else if e.use_tls {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&e.host)
                    .map_err(|err| smtp_error(err.to_string()))?
            } else {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&e.host)
            };
            let mut builder = builder
                .port(e.port)
                .timeout(Some(Duration::from_secs(e.timeout.max(1))));
            if !e.user.is_empty() {
                builder = builder.credentials(Credentials::new(e.user.clone(), e.password.clone()));
            }
            Transport::Smtp {
                client: builder.build(),
                host: e.host.clone(),
                port: e.port,
            }
        };
        Ok(Mailer {
            from: e.from_address.clone(),
            transport,
        })
    }

    /// Sends one notification message to `to`.
    pub async fn send(&self, to: &str, subject: &str, body: &Rendered) -> Result<(), MailError> {
        let message = build_message(&self.from, Some(to), subject, body)?;
        match &self.transport {
            Transport::Smtp { client, host, port } => {
                client.send(message).await.map(|_| ()).map_err(|err| {
                    let refused = std::error::Error::source(&err)
                        .and_then(|s| s.downcast_ref::<std::io::Error>())
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
                        || err.to_string().contains("Connection refused");
                    let mut reason = err.to_string();
                    let mut source = std::error::Error::source(&err);
                    while let Some(s) = source {
                        reason.push_str(&format!(": {s}"));
                        source = s.source();
                    }
                    MailError::Smtp {
                        host: host.clone(),
                        port: *port,
                        reason,
                        refused,
                    }
                })
            }
            Transport::Files { dir, tz } => {
                let name = format!(
                    "{}-{}.log",
                    Utc::now().with_timezone(tz).format("%Y%m%d-%H%M%S"),
                    uuid::Uuid::new_v4().simple()
                );
                let path = dir.join(name);
                let mut content = message.formatted();
                content.extend_from_slice(b"\n");
                content.extend_from_slice("-".repeat(79).as_bytes());
                content.extend_from_slice(b"\n");
                let write = async {
                    prepare_debug_dir(dir).await?;
                    tokio::fs::write(&path, &content).await
                };
                write.await.map_err(|err| MailError::DebugFile {
                    path: path.clone(),
                    reason: err.to_string(),
                })
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// `keystone templates render` (§4.7)
// ------------------------------------------------------------------------------------------

/// An absolute, lexically normalised form of `p` (the real path when it exists).
fn absolute(p: &Path) -> PathBuf {
    if let Ok(real) = p.canonicalize() {
        return real;
    }
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The sample context of §4.7 for `kind` (`upcoming`, `past`, `general`).
fn sample_context(kind: &str, year: i32) -> Value {
    let date = |y: i32, m: u32, d: u32| date_value(NaiveDate::from_ymd_opt(y, m, d));
    let datetime = |y: i32, m: u32, d: u32| {
        datetime_value(
            NaiveDate::from_ymd_opt(y, m, d)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|dt| dt.and_utc()),
        )
    };
    let mut ctx: BTreeMap<&str, Value> = BTreeMap::new();
    ctx.insert("user_name", Value::from("jsmith"));
    ctx.insert("user_first", Value::from("John"));
    ctx.insert("user_last", Value::from("Smith"));
    if kind == "general" {
        ctx.insert(
            "message",
            Value::from("This is an important general notification concerning your HPC account."),
        );
        return Value::from(ctx);
    }
    ctx.insert("req_id", Value::from(1234));
    ctx.insert("req_title", Value::from("Project Title"));
    ctx.insert("req_team", Value::from("Team Name"));
    ctx.insert("req_submitted", datetime(year, 1, 1));
    ctx.insert("req_active", date(year, 1, 8));
    ctx.insert("req_expire", date(year, 12, 31));
    if kind == "upcoming" {
        ctx.insert("req_days_left", Value::from(7));
    }
    let allocations: Vec<Value> = [
        ("Cluster 1", 100_000, 100_000, 50_000),
        ("Cluster 2", 250_000, 200_000, 175_000),
    ]
    .into_iter()
    .map(|(cluster, requested, awarded, fin)| {
        let mut a: BTreeMap<&str, Value> = BTreeMap::new();
        a.insert("alloc_cluster", Value::from(cluster));
        a.insert("alloc_requested", Value::from(requested));
        a.insert("alloc_awarded", Value::from(awarded));
        if kind == "past" {
            a.insert("alloc_final", Value::from(fin));
        }
        Value::from(a)
    })
    .collect();
    ctx.insert("allocations", Value::from(allocations));
    let request =
        |id: i64, title: &str, submitted: Value, active: Value, expire: Value, status: &str| {
            let mut r: BTreeMap<&str, Value> = BTreeMap::new();
            r.insert("id", Value::from(id));
            r.insert("title", Value::from(title));
            r.insert("submitted", submitted);
            r.insert("active", active);
            r.insert("expire", expire);
            r.insert("status", Value::from(status));
            Value::from(r)
        };
    ctx.insert(
        "upcoming_requests",
        Value::from(vec![
            request(
                5678,
                "Pending Project",
                datetime(year, 11, 15),
                Value::from(()),
                Value::from(()),
                "Pending",
            ),
            request(
                9012,
                "Active Project",
                datetime(year, 3, 1),
                date(year, 3, 15),
                date(year + 1, 3, 15),
                "Approved",
            ),
        ]),
    );
    Value::from(ctx)
}

/// Renders the three samples into `out`; returns the first error.
fn write_samples(config: &Config, out: &Path, templates: &Templates) -> Result<(), MailError> {
    let year = Utc::now().with_timezone(&config.timezone()).year();
    let samples = [
        (
            "upcoming",
            UPCOMING_TEMPLATE,
            "upcoming_expiration.eml",
            "Your HPC allocation 1234 is expiring soon",
        ),
        (
            "past",
            PAST_TEMPLATE,
            "past_expiration.eml",
            "Your HPC allocation 1234 has expired",
        ),
        (
            "general",
            GENERAL_TEMPLATE,
            "general_message.eml",
            "General notification",
        ),
    ];
    for (kind, template, file, subject) in samples {
        let body = templates.render(template, &sample_context(kind, year))?;
        let message = build_message(&config.settings.email.from_address, None, subject, &body)?;
        let path = out.join(file);
        std::fs::write(&path, message.formatted()).map_err(|e| MailError::DebugFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// `keystone templates render` (§4.7).
pub fn render_samples(config: &Config, out: Option<&Path>, templates: Option<&Path>) -> ExitCode {
    let template_dir = match templates {
        Some(dir) => {
            if !dir.is_dir() {
                eprintln!("No such file or directory: {}", absolute(dir).display());
                return ExitCode::from(1);
            }
            Some(dir.to_path_buf())
        }
        None => {
            let dir = config.path(&config.settings.email.template_dir);
            if dir.is_dir() {
                Some(dir)
            } else {
                eprintln!(
                    "Template directory {} does not exist; rendering the built-in templates",
                    absolute(&dir).display()
                );
                None
            }
        }
    };
    let out = match out {
        Some(dir) => dir.to_path_buf(),
        None => PathBuf::from("."),
    };
    if !out.is_dir() {
        eprintln!("No such file or directory: {}", absolute(&out).display());
        return ExitCode::from(1);
    }
    match write_samples(config, &out, &Templates::new(template_dir)) {
        Ok(()) => {
            println!("Templates written to {}", absolute(&out).display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: Vec<(&'static str, Value)>) -> Value {
        Value::from(pairs.into_iter().collect::<BTreeMap<_, _>>())
    }

    fn render_str(src: &str, context: Value) -> Result<String, minijinja::Error> {
        let mut env = Templates::default().environment();
        env.add_template_owned("t.html", rewrite_percent_format(src))?;
        env.get_template("t.html")?.render(context)
    }

    #[test]
    fn python_isms_of_upstream_templates_work() {
        let c = ctx(vec![
            ("n", Value::from(1)),
            ("two", Value::from(2)),
            ("big", Value::from(1_234_567)),
            ("final", Value::from(1)),
            ("awarded", Value::from(8)),
            ("d", date_value(NaiveDate::from_ymd_opt(2026, 1, 8))),
        ]);
        let out = render_str(
            "{{ 'day' }}{{ 's' if n != 1 }}|{{ 'day' }}{{ 's' if two != 1 }}|{{ \"{:,}\".format(big) }}|\
             {{ '%.0f' % (final / awarded * 100) }}|{{ '%.0f' % 12.5 }}|{{ '%.0f' % 13.5 }}|\
             {{ d.strftime('%B %d, %Y') }}|{{ d }}|{{ '%s-%s' % (n, two) }}|{{ '%d%%' % big|int }}",
            c,
        )
        .expect("renders");
        assert_eq!(
            out,
            "day|days|1,234,567|12|12|14|January 08, 2026|2026-01-08|1-2|1234567%"
        );
    }

    #[test]
    fn percent_rewrite_leaves_other_text_alone() {
        let src = "{% if a %}50% off{% endif %}{{ x % 2 }}{# '%s' % y #}{% raw %}{{ '%s' % z }}{% endraw %}";
        assert_eq!(rewrite_percent_format(src), src);
        assert_eq!(
            rewrite_percent_format("{{ '%.1f' % v.x|float }}"),
            "{{ ('%.1f'|format(v.x|float)) }}"
        );
    }

    #[test]
    fn strict_undefined_and_bad_strftime_are_errors() {
        assert!(render_str("{{ missing }}", ctx(vec![])).is_err());
        let c = ctx(vec![("d", date_value(NaiveDate::from_ymd_opt(2026, 1, 8)))]);
        assert!(render_str("{{ d.strftime('%Q') }}", c).is_err());
    }

    #[test]
    fn values_are_html_escaped() {
        let c = ctx(vec![("t", Value::from("<b>x</b> & y"))]);
        assert_eq!(
            render_str("{{ t }}", c).expect("renders"),
            "&lt;b&gt;x&lt;&#x2f;b&gt; &amp; y"
        );
    }

    #[test]
    fn built_in_templates_render_samples() {
        let t = Templates::default();
        let up = t
            .render(UPCOMING_TEMPLATE, &sample_context("upcoming", 2026))
            .expect("upcoming renders");
        assert!(up.text.contains("Dear John Smith,"), "{}", up.text);
        assert!(
            up.text.contains("expires in 7 days, on December 31, 2026"),
            "{}",
            up.text
        );
        assert!(up.text.contains("Cluster 2 | 200,000"), "{}", up.text);
        assert!(up.text.contains("# Recommended Actions"), "{}", up.text);
        assert!(
            up.text
                .contains("5678 | Pending Project | Pending | November 15, 2026 | — | —"),
            "{}",
            up.text
        );
        assert!(up.html.contains("<title>") && up.html.contains("<style>"));
        let past = t
            .render(PAST_TEMPLATE, &sample_context("past", 2026))
            .expect("past renders");
        assert!(
            past.text.contains("Cluster 1 | 100,000 | 50,000 (50%)"),
            "{}",
            past.text
        );
        assert!(
            past.text.contains("Cluster 2 | 200,000 | 175,000 (88%)"),
            "{}",
            past.text
        );
        let general = t
            .render(GENERAL_TEMPLATE, &sample_context("general", 2026))
            .expect("general renders");
        assert!(
            general
                .text
                .contains("This is an important general notification")
        );
        // Upcoming context lacks alloc_final: the past template must fail in strict mode.
        assert!(
            t.render(PAST_TEMPLATE, &sample_context("upcoming", 2026))
                .is_err()
        );
    }

    #[test]
    fn a_single_day_left_has_no_plural() {
        let mut c: BTreeMap<&str, Value> = BTreeMap::new();
        for (k, v) in [("user_name", "u"), ("req_title", "T"), ("req_team", "Team")] {
            c.insert(k, Value::from(v));
        }
        c.insert("user_first", Value::from(()));
        c.insert("user_last", Value::from("L"));
        c.insert("req_id", Value::from(3));
        c.insert("req_days_left", Value::from(1));
        c.insert(
            "req_expire",
            date_value(NaiveDate::from_ymd_opt(2026, 2, 1)),
        );
        c.insert("allocations", Value::from(Vec::<Value>::new()));
        c.insert("upcoming_requests", Value::from(Vec::<Value>::new()));
        let r = Templates::default()
            .render(UPCOMING_TEMPLATE, &Value::from(c))
            .expect("renders");
        assert!(r.text.contains("Dear u,"), "{}", r.text);
        assert!(
            r.text.contains("expires in 1 day, on February 01, 2026"),
            "{}",
            r.text
        );
        assert!(r.text.contains("no remaining service units"), "{}", r.text);
    }

    #[test]
    fn site_templates_override_and_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("base.html"),
            "<div class=\"site\">{% block main %}{% endblock %}</div>",
        )
        .expect("write");
        let t = Templates::new(Some(dir.path().to_path_buf()));
        let general = t
            .render(GENERAL_TEMPLATE, &sample_context("general", 2026))
            .expect("renders");
        assert!(
            general.html.starts_with("<div class=\"site\">"),
            "{}",
            general.html
        );
        assert!(!general.html.contains("Better HPC"));

        let top = dir.path().join("general.html");
        std::fs::write(&top, "   \n").expect("write");
        assert!(matches!(
            t.render(GENERAL_TEMPLATE, &sample_context("general", 2026)),
            Err(MailError::EmptyTemplate)
        ));
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let err = t
            .render(GENERAL_TEMPLATE, &sample_context("general", 2026))
            .expect_err("insecure");
        assert_eq!(
            err.to_string(),
            format!(
                "Template file has insecure file permissions: {}",
                top.display()
            )
        );
        assert_eq!(
            t.render("nope.html", &sample_context("general", 2026))
                .expect_err("missing")
                .to_string(),
            "Template file not found 'nope.html'"
        );
        assert!(matches!(
            t.render("../etc/passwd", &sample_context("general", 2026)),
            Err(MailError::TemplateNotFound(_))
        ));
    }

    #[test]
    fn messages_are_multipart_alternative() {
        let body = Rendered {
            text: "Hello — plain".into(),
            html: "<p>Hello — html</p>".into(),
        };
        let m = build_message("noreply@keystone.bot", None, "Subject", &body).expect("message");
        let raw = String::from_utf8_lossy(&m.formatted()).to_string();
        assert!(raw.contains("multipart/alternative"), "{raw}");
        assert!(raw.contains("From: noreply@keystone.bot"), "{raw}");
        assert!(!raw.contains("\r\nTo:"), "{raw}");
        assert!(raw.contains("text/plain; charset=utf-8"), "{raw}");
        assert!(raw.contains("text/html; charset=utf-8"), "{raw}");
        assert!(matches!(
            build_message("not an address", None, "S", &body),
            Err(MailError::Address { .. })
        ));
    }
}
