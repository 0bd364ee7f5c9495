-- Credential sources of the wrapper (appcenter/credentials.lua): the
-- environment variables, the profile file, their precedence and their
-- errors. Most tests replace credentials.getenv with a table lookup,
-- because Lua cannot set environment variables. The tests under "real
-- environment" run a Lua subprocess with real variables.

local appcenter = require("appcenter")
local credentials = require("appcenter.credentials")
local emulator = require("spec.support.emulator")

local FAKE_AK = "FAKEAKFROMSPEC000001"
local FAKE_SK = "fake-sk-from-spec-do-not-print-0000000000"
local FAKE_SECURITY_TOKEN = "fake-security-token-from-spec-do-not-print"
local FAKE_PROJECT_ID = "fakeprojectidfromspec000000000001"

-- Variables that the wrapper reads. Subprocesses run with all of them
-- unset unless a test sets one, so the caller's environment cannot change
-- a result.
local SOURCE_VARIABLES = {
  "HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK",
  "HUAWEICLOUD_SDK_SECURITY_TOKEN", "HUAWEICLOUD_SDK_PROJECT_ID",
  "HUAWEICLOUD_SDK_CREDENTIALS_FILE",
}

local subprocess = require("spec.support.subprocess")
local shell_quote = subprocess.shell_quote

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

local function remove_tree(path)
  assert(path:match("^/tmp/"), "refusing to remove " .. path)
  run_command("rm -rf " .. shell_quote(path))
end

local write_file = subprocess.write_file
local read_file = subprocess.read_file

-- Runs `script` in a new Lua process with the variables in
-- SOURCE_VARIABLES unset, HOME set to `home` and the variables in `env`
-- set. Returns the exit status, stdout and stderr.
local function run_lua(script, home, env)
  return subprocess.run_lua(script, SOURCE_VARIABLES, home, env)
end

-- Asserts that neither the message nor tostring(err) contains a secret.
local function assert_no_secret(err, ...)
  for _, secret in ipairs{ ... } do
    assert.is_nil(err.message:find(secret, 1, true), err.message)
    assert.is_nil(tostring(err):find(secret, 1, true), tostring(err))
  end
end


describe("credentials", function()
  local original_getenv = credentials.getenv
  local original_max_file_bytes = credentials.MAX_FILE_BYTES
  local env
  local home
  local profile_path
  local emu

  -- Writes the default profile file under the fake HOME.
  local function write_profile(text)
    run_command("mkdir -p -m 700 " .. shell_quote(home .. "/.huaweicloud"))
    write_file(profile_path, text)
  end

  local function basic_profile(extra)
    return "[basic]\nak = " .. FAKE_AK .. "\nsk = " .. FAKE_SK .. "\n"
      .. (extra or "")
  end

  setup(function()
    home = make_directory()
    profile_path = home .. "/.huaweicloud/credentials"
    emu = emulator.start()
  end)

  teardown(function()
    emu:stop()
    remove_tree(home)
  end)

  before_each(function()
    env = { HOME = home }
    credentials.getenv = function(name)
      return env[name]
    end
  end)

  after_each(function()
    credentials.getenv = original_getenv
    credentials.MAX_FILE_BYTES = original_max_file_bytes
    os.remove(profile_path)
  end)

  describe("environment", function()
    it("provides ak and sk", function()
      env.HUAWEICLOUD_SDK_AK = FAKE_AK
      env.HUAWEICLOUD_SDK_SK = FAKE_SK

      local opts = assert(credentials.resolve({ project_id = "p" }))

      assert.equal(FAKE_AK, opts.ak)
      assert.equal(FAKE_SK, opts.sk)
      assert.is_nil(opts.security_token)
      assert.is_nil(opts.token)
    end)

    it("provides security token with keys", function()
      env.HUAWEICLOUD_SDK_AK = FAKE_AK
      env.HUAWEICLOUD_SDK_SK = FAKE_SK
      env.HUAWEICLOUD_SDK_SECURITY_TOKEN = FAKE_SECURITY_TOKEN

      local opts = assert(credentials.resolve({ project_id = "p" }))

      assert.equal(FAKE_SECURITY_TOKEN, opts.security_token)
    end)

    it("provides project_id", function()
      env.HUAWEICLOUD_SDK_PROJECT_ID = FAKE_PROJECT_ID

      local opts = assert(credentials.resolve({ token = "fake-token" }))

      assert.equal(FAKE_PROJECT_ID, opts.project_id)
      assert.equal("fake-token", opts.token)
    end)

    it("rejects white space in a key", function()
      env.HUAWEICLOUD_SDK_AK = FAKE_AK
      env.HUAWEICLOUD_SDK_SK = FAKE_SK .. " x"

      local opts, err = credentials.resolve({ project_id = "p" })

      assert.is_nil(opts)
      assert.equal("invalid_argument", err.kind)
      assert.equal("invalid environment: HUAWEICLOUD_SDK_SK contains white "
        .. "space; remove it", err.message)
      assert_no_secret(err, FAKE_SK)
    end)

    it("treats empty variables as unset", function()
      env.HUAWEICLOUD_SDK_AK = ""
      env.HUAWEICLOUD_SDK_SK = ""
      env.HUAWEICLOUD_SDK_SECURITY_TOKEN = ""
      write_profile(basic_profile())

      local opts = assert(credentials.resolve({ project_id = "p" }))

      assert.equal(FAKE_AK, opts.ak)
      assert.is_nil(opts.security_token)
    end)

    local pair_errors = {
      { "ak without sk", { HUAWEICLOUD_SDK_AK = FAKE_AK },
        "HUAWEICLOUD_SDK_AK is set but HUAWEICLOUD_SDK_SK is not" },
      { "sk without ak", { HUAWEICLOUD_SDK_SK = FAKE_SK },
        "HUAWEICLOUD_SDK_SK is set but HUAWEICLOUD_SDK_AK is not" },
      { "security token without keys",
        { HUAWEICLOUD_SDK_SECURITY_TOKEN = FAKE_SECURITY_TOKEN },
        "HUAWEICLOUD_SDK_SECURITY_TOKEN is set but HUAWEICLOUD_SDK_AK and"
          .. " HUAWEICLOUD_SDK_SK are not" },
      { "line break in sk", { HUAWEICLOUD_SDK_AK = FAKE_AK,
          HUAWEICLOUD_SDK_SK = FAKE_SK .. "\n" },
        "HUAWEICLOUD_SDK_SK contains a control character" },
      { "line break in project_id",
        { HUAWEICLOUD_SDK_PROJECT_ID = FAKE_PROJECT_ID .. "\r\n" },
        "HUAWEICLOUD_SDK_PROJECT_ID contains a control character" },
    }
    for _, case in ipairs(pair_errors) do
      local name, variables, expected = case[1], case[2], case[3]

      it(name .. " is an error", function()
        for variable, value in pairs(variables) do
          env[variable] = value
        end
        -- A valid profile file must not hide the error.
        write_profile(basic_profile("project_id = p\n"))

        local opts, err = credentials.resolve({})

        assert.is_nil(opts)
        assert.equal("invalid_argument", err.kind)
        assert.is_false(err.retryable)
        assert.is_not_nil(err.message:find(expected, 1, true), err.message)
        assert_no_secret(err, FAKE_SK, FAKE_SECURITY_TOKEN)
      end)
    end
  end)

  describe("profile file", function()
    it("is read from HOME", function()
      write_profile(basic_profile("project_id = " .. FAKE_PROJECT_ID .. "\n"
        .. "security_token = " .. FAKE_SECURITY_TOKEN .. "\n"))

      local opts = assert(credentials.resolve({}))

      assert.equal(FAKE_AK, opts.ak)
      assert.equal(FAKE_SK, opts.sk)
      assert.equal(FAKE_SECURITY_TOKEN, opts.security_token)
      assert.equal(FAKE_PROJECT_ID, opts.project_id)
    end)

    it("variable names another file", function()
      write_profile("[basic]\nak = FAKEAKDEFAULTFILE0001\nsk = other\n")
      local named = home .. "/named-credentials"
      write_file(named, basic_profile("project_id = named\n"))
      env.HUAWEICLOUD_SDK_CREDENTIALS_FILE = named

      local opts = assert(credentials.resolve({}))
      os.remove(named)

      assert.equal(FAKE_AK, opts.ak)
      assert.equal("named", opts.project_id)
    end)

    it("accepts INI syntax variants", function()
      write_profile(table.concat({
        "\239\187\191# comment",
        "; another comment",
        "",
        "  [ basic ]  ",
        "AK=" .. FAKE_AK .. "\r",
        "\tSk   =   fake=sk#not-a-comment  ",
        "project_id =",
        "domain_id = fake-domain",
        "[other]",
        "ak = FAKEAKOTHERSECTION01",
      }, "\n"))

      local opts = assert(credentials.resolve({ project_id = "p" }))
      assert.equal(FAKE_AK, opts.ak)
      assert.equal("fake=sk#not-a-comment", opts.sk)

      -- The empty project_id counts as unset.
      local _, err = credentials.resolve({ token = "fake-token" })
      assert.is_not_nil(err.message:find("missing project_id", 1, true))
    end)

    it("parses sections and line numbers", function()
      local sections = assert(credentials.parse_profile(
        "[basic]\nak = A\n\n[other]\nkey = value", "P"))

      assert.same({ value = "A", line = 2 }, sections.basic.ak)
      assert.same({ value = "value", line = 5 }, sections.other.key)
    end)

    it("parses long runs of blanks", function()
      -- Runs of blanks inside lines, 1 MB in all. A trim that backtracks
      -- over each run takes about ten minutes on them (estimated from 9.6 s
      -- for one run of 60,000 blanks), so the process gets a minute.
      local script = [[
        local credentials = require("appcenter.credentials")
        local run = (" \t"):rep(100 * 1000)
        local text = "[basic]\n# note" .. run .. "x\nak = A" .. run .. "B" .. run
          .. "\n[ s" .. run .. "t ]\nk" .. run .. "y = v\n"
        local sections = assert(credentials.parse_profile(text, "P"))
        assert(sections.basic.ak.value == "A" .. run .. "B")
        assert(sections["s" .. run .. "t"]["k" .. run .. "y"].value == "v")
        io.write("parsed")
      ]]

      local status, stdout, stderr = subprocess.run_lua(script, SOURCE_VARIABLES, home, nil, nil, 60)

      assert.equal(0, status, stderr)
      assert.equal("parsed", stdout)
    end)

    it("missing default file counts as empty", function()
      local opts, err = credentials.resolve({ project_id = "p" })

      assert.is_nil(opts)
      assert.equal("invalid_argument", err.kind)
      assert.equal("missing credentials: pass token, or ak and sk, or set"
        .. " HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK, or add ak and sk to"
        .. " section [basic] of " .. profile_path, err.message)
    end)

    it("names a missing [basic] section and its case", function()
      write_profile("[Basic]\nak = " .. FAKE_AK .. "\nsk = " .. FAKE_SK .. "\n")

      local _, err = credentials.resolve({ project_id = "p" })

      assert.equal("missing credentials: pass token, or ak and sk, or set"
        .. " HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK, or add ak and sk to"
        .. " section [basic] of " .. profile_path .. " (the file has no"
        .. " section [basic] (section names are case-sensitive, and it has"
        .. " [Basic]))", err.message)
    end)

    it("names a missing [basic] section in the project_id message", function()
      env.HUAWEICLOUD_SDK_AK = FAKE_AK
      env.HUAWEICLOUD_SDK_SK = FAKE_SK
      write_profile("[other]\nproject_id = p\n")

      local _, err = credentials.resolve({})

      assert.equal("missing project_id: pass project_id, or set"
        .. " HUAWEICLOUD_SDK_PROJECT_ID, or add project_id to section"
        .. " [basic] of " .. profile_path .. " (the file has no section"
        .. " [basic])", err.message)
    end)

    it("says inside nginx that nginx clears the environment", function()
      local saved_ngx = rawget(_G, "ngx")
      _G.ngx = { config = {} }
      local ok, _, err = pcall(credentials.resolve, { project_id = "p" })
      _G.ngx = saved_ngx

      local advice = "; inside nginx, keep the variables you use with `env`"
        .. " lines in the main context of nginx.conf (`env HUAWEICLOUD_SDK_AK;`,"
        .. " `env HUAWEICLOUD_SDK_SK;`, `env HUAWEICLOUD_SDK_SECURITY_TOKEN;`,"
        .. " `env HUAWEICLOUD_SDK_CREDENTIALS_FILE;`, `env HOME;`), because"
        .. " nginx clears its workers' environment"
      assert.is_true(ok)
      assert.equal(advice, err.message:sub(-#advice))
    end)

    it("names the project id variable inside nginx", function()
      env.HUAWEICLOUD_SDK_AK = FAKE_AK
      env.HUAWEICLOUD_SDK_SK = FAKE_SK
      local saved_ngx = rawget(_G, "ngx")
      _G.ngx = { config = {} }
      local ok, _, err = pcall(credentials.resolve, {})
      _G.ngx = saved_ngx

      assert.is_true(ok)
      assert.matches("(`env HUAWEICLOUD_SDK_PROJECT_ID;`, "
        .. "`env HUAWEICLOUD_SDK_CREDENTIALS_FILE;`, `env HOME;`)",
        err.message, 1, true)
    end)

    it("missing default file with keys from environment", function()
      env.HUAWEICLOUD_SDK_AK = FAKE_AK
      env.HUAWEICLOUD_SDK_SK = FAKE_SK

      local _, err = credentials.resolve({})

      assert.equal("missing project_id: pass project_id, or set"
        .. " HUAWEICLOUD_SDK_PROJECT_ID, or add project_id to section"
        .. " [basic] of " .. profile_path, err.message)
    end)

    it("missing named file is an error", function()
      env.HUAWEICLOUD_SDK_CREDENTIALS_FILE = home .. "/no-such-file"

      local opts, err = credentials.resolve({ project_id = "p" })

      assert.is_nil(opts)
      assert.equal("invalid_argument", err.kind)
      assert.is_not_nil(err.message:find(home .. "/no-such-file", 1, true))
      assert.is_not_nil(err.message:find("HUAWEICLOUD_SDK_CREDENTIALS_FILE",
        1, true))
      assert.is_not_nil(err.message:find("No such file", 1, true),
        err.message)
    end)

    it("directory is an error", function()
      env.HUAWEICLOUD_SDK_CREDENTIALS_FILE = home

      local opts, err = credentials.resolve({ project_id = "p" })

      assert.is_nil(opts)
      assert.is_not_nil(err.message:find("cannot read credentials file "
        .. home, 1, true), err.message)
    end)

    it("oversized file is an error", function()
      credentials.MAX_FILE_BYTES = 16
      write_profile(basic_profile())

      local opts, err = credentials.resolve({ project_id = "p" })

      assert.is_nil(opts)
      assert.is_not_nil(err.message:find("larger than 16 bytes", 1, true),
        err.message)
    end)

    it("HOME unset names the variable", function()
      env.HOME = nil

      local opts, err = credentials.resolve({ project_id = "p" })

      assert.is_nil(opts)
      assert.is_not_nil(err.message:find(
        "set HUAWEICLOUD_SDK_CREDENTIALS_FILE to a file", 1, true),
        err.message)
      assert.is_not_nil(err.message:find("(HOME is not set, so "
        .. "~/.huaweicloud/credentials was not read)", 1, true), err.message)
    end)

    it("is not read when not needed", function()
      write_profile("not an INI file\n")
      env.HUAWEICLOUD_SDK_AK = FAKE_AK
      env.HUAWEICLOUD_SDK_SK = FAKE_SK
      env.HUAWEICLOUD_SDK_PROJECT_ID = FAKE_PROJECT_ID

      assert.is_table(credentials.resolve({}))
      assert.is_table(credentials.resolve({ token = "t", project_id = "p" }))
    end)

    local key_errors = {
      { "ak without sk", "[basic]\nproject_id = p\nak = " .. FAKE_AK .. "\n",
        "line 3: ak is set but sk is not" },
      { "sk without ak", "[basic]\nsk = " .. FAKE_SK .. "\n",
        "line 2: sk is set but ak is not" },
      { "security token without keys",
        "[basic]\n\nsecurity_token = " .. FAKE_SECURITY_TOKEN .. "\n",
        "line 3: security_token is set but ak and sk are not" },
      { "tab in sk", "[basic]\nak = A\nsk = " .. FAKE_SK .. "\tx\n",
        "line 3: sk contains a control character" },
    }
    for _, case in ipairs(key_errors) do
      local name, text, expected = case[1], case[2], case[3]

      it(name .. " is an error", function()
        write_profile(text)

        local opts, err = credentials.resolve({ project_id = "p" })

        assert.is_nil(opts)
        assert.equal("invalid_argument", err.kind)
        assert.is_not_nil(err.message:find("invalid credentials file "
          .. profile_path .. ", " .. expected, 1, true), err.message)
        assert_no_secret(err, FAKE_SK, FAKE_SECURITY_TOKEN)
      end)
    end
  end)

  describe("malformed file", function()
    local cases = {
      { "line outside a section", "ak = A\n[basic]\n", 1,
        "'key = value' line before any [section] header" },
      { "missing '='", "[basic]\nak = A\nsk " .. FAKE_SK .. "\n", 3,
        "expected 'key = value' but found no '='" },
      { "unterminated section header", "# c\n[basic\nak = A\n", 2,
        "section header has no closing ']'" },
      { "duplicate key", "[basic]\nsk = " .. FAKE_SK .. "\nak = A\nSK = B\n",
        4, "duplicate key 'sk' in section [basic], first set on line 2" },
      { "duplicate unknown key", "[basic]\nsecurity_token = AAAA\n"
          .. "fake-wrapped-part==\nfake-wrapped-part==\n", 4,
        "duplicate key in section [basic], first set on line 3" },
      { "duplicate section", "[basic]\nak = A\n[basic]\n", 3,
        "duplicate section [basic], first opened on line 1" },
      { "text after section header", "[basic] ak = A\n", 1,
        "unexpected text after the section header's ']'" },
      { "empty section name", "[ ]\n", 1, "empty section name" },
      { "missing key", "[basic]\n= " .. FAKE_SK .. "\n", 2,
        "missing key before '='" },
      { "comment after a key", "[basic]\nak = " .. FAKE_AK .. "\nsk = "
          .. FAKE_SK .. " # the test key\n", 3,
        "sk contains white space; remove it; the credentials file has no "
          .. "comments after a value, so put the comment on a line of its own" },
      { "space inside a key", "[basic]\nak = FAKE AK\nsk = " .. FAKE_SK
          .. "\n", 2, "ak contains white space; remove it" },
      { "quoted key", "[basic]\nak = " .. FAKE_AK .. "\nsk = '" .. FAKE_SK .. "'\n", 3,
        "sk is in quotes; remove them, since the value is used as written" },
    }

    for _, case in ipairs{
      { "UTF-16 text", "\255\254[\0b\0]\0\n\0", "it is UTF-16 text; save it as UTF-8" },
      { "UTF-16 without BOM", "[\0b\0]\0\n\0", "it is UTF-16 text; save it as UTF-8" },
      { "UTF-16 from a non-ASCII character", "\45\78\n\0", "it is UTF-16 text; save it as UTF-8" },
      { "CR line ends", "[basic]\rak = A\rsk = B\r", "its lines end in CR alone; save it with "
        .. "LF or CR LF line ends" },
    } do
      it(case[1] .. " is named", function()
        write_profile(case[2])

        local _, err = credentials.resolve({})

        assert.equal("invalid_argument", err.kind)
        assert.equal(("invalid credentials file %s: %s"):format(profile_path, case[3]), err.message)
      end)
    end

    it("ignores a NUL byte in another section", function()
      write_profile(basic_profile("[other]\nnote = a\0b\n"))

      local opts = assert(credentials.resolve({ project_id = "p" }))

      assert.equal(FAKE_AK, opts.ak)
    end)

    it("names the variable of an unreadable file", function()
      env.HUAWEICLOUD_SDK_CREDENTIALS_FILE = home

      local _, err = credentials.resolve({})

      assert.equal("invalid_argument", err.kind)
      assert.matches("^cannot read credentials file " .. home:gsub("%p", "%%%0")
        .. " named by HUAWEICLOUD_SDK_CREDENTIALS_FILE: ", err.message)
    end)

    it("names a quoted project id", function()
      write_profile(basic_profile('project_id = "p"\n'))

      local _, err = credentials.resolve({})

      assert.equal(("invalid credentials file %s, line 4: project_id is in quotes; remove them, "
        .. "since the value is used as written"):format(profile_path), err.message)
    end)

    it("names a quoted variable", function()
      env.HUAWEICLOUD_SDK_AK = '"' .. FAKE_AK .. '"'
      env.HUAWEICLOUD_SDK_SK = FAKE_SK

      local _, err = credentials.resolve({ project_id = "p" })

      assert.equal("invalid environment: HUAWEICLOUD_SDK_AK is in quotes; remove them, since "
        .. "the value is used as written", err.message)
    end)

    for _, case in ipairs(cases) do
      local name, text, line, expected = case[1], case[2], case[3], case[4]

      it(name .. " names file and line", function()
        write_profile(text)

        local opts, err = credentials.resolve({ project_id = "p" })

        assert.is_nil(opts)
        assert.equal("invalid_argument", err.kind)
        assert.equal("invalid_argument", err.code)
        assert.is_false(err.retryable)
        local prefix = ("invalid credentials file %s, line %d: ")
          :format(profile_path, line)
        assert.equal(prefix .. expected, err.message)
        assert.equal("appcenter: invalid_argument: " .. err.message,
          tostring(err))
        assert_no_secret(err, FAKE_SK, "fake-wrapped-part")
      end)
    end

    it("returns error from appcenter.new", function()
      write_profile("[basic]\nak\n")

      local client, err = appcenter.new({ endpoint = "http://127.0.0.1:1" })

      assert.is_nil(client)
      assert.equal("invalid_argument", err.kind)
      assert.is_not_nil(err.message:find(profile_path .. ", line 2", 1, true),
        err.message)
    end)
  end)

  describe("precedence", function()
    before_each(function()
      env.HUAWEICLOUD_SDK_AK = "FAKEAKFROMENVIRONMENT"
      env.HUAWEICLOUD_SDK_SK = "fake-sk-from-environment"
      env.HUAWEICLOUD_SDK_PROJECT_ID = "project-from-environment"
      write_profile("[basic]\nak = FAKEAKFROMPROFILEFILE\n"
        .. "sk = fake-sk-from-profile-file\n"
        .. "security_token = fake-security-token-from-profile-file\n"
        .. "project_id = project-from-profile-file\n")
    end)

    it("token option wins over keys", function()
      local opts = assert(credentials.resolve({ token = "fake-token" }))

      assert.equal("fake-token", opts.token)
      assert.is_nil(opts.ak)
      assert.is_nil(opts.sk)
      assert.is_nil(opts.security_token)
      assert.equal("project-from-environment", opts.project_id)
    end)

    it("ak and sk options win", function()
      local opts = assert(credentials.resolve({ ak = "FAKEAKOPTION", sk = "s" }))

      assert.equal("FAKEAKOPTION", opts.ak)
      assert.equal("s", opts.sk)
      assert.is_nil(opts.security_token)
    end)

    it("partial key options are kept as given", function()
      local opts = assert(credentials.resolve({ security_token = "st" }))
      assert.is_nil(opts.ak)
      assert.is_nil(opts.sk)

      opts = assert(credentials.resolve({ ak = "FAKEAKOPTION" }))
      assert.is_nil(opts.sk)
    end)

    it("core rejects partial key options", function()
      local client, err = appcenter.new({ endpoint = "http://127.0.0.1:1",
        security_token = "fake-st" })

      assert.is_nil(client)
      assert.is_not_nil(err.message:find("security_token needs ak and sk", 1,
        true), err.message)
    end)

    it("environment wins over profile file", function()
      local opts = assert(credentials.resolve({}))

      assert.equal("FAKEAKFROMENVIRONMENT", opts.ak)
      assert.equal("fake-sk-from-environment", opts.sk)
      assert.equal("project-from-environment", opts.project_id)
    end)

    it("never mixes keys of two sources", function()
      -- The profile file's security token belongs to its own ak.
      local opts = assert(credentials.resolve({}))

      assert.is_nil(opts.security_token)
    end)

    it("project_id option wins", function()
      local opts = assert(credentials.resolve({ project_id = "option" }))

      assert.equal("option", opts.project_id)
      assert.equal("FAKEAKFROMENVIRONMENT", opts.ak)
    end)

    it("empty project_id option is kept", function()
      local opts = assert(credentials.resolve({ project_id = "" }))

      assert.equal("", opts.project_id)
    end)

    it("project_id comes from its own source", function()
      env.HUAWEICLOUD_SDK_PROJECT_ID = nil

      local opts = assert(credentials.resolve({}))

      assert.equal("FAKEAKFROMENVIRONMENT", opts.ak)
      assert.equal("project-from-profile-file", opts.project_id)
    end)

    it("keys come from profile file", function()
      env.HUAWEICLOUD_SDK_AK = nil
      env.HUAWEICLOUD_SDK_SK = nil

      local opts = assert(credentials.resolve({ project_id = "option" }))

      assert.equal("FAKEAKFROMPROFILEFILE", opts.ak)
      assert.equal("fake-sk-from-profile-file", opts.sk)
      assert.equal("fake-security-token-from-profile-file",
        opts.security_token)
      assert.equal("option", opts.project_id)
    end)

    it("leaves options table unchanged", function()
      local caller_options = { endpoint = "http://127.0.0.1:1" }

      local opts = assert(credentials.resolve(caller_options))

      assert.same({ endpoint = "http://127.0.0.1:1" }, caller_options)
      assert.equal("http://127.0.0.1:1", opts.endpoint)
    end)

    it("advice replaces start of messages", function()
      env = { HOME = home }
      os.remove(profile_path)
      local advice = { credentials = "set FAKE_TOKEN_VARIABLE",
        project_id = "pass --project" }

      local _, err = credentials.resolve({}, advice)
      assert.equal("missing credentials: set FAKE_TOKEN_VARIABLE, or set"
        .. " HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK, or add ak and sk to"
        .. " section [basic] of " .. profile_path, err.message)

      _, err = credentials.resolve({ token = "t" }, advice)
      assert.equal("missing project_id: pass --project, or set"
        .. " HUAWEICLOUD_SDK_PROJECT_ID, or add project_id to section [basic]"
        .. " of " .. profile_path, err.message)
    end)
  end)

  describe("against emulator", function()
    before_each(function()
      emu:reset()
    end)

    local function assert_signed_with(access_key)
      local request = emu:stats().last_request
      assert.is_not_nil(request.headers.authorization:find(
        "SDK-HMAC-SHA256 Access=" .. access_key .. ",", 1, true))
      assert.is_nil(request.headers["x-auth-token"])
    end

    it("uses keys from environment", function()
      env.HUAWEICLOUD_SDK_AK = emu.ak
      env.HUAWEICLOUD_SDK_SK = emu.sk
      env.HUAWEICLOUD_SDK_PROJECT_ID = emu.project_id

      local client = assert(appcenter.new({ endpoint = emu.url }))
      local result, meta = client:create_credential("replay.bin")
      client:close()

      assert.is_table(result, tostring(meta))
      assert.equal(1, meta.attempts)
      assert.equal(1, emu:stats().requests)
      assert_signed_with(emu.ak)
    end)

    it("uses temporary keys from profile file", function()
      local first = assert(appcenter.create_credential({ endpoint = emu.url,
        project_id = emu.project_id, ak = emu.ak, sk = emu.sk,
        file_name = "first.bin" }))
      local issued = first.credential
      write_profile(("[basic]\nak = %s\nsk = %s\nsecurity_token = %s\n"
        .. "project_id = %s\n"):format(issued.access, issued.secret,
        issued.security_token, emu.project_id))

      local result, meta = appcenter.create_credential({ endpoint = emu.url,
        file_name = "second.bin" })

      assert.is_table(result, tostring(meta))
      assert.equal(2, emu:stats().requests)
      assert_signed_with(issued.access)
      assert.equal(issued.security_token,
        emu:stats().last_request.headers["x-security-token"])
    end)

    it("names the variable of a rejected value", function()
      env.HUAWEICLOUD_SDK_PROJECT_ID = "a b"

      local client, err = appcenter.new({ endpoint = emu.url, token = "fake-token" })

      assert.is_nil(client)
      assert.equal("invalid_argument", err.kind)
      assert.matches("^invalid project_id: .*%(the value comes from HUAWEICLOUD_SDK_PROJECT_ID%)$", err.message)
      assert.matches("HUAWEICLOUD_SDK_PROJECT_ID", tostring(err), 1, true)
    end)

    it("names the file line of a rejected value", function()
      write_profile("[basic]\nak = A,B\nsk = " .. FAKE_SK .. "\n")

      local _, err = appcenter.new({ endpoint = emu.url, project_id = emu.project_id })

      assert.equal("invalid_argument", err.kind)
      assert.matches("^invalid ak: ", err.message)
      assert.matches("(the value comes from credentials file " .. profile_path .. ", line 2)",
        err.message, 1, true)
    end)

    it("adds no origin to a value passed as an option", function()
      env.HUAWEICLOUD_SDK_AK = FAKE_AK
      env.HUAWEICLOUD_SDK_SK = FAKE_SK

      local _, err = appcenter.new({ endpoint = emu.url, project_id = "a b" })

      assert.matches("^invalid project_id: ", err.message)
      assert.no_match("comes from", err.message, 1, true)
    end)

    it("invalid source sends nothing", function()
      write_profile("[basic]\nak = " .. emu.ak .. "\n")

      local result, err = appcenter.create_credential({ endpoint = emu.url,
        project_id = emu.project_id, file_name = "replay.bin" })

      assert.is_nil(result)
      assert.equal("invalid_argument", err.kind)
      assert.equal(0, emu:stats().requests)
    end)
  end)

  describe("real environment", function()
    before_each(function()
      emu:reset()
    end)

    -- Requests one credential from the emulator with the wrapper and
    -- prints "ok", or prints the error and exits with status 1.
    local function request_script()
      return ([[
local appcenter = require("appcenter")
local result, err = appcenter.create_credential{
  endpoint = %q, file_name = "replay.bin", retry = false,
}
if result then
  print("ok")
else
  print(tostring(err))
  os.exit(1)
end
]]):format(emu.url)
    end

    it("reads HUAWEICLOUD_SDK variables", function()
      local status, stdout, stderr = run_lua(request_script(), home, {
        HUAWEICLOUD_SDK_AK = emu.ak,
        HUAWEICLOUD_SDK_SK = emu.sk,
        HUAWEICLOUD_SDK_PROJECT_ID = emu.project_id,
      })

      assert.equal(0, status, stdout .. stderr)
      assert.equal("ok\n", stdout)
      local request = emu:stats().last_request
      assert.is_not_nil(request.headers.authorization:find(
        "Access=" .. emu.ak .. ",", 1, true))
      assert.equal(emu.project_id, request.headers["x-project-id"])
    end)

    it("reads HOME profile file", function()
      write_profile(("[basic]\nak = %s\nsk = %s\nproject_id = %s\n")
        :format(emu.ak, emu.sk, emu.project_id))

      local status, stdout, stderr = run_lua(request_script(), home)

      assert.equal(0, status, stdout .. stderr)
      assert.equal(1, emu:stats().requests)
    end)

    it("reports a wrong sk without it", function()
      local status, stdout = run_lua(request_script(), home, {
        HUAWEICLOUD_SDK_AK = emu.ak,
        HUAWEICLOUD_SDK_SK = FAKE_SK,
        HUAWEICLOUD_SDK_PROJECT_ID = emu.project_id,
      })

      assert.equal(1, status)
      assert.is_not_nil(stdout:find("APIGW.0301", 1, true), stdout)
      assert.is_nil(stdout:find(FAKE_SK, 1, true))
      assert.equal(1, emu:stats().requests)
    end)
  end)
end)
