/*
 * Request building: input validation, the endpoint, the URL and the JSON
 * body. No I/O and no libcurl, so another transport can reuse it.
 *
 * Each check returns 0 when the value is valid; otherwise it writes a
 * one-line message naming the field into msg and returns -1. Messages
 * never quote a token, key or other secret.
 */
#ifndef AC_REQUEST_H
#define AC_REQUEST_H

#include <stddef.h>

#include "buf.h"

/* 255 bytes is NAME_MAX on Linux and most file systems, and keeps the
 * object path the service builds from it well inside OBS's 1024-byte
 * object key limit. */
#ifndef AC_MAX_FILE_NAME_BYTES
#define AC_MAX_FILE_NAME_BYTES 255
#endif

/* Huawei Cloud project ids are 32 hex characters; the limit leaves room
 * for other formats without allowing unbounded URLs. */
#ifndef AC_MAX_PROJECT_ID_BYTES
#define AC_MAX_PROJECT_ID_BYTES 128
#endif

#ifndef AC_MAX_ENDPOINT_BYTES
#define AC_MAX_ENDPOINT_BYTES 2048
#endif

/* The characters the API rejects in file_name. */
#define AC_FILE_NAME_FORBIDDEN ":^;|~`{}[]<>"

#define AC_MSG_SIZE 512

/* The service route after the project id. */
#define AC_ROUTE "/app-center/buckets/actions/create-credential"

typedef struct ac_endpoint {
  char *base;      /* scheme://host[:port][/prefix] without a final '/' */
  char *host;      /* host[:port] exactly as given, for Host and signing */
  int https;
  int loopback;    /* host is localhost, 127.0.0.0/8 or [::1] */
  int allow_http;  /* plain http was allowed for any host */
} ac_endpoint;

int ac_check_file_name(const char *s, size_t len, char *msg);
int ac_check_project_id(const char *s, size_t len, char *msg);
int ac_check_header_value(const char *field, const char *s, size_t len,
                          char *msg);

/* Rejects a NUL byte in the len bytes at s, which C code that reads s as
 * a string would take as its end. Returns 0, or -1 with msg naming field
 * and the byte. */
int ac_check_no_nul(const char *field, const char *s, size_t len,
                    char *msg);

/* Parses and normalises an endpoint; one without a scheme gets https://.
 * Plain http is accepted only for loopback hosts unless allow_http. */
int ac_parse_endpoint(const char *s, size_t len, int allow_http,
                      ac_endpoint *out, char *msg);
void ac_endpoint_free(ac_endpoint *ep);

/* Returns 1 when the host of authority (host[:port]) is localhost,
 * 127.0.0.0/8 or [::1]. */
int ac_authority_is_loopback(const char *authority);

/* Writes the full URL into url and returns the offset where the path
 * starts, or -1 when memory runs out. */
long ac_build_url(ac_buf *url, const ac_endpoint *ep,
                  const char *project_id);

/* Writes {"file_name":"..."} with JSON string escaping into body. The
 * name must already have passed ac_check_file_name. */
int ac_build_body(ac_buf *body, const char *file_name, size_t len);

/* Returns the length of the valid UTF-8 sequence at s, or 0 when the
 * bytes there are not valid UTF-8 (overlong forms and surrogates are
 * invalid too). */
size_t ac_utf8_char(const unsigned char *s, size_t len);

#endif
