-- AK/SK signing end to end against the local emulator, through
-- appcenter.core and the wrapper. The specs cover permanent and temporary
-- keys and the 401 responses to a wrong SK, a stale X-Sdk-Date and a
-- missing security token. They also cover the region-to-endpoint mapping
-- and its environment override.

local appcenter = require("appcenter")
local cjson = require("cjson")
local core = require("appcenter.core")
local http = require("socket.http")
local ltn12 = require("ltn12")
local emulator = require("spec.support.emulator")

local FAKE_WRONG_SK = "fake-wrong-sk-00000000000000000000000000"

-- Variables that change which credentials or endpoint a subprocess uses.
-- run_lua unsets them unless a test sets one.
local SOURCE_VARIABLES = {
  "HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK",
  "HUAWEICLOUD_SDK_SECURITY_TOKEN", "HUAWEICLOUD_SDK_PROJECT_ID",
  "HUAWEICLOUD_SDK_CREDENTIALS_FILE",
  "HUAWEICLOUD_SDK_REGION_WORKSPACE_CN_NORTH_4",
  "HUAWEICLOUD_SDK_REGION_WORKSPACE_XX_TEST_1",
}

local subprocess = require("spec.support.subprocess")
local shell_quote = subprocess.shell_quote

-- Runs `script` in a new Lua process with the variables in
-- SOURCE_VARIABLES unset, HOME pointing to a folder that does not exist
-- and the variables in `env` set. Returns the exit status, stdout and
-- stderr.
local function run_lua(script, env)
  return subprocess.run_lua(script, SOURCE_VARIABLES,
    os.tmpname() .. ".no-home", env)
end


describe("AK/SK", function()
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

  -- Options for the emulator with its permanent key pair and no token.
  local function key_options(extra)
    local opts = {
      endpoint = emu.url,
      project_id = emu.project_id,
      ak = emu.ak,
      sk = emu.sk,
    }
    for name, value in pairs(extra or {}) do
      opts[name] = value
    end
    return opts
  end

  -- Options for a temporary key that the emulator issued.
  local function temporary_options(issued, with_security_token)
    local opts = key_options({ ak = issued.access, sk = issued.secret })
    if with_security_token then
      opts.security_token = issued.security_token
    end
    return opts
  end

  -- Requests a credential with the permanent keys and returns its
  -- temporary access, secret and security token.
  local function issue_temporary_key()
    local client = assert(core.new(key_options()))
    local result, err = client:create_credential("issue.bin")
    client:close()
    assert.is_table(result, tostring(err))
    return result.credential
  end

  local function assert_signed_with(access_key)
    local request = emu:stats().last_request
    local authorization = request.headers.authorization
    assert.equal("SDK-HMAC-SHA256 Access=" .. access_key .. ",",
      authorization:sub(1, #("SDK-HMAC-SHA256 Access=" .. access_key .. ",")))
    assert.is_not_nil(authorization:find("SignedHeaders=", 1, true))
    assert.equal(emu.project_id, request.headers["x-project-id"])
    assert.is_string(request.headers["x-sdk-date"])
    assert.is_nil(request.headers["x-auth-token"])
  end

  local function assert_rejected(err)
    assert.equal("http", err.kind)
    assert.equal(401, err.status)
    assert.equal("APIGW.0301", err.code)
    assert.is_false(err.retryable)
  end

  describe("permanent key", function()
    it("works through core", function()
      local client = assert(core.new(key_options()))
      local result, meta = client:create_credential("replay.bin")
      client:close()

      assert.is_table(result, tostring(meta))
      assert.matches("replay%.bin$", result.object_path)
      assert.equal(200, meta.status)
      assert.equal(1, emu:stats().requests)
      assert_signed_with(emu.ak)
      assert.is_nil(emu:stats().last_request.headers["x-security-token"])
    end)

    it("works through wrapper", function()
      local client = assert(appcenter.new(key_options()))
      local result, meta = client:create_credential("replay.bin")
      client:close()

      assert.is_table(result, tostring(meta))
      assert.equal(1, meta.attempts)
      assert.equal(1, emu:stats().requests)
      assert_signed_with(emu.ak)
    end)

    it("signs each call on one connection", function()
      local client = assert(appcenter.new(key_options()))
      assert.is_table(client:create_credential("one.bin"))
      assert.is_table(client:create_credential("two.bin"))
      client:close()

      local stats = emu:stats()
      assert.equal(2, stats.requests)
      assert.equal(1, stats.connections)
    end)

    it("one-shot form works", function()
      local opts = key_options({ file_name = "replay.bin" })

      local result, meta = appcenter.create_credential(opts)

      assert.is_table(result, tostring(meta))
      assert.equal(1, emu:stats().requests)
    end)
  end)

  describe("temporary key", function()
    it("works with security token through core", function()
      local issued = issue_temporary_key()

      local client = assert(core.new(temporary_options(issued, true)))
      local result, meta = client:create_credential("replay.bin")
      client:close()

      assert.is_table(result, tostring(meta))
      assert.equal(2, emu:stats().requests)
      assert_signed_with(issued.access)
      assert.equal(issued.security_token,
        emu:stats().last_request.headers["x-security-token"])
    end)

    it("sends a security token without blanks", function()
      local issued = issue_temporary_key()
      local opts = temporary_options(issued, true)
      opts.security_token = " \t" .. issued.security_token .. " "

      local client = assert(core.new(opts))
      local result, meta = client:create_credential("replay.bin")
      client:close()

      assert.is_table(result, tostring(meta))
      assert.equal(issued.security_token,
        emu:stats().last_request.headers["x-security-token"])
    end)

    it("works with security token through wrapper", function()
      local issued = issue_temporary_key()

      local client = assert(appcenter.new(temporary_options(issued, true)))
      local result, meta = client:create_credential("replay.bin")
      client:close()

      assert.is_table(result, tostring(meta))
      assert.equal(1, meta.attempts)
      assert.equal(2, emu:stats().requests)
      assert_signed_with(issued.access)
    end)
  end)

  describe("rejection", function()
    it("rejects an ak that breaks the Authorization header", function()
      for _, ak in ipairs{ "FAKE AK", "FAKEAK,x", "FAKEAK\t" } do
        local client, err = core.new(key_options({ ak = ak }))

        assert.is_nil(client)
        assert.equal("invalid_argument", err.kind)
        assert.matches("^invalid ak: white space, a comma or a control "
          .. "character at byte %d+; pass the access key ID alone$",
          err.message)
      end
      assert.equal(0, emu:stats().requests)
    end)

    it("rejects an sk with a trailing line break", function()
      local client, err = core.new(key_options({ sk = emu.sk .. "\n" }))

      assert.is_nil(client)
      assert.equal("invalid sk: line break at byte " .. (#emu.sk + 1)
        .. "; remove line breaks (a trailing newline from a file is a "
        .. "common cause)", err.message)
      assert.is_nil(err.message:find(emu.sk, 1, true))
    end)

    it("wrong sk gives 401 through core", function()
      local client = assert(core.new(key_options({ sk = FAKE_WRONG_SK })))
      local result, err = client:create_credential("replay.bin")
      client:close()

      assert.is_nil(result)
      assert_rejected(err)
      assert.is_not_nil(err.message:find("verify aksk signature fail", 1,
        true), err.message)
      assert.is_nil(tostring(err):find(FAKE_WRONG_SK, 1, true))
      assert.equal(1, emu:stats().requests)
    end)

    it("wrong sk is not retried", function()
      local client = assert(appcenter.new(key_options({ sk = FAKE_WRONG_SK })))
      local result, err = client:create_credential("replay.bin")
      client:close()

      assert.is_nil(result)
      assert_rejected(err)
      assert.equal(1, err.attempts)
      assert.equal(1, emu:stats().requests)
    end)

    it("missing security token gives 401", function()
      local issued = issue_temporary_key()

      local client = assert(appcenter.new(temporary_options(issued, false)))
      local result, err = client:create_credential("replay.bin")
      client:close()

      assert.is_nil(result)
      assert_rejected(err)
      assert.equal(1, err.attempts)
      assert.is_not_nil(err.message:find("needs the X-Security-Token header",
        1, true), err.message)
      assert.is_nil(tostring(err):find(issued.secret, 1, true))
      assert.equal(2, emu:stats().requests)
    end)

    describe("stale X-Sdk-Date", function()
      -- appcenter.core always signs with the current time, so these
      -- requests are signed with core.sign and sent with LuaSocket.
      local function send_signed(date)
        local path = "/v1/" .. emu.project_id
          .. "/app-center/buckets/actions/create-credential"
        local url = emu.url .. path
        local body = cjson.encode({ file_name = "replay.bin" })
        local headers = {
          Host = emu.url:match("^https?://([^/]+)"),
          ["Content-Type"] = "application/json",
          ["X-Project-Id"] = emu.project_id,
        }
        local added = core.sign({ method = "POST", url = url,
          headers = headers, body = body, ak = emu.ak, sk = emu.sk,
          date = date })
        for name, value in pairs(added) do
          headers[name] = value
        end
        headers["Content-Length"] = tostring(#body)

        local chunks = {}
        local ok, status = http.request({
          url = url,
          method = "POST",
          headers = headers,
          source = ltn12.source.string(body),
          sink = ltn12.sink.table(chunks),
        })
        assert.is_not_nil(ok, status)
        return status, table.concat(chunks)
      end

      it("current date is accepted", function()
        -- Shows that the request below fails only because of its date.
        local status, body = send_signed(os.time())

        assert.equal(200, status, body)
        assert.equal(1, emu:stats().requests)
      end)

      it("an hour-old date gives 401", function()
        local status, body = send_signed(os.time() - 3600)

        assert.equal(401, status)
        local decoded = cjson.decode(body)
        assert.equal("APIGW.0301", decoded.error_code)
        assert.is_not_nil(decoded.error_msg:find(
          "seconds from the server time", 1, true), decoded.error_msg)
        assert.equal(1, emu:stats().requests)
      end)

      it("stale date response is not retryable", function()
        -- The emulator replays its stale-date response to a wrapper client,
        -- so the check covers how core classifies that exact response.
        local status, body = send_signed("20200101T000000Z")
        assert.equal(401, status)
        emu:fault({ status = 401, body = body, times = 1 })

        local client = assert(appcenter.new(key_options()))
        local result, err = client:create_credential("replay.bin")
        client:close()

        assert.is_nil(result)
        assert_rejected(err)
        assert.equal(1, err.attempts)
        assert.is_not_nil(err.message:find("20200101T000000Z", 1, true),
          err.message)
        assert.equal(2, emu:stats().requests)
      end)
    end)
  end)

  describe("region", function()
    local REGIONS = { "cn-north-4", "ap-southeast-1", "eu-west-101",
      "la-south-2", "af-north-1" }

    -- Options without endpoint, for a region that is never contacted.
    local function region_options(region)
      local opts = key_options({ region = region })
      opts.endpoint = nil
      return opts
    end

    for _, region in ipairs(REGIONS) do
      it("maps " .. region, function()
        local client = assert(core.new(region_options(region)))
        local description = tostring(client)
        client:close()

        local expected = "https://workspace." .. region .. ".myhuaweicloud.com"
        assert.is_not_nil(description:find("(" .. expected .. ",", 1, true),
          description)
      end)
    end

    it("unknown region tells how to pass endpoint", function()
      local client, err = core.new(region_options("xx-test-1"))

      assert.is_nil(client)
      assert.equal("invalid_argument", err.kind)
      assert.is_not_nil(err.message:find('invalid region "xx-test-1"', 1,
        true), err.message)
      assert.is_not_nil(err.message:find('pass endpoint = "https://..."', 1,
        true), err.message)
      assert.is_not_nil(err.message:find(
        "HUAWEICLOUD_SDK_REGION_WORKSPACE_XX_TEST_1", 1, true), err.message)
    end)

    it("wrapper returns unknown region error", function()
      local client, err = appcenter.new(region_options("xx-test-1"))

      assert.is_nil(client)
      assert.is_not_nil(err.message:find("endpoint", 1, true), err.message)
      assert.equal(0, emu:stats().requests)
    end)

    -- Creates a core client for `region` with the emulator's keys, requests
    -- one credential and prints the client's description, or the error.
    local function region_script(region)
      return ([[
local core = require("appcenter.core")
local client, err = core.new{
  region = %q, project_id = %q, ak = %q, sk = %q,
}
if not client then
  print(tostring(err))
  os.exit(2)
end
local description = tostring(client)
local result
result, err = client:create_credential("replay.bin")
client:close()
if not result then
  print(tostring(err))
  os.exit(1)
end
print(description)
]]):format(region, emu.project_id, emu.ak, emu.sk)
    end

    it("environment override reaches emulator", function()
      local status, stdout, stderr = run_lua(region_script("cn-north-4"), {
        HUAWEICLOUD_SDK_REGION_WORKSPACE_CN_NORTH_4 = emu.url,
      })

      assert.equal(0, status, stdout .. stderr)
      assert.is_not_nil(stdout:find("(" .. emu.url .. ",", 1, true), stdout)
      assert.equal(1, emu:stats().requests)
      assert_signed_with(emu.ak)
    end)

    it("environment override adds a region", function()
      local status, stdout, stderr = run_lua(region_script("xx-test-1"), {
        HUAWEICLOUD_SDK_REGION_WORKSPACE_XX_TEST_1 = emu.url,
      })

      assert.equal(0, status, stdout .. stderr)
      assert.equal(1, emu:stats().requests)
    end)

    it("rejects an override over the endpoint limit", function()
      local status, stdout = run_lua(region_script("xx-test-1"), {
        HUAWEICLOUD_SDK_REGION_WORKSPACE_XX_TEST_1 = emu.url .. "/"
          .. ("a"):rep(3000),
      })

      assert.equal(2, status)
      assert.is_not_nil(stdout:find("invalid "
        .. "HUAWEICLOUD_SDK_REGION_WORKSPACE_XX_TEST_1: it is longer than",
        1, true), stdout)
      assert.equal(0, emu:stats().requests)
    end)

    it("empty override is ignored", function()
      local status, stdout = run_lua(region_script("xx-test-1"), {
        HUAWEICLOUD_SDK_REGION_WORKSPACE_XX_TEST_1 = "",
      })

      assert.equal(2, status)
      assert.is_not_nil(stdout:find('pass endpoint = "https://..."', 1, true),
        stdout)
      assert.equal(0, emu:stats().requests)
    end)
  end)
end)
