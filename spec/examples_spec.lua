-- The Lua scripts in examples/, run as separate processes under the
-- interpreter that runs the specs, against the local App Center emulator.

local emulator = require("spec.support.emulator")

local function shell_quote(value)
  return "'" .. value:gsub("'", "'\\''") .. "'"
end

-- The interpreter and the build directory of its ABI.
local INTERPRETER = jit and "luajit" or "lua5.4"
local BUILD = jit and "build/luajit" or "build/lua5.4"

-- Runs examples/NAME with `args` and the emulator's endpoint, token and
-- project id in the environment. Returns the exit status and the output,
-- standard error included.
local function run_example(emu, name, args)
  local command = table.concat({
    "env",
    "APPCENTER_ENDPOINT=" .. shell_quote(emu.url),
    "APPCENTER_TOKEN=" .. shell_quote(emu.token),
    "APPCENTER_PROJECT_ID=" .. shell_quote(emu.project_id),
    "LUA_PATH='lua/?.lua;lua/?/init.lua;;'",
    "LUA_CPATH=" .. shell_quote(BUILD .. "/?.so;;"),
    "timeout 60", INTERPRETER, "examples/" .. name,
    table.concat(args or {}, " "),
    "2>&1 </dev/null; echo \"exit=$?\"",
  }, " ")
  local pipe = assert(io.popen(command, "r"))
  local output = pipe:read("*a")
  pipe:close()
  local status = tonumber(output:match("exit=(%d+)%s*$"))
  return status, output:gsub("exit=%d+%s*$", "")
end

describe("examples", function()
  local emu

  setup(function()
    emu = emulator.start{}
  end)

  teardown(function()
    emu:stop()
  end)

  before_each(function()
    emu:reset()
  end)

  it("plain.lua uploads a file", function()
    local status, output = run_example(emu, "plain.lua", { "README.md" })

    assert.equal(0, status, output)
    assert.matches("^uploaded %d+ bytes to http://[^ ]+/README%.md "
      .. "%(request id %x+%)\n$", output)
    assert.equal(1, emu:stats().obs_requests)
  end)

  it("plain.lua names a missing variable", function()
    local status, output = run_example({ url = "", token = "",
      project_id = "" }, "plain.lua", { "README.md" })

    assert.equal(2, status, output)
    assert.matches("APPCENTER_ENDPOINT is not set", output, 1, true)
  end)

  it("game_loop.lua finishes every request", function()
    local status, output = run_example(emu, "game_loop.lua")

    assert.equal(0, status, output)
    assert.matches("4 of 4 credential requests finished", output, 1, true)
    assert.is_nil(output:find("failed", 1, true), output)
    local _, lines = output:gsub("%(1 attempt%(s%), [%d.]+ ms%)\n", "")
    assert.equal(4, lines, output)
  end)

  it("blocking_wait.lua finishes every request", function()
    local status, output = run_example(emu, "blocking_wait.lua")

    assert.equal(0, status, output)
    assert.matches("5 requests, %d+ poll%(100%) calls, 0 still pending",
      output)
    assert.is_nil(output:find("failed", 1, true), output)
  end)
end)
