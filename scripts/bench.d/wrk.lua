-- The request and the summary of every wrk run of scripts/bench. The request comes from the
-- environment (BENCH_PATH, BENCH_BODY_FILE, BENCH_KEY, BENCH_AGENT, BENCH_ANTHROPIC); done()
-- prints one machine-readable line that scripts/bench.d/report.py reads.
local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

wrk.method = "POST"
wrk.path = os.getenv("BENCH_PATH")
wrk.body = slurp(os.getenv("BENCH_BODY_FILE"))
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_KEY") or ""
if key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end
local agent = os.getenv("BENCH_AGENT") or ""
if agent ~= "" then wrk.headers["x-agent-id"] = agent end
if (os.getenv("BENCH_ANTHROPIC") or "") ~= "" then
  wrk.headers["anthropic-version"] = "2023-06-01"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d errors=%d connect=%d read=%d write=%d status=%d timeout=%d "
      .. "p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f mean_us=%.1f\n",
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
