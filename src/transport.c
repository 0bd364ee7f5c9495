/*
 * libcurl transport.
 *
 * Caveats: one handle serves one call at a time, so a client must not be
 * used from two threads at once. Redirects are never followed and only
 * http and https are enabled. An empty proxy also empties the no-proxy
 * list, which stops libcurl's per-transfer lookups of proxy variables.
 */
#include "transport.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "request.h"


/* ---------------------------------------------------------------------
 * Process-wide initialisation
 * ------------------------------------------------------------------- */

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_status = CURLE_FAILED_INIT;
static char curl_version_text[32];

/* Incremented in every child that fork() creates. A child starts with
 * one thread, so the handler runs alone. */
static volatile unsigned fork_generation;

static void count_fork(void) {
  fork_generation++;
}


/* curl_version_info rewrites static buffers on every call in libcurl
 * 7.88, so it runs once here and the version is kept. glibc removes the
 * fork handler when the module is unloaded. */
static void global_init(void) {
  pthread_atfork(NULL, NULL, count_fork);
  global_status = curl_global_init(CURL_GLOBAL_DEFAULT);
  snprintf(curl_version_text, sizeof curl_version_text, "%s",
           curl_version_info(CURLVERSION_NOW)->version);
}


const char *ac_curl_version(void) {
  pthread_once(&global_once, global_init);
  return curl_version_text;
}


CURLcode ac_transport_global_init(void) {
  pthread_once(&global_once, global_init);
  return global_status;
}


unsigned ac_fork_generation(void) {
  return fork_generation;
}


/* ---------------------------------------------------------------------
 * Sockets, recorded for fork()
 * ------------------------------------------------------------------- */

#ifndef SOCK_CLOEXEC
#define SOCK_CLOEXEC 0
#endif

/* Makes fd close-on-exec where SOCK_CLOEXEC did not already. */
static void set_cloexec(int fd) {
  if (SOCK_CLOEXEC == 0 && fd >= 0)
    fcntl(fd, F_SETFD, FD_CLOEXEC);
}


/* Keeps in t an errno that means the process has no descriptor left,
 * because libcurl reports any socket failure as a failed connection.
 * Other failures, such as an unsupported address family, are routine. */
static void note_socket_errno(ac_transport *t, int err) {
  if (err == EMFILE || err == ENFILE)
    t->socket_errno = err;
}


/* libcurl's socket creation for transport ud, with close-on-exec added
 * and the socket recorded in the client's list. */
static curl_socket_t open_socket(void *ud, curlsocktype purpose,
                                 struct curl_sockaddr *address) {
  ac_transport *t = ud;
  ac_socket_list *list = t->sockets;
  ac_open_socket *entry;
  struct stat st;
  curl_socket_t fd;

  (void)purpose;
  if (list->count == list->cap) {
    size_t cap = list->cap ? list->cap * 2 : 8;
    ac_open_socket *sockets = realloc(list->sockets,
                                      cap * sizeof *sockets);

    if (sockets == NULL)
      return CURL_SOCKET_BAD;
    list->sockets = sockets;
    list->cap = cap;
  }
  fd = socket(address->family, address->socktype | SOCK_CLOEXEC,
              address->protocol);
  if (fd == CURL_SOCKET_BAD) {
    note_socket_errno(t, errno);
    return fd;
  }
  if (fstat(fd, &st) != 0) {
    close(fd);
    return CURL_SOCKET_BAD;
  }
  set_cloexec(fd);
  entry = &list->sockets[list->count++];
  entry->fd = fd;
  entry->device = st.st_dev;
  entry->inode = st.st_ino;
  return fd;
}


/* Removes fd from the list; returns whether it was there. */
static int forget_socket(ac_socket_list *list, curl_socket_t fd) {
  size_t i;

  for (i = 0; i < list->count; i++) {
    if (list->sockets[i].fd == fd) {
      list->sockets[i] = list->sockets[--list->count];
      return 1;
    }
  }
  return 0;
}


/* Closes only sockets of the list: after a fork, a descriptor that the
 * child reused for something else is no longer one. */
static int close_socket(void *ud, curl_socket_t fd) {
  return forget_socket(ud, fd) ? close(fd) : 0;
}


/* Returns whether entry's descriptor still refers to its socket. */
static int still_open(const ac_open_socket *entry) {
  struct stat st;

  return fstat(entry->fd, &st) == 0 && st.st_dev == entry->device
      && st.st_ino == entry->inode;
}


int ac_socket_list_after_fork(ac_socket_list *list) {
  unsigned generation = fork_generation;
  struct stat closed_stream;
  int pair[2];
  size_t i;

  if (list->fork_generation == generation)
    return 0;
  list->fork_generation = generation;
  if (list->count == 0)
    return 1;
  /* A stream whose peer is closed reads as end of file and fails
   * writes with EPIPE, which libcurl sends with MSG_NOSIGNAL. */
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) == 0)
    close(pair[1]);
  else
    pair[0] = open("/dev/null", O_RDWR);
  if (pair[0] >= 0 && fstat(pair[0], &closed_stream) != 0) {
    close(pair[0]);
    pair[0] = -1;
  }
  i = 0;
  while (i < list->count) {
    ac_open_socket *entry = &list->sockets[i];

    /* NOTE: when the reused descriptor is a socket, libcurl may still
     * send a TLS close alert on it as it drops the connection, because
     * it writes with send(), which fails on other files. */
    if (!still_open(entry)) {
      forget_socket(list, entry->fd);
      continue;
    }
    /* NOTE: with no descriptor left for the closed stream, the child
     * keeps the inherited connections. */
    if (pair[0] >= 0 && dup2(pair[0], entry->fd) >= 0) {
      fcntl(entry->fd, F_SETFD, FD_CLOEXEC);
      /* What the descriptor is now, for a fork of this child. */
      entry->device = closed_stream.st_dev;
      entry->inode = closed_stream.st_ino;
    }
    i++;
  }
  if (pair[0] >= 0)
    close(pair[0]);
  return 1;
}


void ac_socket_list_free(ac_socket_list *list) {
  free(list->sockets);
  list->sockets = NULL;
  list->count = list->cap = 0;
}


/* ---------------------------------------------------------------------
 * Callbacks: they record failures and never raise.
 * ------------------------------------------------------------------- */

static size_t on_body(char *data, size_t size, size_t n, void *ud) {
  ac_transport *t = ud;
  size_t len = size * n;

  if (t->body.len + len > t->max_body_bytes) {
    /* An upload's OBS error code may be in the part that fits. */
    ac_buf_add(&t->body, data, t->max_body_bytes - t->body.len);
    t->body_too_large = 1;
    return 0;  /* makes libcurl stop with CURLE_WRITE_ERROR */
  }
  if (ac_buf_add(&t->body, data, len) != 0)
    return 0;
  return len;
}


/* Copies a header value, trimmed, into out. Control characters become
 * '?', because the value ends up in one-line error messages and logs. */
static void copy_value(const char *value, size_t len, char *out,
                       size_t cap) {
  size_t n, i;

  while (len > 0 && (*value == ' ' || *value == '\t')) {
    value++;
    len--;
  }
  while (len > 0 && (unsigned char)value[len - 1] <= ' ')
    len--;
  n = len < cap - 1 ? len : cap - 1;
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)value[i];
    out[i] = (c < 0x20 || c == 0x7F) ? '?' : (char)c;
  }
  out[n] = '\0';
}


/* Reports whether the Content-Length value v[0..len) is a number larger
 * than curl_off_t holds. libcurl 7.88 ignores such a value and reads the
 * body until the server closes the connection, so an empty or cut body
 * would look complete. */
static int length_overflows(const char *v, size_t len) {
  const unsigned long long max =
      ((unsigned long long)1 << (sizeof(curl_off_t) * 8 - 1)) - 1;
  unsigned long long n = 0;
  size_t i = 0;

  while (i < len && (v[i] == ' ' || v[i] == '\t'))
    i++;
  if (i < len && v[i] == '+')
    i++;
  for (; i < len && v[i] >= '0' && v[i] <= '9'; i++) {
    unsigned digit = (unsigned)(v[i] - '0');

    if (n > (max - digit) / 10)
      return 1;
    n = n * 10 + digit;
  }
  return 0;
}


/* Keeps the few response headers the module reports. The name length
 * picks the candidate, so most lines cost one memchr. */
static size_t on_header(char *line, size_t size, size_t n, void *ud) {
  ac_transport *t = ud;
  size_t len = size * n, name_len;
  const char *colon = memchr(line, ':', len);
  char *out = NULL;
  size_t cap = 0;

  /* A status line starts a new response head: the headers of an interim
   * 1xx response do not belong to the final one. */
  if (len >= 5 && memcmp(line, "HTTP/", 5) == 0) {
    t->etag[0] = t->retry_after[0] = t->request_id[0] = '\0';
    t->huge_length = 0;
    return len;
  }
  /* The blank line that ends the head. A Content-Length over any
   * max_body_bytes makes the response one whose body is, once the
   * headers after it are kept too. */
  if (colon == NULL && t->huge_length && len > 0
      && (line[0] == '\r' || line[0] == '\n')) {
    t->body_too_large = 1;
    return 0;  /* makes libcurl stop with CURLE_WRITE_ERROR */
  }
  if (colon == NULL)
    return len;
  name_len = (size_t)(colon - line);
  if (name_len == 14 && strncasecmp(line, "Content-Length", 14) == 0
      && length_overflows(colon + 1, len - name_len - 1))
    t->huge_length = 1;
  if (name_len == 4 && strncasecmp(line, "ETag", 4) == 0) {
    out = t->etag;
    cap = sizeof t->etag;
  } else if (name_len == 11 && strncasecmp(line, "Retry-After", 11) == 0) {
    out = t->retry_after;
    cap = sizeof t->retry_after;
  } else if ((name_len == 12 && strncasecmp(line, "X-Request-Id", 12) == 0)
             || (name_len == 16
                 && strncasecmp(line, "x-obs-request-id", 16) == 0)) {
    out = t->request_id;
    cap = sizeof t->request_id;
  }
  if (out != NULL)
    copy_value(colon + 1, len - name_len - 1, out, cap);
  return len;
}


/* ---------------------------------------------------------------------
 * Handle setup
 * ------------------------------------------------------------------- */

/* Names libcurl reads to pick a proxy for http and https. HTTP_PROXY,
 * which libcurl ignores, also keeps the lookups on when it is set. */
static const char *const proxy_variables[] = {
  "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
  "all_proxy", "ALL_PROXY", NULL
};


const char *ac_transport_default_proxy(void) {
  const char *const *name;
  const char *value;

  for (name = proxy_variables; *name != NULL; name++)
    if ((value = getenv(*name)) != NULL && *value != '\0')
      return NULL;
  return "";
}


int ac_transport_error_body_cut(const ac_transport *t, CURLcode rc,
                                long status) {
  return rc == CURLE_WRITE_ERROR && t->body_too_large && status >= 300;
}


void ac_transport_go_direct(ac_transport *t) {
  curl_easy_setopt(t->curl, CURLOPT_NOPROXY, "*");
  t->direct = 1;
}


void ac_transport_use_proxy(ac_transport *t, const ac_transport_opts *o) {
  /* As apply_options left it: NULL makes libcurl read no_proxy. */
  curl_easy_setopt(t->curl, CURLOPT_NOPROXY,
                   o->proxy != NULL && o->proxy[0] == '\0' ? "" : NULL);
  t->direct = 0;
}


/* libcurl reads <scheme>_proxy, then its upper-case form except
 * HTTP_PROXY, then all_proxy and ALL_PROXY, and skips empty values. */
const char *ac_transport_proxy_variable(const char *url) {
  static const char *const https_names[] = {
    "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", NULL
  };
  static const char *const http_names[] = {
    "http_proxy", "all_proxy", "ALL_PROXY", NULL
  };
  const char *const *name =
      strncasecmp(url, "https:", 6) == 0 ? https_names : http_names;
  const char *value;

  for (; *name != NULL; name++)
    if ((value = getenv(*name)) != NULL && *value != '\0')
      return *name;
  return NULL;
}


/* Returns whether libcurl was built with a default CA bundle file. */
static int has_default_ca_file(CURL *c) {
#if LIBCURL_VERSION_NUM >= 0x075400  /* CURLINFO_CAINFO: 7.84.0 */
  char *path = NULL;

  return curl_easy_getinfo(c, CURLINFO_CAINFO, &path) == CURLE_OK
      && path != NULL && path[0] != '\0';
#else
  (void)c;
  return 0;
#endif
}


static CURLcode apply_options(ac_transport *t, const ac_transport_opts *o) {
  CURL *c = t->curl;
  CURLcode rc = CURLE_OK;

#define SET(opt, value) \
  if (rc == CURLE_OK) rc = curl_easy_setopt(c, opt, value)

  SET(CURLOPT_NOSIGNAL, 1L);
  SET(CURLOPT_ERRORBUFFER, t->errbuf);
  SET(CURLOPT_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_FOLLOWLOCATION, 0L);
  SET(CURLOPT_WRITEFUNCTION, on_body);
  SET(CURLOPT_WRITEDATA, t);
  SET(CURLOPT_HEADERFUNCTION, on_header);
  SET(CURLOPT_HEADERDATA, t);
  SET(CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms);
  SET(CURLOPT_SSL_VERIFYPEER, o->verify_tls ? 1L : 0L);
  SET(CURLOPT_SSL_VERIFYHOST, o->verify_tls ? 2L : 0L);
  SET(CURLOPT_USERAGENT, o->user_agent);
  SET(CURLOPT_ACCEPT_ENCODING, NULL);
  SET(CURLOPT_TCP_KEEPALIVE, 1L);
  if (o->sockets != NULL) {
    t->sockets = o->sockets;
    SET(CURLOPT_OPENSOCKETFUNCTION, open_socket);
    SET(CURLOPT_OPENSOCKETDATA, t);
    SET(CURLOPT_CLOSESOCKETFUNCTION, close_socket);
    SET(CURLOPT_CLOSESOCKETDATA, o->sockets);
  }
  if (o->ca_file != NULL) {
    /* ca_file replaces the system store: with libcurl's default CA path
     * left set, OpenSSL would also look for issuers there. */
    SET(CURLOPT_CAINFO, o->ca_file);
    SET(CURLOPT_CAPATH, NULL);
  } else if (o->verify_tls && has_default_ca_file(c)) {
    /* libcurl keeps the parsed CA store between connections only
     * without a CA path, and Debian's build sets both. Without this,
     * each new TLS connection parses the whole bundle again: about
     * 60 ms of CPU per reconnect on the benchmark machine, against
     * 2 ms. On Debian, update-ca-certificates writes the same
     * certificates to the bundle and the path. */
    SET(CURLOPT_CAPATH, NULL);
  }
  if (o->proxy != NULL)
    SET(CURLOPT_PROXY, o->proxy);
  if (o->proxy != NULL && o->proxy[0] == '\0')
    SET(CURLOPT_NOPROXY, "");

#undef SET
  return rc;
}


int ac_transport_init(ac_transport *t, const ac_transport_opts *o,
                      char *msg) {
  CURLcode rc;

  memset(t, 0, sizeof *t);
  t->timeout_ms = o->timeout_ms;
  t->max_body_bytes = o->max_body_bytes;

  rc = ac_transport_global_init();
  if (rc == CURLE_OK) {
    t->curl = curl_easy_init();
    rc = t->curl ? apply_options(t, o) : CURLE_FAILED_INIT;
  }
  if (rc != CURLE_OK) {
    snprintf(msg, AC_MSG_SIZE, "libcurl setup failed: %s",
             curl_easy_strerror(rc));
    ac_transport_free(t);
    return -1;
  }
  return 0;
}


void ac_transport_free(ac_transport *t) {
  if (t->curl != NULL)
    curl_easy_cleanup(t->curl);
  t->curl = NULL;
  /* The body of a create-credential response contains the issued secret
   * and security token. */
  ac_buf_clear_free(&t->body);
}


void ac_free_secret_headers(struct curl_slist *list) {
  struct curl_slist *node;

  for (node = list; node != NULL; node = node->next)
    ac_wipe(node->data, strlen(node->data));
  curl_slist_free_all(list);
}


/* Large responses are rare, so a buffer grown by one is released. */
#define AC_KEEP_BODY_BYTES (64 * 1024)

void ac_transport_prepare(ac_transport *t, const char *url,
                          struct curl_slist *headers, const char *body,
                          size_t body_len, long timeout_ms) {
  CURL *c = t->curl;

  if (t->body.cap > AC_KEEP_BODY_BYTES)
    ac_buf_clear_free(&t->body);
  ac_buf_reset(&t->body);
  t->body_too_large = 0;
  t->huge_length = 0;
  t->socket_errno = 0;
  t->timeout_hint = NULL;
  t->request_id[0] = t->retry_after[0] = t->errbuf[0] = '\0';
  t->etag[0] = '\0';

  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS,
                   timeout_ms > 0 ? timeout_ms : t->timeout_ms);
}


CURLcode ac_transport_post(ac_transport *t, const char *url,
                           struct curl_slist *headers, const char *body,
                           size_t body_len, long timeout_ms, long *status) {
  CURLcode rc;

  ac_transport_prepare(t, url, headers, body, body_len, timeout_ms);
  *status = 0;
  rc = curl_easy_perform(t->curl);
  curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, status);
  return rc;
}
