-- Every error path of every layer, run with distinctive fake secrets: none
-- may appear in an error field, in tostring of an error or a client, in a
-- raised error or in an on_retry hook argument. The servers echo the
-- secrets back wherever a server controls the text.

local appcenter = require("appcenter")
local cjson = require("cjson")
local core = require("appcenter.core")
local emulator = require("spec.support.emulator")
local hostile = require("spec.support.hostile")
local poll = require("spec.support.poll")

local TOKEN = "fake-TOKEN-secret-a7c4e1f09b"
local AK = "FAKEAKSECRETSSPEC001"
local SK = "fake-SK-secret-b8d5f2a1c3"
local SECURITY_TOKEN = "fake-SECURITY-TOKEN-secret-c9e6a3b2d4"
local RETURNED_SECRET = "fake-RETURNED-secret-d0f7b4c3e5"
local RETURNED_SECURITY_TOKEN = "fake-RETURNED-SECURITY-TOKEN-e1a8c5d4f6"
local PROXY_PASSWORD = "fake-PROXY-password-f2b9d6e5a7"
local PROJECT_ID = emulator.DEFAULT_PROJECT_ID

-- A 40 KiB token, the size of a large IAM token, whose echo is cut by the
-- message limits in the middle of the token.
local LONG_TOKEN = (function()
  local parts = { "fake-LONG-TOKEN-secret-" }
  local state = 12345
  for i = 2, 40 * 1024 / 8 do
    state = (state * 1103515245 + 12345) % 2147483648
    parts[i] = ("%08x"):format(state)
  end
  return table.concat(parts)
end)()

local SECRETS = {
  TOKEN, SK, SECURITY_TOKEN, RETURNED_SECRET, RETURNED_SECURITY_TOKEN,
  PROXY_PASSWORD, LONG_TOKEN,
}

-- The shortest piece of a secret that counts as a leak. Redaction removes
-- what remains of a secret cut at the end of a message down to 8 bytes.
local MIN_LEAK_BYTES = 12
-- Pieces are taken from the first bytes of each secret, where a cut
-- message leaves them.
local CHECKED_PREFIX_BYTES = 256

-- Raises when text contains a secret or a piece of one.
local function assert_no_secret(text, where)
  assert.is_string(text)
  for _, secret in ipairs(SECRETS) do
    local last = math.min(#secret, CHECKED_PREFIX_BYTES) - MIN_LEAK_BYTES + 1
    for start = 1, last do
      local piece = secret:sub(start, start + MIN_LEAK_BYTES - 1)
      if text:find(piece, 1, true) then
        error(("%s leaks %q of a secret: %s"):format(where, piece, text), 2)
      end
    end
  end
end

-- Checks every string in value (keys, values, nested tables) and the
-- tostring of every table with a metatable.
local function assert_clean(value, where, seen)
  seen = seen or {}
  if type(value) == "string" then
    assert_no_secret(value, where)
  elseif type(value) == "table" and not seen[value] then
    seen[value] = true
    if getmetatable(value) then
      assert_no_secret(tostring(value), "tostring of " .. where)
    end
    for key, item in pairs(value) do
      assert_clean(key, where .. " key", seen)
      assert_clean(item, where .. "." .. tostring(key), seen)
    end
  elseif type(value) == "userdata" then
    assert_no_secret(tostring(value), "tostring of " .. where)
  end
end

-- Checks an error return: result is nil and err is a clean error table.
local function assert_clean_error(result, err, where)
  assert.is_nil(result, where .. " returned a result")
  assert.is_table(err, where .. " returned no error table")
  assert.is_string(err.kind)
  assert_clean(err, where)
end

-- Every place where a server controls the text of an error, each one
-- echoing all client secrets.
local function echo_faults(secrets)
  local echoed = table.concat(secrets, " ")
  return {
    { status = 401, body = cjson.encode{ error_code = "APIGW.0301 " .. echoed, error_msg = "bad " .. echoed } },
    { status = 403, body = cjson.encode{ errorCode = echoed, errorMsg = echoed } },
    { status = 400, body = cjson.encode{ error = { code = echoed, message = echoed } } },
    { status = 500, body = cjson.encode{ code = echoed } },
    { status = 502, body = "<html><body><h1>Bad Gateway</h1><p>" .. echoed .. "</p></body></html>" },
    { status = 503, body = "upstream said: " .. echoed, headers = { ["Retry-After"] = secrets[1] } },
    { status = 429, body = "", headers = { ["X-Request-Id"] = secrets[1] } },
    { status = 200, body = "not json " .. echoed, headers = { ["X-Request-Id"] = secrets[#secrets] } },
    { status = 200, body = cjson.encode{ server_end_point = echoed }, headers = { ["X-Request-Id"] = secrets[1] } },
    { oversize_bytes = 2 * 1024 * 1024, headers = { ["X-Request-Id"] = secrets[1] } },
  }
end

describe("secrets", function()
  local emu, closed_port

  setup(function()
    emu = emulator.start{ args = {
      "--token", TOKEN, LONG_TOKEN, "--ak", AK, "--sk", SK,
    } }
    -- A port that nothing listens on: a server started and stopped.
    local server = hostile.start{ mode = "silent" }
    closed_port = server.port
    server:stop()
  end)

  teardown(function()
    emu:stop()
  end)

  before_each(function()
    emu:reset()
  end)

  local function token_options(extra)
    local opts = { endpoint = emu.url, project_id = PROJECT_ID, token = TOKEN }
    for key, value in pairs(extra or {}) do
      opts[key] = value
    end
    return opts
  end

  local function aksk_options(extra)
    local opts = { endpoint = emu.url, project_id = PROJECT_ID, ak = AK, sk = SK }
    for key, value in pairs(extra or {}) do
      opts[key] = value
    end
    return opts
  end

  describe("core validation", function()
    local cases = {
      { "token with a line break", { token = TOKEN .. "\n" } },
      { "token too long", { token = string.rep(TOKEN, math.floor(256 * 1024 / #TOKEN) + 1) } },
      { "security_token with a line break", { ak = AK, sk = SK, security_token = SECURITY_TOKEN .. "\r" } },
      { "security_token with NUL", { ak = AK, sk = SK, security_token = SECURITY_TOKEN .. "\0" } },
      { "token and ak", { token = TOKEN, ak = AK, sk = SK } },
      { "sk without ak", { sk = SK } },
      { "security_token without ak", { token = TOKEN, security_token = SECURITY_TOKEN } },
      { "password in the endpoint", { token = TOKEN, endpoint = "https://user:" .. TOKEN .. "@127.0.0.1" } },
      { "missing project_id", { token = TOKEN, project_id = false } },
      { "bad timeout", { token = TOKEN, timeout_ms = -1 } },
    }
    for _, case in ipairs(cases) do
      it("hides secrets in core.new: " .. case[1], function()
        local opts = { endpoint = emu.url, project_id = PROJECT_ID }
        for key, value in pairs(case[2]) do
          opts[key] = value or nil
        end
        local client, err = core.new(opts)
        assert_clean_error(client, err, case[1])
      end)
    end

    it("hides secrets in raised option errors", function()
      local bad = {
        { token = TOKEN, timeout_ms = "1000" },
        { token = TOKEN, unknown_option = TOKEN },
        { token = TOKEN, retry = { max_attempts = TOKEN } },
        { token = TOKEN, retry = { unknown = SK } },
      }
      for _, opts in ipairs(bad) do
        opts.endpoint, opts.project_id = emu.url, PROJECT_ID
        for _, new in ipairs{ core.new, appcenter.new } do
          local ok, message = pcall(new, opts)
          if not ok then
            assert_no_secret(tostring(message), "raised error")
          end
        end
      end
    end)

    it("hides secrets in file_name errors", function()
      for _, new in ipairs{ core.new, appcenter.new } do
        for _, opts in ipairs{ token_options(), aksk_options{ security_token = SECURITY_TOKEN } } do
          local client = assert(new(opts))
          for _, name in ipairs{ "", "a:b", "bad\0name", ("x"):rep(300), "\255" } do
            local result, err = client:create_credential(name)
            assert_clean_error(result, err, "file_name " .. ("%q"):format(name))
          end
          client:close()
        end
      end
    end)

    it("hides secrets in tostring of clients", function()
      local clients = {
        assert(core.new(token_options())),
        assert(core.new(aksk_options{ security_token = SECURITY_TOKEN })),
        assert(appcenter.new(token_options())),
        assert(appcenter.new(aksk_options())),
      }
      for i, client in ipairs(clients) do
        assert_clean(client, "client " .. i)
        client:close()
        assert_clean(client, "closed client " .. i)
      end
    end)
  end)

  describe("http errors", function()
    local clients = {
      { "token", function() return core.new(token_options()) end, { TOKEN } },
      { "long token", function() return core.new(token_options{ token = LONG_TOKEN }) end, { LONG_TOKEN } },
      { "AK/SK", function() return core.new(aksk_options()) end, { SK } },
    }
    for _, client_case in ipairs(clients) do
      local label, new_client, secrets = client_case[1], client_case[2], client_case[3]
      it("hides secrets echoed by the server (" .. label .. ")", function()
        local client = assert(new_client())
        for index, fault in ipairs(echo_faults(secrets)) do
          emu:fault(fault)
          local result, err = client:create_credential("setup.exe")
          assert_clean_error(result, err, label .. " fault " .. index)
        end
        client:close()
      end)
    end

    it("hides a token given with blanks around it", function()
      local client = assert(core.new(token_options{ token = "\t" .. TOKEN .. " " }))
      emu:fault{ status = 401, body = cjson.encode{ error_msg = "bad token " .. TOKEN } }

      local result, err = client:create_credential("setup.exe")

      assert_clean_error(result, err, "padded token")
      assert.equals("bad token ***", err.message)
      client:close()
    end)

    it("hides the returned secret when the answer is invalid", function()
      local client = assert(core.new(token_options()))
      emu:fault{ status = 200, body = cjson.encode{
        server_end_point = 1, credential = { secret = RETURNED_SECRET },
      } }
      local result, err = client:create_credential("setup.exe")
      assert_clean_error(result, err, "invalid answer")
      client:close()
    end)

    it("hides a credential echoed in an error body", function()
      local client = assert(core.new(token_options()))
      local credential = {
        access = "FAKEACCESS",
        secret = RETURNED_SECRET,
        security_token = RETURNED_SECURITY_TOKEN,
      }
      local faults = {
        { status = 500, body = cjson.encode{ credential = credential } },
        { status = 502, body = cjson.encode{ error_code = RETURNED_SECRET, credential = credential } },
        -- Cut JSON, so it does not decode and its text would be quoted.
        { status = 503, body = '{"credential":{"secret":"' .. RETURNED_SECRET .. '","security_token":"'
          .. RETURNED_SECURITY_TOKEN },
      }
      for index, fault in ipairs(faults) do
        emu:fault(fault)
        local result, err = client:create_credential("setup.exe")
        assert_clean_error(result, err, "echoed credential " .. index)
        assert.equal("http", err.kind)
        assert.equal(fault.status, err.status)
      end
      client:close()
    end)

    it("hides a credential past the search limits", function()
      local client = assert(core.new(token_options()))
      local credential = { secret = RETURNED_SECRET, security_token = RETURNED_SECURITY_TOKEN }
      -- lua_next visits an array's elements in order, so the credential
      -- in the last element is past the 512 entries that the search visits.
      local siblings = {}
      for i = 1, 600 do
        siblings[i] = i
      end
      siblings[601] = { credential = credential }
      local echo = { error_code = "E2 " .. RETURNED_SECRET, error_msg = "echo " .. RETURNED_SECURITY_TOKEN }
      local faults = {
        { status = 401, body = cjson.encode{ error_code = echo.error_code, error_msg = echo.error_msg,
          a = { b = { c = { d = { e = { credential = credential } } } } } } },
        { status = 401, body = cjson.encode{ error_code = echo.error_code, error_msg = echo.error_msg,
          a = siblings } },
        { status = 200, body = cjson.encode{ error_code = echo.error_code, error_msg = echo.error_msg,
          a = siblings } },
      }
      for index, fault in ipairs(faults) do
        emu:fault(fault)
        local result, err = client:create_credential("setup.exe")
        assert_clean_error(result, err, "credential past the limits " .. index)
        assert.equal(fault.status, err.status)
      end
      client:close()
    end)

    it("hides a credential in an error body over max_body_bytes", function()
      local client = assert(core.new(token_options{ max_body_bytes = 4096 }))
      emu:fault{ status = 500, body = cjson.encode{ credential = RETURNED_SECRET,
        pad = ("x"):rep(8000) } }

      local result, err = client:create_credential("setup.exe")

      assert_clean_error(result, err, "error body over max_body_bytes")
      assert.equal(500, err.status)
      client:close()
    end)

    it("hides secrets returned anywhere in an error body", function()
      local client = assert(core.new(token_options()))
      local echo = "echo " .. RETURNED_SECRET .. " " .. RETURNED_SECURITY_TOKEN
      local bodies = {
        { error_code = "GW.1", error_msg = echo, data = { credential = {
          secret = RETURNED_SECRET, security_token = RETURNED_SECURITY_TOKEN } } },
        { error = { code = "GW.1", message = echo,
          credential = { secret = RETURNED_SECRET, security_token = RETURNED_SECURITY_TOKEN } } },
        { error_code = "GW.1", error_msg = echo, credential = RETURNED_SECRET,
          security_token = { RETURNED_SECURITY_TOKEN } },
        { { error_code = "GW.1", error_msg = echo, secret = RETURNED_SECRET,
          security_token = RETURNED_SECURITY_TOKEN } },
        -- No error fields: the body itself would be quoted.
        { data = { credential = { secret = RETURNED_SECRET,
          security_token = RETURNED_SECURITY_TOKEN } } },
      }
      for index, body in ipairs(bodies) do
        emu:fault{ status = 502, body = cjson.encode(body) }
        local result, err = client:create_credential("setup.exe")
        assert_clean_error(result, err, "returned secret " .. index)
      end
      client:close()
    end)

    it("hides a secret cut inside a message", function()
      local client = assert(core.new(token_options()))
      -- The echo reaches past the 200 bytes of the quoted error message,
      -- and more text follows the cut.
      emu:fault{ status = 200, body = cjson.encode{
        error_code = "GW.1", error_msg = ("a"):rep(170) .. RETURNED_SECRET,
        credential = { secret = RETURNED_SECRET },
      } }
      local result, err = client:create_credential("setup.exe")
      assert_clean_error(result, err, "cut in a 200")
      assert.equal("invalid_response", err.kind)
      assert.is_nil(err.message:find(RETURNED_SECRET:sub(1, 8), 1, true), err.message)

      -- A Location that echoes the token past its 200-byte cut.
      emu:fault{ status = 302, body = "", headers = {
        Location = "http://127.0.0.1:1/" .. ("b"):rep(163) .. "?t=" .. TOKEN } }
      result, err = client:create_credential("setup.exe")
      assert_clean_error(result, err, "cut in a Location")
      assert.is_nil(err.message:find(TOKEN:sub(1, 8), 1, true), err.message)
      client:close()
    end)

    it("hides secrets in non-blocking requests", function()
      local client = assert(core.new(token_options()))
      local faults = echo_faults{ TOKEN }
      for index, fault in ipairs(faults) do
        emu:fault(fault)
        local outcome
        client:start("setup.exe", function(result, err)
          outcome = { result = result, err = err }
        end)
        poll.until_done(client, function()
          return outcome
        end)
        assert.is_table(outcome, "no callback for fault " .. index)
        assert_clean_error(outcome.result, outcome.err, "async fault " .. index)
      end
      client:close()
    end)
  end)

  describe("transport errors", function()
    it("hides secrets when the connection is refused", function()
      local client = assert(core.new(token_options{ endpoint = "http://127.0.0.1:" .. closed_port }))
      local result, err = client:create_credential("setup.exe")
      assert_clean_error(result, err, "connection refused")
      client:close()
    end)

    it("hides the proxy password", function()
      -- 0.0.0.0 reaches this machine but is not a loopback address, so
      -- the request goes to the proxy.
      local client = assert(core.new(token_options{
        endpoint = emu.url:gsub("127%.0%.0%.1", "0.0.0.0"), allow_http = true,
        proxy = "http://user:" .. PROXY_PASSWORD .. "@127.0.0.1:" .. closed_port,
      }))
      local result, err = client:create_credential("setup.exe")
      assert_clean_error(result, err, "proxy refused")
      assert_clean(client, "client with proxy")
      client:close()
    end)

    it("hides the proxy password in proxy errors", function()
      for _, proxy in ipairs{
        "foo://user:" .. PROXY_PASSWORD .. "@127.0.0.1:1",
        "http://user:" .. PROXY_PASSWORD .. "@[bad",
      } do
        local client, err = core.new(token_options{ proxy = proxy })
        assert.is_nil(client)
        assert.equal("invalid_argument", err.kind)
        assert_clean(err, "error for " .. proxy:match("^%a+"))
      end
    end)

    it("hides secrets on timeouts, drops and truncation", function()
      local client = assert(core.new(aksk_options{ timeout_ms = 500 }))
      for index, fault in ipairs{
        { delay_ms = 1500 },
        { drop = true },
        { truncate = true, headers = { ["X-Request-Id"] = SK } },
      } do
        emu:fault(fault)
        local result, err = client:create_credential("setup.exe")
        assert_clean_error(result, err, "transport fault " .. index)
      end
      client:close()
    end)
  end)

  describe("wrapper retries", function()
    for _, case in ipairs{
      { "token", token_options, { TOKEN } },
      { "AK/SK", aksk_options, { SK } },
    } do
      it("hides secrets in on_retry arguments (" .. case[1] .. ")", function()
        local hooks = {}
        local client = assert(appcenter.new(case[2]{
          timeout_ms = 500,
          retry = {
            max_attempts = 4, base_delay_ms = 1, max_delay_ms = 2,
            on_retry = function(err, attempt, delay_ms)
              hooks[#hooks + 1] = { err = err, attempt = attempt, delay_ms = delay_ms }
            end,
          },
        }))
        local echoed = table.concat(case[3], " ")
        emu:fault{
          { status = 503, body = cjson.encode{ error_code = echoed, error_msg = echoed },
            headers = { ["X-Request-Id"] = echoed, ["Retry-After"] = echoed } },
          { status = 502, body = "<p>" .. echoed .. "</p>" },
          { status = 500, body = cjson.encode{ error = { code = echoed, message = echoed } } },
          { status = 429, body = echoed },
        }
        local result, err = client:create_credential("setup.exe")
        client:close()
        assert_clean_error(result, err, "final error")
        assert.equals(4, err.attempts)
        assert.equals(3, #hooks)
        for index, hook in ipairs(hooks) do
          assert_clean(hook, "on_retry call " .. index)
        end
      end)
    end

    it("hides secrets in the one-shot call", function()
      emu:fault{ status = 401, body = cjson.encode{ error_msg = TOKEN } }
      local result, err = appcenter.create_credential(token_options{ file_name = "setup.exe", retry = false })
      assert_clean_error(result, err, "one-shot")
    end)
  end)

  describe("upload errors", function()
    local obs_servers = {}

    teardown(function()
      for _, server in ipairs(obs_servers) do
        server:stop()
      end
    end)

    local function credential_result(server_end_point)
      return {
        server_end_point = server_end_point,
        bucket_name = "appcenter-bucket",
        object_path = "app-file/0a1b/setup.exe",
        credential = {
          access = "FAKEISSUEDACCESS0001",
          secret = RETURNED_SECRET,
          security_token = RETURNED_SECURITY_TOKEN,
        },
      }
    end

    local function obs_error_server(secrets_text, long)
      local message = long and (("m"):rep(240) .. secrets_text) or secrets_text
      local body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error>"
        .. "<Code>AccessDenied " .. secrets_text .. "</Code>"
        .. "<Message>" .. message .. "</Message>"
        .. "<RequestId>" .. secrets_text .. "</RequestId></Error>"
      local server = hostile.start{
        mode = "fixed", status = 403, body = body,
        headers = { "Content-Type: application/xml", "Retry-After: " .. RETURNED_SECRET },
      }
      obs_servers[#obs_servers + 1] = server
      return server
    end

    for _, case in ipairs{
      { "token", token_options, { TOKEN } },
      { "AK/SK", aksk_options, { SK, SECURITY_TOKEN }, { security_token = SECURITY_TOKEN } },
    } do
      it("hides secrets echoed by OBS (" .. case[1] .. ")", function()
        local client = assert(core.new(case[2](case[4])))
        local echoed = table.concat(case[3], " ") .. " " .. RETURNED_SECRET .. " "
          .. RETURNED_SECURITY_TOKEN
        for _, long in ipairs{ false, true } do
          local server = obs_error_server(echoed, long)
          local meta, err = client:upload(credential_result("127.0.0.1:" .. server.port),
            { body = "data", path_style = true })
          assert_clean_error(meta, err, "OBS error" .. (long and " (long message)" or ""))
          assert.equals(403, err.status)
        end
        client:close()
      end)
    end

    -- Headers carry a value without the spaces and tabs around it, so
    -- that is the form a server can echo.
    it("hides a security token given with blanks around it", function()
      local client = assert(core.new(token_options()))
      local server = obs_error_server(RETURNED_SECURITY_TOKEN .. " " .. RETURNED_SECRET)
      local result = credential_result("127.0.0.1:" .. server.port)
      result.credential.security_token = " \t" .. RETURNED_SECURITY_TOKEN .. "  "

      local meta, err = client:upload(result, { body = "data", path_style = true })

      assert_clean_error(meta, err, "OBS error")
      assert.equals(403, err.status)
      client:close()
    end)

    it("hides secrets of an OBS error over max_body_bytes", function()
      local client = assert(core.new(token_options{ max_body_bytes = 256 }))
      local server = obs_error_server(TOKEN .. " " .. RETURNED_SECRET .. " "
        .. RETURNED_SECURITY_TOKEN, true)

      local meta, err = client:upload(credential_result("127.0.0.1:" .. server.port),
        { body = "data", path_style = true })

      assert_clean_error(meta, err, "OBS error over max_body_bytes")
      assert.equals("http", err.kind)
      assert.equals(403, err.status)
      client:close()
    end)

    it("hides secrets when OBS is unreachable", function()
      local client = assert(core.new(token_options()))
      local meta, err = client:upload(credential_result("127.0.0.1:" .. closed_port),
        { body = "data", path_style = true })
      assert_clean_error(meta, err, "OBS refused")
      client:close()
    end)

    it("hides secrets in invalid upload arguments", function()
      local client = assert(core.new(token_options()))
      local cases = {
        { "bucket with a line break", function(r) r.bucket_name = "Bad_Bucket\n" end, {} },
        { "bad endpoint", function(r) r.server_end_point = "a b" end, {} },
        { "no body", function() end, { path_style = true } },
        { "missing file", function() end, { path = "/nonexistent/setup.exe" } },
        { "missing secret", function(r) r.credential.secret = nil end, { body = "x" } },
      }
      for _, case in ipairs(cases) do
        local result = credential_result("127.0.0.1:" .. closed_port)
        case[2](result)
        local meta, err = client:upload(result, case[3])
        assert_clean_error(meta, err, case[1])
      end
      client:close()
    end)
  end)

  describe("command-line tool", function()
    it("keeps the token out of its error line", function()
      emu:fault{ status = 401, body = cjson.encode{ error_code = "APIGW.0307", error_msg = "token " .. TOKEN },
        headers = { ["X-Request-Id"] = TOKEN } }
      local stderr_path = os.tmpname()
      local pipe = assert(io.popen(("env APPCENTER_TOKEN='%s' tools/appcenter-credential --endpoint '%s'"
        .. " --project-id %s setup.exe 2>'%s' </dev/null; echo \"exit=$?\"")
        :format(TOKEN, emu.url, PROJECT_ID, stderr_path)))
      local stdout = pipe:read("*a")
      pipe:close()
      local file = assert(io.open(stderr_path))
      local stderr = file:read("*a")
      file:close()
      os.remove(stderr_path)
      assert.matches("exit=1", stdout)
      assert.matches("APIGW.0307", stderr)
      assert_no_secret(stdout, "standard output")
      assert_no_secret(stderr, "standard error")
    end)
  end)
end)
