--- Starts the local App Center emulator (tools/emulator.py) for busted specs and drives
-- its control port. Works on Lua 5.1 (LuaJIT) and 5.4 with LuaSocket and lua-cjson.
--
--   local emulator = require("spec.support.emulator")
--   local emu = emulator.start{ args = {"--token", "fake-other-token"} }
--   emu:fault{ status = 503, headers = { ["Retry-After"] = "1" }, times = 2 }
--   ... call the client with emu:client_options() ...
--   local object = emu:object(result.bucket_name, result.object_path)
--   emu:stop()

local http = require("socket.http")
local ltn12 = require("ltn12")
local socket = require("socket")
local cjson = require("cjson")

local emulator = {}

-- Identities that tools/emulator.py accepts when no --token, --project-id, --ak or --sk is given.
emulator.DEFAULT_TOKEN = "fake-token-for-tests"
emulator.DEFAULT_PROJECT_ID = "0123456789abcdef0123456789abcdef"
emulator.DEFAULT_AK = "FAKEAKFORTESTS000001"
emulator.DEFAULT_SK = "fake-sk-for-tests-0000000000000000000000"

-- The one bucket of the emulator's OBS port, named in every issued credential.
emulator.BUCKET_NAME = "appcenter-emulator-bucket"

-- Timeout in seconds of each control-port request.
local CONTROL_TIMEOUT_SECONDS = 10

local Emulator = {}
Emulator.__index = Emulator

local subprocess = require("spec.support.subprocess")
local repository_root = subprocess.repository_root
local shell_quote = subprocess.shell_quote

local function read_file(path)
  local file = io.open(path, "rb")
  if not file then
    return ""
  end
  local content = file:read("*a") or ""
  file:close()
  return content
end

-- Runs a shell command and returns whether it exited with status 0. os.execute
-- returns 0 on Lua 5.1 and true on 5.2 and later for success.
local function run_command(command)
  local status = os.execute(command)
  return status == 0 or status == true
end

-- Replaces cjson.null by nil, so that absent and null values compare the same in specs.
local function strip_nulls(value)
  if value == cjson.null then
    return nil
  end
  if type(value) == "table" then
    for key, item in pairs(value) do
      value[key] = strip_nulls(item)
    end
  end
  return value
end

-- Returns the value after the first occurrence of flag in args, or nil.
local function flag_value(args, flag)
  for index = 1, #args - 1 do
    if args[index] == flag then
      return args[index + 1]
    end
  end
  return nil
end

--- A create-credential body whose statement has empty action and resource
-- lists, which lua-cjson decodes to empty tables like empty objects.
emulator.EMPTY_LISTS_BODY = '{"server_end_point": "localhost:1", '
  .. '"bucket_name": "b", "object_path": "o", "policy": {"version": "1.1", '
  .. '"statement": {"effect": "Allow", "action": [], "resource": []}}, '
  .. '"credential": {"access": "A", "secret": "S", "security_token": "T"}}'

--- Starts an emulator and returns its handle once it printed its ready line.
-- opts (all optional): tls_cert and tls_key (PEM files, serve HTTPS), args (extra
-- command-line arguments), max_seconds (lifetime, default 900), python (default "python3").
-- Raises an error that contains the emulator's stderr when it does not start.
function emulator.start(opts)
  opts = opts or {}
  local args = opts.args or {}
  local words = {
    "exec", shell_quote(opts.python or "python3"), shell_quote(repository_root() .. "/tools/emulator.py"),
    "--port", "0", "--max-seconds", shell_quote(opts.max_seconds or 900),
  }
  if opts.tls_cert or opts.tls_key then
    words[#words + 1] = "--tls-cert " .. shell_quote(assert(opts.tls_cert, "tls_key needs tls_cert"))
    words[#words + 1] = "--tls-key " .. shell_quote(assert(opts.tls_key, "tls_cert needs tls_key"))
  end
  for _, arg in ipairs(args) do
    words[#words + 1] = shell_quote(arg)
  end
  local stderr_path = os.tmpname()
  words[#words + 1] = "2>" .. shell_quote(stderr_path)
  local command = table.concat(words, " ")

  -- The emulator ends itself (SIGALRM) if it is not ready within 10 seconds, so
  -- this read returns end of file instead of blocking when startup hangs.
  -- NOTE: a hang before Python runs the script (interpreter or pyenv shim) still blocks here.
  local pipe = assert(io.popen(command, "r"))
  local line = pipe:read("*l")
  local ok, ready = pcall(cjson.decode, line or "")
  if not ok or type(ready) ~= "table" or type(ready.url) ~= "string" or type(ready.pid) ~= "number" then
    pipe:close()
    local stderr = read_file(stderr_path)
    os.remove(stderr_path)
    error(string.format("emulator did not start: expected a JSON ready line, got %q\ncommand: %s\nstderr: %s",
      tostring(line), command, stderr), 2)
  end

  local self = setmetatable({
    url = ready.url,
    control = ready.control,
    obs_url = ready.obs,
    server_end_point = ready.server_end_point,
    pid = math.floor(ready.pid),
    token = flag_value(args, "--token") or emulator.DEFAULT_TOKEN,
    project_id = flag_value(args, "--project-id") or emulator.DEFAULT_PROJECT_ID,
    ak = flag_value(args, "--ak") or emulator.DEFAULT_AK,
    sk = flag_value(args, "--sk") or emulator.DEFAULT_SK,
    tls_cert = opts.tls_cert,
    pipe = pipe,
    stderr_path = stderr_path,
  }, Emulator)
  return self
end

--- Sends one JSON request to the control port and returns the decoded JSON response.
-- Raises an error with the status and error_msg unless the status is 200, or
-- returns nil for a 404 when not_found_ok is true.
function Emulator:control_request(method, path, payload, not_found_ok)
  local body = payload ~= nil and cjson.encode(payload) or ""
  local chunks = {}
  local saved_timeout = http.TIMEOUT
  http.TIMEOUT = CONTROL_TIMEOUT_SECONDS
  local ok, status = http.request{
    url = self.control .. path,
    method = method,
    headers = { ["content-type"] = "application/json", ["content-length"] = tostring(#body) },
    source = ltn12.source.string(body),
    sink = ltn12.sink.table(chunks),
  }
  http.TIMEOUT = saved_timeout
  if not ok then
    error(string.format("emulator control request %s %s failed: %s", method, path, tostring(status)), 3)
  end
  local text = table.concat(chunks)
  if status == 404 and not_found_ok then
    return nil
  end
  local decoded_ok, decoded = pcall(cjson.decode, text)
  if status ~= 200 or not decoded_ok then
    local message = decoded_ok and type(decoded) == "table" and decoded.error_msg or text
    error(string.format("emulator control request %s %s returned %s: %s", method, path, tostring(status),
      tostring(message)), 3)
  end
  return strip_nulls(decoded)
end

--- Queues one fault, or several when given a list of fault tables.
-- Fields: status, body, headers, delay_ms, drop, truncate, oversize_bytes,
-- slow_bytes_per_second, close, times, target. In headers, false removes a default header.
-- target = "obs" makes the fault affect OBS uploads instead of create-credential
-- requests; it takes status, body, headers, delay_ms, drop, close and times.
-- Returns the number of requests that pending faults will still affect.
function Emulator:fault(fault)
  return self:control_request("POST", "/faults", fault).faults_pending
end

--- Merges settings into the emulator's configuration and returns it:
-- delay_ms (delay of every API request) and credential_ttl (seconds for which
-- credentials issued from now on can upload; 0 issues expired ones).
function Emulator:config(settings)
  return self:control_request("POST", "/config", settings)
end

--- Returns {requests, connections, faults_pending, last_request, obs_requests,
-- last_obs_request, objects}. The last_* fields are nil before any such request.
function Emulator:stats()
  return self:control_request("GET", "/stats")
end

--- Clears faults, configuration, counters, last_request and stored objects.
function Emulator:reset()
  self:control_request("POST", "/reset")
end

--- Waits until the emulator has received `count` API requests, or OBS requests
-- when `counter` is "obs_requests", polling `client` (a core or wrapper client)
-- meanwhile, or sleeping without one. Specs call it before abandoning requests,
-- so that none arrives after the next reset.
function Emulator:wait_for_requests(count, client, counter)
  counter = counter or "requests"
  for _ = 1, 200 do
    if self:stats()[counter] >= count then
      return
    end
    if client then
      client:poll(10)
    else
      socket.sleep(0.01)
    end
  end
  error(("the emulator received %d of %d %s"):format(self:stats()[counter], count, counter), 2)
end

-- Percent-encodes every byte of an object key except unreserved characters and "/".
local function encode_key(key)
  return (key:gsub("[^%w%-%._~/]", function(char)
    return string.format("%%%02X", char:byte())
  end))
end

--- Returns {bucket, key, size, sha256, md5, etag, content_type, content_md5} of
-- the object stored under bucket/key by an upload, or nil when there is none.
-- sha256 and md5 are lower-case hexadecimal; content_md5 is the header as sent.
function Emulator:object(bucket, key)
  return self:control_request("GET", "/objects/" .. encode_key(bucket) .. "/" .. encode_key(key), nil, true)
end

--- Returns the client options for this emulator, with overrides merged in.
function Emulator:client_options(overrides)
  local options = {
    endpoint = self.url,
    project_id = self.project_id,
    token = self.token,
    ca_file = self.tls_cert,
  }
  for key, value in pairs(overrides or {}) do
    options[key] = value
  end
  return options
end

--- Returns what the emulator wrote to stderr so far (request logs with --verbose).
function Emulator:stderr_output()
  return read_file(self.stderr_path)
end

--- Stops the emulator with SIGTERM and waits for it to exit. Calling it again does nothing.
function Emulator:stop()
  if not self.pipe then
    return
  end
  run_command(string.format("kill -TERM %d 2>/dev/null", self.pid))
  -- Closing the pipe waits for the process. The emulator also exits by itself
  -- when this end of its stdout pipe closes, so the wait is short even if the
  -- signal was missed.
  self.pipe:close()
  self.pipe = nil
  os.remove(self.stderr_path)
end

--- Creates a self-signed certificate for 127.0.0.1, localhost and the emulator's bucket
-- under localhost (for virtual-host uploads) with the openssl command.
-- directory defaults to a new temporary directory. Returns cert_path, key_path.
function emulator.make_certificate(directory)
  if not directory then
    directory = os.tmpname()
    os.remove(directory)
    if not run_command("mkdir -m 700 " .. shell_quote(directory)) then
      error("cannot create directory " .. directory, 2)
    end
  end
  local cert_path = directory .. "/cert.pem"
  local key_path = directory .. "/key.pem"
  local command = table.concat({
    "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1",
    "-addext 'subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost,DNS:" .. emulator.BUCKET_NAME .. ".localhost'",
    "-keyout", shell_quote(key_path), "-out", shell_quote(cert_path), ">/dev/null 2>&1",
  }, " ")
  if not run_command(command) then
    error("openssl failed to create a test certificate in " .. directory .. "; is the openssl command installed?", 2)
  end
  return cert_path, key_path
end

return emulator
