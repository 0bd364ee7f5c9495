-- appcenter.core against the local emulator: results, validation, HTTP
-- errors, transport failures, keep-alive and secrets.

local core = require("appcenter.core")
local cjson = require("cjson")
local emulator = require("spec.support.emulator")
local decode_hook = require("spec.support.decode_hook")
local hostile = require("spec.support.hostile")
local poll = require("spec.support.poll")
local subprocess = require("spec.support.subprocess")

local FORBIDDEN = { ":", "^", ";", "|", "~", "`", "{", "}", "[", "]", "<", ">" }

describe("appcenter.core", function()
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

  local function options(extra)
    local opts = {
      endpoint = emu.url,
      project_id = emu.project_id,
      token = emu.token,
    }
    for k, v in pairs(extra or {}) do
      opts[k] = v
    end
    return opts
  end

  local function new_client(extra)
    local client, err = core.new(options(extra))
    assert.is_nil(err)
    return client
  end

  local function error_body(code, message)
    return cjson.encode({ error_code = code, error_msg = message })
  end

  local function valid_body()
    return {
      server_end_point = "obs.example", bucket_name = "b",
      object_path = "app-file/a.txt",
      policy = { version = "1.1", statement = {
        effect = "Allow", action = { "obs:object:PutObject" },
        resource = { "obs:*:*:object:b/app-file/a.txt" } } },
      credential = { access = "A", secret = "S", security_token = "T" },
    }
  end

  describe("result", function()
    local result, meta

    setup(function()
      emu:reset()
      result, meta = new_client():create_credential("setup.exe")
    end)

    it("has the top-level strings", function()
      assert.is_string(result.server_end_point)
      assert.is_string(result.bucket_name)
      assert.matches("setup%.exe$", result.object_path)
    end)

    it("has the policy", function()
      local statement = result.policy.statement
      assert.equals("1.1", result.policy.version)
      assert.equals("Allow", statement.effect)
      assert.same({ "obs:object:PutObject" }, statement.action)
      assert.matches(result.object_path, statement.resource[1], 1, true)
    end)

    it("has the credential", function()
      assert.is_string(result.credential.access)
      assert.is_string(result.credential.secret)
      assert.is_string(result.credential.security_token)
    end)

    it("has the meta", function()
      assert.equals(200, meta.status)
      assert.is_string(meta.request_id)
      assert.equals(1, meta.attempts)
      assert.is_number(meta.elapsed_ms)
    end)
  end)

  describe("request", function()
    it("sends method, path and headers", function()
      assert.is_table(new_client():create_credential("a.txt"))
      local last = emu:stats().last_request
      assert.equals("POST", last.method)
      assert.equals("/v1/" .. emu.project_id
        .. "/app-center/buckets/actions/create-credential", last.path)
      assert.equals("application/json", last.headers["content-type"])
      assert.equals(emu.token, last.headers["x-auth-token"])
    end)

    it("names module, libcurl and Lua in User-Agent", function()
      assert.is_table(new_client():create_credential("a.txt"))
      local agent = emu:stats().last_request.headers["user-agent"]
      assert.matches("^lua%-appcenter/%d+%.%d+%.%d+ libcurl/%S+ %S+", agent)
    end)

    it("escapes JSON and keeps UTF-8 as is", function()
      local name = 'r\195\169sum\195\169 "v2" \\ \230\138\165\229\145\138.txt'
      assert.is_table(new_client():create_credential(name))
      local body = emu:stats().last_request.body
      assert.equals(name, cjson.decode(body).file_name)
      assert.truthy(body:find("\230\138\165", 1, true))
      assert.truthy(body:find('\\"v2\\"', 1, true))
    end)

    it("accepts a 32 KiB token", function()
      local token = ("fake-token-"):rep(3000)
      assert.is_true(#token >= 32 * 1024)
      local big = emulator.start({ args = { "--token", token } })
      local result, meta = core.create_credential({
        endpoint = big.url, project_id = big.project_id, token = token,
        file_name = "big-token.bin",
      })
      big:stop()
      assert.is_table(result)
      assert.equals(200, meta.status)
    end)

    it("works as a one-shot call", function()
      local opts = options({ file_name = "one-shot.zip" })
      local result, meta = core.create_credential(opts)
      assert.matches("one%-shot%.zip$", result.object_path)
      assert.equals(200, meta.status)
    end)
  end)

  describe("validation", function()
    local function assert_invalid(field, value_or_call)
      local client = new_client()
      local result, err = client:create_credential(value_or_call)
      assert.is_nil(result)
      assert.equals("invalid_argument", err.kind)
      assert.matches(field, err.message, 1, true)
      assert.is_false(err.retryable)
      assert.equals(0, emu:stats().requests)
    end

    for _, char in ipairs(FORBIDDEN) do
      it("rejects file_name with " .. char, function()
        assert_invalid("file_name", "bad" .. char .. "name.txt")
      end)
    end

    local bad_names = {
      { "empty", "" },
      { "NUL byte", "a\0b" },
      { "newline", "a\nb" },
      { "DEL", "a\127b" },
      { "C1 control", "a\194\133b" },
      { "invalid UTF-8", "a\255b" },
      { "overlong UTF-8", "a\192\175b" },
      { "UTF-16 surrogate", "a\237\160\128b" },
      { "truncated UTF-8", "a\230\138" },
      { "256 bytes", ("x"):rep(256) },
    }
    for _, case in ipairs(bad_names) do
      it("rejects file_name: " .. case[1], function()
        assert_invalid("file_name", case[2])
      end)
    end

    it("accepts file_name of 255 bytes", function()
      local result, meta = new_client():create_credential(("x"):rep(255))
      assert.is_table(result)
      assert.equals(200, meta.status)
    end)

    local bad_options = {
      { "project_id", { project_id = "" } },
      { "project_id", { project_id = "a/b" } },
      { "project_id", { project_id = "a?b" } },
      { "project_id", { project_id = "a#b" } },
      { "project_id", { project_id = "a%b" } },
      { "project_id", { project_id = "a b" } },
      { "project_id", { project_id = "a\tb" } },
      { "project_id '.'", { project_id = "." } },
      { "project_id '..'", { project_id = ".." } },
      { "not allowed in a URL path", { project_id = "a<b" } },
      { "not allowed in a URL path", { project_id = "a`b" } },
      { "not allowed in a URL path", { project_id = 'a"b' } },
      { "not allowed in a URL path", { project_id = "a\\b" } },
      { "not allowed in a URL path", { project_id = "a[b]" } },
      { "endpoint", { endpoint = "ftp://127.0.0.1" } },
      { "endpoint", { endpoint = "http://127.0.0.1:1/?q=1" } },
      { "endpoint", { endpoint = "http://127.0.0.1:1/#top" } },
      { "endpoint", { endpoint = "http://user:pw@127.0.0.1:1" } },
      { "endpoint", { endpoint = "http://" } },
      { "endpoint", { endpoint = "http://app.example.com" } },
      { "host is missing", { endpoint = "https://:443" } },
      { "port must be", { endpoint = "http://127.0.0.1:notaport" } },
      { "port must be", { endpoint = "http://127.0.0.1:99999" } },
      { "port must be", { endpoint = "http://127.0.0.1:0" } },
      { "port must be", { endpoint = "http://127.0.0.1:1:2" } },
      { "valid one in brackets", { endpoint = "http://[::1" } },
      { "valid one in brackets", { endpoint = "https://[1]" } },
      { "valid one in brackets", { endpoint = "https://[::1::2]" } },
      { "plain http", { endpoint = "http://127.0.0.1.5:1" } },
      { "plain http", { endpoint = "http://127.999.999.999:1" } },
      { "empty label", { endpoint = "https://a..b.invalid" } },
      { "starts with '-'", { endpoint = "https://-a.invalid" } },
      { "longer than 63", { endpoint = "https://" .. ("a"):rep(64) .. ".invalid" } },
      { "'.' or '..' segments", { endpoint = "https://app.example.com/x/.." } },
      { "'.' or '..' segments", { endpoint = "https://app.example.com/./v1" } },
      { "remove /v1 from the endpoint", { endpoint = "http://127.0.0.1:1/v1/" } },
      { "remove /v1 from the endpoint", { endpoint = "https://gw.example.com/api/v1" } },
      { "may contain only", { endpoint = "http://%31%32%37.0.0.1:1" } },
      { "character '\\' at byte 25 may not be in a URL path unescaped; write it as %5C",
        { endpoint = "https://gw.example.com/a\\b" } },
      { "character '\"' at byte 24 may not", { endpoint = 'https://gw.example.com/"a"' } },
      { "character '[' at byte 25 may not", { endpoint = "https://gw.example.com/a[b]" } },
      { "the '%' at byte 25 starts no escape such as %20; write a '%' itself as %25",
        { endpoint = "https://gw.example.com/a%zz" } },
      { "the '%' at byte 25 starts no escape", { endpoint = "https://gw.example.com/a%2" } },
      { "http:// or https://", { endpoint = "http:/127.0.0.1:1" } },
      { "token", { token = "abc\r\nX-Evil: 1" } },
      { "token", { token = "abc\n" } },
      { "timeout_ms", { timeout_ms = 0 } },
      { "timeout_ms", { timeout_ms = 1.5 } },
      { "max_body_bytes", { max_body_bytes = -1 } },
      { "region", { endpoint = false, region = "mars-north-1" } },
      { "proxy", { proxy = "foo://127.0.0.1:1" } },
      { "proxy", { proxy = "http://[bad" } },
      { "proxy", { proxy = "http://127.0.0.1:0" } },
      { "proxy", { proxy = "http://127.0.0.1:1\0x" } },
      { "ca_file", { ca_file = "/etc/ssl/certs/ca-certificates.crt\0x" } },
    }
    for _, case in ipairs(bad_options) do
      local field, extra = case[1], case[2]
      it("rejects bad " .. field .. " " .. tostring(next(extra)), function()
        local opts = options(extra)
        if extra.endpoint == false then
          opts.endpoint = nil
        end
        local client, err = core.new(opts)
        assert.is_nil(client)
        assert.equals("invalid_argument", err.kind)
        assert.matches(field, err.message, 1, true)
      end)
    end

    -- glibc writes "-nan" for the NaN that 0 / 0 makes.
    it("writes a NaN option as nan", function()
      for _, value in ipairs{ 0 / 0, -(0 / 0) } do
        local client, err = core.new(options{ timeout_ms = value })

        assert.is_nil(client)
        assert.equals("invalid timeout_ms: nan is not a whole number from 1 "
          .. "to 86400000", err.message)
      end
    end)

    it("writes a NaN call timeout as nan", function()
      local client = new_client()
      local result, err = client:create_credential("a.txt",
        { timeout_ms = 0 / 0 })
      client:close()

      assert.is_nil(result)
      assert.equals("invalid timeout_ms: nan is not a whole number from 1 "
        .. "to 86400000", err.message)
      assert.equals(0, emu:stats().requests)
    end)

    -- The token goes into the X-Auth-Token header. No IAM token has white
    -- space inside, and a blank value sends no token at all.
    it("rejects a blank token", function()
      for _, token in ipairs{ " ", "\t \t" } do
        local client, err = core.new(options{ token = token })

        assert.is_nil(client)
        assert.equals("invalid_argument", err.kind)
        assert.equals("invalid token: it contains only white space; pass "
          .. "the token itself", err.message)
      end
    end)

    it("rejects white space inside a token", function()
      local cases = {
        { "tok en", 4 },
        { " tok\ten ", 5 },
        { "tok\1en", 4 },
      }
      for _, case in ipairs(cases) do
        local client, err = core.new(options{ token = case[1] })

        assert.is_nil(client)
        assert.equals("invalid_argument", err.kind)
        assert.equals(("invalid token: white space or a control character "
          .. "at byte %d; pass the token alone, with no white space inside "
          .. "it"):format(case[2]), err.message)
      end
    end)

    it("rejects a blank or split security_token", function()
      local cases = {
        { " ", "it contains only white space; pass the token itself" },
        { "fake token", "white space or a control character at byte 5; "
          .. "pass the token alone, with no white space inside it" },
      }
      for _, case in ipairs(cases) do
        local opts = options{ ak = "FAKEAKEXAMPLE", sk = "fake-secret",
          security_token = case[1] }
        opts.token = nil
        local client, err = core.new(opts)

        assert.is_nil(client)
        assert.equals("invalid security_token: " .. case[2], err.message)
      end
    end)

    it("sends a token without the blanks around it", function()
      local client = new_client{ token = " \t" .. emu.token .. " " }

      assert.is_table(client:create_credential("a.txt"))
      client:close()
      assert.equals(emu.token, emu:stats().last_request.headers["x-auth-token"])
    end)

    it("allows plain http elsewhere with allow_http", function()
      local client = core.new(options({
        endpoint = "http://app.example.com", allow_http = true,
      }))
      assert.matches("http://app.example.com", tostring(client), 1, true)
      client:close()
    end)

    it("keeps a bad region out of the message", function()
      local opts = options{ region = "cn-north-4\nX-Evil: 1" }
      opts.endpoint = nil
      local client, err = core.new(opts)

      assert.is_nil(client)
      assert.equals("invalid_argument", err.kind)
      assert.equals("invalid region: byte 11 is 0x0A, a control or "
        .. "non-ASCII byte; use only letters, digits and '-', as in "
        .. '"cn-north-4"', err.message)
    end)

    -- C code reads a region up to its first NUL byte, which would make
    -- "cn-north-4\0x" read as "cn-north-4". The endpoint keeps the
    -- region from being resolved, and the region is checked anyway.
    it("rejects a region with a NUL byte", function()
      local client, err = core.new(options{ region = "cn-north-4\0x" })

      assert.is_nil(client)
      assert.equals("invalid_argument", err.kind)
      assert.equals("invalid region: NUL byte at byte 11; remove NUL bytes",
        err.message)
    end)

    it("rejects a NUL byte in string options", function()
      local cases = {
        { "endpoint", emu.url .. "\0x", 1 + #emu.url },
        { "project_id", "p\0x", 2 },
        { "token", "tok\0x", 4 },
        { "ca_file", "/etc/ssl/certs/ca-certificates.crt\0x", 35 },
        { "proxy", "http://127.0.0.1:1\0x", 19 },
      }
      for _, case in ipairs(cases) do
        local name, value, at = case[1], case[2], case[3]
        local client, err = core.new(options{ [name] = value })

        assert.is_nil(client, name)
        assert.equals("invalid_argument", err.kind)
        assert.equals(("invalid %s: NUL byte at byte %d; remove NUL bytes")
          :format(name, at), err.message)
      end
    end)

    it("rejects a NUL byte in AK/SK options", function()
      local cases = {
        { "ak", "FAKEAKEXAMPLE\0x", 14 },
        { "sk", "fake-secret\0x", 12 },
        { "security_token", "fake-token\0x", 11 },
      }
      for _, case in ipairs(cases) do
        local name, value, at = case[1], case[2], case[3]
        local opts = options{ ak = "FAKEAKEXAMPLE", sk = "fake-secret",
          security_token = "fake-token" }
        opts.token = nil
        opts[name] = value
        local client, err = core.new(opts)

        assert.is_nil(client, name)
        assert.equals(("invalid %s: NUL byte at byte %d; remove NUL bytes")
          :format(name, at), err.message)
      end
    end)

    it("names the byte of a bad region", function()
      local cases = {
        { "cn-north-4 ", "byte 11 is 0x20, a space" },
        { "cn_north_4", "byte 3 is '_'" },
      }
      for _, case in ipairs(cases) do
        local opts = options{ region = case[1] }
        opts.endpoint = nil
        local client, err = core.new(opts)
        assert.is_nil(client)
        assert.equals("invalid region: " .. case[2] .. "; use only letters, "
          .. 'digits and \'-\', as in "cn-north-4"', err.message)
      end
    end)

    it("accepts IPv6 and a port", function()
      for _, endpoint in ipairs{ "http://[::1]:8080", "https://[2001:db8::1]",
          "https://app.example.com:8443/base", "http://LOCALHOST:8080",
          "http://localhost.:8080", "http://127.1.2.3:8080",
          "https://app.example.com./base/.well/x", "https://app.example.com/a%20b%2F" } do
        local client, err = core.new(options{ endpoint = endpoint })
        assert.is_nil(err, endpoint)
        client:close()
      end
    end)

    it("adds https:// to an endpoint without scheme", function()
      local client = core.new(options({ endpoint = "app.example.com" }))
      assert.matches("https://app.example.com", tostring(client), 1, true)
      client:close()
    end)

    it("maps a region to its endpoint", function()
      local opts = options({ region = "cn-north-4" })
      opts.endpoint = nil
      local client = core.new(opts)
      assert.matches("https://workspace.cn-north-4.myhuaweicloud.com",
        tostring(client), 1, true)
    end)

    it("rejects token together with ak", function()
      local client, err = core.new(options({ ak = "AK", sk = "SK" }))
      assert.is_nil(client)
      assert.matches("either token or ak and sk", err.message, 1, true)
    end)

    it("rejects security_token without ak", function()
      local client, err = core.new(options({ security_token = "st" }))
      assert.is_nil(client)
      assert.matches("security_token needs ak and sk", err.message, 1, true)
    end)

    it("rejects ak without sk", function()
      local opts = options({ ak = "AK" })
      opts.token = nil
      local client, err = core.new(opts)
      assert.is_nil(client)
      assert.matches("ak needs sk", err.message, 1, true)
    end)

    -- Each read through the proxy returns a new long string and collects
    -- garbage first, so a string that the module read earlier and did
    -- not keep would be freed.
    local function fresh_strings(values)
      return setmetatable({}, { __index = function(_, name)
        collectgarbage()
        local value = values[name]
        if type(value) == "string" then
          return (value .. "#"):sub(1, -2)
        end
        return value
      end })
    end

    it("reads options through __index", function()
      local endpoint = emu.url .. "/" .. ("p"):rep(60)
      local client, err = core.new(fresh_strings(options{
        endpoint = endpoint }))

      assert.is_nil(err)
      assert.matches(endpoint, tostring(client), 1, true)
      client:close()
    end)

    it("checks the types of options read through __index", function()
      local cases = {
        { "allow_http", "false", "boolean", "string" },
        { "token", 12345, "string", "number" },
        { "timeout_ms", {}, "number", "table" },
      }
      for _, case in ipairs(cases) do
        local opts = setmetatable(options(), { __index = { [case[1]] = case[2] } })
        opts[case[1]] = nil

        assert.has_error(function()
          core.new(opts)
        end, ("appcenter.core.new: option '%s' must be a %s, got %s")
          :format(case[1], case[3], case[4]))
      end
    end)

    it("reads only its own options through __index", function()
      local opts = setmetatable(options(), { __index = function(_, name)
        if name ~= "file_name" then
          return nil
        end
        error("strict options: unknown field file_name")
      end })

      local client = core.new(opts)

      assert.is_not_nil(client)
      client:close()
    end)

    it("signs fields read through __index", function()
      local fields = {
        url = emu.url .. "/" .. ("p"):rep(60),
        ak = "FAKEAKINDEX000000001",
        sk = ("fake-secret-key-"):rep(4),
        body = ("{}"):rep(30),
        date = "20261204T000000Z",
      }
      local expected_headers, expected_canonical = core.sign(fields)
      local headers, canonical = core.sign(fresh_strings(fields))

      assert.same(expected_headers, headers)
      assert.equals(expected_canonical, canonical)
    end)

    it("raises on a wrong option type", function()
      assert.has_error(function()
        core.new(options({ timeout_ms = "30" }))
      end, "appcenter.core.new: option 'timeout_ms' must be a number, got string")
    end)

    it("raises on an unknown option", function()
      assert.has_error(function()
        core.new(options({ timout_ms = 30 }))
      end, "appcenter.core.new: unknown option 'timout_ms'")
    end)

    it("raises on a positional option", function()
      local cases = {
        { { "http://127.0.0.1:1" }, "the number key 1" },
        { { [2.5] = "x" }, "the number key 2.5" },
        { { [false] = "x" }, "the boolean key false" },
        { { [{}] = "x" }, "a table key" },
      }
      for _, case in ipairs(cases) do
        assert.has_error(function()
          core.new(options(case[1]))
        end, "appcenter.core.new: option names must be strings, got "
          .. case[2] .. "; pass options as name = value")
      end
    end)

    it("raises on a file_name that is not a string", function()
      local client = new_client()
      assert.has_error(function()
        client:create_credential(42)
      end)
    end)

    it("raises when an option's __index closes the client", function()
      local client = new_client()
      local call_opts = setmetatable({}, { __index = function()
        client:close()
        return 1000
      end })

      assert.has_error(function()
        client:create_credential("a.bin", call_opts)
      end, "appcenter.core: the client is closed")
      assert.equals(0, emu:stats().requests)
    end)

    it("raises on a one-shot file_name from __index", function()
      local opts = setmetatable(options(), { __index = { file_name = 42 } })

      assert.has_error(function()
        core.create_credential(opts)
      end, "appcenter.core.create_credential: option 'file_name' must be "
        .. "a string, got number")
      assert.equals(0, emu:stats().requests)
    end)
  end)

  -- Closes or calls a client where a finalizer may run: while the
  -- result is built from the client's memory.
  describe("while the result is built", function()
    after_each(function()
      decode_hook.remove()
    end)

    local during_decode = decode_hook.before_next_decode

    it("keeps a result when close runs", function()
      local client = new_client()
      during_decode(function()
        client:close()
      end)
      emu:fault({ status = 200, headers = { ["X-Request-Id"] = "req-kept" },
        body = cjson.encode(valid_body()) })

      local result, meta = client:create_credential("a.txt")
      assert.is_table(result)
      assert.equals("S", result.credential.secret)
      assert.equals("req-kept", meta.request_id)
      assert.equals("appcenter.core.client (closed)", tostring(client))
      assert.has_error(function()
        client:create_credential("b.txt")
      end, "appcenter.core: the client is closed")
    end)

    it("redacts an error when close runs", function()
      local client = new_client()
      during_decode(function()
        client:close()
      end)
      emu:fault({ status = 400, headers = { ["X-Request-Id"] = "req-error" },
        body = error_body("WKS.0400", "bad token " .. emu.token) })

      local result, err = client:create_credential("a.txt")
      assert.is_nil(result)
      assert.equals("http", err.kind)
      assert.equals("bad token ***", err.message)
      assert.equals("req-error", err.request_id)
    end)

    it("raises on a call of the same client", function()
      local client = new_client()
      local ok, message
      during_decode(function()
        ok, message = pcall(client.create_credential, client, "b.txt")
      end)

      local result = client:create_credential("a.txt")
      assert.is_table(result)
      assert.is_false(ok)
      assert.equals("appcenter.core: create_credential called while the "
        .. "same client builds a result, e.g. from a finalizer; use "
        .. "another client", message)
      assert.equals(1, emu:stats().requests)
      client:close()
    end)

    it("redacts a polled error when close runs", function()
      local client = new_client()
      local outcome
      during_decode(function()
        client:close()
      end)
      emu:fault({ status = 400, headers = { ["X-Request-Id"] = "req-polled" },
        body = error_body("WKS.0400", "bad token " .. emu.token) })

      client:start("a.txt", function(result, err)
        outcome = { result = result, err = err }
      end)
      poll.until_done(client, function()
        return outcome
      end)
      assert.is_table(outcome)
      assert.is_nil(outcome.result)
      assert.equals("bad token ***", outcome.err.message)
      assert.equals("req-polled", outcome.err.request_id)
      assert.equals(0, client:pending())
    end)
  end)

  describe("HTTP errors", function()
    local statuses = {
      { 400, "WKS.0400", false },
      { 401, "APIGW.0307", false },
      { 403, "WKS.0403", false },
      { 404, "WKS.0404", false },
      { 405, "WKS.0405", false },
      { 429, "APIGW.0308", true },
      { 500, "WKS.0500", true },
      { 502, "WKS.0502", true },
      { 503, "WKS.0503", true },
      { 504, "WKS.0504", true },
    }
    for _, case in ipairs(statuses) do
      local status, code, retryable = case[1], case[2], case[3]
      it("maps status " .. status, function()
        emu:fault({
          status = status,
          body = error_body(code, "failure " .. status),
          headers = { ["X-Request-Id"] = "req-" .. status },
        })
        local result, err = new_client():create_credential("a.txt")
        assert.is_nil(result)
        assert.equals("http", err.kind)
        assert.equals(status, err.status)
        assert.equals(code, err.code)
        assert.equals("failure " .. status, err.message)
        assert.equals("req-" .. status, err.request_id)
        assert.equals(retryable, err.retryable)
      end)
    end

    it("maps a real 401 for a wrong token", function()
      local _, err = new_client({ token = "fake-wrong-token" })
        :create_credential("a.txt")
      assert.equals(401, err.status)
      assert.equals("APIGW.0307", err.code)
      assert.is_string(err.request_id)
    end)

    it("maps a real 404 for an unknown project", function()
      local _, err = new_client({ project_id = "ffffffffffffffffffffffffffffffff" })
        :create_credential("a.txt")
      assert.equals(404, err.status)
      assert.is_false(err.retryable)
    end)

    it("reads errorCode and errorMsg", function()
      emu:fault({ status = 400, body = '{"errorCode":"E1","errorMsg":"camel"}' })
      local _, err = new_client():create_credential("a.txt")
      assert.equals("E1", err.code)
      assert.equals("camel", err.message)
    end)

    it("reads code and message one object down", function()
      emu:fault({ status = 400,
        body = '{"error":{"code":"E2","message":"nested"}}' })
      local _, err = new_client():create_credential("a.txt")
      assert.equals("E2", err.code)
      assert.equals("nested", err.message)
    end)

    it("writes a numeric code as an integer", function()
      emu:fault({ status = 400, body = '{"error_code":400,"error_msg":null}' })
      local _, err = new_client():create_credential("a.txt")
      assert.equals("400", err.code)
      assert.equals("HTTP 400 without a message", err.message)
    end)

    it("writes other numeric codes with tostring", function()
      emu:fault({ status = 400, body = '{"error_code":1.5,"error_msg":1e300}' })
      local _, err = new_client():create_credential("a.txt")
      assert.equals(tostring(1.5), err.code)
      assert.equals(tostring(1e300), err.message)
    end)

    it("summarises an HTML 502 page", function()
      emu:fault({ status = 502, body = "<html><head><title>502 Bad Gateway"
        .. "</title></head><body><h1>502 Bad Gateway</h1></body></html>" })
      local _, err = new_client():create_credential("a.txt")
      assert.equals("502", err.code)
      assert.matches("502 Bad Gateway", err.message, 1, true)
      assert.is_nil(err.message:find("<", 1, true))
      assert.is_true(err.retryable)
    end)

    it("bounds a long non-JSON message", function()
      emu:fault({ status = 500, body = ("oops "):rep(10000) })
      local _, err = new_client():create_credential("a.txt")
      assert.is_true(#err.message < 200)
    end)

    it("reports an empty error body", function()
      emu:fault({ status = 503, body = "" })
      local _, err = new_client():create_credential("a.txt")
      assert.equals("503", err.code)
      assert.matches("empty body", err.message, 1, true)
    end)

    it("keeps Retry-After", function()
      emu:fault({ status = 503, body = "", headers = { ["Retry-After"] = "7" } })
      local _, err = new_client():create_credential("a.txt")
      assert.equals("7", err.retry_after)
    end)

    it("does not follow redirects", function()
      emu:fault({ status = 302, body = "",
        headers = { Location = "http://127.0.0.1:9/elsewhere" } })
      local _, err = new_client():create_credential("a.txt")
      assert.equals("http", err.kind)
      assert.equals(302, err.status)
      assert.is_false(err.retryable)
      assert.matches("redirect to http://127.0.0.1:9/elsewhere, which is not followed",
        err.message, 1, true)
    end)

    it("explains a header line over 100 KiB", function()
      emu:fault({ status = 200, headers = { ["X-Big"] = ("a"):rep(101 * 1024) } })
      local _, err = new_client():create_credential("a.txt")
      assert.equals("network", err.kind)
      assert.matches("header line over 100 KiB", err.message, 1, true)
    end)

    it("reports a redirect without a Location", function()
      emu:fault({ status = 301, body = "" })
      local _, err = new_client():create_credential("a.txt")
      assert.equals(301, err.status)
      assert.matches("redirect without a Location", err.message, 1, true)
    end)

    it("does not call a 304 a redirect", function()
      emu:fault({ status = 304, body = "" })
      local _, err = new_client():create_credential("a.txt")
      assert.equals(304, err.status)
      assert.no_match("redirect", err.message)
    end)

    it("prints one line with tostring", function()
      emu:fault({ status = 503, body = error_body("WKS.0503", "down"),
        headers = { ["X-Request-Id"] = "abc" } })
      local _, err = new_client():create_credential("a.txt")
      assert.equals("appcenter: http WKS.0503: down (request id abc)",
        tostring(err))
    end)
  end)

  describe("invalid responses", function()
    local function shaped(body)
      emu:fault({ status = 200, body = body })
      return new_client():create_credential("a.txt")
    end

    it("rejects an empty 200 body", function()
      local _, err = shaped("")
      assert.equals("invalid_response", err.kind)
      assert.matches("empty", err.message)
    end)

    it("rejects a non-JSON 200 body", function()
      local _, err = shaped("<html>ok</html>")
      assert.equals("invalid_response", err.kind)
      assert.matches("not valid JSON", err.message, 1, true)
    end)

    it("rejects a JSON array", function()
      local _, err = shaped("[1,2]")
      assert.equals("invalid_response", err.kind)
    end)

    it("names a top-level array", function()
      for _, body in ipairs{ "[1,2]", '[{"server_end_point":"obs.example"}]' } do
        local result, err = shaped(body)

        assert.is_nil(result, body)
        assert.equals("invalid_response", err.kind)
        assert.equals("invalid response: the body must be a JSON object, got "
          .. "array", err.message)
      end
    end)

    -- lua-cjson decodes [] and {} to the same empty table.
    it("names an empty top-level body", function()
      for _, body in ipairs{ "[]", "{}" } do
        local result, err = shaped(body)

        assert.is_nil(result, body)
        assert.equals("invalid response: the body is an empty JSON object or "
          .. "array, expected an object with server_end_point, bucket_name, "
          .. "object_path, policy and credential", err.message)
      end
    end)

    it("names an array in place of an object", function()
      for _, name in ipairs{ "policy", "credential" } do
        local body = valid_body()
        body[name] = { "x" }
        local result, err = shaped(cjson.encode(body))

        assert.is_nil(result, name)
        assert.equals("invalid response: " .. name .. " must be an object, "
          .. "got array", err.message)
      end
    end)

    it("names an empty table in place of a string", function()
      local body = valid_body()
      body.credential.access = "EMPTY"
      local json = cjson.encode(body):gsub('"EMPTY"', "[]")
      local _, err = shaped(json)

      assert.equals("invalid response: credential.access must be a string, "
        .. "got empty object or array", err.message)
    end)

    it("names a table element of a string array", function()
      local body = valid_body()
      body.policy.statement.action = { { a = 1 } }
      local _, err = shaped(cjson.encode(body))

      assert.equals("invalid response: policy.statement.action[1] must be a "
        .. "string, got object", err.message)
    end)

    it("names a missing field by path", function()
      local body = valid_body()
      body.credential.secret = nil
      local _, err = shaped(cjson.encode(body))
      assert.equals("invalid_response", err.kind)
      assert.matches("credential.secret is missing", err.message, 1, true)
    end)

    it("adds the error fields of a 200 body", function()
      local _, err = shaped(error_body("WKS.0001", "quota exceeded"))
      assert.equals("invalid_response", err.kind)
      assert.matches("server_end_point is missing", err.message, 1, true)
      assert.matches("(the body is an error: WKS.0001: quota exceeded)", err.message, 1, true)
    end)

    it("takes the code of a 200 error body", function()
      local _, err = shaped(error_body("APIGW.0301", "Incorrect IAM authentication information"))
      assert.equals("invalid_response", err.kind)
      assert.equals("APIGW.0301", err.code)
    end)

    it("names a wrongly typed field by path", function()
      local body = valid_body()
      body.policy.statement.action = { "ok", 5 }
      local _, err = shaped(cjson.encode(body))
      assert.matches("policy.statement.action[2] must be a string, got number",
        err.message, 1, true)
    end)

    it("rejects null in a credential field", function()
      local body = valid_body()
      body.credential.access = cjson.null
      local _, err = shaped(cjson.encode(body))
      assert.matches("credential.access must be a string, got null",
        err.message, 1, true)
    end)

    it("rejects an empty required string", function()
      local fields = {
        { "server_end_point" }, { "bucket_name" }, { "object_path" },
        { "credential", "access" }, { "credential", "secret" },
        { "credential", "security_token" },
      }
      for _, field in ipairs(fields) do
        local body = valid_body()
        if field[2] then
          body[field[1]][field[2]] = ""
        else
          body[field[1]] = ""
        end
        local name = table.concat(field, ".")
        local result, err = shaped(cjson.encode(body))

        assert.is_nil(result, name)
        assert.equals("invalid_response", err.kind)
        assert.equals("invalid response: " .. name .. " is empty", err.message)
      end
    end)

    it("accepts an empty policy version", function()
      local body = valid_body()
      body.policy.version = ""
      local result = shaped(cjson.encode(body))
      assert.equals("", result.policy.version)
    end)

    it("ignores extra fields and maps nulls to nil", function()
      local body = valid_body()
      body.extra = { deep = { 1, 2, 3 } }
      body.policy.version = cjson.null
      body.policy.statement.effect = cjson.null
      body.credential.expires_at = "2026-12-04T00:00:00Z"
      local result = shaped(cjson.encode(body))
      assert.is_table(result)
      assert.is_nil(result.extra)
      assert.is_nil(result.policy.version)
      assert.is_nil(result.policy.statement.effect)
      assert.is_nil(result.credential.expires_at)
      assert.equals("S", result.credential.secret)
    end)

    it("drops unknown fields and nulls", function()
      local body = valid_body()
      body.policy.note = cjson.null
      body.policy.statement.condition = { ip = { "10.0.0.0/8" } }
      body.policy.statement.effect = cjson.null
      body.credential.expires_at = cjson.null
      body.credential.region = "cn-north-4"
      local result = shaped(cjson.encode(body))
      local function keys(t)
        local names = {}
        for k in pairs(t) do
          names[#names + 1] = k
        end
        table.sort(names)
        return table.concat(names, ",")
      end
      assert.equals("bucket_name,credential,object_path,policy,server_end_point",
        keys(result))
      assert.equals("statement,version", keys(result.policy))
      assert.equals("action,resource", keys(result.policy.statement))
      assert.equals("access,secret,security_token", keys(result.credential))
    end)

    it("reports the first problem in field order", function()
      local body = valid_body()
      body.bucket_name = 7
      body.credential.access = false
      body.object_path = nil
      local _, err = shaped(cjson.encode(body))
      assert.matches("bucket_name must be a string, got number",
        err.message, 1, true)
    end)

    it("rejects an object for a string array", function()
      local body = valid_body()
      body.policy.statement.resource = { first = "obs:*:*:object:b/a.txt" }
      local _, err = shaped(cjson.encode(body))
      assert.equals("invalid_response", err.kind)
      assert.matches("policy.statement.resource must be an array of strings, got an object",
        err.message, 1, true)
    end)

    it("accepts an empty array of strings", function()
      local body = valid_body()
      body.policy.statement.action = "EMPTY"
      local json = cjson.encode(body):gsub('"EMPTY"', "[]")
      local result = shaped(json)
      assert.same({}, result.policy.statement.action)
    end)

    it("names an empty statement", function()
      for _, empty in ipairs({ "[]", "{}" }) do
        local body = valid_body()
        body.policy.statement = "EMPTY"
        local json = cjson.encode(body):gsub('"EMPTY"', empty)
        local result, err = shaped(json)
        assert.is_nil(result)
        assert.equals("invalid_response", err.kind)
        assert.equals("invalid response: policy.statement is empty, expected "
          .. "an object with effect, action and resource", err.message)
      end
    end)

    it("returns a list of statements as a list", function()
      local body = valid_body()
      local one = body.policy.statement
      body.policy.statement = { one, one }
      local result = shaped(cjson.encode(body))
      assert.equals(2, #result.policy.statement)
      assert.equals("Allow", result.policy.statement[2].effect)
    end)

    it("caps the body at max_body_bytes", function()
      emu:fault({ oversize_bytes = 5000 })
      local client = new_client({ max_body_bytes = 4096 })
      local _, err = client:create_credential("a.txt")
      assert.equals("invalid_response", err.kind)
      assert.matches("max_body_bytes", err.message, 1, true)
    end)

    it("caps the body at 1 MiB by default", function()
      emu:fault({ oversize_bytes = 1024 * 1024 + 1 })
      local _, err = new_client():create_credential("a.txt")
      assert.equals("invalid_response", err.kind)
    end)
  end)

  describe("transport", function()
    -- Runs one call in a child process with the given environment and
    -- returns its output: "ok", or the error kind and message. The
    -- endpoint is the emulator's, or with `indirect` the same port at
    -- 0.0.0.0, which also reaches this machine but is not a loopback
    -- address, so proxies apply to it.
    local function call_with_environment(env, proxy, indirect)
      local endpoint = emu.url
      if indirect then
        endpoint = emu.url:gsub("127%.0%.0%.1", "0.0.0.0")
      end
      local script = ([[
        local core = require("appcenter.core")
        local client = assert(core.new{ endpoint = %q, project_id = %q,
          token = %q, proxy = %s, allow_http = true })
        local result, err = client:create_credential("a.txt")
        io.write(result and "ok" or (err.kind .. ": " .. err.message))
      ]]):format(endpoint, emu.project_id, emu.token,
        proxy and ("%q"):format(proxy) or "nil")
      local names = { "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
        "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY" }
      local status, stdout, stderr = subprocess.run_lua(script, names, os.getenv("HOME") or "/", env)
      assert.equals(0, status, stderr)
      return stdout
    end

    it("uses no proxy without proxy variables", function()
      assert.equals("ok", call_with_environment({}, nil, true))
      assert.equals(1, emu:stats().requests)
    end)

    for _, name in ipairs({ "http_proxy", "ALL_PROXY" }) do
      it("honours " .. name .. " from the environment", function()
        local output = call_with_environment({ [name] = "http://127.0.0.1:1" },
          nil, true)
        assert.matches("^network: ", output)
        assert.equals(0, emu:stats().requests)
      end)
    end

    it("names the proxy variable when the proxy refuses", function()
      local output = call_with_environment({ http_proxy = "http://127.0.0.1:1" },
        nil, true)

      assert.matches("^network: Failed to connect to 127.0.0.1 port 1 ", output)
      assert.matches(" (check the endpoint's host and port, and the proxy in "
        .. "http_proxy, through which libcurl connects unless no_proxy lists "
        .. "the endpoint's host)", output, 1, true)
    end)

    it("names the proxy option when the proxy refuses", function()
      local output = call_with_environment({}, "http://127.0.0.1:1", true)

      assert.matches(" (check the endpoint's host and port, and the proxy "
        .. "option, through which libcurl connects unless no_proxy lists the "
        .. "endpoint's host)", output, 1, true)
      assert.equals(0, emu:stats().requests)
    end)

    for _, case in ipairs{ { 407, false, "asks for credentials or rejected them; put "
        .. "user:password@ in the proxy's URL" }, { 403, false, "refused to open a connection" },
        { 503, true, "refused to open a connection" } } do
      it("explains a proxy's " .. case[1] .. " to CONNECT", function()
        local proxy = hostile.start{ mode = "fixed", status = case[1], body = "" }
        -- An https endpoint that is not loopback, so libcurl requests a
        -- tunnel from the proxy, which refuses, so nothing reaches it.
        local script = ([[
          local core = require("appcenter.core")
          local client = assert(core.new{ endpoint = "https://0.0.0.0:1", project_id = %q,
            token = %q, proxy = %q })
          local _, err = client:create_credential("a.txt")
          io.write(err.kind, " ", tostring(err.retryable), " ", err.message)
        ]]):format(emu.project_id, emu.token, "http://127.0.0.1:" .. proxy.port)

        local status, stdout, stderr = subprocess.run_lua(script, { "no_proxy", "NO_PROXY" },
          os.getenv("HOME") or "/", {})
        proxy:stop()

        assert.equals(0, status, stderr)
        assert.matches("^network " .. tostring(case[2]) .. " ", stdout)
        assert.matches("(the proxy option " .. case[3], stdout, 1, true)
      end)
    end

    it("honours no_proxy with a proxy variable", function()
      local output = call_with_environment({
        http_proxy = "http://127.0.0.1:1", no_proxy = "0.0.0.0" }, nil, true)
      assert.equals("ok", output)
    end)

    it("sends to a loopback endpoint without a proxy", function()
      assert.equals("ok", call_with_environment({
        http_proxy = "http://127.0.0.1:1", ALL_PROXY = "http://127.0.0.1:1" }))
      assert.equals("ok", call_with_environment({}, "http://127.0.0.1:1"))
      assert.equals(2, emu:stats().requests)
    end)

    it("sends non-blocking requests to loopback without a proxy", function()
      local script = ([[
        local core = require("appcenter.core")
        local client = assert(core.new{ endpoint = %q, project_id = %q,
          token = %q, proxy = "http://127.0.0.1:1" })
        local outcome
        client:start("a.txt", function(result, err)
          outcome = result and "ok" or (err.kind .. ": " .. err.message)
        end)
        for _ = 1, 100 do
          if outcome then break end
          client:poll(50)
        end
        io.write(tostring(outcome))
      ]]):format(emu.url, emu.project_id, emu.token)
      local status, stdout, stderr = subprocess.run_lua(script, {},
        os.getenv("HOME") or "/", {})
      assert.equals(0, status, stderr)
      assert.equals("ok", stdout)
    end)

    it("times out", function()
      emu:fault({ delay_ms = 1500 })
      local _, err = new_client({ timeout_ms = 200 }):create_credential("a.txt")
      assert.equals("timeout", err.kind)
      assert.is_true(err.retryable)
    end)

    it("applies a per-call timeout", function()
      emu:fault({ delay_ms = 1500 })
      local _, err = new_client():create_credential("a.txt", { timeout_ms = 200 })
      assert.equals("timeout", err.kind)
      assert.matches("the limits are timeout_ms and connect_timeout_ms", err.message, 1, true)
    end)

    it("reports connection refused", function()
      local client = new_client({ endpoint = "http://127.0.0.1:1" })
      local _, err = client:create_credential("a.txt")
      assert.equals("network", err.kind)
      assert.is_true(err.retryable)
      assert.matches("check the endpoint's host and port", err.message, 1, true)
    end)

    it("reports a dropped connection", function()
      emu:fault({ drop = true })
      local _, err = new_client():create_credential("a.txt")
      assert.equals("network", err.kind)
    end)

    it("reports a truncated body", function()
      emu:fault({ truncate = true })
      local _, err = new_client():create_credential("a.txt")
      assert.equals("network", err.kind)
    end)

    it("reuses one connection for 100 calls", function()
      local client = new_client()
      for _ = 1, 100 do
        assert.is_table(client:create_credential("a.txt"))
      end
      assert.equals(100, emu:stats().requests)
      assert.equals(1, emu:stats().connections)
    end)
  end)

  describe("client", function()
    it("raises when used after close", function()
      local client = new_client()
      client:close()
      assert.has_error(function()
        client:create_credential("a.txt")
      end, "appcenter.core: the client is closed")
    end)

    it("allows close twice", function()
      local client = new_client()
      client:close()
      client:close()
      assert.equals("appcenter.core.client (closed)", tostring(client))
    end)
  end)

  describe("secrets", function()
    local token = "fake-token-SECRET-4f1c9e"

    local function assert_hidden(err)
      assert.is_nil(tostring(err):find(token, 1, true))
      assert.is_nil((err.message or ""):find(token, 1, true))
    end

    it("hides the token echoed by the server", function()
      emu:fault({ status = 401, body = error_body("APIGW.0307",
        "token " .. token .. " expired") })
      local _, err = new_client({ token = token }):create_credential("a.txt")
      assert.matches("token *** expired", err.message, 1, true)
      assert_hidden(err)
    end)

    it("hides the token in a non-JSON body", function()
      emu:fault({ status = 500, body = "<p>bad token " .. token .. "</p>" })
      local _, err = new_client({ token = token }):create_credential("a.txt")
      assert_hidden(err)
    end)

    it("keeps the token out of validation errors", function()
      local _, err = core.new(options({ token = token .. "\n" }))
      assert_hidden(err)
    end)

    it("keeps the token out of tostring(client)", function()
      local client = new_client({ token = token })
      assert.is_nil(tostring(client):find(token, 1, true))
    end)
  end)
end)
