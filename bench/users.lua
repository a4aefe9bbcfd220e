-- wrk script: returning users. BENCH_USERS names a file of "email<TAB>cookie" lines, one per
-- signed-in user (their cookies as the server set them at login). Each wrk thread walks the
-- list round-robin from its own offset, so the requests spread evenly across every user.
dofile(os.getenv("BENCH_DIR") .. "/report.lua")

-- setup() (report.lua) gives each thread its id.

local requests, n, at = {}, 0, 0
local path = os.getenv("BENCH_PATH") or "/"

function init(args)
  for line in io.lines(os.getenv("BENCH_USERS")) do
    local email, cookie = line:match("^([^\t]+)\t(.*)$")
    if email then
      local headers = {["X-Forwarded-Email"] = email}
      if cookie ~= "" then headers["Cookie"] = cookie end
      n = n + 1
      requests[n] = wrk.format("GET", path, headers)
    end
  end
  at = ((id or 0) * 397) % n
end

function request()
  at = at % n + 1
  return requests[at]
end
