-- make demo: start the local emulator on a free port, ask the
-- command-line tool for a credential, print it, stop the emulator.

package.path = "./?.lua;" .. package.path
local emulator = require("spec.support.emulator")

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local emu = emulator.start()
print("emulator listening on " .. emu.url)

-- The token travels in the environment, not on the command line, where
-- other local users could read it.
local command = table.concat({
  "APPCENTER_TOKEN=" .. shell_quote(emu.token),
  "lua5.4 tools/appcenter-credential",
  "--endpoint", shell_quote(emu.url),
  "--project-id", shell_quote(emu.project_id),
  "setup.exe",
}, " ")
print("$ APPCENTER_TOKEN=... tools/appcenter-credential --endpoint "
  .. emu.url .. " --project-id " .. emu.project_id .. " setup.exe")

local ok, how, code = os.execute(command)
emu:stop()
if ok ~= true and ok ~= 0 then
  io.stderr:write(("demo failed: appcenter-credential %s %s\n")
    :format(tostring(how), tostring(code)))
  os.exit(1)
end
