#!/usr/bin/env python3
"""/v1/messages with the official anthropic SDK and Claude Code (driven by scripts/e2e-anthropic).

Agents, as scripts/e2e-anthropic set them up:
  sdk-claude, cc-claude -> e2e-claude::claude-fake-1 (anthropic, max_tokens 1000)
  sdk-openai, cc-openai -> e2e-openai::gpt-fake-5    (openai, max_tokens 16384)
The fakes (scripts/e2e/anthropic_fakes.py) record every request they get, bytes included.

Prints one line per check and ends with "N passed, M failed"; exits 1 when any failed.
"""

import base64
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Iterable, Mapping

import anthropic
import openai
import pydantic

URL = os.environ["SWITCHER_URL"]
AGENT_KEY = os.environ["ROUTER_AGENT_KEY"]
FAKE_ANTHROPIC = os.environ["FAKE_ANTHROPIC_URL"]
FAKE_OPENAI = os.environ["FAKE_OPENAI_URL"]
DATABASE_URL = os.environ["E2E_DATABASE_URL"]
ANTHROPIC_KEY = os.environ["E2E_ANTHROPIC_KEY"]
OPENAI_KEY = os.environ["E2E_OPENAI_KEY"]
CLAUDE = os.environ.get("CLAUDE_BIN") or ""
WORK = os.environ.get("E2E_WORK") or tempfile.gettempdir()

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                     "required": ["city"]},
}

results = []


def check(name):
    def wrap(fn):
        try:
            fn()
            results.append(True)
            print("ok   " + name, flush=True)
        except Exception:
            results.append(False)
            print("FAIL " + name, flush=True)
            traceback.print_exc()
        return fn
    return wrap


def received(fake):
    with urllib.request.urlopen(fake + "/_received", timeout=10) as r:
        items = json.load(r)
    for item in items:
        item["raw"] = base64.b64decode(item["body_b64"])
        item["json"] = json.loads(item["raw"]) if item["raw"] else None
    return items


def consume(value):
    """Walks a validated value so that lazily validated iterables are validated too."""
    if isinstance(value, Mapping):
        for v in value.values():
            consume(v)
    elif isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        for v in value:
            consume(v)


ADAPTERS = {}


def validate(typ, value):
    # The adapter must outlive the lazily validated iterables it returns: they refer to its
    # schema's definitions, and pydantic-core panics once those are gone.
    adapter = ADAPTERS.setdefault(typ, pydantic.TypeAdapter(typ))
    consume(adapter.validate_python(value, strict=False))


def validate_anthropic_request(body):
    typ = (anthropic.types.message_create_params.MessageCreateParamsStreaming if body.get("stream")
           else anthropic.types.message_create_params.MessageCreateParamsNonStreaming)
    validate(typ, body)
    for m in body["messages"]:
        validate(anthropic.types.MessageParam, m)


def validate_openai_request(body):
    typ = (openai.types.chat.completion_create_params.CompletionCreateParamsStreaming if body.get("stream")
           else openai.types.chat.completion_create_params.CompletionCreateParamsNonStreaming)
    validate(typ, body)
    for m in body["messages"]:
        validate(openai.types.chat.ChatCompletionMessageParam, m)
    for t in body.get("tools") or []:
        validate(openai.types.chat.ChatCompletionToolParam, t)


sent_bodies = []
sent_versions = []


def client(agent, **kw):
    def capture(request):
        sent_bodies.append(request.content)
        sent_versions.append(request.headers.get("anthropic-version"))
    return anthropic.Anthropic(
        base_url=URL, api_key=AGENT_KEY, max_retries=0, timeout=60,
        default_headers={"x-agent-id": agent},
        # The SDK's own client class: anthropic 2.x builds on httpx2 and refuses an httpx.Client.
        http_client=anthropic.DefaultHttpxClient(event_hooks={"request": [capture]}), **kw)


claude = client("sdk-claude")
oai = client("sdk-openai")


def raw_post(path, body, headers):
    request = urllib.request.Request(URL + path, data=body, method="POST", headers=dict(
        {"content-type": "application/json", "x-api-key": AGENT_KEY}, **headers))
    with urllib.request.urlopen(request, timeout=60) as r:
        return r.status, dict(r.headers), r.read()


def sse_events(raw):
    events = []
    for block in raw.decode().split("\n\n"):
        kind, data = None, None
        for line in block.splitlines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
        if data is not None:
            events.append((kind, data))
    return events


# --- through the anthropic profile: a pass-through -------------------------------------------

@check("anthropic profile: messages.create reaches the upstream as sent, model and max_tokens changed")
def _():
    before = len(received(FAKE_ANTHROPIC))
    raw = claude.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=4096, system="Be brief.",
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "Say hi", "cache_control": {"type": "ephemeral"}}]}],
        metadata={"user_id": "u-1"}, stop_sequences=["END"])
    message = raw.parse()
    assert raw.http_response.headers["x-switcher-profile"] == "e2e-claude"
    assert raw.http_response.headers["x-switcher-model"] == "claude-fake-1"
    anthropic.types.Message.model_validate(raw.http_response.json(), strict=False)
    assert message.content[0].text == "fake[claude-fake-1]: Say hi", message
    assert message.usage.output_tokens == 14
    got = received(FAKE_ANTHROPIC)[before:]
    assert len(got) == 1, got
    got = got[0]
    assert got["path"] == "/v1/messages", got["path"]
    assert got["headers"]["x-api-key"] == ANTHROPIC_KEY
    # The client's own anthropic-version goes on (SDK 2.x sends a newer one than 2023-06-01).
    assert sent_versions[-1], "the SDK sends anthropic-version"
    assert got["headers"]["anthropic-version"] == sent_versions[-1], \
        (got["headers"]["anthropic-version"], sent_versions[-1])
    validate_anthropic_request(got["json"])
    sent = sent_bodies[-1]
    expected = json.loads(sent)
    expected["model"], expected["max_tokens"] = "claude-fake-1", 1000
    assert got["json"] == expected, (got["json"], expected)
    # Byte for byte: the SDK sends compact JSON (its HTTP client does), and so does the pass-through.
    assert b'"model":"claude-sonnet-4-5"' in sent, sent
    assert got["raw"] == sent.replace(b'"model":"claude-sonnet-4-5"', b'"model":"claude-fake-1"', 1) \
        .replace(b'"max_tokens":4096', b'"max_tokens":1000', 1), (got["raw"], sent)


@check("anthropic profile: a hand-written body is forwarded byte for byte, query and beta header too")
def _():
    body = ('{"stream":false,"zeta":{"b":1,"a":[1.50,2e3,"\\u00e9"]},"model":"claude-x",'
            '"messages":[{"role":"user","content":[{"type":"text","text":"hi",'
            '"cache_control":{"type":"ephemeral","ttl":"1h"}}]},{"role":"assistant","content":'
            '[{"type":"thinking","thinking":"t","signature":"Eq+/sig=="},{"type":"text","text":"x"}]},'
            '{"role":"user","content":"again"}],"max_tokens":128000,'
            '"tools":[{"type":"web_search_20250305","name":"web_search","max_uses":2}],'
            '"output_config":{"effort":"high"},"a_field_of_2030":[null,true]}').encode()
    before = len(received(FAKE_ANTHROPIC))
    status, headers, answer = raw_post("/v1/messages?beta=true", body, {
        "x-agent-id": "sdk-claude", "anthropic-version": "2023-06-01",
        "anthropic-beta": "context-management-2025-06-27,effort-2025-11-24"})
    assert status == 200, answer
    got = received(FAKE_ANTHROPIC)[before:][0]
    assert got["path"] == "/v1/messages?beta=true", got["path"]
    assert got["headers"]["anthropic-beta"] == "context-management-2025-06-27,effort-2025-11-24"
    expected = body.replace(b'"model":"claude-x"', b'"model":"claude-fake-1"') \
        .replace(b'"max_tokens":128000', b'"max_tokens":1000')
    assert got["raw"] == expected, (got["raw"], expected)
    # The answer is the upstream's bytes.
    assert json.loads(answer)["model"] == "claude-fake-1"


@check("anthropic profile: messages.stream accumulates the final message")
def _():
    with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=500,
                                messages=[{"role": "user", "content": "Stream please"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "fake[claude-fake-1]: Stream please", text
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 14 and final.usage.input_tokens == 21
    got = received(FAKE_ANTHROPIC)[-1]
    assert got["json"]["stream"] is True and got["json"]["max_tokens"] == 500
    validate_anthropic_request(got["json"])


def tool_conversation(c, stream):
    messages = [{"role": "user", "content": "E2E-USE-TOOL What is the weather in Paris?"}]
    if stream:
        with c.messages.stream(model="claude-sonnet-4-5", max_tokens=800, tools=[WEATHER],
                               messages=messages) as s:
            first = s.get_final_message()
    else:
        first = c.messages.create(model="claude-sonnet-4-5", max_tokens=800, tools=[WEATHER],
                                  messages=messages)
    assert first.stop_reason == "tool_use", first
    uses = [b for b in first.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather" and uses[0].input == {"city": "Paris"}, first
    messages += [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": uses[0].id, "content": "18 degrees and sunny"}]},
    ]
    if stream:
        with c.messages.stream(model="claude-sonnet-4-5", max_tokens=800, tools=[WEATHER],
                               messages=messages) as s:
            second = s.get_final_message()
    else:
        second = c.messages.create(model="claude-sonnet-4-5", max_tokens=800, tools=[WEATHER],
                                   messages=messages)
    assert second.stop_reason == "end_turn", second
    assert second.content[-1].text == "Tool said: 18 degrees and sunny", second
    return uses[0].id


for stream in (False, True):
    @check("anthropic profile: tool use over two turns (stream=%s)" % stream)
    def _(stream=stream):
        tool_conversation(claude, stream)
        for got in received(FAKE_ANTHROPIC)[-2:]:
            validate_anthropic_request(got["json"])

    @check("openai profile: tool use over two turns, translated (stream=%s)" % stream)
    def _(stream=stream):
        before = len(received(FAKE_OPENAI))
        tool_id = tool_conversation(oai, stream)
        got = received(FAKE_OPENAI)[before:]
        assert len(got) == 2, got
        for g in got:
            assert g["path"] == "/v1/chat/completions"
            assert g["headers"]["authorization"] == "Bearer " + OPENAI_KEY
            assert g["json"]["model"] == "gpt-fake-5"
            assert g["json"]["max_completion_tokens"] == 800
            assert g["json"]["tools"][0]["function"]["name"] == "get_weather"
            validate_openai_request(g["json"])
            assert g["json"].get("stream", False) is stream
        last = got[1]["json"]["messages"]
        assert last[-2]["role"] == "assistant" and last[-2]["tool_calls"][0]["id"] == tool_id, last
        assert last[-1] == {"role": "tool", "tool_call_id": tool_id, "content": "18 degrees and sunny"}, last


@check("openai profile: messages.create and messages.stream give Anthropic messages")
def _():
    raw = oai.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=128000, system=[{"type": "text", "text": "Be brief."}],
        messages=[{"role": "user", "content": "Hello there"}])
    body = raw.http_response.json()
    anthropic.types.Message.model_validate(body, strict=False)
    assert body["content"] == [{"type": "text", "text": "fake[gpt-fake-5]: Hello there"}], body
    assert body["usage"]["input_tokens"] == 32 and body["usage"]["cache_read_input_tokens"] == 8
    sent = received(FAKE_OPENAI)[-1]["json"]
    # Claude Code's 128000 capped by the model's max_tokens.
    assert sent["max_completion_tokens"] == 16384, sent
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    with oai.messages.stream(model="claude-sonnet-4-5", max_tokens=100,
                             messages=[{"role": "user", "content": "Stream it"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "fake[gpt-fake-5]: Stream it" == final.content[0].text, (text, final)
    assert final.usage.output_tokens == 9


@check("openai profile: every streamed event is a valid Anthropic event, in order")
def _():
    body = json.dumps({"model": "x", "max_tokens": 50, "stream": True, "tools": [WEATHER],
                       "messages": [{"role": "user", "content": "E2E-USE-TOOL weather?"}]}).encode()
    status, headers, raw = raw_post("/v1/messages", body, {"x-agent-id": "sdk-openai"})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream"), headers
    events = sse_events(raw)
    adapter = pydantic.TypeAdapter(anthropic.types.RawMessageStreamEvent)
    for kind, data in events:
        assert kind == data["type"], (kind, data)
        adapter.validate_python(data, strict=False)
    kinds = [k for k, _ in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"], kinds
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 1, kinds


@check("count_tokens: forwarded to anthropic, estimated for openai")
def _():
    n = claude.messages.count_tokens(model="claude-sonnet-4-5",
                                     messages=[{"role": "user", "content": "count me"}])
    assert n.input_tokens == 42, n
    got = received(FAKE_ANTHROPIC)[-1]
    assert got["path"].startswith("/v1/messages/count_tokens"), got["path"]
    assert got["json"]["model"] == "claude-fake-1"
    before = len(received(FAKE_OPENAI))
    n = oai.messages.count_tokens(model="claude-sonnet-4-5",
                                  messages=[{"role": "user", "content": "count me please"}])
    assert 5 <= n.input_tokens <= 20, n
    assert len(received(FAKE_OPENAI)) == before


@check("errors come as the SDK's exception classes")
def _():
    bad = anthropic.Anthropic(base_url=URL, api_key="wrong", max_retries=0)
    try:
        bad.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        raise AssertionError("no error")
    except anthropic.AuthenticationError as e:
        assert e.status_code == 401 and e.body["type"] == "error", e.body
    nobody = client("sdk-nobody")
    try:
        nobody.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        raise AssertionError("no error")
    except anthropic.BadRequestError as e:
        assert "No active model set for agent_id" in str(e), e


def psql(sql):
    return subprocess.run(["psql", DATABASE_URL, "-XqAt", "-c", sql], check=True,
                          capture_output=True, text=True).stdout.strip()


def rows_for(agent):
    return int(psql("SELECT count(*) FROM audit_requests WHERE endpoint = 'messages' "
                    "AND agent_id = '%s'" % agent))


def wait_rows(agent, n, limit=30):
    deadline = time.time() + limit
    while rows_for(agent) < n and time.time() < deadline:
        time.sleep(0.2)
    return rows_for(agent)


@check("audit: one row per request with endpoint 'messages', usage included")
def _():
    # sdk-claude: 1 create, 1 raw, 1 stream, 2 + 2 tool turns; count_tokens is not audited.
    assert wait_rows("sdk-claude", 7) == 7, rows_for("sdk-claude")
    # sdk-openai: 2 + 2 tool turns, create, stream, raw stream.
    assert wait_rows("sdk-openai", 7) == 7, rows_for("sdk-openai")
    usage = psql("SELECT prompt_tokens, completion_tokens FROM audit_requests "
                 "WHERE agent_id = 'sdk-claude' AND stream ORDER BY id LIMIT 1")
    assert usage == "29|14", usage


# --- Claude Code -----------------------------------------------------------------------------

def run_claude(agent, prompt, key_var):
    home = tempfile.mkdtemp(prefix="cc-home-", dir=WORK)
    cwd = tempfile.mkdtemp(prefix="cc-cwd-", dir=WORK)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        "ANTHROPIC_BASE_URL": URL,
        key_var: AGENT_KEY,
        "ANTHROPIC_CUSTOM_HEADERS": "x-agent-id: " + agent,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
        "DISABLE_AUTOUPDATER": "1",
    }
    p = subprocess.run([CLAUDE, "-p", prompt, "--output-format", "json",
                        "--allowedTools", "Bash(echo:*)"],
                       env=env, cwd=cwd, capture_output=True, text=True, timeout=240,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    out = json.loads(p.stdout)
    assert out.get("is_error") is False, out
    return out


if CLAUDE:
    @check("Claude Code through the anthropic profile (x-api-key)")
    def _():
        before = len(received(FAKE_ANTHROPIC))
        rows = rows_for("cc-claude")
        out = run_claude("cc-claude", "Say hello to the switcher", "ANTHROPIC_API_KEY")
        assert "fake[claude-fake-1]" in out["result"], out
        got = received(FAKE_ANTHROPIC)[before:]
        asks = [g for g in got if g["path"].startswith("/v1/messages")]
        assert asks, got
        for g in asks:
            assert g["headers"]["x-api-key"] == ANTHROPIC_KEY
            assert g["json"]["model"] == "claude-fake-1"
            assert g["json"]["max_tokens"] <= 1000
            validate_anthropic_request(g["json"])
        assert wait_rows("cc-claude", rows + len(asks)) == rows + len(asks)

    @check("Claude Code through the openai profile runs the tool call and sends its result back")
    def _():
        word = "switcher-cc-%d" % random.randrange(10**9)
        before = len(received(FAKE_OPENAI))
        out = run_claude("cc-openai", "E2E-USE-TOOL %s" % word, "ANTHROPIC_AUTH_TOKEN")
        assert ("Tool said: " + word) in out["result"], out
        got = received(FAKE_OPENAI)[before:]
        for g in got:
            assert g["headers"]["authorization"] == "Bearer " + OPENAI_KEY
            assert g["json"]["model"] == "gpt-fake-5"
            validate_openai_request(g["json"])
        results_sent = [m for g in got for m in g["json"]["messages"]
                        if m["role"] == "tool" and word in json.dumps(m["content"])]
        assert results_sent, [g["json"]["messages"][-1] for g in got]
        # The tool call that was answered is the one the fake made.
        calls = [c for g in got for m in g["json"]["messages"] if m["role"] == "assistant"
                 for c in m.get("tool_calls") or []]
        assert any(c["function"]["name"] == "Bash" and word in c["function"]["arguments"]
                   for c in calls), calls
else:
    print("skip Claude Code (no binary)", flush=True)

passed = sum(results)
failed = len(results) - passed
print("%d passed, %d failed" % (passed, failed), flush=True)
sys.exit(1 if failed else 0)
