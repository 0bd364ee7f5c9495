/*
 * SDK-HMAC-SHA256 signing with OpenSSL libcrypto.
 *
 * Caveats: each header name may appear once; query parameters are split
 * on '&' and '=' only (';' is not a separator) and '+' stays a plus sign.
 */
#include "sign.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <pthread.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

/* A header list longer than this is a caller bug, not a request. */
#define AC_MAX_SIGNED_HEADERS 64

/* SHA-256 hashes its input in blocks of 64 bytes (FIPS 180-4). OpenSSL's
 * SHA256_CBLOCK is left out of builds without the deprecated API. */
#define AC_SHA256_BLOCK_SIZE 64

static const char hex_lower[] = "0123456789abcdef";
static const char hex_upper[] = "0123456789ABCDEF";


/* ---------------------------------------------------------------------
 * Algorithms
 * ------------------------------------------------------------------- */

/* SHA-256 is fetched once per process: OpenSSL 3 looks an algorithm up on
 * every call to SHA256() or EVP_sha256(), which cost more than the hashing
 * itself for these short inputs (measured with callgrind). pthread_once
 * makes the fetch safe when Lua states on several threads sign at the
 * same time. */
static pthread_once_t digest_once = PTHREAD_ONCE_INIT;
static EVP_MD *sha256_md;

static void fetch_digest(void) {
  sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}


/* Frees the digest when the module is unloaded: Lua unloads C modules
 * with dlclose when a state closes, and a later load fetches anew.
 * Contexts still alive keep their own references. */
#if defined(__GNUC__)
__attribute__((destructor))
#endif
static void free_digest(void) {
  EVP_MD_free(sha256_md);
  sha256_md = NULL;
}


static const EVP_MD *sha256(void) {
  pthread_once(&digest_once, fetch_digest);
  return sha256_md != NULL ? sha256_md : EVP_sha256();
}


/* Two SHA-256 contexts for a series of digests. Each digest starts with a
 * copy of initial, which EVP_DigestInit_ex2 set up once, because on every
 * call that function frees and reallocates the provider context and checks
 * for an ENGINE (OpenSSL 3.0 crypto/evp/digest.c). perf showed that path
 * as the costliest part of hashing a short request body. */
typedef struct sha256_hasher {
  EVP_MD_CTX *initial;
  EVP_MD_CTX *work;
} sha256_hasher;


/* Returns 0, or -1 when memory runs out or libcrypto fails; h must be
 * freed with hasher_free either way. */
static int hasher_init(sha256_hasher *h) {
  h->initial = EVP_MD_CTX_new();
  h->work = EVP_MD_CTX_new();
  if (h->initial == NULL || h->work == NULL
      || !EVP_DigestInit_ex2(h->initial, sha256(), NULL))
    return -1;
  return 0;
}


static void hasher_free(sha256_hasher *h) {
  EVP_MD_CTX_free(h->initial);
  EVP_MD_CTX_free(h->work);
  h->initial = h->work = NULL;
}


/* Writes into out the SHA-256 of data, continued from the state start:
 * h->initial, or a context that has already hashed some leading bytes.
 * Returns 0, or -1 when libcrypto fails. */
static int hasher_digest(sha256_hasher *h, const EVP_MD_CTX *start,
                         const char *data, size_t len,
                         unsigned char out[SHA256_DIGEST_LENGTH]) {
  if (!EVP_MD_CTX_copy_ex(h->work, start)
      || !EVP_DigestUpdate(h->work, data ? data : "", len)
      || !EVP_DigestFinal_ex(h->work, out, NULL))
    return -1;
  return 0;
}


/* ---------------------------------------------------------------------
 * Encoding helpers
 * ------------------------------------------------------------------- */

static void add_hex(ac_buf *b, const unsigned char *d, size_t n) {
  size_t i;
  char *out;

  if (ac_buf_reserve(b, n * 2) != 0)
    return;
  out = b->data + b->len;
  for (i = 0; i < n; i++) {
    *out++ = hex_lower[d[i] >> 4];
    *out++ = hex_lower[d[i] & 0xF];
  }
  b->len += n * 2;
  b->data[b->len] = '\0';
}


static int is_unreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')
      || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_'
      || c == '~';
}


/* Appends s percent-encoded: unreserved bytes as is, others as %XX. The
 * room is reserved once and the bytes written directly, because this
 * runs for every byte of every signed request. */
static void add_encoded(ac_buf *b, const char *s, size_t n) {
  size_t i;
  char *out;

  if (ac_buf_reserve(b, n * 3) != 0)
    return;
  out = b->data + b->len;
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (is_unreserved(c)) {
      *out++ = (char)c;
    } else {
      *out++ = '%';
      *out++ = hex_upper[c >> 4];
      *out++ = hex_upper[c & 0xF];
    }
  }
  b->len = (size_t)(out - b->data);
  b->data[b->len] = '\0';
}


static int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}


/* Appends s with %XX sequences decoded; malformed ones stay as they are. */
static void add_decoded(ac_buf *b, const char *s, size_t n) {
  size_t i;
  char *out;

  if (ac_buf_reserve(b, n) != 0)
    return;
  out = b->data + b->len;
  for (i = 0; i < n; i++) {
    int hi, lo;
    if (s[i] == '%' && i + 2 < n
        && (hi = hex_value(s[i + 1])) >= 0
        && (lo = hex_value(s[i + 2])) >= 0) {
      *out++ = (char)(hi * 16 + lo);
      i += 2;
    } else {
      *out++ = s[i];
    }
  }
  b->len = (size_t)(out - b->data);
  b->data[b->len] = '\0';
}


/* ---------------------------------------------------------------------
 * Canonical request parts
 * ------------------------------------------------------------------- */

/* Decodes the path, encodes each segment and makes sure of a final '/'.
 * Decoding and encoding share one pass: encoding goes byte by byte, so
 * encoding every decoded byte but '/' gives the same segments as
 * splitting the decoded path first. A %2F thus separates segments too. */
static void add_canonical_uri(ac_buf *b, const char *path, size_t n) {
  size_t i;
  char *out;

  /* Each byte of the path gives at most three, and one '/' may follow. */
  if (ac_buf_reserve(b, n * 3 + 1) != 0)
    return;
  out = b->data + b->len;
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)path[i];
    int hi, lo;

    /* Malformed %XX sequences stay as they are, as in add_decoded. */
    if (c == '%' && i + 2 < n
        && (hi = hex_value(path[i + 1])) >= 0
        && (lo = hex_value(path[i + 2])) >= 0) {
      c = (unsigned char)(hi * 16 + lo);
      i += 2;
    }
    if (c == '/' || is_unreserved(c)) {
      *out++ = (char)c;
    } else {
      *out++ = '%';
      *out++ = hex_upper[c >> 4];
      *out++ = hex_upper[c & 0xF];
    }
  }
  b->len = (size_t)(out - b->data);
  if (b->len == 0 || b->data[b->len - 1] != '/')
    b->data[b->len++] = '/';
  b->data[b->len] = '\0';
}


typedef struct param {
  char *key;
  size_t key_len;
  char *value;
  size_t value_len;
} param;


static int compare_bytes(const char *a, size_t an, const char *b,
                         size_t bn) {
  int c = memcmp(a, b, an < bn ? an : bn);
  if (c != 0)
    return c;
  return an < bn ? -1 : an > bn;
}


static int compare_params(const void *x, const void *y) {
  const param *a = x, *b = y;
  int c = compare_bytes(a->key, a->key_len, b->key, b->key_len);
  return c ? c : compare_bytes(a->value, a->value_len, b->value,
                               b->value_len);
}


/* Decodes each key and value, sorts by key then value, re-encodes. */
static int add_canonical_query(ac_buf *b, const char *q, size_t n) {
  param *params;
  ac_buf store = {0};
  size_t count = 1, used = 0, i, start = 0;

  if (n == 0)
    return 0;
  for (i = 0; i < n; i++)
    count += q[i] == '&';
  params = calloc(count, sizeof *params);
  if (params == NULL || ac_buf_reserve(&store, n * 2 + 2) != 0) {
    free(params);
    return -1;
  }

  /* Decoded keys and values are stored back to back in store, which has
   * room for all of them, so the pointers stay valid. */
  for (i = 0; i <= n; i++) {
    if (i < n && q[i] != '&')
      continue;
    if (i > start) {
      const char *eq = memchr(q + start, '=', i - start);
      size_t key_end = eq ? (size_t)(eq - q) : i;
      param *p = &params[used++];

      p->key = store.data + store.len;
      add_decoded(&store, q + start, key_end - start);
      p->key_len = (size_t)(store.data + store.len - p->key);
      p->value = store.data + store.len;
      if (eq)
        add_decoded(&store, eq + 1, i - key_end - 1);
      p->value_len = (size_t)(store.data + store.len - p->value);
    }
    start = i + 1;
  }

  if (store.failed) {
    free(params);
    ac_buf_free(&store);
    return -1;
  }
  qsort(params, used, sizeof *params, compare_params);
  for (i = 0; i < used; i++) {
    if (i > 0)
      ac_buf_addc(b, '&');
    add_encoded(b, params[i].key, params[i].key_len);
    ac_buf_addc(b, '=');
    add_encoded(b, params[i].value, params[i].value_len);
  }
  free(params);
  ac_buf_free(&store);
  return 0;
}


typedef struct lower_header {
  char name[128];
  const char *value;
  size_t value_len;
} lower_header;


static int compare_headers(const void *x, const void *y) {
  return strcmp(((const lower_header *)x)->name,
                ((const lower_header *)y)->name);
}


/* Appends "name:value\n" per header, then the signed names to names. */
static int add_canonical_headers(ac_buf *b, ac_buf *names,
                                 const ac_header *h, size_t count) {
  lower_header sorted[AC_MAX_SIGNED_HEADERS];
  size_t i, j;

  if (count > AC_MAX_SIGNED_HEADERS)
    return -1;
  for (i = 0; i < count; i++) {
    const char *v = h[i].value;
    size_t n = h[i].value_len;

    if (h[i].name_len >= sizeof sorted[i].name)
      return -1;
    for (j = 0; j < h[i].name_len; j++) {
      char c = h[i].name[j];
      sorted[i].name[j] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    sorted[i].name[j] = '\0';
    ac_trim_blanks(&v, &n);
    sorted[i].value = v;
    sorted[i].value_len = n;
  }
  qsort(sorted, count, sizeof *sorted, compare_headers);

  for (i = 0; i < count; i++) {
    ac_buf_adds(b, sorted[i].name);
    ac_buf_addc(b, ':');
    ac_buf_add(b, sorted[i].value, sorted[i].value_len);
    ac_buf_addc(b, '\n');
    if (i > 0)
      ac_buf_addc(names, ';');
    ac_buf_adds(names, sorted[i].name);
  }
  return 0;
}


/* ---------------------------------------------------------------------
 * Signing
 * ------------------------------------------------------------------- */

/* Writes value as width decimal digits, with leading zeros. */
static void put_digits(char *out, unsigned long value, int width) {
  while (width-- > 0) {
    out[width] = (char)('0' + value % 10);
    value /= 10;
  }
}


/* Formats the date by arithmetic, because gmtime_r and strftime took about
 * 1 % of the AK/SK benchmark client's CPU time (perf): gmtime_r runs
 * glibc's time zone conversion and strftime parses its format on every
 * call. The date comes from civil_from_days in Howard Hinnant's
 * "chrono-Compatible Low-Level Date Algorithms", for days since 1970-01-01
 * in the proleptic Gregorian calendar that gmtime_r uses too
 * (https://howardhinnant.github.io/date_algorithms.html). The fuzz target
 * fuzz/fuzz_sign.c compares the result with gmtime_r and strftime. */
void ac_sdk_date(time_t t, char out[AC_SDK_DATE_SIZE]) {
  unsigned long seconds, days, era, day_of_era, year_of_era, day_of_year;
  unsigned long month_index, year, month, day;

  out[0] = '\0';
  if (t < 0 || (double)t > AC_SDK_DATE_MAX)
    return;
  /* Divided as time_t, because t may not fit in a 32-bit long. */
  seconds = (unsigned long)(t % 86400);
  /* Days since 0000-03-01, so that a leap day ends its year and each
   * 400-year era has 146097 days. */
  days = (unsigned long)(t / 86400) + 719468;
  era = days / 146097;
  day_of_era = days - era * 146097;
  year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36524
                 - day_of_era / 146096) / 365;
  day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4
                              - year_of_era / 100);
  month_index = (5 * day_of_year + 2) / 153;  /* 0 is March */
  day = day_of_year - (153 * month_index + 2) / 5 + 1;
  month = month_index < 10 ? month_index + 3 : month_index - 9;
  year = era * 400 + year_of_era + (month <= 2);

  put_digits(out, year, 4);
  put_digits(out + 4, month, 2);
  put_digits(out + 6, day, 2);
  out[8] = 'T';
  put_digits(out + 9, seconds / 3600, 2);
  put_digits(out + 11, seconds / 60 % 60, 2);
  put_digits(out + 13, seconds % 60, 2);
  out[15] = 'Z';
  out[16] = '\0';
}


/* Finds an X-Sdk-Content-Sha256 header, whose value the official SDKs sign
 * in place of the body hash (UNSIGNED-PAYLOAD for bodies that are not
 * JSON). The name matches in any case, and the value is trimmed like every
 * header value. Returns 1 and sets value and len when the header exists. */
static int find_content_sha256(const ac_sign_input *in, const char **value,
                               size_t *len) {
  static const char name[] = "x-sdk-content-sha256";
  size_t i;

  for (i = 0; i < in->header_count; i++) {
    const ac_header *h = &in->headers[i];
    const char *v = h->value;
    size_t n = h->value_len;

    if (h->name_len != sizeof name - 1
        || strncasecmp(h->name, name, sizeof name - 1) != 0)
      continue;
    ac_trim_blanks(&v, &n);
    *value = v;
    *len = n;
    return 1;
  }
  return 0;
}


/* Builds the canonical request into out and the signed header list into
 * names. h hashes the body. */
static int build_canonical(const ac_sign_input *in, sha256_hasher *h,
                           ac_buf *out, ac_buf *names) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  const char *m, *payload_hash;
  size_t payload_hash_len;

  ac_buf_reset(out);
  ac_buf_reset(names);
  for (m = in->method; *m; m++)
    ac_buf_addc(out, (*m >= 'a' && *m <= 'z') ? (char)(*m - 32) : *m);
  ac_buf_addc(out, '\n');
  add_canonical_uri(out, in->path, in->path_len);
  ac_buf_addc(out, '\n');
  if (add_canonical_query(out, in->query, in->query_len) != 0)
    return -1;
  ac_buf_addc(out, '\n');
  if (add_canonical_headers(out, names, in->headers,
                            in->header_count) != 0)
    return -1;
  ac_buf_addc(out, '\n');
  ac_buf_add(out, names->data ? names->data : "", names->len);
  ac_buf_addc(out, '\n');

  if (find_content_sha256(in, &payload_hash, &payload_hash_len)) {
    ac_buf_add(out, payload_hash, payload_hash_len);
  } else {
    if (hasher_digest(h, h->initial, in->body, in->body_len, digest) != 0)
      return -1;
    add_hex(out, digest, sizeof digest);
  }
  return out->failed || names->failed ? -1 : 0;
}


int ac_canonical_request(const ac_sign_input *in, ac_buf *out) {
  sha256_hasher h = {0};
  ac_buf names = {0};
  int rc = hasher_init(&h) == 0 ? build_canonical(in, &h, out, &names) : -1;

  hasher_free(&h);
  ac_buf_free(&names);
  return rc;
}


struct ac_signer {
  EVP_MD_CTX *inner;   /* HMAC: SHA-256 after the key XOR ipad block */
  EVP_MD_CTX *outer;   /* HMAC: SHA-256 after the key XOR opad block */
  sha256_hasher hasher;/* hashes the body and the canonical request */
  ac_buf canonical;    /* may contain a security token header */
  ac_buf previous;     /* the canonical request signed before, which may
                        * contain a security token header too */
  EVP_MD_CTX *prefix;  /* the SHA-256 state after prefix_len bytes of
                        * previous; used only when prefix_len > 0 */
  size_t prefix_len;   /* a multiple of the SHA-256 block size */
  ac_buf names;        /* the signed header list */
  ac_buf to_sign;      /* the string to sign */
};


/* Starts the HMAC-SHA256 of RFC 2104 for the key sk: s->inner and
 * s->outer get the SHA-256 states after the padded key XOR 0x36 and XOR
 * 0x5c, so that each MAC continues from copies of them. Returns 0, or -1
 * when libcrypto fails.
 * NOTE: an OpenSSL FIPS provider gets only SHA-256 digest calls here, not
 * an HMAC operation, so it cannot approve the HMAC as such. */
static int set_hmac_key(ac_signer *s, const char *sk, size_t sk_len) {
  unsigned char key[AC_SHA256_BLOCK_SIZE], pad[AC_SHA256_BLOCK_SIZE];
  size_t i;
  int rc = -1;

  /* A key longer than a block is replaced by its digest, and every key
   * is padded with zeros to a block. */
  memset(key, 0, sizeof key);
  if (sk_len > sizeof key) {
    if (hasher_digest(&s->hasher, s->hasher.initial, sk, sk_len, key) != 0)
      goto done;
  } else if (sk_len > 0) {
    memcpy(key, sk, sk_len);
  }

  for (i = 0; i < sizeof pad; i++)
    pad[i] = key[i] ^ 0x36;
  if (!EVP_MD_CTX_copy_ex(s->inner, s->hasher.initial)
      || !EVP_DigestUpdate(s->inner, pad, sizeof pad))
    goto done;
  for (i = 0; i < sizeof pad; i++)
    pad[i] = key[i] ^ 0x5c;
  if (!EVP_MD_CTX_copy_ex(s->outer, s->hasher.initial)
      || !EVP_DigestUpdate(s->outer, pad, sizeof pad))
    goto done;
  rc = 0;

done:
  OPENSSL_cleanse(key, sizeof key);
  OPENSSL_cleanse(pad, sizeof pad);
  return rc;
}


ac_signer *ac_signer_new(const char *sk, size_t sk_len) {
  ac_signer *s = calloc(1, sizeof *s);

  if (s == NULL)
    return NULL;
  s->inner = EVP_MD_CTX_new();
  s->outer = EVP_MD_CTX_new();
  s->prefix = EVP_MD_CTX_new();
  if (s->inner == NULL || s->outer == NULL || s->prefix == NULL
      || hasher_init(&s->hasher) != 0 || set_hmac_key(s, sk, sk_len) != 0) {
    ac_signer_free(s);
    return NULL;
  }
  return s;
}


void ac_signer_free(ac_signer *s) {
  if (s == NULL)
    return;
  /* OpenSSL 3's default provider clears the digest states, which derive
   * from the key, as it frees them (digestcommon.h). */
  EVP_MD_CTX_free(s->inner);
  EVP_MD_CTX_free(s->outer);
  hasher_free(&s->hasher);
  EVP_MD_CTX_free(s->prefix);
  ac_buf_clear_free(&s->canonical);
  ac_buf_clear_free(&s->previous);
  ac_buf_free(&s->names);
  ac_buf_free(&s->to_sign);
  free(s);
}


/* Writes the SHA-256 of s->canonical into out, then keeps the request in
 * s->previous. Requests of one client differ first at X-Sdk-Date, so the
 * SHA-256 blocks before it are the same every time. The state after them
 * is kept in s->prefix and reused while the request starts with the same
 * bytes, which a comparison with the previous request checks. Returns 0,
 * or -1 when libcrypto fails. */
static int hash_canonical(ac_signer *s,
                          unsigned char out[SHA256_DIGEST_LENGTH]) {
  const ac_buf *now = &s->canonical, *before = &s->previous;
  size_t same = 0;
  ac_buf swap;
  int rc;

  while (same + AC_SHA256_BLOCK_SIZE <= now->len
         && same + AC_SHA256_BLOCK_SIZE <= before->len
         && memcmp(now->data + same, before->data + same,
                   AC_SHA256_BLOCK_SIZE) == 0)
    same += AC_SHA256_BLOCK_SIZE;

  /* The kept state is reused while the request still starts with its
   * bytes. Otherwise, as on a signer's first requests or after a change
   * before X-Sdk-Date, it is built again from the blocks that this request
   * shares with the previous one. */
  if (s->prefix_len == 0 || same < s->prefix_len) {
    s->prefix_len = 0;
    if (same > 0) {
      if (!EVP_MD_CTX_copy_ex(s->prefix, s->hasher.initial)
          || !EVP_DigestUpdate(s->prefix, now->data, same))
        return -1;
      s->prefix_len = same;
    }
  }
  rc = hasher_digest(&s->hasher,
                     s->prefix_len > 0 ? s->prefix : s->hasher.initial,
                     now->data + s->prefix_len, now->len - s->prefix_len,
                     out);

  swap = s->previous;
  s->previous = s->canonical;
  s->canonical = swap;
  return rc;
}


int ac_signer_sign(ac_signer *s, const ac_sign_input *in, ac_buf *out) {
  unsigned char digest[SHA256_DIGEST_LENGTH], mac[SHA256_DIGEST_LENGTH];
  ac_buf *to_sign = &s->to_sign;

  if (build_canonical(in, &s->hasher, &s->canonical, &s->names) != 0
      || hash_canonical(s, digest) != 0)
    return -1;

  ac_buf_reset(to_sign);
  ac_buf_adds(to_sign, AC_SIGN_ALGORITHM "\n");
  ac_buf_adds(to_sign, in->sdk_date);
  ac_buf_addc(to_sign, '\n');
  add_hex(to_sign, digest, sizeof digest);

  /* The MAC continues the inner state with to_sign, then the outer state
   * with that digest. It runs through the digest code that just hashed
   * the canonical request, not through EVP_MAC. In six paired runs of
   * bench/run.py (256-byte token, 15 rounds each), EVP_MAC added 2 to 6 %
   * of a token request's CPU time to each AK/SK request. */
  if (to_sign->failed
      || hasher_digest(&s->hasher, s->inner, to_sign->data, to_sign->len,
                       digest) != 0
      || hasher_digest(&s->hasher, s->outer, (const char *)digest,
                       sizeof digest, mac) != 0)
    return -1;

  ac_buf_reset(out);
  ac_buf_adds(out, AC_SIGN_ALGORITHM " Access=");
  ac_buf_adds(out, in->ak);
  ac_buf_adds(out, ", SignedHeaders=");
  ac_buf_add(out, s->names.data, s->names.len);
  ac_buf_adds(out, ", Signature=");
  add_hex(out, mac, sizeof mac);
  return out->failed ? -1 : 0;
}


int ac_sign(const ac_sign_input *in, ac_buf *out) {
  ac_signer *s = ac_signer_new(in->sk, in->sk_len);
  int rc = s != NULL ? ac_signer_sign(s, in, out) : -1;

  ac_signer_free(s);
  return rc;
}
