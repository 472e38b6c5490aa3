//! Uploads confined to their directory: the only code that creates, finds or reads files
//! under `upload.dir`, for the attachment endpoints and `keystone seed` alike. Attachments
//! live in its `allocations/` directory, which must be a real directory inside the root
//! (never a symlink); a file is only ever created new (`O_CREAT|O_EXCL|O_NOFOLLOW`), so an
//! existing entry, a symlink included, is never followed or replaced.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Attachments live in this directory of the upload root; `file` values start with it.
pub const SUBDIR: &str = "allocations";

fn io_error(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// The attachments directory of an upload root, checked to be a real directory inside the
/// (canonical) root.
#[derive(Debug)]
pub struct UploadDir {
    dir: PathBuf,
}

impl UploadDir {
    /// `configured` is `upload.dir`; with `make`, missing directories are created (0770).
    pub fn open(configured: &Path, make: bool) -> io::Result<UploadDir> {
        if make && !configured.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o770)
                .create(configured)?;
        }
        // The root itself may be a symlink an administrator set up; it is resolved once.
        let root = std::fs::canonicalize(configured)?;
        let dir = root.join(SUBDIR);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(io_error(format!(
                    "{} is not a plain directory (symlinks are refused)",
                    dir.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && make => {
                DirBuilder::new().mode(0o770).create(&dir)?;
            }
            Err(e) => return Err(e),
        }
        if std::fs::canonicalize(&dir)? != dir {
            return Err(io_error(format!(
                "{} resolves outside the upload directory",
                dir.display()
            )));
        }
        Ok(UploadDir { dir })
    }

    /// The checked attachments directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Creates the new file `name` (one plain path segment) directly inside the directory
    /// with `content`, and returns its `file` value (`allocations/<name>`). An existing
    /// entry of that name, a symlink included, is never followed or replaced: the error is
    /// then [`io::ErrorKind::AlreadyExists`], for the caller to pick another name. A file
    /// that could not be written completely is removed again.
    pub fn create(&self, name: &str, content: &mut dyn Read) -> io::Result<String> {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a plain file name"),
            ));
        }
        let target = self.dir.join(name);
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&target)?;
        let written = io::copy(content, &mut out)
            .and_then(|_| out.flush())
            .and_then(|()| out.sync_all());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&target);
            return Err(e);
        }
        Ok(format!("{SUBDIR}/{name}"))
    }

    /// Copies an upload into a new file with a random name and a known extension; returns
    /// the `file` value.
    pub fn store(&self, temp: &Path, ext: &str) -> io::Result<String> {
        let mut src = File::open(temp)?;
        for _ in 0..8 {
            let name = format!("{}.{ext}", uuid::Uuid::new_v4().simple());
            match self.create(&name, &mut src) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                other => return other,
            }
        }
        Err(io_error("no free file name for the upload".into()))
    }

    /// The path of a stored `file` value, only when it names a regular file (not a
    /// symlink) directly inside the attachments directory.
    pub fn resolve(&self, file: &str) -> Option<PathBuf> {
        let rest = file.strip_prefix(SUBDIR)?.strip_prefix('/')?;
        if rest.is_empty() || rest == "." || rest == ".." || rest.contains(['/', '\\', '\0']) {
            return None;
        }
        let path = self.dir.join(rest);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if !meta.file_type().is_file() {
            return None;
        }
        let canonical = std::fs::canonicalize(&path).ok()?;
        (canonical.parent() == Some(self.dir.as_path())).then_some(path)
    }
}

/// Reads a stored file without following symlinks, checking that what was opened is the
/// regular file that [`UploadDir::resolve`] looked at.
pub fn read_stored(path: &Path) -> io::Result<Vec<u8>> {
    let before = std::fs::symlink_metadata(path)?;
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() || meta.dev() != before.dev() || meta.ino() != before.ino() {
        return Err(io_error(format!(
            "{} changed while opening",
            path.display()
        )));
    }
    let mut content = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    f.read_to_end(&mut content)?;
    Ok(content)
}

/// Removes stored files (values of `file`); anything not directly inside
/// `<upload.dir>/allocations/` is left alone. Failures are logged, never returned. Inside a
/// batch the removal waits for the batch to commit (a rolled-back batch keeps them).
pub async fn remove_files(db: &crate::store::Db, config: &crate::config::Config, files: &[String]) {
    if db.defer_removal(files) {
        return;
    }
    remove_stored(config, files).await;
}

/// Removes stored files now, whatever transaction is open.
pub async fn remove_stored(config: &crate::config::Config, files: &[String]) {
    let files = files.to_vec();
    let root = config.upload_dir();
    let _ = tokio::task::spawn_blocking(move || {
        let storage = match UploadDir::open(&root, false) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot remove attachment files: {e}");
                return;
            }
        };
        for file in files {
            match storage.resolve(&file) {
                Some(path) => {
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!("cannot remove attachment file {}: {e}", path.display());
                    }
                }
                None => tracing::debug!("attachment file {file:?} is not stored here"),
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_entry_is_never_followed_or_replaced() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let dir = UploadDir::open(root.path(), true).expect("open");
        let target = outside.path().join("victim.txt");
        std::os::unix::fs::symlink(&target, dir.path().join("a.txt")).expect("symlink");
        let e = dir
            .create("a.txt", &mut &b"data"[..])
            .expect_err("a symlink is in the way");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(!target.exists(), "nothing written through the symlink");
        std::fs::write(dir.path().join("b.txt"), "kept").expect("write");
        assert!(dir.create("b.txt", &mut &b"new"[..]).is_err());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("b.txt")).expect("read"),
            "kept"
        );
        for name in ["", ".", "..", "x/y", "..\\y"] {
            let e = dir.create(name, &mut &b""[..]).expect_err(name);
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{name}");
        }
        let file = dir.create("c.txt", &mut &b"hello"[..]).expect("create");
        assert_eq!(file, "allocations/c.txt");
        let path = dir.resolve(&file).expect("resolves");
        assert_eq!(read_stored(&path).expect("read"), b"hello");
        assert_eq!(
            dir.resolve("allocations/a.txt"),
            None,
            "symlinks do not resolve"
        );
    }

    #[test]
    fn a_symlinked_attachments_directory_is_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(outside.path(), root.path().join(SUBDIR)).expect("symlink");
        assert!(UploadDir::open(root.path(), true).is_err());
        assert!(UploadDir::open(root.path(), false).is_err());
    }
}
