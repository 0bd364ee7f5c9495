/*
 * core.sign{method, url, headers, body, ak, sk, date}: the AK/SK signer
 * for Lua, for tests and for callers who send requests another way.
 *
 * It signs exactly the headers in `headers` plus X-Sdk-Date; include Host
 * there to have it signed, as the official SDKs do. An X-Sdk-Content-Sha256
 * header in `headers` replaces the body hash with its value (send
 * UNSIGNED-PAYLOAD for bodies that are not JSON). It returns a table of
 * the headers to add (X-Sdk-Date and Authorization) and the canonical
 * request as a second value, for debugging signature mismatches.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "compat.h"
#include "error.h"
#include "sign.h"

#define AC_SIGN_MAX_HEADERS 63

int ac_l_sign(lua_State *L);


typedef struct url_parts {
  const char *path;
  size_t path_len;
  const char *query;
  size_t query_len;
} url_parts;


/* Returns the length of the "scheme://" that starts url (RFC 3986
 * section 3.1), or 0 when it starts with none. */
static size_t scheme_length(const char *url, size_t len) {
  size_t i = 0;

  if (len == 0 || !((url[0] >= 'a' && url[0] <= 'z')
                    || (url[0] >= 'A' && url[0] <= 'Z')))
    return 0;
  while (i < len && ((url[i] >= 'a' && url[i] <= 'z')
                     || (url[i] >= 'A' && url[i] <= 'Z')
                     || (url[i] >= '0' && url[i] <= '9')
                     || url[i] == '+' || url[i] == '-' || url[i] == '.'))
    i++;
  return len - i >= 3 && memcmp(url + i, "://", 3) == 0 ? i + 3 : 0;
}


/* Splits url into path and query. Without a scheme, whatever comes
 * before the first '/', '?' or '#' is read as the authority. */
static void split_url(const char *url, size_t len, url_parts *u) {
  const char *end = url + len, *p = url + scheme_length(url, len), *q;

  while (p < end && *p != '/' && *p != '?' && *p != '#')
    p++;

  u->path = p;
  while (p < end && *p != '?' && *p != '#')
    p++;
  u->path_len = (size_t)(p - u->path);
  if (u->path_len == 0) {
    u->path = "/";
    u->path_len = 1;
  }

  u->query = "";
  u->query_len = 0;
  if (p < end && *p == '?') {
    q = ++p;
    while (p < end && *p != '#')
      p++;
    u->query = q;
    u->query_len = (size_t)(p - q);
  }
}


/* Reads the string args[key] and leaves it on the stack, which keeps it
 * alive: an __index metamethod can return a string that no table
 * references. Raises when it is required and missing or not a string. */
static const char *field_string(lua_State *L, const char *key,
                                size_t *len, int required) {
  luaL_checkstack(L, 1, "reading the fields");
  lua_getfield(L, 1, key);
  if (lua_isnil(L, -1)) {
    if (required)
      luaL_error(L, "appcenter.core.sign: missing field '%s' (a string)",
                 key);
    lua_pop(L, 1);
    return NULL;
  }
  if (lua_type(L, -1) != LUA_TSTRING)
    luaL_error(L, "appcenter.core.sign: field '%s' must be a string, "
               "got %s", key, luaL_typename(L, -1));
  return lua_tolstring(L, -1, len);
}


/* Reports whether s has the form of an X-Sdk-Date, 20060102T150405Z. */
static int is_sdk_date(const char *s, size_t len) {
  size_t i;

  if (len != AC_SDK_DATE_SIZE - 1 || s[8] != 'T' || s[15] != 'Z')
    return 0;
  for (i = 0; i < 15; i++) {
    if (i != 8 && !(s[i] >= '0' && s[i] <= '9'))
      return 0;
  }
  return 1;
}


/* Reports whether s is at most 40 bytes of printable ASCII, which an
 * error message can show. */
static int is_short_text(const char *s, size_t len) {
  size_t i;

  if (len > 40)
    return 0;
  for (i = 0; i < len; i++) {
    if (s[i] < 0x20 || s[i] >= 0x7F)
      return 0;
  }
  return 1;
}


/* Reads `date`: an X-Sdk-Date string, or seconds since the epoch, or
 * nil for now. */
static void read_date(lua_State *L, char out[AC_SDK_DATE_SIZE]) {
  size_t len;

  lua_getfield(L, 1, "date");
  if (lua_type(L, -1) == LUA_TSTRING) {
    const char *s = lua_tolstring(L, -1, &len);

    if (!is_sdk_date(s, len)) {
      if (is_short_text(s, len))
        luaL_error(L, "appcenter.core.sign: field 'date' must look like "
                   "20060102T150405Z (UTC), got '%s'", s);
      luaL_error(L, "appcenter.core.sign: field 'date' must look like "
                 "20060102T150405Z (UTC), got a %d-byte string that has "
                 "bytes other than printable ASCII or is too long to show",
                 (int)len);
    }
    memcpy(out, s, len + 1);
  } else if (lua_type(L, -1) == LUA_TNUMBER) {
    lua_Number t = lua_tonumber(L, -1);
    if (!(t >= 0 && t <= AC_SDK_DATE_MAX)) {
      char shown[AC_NUMBER_TEXT_SIZE];

      /* 14 significant digits, as Lua's tostring writes a float, but
       * without the ".0" that Lua 5.4 adds to a whole number. */
      ac_format_number(shown, (double)t, 14);
      luaL_error(L, "appcenter.core.sign: field 'date' must be seconds "
                 "since the epoch from 0 to 253402300799 (year 9999), "
                 "got %s", shown);
    }
    ac_sdk_date((time_t)t, out);
  } else if (lua_isnil(L, -1)) {
    ac_sdk_date(time(NULL), out);
  } else {
    luaL_error(L, "appcenter.core.sign: field 'date' must be a string or "
               "a number, got %s", luaL_typename(L, -1));
  }
  lua_pop(L, 1);
}


/* Reports whether s is a non-empty HTTP token (RFC 9110 tchar), the form
 * of methods and header names. */
static int is_token(const char *s, size_t len) {
  size_t i;

  if (len == 0)
    return 0;
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z')
          || (c >= 'A' && c <= 'Z') || strchr("!#$%&'*+-.^_`|~", c) != NULL)
        || c == '\0')
      return 0;
  }
  return 1;
}


/* Reports whether s has a CR, LF or NUL, which would end a header line
 * or the text early. */
static int has_line_break(const char *s, size_t len) {
  return memchr(s, '\r', len) != NULL || memchr(s, '\n', len) != NULL
      || memchr(s, '\0', len) != NULL;
}


/* Collects headers from the `headers` table, except X-Sdk-Date, which
 * the signer sets; returns how many. The names and values stay alive in
 * that table. */
static size_t read_headers(lua_State *L, int idx, ac_header *h) {
  size_t n = 0, i;

  if (lua_isnil(L, idx))
    return 0;
  if (!lua_istable(L, idx))
    luaL_error(L, "appcenter.core.sign: field 'headers' must be a table, "
               "got %s", luaL_typename(L, idx));
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    if (lua_type(L, -2) != LUA_TSTRING)
      luaL_error(L, "appcenter.core.sign: header names must be strings, "
                 "got %s", luaL_typename(L, -2));
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "appcenter.core.sign: header '%s' must have a string "
                 "value, got %s", lua_tostring(L, -2),
                 luaL_typename(L, -1));
    if (n == AC_SIGN_MAX_HEADERS)
      luaL_error(L, "appcenter.core.sign: more than %d headers",
                 AC_SIGN_MAX_HEADERS);
    h[n].name = lua_tolstring(L, -2, &h[n].name_len);
    h[n].value = lua_tolstring(L, -1, &h[n].value_len);
    if (!is_token(h[n].name, h[n].name_len))
      luaL_error(L, "appcenter.core.sign: header name '%s' is not a valid "
                 "HTTP field name", h[n].name);
    if (has_line_break(h[n].value, h[n].value_len))
      luaL_error(L, "appcenter.core.sign: the value of header '%s' "
                 "contains a line break or NUL", h[n].name);
    for (i = 0; i < n; i++)
      if (strcasecmp(h[i].name, h[n].name) == 0)
        luaL_error(L, "appcenter.core.sign: header '%s' is given twice "
                   "(names are case-insensitive); join the values with "
                   "', '", h[n].name);
    if (strcasecmp(h[n].name, "x-sdk-date") != 0)
      n++;
    lua_pop(L, 1);
  }
  return n;
}


#define AC_SCRATCH_MT "appcenter.core.sign_buffers"

static int free_scratch(lua_State *L) {
  ac_buf *b = lua_touserdata(L, 1);

  ac_buf_free(&b[0]);
  ac_buf_free(&b[1]);
  return 0;
}


/* Pushes a userdata holding two buffers that __gc frees, so a memory
 * error while building the result cannot leak them. */
static ac_buf *push_scratch(lua_State *L) {
  ac_buf *b = ac_newuserdata(L, 2 * sizeof *b);

  memset(b, 0, 2 * sizeof *b);
  if (luaL_newmetatable(L, AC_SCRATCH_MT)) {
    lua_pushcfunction(L, free_scratch);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return b;
}


int ac_l_sign(lua_State *L) {
  ac_header h[AC_SIGN_MAX_HEADERS + 1];
  char date[AC_SDK_DATE_SIZE];
  ac_sign_input in;
  ac_buf *auth, *canonical;
  url_parts u;
  size_t url_len, n, len, i;
  const char *url;

  luaL_checktype(L, 1, LUA_TTABLE);
  memset(&in, 0, sizeof in);
  in.method = field_string(L, "method", &len, 0);
  if (in.method == NULL)
    in.method = "POST";
  else if (!is_token(in.method, len))
    luaL_error(L, "appcenter.core.sign: field 'method' must be an HTTP "
               "method such as POST");
  url = field_string(L, "url", &url_len, 1);
  if (has_line_break(url, url_len))
    luaL_error(L, "appcenter.core.sign: field 'url' contains a line break "
               "or NUL");
  in.body = field_string(L, "body", &in.body_len, 0);
  /* The access key goes into the Authorization value as it is. */
  in.ak = field_string(L, "ak", &len, 1);
  for (i = 0; i < len; i++)
    if ((unsigned char)in.ak[i] <= ' ' || in.ak[i] == ',' || in.ak[i] == 0x7F)
      luaL_error(L, "appcenter.core.sign: field 'ak' contains white space, "
                 "a control byte or ','; pass the access key alone");
  if (len == 0)
    luaL_error(L, "appcenter.core.sign: field 'ak' is empty");
  in.sk = field_string(L, "sk", &in.sk_len, 1);
  if (in.sk_len == 0)
    luaL_error(L, "appcenter.core.sign: field 'sk' is empty");
  read_date(L, date);
  in.sdk_date = date;

  lua_getfield(L, 1, "headers");
  n = read_headers(L, lua_gettop(L), h);
  split_url(url, url_len, &u);
  h[n].name = "X-Sdk-Date";
  h[n].name_len = 10;
  h[n].value = date;
  h[n++].value_len = AC_SDK_DATE_SIZE - 1;

  in.path = u.path;
  in.path_len = u.path_len;
  in.query = u.query;
  in.query_len = u.query_len;
  in.headers = h;
  in.header_count = n;

  auth = push_scratch(L);
  canonical = auth + 1;
  if (ac_sign(&in, auth) != 0 || ac_canonical_request(&in, canonical) != 0)
    return luaL_error(L, "appcenter.core.sign: signing failed (out of "
                      "memory or an over-long header name)");

  lua_createtable(L, 0, 2);
  lua_pushstring(L, date);
  lua_setfield(L, -2, "X-Sdk-Date");
  lua_pushlstring(L, auth->data, auth->len);
  lua_setfield(L, -2, "Authorization");
  lua_pushlstring(L, canonical->data, canonical->len);
  return 2;
}
