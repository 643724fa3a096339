//! Encryption at rest for the WhatsApp key store.
//!
//! Two keys are derived from the configured master key: one seals values
//! (AES-256-GCM, random 96-bit nonce, the row's identity as associated data)
//! and one turns entry keys into HMACs, scoped to the store, so equal JIDs in
//! two stores do not even produce equal lookup values.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

const NONCE_LEN: usize = 12;

/// Why a sealed value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum CipherError {
    #[error("sealed value is too short")]
    Truncated,
    #[error("sealed value does not authenticate (wrong key, or the row was altered or moved)")]
    Forged,
    #[error("sealing failed")]
    Seal,
}

pub struct StoreCipher {
    aead: Aes256Gcm,
    mac_key: [u8; 32],
}

/// HMAC-SHA256 accepts keys of any length, so keying it cannot fail.
fn keyed(key: &[u8]) -> HmacSha256 {
    <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

fn derive(master: &[u8; 32], label: &[u8]) -> [u8; 32] {
    // HMAC with a fixed label is a PRF: enough to split one random master
    // key into independent subkeys.
    let mut mac = keyed(master);
    mac.update(label);
    mac.finalize().into_bytes().into()
}

impl StoreCipher {
    pub fn new(master: &[u8; 32]) -> Self {
        let enc = derive(master, b"wagate/keystore/v1/seal");
        Self {
            aead: Aes256Gcm::new(&enc.into()),
            mac_key: derive(master, b"wagate/keystore/v1/lookup"),
        }
    }

    /// The HMAC that stands for `key` in `store` (domain-separated by `domain`).
    pub fn lookup(&self, store: Uuid, domain: &[u8], key: &[u8]) -> Vec<u8> {
        let mut mac = keyed(&self.mac_key);
        mac.update(store.as_bytes());
        mac.update(&(domain.len() as u32).to_be_bytes());
        mac.update(domain);
        mac.update(key);
        mac.finalize().into_bytes().to_vec()
    }

    /// `nonce || ciphertext+tag`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CipherError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .aead
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| CipherError::Seal)?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CipherError> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(CipherError::Truncated);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CipherError::Truncated)?;
        self.aead
            .decrypt(&Nonce::from(nonce), Payload { msg: body, aad })
            .map_err(|_| CipherError::Forged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_row() {
        let c = StoreCipher::new(&[7; 32]);
        let sealed = c.seal(b"row-1", b"secret").unwrap();
        assert_eq!(c.open(b"row-1", &sealed).unwrap(), b"secret");
        assert!(matches!(
            c.open(b"row-2", &sealed),
            Err(CipherError::Forged)
        ));
        let other = StoreCipher::new(&[8; 32]);
        assert!(matches!(
            other.open(b"row-1", &sealed),
            Err(CipherError::Forged)
        ));
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(
            c.open(b"row-1", &tampered),
            Err(CipherError::Forged)
        ));
        assert!(matches!(
            c.open(b"row-1", b"short"),
            Err(CipherError::Truncated)
        ));
        assert!(
            !sealed.windows(6).any(|w| w == b"secret"),
            "ciphertext hides the value"
        );
    }

    #[test]
    fn lookups_are_stable_per_store_and_differ_across_stores_and_domains() {
        let c = StoreCipher::new(&[7; 32]);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(c.lookup(a, b"id", b"jid"), c.lookup(a, b"id", b"jid"));
        assert_ne!(c.lookup(a, b"id", b"jid"), c.lookup(b, b"id", b"jid"));
        assert_ne!(c.lookup(a, b"id", b"jid"), c.lookup(a, b"grp", b"jid"));
    }
}
