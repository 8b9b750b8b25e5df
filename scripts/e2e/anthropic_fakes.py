#!/usr/bin/env python3
"""Recording fake upstreams for scripts/e2e-anthropic (standard library only).

Two ThreadingHTTPServers on 127.0.0.1 (ports of the OS's choosing); once both listen their
base URLs are written as JSON to --ready-file: {"anthropic": URL, "openai": URL}.

Every request is recorded with its path (query string included), lower-cased headers and
its body exactly as received (`body_b64`), served back by `GET /_received`.

Both fakes answer the same way, each in its own API's shape, stream or not:
  - the last user turn holds a tool result  -> text "Tool said: <the result's text>"
  - the last user turn contains E2E-USE-TOOL and the request has tools -> one tool call:
      to `Bash` (what Claude Code offers): {"command": "echo <the word after E2E-USE-TOOL>",
      "description": "Print a word"}; to any other tool: {"city": "Paris"}
  - otherwise -> text "fake[<model>]: <the last user text, first 60 characters>"
Anthropic-style: POST /v1/messages[?...] (x-api-key must equal --anthropic-key, else 401 in
Anthropic's shape), POST /v1/messages/count_tokens -> {"input_tokens": 42}.
OpenAI-style: POST <any prefix>/chat/completions (Authorization must be Bearer --openai-key).
"""

import argparse
import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MARKER = "E2E-USE-TOOL"


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


def texts_of(content):
    """Every text in an Anthropic or OpenAI content value (string or list of parts)."""
    if isinstance(content, str):
        return [content]
    out = []
    for part in content or []:
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            out.append(part["text"])
        if part.get("type") == "tool_result":
            out.extend(texts_of(part.get("content")))
    return out


def decide(last_user_text, tool_result, tool_names):
    """('text', str) or ('tool', name, input)."""
    if tool_result is not None:
        return ("text", "Tool said: " + tool_result.strip())
    if MARKER in last_user_text and tool_names:
        m = re.search(MARKER + r"\s+(\S+)", last_user_text)
        word = m.group(1) if m else "hello"
        if "Bash" in tool_names:
            return ("tool", "Bash", {"command": "echo " + word, "description": "Print a word"})
        return ("tool", tool_names[0], {"city": "Paris"})
    return ("text", None)


def pieces(s, n=3):
    """s cut into about n pieces (for deltas that arrive in many parts)."""
    size = max(1, len(s) // n)
    return [s[i:i + size] for i in range(0, len(s), size)] or [""]


class Base(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    recorder = None
    key = None

    def log_message(self, fmt, *args):
        pass

    def read_body(self):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.recorder.add({
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body_b64": base64.b64encode(raw).decode(),
        })
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return None

    def send_json(self, status, value):
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_events(self):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True

    def do_GET(self):
        if self.path == "/_received":
            return self.send_json(200, self.recorder.all())
        self.send_json(404, {"error": "not found"})


class Anthropic(Base):
    def error(self, status, kind, message):
        self.send_json(status, {"type": "error", "error": {"type": kind, "message": message}})

    def do_POST(self):
        body = self.read_body()
        if self.headers.get("x-api-key") != self.key:
            return self.error(401, "authentication_error", "invalid x-api-key")
        if not isinstance(body, dict):
            return self.error(400, "invalid_request_error", "body is not JSON")
        if self.path.startswith("/v1/messages/count_tokens"):
            return self.send_json(200, {"input_tokens": 42})
        if not self.path.startswith("/v1/messages"):
            return self.error(404, "not_found_error", "no such path")
        messages = body.get("messages") or []
        last = messages[-1] if messages else {}
        content = last.get("content")
        tool_result = None
        if isinstance(content, list):
            results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
            if results:
                tool_result = "\n".join(texts_of(results[-1].get("content")))
        user_text = "\n".join(texts_of(content))
        tool_names = [t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
        decision = decide(user_text, tool_result, tool_names)
        model = body.get("model")
        if decision[0] == "text":
            text = decision[1] or "fake[%s]: %s" % (model, user_text[:60])
            blocks = [{"type": "text", "text": text}]
            stop = "end_turn"
        else:
            blocks = [{"type": "text", "text": "Running it."},
                      {"type": "tool_use", "id": "toolu_e2e_%d" % len(self.recorder.all()),
                       "name": decision[1], "input": decision[2]}]
            stop = "tool_use"
        usage = {"input_tokens": 21, "cache_creation_input_tokens": 3,
                 "cache_read_input_tokens": 5, "output_tokens": 14}
        message = {"id": "msg_e2e", "type": "message", "role": "assistant", "model": model,
                   "content": blocks, "stop_reason": stop, "stop_sequence": None,
                   "usage": usage}
        if body.get("stream") is not True:
            return self.send_json(200, message)
        self.start_events()

        def event(kind, data):
            data = dict(data, type=kind)
            self.wfile.write(("event: %s\ndata: %s\n\n" % (kind, json.dumps(data))).encode())
            self.wfile.flush()

        event("message_start", {"message": dict(message, content=[], stop_reason=None,
                                                usage=dict(usage, output_tokens=1))})
        event("ping", {})
        for i, block in enumerate(blocks):
            if block["type"] == "text":
                event("content_block_start", {"index": i, "content_block": {"type": "text", "text": ""}})
                for p in pieces(block["text"]):
                    event("content_block_delta", {"index": i, "delta": {"type": "text_delta", "text": p}})
            else:
                event("content_block_start", {"index": i, "content_block": dict(block, input={})})
                for p in pieces(json.dumps(block["input"]), 4):
                    event("content_block_delta", {"index": i, "delta": {"type": "input_json_delta", "partial_json": p}})
            event("content_block_stop", {"index": i})
        event("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None},
                                "usage": {"output_tokens": 14}})
        event("message_stop", {})


class OpenAI(Base):
    def do_POST(self):
        body = self.read_body()
        if self.headers.get("authorization") != "Bearer " + self.key:
            return self.send_json(401, {"error": {"message": "bad key", "type": "invalid_request_error", "code": "invalid_api_key"}})
        if not isinstance(body, dict) or not self.path.endswith("/chat/completions"):
            return self.send_json(400, {"error": {"message": "bad request", "type": "invalid_request_error", "code": None}})
        messages = body.get("messages") or []
        tool_result = None
        # The tool messages that end the conversation answer the last tool call.
        if messages and messages[-1].get("role") == "tool":
            tool_result = "\n".join(texts_of(messages[-1].get("content")))
        users = [m for m in messages if m.get("role") == "user"]
        user_text = "\n".join(texts_of(users[-1].get("content"))) if users else ""
        tool_names = [t.get("function", {}).get("name") for t in body.get("tools") or []]
        decision = decide(user_text, tool_result, tool_names)
        model = body.get("model")
        n = len(self.recorder.all())
        if decision[0] == "text":
            text = decision[1] or "fake[%s]: %s" % (model, user_text[:60])
            message = {"role": "assistant", "content": text}
            finish = "stop"
        else:
            call = {"id": "call_e2e_%d" % n, "type": "function",
                    "function": {"name": decision[1], "arguments": json.dumps(decision[2])}}
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            finish = "tool_calls"
        usage = {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49,
                 "prompt_tokens_details": {"cached_tokens": 8}}
        if body.get("stream") is not True:
            return self.send_json(200, {
                "id": "chatcmpl-e2e-%d" % n, "object": "chat.completion", "created": 1,
                "model": model, "choices": [{"index": 0, "message": message,
                                             "finish_reason": finish, "logprobs": None}],
                "usage": usage})
        self.start_events()

        def chunk(delta, finish_reason=None, extra=None):
            data = {"id": "chatcmpl-e2e-%d" % n, "object": "chat.completion.chunk",
                    "created": 1, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
            if extra:
                data.update(extra)
            self.wfile.write(("data: %s\n\n" % json.dumps(data)).encode())
            self.wfile.flush()

        chunk({"role": "assistant", "content": ""})
        if message.get("content"):
            for p in pieces(message["content"]):
                chunk({"content": p})
        for i, call in enumerate(message.get("tool_calls") or []):
            args = pieces(call["function"]["arguments"], 4)
            chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                   "function": {"name": call["function"]["name"], "arguments": ""}}]})
            for p in args:
                chunk({"tool_calls": [{"index": i, "function": {"arguments": p}}]})
        chunk({}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            self.wfile.write(("data: %s\n\n" % json.dumps(
                {"id": "chatcmpl-e2e-%d" % n, "object": "chat.completion.chunk", "created": 1,
                 "model": model, "choices": [], "usage": usage})).encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def serve(handler_base, key):
    handler = type(handler_base.__name__, (handler_base,), {"recorder": Recorder(), "key": key})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--anthropic-key", required=True)
    parser.add_argument("--openai-key", required=True)
    args = parser.parse_args()
    a = serve(Anthropic, args.anthropic_key)
    o = serve(OpenAI, args.openai_key)
    urls = {"anthropic": "http://127.0.0.1:%d" % a.server_address[1],
            "openai": "http://127.0.0.1:%d" % o.server_address[1]}
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(urls, f)
    import os
    os.replace(tmp, args.ready_file)
    threading.Event().wait()


if __name__ == "__main__":
    main()
