#!/usr/bin/env python3
"""A fake Anthropic Messages API that checks what it gets the way a strict Anthropic would.

Run with the e2e virtualenv's python (it needs the `anthropic` SDK, whose request types are
the schema every request is validated against). Started by scripts/e2e-sdk; its base URL is
written as JSON {"url": ...} to --ready-file once it listens.

Every request is recorded (path, lower-cased headers, body, and the status it was answered
with) and served back by `GET /_received`.

What it refuses, each with a 400 in Anthropic's error shape, as the real API does:
  - a body that does not validate against anthropic.types.MessageCreateParams (the installed
    SDK's TypedDicts, nested content blocks included), or has a top-level field they do not
    name;
  - `thinking: {type: "enabled", budget_tokens}` on a model that takes only adaptive thinking
    (claude-opus-4-7, claude-opus-5), and adaptive thinking or `output_config.effort` on one
    that takes only a budget (claude-sonnet-4-5, claude-opus-4-1, claude-3-7-sonnet-latest);
    a budget below 1024 or not below max_tokens;
  - `temperature`, `top_p` or `top_k` with thinking on, or at all on the adaptive-only models
    ("deprecated for this model"); `temperature` and `top_p` together;
  - thinking with a tool_choice that forces a tool;
  - with thinking on, an assistant turn answered by tool results that does not start with its
    thinking block; any thinking block whose signature this server did not make (a changed
    or made-up block), any redacted_thinking whose data it did not make;
  - an empty text block (and, with its own message, one that carries cache_control); a
    cache_control that is not {type: ephemeral[, ttl: 5m|1h]}; more than 4 of them;
  - a tool_result whose tool_use_id is not a tool_use of the turn before; tool ids outside
    ^[a-zA-Z0-9_-]+$.
What it answers (JSON, or the event stream when "stream": true):
  - with output_config.format: a text block holding a JSON instance of the schema;
  - with tools (and a tool_choice other than none): a tool_use of the first tool (after a signed thinking block when thinking is
    on, and for budget models a redacted_thinking block too); after one tool result another
    tool_use (with a new thinking block); after two, a text "Done: <results>";
  - otherwise a text "strict-claude: <last user text>" (after a signed thinking block when
    thinking is on).
Usage: input_tokens 30, output_tokens 25; when the request carries any cache_control marker,
cache_creation_input_tokens 200 and cache_read_input_tokens 1500 (else 0 and 0).
"""

import argparse
import base64
import collections.abc
import hashlib
import hmac
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pydantic
from anthropic.types.message_create_params import (
    MessageCreateParamsBase,
    MessageCreateParamsNonStreaming,
    MessageCreateParamsStreaming,
)

ANTHROPIC_VERSION = "2023-06-01"
SECRET = os.urandom(32)
ADAPTIVE_ONLY = {"claude-opus-4-7", "claude-opus-5"}
BOTH = {"claude-sonnet-4-6", "claude-opus-4-6"}
BUDGET_ONLY = {"claude-sonnet-4-5", "claude-opus-4-1", "claude-3-7-sonnet-latest"}
MODELS = ADAPTIVE_ONLY | BOTH | BUDGET_ONLY
# Sampling fields: anthropic-version 2023-06-01 (what the switcher sends) still takes them on
# the models that allow them; the 2.x SDK, written for 2026-10-21, no longer names them.
SAMPLING = {"temperature": (0, 1), "top_p": (0, 1), "top_k": (0, None)}
TOP_LEVEL = set(MessageCreateParamsBase.__annotations__) | {"stream"} | set(SAMPLING)
ADAPTERS = {
    False: pydantic.TypeAdapter(MessageCreateParamsNonStreaming),
    True: pydantic.TypeAdapter(MessageCreateParamsStreaming),
}
TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
USAGE_PLAIN = {"input_tokens": 30, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
USAGE_CACHED = {"input_tokens": 30, "cache_creation_input_tokens": 200, "cache_read_input_tokens": 1500}
OUTPUT_TOKENS = 25
THOUGHTS = [
    "The user wants the weather; I should call the tool first.",
    "Now I have the current weather; the forecast comes next.",
    "Both results are in; time to answer.",
]


class Refused(Exception):
    def __init__(self, message, status=400, kind="invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.kind = kind


def sign(kind, text):
    mac = hmac.new(SECRET, ("%s:%s" % (kind, text)).encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def redacted_data(n):
    payload = "redacted-%d" % n
    return base64.b64encode(("%s|%s" % (payload, sign("redacted", payload))).encode()).decode()


def redacted_ok(data):
    try:
        payload, mac = base64.b64decode(data).decode().split("|", 1)
    except Exception:  # noqa: BLE001 - anything undecodable is simply not ours
        return False
    return hmac.compare_digest(mac, sign("redacted", payload))


def refusal(error, path=()):
    first = error.errors()[0]
    where = ".".join(str(p) for p in tuple(path) + tuple(first["loc"]))
    return Refused("%s: %s" % (where, first["msg"]))


def force(value, path=()):
    """Consumes pydantic's lazy Iterable validators so nested blocks are validated too."""
    if isinstance(value, dict):
        return {k: force(v, path + (k,)) for k, v in value.items()}
    if isinstance(value, (str, bytes, int, float, bool)) or value is None:
        return value
    if isinstance(value, collections.abc.Iterable):
        try:
            return [force(v, path + (n,)) for n, v in enumerate(value)]
        except pydantic.ValidationError as e:
            raise refusal(e, path)
    return value


def blocks_of(content):
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content or [])


def every_block(body):
    """(where, block) for every content block of the request, tool_result contents included."""
    system = body.get("system")
    if isinstance(system, list):
        for j, block in enumerate(system):
            yield "system.%d" % j, block
    for i, message in enumerate(body.get("messages") or []):
        content = message.get("content")
        if isinstance(content, str):
            continue
        for j, block in enumerate(content or []):
            yield "messages.%d.content.%d" % (i, j), block
            if block.get("type") == "tool_result" and isinstance(block.get("content"), list):
                for k, inner in enumerate(block["content"]):
                    yield "messages.%d.content.%d.content.%d" % (i, j, k), inner


def check(body, stream):
    extra = set(body) - TOP_LEVEL
    if extra:
        raise Refused("%s: Extra inputs are not permitted" % sorted(extra)[0])
    for field, (low, high) in SAMPLING.items():
        value = body.get(field)
        if field in body and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or value < low or (high is not None and value > high)):
            raise Refused("%s: Input should be a number between %s and %s" % (field, low, high))
    try:
        typed = {k: v for k, v in body.items() if k not in SAMPLING}
        force(ADAPTERS[bool(stream)].validate_python(typed))
    except pydantic.ValidationError as e:
        raise refusal(e)
    model = body["model"]
    if model not in MODELS:
        raise Refused("model: %s" % model, 404, "not_found_error")

    markers = 0
    tools = body.get("tools") or []
    for where, block in list(every_block(body)) + [("tools.%d" % n, t) for n, t in enumerate(tools)]:
        marker = block.get("cache_control")
        if marker is not None:
            markers += 1
            if marker.get("type") != "ephemeral" or set(marker) - {"type", "ttl"} or \
                    marker.get("ttl", "5m") not in ("5m", "1h"):
                raise Refused("%s.cache_control: invalid %s" % (where, json.dumps(marker)))
        if block.get("type") == "text" and not block.get("text", "").strip():
            if marker is not None:
                raise Refused("%s.text: cache_control cannot be set for empty text blocks" % where)
            raise Refused("%s: text content blocks must contain non-whitespace text" % where)
        if block.get("type") == "thinking":
            if not hmac.compare_digest(block.get("signature", ""), sign("thinking", block.get("thinking", ""))):
                raise Refused("%s: Invalid `signature` in `thinking` block" % where)
        if block.get("type") == "redacted_thinking" and not redacted_ok(block.get("data", "")):
            raise Refused("%s: Invalid `data` in `redacted_thinking` block" % where)
        for key in ("id", "tool_use_id"):
            if key in block and block.get("type") in ("tool_use", "tool_result") \
                    and not TOOL_ID.match(block[key]):
                raise Refused("%s.%s: String should match pattern '^[a-zA-Z0-9_-]+$'" % (where, key))
    if markers > 4:
        raise Refused("A maximum of 4 blocks with cache_control may be provided. Found %d." % markers)

    messages = body["messages"]
    for i, message in enumerate(messages):
        results = [b for b in blocks_of(message["content"]) if b.get("type") == "tool_result"]
        if not results:
            continue
        previous = messages[i - 1] if i > 0 else {}
        uses = {b.get("id") for b in blocks_of(previous.get("content"))
                if previous.get("role") == "assistant" and b.get("type") == "tool_use"}
        for r in results:
            if r["tool_use_id"] not in uses:
                raise Refused(
                    "messages.%d: unexpected `tool_use_id` found in `tool_result` blocks: %s. "
                    "Each `tool_result` block must have a corresponding `tool_use` block in the "
                    "previous message." % (i, r["tool_use_id"]))

    if model in ADAPTIVE_ONLY:
        for field in SAMPLING:
            if field in body:
                raise Refused("`%s` is deprecated for this model." % field)
    if "temperature" in body and "top_p" in body:
        raise Refused("`temperature` and `top_p` cannot both be specified for this model.")
    effort = (body.get("output_config") or {}).get("effort")
    if effort is not None and model in BUDGET_ONLY:
        raise Refused("output_config.effort: this model does not support the effort parameter")
    thinking = body.get("thinking")
    kind = (thinking or {}).get("type")
    if kind == "enabled":
        if model in ADAPTIVE_ONLY:
            raise Refused('thinking.type: "enabled" is not supported for this model. '
                          'Use "thinking.type: adaptive" and "output_config.effort" instead.')
        budget = thinking["budget_tokens"]
        if budget < 1024:
            raise Refused("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
        if budget >= body["max_tokens"]:
            raise Refused("`max_tokens` must be greater than `thinking.budget_tokens`.")
    if kind == "adaptive" and model in BUDGET_ONLY:
        raise Refused('thinking.type: "adaptive" is not supported for this model.')
    if kind in ("enabled", "adaptive"):
        for field in ("temperature", "top_p", "top_k"):
            if field in body:
                raise Refused("`%s` may not be set when thinking is enabled" % field)
        if (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
            raise Refused("Thinking may not be enabled when tool_choice forces tool use.")
        last = messages[-1]
        if last["role"] == "user" and any(b.get("type") == "tool_result" for b in blocks_of(last["content"])):
            assistant = messages[-2] if len(messages) > 1 else {}
            first = (blocks_of(assistant.get("content")) or [{}])[0]
            if first.get("type") not in ("thinking", "redacted_thinking"):
                raise Refused(
                    "messages.%d.content.0.type: Expected `thinking` or `redacted_thinking`, but "
                    "found `%s`. When `thinking` is enabled, a final `assistant` message must start "
                    "with a thinking block." % (len(messages) - 2, first.get("type")))
    return markers


def instance(schema):
    """A JSON value that fits a (simple) JSON schema."""
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: instance(sub) for name, sub in props.items()}
    if kind == "array":
        return [instance(schema.get("items") or {"type": "string"})]
    if kind == "integer":
        return 18
    if kind == "number":
        return 18.5
    if kind == "boolean":
        return True
    return "Paris"


def text_of(content):
    return "".join(b.get("text", "") for b in blocks_of(content) if b.get("type") == "text")


def plan(body):
    """(content blocks, stop_reason) to answer with."""
    thinking_on = (body.get("thinking") or {}).get("type") in ("enabled", "adaptive")
    messages = body["messages"]
    fmt = (body.get("output_config") or {}).get("format")
    if fmt:
        return [{"type": "text", "text": json.dumps(instance(fmt["schema"]))}], "end_turn"
    tools = body.get("tools") or []
    if not tools or (body.get("tool_choice") or {}).get("type") == "none":
        blocks = [{"type": "text", "text": "strict-claude: %s" % text_of(messages[-1]["content"])}]
        if thinking_on:
            thought = "A plain question; a short answer will do."
            blocks.insert(0, {"type": "thinking", "thinking": thought, "signature": sign("thinking", thought)})
        return blocks, "end_turn"
    results = [b for m in messages for b in blocks_of(m["content"]) if b.get("type") == "tool_result"]
    n = len(results)
    blocks = []
    if thinking_on:
        thought = THOUGHTS[min(n, 2)]
        blocks.append({"type": "thinking", "thinking": thought, "signature": sign("thinking", thought)})
        if n == 0 and body["thinking"]["type"] == "enabled":
            blocks.append({"type": "redacted_thinking", "data": redacted_data(n)})
    if n >= 2:
        said = "; ".join(text_of(r.get("content")) if not isinstance(r.get("content"), str)
                         else r["content"] for r in results)
        blocks.append({"type": "text", "text": "Done: %s" % said})
        return blocks, "end_turn"
    args = {"city": "Paris"} if n == 0 else {"city": "Paris", "days": 2}
    blocks.append({"type": "tool_use", "id": "toolu_strict_%d" % n, "name": tools[0]["name"], "input": args})
    return blocks, "tool_use"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    lock = threading.Lock()
    received = []
    api_key = None

    def log_message(self, fmt, *args):
        if os.environ.get("FAKE_UPSTREAMS_VERBOSE"):
            sys.stderr.write("strict anthropic: %s\n" % (fmt % args))

    def send_json(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def do_GET(self):
        if self.path.split("?")[0] == "/_received":
            with self.lock:
                self.send_json(200, list(self.received))
            return
        self.send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": "not found"}})

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        record = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
        with self.lock:
            self.received.append(record)
        try:
            if self.path.split("?")[0] != "/v1/messages":
                raise Refused("not found", 404, "not_found_error")
            if self.headers.get("x-api-key") != self.api_key:
                raise Refused("invalid x-api-key", 401, "authentication_error")
            if self.headers.get("anthropic-version") != ANTHROPIC_VERSION:
                raise Refused("anthropic-version: header is required")
            try:
                body = json.loads(raw)
            except ValueError:
                raise Refused("request body is not valid JSON")
            record["body"] = body
            if not isinstance(body, dict):
                raise Refused("request body must be an object")
            markers = check(body, body.get("stream"))
        except Refused as e:
            record["status"] = e.status
            record["error"] = str(e)
            self.send_json(e.status, {"type": "error", "error": {"type": e.kind, "message": str(e)}})
            return
        record["status"] = 200
        blocks, stop_reason = plan(body)
        usage = dict(USAGE_CACHED if markers else USAGE_PLAIN)
        msg_id = "msg_strict_%d" % int(time.time() * 1000)
        if not body.get("stream"):
            self.send_json(200, {
                "id": msg_id, "type": "message", "role": "assistant", "model": body["model"],
                "content": blocks, "stop_reason": stop_reason, "stop_sequence": None,
                "usage": dict(usage, output_tokens=OUTPUT_TOKENS),
            })
            return
        self.stream(msg_id, body["model"], blocks, stop_reason, usage)

    def event(self, name, data):
        self.wfile.write(("event: %s\ndata: %s\n\n" % (name, json.dumps(data))).encode())
        self.wfile.flush()

    def stream(self, msg_id, model, blocks, stop_reason, usage):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True
        self.event("message_start", {"type": "message_start", "message": {
            "id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": dict(usage, output_tokens=1)}})
        for index, block in enumerate(blocks):
            kind = block["type"]
            start = {"thinking": {"type": "thinking", "thinking": "", "signature": ""},
                     "text": {"type": "text", "text": ""},
                     "tool_use": dict(block, input={}),
                     "redacted_thinking": block}[kind]
            self.event("content_block_start", {"type": "content_block_start", "index": index,
                                               "content_block": start})

            def delta(d):
                self.event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})

            if kind == "thinking":
                text = block["thinking"]
                for i in range(0, len(text), 16):
                    delta({"type": "thinking_delta", "thinking": text[i:i + 16]})
                delta({"type": "signature_delta", "signature": block["signature"]})
            elif kind == "text":
                text = block["text"]
                for i in range(0, len(text), 7):
                    delta({"type": "text_delta", "text": text[i:i + 7]})
            elif kind == "tool_use":
                raw = json.dumps(block["input"])
                for i in range(0, len(raw), 6):
                    delta({"type": "input_json_delta", "partial_json": raw[i:i + 6]})
            self.event("content_block_stop", {"type": "content_block_stop", "index": index})
        self.event("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                     "usage": {"output_tokens": OUTPUT_TOKENS}})
        self.event("message_stop", {"type": "message_stop"})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--api-key", required=True)
    args = parser.parse_args()
    handler = type("BoundHandler", (Handler,), {"api_key": args.api_key, "received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"url": "http://127.0.0.1:%d" % server.server_address[1]}, f)
    os.replace(tmp, args.ready_file)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
