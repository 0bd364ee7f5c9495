-- Non-blocking requests of the Lua wrapper (client:start, poll, cancel,
-- close, create_credential_async) against the local emulator.
--
-- Clients made with `fake_clock` get a clock whose now() is the real
-- monotonic time plus all the seconds passed to sleep(), and whose sleep()
-- only records them, so no test waits for a long backoff. poll sleeps
-- only while no attempt is in flight.

local appcenter = require("appcenter")
local core = require("appcenter.core")
local decode_hook = require("spec.support.decode_hook")
local emulator = require("spec.support.emulator")

local UNAVAILABLE = '{"error_code":"WKS.0503","error_msg":"unavailable"}'
local FAILED = '{"error_code":"WKS.0001","error_msg":"request failed"}'
local SAME_ID = { ["X-Request-Id"] = "fixed-request-id" }

local ERROR_FIELDS = {
  "kind", "status", "code", "message", "request_id", "retryable",
  "retry_after", "attempts",
}

local function fake_clock()
  local clock = { offset = 0, sleeps = {} }

  function clock.now()
    return core.monotonic() + clock.offset
  end

  function clock.sleep(seconds)
    clock.sleeps[#clock.sleeps + 1] = seconds
    clock.offset = clock.offset + seconds
  end

  return clock
end

local function constant(value)
  return function()
    return value
  end
end

-- Returns a copy of `value` with every string, number and boolean replaced
-- by its type name, to compare the shape of two results.
local function shape(value)
  if type(value) ~= "table" then
    return type(value)
  end
  local copy = {}
  for key, item in pairs(value) do
    copy[key] = shape(item)
  end
  return copy
end

describe("appcenter async wrapper", function()
  local emu

  setup(function()
    emu = emulator.start()
  end)

  teardown(function()
    emu:stop()
  end)

  before_each(function()
    emu:reset()
  end)

  -- Returns a wrapper client of the emulator. `extra` adds or replaces
  -- options.
  local function new_client(extra)
    local client = appcenter.new(emu:client_options(extra))
    assert.is_table(client)
    return client
  end

  -- Polls `client` until ended() returns true, at most 20 polls of 100 ms,
  -- and returns the errors that those polls raised.
  local function poll_until_ended(client, ended)
    local raised = {}
    for _ = 1, 20 do
      if ended() then
        break
      end
      local ok, message = pcall(client.poll, client, 100)
      if not ok then
        raised[#raised + 1] = message
      end
    end
    return raised
  end

  -- Returns a client on a fake clock, and the clock.
  local function fake_client(retry_opts, extra)
    local clock = fake_clock()
    local opts = { now = clock.now, sleep = clock.sleep, retry = retry_opts }
    for name, value in pairs(extra or {}) do
      opts[name] = value
    end
    return new_client(opts), clock
  end

  -- Polls until nothing is in flight, at most max_polls times.
  local function drive(client, max_polls, timeout_ms)
    for _ = 1, max_polls or 500 do
      if client:pending() == 0 then
        return
      end
      client:poll(timeout_ms or 50)
    end
    error("requests still in flight after polling")
  end

  -- Polls until `request` has the given status, at most 200 times.
  local function poll_until(client, request, status)
    for _ = 1, 200 do
      if request:status() == status then
        return
      end
      client:poll(20)
    end
    error("request never reached status " .. status)
  end

  -- Starts one request, drives it and returns the callback's arguments
  -- and the number of callback calls.
  local function run_one(client, file_name)
    local calls, first, second = 0, nil, nil
    local request, err = client:start(file_name, function(a, b)
      calls = calls + 1
      first, second = a, b
    end)
    if not request then
      return nil, err, 0
    end
    drive(client)
    return first, second, calls
  end

  local function requests()
    return emu:stats().requests
  end

  -- Returns a client on a fake clock whose on_retry closes it, and a
  -- table whose `closed` field on_retry sets once close has returned.
  local function client_closed_by_on_retry()
    local hook = { closed = false }
    local client
    client = fake_client{
      random = constant(0),
      on_retry = function()
        client:close()
        hook.closed = true
      end,
    }
    return client, hook
  end

  -- Polls until on_retry has closed the client, at most 100 times.
  local function poll_until_closed(client, hook)
    for _ = 1, 100 do
      if hook.closed then
        return
      end
      client:poll(50)
    end
    error("on_retry never closed the client")
  end

  local function assert_same_error(expected, actual)
    for _, field in ipairs(ERROR_FIELDS) do
      assert.equal(expected[field], actual[field], "field " .. field)
    end
    assert.equal(tostring(expected), tostring(actual))
  end

  describe("dot calls", function()
    -- Returns the message of the error that `call` raises, without the
    -- position, after checking that the position is this file's.
    local function raised_message(call)
      local ok, message = pcall(call)
      assert.is_false(ok)
      local position, text = message:match("^([^:]*:%d+): (.*)$")
      assert.matches("async_wrapper_spec%.lua", position, 1, false, message)
      return text
    end

    -- Each call keeps its result in a local, because a tail call would
    -- drop the caller's line from the message.
    it("client methods raise with advice", function()
      local client = new_client()
      local result = assert(client:create_credential("dot.bin"))
      local calls = {
        start = function()
          local request = client.start("dot.bin", function() end)
          return request
        end,
        poll = function()
          local count = client.poll(100)
          return count
        end,
        perform = function()
          local count = client.perform()
          return count
        end,
        pending = function()
          local count = client.pending()
          return count
        end,
        sockets = function()
          local sockets = client.sockets()
          return sockets
        end,
        timeout = function()
          local timeout_ms = client.timeout()
          return timeout_ms
        end,
        create_credential_async = function()
          local value = client.create_credential_async("dot.bin")
          return value
        end,
        start_upload = function()
          local request = client.start_upload(result, { body = "x" },
            function() end)
          return request
        end,
        upload_async = function()
          local meta = client.upload_async(result, { body = "x" })
          return meta
        end,
      }
      for name, call in pairs(calls) do
        assert.equal(("appcenter: call %s with a colon: client:%s(...)")
          :format(name, name), raised_message(call))
      end

      assert.equal(0, client:pending())
      assert.equal(1, requests())
      assert.equal(0, emu:stats().obs_requests)
      client:close()
    end)

    it("request methods raise with advice", function()
      local client = new_client()
      local request = assert(client:start("dot.bin", function() end))
      local calls = {
        cancel = function()
          local cancelled = request.cancel()
          return cancelled
        end,
        status = function()
          local status = request.status()
          return status
        end,
      }
      for name, call in pairs(calls) do
        assert.equal(("appcenter: call %s with a colon: request:%s(...)")
          :format(name, name), raised_message(call))
      end

      assert.equal("running", request:status())
      drive(client)
      assert.equal("done", request:status())
      client:close()
    end)
  end)

  describe("outcomes", function()
    it("result matches blocking call", function()
      local client = new_client()

      local sync, sync_meta = client:create_credential("same.bin")
      local result, meta, calls = run_one(client, "same.bin")

      assert.equal(1, calls)
      assert.same(shape(sync), shape(result))
      assert.equal(sync.bucket_name, result.bucket_name)
      assert.equal(sync.server_end_point, result.server_end_point)
      assert.same(sync.policy.statement.action, result.policy.statement.action)
      assert.matches("same%.bin$", result.object_path)
      assert.equal(sync_meta.status, meta.status)
      assert.equal(1, meta.attempts)
      assert.is_string(meta.request_id)
      assert.is_number(meta.elapsed_ms)
      client:close()
    end)

    local failures = {
      {
        name = "503 after all attempts",
        fault = { status = 503, body = UNAVAILABLE, times = 3,
          headers = SAME_ID },
        attempts = 3,
      },
      {
        name = "401 without retry",
        fault = { status = 401, body = FAILED, times = 1, headers = SAME_ID },
        attempts = 1,
      },
      {
        name = "invalid response",
        fault = { status = 200, body = "not json", times = 1,
          headers = SAME_ID },
        attempts = 1,
      },
      {
        name = "Retry-After past deadline",
        fault = { status = 503, body = UNAVAILABLE, times = 1,
          headers = { ["Retry-After"] = "120",
            ["X-Request-Id"] = "fixed-request-id" } },
        attempts = 1,
      },
    }

    for _, case in ipairs(failures) do
      it("error matches blocking call: " .. case.name, function()
        local client = fake_client{ random = constant(0) }

        emu:fault(case.fault)
        local sync_result, sync_err = client:create_credential("a.bin")
        local sync_requests = requests()
        emu:reset()
        emu:fault(case.fault)
        local result, err, calls = run_one(client, "a.bin")

        assert.is_nil(sync_result)
        assert.is_nil(result)
        assert.equal(1, calls)
        assert.equal(case.attempts, err.attempts)
        assert_same_error(sync_err, err)
        assert.equal(sync_requests, requests())
        client:close()
      end)
    end

    it("invalid file name fails at start", function()
      local client = new_client()
      local called = false

      local _, sync_err = client:create_credential("bad:name.bin")
      local request, err = client:start("bad:name.bin", function()
        called = true
      end)

      assert.is_nil(request)
      assert.equal("invalid_argument", err.kind)
      assert.equal(1, err.attempts)
      assert_same_error(sync_err, err)
      assert.equal(0, client:pending())
      assert.equal(0, client:perform())
      assert.is_false(called)
      assert.equal(0, requests())
    end)

    it("raises on wrong argument types", function()
      local client = new_client()

      assert.has_error(function()
        client:start(42, function() end)
      end, "bad argument #1 to 'start' (string expected, got number)")
      assert.has_error(function()
        client:start("a.bin")
      end, "bad argument #2 to 'start' (function expected, got nil)")
      assert.has_error(function()
        client:poll(-1)
      end)
      assert.has_error(function()
        client:poll("soon")
      end)
      assert.equal(0, requests())
    end)

    it("retry false makes one attempt", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 3 }
      local client = fake_client(false)

      local result, err = run_one(client, "a.bin")

      assert.is_nil(result)
      assert.equal(503, err.status)
      assert.equal(1, err.attempts)
      assert.equal(1, requests())
    end)
  end)

  describe("retries in poll", function()
    it("succeeds after two 503s", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 2 }
      local retries = {}
      local client, clock = fake_client{
        random = constant(0.5),
        on_retry = function(err, attempt, delay_ms)
          retries[#retries + 1] = {
            status = err.status, attempt = attempt, delay_ms = delay_ms,
          }
        end,
      }

      local result, meta, calls = run_one(client, "replay.bin")

      assert.equal(1, calls)
      assert.is_table(result)
      assert.equal(3, meta.attempts)
      assert.equal(3, requests())
      assert.same({ status = 503, attempt = 1, delay_ms = 50 }, retries[1])
      assert.same({ status = 503, attempt = 2, delay_ms = 100 }, retries[2])
      assert.equal(2, #retries)
      -- The backoff was waited on the injected clock, in one or more
      -- sleeps of poll. The clock also advances with real time, so on a
      -- slow run (valgrind) part of the 150 ms passes outside the sleeps.
      local slept = 0
      for _, seconds in ipairs(clock.sleeps) do
        slept = slept + seconds
      end
      assert.is_true(slept <= 0.15 + 1e-9, "slept " .. slept)
      assert.is_true(meta.elapsed_ms >= 150)
    end)

    it("honours Retry-After", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1,
        headers = { ["Retry-After"] = "2" } }
      local client, clock = fake_client()

      local result, meta = run_one(client, "replay.bin")

      assert.is_table(result)
      assert.equal(2, meta.attempts)
      -- Real time passes too, so the injected sleeps add up to a little
      -- less than the 2 s requested.
      assert.is_true(clock.offset > 1.5, "slept " .. clock.offset)
      assert.is_true(meta.elapsed_ms >= 2000)
      assert.is_true(meta.elapsed_ms < 3000)
    end)

    it("no attempt starts after deadline", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 10 }
      local client = fake_client{
        max_attempts = 10, deadline_ms = 1000,
        base_delay_ms = 400, max_delay_ms = 400,
        random = constant(0.9999),
      }

      local _, err = run_one(client, "replay.bin")

      -- Two 400 ms delays fit into 1000 ms, a third one does not.
      assert.equal(3, err.attempts)
      assert.equal(3, requests())
    end)

    it("retries a timeout", function()
      emu:fault{ delay_ms = 1000, times = 1 }
      local client = fake_client({ random = constant(0) },
        { timeout_ms = 200 })

      local result, meta = run_one(client, "replay.bin")

      assert.is_table(result)
      assert.equal(2, meta.attempts)
    end)

    it("starts retries that fall due in perform", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1 }
      local client = fake_client{ random = constant(0) }
      local socket = require("socket")
      local result
      local request = client:start("a.bin", function(r) result = r end)

      -- Frames of 5 ms, for at most 10 s.
      for _ = 1, 2000 do
        if request:status() == "done" then
          break
        end
        client:perform()
        socket.sleep(0.005)
      end

      assert.is_table(result)
      assert.equal(2, requests())
    end)

    it("on_retry error is raised by poll", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 3 }
      local client = fake_client{
        on_retry = function()
          error("on_retry failed")
        end,
      }
      local outcome
      client:start("a.bin", function(a, b) outcome = { a, b } end)

      local ok, message
      for _ = 1, 100 do
        ok, message = pcall(client.poll, client, 50)
        if not ok or client:pending() == 0 then
          break
        end
      end

      assert.is_false(ok)
      assert.matches("on_retry failed", message)
      assert.is_nil(outcome[1])
      assert.equal(503, outcome[2].status)
      assert.equal(1, outcome[2].attempts)
      assert.equal(0, client:pending())
      assert.equal(1, requests())
    end)
  end)

  describe("budget", function()
    local SMALL = {
      capacity = 10, retry_cost = 5, timeout_cost = 10, success_refund = 1,
    }

    it("blocking calls drain it for start", function()
      local client = fake_client{ budget = SMALL, random = constant(0) }

      emu:fault{ status = 503, body = UNAVAILABLE, times = 3 }
      local _, first = client:create_credential("a.bin")
      emu:fault{ status = 503, body = UNAVAILABLE, times = 3 }
      local _, second = run_one(client, "a.bin")

      assert.equal(3, first.attempts)
      assert.equal(1, second.attempts)
      assert.equal(4, requests())
    end)

    it("start drains it for blocking calls", function()
      local client = fake_client{ budget = SMALL, random = constant(0) }

      emu:fault{ status = 503, body = UNAVAILABLE, times = 3 }
      local _, first = run_one(client, "a.bin")
      emu:fault{ status = 503, body = UNAVAILABLE, times = 3 }
      local _, second = client:create_credential("a.bin")

      assert.equal(3, first.attempts)
      assert.equal(1, second.attempts)
      assert.equal(4, requests())
    end)

    it("async successes refill it", function()
      local client = fake_client{ budget = SMALL, random = constant(0) }
      emu:fault{ status = 503, body = UNAVAILABLE, times = 3 }
      client:create_credential("a.bin")

      for i = 1, 5 do
        client:start("refill-" .. i .. ".bin", function() end)
      end
      drive(client)
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1 }
      local result, meta = client:create_credential("a.bin")

      assert.is_table(result)
      assert.equal(2, meta.attempts)
    end)
  end)

  describe("cancel", function()
    it("cancels during a retry wait", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 3,
        headers = { ["Retry-After"] = "5" } }
      local client = new_client()
      local outcome, calls = nil, 0
      local request = client:start("a.bin", function(a, b)
        calls = calls + 1
        outcome = { a, b }
      end)

      poll_until(client, request, "waiting")
      local timeout_ms = client:timeout()
      assert.is_true(request:cancel())

      assert.is_true(timeout_ms > 3000, "timeout " .. timeout_ms)
      assert.is_true(timeout_ms <= 5000, "timeout " .. timeout_ms)
      assert.equal(1, calls)
      assert.is_nil(outcome[1])
      assert.equal("cancelled", outcome[2].kind)
      assert.equal("the request was cancelled", outcome[2].message)
      assert.is_false(outcome[2].retryable)
      assert.equal(1, outcome[2].attempts)
      assert.matches("^appcenter: cancelled: ", tostring(outcome[2]))
      assert.equal("cancelled", request:status())
      assert.equal(0, client:pending())
      assert.is_nil(client:timeout())
      assert.is_false(request:cancel())
      assert.equal(0, client:poll(50))
      assert.equal(1, calls)
      assert.equal(1, requests())
    end)

    it("cancels a running attempt", function()
      emu:fault{ delay_ms = 1000, times = 1 }
      local client = new_client()
      local outcome
      local request = client:start("a.bin", function(a, b)
        outcome = { a, b }
      end)
      emu:wait_for_requests(1, client)

      assert.equal("running", request:status())
      assert.is_true(request:cancel())
      assert.equal("cancelled", outcome[2].kind)
      assert.equal(1, outcome[2].attempts)
      assert.equal("cancelled", request:status())
      assert.equal(0, client:pending())
    end)

    it("cancel from on_retry ends request", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1 }
      local request, cancel_outcome, status_in_hook
      local client = fake_client{
        random = constant(0),
        on_retry = function()
          cancel_outcome = { pcall(request.cancel, request) }
          status_in_hook = request:status()
        end,
      }
      local outcome, calls = nil, 0
      request = client:start("a.bin", function(a, b)
        calls = calls + 1
        outcome = { a, b }
      end)

      drive(client)

      assert.is_true(cancel_outcome[1], tostring(cancel_outcome[2]))
      assert.is_true(cancel_outcome[2])
      assert.equal("cancelled", status_in_hook)
      assert.equal(1, calls)
      assert.is_nil(outcome[1])
      assert.equal("cancelled", outcome[2].kind)
      assert.equal("the request was cancelled", outcome[2].message)
      assert.equal(1, outcome[2].attempts)
      assert.matches("^appcenter: cancelled: ", tostring(outcome[2]))
      assert.equal("cancelled", request:status())
      assert.equal(0, client:pending())
      assert.is_false(request:cancel())
      assert.equal(1, requests())
    end)

    -- Checks that the client's budget still pays for a retry after a 503.
    local function assert_budget_pays_one_retry(client)
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1 }
      local outcome
      client:start("b.bin", function(a, b)
        outcome = { a, b }
      end)
      drive(client)

      assert.is_table(outcome[1], tostring(outcome[2]))
      assert.equal(2, outcome[2].attempts)
    end

    it("cancel from on_retry returns the retry's budget", function()
      -- The budget pays for one retry only.
      local request
      local cancel_first = true
      local client = fake_client{
        random = constant(0),
        budget = { capacity = 5, retry_cost = 5 },
        on_retry = function()
          if cancel_first then
            cancel_first = false
            request:cancel()
          end
        end,
      }
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1 }
      request = client:start("a.bin", function() end)
      drive(client)
      assert.equal("cancelled", request:status())

      assert_budget_pays_one_retry(client)
    end)

    it("cancel while waiting returns the retry's budget", function()
      -- The budget pays for one retry only.
      local client = fake_client{
        random = constant(0),
        budget = { capacity = 5, retry_cost = 5 },
      }
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1,
        headers = { ["Retry-After"] = "5" } }
      local request = client:start("a.bin", function() end)
      poll_until(client, request, "waiting")
      assert.is_true(request:cancel())

      assert_budget_pays_one_retry(client)
    end)

    it("cancel raises callback error", function()
      local client = new_client()
      local request = client:start("a.bin", function()
        error("boom in cancel callback")
      end)

      assert.has_error(function()
        request:cancel()
      end)
      assert.equal(0, client:pending())
      assert.equal("cancelled", request:status())
    end)
  end)

  -- A close where a finalizer may run: while poll builds an attempt's
  -- outcome.
  describe("close from a finalizer", function()
    after_each(function()
      decode_hook.remove()
    end)

    it("cancels a retry while an outcome is built", function()
      local client = fake_client{ random = constant(0) }
      decode_hook.before_next_decode(function()
        client:close()
      end)
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1 }
      local calls, outcome = 0, nil
      client:start("a.bin", function(result, err)
        calls = calls + 1
        outcome = result or err
      end)

      for _ = 1, 100 do
        if calls > 0 then
          break
        end
        pcall(client.poll, client, 20)
      end

      assert.equals(1, calls)
      assert.equals("cancelled", outcome.kind)
      assert.equals("the client was closed", outcome.message)
      assert.equals(0, client:pending())
      assert.equals(1, requests())
    end)
  end)

  describe("close", function()
    it("cancels running and waiting requests", function()
      -- Delays come from faults, which the emulator takes when a request
      -- arrives. A configured delay_ms would make the abandoned requests
      -- take the faults of a later test when their delay ends.
      emu:fault{
        { status = 503, body = UNAVAILABLE, times = 1,
          headers = { ["Retry-After"] = "5" } },
        { delay_ms = 1000, times = 3 },
      }
      local client = new_client()
      local outcomes = {}
      local waiting = client:start("wait.bin", function(a, b)
        outcomes[#outcomes + 1] = { name = "wait.bin", result = a, err = b }
      end)
      poll_until(client, waiting, "waiting")
      for i = 1, 3 do
        client:start("run" .. i .. ".bin", function(a, b)
          outcomes[#outcomes + 1] = { name = "run", result = a, err = b }
        end)
      end
      emu:wait_for_requests(4, client)

      client:close()

      assert.equal(4, #outcomes)
      for _, outcome in ipairs(outcomes) do
        assert.is_nil(outcome.result)
        assert.equal("cancelled", outcome.err.kind)
        assert.equal("the client was closed", outcome.err.message)
      end
      assert.equal("cancelled", waiting:status())
      assert.equal(0, client:pending())
      assert.has_error(function()
        client:poll(0)
      end, "appcenter: the client is closed")
      assert.has_error(function()
        client:start("a.bin", function() end)
      end, "appcenter: the client is closed")
      client:close()
    end)

    it("close from a callback during close", function()
      emu:fault{ delay_ms = 1000, times = 3 }
      local client = new_client()
      local kinds = {}
      for i = 1, 3 do
        client:start("a" .. i .. ".bin", function(_, err)
          kinds[#kinds + 1] = err.kind
          client:close()
        end)
      end
      emu:wait_for_requests(3, client)

      client:close()

      assert.same({ "cancelled", "cancelled", "cancelled" }, kinds)
      assert.equal(0, client:pending())
    end)

    it("close raises callback error after the rest", function()
      emu:fault{ delay_ms = 1000, times = 2 }
      local client = new_client()
      local cancelled = 0
      client:start("a.bin", function()
        error("boom in close callback")
      end)
      client:start("b.bin", function()
        cancelled = cancelled + 1
      end)

      local ok, message = pcall(client.close, client)

      assert.is_false(ok)
      assert.matches("boom in close callback", message)
      assert.equal(1, cancelled)
      assert.equal(0, client:pending())
    end)

    it("close from a callback inside poll", function()
      emu:fault{ delay_ms = 1500, times = 1 }
      local client = new_client()
      local outcomes = {}
      local function record(name)
        return function(result, err)
          outcomes[#outcomes + 1] = name .. " " .. (result and "ok" or err.kind)
        end
      end
      client:start("slow.bin", record("slow"))
      -- The slow request takes the delay fault once the emulator has it.
      emu:wait_for_requests(1, client)
      client:start("fast.bin", function(result, err)
        record("fast")(result, err)
        client:close()
      end)

      for _ = 1, 100 do
        if client:pending() == 0 then
          break
        end
        client:poll(50)
      end

      assert.same({ "fast ok", "slow cancelled" }, outcomes)
      assert.equal(0, client:pending())
    end)
    it("close from on_retry cancels retry", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1 }
      local client, hook = client_closed_by_on_retry()
      local outcome, calls = nil, 0
      local request = client:start("a.bin", function(a, b)
        calls = calls + 1
        outcome = { a, b }
      end)

      poll_until_closed(client, hook)

      assert.equal(1, calls)
      assert.is_nil(outcome[1])
      assert.equal("cancelled", outcome[2].kind)
      assert.equal("the client was closed", outcome[2].message)
      assert.equal(1, outcome[2].attempts)
      assert.matches("^appcenter: cancelled: ", tostring(outcome[2]))
      assert.equal("cancelled", request:status())
      assert.equal(0, client:pending())
      assert.is_nil(client:timeout())
      assert.equal(1, requests())
    end)
  end)

  describe("callback errors", function()
    it("poll raises after running the rest", function()
      local client = new_client()
      local finished = 0
      client:start("a.bin", function()
        error("boom in callback")
      end)
      client:start("b.bin", function()
        finished = finished + 1
      end)

      local message
      for _ = 1, 100 do
        if client:pending() == 0 then
          break
        end
        local ok, err = pcall(client.poll, client, 50)
        if not ok then
          message = err
        end
      end

      assert.matches("boom in callback", message)
      assert.equal(0, client:pending())
      assert.equal(1, finished)
      local result = run_one(client, "after.bin")
      assert.is_table(result)
    end)

    it("rejects poll from a callback", function()
      local client = new_client()
      local message
      client:start("a.bin", function()
        message = select(2, pcall(client.poll, client, 0))
      end)

      drive(client)

      assert.equal("appcenter: poll called from a callback that poll runs "
        .. "(a request's callback or an upload's progress callback); return "
        .. "from the callback instead, and the running poll goes on with the "
        .. "other requests", message:match("appcenter: .*$"))
    end)

    it("names a poll that waits in a yielding sleep", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1 }
      local client = new_client{ sleep = function()
        coroutine.yield()
      end, retry = { base_delay_ms = 200, random = function() return 0.99 end } }
      client:start("a.bin", function() end)
      local task = coroutine.create(function()
        for _ = 1, 50 do
          client:poll(100)
        end
      end)

      -- Polls until the retry's sleep yields.
      assert(coroutine.resume(task))
      local ok, message = pcall(client.poll, client, 0)

      assert.is_false(ok)
      assert.equal("appcenter: poll called while another poll of this client waits in its "
        .. "sleep option, which yielded; poll the client from one task only",
        message:match("appcenter: .*$"))
      client:close()
    end)

    it("allows start from a callback", function()
      local client = new_client()
      local second
      client:start("a.bin", function()
        client:start("b.bin", function(result) second = result end)
      end)

      drive(client)

      assert.matches("b%.bin$", second.object_path)
    end)
  end)

  describe("create_credential_async", function()
    it("resumes many coroutines from poll", function()
      emu:config{ delay_ms = 100 }
      local client = new_client()
      local results = {}
      local threads = {}
      for i = 1, 8 do
        local co = coroutine.create(function()
          local name = "co-" .. i .. ".bin"
          local result, meta = client:create_credential_async(name)
          results[i] = { path = result and result.object_path,
            attempts = meta.attempts }
          -- A second request from the same coroutine.
          local again = client:create_credential_async(name)
          results[i].again = again and again.object_path
        end)
        threads[i] = co
        assert.is_true(coroutine.resume(co))
      end

      assert.equal(8, client:pending())
      drive(client)

      for i, co in ipairs(threads) do
        assert.equal("dead", coroutine.status(co))
        assert.matches("co%-" .. i .. "%.bin$", results[i].path)
        assert.matches("co%-" .. i .. "%.bin$", results[i].again)
        assert.equal(1, results[i].attempts)
      end
      assert.equal(16, requests())
    end)

    it("returns errors like the blocking call", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 3,
        headers = SAME_ID }
      local client = fake_client{ random = constant(0) }
      local _, sync_err = client:create_credential("a.bin")
      emu:fault{ status = 503, body = UNAVAILABLE, times = 3,
        headers = SAME_ID }
      local outcome
      local co = coroutine.create(function()
        outcome = { client:create_credential_async("a.bin") }
      end)

      assert.is_true(coroutine.resume(co))
      drive(client)

      assert.is_nil(outcome[1])
      assert.equal(3, outcome[2].attempts)
      assert_same_error(sync_err, outcome[2])
    end)

    it("returns invalid input at once", function()
      local client = new_client()
      local outcome
      local co = coroutine.create(function()
        outcome = { client:create_credential_async("bad:name.bin") }
      end)

      assert.is_true(coroutine.resume(co))

      assert.equal("dead", coroutine.status(co))
      assert.equal("invalid_argument", outcome[2].kind)
      assert.equal(0, client:pending())
    end)

    it("raises outside a coroutine", function()
      local client = new_client()

      local ok, message = pcall(client.create_credential_async, client,
        "a.bin")

      assert.is_false(ok)
      assert.matches("must be called inside a coroutine", message)
      assert.equal(0, client:pending())
    end)

    it("poll raises coroutine errors", function()
      local client = new_client()
      local co = coroutine.create(function()
        client:create_credential_async("a.bin")
        error("boom in coroutine")
      end)
      assert.is_true(coroutine.resume(co))

      local ok, message
      for _ = 1, 100 do
        ok, message = pcall(client.poll, client, 50)
        if not ok or client:pending() == 0 then
          break
        end
      end

      assert.is_false(ok)
      assert.matches("boom in coroutine", message)
      assert.matches("stack traceback", message)
      assert.equal("dead", coroutine.status(co))
    end)

    it("close resumes with cancelled", function()
      emu:fault{ delay_ms = 1000, times = 1 }
      local client = new_client()
      local outcome
      local co = coroutine.create(function()
        outcome = { client:create_credential_async("a.bin") }
      end)
      assert.is_true(coroutine.resume(co))

      client:close()

      assert.equal("dead", coroutine.status(co))
      assert.is_nil(outcome[1])
      assert.equal("cancelled", outcome[2].kind)
    end)

    it("close from on_retry resumes", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1 }
      local client, hook = client_closed_by_on_retry()
      local outcome
      local co = coroutine.create(function()
        outcome = { client:create_credential_async("a.bin") }
      end)
      assert.is_true(coroutine.resume(co))

      poll_until_closed(client, hook)

      assert.equal("dead", coroutine.status(co))
      assert.is_nil(outcome[1])
      assert.equal("cancelled", outcome[2].kind)
      assert.equal("the client was closed", outcome[2].message)
      assert.equal(0, client:pending())
    end)

    it("yields again on foreign resume", function()
      emu:config{ delay_ms = 200 }
      local client = new_client()
      local outcome
      local co = coroutine.create(function()
        outcome = { client:create_credential_async("a.bin") }
      end)
      assert.is_true(coroutine.resume(co))

      -- A scheduler that resumes every coroutine once per frame.
      assert.is_true(coroutine.resume(co, "tick"))
      assert.equal("suspended", coroutine.status(co))
      assert.is_nil(outcome)
      drive(client)

      assert.equal("dead", coroutine.status(co))
      assert.is_table(outcome[1])
    end)

    it("raises before sending when it cannot yield", function()
      local client = new_client()
      local message
      local co = coroutine.create(function()
        -- table.sort calls the comparator from C, which cannot yield.
        local ok, err = pcall(table.sort, { 2, 1 }, function()
          client:create_credential_async("a.bin")
          return false
        end)
        message = not ok and err
      end)

      assert.is_true(coroutine.resume(co))

      assert.equal("dead", coroutine.status(co))
      assert.matches("appcenter: create_credential_async cannot yield here, "
        .. "because a C function (such as table.sort calling its comparator) "
        .. "runs between it and its coroutine; call it from the coroutine's "
        .. "own code, or call create_credential", message, 1, true)
      assert.equal(0, client:pending())
      assert.equal(0, emu:stats().requests)
    end)
  end)

  describe("waiting", function()
    it("poll names the type of a timeout that is not a number", function()
      local client = new_client()

      assert.has_error(function()
        client:poll("10")
      end, "bad argument #1 to 'poll' (timeout_ms must be a number from 0 "
        .. "to 86400000, got string)")
      client:close()
    end)

    it("calls back a request whose now closes the client", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 5 }
      -- The first reading after on_retry, which schedules the retry,
      -- closes the client.
      local retried, closed = false, false
      local client
      client = new_client{ now = function()
        if retried and not closed then
          closed = true
          client:close()
        end
        return core.monotonic()
      end, retry = { base_delay_ms = 1, on_retry = function()
        retried = true
      end } }
      local ended_err
      client:start("a.bin", function(_, err)
        ended_err = err
      end)

      poll_until_ended(client, function()
        return ended_err
      end)

      assert.is_true(closed)
      assert.is_table(ended_err)
      assert.equal("cancelled", ended_err.kind)
      assert.equal(0, client:pending())
    end)

    for _, case in ipairs{
      { "raises", function() error("fake clock failed", 0) end, "the now option raised an error", 0 },
      { "returns NaN", function() return 0 / 0 end, "the now option returned nan", 0 },
      { "raises while it waits", function() error("fake clock failed", 0) end,
        "the now option raised an error", 1 },
      { "returns NaN while it waits", function() return 0 / 0 end, "the now option returned nan", 1 },
    } do
      it("ends a request when now " .. case[1], function()
        emu:fault{ status = 503, body = UNAVAILABLE, times = 5 }
        -- Real readings until on_retry, then case[4] more: the first
        -- schedules the retry, and later ones check its timer. Then bad
        -- ones.
        local good_left
        local client = new_client{ now = function()
          if good_left == 0 then
            return case[2]()
          elseif good_left then
            good_left = good_left - 1
          end
          return core.monotonic()
        end, retry = { base_delay_ms = 1, on_retry = function()
          good_left = case[4]
        end } }
        local ended_err
        client:start("a.bin", function(_, err)
          ended_err = err
        end)

        local started = core.monotonic()
        poll_until_ended(client, function()
          return ended_err
        end)

        assert.is_true(core.monotonic() - started < 1.5)
        assert.is_table(ended_err)
        assert.equal(503, ended_err.status)
        assert.matches("(not retried: " .. case[3] .. ")", ended_err.message, 1, true)
        assert.equal(0, client:pending())
        client:close()
      end)
    end

    it("runs on_retry once when now raises", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1 }
      local retries, armed = 0, false
      local client = new_client{ now = function()
        if armed then
          armed = false
          error("fake clock failed", 0)
        end
        return core.monotonic()
      end, retry = { base_delay_ms = 1, on_retry = function()
        retries = retries + 1
        armed = true
      end } }
      local ended_err
      client:start("a.bin", function(_, err)
        ended_err = err
      end)

      local messages = poll_until_ended(client, function()
        return ended_err
      end)

      assert.equal(1, retries)
      assert.same({ "fake clock failed" }, messages)
      assert.is_table(ended_err)
      assert.equal(503, ended_err.status)
      assert.equal(1, emu:stats().requests)
      client:close()
    end)

    it("ends a request when now turns NaN", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 50 }
      -- A number when the request starts, then NaN.
      local calls = 0
      local client = new_client{ now = function()
        calls = calls + 1
        return calls == 1 and 0 or 0 / 0
      end, retry = { base_delay_ms = 1 } }
      local ended_err
      client:start("a.bin", function(_, err)
        ended_err = err
      end)

      local started = core.monotonic()
      client:poll(100)
      local elapsed = core.monotonic() - started
      local raised = poll_until_ended(client, function()
        return ended_err
      end)

      assert.is_true(elapsed < 0.6, "poll(100) took " .. elapsed .. " s")
      assert.same({}, raised)
      assert.is_table(ended_err)
      assert.equal(1, ended_err.attempts)
      assert.matches("(not retried: the now option returned nan, so the deadline counts as passed)",
        ended_err.message, 1, true)
      client:close()
    end)

    it("poll returns by its timeout", function()
      emu:fault{ delay_ms = 1500, times = 1 }
      local client = new_client()
      client:start("slow.bin", function() end)

      local started = core.monotonic()
      local count = client:poll(100)
      local elapsed = core.monotonic() - started

      assert.equal(0, count)
      assert.is_true(elapsed >= 0.09, "poll(100) took " .. elapsed .. " s")
      assert.is_true(elapsed < 0.6, "poll(100) took " .. elapsed .. " s")
      emu:wait_for_requests(1, client)
      client:close()
    end)

    it("poll returns by its timeout during retry wait", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1,
        headers = { ["Retry-After"] = "3" } }
      local client = new_client()
      local request = client:start("a.bin", function() end)
      poll_until(client, request, "waiting")

      local started = core.monotonic()
      local count = client:poll(100)
      local elapsed = core.monotonic() - started

      assert.equal(0, count)
      assert.equal("waiting", request:status())
      assert.is_true(elapsed >= 0.09, "poll(100) took " .. elapsed .. " s")
      assert.is_true(elapsed < 0.6, "poll(100) took " .. elapsed .. " s")
      client:close()
    end)

    it("perform does not wait", function()
      emu:fault{ delay_ms = 1500, times = 1 }
      local client = new_client()
      client:start("slow.bin", function() end)

      local started = core.monotonic()
      local count = client:perform()

      assert.equal(0, count)
      assert.is_true(core.monotonic() - started < 0.3)
      emu:wait_for_requests(1, client)
      client:close()
    end)

    it("poll returns at once when idle", function()
      local client = new_client()

      local started = core.monotonic()
      local count = client:poll(2000)

      assert.equal(0, count)
      assert.is_true(core.monotonic() - started < 0.3)
    end)

    it("runs in an external select loop", function()
      local socket = require("socket")
      emu:config{ delay_ms = 50 }
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1 }
      local client = fake_client{ random = constant(0.5) }
      local results = {}
      for i = 1, 3 do
        client:start("ext-" .. i .. ".bin", function(result)
          results[#results + 1] = result
        end)
      end

      local saw_socket = false
      for _ = 1, 500 do
        if client:pending() == 0 then
          break
        end
        local readers, writers = {}, {}
        for _, entry in ipairs(client:sockets()) do
          local fd = entry.fd
          local wrapper = { getfd = function() return fd end,
            dirty = function() return false end }
          if entry.read then
            readers[#readers + 1] = wrapper
          end
          if entry.write then
            writers[#writers + 1] = wrapper
          end
          saw_socket = true
        end
        local timeout_ms = client:timeout() or 100
        socket.select(readers, writers, math.min(timeout_ms, 100) / 1000)
        client:perform()
      end

      assert.equal(0, client:pending())
      assert.equal(3, #results)
      assert.is_true(saw_socket)
      assert.equal(4, requests())
    end)
  end)

  describe("load", function()
    it("completes 200 delayed requests", function()
      emu:config{ delay_ms = 200 }
      local client = new_client{ max_connections = 32 }
      local ok, failed = 0, 0
      for i = 1, 200 do
        assert.is_table(client:start("file-" .. i .. ".bin", function(result)
          if result then
            ok = ok + 1
          else
            failed = failed + 1
          end
        end))
      end
      assert.equal(200, client:pending())

      local started = core.monotonic()
      drive(client, 2000)
      local elapsed = core.monotonic() - started

      assert.equal(200, ok)
      assert.equal(0, failed)
      assert.is_true(emu:stats().connections <= 32)
      assert.equal(200, requests())
      -- 200 requests of 200 ms on 32 connections need 7 rounds, 1.4 s. The
      -- bound only catches requests that run one after another (40 s).
      assert.is_true(elapsed < 20, "took " .. elapsed .. " s")
    end)
  end)
end)
