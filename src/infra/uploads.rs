//! Uploads confined to their directory: the only code that creates, finds or reads files
//! under `upload.dir`, for the attachment endpoints and `keystone seed` alike. Attachments
//! live in its `allocations/` directory, which must be a real directory inside the root
//! (never a symlink); a file is only ever created new (`O_CREAT|O_EXCL|O_NOFOLLOW`), so an
//! existing entry, a symlink included, is never followed or replaced. What a stored file is
//! called is decided here too: its type from the extension (never the content), the display
//! name kept from the client's file name, its path in a URL.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
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

/// Stores an upload (the temp file of a multipart part) under a new name with extension
/// `ext`, off the async threads; returns its `file` value. Inside a batch the file is removed
/// again if the batch rolls back.
pub async fn store_upload(
    db: &crate::store::Db,
    config: &crate::config::Config,
    temp: &Path,
    ext: &'static str,
) -> io::Result<String> {
    let root = config.upload_dir();
    let temp = temp.to_path_buf();
    let file = tokio::task::spawn_blocking(move || UploadDir::open(&root, true)?.store(&temp, ext))
        .await
        .map_err(io::Error::other)??;
    db.remove_on_rollback(&file);
    Ok(file)
}

/// Finds a stored `file` value under the upload root for a download and, with `content`,
/// reads it (without it the web server sends the file: only its presence is checked).
/// Blocking: run it off the async threads.
pub fn read_for_download(root: &Path, file: &str, content: bool) -> io::Result<Option<Vec<u8>>> {
    let storage = UploadDir::open(root, false)?;
    let path = storage
        .resolve(file)
        .ok_or_else(|| io_error(format!("no stored file for {file:?}")))?;
    if content {
        read_stored(&path).map(Some)
    } else {
        Ok(None)
    }
}

/// Removes a stored file once no attachment refers to it any more.
pub async fn remove_unreferenced(
    db: &crate::store::Db,
    config: &crate::config::Config,
    file: &str,
) -> Result<(), crate::store::DbError> {
    if crate::store::attachments::references(db, file).await? == 0 {
        remove_files(db, config, &[file.to_string()]).await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Names and types
// ---------------------------------------------------------------------------------------

/// Upstream's (Django's) reading of a client file name: the part after the last `/` or
/// `\`, without control and invisible formatting characters; `None` for nothing usable.
pub fn client_base_name(raw: &str) -> Option<String> {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let kept: String = last
        .chars()
        .filter(|c| {
            !c.is_control()
                && !matches!(
                    *c,
                    '\u{200B}'..='\u{200F}'
                        | '\u{202A}'..='\u{202E}'
                        | '\u{2060}'..='\u{2069}'
                        | '\u{2028}'
                        | '\u{2029}'
                        | '\u{FEFF}'
                )
        })
        .collect();
    let name = kept.trim();
    if name.is_empty() || name == "." || name == ".." {
        None
    } else {
        Some(name.to_string())
    }
}

/// Shortens a display name to `max` characters, keeping a short extension.
pub fn fit_name(name: &str, max: usize) -> String {
    let count = name.chars().count();
    if count <= max {
        return name.to_string();
    }
    let ext = name
        .rfind('.')
        .map(|i| &name[i..])
        .filter(|e| e.chars().count() <= 16)
        .unwrap_or("");
    let keep = max - ext.chars().count();
    let stem: String = name.chars().take(keep).collect();
    format!("{stem}{ext}")
}

/// Python's `splitext` extension without the dot (leading dots of the name do not count).
fn extension(name: &str) -> Option<&str> {
    let base = name.rsplit('/').next().unwrap_or(name);
    let (_, ext) = base.trim_start_matches('.').rsplit_once('.')?;
    (!ext.is_empty()).then_some(ext)
}

/// The MIME type of a file name from its extension (domain.md §7.6), with the extension
/// as stored. Content is never sniffed.
pub fn mime_for(name: &str) -> Option<(&'static str, &'static str)> {
    let ext = extension(name)?.to_lowercase();
    MIME_TYPES.iter().find(|(e, _)| *e == ext).copied()
}

/// Extension table: upstream's allow-listed types exactly as the reference container
/// resolves them (plus `md`/`markdown`), and common types that are not allow-listed by
/// default (so they are named in the error and can be allowed in `upload.allowed_types`).
/// Compression suffixes (`.gz`, `.bz2`, `.xz`, `.Z`, `.br`) are deliberately unknown:
/// `report.pdf.gz` is refused instead of being taken for a PDF.
const MIME_TYPES: &[(&str, &str)] = &[
    ("pdf", "application/pdf"),
    ("rtf", "application/rtf"),
    ("doc", "application/msword"),
    ("dot", "application/msword"),
    ("wiz", "application/msword"),
    (
        "docx",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ),
    ("odt", "application/vnd.oasis.opendocument.text"),
    ("latex", "application/x-latex"),
    ("tex", "application/x-tex"),
    ("xls", "application/vnd.ms-excel"),
    ("xla", "application/vnd.ms-excel"),
    ("xlb", "application/vnd.ms-excel"),
    ("xlc", "application/vnd.ms-excel"),
    ("xlm", "application/vnd.ms-excel"),
    ("xlt", "application/vnd.ms-excel"),
    ("xlw", "application/vnd.ms-excel"),
    (
        "xlsx",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ),
    ("ods", "application/vnd.oasis.opendocument.spreadsheet"),
    ("ppt", "application/vnd.ms-powerpoint"),
    ("pot", "application/vnd.ms-powerpoint"),
    ("ppa", "application/vnd.ms-powerpoint"),
    ("pps", "application/vnd.ms-powerpoint"),
    ("pwz", "application/vnd.ms-powerpoint"),
    (
        "pptx",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ),
    ("txt", "text/plain"),
    ("text", "text/plain"),
    ("conf", "text/plain"),
    ("def", "text/plain"),
    ("in", "text/plain"),
    ("ksh", "text/plain"),
    ("list", "text/plain"),
    ("log", "text/plain"),
    ("pl", "text/plain"),
    ("md", "text/markdown"),
    ("markdown", "text/markdown"),
    ("rtx", "text/richtext"),
    ("csv", "text/csv"),
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("jpe", "image/jpeg"),
    ("gif", "image/gif"),
    ("svg", "image/svg+xml"),
    ("svgz", "image/svg+xml"),
    ("tif", "image/tiff"),
    ("tiff", "image/tiff"),
    ("bmp", "image/bmp"),
    // Known, not allow-listed by default.
    ("exe", "application/x-msdownload"),
    ("dll", "application/x-msdownload"),
    ("com", "application/x-msdownload"),
    ("bat", "application/x-msdownload"),
    ("msi", "application/x-msdownload"),
    ("zip", "application/zip"),
    ("tar", "application/x-tar"),
    ("7z", "application/x-7z-compressed"),
    ("rar", "application/x-rar-compressed"),
    ("jar", "application/java-archive"),
    ("apk", "application/vnd.android.package-archive"),
    ("iso", "application/x-iso9660-image"),
    ("dmg", "application/x-apple-diskimage"),
    ("bin", "application/octet-stream"),
    ("json", "application/json"),
    ("xml", "application/xml"),
    ("yaml", "application/yaml"),
    ("yml", "application/yaml"),
    ("toml", "application/toml"),
    ("sql", "application/sql"),
    ("html", "text/html"),
    ("htm", "text/html"),
    ("xhtml", "application/xhtml+xml"),
    ("css", "text/css"),
    ("js", "application/javascript"),
    ("mjs", "application/javascript"),
    ("wasm", "application/wasm"),
    ("sh", "application/x-sh"),
    ("csh", "application/x-csh"),
    ("py", "text/x-python"),
    ("c", "text/x-c"),
    ("h", "text/x-c"),
    ("cpp", "text/x-c"),
    ("java", "text/x-java-source"),
    ("php", "application/x-httpd-php"),
    ("tsv", "text/tab-separated-values"),
    ("ics", "text/calendar"),
    ("vcf", "text/x-vcard"),
    ("srt", "application/x-subrip"),
    ("eps", "application/postscript"),
    ("ps", "application/postscript"),
    ("ai", "application/postscript"),
    ("epub", "application/epub+zip"),
    ("odp", "application/vnd.oasis.opendocument.presentation"),
    ("odg", "application/vnd.oasis.opendocument.graphics"),
    ("swf", "application/x-shockwave-flash"),
    ("webp", "image/webp"),
    ("ico", "image/x-icon"),
    ("heic", "image/heic"),
    ("psd", "image/vnd.adobe.photoshop"),
    ("mp3", "audio/mpeg"),
    ("wav", "audio/x-wav"),
    ("ogg", "audio/ogg"),
    ("flac", "audio/flac"),
    ("m4a", "audio/mp4"),
    ("mp4", "video/mp4"),
    ("mpg", "video/mpeg"),
    ("mpeg", "video/mpeg"),
    ("mov", "video/quicktime"),
    ("avi", "video/x-msvideo"),
    ("mkv", "video/x-matroska"),
    ("webm", "video/webm"),
    ("woff", "font/woff"),
    ("woff2", "font/woff2"),
    ("ttf", "font/ttf"),
    ("otf", "font/otf"),
];

/// Bytes other than unreserved characters and `/`, percent-encoded in X-Accel-Redirect.
const NOT_UNRESERVED_OR_SLASH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// Percent-encodes everything but unreserved characters and `/`: a stored `file` value as
/// the path of a URL (nginx's X-Accel-Redirect).
pub fn percent_encode_path(path: &str) -> String {
    utf8_percent_encode(path, NOT_UNRESERVED_OR_SLASH).to_string()
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

    #[test]
    fn client_names_become_base_names() {
        assert_eq!(client_base_name("../x.txt").as_deref(), Some("x.txt"));
        assert_eq!(client_base_name("/etc/passwd").as_deref(), Some("passwd"));
        assert_eq!(
            client_base_name("C:\\Users\\ann\\report.pdf").as_deref(),
            Some("report.pdf")
        );
        assert_eq!(
            client_base_name("a\0b\u{202E}.txt").as_deref(),
            Some("ab.txt")
        );
        assert_eq!(client_base_name("dir/.."), None);
        assert_eq!(client_base_name("../"), None);
        assert_eq!(client_base_name(" . "), None);
    }

    #[test]
    fn types_come_from_the_extension_only() {
        assert_eq!(mime_for("a.PDF"), Some(("pdf", "application/pdf")));
        assert_eq!(mime_for("notes.md").map(|m| m.1), Some("text/markdown"));
        assert_eq!(
            mime_for("x.exe").map(|m| m.1),
            Some("application/x-msdownload")
        );
        assert_eq!(mime_for("report.pdf.gz"), None);
        assert_eq!(mime_for(".txt"), None);
        assert_eq!(mime_for("noext"), None);
        assert_eq!(mime_for("a."), None);
        assert_eq!(mime_for("allocations/abc.svgz").map(|m| m.0), Some("svgz"));
    }

    #[test]
    fn long_names_keep_their_extension() {
        let long = format!("{}.txt", "a".repeat(5000));
        let fitted = fit_name(&long, 250);
        assert_eq!(fitted.chars().count(), 250);
        assert!(fitted.ends_with(".txt"));
        assert_eq!(fit_name("short.txt", 250), "short.txt");
    }

    #[test]
    fn accel_paths_encode_all_but_unreserved_and_slash() {
        assert_eq!(
            percent_encode_path("allocations/a b%é~_-.txt"),
            "allocations/a%20b%25%C3%A9~_-.txt"
        );
        assert_eq!(percent_encode_path("x?y#z"), "x%3Fy%23z");
    }
}
