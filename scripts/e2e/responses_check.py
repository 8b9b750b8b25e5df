"""The checks of scripts/e2e-responses: the OpenAI SDK's responses.create and
responses.stream through all three provider types, Claude's signed thinking kept across a
tool turn, built-in tools dropped and said so, audit rows; then Codex CLI (`codex exec`)
through an openai profile (pass-through) and an openai_compatible one (exec_command run,
its output sent back, the fake's final answer printed)."""

import json
import os
import subprocess
import sys
import time
import urllib.request

import openai

URL = os.environ["SWITCHER_URL"]
KEY = os.environ["ROUTER_AGENT_KEY"]
ADMIN = os.environ["ROUTER_ADMIN_KEY"]
FAKE = os.environ["FAKE_URL"]
CODEX = os.environ.get("CODEX_BIN", "")
WORK = os.environ["E2E_WORK"]
SIGNATURE = "EqQBCkYIBxgCKkBfakeSignature+/=="
FINAL = "FAKE-FINAL-ANSWER: the command ran"


def log(msg):
    print(f"e2e-responses: {msg}", file=sys.stderr, flush=True)


def get(url, key=None):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def recorded():
    return get(f"{FAKE}/_requests")


def client(agent):
    return openai.OpenAI(base_url=f"{URL}/v1", api_key=KEY, default_headers={"x-agent-id": agent},
                         max_retries=0, timeout=30)


def check(cond, what):
    if not cond:
        raise SystemExit(f"e2e-responses: FAILED: {what}")


def sdk_checks():
    for agent, path in [("resp-openai", "/v1/responses"), ("resp-compat", "/v1/chat/completions"),
                        ("resp-claude", "/v1/messages")]:
        c = client(agent)
        before = len(recorded())
        r = c.responses.create(model="anything", input="say hi", instructions="be brief", max_output_tokens=64)
        check(r.status == "completed" and r.output_text, f"{agent}: create gave {r}")
        with c.responses.stream(model="anything", input=[{"role": "user", "content": "say hi"}]) as s:
            deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
            final = s.get_final_response()
        check(final.status == "completed" and final.output_text == "".join(deltas) and deltas,
              f"{agent}: stream gave {final}")
        seen = recorded()[before:]
        check(len(seen) == 2 and all(s["path"] == path for s in seen), f"{agent}: upstream saw {seen}")
        check(seen[0]["body"]["model"] != "anything", f"{agent}: model not replaced")
        log(f"{agent}: create and stream ok ({r.output_text!r})")
    # The pass-through sends the body as it came (model and the cap apart).
    body = recorded()[0]["body"]
    check(body.get("instructions") == "be brief" and body.get("input") == "say hi", f"pass-through body {body}")

    # Claude: signed thinking survives a tool turn; web_search is dropped and said so.
    c = client("resp-claude")
    tools = [{"type": "function", "name": "get_weather", "description": "weather",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
             {"type": "web_search"}]
    raw = c.responses.with_raw_response.create(model="x", input="weather in Paris?", tools=tools,
                                               reasoning={"effort": "low"}, store=False,
                                               include=["reasoning.encrypted_content"])
    check(raw.headers.get("x-switcher-dropped-tools") == "web_search", f"dropped header {raw.headers}")
    r = raw.parse()
    kinds = [o.type for o in r.output]
    check(kinds == ["reasoning", "function_call"], f"claude tool turn output {kinds}")
    check(r.output[0].encrypted_content and SIGNATURE not in r.output[0].encrypted_content, "sealed thinking")
    call = r.output[1]
    history = [{"role": "user", "content": "weather in Paris?"}] + [o.model_dump(exclude_none=True) for o in r.output] + [
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]
    with c.responses.stream(model="x", input=history, tools=tools, reasoning={"effort": "low"}) as s:
        final = s.get_final_response()
    check(final.output_text == "hello from the claude fake", f"claude second turn {final}")
    sent = recorded()[-1]["body"]
    assistant = [m for m in sent["messages"] if m["role"] == "assistant"][0]
    check(assistant["content"][0] == {"type": "thinking", "thinking": "Let me think.", "signature": SIGNATURE},
          f"thinking did not reach Anthropic unchanged: {assistant}")
    check(all(t.get("name") != "web_search" for t in sent.get("tools", [])), "web_search sent to Anthropic")
    # The streamed reasoning item is sealed too, and opens on the next turn.
    rs = [o for o in final.output if o.type == "reasoning"]
    check(rs and rs[0].encrypted_content, f"streamed reasoning item {final.output}")
    log("claude: signed thinking kept across a tool turn, web_search dropped")

    # Audit rows.
    for _ in range(50):
        rows = get(f"{URL}/admin/requests?agent_id=resp-claude", ADMIN)["data"]
        if len(rows) >= 4:
            break
        time.sleep(0.1)
    check(all(r["endpoint"] == "responses" for r in rows), f"audit endpoints {rows}")
    check(any("web_search" in (r["error"] or "") for r in rows), f"audit rows name no dropped tool: {rows}")
    check(all(r["prompt_sha256"] for r in rows), "audit prompt hashes")
    log("audit rows ok")


def codex(agent, prompt, home):
    os.makedirs(home, exist_ok=True)
    # The README's provider block, as written, pointed at this server and agent.
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    section = readme[readme.index("## Using it from Codex CLI"):]
    block = section[section.index("```toml\n") + 8:]
    block = block[:block.index("```")]
    check("http://localhost:8080/v1" in block and "codex-alice" in block, "README's Codex block")
    with open(os.path.join(home, "config.toml"), "w") as f:
        f.write(block.replace("http://localhost:8080/v1", f"{URL}/v1").replace("codex-alice", agent))
    proj = os.path.join(WORK, f"proj-{agent}")
    os.makedirs(proj, exist_ok=True)
    env = dict(os.environ, CODEX_HOME=home, ROUTER_AGENT_KEY=KEY)
    p = subprocess.run([CODEX, "exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox",
                        prompt], cwd=proj, env=env, capture_output=True, text=True, timeout=180,
                       stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        log(f"codex stderr:\n{p.stderr[-4000:]}")
    check(p.returncode == 0, f"codex exec ({agent}) exited {p.returncode}")
    return p.stdout


def codex_checks():
    before = len(recorded())
    out = codex("codex-openai", "say pong", os.path.join(WORK, "codex-home-openai"))
    check("pong from the openai fake" in out, f"codex (openai) printed {out!r}")
    seen = [s for s in recorded()[before:] if s["path"] == "/v1/responses"]
    check(seen and seen[0]["body"].get("store") is False and seen[0]["body"].get("stream") is True,
          f"codex pass-through body {seen[:1]}")
    log("codex through an openai profile (pass-through) ok")

    before = len(recorded())
    out = codex("codex-compat", "run the echo command", os.path.join(WORK, "codex-home-compat"))
    seen = [s["body"] for s in recorded()[before:] if s["path"] == "/v1/chat/completions"]
    check(len(seen) >= 2, f"codex (compat) made {len(seen)} upstream calls")
    results = [m for m in seen[-1]["messages"] if m["role"] == "tool"]
    check(results and results[0]["tool_call_id"] == "call_fake1" and "codex-ran-this" in results[0]["content"],
          f"the tool's output did not come back: {results}")
    check(FINAL in out, f"codex (compat) printed {out!r}")
    log("codex through an openai_compatible profile ran exec_command and ended with the final answer")

    before = len(recorded())
    out = codex("codex-claude", "run the echo command", os.path.join(WORK, "codex-home-claude"))
    seen = [s["body"] for s in recorded()[before:] if s["path"] == "/v1/messages"]
    check(len(seen) >= 2, f"codex (claude) made {len(seen)} upstream calls")
    turns = seen[-1]["messages"]
    assistant = [m for m in turns if m["role"] == "assistant"]
    check(assistant and assistant[-1]["content"][0] == {"type": "thinking", "thinking": "Let me think.",
                                                         "signature": SIGNATURE},
          f"Claude's signed thinking did not come back through Codex: {assistant}")
    results = [b for m in turns if isinstance(m["content"], list) for b in m["content"] if b.get("type") == "tool_result"]
    check(results and "codex-ran-this" in json.dumps(results), f"tool result through Codex: {results}")
    check("hello from the claude fake" in out, f"codex (claude) printed {out!r}")
    log("codex through an anthropic profile: exec_command ran, signed thinking came back unchanged")


sdk_checks()
if CODEX:
    codex_checks()
else:
    log("Codex CLI checks skipped (no binary)")
