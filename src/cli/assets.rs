//! Files the packages ship that are generated from the clap definitions, so they cannot drift
//! from `keystone --help`: the man pages and the bash, zsh and fish completions. Written by
//! the hidden `keystone generate-assets DIR` (packaging/build-packages.sh).

use crate::cli::Cli;
use clap::CommandFactory;
use clap_complete::Shell;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// The files every run writes, by name inside the output directory; the package metadata in
/// Cargo.toml maps them to their installed paths. On top come one `keystone-<command>.1` page
/// per visible subcommand (`keystone-serve.1`, `keystone-config-show.1`, ...), which
/// keystone(1) refers to.
pub const FILES: [&str; 4] = ["keystone.1", "keystone.bash", "_keystone", "keystone.fish"];

/// Writes the man pages, `keystone.bash`, `_keystone` (zsh) and `keystone.fish` into `dir`,
/// creating it when missing.
pub fn write(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();

    // Without the help subcommand, which would otherwise get a page and a line in keystone(1).
    // Hidden commands get no page.
    clap_mangen::generate_to(cmd.clone().disable_help_subcommand(true), dir)?;

    for (shell, name) in [
        (Shell::Bash, "keystone.bash"),
        (Shell::Zsh, "_keystone"),
        (Shell::Fish, "keystone.fish"),
    ] {
        let mut out = BufWriter::new(File::create(dir.join(name))?);
        clap_complete::generate(shell, &mut cmd.clone(), "keystone", &mut out);
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn writes_man_pages_and_completions() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path()).expect("write assets");
        for name in FILES {
            assert!(
                read(dir.path(), name).contains("keystone"),
                "{name} does not mention keystone"
            );
        }
        let page = read(dir.path(), "keystone.1");
        assert!(
            page.contains("\n.TH keystone 1 "),
            "keystone.1 is not a man page"
        );
        assert!(
            page.contains("serve(1)"),
            "keystone(1) does not list the subcommands"
        );
        assert!(
            !page.contains("generate"),
            "a hidden command leaked into keystone(1)"
        );
        assert!(!page.contains("help(1)"), "help is listed as a command");
        assert!(
            read(dir.path(), "keystone-serve.1").contains("role"),
            "keystone-serve(1) lacks --role"
        );
        assert!(
            dir.path().join("keystone-config-show.1").exists(),
            "nested command has no page"
        );
        assert!(
            !dir.path().join("keystone-generate-assets.1").exists(),
            "hidden command got a page"
        );
        assert!(
            !dir.path().join("keystone-help.1").exists(),
            "help got a page"
        );
    }
}
