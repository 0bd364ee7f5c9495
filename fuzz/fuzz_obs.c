/*
 * libFuzzer target: OBS error parsing and the OBS URL and signature
 * builders (src/obs.c).
 *
 * Input: a selector byte, then
 *   even: an OBS XML error body for ac_obs_parse_error, whose fields must
 *     match a reference extraction written here and hold no control
 *     characters;
 *   odd: eight bytes of time, then fields separated by 0x1F:
 *     server_end_point, bucket, key, content_type, content_md5, access,
 *     secret, security_token (bit 1 of the selector: path style, bit 2:
 *     https). A target that ac_obs_check_target accepts must give a URL
 *     of printable ASCII without spaces whose key decodes back, the
 *     documented string to sign, and an Authorization value whose
 *     signature is the HMAC-SHA1 computed here with libcrypto.
 */
#include "fuzz.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "../src/obs.h"
#include "../src/request.h"


int LLVMFuzzerInitialize(int *argc, char ***argv) {
  ac_obs_error e;

  (void)argc;
  (void)argv;
  /* An error response without a body leaves the body buffer NULL. */
  memset(&e, 0, sizeof e);
  FUZZ_CHECK(ac_obs_parse_error(NULL, 0, &e) == 0 && e.code[0] == '\0',
             "an empty body has no Code");
  return 0;
}


/* ---------------------------------------------------------------------
 * XML error body
 * ------------------------------------------------------------------- */

static const char *find(const char *s, size_t len, const char *property) {
  size_t n = strlen(property), i;

  for (i = 0; i + n <= len; i++)
    if (memcmp(s + i, property, n) == 0)
      return s + i;
  return NULL;
}


/* The text of the first <name>, up to the next </name> or the end of the
 * body, with the five predefined entities decoded, control characters
 * as spaces, cut at AC_OBS_FIELD_SIZE - 1 bytes. */
static int reference_element(const char *body, size_t len, const char *name,
                             char *out) {
  static const char *const entities[][2] = {
    {"&lt;", "<"}, {"&gt;", ">"}, {"&amp;", "&"}, {"&quot;", "\""},
    {"&apos;", "'"},
  };
  char open[40], close[40];
  const char *start, *end;
  size_t o = 0, i;

  snprintf(open, sizeof open, "<%s>", name);
  snprintf(close, sizeof close, "</%s>", name);
  out[0] = '\0';
  start = find(body, len, open);
  if (start == NULL)
    return 0;
  start += strlen(open);
  end = find(start, len - (size_t)(start - body), close);
  if (end == NULL)
    end = body + len;

  while (start < end && o + 1 < AC_OBS_FIELD_SIZE) {
    char c = *start++;

    for (i = 0; c == '&' && i < 5; i++) {
      size_t n = strlen(entities[i][0]);
      if ((size_t)(end - start + 1) >= n
          && memcmp(start - 1, entities[i][0], n) == 0) {
        c = entities[i][1][0];
        start += n - 1;
        break;
      }
    }
    out[o++] = ((unsigned char)c < 0x20 || c == 0x7F) ? ' ' : c;
  }
  out[o] = '\0';
  return 1;
}


static void check_field(const char *got, const char *expected,
                        const char *property) {
  const char *end = memchr(got, '\0', AC_OBS_FIELD_SIZE);

  FUZZ_CHECK(end != NULL, "the field is NUL-terminated");
  FUZZ_CHECK(strcmp(got, expected) == 0, property);
}


static void fuzz_error_body(const uint8_t *data, size_t size) {
  ac_obs_error e;
  char code[AC_OBS_FIELD_SIZE], message[AC_OBS_FIELD_SIZE];
  char request_id[AC_OBS_FIELD_SIZE];
  char *body = malloc(size ? size : 1);
  int found;

  FUZZ_CHECK(body != NULL, "malloc");
  if (size > 0)
    memcpy(body, data, size);
  memset(&e, 0x55, sizeof e);
  found = ac_obs_parse_error(body, size, &e);
  FUZZ_CHECK(found == reference_element(body, size, "Code", code),
             "a Code is found exactly when <Code> is present");
  reference_element(body, size, "Message", message);
  reference_element(body, size, "RequestId", request_id);
  check_field(e.code, code, "Code matches the reference");
  check_field(e.message, message, "Message matches the reference");
  check_field(e.request_id, request_id, "RequestId matches the reference");
  free(body);
}


/* ---------------------------------------------------------------------
 * URL and signature
 * ------------------------------------------------------------------- */

static int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}


/* Checks that the encoded key at s decodes to key. */
static void check_encoded_key(const char *s, const char *key) {
  size_t k = 0;

  while (*s) {
    char c = *s;

    if (c == '%') {
      FUZZ_CHECK(hex_value(s[1]) >= 0 && hex_value(s[2]) >= 0,
                 "an escape in the key has two upper-case hex digits");
      c = (char)(hex_value(s[1]) * 16 + hex_value(s[2]));
      s += 3;
    } else {
      FUZZ_CHECK(strchr("-._~/", c) != NULL
                 || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')
                 || (c >= '0' && c <= '9'),
                 "only unreserved characters and / stay as they are");
      s++;
    }
    FUZZ_CHECK(key[k] == c, "the encoded key decodes to the key");
    k++;
  }
  FUZZ_CHECK(key[k] == '\0', "the whole key is encoded");
}


static void check_url(const ac_obs_request *r, const ac_buf *url) {
  ac_buf prefix = {0};
  size_t i;

  for (i = 0; i < url->len; i++)
    FUZZ_CHECK(url->data[i] > ' ' && url->data[i] < 0x7F,
               "the URL is printable ASCII without spaces");
  ac_buf_adds(&prefix, r->scheme);
  ac_buf_adds(&prefix, "://");
  if (r->path_style) {
    ac_buf_adds(&prefix, r->server_end_point);
    ac_buf_adds(&prefix, "/");
    ac_buf_adds(&prefix, r->bucket);
  } else {
    ac_buf_adds(&prefix, r->bucket);
    ac_buf_adds(&prefix, ".");
    ac_buf_adds(&prefix, r->server_end_point);
  }
  ac_buf_adds(&prefix, "/");
  FUZZ_CHECK(!prefix.failed && url->len >= prefix.len
             && memcmp(url->data, prefix.data, prefix.len) == 0,
             "the URL starts with scheme, host and bucket");
  check_encoded_key(url->data + prefix.len, r->key);
  ac_buf_free(&prefix);
}


/* Appends s without the spaces and tabs around it, the value that a
 * server reads from a header; returns its length. */
static size_t add_stripped(ac_buf *b, const char *s) {
  size_t n = strlen(s);

  while (n > 0 && (*s == ' ' || *s == '\t')) {
    s++;
    n--;
  }
  while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
    n--;
  ac_buf_add(b, s, n);
  return n;
}


static void check_signature(const ac_obs_request *r) {
  ac_buf to_sign = {0}, auth = {0}, expected = {0}, token = {0};
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned char encoded[4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1];
  unsigned int mac_len = 0;
  size_t n;

  FUZZ_CHECK(ac_obs_string_to_sign(r, &to_sign) == 0, "string to sign");
  ac_buf_adds(&expected, "PUT\n");
  ac_buf_adds(&expected, r->content_md5);
  ac_buf_adds(&expected, "\n");
  add_stripped(&expected, r->content_type);
  ac_buf_adds(&expected, "\n\nx-obs-date:");
  ac_buf_adds(&expected, r->date);
  ac_buf_adds(&expected, "\n");
  /* A blank token is not sent, so its line is left out. */
  if (add_stripped(&token, r->security_token) > 0) {
    ac_buf_adds(&expected, "x-obs-security-token:");
    ac_buf_add(&expected, token.data, token.len);
    ac_buf_adds(&expected, "\n");
  }
  ac_buf_adds(&expected, "/");
  ac_buf_adds(&expected, r->bucket);
  ac_buf_adds(&expected, "/");
  n = expected.len;
  FUZZ_CHECK(to_sign.len >= n && memcmp(to_sign.data, expected.data, n) == 0,
             "the string to sign has the documented lines");
  check_encoded_key(to_sign.data + n, r->key);

  FUZZ_CHECK(HMAC(EVP_sha1(), r->secret, (int)strlen(r->secret),
                  (const unsigned char *)to_sign.data, to_sign.len, mac,
                  &mac_len) != NULL, "HMAC");
  EVP_EncodeBlock(encoded, mac, (int)mac_len);
  ac_buf_reset(&expected);
  ac_buf_adds(&expected, "OBS ");
  ac_buf_adds(&expected, r->access);
  ac_buf_adds(&expected, ":");
  ac_buf_adds(&expected, (const char *)encoded);
  FUZZ_CHECK(ac_obs_authorization(r, &auth) == 0, "authorization");
  FUZZ_CHECK(auth.len == expected.len
             && memcmp(auth.data, expected.data, auth.len) == 0,
             "the Authorization value is OBS access:base64(HMAC-SHA1)");

  ac_buf_free(&to_sign);
  ac_buf_free(&auth);
  ac_buf_free(&expected);
  ac_buf_free(&token);
}


static void check_http_date(const char *date) {
  static const char shape[] = "Aaa, dd Aaa dddd dd:dd:dd GMT";
  size_t i;

  FUZZ_CHECK(strlen(date) == sizeof shape - 1, "HTTP date length");
  for (i = 0; i < sizeof shape - 1; i++) {
    char s = shape[i], c = date[i];

    if (s == 'd')
      FUZZ_CHECK(c >= '0' && c <= '9', "HTTP date digits");
    else if (s == 'A')
      FUZZ_CHECK(c >= 'A' && c <= 'Z', "HTTP date names");
    else if (s == 'a')
      FUZZ_CHECK(c >= 'a' && c <= 'z', "HTTP date names");
    else
      FUZZ_CHECK(c == s, "HTTP date punctuation");
  }
}


static void fuzz_target(uint8_t selector, const uint8_t *data, size_t size) {
  fuzz_field f[9];
  ac_obs_request r;
  ac_buf url = {0};
  char date[AC_HTTP_DATE_SIZE], msg[AC_MSG_SIZE];
  uint64_t seconds = 0;
  size_t n, i;
  const char *type;

  if (size < 8)
    return;
  for (i = 0; i < 8; i++)
    seconds = (seconds << 8) | data[i];
  /* Years 1970 to 9999, the range ac_http_date prints with four digits. */
  ac_http_date((time_t)(seconds % 253402300800ULL), date);
  check_http_date(date);

  n = fuzz_split(data + 8, size - 8, f, 9);
  memset(&r, 0, sizeof r);
  r.scheme = (selector & 4) ? "https" : "http";
  r.path_style = (selector & 2) != 0;
  r.server_end_point = fuzz_get(f, n, 0).data;
  r.bucket = fuzz_get(f, n, 1).data;
  r.key = fuzz_get(f, n, 2).data;
  r.content_type = fuzz_get(f, n, 3).data;
  r.content_md5 = fuzz_get(f, n, 4).data;
  r.access = fuzz_get(f, n, 5).data;
  r.secret = fuzz_get(f, n, 6).data;
  r.security_token = fuzz_get(f, n, 7).data;
  r.date = date;

  type = ac_obs_content_type(r.content_type, r.key);
  FUZZ_CHECK(type != NULL && strchr(type, '/') != NULL,
             "the content type is a media type");

  if (ac_obs_check_target(r.server_end_point, r.bucket, r.key, r.path_style,
                          msg) != 0) {
    FUZZ_CHECK(memchr(msg, '\0', AC_MSG_SIZE) != NULL,
               "the message is NUL-terminated");
    FUZZ_CHECK(strchr(msg, '\n') == NULL && strchr(msg, '\r') == NULL,
               "the message is one line");
  } else {
    FUZZ_CHECK(ac_obs_url(&r, &url) == 0, "the URL builds");
    check_url(&r, &url);
    check_signature(&r);
    ac_buf_free(&url);
  }
  fuzz_free_fields(f, n);
}


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  if (data[0] % 2 == 0)
    fuzz_error_body(data + 1, size - 1);
  else
    fuzz_target(data[0], data + 1, size - 1);
  return 0;
}
