-- A client used before fork(): the parent and the child must not share
-- its connections. fork() comes from LuaJIT's ffi, so under Lua 5.4 the
-- tests are reported as pending. The child writes what it saw to a file
-- and leaves with _exit, so that it runs none of busted's code.

local core = require("appcenter.core")
local emulator = require("spec.support.emulator")

local has_ffi, ffi = pcall(require, "ffi")
if has_ffi then
  ffi.cdef([[
    int fork(void);
    int waitpid(int pid, int *status, int options);
    void _exit(int status);
  ]])
end

-- Runs child_fn in a forked child and parent_fn in this process at the
-- same time. child_fn returns a string, which comes back as the second
-- result, after what parent_fn returns.
local function fork_run(child_fn, parent_fn)
  local path = os.tmpname()
  local pid = ffi.C.fork()
  assert(pid >= 0, "fork failed")
  if pid == 0 then
    local ok, text = pcall(child_fn)
    local file = io.open(path, "w")
    if file then
      file:write(ok and text or ("child raised: " .. tostring(text)))
      file:close()
    end
    ffi.C._exit(ok and 0 or 1)
  end

  local parent_result = parent_fn()
  local status = ffi.new("int[1]")
  assert(ffi.C.waitpid(pid, status, 0) == pid, "waitpid failed")
  local file = assert(io.open(path))
  local child_text = file:read("*a")
  file:close()
  os.remove(path)
  return parent_result, child_text
end

-- Makes `count` calls named after `who` and returns how many results were
-- for another name, as "wrong=N failed=N".
local function own_results(client, who, count)
  local wrong, failed = 0, 0
  for i = 1, count do
    local name = ("%s-%d.bin"):format(who, i)
    local result = client:create_credential(name)
    if not result then
      failed = failed + 1
    elseif result.object_path:sub(-#name) ~= name then
      wrong = wrong + 1
    end
  end
  return ("wrong=%d failed=%d"):format(wrong, failed)
end

describe("fork", function()
  local emu, cert_dir

  setup(function()
    if not has_ffi then
      return
    end
    local cert, key = emulator.make_certificate()
    cert_dir = cert:match("^(.*)/[^/]+$")
    emu = emulator.start({ tls_cert = cert, tls_key = key })
  end)

  teardown(function()
    if emu then
      emu:stop()
    end
    if cert_dir then
      os.execute("rm -rf '" .. cert_dir .. "'")
    end
  end)

  before_each(function()
    if emu then
      emu:reset()
    end
  end)

  -- Returns a client of the emulator, or marks the test pending when
  -- this interpreter cannot fork.
  local function new_client()
    if not has_ffi then
      pending("fork() needs LuaJIT's ffi")
    end
    return assert(core.new(emu:client_options({ timeout_ms = 10000 })))
  end

  it("keeps parent and child results apart", function()
    local client = new_client()
    assert.is_table(client:create_credential("before-fork.bin"))

    local parent, child = fork_run(function()
      return own_results(client, "child", 100)
    end, function()
      return own_results(client, "parent", 100)
    end)

    assert.equals("wrong=0 failed=0", parent)
    assert.equals("wrong=0 failed=0", child)
    client:close()
  end)

  it("leaves the parent's connection to a closing child", function()
    local client = new_client()
    assert.is_table(client:create_credential("before-fork.bin"))

    local parent, child = fork_run(function()
      client:close()
      return "closed"
    end, function()
      return own_results(client, "parent", 20)
    end)

    assert.equals("closed", child)
    assert.equals("wrong=0 failed=0", parent)
    assert.equals(1, emu:stats().connections)
    client:close()
  end)

  it("cancels the child's copy of a request in flight", function()
    local client = new_client()
    emu:config({ delay_ms = 300 })
    local outcome
    client:start("in-flight.bin", function(result, err)
      outcome = result and ("result " .. result.object_path)
        or (err.kind .. ": " .. err.message)
    end)
    client:poll(50)

    local function wait()
      for _ = 1, 100 do
        if outcome then
          break
        end
        client:poll(50)
      end
      return outcome
    end
    local parent, child = fork_run(wait, wait)

    assert.matches("in%-flight%.bin$", parent)
    assert.equals("cancelled: the process forked while the request was in "
      .. "flight, and the parent process receives its response", child)
    assert.equals(1, emu:stats().requests)
    client:close()
  end)
end)
