-- Retry policy: which errors are retried, how long to wait before the next
-- attempt, the state of one call that decides both within a deadline, and
-- the blocking loop that runs all attempts of one call.
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

-- Statuses whose Retry-After header is honoured: 503 (RFC 9110 section
-- 10.2.3) and 429 (RFC 6585 section 4).
local RETRY_AFTER_STATUSES = { [429] = true, [503] = true }

local MONTHS = {
  Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6,
  Jul = 7, Aug = 8, Sep = 9, Oct = 10, Nov = 11, Dec = 12,
}


-- Returns whether a failed attempt may be tried again. appcenter.core
-- decides for each HTTP status: it marks no 4xx retryable but 429, and
-- an upload's RequestTimeTooSkewed after a wait that aged its signature.
function retry.is_retryable(err)
  if type(err) ~= "table" or err.retryable ~= true then
    return false
  end
  return not FINAL_KINDS[err.kind]
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

-- The longest Retry-After wait that parse_retry_after returns, one year.
local MAX_RETRY_AFTER_S = 365 * 86400

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
    -- Cut to a year, so that a huge value stays an exact integer.
    return math.min(tonumber(value), MAX_RETRY_AFTER_S)
  end

  local date = retry.parse_http_date(value)
  if not date then
    return nil
  end
  return math.max(0, math.min(date - now_epoch, MAX_RETRY_AFTER_S))
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
-- and the reason when the call must stop because the server's Retry-After
-- or the backoff does not fit into the `left_ms` milliseconds before the
-- deadline.
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
      return nil, ("Retry-After asks for %d s, more than the time left "
        .. "before the deadline"):format(requested_s)
    end
    delay_ms = math.floor(math.min(policy.max_delay_ms, requested_s * 1000))
  else
    delay_ms = retry.backoff_ms(policy, attempt)
  end

  if delay_ms >= left_ms then
    return nil, "the backoff delay would end after the deadline"
  end
  return delay_ms
end

-- The margin, in milliseconds, within which the timeout of an attempt
-- cut to the deadline counts as the deadline. It covers the rounding of
-- the attempt's timeout and libcurl's timer.
local DEADLINE_SLACK_MS = 10

-- Errors of attempts that sent nothing because the deadline passed before
-- they started, such as one that waited for a thread of an nginx thread
-- pool. Such an error gets no note about a cut timeout. Weak keys, so a
-- marked error is collected like any other.
retry.unsent = setmetatable({}, { __mode = "k" })

-- The hint that appcenter.core adds to a timeout's message, for a
-- credential request or an upload, as a pattern.
local CORE_TIMEOUT_HINT = " %(the limits are [^)]*%)"

-- Returns `message`, a timeout's message, without the core's hint that
-- names the timeouts, for an attempt that the deadline ended instead.
function retry.drop_timeout_hint(message)
  return (message:gsub(CORE_TIMEOUT_HINT, "", 1))
end

-- Returns `seconds` as messages show it, or nil when it is a finite
-- number, the only reading of the now option that a deadline can use.
function retry.reading_problem(seconds)
  if type(seconds) ~= "number" then
    return type(seconds)
  elseif seconds ~= seconds then
    return "nan"
  elseif not (seconds > -math.huge and seconds < math.huge) then
    return tostring(seconds)
  end
  return nil
end

-- Returns the milliseconds left before the call's deadline. A reading of
-- now() that is no finite number counts as none left and is noted in
-- self.bad_reading, so it ends the call where a NaN would turn the
-- deadline off.
local function time_left_ms(self)
  if not self.deadline then
    return math.huge
  end
  local seconds = self.policy.now()
  self.bad_reading = retry.reading_problem(seconds)
  if self.bad_reading then
    return 0
  end
  return (self.deadline - seconds) * 1000
end


-- The retry state of one call: its start, its deadline, the attempt in
-- progress and what the last retry paid. The blocking loop (retry.run) and
-- the non-blocking requests (appcenter/async.lua) drive it the same way:
--
--   local call = retry.new_call(policy)
--   repeat
--     local ok, timeout_ms = call:begin_attempt()  -- false: deadline passed
--     ... run the attempt with timeout_ms, get result, info ...
--     local delay_ms = call:complete(result, info)  -- nil: the call is over
--     ... wait delay_ms ...
--   until not delay_ms
local Call = {}
Call.__index = Call

-- Starts the clock of one call under `policy`, which contains the fields
-- of retry.DEFAULTS plus timeout_ms, random and now, and optionally budget
-- (a budget.lua bucket) and on_retry. With deadline_ms nil there is no
-- deadline and no per-attempt timeout. Raises when now() returns anything
-- but a finite number, before anything is sent: a NaN would turn the
-- deadline off.
function retry.new_call(policy)
  local started = policy.now()
  local problem = retry.reading_problem(started)
  if problem then
    error(("appcenter: the now option returned %s; it must return seconds "
      .. "as a finite number"):format(problem), 0)
  end
  local deadline
  if policy.deadline_ms then
    deadline = started + policy.deadline_ms / 1000
  end
  return setmetatable({
    policy = policy,
    started = started,
    deadline = deadline,
    attempt = 0,
    last_retry_cost = nil,
    cut_to_deadline = false,
    bad_reading = nil,
  }, Call)
end

-- Adds to the message of `err` why the call that failed with it was not
-- retried, and returns `err`.
function retry.add_not_retried(err, reason)
  err.message = ("%s (not retried: %s)"):format(err.message, reason)
  return err
end

-- Returns why a planned retry did not start: begin_attempt returned false
-- because the deadline has passed, or because a reading of now() was no
-- finite number.
function Call:stop_reason()
  if self.bad_reading then
    return ("the now option returned %s, so the deadline counts as passed")
      :format(self.bad_reading)
  end
  return "the deadline has passed"
end

-- Ends the call before the retry that Call:complete planned: gives back
-- its retry budget and adds to `err`, the error of the last attempt,
-- `reason`, by default the one from Call:stop_reason. Returns `err`.
function Call:stop_before_retry(err, reason)
  self:drop_retry()
  return retry.add_not_retried(err, reason or self:stop_reason())
end

-- Counts the next attempt and returns true, its timeout in milliseconds
-- and the milliseconds left before the deadline. The timeout is
-- timeout_ms cut to the time left. Without a deadline both are nil, so
-- the core client keeps its own timeout. Returns false when a retry is
-- due but the deadline has passed, because a slow wait or on_retry used
-- up the time that the delay left.
function Call:begin_attempt()
  local policy = self.policy
  if self.attempt > 0 and time_left_ms(self) < 1 then
    return false
  end
  self.attempt = self.attempt + 1
  if not self.deadline then
    return true, nil
  end

  local left_ms = time_left_ms(self)
  self.cut_to_deadline = left_ms < policy.timeout_ms
  local limit_ms = math.min(policy.timeout_ms, left_ms)
  return true, math.max(1, math.floor(limit_ms)), left_ms
end

-- Records the outcome of the current attempt, `result, meta` or
-- `nil, err` as the core client returns them, and decides what follows.
-- Returns the delay in milliseconds before the next attempt, after paying
-- the retry budget and calling on_retry. Returns nil when the call is
-- over, and then `result, info` are its outcome. When the deadline or the
-- retry budget stops a retry, err.message ends with the reason, and after
-- the last of max_attempts it ends with the number of attempts. Sets
-- `attempts` in meta
-- or err (mutating err keeps its metatable), and meta.elapsed_ms to the
-- time over all attempts, measured with policy.now.
function Call:complete(result, info)
  local policy = self.policy
  if result ~= nil then
    if policy.budget then
      policy.budget:refund(self.last_retry_cost)
    end
    info.attempts = self.attempt
    info.elapsed_ms = (policy.now() - self.started) * 1000
    return nil
  end

  local err = info
  err.attempts = self.attempt
  if not retry.is_retryable(err) then
    return nil
  end

  local left_ms = time_left_ms(self)
  -- A timeout of an attempt cut to the deadline is the deadline only when
  -- it came at the deadline: connect_timeout_ms may have ended it earlier.
  -- The core's hint names timeout_ms, which did not end such an attempt.
  local cut_off = err.kind == "timeout" and self.cut_to_deadline
    and left_ms < DEADLINE_SLACK_MS and not self.bad_reading
    and not retry.unsent[err]
  local cut_note = "retry.deadline_ms cut this attempt's timeout to the "
    .. "time left"
  if cut_off then
    err.message = retry.drop_timeout_hint(err.message)
  end
  if self.attempt >= policy.max_attempts then
    if cut_off then
      err.message = ("%s (%s)"):format(err.message, cut_note)
    end
    if self.attempt > 1 then
      err.message = ("%s (gave up after %d attempts)"):format(err.message,
        self.attempt)
    end
    return nil
  end

  local delay_ms, reason
  if cut_off then
    reason = "the deadline has passed; " .. cut_note
  elseif left_ms < 1 then
    reason = self:stop_reason()
  else
    delay_ms, reason = plan_delay_ms(policy, err, self.attempt, left_ms)
  end
  if not delay_ms then
    retry.add_not_retried(err, reason)
    return nil
  end

  local cost = 0
  if policy.budget then
    cost = policy.budget:cost_of(err)
    if not policy.budget:withdraw(cost) then
      err.message = ("%s (not retried: the client's retry budget is spent)")
        :format(err.message)
      return nil
    end
  end
  self.last_retry_cost = cost

  if policy.on_retry then
    -- A raising on_retry ends the call before the retry it paid for.
    local ok, on_retry_err = pcall(policy.on_retry, err, self.attempt,
      delay_ms)
    if not ok then
      self:drop_retry()
      error(on_retry_err, 0)
    end
  end
  return delay_ms
end


-- Gives back the tokens that the retry which Call:complete planned took
-- from the retry budget, when the call ends before that retry runs:
-- closed or cancelled from on_retry, or cancelled while it waits.
function Call:drop_retry()
  local cost = self.last_retry_cost
  if self.policy.budget and cost and cost > 0 then
    self.policy.budget:refund(cost)
  end
  self.last_retry_cost = nil
end


-- Runs `perform(timeout_ms, deadline_left_ms)`, with the values of
-- Call:begin_attempt, until it returns a result, fails for good or the
-- policy stops, sleeping with policy.sleep between attempts, and returns
-- what the last attempt returned. `perform` returns
-- `result, meta` or `nil, err` like the core client. See Call:complete for
-- the fields set in meta and err.
--
-- `stop_error(err)`, optional, runs after on_retry and again after the
-- wait, with the error of the failed attempt. When it returns an error,
-- the call returns nil and that error instead of retrying. The wrapper
-- uses it to end a call whose client was closed meanwhile: by on_retry,
-- or by other code that ran while policy.sleep yielded (ngx.sleep inside
-- nginx).
function retry.run(policy, perform, stop_error)
  local call = retry.new_call(policy)
  local result, info

  local function stopped()
    return stop_error and stop_error(info)
  end

  -- Call:complete stops at max_attempts, so the loop ends.
  while true do
    local ok, timeout_ms, deadline_left_ms = call:begin_attempt()
    if not ok then
      return nil, call:stop_before_retry(info)
    end

    result, info = perform(timeout_ms, deadline_left_ms)
    local delay_ms = call:complete(result, info)
    if not delay_ms then
      return result, info
    end

    local stop_err = stopped()
    if not stop_err and delay_ms > 0 then
      policy.sleep(delay_ms / 1000)
      stop_err = stopped()
    end
    if stop_err then
      call:drop_retry()
      return nil, stop_err
    end
  end
end

return retry
