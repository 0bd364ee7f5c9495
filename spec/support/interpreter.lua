-- The command that runs child Lua scripts in specs: the interpreter that
-- runs this spec, or APPCENTER_TEST_LUA when set. make sanitize sets it
-- to its sanitizer-linked host, because the plain interpreters cannot
-- load a module built with AddressSanitizer. Leak checks are off there:
-- LuaJIT's os.exit skips closing the state, so blocks that its own
-- allocator's memory points to would be reported as leaks.
return function()
  local host = os.getenv("APPCENTER_TEST_LUA")
  if host and host ~= "" then
    return host
  end
  if jit then
    return "luajit"
  end
  return "lua" .. _VERSION:match("%d+%.%d+")
end
