/*
 * AK/SK request signing (SDK-HMAC-SHA256), the scheme Huawei Cloud's API
 * gateway checks. A pure function of its inputs and a date string, so it
 * can be tested with fixed times. No I/O and no libcurl.
 */
#ifndef AC_SIGN_H
#define AC_SIGN_H

#include <stddef.h>
#include <time.h>

#include "buf.h"

#define AC_SIGN_ALGORITHM "SDK-HMAC-SHA256"

/* "YYYYMMDDTHHMMSSZ" plus the NUL. */
#define AC_SDK_DATE_SIZE 17

typedef struct ac_header {
  const char *name;
  size_t name_len;
  const char *value;
  size_t value_len;
} ac_header;

typedef struct ac_sign_input {
  const char *method;
  const char *path;        /* as sent, without the query */
  size_t path_len;
  const char *query;       /* without the '?', may be empty */
  size_t query_len;
  const ac_header *headers;/* the headers to sign, X-Sdk-Date included */
  size_t header_count;
  const char *body;
  size_t body_len;
  const char *ak;
  const char *sk;          /* used by ac_sign only */
  size_t sk_len;
  const char *sdk_date;    /* the X-Sdk-Date value */
} ac_sign_input;

/* The last second that X-Sdk-Date's four year digits can express,
 * 9999-12-31T23:59:59Z. */
#define AC_SDK_DATE_MAX 253402300799.0

/* Formats t (seconds since the epoch, from 0 to AC_SDK_DATE_MAX) as an
 * X-Sdk-Date value. Outside that range out is an empty string. */
void ac_sdk_date(time_t t, char out[AC_SDK_DATE_SIZE]);

/* Writes the Authorization header value into out. Returns 0, or -1 when
 * memory runs out or libcrypto fails. Sets up a signer for in->sk and
 * frees it again, so a caller that signs many requests with one key
 * should keep an ac_signer. */
int ac_sign(const ac_sign_input *in, ac_buf *out);

/* Signing state for one secret key, reused by every signature: the
 * HMAC-SHA256 inner and outer states for the key, SHA-256 contexts, the
 * state after the bytes that consecutive canonical requests share, and
 * scratch buffers. One thread at a time may use a signer. */
typedef struct ac_signer ac_signer;

/* Creates a signer for the secret key sk (sk_len bytes). Returns NULL
 * when memory runs out or libcrypto fails. */
ac_signer *ac_signer_new(const char *sk, size_t sk_len);

/* Frees s, overwriting its key material and the canonical requests it
 * keeps, which can contain a security token. NULL is allowed. */
void ac_signer_free(ac_signer *s);

/* Like ac_sign, but signs with the signer's key and ignores in->sk. */
int ac_signer_sign(ac_signer *s, const ac_sign_input *in, ac_buf *out);

/* Writes the canonical request (for tests and debugging). */
int ac_canonical_request(const ac_sign_input *in, ac_buf *out);

#endif
