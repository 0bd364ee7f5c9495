/*
 * OBS upload requests: the URL, the native OBS signature (HMAC-SHA1) and
 * the XML error body. No I/O and no libcurl.
 */
#ifndef AC_OBS_H
#define AC_OBS_H

#include <stddef.h>
#include <time.h>

#include "buf.h"

/* "Fri, 04 Dec 2026 15:45:00 GMT" is 29 bytes; the rest is room that
 * lets the compiler prove snprintf cannot truncate. */
#define AC_HTTP_DATE_SIZE 64

/* MD5 digest in base64 (24 characters) plus the NUL. */
#define AC_MD5_BASE64_SIZE 25

#define AC_OBS_FIELD_SIZE 256

typedef struct ac_obs_request {
  const char *scheme;          /* "https" or "http" */
  const char *server_end_point;/* host[:port] */
  const char *bucket;
  const char *key;             /* object key, not encoded */
  int path_style;
  const char *content_type;    /* not sent when empty or blank */
  const char *content_md5;     /* "" when not sent */
  const char *date;            /* x-obs-date value */
  const char *access;
  const char *secret;
  const char *security_token;  /* not sent when empty or blank */
} ac_obs_request;

typedef struct ac_obs_error {
  char code[AC_OBS_FIELD_SIZE];
  char message[AC_OBS_FIELD_SIZE];
  char request_id[AC_OBS_FIELD_SIZE];
} ac_obs_error;

/* Formats t as an RFC 1123 date in GMT, independent of the C locale. */
void ac_http_date(time_t t, char out[AC_HTTP_DATE_SIZE]);

/* Writes the object URL into url. Returns 0, or -1 out of memory. */
int ac_obs_url(const ac_obs_request *r, ac_buf *url);

/* Returns the length of the value that a server reads from a header
 * sent with value s, which leaves out the spaces and tabs around it, and
 * sets *start to its first byte. The signature covers that value. */
size_t ac_obs_header_value(const char *s, const char **start);

/* Writes the string to sign (for tests) and the Authorization value.
 * Returns 0, or -1 when memory runs out or libcrypto fails. */
int ac_obs_string_to_sign(const ac_obs_request *r, ac_buf *out);
int ac_obs_authorization(const ac_obs_request *r, ac_buf *out);

/* Checks the credential fields an upload uses; returns 0, or -1 with a
 * message (AC_MSG_SIZE bytes) naming the field. */
int ac_obs_check_target(const char *server_end_point, const char *bucket,
                        const char *key, int path_style, char *msg);

/* Extracts Code, Message and RequestId from an OBS XML error body. Returns
 * 1 when a Code was found. */
int ac_obs_parse_error(const char *body, size_t len, ac_obs_error *e);

/* Guesses a Content-Type from the extension of path, or of key when
 * path is NULL or its extension is missing or unknown. */
const char *ac_obs_content_type(const char *path, const char *key);

#endif
