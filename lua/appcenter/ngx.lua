-- nginx integration (lua-nginx-module, http subsystem): runs each attempt
-- of appcenter.core, which blocks in libcurl, on an nginx thread pool with
-- ngx.run_worker_thread, so the worker's event loop keeps serving other
-- requests while libcurl waits for App Center. The wrapper
-- (appcenter/init.lua) uses this module when detect() returns true.
--
-- The file has two halves, one for each Lua VM involved:
--
--   event-loop side  new_client() returns a stand-in for the core client
--                    whose create_credential posts the attempt to the pool
--                    and yields; clock supplies ngx.now and ngx.sleep.
--   thread side      ngx.run_worker_thread requires this module in a Lua VM
--                    of its own and calls run_in_thread() on a pool thread.
--                    Each such VM keeps its core clients, so connections
--                    are reused across calls.
--
-- ngx.run_worker_thread copies arguments and return values between the two
-- VMs. Only nil (at the top level), booleans, numbers, strings, light
-- userdata and tables of those survive. Metatables are dropped, and a
-- function or full userdata makes the whole call fail. An error raised in
-- the thread VM arrives as its string, and a non-string error arrives as an
-- empty string. So run_in_thread never raises and returns plain tables,
-- and the event-loop side gives error tables their metatable back.
--
-- An attempt may wait in the pool's queue before a thread takes it. Both
-- sides share one process, so appcenter.core.monotonic (CLOCK_MONOTONIC)
-- is a common clock, and the event-loop side passes the call's deadline on
-- that clock. When the attempt starts, the thread side cuts its timeout
-- to the time left, or sends nothing once the deadline has passed.
-- Without a deadline the wait in the queue does not count against
-- timeout_ms.

local core = require("appcenter.core")
local retry = require("appcenter.retry")

local glue = {}

-- Thread pool used when the thread_pool option is not set. nginx.conf needs
-- a matching `thread_pool appcenter threads=16;` line in its main context.
glue.DEFAULT_THREAD_POOL = "appcenter"

-- Module and function that ngx.run_worker_thread requires and calls in the
-- thread VM.
local THREAD_MODULE = "appcenter.ngx"
local THREAD_FUNCTION = "run_in_thread"

-- Core clients kept by one thread VM. Each one contains a libcurl handle
-- and its connection, so a VM that serves many different option sets (say,
-- a token that rotates) closes the least recently used one past this count.
local MAX_CLIENTS_PER_VM = 8

-- Phases that cannot yield, so ngx.run_worker_thread and ngx.sleep are
-- disabled there, with what to do instead.
local EARLIER_PHASE = "call it in rewrite_by_lua*, access_by_lua* or "
  .. "content_by_lua* and keep the result in ngx.ctx"
local TIMER = "start a timer with ngx.timer.at(0, handler) and call it in "
  .. "the handler"
local PHASE_ADVICE = {
  init = "call it in a request handler or a timer; creating the client in "
    .. "init_by_lua* is fine",
  init_worker = TIMER,
  exit_worker = "call it while the worker still serves requests",
  set = "use rewrite_by_lua* or access_by_lua* and set the variable with "
    .. "ngx.var",
  header_filter = EARLIER_PHASE,
  body_filter = EARLIER_PHASE,
  log = EARLIER_PHASE .. ", or " .. TIMER,
  balancer = EARLIER_PHASE,
  ssl_session_store = TIMER,
}


-- ---------------------------------------------------------------------
-- Thread side
-- ---------------------------------------------------------------------

-- Core clients of this VM by cache key, each {client = ..., used = n}.
local thread_clients = {}
local thread_client_count = 0
local thread_use_counter = 0

-- Builds a key that identifies an option table: every name and value,
-- sorted, with lengths so that no two different tables share a key. The
-- key contains the secrets, so it never leaves this VM.
local function cache_key(core_opts)
  local names = {}
  for name in pairs(core_opts) do
    names[#names + 1] = name
  end
  table.sort(names)

  local parts = {}
  for _, name in ipairs(names) do
    local value = tostring(core_opts[name])
    parts[#parts + 1] = ("%s=%s%d:%s"):format(name, type(core_opts[name]),
      #value, value)
  end
  return table.concat(parts, ";")
end

local function evict_least_recently_used()
  local oldest_key, oldest
  for key, entry in pairs(thread_clients) do
    if not oldest or entry.used < oldest.used then
      oldest_key, oldest = key, entry
    end
  end
  thread_clients[oldest_key] = nil
  thread_client_count = thread_client_count - 1
  oldest.client:close()
end

-- Returns this VM's core client for `core_opts`, creating it on first use,
-- or nil and an error table when core.new rejects a value.
local function cached_client(key, core_opts)
  thread_use_counter = thread_use_counter + 1
  local entry = thread_clients[key]
  if entry then
    entry.used = thread_use_counter
    return entry.client
  end

  local client, err = core.new(core_opts)
  if not client then
    return nil, err
  end
  if thread_client_count >= MAX_CLIENTS_PER_VM then
    evict_least_recently_used()
  end
  thread_clients[key] = { client = client, used = thread_use_counter }
  thread_client_count = thread_client_count + 1
  return client
end

local function forget_client(key)
  local entry = thread_clients[key]
  if entry then
    thread_clients[key] = nil
    thread_client_count = thread_client_count - 1
    pcall(entry.client.close, entry.client)
  end
end

local function perform_attempt(key, core_opts, file_name, timeout_ms)
  local client, err = cached_client(key, core_opts)
  if not client then
    return "error", setmetatable(err, nil)
  end

  local call_opts
  if timeout_ms then
    call_opts = { timeout_ms = timeout_ms }
  end
  local result, info = client:create_credential(file_name, call_opts)
  if result == nil then
    return "error", setmetatable(info, nil)
  end
  return "ok", result, info
end

-- Does nothing: requiring this module, which prepare_thread_vms makes
-- nginx do, already loaded appcenter.core into the thread VM.
function glue.prepare_in_thread()
  return true
end

-- Runs one attempt with this VM's client for `core_opts`. Called by
-- ngx.run_worker_thread on a pool thread; never raises. `deadline`, when
-- not nil, is the call's deadline in seconds of core.monotonic, and the
-- attempt's timeout is timeout_ms cut to the time left before it.
-- Returns one of
--   "ok", result, meta
--   "error", err, nil, started, cut
--                       err without its metatable; the attempt started at
--                       `started` (core.monotonic), and `cut` is true when
--                       the deadline cut its timeout
--   "raised", message   appcenter.core raised, e.g. out of memory
--   "deadline_passed", started
--                       the attempt started at `started` after the
--                       deadline and sent nothing
function glue.run_in_thread(core_opts, file_name, timeout_ms, deadline)
  local started = core.monotonic()
  local cut = false
  if deadline then
    local left_ms = math.floor((deadline - started) * 1000)
    if left_ms < 1 then
      return "deadline_passed", started
    end
    cut = timeout_ms == nil or left_ms < timeout_ms
    timeout_ms = math.min(timeout_ms or left_ms, left_ms)
  end

  local key_ok, key = pcall(cache_key, core_opts)
  if not key_ok then
    return "raised", tostring(key)
  end

  local ok, status, first, second = pcall(perform_attempt, key, core_opts,
    file_name, timeout_ms)
  if not ok then
    -- The client may be left in any state, so the next call gets a new one.
    forget_client(key)
    return "raised", tostring(status)
  end
  return status, first, second, started, cut
end


-- ---------------------------------------------------------------------
-- Event-loop side
-- ---------------------------------------------------------------------

-- Returns true inside an nginx worker's main Lua VM, where calls must go
-- through the thread pool, and false elsewhere. The thread VMs of
-- ngx.run_worker_thread count as elsewhere, because a blocking call is what
-- they are for; they have a partial `ngx` table without ngx.get_phase.
-- Raises when nginx offers no ngx.run_worker_thread, because a blocking call
-- would stall the event loop.
function glue.detect()
  local ngx = rawget(_G, "ngx")
  if type(ngx) ~= "table" or type(ngx.get_phase) ~= "function" then
    return false
  end

  local subsystem = type(ngx.config) == "table" and ngx.config.subsystem
  if subsystem ~= "http" or type(ngx.run_worker_thread) ~= "function" then
    error(("appcenter: nginx's %s subsystem has no ngx.run_worker_thread, "
      .. "and a blocking call would stall the event loop; use the http "
      .. "subsystem of an nginx built with thread support and "
      .. "lua-nginx-module 0.10.23 or later")
      :format(tostring(subsystem or "unknown")), 0)
  end
  return true
end

-- Clock and sleep for the retry policy. ngx.sleep yields to the event loop.
-- NOTE: ngx.now is wall-clock time, so a step of the system clock during a
-- call moves its deadline by the same amount.
glue.clock = {
  now = function()
    ngx.update_time()
    return ngx.now()
  end,
  sleep = function(seconds)
    ngx.sleep(seconds)
  end,
}

-- Returns a clock for one client: glue.clock's now, a sleep that waits on
-- a semaphore of lua-resty-core, and wake(), which ends every sleep of the
-- client's calls at once. close() calls wake(), where ngx.sleep would make
-- it wait out the retry delay.
function glue.new_clock()
  local semaphore = require("ngx.semaphore")
  local sema = semaphore.new()
  return {
    now = glue.clock.now,
    sleep = function(seconds)
      -- Returns nil and "timeout" after `seconds`, unless woken. Any
      -- other error, such as a phase that cannot wait, would turn the
      -- delay into none.
      local woken, err = sema:wait(seconds)
      if not woken and err ~= "timeout" then
        error("appcenter: cannot wait for the retry delay: " .. tostring(err),
          0)
      end
    end,
    wake = function()
      -- A negative count is the number of waiting light threads.
      local waiting = -sema:count()
      if waiting > 0 then
        sema:post(waiting)
      end
    end,
  }
end

-- Metatable of appcenter.core's error tables in this VM, found through an
-- error that core.new returns for an empty option table.
local error_metatable

local function restore_error_metatable(err)
  if not error_metatable then
    local _, probe = core.new({})
    error_metatable = getmetatable(probe)
  end
  return setmetatable(err, error_metatable)
end

local function check_phase(function_name)
  local phase = ngx.get_phase()
  local advice = PHASE_ADVICE[phase]
  if advice then
    error(("appcenter: %s cannot run in the nginx %q phase, which cannot "
      .. "yield to the thread pool; %s"):format(function_name, phase, advice),
      0)
  end
end

-- Raises for a failure of ngx.run_worker_thread itself, which means the
-- attempt never ran.
local function raise_thread_failure(message, pool)
  message = tostring(message)
  if message:find("thread[ _]pool.*not found") then
    error(("appcenter: nginx thread pool %q is not configured; add "
      .. "`thread_pool %s threads=16;` to the main context of nginx.conf "
      .. "(outside the http block), or set the thread_pool option to a "
      .. "configured pool"):format(pool, pool), 0)
  end
  if message:find("no available Lua vm", 1, true) then
    error("appcenter: ngx.run_worker_thread found no free Lua VM: every "
      .. "VM of its pool is busy, or the pool has fewer VMs than the calls "
      .. "made at once; raise lua_worker_thread_vm_pool_size in the http "
      .. "block above the number of concurrent calls per worker (and above "
      .. "the count passed to prepare_thread_vms)", 0)
  end
  error(("appcenter: ngx.run_worker_thread failed: %s; check that "
    .. "lua_package_path and lua_package_cpath reach the appcenter module "
    .. "and appcenter.core"):format(message), 0)
end

-- Makes nginx create `count` thread VMs with appcenter.core loaded, so that
-- later bursts of calls find them ready. nginx creates a thread VM on the
-- event loop whenever more calls run at once than ever before in the
-- worker, which stalls every request of the worker for a few milliseconds
-- per VM. Call it from a timer that init_worker_by_lua* starts:
--
--   ngx.timer.at(0, function()
--     require("appcenter.ngx").prepare_thread_vms(32)
--   end)
--
-- Returns the number of VMs that ran; raises like create_credential when
-- the phase cannot yield or the pool is missing.
function glue.prepare_thread_vms(count, thread_pool)
  if type(count) ~= "number" or count < 1 or count % 1 ~= 0 then
    error(("bad argument #1 to 'prepare_thread_vms' (positive integer "
      .. "expected, got %s)"):format(tostring(count)), 2)
  end
  thread_pool = thread_pool or glue.DEFAULT_THREAD_POOL
  check_phase("prepare_thread_vms")

  local function prepare_one()
    return ngx.run_worker_thread(thread_pool, THREAD_MODULE,
      "prepare_in_thread")
  end

  -- All calls are posted before any of them ends, so each one needs a VM
  -- of its own.
  local threads = {}
  for i = 1, count do
    threads[i] = ngx.thread.spawn(prepare_one)
  end

  local prepared, failure = 0, nil
  for i = 1, count do
    local finished, ok, message = ngx.thread.wait(threads[i])
    if finished and ok then
      prepared = prepared + 1
    else
      failure = failure or (finished and message or ok)
    end
  end
  if failure then
    raise_thread_failure(failure, thread_pool)
  end
  ngx.log(ngx.NOTICE, "appcenter: prepared ", prepared,
    " thread VMs for thread pool \"", thread_pool, "\"")
  return prepared
end

local ThreadClient = {}
ThreadClient.__index = ThreadClient

-- Creates the event loop's stand-in for a core client. core.new checks the
-- option values here as well, so a bad value returns nil and the error
-- when the client is created, as it does outside nginx. The options table
-- travels to the thread VM with every call.
function glue.new_client(core_opts, thread_pool)
  local probe, err = core.new(core_opts)
  if not probe then
    return nil, err
  end
  local description = tostring(probe)
  probe:close()

  return setmetatable({
    description = description,
    core_opts = core_opts,
    thread_pool = thread_pool or glue.DEFAULT_THREAD_POOL,
    open = true,
  }, ThreadClient)
end

-- A wait for a thread shorter than this is no sign of a busy pool:
-- handing an attempt to a free thread took 2 ms or less in the specs.
local SHORT_WAIT_MS = 10

-- Returns the timeout error of an attempt that waited in the queue of
-- thread pool `pool` from `posted` until `started` (core.monotonic), which
-- is after the call's deadline, `left_ms` after posting. The fields are
-- those of appcenter.core's timeout errors.
local function queued_past_deadline_error(pool, posted, started, left_ms)
  local waited_ms = math.floor((started - posted) * 1000 + 0.5)
  local message = ("waited %d ms for a thread of nginx thread pool %q, "
    .. "until after the deadline, so the attempt sent nothing; ")
    :format(waited_ms, pool)
  if waited_ms < SHORT_WAIT_MS then
    -- The pool was not busy: the deadline left too little time.
    message = message .. ("retry.deadline_ms left only %d ms for the "
      .. "attempt; raise retry.deadline_ms"):format(math.max(0,
      math.floor(left_ms)))
  else
    message = message .. ("raise N in the `thread_pool %s threads=N;` line "
      .. "of nginx.conf, or raise retry.deadline_ms"):format(pool)
  end
  local err = restore_error_metatable({
    kind = "timeout",
    code = "timeout",
    message = message,
    retryable = true,
    attempts = 1,
  })
  retry.unsent[err] = true
  return err
end

-- Interval in seconds at which the keeper thread checks that its attempt
-- is still running. The keeper is killed as soon as the attempt ends, so
-- the interval only bounds how long a keeper that was not killed lives on.
local KEEPER_SLEEP_SECONDS = 1

-- Starts a light thread that sleeps with ngx.sleep until `running[1]` is
-- false or the coroutine `caller` is dead. During a graceful shutdown
-- (reload or quit), an old worker exits once it has no timer left, and
-- ngx.run_worker_thread sets none. The keeper's sleep timer keeps the
-- worker, and the request whose attempt is on the pool, alive until the
-- attempt ends. A caller killed with ngx.thread.kill never ends its
-- attempt, so the keeper also checks the caller: nginx keeps a request
-- open while any of its light threads runs. Returns the light thread, or
-- nil in a phase where ngx.thread.spawn raises.
local function start_keeper(running, caller)
  local spawned, keeper = pcall(ngx.thread.spawn, function()
    while running[1] and coroutine.status(caller) ~= "dead" do
      ngx.sleep(KEEPER_SLEEP_SECONDS)
    end
  end)
  if spawned then
    return keeper
  end
  return nil
end

-- Runs one attempt on the thread pool and yields until it ends. Returns
-- what appcenter.core's create_credential returns. `deadline_left_ms`,
-- optional, is the time left before the call's deadline, which also
-- covers the attempt's wait in the pool's queue: an attempt that starts
-- after the deadline returns a timeout error without sending anything.
-- Raises in a phase that cannot yield, when the thread pool is missing
-- and when the attempt raised in the thread VM.
function ThreadClient:create_credential(file_name, call_opts,
    deadline_left_ms)
  if not self.open then
    error("appcenter.core: the client is closed", 2)
  end
  check_phase("create_credential")

  local timeout_ms = call_opts and call_opts.timeout_ms
  local posted = core.monotonic()
  local deadline
  if deadline_left_ms then
    deadline = posted + deadline_left_ms / 1000
  end

  local running = { true }
  local keeper = start_keeper(running, coroutine.running())
  -- pcall, so that the keeper ends whatever ngx.run_worker_thread does.
  local called, ok, status, first, second, started, cut = pcall(
    ngx.run_worker_thread, self.thread_pool, THREAD_MODULE, THREAD_FUNCTION,
    self.core_opts, file_name, timeout_ms, deadline)
  running[1] = false
  if keeper then
    ngx.thread.kill(keeper)
  end
  if not called then
    error(ok, 0)
  end
  if not ok then
    raise_thread_failure(status, self.thread_pool)
  end

  if status == "ok" then
    return first, second
  elseif status == "error" then
    if cut and first.kind == "timeout" then
      -- The core's hint names timeout_ms, but the wait in the queue used
      -- up the time.
      local message = retry.drop_timeout_hint(first.message)
      first.message = ("%s (the attempt first waited %d ms for a thread of "
        .. "nginx thread pool %q, and retry.deadline_ms counts that wait)")
        :format(message, math.floor((started - posted) * 1000 + 0.5),
          self.thread_pool)
    end
    return nil, restore_error_metatable(first)
  elseif status == "deadline_passed" then
    return nil, queued_past_deadline_error(self.thread_pool, posted, first,
      deadline_left_ms)
  end
  error(first, 0)
end

-- Marks the client closed. The thread VMs keep their core clients and
-- connections for other wrapper clients with the same options.
function ThreadClient:close()
  self.open = false
end

-- Returns the text of a core client with the same options.
function ThreadClient:__tostring()
  if not self.open then
    return "appcenter.core.client (closed)"
  end
  return self.description
end

-- The non-blocking interface of appcenter.core (libcurl's multi handle)
-- would need an event loop of its own. Inside nginx, create_credential
-- already yields to nginx's. The error has no position, because the
-- caller is the wrapper and not the code that called start or poll.
local function unsupported()
  error("appcenter: start, poll and the async calls are not available "
    .. "inside nginx; call create_credential, which yields to the event "
    .. "loop while the thread pool waits for App Center", 0)
end

for _, name in ipairs({ "start", "poll", "pending", "sockets", "timeout" }) do
  ThreadClient[name] = unsupported
end

return glue
