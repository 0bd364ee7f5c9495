--- The non-blocking API (client:start / poll / pending) with 200 requests
-- in flight against the local emulator, which delays every response by
-- 200 ms. Runs once per max_connections value and prints one JSON line
-- each: {max_connections, requests, delay_ms, ok, seconds, connections,
-- cpu_ms, listen_overflows}. Lua 5.4, from the repository root, with LUA_PATH and LUA_CPATH
-- as in bench/run.py.

local core = require("appcenter.core")
local cjson = require("cjson")
local emulator = require("spec.support.emulator")

local REQUESTS = 200
local DELAY_MS = 200
local MAX_CONNECTIONS = { 16, 64, 200 }
-- Polling stops after this many seconds even if requests are still in flight.
local MAX_SECONDS = 60

-- Returns the kernel's count of connections dropped because a listen
-- queue was full (TcpExt ListenOverflows). The count is system-wide.
local function listen_overflows()
  local file = io.open("/proc/net/netstat", "r")
  if not file then
    return nil
  end
  local names, values
  for line in file:lines() do
    if line:match("^TcpExt:") then
      if names then
        values = line
      else
        names = line
      end
    end
  end
  file:close()
  if not values then
    return nil
  end
  local value_list = {}
  for word in values:gmatch("%S+") do
    value_list[#value_list + 1] = word
  end
  local index = 0
  for word in names:gmatch("%S+") do
    index = index + 1
    if word == "ListenOverflows" then
      return tonumber(value_list[index])
    end
  end
  return nil
end

local function measure(emu, max_connections)
  emu:reset()
  emu:config({ delay_ms = DELAY_MS })
  local client = assert(core.new(emu:client_options({ max_connections = max_connections })))
  local ok, failed, first_error = 0, 0, nil
  local overflows_before = listen_overflows()
  local cpu_started, started = os.clock(), core.monotonic()
  for i = 1, REQUESTS do
    assert(client:start("async-" .. i .. ".bin", function(result, err)
      if result then
        ok = ok + 1
      else
        failed = failed + 1
        first_error = first_error or tostring(err)
      end
    end))
  end
  while client:pending() > 0 and core.monotonic() - started < MAX_SECONDS do
    client:poll(100)
  end
  local seconds = core.monotonic() - started
  local cpu_ms = (os.clock() - cpu_started) * 1000
  local pending = client:pending()
  local overflows_after = listen_overflows()
  client:close()
  return {
    max_connections = max_connections,
    requests = REQUESTS,
    delay_ms = DELAY_MS,
    ok = ok,
    failed = failed,
    still_pending = pending,
    first_error = first_error,
    seconds = seconds,
    connections = emu:stats().connections,
    cpu_ms = cpu_ms,
    listen_overflows = overflows_before and overflows_after and overflows_after - overflows_before,
  }
end

local emu = emulator.start({ max_seconds = 300 })
local ran, err = pcall(function()
  for _, max_connections in ipairs(MAX_CONNECTIONS) do
    print(cjson.encode(measure(emu, max_connections)))
  end
end)
emu:stop()
if not ran then
  io.stderr:write("async.lua: ", tostring(err), "\n")
  os.exit(1)
end
