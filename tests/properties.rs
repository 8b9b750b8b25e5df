//! Property tests of the pure parts: the OpenAI → Anthropic and Anthropic → OpenAI
//! translators and the event-stream parser, fed arbitrary JSON and byte streams. None may
//! panic; every output is valid for its schema, or a refusal (which the routes turn into a
//! 400 naming the problem).
//!
//! CI runs a bounded pass (`PROPTEST_CASES`, 256 cases a property unless set). A long run:
//! `PROPTEST_CASES=100000 cargo test --release --test properties`.

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Value};

use switcher_api::{anthropic, anthropic_inbound, anthropic_stream, sse};

/// Field names and values the translators look at, so that arbitrary documents reach past
/// the first check; anything else is still possible.
const WORDS: &[&str] = &[
    "messages",
    "role",
    "content",
    "type",
    "text",
    "system",
    "user",
    "assistant",
    "tool",
    "developer",
    "tool_calls",
    "tool_call_id",
    "function",
    "name",
    "arguments",
    "tools",
    "tool_choice",
    "parameters",
    "image_url",
    "image",
    "url",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "stop_sequences",
    "thinking",
    "budget_tokens",
    "reasoning_effort",
    "response_format",
    "json_schema",
    "input_schema",
    "tool_use",
    "tool_result",
    "id",
    "input",
    "thinking_blocks",
    "signature",
    "redacted_thinking",
    "data",
    "cache_control",
    "metadata",
    "user_id",
    "n",
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "stop_reason",
    "choices",
    "message",
    "delta",
    "finish_reason",
    "index",
    "source",
    "media_type",
    "base64",
    "auto",
    "none",
    "required",
    "any",
    "enabled",
    "json_object",
    "reasoning_content",
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "text_delta",
    "input_json_delta",
    "thinking_delta",
    "signature_delta",
    "partial_json",
    "content_block",
    "error",
    "end_turn",
    "tool_calls",
    "length",
    "stop",
    "parallel_tool_calls",
    "stream_options",
    "include_usage",
    "is_error",
];

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    Config {
        cases,
        // Failures are reported with their input; nothing is written into the tree.
        failure_persistence: None,
        ..Config::default()
    }
}

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(WORDS).prop_map(str::to_string),
        1 => "\\PC{0,12}",
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-5i64..100_000).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        word().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 96, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((word(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// A document shaped like a request: an object whose `messages` is a list of objects with
/// a role and some content, plus arbitrary fields.
fn request() -> impl Strategy<Value = Map<String, Value>> {
    let role = proptest::sample::select(&["system", "developer", "user", "assistant", "tool"][..]);
    let message = (role, json(), prop::collection::vec((word(), json()), 0..3)).prop_map(
        |(role, content, extra)| {
            let mut m: Map<String, Value> = extra.into_iter().collect();
            m.insert("role".into(), role.into());
            m.insert("content".into(), content);
            Value::Object(m)
        },
    );
    (
        prop::collection::vec(message, 0..5),
        prop::collection::vec((word(), json()), 0..5),
    )
        .prop_map(|(messages, extra)| {
            let mut m: Map<String, Value> = extra.into_iter().collect();
            m.insert("messages".into(), Value::Array(messages));
            m
        })
}

/// Bytes of an event stream: `data:` lines of JSON (or `[DONE]`), other SSE lines, and noise.
fn event_stream() -> impl Strategy<Value = Vec<u8>> {
    let event = prop_oneof![
        4 => json().prop_map(|v| format!("data: {v}\n\n").into_bytes()),
        1 => (word(), json()).prop_map(|(e, v)| format!("event: {e}\ndata: {v}\n\n").into_bytes()),
        1 => Just(b"data: [DONE]\n\n".to_vec()),
        1 => Just(b": keep-alive\r\n\r\n".to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..40),
    ];
    prop::collection::vec(event, 0..10).prop_map(|parts| parts.concat())
}

/// Cuts `bytes` at the given points (taken modulo its length).
fn pieces(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut out = Vec::new();
    let mut from = 0;
    for a in at.into_iter().chain([bytes.len()]) {
        out.push(bytes[from..a].to_vec());
        from = a;
    }
    out
}

/// Everything a translated stream sent parses as events whose data is JSON or `[DONE]`.
fn assert_valid_stream(out: &[u8]) -> Vec<Value> {
    let mut parser = sse::Parser::new();
    let events = parser
        .feed(out)
        .expect("no overlong line in our own output");
    let mut values = Vec::new();
    for e in events {
        if e.data == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(&e.data).unwrap_or_else(|err| {
            panic!("{err}: {:?} in {}", e.data, String::from_utf8_lossy(out))
        });
        assert!(v.is_object(), "{v}");
        values.push(v);
    }
    values
}

fn check_anthropic_request(out: &Value, model: &str) {
    assert_eq!(out["model"], model);
    let messages = out["messages"].as_array().expect("messages is a list");
    assert!(!messages.is_empty());
    for m in messages {
        let role = m["role"].as_str().unwrap_or_default();
        assert!(role == "user" || role == "assistant", "{m}");
        assert!(m["content"].is_string() || m["content"].is_array(), "{m}");
    }
    assert!(out["max_tokens"].as_u64().is_some_and(|n| n >= 1), "{out}");
    if let Some(system) = out.get("system") {
        assert!(system.is_string() || system.is_array(), "{system}");
    }
}

fn check_chat_request(out: &Map<String, Value>) {
    let messages = out["messages"].as_array().expect("messages is a list");
    for m in messages {
        let role = m["role"].as_str().unwrap_or_default();
        assert!(
            ["system", "user", "assistant", "tool"].contains(&role),
            "{m}"
        );
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn openai_to_anthropic_requests_are_valid_or_refused(body in json(), shaped in request(), cap in proptest::option::of(1i64..100_000)) {
        for input in [body, Value::Object(shaped)] {
            match anthropic::translate_request(&input, "claude-test", cap) {
                Ok(out) => check_anthropic_request(&out, "claude-test"),
                Err(e) => prop_assert!(!e.0.is_empty()),
            }
        }
    }

    #[test]
    fn anthropic_answers_become_chat_completions(answer in json(), created in any::<u64>()) {
        let out = anthropic::translate_response(&answer, created);
        prop_assert_eq!(&out["object"], "chat.completion");
        let choices = out["choices"].as_array().unwrap();
        prop_assert_eq!(choices.len(), 1);
        prop_assert_eq!(&choices[0]["message"]["role"], "assistant");
        let error = anthropic::translate_error(&answer);
        prop_assert!(error["error"]["message"].is_string());
    }

    #[test]
    fn anthropic_to_openai_requests_are_valid_or_refused(body in json(), shaped in request()) {
        let objects = [body.as_object().cloned().unwrap_or_default(), shaped];
        for input in objects {
            match anthropic_inbound::translate_request(&input, "max_tokens") {
                Ok(out) => check_chat_request(&out),
                Err(e) => prop_assert!(!e.0.is_empty()),
            }
            let _ = anthropic_inbound::estimate_tokens(&input);
        }
    }

    #[test]
    fn chat_completions_become_anthropic_messages_or_none(answer in json(), stops in prop::collection::vec(word(), 0..3)) {
        if let Some(out) = anthropic_inbound::translate_response(&answer, "gpt-test", &stops) {
            prop_assert_eq!(&out["type"], "message");
            prop_assert_eq!(&out["role"], "assistant");
            prop_assert!(out["content"].is_array());
        }
        let error = anthropic_inbound::translate_error(500, &answer);
        prop_assert_eq!(&error["type"], "error");
    }

    #[test]
    fn anthropic_event_streams_become_chunks_whatever_the_split(bytes in event_stream(), cuts in prop::collection::vec(any::<usize>(), 0..6), include_usage in any::<bool>()) {
        let mut t = anthropic_stream::Translator::new(1_700_000_000, "claude-test", include_usage);
        let mut out = Vec::new();
        for piece in pieces(&bytes, &cuts) {
            out.extend(t.feed(&piece));
        }
        out.extend(t.finish());
        for chunk in assert_valid_stream(&out) {
            prop_assert!(chunk.get("object") == Some(&Value::from("chat.completion.chunk")) || chunk.get("error").is_some(), "{}", chunk);
        }
    }

    #[test]
    fn chat_chunk_streams_become_anthropic_events_whatever_the_split(bytes in event_stream(), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let mut t = anthropic_inbound::StreamTranslator::new("gpt-test", vec!["STOP".into()]);
        let mut out = Vec::new();
        for piece in pieces(&bytes, &cuts) {
            out.extend(t.feed(&piece));
        }
        out.extend(t.finish());
        for event in assert_valid_stream(&out) {
            prop_assert!(event["type"].is_string(), "{}", event);
        }
    }

    #[test]
    fn the_sse_parser_gives_the_same_events_whatever_the_split(bytes in prop_oneof![event_stream(), prop::collection::vec(any::<u8>(), 0..300)], cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let whole = sse::Parser::new().feed(&bytes);
        let mut parser = sse::Parser::new();
        let mut split = Vec::new();
        for piece in pieces(&bytes, &cuts) {
            split.extend(parser.feed(&piece).expect("short input"));
        }
        prop_assert_eq!(whole.expect("short input"), split);
    }
}
