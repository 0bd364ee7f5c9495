-- Retries of the Lua wrapper against the local App Center emulator.
--
-- Every client gets a fake clock. Its now() returns the real monotonic time
-- plus all the seconds passed to sleep(), and sleep() only records them. Attempts take real time but no test waits for a backoff.

local appcenter = require("appcenter")
local budget = require("appcenter.budget")
local core = require("appcenter.core")
local retry = require("appcenter.retry")
local emulator = require("spec.support.emulator")

local UNAVAILABLE = '{"error_code":"WKS.0503","error_msg":"unavailable"}'
local FAILED = '{"error_code":"WKS.0001","error_msg":"request failed"}'

local DAY_NAMES = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" }
local MONTH_NAMES = {
  "Jan", "Feb", "Mar", "Apr", "May", "Jun",
  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
}

-- Formats an IMF-fixdate without os.date's locale-dependent names.
local function http_date(epoch)
  local t = os.date("!*t", epoch)
  return ("%s, %02d %s %04d %02d:%02d:%02d GMT"):format(
    DAY_NAMES[t.wday], t.day, MONTH_NAMES[t.month], t.year,
    t.hour, t.min, t.sec)
end

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

-- Park-Miller generator, so that the draws do not depend on the Lua
-- version's math.random.
local function seeded_random(seed)
  local state = seed
  return function()
    state = (state * 16807) % 2147483647
    return (state - 1) / 2147483646
  end
end

describe("retry", function()
  local emu, clock

  setup(function()
    emu = emulator.start{}
  end)

  teardown(function()
    emu:stop()
  end)

  before_each(function()
    emu:reset()
    clock = fake_clock()
  end)

  -- Returns a client of the emulator that uses `clock`. The `extra` table
  -- adds or replaces options. Every draw is 0.5 unless `retry_opts` sets
  -- `random`, because specs count the sleeps and math.random can draw a
  -- 0 ms backoff, which the wrapper does not sleep.
  local function new_client(retry_opts, extra)
    if retry_opts == nil then
      retry_opts = {}
    end
    if retry_opts and retry_opts.random == nil then
      retry_opts.random = constant(0.5)
    end
    local opts = {
      endpoint = emu.url,
      project_id = emu.project_id,
      token = emu.token,
      now = clock.now,
      sleep = clock.sleep,
      retry = retry_opts,
    }
    for name, value in pairs(extra or {}) do
      opts[name] = value
    end
    return appcenter.new(opts)
  end

  local function requests()
    return emu:stats().requests
  end

  describe("on 503", function()
    it("succeeds after two 503s", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 2 }
      local client = new_client()

      local result, meta = client:create_credential("replay.bin")

      assert.is_table(result)
      assert.is_string(result.object_path)
      assert.equal(3, meta.attempts)
      assert.equal(3, requests())
      assert.equal(2, #clock.sleeps)
      client:close()
    end)

    it("stops at max_attempts", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 5 }
      local client = new_client{ max_attempts = 4 }

      local result, err = client:create_credential("replay.bin")

      assert.is_nil(result)
      assert.equal(503, err.status)
      assert.equal("WKS.0503", err.code)
      assert.equal(4, err.attempts)
      assert.equal(4, requests())
      assert.equal(3, #clock.sleeps)
      assert.matches("(gave up after 4 attempts)", err.message, 1, true)
    end)

    it("one attempt adds no count", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1 }
      local client = new_client{ max_attempts = 1 }

      local _, err = client:create_credential("replay.bin")

      assert.equal(1, err.attempts)
      assert.is_nil(err.message:find("gave up", 1, true), err.message)
    end)

    it("keeps error metatable", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 3 }
      local client = new_client()

      local _, err = client:create_credential("replay.bin")

      assert.equal(3, err.attempts)
      assert.is_not_nil(getmetatable(err))
      assert.is_nil(tostring(err):find("\n"))
      assert.is_not_nil(tostring(err):find("503", 1, true))
    end)

    it("reports elapsed time of all attempts", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1,
        headers = { ["Retry-After"] = "2" } }
      local client = new_client()

      local _, meta = client:create_credential("replay.bin")

      assert.equal(2, meta.attempts)
      assert.is_true(meta.elapsed_ms >= 2000)
      assert.is_true(meta.elapsed_ms < 3000)
    end)

    it("keeps the fraction of elapsed time", function()
      -- The call starts at the first reading, and every later one is
      -- 2.5 ms on.
      local readings = 0
      local client = new_client(nil, { now = function()
        readings = readings + 1
        return readings == 1 and 100 or 100.0025
      end })

      local _, meta = client:create_credential("replay.bin")

      assert.is_true(math.abs(meta.elapsed_ms - 2.5) < 1e-6,
        tostring(meta.elapsed_ms))
    end)
  end)

  describe("final errors", function()
    for _, status in ipairs{ 400, 401, 403, 404, 405 } do
      it("no retry on " .. status, function()
        emu:fault{ status = status, body = FAILED, times = 3 }
        local client = new_client()

        local result, err = client:create_credential("replay.bin")

        assert.is_nil(result)
        assert.equal(status, err.status)
        assert.equal(1, err.attempts)
        assert.equal(1, requests())
        assert.equal(0, #clock.sleeps)
      end)
    end

    it("no retry on invalid file name", function()
      local client = new_client()

      local result, err = client:create_credential("bad:name.bin")

      assert.is_nil(result)
      assert.equal("invalid_argument", err.kind)
      assert.equal(1, err.attempts)
      assert.equal(0, requests())
      assert.equal(0, #clock.sleeps)
    end)

    it("no retry on invalid response", function()
      emu:fault{ status = 200, body = "not json", times = 3 }
      local client = new_client()

      local result, err = client:create_credential("replay.bin")

      assert.is_nil(result)
      assert.equal("invalid_response", err.kind)
      assert.equal(1, err.attempts)
      assert.equal(1, requests())
    end)

    it("no retry when flagged final", function()
      local err = { kind = "invalid_response", retryable = true }

      assert.is_false(retry.is_retryable(err))
      assert.is_false(retry.is_retryable{ kind = "http", status = 404,
        retryable = false })
      assert.is_true(retry.is_retryable{ kind = "http", status = 403,
        code = "RequestTimeTooSkewed", retryable = true })
      assert.is_false(retry.is_retryable{ kind = "network" })
      assert.is_true(retry.is_retryable{ kind = "network", retryable = true })
    end)

    it("raises on non-string file name", function()
      local client = new_client()

      assert.has_error(function()
        client:create_credential(42)
      end, "bad argument #1 to 'create_credential' (string expected, got number)")
      assert.equal(0, requests())
    end)
  end)

  describe("Retry-After", function()
    it("honours delta-seconds", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1,
        headers = { ["Retry-After"] = "2" } }
      local client = new_client()

      local result = client:create_credential("replay.bin")

      assert.is_table(result)
      assert.same({ 2 }, clock.sleeps)
    end)

    it("honours it on 429", function()
      emu:fault{ status = 429, body = FAILED, times = 1,
        headers = { ["Retry-After"] = "3" } }
      local client = new_client()

      local result = client:create_credential("replay.bin")

      assert.is_table(result)
      assert.same({ 3 }, clock.sleeps)
    end)

    it("clamps delta-seconds", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1,
        headers = { ["Retry-After"] = "30" } }
      local client = new_client{ max_delay_ms = 1000 }

      local result = client:create_credential("replay.bin")

      assert.is_table(result)
      assert.same({ 1 }, clock.sleeps)
    end)

    it("honours HTTP date", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1,
        headers = { ["Retry-After"] = http_date(os.time() + 3) } }
      local client = new_client()

      local result = client:create_credential("replay.bin")

      assert.is_table(result)
      assert.equal(1, #clock.sleeps)
      -- os.time() may tick between formatting and parsing.
      assert.is_true(clock.sleeps[1] >= 2)
      assert.is_true(clock.sleeps[1] <= 3)
    end)

    it("clamps HTTP date", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1,
        headers = { ["Retry-After"] = http_date(os.time() + 40) } }
      local client = new_client{ max_delay_ms = 1500 }

      local result = client:create_credential("replay.bin")

      assert.is_table(result)
      assert.same({ 1.5 }, clock.sleeps)
    end)

    it("ignored on 500", function()
      emu:fault{ status = 500, body = FAILED, times = 1,
        headers = { ["Retry-After"] = "2" } }
      local client = new_client{ random = constant(0.5) }

      local result = client:create_credential("replay.bin")

      assert.is_table(result)
      assert.same({ 0.05 }, clock.sleeps)
    end)

    it("invalid value uses backoff", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1,
        headers = { ["Retry-After"] = "soon" } }
      local client = new_client{ random = constant(0.5) }

      local result = client:create_credential("replay.bin")

      assert.is_table(result)
      assert.same({ 0.05 }, clock.sleeps)
    end)

    it("parses delta-seconds", function()
      assert.equal(120, retry.parse_retry_after("120", 0))
      assert.equal(0, retry.parse_retry_after("0", 0))
      assert.equal(7, retry.parse_retry_after(" 7 ", 0))
      assert.is_nil(retry.parse_retry_after("-5", 0))
      assert.is_nil(retry.parse_retry_after("1.5", 0))
      assert.is_nil(retry.parse_retry_after("", 0))
      assert.is_nil(retry.parse_retry_after(nil, 0))
    end)

    it("cuts a huge delta-seconds to a year", function()
      for _, value in ipairs{ "99999999999999999999", "9223372036854775808" } do
        assert.equal(365 * 86400, retry.parse_retry_after(value, 0), value)
      end
    end)

    it("returns the error for a huge Retry-After", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1,
        headers = { ["Retry-After"] = "99999999999999999999" } }
      local client = new_client{ deadline_ms = 4000 }

      local result, err = client:create_credential("replay.bin")

      assert.is_nil(result)
      assert.equal(503, err.status)
      assert.equal(1, requests())
      assert.matches("%(not retried: Retry%-After asks for 31536000 s, more "
        .. "than the time left before the deadline%)$", err.message)
    end)

    it("parses HTTP dates", function()
      local cases = {
        ["Sun, 06 Nov 1994 08:49:37 GMT"] = 784111777,
        ["Thu, 01 Jan 1970 00:00:00 GMT"] = 0,
        ["Thu, 29 Feb 2024 23:59:59 GMT"] = 1709251199,
        ["Fri, 01 Mar 2024 00:00:00 GMT"] = 1709251200,
        ["Fri, 31 Dec 1999 23:59:60 GMT"] = 946684800,
      }
      for value, epoch in pairs(cases) do
        assert.equal(epoch, retry.parse_http_date(value))
      end
    end)

    it("rejects other date forms", function()
      local invalid = {
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "Sun, 32 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 6 Nov 1994 08:49:37 GMT",
      }
      for _, value in ipairs(invalid) do
        assert.is_nil(retry.parse_retry_after(value, 0), value)
      end
    end)

    it("date in the past means no wait", function()
      local value = "Sun, 06 Nov 1994 08:49:37 GMT"

      assert.equal(0, retry.parse_retry_after(value, 784111777 + 60))
      assert.equal(60, retry.parse_retry_after(value, 784111777 - 60))
    end)
  end)

  describe("deadline", function()
    it("Retry-After beyond deadline stops", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 3,
        headers = { ["Retry-After"] = "5" } }
      local client = new_client{ deadline_ms = 4000 }

      local result, err = client:create_credential("replay.bin")

      assert.is_nil(result)
      assert.equal(503, err.status)
      assert.equal("5", err.retry_after)
      assert.equal(1, err.attempts)
      assert.equal(1, requests())
      assert.equal(0, #clock.sleeps)
      assert.matches("%(not retried: Retry%-After asks for 5 s, more than "
        .. "the time left before the deadline%)$", err.message)
    end)

    it("Retry-After date beyond deadline stops", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 3,
        headers = { ["Retry-After"] = http_date(os.time() + 30) } }
      local client = new_client{ deadline_ms = 10000, max_delay_ms = 1000 }

      local _, err = client:create_credential("replay.bin")

      assert.equal(1, err.attempts)
      assert.equal(1, requests())
      assert.equal(0, #clock.sleeps)
    end)

    it("no attempt starts after deadline", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 10 }
      local client = new_client{
        max_attempts = 10, deadline_ms = 1000,
        base_delay_ms = 400, max_delay_ms = 400,
        random = constant(0.9999),
      }

      local _, err = client:create_credential("replay.bin")

      -- Two 400 ms delays fit into 1000 ms, a third one does not.
      assert.equal(3, err.attempts)
      assert.equal(3, requests())
      assert.same({ 0.4, 0.4 }, clock.sleeps)
      assert.matches("%(not retried: the backoff delay would end after the "
        .. "deadline%)$", err.message)
    end)

    it("cuts attempt timeout to deadline", function()
      emu:fault{ delay_ms = 1500, times = 1 }
      local client = new_client({ deadline_ms = 300, random = constant(0.5) },
        { timeout_ms = 10000 })

      local started = core.monotonic()
      local result, err = client:create_credential("replay.bin")
      local waited = core.monotonic() - started

      assert.is_nil(result)
      assert.equal("timeout", err.kind)
      assert.equal(1, err.attempts)
      assert.is_true(waited < 1.2)
    end)

    it("says when the deadline passed in an attempt", function()
      emu:fault{ delay_ms = 1500, times = 1 }
      local client = new_client({ deadline_ms = 300 },
        { timeout_ms = 10000, now = core.monotonic, sleep = core.sleep })

      local _, err = client:create_credential("replay.bin")

      assert.equal("timeout", err.kind)
      assert.equal(1, err.attempts)
      assert.matches("%(not retried: the deadline has passed; "
        .. "retry%.deadline_ms cut this attempt's timeout to the time left%)$",
        err.message)
    end)

    it("names the deadline in the last attempt", function()
      for _, max_attempts in ipairs{ 1, 2 } do
        emu:reset()
        emu:fault{ delay_ms = 1500, times = 2 }
        local client = new_client({ deadline_ms = 300,
          max_attempts = max_attempts, base_delay_ms = 1, max_delay_ms = 1 },
          { timeout_ms = 10000, now = core.monotonic, sleep = core.sleep })
        if max_attempts == 2 then
          -- The first attempt ends at its own timeout, well before the
          -- deadline, so the second one is cut to the time left.
          client = new_client({ deadline_ms = 700, max_attempts = 2,
            base_delay_ms = 1, max_delay_ms = 1 },
            { timeout_ms = 500, now = core.monotonic, sleep = core.sleep })
        end

        local _, err = client:create_credential("replay.bin")

        assert.equal("timeout", err.kind)
        assert.equal(max_attempts, err.attempts)
        local tail = max_attempts > 1
          and (" %(gave up after " .. max_attempts .. " attempts%)$") or "$"
        assert.matches("%(retry%.deadline_ms cut this attempt's timeout to "
          .. "the time left%)" .. tail, err.message)
        assert.is_nil(err.message:find("the limits are timeout_ms", 1, true),
          err.message)
      end
    end)

    it("says the deadline passed before a 503 arrived", function()
      -- The clock jumps past the deadline while the attempt runs.
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1 }
      local readings = 0
      local client = new_client({ deadline_ms = 1000 }, { now = function()
        readings = readings + 1
        return readings <= 2 and 100 or 102
      end })

      local _, err = client:create_credential("replay.bin")

      assert.equal(503, err.status)
      assert.equal(1, err.attempts)
      assert.matches("%(not retried: the deadline has passed%)$", err.message)
    end)
  end)

  describe("backoff", function()
    it("jitter stays within bounds", function()
      local policy = {
        base_delay_ms = 100, max_delay_ms = 5000,
        random = seeded_random(20240601),
      }

      for attempt = 1, 10 do
        local cap = math.min(5000, 100 * 2 ^ (attempt - 1))
        local lowest, highest = math.huge, -math.huge
        for _ = 1, 2000 do
          local delay_ms = retry.backoff_ms(policy, attempt)
          assert.is_true(delay_ms >= 0)
          assert.is_true(delay_ms <= cap)
          assert.equal(math.floor(delay_ms), delay_ms)
          lowest = math.min(lowest, delay_ms)
          highest = math.max(highest, delay_ms)
        end
        -- Full jitter: the draws cover the whole interval.
        assert.is_true(lowest <= cap * 0.05)
        assert.is_true(highest >= cap * 0.95)
      end
    end)

    it("jitter mean near half cap", function()
      local policy = {
        base_delay_ms = 100, max_delay_ms = 5000,
        random = seeded_random(7),
      }
      local total, draws = 0, 5000

      for _ = 1, draws do
        total = total + retry.backoff_ms(policy, 4)
      end

      local mean = total / draws
      assert.is_true(mean > 380)
      assert.is_true(mean < 420)
    end)

    it("cap doubles per attempt", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 4 }
      local client = new_client{
        max_attempts = 5, random = constant(0.99999),
      }

      local result, meta = client:create_credential("replay.bin")

      assert.is_table(result)
      assert.equal(5, meta.attempts)
      assert.same({ 0.1, 0.2, 0.4, 0.8 }, clock.sleeps)
    end)

    it("cap stops at max_delay_ms", function()
      local policy = {
        base_delay_ms = 100, max_delay_ms = 250, random = constant(0.99999),
      }

      assert.equal(100, retry.backoff_ms(policy, 1))
      assert.equal(200, retry.backoff_ms(policy, 2))
      assert.equal(250, retry.backoff_ms(policy, 3))
      assert.equal(250, retry.backoff_ms(policy, 60))
    end)

    it("zero draw means no sleep", function()
      emu:fault{ status = 502, body = FAILED, times = 2 }
      local client = new_client{ random = constant(0) }

      local result, meta = client:create_credential("replay.bin")

      assert.is_table(result)
      assert.equal(3, meta.attempts)
      assert.equal(0, #clock.sleeps)
    end)
  end)

  describe("budget", function()
    local SMALL = {
      capacity = 10, retry_cost = 5, timeout_cost = 10, success_refund = 1,
    }

    it("bucket withdraws and refunds", function()
      local bucket = budget.new(SMALL)

      assert.is_true(bucket:withdraw(5))
      assert.is_true(bucket:withdraw(5))
      assert.is_false(bucket:withdraw(5))
      assert.equal(0, bucket.tokens)
      bucket:refund(nil)
      assert.equal(1, bucket.tokens)
      bucket:refund(5)
      assert.equal(6, bucket.tokens)
      bucket:refund(10)
      assert.equal(10, bucket.tokens)
    end)

    it("timeout costs more", function()
      local bucket = budget.new(SMALL)

      assert.equal(10, bucket:cost_of{ kind = "timeout" })
      assert.equal(5, bucket:cost_of{ kind = "http", status = 503 })
      assert.equal(5, bucket:cost_of{ kind = "network" })
    end)

    it("exhausted budget stops retries", function()
      local client = new_client{ budget = SMALL, random = constant(0) }

      emu:fault{ status = 503, body = UNAVAILABLE, times = 3 }
      local _, first = client:create_credential("replay.bin")
      emu:fault{ status = 503, body = UNAVAILABLE, times = 3 }
      local _, second = client:create_credential("replay.bin")

      assert.equal(3, first.attempts)
      assert.equal(1, second.attempts)
      assert.equal(4, requests())
      assert.is_nil(first.message:find("not retried", 1, true))
      assert.matches("%(not retried: the client's retry budget is spent%)$",
        second.message)
    end)

    it("successes refill budget", function()
      local client = new_client{ budget = SMALL, random = constant(0) }
      emu:fault{ status = 503, body = UNAVAILABLE, times = 3 }
      client:create_credential("replay.bin")

      for _ = 1, 5 do
        assert.is_table(client:create_credential("replay.bin"))
      end
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1 }
      local result, meta = client:create_credential("replay.bin")

      assert.is_table(result)
      assert.equal(2, meta.attempts)
    end)

    it("success refunds retry cost", function()
      local client = new_client{ budget = SMALL, random = constant(0) }

      -- 10 - 5 for the retry, + 5 back for the success that followed it.
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1 }
      client:create_credential("replay.bin")
      emu:fault{ status = 503, body = UNAVAILABLE, times = 3 }
      local _, err = client:create_credential("replay.bin")

      assert.equal(3, err.attempts)
    end)

    it("timeouts drain budget faster", function()
      local client = new_client(
        { budget = SMALL, random = constant(0), max_attempts = 5 },
        { timeout_ms = 200 })
      emu:fault{ delay_ms = 1000, times = 3 }

      local _, err = client:create_credential("replay.bin")

      assert.equal("timeout", err.kind)
      assert.equal(2, err.attempts)
    end)

    it("default capacity allows 100 retries", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 105 }
      local client = new_client{ max_attempts = 110, random = constant(0) }

      local _, err = client:create_credential("replay.bin")

      assert.equal(101, err.attempts)
      assert.equal(101, requests())
    end)

    it("budget false removes limit", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 105 }
      local client = new_client{
        max_attempts = 110, random = constant(0), budget = false,
      }

      local result, meta = client:create_credential("replay.bin")

      assert.is_table(result)
      assert.equal(106, meta.attempts)
    end)
  end)

  describe("on_retry", function()
    it("receives error, attempt, delay", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 2 }
      local calls = {}
      local client = new_client{
        random = constant(0.5),
        on_retry = function(err, attempt, delay_ms)
          calls[#calls + 1] = {
            status = err.status, attempt = attempt, delay_ms = delay_ms,
          }
        end,
      }

      client:create_credential("replay.bin")

      assert.equal(2, #calls)
      assert.same({ status = 503, attempt = 1, delay_ms = 50 }, calls[1])
      assert.same({ status = 503, attempt = 2, delay_ms = 100 }, calls[2])
    end)

    it("not called without retry", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 3,
        headers = { ["Retry-After"] = "100" } }
      local called = false
      local client = new_client{
        on_retry = function()
          called = true
        end,
      }

      client:create_credential("replay.bin")

      assert.is_false(called)
    end)

    it("receives Retry-After delay", function()
      emu:fault{ status = 429, body = FAILED, times = 1,
        headers = { ["Retry-After"] = "1" } }
      local delays = {}
      local client = new_client{
        on_retry = function(_, _, delay_ms)
          delays[#delays + 1] = delay_ms
        end,
      }

      client:create_credential("replay.bin")

      assert.same({ 1000 }, delays)
    end)
    it("raising returns the retry's budget", function()
      -- The budget pays for one retry only.
      local raise = true
      local client = new_client{
        budget = { capacity = 5, retry_cost = 5 },
        on_retry = function()
          if raise then
            raise = false
            error("on_retry failed")
          end
        end,
      }
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1 }
      assert.has_error(function()
        client:create_credential("replay.bin")
      end)

      emu:fault{ status = 503, body = UNAVAILABLE, times = 1 }
      local result, meta = client:create_credential("replay.bin")

      assert.is_table(result, tostring(meta))
      assert.equal(2, meta.attempts)
    end)

    it("close from on_retry stops call", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1 }
      local client
      client = new_client{
        on_retry = function()
          client:close()
        end,
      }

      local ok, result, err = pcall(client.create_credential, client,
        "replay.bin")

      assert.is_true(ok, tostring(result))
      assert.is_nil(result)
      assert.equal("cancelled", err.kind)
      assert.equal("the client was closed", err.message)
      assert.is_false(err.retryable)
      assert.equal(1, err.attempts)
      assert.matches("^appcenter: cancelled: ", tostring(err))
      assert.equal(1, requests())
      assert.equal(0, #clock.sleeps)
    end)
  end)

  describe("retry false", function()
    it("makes one attempt", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 3 }
      local client = new_client(false)

      local result, err = client:create_credential("replay.bin")

      assert.is_nil(result)
      assert.equal(1, err.attempts)
      assert.equal(1, requests())
      assert.equal(0, #clock.sleeps)
    end)

    it("still succeeds", function()
      local client = new_client(false)

      local result, meta = client:create_credential("replay.bin")

      assert.is_table(result)
      assert.equal(1, meta.attempts)
    end)
  end)

  describe("one-shot", function()
    it("retries like a client", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 1 }

      local result, meta = appcenter.create_credential{
        endpoint = emu.url, project_id = emu.project_id, token = emu.token,
        file_name = "replay.bin", now = clock.now, sleep = clock.sleep,
        retry = { random = constant(0.5) },
      }

      assert.is_table(result)
      assert.equal(2, meta.attempts)
      assert.equal(1, #clock.sleeps)
    end)

    it("returns missing file_name like core", function()
      local opts = { endpoint = emu.url, token = emu.token,
        project_id = emu.project_id }
      local core_result, core_err = core.create_credential(opts)
      local result, err = appcenter.create_credential(opts)

      assert.is_nil(core_result)
      assert.is_nil(result)
      assert.equal("invalid_argument", err.kind)
      assert.equal(core_err.message, err.message)
      assert.equal(tostring(core_err), tostring(err))
      assert.is_false(err.retryable)
      assert.equal(0, requests())
    end)

    it("raises on a non-string file_name", function()
      assert.has_error(function()
        appcenter.create_credential{ endpoint = emu.url, token = emu.token,
          project_id = emu.project_id, file_name = 42 }
      end, "appcenter.create_credential: option 'file_name' must be a string, got number")
    end)
  end)

  describe("options", function()
    local function options_error(opts)
      local ok, message = pcall(function()
        return appcenter.new(opts)
      end)
      assert.is_false(ok)
      return message
    end

    -- Checks that appcenter.new raises with each case's message, which
    -- follows "appcenter.new: ", for the case's options.
    local function assert_raises_each(cases)
      for _, case in ipairs(cases) do
        local message = options_error(case[1])
        assert.is_not_nil(message:find("appcenter.new: " .. case[2], 1, true),
          message)
      end
    end

    it("unknown top-level name raises", function()
      assert.has_error(function()
        new_client(nil, { timout_ms = 1000 })
      end, "appcenter.new: unknown option 'timout_ms'"
        .. " (did you mean 'timeout_ms'?)")
    end)

    it("name without _ms gets hint", function()
      assert.has_error(function()
        new_client(nil, { timeout = 5 })
      end, "appcenter.new: unknown option 'timeout'"
        .. " (did you mean 'timeout_ms'?)")
      assert.has_error(function()
        new_client{ deadline = 5 }
      end, "appcenter.new: unknown option 'retry.deadline'"
        .. " (did you mean 'retry.deadline_ms'?)")
    end)

    it("unknown retry name lists names", function()
      assert.has_error(function()
        new_client{ timout_ms = 1000 }
      end, "appcenter.new: unknown option 'retry.timout_ms' (valid options: "
        .. "base_delay_ms, budget, deadline_ms, max_attempts, max_delay_ms, "
        .. "on_retry, random)")
    end)

    it("part of a retry name gets hint", function()
      assert.has_error(function()
        new_client{ attempts = 5 }
      end, "appcenter.new: unknown option 'retry.attempts'"
        .. " (did you mean 'retry.max_attempts'?)")
    end)

    it("retry name typo gets hint", function()
      assert.has_error(function()
        new_client{ max_attempt = 2 }
      end, "appcenter.new: unknown option 'retry.max_attempt'"
        .. " (did you mean 'retry.max_attempts'?)")
    end)

    it("unknown budget name raises", function()
      assert.has_error(function()
        new_client{ budget = { capacty = 10 } }
      end, "appcenter.new: unknown option 'retry.budget.capacty'"
        .. " (did you mean 'retry.budget.capacity'?)")
    end)

    it("positional option raises", function()
      assert.has_error(function()
        new_client(nil, { "http://127.0.0.1:1" })
      end, "appcenter.new: option names must be strings, got the number key "
        .. "1; pass options as name = value")
      assert.has_error(function()
        new_client{ [true] = 2 }
      end, "appcenter.new: option names must be strings, got the boolean key "
        .. "true in retry; pass options as name = value")
      assert.has_error(function()
        new_client{ budget = { [{}] = 1 } }
      end, "appcenter.new: option names must be strings, got a table key in "
        .. "retry.budget; pass options as name = value")
    end)

    it("one-shot name raises in new", function()
      assert.has_error(function()
        new_client(nil, { file_name = "replay.bin" })
      end, "appcenter.new: unknown option 'file_name'")
    end)

    it("wrong types raise", function()
      local cases = {
        { { timeout_ms = "5000" },
          "option 'timeout_ms' must be a number, got string" },
        { { token = 12 }, "option 'token' must be a string, got number" },
        { { verify_tls = "no" },
          "option 'verify_tls' must be a boolean, got string" },
        { { retry = true },
          "option 'retry' must be a table or false, got boolean" },
        { { now = 5 }, "option 'now' must be a function, got number" },
        { { sleep = "x" }, "option 'sleep' must be a function, got string" },
        { { retry = { max_attempts = "3" } },
          "option 'retry.max_attempts' must be a number, got string" },
        { { retry = { on_retry = true } },
          "option 'retry.on_retry' must be a function, got boolean" },
        { { retry = { random = 0.5 } },
          "option 'retry.random' must be a function, got number" },
        { { retry = { budget = 500 } },
          "option 'retry.budget' must be a table or false, got number" },
        { { retry = { budget = { retry_cost = "5" } } },
          "option 'retry.budget.retry_cost' must be a number, got string" },
      }
      assert_raises_each(cases)
    end)

    it("out-of-range values raise", function()
      local cases = {
        { { max_attempts = 0 },
          "option 'retry.max_attempts' must be an integer >= 1, got 0" },
        { { max_attempts = 2.5 },
          "option 'retry.max_attempts' must be an integer >= 1, got 2.5" },
        { { max_attempts = math.huge },
          "option 'retry.max_attempts' must be an integer >= 1, got inf" },
        { { base_delay_ms = -1 },
          "option 'retry.base_delay_ms' must be a number >= 0, got -1" },
        { { max_delay_ms = 90000000 },
          "option 'retry.max_delay_ms' must be a number from 0 to 86400000, "
            .. "got 90000000" },
        { { deadline_ms = 0 },
          "option 'retry.deadline_ms' must be a number >= 1, got 0" },
        { { budget = { capacity = -5 } },
          "option 'retry.budget.capacity' must be a number >= 0, got -5" },
      }
      for _, case in ipairs(cases) do
        local message = options_error{ retry = case[1] }
        assert.is_not_nil(message:find("appcenter.new: " .. case[2], 1, true),
          message)
      end
    end)

    -- tostring(0 / 0) is "-nan" under Lua 5.4 on glibc.
    it("NaN raises", function()
      local message = options_error{ retry = { max_delay_ms = 0 / 0 } }

      assert.is_not_nil(message:find("option 'retry.max_delay_ms' must be",
        1, true))
      assert.is_not_nil(message:find(", got nan", 1, true), message)
    end)

    it("rejects a thread pool name nginx.conf cannot have", function()
      for _, name in ipairs{ "", "pool\n", "\0" } do
        local message = options_error{ thread_pool = name }
        assert.is_not_nil(message:find("appcenter.new: option 'thread_pool' must be the name of a "
          .. "`thread_pool NAME threads=N;` line of nginx.conf, got an empty name or one with a "
          .. "control character", 1, true), message)
      end
      -- nginx accepts a quoted name with a space.
      local client = new_client(nil, { thread_pool = "two words" })
      client:close()
    end)

    it("checks options from __index", function()
      local cases = {
        { { retry = setmetatable({}, { __index = { max_attempts = 0 / 0 } }) },
          "option 'retry.max_attempts' must be an integer >= 1, got nan" },
        { { retry = setmetatable({}, { __index = { max_attempts = "3" } }) },
          "option 'retry.max_attempts' must be a number, got string" },
        { { retry = { budget = setmetatable({}, { __index = { capacity = -1 } }) } },
          "option 'retry.budget.capacity' must be a number >= 0, got -1" },
        { setmetatable({}, { __index = { retry = 0 } }),
          "option 'retry' must be a table or false, got number" },
      }
      assert_raises_each(cases)
    end)

    it("reads each option once", function()
      local reads = 0
      local retry = setmetatable({}, { __index = function(_, name)
        if name == "max_attempts" then
          reads = reads + 1
          return reads == 1 and 2 or 0 / 0
        end
      end })

      local client = new_client(retry)

      assert.equal(1, reads)
      assert.equal(2, client.policy.max_attempts)
      client:close()
    end)

    it("ends a call when now turns NaN", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 5 }
      local readings = 0
      local client = new_client(nil, { now = function()
        readings = readings + 1
        return readings == 1 and 100 or 0 / 0
      end })

      local _, err = client:create_credential("replay.bin")

      assert.equal(1, err.attempts)
      assert.matches("(not retried: the now option returned nan, so the deadline counts as passed)",
        err.message, 1, true)
      client:close()
    end)

    it("reads the one-shot file name once", function()
      local reads = 0
      local opts = setmetatable({ endpoint = emu.url, project_id = emu.project_id,
        token = emu.token, retry = false }, { __index = function(_, name)
          if name == "file_name" then
            reads = reads + 1
            return reads == 1 and "replay.bin" or 42
          end
        end })

      local result, meta = appcenter.create_credential(opts)

      assert.is_table(result, tostring(meta))
      assert.equal(1, reads)
    end)

    it("names a bad reading of now after a retry delay", function()
      emu:fault{ status = 503, body = UNAVAILABLE, times = 5 }
      local slept = false
      local client = new_client(nil, {
        now = function()
          return slept and 0 / 0 or 100
        end,
        sleep = function()
          slept = true
        end,
      })

      local _, err = client:create_credential("replay.bin")

      assert.equal(1, err.attempts)
      assert.matches("(not retried: the now option returned nan, so the deadline counts as passed)",
        err.message, 1, true)
      assert.equal(client.policy.budget.capacity, client.policy.budget.tokens)
      assert.equal(1, emu:stats().requests)
      client:close()
    end)

    it("raises when now returns no finite number", function()
      for _, case in ipairs{ { 0 / 0, "nan" }, { math.huge, "inf" }, { nil, "nil" }, { "1", "string" } } do
        local client = new_client(nil, { now = function() return case[1] end })
        assert.has_error(function()
          client:create_credential("replay.bin")
        end, "appcenter: the now option returned " .. case[2]
          .. "; it must return seconds as a finite number")
        client:close()
      end
      assert.equal(0, emu:stats().requests)
    end)

    it("prints the endpoint and project", function()
      local client = new_client()
      local expected = ("appcenter.client (%s, project %s)"):format(emu.url,
        emu.project_id)

      assert.equal(expected, tostring(client))
      client:close()
      assert.equal("appcenter.client (closed)", tostring(client))
    end)

    it("core.new error is returned", function()
      local client, err = appcenter.new{
        endpoint = "ftp://127.0.0.1", project_id = emu.project_id,
        token = emu.token, retry = { max_attempts = 2 },
      }

      assert.is_nil(client)
      assert.equal("invalid_argument", err.kind)
      assert.is_not_nil(err.message:find("ftp://127.0.0.1", 1, true))
    end)

    it("one-shot returns core.new error", function()
      local result, err = appcenter.create_credential{
        project_id = emu.project_id, token = emu.token,
        file_name = "replay.bin",
      }

      assert.is_nil(result)
      assert.equal("invalid_argument", err.kind)
      assert.equal(0, requests())
    end)

    it("dot call raises with advice", function()
      local client = new_client()
      -- Each call keeps its result in a local, because a tail call would
      -- drop the caller's line from the message.
      local calls = {
        create_credential = function()
          local result = client.create_credential("replay.bin")
          return result
        end,
        upload = function()
          local meta = client.upload({}, { body = "x" })
          return meta
        end,
        create_and_upload = function()
          local meta = client.create_and_upload("replay.bin", { body = "x" })
          return meta
        end,
        close = function()
          local closed = client.close()
          return closed
        end,
      }
      for name, call in pairs(calls) do
        local ok, message = pcall(call)

        assert.is_false(ok, name)
        local expected = ("appcenter: call %s with a colon: client:%s(...)")
          :format(name, name)
        assert.equal(expected, message:match("^[^:]*retry_spec%.lua:%d+: (.*)$"),
          message)
      end
      client:close()

      assert.equal(0, requests())
    end)

    it("blocking calls after close raise at caller", function()
      local client = new_client()
      client:close()
      local calls = {
        create_credential = function()
          local result = client:create_credential("replay.bin")
          return result
        end,
        upload = function()
          local meta = client:upload({}, { body = "x" })
          return meta
        end,
        create_and_upload = function()
          local meta = client:create_and_upload("replay.bin", { body = "x" })
          return meta
        end,
      }
      for name, call in pairs(calls) do
        local ok, message = pcall(call)

        assert.is_false(ok, name)
        assert.equal("appcenter: the client is closed",
          message:match("^[^:]*retry_spec%.lua:%d+: (.*)$"), message)
      end

      assert.equal(0, requests())
    end)

    it("serves colon calls through __index", function()
      local client = new_client()
      local tenant = setmetatable({ label = "tenant-a" }, { __index = client })

      local result, meta = tenant:create_credential("replay.bin")

      assert.is_table(result, tostring(meta))
      assert.equal(1, requests())
      client:close()
    end)

    it("names the dot for appcenter:new", function()
      local ok, message = pcall(function()
        local client = appcenter:new({ endpoint = emu.url })
        return client
      end)

      assert.is_false(ok)
      assert.matches("appcenter: call new with a dot: appcenter.new(opts)",
        message, 1, true)
    end)

    it("non-table options raise", function()
      assert.has_error(function()
        appcenter.new("token")
      end, "appcenter.new: options must be a table, got string")
    end)

    it("error points at caller", function()
      local message = options_error{ retry = { max_attempts = 0 } }

      assert.matches("^[^:]*retry_spec%.lua:%d+: appcenter%.new: ", message)
    end)
  end)
end)
