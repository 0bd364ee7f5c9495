-- Soak test: many calls on one client, with the resident memory of this
-- process measured after a warm-up and at the end.
--
--   LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/lua5.4/?.so;;' \
--     lua5.4 bench/soak.lua [CALLS]
--
-- CALLS defaults to the SOAK_CALLS environment variable, else 100000. The
-- server is nginx on 127.0.0.1, started here with a configuration in a
-- temporary directory, returning one fixed credential for every request.
-- nginx is far faster than tools/emulator.py, so the client's own cost
-- dominates. nginx runs under `timeout`, so it stops by itself even if
-- this script dies. The check fails when a call fails or when VmRSS (from
-- /proc/self/status) grows by MAX_GROWTH_KIB or more between the end of
-- the warm-up and the end of the run.

local appcenter = require("appcenter")
local socket = require("socket")

local WARMUP_CALLS = 5000
local MAX_GROWTH_KIB = 1024
-- `timeout` stops nginx after this many seconds, also when this script
-- dies first.
local NGINX_MAX_SECONDS = 1800
local STARTUP_TIMEOUT_SECONDS = 10

local PROJECT_ID = "0123456789abcdef0123456789abcdef"
local TOKEN = "fake-token-for-soak"

local ANSWER = [[{"server_end_point":"obs.cn-north-4.myhuaweicloud.com",]]
  .. [["bucket_name":"appcenter-soak","object_path":"app-file/soak/soak.bin",]]
  .. [["policy":{"version":"1.1","statement":{"effect":"Allow",]]
  .. [["action":["obs:object:PutObject"],]]
  .. [["resource":["obs:*:*:object:appcenter-soak/app-file/soak/soak.bin"]}},]]
  .. [["credential":{"access":"FAKEACCESSKEYSOAK001",]]
  .. [["secret":"fake-secret-for-soak-000000000000000000",]]
  .. [["security_token":"fake-security-token-for-soak"}}]]

local NGINX_CONF = [[
daemon off;
master_process off;
worker_processes 1;
pid %s/nginx.pid;
error_log %s/error.log warn;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path %s/client_body;
  proxy_temp_path %s/proxy;
  fastcgi_temp_path %s/fastcgi;
  uwsgi_temp_path %s/uwsgi;
  scgi_temp_path %s/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
  server {
    listen 127.0.0.1:%d;
    location / {
      default_type application/json;
      add_header X-Request-Id soak-request-id;
      return 200 '%s';
    }
  }
}
]]

local function shell_quote(value)
  return "'" .. tostring(value):gsub("'", "'\\''") .. "'"
end

local function run(command)
  local status = os.execute(command)
  return status == 0 or status == true
end

local function read_file(path)
  local file = io.open(path, "r")
  if not file then
    return ""
  end
  local text = file:read("*a")
  file:close()
  return text
end

local function rss_kib()
  for line in io.lines("/proc/self/status") do
    local kib = line:match("^VmRSS:%s+(%d+)%s+kB")
    if kib then
      return tonumber(kib)
    end
  end
  error("no VmRSS line in /proc/self/status")
end

local function free_port()
  local server = assert(socket.bind("127.0.0.1", 0))
  local _, port = server:getsockname()
  server:close()
  return tonumber(port)
end

local function wait_for_port(port)
  local deadline = socket.gettime() + STARTUP_TIMEOUT_SECONDS
  while socket.gettime() < deadline do
    local connection = socket.connect("127.0.0.1", port)
    if connection then
      connection:close()
      return true
    end
    socket.sleep(0.05)
  end
  return false
end

-- Starts nginx and returns its URL and a function that stops it.
local function start_nginx()
  local dir = os.tmpname()
  os.remove(dir)
  assert(run("mkdir -m 700 " .. shell_quote(dir)), "cannot create " .. dir)
  local port = free_port()
  local conf = io.open(dir .. "/nginx.conf", "w")
  conf:write(NGINX_CONF:format(dir, dir, dir, dir, dir, dir, dir, port, ANSWER))
  conf:close()

  local pid_file = dir .. "/timeout.pid"
  assert(run(("timeout %d nginx -p %s -c nginx.conf -e error.log >/dev/null 2>&1 & echo $! > %s")
    :format(NGINX_MAX_SECONDS, shell_quote(dir), shell_quote(pid_file))))
  local pid = tonumber(read_file(pid_file):match("%d+"))

  local function stop()
    -- timeout passes SIGTERM on to nginx.
    if pid then
      run(("kill -TERM %d 2>/dev/null"):format(pid))
      pid = nil
    end
    run("rm -rf " .. shell_quote(dir))
  end

  if not wait_for_port(port) then
    local log = read_file(dir .. "/error.log")
    stop()
    error("nginx did not start on 127.0.0.1:" .. port .. ": " .. log)
  end
  return "http://127.0.0.1:" .. port, stop
end

local function call_many(client, count)
  local failures, first_error = 0, nil
  for _ = 1, count do
    local result, err = client:create_credential("soak.bin")
    if not result or result.credential.access ~= "FAKEACCESSKEYSOAK001" then
      failures = failures + 1
      first_error = first_error or tostring(err)
    end
  end
  return failures, first_error
end

local calls = tonumber(arg[1] or os.getenv("SOAK_CALLS") or 100000)
assert(calls and calls >= 1 and calls == math.floor(calls),
  "CALLS must be a whole number of at least 1")

local url, stop_nginx = start_nginx()
local ok, message = pcall(function()
  local client = assert(appcenter.new{ endpoint = url, project_id = PROJECT_ID, token = TOKEN })

  local failures, first_error = call_many(client, WARMUP_CALLS)
  collectgarbage("collect")
  local rss_before, lua_before = rss_kib(), collectgarbage("count")

  local started = socket.gettime()
  local run_failures, run_error = call_many(client, calls)
  local seconds = socket.gettime() - started
  failures = failures + run_failures
  first_error = first_error or run_error

  collectgarbage("collect")
  local rss_after, lua_after = rss_kib(), collectgarbage("count")
  client:close()

  local growth = rss_after - rss_before
  print(("soak: %s, %d calls after %d warm-up calls in %.1f s (%.0f calls/s)")
    :format(jit and jit.version or _VERSION, calls, WARMUP_CALLS, seconds, calls / seconds))
  print(("soak: VmRSS %d KiB after the warm-up, %d KiB at the end, growth %d KiB (limit %d KiB)")
    :format(rss_before, rss_after, growth, MAX_GROWTH_KIB))
  print(("soak: Lua heap %.0f KiB after the warm-up, %.0f KiB at the end")
    :format(lua_before, lua_after))
  if failures > 0 then
    error(("%d calls failed; first error: %s"):format(failures, first_error))
  end
  if growth >= MAX_GROWTH_KIB then
    error(("VmRSS grew by %d KiB, the limit is %d KiB"):format(growth, MAX_GROWTH_KIB))
  end
end)
stop_nginx()
if not ok then
  io.stderr:write("soak: FAILED: ", tostring(message), "\n")
  os.exit(1)
end
print("soak: passed")
