//! The proxy: /v1/models and /v1/chat/completions through fake upstreams.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Generous: the machine running the tests is slow and busy.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// A prompt no server line or audit column may ever contain.
const PROMPT_CANARY: &str = "PROMPT-CANARY-7f3a9 what is the secret plan";

/// An answer text no server line or audit column may ever contain.
const ANSWER_CANARY: &str = "ANSWER-CANARY-c41d2 the plan is hidden";

fn chat(app: &TestApp, agent_id: &str, body: &Value) -> Reply {
    app.agent("POST", "/v1/chat/completions")
        .header("x-agent-id", agent_id)
        .json(body)
}

fn hello(text: &str) -> Value {
    json!({"model": "anything", "messages": [{"role": "user", "content": text}]})
}

/// An OpenAI chat.completion, with a field of its own to show it comes back unchanged.
fn openai_completion(text: &str) -> Value {
    json!({
        "id": "chatcmpl-test-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "upstream-model-name",
        "system_fingerprint": "fp_test",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    })
}

/// An Anthropic message with text only.
fn anthropic_message(text: &str) -> Value {
    json!({
        "id": "msg_test_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-upstream",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": 9, "output_tokens": 4}
    })
}

fn openai_upstream() -> FakeUpstream {
    FakeUpstream::start(|_| Answer::Json(200, openai_completion("hello from upstream")))
}

fn anthropic_upstream() -> FakeUpstream {
    FakeUpstream::start(|_| Answer::Json(200, anthropic_message("hello from claude")))
}

/// A URL on which nothing listens: the port was free a moment ago and is closed again.
fn refusing_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// An upstream that reads each request whole, writes `reply` (which may be nothing) and closes
/// the connection; returns its URL and how many requests it took. A tiny_http fake cannot do
/// this: tiny_http keeps the connection open for the next request, so the caller would see a
/// silent upstream rather than a closed one.
fn closing_upstream(reply: &'static [u8]) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            read_request(&mut conn);
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = conn.write_all(reply);
            let _ = conn.flush();
            // Dropping the stream closes the connection.
        }
    });
    (url, count)
}

/// An upstream that answers 200 at once, then sends its JSON body one byte at a time, each
/// byte well within `UPSTREAM_TIMEOUT_MS` of the last but the whole taking seconds.
fn trickling_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                read_request(&mut conn);
                let body = br#"{"id":"chatcmpl-slow","object":"chat.completion","choices":[]}"#;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                if conn.write_all(head.as_bytes()).is_err() {
                    return;
                }
                for byte in body {
                    thread::sleep(Duration::from_millis(100));
                    if conn.write_all(&[*byte]).and_then(|_| conn.flush()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

/// Reads a request head and its `Content-Length` body, so that closing sends a clean FIN.
fn read_request(conn: &mut TcpStream) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while data.len() < head_end + length {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
}

fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn keys(v: &Value) -> Vec<String> {
    let mut keys: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

/// Checks the status and the JSON error shape of SPEC.md; returns `error.message`.
fn assert_error(r: &Reply, status: u16) -> String {
    assert_eq!(r.status, status, "unexpected status; body: {}", r.text());
    let body = r.json();
    assert_eq!(keys(&body), ["error"], "only `error` at the top: {body}");
    assert_eq!(
        keys(&body["error"]),
        ["code", "message", "type"],
        "the error has message, type and code: {body}"
    );
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(!message.is_empty(), "a non-empty message: {body}");
    assert!(body["error"]["type"].is_string(), "a string type: {body}");
    message.to_string()
}

/// Whether `message` names `field` as a word of its own.
fn names_field(message: &str, field: &str) -> bool {
    message
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|word| word == field)
}

pub(crate) fn audit_count(app: &TestApp) -> usize {
    let n: i64 = app
        .db
        .client()
        .query_one("SELECT count(*) FROM audit_requests", &[])
        .unwrap()
        .get(0);
    n as usize
}

/// Every audit_requests row as JSON, oldest first.
pub(crate) fn audit_rows(app: &TestApp) -> Vec<Value> {
    app.db
        .client()
        .query(
            "SELECT row_to_json(t) FROM audit_requests t ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Waits until there are `expected` audit rows and the journal holds nothing more, then
/// checks there is no extra row; returns the rows.
pub(crate) fn settled_audit_rows(app: &TestApp, expected: usize) -> Vec<Value> {
    let reached = eventually(PATIENCE, || audit_count(app) >= expected);
    assert!(
        reached,
        "expected {expected} audit rows, found {}",
        audit_count(app)
    );
    app.wait_audit_written();
    let rows = audit_rows(app);
    assert_eq!(
        rows.len(),
        expected,
        "exactly one row per request: {rows:#?}"
    );
    rows
}

/// The one row the last request added to the `before` there were.
pub(crate) fn next_audit_row(app: &TestApp, before: usize) -> Value {
    settled_audit_rows(app, before + 1).pop().unwrap()
}

/// Makes every `content` string a list of text blocks, so that both forms the translation may
/// use for plain text compare equal.
fn blocks(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    ("content", Value::String(s)) => {
                        (k.clone(), json!([{"type": "text", "text": s}]))
                    }
                    _ => (k.clone(), blocks(v)),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(blocks).collect()),
        other => other.clone(),
    }
}

/// The completion limit an OpenAI-type upstream received, under either of its names.
fn limit_sent(body: &Value) -> Option<i64> {
    let completion = body.get("max_completion_tokens").and_then(Value::as_i64);
    let max = body.get("max_tokens").and_then(Value::as_i64);
    assert!(
        completion.is_none() || max.is_none(),
        "one limit, not two: {body}"
    );
    completion.or(max)
}

// ---------------------------------------------------------------------------------------------
// GET /v1/models
// ---------------------------------------------------------------------------------------------

#[test]
fn v1_models_lists_enabled_models_as_profile_and_model_without_a_key() {
    let app = TestApp::spawn();
    app.create_profile("acct-b", "openai", "https://api.openai.com/v1", "sk-b");
    app.create_profile("acct-a", "anthropic", "https://api.anthropic.com", "sk-a");
    app.add_model("acct-b", "gpt-x", json!({}));
    app.add_model("acct-b", "gpt-off", json!({"enabled": false}));
    app.add_model("acct-a", "claude-y", json!({"max_tokens": 100}));
    let before = unix_now();

    for call in [
        app.request("GET", "/v1/models"),
        app.request("GET", "/v1/models").key("not-a-key-at-all"),
        app.agent("GET", "/v1/models"),
    ] {
        let r = call.send();
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        assert_eq!(keys(&body), ["data", "object"], "{body}");
        assert_eq!(body["object"], "list");
        let data = body["data"].as_array().expect("data is a list");
        let mut ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
        ids.sort();
        assert_eq!(ids, ["acct-a::claude-y", "acct-b::gpt-x"], "{body}");
        for m in data {
            assert_eq!(keys(m), ["created", "id", "object", "owned_by"], "{m}");
            assert_eq!(m["object"], "model", "{m}");
            let profile = m["id"].as_str().unwrap().split("::").next().unwrap();
            assert_eq!(m["owned_by"], profile, "{m}");
            let created = m["created"].as_i64().expect("created is an integer");
            assert!(
                (before - 3600..=unix_now() + 3600).contains(&created),
                "created is the unix time the model was made: {m}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// POST /v1/chat/completions through OpenAI-type profiles
// ---------------------------------------------------------------------------------------------

/// One request through a profile of `provider_type` whose base_url has a path of its own.
fn assert_relayed_through(provider_type: &str) {
    let upstream = openai_upstream();
    let app = TestApp::spawn();
    let base_url = format!("{}/prefix/v1", upstream.url);
    app.create_profile("acct", provider_type, &base_url, "sk-acct-key-123");
    app.switch("relay-agent", "acct", "model-one");

    let sent = json!({
        "model": "gpt-whatever-the-agent-says",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi there"}
        ],
        "temperature": 0.3,
        "top_p": 0.9,
        "seed": 42,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "metadata": {"k": "v"}
    });
    let r = chat(&app, "relay-agent", &sent);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), openai_completion("hello from upstream"));
    assert!(
        r.header("Content-Type")
            .unwrap_or("")
            .starts_with("application/json"),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("x-switcher-profile"), Some("acct"));
    assert_eq!(r.header("x-switcher-model"), Some("model-one"));

    let got = upstream.received();
    assert_eq!(got.len(), 1, "{got:#?}");
    let got = &got[0];
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/prefix/v1/chat/completions");
    assert_eq!(got.header("Authorization"), Some("Bearer sk-acct-key-123"));
    let mut expected = sent.clone();
    expected["model"] = json!("model-one");
    assert_eq!(got.json(), expected, "only `model` is replaced");
    let forwarded = format!("{:?}", got.headers);
    assert!(
        !forwarded.contains(AGENT_KEY),
        "the agent's key stays here: {forwarded}"
    );
}

#[test]
fn a_chat_completion_through_an_openai_profile_reaches_its_upstream_with_its_key() {
    assert_relayed_through("openai");
}

#[test]
fn a_chat_completion_through_an_openai_compatible_profile_reaches_its_upstream_with_its_key() {
    assert_relayed_through("openai_compatible");
}

#[test]
fn two_openai_profiles_with_different_keys_are_two_accounts() {
    let first = FakeUpstream::start(|_| Answer::Json(200, openai_completion("from first")));
    let second = FakeUpstream::start(|_| Answer::Json(200, openai_completion("from second")));
    let app = TestApp::spawn();
    app.create_profile("work", "openai", &first.url, "sk-work-111");
    app.create_profile("home", "openai", &second.url, "sk-home-222");
    app.switch("alice", "work", "gpt-a");
    app.switch("bob", "home", "gpt-b");

    for (agent, answer) in [
        ("alice", "from first"),
        ("bob", "from second"),
        ("alice", "from first"),
    ] {
        let r = chat(&app, agent, &hello("hi"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.json()["choices"][0]["message"]["content"],
            answer,
            "{agent}"
        );
    }
    let (to_first, to_second) = (first.received(), second.received());
    assert_eq!((to_first.len(), to_second.len()), (2, 1));
    for got in &to_first {
        assert_eq!(got.header("Authorization"), Some("Bearer sk-work-111"));
        assert_eq!(got.json()["model"], "gpt-a");
    }
    assert_eq!(
        to_second[0].header("Authorization"),
        Some("Bearer sk-home-222")
    );
    assert_eq!(to_second[0].json()["model"], "gpt-b");
}

#[test]
fn two_anthropic_profiles_with_different_keys_are_two_accounts() {
    let first = FakeUpstream::start(|_| Answer::Json(200, anthropic_message("from first")));
    let second = FakeUpstream::start(|_| Answer::Json(200, anthropic_message("from second")));
    let app = TestApp::spawn();
    app.create_profile("team-one", "anthropic", &first.url, "sk-ant-one");
    app.create_profile("team-two", "anthropic", &second.url, "sk-ant-two");
    app.add_model("team-one", "claude-one", json!({}));
    app.add_model("team-two", "claude-two", json!({}));
    app.switch("carol", "team-one", "claude-one");
    app.switch("dave", "team-two", "claude-two");

    for (agent, answer) in [("dave", "from second"), ("carol", "from first")] {
        let r = chat(&app, agent, &hello("hi"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.json()["choices"][0]["message"]["content"],
            answer,
            "{agent}"
        );
    }
    let (to_first, to_second) = (first.received(), second.received());
    assert_eq!((to_first.len(), to_second.len()), (1, 1));
    assert_eq!(to_first[0].header("x-api-key"), Some("sk-ant-one"));
    assert_eq!(to_first[0].json()["model"], "claude-one");
    assert_eq!(to_second[0].header("x-api-key"), Some("sk-ant-two"));
    assert_eq!(to_second[0].json()["model"], "claude-two");
}

#[test]
fn a_switch_between_two_requests_takes_effect_on_the_next_request() {
    let openai = openai_upstream();
    let anthropic = anthropic_upstream();
    let app = TestApp::spawn();
    app.create_profile("oa", "openai", &openai.url, "sk-oa");
    app.create_profile("an", "anthropic", &anthropic.url, "sk-an");
    app.add_model("an", "claude-z", json!({}));

    app.switch("flipper", "oa", "gpt-1");
    let r = chat(&app, "flipper", &hello("one"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switcher-model"), Some("gpt-1"));
    assert_eq!(openai.last().json()["model"], "gpt-1");

    app.switch("flipper", "an", "claude-z");
    let r = chat(&app, "flipper", &hello("two"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switcher-profile"), Some("an"));
    assert_eq!(r.header("x-switcher-model"), Some("claude-z"));
    assert_eq!(r.json()["object"], "chat.completion");
    assert_eq!(anthropic.received().len(), 1);
    assert_eq!(anthropic.last().json()["model"], "claude-z");

    app.switch("flipper", "oa", "gpt-2");
    let r = chat(&app, "flipper", &hello("three"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switcher-profile"), Some("oa"));
    assert_eq!(r.header("x-switcher-model"), Some("gpt-2"));
    assert_eq!(openai.received().len(), 2);
    assert_eq!(openai.last().json()["model"], "gpt-2");
    assert_eq!(anthropic.received().len(), 1);
}

#[test]
fn a_rotated_key_or_moved_base_url_is_used_from_the_next_request_on() {
    let old = openai_upstream();
    let new = openai_upstream();
    let app = TestApp::spawn();
    let profile = app.create_profile("acct", "openai", &old.url, "sk-old-key");
    app.switch("rotor", "acct", "gpt-1");
    let path = format!("/admin/profiles/{}", profile["id"]);

    assert_eq!(chat(&app, "rotor", &hello("one")).status, 200);
    assert_eq!(
        old.last().header("Authorization"),
        Some("Bearer sk-old-key")
    );

    let r = app
        .admin("PATCH", &path)
        .json(&json!({"credentials": {"api_key": "sk-new-key"}}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(chat(&app, "rotor", &hello("two")).status, 200);
    assert_eq!(
        old.last().header("Authorization"),
        Some("Bearer sk-new-key")
    );

    let r = app
        .admin("PATCH", &path)
        .json(&json!({"base_url": format!("{}/", new.url)}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(chat(&app, "rotor", &hello("three")).status, 200);
    assert_eq!(old.received().len(), 2);
    assert_eq!(new.received().len(), 1);
    assert_eq!(new.last().path, "/chat/completions");
    assert_eq!(
        new.last().header("Authorization"),
        Some("Bearer sk-new-key")
    );
}

#[test]
fn a_request_without_x_agent_id_is_the_default_agents() {
    let upstream = openai_upstream();
    let app = TestApp::spawn();
    app.create_profile("acct", "openai", &upstream.url, "sk-default");
    app.switch("default", "acct", "gpt-default");
    app.switch("someone-else", "acct", "gpt-other");

    let r = app.agent("POST", "/v1/chat/completions").json(&hello("hi"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switcher-model"), Some("gpt-default"));
    assert_eq!(upstream.last().json()["model"], "gpt-default");
    let row = next_audit_row(&app, 0);
    assert_eq!(row["agent_id"], "default", "{row}");
}

#[test]
fn an_agent_without_an_active_model_gets_400_and_nothing_is_sent() {
    let upstream = openai_upstream();
    let app = TestApp::spawn();
    app.create_profile("acct", "openai", &upstream.url, "sk-x");
    app.switch("someone-else", "acct", "gpt-1");

    let r = chat(&app, "nobody", &hello("hi"));
    let message = assert_error(&r, 400);
    assert!(
        message.starts_with("No active model set for agent_id"),
        "{message}"
    );
    // It names the agent and the fix.
    assert!(message.contains("'nobody'"), "{message}");
    assert!(message.contains("POST /api/switch"), "{message}");
    // Without x-agent-id the agent is `default`, and the message says why.
    let r = app.agent("POST", "/v1/chat/completions").json(&hello("hi"));
    let message = assert_error(&r, 400);
    assert!(
        message.contains("'default'") && message.contains("x-agent-id"),
        "{message}"
    );
    assert!(upstream.received().is_empty());
}

#[test]
fn the_proxy_takes_the_agent_or_the_admin_key_and_nothing_else() {
    let upstream = openai_upstream();
    let app = TestApp::spawn();
    app.create_profile("acct", "openai", &upstream.url, "sk-x");
    app.switch("keyed", "acct", "gpt-1");
    let call = || {
        app.request("POST", "/v1/chat/completions")
            .header("x-agent-id", "keyed")
    };

    assert_error(&call().json(&hello("no key")), 401);
    assert_error(&call().key("not-a-key").json(&hello("bad key")), 401);
    assert_error(
        &call()
            .header("Authorization", AGENT_KEY)
            .json(&hello("no scheme")),
        401,
    );
    assert!(
        upstream.received().is_empty(),
        "refused before any upstream"
    );

    let r = call().key(AGENT_KEY).json(&hello("agent key"));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call().key(ADMIN_KEY).json(&hello("admin key"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream.received().len(), 2);
}

#[test]
fn the_proxy_runs_without_a_key_when_require_agent_key_for_proxy_is_false() {
    let upstream = openai_upstream();
    let app = TestApp::spawn_with(&[("REQUIRE_AGENT_KEY_FOR_PROXY", "false")]);
    app.create_profile("acct", "openai", &upstream.url, "sk-x");
    app.switch("open", "acct", "gpt-1");

    let r = app
        .request("POST", "/v1/chat/completions")
        .header("x-agent-id", "open")
        .json(&hello("hi"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream.received().len(), 1);
    assert_eq!(upstream.last().header("Authorization"), Some("Bearer sk-x"));
    // The admin routes still need their key.
    assert_error(&app.request("GET", "/admin/profiles").send(), 401);
}

#[test]
fn malformed_or_non_object_json_is_400_and_reaches_no_upstream() {
    let upstream = openai_upstream();
    let app = TestApp::spawn();
    app.create_profile("acct", "openai", &upstream.url, "sk-x");
    app.switch("sloppy", "acct", "gpt-1");

    for body in [&b"{\"messages\": ["[..], b"not json", b"[1, 2]", b""] {
        let r = app
            .agent("POST", "/v1/chat/completions")
            .header("x-agent-id", "sloppy")
            .header("Content-Type", "application/json")
            .body(body);
        assert_error(&r, 400);
    }
    assert!(upstream.received().is_empty());
}

#[test]
fn the_models_max_tokens_is_the_default_and_the_cap() {
    let upstream = openai_upstream();
    let app = TestApp::spawn();
    app.create_profile("compat", "openai_compatible", &upstream.url, "sk-c");
    app.create_profile("oa", "openai", &upstream.url, "sk-o");
    app.add_model("compat", "local-model", json!({"max_tokens": 1000}));
    app.add_model("oa", "gpt-capped", json!({"max_tokens": 1000}));
    app.add_model("oa", "gpt-free", json!({}));

    let ask = |agent: &str, extra: Value| -> Value {
        let mut body = hello("hi");
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let r = chat(&app, agent, &body);
        assert_eq!(r.status, 200, "{}", r.text());
        upstream.last().json()
    };

    app.switch("compat-agent", "compat", "local-model");
    assert_eq!(ask("compat-agent", json!({}))["max_tokens"], 1000);
    assert_eq!(
        ask("compat-agent", json!({"max_tokens": 5000}))["max_tokens"],
        1000
    );
    assert_eq!(
        ask("compat-agent", json!({"max_tokens": 200}))["max_tokens"],
        200
    );

    app.switch("oa-agent", "oa", "gpt-capped");
    assert_eq!(limit_sent(&ask("oa-agent", json!({}))), Some(1000));
    assert_eq!(
        limit_sent(&ask("oa-agent", json!({"max_tokens": 5000}))),
        Some(1000)
    );
    assert_eq!(
        limit_sent(&ask("oa-agent", json!({"max_completion_tokens": 5000}))),
        Some(1000)
    );
    assert_eq!(
        limit_sent(&ask("oa-agent", json!({"max_completion_tokens": 300}))),
        Some(300)
    );

    // A model without max_tokens adds no limit of its own.
    app.switch("oa-agent", "oa", "gpt-free");
    assert_eq!(limit_sent(&ask("oa-agent", json!({}))), None);
    assert_eq!(
        limit_sent(&ask("oa-agent", json!({"max_tokens": 5000}))),
        Some(5000)
    );
}

#[test]
fn drop_params_removes_the_named_fields_before_forwarding() {
    let upstream = openai_upstream();
    let app = TestApp::spawn();
    app.create_profile("oa", "openai", &upstream.url, "sk-o");
    app.add_model(
        "oa",
        "o-reasoner",
        json!({"drop_params": ["temperature", "top_p"]}),
    );
    app.switch("dropper", "oa", "o-reasoner");

    let sent = json!({
        "model": "x",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.7,
        "top_p": 0.5,
        "seed": 7,
        "user": "u-1"
    });
    let r = chat(&app, "dropper", &sent);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = upstream.last().json();
    assert_eq!(
        got,
        json!({
            "model": "o-reasoner",
            "messages": [{"role": "user", "content": "hi"}],
            "seed": 7,
            "user": "u-1"
        })
    );
}

#[test]
fn drop_params_removes_the_named_fields_before_the_anthropic_translation() {
    let upstream = anthropic_upstream();
    let app = TestApp::spawn();
    app.create_profile("an", "anthropic", &upstream.url, "sk-an");
    // `n` would be refused by the translation and `temperature` would hide `top_p`, so what
    // arrives shows the fields went before the translation saw them.
    app.add_model(
        "an",
        "claude-strict",
        json!({"drop_params": ["temperature", "n"]}),
    );
    app.switch("dropper", "an", "claude-strict");

    let r = chat(
        &app,
        "dropper",
        &json!({
            "model": "x",
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.7,
            "top_p": 0.5,
            "n": 2
        }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let got = upstream.last().json();
    assert_eq!(got.get("temperature"), None, "{got}");
    assert_eq!(got["top_p"], 0.5, "{got}");
}

// ---------------------------------------------------------------------------------------------
// Upstream errors and failures
// ---------------------------------------------------------------------------------------------

#[test]
fn an_upstream_error_status_and_body_come_back_as_they_are() {
    let error = json!({"error": {
        "message": "Rate limit reached for requests",
        "type": "requests",
        "param": null,
        "code": "rate_limit_exceeded"
    }});
    let answer = error.clone();
    let upstream = FakeUpstream::start(move |_| Answer::Json(429, answer.clone()));
    let app = TestApp::spawn();
    app.create_profile("acct", "openai_compatible", &upstream.url, "sk-x");
    app.switch("limited", "acct", "gpt-1");

    let r = chat(&app, "limited", &hello("hi"));
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json(), error);
    assert_eq!(r.header("x-switcher-profile"), Some("acct"));
    assert_eq!(r.header("x-switcher-model"), Some("gpt-1"));
    // The upstream's error, not ours: no x-switcher-error.
    assert_eq!(r.header("x-switcher-error"), None);
    let row = next_audit_row(&app, 0);
    assert_eq!(row["status"], 429, "{row}");
    // The service's own errors say so.
    let own = chat(&app, "nobody-switched-me", &hello("hi"));
    assert_eq!(own.status, 400, "{}", own.text());
    assert_eq!(own.header("x-switcher-error"), Some("invalid_request"));
}

#[test]
fn an_upstream_error_is_described_in_the_audit_row_and_the_log_with_the_key_masked() {
    let upstream = FakeUpstream::start(|_| {
        Answer::Json(
            401,
            json!({"error": {"message": "Incorrect API key provided: sk-upstream-secret-9"}}),
        )
    });
    let app = TestApp::spawn();
    app.create_profile(
        "acct",
        "openai_compatible",
        &upstream.url,
        "sk-upstream-secret-9",
    );
    app.switch("told", "acct", "m");
    let r = chat(&app, "told", &hello("hi"));
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        r.header("x-switcher-error"),
        None,
        "the upstream's error, not ours"
    );
    let row = next_audit_row(&app, 0);
    let error = row["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("401") && error.contains("Incorrect API key provided: [redacted]"),
        "{row}"
    );
    assert!(eventually(PATIENCE, || app
        .logs()
        .contains("the upstream answered 401")));
    assert!(!app.logs().contains("sk-upstream-secret-9"));
}

#[test]
fn a_404_from_a_base_url_without_a_version_path_gets_a_hint_in_the_audit_row() {
    let upstream = FakeUpstream::start(|_| Answer::Json(404, json!({"detail": "Not Found"})));
    let app = TestApp::spawn();
    app.create_profile("vllm", "openai_compatible", &upstream.url, "sk-x");
    app.switch("lost", "vllm", "m");
    let r = chat(&app, "lost", &hello("hi"));
    assert_eq!(r.status, 404, "{}", r.text());
    let row = next_audit_row(&app, 0);
    let error = row["error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("{}/v1", upstream.url)), "{row}");
    let html = FakeUpstream::start(|_| Answer::Raw(404, "text/html", b"<h1>404</h1>".to_vec()));
    app.create_profile("bare", "openai_compatible", &html.url, "sk-x");
    app.switch("lost", "bare", "m");
    let r = chat(&app, "lost", &hello("hi"));
    let message = assert_error(&r, 502);
    assert!(message.contains("has no version path"), "{message}");
}

#[test]
fn an_upstream_error_quoting_the_profiles_key_reaches_the_agent_without_it() {
    let key = "sk-quoted-secret-123456";
    for provider_type in ["openai", "anthropic"] {
        let upstream = FakeUpstream::start(move |received| {
            // Both providers echo (part of) the key they were sent, as real ones do.
            let sent = received
                .header("authorization")
                .map(|v| v.trim_start_matches("Bearer ").to_string())
                .or_else(|| received.header("x-api-key").map(str::to_string))
                .unwrap_or_default();
            let message = format!("Incorrect API key provided: {sent}");
            Answer::Json(
                401,
                json!({"type": "error", "error": {"type": "authentication_error", "message": message}}),
            )
        });
        let app = TestApp::spawn();
        app.create_profile("acct", provider_type, &upstream.url, key);
        app.add_model("acct", "m", json!({}));
        app.switch("agent", "acct", "m");

        let r = chat(&app, "agent", &hello("hi"));
        assert_eq!(r.status, 401, "{}", r.text());
        assert!(!r.text().contains(key), "{provider_type}: {}", r.text());
        assert!(
            r.text().contains("[redacted]"),
            "{provider_type}: {}",
            r.text()
        );
    }
}

#[test]
fn an_anthropic_success_that_is_not_a_message_is_502() {
    let upstream = FakeUpstream::start(|_| Answer::Json(200, json!({"unexpected": "shape"})));
    let app = TestApp::spawn();
    app.create_profile("claude", "anthropic", &upstream.url, "sk-ant-x");
    app.add_model("claude", "claude-x", json!({}));
    app.switch("agent", "claude", "claude-x");
    let r = chat(&app, "agent", &hello("hi"));
    assert_error(&r, 502);
}

#[test]
fn malformed_chat_requests_are_400_naming_the_field_for_every_provider_type() {
    let upstream = FakeUpstream::start(|_| Answer::Json(200, openai_completion("never")));
    let app = TestApp::spawn();
    for provider_type in ["openai", "openai_compatible", "anthropic"] {
        let profile = format!("p-{provider_type}");
        app.create_profile(&profile, provider_type, &upstream.url, "sk-x-123456");
        app.add_model(&profile, "m", json!({}));
        app.switch(provider_type, &profile, "m");
        for (body, field) in [
            (json!({"model": "x"}), "messages"),
            (json!({"messages": "hi"}), "messages"),
            (json!({"messages": [{"content": "hi"}]}), "role"),
            (
                json!({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}),
                "stream",
            ),
            (
                json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "10"}),
                "max_tokens",
            ),
        ] {
            let r = chat(&app, provider_type, &body);
            let message = assert_error(&r, 400);
            assert!(message.contains(field), "{provider_type} {body}: {message}");
        }
    }
    assert!(upstream.received().is_empty());
}

const FAILING_KEY_PREFIX: &str = "sk-failing-secret";

/// A server with one worker and a short upstream timeout, so that a worker left busy by a
/// failed call would show as an unanswered /healthz.
fn one_worker_app() -> TestApp {
    TestApp::spawn_with(&[("WORKERS", "1"), ("UPSTREAM_TIMEOUT_MS", "400")])
}

/// Sends one request through a profile of every provider type pointed at `base_url`, and
/// checks each fails with `status` in the error shape without a key or a URL in the message,
/// is audited, and leaves the worker free. Returns the server for more checks.
fn assert_fails_through_every_provider_type(base_url: &str, status: u16) -> TestApp {
    let app = one_worker_app();
    for (i, provider_type) in ["openai", "openai_compatible", "anthropic"]
        .into_iter()
        .enumerate()
    {
        let profile = format!("acct-{provider_type}");
        let key = format!("{FAILING_KEY_PREFIX}-{provider_type}");
        app.create_profile(&profile, provider_type, base_url, &key);
        app.add_model(&profile, "the-model", json!({}));
        app.switch("victim", &profile, "the-model");

        let started = Instant::now();
        let r = chat(&app, "victim", &hello(PROMPT_CANARY));
        let took = started.elapsed();
        let message = assert_error(&r, status);
        assert!(
            took < Duration::from_secs(5),
            "{provider_type}: the failure is reported well before the upstream's delay: {took:?}"
        );
        let text = r.text();
        assert!(!text.contains(&key), "{provider_type}: {text}");
        assert!(!text.contains(base_url), "{provider_type}: {text}");
        assert!(!text.contains(PROMPT_CANARY), "{provider_type}: {text}");
        assert!(!message.is_empty());
        assert_eq!(r.header("x-switcher-profile"), Some(profile.as_str()));

        let health = app.request("GET", "/healthz").send();
        assert_eq!(health.status, 200, "the only worker is free again");

        let row = next_audit_row(&app, i);
        assert_eq!(row["status"], status, "{row}");
        assert_eq!(row["profile_name"], profile, "{row}");
        assert_eq!(row["provider_type"], provider_type, "{row}");
        assert_eq!(row["prompt_tokens"], Value::Null, "{row}");
    }
    let logs = app.logs();
    assert!(!logs.contains(FAILING_KEY_PREFIX), "{logs}");
    assert!(!logs.contains(PROMPT_CANARY), "{logs}");
    app
}

#[test]
fn an_upstream_that_refuses_the_connection_is_502() {
    assert_fails_through_every_provider_type(&refusing_url(), 502);
}

#[test]
fn an_upstream_that_hangs_up_without_answering_is_502() {
    let (url, requests) = closing_upstream(b"");
    assert_fails_through_every_provider_type(&url, 502);
    assert_eq!(requests.load(Ordering::SeqCst), 3);
}

#[test]
fn an_upstream_that_closes_its_connection_after_each_answer_serves_every_request() {
    // A complete answer without `Connection: close`, then the connection is gone: the next
    // request must not be sent on it.
    let (url, requests) = closing_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    );
    let app = one_worker_app();
    app.create_profile("acct", "openai_compatible", &url, "sk-x");
    app.switch("steady", "acct", "m");
    for i in 0..3 {
        thread::sleep(Duration::from_millis(200));
        let r = chat(&app, "steady", &hello("hi"));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.json(), json!({}));
    }
    assert_eq!(requests.load(Ordering::SeqCst), 3);
}

#[test]
fn an_upstream_that_hangs_up_in_the_middle_of_its_answer_is_502() {
    let (url, requests) = closing_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"id\":\"chatcmpl-cut",
    );
    assert_fails_through_every_provider_type(&url, 502);
    assert_eq!(requests.load(Ordering::SeqCst), 3);
}

#[test]
fn an_upstream_answer_that_is_not_json_is_502() {
    let upstream = FakeUpstream::start(|_| {
        Answer::Raw(200, "text/html", b"<html>a captive portal</html>".to_vec())
    });
    assert_fails_through_every_provider_type(&upstream.url, 502);
    assert_eq!(upstream.received().len(), 3);
}

#[test]
fn an_upstream_error_that_is_not_json_is_502() {
    let upstream = FakeUpstream::start(|_| {
        Answer::Raw(
            503,
            "text/html",
            b"<html>bad gateway upstream</html>".to_vec(),
        )
    });
    assert_fails_through_every_provider_type(&upstream.url, 502);
}

#[test]
fn an_upstream_slower_than_upstream_timeout_ms_is_504() {
    let upstream = FakeUpstream::start(|_| {
        Answer::Delay(
            Duration::from_secs(5),
            Box::new(Answer::Json(200, openai_completion("too late"))),
        )
    });
    assert_fails_through_every_provider_type(&upstream.url, 504);
}

#[test]
fn an_upstream_whose_answer_trickles_in_past_upstream_timeout_ms_is_504() {
    assert_fails_through_every_provider_type(&trickling_upstream(), 504);
}

// ---------------------------------------------------------------------------------------------
// Anthropic end to end
// ---------------------------------------------------------------------------------------------

#[test]
fn an_anthropic_profile_gets_a_translated_request_and_answers_a_chat_completion_with_tool_calls() {
    let upstream = FakeUpstream::start(|_| {
        Answer::Json(
            200,
            json!({
                "id": "msg_01XYZ",
                "type": "message",
                "role": "assistant",
                "model": "claude-upstream-20250101",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_01", "name": "get_weather",
                     "input": {"city": "Rome", "units": ["c"]}}
                ],
                "stop_reason": "tool_use",
                "stop_sequence": null,
                "usage": {"input_tokens": 100, "output_tokens": 20,
                          "cache_creation_input_tokens": 5, "cache_read_input_tokens": 7}
            }),
        )
    });
    let app = TestApp::spawn();
    app.create_profile("claude", "anthropic", &upstream.url, "sk-ant-api-key-77");
    app.add_model("claude", "claude-sonnet-test", json!({"max_tokens": 2000}));
    app.switch("tooler", "claude", "claude-sonnet-test");

    let weather_schema = json!({
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"]
    });
    let sent = json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}
            }]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
            {"role": "developer", "content": "Use metric units."},
            {"role": "user", "content": "And in Rome?"}
        ],
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "Weather for a city",
            "parameters": weather_schema
        }}],
        "temperature": 0.2,
        "frequency_penalty": 0.5,
        "seed": 1,
        "max_tokens": 5000
    });
    let r = chat(&app, "tooler", &sent);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switcher-profile"), Some("claude"));
    assert_eq!(r.header("x-switcher-model"), Some("claude-sonnet-test"));

    let got = upstream.received();
    assert_eq!(got.len(), 1);
    let got = &got[0];
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/v1/messages");
    assert_eq!(got.header("x-api-key"), Some("sk-ant-api-key-77"));
    assert_eq!(got.header("anthropic-version"), Some("2023-06-01"));
    assert!(
        got.header("Content-Type")
            .unwrap_or("")
            .starts_with("application/json"),
        "{:?}",
        got.headers
    );
    assert!(
        !format!("{:?}", got.headers).contains(AGENT_KEY),
        "the agent's key stays here"
    );
    let body = got.json();
    assert_eq!(body["model"], "claude-sonnet-test", "{body}");
    assert_eq!(
        body["system"], "You are terse.\n\nUse metric units.",
        "every system or developer message is hoisted: {body}"
    );
    assert_eq!(body["max_tokens"], 2000, "capped by the model: {body}");
    assert_eq!(body["temperature"], 0.2, "{body}");
    for gone in ["frequency_penalty", "seed", "n", "tool_choice", "top_p"] {
        assert_eq!(body.get(gone), None, "`{gone}` is not sent: {body}");
    }
    assert_eq!(
        body["tools"],
        json!([{"name": "get_weather", "description": "Weather for a city",
                "input_schema": weather_schema}]),
        "{body}"
    );
    assert_eq!(
        blocks(&body["messages"]),
        blocks(&json!([
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "call_1", "name": "get_weather",
                 "input": {"city": "Paris"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C and sunny"},
                {"type": "text", "text": "And in Rome?"}
            ]}
        ])),
        "{body}"
    );

    let answer = r.json();
    let created = answer["created"].as_i64().expect("created is an integer");
    assert!(
        (unix_now() - 3600..=unix_now() + 60).contains(&created),
        "{answer}"
    );
    let tool_calls = &answer["choices"][0]["message"]["tool_calls"];
    let arguments = tool_calls[0]["function"]["arguments"]
        .as_str()
        .expect("arguments are a JSON string");
    assert_eq!(
        serde_json::from_str::<Value>(arguments).unwrap(),
        json!({"city": "Rome", "units": ["c"]})
    );
    let mut expected_calls = tool_calls.clone();
    expected_calls[0]["function"]["arguments"] = json!(arguments);
    assert_eq!(
        answer,
        json!({
            "id": "msg_01XYZ",
            "object": "chat.completion",
            "created": created,
            "model": "claude-upstream-20250101",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me check.",
                    "reasoning_content": "hmm",
                    "thinking_blocks": [{"type": "thinking", "thinking": "hmm", "signature": "sig"}],
                    "tool_calls": [{
                        "id": "toolu_01",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": arguments}
                    }]
                },
                "finish_reason": "tool_calls"
            }],
            "usage": {"prompt_tokens": 112, "completion_tokens": 20, "total_tokens": 132,
                      "prompt_tokens_details": {"cached_tokens": 7}}
        })
    );

    let row = next_audit_row(&app, 0);
    assert_eq!(row["provider_type"], "anthropic", "{row}");
    assert_eq!(row["model_name"], "claude-sonnet-test", "{row}");
    assert_eq!(
        (
            &row["prompt_tokens"],
            &row["completion_tokens"],
            &row["total_tokens"]
        ),
        (&json!(112), &json!(20), &json!(132)),
        "{row}"
    );
}

#[test]
fn an_anthropic_request_without_max_tokens_gets_the_models_or_4096() {
    let upstream = anthropic_upstream();
    let app = TestApp::spawn();
    app.create_profile("claude", "anthropic", &upstream.url, "sk-ant");
    app.add_model("claude", "claude-capped", json!({"max_tokens": 1000}));
    app.add_model("claude", "claude-open", json!({}));

    let ask = |model: &str, extra: Value| -> Value {
        app.switch("limits", "claude", model);
        let mut body = hello("hi");
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let r = chat(&app, "limits", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        upstream.last().json()["max_tokens"].clone()
    };
    assert_eq!(ask("claude-capped", json!({})), 1000);
    assert_eq!(ask("claude-capped", json!({"max_tokens": 5000})), 1000);
    assert_eq!(
        ask("claude-capped", json!({"max_completion_tokens": 300})),
        300
    );
    assert_eq!(ask("claude-open", json!({})), 4096);
    assert_eq!(ask("claude-open", json!({"max_tokens": 5000})), 5000);
}

#[test]
fn an_anthropic_error_comes_back_with_its_status_in_the_openai_error_shape() {
    let cases = [
        (429, "rate_limit_error", "slow down"),
        (529, "overloaded_error", "Overloaded"),
        (
            400,
            "invalid_request_error",
            "messages: text content blocks must be non-empty",
        ),
    ];
    for (i, (status, kind, message)) in cases.into_iter().enumerate() {
        let upstream = FakeUpstream::start(move |_| {
            Answer::Json(
                status,
                json!({"type": "error", "error": {"type": kind, "message": message}}),
            )
        });
        let app = TestApp::spawn();
        app.create_profile("claude", "anthropic", &upstream.url, "sk-ant");
        app.add_model("claude", "claude-x", json!({}));
        app.switch("hasty", "claude", "claude-x");

        let r = chat(&app, "hasty", &hello("hi"));
        assert_eq!(r.status, status, "case {i}: {}", r.text());
        assert_eq!(
            r.json(),
            json!({"error": {"message": message, "type": kind, "code": null}})
        );
        assert_eq!(r.header("x-switcher-profile"), Some("claude"));
        let row = next_audit_row(&app, 0);
        assert_eq!(row["status"], status, "{row}");
    }
}

#[test]
fn n_above_one_is_400_naming_n_for_an_anthropic_model_and_nothing_is_sent() {
    let upstream = anthropic_upstream();
    let app = TestApp::spawn();
    app.create_profile("claude", "anthropic", &upstream.url, "sk-ant");
    app.add_model("claude", "claude-x", json!({}));
    app.switch("greedy", "claude", "claude-x");

    let mut body = hello("hi");
    body["n"] = json!(2);
    let r = chat(&app, "greedy", &body);
    let message = assert_error(&r, 400);
    assert!(names_field(&message, "n"), "names `n`: {message}");
    assert!(upstream.received().is_empty());
    let row = next_audit_row(&app, 0);
    assert_eq!(row["status"], 400, "{row}");
}

// ---------------------------------------------------------------------------------------------
// Audit
// ---------------------------------------------------------------------------------------------

#[test]
fn every_proxied_request_leaves_exactly_one_audit_row() {
    let upstream = openai_upstream();
    let app = TestApp::spawn();
    app.create_profile("acct", "openai", &upstream.url, "sk-audited");
    app.create_profile("dead", "openai_compatible", &refusing_url(), "sk-dead");

    // The exact bytes the agent sends: keys out of order, non-ASCII text.
    let messages = r#"[{"role":"user","name":"ann","content":"héllo ✓ \"quoted\""}]"#;
    let sorted = r#"[{"content":"héllo ✓ \"quoted\"","name":"ann","role":"user"}]"#;
    let as_value: Value = serde_json::from_str(messages).unwrap();
    assert_eq!(serde_json::to_string(&as_value).unwrap(), sorted);
    let prompt_sha = sha256_hex(sorted.as_bytes());
    let raw_body = format!(r#"{{"model":"m","messages":{messages}}}"#);
    let send = |agent: &str, key: Option<&str>| -> Reply {
        let call = app
            .request("POST", "/v1/chat/completions")
            .header("x-agent-id", agent)
            .header("Content-Type", "application/json");
        let call = match key {
            Some(k) => call.key(k),
            None => call,
        };
        call.body(raw_body.as_bytes())
    };

    // No active model yet.
    assert_error(&send("auditor", Some(AGENT_KEY)), 400);
    let row = next_audit_row(&app, 0);
    assert_eq!(row["agent_id"], "auditor", "{row}");
    assert_eq!(row["status"], 400, "{row}");
    assert_eq!(row["profile_name"], Value::Null, "{row}");
    assert!(row["latency_ms"].as_i64().is_some_and(|l| l >= 0), "{row}");

    // A success with usage.
    app.switch("auditor", "acct", "gpt-audit");
    let r = send("auditor", Some(AGENT_KEY));
    assert_eq!(r.status, 200, "{}", r.text());
    let row = next_audit_row(&app, 1);
    assert_eq!(row["agent_id"], "auditor", "{row}");
    assert_eq!(row["profile_name"], "acct", "{row}");
    assert_eq!(row["provider_type"], "openai", "{row}");
    assert_eq!(row["model_name"], "gpt-audit", "{row}");
    assert_eq!(row["status"], 200, "{row}");
    assert!(row["latency_ms"].as_i64().is_some_and(|l| l >= 0), "{row}");
    assert_eq!(row["prompt_tokens"], 11, "{row}");
    assert_eq!(row["completion_tokens"], 7, "{row}");
    assert_eq!(row["total_tokens"], 18, "{row}");
    assert_eq!(row["prompt_sha256"], prompt_sha, "{row}");

    // Refused for want of a key: no row (anyone could fill the table with them).
    assert_error(&send("auditor", None), 401);

    // An upstream that cannot be reached.
    app.switch("auditor", "dead", "local-model");
    assert_error(&send("auditor", Some(AGENT_KEY)), 502);
    let row = next_audit_row(&app, 2);
    assert_eq!(row["agent_id"], "auditor", "{row}");
    assert_eq!(row["profile_name"], "dead", "{row}");
    assert_eq!(row["provider_type"], "openai_compatible", "{row}");
    assert_eq!(row["model_name"], "local-model", "{row}");
    assert_eq!(row["status"], 502, "{row}");
    assert_eq!(row["prompt_tokens"], Value::Null, "{row}");
    assert_eq!(row["prompt_sha256"], prompt_sha, "{row}");

    // Malformed JSON from a known agent.
    let r = app
        .agent("POST", "/v1/chat/completions")
        .header("x-agent-id", "auditor")
        .body(b"{\"messages\": [");
    assert_error(&r, 400);
    let row = next_audit_row(&app, 3);
    assert_eq!(row["status"], 400, "{row}");

    assert_eq!(upstream.received().len(), 1);
}

#[test]
fn the_prompt_hash_puts_the_prompt_field_before_the_messages() {
    let upstream = openai_upstream();
    let app = TestApp::spawn();
    app.create_profile("acct", "openai_compatible", &upstream.url, "sk-x");
    app.switch("hasher", "acct", "m");

    let r = chat(
        &app,
        "hasher",
        &json!({"prompt": "abc", "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let row = next_audit_row(&app, 0);
    assert_eq!(
        row["prompt_sha256"],
        sha256_hex(br#"abc[{"content":"x","role":"user"}]"#),
        "{row}"
    );
}

#[test]
fn neither_the_audit_rows_nor_the_logs_hold_the_prompt_the_answer_or_a_key() {
    let openai = FakeUpstream::start(|_| Answer::Json(200, openai_completion(ANSWER_CANARY)));
    let anthropic = FakeUpstream::start(|_| Answer::Json(200, anthropic_message(ANSWER_CANARY)));
    let limited = FakeUpstream::start(|_| {
        Answer::Json(
            429,
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}}),
        )
    });
    let app = TestApp::spawn();
    let keys = [
        ("oa", "openai", openai.url.clone(), "sk-oa-canary-key-1"),
        (
            "an",
            "anthropic",
            anthropic.url.clone(),
            "sk-an-canary-key-2",
        ),
        (
            "lim",
            "anthropic",
            limited.url.clone(),
            "sk-lim-canary-key-3",
        ),
        ("dead", "openai", refusing_url(), "sk-dead-canary-key-4"),
    ];
    for (name, provider_type, url, key) in &keys {
        app.create_profile(name, provider_type, url, key);
        app.add_model(name, "the-model", json!({}));
    }
    let prompt = json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": PROMPT_CANARY},
            {"role": "user", "content": PROMPT_CANARY}
        ]
    });
    let mut greedy = prompt.clone();
    greedy["n"] = json!(3);

    let mut requests = 0;
    // No active model.
    assert_error(&chat(&app, "secretive", &prompt), 400);
    requests += 1;
    for (name, _, _, _) in &keys {
        app.switch("secretive", name, "the-model");
        chat(&app, "secretive", &prompt);
        requests += 1;
    }
    app.switch("secretive", "an", "the-model");
    assert_error(&chat(&app, "secretive", &greedy), 400);
    requests += 1;
    let r = app
        .request("POST", "/v1/chat/completions")
        .header("x-agent-id", "secretive")
        .json(&prompt);
    // Refused for its key: counted, but no row.
    assert_error(&r, 401);

    settled_audit_rows(&app, requests);
    let rows: Vec<String> = app
        .db
        .client()
        .query("SELECT row_to_json(t)::text FROM audit_requests t", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let logs = app.logs();
    let mut secrets = vec![
        PROMPT_CANARY,
        "PROMPT-CANARY",
        ANSWER_CANARY,
        "ANSWER-CANARY",
        AGENT_KEY,
        ADMIN_KEY,
    ];
    secrets.extend(keys.iter().map(|k| k.3));
    for secret in secrets {
        for row in &rows {
            assert!(!row.contains(secret), "an audit row holds {secret}: {row}");
        }
        assert!(!logs.contains(secret), "the logs hold {secret}:\n{logs}");
    }
}

// ---------------------------------------------------------------------------------------------
// POST /admin/profiles/{id}/sync-models
// ---------------------------------------------------------------------------------------------

fn sync(app: &TestApp, profile: &Value) -> Reply {
    app.admin(
        "POST",
        &format!("/admin/profiles/{}/sync-models", profile["id"]),
    )
    .send()
}

/// `(model_name, enabled)` of a profile's models, sorted.
fn models_of(app: &TestApp, profile: &str) -> Vec<(String, bool)> {
    let r = app
        .agent("GET", &format!("/api/models?profile={profile}"))
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    let mut models: Vec<(String, bool)> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["model_name"].as_str().unwrap().to_string(),
                m["enabled"].as_bool().unwrap(),
            )
        })
        .collect();
    models.sort();
    models
}

fn model_list(ids: &[&str]) -> Value {
    json!({"object": "list", "data": ids.iter()
        .map(|id| json!({"id": id, "object": "model", "created": 1, "owned_by": "someone"}))
        .collect::<Vec<_>>()})
}

#[test]
fn syncing_an_openai_type_profile_upserts_its_models_as_enabled() {
    for provider_type in ["openai", "openai_compatible"] {
        let upstream =
            FakeUpstream::start(|_| Answer::Json(200, model_list(&["gpt-a", "gpt-b", "gpt-c"])));
        let app = TestApp::spawn();
        let base_url = format!("{}/v1", upstream.url);
        let profile = app.create_profile("acct", provider_type, &base_url, "sk-sync-key");

        let r = sync(&app, &profile);
        assert_eq!(r.status, 200, "{provider_type}: {}", r.text());
        assert_eq!(r.json(), json!({"ok": true, "discovered": 3, "created": 3}));
        let got = upstream.last();
        assert_eq!(got.method, "GET");
        assert_eq!(got.path, "/v1/models");
        assert_eq!(got.header("Authorization"), Some("Bearer sk-sync-key"));
        assert_eq!(
            models_of(&app, "acct"),
            [
                ("gpt-a".to_string(), true),
                ("gpt-b".to_string(), true),
                ("gpt-c".to_string(), true)
            ]
        );

        let r = sync(&app, &profile);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json(), json!({"ok": true, "discovered": 3, "created": 0}));
        assert_eq!(models_of(&app, "acct").len(), 3);
        assert_eq!(upstream.received().len(), 2);
    }
}

#[test]
fn syncing_enables_a_discovered_model_that_was_disabled() {
    let upstream = FakeUpstream::start(|_| Answer::Json(200, model_list(&["gpt-a", "gpt-b"])));
    let app = TestApp::spawn();
    let profile = app.create_profile("acct", "openai", &upstream.url, "sk-x");
    app.add_model("acct", "gpt-a", json!({"enabled": false}));
    app.add_model("acct", "gpt-kept", json!({}));

    let r = sync(&app, &profile);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"ok": true, "discovered": 2, "created": 1}));
    assert_eq!(
        models_of(&app, "acct"),
        [
            ("gpt-a".to_string(), true),
            ("gpt-b".to_string(), true),
            ("gpt-kept".to_string(), true)
        ]
    );
}

#[test]
fn syncing_an_anthropic_profile_follows_its_pages_with_after_id() {
    let upstream = FakeUpstream::start(|got| {
        if got.path.contains("after_id=claude-b") {
            Answer::Json(
                200,
                json!({"data": [{"type": "model", "id": "claude-c", "display_name": "C"}],
                       "has_more": false, "first_id": "claude-c", "last_id": "claude-c"}),
            )
        } else {
            Answer::Json(
                200,
                json!({"data": [
                           {"type": "model", "id": "claude-a", "display_name": "A"},
                           {"type": "model", "id": "claude-b", "display_name": "B"}
                       ],
                       "has_more": true, "first_id": "claude-a", "last_id": "claude-b"}),
            )
        }
    });
    let app = TestApp::spawn();
    let profile = app.create_profile("claude", "anthropic", &upstream.url, "sk-ant-sync");

    let r = sync(&app, &profile);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"ok": true, "discovered": 3, "created": 3}));
    let got = upstream.received();
    assert_eq!(got.len(), 2, "{got:#?}");
    for page in &got {
        assert_eq!(page.method, "GET");
        assert!(page.path.starts_with("/v1/models"), "{}", page.path);
        assert_eq!(page.header("x-api-key"), Some("sk-ant-sync"));
        assert_eq!(page.header("anthropic-version"), Some("2023-06-01"));
    }
    assert!(!got[0].path.contains("after_id"), "{}", got[0].path);
    assert!(got[1].path.contains("after_id=claude-b"), "{}", got[1].path);
    assert_eq!(
        models_of(&app, "claude"),
        [
            ("claude-a".to_string(), true),
            ("claude-b".to_string(), true),
            ("claude-c".to_string(), true)
        ]
    );
    // Anthropic models must exist to be switched to: the synced ones do.
    app.switch("syncer", "claude", "claude-c");
}

#[test]
fn a_failed_sync_is_502_ok_false_and_the_server_keeps_serving() {
    let slow = FakeUpstream::start(|_| {
        Answer::Delay(
            Duration::from_secs(5),
            Box::new(Answer::Json(200, model_list(&["late"]))),
        )
    });
    let refusing = FakeUpstream::start(|_| {
        Answer::Json(401, json!({"error": {"message": "invalid x-api-key"}}))
    });
    // A list that looks usable, under a status that says it is not.
    let failing = FakeUpstream::start(|_| Answer::Json(503, model_list(&["not-to-be-kept"])));
    let garbled =
        FakeUpstream::start(|_| Answer::Raw(200, "application/json", b"{\"data\": [".to_vec()));
    let app = one_worker_app();
    let refused = refusing_url();
    let cases = [
        ("refused", refused.as_str()),
        ("timeout", slow.url.as_str()),
        ("unauthorized", refusing.url.as_str()),
        ("non-2xx", failing.url.as_str()),
        ("bad-json", garbled.url.as_str()),
    ];
    for provider_type in ["openai", "anthropic"] {
        for (case, url) in cases {
            let name = format!("{case}-{provider_type}");
            let key = format!("{FAILING_KEY_PREFIX}-{name}");
            let profile = app.create_profile(&name, provider_type, url, &key);
            let started = Instant::now();
            let r = sync(&app, &profile);
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{name}: reported well before the upstream's delay"
            );
            assert_eq!(r.status, 502, "{name}: {}", r.text());
            let body = r.json();
            assert_eq!(keys(&body), ["error", "ok"], "{name}: {body}");
            assert_eq!(body["ok"], false, "{name}: {body}");
            let error = body["error"].as_str().unwrap_or("");
            assert!(!error.is_empty(), "{name}: {body}");
            assert!(!error.contains(&key), "{name}: {body}");
            assert!(models_of(&app, &name).is_empty(), "{name}");
            let health = app.request("GET", "/healthz").send();
            assert_eq!(health.status, 200, "{name}: the only worker is free again");
        }
    }
    let logs = app.logs();
    assert!(!logs.contains(FAILING_KEY_PREFIX), "{logs}");
}

#[test]
fn models_listed_twice_are_counted_and_stored_once() {
    let upstream = FakeUpstream::start(|_| {
        Answer::Json(
            200,
            model_list(&["gpt-a", "gpt-b", "gpt-a", "gpt-c", "gpt-b"]),
        )
    });
    let app = TestApp::spawn();
    let profile = app.create_profile("acct", "openai", &upstream.url, "sk-x");
    let r = sync(&app, &profile);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"ok": true, "discovered": 3, "created": 3}));
    assert_eq!(models_of(&app, "acct").len(), 3);
}

#[test]
fn a_profile_deleted_while_its_models_are_listed_is_404_and_nothing_is_stored() {
    let app = TestApp::spawn();
    let db_url = app.db.url.clone();
    // The upstream answers only after the profile is gone.
    let upstream = FakeUpstream::start(move |_| {
        let mut db = postgres::Client::connect(&db_url, postgres::NoTls).unwrap();
        db.execute("DELETE FROM profiles", &[]).unwrap();
        Answer::Json(200, model_list(&["gpt-a"]))
    });
    let profile = app.create_profile("brief", "openai", &upstream.url, "sk-x");
    let r = sync(&app, &profile);
    let message = assert_error(&r, 404);
    assert!(message.contains("deleted"), "{message}");
    let models: i64 = app
        .db
        .client()
        .query_one("SELECT count(*) FROM models", &[])
        .unwrap()
        .get(0);
    assert_eq!(models, 0);
}

#[test]
fn syncing_an_unknown_profile_is_404() {
    let app = TestApp::spawn();
    for id in ["999999", "not-a-number"] {
        let r = app
            .admin("POST", &format!("/admin/profiles/{id}/sync-models"))
            .send();
        assert_error(&r, 404);
    }
}
