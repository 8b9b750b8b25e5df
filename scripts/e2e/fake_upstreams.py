#!/usr/bin/env python3
"""Fake OpenAI-style and Anthropic-style upstreams for scripts/e2e-sdk (standard library only).

Two ThreadingHTTPServers on 127.0.0.1, each on a port of the OS's choosing. Once both listen,
their base URLs are written as JSON to the file given by --ready-file:
    {"openai": "http://127.0.0.1:P1", "anthropic": "http://127.0.0.1:P2"}

Every request either server receives is recorded (path, lower-cased headers, JSON body) and
served back by `GET /_received` on that server, so the test can assert what the switcher sent.

OpenAI-style (any path prefix, so one server stands for several accounts):
    POST .../chat/completions   JSON answer, or SSE chunks when "stream": true
                                (a usage chunk when stream_options.include_usage is true)
    GET  .../models             a model list
  The answer's text is "openai-fake[<model>]: <last user text>".

Anthropic-style:
    POST /v1/messages           Messages API JSON, or its SSE event stream when "stream": true
  Checks x-api-key (must equal --anthropic-key) and anthropic-version: 2023-06-01; answers
  401 / 400 in the Anthropic error shape otherwise.
  - last user turn holds a tool_result   -> text "Tool said: <result>"   (stop_reason end_turn)
  - the request has tools (no result yet) -> a text block + a tool_use block (stop_reason tool_use)
  - otherwise                              -> text "claude-fake: <last user text>"
  Models with special behaviour:
  - claude-429              -> 429 rate_limit_error
  - claude-midstream-error  -> (stream) some text, then an `error` event (overloaded_error)
"""

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANTHROPIC_VERSION = "2023-06-01"
TOOL_USE_ID = "toolu_01A09q90qw90lq917835lq9"
TOOL_INPUT = {"city": "Paris", "units": "celsius"}
# The tool input's JSON, cut at awkward places for input_json_delta events.
TOOL_INPUT_PIECES = ['{"city": "Pa', 'ris", "un', 'its": "cel', 'sius"}']
# Anthropic usage the fake reports: prompt = 21 + 3 + 5 = 29, completion = 14.
USAGE_START = {
    "input_tokens": 21,
    "cache_creation_input_tokens": 3,
    "cache_read_input_tokens": 5,
    "output_tokens": 1,
}
USAGE_FINAL_OUTPUT = 14


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.items = []

    def add(self, item):
        with self.lock:
            self.items.append(item)

    def all(self):
        with self.lock:
            return list(self.items)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    recorder = None  # set per server subclass

    def log_message(self, fmt, *args):  # keep the test output clean
        if os.environ.get("FAKE_UPSTREAMS_VERBOSE"):
            sys.stderr.write("fake %s: %s\n" % (self.server_name_tag, fmt % args))

    # --- helpers -------------------------------------------------------------------------
    def read_json(self):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = {"_unparsed": raw.decode("utf-8", "replace")}
        self.recorder.add(
            {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body,
            }
        )
        return body

    def send_json(self, status, obj, extra_headers=()):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in extra_headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def start_sse(self):
        # No content-length: the stream ends when the connection closes.
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True

    def sse_write(self, raw):
        self.wfile.write(raw.encode())
        self.wfile.flush()

    def do_GET(self):
        if self.path.split("?")[0] == "/_received":
            self.send_json(200, self.recorder.all())
            return
        self.get()

    def do_POST(self):
        self.post()

    def get(self):
        self.send_json(404, {"error": {"message": "not found", "type": "not_found"}})

    def post(self):
        self.send_json(404, {"error": {"message": "not found", "type": "not_found"}})


def user_text(content):
    """The text of a message's content, string or list of parts."""
    if isinstance(content, str):
        return content
    parts = []
    for part in content or []:
        if isinstance(part, dict) and part.get("type") == "text":
            parts.append(part.get("text", ""))
    return "".join(parts)


# ---------------------------------------------------------------------------------------
# OpenAI-style
# ---------------------------------------------------------------------------------------
class OpenAIHandler(Handler):
    server_name_tag = "openai"

    def get(self):
        path = self.path.split("?")[0]
        if path.endswith("/models"):
            self.recorder.add({"method": "GET", "path": self.path, "headers": {}, "body": None})
            self.send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": "gpt-4o-mini", "object": "model", "created": 1, "owned_by": "fake"}
                    ],
                },
            )
            return
        super().get()

    def post(self):
        path = self.path.split("?")[0]
        if not path.endswith("/chat/completions"):
            return super().post()
        body = self.read_json() or {}
        if not self.headers.get("authorization", "").startswith("Bearer "):
            self.send_json(
                401,
                {"error": {"message": "missing bearer key", "type": "invalid_request_error",
                           "code": "invalid_api_key"}},
            )
            return
        model = body.get("model", "")
        messages = body.get("messages") or []
        last_user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
        text = "openai-fake[%s]: %s" % (model, user_text(last_user.get("content")))
        cid = "chatcmpl-fake-%d" % int(time.time() * 1000)
        created = int(time.time())
        usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
        if not body.get("stream"):
            self.send_json(
                200,
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                },
            )
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.start_sse()

        def chunk(delta, finish=None, **extra):
            obj = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if include_usage:
                obj["usage"] = None
            obj.update(extra)
            self.sse_write("data: %s\n\n" % json.dumps(obj))

        chunk({"role": "assistant", "content": ""})
        words = text.split(" ")
        for i, word in enumerate(words):
            chunk({"content": word if i == 0 else " " + word})
            time.sleep(0.005)
        chunk({}, "stop")
        if include_usage:
            self.sse_write(
                "data: %s\n\n"
                % json.dumps(
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                )
            )
        self.sse_write("data: [DONE]\n\n")


# ---------------------------------------------------------------------------------------
# Anthropic-style
# ---------------------------------------------------------------------------------------
def anthropic_error(kind, message):
    return {"type": "error", "error": {"type": kind, "message": message}}


def anthropic_plan(body):
    """What to answer: (content blocks, stop_reason)."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    content = last.get("content")
    blocks = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
    results = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
    if last.get("role") == "user" and results:
        result = results[0].get("content")
        result_text = result if isinstance(result, str) else user_text(result)
        return [{"type": "text", "text": "Tool said: %s" % result_text}], "end_turn"
    tools = body.get("tools") or []
    if tools:
        return (
            [
                {"type": "text", "text": "Let me look that up."},
                {"type": "tool_use", "id": TOOL_USE_ID, "name": tools[0]["name"],
                 "input": TOOL_INPUT},
            ],
            "tool_use",
        )
    return [{"type": "text", "text": "claude-fake: %s" % user_text(content)}], "end_turn"


class AnthropicHandler(Handler):
    server_name_tag = "anthropic"
    api_key = None  # set at startup

    def post(self):
        if self.path.split("?")[0] != "/v1/messages":
            return super().post()
        body = self.read_json() or {}
        if self.headers.get("x-api-key") != self.api_key:
            self.send_json(401, anthropic_error("authentication_error", "invalid x-api-key"))
            return
        if self.headers.get("anthropic-version") != ANTHROPIC_VERSION:
            self.send_json(
                400, anthropic_error("invalid_request_error", "anthropic-version header is required")
            )
            return
        if not isinstance(body.get("max_tokens"), int):
            self.send_json(400, anthropic_error("invalid_request_error", "max_tokens: Field required"))
            return
        model = body.get("model", "")
        if model == "claude-429":
            self.send_json(
                429,
                anthropic_error("rate_limit_error", "fake rate limit: slow down"),
                extra_headers=[("retry-after", "0")],
            )
            return
        blocks, stop_reason = anthropic_plan(body)
        msg_id = "msg_fake_%d" % int(time.time() * 1000)
        if not body.get("stream"):
            self.send_json(
                200,
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": blocks,
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": dict(USAGE_START, output_tokens=USAGE_FINAL_OUTPUT),
                },
            )
            return
        self.stream(msg_id, model, blocks, stop_reason)

    def event(self, name, data):
        self.sse_write("event: %s\ndata: %s\n\n" % (name, json.dumps(data)))

    def stream(self, msg_id, model, blocks, stop_reason):
        self.start_sse()
        self.event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": msg_id, "type": "message", "role": "assistant", "model": model,
                    "content": [], "stop_reason": None, "stop_sequence": None,
                    "usage": USAGE_START,
                },
            },
        )
        self.event("ping", {"type": "ping"})
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                self.event(
                    "content_block_start",
                    {"type": "content_block_start", "index": index,
                     "content_block": {"type": "text", "text": ""}},
                )
                text = block["text"]
                pieces = [text[i:i + 5] for i in range(0, len(text), 5)]
                for n, piece in enumerate(pieces):
                    data = {"type": "content_block_delta", "index": index,
                            "delta": {"type": "text_delta", "text": piece}}
                    raw = "event: content_block_delta\ndata: %s\n\n" % json.dumps(data)
                    if n % 2:
                        # Split one event over two writes to exercise the proxy's SSE parser.
                        self.sse_write(raw[:13])
                        time.sleep(0.002)
                        self.sse_write(raw[13:])
                    else:
                        self.sse_write(raw)
                    if model == "claude-midstream-error" and n == 1:
                        self.event(
                            "error", anthropic_error("overloaded_error", "fake overload mid stream")
                        )
                        return
            else:
                self.event(
                    "content_block_start",
                    {"type": "content_block_start", "index": index,
                     "content_block": {"type": "tool_use", "id": block["id"],
                                       "name": block["name"], "input": {}}},
                )
                for piece in TOOL_INPUT_PIECES:
                    self.event(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": index,
                         "delta": {"type": "input_json_delta", "partial_json": piece}},
                    )
            self.event("content_block_stop", {"type": "content_block_stop", "index": index})
        self.event(
            "message_delta",
            {"type": "message_delta",
             "delta": {"stop_reason": stop_reason, "stop_sequence": None},
             "usage": {"output_tokens": USAGE_FINAL_OUTPUT}},
        )
        self.event("message_stop", {"type": "message_stop"})


def serve(handler_base, recorder, **attrs):
    handler = type(handler_base.__name__ + "Bound", (handler_base,), dict(recorder=recorder, **attrs))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return "http://127.0.0.1:%d" % server.server_address[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--anthropic-key", required=True)
    args = parser.parse_args()

    urls = {
        "openai": serve(OpenAIHandler, Recorder()),
        "anthropic": serve(AnthropicHandler, Recorder(), api_key=args.anthropic_key),
    }
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(urls, f)
    os.replace(tmp, args.ready_file)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
