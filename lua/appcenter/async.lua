-- Non-blocking requests of the wrapper client, for game loops and event
-- loops: start, start_upload, poll, cancel, close and coroutine helpers,
-- with the same retries, deadline and retry budget as the blocking
-- create_credential and upload.
--
-- Each attempt is one request of appcenter.core's multi interface. When
-- the retry policy (appcenter/retry.lua) retries a failed attempt, the
-- request waits on a timer kept here, and poll starts the attempts whose
-- timer is due. Nothing sleeps outside poll, and poll waits at most its
-- timeout in total. The callbacks that poll runs take time on top.
--
-- Callbacks run inside poll, perform, cancel and close, never inside
-- start. Each started request gets exactly one callback call: its
-- outcome, or a `cancelled` error from cancel or close. An error raised
-- by a callback does not stop the others: the function that ran the
-- callbacks raises the first such error after it has finished its work.

local core = require("appcenter.core")
local retry = require("appcenter.retry")

local async = {}

-- The range that appcenter.core accepts for poll's timeout: one day.
local MAX_POLL_TIMEOUT_MS = 86400000

local unpack = table.unpack or unpack
local getmetatable = getmetatable

-- table.pack, which Lua 5.1 lacks.
local function pack(...)
  return { n = select("#", ...), ... }
end

local Request = {}
Request.__index = Request

-- Returns the error message for the method `name` of `object` ("client"
-- or "request") called with a dot, as in client.name(...), which passes
-- the first argument in place of the object.
function async.dot_call_message(object, name)
  return ("appcenter: call %s with a colon: %s:%s(...)")
    :format(name, object, name)
end

-- Raises at the caller of the request method `name` unless `value`, its
-- self, is a request or a table that delegates to one through __index.
local function check_request(value, name)
  if type(value) ~= "table" or value.async_state == nil then
    error(async.dot_call_message("request", name), 3)
  end
end


-- Returns the non-blocking state of a wrapper client, created on first
-- use: the requests that wait for a retry timer or for the retry policy,
-- the count of requests in flight and the first callback error of the
-- running poll, cancel or close.
local function state_of(client)
  local state = client.async_state
  if not state then
    state = {
      waiting = {},       -- set of requests whose retry timer runs
      -- Set of requests whose attempt has ended and whose retry policy,
      -- on_retry included, is deciding what follows.
      between_attempts = {},
      in_flight = 0,      -- started requests whose callback has not run
      -- Set of requests whose core attempt runs, or ended without
      -- on_attempt_done having handled its outcome yet.
      running = {},
      -- Requests of `running` whose attempt ended but whose outcome a
      -- memory error kept on_attempt_done from handling.
      unhandled = 0,
      completed = 0,      -- callbacks run since the current poll began
      sequence = 0,       -- orders retries that are due at the same time
      polling = false,
      sleeping = false,   -- poll waits in the sleep option
      closed = false,
      first_error = nil,  -- { value = error } of the first callback error
      -- core.fork_generation() when the state was made or last checked.
      fork_generation = core.fork_generation(),
    }
    client.async_state = state
  end
  return state
end

local function record_error(state, value)
  if not state.first_error then
    state.first_error = { value = value }
  end
end

-- Runs fn(...) and raises the first callback error recorded meanwhile,
-- after fn has returned. Errors recorded before the call belong to an
-- enclosing poll, cancel or close and are kept for it.
local function run_collecting_errors(state, fn, ...)
  local outer = state.first_error
  state.first_error = nil
  local outcome = pack(pcall(fn, ...))
  local inner = state.first_error
  state.first_error = outer

  if not outcome[1] then
    error(outcome[2], 0)
  end
  if inner then
    error(inner.value, 0)
  end
  return unpack(outcome, 2, outcome.n)
end


-- Builds a `cancelled` error with `message` after `attempts` attempts, in
-- the shape of the core's `cancelled` errors and with the metatable of
-- `last_err`, an error of the core.
local function new_cancelled_error(message, attempts, last_err)
  return setmetatable({
    kind = "cancelled",
    code = "cancelled",
    message = message,
    retryable = false,
    attempts = attempts,
  }, getmetatable(last_err))
end

-- Builds the error for a request cancelled between two attempts.
local function cancelled_error(request, message)
  return new_cancelled_error(message, request.call.attempt, request.last_err)
end

-- Returns the `cancelled` error that ends a blocking call of `client`
-- before its next attempt once the client is closed, or nil while it is
-- open. `last_err` is the error of the attempt that failed last.
function async.closed_error(client, last_err)
  local state = client.async_state
  if not (state and state.closed) then
    return nil
  end
  return new_cancelled_error("the client was closed", last_err.attempts,
    last_err)
end

-- Marks the outcome of the request's attempt as handled: it no longer
-- needs on_attempt_done.
local function settle(request)
  local state = request.async_state
  if request.attempt_ended then
    request.attempt_ended = false
    request.ended_result = false
    request.ended_info = false
    state.unhandled = state.unhandled - 1
  end
  state.running[request] = nil
end

-- Ends a request and calls its callback. A callback error is recorded for
-- the enclosing poll, cancel or close to raise.
local function finish(request, result, info)
  settle(request)
  local state = request.async_state
  if result == nil and info.kind == "cancelled" then
    request.stage = "cancelled"
  else
    request.stage = "done"
  end
  state.in_flight = state.in_flight - 1
  state.completed = state.completed + 1

  local callback = request.callback
  request.callback = nil
  local ok, err
  if request.meta_only and result ~= nil then
    ok, err = pcall(callback, result)
  else
    ok, err = pcall(callback, result, info)
  end
  if not ok then
    record_error(state, err)
  end
end

-- Returns a reading of now(), or nil and why there is none: the option
-- raised, or returned something other than a finite number. With
-- `state`, the error it raised is recorded for the enclosing poll.
local function read_now(client, state)
  local read, now = pcall(client.policy.now)
  if not read then
    if state then
      record_error(state, now)
    end
    return nil, "the now option raised an error"
  end
  local problem = retry.reading_problem(now)
  if problem then
    return nil, "the now option returned " .. problem
  end
  return now
end

-- Settles last: until the request is in `waiting`, a memory error here
-- leaves the outcome to be handled again. The request is in no set while
-- now() runs, so this function handles what now() does. A close (from a
-- finalizer, or from the option itself) cancels the request. An error,
-- which poll raises, or a reading that is no finite number ends it with
-- `err` and the reason.
local function schedule_retry(request, err, delay_ms)
  local state = request.async_state
  local call = request.call
  local now, problem = read_now(request.client, state)
  if state.closed then
    call:drop_retry()
    finish(request, nil, cancelled_error(request, "the client was closed"))
    return
  elseif not now then
    finish(request, nil, call:stop_before_retry(err, problem))
    return
  end
  local due = now + delay_ms / 1000
  state.waiting[request] = true
  state.sequence = state.sequence + 1
  request.stage = "waiting"
  request.last_err = err
  request.due = due
  request.sequence = state.sequence
  settle(request)
end

-- Handles the outcome of one attempt: schedules the next attempt or ends
-- the request. Runs as the core request's callback.
local function on_attempt_done(request, result, info)
  local state = request.async_state
  request.core_request = nil
  if result == nil then
    -- cancelled_error copies the metatable of the last error.
    request.last_err = info
  end

  -- on_retry runs inside call:complete. When it cancels the request or
  -- closes the client, cancel or close ends the request at once, and no
  -- retry follows.
  state.between_attempts[request] = true
  local call = request.call
  local ok, delay_ms = pcall(call.complete, call, result, info)
  state.between_attempts[request] = nil
  if not ok then
    -- on_retry raised. The blocking call would stop with that error, so
    -- the request ends with the attempt's error and poll raises it.
    record_error(state, delay_ms)
    delay_ms = nil
  end

  if request.stage == "cancelled" then
    settle(request)
    if delay_ms then
      call:drop_retry()
    end
    return
  elseif delay_ms and state.closed then
    -- A finalizer closed the client while this outcome was on its way,
    -- so close could not end the request.
    call:drop_retry()
    finish(request, nil, cancelled_error(request, "the client was closed"))
  elseif delay_ms then
    schedule_retry(request, info, delay_ms)
  else
    finish(request, result, info)
  end
end

-- Starts one attempt of a credential request on the core client.
local function start_credential_attempt(request, timeout_ms, callback)
  local call_opts
  if timeout_ms then
    call_opts = { timeout_ms = timeout_ms }
  end
  return request.client.core_client:start(request.file_name, callback,
    call_opts)
end

-- Starts one attempt of an upload on the core client, which reopens
-- opts.path. The core callback receives `meta` alone, and the retry
-- policy expects `result, meta`, which launch's callback passes on.
local function start_upload_attempt(request, timeout_ms, callback)
  local call_opts = request.call_opts
  call_opts.timeout_ms = timeout_ms or request.timeout_ms
  return request.client.core_client:start_upload(request.result, call_opts,
    callback)
end

-- Runs on_attempt_done, marking the request as handled meanwhile, so
-- that close or cancel called from on_retry does not hand the same
-- outcome to it again.
local function handle_outcome(request, result, info)
  request.handling = true
  local ok, err = pcall(on_attempt_done, request, result, info)
  request.handling = false
  if not ok then
    error(err, 0)
  end
end

-- Returns the core request's callback for the current attempt. It
-- stores the outcome before any call, in fields that the request already
-- has, so that storing it allocates nothing: when a memory error stops
-- on_attempt_done, a later poll or close hands the outcome to it again.
local function core_callback(request)
  local state = request.async_state
  local meta_only = request.meta_only
  return function(result, info)
    if meta_only and result ~= nil then
      info = result
    end
    request.ended_result = result or false
    request.ended_info = info or false
    if not request.attempt_ended then
      request.attempt_ended = true
      state.unhandled = state.unhandled + 1
    end
    handle_outcome(request, result, info)
  end
end

-- Clears the handling marks that a memory error left set, which it can
-- do where calling pcall itself raised. Call it only where no
-- on_attempt_done runs: on_retry, the only user code that runs while the
-- mark is set, runs inside poll.
local function clear_stale_marks(state)
  if state.unhandled == 0 or state.polling then
    return
  end
  for request in pairs(state.running) do
    request.handling = false
  end
end

-- Returns the requests whose attempt ended but whose outcome a memory
-- error kept from on_attempt_done, and that no on_attempt_done handles.
local function unhandled_requests(state)
  local list = {}
  for request in pairs(state.running) do
    if request.attempt_ended and not request.handling then
      list[#list + 1] = request
    end
  end
  return list
end

-- Hands the outcomes that a memory error kept from on_attempt_done to it
-- again.
local function handle_ended_attempts(state)
  if state.unhandled == 0 then
    return
  end
  for _, request in ipairs(unhandled_requests(state)) do
    if request.attempt_ended and not request.handling then
      handle_outcome(request, request.ended_result or nil,
        request.ended_info or nil)
    end
  end
end

-- Starts the core request of the current attempt. Returns true, or nil
-- and an invalid_argument error when appcenter.core rejects the input.
-- Raises what core_client:start or start_upload raises.
local function launch(request, timeout_ms)
  local state = request.async_state
  -- Made before the request enters the running set, so that a memory
  -- error here leaves nothing in the set.
  local callback = core_callback(request)
  state.running[request] = true
  local ok, core_request, err = pcall(request.start_attempt, request,
    timeout_ms, callback)
  if not ok or not core_request then
    state.running[request] = nil
    if not ok then
      error(core_request, 0)
    end
    err.attempts = request.call.attempt
    return nil, err
  end
  request.core_request = core_request
  request.stage = "running"
  return true
end

local function start_retry(request)
  local call = request.call
  -- begin_attempt reads now(), which may raise while the request is in no
  -- set.
  local read, ok, timeout_ms = pcall(call.begin_attempt, call)
  if not read then
    record_error(request.async_state, ok)
    call:drop_retry()
    finish(request, nil, request.last_err)
    return
  elseif not ok then
    finish(request, nil, call:stop_before_retry(request.last_err))
    return
  end

  local launched, started, err = pcall(launch, request, timeout_ms)
  if not launched and request.async_state.closed then
    -- A finalizer closed the client while the attempt started.
    finish(request, nil, cancelled_error(request, "the client was closed"))
  elseif not launched then
    record_error(request.async_state, started)
    finish(request, nil, request.last_err)
  elseif not started then
    finish(request, nil, err)
  end
end

-- Returns the requests of `state.waiting` whose timer is due at `now`
-- (all of them when `now` is nil), in the order they are due.
local function waiting_requests(state, now)
  local list = {}
  for request in pairs(state.waiting) do
    if not now or request.due <= now then
      list[#list + 1] = request
    end
  end
  table.sort(list, function(a, b)
    if a.due ~= b.due then
      return a.due < b.due
    end
    return a.sequence < b.sequence
  end)
  return list
end

-- In a child process that fork() made, ends the requests that wait for a
-- retry timer with a cancelled error, because the parent process retries
-- them. The core ends the child's copies of attempts in flight.
local function cancel_inherited_retries(state)
  local generation = core.fork_generation()
  if generation == state.fork_generation then
    return
  end
  state.fork_generation = generation
  for _, request in ipairs(waiting_requests(state, nil)) do
    if state.waiting[request] then
      state.waiting[request] = nil
      request.call:drop_retry()
      finish(request, nil, cancelled_error(request, "the process forked "
        .. "while the request waited for a retry, and the parent process "
        .. "retries it"))
    end
  end
end

local function start_due_retries(client, state)
  local now, problem = read_now(client, state)
  if not now then
    -- No retry timer can be checked, so each waiting request ends with
    -- the error of its last attempt.
    for _, request in ipairs(waiting_requests(state, nil)) do
      if state.waiting[request] then
        state.waiting[request] = nil
        finish(request, nil,
          request.call:stop_before_retry(request.last_err, problem))
      end
    end
    return
  end
  for _, request in ipairs(waiting_requests(state, now)) do
    -- A callback run by an earlier retry in this loop may have cancelled
    -- this request.
    if state.waiting[request] then
      state.waiting[request] = nil
      start_retry(request)
    end
  end
end

-- Returns the whole milliseconds until the next retry timer is due (0
-- when one is due now), or nil when no request waits for a retry.
local function next_retry_ms(client, state)
  local earliest
  for request in pairs(state.waiting) do
    if not earliest or request.due < earliest then
      earliest = request.due
    end
  end
  if not earliest then
    return nil
  end
  -- Without a reading, 0 lets poll run start_due_retries, which ends the
  -- waiting requests.
  local now = read_now(client)
  if not now then
    return 0
  end
  return math.max(0, math.ceil((earliest - now) * 1000))
end


-- Starts the first attempt of a new request and returns the request, or
-- nil and the error when the core client rejects the input.
local function start_request(request)
  local _, timeout_ms = request.call:begin_attempt()
  local started, err = launch(request, timeout_ms)
  if not started then
    request.stage = "done"
    return nil, err
  end
  local state = request.async_state
  state.in_flight = state.in_flight + 1
  return request
end

local function check_open(state, level)
  if state.closed then
    error("appcenter: the client is closed", level + 1)
  end
end

-- Raises at stack level `level` of the caller, like check_open, when
-- `client` is closed. The blocking methods use it, so that the error
-- points to their caller instead of into the wrapper.
function async.check_client_open(client, level)
  local state = client.async_state
  if state then
    check_open(state, level + 1)
  end
end

-- Turns `fields`, the fields that one kind of request adds, into a
-- request of `client` that retries under `policy` and calls `callback`
-- once, and returns it.
local function new_request(client, state, policy, callback, fields)
  fields.client = client
  fields.async_state = state
  fields.callback = callback
  fields.call = retry.new_call(policy)
  fields.stage = "new"
  -- Set by the core callback; created here so that it allocates nothing
  -- there.
  fields.attempt_ended = false
  fields.ended_result = false
  fields.ended_info = false
  fields.handling = false
  fields.due = 0
  fields.sequence = 0
  return setmetatable(fields, Request)
end

-- Starts a request for an upload credential for `file_name` and returns
-- its handle. `callback(result, meta)` or `callback(nil, err)` runs once,
-- from poll, perform, cancel or close, with the same values as
-- create_credential. Returns nil and an invalid_argument error, without
-- calling the callback, when the file name is invalid. Raises for a
-- non-string file name, a missing callback or a closed client.
function async.start(client, file_name, callback)
  if type(file_name) ~= "string" then
    error(("bad argument #1 to 'start' (string expected, got %s)")
      :format(type(file_name)), 2)
  end
  if type(callback) ~= "function" then
    error(("bad argument #2 to 'start' (function expected, got %s)")
      :format(type(callback)), 2)
  end
  local state = state_of(client)
  check_open(state, 2)

  return start_request(new_request(client, state, client.policy, callback, {
    file_name = file_name,
    start_attempt = start_credential_attempt,
  }))
end

-- Starts an upload of `result` with `call_opts` (the core upload's
-- options) under `policy`, which init.lua builds as for the blocking
-- upload, and returns its handle. `callback(meta)` or
-- `callback(nil, err)` runs once, like start's callback. Returns nil and
-- an invalid_argument error, without calling the callback, when the
-- core client rejects the input, such as a missing file. Raises for a
-- closed client.
function async.start_upload(client, result, call_opts, policy, callback)
  local state = state_of(client)
  check_open(state, 2)

  return start_request(new_request(client, state, policy, callback, {
    result = result,
    call_opts = call_opts,
    timeout_ms = call_opts.timeout_ms,
    start_attempt = start_upload_attempt,
    meta_only = true,
  }))
end

local function poll_loop(client, state, timeout_ms)
  local policy = client.policy
  local core_client = client.core_client

  -- The timeout bounds real time, so it is checked on the monotonic clock
  -- as well as on policy.now, which tests may replace. Without a reading
  -- of now() only real time counts; start_due_retries handles the
  -- requests that such a reading leaves waiting.
  local start_now = read_now(client)
  local policy_deadline = start_now and start_now + timeout_ms / 1000
  local real_deadline = core.monotonic() + timeout_ms / 1000
  local function time_left_ms()
    local real_ms = (real_deadline - core.monotonic()) * 1000
    local now = policy_deadline and read_now(client)
    if now and (policy_deadline - now) * 1000 < real_ms then
      return (policy_deadline - now) * 1000
    end
    return real_ms
  end

  state.completed = 0
  cancel_inherited_retries(state)
  while true do
    handle_ended_attempts(state)
    start_due_retries(client, state)
    if state.closed or state.completed > 0 then
      break
    end

    local until_retry_ms = next_retry_ms(client, state)
    local wait_ms = math.max(0, math.floor(time_left_ms()))
    if until_retry_ms and until_retry_ms < wait_ms then
      wait_ms = until_retry_ms
    end

    if core_client:pending() > 0 then
      -- Runs on_attempt_done for every attempt that ends meanwhile.
      core_client:poll(wait_ms)
    elseif until_retry_ms and wait_ms > 0 then
      -- A sleep option may yield to a scheduler, which may run other code
      -- that calls poll meanwhile.
      state.sleeping = true
      local slept, sleep_err = pcall(policy.sleep, wait_ms / 1000)
      state.sleeping = false
      if not slept then
        error(sleep_err, 0)
      end
    elseif until_retry_ms ~= 0 then
      -- Nothing in flight, or no time left to wait for a timer.
      break
    end

    if state.closed or state.completed > 0 or time_left_ms() < 1 then
      break
    end
  end

  -- Retries that became due during the last wait start now rather than
  -- one poll later.
  if not state.closed then
    start_due_retries(client, state)
  end
  return state.completed
end

-- Drives the requests in flight: waits at most `timeout_ms` (default 0)
-- for transfers and retry timers, starts the retries that are due and
-- runs the callbacks of the requests that ended. Returns as soon as at
-- least one callback ran, or at once when nothing is in flight, and
-- returns how many callbacks ran. Raises the first error raised by a
-- callback after running the others.
function async.poll(client, timeout_ms)
  if timeout_ms == nil then
    timeout_ms = 0
  end
  if type(timeout_ms) ~= "number" or not (timeout_ms >= 0)
      or timeout_ms > MAX_POLL_TIMEOUT_MS then
    error(("bad argument #1 to 'poll' (timeout_ms must be a number from 0 "
      .. "to %d, got %s)"):format(MAX_POLL_TIMEOUT_MS,
      type(timeout_ms) == "number" and tostring(timeout_ms)
        or type(timeout_ms)),
      2)
  end
  local state = state_of(client)
  check_open(state, 2)
  if state.polling and state.sleeping then
    error("appcenter: poll called while another poll of this client waits "
      .. "in its sleep option, which yielded; poll the client from one "
      .. "task only", 2)
  end
  if state.polling then
    error("appcenter: poll called from a callback that poll runs (a "
      .. "request's callback or an upload's progress callback); return "
      .. "from the callback instead, and the running poll goes on with "
      .. "the other requests", 2)
  end

  clear_stale_marks(state)
  state.polling = true
  local ok, count = pcall(run_collecting_errors, state, poll_loop, client,
    state, timeout_ms)
  state.polling = false
  if not ok then
    error(count, 0)
  end
  return count
end

-- Drives the requests in flight without waiting: poll(0).
function async.perform(client)
  return async.poll(client, 0)
end

-- Returns the number of started requests whose callback has not run yet,
-- those waiting for a retry timer included.
function async.pending(client)
  return state_of(client).in_flight
end

-- Returns the sockets that the transfers wait on, as {fd, read, write}
-- tables, for an external event loop. See async.timeout.
function async.sockets(client)
  return client.core_client:sockets()
end

-- Returns the milliseconds until perform must run again even when no
-- socket is ready: the earlier of libcurl's timer and the next retry
-- timer. Returns nil when neither is set.
function async.timeout(client)
  local core_ms = client.core_client:timeout()
  local retry_ms = next_retry_ms(client, state_of(client))
  if core_ms and retry_ms then
    return math.min(core_ms, retry_ms)
  end
  return core_ms or retry_ms
end

-- Cancels the requests in flight, calling their callbacks with a
-- `cancelled` error, and closes the core client. Raises the first error
-- raised by a callback after running the others. Calling it again only
-- closes the core client again, which does nothing.
function async.close(client)
  local state = state_of(client)
  -- appcenter.core raises too, but only after the requests waiting for a
  -- retry would have been cancelled.
  if state.in_progress_callback then
    error("appcenter: close called from an upload's progress callback; "
      .. "return false from it to abort the upload, then close", 3)
  end
  state.closed = true
  clear_stale_marks(state)
  run_collecting_errors(state, function()
    cancel_inherited_retries(state)
    local handled, handle_err = pcall(handle_ended_attempts, state)
    if not handled then
      record_error(state, handle_err)
    end
    -- Outcomes that still could not be handled end here.
    for _, request in ipairs(unhandled_requests(state)) do
      state.waiting[request] = nil
      finish(request, nil, cancelled_error(request, "the client was closed"))
    end
    for _, request in ipairs(waiting_requests(state, nil)) do
      if state.waiting[request] then
        state.waiting[request] = nil
        finish(request, nil, cancelled_error(request, "the client was closed"))
      end
    end
    -- The request whose on_retry called close. A callback may cancel a
    -- running request, which enters the set, so the loop walks a copy.
    local between = {}
    for request in pairs(state.between_attempts) do
      between[#between + 1] = request
    end
    for _, request in ipairs(between) do
      if state.between_attempts[request] then
        state.between_attempts[request] = nil
        finish(request, nil, cancelled_error(request, "the client was closed"))
      end
    end
    -- Calls on_attempt_done of each attempt in flight with a cancelled
    -- error.
    client.core_client:close()
  end)
end


local function cancel_request(request)
  local state = request.async_state
  if request.attempt_ended and not request.handling then
    -- Its attempt ended, but a memory error kept on_attempt_done from
    -- handling the outcome.
    finish(request, nil, cancelled_error(request, "the request was cancelled"))
    return true
  end
  if state.between_attempts[request] then
    -- Called while the request's own on_retry runs, after its attempt
    -- ended.
    state.between_attempts[request] = nil
    finish(request, nil, cancelled_error(request, "the request was cancelled"))
    return true
  end
  if request.stage == "running" then
    -- Calls on_attempt_done with a cancelled error, which is final.
    return request.core_request:cancel()
  end
  if request.stage == "waiting" then
    state.waiting[request] = nil
    request.call:drop_retry()
    finish(request, nil, cancelled_error(request, "the request was cancelled"))
    return true
  end
  return false
end

-- Cancels the request, running, waiting for a retry or inside its own
-- on_retry: its callback runs at once with a `cancelled` error, and no
-- retry follows. Returns true, or false when the request had already
-- ended. Raises what the callback raises.
function Request:cancel()
  check_request(self, "cancel")
  -- The core raises for a running request, and a request that waits for
  -- a retry would otherwise run its callback inside the progress callback.
  if self.async_state.in_progress_callback then
    error("appcenter: cancel called from an upload's progress callback; "
      .. "call it from the upload's callback instead", 2)
  end
  return run_collecting_errors(self.async_state, cancel_request, self)
end

-- Returns "running" (an attempt is in flight), "waiting" (for a retry
-- timer), "done" or "cancelled".
function Request:status()
  check_request(self, "status")
  return self.stage
end

function Request:__tostring()
  return ("appcenter request (%s)"):format(self.stage)
end


local function resume_error(co, err)
  if type(err) == "string" then
    return debug.traceback(co, err)
  end
  return err
end

-- Runs start(callback) inside the running coroutine and yields until the
-- callback resumes it; returns the callback's arguments. `name` and
-- `alternative` name the methods in the error raised outside a
-- coroutine. The public functions call it as a tail call, so that level
-- 2 is their caller.
local function await_request(name, alternative, start)
  local co, is_main = coroutine.running()
  if not co or is_main then
    error(("appcenter: %s must be called inside a coroutine; outside "
      .. "one, call %s"):format(name, alternative), 2)
  end
  if coroutine.isyieldable and not coroutine.isyieldable() then
    error(("appcenter: %s cannot yield here, because a C function (such "
      .. "as table.sort calling its comparator) runs between it and its "
      .. "coroutine; call it from the coroutine's own code, or call %s")
      :format(name, alternative), 2)
  end

  local outcome
  local yielded = false
  local request, err = start(function(...)
    outcome = pack(...)
    if yielded and coroutine.status(co) == "suspended" then
      local ok, co_err = coroutine.resume(co)
      if not ok then
        error(resume_error(co, co_err), 0)
      end
    end
  end)
  if not request then
    return nil, err
  end

  while not outcome do
    yielded = true
    local ok, yield_err = pcall(coroutine.yield)
    yielded = false
    if not ok then
      -- The coroutine cannot yield here because a C function is on its
      -- stack, so no callback could resume it. End the request and raise.
      request:cancel()
      error(yield_err, 0)
    end
  end
  return unpack(outcome, 1, outcome.n)
end


-- Requests an upload credential from inside a coroutine: starts the
-- request, yields until a callback from poll (or cancel, or close)
-- resumes the coroutine, and returns `result, meta` or `nil, err` like
-- create_credential. Raises outside a coroutine.
--
-- The coroutine yields no values. When other code resumes it before the
-- request has ended, it yields again. An error raised by the coroutine
-- after the callback resumed it is raised by that poll, with the
-- coroutine's traceback when the error is a string. A coroutine that is
-- never resumed keeps its request, and stays suspended until the client
-- is closed, which resumes it with a `cancelled` error, or is collected.
function async.await(client, file_name)
  return await_request("create_credential_async",
    "create_credential or start", function(callback)
      return async.start(client, file_name, callback)
    end)
end

-- Uploads from inside a coroutine as async.await requests a credential:
-- returns `meta` or `nil, err` like the blocking upload. init.lua builds
-- the arguments of async.start_upload, or passes `invalid_err` instead
-- for options that appcenter.core would reject, which is returned at
-- once, without yielding.
function async.await_upload(client, result, call_opts, policy, invalid_err)
  return await_request("upload_async", "upload or start_upload",
    function(callback)
      if invalid_err then
        return nil, invalid_err
      end
      return async.start_upload(client, result, call_opts, policy,
        callback)
    end)
end

-- Returns `progress`, an upload's progress callback, wrapped so that
-- close() of `client` can tell that it runs inside it. A callback may
-- run another upload's callback through poll, so each restores the mark
-- that it found.
function async.mark_progress(client, progress)
  local state = state_of(client)
  return function(sent, total)
    local outer = state.in_progress_callback
    state.in_progress_callback = true
    local ok, outcome = pcall(progress, sent, total)
    state.in_progress_callback = outer
    if not ok then
      error(outcome, 0)
    end
    return outcome
  end
end

return async
