//! The data plane's routing state: profiles (credentials still sealed), models, agent
//! states and agent keys (their SHA-256 only), held in memory so that a proxied request never
//! waits on the database. It is
//! loaded whole from Postgres, swapped in whole, and reloaded when a `NOTIFY` on
//! `switcher_state` says something changed, every `STATE_RESYNC_MS`, and whenever the
//! listening connection comes back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::metrics::{ModelRegistry, ModelSeries};
use crate::provider::ProviderType;

/// The contract's words for an agent with no state; messages go on to say what to do.
pub const NO_ACTIVE_MODEL: &str = "No active model set for agent_id";

/// The error for an agent that has no state: the contract's text, then the agent, where
/// its id came from and how to give it a model.
pub fn no_active_model(agent_id: &str) -> String {
    let whence = if agent_id == "default" {
        " (the agent of requests that send no x-agent-id header)"
    } else {
        ""
    };
    format!(
        "{NO_ACTIVE_MODEL} '{agent_id}'{whence}; choose its profile and model with \
         POST /api/switch {{\"agent_id\":\"{agent_id}\",\"profile_name\":...,\"model_name\":...}}"
    )
}

/// The channel the triggers of `sql/0002_data_plane.sql` notify.
pub const CHANNEL: &str = "switcher_state";

/// A provider account as the data plane needs it.
#[derive(Debug)]
pub struct Profile {
    pub id: i64,
    pub name: String,
    pub provider_type: ProviderType,
    pub base_url: String,
    /// AES-256-GCM ciphertext, opened per request (microseconds), never kept open.
    pub sealed_credentials: Vec<u8>,
}

#[derive(Debug)]
pub struct Model {
    pub name: String,
    pub max_tokens: Option<i64>,
    pub drop_params: Vec<String>,
}

/// Where one agent's requests go.
#[derive(Debug, Clone)]
pub struct Route {
    pub profile: Arc<Profile>,
    pub model: Arc<Model>,
}

/// A key of one agent (`agent_keys`), as the routing state knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentKey {
    pub id: i64,
    pub agent_id: String,
}

/// Agent keys by the first bytes of their SHA-256, then compared whole in constant time.
/// Only the digest of a presented key meets the table, so timing can tell at most whether
/// a guess's digest shares a prefix with a stored one, which says nothing about any key.
type KeyIndex = HashMap<[u8; 8], Vec<([u8; 32], AgentKey)>>;

/// One consistent picture of the routing tables.
#[derive(Debug, Default)]
pub struct Snapshot {
    routes: HashMap<String, Route>,
    agent_keys: KeyIndex,
    /// The body of `GET /v1/models`, made once per load.
    models_body: Vec<u8>,
    /// The metrics series of each routed model, by the address of its `Model` in this
    /// snapshot, so that a request finds its series without a lock or a string key.
    series: HashMap<usize, Arc<ModelSeries>>,
}

impl Snapshot {
    pub fn route(&self, agent_id: &str) -> Option<&Route> {
        self.routes.get(agent_id)
    }

    /// The agent key `key` is, if it is one.
    pub fn agent_key(&self, key: &str) -> Option<&AgentKey> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let candidates = self.agent_keys.get(&key_prefix(&digest))?;
        candidates
            .iter()
            .find(|(stored, _)| bool::from(stored.ct_eq(&digest)))
            .map(|(_, k)| k)
    }

    /// A snapshot that knows only these agent keys (`id`, `agent_id`, the key itself).
    #[cfg(test)]
    pub fn with_agent_keys(keys: &[(i64, &str, &str)]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for (id, agent_id, key) in keys {
            let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            index_key(&mut snapshot.agent_keys, digest, *id, agent_id.to_string());
        }
        snapshot
    }

    /// The metrics series of a route of this snapshot.
    pub fn series(&self, route: &Route) -> Option<Arc<ModelSeries>> {
        self.series.get(&model_key(&route.model)).cloned()
    }

    pub fn models_body(&self) -> &[u8] {
        &self.models_body
    }

    pub fn agents(&self) -> usize {
        self.routes.len()
    }
}

fn model_key(model: &Arc<Model>) -> usize {
    Arc::as_ptr(model) as usize
}

fn key_prefix(digest: &[u8; 32]) -> [u8; 8] {
    let mut prefix = [0; 8];
    prefix.copy_from_slice(&digest[..8]);
    prefix
}

fn index_key(index: &mut KeyIndex, digest: [u8; 32], id: i64, agent_id: String) {
    index
        .entry(key_prefix(&digest))
        .or_default()
        .push((digest, AgentKey { id, agent_id }));
}

/// The snapshot an instance serves from, with the ticket of the load that made it.
struct Current {
    ticket: u64,
    snapshot: Option<Arc<Snapshot>>,
}

/// The routing state of this instance.
pub struct State {
    current: RwLock<Current>,
    /// Handed out before each load reads the database: a load that began later has a higher
    /// ticket and saw at least what an earlier one saw, so an older load that finishes last
    /// never replaces a newer snapshot.
    tickets: AtomicU64,
    reloads: AtomicU64,
    /// Every (profile, model) series ever loaded, for `/metrics`.
    pub models: ModelRegistry,
}

impl Default for State {
    fn default() -> State {
        State::new()
    }
}

impl State {
    pub fn new() -> State {
        State {
            current: RwLock::new(Current {
                ticket: 0,
                snapshot: None,
            }),
            tickets: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            models: ModelRegistry::default(),
        }
    }

    /// The snapshot to serve a request from; `None` until the first load.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot
            .clone()
    }

    pub fn is_loaded(&self) -> bool {
        self.snapshot().is_some()
    }

    /// How many loads have been applied since startup.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Reads the routing tables through `client` and serves them from now on (unless a
    /// load that began later was applied first).
    pub fn reload(&self, client: &mut postgres::Client) -> Result<(), postgres::Error> {
        let ticket = self.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let snapshot = load(client, &self.models)?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if ticket > current.ticket {
            current.ticket = ticket;
            current.snapshot = Some(Arc::new(snapshot));
            self.reloads.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Reads every routing table in one read-only, repeatable-read transaction, so the
/// snapshot is consistent.
fn load(
    client: &mut postgres::Client,
    registry: &ModelRegistry,
) -> Result<Snapshot, postgres::Error> {
    let mut tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    let mut profiles: HashMap<i64, Arc<Profile>> = HashMap::new();
    // `query_typed`: one round trip each, no statement to prepare first.
    for row in tx.query_typed(
        "SELECT id, profile_name, provider_type, base_url, credentials_enc FROM profiles",
        &[],
    )? {
        let raw_type: String = row.get(2);
        // The table's CHECK allows only the three known types.
        let Some(provider_type) = ProviderType::parse(&raw_type) else {
            continue;
        };
        let profile = Profile {
            id: row.get(0),
            name: row.get(1),
            provider_type,
            base_url: row.get(3),
            sealed_credentials: row.get(4),
        };
        profiles.insert(profile.id, Arc::new(profile));
    }

    let mut models: HashMap<i64, Arc<Model>> = HashMap::new();
    let mut listed = Vec::new();
    for row in tx.query_typed(
        "SELECT m.id, m.profile_id, m.model_name, m.enabled, m.max_tokens, m.drop_params,
                extract(epoch FROM m.created_at)::bigint
         FROM models m JOIN profiles p ON p.id = m.profile_id
         ORDER BY p.profile_name, m.model_name",
        &[],
    )? {
        let profile_id: i64 = row.get(1);
        let name: String = row.get(2);
        let enabled: bool = row.get(3);
        if enabled {
            if let Some(p) = profiles.get(&profile_id) {
                let created: i64 = row.get(6);
                listed.push(json!({
                    "id": format!("{}::{name}", p.name),
                    "object": "model",
                    "created": created,
                    "owned_by": p.name,
                }));
            }
        }
        let max_tokens: Option<i32> = row.get(4);
        models.insert(
            row.get(0),
            Arc::new(Model {
                name,
                max_tokens: max_tokens.map(i64::from),
                drop_params: row.get(5),
            }),
        );
    }

    let mut routes = HashMap::new();
    let mut series = HashMap::new();
    for row in tx.query_typed(
        "SELECT agent_id, profile_id, model_id FROM agent_state",
        &[],
    )? {
        let (profile_id, model_id): (i64, i64) = (row.get(1), row.get(2));
        if let (Some(profile), Some(model)) = (profiles.get(&profile_id), models.get(&model_id)) {
            series.entry(model_key(model)).or_insert_with(|| {
                registry.series(&profile.name, &model.name, profile.provider_type)
            });
            routes.insert(
                row.get::<_, String>(0),
                Route {
                    profile: profile.clone(),
                    model: model.clone(),
                },
            );
        }
    }

    let mut agent_keys = KeyIndex::new();
    for row in tx.query_typed("SELECT id, agent_id, key_sha256 FROM agent_keys", &[])? {
        let stored: Vec<u8> = row.get(2);
        // The table's CHECK allows only 32-byte digests.
        let Ok(digest) = <[u8; 32]>::try_from(stored.as_slice()) else {
            continue;
        };
        index_key(&mut agent_keys, digest, row.get(0), row.get(1));
    }
    tx.commit()?;
    let models_body =
        serde_json::to_vec(&json!({"object": "list", "data": listed})).unwrap_or_default();
    Ok(Snapshot {
        routes,
        agent_keys,
        models_body,
        series,
    })
}

/// Whether this instance can reach its database, as its own connections last found it.
/// While it is down, control-plane requests get a 503 at once instead of each waiting for
/// a pool checkout to time out.
#[derive(Debug)]
pub struct DbHealth {
    up: AtomicBool,
    /// How many times it went from up to down.
    outages: AtomicU64,
}

impl Default for DbHealth {
    fn default() -> DbHealth {
        DbHealth {
            up: AtomicBool::new(false),
            outages: AtomicU64::new(0),
        }
    }
}

impl DbHealth {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn outages(&self) -> u64 {
        self.outages.load(Ordering::Relaxed)
    }

    pub fn set(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                crate::info!("the database is reachable");
            } else {
                self.outages.fetch_add(1, Ordering::Relaxed);
                crate::warn!(
                    "the database is unreachable; proxied requests are served from memory"
                );
            }
        }
    }

    /// A 503 when the database was found down, without trying it again.
    pub fn check(&self) -> Result<(), ApiError> {
        if self.is_up() {
            Ok(())
        } else {
            Err(ApiError::DbUnavailable(
                "the database was found unreachable; reconnecting in the background".into(),
            ))
        }
    }
}

/// Work done on each fresh listening connection before its first load (migrations).
pub type OnConnect = Box<dyn Fn(&mut postgres::Client) -> Result<(), String> + Send>;

/// What the listener needs to run.
pub struct Listener {
    pub pg: crate::db::Database,
    pub state: Arc<State>,
    pub health: Arc<DbHealth>,
    pub resync: Duration,
    /// Runs on every fresh connection before the first load (migrations).
    pub on_connect: OnConnect,
}

/// The longest pause between two attempts to reach the database.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl Listener {
    /// Runs forever on a thread of its own.
    pub fn spawn(self) -> std::io::Result<thread::JoinHandle<()>> {
        thread::Builder::new()
            .name("state-listener".into())
            .spawn(move || self.run())
    }

    fn run(self) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let started = Instant::now();
            let Err(e) = self.session();
            self.health.set(false);
            // A connection that worked for a while is retried at once, a failing one less
            // and less often.
            if started.elapsed() > MAX_BACKOFF {
                backoff = Duration::from_millis(50);
            }
            crate::debug!("state listener: {e}");
            thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection's life: connect, listen, load, then apply notifications until the
    /// connection fails.
    fn session(&self) -> Result<std::convert::Infallible, String> {
        let mut client = crate::db::connect(&self.pg).map_err(|e| e.to_string())?;
        (self.on_connect)(&mut client)?;
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .map_err(|e| e.to_string())?;
        self.state.reload(&mut client).map_err(|e| e.to_string())?;
        self.health.set(true);
        let mut next_resync = Instant::now() + self.resync;
        loop {
            let wait = next_resync.saturating_duration_since(Instant::now());
            // `None` means the wait ran out, or the server hung up (checked below).
            let changed = match client.notifications().timeout_iter(wait).next() {
                Ok(found) => found.is_some(),
                Err(e) => return Err(format!("listening connection lost: {e}")),
            };
            if client.is_closed() {
                return Err("listening connection lost".into());
            }
            if changed {
                // A burst of changes needs one load: drain what has already arrived.
                let mut notifications = client.notifications();
                let mut queued = notifications.iter();
                while let Ok(Some(_)) = queued.next() {}
            } else {
                next_resync = Instant::now() + self.resync;
            }
            self.state
                .reload(&mut client)
                .map_err(|e| format!("reloading the routing state failed: {e}"))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_types_round_trip() {
        for t in [
            ProviderType::OpenAi,
            ProviderType::Anthropic,
            ProviderType::OpenAiCompatible,
        ] {
            assert_eq!(ProviderType::parse(t.as_str()), Some(t));
        }
        assert_eq!(ProviderType::parse("Anthropic"), None);
    }

    #[test]
    fn the_no_active_model_message_starts_with_the_contract_and_names_the_fix() {
        let m = no_active_model("bot-1");
        assert!(m.starts_with(NO_ACTIVE_MODEL), "{m}");
        assert!(
            m.contains("'bot-1'") && m.contains("POST /api/switch"),
            "{m}"
        );
        assert!(no_active_model("default").contains("x-agent-id"));
    }

    #[test]
    fn agent_keys_are_found_by_the_key_and_nothing_else() {
        let snapshot = Snapshot::with_agent_keys(&[(1, "a", "sk-sw-one"), (2, "b", "sk-sw-two")]);
        assert_eq!(
            snapshot.agent_key("sk-sw-two"),
            Some(&AgentKey {
                id: 2,
                agent_id: "b".into()
            })
        );
        assert_eq!(snapshot.agent_key("sk-sw-one").unwrap().agent_id, "a");
        assert_eq!(snapshot.agent_key("sk-sw-on"), None);
        assert_eq!(snapshot.agent_key(""), None);
    }

    #[test]
    fn a_state_without_a_load_serves_nothing() {
        let state = State::new();
        assert!(state.snapshot().is_none());
        assert_eq!(state.reloads(), 0);
    }

    #[test]
    fn database_health_answers_503_while_down() {
        let health = DbHealth::default();
        assert_eq!(health.check().unwrap_err().status(), 503);
        health.set(true);
        assert!(health.check().is_ok());
    }
}
