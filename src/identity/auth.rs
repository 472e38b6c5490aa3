//! Credentials without HTTP: signed session tokens bound to the password they were issued
//! under, CSRF tokens in Django's masked format, and hashed API keys.

use base64::Engine;
use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What the `sessionid` cookie carries (signed with `security.secret_key`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionClaims {
    /// User id.
    pub sub: i64,
    /// Session id: revocation (logout) is by this value.
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
    /// Fingerprint of the password hash at login: a password change ends every session.
    pub pwd: String,
}

/// A short, non-reversible fingerprint of a stored password hash.
pub fn password_fingerprint(password_hash: &str) -> String {
    let digest = Sha256::digest(password_hash.as_bytes());
    hex(&digest[..12])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_alnum(len: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// Issues a session token valid for `age_secs`.
pub fn issue_session(
    secret: &str,
    user_id: i64,
    password_hash: &str,
    age_secs: u64,
) -> Result<(String, SessionClaims), String> {
    let now = Utc::now().timestamp();
    let claims = SessionClaims {
        sub: user_id,
        jti: random_alnum(32),
        iat: now,
        exp: now + i64::try_from(age_secs).unwrap_or(i64::MAX / 2),
        pwd: password_fingerprint(password_hash),
    };
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| e.to_string())?;
    Ok((token, claims))
}

/// Verifies signature and expiry; None for anything else.
pub fn decode_session(secret: &str, token: &str) -> Option<SessionClaims> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp"]);
    jsonwebtoken::decode::<SessionClaims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .ok()
    .map(|d| d.claims)
}

// ---- CSRF (Django-compatible: 32-character secret, 64-character masked form) ----

const CSRF_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
pub const CSRF_SECRET_LENGTH: usize = 32;

/// A fresh CSRF cookie value (masked, 64 characters, as Django sets it).
pub fn new_csrf_token() -> String {
    mask_csrf(&random_alnum(CSRF_SECRET_LENGTH))
}

fn csrf_index(c: u8) -> usize {
    CSRF_CHARS.iter().position(|x| *x == c).unwrap_or(0)
}

pub fn mask_csrf(secret: &str) -> String {
    let mask = random_alnum(CSRF_SECRET_LENGTH);
    let n = CSRF_CHARS.len();
    let cipher: String = secret
        .bytes()
        .zip(mask.bytes())
        .map(|(s, m)| CSRF_CHARS[(csrf_index(s) + csrf_index(m)) % n] as char)
        .collect();
    format!("{mask}{cipher}")
}

fn unmask_csrf(token: &str) -> String {
    if token.len() == CSRF_SECRET_LENGTH {
        return token.to_string();
    }
    let (mask, cipher) = token.split_at(CSRF_SECRET_LENGTH);
    let n = CSRF_CHARS.len();
    cipher
        .bytes()
        .zip(mask.bytes())
        .map(|(c, m)| CSRF_CHARS[(csrf_index(c) + n - csrf_index(m)) % n] as char)
        .collect()
}

fn well_formed(token: &str) -> Result<(), &'static str> {
    if token.len() != CSRF_SECRET_LENGTH && token.len() != 2 * CSRF_SECRET_LENGTH {
        return Err("has incorrect length.");
    }
    if !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("has invalid characters.");
    }
    Ok(())
}

/// Why a session-authenticated unsafe request was refused; rendered as
/// `CSRF Failed: <reason>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsrfFailure {
    BadOrigin(String),
    NoReferer,
    BadReferer(String),
    InsecureReferer,
    NoCookie,
    BadCookie(&'static str),
    TokenMissing,
    BadToken(&'static str),
    TokenIncorrect,
}

impl CsrfFailure {
    pub fn detail(&self) -> String {
        let reason = match self {
            CsrfFailure::BadOrigin(o) => {
                format!("Origin checking failed - {o} does not match any trusted origins.")
            }
            CsrfFailure::NoReferer => "Referer checking failed - no Referer.".into(),
            CsrfFailure::BadReferer(r) => {
                format!("Referer checking failed - {r} does not match any trusted origins.")
            }
            CsrfFailure::InsecureReferer => {
                "Referer checking failed - Referer is insecure while host is secure.".into()
            }
            CsrfFailure::NoCookie => "CSRF cookie not set.".into(),
            CsrfFailure::BadCookie(why) => format!("CSRF cookie {why}"),
            CsrfFailure::TokenMissing => "CSRF token missing.".into(),
            CsrfFailure::BadToken(why) => {
                format!("CSRF token from the 'X-Csrftoken' HTTP header {why}")
            }
            CsrfFailure::TokenIncorrect => {
                "CSRF token from the 'X-Csrftoken' HTTP header incorrect.".into()
            }
        };
        format!("CSRF Failed: {reason}")
    }
}

/// What the CSRF check needs to know about a request.
pub struct CsrfRequest<'a> {
    pub secure: bool,
    /// `scheme://host[:port]` of the request as the client addressed it.
    pub own_origin: String,
    pub origin: Option<&'a str>,
    pub referer: Option<&'a str>,
    pub cookie: Option<&'a str>,
    pub header: Option<&'a str>,
    pub trusted_origins: &'a [String],
}

fn origin_of(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    let host = u.host_str()?;
    Some(match u.port() {
        Some(p) => format!("{}://{host}:{p}", u.scheme()),
        None => format!("{}://{host}", u.scheme()),
    })
}

fn trusted(origin: &str, req: &CsrfRequest) -> bool {
    let norm = |o: &str| origin_of(o).unwrap_or_else(|| o.to_ascii_lowercase());
    let o = norm(origin);
    o == norm(&req.own_origin) || req.trusted_origins.iter().any(|t| norm(t) == o)
}

/// Django's order: Origin (when sent), else Referer on HTTPS, then cookie, then token.
pub fn check_csrf(req: &CsrfRequest) -> Result<(), CsrfFailure> {
    if let Some(origin) = req.origin {
        if !trusted(origin, req) {
            return Err(CsrfFailure::BadOrigin(origin.to_string()));
        }
    } else if req.secure {
        let referer = req.referer.ok_or(CsrfFailure::NoReferer)?;
        let Some(ref_origin) = origin_of(referer) else {
            return Err(CsrfFailure::BadReferer(referer.to_string()));
        };
        if !ref_origin.starts_with("https://") {
            return Err(CsrfFailure::InsecureReferer);
        }
        if !trusted(&ref_origin, req) {
            return Err(CsrfFailure::BadReferer(referer.to_string()));
        }
    }
    let cookie = req.cookie.ok_or(CsrfFailure::NoCookie)?;
    well_formed(cookie).map_err(CsrfFailure::BadCookie)?;
    let header = req
        .header
        .filter(|h| !h.is_empty())
        .ok_or(CsrfFailure::TokenMissing)?;
    well_formed(header).map_err(CsrfFailure::BadToken)?;
    let (a, b) = (unmask_csrf(header), unmask_csrf(cookie));
    if constant_time_eq(a.as_bytes(), b.as_bytes()) {
        Ok(())
    } else {
        Err(CsrfFailure::TokenIncorrect)
    }
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---- API keys (`Authorization: Token <key>`) ----

/// A new API key: 40 hex characters, as upstream's tokens.
pub fn generate_api_key() -> String {
    let mut bytes = [0u8; 20];
    rand::rng().fill(&mut bytes);
    hex(&bytes)
}

/// Keys are stored only as this hash.
pub fn hash_api_key(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

/// Encodes bytes as URL-safe base64 without padding (used for opaque identifiers).
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_round_trip_and_tamper_detection() {
        let (token, claims) = issue_session("secret", 7, "argon2$x", 60).expect("issue");
        assert_eq!(decode_session("secret", &token), Some(claims.clone()));
        assert_eq!(decode_session("other-secret", &token), None);
        let mut tampered = token.clone();
        tampered.pop();
        assert_eq!(decode_session("secret", &tampered), None);
        assert_eq!(claims.pwd, password_fingerprint("argon2$x"));
        assert_ne!(claims.pwd, password_fingerprint("argon2$y"));
    }

    #[test]
    fn expired_sessions_are_rejected() {
        let (token, _) = issue_session("secret", 7, "h", 0).expect("issue");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(decode_session("secret", &token), None);
    }

    fn req<'a>(cookie: Option<&'a str>, header: Option<&'a str>) -> CsrfRequest<'a> {
        CsrfRequest {
            secure: false,
            own_origin: "http://localhost:8000".into(),
            origin: None,
            referer: None,
            cookie,
            header,
            trusted_origins: &[],
        }
    }

    #[test]
    fn csrf_accepts_masked_and_unmasked_forms_of_the_cookie() {
        let cookie = new_csrf_token();
        assert_eq!(cookie.len(), 64);
        assert_eq!(check_csrf(&req(Some(&cookie), Some(&cookie))), Ok(()));
        let secret = unmask_csrf(&cookie);
        assert_eq!(check_csrf(&req(Some(&cookie), Some(&secret))), Ok(()));
        let remasked = mask_csrf(&secret);
        assert_ne!(remasked, cookie);
        assert_eq!(check_csrf(&req(Some(&cookie), Some(&remasked))), Ok(()));
    }

    #[test]
    fn csrf_failures_carry_djangos_reasons() {
        let cookie = new_csrf_token();
        let x32 = "x".repeat(32);
        assert_eq!(
            check_csrf(&req(Some(&cookie), None)),
            Err(CsrfFailure::TokenMissing)
        );
        assert_eq!(
            check_csrf(&req(None, Some(&cookie))),
            Err(CsrfFailure::NoCookie)
        );
        assert_eq!(
            check_csrf(&req(Some(&cookie), Some(&x32))),
            Err(CsrfFailure::TokenIncorrect)
        );
        assert_eq!(
            check_csrf(&req(Some(&cookie), Some("short"))),
            Err(CsrfFailure::BadToken("has incorrect length."))
        );
        let bad_chars = "!".repeat(32);
        assert_eq!(
            check_csrf(&req(Some(&cookie), Some(&bad_chars))),
            Err(CsrfFailure::BadToken("has invalid characters."))
        );
        assert_eq!(
            CsrfFailure::TokenMissing.detail(),
            "CSRF Failed: CSRF token missing."
        );
        let mut r = req(Some(&cookie), Some(&cookie));
        r.origin = Some("http://evil.example");
        assert_eq!(
            check_csrf(&r),
            Err(CsrfFailure::BadOrigin("http://evil.example".into()))
        );
        let trusted_list = vec!["http://localhost:4200".to_string()];
        r.origin = Some("http://localhost:4200");
        r.trusted_origins = &trusted_list;
        assert_eq!(check_csrf(&r), Ok(()));
        let mut r = req(Some(&cookie), Some(&cookie));
        r.secure = true;
        assert_eq!(check_csrf(&r), Err(CsrfFailure::NoReferer));
    }

    #[test]
    fn api_keys_are_hex_and_hash_stably() {
        let k = generate_api_key();
        assert_eq!(k.len(), 40);
        assert!(k.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(hash_api_key(&k), hash_api_key(&k));
        assert_ne!(hash_api_key(&k), hash_api_key(&generate_api_key()));
    }
}
