-- Redirects and misbehaving servers: every call must end within its
-- timeout with a bounded amount of memory, and no request may follow a
-- redirect. The servers are the emulator and spec/support/hostile_server.py,
-- both on 127.0.0.1.

local appcenter = require("appcenter")
local cjson = require("cjson")
local core = require("appcenter.core")
local emulator = require("spec.support.emulator")
local hostile = require("spec.support.hostile")

local PROJECT_ID = emulator.DEFAULT_PROJECT_ID
local ROUTE = "/v1/" .. PROJECT_ID .. "/app-center/buckets/actions/create-credential"

-- A complete credential, so that a followed redirect would succeed.
local CREDENTIAL_BODY = cjson.encode({
  server_end_point = "obs.cn-north-4.myhuaweicloud.com",
  bucket_name = "redirect-target",
  object_path = "app-file/redirected/setup.exe",
  policy = { version = "1.1", statement = { effect = "Allow", action = {}, resource = {} } },
  credential = { access = "REDIRECTED", secret = "redirected", security_token = "redirected" },
})

local function rss_kib()
  for line in io.lines("/proc/self/status") do
    local kib = line:match("^VmRSS:%s+(%d+)%s+kB")
    if kib then
      return tonumber(kib)
    end
  end
  error("no VmRSS line in /proc/self/status")
end

-- Runs fn and returns its results followed by the seconds it took.
local function timed(fn)
  local started = core.monotonic()
  local result, err = fn()
  return result, err, core.monotonic() - started
end

-- Makes one create-credential call, closes the client and returns the
-- call's results followed by the seconds it took.
local function timed_call(client)
  local result, err, seconds = timed(function()
    return client:create_credential("setup.exe")
  end)
  client:close()
  return result, err, seconds
end

local wait_for = require("spec.support.poll").until_done

describe("redirects", function()
  local emu, target

  setup(function()
    emu = emulator.start()
    target = hostile.start{ mode = "fixed", status = 200, body = CREDENTIAL_BODY,
      headers = { "Content-Type: application/json" } }
  end)

  teardown(function()
    emu:stop()
    target:stop()
  end)

  before_each(function()
    emu:reset()
  end)

  local clients = {
    token = function()
      return core.new{ endpoint = emu.url, project_id = PROJECT_ID, token = emu.token }
    end,
    ["AK/SK"] = function()
      return core.new{ endpoint = emu.url, project_id = PROJECT_ID, ak = emu.ak, sk = emu.sk }
    end,
  }

  for _, status in ipairs{ 301, 302, 303, 307, 308 } do
    for auth, new_client in pairs(clients) do
      it(("returns %d as an http error (%s)"):format(status, auth), function()
        emu:fault{ status = status, headers = { Location = target.url .. ROUTE } }
        local client = assert(new_client())
        local result, err = client:create_credential("setup.exe")
        client:close()
        assert.is_nil(result)
        assert.equals("http", err.kind)
        assert.equals(status, err.status)
        assert.is_false(err.retryable)
        assert.equals(0, target:connections())
      end)
    end
  end

  it("does not follow a relative Location", function()
    emu:fault{ status = 302, headers = { Location = "/elsewhere" } }
    local client = assert(clients.token())
    local result, err = client:create_credential("setup.exe")
    client:close()
    assert.is_nil(result)
    assert.equals(302, err.status)
    assert.equals(1, emu:stats().requests)
  end)

  it("does not follow in non-blocking requests", function()
    emu:fault{ status = 307, headers = { Location = target.url .. ROUTE } }
    local client = assert(clients.token())
    local outcome
    client:start("setup.exe", function(result, err)
      outcome = { result = result, err = err }
    end)
    wait_for(client, function() return outcome end)
    client:close()
    assert.is_nil(outcome.result)
    assert.equals(307, outcome.err.status)
    assert.equals(0, target:connections())
  end)

  it("does not retry a redirect in the wrapper", function()
    emu:fault{ status = 308, headers = { Location = target.url .. ROUTE }, times = 3 }
    local client = assert(appcenter.new{
      endpoint = emu.url, project_id = PROJECT_ID, token = emu.token,
      retry = { max_attempts = 3, base_delay_ms = 1 },
    })
    local result, err = client:create_credential("setup.exe")
    client:close()
    assert.is_nil(result)
    assert.equals(308, err.status)
    assert.equals(1, err.attempts)
    assert.equals(0, target:connections())
  end)

  it("sent nothing to the redirect target", function()
    assert.equals(0, target:connections())
    assert.same({}, target:requests())
  end)
end)

describe("hostile servers", function()
  local servers = {}

  local function start(opts)
    local server = hostile.start(opts)
    servers[#servers + 1] = server
    return server
  end

  teardown(function()
    for _, server in ipairs(servers) do
      server:stop()
    end
  end)

  local function new_client(server, extra)
    local opts = { endpoint = server.url, project_id = PROJECT_ID, token = "fake-token-for-hostile" }
    for key, value in pairs(extra or {}) do
      opts[key] = value
    end
    return assert(core.new(opts))
  end

  it("cuts off one byte per second at the timeout", function()
    local server = start{ mode = "slow", rate = 1 }
    local client = new_client(server, { timeout_ms = 1500 })
    local result, err, seconds = timed_call(client)
    assert.is_nil(result)
    assert.equals("timeout", err.kind)
    assert.is_true(err.retryable)
    assert.is_true(seconds >= 1.4 and seconds < 4, "took " .. seconds .. " s")
    assert.equals(1, #server:requests())
  end)

  -- libcurl ignores a Content-Length over 2^63 - 1 and reads the body
  -- until the server closes, so a complete credential would be accepted
  -- and an empty body reported as empty.
  it("rejects a Content-Length over 2^63 - 1", function()
    local cases = {
      { "99999999999999999999", CREDENTIAL_BODY },
      { "99999999999999999999", "" },
      { "9223372036854775808", CREDENTIAL_BODY },
    }
    for _, case in ipairs(cases) do
      local server = start{ mode = "fixed", status = 200, body = case[2],
        content_length = case[1], headers = { "Content-Type: application/json" } }
      local client = new_client(server)

      local result, err = timed_call(client)

      assert.is_nil(result, case[1])
      assert.equals("invalid_response", err.kind)
      assert.equals(200, err.status)
      assert.is_false(err.retryable)
      assert.equals("invalid response: the body is larger than max_body_bytes (1048576 bytes)",
        err.message)
    end
  end)

  it("keeps the status of an error with such a length", function()
    local server = start{ mode = "fixed", status = 503, body = "",
      content_length = ("1"):rep(40), headers = { "X-Request-Id: rid-1", "Retry-After: 3" } }

    local _, err = timed_call(new_client(server))

    assert.equals("http", err.kind)
    assert.equals(503, err.status)
    assert.is_true(err.retryable)
    -- The headers after the Content-Length are kept.
    assert.equals("rid-1", err.request_id)
    assert.equals("3", err.retry_after)
    assert.equals("HTTP 503: the body is larger than max_body_bytes (1048576 bytes), so it is not "
      .. "shown", err.message)
  end)

  it("waits for the body of Content-Length 2^63 - 1", function()
    local server = start{ mode = "fixed", status = 200, body = CREDENTIAL_BODY,
      content_length = "9223372036854775807" }

    local _, err = timed_call(new_client(server))

    assert.equals("network", err.kind)
    assert.matches("bytes remaining to read", err.message, 1, true)
  end)

  it("cuts off a server that never answers", function()
    local server = start{ mode = "silent" }
    local client = new_client(server, { timeout_ms = 1000 })
    local result, err, seconds = timed_call(client)
    assert.is_nil(result)
    assert.equals("timeout", err.kind)
    assert.is_true(seconds < 3, "took " .. seconds .. " s")
  end)

  it("retries a connection dropped in the TLS handshake", function()
    local server = start{ mode = "hangup" }
    local endpoint = "https://127.0.0.1:" .. server.port
    local client = assert(core.new{ endpoint = endpoint, project_id = PROJECT_ID,
      token = "fake-token-for-hostile" })

    local result, err = timed_call(client)

    assert.is_nil(result)
    assert.equals("network", err.kind)
    assert.is_true(err.retryable)
    assert.matches(" %(the server closed the connection during the TLS "
      .. "handshake%)$", err.message)

    local wrapper = assert(appcenter.new{ endpoint = endpoint,
      project_id = PROJECT_ID, token = "fake-token-for-hostile",
      retry = { base_delay_ms = 1 } })
    local _, wrapper_err = wrapper:create_credential("setup.exe")
    wrapper:close()
    assert.equals(3, wrapper_err.attempts)
  end)

  it("retries a connect timeout well before the deadline", function()
    local server = start{ mode = "silent" }
    local client = assert(appcenter.new{
      endpoint = "https://127.0.0.1:" .. server.port, project_id = PROJECT_ID,
      token = "fake-token-for-hostile", connect_timeout_ms = 300,
      retry = { deadline_ms = 10000, base_delay_ms = 1 },
    })

    local _, err = client:create_credential("setup.exe")
    client:close()

    assert.equals("timeout", err.kind)
    assert.equals(3, err.attempts)
    assert.matches("%(gave up after 3 attempts%)$", err.message)
  end)

  it("cuts off a TLS handshake that never starts", function()
    local server = start{ mode = "silent" }
    local client = assert(core.new{
      endpoint = "https://127.0.0.1:" .. server.port, project_id = PROJECT_ID,
      token = "fake-token-for-hostile", connect_timeout_ms = 1000, timeout_ms = 10000,
    })
    local result, err, seconds = timed_call(client)
    assert.is_nil(result)
    assert.equals("timeout", err.kind)
    -- The connect timeout ends the handshake after 1 s, well before the
    -- 10 s call timeout. Under valgrind, loading the CA bundle adds up
    -- to 3 s.
    assert.is_true(seconds < 5, "took " .. seconds .. " s")
  end)

  it("bounds the whole call in the wrapper by deadline_ms", function()
    local server = start{ mode = "silent" }
    local client = assert(appcenter.new{
      endpoint = server.url, project_id = PROJECT_ID, token = "fake-token-for-hostile",
      timeout_ms = 1000,
      retry = { max_attempts = 10, base_delay_ms = 1, max_delay_ms = 2, deadline_ms = 2500 },
    })
    local result, err, seconds = timed_call(client)
    assert.is_nil(result)
    assert.equals("timeout", err.kind)
    assert.is_true(err.attempts >= 2 and err.attempts <= 3, "attempts " .. err.attempts)
    assert.is_true(seconds < 4, "took " .. seconds .. " s")
  end)

  it("times out non-blocking requests", function()
    local server = start{ mode = "silent" }
    local client = new_client(server)
    local outcome
    client:start("setup.exe", function(result, err)
      outcome = { result = result, err = err }
    end, { timeout_ms = 800 })
    local _, _, seconds = timed(function()
      wait_for(client, function() return outcome end)
    end)
    client:close()
    assert.is_table(outcome)
    assert.equals("timeout", outcome.err.kind)
    assert.is_true(seconds < 3, "took " .. seconds .. " s")
  end)

  -- libcurl caps response headers at 300 KiB (curl 8.3, backported to
  -- Debian 12's 7.88.1 as the fix for CVE-2023-38039).
  it("bounds endless headers", function()
    local server = start{ mode = "endless-headers" }
    local client = new_client(server, { timeout_ms = 5000 })
    local before = rss_kib()
    local result, err, seconds = timed_call(client)
    assert.is_nil(result)
    assert.equals("invalid_response", err.kind)
    assert.is_false(err.retryable)
    assert.matches("Too large response headers", err.message, 1, true)
    assert.matches("(the server, or a proxy between, sent more header "
      .. "bytes than libcurl accepts; check the endpoint)", err.message, 1,
      true)
    assert.is_true(seconds < 4, "took " .. seconds .. " s")
    assert.is_true(rss_kib() - before < 16 * 1024, "RSS grew by more than 16 MiB")
  end)

  for _, mode in ipairs{ "endless-body", "endless-chunked" } do
    it("bounds an " .. mode .. " at max_body_bytes", function()
      local server = start{ mode = mode }
      local client = new_client(server, { timeout_ms = 5000, max_body_bytes = 65536 })
      local before = rss_kib()
      local result, err, seconds = timed_call(client)
      assert.is_nil(result)
      assert.equals("invalid_response", err.kind)
      assert.matches("larger than max_body_bytes %(65536 bytes%)", err.message)
      assert.is_true(seconds < 4, "took " .. seconds .. " s")
      assert.is_true(rss_kib() - before < 16 * 1024, "RSS grew by more than 16 MiB")
    end)
  end

  it("bounds an endless body at the default 1 MiB", function()
    local server = start{ mode = "endless-body" }
    local client = new_client(server, { timeout_ms = 5000 })
    local result, err = client:create_credential("setup.exe")
    client:close()
    assert.is_nil(result)
    assert.equals("invalid_response", err.kind)
    assert.matches("%(1048576 bytes%)", err.message)
  end)

  it("keeps the HTTP error of an error body over max_body_bytes", function()
    local page = "<html><body>" .. ("Service unavailable. "):rep(600)
      .. "</body></html>"
    local server = start{ mode = "fixed", status = 503, body = page,
      headers = { "Content-Type: text/html" } }
    local client = new_client(server, { max_body_bytes = 8192 })

    local result, err = timed_call(client)

    assert.is_nil(result)
    assert.equals("http", err.kind)
    assert.equals(503, err.status)
    assert.is_true(err.retryable)
    -- A cut body may carry a returned secret that only decoding finds.
    assert.equals("HTTP 503: the body is larger than max_body_bytes (8192 "
      .. "bytes), so it is not shown", err.message)
  end)

  it("reports a reply that is not HTTP", function()
    local server = start{ mode = "garbage" }
    local client = new_client(server, { timeout_ms = 5000 })
    local result, err = client:create_credential("setup.exe")
    client:close()
    assert.is_nil(result)
    assert.equals("network", err.kind)
    assert.equals("Received HTTP/0.9 when not allowed (the server did not "
      .. "answer in HTTP; check the endpoint's scheme and port)", err.message)
  end)

  it("ignores the headers of an interim 103 response", function()
    local server = start{ mode = "early-hints", status = 503, body = "down",
      headers = { "X-Request-Id: interim-id", "Retry-After: 7" } }
    local client = new_client(server, { timeout_ms = 5000 })
    local result, err = timed_call(client)
    assert.is_nil(result)
    assert.equals(503, err.status)
    assert.is_nil(err.request_id)
    assert.is_nil(err.retry_after)
  end)

  it("reports a connection closed before the answer", function()
    local server = start{ mode = "hangup" }
    local client = new_client(server, { timeout_ms = 5000 })
    local result, err = timed_call(client)
    assert.is_nil(result)
    assert.equals("network", err.kind)
    assert.is_true(err.retryable)
    -- The request may arrive before the close (a reset) or after it (an
    -- empty reply).
    local broke = " (the connection broke during the request; a retry may "
      .. "succeed)"
    local closed = " (the server closed the connection without an answer)"
    assert.is_true(err.message:sub(-#broke) == broke
      or err.message:sub(-#closed) == closed, err.message)
  end)

  -- Returns a credential result whose OBS host is `server`.
  local function upload_result(server)
    return {
      server_end_point = "127.0.0.1:" .. server.port,
      bucket_name = "bucket",
      object_path = "app-file/x/setup.exe",
      credential = { access = "FAKEACCESS", secret = "fake-secret", security_token = "fake-st" },
    }
  end

  it("reports an OBS error without a body", function()
    local server = start{ mode = "fixed", status = 403 }
    local client = new_client(server)
    local result = upload_result(server)
    local meta, err = client:upload(result, { body = "data", path_style = true })
    client:close()
    assert.is_nil(meta)
    assert.equals("http", err.kind)
    assert.equals(403, err.status)
    assert.equals("OBS returned HTTP 403", err.message)
  end)

  it("counts the bytes sent when OBS answers early", function()
    -- The server reads at most 1 MiB of a body, then sends its 200.
    local server = start{ mode = "fixed", status = 200 }
    local client = new_client(server)
    local result = upload_result(server)
    local body = ("b"):rep(64 * 1024 * 1024)

    local meta, err = client:upload(result, { body = body, path_style = true })
    client:close()

    assert.is_table(meta, tostring(err))
    assert.is_true(meta.bytes < #body, "bytes = " .. meta.bytes)
  end)
end)
