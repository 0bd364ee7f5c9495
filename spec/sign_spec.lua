-- core.sign (SDK-HMAC-SHA256) against the four public test vectors of the
-- Go and Python SDKs, against spec/fixtures/sign_vectors.json and, when
-- node and the official package are installed, against fresh vectors.
--
-- The fixture contains 256 requests that AKSKSigner.sign from
-- @huaweicloud/huaweicloud-sdk-core 3.1.211 signed. To regenerate it:
--   node tools/sign-vectors.js --output spec/fixtures/sign_vectors.json
-- The live tests look for the package under $APPCENTER_NODE_SIGNER_DIR
-- (default /tmp/node-signer), never install it and are pending without it.

local core = require("appcenter.core")
local cjson = require("cjson")

local FIXTURE = "spec/fixtures/sign_vectors.json"
local GENERATOR = "tools/sign-vectors.js"
local PACKAGE_JSON = "/node_modules/@huaweicloud/huaweicloud-sdk-core/package.json"
local FRESH_COUNT = 200

local PUBLIC_VECTORS = {
  {
    name = "Go GET",
    method = "GET",
    url = "https://service.example.com/path?limit=1",
    headers = {},
    body = "",
    date = "20060102T150405Z",
    signed_headers = "x-sdk-date",
    signature = "5a2ce64c865e0e6046321c6f3d5a77ba8413eeaf355c3166c03d58d02ac79624",
  },
  {
    name = "Go POST",
    method = "POST",
    url = "https://service.example.com/path?key=value",
    headers = {},
    body = '{"Name":"test","Id":1}\n',
    date = "20060102T150405Z",
    signed_headers = "x-sdk-date",
    signature = "cecc2af119b18ab70b4d094c0750f3b42c02f254903179a0fc2cc72fc9db4f59",
  },
  {
    name = "Python GET",
    method = "GET",
    url = "https://service.endpoint.myhuaweicloud.com/resources?size=1",
    headers = { host = "service.endpoint.myhuaweicloud.com" },
    body = "",
    date = "20200608T023900Z",
    signed_headers = "host;x-sdk-date",
    signature = "cfb4171acec81de07d50e53d57eb77edd537414d66ddb1d7d780f128e12cd842",
  },
  {
    name = "Python POST",
    method = "POST",
    url = "https://service.endpoint.myhuaweicloud.com/resources?size=1",
    headers = { host = "service.endpoint.myhuaweicloud.com" },
    body = '{"name":"test","id":1}',
    date = "20200608T023900Z",
    signed_headers = "host;x-sdk-date",
    signature = "436b1ac0a1ae03705934bb70ef2f2e09f7bfed2117d731a38235053199323a1f",
  },
}


local function read_file(path)
  local file = assert(io.open(path, "rb"))
  local text = file:read("*a")
  file:close()
  return text
end


local function file_exists(path)
  local file = io.open(path, "rb")
  if file then
    file:close()
  end
  return file ~= nil
end


-- os.execute returns true on success in Lua 5.2 and later, 0 in LuaJIT.
local function run(command)
  local status = os.execute(command)
  return status == true or status == 0
end


local function shell_quote(text)
  return "'" .. text:gsub("'", "'\\''") .. "'"
end


-- Signs a vector from the fixture or the public table. Returns the
-- Authorization value and the canonical request.
local function sign(vector)
  local added, canonical = core.sign({
    method = vector.method,
    url = vector.url,
    headers = vector.headers,
    body = vector.body,
    date = vector.date,
    ak = vector.ak or "AccessKey",
    sk = vector.sk or "SecretKey",
  })
  return added.Authorization, canonical
end


local function describe_vector(index, vector)
  return ("vector %d: %s %s"):format(index, vector.method, vector.url)
end


-- Returns the path of the folder with the official package, or nil and
-- the reason why the live tests cannot run.
local function find_node_signer()
  local dir = os.getenv("APPCENTER_NODE_SIGNER_DIR") or "/tmp/node-signer"
  if not run("command -v node >/dev/null 2>&1") then
    return nil, "node is not installed"
  end
  if not file_exists(dir .. PACKAGE_JSON) then
    return nil, ("@huaweicloud/huaweicloud-sdk-core is not installed in %s "
      .. "(set APPCENTER_NODE_SIGNER_DIR)"):format(dir)
  end
  return dir
end


-- Runs tools/sign-vectors.js and returns its output text.
local function generate_vectors(dir, arguments)
  local output, errors = os.tmpname(), os.tmpname()
  local command = ("node %s %s --signer-dir %s --output %s 2>%s"):format(
    GENERATOR, arguments, shell_quote(dir), shell_quote(output),
    shell_quote(errors))
  local ok = run(command)
  local text, message = read_file(output), read_file(errors)
  os.remove(output)
  os.remove(errors)
  assert.is_true(ok, command .. " failed: " .. message)
  return text
end


describe("core.sign", function()
  describe("public vectors", function()
    for _, vector in ipairs(PUBLIC_VECTORS) do
      it(vector.name, function()
        local signed_headers, signature =
          sign(vector):match("SignedHeaders=([^,]*), Signature=(%x+)$")
        assert.are.equal(vector.signature, signature)
        assert.are.equal(vector.signed_headers, signed_headers)
      end)
    end
  end)

  describe("fixture", function()
    local vectors = cjson.decode(read_file(FIXTURE))

    it("has at least 200 vectors", function()
      assert.is_true(#vectors >= 200, ("%s has %d vectors"):format(FIXTURE, #vectors))
    end)

    it("reproduces every vector", function()
      for index, vector in ipairs(vectors) do
        assert.are.equal(vector.authorization, (sign(vector)),
          describe_vector(index, vector))
      end
    end)
  end)

  describe("official Node.js signer", function()
    it("agrees on fresh vectors", function()
      local dir, reason = find_node_signer()
      if not dir then
        pending(reason)
      end
      local seed = os.time() % 2147483648
      local vectors = cjson.decode(generate_vectors(dir,
        ("--seed %d --count %d"):format(seed, FRESH_COUNT)))
      assert.are.equal(FRESH_COUNT, #vectors)
      for index, vector in ipairs(vectors) do
        assert.are.equal(vector.authorization, (sign(vector)),
          ("seed %d, %s"):format(seed, describe_vector(index, vector)))
      end
    end)

    it("regenerates the fixture", function()
      local dir, reason = find_node_signer()
      if not dir then
        pending(reason)
      end
      assert.are.equal(read_file(FIXTURE), generate_vectors(dir, ""),
        "the installed package or " .. GENERATOR .. " no longer produces " .. FIXTURE)
    end)
  end)

  describe("canonical request", function()
    local base = {
      method = "GET",
      url = "https://h.example.com/",
      date = "20200608T023900Z",
    }

    local function canonical(fields)
      local vector = {}
      for key, value in pairs(base) do
        vector[key] = value
      end
      for key, value in pairs(fields) do
        vector[key] = value
      end
      local _, text = sign(vector)
      local lines = {}
      for line in (text .. "\n"):gmatch("([^\n]*)\n") do
        lines[#lines + 1] = line
      end
      return lines
    end

    it("upper-cases the method", function()
      assert.are.equal("DELETE", canonical({ method = "delete" })[1])
    end)

    it("decodes the path before encoding", function()
      local uri = canonical({ url = "https://h.example.com/a%20b/%7e%3a/c:d" })[2]
      assert.are.equal("/a%20b/~%3A/c%3Ad/", uri)
    end)

    it("reads a URL without a scheme as a path", function()
      local lines = canonical({ url = "/v1/p/x?next=https://a.example/b" })
      assert.are.equal("/v1/p/x/", lines[2])
      assert.are.equal("next=https%3A%2F%2Fa.example%2Fb", lines[3])
    end)

    it("finds the scheme only at the start", function()
      local lines = canonical({ url = "https://h.example/v1/p/x?next=https://a.example/b" })
      assert.are.equal("/v1/p/x/", lines[2])
      assert.are.equal("next=https%3A%2F%2Fa.example%2Fb", lines[3])
    end)

    it("keeps a plus sign in the query", function()
      assert.are.equal("a=b%2Bc", canonical({ url = "https://h.example.com/?a=b+c" })[3])
    end)

    it("trims spaces and tabs around values", function()
      local lines = canonical({ headers = { ["X-Note"] = " \t a \t b\t " } })
      assert.are.equal("x-note:a \t b", lines[4])
    end)

    it("takes X-Sdk-Content-Sha256 as payload hash", function()
      local lines = canonical({
        body = "not json",
        headers = { ["x-sdk-content-sha256"] = " UNSIGNED-PAYLOAD " },
      })
      assert.are.equal("UNSIGNED-PAYLOAD", lines[#lines])
    end)
  end)

  describe("argument errors", function()
    -- Returns a function that signs a valid request changed by fields.
    local function sign_with(fields)
      return function()
        local request = { url = "https://h.example.com/", ak = "FAKEAK", sk = "fake-sk" }
        for key, value in pairs(fields) do
          request[key] = value
        end
        core.sign(request)
      end
    end

    it("rejects a missing url", function()
      assert.has_error(function()
        core.sign({ ak = "FAKEAK", sk = "fake-sk" })
      end, "appcenter.core.sign: missing field 'url' (a string)")
    end)

    it("rejects a non-string url", function()
      assert.has_error(sign_with({ url = 42 }),
        "appcenter.core.sign: field 'url' must be a string, got number")
    end)

    it("rejects a non-string header value", function()
      assert.has_error(sign_with({ headers = { ["X-Count"] = 3 } }),
        "appcenter.core.sign: header 'X-Count' must have a string value, got number")
    end)

    it("rejects a non-string header name", function()
      assert.has_error(sign_with({ headers = { "value" } }),
        "appcenter.core.sign: header names must be strings, got number")
    end)

    it("rejects headers that are not a table", function()
      assert.has_error(sign_with({ headers = "host: h" }),
        "appcenter.core.sign: field 'headers' must be a table, got string")
    end)

    it("rejects input that would break the request", function()
      local cases = {
        { { method = "GE T" }, "field 'method' must be an HTTP method" },
        { { method = "" }, "field 'method' must be an HTTP method" },
        { { url = "https://h.example.com/\r\nX: 1" }, "field 'url' contains a line break" },
        { { headers = { ["X-A"] = "1\r\nX-B: 2" } }, "header 'X-A' contains a line break" },
        { { headers = { ["X A"] = "1" } }, "header name 'X A' is not a valid" },
        { { headers = { [""] = "1" } }, "header name '' is not a valid" },
        { { headers = { ["X-A"] = "1", ["x-a"] = "2" } }, "is given twice" },
        { { ak = "FAKE\nAK" }, "field 'ak' contains white space" },
        { { ak = "A, Signature=x" }, "field 'ak' contains white space" },
        { { ak = "" }, "field 'ak' is empty" },
        { { sk = "" }, "field 'sk' is empty" },
      }
      for _, case in ipairs(cases) do
        local ok, message = pcall(sign_with(case[1]))
        assert.is_false(ok, case[2])
        assert.is_truthy(message:find(case[2], 1, true), message)
      end
    end)

    it("rejects a malformed date", function()
      assert.has_error(sign_with({ date = "2020-06-08" }),
        "appcenter.core.sign: field 'date' must look like 20060102T150405Z (UTC), "
          .. "got '2020-06-08'")
    end)

    it("rejects a date of the right length", function()
      for _, date in ipairs{ "20200608T0239\r\nZ", "20200608T023900\0", "2020-06-08T02:39" } do
        local ok, message = pcall(sign_with({ date = date }))
        assert.is_false(ok, date)
        assert.matches("appcenter.core.sign: field 'date' must look like 20060102T150405Z (UTC), got ",
          message, 1, true)
      end
    end)

    it("hides a date with control characters", function()
      assert.has_error(sign_with({ date = "20200608T0239\r\nZ" }),
        "appcenter.core.sign: field 'date' must look like 20060102T150405Z (UTC), "
          .. "got a 16-byte string that has bytes other than printable ASCII or is too long to show")
    end)

    it("formats numeric dates in UTC", function()
      local cases = {
        { 0, "19700101T000000Z" },
        { 951827696, "20000229T123456Z" },
        { 4107542399, "21000228T235959Z" },
        { 4107542400, "21000301T000000Z" },
        { 13574563201, "24000229T000001Z" },
        { 253402300799, "99991231T235959Z" },
      }
      for _, case in ipairs(cases) do
        local headers = core.sign{ url = "https://h/", ak = "a", sk = "b", date = case[1] }
        assert.equals(case[2], headers["X-Sdk-Date"], "date " .. case[1])
      end
    end)

    it("rejects a numeric date outside year 1970 to 9999", function()
      for _, date in ipairs{ -1, 253402300800, 1e18, 0 / 0 } do
        assert.has_error(sign_with({ date = date }))
      end
      local headers = core.sign{ url = "https://h/", ak = "a", sk = "b", date = 253402300799 }
      assert.equals("99991231T235959Z", headers["X-Sdk-Date"])
    end)

    -- glibc writes "-nan" for the NaN that 0 / 0 makes.
    it("writes a NaN date as nan", function()
      for _, date in ipairs{ 0 / 0, -(0 / 0) } do
        assert.has_error(sign_with({ date = date }),
          "appcenter.core.sign: field 'date' must be seconds since the epoch "
            .. "from 0 to 253402300799 (year 9999), got nan")
      end
    end)
  end)
end)
