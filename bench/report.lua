-- wrk script: headers from the environment, one JSON line of results at the end.
local email = os.getenv("BENCH_EMAIL")
local cookie = os.getenv("BENCH_COOKIE")
if email and email ~= "" then wrk.headers["X-Forwarded-Email"] = email end
if cookie and cookie ~= "" then wrk.headers["Cookie"] = cookie end

-- Each wrk thread's number, for the scripts that spread their requests by thread.
local next_id = 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
                 + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    'WRK_JSON {"requests": %d, "rps": %.1f, "p50_ms": %.3f, "p99_ms": %.3f, "errors": %d}\n',
    summary.requests, summary.requests / seconds, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, errors))
end
