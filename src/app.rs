//! The shared state every handler gets: configuration, database pool (control plane),
//! routing state and audit journal (data plane), cipher, upstream client.

use std::sync::{Arc, Mutex};

use crate::auth::KeyUsage;
use crate::config::Config;
use crate::crypto::Cipher;
use crate::db::{Conn, Pool};
use crate::error::ApiError;
use crate::gate::Gate;
use crate::journal::Journal;
use crate::state::{DbHealth, State};
use crate::upstream::Upstream;

pub struct App {
    pub config: Config,
    /// The control plane's connections, and the outage count they were made after.
    db: Mutex<(u64, Pool)>,
    pub health: Arc<DbHealth>,
    /// What the data plane serves from.
    pub state: Arc<State>,
    pub journal: Arc<Journal>,
    pub cipher: Cipher,
    pub upstream: Upstream,
    /// The data plane's turns on the cores (proxied requests take one, give it up while they
    /// wait on the upstream).
    pub gate: Gate,
    /// Open and refused client connections, kept by tiny_http (for `/metrics`).
    pub connections: Arc<tiny_http::ConnectionCounters>,
    /// Agent key uses waiting to be written to `last_used_at`.
    pub key_usage: KeyUsage,
    /// The counters `/metrics` shows.
    pub metrics: crate::metrics::Metrics,
}

impl App {
    pub fn new(config: Config, db: Pool, journal: Arc<Journal>) -> App {
        let cipher = Cipher::new(&config.kms_key);
        let upstream = Upstream::new(config.upstream_timeout, config.workers, &config.upstream_ca);
        App {
            config,
            db: Mutex::new((0, db)),
            health: Arc::new(DbHealth::default()),
            state: Arc::new(State::new()),
            journal,
            cipher,
            upstream,
            gate: Gate::for_this_machine(),
            connections: Arc::default(),
            key_usage: KeyUsage::default(),
            metrics: crate::metrics::Metrics::default(),
        }
    }

    /// One pooled connection for the control plane; a 503 at once while the database is
    /// known to be down, rather than a wait for the pool's checkout timeout.
    pub fn conn(&self) -> Result<Conn, ApiError> {
        self.health.check()?;
        Ok(self.pool().get()?)
    }

    /// The pool, made anew after each outage: its idle connections died with the database,
    /// and since a checkout does not test them (no round trip), each would fail a request.
    fn pool(&self) -> Pool {
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let outages = self.health.outages();
        if db.0 != outages {
            // The URL was validated at startup.
            if let Ok(pg) = crate::db::parse_url(&self.config.database_url) {
                *db = (outages, crate::db::pool(pg, self.config.db_pool_size));
            }
        }
        db.1.clone()
    }

    /// After a committed control-plane write: this instance serves the change before the
    /// write is answered (the others learn of it through `NOTIFY`). A failure here only
    /// delays it until the listener's next load, so it is logged, not returned.
    pub fn apply_changes(&self, conn: &mut Conn) {
        if let Err(e) = self.state.reload(conn) {
            crate::warn!("the routing state could not be reloaded after a write: {e}");
        }
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

    /// Opens a profile's credentials and returns its `api_key`; a clear, secret-free error
    /// naming the profile when it cannot be opened or holds no usable key.
    pub fn open_api_key(
        &self,
        profile_id: i64,
        profile_name: &str,
        sealed: &[u8],
    ) -> Result<String, ApiError> {
        let credentials = self.open_credentials(profile_id, profile_name, sealed)?;
        match credentials
            .get("api_key")
            .and_then(serde_json::Value::as_str)
        {
            Some(key) if usable_api_key(key) => Ok(key.to_string()),
            // Stored before keys were checked, or written to the table by hand.
            _ => Err(ApiError::Misconfigured(format!(
                "the credentials of profile '{profile_name}' hold no usable api_key; set new \
                 credentials with PATCH /admin/profiles/{profile_id}"
            ))),
        }
    }
}

/// An API key that can go into an HTTP header as it is: not empty, and without whitespace or
/// control characters.
pub fn usable_api_key(key: &str) -> bool {
    !key.is_empty() && !key.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn credentials_aad(profile_id: i64) -> Vec<u8> {
    format!("switcher-api/profiles/{profile_id}/credentials").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn app() -> App {
        let config = Config::from_lookup(|name| match name {
            "ROUTER_ADMIN_KEY" => Some("admin-key-for-unit-tests".into()),
            "ROUTER_AGENT_KEY" => Some("agent-key-for-unit-tests".into()),
            _ => None,
        })
        .unwrap();
        let pg = crate::db::parse_url(&config.database_url).unwrap();
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switcher-app-unit-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let journal = Journal::open(&dir, 1 << 20).unwrap();
        // The pool connects lazily, and nothing here asks it for a connection.
        App::new(config, crate::db::pool(pg, 1), Arc::new(journal))
    }

    #[test]
    fn the_api_key_is_opened_from_the_sealed_credentials() {
        let app = app();
        let sealed = app.seal_credentials(7, &json!({"api_key": "sk-fine", "org": "o"}));
        assert_eq!(app.open_api_key(7, "p", &sealed).unwrap(), "sk-fine");
        let e = app.open_api_key(8, "p", &sealed).unwrap_err();
        assert!(e.message().contains("cannot be decrypted"), "{e}");
    }

    #[test]
    fn a_stored_api_key_that_cannot_go_into_a_header_is_refused_naming_the_profile() {
        let app = app();
        for credentials in [
            json!({"api_key": "sk-stored-before\n"}),
            json!({"api_key": "sk stored"}),
            json!({"api_key": ""}),
            json!({"api_key": 5}),
            json!({}),
        ] {
            let sealed = app.seal_credentials(7, &credentials);
            let e = app.open_api_key(7, "p", &sealed).unwrap_err();
            assert_eq!(e.status(), 500, "{credentials}: {e}");
            let message = e.message();
            assert!(
                message.contains("'p'") && message.contains("PATCH /admin/profiles/7"),
                "{message}"
            );
            assert!(
                !message.contains("sk-stored") && !message.contains("sk stored"),
                "{message}"
            );
        }
    }
}
