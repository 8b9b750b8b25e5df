#!/usr/bin/env python3
"""The report of scripts/bench (standard library only): reads the wrk runs (results file)
and the end-of-run figures (facts file, key=value lines), prints the tables and ratios,
checks the targets (TARGET_* in the environment) and exits 1 when one is missed (unless
BENCH_NO_FAIL=1)."""

import os
import statistics
import sys

results, facts_path = sys.argv[1], sys.argv[2]
env = os.environ
T_ADDED_P50_1 = float(env["TARGET_ADDED_P50_1_MS"])
T_SHARE_64 = float(env["TARGET_SHARE_OF_HOP_64"])
T_ADDED_P99_64 = float(env["TARGET_ADDED_P99_64_MS"])
T_ANTHROPIC = float(env["TARGET_ANTHROPIC_WITHIN"])
T_RSS = float(env["TARGET_RSS_MIB"])

runs = {}  # (target, conns) -> [dict per round]
for line in open(results):
    target, conns, rnd, rest = line.split(None, 3)
    fields = dict(kv.split("=", 1) for kv in rest.split()[1:])
    runs.setdefault((target, int(conns)), []).append({k: float(v) for k, v in fields.items()})
facts = dict(l.strip().split("=", 1) for l in open(facts_path) if "=" in l)

TARGETS = [
    ("direct", "direct (nginx, chat)"),
    ("hop", "nginx hop (chat)"),
    ("switcher", "switcher /v1/chat/completions"),
    ("direct_msg", "direct (nginx, messages)"),
    ("switcher_msg", "switcher /v1/messages"),
]
CONNS = sorted({c for _, c in runs})


def agg(target, conns):
    rs = runs.get((target, conns), [])
    if not rs:
        return None
    req = sum(r["requests"] for r in rs)
    dur = sum(r["duration_us"] for r in rs) / 1e6
    med = lambda k: statistics.median(r[k] for r in rs) / 1000.0
    return {
        "rps": req / dur, "requests": req, "errors": sum(r["errors"] for r in rs),
        "p50": med("p50_us"), "p90": med("p90_us"), "p99": med("p99_us"),
        "p999": med("p999_us"), "rounds": len(rs),
    }


print()
print("Per target and connections: req/s over all rounds; latency percentiles (ms) are")
print("the median of the rounds' own (wrk's latency:percentile in done()).")
print(f"{'target':32} {'conns':>5} {'req/s':>9} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} {'errors':>6}")
A = {}
for c in CONNS:
    for t, label in TARGETS:
        a = agg(t, c)
        if a is None:
            continue
        A[(t, c)] = a
        print(f"{label:32} {c:>5} {a['rps']:>9.0f} {a['p50']:>7.3f} {a['p90']:>7.3f} "
              f"{a['p99']:>7.3f} {a['p999']:>7.3f} {a['errors']:>6.0f}")
    print()

print("Ratios (same run):")
for c in CONNS:
    d, h, s = A.get(("direct", c)), A.get(("hop", c)), A.get(("switcher", c))
    dm, sm = A.get(("direct_msg", c)), A.get(("switcher_msg", c))
    print(f"  {c:>2} conn: hop adds p50 {h['p50'] - d['p50']:+.3f} ms, p99 {h['p99'] - d['p99']:+.3f} ms;"
          f" switcher adds p50 {s['p50'] - d['p50']:+.3f} ms, p99 {s['p99'] - d['p99']:+.3f} ms;"
          f" /v1/messages adds p50 {sm['p50'] - dm['p50']:+.3f} ms, p99 {sm['p99'] - dm['p99']:+.3f} ms")
    print(f"          switcher req/s = {s['rps'] / h['rps']:.1%} of the hop, {s['rps'] / d['rps']:.1%} of direct;"
          f" /v1/messages req/s = {sm['rps'] / s['rps']:.1%} of /v1/chat/completions")
print()
for k in ("switcher_requests", "wrk_requests", "upstream_requests", "audit_rows", "audit_rows_not_200",
          "writer_batches", "pg_xact_commit_delta", "pg_tup_fetched_delta", "rss_kib_max", "threads_max"):
    print(f"  {k:22} {facts.get(k, '?')}")
sreq = float(facts["switcher_requests"])
commits = float(facts["pg_xact_commit_delta"]) - float(facts["writer_batches"])
fetched = float(facts["pg_tup_fetched_delta"])
print(f"  Postgres per proxied request: {commits / sreq:.4f} commits (besides the writer's "
      f"{facts['writer_batches']} batches), {fetched / sreq:.4f} tuples fetched "
      f"({fetched / max(1.0, float(facts['writer_batches'])):.1f} per writer batch)")
print()

failed = []


def check(ok, what):
    print(f"  [{'ok' if ok else 'MISSED'}] {what}")
    if not ok:
        failed.append(what)


print("Targets:")
c1 = min(CONNS)
cmax = max(CONNS)
added1 = A[("switcher", c1)]["p50"] - A[("direct", c1)]["p50"]
check(added1 <= T_ADDED_P50_1, f"{c1} conn: added p50 {added1:.3f} ms <= {T_ADDED_P50_1} ms")
added1m = A[("switcher_msg", c1)]["p50"] - A[("direct_msg", c1)]["p50"]
check(added1m <= T_ADDED_P50_1, f"{c1} conn /v1/messages: added p50 {added1m:.3f} ms <= {T_ADDED_P50_1} ms")
share = A[("switcher", cmax)]["rps"] / A[("hop", cmax)]["rps"]
check(share >= T_SHARE_64, f"{cmax} conns: {share:.1%} of the nginx hop's req/s >= {T_SHARE_64:.0%}")
added99 = A[("switcher", cmax)]["p99"] - A[("direct", cmax)]["p99"]
check(added99 <= T_ADDED_P99_64, f"{cmax} conns: added p99 {added99:.3f} ms <= {T_ADDED_P99_64} ms")
added99m = A[("switcher_msg", cmax)]["p99"] - A[("direct_msg", cmax)]["p99"]
check(added99m <= T_ADDED_P99_64, f"{cmax} conns /v1/messages: added p99 {added99m:.3f} ms <= {T_ADDED_P99_64} ms")
errors = sum(a["errors"] for (t, _), a in A.items())
check(errors == 0, f"no errors in any run ({errors:.0f})")
ratio = A[("switcher_msg", cmax)]["rps"] / A[("switcher", cmax)]["rps"]
check(ratio >= 1 - T_ANTHROPIC, f"{cmax} conns: /v1/messages at {ratio:.1%} of /v1/chat/completions req/s (within {T_ANTHROPIC:.0%})")
rss = float(facts["rss_kib_max"]) / 1024
check(rss <= T_RSS, f"RSS after the {cmax}-conn runs {rss:.1f} MiB <= {T_RSS} MiB")
rows, up = int(facts["audit_rows"]), int(facts["upstream_requests"])
check(rows == up and int(facts["audit_rows_not_200"]) == 0,
      f"one audit row per request: {rows} rows, {up} requests reached the upstream through the switcher, all 200")
# A query on the request's path would cost at least one commit and one fetched tuple per
# request; what is left is the writer's per-batch catalog lookups (shown per batch).
check(commits / sreq < 0.001 and fetched / sreq < 0.1,
      f"zero Postgres round trips per proxied request ({commits / sreq:.4f} commits, {fetched / sreq:.4f} fetches)")
if failed:
    print(f"\nbench: {len(failed)} target(s) missed" + (" (BENCH_NO_FAIL=1: not failing)" if env.get("BENCH_NO_FAIL") else ""))
    sys.exit(0 if env.get("BENCH_NO_FAIL") else 1)
print("\nbench: every target met")
