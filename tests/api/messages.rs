//! `/v1/messages` and `/v1/messages/count_tokens`: the Anthropic pass-through, the
//! translation to OpenAI-type profiles, Anthropic-shaped errors and the audit.

use std::time::Duration;

use serde_json::{json, Value};

use crate::proxy::{audit_count, next_audit_row, settled_audit_rows, PATIENCE};
use crate::support::{eventually, Answer, FakeUpstream, Reply, TestApp, AGENT_KEY};

const ANTHROPIC_KEY: &str = "sk-ant-profile-key-1234";
const OPENAI_KEY: &str = "sk-openai-profile-key-5678";

/// What Claude Code sends, in its order, with the fields a typed struct would lose or reorder.
const CLAUDE_CODE_BODY: &str = r#"{"model":"claude-sonnet-4-5-20250929","messages":[{"role":"user","content":[{"type":"text","text":"h\u00e9llo \"there\"","cache_control":{"type":"ephemeral"}}]},{"role":"assistant","content":[{"type":"thinking","thinking":"mm","signature":"EqQBCkYIBxgCKkD+/sig=="},{"type":"tool_use","id":"toolu_01","name":"Bash","input":{"command":"ls","z":1.50,"a":[]}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_01","content":"README.md"}]}],"temperature":1,"system":[{"type":"text","text":"You are Claude Code.","cache_control":{"type":"ephemeral"}}],"tools":[{"name":"Bash","description":"Run","input_schema":{"type":"object","properties":{"command":{"type":"string"}}}},{"type":"web_search_20250305","name":"web_search","max_uses":5}],"metadata":{"user_id":"user_abc"},"max_tokens":128000,"thinking":{"type":"enabled","budget_tokens":31999},"context_management":{"edits":[{"type":"clear_thinking_20251015","keep":"all"}]},"output_config":{"effort":"high"},"a_future_field":{"x":[1,2,3]}}"#;

fn anthropic_message() -> Value {
    json!({"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-upstream",
        "content": [{"type": "text", "text": "Hello from Claude"}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 21, "cache_creation_input_tokens": 3,
                  "cache_read_input_tokens": 5, "output_tokens": 14}})
}

fn messages(app: &TestApp) -> crate::support::Call {
    app.request("POST", "/v1/messages")
        .header("x-api-key", AGENT_KEY)
        .header("content-type", "application/json")
}

fn anthropic_app(model_extra: Value) -> (TestApp, FakeUpstream) {
    let upstream = FakeUpstream::start(|r| {
        if r.path.starts_with("/v1/messages/count_tokens") {
            Answer::Json(200, json!({"input_tokens": 77}))
        } else {
            Answer::Json(200, anthropic_message())
        }
    });
    let app = TestApp::spawn();
    app.create_profile("claude", "anthropic", &upstream.url, ANTHROPIC_KEY);
    app.add_model("claude", "claude-opus-4-1", model_extra);
    app.switch("coder", "claude", "claude-opus-4-1");
    (app, upstream)
}

fn openai_app(
    model_extra: Value,
    handler: impl Fn(&crate::support::Received) -> Answer + Send + Sync + 'static,
) -> (TestApp, FakeUpstream) {
    let upstream = FakeUpstream::start(handler);
    let app = TestApp::spawn();
    app.create_profile("oai", "openai", &format!("{}/v1", upstream.url), OPENAI_KEY);
    app.add_model("oai", "gpt-5", model_extra);
    app.switch("coder", "oai", "gpt-5");
    (app, upstream)
}

fn completion(message: Value, finish: &str) -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-5",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49}})
}

/// The events of an Anthropic stream, as (event type, data).
fn events(reply: &Reply) -> Vec<(String, Value)> {
    let text = reply.text();
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut kind = String::new();
            let mut data = Value::Null;
            for line in e.lines() {
                if let Some(k) = line.strip_prefix("event: ") {
                    kind = k.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).unwrap();
                }
            }
            (kind, data)
        })
        .collect()
}

#[test]
fn the_anthropic_pass_through_changes_only_model_and_a_capped_max_tokens_byte_for_byte() {
    let (app, upstream) = anthropic_app(json!({"max_tokens": 32000}));
    let r = app
        .request("POST", "/v1/messages?beta=true")
        .header("x-api-key", AGENT_KEY)
        .header("x-agent-id", "coder")
        .header("anthropic-version", "2023-06-01")
        .header(
            "anthropic-beta",
            "claude-code-20250219,interleaved-thinking-2025-05-14",
        )
        .body(CLAUDE_CODE_BODY.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let got = upstream.last();
    assert_eq!(got.path, "/v1/messages?beta=true");
    let expected = CLAUDE_CODE_BODY
        .replace("claude-sonnet-4-5-20250929", "claude-opus-4-1")
        .replace("\"max_tokens\":128000", "\"max_tokens\":32000");
    assert_eq!(String::from_utf8(got.body.clone()).unwrap(), expected);
    assert_eq!(got.header("x-api-key"), Some(ANTHROPIC_KEY));
    assert_eq!(got.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        got.header("anthropic-beta"),
        Some("claude-code-20250219,interleaved-thinking-2025-05-14")
    );
    assert_eq!(got.header("authorization"), None);
    // The answer is the upstream's, as it sent it.
    assert_eq!(r.body, serde_json::to_vec(&anthropic_message()).unwrap());
    assert_eq!(r.header("x-switcher-profile"), Some("claude"));
    assert_eq!(r.header("x-switcher-model"), Some("claude-opus-4-1"));

    let row = next_audit_row(&app, 0);
    assert_eq!(row["endpoint"], "messages");
    assert_eq!(row["agent_id"], "coder");
    assert_eq!(row["provider_type"], "anthropic");
    assert_eq!(row["status"], 200);
    assert_eq!(row["stream"], false);
    assert_eq!(row["prompt_tokens"], 29);
    assert_eq!(row["completion_tokens"], 14);
    let body: Value = serde_json::from_str(CLAUDE_CODE_BODY).unwrap();
    let hashed = format!("{}{}", body["system"], body["messages"]);
    assert_eq!(row["prompt_sha256"], sha256_hex(hashed.as_bytes()));
}

fn sha256_hex(bytes: &[u8]) -> String {
    switcher_api::crypto::sha256_hex(bytes)
}

#[test]
fn the_pass_through_defaults_the_version_and_drops_the_models_drop_params() {
    let (app, upstream) = anthropic_app(json!({"drop_params": ["temperature", "model"]}));
    let body = r#"{"model":"x","max_tokens":10,"temperature":0.5,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = messages(&app)
        .header("x-agent-id", "coder")
        .body(body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let got = upstream.last();
    assert_eq!(got.path, "/v1/messages");
    assert_eq!(got.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(got.header("anthropic-beta"), None);
    assert_eq!(
        String::from_utf8(got.body).unwrap(),
        r#"{"model":"claude-opus-4-1","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#
    );
}

#[test]
fn a_pass_through_stream_is_relayed_as_it_came_and_its_usage_audited() {
    let events: Vec<String> = [
        r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-opus-4-1","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":21,"cache_creation_input_tokens":3,"cache_read_input_tokens":5,"output_tokens":1}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        r#"{"type":"ping"}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
        r#"{"type":"content_block_stop","index":0}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":14}}"#,
        r#"{"type":"message_stop"}"#,
    ]
    .iter()
    .map(|d| {
        let kind: Value = serde_json::from_str(d).unwrap();
        format!("event: {}\ndata: {d}\n\n", kind["type"].as_str().unwrap())
    })
    .collect();
    let expected = events.concat();
    let upstream = FakeUpstream::start(move |_| Answer::Events(events.clone(), Duration::ZERO));
    let app = TestApp::spawn();
    app.create_profile("claude", "anthropic", &upstream.url, ANTHROPIC_KEY);
    app.add_model("claude", "claude-opus-4-1", json!({}));
    app.switch("default", "claude", "claude-opus-4-1");
    let r = messages(&app).body(
        br#"{"model":"m","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.text(), expected);
    let row = next_audit_row(&app, 0);
    assert_eq!(row["endpoint"], "messages");
    assert_eq!(row["agent_id"], "default");
    assert_eq!(row["stream"], true);
    assert_eq!(row["prompt_tokens"], 29);
    assert_eq!(row["completion_tokens"], 14);
    assert_eq!(row["error"], Value::Null);
}

#[test]
fn a_pass_through_stream_cut_short_ends_in_an_anthropic_error_event() {
    // A whole body that ends (the connection with it) before `message_stop`.
    let upstream = FakeUpstream::start(|_| {
        Answer::Raw(
            200,
            "text/event-stream",
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":2,\"output_tokens\":1}}}\n\n".to_vec(),
        )
    });
    let app = TestApp::spawn();
    app.create_profile("claude", "anthropic", &upstream.url, ANTHROPIC_KEY);
    app.add_model("claude", "claude-opus-4-1", json!({}));
    app.switch("default", "claude", "claude-opus-4-1");
    let r = messages(&app)
        .body(br#"{"max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#);
    let events = events(&r);
    let (kind, data) = events.last().unwrap();
    assert_eq!(kind, "error");
    assert_eq!(data["error"]["type"], "api_error");
    let row = next_audit_row(&app, 0);
    assert!(
        row["error"].as_str().unwrap().contains("message_stop"),
        "{row}"
    );
}

#[test]
fn to_an_openai_profile_the_request_is_translated_and_the_answer_is_an_anthropic_message() {
    let (app, upstream) = openai_app(json!({"max_tokens": 16000}), |_| {
        Answer::Json(
            200,
            completion(
                json!({"role": "assistant", "content": "Let me check.", "tool_calls": [
                    {"id": "call_9", "type": "function",
                     "function": {"name": "Bash", "arguments": "{\"command\":\"ls\"}"}}]}),
                "tool_calls",
            ),
        )
    });
    let body: Value = serde_json::from_str(CLAUDE_CODE_BODY).unwrap();
    let mut body = body.as_object().unwrap().clone();
    // A server tool cannot be honoured by an OpenAI model; Claude Code sends none by default.
    body["tools"].as_array_mut().unwrap().pop();
    let r = messages(&app)
        .header("x-agent-id", "coder")
        .json(&Value::Object(body));
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = upstream.last();
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
    let sent = sent.json();
    assert_eq!(sent["model"], "gpt-5");
    assert_eq!(sent["max_completion_tokens"], 16000);
    assert_eq!(sent["reasoning_effort"], "high");
    assert_eq!(sent["user"], "user_abc");
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "You are Claude Code."},
            {"role": "user", "content": "h\u{e9}llo \"there\""},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_01", "type": "function",
                "function": {"name": "Bash", "arguments": "{\"a\":[],\"command\":\"ls\",\"z\":1.5}"}}]},
            {"role": "tool", "tool_call_id": "toolu_01", "content": "README.md"}
        ])
    );
    assert_eq!(sent["tools"][0]["function"]["name"], "Bash");
    for dropped in [
        "thinking",
        "context_management",
        "output_config",
        "a_future_field",
        "metadata",
    ] {
        assert!(sent.get(dropped).is_none(), "{dropped} was sent");
    }

    let answer = r.json();
    assert_eq!(answer["type"], "message");
    assert_eq!(answer["id"], "msg_chatcmpl-1");
    assert_eq!(answer["model"], "gpt-5");
    assert_eq!(answer["stop_reason"], "tool_use");
    assert_eq!(
        answer["content"],
        json!([{"type": "text", "text": "Let me check."},
               {"type": "tool_use", "id": "call_9", "name": "Bash", "input": {"command": "ls"}}])
    );
    assert_eq!(answer["usage"]["input_tokens"], 40);
    assert_eq!(answer["usage"]["output_tokens"], 9);
    assert_eq!(r.header("x-switcher-profile"), Some("oai"));
    let row = next_audit_row(&app, 0);
    assert_eq!(row["endpoint"], "messages");
    assert_eq!(row["provider_type"], "openai");
    assert_eq!(row["prompt_tokens"], 40);
    assert_eq!(row["completion_tokens"], 9);
}

#[test]
fn to_an_openai_profile_a_stream_becomes_anthropic_events() {
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1,
                   "model": "gpt-5", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let script = vec![
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": "Hi "}), Value::Null),
        chunk(json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "Read", "arguments": "{\"file"}}]}), Value::Null),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "_path\":\"/a\"}"}}]}), Value::Null),
        chunk(json!({}), json!("tool_calls")),
        "data: {\"id\":\"chatcmpl-s\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":5}}\n\n".into(),
        "data: [DONE]\n\n".into(),
    ];
    let (app, upstream) = openai_app(json!({}), move |_| {
        Answer::Events(script.clone(), Duration::ZERO)
    });
    let r = messages(&app).header("x-agent-id", "coder").body(
        br#"{"model":"claude","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"read /a"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = upstream.last().json();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    let events = events(&r);
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(events[4].1["content_block"]["name"], "Read");
    assert_eq!(events[8].1["delta"]["stop_reason"], "tool_use");
    assert_eq!(events[8].1["usage"]["output_tokens"], 5);
    let row = next_audit_row(&app, 0);
    assert_eq!(row["stream"], true);
    assert_eq!(row["prompt_tokens"], 12);
    assert_eq!(row["completion_tokens"], 5);
}

#[test]
fn an_openai_upstream_error_comes_back_in_anthropics_shape_without_the_key() {
    let (app, _upstream) = openai_app(json!({}), |_| {
        Answer::Json(
            429,
            json!({"error": {"message": format!("Rate limit for key {OPENAI_KEY}"), "type": "requests", "code": null}}),
        )
    });
    let r = messages(&app)
        .header("x-agent-id", "coder")
        .body(br#"{"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#);
    assert_eq!(r.status, 429);
    let body = r.json();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(!r.text().contains(OPENAI_KEY), "{}", r.text());
}

#[test]
fn errors_of_the_route_take_anthropics_shape() {
    let (app, _upstream) = anthropic_app(json!({}));
    let check = |r: Reply, status: u16, kind: &str, words: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        let body = r.json();
        assert_eq!(body["type"], "error", "{body}");
        assert_eq!(body["error"]["type"], kind, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{message}");
        assert!(
            r.header("x-switcher-error").is_some_and(|c| !c.is_empty()),
            "the service's own error carries x-switcher-error"
        );
    };
    let hi = br#"{"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
    check(
        app.request("POST", "/v1/messages").body(hi),
        401,
        "authentication_error",
        "x-api-key: <key>",
    );
    check(
        app.request("POST", "/v1/messages")
            .header("x-api-key", "wrong")
            .body(hi),
        401,
        "authentication_error",
        "API key",
    );
    check(
        messages(&app).header("x-agent-id", "nobody").body(hi),
        400,
        "invalid_request_error",
        "No active model set for agent_id",
    );
    check(
        messages(&app).body(b"{not json"),
        400,
        "invalid_request_error",
        "not valid JSON",
    );
    check(
        messages(&app).body(br#"{"max_tokens":5}"#),
        400,
        "invalid_request_error",
        "messages",
    );
    check(
        app.request("GET", "/v1/messages").key(AGENT_KEY).send(),
        405,
        "invalid_request_error",
        "POST",
    );
    // A bearer key works as well as x-api-key.
    let r = app
        .request("POST", "/v1/messages")
        .key(AGENT_KEY)
        .header("x-agent-id", "coder")
        .body(hi);
    assert_eq!(r.status, 200, "{}", r.text());
    // Refused keys leave no row; every other request leaves one.
    let rows = settled_audit_rows(&app, 4);
    assert!(rows.iter().all(|r| r["endpoint"] == "messages"));
}

#[test]
fn a_body_over_the_limit_is_a_413_in_anthropics_shape() {
    let app = TestApp::spawn_with(&[("MAX_BODY_BYTES", "1000")]);
    let r = messages(&app).body(&vec![b' '; 2000]);
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["type"], "request_too_large");
}

#[test]
fn a_server_tool_to_an_openai_profile_is_a_400_naming_it() {
    let (app, upstream) = openai_app(json!({}), |_| Answer::Json(500, json!({})));
    let r = messages(&app).header("x-agent-id", "coder").json(&json!({
        "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "web_search_20250305", "name": "web_search"}]}));
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("web_search_20250305"));
    assert!(upstream.received().is_empty());
}

#[test]
fn count_tokens_is_forwarded_to_anthropic_and_estimated_for_openai_and_never_audited() {
    let (app, upstream) = anthropic_app(json!({}));
    let body = br#"{"model":"x","messages":[{"role":"user","content":"hello world"}]}"#;
    let r = app
        .request("POST", "/v1/messages/count_tokens?beta=true")
        .header("x-api-key", AGENT_KEY)
        .header("x-agent-id", "coder")
        .header("anthropic-beta", "token-counting-2024-11-01")
        .body(body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"input_tokens": 77}));
    let got = upstream.last();
    assert_eq!(got.path, "/v1/messages/count_tokens?beta=true");
    assert_eq!(
        got.header("anthropic-beta"),
        Some("token-counting-2024-11-01")
    );
    assert_eq!(
        String::from_utf8(got.body).unwrap(),
        r#"{"model":"claude-opus-4-1","messages":[{"role":"user","content":"hello world"}]}"#
    );

    let (oai, oai_upstream) = openai_app(json!({}), |_| Answer::Json(500, json!({})));
    let r = oai
        .request("POST", "/v1/messages/count_tokens")
        .key(AGENT_KEY)
        .header("x-agent-id", "coder")
        .body(body);
    assert_eq!(r.status, 200, "{}", r.text());
    // 3 for the answer, 4 for the message, "hello" and "world" 2 each.
    assert_eq!(r.json(), json!({"input_tokens": 11}));
    assert_eq!(r.header("x-switcher-model"), Some("gpt-5"));
    assert!(oai_upstream.received().is_empty());

    let r = oai.request("POST", "/v1/messages/count_tokens").body(body);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    // A request that is audited: once its row is in, none came before it.
    let r = messages(&oai)
        .header("x-agent-id", "coder")
        .body(br#"{"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#);
    assert_eq!(r.status, 500);
    assert!(eventually(PATIENCE, || audit_count(&oai) >= 1));
    assert_eq!(audit_count(&oai), 1);
    assert_eq!(audit_count(&app), 0);
}
