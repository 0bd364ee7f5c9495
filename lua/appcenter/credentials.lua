-- Credential sources of the wrapper: the environment variables and the
-- profile file that the official Huawei Cloud SDKs read.
--
-- credentials.resolve fills in what the caller's options leave out. Two
-- things are resolved, each from the first source that has it:
--
--   keys        token, or ak + sk (+ security_token)
--               1. options: a token, ak, sk or security_token option means
--                  the caller chose the credentials, so no source is read
--                  for them and core.new checks the combination as given
--               2. HUAWEICLOUD_SDK_AK, HUAWEICLOUD_SDK_SK and
--                  HUAWEICLOUD_SDK_SECURITY_TOKEN
--               3. ak, sk and security_token in section [basic] of the
--                  profile file
--   project_id  1. the project_id option
--               2. HUAWEICLOUD_SDK_PROJECT_ID
--               3. project_id in section [basic] of the profile file
--
-- ak, sk and security_token always come from one source together, never
-- ak from one source and sk from another, because a temporary key only
-- works with its own secret and security token. project_id is resolved on
-- its own, so a token option can go with a project id from the
-- environment. An empty environment variable or profile value counts as
-- not set. A source that sets only one of ak and sk, or security_token
-- without them, is an error, not a reason to try the next source.
--
-- The profile file is ~/.huaweicloud/credentials ($HOME), or the path in
-- HUAWEICLOUD_SDK_CREDENTIALS_FILE. It is read only when the options and
-- the environment leave something unresolved. A missing default file
-- counts as empty, but a missing file named by the variable is an error.
--
-- Problems with the sources are data errors, so resolve returns nil and
-- an invalid_argument error. Messages name variables, files, line numbers
-- and the four known keys, never a value.
--
-- The metadata-service provider of the SDKs is not implemented, so nothing
-- here opens a network connection.

local credentials = {}

-- Function that reads one environment variable, HOME included. Specs
-- replace it with a table lookup, because Lua cannot set environment
-- variables.
credentials.getenv = os.getenv

-- Size limit of the profile file in bytes. It only stops runaway input:
-- a file with keys and a temporary security token is a few KiB (an
-- estimate).
credentials.MAX_FILE_BYTES = 1024 * 1024

credentials.ENV_AK = "HUAWEICLOUD_SDK_AK"
credentials.ENV_SK = "HUAWEICLOUD_SDK_SK"
credentials.ENV_SECURITY_TOKEN = "HUAWEICLOUD_SDK_SECURITY_TOKEN"
credentials.ENV_PROJECT_ID = "HUAWEICLOUD_SDK_PROJECT_ID"
credentials.ENV_FILE = "HUAWEICLOUD_SDK_CREDENTIALS_FILE"

-- The profile section that contains the keys, as in the official SDKs.
credentials.SECTION = "basic"

-- io.open's error number for a file that does not exist.
local ENOENT = 2


-- Errors print like those of appcenter.core: "appcenter: <kind>: <message>".
local Error = {}
Error.__tostring = function(err)
  return ("appcenter: %s: %s"):format(err.kind, err.message)
end

local function invalid(message)
  return setmetatable({
    kind = "invalid_argument",
    code = "invalid_argument",
    message = message,
    retryable = false,
    attempts = 0,
  }, Error)
end


-- Returns the variable's value, or nil when it is unset or empty.
local function read_variable(getenv, name)
  local value = getenv(name)
  if value == nil or value == "" then
    return nil
  end
  return value
end

-- Returns whether `value` contains a control character, which no key,
-- token or project id contains. A line break copied from a file is the
-- usual cause.
local function has_control_character(value)
  return value:find("[%z\1-\31\127]") ~= nil
end


-- Profile file ----------------------------------------------------------

-- Keys whose names messages may show. Other keys are left out, because a
-- line of a secret wrapped onto its own line also parses as a key.
local KNOWN_KEYS = {
  ak = true, sk = true, security_token = true, project_id = true,
}

local function quote_known_key(key)
  if KNOWN_KEYS[key] then
    return "'" .. key .. "' "
  end
  return ""
end

-- Returns s without the white space around it. The usual pattern
-- "^%s*(.-)%s*$" backtracks over every run of inner white space, which
-- takes time quadratic in the run's length, so this finds the ends first.
local function trim(s)
  local first = s:find("%S")
  return first and s:match(".*%S", first) or ""
end

-- Parses INI text with "[section]" headers and "key = value" lines. Blank
-- lines and lines that start with "#" or ";" are comments. Keys are
-- lower-cased and values trimmed, as Python's configparser does by default.
-- A value ends at the end of its line, because there are no continuation
-- lines and no inline comments, so a "#" inside a value is kept. Returns a
-- table of sections, each mapping keys to {value = ..., line = ...}, or nil
-- and a message that names `path` and the line.
function credentials.parse_profile(text, path)
  local sections = {}
  local section_lines = {}
  local current
  local line_number = 0

  local function fail(problem)
    return nil, ("invalid credentials file %s, line %d: %s")
      :format(path, line_number, problem)
  end

  -- UTF-16 text, as some Windows editors save, starts with its byte order
  -- mark or has a NUL in every ASCII character, so among its first two
  -- characters. Text with lines that end in CR alone is one line here.
  if text:find("^\255\254") or text:find("^\254\255")
      or text:sub(1, 4):find("%z") then
    return nil, ("invalid credentials file %s: it is UTF-16 text; save it "
      .. "as UTF-8"):format(path)
  end
  if text:find("\r[^\n]") and not text:find("\n", 1, true) then
    return nil, ("invalid credentials file %s: its lines end in CR alone; "
      .. "save it with LF or CR LF line ends"):format(path)
  end

  -- A UTF-8 byte order mark, as some Windows editors write.
  text = text:gsub("^\239\187\191", "")
  for raw in (text .. "\n"):gmatch("([^\n]*)\n") do
    line_number = line_number + 1
    local line = trim((raw:gsub("\r$", "")))
    local first = line:sub(1, 1)

    if line == "" or first == "#" or first == ";" then
      -- Blank line or comment.
    elseif first == "[" then
      local name, rest = line:match("^%[([^%]]*)%](.*)$")
      if not name then
        return fail("section header has no closing ']'")
      elseif rest ~= "" then
        return fail("unexpected text after the section header's ']'")
      end
      name = trim(name)
      if name == "" then
        return fail("empty section name")
      elseif section_lines[name] then
        return fail(("duplicate section [%s], first opened on line %d")
          :format(name, section_lines[name]))
      end
      section_lines[name] = line_number
      sections[name] = {}
      current = name
    else
      local key, value = line:match("^([^=]*)=(.*)$")
      if not key then
        return fail("expected 'key = value' but found no '='")
      end
      key = trim(key):lower()
      if key == "" then
        return fail("missing key before '='")
      elseif not current then
        return fail("'key = value' line before any [section] header")
      end
      local entries = sections[current]
      if entries[key] then
        return fail(("duplicate key %sin section [%s], first set on line %d")
          :format(quote_known_key(key), current, entries[key].line))
      end
      entries[key] = { value = trim(value),
        line = line_number }
    end
  end
  return sections
end

-- Returns the profile file's path and whether HUAWEICLOUD_SDK_CREDENTIALS_FILE
-- named it. The path is nil when neither that variable nor HOME is set.
local function profile_path(getenv)
  local named = read_variable(getenv, credentials.ENV_FILE)
  if named then
    return named, true
  end
  local home = read_variable(getenv, "HOME")
  if home then
    return (home:gsub("/+$", "")) .. "/.huaweicloud/credentials", false
  end
  return nil, false
end

local function strip_path_prefix(message, path)
  local prefix = path .. ": "
  if message:sub(1, #prefix) == prefix then
    return message:sub(#prefix + 1)
  end
  return message
end

-- Returns a note for "missing" messages when the parsed profile file has
-- no [basic] section, naming a section that differs only in case.
local function missing_section_note(sections)
  local note = ("the file has no section [%s]"):format(credentials.SECTION)
  for name in pairs(sections) do
    if name:lower() == credentials.SECTION then
      return ("%s (section names are case-sensitive, and it has [%s])")
        :format(note, name)
    end
  end
  return note
end

-- Reads and parses the profile file. Returns its [basic] entries (an empty
-- table when the default file or the section does not exist), plus a note
-- when the file exists without that section. Returns nil and an error
-- when the file cannot be read or parsed.
local function read_profile(path, named)
  local origin = named and (" named by " .. credentials.ENV_FILE) or ""
  local file, message, errno = io.open(path, "rb")
  if not file then
    if errno == ENOENT and not named then
      return {}
    end
    return nil, invalid(("cannot open credentials file %s%s: %s")
      :format(path, origin, strip_path_prefix(message, path)))
  end

  local text
  text, message = file:read(credentials.MAX_FILE_BYTES + 1)
  file:close()
  if message then
    return nil, invalid(("cannot read credentials file %s%s: %s")
      :format(path, origin, strip_path_prefix(message, path)))
  end
  text = text or ""
  if #text > credentials.MAX_FILE_BYTES then
    return nil, invalid(("invalid credentials file %s: it is larger than"
      .. " %d bytes"):format(path, credentials.MAX_FILE_BYTES))
  end

  local sections
  sections, message = credentials.parse_profile(text, path)
  if not sections then
    return nil, invalid(message)
  end
  local entries = sections[credentials.SECTION]
  if not entries then
    return {}, missing_section_note(sections)
  end
  return entries
end


-- Sources ---------------------------------------------------------------

-- A source has the fields ak, sk, security_token and project_id that it
-- sets, plus label(field), the name of a field in that source,
-- origin(field), where a field's value comes from, and fail(field, text),
-- which builds an error message about a field that the source sets.

local KEY_FIELDS = { "ak", "sk", "security_token" }

local function environment_source(getenv)
  local variables = {
    ak = credentials.ENV_AK,
    sk = credentials.ENV_SK,
    security_token = credentials.ENV_SECURITY_TOKEN,
    project_id = credentials.ENV_PROJECT_ID,
  }
  local function variable_of(field)
    return variables[field]
  end
  local source = {
    label = variable_of,
    origin = variable_of,
    fail = function(_, text)
      return "invalid environment: " .. text
    end,
  }
  for field, variable in pairs(variables) do
    source[field] = read_variable(getenv, variable)
  end
  return source
end

local function profile_source(path, entries)
  local function origin(field)
    return ("credentials file %s, line %d"):format(path, entries[field].line)
  end
  local source = {
    label = function(field)
      return field
    end,
    origin = origin,
    fail = function(field, text)
      return ("invalid %s: %s"):format(origin(field), text)
    end,
  }
  for _, field in ipairs{ "ak", "sk", "security_token", "project_id" } do
    local entry = entries[field]
    if entry and entry.value ~= "" then
      source[field] = entry.value
    end
  end
  return source
end

-- Returns an error message when `field` of the source contains a control
-- character or is in quotes. Neither source strips quotes, so a quoted
-- key would be sent with them and fail to sign.
local function check_value(source, field)
  local value = source[field]
  if has_control_character(value) then
    return source.fail(field, ("%s contains a control character such as a"
      .. " line break; remove it"):format(source.label(field)))
  end
  if #value >= 2 and value:find("^([\"']).*%1$") then
    return source.fail(field, ("%s is in quotes; remove them, since the "
      .. "value is used as written"):format(source.label(field)))
  end
  return nil
end

-- Returns an error message when the source sets some keys but not both ak
-- and sk, or when a key contains a control character.
local function check_keys(source)
  local label = source.label
  if source.ak and not source.sk then
    return source.fail("ak", ("%s is set but %s is not; set both or"
      .. " neither"):format(label("ak"), label("sk")))
  elseif source.sk and not source.ak then
    return source.fail("sk", ("%s is set but %s is not; set both or"
      .. " neither"):format(label("sk"), label("ak")))
  elseif source.security_token and not source.ak then
    return source.fail("security_token", ("%s is set but %s and %s are not;"
      .. " a security token needs its temporary ak and sk")
      :format(label("security_token"), label("ak"), label("sk")))
  end

  for _, field in ipairs(KEY_FIELDS) do
    local message = source[field] and check_value(source, field)
    if message then
      return message
    end
  end

  -- Access keys are letters and digits. White space in one is most often
  -- a comment after the value, which the profile format does not have.
  for _, field in ipairs{ "ak", "sk" } do
    local value = source[field]
    if value and value:find("%s") then
      local comment = value:find("%s[#;]") and "; the credentials file has "
        .. "no comments after a value, so put the comment on a line of its own"
        or ""
      return source.fail(field, ("%s contains white space; remove it%s")
        :format(source.label(field), comment))
    end
  end
  return nil
end

-- Copies the keys of `source` into `resolved`, and where each came from
-- into `origins`, when it sets them. Returns whether it did, or nil and an
-- error.
local function take_keys(resolved, origins, source)
  local message = check_keys(source)
  if message then
    return nil, invalid(message)
  end
  if not source.ak then
    return false
  end
  for _, field in ipairs(KEY_FIELDS) do
    resolved[field] = source[field]
    origins[field] = source[field] and source.origin(field)
  end
  return true
end

-- Copies project_id of `source` into `resolved`, and where it came from
-- into `origins`, when it sets one. Returns whether it did, or nil and an
-- error.
local function take_project_id(resolved, origins, source)
  if not source.project_id then
    return false
  end
  local message = check_value(source, "project_id")
  if message then
    return nil, invalid(message)
  end
  resolved.project_id = source.project_id
  origins.project_id = source.origin("project_id")
  return true
end

-- Takes what `need` still lists from `source`. `need` has the boolean
-- fields keys and project_id, and each is cleared when the source sets
-- it. Returns true, or nil and an error.
local function fill_from(resolved, origins, source, need)
  local found, err
  if need.keys then
    found, err = take_keys(resolved, origins, source)
    if found == nil then
      return nil, err
    end
    need.keys = not found
  end
  if need.project_id then
    found, err = take_project_id(resolved, origins, source)
    if found == nil then
      return nil, err
    end
    need.project_id = not found
  end
  return true
end


-- Resolution ------------------------------------------------------------

-- Returns the advice for adding `keys` (a phrase such as "ak and sk") to
-- the profile file at `path`, or to a file named by the variable when
-- there is no default path. `note` describes what the file lacks, if known.
local function profile_advice(keys, path, note)
  local section = "section [" .. credentials.SECTION .. "]"
  if path then
    return ("add %s to %s of %s%s"):format(keys, section, path,
      note and " (" .. note .. ")" or "")
  end
  return ("set %s to a file whose %s has %s (HOME is not set, so "
    .. "~/.huaweicloud/credentials was not read)"):format(credentials.ENV_FILE,
    section, keys)
end

-- nginx starts its workers with an empty environment apart from TZ and
-- the variables that `env` lines of nginx.conf keep. So inside nginx the
-- "missing" messages name those lines.
local function nginx_advice(variables)
  if type(ngx) ~= "table" or type(ngx.config) ~= "table" then
    return ""
  end
  local lines = {}
  for i, name in ipairs(variables) do
    lines[i] = ("`env %s;`"):format(name)
  end
  return ("; inside nginx, keep the variables you use with `env` lines "
    .. "in the main context of nginx.conf (%s), because nginx clears its "
    .. "workers' environment"):format(table.concat(lines, ", "))
end

-- How callers of credentials.resolve pass credentials and project_id
-- themselves, for the advice in "missing" errors.
local DEFAULT_ADVICE = {
  credentials = "pass token, or ak and sk",
  project_id = "pass project_id",
}

local function missing_keys_error(path, note, advice)
  return invalid(("missing credentials: %s, or set %s and %s, or %s%s")
    :format(advice.credentials, credentials.ENV_AK, credentials.ENV_SK,
    profile_advice("ak and sk", path, note), nginx_advice({
      credentials.ENV_AK, credentials.ENV_SK, credentials.ENV_SECURITY_TOKEN,
      credentials.ENV_FILE, "HOME" })))
end

local function missing_project_id_error(path, note, advice)
  return invalid(("missing project_id: %s, or set %s, or %s%s")
    :format(advice.project_id, credentials.ENV_PROJECT_ID,
    profile_advice("project_id", path, note), nginx_advice({
      credentials.ENV_PROJECT_ID, credentials.ENV_FILE, "HOME" })))
end

-- Returns a copy of `opts` (the options for core.new) with the keys and
-- project_id filled in from the environment and the profile file, as the
-- header of this file describes, and a table that maps each option filled
-- in to where it came from, for credentials.add_origin. Returns nil and an
-- invalid_argument error instead when a source is invalid or incomplete.
-- The optional table `advice` replaces the start of the "missing"
-- messages. Its fields `credentials` and `project_id` tell how the
-- caller's users pass those, such as "pass --project-id ID" in a
-- command-line tool.
function credentials.resolve(opts, advice)
  advice = {
    credentials = advice and advice.credentials or DEFAULT_ADVICE.credentials,
    project_id = advice and advice.project_id or DEFAULT_ADVICE.project_id,
  }
  local resolved, origins = {}, {}
  for name, value in pairs(opts) do
    resolved[name] = value
  end
  local need = {
    keys = opts.token == nil and opts.ak == nil and opts.sk == nil
      and opts.security_token == nil,
    project_id = opts.project_id == nil,
  }

  local getenv = credentials.getenv
  local ok, err
  if need.keys or need.project_id then
    ok, err = fill_from(resolved, origins, environment_source(getenv), need)
    if not ok then
      return nil, err
    end
  end

  local path, named, note
  if need.keys or need.project_id then
    path, named = profile_path(getenv)
  end
  if path then
    local entries, note_or_err = read_profile(path, named)
    if not entries then
      return nil, note_or_err
    end
    note = note_or_err
    ok, err = fill_from(resolved, origins, profile_source(path, entries),
      need)
    if not ok then
      return nil, err
    end
  end

  if need.keys then
    return nil, missing_keys_error(path, note, advice)
  elseif need.project_id then
    return nil, missing_project_id_error(path, note, advice)
  end
  return resolved, origins
end

-- Adds to the message of `err`, an invalid_argument error of core.new,
-- the variable or the file and line that the rejected value came from,
-- when `origins` (from credentials.resolve) has it. The caller's code does
-- not contain such a value. Returns `err`.
function credentials.add_origin(err, origins)
  local field = type(err) == "table" and err.kind == "invalid_argument"
    and type(err.message) == "string" and err.message:match("^invalid ([%w_]+)")
  local origin = field and origins[field]
  if origin then
    err.message = ("%s (the value comes from %s)"):format(err.message, origin)
  end
  return err
end

return credentials
