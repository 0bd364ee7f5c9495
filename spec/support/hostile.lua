--- Starts spec/support/hostile_server.py, a misbehaving HTTP server on
-- 127.0.0.1, for busted specs. Works on Lua 5.1 (LuaJIT) and 5.4.
--
--   local hostile = require("spec.support.hostile")
--   local server = hostile.start{ mode = "silent" }
--   ... point a client at server.url ...
--   server:stop()

local cjson = require("cjson")

local hostile = {}

local Server = {}
Server.__index = Server

local subprocess = require("spec.support.subprocess")
local repository_root = subprocess.repository_root
local shell_quote = subprocess.shell_quote

--- Starts a server and returns its handle once it printed its ready line.
-- opts: mode (required, see hostile_server.py), status, body, headers (a
-- list of "Name: value" strings), content_length (the Content-Length
-- value that "fixed" sends in place of the body's length), rate (bytes
-- per second for "slow"), max_seconds (lifetime, default 60). Every
-- connection is logged, so server:connections() and server:requests()
-- work in every mode.
function hostile.start(opts)
  local log_path = os.tmpname()
  local words = {
    "exec python3", shell_quote(repository_root() .. "/spec/support/hostile_server.py"),
    shell_quote(assert(opts.mode, "mode is required")),
    "--log", shell_quote(log_path),
    "--max-seconds", shell_quote(opts.max_seconds or 60),
  }
  if opts.status then
    words[#words + 1] = "--status " .. shell_quote(opts.status)
  end
  if opts.body then
    words[#words + 1] = "--body " .. shell_quote(opts.body)
  end
  for _, header in ipairs(opts.headers or {}) do
    words[#words + 1] = "--header " .. shell_quote(header)
  end
  if opts.content_length then
    words[#words + 1] = "--content-length " .. shell_quote(opts.content_length)
  end
  if opts.rate then
    words[#words + 1] = "--rate " .. shell_quote(opts.rate)
  end
  local command = table.concat(words, " ")

  -- The server ends itself if it is not ready within 10 seconds, so this
  -- read returns end of file instead of blocking.
  local pipe = assert(io.popen(command, "r"))
  local line = pipe:read("*l")
  local ok, ready = pcall(cjson.decode, line or "")
  if not ok or type(ready) ~= "table" or type(ready.url) ~= "string" then
    pipe:close()
    os.remove(log_path)
    error(("hostile server did not start: expected a JSON ready line, got %q\ncommand: %s")
      :format(tostring(line), command), 2)
  end
  return setmetatable({
    url = ready.url,
    port = math.floor(ready.port),
    pid = math.floor(ready.pid),
    pipe = pipe,
    log_path = log_path,
  }, Server)
end

-- Returns the decoded log records.
function Server:records()
  local records = {}
  local file = io.open(self.log_path, "r")
  if not file then
    return records
  end
  for line in file:lines() do
    records[#records + 1] = cjson.decode(line)
  end
  file:close()
  return records
end

--- Returns the number of connections the server accepted.
function Server:connections()
  local count = 0
  for _, record in ipairs(self:records()) do
    if record.event == "connect" then
      count = count + 1
    end
  end
  return count
end

--- Returns the requests received, as {request_line, headers} tables.
function Server:requests()
  local requests = {}
  for _, record in ipairs(self:records()) do
    if record.event == "request" and record.request_line ~= cjson.null then
      requests[#requests + 1] = record
    end
  end
  return requests
end

--- Stops the server and waits for it to exit. Calling it again does nothing.
function Server:stop()
  if not self.pipe then
    return
  end
  os.execute(("kill -TERM %d 2>/dev/null"):format(self.pid))
  self.pipe:close()
  self.pipe = nil
  os.remove(self.log_path)
end

return hostile
