-- make demo: start the local emulator on a free port, ask the
-- command-line tool for a credential and print it, upload a small file
-- with --upload and print where it landed, stop the emulator.

package.path = "./?.lua;" .. package.path
local cjson = require("cjson")
local emulator = require("spec.support.emulator")

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- Quotes a word for display only when the shell needs it.
local function display_word(s)
  if s:match("^[%w%-%._/:=]+$") then
    return s
  end
  return shell_quote(s)
end

local emu = emulator.start()
print("emulator listening on " .. emu.url .. ", OBS uploads on "
  .. emu.obs_url)

local directory = os.tmpname()
os.remove(directory)
assert(os.execute("mkdir -m 700 " .. shell_quote(directory)))

local function finish(status)
  emu:stop()
  os.execute("rm -rf " .. shell_quote(directory))
  os.exit(status)
end

-- Runs appcenter-credential with `args` after printing the command, and
-- returns its standard output, or nil when it failed. The token travels in
-- the environment, not on the command line, where other local users could
-- read it.
local function run_tool(args)
  local words, display_words = {}, {}
  for i, value in ipairs(args) do
    words[i] = shell_quote(value)
    display_words[i] = display_word(value)
  end
  print("\n$ APPCENTER_TOKEN=... tools/appcenter-credential --endpoint "
    .. emu.url .. " --project-id " .. emu.project_id .. " "
    .. table.concat(display_words, " "))

  local command = table.concat({
    "APPCENTER_TOKEN=" .. shell_quote(emu.token),
    "lua5.4 tools/appcenter-credential",
    "--endpoint", shell_quote(emu.url),
    "--project-id", shell_quote(emu.project_id),
    table.concat(words, " "),
  }, " ")
  local pipe = assert(io.popen(command, "r"))
  local output = pipe:read("*a")
  local ok, termination, code = pipe:close()
  io.write(output)
  if not ok then
    io.stderr:write(("demo failed: appcenter-credential %s %s\n")
      :format(tostring(termination), tostring(code)))
    return nil
  end
  return output
end

if not run_tool({ "setup.exe" }) then
  finish(1)
end

local path = directory .. "/notes.txt"
local file = assert(io.open(path, "wb"))
file:write("Uploaded by make demo with a credential from the emulator.\n")
file:close()

local output = run_tool({ "--upload", path })
if not output then
  finish(1)
end
local landed = cjson.decode(output)
local object = emu:object(landed.bucket_name, landed.object_path)
print(("\nThe emulator stored %d bytes under %s/%s, SHA-256 %s.")
  :format(object.size, landed.bucket_name, landed.object_path, object.sha256))
finish(0)
