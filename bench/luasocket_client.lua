--- Contender: Lua 5.4 with LuaSocket's socket.http and lua-cjson. MODE:
--   close      socket.http as it is: it sends "Connection: close, TE" and
--              closes the socket after every response, so each request
--              opens a new TCP connection
--   keepalive  socket.http with a `create` function that hands it one
--              persistent socket (TCP_NODELAY on) whose close() does
--              nothing, and a "Connection: keep-alive" header
-- See bench/contender.lua for the arguments.

local contender = require("contender")
local settings = contender.settings()
local http = require("socket.http")
local socket = require("socket")
local ltn12 = require("ltn12")
local cjson = require("cjson")

local mode = settings.mode or "close"
if settings.url:match("^https:") then
  io.stderr:write("luasocket_client.lua: only http:// is supported\n")
  os.exit(2)
end

local body = cjson.encode({ file_name = settings.file_name })
local headers = {
  ["content-type"] = "application/json",
  ["content-length"] = tostring(#body),
  ["x-auth-token"] = settings.token,
}

local create, proxy
if mode == "keepalive" then
  headers["connection"] = "keep-alive"

  -- socket.http calls create(), settimeout, connect, send, receive and
  -- close on what create() returns. This proxy forwards all of them to
  -- one TCP socket, connects it once and keeps it open on close().
  -- Each forwarding method is made once and then stored in the proxy.
  local connection, connected
  proxy = setmetatable({}, {
    __index = function(self, name)
      local forward = function(_, ...)
        return connection[name](connection, ...)
      end
      rawset(self, name, forward)
      return forward
    end,
  })
  function proxy.connect(_, host, port)
    if connected then
      return 1
    end
    local ok, err = connection:connect(host, port)
    connected = ok ~= nil
    if connected then
      connection:setoption("tcp-nodelay", true)
    end
    return ok, err
  end
  function proxy.close()
    return 1
  end
  function proxy.reset()
    if connection then
      connection:close()
    end
    connection, connected = nil, false
  end

  create = function()
    if not connection then
      local err
      connection, err = socket.tcp()
      if not connection then
        return nil, err
      end
    end
    return proxy
  end
elseif mode ~= "close" then
  io.stderr:write("unknown mode ", mode, "\n")
  os.exit(2)
end

contender.run(settings.requests, function()
  local chunks = {}
  local ok, status, response_headers = http.request({
    url = settings.url,
    method = "POST",
    headers = headers,
    source = ltn12.source.string(body),
    sink = ltn12.sink.table(chunks),
    create = create,
  })
  if not ok then
    if proxy then
      proxy.reset()
    end
    return nil, status
  end
  if proxy and tostring(response_headers.connection):lower() == "close" then
    proxy.reset()
  end
  if status ~= 200 then
    return nil, "status " .. tostring(status)
  end
  local decoded_ok, decoded = pcall(cjson.decode, table.concat(chunks))
  if not decoded_ok then
    return nil, decoded
  end
  return contender.check_credential(decoded)
end)
