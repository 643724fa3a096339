//! API keys: `wag_<prefix>_<secret>`. The prefix (64 random bits, hex) finds the row; the secret
//! (256 random bits) is stored only as its SHA-256 and compared in constant time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const KEY_TAG: &str = "wag";

/// A freshly generated key: `plaintext` is shown to the client once and never stored.
pub struct NewApiKey {
    pub plaintext: String,
    pub prefix: String,
    pub secret_hash: Vec<u8>,
}

pub fn generate() -> NewApiKey {
    let mut rng = rand::rng();
    let mut prefix = [0u8; 8];
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut prefix);
    rng.fill_bytes(&mut secret);
    let prefix = hex::encode(prefix);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    NewApiKey {
        plaintext: format!("{KEY_TAG}_{prefix}_{secret}"),
        secret_hash: hash_secret(&secret),
        prefix,
    }
}

/// Splits a presented key into (prefix, secret); `None` when it is not shaped like our keys.
pub fn parse(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix(KEY_TAG)?.strip_prefix('_')?;
    let (prefix, secret) = rest.split_once('_')?;
    let ok = prefix.len() == 16
        && prefix.bytes().all(|b| b.is_ascii_hexdigit())
        && (40..=64).contains(&secret.len());
    ok.then_some((prefix, secret))
}

pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Constant-time comparison of a presented secret with a stored hash.
pub fn verify(secret: &str, stored_hash: &[u8]) -> bool {
    hash_secret(secret).ct_eq(stored_hash).into()
}

/// Constant-time comparison of two secrets of possibly different length (the admin key).
pub fn secrets_equal(a: &str, b: &str) -> bool {
    // Hashing first makes the comparison length-independent.
    Sha256::digest(a.as_bytes())
        .ct_eq(&Sha256::digest(b.as_bytes()))
        .into()
}

/// What an admin's dashboard token names of the admin key: a hash, never the key; a new
/// admin key has another, which ends the tokens issued under the old one.
pub fn admin_fingerprint(admin_key: &str) -> String {
    let digest = Sha256::digest(format!("wagate-dashboard-admin:{admin_key}").as_bytes());
    hex::encode(&digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_verify() {
        let k = generate();
        let (prefix, secret) = parse(&k.plaintext).expect("own keys parse");
        assert_eq!(prefix, k.prefix);
        assert!(verify(secret, &k.secret_hash));
        assert!(!verify(
            "something-else-entirely-that-is-long-enough-00",
            &k.secret_hash
        ));
        assert_ne!(generate().plaintext, k.plaintext);
    }

    #[test]
    fn foreign_strings_do_not_parse() {
        assert!(parse("hello").is_none());
        assert!(parse("wag_zz_abc").is_none());
        assert!(parse("eyJhbGciOiJIUzI1NiJ9.e30.x").is_none());
    }

    #[test]
    fn admin_comparison() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abcd"));
    }
}
