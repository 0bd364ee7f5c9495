/*
 * libFuzzer target: a server's response through the real response code.
 *
 * Input: two bytes of status (100 to 599), then the header block up to
 * the first empty line ("\r\n\r\n"), then the body. Without an empty line
 * the rest is the body and there are no headers.
 *
 * Header lines go one by one through transport.c's libcurl header
 * callback and the body through its write callback (in 1000-byte pieces,
 * as libcurl hands them over), with a 64 KiB body cap. What they keep is
 * shaped by ac_push_response in a Lua 5.4 state with lua-cjson, as a
 * finished transfer is. The checks: the outcome is a well-formed result
 * or error table, tostring(err) is one line, and no secret appears in any
 * string of an error table or in tostring(err).
 */
#include "fuzz.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "../src/error.h"
#include "../src/response.h"

/* The callbacks are static, so the file is compiled in here. */
#include "../src/transport.c"

#define FUZZ_MAX_BODY_BYTES (64 * 1024)
#define FUZZ_BODY_PIECE 1000

/* Fake secrets, also in fuzz/response.dict so that the fuzzer echoes
 * them. */
static const char *const secrets[] = {
  "fuzz-token-5d1e0a7c9b",
  "fuzz-sk-2f8c6e4a0d",
  "fuzz-security-token-7a3b",
  NULL
};

static lua_State *L;
static unsigned long runs;


static int init_state(lua_State *state) {
  ac_response_init(state);
  ac_error_register(state);
  return 0;
}


int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  L = luaL_newstate();
  FUZZ_CHECK(L != NULL, "a Lua state can be created");
  luaL_openlibs(L);
  lua_pushcfunction(L, init_state);
  if (lua_pcall(L, 0, 0, 0) != 0) {
    fprintf(stderr, "lua-cjson is needed: %s\n", lua_tostring(L, -1));
    abort();
  }
  return 0;
}


static int push_response(lua_State *state) {
  return ac_push_response(state, lua_touserdata(state, 1));
}


static void check_no_secret(const char *s, size_t len, const char *where) {
  const char *const *sec;

  for (sec = secrets; *sec != NULL; sec++) {
    size_t n = strlen(*sec), i;

    for (i = 0; i + n <= len; i++)
      FUZZ_CHECK(memcmp(s + i, *sec, n) != 0, where);
  }
}


static void check_one_line(const char *s, size_t len, const char *where) {
  size_t i;

  for (i = 0; i < len; i++)
    FUZZ_CHECK((unsigned char)s[i] >= 0x20 && s[i] != 0x7F, where);
}


static void check_string_field(int table, const char *key, int required) {
  lua_getfield(L, table, key);
  if (required)
    FUZZ_CHECK(lua_type(L, -1) == LUA_TSTRING, key);
  else
    FUZZ_CHECK(lua_isnil(L, -1) || lua_type(L, -1) == LUA_TSTRING, key);
  lua_pop(L, 1);
}


/* Checks that every value in the result tree is a string or a table,
 * so no JSON null (a light userdata) is left, and that every key of
 * the table at idx is one of names. */
static void check_tree(int idx, const char *const *names, int depth) {
  const char *const *name;
  const char *key;

  FUZZ_CHECK(depth < 6, "the result tree is at most five tables deep");
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    FUZZ_CHECK(lua_type(L, -1) == LUA_TSTRING || lua_istable(L, -1),
               "result values are strings or tables");
    if (names != NULL) {
      FUZZ_CHECK(lua_type(L, -2) == LUA_TSTRING, "result keys are names");
      key = lua_tostring(L, -2);
      for (name = names; *name != NULL && strcmp(*name, key) != 0; name++)
        ;
      FUZZ_CHECK(*name != NULL, "no unknown field in the result");
    }
    if (lua_istable(L, -1))
      check_tree(lua_gettop(L), NULL, depth + 1);
    lua_pop(L, 1);
  }
}


static void check_result(int result, int meta, long status) {
  static const char *const result_names[] = {
    "server_end_point", "bucket_name", "object_path", "policy",
    "credential", NULL
  };
  static const char *const credential_names[] = {
    "access", "secret", "security_token", NULL
  };

  FUZZ_CHECK(status >= 200 && status <= 299, "a result only for 2xx");
  FUZZ_CHECK(lua_istable(L, result), "the result is a table");
  check_string_field(result, "server_end_point", 1);
  check_string_field(result, "bucket_name", 1);
  check_string_field(result, "object_path", 1);
  lua_getfield(L, result, "credential");
  FUZZ_CHECK(lua_istable(L, -1), "result.credential is a table");
  check_string_field(lua_gettop(L), "access", 1);
  check_string_field(lua_gettop(L), "secret", 1);
  check_string_field(lua_gettop(L), "security_token", 1);
  check_tree(lua_gettop(L), credential_names, 1);
  lua_pop(L, 1);
  check_tree(result, result_names, 0);

  FUZZ_CHECK(lua_istable(L, meta), "meta is a table");
  lua_getfield(L, meta, "status");
  FUZZ_CHECK(lua_tointeger(L, -1) == status, "meta.status is the status");
  lua_pop(L, 1);
}


static void check_error(int err, long status) {
  const char *kind, *text;
  size_t len;

  FUZZ_CHECK(lua_istable(L, err), "err is a table");
  lua_getfield(L, err, "kind");
  kind = lua_tostring(L, -1);
  FUZZ_CHECK(kind != NULL, "err.kind is a string");
  if (status >= 200 && status <= 299)
    FUZZ_CHECK(strcmp(kind, "invalid_response") == 0,
               "a 2xx error is invalid_response");
  else
    FUZZ_CHECK(strcmp(kind, "http") == 0, "a non-2xx error is http");
  lua_pop(L, 1);

  lua_getfield(L, err, "status");
  FUZZ_CHECK(lua_tointeger(L, -1) == status, "err.status is the status");
  lua_pop(L, 1);
  check_string_field(err, "code", 1);
  check_string_field(err, "message", 1);
  check_string_field(err, "request_id", 0);
  check_string_field(err, "retry_after", 0);

  /* Every string in the table, keys included. */
  lua_pushnil(L);
  while (lua_next(L, err) != 0) {
    if (lua_type(L, -1) == LUA_TSTRING) {
      text = lua_tolstring(L, -1, &len);
      check_no_secret(text, len, "no secret in an error field");
      check_one_line(text, len, "error fields have no control characters");
    }
    lua_pop(L, 1);
  }

  text = luaL_tolstring(L, err, &len);
  FUZZ_CHECK(strncmp(text, "appcenter: ", 11) == 0,
             "tostring(err) starts with appcenter:");
  check_no_secret(text, len, "no secret in tostring(err)");
  check_one_line(text, len, "tostring(err) is one line");
  lua_pop(L, 1);
}


/* Feeds the header block to the header callback, a line at a time with
 * its line ending, as libcurl does, until the callback stops the
 * transfer. */
static void feed_headers(ac_transport *t, char *block, size_t len) {
  size_t start = 0, i, consumed;

  for (i = 0; i < len; i++) {
    if (block[i] != '\n' && i + 1 < len)
      continue;
    consumed = on_header(block + start, 1, i + 1 - start, t);
    if (consumed != i + 1 - start) {
      FUZZ_CHECK(consumed == 0 && t->body_too_large && t->huge_length,
                 "the header callback takes every line, or stops at the "
                 "end of a head whose Content-Length overflows");
      break;
    }
    start = i + 1;
  }
  FUZZ_CHECK(memchr(t->request_id, '\0', sizeof t->request_id) != NULL,
             "request_id is terminated");
  FUZZ_CHECK(memchr(t->retry_after, '\0', sizeof t->retry_after) != NULL,
             "retry_after is terminated");
}


static void feed_body(ac_transport *t, char *body, size_t len) {
  size_t at = 0;

  while (at < len) {
    size_t piece = len - at < FUZZ_BODY_PIECE ? len - at : FUZZ_BODY_PIECE;
    size_t accepted = on_body(body + at, 1, piece, t);

    if (accepted != piece) {
      FUZZ_CHECK(t->body_too_large, "the body callback stops only at the cap");
      FUZZ_CHECK(t->body.len <= t->max_body_bytes, "the body stays capped");
      return;
    }
    at += piece;
  }
  FUZZ_CHECK(t->body.len == len, "the body callback keeps every byte");
}


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char blank_line[] = "\r\n\r\n";
  ac_transport t;
  ac_response r;
  char *copy, *body;
  size_t header_len = 0, body_len;
  long status;

  if (size < 2)
    return 0;
  status = 100 + (long)((data[0] << 8) | data[1]) % 500;
  data += 2;
  size -= 2;

  copy = malloc(size + 1);
  FUZZ_CHECK(copy != NULL, "malloc");
  if (size > 0)
    memcpy(copy, data, size);
  copy[size] = '\0';

  body = copy;
  body_len = size;
  for (header_len = 0; header_len + 4 <= size; header_len++) {
    if (memcmp(copy + header_len, blank_line, 4) == 0) {
      body = copy + header_len + 4;
      body_len = size - header_len - 4;
      break;
    }
  }
  /* libcurl passes the empty line that ends the headers too. */
  if (body == copy)
    header_len = 0;
  else
    header_len += 4;

  memset(&t, 0, sizeof t);
  t.max_body_bytes = FUZZ_MAX_BODY_BYTES;
  feed_headers(&t, copy, header_len);
  feed_body(&t, body, body_len);

  if (!t.body_too_large) {
    memset(&r, 0, sizeof r);
    r.status = status;
    r.body = t.body.data;
    r.body_len = t.body.len;
    r.request_id = t.request_id;
    r.retry_after = t.retry_after;
    r.elapsed_ms = 1.0;
    r.secrets = secrets;

    lua_settop(L, 0);
    lua_pushcfunction(L, push_response);
    lua_pushlightuserdata(L, &r);
    FUZZ_CHECK(lua_pcall(L, 1, 2, 0) == 0, "ac_push_response does not raise");
    if (lua_isnil(L, 1))
      check_error(2, status);
    else
      check_result(1, 2, status);
    lua_settop(L, 0);
  }

  if (++runs % 4096 == 0)
    lua_gc(L, LUA_GCCOLLECT, 0);
  ac_buf_free(&t.body);
  free(copy);
  return 0;
}
