/*
 * libcurl transport.
 *
 * Caveats: one handle serves one call at a time, so a client must not be
 * used from two threads at once. Redirects are never followed and only
 * http and https are enabled.
 */
#include "transport.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "request.h"


/* ---------------------------------------------------------------------
 * Process-wide initialisation
 * ------------------------------------------------------------------- */

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_status = CURLE_FAILED_INIT;

static void global_init(void) {
  global_status = curl_global_init(CURL_GLOBAL_DEFAULT);
}


CURLcode ac_transport_global_init(void) {
  pthread_once(&global_once, global_init);
  return global_status;
}


/* ---------------------------------------------------------------------
 * Callbacks: they record failures and never raise.
 * ------------------------------------------------------------------- */

static size_t on_body(char *data, size_t size, size_t n, void *ud) {
  ac_transport *t = ud;
  size_t len = size * n;

  if (t->body.len + len > t->max_body_bytes) {
    t->body_too_large = 1;
    return 0;  /* makes libcurl stop with CURLE_WRITE_ERROR */
  }
  if (ac_buf_add(&t->body, data, len) != 0)
    return 0;
  return len;
}


/* Copies the value of header "name" into out when line is that header.
 * Control characters inside the value become '?', because the value ends
 * up in one-line error messages and logs. */
static void copy_header(const char *line, size_t len, const char *name,
                        char *out, size_t cap) {
  size_t name_len = strlen(name), n, i;

  if (len <= name_len || strncasecmp(line, name, name_len) != 0
      || line[name_len] != ':')
    return;

  line += name_len + 1;
  len -= name_len + 1;
  while (len > 0 && (*line == ' ' || *line == '\t')) {
    line++;
    len--;
  }
  while (len > 0 && (unsigned char)line[len - 1] <= ' ')
    len--;
  n = len < cap - 1 ? len : cap - 1;
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)line[i];
    out[i] = (c < 0x20 || c == 0x7F) ? '?' : (char)c;
  }
  out[n] = '\0';
}


static size_t on_header(char *line, size_t size, size_t n, void *ud) {
  ac_transport *t = ud;
  size_t len = size * n;

  copy_header(line, len, "X-Request-Id", t->request_id,
              sizeof t->request_id);
  copy_header(line, len, "x-obs-request-id", t->request_id,
              sizeof t->request_id);
  copy_header(line, len, "ETag", t->etag, sizeof t->etag);
  copy_header(line, len, "Retry-After", t->retry_after,
              sizeof t->retry_after);
  return len;
}


/* ---------------------------------------------------------------------
 * Handle setup
 * ------------------------------------------------------------------- */

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
  if (o->ca_file != NULL)
    SET(CURLOPT_CAINFO, o->ca_file);
  if (o->proxy != NULL)
    SET(CURLOPT_PROXY, o->proxy);

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
  ac_buf_free(&t->body);
}


/* Large responses are rare, so a buffer grown by one is released. */
#define AC_KEEP_BODY_BYTES (64 * 1024)

void ac_transport_prepare(ac_transport *t, const char *url,
                          struct curl_slist *headers, const char *body,
                          size_t body_len, long timeout_ms) {
  CURL *c = t->curl;

  if (t->body.cap > AC_KEEP_BODY_BYTES)
    ac_buf_free(&t->body);
  ac_buf_reset(&t->body);
  t->body_too_large = 0;
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
