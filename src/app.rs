//! The shared state every handler gets: configuration, database pool, cipher, upstream client.

use crate::config::Config;
use crate::crypto::Cipher;
use crate::db::{Conn, Pool};
use crate::error::ApiError;
use crate::upstream::Upstream;

pub struct App {
    pub config: Config,
    pub db: Pool,
    pub cipher: Cipher,
    pub upstream: Upstream,
}

impl App {
    pub fn new(config: Config, db: Pool) -> App {
        let cipher = Cipher::new(&config.kms_key);
        let upstream = Upstream::new(config.upstream_timeout, config.workers);
        App {
            config,
            db,
            cipher,
            upstream,
        }
    }

    /// One pooled connection; a 503 when the database cannot be reached.
    pub fn conn(&self) -> Result<Conn, ApiError> {
        Ok(self.db.get()?)
    }

    /// Seals a profile's credentials, bound to the profile's id.
    pub fn seal_credentials(&self, profile_id: i64, credentials: &serde_json::Value) -> Vec<u8> {
        let plaintext = serde_json::to_vec(credentials).unwrap_or_default();
        self.cipher.seal(&plaintext, &credentials_aad(profile_id))
    }

    /// Opens a profile's credentials; a clear, secret-free error naming the profile otherwise.
    pub fn open_credentials(
        &self,
        profile_id: i64,
        profile_name: &str,
        sealed: &[u8],
    ) -> Result<serde_json::Value, ApiError> {
        let undecryptable = || {
            ApiError::Misconfigured(format!(
                "the credentials of profile '{profile_name}' cannot be decrypted: \
                 ROUTER_KMS_KEY (or, without it, ROUTER_ADMIN_KEY) changed since they were \
                 stored; restore the key or set new credentials with PATCH /admin/profiles/{profile_id}"
            ))
        };
        let plaintext = self
            .cipher
            .open(sealed, &credentials_aad(profile_id))
            .map_err(|_| undecryptable())?;
        serde_json::from_slice(&plaintext).map_err(|_| undecryptable())
    }
}

fn credentials_aad(profile_id: i64) -> Vec<u8> {
    format!("switcher-api/profiles/{profile_id}/credentials").into_bytes()
}
