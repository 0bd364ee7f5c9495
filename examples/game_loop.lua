--- A tick-based game loop that requests upload credentials without
-- stalling a frame. When a replay finishes, the loop starts a request with
-- client:start. Once per frame it calls client:poll(0), which never waits,
-- and the callbacks run inside that call. Retries wait on timers that poll
-- checks, so a 503 costs no frame time either.
--
-- Each frame lasts 16 ms: the loop sleeps for what the frame's work and
-- poll(0) left of it, in place of rendering.
--
-- Against the local emulator, from the repository root after make:
--
--   python3 tools/emulator.py --port 0 --max-seconds 300 &
--   # its first output line is {"url": "http://127.0.0.1:PORT", ...}
--   APPCENTER_ENDPOINT=http://127.0.0.1:PORT \
--   APPCENTER_TOKEN=fake-token-for-tests \
--   APPCENTER_PROJECT_ID=0123456789abcdef0123456789abcdef \
--   LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/lua5.4/?.so;;' \
--     lua5.4 examples/game_loop.lua

local appcenter = require("appcenter")
local core = require("appcenter.core")

local FRAME_SECONDS = 0.016
-- The loop ends after this many frames (about 16 s) even if requests are
-- still in flight.
local MAX_FRAMES = 1000

-- Replays that finish during the session, by frame number.
local REPLAYS_BY_FRAME = {
  [1] = { "replay-0001.bin" },
  [5] = { "replay-0002.bin", "crash-0001.dmp" },
  [20] = { "replay-0003.bin" },
}

local function required_env(name)
  local value = os.getenv(name)
  if value == nil or value == "" then
    io.stderr:write(("game_loop: environment variable %s is not set; "
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

local frame = 0
local started = 0
local finished = 0
local slowest_poll_ms = 0

-- Returns the callback for one upload: it runs inside poll, in the frame
-- where the credential arrived.
local function on_credential(file_name)
  return function(result, meta_or_err)
    finished = finished + 1
    if not result then
      print(("frame %4d  %-16s failed: %s"):format(frame, file_name,
        tostring(meta_or_err)))
      return
    end
    -- A game would now upload the file to result.server_end_point with
    -- result.credential. The secret is not printed.
    print(("frame %4d  %-16s -> %s/%s (%d attempt(s), %.1f ms)"):format(
      frame, file_name, result.bucket_name, result.object_path,
      meta_or_err.attempts, meta_or_err.elapsed_ms))
  end
end

while frame < MAX_FRAMES do
  frame = frame + 1
  local frame_start = core.monotonic()

  for _, file_name in ipairs(REPLAYS_BY_FRAME[frame] or {}) do
    local request, err = client:start(file_name, on_credential(file_name))
    if request then
      started = started + 1
    else
      print(("frame %4d  %-16s rejected: %s"):format(frame, file_name,
        tostring(err)))
    end
  end

  local poll_start = core.monotonic()
  client:poll(0)
  local poll_ms = (core.monotonic() - poll_start) * 1000
  if poll_ms > slowest_poll_ms then
    slowest_poll_ms = poll_ms
  end

  if frame > 20 and client:pending() == 0 then
    break
  end

  local left = FRAME_SECONDS - (core.monotonic() - frame_start)
  if left > 0 then
    core.sleep(left)
  end
end

print(("%d frames, %d of %d credential requests finished, slowest "
  .. "poll(0) %.2f ms"):format(frame, finished, started, slowest_poll_ms))
client:close()
