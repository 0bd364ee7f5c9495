package = "appcenter"
version = "scm-1"

source = {
  url = "git+file:///dev/null",
}

description = {
  summary = "Huawei Cloud Workspace App Center upload credentials for Lua",
  detailed = [[
    A C module (libcurl, lua-cjson, OpenSSL libcrypto) that calls App
    Center's create-credential API, plus a Lua wrapper with retries,
    deadlines and a retry budget.
  ]],
  license = "MIT",
}

dependencies = {
  "lua >= 5.1",
  -- lua-cjson is loaded at run time; Debian's lua-cjson package or the
  -- rock of the same name both work.
}

external_dependencies = {
  -- Only the library is checked: Debian keeps curl/curl.h in a multiarch
  -- include folder that the compiler searches but LuaRocks does not.
  CURL = { library = "curl" },
  OPENSSL = { header = "openssl/hmac.h", library = "crypto" },
}

build = {
  type = "builtin",
  modules = {
    ["appcenter.core"] = {
      sources = {
        "src/buf.c", "src/request.c", "src/sign.c", "src/region.c",
        "src/error.c", "src/response.c", "src/transport.c", "src/multi.c",
        "src/sign_lua.c", "src/obs.c", "src/upload.c", "src/core.c",
      },
      defines = { "_POSIX_C_SOURCE=200809L" },
      incdirs = { "$(OPENSSL_INCDIR)" },
      libdirs = { "$(CURL_LIBDIR)", "$(OPENSSL_LIBDIR)" },
      libraries = { "curl", "crypto", "pthread" },
    },
    ["appcenter"] = "lua/appcenter/init.lua",
    ["appcenter.options"] = "lua/appcenter/options.lua",
    ["appcenter.retry"] = "lua/appcenter/retry.lua",
    ["appcenter.budget"] = "lua/appcenter/budget.lua",
    ["appcenter.ngx"] = "lua/appcenter/ngx.lua",
    ["appcenter.async"] = "lua/appcenter/async.lua",
    ["appcenter.credentials"] = "lua/appcenter/credentials.lua",
  },
  install = {
    bin = { ["appcenter-credential"] = "tools/appcenter-credential" },
  },
}
