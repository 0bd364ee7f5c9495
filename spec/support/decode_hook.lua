-- Runs Lua code where a finalizer may run while appcenter.core builds a
-- result from a client's memory. The module decodes every response with
-- the cjson decode function that it keeps in the registry, so the hook
-- wraps that function for the next decode.

local decode_hook = {}

local DECODE_KEY = "appcenter.core.json_decode"

--- Makes the next response decode of every client call fn() first. The
-- original decode function is back in place after that decode, or after
-- decode_hook.remove().
function decode_hook.before_next_decode(fn)
  local registry = debug.getregistry()
  local decode = assert(registry[DECODE_KEY], "appcenter.core is not loaded")
  decode_hook.original = decode_hook.original or decode
  registry[DECODE_KEY] = function(text)
    registry[DECODE_KEY] = decode
    fn()
    return decode(text)
  end
end

--- Puts the original decode function back when a hook did not run.
function decode_hook.remove()
  if decode_hook.original then
    debug.getregistry()[DECODE_KEY] = decode_hook.original
  end
end

return decode_hook
