//! Translation of an Anthropic Messages event stream into OpenAI `chat.completion.chunk` events.
//!
//! Pure and incremental: the relay feeds upstream bytes as they arrive, in pieces of any size,
//! and sends on whatever bytes come back. The mapping is the Streaming table of ANTHROPIC.md.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use crate::sse;
use crate::usage::Usage;

const DONE: &[u8] = b"data: [DONE]\n\n";

/// One answer's translation state.
pub struct Translator {
    parser: sse::Parser,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// Once a chunk went out, `id` and `model` are fixed: all chunks of one answer must agree.
    sent_chunk: bool,
    /// Anthropic content-block index → OpenAI tool-call index (tool_use blocks in start order).
    tool_calls: HashMap<u64, usize>,
    /// The answer's thinking blocks once one started (boxed: most answers have none, and the
    /// translator lives in the relay's state next to much smaller ones).
    thinking: Option<Box<ThinkingBlocks>>,
    input_tokens: Option<i64>,
    cache_creation_input_tokens: Option<i64>,
    cache_read_input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    finish_reason: Option<&'static str>,
    done: bool,
    /// Why the stream ended in an error event, for the audit row.
    error: Option<String>,
}

/// Thinking and redacted_thinking blocks, whole, in start order, for the finish chunk's
/// `delta.thinking_blocks`.
#[derive(Default)]
struct ThinkingBlocks {
    blocks: Vec<Value>,
    /// Anthropic content-block index → position in `blocks`.
    index: HashMap<u64, usize>,
}

impl Translator {
    /// `created`: unix seconds shared by all chunks; `model`: the chunks' `model` until
    /// `message_start` names Anthropic's; `include_usage`: the request had
    /// `stream_options.include_usage = true`.
    ///
    /// The chunk id is `message_start`'s `message.id`, which comes first; should the upstream
    /// send anything before it (or no id), `chatcmpl-{created}` is used.
    pub fn new(created: u64, model: &str, include_usage: bool) -> Self {
        Translator {
            parser: sse::Parser::new(),
            id: format!("chatcmpl-{created}"),
            created,
            model: model.to_owned(),
            include_usage,
            sent_chunk: false,
            tool_calls: HashMap::new(),
            thinking: None,
            input_tokens: None,
            cache_creation_input_tokens: None,
            cache_read_input_tokens: None,
            output_tokens: None,
            finish_reason: None,
            done: false,
            error: None,
        }
    }

    /// Feeds raw upstream bytes (any split); returns the OpenAI SSE bytes to send now
    /// (possibly none). Once [`Translator::is_done`], further bytes are ignored.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        let (events, too_long) = match self.parser.feed(bytes) {
            Ok(events) => (events, false),
            Err(err) => (err.completed, true),
        };
        for event in &events {
            if self.done {
                break;
            }
            self.handle(event, &mut out);
        }
        if too_long && !self.done {
            self.fail(
                "upstream_error",
                "upstream stream event too large",
                &mut out,
            );
        }
        out
    }

    /// The upstream ended (EOF). Without a `message_stop` or error before it, the answer is
    /// cut short: an error event is sent (and no `[DONE]`, so the client cannot mistake the
    /// truncated answer for a whole one). Otherwise nothing more.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.done {
            self.fail("upstream_error", "upstream stream ended early", &mut out);
        }
        out
    }

    /// True once `data: [DONE]` or an error event was produced: the relay stops reading.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Usage seen so far, `None` before any. Each Anthropic field keeps its latest reported
    /// value (`message_delta` may repeat `message_start`'s input and cache counts, and its
    /// `output_tokens` is cumulative), so nothing is counted twice.
    pub fn usage(&self) -> Option<Usage> {
        let fields = [
            self.input_tokens,
            self.cache_creation_input_tokens,
            self.cache_read_input_tokens,
            self.output_tokens,
        ];
        if fields.iter().all(Option::is_none) {
            return None;
        }
        Some(Usage {
            // Upstream-supplied counts: saturate rather than overflow.
            prompt_tokens: fields[..3]
                .iter()
                .fold(0i64, |sum, n| sum.saturating_add(n.unwrap_or(0))),
            completion_tokens: self.output_tokens.unwrap_or(0),
        })
    }

    /// The OpenAI finish_reason once `message_delta` was seen (the tests look at it).
    #[cfg(test)]
    pub fn finish_reason(&self) -> Option<&str> {
        self.finish_reason
    }

    fn handle(&mut self, event: &sse::Event, out: &mut Vec<u8>) {
        let Ok(value) = serde_json::from_str::<Value>(&event.data) else {
            self.fail(
                "upstream_error",
                "upstream sent a stream event that is not valid JSON",
                out,
            );
            return;
        };
        // The JSON `type` is authoritative; the SSE `event:` name is the same on Anthropic's
        // streams and serves only when the JSON lacks one.
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .or(event.event.as_deref())
            .unwrap_or("");
        match kind {
            "message_start" => self.message_start(&value, out),
            "content_block_start" => self.content_block_start(&value, out),
            "content_block_delta" => self.content_block_delta(&value, out),
            "message_delta" => self.message_delta(&value, out),
            "message_stop" => self.message_stop(out),
            "error" => {
                let error = value.get("error");
                let field = |name| error.and_then(|e| e.get(name)).and_then(Value::as_str);
                let kind = field("type").unwrap_or("upstream_error");
                let message = field("message").unwrap_or("upstream error");
                self.fail(kind, message, out);
            }
            // `ping`, `content_block_stop`, and event types newer than this code.
            _ => {}
        }
    }

    fn message_start(&mut self, value: &Value, out: &mut Vec<u8>) {
        let message = value.get("message");
        let text = |name| message.and_then(|m| m.get(name)).and_then(Value::as_str);
        if !self.sent_chunk {
            if let Some(id) = text("id") {
                id.clone_into(&mut self.id);
            }
            if let Some(model) = text("model") {
                model.clone_into(&mut self.model);
            }
        }
        if let Some(usage) = message.and_then(|m| m.get("usage")) {
            self.record_usage(usage);
        }
        let delta = Delta {
            role: Some("assistant"),
            content: Some(""),
            ..Delta::default()
        };
        self.chunk(delta, None, out);
    }

    fn content_block_start(&mut self, value: &Value, out: &mut Vec<u8>) {
        let Some(block) = value.get("content_block") else {
            return;
        };
        let text = |name| block.get(name).and_then(Value::as_str).unwrap_or("");
        match text("type") {
            "tool_use" => {
                let i = self.tool_calls.len();
                // Without an index no delta could be routed to this call; it still gets its
                // number so later calls keep theirs.
                if let Some(index) = value.get("index").and_then(Value::as_u64) {
                    self.tool_calls.insert(index, i);
                }
                let call = ToolCall {
                    index: i,
                    id: Some(crate::anthropic::sanitize_tool_id(text("id"))),
                    kind: Some("function"),
                    function: Function {
                        name: Some(text("name")),
                        arguments: "",
                    },
                };
                self.chunk(Delta::tool_call(call), None, out);
            }
            // Anthropic opens text blocks empty; should one ever carry text, it is not lost.
            "text" if !text("text").is_empty() => {
                self.chunk(Delta::content(text("text")), None, out);
            }
            "thinking" => {
                let opening = serde_json::json!({
                    "type": "thinking",
                    "thinking": text("thinking"),
                    "signature": text("signature"),
                });
                self.start_thinking_block(value, opening);
                if !text("thinking").is_empty() {
                    self.chunk(Delta::reasoning(text("thinking")), None, out);
                }
            }
            // Nothing to show, but it must go back to Anthropic with the conversation.
            "redacted_thinking" => self.start_thinking_block(value, block.clone()),
            // Empty text blocks and block types we do not pass on.
            _ => {}
        }
    }

    fn content_block_delta(&mut self, value: &Value, out: &mut Vec<u8>) {
        let Some(delta) = value.get("delta") else {
            return;
        };
        let text = |name| delta.get(name).and_then(Value::as_str).unwrap_or("");
        match text("type") {
            "text_delta" => self.chunk(Delta::content(text("text")), None, out),
            "input_json_delta" => {
                let index = value.get("index").and_then(Value::as_u64);
                // A delta for a block that never started as tool_use has nowhere to go.
                let Some(&i) = index.and_then(|index| self.tool_calls.get(&index)) else {
                    return;
                };
                let call = ToolCall {
                    index: i,
                    id: None,
                    kind: None,
                    function: Function {
                        name: None,
                        arguments: text("partial_json"),
                    },
                };
                self.chunk(Delta::tool_call(call), None, out);
            }
            "thinking_delta" => {
                self.extend_thinking_block(value, "thinking", text("thinking"));
                self.chunk(Delta::reasoning(text("thinking")), None, out);
            }
            // Only in the finish chunk's thinking_blocks.
            "signature_delta" => self.extend_thinking_block(value, "signature", text("signature")),
            // citations_delta, …: not passed on.
            _ => {}
        }
    }

    fn start_thinking_block(&mut self, value: &Value, block: Value) {
        let thinking = self.thinking.get_or_insert_with(Default::default);
        if let Some(index) = value.get("index").and_then(Value::as_u64) {
            thinking.index.insert(index, thinking.blocks.len());
        }
        thinking.blocks.push(block);
    }

    /// Appends a delta's text to a field of the thinking block it belongs to.
    fn extend_thinking_block(&mut self, value: &Value, field: &str, piece: &str) {
        let Some(thinking) = self.thinking.as_deref_mut() else {
            return;
        };
        let index = value.get("index").and_then(Value::as_u64);
        let Some(&at) = index.and_then(|index| thinking.index.get(&index)) else {
            return;
        };
        let block = &mut thinking.blocks[at];
        let mut text = block
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        text.push_str(piece);
        block[field] = Value::String(text);
    }

    fn message_delta(&mut self, value: &Value, out: &mut Vec<u8>) {
        let stop_reason = value
            .get("delta")
            .and_then(|d| d.get("stop_reason"))
            .and_then(Value::as_str);
        let reason = crate::anthropic::finish_reason(stop_reason);
        self.finish_reason = Some(reason);
        if let Some(usage) = value.get("usage") {
            self.record_usage(usage);
        }
        // Sent once: a repeated message_delta does not repeat the blocks.
        let delta = Delta {
            thinking_blocks: self
                .thinking
                .take()
                .map(|thinking| thinking.blocks)
                .filter(|blocks| !blocks.is_empty()),
            ..Delta::default()
        };
        self.chunk(delta, Some(reason), out);
    }

    fn message_stop(&mut self, out: &mut Vec<u8>) {
        if self.include_usage {
            let usage = self.usage().unwrap_or_default();
            let chunk = Chunk {
                choices: Vec::new(),
                usage: Some(ChunkUsage {
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                    total_tokens: usage.total_tokens(),
                    prompt_tokens_details: CachedTokens {
                        cached_tokens: self.cache_read_input_tokens.unwrap_or(0),
                    },
                }),
                ..self.envelope()
            };
            write_event(&chunk, out);
        }
        out.extend_from_slice(DONE);
        self.done = true;
    }

    fn record_usage(&mut self, usage: &Value) {
        let slots = [
            ("input_tokens", &mut self.input_tokens),
            (
                "cache_creation_input_tokens",
                &mut self.cache_creation_input_tokens,
            ),
            ("cache_read_input_tokens", &mut self.cache_read_input_tokens),
            ("output_tokens", &mut self.output_tokens),
        ];
        for (name, slot) in slots {
            if let Some(n) = usage.get(name).and_then(Value::as_i64) {
                *slot = Some(n);
            }
        }
    }

    /// A chunk with this answer's id, created and model, and no choices yet.
    fn envelope(&self) -> Chunk<'_> {
        Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: Vec::new(),
            usage: None,
        }
    }

    fn chunk(&mut self, delta: Delta<'_>, finish_reason: Option<&str>, out: &mut Vec<u8>) {
        let chunk = Chunk {
            choices: vec![Choice {
                index: 0,
                delta,
                finish_reason,
            }],
            ..self.envelope()
        };
        write_event(&chunk, out);
        self.sent_chunk = true;
    }

    /// Sends an OpenAI-shaped error event and ends the stream.
    fn fail(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
        let body = ErrorEvent {
            error: ErrorBody {
                message,
                kind,
                code: None,
            },
        };
        write_event(&body, out);
        self.done = true;
        self.error = Some(format!("{kind}: {message}"));
    }

    /// The error the stream ended with, when it ended in an error event.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
}

/// Appends one `data:` event holding `payload` as JSON.
fn write_event(payload: &impl Serialize, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut *out, payload).expect("a chunk serializes");
    out.extend_from_slice(b"\n\n");
}

// The shapes of OpenAI's stream chunks. Keys come in the order of the fields (OpenAI's own
// order, `id` first, which is what people read in logs); absent options are left out.

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<Choice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<ChunkUsage>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    delta: Delta<'a>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCall<'a>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_blocks: Option<Vec<Value>>,
}

impl<'a> Delta<'a> {
    fn content(text: &'a str) -> Delta<'a> {
        Delta {
            content: Some(text),
            ..Delta::default()
        }
    }

    fn reasoning(text: &'a str) -> Delta<'a> {
        Delta {
            reasoning_content: Some(text),
            ..Delta::default()
        }
    }

    fn tool_call(call: ToolCall<'a>) -> Delta<'a> {
        Delta {
            tool_calls: Some([call]),
            ..Delta::default()
        }
    }
}

#[derive(Serialize)]
struct ToolCall<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: Function<'a>,
}

#[derive(Serialize)]
struct Function<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[derive(Serialize)]
struct ChunkUsage {
    prompt_tokens: i64,
    completion_tokens: i64,
    total_tokens: i64,
    prompt_tokens_details: CachedTokens,
}

#[derive(Serialize)]
struct CachedTokens {
    cached_tokens: i64,
}

#[derive(Serialize)]
struct ErrorEvent<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    code: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A text answer as Anthropic streams it, preceded by a thinking block; multi-byte
    /// characters so that splits fall inside them.
    const TEXT_STREAM: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5-20250929","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"The user greets me."}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hello"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":", wörld 👋\n\"quoted\""}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}

event: message_stop
data: {"type":"message_stop"}

"#;

    /// Text, then two tool_use blocks (Anthropic indexes 1 and 2), on a newer API that repeats
    /// the input and cache counts in message_delta.
    const TOOL_STREAM: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-opus-4-1-20250805","stop_sequence":null,"usage":{"input_tokens":472,"cache_creation_input_tokens":100,"cache_read_input_tokens":2048,"output_tokens":2},"content":[],"stop_reason":null}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me check both cities."}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\": \"San Fra"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"ncisco, CA\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: content_block_start
data: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_01BcK3v9xAmLqP5sdr2WfYzE","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"location\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":" \"Zürich\", \"unit\": \"c\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":2}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"input_tokens":472,"cache_creation_input_tokens":100,"cache_read_input_tokens":2048,"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"#;

    fn translate(input: &[u8], include_usage: bool) -> (Translator, Vec<u8>) {
        translate_pieces(&[input], include_usage)
    }

    fn translate_pieces(pieces: &[&[u8]], include_usage: bool) -> (Translator, Vec<u8>) {
        let mut translator = Translator::new(1_700_000_000, "claude-requested", include_usage);
        let mut out = Vec::new();
        for piece in pieces {
            out.extend(translator.feed(piece));
        }
        out.extend(translator.finish());
        (translator, out)
    }

    /// The data payloads of the output, JSON-decoded except for `[DONE]` (kept as a string).
    fn payloads(out: &[u8]) -> Vec<Value> {
        let events = sse::Parser::new().feed(out).unwrap();
        assert!(
            out.is_empty() || out.ends_with(b"\n\n"),
            "output ends mid-event"
        );
        events
            .into_iter()
            .map(|e| {
                assert_eq!(e.event, None);
                if e.data == "[DONE]" {
                    Value::from("[DONE]")
                } else {
                    serde_json::from_str(&e.data).unwrap()
                }
            })
            .collect()
    }

    fn deltas(chunks: &[Value]) -> Vec<&Value> {
        chunks
            .iter()
            .filter_map(|c| c.pointer("/choices/0/delta"))
            .collect()
    }

    #[test]
    fn a_full_text_stream_becomes_role_content_finish_and_done_chunks() {
        let (translator, out) = translate(TEXT_STREAM.as_bytes(), false);
        let chunks = payloads(&out);
        assert_eq!(chunks.len(), 6);
        assert_eq!(
            chunks[0],
            json!({
                "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": "claude-sonnet-4-5-20250929",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]
            })
        );
        assert_eq!(
            chunks[1]["choices"][0]["delta"],
            json!({"reasoning_content": "The user greets me."})
        );
        assert_eq!(
            chunks[2]["choices"][0]["delta"],
            json!({"content": "Hello"})
        );
        assert_eq!(
            chunks[3]["choices"][0]["delta"],
            json!({"content": ", wörld 👋\n\"quoted\""})
        );
        assert_eq!(
            chunks[4]["choices"][0]["delta"],
            json!({"thinking_blocks": [{
                "type": "thinking",
                "thinking": "The user greets me.",
                "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds",
            }]})
        );
        assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[5], "[DONE]");
        assert!(translator.is_done());
        assert_eq!(translator.finish_reason(), Some("stop"));
    }

    #[test]
    fn chunks_start_with_the_id_in_openai_order() {
        let (_, out) = translate(TEXT_STREAM.as_bytes(), false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(
            "data: {\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"object\":\"chat.completion.chunk\",\
             \"created\":1700000000,\"model\":\"claude-sonnet-4-5-20250929\",\"choices\":[{\"index\":0,\
             \"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n"
        ));
    }

    #[test]
    fn every_chunk_of_an_answer_shares_one_id_created_and_model() {
        let (_, out) = translate(TOOL_STREAM.as_bytes(), true);
        let chunks = payloads(&out);
        let chunks = &chunks[..chunks.len() - 1];
        assert!(chunks.len() > 5);
        for chunk in chunks {
            assert_eq!(chunk["id"], "msg_014p7gG3wDgGV9EUtLvnow3U");
            assert_eq!(chunk["created"], 1_700_000_000);
            assert_eq!(chunk["model"], "claude-opus-4-1-20250805");
        }
    }

    #[test]
    fn the_given_model_and_id_fallback_serve_when_message_start_lacks_them() {
        let input = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\n";
        let mut translator = Translator::new(5, "claude-requested", false);
        let chunks = payloads(&translator.feed(input));
        assert_eq!(chunks[0]["id"], "chatcmpl-5");
        assert_eq!(chunks[0]["model"], "claude-requested");
    }

    #[test]
    fn a_tool_call_stream_numbers_two_tool_use_blocks_after_a_text_block_from_zero() {
        let (translator, out) = translate(TOOL_STREAM.as_bytes(), false);
        let chunks = payloads(&out);
        let deltas = deltas(&chunks);
        assert_eq!(deltas[1], &json!({"content": "Let me check both cities."}));
        assert_eq!(
            deltas[2],
            &json!({"tool_calls": [{
                "index": 0,
                "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""}
            }]})
        );

        let mut arguments = [String::new(), String::new()];
        for delta in &deltas {
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let i = call["index"].as_u64().unwrap() as usize;
                arguments[i].push_str(call["function"]["arguments"].as_str().unwrap());
            }
        }
        let parsed: Vec<Value> = arguments
            .iter()
            .map(|a| serde_json::from_str(a).unwrap())
            .collect();
        assert_eq!(parsed[0], json!({"location": "San Francisco, CA"}));
        assert_eq!(parsed[1], json!({"location": "Zürich", "unit": "c"}));

        let second_start = deltas
            .iter()
            .find(|d| d["tool_calls"][0]["id"] == "toolu_01BcK3v9xAmLqP5sdr2WfYzE")
            .unwrap();
        assert_eq!(second_start["tool_calls"][0]["index"], 1);

        let last = &chunks[chunks.len() - 2];
        assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[chunks.len() - 1], "[DONE]");
        assert_eq!(translator.finish_reason(), Some("tool_calls"));
    }

    #[test]
    fn tool_ids_are_sanitized_like_the_non_streaming_translation() {
        let input = concat!(
            "event: content_block_start\n",
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":",
            "{\"type\":\"tool_use\",\"id\":\"call.1:a/b\",\"name\":\"f\",\"input\":{}}}\n\n"
        );
        let mut translator = Translator::new(1, "m", false);
        let chunks = payloads(&translator.feed(input.as_bytes()));
        assert_eq!(
            chunks[0]["choices"][0]["delta"]["tool_calls"][0]["id"],
            "call_1_a_b"
        );
    }

    #[test]
    fn usage_is_counted_once_and_sent_after_message_stop_with_include_usage() {
        let (translator, out) = translate(TOOL_STREAM.as_bytes(), true);
        let chunks = payloads(&out);
        let n = chunks.len();
        assert_eq!(chunks[n - 1], "[DONE]");
        assert_eq!(
            chunks[n - 2],
            json!({
                "id": "msg_014p7gG3wDgGV9EUtLvnow3U",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": "claude-opus-4-1-20250805",
                "choices": [],
                "usage": {"prompt_tokens": 2620, "completion_tokens": 89, "total_tokens": 2709,
                          "prompt_tokens_details": {"cached_tokens": 2048}}
            })
        );
        assert_eq!(
            chunks.iter().filter(|c| c.get("usage").is_some()).count(),
            1
        );
        assert_eq!(
            translator.usage(),
            Some(Usage {
                prompt_tokens: 2620,
                completion_tokens: 89
            })
        );
    }

    #[test]
    fn no_usage_chunk_is_sent_without_include_usage() {
        let (translator, out) = translate(TEXT_STREAM.as_bytes(), false);
        let chunks = payloads(&out);
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
        assert!(chunks
            .iter()
            .all(|c| c == "[DONE]" || c["choices"].as_array().unwrap().len() == 1));
        assert_eq!(
            translator.usage(),
            Some(Usage {
                prompt_tokens: 25,
                completion_tokens: 15
            })
        );
    }

    #[test]
    fn huge_upstream_token_counts_saturate_instead_of_overflowing() {
        let max = i64::MAX;
        let start = format!(
            "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"m\",\
             \"model\":\"m\",\"usage\":{{\"input_tokens\":{max},\
             \"cache_read_input_tokens\":{max},\"output_tokens\":1}}}}}}\n\n"
        );
        let mut translator = Translator::new(1, "m", true);
        translator.feed(start.as_bytes());
        let usage = translator.usage().unwrap();
        assert_eq!(usage.prompt_tokens, max);
        assert_eq!(usage.total_tokens(), max);
    }

    #[test]
    fn usage_is_none_before_any_is_reported() {
        let mut translator = Translator::new(1, "m", true);
        translator.feed(b"event: ping\ndata: {\"type\":\"ping\"}\n\n");
        assert_eq!(translator.usage(), None);
        assert_eq!(translator.finish_reason(), None);
    }

    #[test]
    fn an_error_event_becomes_an_openai_error_and_ends_the_stream() {
        let cut = TEXT_STREAM.find("event: content_block_start").unwrap();
        let input = format!(
            "{}event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}}}\n\n{}",
            &TEXT_STREAM[..cut],
            &TEXT_STREAM[cut..]
        );
        let mut translator = Translator::new(1, "m", true);
        let out = translator.feed(input.as_bytes());
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.ends_with(
            "data: {\"error\":{\"message\":\"Overloaded\",\"type\":\"overloaded_error\",\"code\":null}}\n\n"
        ));
        let chunks = payloads(&out);
        assert_eq!(chunks.len(), 2);
        assert!(!text.contains("[DONE]"));
        assert!(translator.is_done());
        assert!(translator.feed(TEXT_STREAM.as_bytes()).is_empty());
        assert!(translator.finish().is_empty());
    }

    #[test]
    fn an_early_eof_sends_an_upstream_error_without_done() {
        let cut = TEXT_STREAM.find("event: message_delta").unwrap();
        let mut translator = Translator::new(1, "m", true);
        let out = translator.feed(&TEXT_STREAM.as_bytes()[..cut]);
        assert!(!translator.is_done());
        assert_eq!(payloads(&out).len(), 4);
        let end = translator.finish();
        assert_eq!(
            end,
            b"data: {\"error\":{\"message\":\"upstream stream ended early\",\"type\":\"upstream_error\",\"code\":null}}\n\n"
        );
        assert!(translator.is_done());
        assert!(translator.finish().is_empty());
    }

    #[test]
    fn finish_after_message_stop_adds_nothing() {
        let mut translator = Translator::new(1, "m", false);
        translator.feed(TEXT_STREAM.as_bytes());
        assert!(translator.is_done());
        assert!(translator.finish().is_empty());
    }

    #[test]
    fn ping_and_content_block_stop_produce_nothing() {
        let mut translator = Translator::new(1, "m", false);
        let out = translator.feed(
            b"event: ping\ndata: {\"type\": \"ping\"}\n\n\
              event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        );
        assert!(out.is_empty());
        assert!(!translator.is_done());
    }

    #[test]
    fn a_thinking_delta_becomes_a_reasoning_content_delta() {
        let mut translator = Translator::new(1, "m", false);
        let out = translator.feed(concat!(
            "event: content_block_start\n",
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Let me think: 2+2\"}}\n\n",
        ).as_bytes());
        let chunks = payloads(&out);
        assert_eq!(
            deltas(&chunks),
            [&json!({"reasoning_content": "Let me think: 2+2"})]
        );
    }

    #[test]
    fn signature_deltas_and_redacted_thinking_starts_produce_no_delta() {
        let mut translator = Translator::new(1, "m", false);
        let out = translator.feed(concat!(
            "event: content_block_start\n",
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"c2ln\"}}\n\n",
            "event: content_block_stop\n",
            "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: content_block_start\n",
            "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"redacted_thinking\",\"data\":\"ZW5jcnlwdGVk\"}}\n\n",
        ).as_bytes());
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    }

    #[test]
    fn the_finish_chunk_carries_the_whole_thinking_blocks_in_order() {
        let mut translator = Translator::new(1, "m", false);
        let out = translator.feed(concat!(
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Weather \"}}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"first.\"}}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"c2ln\"}}\n\n",
            "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"redacted_thinking\",\"data\":\"ZW5j\"}}\n\n",
            "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"f\",\"input\":{}}}\n\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":9}}\n\n",
        ).as_bytes());
        let chunks = payloads(&out);
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            last["choices"][0]["delta"],
            json!({"thinking_blocks": [
                {"type": "thinking", "thinking": "Weather first.", "signature": "c2ln"},
                {"type": "redacted_thinking", "data": "ZW5j"},
            ]})
        );
        // The tool call keeps index 0: thinking blocks do not count as tool calls.
        assert_eq!(
            chunks[2]["choices"][0]["delta"]["tool_calls"][0]["index"],
            0
        );
    }

    #[test]
    fn include_usage_reports_cache_reads_as_cached_tokens() {
        let (_, out) = translate(TEXT_STREAM.as_bytes(), true);
        let chunks = payloads(&out);
        let usage = &chunks[chunks.len() - 2]["usage"];
        assert_eq!(usage["prompt_tokens_details"], json!({"cached_tokens": 0}));
    }

    #[test]
    fn unparseable_json_becomes_an_upstream_error_and_ends_the_stream() {
        let mut translator = Translator::new(1, "m", false);
        let out = translator.feed(b"event: content_block_delta\ndata: {\"type\":\"content_blo\n\n");
        let chunks = payloads(&out);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0]["error"]["type"], "upstream_error");
        assert_eq!(chunks[0]["error"]["code"], Value::Null);
        assert!(translator.is_done());
        assert!(translator.feed(TEXT_STREAM.as_bytes()).is_empty());
    }

    #[test]
    fn an_overlong_upstream_line_becomes_an_upstream_error() {
        let mut translator = Translator::new(1, "m", false);
        let mut input = b"data: ".to_vec();
        input.resize(input.len() + sse::MAX_LINE_BYTES + 1, b'x');
        let chunks = payloads(&translator.feed(&input));
        assert_eq!(chunks[0]["error"]["type"], "upstream_error");
        assert!(translator.is_done());
    }

    #[test]
    fn stop_reasons_map_to_openai_finish_reasons() {
        let cases = [
            (Some("end_turn"), "stop"),
            (Some("stop_sequence"), "stop"),
            (Some("max_tokens"), "length"),
            (Some("model_context_window_exceeded"), "length"),
            (Some("tool_use"), "tool_calls"),
            (Some("refusal"), "content_filter"),
            (Some("pause_turn"), "stop"),
            (None, "stop"),
        ];
        for (stop_reason, expected) in cases {
            assert_eq!(
                crate::anthropic::finish_reason(stop_reason),
                expected,
                "{stop_reason:?}"
            );
        }
    }

    fn assert_split_independent(input: &[u8], include_usage: bool) {
        let (_, whole) = translate(input, include_usage);
        assert!(whole.ends_with(DONE));

        let singles: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(translate_pieces(&singles, include_usage).1, whole);

        for split in 0..=input.len() {
            let (a, b) = input.split_at(split);
            let (_, out) = translate_pieces(&[a, b], include_usage);
            assert!(out == whole, "output differs when split at {split}");
        }
    }

    #[test]
    fn a_recorded_stream_gives_identical_output_whole_byte_by_byte_and_split_anywhere_in_two() {
        assert_split_independent(TEXT_STREAM.as_bytes(), false);
        assert_split_independent(TOOL_STREAM.as_bytes(), true);
    }

    #[test]
    fn a_recorded_stream_with_crlf_endings_translates_like_the_lf_one() {
        let crlf = TOOL_STREAM.replace('\n', "\r\n");
        assert_eq!(
            translate(crlf.as_bytes(), true).1,
            translate(TOOL_STREAM.as_bytes(), true).1
        );
        assert_split_independent(crlf.as_bytes(), true);
    }
}
