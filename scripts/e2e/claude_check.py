#!/usr/bin/env python3
"""Today's Claude through switcher-api with the OpenAI Python SDK (driven by scripts/e2e-sdk).

Reasoning, structured outputs, prompt caching and signed thinking blocks, against the strict
fake Anthropic upstream (scripts/e2e/strict_anthropic.py), which validates every request
against the `anthropic` SDK's request types and refuses what Anthropic refuses.

Environment (set by scripts/e2e-sdk):
  SWITCHER_URL, ROUTER_AGENT_KEY   the switcher and its agent key
  STRICT_ANTHROPIC_URL             the strict fake; E2E_STRICT_KEY its x-api-key

Agents, as scripts/e2e-sdk sets them up (profile e2e-strict, provider anthropic):
  e2e-opus47   -> claude-opus-4-7     (adaptive thinking only)
  e2e-sonnet45 -> claude-sonnet-4-5   (budget thinking only)
  e2e-sonnet46 -> claude-sonnet-4-6

Prints one line per check and ends with "N passed, M failed"; exits 1 when any failed.
"""

import json
import os
import sys
import traceback
import urllib.error
import urllib.request

import pydantic
from openai import OpenAI

URL = os.environ["SWITCHER_URL"]
AGENT_KEY = os.environ["ROUTER_AGENT_KEY"]
STRICT = os.environ["STRICT_ANTHROPIC_URL"]
STRICT_KEY = os.environ["E2E_STRICT_KEY"]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city, now or in some days",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
TOOL_RESULTS = ["18 degrees and sunny", "rain later"]
FIRST_THOUGHT = "The user wants the weather; I should call the tool first."

results = []


def check(name):
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
    return OpenAI(base_url=f"{URL}/v1", api_key=AGENT_KEY, max_retries=0, timeout=30,
                  default_headers={"x-agent-id": agent_id})


def received():
    with urllib.request.urlopen(f"{STRICT}/_received", timeout=10) as r:
        return json.load(r)


def since(mark):
    got = received()[mark:]
    refused = [g for g in got if g.get("status") != 200]
    expect(not refused, "the strict upstream refused: %s" % [g.get("error") for g in refused])
    return got


def extra(model, name):
    """A field the OpenAI SDK's types do not name (it keeps them as extras)."""
    return (model.model_extra or {}).get(name)


def stream_message(stream):
    """The assistant message an agent rebuilds from the chunks, thinking blocks included."""
    text, reasoning, calls, finish, usage, blocks = [], [], {}, None, None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content:
                text.append(delta.content)
            if extra(delta, "reasoning_content"):
                reasoning.append(extra(delta, "reasoning_content"))
            if extra(delta, "thinking_blocks") is not None:
                expect(choice.finish_reason, "thinking_blocks outside the finish chunk")
                blocks = extra(delta, "thinking_blocks")
            for tc in delta.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": None, "type": "function",
                                                   "function": {"name": "", "arguments": ""}})
                slot["id"] = tc.id or slot["id"]
                if tc.function is not None:
                    slot["function"]["name"] += tc.function.name or ""
                    slot["function"]["arguments"] += tc.function.arguments or ""
            finish = choice.finish_reason or finish
    message = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    if blocks is not None:
        message["thinking_blocks"] = blocks
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    return message, finish, usage


def conversation(agent, stream):
    """Three turns of a tool conversation with reasoning on; returns (assistant messages, upstream requests)."""
    mark = len(received())
    messages = [
        {"role": "system", "content": "You are a weather agent."},
        {"role": "user", "content": "Weather in Paris now and in two days?"},
    ]
    answers = []
    for turn in range(3):
        kwargs = dict(model="anything", messages=messages, tools=[WEATHER_TOOL],
                      reasoning_effort="high", temperature=0.7)
        if stream:
            message, finish, _ = stream_message(
                client(agent).chat.completions.create(stream=True, **kwargs))
        else:
            choice = client(agent).chat.completions.create(**kwargs).choices[0]
            # What an agent appends to its history: the SDK's message, extras included.
            message, finish = choice.message.model_dump(exclude_none=True), choice.finish_reason
        answers.append(message)
        if turn < 2:
            expect(finish == "tool_calls", f"turn {turn + 1}: finish {finish}")
            call = message["tool_calls"][0]
            messages = messages + [message, {"role": "tool", "tool_call_id": call["id"],
                                             "content": TOOL_RESULTS[turn]}]
        else:
            expect(finish == "stop", f"turn 3: finish {finish}")
            expect(message["content"] == "Done: " + "; ".join(TOOL_RESULTS),
                   f"turn 3: content {message['content']!r}")
    got = since(mark)
    expect(len(got) == 3, f"upstream got {len(got)} requests")
    first = answers[0]
    expect(first.get("reasoning_content") == FIRST_THOUGHT, f"reasoning_content {first.get('reasoning_content')!r}")
    blocks = first.get("thinking_blocks") or []
    expect(blocks and blocks[0]["type"] == "thinking" and blocks[0]["signature"],
           f"thinking_blocks {blocks}")
    for n, request in enumerate(got[1:], start=2):
        assistant = [m for m in request["body"]["messages"] if m["role"] == "assistant"][0]
        content = assistant["content"]
        expect(content[:len(blocks)] == blocks,
               f"request {n}: the first turn's thinking blocks are not first and unchanged: {content}")
        expect([b["type"] for b in content[len(blocks):]] == ["tool_use"],
               f"request {n}: after the thinking blocks {content[len(blocks):]}")
        expect("reasoning_content" not in json.dumps(request["body"]), f"request {n}: reasoning_content sent")
    return answers, got


@check("adaptive model (claude-opus-4-7): three tool turns with reasoning, signed thinking sent back")
def _():
    answers, got = conversation("e2e-opus47", stream=False)
    for request in got:
        body = request["body"]
        expect(body["thinking"] == {"type": "adaptive"}, f"thinking {body.get('thinking')}")
        expect(body.get("output_config") == {"effort": "high"}, f"output_config {body.get('output_config')}")
        expect("temperature" not in body, "temperature sent with thinking on")
    return f"{len(answers[0]['thinking_blocks'])} thinking block(s) carried"


@check("budget model (claude-sonnet-4-5), streamed: three tool turns, thinking and redacted thinking sent back")
def _():
    answers, got = conversation("e2e-sonnet45", stream=True)
    kinds = [b["type"] for b in answers[0]["thinking_blocks"]]
    expect(kinds == ["thinking", "redacted_thinking"], f"thinking_blocks kinds {kinds}")
    for request in got:
        body = request["body"]
        expect(body["thinking"] == {"type": "enabled", "budget_tokens": 16384}, f"thinking {body.get('thinking')}")
        expect(body["max_tokens"] > 16384, f"max_tokens {body['max_tokens']}")
        expect("temperature" not in body and "output_config" not in body, f"body keys {sorted(body)}")
    return f"reasoning {answers[1].get('reasoning_content')!r}"


class Forecast(pydantic.BaseModel):
    city: str
    temperature_c: int
    sunny: bool


@check("structured output: chat.completions.parse(response_format=Model) answered with the structured text")
def _():
    mark = len(received())
    completion = client("e2e-sonnet46").chat.completions.parse(
        model="anything",
        messages=[{"role": "user", "content": "Forecast for Paris as JSON"}],
        response_format=Forecast,
    )
    message = completion.choices[0].message
    expect(message.parsed == Forecast(city="Paris", temperature_c=18, sunny=True), f"parsed {message.parsed!r}")
    expect(json.loads(message.content) == {"city": "Paris", "temperature_c": 18, "sunny": True},
           f"content {message.content!r}")
    body = since(mark)[0]["body"]
    fmt = body["output_config"]["format"]
    expect(fmt["type"] == "json_schema" and set(fmt["schema"]["properties"]) == {"city", "temperature_c", "sunny"},
           f"output_config {body['output_config']}")
    expect("response_format" not in body, "response_format sent upstream")
    return message.content


LONG_MANUAL = "Weather agent manual. " * 50
LONG_DOC = "Climate notes for Paris. " * 50
CACHED_MESSAGES = [
    {"role": "system", "content": [
        {"type": "text", "text": "You are a weather agent."},
        {"type": "text", "text": LONG_MANUAL, "cache_control": {"type": "ephemeral"}},
    ]},
    {"role": "user", "content": [
        {"type": "text", "text": LONG_DOC, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "text", "text": "", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Summarise."},
    ]},
]


def check_cached_request(body):
    expect(body["system"] == [
        {"type": "text", "text": "You are a weather agent."},
        {"type": "text", "text": LONG_MANUAL, "cache_control": {"type": "ephemeral"}},
    ], f"system {body['system']!r:.300}")
    expect(body["messages"][0]["content"] == [
        {"type": "text", "text": LONG_DOC, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "text", "text": "Summarise."},
    ], f"user turn {body['messages'][0]!r:.300}")
    expect(body["tools"][0].get("cache_control") == {"type": "ephemeral"}, f"tool {body['tools'][0]}")


@check("cache_control parts arrive as cache_control blocks; cached tokens reported in usage")
def _():
    mark = len(received())
    resp = client("e2e-sonnet46").chat.completions.create(
        model="anything", messages=CACHED_MESSAGES,
        tools=[dict(WEATHER_TOOL, cache_control={"type": "ephemeral"})], tool_choice="none",
    )
    expect(resp.choices[0].message.content == "strict-claude: " + LONG_DOC + "Summarise.", "content")
    u = resp.usage
    expect(u.prompt_tokens_details is not None and u.prompt_tokens_details.cached_tokens == 1500,
           f"usage {u}")
    expect((u.prompt_tokens, u.completion_tokens, u.total_tokens) == (1730, 25, 1755), f"usage {u}")
    check_cached_request(since(mark)[0]["body"])
    return f"cached_tokens {u.prompt_tokens_details.cached_tokens} of {u.prompt_tokens}"


@check("streamed with include_usage: cached tokens in the usage chunk")
def _():
    mark = len(received())
    stream = client("e2e-sonnet46").chat.completions.create(
        model="anything", messages=CACHED_MESSAGES, stream=True,
        stream_options={"include_usage": True},
        tools=[dict(WEATHER_TOOL, cache_control={"type": "ephemeral"})], tool_choice="none",
    )
    message, finish, usage = stream_message(stream)
    expect(finish == "stop", f"finish {finish}")
    expect(usage is not None and usage.prompt_tokens_details.cached_tokens == 1500, f"usage {usage}")
    expect(usage.prompt_tokens == 1730, f"usage {usage}")
    check_cached_request(since(mark)[0]["body"])


# The fake is as strict as the checks above rely on: a translation that slipped would fail.
def direct(body):
    request = urllib.request.Request(
        f"{STRICT}/v1/messages", data=json.dumps(body).encode(), method="POST",
        headers={"x-api-key": STRICT_KEY, "anthropic-version": "2023-06-01",
                 "content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def refused(body, words):
    status, answer = direct(body)
    expect(status == 400, f"accepted ({status}): {json.dumps(body)[:200]}")
    message = answer["error"]["message"]
    expect(words in message, f"refused for another reason: {message}")


HI = [{"role": "user", "content": "Hi"}]


@check("the strict fake refuses what Anthropic refuses")
def _():
    refused({"model": "claude-opus-4-7", "max_tokens": 4096, "messages": HI,
             "thinking": {"type": "enabled", "budget_tokens": 2048}}, "not supported for this model")
    refused({"model": "claude-sonnet-4-5", "max_tokens": 4096, "messages": HI,
             "thinking": {"type": "adaptive"}}, "not supported for this model")
    refused({"model": "claude-sonnet-4-6", "max_tokens": 4096, "messages": HI,
             "thinking": {"type": "adaptive"}, "temperature": 0.5}, "`temperature` may not be set")
    refused({"model": "claude-sonnet-4-5", "max_tokens": 4096, "messages": HI,
             "thinking": {"type": "enabled", "budget_tokens": 1024}, "top_p": 0.9}, "`top_p` may not be set")
    refused({"model": "claude-opus-4-7", "max_tokens": 4096, "messages": HI, "temperature": 0.5},
            "deprecated for this model")
    refused({"model": "claude-sonnet-4-5", "max_tokens": 4096, "messages": HI,
             "thinking": {"type": "enabled", "budget_tokens": 4096}}, "must be greater than")
    refused({"model": "claude-sonnet-4-6", "max_tokens": 4096, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "", "cache_control": {"type": "ephemeral"}}]}]},
        "cache_control cannot be set for empty text blocks")
    refused({"model": "claude-sonnet-4-6", "max_tokens": 4096, "messages": HI, "reasoning_effort": "high"},
            "Extra inputs are not permitted")
    refused({"model": "claude-sonnet-4-6", "max_tokens": 4096, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}, "messages.0.content")
    tool_loop = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
    ]
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    refused({"model": "claude-opus-4-7", "max_tokens": 4096, "messages": tool_loop, "tools": tools,
             "thinking": {"type": "adaptive"}}, "must start with a thinking block")
    forged = [tool_loop[0], {"role": "assistant", "content": [
        {"type": "thinking", "thinking": FIRST_THOUGHT, "signature": "Zm9yZ2Vk"}] + tool_loop[1]["content"]},
        tool_loop[2]]
    refused({"model": "claude-opus-4-7", "max_tokens": 4096, "messages": forged, "tools": tools,
             "thinking": {"type": "adaptive"}}, "Invalid `signature`")
    status, _ = direct({"model": "claude-opus-4-7", "max_tokens": 4096, "messages": HI,
                        "thinking": {"type": "adaptive"}, "output_config": {"effort": "max"}})
    expect(status == 200, f"a good request was refused: {status}")


passed = sum(results)
failed = len(results) - passed
print(f"{passed} passed, {failed} failed", flush=True)
sys.exit(1 if failed else 0)
