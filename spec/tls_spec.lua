-- TLS verification against the emulator serving HTTPS with certificates
-- from a throw-away CA that this spec creates with the openssl command.

local appcenter = require("appcenter")
local core = require("appcenter.core")
local emulator = require("spec.support.emulator")
local poll = require("spec.support.poll")
local subprocess = require("spec.support.subprocess")

local function shell_quote(value)
  return "'" .. tostring(value):gsub("'", "'\\''") .. "'"
end

local function run(command)
  local status = os.execute(command)
  return status == 0 or status == true
end

local function write_file(path, text)
  local file = assert(io.open(path, "w"))
  file:write(text)
  file:close()
end

-- Creates a CA and server certificates signed by it in a new temporary
-- directory. Returns the directory; the files are ca.pem, and for each
-- name in `servers` NAME.pem and NAME.key.
local function make_pki(servers)
  local dir = os.tmpname()
  os.remove(dir)
  assert(run("mkdir -m 700 " .. shell_quote(dir)))
  local function openssl(args)
    local command = "cd " .. shell_quote(dir) .. " && openssl " .. args .. " >openssl.log 2>&1"
    if not run(command) then
      local log = io.open(dir .. "/openssl.log"):read("*a")
      error("openssl " .. args .. " failed: " .. log, 2)
    end
  end

  openssl("req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2"
    .. " -subj '/CN=lua-appcenter test CA' -keyout ca.key -out ca.pem"
    .. " -addext basicConstraints=critical,CA:TRUE"
    .. " -addext keyUsage=critical,keyCertSign,cRLSign")
  for name, subject_alt_name in pairs(servers) do
    write_file(dir .. "/" .. name .. ".ext", table.concat({
      "basicConstraints = CA:FALSE",
      "keyUsage = critical, digitalSignature",
      "extendedKeyUsage = serverAuth",
      "subjectAltName = " .. subject_alt_name,
    }, "\n") .. "\n")
    openssl(("req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
      .. " -subj /CN=%s -keyout %s.key -out %s.csr"):format(name, name, name))
    openssl(("x509 -req -in %s.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2"
      .. " -extfile %s.ext -out %s.pem"):format(name, name, name))
  end

  -- expired.pem: valid for one day in 2020. Only `openssl ca` takes the
  -- dates, and it needs a configuration and a database.
  write_file(dir .. "/expired.ext", "subjectAltName = IP:127.0.0.1\n")
  write_file(dir .. "/ca.cnf", table.concat({
    "[ca]", "default_ca = test", "[test]", "database = index.txt",
    "new_certs_dir = .", "serial = expired.srl", "default_md = sha256",
    "policy = any", "[any]", "commonName = supplied",
  }, "\n") .. "\n")
  write_file(dir .. "/index.txt", "")
  write_file(dir .. "/expired.srl", "01\n")
  openssl("req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    .. " -subj /CN=expired -keyout expired.key -out expired.csr")
  openssl("ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -notext"
    .. " -in expired.csr -out expired.pem -extfile expired.ext"
    .. " -startdate 20200101000000Z -enddate 20200102000000Z")
  return dir
end

describe("TLS", function()
  local pki, good, other, self_signed, expired

  setup(function()
    pki = make_pki{
      loopback = "IP:127.0.0.1, DNS:localhost",
      other = "DNS:other.invalid",
    }
    good = emulator.start{ tls_cert = pki .. "/loopback.pem", tls_key = pki .. "/loopback.key" }
    other = emulator.start{ tls_cert = pki .. "/other.pem", tls_key = pki .. "/other.key" }
    local cert, key = emulator.make_certificate(pki)
    self_signed = emulator.start{ tls_cert = cert, tls_key = key }
    expired = emulator.start{ tls_cert = pki .. "/expired.pem", tls_key = pki .. "/expired.key" }
  end)

  teardown(function()
    for _, emu in ipairs{ good, other, self_signed, expired } do
      emu:stop()
    end
    run("rm -rf " .. shell_quote(pki))
  end)

  before_each(function()
    for _, emu in ipairs{ good, other, self_signed } do
      emu:reset()
    end
  end)

  local function options(emu, extra)
    local opts = { endpoint = emu.url, project_id = emu.project_id, token = emu.token }
    for key, value in pairs(extra or {}) do
      opts[key] = value
    end
    return opts
  end

  local function call(emu, extra)
    local client = assert(core.new(options(emu, extra)))
    local result, err = client:create_credential("setup.exe")
    client:close()
    return result, err
  end

  -- reason is a pattern for the message, whose wording comes from
  -- libcurl 7.88 and OpenSSL 3.0, so that each case fails for its own cause.
  local function assert_tls_error(err, reason)
    assert.is_table(err)
    assert.equals("tls", err.kind)
    assert.is_false(err.retryable)
    assert.matches(reason, err.message)
  end

  it("serves HTTPS", function()
    assert.matches("^https://127%.0%.0%.1:%d+$", good.url)
  end)

  it("rejects the test CA by default", function()
    local result, err = call(good)
    assert.is_nil(result)
    assert_tls_error(err, "unable to get local issuer certificate")
    assert.matches("pass that CA's certificate as ca_file", err.message, 1, true)
    assert.equals(0, good:stats().requests)
  end)

  it("accepts the server with ca_file", function()
    local result, meta = call(good, { ca_file = pki .. "/ca.pem" })
    assert.is_table(result, tostring(meta))
    assert.is_string(result.credential.access)
    assert.equals(1, good:stats().requests)
  end)

  it("accepts localhost by name with ca_file", function()
    local port = good.url:match(":(%d+)$")
    local client = assert(core.new{
      endpoint = "https://localhost:" .. port, project_id = good.project_id,
      token = good.token, ca_file = pki .. "/ca.pem",
    })
    local result, meta = client:create_credential("setup.exe")
    client:close()
    assert.is_table(result, tostring(meta))
    assert.equals(200, meta.status)
  end)

  it("rejects a certificate for another host name", function()
    local result, err = call(other, { ca_file = pki .. "/ca.pem" })
    assert.is_nil(result)
    assert_tls_error(err, "host name '127%.0%.0%.1'")
    -- With ca_file given, the hint does not tell the caller to pass one.
    assert.matches(" (the server's certificate must chain to a CA in ca_file, which replaces "
      .. "the system store, and name the endpoint's host)", err.message, 1, true)
    assert.equals(0, other:stats().requests)
  end)

  it("names an expired certificate", function()
    local result, err = call(expired, { ca_file = pki .. "/ca.pem" })

    assert.is_nil(result)
    assert_tls_error(err, "certificate has expired")
    assert.matches(" (the server's certificate has expired, or this "
      .. "machine's clock is wrong)", err.message, 1, true)
    assert.is_nil(err.message:find("pass that CA's certificate", 1, true))
  end)

  -- OpenSSL looks for an issuer it lacks in a CA path by its hashed name,
  -- so strace shows whether the system's /etc/ssl/certs is searched.
  it("trusts only ca_file when it is given", function()
    if not run("strace -o /dev/null true >/dev/null 2>&1") then
      pending("strace cannot trace processes here")
    end
    local script, trace = os.tmpname(), os.tmpname()
    write_file(script, ([[
      local core = require("appcenter.core")
      local client = assert(core.new{ endpoint = %q, project_id = %q,
        token = %q, ca_file = %q })
      local _, err = client:create_credential("setup.exe")
      io.write(err and err.kind or "ok")
    ]]):format(self_signed.url, self_signed.project_id, self_signed.token, pki .. "/ca.pem"))

    local pipe = assert(io.popen(("env LUA_PATH=%s LUA_CPATH=%s strace -f -e trace=file -o %s %s %s")
      :format(shell_quote(package.path), shell_quote(package.cpath), shell_quote(trace),
        subprocess.interpreter(), shell_quote(script))))
    local outcome = pipe:read("*a")
    pipe:close()
    local log = subprocess.read_file(trace)
    os.remove(script)
    os.remove(trace)

    assert.equals("tls", outcome)
    assert.is_nil(log:find("/etc/ssl/certs", 1, true), "the system store was searched")
  end)

  it("rejects a self-signed certificate outside ca_file", function()
    local result, err = call(self_signed, { ca_file = pki .. "/ca.pem" })
    assert.is_nil(result)
    assert_tls_error(err, "self%-signed certificate")
    assert.equals(0, self_signed:stats().requests)
  end)

  it("rejects a missing ca_file in new", function()
    local path = pki .. "/missing.pem"
    local client, err = core.new(options(good, { ca_file = path }))
    assert.is_nil(client)
    assert.equals("invalid_argument", err.kind)
    assert.equals("invalid ca_file '" .. path .. "': No such file or "
      .. "directory; pass a readable file of PEM certificates", err.message)
  end)

  it("rejects a directory as ca_file in new", function()
    local client, err = core.new(options(good, { ca_file = pki }))
    assert.is_nil(client)
    assert.equals("invalid_argument", err.kind)
    assert.equals("invalid ca_file '" .. pki .. "': it is a directory; "
      .. "pass a file of PEM certificates", err.message)
  end)

  it("rejects a FIFO as ca_file in new", function()
    local path = pki .. "/fifo.pem"
    assert(run("mkfifo " .. shell_quote(path)))

    local client, err = core.new(options(good, { ca_file = path }))
    os.remove(path)

    assert.is_nil(client)
    assert.equals("invalid_argument", err.kind)
    assert.equals("invalid ca_file '" .. path .. "': it is not a regular file, and it is read "
      .. "again for each new connection; pass a file of PEM certificates", err.message)
  end)

  it("reports a ca_file without certificates as a TLS error", function()
    local path = pki .. "/empty.pem"
    local file = assert(io.open(path, "w"))
    file:close()
    local result, err = call(good, { ca_file = path })
    os.remove(path)
    assert.is_nil(result)
    assert.is_table(err)
    assert.equals("tls", err.kind)
    assert.equals(0, good:stats().requests)
  end)

  it("skips verification with verify_tls = false", function()
    for _, emu in ipairs{ good, other, self_signed } do
      local result, meta = call(emu, { verify_tls = false })
      assert.is_table(result, tostring(meta))
      assert.is_string(result.credential.access)
    end
  end)

  it("verifies in non-blocking requests", function()
    local client = assert(core.new(options(other, { ca_file = pki .. "/ca.pem" })))
    local outcome
    client:start("setup.exe", function(result, err)
      outcome = { result = result, err = err }
    end)
    poll.until_done(client, function()
      return outcome
    end, 100, 100)
    client:close()
    assert.is_table(outcome)
    assert.is_nil(outcome.result)
    assert_tls_error(outcome.err, "host name")
  end)

  it("suggests http:// for a plain HTTP server", function()
    local plain = emulator.start()
    local endpoint = plain.url:gsub("^http://", "https://")
    local result, err = call(plain, { endpoint = endpoint })
    plain:stop()

    assert.is_nil(result)
    assert_tls_error(err, "wrong version number")
    assert.is_not_nil(err.message:find("write http:// in the endpoint", 1,
      true), err.message)
  end)

  it("does not retry a TLS error in the wrapper", function()
    local retries = 0
    local client = assert(appcenter.new(options(other, {
      ca_file = pki .. "/ca.pem",
      retry = {
        max_attempts = 3, base_delay_ms = 1,
        on_retry = function() retries = retries + 1 end,
      },
    })))
    local result, err = client:create_credential("setup.exe")
    client:close()
    assert.is_nil(result)
    assert_tls_error(err, "host name")
    assert.equals(1, err.attempts)
    assert.equals(0, retries)
    assert.equals(1, other:stats().connections)
  end)
end)
