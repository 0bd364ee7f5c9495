-- Retry budget: a token bucket shared by all calls of one client.
--
-- The rules and defaults follow the retry quota of the AWS SDKs' "standard"
-- retry mode (AWS SDK for JavaScript v3, packages/middleware-retry:
-- INITIAL_RETRY_TOKENS, RETRY_COST, TIMEOUT_RETRY_COST, NO_RETRY_INCREMENT):
--
--   capacity        500  tokens in a full bucket; a new client starts full
--   retry_cost        5  tokens taken before a retry
--   timeout_cost     10  tokens taken before a retry after a timeout
--   success_refund    1  tokens returned by a success on the first attempt
--
-- A success that follows retries returns the cost of the retry that led to
-- it instead of success_refund. The bucket never grows past capacity. When
-- it cannot pay for a retry, the caller gets the last error at once, so an
-- outage costs each client at most capacity / retry_cost retries (100 with
-- the defaults) until successes refill the bucket.

local budget = {}

budget.DEFAULTS = {
  capacity = 500,
  retry_cost = 5,
  timeout_cost = 10,
  success_refund = 1,
}

local Budget = {}
Budget.__index = Budget

-- Creates a full bucket. `settings` has the fields of budget.DEFAULTS,
-- already validated and completed by the caller.
function budget.new(settings)
  return setmetatable({
    tokens = settings.capacity,
    capacity = settings.capacity,
    retry_cost = settings.retry_cost,
    timeout_cost = settings.timeout_cost,
    success_refund = settings.success_refund,
  }, Budget)
end

-- Returns the cost of retrying after `err`.
function Budget:cost_of(err)
  if err.kind == "timeout" then
    return self.timeout_cost
  end
  return self.retry_cost
end

-- Takes `cost` tokens and returns true, or returns false and takes nothing
-- when the bucket contains fewer than `cost` tokens.
function Budget:withdraw(cost)
  if self.tokens < cost then
    return false
  end
  self.tokens = self.tokens - cost
  return true
end

-- Records a success. `last_retry_cost` is what the retry that led to the
-- success paid, or nil when the first attempt succeeded.
function Budget:refund(last_retry_cost)
  local amount = last_retry_cost or self.success_refund
  self.tokens = math.min(self.capacity, self.tokens + amount)
end

return budget
