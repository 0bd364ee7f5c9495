/*
 * libFuzzer target: the SDK-HMAC-SHA256 canonical request and signer
 * (src/sign.c).
 *
 * Input: a method selector byte, eight bytes of time for X-Sdk-Date, then
 * fields separated by 0x1F: path, query, body, ak, sk, and pairs of
 * header name and value.
 *
 * Checks:
 * - X-Sdk-Date is the time that gmtime_r and strftime give.
 * - Signing fails only for more than 64 headers or a header name of 128
 *   bytes or more.
 * - The canonical URI and query use only unreserved characters and
 *   upper-case %XX escapes, and canonicalising them again changes nothing.
 * - The payload hash is the SHA-256 of the body.
 * - The Authorization value has the documented form. Its signature is the
 *   HMAC-SHA256, computed here with libcrypto, of the string to sign built
 *   from ac_canonical_request's output.
 * - Signing twice gives the same value, and so does a signer reused
 *   after it signed a different request.
 */
#include "fuzz.h"

#include <strings.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include "../src/sign.h"

#define FUZZ_MAX_HEADERS 72

static const char *const methods[] = {
  "POST", "GET", "put", "DELETE", "PATCH", "HEAD", "options", ""
};


int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return 0;
}


static void to_hex(const unsigned char *d, size_t n, char *out) {
  static const char hex[] = "0123456789abcdef";
  size_t i;

  for (i = 0; i < n; i++) {
    out[2 * i] = hex[d[i] >> 4];
    out[2 * i + 1] = hex[d[i] & 0xF];
  }
  out[2 * n] = '\0';
}


static void check_sdk_date(time_t t, const char *date) {
  static const char shape[] = "dddddddd" "T" "dddddd" "Z";
  char expected[AC_SDK_DATE_SIZE];
  struct tm tm;
  size_t i;

  FUZZ_CHECK(strlen(date) == AC_SDK_DATE_SIZE - 1, "X-Sdk-Date length");
  for (i = 0; i < AC_SDK_DATE_SIZE - 1; i++) {
    if (shape[i] == 'd')
      FUZZ_CHECK(date[i] >= '0' && date[i] <= '9', "X-Sdk-Date digits");
    else
      FUZZ_CHECK(date[i] == shape[i], "X-Sdk-Date T and Z");
  }
  FUZZ_CHECK(gmtime_r(&t, &tm) != NULL
             && strftime(expected, sizeof expected, "%Y%m%dT%H%M%SZ", &tm)
                == AC_SDK_DATE_SIZE - 1
             && strcmp(date, expected) == 0,
             "X-Sdk-Date is the time that gmtime_r gives");
}


static int is_unreserved(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')
      || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_'
      || c == '~';
}


/* Checks that s[0..n) holds only unreserved characters, upper-case %XX
 * escapes and the characters in extra. */
static void check_encoded(const char *s, size_t n, const char *extra,
                          const char *property) {
  size_t i;

  for (i = 0; i < n; i++) {
    if (s[i] == '%') {
      FUZZ_CHECK(i + 2 < n && s[i + 1] != '\0' && s[i + 2] != '\0'
                 && strchr("0123456789ABCDEF", s[i + 1]) != NULL
                 && strchr("0123456789ABCDEF", s[i + 2]) != NULL, property);
      i += 2;
    } else {
      FUZZ_CHECK(is_unreserved(s[i]) || (s[i] && strchr(extra, s[i])),
                 property);
    }
  }
}


/* Finds line number `line` (0-based) of the canonical request. */
static const char *line_at(const ac_buf *b, int line, size_t *len) {
  const char *p = b->data, *end = b->data + b->len, *nl;

  for (; line > 0; line--) {
    nl = memchr(p, '\n', (size_t)(end - p));
    FUZZ_CHECK(nl != NULL, "the canonical request has its lines");
    p = nl + 1;
  }
  nl = memchr(p, '\n', (size_t)(end - p));
  FUZZ_CHECK(nl != NULL, "the canonical request has its lines");
  *len = (size_t)(nl - p);
  return p;
}


/* Canonicalises the canonical URI and query again and compares. */
static void check_idempotent(const ac_sign_input *in, const ac_buf *canon) {
  ac_sign_input again = *in;
  ac_buf second = {0};
  const char *uri, *query, *uri2, *query2;
  size_t uri_len, query_len, uri2_len, query2_len;

  uri = line_at(canon, 1, &uri_len);
  query = line_at(canon, 2, &query_len);
  again.path = uri;
  again.path_len = uri_len;
  again.query = query;
  again.query_len = query_len;
  again.header_count = 0;
  FUZZ_CHECK(ac_canonical_request(&again, &second) == 0,
             "the canonical URI and query canonicalise again");
  uri2 = line_at(&second, 1, &uri2_len);
  query2 = line_at(&second, 2, &query2_len);
  FUZZ_CHECK(uri_len == uri2_len && memcmp(uri, uri2, uri_len) == 0,
             "the canonical URI is a fixed point");
  FUZZ_CHECK(query_len == query2_len
             && memcmp(query, query2, query_len) == 0,
             "the canonical query is a fixed point");
  ac_buf_free(&second);
}


static int has_content_sha256(const ac_sign_input *in) {
  size_t i;

  for (i = 0; i < in->header_count; i++)
    if (in->headers[i].name_len == 20
        && strncasecmp(in->headers[i].name, "x-sdk-content-sha256", 20) == 0)
      return 1;
  return 0;
}


static void check_signature(const ac_sign_input *in, const ac_buf *canon,
                            const ac_buf *auth) {
  unsigned char digest[SHA256_DIGEST_LENGTH], mac[EVP_MAX_MD_SIZE];
  char hex[2 * SHA256_DIGEST_LENGTH + 1], to_sign[128];
  unsigned int mac_len = 0;
  const char *tail, *payload;
  size_t ak_len = strlen(in->ak), payload_len;

  SHA256((const unsigned char *)canon->data, canon->len, digest);
  to_hex(digest, sizeof digest, hex);
  snprintf(to_sign, sizeof to_sign, "SDK-HMAC-SHA256\n%s\n%s", in->sdk_date,
           hex);
  FUZZ_CHECK(HMAC(EVP_sha256(), in->sk, (int)in->sk_len,
                  (const unsigned char *)to_sign, strlen(to_sign), mac,
                  &mac_len) != NULL, "HMAC");
  to_hex(mac, mac_len, hex);

  FUZZ_CHECK(strncmp(auth->data, "SDK-HMAC-SHA256 Access=", 23) == 0
             && strncmp(auth->data + 23, in->ak, ak_len) == 0
             && strncmp(auth->data + 23 + ak_len, ", SignedHeaders=", 16)
                == 0, "the Authorization value starts as documented");
  FUZZ_CHECK(auth->len >= 23 + ak_len + 16 + 12 + 64,
             "the Authorization value is long enough");
  tail = auth->data + auth->len - 64 - 12;
  FUZZ_CHECK(strncmp(tail, ", Signature=", 12) == 0
             && strcmp(tail + 12, hex) == 0,
             "the signature is the HMAC of the string to sign");

  if (!has_content_sha256(in)) {
    payload = canon->data + canon->len - 64;
    payload_len = 64;
    SHA256((const unsigned char *)(in->body ? in->body : ""), in->body_len,
           digest);
    to_hex(digest, sizeof digest, hex);
    FUZZ_CHECK(canon->len >= payload_len && memcmp(payload, hex, 64) == 0
               && (canon->len == 64 || payload[-1] == '\n'),
               "the payload hash is the SHA-256 of the body");
  }
}


/* Signs in, a request without headers, then in again with one signer;
 * both signatures of in must equal auth. */
static void check_reused_signer(const ac_sign_input *in,
                                const ac_buf *auth) {
  ac_signer *signer = ac_signer_new(in->sk, in->sk_len);
  ac_sign_input other = *in;
  ac_buf out = {0};
  int round;

  FUZZ_CHECK(signer != NULL, "a signer can be created");
  other.header_count = 0;
  for (round = 0; round < 2; round++) {
    FUZZ_CHECK(ac_signer_sign(signer, in, &out) == 0
               && out.len == auth->len
               && memcmp(out.data, auth->data, auth->len) == 0,
               "a reused signer gives the value of ac_sign");
    FUZZ_CHECK(ac_signer_sign(signer, &other, &out) == 0,
               "a request without headers can be signed");
  }
  ac_signer_free(signer);
  ac_buf_free(&out);
}


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_field f[FUZZ_MAX_FIELDS];
  ac_header headers[FUZZ_MAX_HEADERS];
  ac_sign_input in;
  ac_buf canon = {0}, auth = {0}, auth2 = {0};
  char date[AC_SDK_DATE_SIZE];
  uint64_t seconds = 0;
  time_t when;
  size_t n, i, count = 0;
  int expect_failure = 0, rc_canon, rc_sign;
  fuzz_field ak, sk;

  if (size < 9)
    return 0;
  for (i = 1; i < 9; i++)
    seconds = (seconds << 8) | data[i];
  when = (time_t)(seconds % ((uint64_t)AC_SDK_DATE_MAX + 1));
  ac_sdk_date(when, date);
  check_sdk_date(when, date);

  n = fuzz_split(data + 9, size - 9, f, FUZZ_MAX_FIELDS);
  for (i = 5; i + 1 < n && count < FUZZ_MAX_HEADERS; i += 2) {
    headers[count].name = f[i].data;
    headers[count].name_len = f[i].len;
    headers[count].value = f[i + 1].data;
    headers[count].value_len = f[i + 1].len;
    if (f[i].len >= 128)
      expect_failure = 1;
    count++;
  }
  if (count > 64)
    expect_failure = 1;

  memset(&in, 0, sizeof in);
  in.method = methods[data[0] % (sizeof methods / sizeof methods[0])];
  in.path = fuzz_get(f, n, 0).data;
  in.path_len = fuzz_get(f, n, 0).len;
  in.query = fuzz_get(f, n, 1).data;
  in.query_len = fuzz_get(f, n, 1).len;
  in.body = fuzz_get(f, n, 2).data;
  in.body_len = fuzz_get(f, n, 2).len;
  ak = fuzz_get(f, n, 3);
  sk = fuzz_get(f, n, 4);
  in.ak = ak.data;
  in.sk = sk.data;
  in.sk_len = sk.len;
  in.headers = headers;
  in.header_count = count;
  in.sdk_date = date;

  rc_canon = ac_canonical_request(&in, &canon);
  rc_sign = ac_sign(&in, &auth);
  FUZZ_CHECK((rc_canon != 0) == expect_failure,
             "the canonical request fails only for bad header lists");
  FUZZ_CHECK((rc_sign != 0) == expect_failure,
             "signing fails only for bad header lists");

  if (!expect_failure) {
    size_t uri_len, query_len;
    const char *uri = line_at(&canon, 1, &uri_len);
    const char *query = line_at(&canon, 2, &query_len);

    FUZZ_CHECK(uri_len > 0 && uri[uri_len - 1] == '/',
               "the canonical URI ends with /");
    check_encoded(uri, uri_len, "/", "the canonical URI is encoded");
    check_encoded(query, query_len, "=&", "the canonical query is encoded");
    check_idempotent(&in, &canon);
    check_signature(&in, &canon, &auth);
    FUZZ_CHECK(ac_sign(&in, &auth2) == 0 && auth2.len == auth.len
               && memcmp(auth.data, auth2.data, auth.len) == 0,
               "signing is deterministic");
    check_reused_signer(&in, &auth);
  }

  ac_buf_free(&canon);
  ac_buf_free(&auth);
  ac_buf_free(&auth2);
  fuzz_free_fields(f, n);
  return 0;
}
