//! The signing key: configured (`security.secret_key[_file]`), else the key stored in
//! `<state_dir>/secret_key`, else generated once and stored there (spec §1.2.1).

use crate::config::Config;
use rand::Rng;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

pub const FILE_NAME: &str = "secret_key";

/// Returns the secret key. With `may_generate` a missing key is created and stored (with a
/// warning); without it a missing key is an error that says what to configure.
pub fn resolve(config: &Config, may_generate: bool) -> Result<String, String> {
    if let Some(key) = &config.settings.security.secret_key {
        return Ok(key.clone());
    }
    let path = config.state_dir.join(FILE_NAME);
    match std::fs::read_to_string(&path) {
        // Without `may_generate` (PostgreSQL) a stored key must be as strong as a configured one.
        Ok(text)
            if !may_generate
                && !text.trim().is_empty()
                && text.trim().len() < crate::config::MIN_SECRET_KEY_BYTES =>
        {
            return Err(format!(
                "configuration error: security.secret_key (from {}): {}",
                path.display(),
                crate::config::weak_secret_message(text.trim().len())
            ));
        }
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    if !may_generate {
        return Err(format!(
            "configuration error: security.secret_key: no secret key configured for a production (PostgreSQL) deployment; set security.secret_key_file (e.g. to /etc/keystone/secret_key, created with `head -c 48 /dev/urandom | base64 > /etc/keystone/secret_key`) or SECURE_SECRET_KEY, or store one in {}",
            path.display()
        ));
    }
    let key = generate();
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| format!("cannot create {}: {e}", config.state_dir.display()))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| {
            format!(
                "cannot store a generated secret key in {}: {e}",
                path.display()
            )
        })?;
    file.write_all(key.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    tracing::warn!(
        "no secret key configured: generated one and stored it in {} (set security.secret_key_file for production)",
        path.display()
    );
    Ok(key)
}

/// 50 random characters, as upstream's generated keys.
pub fn generate() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789!@#$%^&*(-_=+)";
    let mut rng = rand::rng();
    (0..50)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}
