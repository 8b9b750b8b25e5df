//! Translation of the Anthropic Messages API (what Claude Code speaks) into OpenAI chat
//! completions and back: the request, the answer, and the chunk stream as Anthropic events.
//!
//! The mirror image of `anthropic` and `anthropic_stream`, and as pure: JSON in, JSON out;
//! bytes in, bytes out. The rules are the "Inbound" section of ANTHROPIC.md.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::anthropic::TranslateError;
use crate::input::present;
use crate::sse;
use crate::usage::Usage;

fn fail<T>(message: impl Into<String>) -> Result<T, TranslateError> {
    Err(TranslateError(message.into()))
}

/// Anthropic Messages request body -> OpenAI chat completion request body.
///
/// `max_tokens_field` is where `max_tokens` goes: `max_completion_tokens` for OpenAI itself,
/// `max_tokens` for OpenAI-compatible servers. The model's `drop_params` are expected to be
/// gone already; `model` and the model's cap are set on the result afterwards.
pub fn translate_request(
    req: &Map<String, Value>,
    max_tokens_field: &str,
) -> Result<Map<String, Value>, TranslateError> {
    let mut out = Map::new();
    let mut messages = Vec::new();
    if let Some(system) = present(req, "system") {
        let text = system_text(system, "system")?;
        messages.push(json!({"role": "system", "content": text}));
    }
    let conversation = match present(req, "messages") {
        None => return fail("field `messages` is required"),
        Some(Value::Array(m)) => m,
        Some(_) => return fail("field `messages` must be a list of messages"),
    };
    for (i, message) in conversation.iter().enumerate() {
        translate_message(i, message, &mut messages)?;
    }
    out.insert("messages".into(), Value::Array(messages));

    if let Some(v) = present(req, "max_tokens") {
        if v.as_u64().is_none() {
            return fail("field `max_tokens` must be a whole number");
        }
        out.insert(max_tokens_field.into(), v.clone());
    }
    if let Some(v) = present(req, "stop_sequences") {
        match v.as_array() {
            Some(list) if list.iter().all(Value::is_string) => {
                out.insert("stop".into(), v.clone());
            }
            _ => return fail("field `stop_sequences` must be a list of strings"),
        }
    }
    for name in ["temperature", "top_p"] {
        if let Some(v) = present(req, name) {
            if !v.is_number() {
                return fail(format!("field `{name}` must be a number"));
            }
            out.insert(name.into(), v.clone());
        }
    }
    if let Some(tools) = present(req, "tools") {
        let Some(tools) = tools.as_array() else {
            return fail("field `tools` must be a list");
        };
        let tools = tools
            .iter()
            .enumerate()
            .map(|(i, t)| translate_tool(i, t))
            .collect::<Result<Vec<_>, _>>()?;
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
        }
    }
    if let Some(choice) = present(req, "tool_choice") {
        let (choice, no_parallel) = translate_tool_choice(choice)?;
        out.insert("tool_choice".into(), choice);
        if no_parallel {
            out.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
    }
    if let Some(user) = present(req, "metadata")
        .and_then(|m| m.get("user_id"))
        .filter(|u| u.is_string())
    {
        out.insert("user".into(), user.clone());
    }
    if let Some(effort) = reasoning_effort(req)? {
        out.insert("reasoning_effort".into(), json!(effort));
    }
    if let Some(format) = present(req, "output_config")
        .and_then(|c| c.get("format"))
        .filter(|f| f.get("type").and_then(Value::as_str) == Some("json_schema"))
    {
        let schema = format.get("schema").cloned().unwrap_or_else(|| json!({}));
        out.insert(
            "response_format".into(),
            json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}),
        );
    }
    match present(req, "stream") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            out.insert("stream".into(), Value::Bool(true));
            out.insert("stream_options".into(), json!({"include_usage": true}));
        }
        Some(_) => return fail("field `stream` must be true or false"),
    }
    Ok(out)
}

/// `system` (or a `system` turn's content): a string, or text blocks joined by a blank line.
fn system_text(value: &Value, field: &str) -> Result<String, TranslateError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut texts = Vec::new();
            for (j, block) in blocks.iter().enumerate() {
                match block_type(block) {
                    Some("text") => texts.push(block_text(block, &format!("{field}[{j}]"))?),
                    _ => return fail(format!("field `{field}[{j}]` must be a text block")),
                }
            }
            Ok(texts.join("\n\n"))
        }
        _ => fail(format!(
            "field `{field}` must be a string or a list of text blocks"
        )),
    }
}

fn block_type(block: &Value) -> Option<&str> {
    block.get("type").and_then(Value::as_str)
}

fn block_text(block: &Value, field: &str) -> Result<String, TranslateError> {
    match block.get("text") {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => fail(format!("field `{field}.text` must be a string")),
    }
}

fn translate_message(
    i: usize,
    message: &Value,
    out: &mut Vec<Value>,
) -> Result<(), TranslateError> {
    let Some(message) = message.as_object() else {
        return fail(format!("field `messages[{i}]` must be an object"));
    };
    let role = match message.get("role") {
        Some(Value::String(r)) => r.as_str(),
        _ => return fail(format!("field `messages[{i}].role` must be a string")),
    };
    let content = match present(message, "content") {
        Some(c @ (Value::String(_) | Value::Array(_))) => c,
        _ => {
            return fail(format!(
                "field `messages[{i}].content` must be a string or a list of content blocks"
            ))
        }
    };
    match role {
        "system" => {
            let text = system_text(content, &format!("messages[{i}].content"))?;
            out.push(json!({"role": "system", "content": text}));
        }
        "user" => user_messages(i, content, out)?,
        "assistant" => {
            if let Some(m) = assistant_message(i, content)? {
                out.push(m);
            }
        }
        other => {
            return fail(format!(
                "field `messages[{i}].role` must be user, assistant or system, not `{other}`"
            ))
        }
    }
    Ok(())
}

/// The blocks of a turn, each checked to be an object with a `type`.
type Block<'a> = (usize, &'a str, &'a Value);

fn blocks(i: usize, content: &[Value]) -> Result<Vec<Block<'_>>, TranslateError> {
    content
        .iter()
        .enumerate()
        .map(|(j, b)| match block_type(b) {
            Some(t) => Ok((j, t, b)),
            None => fail(format!(
                "field `messages[{i}].content[{j}]` must be a content block with a `type`"
            )),
        })
        .collect()
}

/// One user turn: a `tool` message per `tool_result`, then the rest as one `user` message.
fn user_messages(i: usize, content: &Value, out: &mut Vec<Value>) -> Result<(), TranslateError> {
    let content = match content {
        Value::String(s) => {
            out.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Value::Array(c) => c,
        _ => unreachable!("checked by translate_message"),
    };
    let mut rest = Vec::new();
    for (j, kind, block) in blocks(i, content)? {
        let field = format!("messages[{i}].content[{j}]");
        match kind {
            "text" => rest.push(json!({"type": "text", "text": block_text(block, &field)?})),
            "image" => rest.push(image_part(block, &field)?),
            "tool_result" => {
                let (message, images) = tool_result(block, &field)?;
                out.push(message);
                rest.extend(images);
            }
            "thinking" | "redacted_thinking" => {}
            other => return unsupported_block(&field, other),
        }
    }
    if !rest.is_empty() {
        out.push(json!({"role": "user", "content": parts_content(rest)}));
    }
    Ok(())
}

fn unsupported_block<T>(field: &str, kind: &str) -> Result<T, TranslateError> {
    fail(format!(
        "field `{field}`: content blocks of type `{kind}` cannot be sent to an OpenAI-type model"
    ))
}

/// A single text part becomes a plain string; anything else stays a list of parts.
fn parts_content(mut parts: Vec<Value>) -> Value {
    if parts.len() == 1 && parts[0]["type"] == "text" {
        return parts.remove(0)["text"].take();
    }
    Value::Array(parts)
}

fn image_part(block: &Value, field: &str) -> Result<Value, TranslateError> {
    let source = block.get("source").and_then(Value::as_object);
    let str_of = |key: &str| source.and_then(|s| s.get(key)).and_then(Value::as_str);
    let url = match str_of("type") {
        Some("base64") => match (str_of("media_type"), str_of("data")) {
            (Some(mime), Some(data)) => format!("data:{mime};base64,{data}"),
            _ => {
                return fail(format!(
                    "field `{field}.source` needs `media_type` and `data` strings"
                ))
            }
        },
        Some("url") => match str_of("url") {
            Some(u) => u.to_string(),
            None => return fail(format!("field `{field}.source.url` must be a string")),
        },
        _ => {
            return fail(format!(
                "field `{field}.source.type` must be `base64` or `url`"
            ))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// A `tool_result` block: its `tool` message and the images it carried.
fn tool_result(block: &Value, field: &str) -> Result<(Value, Vec<Value>), TranslateError> {
    let id = match block.get("tool_use_id") {
        Some(Value::String(s)) => s,
        _ => return fail(format!("field `{field}.tool_use_id` must be a string")),
    };
    let mut texts = Vec::new();
    let mut images = Vec::new();
    match block.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => texts.push(s.clone()),
        Some(Value::Array(parts)) => {
            for (k, part) in parts.iter().enumerate() {
                let field = format!("{field}.content[{k}]");
                match block_type(part) {
                    Some("text") => texts.push(block_text(part, &field)?),
                    Some("image") => images.push(image_part(part, &field)?),
                    Some(other) => return unsupported_block(&field, other),
                    None => return fail(format!("field `{field}` must be a content block")),
                }
            }
        }
        Some(_) => {
            return fail(format!(
                "field `{field}.content` must be a string or a list of content blocks"
            ))
        }
    }
    let mut text = texts.join("\n\n");
    if block.get("is_error") == Some(&Value::Bool(true)) {
        text = format!("Error: {text}");
    }
    Ok((
        json!({"role": "tool", "tool_call_id": id, "content": text}),
        images,
    ))
}

/// An assistant turn; `None` when nothing of it can be sent (only thinking blocks).
fn assistant_message(i: usize, content: &Value) -> Result<Option<Value>, TranslateError> {
    let content = match content {
        Value::String(s) => return Ok(Some(json!({"role": "assistant", "content": s}))),
        Value::Array(c) => c,
        _ => unreachable!("checked by translate_message"),
    };
    let mut texts = Vec::new();
    let mut tool_calls = Vec::new();
    for (j, kind, block) in blocks(i, content)? {
        let field = format!("messages[{i}].content[{j}]");
        match kind {
            "text" => {
                let text = block_text(block, &field)?;
                if !text.is_empty() {
                    texts.push(json!({"type": "text", "text": text}));
                }
            }
            "tool_use" => {
                let (Some(Value::String(id)), Some(Value::String(name))) =
                    (block.get("id"), block.get("name"))
                else {
                    return fail(format!("field `{field}` needs `id` and `name` strings"));
                };
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": input.to_string()},
                }));
            }
            "thinking" | "redacted_thinking" => {}
            other => return unsupported_block(&field, other),
        }
    }
    if texts.is_empty() && tool_calls.is_empty() {
        return Ok(None);
    }
    let content = if texts.is_empty() {
        Value::Null
    } else {
        parts_content(texts)
    };
    let mut message = json!({"role": "assistant", "content": content});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    Ok(Some(message))
}

fn translate_tool(i: usize, tool: &Value) -> Result<Value, TranslateError> {
    let Some(tool) = tool.as_object() else {
        return fail(format!("field `tools[{i}]` must be an object"));
    };
    let name = tool.get("name").and_then(Value::as_str);
    if let Some(kind) = present(tool, "type").and_then(Value::as_str) {
        if kind != "custom" {
            return fail(format!(
                "field `tools[{i}]`: `{}` is an Anthropic server tool (type `{kind}`); an \
                 OpenAI-type model cannot run it",
                name.unwrap_or("?")
            ));
        }
    }
    let Some(name) = name else {
        return fail(format!("field `tools[{i}].name` must be a string"));
    };
    let mut function = Map::new();
    function.insert("name".into(), json!(name));
    if let Some(d) = present(tool, "description") {
        function.insert("description".into(), d.clone());
    }
    let parameters = present(tool, "input_schema")
        .cloned()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    function.insert("parameters".into(), parameters);
    Ok(json!({"type": "function", "function": function}))
}

/// The OpenAI `tool_choice`, and whether parallel tool calls are off.
fn translate_tool_choice(choice: &Value) -> Result<(Value, bool), TranslateError> {
    let no_parallel = choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true));
    let openai = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match choice.get("name").and_then(Value::as_str) {
            Some(name) => json!({"type": "function", "function": {"name": name}}),
            None => return fail("field `tool_choice.name` must be a string"),
        },
        _ => return fail("field `tool_choice.type` must be auto, any, tool or none"),
    };
    Ok((openai, no_parallel))
}

/// `thinking` as an OpenAI `reasoning_effort`.
fn reasoning_effort(req: &Map<String, Value>) -> Result<Option<&'static str>, TranslateError> {
    let Some(thinking) = present(req, "thinking") else {
        return Ok(None);
    };
    match thinking.get("type").and_then(Value::as_str) {
        Some("enabled") => {
            let Some(budget) = thinking.get("budget_tokens").and_then(Value::as_u64) else {
                return fail("field `thinking.budget_tokens` must be a whole number");
            };
            Ok(Some(match budget {
                0..=2048 => "low",
                2049..=8192 => "medium",
                _ => "high",
            }))
        }
        Some("adaptive") => {
            let effort = present(req, "output_config")
                .and_then(|c| c.get("effort"))
                .and_then(Value::as_str);
            Ok(match effort {
                Some("low") => Some("low"),
                Some("medium") => Some("medium"),
                Some("high") | Some("max") => Some("high"),
                // Adaptive thinking with no effort named: the model's own default.
                _ => None,
            })
        }
        _ => Ok(None),
    }
}

/// The `stop_sequences` of a request, to tell `stop_sequence` from `end_turn` in the answer.
pub fn stop_sequences(req: &Map<String, Value>) -> Vec<String> {
    present(req, "stop_sequences")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// OpenAI `finish_reason` -> Anthropic `stop_reason` (and the stop sequence, when the text
/// ended on one).
fn stop_reason(
    finish_reason: Option<&str>,
    text: &str,
    stops: &[String],
) -> (&'static str, Option<String>) {
    match finish_reason {
        Some("length") => ("max_tokens", None),
        Some("tool_calls") | Some("function_call") => ("tool_use", None),
        Some("content_filter") => ("refusal", None),
        _ => match stops.iter().find(|s| text.ends_with(s.as_str())) {
            Some(s) => ("stop_sequence", Some(s.clone())),
            None => ("end_turn", None),
        },
    }
}

/// OpenAI usage counts as Anthropic's: cached prompt tokens are reported apart.
fn anthropic_usage(usage: Option<&Value>) -> Value {
    let count = |v: Option<&Value>| v.and_then(Value::as_i64).unwrap_or(0).max(0);
    let prompt = count(usage.and_then(|u| u.get("prompt_tokens")));
    let cached = count(usage.and_then(|u| u.pointer("/prompt_tokens_details/cached_tokens")));
    let completion = count(usage.and_then(|u| u.get("completion_tokens")));
    json!({
        "input_tokens": prompt.saturating_sub(cached).max(0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": completion,
    })
}

/// A chat completion -> an Anthropic message; `None` when the body is not a chat completion.
/// `model` is the active model's name; `stops` the request's stop sequences.
pub fn translate_response(openai: &Value, model: &str, stops: &[String]) -> Option<Value> {
    let choice = openai.get("choices")?.as_array()?.first()?;
    let message = choice.get("message")?;
    let mut content = Vec::new();
    if let Some(reasoning) = message
        .get("reasoning_content")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
    {
        content.push(json!({"type": "thinking", "thinking": reasoning, "signature": ""}));
    }
    let text = match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        // Some servers answer with a list of text parts.
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    };
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let function = call.get("function");
        let arguments = function
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
            .unwrap_or("");
        content.push(json!({
            "type": "tool_use",
            "id": call.get("id").and_then(Value::as_str).unwrap_or("toolu_missing"),
            "name": function.and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or(""),
            "input": parse_input(arguments),
        }));
    }
    let (stop_reason, stop_sequence) = stop_reason(
        choice.get("finish_reason").and_then(Value::as_str),
        &text,
        stops,
    );
    Some(json!({
        "id": message_id(openai.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": anthropic_usage(openai.get("usage")),
    }))
}

fn message_id(upstream: Option<&Value>) -> String {
    match upstream.and_then(Value::as_str) {
        Some(id) if !id.is_empty() => format!("msg_{id}"),
        _ => "msg_switcher".into(),
    }
}

/// Tool-call arguments as an Anthropic `input`: a JSON object, else `{}`.
fn parse_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

/// The Anthropic error `type` for an upstream's status.
fn upstream_error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        _ => "api_error",
    }
}

/// The Anthropic error `type` for an error of the service's own (SPEC.md).
pub fn own_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// An Anthropic error body.
pub fn error_body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// An OpenAI-type upstream's error answer -> Anthropic's error shape (same status).
pub fn translate_error(status: u16, body: &Value) -> Value {
    let message = body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(truncate)
        .unwrap_or_else(|| format!("upstream answered status {status}"));
    error_body(upstream_error_type(status), &message)
}

fn truncate(s: &str) -> String {
    crate::audit::short_error(s)
}

/// A local estimate of the prompt tokens of a translated request (count_tokens for
/// OpenAI-type profiles, which have no such endpoint).
///
/// Text is counted the way BPE tokenizers roughly cut it: each run of letters and digits is
/// one token per 4 characters (at least one), every other visible character (punctuation,
/// symbols, CJK and other non-Latin characters, which tokenizers keep short) is one token;
/// white space is free. Each message adds 4 tokens for its role and framing, the request 3
/// for the answer's priming (OpenAI's published rule of thumb), tools are counted as the
/// compact JSON of their definitions, and each image as 1,600 tokens (about what a provider
/// charges for a full-size image; the proxy does not decode images to measure them).
pub fn estimate_tokens(chat: &Map<String, Value>) -> u64 {
    let mut total = 3;
    for message in chat
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        total += 4;
        match message.get("content") {
            Some(Value::String(s)) => total += text_tokens(s),
            Some(Value::Array(parts)) => {
                for part in parts {
                    match part.get("type").and_then(Value::as_str) {
                        Some("image_url") => total += 1600,
                        _ => {
                            total +=
                                text_tokens(part.get("text").and_then(Value::as_str).unwrap_or(""))
                        }
                    }
                }
            }
            _ => {}
        }
        for call in message
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            total += text_tokens(&call["function"].to_string());
        }
    }
    for tool in chat
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        total += text_tokens(&tool.to_string());
    }
    total
}

fn text_tokens(text: &str) -> u64 {
    let mut tokens = 0;
    let mut word = 0u64;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || (c.is_alphanumeric() && (c as u32) < 0x2E80) {
            word += 1;
            continue;
        }
        tokens += word.div_ceil(4);
        word = 0;
        if !c.is_whitespace() {
            tokens += 1;
        }
    }
    tokens + word.div_ceil(4)
}

/// Which content block is open in the stream being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Thinking,
    Text,
    Tool,
}

/// One answer's chunk stream -> Anthropic events, incrementally (the Streaming rules of the
/// Inbound section of ANTHROPIC.md).
pub struct StreamTranslator {
    parser: sse::Parser,
    model: String,
    stops: Vec<String>,
    started: bool,
    /// The next content block's index.
    next_index: usize,
    open: Option<(Open, usize)>,
    /// OpenAI tool-call index -> the content block index of its `tool_use` block.
    tools: HashMap<u64, usize>,
    finish_reason: Option<String>,
    usage: Option<Value>,
    /// The end of the text so far, as long as the longest stop sequence.
    tail: String,
    done: bool,
    error: Option<String>,
}

impl StreamTranslator {
    /// `model`: the active model's name; `stops`: the request's stop sequences.
    pub fn new(model: &str, stops: Vec<String>) -> StreamTranslator {
        StreamTranslator {
            parser: sse::Parser::new(),
            model: model.to_string(),
            stops,
            started: false,
            next_index: 0,
            open: None,
            tools: HashMap::new(),
            finish_reason: None,
            usage: None,
            tail: String::new(),
            done: false,
            error: None,
        }
    }

    /// Feeds upstream bytes (any split); returns the Anthropic event bytes to send now.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        let (events, too_long) = match self.parser.feed(bytes) {
            Ok(events) => (events, false),
            Err(e) => (e.completed, true),
        };
        for event in events {
            if self.done {
                break;
            }
            self.handle(&event.data, &mut out);
        }
        if too_long && !self.done {
            self.fail(
                "the upstream stream sent an event that is too large",
                &mut out,
            );
        }
        out
    }

    /// The upstream stream ended. After a `finish_reason` (or `[DONE]`) that is the end of
    /// the answer; before one, the answer was cut short and the client gets an error event.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.done {
        } else if self.finish_reason.is_some() {
            self.end(&mut out);
        } else {
            self.fail(
                "the upstream stream ended before the answer was complete",
                &mut out,
            );
        }
        out
    }

    /// The upstream connection failed: an error event, and the stream ends.
    pub fn broken(&mut self, message: &str) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.done {
            self.fail(message, &mut out);
        }
        out
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Why the stream ended in an error event, for the audit row.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// The usage the upstream reported, if it did.
    pub fn usage(&self) -> Option<Usage> {
        self.usage.as_ref().and_then(Usage::from_openai)
    }

    fn handle(&mut self, data: &str, out: &mut Vec<u8>) {
        if data.trim() == "[DONE]" {
            self.end(out);
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            self.fail("the upstream stream sent an event that is not JSON", out);
            return;
        };
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map(truncate)
                .unwrap_or_else(|| "the upstream stream reported an error".into());
            self.fail(&message, out);
            return;
        }
        self.start(chunk.get("id"), out);
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage.clone());
        }
        let Some(choice) = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
        else {
            return;
        };
        let delta = choice.get("delta");
        let text_of = |key: &str| {
            delta
                .and_then(|d| d.get(key))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        if let Some(thinking) = text_of("reasoning_content") {
            self.open_block(
                Open::Thinking,
                json!({"type": "thinking", "thinking": "", "signature": ""}),
                out,
            );
            let index = self.open.map(|(_, i)| i).unwrap_or(0);
            emit(
                out,
                "content_block_delta",
                json!({
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": "thinking_delta", "thinking": thinking},
                }),
            );
        }
        if let Some(text) = text_of("content") {
            self.open_block(Open::Text, json!({"type": "text", "text": ""}), out);
            let index = self.open.map(|(_, i)| i).unwrap_or(0);
            emit(
                out,
                "content_block_delta",
                json!({
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": "text_delta", "text": text},
                }),
            );
            self.keep_tail(text);
        }
        let calls = delta
            .and_then(|d| d.get("tool_calls"))
            .and_then(Value::as_array);
        for (position, call) in calls.into_iter().flatten().enumerate() {
            self.tool_call_delta(position, call, out);
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.close(out);
            self.finish_reason = Some(reason.to_string());
        }
    }

    fn start(&mut self, id: Option<&Value>, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        emit(
            out,
            "message_start",
            json!({
                "type": "message_start",
                "message": {
                    "id": message_id(id),
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                },
            }),
        );
    }

    fn tool_call_delta(&mut self, position: usize, call: &Value, out: &mut Vec<u8>) {
        let i = call
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(position as u64);
        let function = call.get("function");
        let index = match self.tools.get(&i) {
            Some(&index) => index,
            None => {
                let id = match call.get("id").and_then(Value::as_str) {
                    Some(id) if !id.is_empty() => id.to_string(),
                    _ => format!("toolu_switcher_{i}"),
                };
                let name = function
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                self.close(out);
                let index = self.next_index;
                self.next_index += 1;
                self.open = Some((Open::Tool, index));
                self.tools.insert(i, index);
                emit(
                    out,
                    "content_block_start",
                    json!({
                        "type": "content_block_start", "index": index,
                        "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}},
                    }),
                );
                index
            }
        };
        if let Some(arguments) = function
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        {
            emit(
                out,
                "content_block_delta",
                json!({
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": arguments},
                }),
            );
        }
    }

    /// Makes a block of `kind` the open one, closing another that is.
    fn open_block(&mut self, kind: Open, block: Value, out: &mut Vec<u8>) {
        if matches!(self.open, Some((k, _)) if k == kind) {
            return;
        }
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((kind, index));
        emit(
            out,
            "content_block_start",
            json!({
                "type": "content_block_start", "index": index, "content_block": block,
            }),
        );
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((_, index)) = self.open.take() {
            emit(
                out,
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    fn keep_tail(&mut self, text: &str) {
        let Some(longest) = self.stops.iter().map(|s| s.chars().count()).max() else {
            return;
        };
        self.tail.push_str(text);
        let excess = self.tail.chars().count().saturating_sub(longest);
        if excess > 0 {
            let cut = self.tail.char_indices().nth(excess).map_or(0, |(i, _)| i);
            self.tail.drain(..cut);
        }
    }

    /// `message_delta` and `message_stop`: the answer is complete.
    fn end(&mut self, out: &mut Vec<u8>) {
        self.start(None, out);
        self.close(out);
        let (stop_reason, stop_sequence) =
            stop_reason(self.finish_reason.as_deref(), &self.tail, &self.stops);
        let usage = match &self.usage {
            Some(u) => anthropic_usage(Some(u)),
            None => json!({"output_tokens": 0}),
        };
        emit(
            out,
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                "usage": usage,
            }),
        );
        emit(out, "message_stop", json!({"type": "message_stop"}));
        self.done = true;
    }

    fn fail(&mut self, message: &str, out: &mut Vec<u8>) {
        out.extend(error_event(message));
        self.error = Some(message.to_string());
        self.done = true;
    }
}

/// An Anthropic `error` event (`api_error`), as sent when a stream breaks.
pub fn error_event(message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    emit(&mut out, "error", error_body("api_error", message));
    out
}

fn emit(out: &mut Vec<u8>, event: &str, data: Value) {
    out.extend_from_slice(format!("event: {event}\ndata: {data}\n\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn chat(v: Value) -> Value {
        Value::Object(translate_request(&req(v), "max_completion_tokens").unwrap())
    }

    fn refused(v: Value) -> String {
        translate_request(&req(v), "max_tokens").unwrap_err().0
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": text})
    }

    #[test]
    fn a_system_string_becomes_the_first_system_message() {
        let out = chat(json!({"system": "be brief", "messages": [user("hi")]}));
        assert_eq!(
            out["messages"],
            json!([{"role": "system", "content": "be brief"}, user("hi")])
        );
    }

    #[test]
    fn system_text_blocks_are_joined_with_a_blank_line_and_cache_control_dropped() {
        let out = chat(json!({"system": [
            {"type": "text", "text": "one", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "two"}], "messages": [user("hi")]}));
        assert_eq!(
            out["messages"][0],
            json!({"role": "system", "content": "one\n\ntwo"})
        );
    }

    #[test]
    fn string_content_keeps_its_role() {
        let out = chat(json!({"messages": [user("a"), {"role": "assistant", "content": "b"}]}));
        assert_eq!(
            out["messages"],
            json!([user("a"), {"role": "assistant", "content": "b"}])
        );
    }

    #[test]
    fn a_system_turn_inside_messages_stays_at_its_position() {
        let out = chat(
            json!({"messages": [user("a"), {"role": "system", "content": "mind"}, user("b")]}),
        );
        assert_eq!(
            out["messages"][1],
            json!({"role": "system", "content": "mind"})
        );
        assert_eq!(out["messages"][2], user("b"));
    }

    #[test]
    fn one_text_block_becomes_a_string_and_several_stay_parts() {
        let out = chat(json!({"messages": [
            {"role": "user", "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}));
        assert_eq!(out["messages"][0]["content"], "x");
        assert_eq!(
            out["messages"][1]["content"],
            json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])
        );
    }

    #[test]
    fn images_become_image_url_parts() {
        let out = chat(json!({"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}},
            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
            {"type": "text", "text": "what?"}]}]}));
        assert_eq!(
            out["messages"][0]["content"],
            json!([
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            {"type": "text", "text": "what?"}])
        );
    }

    #[test]
    fn assistant_tool_use_blocks_become_tool_calls_with_compact_arguments() {
        let out = chat(
            json!({"messages": [user("go"), {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "/a", "n": 1}},
            {"type": "tool_use", "id": "toolu_2", "name": "Bash", "input": {"command": "ls"}}]}]}),
        );
        assert_eq!(
            out["messages"][1],
            json!({"role": "assistant", "content": "Let me look.",
            "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "Read", "arguments": "{\"n\":1,\"path\":\"/a\"}"}},
                {"id": "toolu_2", "type": "function", "function": {"name": "Bash", "arguments": "{\"command\":\"ls\"}"}}]})
        );
    }

    #[test]
    fn an_assistant_turn_of_only_tool_use_has_null_content() {
        let out = chat(
            json!({"messages": [user("go"), {"role": "assistant", "content": [
            {"type": "text", "text": ""},
            {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}),
        );
        assert_eq!(out["messages"][1]["content"], Value::Null);
        assert_eq!(
            out["messages"][1]["tool_calls"][0]["function"]["arguments"],
            "{}"
        );
    }

    #[test]
    fn tool_results_become_tool_messages_before_the_rest_of_the_turn() {
        let out = chat(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "and then?"},
            {"type": "tool_result", "tool_use_id": "t1", "content": "42"},
            {"type": "tool_result", "tool_use_id": "t2", "is_error": true,
             "content": [{"type": "text", "text": "no such"}, {"type": "text", "text": "file"}]}]}]}));
        assert_eq!(
            out["messages"],
            json!([
            {"role": "tool", "tool_call_id": "t1", "content": "42"},
            {"role": "tool", "tool_call_id": "t2", "content": "Error: no such\n\nfile"},
            {"role": "user", "content": "and then?"}])
        );
    }

    #[test]
    fn a_turn_of_only_tool_results_adds_no_user_message_and_images_follow_in_one() {
        let out = chat(json!({"messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "ok", "cache_control": {"type": "ephemeral"}}]}]}));
        assert_eq!(
            out["messages"],
            json!([{"role": "tool", "tool_call_id": "t1", "content": "ok"}])
        );
        let out = chat(json!({"messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": [
                {"type": "text", "text": "see"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": "R0"}}]}]}]}));
        assert_eq!(
            out["messages"],
            json!([
            {"role": "tool", "tool_call_id": "t1", "content": "see"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0"}}]}])
        );
    }

    #[test]
    fn thinking_blocks_are_dropped_and_a_turn_of_only_thinking_disappears() {
        let out = chat(
            json!({"messages": [user("a"), {"role": "assistant", "content": [
            {"type": "redacted_thinking", "data": "xx"}]}, user("b")]}),
        );
        assert_eq!(out["messages"], json!([user("a"), user("b")]));
    }

    #[test]
    fn max_tokens_goes_to_the_field_the_provider_takes() {
        let body = json!({"max_tokens": 128000, "messages": [user("a")]});
        assert_eq!(chat(body.clone())["max_completion_tokens"], 128000);
        let out = translate_request(&req(body), "max_tokens").unwrap();
        assert_eq!(out["max_tokens"], 128000);
        assert!(!out.contains_key("max_completion_tokens"));
    }

    #[test]
    fn sampling_and_stop_sequences_carry_over_and_top_k_is_dropped() {
        let out = chat(
            json!({"messages": [user("a")], "temperature": 0.3, "top_p": 0.9,
            "top_k": 5, "stop_sequences": ["END"]}),
        );
        assert_eq!(out["temperature"], 0.3);
        assert_eq!(out["top_p"], 0.9);
        assert_eq!(out["stop"], json!(["END"]));
        assert!(out.get("top_k").is_none());
    }

    #[test]
    fn tools_become_functions_with_their_schema() {
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        let out = chat(json!({"messages": [user("a")], "tools": [
            {"name": "weather", "description": "Weather", "input_schema": schema, "cache_control": {"type": "ephemeral"}},
            {"type": "custom", "name": "bare"}]}));
        assert_eq!(
            out["tools"],
            json!([
            {"type": "function", "function": {"name": "weather", "description": "Weather", "parameters": schema}},
            {"type": "function", "function": {"name": "bare", "parameters": {"type": "object", "properties": {}}}}])
        );
    }

    #[test]
    fn a_server_tool_is_refused_by_name() {
        let m = refused(json!({"messages": [user("a")], "tools": [
            {"type": "web_search_20250305", "name": "web_search"}]}));
        assert!(
            m.contains("tools[0]") && m.contains("web_search_20250305"),
            "{m}"
        );
    }

    #[test]
    fn tool_choice_maps_and_disable_parallel_tool_use_turns_parallel_calls_off() {
        for (choice, expected) in [
            (json!({"type": "auto"}), json!("auto")),
            (json!({"type": "any"}), json!("required")),
            (json!({"type": "none"}), json!("none")),
            (
                json!({"type": "tool", "name": "f"}),
                json!({"type": "function", "function": {"name": "f"}}),
            ),
        ] {
            let out = chat(json!({"messages": [user("a")], "tool_choice": choice}));
            assert_eq!(out["tool_choice"], expected);
            assert!(out.get("parallel_tool_calls").is_none());
        }
        let out = chat(json!({"messages": [user("a")],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": true}}));
        assert_eq!(out["parallel_tool_calls"], false);
    }

    #[test]
    fn metadata_user_id_becomes_user() {
        let out = chat(json!({"messages": [user("a")], "metadata": {"user_id": "u-1"}}));
        assert_eq!(out["user"], "u-1");
    }

    #[test]
    fn thinking_budgets_and_adaptive_efforts_become_reasoning_effort() {
        for (thinking, config, effort) in [
            (
                json!({"type": "enabled", "budget_tokens": 1024}),
                json!(null),
                Some("low"),
            ),
            (
                json!({"type": "enabled", "budget_tokens": 2048}),
                json!(null),
                Some("low"),
            ),
            (
                json!({"type": "enabled", "budget_tokens": 8192}),
                json!(null),
                Some("medium"),
            ),
            (
                json!({"type": "enabled", "budget_tokens": 31999}),
                json!(null),
                Some("high"),
            ),
            (
                json!({"type": "adaptive"}),
                json!({"effort": "low"}),
                Some("low"),
            ),
            (
                json!({"type": "adaptive"}),
                json!({"effort": "medium"}),
                Some("medium"),
            ),
            (
                json!({"type": "adaptive"}),
                json!({"effort": "max"}),
                Some("high"),
            ),
            (json!({"type": "disabled"}), json!(null), None),
        ] {
            let out = chat(
                json!({"messages": [user("a")], "thinking": thinking, "output_config": config}),
            );
            assert_eq!(
                out.get("reasoning_effort").and_then(Value::as_str),
                effort,
                "{thinking}"
            );
        }
    }

    #[test]
    fn stream_asks_for_usage() {
        let out = chat(json!({"messages": [user("a")], "stream": true}));
        assert_eq!(out["stream"], true);
        assert_eq!(out["stream_options"], json!({"include_usage": true}));
        assert!(chat(json!({"messages": [user("a")], "stream": false}))
            .get("stream")
            .is_none());
    }

    #[test]
    fn anthropic_only_fields_are_dropped() {
        let out = chat(json!({"model": "claude-x", "messages": [user("a")],
            "context_management": {"edits": []}, "output_config": {"effort": "high"},
            "container": "c", "mcp_servers": [], "service_tier": "auto", "future_field": 1}));
        let keys: Vec<&String> = out.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["messages"]);
    }

    #[test]
    fn a_json_schema_output_format_becomes_response_format() {
        let schema = json!({"type": "object"});
        let out = chat(json!({"messages": [user("a")],
            "output_config": {"format": {"type": "json_schema", "schema": schema}}}));
        assert_eq!(
            out["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}})
        );
    }

    #[test]
    fn malformed_requests_name_the_field() {
        for (body, field) in [
            (json!({}), "`messages`"),
            (json!({"messages": "hi"}), "`messages`"),
            (json!({"messages": [1]}), "`messages[0]`"),
            (
                json!({"messages": [{"content": "x"}]}),
                "`messages[0].role`",
            ),
            (
                json!({"messages": [{"role": "bot", "content": "x"}]}),
                "`messages[0].role`",
            ),
            (
                json!({"messages": [{"role": "user"}]}),
                "`messages[0].content`",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"text": "x"}]}]}),
                "`messages[0].content[0]`",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "document"}]}]}),
                "`messages[0].content[0]`",
            ),
            (
                json!({"messages": [user("a")], "max_tokens": "9"}),
                "`max_tokens`",
            ),
            (
                json!({"messages": [user("a")], "stream": "yes"}),
                "`stream`",
            ),
            (json!({"messages": [user("a")], "system": 5}), "`system`"),
            (
                json!({"messages": [user("a")], "temperature": "hot"}),
                "`temperature`",
            ),
        ] {
            let m = refused(body.clone());
            assert!(m.contains(field), "{body}: {m}");
        }
    }

    fn completion(message: Value, finish: &str) -> Value {
        json!({"id": "chatcmpl-9", "object": "chat.completion", "model": "gpt-x",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37,
                      "prompt_tokens_details": {"cached_tokens": 10}}})
    }

    #[test]
    fn an_answer_becomes_a_message_with_thinking_text_and_tool_use_in_order() {
        let answer = completion(
            json!({"role": "assistant", "content": "Sure.",
            "reasoning_content": "think",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "[1]"}}]}),
            "tool_calls",
        );
        let out = translate_response(&answer, "gpt-active", &[]).unwrap();
        assert_eq!(
            out,
            json!({
            "id": "msg_chatcmpl-9", "type": "message", "role": "assistant", "model": "gpt-active",
            "content": [
                {"type": "thinking", "thinking": "think", "signature": ""},
                {"type": "text", "text": "Sure."},
                {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
                {"type": "tool_use", "id": "call_2", "name": "g", "input": {}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 20, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 10, "output_tokens": 7}})
        );
    }

    #[test]
    fn no_empty_text_block_is_made() {
        let answer = completion(json!({"role": "assistant", "content": ""}), "stop");
        let out = translate_response(&answer, "m", &[]).unwrap();
        assert_eq!(out["content"], json!([]));
        let answer = completion(json!({"role": "assistant", "content": null}), "stop");
        assert_eq!(
            translate_response(&answer, "m", &[]).unwrap()["content"],
            json!([])
        );
    }

    #[test]
    fn finish_reasons_map_to_stop_reasons() {
        for (finish, stop) in [
            ("stop", "end_turn"),
            ("length", "max_tokens"),
            ("tool_calls", "tool_use"),
            ("function_call", "tool_use"),
            ("content_filter", "refusal"),
        ] {
            let answer = completion(json!({"role": "assistant", "content": "x"}), finish);
            assert_eq!(
                translate_response(&answer, "m", &[]).unwrap()["stop_reason"],
                stop
            );
        }
        let answer = completion(json!({"role": "assistant", "content": "the END"}), "stop");
        let out = translate_response(&answer, "m", &["END".into()]).unwrap();
        assert_eq!(out["stop_reason"], "stop_sequence");
        assert_eq!(out["stop_sequence"], "END");
    }

    #[test]
    fn an_answer_without_usage_counts_zero_and_a_non_completion_is_none() {
        let mut answer = completion(json!({"role": "assistant", "content": "x"}), "stop");
        answer.as_object_mut().unwrap().remove("usage");
        let out = translate_response(&answer, "m", &[]).unwrap();
        assert_eq!(out["usage"]["input_tokens"], 0);
        assert_eq!(out["usage"]["output_tokens"], 0);
        assert!(translate_response(&json!({"object": "list"}), "m", &[]).is_none());
    }

    #[test]
    fn upstream_errors_take_anthropics_shape_by_status() {
        let body = json!({"error": {"message": "slow down", "type": "requests", "code": null}});
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (503, "api_error"),
        ] {
            assert_eq!(
                translate_error(status, &body),
                json!({"type": "error", "error": {"type": kind, "message": "slow down"}})
            );
        }
        assert_eq!(
            translate_error(502, &json!("?"))["error"]["message"],
            "upstream answered status 502"
        );
    }

    #[test]
    fn the_token_estimate_counts_words_symbols_messages_tools_and_images() {
        assert_eq!(text_tokens(""), 0);
        assert_eq!(text_tokens("hello"), 2);
        assert_eq!(text_tokens("a b, c"), 4);
        assert_eq!(text_tokens("日本"), 2);
        let chat = json!({"messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(estimate_tokens(chat.as_object().unwrap()), 3 + 4 + 1);
        let chat = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:x"}}, {"type": "text", "text": "hi"}]}],
            "tools": [{"type": "function", "function": {"name": "f"}}]});
        let tools = text_tokens(r#"{"function":{"name":"f"},"type":"function"}"#);
        assert_eq!(
            estimate_tokens(chat.as_object().unwrap()),
            3 + 4 + 1600 + 1 + tools
        );
    }

    // --- the stream ------------------------------------------------------------------------

    fn chunk(delta: Value, finish: Option<&str>) -> String {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-s", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    }

    const USAGE: &str = "data: {\"id\":\"chatcmpl-s\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":5,\"prompt_tokens_details\":{\"cached_tokens\":2}}}\n\n";

    /// The events of a translated stream, as (type, data).
    fn events(bytes: &[u8]) -> Vec<(String, Value)> {
        sse::Parser::new()
            .feed(bytes)
            .unwrap()
            .into_iter()
            .map(|e| {
                let data: Value = serde_json::from_str(&e.data).unwrap();
                assert_eq!(Some(data["type"].as_str().unwrap()), e.event.as_deref());
                (e.event.unwrap(), data)
            })
            .collect()
    }

    fn translate_whole(input: &str) -> (Vec<(String, Value)>, StreamTranslator) {
        let mut t = StreamTranslator::new("gpt-active", vec![]);
        let mut out = t.feed(input.as_bytes());
        out.extend(t.finish());
        (events(&out), t)
    }

    fn types(events: &[(String, Value)]) -> Vec<&str> {
        events.iter().map(|(t, _)| t.as_str()).collect()
    }

    /// The ordering rules every Anthropic client relies on.
    fn assert_well_formed(events: &[(String, Value)]) {
        assert_eq!(events[0].0, "message_start");
        assert_eq!(
            events.iter().filter(|(t, _)| t == "message_start").count(),
            1
        );
        let n = events.len();
        assert_eq!(types(&events[n - 2..]), ["message_delta", "message_stop"]);
        let mut open: Option<u64> = None;
        let mut next = 0;
        for (t, d) in events {
            match t.as_str() {
                "content_block_start" => {
                    assert_eq!(open, None, "a block started while another is open");
                    assert_eq!(d["index"], next);
                    open = Some(next);
                    next += 1;
                }
                "content_block_delta" => assert_eq!(Some(d["index"].as_u64().unwrap()), open),
                "content_block_stop" => {
                    assert_eq!(Some(d["index"].as_u64().unwrap()), open);
                    open = None;
                }
                "message_delta" => assert_eq!(open, None, "message_delta with a block open"),
                _ => {}
            }
        }
    }

    #[test]
    fn a_text_stream_becomes_start_block_deltas_stop_delta_and_message_stop() {
        let input = [
            chunk(json!({"role": "assistant", "content": ""}), None),
            chunk(json!({"content": "Hel"}), None),
            chunk(json!({"content": "lo"}), None),
            chunk(json!({}), Some("stop")),
            USAGE.to_string(),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        let (events, t) = translate_whole(&input);
        assert_well_formed(&events);
        assert_eq!(
            types(&events),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let message = &events[0].1["message"];
        assert_eq!(message["id"], "msg_chatcmpl-s");
        assert_eq!(message["model"], "gpt-active");
        assert_eq!(message["content"], json!([]));
        assert_eq!(
            events[1].1["content_block"],
            json!({"type": "text", "text": ""})
        );
        assert_eq!(
            events[2].1["delta"],
            json!({"type": "text_delta", "text": "Hel"})
        );
        assert_eq!(
            events[5].1["delta"],
            json!({"stop_reason": "end_turn", "stop_sequence": null})
        );
        assert_eq!(
            events[5].1["usage"],
            json!({"input_tokens": 10, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 2, "output_tokens": 5})
        );
        assert_eq!(
            t.usage(),
            Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 5
            })
        );
        assert!(t.is_done() && t.error().is_none());
    }

    #[test]
    fn tool_calls_in_many_pieces_and_several_in_one_answer() {
        let input = [
            chunk(json!({"role": "assistant", "content": "Checking."}), None),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                "function": {"name": "Read", "arguments": ""}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"pa"}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "th\":\"/a\"}"}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                "function": {"name": "Bash", "arguments": "{\"command\":"}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 1, "function": {"arguments": "\"ls\"}"}}]}),
                None,
            ),
            chunk(json!({}), Some("tool_calls")),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        let (events, _) = translate_whole(&input);
        assert_well_formed(&events);
        let starts: Vec<&Value> = events
            .iter()
            .filter(|(t, _)| t == "content_block_start")
            .map(|(_, d)| &d["content_block"])
            .collect();
        assert_eq!(
            starts,
            [
                &json!({"type": "text", "text": ""}),
                &json!({"type": "tool_use", "id": "call_a", "name": "Read", "input": {}}),
                &json!({"type": "tool_use", "id": "call_b", "name": "Bash", "input": {}})
            ]
        );
        let json_of = |index: u64| -> String {
            events
                .iter()
                .filter(|(t, d)| t == "content_block_delta" && d["index"] == index)
                .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
                .collect()
        };
        assert_eq!(json_of(1), "{\"path\":\"/a\"}");
        assert_eq!(json_of(2), "{\"command\":\"ls\"}");
        let delta = &events[events.len() - 2].1;
        assert_eq!(delta["delta"]["stop_reason"], "tool_use");
        // No usage from the upstream: output_tokens is still there, as the SDKs require.
        assert_eq!(delta["usage"], json!({"output_tokens": 0}));
    }

    #[test]
    fn reasoning_becomes_a_thinking_block_closed_before_the_text() {
        let input = [
            chunk(json!({"reasoning_content": "hmm"}), None),
            chunk(json!({"reasoning_content": " ok"}), None),
            chunk(json!({"content": "Answer"}), Some("stop")),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        let (events, _) = translate_whole(&input);
        assert_well_formed(&events);
        assert_eq!(
            events[1].1["content_block"],
            json!({"type": "thinking", "thinking": "", "signature": ""})
        );
        assert_eq!(
            events[2].1["delta"],
            json!({"type": "thinking_delta", "thinking": "hmm"})
        );
        assert_eq!(
            types(&events[4..7]),
            [
                "content_block_stop",
                "content_block_start",
                "content_block_delta"
            ]
        );
        assert_eq!(events[5].1["index"], 1);
    }

    #[test]
    fn the_same_events_come_out_whatever_the_split_of_the_input() {
        let input = [
            chunk(json!({"content": "héllo"}), None),
            chunk(json!({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]}), Some("tool_calls")),
            USAGE.to_string(),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        let (whole, _) = translate_whole(&input);
        for split in 0..input.len() {
            let mut t = StreamTranslator::new("gpt-active", vec![]);
            let (a, b) = input.as_bytes().split_at(split);
            let mut out = t.feed(a);
            out.extend(t.feed(b));
            out.extend(t.finish());
            assert_eq!(events(&out), whole, "split at {split}");
        }
    }

    #[test]
    fn an_empty_text_delta_opens_no_block_and_an_empty_answer_is_still_well_formed() {
        let input = [
            chunk(json!({"role": "assistant", "content": ""}), None),
            chunk(json!({}), Some("stop")),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        let (events, _) = translate_whole(&input);
        assert_eq!(
            types(&events),
            ["message_start", "message_delta", "message_stop"]
        );
    }

    #[test]
    fn the_end_of_the_stream_after_a_finish_reason_ends_the_message() {
        let input = chunk(json!({"content": "x"}), Some("length"));
        let (events, t) = translate_whole(&input);
        assert_well_formed(&events);
        assert_eq!(
            events[events.len() - 2].1["delta"]["stop_reason"],
            "max_tokens"
        );
        assert!(t.error().is_none());
    }

    #[test]
    fn a_stream_cut_before_its_finish_reason_ends_in_an_error_event() {
        let input = chunk(json!({"content": "half"}), None);
        let (events, t) = translate_whole(&input);
        let last = events.last().unwrap();
        assert_eq!(last.0, "error");
        assert_eq!(last.1["error"]["type"], "api_error");
        assert!(!types(&events).contains(&"message_stop"));
        assert!(t.error().unwrap().contains("ended before"));
    }

    #[test]
    fn a_broken_upstream_connection_ends_in_an_error_event() {
        let mut t = StreamTranslator::new("m", vec![]);
        let mut out = t.feed(chunk(json!({"content": "half"}), None).as_bytes());
        out.extend(t.broken("upstream connection failed: connection reset"));
        let events = events(&out);
        assert_eq!(
            events.last().unwrap().1,
            json!({"type": "error", "error": {"type": "api_error",
            "message": "upstream connection failed: connection reset"}})
        );
        assert!(t.is_done());
        assert!(t.feed(b"data: [DONE]\n\n").is_empty());
    }

    #[test]
    fn an_error_chunk_becomes_an_error_event_and_the_stream_ends() {
        let input = [
            chunk(json!({"content": "a"}), None),
            "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n"
                .to_string(),
            chunk(json!({"content": "never"}), None),
        ]
        .concat();
        let (events, t) = translate_whole(&input);
        assert_eq!(events.last().unwrap().1["error"]["message"], "overloaded");
        assert!(!events.iter().any(|(_, d)| d["delta"]["text"] == "never"));
        assert_eq!(t.error(), Some("overloaded"));
    }

    #[test]
    fn a_stream_ending_on_a_stop_sequence_says_so() {
        let mut t = StreamTranslator::new("m", vec!["STOP".into()]);
        let mut out = t.feed(
            [
                chunk(json!({"content": "and ST"}), None),
                chunk(json!({"content": "OP"}), Some("stop")),
                "data: [DONE]\n\n".into(),
            ]
            .concat()
            .as_bytes(),
        );
        out.extend(t.finish());
        let events = events(&out);
        assert_eq!(
            events[events.len() - 2].1["delta"],
            json!({"stop_reason": "stop_sequence", "stop_sequence": "STOP"})
        );
    }
}
