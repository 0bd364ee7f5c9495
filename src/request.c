/*
 * Request building and input validation (no I/O).
 *
 * Caveats: endpoints are checked for shape (scheme, host, no query,
 * fragment or user info) and are not resolved. A host name is not
 * checked against DNS rules beyond rejecting spaces and control
 * characters.
 */
#include "request.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Printable characters that a URL path may not contain unescaped (RFC
 * 3986 section 3.3), so neither a project id nor an endpoint path may. */
#define AC_PATH_UNSAFE "\"<>\\^`{|}[]"


/* ---------------------------------------------------------------------
 * UTF-8
 * ------------------------------------------------------------------- */

size_t ac_utf8_char(const unsigned char *s, size_t len) {
  unsigned c = s[0];
  size_t n, i;
  unsigned long cp;

  if (c < 0x80)
    return 1;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
    cp = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    cp = c & 0x0F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (len < n)
    return 0;

  for (i = 1; i < n; i++) {
    if ((s[i] & 0xC0) != 0x80)
      return 0;
    cp = (cp << 6) | (s[i] & 0x3F);
  }

  /* Reject overlong forms, UTF-16 surrogates and code points past
   * U+10FFFF. */
  if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000))
    return 0;
  if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
    return 0;
  return n;
}


/* ---------------------------------------------------------------------
 * Field checks
 * ------------------------------------------------------------------- */

int ac_check_file_name(const char *s, size_t len, char *msg) {
  const unsigned char *u = (const unsigned char *)s;
  size_t i = 0, n;

  if (len == 0) {
    snprintf(msg, AC_MSG_SIZE, "invalid file_name: it is empty; "
             "pass the complete file name, e.g. \"setup.exe\"");
    return -1;
  }
  if (len > AC_MAX_FILE_NAME_BYTES) {
    snprintf(msg, AC_MSG_SIZE, "invalid file_name: %lu bytes is longer "
             "than the maximum of %d bytes; use a shorter name",
             (unsigned long)len, AC_MAX_FILE_NAME_BYTES);
    return -1;
  }

  while (i < len) {
    if (u[i] < 0x20 || u[i] == 0x7F) {
      snprintf(msg, AC_MSG_SIZE, "invalid file_name: control character "
               "0x%02X at byte %lu; remove it", u[i], (unsigned long)i + 1);
      return -1;
    }
    if (u[i] < 0x80 && strchr(AC_FILE_NAME_FORBIDDEN, u[i]) != NULL) {
      snprintf(msg, AC_MSG_SIZE, "invalid file_name: character '%c' at "
               "byte %lu is not allowed (the API rejects any of %s); "
               "rename the file", u[i], (unsigned long)i + 1,
               AC_FILE_NAME_FORBIDDEN);
      return -1;
    }
    n = ac_utf8_char(u + i, len - i);
    if (n == 0) {
      snprintf(msg, AC_MSG_SIZE, "invalid file_name: invalid UTF-8 at "
               "byte %lu; pass the name encoded as UTF-8",
               (unsigned long)i + 1);
      return -1;
    }
    /* C1 control characters U+0080..U+009F are encoded as C2 80..9F. */
    if (n == 2 && u[i] == 0xC2 && u[i + 1] < 0xA0) {
      snprintf(msg, AC_MSG_SIZE, "invalid file_name: control character "
               "U+%04X at byte %lu; remove it", u[i + 1],
               (unsigned long)i + 1);
      return -1;
    }
    i += n;
  }
  return 0;
}


int ac_check_project_id(const char *s, size_t len, char *msg) {
  size_t i;

  if (len == 0) {
    snprintf(msg, AC_MSG_SIZE, "invalid project_id: it is empty; pass "
             "the project id of the region (IAM console, My Credentials)");
    return -1;
  }
  if (len > AC_MAX_PROJECT_ID_BYTES) {
    snprintf(msg, AC_MSG_SIZE, "invalid project_id: %lu bytes is longer "
             "than the maximum of %d", (unsigned long)len,
             AC_MAX_PROJECT_ID_BYTES);
    return -1;
  }

  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c <= 0x20 || c >= 0x7F) {
      snprintf(msg, AC_MSG_SIZE, "invalid project_id: white space, "
               "control or non-ASCII byte 0x%02X at byte %lu; pass the "
               "id alone", c, (unsigned long)i + 1);
      return -1;
    }
    if (strchr("/?#%", c) != NULL) {
      snprintf(msg, AC_MSG_SIZE, "invalid project_id: character '%c' at "
               "byte %lu is not allowed; pass the id alone, not a path "
               "or URL", c, (unsigned long)i + 1);
      return -1;
    }
    if (strchr(AC_PATH_UNSAFE, c) != NULL) {
      snprintf(msg, AC_MSG_SIZE, "invalid project_id: character '%c' at "
               "byte %lu is not allowed in a URL path; pass the project "
               "id of the region (IAM console, My Credentials)", c,
               (unsigned long)i + 1);
      return -1;
    }
  }
  /* A dot segment would make the path point elsewhere. */
  if ((len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.')) {
    snprintf(msg, AC_MSG_SIZE, "invalid project_id '%.*s': pass the "
             "project id of the region (IAM console, My Credentials)",
             (int)len, s);
    return -1;
  }
  return 0;
}


/* Header values must not contain CR, LF or NUL, because those would end
 * the header early or inject another one. The value itself is never put
 * into the message: it may be a secret. */
int ac_check_no_nul(const char *field, const char *s, size_t len,
                    char *msg) {
  const char *nul = memchr(s, '\0', len);

  if (nul == NULL)
    return 0;
  snprintf(msg, AC_MSG_SIZE, "invalid %s: NUL byte at byte %lu; remove NUL "
           "bytes", field, (unsigned long)(nul - s) + 1);
  return -1;
}


int ac_check_header_value(const char *field, const char *s, size_t len,
                          char *msg) {
  size_t i;

  if (len == 0) {
    snprintf(msg, AC_MSG_SIZE, "invalid %s: it is empty", field);
    return -1;
  }
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '\r' || c == '\n' || c == '\0') {
      snprintf(msg, AC_MSG_SIZE, "invalid %s: %s at byte %lu; remove "
               "%s", field, c == '\0' ? "NUL byte" : "line break",
               (unsigned long)i + 1, c == '\0' ? "NUL bytes"
               : "line breaks (a trailing newline from a file is a "
                 "common cause)");
      return -1;
    }
  }
  return 0;
}


/* ---------------------------------------------------------------------
 * Endpoint
 * ------------------------------------------------------------------- */

/* Returns the length of the host in the authority h[0..n), without the
 * port. */
static size_t host_length(const char *h, size_t n) {
  const char *end;

  if (h[0] == '[') {
    end = memchr(h, ']', n);
    return end ? (size_t)(end - h) + 1 : n;
  }
  end = memchr(h, ':', n);
  return end ? (size_t)(end - h) : n;
}


/* Copies the n bytes at s into out (cap bytes) as a string; returns 0,
 * or -1 when they do not fit. */
static int copy_text(char *out, size_t cap, const char *s, size_t n) {
  if (n >= cap)
    return -1;
  memcpy(out, s, n);
  out[n] = '\0';
  return 0;
}


/* Returns 1 for localhost (any case, with or without the final dot),
 * for an IPv4 address in 127.0.0.0/8 and for [::1]. A name that only
 * looks like an address, such as 127.0.0.1.5, is not one, because the
 * resolver may map it to any host. */
static int is_loopback_host(const char *h, size_t n) {
  char text[INET6_ADDRSTRLEN + 2];
  unsigned char addr[sizeof(struct in6_addr)];

  n = host_length(h, n);
  if ((n == 9 || (n == 10 && h[9] == '.'))
      && strncasecmp(h, "localhost", 9) == 0)
    return 1;
  if (h[0] == '[')
    return copy_text(text, sizeof text, h + 1, n - 2) == 0
        && inet_pton(AF_INET6, text, addr) == 1
        && memcmp(addr, &in6addr_loopback, sizeof addr) == 0;
  return copy_text(text, sizeof text, h, n) == 0
      && inet_pton(AF_INET, text, addr) == 1 && addr[0] == 127;
}


int ac_authority_is_loopback(const char *authority) {
  size_t n = strlen(authority);

  return n > 0 && is_loopback_host(authority, n);
}


/* Returns why the host name h[0..n) is not valid, or NULL. A name has
 * at most 253 bytes and may end with a dot. Its labels have 1 to 63
 * letters, digits, '-' and '_', and do not start or end with '-'. */
static const char *host_name_problem(const char *h, size_t n) {
  size_t i, label = 0;

  if (n > 0 && h[n - 1] == '.')
    n--;
  if (n == 0)
    return "the host is missing";
  if (n > 253)
    return "the host name is longer than 253 bytes";
  for (i = 0; i <= n; i++) {
    if (i == n || h[i] == '.') {
      if (label == 0)
        return "the host name has an empty label (two dots in a row, or "
               "a dot at the start)";
      if (h[i - 1] == '-')
        return "a label of the host name ends with '-'";
      label = 0;
      continue;
    }
    if (!isalnum((unsigned char)h[i]) && h[i] != '-' && h[i] != '_')
      return "the host may contain only letters, digits, '-', '.' and "
             "'_'";
    if (label == 0 && h[i] == '-')
      return "a label of the host name starts with '-'";
    if (++label > 63)
      return "a label of the host name is longer than 63 bytes";
  }
  return NULL;
}


/* Returns 1 when s has only printable ASCII bytes other than space. */
static int is_printable(const char *s, size_t len) {
  size_t i;

  for (i = 0; i < len; i++)
    if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7F)
      return 0;
  return 1;
}


static int endpoint_error(char *msg, const char *why, const char *s,
                          size_t len) {
  /* Echo the endpoint only when it cannot carry a password, and only when
   * it cannot break the message's single line. */
  if (memchr(s, '@', len) == NULL && len <= 100 && is_printable(s, len))
    snprintf(msg, AC_MSG_SIZE, "invalid endpoint \"%.*s\": %s", (int)len,
             s, why);
  else
    snprintf(msg, AC_MSG_SIZE, "invalid endpoint: %s", why);
  return -1;
}


/* Returns why the authority host[:port] is not valid, or NULL. The host
 * is a name or an IPv6 address in brackets, and the port a number from 1
 * to 65535. */
static const char *authority_problem(const char *h, size_t n) {
  char text[INET6_ADDRSTRLEN + 2];
  unsigned char addr[sizeof(struct in6_addr)];
  size_t host_len = host_length(h, n);
  const char *port = h + host_len, *end = h + n, *problem;
  unsigned long number = 0;

  if (h[0] == '[') {
    if (h[host_len - 1] != ']' || host_len < 3
        || copy_text(text, sizeof text, h + 1, host_len - 2) != 0
        || inet_pton(AF_INET6, text, addr) != 1)
      return "an IPv6 address must be a valid one in brackets, as in "
             "[::1]";
  } else if ((problem = host_name_problem(h, host_len)) != NULL) {
    return problem;
  }
  if (port == end)
    return NULL;
  if (*port != ':')
    return "only a port may follow the IPv6 address";
  for (port++; port < end; port++) {
    if (!isdigit((unsigned char)*port) || number > 65535)
      return "the port must be a number from 1 to 65535";
    number = number * 10 + (unsigned long)(*port - '0');
  }
  return number >= 1 && number <= 65535
         ? NULL : "the port must be a number from 1 to 65535";
}


static int is_hex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')
      || (c >= 'A' && c <= 'F');
}


/* Checks that the path p[0..n), at byte `at` of the endpoint, is sent and
 * signed as written. Returns NULL, or why it is not, written into why
 * (AC_MSG_SIZE bytes). The signer decodes each %XX, so a '%' that starts
 * none would be signed as %25 but sent as '%'. */
static const char *path_problem(const char *p, size_t n, size_t at,
                                char *why) {
  size_t i;

  for (i = 0; i < n; i++) {
    if (strchr(AC_PATH_UNSAFE, p[i]) != NULL) {
      snprintf(why, AC_MSG_SIZE, "character '%c' at byte %lu may not be "
               "in a URL path unescaped; write it as %%%02X", p[i],
               (unsigned long)(at + i + 1), (unsigned char)p[i]);
      return why;
    }
    if (p[i] == '%' && !(i + 2 < n && is_hex(p[i + 1]) && is_hex(p[i + 2]))) {
      snprintf(why, AC_MSG_SIZE, "the '%%' at byte %lu starts no escape "
               "such as %%20; write a '%%' itself as %%25",
               (unsigned long)(at + i + 1));
      return why;
    }
  }
  return NULL;
}


/* Returns 1 when the path p[0..n) has a "." or ".." segment. */
static int has_dot_segment(const char *p, size_t n) {
  size_t i = 0;

  while (i < n) {
    size_t j = i + 1;

    while (j < n && p[j] != '/')
      j++;
    /* The segment is p[i + 1 .. j). */
    if ((j - i == 2 && p[i + 1] == '.')
        || (j - i == 3 && p[i + 1] == '.' && p[i + 2] == '.'))
      return 1;
    i = j;
  }
  return 0;
}


/* Splits scheme://authority/path; returns the scheme length (0 without a
 * scheme) and sets *https. */
static size_t endpoint_scheme(const char *s, size_t len, int *https) {
  const char *sep = NULL;
  size_t i;

  for (i = 0; i + 2 < len; i++) {
    if (s[i] == ':' && s[i + 1] == '/' && s[i + 2] == '/') {
      sep = s + i;
      break;
    }
    if (s[i] == '/')
      break;
  }
  if (sep == NULL)
    return 0;

  *https = (i == 5 && strncasecmp(s, "https", 5) == 0);
  if (*https || (i == 4 && strncasecmp(s, "http", 4) == 0))
    return i + 3;
  return (size_t)-1;
}


int ac_parse_endpoint(const char *s, size_t len, int allow_http,
                      ac_endpoint *out, char *msg) {
  size_t start, host_len, i;
  int https = 1;
  const char *host, *slash, *problem;
  char why[AC_MSG_SIZE];

  memset(out, 0, sizeof *out);
  if (len == 0)
    return endpoint_error(msg, "it is empty; pass e.g. "
                          "https://workspace.cn-north-4.myhuaweicloud.com"
                          " or set region", s, len);
  if (len > AC_MAX_ENDPOINT_BYTES)
    return endpoint_error(msg, "it is too long", s, len);
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c <= 0x20 || c >= 0x7F)
      return endpoint_error(msg, "it contains white space, a control "
                            "or a non-ASCII byte", s, len);
  }
  if (memchr(s, '?', len) != NULL || memchr(s, '#', len) != NULL)
    return endpoint_error(msg, "a query or fragment is not allowed; pass "
                          "only scheme, host and port", s, len);

  start = endpoint_scheme(s, len, &https);
  if (start == (size_t)-1)
    return endpoint_error(msg, "the scheme must be http or https", s, len);
  if (start == 0 && (strncasecmp(s, "http:", 5) == 0
                     || strncasecmp(s, "https:", 6) == 0))
    return endpoint_error(msg, "write the scheme as http:// or https://",
                          s, len);

  host = s + start;
  slash = memchr(host, '/', len - start);
  host_len = slash ? (size_t)(slash - host) : len - start;
  if (host_len == 0)
    return endpoint_error(msg, "the host is missing", s, len);
  if (memchr(host, '@', host_len) != NULL)
    return endpoint_error(msg, "user info (user:password@) is not "
                          "allowed; pass credentials as options", s, len);
  if ((problem = authority_problem(host, host_len)) != NULL)
    return endpoint_error(msg, problem, s, len);

  out->https = https;
  out->loopback = is_loopback_host(host, host_len);
  out->allow_http = allow_http;
  if (!https && !out->loopback && !allow_http)
    return endpoint_error(msg, "plain http to a non-loopback host sends "
                          "the token unencrypted; use https or set "
                          "allow_http = true", s, len);

  /* libcurl would resolve dot segments after the AK/SK signature
   * covered them. */
  if (slash != NULL && has_dot_segment(slash, len - (size_t)(slash - s)))
    return endpoint_error(msg, "the path may not contain '.' or '..' "
                          "segments", s, len);
  if (slash != NULL
      && (problem = path_problem(slash, len - (size_t)(slash - s),
                                 (size_t)(slash - s), why)) != NULL)
    return endpoint_error(msg, problem, s, len);

  /* Drop trailing slashes so that the route can be appended. */
  while (len > start + host_len && s[len - 1] == '/')
    len--;
  /* A path is kept as a prefix, for a gateway, but one that ends with
   * the route's first segment would double it. */
  if (len >= start + host_len + 3 && memcmp(s + len - 3, "/v1", 3) == 0)
    return endpoint_error(msg, "the path ends with /v1, and the module "
                          "appends /v1/{project_id}/app-center/...; "
                          "remove /v1 from the endpoint", s, len);

  out->host = malloc(host_len + 1);
  out->base = malloc(len + (start ? 0 : 8) + 1);
  if (out->host == NULL || out->base == NULL) {
    ac_endpoint_free(out);
    snprintf(msg, AC_MSG_SIZE, "not enough memory");
    return -1;
  }
  memcpy(out->host, host, host_len);
  out->host[host_len] = '\0';
  sprintf(out->base, "%s%.*s", start ? "" : "https://", (int)len, s);
  return 0;
}


void ac_endpoint_free(ac_endpoint *ep) {
  free(ep->base);
  free(ep->host);
  ep->base = ep->host = NULL;
}


/* ---------------------------------------------------------------------
 * URL and body
 * ------------------------------------------------------------------- */

long ac_build_url(ac_buf *url, const ac_endpoint *ep,
                  const char *project_id) {
  const char *authority;
  long path_at;

  ac_buf_reset(url);
  if (ac_buf_adds(url, ep->base) != 0)
    return -1;

  authority = strstr(url->data, "://") + 3;
  path_at = (long)(strchr(authority, '/') ? strchr(authority, '/')
                                          - url->data : (long)url->len);

  ac_buf_adds(url, "/v1/");
  ac_buf_adds(url, project_id);
  ac_buf_adds(url, AC_ROUTE);
  return url->failed ? -1 : path_at;
}


int ac_build_body(ac_buf *body, const char *file_name, size_t len) {
  static const char hex[] = "0123456789abcdef";
  size_t i;

  ac_buf_reset(body);
  if (ac_buf_reserve(body, len * 6 + 32) != 0)
    return -1;
  ac_buf_adds(body, "{\"file_name\":\"");

  /* Valid UTF-8 is sent as is; only quotes, backslashes and control
   * characters need escapes. */
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)file_name[i];
    char esc[6] = {'\\', 'u', '0', '0', 0, 0};

    if (c == '"' || c == '\\') {
      esc[1] = (char)c;
      ac_buf_add(body, esc, 2);
    } else if (c < 0x20 || c == 0x7F) {
      esc[4] = hex[c >> 4];
      esc[5] = hex[c & 0xF];
      ac_buf_add(body, esc, 6);
    } else {
      ac_buf_addc(body, (char)c);
    }
  }
  ac_buf_add(body, "\"}", 2);
  return body->failed ? -1 : 0;
}
