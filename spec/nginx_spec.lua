-- Integration spec: a real nginx (Debian's nginx with libnginx-mod-http-lua)
-- runs examples/nginx/nginx.conf in front of the App Center emulator, and
-- the spec drives both from outside over HTTP on 127.0.0.1. It runs the
-- same under Lua 5.4 and LuaJIT because nginx loads build/luajit itself.
--
-- Each nginx gets a prefix directory of its own under a temporary folder,
-- a free port, `daemon off` under `timeout` (so it ends by itself even if
-- the spec dies) and a pid file that teardown uses to stop it.

local cjson = require("cjson")
local http = require("socket.http")
local ltn12 = require("ltn12")
local socket = require("socket")

local emulator = require("spec.support.emulator")

local NGINX_MODULE_DIR = "/usr/lib/nginx/modules"
local LUA_MODULE = NGINX_MODULE_DIR .. "/ngx_http_lua_module.so"

-- Upper bound on the life of each nginx the spec starts, in seconds.
local NGINX_LIFETIME_SECONDS = 300
local STARTUP_TIMEOUT_SECONDS = 10
local PORT_ATTEMPTS = 3
local STOP_TIMEOUT_SECONDS = 5
local REQUEST_TIMEOUT_SECONDS = 10

local function shell_quote(value)
  return "'" .. tostring(value):gsub("'", "'\\''") .. "'"
end

-- Runs a shell command and returns whether it exited with status 0.
-- os.execute returns 0 on Lua 5.1 and true on 5.2 and later for success.
local function run_command(command)
  local status = os.execute(command)
  return status == 0 or status == true
end

local function read_command(command)
  local pipe = assert(io.popen(command, "r"))
  local output = pipe:read("*a")
  pipe:close()
  return output
end

local function read_file(path)
  local file = io.open(path, "rb")
  if not file then
    return ""
  end
  local content = file:read("*a") or ""
  file:close()
  return content
end

local function write_file(path, content)
  local file = assert(io.open(path, "wb"))
  assert(file:write(content))
  file:close()
end

-- Returns the absolute path of the checkout, which nginx.conf needs
-- because nginx resolves Lua paths against its own working directory.
local function repository_root()
  local source = debug.getinfo(1, "S").source
  local relative = source:sub(2):match("^(.*)spec/nginx_spec%.lua$") or ""
  if relative:sub(1, 1) ~= "/" then
    local cwd = read_command("pwd"):gsub("%s+$", "")
    relative = cwd .. "/" .. relative
  end
  return (relative:gsub("/+$", ""):gsub("/%./", "/"):gsub("/%.$", ""))
end

local function nginx_binary()
  local path = read_command("command -v nginx 2>/dev/null || "
    .. "ls /usr/sbin/nginx 2>/dev/null"):gsub("%s+$", "")
  if path == "" then
    return nil
  end
  return path
end

-- Returns why the spec cannot run, or nil when nginx and its Lua module
-- are installed.
local function missing_prerequisite()
  if not nginx_binary() then
    return "nginx is not installed (Debian: apt-get install nginx-light)"
  end
  if read_file(LUA_MODULE) == "" then
    return LUA_MODULE .. " is missing "
      .. "(Debian: apt-get install libnginx-mod-http-lua)"
  end
  return nil
end

local function free_port()
  local server = assert(socket.bind("127.0.0.1", 0))
  local _, port = server:getsockname()
  server:close()
  return tonumber(port)
end

-- Replaces each ${NAME} in the template and raises on a name without a
-- value, so a new placeholder cannot slip through unrendered.
local function render(template, values)
  return (template:gsub("%${([%w_]+)}", function(name)
    return assert(values[name], "no value for ${" .. name .. "}")
  end))
end

local function process_alive(pid)
  return run_command(("kill -0 %d 2>/dev/null"):format(pid))
end

-- Sends one request and returns status, body, seconds taken.
local function request(url, method)
  local chunks = {}
  local saved_timeout = http.TIMEOUT
  http.TIMEOUT = REQUEST_TIMEOUT_SECONDS
  local started = socket.gettime()
  local ok, status = http.request({
    url = url,
    method = method or "GET",
    sink = ltn12.sink.table(chunks),
  })
  local seconds = socket.gettime() - started
  http.TIMEOUT = saved_timeout
  assert(ok, ("request to %s failed: %s"):format(url, tostring(status)))
  return status, table.concat(chunks), seconds
end


local Nginx = {}
Nginx.__index = Nginx

-- Runs nginx in the background on `port` with the configuration already
-- rendered in `prefix`, and waits until the port accepts connections and
-- the pid file exists. Returns the pid, or nil and "busy" when another
-- process took the port first, or nil and "timeout".
local function launch(prefix, port, env)
  local assignments = {}
  for name, value in pairs(env) do
    assignments[#assignments + 1] = name .. "=" .. shell_quote(value)
  end
  -- A master started by root runs its workers as nobody, who may not read
  -- the checkout or the token file, so the spec keeps them as root.
  local globals = ""
  if read_command("id -u"):match("^0%s") then
    globals = "-g 'user root root;'"
  end
  local command = ("env %s timeout -s TERM %d %s -p %s -c nginx.conf %s "
    .. ">%s 2>&1 </dev/null &"):format(
    table.concat(assignments, " "), NGINX_LIFETIME_SECONDS,
    shell_quote(nginx_binary()), shell_quote(prefix .. "/"), globals,
    shell_quote(prefix .. "/logs/stderr.log"))
  assert(run_command(command), "could not run " .. command)

  local deadline = socket.gettime() + STARTUP_TIMEOUT_SECONDS
  while socket.gettime() < deadline do
    local client = socket.tcp()
    client:settimeout(0.2)
    local connected = client:connect("127.0.0.1", port)
    client:close()
    local pid = tonumber(read_file(prefix .. "/logs/nginx.pid"):match("%d+"))
    if connected and pid then
      return pid
    end
    if read_file(prefix .. "/logs/stderr.log"):find("Address already in use",
        1, true) then
      return nil, "busy"
    end
    socket.sleep(0.05)
  end
  return nil, "timeout"
end

-- Starts nginx with `conf_text` (a template with ${APPCENTER_ROOT} and
-- ${APPCENTER_NGINX_PORT}) and environment variables `env`. Returns once
-- the port accepts connections and the pid file exists, and raises with the
-- error log when that takes longer than STARTUP_TIMEOUT_SECONDS. The port
-- is free when picked but another process can take it before nginx binds
-- it, so a port found busy is replaced up to PORT_ATTEMPTS times.
local function start_nginx(conf_text, env)
  local prefix = read_command("mktemp -d /tmp/appcenter-nginx-spec.XXXXXX")
    :gsub("%s+$", "")
  assert(prefix ~= "", "mktemp failed")
  assert(run_command("mkdir " .. shell_quote(prefix .. "/logs")))
  local self = setmetatable({ prefix = prefix }, Nginx)

  local failure
  for _ = 1, PORT_ATTEMPTS do
    local port = free_port()
    write_file(prefix .. "/nginx.conf", render(conf_text, {
      APPCENTER_ROOT = repository_root(),
      APPCENTER_NGINX_PORT = tostring(port),
    }))
    self.pid, failure = launch(prefix, port, env)
    if self.pid then
      self.base_url = ("http://127.0.0.1:%d"):format(port)
      return self
    end
    if failure ~= "busy" then
      break
    end
    run_command("rm -f " .. shell_quote(prefix .. "/logs/stderr.log"))
  end

  local logs = self:error_log() .. read_file(prefix .. "/logs/stderr.log")
  self:stop()
  if failure == "busy" then
    error(("nginx found each of %d free ports taken when it bound them:\n%s")
      :format(PORT_ATTEMPTS, logs), 2)
  end
  error(("nginx did not start within %d s:\n%s"):format(
    STARTUP_TIMEOUT_SECONDS, logs), 2)
end

function Nginx:error_log()
  return read_file(self.prefix .. "/logs/error.log")
end

function Nginx:get(path)
  return request(self.base_url .. path)
end

-- Stops nginx (SIGTERM, then SIGKILL after STOP_TIMEOUT_SECONDS) and
-- removes its prefix directory. Calling it again does nothing.
function Nginx:stop()
  if not self.prefix then
    return
  end
  local pid = self.pid
    or tonumber(read_file(self.prefix .. "/logs/nginx.pid"):match("%d+"))
  if pid then
    run_command(("kill -TERM %d 2>/dev/null"):format(pid))
    local deadline = socket.gettime() + STOP_TIMEOUT_SECONDS
    while process_alive(pid) and socket.gettime() < deadline do
      socket.sleep(0.05)
    end
    if process_alive(pid) then
      run_command(("kill -KILL %d 2>/dev/null"):format(pid))
    end
  end
  run_command("rm -rf " .. shell_quote(self.prefix))
  self.prefix = nil
end

-- Counts the occurrences of a plain string.
local function count_plain(text, pattern)
  local count, position = 0, 1
  while true do
    local found = text:find(pattern, position, true)
    if not found then
      return count
    end
    count, position = count + 1, found + #pattern
  end
end

local function wait_for(predicate, seconds)
  local deadline = socket.gettime() + seconds
  repeat
    local value = predicate()
    if value then
      return value
    end
    socket.sleep(0.02)
  until socket.gettime() >= deadline
  return nil
end


local missing = missing_prerequisite()
if missing then
  describe("nginx integration", function()
    pending(missing)
  end)
  return
end

local ROOT = repository_root()

describe("nginx integration", function()
  local emu
  local token_dir

  setup(function()
    emu = emulator.start()
    token_dir = read_command("mktemp -d /tmp/appcenter-token.XXXXXX")
      :gsub("%s+$", "")
    write_file(token_dir .. "/token", emu.token .. "\n")
  end)

  teardown(function()
    if emu then
      emu:stop()
    end
    if token_dir and token_dir ~= "" then
      run_command("rm -rf " .. shell_quote(token_dir))
    end
  end)

  local EXAMPLE_CONF = read_file(ROOT .. "/examples/nginx/nginx.conf")

  -- Declares, in the calling describe, one nginx that runs `conf` (a form
  -- of examples/nginx/nginx.conf) with the environment that the example
  -- handler reads, changed by `env` (false removes a variable). It starts
  -- before the describe's tests and stops after them. Returns a stand-in
  -- whose fields and methods are those of the running server.
  local function example_server(conf, env)
    local server
    setup(function()
      local variables = {
        APPCENTER_ENDPOINT = emu.url,
        APPCENTER_PROJECT_ID = emu.project_id,
        APPCENTER_TOKEN_FILE = token_dir .. "/token",
      }
      for name, value in pairs(env or {}) do
        variables[name] = value or nil
      end
      server = start_nginx(conf, variables)
    end)

    teardown(function()
      if server then
        server:stop()
      end
    end)

    before_each(function()
      emu:reset()
    end)

    return setmetatable({}, {
      __index = function(_, key)
        local value = server[key]
        if type(value) ~= "function" then
          return value
        end
        return function(_, ...)
          return value(server, ...)
        end
      end,
    })
  end

  describe("with examples/nginx/nginx.conf", function()
    local nginx = example_server(EXAMPLE_CONF)

    it("serves /ping without Lua", function()
      local status, body = nginx:get("/ping")
      assert.are.equal(200, status)
      assert.are.equal("pong\n", body)
    end)

    -- Runs curl with `args` and returns the status, the content type and
    -- the body.
    local function curl(args)
      local pipe = assert(io.popen("curl --silent --max-time 20 --write-out "
        .. "'\n%{http_code} %{content_type}' " .. args))
      local output = pipe:read("*a")
      pipe:close()
      local body, status, content_type = output:match("^(.*)\n(%d+) (%S*)$")
      return tonumber(status), content_type, body
    end

    it("answers a too long URI in JSON", function()
      local status, content_type, body = curl(shell_quote(nginx.base_url
        .. "/credential?file_name=" .. ("a"):rep(9000)))

      assert.are.equal(414, status, body)
      assert.are.equal("application/json", content_type)
      assert.are.equal("uri_too_long", cjson.decode(body).error_code)
      assert.are.equal(0, emu:stats().requests)
    end)

    it("answers a too large body in JSON", function()
      local path = os.tmpname()
      local file = assert(io.open(path, "wb"))
      file:write(("x"):rep(2 * 1024 * 1024))
      file:close()
      local status, content_type, body = curl("--data-binary @"
        .. shell_quote(path) .. " "
        .. shell_quote(nginx.base_url .. "/credential?file_name=a.bin"))
      os.remove(path)

      assert.are.equal(413, status, body)
      assert.are.equal("application/json", content_type)
      assert.are.equal("request_too_large", cjson.decode(body).error_code)
      assert.are.equal(0, emu:stats().requests)
    end)

    it("returns a credential as JSON", function()
      local status, body = nginx:get("/credential?file_name=replay-0042.bin")
      assert.are.equal(200, status, body .. nginx:error_log())
      local result = cjson.decode(body)
      assert.are.equal("appcenter-emulator-bucket", result.bucket_name)
      assert.are.equal("/replay-0042.bin", result.object_path:sub(-16))
      assert.are.equal("string", type(result.credential.access))
      assert.are.equal("string", type(result.credential.secret))
      assert.are.equal("string", type(result.credential.security_token))
      assert.are.equal("fake-token-for-tests",
        emu:stats().last_request.headers["x-auth-token"])
    end)

    it("reuses the connection across calls", function()
      for i = 1, 5 do
        local path = ("/credential?file_name=keep-%d.bin"):format(i)
        local status = nginx:get(path)
        assert.are.equal(200, status)
      end
      local stats = emu:stats()
      assert.are.equal(5, stats.requests)
      -- Sequential calls get the same thread VM back from nginx's pool,
      -- and with it the same core client and connection. That connection
      -- may predate the reset of the counters, so 0 is fine.
      assert.is_true(stats.connections <= 1,
        ("%d connections for 5 calls"):format(stats.connections))
    end)

    it("returns empty action and resource lists as arrays", function()
      emu:fault{ status = 200, body = emulator.EMPTY_LISTS_BODY }

      local status, body = nginx:get("/credential?file_name=empty.bin")

      assert.are.equal(200, status, body)
      assert.is_truthy(body:find('"action":[]', 1, true), body)
      assert.is_truthy(body:find('"resource":[]', 1, true), body)
    end)

    it("keeps a string like the empty-list marker", function()
      local answer = cjson.decode(emulator.EMPTY_LISTS_BODY)
      answer.bucket_name = "\1empty array"
      emu:fault{ status = 200, body = cjson.encode(answer) }

      local status, body = nginx:get("/credential?file_name=marker.bin")

      assert.are.equal(200, status, body)
      assert.are.equal("\1empty array", cjson.decode(body).bucket_name)
      assert.is_truthy(body:find('"action":[]', 1, true), body)
    end)

    it("rejects too many query arguments", function()
      local args = {}
      for i = 1, 100 do
        args[i] = "a" .. i .. "=1"
      end
      local status, body = nginx:get("/credential?" .. table.concat(args, "&")
        .. "&file_name=a.bin")

      assert.are.equal(400, status)
      assert.are.equal("too many query arguments; pass only file_name",
        cjson.decode(body).error_msg)
    end)

    it("rejects an invalid file name with 400", function()
      local status, body = nginx:get("/credential?file_name=a:b.bin")
      assert.are.equal(400, status)
      assert.are.equal("invalid_file_name", cjson.decode(body).error_code)
      assert.are.equal(0, emu:stats().requests)
    end)

    -- Starts `count` concurrent credential calls with curl --parallel and
    -- returns a function that waits for them and returns curl's output (one
    -- status line per call) and the directory with the response bodies.
    local function start_parallel_calls(count, tag)
      local output_dir = ("%s/%s"):format(nginx.prefix, tag)
      assert(run_command("mkdir " .. shell_quote(output_dir)))
      local words = {
        "curl --silent --show-error --no-progress-meter --parallel",
        "--parallel-immediate --parallel-max", tostring(count),
        "--max-time 20 --write-out '%{http_code}\\n'",
      }
      for i = 1, count do
        words[#words + 1] = ("-o %s %s"):format(
          shell_quote(("%s/%02d.json"):format(output_dir, i)),
          shell_quote(("%s/credential?file_name=%s-%02d.bin")
            :format(nginx.base_url, tag, i)))
      end
      local pipe = assert(io.popen(table.concat(words, " "), "r"))
      return function()
        local output = pipe:read("*a")
        pipe:close()
        return output, output_dir
      end
    end

    it("prepares 32 thread VMs at worker start", function()
      local line = "appcenter: prepared 32 thread VMs for thread pool "
        .. '"appcenter"'
      assert.is_truthy(wait_for(function()
        return nginx:error_log():find(line, 1, true)
      end, 5), nginx:error_log())
    end)

    it("serves 32 slow calls at once and keeps /ping fast", function()
      -- Without the VMs that the example prepares at worker start, nginx
      -- would create them on the event loop now and stall the pings.
      emu:config({ delay_ms = 300 })

      local started = socket.gettime()
      local finish = start_parallel_calls(32, "parallel")

      -- While the emulator delays the calls (300 ms each), the same worker
      -- must still serve a plain location at once.
      local in_flight = wait_for(function()
        return emu:stats().requests > 0
      end, 5)
      local ping_seconds = {}
      for i = 1, 3 do
        local status, _, seconds = nginx:get("/ping")
        assert.are.equal(200, status)
        ping_seconds[i] = seconds
      end
      local pinged_after = socket.gettime() - started

      local output, output_dir = finish()
      local elapsed = socket.gettime() - started

      assert.is_truthy(in_flight)
      assert.are.equal(32, count_plain(output, "200\n"), output)
      for i = 1, 32 do
        local body = read_file(("%s/%02d.json"):format(output_dir, i))
        local result = cjson.decode(body)
        assert.are.equal("string", type(result.credential.access), body)
      end
      for i = 1, 3 do
        assert.is_true(ping_seconds[i] < 0.05,
          ("ping %d took %.3f s"):format(i, ping_seconds[i]))
      end
      -- The pings ended before the first call could (300 ms), so calls
      -- were in flight during each of them.
      assert.is_true(pinged_after < 0.3,
        ("pings ended %.3f s after the start"):format(pinged_after))
      -- One after another, the calls would take 32 x 300 ms = 9.6 s.
      assert.is_true(elapsed < 3, ("32 calls took %.3f s"):format(elapsed))
      assert.is_true(elapsed >= 0.3, ("32 calls took %.3f s"):format(elapsed))
    end)

    it("retries 503 answers with backoff", function()
      emu:fault({ status = 503, times = 2 })
      local status, body = nginx:get("/credential?file_name=retried.bin")
      assert.are.equal(200, status, body)
      assert.are.equal("appcenter-emulator-bucket",
        cjson.decode(body).bucket_name)
      assert.are.equal(3, emu:stats().requests)
      local log = nginx:error_log()
      assert.is_truthy(log:find("attempt 1 failed (appcenter: http 503", 1,
        true), log)
      assert.is_truthy(log:find("attempt 2 failed (appcenter: http 503", 1,
        true), log)
    end)

    it("sleeps through Retry-After without blocking the worker", function()
      emu:fault({ status = 503, headers = { ["Retry-After"] = "1" } })
      local started = socket.gettime()
      local pipe = assert(io.popen(("curl --silent --max-time 20 "
        .. "--write-out '%%{http_code}' -o /dev/null %s"):format(
        shell_quote(nginx.base_url .. "/credential?file_name=after.bin"))))

      assert.is_truthy(wait_for(function()
        return emu:stats().requests > 0
      end, 5))
      socket.sleep(0.2)
      local status, _, ping = nginx:get("/ping")
      local output = pipe:read("*a")
      pipe:close()
      local elapsed = socket.gettime() - started

      assert.are.equal(200, status)
      assert.is_true(ping < 0.05, ("ping took %.3f s"):format(ping))
      assert.are.equal("200", output)
      assert.is_true(elapsed >= 1, ("the call took %.3f s"):format(elapsed))
      assert.are.equal(2, emu:stats().requests)
    end)

    it("returns 502 with the error after the last attempt", function()
      emu:fault({ status = 503, times = 3 })
      local status, body = nginx:get("/credential?file_name=failed.bin")
      assert.are.equal(502, status)
      local answer = cjson.decode(body)
      assert.are.equal("503", answer.error_code)
      assert.are.equal("string", type(answer.request_id))
      assert.are.equal(3, emu:stats().requests)
      -- The error log line comes from tostring(err), so the error table got
      -- its metatable back after the copy from the thread VM.
      local log = nginx:error_log()
      assert.is_truthy(log:find("failed for failed.bin after 3 attempt(s): "
        .. "appcenter: http 503", 1, true), log)
    end)

    it("hides App Center's auth errors from the caller", function()
      emu:fault({ status = 401, body = cjson.encode{ error_code = "APIGW.0307",
        error_msg = "The token must be updated." } })
      local status, body = nginx:get("/credential?file_name=auth.bin")

      assert.are.equal(502, status)
      local answer = cjson.decode(body)
      assert.are.equal("upstream_auth_failed", answer.error_code)
      assert.is_nil(body:find("APIGW", 1, true))
      assert.is_truthy(nginx:error_log():find("APIGW.0307", 1, true))
    end)

    it("names the kind of an invalid response", function()
      emu:fault({ status = 200, body = "not json" })
      local status, body = nginx:get("/credential?file_name=bad.bin")

      assert.are.equal(502, status)
      assert.are.equal("invalid_response", cjson.decode(body).error_code)
    end)
  end)

  describe("with the example and no credentials", function()
    local nginx = example_server(EXAMPLE_CONF, { APPCENTER_TOKEN_FILE = false })

    it("names the handler's own variables", function()
      local status, body = nginx:get("/credential?file_name=a.bin")

      assert.are.equal(500, status, body)
      assert.are.equal("setup_failed", cjson.decode(body).error_code)
      local log = nginx:error_log()
      assert.is_truthy(log:find("missing credentials: set "
        .. "APPCENTER_TOKEN_FILE, APPCENTER_TOKEN, or APPCENTER_AK and "
        .. "APPCENTER_SK in the environment of nginx", 1, true), log)
      assert.is_nil(log:find("HUAWEICLOUD_SDK", 1, true), log)
    end)
  end)

  describe("with the example and APPCENTER_TIMEOUT_MS", function()
    local nginx = example_server(EXAMPLE_CONF, { APPCENTER_TIMEOUT_MS = "300" })

    it("returns 504 when every attempt times out", function()
      emu:fault({ delay_ms = 1000, times = 3 })
      local status, body = nginx:get("/credential?file_name=slow.bin")

      assert.are.equal(504, status, body)
      local answer = cjson.decode(body)
      assert.are.equal("timeout", answer.error_code)
      local waited = answer.error_msg:match("timed out after (%d+) milliseconds")
      assert.is_truthy(waited, answer.error_msg)
      assert.is_true(tonumber(waited) >= 300, answer.error_msg)
      assert.is_true(tonumber(waited) < 1000, answer.error_msg)
      assert.are.equal(3, emu:stats().requests)
    end)

    it("succeeds within the timeout", function()
      local status, body = nginx:get("/credential?file_name=fast.bin")

      assert.are.equal(200, status, body)
      assert.are.equal("string", type(cjson.decode(body).bucket_name))
    end)
  end)

  describe("with the example without its thread_pool line", function()
    local conf, removed = EXAMPLE_CONF:gsub(
      "\nthread_pool appcenter threads=%d+;", "\n")
    assert.are.equal(1, removed)
    local nginx = example_server(conf)

    it("answers JSON when the call raises", function()
      local status, body = nginx:get("/credential?file_name=replay-0042.bin")

      assert.are.equal(503, status, body)
      assert.are.equal("unavailable", cjson.decode(body).error_code)
      assert.is_truthy(nginx:error_log():find("is not configured", 1, true))
      assert.are.equal(0, emu:stats().requests)
    end)
  end)

  describe("misconfigured", function()
    local nginx

    -- Every location creates its client in the request, from the same
    -- settings as the example, and reports what create_credential raised.
    local CONF = [[
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;

worker_processes 1;
master_process on;
daemon off;
pid logs/nginx.pid;
error_log logs/error.log notice;

thread_pool appcenter threads=4;

env APPCENTER_ENDPOINT;
env APPCENTER_PROJECT_ID;
env APPCENTER_TOKEN;

events {
    worker_connections 64;
}

http {
    access_log off;
    client_body_temp_path logs/client_body;
    proxy_temp_path logs/proxy;
    fastcgi_temp_path logs/fastcgi;
    uwsgi_temp_path logs/uwsgi;
    scgi_temp_path logs/scgi;

    lua_package_path "${APPCENTER_ROOT}/lua/?.lua;${APPCENTER_ROOT}/lua/?/init.lua;;";
    lua_package_cpath "${APPCENTER_ROOT}/build/luajit/?.so;;";
    lua_shared_dict results 1m;
    lua_worker_thread_vm_pool_size 2;

    init_by_lua_block {
        function call_and_record(key, thread_pool)
            local appcenter = require("appcenter")
            local client = assert(appcenter.new({
                endpoint = os.getenv("APPCENTER_ENDPOINT"),
                project_id = os.getenv("APPCENTER_PROJECT_ID"),
                token = os.getenv("APPCENTER_TOKEN"),
                thread_pool = thread_pool,
            }))
            local ok, result, err = pcall(client.create_credential, client,
                key .. ".bin")
            local outcome
            if not ok then
                outcome = "raised: " .. tostring(result)
            elseif result then
                outcome = "ok: " .. result.bucket_name
            else
                outcome = "error: " .. tostring(err)
            end
            ngx.shared.results:set(key, outcome)
            return outcome
        end
    }

    init_worker_by_lua_block {
        call_and_record("init_worker")
    }

    server {
        listen 127.0.0.1:${APPCENTER_NGINX_PORT};

        location = /ping {
            return 200 "pong\n";
        }

        location = /missing-pool {
            content_by_lua_block {
                ngx.say(call_and_record("missing_pool", "not_configured"))
            }
        }

        location = /log-phase {
            content_by_lua_block {
                ngx.say("logged")
            }
            log_by_lua_block {
                call_and_record("log")
            }
        }

        location = /timer {
            content_by_lua_block {
                assert(ngx.timer.at(0, function()
                    call_and_record("timer")
                end))
                ngx.say("started")
            }
        }

        location = /start {
            content_by_lua_block {
                local client = assert(require("appcenter").new({
                    endpoint = os.getenv("APPCENTER_ENDPOINT"),
                    project_id = os.getenv("APPCENTER_PROJECT_ID"),
                    token = os.getenv("APPCENTER_TOKEN"),
                }))
                local ok, err = pcall(client.start, client, "start.bin",
                    function() end)
                ngx.say(ok and "started" or "raised: " .. tostring(err))
                ngx.say(tostring(client))
                local async_ok, async_err = pcall(client.create_credential_async,
                    client, "async.bin")
                client:close()
                ngx.say(tostring(client))
                ngx.say(async_ok and "started" or "raised: " .. tostring(async_err))
            }
        }

        location = /prepare-too-many {
            content_by_lua_block {
                local ok, err = pcall(require("appcenter.ngx").prepare_thread_vms, 3)
                ngx.say(ok and "prepared" or "raised: " .. tostring(err))
            }
        }

        location = /environment-credentials {
            content_by_lua_block {
                local client, err = require("appcenter").new({
                    endpoint = os.getenv("APPCENTER_ENDPOINT"),
                    project_id = os.getenv("APPCENTER_PROJECT_ID"),
                })
                ngx.say(client and "created" or tostring(err))
            }
        }

        location = /result {
            content_by_lua_block {
                local value = ngx.shared.results:get(ngx.var.arg_key)
                if not value then
                    return ngx.exit(404)
                end
                ngx.print(value)
            }
        }
    }
}
]]

    setup(function()
      nginx = start_nginx(CONF, {
        APPCENTER_ENDPOINT = emu.url,
        APPCENTER_PROJECT_ID = emu.project_id,
        APPCENTER_TOKEN = emu.token,
        -- No env line keeps these, so the workers do not see them.
        HUAWEICLOUD_SDK_AK = emu.ak,
        HUAWEICLOUD_SDK_SK = emu.sk,
      })
    end)

    teardown(function()
      if nginx then
        nginx:stop()
      end
    end)

    -- Polls /result until the key is set, because log handlers and timers
    -- run after the response.
    local function result_of(key)
      return wait_for(function()
        local status, body = nginx:get("/result?key=" .. key)
        return status == 200 and body or nil
      end, 5)
    end

    it("names the thread_pool line for an unknown pool", function()
      local status, body = nginx:get("/missing-pool")
      assert.are.equal(200, status)
      assert.is_truthy(body:find("raised: appcenter: nginx thread pool "
        .. "\"not_configured\" is not configured", 1, true), body)
      assert.is_truthy(body:find("`thread_pool not_configured threads=16;`",
        1, true), body)
    end)

    it("rejects a call from init_worker", function()
      local outcome = result_of("init_worker")
      assert.is_truthy(outcome)
      assert.is_truthy(outcome:find("raised: appcenter: create_credential "
        .. "cannot run in the nginx \"init_worker\" phase", 1, true), outcome)
      assert.is_truthy(outcome:find("ngx.timer.at(0, handler)", 1, true),
        outcome)
    end)

    it("rejects a call from the log phase", function()
      local status = nginx:get("/log-phase")
      assert.are.equal(200, status)
      local outcome = result_of("log")
      assert.is_truthy(outcome)
      assert.is_truthy(outcome:find("raised: appcenter: create_credential "
        .. "cannot run in the nginx \"log\" phase", 1, true), outcome)
      assert.is_truthy(outcome:find("content_by_lua*", 1, true), outcome)
    end)

    it("rejects start without a file position", function()
      local status, body = nginx:get("/start")
      assert.are.equal(200, status)
      assert.are.equal("raised: appcenter: start, poll and the async calls "
        .. "are not available inside nginx", body:match("^[^;]*"))
      local last = body:match("([^\n]+)\n$")
      assert.are.equal("raised: appcenter: start, poll and the async calls "
        .. "are not available inside nginx", last:match("^[^;]*"))
    end)

    it("prints a client without secrets", function()
      local _, body = nginx:get("/start")
      local lines = {}
      for line in body:gmatch("[^\n]+") do
        lines[#lines + 1] = line
      end

      assert.are.equal(("appcenter.client (%s, project %s)"):format(emu.url,
        emu.project_id), lines[2])
      assert.are.equal("appcenter.client (closed)", lines[3])
    end)

    it("names a VM pool smaller than requested", function()
      local status, body = nginx:get("/prepare-too-many")
      assert.are.equal(200, status)
      assert.is_truthy(body:find("raised: appcenter: ngx.run_worker_thread "
        .. "found no free Lua VM", 1, true), body)
      assert.is_truthy(body:find("or the pool has fewer VMs than the calls "
        .. "made at once; raise lua_worker_thread_vm_pool_size", 1, true), body)
    end)

    it("names the env lines when the workers lack the variables", function()
      local status, body = nginx:get("/environment-credentials")
      assert.are.equal(200, status)
      assert.is_truthy(body:find("appcenter: invalid_argument: missing "
        .. "credentials: ", 1, true), body)
      assert.is_truthy(body:find("(`env HUAWEICLOUD_SDK_AK;`", 1, true),
        body)
    end)

    it("works from a timer", function()
      local status = nginx:get("/timer")
      assert.are.equal(200, status)
      assert.are.equal("ok: appcenter-emulator-bucket", result_of("timer"))
    end)
  end)

  describe("with a small thread pool", function()
    local nginx

    -- With one pool thread, a call waits in the pool's queue while another
    -- one runs. /hold makes a call without a deadline, which keeps the
    -- thread busy for the emulator's delay. The other locations make a
    -- call with retry.deadline_ms = ?deadline_ms from rewrite_by_lua*,
    -- access_by_lua*, content_by_lua* and a timer, and report the outcome
    -- and the seconds it took.
    local CONF = [[
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;

worker_processes 1;
master_process on;
daemon off;
pid logs/nginx.pid;
error_log logs/error.log notice;

thread_pool appcenter threads=${THREADS};

env APPCENTER_ENDPOINT;
env APPCENTER_PROJECT_ID;
env APPCENTER_TOKEN;

events {
    worker_connections 64;
}

http {
    access_log off;
    client_body_temp_path logs/client_body;
    proxy_temp_path logs/proxy;
    fastcgi_temp_path logs/fastcgi;
    uwsgi_temp_path logs/uwsgi;
    scgi_temp_path logs/scgi;

    lua_package_path "${APPCENTER_ROOT}/lua/?.lua;${APPCENTER_ROOT}/lua/?/init.lua;;";
    lua_package_cpath "${APPCENTER_ROOT}/build/luajit/?.so;;";
    lua_shared_dict results 1m;

    init_by_lua_block {
        -- Returns "ok <seconds>" or "error <seconds> <err>" for one call.
        function timed_call(file_name, deadline_ms, timeout_ms)
            local appcenter = require("appcenter")
            local retry = false
            if deadline_ms then
                retry = { deadline_ms = deadline_ms }
            end
            local client = assert(appcenter.new({
                endpoint = os.getenv("APPCENTER_ENDPOINT"),
                project_id = os.getenv("APPCENTER_PROJECT_ID"),
                token = os.getenv("APPCENTER_TOKEN"),
                timeout_ms = timeout_ms,
                retry = retry,
            }))
            ngx.update_time()
            local started = ngx.now()
            local result, err = client:create_credential(file_name)
            ngx.update_time()
            local seconds = ngx.now() - started
            if result then
                return ("ok %.3f"):format(seconds)
            end
            return ("error %.3f %s"):format(seconds, tostring(err))
        end

        function deadline_arg()
            return tonumber(ngx.var.arg_deadline_ms)
        end
    }

    server {
        listen 127.0.0.1:${APPCENTER_NGINX_PORT};

        location = /hold {
            content_by_lua_block {
                ngx.say(timed_call("hold.bin"))
            }
        }

        location = /close-in-delay {
            content_by_lua_block {
                local appcenter = require("appcenter")
                local client = assert(appcenter.new({
                    endpoint = os.getenv("APPCENTER_ENDPOINT"),
                    project_id = os.getenv("APPCENTER_PROJECT_ID"),
                    token = os.getenv("APPCENTER_TOKEN"),
                    retry = { base_delay_ms = 5000, max_delay_ms = 5000,
                              random = function() return 0.99 end },
                }))
                ngx.thread.spawn(function()
                    ngx.sleep(0.3)
                    client:close()
                end)
                ngx.update_time()
                local started = ngx.now()
                local _, err = client:create_credential("close.bin")
                ngx.update_time()
                ngx.say(("%.3f %s"):format(ngx.now() - started, tostring(err)))
            }
        }

        location = /content {
            content_by_lua_block {
                ngx.say(timed_call("content.bin", deadline_arg(),
                    tonumber(ngx.var.arg_timeout_ms)))
            }
        }

        location = /rewrite {
            rewrite_by_lua_block {
                ngx.say(timed_call("rewrite.bin", deadline_arg()))
                ngx.exit(ngx.HTTP_OK)
            }
        }

        location = /access {
            access_by_lua_block {
                ngx.say(timed_call("access.bin", deadline_arg()))
                ngx.exit(ngx.HTTP_OK)
            }
        }

        location = /timer {
            content_by_lua_block {
                local key = ngx.var.arg_key
                local deadline_ms = deadline_arg()
                assert(ngx.timer.at(0, function()
                    ngx.shared.results:set(key, timed_call("timer.bin",
                        deadline_ms))
                end))
                ngx.say("started")
            }
        }

        # The usual OpenResty timeout: run the call in a light thread,
        # give up after 0.2 s and kill that thread.
        location = /kill-caller {
            content_by_lua_block {
                local thread = ngx.thread.spawn(timed_call, "killed.bin")
                ngx.sleep(0.2)
                ngx.say("killed: ", tostring(ngx.thread.kill(thread)))
            }
        }

        location = /result {
            content_by_lua_block {
                local value = ngx.shared.results:get(ngx.var.arg_key)
                if not value then
                    return ngx.exit(404)
                end
                ngx.print(value)
            }
        }
    }
}
]]

    local function start(threads)
      return start_nginx(CONF:gsub("%${THREADS}", tostring(threads)), {
        APPCENTER_ENDPOINT = emu.url,
        APPCENTER_PROJECT_ID = emu.project_id,
        APPCENTER_TOKEN = emu.token,
      })
    end

    -- Starts a GET of `path` with curl in the background and returns a
    -- function that waits for it and returns "STATUS BODY".
    local function start_get(path)
      local pipe = assert(io.popen(("curl --silent --max-time 20 "
        .. "--write-out ' %%{http_code}' %s"):format(
        shell_quote(nginx.base_url .. path))))
      return function()
        local output = pipe:read("*a")
        pipe:close()
        local body, status = output:match("^(.-) (%d+)$")
        return tonumber(status), body or output
      end
    end

    after_each(function()
      if nginx then
        nginx:stop()
        nginx = nil
      end
    end)

    before_each(function()
      emu:reset()
    end)

    -- Starts nginx with one pool thread and occupies it with /hold, a call
    -- that the emulator answers after `delay_ms`. Returns the function
    -- that waits for /hold.
    local function hold_the_thread(delay_ms)
      nginx = start(1)
      emu:config({ delay_ms = delay_ms })
      local finish_hold = start_get("/hold")
      assert.is_truthy(wait_for(function()
        return emu:stats().requests > 0
      end, 5))
      return finish_hold
    end

    it("cuts a retry delay short on close", function()
      nginx = start(1)
      emu:fault{ status = 503, body = '{"error_code":"WKS.0503","error_msg":"busy"}', times = 1 }

      -- The 503 gets a delay of 4.95 s, and another light thread closes
      -- the client 0.3 s into the call.
      local status, body = nginx:get("/close-in-delay")

      assert.are.equal(200, status)
      local seconds = tonumber(body:match("^(%S+)"))
      assert.is_truthy(seconds, body)
      assert.is_true(seconds < 2, body)
      assert.is_truthy(body:find("appcenter: cancelled: the client was closed", 1, true), body)
      assert.are.equal(1, emu:stats().requests)
    end)

    it("sends nothing after the deadline passed in the queue", function()
      local finish_hold = hold_the_thread(1000)

      local status, body = nginx:get("/content?deadline_ms=300")
      local hold_status, hold_body = finish_hold()

      assert.are.equal(200, status)
      assert.are.equal(200, hold_status)
      assert.is_truthy(hold_body:match("^ok "), hold_body)
      local seconds = tonumber(body:match("^error (%S+)"))
      assert.is_truthy(seconds, body)
      -- The call waited for /hold's thread (about 1 s) past its deadline.
      assert.is_true(seconds >= 0.3, body)
      assert.is_true(seconds < 1.5, body)
      assert.is_truthy(body:find("appcenter: timeout: waited", 1, true), body)
      assert.is_truthy(body:find('nginx thread pool "appcenter"', 1, true),
        body)
      assert.is_truthy(body:find("`thread_pool appcenter threads=N;`", 1,
        true), body)
      assert.is_truthy(body:find("retry.deadline_ms", 1, true), body)
      assert.is_truthy(body:find("(not retried: the deadline has passed)",
        1, true), body)
      assert.is_falsy(body:find("cut this attempt", 1, true), body)
      -- Only /hold reached the emulator.
      assert.are.equal(1, emu:stats().requests)
    end)

    it("blames a 1 ms deadline, not an idle pool", function()
      nginx = start(1)

      local status, body = nginx:get("/content?deadline_ms=1")

      assert.are.equal(200, status)
      local waited_ms = tonumber(body:match("waited (%d+) ms for a thread"))
      assert.is_truthy(waited_ms, body)
      -- A thread that takes 10 ms or more to start points at the pool.
      if waited_ms < 10 then
        assert.matches("so the attempt sent nothing; retry%.deadline_ms left only [01] ms for the "
          .. "attempt; raise retry%.deadline_ms", body)
        assert.is_falsy(body:find("threads=N", 1, true), body)
      else
        assert.is_truthy(body:find("threads=N", 1, true), body)
      end
      assert.are.equal(0, emu:stats().requests)
    end)

    it("names the pool when a short deadline waited for it", function()
      local finish_hold = hold_the_thread(1000)

      local status, body = nginx:get("/content?deadline_ms=5")
      finish_hold()

      assert.are.equal(200, status)
      assert.matches('appcenter: timeout: waited %d+ ms for a thread of nginx thread pool "appcenter", '
        .. "until after the deadline, so the attempt sent nothing; raise N in the "
        .. "`thread_pool appcenter threads=N;` line", body)
      assert.are.equal(1, emu:stats().requests)
    end)

    it("cuts a late attempt's timeout to the deadline", function()
      local finish_hold = hold_the_thread(1000)

      -- The attempt starts after about 1 s in the queue with about 0.5 s
      -- left. With the full 1.5 s as its timeout it would get the
      -- emulator's response after 1 s.
      local status, body = nginx:get("/content?deadline_ms=1500")
      finish_hold()

      assert.are.equal(200, status)
      local seconds = tonumber(body:match("^error (%S+)"))
      assert.is_truthy(seconds, body)
      assert.is_true(seconds >= 1.4, body)
      assert.is_true(seconds < 1.9, body)
      assert.is_truthy(body:find("appcenter: timeout: ", 1, true), body)
      assert.is_truthy(body:find("(not retried: the deadline has passed; "
        .. "retry.deadline_ms cut this attempt's timeout to the time left)",
        1, true), body)
      assert.are.equal(2, emu:stats().requests)
    end)

    it("names the queue wait that cut an attempt", function()
      local finish_hold = hold_the_thread(1200)

      -- timeout_ms fits in the deadline when the call starts, but after
      -- about 1.2 s in the queue only about 0.8 s are left.
      local status, body = nginx:get("/content?deadline_ms=2000&timeout_ms=1500")
      finish_hold()

      assert.are.equal(200, status)
      local waited = tonumber(body:match("%(the attempt first waited (%d+) "
        .. 'ms for a thread of nginx thread pool "appcenter", and '
        .. "retry%.deadline_ms counts that wait%)"))
      assert.is_truthy(waited, body)
      assert.is_true(waited >= 1000, body)
      assert.is_true(waited < 1600, body)
      assert.is_nil(body:find("the limits are timeout_ms", 1, true), body)
      assert.are.equal(2, emu:stats().requests)
    end)

    it("ends the request when the caller thread is killed", function()
      nginx = start(1)
      emu:config({ delay_ms = 1000 })

      local status, body, seconds = nginx:get("/kill-caller")

      assert.are.equal(200, status)
      assert.are.equal("killed: 1\n", body)
      -- nginx ends the request once its last light thread ends, and the
      -- keeper checks for a dead caller after each 1 s sleep.
      assert.is_true(seconds < 2.5, ("took %.3f s"):format(seconds))
    end)

    it("answers calls in flight during a reload", function()
      nginx = start(4)
      emu:config({ delay_ms = 1000 })
      local finishes = {}
      for _, path in ipairs({ "/content", "/rewrite", "/access" }) do
        finishes[path] = start_get(path)
      end
      local timer_status = nginx:get("/timer?key=reload")
      assert.are.equal(200, timer_status)
      assert.is_truthy(wait_for(function()
        return emu:stats().requests >= 4
      end, 5))

      -- SIGHUP: new workers start and the old one shuts down gracefully,
      -- which it may only do after its calls in flight have ended.
      assert(run_command(("kill -HUP %d"):format(nginx.pid)))

      for path, finish in pairs(finishes) do
        local status, body = finish()
        assert.are.equal(200, status, path .. ": " .. body)
        assert.is_truthy(body:match("^ok "), path .. ": " .. body)
      end
      -- The shared dictionary survives the reload, so the new worker
      -- serves what the old worker's timer stored.
      local timer_outcome = wait_for(function()
        local status, body = nginx:get("/result?key=reload")
        return status == 200 and body or nil
      end, 5)
      assert.is_truthy(timer_outcome, nginx:error_log())
      assert.is_truthy(timer_outcome:match("^ok "), timer_outcome)
      local log = nginx:error_log()
      assert.is_falsy(log:find("left in connection", 1, true), log)
    end)
  end)
end)
