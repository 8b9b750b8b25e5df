"""Recording fake upstreams for scripts/e2e-responses: one server, three dialects.

- POST /v1/responses: an OpenAI Responses upstream (the pass-through), JSON or events;
- POST /v1/chat/completions: an OpenAI-compatible upstream. Offered Codex's `exec_command`
  tool and no tool result yet, it calls the tool; with the result, it gives its final answer;
- POST /v1/messages: an Anthropic upstream whose answers carry signed thinking, and a
  tool_use when a function tool is offered and no tool result came yet.
GET /_requests returns everything received (path, headers, body), in order.
"""

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RECORDED = []
LOCK = threading.Lock()
SIGNATURE = "EqQBCkYIBxgCKkBfakeSignature+/=="
FINAL = "FAKE-FINAL-ANSWER: the command ran"


def sse(events):
    return b"".join(
        (f"event: {name}\n" if name else "").encode() + b"data: " + json.dumps(data).encode() + b"\n\n"
        for name, data in events
    )


def responses_answer(body):
    text = "pong from the openai fake"
    usage = {"input_tokens": 7, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 3,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 10}
    item = {"id": "msg_fake1", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}
    base = {"id": "resp_fake1", "object": "response", "created_at": 1, "model": body.get("model"),
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "output": []}
    if not body.get("stream"):
        return "application/json", json.dumps(dict(base, status="completed", output=[item], usage=usage)).encode()
    seq = iter(range(1000))
    ev = lambda t, **k: (t, dict(type=t, sequence_number=next(seq), **k))
    return "text/event-stream", sse([
        ev("response.created", response=dict(base, status="in_progress")),
        ev("response.output_item.added", output_index=0, item=dict(item, status="in_progress", content=[])),
        ev("response.content_part.added", item_id="msg_fake1", output_index=0, content_index=0,
           part={"type": "output_text", "text": "", "annotations": []}),
        ev("response.output_text.delta", item_id="msg_fake1", output_index=0, content_index=0, delta=text, logprobs=[]),
        ev("response.output_text.done", item_id="msg_fake1", output_index=0, content_index=0, text=text, logprobs=[]),
        ev("response.content_part.done", item_id="msg_fake1", output_index=0, content_index=0,
           part={"type": "output_text", "text": text, "annotations": []}),
        ev("response.output_item.done", output_index=0, item=item),
        ev("response.completed", response=dict(base, status="completed", output=[item], usage=usage)),
    ])


def chat_answer(body):
    names = [t.get("function", {}).get("name") for t in body.get("tools") or []]
    tool_results = [m for m in body.get("messages", []) if m.get("role") == "tool"]
    call = None
    if "exec_command" in names and not tool_results:
        call = {"id": "call_fake1", "type": "function",
                "function": {"name": "exec_command", "arguments": json.dumps({"cmd": "echo codex-ran-this"})}}
        text, finish = None, "tool_calls"
    elif tool_results:
        text, finish = FINAL, "stop"
    else:
        text, finish = "hello from the compatible fake", "stop"
    usage = {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}
    if not body.get("stream"):
        message = {"role": "assistant", "content": text}
        if call:
            message["tool_calls"] = [call]
        return "application/json", json.dumps({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": body.get("model"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}).encode()
    chunk = lambda delta, fin=None: (None, {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                                            "created": 1, "model": body.get("model"),
                                            "choices": [{"index": 0, "delta": delta, "finish_reason": fin}]})
    events = [chunk({"role": "assistant", "content": ""})]
    if call:
        events.append(chunk({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                             "function": {"name": "exec_command", "arguments": ""}}]}))
        args = call["function"]["arguments"]
        for piece in (args[:8], args[8:]):
            events.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
    else:
        for piece in (text[:6], text[6:]):
            events.append(chunk({"content": piece}))
    events.append(chunk({}, finish))
    events.append((None, {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                          "model": body.get("model"), "choices": [], "usage": usage}))
    return "text/event-stream", sse(events) + b"data: [DONE]\n\n"


def anthropic_answer(body):
    tools = body.get("tools") or []
    has_result = any(isinstance(m.get("content"), list) and any(b.get("type") == "tool_result" for b in m["content"])
                     for m in body.get("messages", []))
    blocks = [{"type": "thinking", "thinking": "Let me think.", "signature": SIGNATURE}]
    if tools and not has_result:
        name = "exec_command" if any(t["name"] == "exec_command" for t in tools) else tools[0]["name"]
        args = {"cmd": "echo codex-ran-this"} if name == "exec_command" else {"city": "Paris"}
        blocks.append({"type": "tool_use", "id": "toolu_fake1", "name": name, "input": args})
        stop = "tool_use"
    else:
        blocks.append({"type": "text", "text": "hello from the claude fake"})
        stop = "end_turn"
    usage = {"input_tokens": 12, "output_tokens": 6}
    message = {"id": "msg_fake_claude", "type": "message", "role": "assistant", "model": body.get("model"),
               "content": blocks, "stop_reason": stop, "stop_sequence": None, "usage": usage}
    if not body.get("stream"):
        return "application/json", json.dumps(message).encode()
    events = [("message_start", {"type": "message_start", "message": dict(message, content=[], stop_reason=None,
                                                                           usage={"input_tokens": 12, "output_tokens": 1})})]
    for i, b in enumerate(blocks):
        if b["type"] == "thinking":
            events += [("content_block_start", {"type": "content_block_start", "index": i,
                                                "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
                       ("content_block_delta", {"type": "content_block_delta", "index": i,
                                                "delta": {"type": "thinking_delta", "thinking": b["thinking"]}}),
                       ("content_block_delta", {"type": "content_block_delta", "index": i,
                                                "delta": {"type": "signature_delta", "signature": SIGNATURE}})]
        elif b["type"] == "text":
            events += [("content_block_start", {"type": "content_block_start", "index": i,
                                                "content_block": {"type": "text", "text": ""}}),
                       ("content_block_delta", {"type": "content_block_delta", "index": i,
                                                "delta": {"type": "text_delta", "text": b["text"]}})]
        else:
            events += [("content_block_start", {"type": "content_block_start", "index": i,
                                                "content_block": dict(b, input={})}),
                       ("content_block_delta", {"type": "content_block_delta", "index": i,
                                                "delta": {"type": "input_json_delta", "partial_json": json.dumps(b["input"])}})]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events += [("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                  "usage": {"output_tokens": 6}}),
               ("message_stop", {"type": "message_stop"})]
    return "text/event-stream", sse(events)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, ctype, data):
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/_requests":
            with LOCK:
                data = json.dumps(RECORDED).encode()
            return self.reply(200, "application/json", data)
        self.reply(404, "application/json", b'{"error":{"message":"no such path"}}')

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.loads(raw or b"{}")
        with LOCK:
            RECORDED.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                             "body": body})
        key = self.headers.get("x-api-key") or (self.headers.get("authorization") or "")[7:]
        if key != self.server.key:
            return self.reply(401, "application/json", b'{"error":{"message":"bad key","type":"auth"}}')
        handler = {"/v1/responses": responses_answer, "/v1/chat/completions": chat_answer,
                   "/v1/messages": anthropic_answer}.get(self.path.split("?")[0])
        if handler is None:
            return self.reply(404, "application/json", b'{"error":{"message":"no such path"}}')
        self.reply(200, *handler(body))

    def log_message(self, *args):
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ready-file", required=True)
    p.add_argument("--key", required=True)
    args = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.key = args.key
    with open(args.ready_file + ".tmp", "w") as f:
        json.dump({"url": f"http://127.0.0.1:{server.server_address[1]}"}, f)
    import os
    os.rename(args.ready_file + ".tmp", args.ready_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
