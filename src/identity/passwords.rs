//! Passwords: hashing (argon2id, stored in Django's `argon2$argon2id$...` format so the column
//! stays readable by upstream tooling), verification of upstream's Django PBKDF2 hashes so
//! migrated accounts can still log in (and be rehashed), and Django's default validators.
//!
//! Hashing and verification cost tens of milliseconds of CPU each, so they run on tokio's
//! blocking threads, at most `security.password_hash_concurrency` at a time per process: a
//! burst of logins queues there instead of occupying the request executor (and the systemd
//! watchdog ping that runs on it).

use argon2::{Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use rand::Rng;
use std::collections::HashSet;
use std::sync::{Arc, LazyLock, OnceLock};
use tokio::sync::Semaphore;

const DJANGO_ARGON2_PREFIX: &str = "argon2";
const DJANGO_PBKDF2_ALGORITHM: &str = "pbkdf2_sha256";

/// Bounds the hashes computed at once; set by [`configure`], else the default on first use.
static HASHING: OnceLock<Hashing> = OnceLock::new();

struct Hashing {
    permits: Arc<Semaphore>,
    size: usize,
}

impl Hashing {
    fn new(size: usize) -> Hashing {
        Hashing {
            permits: Arc::new(Semaphore::new(size)),
            size,
        }
    }
}

/// The hash every login without a checkable stored hash (unknown username, unusable or
/// unknown-format password) is verified against, so that such a login costs the same time
/// as a wrong password for a real account. Made with the current algorithm and parameters.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| hash_now(&generate(24)).unwrap_or_default());

/// Hashes at once when `security.password_hash_concurrency` is 0: one less than the CPUs
/// (at least one), so one core stays free for the request executor during a login burst.
pub fn default_concurrency() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .saturating_sub(1)
        .max(1)
}

/// Sets this process's hashing concurrency (0: [`default_concurrency`]) and computes the
/// dummy hash in the background, so the first unknown-username login is not the slow one.
/// Returns the concurrency in effect: only the first call (or first use) decides.
pub fn configure(concurrency: u64) -> usize {
    let wanted = match usize::try_from(concurrency) {
        Ok(0) => default_concurrency(),
        Ok(n) => n.min(Semaphore::MAX_PERMITS),
        Err(_) => Semaphore::MAX_PERMITS,
    };
    std::thread::spawn(|| LazyLock::force(&DUMMY_HASH));
    HASHING.get_or_init(|| Hashing::new(wanted)).size
}

fn hashing() -> &'static Hashing {
    HASHING.get_or_init(|| Hashing::new(default_concurrency()))
}

/// Runs `work` on a blocking thread once a hashing permit is free. The permit moves into
/// the thread, so a request that is abandoned meanwhile (client gone) cannot raise the
/// number of hashes in flight above the bound. None when the work panicked.
async fn off_executor<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    // The semaphore is never closed, so acquiring only waits.
    let permit = hashing().permits.clone().acquire_owned().await.ok()?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
    .ok()
}

/// Hashes a password with a fresh random salt, off the request executor.
pub async fn hash(password: &str) -> Result<String, String> {
    let password = password.to_owned();
    off_executor(move || hash_now(&password))
        .await
        .unwrap_or_else(|| Err("password hashing failed".into()))
}

/// Checks a password against a stored hash (None: no such account), off the request
/// executor. Anything without a hash Keystone can check — no account, an unusable password
/// (`!...`), an empty or unknown-format value — is verified against [`DUMMY_HASH`] and
/// fails, so it costs the same time as a wrong password for a real account.
pub async fn verify(password: &str, stored: Option<&str>) -> bool {
    let password = password.to_owned();
    let candidate = match candidate(stored) {
        Candidate::Stored(hash) => Some(hash.to_owned()),
        Candidate::Dummy => None,
    };
    off_executor(move || match candidate {
        Some(hash) => verify_now(&password, &hash),
        None => {
            let _ = verify_now(&password, &DUMMY_HASH);
            false
        }
    })
    .await
    .unwrap_or(false)
}

/// What a login verifies the password against.
#[derive(Debug, PartialEq, Eq)]
enum Candidate<'a> {
    /// The account's own hash, in a format Keystone checks.
    Stored(&'a str),
    /// The dummy hash: there is nothing to check, but the time is spent all the same.
    Dummy,
}

fn candidate(stored: Option<&str>) -> Candidate<'_> {
    match stored {
        Some(hash) if hash.starts_with("argon2$") || hash.starts_with("pbkdf2_sha256$") => {
            Candidate::Stored(hash)
        }
        _ => Candidate::Dummy,
    }
}

/// Whether the stored value is a local credential: Django's rule (anything not starting with
/// `!`, the mark of `set_unusable_password`), except that an empty value, which no password
/// matches, is no credential either. Accounts without one are the LDAP accounts (created by
/// LDAP login or sync) and the only ones an LDAP login may map onto.
pub fn has_usable_password(stored: &str) -> bool {
    !stored.is_empty() && !stored.starts_with('!')
}

/// [`hash`] on the current thread (tests and the dummy hash).
fn hash_now(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    rand::rng().fill(&mut salt);
    let phc: PasswordHash = Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map_err(|e| e.to_string())?;
    let phc = phc.to_string();
    Ok(format!("{DJANGO_ARGON2_PREFIX}{phc}"))
}

/// Checks a password against a stored hash on the current thread: our argon2 format or
/// Django's `pbkdf2_sha256$<iterations>$<salt>$<base64 hash>`. Unusable passwords (`!...`),
/// other formats and malformed hashes never verify.
fn verify_now(password: &str, stored: &str) -> bool {
    if stored.starts_with('!') {
        return false;
    }
    if let Some(phc) = stored.strip_prefix(DJANGO_ARGON2_PREFIX) {
        return Argon2::default()
            .verify_password(password.as_bytes(), phc)
            .is_ok();
    }
    if stored.starts_with(DJANGO_PBKDF2_ALGORITHM) {
        return verify_pbkdf2(password, stored);
    }
    false
}

/// Django's PBKDF2PasswordHasher: re-encode with the stored salt and iterations and compare
/// the whole encoded string in constant time.
fn verify_pbkdf2(password: &str, stored: &str) -> bool {
    let mut parts = stored.splitn(4, '$');
    let (Some(DJANGO_PBKDF2_ALGORITHM), Some(iterations), Some(salt), Some(expected)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    // Python's hashlib refuses fewer than one iteration; so do we.
    let Ok(iterations) = iterations.parse::<u32>() else {
        return false;
    };
    if iterations == 0 {
        return false;
    }
    let mut derived = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(
        password.as_bytes(),
        salt.as_bytes(),
        iterations,
        &mut derived,
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(derived);
    constant_time_eq(encoded.as_bytes(), expected.as_bytes())
}

/// Compares without an early exit, so the time taken does not reveal the matching prefix
/// (the length is public: every Django SHA-256 hash encodes to 44 characters).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Whether a stored hash should be replaced by a fresh [`hash`] after a successful login:
/// true for anything but argon2id with our current parameters (Django PBKDF2, argon2i,
/// other costs, unusable or unknown values).
pub fn needs_rehash(stored: &str) -> bool {
    let Some(phc) = stored.strip_prefix(DJANGO_ARGON2_PREFIX) else {
        return true;
    };
    let Ok(parsed) = PasswordHash::new(phc) else {
        return true;
    };
    if parsed.algorithm.as_str() != "argon2id" || parsed.version != Some(0x13) {
        return true;
    }
    let Ok(params) = Params::try_from(&parsed) else {
        return true;
    };
    let current = Params::default();
    (params.m_cost(), params.t_cost(), params.p_cost())
        != (current.m_cost(), current.t_cost(), current.p_cost())
}

/// A random password of `len` letters and digits, for generated accounts.
pub fn generate(len: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

pub const TOO_SHORT: &str = "This password is too short. It must contain at least 8 characters.";
pub const TOO_COMMON: &str = "This password is too common.";
pub const ENTIRELY_NUMERIC: &str = "This password is entirely numeric.";

const MIN_LENGTH: usize = 8;

/// Django's common-password list (the 19,640 entries it ships), one per line.
static COMMON_PASSWORDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("common-passwords.txt")
        .lines()
        .map(str::trim)
        .collect()
});

/// Django's default validators (domain.md §6.1, operations.md §1.5): every failing rule's
/// message, in upstream order; empty when the password is acceptable. The first rule,
/// similarity to the account's attributes, applies only when `user` is given: the command
/// line passes the account (as upstream's `createsuperuser` and `changepassword` do), the
/// API never does (upstream's serializer validates without a user).
pub fn validate(password: &str, user: Option<&UserAttributes<'_>>) -> Vec<&'static str> {
    let mut failures = Vec::new();
    if let Some(message) = user.and_then(|u| too_similar(password, u)) {
        failures.push(message);
    }
    // Python's len() counts code points.
    if password.chars().count() < MIN_LENGTH {
        failures.push(TOO_SHORT);
    }
    if COMMON_PASSWORDS.contains(password.to_lowercase().trim()) {
        failures.push(TOO_COMMON);
    }
    // Python's str.isdigit(); char::is_numeric also counts the few numeric letters and
    // fractions (Ⅻ, ½) that isdigit() does not, so such exotic passwords are refused too.
    if !password.is_empty() && password.chars().all(char::is_numeric) {
        failures.push(ENTIRELY_NUMERIC);
    }
    failures
}

/// The account attributes Django's `UserAttributeSimilarityValidator` compares a password
/// with, in its order (`username`, `first_name`, `last_name`, `email`); `None` or empty
/// values are skipped.
#[derive(Debug, Default, Clone, Copy)]
pub struct UserAttributes<'a> {
    pub username: Option<&'a str>,
    pub first_name: Option<&'a str>,
    pub last_name: Option<&'a str>,
    pub email: Option<&'a str>,
}

/// Django's default `max_similarity`.
const MAX_SIMILARITY: f64 = 0.7;

/// The similarity messages, named by each attribute's verbose name.
pub const TOO_SIMILAR_USERNAME: &str = "The password is too similar to the username.";
pub const TOO_SIMILAR_FIRST_NAME: &str = "The password is too similar to the first name.";
pub const TOO_SIMILAR_LAST_NAME: &str = "The password is too similar to the last name.";
pub const TOO_SIMILAR_EMAIL: &str = "The password is too similar to the email address.";

/// Django's `UserAttributeSimilarityValidator`: the message for the first attribute the
/// password is too similar to. Each attribute value is lower-cased and compared whole and
/// split on runs of non-word characters (`re.split(r"\W+")`); a part counts when
/// `SequenceMatcher(a=password, b=part).quick_ratio() >= 0.7`, parts far shorter than the
/// password being skipped first as Django does.
fn too_similar(password: &str, user: &UserAttributes<'_>) -> Option<&'static str> {
    let password: Vec<char> = password.to_lowercase().chars().collect();
    [
        (user.username, TOO_SIMILAR_USERNAME),
        (user.first_name, TOO_SIMILAR_FIRST_NAME),
        (user.last_name, TOO_SIMILAR_LAST_NAME),
        (user.email, TOO_SIMILAR_EMAIL),
    ]
    .into_iter()
    .filter_map(|(value, message)| Some((value.filter(|v| !v.is_empty())?, message)))
    .find(|(value, _)| {
        let value = value.to_lowercase();
        let mut parts = word_parts(&value);
        parts.push(value.chars().collect());
        parts.iter().any(|part| {
            !exceeds_maximum_length_ratio(&password, part)
                && quick_ratio(&password, part) >= MAX_SIMILARITY
        })
    })
    .map(|(_, message)| message)
}

/// `re.split(r"\W+", value)`: the pieces between runs of non-word characters (word: a
/// letter, digit or underscore), empty pieces at either end included.
fn word_parts(value: &str) -> Vec<Vec<char>> {
    let mut parts = vec![Vec::new()];
    let mut in_separator = false;
    for c in value.chars() {
        if c.is_alphanumeric() || c == '_' {
            if let Some(last) = parts.last_mut() {
                last.push(c);
            }
            in_separator = false;
        } else if !in_separator {
            parts.push(Vec::new());
            in_separator = true;
        }
    }
    parts
}

/// Django's shortcut: a value at most a tenth of the password's length (and shorter than
/// `max_similarity / 2` times it) cannot reach the threshold, so it is not compared.
fn exceeds_maximum_length_ratio(password: &[char], value: &[char]) -> bool {
    let pwd_len = password.len();
    let length_bound_similarity = MAX_SIMILARITY / 2.0 * pwd_len as f64;
    let value_len = value.len();
    pwd_len >= 10 * value_len && (value_len as f64) < length_bound_similarity
}

/// Python's `difflib.SequenceMatcher(a=a, b=b).quick_ratio()`: twice the size of the
/// multiset intersection of the two sequences over their total length (1.0 when both are
/// empty). Order does not count, so it bounds `ratio()` from above.
fn quick_ratio(a: &[char], b: &[char]) -> f64 {
    let mut available: std::collections::HashMap<char, usize> = std::collections::HashMap::new();
    for &c in b {
        *available.entry(c).or_insert(0) += 1;
    }
    let mut matches = 0usize;
    for c in a {
        if let Some(n) = available.get_mut(c).filter(|n| **n > 0) {
            *n -= 1;
            matches += 1;
        }
    }
    let length = a.len() + b.len();
    if length == 0 {
        1.0
    } else {
        2.0 * matches as f64 / length as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with Python's standard library exactly as Django's PBKDF2PasswordHasher does:
    // base64.b64encode(hashlib.pbkdf2_hmac("sha256", password, salt, iterations)).
    const DJANGO_DEFAULT: &str =
        "pbkdf2_sha256$1000000$Wk3dQz8RmT1yLp0aBc9XvN$yu/T4SvQcDRofMcVDwnGNrY5ZXb1UP/umBgxKHN65zE=";
    const DJANGO_DEFAULT_PASSWORD: &str = "correct horse battery staple";
    const DJANGO_LOW: &str =
        "pbkdf2_sha256$1000$saltsalt1234$prB+TLNCiOPeZ6c+AoSG2HZgTLyIH80SDfjHJJyQM7g=";
    const DJANGO_LOW_PASSWORD: &str = "Tr0ub4dour&3";
    const DJANGO_UNICODE: &str =
        "pbkdf2_sha256$2000$u7Qm2Ls9Kd0Pz4Rx1Wc8Ye$Qz3KcBFUWJbohtVAyORu1FbZc+fxGMiywWooYGqBBaQ=";
    const DJANGO_EMPTY: &str =
        "pbkdf2_sha256$1000$emptysalt$Th/GgYSDV3N4Zpkx3TpFlR/PPyCUSrZ7QQFwKxyd/oo=";

    #[test]
    fn hash_verifies_and_uses_django_argon2_format() {
        let h = hash_now("correct horse").expect("hash");
        assert!(h.starts_with("argon2$argon2id$v=19$"), "{h}");
        assert!(verify_now("correct horse", &h));
        assert!(!verify_now("wrong horse", &h));
        assert!(!verify_now("correct horse", "pbkdf2_sha256$1$salt$x"));
        assert!(!verify_now("x", "argon2$garbage"));
        assert!(!needs_rehash(&h));
    }

    #[test]
    fn verifies_django_pbkdf2_at_the_default_iteration_count() {
        assert!(verify_now(DJANGO_DEFAULT_PASSWORD, DJANGO_DEFAULT));
        assert!(needs_rehash(DJANGO_DEFAULT));
    }

    #[test]
    fn verifies_django_pbkdf2_with_low_iterations() {
        assert!(verify_now(DJANGO_LOW_PASSWORD, DJANGO_LOW));
        assert!(!verify_now("Tr0ub4dour&4", DJANGO_LOW));
        assert!(!verify_now("", DJANGO_LOW));
        assert!(verify_now("pässwörd-ünïcode", DJANGO_UNICODE));
        assert!(!verify_now("passwörd-ünïcode", DJANGO_UNICODE));
        assert!(verify_now("", DJANGO_EMPTY));
        assert!(!verify_now(" ", DJANGO_EMPTY));
    }

    #[test]
    fn tampered_or_malformed_pbkdf2_hashes_fail() {
        let other_salt = DJANGO_LOW.replace("saltsalt1234", "saltsalt1235");
        let other_count = DJANGO_LOW.replace("$1000$", "$1001$");
        let truncated = &DJANGO_LOW[..DJANGO_LOW.len() - 1];
        for stored in [
            other_salt.as_str(),
            other_count.as_str(),
            truncated,
            "pbkdf2_sha256$0$saltsalt1234$prB+TLNCiOPeZ6c+AoSG2HZgTLyIH80SDfjHJJyQM7g=",
            "pbkdf2_sha256$-5$saltsalt1234$prB+TLNCiOPeZ6c+AoSG2HZgTLyIH80SDfjHJJyQM7g=",
            "pbkdf2_sha256$x$saltsalt1234$prB+TLNCiOPeZ6c+AoSG2HZgTLyIH80SDfjHJJyQM7g=",
            "pbkdf2_sha256$1000$saltsalt1234",
            "pbkdf2_sha256",
            "pbkdf2_sha1$1000$saltsalt1234$prB+TLNCiOPeZ6c+AoSG2HZgTLyIH80SDfjHJJyQM7g=",
        ] {
            assert!(!verify_now(DJANGO_LOW_PASSWORD, stored), "{stored}");
        }
    }

    #[test]
    fn unusable_and_unknown_formats_never_verify_and_need_rehash() {
        for stored in [
            "!",
            "!yV8zJ2r3mQ1kP0xLw7TsNbVa9cDe4FgHiJkLmNoP",
            "!pbkdf2_sha256$1000$saltsalt1234$prB+TLNCiOPeZ6c+AoSG2HZgTLyIH80SDfjHJJyQM7g=",
            "bcrypt_sha256$$2b$12$abcdefghijklmnopqrstuv",
            "md5$salt$0123456789abcdef0123456789abcdef",
            "",
        ] {
            assert!(!verify_now("", stored), "{stored}");
            assert!(!verify_now(DJANGO_LOW_PASSWORD, stored), "{stored}");
            assert!(needs_rehash(stored), "{stored}");
        }
    }

    #[test]
    fn argon2_hashes_with_other_variants_or_costs_need_rehash() {
        // Django's own Argon2PasswordHasher defaults (m=102400, t=2, p=8) and argon2i.
        let argon2 = |alg, params: Params| {
            let phc = Argon2::new(alg, argon2::Version::V0x13, params)
                .hash_password_with_salt(b"pw", b"saltsaltsaltsalt")
                .expect("hash")
                .to_string();
            format!("{DJANGO_ARGON2_PREFIX}{phc}")
        };
        let django_costs = Params::new(102_400, 2, 8, None).expect("params");
        let stored = argon2(argon2::Algorithm::Argon2id, django_costs);
        assert!(verify_now("pw", &stored));
        assert!(needs_rehash(&stored));
        let stored = argon2(argon2::Algorithm::Argon2i, Params::default());
        assert!(needs_rehash(&stored));
        assert!(!needs_rehash(&argon2(
            argon2::Algorithm::Argon2id,
            Params::default()
        )));
    }

    #[test]
    fn logins_without_a_checkable_hash_verify_against_the_dummy_hash() {
        let real = hash_now("pw").expect("hash");
        assert_eq!(candidate(Some(&real)), Candidate::Stored(&real));
        assert_eq!(candidate(Some(DJANGO_LOW)), Candidate::Stored(DJANGO_LOW));
        // Unknown username, LDAP account, empty column, a hasher Keystone lacks.
        for stored in [
            None,
            Some("!yV8zJ2r3mQ1kP0xLw7TsNbVa9cDe4FgHiJkLmNoP"),
            Some(""),
            Some("bcrypt_sha256$$2b$12$abcdefghijklmnopqrstuv"),
        ] {
            assert_eq!(candidate(stored), Candidate::Dummy, "{stored:?}");
        }
        // The dummy is a real hash with today's algorithm and costs, so checking it takes as
        // long as checking a current account's hash.
        assert!(
            DUMMY_HASH.starts_with("argon2$argon2id$v=19$"),
            "{}",
            *DUMMY_HASH
        );
        assert!(!needs_rehash(&DUMMY_HASH));
    }

    #[test]
    fn usable_passwords_follow_django_but_empty_is_none() {
        assert!(has_usable_password(DJANGO_LOW));
        assert!(has_usable_password(
            "argon2$argon2id$v=19$m=19456,t=2,p=1$x$y"
        ));
        assert!(has_usable_password("bcrypt_sha256$$2b$12$x"));
        assert!(!has_usable_password("!"));
        assert!(!has_usable_password(
            "!yV8zJ2r3mQ1kP0xLw7TsNbVa9cDe4FgHiJkLmNoP"
        ));
        assert!(!has_usable_password(""));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashing_runs_off_the_executor_and_verifies() {
        let stored = hash("correct horse").await.expect("hash");
        assert!(verify("correct horse", Some(&stored)).await);
        assert!(!verify("wrong horse", Some(&stored)).await);
        assert!(!verify("correct horse", None).await);
        assert!(!verify("", Some("!unusable")).await);
        assert!(verify(DJANGO_LOW_PASSWORD, Some(DJANGO_LOW)).await);
        let on = std::thread::current().id();
        let there = off_executor(|| std::thread::current().id())
            .await
            .expect("ran");
        assert_ne!(on, there, "a blocking thread, not the calling worker");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashes_in_flight_never_exceed_the_bound() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let jobs: Vec<_> = (0..4 * hashing().size + 2)
            .map(|_| {
                let (running, most) = (running.clone(), most.clone());
                tokio::spawn(off_executor(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(15));
                    running.fetch_sub(1, Ordering::SeqCst);
                }))
            })
            .collect();
        for job in jobs {
            job.await.expect("joined").expect("ran");
        }
        let most = most.load(Ordering::SeqCst);
        assert!(
            most >= 1 && most <= hashing().size,
            "{most} > {}",
            hashing().size
        );
    }

    #[test]
    fn generated_passwords_differ() {
        let a = generate(20);
        assert_eq!(a.len(), 20);
        assert_ne!(a, generate(20));
        assert!(validate(&a, None).is_empty());
    }

    #[test]
    fn the_embedded_list_is_djangos() {
        assert_eq!(COMMON_PASSWORDS.len(), 19_640);
        for entry in ["123456", "password", "qwerty", "fallen_angel", "пароль"] {
            assert!(COMMON_PASSWORDS.contains(entry), "{entry}");
        }
    }

    #[test]
    fn each_rule_alone() {
        assert_eq!(validate("Xk2!pq7", None), vec![TOO_SHORT]);
        assert_eq!(validate("Xk2!pq7z", None), Vec::<&str>::new());
        assert_eq!(validate("superman", None), vec![TOO_COMMON]);
        assert_eq!(
            validate("PassWord", None),
            vec![TOO_COMMON],
            "case-insensitive"
        );
        assert_eq!(
            validate("  Password1  ", None),
            vec![TOO_COMMON],
            "stripped"
        );
        assert_eq!(validate("80417692551", None), vec![ENTIRELY_NUMERIC]);
        assert_eq!(
            validate("٣٤٥٦٧٨٩٠١", None),
            vec![ENTIRELY_NUMERIC],
            "Arabic-Indic digits"
        );
        assert_eq!(validate("8041769255x", None), Vec::<&str>::new());
    }

    #[test]
    fn rules_combine_in_upstream_order() {
        assert_eq!(validate("abc", None), vec![TOO_SHORT, TOO_COMMON]);
        assert_eq!(validate("7291", None), vec![TOO_SHORT, ENTIRELY_NUMERIC]);
        assert_eq!(
            validate("123456", None),
            vec![TOO_SHORT, TOO_COMMON, ENTIRELY_NUMERIC]
        );
        assert_eq!(
            validate("12345678", None),
            vec![TOO_COMMON, ENTIRELY_NUMERIC]
        );
        assert_eq!(validate("", None), vec![TOO_SHORT]);
        assert_eq!(validate("ПАРОЛЬ", None), vec![TOO_SHORT, TOO_COMMON]);
        // Length counts characters, not bytes.
        assert_eq!(validate("ünïcödé", None), vec![TOO_SHORT]);
        assert_eq!(validate("ünïcödéß", None), Vec::<&str>::new());
    }

    /// Values from Python: `SequenceMatcher(a=a, b=b).quick_ratio()`.
    #[test]
    fn quick_ratio_matches_difflib() {
        let chars = |s: &str| s.chars().collect::<Vec<_>>();
        for (a, b, want) in [
            ("abcd", "bcde", 0.75),
            ("a", "aaaaaaaaaa", 0.18181818181818182),
            ("example.com", "example", 0.7777777777777778),
            ("example.com", "testclient", 0.38095238095238093),
            ("keystone-admin99", "keystone-admin", 0.9333333333333333),
            ("alice2024!", "alice", 0.6666666666666666),
            ("", "", 1.0),
        ] {
            assert_eq!(quick_ratio(&chars(a), &chars(b)), want, "{a} / {b}");
        }
    }

    /// Django's own cases for `UserAttributeSimilarityValidator`, and the split of values on
    /// non-word characters.
    #[test]
    fn similarity_to_the_user_attributes() {
        let user = UserAttributes {
            username: Some("testclient"),
            first_name: Some("Test"),
            last_name: Some("Client"),
            email: Some("testclient@example.com"),
        };
        let similar = |p: &str| too_similar(p, &user);
        assert_eq!(similar("testclient"), Some(TOO_SIMILAR_USERNAME));
        assert_eq!(similar("example.com"), Some(TOO_SIMILAR_EMAIL));
        assert_eq!(similar("TestClient2"), Some(TOO_SIMILAR_USERNAME));
        // Order does not count (quick_ratio compares the letters as multisets).
        assert_eq!(similar("tneilctset"), Some(TOO_SIMILAR_USERNAME));
        assert_eq!(similar("Str0ng-Pass-99"), None);
        assert_eq!(similar("t"), None);
        let dotted = UserAttributes {
            username: Some("alice.smith"),
            ..Default::default()
        };
        assert_eq!(
            too_similar("Smith-Alice-77", &dotted),
            Some(TOO_SIMILAR_USERNAME)
        );
        assert_eq!(too_similar("s3cret-Alice-pass", &dotted), None);
        assert_eq!(
            word_parts(".a..b."),
            vec![vec![], vec!['a'], vec!['b'], vec![]]
        );
        // Only where the account is given; the message comes first, as upstream lists it.
        assert_eq!(validate("testclient", None), Vec::<&str>::new());
        assert_eq!(
            validate("testcli", Some(&user)),
            vec![TOO_SIMILAR_USERNAME, TOO_SHORT]
        );
        assert_eq!(
            validate("testclient", Some(&UserAttributes::default())),
            Vec::<&str>::new()
        );
    }
}
