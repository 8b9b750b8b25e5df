//! `/v1/responses`: the pass-through to `openai` profiles, the translation for the others,
//! dropped built-in tools, OpenAI-shaped errors and the audit.

use std::time::Duration;

use serde_json::json;

use crate::proxy::{audit_count, next_audit_row};
use crate::support::{Answer, FakeUpstream, TestApp, AGENT_KEY};

const KEY: &str = "sk-profile-key-2468";

/// What Codex sends, trimmed, in its order, with a field no typed struct would know.
const CODEX_BODY: &str = r#"{"model":"gpt-5-codex","instructions":"be good","input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}]}],"tools":[{"type":"function","name":"exec_command","strict":false,"parameters":{"type":"object","properties":{"cmd":{"type":"string"}}}},{"type":"web_search","external_web_access":false}],"tool_choice":"auto","parallel_tool_calls":true,"reasoning":{"summary":"auto"},"store":false,"stream":false,"include":["reasoning.encrypted_content"],"prompt_cache_key":"k1","max_output_tokens":99999,"a_future_field":{"z":1.50}}"#;

fn responses(app: &TestApp) -> crate::support::Call {
    app.request("POST", "/v1/responses")
        .key(AGENT_KEY)
        .header("x-agent-id", "codex")
        .header("content-type", "application/json")
}

fn app_with(kind: &str, base: &str, upstream: &FakeUpstream) -> TestApp {
    let app = TestApp::spawn();
    app.create_profile("p", kind, &format!("{}{base}", upstream.url), KEY);
    app.add_model("p", "m-1", json!({"max_tokens": 1000}));
    app.switch("codex", "p", "m-1");
    app
}

#[test]
fn an_openai_profile_gets_the_body_as_it_came_apart_from_model_and_the_cap() {
    let answer = json!({"id": "resp_up", "object": "response", "status": "completed",
        "output": [], "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}});
    let upstream = FakeUpstream::start(move |_| Answer::Json(200, answer.clone()));
    let app = app_with("openai", "/v1", &upstream);
    let before = audit_count(&app);
    let reply = responses(&app).body(CODEX_BODY.as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["id"], "resp_up");
    assert_eq!(reply.header("x-switcher-model"), Some("m-1"));
    let got = &upstream.received()[0];
    assert_eq!(got.path, "/v1/responses");
    assert_eq!(got.header("authorization"), Some(&*format!("Bearer {KEY}")));
    let want = CODEX_BODY
        .replace(r#""model":"gpt-5-codex""#, r#""model":"m-1""#)
        .replace(
            r#""max_output_tokens":99999"#,
            r#""max_output_tokens":1000"#,
        );
    assert_eq!(String::from_utf8_lossy(&got.body), want);
    let row = next_audit_row(&app, before);
    assert_eq!(row["endpoint"], "responses");
    assert_eq!(row["prompt_tokens"], 5);
    assert!(row["prompt_sha256"].is_string());
}

#[test]
fn a_compatible_profile_gets_a_chat_completion_without_the_built_in_tools() {
    let upstream = FakeUpstream::start(|_| {
        Answer::Json(
            200,
            json!({"id": "c1", "object": "chat.completion", "created": 1,
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
                "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "exec_command", "arguments": "{\"cmd\":\"ls\"}"}}]}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}),
        )
    });
    let app = app_with("openai_compatible", "/v1", &upstream);
    let before = audit_count(&app);
    let reply = responses(&app).body(CODEX_BODY.as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-switcher-dropped-tools"), Some("web_search"));
    let body = reply.json();
    assert_eq!(body["object"], "response");
    assert_eq!(body["output"][0]["type"], "function_call");
    assert_eq!(body["output"][0]["call_id"], "call_1");
    assert_eq!(body["usage"]["input_tokens"], 9);
    let sent = upstream.received()[0].json();
    assert_eq!(upstream.received()[0].path, "/v1/chat/completions");
    assert_eq!(sent["model"], "m-1");
    assert_eq!(sent["max_tokens"], 1000);
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "be good"})
    );
    assert_eq!(
        sent["messages"][1],
        json!({"role": "user", "content": "hi"})
    );
    assert_eq!(sent["tools"].as_array().unwrap().len(), 1);
    for gone in [
        "input",
        "store",
        "include",
        "prompt_cache_key",
        "a_future_field",
    ] {
        assert!(sent.get(gone).is_none(), "{gone} was sent");
    }
    let row = next_audit_row(&app, before);
    assert!(
        row["error"].as_str().unwrap_or("").contains("web_search"),
        "{row}"
    );
}

#[test]
fn an_anthropic_stream_comes_back_as_responses_events() {
    let events: Vec<String> = [
        json!({"type": "message_start", "message": {"id": "msg_1", "model": "m-1", "usage": {"input_tokens": 4, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "SIG"}}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hello"}}),
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 6}}),
        json!({"type": "message_stop"}),
    ]
    .iter()
    .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
    .collect();
    let upstream = FakeUpstream::start(move |_| Answer::Events(events.clone(), Duration::ZERO));
    let app = app_with("anthropic", "", &upstream);
    let before = audit_count(&app);
    let reply = responses(&app).json(&json!({"input": "hi", "stream": true}));
    assert_eq!(reply.status, 200);
    let text = reply.text();
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(kinds.first(), Some(&"response.created"));
    assert_eq!(kinds.last(), Some(&"response.completed"), "{text}");
    assert!(kinds.contains(&"response.reasoning_summary_text.delta"));
    assert!(kinds.contains(&"response.output_text.delta"));
    assert!(!text.contains("SIG"), "the signature is sealed: {text}");
    assert_eq!(upstream.received()[0].path, "/v1/messages");
    let row = next_audit_row(&app, before);
    assert_eq!(row["stream"], true);
    assert_eq!(row["completion_tokens"], 6);
    assert!(row["error"].is_null(), "{row}");
}

#[test]
fn previous_response_id_is_a_400_naming_it_and_no_key_is_a_401() {
    let upstream = FakeUpstream::start(|_| Answer::Json(500, json!({})));
    let app = app_with("openai", "/v1", &upstream);
    let reply = responses(&app).json(&json!({"input": "hi", "previous_response_id": "resp_1"}));
    assert_eq!(reply.status, 400);
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("previous_response_id"));
    assert!(reply.header("x-switcher-error").is_some());
    let reply = app
        .request("POST", "/v1/responses")
        .json(&json!({"input": "hi"}));
    assert_eq!(reply.status, 401);
    assert!(upstream.received().is_empty());
}
