#include "error.h"

#include <stdio.h>
#include <string.h>

#include "compat.h"
#include "response.h"


static void set_string(lua_State *L, const char *key, const char *value) {
  if (value != NULL && value[0] != '\0') {
    lua_pushstring(L, value);
    lua_setfield(L, -2, key);
  }
}


static int error_tostring(lua_State *L) {
  luaL_Buffer b;
  const char *kind, *code, *message, *request_id;

  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "kind");
  lua_getfield(L, 1, "code");
  lua_getfield(L, 1, "message");
  lua_getfield(L, 1, "request_id");
  kind = lua_tostring(L, -4);
  code = lua_tostring(L, -3);
  message = lua_tostring(L, -2);
  request_id = lua_tostring(L, -1);

  luaL_buffinit(L, &b);
  luaL_addstring(&b, "appcenter: ");
  luaL_addstring(&b, kind ? kind : "error");
  if (code != NULL && (kind == NULL || strcmp(code, kind) != 0)) {
    luaL_addchar(&b, ' ');
    luaL_addstring(&b, code);
  }
  luaL_addstring(&b, ": ");
  luaL_addstring(&b, message ? message : "unknown error");
  if (request_id != NULL) {
    luaL_addstring(&b, " (request id ");
    luaL_addstring(&b, request_id);
    luaL_addchar(&b, ')');
  }
  luaL_pushresult(&b);
  return 1;
}


void ac_error_register(lua_State *L) {
  if (luaL_newmetatable(L, AC_ERROR_MT)) {
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
}


/* Returns value, or a copy in buf with the secrets redacted when there
 * are any. A server controls the code, message, request id and
 * Retry-After, and may echo a secret in any of them. */
static const char *redacted(const char *value, const char *const *secrets,
                            char *buf) {
  if (value == NULL || secrets == NULL || secrets[0] == NULL)
    return value;
  snprintf(buf, AC_ERROR_TEXT_SIZE, "%s", value);
  ac_redact(buf, secrets);
  return buf;
}


void ac_push_error(lua_State *L, const ac_error_info *e) {
  char status_text[24];
  char code[AC_ERROR_TEXT_SIZE], message[AC_ERROR_TEXT_SIZE];
  char request_id[AC_ERROR_TEXT_SIZE], retry_after[AC_ERROR_TEXT_SIZE];

  lua_createtable(L, 0, 9);
  lua_pushstring(L, e->kind);
  lua_setfield(L, -2, "kind");
  if (e->status > 0) {
    lua_pushinteger(L, (lua_Integer)e->status);
    lua_setfield(L, -2, "status");
  }

  if (e->code != NULL && e->code[0] != '\0') {
    set_string(L, "code", redacted(e->code, e->secrets, code));
  } else if (e->status > 0) {
    snprintf(status_text, sizeof status_text, "%ld", e->status);
    set_string(L, "code", status_text);
  } else {
    set_string(L, "code", e->kind);
  }

  set_string(L, "message", redacted(e->message, e->secrets, message));
  set_string(L, "request_id", redacted(e->request_id, e->secrets,
                                       request_id));
  set_string(L, "retry_after", redacted(e->retry_after, e->secrets,
                                        retry_after));
  lua_pushboolean(L, e->retryable);
  lua_setfield(L, -2, "retryable");
  lua_pushinteger(L, 1);
  lua_setfield(L, -2, "attempts");

  luaL_getmetatable(L, AC_ERROR_MT);
  lua_setmetatable(L, -2);
}


int ac_return_invalid(lua_State *L, const char *message) {
  ac_error_info e = {0};

  e.kind = AC_KIND_INVALID_ARGUMENT;
  e.message = message;
  lua_pushnil(L);
  ac_push_error(L, &e);
  return 2;
}


void ac_format_number(char out[AC_NUMBER_TEXT_SIZE], double v, int digits) {
  if (v != v)
    snprintf(out, AC_NUMBER_TEXT_SIZE, "nan");
  else
    snprintf(out, AC_NUMBER_TEXT_SIZE, "%.*g", digits, v);
}


int ac_status_retryable(long status) {
  return status == 429 || status == 500 || status == 502 || status == 503
      || status == 504;
}
