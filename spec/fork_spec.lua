-- A client used before fork(): the parent and the child must not share
-- its connections. fork() comes from LuaJIT's ffi, so under Lua 5.4 the
-- tests are reported as pending. The child writes what it saw to a file
-- and leaves with _exit, so that it runs none of busted's code.

local appcenter = require("appcenter")
local core = require("appcenter.core")
local emulator = require("spec.support.emulator")
local poll_until = require("spec.support.poll").until_done

local has_ffi, ffi = pcall(require, "ffi")
if has_ffi then
  ffi.cdef([[
    int fork(void);
    int waitpid(int pid, int *status, int options);
    void _exit(int status);
    int close(int fd);
    int open(const char *path, int flags, int mode);
    long write(int fd, const void *buffer, unsigned long count);
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

-- Forks, and in both processes polls `client` until `read()` returns a
-- value. Returns the parent's value and the child's.
local function fork_until(client, read)
  local function wait()
    poll_until(client, read)
    return read()
  end
  return fork_run(wait, wait)
end

-- Makes `count` calls for files named after `process` and returns how
-- many results were for another name, as "wrong=N failed=N".
local function own_results(client, process, count)
  local wrong, failed = 0, 0
  for i = 1, count do
    local name = ("%s-%d.bin"):format(process, i)
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

  -- Marks the test pending when this interpreter cannot fork.
  local function require_fork()
    if not has_ffi then
      pending("fork() needs LuaJIT's ffi")
    end
  end

  -- Returns a core client of the emulator; see require_fork.
  local function new_client()
    require_fork()
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

  -- Returns a text for a callback's arguments: "result PATH" or
  -- "KIND: MESSAGE".
  local function outcome_text(result, err)
    if result then
      return "result " .. result.object_path
    end
    return err.kind .. ": " .. err.message
  end

  it("cancels the other copies after a cancel", function()
    local client = new_client()
    emu:config({ delay_ms = 300 })
    local outcomes = {}
    local function record(name)
      return function(result, err)
        outcomes[name] = result and "result" or err.message
      end
    end
    local first = client:start("first.bin", record("first"))
    client:start("second.bin", record("second"))
    client:poll(50)

    local parent, child = fork_run(function()
      first:cancel()
      poll_until(client, function()
        return outcomes.second ~= nil
      end)
      return outcomes.first .. " | " .. tostring(outcomes.second)
    end, function()
      poll_until(client, function()
        return outcomes.first and outcomes.second
      end)
      return outcomes.first .. " | " .. outcomes.second
    end)

    assert.equals("result | result", parent)
    assert.equals("the request was cancelled | the process forked while the "
      .. "request was in flight, and the parent process receives its "
      .. "response", child)
    assert.equals(2, emu:stats().requests)
    client:close()
  end)

  it("runs no callback inside start in the child", function()
    local client = new_client()
    emu:config({ delay_ms = 300 })
    local inherited
    client:start("inherited.bin", function(_, err)
      inherited = err and err.kind or "result"
    end)
    client:poll(50)

    local _, child = fork_run(function()
      client:start("own.bin", function() end)
      local after_start = tostring(inherited)
      poll_until(client, function()
        return inherited ~= nil
      end)
      return after_start .. " then " .. tostring(inherited)
    end, function()
      poll_until(client, function()
        return inherited ~= nil
      end)
    end)

    assert.equals("nil then cancelled", child)
    client:close()
  end)

  it("leaves a reused descriptor alone", function()
    local client = new_client()
    emu:config({ delay_ms = 200 })
    local done = false
    client:start("learn-fd.bin", function()
      done = true
    end)
    client:poll(50)
    local fd = client:sockets()[1].fd
    poll_until(client, function()
      return done
    end)
    emu:config({ delay_ms = 0 })
    local path = os.tmpname()

    local _, child = fork_run(function()
      -- As code that closes every inherited descriptor does.
      ffi.C.close(fd)
      local O_WRONLY_CREAT_TRUNC = 0x241
      local file = ffi.C.open(path, O_WRONLY_CREAT_TRUNC, 420)
      assert(file == fd, "the file did not get the socket's number")
      ffi.C.write(file, "one\n", 4)
      local result = client:create_credential("child.bin")
      local written = ffi.C.write(file, "two\n", 4)
      ffi.C.close(file)
      return ("%s %d"):format(result and "result" or "failed",
        tonumber(written))
    end, function() end)

    local file = assert(io.open(path))
    local text = file:read("*a")
    file:close()
    os.remove(path)
    assert.equals("result 4", child)
    assert.equals("one\ntwo\n", text)
    client:close()
  end)

  it("leaves a wrapper retry to the parent", function()
    require_fork()
    local client = assert(appcenter.new(emu:client_options({
      timeout_ms = 10000, retry = { base_delay_ms = 1, max_delay_ms = 1000 },
    })))
    emu:fault({ status = 503, headers = { ["Retry-After"] = "1" }, times = 1 })
    local outcome
    local request = client:start("retried.bin", function(...)
      outcome = outcome_text(...)
    end)
    poll_until(client, function()
      return request:status() == "waiting"
    end)
    assert.equals("waiting", request:status())

    local parent, child = fork_until(client, function()
      return outcome
    end)

    assert.matches("^result .*retried%.bin$", parent)
    assert.equals("cancelled: the process forked while the request waited "
      .. "for a retry, and the parent process retries it", child)
    assert.equals(2, emu:stats().requests)
    client:close()
  end)

  it("cancels the child's copy of a request in flight", function()
    local client = new_client()
    emu:config({ delay_ms = 300 })
    local outcome
    client:start("in-flight.bin", function(...)
      outcome = outcome_text(...)
    end)
    client:poll(50)

    local parent, child = fork_until(client, function()
      return outcome
    end)

    assert.matches("in%-flight%.bin$", parent)
    assert.equals("cancelled: the process forked while the request was in "
      .. "flight, and the parent process receives its response", child)
    assert.equals(1, emu:stats().requests)
    client:close()
  end)
end)
