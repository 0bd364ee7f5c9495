/*
 * libFuzzer target: input validation and request building (src/request.c).
 *
 * Input: one selector byte, then the value.
 *   0  file_name: ac_check_file_name must agree with an independent
 *      reference check written from the documented rules. An accepted
 *      name goes through ac_build_body, whose JSON string must decode
 *      back to the same bytes.
 *   1  project_id: the same, then ac_build_url.
 *   2  a header value (token, security_token, ak).
 *   3  endpoint; 4  endpoint with allow_http: an accepted endpoint has the
 *      documented shape, plain http only for loopback hosts (or with
 *      allow_http), and ac_build_url appends the route to it.
 * Every message must be one NUL-terminated line shorter than AC_MSG_SIZE.
 */
/* inet_aton, which reads addresses the way the resolver does. */
#define _DEFAULT_SOURCE

#include "fuzz.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <strings.h>

#include "../src/request.h"

#define PROJECT "0123456789abcdef0123456789abcdef"


int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return 0;
}


static void check_message(const char *msg) {
  const char *end = memchr(msg, '\0', AC_MSG_SIZE);
  const char *p;

  FUZZ_CHECK(end != NULL, "the message is NUL-terminated");
  FUZZ_CHECK(end > msg, "the message is not empty");
  for (p = msg; p < end; p++)
    FUZZ_CHECK(*p != '\n' && *p != '\r', "the message is one line");
}


/* ---------------------------------------------------------------------
 * Reference checks, written from the README's rules without looking at
 * how request.c implements them.
 * ------------------------------------------------------------------- */

/* Returns the code point of the UTF-8 sequence at s and its length in
 * *n, or -1 for an invalid sequence. */
static long decode_utf8(const unsigned char *s, size_t len, size_t *n) {
  static const long min_for_length[] = {0, 0, 0x80, 0x800, 0x10000};
  size_t need, i;
  long cp;

  if (s[0] < 0x80) {
    *n = 1;
    return s[0];
  }
  if ((s[0] & 0xE0) == 0xC0) {
    need = 2;
    cp = s[0] & 0x1F;
  } else if ((s[0] & 0xF0) == 0xE0) {
    need = 3;
    cp = s[0] & 0x0F;
  } else if ((s[0] & 0xF8) == 0xF0) {
    need = 4;
    cp = s[0] & 0x07;
  } else {
    return -1;
  }
  if (len < need)
    return -1;
  for (i = 1; i < need; i++) {
    if ((s[i] & 0xC0) != 0x80)
      return -1;
    cp = (cp << 6) | (s[i] & 0x3F);
  }
  if (cp < min_for_length[need] || cp > 0x10FFFF
      || (cp >= 0xD800 && cp <= 0xDFFF))
    return -1;
  *n = need;
  return cp;
}


/* 1 to 255 bytes of valid UTF-8, no C0 or C1 control character or DEL,
 * none of :^;|~`{}[]<>. */
static int reference_file_name_ok(const char *s, size_t len) {
  const unsigned char *u = (const unsigned char *)s;
  size_t i = 0, n;

  if (len == 0 || len > 255)
    return 0;
  while (i < len) {
    long cp = decode_utf8(u + i, len - i, &n);

    if (cp < 0 || cp < 0x20 || (cp >= 0x7F && cp <= 0x9F))
      return 0;
    if (cp < 0x80 && strchr(":^;|~`{}[]<>", (int)cp) != NULL)
      return 0;
    i += n;
  }
  return 1;
}


/* 1 to 128 bytes of printable ASCII without space, / ? # % and the
 * characters a URL path may not contain unescaped: " < > \ ^ ` { | }. */
static int reference_project_id_ok(const char *s, size_t len) {
  size_t i;

  if (len == 0 || len > 128)
    return 0;
  for (i = 0; i < len; i++)
    if (s[i] <= ' ' || s[i] >= 0x7F || strchr("/?#%", s[i]) != NULL
        || strchr("\"<>\\^`{|}[]", s[i]) != NULL)
      return 0;
  /* "." and ".." are dot segments, which libcurl would remove. */
  return !(len <= 2 && s[0] == '.' && s[len - 1] == '.');
}


/* ---------------------------------------------------------------------
 * Targets
 * ------------------------------------------------------------------- */

static int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}


/* Decodes the JSON string in body ({"file_name":"..."}) and checks that
 * it is the original name. */
static void check_body(const ac_buf *body, const char *name, size_t len) {
  static const char head[] = "{\"file_name\":\"";
  const char *p = body->data + sizeof head - 1;
  const char *end = body->data + body->len - 2;
  size_t at = 0;

  FUZZ_CHECK(body->len >= sizeof head + 1, "the body has its frame");
  FUZZ_CHECK(memcmp(body->data, head, sizeof head - 1) == 0,
             "the body starts with the file_name key");
  FUZZ_CHECK(memcmp(end, "\"}", 2) == 0, "the body ends the object");
  while (p < end) {
    unsigned char c = (unsigned char)*p;
    char decoded;

    FUZZ_CHECK(c >= 0x20 && c != 0x7F, "no raw control character in JSON");
    if (c == '"')
      FUZZ_CHECK(0, "no unescaped quote in the JSON string");
    if (c == '\\') {
      FUZZ_CHECK(p + 1 < end, "an escape is complete");
      if (p[1] == 'u') {
        FUZZ_CHECK(p + 5 < end && p[2] == '0' && p[3] == '0'
                   && hex_digit(p[4]) >= 0 && hex_digit(p[5]) >= 0,
                   "a \\u escape has four hex digits");
        decoded = (char)(hex_digit(p[4]) * 16 + hex_digit(p[5]));
        p += 6;
      } else {
        FUZZ_CHECK(p[1] == '"' || p[1] == '\\', "a known escape");
        decoded = p[1];
        p += 2;
      }
    } else {
      decoded = (char)c;
      p++;
    }
    FUZZ_CHECK(at < len && name[at] == decoded,
               "the JSON string decodes to the file name");
    at++;
  }
  FUZZ_CHECK(at == len, "the JSON string holds the whole name");
}


static void fuzz_file_name(const fuzz_field *v) {
  char msg[AC_MSG_SIZE];
  ac_buf body = {0};
  int rc = ac_check_file_name(v->data, v->len, msg);

  FUZZ_CHECK((rc == 0) == reference_file_name_ok(v->data, v->len),
             "ac_check_file_name agrees with the reference rules");
  if (rc != 0) {
    check_message(msg);
    return;
  }
  FUZZ_CHECK(ac_build_body(&body, v->data, v->len) == 0, "the body builds");
  check_body(&body, v->data, v->len);
  ac_buf_free(&body);
}


static void fuzz_project_id(const fuzz_field *v) {
  char msg[AC_MSG_SIZE];
  ac_endpoint ep;
  ac_buf url = {0};
  long path_at;
  int rc = ac_check_project_id(v->data, v->len, msg);

  FUZZ_CHECK((rc == 0) == reference_project_id_ok(v->data, v->len),
             "ac_check_project_id agrees with the reference rules");
  if (rc != 0) {
    check_message(msg);
    return;
  }
  FUZZ_CHECK(ac_parse_endpoint("https://h.example/p", 19, 0, &ep, msg) == 0,
             "a fixed endpoint parses");
  path_at = ac_build_url(&url, &ep, v->data);
  FUZZ_CHECK(path_at == 17, "the path starts after the authority");
  FUZZ_CHECK(strncmp(url.data, "https://h.example/p/v1/", 23) == 0
             && strncmp(url.data + 23, v->data, v->len) == 0
             && strcmp(url.data + 23 + v->len, AC_ROUTE) == 0,
             "the URL is base, /v1/, project id and route");
  ac_buf_free(&url);
  ac_endpoint_free(&ep);
}


static void fuzz_header_value(const fuzz_field *v) {
  char msg[AC_MSG_SIZE];
  int ok = v->len > 0 && memchr(v->data, '\r', v->len) == NULL
        && memchr(v->data, '\n', v->len) == NULL
        && memchr(v->data, '\0', v->len) == NULL;
  int rc = ac_check_header_value("token", v->data, v->len, msg);

  FUZZ_CHECK((rc == 0) == ok, "header values reject exactly CR, LF, NUL");
  if (rc != 0)
    check_message(msg);
}


/* Returns whether host (with or without the port) names the loopback
 * interface: localhost in any case with an optional final dot, an IPv4
 * address that inet_aton reads as 127.0.0.0/8, or ::1 in brackets. */
static int names_loopback(const char *host) {
  char name[AC_MAX_ENDPOINT_BYTES + 1];
  unsigned char addr6[sizeof(struct in6_addr)];
  struct in_addr addr;
  const char *end;
  size_t n;

  if (host[0] == '[') {
    end = strchr(host, ']');
    if (end == NULL)
      return 0;
    n = (size_t)(end - host - 1);
    memcpy(name, host + 1, n);
    name[n] = '\0';
    return inet_pton(AF_INET6, name, addr6) == 1
        && memcmp(addr6, &in6addr_loopback, sizeof addr6) == 0;
  }
  end = strchr(host, ':');
  n = end ? (size_t)(end - host) : strlen(host);
  memcpy(name, host, n);
  name[n] = '\0';
  if ((n == 9 || (n == 10 && name[9] == '.'))
      && strncasecmp(name, "localhost", 9) == 0)
    return 1;
  return inet_aton(name, &addr) != 0 && (ntohl(addr.s_addr) >> 24) == 127;
}


static void fuzz_endpoint(const fuzz_field *v, int allow_http) {
  char msg[AC_MSG_SIZE];
  ac_endpoint ep;
  ac_buf url = {0};
  const char *authority, *path;
  size_t base_len, i;
  long path_at;

  if (ac_parse_endpoint(v->data, v->len, allow_http, &ep, msg) != 0) {
    check_message(msg);
    FUZZ_CHECK(ep.base == NULL && ep.host == NULL, "nothing is kept");
    return;
  }

  base_len = strlen(ep.base);
  FUZZ_CHECK(strncasecmp(ep.base, "https://", 8) == 0
             || strncasecmp(ep.base, "http://", 7) == 0,
             "the base starts with http:// or https://");
  FUZZ_CHECK(ep.https == (strncasecmp(ep.base, "https://", 8) == 0),
             "https matches the scheme");
  FUZZ_CHECK(ep.host[0] != '\0', "the host is not empty");
  FUZZ_CHECK(strchr(ep.host, '@') == NULL && strchr(ep.host, '/') == NULL,
             "the host has no user info and no path");
  for (i = 0; i < base_len; i++)
    FUZZ_CHECK(ep.base[i] > ' ' && ep.base[i] < 0x7F && ep.base[i] != '?'
               && ep.base[i] != '#', "the base is printable, no query");
  FUZZ_CHECK(ep.base[base_len - 1] != '/', "trailing slashes are dropped");
  authority = strstr(ep.base, "://") + 3;
  FUZZ_CHECK(strncmp(authority, ep.host, strlen(ep.host)) == 0,
             "the host follows the scheme");
  if (!ep.https && !allow_http)
    FUZZ_CHECK(ep.loopback, "plain http only to loopback");
  if (ep.loopback)
    FUZZ_CHECK(names_loopback(ep.host),
               "a loopback host is 127.0.0.0/8, localhost or [::1]");
  path = strchr(authority, '/');
  for (; path != NULL && *path != '\0'; path++)
    FUZZ_CHECK(strchr("\"<>\\^`{|}[]", *path) == NULL
               && (*path != '%' || (isxdigit((unsigned char)path[1])
                                    && isxdigit((unsigned char)path[2]))),
               "the path is sent and signed as written");

  path_at = ac_build_url(&url, &ep, PROJECT);
  FUZZ_CHECK(path_at >= 0 && (size_t)path_at <= base_len,
             "the path starts inside the base");
  FUZZ_CHECK(strncmp(url.data, ep.base, base_len) == 0
             && strcmp(url.data + base_len, "/v1/" PROJECT AC_ROUTE) == 0,
             "the URL is base, /v1/, project id and route");
  ac_buf_free(&url);
  ac_endpoint_free(&ep);
}


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_field v;

  if (size < 1)
    return 0;
  v.len = size - 1;
  v.data = malloc(v.len + 1);
  FUZZ_CHECK(v.data != NULL, "malloc");
  if (v.len > 0)
    memcpy(v.data, data + 1, v.len);
  v.data[v.len] = '\0';

  switch (data[0] % 5) {
  case 0: fuzz_file_name(&v); break;
  case 1: fuzz_project_id(&v); break;
  case 2: fuzz_header_value(&v); break;
  default: fuzz_endpoint(&v, data[0] % 5 == 4); break;
  }
  free(v.data);
  return 0;
}
