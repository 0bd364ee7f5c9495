/*
 * A Lua 5.4 host for allocation-failure injection: like
 * tools/sanitize-host.c, but the lua_State runs on an allocator that
 * fails growing requests on demand. The script gets a global table
 * `oom`:
 *
 *   oom.fail_after(k [, burst])  fail the k-th growing allocation from now
 *                                on and the burst - 1 after it
 *                                (default: every one until oom.off())
 *   oom.off()                    disarm; returns the growing allocations
 *                                seen and failed since arming
 *   oom.pcall(k, burst, f, ...)  arm as fail_after(k, burst), call f in
 *                                protected mode, disarm; returns the
 *                                number failed, then pcall's results
 *
 * oom.pcall disarms in C before any Lua code runs, so the script's own
 * bookkeeping never meets a failed allocation. After a failed
 * allocation Lua 5.4 runs an emergency collection and retries once, and
 * raises "not enough memory" only when the retry fails too. So a burst
 * of 1 raises nothing, and a burst of 2 raises one error and then lets
 * allocations succeed again. Only requests that grow a block count,
 * because Lua assumes that shrinking never fails.
 *
 * With OOM_BACKTRACE set in the environment, the first failed request
 * of each arming prints the C stack that made it, through the
 * sanitizer runtime that the host is linked with, and the Lua functions
 * running on the main thread.
 *
 * Usage: oom SCRIPT [ARGS...]
 */
#include <stdio.h>
#include <stdlib.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#if LUA_VERSION_NUM < 504
#error "tests/oom.c needs Lua 5.4, whose retry after an emergency collection the burst counts assume"
#endif

/* From the sanitizer runtime; weak, so that a plain build links too. */
void __sanitizer_print_stack_trace(void) __attribute__((weak));

typedef struct oom_state {
  lua_State *L;            /* the main thread, for Lua backtraces */
  int armed;
  int backtrace;           /* print the stack of the first failure */
  lua_Integer first;       /* the first failed request, counted from 1 */
  lua_Integer burst;       /* requests that fail from first on, or all
                            * of them when negative */
  lua_Integer seen;        /* growing requests since arming */
  lua_Integer failed;      /* of those, the ones that failed */
} oom_state;

static oom_state state;


/* Keeps every shared object mapped until the process exits. Lua 5.4
 * unloads C modules in lua_close, and LeakSanitizer, which reports after
 * that, can then name no frame inside appcenter.core or cjson.so. This
 * definition in the executable takes the place of libc's for liblua. */
int dlclose(void *handle);

int dlclose(void *handle) {
  (void)handle;
  return 0;
}


/* Prints the Lua functions that run on L, innermost first. lua_getinfo
 * with "Sl" only reads, so it is safe inside the allocator. */
static void print_lua_stack(lua_State *L) {
  lua_Debug ar;
  int level;

  for (level = 0; L != NULL && lua_getstack(L, level, &ar); level++) {
    if (!lua_getinfo(L, "Sl", &ar))
      break;
    fprintf(stderr, "    lua #%d %s:%d\n", level, ar.short_src,
            ar.currentline);
  }
}


/* A growing request is a new block (ptr NULL, where osize is the type
 * of the object, not a size) or a larger size for an existing one. */
static void *oom_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  oom_state *s = ud;

  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  if (s->armed && (ptr == NULL || nsize > osize)) {
    s->seen++;
    if (s->seen >= s->first
        && (s->burst < 0 || s->seen < s->first + s->burst)) {
      if (s->failed++ == 0 && s->backtrace
          && __sanitizer_print_stack_trace != NULL) {
        fprintf(stderr, "oom: failed growing request %ld (%lu bytes):\n",
                (long)s->seen, (unsigned long)nsize);
        __sanitizer_print_stack_trace();
        print_lua_stack(s->L);
      }
      return NULL;
    }
  }
  return realloc(ptr, nsize);
}


static void arm(lua_State *L, int k_idx, int burst_idx) {
  lua_Integer k = luaL_checkinteger(L, k_idx);
  lua_Integer burst = luaL_optinteger(L, burst_idx, -1);

  luaL_argcheck(L, k >= 1, k_idx, "k must be 1 or more");
  luaL_argcheck(L, burst != 0, burst_idx, "burst must not be 0");
  state.first = k;
  state.burst = burst;
  state.seen = 0;
  state.failed = 0;
  state.armed = 1;
}


static int l_fail_after(lua_State *L) {
  arm(L, 1, 2);
  return 0;
}


/* Disarms first and pushes afterwards, so that the results themselves
 * cannot fail. */
static int l_off(lua_State *L) {
  state.armed = 0;
  lua_pushinteger(L, state.seen);
  lua_pushinteger(L, state.failed);
  return 2;
}


static int l_pcall(lua_State *L) {
  int status, nargs;

  luaL_checktype(L, 3, LUA_TFUNCTION);
  nargs = lua_gettop(L) - 3;
  arm(L, 1, 2);
  status = lua_pcall(L, nargs, LUA_MULTRET, 0);
  state.armed = 0;

  /* Room for the count, after however many results f returned. */
  luaL_checkstack(L, 1, "oom.pcall");
  lua_pushinteger(L, state.failed);
  lua_replace(L, 1);
  lua_pushboolean(L, status == LUA_OK);
  lua_replace(L, 2);
  return lua_gettop(L);
}


static const luaL_Reg oom_functions[] = {
  {"fail_after", l_fail_after},
  {"off", l_off},
  {"pcall", l_pcall},
  {NULL, NULL}
};


int main(int argc, char **argv) {
  lua_State *L;
  int i, status;

  if (argc < 2) {
    fprintf(stderr, "usage: %s SCRIPT [ARGS...]\n", argv[0]);
    return 2;
  }
  state.backtrace = getenv("OOM_BACKTRACE") != NULL;
  L = lua_newstate(oom_alloc, &state);
  if (L == NULL)
    return 1;
  state.L = L;
  luaL_openlibs(L);
  luaL_newlib(L, oom_functions);
  lua_setglobal(L, "oom");

  /* The global `arg` as the standalone interpreter sets it. */
  lua_createtable(L, argc - 2, 2);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - 1);
  }
  lua_setglobal(L, "arg");

  status = luaL_loadfile(L, argv[1]);
  if (status == LUA_OK) {
    for (i = 2; i < argc; i++)
      lua_pushstring(L, argv[i]);
    status = lua_pcall(L, argc - 2, 0, 0);
  }
  /* A script that ends with an error left armed must still close. */
  state.armed = 0;
  if (status != LUA_OK && lua_type(L, -1) == LUA_TSTRING)
    fprintf(stderr, "%s: %s\n", argv[0], lua_tostring(L, -1));
  else if (status != LUA_OK)
    fprintf(stderr, "%s: the script raised a %s value\n", argv[0],
            luaL_typename(L, -1));
  lua_close(L);
  return status == LUA_OK ? 0 : 1;
}
