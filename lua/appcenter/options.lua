-- Option names, types and ranges of the wrapper, their validation, and the
-- retry policy built from them.
--
-- Wrong types, out-of-range values and unknown names are programming
-- errors, so the caller raises with the message that validate() returns.

local budget = require("appcenter.budget")
local core = require("appcenter.core")
local retry = require("appcenter.retry")

local options = {}

-- Per-attempt timeout that appcenter.core uses when timeout_ms is not set.
-- The wrapper needs the number to cut attempts to the deadline.
options.DEFAULT_TIMEOUT_MS = 30000

-- Largest timeout_ms of an upload that appcenter.core accepts: one day.
options.MAX_UPLOAD_TIMEOUT_MS = 86400000

-- Options passed on to appcenter.core. core.new raises on any other name,
-- so this list must match the C module's.
local CORE_TYPES = {
  endpoint = "string",
  region = "string",
  project_id = "string",
  token = "string",
  ak = "string",
  sk = "string",
  security_token = "string",
  timeout_ms = "number",
  connect_timeout_ms = "number",
  ca_file = "string",
  verify_tls = "boolean",
  proxy = "string",
  allow_http = "boolean",
  max_body_bytes = "number",
  max_connections = "number",
}

-- Options of the wrapper itself, which are not passed to core.new.
local WRAPPER_TYPES = {
  retry = "table or false",
  sleep = "function",
  now = "function",
  thread_pool = "string",
}

local RETRY_TYPES = {
  max_attempts = "number",
  base_delay_ms = "number",
  max_delay_ms = "number",
  deadline_ms = "number",
  budget = "table or false",
  random = "function",
  on_retry = "function",
}

-- Options of the upload methods: those of appcenter.core's client:upload
-- plus deadline_ms of the wrapper. The core raises on any other name, so
-- this list must match the C module's.
local UPLOAD_TYPES = {
  path = "string",
  body = "string",
  content_type = "string",
  content_md5 = "boolean",
  path_style = "boolean",
  progress = "function",
  timeout_ms = "number",
  deadline_ms = "number",
}
options.UPLOAD_TYPES = UPLOAD_TYPES

local BUDGET_TYPES = {
  capacity = "number",
  retry_cost = "number",
  timeout_cost = "number",
  success_refund = "number",
}

-- Smallest value of each numeric wrapper option, and whether it must be an
-- integer. Core options are range-checked by core.new.
local RANGES = {
  ["retry.max_attempts"] = { min = 1, integer = true },
  -- One day at most, the longest sleep of appcenter.core.
  ["retry.base_delay_ms"] = { min = 0, max = 86400000 },
  ["retry.max_delay_ms"] = { min = 0, max = 86400000 },
  ["retry.deadline_ms"] = { min = 1 },
  ["retry.budget.capacity"] = { min = 0 },
  ["retry.budget.retry_cost"] = { min = 0 },
  ["retry.budget.timeout_cost"] = { min = 0 },
  ["retry.budget.success_refund"] = { min = 0 },
}


-- Returns the Levenshtein distance between two short strings.
local function edit_distance(a, b)
  local previous = {}
  for j = 0, #b do
    previous[j] = j
  end

  for i = 1, #a do
    local current = { [0] = i }
    for j = 1, #b do
      local substitution = previous[j - 1]
      if a:byte(i) ~= b:byte(j) then
        substitution = substitution + 1
      end
      current[j] = math.min(previous[j] + 1, current[j - 1] + 1, substitution)
    end
    previous = current
  end
  return previous[#b]
end

-- Returns the one known name that has `name` as a whole part between
-- underscores, such as max_attempts for "attempts", or nil.
local function name_with_part(name, types)
  local found
  for known in pairs(types) do
    if ("_" .. known .. "_"):find("_" .. name .. "_", 1, true) then
      if found then
        return nil
      end
      found = known
    end
  end
  return found
end

-- Returns the known name closest to `name` when it is a likely typo, the
-- name with the unit when only "_ms" is missing, or the one name that
-- contains it as a part.
local function suggest_name(name, types)
  if types[name .. "_ms"] then
    return name .. "_ms"
  end
  local best, best_distance = nil, 3
  for known in pairs(types) do
    local distance = edit_distance(name, known)
    if distance < best_distance or
        (distance == best_distance and best and known < best) then
      best, best_distance = known, distance
    end
  end
  return best or name_with_part(name, types)
end

local function unknown_name_message(path, name, types)
  if type(name) ~= "string" then
    local where = path == "" and "" or " in " .. path:sub(1, -2)
    local key_text = (type(name) == "number" or type(name) == "boolean")
      and ("the %s key %s"):format(type(name), tostring(name))
      or ("a %s key"):format(type(name))
    return ("option names must be strings, got %s%s; pass options as "
      .. "name = value"):format(key_text, where)
  end
  local message = ("unknown option '%s%s'"):format(path, tostring(name))
  local suggestion = suggest_name(name, types)
  if suggestion then
    return message .. (" (did you mean '%s%s'?)"):format(path, suggestion)
  end

  -- A short list of names is shown whole.
  local known = {}
  for known_name in pairs(types) do
    known[#known + 1] = known_name
  end
  if #known <= 10 then
    table.sort(known)
    message = message .. (" (valid options: %s)")
      :format(table.concat(known, ", "))
  end
  return message
end


local function check_type(name, value, expected)
  local actual = type(value)
  if actual == expected then
    return nil
  end
  if expected == "table or false" and (actual == "table" or value == false) then
    return nil
  end
  local article = expected:match("^[aeiou]") and "an" or "a"
  return ("option '%s' must be %s %s, got %s"):format(
    name, article, expected, actual)
end

-- Returns a number as messages show it. tostring of NaN gives "-nan"
-- under Lua 5.4 on glibc and "nan" under LuaJIT, so NaN is always "nan".
function options.number_text(value)
  if value ~= value then
    return "nan"
  end
  return tostring(value)
end

local function check_range(name, value)
  local range = RANGES[name]
  if not range then
    return nil
  end

  local finite = value == value and value > -math.huge and value < math.huge
  local whole = finite and value == math.floor(value)
  local kind = range.integer and "an integer" or "a number"
  if not finite or value < range.min or (range.integer and not whole) then
    return ("option '%s' must be %s >= %s, got %s"):format(
      name, kind, tostring(range.min), options.number_text(value))
  end
  if range.max and value > range.max then
    return ("option '%s' must be %s from %s to %s, got %s"):format(
      name, kind, tostring(range.min), tostring(range.max),
      options.number_text(value))
  end
  return nil
end

-- Returns a plain copy of `tbl`. Each name in `types` is read once by
-- indexing, so a value from an __index metamethod is checked and used
-- like any other. The names that only pairs finds are copied too, so an
-- unknown name is still reported.
local function plain_copy(tbl, types)
  local copy = {}
  for name, value in pairs(tbl) do
    if types[name] == nil then
      copy[name] = value
    end
  end
  for name in pairs(types) do
    copy[name] = tbl[name]
  end
  return copy
end

-- Checks every entry of `tbl` against `types` ("name" = "type") and the
-- ranges. Returns an error message or nil. `path` prefixes nested names.
local function check_table(tbl, types, path)
  for name, value in pairs(tbl) do
    local expected = types[name]
    if not expected then
      return unknown_name_message(path, name, types)
    end

    local message = check_type(path .. name, value, expected)
      or (type(value) == "number" and check_range(path .. name, value))
    if message then
      return message
    end
  end
  return nil
end


-- Validates the option table of appcenter.new, or of the one-shot
-- appcenter.create_credential when `with_file_name` is true. Returns a
-- message that names the option, or nil and a plain copy of the options
-- (retry and retry.budget copied too) for the caller to use in their
-- place, which no metamethod can change after the check.
function options.validate(opts, with_file_name)
  if type(opts) ~= "table" then
    return ("options must be a table, got %s"):format(type(opts))
  end

  local types = {}
  for name, expected in pairs(CORE_TYPES) do
    types[name] = expected
  end
  for name, expected in pairs(WRAPPER_TYPES) do
    types[name] = expected
  end
  if with_file_name then
    types.file_name = "string"
  end

  local plain = plain_copy(opts, types)
  local message = check_table(plain, types, "")
  if message then
    return message
  end
  -- No `thread_pool NAME threads=N;` line of nginx.conf can define an
  -- empty name or one with a control character.
  if plain.thread_pool and not plain.thread_pool:find("^[^%c]+$") then
    return "option 'thread_pool' must be the name of a `thread_pool NAME "
      .. "threads=N;` line of nginx.conf, got an empty name or one with a "
      .. "control character"
  end

  if type(plain.retry) == "table" then
    local settings = plain_copy(plain.retry, RETRY_TYPES)
    plain.retry = settings
    message = check_table(settings, RETRY_TYPES, "retry.")
    if message then
      return message
    end
    if type(settings.budget) == "table" then
      settings.budget = plain_copy(settings.budget, BUDGET_TYPES)
      message = check_table(settings.budget, BUDGET_TYPES, "retry.budget.")
      if message then
        return message
      end
    end
  end
  return nil, plain
end

-- Validates the names and types of the options of an upload method.
-- Returns a message that names the option, or nil and a plain copy of
-- the options, as options.validate does.
function options.validate_upload(opts)
  local plain = plain_copy(opts, UPLOAD_TYPES)
  local message = check_table(plain, UPLOAD_TYPES, "")
  if message then
    return message
  end
  return nil, plain
end

-- Checks the values of upload options that appcenter.core's upload
-- rejects, and with `open_path` also that opts.path opens as an upload
-- opens it, which rejects what is not a regular file. Returns nil, or the
-- message of the core's invalid_argument error for the same input.
function options.check_upload_values(opts, open_path)
  if (opts.path == nil) == (opts.body == nil) then
    return "invalid upload options: pass exactly one of path (a file) or "
      .. "body (a string)"
  end

  local nul_at = opts.path and opts.path:find("\0", 1, true)
  if nul_at then
    return ("invalid path: NUL byte at byte %d; remove NUL bytes")
      :format(nul_at)
  end

  local content_type = opts.content_type
  if content_type == "" then
    return "invalid upload option content_type: it is empty"
  end
  local at = content_type and content_type:find("[\r\n%z]")
  if at then
    local nul = content_type:byte(at) == 0
    return ("invalid upload option content_type: %s at byte %d; remove %s")
      :format(nul and "NUL byte" or "line break", at, nul and "NUL bytes"
        or "line breaks (a trailing newline from a file is a common cause)")
  end
  if content_type and not content_type:find("[^ \t]") then
    return "invalid upload option content_type: it contains only white "
      .. "space; pass a media type such as text/plain, or leave "
      .. "content_type out"
  end

  local timeout_ms = opts.timeout_ms
  if timeout_ms ~= nil
      and not (timeout_ms >= 0 and timeout_ms <= options.MAX_UPLOAD_TIMEOUT_MS) then
    -- Formatted as the core formats it.
    local value_text = timeout_ms ~= timeout_ms and "nan"
      or ("%.17g"):format(timeout_ms)
    return ("invalid upload options: timeout_ms must be a number of "
      .. "milliseconds from 0 (no limit) to %d, got %s"):format(
      options.MAX_UPLOAD_TIMEOUT_MS, value_text)
  end

  -- The core opens without blocking, where io.open of a FIFO would wait
  -- for a writer.
  if open_path and opts.path then
    local _, message = core.check_upload_path(opts.path)
    return message
  end
  return nil
end

-- Returns a copy of the options that appcenter.core accepts.
function options.core_options(opts)
  local core_opts = {}
  for name in pairs(CORE_TYPES) do
    core_opts[name] = opts[name]
  end
  return core_opts
end

local function with_defaults(tbl, defaults)
  local merged = {}
  for name, default in pairs(defaults) do
    if tbl[name] == nil then
      merged[name] = default
    else
      merged[name] = tbl[name]
    end
  end
  return merged
end

-- Builds the policy that retry.run expects from validated options.
-- `clock.now` and `clock.sleep` are the defaults for the options of the
-- same names.
--
-- NOTE: the default `random` is math.random. Lua 5.4 seeds it randomly
-- at start-up, but LuaJIT 2.1 starts every process with the same seed, so
-- on LuaJIT processes that start together draw the same delays unless the
-- application calls math.randomseed or passes retry.random.
function options.build_policy(opts, clock)
  local settings = opts.retry
  if settings == false then
    settings = { max_attempts = 1 }
  elseif settings == nil then
    settings = {}
  end

  local policy = with_defaults(settings, retry.DEFAULTS)
  policy.timeout_ms = opts.timeout_ms or options.DEFAULT_TIMEOUT_MS
  policy.now = opts.now or clock.now
  policy.sleep = opts.sleep or clock.sleep
  policy.random = settings.random or math.random
  policy.on_retry = settings.on_retry

  if opts.retry == false then
    -- One attempt, bounded by the core client's own timeout.
    policy.deadline_ms = nil
  elseif settings.budget ~= false then
    policy.budget = budget.new(with_defaults(settings.budget or {},
      budget.DEFAULTS))
  end
  return policy
end

return options
