/*
 * Compatibility shims for Lua 5.1 (LuaJIT 2.1) through Lua 5.4.
 *
 * LuaJIT 2.1 already provides luaL_setfuncs, luaL_testudata and
 * luaL_newlib, so each shim is guarded by #ifndef or by the version.
 */
#ifndef AC_COMPAT_H
#define AC_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

#if LUA_VERSION_NUM < 502

#ifndef lua_rawlen
#define lua_rawlen(L, i) lua_objlen((L), (i))
#endif

#define ac_absindex(L, i) \
  (((i) > 0 || (i) <= LUA_REGISTRYINDEX) ? (i) : lua_gettop(L) + (i) + 1)

#else

#define ac_absindex(L, i) lua_absindex((L), (i))

#endif

/* Userdata with one user value: a table, so that Lua 5.1's environment
 * and Lua 5.2+'s user value work the same way. */
#if LUA_VERSION_NUM >= 504
#define ac_newuserdata(L, size) lua_newuserdatauv((L), (size), 1)
#define ac_getuservalue(L, i) ((void)lua_getiuservalue((L), (i), 1))
#define ac_setuservalue(L, i) ((void)lua_setiuservalue((L), (i), 1))
#elif LUA_VERSION_NUM >= 502
#define ac_newuserdata(L, size) lua_newuserdata((L), (size))
#define ac_getuservalue(L, i) ((void)lua_getuservalue((L), (i)))
#define ac_setuservalue(L, i) lua_setuservalue((L), (i))
#else
#define ac_newuserdata(L, size) lua_newuserdata((L), (size))
#define ac_getuservalue(L, i) lua_getfenv((L), (i))
#define ac_setuservalue(L, i) ((void)lua_setfenv((L), (i)))
#endif

/* Pushes the C function f. Lua 5.2 and later push a C function without
 * an upvalue as a light value. Lua 5.1 and LuaJIT allocate a closure,
 * which can raise a memory error and run finalizers. So there it is made
 * once per state and kept in the registry under the address key. Call
 * it once while the module loads to make it. */
#if LUA_VERSION_NUM >= 502
#define ac_push_cfunction(L, key, f) ((void)(key), lua_pushcfunction((L), (f)))
#else
static inline void ac_push_cfunction(lua_State *L, void *key,
                                     lua_CFunction f) {
  lua_pushlightuserdata(L, key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (!lua_isnil(L, -1))
    return;
  lua_pop(L, 1);
  lua_pushcfunction(L, f);
  lua_pushlightuserdata(L, key);
  lua_pushvalue(L, -2);
  lua_rawset(L, LUA_REGISTRYINDEX);
}
#endif

/* The Lua flavour the module was built for, used in the User-Agent.
 * The Makefile defines AC_LUAJIT for LuaJIT builds. */
#if defined(AC_LUAJIT)
#include <luajit.h>
#define AC_LUA_NAME LUAJIT_VERSION
#elif defined(LUA_RELEASE)
#define AC_LUA_NAME LUA_RELEASE
#else
#define AC_LUA_NAME LUA_VERSION
#endif

#endif
