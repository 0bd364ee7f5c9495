-- Allocation-failure injection for appcenter.core and the appcenter
-- wrapper. Runs under tests/oom.c, which provides the global `oom`.
--
--   build/sanitize-lua5.4/oom tests/oom.lua [ENTRY [MODE [K_FIRST [K_LAST]]]]
--
-- For each entry point and mode, and for k = K_FIRST, K_FIRST + 1, ...,
-- the entry point runs once with the k-th growing Lua allocation failing,
-- until a run fails no allocation or k passes K_LAST (default 4000). After
-- each run the allocator is disarmed and the run is checked:
--
--   * a raised error must be a string that contains "not enough memory";
--   * a normal return must be the entry point's usual success, because
--     appcenter.core raises on memory errors and returns nil, err only
--     for bad input, the network and the server;
--   * every request that start() or start_upload() returned gets exactly
--     one callback call, and pending() drops to 0 by itself;
--   * a wrapper client whose pending() is 0 keeps no request in its
--     internal sets;
--   * the client still works, or every call raises "the client is
--     closed".
--
-- MODE is one of:
--
--   sticky  every allocation from the k-th on fails;
--   once    the k-th allocation and Lua's retry after its emergency
--           collection fail, which raises one memory error, and later
--           allocations succeed;
--   gc      only the k-th allocation fails, so Lua collects garbage and
--           retries, and no error may reach the caller.
--
-- ENTRY and MODE may be "all".
--
-- The script starts tools/emulator.py on 127.0.0.1 and stops it at the
-- end. Each finding is printed with the smallest k that shows it. When
-- there was one, the script raises at the end, so the host exits 1.

package.path = "lua/?.lua;lua/?/init.lua;./?.lua;" .. package.path

local core = require("appcenter.core")
local appcenter = require("appcenter")
local emulator = require("spec.support.emulator")

local DEFAULT_K_LAST = 4000

-- Time that the checks after a run give requests to finish, in rounds
-- of POLL_STEP_MS.
local POLL_STEP_MS = 20
local POLL_ROUNDS = 250

local MODES = {
  sticky = -1,
  once = 2,
  gc = 1,
}
local MODE_ORDER = { "sticky", "once", "gc" }

local entry_arg, mode_arg, k_first_arg, k_last_arg = ...
entry_arg = entry_arg or "all"
mode_arg = mode_arg or "all"
local k_first = tonumber(k_first_arg) or 1
local k_last = tonumber(k_last_arg) or DEFAULT_K_LAST

-- ---------------------------------------------------------------------
-- Fixtures
-- ---------------------------------------------------------------------

local emu = emulator.start({ max_seconds = 900 })

local upload_path = os.tmpname()
do
  local file = assert(io.open(upload_path, "wb"))
  file:write(("upload body for the allocation-failure test\n"):rep(20))
  file:close()
end

local function core_options()
  return emu:client_options({ timeout_ms = 10000 })
end

-- Wrapper options: retries stay on, but with short delays so that a
-- retried memory error does not slow the run down.
local function wrapper_options()
  return emu:client_options({
    timeout_ms = 10000,
    retry = { base_delay_ms = 1, max_delay_ms = 5 },
  })
end

local function is_credential(result, meta)
  return type(result) == "table"
    and type(result.bucket_name) == "string"
    and type(result.object_path) == "string"
    and type(result.credential) == "table"
    and type(result.credential.secret) == "string"
    and type(meta) == "table" and meta.status == 200
end

local function is_upload_meta(meta)
  return type(meta) == "table" and meta.status == 200
    and type(meta.etag) == "string" and type(meta.url) == "string"
end

local function is_closed_message(message)
  return type(message) == "string" and message:find("client is closed") ~= nil
end

-- A credential for the upload entry points, requested without failures.
local function fresh_credential()
  local client = assert(core.new(core_options()))
  local result, err = client:create_credential("oom-upload.bin")
  client:close()
  assert(result, tostring(err))
  return result
end

local credential = fresh_credential()

local function describe(value)
  if type(value) == "table" and value.kind then
    return ("error table {kind=%s, message=%q}"):format(
      tostring(value.kind), tostring(value.message))
  end
  if type(value) == "string" then
    return ("%q"):format(value)
  end
  return tostring(value)
end

-- ---------------------------------------------------------------------
-- Findings
-- ---------------------------------------------------------------------

local findings = {}
local finding_order = {}

-- Records a finding; the same entry, mode and text keep the first k.
local function report(entry, mode, k, text)
  local key = entry .. "\0" .. mode .. "\0" .. text
  local found = findings[key]
  if found then
    found.count = found.count + 1
    return
  end
  findings[key] = { entry = entry, mode = mode, k = k, text = text, count = 1 }
  finding_order[#finding_order + 1] = key
  io.write(("FINDING %s [%s] k=%d: %s\n"):format(entry, mode, k, text))
  io.flush()
end

-- ---------------------------------------------------------------------
-- Helpers for the non-blocking entry points
-- ---------------------------------------------------------------------

-- Polls client until its pending() is 0, within POLL_ROUNDS rounds.
-- Returns true, or false and the last poll error. Poll errors are
-- returned, not raised, because a run may leave one behind.
local function drain(client)
  local last_err
  for _ = 1, POLL_ROUNDS do
    if client:pending() == 0 then
      return true
    end
    local ok, err = pcall(client.poll, client, POLL_STEP_MS)
    if not ok then
      last_err = err
    end
  end
  return client:pending() == 0, last_err
end

-- A callback recorder: record.calls counts the calls and record.values
-- contains the arguments of the first one.
local function new_record()
  local record = { calls = 0 }
  record.callback = function(...)
    record.calls = record.calls + 1
    if record.calls == 1 then
      record.values = table.pack(...)
    end
  end
  return record
end

-- Polls until record has a call, within the same bound as drain.
local function wait_for(client, record)
  for _ = 1, POLL_ROUNDS do
    if record.calls > 0 then
      return
    end
    client:poll(POLL_STEP_MS)
  end
end

-- ---------------------------------------------------------------------
-- Checks after a run, with the allocator disarmed
-- ---------------------------------------------------------------------

-- Checks that a client, core or wrapper, works: a blocking request, and
-- a non-blocking one that poll() completes. Returns nil, or a problem.
local function client_problem(client)
  local ok, result, meta = pcall(client.create_credential, client, "after.bin")
  if not ok then
    if is_closed_message(result) then
      return nil  -- cleanly unusable
    end
    return "create_credential after the run raised " .. describe(result)
  end
  if not is_credential(result, meta) then
    return "create_credential after the run returned " .. describe(meta)
  end

  local record = new_record()
  local started, request = pcall(client.start, client, "after-async.bin",
    record.callback)
  if not started then
    return "start after the run raised " .. describe(request)
  end
  local polled, poll_err = pcall(wait_for, client, record)
  if not polled then
    return "poll after the run raised " .. describe(poll_err)
  end
  if record.calls ~= 1 then
    return ("a request started after the run got %d callback calls")
      :format(record.calls)
  end
  if not is_credential(record.values[1], record.values[2]) then
    return "a request started after the run ended with "
      .. describe(record.values[2])
  end
  return nil
end

-- Checks the records of requests that a run started: each one that
-- start() returned must get exactly one callback call, and one that
-- start() did not return must get none. Returns nil, or a problem.
local function callback_problem(records)
  for _, record in ipairs(records) do
    if record.started and record.calls ~= 1 then
      return ("a started request got %d callback calls, 1 expected")
        :format(record.calls)
    elseif not record.started and record.calls > 1 then
      return ("a request that start() did not return got %d callback calls")
        :format(record.calls)
    end
  end
  return nil
end

-- ---------------------------------------------------------------------
-- Entry points
--
-- Each entry has run(ctx), which runs under failure and whose returns
-- are the outcome, and valid(...), which returns whether a normal return is
-- the usual outcome. The optional hooks run without failures: setup(ctx)
-- makes the client, prepare(ctx) runs before each run, cleanup(ctx)
-- right after it, and check(ctx, ...) afterwards returns problems. With
-- reuse, setup runs once per mode and ctx is shared.
-- ---------------------------------------------------------------------

local entries = {}
local entry_order = {}

local function entry(name, spec)
  spec.name = name
  entries[name] = spec
  entry_order[#entry_order + 1] = name
end

local function setup_core_client(ctx)
  ctx.client = assert(core.new(core_options()))
end

local function setup_wrapper_client(ctx)
  ctx.client = assert(appcenter.new(wrapper_options()))
end

-- The sets in which the wrapper's non-blocking state keeps requests,
-- which must be empty once pending() is 0. A request left in one stays
-- in memory for the client's life.
local KEPT_REQUEST_SETS = { "waiting", "between_attempts", "running" }

-- Returns a problem when a drained wrapper client still keeps a request.
-- Reads the wrapper's internal state (appcenter/async.lua).
local function kept_request_problem(client)
  if type(client) ~= "table" or type(client.async_state) ~= "table" then
    return nil
  end
  local state = client.async_state
  for _, name in ipairs(KEPT_REQUEST_SETS) do
    if next(state[name]) ~= nil then
      return ("pending() is 0 but the wrapper's %s set keeps a request")
        :format(name)
    end
  end
  return nil
end

-- Checks a client after a run, and drains its requests first.
local function check_client(ctx)
  local problems = {}
  local drained, poll_err = drain(ctx.client)
  if not drained then
    problems[#problems + 1] = ("pending() is still %d after %d ms of "
      .. "polling%s"):format(ctx.client:pending(), POLL_STEP_MS * POLL_ROUNDS,
      poll_err and ("; poll raised " .. describe(poll_err)) or "")
  end
  problems[#problems + 1] = callback_problem(ctx.records or {})
  problems[#problems + 1] = client_problem(ctx.client)
  if drained then
    problems[#problems + 1] = kept_request_problem(ctx.client)
  end
  return problems
end

-- Starts a credential request whose callback record is kept in ctx.records.
local function start_credential(ctx, name)
  local record = new_record()
  ctx.records[#ctx.records + 1] = record
  local request, err = ctx.client:start(name, record.callback)
  record.started = request ~= nil
  return request, err, record
end

local function start_upload(ctx, progress)
  local record = new_record()
  ctx.records[#ctx.records + 1] = record
  local request, err = ctx.client:start_upload(credential,
    { path = upload_path, progress = progress }, record.callback)
  record.started = request ~= nil
  return request, err, record
end

-- An upload progress callback that allocates, so that its own
-- allocations can fail too.
local function record_progress(sent, total)
  local seen = { sent = sent, total = total }
  return seen.sent <= seen.total
end

local HTTP_ERROR_BODY = '{"error_code": "WKS.0503", "error_msg": "down"}'

local function queue_http_error()
  emu:reset()
  emu:fault({ status = 503, body = HTTP_ERROR_BODY, times = 1 })
end

-- Clears a fault that a run left queued because it failed before its
-- request was sent.
local function reset_emulator()
  emu:reset()
end

local function is_queued_http_error(result, err)
  return result == nil and type(err) == "table" and err.kind == "http"
    and err.status == 503 and err.code == "WKS.0503" and err.message == "down"
end

-- Polls until record has a call; returns the callback's arguments.
local function poll_for(ctx, record)
  for _ = 1, POLL_ROUNDS do
    if record.calls > 0 then
      break
    end
    ctx.client:poll(POLL_STEP_MS)
  end
  if record.calls == 0 then
    return nil, "no callback call"
  end
  return table.unpack(record.values, 1, record.values.n)
end

entry("core.new", {
  run = function()
    return core.new(core_options())
  end,
  valid = function(client)
    return type(client) == "userdata"
  end,
  check = function(_, client)
    local problems = {}
    if type(client) == "userdata" then
      problems[#problems + 1] = client_problem(client)
      client:close()
    end
    return problems
  end,
})

entry("core.create_credential(opts)", {
  run = function()
    local opts = core_options()
    opts.file_name = "oom-one-shot.bin"
    return core.create_credential(opts)
  end,
  valid = is_credential,
})

entry("core.sign", {
  run = function()
    return core.sign({
      method = "POST",
      url = emu.url .. "/v1/" .. emu.project_id
        .. "/app-center/buckets/actions/create-credential?a=1",
      headers = { ["Content-Type"] = "application/json", Host = "127.0.0.1" },
      body = '{"file_name": "oom.bin"}',
      ak = emulator.DEFAULT_AK,
      sk = emulator.DEFAULT_SK,
      date = "20240101T000000Z",
    })
  end,
  valid = function(headers, canonical)
    return type(headers) == "table"
      and type(headers.Authorization) == "string"
      and headers["X-Sdk-Date"] == "20240101T000000Z"
      and type(canonical) == "string"
  end,
})

entry("core.check_upload_path", {
  run = function()
    return core.check_upload_path(upload_path)
  end,
  valid = function(ok)
    return ok == true
  end,
})

-- Returns a run function that starts a request with start(ctx) and
-- polls until its callback runs, returning the callback's arguments.
local function start_and_poll(start)
  return function(ctx)
    local _, err, record = start(ctx)
    if not record.started then
      return nil, err
    end
    return poll_for(ctx, record)
  end
end

local CLIENT_KINDS = {
  { prefix = "core client", setup = setup_core_client },
  { prefix = "appcenter client", setup = setup_wrapper_client },
}

for _, reuse in ipairs({ false, true }) do
  local suffix = reuse and "/reused" or "/fresh"

  -- The entry points that the core and the wrapper client share.
  for _, kind in ipairs(CLIENT_KINDS) do
    entry(kind.prefix .. ":create_credential" .. suffix, {
      reuse = reuse,
      setup = kind.setup,
      run = function(ctx)
        return ctx.client:create_credential("oom.bin")
      end,
      valid = is_credential,
      check = check_client,
    })

    entry(kind.prefix .. ":start+poll" .. suffix, {
      reuse = reuse,
      setup = kind.setup,
      run = start_and_poll(function(ctx)
        return start_credential(ctx, "oom-async.bin")
      end),
      valid = is_credential,
      check = check_client,
    })

    entry(kind.prefix .. ":upload" .. suffix, {
      reuse = reuse,
      setup = kind.setup,
      run = function(ctx)
        return ctx.client:upload(credential, { path = upload_path })
      end,
      valid = is_upload_meta,
      check = check_client,
    })

    entry(kind.prefix .. ":start_upload+poll" .. suffix, {
      reuse = reuse,
      setup = kind.setup,
      run = start_and_poll(start_upload),
      valid = is_upload_meta,
      check = check_client,
    })
  end

  entry("core request:cancel" .. suffix, {
    reuse = reuse,
    setup = setup_core_client,
    prepare = function(ctx)
      ctx.request = assert(start_credential(ctx, "oom-cancel.bin"))
    end,
    run = function(ctx)
      return ctx.request:cancel()
    end,
    valid = function(cancelled)
      return cancelled == true
    end,
    check = check_client,
  })

  entry("core client:upload+progress" .. suffix, {
    reuse = reuse,
    setup = setup_core_client,
    run = function(ctx)
      return ctx.client:upload(credential, {
        path = upload_path,
        progress = record_progress,
      })
    end,
    valid = is_upload_meta,
    check = check_client,
  })

  entry("core client:start_upload+progress+poll" .. suffix, {
    reuse = reuse,
    setup = setup_core_client,
    run = start_and_poll(function(ctx)
      return start_upload(ctx, record_progress)
    end),
    valid = is_upload_meta,
    check = check_client,
  })

  -- A 503 with a JSON error body: the error table must name the body's
  -- error_code and error_msg, or a memory error must be raised.
  entry("core client:create_credential/http-error" .. suffix, {
    reuse = reuse,
    setup = setup_core_client,
    prepare = queue_http_error,
    cleanup = reset_emulator,
    run = function(ctx)
      return ctx.client:create_credential("oom.bin")
    end,
    valid = is_queued_http_error,
    check = check_client,
  })

  entry("appcenter client:create_and_upload" .. suffix, {
    reuse = reuse,
    setup = setup_wrapper_client,
    run = function(ctx)
      return ctx.client:create_and_upload("oom-both.bin", { path = upload_path })
    end,
    valid = is_upload_meta,
    check = check_client,
  })
end

entry("core client:create_credential/aksk", {
  setup = function(ctx)
    local opts = core_options()
    opts.token = nil
    opts.ak = emulator.DEFAULT_AK
    opts.sk = emulator.DEFAULT_SK
    ctx.client = assert(core.new(opts))
  end,
  run = function(ctx)
    return ctx.client:create_credential("oom.bin")
  end,
  valid = is_credential,
  check = check_client,
})

-- Checks a client after a close() that ran under failure: a second
-- close() must succeed, after which every started request has had its
-- one callback call, pending() is 0 and calls raise "the client is
-- closed". The failed close() may have stopped before it closed
-- anything, so only the state after the second one is checked.
local function check_closed_client(ctx)
  local problems = {}
  local client = ctx.client
  local closed, close_err = pcall(client.close, client)
  if not closed then
    problems[#problems + 1] = "a second close() raised " .. describe(close_err)
  end
  if client:pending() ~= 0 then
    problems[#problems + 1] = ("pending() is %d after a second close()")
      :format(client:pending())
  end
  problems[#problems + 1] = callback_problem(ctx.records)
  local ok, err = pcall(client.create_credential, client, "after.bin")
  if ok then
    problems[#problems + 1] = "create_credential worked after a second close()"
  elseif not is_closed_message(err) then
    problems[#problems + 1] = "create_credential after close() raised "
      .. describe(err)
  end
  return problems
end

-- close() with a credential request and an upload in flight.
for _, kind in ipairs(CLIENT_KINDS) do
  entry(kind.prefix .. ":close", {
    setup = kind.setup,
    prepare = function(ctx)
      assert(start_credential(ctx, "oom-close-1.bin"))
      assert(start_upload(ctx))
    end,
    run = function(ctx)
      return ctx.client:close()
    end,
    valid = function(...)
      return select("#", ...) == 0
    end,
    check = check_closed_client,
  })
end

entry("appcenter.new", {
  run = function()
    return appcenter.new(wrapper_options())
  end,
  valid = function(client)
    return type(client) == "table" and client.core_client ~= nil
  end,
  check = function(_, client)
    local problems = {}
    if type(client) == "table" and client.core_client then
      problems[#problems + 1] = client_problem(client)
      client:close()
    end
    return problems
  end,
})

entry("appcenter.create_credential(opts)", {
  run = function()
    local opts = wrapper_options()
    opts.file_name = "oom-one-shot.bin"
    return appcenter.create_credential(opts)
  end,
  valid = is_credential,
})

-- ---------------------------------------------------------------------
-- The loop over k
-- ---------------------------------------------------------------------

local function pack(...)
  return { n = select("#", ...), ... }
end

-- Returns the problem with a run's outcome, or nil.
local function outcome_problem(spec, mode, failures, ok, values)
  if not ok then
    local err = values[1]
    if mode == "gc" then
      return "raised with only an emergency collection: " .. describe(err)
    end
    if type(err) ~= "string" then
      return "raised a " .. type(err) .. ": " .. describe(err)
    end
    if not err:find("not enough memory", 1, true) then
      return "raised a message that does not name memory: " .. describe(err)
    end
    return nil
  end
  if spec.valid(table.unpack(values, 1, values.n)) then
    return nil
  end
  if failures == 0 then
    return "failed without any failed allocation, with "
      .. describe(values[1] or values[2])
  end
  return "returned " .. describe(values[1] == nil and values[2] or values[1])
    .. " in place of a memory error"
end

local function close_context(ctx)
  if ctx.client then
    pcall(ctx.client.close, ctx.client)
    drain(ctx.client)
  end
end

-- Runs one entry point in one mode. Returns the number of runs, and the
-- k at which a run failed no allocation, or nil when K_LAST came first.
local function run_entry(spec, mode)
  local burst = MODES[mode]
  local shared
  local runs, clean_k = 0, nil

  for k = k_first, k_last do
    local ctx = shared
    if not ctx then
      ctx = { records = {} }
      if spec.setup then
        spec.setup(ctx)
      end
      if spec.reuse then
        shared = ctx
      end
    end
    ctx.records = {}
    if spec.prepare then
      spec.prepare(ctx)
    end
    collectgarbage("collect")

    local result = pack(oom.pcall(k, burst, spec.run, ctx))
    local failures, ok = result[1], result[2]
    local values = pack(table.unpack(result, 3, result.n))
    runs = runs + 1
    if spec.cleanup then
      spec.cleanup(ctx)
    end
    collectgarbage("collect")

    local problem = outcome_problem(spec, mode, failures, ok, values)
    if problem then
      report(spec.name, mode, k, problem)
    end
    local problems = spec.check and spec.check(ctx, table.unpack(values, 1,
      values.n)) or {}
    local broken = false
    for _, text in pairs(problems) do
      report(spec.name, mode, k, text)
      broken = true
    end

    -- A broken shared client would repeat its finding at every k.
    if not spec.reuse or broken then
      close_context(ctx)
      shared = nil
    end
    if failures == 0 then
      clean_k = k
      break
    end
  end
  if shared then
    close_context(shared)
  end
  return runs, clean_k
end

local function selected(list, choice)
  if choice == "all" then
    return list
  end
  return { choice }
end

local started = core.monotonic()
local status_ok, status_err = pcall(function()
  for _, name in ipairs(selected(entry_order, entry_arg)) do
    local spec = assert(entries[name], "unknown entry point " .. name)
    for _, mode in ipairs(selected(MODE_ORDER, mode_arg)) do
      assert(MODES[mode], "unknown mode " .. mode)
      local t0 = core.monotonic()
      local runs, clean_k = run_entry(spec, mode)
      io.write(("%-45s %-6s %5d runs, %s, %.1f s\n"):format(name, mode, runs,
        clean_k and ("clean at k=" .. clean_k)
          or ("stopped at k=" .. k_last .. " (K_LAST)"),
        core.monotonic() - t0))
      io.flush()
    end
  end
end)

emu:stop()
os.remove(upload_path)
collectgarbage("collect")

if not status_ok then
  error(status_err, 0)
end
io.write(("%d findings in %.1f s\n"):format(#finding_order,
  core.monotonic() - started))
if #finding_order > 0 then
  error(("%d findings"):format(#finding_order), 0)
end
