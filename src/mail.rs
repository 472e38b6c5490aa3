//! Notification e-mail (operations.md §2.10): templates, rendering, sanitising, sending.

use std::path::Path;
use std::process::ExitCode;

/// `keystone templates render` (§4.7).
pub fn render_samples(
    _config: &crate::config::Config,
    _out: Option<&Path>,
    _templates: Option<&Path>,
) -> ExitCode {
    eprintln!("not implemented yet");
    ExitCode::from(1)
}
