//! The audit trail: one row per switch and one per proxied request, never any prompt text.

use std::time::SystemTime;

use postgres::{GenericClient, Row};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::crypto::hex;
use crate::error::ApiError;
use crate::iso;
use crate::usage::Usage;

/// One side of a switch.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub profile_name: String,
    pub provider_type: String,
    pub model_name: String,
}

impl Target {
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a target serializes")
    }
}

/// Writes one `audit_switches` row; returns its id.
pub fn record_switch(
    c: &mut impl GenericClient,
    agent_id: &str,
    from: Option<&Target>,
    to: &Target,
    rollback_of: Option<i64>,
) -> Result<i64, ApiError> {
    let row = c.query_one(
        "INSERT INTO audit_switches (agent_id, from_profile_name, from_provider_type,
             from_model_name, to_profile_name, to_provider_type, to_model_name, rollback_of)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        &[
            &agent_id,
            &from.map(|f| &f.profile_name),
            &from.map(|f| &f.provider_type),
            &from.map(|f| &f.model_name),
            &to.profile_name,
            &to.provider_type,
            &to.model_name,
            &rollback_of,
        ],
    )?;
    Ok(row.get(0))
}

/// One `audit_switches` row, in the shape `/api/history` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Switch {
    pub id: i64,
    pub agent_id: String,
    pub from: Option<Target>,
    pub to: Target,
    pub switched_at: String,
    pub rollback_of: Option<i64>,
}

impl Switch {
    const COLUMNS: &'static str = concat!(
        "id, agent_id, from_profile_name, from_provider_type, from_model_name, ",
        "to_profile_name, to_provider_type, to_model_name, ",
        iso!("switched_at"),
        ", rollback_of"
    );

    fn from_row(row: &Row) -> Switch {
        let from = match (row.get(2), row.get(3), row.get(4)) {
            (Some(profile_name), Some(provider_type), Some(model_name)) => Some(Target {
                profile_name,
                provider_type,
                model_name,
            }),
            _ => None,
        };
        Switch {
            id: row.get(0),
            agent_id: row.get(1),
            from,
            to: Target {
                profile_name: row.get(5),
                provider_type: row.get(6),
                model_name: row.get(7),
            },
            switched_at: row.get(8),
            rollback_of: row.get(9),
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a switch serializes")
    }
}

/// An agent's switches, newest first (by id: switches of one agent are serialized by its
/// lock, so ids follow the order in which they took effect).
pub fn history(
    c: &mut impl GenericClient,
    agent_id: &str,
    limit: i64,
) -> Result<Vec<Switch>, ApiError> {
    let sql = format!(
        "SELECT {} FROM audit_switches WHERE agent_id = $1 ORDER BY id DESC LIMIT $2",
        Switch::COLUMNS
    );
    Ok(c.query(&sql, &[&agent_id, &limit])?
        .iter()
        .map(Switch::from_row)
        .collect())
}

/// A switch by id, whichever agent it belongs to.
pub fn find_switch(c: &mut impl GenericClient, id: i64) -> Result<Option<Switch>, ApiError> {
    let sql = format!(
        "SELECT {} FROM audit_switches WHERE id = $1",
        Switch::COLUMNS
    );
    Ok(c.query_opt(&sql, &[&id])?.as_ref().map(Switch::from_row))
}

/// One `audit_requests` row, as `GET /admin/requests` shows it.
const REQUEST_COLUMNS: &str = concat!(
    "id, endpoint, agent_id, profile_name, provider_type, model_name, stream, status, ",
    "latency_ms, prompt_tokens, completion_tokens, total_tokens, prompt_sha256, error, ",
    iso!("created_at")
);

/// The query of one page of `audit_requests`, newest first: `$1` is the limit, then the
/// agent (`$2`) and the id to page back from (`$2` or `$3`) when given. Each shape is
/// served by an index (`audit_requests_agent_id_id_idx`, or the primary key) read backwards,
/// without a sort; a test checks the plans.
pub fn requests_page_sql(by_agent: bool, before_id: bool) -> String {
    let mut conditions = Vec::new();
    if by_agent {
        conditions.push("agent_id = $2".to_string());
    }
    if before_id {
        conditions.push(format!("id < ${}", if by_agent { 3 } else { 2 }));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    format!("SELECT {REQUEST_COLUMNS} FROM audit_requests{filter} ORDER BY id DESC LIMIT $1")
}

/// One page of audited requests as JSON objects, newest first.
pub fn requests_page(
    c: &mut impl GenericClient,
    agent_id: Option<&str>,
    before_id: Option<i64>,
    limit: i64,
) -> Result<Vec<Value>, ApiError> {
    let sql = requests_page_sql(agent_id.is_some(), before_id.is_some());
    let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&limit];
    if let Some(agent_id) = &agent_id {
        params.push(agent_id);
    }
    if let Some(before_id) = &before_id {
        params.push(before_id);
    }
    Ok(c.query(&sql, &params)?
        .iter()
        .map(|r| {
            let row = RequestRow {
                id: r.get(0),
                endpoint: r.get(1),
                agent_id: r.get(2),
                profile_name: r.get(3),
                provider_type: r.get(4),
                model_name: r.get(5),
                stream: r.get(6),
                status: r.get(7),
                latency_ms: r.get(8),
                prompt_tokens: r.get(9),
                completion_tokens: r.get(10),
                total_tokens: r.get(11),
                prompt_sha256: r.get(12),
                error: r.get(13),
                created_at: r.get(14),
            };
            serde_json::to_value(row).expect("a request row serializes")
        })
        .collect())
}

/// One `audit_requests` row as `GET /admin/requests` lists it (the columns of
/// `REQUEST_COLUMNS`, in order).
#[derive(Serialize)]
struct RequestRow {
    id: i64,
    endpoint: String,
    agent_id: String,
    profile_name: Option<String>,
    provider_type: Option<String>,
    model_name: Option<String>,
    stream: bool,
    status: i32,
    latency_ms: i32,
    prompt_tokens: Option<i32>,
    completion_tokens: Option<i32>,
    total_tokens: Option<i32>,
    prompt_sha256: Option<String>,
    error: Option<String>,
    created_at: String,
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
    fn each_requests_page_query_numbers_its_parameters_in_order() {
        assert!(requests_page_sql(false, false)
            .ends_with("FROM audit_requests ORDER BY id DESC LIMIT $1"));
        assert!(requests_page_sql(true, false).contains("WHERE agent_id = $2 ORDER BY"));
        assert!(requests_page_sql(false, true).contains("WHERE id < $2 ORDER BY"));
        assert!(requests_page_sql(true, true).contains("WHERE agent_id = $2 AND id < $3 ORDER BY"));
    }

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
