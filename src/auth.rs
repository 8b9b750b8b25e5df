//! Who is calling: the bearer key turned into a principal, compared in constant time.
//! Agent keys are looked up in the routing state in memory (never in the database), and
//! their `last_used_at` is written in the background, at most once a minute per key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::app::App;
use crate::config::Config;
use crate::crypto::secrets_equal;
use crate::error::ApiError;
use crate::state::{AgentKey, Snapshot};

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No key needed (a key that is sent is ignored).
    Public,
    /// The admin key.
    Admin,
    /// The agent key, an agent's own key, or the admin key.
    Agent,
    /// Like `Agent`, unless `REQUIRE_AGENT_KEY_FOR_PROXY=false`.
    Proxy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    /// The shared `ROUTER_AGENT_KEY`: any agent.
    Agent,
    /// A key of one agent (`/admin/agent-keys`): that agent only.
    AgentKey(AgentKey),
    Admin,
}

impl Principal {
    /// The agent a request with this key is bound to, if it is bound to one.
    pub fn bound_agent(&self) -> Option<&str> {
        match self {
            Principal::AgentKey(k) => Some(&k.agent_id),
            _ => None,
        }
    }

    /// A 403 unless this key may act for `agent_id`.
    pub fn may_act_for(&self, agent_id: &str) -> Result<(), ApiError> {
        match self.bound_agent() {
            Some(own) if own != agent_id => Err(ApiError::WrongAgent(format!(
                "this key belongs to agent_id '{own}' and cannot act for agent_id '{agent_id}'"
            ))),
            _ => Ok(()),
        }
    }
}

/// The key of an `Authorization: Bearer <key>` header.
pub fn bearer(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?.trim();
    let (scheme, key) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim())
        .filter(|k| !k.is_empty())
}

/// Authorizes a request by its `Authorization: Bearer` key; see [`authorize_key`].
pub fn authorize(
    app: &App,
    access: Access,
    authorization: Option<&str>,
) -> Result<Principal, ApiError> {
    authorize_key(app, access, bearer(authorization))
}

/// Authorizes a request against this instance's keys and routing state, and notes the use
/// of an agent key (written out later, off the request's path). For a key that came any
/// way: `Authorization: Bearer`, or `x-api-key` on `/v1/messages`.
pub fn authorize_key(app: &App, access: Access, key: Option<&str>) -> Result<Principal, ApiError> {
    let snapshot = app.state.snapshot();
    let principal = check_key(&app.config, snapshot.as_deref(), access, key)?;
    if let Principal::AgentKey(k) = &principal {
        app.key_usage.used(k.id);
    }
    Ok(principal)
}

/// The principal a key makes, and whether it may use a route of `access`. `snapshot` is
/// `None` until the routing state was first loaded.
pub fn check_key(
    config: &Config,
    snapshot: Option<&Snapshot>,
    access: Access,
    key: Option<&str>,
) -> Result<Principal, ApiError> {
    let key = key.map(str::trim).filter(|k| !k.is_empty());
    // Both comparisons always run, so timing does not tell which key was close.
    let (is_admin, is_agent) = match key {
        Some(k) => (
            secrets_equal(k, &config.admin_key),
            secrets_equal(k, &config.agent_key),
        ),
        None => (false, false),
    };
    let principal = if is_admin {
        Principal::Admin
    } else if is_agent {
        Principal::Agent
    } else if access == Access::Public {
        // A key sent to a public route is ignored: no look-up.
        Principal::Anonymous
    } else {
        match (key, snapshot) {
            (None, _) => Principal::Anonymous,
            (Some(k), Some(s)) => s
                .agent_key(k)
                .cloned()
                .map_or(Principal::Anonymous, Principal::AgentKey),
            // Without a loaded state this instance cannot tell an agent key from a wrong
            // one: a 503, not a 401 that would tell a good key it is bad.
            (Some(_), None) if needs_known_key(config, access) => {
                return Err(ApiError::Unavailable {
                    code: "state_not_loaded",
                    message: "agent keys cannot be checked yet: the database has not been \
                              reached since this instance started"
                        .into(),
                })
            }
            (Some(_), None) => Principal::Anonymous,
        }
    };
    match (access, principal) {
        (Access::Public, p) => Ok(p),
        (Access::Proxy, p) if !config.require_agent_key_for_proxy => Ok(p),
        (_, Principal::Anonymous) => Err(ApiError::Unauthorized),
        (Access::Admin, Principal::Agent | Principal::AgentKey(_)) => Err(ApiError::Forbidden),
        (_, p) => Ok(p),
    }
}

/// Whether a route refuses a request whose key is not known.
fn needs_known_key(config: &Config, access: Access) -> bool {
    match access {
        Access::Public | Access::Admin => false,
        Access::Agent => true,
        Access::Proxy => config.require_agent_key_for_proxy,
    }
}

/// How often at most `last_used_at` is written for one key.
const USAGE_EVERY: Duration = Duration::from_secs(60);

/// How often the writer looks for uses to write.
const USAGE_FLUSH: Duration = Duration::from_secs(1);

/// Uses of agent keys not yet written to `agent_keys.last_used_at`.
#[derive(Debug, Default)]
pub struct KeyUsage {
    inner: Mutex<Usage>,
}

#[derive(Debug, Default)]
struct Usage {
    /// When each key's use was last noted.
    noted: HashMap<i64, Instant>,
    /// Uses waiting for the writer: key id → when.
    pending: HashMap<i64, SystemTime>,
}

impl KeyUsage {
    /// Notes a use of key `id`, unless one was noted less than a minute ago.
    pub fn used(&self, id: i64) {
        let now = Instant::now();
        let mut usage = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if usage
            .noted
            .get(&id)
            .is_some_and(|at| now.duration_since(*at) < USAGE_EVERY)
        {
            return;
        }
        usage.noted.insert(id, now);
        usage.pending.insert(id, SystemTime::now());
    }

    /// The uses waiting to be written, taken out.
    fn take(&self) -> Vec<(i64, SystemTime)> {
        let mut usage = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        usage.pending.drain().collect()
    }

    /// Puts back uses that could not be written (a newer one of the same key wins).
    fn put_back(&self, uses: Vec<(i64, SystemTime)>) {
        let mut usage = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (id, at) in uses {
            let slot = usage.pending.entry(id).or_insert(at);
            *slot = (*slot).max(at);
        }
    }
}

/// Starts the thread that writes noted key uses to the database.
pub fn spawn_usage_writer(app: Arc<App>) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("key-usage".into())
        .spawn(move || loop {
            thread::sleep(USAGE_FLUSH);
            let uses = app.key_usage.take();
            if uses.is_empty() {
                continue;
            }
            if let Err(e) = write_usage(&app, &uses) {
                crate::debug!("agent key use not written yet: {e}");
                app.key_usage.put_back(uses);
            }
        })
}

fn write_usage(app: &App, uses: &[(i64, SystemTime)]) -> Result<(), ApiError> {
    let ids: Vec<i64> = uses.iter().map(|u| u.0).collect();
    let times: Vec<SystemTime> = uses.iter().map(|u| u.1).collect();
    // Touches only `last_used_at`, which the notify trigger leaves alone: no reload anywhere.
    app.conn()?.execute(
        "UPDATE agent_keys k SET last_used_at = GREATEST(k.last_used_at, u.at)
         FROM unnest($1::bigint[], $2::timestamptz[]) AS u(id, at) WHERE k.id = u.id",
        &[&ids, &times],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The principal an `Authorization` header makes.
    fn check(
        config: &Config,
        snapshot: Option<&Snapshot>,
        access: Access,
        authorization: Option<&str>,
    ) -> Result<Principal, ApiError> {
        check_key(config, snapshot, access, bearer(authorization))
    }

    fn config(require_proxy_key: bool) -> Config {
        let mut c = Config::from_lookup(|n| match n {
            "ROUTER_ADMIN_KEY" => Some("admin-k".into()),
            "ROUTER_AGENT_KEY" => Some("agent-k".into()),
            _ => None,
        })
        .unwrap();
        c.require_agent_key_for_proxy = require_proxy_key;
        c
    }

    #[test]
    fn bearer_keys_are_parsed_leniently() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn the_auth_matrix_holds() {
        let c = config(true);
        let admin = Some("Bearer admin-k");
        let agent = Some("Bearer agent-k");
        let wrong = Some("Bearer nope");
        let keys = Snapshot::with_agent_keys(&[(7, "bob", "sk-sw-bobs-key")]);
        let own = Some("Bearer sk-sw-bobs-key");
        let status =
            |access, header| check(&c, Some(&keys), access, header).map_err(|e| e.status());

        assert_eq!(status(Access::Admin, admin), Ok(Principal::Admin));
        assert_eq!(status(Access::Admin, agent), Err(403));
        assert_eq!(status(Access::Admin, wrong), Err(401));
        assert_eq!(status(Access::Admin, None), Err(401));

        assert_eq!(status(Access::Agent, admin), Ok(Principal::Admin));
        assert_eq!(status(Access::Agent, agent), Ok(Principal::Agent));
        assert_eq!(status(Access::Agent, wrong), Err(401));

        assert_eq!(status(Access::Proxy, None), Err(401));
        assert_eq!(status(Access::Proxy, agent), Ok(Principal::Agent));
        assert_eq!(status(Access::Public, wrong), Ok(Principal::Anonymous));

        let bob = Principal::AgentKey(AgentKey {
            id: 7,
            agent_id: "bob".into(),
        });
        assert_eq!(status(Access::Admin, own), Err(403));
        assert_eq!(status(Access::Agent, own), Ok(bob.clone()));
        assert_eq!(status(Access::Proxy, own), Ok(bob));
        assert_eq!(status(Access::Public, own), Ok(Principal::Anonymous));
    }

    #[test]
    fn an_agent_key_acts_for_its_own_agent_only() {
        let bob = Principal::AgentKey(AgentKey {
            id: 7,
            agent_id: "bob".into(),
        });
        assert!(bob.may_act_for("bob").is_ok());
        let e = bob.may_act_for("alice").unwrap_err();
        assert_eq!(e.status(), 403);
        assert!(e.message().contains("'bob'") && e.message().contains("'alice'"));
        assert!(Principal::Agent.may_act_for("alice").is_ok());
        assert!(Principal::Admin.may_act_for("alice").is_ok());
    }

    #[test]
    fn agent_keys_cannot_be_told_from_wrong_ones_before_the_first_load() {
        let c = config(true);
        let e = check(&c, None, Access::Agent, Some("Bearer sk-sw-x")).unwrap_err();
        assert_eq!(e.status(), 503);
        let e = check(&c, None, Access::Admin, Some("Bearer sk-sw-x")).unwrap_err();
        assert_eq!(e.status(), 401);
        assert_eq!(
            check(&c, None, Access::Agent, Some("Bearer agent-k")).unwrap(),
            Principal::Agent
        );
    }

    #[test]
    fn a_key_use_is_noted_at_most_once_a_minute() {
        let usage = KeyUsage::default();
        usage.used(1);
        usage.used(1);
        usage.used(2);
        let mut taken: Vec<i64> = usage.take().into_iter().map(|u| u.0).collect();
        taken.sort();
        assert_eq!(taken, [1, 2]);
        usage.used(1);
        assert!(usage.take().is_empty());
        let at = SystemTime::now();
        usage.put_back(vec![(3, at)]);
        assert_eq!(usage.take(), [(3, at)]);
    }

    #[test]
    fn the_proxy_runs_without_a_key_when_configured() {
        let c = config(false);
        assert_eq!(
            check(&c, None, Access::Proxy, None).unwrap(),
            Principal::Anonymous
        );
        assert_eq!(
            check(&c, None, Access::Proxy, Some("Bearer whatever")).unwrap(),
            Principal::Anonymous
        );
        assert!(check(&c, None, Access::Agent, None).is_err());
    }
}
