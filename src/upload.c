/*
 * client:upload(result, opts): one PUT of the object that a credential
 * allows, signed with OBS's own signature.
 *
 *   opts.path          file to stream from disk, or
 *   opts.body          a Lua string to send
 *   opts.content_type  default: guessed from the file extension
 *   opts.content_md5   true to send Content-MD5 (the file is read twice)
 *   opts.path_style    true for https://endpoint/bucket/key URLs
 *   opts.progress      function(sent, total); returning false aborts
 *   opts.timeout_ms    whole upload; default: no limit, but a transfer
 *                      slower than 1 byte per second for the client's
 *                      timeout_ms is cut off (libcurl averages the speed
 *                      over a few seconds)
 *
 * Returns meta {status, url, etag, request_id, bytes, elapsed_ms,
 * attempts} or nil, err. The scheme is the one of the client's endpoint,
 * so a client that talks plain http to a loopback emulator uploads over
 * http too.
 *
 * The functions declared in upload.h build the request and shape the
 * outcome for this call and for client:start_upload (multi.c).
 *
 * Caveats: the upload handle is separate from the App Center handle and
 * serves one upload at a time; there is no multipart upload, so objects
 * are limited to OBS's single-PUT size (5 GiB).
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "client.h"
#include "compat.h"
#include "error.h"
#include "obs.h"
#include "response.h"
#include "upload.h"

/* Progress callbacks are called at most this often, plus once at the
 * end, so a fast upload does not spend its time in Lua. */
#define AC_PROGRESS_INTERVAL_MS 200.0

/* 24 hours, the limit of the other calls' timeout_ms. */
#define AC_MAX_UPLOAD_TIMEOUT_MS 86400000L

typedef ac_upload_source upload_source;
typedef ac_upload_progress upload_progress;


/* ---------------------------------------------------------------------
 * libcurl callbacks: they never raise
 * ------------------------------------------------------------------- */

/* Records why a file's read ended before the expected number of bytes.
 * Call it right after the short fread, so that errno is still the one
 * that fread set. */
static void set_read_failure(upload_source *src) {
  src->failure = ferror(src->file) ? AC_SOURCE_READ_ERROR : AC_SOURCE_SHRANK;
  src->read_errno = errno;
}


/* Copies the next part of the body. A file that grew after it was
 * opened is fine, because only its size at open, which libcurl sent as
 * Content-Length, is read. A file that ends early or fails to read
 * aborts the transfer, because returning 0 before Content-Length bytes
 * leaves libcurl 7.88 waiting for the rest until the timeout. */
static size_t read_body(char *out, size_t size, size_t n, void *ud) {
  upload_source *src = ud;
  size_t want = size * n, got;
  size_t left = (size_t)(src->total - src->offset);

  if (want > left)
    want = left;
  if (src->file == NULL) {
    memcpy(out, src->data + src->offset, want);
    src->offset += (curl_off_t)want;
    return want;
  }
  if (want == 0)
    return 0;
  got = fread(out, 1, want, src->file);
  src->offset += (curl_off_t)got;
  if (got < want) {
    set_read_failure(src);
    return CURL_READFUNC_ABORT;
  }
  return got;
}


/* Rewinds the body when libcurl has to send it again. */
static int seek_body(void *ud, curl_off_t offset, int origin) {
  upload_source *src = ud;

  if (origin != SEEK_SET || offset < 0 || offset > src->total)
    return CURL_SEEKFUNC_CANTSEEK;
  if (src->file != NULL && fseeko(src->file, (off_t)offset, SEEK_SET) != 0)
    return CURL_SEEKFUNC_FAIL;
  src->offset = offset;
  return CURL_SEEKFUNC_OK;
}


/* Bodies from this size on wait for OBS's 100 Continue, the threshold
 * that libcurl 7.69 and later use for POST. */
#define AC_EXPECT_CONTINUE_BYTES (1024 * 1024)


static double clock_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}



/* Returns the state to run the progress callback on, or NULL when no
 * call may run now. A non-blocking upload's callback runs only while
 * poll() hands sockets to libcurl or finishes the upload. */
static lua_State *progress_state(const upload_progress *p) {
  if (p->fn == 0)
    return NULL;
  return p->multi_client ? p->multi_client->progress_state : p->L;
}


/* Calls the Lua progress callback in protected mode; returns 0 to go on
 * or 1 to abort. A non-blocking upload's client is marked meanwhile, so
 * that the callback cannot close it, or start or cancel its requests,
 * while libcurl is running. */
static int call_progress(upload_progress *p, curl_off_t sent,
                         curl_off_t total) {
  lua_State *L = progress_state(p);
  ac_client *c = p->multi_client;
  int uploading = 0, failed;

  if (L == NULL || !lua_checkstack(L, 4))
    return 0;
  if (c != NULL) {
    uploading = c->uploading;
    c->uploading = c->in_progress_callback = 1;
  }
  lua_pushvalue(L, p->fn);
  lua_pushinteger(L, (lua_Integer)sent);
  lua_pushinteger(L, (lua_Integer)total);
  failed = lua_pcall(L, 2, 1, 0) != 0;
  if (c != NULL) {
    c->uploading = uploading;
    c->in_progress_callback = 0;
  }
  if (failed) {
    p->error_at = lua_gettop(L);  /* left on the stack for later */
    return 1;
  }
  p->aborted = lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1);
  lua_pop(L, 1);
  p->last_sent = sent;
  p->last_ms = clock_ms();
  return p->aborted;
}


static int on_progress(void *ud, curl_off_t dl_total, curl_off_t dl_now,
                       curl_off_t ul_total, curl_off_t ul_now) {
  upload_progress *p = ud;
  int at_end = ul_total > 0 && ul_now == ul_total;

  (void)dl_total;
  (void)dl_now;
  if (p->error_at || p->aborted)
    return 1;
  if (ul_now == p->last_sent)
    return 0;
  if (!at_end && clock_ms() - p->last_ms < AC_PROGRESS_INTERVAL_MS)
    return 0;
  return call_progress(p, ul_now, ul_total);
}


/* ---------------------------------------------------------------------
 * Reading the arguments
 * ------------------------------------------------------------------- */

/* Reads t[key] as a string, NULL when it is not one, and leaves the
 * value on the stack. That keeps the string alive until the call
 * returns, even when the progress callback changes the table or an
 * __index metamethod made the string. */
static const char *field(lua_State *L, int t, const char *key,
                         size_t *len) {
  luaL_checkstack(L, 1, "reading the upload arguments");
  lua_getfield(L, t, key);
  return lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, len) : NULL;
}


/* Reads a string of the result that goes into a request header, so it
 * may not contain a line break or a NUL byte. */
static const char *required_field(lua_State *L, int t, const char *path,
                                  const char *key, char *msg) {
  size_t len = 0;
  const char *s = field(L, t, key, &len);

  if (s == NULL)
    snprintf(msg, AC_MSG_SIZE, "invalid result: %s%s must be a string; "
             "pass the table create_credential returned", path, key);
  else if (strlen(s) != len || strpbrk(s, "\r\n") != NULL) {
    snprintf(msg, AC_MSG_SIZE, "invalid result: %s%s contains a line "
             "break or a NUL byte; pass the table create_credential "
             "returned", path, key);
    s = NULL;
  }
  return s;
}


/* Computes the base64 MD5 of the body, reading the size at open of a
 * file once, as read_body sends it. A file that ends early or fails to
 * read sets src->failure. */
static int body_md5(upload_source *src, char out[AC_MD5_BASE64_SIZE]) {
  unsigned char digest[EVP_MAX_MD_SIZE], chunk[64 * 1024];
  unsigned int len = 0;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  int ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_md5(), NULL);

  if (ok && src->file != NULL) {
    while (ok && src->offset < src->total) {
      size_t want = sizeof chunk, got;

      if ((curl_off_t)want > src->total - src->offset)
        want = (size_t)(src->total - src->offset);
      got = fread(chunk, 1, want, src->file);
      src->offset += (curl_off_t)got;
      if (got < want) {
        set_read_failure(src);
        ok = 0;
      }
      ok = ok && EVP_DigestUpdate(ctx, chunk, got);
    }
    ok = ok && fseeko(src->file, 0, SEEK_SET) == 0;
    if (ok)
      src->offset = 0;
  } else if (ok) {
    ok = EVP_DigestUpdate(ctx, src->data, (size_t)src->total);
  }
  ok = ok && EVP_DigestFinal_ex(ctx, digest, &len);
  EVP_MD_CTX_free(ctx);
  if (ok)
    EVP_EncodeBlock((unsigned char *)out, digest, (int)len);
  return ok ? 0 : -1;
}


/* ---------------------------------------------------------------------
 * The upload
 * ------------------------------------------------------------------- */

typedef ac_upload upload_call;


static const ac_option upload_options[] = {
  {"path", LUA_TSTRING},
  {"body", LUA_TSTRING},
  {"content_type", LUA_TSTRING},
  {"content_md5", LUA_TBOOLEAN},
  {"path_style", LUA_TBOOLEAN},
  {"progress", LUA_TFUNCTION},
  {"timeout_ms", LUA_TNUMBER},
  {NULL, 0}
};


/* Fills call from the result table at 2 and the options table at 3.
 * Returns 0, or -1 with msg for bad input. Raises when either is not a
 * table. */
static int read_call(lua_State *L, ac_client *c, upload_call *call,
                     char *msg) {
  ac_obs_request *r = &call->req;
  const char *body, *type_value;
  size_t body_len = 0, type_len = 0, path_len = 0;
  int credential;

  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TTABLE);
  ac_check_options(L, 3, upload_options, "upload", 0);
  if (!(r->server_end_point = required_field(L, 2, "", "server_end_point",
                                             msg))
      || !(r->bucket = required_field(L, 2, "", "bucket_name", msg))
      || !(r->key = required_field(L, 2, "", "object_path", msg)))
    return -1;

  luaL_checkstack(L, 1, "reading the upload arguments");
  lua_getfield(L, 2, "credential");
  if (!lua_istable(L, -1)) {
    snprintf(msg, AC_MSG_SIZE, "invalid result: credential must be a "
             "table; pass the table create_credential returned");
    return -1;
  }
  credential = lua_gettop(L);
  if (!(r->access = required_field(L, credential, "credential.", "access",
                                   msg))
      || !(r->secret = required_field(L, credential, "credential.",
                                      "secret", msg))
      || !(r->security_token = required_field(L, credential, "credential.",
                                              "security_token", msg)))
    return -1;

  lua_getfield(L, 3, "path_style");
  r->path_style = lua_toboolean(L, -1);
  lua_pop(L, 1);
  /* A loopback endpoint may use plain http without allow_http because
   * nothing leaves the machine. An OBS host elsewhere then gets https,
   * or the security token would cross the network in plain text. */
  call->direct = ac_authority_is_loopback(r->server_end_point);
  r->scheme = c->endpoint.https || (!c->endpoint.allow_http && !call->direct)
            ? "https" : "http";
  if (ac_obs_check_target(r->server_end_point, r->bucket, r->key,
                          r->path_style, msg) != 0)
    return -1;

  call->path = field(L, 3, "path", &path_len);
  if (call->path != NULL && ac_check_no_nul("path", call->path, path_len, msg) != 0)
    return -1;
  body = field(L, 3, "body", &body_len);
  if ((call->path == NULL) == (body == NULL)) {
    snprintf(msg, AC_MSG_SIZE, "invalid upload options: pass exactly one "
             "of path (a file) or body (a string)");
    return -1;
  }
  call->src.data = body;
  call->src.total = (curl_off_t)body_len;

  r->content_type = field(L, 3, "content_type", &type_len);
  if (r->content_type != NULL
      && ac_check_header_value("upload option content_type",
                               r->content_type, type_len, msg) != 0)
    return -1;
  if (r->content_type != NULL
      && ac_obs_header_value(r->content_type, &type_value) == 0) {
    snprintf(msg, AC_MSG_SIZE, "invalid upload option content_type: it "
             "contains only white space; pass a media type such as "
             "text/plain, or leave content_type out");
    return -1;
  }
  if (r->content_type == NULL)
    r->content_type = ac_obs_content_type(call->path, r->key);

  /* Checked before the cast, which is undefined for NaN, infinities and
   * values beyond the range of long. */
  lua_getfield(L, 3, "timeout_ms");
  if (!lua_isnil(L, -1)) {
    lua_Number t = lua_tonumber(L, -1);
    if (lua_type(L, -1) != LUA_TNUMBER
        || !(t >= 0 && t <= AC_MAX_UPLOAD_TIMEOUT_MS)) {
      char shown[AC_NUMBER_TEXT_SIZE];

      ac_format_number(shown, (double)t, 17);
      snprintf(msg, AC_MSG_SIZE, "invalid upload options: timeout_ms must "
               "be a number of milliseconds from 0 (no limit) to %ld, got "
               "%s", AC_MAX_UPLOAD_TIMEOUT_MS, shown);
      return -1;
    }
    /* Rounded up, so that a fraction of a millisecond does not mean no
     * limit. */
    call->timeout_ms = (long)ceil(t);
  }
  lua_pop(L, 1);
  lua_getfield(L, 3, "progress");
  if (lua_isfunction(L, -1)) {
    call->progress.fn = lua_gettop(L);
    call->progress.has_callback = 1;
  } else
    lua_pop(L, 1);
  return 0;
}


/* Copies path into out (AC_PATH_TEXT bytes) for a one-line message:
 * control characters become '?', and a path longer than
 * AC_PATH_TEXT_CHARS is cut at a UTF-8 boundary and ends in "...". */
#define AC_PATH_TEXT_CHARS 200
#define AC_PATH_TEXT (AC_PATH_TEXT_CHARS + 4)

static const char *path_text(const char *path, char *out) {
  size_t n = strlen(path), i;

  if (n > AC_PATH_TEXT_CHARS) {
    n = AC_PATH_TEXT_CHARS;
    while (n > 0 && ((unsigned char)path[n] & 0xC0) == 0x80)
      n--;
  }
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)path[i];
    out[i] = (c < 0x20 || c == 0x7F) ? '?' : (char)c;
  }
  strcpy(out + n, path[n] != '\0' ? "..." : "");
  return out;
}


/* Writes the message for a file that shrank or failed to read, which
 * call->src.failure records. */
static void format_source_failure(const upload_call *call, char *msg) {
  const upload_source *src = &call->src;
  char shown[AC_PATH_TEXT];

  path_text(call->path, shown);
  if (src->failure == AC_SOURCE_SHRANK)
    snprintf(msg, AC_MSG_SIZE, "file \"%s\" ended after %lld of the "
             "%lld bytes it had when opened: it changed size during the "
             "upload, or it is a generated file (as in /proc or /sys) "
             "whose size is not its length; do not modify a file while "
             "it uploads, or upload a copy", shown,
             (long long)src->offset, (long long)src->total);
  else
    snprintf(msg, AC_MSG_SIZE, "reading file \"%s\" failed after %lld "
             "of %lld bytes: %s", shown, (long long)src->offset,
             (long long)src->total, strerror(src->read_errno));
}


/* Opens call->path for reading without blocking, and rejects anything
 * but a regular file. A plain open of a FIFO would wait for a writer,
 * which stalls the caller of the non-blocking start_upload too. Returns
 * -1 with msg naming the path. */
static int open_file(upload_call *call, struct stat *st, char *msg) {
  const char *problem = NULL;
  char shown[AC_PATH_TEXT];
  int fd, flags, open_errno = 0;

  /* O_NOCTTY, so that a terminal named by mistake does not become the
   * process's controlling terminal before it is rejected. */
  fd = open(call->path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0)
    open_errno = errno;
  if (fd < 0 || fstat(fd, st) != 0)
    problem = strerror(errno);
  else if (!S_ISREG(st->st_mode))
    problem = "not a regular file";
  /* Cleared, so that reads block as fread expects. Linux ignores
   * O_NONBLOCK for regular files, but POSIX leaves that unspecified. */
  else if ((flags = fcntl(fd, F_GETFL)) == -1
           || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) == -1
           || (call->src.file = fdopen(fd, "rb")) == NULL)
    problem = strerror(errno);
  if (problem == NULL)
    return 0;

  if (open_errno == EMFILE || open_errno == ENFILE)
    snprintf(msg, AC_MSG_SIZE, "cannot open file \"%s\": %s; the process "
             "has no file descriptor left, and each upload keeps its file "
             "open until it ends, so run fewer uploads at once, or raise "
             "the limit (ulimit -n)", path_text(call->path, shown),
             problem);
  else
    snprintf(msg, AC_MSG_SIZE, "invalid path \"%s\": %s",
             path_text(call->path, shown), problem);
  if (fd >= 0)
    close(fd);
  return -1;
}


/* Opens the file named by call->path and takes its size as the body's.
 * Returns -1 with msg naming it. */
static int open_source(upload_call *call, char *msg) {
  struct stat st;
  char byte, shown[AC_PATH_TEXT];

  if (call->path == NULL)
    return 0;
  if (open_file(call, &st, msg) != 0)
    return -1;
  call->src.total = (curl_off_t)st.st_size;
  if (st.st_size > 0)
    return 0;

  /* Files in /proc, and other generated files, report a size of 0
   * bytes, so the upload would store an empty object in place of their
   * content. */
  if (fread(&byte, 1, 1, call->src.file) == 1) {
    snprintf(msg, AC_MSG_SIZE, "invalid path \"%s\": the file reports "
             "a size of 0 bytes but has content, as files in /proc do; "
             "copy it to a regular file and upload the copy",
             path_text(call->path, shown));
    return -1;
  }
  if (ferror(call->src.file)) {
    set_read_failure(&call->src);
    format_source_failure(call, msg);
    return -1;
  }
  rewind(call->src.file);
  return 0;
}


static struct curl_slist *upload_headers(upload_call *call,
                                         const ac_buf *auth) {
  const ac_obs_request *r = &call->req;
  struct curl_slist *list = NULL;
  ac_buf line = {0};
  const char *names[] = {"Content-Type", "Content-MD5", "x-obs-date",
                         "x-obs-security-token", "Authorization"};
  const char *values[5];
  size_t i;

  values[0] = r->content_type;
  values[1] = r->content_md5;
  values[2] = r->date;
  values[3] = r->security_token;
  values[4] = auth->data;
  for (i = 0; i < 5; i++) {
    struct curl_slist *grown;
    const char *value;
    size_t len = ac_obs_header_value(values[i], &value);

    /* The signature covers what the server reads, so the value goes
     * without the white space that it would strip. */
    if (len == 0)
      continue;
    ac_buf_reset(&line);
    ac_buf_adds(&line, names[i]);
    ac_buf_adds(&line, ": ");
    ac_buf_add(&line, value, len);
    grown = line.failed ? NULL : curl_slist_append(list, line.data);
    if (grown == NULL) {
      ac_free_secret_headers(list);
      list = NULL;
      break;
    }
    list = grown;
  }
  ac_buf_clear_free(&line);

  /* libcurl 7.88 sends Expect: 100-continue before any PUT body, which
   * costs a round trip, or a second where no 100 comes. Only a large
   * body is worth keeping back until OBS has checked the signature. */
  if (list != NULL && call->src.total < AC_EXPECT_CONTINUE_BYTES) {
    struct curl_slist *grown = curl_slist_append(list, "Expect:");

    if (grown == NULL) {
      ac_free_secret_headers(list);
      return NULL;
    }
    list = grown;
  }
  return list;
}


#if LIBCURL_VERSION_NUM >= 0x075000
/* Records when libcurl sends the request, once it has a connection. */
static int on_request_sent(void *data, char *primary_ip, char *local_ip,
                           int primary_port, int local_port) {
  upload_call *call = data;

  (void)primary_ip;
  (void)local_ip;
  (void)primary_port;
  (void)local_port;
  call->sent_ms = clock_ms();
  return CURL_PREREQFUNC_OK;
}
#endif


void ac_upload_setup(ac_client *c, ac_upload *call, ac_transport *t) {
  CURL *h = t->curl;

  ac_transport_prepare(t, call->url.data, call->headers, NULL, 0, 0);
  /* The handle of the blocking uploads serves OBS hosts of all kinds. */
  if (call->direct)
    ac_transport_go_direct(t);
  else
    ac_transport_use_proxy(t, &c->transport_opts);
  curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
  /* The signature covers the key as it is, so libcurl must not squash
   * "." and ".." segments. */
  curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);
  curl_easy_setopt(h, CURLOPT_READFUNCTION, read_body);
  curl_easy_setopt(h, CURLOPT_READDATA, &call->src);
  curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, seek_body);
  curl_easy_setopt(h, CURLOPT_SEEKDATA, &call->src);
  curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, call->src.total);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, call->timeout_ms);
  t->timeout_hint = " (the limits are the upload's timeout_ms, the "
                    "client's connect_timeout_ms, and the client's "
                    "timeout_ms for a transfer slower than 1 byte per "
                    "second)";
#if LIBCURL_VERSION_NUM >= 0x075000  /* CURLOPT_PREREQFUNCTION: 7.80.0 */
  curl_easy_setopt(h, CURLOPT_PREREQFUNCTION, on_request_sent);
  curl_easy_setopt(h, CURLOPT_PREREQDATA, call);
#endif
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME,
                   (c->transport_opts.timeout_ms + 999) / 1000);
  curl_easy_setopt(h, CURLOPT_NOPROGRESS,
                   call->progress.has_callback ? 0L : 1L);
  curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(h, CURLOPT_XFERINFODATA, &call->progress);
  call->progress.last_ms = clock_ms();
  /* So that an empty body still gets its one call at the end. */
  call->progress.last_sent = -1;
}


static void push_meta(lua_State *L, ac_transport *t, upload_call *call,
                      long status) {
  const ac_buf *url = &call->url;
  curl_off_t total_us = 0, sent = 0;

  curl_easy_getinfo(t->curl, CURLINFO_TOTAL_TIME_T, &total_us);
  lua_createtable(L, 0, 7);
  lua_pushinteger(L, (lua_Integer)status);
  lua_setfield(L, -2, "status");
  lua_pushlstring(L, url->data, url->len);
  lua_setfield(L, -2, "url");
  if (t->etag[0] != '\0') {
    lua_pushstring(L, t->etag);
    lua_setfield(L, -2, "etag");
  }
  if (t->request_id[0] != '\0') {
    lua_pushstring(L, t->request_id);
    lua_setfield(L, -2, "request_id");
  }
  /* The bytes sent, because a server may respond before it reads the
   * whole body. */
  curl_easy_getinfo(t->curl, CURLINFO_SIZE_UPLOAD_T, &sent);
  lua_pushinteger(L, (lua_Integer)sent);
  lua_setfield(L, -2, "bytes");
  lua_pushnumber(L, (lua_Number)total_us / 1000.0);
  lua_setfield(L, -2, "elapsed_ms");
  lua_pushinteger(L, 1);
  lua_setfield(L, -2, "attempts");
}


/* Size of the hint of an OBS error: the room that the message has left
 * after "OBS: " and the longest OBS message, so that the whole hint
 * always fits. */
#define AC_OBS_HINT_SIZE \
  (AC_MSG_SIZE - (sizeof "OBS: " - 1) - (AC_OBS_FIELD_SIZE - 1))

/* Pushes nil and the error for a non-2xx OBS response. */
static void push_obs_error(lua_State *L, ac_transport *t,
                           upload_call *call, long status) {
  ac_error_info e = {0};
  ac_obs_error obs;
  char message[AC_MSG_SIZE], hint[AC_OBS_HINT_SIZE] = "";
  double sent_after_ms = call->sent_ms - call->signed_ms;
  int expired, skewed, aged;

  memset(&obs, 0, sizeof obs);
  ac_obs_parse_error(t->body.data, t->body.len, &obs);
  /* The date is signed when the upload starts, so a wait for a
   * connection ages it, and a new attempt signs it again. A wait under
   * the date's resolution of 1 s leaves the clock to blame. Without the
   * time of sending (libcurl before 7.80), starting behind
   * max_connections counts as such a wait. */
  skewed = strcmp(obs.code, "RequestTimeTooSkewed") == 0;
  aged = skewed && (call->sent_ms > 0 ? sent_after_ms >= 1000 : t->queued);
  if (aged && call->sent_ms > 0)
    snprintf(hint, sizeof hint, " (the upload was signed when it started "
             "and sent %.0f ms later, after a wait for a connection; a new "
             "attempt signs it again, and a higher max_connections "
             "shortens a wait for a free one)", sent_after_ms);
  else if (aged)
    snprintf(hint, sizeof hint, " (the upload was signed when it started "
             "and then waited for a free connection; a new attempt signs "
             "it again, and a higher max_connections shortens the wait)");
  else if (skewed)
    snprintf(hint, sizeof hint, " (check this machine's clock: OBS "
             "accepts a date at most 15 minutes from its own)");
  if (obs.message[0] != '\0')
    snprintf(message, sizeof message, "OBS: %s%s", obs.message, hint);
  else
    snprintf(message, sizeof message, "OBS returned HTTP %ld%s", status,
             hint);
  expired = strstr(obs.code, "Expired") != NULL
         || strstr(obs.message, "expired") != NULL
         || strstr(obs.message, "Expired") != NULL;

  e.kind = AC_KIND_HTTP;
  e.status = status;
  e.code = obs.code;
  e.message = message;
  e.request_id = t->request_id[0] ? t->request_id : obs.request_id;
  e.retry_after = t->retry_after;
  e.retryable = ac_status_retryable(status) || aged;
  e.secrets = call->secrets;
  lua_pushnil(L);
  ac_push_error(L, &e);
  if (expired) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "expired");
  }
}


/* ---------------------------------------------------------------------
 * Shared with client:start_upload
 * ------------------------------------------------------------------- */

/* Points call->secrets at the client's own secrets, which it keeps in
 * that form, followed by the two issued ones. */
static void set_secrets(ac_client *c, upload_call *call) {
  int n = 0;

  memcpy(call->secrets, c->secrets, sizeof c->secrets);
  while (call->secrets[n] != NULL)
    n++;
  call->secrets[n++] = call->req.secret;
  call->secrets[n++] = call->req.security_token;
  call->secrets[n] = NULL;
}


/* Dates and signs the request and builds its URL and headers. Returns
 * 0, or -1 when memory runs out. */
static int sign_request(upload_call *call) {
  ac_buf auth = {0};
  int failed;

  ac_http_date(time(NULL), call->date);
  call->signed_ms = clock_ms();
  call->sent_ms = 0;
  call->req.date = call->date;
  failed = ac_obs_url(&call->req, &call->url) != 0
        || ac_obs_authorization(&call->req, &auth) != 0
        || (call->headers = upload_headers(call, &auth)) == NULL;
  ac_buf_free(&auth);
  return failed ? -1 : 0;
}


/* Does the work of ac_upload_build. */
static int build_upload(lua_State *L, ac_client *c, ac_upload *call,
                        char *msg) {
  char shown[AC_PATH_TEXT];
  int md5;

  if (read_call(L, c, call, msg) != 0)
    return -1;
  set_secrets(c, call);
  call->req.content_md5 = "";
  if (open_source(call, msg) != 0)
    return -1;

  lua_getfield(L, 3, "content_md5");
  md5 = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (md5 && body_md5(&call->src, call->md5) != 0) {
    if (call->src.failure != AC_SOURCE_OK) {
      format_source_failure(call, msg);
      return -1;
    }
    snprintf(msg, AC_MSG_SIZE, "reading \"%s\" for Content-MD5 "
             "failed", path_text(call->path, shown));
    return -2;
  }
  if (md5)
    call->req.content_md5 = call->md5;

  if (sign_request(call) != 0) {
    snprintf(msg, AC_MSG_SIZE, "not enough memory");
    return -2;
  }
  return 0;
}


int ac_upload_build(lua_State *L, ac_client *c, ac_upload *call,
                    char *msg) {
  int rc = build_upload(L, c, call, msg);

  /* A rejected upload closes its file now, not when the collector frees
   * the call, or rejections in a loop run out of descriptors. */
  if (rc != 0 && call->src.file != NULL) {
    fclose(call->src.file);
    call->src.file = NULL;
  }
  return rc;
}


void ac_upload_final_progress(ac_upload *call, CURLcode rc, long status) {
  if (rc == CURLE_OK && status >= 200 && status <= 299
      && call->progress.has_callback && !call->progress.error_at
      && call->progress.last_sent != call->src.total)
    call_progress(&call->progress, call->src.total, call->src.total);
}


int ac_upload_push_result(lua_State *L, ac_client *c, ac_upload *call,
                          ac_transport *t, CURLcode rc, long status) {
  ac_error_info e = {0};

  if (rc == CURLE_ABORTED_BY_CALLBACK
      && (call->progress.aborted || call->progress.error_at)) {
    e.kind = AC_KIND_CANCELLED;
    e.message = call->progress.aborted
              ? "upload aborted by the progress callback"
              : "upload aborted because the progress callback raised an "
                "error";
    lua_pushnil(L);
    ac_push_error(L, &e);
    return 2;
  }
  /* Not retryable, because a retry that succeeds would store a file
   * that was changed during the upload, as if nothing had happened. */
  if (rc != CURLE_OK && call->src.failure != AC_SOURCE_OK) {
    char message[AC_MSG_SIZE];

    format_source_failure(call, message);
    e.kind = AC_KIND_INVALID_ARGUMENT;
    e.message = message;
    lua_pushnil(L);
    ac_push_error(L, &e);
    return 2;
  }
  if (ac_transport_error_body_cut(t, rc, status))
    rc = CURLE_OK;
  if (rc != CURLE_OK)
    return ac_client_push_result(L, c, t, rc, status);
  if (status < 200 || status > 299) {
    push_obs_error(L, t, call, status);
    return 2;
  }
  push_meta(L, t, call, status);
  return 1;
}


void ac_upload_free(ac_upload *call) {
  if (call->src.file != NULL)
    fclose(call->src.file);
  call->src.file = NULL;
  ac_free_secret_headers(call->headers);
  call->headers = NULL;
  ac_buf_free(&call->url);
}


/* ---------------------------------------------------------------------
 * client:upload
 * ------------------------------------------------------------------- */

/* Sends the request on the client's upload handle and pushes the
 * outcome. Returns the number of values pushed, or -2 with an error on
 * the stack: the progress callback's, or a memory error. */
static int send_upload(lua_State *L, ac_client *c, upload_call *call) {
  ac_outcome outcome;
  long status = 0;
  CURLcode rc;
  int n;

  ac_upload_setup(c, call, &c->upload);
  call->progress.L = L;
  c->uploading = 1;
  rc = curl_easy_perform(c->upload.curl);
  curl_easy_getinfo(c->upload.curl, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_setopt(c->upload.curl, CURLOPT_HTTPHEADER, NULL);

  /* The call at the end, when the interval skipped it during the
   * transfer. An error raised in it propagates like any other. */
  ac_upload_final_progress(call, rc, status);
  c->uploading = 0;

  if (call->progress.error_at) {
    lua_pushvalue(L, call->progress.error_at);
    return -2;
  }
  /* OBS's error body and the secrets that errors are redacted of are
   * client memory, which a finalizer's close() must not free. */
  outcome = (ac_outcome){.client = c, .transport = &c->upload,
                         .upload = call, .rc = rc, .status = status};
  n = ac_push_outcome(L, &outcome);
  return n < 0 ? -2 : n;
}


#define AC_UPLOAD_MT "appcenter.core.upload_call"

/* Closes the file when the call ends in any way, a Lua error included. */
static int upload_call_gc(lua_State *L) {
  ac_upload_free(lua_touserdata(L, 1));
  return 0;
}


static upload_call *push_upload_call(lua_State *L) {
  upload_call *call = ac_newuserdata(L, sizeof *call);

  memset(call, 0, sizeof *call);
  if (luaL_newmetatable(L, AC_UPLOAD_MT)) {
    lua_pushcfunction(L, upload_call_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return call;
}


static int l_upload(lua_State *L) {
  ac_client *c = luaL_checkudata(L, 1, AC_CLIENT_MT);
  upload_call *call;
  char msg[AC_MSG_SIZE];
  int n;

  if (!c->open)
    return luaL_error(L, "appcenter.core: the client is closed");
  /* A second transfer would reconfigure the handle of the running one,
   * which then reads its body from the wrong source, or replace the
   * response that a finished one builds its result from. */
  if (c->uploading)
    return luaL_error(L, "appcenter.core: upload called during an upload "
                      "of the same client, e.g. from its progress "
                      "callback; use another client");
  if (c->holds > 0)
    return luaL_error(L, "appcenter.core: upload called while the same "
                      "client builds a result, e.g. from a finalizer; use "
                      "another client");
  if (lua_isnoneornil(L, 3)) {
    lua_settop(L, 2);
    lua_newtable(L);
  }
  lua_settop(L, 3);
  call = push_upload_call(L);
  switch (ac_upload_build(L, c, call, msg)) {
  case -1:
    return ac_return_invalid(L, msg);
  case -2:
    return luaL_error(L, "appcenter.core: %s", msg);
  }
  /* An __index metamethod of the arguments may have closed the client. */
  if (!c->open) {
    ac_upload_free(call);
    return luaL_error(L, "appcenter.core: the client is closed");
  }
  ac_client_after_fork(c);

  if (c->upload.curl == NULL
      && ac_transport_init(&c->upload, &c->transport_opts, msg) != 0)
    return luaL_error(L, "appcenter.core: %s", msg);

  n = send_upload(L, c, call);
  ac_upload_free(call);
  return n == -2 ? lua_error(L) : n;
}


/* core.check_upload_path(path): opens path as an upload does, then
 * closes it. Returns true, or nil and the message of the upload's
 * invalid_argument error. The wrapper checks a path with it before it
 * requests a credential, because io.open of a FIFO would block. */
int ac_l_check_upload_path(lua_State *L) {
  upload_call call;
  char msg[AC_MSG_SIZE];
  size_t len;
  int failed;

  memset(&call, 0, sizeof call);
  call.path = luaL_checklstring(L, 1, &len);
  failed = ac_check_no_nul("path", call.path, len, msg) != 0
        || open_source(&call, msg) != 0;
  ac_upload_free(&call);
  if (failed) {
    lua_pushnil(L);
    lua_pushstring(L, msg);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}


static const luaL_Reg upload_methods[] = {
  {"upload", l_upload},
  {NULL, NULL}
};


void ac_upload_add_methods(lua_State *L) {
  luaL_setfuncs(L, upload_methods, 0);
}
