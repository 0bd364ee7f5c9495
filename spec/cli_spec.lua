-- tools/appcenter-credential run as a separate process against the local
-- App Center emulator.

local cjson = require("cjson")
local emulator = require("spec.support.emulator")

local TOOL = "tools/appcenter-credential"

local function shell_quote(value)
  return "'" .. value:gsub("'", "'\\''") .. "'"
end

local function read_file(path)
  local file = assert(io.open(path, "rb"))
  local text = file:read("*a")
  file:close()
  return text
end

local function write_file(path, text)
  local file = assert(io.open(path, "wb"))
  file:write(text)
  file:close()
end

local function run_command(command)
  local status = os.execute(command)
  return status == 0 or status == true
end

local function make_directory()
  local path = os.tmpname()
  os.remove(path)
  assert(run_command("mkdir -m 700 " .. shell_quote(path)))
  return path
end

-- Variables that the tool reads for credentials. run_tool unsets them all,
-- so the caller's environment cannot change a result.
local CREDENTIAL_VARIABLES = {
  "APPCENTER_TOKEN", "HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK",
  "HUAWEICLOUD_SDK_SECURITY_TOKEN", "HUAWEICLOUD_SDK_PROJECT_ID",
  "HUAWEICLOUD_SDK_CREDENTIALS_FILE", "APPCENTER_ENDPOINT",
  "APPCENTER_PROJECT_ID",
}

-- Folder used as HOME, so that no real ~/.huaweicloud/credentials is read.
-- It contains no credentials file unless a test writes one.
local home = make_directory()

-- Runs the tool with `args`, the variables of CREDENTIAL_VARIABLES unset,
-- HOME set to `home`, APPCENTER_TOKEN set to `token` unless it is nil, and
-- the variables in `env` set. With `memory_limit_kib`, the tool's virtual
-- memory is limited to that many KiB. Returns the exit status, standard
-- output and standard error.
local function run_tool(args, token, env, memory_limit_kib)
  local stderr_path = os.tmpname()
  local words = {}
  for i, value in ipairs(args) do
    words[i] = shell_quote(value)
  end

  local assignments = { "env" }
  for _, name in ipairs(CREDENTIAL_VARIABLES) do
    assignments[#assignments + 1] = "-u " .. name
  end
  assignments[#assignments + 1] = "HOME=" .. shell_quote(home)
  if token then
    assignments[#assignments + 1] = "APPCENTER_TOKEN=" .. shell_quote(token)
  end
  for name, value in pairs(env or {}) do
    assignments[#assignments + 1] = name .. "=" .. shell_quote(value)
  end
  local command = ("(%s %s %s) 2>%s </dev/null; echo \"exit=$?\""):format(
    table.concat(assignments, " "), TOOL, table.concat(words, " "),
    shell_quote(stderr_path))
  if memory_limit_kib then
    command = ("ulimit -v %d; %s"):format(memory_limit_kib, command)
  end

  local pipe = assert(io.popen(command, "r"))
  local output = pipe:read("*a")
  pipe:close()
  local stderr = read_file(stderr_path)
  os.remove(stderr_path)

  local stdout, status = output:match("^(.-)exit=(%d+)\n$")
  return tonumber(status), stdout, stderr
end

local function count_lines(text)
  local _, count = text:gsub("\n", "")
  return count
end

describe("appcenter-credential", function()
  local emu

  setup(function()
    emu = emulator.start{}
  end)

  teardown(function()
    emu:stop()
    run_command("rm -rf " .. shell_quote(home))
  end)

  before_each(function()
    emu:reset()
  end)

  local function endpoint_args(file_name)
    return { "--endpoint", emu.url, "--project-id", emu.project_id, file_name }
  end

  it("says that --region beats APPCENTER_ENDPOINT", function()
    -- The region's endpoint comes from its variable, so the request goes
    -- to the emulator and not to the region's host.
    local status, stdout, stderr = run_tool({ "--region", "cn-north-4", "--project-id",
      emu.project_id, "replay.bin" }, emu.token, {
        APPCENTER_ENDPOINT = "http://127.0.0.1:1",
        HUAWEICLOUD_SDK_REGION_WORKSPACE_CN_NORTH_4 = emu.url,
      })

    assert.equal(0, status, stderr)
    assert.is_table(cjson.decode(stdout))
    assert.equal("appcenter-credential: note: APPCENTER_ENDPOINT is ignored because --region "
      .. "cn-north-4 is given; pass --endpoint to choose one\n", stderr)
    assert.equal(1, emu:stats().requests)
  end)

  it("prints credential as JSON", function()
    local status, stdout, stderr = run_tool(endpoint_args("replay.bin"),
      emu.token)

    assert.equal(0, status)
    assert.equal("", stderr)
    local result = cjson.decode(stdout)
    assert.is_string(result.credential.access)
    assert.is_string(result.credential.secret)
    assert.equal("Allow", result.policy.statement.effect)
    assert.is_not_nil(result.object_path:find("replay.bin", 1, true))
  end)

  it("prints empty action and resource lists as arrays", function()
    emu:fault{ status = 200, body = emulator.EMPTY_LISTS_BODY }

    local status, stdout = run_tool(endpoint_args("replay.bin"), emu.token)

    assert.equal(0, status)
    assert.is_not_nil(stdout:find('"action": [],', 1, true), stdout)
    assert.is_not_nil(stdout:find('"resource": []', 1, true), stdout)
  end)

  it("fails when standard output cannot be written", function()
    local stderr_path = os.tmpname()
    local words = { "env", "-u", "APPCENTER_ENDPOINT", "HOME=" .. shell_quote(home),
      "APPCENTER_TOKEN=" .. shell_quote(emu.token), TOOL }
    for _, value in ipairs(endpoint_args("replay.bin")) do
      words[#words + 1] = shell_quote(value)
    end
    local pipe = assert(io.popen(("%s >/dev/full 2>%s; echo $?"):format(
      table.concat(words, " "), shell_quote(stderr_path)), "r"))
    local status = tonumber(pipe:read("*a"))
    pipe:close()
    local stderr = read_file(stderr_path)
    os.remove(stderr_path)

    assert.equal(1, status)
    assert.equal("appcenter-credential: cannot write standard output: No "
      .. "space left on device\n", stderr)
  end)

  it("output is indented with sorted keys", function()
    local _, stdout = run_tool(endpoint_args("replay.bin"), emu.token)

    assert.equal("{\n", stdout:sub(1, 2))
    assert.equal("}\n", stdout:sub(-2))
    assert.is_not_nil(stdout:find('\n  "credential": {\n    "access": ', 1,
      true))
    assert.is_true(stdout:find('"bucket_name"', 1, true)
      < stdout:find('"credential"', 1, true))
    assert.is_nil(stdout:find("\\/", 1, true))
  end)

  it("reads token from file", function()
    local token_path = os.tmpname()
    -- With the byte order mark that some Windows editors write.
    write_file(token_path, "\239\187\191" .. emu.token .. "\n")

    local args = endpoint_args("replay.bin")
    table.insert(args, 1, token_path)
    table.insert(args, 1, "--token-file")
    local status, stdout = run_tool(args, nil)
    os.remove(token_path)

    assert.equal(0, status)
    assert.is_table(cjson.decode(stdout))
  end)

  describe("token file", function()
    local MAX_TOKEN_BYTES = 256 * 1024

    local function token_file_args(token_path)
      local args = endpoint_args("replay.bin")
      table.insert(args, 1, token_path)
      table.insert(args, 1, "--token-file")
      return args
    end

    it("rejects a file over the limit", function()
      local token_path = os.tmpname()
      write_file(token_path, ("t"):rep(MAX_TOKEN_BYTES + 1))
      local status, stdout, stderr = run_tool(token_file_args(token_path))
      os.remove(token_path)

      assert.equal(2, status)
      assert.equal("", stdout)
      assert.is_not_nil(stderr:find("token file " .. token_path
        .. " is larger than the maximum token size of 262144 bytes", 1, true),
        stderr)
      assert.equal(0, emu:stats().requests)
    end)

    it("rejects an endless file in bounded memory", function()
      -- Reading all of /dev/zero would exceed this limit of 256 MiB.
      local status, stdout, stderr = run_tool(token_file_args("/dev/zero"),
        nil, nil, 256 * 1024)

      assert.equal(2, status, stderr)
      assert.equal("", stdout)
      assert.is_not_nil(stderr:find("token file /dev/zero is larger than", 1,
        true), stderr)
      assert.equal(0, emu:stats().requests)
    end)

    for _, ending in ipairs{ "\n", "\r\n" } do
      it("accepts the limit plus " .. ending:gsub("\r", "CR "):gsub("\n", "LF"),
          function()
        local token_path = os.tmpname()
        write_file(token_path, ("t"):rep(MAX_TOKEN_BYTES) .. ending)
        local status, _, stderr = run_tool(token_file_args(token_path))
        os.remove(token_path)

        -- The tool sends the token, and the emulator rejects a header
        -- line of this length with HTTP 431.
        assert.equal(1, status, stderr)
        assert.is_nil(stderr:find("larger than", 1, true), stderr)
        assert.is_not_nil(stderr:find("Line too long", 1, true), stderr)
      end)
    end
  end)

  describe("AK/SK", function()
    local FAKE_WRONG_SK = "fake-wrong-sk-00000000000000000000000000"
    local profile_path = home .. "/.huaweicloud/credentials"

    after_each(function()
      os.remove(profile_path)
    end)

    local function write_profile(text)
      assert(run_command("mkdir -p -m 700 "
        .. shell_quote(home .. "/.huaweicloud")))
      write_file(profile_path, text)
    end

    local function key_variables(extra)
      local env = {
        HUAWEICLOUD_SDK_AK = emu.ak,
        HUAWEICLOUD_SDK_SK = emu.sk,
      }
      for name, value in pairs(extra or {}) do
        env[name] = value
      end
      return env
    end

    local function assert_signed_with(access_key)
      local request = emu:stats().last_request
      local prefix = "SDK-HMAC-SHA256 Access=" .. access_key .. ","
      assert.equal(prefix, request.headers.authorization:sub(1, #prefix))
      assert.is_nil(request.headers["x-auth-token"])
    end

    it("reads keys from environment", function()
      local status, stdout, stderr = run_tool(endpoint_args("replay.bin"),
        nil, key_variables())

      assert.equal(0, status, stderr)
      assert.equal("", stderr)
      assert.is_table(cjson.decode(stdout))
      assert.equal(1, emu:stats().requests)
      assert_signed_with(emu.ak)
    end)

    it("reads project id from environment", function()
      local status, stdout, stderr = run_tool({ "--endpoint", emu.url,
        "replay.bin" }, nil, key_variables({
          HUAWEICLOUD_SDK_PROJECT_ID = emu.project_id,
        }))

      assert.equal(0, status, stderr)
      assert.is_table(cjson.decode(stdout))
      assert.equal(emu.project_id,
        emu:stats().last_request.headers["x-project-id"])
    end)

    it("names the variable of a rejected project id", function()
      local status, _, stderr = run_tool({ "--endpoint", emu.url,
        "replay.bin" }, nil, key_variables({
          HUAWEICLOUD_SDK_PROJECT_ID = "a b",
        }))

      assert.equal(2, status)
      assert.matches("invalid project_id: .*%(the value comes from HUAWEICLOUD_SDK_PROJECT_ID%)", stderr)
      assert.equal(0, emu:stats().requests)
    end)

    it("reads temporary keys from environment", function()
      local _, first = run_tool(endpoint_args("first.bin"), nil,
        key_variables())
      local issued = cjson.decode(first).credential

      local status, stdout, stderr = run_tool(endpoint_args("second.bin"),
        nil, {
          HUAWEICLOUD_SDK_AK = issued.access,
          HUAWEICLOUD_SDK_SK = issued.secret,
          HUAWEICLOUD_SDK_SECURITY_TOKEN = issued.security_token,
        })

      assert.equal(0, status, stderr)
      assert.is_table(cjson.decode(stdout))
      assert.equal(2, emu:stats().requests)
      assert_signed_with(issued.access)
      assert.equal(issued.security_token,
        emu:stats().last_request.headers["x-security-token"])
    end)

    it("reads keys from profile file", function()
      write_profile(("[basic]\nak = %s\nsk = %s\nproject_id = %s\n")
        :format(emu.ak, emu.sk, emu.project_id))

      local status, stdout, stderr = run_tool({ "--endpoint", emu.url,
        "replay.bin" }, nil)

      assert.equal(0, status, stderr)
      assert.is_table(cjson.decode(stdout))
      assert.equal(1, emu:stats().requests)
      assert_signed_with(emu.ak)
    end)

    it("reads file named by variable", function()
      local named = home .. "/named-credentials"
      write_file(named, ("[basic]\nak = %s\nsk = %s\n"):format(emu.ak,
        emu.sk))

      local status, _, stderr = run_tool(endpoint_args("replay.bin"), nil,
        { HUAWEICLOUD_SDK_CREDENTIALS_FILE = named })
      os.remove(named)

      assert.equal(0, status, stderr)
      assert_signed_with(emu.ak)
    end)

    it("token wins over keys", function()
      local status, _, stderr = run_tool(endpoint_args("replay.bin"),
        emu.token, key_variables({ HUAWEICLOUD_SDK_SK = FAKE_WRONG_SK }))

      assert.equal(0, status, stderr)
      local headers = emu:stats().last_request.headers
      assert.equal(emu.token, headers["x-auth-token"])
      assert.is_nil(headers.authorization)
    end)

    it("wrong sk exits 1", function()
      local status, stdout, stderr = run_tool(endpoint_args("replay.bin"),
        nil, key_variables({ HUAWEICLOUD_SDK_SK = FAKE_WRONG_SK }))

      assert.equal(1, status)
      assert.equal("", stdout)
      assert.equal(1, count_lines(stderr))
      assert.is_not_nil(stderr:find("APIGW.0301", 1, true), stderr)
      assert.is_nil(stderr:find(FAKE_WRONG_SK, 1, true))
      assert.equal(1, emu:stats().requests)
    end)

    it("malformed profile file exits 2", function()
      write_profile("[basic]\nak = " .. emu.ak .. "\nsk " .. emu.sk .. "\n")

      local status, stdout, stderr = run_tool(endpoint_args("replay.bin"),
        nil)

      assert.equal(2, status)
      assert.equal("", stdout)
      assert.is_not_nil(stderr:find("invalid credentials file "
        .. profile_path .. ", line 3: expected 'key = value'", 1, true),
        stderr)
      assert.is_nil(stderr:find(emu.sk, 1, true))
      assert.is_not_nil(stderr:find("--help", 1, true))
      assert.equal(0, emu:stats().requests)
    end)

    it("missing named file exits 2", function()
      local missing = home .. "/no-such-credentials"

      local status, _, stderr = run_tool(endpoint_args("replay.bin"), nil,
        { HUAWEICLOUD_SDK_CREDENTIALS_FILE = missing })

      assert.equal(2, status)
      assert.is_not_nil(stderr:find("cannot open credentials file " .. missing
        .. " named by HUAWEICLOUD_SDK_CREDENTIALS_FILE", 1, true), stderr)
      assert.equal(0, emu:stats().requests)
    end)

    it("help names the sources", function()
      local status, stdout = run_tool({ "--help" }, nil)

      assert.equal(0, status)
      assert.is_not_nil(stdout:find("HUAWEICLOUD_SDK_AK", 1, true))
      assert.is_not_nil(stdout:find("HUAWEICLOUD_SDK_SECURITY_TOKEN", 1, true))
      assert.is_not_nil(stdout:find("HUAWEICLOUD_SDK_PROJECT_ID", 1, true))
      assert.is_not_nil(stdout:find("HUAWEICLOUD_SDK_CREDENTIALS_FILE", 1,
        true))
    end)
  end)

  it("accepts option=value form", function()
    local status = run_tool({
      "--endpoint=" .. emu.url, "--project-id=" .. emu.project_id,
      "--timeout-ms=5000", "replay.bin",
    }, emu.token)

    assert.equal(0, status)
  end)

  it("reads endpoint and project id variables", function()
    local status, stdout, stderr = run_tool({ "replay.bin" }, emu.token, {
      APPCENTER_ENDPOINT = emu.url,
      APPCENTER_PROJECT_ID = emu.project_id,
    })

    assert.equal(0, status, stderr)
    assert.is_table(cjson.decode(stdout))
    assert.matches("/v1/" .. emu.project_id .. "/", emu:stats().last_request.path, 1, true)
  end)

  it("options win over the variables", function()
    local status, _, stderr = run_tool(endpoint_args("replay.bin"), emu.token, {
      APPCENTER_ENDPOINT = "http://127.0.0.1:1",
      APPCENTER_PROJECT_ID = "ffffffffffffffffffffffffffffffff",
    })

    assert.equal(0, status, stderr)
    assert.matches("/v1/" .. emu.project_id .. "/", emu:stats().last_request.path, 1, true)
  end)

  it("runs from an install under any PREFIX", function()
    local prefix = make_directory()
    -- LUAS is set, because `make test LUAS=lua5.3` passes its LUAS on,
    -- and the tool needs the Lua 5.4 build.
    assert(run_command(("make -s install LUAS=lua5.4 PREFIX=%s >/dev/null 2>&1")
      :format(shell_quote(prefix))))
    -- From another folder and without LUA_PATH, so only the paths that
    -- the script derives from its own location can find the modules.
    local command = ("cd / && env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 "
      .. "-u LUA_CPATH_5_4 HOME=%s APPCENTER_TOKEN=%s %s/bin/appcenter-credential "
      .. "--endpoint %s --project-id %s replay.bin 2>&1; echo \"exit=$?\"")
      :format(shell_quote(home), shell_quote(emu.token), shell_quote(prefix),
        shell_quote(emu.url), shell_quote(emu.project_id))
    local pipe = assert(io.popen(command, "r"))
    local output = pipe:read("*a")
    pipe:close()
    run_command("rm -rf " .. shell_quote(prefix))

    local stdout, status = output:match("^(.-)exit=(%d+)\n$")
    assert.equal("0", status, output)
    assert.is_table(cjson.decode(stdout))
  end)

  it("rejects a directory as token file", function()
    local status, _, stderr = run_tool({ "--token-file", home,
      "--endpoint", emu.url, "--project-id", emu.project_id, "replay.bin" })

    assert.equal(2, status)
    assert.is_not_nil(stderr:find("Is a directory", 1, true), stderr)
    assert.is_nil(stderr:find("is empty", 1, true), stderr)
  end)

  it("checks --ca-file before any request", function()
    for _, ca_file in ipairs{ home .. "/missing.pem", "" } do
      local args = endpoint_args("replay.bin")
      table.insert(args, 1, ca_file)
      table.insert(args, 1, "--ca-file")
      local status, stdout, stderr = run_tool(args, emu.token)

      assert.equal(2, status, stderr)
      assert.equal("", stdout)
      assert.is_not_nil(stderr:find("--ca-file", 1, true), stderr)
    end
    assert.equal(0, emu:stats().requests)
  end)

  it("names an option given as a value", function()
    local status, _, stderr = run_tool({ "--endpoint", "--project-id",
      emu.project_id, "replay.bin" }, emu.token)

    assert.equal(2, status)
    assert.is_not_nil(stderr:find("option --endpoint requires a value, got the option --project-id",
      1, true), stderr)
  end)

  it("takes only digits for --timeout-ms", function()
    for _, value in ipairs{ "0x10", "1e3", " 100 ", "0", "86400001", "-5" } do
      local args = endpoint_args("replay.bin")
      table.insert(args, 1, value)
      table.insert(args, 1, "--timeout-ms")
      local status, _, stderr = run_tool(args, emu.token)

      assert.equal(2, status, value)
      assert.is_not_nil(stderr:find("invalid --timeout-ms", 1, true), stderr)
    end
    assert.equal(0, emu:stats().requests)
  end)

  it("suggests --allow-http for remote http", function()
    -- Rejected before any connection, so nothing leaves this machine.
    local status, _, stderr = run_tool({ "--endpoint", "http://example.invalid",
      "--project-id", emu.project_id, "replay.bin" }, emu.token)

    assert.equal(2, status)
    assert.is_not_nil(stderr:find("pass --allow-http", 1, true), stderr)
    assert.is_nil(stderr:find("allow_http = true", 1, true), stderr)
  end)

  it("accepts --allow-http", function()
    local args = endpoint_args("replay.bin")
    table.insert(args, 1, "--allow-http")
    local status, _, stderr = run_tool(args, emu.token)

    assert.equal(0, status, stderr)
  end)

  it("help exits 0", function()
    local status, stdout, stderr = run_tool({ "--help" }, nil)

    assert.equal(0, status)
    assert.equal("Usage: ", stdout:sub(1, 7))
    assert.equal("", stderr)
  end)

  describe("usage error", function()
    -- Returns a function that makes endpoint_args("replay.bin") with the
    -- words `...` added.
    local function args_with(...)
      local extra = { ... }
      return function()
        local args = endpoint_args("replay.bin")
        for _, word in ipairs(extra) do
          args[#args + 1] = word
        end
        return args
      end
    end

    local cases = {
      { "missing credentials", endpoint_args, nil,
        "missing credentials: set APPCENTER_TOKEN or pass --token-file PATH,"
          .. " or set HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK, or add ak and"
          .. " sk to section [basic] of " .. home
          .. "/.huaweicloud/credentials" },
      { "missing file name", function()
          return { "--endpoint", emu.url, "--project-id", emu.project_id }
        end, "token", "missing FILE_NAME" },
      { "two file names", function()
          local args = endpoint_args("a.bin")
          args[#args + 1] = "b.bin"
          return args
        end, "token", "expected one FILE_NAME, got 2" },
      { "missing project id", function()
          return { "--endpoint", emu.url, "replay.bin" }
        end, "token", "missing project_id: pass --project-id ID or set"
          .. " APPCENTER_PROJECT_ID, or set HUAWEICLOUD_SDK_PROJECT_ID" },
      { "value for a flag", args_with("--help=x"), "token",
        "option --help takes no value" },
      { "unknown option", args_with("--verbose"), "token",
        "unknown option --verbose" },
      { "misspelt option", args_with("--projectid", "x"), "token",
        "unknown option --projectid (did you mean --project-id?)" },
      { "option without unit", args_with("--timeout=5"), "token",
        "unknown option --timeout (did you mean --timeout-ms?)" },
      { "invalid timeout", args_with("--timeout-ms", "soon"), "token",
        "invalid --timeout-ms 'soon'" },
      { "missing option value", args_with("--ca-file"), "token",
        "option --ca-file requires a value" },
      { "unreadable token file",
        args_with("--token-file", "/nonexistent/token"), nil,
        "cannot read token file" },
      { "invalid endpoint", function()
          return { "--endpoint", "ftp://127.0.0.1", "--project-id",
            emu.project_id, "replay.bin" }
        end, "token", "invalid endpoint" },
    }

    for _, case in ipairs(cases) do
      local name, make_args, token, expected = case[1], case[2], case[3],
        case[4]

      it(name .. " exits 2", function()
        local status, stdout, stderr = run_tool(make_args("replay.bin"),
          token and emu.token)

        assert.equal(2, status)
        assert.equal("", stdout)
        assert.is_not_nil(stderr:find(expected, 1, true), stderr)
        assert.is_not_nil(stderr:find("--help", 1, true), stderr)
        assert.equal(0, emu:stats().requests)
      end)
    end
  end)

  it("rejects an empty APPCENTER_TOKEN", function()
    local status, stdout, stderr = run_tool(endpoint_args("replay.bin"), " ")

    assert.equal(2, status)
    assert.equal("", stdout)
    assert.is_not_nil(stderr:find("APPCENTER_TOKEN is set but empty; set it "
      .. "to the token, or unset it to use an access key", 1, true), stderr)
    assert.equal(0, emu:stats().requests)
  end)

  it("API error exits 1", function()
    local status, stdout, stderr = run_tool(endpoint_args("replay.bin"),
      "wrong-token")

    assert.equal(1, status)
    assert.equal("", stdout)
    assert.equal(1, count_lines(stderr))
    assert.equal("appcenter-credential: http APIGW.0307: ", stderr:sub(1, 39))
    assert.is_not_nil(stderr:find("APIGW.0307", 1, true), stderr)
    assert.is_nil(stderr:find("wrong-token", 1, true))
  end)

  it("rejects --token with advice", function()
    local args = endpoint_args("replay.bin")
    table.insert(args, 1, "--token=fake-token-on-command-line")
    local status, stdout, stderr = run_tool(args, emu.token)

    assert.equal(2, status)
    assert.equal("", stdout)
    assert.is_not_nil(stderr:find("--token-file", 1, true), stderr)
    assert.is_not_nil(stderr:find("APPCENTER_TOKEN", 1, true), stderr)
    assert.equal(0, emu:stats().requests)
  end)

  it("invalid file name exits 2", function()
    local status, stdout, stderr = run_tool(endpoint_args("bad:name.bin"),
      emu.token)

    assert.equal(2, status)
    assert.equal("", stdout)
    assert.is_not_nil(stderr:find("invalid_argument", 1, true), stderr)
    assert.equal(0, emu:stats().requests)
  end)

  it("logs retries on stderr", function()
    emu:fault{ status = 503, times = 1,
      body = '{"error_code":"WKS.0503","error_msg":"unavailable"}' }

    local status, stdout, stderr = run_tool(endpoint_args("replay.bin"),
      emu.token)

    assert.equal(0, status)
    assert.is_table(cjson.decode(stdout))
    assert.equal(1, count_lines(stderr))
    assert.is_not_nil(stderr:find("attempt 1 failed", 1, true), stderr)
    assert.equal(2, emu:stats().requests)
  end)

  describe("--upload", function()
    local directory, upload_path

    setup(function()
      directory = make_directory()
      upload_path = directory .. "/replay 01.bin"
      write_file(upload_path, ("replay data\n"):rep(20000))
    end)

    teardown(function()
      run_command("rm -rf " .. shell_quote(directory))
    end)

    local function upload_args(path)
      return { "--endpoint", emu.url, "--project-id", emu.project_id,
        "--upload", path }
    end

    local function sha256(path)
      local pipe = assert(io.popen("sha256sum " .. shell_quote(path), "r"))
      local output = pipe:read("*a")
      pipe:close()
      return output:match("^(%x+)")
    end

    it("uploads the file and prints where it landed", function()
      local status, stdout, stderr = run_tool(upload_args(upload_path),
        emu.token)

      assert.equal(0, status)
      assert.equal("", stderr)
      local landed = cjson.decode(stdout)
      assert.equal(emulator.BUCKET_NAME, landed.bucket_name)
      assert.matches("^app%-file/%x+/replay 01%.bin$", landed.object_path)
      assert.matches("^http://appcenter%-emulator%-bucket%.localhost:%d+/"
        .. "app%-file/%x+/replay%%2001%.bin$", landed.url)
      assert.matches('^"%x+"$', landed.etag)
      assert.is_string(landed.request_id)
      assert.equal(240000, landed.bytes)
      assert.equal(upload_path, landed.file)
      assert.is_nil(landed.credential)
      local object = emu:object(landed.bucket_name, landed.object_path)
      assert.equal(240000, object.size)
      assert.equal(sha256(upload_path), object.sha256)
    end)

    it("replaces the bytes of a path that is not UTF-8", function()
      local odd_directory = directory .. "/d\255"
      assert(run_command("mkdir -p " .. shell_quote(odd_directory)))
      write_file(odd_directory .. "/odd.bin", "odd")

      local status, stdout = run_tool(upload_args(odd_directory .. "/odd.bin"),
        emu.token)

      assert.equal(0, status)
      assert.equal(directory .. "/d?/odd.bin", cjson.decode(stdout).file)
    end)

    it("draws a progress bar on a terminal", function()
      -- script(1) from util-linux runs the tool with a pseudo-terminal as
      -- standard error and copies what it writes there to a log file.
      local output_path = directory .. "/landed.json"
      local log_path = directory .. "/terminal.log"
      local words = { "env", "HOME=" .. shell_quote(home),
        "APPCENTER_TOKEN=" .. shell_quote(emu.token), TOOL }
      for _, value in ipairs(upload_args(upload_path)) do
        words[#words + 1] = shell_quote(value)
      end
      local command = table.concat(words, " ") .. " >" .. shell_quote(output_path)
      assert.is_true(run_command("script -qec " .. shell_quote(command) .. " "
        .. shell_quote(log_path) .. " >/dev/null 2>&1 </dev/null"))

      local terminal = read_file(log_path)
      assert.is_not_nil(terminal:find("\r[" .. ("#"):rep(30) .. "] 100% 234.4 / 234.4 KiB",
        1, true), terminal)
      assert.is_table(cjson.decode(read_file(output_path)))
    end)

    it("logs an upload retry and succeeds", function()
      emu:fault{ target = "obs", status = 503 }
      local status, stdout, stderr = run_tool(upload_args(upload_path),
        emu.token)

      assert.equal(0, status)
      assert.equal(2, cjson.decode(stdout).attempts)
      assert.equal(1, count_lines(stderr))
      assert.is_not_nil(stderr:find("ServiceUnavailable", 1, true), stderr)
    end)

    it("upload error exits 1", function()
      emu:fault{ target = "obs", status = 403 }
      local status, stdout, stderr = run_tool(upload_args(upload_path),
        emu.token)

      assert.equal(1, status)
      assert.equal("", stdout)
      assert.equal(1, count_lines(stderr))
      assert.is_not_nil(stderr:find("http AccessDenied", 1, true), stderr)
    end)

    it("missing file exits 2 before any request", function()
      local status, stdout, stderr = run_tool(
        upload_args(directory .. "/missing.bin"), emu.token)

      assert.equal(2, status)
      assert.equal("", stdout)
      assert.is_not_nil(stderr:find("--upload: invalid path", 1, true), stderr)
      assert.is_not_nil(stderr:find("No such file or directory", 1, true), stderr)
      assert.equal(0, emu:stats().requests)
    end)

    it("FIFO exits 2 without waiting", function()
      local fifo = directory .. "/upload.fifo"
      assert(os.execute("mkfifo " .. shell_quote(fifo)))
      -- A writer that opens the FIFO after 3 s bounds a blocking open.
      os.execute(("(sleep 3; : > %s) >/dev/null 2>&1 &"):format(shell_quote(fifo)))
      local started = os.time()
      local status, _, stderr = run_tool(upload_args(fifo), emu.token)

      assert.equal(2, status)
      assert.is_not_nil(stderr:find("not a regular file", 1, true), stderr)
      assert.is_true(os.time() - started < 3, "the tool waited for a writer")
      assert.equal(0, emu:stats().requests)
    end)

    it("FILE_NAME with --upload exits 2", function()
      local args = upload_args(upload_path)
      args[#args + 1] = "other.bin"
      local status, _, stderr = run_tool(args, emu.token)

      assert.equal(2, status)
      assert.is_not_nil(stderr:find("FILE_NAME must not be given", 1, true), stderr)
    end)
  end)

  describe("over TLS", function()
    local tls_emu

    setup(function()
      local cert_path, key_path = emulator.make_certificate()
      tls_emu = emulator.start{ tls_cert = cert_path, tls_key = key_path }
    end)

    teardown(function()
      tls_emu:stop()
    end)

    local function tls_args(...)
      local args = { "--endpoint", tls_emu.url, "--project-id",
        tls_emu.project_id }
      for _, value in ipairs{ ... } do
        args[#args + 1] = value
      end
      args[#args + 1] = "replay.bin"
      return args
    end

    it("trusts --ca-file", function()
      local status, stdout = run_tool(tls_args("--ca-file", tls_emu.tls_cert),
        tls_emu.token)

      assert.equal(0, status)
      assert.is_table(cjson.decode(stdout))
    end)

    it("rejects untrusted certificate", function()
      local status, stdout, stderr = run_tool(tls_args(), tls_emu.token)

      assert.equal(1, status)
      assert.equal("", stdout)
      assert.is_not_nil(stderr:find(": tls: ", 1, true), stderr)
      assert.equal(1, count_lines(stderr))
    end)

    it("--insecure skips verification", function()
      local status, stdout, stderr = run_tool(tls_args("--insecure"), tls_emu.token)

      assert.equal(0, status)
      assert.is_table(cjson.decode(stdout))
      assert.equal("appcenter-credential: warning: --insecure turns TLS verification off, so "
        .. "anyone on the network path can read the token and the credential; use --ca-file "
        .. "for a private CA\n", stderr)
    end)
  end)
end)
