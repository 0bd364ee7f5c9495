-- content_by_lua handler of examples/nginx/nginx.conf: GET or POST
-- /credential?file_name=NAME returns an upload credential as JSON.
--
-- Settings come from the environment, and nginx.conf passes each variable
-- on with an `env` line:
--
--   APPCENTER_ENDPOINT or APPCENTER_REGION   where App Center is
--   APPCENTER_PROJECT_ID                     the project id
--   APPCENTER_TOKEN_FILE                     a file that contains the token,
--   or APPCENTER_TOKEN                       or the token itself,
--   or APPCENTER_AK and APPCENTER_SK         or an access key pair
--   APPCENTER_TIMEOUT_MS                     optional: each attempt's
--                                            timeout, 30000 by default
--
-- The token file is read once per worker, when the first request arrives;
-- reload nginx after rotating it.
--
-- NOTE: the handler does not authenticate its callers. Anyone who reaches
-- the port gets a credential, so put it behind the application's own
-- authentication.

local appcenter = require("appcenter")
local cjson = require("cjson.safe")

local handler = {}

-- This worker's client, created on the first request. It keeps the retry
-- budget; the connections live in the thread pool's Lua VMs.
local client

local function read_token_file(path)
  local file, message = io.open(path, "rb")
  if not file then
    return nil, ("cannot read APPCENTER_TOKEN_FILE: %s"):format(message)
  end
  local token, read_error = file:read("*a")
  file:close()
  if read_error then
    return nil, ("cannot read APPCENTER_TOKEN_FILE %s: %s"):format(path,
      read_error)
  end
  -- Trimmed by finding its first and last byte that is not white space,
  -- in linear time.
  local first = token and token:find("%S")
  token = first and token:match(".*%S", first)
  if not token or token == "" then
    return nil, ("APPCENTER_TOKEN_FILE %s is empty"):format(path)
  end
  return token
end

-- Builds the client options from the environment. Returns nil and a
-- message when the token file cannot be read; appcenter.new reports the
-- other missing settings.
local function options_from_environment()
  local opts = {
    endpoint = os.getenv("APPCENTER_ENDPOINT"),
    region = os.getenv("APPCENTER_REGION"),
    project_id = os.getenv("APPCENTER_PROJECT_ID"),
    retry = {
      on_retry = function(err, attempt, delay_ms)
        ngx.log(ngx.WARN, "appcenter: attempt ", attempt, " failed (",
          tostring(err), "), retrying in ", delay_ms, " ms")
      end,
    },
  }

  local timeout = os.getenv("APPCENTER_TIMEOUT_MS")
  if timeout then
    opts.timeout_ms = tonumber(timeout)
    if not opts.timeout_ms then
      return nil, ("APPCENTER_TIMEOUT_MS must be a number of "
        .. "milliseconds, got '%s'"):format(timeout)
    end
  end

  local token_file = os.getenv("APPCENTER_TOKEN_FILE")
  if token_file then
    local token, message = read_token_file(token_file)
    if not token then
      return nil, message
    end
    opts.token = token
  elseif os.getenv("APPCENTER_TOKEN") then
    opts.token = os.getenv("APPCENTER_TOKEN")
  elseif os.getenv("APPCENTER_AK") or os.getenv("APPCENTER_SK") then
    opts.ak = os.getenv("APPCENTER_AK")
    opts.sk = os.getenv("APPCENTER_SK")
  else
    -- appcenter.new would look further, in HUAWEICLOUD_SDK_* variables
    -- and a profile file, and name those; this handler uses neither.
    return nil, "missing credentials: set APPCENTER_TOKEN_FILE, "
      .. "APPCENTER_TOKEN, or APPCENTER_AK and APPCENTER_SK in the "
      .. "environment of nginx (nginx.conf keeps them with env lines)"
  end
  return opts
end

local function get_client()
  if client then
    return client
  end

  local opts, message = options_from_environment()
  if not opts then
    return nil, message
  end
  local new_client, err = appcenter.new(opts)
  if not new_client then
    return nil, tostring(err)
  end
  client = new_client
  return client
end

-- lua-cjson 2.1.0 encodes every empty table as {}, but the statement's
-- action and resource are arrays, so an empty one is swapped for this
-- string, which cjson escapes as "\u0001empty array", and then for [].
-- Only the value of an "action" or "resource" key is swapped back, so a
-- server's string with the same text stays a string.
local EMPTY_ARRAY = "\1empty array"

local function mark_empty_arrays(result)
  local statement = type(result) == "table" and type(result.policy) == "table"
    and result.policy.statement
  if type(statement) ~= "table" then
    return
  end
  for _, name in ipairs({ "action", "resource" }) do
    if type(statement[name]) == "table" and next(statement[name]) == nil then
      statement[name] = EMPTY_ARRAY
    end
  end
end

local function send_json(status, value)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  -- The body contains a secret key, which no cache may keep.
  ngx.header["Cache-Control"] = "no-store"
  mark_empty_arrays(value)
  local body = cjson.encode(value)
    :gsub('"action":"\\u0001empty array"', '"action":[]')
    :gsub('"resource":"\\u0001empty array"', '"resource":[]')
  ngx.say(body)
  -- The status went out with the body, so the request only needs to end.
  return ngx.exit(ngx.HTTP_OK)
end

local function send_error(status, code, message, request_id)
  return send_json(status, {
    error_code = code,
    error_msg = message,
    request_id = request_id,
  })
end

function handler.handle()
  local method = ngx.req.get_method()
  if method ~= "GET" and method ~= "POST" then
    ngx.header["Allow"] = "GET, POST"
    return send_error(405, "method_not_allowed", "use GET or POST")
  end

  -- nginx reads at most 100 arguments and returns "truncated" past them.
  local args, args_error = ngx.req.get_uri_args()
  if args_error == "truncated" then
    return send_error(400, "invalid_file_name",
      "too many query arguments; pass only file_name")
  end
  local file_name = args.file_name
  if type(file_name) ~= "string" then
    return send_error(400, "invalid_file_name",
      "pass exactly one file_name query argument, e.g. "
      .. "/credential?file_name=replay-0042.bin")
  end

  local api, setup_error = get_client()
  if not api then
    ngx.log(ngx.ERR, "appcenter: client setup failed: ", setup_error)
    return send_error(500, "setup_failed",
      "the credential service is not configured; see the error log")
  end

  -- The call raises, rather than block the worker, when nginx cannot run
  -- it: every worker-thread VM busy, or a missing thread_pool line.
  local ok, result, err = pcall(api.create_credential, api, file_name)
  if not ok then
    ngx.log(ngx.ERR, "appcenter: create_credential raised for ", file_name,
      ": ", tostring(result))
    return send_error(503, "unavailable",
      "the credential service cannot take the call now; try again later")
  end
  if not result then
    if err.kind == "invalid_argument" then
      return send_error(400, "invalid_file_name", err.message)
    end
    -- Error messages contain no secrets, so the whole error can be logged.
    ngx.log(ngx.ERR, "appcenter: create_credential failed for ", file_name,
      " after ", err.attempts, " attempt(s): ", tostring(err))
    if err.status == 401 or err.status == 403 then
      -- App Center rejected this server's own credentials, which is no
      -- business of the caller's.
      return send_error(502, "upstream_auth_failed", "the credential "
        .. "service could not authenticate to App Center; see the error log",
        err.request_id)
    end
    -- The kind, such as "timeout", where App Center sent no error code.
    local code = err.kind == "http" and err.code or err.kind
    local status = err.kind == "timeout" and 504 or 502
    return send_error(status, code, err.message, err.request_id)
  end
  return send_json(200, result)
end

return handler
