-- Non-blocking uploads to the emulator's OBS port: core_client:start_upload
-- driven by poll, compared with the blocking upload and with what the
-- emulator stored, and the wrapper's start_upload with its retries.

local appcenter = require("appcenter")
local core = require("appcenter.core")
local emulator = require("spec.support.emulator")
local subprocess = require("spec.support.subprocess")

local function shell_quote(value)
  return "'" .. tostring(value):gsub("'", "'\\''") .. "'"
end

local function write_file(path, data)
  local file = assert(io.open(path, "wb"))
  assert(file:write(data))
  assert(file:close())
end

-- Returns the lower-case hexadecimal SHA-256 of a file, from sha256sum.
local function file_sha256(path)
  local pipe = assert(io.popen("sha256sum " .. shell_quote(path), "r"))
  local output = pipe:read("*a")
  pipe:close()
  return assert(output:match("^(%x+)"), "sha256sum printed " .. output)
end

-- Returns the number of open file descriptors of this process, or with
-- `path` those open on that file. The pipe that reads the count adds the
-- same one descriptor on every call. The total also drops when libcurl
-- closes an idle connection, so the specs compare it with <=.
local function open_fd_count(path)
  local stat = assert(io.open("/proc/self/stat", "r"))
  local pid = assert(stat:read("*l"):match("^(%d+)"))
  stat:close()
  local command = "ls /proc/" .. pid .. "/fd 2>/dev/null | wc -l"
  if path then
    command = "ls -l /proc/" .. pid .. "/fd 2>/dev/null | grep -cF -- "
      .. shell_quote(" -> " .. path)
  end
  local pipe = assert(io.popen(command, "r"))
  local count = tonumber(pipe:read("*a"))
  pipe:close()
  return count
end

-- Returns true once the process has at most `limit` descriptors open,
-- waiting up to one second: libcurl's resolver thread for a name such as
-- bucket.localhost closes its own socket shortly after the transfer ends.
local function fd_count_settles(limit)
  for _ = 1, 20 do
    if open_fd_count() <= limit then
      return true
    end
    require("appcenter.core").sleep(0.05)
  end
  return false
end

-- Polls until nothing is in flight, at most max_polls times.
local function drive(client, max_polls)
  for _ = 1, max_polls or 400 do
    if client:pending() == 0 then
      return
    end
    client:poll(50)
  end
  error("uploads still in flight after polling")
end

describe("async upload", function()
  local emu
  local directory

  setup(function()
    emu = emulator.start()
    local pipe = assert(io.popen("mktemp -d", "r"))
    directory = pipe:read("*l")
    pipe:close()
    assert.is_truthy(directory and directory:match("^/"))
  end)

  teardown(function()
    emu:stop()
    os.execute("rm -rf " .. shell_quote(directory))
  end)

  before_each(function()
    emu:reset()
  end)

  local function new_client()
    return assert(core.new(emu:client_options()))
  end

  local function credential(client, file_name)
    local result, err = client:create_credential(file_name or "replay.bin")
    assert.is_table(result, tostring(err))
    return result
  end

  -- Runs an upload on `client`, whose max_connections is 1, that waits
  -- while a credential request takes 3.5 s, so the date that it signed
  -- at its start is older than the 2 s of skew the emulator then accepts.
  -- The date has whole seconds, so a fresh one may already look up to
  -- 1 s old, and 2 s leave a retry room. Closes the client and returns
  -- the upload callback's arguments.
  local function run_aged_upload(client, file_name)
    local result = credential(client, file_name)
    emu:config{ delay_ms = 3500, max_skew_seconds = 2 }
    assert(client:start("slow.bin", function() end))
    local outcome
    assert(client:start_upload(result, { body = "aged" }, function(...)
      outcome = { ... }
    end))
    drive(client)
    client:close()
    assert.is_table(outcome, "the callback did not run")
    return outcome
  end

  local function make_file(name, data)
    local path = directory .. "/" .. name
    write_file(path, data)
    return path
  end

  -- Writes `mib` MiB of zeros to a file and returns its path.
  local function make_big_file(name, mib)
    local path = directory .. "/" .. name
    assert(os.execute(("dd if=/dev/zero of=%s bs=1M count=%d status=none")
      :format(shell_quote(path), mib)))
    return path
  end

  local function assert_stored(result, size, sha256)
    local object = emu:object(result.bucket_name, result.object_path)
    assert.is_table(object, "no object stored under " .. result.object_path)
    assert.equals(size, object.size)
    assert.equals(sha256, object.sha256)
    return object
  end

  -- Starts one upload, polls until it ends and returns the callback's
  -- arguments as a packed table.
  local function run_upload(client, result, opts)
    local outcome
    assert(client:start_upload(result, opts, function(...)
      outcome = { n = select("#", ...), ... }
    end))
    drive(client)
    return assert(outcome, "the callback did not run")
  end

  it("uploads a string", function()
    local client = new_client()
    local result = credential(client, "note.txt")
    local body = ("async line\n"):rep(1000)
    local outcome = run_upload(client, result, { body = body })
    local meta = outcome[1]

    assert.equals(1, outcome.n)
    assert.equals(200, meta.status)
    assert.equals(#body, meta.bytes)
    assert.equals(1, meta.attempts)
    assert.matches("^%x+$", meta.request_id)
    local object = assert_stored(result, #body,
      file_sha256(make_file("note.txt", body)))
    assert.equals('"' .. object.md5 .. '"', meta.etag)
    assert.equals("text/plain", object.content_type)
    client:close()
  end)

  it("uploads a file with Content-MD5", function()
    local path = make_file("file.bin", ("file data "):rep(50000))
    local client = new_client()
    local result = credential(client, "file.bin")
    local outcome = run_upload(client, result, {
      path = path, content_md5 = true, path_style = true,
    })
    local meta = outcome[1]

    assert.equals(200, meta.status)
    assert.equals(500000, meta.bytes)
    assert.equals("http://" .. emu.server_end_point .. "/"
      .. emulator.BUCKET_NAME .. "/" .. result.object_path, meta.url)
    local object = assert_stored(result, 500000, file_sha256(path))
    assert.is_string(object.content_md5)
    client:close()
  end)

  it("returns the blocking upload's error", function()
    emu:fault{ target = "obs", status = 503, times = 2,
      headers = { ["x-obs-request-id"] = "same-id" } }
    local client = new_client()
    local result = credential(client)
    local outcome = run_upload(client, result, { body = "x" })
    local meta, sync_err = client:upload(result, { body = "x" })

    assert.is_nil(meta)
    assert.is_nil(outcome[1])
    local async_err = outcome[2]
    for _, field in ipairs({ "kind", "status", "code", "message",
                             "request_id", "retryable" }) do
      assert.equals(sync_err[field], async_err[field])
    end
    assert.equals(503, async_err.status)
    assert.equals(tostring(sync_err), tostring(async_err))
    client:close()
  end)

  it("returns invalid input at once", function()
    local client = new_client()
    local called = false
    local request, err = client:start_upload(credential(client),
      { path = directory .. "/missing.bin" }, function()
        called = true
      end)

    assert.is_nil(request)
    assert.equals("invalid_argument", err.kind)
    assert.matches("missing.bin", err.message, 1, true)
    assert.equals(0, client:pending())
    assert.is_false(called)
    assert.has_error(function()
      client:start_upload(credential(client), { body = "x" })
    end)
    client:close()
  end)

  -- A blocking open of a FIFO waits for a writer. The writer, which
  -- opens the FIFO after 2 s, bounds that wait, so that a blocking open
  -- fails the time check instead of hanging the suite.
  it("rejects a FIFO at once", function()
    local path = directory .. "/upload.fifo"
    assert(os.execute("mkfifo " .. shell_quote(path)))
    assert(os.execute(("timeout 5 sh -c 'sleep 2; : > %s' >/dev/null 2>&1 &")
      :format(shell_quote(path))))
    local client = new_client()
    local result = credential(client)
    local called = false
    local started = core.monotonic()
    local request, err = client:start_upload(result, { path = path }, function()
      called = true
    end)
    local elapsed = core.monotonic() - started
    os.remove(path)

    assert.is_nil(request)
    assert.is_true(elapsed < 1, ("start_upload took %.2f s"):format(elapsed))
    assert.equals("invalid_argument", err.kind)
    assert.equals('invalid path "' .. path .. '": not a regular file', err.message)
    assert.equals(0, client:pending())
    assert.is_false(called)
    client:close()
  end)

  -- start_upload opens the file, and poll reads it, so the file is
  -- truncated before the first read.
  it("aborts when the file shrinks", function()
    local path = make_file("shrinks.bin", ("s"):rep(1024 * 1024))
    local client = assert(core.new(emu:client_options{ timeout_ms = 3000 }))
    local result = credential(client, "shrinks.bin")
    local outcome
    assert(client:start_upload(result, { path = path }, function(...)
      outcome = { n = select("#", ...), ... }
    end))
    write_file(path, "tiny")
    local started = core.monotonic()
    drive(client)
    local elapsed = core.monotonic() - started

    assert.is_table(outcome, "the callback did not run")
    assert.is_nil(outcome[1])
    local err = outcome[2]
    assert.equals("invalid_argument", err.kind)
    assert.is_false(err.retryable)
    assert.matches(path, err.message, 1, true)
    assert.matches("changed size during the upload", err.message, 1, true)
    assert.matches("4 of the 1048576 bytes", err.message, 1, true)
    assert.is_true(elapsed < 2.9, ("the upload took %.2f s"):format(elapsed))
    assert.is_nil(emu:object(result.bucket_name, result.object_path))
    client:close()
  end)

  -- The error message reads opts.path after start_upload has returned,
  -- so the request keeps that string alive. Here nothing else refers to
  -- it, and strings of its length are allocated after a collection, where
  -- a freed path would be reused.
  it("keeps the path for a later error", function()
    local path = make_file("kept.bin", ("k"):rep(1024 * 1024))
    local alias = path:gsub("/([^/]+)$", "/./%1")
    local client = assert(core.new(emu:client_options{ timeout_ms = 3000 }))
    local result = credential(client, "kept.bin")
    local outcome
    assert(client:start_upload(result, { path = alias }, function(...)
      outcome = { ... }
    end))
    local expected = 'file "' .. alias .. '" ended after'
    local alias_length = #alias
    alias = nil
    write_file(path, "tiny")
    collectgarbage()
    collectgarbage()
    local fill = {}
    for i = 1, 2000 do
      fill[i] = ("z"):rep(alias_length - 4) .. ("%04d"):format(i)
    end
    drive(client)

    assert.is_table(outcome, "the callback did not run")
    assert.is_nil(outcome[1])
    assert.matches(expected, outcome[2].message, 1, true)
    assert.equals(2000, #fill)
    client:close()
  end)

  it("rejects poll from a progress callback", function()
    local client = new_client()
    local result = credential(client, "nested-poll.bin")
    local message, meta
    assert(client:start_upload(result, {
      body = "x",
      progress = function()
        message = message or select(2, pcall(client.poll, client, 0))
      end,
    }, function(...)
      meta = ...
    end))
    drive(client)

    assert.is_table(meta)
    assert.matches("poll called from a callback that poll runs (a request's "
      .. "callback or an upload's progress callback)", message, 1, true)
    client:close()
  end)

  -- start_upload reads the secret to sign and again to keep it for the
  -- request. The collector stays stopped, so only start_upload itself
  -- can close the file.
  it("rejects a credential that changes between reads", function()
    local path = make_file("changing.bin", "changing")
    local client = new_client()
    local result = credential(client, "changing.bin")
    local fields = result.credential
    local reads = 0
    result.credential = setmetatable({}, { __index = function(_, key)
      if key == "secret" then
        reads = reads + 1
        return fields.secret .. reads
      end
      return fields[key]
    end })
    collectgarbage("stop")
    local ok, request, err = pcall(client.start_upload, client, result,
      { path = path }, function() end)
    local open_count = open_fd_count(path)
    collectgarbage("restart")

    assert.is_true(ok, tostring(request))
    assert.is_nil(request)
    assert.equals("invalid_argument", err.kind)
    assert.equals("invalid result or upload options: the tables return "
      .. "other strings on a second read; pass plain tables", err.message)
    assert.equals(0, open_count)
    assert.equals(0, client:pending())
    client:close()
  end)

  -- The child makes its clients, opens a connection with one of them,
  -- and then opens /dev/null until no descriptor is left.
  it("names the descriptor limit", function()
    local path = make_file("no-descriptor.bin", "no descriptor")
    local status, stdout, stderr = subprocess.run_lua([[
      local core = require("appcenter.core")
      local opts = { endpoint = os.getenv("EMU_URL"),
        project_id = os.getenv("EMU_PROJECT"), token = os.getenv("EMU_TOKEN") }
      local uploader = assert(core.new(opts))
      local unconnected = assert(core.new(opts))
      local result = assert(uploader:create_credential("no-descriptor.bin"))
      local open_files = {}
      for _ = 1, 1000 do
        local file = io.open("/dev/null", "rb")
        if not file then
          break
        end
        open_files[#open_files + 1] = file
      end
      local request, upload_err = uploader:start_upload(result,
        { path = os.getenv("UPLOAD_PATH") }, function() end)
      local _, credential_err = unconnected:create_credential("x.bin")
      for _, file in ipairs(open_files) do
        file:close()
      end
      print(request == nil, upload_err and upload_err.kind)
      print(upload_err and upload_err.message)
      print(credential_err and credential_err.kind)
      print(credential_err and credential_err.message)
    ]], {}, directory, { EMU_URL = emu.url, EMU_PROJECT = emu.project_id,
      EMU_TOKEN = emu.token, UPLOAD_PATH = path }, 64)

    assert.equals(0, status, stderr)
    local lines = {}
    for line in stdout:gmatch("[^\n]+") do
      lines[#lines + 1] = line
    end
    assert.equals("true\tinvalid_argument", lines[1])
    assert.equals('cannot open file "' .. path .. '": Too many open files; '
      .. "the process has no file descriptor left, and each upload keeps "
      .. "its file open until it ends, so run fewer uploads at once, or "
      .. "raise the limit (ulimit -n)", lines[2])
    assert.equals("network", lines[3])
    assert.matches("(opening a socket failed: Too many open files; the "
      .. "process has no file descriptor left, so run fewer requests and "
      .. "uploads at once, or raise its limit (ulimit -n))", lines[4], 1, true)
  end)

  it("marks an aged upload retryable", function()
    local outcome = run_aged_upload(assert(core.new(emu:client_options{
      max_connections = 1 })), "aged.bin")

    assert.is_nil(outcome[1])
    local err = outcome[2]
    assert.equals(403, err.status)
    assert.equals("RequestTimeTooSkewed", err.code)
    assert.is_true(err.retryable)
    local sent_after_ms = tonumber(err.message:match(
      "%(the upload was signed when it started and sent (%d+) ms later, "
      .. "after a wait for a connection; a new attempt signs it again, and "
      .. "a higher max_connections shortens a wait for a free one%)"))
    assert.is_number(sent_after_ms, err.message)
    assert.is_true(sent_after_ms >= 3000, err.message)
  end)

  -- The upload waits a moment behind a fast credential request, and the
  -- emulator's own delay before it checks the date plays the part of a
  -- wrong clock.
  it("blames the clock after a short wait", function()
    local client = assert(core.new(emu:client_options{ max_connections = 1 }))
    local result = credential(client, "clock.bin")
    emu:config{ max_skew_seconds = 2 }
    emu:fault{ target = "obs", delay_ms = 3500 }
    assert(client:start("fast.bin", function() end))
    local outcome
    assert(client:start_upload(result, { body = "clock" }, function(...)
      outcome = { ... }
    end))
    drive(client)
    client:close()

    assert.is_table(outcome, "the callback did not run")
    local err = outcome[2]
    assert.equals("RequestTimeTooSkewed", err.code)
    assert.is_false(err.retryable)
    assert.matches("(check this machine's clock", err.message, 1, true)
  end)

  it("reports monotonic progress ending at total", function()
    local path = make_big_file("progress.bin", 16)
    local total = 16 * 1024 * 1024
    local client = new_client()
    local calls = {}
    local outcome = run_upload(client, credential(client, "progress.bin"), {
      path = path,
      progress = function(sent, size)
        calls[#calls + 1] = { sent, size }
      end,
    })

    assert.equals(200, outcome[1].status)
    assert.is_true(#calls >= 1)
    for i, call in ipairs(calls) do
      assert.equals(total, call[2])
      if i > 1 then
        assert.is_true(call[1] >= calls[i - 1][1], "progress went back")
      end
    end
    assert.equals(total, calls[#calls][1])
    client:close()
  end)

  it("aborts when progress returns false", function()
    local path = make_big_file("abort.bin", 64)
    local client = new_client()
    local result = credential(client, "abort.bin")
    local calls = 0
    local outcome = run_upload(client, result, {
      path = path,
      progress = function()
        calls = calls + 1
        return false
      end,
    })

    assert.is_nil(outcome[1])
    assert.equals("cancelled", outcome[2].kind)
    assert.matches("progress callback", outcome[2].message, 1, true)
    assert.equals(1, calls)
    assert.is_nil(emu:object(result.bucket_name, result.object_path))
    client:close()
  end)

  for _, body in ipairs({ ("e"):rep(100000), "" }) do
    it("raises progress error from poll, " .. #body .. " bytes", function()
      local client = new_client()
      local outcome
      assert(client:start_upload(credential(client), {
        body = body,
        progress = function()
          error("progress failed on purpose")
        end,
      }, function(...)
        outcome = { ... }
      end))

      local raised
      for _ = 1, 200 do
        local ok, message = pcall(client.poll, client, 50)
        if not ok then
          raised = message
          break
        end
        if client:pending() == 0 then
          break
        end
      end
      assert.matches("progress failed on purpose", tostring(raised), 1, true)
      assert.is_table(outcome, "the callback did not run")
      assert.equals(0, client:pending())
      if #body > 0 then
        assert.is_nil(outcome[1])
        assert.equals("cancelled", outcome[2].kind)
      else
        -- The empty body's only progress call comes after OBS responded.
        assert.equals(200, outcome[1].status)
      end
      assert.equals(200, run_upload(client, credential(client),
        { body = "after" })[1].status)
      client:close()
    end)
  end

  it("rejects start and close from progress", function()
    local client = new_client()
    local other = credential(client, "other.bin")
    local messages = {}
    local outcome = run_upload(client, credential(client), {
      body = ("p"):rep(100000),
      progress = function()
        for _, fn in ipairs({
          function() client:start("x.bin", function() end) end,
          function()
            client:start_upload(other, { body = "x" }, function() end)
          end,
          function() client:close() end,
        }) do
          local ok, message = pcall(fn)
          assert(not ok)
          messages[#messages + 1] = tostring(message)
        end
      end,
    })

    assert.equals(200, outcome[1].status)
    assert.matches("start called from an upload's progress", messages[1],
      1, true)
    assert.matches("start_upload called from an upload's progress",
      messages[2], 1, true)
    assert.matches("close called from an upload's progress", messages[3],
      1, true)
    client:close()
  end)

  it("raises when an __index closes the client", function()
    local path = make_file("closing.bin", "closing")
    local client = new_client()
    local result = credential(client, "closing.bin")
    local calls = 0
    local opts = setmetatable({ path = path }, { __index = function(_, name)
      if name == "content_md5" then
        client:close()
      end
    end })

    local ok, message = pcall(client.start_upload, client, result, opts,
      function()
        calls = calls + 1
      end)

    assert.is_false(ok)
    assert.matches("appcenter.core: the client is closed", message, 1, true)
    assert.equals(0, open_fd_count(path))
    assert.equals(0, calls)
    assert.equals(0, emu:stats().obs_requests)
  end)

  -- The credentials come from a client of their own whose connection
  -- stays open, so that only the uploading client changes the count.
  it("closes the file on cancel", function()
    local path = make_big_file("cancel.bin", 8)
    local issuer = new_client()
    local result = credential(issuer, "cancel.bin")
    collectgarbage()
    collectgarbage()
    local before = open_fd_count()
    local client = new_client()
    local outcome
    local request = assert(client:start_upload(result, { path = path },
      function(...)
        outcome = { ... }
      end))
    assert.equals(1, open_fd_count(path))

    assert.is_true(request:cancel())
    assert.equals(0, open_fd_count(path))
    assert.equals("cancelled", request:status())
    assert.is_nil(outcome[1])
    assert.equals("cancelled", outcome[2].kind)
    assert.equals(0, client:pending())
    client:close()
    assert.is_true(fd_count_settles(before), "a descriptor was left open")
    issuer:close()
  end)

  it("closes the files on close", function()
    local path = make_big_file("close.bin", 8)
    local issuer = new_client()
    local results = { credential(issuer, "a.bin"), credential(issuer, "b.bin") }
    collectgarbage()
    collectgarbage()
    local before = open_fd_count()
    local client = new_client()
    local outcomes = {}
    -- The delay keeps both uploads from finishing within the poll below.
    emu:fault{ target = "obs", delay_ms = 1000, times = 2 }
    for i, result in ipairs(results) do
      assert(client:start_upload(result, { path = path }, function(...)
        outcomes[i] = { ... }
      end))
    end
    client:poll(20)
    assert.equals(2, open_fd_count(path))
    emu:wait_for_requests(2, client, "obs_requests")

    client:close()
    assert.is_true(fd_count_settles(before), "a descriptor was left open")
    for i = 1, 2 do
      assert.equals("cancelled", outcomes[i][2].kind)
      assert.matches("closed", outcomes[i][2].message, 1, true)
    end
    issuer:close()
  end)

  it("closes the file on garbage collection", function()
    local path = make_big_file("gc.bin", 1)
    local issuer = new_client()
    local result = credential(issuer, "gc.bin")
    collectgarbage()
    collectgarbage()
    local before = open_fd_count()
    local called = false
    do
      local client = new_client()
      assert(client:start_upload(result, { path = path }, function()
        called = true
      end))
      assert.equals(1, open_fd_count(path))
    end
    collectgarbage()
    collectgarbage()
    assert.equals(0, open_fd_count(path))
    assert.is_true(fd_count_settles(before), "a descriptor was left open")
    assert.is_false(called)
    issuer:close()
  end)

  it("runs uploads and credential requests at once", function()
    local client = new_client()
    local results = {}
    for i = 1, 4 do
      results[i] = credential(client, ("many-%d.bin"):format(i))
    end
    local paths = {}
    local uploads, credentials = {}, {}
    for i, result in ipairs(results) do
      paths[i] = make_file(("many-%d.bin"):format(i), ("m"):rep(i * 70000))
      assert(client:start_upload(result, { path = paths[i] }, function(...)
        uploads[i] = { ... }
      end))
      assert(client:start(("cred-%d.bin"):format(i), function(...)
        credentials[i] = { ... }
      end))
    end
    assert.equals(8, client:pending())
    drive(client)

    for i, result in ipairs(results) do
      assert.equals(200, uploads[i][1].status)
      assert_stored(result, i * 70000, file_sha256(paths[i]))
      assert.matches(("cred%%-%d%%.bin$"):format(i),
        credentials[i][1].object_path)
    end
    client:close()
  end)

  describe("through the wrapper", function()
    it("retries a 503 inside poll", function()
      local path = make_file("retried.bin", ("r"):rep(300000))
      emu:fault{ target = "obs", status = 503, after_body = true }
      local retries = {}
      local client = assert(appcenter.new(emu:client_options{ retry = {
        base_delay_ms = 0,
        on_retry = function(err, attempt)
          retries[#retries + 1] = { err.status, attempt }
        end,
      } }))
      local result = credential(client, "retried.bin")
      local outcome
      local request = assert(client:start_upload(result, { path = path },
        function(...)
          outcome = { n = select("#", ...), ... }
        end))
      drive(client)

      assert.equals("done", request:status())
      assert.equals(1, outcome.n)
      assert.equals(200, outcome[1].status)
      assert.equals(2, outcome[1].attempts)
      assert.same({ { 503, 1 } }, retries)
      assert.equals(2, emu:stats().obs_requests)
      assert_stored(result, 300000, file_sha256(path))
      client:close()
    end)

    it("retries an aged upload", function()
      local outcome = run_aged_upload(assert(appcenter.new(emu:client_options{
        max_connections = 1, retry = { base_delay_ms = 0 } })), "aged-retry.bin")

      assert.is_table(outcome[1], tostring(outcome[2]))
      assert.equals(2, outcome[1].attempts)
      assert.equals(2, emu:stats().obs_requests)
    end)

    it("rejects cancel from progress", function()
      local client = assert(appcenter.new(emu:client_options{ retry = {
        base_delay_ms = 10000, random = function() return 0.5 end,
      } }))
      local result = credential(client, "progress-cancel.bin")
      -- A request that waits for its retry timer when the upload runs.
      emu:fault{ status = 503, times = 1 }
      local waiting = assert(client:start("waiting.bin", function() end))
      for _ = 1, 100 do
        if waiting:status() == "waiting" then
          break
        end
        client:poll(20)
      end
      assert.equals("waiting", waiting:status())

      local message
      local upload = assert(client:start_upload(result, {
        body = ("p"):rep(200000),
        progress = function()
          if message == nil then
            local ok, err = pcall(function()
              local cancelled = waiting:cancel()
              return cancelled
            end)
            message = ok and "no error" or err
          end
          return true
        end,
      }, function() end))
      for _ = 1, 200 do
        if upload:status() ~= "running" then
          break
        end
        client:poll(20)
      end

      assert.matches("cancel called from an upload's progress callback",
        message, 1, true)
      assert.equals("waiting", waiting:status())
      assert.equals("done", upload:status())
      client:close()
    end)

    -- Starts an upload whose first attempt gets a 503, and calls
    -- `stop(client, request)` from the on_retry of that attempt. Returns
    -- the arguments of the upload's callback, the request and the client.
    local function stop_upload_in_on_retry(stop)
      emu:fault{ target = "obs", status = 503, after_body = true }
      local client, request
      local stopped = false
      client = assert(appcenter.new(emu:client_options{ retry = {
        base_delay_ms = 0,
        on_retry = function()
          stop(client, request)
          stopped = true
        end,
      } }))
      local result = credential(client, "stopped.bin")
      local outcome
      request = assert(client:start_upload(result, { body = "x" },
        function(...)
          outcome = { n = select("#", ...), ... }
        end))
      for _ = 1, 100 do
        if stopped then
          break
        end
        client:poll(50)
      end
      assert.is_true(stopped, "on_retry never ran")
      return outcome, request, client
    end

    it("close from on_retry cancels upload", function()
      local outcome, request, client = stop_upload_in_on_retry(
        function(client)
          client:close()
        end)

      assert.is_table(outcome, "the upload's callback never ran")
      assert.equals(2, outcome.n)
      assert.is_nil(outcome[1])
      assert.equals("cancelled", outcome[2].kind)
      assert.equals("the client was closed", outcome[2].message)
      assert.equals(1, outcome[2].attempts)
      assert.equals("cancelled", request:status())
      assert.equals(0, client:pending())
      assert.equals(1, emu:stats().obs_requests)
    end)

    it("cancel from on_retry cancels upload", function()
      local cancel_outcome
      local outcome, request, client = stop_upload_in_on_retry(
        function(_, request)
          cancel_outcome = { pcall(request.cancel, request) }
        end)
      drive(client)

      assert.is_true(cancel_outcome[1], tostring(cancel_outcome[2]))
      assert.is_true(cancel_outcome[2])
      assert.equals(2, outcome.n)
      assert.is_nil(outcome[1])
      assert.equals("cancelled", outcome[2].kind)
      assert.equals("the request was cancelled", outcome[2].message)
      assert.equals(1, outcome[2].attempts)
      assert.equals("cancelled", request:status())
      assert.equals(0, client:pending())
      assert.equals(1, emu:stats().obs_requests)
      client:close()
    end)

    it("cancels an upload", function()
      local client = assert(appcenter.new(emu:client_options()))
      local outcome
      local request = assert(client:start_upload(credential(client),
        { body = "x" }, function(...)
          outcome = { ... }
        end))

      assert.is_true(request:cancel())
      assert.equals("cancelled", outcome[2].kind)
      assert.is_false(request:cancel())
      client:close()
    end)

    it("returns an invalid timeout_ms at once", function()
      local client = assert(appcenter.new(emu:client_options()))
      local result = credential(client)
      local opts = { body = "x", timeout_ms = -1, deadline_ms = 60000 }
      local called = false
      local request, err = client:start_upload(result, opts, function()
        called = true
      end)

      assert.is_nil(request)
      assert.equals("invalid_argument", err.kind)
      assert.matches("timeout_ms must be", err.message, 1, true)
      assert.equals(0, client:pending())
      assert.is_false(called)

      local meta
      coroutine.wrap(function()
        meta, err = client:upload_async(result, opts)
      end)()

      assert.is_nil(meta)
      assert.equals("invalid_argument", err.kind)
      assert.equals(0, client:pending())
      assert.equals(0, emu:stats().obs_requests)
      client:close()
    end)

    it("does not retry a file that shrank", function()
      local path = make_file("wrapper-shrinks.bin", ("w"):rep(1024 * 1024))
      local retries = 0
      local client = assert(appcenter.new(emu:client_options{
        timeout_ms = 3000,
        retry = {
          base_delay_ms = 0,
          on_retry = function()
            retries = retries + 1
          end,
        },
      }))
      local result = credential(client, "wrapper-shrinks.bin")
      local outcome
      assert(client:start_upload(result, { path = path }, function(...)
        outcome = { n = select("#", ...), ... }
      end))
      write_file(path, "tiny")
      drive(client)

      assert.is_table(outcome, "the callback did not run")
      assert.is_nil(outcome[1])
      local err = outcome[2]
      assert.equals("invalid_argument", err.kind)
      assert.matches("changed size during the upload", err.message, 1, true)
      assert.equals(1, err.attempts)
      assert.equals(0, retries)
      assert.is_nil(emu:object(result.bucket_name, result.object_path))
      client:close()
    end)

    it("rejects a FIFO in upload_async at once", function()
      local path = directory .. "/async.fifo"
      assert(os.execute("mkfifo " .. shell_quote(path)))
      assert(os.execute(("timeout 5 sh -c 'sleep 2; : > %s' >/dev/null 2>&1 &")
        :format(shell_quote(path))))
      local client = assert(appcenter.new(emu:client_options()))
      local result = credential(client)
      local meta, err
      local started = core.monotonic()
      coroutine.wrap(function()
        meta, err = client:upload_async(result, { path = path })
      end)()
      local elapsed = core.monotonic() - started
      os.remove(path)

      assert.is_nil(meta)
      assert.is_true(elapsed < 1, ("upload_async took %.2f s"):format(elapsed))
      assert.is_table(err)
      assert.equals("invalid_argument", err.kind)
      assert.matches("not a regular file", err.message, 1, true)
      assert.equals(0, client:pending())
      client:close()
    end)

    it("uploads from a coroutine", function()
      local client = assert(appcenter.new(emu:client_options()))
      local result = credential(client, "co.bin")
      local meta, err
      coroutine.wrap(function()
        meta, err = client:upload_async(result, { body = "from a coroutine" })
      end)()
      drive(client)

      assert.is_nil(err)
      assert.equals(200, meta.status)
      assert_stored(result, 16,
        file_sha256(make_file("co.bin", "from a coroutine")))
      assert.has_error(function()
        client:upload_async(result, { body = "x" })
      end)
      client:close()
    end)
  end)
end)
