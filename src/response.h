/*
 * Response shaping: decodes the body with lua-cjson and builds either the
 * result table or an error table. No libcurl, so another transport can
 * reuse it.
 */
#ifndef AC_RESPONSE_H
#define AC_RESPONSE_H

#include <stddef.h>

#include <lua.h>

typedef struct ac_response {
  long status;
  const char *body;
  size_t body_len;
  const char *request_id;   /* "" when the server sent none */
  const char *retry_after;  /* "" when the server sent none */
  const char *redirect_url; /* a 3xx's Location, or NULL */
  int body_cut;             /* body is the start of one over max_body_bytes */
  size_t max_body_bytes;    /* the limit, for the message of a cut body */
  double elapsed_ms;
  const char *const *secrets; /* NULL-terminated; redacted from messages */
} ac_response;

/* Loads lua-cjson into the registry; raises when it is not installed. */
void ac_response_init(lua_State *L);

/* Pushes `result, meta` or `nil, err` and returns 2. */
int ac_push_response(lua_State *L, const ac_response *r);

/* The shortest start of a secret that ac_redact removes from the end of a
 * text; shorter ones are left, since they would match too much. */
#define AC_REDACT_MIN_TAIL 8

/* Replaces every occurrence of each secret in s with "***", and a tail of
 * s that is the first AC_REDACT_MIN_TAIL or more bytes of a secret, which
 * is what remains when a message was cut inside the secret. A secret is
 * matched without the spaces and tabs around it, since a header carries
 * it without them. Secrets shorter than 4 bytes are left alone, since
 * they would match too much. */
void ac_redact(char *s, const char *const *secrets);

#endif
