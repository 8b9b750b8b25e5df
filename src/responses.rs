//! The OpenAI Responses API ⇄ chat completions: requests, answers and the sealed reasoning
//! items that carry Claude's signed thinking through a client (RESPONSES.md).
//!
//! Pure: no I/O. The chat completion made here goes on, for an `anthropic` profile, through
//! `anthropic` like any chat completion, so the Anthropic dialect is translated once.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Map, Value};

use crate::anthropic::TranslateError;
use crate::crypto::{hex, random_bytes, Cipher};

/// What a sealed reasoning item's `encrypted_content` starts with, so that one made by
/// OpenAI (or anyone else) is told apart without trying to open it.
const SEALED_PREFIX: &str = "swr1.";
/// Binds sealed thinking to its use: no other blob sealed under the service's key opens here.
const SEALED_AAD: &[u8] = b"switcher-api/responses/reasoning";

/// Tool types that only OpenAI's own servers run; to any other provider they are dropped.
const BUILT_IN_TOOLS: [&str; 8] = [
    "web_search",
    "file_search",
    "code_interpreter",
    "computer_use_preview",
    "image_generation",
    "mcp",
    "local_shell",
    "custom",
];

/// Input items that record a built-in tool's call or result: with the tool gone they mean
/// nothing to another provider (a conversation begun on OpenAI goes on elsewhere).
const BUILT_IN_ITEMS: [&str; 14] = [
    "web_search_call",
    "file_search_call",
    "computer_call",
    "computer_call_output",
    "code_interpreter_call",
    "image_generation_call",
    "local_shell_call",
    "local_shell_call_output",
    "mcp_call",
    "mcp_list_tools",
    "mcp_approval_request",
    "mcp_approval_response",
    "custom_tool_call",
    "custom_tool_call_output",
];

fn fail<T>(message: impl Into<String>) -> Result<T, TranslateError> {
    Err(TranslateError(message.into()))
}

fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// A fresh id with OpenAI's prefix for its kind (`resp_`, `msg_`, `fc_`, `rs_`).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", hex(&random_bytes(16)))
}

/// Seals thinking blocks into a reasoning item's `encrypted_content`.
pub fn seal_thinking(cipher: &Cipher, blocks: &[Value]) -> String {
    let plaintext = serde_json::to_vec(blocks).unwrap_or_default();
    format!(
        "{SEALED_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(cipher.seal(&plaintext, SEALED_AAD))
    )
}

/// The thinking blocks of an `encrypted_content` this service sealed; `None` for any other.
pub fn open_thinking(cipher: &Cipher, sealed: &str) -> Option<Vec<Value>> {
    let blob = URL_SAFE_NO_PAD
        .decode(sealed.strip_prefix(SEALED_PREFIX)?)
        .ok()?;
    let plaintext = cipher.open(&blob, SEALED_AAD).ok()?;
    serde_json::from_slice(&plaintext).ok()
}

/// A Responses request as a chat completion, with what had to be left out.
#[derive(Debug)]
pub struct Translated {
    pub chat: Map<String, Value>,
    /// Built-in tool types dropped, in the order first met.
    pub dropped_tools: Vec<String>,
    /// Flattened namespace functions: name → namespace, to name it on the calls that come back.
    pub namespaces: Map<String, Value>,
}

/// `previous_response_id` asks for a conversation the service does not keep.
pub fn check_stateless(req: &Map<String, Value>) -> Result<(), TranslateError> {
    if present(req, "previous_response_id").is_some() {
        return fail(
            "field `previous_response_id` is not supported: this service keeps no \
             conversation; send the whole conversation in `input` (with `store: false`)",
        );
    }
    Ok(())
}

/// Responses request → chat completion request (RESPONSES.md, Request). `thinking`: the
/// profile is `anthropic`, so this service's sealed reasoning goes back as `thinking_blocks`.
pub fn translate_request(
    req: &Map<String, Value>,
    thinking: bool,
    cipher: &Cipher,
) -> Result<Translated, TranslateError> {
    check_stateless(req)?;
    let mut chat = Map::new();
    let mut messages = Vec::new();
    if let Some(instructions) = present(req, "instructions") {
        let Some(text) = instructions.as_str() else {
            return fail("field `instructions` must be a string");
        };
        messages.push(json!({"role": "system", "content": text}));
    }
    match present(req, "input") {
        None => return fail("field `input` is required"),
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => input_items(items, thinking, cipher, &mut messages)?,
        Some(_) => return fail("field `input` must be a string or a list of items"),
    }
    chat.insert("messages".into(), Value::Array(messages));

    let mut dropped_tools = Vec::new();
    let mut namespaces = Map::new();
    let mut tools = Vec::new();
    match present(req, "tools") {
        None => {}
        Some(Value::Array(list)) => {
            for (i, tool) in list.iter().enumerate() {
                translate_tool(
                    &format!("tools[{i}]"),
                    tool,
                    None,
                    &mut tools,
                    &mut dropped_tools,
                    &mut namespaces,
                )?;
            }
        }
        Some(_) => return fail("field `tools` must be a list"),
    }
    let mut names = std::collections::HashSet::new();
    for tool in &tools {
        let name = tool["function"]["name"].as_str().unwrap_or_default();
        if !names.insert(name.to_string()) {
            return fail(format!(
                "field `tools`: the function name `{name}` is used twice (namespaces are \
                 flattened, so names must be unique across them)"
            ));
        }
    }
    let has_tools = !tools.is_empty();
    if has_tools {
        chat.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = present(req, "tool_choice") {
            chat.insert("tool_choice".into(), tool_choice(choice)?);
        }
        if let Some(parallel) = present(req, "parallel_tool_calls") {
            chat.insert("parallel_tool_calls".into(), parallel.clone());
        }
    }
    for field in ["temperature", "top_p", "user", "metadata"] {
        if let Some(v) = present(req, field) {
            chat.insert(field.into(), v.clone());
        }
    }
    if let Some(max) = present(req, "max_output_tokens") {
        if max.as_u64().is_none() {
            return fail("field `max_output_tokens` must be a whole number");
        }
        chat.insert("max_tokens".into(), max.clone());
    }
    if let Some(effort) = present(req, "reasoning").and_then(|r| present_in(r, "effort")) {
        chat.insert("reasoning_effort".into(), effort.clone());
    }
    if let Some(format) = present(req, "text").and_then(|t| present_in(t, "format")) {
        if let Some(format) = response_format(format)? {
            chat.insert("response_format".into(), format);
        }
    }
    match present(req, "stream") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            chat.insert("stream".into(), Value::Bool(true));
            chat.insert("stream_options".into(), json!({"include_usage": true}));
        }
        Some(_) => return fail("field `stream` must be true or false"),
    }
    Ok(Translated {
        chat,
        dropped_tools,
        namespaces,
    })
}

fn present_in<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|v| !v.is_null())
}

fn input_items(
    items: &[Value],
    thinking: bool,
    cipher: &Cipher,
    out: &mut Vec<Value>,
) -> Result<(), TranslateError> {
    // Thinking from a reasoning item, waiting for the assistant message it belongs to.
    let mut pending: Vec<Value> = Vec::new();
    // Whether the last message is an assistant one that a function call may join.
    let mut open_assistant = false;
    for (i, item) in items.iter().enumerate() {
        let field = format!("input[{i}]");
        let Some(obj) = item.as_object() else {
            return fail(format!("field `{field}` must be an object"));
        };
        let kind = obj.get("type").and_then(Value::as_str);
        // An item with a role and no type is a message (the SDKs' "easy" input form).
        let kind = kind.or_else(|| obj.get("role").map(|_| "message"));
        match kind {
            Some("message") => {
                let role = match obj.get("role").and_then(Value::as_str) {
                    Some(r @ ("system" | "developer" | "user" | "assistant")) => r,
                    _ => {
                        return fail(format!(
                            "field `{field}.role` must be system, developer, user or assistant"
                        ))
                    }
                };
                let content = message_content(&field, obj.get("content"))?;
                let mut message = json!({"role": role, "content": content});
                if role == "assistant" {
                    if !pending.is_empty() {
                        message["thinking_blocks"] = Value::Array(std::mem::take(&mut pending));
                    }
                    open_assistant = true;
                } else {
                    open_assistant = false;
                }
                out.push(message);
            }
            Some("function_call") => {
                let text = |name: &str| match obj.get(name) {
                    Some(Value::String(s)) => Ok(s.clone()),
                    _ => fail(format!("field `{field}.{name}` must be a string")),
                };
                let call = json!({
                    "id": text("call_id")?,
                    "type": "function",
                    "function": {"name": text("name")?, "arguments": text("arguments")?},
                });
                if !open_assistant {
                    out.push(json!({"role": "assistant", "content": null}));
                    open_assistant = true;
                }
                let message = out
                    .last_mut()
                    .expect("an assistant message was just pushed");
                if !pending.is_empty() {
                    let blocks = message
                        .as_object_mut()
                        .expect("messages are objects")
                        .entry("thinking_blocks")
                        .or_insert_with(|| json!([]));
                    if let Some(blocks) = blocks.as_array_mut() {
                        blocks.append(&mut pending);
                    }
                }
                match message.get_mut("tool_calls").and_then(Value::as_array_mut) {
                    Some(calls) => calls.push(call),
                    None => message["tool_calls"] = json!([call]),
                }
            }
            Some("function_call_output") => {
                let Some(call_id) = obj.get("call_id").and_then(Value::as_str) else {
                    return fail(format!("field `{field}.call_id` must be a string"));
                };
                let output = match obj.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join(""),
                    _ => {
                        return fail(format!(
                            "field `{field}.output` must be a string or a list of parts"
                        ))
                    }
                };
                out.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
                open_assistant = false;
            }
            Some("reasoning") => {
                let sealed = obj.get("encrypted_content").and_then(Value::as_str);
                if let Some(blocks) = sealed.and_then(|s| open_thinking(cipher, s)) {
                    if thinking {
                        pending.extend(blocks);
                    }
                }
            }
            Some("item_reference") => {
                return fail(format!(
                    "field `{field}`: item_reference is not supported: this service keeps \
                     no items; send the item itself"
                ))
            }
            Some(kind) if BUILT_IN_ITEMS.contains(&kind) => {}
            Some(kind) => {
                return fail(format!(
                    "field `{field}`: item type `{kind}` is not supported"
                ))
            }
            None => return fail(format!("field `{field}.type` is required")),
        }
    }
    Ok(())
}

/// A message's content in chat form: one text part becomes a string.
fn message_content(field: &str, content: Option<&Value>) -> Result<Value, TranslateError> {
    let parts = match content {
        Some(Value::String(s)) => return Ok(json!(s)),
        Some(Value::Array(parts)) => parts,
        None | Some(Value::Null) => return Ok(json!("")),
        Some(_) => {
            return fail(format!(
                "field `{field}.content` must be a string or a list"
            ))
        }
    };
    let mut out = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
        let text_of = |name: &str| match part.get(name) {
            Some(Value::String(s)) => Ok(json!({"type": "text", "text": s})),
            _ => fail(format!(
                "field `{field}.content[{j}].{name}` must be a string"
            )),
        };
        match kind {
            "input_text" | "output_text" => out.push(text_of("text")?),
            "refusal" => out.push(text_of("refusal")?),
            "input_image" => {
                let Some(url) = part.get("image_url").and_then(Value::as_str) else {
                    return fail(format!(
                        "field `{field}.content[{j}]`: only images given by `image_url` are supported"
                    ));
                };
                let mut image = json!({"url": url});
                if let Some(detail) = part.get("detail").filter(|d| d.is_string()) {
                    image["detail"] = detail.clone();
                }
                out.push(json!({"type": "image_url", "image_url": image}));
            }
            other => {
                return fail(format!(
                    "field `{field}.content[{j}]`: part type `{other}` is not supported"
                ))
            }
        }
    }
    if out.len() == 1 && out[0]["type"] == "text" {
        return Ok(out[0]["text"].clone());
    }
    Ok(Value::Array(out))
}

fn translate_tool(
    field: &str,
    tool: &Value,
    namespace: Option<&str>,
    tools: &mut Vec<Value>,
    dropped: &mut Vec<String>,
    namespaces: &mut Map<String, Value>,
) -> Result<(), TranslateError> {
    let Some(kind) = tool.get("type").and_then(Value::as_str) else {
        return fail(format!("field `{field}.type` must be a string"));
    };
    match kind {
        "function" => {
            let Some(name) = tool.get("name").and_then(Value::as_str) else {
                return fail(format!("field `{field}.name` must be a string"));
            };
            let mut function = Map::new();
            function.insert("name".into(), json!(name));
            for key in ["description", "parameters", "strict"] {
                if let Some(v) = tool.get(key).filter(|v| !v.is_null()) {
                    function.insert(key.into(), v.clone());
                }
            }
            if let Some(ns) = namespace {
                namespaces.insert(name.into(), json!(ns));
            }
            tools.push(json!({"type": "function", "function": function}));
        }
        "namespace" if namespace.is_none() => {
            let ns = tool.get("name").and_then(Value::as_str).unwrap_or_default();
            let Some(list) = tool.get("tools").and_then(Value::as_array) else {
                return fail(format!("field `{field}.tools` must be a list"));
            };
            for (i, inner) in list.iter().enumerate() {
                translate_tool(
                    &format!("{field}.tools[{i}]"),
                    inner,
                    Some(ns),
                    tools,
                    dropped,
                    namespaces,
                )?;
            }
        }
        // Everything that is not a function runs on OpenAI's side only (BUILT_IN_TOOLS and
        // newer kinds alike): the agent still works without it.
        other => {
            if !dropped.iter().any(|d| d == other) {
                dropped.push(other.to_string());
            }
        }
    }
    Ok(())
}

fn tool_choice(choice: &Value) -> Result<Value, TranslateError> {
    match choice {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => {
            Ok(choice.clone())
        }
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            match o.get("name").and_then(Value::as_str) {
                Some(name) => Ok(json!({"type": "function", "function": {"name": name}})),
                None => fail("field `tool_choice.name` must be a string"),
            }
        }
        // A built-in tool was chosen, but it is dropped: let the model choose.
        Value::Object(o)
            if o.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| BUILT_IN_TOOLS.iter().any(|b| t.starts_with(b))) =>
        {
            Ok(json!("auto"))
        }
        _ => fail(
            "field `tool_choice` must be auto, none, required or {\"type\":\"function\",\"name\"}",
        ),
    }
}

fn response_format(format: &Value) -> Result<Option<Value>, TranslateError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = Map::new();
            for key in ["name", "schema", "strict", "description"] {
                if let Some(v) = format.get(key).filter(|v| !v.is_null()) {
                    schema.insert(key.into(), v.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => fail("field `text.format.type` must be text, json_object or json_schema"),
    }
}

/// What the `response` echoes of the request, so that strict clients parse it.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    pub fields: Map<String, Value>,
    /// name → namespace of the flattened namespace functions.
    pub namespaces: Map<String, Value>,
}

impl Echo {
    pub fn of(req: &Map<String, Value>, namespaces: Map<String, Value>) -> Echo {
        let mut fields = Map::new();
        let default =
            |key: &str, v: Value| req.get(key).filter(|v| !v.is_null()).cloned().unwrap_or(v);
        fields.insert(
            "parallel_tool_calls".into(),
            default("parallel_tool_calls", json!(true)),
        );
        fields.insert("tool_choice".into(), default("tool_choice", json!("auto")));
        fields.insert("tools".into(), default("tools", json!([])));
        for key in [
            "instructions",
            "max_output_tokens",
            "metadata",
            "temperature",
            "top_p",
            "reasoning",
            "text",
            "user",
        ] {
            fields.insert(key.into(), default(key, Value::Null));
        }
        fields.insert("store".into(), json!(false));
        fields.insert("background".into(), json!(false));
        fields.insert("previous_response_id".into(), Value::Null);
        Echo { fields, namespaces }
    }

    /// The `function_call` item of a call, named in its namespace when it was flattened.
    pub fn function_call(
        &self,
        id: &str,
        call_id: &str,
        name: &str,
        arguments: &str,
        status: &str,
    ) -> Value {
        let mut item = json!({
            "id": id, "type": "function_call", "call_id": call_id, "name": name,
            "arguments": arguments, "status": status,
        });
        if let Some(ns) = self.namespaces.get(name) {
            item["namespace"] = ns.clone();
        }
        item
    }
}

/// A `response` object (`status` `in_progress`, `completed`, `incomplete`, `failed`).
pub fn response_object(
    id: &str,
    created_at: u64,
    model: &str,
    echo: &Echo,
    status: &str,
    output: Vec<Value>,
    usage: Option<Value>,
) -> Value {
    let mut r = json!({
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": null,
        "incomplete_details": null,
        "model": model,
        "output": output,
        "usage": usage,
    });
    let obj = r.as_object_mut().expect("an object");
    for (k, v) in &echo.fields {
        obj.insert(k.clone(), v.clone());
    }
    r
}

/// A chat `finish_reason` as a response's `status` and `incomplete_details`.
pub fn status_of(finish_reason: Option<&str>) -> (&'static str, Value) {
    match finish_reason {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// A chat `usage` as a response's.
pub fn usage_of(usage: &Value) -> Value {
    let n = |v: Option<&Value>| v.and_then(Value::as_i64).unwrap_or(0);
    let input = n(usage.get("prompt_tokens"));
    let output = n(usage.get("completion_tokens"));
    json!({
        "input_tokens": input,
        "input_tokens_details": {
            "cached_tokens": n(usage.pointer("/prompt_tokens_details/cached_tokens")),
            "cache_write_tokens": 0,
        },
        "output_tokens": output,
        "output_tokens_details": {
            "reasoning_tokens": n(usage.pointer("/completion_tokens_details/reasoning_tokens")),
        },
        "total_tokens": input.saturating_add(output),
    })
}

/// The reasoning item of thinking text and (from Anthropic) whole thinking blocks.
pub fn reasoning_item(id: &str, text: &str, blocks: &[Value], cipher: &Cipher) -> Value {
    let summary = if text.is_empty() {
        json!([])
    } else {
        json!([{"type": "summary_text", "text": text}])
    };
    let sealed = if blocks.is_empty() {
        Value::Null
    } else {
        json!(seal_thinking(cipher, blocks))
    };
    json!({"id": id, "type": "reasoning", "summary": summary, "encrypted_content": sealed})
}

/// The assistant message item of an answer's text.
pub fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "id": id, "type": "message", "role": "assistant", "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    })
}

/// A chat completion → a `response` (RESPONSES.md, Answer). `None` when it is not one.
pub fn translate_response(
    chat: &Value,
    model: &str,
    echo: &Echo,
    created_at: u64,
    cipher: &Cipher,
) -> Option<Value> {
    let choice = chat.get("choices")?.as_array()?.first()?;
    let message = choice.get("message")?;
    let mut output = Vec::new();
    let reasoning = message
        .get("reasoning_content")
        .and_then(Value::as_str)
        .unwrap_or("");
    let blocks = message
        .get("thinking_blocks")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !reasoning.is_empty() || !blocks.is_empty() {
        output.push(reasoning_item(&new_id("rs_"), reasoning, &blocks, cipher));
    }
    if let Some(text) = message
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        output.push(message_item(&new_id("msg_"), text, "completed"));
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let s = |p: &str| call.pointer(p).and_then(Value::as_str).unwrap_or_default();
        output.push(echo.function_call(
            &new_id("fc_"),
            s("/id"),
            s("/function/name"),
            s("/function/arguments"),
            "completed",
        ));
    }
    let (status, details) = status_of(choice.get("finish_reason").and_then(Value::as_str));
    let usage = chat.get("usage").filter(|u| u.is_object()).map(usage_of);
    let mut response = response_object(
        &new_id("resp_"),
        created_at,
        model,
        echo,
        status,
        output,
        usage,
    );
    response["incomplete_details"] = details;
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> Cipher {
        Cipher::new(&[7u8; 32])
    }

    fn chat_of(req: Value) -> Map<String, Value> {
        translate_request(req.as_object().unwrap(), true, &cipher())
            .unwrap()
            .chat
    }

    fn err_of(req: Value) -> String {
        translate_request(req.as_object().unwrap(), true, &cipher())
            .unwrap_err()
            .0
    }

    #[test]
    fn instructions_become_a_first_system_message() {
        let chat = chat_of(json!({"instructions": "be brief", "input": "hi"}));
        assert_eq!(
            chat["messages"],
            json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
        );
    }

    #[test]
    fn a_string_input_is_one_user_message() {
        assert_eq!(
            chat_of(json!({"input": "hi"}))["messages"],
            json!([{"role": "user", "content": "hi"}])
        );
    }

    #[test]
    fn message_items_keep_their_role_and_parts_become_text_or_images() {
        let chat = chat_of(json!({"input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "rules"}]},
            {"role": "system", "content": "sys"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": "https://x/y.png", "detail": "auto"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "seen"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
        ]}));
        assert_eq!(
            chat["messages"],
            json!([
                {"role": "developer", "content": "rules"},
                {"role": "system", "content": "sys"},
                {"role": "user", "content": [{"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "auto"}}]},
                {"role": "assistant", "content": "seen"},
                {"role": "assistant", "content": "no"},
            ])
        );
    }

    #[test]
    fn function_calls_join_one_assistant_message_with_the_text_before_them() {
        let chat = chat_of(json!({"input": [
            {"role": "user", "content": "go"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "running"}]},
            {"type": "function_call", "call_id": "c1", "name": "a", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "b", "arguments": "{\"x\":1}"},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "tw"}, {"type": "input_text", "text": "o"}]},
            {"type": "function_call", "call_id": "c3", "name": "a", "arguments": "{}"},
        ]}));
        assert_eq!(
            chat["messages"],
            json!([
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": "running", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "a", "arguments": "{}"}},
                    {"id": "c2", "type": "function", "function": {"name": "b", "arguments": "{\"x\":1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "one"},
                {"role": "tool", "tool_call_id": "c2", "content": "two"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c3", "type": "function", "function": {"name": "a", "arguments": "{}"}}]},
            ])
        );
    }

    #[test]
    fn sealed_reasoning_becomes_thinking_blocks_for_anthropic_only() {
        let blocks = vec![json!({"type": "thinking", "thinking": "hmm", "signature": "sig=="})];
        let sealed = seal_thinking(&cipher(), &blocks);
        let input = json!({"input": [
            {"role": "user", "content": "go"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": sealed},
            {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "gAAAA-openai-made"},
            {"type": "function_call", "call_id": "c1", "name": "a", "arguments": "{}"},
        ]});
        let chat = chat_of(input.clone());
        assert_eq!(chat["messages"][1]["thinking_blocks"], json!(blocks));
        let other = translate_request(input.as_object().unwrap(), false, &cipher()).unwrap();
        assert!(other.chat["messages"][1].get("thinking_blocks").is_none());
        // Sealed under another key: not ours, dropped.
        let foreign =
            translate_request(input.as_object().unwrap(), true, &Cipher::new(&[8u8; 32])).unwrap();
        assert!(foreign.chat["messages"][1].get("thinking_blocks").is_none());
    }

    #[test]
    fn function_tools_take_the_chat_form_and_namespaces_are_flattened() {
        let t = translate_request(
            json!({"input": "x", "tools": [
                {"type": "function", "name": "exec_command", "description": "run", "strict": false,
                 "parameters": {"type": "object"}},
                {"type": "namespace", "name": "ns", "description": "d", "tools": [
                    {"type": "function", "name": "inner", "parameters": {"type": "object"}}]},
            ]})
            .as_object()
            .unwrap(),
            false,
            &cipher(),
        )
        .unwrap();
        assert_eq!(
            t.chat["tools"],
            json!([
                {"type": "function", "function": {"name": "exec_command", "description": "run",
                  "strict": false, "parameters": {"type": "object"}}},
                {"type": "function", "function": {"name": "inner", "parameters": {"type": "object"}}},
            ])
        );
        assert_eq!(t.namespaces["inner"], "ns");
        let e = err_of(json!({"input": "x", "tools": [
            {"type": "function", "name": "a"},
            {"type": "namespace", "name": "ns", "tools": [{"type": "function", "name": "a"}]}]}));
        assert!(e.contains("`a`"), "{e}");
    }

    #[test]
    fn built_in_tools_are_dropped_and_named() {
        let t = translate_request(
            json!({"input": "x", "tool_choice": "auto", "parallel_tool_calls": true, "tools": [
                {"type": "web_search", "external_web_access": false},
                {"type": "function", "name": "f"},
                {"type": "custom", "name": "apply_patch"},
                {"type": "web_search"}]})
            .as_object()
            .unwrap(),
            false,
            &cipher(),
        )
        .unwrap();
        assert_eq!(t.dropped_tools, vec!["web_search", "custom"]);
        assert_eq!(t.chat["tools"].as_array().unwrap().len(), 1);
        // With no tool left, neither tool_choice nor parallel_tool_calls is sent.
        let chat = chat_of(
            json!({"input": "x", "tool_choice": "auto", "parallel_tool_calls": true,
                                  "tools": [{"type": "web_search"}]}),
        );
        assert!(!chat.contains_key("tools") && !chat.contains_key("tool_choice"));
        assert!(!chat.contains_key("parallel_tool_calls"));
    }

    #[test]
    fn tool_choice_takes_the_chat_form() {
        let tools = json!([{"type": "function", "name": "f"}]);
        for (given, want) in [
            (json!("auto"), json!("auto")),
            (json!("none"), json!("none")),
            (json!("required"), json!("required")),
            (
                json!({"type": "function", "name": "f"}),
                json!({"type": "function", "function": {"name": "f"}}),
            ),
        ] {
            let chat = chat_of(json!({"input": "x", "tools": tools, "tool_choice": given}));
            assert_eq!(chat["tool_choice"], want);
        }
        assert!(
            err_of(json!({"input": "x", "tools": tools, "tool_choice": "sometimes"}))
                .contains("tool_choice")
        );
    }

    #[test]
    fn sampling_and_limits_carry_over() {
        let chat = chat_of(
            json!({"input": "x", "tools": [{"type": "function", "name": "f"}],
            "parallel_tool_calls": false, "temperature": 0.5, "top_p": 0.9, "user": "u",
            "metadata": {"k": "v"}, "max_output_tokens": 77, "reasoning": {"effort": "high", "summary": "auto"},
            "text": {"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}, "strict": true}},
            "stream": true, "include": ["reasoning.encrypted_content"], "prompt_cache_key": "k",
            "client_metadata": {}, "store": true, "truncation": "auto", "service_tier": "auto"}),
        );
        assert_eq!(chat["parallel_tool_calls"], false);
        assert_eq!(chat["temperature"], 0.5);
        assert_eq!(chat["top_p"], 0.9);
        assert_eq!(chat["user"], "u");
        assert_eq!(chat["metadata"], json!({"k": "v"}));
        assert_eq!(chat["max_tokens"], 77);
        assert_eq!(chat["reasoning_effort"], "high");
        assert_eq!(
            chat["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}, "strict": true}})
        );
        assert_eq!(chat["stream"], true);
        assert_eq!(chat["stream_options"], json!({"include_usage": true}));
        for gone in [
            "include",
            "prompt_cache_key",
            "client_metadata",
            "store",
            "truncation",
            "service_tier",
            "input",
        ] {
            assert!(!chat.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn previous_response_id_and_bad_input_are_refused_naming_the_field() {
        assert!(
            err_of(json!({"input": "x", "previous_response_id": "resp_1"}))
                .contains("previous_response_id")
        );
        assert!(err_of(json!({})).contains("`input`"));
        assert!(err_of(json!({"input": 5})).contains("`input`"));
        assert!(
            err_of(json!({"input": [{"type": "item_reference", "id": "x"}]})).contains("input[0]")
        );
        assert!(
            err_of(json!({"input": [{"type": "message", "role": "tool", "content": "x"}]}))
                .contains("input[0].role")
        );
        assert!(
            err_of(json!({"input": [{"type": "function_call", "name": "a"}]}))
                .contains("input[0].call_id")
        );
        assert!(
            err_of(json!({"input": "x", "max_output_tokens": "9"})).contains("max_output_tokens")
        );
        // Items of built-in calls mean nothing elsewhere: skipped, not refused.
        let chat = chat_of(
            json!({"input": [{"type": "web_search_call", "id": "w"}, {"role": "user", "content": "x"}]}),
        );
        assert_eq!(chat["messages"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn an_answer_becomes_reasoning_message_and_function_call_items() {
        let blocks = json!([{"type": "thinking", "thinking": "hmm", "signature": "sig=="}]);
        let chat = json!({"id": "x", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "ok", "reasoning_content": "hmm", "thinking_blocks": blocks,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "inner", "arguments": "{\"a\":1}"}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 3}}});
        let mut ns = Map::new();
        ns.insert("inner".into(), json!("ns"));
        let req = json!({"tools": [{"type": "function", "name": "inner"}], "tool_choice": "auto"});
        let echo = Echo::of(req.as_object().unwrap(), ns);
        let r = translate_response(&chat, "m", &echo, 5, &cipher()).unwrap();
        assert_eq!(r["object"], "response");
        assert_eq!(r["status"], "completed");
        assert_eq!(r["model"], "m");
        assert_eq!(r["tools"], req["tools"]);
        assert_eq!(r["tool_choice"], "auto");
        assert_eq!(r["parallel_tool_calls"], true);
        let out = r["output"].as_array().unwrap();
        assert_eq!(out[0]["type"], "reasoning");
        assert_eq!(
            out[0]["summary"],
            json!([{"type": "summary_text", "text": "hmm"}])
        );
        let sealed = out[0]["encrypted_content"].as_str().unwrap();
        assert_eq!(
            open_thinking(&cipher(), sealed).unwrap(),
            blocks.as_array().unwrap().clone()
        );
        assert!(!sealed.contains("sig=="));
        assert_eq!(out[1]["type"], "message");
        assert_eq!(
            out[1]["content"],
            json!([{"type": "output_text", "text": "ok", "annotations": []}])
        );
        assert_eq!(out[2]["type"], "function_call");
        assert_eq!(out[2]["call_id"], "call_1");
        assert_eq!(out[2]["name"], "inner");
        assert_eq!(out[2]["namespace"], "ns");
        assert_eq!(out[2]["arguments"], "{\"a\":1}");
        assert!(out[2]["id"].as_str().unwrap().starts_with("fc_"));
        assert_eq!(
            r["usage"],
            json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 3, "cache_write_tokens": 0},
                   "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15})
        );
    }

    #[test]
    fn length_and_content_filter_make_an_incomplete_response() {
        let echo = Echo::default();
        for (reason, why) in [
            ("length", "max_output_tokens"),
            ("content_filter", "content_filter"),
        ] {
            let chat =
                json!({"choices": [{"finish_reason": reason, "message": {"content": "cut"}}]});
            let r = translate_response(&chat, "m", &echo, 5, &cipher()).unwrap();
            assert_eq!(r["status"], "incomplete");
            assert_eq!(r["incomplete_details"], json!({"reason": why}));
        }
        assert!(translate_response(&json!({"nope": 1}), "m", &echo, 5, &cipher()).is_none());
    }
}
