--- 200 credential requests at once through the wrapper's non-blocking API
-- (client:start and client:poll) from one Lua thread, against the local
-- emulator, which delays every response by 200 ms. The client allows 64
-- connections, so the requests need at least four rounds of 200 ms.
-- Prints the wall time from the first start to the last callback and the
-- connections the emulator accepted. Exits with status 1 when a request
-- fails or does not finish within 60 s.
--
-- From the repository root, after make:
--
--   LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/lua5.4/?.so;;' \
--     lua5.4 bench/async_200.lua
--
-- Use build/luajit and luajit for LuaJIT.

local appcenter = require("appcenter")
local core = require("appcenter.core")
local emulator = require("spec.support.emulator")

local REQUESTS = 200
local DELAY_MS = 200
local MAX_CONNECTIONS = 64
local MAX_SECONDS = 60

local function run(emu)
  emu:config({ delay_ms = DELAY_MS })
  local client = assert(appcenter.new(emu:client_options({
    max_connections = MAX_CONNECTIONS,
  })))

  local succeeded, failed, first_error = 0, 0, nil
  local function on_done(result, err)
    if result then
      succeeded = succeeded + 1
    else
      failed = failed + 1
      first_error = first_error or err
    end
  end

  local started = core.monotonic()
  for i = 1, REQUESTS do
    assert(client:start(("bench-%03d.bin"):format(i), on_done))
  end
  while client:pending() > 0 and core.monotonic() - started < MAX_SECONDS do
    client:poll(100)
  end
  local seconds = core.monotonic() - started
  local unfinished = client:pending()
  client:close()

  local stats = emu:stats()
  print(("requests:        %d (%d succeeded, %d failed, %d unfinished)")
    :format(REQUESTS, succeeded, failed, unfinished))
  print(("server delay:    %d ms per request"):format(DELAY_MS))
  print(("max_connections: %d"):format(MAX_CONNECTIONS))
  print(("connections:     %d"):format(stats.connections))
  print(("wall time:       %.3f s"):format(seconds))
  print(("lua:             %s"):format(jit and jit.version or _VERSION))
  if first_error then
    print("first error:     " .. tostring(first_error))
  end
  return succeeded == REQUESTS
end

local emu = emulator.start()
local ok, passed = pcall(run, emu)
emu:stop()
if not ok then
  error(passed, 0)
end
os.exit(passed and 0 or 1)
