/*
 * appcenter.core: the Lua binding.
 *
 * A client userdata owns one libcurl easy handle and everything a call
 * needs, so a Lua error at any point leaves nothing behind: __gc frees
 * it. Wrong option types raise; bad values and every data or network
 * failure return nil and an error table.
 *
 * Caveats: a client serves one call at a time and must not be shared
 * between OS threads. Retries live in the Lua wrapper, not here.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>

#include "client.h"
#include "compat.h"
#include "error.h"
#include "region.h"
#include "request.h"
#include "response.h"
#include "sign.h"
#include "transport.h"
#include "upload.h"

#define AC_VERSION "0.1.0"

/* Real IAM tokens run to tens of KiB (an estimate from PKI tokens with
 * large catalogs), so this limit only stops runaway input. */
#ifndef AC_MAX_TOKEN_BYTES
#define AC_MAX_TOKEN_BYTES (256 * 1024)
#endif

/* Upper bounds for millisecond options: one day. */
#define AC_MAX_TIMEOUT_MS 86400000L

#define AC_MAX_BODY_LIMIT (1024L * 1024 * 1024)

/* More connections than this to one service is a configuration error. */
#define AC_MAX_CONNECTIONS 1024

#if defined(__GNUC__)
#define AC_EXPORT __attribute__((visibility("default")))
#else
#define AC_EXPORT
#endif

AC_EXPORT int luaopen_appcenter_core(lua_State *L);


/* ---------------------------------------------------------------------
 * Option tables
 * ------------------------------------------------------------------- */

static const ac_option client_options[] = {
  {"endpoint", LUA_TSTRING},
  {"region", LUA_TSTRING},
  {"project_id", LUA_TSTRING},
  {"token", LUA_TSTRING},
  {"ak", LUA_TSTRING},
  {"sk", LUA_TSTRING},
  {"security_token", LUA_TSTRING},
  {"timeout_ms", LUA_TNUMBER},
  {"connect_timeout_ms", LUA_TNUMBER},
  {"ca_file", LUA_TSTRING},
  {"verify_tls", LUA_TBOOLEAN},
  {"proxy", LUA_TSTRING},
  {"allow_http", LUA_TBOOLEAN},
  {"max_body_bytes", LUA_TNUMBER},
  {"max_connections", LUA_TNUMBER},
  {"file_name", LUA_TSTRING},  /* one-shot create_credential only */
  {NULL, 0}
};

static const ac_option call_options[] = {
  {"timeout_ms", LUA_TNUMBER},
  {NULL, 0}
};


/* Raises for the key below the value on top of the stack, which is not
 * a string: a positional argument such as {"http://127.0.0.1"}. */
static void raise_key_not_name(lua_State *L, const char *fname) {
  const char *type = luaL_typename(L, -2);
  const char *key_text = NULL;

  if (lua_type(L, -2) == LUA_TNUMBER) {
    lua_pushvalue(L, -2);
    key_text = lua_tostring(L, -1);
  } else if (lua_type(L, -2) == LUA_TBOOLEAN) {
    key_text = lua_toboolean(L, -2) ? "true" : "false";
  }
  if (key_text != NULL)
    luaL_error(L, "%s: option names must be strings, got the %s key %s; "
               "pass options as name = value", fname, type, key_text);
  luaL_error(L, "%s: option names must be strings, got a %s key; pass "
             "options as name = value", fname, type);
}


void ac_check_options(lua_State *L, int idx, const ac_option *list,
                      const char *fname, int allow_file_name) {
  const ac_option *o;

  idx = ac_absindex(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    const char *key = lua_type(L, -2) == LUA_TSTRING
                    ? lua_tostring(L, -2) : NULL;

    for (o = list; key != NULL && o->name != NULL; o++)
      if (strcmp(o->name, key) == 0)
        break;
    if (key == NULL)
      raise_key_not_name(L, fname);
    if (o->name == NULL
        || (!allow_file_name && strcmp(key, "file_name") == 0))
      luaL_error(L, "%s: unknown option '%s'", fname, key);
    if (lua_type(L, -1) != o->type)
      luaL_error(L, "%s: option '%s' must be a %s, got %s", fname, key,
                 lua_typename(L, o->type), luaL_typename(L, -1));
    lua_pop(L, 1);
  }

  /* Options that an __index metamethod supplies get the same check, or
   * "false" would read as true and 12345 as a token. */
  if (!lua_getmetatable(L, idx))
    return;
  lua_pop(L, 1);
  for (o = list; o->name != NULL; o++) {
    /* A strict table may raise for a name the caller cannot pass. */
    if (!allow_file_name && strcmp(o->name, "file_name") == 0)
      continue;
    lua_getfield(L, idx, o->name);
    if (!lua_isnil(L, -1) && lua_type(L, -1) != o->type)
      luaL_error(L, "%s: option '%s' must be a %s, got %s", fname, o->name,
                 lua_typename(L, o->type), luaL_typename(L, -1));
    lua_pop(L, 1);
  }
}


/* Reads opts[name] and leaves it on the stack, which keeps the string
 * alive while the caller uses it: an __index metamethod can return a
 * string that no table references. */
static const char *opt_string(lua_State *L, int idx, const char *name,
                              size_t *len) {
  luaL_checkstack(L, 1, "reading the options");
  lua_getfield(L, idx, name);
  return lua_tolstring(L, -1, len);
}


/* Reads a string option that C code handles as a NUL-terminated string,
 * such as a path, a URL or a region id, and rejects a NUL byte in it,
 * which would end the string early. Sets *out to NULL when the option
 * is absent. len may be NULL. */
static int opt_text(lua_State *L, int opts, const char *name,
                    const char **out, size_t *len, char *msg) {
  size_t n = 0;

  *out = opt_string(L, opts, name, &n);
  if (len != NULL)
    *len = n;
  return *out != NULL ? ac_check_no_nul(name, *out, n, msg) : 0;
}


static int opt_bool(lua_State *L, int idx, const char *name, int def) {
  int v;

  lua_getfield(L, idx, name);
  v = lua_isnil(L, -1) ? def : lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}


/* Reads a whole number in [1, max] into *out; def when absent. */
static int opt_count(lua_State *L, int idx, const char *name, long def,
                     long max, long *out, char *msg) {
  lua_Number v;

  lua_getfield(L, idx, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    *out = def;
    return 0;
  }
  v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (!(v >= 1 && v <= (lua_Number)max) || floor(v) != v) {
    char shown[AC_NUMBER_TEXT_SIZE];

    /* 14 significant digits, as Lua's tostring writes a float, but
     * without the ".0" that Lua 5.4 adds to a whole number. */
    ac_format_number(shown, (double)v, 14);
    snprintf(msg, AC_MSG_SIZE, "invalid %s: %s is not a whole number "
             "from 1 to %ld", name, shown, max);
    return -1;
  }
  *out = (long)v;
  return 0;
}


/* ---------------------------------------------------------------------
 * Client lifetime
 * ------------------------------------------------------------------- */

/* Overwrites a secret before freeing it, so it does not linger in freed
 * heap memory. */
static void free_secret(char *s) {
  if (s != NULL)
    ac_wipe(s, strlen(s));
  free(s);
}


static void client_release(ac_client *c) {
  /* Before libcurl closes connections that a parent process may use. */
  ac_client_after_fork(c);
  ac_multi_close(NULL, 0, c);
  ac_transport_free(&c->transport);
  ac_transport_free(&c->upload);
  ac_endpoint_free(&c->endpoint);
  ac_free_secret_headers(c->headers);
  free(c->project_id);
  free(c->ak);
  free(c->ca_file);
  free_secret(c->proxy);
  free_secret(c->proxy_password);
  free_secret(c->token);
  free_secret(c->sk);
  ac_signer_free(c->signer);
  free_secret(c->security_token);
  ac_buf_free(&c->url);
  ac_buf_free(&c->body);
  ac_buf_free(&c->authorization);
  ac_call_headers_free(&c->call_headers);
  ac_socket_list_free(&c->opened_sockets);
  memset(c, 0, sizeof *c);
}


static char *copy_string(const char *s, size_t len) {
  char *copy = malloc(len + 1);

  if (copy != NULL) {
    memcpy(copy, s, len);
    copy[len] = '\0';
  }
  return copy;
}


static ac_client *check_client(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, AC_CLIENT_MT);
}


static ac_client *check_open_client(lua_State *L, int idx) {
  ac_client *c = check_client(L, idx);

  if (!c->open)
    luaL_error(L, "appcenter.core: the client is closed");
  return c;
}


/* ---------------------------------------------------------------------
 * Client configuration
 * ------------------------------------------------------------------- */

static int configure_endpoint(lua_State *L, int opts, ac_client *c,
                              char *msg) {
  char from_region[AC_MAX_ENDPOINT_BYTES + 1];
  const char *endpoint, *region;
  size_t len;

  if (opt_text(L, opts, "endpoint", &endpoint, &len, msg) != 0
      || opt_text(L, opts, "region", &region, NULL, msg) != 0)
    return -1;
  if (endpoint == NULL && region == NULL) {
    snprintf(msg, AC_MSG_SIZE, "missing endpoint: pass endpoint = "
             "\"https://...\" or region = \"cn-north-4\"");
    return -1;
  }
  if (endpoint == NULL) {
    if (ac_region_endpoint(region, from_region, sizeof from_region,
                           msg) != 0)
      return -1;
    endpoint = from_region;
    len = strlen(from_region);
  }
  return ac_parse_endpoint(endpoint, len,
                           opt_bool(L, opts, "allow_http", 0),
                           &c->endpoint, msg);
}


/* Exactly one of token or ak+sk; security_token only with ak+sk. */
static int check_auth_combination(const char *token, const char *ak,
                                  const char *sk, const char *st,
                                  char *msg) {
  const char *problem = NULL;

  if (token != NULL && (ak != NULL || sk != NULL))
    problem = "pass either token or ak and sk, not both";
  else if ((ak == NULL) != (sk == NULL))
    problem = ak ? "ak needs sk" : "sk needs ak";
  else if (st != NULL && ak == NULL)
    problem = "security_token needs ak and sk";
  else if (token == NULL && ak == NULL)
    problem = "missing credentials: pass token, or ak and sk";
  if (problem == NULL)
    return 0;
  snprintf(msg, AC_MSG_SIZE, "invalid credentials: %s", problem);
  return -1;
}


/* Fills list with the secrets that are set, then NULL. The list ends at
 * its first NULL, so an unset secret must not leave a gap. */
static void set_secrets(const char **list, const char *token,
                        const char *sk, const char *security_token,
                        const char *proxy_password) {
  size_t n = 0;

  if (token != NULL)
    list[n++] = token;
  if (sk != NULL)
    list[n++] = sk;
  if (security_token != NULL)
    list[n++] = security_token;
  if (proxy_password != NULL)
    list[n++] = proxy_password;
  list[n] = NULL;
}


/* Rejects an ak with white space, a comma or a control character. No
 * access key ID contains them, and they would break the fields of the
 * Authorization header, which ", " separates. */
static int check_ak(const char *ak, size_t len, char *msg) {
  size_t i;

  for (i = 0; i < len; i++)
    if ((unsigned char)ak[i] <= ' ' || ak[i] == ',' || ak[i] == 0x7F) {
      snprintf(msg, AC_MSG_SIZE, "invalid ak: white space, a comma or a "
               "control character at byte %lu; pass the access key ID "
               "alone", (unsigned long)i + 1);
      return -1;
    }
  return 0;
}


/* Rejects a token that is blank or has white space or a control
 * character inside. No IAM token or security token contains them.
 * Spaces and tabs around it are allowed, because configure_auth drops
 * them, as an HTTP receiver drops them around a header value. */
static int check_token(const char *field, const char *s, size_t len,
                       char *msg) {
  const char *start = s;
  size_t n = len, i;

  ac_trim_blanks(&start, &n);
  if (n == 0) {
    snprintf(msg, AC_MSG_SIZE, "invalid %s: it contains only white space; "
             "pass the token itself", field);
    return -1;
  }
  for (i = 0; i < n; i++)
    if ((unsigned char)start[i] <= ' ' || start[i] == 0x7F) {
      snprintf(msg, AC_MSG_SIZE, "invalid %s: white space or a control "
               "character at byte %lu; pass the token alone, with no white "
               "space inside it", field,
               (unsigned long)(start - s) + i + 1);
      return -1;
    }
  return 0;
}


static int configure_auth(lua_State *L, int opts, ac_client *c,
                          char *msg) {
  size_t token_len = 0, ak_len = 0, sk_len = 0, st_len = 0;
  const char *token = opt_string(L, opts, "token", &token_len);
  const char *ak = opt_string(L, opts, "ak", &ak_len);
  const char *sk = opt_string(L, opts, "sk", &sk_len);
  const char *st = opt_string(L, opts, "security_token", &st_len);

  if (check_auth_combination(token, ak, sk, st, msg) != 0)
    return -1;
  if (token_len > AC_MAX_TOKEN_BYTES || st_len > AC_MAX_TOKEN_BYTES) {
    snprintf(msg, AC_MSG_SIZE, "invalid %s: longer than the maximum of "
             "%d bytes", token ? "token" : "security_token",
             AC_MAX_TOKEN_BYTES);
    return -1;
  }
  if ((token && ac_check_header_value("token", token, token_len, msg))
      || (token && check_token("token", token, token_len, msg))
      || (ak && ac_check_header_value("ak", ak, ak_len, msg))
      || (ak && check_ak(ak, ak_len, msg))
      || (sk && ac_check_header_value("sk", sk, sk_len, msg))
      || (st && ac_check_header_value("security_token", st, st_len, msg))
      || (st && check_token("security_token", st, st_len, msg)))
    return -1;

  if (token)
    ac_trim_blanks(&token, &token_len);
  if (st)
    ac_trim_blanks(&st, &st_len);
  c->token = token ? copy_string(token, token_len) : NULL;
  c->ak = ak ? copy_string(ak, ak_len) : NULL;
  c->sk = sk ? copy_string(sk, sk_len) : NULL;
  c->security_token = st ? copy_string(st, st_len) : NULL;
  c->signer = sk ? ac_signer_new(sk, sk_len) : NULL;
  set_secrets(c->secrets, c->token, c->sk, c->security_token, NULL);
  if ((token && !c->token) || (ak && !c->ak) || (sk && !c->sk)
      || (st && !c->security_token)) {
    snprintf(msg, AC_MSG_SIZE, "not enough memory");
    return -1;
  }
  if (sk && !c->signer) {
    snprintf(msg, AC_MSG_SIZE, "AK/SK signing setup failed: not enough "
             "memory, or libcrypto lacks SHA-256");
    return -1;
  }
  return 0;
}


/* Checks the proxy URL and keeps its password, if any, in
 * c->proxy_password for redaction. Messages never contain the URL,
 * because it may contain the password. */
static int check_proxy(ac_client *c, const char *proxy, char *msg) {
  static const char *const schemes[] = {"http", "https", "socks4",
                                        "socks4a", "socks5", "socks5h",
                                        NULL};
  const char *const *known;
  char *scheme = NULL, *password = NULL, *port = NULL;
  CURLU *url;
  CURLUcode rc;
  int ok = 0;

  if (proxy[0] == '\0')
    return 0;  /* no proxy, not even from the environment */
  url = curl_url();
  if (url == NULL) {
    snprintf(msg, AC_MSG_SIZE, "not enough memory");
    return -1;
  }
  rc = curl_url_set(url, CURLUPART_URL, proxy,
                    CURLU_GUESS_SCHEME | CURLU_NON_SUPPORT_SCHEME);
  if (rc == CURLUE_OK)
    rc = curl_url_get(url, CURLUPART_SCHEME, &scheme, 0);
  if (rc == CURLUE_OK)
    for (known = schemes; *known != NULL && !ok; known++)
      ok = strcasecmp(scheme, *known) == 0;
  if (rc != CURLUE_OK)
    snprintf(msg, AC_MSG_SIZE, "invalid proxy: not a URL (%s); pass "
             "e.g. \"http://proxy.example:3128\"", curl_url_strerror(rc));
  else if (!ok)
    snprintf(msg, AC_MSG_SIZE, "invalid proxy: unsupported scheme "
             "\"%.32s\"; use http, https, socks4, socks4a, socks5 or "
             "socks5h", scheme);
  else if (curl_url_get(url, CURLUPART_PORT, &port, 0) == CURLUE_OK
           && strcmp(port, "0") == 0) {
    snprintf(msg, AC_MSG_SIZE, "invalid proxy: the port must be a number "
             "from 1 to 65535");
    ok = 0;
  } else if (curl_url_get(url, CURLUPART_PASSWORD, &password, 0) == CURLUE_OK
           && (c->proxy_password = copy_string(password,
                                               strlen(password))) == NULL) {
    snprintf(msg, AC_MSG_SIZE, "not enough memory");
    ok = 0;
  }
  if (password != NULL)
    ac_wipe(password, strlen(password));
  curl_free(password);
  curl_free(port);
  curl_free(scheme);
  curl_url_cleanup(url);
  return ok ? 0 : -1;
}


/* Checks that ca_file opens for reading and is a regular file, so that
 * new() reports a wrong path instead of the first call. O_NONBLOCK keeps
 * a FIFO from blocking the open. libcurl reads the file for each new
 * connection, where a FIFO would block the call. */
static int check_ca_file(const char *path, char *msg) {
  struct stat st;
  int fd = open(path, O_RDONLY | O_NONBLOCK);
  int stated;

  if (fd < 0) {
    snprintf(msg, AC_MSG_SIZE, "invalid ca_file '%.200s': %s; pass a "
             "readable file of PEM certificates", path, strerror(errno));
    return -1;
  }
  stated = fstat(fd, &st) == 0;
  close(fd);
  if (stated && S_ISDIR(st.st_mode)) {
    snprintf(msg, AC_MSG_SIZE, "invalid ca_file '%.200s': it is a "
             "directory; pass a file of PEM certificates", path);
    return -1;
  }
  if (stated && !S_ISREG(st.st_mode)) {
    snprintf(msg, AC_MSG_SIZE, "invalid ca_file '%.200s': it is not a "
             "regular file, and it is read again for each new connection; "
             "pass a file of PEM certificates", path);
    return -1;
  }
  return 0;
}


static int configure_transport(lua_State *L, int opts, ac_client *c,
                               char *msg) {
  ac_transport_opts *t = &c->transport_opts;
  const char *ca_file, *proxy;
  long max_body;

  if (opt_text(L, opts, "ca_file", &ca_file, NULL, msg) != 0
      || (ca_file != NULL && check_ca_file(ca_file, msg) != 0)
      || opt_text(L, opts, "proxy", &proxy, NULL, msg) != 0
      || (proxy != NULL && check_proxy(c, proxy, msg) != 0))
    return -1;
  /* Adds the proxy password to the secrets that configure_auth listed. */
  set_secrets(c->secrets, c->token, c->sk, c->security_token,
              c->proxy_password);

  if (opt_count(L, opts, "timeout_ms", AC_DEFAULT_TIMEOUT_MS,
                AC_MAX_TIMEOUT_MS, &t->timeout_ms, msg) != 0
      || opt_count(L, opts, "connect_timeout_ms",
                   AC_DEFAULT_CONNECT_TIMEOUT_MS, AC_MAX_TIMEOUT_MS,
                   &t->connect_timeout_ms, msg) != 0
      || opt_count(L, opts, "max_body_bytes", AC_DEFAULT_MAX_BODY_BYTES,
                   AC_MAX_BODY_LIMIT, &max_body, msg) != 0
      || opt_count(L, opts, "max_connections", AC_DEFAULT_MAX_CONNECTIONS,
                   AC_MAX_CONNECTIONS, &c->max_connections, msg) != 0)
    return -1;

  /* The multi interface configures new handles later, so the strings
   * are copied out of the options table. */
  c->ca_file = ca_file ? copy_string(ca_file, strlen(ca_file)) : NULL;
  c->proxy = proxy ? copy_string(proxy, strlen(proxy)) : NULL;
  if ((ca_file && !c->ca_file) || (proxy && !c->proxy)) {
    snprintf(msg, AC_MSG_SIZE, "not enough memory");
    return -1;
  }
  snprintf(c->user_agent, sizeof c->user_agent,
           "lua-appcenter/%s libcurl/%s %s", AC_VERSION,
           ac_curl_version(), AC_LUA_NAME);
  t->max_body_bytes = (size_t)max_body;
  t->verify_tls = opt_bool(L, opts, "verify_tls", 1);
  t->ca_file = c->ca_file;
  t->proxy = c->proxy ? c->proxy : ac_transport_default_proxy();
  t->user_agent = c->user_agent;
  t->sockets = &c->opened_sockets;
  if (ac_transport_init(&c->transport, t, msg) != 0)
    return -1;
  c->opened_sockets.fork_generation = ac_fork_generation();
  ac_client_go_direct(c, &c->transport);
  return 0;
}


/* Builds the headers every call sends. With AK/SK the date-dependent
 * ones are added per call. */
static int build_fixed_headers(ac_client *c) {
  struct curl_slist *h = NULL;
  ac_buf line = {0};

  h = curl_slist_append(h, "Content-Type: application/json");
  h = h ? curl_slist_append(h, "Expect:") : NULL;
  if (h != NULL && c->token != NULL) {
    struct curl_slist *with_token = NULL;

    ac_buf_adds(&line, "X-Auth-Token: ");
    ac_buf_adds(&line, c->token);
    if (!line.failed)
      with_token = curl_slist_append(h, line.data);
    if (with_token == NULL)
      curl_slist_free_all(h);
    h = with_token;
    ac_buf_clear_free(&line);
  }
  c->headers = h;
  return h ? 0 : -1;
}


static int configure_client(lua_State *L, int opts, ac_client *c,
                            char *msg) {
  size_t len;
  const char *project_id;
  long path_at;

  if (configure_endpoint(L, opts, c, msg) != 0)
    return -1;

  if (opt_text(L, opts, "project_id", &project_id, &len, msg) != 0)
    return -1;
  if (project_id == NULL) {
    snprintf(msg, AC_MSG_SIZE, "missing project_id: pass the project "
             "id of the region");
    return -1;
  }
  if (ac_check_project_id(project_id, len, msg) != 0
      || configure_auth(L, opts, c, msg) != 0
      || configure_transport(L, opts, c, msg) != 0)
    return -1;

  c->project_id = copy_string(project_id, len);
  path_at = c->project_id ? ac_build_url(&c->url, &c->endpoint,
                                         c->project_id) : -1;
  if (path_at < 0 || build_fixed_headers(c) != 0) {
    snprintf(msg, AC_MSG_SIZE, "not enough memory");
    return -1;
  }
  c->path_at = (size_t)path_at;
  c->open = 1;
  return 0;
}


/* Pushes a new client for the options at opts; on a bad value pushes
 * nil and an error instead. Returns the number of values pushed. */
static int push_client(lua_State *L, int opts, const char *fname,
                       int allow_file_name) {
  ac_client *c;
  char msg[AC_MSG_SIZE];
  int top;

  luaL_checktype(L, opts, LUA_TTABLE);
  ac_check_options(L, opts, client_options, fname, allow_file_name);

  c = ac_newuserdata(L, sizeof *c);
  memset(c, 0, sizeof *c);
  luaL_getmetatable(L, AC_CLIENT_MT);
  lua_setmetatable(L, -2);
  lua_newtable(L);  /* callbacks of requests in flight */
  ac_setuservalue(L, -2);
  top = lua_gettop(L);

  if (configure_client(L, opts, c, msg) != 0) {
    client_release(c);
    return ac_return_invalid(L, msg);
  }
  /* The client has copied the option strings that it keeps. */
  lua_settop(L, top);
  return 1;
}


/* ---------------------------------------------------------------------
 * One call
 * ------------------------------------------------------------------- */

/* Signs the request and builds its header list in call. Returns the
 * list, or NULL when memory runs out or signing fails. */
static struct curl_slist *signed_headers(ac_client *c, const ac_buf *body,
                                         ac_call_headers *call) {
  static const char json[] = "application/json";
  static const char expect[] = "Expect:";
  char date[AC_SDK_DATE_SIZE];
  ac_header h[AC_CALL_HEADER_LINES];
  size_t at[AC_CALL_HEADER_LINES];
  ac_sign_input in;
  ac_buf *lines = &call->lines;
  size_t i, n = 0, size = sizeof expect;

#define HEADER(name_, value_, value_len_) do { \
    h[n].name = name_; h[n].name_len = sizeof name_ - 1; \
    h[n].value = value_; h[n].value_len = value_len_; n++; \
  } while (0)

  ac_sdk_date(time(NULL), date);
  HEADER("Content-Type", json, sizeof json - 1);
  HEADER("Host", c->endpoint.host, strlen(c->endpoint.host));
  HEADER("X-Project-Id", c->project_id, strlen(c->project_id));
  HEADER("X-Sdk-Date", date, AC_SDK_DATE_SIZE - 1);
  if (c->security_token != NULL)
    HEADER("X-Security-Token", c->security_token,
           strlen(c->security_token));

  memset(&in, 0, sizeof in);
  in.method = "POST";
  in.path = c->url.data + c->path_at;
  in.path_len = c->url.len - c->path_at;
  in.headers = h;
  in.header_count = n;
  in.body = body->data;
  in.body_len = body->len;
  in.ak = c->ak;
  in.sdk_date = date;
  if (ac_signer_sign(c->signer, &in, &c->authorization) != 0)
    return NULL;
  HEADER("Authorization", c->authorization.data, c->authorization.len);
#undef HEADER

  /* Each line is "Name: value" and a NUL, and "Expect:" comes last, so
   * that libcurl sends no Expect: 100-continue. The lines are measured
   * first, so that a new list allocates once. */
  for (i = 0; i < n; i++)
    size += h[i].name_len + 2 + h[i].value_len + 1;
  ac_buf_reset(lines);
  if (ac_buf_reserve(lines, size) != 0)
    return NULL;
  for (i = 0; i < n; i++) {
    at[i] = lines->len;
    ac_buf_add(lines, h[i].name, h[i].name_len);
    ac_buf_add(lines, ": ", 2);
    ac_buf_add(lines, h[i].value, h[i].value_len);
    ac_buf_addc(lines, '\0');
  }
  at[n++] = lines->len;
  ac_buf_add(lines, expect, sizeof expect);

  /* The nodes are linked after all appends, so their pointers stay valid
   * even if an append moved the buffer. */
  for (i = 0; i < n; i++) {
    call->nodes[i].data = lines->data + at[i];
    call->nodes[i].next = i + 1 < n ? &call->nodes[i + 1] : NULL;
  }
  return call->nodes;
}


void ac_call_headers_free(ac_call_headers *call) {
  ac_buf_clear_free(&call->lines);
}


static const char *curl_kind(CURLcode rc) {
  switch (rc) {
  case CURLE_OPERATION_TIMEDOUT:
    return AC_KIND_TIMEOUT;
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_ENGINE_NOTFOUND:
  case CURLE_SSL_ENGINE_SETFAILED:
  case CURLE_SSL_ENGINE_INITFAILED:
  case CURLE_SSL_CRL_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_INVALIDCERTSTATUS:
  case CURLE_SSL_CLIENTCERT:
    return AC_KIND_TLS;
  default:
    return AC_KIND_NETWORK;
  }
}


void ac_client_go_direct(const ac_client *c, ac_transport *t) {
  if (c->endpoint.loopback)
    ac_transport_go_direct(t);
}


/* Writes the source of the proxy of t's transfer into label: "the proxy
 * option", the variable that libcurl read it from, or "" for no proxy. */
static void proxy_label(const ac_client *c, ac_transport *t, char *label,
                        size_t size) {
  const char *proxy = c->transport_opts.proxy;
  const char *variable;
  char *url = NULL;

  label[0] = '\0';
  if (t->direct)
    return;
  if (proxy != NULL) {
    if (proxy[0] != '\0')
      snprintf(label, size, "the proxy option");
    return;
  }
  curl_easy_getinfo(t->curl, CURLINFO_EFFECTIVE_URL, &url);
  variable = ac_transport_proxy_variable(url != NULL ? url : "");
  if (variable != NULL)
    snprintf(label, size, "the proxy in %s", variable);
}


/* Pushes nil and the error for a failed libcurl transfer. */
static int push_transfer_error(lua_State *L, ac_client *c, ac_transport *t,
                               CURLcode rc, long status) {
  ac_error_info e = {0};
  char message[AC_MSG_SIZE];

  if (rc == CURLE_WRITE_ERROR && t->body_too_large) {
    snprintf(message, sizeof message, "invalid response: the body is "
             "larger than max_body_bytes (%lu bytes)",
             (unsigned long)t->max_body_bytes);
    e.kind = AC_KIND_INVALID_RESPONSE;
    e.status = status;
  } else if (rc == CURLE_OPERATION_TIMEDOUT && t->queued) {
    /* libcurl's text for a transfer that timed out in its queue blames
     * name resolution, so it is replaced. One that got a connection and
     * sent its request timed out waiting for the server. */
    curl_off_t total_us = 0;
    long sent = 0;

    curl_easy_getinfo(t->curl, CURLINFO_TOTAL_TIME_T, &total_us);
    curl_easy_getinfo(t->curl, CURLINFO_REQUEST_SIZE, &sent);
    if (sent > 0)
      snprintf(message, sizeof message, "timed out after %ld ms waiting "
               "for the server, counting an earlier wait for a free "
               "connection (max_connections (%ld) requests were in flight "
               "when it started); the limits are timeout_ms and "
               "max_connections", (long)(total_us / 1000),
               c->max_connections);
    else
      snprintf(message, sizeof message, "timed out while it waited for a "
               "free connection: max_connections (%ld) requests were in "
               "flight when it started, and the wait counts against "
               "timeout_ms; raise max_connections or timeout_ms, or start "
               "fewer requests at once", c->max_connections);
    e.kind = AC_KIND_TIMEOUT;
    e.retryable = 1;
  } else {
    const char *text = t->errbuf[0] ? t->errbuf : curl_easy_strerror(rc);
    const char *hint = "";
    char proxy[32], hint_text[256];
    size_t text_len;
    /* A connection that ends during the handshake, as when a server
     * restarts, is a network failure that a retry may get past, not a
     * TLS problem. */
    int handshake_dropped = rc == CURLE_SSL_CONNECT_ERROR
        && (strstr(text, "SSL_ERROR_SYSCALL") != NULL
            || strstr(text, "unexpected eof") != NULL
            || strstr(text, "Connection reset") != NULL
            || strstr(text, "Broken pipe") != NULL);
    /* libcurl 8.3 and later, and Debian's 7.88.1, report response
     * headers over their 300 KiB limit with this text and
     * CURLE_RECV_ERROR, as if the connection broke. The same server
     * would send them again. */
    int headers_too_large = rc == CURLE_RECV_ERROR
        && strstr(text, "Too large response headers") != NULL;
    /* The status with which a proxy refused to open a tunnel (CONNECT)
     * to an https endpoint: a retry gets past it only for a 5xx. */
    long tunnel_status = 0;

    curl_easy_getinfo(t->curl, CURLINFO_HTTP_CONNECTCODE, &tunnel_status);
    if (tunnel_status < 400)
      tunnel_status = 0;
    proxy_label(c, t, proxy, sizeof proxy);

    /* OpenSSL reports a server that replies to a handshake in plain HTTP
     * as a wrong version number. */
    if (tunnel_status == 407) {
      snprintf(hint_text, sizeof hint_text, " (%s asks for credentials or "
               "rejected them; put user:password@ in the proxy's URL)",
               proxy[0] ? proxy : "the proxy");
      hint = hint_text;
    } else if (tunnel_status != 0) {
      snprintf(hint_text, sizeof hint_text, " (%s refused to open a "
               "connection to the endpoint)", proxy[0] ? proxy : "the proxy");
      hint = hint_text;
    } else if (handshake_dropped) {
      hint = " (the server closed the connection during the TLS "
             "handshake)";
    } else if (strstr(text, "wrong version number") != NULL)
      hint = " (the server did not reply in TLS: for a plain HTTP server, "
             "write http:// in the endpoint)";
    else if (rc == CURLE_PEER_FAILED_VERIFICATION
             && strstr(text, "certificate has expired") != NULL)
      hint = " (the server's certificate has expired, or this machine's "
             "clock is wrong)";
    else if (rc == CURLE_PEER_FAILED_VERIFICATION
             && strstr(text, "certificate is not yet valid") != NULL)
      hint = " (the server's certificate is not valid yet, or this "
             "machine's clock is wrong)";
    else if (rc == CURLE_PEER_FAILED_VERIFICATION
             && c->transport_opts.ca_file != NULL)
      hint = " (the server's certificate must chain to a CA in ca_file, "
             "which replaces the system store, and name the endpoint's "
             "host)";
    else if (rc == CURLE_PEER_FAILED_VERIFICATION)
      hint = " (for a server whose certificate a private CA signed, pass "
             "that CA's certificate as ca_file; else check the endpoint's "
             "host name)";
    else if (rc == CURLE_SSL_CACERT_BADFILE)
      hint = " (ca_file must name a readable file of PEM certificates)";
    else if (rc == CURLE_COULDNT_CONNECT && t->socket_errno != 0) {
      snprintf(hint_text, sizeof hint_text, " (opening a socket failed: "
               "%s; the process has no file descriptor left, so run fewer "
               "requests and uploads at once, or raise its limit "
               "(ulimit -n))", strerror(t->socket_errno));
      hint = hint_text;
    } else if (rc == CURLE_COULDNT_RESOLVE_HOST
               && strstr(text, "thread failed to start") != NULL)
      hint = " (libcurl could not start its thread to look up the name: "
             "the process may have no file descriptor or thread left; run "
             "fewer requests and uploads at once, or raise its limits "
             "(ulimit -n, ulimit -u))";
    else if (rc == CURLE_COULDNT_CONNECT && proxy[0] != '\0') {
      snprintf(hint_text, sizeof hint_text, " (check the endpoint's host "
               "and port, and %s, through which libcurl connects unless "
               "no_proxy lists the endpoint's host)", proxy);
      hint = hint_text;
    } else if (rc == CURLE_COULDNT_CONNECT)
      hint = " (check the endpoint's host and port, and that the service "
             "is reachable from this machine)";
    else if (rc == CURLE_COULDNT_RESOLVE_HOST)
      hint = " (check the endpoint or region, and the DNS setup)";
    else if (rc == CURLE_OPERATION_TIMEDOUT && t->timeout_hint != NULL)
      hint = t->timeout_hint;
    else if (rc == CURLE_OPERATION_TIMEDOUT)
      hint = " (the limits are timeout_ms and connect_timeout_ms)";
    else if (strstr(text, "HTTP/0.9") != NULL)
      hint = " (the server did not answer in HTTP; check the endpoint's "
             "scheme and port)";
    else if (rc == CURLE_GOT_NOTHING)
      hint = " (the server closed the connection without an answer)";
    else if (rc == CURLE_PARTIAL_FILE)
      hint = " (the server closed the connection before the whole body "
             "arrived)";
    else if (headers_too_large)
      hint = " (the server, or a proxy between, sent more header bytes "
             "than libcurl accepts; check the endpoint)";
    else if (rc == CURLE_RECV_ERROR || rc == CURLE_SEND_ERROR)
      hint = " (the connection broke during the request; a retry may "
             "succeed)";
    else if (rc == CURLE_OUT_OF_MEMORY)
      hint = " (libcurl also reports a response header line over 100 KiB "
             "this way)";
    /* libcurl ends some messages with a space. */
    text_len = strlen(text);
    while (text_len > 0 && text[text_len - 1] == ' ')
      text_len--;
    snprintf(message, sizeof message, "%.*s%s", (int)text_len, text, hint);
    e.kind = handshake_dropped ? AC_KIND_NETWORK
           : headers_too_large ? AC_KIND_INVALID_RESPONSE : curl_kind(rc);
    /* The same URL would be malformed again. */
    e.retryable = strcmp(e.kind, AC_KIND_TLS) != 0
               && !headers_too_large && rc != CURLE_URL_MALFORMAT
               && (tunnel_status == 0 || ac_status_retryable(tunnel_status));
  }
  e.message = message;
  e.request_id = t->request_id;
  e.secrets = c->secrets;
  lua_pushnil(L);
  ac_push_error(L, &e);
  return 2;
}


static void hold(ac_client *c) {
  c->holds++;
}


static void unhold(ac_client *c) {
  if (--c->holds == 0 && c->release_deferred)
    client_release(c);
}


int ac_client_push_result(lua_State *L, ac_client *c, ac_transport *t,
                          CURLcode rc, long status) {
  ac_response r;
  curl_off_t total_us = 0;

  int body_cut = ac_transport_error_body_cut(t, rc, status);

  if (rc != CURLE_OK && !body_cut)
    return push_transfer_error(L, c, t, rc, status);

  curl_easy_getinfo(t->curl, CURLINFO_TOTAL_TIME_T, &total_us);
  memset(&r, 0, sizeof r);
  r.body_cut = body_cut;
  r.max_body_bytes = t->max_body_bytes;
  r.status = status;
  r.body = t->body.data;
  r.body_len = t->body.len;
  r.request_id = t->request_id;
  r.retry_after = t->retry_after;
  if (status >= 300 && status <= 399)
    curl_easy_getinfo(t->curl, CURLINFO_REDIRECT_URL, &r.redirect_url);
  r.elapsed_ms = (double)total_us / 1000.0;
  r.secrets = c->secrets;
  return ac_push_response(L, &r);
}


static char build_outcome_key;

/* The protected part of ac_push_outcome. */
static int build_outcome(lua_State *L) {
  ac_outcome *o = lua_touserdata(L, 1);

  lua_pop(L, 1);
  if (o->cancel_reason != NULL) {
    ac_error_info e = {0};

    e.kind = AC_KIND_CANCELLED;
    e.message = o->cancel_reason;
    lua_pushnil(L);
    ac_push_error(L, &e);
    return 2;
  }
  if (o->upload != NULL)
    return ac_upload_push_result(L, o->client, o->upload, o->transport,
                                 o->rc, o->status);
  return ac_client_push_result(L, o->client, o->transport, o->rc,
                               o->status);
}


int ac_push_outcome(lua_State *L, ac_outcome *o) {
  int top = lua_gettop(L), status;

  /* Nothing here allocates, so no finalizer runs before the hold. */
  ac_push_cfunction(L, &build_outcome_key, build_outcome);
  lua_pushlightuserdata(L, o);
  hold(o->client);
  status = lua_pcall(L, 1, LUA_MULTRET, 0);
  unhold(o->client);
  return status == 0 ? lua_gettop(L) - top : -1;
}


int ac_client_prepare(ac_client *c, const char *file_name, size_t len,
                      ac_buf *body, ac_call_headers *call,
                      struct curl_slist **headers, char *msg) {
  *headers = c->headers;
  if (ac_check_file_name(file_name, len, msg) != 0)
    return -1;
  if (ac_build_body(body, file_name, len) != 0)
    return -2;
  if (c->signer != NULL
      && (*headers = signed_headers(c, body, call)) == NULL)
    return -2;
  return 0;
}


static int perform(lua_State *L, ac_client *c, const char *file_name,
                   size_t len, long timeout_ms) {
  struct curl_slist *headers;
  char msg[AC_MSG_SIZE];
  ac_outcome outcome;
  long status = 0;
  CURLcode rc;
  int n;

  /* An __index metamethod of the call options, or a finalizer that ran
   * while they were read, may have closed the client. */
  if (!c->open)
    return luaL_error(L, "appcenter.core: the client is closed");
  /* The next transfer would replace the body and request id that the
   * running call reads. */
  if (c->holds > 0)
    return luaL_error(L, "appcenter.core: create_credential called while "
                      "the same client builds a result, e.g. from a "
                      "finalizer; use another client");
  ac_client_after_fork(c);
  switch (ac_client_prepare(c, file_name, len, &c->body, &c->call_headers,
                            &headers, msg)) {
  case -1:
    return ac_return_invalid(L, msg);
  case -2:
    return luaL_error(L, "appcenter.core: not enough memory");
  }

  rc = ac_transport_post(&c->transport, c->url.data, headers, c->body.data,
                         c->body.len, timeout_ms, &status);
  outcome = (ac_outcome){.client = c, .transport = &c->transport,
                         .rc = rc, .status = status};
  n = ac_push_outcome(L, &outcome);
  return n < 0 ? lua_error(L) : n;
}


/* ---------------------------------------------------------------------
 * Lua functions
 * ------------------------------------------------------------------- */

static int l_new(lua_State *L) {
  return push_client(L, 1, "appcenter.core.new", 0);
}


static int l_client_create_credential(lua_State *L) {
  ac_client *c = check_open_client(L, 1);
  size_t len;
  const char *file_name;
  long timeout_ms = 0;
  char msg[AC_MSG_SIZE];

  luaL_checktype(L, 2, LUA_TSTRING);
  file_name = lua_tolstring(L, 2, &len);
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    ac_check_options(L, 3, call_options, "create_credential", 0);
    if (opt_count(L, 3, "timeout_ms", 0, AC_MAX_TIMEOUT_MS, &timeout_ms,
                  msg) != 0)
      return ac_return_invalid(L, msg);
  }
  return perform(L, c, file_name, len, timeout_ms);
}


static int l_create_credential(lua_State *L) {
  ac_client *c;
  size_t len;
  const char *file_name;
  int n;

  if (push_client(L, 1, "appcenter.core.create_credential", 1) == 2)
    return 2;
  c = lua_touserdata(L, -1);

  lua_getfield(L, 1, "file_name");
  /* Checked again, because an __index metamethod can return what the
   * check of the table's own fields did not see. */
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING) {
    client_release(c);
    return luaL_error(L, "appcenter.core.create_credential: option "
                      "'file_name' must be a string, got %s",
                      luaL_typename(L, -1));
  }
  file_name = lua_tolstring(L, -1, &len);
  if (file_name == NULL) {
    client_release(c);
    return ac_return_invalid(L, "missing file_name: pass the complete "
                             "file name, e.g. \"setup.exe\"");
  }
  n = perform(L, c, file_name, len, 0);
  client_release(c);
  return n;
}


/* Calls back the requests of the client at 1 with a cancelled error, in
 * protected mode; returns the first callback error, or nil. */
static char close_requests_key;

static int close_requests(lua_State *L) {
  ac_client *c = lua_touserdata(L, 1);
  int saved = ac_multi_close(L, 1, c);

  if (saved != 0)
    lua_pushvalue(L, saved);
  else
    lua_pushnil(L);
  return 1;
}


/* Closes the client. Requests in flight get their callbacks called with
 * a cancelled error; __gc frees them without calling back. */
static int l_client_close(lua_State *L) {
  ac_client *c = check_client(L, 1);
  int status, failed = 0;

  if (c->uploading)
    return luaL_error(L, "appcenter.core: close called from an upload's "
                      "progress callback; return false from it to abort "
                      "the upload, then close");
  /* A callback of the requests that close() cancels may call close()
   * again. The running close() calls back the other requests and then
   * releases the client, so that call has nothing to do. */
  if (c->closing)
    return 0;
  ac_client_after_fork(c);
  lua_settop(L, 1);
  /* Closed first, so that a callback cannot start new requests while
   * close() cancels the others. A memory error leaves the requests that
   * were not called back yet to the next close(). */
  c->open = 0;
  if (c->requests != NULL) {
    c->closing = 1;
    ac_push_cfunction(L, &close_requests_key, close_requests);
    lua_pushvalue(L, 1);
    status = lua_pcall(L, 1, 1, 0);
    c->closing = 0;
    if (status != 0)
      return lua_error(L);
    failed = !lua_isnil(L, -1);
  }
  if (c->holds > 0)
    c->release_deferred = 1;
  else
    client_release(c);
  return failed ? lua_error(L) : 0;
}


static int l_client_gc(lua_State *L) {
  client_release(check_client(L, 1));
  return 0;
}


static int l_client_tostring(lua_State *L) {
  ac_client *c = check_client(L, 1);

  if (c->open)
    lua_pushfstring(L, "appcenter.core.client (%s, project %s)",
                    c->endpoint.base, c->project_id);
  else
    lua_pushliteral(L, "appcenter.core.client (closed)");
  return 1;
}


/* core.fork_generation(): a number that changes in each child process
 * that fork() makes, so that Lua code can tell that it runs in one. */
static int l_fork_generation(lua_State *L) {
  ac_transport_global_init();
  lua_pushinteger(L, (lua_Integer)ac_fork_generation());
  return 1;
}


static int l_monotonic(lua_State *L) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  return 1;
}


static int l_sleep(lua_State *L) {
  lua_Number seconds = luaL_checknumber(L, 1);
  struct timespec ts;

  luaL_argcheck(L, seconds >= 0 && seconds <= AC_MAX_TIMEOUT_MS / 1000,
                1, "seconds must be from 0 to 86400");
  ts.tv_sec = (time_t)seconds;
  ts.tv_nsec = (long)((seconds - (lua_Number)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
  return 0;
}


/* Defined in sign_lua.c. */
int ac_l_sign(lua_State *L);

static const luaL_Reg client_methods[] = {
  {"create_credential", l_client_create_credential},
  {"close", l_client_close},
  {NULL, NULL}
};

static const luaL_Reg module_functions[] = {
  {"new", l_new},
  {"create_credential", l_create_credential},
  {"sign", ac_l_sign},
  {"check_upload_path", ac_l_check_upload_path},
  {"monotonic", l_monotonic},
  {"sleep", l_sleep},
  {"fork_generation", l_fork_generation},
  {NULL, NULL}
};


static void register_client_metatable(lua_State *L) {
  if (!luaL_newmetatable(L, AC_CLIENT_MT)) {
    lua_pop(L, 1);
    return;
  }
  lua_newtable(L);
  luaL_setfuncs(L, client_methods, 0);
  ac_multi_add_methods(L);
  ac_upload_add_methods(L);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_client_gc);
  lua_setfield(L, -2, "__gc");
#if LUA_VERSION_NUM >= 504
  lua_pushcfunction(L, l_client_close);
  lua_setfield(L, -2, "__close");
#endif
  lua_pushcfunction(L, l_client_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
}


int luaopen_appcenter_core(lua_State *L) {
  CURLcode rc = ac_transport_global_init();

  if (rc != CURLE_OK)
    return luaL_error(L, "appcenter.core: libcurl initialisation failed: "
                      "%s", curl_easy_strerror(rc));
  ac_response_init(L);
  /* Made now, so that later pushes allocate nothing under Lua 5.1. */
  ac_push_cfunction(L, &build_outcome_key, build_outcome);
  ac_push_cfunction(L, &close_requests_key, close_requests);
  lua_pop(L, 2);
  ac_error_register(L);
  register_client_metatable(L);
  ac_multi_register(L);

  lua_newtable(L);
  luaL_setfuncs(L, module_functions, 0);
  lua_pushliteral(L, AC_VERSION);
  lua_setfield(L, -2, "version");
  lua_pushstring(L, ac_curl_version());
  lua_setfield(L, -2, "curl_version");
  return 1;
}
