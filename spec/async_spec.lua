-- appcenter.core non-blocking requests: start, poll, cancel, close and
-- callback errors, against the local emulator.

local core = require("appcenter.core")
local emulator = require("spec.support.emulator")

describe("appcenter.core async", function()
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

  local function new_client(extra)
    local opts = {
      endpoint = emu.url, project_id = emu.project_id, token = emu.token,
    }
    for k, v in pairs(extra or {}) do
      opts[k] = v
    end
    return assert(core.new(opts))
  end

  -- Polls until nothing is in flight, at most max_polls times.
  local function drive(client, max_polls)
    for _ = 1, max_polls or 500 do
      if client:pending() == 0 then
        return
      end
      client:poll(50)
    end
    error("requests still in flight after polling")
  end

  -- Starts one request and returns the callback's arguments.
  local function run_one(client, file_name)
    local outcome
    assert(client:start(file_name, function(a, b)
      outcome = { a, b }
    end))
    drive(client)
    return outcome[1], outcome[2]
  end

  it("returns the same result as the blocking call", function()
    local client = new_client()
    local result, meta = run_one(client, "async.bin")
    local sync = client:create_credential("async.bin")
    assert.matches("async%.bin$", result.object_path)
    assert.equals(200, meta.status)
    assert.is_string(meta.request_id)
    assert.same(sync.policy.statement.action, result.policy.statement.action)
  end)

  it("returns the same error as the blocking call", function()
    local client = new_client()
    local body = '{"error_code":"WKS.0503","error_msg":"down"}'
    emu:fault({ status = 503, body = body, times = 2,
      headers = { ["X-Request-Id"] = "same-id" } })
    local _, async_err = run_one(client, "a.bin")
    local _, sync_err = client:create_credential("a.bin")
    for _, field in ipairs({ "kind", "status", "code", "message",
                             "request_id", "retryable" }) do
      assert.equals(sync_err[field], async_err[field])
    end
    assert.equals(tostring(sync_err), tostring(async_err))
  end)

  it("rejects invalid input at start", function()
    local client = new_client()
    local request, err = client:start("bad:name", function() end)
    assert.is_nil(request)
    assert.equals("invalid_argument", err.kind)
    assert.equals(0, client:pending())
    assert.equals(0, emu:stats().requests)
  end)

  it("reads the options of start", function()
    local client = new_client()
    local outcomes = {}
    local function record(result)
      outcomes[#outcomes + 1] = result and "ok" or "failed"
    end
    assert.is_not_nil(client:start("empty.bin", record, {}))
    assert.is_not_nil(client:start("timed.bin", record, { timeout_ms = 5000 }))
    local ok, message = pcall(client.start, client, "bad.bin", record,
      { timeout_ms = "soon" })
    local zero_ok, zero_message = pcall(client.start, client, "zero.bin",
      record, { timeout_ms = 0 })
    local fraction_ok, fraction_message = pcall(client.start, client,
      "fraction.bin", record, { timeout_ms = 1.9 })
    local key_ok, key_message = pcall(client.start, client, "key.bin",
      record, { 5000 })
    for _ = 1, 100 do
      if client:pending() == 0 then
        break
      end
      client:poll(50.5)
    end

    assert.same({ "ok", "ok" }, outcomes)
    assert.is_false(ok)
    assert.equals("start: option 'timeout_ms' must be a number, got string",
      message)
    assert.is_false(zero_ok)
    assert.matches("(timeout_ms must be a whole number from 1 to 86400000)",
      zero_message, 1, true)
    assert.is_false(fraction_ok)
    assert.matches("(timeout_ms must be a whole number from 1 to 86400000)",
      fraction_message, 1, true)
    assert.is_false(key_ok)
    assert.equals("start: option names must be strings, got the number "
      .. "key 1; pass options as name = value", key_message)
  end)

  it("raises when an option's __index closes the client", function()
    local client = new_client()
    local calls = 0
    local call_opts = setmetatable({}, { __index = function()
      client:close()
    end })

    assert.has_error(function()
      client:start("a.bin", function()
        calls = calls + 1
      end, call_opts)
    end, "appcenter.core: the client is closed")
    assert.equals(0, calls)
    assert.equals(0, client:pending())
    assert.equals(0, emu:stats().requests)
  end)

  it("raises on a missing callback", function()
    local client = new_client()
    assert.has_error(function()
      client:start("a.bin")
    end)
  end)

  it("completes 200 requests within the connection limit", function()
    emu:config({ delay_ms = 200 })
    local client = new_client({ max_connections = 32 })
    local ok, failed = 0, 0
    for i = 1, 200 do
      client:start("file-" .. i .. ".bin", function(result)
        if result then ok = ok + 1 else failed = failed + 1 end
      end)
    end
    assert.equals(200, client:pending())
    drive(client, 2000)
    assert.equals(200, ok)
    assert.equals(0, failed)
    assert.is_true(emu:stats().connections <= 32)
  end)

  it("reuses connections between requests", function()
    local client = new_client()
    for _ = 1, 20 do
      local result = run_one(client, "a.bin")
      assert.is_table(result)
    end
    assert.equals(1, emu:stats().connections)
  end)

  it("names the queue in a queued timeout", function()
    emu:config({ delay_ms = 1500 })
    local client = new_client({ max_connections = 1, timeout_ms = 400 })
    local errors = {}
    for index = 1, 2 do
      client:start("queued.bin", function(_, err)
        errors[index] = err
      end)
    end
    drive(client, 100)
    client:close()

    -- The first request keeps the only connection until it times out.
    assert.equals("timeout", errors[1].kind)
    assert.no_match("free connection", errors[1].message)
    assert.equals("timeout", errors[2].kind)
    assert.is_true(errors[2].retryable)
    assert.matches("free connection", errors[2].message)
    assert.matches("max_connections %(1%)", errors[2].message)
    assert.no_match("resolve", errors[2].message)
  end)

  it("blames the server after a short queue wait", function()
    -- The first request frees the connection after 100 ms, and the
    -- server then keeps the second one past its timeout.
    emu:fault({ { delay_ms = 100 }, { delay_ms = 1500 } })
    local client = new_client({ max_connections = 1, timeout_ms = 500 })
    local outcomes = {}
    for index = 1, 2 do
      client:start("queued.bin", function(result, err)
        outcomes[index] = { result = result, err = err }
      end)
    end
    drive(client, 100)
    client:close()

    assert.is_table(outcomes[1].result)
    local err = outcomes[2].err
    assert.equals("timeout", err.kind)
    assert.matches("waiting for the server", err.message, 1, true)
    assert.no_match("raise max_connections", err.message, 1, true)
  end)

  it("does not block poll past its timeout", function()
    emu:fault({ delay_ms = 1500 })
    local client = new_client()
    client:start("slow.bin", function() end)
    local started = core.monotonic()
    local done = client:poll(100)
    local elapsed = core.monotonic() - started
    assert.equals(0, done)
    assert.is_true(elapsed < 0.6, "poll(100) took " .. elapsed .. " s")
    emu:wait_for_requests(1, client)
    client:close()
  end)

  it("does not wait in perform", function()
    emu:fault({ delay_ms = 1500 })
    local client = new_client()
    client:start("slow.bin", function() end)
    local started = core.monotonic()
    assert.equals(0, client:perform())
    assert.is_true(core.monotonic() - started < 0.3)
    emu:wait_for_requests(1, client)
    client:close()
  end)

  it("reports sockets and timer while in flight", function()
    emu:fault({ delay_ms = 500 })
    local client = new_client()
    client:start("a.bin", function() end)
    -- Under load the connection may take a few polls to be set up.
    local sockets = {}
    for _ = 1, 50 do
      client:poll(20)
      sockets = client:sockets()
      if #sockets > 0 then
        break
      end
    end
    assert.equals(1, #sockets)
    assert.is_number(sockets[1].fd)
    assert.is_true(sockets[1].read)
    assert.is_number(client:timeout())
    client:close()
  end)

  it("cancels a request", function()
    emu:fault({ delay_ms = 1000 })
    local client = new_client()
    local outcome
    local request = client:start("a.bin", function(a, b) outcome = { a, b } end)
    emu:wait_for_requests(1, client)
    assert.is_true(request:cancel())
    assert.is_nil(outcome[1])
    assert.equals("cancelled", outcome[2].kind)
    assert.is_false(outcome[2].retryable)
    assert.equals("cancelled", request:status())
    assert.equals(0, client:pending())
  end)

  it("returns false when cancelling twice", function()
    local client = new_client()
    local request = client:start("a.bin", function() end)
    assert.is_true(request:cancel())
    assert.is_false(request:cancel())
  end)

  it("calls back once for a finished request", function()
    local client = new_client()
    local calls = 0
    local request = client:start("a.bin", function() calls = calls + 1 end)
    drive(client)
    assert.equals("done", request:status())
    assert.is_false(request:cancel())
    assert.equals(1, calls)
  end)

  it("cancels requests in flight on close", function()
    emu:config({ delay_ms = 1000 })
    local client = new_client()
    local kinds = {}
    for i = 1, 5 do
      client:start("a" .. i .. ".bin", function(_, err)
        kinds[#kinds + 1] = err.kind
      end)
    end
    emu:wait_for_requests(5, client)
    client:close()
    assert.equals(5, #kinds)
    for _, kind in ipairs(kinds) do
      assert.equals("cancelled", kind)
    end
  end)

  it("calls back every request when a callback closes", function()
    emu:config({ delay_ms = 1000 })
    local client = new_client()
    local kinds = {}
    for i = 1, 4 do
      client:start("a" .. i .. ".bin", function(_, err)
        kinds[#kinds + 1] = err.kind
        client:close()
      end)
    end
    emu:wait_for_requests(4, client)
    client:close()
    assert.same({ "cancelled", "cancelled", "cancelled", "cancelled" }, kinds)
    assert.equals(0, client:pending())
  end)

  it("rejects start from a callback during close", function()
    emu:fault({ delay_ms = 1000 })
    local client = new_client()
    local restarted
    client:start("a.bin", function()
      restarted = pcall(client.start, client, "again.bin", function() end)
    end)
    emu:wait_for_requests(1, client)
    client:close()
    assert.is_false(restarted)
    assert.equals(0, client:pending())
  end)

  it("reports a callback error after the rest", function()
    local client = new_client()
    local finished = 0
    client:start("a.bin", function() error("boom in callback") end)
    client:start("b.bin", function() finished = finished + 1 end)
    local ok, err
    for _ = 1, 100 do
      ok, err = pcall(client.poll, client, 50)
      if not ok or client:pending() == 0 then
        break
      end
    end
    assert.is_false(ok)
    assert.matches("boom in callback", err)
    drive(client)
    assert.equals(1, finished)
    local result = run_one(client, "after.bin")
    assert.is_table(result)
  end)

  it("rejects poll from a callback", function()
    local client = new_client()
    local inner
    client:start("a.bin", function()
      inner = select(2, pcall(client.poll, client, 0))
    end)
    drive(client)
    assert.matches("poll called from a callback that poll runs", inner,
      1, true)
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

  it("frees requests when the client is collected", function()
    emu:config({ delay_ms = 1000 })
    local calls = 0
    do
      local client = new_client()
      for i = 1, 10 do
        client:start("gc" .. i .. ".bin", function() calls = calls + 1 end)
      end
      emu:wait_for_requests(10, client)
    end
    collectgarbage()
    collectgarbage()
    assert.equals(0, calls)
  end)

  it("keeps a request usable after its client is collected", function()
    emu:config({ delay_ms = 1000 })
    local request
    do
      local client = new_client()
      request = client:start("a.bin", function() end)
    end
    collectgarbage()
    collectgarbage()
    assert.equals("running", request:status())
    assert.is_true(request:cancel())
  end)
end)
