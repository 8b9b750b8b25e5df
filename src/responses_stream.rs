//! Chat completion chunks → Responses API events, and the watcher of a relayed Responses
//! stream (RESPONSES.md, Stream).
//!
//! Pure and incremental like `anthropic_stream`: chunk bytes go in, event bytes come out as
//! they arrive. From an `anthropic` profile the chunks are `anthropic_stream`'s output, so
//! Anthropic's events are translated once, into chunks, and the chunks once, into these.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::crypto::Cipher;
use crate::responses::{self, Echo};
use crate::sse;
use crate::usage::Usage;

enum Kind {
    Reasoning {
        text: String,
        blocks: Vec<Value>,
    },
    Message {
        text: String,
    },
    Call {
        call_id: String,
        name: String,
        arguments: String,
    },
}

struct Item {
    id: String,
    kind: Kind,
    /// The whole item as `response.output_item.done` gave it (sealed once: the final
    /// `response` must carry the same `encrypted_content`).
    done: Option<Value>,
}

/// One answer's translation state.
pub struct Translator {
    parser: sse::Parser,
    cipher: Cipher,
    echo: Echo,
    id: String,
    created_at: u64,
    model: String,
    sequence: u64,
    started: bool,
    items: Vec<Item>,
    /// Output index of the open reasoning item, and of the open message.
    reasoning: Option<usize>,
    message: Option<usize>,
    /// Chat tool-call index → output index.
    calls: HashMap<u64, usize>,
    closed: bool,
    finish_reason: Option<String>,
    usage: Option<Value>,
    done: bool,
    error: Option<String>,
}

impl Translator {
    pub fn new(model: &str, echo: Echo, created_at: u64, cipher: Cipher) -> Translator {
        Translator {
            parser: sse::Parser::new(),
            cipher,
            echo,
            id: responses::new_id("resp_"),
            created_at,
            model: model.to_string(),
            sequence: 0,
            started: false,
            items: Vec::new(),
            reasoning: None,
            message: None,
            calls: HashMap::new(),
            closed: false,
            finish_reason: None,
            usage: None,
            done: false,
            error: None,
        }
    }

    /// Feeds chunk bytes (any split); returns the event bytes to send now.
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
            self.fail("upstream stream event too large", &mut out);
        }
        out
    }

    /// The chunks ended (EOF). After a `finish_reason` the answer is whole (some servers
    /// never send `[DONE]`); before one it was cut short: `response.failed`.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.done {
            if self.finish_reason.is_some() {
                self.complete(&mut out);
            } else {
                self.fail("the upstream stream ended early", &mut out);
            }
        }
        out
    }

    /// The upstream connection broke mid-way.
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

    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    pub fn usage(&self) -> Option<Usage> {
        let u = self.usage.as_ref()?;
        Some(Usage {
            prompt_tokens: u["input_tokens"].as_i64().unwrap_or(0),
            completion_tokens: u["output_tokens"].as_i64().unwrap_or(0),
        })
    }

    fn emit(&mut self, kind: &str, mut data: Value, out: &mut Vec<u8>) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        out.extend_from_slice(format!("event: {kind}\ndata: {data}\n\n").as_bytes());
    }

    fn response(&self, status: &str, output: Vec<Value>) -> Value {
        responses::response_object(
            &self.id,
            self.created_at,
            &self.model,
            &self.echo,
            status,
            output,
            self.usage.clone(),
        )
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let response = self.response("in_progress", Vec::new());
        self.emit("response.created", json!({"response": response}), out);
        self.emit("response.in_progress", json!({"response": response}), out);
    }

    fn handle(&mut self, data: &str, out: &mut Vec<u8>) {
        self.start(out);
        if data == "[DONE]" {
            self.complete(out);
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            self.fail("upstream sent a stream event that is not valid JSON", out);
            return;
        };
        if let Some(error) = chunk.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| error.to_string(), str::to_string);
            self.fail(&message, out);
            return;
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(responses::usage_of(usage));
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return;
        };
        let delta = choice.get("delta").cloned().unwrap_or(Value::Null);
        if let Some(text) = delta
            .get("reasoning_content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            self.reasoning_delta(text, out);
        }
        if let Some(text) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            self.text_delta(text, out);
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.call_delta(call, out);
        }
        if let Some(blocks) = delta.get("thinking_blocks").and_then(Value::as_array) {
            let at = self.open_reasoning(out);
            if let Kind::Reasoning { blocks: kept, .. } = &mut self.items[at].kind {
                kept.extend(blocks.iter().cloned());
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(reason.to_string());
            self.close_items(out);
        }
    }

    fn add_item(&mut self, kind: Kind, prefix: &str, out: &mut Vec<u8>) -> usize {
        let at = self.items.len();
        self.items.push(Item {
            id: responses::new_id(prefix),
            kind,
            done: None,
        });
        let item = self.item_json(at, "in_progress");
        self.emit(
            "response.output_item.added",
            json!({"output_index": at, "item": item}),
            out,
        );
        at
    }

    fn open_reasoning(&mut self, out: &mut Vec<u8>) -> usize {
        if let Some(at) = self.reasoning {
            return at;
        }
        let kind = Kind::Reasoning {
            text: String::new(),
            blocks: Vec::new(),
        };
        let at = self.add_item(kind, "rs_", out);
        self.reasoning = Some(at);
        at
    }

    fn reasoning_delta(&mut self, piece: &str, out: &mut Vec<u8>) {
        let at = self.open_reasoning(out);
        let id = self.items[at].id.clone();
        let Kind::Reasoning { text, .. } = &mut self.items[at].kind else {
            return;
        };
        let first = text.is_empty();
        text.push_str(piece);
        if first {
            self.emit(
                "response.reasoning_summary_part.added",
                json!({"item_id": id, "output_index": at, "summary_index": 0,
                       "part": {"type": "summary_text", "text": ""}}),
                out,
            );
        }
        self.emit(
            "response.reasoning_summary_text.delta",
            json!({"item_id": id, "output_index": at, "summary_index": 0, "delta": piece}),
            out,
        );
    }

    fn text_delta(&mut self, piece: &str, out: &mut Vec<u8>) {
        let at = match self.message {
            Some(at) => at,
            None => {
                let at = self.add_item(
                    Kind::Message {
                        text: String::new(),
                    },
                    "msg_",
                    out,
                );
                self.message = Some(at);
                let id = self.items[at].id.clone();
                self.emit(
                    "response.content_part.added",
                    json!({"item_id": id, "output_index": at, "content_index": 0,
                           "part": {"type": "output_text", "text": "", "annotations": []}}),
                    out,
                );
                at
            }
        };
        let id = self.items[at].id.clone();
        if let Kind::Message { text } = &mut self.items[at].kind {
            text.push_str(piece);
        }
        self.emit(
            "response.output_text.delta",
            json!({"item_id": id, "output_index": at, "content_index": 0, "delta": piece,
                   "logprobs": []}),
            out,
        );
    }

    fn call_delta(&mut self, call: &Value, out: &mut Vec<u8>) {
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let s = |p: &str| call.pointer(p).and_then(Value::as_str).unwrap_or("");
        let at = match self.calls.get(&index) {
            Some(&at) => at,
            None => {
                let kind = Kind::Call {
                    call_id: s("/id").to_string(),
                    name: s("/function/name").to_string(),
                    arguments: String::new(),
                };
                let at = self.add_item(kind, "fc_", out);
                self.calls.insert(index, at);
                at
            }
        };
        let piece = s("/function/arguments");
        if piece.is_empty() {
            return;
        }
        let id = self.items[at].id.clone();
        if let Kind::Call { arguments, .. } = &mut self.items[at].kind {
            arguments.push_str(piece);
        }
        self.emit(
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": at, "delta": piece}),
            out,
        );
    }

    fn item_json(&self, at: usize, status: &str) -> Value {
        let item = &self.items[at];
        if let Some(done) = &item.done {
            return done.clone();
        }
        match &item.kind {
            Kind::Reasoning { text, blocks } => {
                if status == "in_progress" {
                    json!({"id": item.id, "type": "reasoning", "summary": []})
                } else {
                    responses::reasoning_item(&item.id, text, blocks, &self.cipher)
                }
            }
            Kind::Message { text } => {
                if status == "in_progress" {
                    json!({"id": item.id, "type": "message", "role": "assistant",
                           "status": status, "content": []})
                } else {
                    responses::message_item(&item.id, text, status)
                }
            }
            Kind::Call {
                call_id,
                name,
                arguments,
            } => self
                .echo
                .function_call(&item.id, call_id, name, arguments, status),
        }
    }

    /// Every open item gets its closing events, in output order.
    fn close_items(&mut self, out: &mut Vec<u8>) {
        if self.closed {
            return;
        }
        self.closed = true;
        for at in 0..self.items.len() {
            let id = self.items[at].id.clone();
            match &self.items[at].kind {
                Kind::Reasoning { text, .. } if !text.is_empty() => {
                    let text = text.clone();
                    self.emit(
                        "response.reasoning_summary_text.done",
                        json!({"item_id": id, "output_index": at, "summary_index": 0, "text": text}),
                        out,
                    );
                    self.emit(
                        "response.reasoning_summary_part.done",
                        json!({"item_id": id, "output_index": at, "summary_index": 0,
                               "part": {"type": "summary_text", "text": text}}),
                        out,
                    );
                }
                Kind::Reasoning { .. } => {}
                Kind::Message { text } => {
                    let text = text.clone();
                    self.emit(
                        "response.output_text.done",
                        json!({"item_id": id, "output_index": at, "content_index": 0,
                               "text": text, "logprobs": []}),
                        out,
                    );
                    self.emit(
                        "response.content_part.done",
                        json!({"item_id": id, "output_index": at, "content_index": 0,
                               "part": {"type": "output_text", "text": text, "annotations": []}}),
                        out,
                    );
                }
                Kind::Call {
                    name, arguments, ..
                } => {
                    let (name, arguments) = (name.clone(), arguments.clone());
                    self.emit(
                        "response.function_call_arguments.done",
                        json!({"item_id": id, "output_index": at, "name": name,
                               "arguments": arguments}),
                        out,
                    );
                }
            }
            let item = self.item_json(at, "completed");
            self.items[at].done = Some(item.clone());
            self.emit(
                "response.output_item.done",
                json!({"output_index": at, "item": item}),
                out,
            );
        }
    }

    fn complete(&mut self, out: &mut Vec<u8>) {
        self.start(out);
        self.close_items(out);
        let output = (0..self.items.len())
            .map(|at| self.item_json(at, "completed"))
            .collect();
        let (status, details) = responses::status_of(self.finish_reason.as_deref());
        let mut response = self.response(status, output);
        response["incomplete_details"] = details;
        let kind = if status == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit(kind, json!({"response": response}), out);
        self.done = true;
    }

    fn fail(&mut self, message: &str, out: &mut Vec<u8>) {
        self.start(out);
        let output = (0..self.items.len())
            .map(|at| self.item_json(at, "incomplete"))
            .collect();
        let mut response = self.response("failed", output);
        response["error"] = json!({"code": "server_error", "message": message});
        self.emit("response.failed", json!({"response": response}), out);
        self.done = true;
        self.error = Some(message.to_string());
    }
}

/// Watches an OpenAI Responses stream as it is relayed, unchanged: usage from its final
/// `response`, and whether it ended with `response.completed`, `.incomplete` or `.failed`.
#[derive(Default)]
pub struct Watcher {
    parser: sse::Parser,
    usage: Option<Usage>,
    done: bool,
    error: Option<String>,
}

impl Watcher {
    pub fn new() -> Watcher {
        Watcher::default()
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        // A parse failure loses only the audit's usage; the bytes still go through.
        for event in self.parser.feed(bytes).unwrap_or_default() {
            let kind = event.event.as_deref().unwrap_or("");
            let terminal = [
                "response.completed",
                "response.incomplete",
                "response.failed",
                "error",
            ];
            if !terminal.contains(&kind) && !terminal.iter().any(|t| event.data.contains(t)) {
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(&event.data) else {
                continue;
            };
            let kind = v.get("type").and_then(Value::as_str).unwrap_or(kind);
            match kind {
                "response.completed" | "response.incomplete" | "response.failed" => {
                    self.done = true;
                    if let Some(u) = v.pointer("/response/usage").filter(|u| u.is_object()) {
                        self.usage = Some(Usage {
                            prompt_tokens: u["input_tokens"].as_i64().unwrap_or(0),
                            completion_tokens: u["output_tokens"].as_i64().unwrap_or(0),
                        });
                    }
                    if kind == "response.failed" {
                        let message = v.pointer("/response/error/message").and_then(Value::as_str);
                        self.error = Some(format!(
                            "the upstream stream failed: {}",
                            message.unwrap_or("no message")
                        ));
                    }
                }
                "error" => {
                    self.done = true;
                    let message = v.get("message").and_then(Value::as_str);
                    self.error = Some(format!(
                        "the upstream stream failed: {}",
                        message.unwrap_or("no message")
                    ));
                }
                _ => {}
            }
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translator() -> Translator {
        Translator::new("m", Echo::default(), 5, Cipher::new(&[7u8; 32]))
    }

    fn chunk(delta: Value, finish: Option<&str>) -> String {
        sse::data_event(
            &json!({"id": "c", "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            .to_string(),
        )
    }

    /// The events of `bytes`, as (type, data).
    fn events(bytes: &[u8]) -> Vec<(String, Value)> {
        let mut p = sse::Parser::new();
        p.feed(bytes)
            .unwrap()
            .into_iter()
            .map(|e| {
                let v: Value = serde_json::from_str(&e.data).unwrap();
                assert_eq!(e.event.as_deref(), v["type"].as_str());
                (e.event.unwrap(), v)
            })
            .collect()
    }

    fn kinds(evs: &[(String, Value)]) -> Vec<&str> {
        evs.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn a_text_answer_streams_in_the_order_the_sdk_accumulates() {
        let mut t = translator();
        let mut out = t.feed(chunk(json!({"role": "assistant", "content": ""}), None).as_bytes());
        out.extend(t.feed(chunk(json!({"content": "Hel"}), None).as_bytes()));
        out.extend(t.feed(chunk(json!({"content": "lo"}), None).as_bytes()));
        out.extend(t.feed(chunk(json!({}), Some("stop")).as_bytes()));
        out.extend(t.feed(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}\n\n",
        ));
        out.extend(t.feed(b"data: [DONE]\n\n"));
        assert!(t.is_done());
        let evs = events(&out);
        assert_eq!(
            kinds(&evs),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let seq: Vec<u64> = evs
            .iter()
            .map(|(_, v)| v["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(seq, (0..seq.len() as u64).collect::<Vec<_>>());
        assert_eq!(evs[6].1["text"], "Hello");
        let done = &evs[9].1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(done["usage"]["input_tokens"], 4);
        assert_eq!(done["usage"]["total_tokens"], 6);
        assert_eq!(
            t.usage(),
            Some(Usage {
                prompt_tokens: 4,
                completion_tokens: 2
            })
        );
    }

    #[test]
    fn events_go_out_as_chunks_arrive() {
        let mut t = translator();
        let out = t.feed(chunk(json!({"content": "Hi"}), None).as_bytes());
        assert!(kinds(&events(&out)).contains(&"response.output_text.delta"));
        // Half a chunk: nothing yet, then the rest.
        let c = chunk(json!({"content": "!"}), None);
        let (a, b) = c.as_bytes().split_at(10);
        assert!(t.feed(a).is_empty());
        assert_eq!(kinds(&events(&t.feed(b))), ["response.output_text.delta"]);
    }

    #[test]
    fn a_tool_call_streams_its_arguments() {
        let mut t = translator();
        let mut out = t.feed(
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "exec_command", "arguments": ""}}]}),
                None,
            )
            .as_bytes(),
        );
        out.extend(
            t.feed(
                chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"cmd\":"}}]}),
                    None,
                )
                .as_bytes(),
            ),
        );
        out.extend(
            t.feed(
                chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"ls\"}"}}]}),
                    None,
                )
                .as_bytes(),
            ),
        );
        out.extend(t.feed(chunk(json!({}), Some("tool_calls")).as_bytes()));
        out.extend(t.finish());
        let evs = events(&out);
        assert_eq!(
            kinds(&evs)[2..],
            [
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let item = &evs[6].1["item"];
        assert_eq!(item["type"], "function_call");
        assert_eq!(item["call_id"], "call_1");
        assert_eq!(item["name"], "exec_command");
        assert_eq!(item["arguments"], "{\"cmd\":\"ls\"}");
        assert_eq!(item["status"], "completed");
    }

    #[test]
    fn reasoning_streams_as_a_summary_and_stays_open_for_the_signed_blocks() {
        let mut t = translator();
        let mut out = t.feed(chunk(json!({"reasoning_content": "think"}), None).as_bytes());
        out.extend(t.feed(chunk(json!({"content": "ok"}), None).as_bytes()));
        let blocks = json!([{"type": "thinking", "thinking": "think", "signature": "s1"}]);
        out.extend(t.feed(chunk(json!({"thinking_blocks": blocks}), Some("stop")).as_bytes()));
        out.extend(t.feed(b"data: [DONE]\n\n"));
        let evs = events(&out);
        assert_eq!(
            kinds(&evs)[2..],
            [
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let reasoning = &evs[10].1["item"];
        assert_eq!(
            reasoning["summary"],
            json!([{"type": "summary_text", "text": "think"}])
        );
        let sealed = reasoning["encrypted_content"].as_str().unwrap();
        let opened = responses::open_thinking(&Cipher::new(&[7u8; 32]), sealed).unwrap();
        assert_eq!(Value::Array(opened), blocks);
        assert_eq!(evs[14].1["response"]["output"][0], *reasoning);
    }

    #[test]
    fn length_ends_in_response_incomplete() {
        let mut t = translator();
        let mut out = t.feed(chunk(json!({"content": "cut"}), Some("length")).as_bytes());
        out.extend(t.feed(b"data: [DONE]\n\n"));
        let evs = events(&out);
        let (kind, last) = evs.last().unwrap();
        assert_eq!(kind, "response.incomplete");
        assert_eq!(
            last["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );
    }

    #[test]
    fn an_upstream_error_or_early_end_is_response_failed() {
        let mut t = translator();
        let mut out = t.feed(chunk(json!({"content": "a"}), None).as_bytes());
        out.extend(t.feed(b"data: {\"error\":{\"message\":\"overloaded\",\"type\":\"x\"}}\n\n"));
        let evs = events(&out);
        let (kind, last) = evs.last().unwrap();
        assert_eq!(kind, "response.failed");
        assert_eq!(
            last["response"]["error"],
            json!({"code": "server_error", "message": "overloaded"})
        );
        assert_eq!(t.error(), Some("overloaded"));

        let mut t = translator();
        t.feed(chunk(json!({"content": "a"}), None).as_bytes());
        assert_eq!(events(&t.finish()).last().unwrap().0, "response.failed");

        let mut t = translator();
        let evs = events(&t.broken("connection reset"));
        assert_eq!(
            kinds(&evs),
            [
                "response.created",
                "response.in_progress",
                "response.failed"
            ]
        );
    }

    #[test]
    fn a_stream_without_done_after_its_finish_reason_is_whole() {
        let mut t = translator();
        t.feed(chunk(json!({"content": "a"}), Some("stop")).as_bytes());
        assert_eq!(events(&t.finish()).last().unwrap().0, "response.completed");
        assert!(t.error().is_none());
    }

    #[test]
    fn the_watcher_sees_usage_and_the_end_of_a_relayed_stream() {
        let mut w = Watcher::new();
        w.feed(b"event: response.created\ndata: {\"type\":\"response.created\"}\n\n");
        assert!(!w.is_done());
        w.feed(b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":4}}}\n\n");
        assert!(w.is_done());
        assert_eq!(
            w.usage(),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4
            })
        );
        let mut w = Watcher::new();
        w.feed(b"event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"error\":{\"message\":\"boom\"}}}\n\n");
        assert!(w.error().unwrap().contains("boom"));
    }
}
