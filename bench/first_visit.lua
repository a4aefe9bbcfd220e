-- wrk script: a first visit per request. Every request names a new user (a fresh email in
-- the X-Forwarded-Email identity header, as a trusted proxy would send it) and sends no
-- cookie. Emails: n<nonce>-t<thread>-<counter>@team<NN>.acme.example, NN = counter mod
-- BENCH_DOMAINS, so new users spread over the subtenants' email domains.
dofile(os.getenv("BENCH_DIR") .. "/report.lua")

-- setup() (report.lua) gives each thread its id.

local counter = 0
local nonce = os.getenv("BENCH_NONCE") or "0"
local domains = tonumber(os.getenv("BENCH_DOMAINS") or "50")
local path = os.getenv("BENCH_PATH") or "/"

function request()
  counter = counter + 1
  local email = string.format("n%s-t%d-%d@team%02d.acme.example", nonce, id or 0, counter, counter % domains)
  return wrk.format("GET", path, {["X-Forwarded-Email"] = email})
end
