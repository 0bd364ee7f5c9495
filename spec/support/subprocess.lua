-- Runs Lua scripts in child processes for specs that need real
-- environment variables, which Lua cannot set in its own process.

local subprocess = {}

-- Returns the repository root, found from this file's own path, so that
-- specs and helpers work from any current directory.
function subprocess.repository_root()
  local source = debug.getinfo(1, "S").source
  if source:sub(1, 1) == "@" then
    local root = source:sub(2):match("^(.*)spec/support/subprocess%.lua$")
    if root == "" then
      return "."
    elseif root then
      return (root:gsub("/$", ""))
    end
  end
  return "."
end

function subprocess.shell_quote(value)
  return "'" .. tostring(value):gsub("'", "'\\''") .. "'"
end

function subprocess.read_file(path)
  local file = assert(io.open(path, "rb"))
  local text = file:read("*a")
  file:close()
  return text
end

function subprocess.write_file(path, text)
  local file = assert(io.open(path, "wb"))
  file:write(text)
  file:close()
end

-- Returns the command that runs child Lua scripts: the interpreter that
-- runs this spec, or APPCENTER_TEST_LUA when set. make sanitize sets it
-- to its sanitizer-linked host, because the plain interpreters cannot
-- load a module built with AddressSanitizer. Leak checks are off there,
-- because LuaJIT's os.exit skips closing the state, so blocks that its
-- own allocator's memory points to would be reported as leaks.
function subprocess.interpreter()
  local host = os.getenv("APPCENTER_TEST_LUA")
  if host and host ~= "" then
    return host
  end
  if jit then
    return "luajit"
  end
  return "lua" .. _VERSION:match("%d+%.%d+")
end

-- Runs `script` in a new Lua process with this process's module paths,
-- the variables named in `unset` removed, HOME set to `home` and the
-- variables in `env` set. With `max_files`, the process may have at most
-- that many open file descriptors (ulimit -n). With `timeout_s`, it is
-- stopped after that many seconds and the status is 124. Returns the exit
-- status, stdout and stderr.
function subprocess.run_lua(script, unset, home, env, max_files, timeout_s)
  local quote = subprocess.shell_quote
  local script_path = os.tmpname()
  local stderr_path = os.tmpname()
  subprocess.write_file(script_path, script)

  local words = { "env" }
  if timeout_s then
    words = { "timeout", ("%d"):format(timeout_s), "env" }
  end
  for _, name in ipairs(unset) do
    words[#words + 1] = "-u " .. name
  end
  words[#words + 1] = "LUA_PATH=" .. quote(package.path)
  words[#words + 1] = "LUA_CPATH=" .. quote(package.cpath)
  words[#words + 1] = "HOME=" .. quote(home)
  for name, value in pairs(env or {}) do
    words[#words + 1] = name .. "=" .. quote(value)
  end
  words[#words + 1] = subprocess.interpreter()
  words[#words + 1] = quote(script_path)
  local command = ("%s 2>%s </dev/null; echo \"exit=$?\"")
    :format(table.concat(words, " "), quote(stderr_path))
  if max_files then
    command = ("ulimit -n %d && %s"):format(max_files, command)
  end

  local pipe = assert(io.popen(command, "r"))
  local output = pipe:read("*a")
  pipe:close()
  local stderr = subprocess.read_file(stderr_path)
  os.remove(script_path)
  os.remove(stderr_path)

  local stdout, status = output:match("^(.-)exit=(%d+)\n$")
  return tonumber(status), stdout, stderr
end

return subprocess
