-- Polling helper for the specs of non-blocking requests.

local poll = {}

--- Calls client:poll(timeout_ms) until done() returns a true value or
-- `rounds` polls have run. timeout_ms defaults to 50 and rounds to 200,
-- a bound of 10 s. Returns done()'s last value.
function poll.until_done(client, done, timeout_ms, rounds)
  for _ = 1, rounds or 200 do
    local value = done()
    if value then
      return value
    end
    client:poll(timeout_ms or 50)
  end
  return done()
end

return poll
