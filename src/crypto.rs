//! Credentials at rest: AES-256-GCM with a fresh random nonce per write, bound to its row.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const NONCE_LEN: usize = 12;

/// Seals and opens credential blobs. The stored form is `nonce || ciphertext || tag`.
#[derive(Clone)]
pub struct Cipher {
    aead: Aes256Gcm,
}

/// The blob does not open: a different key, a blob moved to another row, or corruption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenError;

impl Cipher {
    pub fn new(key: &[u8; 32]) -> Cipher {
        Cipher {
            aead: Aes256Gcm::new(key.into()),
        }
    }

    /// Encrypts `plaintext`; `aad` names the row it belongs to, so a blob copied to another
    /// row does not open there.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = self
            .aead
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            // AES-GCM encryption only fails for messages of many gigabytes.
            .expect("AES-GCM encryption of a small message cannot fail");
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < NONCE_LEN {
            return Err(OpenError);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.aead
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| OpenError)
    }
}

/// Compares two secrets in time that depends on neither their contents nor their lengths.
pub fn secrets_equal(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}

/// Lowercase hex of SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

/// `n` random bytes from the operating system.
pub fn random_bytes(n: usize) -> Vec<u8> {
    use aes_gcm::aead::rand_core::RngCore;
    let mut buf = vec![0u8; n];
    OsRng.fill_bytes(&mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_credentials_open_with_the_same_key_and_row() {
        let c = Cipher::new(&[1; 32]);
        let sealed = c.seal(b"sk-secret", b"profile:1");
        assert_eq!(c.open(&sealed, b"profile:1").unwrap(), b"sk-secret");
    }

    #[test]
    fn the_ciphertext_does_not_contain_the_plaintext() {
        let c = Cipher::new(&[1; 32]);
        let sealed = c.seal(b"sk-secret", b"profile:1");
        assert!(!sealed.windows(9).any(|w| w == b"sk-secret"));
    }

    #[test]
    fn every_write_uses_a_fresh_nonce() {
        let c = Cipher::new(&[1; 32]);
        assert_ne!(c.seal(b"same", b"row"), c.seal(b"same", b"row"));
    }

    #[test]
    fn another_key_or_another_row_does_not_open_it() {
        let sealed = Cipher::new(&[1; 32]).seal(b"sk-secret", b"profile:1");
        assert_eq!(
            Cipher::new(&[2; 32]).open(&sealed, b"profile:1"),
            Err(OpenError)
        );
        assert_eq!(
            Cipher::new(&[1; 32]).open(&sealed, b"profile:2"),
            Err(OpenError)
        );
        assert_eq!(
            Cipher::new(&[1; 32]).open(&sealed[..5], b"x"),
            Err(OpenError)
        );
    }

    #[test]
    fn secrets_compare_by_content() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
        assert!(!secrets_equal("", "abc"));
    }

    #[test]
    fn sha256_hex_matches_a_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
