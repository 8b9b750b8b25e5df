//! Who is calling: the bearer key turned into a principal, compared in constant time.

use crate::config::Config;
use crate::crypto::secrets_equal;
use crate::error::ApiError;

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No key needed (a key that is sent is ignored).
    Public,
    /// The admin key.
    Admin,
    /// The agent key or the admin key.
    Agent,
    /// Like `Agent`, unless `REQUIRE_AGENT_KEY_FOR_PROXY=false`.
    Proxy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    Agent,
    Admin,
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

pub fn authorize(
    config: &Config,
    access: Access,
    authorization: Option<&str>,
) -> Result<Principal, ApiError> {
    authorize_key(config, access, bearer(authorization))
}

/// Like [`authorize`], for a key that came some other way (`x-api-key` on `/v1/messages`).
pub fn authorize_key(
    config: &Config,
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
    } else {
        Principal::Anonymous
    };
    match (access, principal) {
        (Access::Public, p) => Ok(p),
        (Access::Proxy, p) if !config.require_agent_key_for_proxy => Ok(p),
        (_, Principal::Anonymous) => Err(ApiError::Unauthorized),
        (Access::Admin, Principal::Agent) => Err(ApiError::Forbidden),
        (_, p) => Ok(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let status = |access, header| authorize(&c, access, header).map_err(|e| e.status());

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
    }

    #[test]
    fn the_proxy_runs_without_a_key_when_configured() {
        let c = config(false);
        assert_eq!(
            authorize(&c, Access::Proxy, None).unwrap(),
            Principal::Anonymous
        );
        assert_eq!(
            authorize(&c, Access::Proxy, Some("Bearer whatever")).unwrap(),
            Principal::Anonymous
        );
        assert!(authorize(&c, Access::Agent, None).is_err());
    }
}
