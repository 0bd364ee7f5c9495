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

#if LUA_VERSION_NUM < 504
#define ac_newuserdata(L, size) lua_newuserdata((L), (size))
#else
#define ac_newuserdata(L, size) lua_newuserdatauv((L), (size), 0)
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
