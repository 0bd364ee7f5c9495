-- Summarise busted JSON reports (one file per Lua) and print the totals.
--
-- Usage: lua5.4 tools/test-summary.lua build/results-*.json
-- Prints each failure and error with its location and each skipped test
-- with its reason, then one line per Lua, and ends with "N passed,
-- N failed[, N skipped]". Exits with 1 when a test failed or a report
-- is missing or unreadable.

local cjson = require("cjson")

local function read_report(path)
  local f = io.open(path, "r")
  if not f then
    return nil, "cannot open " .. path
  end
  local text = f:read("*a")
  f:close()

  -- busted writes the report as the last line; anything a spec printed
  -- comes before it.
  local last
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, 1) == "{" then
      last = line
    end
  end
  if not last then
    return nil, path .. " holds no busted report (did busted crash?)"
  end
  local ok, report = pcall(cjson.decode, last)
  if not ok then
    return nil, path .. ": " .. tostring(report)
  end
  return report
end

local function where(item)
  local trace = item.trace or {}
  local src = trace.short_src or "?"
  return src .. ":" .. tostring(trace.currentline or "?")
end

local totals = { passed = 0, failed = 0, skipped = 0 }
local broken = false

for _, path in ipairs(arg) do
  local label = path:match("results%-(.-)%.json$") or path
  local report, err = read_report(path)
  if not report then
    io.stderr:write("error: ", err, "\n")
    broken = true
  else
    for _, kind in ipairs({ "failures", "errors" }) do
      for _, item in ipairs(report[kind]) do
        print(("[%s] %s: %s"):format(label, kind == "errors" and "ERROR"
          or "FAIL", item.name or "?"))
        print("    " .. where(item) .. ": "
          .. tostring(item.message):gsub("\n", "\n    "))
      end
    end
    for _, item in ipairs(report.pendings) do
      local reason = tostring(item.message or ""):match("^[^:]*:%d+: (.*)$")
        or tostring(item.message or "")
      print(("[%s] SKIP: %s (%s)"):format(label, item.name or "?", reason))
    end
    local failed = #report.failures + #report.errors
    print(("[%s] %d passed, %d failed, %d skipped"):format(label,
      #report.successes, failed, #report.pendings))
    totals.passed = totals.passed + #report.successes
    totals.failed = totals.failed + failed
    totals.skipped = totals.skipped + #report.pendings
  end
end

if #arg == 0 then
  io.stderr:write("error: no busted reports given\n")
  broken = true
end

local line = ("%d passed, %d failed"):format(totals.passed, totals.failed)
if totals.skipped > 0 then
  line = line .. (", %d skipped"):format(totals.skipped)
end
print(line)
os.exit((broken or totals.failed > 0) and 1 or 0)
