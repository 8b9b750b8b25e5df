//! `/admin/agent-keys`: keys of one agent each, so that no agent can act as another.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::error::ApiError;
use crate::http::{Reply, Req};
use crate::input::{check_agent_id, Fields};
use crate::store;

/// What every agent key starts with, so that one found in a log or a repository is
/// recognizable.
pub const KEY_PREFIX: &str = "sk-sw-";

/// A fresh key: the prefix, then 32 bytes from the operating system's random source in
/// URL-safe base64 (43 characters).
pub fn new_key() -> String {
    format!(
        "{KEY_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(crate::crypto::random_bytes(32))
    )
}

pub fn create(app: &App, req: &Req) -> Result<Reply, ApiError> {
    let body = req.json_object()?;
    let f = Fields(&body);
    f.only(&["agent_id", "name"])?;
    let agent_id = f.str("agent_id")?;
    check_agent_id(agent_id)
        .map_err(|e| ApiError::bad_request(format!("field {}", e.message())))?;
    let name = f.opt_str("name")?;
    if let Some(name) = name {
        if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "field `name` must be 1 to 128 characters with no control characters",
            ));
        }
    }
    let key = new_key();
    let digest = Sha256::digest(key.as_bytes());
    let mut conn = app.conn()?;
    let row = store::insert_agent_key(&mut *conn, agent_id, name, &digest)?;
    // This instance accepts the key before the operator has it; the others within the
    // time a switch takes (the table's trigger notifies them).
    app.apply_changes(&mut conn);
    Ok(Reply::created(&json!({
        "id": row.id,
        "agent_id": row.agent_id,
        "name": row.name,
        "key": key,
        "created_at": row.created_at,
    })))
}

pub fn list(app: &App, req: &Req) -> Result<Reply, ApiError> {
    let agent_id = req.query("agent_id");
    if let Some(agent_id) = agent_id {
        check_agent_id(agent_id)?;
    }
    let keys = store::list_agent_keys(&mut *app.conn()?, agent_id)?;
    let data: Vec<Value> = keys.iter().map(store::AgentKeyRow::to_json).collect();
    Ok(Reply::ok(&json!({ "data": data })))
}

pub fn delete(app: &App, id: &str) -> Result<Reply, ApiError> {
    let not_found = || ApiError::not_found(format!("agent key {id} not found"));
    let key_id: i64 = id.parse().map_err(|_| not_found())?;
    let mut conn = app.conn()?;
    if !store::delete_agent_key(&mut *conn, key_id)? {
        return Err(not_found());
    }
    // Refused here from now on; elsewhere as soon as the notification arrives.
    app.apply_changes(&mut conn);
    Ok(Reply::ok(&json!({"deleted": true, "id": key_id})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_prefix_and_43_url_safe_characters_and_never_repeat() {
        let a = new_key();
        let b = new_key();
        assert_ne!(a, b);
        let rest = a.strip_prefix(KEY_PREFIX).unwrap();
        assert_eq!(rest.len(), 43);
        assert!(rest
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }
}
