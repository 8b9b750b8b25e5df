//! The audit trail: one row per switch and one per proxied request, never any prompt text.

use std::time::SystemTime;

use postgres::GenericClient;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::crypto::hex;
use crate::error::ApiError;
use crate::usage::Usage;

/// One side of a switch.
#[derive(Debug, Clone)]
pub struct Target {
    pub profile_name: String,
    pub provider_type: String,
    pub model_name: String,
}

pub fn record_switch(
    c: &mut impl GenericClient,
    agent_id: &str,
    from: Option<&Target>,
    to: &Target,
) -> Result<(), ApiError> {
    c.execute(
        "INSERT INTO audit_switches (agent_id, from_profile_name, from_provider_type,
             from_model_name, to_profile_name, to_provider_type, to_model_name)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &agent_id,
            &from.map(|f| &f.profile_name),
            &from.map(|f| &f.provider_type),
            &from.map(|f| &f.model_name),
            &to.profile_name,
            &to.provider_type,
            &to.model_name,
        ],
    )?;
    Ok(())
}

/// Which proxy route a request came through (`audit_requests.endpoint`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Endpoint {
    #[default]
    ChatCompletions,
    Messages,
    Responses,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Messages => "messages",
            Endpoint::Responses => "responses",
        }
    }
}

/// One proxied request, as it ended: what the journal turns into an `audit_requests` row.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub endpoint: Endpoint,
    pub agent_id: String,
    /// When the request arrived (the row's `created_at`).
    pub received_at: SystemTime,
    pub target: Option<Target>,
    pub stream: bool,
    pub status: u16,
    pub latency_ms: i32,
    pub usage: Option<Usage>,
    pub prompt_sha256: Option<String>,
    /// A short, client-safe description of a failure; never prompt or answer text.
    pub error: Option<String>,
}

impl Default for RequestRecord {
    fn default() -> RequestRecord {
        RequestRecord {
            endpoint: Endpoint::default(),
            agent_id: String::new(),
            received_at: SystemTime::now(),
            target: None,
            stream: false,
            status: 0,
            latency_ms: 0,
            usage: None,
            prompt_sha256: None,
            error: None,
        }
    }
}

/// The longest `error` stored; upstream error text (a stream's error event) can be long.
const MAX_ERROR_CHARS: usize = 500;

/// An error description as stored: at most `MAX_ERROR_CHARS` characters.
pub fn short_error(e: &str) -> String {
    truncate_chars(e, MAX_ERROR_CHARS).to_string()
}

/// At most `max` characters of `s`, cut on a character boundary.
fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((cut, _)) => &s[..cut],
        None => s,
    }
}

/// Hex SHA-256 of the `prompt` field (or nothing) followed by the compact JSON of `messages`
/// with object keys sorted, as the contract defines it.
///
/// serde_json's `Value` keeps object keys in a sorted map (the `preserve_order` feature is
/// off), so `to_string` already gives Python's `sort_keys=True, separators=(",", ":")`; its
/// output is not ASCII-escaped, like `ensure_ascii=False`.
pub fn prompt_sha256(request: &Map<String, Value>) -> String {
    let mut hasher = Sha256::new();
    match request.get("prompt") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => hasher.update(s.as_bytes()),
        Some(other) => hash_json(&mut hasher, other),
    }
    if let Some(messages) = request.get("messages") {
        hash_json(&mut hasher, messages);
    }
    hex(&hasher.finalize())
}

/// The `/v1/messages` form: the compact sorted JSON of `system` (when present) followed by
/// that of `messages`.
pub fn messages_prompt_sha256(system: Option<&Value>, messages: Option<&Value>) -> String {
    let mut hasher = Sha256::new();
    if let Some(system) = system.filter(|s| !s.is_null()) {
        hash_json(&mut hasher, system);
    }
    if let Some(messages) = messages {
        hash_json(&mut hasher, messages);
    }
    hex(&hasher.finalize())
}

/// Feeds the compact JSON of `value` to the hasher without building the string first.
fn hash_json(hasher: &mut Sha256, value: &Value) {
    // Writing into a hasher cannot fail, and a `Value` always serializes.
    let _ = serde_json::to_writer(hasher, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prompt_hash_uses_sorted_compact_messages() {
        let body: Value = serde_json::from_str(
            r#"{"model":"x","messages":[{"role":"user","content":"héllo \"q\""}]}"#,
        )
        .unwrap();
        // python3 -c 'import json,hashlib;m=[{"role":"user","content":"héllo \"q\""}];
        //   print(hashlib.sha256(json.dumps(m,separators=(",",":"),sort_keys=True,
        //   ensure_ascii=False).encode()).hexdigest())'
        let expected =
            crate::crypto::sha256_hex(r#"[{"content":"héllo \"q\"","role":"user"}]"#.as_bytes());
        assert_eq!(prompt_sha256(body.as_object().unwrap()), expected);
    }

    #[test]
    fn errors_are_cut_to_500_characters_on_a_character_boundary() {
        assert_eq!(truncate_chars("short", MAX_ERROR_CHARS), "short");
        let exact = "é".repeat(MAX_ERROR_CHARS);
        assert_eq!(truncate_chars(&exact, MAX_ERROR_CHARS), exact);
        let long = format!("a{}", "é".repeat(1000));
        let cut = truncate_chars(&long, MAX_ERROR_CHARS);
        assert_eq!(cut.chars().count(), MAX_ERROR_CHARS);
        assert_eq!(cut, format!("a{}", "é".repeat(MAX_ERROR_CHARS - 1)));
    }

    #[test]
    fn a_messages_prompt_hash_is_system_then_messages() {
        let system = json!([{"type": "text", "text": "sys"}]);
        let messages = json!([{"role": "user", "content": "hi"}]);
        assert_eq!(
            messages_prompt_sha256(Some(&system), Some(&messages)),
            crate::crypto::sha256_hex(
                br#"[{"text":"sys","type":"text"}][{"content":"hi","role":"user"}]"#
            )
        );
        assert_eq!(
            messages_prompt_sha256(None, Some(&messages)),
            crate::crypto::sha256_hex(br#"[{"content":"hi","role":"user"}]"#)
        );
    }

    #[test]
    fn the_prompt_field_comes_before_the_messages() {
        let body = json!({"prompt": "abc", "messages": []});
        assert_eq!(
            prompt_sha256(body.as_object().unwrap()),
            crate::crypto::sha256_hex(b"abc[]")
        );
        assert_eq!(prompt_sha256(&Map::new()), crate::crypto::sha256_hex(b""));
    }
}
