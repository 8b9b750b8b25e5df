#!/usr/bin/env python3
"""The official OpenAI Python SDK against a running switcher-api (driven by scripts/e2e-sdk).

Environment (set by scripts/e2e-sdk):
  SWITCHER_URL         http://127.0.0.1:PORT of the switcher
  ROUTER_AGENT_KEY     the agent key
  FAKE_OPENAI_URL      the fake OpenAI-style upstream (scripts/e2e/fake_upstreams.py)
  FAKE_ANTHROPIC_URL   the fake Anthropic-style upstream
  E2E_DATABASE_URL     the switcher's database (for the audit check; psql must be on PATH)
  E2E_ANTHROPIC_KEY, E2E_OPENAI_KEY, E2E_COMPAT_KEY   the upstream keys of the profiles

Agents and profiles, as scripts/e2e-sdk set them up:
  e2e-openai    -> e2e-openai::gpt-4o-mini          (provider openai, base_url FAKE_OPENAI_URL/v1)
  e2e-compat    -> e2e-compat::llama-3-8b           (openai_compatible, FAKE_OPENAI_URL/compat)
  e2e-claude    -> e2e-claude::claude-fake-1        (anthropic, FAKE_ANTHROPIC_URL)
  e2e-claude-429     -> e2e-claude::claude-429
  e2e-claude-broken  -> e2e-claude::claude-midstream-error
  e2e-nobody    -> (no active model)

Prints one line per check and ends with "N passed, M failed"; exits 1 when any failed.
"""

import json
import os
import re
import subprocess
import sys
import time
import traceback
import urllib.request

import openai
from openai import OpenAI

URL = os.environ["SWITCHER_URL"]
AGENT_KEY = os.environ["ROUTER_AGENT_KEY"]
FAKE_OPENAI = os.environ["FAKE_OPENAI_URL"]
FAKE_ANTHROPIC = os.environ["FAKE_ANTHROPIC_URL"]
DATABASE_URL = os.environ.get("E2E_DATABASE_URL")
ANTHROPIC_KEY = os.environ["E2E_ANTHROPIC_KEY"]
OPENAI_KEY = os.environ["E2E_OPENAI_KEY"]
COMPAT_KEY = os.environ["E2E_COMPAT_KEY"]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "units": {"type": "string"}},
            "required": ["city"],
        },
    },
}
EXPECTED_ARGS = {"city": "Paris", "units": "celsius"}
TOOL_RESULT = "18 degrees and sunny"

results = []


def check(name):
    """Decorator: runs the function as one named check, recording pass or fail."""

    def wrap(fn):
        try:
            detail = fn()
        except Exception as e:  # noqa: BLE001 - every failure is a failed check
            results.append(False)
            print("FAIL %s: %s: %s" % (name, type(e).__name__, e), flush=True)
            if os.environ.get("E2E_VERBOSE"):
                traceback.print_exc()
        else:
            results.append(True)
            print("ok   %s%s" % (name, " (%s)" % detail if detail else ""), flush=True)
        return fn

    return wrap


def expect(cond, message):
    if not cond:
        raise AssertionError(message)


def client(agent_id):
    # The real SDK, unchanged but for base_url, api_key and the x-agent-id header.
    # No retries: a retried 429 would only slow the test down and hide what happened.
    return OpenAI(
        base_url=f"{URL}/v1",
        api_key=AGENT_KEY,
        default_headers={"x-agent-id": agent_id},
        max_retries=0,
        timeout=30,
    )


def received(base):
    with urllib.request.urlopen(f"{base}/_received", timeout=10) as r:
        return json.load(r)


def last_received(base, path_suffix, since):
    """The requests a fake upstream got on a path ending in path_suffix after index `since`."""
    items = received(base)[since:]
    return [i for i in items if i["path"].split("?")[0].endswith(path_suffix)]


def mark(base):
    return len(received(base))


def stream_collect(stream):
    """Reassembles a streamed answer from the SDK's chunks, the way an agent does."""
    text, finish, usage, ids, tool_calls, chunks = [], None, None, set(), {}, 0
    for chunk in stream:
        chunks += 1
        ids.add(chunk.id)
        expect(chunk.object == "chat.completion.chunk", f"chunk object {chunk.object!r}")
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content:
                text.append(delta.content)
            for tc in delta.tool_calls or []:
                slot = tool_calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                if tc.id:
                    slot["id"] = tc.id
                if tc.function is not None:
                    if tc.function.name:
                        slot["name"] += tc.function.name
                    if tc.function.arguments:
                        slot["arguments"] += tc.function.arguments
            if choice.finish_reason:
                finish = choice.finish_reason
    return {
        "text": "".join(text),
        "finish": finish,
        "usage": usage,
        "ids": ids,
        "tool_calls": tool_calls,
        "chunks": chunks,
    }


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------
@check("models.list() lists PROFILE::model ids")
def _():
    models = client("e2e-openai").models.list()
    ids = {m.id for m in models}
    want = {
        "e2e-openai::gpt-4o-mini",
        "e2e-compat::llama-3-8b",
        "e2e-claude::claude-fake-1",
        "e2e-claude::claude-429",
    }
    expect(want <= ids, f"missing {sorted(want - ids)} in {sorted(ids)}")
    owners = {m.id: m.owned_by for m in models}
    expect(owners["e2e-claude::claude-fake-1"] == "e2e-claude", f"owned_by {owners}")
    return f"{len(ids)} models"


@check("chat completion through the openai profile")
def _():
    since = mark(FAKE_OPENAI)
    raw = client("e2e-openai").chat.completions.with_raw_response.create(
        model="whatever-the-agent-says",
        messages=[{"role": "user", "content": "hello openai"}],
    )
    expect(raw.headers.get("x-switcher-profile") == "e2e-openai", f"headers {dict(raw.headers)}")
    expect(raw.headers.get("x-switcher-model") == "gpt-4o-mini", f"headers {dict(raw.headers)}")
    resp = raw.parse()
    content = resp.choices[0].message.content
    expect(content == "openai-fake[gpt-4o-mini]: hello openai", f"content {content!r}")
    expect(resp.choices[0].finish_reason == "stop", f"finish {resp.choices[0].finish_reason}")
    expect(resp.usage.total_tokens == 18, f"usage {resp.usage}")
    got = last_received(FAKE_OPENAI, "/chat/completions", since)
    expect(len(got) == 1, f"upstream got {len(got)} requests")
    expect(got[0]["path"] == "/v1/chat/completions", f"path {got[0]['path']}")
    expect(got[0]["headers"].get("authorization") == f"Bearer {OPENAI_KEY}", "wrong upstream key")
    expect(got[0]["body"]["model"] == "gpt-4o-mini", f"model {got[0]['body']['model']}")


@check("chat completion through the openai_compatible profile")
def _():
    since = mark(FAKE_OPENAI)
    resp = client("e2e-compat").chat.completions.create(
        model="ignored", messages=[{"role": "user", "content": "hello compat"}]
    )
    content = resp.choices[0].message.content
    expect(content == "openai-fake[llama-3-8b]: hello compat", f"content {content!r}")
    got = last_received(FAKE_OPENAI, "/chat/completions", since)
    expect(len(got) == 1, f"upstream got {len(got)} requests")
    expect(got[0]["path"] == "/compat/chat/completions", f"path {got[0]['path']}")
    expect(got[0]["headers"].get("authorization") == f"Bearer {COMPAT_KEY}", "wrong upstream key")


@check("chat completion through the anthropic profile")
def _():
    since = mark(FAKE_ANTHROPIC)
    resp = client("e2e-claude").chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hello claude"},
        ],
        temperature=1.5,
    )
    msg = resp.choices[0].message
    expect(msg.content == "claude-fake: hello claude", f"content {msg.content!r}")
    expect(msg.role == "assistant", f"role {msg.role}")
    expect(resp.object == "chat.completion", f"object {resp.object}")
    expect(resp.choices[0].finish_reason == "stop", f"finish {resp.choices[0].finish_reason}")
    u = resp.usage
    expect(
        (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (29, 14, 43), f"usage {u}"
    )
    got = last_received(FAKE_ANTHROPIC, "/v1/messages", since)
    expect(len(got) == 1, f"upstream got {len(got)} requests")
    h, body = got[0]["headers"], got[0]["body"]
    expect(h.get("x-api-key") == ANTHROPIC_KEY, "wrong x-api-key upstream")
    expect(h.get("anthropic-version") == "2023-06-01", f"anthropic-version {h.get('anthropic-version')}")
    expect(body["model"] == "claude-fake-1", f"model {body['model']}")
    expect(body.get("system") == "You are terse.", f"system {body.get('system')!r}")
    expect(all(m["role"] != "system" for m in body["messages"]), "system turn passed on")
    expect(body.get("temperature") == 1, f"temperature not clamped: {body.get('temperature')}")
    expect(isinstance(body.get("max_tokens"), int), "no max_tokens upstream")


TOOL_STATE = {}


@check("tool call through the anthropic profile: tool_calls + finish_reason tool_calls")
def _():
    since = mark(FAKE_ANTHROPIC)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    resp = client("e2e-claude").chat.completions.create(
        model="x", messages=messages, tools=[WEATHER_TOOL], tool_choice="auto"
    )
    choice = resp.choices[0]
    expect(choice.finish_reason == "tool_calls", f"finish {choice.finish_reason}")
    calls = choice.message.tool_calls or []
    expect(len(calls) == 1, f"{len(calls)} tool calls")
    call = calls[0]
    expect(call.type == "function", f"type {call.type}")
    expect(call.function.name == "get_weather", f"name {call.function.name}")
    args = json.loads(call.function.arguments)
    expect(args == EXPECTED_ARGS, f"arguments {args}")
    expect(call.id, "no tool call id")
    got = last_received(FAKE_ANTHROPIC, "/v1/messages", since)
    tools = got[-1]["body"].get("tools") or []
    expect(
        len(tools) == 1
        and tools[0]["name"] == "get_weather"
        and tools[0]["input_schema"] == WEATHER_TOOL["function"]["parameters"],
        f"tools upstream {tools}",
    )
    expect(got[-1]["body"].get("tool_choice") == {"type": "auto"}, "tool_choice not translated")
    TOOL_STATE.update(messages=messages, message=choice.message, call=call)
    return f"id {call.id}"


@check("tool result round trip through the anthropic profile: tool_result reaches upstream")
def _():
    expect(TOOL_STATE, "the previous tool call check failed")
    call = TOOL_STATE["call"]
    since = mark(FAKE_ANTHROPIC)
    messages = TOOL_STATE["messages"] + [
        TOOL_STATE["message"].model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": TOOL_RESULT},
    ]
    resp = client("e2e-claude").chat.completions.create(
        model="x", messages=messages, tools=[WEATHER_TOOL]
    )
    choice = resp.choices[0]
    expect(choice.message.content == f"Tool said: {TOOL_RESULT}", f"content {choice.message.content!r}")
    expect(choice.finish_reason == "stop", f"finish {choice.finish_reason}")
    expect(not choice.message.tool_calls, "unexpected tool calls")
    got = last_received(FAKE_ANTHROPIC, "/v1/messages", since)
    expect(len(got) == 1, f"upstream got {len(got)} requests")
    msgs = got[0]["body"]["messages"]
    expect([m["role"] for m in msgs] == ["user", "assistant", "user"], f"roles {[m['role'] for m in msgs]}")
    uses = [b for b in msgs[1]["content"] if b.get("type") == "tool_use"]
    expect(len(uses) == 1 and uses[0]["input"] == EXPECTED_ARGS, f"assistant turn {msgs[1]}")
    results_ = [b for b in msgs[2]["content"] if b.get("type") == "tool_result"]
    expect(len(results_) == 1, f"last user turn {msgs[2]}")
    expect(msgs[2]["content"][0].get("type") == "tool_result", "tool_result is not first")
    expect(
        results_[0]["tool_use_id"] == uses[0]["id"] == call.id,
        f"ids: tool_result {results_[0]['tool_use_id']}, tool_use {uses[0]['id']}, call {call.id}",
    )
    texts = [b for b in msgs[1]["content"] if b.get("type") == "text"]
    expect(all(t.get("text") for t in texts), "empty text block sent upstream")


@check("client tool ids with odd characters stay paired upstream (sanitized the same way)")
def _():
    since = mark(FAKE_ANTHROPIC)
    odd_id = "call:weird.id/1"
    resp = client("e2e-claude").chat.completions.create(
        model="x",
        messages=[
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": odd_id,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": odd_id, "content": "cold"},
        ],
        tools=[WEATHER_TOOL],
    )
    expect(resp.choices[0].message.content == "Tool said: cold", f"content {resp.choices[0].message.content!r}")
    msgs = last_received(FAKE_ANTHROPIC, "/v1/messages", since)[-1]["body"]["messages"]
    use = msgs[1]["content"]
    expect(len(use) == 1 and use[0]["type"] == "tool_use", f"assistant turn {msgs[1]} (empty text block?)")
    tool_use_id = use[0]["id"]
    tool_result_id = msgs[2]["content"][0]["tool_use_id"]
    expect(tool_use_id == tool_result_id, f"{tool_use_id} != {tool_result_id}")
    expect(re.fullmatch(r"[A-Za-z0-9_-]+", tool_use_id), f"id not sanitized: {tool_use_id}")
    return tool_use_id


@check("stream=True through the openai profile: text reassembled")
def _():
    since = mark(FAKE_OPENAI)
    stream = client("e2e-openai").chat.completions.create(
        model="x", messages=[{"role": "user", "content": "stream me please"}], stream=True
    )
    r = stream_collect(stream)
    expect(r["text"] == "openai-fake[gpt-4o-mini]: stream me please", f"text {r['text']!r}")
    expect(r["finish"] == "stop", f"finish {r['finish']}")
    expect(r["chunks"] > 3, f"only {r['chunks']} chunks")
    got = last_received(FAKE_OPENAI, "/chat/completions", since)
    expect(got and got[0]["body"].get("stream") is True, "upstream was not asked to stream")
    expect(got[0]["body"]["model"] == "gpt-4o-mini", f"model {got[0]['body']['model']}")
    return f"{r['chunks']} chunks"


@check("stream=True through the openai_compatible profile, include_usage: usage chunk")
def _():
    stream = client("e2e-compat").chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "stream compat"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    r = stream_collect(stream)
    expect(r["text"] == "openai-fake[llama-3-8b]: stream compat", f"text {r['text']!r}")
    expect(r["usage"] is not None and r["usage"].total_tokens == 18, f"usage {r['usage']}")


@check("stream=True through the anthropic profile: text reassembled, one id")
def _():
    stream = client("e2e-claude").chat.completions.create(
        model="x", messages=[{"role": "user", "content": "stream from claude, please"}], stream=True
    )
    r = stream_collect(stream)
    expect(r["text"] == "claude-fake: stream from claude, please", f"text {r['text']!r}")
    expect(r["finish"] == "stop", f"finish {r['finish']}")
    expect(len(r["ids"]) == 1, f"chunk ids {r['ids']}")
    expect(r["usage"] is None, "usage chunk without stream_options.include_usage")
    return f"{r['chunks']} chunks"


@check("stream=True through the anthropic profile, include_usage: final usage chunk")
def _():
    stream = client("e2e-claude-usage").chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "count my tokens"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    expect(chunks, "no chunks")
    last = chunks[-1]
    expect(last.choices == [], f"last chunk has choices {last.choices}")
    u = last.usage
    expect(u is not None, "no usage on the last chunk")
    expect((u.prompt_tokens, u.completion_tokens, u.total_tokens) == (29, 14, 43), f"usage {u}")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    expect(text == "claude-fake: count my tokens", f"text {text!r}")


STREAM_TOOL = {}


@check("streamed tool call through the anthropic profile: delta.tool_calls reassembled")
def _():
    stream = client("e2e-claude").chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "Weather in Paris, streamed?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    r = stream_collect(stream)
    expect(r["finish"] == "tool_calls", f"finish {r['finish']}")
    expect(r["text"] == "Let me look that up.", f"text {r['text']!r}")
    expect(list(r["tool_calls"]) == [0], f"tool call indexes {list(r['tool_calls'])}")
    call = r["tool_calls"][0]
    expect(call["id"], "no tool call id")
    expect(call["name"] == "get_weather", f"name {call['name']!r}")
    args = json.loads(call["arguments"])
    expect(args == EXPECTED_ARGS, f"arguments {args}")
    STREAM_TOOL.update(call)
    return f"id {call['id']}"


@check("streamed tool result round trip through the anthropic profile: final text")
def _():
    expect(STREAM_TOOL, "the previous streamed tool call check failed")
    since = mark(FAKE_ANTHROPIC)
    call = STREAM_TOOL
    stream = client("e2e-claude").chat.completions.create(
        model="x",
        messages=[
            {"role": "user", "content": "Weather in Paris, streamed?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["name"], "arguments": call["arguments"]},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call["id"], "content": TOOL_RESULT},
        ],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    r = stream_collect(stream)
    expect(r["text"] == f"Tool said: {TOOL_RESULT}", f"text {r['text']!r}")
    expect(r["finish"] == "stop", f"finish {r['finish']}")
    got = last_received(FAKE_ANTHROPIC, "/v1/messages", since)
    msgs = got[-1]["body"]["messages"]
    result = msgs[-1]["content"][0]
    expect(result.get("type") == "tool_result", f"last turn {msgs[-1]}")
    expect(result["tool_use_id"] == call["id"], f"tool_use_id {result['tool_use_id']} != {call['id']}")
    expect(msgs[1]["content"] == [b for b in msgs[1]["content"] if b.get("type") == "tool_use"],
           f"assistant turn with null content carries more than tool_use: {msgs[1]}")


@check("anthropic 429 surfaces as openai.RateLimitError")
def _():
    try:
        client("e2e-claude-429").chat.completions.create(
            model="x", messages=[{"role": "user", "content": "hi"}]
        )
    except openai.RateLimitError as e:
        expect(e.status_code == 429, f"status {e.status_code}")
        expect("fake rate limit" in str(e), f"message {e}")
        expect(isinstance(e.body, dict) and e.body.get("type") == "rate_limit_error", f"body {e.body}")
        return "non-stream"
    raise AssertionError("no exception raised")


@check("anthropic 429 with stream=True surfaces as openai.RateLimitError")
def _():
    try:
        stream = client("e2e-claude-429").chat.completions.create(
            model="x", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        list(stream)
    except openai.RateLimitError as e:
        expect("fake rate limit" in str(e), f"message {e}")
        return None
    raise AssertionError("no exception raised")


@check("anthropic error event mid stream surfaces as openai.APIError")
def _():
    seen = []
    try:
        stream = client("e2e-claude-broken").chat.completions.create(
            model="x", messages=[{"role": "user", "content": "this will break"}], stream=True
        )
        for chunk in stream:
            for c in chunk.choices:
                seen.append(c.delta.content or "")
    except openai.APIError as e:
        expect("fake overload mid stream" in str(e), f"message {e}")
        expect("".join(seen), "no text before the error")
        return f"after {''.join(seen)!r}"
    raise AssertionError(f"no exception raised, got {''.join(seen)!r}")


@check("no active model surfaces as openai.BadRequestError")
def _():
    try:
        client("e2e-nobody").chat.completions.create(
            model="x", messages=[{"role": "user", "content": "hi"}]
        )
    except openai.BadRequestError as e:
        expect(e.status_code == 400, f"status {e.status_code}")
        expect("No active model set for agent_id" in str(e), f"message {e}")
        return None
    raise AssertionError("no exception raised")


@check("wrong agent key surfaces as openai.AuthenticationError")
def _():
    bad = OpenAI(base_url=f"{URL}/v1", api_key="not-the-key", max_retries=0,
                 default_headers={"x-agent-id": "e2e-openai"})
    try:
        bad.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])
    except openai.AuthenticationError:
        return None
    raise AssertionError("no exception raised")


def psql(sql):
    out = subprocess.run(
        ["psql", DATABASE_URL, "-XAtq", "-F", "|", "-c", sql],
        check=True, capture_output=True, text=True, timeout=20,
    )
    return [line.split("|") for line in out.stdout.splitlines() if line]


@check("audit rows: streamed and failed requests recorded, with usage, without prompt text")
def _():
    expect(DATABASE_URL, "E2E_DATABASE_URL is not set")
    # The streamed request's row is written when its stream ends, just after the client saw it.
    deadline = time.time() + 5
    while True:
        rows = psql(
            "SELECT stream, status, prompt_tokens, completion_tokens, total_tokens, provider_type "
            "FROM audit_requests WHERE agent_id = 'e2e-claude-usage'"
        )
        if rows or time.time() > deadline:
            break
        time.sleep(0.1)
    expect(rows == [["t", "200", "29", "14", "43", "anthropic"]], f"e2e-claude-usage rows {rows}")
    rows = psql("SELECT status FROM audit_requests WHERE agent_id = 'e2e-claude-429'")
    expect(sorted(rows) == [["429"], ["429"]], f"e2e-claude-429 rows {rows}")
    leaks = psql(
        "SELECT count(*) FROM audit_requests "
        "WHERE coalesce(error, '') LIKE '%hello claude%' OR coalesce(error, '') LIKE '%count my tokens%'"
    )
    expect(leaks == [["0"]], "prompt text found in audit_requests")
    total = psql("SELECT count(*) FROM audit_requests")[0][0]
    return f"{total} rows"


passed = sum(results)
failed = len(results) - passed
print(f"{passed} passed, {failed} failed", flush=True)
sys.exit(1 if failed else 0)
