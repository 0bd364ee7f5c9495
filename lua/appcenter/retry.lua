-- Retry policy: which errors are retried, how long to wait before the next
-- attempt, and the loop that runs all attempts of one call within a
-- deadline.
--
-- Caveats: only the IMF-fixdate form of an HTTP-date is read from
-- Retry-After. The obsolete RFC 850 and asctime forms, which RFC 9110
-- section 5.6.7 requires recipients to accept, count as invalid, so the
-- jittered backoff is used instead.

local retry = {}

retry.DEFAULTS = {
  -- Attempts per call, the first one included.
  max_attempts = 3,

  -- The delay before attempt n + 1 is drawn uniformly from
  -- [0, min(max_delay_ms, base_delay_ms * 2^(n - 1))] ("full jitter").
  base_delay_ms = 100,
  max_delay_ms = 5000,

  -- Time for all attempts and delays of one call, from its start. Twice the
  -- default per-attempt timeout (30000 ms), so a server that hangs costs a
  -- caller at most two full attempts instead of three plus the delays.
  deadline_ms = 60000,
}

-- Errors that are never retried, whatever their `retryable` field contains,
-- because the same request would fail the same way again.
local FINAL_KINDS = { invalid_argument = true, invalid_response = true }
local FINAL_STATUSES = {
  [400] = true, [401] = true, [403] = true, [404] = true, [405] = true,
}

-- Statuses whose Retry-After header is honoured: 503 (RFC 9110 section
-- 10.2.3) and 429 (RFC 6585 section 4).
local RETRY_AFTER_STATUSES = { [429] = true, [503] = true }

local MONTHS = {
  Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6,
  Jul = 7, Aug = 8, Sep = 9, Oct = 10, Nov = 11, Dec = 12,
}


-- Returns whether a failed attempt may be tried again.
function retry.is_retryable(err)
  if type(err) ~= "table" or err.retryable ~= true then
    return false
  end
  if FINAL_KINDS[err.kind] or FINAL_STATUSES[err.status] then
    return false
  end
  return true
end


-- Converts a UTC calendar date to seconds since the Unix epoch, because
-- os.time reads a date table as local time. The day count is Howard
-- Hinnant's days_from_civil algorithm
-- (http://howardhinnant.github.io/date_algorithms.html).
local function utc_to_epoch(year, month, day, hour, min, sec)
  if month <= 2 then
    year = year - 1
  end
  local era = math.floor(year / 400)
  local year_of_era = year - era * 400
  local month_from_march = (month + 9) % 12
  local day_of_year = math.floor((153 * month_from_march + 2) / 5) + day - 1
  local day_of_era = year_of_era * 365 + math.floor(year_of_era / 4)
    - math.floor(year_of_era / 100) + day_of_year
  local days = era * 146097 + day_of_era - 719468

  return days * 86400 + hour * 3600 + min * 60 + sec
end

-- Parses an IMF-fixdate such as "Sun, 06 Nov 1994 08:49:37 GMT" and
-- returns seconds since the Unix epoch, or nil when `value` is not one.
function retry.parse_http_date(value)
  local day, month_name, year, hour, min, sec = value:match(
    "^%a%a%a, (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  local month = MONTHS[month_name]
  if not month then
    return nil
  end

  day, year = tonumber(day), tonumber(year)
  hour, min, sec = tonumber(hour), tonumber(min), tonumber(sec)
  if day < 1 or day > 31 or hour > 23 or min > 59 or sec > 60 then
    return nil
  end

  return utc_to_epoch(year, month, day, hour, min, sec)
end

-- Parses a Retry-After header value and returns the wait it requests in
-- seconds (0 for a date in the past), or nil when the value is neither
-- delta-seconds nor an IMF-fixdate. `now_epoch` is the current time in
-- seconds since the Unix epoch, normally os.time().
function retry.parse_retry_after(value, now_epoch)
  if type(value) ~= "string" then
    return nil
  end
  value = value:match("^%s*(.-)%s*$")

  if value:match("^%d+$") then
    return tonumber(value)
  end

  local date = retry.parse_http_date(value)
  if not date then
    return nil
  end
  return math.max(0, date - now_epoch)
end


-- Draws the delay in whole milliseconds before the attempt that follows
-- failed attempt `attempt`, uniformly from [0, cap].
function retry.backoff_ms(policy, attempt)
  local cap = policy.base_delay_ms * 2 ^ (attempt - 1)
  cap = math.floor(math.min(policy.max_delay_ms, cap))

  -- A random() outside [0, 1) cannot push the delay outside [0, cap].
  local delay_ms = math.floor(policy.random() * (cap + 1))
  return math.max(0, math.min(cap, delay_ms))
end

-- Returns the delay in milliseconds before retrying after `err`, or nil
-- when the call must stop because the server's Retry-After or the backoff
-- does not fit into the `left_ms` milliseconds before the deadline.
local function plan_delay_ms(policy, err, attempt, left_ms)
  local delay_ms
  local requested_s
  if RETRY_AFTER_STATUSES[err.status] then
    requested_s = retry.parse_retry_after(err.retry_after, os.time())
  end

  if requested_s then
    -- The server's wait, not the clamped one, decides whether waiting
    -- is worth it, because a retry earlier than the server requested is
    -- likely to fail again.
    if requested_s * 1000 > left_ms then
      return nil
    end
    delay_ms = math.floor(math.min(policy.max_delay_ms, requested_s * 1000))
  else
    delay_ms = retry.backoff_ms(policy, attempt)
  end

  if delay_ms >= left_ms then
    return nil
  end
  return delay_ms
end

local function time_left_ms(policy, deadline)
  if not deadline then
    return math.huge
  end
  return (deadline - policy.now()) * 1000
end

-- Returns the timeout for the next attempt: timeout_ms, cut to the time
-- left before the deadline, or nil to keep the core client's own timeout
-- when there is no deadline.
local function attempt_timeout_ms(policy, deadline)
  if not deadline then
    return nil
  end
  local limit_ms = math.min(policy.timeout_ms, time_left_ms(policy, deadline))
  return math.max(1, math.floor(limit_ms))
end

local function elapsed_ms(policy, started)
  return math.floor((policy.now() - started) * 1000 + 0.5)
end

-- Decides whether to retry after failed attempt `attempt`. Pays the retry
-- budget, calls on_retry and sleeps, then returns the cost paid. Returns
-- nil without side effects when the call must stop.
local function prepare_retry(policy, err, attempt, deadline)
  if attempt >= policy.max_attempts or not retry.is_retryable(err) then
    return nil
  end

  local left_ms = time_left_ms(policy, deadline)
  local delay_ms = plan_delay_ms(policy, err, attempt, left_ms)
  if not delay_ms then
    return nil
  end

  local cost = 0
  if policy.budget then
    cost = policy.budget:cost_of(err)
    if not policy.budget:withdraw(cost) then
      return nil
    end
  end

  if policy.on_retry then
    policy.on_retry(err, attempt, delay_ms)
  end
  if delay_ms > 0 then
    policy.sleep(delay_ms / 1000)
  end
  return cost
end

-- Runs `perform(timeout_ms)` until it returns a result, fails for good or
-- the policy stops, and returns what the last attempt returned. `perform`
-- returns `result, meta` or `nil, err` like the core client. The function
-- sets `attempts` in meta or err (mutating err keeps its metatable) and
-- sets meta.elapsed_ms to the time over all attempts, measured with
-- policy.now.
--
-- `policy` contains the fields of retry.DEFAULTS plus timeout_ms, random,
-- now and sleep, and optionally budget (a budget.lua bucket) and on_retry.
-- With deadline_ms nil there is no deadline and no per-attempt timeout.
function retry.run(policy, perform)
  local started = policy.now()
  local deadline
  if policy.deadline_ms then
    deadline = started + policy.deadline_ms / 1000
  end
  local last_retry_cost
  local err

  for attempt = 1, policy.max_attempts do
    local result, info = perform(attempt_timeout_ms(policy, deadline))
    if result ~= nil then
      if policy.budget then
        policy.budget:refund(last_retry_cost)
      end
      info.attempts = attempt
      info.elapsed_ms = elapsed_ms(policy, started)
      return result, info
    end

    err = info
    err.attempts = attempt
    last_retry_cost = prepare_retry(policy, err, attempt, deadline)
    if not last_retry_cost then
      return nil, err
    end
    -- The sleep fitted the deadline, but a slow sleep or on_retry may
    -- still have used up the rest.
    if time_left_ms(policy, deadline) < 1 then
      return nil, err
    end
  end

  -- Not reached: prepare_retry stops at max_attempts.
  return nil, err
end

return retry
