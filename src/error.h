/*
 * Error values: plain Lua tables with a shared metatable whose
 * __tostring prints one line. Plain tables survive the copy between Lua
 * VMs that nginx's worker threads make.
 */
#ifndef AC_ERROR_H
#define AC_ERROR_H

#include <lua.h>

#define AC_ERROR_MT "appcenter.core.error"

#define AC_ERROR_TEXT_SIZE 512

/* Error kinds; the strings are part of the public contract. */
#define AC_KIND_INVALID_ARGUMENT "invalid_argument"
#define AC_KIND_NETWORK "network"
#define AC_KIND_TIMEOUT "timeout"
#define AC_KIND_TLS "tls"
#define AC_KIND_HTTP "http"
#define AC_KIND_INVALID_RESPONSE "invalid_response"
#define AC_KIND_CANCELLED "cancelled"

typedef struct ac_error_info {
  const char *kind;
  long status;            /* HTTP status, 0 when there was none */
  const char *code;       /* NULL: the status as a string, or the kind */
  const char *message;
  const char *request_id; /* NULL or empty when unknown */
  const char *retry_after;/* raw Retry-After header, NULL when absent */
  int retryable;
  const char *const *secrets; /* NULL-terminated, or NULL: each one is
                               * replaced by "***" in every string field */
} ac_error_info;

/* Registers the error metatable in the registry. */
void ac_error_register(lua_State *L);

/* Pushes an error table. String fields longer than AC_ERROR_TEXT_SIZE - 1
 * bytes are cut. */
void ac_push_error(lua_State *L, const ac_error_info *e);

/* Pushes nil and an invalid_argument error; returns 2 for lua_CFunction
 * tail calls. */
int ac_return_invalid(lua_State *L, const char *message);

/* Size of the buffer that ac_format_number fills. */
#define AC_NUMBER_TEXT_SIZE 32

/* Writes v into out as printf's %.*g writes it with `digits` significant
 * digits, except that every NaN is "nan". glibc writes "-nan" for a NaN
 * with the sign bit set, such as 0/0 makes on x86-64. */
void ac_format_number(char out[AC_NUMBER_TEXT_SIZE], double v, int digits);

/* Returns 1 for the statuses a client may retry: 429, 500, 502, 503
 * and 504. */
int ac_status_retryable(long status);

#endif
