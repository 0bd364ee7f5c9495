--- Requests an upload credential and uploads one file with it, the whole
-- job of a plain Lua script.
--
-- Against the local emulator, from the repository root after make:
--
--   python3 tools/emulator.py --port 0 --max-seconds 300 &
--   # its first output line is {"url": "http://127.0.0.1:PORT", ...}
--   APPCENTER_ENDPOINT=http://127.0.0.1:PORT \
--   APPCENTER_TOKEN=fake-token-for-tests \
--   APPCENTER_PROJECT_ID=0123456789abcdef0123456789abcdef \
--   LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/lua5.4/?.so;;' \
--     lua5.4 examples/plain.lua README.md

local appcenter = require("appcenter")

local path = arg[1]
if not path then
  io.stderr:write("usage: lua5.4 examples/plain.lua FILE\n")
  os.exit(2)
end

local function required_env(name)
  local value = os.getenv(name)
  if value == nil or value == "" then
    io.stderr:write(("plain: environment variable %s is not set; see the "
      .. "comment at the top of this file\n"):format(name))
    os.exit(2)
  end
  return value
end

-- The token comes from the environment, never from the source or the
-- command line.
local client, err = appcenter.new({
  endpoint = required_env("APPCENTER_ENDPOINT"),
  project_id = required_env("APPCENTER_PROJECT_ID"),
  token = required_env("APPCENTER_TOKEN"),
})
if not client then
  io.stderr:write(tostring(err), "\n")
  os.exit(1)
end

local file_name = path:match("[^/]+$")
local meta
meta, err = client:create_and_upload(file_name, { path = path })
client:close()
if not meta then
  io.stderr:write(tostring(err), "\n")
  os.exit(1)
end
print(("uploaded %d bytes to %s (request id %s)")
  :format(meta.bytes, meta.url, tostring(meta.request_id)))
