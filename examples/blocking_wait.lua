--- Requests several upload credentials at once and waits for them with
-- client:poll(100), for a server loop with nothing else to do meanwhile.
-- Each upload is a coroutine written as straight-line code:
-- client:create_credential_async yields until poll resumes the coroutine
-- with the outcome.
--
-- poll(100) returns as soon as a request has finished, and after 100 ms
-- at the latest, so the loop below could also run a timer or check a
-- shutdown flag between calls.
--
-- Against the local emulator, from the repository root after make:
--
--   python3 tools/emulator.py --port 0 --max-seconds 300 &
--   # its first output line is {"url": "http://127.0.0.1:PORT", ...}
--   APPCENTER_ENDPOINT=http://127.0.0.1:PORT \
--   APPCENTER_TOKEN=fake-token-for-tests \
--   APPCENTER_PROJECT_ID=0123456789abcdef0123456789abcdef \
--   LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/lua5.4/?.so;;' \
--     lua5.4 examples/blocking_wait.lua

local appcenter = require("appcenter")
local core = require("appcenter.core")

local FILE_NAMES = {
  "replay-0001.bin", "replay-0002.bin", "replay-0003.bin",
  "crash-0001.dmp", "screenshot-0001.png",
}
-- The loop stops polling after this many seconds even if requests are
-- still in flight.
local MAX_SECONDS = 30

local function required_env(name)
  local value = os.getenv(name)
  if value == nil or value == "" then
    io.stderr:write(("blocking_wait: environment variable %s is not set; "
      .. "see the comment at the top of this file\n"):format(name))
    os.exit(2)
  end
  return value
end

local client = assert(appcenter.new({
  endpoint = required_env("APPCENTER_ENDPOINT"),
  token = required_env("APPCENTER_TOKEN"),
  project_id = required_env("APPCENTER_PROJECT_ID"),
  timeout_ms = 10000,
}))

local started = core.monotonic()

-- Requests a credential for one file. A real server would upload the file
-- next, with result.credential.
local function upload(file_name)
  local result, meta_or_err = client:create_credential_async(file_name)
  local at_ms = (core.monotonic() - started) * 1000
  if not result then
    print(("%6.0f ms  %-20s failed: %s"):format(at_ms, file_name,
      tostring(meta_or_err)))
    return
  end
  print(("%6.0f ms  %-20s -> %s (%d attempt(s))"):format(at_ms, file_name,
    result.object_path, meta_or_err.attempts))
end

for _, file_name in ipairs(FILE_NAMES) do
  local co = coroutine.create(upload)
  -- Runs up to the first yield inside create_credential_async.
  local ok, err = coroutine.resume(co, file_name)
  if not ok then
    error(err, 0)
  end
end

local polls = 0
while client:pending() > 0 and core.monotonic() - started < MAX_SECONDS do
  -- Waits up to 100 ms. The coroutines resume inside this call.
  client:poll(100)
  polls = polls + 1
end

print(("%d requests, %d poll(100) calls, %d still pending, %.0f ms")
  :format(#FILE_NAMES, polls, client:pending(),
    (core.monotonic() - started) * 1000))
client:close()
