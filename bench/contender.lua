--- The contender protocol of bench/run.py, for Lua 5.4 and LuaJIT scripts.
--
--   lua bench/SCRIPT.lua URL REQUESTS FILE_NAME [CA_FILE] [MODE]
--
-- Credentials come from the environment: APPCENTER_TOKEN, APPCENTER_AK,
-- APPCENTER_SK and APPCENTER_PROJECT_ID. A script sets up its client,
-- then calls contender.run, which prints "ready", makes the requests,
-- prints "done N" with the number that succeeded and, after a failure,
-- the error. The driver times the span between "ready" and "done".

local contender = {}

--- Returns the command-line arguments and credentials as one table.
function contender.settings()
  local requests = tonumber(arg[2])
  if not arg[1] or not requests or not arg[3] then
    io.stderr:write("usage: ", arg[0], " URL REQUESTS FILE_NAME [CA_FILE] [MODE]\n")
    os.exit(2)
  end
  local ca_file = arg[4]
  if ca_file == "" or ca_file == "-" then
    ca_file = nil
  end
  return {
    url = arg[1],
    requests = requests,
    file_name = arg[3],
    ca_file = ca_file,
    mode = arg[5],
    token = os.getenv("APPCENTER_TOKEN"),
    ak = os.getenv("APPCENTER_AK"),
    sk = os.getenv("APPCENTER_SK"),
    project_id = os.getenv("APPCENTER_PROJECT_ID"),
  }
end

--- Calls request(i) for i = 1..requests, stopping at the first failure.
-- request returns true, or nil and an error message. Exits 0 when every
-- request succeeded, 1 otherwise.
function contender.run(requests, request)
  io.stdout:write("ready\n")
  io.stdout:flush()
  local ok, err = 0, nil
  for i = 1, requests do
    local success, message = request(i)
    if not success then
      err = string.format("request %d: %s", i, tostring(message))
      break
    end
    ok = ok + 1
  end
  io.stdout:write("done ", ok, "\n")
  if err then
    io.stdout:write(err, "\n")
  end
  io.stdout:flush()
  os.exit(ok == requests and 0 or 1)
end

--- Checks a decoded create-credential response the same way in every
-- peer script: the fields that a caller reads must be strings.
function contender.check_credential(decoded)
  if type(decoded) ~= "table" or type(decoded.credential) ~= "table" then
    return nil, "response has no credential object"
  end
  local credential = decoded.credential
  if type(credential.access) ~= "string" or type(credential.secret) ~= "string"
      or type(credential.security_token) ~= "string" or type(decoded.object_path) ~= "string" then
    return nil, "credential fields are not strings"
  end
  return true
end

return contender
