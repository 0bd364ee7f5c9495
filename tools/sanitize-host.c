/*
 * A minimal Lua host for make sanitize: the same job as the lua5.4 or
 * luajit command for running a script, but linked with the sanitizer
 * runtimes, so they cover the module without LD_PRELOAD leaking into
 * every child process the specs start.
 *
 * Usage: sanitize-host SCRIPT [ARGS...]
 */
#include <stdio.h>
#include <stdlib.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

int main(int argc, char **argv) {
  lua_State *L;
  int i, status;

  if (argc < 2) {
    fprintf(stderr, "usage: %s SCRIPT [ARGS...]\n", argv[0]);
    return 2;
  }
  L = luaL_newstate();
  if (L == NULL)
    return 1;
  luaL_openlibs(L);

  /* The global `arg` as the standalone interpreter sets it. */
  lua_createtable(L, argc - 2, 2);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - 1);
  }
  lua_setglobal(L, "arg");

  status = luaL_loadfile(L, argv[1]);
  if (status == 0) {
    for (i = 2; i < argc; i++)
      lua_pushstring(L, argv[i]);
    status = lua_pcall(L, argc - 2, 0, 0);
  }
  /* busted under Lua 5.1 and LuaJIT ends a run with failures by raising
   * nil, after it has printed its report, so nil gets no line. */
  if (status != 0 && lua_type(L, -1) == LUA_TSTRING)
    fprintf(stderr, "%s: %s\n", argv[0], lua_tostring(L, -1));
  else if (status != 0 && !lua_isnil(L, -1))
    fprintf(stderr, "%s: the script raised a %s value\n", argv[0],
            luaL_typename(L, -1));
  lua_close(L);
  return status == 0 ? 0 : 1;
}
