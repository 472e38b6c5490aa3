//! Files the packages ship that are generated from the clap definitions, so they cannot drift
//! from `keystone --help`: the man page and the bash, zsh and fish completions. Written by the
//! hidden `keystone generate-assets DIR` (packaging/build-packages.sh).

use crate::cli::Cli;
use clap::CommandFactory;
use clap_complete::Shell;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// The generated files, by name inside the output directory. The package metadata in
/// Cargo.toml maps each one to its installed path.
pub const FILES: [&str; 4] = ["keystone.1", "keystone.bash", "_keystone", "keystone.fish"];

/// Writes `keystone.1`, `keystone.bash`, `_keystone` (zsh) and `keystone.fish` into `dir`,
/// creating it when missing.
pub fn write(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();

    let mut page = BufWriter::new(File::create(dir.join("keystone.1"))?);
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    page.flush()?;

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

    #[test]
    fn writes_man_page_and_completions() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path()).expect("write assets");
        for name in FILES {
            let text = std::fs::read_to_string(dir.path().join(name)).expect(name);
            assert!(
                text.contains("keystone"),
                "{name} does not mention keystone"
            );
        }
        let page = std::fs::read_to_string(dir.path().join("keystone.1")).expect("man page");
        assert!(
            page.starts_with(".ie") || page.contains(".TH"),
            "not a man page"
        );
        assert!(page.contains("serve"), "man page lists no subcommands");
        assert!(
            !page.contains("generate-assets"),
            "hidden command leaked into the man page"
        );
    }
}
