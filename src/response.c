/*
 * Response shaping.
 *
 * The result mirrors the wire format. Unknown fields are dropped and
 * JSON null becomes nil. The six fields an upload needs (server_end_point,
 * bucket_name, object_path and the three credential fields) must be
 * non-empty strings. The policy fields must be present but may be null,
 * and action and resource must be arrays of strings.
 *
 * A whole number in an error code or message reads as an integer ("400",
 * also when sent as 400.0). Other numbers read as Lua's tostring writes
 * them.
 */
#include "response.h"

#include <stdio.h>
#include <string.h>

#include "buf.h"
#include "compat.h"
#include "error.h"

#define AC_DECODE_KEY "appcenter.core.json_decode"

/* Characters of a non-JSON error body kept in the message. */
#define AC_BODY_PREFIX_CHARS 120

#define AC_TEXT_SIZE 512

/* Room for the secrets of a request: a client lists at most four and an
 * upload at most six. */
#define AC_MAX_SECRETS 8

/* Secrets that an error body may return, and how deep and how many of
 * its entries are searched for them. */
#define AC_SECRET_LIST (AC_MAX_SECRETS + 8 + 1)
#define AC_SECRET_DEPTH 4
#define AC_SECRET_BUDGET 512


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
 * returns -1. A memory error is no fault of the body, so it is raised
 * again, as every other allocation of the call raises it. */
static int decode_json(lua_State *L, const char *s, size_t len) {
  int status;

  lua_getfield(L, LUA_REGISTRYINDEX, AC_DECODE_KEY);
  lua_pushlstring(L, s ? s : "", len);
  status = lua_pcall(L, 1, 1, 0);
  if (status == LUA_ERRMEM)
    lua_error(L);
  return status == 0 ? 0 : -1;
}


static int is_json_null(lua_State *L, int idx) {
  return lua_type(L, idx) == LUA_TLIGHTUSERDATA
      && lua_touserdata(L, idx) == NULL;
}


static int is_empty_table(lua_State *L, int idx) {
  lua_pushnil(L);
  if (lua_next(L, idx) == 0)
    return 1;
  lua_pop(L, 2);
  return 0;
}


/* Names the JSON type of the decoded value at idx. lua-cjson decodes an
 * array to keys 1..n, an object to string keys, and [] and {} alike to
 * an empty table. */
static const char *json_type_name(lua_State *L, int idx) {
  if (is_json_null(L, idx))
    return "null";
  switch (lua_type(L, idx)) {
  case LUA_TNIL: return "nothing";
  case LUA_TBOOLEAN: return "boolean";
  case LUA_TNUMBER: return "number";
  case LUA_TSTRING: return "string";
  case LUA_TTABLE:
    if (lua_rawlen(L, idx) > 0)
      return "array";
    return is_empty_table(L, ac_absindex(L, idx)) ? "empty object or array"
                                                   : "object";
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


/* The first place in s where the n bytes at secret occur, or NULL. */
static char *find_secret(char *s, const char *secret, size_t n) {
  for (; (s = strchr(s, secret[0])) != NULL; s++) {
    if (strncmp(s, secret, n) == 0)
      return s;
  }
  return NULL;
}


void ac_redact(char *s, const char *const *secrets) {
  const char *const *sec;

  for (sec = secrets; sec != NULL && *sec != NULL; sec++) {
    const char *secret = *sec;
    size_t n = strlen(secret);
    char *hit;

    ac_trim_blanks(&secret, &n);
    if (n < 4)
      continue;
    while ((hit = find_secret(s, secret, n)) != NULL) {
      memcpy(hit, "***", 3);
      memmove(hit + 3, hit + n, strlen(hit + n) + 1);
    }
    redact_cut_secret(s, secret, n);
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
 *
 * The decoded body becomes the result in place, because a second tree
 * of tables would add to the garbage every call leaves. Known fields are
 * checked in a fixed order, so the first problem reported does not
 * depend on hash order. Then JSON nulls and unknown fields are cleared.
 * ------------------------------------------------------------------- */

typedef enum field_type {
  AC_FIELD_STRING,          /* a non-empty string */
  AC_FIELD_STRING_OR_NULL,  /* a string or null */
  AC_FIELD_STRINGS,         /* an array of strings, or null */
  AC_FIELD_POLICY,          /* the policy object, or null */
  AC_FIELD_STATEMENT,       /* one statement object or a list, or null */
  AC_FIELD_CREDENTIAL       /* the credential object */
} field_type;

typedef struct field {
  const char *name;
  size_t len;
  field_type type;
} field;

#define FIELD(name, type) {name, sizeof name - 1, type}

static const field result_fields[] = {
  FIELD("server_end_point", AC_FIELD_STRING),
  FIELD("bucket_name", AC_FIELD_STRING),
  FIELD("object_path", AC_FIELD_STRING),
  FIELD("policy", AC_FIELD_POLICY),
  FIELD("credential", AC_FIELD_CREDENTIAL),
  {NULL, 0, AC_FIELD_STRING}
};

static const field policy_fields[] = {
  FIELD("version", AC_FIELD_STRING_OR_NULL),
  FIELD("statement", AC_FIELD_STATEMENT),
  {NULL, 0, AC_FIELD_STRING}
};

static const field statement_fields[] = {
  FIELD("effect", AC_FIELD_STRING_OR_NULL),
  FIELD("action", AC_FIELD_STRINGS),
  FIELD("resource", AC_FIELD_STRINGS),
  {NULL, 0, AC_FIELD_STRING}
};

static const field credential_fields[] = {
  FIELD("access", AC_FIELD_STRING),
  FIELD("secret", AC_FIELD_STRING),
  FIELD("security_token", AC_FIELD_STRING),
  {NULL, 0, AC_FIELD_STRING}
};

#undef FIELD


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


/* Records that the required string at path.key is empty. */
static void shape_fail_empty(shape *s, const char *path, const char *key) {
  if (s->failed)
    return;
  s->failed = 1;
  snprintf(s->msg, sizeof s->msg, "invalid response: %s%s%s is empty",
           path, *path ? "." : "", key);
}


/* Tells a non-empty JSON object from an array. lua-cjson decodes an
 * array to keys 1..n and an object to string keys. */
static int is_json_object(lua_State *L, int idx) {
  if (lua_rawlen(L, idx) > 0)
    return 0;
  lua_pushnil(L);
  if (lua_next(L, idx) == 0)
    return 0;
  lua_pop(L, 2);
  return 1;
}


/* Checks that every element of the array at idx is a string. */
static void check_strings(shape *s, int idx, const char *path,
                          const char *key) {
  lua_State *L = s->L;
  char where[AC_TEXT_SIZE];
  int i, n;

  if (is_json_object(L, idx)) {
    snprintf(s->msg, sizeof s->msg, "invalid response: %s.%s must be an "
             "array of strings, got an object", path, key);
    s->failed = 1;
    return;
  }
  n = (int)lua_rawlen(L, idx);
  for (i = 1; i <= n && !s->failed; i++) {
    lua_rawgeti(L, idx, i);
    if (lua_type(L, -1) != LUA_TSTRING) {
      snprintf(where, sizeof where, "%s[%d]", key, i);
      shape_fail(s, path, where, "a string", -1);
    }
    lua_pop(L, 1);
  }
}


static void shape_object(shape *s, int idx, const char *path,
                         const field *fields);


/* Shapes each object of the statement list at idx. */
static void shape_statements(shape *s, int idx) {
  lua_State *L = s->L;
  char path[48];
  int i, n = (int)lua_rawlen(L, idx);

  for (i = 1; i <= n && !s->failed; i++) {
    snprintf(path, sizeof path, "policy.statement[%d]", i);
    lua_rawgeti(L, idx, i);
    if (lua_istable(L, -1))
      shape_object(s, lua_gettop(L), path, statement_fields);
    else
      shape_fail(s, "policy", path + 7, "an object", -1);
    lua_pop(L, 1);
  }
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


/* lua-cjson decodes [] and {} to the same empty table, so the message
 * covers both. */
static void fail_empty_statement(shape *s) {
  if (s->failed)
    return;
  s->failed = 1;
  snprintf(s->msg, sizeof s->msg, "invalid response: policy.statement is "
           "empty, expected an object with effect, action and resource");
}


/* Checks the value on top of the stack, obj[f->name]. A JSON null that
 * f allows is cleared in obj. */
static void shape_field(shape *s, int obj, const char *path,
                        const field *f) {
  lua_State *L = s->L;
  int top = lua_gettop(L);

  if (is_json_null(L, top) && f->type != AC_FIELD_STRING
      && f->type != AC_FIELD_CREDENTIAL) {
    lua_pushnil(L);
    lua_setfield(L, obj, f->name);
    return;
  }
  switch (f->type) {
  case AC_FIELD_STRING:
  case AC_FIELD_STRING_OR_NULL:
    if (lua_type(L, top) != LUA_TSTRING)
      shape_fail(s, path, f->name, "a string", top);
    else if (f->type == AC_FIELD_STRING && lua_rawlen(L, top) == 0)
      shape_fail_empty(s, path, f->name);
    return;
  case AC_FIELD_STRINGS:
    if (lua_istable(L, top))
      check_strings(s, top, path, f->name);
    else
      shape_fail(s, path, f->name, "an array of strings", top);
    return;
  case AC_FIELD_STATEMENT:
    if (lua_istable(L, top) && is_empty_table(L, top))
      fail_empty_statement(s);
    else if (lua_istable(L, top) && is_statement_list(L, top))
      shape_statements(s, top);
    else if (lua_istable(L, top))
      shape_object(s, top, "policy.statement", statement_fields);
    else
      shape_fail(s, path, f->name, "an object", top);
    return;
  case AC_FIELD_POLICY:
  case AC_FIELD_CREDENTIAL:
    /* Both sit at the top level, so the name is the path. */
    if (lua_istable(L, top) && lua_rawlen(L, top) == 0)
      shape_object(s, top, f->name, f->type == AC_FIELD_POLICY
                   ? policy_fields : credential_fields);
    else
      shape_fail(s, path, f->name, "an object", top);
    return;
  }
}


static int is_known_key(lua_State *L, int idx, const field *fields) {
  const char *key;
  size_t len;
  const field *f;

  if (lua_type(L, idx) != LUA_TSTRING)
    return 0;
  key = lua_tolstring(L, idx, &len);
  for (f = fields; f->name != NULL; f++)
    if (f->len == len && memcmp(f->name, key, len) == 0)
      return 1;
  return 0;
}


/* Checks the known fields of the object at idx in order, then clears
 * every other field. */
static void shape_object(shape *s, int idx, const char *path,
                         const field *fields) {
  lua_State *L = s->L;
  const field *f;

  for (f = fields; f->name != NULL && !s->failed; f++) {
    lua_getfield(L, idx, f->name);
    shape_field(s, idx, path, f);
    lua_pop(L, 1);
  }
  if (s->failed)
    return;

  /* Clearing a field while next walks the table is allowed. */
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    lua_pop(L, 1);
    if (!is_known_key(L, -1, fields)) {
      lua_pushvalue(L, -1);
      lua_pushnil(L);
      lua_rawset(L, idx);
    }
  }
}


/* Turns the decoded body at idx into the result, or returns -1 with
 * s->msg set. The stack is left as it was. */
static int shape_result(shape *s, int idx) {
  lua_State *L = s->L;
  int top = lua_gettop(L);

  if (!lua_istable(L, idx) || lua_rawlen(L, idx) > 0) {
    snprintf(s->msg, sizeof s->msg, "invalid response: the body must be "
             "a JSON object, got %s", json_type_name(L, idx));
    return -1;
  }
  if (is_empty_table(L, idx)) {
    snprintf(s->msg, sizeof s->msg, "invalid response: the body is an "
             "empty JSON object or array, expected an object with "
             "server_end_point, bucket_name, object_path, policy and "
             "credential");
    return -1;
  }
  if (!lua_checkstack(L, 32)) {
    snprintf(s->msg, sizeof s->msg, "not enough memory");
    return -1;
  }
  shape_object(s, idx, "", result_fields);
  lua_settop(L, top);
  return s->failed ? -1 : 0;
}


/* ---------------------------------------------------------------------
 * Failure: the error table
 * ------------------------------------------------------------------- */

/* Copies the string or number at idx into out (AC_TEXT_SIZE bytes), at
 * most max bytes (a whole number has at most 17). lua-cjson decodes every
 * number as a float, which Lua 5.4 writes as "400.0", so a whole number
 * is written without a fraction. */
static void copy_error_text(lua_State *L, int idx, char *out, size_t max) {
  const char *v;
  size_t len;

  if (lua_type(L, idx) == LUA_TNUMBER) {
    lua_Number d = lua_tonumber(L, idx);

    /* 2^53: past it a double is no longer exact in every integer. */
    if (d > -9007199254740992.0 && d < 9007199254740992.0
        && d == (lua_Number)(long long)d) {
      snprintf(out, AC_TEXT_SIZE, "%lld", (long long)d);
      return;
    }
  }
  if ((v = lua_tolstring(L, idx, &len)) != NULL)
    clean_text(out, v, len, max, 0);
}


/* Looks for one of the code/message key pairs the official SDKs accept
 * in the table at idx; copies them into code and message. */
static int find_error_pair(lua_State *L, int idx, char *code,
                           char *message) {
  static const char *const pairs[][2] = {
    {"error_code", "error_msg"},
    {"errorCode", "errorMsg"},
    {"code", "message"},
  };
  size_t i;

  for (i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
    lua_getfield(L, idx, pairs[i][0]);
    lua_getfield(L, idx, pairs[i][1]);
    if (lua_isstring(L, -2) || lua_isstring(L, -1)) {
      copy_error_text(L, -2, code, 64);
      copy_error_text(L, -1, message, AC_TEXT_SIZE);
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


/* Kinds of keys that name a returned secret. */
enum { AC_SECRET_VALUE = 1, AC_SECRET_OBJECT = 2 };

/* Returns the kind of returned secret that the key on the stack at idx
 * names: AC_SECRET_VALUE for "secret" and "security_token", whose strings and
 * arrays of strings are secrets, AC_SECRET_OBJECT for "credential", a
 * secret only as a string, and 0 otherwise. */
static int secret_key(lua_State *L, int idx) {
  size_t len;
  const char *key;

  if (lua_type(L, idx) != LUA_TSTRING)
    return 0;
  key = lua_tolstring(L, idx, &len);
  if ((len == 6 && memcmp(key, "secret", 6) == 0)
      || (len == 14 && memcmp(key, "security_token", 14) == 0))
    return AC_SECRET_VALUE;
  if (len == 10 && memcmp(key, "credential", 10) == 0)
    return AC_SECRET_OBJECT;
  return 0;
}


/* The state of a search for the secrets that a body returns. */
typedef struct secret_search {
  const char **list;  /* where found strings are added, at n */
  int n, max;
  int budget;         /* entries left to visit */
  int complete;       /* cleared when a limit stopped the search */
} secret_search;


/* Walks the decoded body at idx, to a depth of AC_SECRET_DEPTH and for
 * at most AC_SECRET_BUDGET entries, and adds to the list the strings that
 * secret_key names. With in_secret, every string below idx is one. A
 * gateway that reports an error may echo, at any depth, the response
 * that carried them. The strings belong to the body. */
static void add_returned_secrets(lua_State *L, int idx, secret_search *s,
                                 int depth, int in_secret) {
  if (!lua_istable(L, idx))
    return;
  if (depth > AC_SECRET_DEPTH || !lua_checkstack(L, 3)) {
    s->complete = 0;
    return;
  }
  lua_pushnil(L);
  while (s->n < s->max && s->budget > 0 && lua_next(L, idx) != 0) {
    int kind = secret_key(L, -2);

    s->budget--;
    if (lua_type(L, -1) == LUA_TTABLE)
      add_returned_secrets(L, lua_gettop(L), s, depth + 1,
                           in_secret || kind == AC_SECRET_VALUE);
    else if (lua_type(L, -1) == LUA_TSTRING && (in_secret || kind != 0))
      s->list[s->n++] = lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  if (s->n >= s->max || s->budget <= 0) {
    lua_pop(L, 1);  /* the key that lua_next left */
    s->complete = 0;
  }
}


/* Reports whether the body names a credential field, so that no part of
 * it may be quoted. */
static int mentions_credential(const char *body, size_t len) {
  static const char *const names[] = {"\"secret\"", "\"security_token\"",
                                      "\"credential\""};
  size_t i, at, n;

  for (i = 0; i < sizeof names / sizeof names[0]; i++) {
    n = strlen(names[i]);
    for (at = 0; at + n <= len; at++)
      if (memcmp(body + at, names[i], n) == 0)
        return 1;
  }
  return 0;
}


/* Fills list (AC_SECRET_LIST entries) with the request's secrets and
 * those that the decoded body at idx (0: none) returns, then NULL. The
 * body must stay on the stack while the list is in use. Returns 1, or 0
 * when a limit stopped the search in a body that names a credential
 * field: a returned secret may then be missing from the list, so no text
 * of the body may be quoted. */
static int list_secrets(lua_State *L, const ac_response *r, int idx,
                        const char **list) {
  secret_search s = {.list = list, .max = AC_SECRET_LIST - 1,
                     .budget = AC_SECRET_BUDGET, .complete = 1};

  while (r->secrets != NULL && r->secrets[s.n] != NULL
         && s.n < AC_MAX_SECRETS) {
    list[s.n] = r->secrets[s.n];
    s.n++;
  }
  if (idx != 0)
    add_returned_secrets(L, idx, &s, 0, 0);
  list[s.n] = NULL;
  return s.complete || !mentions_credential(r->body, r->body_len);
}


/* Cuts s to at most max bytes at a UTF-8 character boundary and redacts
 * it. A secret cut at the end is only caught while it ends the text, so
 * each part of a message is cut and redacted before more text follows. */
static void cut_and_redact(char *s, size_t max, const char *const *secrets) {
  size_t len = strlen(s);

  if (len > max) {
    len = max;
    while (len > 0 && ((unsigned char)s[len] & 0xC0) == 0x80)
      len--;
    s[len] = '\0';
  }
  ac_redact(s, secrets);
}


static int is_redirect(long status) {
  return status == 301 || status == 302 || status == 303 || status == 307
      || status == 308;
}


static void push_http_error(lua_State *L, const ac_response *r) {
  ac_error_info e = {0};
  char code[AC_TEXT_SIZE] = "", found[AC_TEXT_SIZE] = "";
  char message[AC_TEXT_SIZE], prefix[AC_TEXT_SIZE];
  const char *secrets[AC_SECRET_LIST];
  int top = lua_gettop(L), decoded = 0;

  if (!r->body_cut && r->body_len > 0
      && decode_json(L, r->body, r->body_len) == 0) {
    decoded = 1;
  } else {
    lua_settop(L, top);
  }
  if (list_secrets(L, r, decoded ? top + 1 : 0, secrets) && decoded)
    find_error_fields(L, top + 1, code, found);

  /* The start of a body cannot be decoded, so the secrets it may return
   * are unknown, and it is not quoted. */
  if (r->body_cut) {
    snprintf(message, sizeof message, "HTTP %ld: the body is larger than "
             "max_body_bytes (%lu bytes), so it is not shown", r->status,
             (unsigned long)r->max_body_bytes);
  } else if (is_redirect(r->status)) {
    const char *to = r->redirect_url ? r->redirect_url : "";

    /* The Location may carry the request's own token as a query. */
    clean_text(prefix, to, strlen(to), 200, 0);
    ac_redact(prefix, secrets);
    snprintf(message, sizeof message, "HTTP %ld: a redirect%s%.200s, which "
             "is not followed; check the endpoint or region", r->status,
             prefix[0] ? " to " : " without a Location", prefix);
  } else if (found[0] != '\0') {
    snprintf(message, sizeof message, "%s", found);
  } else if (code[0] != '\0') {
    snprintf(message, sizeof message, "HTTP %ld without a message",
             r->status);
  } else if (r->body_len == 0) {
    snprintf(message, sizeof message, "HTTP %ld with an empty body",
             r->status);
  } else if (mentions_credential(r->body, r->body_len)) {
    snprintf(message, sizeof message, "HTTP %ld: the body is not shown "
             "because it names credential fields", r->status);
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
  e.secrets = secrets;
  ac_push_error(L, &e);
  if (decoded)
    lua_remove(L, top + 1);
}


/* Pushes nil and an invalid_response error. code may be "" for the
 * status, and secrets NULL for the request's own. */
static void push_invalid_response(lua_State *L, const ac_response *r,
                                  const char *code, const char *message,
                                  const char *const *secrets) {
  ac_error_info e = {0};

  e.kind = AC_KIND_INVALID_RESPONSE;
  e.status = r->status;
  e.code = code;
  e.message = message;
  e.request_id = r->request_id;
  e.secrets = secrets ? secrets : r->secrets;
  lua_pushnil(L);
  ac_push_error(L, &e);
}


/* Pushes nil and the error for a 2xx body at idx that failed shaping
 * with s->msg. A body with error fields, as some gateways send with 200,
 * has them added to the message. */
static void push_unshaped(lua_State *L, const ac_response *r, int idx,
                          const shape *s) {
  char code[AC_TEXT_SIZE] = "", found[AC_TEXT_SIZE] = "";
  char message[AC_TEXT_SIZE];
  const char *secrets[AC_SECRET_LIST];

  if (list_secrets(L, r, idx, secrets))
    find_error_fields(L, idx, code, found);
  cut_and_redact(code, 64, secrets);
  cut_and_redact(found, 200, secrets);
  if (code[0] != '\0' || found[0] != '\0')
    snprintf(message, sizeof message, "%.200s (the body is an error: "
             "%.64s%s%.200s)", s->msg, code, code[0] && found[0] ? ": " : "",
             found);
  else
    snprintf(message, sizeof message, "%s", s->msg);
  push_invalid_response(L, r, code, message, secrets);
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
    push_invalid_response(L, r, "", "invalid response: the body is empty",
                          NULL);
    return 2;
  }
  if (decode_json(L, r->body, r->body_len) != 0) {
    snprintf(message, sizeof message, "invalid response: the body is "
             "not valid JSON (%s)", lua_tostring(L, -1));
    lua_settop(L, top);
    push_invalid_response(L, r, "", message, NULL);
    return 2;
  }

  s.L = L;
  s.failed = 0;
  if (shape_result(&s, top + 1) != 0) {
    push_unshaped(L, r, top + 1, &s);
    lua_remove(L, top + 1);
    return 2;
  }
  push_meta(L, r);
  return 2;
}
