-- Uploads with an issued credential to the emulator's OBS port, through
-- appcenter.core and the appcenter wrapper. The emulator checks the OBS
-- signature, the security token, its expiry and the policy, and stores
-- each object so that its size and SHA-256 can be compared.

local appcenter = require("appcenter")
local core = require("appcenter.core")
local emulator = require("spec.support.emulator")

local MIB = 1024 * 1024
local BIG_FILE_BYTES = 200 * MIB
-- Growth of the uploading process's memory allowed for the 200 MiB file:
-- far below its size, so the file is certainly streamed.
local MAX_MEMORY_GROWTH_KIB = 16 * 1024
local EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

local function shell_quote(value)
  return "'" .. tostring(value):gsub("'", "'\\''") .. "'"
end

local function run(command)
  local status = os.execute(command)
  assert(status == true or status == 0, "command failed: " .. command)
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

-- Returns the base64 MD5 of a file, as a Content-MD5 header carries it.
local function file_md5_base64(path)
  local pipe = assert(io.popen("openssl dgst -md5 -binary " .. shell_quote(path)
    .. " | openssl base64", "r"))
  local output = pipe:read("*a")
  pipe:close()
  return (output:gsub("%s+$", ""))
end

-- Returns a field of /proc/self/status such as VmRSS or VmHWM, in KiB.
local function memory_kib(field)
  local file = assert(io.open("/proc/self/status", "r"))
  local status = file:read("*a")
  file:close()
  local kib = status:match(field .. ":%s*(%d+) kB")
  assert(kib, field .. " not found in /proc/self/status")
  return tonumber(kib)
end

describe("upload", function()
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
    run("rm -rf " .. shell_quote(directory))
  end)

  before_each(function()
    emu:reset()
  end)

  local function new_core_client()
    local client, err = core.new(emu:client_options())
    assert.is_nil(err)
    return client
  end

  local function new_wrapper_client(overrides)
    local client, err = appcenter.new(emu:client_options(overrides))
    assert.is_nil(err)
    return client
  end

  local function credential(client, file_name)
    local result, meta_or_err = client:create_credential(file_name or "replay.bin")
    assert.is_table(result, tostring(meta_or_err))
    return result
  end

  -- Writes `data` to a file in the temporary directory and returns its path.
  local function make_file(name, data)
    local path = directory .. "/" .. name
    write_file(path, data)
    return path
  end

  local function assert_stored(result, size, sha256)
    local object = emu:object(result.bucket_name, result.object_path)
    assert.is_table(object, "no object stored under " .. result.object_path)
    assert.equals(size, object.size)
    assert.equals(sha256, object.sha256)
    return object
  end

  local function assert_nothing_stored(result)
    assert.is_nil(emu:object(result.bucket_name, result.object_path))
  end

  describe("through core", function()
    it("uploads a string", function()
      local client = new_core_client()
      local result = credential(client, "note.txt")
      local body = "first line\nsecond line\n"
      local meta, err = client:upload(result, { body = body })

      assert.is_nil(err)
      assert.equals(200, meta.status)
      assert.equals(#body, meta.bytes)
      assert.equals(1, meta.attempts)
      assert.is_number(meta.elapsed_ms)
      assert.matches("^%x+$", meta.request_id)
      assert.matches("^http://appcenter%-emulator%-bucket%.localhost:%d+/app%-file/%x+/note%.txt$",
        meta.url)
      local object = assert_stored(result, #body, file_sha256(make_file("note.txt", body)))
      assert.equals('"' .. object.md5 .. '"', meta.etag)
      assert.equals("text/plain", object.content_type)
    end)

    it("uploads a small file", function()
      local data = {}
      for i = 1, 5000 do
        data[i] = ("line %05d of a small replay file\n"):format(i)
      end
      local path = make_file("small.bin", table.concat(data))
      local client = new_core_client()
      local result = credential(client, "small.bin")
      local meta, err = client:upload(result, { path = path })

      assert.is_nil(err)
      assert.equals(200, meta.status)
      assert.equals(#table.concat(data), meta.bytes)
      local object = assert_stored(result, meta.bytes, file_sha256(path))
      assert.equals("application/octet-stream", object.content_type)
    end)

    it("uploads an empty file", function()
      local path = make_file("empty.bin", "")
      local client = new_core_client()
      local result = credential(client, "empty.bin")
      local calls = {}
      local meta, err = client:upload(result, {
        path = path,
        progress = function(sent, total)
          calls[#calls + 1] = { sent, total }
        end,
      })

      assert.is_nil(err)
      assert.equals(200, meta.status)
      assert.equals(0, meta.bytes)
      assert_stored(result, 0, EMPTY_SHA256)
      assert.same({ { 0, 0 } }, calls)
    end)

    it("keeps dot segments of the key", function()
      local client = new_core_client()
      local result = credential(client, "dots/../x.bin")
      local meta, err = client:upload(result, { body = "dots" })

      assert.is_nil(err)
      assert.matches("/dots/%.%./x%.bin$", meta.url)
      assert_stored(result, 4, file_sha256(make_file("dots.bin", "dots")))
    end)

    it("counts bytes in integers", function()
      local client = new_core_client()
      local result = credential(client, "note.txt")
      local counts = {}
      local meta, err = client:upload(result, {
        body = "twelve bytes",
        progress = function(sent, total)
          counts[#counts + 1] = sent
          counts[#counts + 1] = total
        end,
      })

      assert.is_nil(err)
      counts[#counts + 1] = meta.bytes
      -- LuaJIT has one number type, so only Lua 5.3 and later can tell.
      local number_type = math.type or function() return "integer" end
      for _, count in ipairs(counts) do
        assert.equals("integer", number_type(count))
      end
      assert.equals(12, meta.bytes)
    end)

    it("streams 200 MiB in bounded memory", function()
      local path = directory .. "/big.bin"
      run(("dd if=/dev/urandom of=%s bs=1M count=%d status=none")
        :format(shell_quote(path), BIG_FILE_BYTES / MIB))
      local expected_sha256 = file_sha256(path)
      local client = new_core_client()
      local result = credential(client, "big.bin")

      collectgarbage()
      collectgarbage()
      local rss_before = memory_kib("VmRSS")
      local peak_before = memory_kib("VmHWM")
      local max_rss = rss_before
      local calls = {}
      local meta, err = client:upload(result, {
        path = path,
        progress = function(sent, total)
          calls[#calls + 1] = { sent, total }
          max_rss = math.max(max_rss, memory_kib("VmRSS"))
        end,
      })
      local peak_growth = memory_kib("VmHWM") - peak_before
      local rss_growth = max_rss - rss_before
      os.remove(path)

      assert.is_nil(err)
      assert.equals(BIG_FILE_BYTES, meta.bytes)
      assert_stored(result, BIG_FILE_BYTES, expected_sha256)
      local measured = ("VmRSS before %d KiB, growth %d KiB; VmHWM growth %d KiB")
        :format(rss_before, rss_growth, peak_growth)
      assert.is_true(peak_growth < MAX_MEMORY_GROWTH_KIB, measured)
      assert.is_true(rss_growth < MAX_MEMORY_GROWTH_KIB, measured)

      assert.is_true(#calls >= 1)
      for i, call in ipairs(calls) do
        assert.equals(BIG_FILE_BYTES, call[2])
        if i > 1 then
          assert.is_true(call[1] >= calls[i - 1][1], "progress went back")
        end
      end
      assert.equals(BIG_FILE_BYTES, calls[#calls][1])
    end)

    it("percent-encodes each segment of the key", function()
      local client = new_core_client()
      local result = credential(client, "replay 01 #1?%+é.bin")
      local meta, err = client:upload(result, { body = "data" })

      assert.is_nil(err)
      assert.matches("/replay%%2001%%20%%231%%3F%%25%%2B%%C3%%A9%.bin$", meta.url)
      assert_stored(result, 4, file_sha256(make_file("encoded.bin", "data")))
    end)

    it("sends a Content-MD5 that the emulator verifies", function()
      local path = make_file("checked.bin", ("checked "):rep(10000))
      local client = new_core_client()
      local result = credential(client, "checked.bin")
      local meta, err = client:upload(result, { path = path, content_md5 = true })

      assert.is_nil(err)
      assert.equals(200, meta.status)
      local object = assert_stored(result, meta.bytes, file_sha256(path))
      assert.equals(file_md5_base64(path), object.content_md5)
      assert.equals(file_md5_base64(path),
        emu:stats().last_obs_request.headers["content-md5"])
    end)

    it("sends no Content-MD5 by default", function()
      local client = new_core_client()
      local result = credential(client)
      assert.is_table(client:upload(result, { body = "x" }))
      assert.is_nil(emu:stats().last_obs_request.headers["content-md5"])
    end)

    it("uploads in path style", function()
      local client = new_core_client()
      local result = credential(client, "path-style.bin")
      local meta, err = client:upload(result, { body = "path style", path_style = true })

      assert.is_nil(err)
      assert.equals("http://" .. emu.server_end_point .. "/appcenter-emulator-bucket/"
        .. result.object_path, meta.url)
      assert.equals(emu.server_end_point, emu:stats().last_obs_request.headers.host)
      assert_stored(result, 10, file_sha256(make_file("path-style.bin", "path style")))
    end)

    -- A small body goes out at once, and a large one waits for OBS to
    -- check the signature first.
    it("waits for 100 Continue from 1 MiB", function()
      local client = new_core_client()
      for _, case in ipairs({ { 5, nil }, { 1024 * 1024 - 1, nil },
          { 1024 * 1024, "100-continue" } }) do
        local meta, err = client:upload(credential(client, "expect.bin"),
          { body = ("e"):rep(case[1]) })

        assert.is_table(meta, tostring(err))
        assert.equals(case[2], emu:stats().last_obs_request.headers.expect,
          case[1] .. " bytes")
      end
    end)

    it("uses the given content type", function()
      local client = new_core_client()
      local result = credential(client, "replay.bin")
      assert.is_table(client:upload(result, { body = "x", content_type = "application/x-replay" }))
      assert.equals("application/x-replay",
        emu:object(result.bucket_name, result.object_path).content_type)
    end)

    -- A server strips the white space around a header value before it
    -- checks the signature, so the signature covers the value without it.
    it("signs header values without white space", function()
      local client = new_core_client()
      for _, content_type in ipairs({ "text/plain ", " text/plain", "\ttext/plain\t" }) do
        local result = credential(client, "spaced.txt")
        result.credential.security_token = " " .. result.credential.security_token .. "\t"
        local meta, err = client:upload(result, { body = "x", content_type = content_type })

        assert.is_table(meta, ("%q: %s"):format(content_type, tostring(err)))
        assert.equals("text/plain",
          emu:object(result.bucket_name, result.object_path).content_type)
      end
    end)

    it("guesses the content type from path, then key", function()
      local client = new_core_client()
      local cases = {
        { "shot.png", "shot.json", "application/json" },
        { "shot.png", "noextension", "image/png" },
        { "shot.png", "data.unknown", "image/png" },
        { "shot.data", "data.bin", "application/octet-stream" },
      }
      for _, case in ipairs(cases) do
        local result = credential(client, case[1])
        local meta, err = client:upload(result, {
          path = make_file(case[2], "typed") })

        assert.is_table(meta, tostring(err))
        assert.equals(case[3],
          emu:object(result.bucket_name, result.object_path).content_type,
          case[1] .. " from " .. case[2])
      end
    end)

    it("runs uploads one after another", function()
      local client = new_core_client()
      assert.is_table(client:upload(credential(client), { body = "one" }))
      assert.is_table(client:upload(credential(client), { body = "two" }))
      assert.equals(2, emu:stats().objects)
    end)
  end)

  describe("rejection", function()
    local function assert_http_error(err, code)
      assert.is_table(err)
      assert.equals("http", err.kind)
      assert.equals(403, err.status)
      assert.equals(code, err.code)
      assert.is_false(err.retryable)
      assert.matches("^%x+$", err.request_id)
      assert.matches("^appcenter: http " .. code .. ": OBS: ", tostring(err))
    end

    it("uses https for an OBS host that is not loopback", function()
      -- 0.0.0.0 reaches the emulator's plain-http OBS port without being
      -- a loopback address, so the upload must try TLS and fail.
      local client = new_core_client()
      local result = credential(client, "remote.bin")
      result.server_end_point = result.server_end_point:gsub("^localhost", "0.0.0.0")

      local meta, err = client:upload(result, { body = "x", path_style = true })

      assert.is_nil(meta)
      assert.matches("the server did not reply in TLS", err.message, 1, true)
      assert.equals(0, emu:stats().obs_requests)
    end)

    it("uploads to a loopback OBS host without the proxy", function()
      local client = assert(core.new(emu:client_options{ proxy = "http://127.0.0.1:1" }))
      local result = credential(client, "direct.bin")

      local meta, err = client:upload(result, { body = "direct" })

      assert.is_table(meta, tostring(err))
      assert.equals(200, meta.status)
      client:close()
    end)

    it("raises when an __index closes the client", function()
      local client = new_core_client()
      local result = credential(client, "closing.bin")
      local opts = setmetatable({ body = "x" }, { __index = function()
        client:close()
      end })

      local ok, message = pcall(client.upload, client, result, opts)

      assert.is_false(ok)
      assert.matches("appcenter.core: the client is closed", message, 1, true)
      assert.equals(0, emu:stats().obs_requests)
    end)

    it("rejects line breaks in header values", function()
      local client = new_core_client()
      local result = credential(client, "inject.bin")
      local meta, err = client:upload(result, { body = "x",
        content_type = "text/plain\r\nX-Evil: 1" })

      assert.is_nil(meta)
      assert.equals("invalid_argument", err.kind)
      assert.matches("content_type", err.message, 1, true)

      result.credential.security_token = result.credential.security_token
        .. "\r\nX-Evil: 1"
      meta, err = client:upload(result, { body = "x" })

      assert.is_nil(meta)
      assert.equals("invalid_argument", err.kind)
      assert.matches("credential.security_token contains a line break",
        err.message, 1, true)
      assert.equals(0, emu:stats().obs_requests)
    end)

    it("rejects another key with AccessDenied", function()
      local client = new_core_client()
      local result = credential(client, "mine.bin")
      local allowed_path = result.object_path
      result.object_path = allowed_path:gsub("mine%.bin$", "other.bin")
      local meta, err = client:upload(result, { body = "x" })

      assert.is_nil(meta)
      assert_http_error(err, "AccessDenied")
      assert.matches("policy does not allow PutObject", err.message, 1, true)
      assert.is_nil(err.expired)
      assert_nothing_stored(result)
      assert.is_nil(emu:object(result.bucket_name, allowed_path))
    end)

    it("rejects a wrong secret with SignatureDoesNotMatch", function()
      local client = new_core_client()
      local result = credential(client)
      result.credential.secret = result.credential.secret .. "x"
      local meta, err = client:upload(result, { body = "x" })

      assert.is_nil(meta)
      assert_http_error(err, "SignatureDoesNotMatch")
      assert_nothing_stored(result)
    end)

    it("marks an expired credential", function()
      emu:config{ credential_ttl = 1 }
      local client = new_core_client()
      local result = credential(client)
      core.sleep(1.2)
      local meta, err = client:upload(result, { body = "x" })

      assert.is_nil(meta)
      assert_http_error(err, "InvalidAccessKeyId")
      assert.is_true(err.expired)
      assert.matches("expired", err.message, 1, true)
      assert_nothing_stored(result)
    end)

    it("uploads before the credential expires", function()
      emu:config{ credential_ttl = 60 }
      local client = new_core_client()
      local result = credential(client)
      assert.is_table(client:upload(result, { body = "x" }))
    end)

    -- The core client sends no x-obs-security-token header for an empty
    -- token, so OBS receives a request without a token.
    it("rejects an empty security token", function()
      local client = new_core_client()
      local result = credential(client)
      result.credential.security_token = ""
      local meta, err = client:upload(result, { body = "x" })

      assert.is_nil(meta)
      assert_http_error(err, "InvalidAccessKeyId")
      assert.matches("security token is missing", err.message, 1, true)
      assert.is_nil(emu:stats().last_obs_request.headers["x-obs-security-token"])
      assert_nothing_stored(result)
    end)

    it("rejects another credential's security token", function()
      local client = new_core_client()
      local result = credential(client)
      result.credential.security_token = credential(client).credential.security_token
      local meta, err = client:upload(result, { body = "x" })

      assert.is_nil(meta)
      assert_http_error(err, "InvalidAccessKeyId")
      assert.matches("security token is invalid", err.message, 1, true)
    end)

    it("rejects nil security_token locally", function()
      local client = new_core_client()
      local result = credential(client)
      result.credential.security_token = nil
      local meta, err = client:upload(result, { body = "x" })

      assert.is_nil(meta)
      assert.equals("invalid_argument", err.kind)
      assert.matches("credential.security_token", err.message, 1, true)
      assert.equals(0, emu:stats().obs_requests)
    end)

    it("rejects a missing file naming the path", function()
      local client = new_core_client()
      local result = credential(client)
      local path = directory .. "/does-not-exist.bin"
      local meta, err = client:upload(result, { path = path })

      assert.is_nil(meta)
      assert.equals("invalid_argument", err.kind)
      assert.matches(path, err.message, 1, true)
      assert.is_false(err.retryable)
      assert.equals(0, emu:stats().obs_requests)
    end)

    -- A blocking open of a FIFO waits for a writer. The writer, which
    -- opens the FIFO after 2 s, bounds that wait, so that a blocking
    -- open fails the time check instead of hanging the suite.
    it("rejects a FIFO without blocking", function()
      local path = directory .. "/upload.fifo"
      run("mkfifo " .. shell_quote(path))
      run(("timeout 5 sh -c 'sleep 2; : > %s' >/dev/null 2>&1 &"):format(shell_quote(path)))
      local client = new_core_client()
      local result = credential(client)
      local started = core.monotonic()
      local meta, err = client:upload(result, { path = path })
      local elapsed = core.monotonic() - started
      os.remove(path)

      assert.is_nil(meta)
      assert.is_true(elapsed < 1, ("upload took %.2f s"):format(elapsed))
      assert.equals("invalid_argument", err.kind)
      assert.equals('invalid path "' .. path .. '": not a regular file', err.message)
      assert.is_false(err.retryable)
      assert.equals(0, emu:stats().obs_requests)
    end)

    -- Files in /proc report a size of 0 bytes, so an upload would store
    -- an empty object in place of their content.
    it("rejects a size-0 file with content", function()
      local client = new_core_client()
      local meta, err = client:upload(credential(client), { path = "/proc/self/status" })

      assert.is_nil(meta)
      assert.equals("invalid_argument", err.kind)
      assert.matches('"/proc/self/status"', err.message, 1, true)
      assert.matches("size of 0 bytes", err.message, 1, true)
      assert.equals(0, emu:stats().obs_requests)
    end)

    it("keeps a path message on one line", function()
      local client = new_core_client()
      local result = credential(client)
      local _, err = client:upload(result, { path = "/nonexistent/bad\nname\r.bin" })
      assert.equals("invalid_argument", err.kind)
      assert.matches('"/nonexistent/bad?name?.bin"', err.message, 1, true)
      assert.is_nil(err.message:find("[\r\n]"))

      -- A long path is cut at a character boundary and marked.
      local long = "/nonexistent/" .. ("é"):rep(150)
      _, err = client:upload(result, { path = long })
      assert.matches('é..."', err.message, 1, true)
      assert.equals(0, emu:stats().obs_requests)
    end)

    it("closes the file of a rejected upload", function()
      -- /proc/self in the shell of io.popen would be the shell's.
      local stat = assert(io.open("/proc/self/stat"))
      local pid = stat:read("*l"):match("^(%d+)")
      stat:close()

      local function open_descriptors()
        local count = 0
        local listing = assert(io.popen("ls /proc/" .. pid .. "/fd"))
        for _ in listing:lines() do
          count = count + 1
        end
        listing:close()
        return count
      end

      local client = new_core_client()
      local result = credential(client)
      local before = open_descriptors()
      -- Without collection, only an explicit close frees the descriptors.
      collectgarbage("stop")
      for _ = 1, 50 do
        assert.is_nil(client:upload(result, { path = "/proc/self/status" }))
        assert.is_nil(client:start_upload(result, { path = "/proc/self/status" }, function() end))
      end
      local after = open_descriptors()
      collectgarbage("restart")

      assert.is_true(after - before < 10, ("%d descriptors before, %d after"):format(before, after))
    end)

    it("rejects both path and body", function()
      local client = new_core_client()
      local meta, err = client:upload(credential(client), { path = "/dev/null", body = "x" })

      assert.is_nil(meta)
      assert.equals("invalid_argument", err.kind)
      assert.matches("exactly one of path", err.message, 1, true)
    end)

    it("rejects an invalid timeout_ms", function()
      local client = new_core_client()
      local result = credential(client)
      for _, value in ipairs({ -1, math.huge, 0 / 0 }) do
        local meta, err = client:upload(result, { body = "x", timeout_ms = value })
        assert.is_nil(meta)
        assert.equals("invalid_argument", err.kind)
        assert.matches("timeout_ms", err.message, 1, true)
      end
      assert.equals(0, emu:stats().obs_requests)
    end)

    it("raises on a wrongly typed option", function()
      local client = new_core_client()
      local result = credential(client)
      assert.has_error(function()
        client:upload(result, { body = "x", timeout_ms = "100" })
      end, "upload: option 'timeout_ms' must be a number, got string")
      assert.equals(0, emu:stats().obs_requests)
    end)

    it("raises on an unknown option", function()
      local client = new_core_client()
      local result = credential(client)
      assert.has_error(function()
        client:upload(result, { body = "x", content_typ = "text/plain" })
      end, "upload: unknown option 'content_typ'")
    end)

    it("raises on an unknown option in the wrapper", function()
      local client = new_wrapper_client()
      local result = credential(client)
      assert.has_error(function()
        client:create_and_upload("typo.bin", { body = "x", timeout = 5 })
      end, "create_and_upload: unknown option 'timeout' (did you mean 'timeout_ms'?)")
      client:close()
    end)

    it("times out after timeout_ms", function()
      emu:fault{ target = "obs", delay_ms = 2000, status = 200 }
      local client = new_core_client()
      local started = core.monotonic()
      local meta, err = client:upload(credential(client), { body = "x", timeout_ms = 300 })

      assert.is_nil(meta)
      assert.equals("timeout", err.kind)
      assert.is_true(err.retryable)
      assert.is_true(core.monotonic() - started < 1.9)
      assert.matches("(the limits are the upload's timeout_ms, the client's "
        .. "connect_timeout_ms, and the client's timeout_ms for a transfer "
        .. "slower than 1 byte per second)", err.message, 1, true)
    end)

    -- The emulator waits before it checks the date, as a slow network
    -- would, and the upload did not wait for a connection.
    it("names the clock for a date too far off", function()
      emu:config{ max_skew_seconds = 2 }
      emu:fault{ target = "obs", delay_ms = 3500 }
      local client = new_core_client()
      local meta, err = client:upload(credential(client), { body = "x" })

      assert.is_nil(meta)
      assert.equals("RequestTimeTooSkewed", err.code)
      assert.is_false(err.retryable)
      assert.matches("(check this machine's clock: OBS accepts a date at "
        .. "most 15 minutes from its own)", err.message, 1, true)
    end)

    it("rounds a fractional timeout_ms up", function()
      emu:fault{ target = "obs", delay_ms = 2000, status = 200 }
      local client = new_core_client()
      local started = core.monotonic()
      local meta, err = client:upload(credential(client), { body = "x", timeout_ms = 0.5 })

      assert.is_nil(meta)
      assert.equals("timeout", err.kind)
      assert.is_true(core.monotonic() - started < 1.9)
    end)
  end)

  describe("progress", function()
    it("keeps the body alive when the callback drops it", function()
      local client = new_core_client()
      local result = credential(client, "kept.bin")
      -- Built at run time, so that only the options table refers to it.
      local opts = { body = ("k"):rep(4 * MIB - 1) .. "!" }
      local expected_sha256 = file_sha256(make_file("kept.bin", opts.body))
      local expected_bytes = #opts.body
      opts.progress = function()
        opts.body = nil
        result.credential.secret = nil
        result.credential.security_token = nil
        collectgarbage()
      end
      -- OBS waits before it reads the request, so the callback runs
      -- before libcurl has read the body.
      emu:fault{ target = "obs", delay_ms = 1500, times = 1 }
      local meta, err = client:upload(result, opts)

      assert.is_nil(err)
      assert.equals(expected_bytes, meta.bytes)
      assert_stored(result, expected_bytes, expected_sha256)
    end)

    it("ends at the total for a small body", function()
      local client = new_core_client()
      local calls = {}
      local body = ("p"):rep(100000)
      local meta = client:upload(credential(client), {
        body = body,
        progress = function(sent, total)
          calls[#calls + 1] = { sent, total }
        end,
      })

      assert.is_table(meta)
      assert.is_true(#calls >= 1)
      assert.same({ #body, #body }, calls[#calls])
    end)

    it("aborts when the callback returns false", function()
      local path = directory .. "/abort.bin"
      run(("dd if=/dev/zero of=%s bs=1M count=64 status=none"):format(shell_quote(path)))
      local client = new_core_client()
      local result = credential(client, "abort.bin")
      local calls = 0
      local meta, err = client:upload(result, {
        path = path,
        progress = function()
          calls = calls + 1
          return false
        end,
      })
      os.remove(path)

      assert.is_nil(meta)
      assert.equals("cancelled", err.kind)
      assert.matches("progress callback", err.message, 1, true)
      assert.equals(1, calls)
      assert.is_true(client:upload(credential(client), { body = "after" }).status == 200)
    end)

    -- An empty body gets its only call after the transfer, which takes
    -- another path through the core client.
    for _, body in ipairs({ "x", "" }) do
      it("propagates callback error, " .. #body .. "-byte body", function()
        local client = new_core_client()
        local ok, message = pcall(client.upload, client, credential(client), {
          body = body,
          progress = function()
            error("progress failed on purpose")
          end,
        })

        assert.is_false(ok)
        assert.matches("progress failed on purpose", tostring(message), 1, true)
        assert.is_true(client:upload(credential(client), { body = "after" }).status == 200)
      end)
    end

    -- OBS waits before it reads the request, so libcurl has read only
    -- the first part of the 64 MiB file when the callback empties it.
    -- A read callback that returns end of file early would leave the
    -- transfer waiting until the client's timeout_ms.
    it("aborts when the file shrinks", function()
      local path = directory .. "/shrinks.bin"
      run(("dd if=/dev/zero of=%s bs=1M count=64 status=none"):format(shell_quote(path)))
      local client = assert(core.new(emu:client_options{ timeout_ms = 3000 }))
      local result = credential(client, "shrinks.bin")
      emu:fault{ target = "obs", delay_ms = 1500, times = 1 }
      local started = core.monotonic()
      local meta, err = client:upload(result, {
        path = path,
        progress = function()
          write_file(path, "")
        end,
      })
      local elapsed = core.monotonic() - started
      os.remove(path)

      assert.is_nil(meta)
      assert.is_table(err)
      assert.equals("invalid_argument", err.kind)
      assert.is_false(err.retryable)
      assert.matches(path, err.message, 1, true)
      assert.matches("changed size during the upload", err.message, 1, true)
      assert.matches("of the 67108864 bytes", err.message, 1, true)
      assert.is_true(elapsed < 2.9, ("upload took %.2f s"):format(elapsed))
      assert.is_nil(emu:object(result.bucket_name, result.object_path))
      assert.is_true(client:upload(credential(client), { body = "after" }).status == 200)
    end)

    -- Only the size at open time is sent, so appended bytes are left out.
    it("sends the size at open of a growing file", function()
      local path = make_file("grows.bin", ("g"):rep(1024 * 1024))
      local expected_sha256 = file_sha256(path)
      local client = new_core_client()
      local result = credential(client, "grows.bin")
      emu:fault{ target = "obs", delay_ms = 500, times = 1 }
      local appended = false
      local meta, err = client:upload(result, {
        path = path,
        progress = function()
          if not appended then
            appended = true
            local file = assert(io.open(path, "ab"))
            assert(file:write(("h"):rep(4096)))
            assert(file:close())
          end
        end,
      })

      assert.is_nil(err)
      assert.is_true(appended)
      assert.equals(1024 * 1024, meta.bytes)
      assert_stored(result, 1024 * 1024, expected_sha256)
    end)

    it("rejects nested upload from callback", function()
      local client = new_core_client()
      local inner = credential(client, "inner.bin")
      local ok, message = pcall(client.upload, client, credential(client), {
        body = "outer",
        progress = function()
          client:upload(inner, { body = "inner" })
        end,
      })

      assert.is_false(ok)
      assert.matches("upload called during an upload", tostring(message), 1, true)
      assert.is_nil(emu:object(inner.bucket_name, inner.object_path))
      assert.is_true(client:upload(inner, { body = "after" }).status == 200)
    end)
    it("rejects close from callback", function()
      local client = new_core_client()
      local ok, message = pcall(client.upload, client, credential(client), {
        body = "closing",
        progress = function()
          client:close()
        end,
      })

      assert.is_false(ok)
      assert.matches("close called from an upload", tostring(message), 1, true)
      assert.is_true(client:upload(credential(client), { body = "after" }).status == 200)
    end)
  end)

  describe("through the wrapper", function()
    it("reads options through __index", function()
      local client = new_wrapper_client()
      local result = credential(client, "index.bin")
      local opts = setmetatable({}, { __index = { body = "indexed" } })

      local meta, err = client:upload(result, opts)

      assert.is_nil(err)
      assert.equals(7, meta.bytes)
      client:close()
    end)

    it("refuses close from a progress callback", function()
      local client = new_wrapper_client()
      local result = credential(client, "close.bin")
      local ok, message = pcall(client.upload, client, result, {
        body = "x",
        progress = function()
          client:close()
        end,
      })

      assert.is_false(ok)
      assert.matches("close called from an upload's progress callback",
        message, 1, true)
      assert.matches("^[^:]*upload_spec%.lua:%d+: ", message)
      assert.is_table(client:create_credential("after.bin"))
      client:close()
    end)

    it("names the deadline that cut an upload", function()
      emu:fault{ target = "obs", delay_ms = 1500, times = 1 }
      local client = new_wrapper_client{ retry = { max_attempts = 1 } }
      local result = credential(client, "deadline.bin")
      local meta, err = client:upload(result, { body = "x", deadline_ms = 300 })
      client:close()

      assert.is_nil(meta)
      assert.equals("timeout", err.kind)
      assert.matches("(retry.deadline_ms cut this attempt's timeout to the "
        .. "time left)", err.message, 1, true)
      assert.is_nil(err.message:find("the limits are", 1, true), err.message)
    end)

    -- The blocking upload's callback polls a non-blocking upload, whose
    -- own progress callback runs and returns inside it.
    it("rejects close after nested progress callbacks", function()
      local client = new_wrapper_client()
      local result = credential(client, "nested.bin")
      local close_ok, close_message
      local meta, err = client:upload(result, {
        body = "outer",
        progress = function()
          if close_ok ~= nil then
            return
          end
          assert(client:start_upload(result, { body = "inner",
            progress = function() end }, function() end))
          while client:pending() > 0 do
            client:poll(10)
          end
          close_ok, close_message = pcall(client.close, client)
        end,
      })

      assert.is_table(meta, tostring(err))
      assert.is_false(close_ok)
      assert.matches("close called from an upload's progress callback",
        close_message, 1, true)
      assert.is_table(client:create_credential("after.bin"))
      client:close()
    end)

    it("uploads a file", function()
      local path = make_file("wrapped.bin", ("w"):rep(4096))
      local client = new_wrapper_client()
      local result = credential(client, "wrapped.bin")
      local meta, err = client:upload(result, { path = path })
      client:close()

      assert.is_nil(err)
      assert.equals(200, meta.status)
      assert.equals(1, meta.attempts)
      assert_stored(result, 4096, file_sha256(path))
    end)

    it("retries 503 and resends the file", function()
      local path = make_file("retried.bin", ("r"):rep(300000))
      emu:fault{ target = "obs", status = 503, after_body = true }
      local retries = {}
      local client = new_wrapper_client{ retry = {
        base_delay_ms = 0,
        on_retry = function(err, attempt)
          retries[#retries + 1] = { err.status, err.code, attempt }
        end,
      } }
      local result = credential(client, "retried.bin")
      local meta, err = client:upload(result, { path = path })
      client:close()

      assert.is_nil(err)
      assert.equals(2, meta.attempts)
      assert.same({ { 503, "ServiceUnavailable", 1 } }, retries)
      assert.equals(2, emu:stats().obs_requests)
      assert_stored(result, 300000, file_sha256(path))
    end)

    it("close from on_retry stops upload", function()
      emu:fault{ target = "obs", status = 503, after_body = true }
      local client
      client = new_wrapper_client{ retry = {
        base_delay_ms = 0,
        on_retry = function()
          client:close()
        end,
      } }
      local result = credential(client, "closed.bin")

      local ok, meta, err = pcall(client.upload, client, result,
        { body = "x" })

      assert.is_true(ok, tostring(meta))
      assert.is_nil(meta)
      assert.equals("cancelled", err.kind)
      assert.equals("the client was closed", err.message)
      assert.equals(1, err.attempts)
      assert.equals(1, emu:stats().obs_requests)
    end)

    it("retries a 503 for a string body", function()
      emu:fault{ target = "obs", status = 503, after_body = true, times = 2 }
      local client = new_wrapper_client{ retry = { base_delay_ms = 0 } }
      local result = credential(client, "string.bin")
      local meta, err = client:upload(result, { body = "retried string" })
      client:close()

      assert.is_nil(err)
      assert.equals(3, meta.attempts)
      assert_stored(result, 14, file_sha256(make_file("string.bin", "retried string")))
    end)

    it("does not retry an expired credential", function()
      emu:config{ credential_ttl = 0 }
      local client = new_wrapper_client{ retry = { base_delay_ms = 0 } }
      local result = credential(client)
      local meta, err = client:upload(result, { body = "x" })
      client:close()

      assert.is_nil(meta)
      assert.is_true(err.expired)
      assert.equals(1, err.attempts)
      assert.equals(1, emu:stats().obs_requests)
    end)

    it("stops at the upload deadline", function()
      emu:fault{ target = "obs", status = 503, times = 5 }
      -- A draw of 0.99 makes the first backoff 396 ms, which does not fit
      -- into the 300 ms deadline.
      local client = new_wrapper_client{ retry = {
        base_delay_ms = 400, max_attempts = 5, random = function() return 0.99 end,
      } }
      local result = credential(client)
      local started = core.monotonic()
      local meta, err = client:upload(result, { body = "x", deadline_ms = 300 })
      client:close()

      assert.is_nil(meta)
      assert.equals(503, err.status)
      assert.equals(1, err.attempts)
      assert.is_true(core.monotonic() - started < 5)
    end)

    it("accepts a deadline beyond one day", function()
      -- appcenter.core accepts at most 86400000 ms as timeout_ms, so the
      -- time left before these deadlines cannot be an attempt's timeout.
      local client = new_wrapper_client()
      local result = credential(client)
      for _, deadline_ms in ipairs({ 90000000, 7 * 86400000, math.huge }) do
        local meta, err = client:upload(result, { body = "x", deadline_ms = deadline_ms })

        assert.is_nil(err, "deadline_ms = " .. tostring(deadline_ms))
        assert.equals(200, meta.status)
      end
      client:close()
    end)

    it("allows timeout_ms 0 under a deadline", function()
      -- timeout_ms 0 means no limit, so no attempt may time out although
      -- OBS delays each of the 3 attempts by 50 ms.
      emu:fault{ target = "obs", delay_ms = 50, times = 3 }
      local client = new_wrapper_client()
      local result = credential(client)
      local meta, err = client:upload(result, { body = "x", timeout_ms = 0, deadline_ms = 60000 })
      client:close()

      assert.is_nil(err)
      assert.equals(200, meta.status)
      assert.equals(1, meta.attempts)
    end)

    it("raises on wrong argument types", function()
      local client = new_wrapper_client()
      assert.has_error(function()
        client:upload("result", {})
      end)
      assert.has_error(function()
        client:upload({}, "opts")
      end)
      assert.has_error(function()
        client:upload({}, { deadline_ms = 0 })
      end)
      assert.has_error(function()
        client:upload({}, { body = "x", deadline_ms = 0 / 0 })
      end, "bad option 'deadline_ms' to 'upload' (number >= 1 expected, "
        .. "got nan)")
      assert.has_error(function()
        client:create_and_upload(nil, { body = "x" })
      end)
      client:close()
    end)

    it("does not retry a file that shrank", function()
      local path = directory .. "/wrapper-shrinks.bin"
      run(("dd if=/dev/zero of=%s bs=1M count=64 status=none"):format(shell_quote(path)))
      local retries = 0
      local client = new_wrapper_client{ timeout_ms = 3000, retry = {
        base_delay_ms = 0,
        on_retry = function()
          retries = retries + 1
        end,
      } }
      local result = credential(client, "wrapper-shrinks.bin")
      emu:fault{ target = "obs", delay_ms = 1500, times = 1 }
      local meta, err = client:upload(result, {
        path = path,
        progress = function()
          write_file(path, "tiny")
        end,
      })
      client:close()
      os.remove(path)

      assert.is_nil(meta)
      assert.is_table(err)
      assert.equals("invalid_argument", err.kind)
      assert.matches("changed size during the upload", err.message, 1, true)
      assert.equals(1, err.attempts)
      assert.equals(0, retries)
      assert.is_nil(emu:object(result.bucket_name, result.object_path))
    end)

    it("creates and uploads in one call", function()
      local path = make_file("both.bin", ("b"):rep(1000))
      local client = new_wrapper_client()
      local meta, err = client:create_and_upload("both.bin", { path = path })
      client:close()

      assert.is_nil(err)
      assert.equals(200, meta.status)
      assert.equals(emulator.BUCKET_NAME, meta.bucket_name)
      assert.matches("^app%-file/%x+/both%.bin$", meta.object_path)
      assert.equals("http://" .. emulator.BUCKET_NAME .. "." .. emu.server_end_point .. "/"
        .. meta.object_path, meta.url)
      assert.matches('^"%x+"$', meta.etag)
      assert.matches("^%x+$", meta.request_id)
      assert_stored({ bucket_name = meta.bucket_name, object_path = meta.object_path },
        1000, file_sha256(path))
    end)

    -- Upload options with a bad value, and appcenter.core's message for each.
    local function timeout_message(value)
      local value_text = value ~= value and "nan" or ("%.17g"):format(value)
      return "invalid upload options: timeout_ms must be a number of "
        .. "milliseconds from 0 (no limit) to 86400000, got " .. value_text
    end

    local function invalid_value_cases()
      local missing = directory .. "/missing.bin"
      return {
        { { path = missing },
          'invalid path "' .. missing .. '": No such file or directory' },
        { { path = directory .. "/missing-dir/x.bin", content_md5 = true },
          'invalid path "' .. directory .. '/missing-dir/x.bin": No such file or directory' },
        { { body = "x", path = "/dev/null" },
          "invalid upload options: pass exactly one of path (a file) or body (a string)" },
        { {}, "invalid upload options: pass exactly one of path (a file) or body (a string)" },
        { { body = "x", timeout_ms = -1 }, timeout_message(-1) },
        { { body = "x", timeout_ms = math.huge }, timeout_message(math.huge) },
        { { body = "x", timeout_ms = 0 / 0 }, timeout_message(0 / 0) },
        { { path = "/etc/hostname\0.bin" },
          "invalid path: NUL byte at byte 14; remove NUL bytes" },
        { { body = "x", content_type = "" },
          "invalid upload option content_type: it is empty" },
        { { body = "x", content_type = "text/plain\r\nX-Evil: 1" },
          "invalid upload option content_type: line break at byte 11; remove line breaks (a trailing newline from a file is a common cause)" },
        { { body = "x", content_type = "text/plain\0" },
          "invalid upload option content_type: NUL byte at byte 11; remove NUL bytes" },
        { { body = "x", content_type = " \t " },
          "invalid upload option content_type: it contains only white space; pass a media type such as text/plain, or leave content_type out" },
      }
    end

    it("create_and_upload checks values before sending", function()
      local client = new_wrapper_client()
      for _, case in ipairs(invalid_value_cases()) do
        local meta, err = client:create_and_upload("checked.bin", case[1])

        assert.is_nil(meta)
        assert.equals("invalid_argument", err.kind)
        assert.equals(case[2], err.message)
        assert.is_false(err.retryable)
      end
      client:close()

      assert.equals(0, emu:stats().requests)
      assert.equals(0, emu:stats().obs_requests)
    end)

    -- The writer that opens the FIFO after 2 s bounds the wait of a
    -- blocking open, as in the core's FIFO spec.
    it("create_and_upload rejects a FIFO first", function()
      local path = directory .. "/create.fifo"
      run("mkfifo " .. shell_quote(path))
      run(("timeout 5 sh -c 'sleep 2; : > %s' >/dev/null 2>&1 &"):format(shell_quote(path)))
      local client = new_wrapper_client()
      local cases = {
        { path, 'invalid path "' .. path .. '": not a regular file' },
        { directory, 'invalid path "' .. directory .. '": not a regular file' },
        { "/proc/self/status", "size of 0 bytes" },
      }
      for _, case in ipairs(cases) do
        local started = core.monotonic()
        local meta, err = client:create_and_upload("special.bin", { path = case[1] })
        local elapsed = core.monotonic() - started

        assert.is_nil(meta)
        assert.is_true(elapsed < 1, ("create_and_upload took %.2f s"):format(elapsed))
        assert.equals("invalid_argument", err.kind)
        assert.matches(case[2], err.message, 1, true)
      end
      client:close()
      os.remove(path)

      assert.equals(0, emu:stats().requests)
      assert.equals(0, emu:stats().obs_requests)
    end)

    it("checks values with the core's messages", function()
      local core_client = new_core_client()
      local result = credential(core_client)
      local client = new_wrapper_client()
      for _, case in ipairs(invalid_value_cases()) do
        local _, core_err = core_client:upload(result, case[1])
        local _, err = client:upload(result, case[1])

        assert.equals(core_err.message, err.message)
        assert.equals(getmetatable(core_err), getmetatable(err))
      end
      core_client:close()
      client:close()

      assert.equals(0, emu:stats().obs_requests)
    end)

    it("create_and_upload raises before sending", function()
      local cases = {
        { { bdy = "typo" },
          "create_and_upload: unknown option 'bdy' (did you mean 'body'?)" },
        { { body = 5 }, "create_and_upload: option 'body' must be a string, got number" },
        { { body = "x", progress = true },
          "create_and_upload: option 'progress' must be a function, got boolean" },
        { { file = "x" }, "create_and_upload: unknown option 'file' (valid "
          .. "options: body, content_md5, content_type, deadline_ms, path, "
          .. "path_style, progress, timeout_ms)" },
        { { body = "x", [1] = "x" }, "create_and_upload: option names must be "
          .. "strings, got the number key 1; pass options as name = value" },
      }
      local client = new_wrapper_client()
      for _, case in ipairs(cases) do
        local ok, message = pcall(client.create_and_upload, client, "raised.bin", case[1])

        assert.is_false(ok)
        assert.equals(case[2], (message:gsub("^[^:]*:%d+: ", "")))
      end
      client:close()

      assert.equals(0, emu:stats().requests)
    end)

    it("create_and_upload option error names caller", function()
      local client = new_wrapper_client()
      local ok, message = pcall(function()
        local meta = client:create_and_upload("raised.bin", { body = 5 })
        return meta
      end)
      client:close()

      assert.is_false(ok)
      assert.matches("^[^:]*upload_spec%.lua:%d+: create_and_upload: ", message)
    end)

    it("rejects timeout_ms -1 under a deadline", function()
      local client = new_wrapper_client()
      local result = credential(client)
      local meta, err = client:upload(result, { body = "x", timeout_ms = -1, deadline_ms = 60000 })
      client:close()

      assert.is_nil(meta)
      assert.equals("invalid_argument", err.kind)
      assert.matches("timeout_ms must be", err.message, 1, true)
      assert.equals(0, emu:stats().obs_requests)
    end)

    it("returns the credential error from create_and_upload", function()
      local client = new_wrapper_client{ token = "fake-wrong-token" }
      local meta, err = client:create_and_upload("x.bin", { body = "x" })
      client:close()

      assert.is_nil(meta)
      assert.equals(401, err.status)
      assert.equals(0, emu:stats().obs_requests)
    end)
  end)

  describe("over TLS", function()
    local tls_emu, cert_path, key_path

    setup(function()
      cert_path, key_path = emulator.make_certificate()
      tls_emu = emulator.start{ tls_cert = cert_path, tls_key = key_path }
    end)

    teardown(function()
      tls_emu:stop()
      os.remove(cert_path)
      os.remove(key_path)
      os.remove((cert_path:gsub("/cert%.pem$", "")))
    end)

    it("uploads over https in virtual-host style", function()
      local client = assert(core.new(tls_emu:client_options()))
      local result = credential(client, "secure.bin")
      local meta, err = client:upload(result, { body = "over TLS" })

      assert.is_nil(err)
      assert.matches("^https://appcenter%-emulator%-bucket%.localhost:%d+/", meta.url)
      local object = tls_emu:object(result.bucket_name, result.object_path)
      assert.equals(8, object.size)
    end)
  end)
end)
