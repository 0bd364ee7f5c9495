--- Contender: this repository's module. MODE is one of
--   core-token    appcenter.core client with X-Auth-Token
--   core-aksk     appcenter.core client with AK/SK signing
--   wrapper       the appcenter Lua wrapper, token, retries on (defaults)
--   core-oneshot  core.create_credential per request: a new handle, so a
--                 new connection (and TLS handshake) every time
-- Runs under Lua 5.4 and LuaJIT. See bench/contender.lua for the arguments.

local contender = require("contender")
local settings = contender.settings()
local core = require("appcenter.core")

local mode = settings.mode or "core-token"
local options = {
  endpoint = settings.url,
  project_id = settings.project_id,
  ca_file = settings.ca_file,
}
if mode == "core-aksk" then
  options.ak, options.sk = settings.ak, settings.sk
else
  options.token = settings.token
end

local file_name = settings.file_name
local create

if mode == "core-token" or mode == "core-aksk" then
  local client = assert(core.new(options))
  create = function()
    return client:create_credential(file_name)
  end
elseif mode == "wrapper" then
  local appcenter = require("appcenter")
  local client = appcenter.new(options)
  create = function()
    return client:create_credential(file_name)
  end
elseif mode == "core-oneshot" then
  options.file_name = file_name
  create = function()
    return core.create_credential(options)
  end
else
  io.stderr:write("unknown mode ", tostring(mode), "\n")
  os.exit(2)
end

contender.run(settings.requests, function()
  local result, err = create()
  if not result then
    return nil, tostring(err)
  end
  if type(result.credential.security_token) ~= "string" then
    return nil, "result has no security_token"
  end
  return true
end)
