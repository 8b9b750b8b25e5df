//! The Anthropic Messages pass-through: a client's body edited at its top level only, every
//! other byte kept, and the upstream's event stream watched (never changed) for the audit.
//!
//! serde_json here has no `preserve_order`, so a `Value` would sort the client's keys and
//! re-print its numbers; a typed struct would drop the fields it does not know. Instead the
//! top level is read as an ordered list of (key, raw value) pairs: values keep the bytes they
//! came with, and the body is written back compactly in the order it came.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::sse;
use crate::usage::Usage;

/// A JSON object whose top level can be edited while the rest stays byte for byte.
#[derive(Debug)]
pub struct Body {
    fields: Vec<(String, Box<RawValue>)>,
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Body, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = Body;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    fields.push(entry);
                }
                Ok(Body { fields })
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

impl Body {
    /// Reads a request body; the error is client-safe and says what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Body, String> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err("request body is empty; a JSON object is required".into());
        }
        serde_json::from_slice(bytes).map_err(|e| {
            if e.is_data() {
                "request body must be a JSON object".to_string()
            } else {
                format!("request body is not valid JSON: {e}")
            }
        })
    }

    /// The raw text of a top-level field (the first, should a key repeat).
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.get())
    }

    /// A top-level field, parsed; `None` when absent.
    pub fn value(&self, key: &str) -> Option<Value> {
        self.raw(key).and_then(|raw| serde_json::from_str(raw).ok())
    }

    /// Sets a top-level field where it stands (once, should the key repeat), or at the end.
    pub fn set(&mut self, key: &str, value: &Value) {
        let raw = RawValue::from_string(value.to_string()).expect("a Value is valid JSON");
        match self.fields.iter().position(|(k, _)| k == key) {
            Some(at) => {
                self.fields[at].1 = raw;
                let mut seen = 0;
                self.fields.retain(|(k, _)| {
                    seen += usize::from(k == key);
                    k != key || seen == 1
                });
            }
            None => self.fields.push((key.to_string(), raw)),
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.fields.retain(|(k, _)| k != key);
    }

    /// The body, compact, in the order it came.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.fields
                .iter()
                .map(|(k, v)| k.len() + v.get().len() + 4)
                .sum::<usize>()
                + 2,
        );
        out.push(b'{');
        for (i, (key, value)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Keys are re-encoded (plain keys come out as they went in); values are not.
            out.extend(serde_json::to_vec(key).unwrap_or_default());
            out.push(b':');
            out.extend_from_slice(value.get().as_bytes());
        }
        out.push(b'}');
        out
    }
}

/// Caps `max_tokens` at the model's limit, or sets it to that limit when the client gave
/// none (Anthropic requires it).
pub fn cap_max_tokens(body: &mut Body, cap: i64) {
    cap_field(body, "max_tokens", cap);
}

/// Caps a top-level limit `field` at `cap`, or sets it to `cap` when absent.
pub fn cap_field(body: &mut Body, field: &str, cap: i64) {
    match body.value(field) {
        Some(Value::Number(n)) if n.as_f64().is_some_and(|n| n <= cap as f64) => {}
        _ => body.set(field, &Value::from(cap)),
    }
}

/// Watches an Anthropic event stream as it is relayed: usage from `message_start` and
/// `message_delta`, and whether it ended with `message_stop` or an `error` event.
#[derive(Default)]
pub struct Watcher {
    parser: sse::Parser,
    input_tokens: Option<i64>,
    cache_creation_input_tokens: Option<i64>,
    cache_read_input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    done: bool,
    error: Option<String>,
}

impl Watcher {
    pub fn new() -> Watcher {
        Watcher::default()
    }

    /// Looks at relayed bytes (any split); they go to the client unchanged.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.done {
            return;
        }
        // A parse failure only loses usage for the audit; the bytes still go through.
        let events = match self.parser.feed(bytes) {
            Ok(events) => events,
            Err(e) => e.completed,
        };
        for event in events {
            let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
                continue;
            };
            match data.get("type").and_then(Value::as_str) {
                Some("message_start") => self.note_usage(data.pointer("/message/usage")),
                Some("message_delta") => self.note_usage(data.get("usage")),
                Some("message_stop") => self.done = true,
                Some("error") => {
                    let message = data
                        .pointer("/error/message")
                        .and_then(Value::as_str)
                        .unwrap_or("the upstream stream reported an error");
                    self.error = Some(crate::audit::short_error(message));
                    self.done = true;
                }
                _ => {}
            }
            if self.done {
                break;
            }
        }
    }

    /// Each count keeps its latest report: `message_delta` repeats the input counts and its
    /// `output_tokens` is cumulative, so nothing is counted twice.
    fn note_usage(&mut self, usage: Option<&Value>) {
        let Some(usage) = usage else { return };
        let count = |key: &str| usage.get(key).and_then(Value::as_i64);
        for (slot, key) in [
            (&mut self.input_tokens, "input_tokens"),
            (
                &mut self.cache_creation_input_tokens,
                "cache_creation_input_tokens",
            ),
            (&mut self.cache_read_input_tokens, "cache_read_input_tokens"),
            (&mut self.output_tokens, "output_tokens"),
        ] {
            if let Some(n) = count(key) {
                *slot = Some(n);
            }
        }
    }

    /// True once `message_stop` or an `error` event went by.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The upstream's error event, if one went by.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    pub fn usage(&self) -> Option<Usage> {
        let prompt = [
            self.input_tokens,
            self.cache_creation_input_tokens,
            self.cache_read_input_tokens,
        ];
        if prompt
            .iter()
            .chain([&self.output_tokens])
            .all(Option::is_none)
        {
            return None;
        }
        Some(Usage {
            prompt_tokens: prompt
                .iter()
                .fold(0i64, |sum, n| sum.saturating_add(n.unwrap_or(0))),
            completion_tokens: self.output_tokens.unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CLIENT: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":128000,"system":[{"type":"text","text":"You are Claude Code.","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":[{"type":"text","text":"h\u00e9llo \"q\" 1.50e3"}]},{"role":"assistant","content":[{"type":"thinking","thinking":"x","signature":"EqQBCkYIBxgCKkD+/="}]}],"zeta":1.0,"alpha":{"b":2,"a":1},"stream":true}"#;

    #[test]
    fn an_untouched_body_comes_back_byte_for_byte() {
        let body = Body::parse(CLIENT.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(body.to_vec()).unwrap(), CLIENT);
    }

    #[test]
    fn model_and_max_tokens_change_in_place_and_nothing_else_does() {
        let mut body = Body::parse(CLIENT.as_bytes()).unwrap();
        body.set("model", &json!("claude-opus-4-1"));
        cap_max_tokens(&mut body, 32000);
        let expected = CLIENT
            .replace("claude-sonnet-4-5", "claude-opus-4-1")
            .replace("128000", "32000");
        assert_eq!(String::from_utf8(body.to_vec()).unwrap(), expected);
    }

    #[test]
    fn whitespace_between_top_level_fields_is_compacted_but_nested_bytes_are_kept() {
        let body = Body::parse(b" {\n \"a\" : { \"x\" : 1 } ,\"b\":[ 1 ,2 ] }\n").unwrap();
        assert_eq!(body.to_vec(), br#"{"a":{ "x" : 1 },"b":[ 1 ,2 ]}"#);
    }

    #[test]
    fn a_missing_field_is_added_at_the_end_and_removal_takes_every_copy() {
        let mut body = Body::parse(br#"{"messages":[],"temperature":1,"temperature":2}"#).unwrap();
        body.set("model", &json!("m"));
        body.remove("temperature");
        assert_eq!(body.to_vec(), br#"{"messages":[],"model":"m"}"#);
        let mut body = Body::parse(br#"{"model":"a","x":0,"model":"b"}"#).unwrap();
        body.set("model", &json!("c"));
        assert_eq!(body.to_vec(), br#"{"model":"c","x":0}"#);
    }

    #[test]
    fn max_tokens_is_capped_or_defaulted_but_never_raised() {
        for (input, expected) in [
            (r#"{"max_tokens":10}"#, r#"{"max_tokens":10}"#),
            (r#"{"max_tokens":100}"#, r#"{"max_tokens":100}"#),
            (r#"{"max_tokens":101}"#, r#"{"max_tokens":100}"#),
            (r#"{"max_tokens":null}"#, r#"{"max_tokens":100}"#),
            (r#"{"x":1}"#, r#"{"x":1,"max_tokens":100}"#),
        ] {
            let mut body = Body::parse(input.as_bytes()).unwrap();
            cap_max_tokens(&mut body, 100);
            assert_eq!(String::from_utf8(body.to_vec()).unwrap(), expected);
        }
    }

    #[test]
    fn bodies_that_are_not_objects_are_refused_clearly() {
        assert!(Body::parse(b"[1]")
            .unwrap_err()
            .contains("must be a JSON object"));
        assert!(Body::parse(b"{\"a\":")
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(Body::parse(b"  ").unwrap_err().contains("empty"));
    }

    #[test]
    fn the_watcher_reads_usage_once_and_sees_the_end() {
        let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":21,\"cache_creation_input_tokens\":3,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n\
event: ping\ndata: {\"type\":\"ping\"}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"input_tokens\":21,\"output_tokens\":14}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        for split in 0..stream.len() {
            let mut w = Watcher::new();
            let (a, b) = stream.as_bytes().split_at(split);
            w.feed(a);
            w.feed(b);
            assert!(w.is_done(), "split at {split}");
            assert_eq!(
                w.usage(),
                Some(Usage {
                    prompt_tokens: 29,
                    completion_tokens: 14
                })
            );
        }
    }

    #[test]
    fn the_watcher_notes_an_error_event() {
        let mut w = Watcher::new();
        w.feed(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
        assert!(w.is_done());
        assert_eq!(w.error(), Some("Overloaded"));
        assert_eq!(w.usage(), None);
    }
}
