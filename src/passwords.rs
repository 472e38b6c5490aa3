//! Password hashing: argon2id, stored in Django's `argon2$argon2id$...` format so the column
//! stays readable by upstream tooling.

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use rand::Rng;

const DJANGO_ARGON2_PREFIX: &str = "argon2";

/// Hashes a password with a fresh random salt.
pub fn hash(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    rand::rng().fill(&mut salt);
    let phc: PasswordHash = Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map_err(|e| e.to_string())?;
    let phc = phc.to_string();
    Ok(format!("{DJANGO_ARGON2_PREFIX}{phc}"))
}

/// Checks a password against a stored argon2 hash; any other or malformed hash fails.
pub fn verify(password: &str, stored: &str) -> bool {
    let Some(phc) = stored.strip_prefix(DJANGO_ARGON2_PREFIX) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), phc)
        .is_ok()
}

/// A random password of `len` letters and digits, for generated accounts.
pub fn generate(len: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_and_uses_django_argon2_format() {
        let h = hash("correct horse").expect("hash");
        assert!(h.starts_with("argon2$argon2id$v=19$"), "{h}");
        assert!(verify("correct horse", &h));
        assert!(!verify("wrong horse", &h));
        assert!(!verify("correct horse", "pbkdf2_sha256$1$salt$x"));
        assert!(!verify("x", "argon2$garbage"));
    }

    #[test]
    fn generated_passwords_differ() {
        let a = generate(20);
        assert_eq!(a.len(), 20);
        assert_ne!(a, generate(20));
    }
}
