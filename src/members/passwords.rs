//! Members' passwords: Argon2id with OWASP's recommended parameters (19 MiB of memory, two
//! passes, one lane), stored as PHC strings so the parameters travel with each hash and can be
//! raised later without breaking old ones. Hashing runs on the blocking pool: it is meant to be
//! slow.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::error::ApiError;

/// OWASP Password Storage Cheat Sheet: Argon2id, m = 19456 KiB, t = 2, p = 1.
const MEMORY_KIB: u32 = 19_456;
const PASSES: u32 = 2;
const LANES: u32 = 1;

/// Shorter is guessable; longer only costs hashing time (and invites a denial of service).
pub const MIN_LEN: usize = 10;
pub const MAX_LEN: usize = 128;

fn hasher() -> Argon2<'static> {
    // The parameters are constants inside Argon2's bounds.
    let params = Params::new(MEMORY_KIB, PASSES, LANES, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A password as a client sends it, checked for length.
pub fn validate(field: &str, password: &str) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if chars < MIN_LEN {
        return Err(ApiError::validation(
            field,
            format!("must be at least {MIN_LEN} characters"),
        ));
    }
    if chars > MAX_LEN {
        return Err(ApiError::validation(
            field,
            format!("must be at most {MAX_LEN} characters"),
        ));
    }
    Ok(())
}

/// The PHC string of `password` with a fresh salt.
pub async fn hash(password: String) -> Result<String, ApiError> {
    actix_web::rt::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        hasher()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
    })
    .await
    .map_err(|e| ApiError::internal(anyhow::anyhow!("the hashing task failed: {e}")))?
    .map_err(ApiError::internal)
}

/// Whether `password` matches `stored` (a PHC string). With `stored` = `None` it checks against
/// a hash of nothing anyone knows, taking the same time: a login for an unknown email must not
/// answer faster than one with a wrong password.
pub async fn verify(password: String, stored: Option<String>) -> Result<bool, ApiError> {
    actix_web::rt::task::spawn_blocking(move || {
        let decoy = decoy_hash();
        let (phc, real) = match &stored {
            Some(s) => (s.as_str(), true),
            None => (decoy, false),
        };
        let Ok(parsed) = PasswordHash::new(phc) else {
            return false;
        };
        let ok = hasher()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        ok && real
    })
    .await
    .map_err(|e| ApiError::internal(anyhow::anyhow!("the verifying task failed: {e}")))
}

/// A hash with the same parameters as real ones, of a random password, made once.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        let secret = SaltString::generate(&mut OsRng);
        hasher()
            .hash_password(secret.as_str().as_bytes(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn hashes_verify_and_carry_owasps_parameters() {
        let phc = hash("correct horse battery".into())
            .await
            .unwrap_or_default();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(
            verify("correct horse battery".into(), Some(phc.clone()))
                .await
                .unwrap_or(false)
        );
        assert!(
            !verify("wrong horse battery".into(), Some(phc))
                .await
                .unwrap_or(true)
        );
        assert!(!verify("anything".into(), None).await.unwrap_or(true));
        assert!(
            !verify("x".into(), Some("not a hash".into()))
                .await
                .unwrap_or(true)
        );
    }
}
