-- Lua wrapper around appcenter.core: retries with backoff, one deadline per
-- call and a retry budget per client. Credentials and project_id that the
-- options leave out are read from the environment variables and the
-- profile file of the official SDKs (appcenter/credentials.lua).
--
--   local appcenter = require("appcenter")
--   local client = appcenter.new{ region = "cn-north-4",
--     project_id = "...", token = "..." }
--   local result, meta_or_err = client:create_credential("replay.bin")
--
-- Options are those of appcenter.core (endpoint, region, project_id, token,
-- ak, sk, security_token, timeout_ms, connect_timeout_ms, ca_file,
-- verify_tls, proxy, allow_http, max_body_bytes) plus:
--
--   retry      table, or false for a single attempt:
--     max_attempts   3      attempts per call, the first one included
--     base_delay_ms  100    backoff before attempt n + 1 is uniform in
--     max_delay_ms   5000     [0, min(max_delay_ms, base_delay_ms * 2^(n-1))]
--     deadline_ms    60000  time for all attempts and delays of one call
--     budget         table, or false for no budget: the token bucket of
--                    appcenter/budget.lua (capacity 500, retry_cost 5,
--                    timeout_cost 10, success_refund 1)
--     random         function returning a number in [0, 1); math.random
--     on_retry       function(err, attempt, delay_ms), called before each
--                    retry, `attempt` being the attempt that just failed
--   now        function returning seconds; core.monotonic, or inside
--              nginx ngx.now
--   sleep      function(seconds); core.sleep, which blocks the thread, or
--              inside nginx ngx.sleep, which yields
--   thread_pool  inside nginx, the thread pool that runs each attempt;
--              "appcenter" (see appcenter/ngx.lua)
--
-- Only errors with `retryable = true` are retried (429, 500, 502, 503, 504,
-- network errors and timeouts as appcenter.core flags them). A Retry-After
-- header on 429 and 503 replaces the backoff, clamped to max_delay_ms. When
-- the header requests more time than the deadline leaves, the call returns
-- the error at once. No attempt starts after the deadline, and each attempt's
-- timeout is min(timeout_ms, time left).

local async = require("appcenter.async")
local core = require("appcenter.core")
local credentials = require("appcenter.credentials")
local nginx = require("appcenter.ngx")
local options = require("appcenter.options")
local retry = require("appcenter.retry")

local appcenter = {}

appcenter.VERSION = "0.1.0"

local Client = {}
Client.__index = Client

-- Raises at the caller of the client method `name` unless `value`, its
-- self, is a client or a table that delegates to one through __index, as
-- it is when the call used a colon.
local function check_client(value, name)
  if type(value) ~= "table" or value.core_client == nil then
    error(async.dot_call_message("client", name), 3)
  end
end


-- Returns an invalid_argument error with `message`, with the fields and
-- the metatable of appcenter.core's errors. core.new returns such an
-- error for an empty option table.
local function invalid_argument(message)
  local _, err = core.new({})
  err.message = message
  return err
end

-- Fills in the credentials and project_id that the caller did not pass,
-- from the environment and the profile file (see appcenter/credentials.lua
-- for the order), and returns the options for core.new, or nil and an
-- invalid_argument error.
local function resolve_credentials(core_opts)
  return credentials.resolve(core_opts)
end

-- Creates the client of appcenter.new, or of the one-shot call for
-- `caller` "create_credential". Returns the client, or nil and an error,
-- and raises for the errors that appcenter.new raises. With `checked`, a
-- table, sets checked.opts to the options as checked.
local function new_client(opts, caller, checked)
  if opts == appcenter then
    error(("appcenter: call %s with a dot: appcenter.%s(opts)")
      :format(caller, caller), 3)
  end
  local one_shot = caller == "create_credential"
  local message, plain = options.validate(opts, one_shot)
  if message then
    error(("appcenter.%s: %s"):format(caller, message), 3)
  end
  opts = plain
  if checked then
    checked.opts = plain
  end

  local core_opts, origins_or_err = resolve_credentials(
    options.core_options(opts))
  if not core_opts then
    return nil, origins_or_err
  end
  -- Inside nginx each attempt runs on a thread pool (appcenter/ngx.lua)
  -- and the retry delays yield to the event loop.
  local in_nginx = nginx.detect()
  local core_client, err
  if in_nginx then
    core_client, err = nginx.new_client(core_opts, opts.thread_pool)
  else
    core_client, err = core.new(core_opts)
  end
  if not core_client then
    return nil, credentials.add_origin(err, origins_or_err)
  end

  local clock = { now = core.monotonic, sleep = core.sleep }
  if in_nginx then
    clock = nginx.new_clock()
  end
  return setmetatable({
    core_client = core_client,
    policy = options.build_policy(opts, clock),
    wake = clock.wake,
  }, Client)
end

-- Creates a client that keeps its connection and its retry budget across
-- calls. Raises when an option has a wrong type, an out-of-range retry
-- setting or an unknown name. Returns nil and an invalid_argument error
-- when core.new rejects a value, such as a missing endpoint and region,
-- or when a credential source is invalid, such as a malformed profile
-- file.
function appcenter.new(opts)
  return new_client(opts, "new")
end

-- Returns the stop_error function of retry.run for a blocking call of
-- `client`, which ends the call with a `cancelled` error once the client
-- is closed, such as by on_retry.
local function stop_when_closed(client)
  return function(last_err)
    return async.closed_error(client, last_err)
  end
end

-- Requests an upload credential for `file_name`, retrying as configured.
-- Returns `result, meta` or `nil, err`, where meta.attempts,
-- meta.elapsed_ms and err.attempts cover all attempts of this call.
function Client:create_credential(file_name)
  check_client(self, "create_credential")
  async.check_client_open(self, 2)
  if type(file_name) ~= "string" then
    error(("bad argument #1 to 'create_credential' (string expected, got %s)")
      :format(type(file_name)), 2)
  end

  local core_client = self.core_client
  return retry.run(self.policy, function(timeout_ms, deadline_left_ms)
    local call_opts
    if timeout_ms then
      call_opts = { timeout_ms = timeout_ms }
    end
    -- Inside nginx an attempt may wait in the thread pool's queue, which
    -- the deadline covers (appcenter/ngx.lua). appcenter.core ignores the
    -- third argument.
    return core_client:create_credential(file_name, call_opts,
      deadline_left_ms)
  end, stop_when_closed(self))
end

-- Checks the options table of the upload method `name` before anything
-- is sent. Raises at stack level `level` (the caller of that method) for
-- a wrong type, an unknown name, a deadline_ms below 1 and inside nginx.
-- Returns a plain copy of the options (see options.validate_upload), and
-- an invalid_argument error for a value that appcenter.core's upload
-- rejects, and with `open_path` for a path that cannot be opened.
local function check_upload_options(client, name, opts, open_path, level)
  local message, plain = options.validate_upload(opts)
  if message then
    error(name .. ": " .. message, level)
  end
  opts = plain
  local deadline_ms = opts.deadline_ms
  if deadline_ms ~= nil and not (deadline_ms >= 1) then
    error(("bad option 'deadline_ms' to '%s' (number >= 1 expected, "
      .. "got %s)"):format(name, options.number_text(deadline_ms)), level)
  end
  if client.core_client.upload == nil then
    error("appcenter: " .. name .. " is not available inside nginx; hand "
      .. "the credential to the client that has the file", level)
  end

  message = options.check_upload_values(opts, open_path)
  if message then
    return opts, invalid_argument(message)
  end
  return opts
end

-- Checks the arguments of the upload method `name` and returns the
-- retry policy and the core client's options for it, or nil, nil and an
-- invalid_argument error for an option value that appcenter.core
-- rejects. Raises at the caller of that method.
local function prepare_upload(client, name, result, opts)
  if type(result) ~= "table" then
    error(("bad argument #1 to '%s' (table expected, got %s)")
      :format(name, type(result)), 3)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error(("bad argument #2 to '%s' (table expected, got %s)")
      :format(name, type(opts)), 3)
  end
  local err
  opts, err = check_upload_options(client, name, opts or {}, false, 4)
  if err then
    return nil, nil, err
  end
  local deadline_ms = opts.deadline_ms

  local policy = {}
  for setting, value in pairs(client.policy) do
    policy[setting] = value
  end
  if deadline_ms == math.huge then
    deadline_ms = nil
  end
  policy.deadline_ms = deadline_ms
  -- Under a deadline each attempt's timeout is this value cut to the time
  -- left, and appcenter.core accepts at most one day. An attempt without a
  -- timeout_ms of its own therefore stops after one day at the latest,
  -- and a retry may use the rest of a longer deadline.
  local timeout_ms = opts.timeout_ms
  if timeout_ms == nil or timeout_ms == 0 then
    timeout_ms = options.MAX_UPLOAD_TIMEOUT_MS
  end
  policy.timeout_ms = timeout_ms

  local call_opts = {}
  for option in pairs(options.UPLOAD_TYPES) do
    call_opts[option] = opts[option]
  end
  call_opts.deadline_ms = nil
  if call_opts.progress then
    call_opts.progress = async.mark_progress(client, call_opts.progress)
  end
  return policy, call_opts
end

-- Uploads the object that `result` of create_credential allows, with the
-- client's retries and retry budget. `opts` are those of the core
-- client's upload (path or body, content_type, content_md5, path_style,
-- progress, timeout_ms) plus deadline_ms. The client's timeout_ms and
-- retry.deadline_ms are sized for a small API call, so an upload has no
-- deadline unless opts.deadline_ms sets one, and opts.timeout_ms alone
-- limits each attempt. The core client still ends a transfer that moves
-- no byte for the client's timeout_ms. Every attempt reopens opts.path
-- and sends it from the start, and progress starts again from 0.
-- Returns `meta` or `nil, err`, where meta.attempts, meta.elapsed_ms and
-- err.attempts cover all attempts of this call.
function Client:upload(result, opts)
  check_client(self, "upload")
  async.check_client_open(self, 2)
  local policy, call_opts, invalid_err = prepare_upload(self, "upload",
    result, opts)
  if not policy then
    return nil, invalid_err
  end
  local core_client = self.core_client
  local timeout_ms = call_opts.timeout_ms
  -- retry.run expects `result, meta` from each attempt, and the core
  -- upload returns its meta alone.
  local meta, err = retry.run(policy, function(attempt_timeout_ms)
    call_opts.timeout_ms = attempt_timeout_ms or timeout_ms
    local attempt_meta, attempt_err = core_client:upload(result, call_opts)
    if attempt_meta then
      return attempt_meta, attempt_meta
    end
    return nil, attempt_err
  end, stop_when_closed(self))
  if not meta then
    return nil, err
  end
  return meta
end

-- Requests a credential for `file_name`, then uploads opts.path or
-- opts.body with it as `upload` does. Returns the upload's meta plus the
-- credential's bucket_name and object_path, or `nil, err` from the step
-- that failed. Options that the upload would reject, and a path that
-- cannot be opened, fail before the credential request.
function Client:create_and_upload(file_name, opts)
  check_client(self, "create_and_upload")
  async.check_client_open(self, 2)
  if type(file_name) ~= "string" then
    error(("bad argument #1 to 'create_and_upload' (string expected, got %s)")
      :format(type(file_name)), 2)
  end
  if type(opts) ~= "table" then
    error(("bad argument #2 to 'create_and_upload' (table expected, got %s)")
      :format(type(opts)), 2)
  end
  local plain, err = check_upload_options(self, "create_and_upload", opts,
    true, 3)
  if err then
    return nil, err
  end

  local result
  result, err = self:create_credential(file_name)
  if not result then
    return nil, err
  end
  local meta
  meta, err = self:upload(result, plain)
  if not meta then
    return nil, err
  end
  meta.bucket_name = result.bucket_name
  meta.object_path = result.object_path
  return meta
end

-- Closes the connection. Requests started with `start` that have not
-- ended get their callbacks called with a `cancelled` error first.
-- Garbage collection closes the connection too, without callbacks.
function Client:close()
  check_client(self, "close")
  -- Inside nginx, a call that waits before its next attempt wakes once
  -- this light thread yields, finds the client closed and ends with a
  -- cancelled error. async.close raises at the level of this function's
  -- caller, so it is called last.
  if self.wake then
    self.wake()
  end
  async.close(self)
end

-- Returns "appcenter.client (ENDPOINT, project ID)", or
-- "appcenter.client (closed)", from the core client's text, which
-- contains no secret.
function Client:__tostring()
  return (tostring(self.core_client):gsub("^appcenter%.core%.client",
    "appcenter.client"))
end

-- Non-blocking requests and the coroutine helper, with the same retries,
-- deadline and retry budget as create_credential: see appcenter/async.lua.
-- Each method checks the client and then tail-calls the function of
-- async.lua, so that the errors which that function raises at level 2
-- point to the caller of the method.
for name, run in pairs({
  start = async.start,
  poll = async.poll,
  perform = async.perform,
  pending = async.pending,
  sockets = async.sockets,
  timeout = async.timeout,
  create_credential_async = async.await,
}) do
  Client[name] = function(self, ...)
    check_client(self, name)
    return run(self, ...)
  end
end

-- Starts the upload of `upload` without blocking, with the same options
-- and retries, and returns a request like start's. `callback(meta)` or
-- `callback(nil, err)` runs once, from poll, cancel or close. Returns
-- nil and an invalid_argument error, without calling the callback, for
-- input that the core client rejects, such as a missing file.
function Client:start_upload(result, opts, callback)
  check_client(self, "start_upload")
  local policy, call_opts, invalid_err = prepare_upload(self,
    "start_upload", result, opts)
  if type(callback) ~= "function" then
    error(("bad argument #3 to 'start_upload' (function expected, got %s)")
      :format(type(callback)), 2)
  end
  if not policy then
    return nil, invalid_err
  end
  return async.start_upload(self, result, call_opts, policy, callback)
end

-- Uploads from inside a coroutine: start_upload, then yields until poll
-- ends the upload, and returns `meta` or `nil, err` like upload.
function Client:upload_async(result, opts)
  check_client(self, "upload_async")
  local policy, call_opts, invalid_err = prepare_upload(self,
    "upload_async", result, opts)
  return async.await_upload(self, result, call_opts, policy, invalid_err)
end

-- Requests one credential with a client of its own, which is closed
-- afterwards, so the retry budget starts full on every call.
-- `opts.file_name` is the file name. Like core.create_credential, returns
-- nil and an invalid_argument error when it is missing, and raises when
-- it is not a string.
function appcenter.create_credential(opts)
  local checked = {}
  local client, err = new_client(opts, "create_credential", checked)
  if not client then
    return nil, err
  end
  local file_name = checked.opts.file_name
  if file_name == nil then
    client:close()
    return nil, invalid_argument("missing file_name: pass the complete "
      .. 'file name, e.g. "setup.exe"')
  end
  local result, info = client:create_credential(file_name)
  client:close()
  return result, info
end

return appcenter
