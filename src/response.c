/*
 * Response shaping.
 *
 * The result mirrors the wire format. Unknown fields are dropped and
 * JSON null becomes nil. The six fields an upload needs (server_end_point,
 * bucket_name, object_path and the three credential fields) must be
 * strings. The policy fields must be present but may be null.
 *
 * Caveats: numbers in error codes are converted with Lua's tostring, so
 * a code sent as 1.0 reads "1.0".
 */
#include "response.h"

#include <stdio.h>
#include <string.h>

#include "compat.h"
#include "error.h"

#define AC_DECODE_KEY "appcenter.core.json_decode"

/* Characters of a non-JSON error body kept in the message. */
#define AC_BODY_PREFIX_CHARS 120

#define AC_TEXT_SIZE 512


/* ---------------------------------------------------------------------
 * JSON decoding through lua-cjson
 * ------------------------------------------------------------------- */

void ac_response_init(lua_State *L) {
  /* A private cjson instance, so settings other code makes on the
   * shared module do not change how responses decode. */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "cjson");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "new");
  lua_call(L, 0, 1);
  lua_getfield(L, -1, "decode");
  lua_setfield(L, LUA_REGISTRYINDEX, AC_DECODE_KEY);
  lua_pop(L, 2);
}


/* Decodes s and pushes the value; on failure pushes cjson's message and
 * returns -1. */
static int decode_json(lua_State *L, const char *s, size_t len) {
  lua_getfield(L, LUA_REGISTRYINDEX, AC_DECODE_KEY);
  lua_pushlstring(L, s ? s : "", len);
  return lua_pcall(L, 1, 1, 0) == 0 ? 0 : -1;
}


static int is_json_null(lua_State *L, int idx) {
  return lua_type(L, idx) == LUA_TLIGHTUSERDATA
      && lua_touserdata(L, idx) == NULL;
}


static const char *json_type_name(lua_State *L, int idx) {
  if (is_json_null(L, idx))
    return "null";
  switch (lua_type(L, idx)) {
  case LUA_TNIL: return "nothing";
  case LUA_TBOOLEAN: return "boolean";
  case LUA_TNUMBER: return "number";
  case LUA_TSTRING: return "string";
  case LUA_TTABLE: return "object or array";
  default: return lua_typename(L, lua_type(L, idx));
  }
}


/* ---------------------------------------------------------------------
 * Redaction and text cleanup
 * ------------------------------------------------------------------- */

/* Replaces a tail of s that is the start of secret, at least
 * AC_REDACT_MIN_TAIL bytes long: what is left of a secret when the text
 * around it was cut to a maximum length. */
static void redact_cut_secret(char *s, const char *secret, size_t n) {
  size_t len = strlen(s), k;

  for (k = len < n ? len : n; k >= AC_REDACT_MIN_TAIL; k--) {
    if (memcmp(s + len - k, secret, k) == 0) {
      memcpy(s + len - k, "***", 4);
      return;
    }
  }
}


void ac_redact(char *s, const char *const *secrets) {
  const char *const *sec;

  for (sec = secrets; sec != NULL && *sec != NULL; sec++) {
    size_t n = strlen(*sec);
    char *hit;

    if (n < 4)
      continue;
    while ((hit = strstr(s, *sec)) != NULL) {
      memcpy(hit, "***", 3);
      memmove(hit + 3, hit + n, strlen(hit + n) + 1);
    }
    redact_cut_secret(s, *sec, n);
  }
}


/* Copies text into out (AC_TEXT_SIZE bytes) with runs of white space and
 * control characters collapsed to one space, HTML tags dropped when
 * strip_tags, and at most max_chars bytes kept, cut at a UTF-8 character
 * boundary. */
static void clean_text(char *out, const char *s, size_t len,
                       size_t max_chars, int strip_tags) {
  size_t o = 0, i;
  int in_tag = 0, space = 0;

  if (max_chars > AC_TEXT_SIZE - 4)
    max_chars = AC_TEXT_SIZE - 4;
  for (i = 0; i < len && o < max_chars; i++) {
    unsigned char c = (unsigned char)s[i];

    if (c == '<' && strip_tags) {
      in_tag = 1;
      space = o > 0;
      continue;
    }
    if (in_tag) {
      in_tag = c != '>';
      continue;
    }
    if (c <= ' ' || c == 0x7F) {
      space = o > 0;
      continue;
    }
    if (space && o + 1 < max_chars)
      out[o++] = ' ';
    space = 0;
    out[o++] = (char)c;
  }

  /* Never leave half a UTF-8 sequence at the end. */
  if (i < len)
    while (o > 0 && ((unsigned char)out[o - 1] & 0xC0) == 0x80)
      o--;
  if (i < len && o > 0 && ((unsigned char)out[o - 1] & 0xC0) == 0xC0)
    o--;
  out[o] = '\0';
}


/* ---------------------------------------------------------------------
 * Success: the result table
 * ------------------------------------------------------------------- */

/* Shaping state: the first problem found, as a field path. */
typedef struct shape {
  lua_State *L;
  char msg[AC_TEXT_SIZE];
  int failed;
} shape;


static void shape_fail(shape *s, const char *path, const char *key,
                       const char *expected, int idx) {
  if (s->failed)
    return;
  s->failed = 1;
  if (lua_isnil(s->L, idx))
    snprintf(s->msg, sizeof s->msg, "invalid response: %s%s%s is "
             "missing", path, *path ? "." : "", key);
  else
    snprintf(s->msg, sizeof s->msg, "invalid response: %s%s%s must be "
             "%s, got %s", path, *path ? "." : "", key, expected,
             json_type_name(s->L, idx));
}


/* Copies src[key] into the table on top of the stack. */
static void copy_string(shape *s, int src, const char *path,
                        const char *key, int nullable) {
  lua_State *L = s->L;

  lua_getfield(L, src, key);
  if (lua_type(L, -1) == LUA_TSTRING)
    lua_setfield(L, -2, key);
  else {
    if (!(nullable && is_json_null(L, -1)))
      shape_fail(s, path, key, "a string", -1);
    lua_pop(L, 1);
  }
}


/* Copies src[key], an array of strings, into the table on top. */
static void copy_string_array(shape *s, int src, const char *path,
                              const char *key) {
  lua_State *L = s->L;
  int arr, i, n;
  char where[AC_TEXT_SIZE];

  lua_getfield(L, src, key);
  if (is_json_null(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  if (!lua_istable(L, -1)) {
    shape_fail(s, path, key, "an array of strings", -1);
    lua_pop(L, 1);
    return;
  }

  arr = lua_gettop(L);
  n = (int)lua_rawlen(L, arr);
  lua_createtable(L, n, 0);
  for (i = 1; i <= n && !s->failed; i++) {
    lua_rawgeti(L, arr, i);
    if (lua_type(L, -1) == LUA_TSTRING) {
      lua_rawseti(L, -2, i);
      continue;
    }
    snprintf(where, sizeof where, "%s[%d]", key, i);
    shape_fail(s, path, where, "a string", -1);
    lua_pop(L, 1);
  }
  lua_setfield(L, arr - 1, key);
  lua_pop(L, 1);
}


/* Pushes a shaped copy of the statement object at src. */
static void shape_statement(shape *s, int src, const char *path) {
  lua_createtable(s->L, 0, 3);
  copy_string(s, src, path, "effect", 1);
  copy_string_array(s, src, path, "action");
  copy_string_array(s, src, path, "resource");
}


/* The API documents one statement object; a list of them is kept as a
 * list. Empty tables and tables with statement keys are objects. */
static int is_statement_list(lua_State *L, int idx) {
  int is_list;

  if (lua_rawlen(L, idx) == 0)
    return 0;
  lua_getfield(L, idx, "effect");
  is_list = lua_isnil(L, -1);
  lua_pop(L, 1);
  return is_list;
}


static void shape_policy(shape *s, int src) {
  lua_State *L = s->L;
  int policy, stmt, i, n;
  char path[32];

  lua_getfield(L, src, "policy");
  if (is_json_null(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  if (!lua_istable(L, -1)) {
    shape_fail(s, "", "policy", "an object", -1);
    lua_pop(L, 1);
    return;
  }

  policy = lua_gettop(L);
  lua_createtable(L, 0, 2);
  copy_string(s, policy, "policy", "version", 1);

  lua_getfield(L, policy, "statement");
  stmt = lua_gettop(L);
  if (lua_istable(L, stmt) && is_statement_list(L, stmt)) {
    n = (int)lua_rawlen(L, stmt);
    lua_createtable(L, n, 0);
    for (i = 1; i <= n && !s->failed; i++) {
      snprintf(path, sizeof path, "policy.statement[%d]", i);
      lua_rawgeti(L, stmt, i);
      if (lua_istable(L, -1)) {
        shape_statement(s, lua_gettop(L), path);
        lua_rawseti(L, -3, i);
      } else {
        shape_fail(s, "policy", path + 7, "an object", -1);
      }
      lua_pop(L, 1);
    }
    lua_setfield(L, stmt - 1, "statement");
  } else if (lua_istable(L, stmt)) {
    shape_statement(s, stmt, "policy.statement");
    lua_setfield(L, stmt - 1, "statement");
  } else if (!is_json_null(L, stmt)) {
    shape_fail(s, "policy", "statement", "an object", stmt);
  }
  lua_pop(L, 1);

  lua_setfield(L, policy - 1, "policy");
  lua_pop(L, 1);
}


static void shape_credential(shape *s, int src) {
  lua_State *L = s->L;

  lua_getfield(L, src, "credential");
  if (!lua_istable(L, -1)) {
    shape_fail(s, "", "credential", "an object", -1);
    lua_pop(L, 1);
    return;
  }
  lua_createtable(L, 0, 3);
  copy_string(s, lua_gettop(L) - 1, "credential", "access", 0);
  copy_string(s, lua_gettop(L) - 1, "credential", "secret", 0);
  copy_string(s, lua_gettop(L) - 1, "credential", "security_token", 0);
  lua_setfield(L, -3, "credential");
  lua_pop(L, 1);
}


/* Pushes the result table, or returns -1 with s->msg set and the stack
 * as it was. src is the decoded body. */
static int shape_result(shape *s, int src) {
  lua_State *L = s->L;
  int top = lua_gettop(L);

  if (!lua_istable(L, src)) {
    snprintf(s->msg, sizeof s->msg, "invalid response: the body must be "
             "a JSON object, got %s", json_type_name(L, src));
    return -1;
  }

  lua_createtable(L, 0, 5);
  copy_string(s, src, "", "server_end_point", 0);
  copy_string(s, src, "", "bucket_name", 0);
  copy_string(s, src, "", "object_path", 0);
  shape_policy(s, src);
  shape_credential(s, src);
  if (s->failed) {
    lua_settop(L, top);
    return -1;
  }
  return 0;
}


/* ---------------------------------------------------------------------
 * Failure: the error table
 * ------------------------------------------------------------------- */

/* Looks for one of the code/message key pairs the official SDKs accept
 * in the table at idx; copies them into code and message. */
static int find_error_pair(lua_State *L, int idx, char *code,
                           char *message) {
  static const char *const pairs[][2] = {
    {"error_code", "error_msg"},
    {"errorCode", "errorMsg"},
    {"code", "message"},
  };
  size_t i, len;
  const char *v;

  for (i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
    lua_getfield(L, idx, pairs[i][0]);
    lua_getfield(L, idx, pairs[i][1]);
    if (lua_isstring(L, -2) || lua_isstring(L, -1)) {
      if ((v = lua_tolstring(L, -2, &len)) != NULL)
        clean_text(code, v, len, 64, 0);
      if ((v = lua_tolstring(L, -1, &len)) != NULL)
        clean_text(message, v, len, AC_TEXT_SIZE, 0);
      lua_pop(L, 2);
      return 1;
    }
    lua_pop(L, 2);
  }
  return 0;
}


/* Searches the top level of the decoded body, then its "error" member,
 * then any other object one level down. */
static void find_error_fields(lua_State *L, int body, char *code,
                              char *message) {
  if (!lua_istable(L, body) || find_error_pair(L, body, code, message))
    return;

  lua_getfield(L, body, "error");
  if (lua_istable(L, -1) && find_error_pair(L, lua_gettop(L), code,
                                            message)) {
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);

  lua_pushnil(L);
  while (lua_next(L, body) != 0) {
    if (lua_istable(L, -1)
        && find_error_pair(L, lua_gettop(L), code, message)) {
      lua_pop(L, 2);
      return;
    }
    lua_pop(L, 1);
  }
}


static void push_http_error(lua_State *L, const ac_response *r) {
  ac_error_info e = {0};
  char code[AC_TEXT_SIZE] = "", found[AC_TEXT_SIZE] = "";
  char message[AC_TEXT_SIZE], prefix[AC_TEXT_SIZE];
  int top = lua_gettop(L);

  if (r->body_len > 0 && decode_json(L, r->body, r->body_len) == 0)
    find_error_fields(L, lua_gettop(L), code, found);
  lua_settop(L, top);

  if (found[0] != '\0') {
    snprintf(message, sizeof message, "%s", found);
  } else if (code[0] != '\0') {
    snprintf(message, sizeof message, "HTTP %ld without a message",
             r->status);
  } else if (r->body_len == 0) {
    snprintf(message, sizeof message, "HTTP %ld with an empty body",
             r->status);
  } else {
    clean_text(prefix, r->body, r->body_len, AC_BODY_PREFIX_CHARS, 1);
    snprintf(message, sizeof message, "HTTP %ld: %.200s", r->status,
             prefix[0] ? prefix : "(no text in the body)");
  }
  e.kind = AC_KIND_HTTP;
  e.status = r->status;
  e.code = code;
  e.message = message;
  e.request_id = r->request_id;
  e.retry_after = r->retry_after;
  e.retryable = ac_status_retryable(r->status);
  e.secrets = r->secrets;
  ac_push_error(L, &e);
}


static void push_invalid_response(lua_State *L, const ac_response *r,
                                  const char *message) {
  ac_error_info e = {0};

  e.kind = AC_KIND_INVALID_RESPONSE;
  e.status = r->status;
  e.message = message;
  e.request_id = r->request_id;
  e.secrets = r->secrets;
  ac_push_error(L, &e);
}


/* ---------------------------------------------------------------------
 * Entry point
 * ------------------------------------------------------------------- */

static void push_meta(lua_State *L, const ac_response *r) {
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, (lua_Integer)r->status);
  lua_setfield(L, -2, "status");
  if (r->request_id[0] != '\0') {
    lua_pushstring(L, r->request_id);
    lua_setfield(L, -2, "request_id");
  }
  lua_pushinteger(L, 1);
  lua_setfield(L, -2, "attempts");
  lua_pushnumber(L, r->elapsed_ms);
  lua_setfield(L, -2, "elapsed_ms");
}


int ac_push_response(lua_State *L, const ac_response *r) {
  shape s;
  char message[AC_TEXT_SIZE];
  int top = lua_gettop(L);

  if (r->status < 200 || r->status > 299) {
    lua_pushnil(L);
    push_http_error(L, r);
    return 2;
  }

  if (r->body_len == 0) {
    lua_pushnil(L);
    push_invalid_response(L, r, "invalid response: the body is empty");
    return 2;
  }
  if (decode_json(L, r->body, r->body_len) != 0) {
    snprintf(message, sizeof message, "invalid response: the body is "
             "not valid JSON (%s)", lua_tostring(L, -1));
    lua_settop(L, top);
    lua_pushnil(L);
    push_invalid_response(L, r, message);
    return 2;
  }

  memset(&s, 0, sizeof s);
  s.L = L;
  if (shape_result(&s, top + 1) != 0) {
    lua_settop(L, top);
    lua_pushnil(L);
    push_invalid_response(L, r, s.msg);
    return 2;
  }
  lua_remove(L, top + 1);
  push_meta(L, r);
  return 2;
}
