-- Checks tools/emulator.py itself over plain LuaSocket, without the C module.

local http = require("socket.http")
local ltn12 = require("ltn12")
local socket = require("socket")
local cjson = require("cjson")
local emulator = require("spec.support.emulator")

local function credential_path(project_id)
  return "/v1/" .. project_id .. "/app-center/buckets/actions/create-credential"
end

-- Sends one request with LuaSocket and returns status, headers and the raw body.
-- status is nil and headers is the error message when the request fails.
local function send(url, opts)
  local body = opts.body or ""
  local headers = { ["content-length"] = tostring(#body) }
  for name, value in pairs(opts.headers or {}) do
    headers[name:lower()] = value
  end
  local chunks = {}
  local ok, status, response_headers = http.request{
    url = url,
    method = opts.method or "POST",
    headers = headers,
    source = ltn12.source.string(body),
    sink = ltn12.sink.table(chunks),
  }
  if not ok then
    return nil, status
  end
  return status, response_headers, table.concat(chunks)
end

-- Posts {"file_name": file_name} to the create-credential path with the emulator's token.
local function create_credential(emu, file_name, extra)
  extra = extra or {}
  local headers = {
    ["Content-Type"] = "application/json",
    ["X-Auth-Token"] = emu.token,
  }
  for name, value in pairs(extra.headers or {}) do
    headers[name] = value or nil
  end
  local body = extra.body or cjson.encode({ file_name = file_name })
  return send(emu.url .. credential_path(extra.project_id or emu.project_id), {
    method = extra.method,
    headers = headers,
    body = body,
  })
end

-- Reads one HTTP/1.1 response with Content-Length from a raw LuaSocket connection.
local function read_response(connection)
  local status_line, err = connection:receive("*l")
  if not status_line then
    return nil, err
  end
  local headers = {}
  while true do
    local line = assert(connection:receive("*l"))
    if line == "" then
      break
    end
    local name, value = line:match("^([^:]+):%s*(.*)$")
    headers[name:lower()] = value
  end
  local body = assert(connection:receive(tonumber(headers["content-length"])))
  return tonumber(status_line:match("^HTTP/1%.1 (%d+)")), headers, body
end

local function raw_request(emu)
  local body = cjson.encode({ file_name = "keep-alive.bin" })
  return table.concat({
    "POST " .. credential_path(emu.project_id) .. " HTTP/1.1",
    "Host: " .. emu.url:match("^https?://(.*)$"),
    "Content-Type: application/json",
    "X-Auth-Token: " .. emu.token,
    "Content-Length: " .. #body,
    "",
    body,
  }, "\r\n")
end

local function connect(emu)
  local host, port = emu.url:match("^http://([^:/]+):(%d+)$")
  local connection = assert(socket.tcp())
  connection:settimeout(10)
  assert(connection:connect(host, tonumber(port)))
  return connection
end

local function is_process_running(pid)
  local status = os.execute(string.format("kill -0 %d 2>/dev/null", pid))
  return status == 0 or status == true
end

describe("emulator", function()
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

  it("starts with loopback URLs and a pid", function()
    assert.matches("^http://127%.0%.0%.1:%d+$", emu.url)
    assert.matches("^http://127%.0%.0%.1:%d+$", emu.control)
    assert.are_not.equal(emu.url, emu.control)
    assert.is_true(is_process_running(emu.pid))
    assert.are.equal(emulator.DEFAULT_TOKEN, emu.token)
    assert.are.equal(emulator.DEFAULT_PROJECT_ID, emu.project_id)
  end)

  it("returns a credential of the documented shape", function()
    local status, headers, body = create_credential(emu, "replay 01.bin")
    assert.are.equal(200, status)
    assert.matches("^application/json", headers["content-type"])
    assert.matches("^%x+$", headers["x-request-id"])

    local result = cjson.decode(body)
    assert.matches("^localhost:%d+$", result.server_end_point)
    assert.are.equal(emu.server_end_point, result.server_end_point)
    assert.are.equal("appcenter-emulator-bucket", result.bucket_name)
    assert.matches("^app%-file/%x+/replay 01%.bin$", result.object_path)
    assert.are.equal("1.1", result.policy.version)
    assert.are.equal("Allow", result.policy.statement.effect)
    assert.are.same({ "obs:object:PutObject" }, result.policy.statement.action)
    assert.are.same({ "obs:*:*:object:appcenter-emulator-bucket/" .. result.object_path },
      result.policy.statement.resource)
    assert.matches("^[A-Z0-9]+$", result.credential.access)
    assert.are.equal(20, #result.credential.access)
    assert.are.equal(40, #result.credential.secret)
    assert.is_true(#result.credential.security_token >= 500)
  end)

  it("issues a fresh credential and request id each time", function()
    local _, first_headers, first_body = create_credential(emu, "a.bin")
    local _, second_headers, second_body = create_credential(emu, "a.bin")
    assert.are_not.equal(first_headers["x-request-id"], second_headers["x-request-id"])
    assert.are_not.equal(cjson.decode(first_body).credential.access, cjson.decode(second_body).credential.access)
  end)

  it("rejects a request without token with 401", function()
    local status, headers, body = create_credential(emu, "a.bin", { headers = { ["X-Auth-Token"] = false } })
    assert.are.equal(401, status)
    assert.matches("^%x+$", headers["x-request-id"])
    assert.are.equal("APIGW.0301", cjson.decode(body).error_code)
  end)

  it("rejects a wrong token with 401", function()
    local status, _, body = create_credential(emu, "a.bin", { headers = { ["X-Auth-Token"] = "fake-wrong-token" } })
    assert.are.equal(401, status)
    assert.are.equal("APIGW.0307", cjson.decode(body).error_code)
  end)

  it("returns 404 for an unknown project", function()
    local status, headers, body = create_credential(emu, "a.bin", { project_id = "ffffffffffffffffffffffffffffffff" })
    assert.are.equal(404, status)
    assert.matches("^%x+$", headers["x-request-id"])
    assert.are.equal("WKS.00040001", cjson.decode(body).error_code)
  end)

  it("returns 404 for an unknown path", function()
    local status, headers, body = send(emu.url .. "/v1/unknown", { method = "GET" })
    assert.are.equal(404, status)
    assert.matches("^%x+$", headers["x-request-id"])
    assert.are.equal("APIGW.0101", cjson.decode(body).error_code)
  end)

  it("returns 405 for GET", function()
    local status, headers, body = send(emu.url .. credential_path(emu.project_id), { method = "GET" })
    assert.are.equal(405, status)
    assert.matches("^%x+$", headers["x-request-id"])
    assert.are.equal("WKS.00040007", cjson.decode(body).error_code)
  end)

  it("rejects each forbidden file name character with 400", function()
    for character in (":^;|~`{}[]<>"):gmatch(".") do
      local status, _, body = create_credential(emu, "a" .. character .. "b.bin")
      assert.are.equal(400, status, "character " .. character)
      assert.are.equal("WKS.00040006", cjson.decode(body).error_code, "character " .. character)
    end
  end)

  it("rejects invalid request bodies with 400", function()
    local cases = {
      { name = "control character", file_name = "a\1b", code = "WKS.00040006" },
      { name = "empty name", file_name = "", code = "WKS.00040005" },
      { name = "256 characters", file_name = string.rep("x", 256), code = "WKS.00040005" },
      { name = "missing name", body = "{}", code = "WKS.00040004" },
      { name = "number name", body = '{"file_name": 7}', code = "WKS.00040004" },
      { name = "JSON array", body = "[]", code = "WKS.00040003" },
      { name = "not JSON", body = "file_name=a", code = "WKS.00040003" },
      { name = "wrong content type", file_name = "a.bin", headers = { ["Content-Type"] = "text/plain" },
        code = "WKS.00040002" },
    }
    for _, case in ipairs(cases) do
      local status, _, body = create_credential(emu, case.file_name, { body = case.body, headers = case.headers })
      assert.are.equal(400, status, case.name)
      assert.are.equal(case.code, cjson.decode(body).error_code, case.name)
    end
  end)

  it("accepts a 255-character file name", function()
    local status = create_credential(emu, string.rep("x", 251) .. ".bin")
    assert.are.equal(200, status)
  end)

  it("sends a queued 503 fault then a normal 200", function()
    local error_body = '{"error_code":"WKS.00050003","error_msg":"Service unavailable"}'
    assert.are.equal(2, emu:fault{ status = 503, body = error_body, headers = { ["Retry-After"] = "1" }, times = 2 })

    for attempt = 1, 2 do
      local status, headers, body = create_credential(emu, "a.bin")
      assert.are.equal(503, status, "attempt " .. attempt)
      assert.are.equal("1", headers["retry-after"], "attempt " .. attempt)
      assert.matches("^%x+$", headers["x-request-id"], "attempt " .. attempt)
      assert.are.equal(error_body, body, "attempt " .. attempt)
    end
    assert.are.equal(0, emu:stats().faults_pending)

    local status = create_credential(emu, "a.bin")
    assert.are.equal(200, status)
  end)

  it("rejects an unknown fault field", function()
    assert.has_error(function()
      emu:fault{ stauts = 503 }
    end)
    assert.are.equal(0, emu:stats().faults_pending)
  end)

  it("counts requests and records the last one", function()
    create_credential(emu, "first.bin")
    create_credential(emu, "second.bin")
    send(emu.url .. "/unknown", { method = "GET" })

    local stats = emu:stats()
    assert.are.equal(3, stats.requests)
    assert.are.equal(3, stats.connections)
    assert.are.equal(0, stats.faults_pending)
    assert.are.equal("GET", stats.last_request.method)
    assert.are.equal("/unknown", stats.last_request.path)

    create_credential(emu, "third.bin")
    local last = emu:stats().last_request
    assert.are.equal("POST", last.method)
    assert.are.equal(emu.token, last.headers["x-auth-token"])
    assert.are.equal("third.bin", cjson.decode(last.body).file_name)
  end)

  it("keeps faults from earlier requests", function()
    emu:config{ delay_ms = 300 }
    local connection = connect(emu)
    assert(connection:send(raw_request(emu)))
    emu:wait_for_requests(1)
    assert.are.equal(1, emu:stats().requests)

    -- The request is still in its configured delay when the reset and
    -- the new fault arrive.
    emu:reset()
    emu:fault{ status = 503, body = '{"error_code":"WKS.0503","error_msg":"unavailable"}' }
    local status = read_response(connection)
    connection:close()
    assert.are.equal(200, status)
    local stats = emu:stats()
    assert.are.equal(1, stats.faults_pending)
    assert.is_nil(stats.last_request)

    assert.are.equal(503, (create_credential(emu, "a.bin")))
    assert.are.equal(0, emu:stats().faults_pending)
  end)

  it("keeps a connection alive across requests", function()
    local connection = connect(emu)
    for attempt = 1, 2 do
      assert(connection:send(raw_request(emu)))
      local status, headers = read_response(connection)
      assert.are.equal(200, status, "attempt " .. attempt)
      assert.is_nil(headers.connection, "attempt " .. attempt)
    end
    connection:close()

    local stats = emu:stats()
    assert.are.equal(2, stats.requests)
    assert.are.equal(1, stats.connections)
  end)

  it("answers keep-alive requests without stalls", function()
    -- A response split into several TCP writes without TCP_NODELAY waits about
    -- 40 ms for the client's delayed ACK, so 20 requests would take 0.8 s.
    local connection = connect(emu)
    local started = socket.gettime()
    for attempt = 1, 20 do
      assert(connection:send(raw_request(emu)))
      local status = read_response(connection)
      assert.are.equal(200, status, "attempt " .. attempt)
    end
    local elapsed = socket.gettime() - started
    connection:close()
    assert.is_true(elapsed < 0.5, string.format("20 requests took %.3f s", elapsed))
  end)

  it("closes the connection after a close fault", function()
    emu:fault{ close = true }
    local connection = connect(emu)
    assert(connection:send(raw_request(emu)))
    local status, headers = read_response(connection)
    assert.are.equal(200, status)
    assert.is_nil(headers.connection)

    local line, err = connection:receive("*l")
    assert.is_nil(line)
    assert.are.equal("closed", err)
    connection:close()
  end)

  it("drops the connection for a drop fault", function()
    emu:fault{ drop = true }
    local status, err = create_credential(emu, "a.bin")
    assert.is_nil(status)
    assert.is_string(err)
  end)

  it("sends a short body for a truncate fault", function()
    emu:fault{ truncate = true }
    local status, err = create_credential(emu, "a.bin")
    assert.is_nil(status)
    assert.is_string(err)
  end)

  it("sends an oversize body of exactly the requested size", function()
    emu:fault{ oversize_bytes = 2 * 1024 * 1024 }
    local status, headers, body = create_credential(emu, "a.bin")
    assert.are.equal(200, status)
    assert.are.equal(tostring(2 * 1024 * 1024), headers["content-length"])
    assert.are.equal(2 * 1024 * 1024, #body)
    assert.are.equal('{"padding":"', body:sub(1, 12))
  end)

  it("delays a response for a delay fault", function()
    emu:fault{ delay_ms = 300 }
    local started = socket.gettime()
    local status = create_credential(emu, "a.bin")
    assert.are.equal(200, status)
    assert.is_true(socket.gettime() - started >= 0.29)
  end)

  it("delays every request while configured", function()
    assert.are.equal(250, emu:config{ delay_ms = 250 }.delay_ms)
    for attempt = 1, 2 do
      local started = socket.gettime()
      local status = create_credential(emu, "a.bin")
      assert.are.equal(200, status, "attempt " .. attempt)
      assert.is_true(socket.gettime() - started >= 0.24, "attempt " .. attempt)
    end
    emu:reset()
    local started = socket.gettime()
    create_credential(emu, "a.bin")
    assert.is_true(socket.gettime() - started < 0.24)
  end)

  it("sends slowly for a slow_bytes_per_second fault", function()
    emu:fault{ slow_bytes_per_second = 4000 }
    local started = socket.gettime()
    local status, _, body = create_credential(emu, "a.bin")
    assert.are.equal(200, status)
    assert.is_true(socket.gettime() - started >= 0.25)
    assert.are.equal("appcenter-emulator-bucket", cjson.decode(body).bucket_name)
  end)

  it("passes its AK/SK signing self-test", function()
    local pipe = assert(io.popen("python3 tools/emulator.py --self-test 2>&1", "r"))
    local output = pipe:read("*a")
    pipe:close()
    assert.is_nil(output:find("FAIL", 1, true), output)
    assert.matches("self%-test: %d+ checks, 0 failed", output)
    assert.matches("ok   public signing vector 4", output)
    assert.matches("ok   AK/SK signed request returns 200", output)
    assert.matches("ok   signed PUT returns 200", output)
  end)

  describe("OBS port", function()
    it("is announced in the ready line", function()
      assert.matches("^http://127%.0%.0%.1:%d+$", emu.obs_url)
      assert.are.equal("localhost:" .. emu.obs_url:match(":(%d+)$"), emu.server_end_point)
    end)

    it("rejects an unsigned PUT with an XML AccessDenied", function()
      local status, headers, body = send(emu.obs_url .. "/appcenter-emulator-bucket/a.bin",
        { method = "PUT", body = "data" })
      assert.are.equal(403, status)
      assert.matches("^application/xml", headers["content-type"])
      assert.matches("^%x+$", headers["x-obs-request-id"])
      assert.matches("<Code>AccessDenied</Code>", body)
      assert.matches("<RequestId>" .. headers["x-obs-request-id"] .. "</RequestId>", body)
      assert.are.equal(1, emu:stats().obs_requests)
      assert.are.equal("PUT", emu:stats().last_obs_request.method)
    end)

    it("rejects a PUT without Content-Length with 411", function()
      local status, _, body = send(emu.obs_url .. "/appcenter-emulator-bucket/a.bin", {
        method = "PUT",
        headers = { ["Transfer-Encoding"] = "chunked" },
      })
      assert.are.equal(411, status)
      assert.matches("<Code>MissingContentLength</Code>", body)
    end)

    it("sends an OBS fault as XML", function()
      emu:fault{ target = "obs", status = 503 }
      local status, _, body = send(emu.obs_url .. "/appcenter-emulator-bucket/a.bin",
        { method = "PUT", body = "data" })
      assert.are.equal(503, status)
      assert.matches("<Code>ServiceUnavailable</Code>", body)
      assert.are.equal(0, emu:stats().faults_pending)
    end)

    it("keeps OBS faults apart from API faults", function()
      emu:fault{ target = "obs", status = 500 }
      assert.are.equal(200, (create_credential(emu, "a.bin")))
      assert.are.equal(1, emu:stats().faults_pending)
    end)

    it("rejects API-only fault fields for OBS", function()
      assert.has_error(function()
        emu:fault{ target = "obs", truncate = true }
      end)
      assert.has_error(function()
        emu:fault{ target = "s3", status = 500 }
      end)
    end)

    it("returns nil for an object never uploaded", function()
      assert.is_nil(emu:object("appcenter-emulator-bucket", "app-file/none.bin"))
    end)

    it("sets and resets credential_ttl", function()
      assert.are.equal(900, emu:config{}.credential_ttl)
      assert.are.equal(5, emu:config{ credential_ttl = 5 }.credential_ttl)
      assert.has_error(function()
        emu:config{ credential_ttl = -1 }
      end)
      emu:reset()
      assert.are.equal(900, emu:config{}.credential_ttl)
    end)
  end)
end)

describe("emulator.start", function()
  it("uses the token and project id from args", function()
    local project_id = "fedcba9876543210fedcba9876543210"
    local emu = emulator.start{ args = { "--token", "fake-other-token", "--project-id", project_id } }
    local ok, err = pcall(function()
      assert.are.equal("fake-other-token", emu.token)
      assert.are.equal(project_id, emu.project_id)
      assert.are.equal(200, (create_credential(emu, "a.bin")))
      assert.are.equal(404, (create_credential(emu, "a.bin", { project_id = emulator.DEFAULT_PROJECT_ID })))
    end)
    emu:stop()
    assert(ok, err)
  end)

  it("reports the emulator's error when it cannot start", function()
    local ok, err = pcall(emulator.start, { args = { "--host", "0.0.0.0" } })
    assert.is_false(ok)
    assert.matches("emulator did not start", err)
    assert.matches("not a loopback address", err)
  end)

  it("stops the process", function()
    local emu = emulator.start()
    local pid = emu.pid
    emu:stop()
    assert.is_false(is_process_running(pid))
    emu:stop()
  end)

  it("serves HTTPS with a test certificate", function()
    local cert_path, key_path = emulator.make_certificate()
    local emu = emulator.start{ tls_cert = cert_path, tls_key = key_path }
    -- LuaSocket has no TLS, so Python's verified HTTPS client checks the port.
    local command = string.format(
      "python3 -c 'import ssl, sys, urllib.request, urllib.error\n" ..
      "context = ssl.create_default_context(cafile=sys.argv[2])\n" ..
      "try:\n    urllib.request.urlopen(sys.argv[1], context=context)\n" ..
      "except urllib.error.HTTPError as error:\n    print(error.code)' %s %s 2>&1",
      emu.url .. credential_path(emu.project_id), cert_path)
    local pipe = assert(io.popen(command, "r"))
    local output = pipe:read("*a")
    pipe:close()
    local options = emu:client_options()
    emu:stop()
    os.remove(cert_path)
    os.remove(key_path)
    os.remove((cert_path:gsub("/cert%.pem$", "")))

    assert.matches("^https://127%.0%.0%.1:%d+$", emu.url)
    assert.are.equal("405\n", output)
    assert.are.equal(cert_path, options.ca_file)
    assert.are.equal(emu.url, options.endpoint)
  end)
end)
