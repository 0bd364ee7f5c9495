--- Contender: LuaJIT with Debian's lua-curl package (luacurl 0.3.0 by
-- Enrico Tassi, module "curl") and lua-cjson. One reused easy handle, so
-- libcurl keeps the connection alive. The module has no getinfo, so the
-- status comes from the status line in the header callback.
-- See bench/contender.lua for the arguments.

local contender = require("contender")
local settings = contender.settings()
local curl = require("curl")
local cjson = require("cjson")

local easy = curl.easy_init()
local body = cjson.encode({ file_name = settings.file_name })
local status, request_id
local chunks, chunk_count = {}, 0

easy:setopt(curl.OPT_URL, settings.url)
easy:setopt(curl.OPT_NOSIGNAL, 1)
easy:setopt(curl.OPT_HTTPHEADER, {
  "Content-Type: application/json",
  "Expect:",
  "X-Auth-Token: " .. settings.token,
})
easy:setopt(curl.OPT_POSTFIELDS, body)
easy:setopt(curl.OPT_POSTFIELDSIZE, #body)
-- A User-Agent as long as the module's, because libcurl formats header
-- bytes one at a time and a shorter one would cost less.
local libcurl = curl.version():match("^(libcurl/%S+)") or "libcurl"
easy:setopt(curl.OPT_USERAGENT, "bench-luacurl/0.1.0 " .. libcurl .. " " .. jit.version)
easy:setopt(curl.OPT_TIMEOUT, 30)
if settings.ca_file then
  easy:setopt(curl.OPT_CAINFO, settings.ca_file)
end
easy:setopt(curl.OPT_WRITEFUNCTION, function(data, size)
  chunk_count = chunk_count + 1
  chunks[chunk_count] = data
  return size
end)
easy:setopt(curl.OPT_HEADERFUNCTION, function(line, size)
  local code = line:match("^HTTP/[%d.]+ (%d%d%d)")
  if code then
    status = tonumber(code)
  else
    local value = line:match("^[Xx]%-[Rr]equest%-[Ii]d:%s*(.-)%s*$")
    if value then
      request_id = value
    end
  end
  return size
end)

contender.run(settings.requests, function()
  status, request_id = nil, nil
  for i = 1, chunk_count do
    chunks[i] = nil
  end
  chunk_count = 0
  local ok, message = easy:perform()
  if not ok then
    return nil, message
  end
  if status ~= 200 then
    return nil, "status " .. tostring(status)
  end
  local decoded_ok, decoded = pcall(cjson.decode, table.concat(chunks, "", 1, chunk_count))
  if not decoded_ok then
    return nil, decoded
  end
  return contender.check_credential(decoded)
end)
