//! Translation between OpenAI chat completions and the Anthropic Messages API (ANTHROPIC.md),
//! JSON in and JSON out.
//!
//! Everything here is pure so that every rule of the contract can be unit-tested without a
//! socket; the proxy does the I/O and the stream translator reuses `finish_reason` and
//! `usage_from_anthropic`.

use std::collections::HashSet;

use serde_json::{json, Map, Value};

use crate::input::present;
use crate::usage::Usage;

/// A request that cannot be translated: a 400 whose client-safe message names the field or
/// the message at fault.
#[derive(Debug, Clone, PartialEq)]
pub struct TranslateError(pub String);

impl std::fmt::Display for TranslateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TranslateError {}

/// The `anthropic-version` the service speaks to Anthropic when it writes the request itself
/// (translated requests, model sync); a pass-through forwards the client's own.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// `max_tokens` is required upstream; this is what is sent when neither the client nor the
/// model gives one.
const DEFAULT_MAX_TOKENS: i64 = 4096;

/// Upstream error messages are passed to the client, but never at any length.
const MAX_ERROR_MESSAGE_CHARS: usize = 500;

fn fail<T>(message: impl Into<String>) -> Result<T, TranslateError> {
    Err(TranslateError(message.into()))
}

/// OpenAI chat.completions request body -> Anthropic Messages request body.
/// `model` is the active model name to put in the request (it also decides how thinking is
/// asked for, see [`thinking_style`]); `model_max_tokens` is the model's configured
/// `max_tokens` (default and cap). The request's own `model` is ignored, and its
/// `drop_params` fields are expected to be gone already. `stream: true` is copied (the stream
/// itself is translated in `anthropic_stream`); `stream_options` are not sent upstream.
pub fn translate_request(
    openai: &Value,
    model: &str,
    model_max_tokens: Option<i64>,
) -> Result<Value, TranslateError> {
    let Some(req) = openai.as_object() else {
        return fail("the request body must be a JSON object");
    };
    reject_unsupported(req)?;

    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    let (system, messages) = translate_messages(req.get("messages"))?;
    if messages.is_empty() {
        // Anthropic refuses an empty conversation; say so in the agent's terms.
        return fail("`messages` must hold at least one user or assistant message with content");
    }
    if let Some(system) = system {
        out.insert("system".into(), system);
    }
    out.insert("messages".into(), Value::Array(messages));
    let max_tokens = max_tokens(req, model_max_tokens)?;
    // Sampling is checked whether or not it is sent: a bad value is a bad request either way.
    let mut sampling = Map::new();
    translate_sampling(req, &mut sampling)?;
    translate_stop(req, &mut out)?;
    translate_tools(req, &mut out)?;
    let mut output_config = Map::new();
    if let Some(format) = output_format(req)? {
        output_config.insert("format".into(), format);
    }
    let reasoning = reasoning_effort(req)?;
    let thinking = reasoning.and_then(|effort| {
        thinking_for(
            effort,
            thinking_style(model),
            max_tokens,
            model_max_tokens,
            out.get("tool_choice"),
        )
    });
    match thinking {
        Some(thinking) => {
            out.insert("thinking".into(), thinking.thinking);
            if let Some(effort) = thinking.effort {
                output_config.insert("effort".into(), json!(effort));
            }
            out.insert("max_tokens".into(), json!(thinking.max_tokens));
            // Anthropic refuses temperature, top_p and top_k with thinking on.
        }
        None => {
            out.insert("max_tokens".into(), json!(max_tokens));
            out.extend(sampling);
        }
    }
    if !output_config.is_empty() {
        out.insert("output_config".into(), Value::Object(output_config));
    }
    if let Some(user) = present(req, "user") {
        let Some(user) = user.as_str() else {
            return fail("`user` must be a string");
        };
        out.insert("metadata".into(), json!({ "user_id": user }));
    }
    if req.get("stream") == Some(&Value::Bool(true)) {
        out.insert("stream".into(), Value::Bool(true));
    }
    Ok(Value::Object(out))
}

/// Fields whose meaning Anthropic cannot honour: silently dropping them would hand the client
/// an answer that is not what it asked for.
fn reject_unsupported(req: &Map<String, Value>) -> Result<(), TranslateError> {
    if let Some(n) = present(req, "n") {
        match n.as_u64() {
            Some(1) => {}
            Some(k) if k > 1 => return fail("`n` > 1 is not supported for Anthropic models"),
            _ => return fail("`n` must be a positive integer"),
        }
    }
    if let Some(logprobs) = present(req, "logprobs") {
        if logprobs != &Value::Bool(false) {
            return fail("`logprobs` is not supported for Anthropic models");
        }
    }
    Ok(())
}

/// `response_format` -> Anthropic's structured outputs (`output_config.format`). `text` and
/// `json_object` have no Anthropic counterpart and ask for nothing a prompt does not already.
fn output_format(req: &Map<String, Value>) -> Result<Option<Value>, TranslateError> {
    let Some(format) = present(req, "response_format") else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") | Some("json_object") => Ok(None),
        Some("json_schema") => match format.get("json_schema").and_then(|j| j.get("schema")) {
            Some(schema @ Value::Object(_)) => {
                Ok(Some(json!({ "type": "json_schema", "schema": schema })))
            }
            _ => fail("`response_format.json_schema.schema` must be an object"),
        },
        Some(other) => fail(format!(
            "`response_format` of type {other} is not supported for Anthropic models"
        )),
        None => fail("`response_format` must be an object with a `type`"),
    }
}

/// How a Claude model takes `thinking`. Decided from the model's name alone, by
/// [`thinking_style`]: the one place that knows which models are which (README, "Reasoning").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThinkingStyle {
    /// Claude 4.6 and later: `thinking: {type: adaptive}` with `output_config.effort`
    /// (the budget form is refused from 4.7 on and deprecated on 4.6).
    Adaptive,
    /// Claude 4.5 and earlier: only `thinking: {type: enabled, budget_tokens}`.
    Budget,
}

/// The rule: the version in the model's name, the first one- or two-digit number after
/// `claude` (`claude-opus-4-7` -> 4.7, `claude-3-7-sonnet-latest` -> 3.7, `claude-opus-5` -> 5,
/// `claude-opus-4-20250514` -> 4: a date is not a minor version), separators `-`, `.`, `@`, `:`,
/// `/` alike, case ignored. 4.6 and above take adaptive thinking, below take a budget. A name
/// without a version is taken for a newer model than this rule knows: adaptive.
pub fn thinking_style(model: &str) -> ThinkingStyle {
    match claude_version(model) {
        Some(version) if version < (4, 6) => ThinkingStyle::Budget,
        _ => ThinkingStyle::Adaptive,
    }
}

fn claude_version(model: &str) -> Option<(u32, u32)> {
    let lower = model.to_ascii_lowercase();
    let tokens: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .collect();
    let after_claude = tokens
        .iter()
        .position(|t| *t == "claude")
        .map_or(0, |p| p + 1);
    let tokens = &tokens[after_claude..];
    let short_number =
        |t: &&str| (1..=2).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit());
    let at = tokens.iter().position(short_number)?;
    let major = tokens[at].parse().ok()?;
    let minor = tokens
        .get(at + 1)
        .filter(|t| short_number(t))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    Some((major, minor))
}

/// OpenAI's `reasoning_effort` levels, as an index into the tables of [`thinking_for`];
/// `none` (and no field) asks for no thinking.
fn reasoning_effort(req: &Map<String, Value>) -> Result<Option<usize>, TranslateError> {
    let Some(effort) = present(req, "reasoning_effort") else {
        return Ok(None);
    };
    let Some(effort) = effort.as_str() else {
        return fail("`reasoning_effort` must be a string");
    };
    match effort {
        "none" => Ok(None),
        "minimal" => Ok(Some(0)),
        "low" => Ok(Some(1)),
        "medium" => Ok(Some(2)),
        "high" => Ok(Some(3)),
        "xhigh" => Ok(Some(4)),
        other => fail(format!(
            "`reasoning_effort` \"{other}\" is not supported (none, minimal, low, medium, high, xhigh)"
        )),
    }
}

/// What a request with thinking on sends: `thinking`, `output_config.effort` (adaptive only)
/// and the `max_tokens` that leaves room for the budget.
#[derive(Debug, PartialEq)]
struct Thinking {
    thinking: Value,
    effort: Option<&'static str>,
    max_tokens: i64,
}

const ADAPTIVE_EFFORTS: [&str; 5] = ["low", "low", "medium", "high", "max"];
const THINKING_BUDGETS: [i64; 5] = [1024, 2048, 4096, 16384, 32768];
/// Anthropic's smallest budget, and the room left for the answer after it.
const MIN_THINKING_BUDGET: i64 = 1024;

/// Thinking for effort level `level`, or none when it cannot be sent: Anthropic refuses
/// thinking with a `tool_choice` that forces a tool (the agent's tool call matters more than
/// the reasoning), and a budget below 1024 tokens.
fn thinking_for(
    level: usize,
    style: ThinkingStyle,
    max_tokens: i64,
    model_max_tokens: Option<i64>,
    tool_choice: Option<&Value>,
) -> Option<Thinking> {
    let forced = tool_choice
        .and_then(|c| c.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t == "any" || t == "tool");
    if forced {
        return None;
    }
    match style {
        ThinkingStyle::Adaptive => Some(Thinking {
            thinking: json!({ "type": "adaptive" }),
            effort: Some(ADAPTIVE_EFFORTS[level]),
            max_tokens,
        }),
        ThinkingStyle::Budget => {
            let budget = THINKING_BUDGETS[level];
            let (budget, max_tokens) = if max_tokens > budget {
                (budget, max_tokens)
            } else {
                let wanted = budget + MIN_THINKING_BUDGET;
                match model_max_tokens.filter(|cap| *cap > 0 && *cap < wanted) {
                    None => (budget, wanted),
                    Some(cap) => (cap - MIN_THINKING_BUDGET, cap),
                }
            };
            (budget >= MIN_THINKING_BUDGET).then(|| Thinking {
                thinking: json!({ "type": "enabled", "budget_tokens": budget }),
                effort: None,
                max_tokens,
            })
        }
    }
}

fn max_tokens(
    req: &Map<String, Value>,
    model_max_tokens: Option<i64>,
) -> Result<i64, TranslateError> {
    // A non-positive configured value is a configuration slip, not a cap of zero.
    let model_max = model_max_tokens.filter(|m| *m > 0);
    let asked = ["max_completion_tokens", "max_tokens"]
        .into_iter()
        .find_map(|name| present(req, name).map(|v| (name, v)));
    let asked = match asked {
        Some((name, value)) => match positive_integer(value) {
            Some(n) => Some(n),
            None => return fail(format!("`{name}` must be a positive integer")),
        },
        None => None,
    };
    let wanted = asked.or(model_max).unwrap_or(DEFAULT_MAX_TOKENS);
    Ok(model_max.map_or(wanted, |cap| wanted.min(cap)))
}

/// A positive integer, accepting `100.0` (some JSON encoders write every number as a float).
fn positive_integer(value: &Value) -> Option<i64> {
    if let Some(n) = value.as_u64() {
        return (n > 0).then(|| i64::try_from(n).unwrap_or(i64::MAX));
    }
    let f = value.as_f64()?;
    (f >= 1.0 && f.fract() == 0.0 && f < i64::MAX as f64).then_some(f as i64)
}

fn translate_sampling(
    req: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), TranslateError> {
    let temperature = unit_number(req, "temperature")?;
    let top_p = unit_number(req, "top_p")?;
    // Current Claude models reject temperature and top_p together; temperature is the one
    // clients actually tune, so it wins.
    match (temperature, top_p) {
        (Some(t), _) => {
            out.insert("temperature".into(), t);
        }
        (None, Some(p)) => {
            out.insert("top_p".into(), p);
        }
        (None, None) => {}
    }
    Ok(())
}

/// A number field clamped to 0..=1, keeping the client's number as it was when it is in range
/// (an integer stays an integer).
fn unit_number(req: &Map<String, Value>, name: &str) -> Result<Option<Value>, TranslateError> {
    let Some(value) = present(req, name) else {
        return Ok(None);
    };
    let Some(f) = value.as_f64() else {
        return fail(format!("`{name}` must be a number"));
    };
    let clamped = if (0.0..=1.0).contains(&f) {
        value.clone()
    } else if value.is_i64() || value.is_u64() {
        json!(if f < 0.0 { 0 } else { 1 })
    } else {
        json!(f.clamp(0.0, 1.0))
    };
    Ok(Some(clamped))
}

fn translate_stop(
    req: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), TranslateError> {
    let sequences: Vec<&str> = match present(req, "stop") {
        None => return Ok(()),
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => {
            let strings: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            match strings {
                Some(strings) => strings,
                None => return fail("`stop` must be a string or a list of strings"),
            }
        }
        Some(_) => return fail("`stop` must be a string or a list of strings"),
    };
    // An empty stop sequence can never match; sending it would only earn an upstream 400.
    let sequences: Vec<&str> = sequences.into_iter().filter(|s| !s.is_empty()).collect();
    if !sequences.is_empty() {
        out.insert("stop_sequences".into(), json!(sequences));
    }
    Ok(())
}

fn translate_tools(
    req: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), TranslateError> {
    let tools = match present(req, "tools") {
        None => return Ok(()),
        Some(Value::Array(tools)) => tools,
        Some(_) => return fail("`tools` must be an array"),
    };
    let parallel = match present(req, "parallel_tool_calls") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return fail("`parallel_tool_calls` must be a boolean"),
    };
    // Without tools, Anthropic rejects a tool_choice; OpenAI clients send one out of habit.
    if tools.is_empty() {
        return Ok(());
    }
    let tools = tools
        .iter()
        .enumerate()
        .map(|(i, tool)| translate_tool(i, tool))
        .collect::<Result<Vec<_>, _>>()?;
    out.insert("tools".into(), Value::Array(tools));

    let mut choice = match present(req, "tool_choice") {
        None => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({ "type": "auto" })),
            "none" => Some(json!({ "type": "none" })),
            "required" => Some(json!({ "type": "any" })),
            other => {
                return fail(format!(
                "`tool_choice` \"{other}\" is not supported (auto, none, required, or a function)"
            ))
            }
        },
        Some(Value::Object(obj)) => {
            match obj
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
            {
                Some(name) if !name.is_empty() => Some(json!({ "type": "tool", "name": name })),
                _ => return fail("tool_choice.function.name is missing"),
            }
        }
        Some(_) => return fail("`tool_choice` must be a string or an object"),
    };
    if !parallel {
        let choice = choice.get_or_insert_with(|| json!({ "type": "auto" }));
        if choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = Value::Bool(true);
        }
    }
    if let Some(choice) = choice {
        out.insert("tool_choice".into(), choice);
    }
    Ok(())
}

fn translate_tool(i: usize, tool: &Value) -> Result<Value, TranslateError> {
    match tool.get("type").and_then(Value::as_str) {
        None | Some("function") => {}
        Some(other) => {
            return fail(format!(
                "tools[{i}]: tool type {other} is not supported (function)"
            ))
        }
    }
    let Some(function) = tool.get("function").filter(|f| f.is_object()) else {
        return fail(format!("tools[{i}].function is missing"));
    };
    let name = match function.get("name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => name,
        _ => return fail(format!("tools[{i}].function.name is missing")),
    };
    let mut out = Map::new();
    out.insert("name".into(), json!(name));
    if let Some(description) = function.get("description").filter(|d| !d.is_null()) {
        let Some(description) = description.as_str() else {
            return fail(format!("tools[{i}].function.description must be a string"));
        };
        out.insert("description".into(), json!(description));
    }
    let schema = match function.get("parameters") {
        None | Some(Value::Null) => json!({ "type": "object", "properties": {} }),
        Some(parameters @ Value::Object(_)) => parameters.clone(),
        Some(_) => return fail(format!("tools[{i}].function.parameters must be an object")),
    };
    out.insert("input_schema".into(), schema);
    if let Some(cache_control) = cache_control(&format!("tools[{i}]"), tool)? {
        out.insert("cache_control".into(), cache_control);
    }
    Ok(Value::Object(out))
}

/// A part's (or tool's) `cache_control` marker, passed on as it is: Anthropic's own shape
/// (`{"type":"ephemeral"}`, optionally with a `ttl`), which is what clients send.
fn cache_control(field: &str, part: &Value) -> Result<Option<Value>, TranslateError> {
    match part.get("cache_control") {
        None | Some(Value::Null) => Ok(None),
        Some(marker @ Value::Object(_)) => Ok(Some(marker.clone())),
        Some(_) => fail(format!("{field}.cache_control must be an object")),
    }
}

fn with_cache_control(mut block: Value, cache_control: Option<Value>) -> Value {
    if let Some(cache_control) = cache_control {
        block["cache_control"] = cache_control;
    }
    block
}

/// One Anthropic turn being assembled from one or more OpenAI messages.
struct Turn {
    role: &'static str,
    blocks: Vec<Value>,
    /// The turn is exactly one OpenAI message with string content, so it can be sent as that
    /// string, as the contract's "same role, that text" row says.
    plain: bool,
}

/// One text of a system or developer message, with its cache marker.
struct SystemPart {
    text: String,
    cache_control: Option<Value>,
}

/// Returns the hoisted system prompt and the Anthropic `messages`.
fn translate_messages(
    messages: Option<&Value>,
) -> Result<(Option<Value>, Vec<Value>), TranslateError> {
    let Some(messages) = messages.and_then(Value::as_array) else {
        return fail("`messages` must be an array");
    };
    // One entry per system or developer message, in order.
    let mut system: Vec<Vec<SystemPart>> = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let Some(message) = message.as_object() else {
            return fail(format!("messages[{i}] must be an object"));
        };
        let role = match message.get("role") {
            Some(Value::String(role)) => role.as_str(),
            _ => return fail(format!("messages[{i}].role is missing")),
        };
        match role {
            // Agents put system messages mid-conversation; Anthropic has only the top-level one.
            "system" | "developer" => system.push(system_parts(i, message)?),
            "user" => {
                let (blocks, plain) = user_blocks(i, message)?;
                push_turn(&mut turns, "user", blocks, plain);
            }
            "assistant" => {
                let (blocks, plain) = assistant_blocks(i, message)?;
                push_turn(&mut turns, "assistant", blocks, plain);
            }
            "tool" => {
                let block = tool_result_block(i, message)?;
                push_turn(&mut turns, "user", vec![block], false);
            }
            other => {
                return fail(format!(
                    "messages[{i}].role \"{other}\" is not supported (system, developer, user, assistant, tool)"
                ))
            }
        }
    }
    Ok((
        system_prompt(system),
        turns.into_iter().map(finish_turn).collect(),
    ))
}

/// The top-level `system`: the messages' texts joined with a blank line, or, once any part
/// carries a cache marker, a list of text blocks (one per non-empty part, in order) so that the
/// marker has a block to sit on.
fn system_prompt(messages: Vec<Vec<SystemPart>>) -> Option<Value> {
    let marked = messages
        .iter()
        .flatten()
        .any(|part| part.cache_control.is_some());
    if marked {
        let blocks: Vec<Value> = messages
            .into_iter()
            .flatten()
            .filter_map(|part| {
                text_block(&part.text).map(|block| with_cache_control(block, part.cache_control))
            })
            .collect();
        return (!blocks.is_empty()).then_some(Value::Array(blocks));
    }
    let texts: Vec<String> = messages
        .into_iter()
        .map(|parts| parts.into_iter().map(|part| part.text).collect::<String>())
        .filter(|text| !text.trim().is_empty())
        .collect();
    (!texts.is_empty()).then(|| json!(texts.join("\n\n")))
}

/// Appends a message's blocks, merging with the previous turn when the role repeats (Anthropic
/// requires alternation). A message with nothing to send is skipped rather than sent empty.
fn push_turn(turns: &mut Vec<Turn>, role: &'static str, blocks: Vec<Value>, plain: bool) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(last) if last.role == role => {
            last.blocks.extend(blocks);
            last.plain = false;
        }
        _ => turns.push(Turn {
            role,
            blocks,
            plain,
        }),
    }
}

fn finish_turn(turn: Turn) -> Value {
    // A set, not a list: one request can hold hundreds of thousands of tool calls.
    let mut seen_tool_ids: HashSet<String> = HashSet::new();
    let mut blocks: Vec<Value> = Vec::with_capacity(turn.blocks.len());
    for block in turn.blocks {
        if block["type"] == "tool_use" {
            let id = block["id"].as_str().unwrap_or_default().to_string();
            if !seen_tool_ids.insert(id) {
                continue;
            }
        }
        blocks.push(block);
    }
    if turn.role == "user" {
        // Anthropic wants the answers to the previous turn's tool calls before anything else.
        let (mut results, rest): (Vec<Value>, Vec<Value>) =
            blocks.into_iter().partition(|b| b["type"] == "tool_result");
        results.extend(rest);
        blocks = results;
    }
    let content = match blocks.as_slice() {
        [only] if turn.plain && only["type"] == "text" => only["text"].clone(),
        _ => Value::Array(blocks),
    };
    json!({ "role": turn.role, "content": content })
}

/// A message's `content` in one of the shapes OpenAI allows.
enum Content<'a> {
    Empty,
    Text(&'a str),
    Parts(&'a [Value]),
}

fn content_of(i: usize, message: &Map<String, Value>) -> Result<Content<'_>, TranslateError> {
    match message.get("content") {
        None | Some(Value::Null) => Ok(Content::Empty),
        Some(Value::String(s)) => Ok(Content::Text(s)),
        Some(Value::Array(parts)) => Ok(Content::Parts(parts)),
        Some(_) => fail(format!(
            "messages[{i}].content must be a string, an array of content parts, or null"
        )),
    }
}

fn part_type(i: usize, j: usize, part: &Value) -> Result<&str, TranslateError> {
    match part.get("type").and_then(Value::as_str) {
        Some(t) => Ok(t),
        None => fail(format!("messages[{i}].content[{j}].type is missing")),
    }
}

fn part_text<'a>(
    i: usize,
    j: usize,
    part: &'a Value,
    key: &str,
) -> Result<&'a str, TranslateError> {
    match part.get(key).and_then(Value::as_str) {
        Some(text) => Ok(text),
        None => fail(format!("messages[{i}].content[{j}].{key} must be a string")),
    }
}

fn unsupported_part<T>(i: usize, j: usize, kind: &str) -> Result<T, TranslateError> {
    fail(format!(
        "messages[{i}].content[{j}]: content part type {kind} is not supported here"
    ))
}

/// A text block, or none for text Anthropic would reject as empty ("text content blocks must
/// contain non-whitespace text").
fn text_block(text: &str) -> Option<Value> {
    (!text.trim().is_empty()).then(|| json!({ "type": "text", "text": text }))
}

fn system_parts(i: usize, message: &Map<String, Value>) -> Result<Vec<SystemPart>, TranslateError> {
    match content_of(i, message)? {
        Content::Empty => Ok(Vec::new()),
        Content::Text(text) => Ok(vec![SystemPart {
            text: text.to_string(),
            cache_control: None,
        }]),
        Content::Parts(parts) => {
            let mut texts = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                match part_type(i, j, part)? {
                    "text" => texts.push(SystemPart {
                        text: part_text(i, j, part, "text")?.to_string(),
                        cache_control: cache_control(&format!("messages[{i}].content[{j}]"), part)?,
                    }),
                    other => return unsupported_part(i, j, other),
                }
            }
            Ok(texts)
        }
    }
}

/// A text content part as a text block with the part's cache marker, or none when the text
/// is empty (the marker goes with it: Anthropic refuses cache_control on an empty text block).
fn text_part_block(
    i: usize,
    j: usize,
    part: &Value,
    key: &str,
) -> Result<Option<Value>, TranslateError> {
    let marker = cache_control(&format!("messages[{i}].content[{j}]"), part)?;
    Ok(text_block(part_text(i, j, part, key)?).map(|block| with_cache_control(block, marker)))
}

fn user_blocks(
    i: usize,
    message: &Map<String, Value>,
) -> Result<(Vec<Value>, bool), TranslateError> {
    match content_of(i, message)? {
        Content::Empty => Ok((Vec::new(), false)),
        Content::Text(text) => Ok((text_block(text).into_iter().collect(), true)),
        Content::Parts(parts) => {
            let mut blocks = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                match part_type(i, j, part)? {
                    "text" => blocks.extend(text_part_block(i, j, part, "text")?),
                    "image_url" => {
                        let marker = cache_control(&format!("messages[{i}].content[{j}]"), part)?;
                        blocks.push(with_cache_control(image_block(i, j, part)?, marker));
                    }
                    other => return unsupported_part(i, j, other),
                }
            }
            Ok((blocks, false))
        }
    }
}

const IMAGE_MEDIA_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

fn image_block(i: usize, j: usize, part: &Value) -> Result<Value, TranslateError> {
    // `image_url` is an object `{url, detail}`; a bare string is a common client shortcut.
    let url = match part.get("image_url") {
        Some(Value::String(url)) => Some(url.as_str()),
        Some(Value::Object(obj)) => obj.get("url").and_then(Value::as_str),
        _ => None,
    };
    let Some(url) = url else {
        return fail(format!(
            "messages[{i}].content[{j}].image_url.url is missing"
        ));
    };
    if let Some(rest) = strip_prefix_ignore_case(url, "data:") {
        let Some((meta, data)) = rest.split_once(',') else {
            return fail(format!("messages[{i}]: image data URL has no data"));
        };
        let mut params = meta.split(';');
        let mime = params
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if !params.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
            return fail(format!("messages[{i}]: image data URL is not base64"));
        }
        // `image/jpg` is not a registered type, but clients write it and mean JPEG.
        let media_type = if mime == "image/jpg" {
            "image/jpeg".to_string()
        } else {
            mime
        };
        if !IMAGE_MEDIA_TYPES.contains(&media_type.as_str()) {
            let shown = if media_type.is_empty() {
                "(none)"
            } else {
                &media_type
            };
            return fail(format!(
                "messages[{i}]: image media type {shown} is not supported (jpeg, png, gif, webp)"
            ));
        }
        return Ok(json!({
            "type": "image",
            "source": { "type": "base64", "media_type": media_type, "data": data },
        }));
    }
    if strip_prefix_ignore_case(url, "https://").is_some()
        || strip_prefix_ignore_case(url, "http://").is_some()
    {
        return Ok(json!({ "type": "image", "source": { "type": "url", "url": url } }));
    }
    fail(format!(
        "messages[{i}].content[{j}].image_url.url must be a data: URL or an http(s) URL"
    ))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn assistant_blocks(
    i: usize,
    message: &Map<String, Value>,
) -> Result<(Vec<Value>, bool), TranslateError> {
    // Signed thinking goes back first in its turn, as Anthropic returned it.
    let mut blocks = thinking_blocks(i, message)?;
    let mut plain = false;
    match content_of(i, message)? {
        Content::Empty => {}
        Content::Text(text) => {
            blocks.extend(text_block(text));
            plain = blocks.len() == 1;
        }
        Content::Parts(parts) => {
            for (j, part) in parts.iter().enumerate() {
                match part_type(i, j, part)? {
                    "text" => blocks.extend(text_part_block(i, j, part, "text")?),
                    "refusal" => blocks.extend(text_part_block(i, j, part, "refusal")?),
                    // Some clients replay Anthropic's own blocks; they are deduplicated
                    // against `tool_calls` when the turn is finished.
                    "tool_use" => blocks.push(replayed_tool_use(i, j, part)?),
                    other => return unsupported_part(i, j, other),
                }
            }
        }
    }
    match message.get("tool_calls") {
        None | Some(Value::Null) => {}
        Some(Value::Array(calls)) => {
            for (j, call) in calls.iter().enumerate() {
                blocks.push(tool_use_block(i, j, call)?);
                plain = false;
            }
        }
        Some(_) => return fail(format!("messages[{i}].tool_calls must be an array")),
    }
    Ok((blocks, plain))
}

/// An assistant message's `thinking_blocks` (as this service returns them), checked for the
/// fields Anthropic needs and otherwise passed on unchanged: their signatures must verify.
/// `reasoning_content` is never sent: it carries no signature.
fn thinking_blocks(i: usize, message: &Map<String, Value>) -> Result<Vec<Value>, TranslateError> {
    let blocks = match message.get("thinking_blocks") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(blocks)) => blocks,
        Some(_) => return fail(format!("messages[{i}].thinking_blocks must be an array")),
    };
    let mut out = Vec::with_capacity(blocks.len());
    for (j, block) in blocks.iter().enumerate() {
        let field = format!("messages[{i}].thinking_blocks[{j}]");
        let is_string = |key: &str| block.get(key).is_some_and(Value::is_string);
        match block.get("type").and_then(Value::as_str) {
            Some("thinking") if is_string("thinking") && is_string("signature") => {}
            Some("thinking") => {
                return fail(format!(
                    "{field} must have string `thinking` and `signature` fields"
                ))
            }
            Some("redacted_thinking") if is_string("data") => {}
            Some("redacted_thinking") => return fail(format!("{field} must have a string `data`")),
            _ => {
                return fail(format!(
                    "{field} must be a thinking or redacted_thinking block"
                ))
            }
        }
        out.push(block.clone());
    }
    Ok(out)
}

fn tool_use_block(i: usize, j: usize, call: &Value) -> Result<Value, TranslateError> {
    let field = format!("messages[{i}].tool_calls[{j}]");
    match call.get("type").and_then(Value::as_str) {
        None | Some("function") => {}
        Some(other) => {
            return fail(format!(
                "{field}: tool call type {other} is not supported (function)"
            ))
        }
    }
    let id = match call.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id,
        _ => return fail(format!("{field}.id is missing")),
    };
    let Some(function) = call.get("function").filter(|f| f.is_object()) else {
        return fail(format!("{field}.function is missing"));
    };
    let name = match function.get("name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => name,
        _ => return fail(format!("{field}.function.name is missing")),
    };
    let input = match function.get("arguments") {
        // A call without arguments is a call with none; some models emit "" for that.
        None | Some(Value::Null) => json!({}),
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(parsed @ Value::Object(_)) => parsed,
            _ => return fail(format!("{field}.function.arguments is not a JSON object")),
        },
        Some(parsed @ Value::Object(_)) => parsed.clone(),
        Some(_) => return fail(format!("{field}.function.arguments is not a JSON object")),
    };
    Ok(json!({ "type": "tool_use", "id": sanitize_tool_id(id), "name": name, "input": input }))
}

fn replayed_tool_use(i: usize, j: usize, part: &Value) -> Result<Value, TranslateError> {
    let field = format!("messages[{i}].content[{j}]");
    let id = match part.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id,
        _ => return fail(format!("{field}.id is missing")),
    };
    let name = match part.get("name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => name,
        _ => return fail(format!("{field}.name is missing")),
    };
    let input = match part.get("input") {
        None | Some(Value::Null) => json!({}),
        Some(input @ Value::Object(_)) => input.clone(),
        Some(_) => return fail(format!("{field}.input is not a JSON object")),
    };
    Ok(json!({ "type": "tool_use", "id": sanitize_tool_id(id), "name": name, "input": input }))
}

fn tool_result_block(i: usize, message: &Map<String, Value>) -> Result<Value, TranslateError> {
    let id = match message.get("tool_call_id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id,
        _ => return fail(format!("messages[{i}].tool_call_id is missing")),
    };
    let content = match content_of(i, message)? {
        Content::Empty => json!(""),
        Content::Text(text) => json!(text),
        Content::Parts(parts) => {
            let mut blocks = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                match part_type(i, j, part)? {
                    "text" => blocks.extend(text_part_block(i, j, part, "text")?),
                    other => return unsupported_part(i, j, other),
                }
            }
            if blocks.is_empty() {
                json!("")
            } else {
                Value::Array(blocks)
            }
        }
    };
    Ok(json!({ "type": "tool_result", "tool_use_id": sanitize_tool_id(id), "content": content }))
}

/// Anthropic wants tool ids matching `^[a-zA-Z0-9_-]+$`; other gateways' ids (`call.1`,
/// `fc:abc`) are rewritten the same way on both sides so that pairs still match.
pub(crate) fn sanitize_tool_id(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Anthropic Messages response body -> OpenAI chat.completion body, with `created` (unix
/// seconds) as given.
pub fn translate_response(anthropic: &Value, created: u64) -> Value {
    let mut texts: Vec<&str> = Vec::new();
    let mut tool_calls: Vec<Value> = Vec::new();
    let mut reasoning: Option<String> = None;
    let mut thinking_blocks: Vec<Value> = Vec::new();
    let blocks = anthropic.get("content").and_then(Value::as_array);
    for block in blocks.into_iter().flatten() {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => texts.extend(block.get("text").and_then(Value::as_str)),
            // Whole, signature included: the client sends them back to go on with tools.
            Some("thinking") => {
                let text = block.get("thinking").and_then(Value::as_str);
                reasoning
                    .get_or_insert_with(String::new)
                    .push_str(text.unwrap_or_default());
                thinking_blocks.push(block.clone());
            }
            Some("redacted_thinking") => thinking_blocks.push(block.clone()),
            Some("tool_use") => {
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({
                    "id": block.get("id").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {
                        "name": block.get("name").cloned().unwrap_or(Value::Null),
                        "arguments": input.to_string(),
                    },
                }));
            }
            // Other block types have no place in a chat.completion.
            _ => {}
        }
    }
    let content = if texts.is_empty() {
        Value::Null
    } else {
        json!(texts.concat())
    };
    let mut message = json!({ "role": "assistant", "content": content });
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    if let Some(reasoning) = reasoning {
        message["reasoning_content"] = json!(reasoning);
    }
    if !thinking_blocks.is_empty() {
        message["thinking_blocks"] = Value::Array(thinking_blocks);
    }
    let stop_reason = anthropic.get("stop_reason").and_then(Value::as_str);
    let mut out = json!({
        "id": anthropic.get("id").cloned().unwrap_or(Value::Null),
        "object": "chat.completion",
        "created": created,
        "model": anthropic.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_reason(stop_reason),
        }],
    });
    if let Some(raw) = anthropic.get("usage") {
        if let Some(usage) = usage_from_anthropic(raw) {
            out["usage"] = json!({
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens(),
                "prompt_tokens_details": { "cached_tokens": cached_tokens(raw) },
            });
        }
    }
    out
}

/// OpenAI's `prompt_tokens_details.cached_tokens`: the tokens read from Anthropic's prompt
/// cache (0 when it reports none).
pub fn cached_tokens(usage: &Value) -> i64 {
    usage
        .get("cache_read_input_tokens")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// The usage of an Anthropic response or `message_start`, per ANTHROPIC.md: prompt = input +
/// cache_creation_input + cache_read_input, completion = output. None without a usage object.
pub fn usage_from_anthropic(usage: &Value) -> Option<Usage> {
    let usage = usage.as_object()?;
    // Missing or null counts are zero: message_delta carries only output_tokens, and cache
    // fields are null when caching was not used. The counts come from the upstream, so their
    // sum saturates rather than overflow.
    let count = |key: &str| usage.get(key).and_then(Value::as_i64).unwrap_or(0);
    Some(Usage {
        prompt_tokens: count("input_tokens")
            .saturating_add(count("cache_creation_input_tokens"))
            .saturating_add(count("cache_read_input_tokens")),
        completion_tokens: count("output_tokens"),
    })
}

/// Anthropic `stop_reason` -> OpenAI `finish_reason`, per ANTHROPIC.md (the stream translator
/// uses it too).
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") | Some("model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// An upstream Anthropic error body -> OpenAI error body
/// `{"error":{"message","type","code":null}}`. A body of another shape becomes an
/// `upstream_error` whose message quotes at most ~500 characters of it.
pub fn translate_error(body: &Value) -> Value {
    if let Some(error) = body.get("error").filter(|e| e.is_object()) {
        if let Some(message) = error.get("message").and_then(Value::as_str) {
            let kind = error
                .get("type")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .unwrap_or("upstream_error");
            return openai_error(&truncate(message), kind);
        }
    }
    let message = match body {
        Value::Null => "upstream returned an error without a body".to_string(),
        Value::String(s) => format!("upstream returned an error: {}", truncate(s)),
        other => format!(
            "upstream returned an unexpected error body: {}",
            truncate(&other.to_string())
        ),
    };
    openai_error(&message, "upstream_error")
}

fn openai_error(message: &str, kind: &str) -> Value {
    json!({ "error": { "message": message, "type": kind, "code": null } })
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(MAX_ERROR_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_with_nothing_to_send_is_refused() {
        for messages in [
            json!([]),
            json!([{"role": "system", "content": "be brief"}]),
            json!([{"role": "user", "content": ""}]),
        ] {
            let e = translate_request(&json!({"messages": messages}), "m", None).unwrap_err();
            assert!(e.0.contains("`messages`"), "{}", e.0);
        }
    }

    fn translate(openai: Value) -> Value {
        translate_request(&openai, "claude-test", None).expect("translates")
    }

    fn translate_err(openai: Value) -> String {
        translate_request(&openai, "claude-test", None)
            .expect_err("is rejected")
            .0
    }

    fn messages_of(openai: Value) -> Value {
        translate(openai)["messages"].clone()
    }

    // Request: the table, row by row.

    #[test]
    fn a_plain_request_becomes_a_minimal_anthropic_request() {
        let out = translate(json!({
            "model": "whatever-the-client-says",
            "messages": [{ "role": "user", "content": "Hello" }],
        }));
        assert_eq!(
            out,
            json!({
                "model": "claude-test",
                "max_tokens": 4096,
                "messages": [{ "role": "user", "content": "Hello" }],
            })
        );
    }

    #[test]
    fn system_and_developer_messages_are_joined_with_a_blank_line_into_system() {
        let out = translate(json!({
            "messages": [
                { "role": "system", "content": "Be brief." },
                { "role": "developer", "content": [{ "type": "text", "text": "Use tools." }] },
                { "role": "user", "content": "Hi" },
            ],
        }));
        assert_eq!(out["system"], json!("Be brief.\n\nUse tools."));
        assert_eq!(
            out["messages"],
            json!([{ "role": "user", "content": "Hi" }])
        );
    }

    #[test]
    fn a_request_without_system_messages_has_no_system_field() {
        let out = translate(json!({ "messages": [{ "role": "user", "content": "Hi" }] }));
        assert!(out.get("system").is_none());
    }

    #[test]
    fn user_and_assistant_string_content_keeps_its_role_and_text() {
        let messages = messages_of(json!({
            "messages": [
                { "role": "user", "content": "What is 2+2?" },
                { "role": "assistant", "content": "4" },
                { "role": "user", "content": "Thanks" },
            ],
        }));
        assert_eq!(
            messages,
            json!([
                { "role": "user", "content": "What is 2+2?" },
                { "role": "assistant", "content": "4" },
                { "role": "user", "content": "Thanks" },
            ])
        );
    }

    #[test]
    fn text_content_parts_become_text_blocks() {
        let messages = messages_of(json!({
            "messages": [{ "role": "user", "content": [
                { "type": "text", "text": "one" },
                { "type": "text", "text": "two" },
            ] }],
        }));
        assert_eq!(
            messages,
            json!([{ "role": "user", "content": [
                { "type": "text", "text": "one" },
                { "type": "text", "text": "two" },
            ] }])
        );
    }

    #[test]
    fn a_base64_data_url_image_becomes_a_base64_image_block() {
        let messages = messages_of(json!({
            "messages": [{ "role": "user", "content": [
                { "type": "text", "text": "What is this?" },
                { "type": "image_url", "image_url": { "url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high" } },
            ] }],
        }));
        assert_eq!(
            messages,
            json!([{ "role": "user", "content": [
                { "type": "text", "text": "What is this?" },
                { "type": "image", "source": { "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo=" } },
            ] }])
        );
    }

    #[test]
    fn an_image_jpg_media_type_is_sent_as_jpeg() {
        let messages = messages_of(json!({
            "messages": [{ "role": "user", "content": [
                { "type": "image_url", "image_url": { "url": "data:image/jpg;base64,/9j/4AAQ" } },
            ] }],
        }));
        assert_eq!(
            messages[0]["content"][0]["source"],
            json!({ "type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ" })
        );
    }

    #[test]
    fn an_http_image_url_becomes_a_url_image_block() {
        let messages = messages_of(json!({
            "messages": [{ "role": "user", "content": [
                { "type": "image_url", "image_url": { "url": "https://example.com/cat.png" } },
                { "type": "image_url", "image_url": "http://example.com/dog.gif" },
            ] }],
        }));
        assert_eq!(
            messages,
            json!([{ "role": "user", "content": [
                { "type": "image", "source": { "type": "url", "url": "https://example.com/cat.png" } },
                { "type": "image", "source": { "type": "url", "url": "http://example.com/dog.gif" } },
            ] }])
        );
    }

    #[test]
    fn an_image_url_that_is_neither_data_nor_http_is_rejected() {
        let err = translate_err(json!({
            "messages": [{ "role": "user", "content": [
                { "type": "image_url", "image_url": { "url": "file:///etc/passwd" } },
            ] }],
        }));
        assert_eq!(
            err,
            "messages[0].content[0].image_url.url must be a data: URL or an http(s) URL"
        );
    }

    #[test]
    fn assistant_tool_calls_become_tool_use_blocks_after_the_text() {
        let messages = messages_of(json!({
            "messages": [
                { "role": "user", "content": "Weather in Paris?" },
                { "role": "assistant", "content": "Let me check.", "tool_calls": [
                    { "id": "call_1", "type": "function", "function": { "name": "weather", "arguments": "{\"city\":\"Paris\"}" } },
                    { "id": "call_2", "type": "function", "function": { "name": "time", "arguments": "{}" } },
                ] },
            ],
        }));
        assert_eq!(
            messages[1],
            json!({ "role": "assistant", "content": [
                { "type": "text", "text": "Let me check." },
                { "type": "tool_use", "id": "call_1", "name": "weather", "input": { "city": "Paris" } },
                { "type": "tool_use", "id": "call_2", "name": "time", "input": {} },
            ] })
        );
    }

    #[test]
    fn tool_call_arguments_that_are_not_a_json_object_are_rejected() {
        for arguments in ["[1, 2]", "not json", "42"] {
            let err = translate_err(json!({
                "messages": [
                    { "role": "user", "content": "a" },
                    { "role": "assistant", "content": "b" },
                    { "role": "user", "content": "c" },
                    { "role": "assistant", "content": null, "tool_calls": [
                        { "id": "call_1", "type": "function", "function": { "name": "f", "arguments": arguments } },
                    ] },
                ],
            }));
            assert_eq!(
                err,
                "messages[3].tool_calls[0].function.arguments is not a JSON object"
            );
        }
    }

    #[test]
    fn empty_tool_call_arguments_mean_no_arguments() {
        let messages = messages_of(json!({
            "messages": [
                { "role": "user", "content": "go" },
                { "role": "assistant", "tool_calls": [
                    { "id": "call_1", "type": "function", "function": { "name": "f", "arguments": "" } },
                ] },
            ],
        }));
        assert_eq!(messages[1]["content"][0]["input"], json!({}));
    }

    #[test]
    fn a_tool_message_becomes_a_user_turn_with_a_tool_result() {
        let messages = messages_of(json!({
            "messages": [
                { "role": "user", "content": "Weather?" },
                { "role": "assistant", "tool_calls": [
                    { "id": "call_1", "type": "function", "function": { "name": "weather", "arguments": "{}" } },
                ] },
                { "role": "tool", "tool_call_id": "call_1", "content": "Sunny" },
            ],
        }));
        assert_eq!(
            messages[2],
            json!({ "role": "user", "content": [
                { "type": "tool_result", "tool_use_id": "call_1", "content": "Sunny" },
            ] })
        );
    }

    #[test]
    fn a_tool_message_with_text_parts_becomes_a_tool_result_with_text_blocks() {
        let messages = messages_of(json!({
            "messages": [
                { "role": "tool", "tool_call_id": "call_1", "content": [
                    { "type": "text", "text": "line one" },
                    { "type": "text", "text": "" },
                ] },
            ],
        }));
        assert_eq!(
            messages,
            json!([{ "role": "user", "content": [
                { "type": "tool_result", "tool_use_id": "call_1", "content": [{ "type": "text", "text": "line one" }] },
            ] }])
        );
    }

    #[test]
    fn a_tool_message_without_tool_call_id_is_rejected() {
        let err = translate_err(json!({
            "messages": [
                { "role": "user", "content": "a" },
                { "role": "tool", "content": "result" },
            ],
        }));
        assert_eq!(err, "messages[1].tool_call_id is missing");
    }

    #[test]
    fn consecutive_tool_messages_become_one_user_turn() {
        let messages = messages_of(json!({
            "messages": [
                { "role": "user", "content": "Both please" },
                { "role": "assistant", "content": null, "tool_calls": [
                    { "id": "call_a", "type": "function", "function": { "name": "a", "arguments": "{}" } },
                    { "id": "call_b", "type": "function", "function": { "name": "b", "arguments": "{}" } },
                ] },
                { "role": "tool", "tool_call_id": "call_a", "content": "A" },
                { "role": "tool", "tool_call_id": "call_b", "content": "B" },
            ],
        }));
        assert_eq!(messages.as_array().unwrap().len(), 3);
        assert_eq!(
            messages[2],
            json!({ "role": "user", "content": [
                { "type": "tool_result", "tool_use_id": "call_a", "content": "A" },
                { "type": "tool_result", "tool_use_id": "call_b", "content": "B" },
            ] })
        );
    }

    #[test]
    fn consecutive_turns_of_the_same_role_are_merged() {
        let messages = messages_of(json!({
            "messages": [
                { "role": "user", "content": "first" },
                { "role": "user", "content": [{ "type": "text", "text": "second" }] },
                { "role": "assistant", "content": "one" },
                { "role": "assistant", "content": "two" },
            ],
        }));
        assert_eq!(
            messages,
            json!([
                { "role": "user", "content": [
                    { "type": "text", "text": "first" },
                    { "type": "text", "text": "second" },
                ] },
                { "role": "assistant", "content": [
                    { "type": "text", "text": "one" },
                    { "type": "text", "text": "two" },
                ] },
            ])
        );
    }

    #[test]
    fn max_completion_tokens_is_preferred_over_max_tokens() {
        let out = translate(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "max_completion_tokens": 300,
            "max_tokens": 100,
        }));
        assert_eq!(out["max_tokens"], json!(300));
    }

    #[test]
    fn max_tokens_is_used_when_max_completion_tokens_is_absent() {
        let out = translate(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "max_tokens": 100,
        }));
        assert_eq!(out["max_tokens"], json!(100));
    }

    #[test]
    fn without_max_tokens_the_models_max_tokens_is_used() {
        let out = translate_request(
            &json!({ "messages": [{ "role": "user", "content": "Hi" }] }),
            "claude-test",
            Some(8192),
        )
        .unwrap();
        assert_eq!(out["max_tokens"], json!(8192));
    }

    #[test]
    fn without_any_max_tokens_4096_is_sent() {
        let out = translate(json!({ "messages": [{ "role": "user", "content": "Hi" }] }));
        assert_eq!(out["max_tokens"], json!(4096));
    }

    #[test]
    fn max_tokens_is_capped_by_the_models_max_tokens() {
        let openai = json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "max_tokens": 100000,
        });
        let capped = translate_request(&openai, "claude-test", Some(2000)).unwrap();
        assert_eq!(capped["max_tokens"], json!(2000));
        let under = translate_request(&openai, "claude-test", Some(200000)).unwrap();
        assert_eq!(under["max_tokens"], json!(100000));
    }

    #[test]
    fn a_non_positive_or_non_integer_max_tokens_is_rejected() {
        for bad in [json!(0), json!(-5), json!(1.5), json!("100")] {
            let err = translate_err(json!({
                "messages": [{ "role": "user", "content": "Hi" }],
                "max_tokens": bad,
            }));
            assert_eq!(err, "`max_tokens` must be a positive integer");
        }
        let err = translate_err(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "max_completion_tokens": 0,
        }));
        assert_eq!(err, "`max_completion_tokens` must be a positive integer");
    }

    #[test]
    fn temperature_is_clamped_to_between_0_and_1() {
        let base = |t: Value| {
            translate(
                json!({ "messages": [{ "role": "user", "content": "Hi" }], "temperature": t }),
            )["temperature"]
                .clone()
        };
        assert_eq!(base(json!(0.7)), json!(0.7));
        assert_eq!(base(json!(1.5)), json!(1.0));
        assert_eq!(base(json!(2)), json!(1));
        assert_eq!(base(json!(0)), json!(0));
        assert_eq!(base(json!(-0.5)), json!(0.0));
    }

    #[test]
    fn a_temperature_that_is_not_a_number_is_rejected() {
        let err = translate_err(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "temperature": "hot",
        }));
        assert_eq!(err, "`temperature` must be a number");
    }

    #[test]
    fn top_p_is_sent_when_temperature_is_absent() {
        let out = translate(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "top_p": 0.9,
        }));
        assert_eq!(out["top_p"], json!(0.9));
        assert!(out.get("temperature").is_none());
    }

    #[test]
    fn only_temperature_is_sent_when_both_temperature_and_top_p_are_given() {
        let out = translate(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "temperature": 0.2,
            "top_p": 0.9,
        }));
        assert_eq!(out["temperature"], json!(0.2));
        assert!(out.get("top_p").is_none());
    }

    #[test]
    fn a_stop_string_becomes_a_one_element_stop_sequences_list() {
        let out = translate(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "stop": "END",
        }));
        assert_eq!(out["stop_sequences"], json!(["END"]));
    }

    #[test]
    fn a_stop_list_becomes_stop_sequences() {
        let out = translate(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "stop": ["END", "STOP"],
        }));
        assert_eq!(out["stop_sequences"], json!(["END", "STOP"]));
        assert!(out.get("stop").is_none());
    }

    #[test]
    fn a_stop_that_is_not_strings_is_rejected() {
        let err = translate_err(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "stop": [1],
        }));
        assert_eq!(err, "`stop` must be a string or a list of strings");
    }

    #[test]
    fn function_tools_become_anthropic_tools_with_input_schema() {
        let out = translate(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "tools": [
                { "type": "function", "function": {
                    "name": "weather",
                    "description": "Current weather",
                    "parameters": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] },
                    "strict": true,
                } },
            ],
        }));
        assert_eq!(
            out["tools"],
            json!([{
                "name": "weather",
                "description": "Current weather",
                "input_schema": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] },
            }])
        );
    }

    #[test]
    fn a_tool_without_parameters_gets_an_empty_object_schema_and_no_null_description() {
        let out = translate(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "tools": [
                { "type": "function", "function": { "name": "ping" } },
                { "type": "function", "function": { "name": "pong", "description": null, "parameters": null } },
            ],
        }));
        assert_eq!(
            out["tools"],
            json!([
                { "name": "ping", "input_schema": { "type": "object", "properties": {} } },
                { "name": "pong", "input_schema": { "type": "object", "properties": {} } },
            ])
        );
    }

    #[test]
    fn a_tool_without_a_name_is_rejected() {
        let err = translate_err(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "tools": [{ "type": "function", "function": { "description": "nameless" } }],
        }));
        assert_eq!(err, "tools[0].function.name is missing");
    }

    fn tool_choice_of(extra: Value) -> Option<Value> {
        let mut openai = json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "tools": [{ "type": "function", "function": { "name": "weather" } }],
        });
        for (k, v) in extra.as_object().unwrap() {
            openai[k] = v.clone();
        }
        translate(openai).get("tool_choice").cloned()
    }

    #[test]
    fn tool_choice_strings_map_to_auto_none_and_any() {
        assert_eq!(
            tool_choice_of(json!({ "tool_choice": "auto" })),
            Some(json!({ "type": "auto" }))
        );
        assert_eq!(
            tool_choice_of(json!({ "tool_choice": "none" })),
            Some(json!({ "type": "none" }))
        );
        assert_eq!(
            tool_choice_of(json!({ "tool_choice": "required" })),
            Some(json!({ "type": "any" }))
        );
        assert_eq!(tool_choice_of(json!({})), None);
    }

    #[test]
    fn a_named_function_tool_choice_becomes_a_tool_choice_of_type_tool() {
        assert_eq!(
            tool_choice_of(
                json!({ "tool_choice": { "type": "function", "function": { "name": "weather" } } })
            ),
            Some(json!({ "type": "tool", "name": "weather" }))
        );
    }

    #[test]
    fn an_unknown_tool_choice_is_rejected() {
        let err = translate_err(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "tools": [{ "type": "function", "function": { "name": "weather" } }],
            "tool_choice": "sometimes",
        }));
        assert_eq!(
            err,
            "`tool_choice` \"sometimes\" is not supported (auto, none, required, or a function)"
        );
    }

    #[test]
    fn parallel_tool_calls_false_disables_parallel_tool_use_on_the_choice() {
        assert_eq!(
            tool_choice_of(json!({ "parallel_tool_calls": false, "tool_choice": "auto" })),
            Some(json!({ "type": "auto", "disable_parallel_tool_use": true }))
        );
        assert_eq!(
            tool_choice_of(json!({ "parallel_tool_calls": false, "tool_choice": "required" })),
            Some(json!({ "type": "any", "disable_parallel_tool_use": true }))
        );
        assert_eq!(
            tool_choice_of(json!({
                "parallel_tool_calls": false,
                "tool_choice": { "type": "function", "function": { "name": "weather" } },
            })),
            Some(json!({ "type": "tool", "name": "weather", "disable_parallel_tool_use": true }))
        );
    }

    #[test]
    fn parallel_tool_calls_false_without_tool_choice_sends_auto_with_parallel_use_disabled() {
        assert_eq!(
            tool_choice_of(json!({ "parallel_tool_calls": false })),
            Some(json!({ "type": "auto", "disable_parallel_tool_use": true }))
        );
    }

    #[test]
    fn parallel_tool_calls_false_adds_nothing_to_a_none_choice() {
        assert_eq!(
            tool_choice_of(json!({ "parallel_tool_calls": false, "tool_choice": "none" })),
            Some(json!({ "type": "none" }))
        );
    }

    #[test]
    fn parallel_tool_calls_true_changes_nothing() {
        assert_eq!(tool_choice_of(json!({ "parallel_tool_calls": true })), None);
    }

    #[test]
    fn tool_choice_and_parallel_tool_calls_without_tools_are_not_sent() {
        let out = translate(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "tools": [],
            "tool_choice": "auto",
            "parallel_tool_calls": false,
        }));
        assert!(out.get("tools").is_none());
        assert!(out.get("tool_choice").is_none());
    }

    #[test]
    fn user_becomes_metadata_user_id() {
        let out = translate(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "user": "agent-7",
        }));
        assert_eq!(out["metadata"], json!({ "user_id": "agent-7" }));
        assert!(out.get("user").is_none());
    }

    #[test]
    fn n_greater_than_1_is_rejected_and_n_of_1_is_fine() {
        let err = translate_err(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "n": 2,
        }));
        assert_eq!(err, "`n` > 1 is not supported for Anthropic models");
        let out = translate(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "n": 1,
        }));
        assert!(out.get("n").is_none());
    }

    #[test]
    fn logprobs_is_rejected_unless_false() {
        let err = translate_err(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "logprobs": true,
            "top_logprobs": 3,
        }));
        assert_eq!(err, "`logprobs` is not supported for Anthropic models");
        let out = translate(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "logprobs": false,
        }));
        assert!(out.get("logprobs").is_none());
    }

    #[test]
    fn a_json_schema_response_format_becomes_output_config_format() {
        let schema = json!({
            "type": "object",
            "properties": { "city": { "type": "string" } },
            "required": ["city"],
            "additionalProperties": false,
        });
        let out = translate(json!({
            "messages": [{ "role": "user", "content": "Where?" }],
            "response_format": { "type": "json_schema", "json_schema": {
                "name": "place", "strict": true, "schema": schema,
            } },
        }));
        assert_eq!(
            out["output_config"],
            json!({ "format": { "type": "json_schema", "schema": schema } })
        );
        assert!(out.get("response_format").is_none());
    }

    #[test]
    fn a_json_schema_response_format_without_a_schema_is_rejected() {
        for format in [
            json!({ "type": "json_schema" }),
            json!({ "type": "json_schema", "json_schema": { "name": "x" } }),
            json!({ "type": "json_schema", "json_schema": { "name": "x", "schema": "{}" } }),
        ] {
            let err = translate_err(json!({
                "messages": [{ "role": "user", "content": "Hi" }],
                "response_format": format,
            }));
            assert_eq!(
                err,
                "`response_format.json_schema.schema` must be an object"
            );
        }
    }

    #[test]
    fn an_unknown_response_format_type_is_rejected() {
        let err = translate_err(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "response_format": { "type": "grammar" },
        }));
        assert_eq!(
            err,
            "`response_format` of type grammar is not supported for Anthropic models"
        );
    }

    #[test]
    fn text_and_json_object_response_formats_are_dropped() {
        for kind in ["text", "json_object"] {
            let out = translate(json!({
                "messages": [{ "role": "user", "content": "Hi" }],
                "response_format": { "type": kind },
            }));
            assert!(out.get("response_format").is_none());
        }
    }

    #[test]
    fn an_image_with_an_unsupported_media_type_is_rejected_naming_the_message() {
        let err = translate_err(json!({
            "messages": [
                { "role": "user", "content": "a" },
                { "role": "assistant", "content": "b" },
                { "role": "user", "content": [
                    { "type": "image_url", "image_url": { "url": "data:image/bmp;base64,Qk0=" } },
                ] },
            ],
        }));
        assert_eq!(
            err,
            "messages[2]: image media type image/bmp is not supported (jpeg, png, gif, webp)"
        );
    }

    #[test]
    fn penalties_seed_logit_bias_and_unknown_fields_are_dropped() {
        let out = translate(json!({
            "model": "gpt-4o",
            "messages": [{ "role": "user", "content": "Hi" }],
            "frequency_penalty": 0.5,
            "presence_penalty": 0.5,
            "seed": 42,
            "logit_bias": { "50256": -100 },
            "stream_options": { "include_usage": true },
            "store": true,
            "service_tier": "auto",
        }));
        assert_eq!(
            out,
            json!({
                "model": "claude-test",
                "max_tokens": 4096,
                "messages": [{ "role": "user", "content": "Hi" }],
            })
        );
    }

    #[test]
    fn stream_true_is_copied_and_stream_false_is_not() {
        let streaming = translate(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "stream": true,
            "stream_options": { "include_usage": true },
        }));
        assert_eq!(streaming["stream"], json!(true));
        assert!(streaming.get("stream_options").is_none());
        let not_streaming = translate(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "stream": false,
        }));
        assert!(not_streaming.get("stream").is_none());
    }

    #[test]
    fn missing_or_non_array_messages_are_rejected_naming_messages() {
        assert_eq!(translate_err(json!({})), "`messages` must be an array");
        assert_eq!(
            translate_err(json!({ "messages": "hi" })),
            "`messages` must be an array"
        );
    }

    #[test]
    fn a_message_without_a_valid_role_is_rejected_naming_it() {
        assert_eq!(
            translate_err(json!({ "messages": [{ "content": "hi" }] })),
            "messages[0].role is missing"
        );
        assert_eq!(
            translate_err(json!({ "messages": [
                { "role": "user", "content": "hi" },
                { "role": "function", "name": "f", "content": "x" },
            ] })),
            "messages[1].role \"function\" is not supported (system, developer, user, assistant, tool)"
        );
    }

    #[test]
    fn a_content_part_of_an_unsupported_type_is_rejected_naming_it() {
        let err = translate_err(json!({
            "messages": [{ "role": "user", "content": [
                { "type": "input_audio", "input_audio": { "data": "x", "format": "wav" } },
            ] }],
        }));
        assert_eq!(
            err,
            "messages[0].content[0]: content part type input_audio is not supported here"
        );
    }

    #[test]
    fn a_body_that_is_not_an_object_is_rejected() {
        assert_eq!(
            translate_err(json!([1, 2])),
            "the request body must be a JSON object"
        );
    }

    // Request: the rules that gateways commonly get wrong.

    #[test]
    fn an_assistant_turn_with_empty_content_and_tool_calls_has_only_tool_use_blocks() {
        for content in [
            json!(""),
            Value::Null,
            json!([{ "type": "text", "text": "" }]),
        ] {
            let messages = messages_of(json!({
                "messages": [
                    { "role": "user", "content": "go" },
                    { "role": "assistant", "content": content, "tool_calls": [
                        { "id": "call_1", "type": "function", "function": { "name": "f", "arguments": "{}" } },
                    ] },
                ],
            }));
            assert_eq!(
                messages[1],
                json!({ "role": "assistant", "content": [
                    { "type": "tool_use", "id": "call_1", "name": "f", "input": {} },
                ] })
            );
        }
    }

    #[test]
    fn an_empty_message_is_skipped_rather_than_sent_as_an_empty_text_block() {
        let messages = messages_of(json!({
            "messages": [
                { "role": "user", "content": "first" },
                { "role": "assistant", "content": "" },
                { "role": "user", "content": "second" },
            ],
        }));
        assert_eq!(
            messages,
            json!([{ "role": "user", "content": [
                { "type": "text", "text": "first" },
                { "type": "text", "text": "second" },
            ] }])
        );
    }

    #[test]
    fn tool_results_come_before_text_in_a_user_turn() {
        let messages = messages_of(json!({
            "messages": [
                { "role": "user", "content": "go" },
                { "role": "assistant", "tool_calls": [
                    { "id": "call_1", "type": "function", "function": { "name": "f", "arguments": "{}" } },
                ] },
                { "role": "user", "content": "also, hurry" },
                { "role": "tool", "tool_call_id": "call_1", "content": "done" },
            ],
        }));
        assert_eq!(
            messages[2],
            json!({ "role": "user", "content": [
                { "type": "tool_result", "tool_use_id": "call_1", "content": "done" },
                { "type": "text", "text": "also, hurry" },
            ] })
        );
    }

    #[test]
    fn tool_ids_are_sanitized_the_same_way_on_both_sides() {
        let messages = messages_of(json!({
            "messages": [
                { "role": "user", "content": "go" },
                { "role": "assistant", "tool_calls": [
                    { "id": "call.1:fc/é", "type": "function", "function": { "name": "f", "arguments": "{}" } },
                ] },
                { "role": "tool", "tool_call_id": "call.1:fc/é", "content": "done" },
            ],
        }));
        assert_eq!(messages[1]["content"][0]["id"], json!("call_1_fc__"));
        assert_eq!(
            messages[2]["content"][0]["tool_use_id"],
            json!("call_1_fc__")
        );
    }

    #[test]
    fn valid_tool_ids_are_left_alone() {
        assert_eq!(sanitize_tool_id("toolu_01A-bc"), "toolu_01A-bc");
    }

    #[test]
    fn system_messages_in_the_middle_of_the_conversation_are_hoisted() {
        let out = translate(json!({
            "messages": [
                { "role": "system", "content": "You are terse." },
                { "role": "user", "content": "one" },
                { "role": "assistant", "content": "ok" },
                { "role": "system", "content": "Now answer in French." },
                { "role": "user", "content": "two" },
            ],
        }));
        assert_eq!(
            out["system"],
            json!("You are terse.\n\nNow answer in French.")
        );
        assert_eq!(
            out["messages"],
            json!([
                { "role": "user", "content": "one" },
                { "role": "assistant", "content": "ok" },
                { "role": "user", "content": "two" },
            ])
        );
    }

    #[test]
    fn user_turns_around_a_hoisted_system_message_are_merged() {
        let messages = messages_of(json!({
            "messages": [
                { "role": "user", "content": "one" },
                { "role": "developer", "content": "note" },
                { "role": "user", "content": "two" },
            ],
        }));
        assert_eq!(
            messages,
            json!([{ "role": "user", "content": [
                { "type": "text", "text": "one" },
                { "type": "text", "text": "two" },
            ] }])
        );
    }

    #[test]
    fn a_tool_call_repeated_in_content_and_tool_calls_appears_once() {
        let messages = messages_of(json!({
            "messages": [
                { "role": "user", "content": "go" },
                { "role": "assistant",
                  "content": [
                      { "type": "text", "text": "Calling." },
                      { "type": "tool_use", "id": "call.1", "name": "f", "input": { "x": 1 } },
                  ],
                  "tool_calls": [
                      { "id": "call.1", "type": "function", "function": { "name": "f", "arguments": "{\"x\":1}" } },
                  ] },
            ],
        }));
        assert_eq!(
            messages[1],
            json!({ "role": "assistant", "content": [
                { "type": "text", "text": "Calling." },
                { "type": "tool_use", "id": "call_1", "name": "f", "input": { "x": 1 } },
            ] })
        );
    }

    #[test]
    fn a_tool_call_repeated_in_merged_assistant_messages_appears_once() {
        let call = json!({ "id": "call_1", "type": "function", "function": { "name": "f", "arguments": "{}" } });
        let messages = messages_of(json!({
            "messages": [
                { "role": "user", "content": "go" },
                { "role": "assistant", "tool_calls": [call] },
                { "role": "assistant", "tool_calls": [call] },
            ],
        }));
        assert_eq!(
            messages[1],
            json!({ "role": "assistant", "content": [
                { "type": "tool_use", "id": "call_1", "name": "f", "input": {} },
            ] })
        );
    }

    #[test]
    fn a_conversation_starting_with_an_assistant_turn_is_left_as_it_is() {
        let messages = messages_of(json!({
            "messages": [
                { "role": "system", "content": "s" },
                { "role": "assistant", "content": "Hello, how can I help?" },
                { "role": "user", "content": "Hi" },
            ],
        }));
        assert_eq!(
            messages,
            json!([
                { "role": "assistant", "content": "Hello, how can I help?" },
                { "role": "user", "content": "Hi" },
            ])
        );
    }

    #[test]
    fn a_full_tool_round_trip_translates_to_alternating_turns() {
        let out = translate(json!({
            "model": "gpt-4o",
            "messages": [
                { "role": "system", "content": "You are an agent." },
                { "role": "user", "content": "List files" },
                { "role": "assistant", "content": "", "tool_calls": [
                    { "id": "call_ls", "type": "function", "function": { "name": "ls", "arguments": "{\"path\":\".\"}" } },
                ] },
                { "role": "tool", "tool_call_id": "call_ls", "content": "a.txt\nb.txt" },
            ],
            "tools": [{ "type": "function", "function": {
                "name": "ls", "description": "List a directory",
                "parameters": { "type": "object", "properties": { "path": { "type": "string" } } },
            } }],
            "tool_choice": "auto",
            "temperature": 0.3,
            "max_tokens": 512,
        }));
        assert_eq!(
            out,
            json!({
                "model": "claude-test",
                "system": "You are an agent.",
                "max_tokens": 512,
                "temperature": 0.3,
                "messages": [
                    { "role": "user", "content": "List files" },
                    { "role": "assistant", "content": [
                        { "type": "tool_use", "id": "call_ls", "name": "ls", "input": { "path": "." } },
                    ] },
                    { "role": "user", "content": [
                        { "type": "tool_result", "tool_use_id": "call_ls", "content": "a.txt\nb.txt" },
                    ] },
                ],
                "tools": [{
                    "name": "ls",
                    "description": "List a directory",
                    "input_schema": { "type": "object", "properties": { "path": { "type": "string" } } },
                }],
                "tool_choice": { "type": "auto" },
            })
        );
    }

    // Reasoning: the model-name rule and the reasoning_effort row.

    #[test]
    fn the_thinking_style_rule_on_the_names_it_was_tested_on() {
        for (model, style) in [
            ("claude-opus-4-7", ThinkingStyle::Adaptive),
            ("claude-sonnet-4-6", ThinkingStyle::Adaptive),
            ("claude-opus-5", ThinkingStyle::Adaptive),
            ("claude-sonnet-4-5", ThinkingStyle::Budget),
            ("claude-opus-4-1", ThinkingStyle::Budget),
            ("claude-3-7-sonnet-latest", ThinkingStyle::Budget),
        ] {
            assert_eq!(thinking_style(model), style, "{model}");
        }
    }

    #[test]
    fn the_thinking_style_rule_reads_dated_and_provider_prefixed_names() {
        for (model, style) in [
            ("claude-sonnet-4-5-20250929", ThinkingStyle::Budget),
            ("claude-opus-4-20250514", ThinkingStyle::Budget),
            ("claude-opus-4-1@20250805", ThinkingStyle::Budget),
            (
                "us.anthropic.claude-3-5-sonnet-20240620-v1:0",
                ThinkingStyle::Budget,
            ),
            ("claude-haiku-4-5", ThinkingStyle::Budget),
            ("anthropic.claude-opus-4-6-v1", ThinkingStyle::Adaptive),
            ("anthropic/claude-sonnet-4.6", ThinkingStyle::Adaptive),
            ("Claude-Opus-4-7", ThinkingStyle::Adaptive),
            ("claude-sonnet-5-20270101", ThinkingStyle::Adaptive),
            // No version in the name: a model newer than the rule.
            ("claude-test", ThinkingStyle::Adaptive),
        ] {
            assert_eq!(thinking_style(model), style, "{model}");
        }
    }

    fn with_model(model: &str, max: Option<i64>, openai: Value) -> Value {
        translate_request(&openai, model, max).expect("translates")
    }

    fn hi(extra: Value) -> Value {
        let mut request = json!({ "messages": [{ "role": "user", "content": "Hi" }] });
        for (k, v) in extra.as_object().unwrap() {
            request[k] = v.clone();
        }
        request
    }

    #[test]
    fn reasoning_effort_on_an_adaptive_model_sends_adaptive_thinking_and_an_effort() {
        for (effort, anthropic) in [
            ("minimal", "low"),
            ("low", "low"),
            ("medium", "medium"),
            ("high", "high"),
            ("xhigh", "max"),
        ] {
            let out = with_model(
                "claude-opus-4-7",
                None,
                hi(json!({ "reasoning_effort": effort, "max_tokens": 2000 })),
            );
            assert_eq!(out["thinking"], json!({ "type": "adaptive" }), "{effort}");
            assert_eq!(
                out["output_config"],
                json!({ "effort": anthropic }),
                "{effort}"
            );
            assert_eq!(out["max_tokens"], json!(2000), "{effort}");
            assert!(out.get("reasoning_effort").is_none());
        }
    }

    #[test]
    fn reasoning_effort_on_a_budget_model_sends_a_budget_below_max_tokens() {
        for (effort, budget) in [
            ("minimal", 1024),
            ("low", 2048),
            ("medium", 4096),
            ("high", 16384),
            ("xhigh", 32768),
        ] {
            let out = with_model(
                "claude-sonnet-4-5",
                None,
                hi(json!({ "reasoning_effort": effort, "max_tokens": 64000 })),
            );
            assert_eq!(
                out["thinking"],
                json!({ "type": "enabled", "budget_tokens": budget }),
                "{effort}"
            );
            assert_eq!(out["max_tokens"], json!(64000), "{effort}");
            assert!(out.get("output_config").is_none(), "{effort}");
        }
    }

    #[test]
    fn a_max_tokens_not_above_the_budget_is_raised_to_budget_plus_1024() {
        let out = with_model(
            "claude-opus-4-1",
            None,
            hi(json!({ "reasoning_effort": "medium", "max_tokens": 4096 })),
        );
        assert_eq!(out["thinking"]["budget_tokens"], json!(4096));
        assert_eq!(out["max_tokens"], json!(5120));
        // Without any max_tokens the default 4096 is raised the same way.
        let out = with_model(
            "claude-opus-4-1",
            None,
            hi(json!({ "reasoning_effort": "high" })),
        );
        assert_eq!(out["thinking"]["budget_tokens"], json!(16384));
        assert_eq!(out["max_tokens"], json!(17408));
    }

    #[test]
    fn a_model_cap_below_budget_plus_1024_shrinks_the_budget() {
        let out = with_model(
            "claude-3-7-sonnet-latest",
            Some(8192),
            hi(json!({ "reasoning_effort": "high", "max_tokens": 8192 })),
        );
        assert_eq!(
            out["thinking"],
            json!({ "type": "enabled", "budget_tokens": 7168 })
        );
        assert_eq!(out["max_tokens"], json!(8192));
    }

    #[test]
    fn a_budget_that_would_fall_below_1024_sends_no_thinking() {
        let out = with_model(
            "claude-3-7-sonnet-latest",
            Some(2000),
            hi(json!({ "reasoning_effort": "low", "temperature": 0.5 })),
        );
        assert!(out.get("thinking").is_none());
        assert_eq!(out["max_tokens"], json!(2000));
        assert_eq!(out["temperature"], json!(0.5));
    }

    #[test]
    fn with_thinking_on_temperature_and_top_p_are_not_sent() {
        for model in ["claude-opus-4-7", "claude-sonnet-4-5"] {
            let out = with_model(
                model,
                None,
                hi(json!({ "reasoning_effort": "low", "temperature": 0.2, "top_p": 0.9 })),
            );
            assert!(out.get("thinking").is_some(), "{model}");
            assert!(out.get("temperature").is_none(), "{model}");
            assert!(out.get("top_p").is_none(), "{model}");
        }
        // A bad value is still a bad request.
        let err = translate_request(
            &hi(json!({ "reasoning_effort": "low", "temperature": "hot" })),
            "claude-opus-4-7",
            None,
        )
        .unwrap_err();
        assert_eq!(err.0, "`temperature` must be a number");
    }

    #[test]
    fn a_tool_choice_that_forces_a_tool_sends_no_thinking() {
        for choice in [
            json!("required"),
            json!({ "type": "function", "function": { "name": "f" } }),
        ] {
            let out = with_model(
                "claude-opus-4-7",
                None,
                hi(json!({
                    "reasoning_effort": "high",
                    "tools": [{ "type": "function", "function": { "name": "f" } }],
                    "tool_choice": choice,
                    "temperature": 0.3,
                })),
            );
            assert!(out.get("thinking").is_none(), "{choice}");
            assert!(out.get("output_config").is_none(), "{choice}");
            assert_eq!(out["temperature"], json!(0.3), "{choice}");
        }
        let out = with_model(
            "claude-opus-4-7",
            None,
            hi(json!({
                "reasoning_effort": "high",
                "tools": [{ "type": "function", "function": { "name": "f" } }],
                "tool_choice": "auto",
            })),
        );
        assert_eq!(out["thinking"], json!({ "type": "adaptive" }));
    }

    #[test]
    fn reasoning_effort_none_sends_no_thinking_and_unknown_levels_are_rejected() {
        let out = with_model(
            "claude-opus-4-7",
            None,
            hi(json!({ "reasoning_effort": "none" })),
        );
        assert!(out.get("thinking").is_none());
        assert!(out.get("output_config").is_none());
        assert_eq!(
            translate_err(hi(json!({ "reasoning_effort": "extreme" }))),
            "`reasoning_effort` \"extreme\" is not supported (none, minimal, low, medium, high, xhigh)"
        );
        assert_eq!(
            translate_err(hi(json!({ "reasoning_effort": 3 }))),
            "`reasoning_effort` must be a string"
        );
    }

    #[test]
    fn effort_and_structured_output_share_output_config() {
        let out = with_model(
            "claude-sonnet-4-6",
            None,
            hi(json!({
                "reasoning_effort": "medium",
                "response_format": { "type": "json_schema", "json_schema": { "name": "x", "schema": { "type": "object" } } },
            })),
        );
        assert_eq!(
            out["output_config"],
            json!({ "effort": "medium", "format": { "type": "json_schema", "schema": { "type": "object" } } })
        );
    }

    // cache_control.

    #[test]
    fn cache_control_on_content_parts_goes_on_their_blocks() {
        let marker = json!({ "type": "ephemeral", "ttl": "1h" });
        let messages = messages_of(json!({
            "messages": [{ "role": "user", "content": [
                { "type": "text", "text": "A long document", "cache_control": marker },
                { "type": "image_url", "image_url": { "url": "https://example.com/a.png" },
                  "cache_control": { "type": "ephemeral" } },
                { "type": "text", "text": "Question?" },
            ] }],
        }));
        assert_eq!(
            messages[0]["content"],
            json!([
                { "type": "text", "text": "A long document", "cache_control": marker },
                { "type": "image", "source": { "type": "url", "url": "https://example.com/a.png" },
                  "cache_control": { "type": "ephemeral" } },
                { "type": "text", "text": "Question?" },
            ])
        );
    }

    #[test]
    fn cache_control_on_an_empty_text_part_is_not_sent_with_an_empty_block() {
        let messages = messages_of(json!({
            "messages": [{ "role": "user", "content": [
                { "type": "text", "text": "Hello" },
                { "type": "text", "text": "  ", "cache_control": { "type": "ephemeral" } },
            ] }],
        }));
        assert_eq!(
            messages[0]["content"],
            json!([{ "type": "text", "text": "Hello" }])
        );
    }

    #[test]
    fn cache_control_on_assistant_and_tool_message_parts_is_kept() {
        let messages = messages_of(json!({
            "messages": [
                { "role": "user", "content": "go" },
                { "role": "assistant", "content": [
                    { "type": "text", "text": "Calling.", "cache_control": { "type": "ephemeral" } },
                ], "tool_calls": [
                    { "id": "call_1", "type": "function", "function": { "name": "f", "arguments": "{}" } },
                ] },
                { "role": "tool", "tool_call_id": "call_1", "content": [
                    { "type": "text", "text": "result", "cache_control": { "type": "ephemeral" } },
                ] },
            ],
        }));
        assert_eq!(
            messages[1]["content"][0],
            json!({ "type": "text", "text": "Calling.", "cache_control": { "type": "ephemeral" } })
        );
        assert_eq!(
            messages[2]["content"][0]["content"],
            json!([{ "type": "text", "text": "result", "cache_control": { "type": "ephemeral" } }])
        );
    }

    #[test]
    fn a_marked_system_part_makes_system_a_list_of_text_blocks() {
        let out = translate(json!({
            "messages": [
                { "role": "system", "content": "Be brief." },
                { "role": "developer", "content": [
                    { "type": "text", "text": "Tools: " },
                    { "type": "text", "text": "" },
                    { "type": "text", "text": "a long manual", "cache_control": { "type": "ephemeral" } },
                ] },
                { "role": "user", "content": "Hi" },
            ],
        }));
        assert_eq!(
            out["system"],
            json!([
                { "type": "text", "text": "Be brief." },
                { "type": "text", "text": "Tools: " },
                { "type": "text", "text": "a long manual", "cache_control": { "type": "ephemeral" } },
            ])
        );
    }

    #[test]
    fn unmarked_system_parts_are_still_joined_into_a_string() {
        let out = translate(json!({
            "messages": [
                { "role": "developer", "content": [
                    { "type": "text", "text": "one " },
                    { "type": "text", "text": "two" },
                ] },
                { "role": "system", "content": "three" },
                { "role": "user", "content": "Hi" },
            ],
        }));
        assert_eq!(out["system"], json!("one two\n\nthree"));
    }

    #[test]
    fn cache_control_on_a_tool_goes_on_the_anthropic_tool() {
        let out = translate(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "tools": [
                { "type": "function", "function": { "name": "a" } },
                { "type": "function", "function": { "name": "b" }, "cache_control": { "type": "ephemeral" } },
            ],
        }));
        assert!(out["tools"][0].get("cache_control").is_none());
        assert_eq!(
            out["tools"][1]["cache_control"],
            json!({ "type": "ephemeral" })
        );
    }

    #[test]
    fn a_cache_control_that_is_not_an_object_is_rejected_naming_the_part() {
        let err = translate_err(json!({
            "messages": [{ "role": "user", "content": [
                { "type": "text", "text": "Hi", "cache_control": "ephemeral" },
            ] }],
        }));
        assert_eq!(
            err,
            "messages[0].content[0].cache_control must be an object"
        );
        let err = translate_err(json!({
            "messages": [{ "role": "user", "content": "Hi" }],
            "tools": [{ "type": "function", "function": { "name": "a" }, "cache_control": true }],
        }));
        assert_eq!(err, "tools[0].cache_control must be an object");
    }

    // thinking_blocks sent back.

    #[test]
    fn thinking_blocks_go_first_in_their_turn_unchanged_before_tool_use() {
        let thinking = json!([
            { "type": "thinking", "thinking": "I need the weather.", "signature": "EqQBCgIYAh==" },
            { "type": "redacted_thinking", "data": "ZW5jcnlwdGVk" },
        ]);
        let messages = messages_of(json!({
            "messages": [
                { "role": "user", "content": "Weather?" },
                { "role": "assistant", "content": "Checking.",
                  "reasoning_content": "I need the weather.",
                  "thinking_blocks": thinking,
                  "tool_calls": [
                      { "id": "toolu_1", "type": "function", "function": { "name": "weather", "arguments": "{}" } },
                  ] },
                { "role": "tool", "tool_call_id": "toolu_1", "content": "Sunny" },
            ],
        }));
        assert_eq!(
            messages[1],
            json!({ "role": "assistant", "content": [
                thinking[0], thinking[1],
                { "type": "text", "text": "Checking." },
                { "type": "tool_use", "id": "toolu_1", "name": "weather", "input": {} },
            ] })
        );
        assert!(!messages.to_string().contains("reasoning_content"));
    }

    #[test]
    fn an_assistant_text_with_thinking_blocks_is_sent_as_blocks() {
        let messages = messages_of(json!({
            "messages": [
                { "role": "user", "content": "Hi" },
                { "role": "assistant", "content": "Hello",
                  "thinking_blocks": [{ "type": "thinking", "thinking": "greet", "signature": "s" }] },
                { "role": "user", "content": "Bye" },
            ],
        }));
        assert_eq!(
            messages[1]["content"],
            json!([
                { "type": "thinking", "thinking": "greet", "signature": "s" },
                { "type": "text", "text": "Hello" },
            ])
        );
    }

    #[test]
    fn a_reasoning_content_alone_is_never_sent() {
        let messages = messages_of(json!({
            "messages": [
                { "role": "user", "content": "Hi" },
                { "role": "assistant", "content": "Hello", "reasoning_content": "greet them" },
                { "role": "user", "content": "Bye" },
            ],
        }));
        assert_eq!(
            messages[1],
            json!({ "role": "assistant", "content": "Hello" })
        );
    }

    #[test]
    fn malformed_thinking_blocks_are_rejected_naming_the_block() {
        for (blocks, message) in [
            (json!("x"), "messages[1].thinking_blocks must be an array"),
            (
                json!([{ "type": "thinking", "thinking": "t" }]),
                "messages[1].thinking_blocks[0] must have string `thinking` and `signature` fields",
            ),
            (
                json!([{ "type": "redacted_thinking" }]),
                "messages[1].thinking_blocks[0] must have a string `data`",
            ),
            (
                json!([{ "type": "text", "text": "t" }]),
                "messages[1].thinking_blocks[0] must be a thinking or redacted_thinking block",
            ),
        ] {
            let err = translate_err(json!({
                "messages": [
                    { "role": "user", "content": "Hi" },
                    { "role": "assistant", "content": "Hello", "thinking_blocks": blocks },
                ],
            }));
            assert_eq!(err, message);
        }
    }

    // Response.

    #[test]
    fn a_text_response_becomes_a_chat_completion() {
        let out = translate_response(
            &json!({
                "id": "msg_01",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [{ "type": "text", "text": "Hello!" }],
                "stop_reason": "end_turn",
                "stop_sequence": null,
                "usage": { "input_tokens": 10, "output_tokens": 3 },
            }),
            1_700_000_000,
        );
        assert_eq!(
            out,
            json!({
                "id": "msg_01",
                "object": "chat.completion",
                "created": 1_700_000_000u64,
                "model": "claude-sonnet-4-5",
                "choices": [{
                    "index": 0,
                    "message": { "role": "assistant", "content": "Hello!" },
                    "finish_reason": "stop",
                }],
                "usage": { "prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13,
                           "prompt_tokens_details": { "cached_tokens": 0 } },
            })
        );
    }

    #[test]
    fn all_text_blocks_are_joined_and_other_block_types_are_not_passed_on() {
        let out = translate_response(
            &json!({
                "id": "msg_02",
                "model": "claude-test",
                "content": [
                    { "type": "text", "text": "Hello, " },
                    { "type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {} },
                    { "type": "text", "text": "world." },
                ],
                "stop_reason": "end_turn",
            }),
            1,
        );
        assert_eq!(
            out["choices"][0]["message"],
            json!({ "role": "assistant", "content": "Hello, world." })
        );
    }

    #[test]
    fn thinking_blocks_become_reasoning_content_and_come_back_whole_in_thinking_blocks() {
        let out = translate_response(
            &json!({
                "id": "msg_02",
                "model": "claude-test",
                "content": [
                    { "type": "thinking", "thinking": "The user wants ", "signature": "sig-1" },
                    { "type": "redacted_thinking", "data": "ZW5jcnlwdGVk" },
                    { "type": "thinking", "thinking": "the weather.", "signature": "sig-2" },
                    { "type": "text", "text": "Checking." },
                    { "type": "tool_use", "id": "toolu_1", "name": "weather", "input": {} },
                ],
                "stop_reason": "tool_use",
            }),
            1,
        );
        let message = &out["choices"][0]["message"];
        assert_eq!(message["content"], json!("Checking."));
        assert_eq!(
            message["reasoning_content"],
            json!("The user wants the weather.")
        );
        assert_eq!(
            message["thinking_blocks"],
            json!([
                { "type": "thinking", "thinking": "The user wants ", "signature": "sig-1" },
                { "type": "redacted_thinking", "data": "ZW5jcnlwdGVk" },
                { "type": "thinking", "thinking": "the weather.", "signature": "sig-2" },
            ])
        );
        assert_eq!(message["tool_calls"][0]["id"], json!("toolu_1"));
    }

    #[test]
    fn only_redacted_thinking_gives_thinking_blocks_without_reasoning_content() {
        let out = translate_response(
            &json!({
                "id": "m", "model": "m", "stop_reason": "end_turn",
                "content": [
                    { "type": "redacted_thinking", "data": "ZW5j" },
                    { "type": "text", "text": "Hi" },
                ],
            }),
            1,
        );
        let message = &out["choices"][0]["message"];
        assert!(message.get("reasoning_content").is_none());
        assert_eq!(
            message["thinking_blocks"],
            json!([{ "type": "redacted_thinking", "data": "ZW5j" }])
        );
    }

    #[test]
    fn without_thinking_there_are_no_reasoning_fields() {
        let out = translate_response(
            &json!({ "id": "m", "model": "m", "stop_reason": "end_turn",
                     "content": [{ "type": "text", "text": "Hi" }] }),
            1,
        );
        let message = &out["choices"][0]["message"];
        assert!(message.get("reasoning_content").is_none());
        assert!(message.get("thinking_blocks").is_none());
    }

    #[test]
    fn tool_use_blocks_become_tool_calls_with_json_string_arguments() {
        let out = translate_response(
            &json!({
                "id": "msg_03",
                "model": "claude-test",
                "content": [
                    { "type": "tool_use", "id": "toolu_1", "name": "weather", "input": { "city": "Paris", "days": 2 } },
                    { "type": "tool_use", "id": "toolu_2", "name": "time", "input": {} },
                ],
                "stop_reason": "tool_use",
                "usage": { "input_tokens": 5, "output_tokens": 7 },
            }),
            42,
        );
        assert_eq!(
            out["choices"][0],
            json!({
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [
                        { "id": "toolu_1", "type": "function", "function": { "name": "weather", "arguments": "{\"city\":\"Paris\",\"days\":2}" } },
                        { "id": "toolu_2", "type": "function", "function": { "name": "time", "arguments": "{}" } },
                    ],
                },
                "finish_reason": "tool_calls",
            })
        );
    }

    #[test]
    fn content_is_null_when_there_is_no_text_block() {
        let out = translate_response(
            &json!({ "id": "msg_04", "model": "m", "content": [], "stop_reason": "end_turn" }),
            1,
        );
        assert_eq!(out["choices"][0]["message"]["content"], Value::Null);
        assert!(out["choices"][0]["message"].get("tool_calls").is_none());
    }

    #[test]
    fn usage_counts_cache_tokens_as_prompt_tokens() {
        let out = translate_response(
            &json!({
                "id": "msg_05",
                "model": "m",
                "content": [{ "type": "text", "text": "x" }],
                "stop_reason": "end_turn",
                "usage": {
                    "input_tokens": 10,
                    "cache_creation_input_tokens": 100,
                    "cache_read_input_tokens": 1000,
                    "output_tokens": 5,
                },
            }),
            1,
        );
        assert_eq!(
            out["usage"],
            json!({ "prompt_tokens": 1110, "completion_tokens": 5, "total_tokens": 1115,
                    "prompt_tokens_details": { "cached_tokens": 1000 } })
        );
    }

    #[test]
    fn usage_is_left_out_when_upstream_sent_none() {
        let out = translate_response(
            &json!({ "id": "msg_06", "model": "m", "content": [{ "type": "text", "text": "x" }], "stop_reason": "end_turn" }),
            1,
        );
        assert!(out.get("usage").is_none());
    }

    #[test]
    fn usage_from_anthropic_adds_cache_tokens_and_treats_missing_ones_as_zero() {
        assert_eq!(
            usage_from_anthropic(&json!({
                "input_tokens": 3,
                "cache_creation_input_tokens": null,
                "cache_read_input_tokens": 4,
                "output_tokens": 9,
            })),
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 9
            })
        );
        assert_eq!(
            usage_from_anthropic(&json!({ "output_tokens": 12 })),
            Some(Usage {
                prompt_tokens: 0,
                completion_tokens: 12
            })
        );
    }

    #[test]
    fn huge_upstream_token_counts_saturate_instead_of_overflowing() {
        let out = translate_response(
            &json!({
                "id": "msg_07",
                "model": "m",
                "content": [{ "type": "text", "text": "x" }],
                "stop_reason": "end_turn",
                "usage": {
                    "input_tokens": i64::MAX,
                    "cache_read_input_tokens": i64::MAX,
                    "output_tokens": i64::MAX,
                },
            }),
            1,
        );
        assert_eq!(
            out["usage"],
            json!({ "prompt_tokens": i64::MAX, "completion_tokens": i64::MAX, "total_tokens": i64::MAX,
                    "prompt_tokens_details": { "cached_tokens": i64::MAX } })
        );
    }

    #[test]
    fn many_repeated_tool_calls_are_deduplicated_quickly() {
        // 200k calls with 100k distinct ids: a list lookup would take minutes here.
        let calls: Vec<Value> = (0..200_000)
            .map(|i| {
                json!({ "id": format!("call_{}", i % 100_000), "type": "function",
                             "function": { "name": "f", "arguments": "{}" } })
            })
            .collect();
        let started = std::time::Instant::now();
        let messages = messages_of(json!({
            "messages": [
                { "role": "user", "content": "go" },
                { "role": "assistant", "tool_calls": calls },
            ],
        }));
        assert_eq!(messages[1]["content"].as_array().unwrap().len(), 100_000);
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
    }

    #[test]
    fn usage_from_anthropic_is_none_without_a_usage_object() {
        assert_eq!(usage_from_anthropic(&Value::Null), None);
        assert_eq!(usage_from_anthropic(&json!("lots")), None);
    }

    #[test]
    fn end_turn_finishes_with_stop() {
        assert_eq!(finish_reason(Some("end_turn")), "stop");
    }

    #[test]
    fn stop_sequence_finishes_with_stop() {
        assert_eq!(finish_reason(Some("stop_sequence")), "stop");
    }

    #[test]
    fn max_tokens_finishes_with_length() {
        assert_eq!(finish_reason(Some("max_tokens")), "length");
    }

    #[test]
    fn model_context_window_exceeded_finishes_with_length() {
        assert_eq!(
            finish_reason(Some("model_context_window_exceeded")),
            "length"
        );
    }

    #[test]
    fn tool_use_finishes_with_tool_calls() {
        assert_eq!(finish_reason(Some("tool_use")), "tool_calls");
    }

    #[test]
    fn refusal_finishes_with_content_filter() {
        assert_eq!(finish_reason(Some("refusal")), "content_filter");
    }

    #[test]
    fn pause_turn_unknown_and_missing_stop_reasons_finish_with_stop() {
        assert_eq!(finish_reason(Some("pause_turn")), "stop");
        assert_eq!(finish_reason(Some("something_new")), "stop");
        assert_eq!(finish_reason(None), "stop");
    }

    #[test]
    fn the_response_finish_reason_is_mapped() {
        let out = translate_response(
            &json!({ "id": "m", "model": "m", "content": [{ "type": "text", "text": "cut" }], "stop_reason": "max_tokens" }),
            1,
        );
        assert_eq!(out["choices"][0]["finish_reason"], json!("length"));
    }

    #[test]
    fn an_anthropic_error_becomes_an_openai_error() {
        let out = translate_error(&json!({
            "type": "error",
            "error": { "type": "overloaded_error", "message": "Overloaded" },
        }));
        assert_eq!(
            out,
            json!({ "error": { "message": "Overloaded", "type": "overloaded_error", "code": null } })
        );
    }

    #[test]
    fn an_unexpected_error_body_becomes_a_truncated_upstream_error() {
        let out = translate_error(&json!({ "detail": "x".repeat(5000) }));
        assert_eq!(out["error"]["type"], json!("upstream_error"));
        assert_eq!(out["error"]["code"], Value::Null);
        let message = out["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("upstream returned an unexpected error body: {\"detail\":\"xxx")
        );
        assert!(message.chars().count() < 600, "{} chars", message.len());
    }

    #[test]
    fn an_empty_error_body_becomes_an_upstream_error() {
        assert_eq!(
            translate_error(&Value::Null),
            json!({ "error": {
                "message": "upstream returned an error without a body",
                "type": "upstream_error",
                "code": null,
            } })
        );
    }

    #[test]
    fn translate_error_displays_its_message() {
        assert_eq!(
            TranslateError("`n` > 1 is not supported for Anthropic models".into()).to_string(),
            "`n` > 1 is not supported for Anthropic models"
        );
    }
}
