/*
 * The client shared by the blocking calls (core.c) and the multi
 * interface (multi.c).
 */
#ifndef AC_CLIENT_H
#define AC_CLIENT_H

#include <curl/curl.h>
#include <lua.h>
#include <lauxlib.h>

#include "buf.h"
#include "request.h"
#include "sign.h"
#include "transport.h"

#define AC_CLIENT_MT "appcenter.core.client"

/* Concurrent connections of one client's multi interface; transfers past
 * the limit wait in libcurl's queue. */
#ifndef AC_DEFAULT_MAX_CONNECTIONS
#define AC_DEFAULT_MAX_CONNECTIONS 16
#endif

#define AC_USER_AGENT_SIZE 160

typedef struct ac_request ac_request;

/* The maximum number of header lines an AK/SK call sends: Content-Type,
 * Host, X-Project-Id, X-Sdk-Date, X-Security-Token, Authorization and
 * Expect. */
#define AC_CALL_HEADER_LINES 7

/* The header list of one AK/SK call: its lines back to back in one
 * buffer, linked through nodes that belong to the owner. CURLOPT_HTTPHEADER
 * only reads the list of struct curl_slist, so these nodes work as well
 * as curl_slist_append's, and reusing them allocates nothing. */
typedef struct ac_call_headers {
  struct curl_slist nodes[AC_CALL_HEADER_LINES];
  ac_buf lines;                /* NUL-terminated; may contain the security
                                * token, so it is cleared when freed */
} ac_call_headers;

typedef struct ac_socket {
  curl_socket_t fd;
  int what;                    /* CURL_POLL_IN, _OUT or _INOUT */
} ac_socket;

typedef struct ac_client {
  ac_transport transport;      /* the blocking calls' easy handle */
  ac_transport upload;         /* uploads to OBS; set up on first use */
  ac_transport_opts transport_opts;
  char *ca_file;
  char *proxy;
  char *proxy_password;        /* from proxy, kept to redact it */
  char user_agent[AC_USER_AGENT_SIZE];
  ac_endpoint endpoint;
  char *project_id;
  char *token;
  char *ak;
  char *sk;                    /* kept to redact it from errors */
  ac_signer *signer;           /* keyed with sk; NULL with a token */
  char *security_token;
  ac_buf url;
  size_t path_at;              /* where the path starts in url */
  ac_buf body;
  ac_buf authorization;
  struct curl_slist *headers;  /* fixed headers sent on every call */
  ac_call_headers call_headers;/* the blocking calls' AK/SK headers */
  const char *secrets[5];      /* redacted from every error message */

  CURLM *multi;                /* created by the first start() */
  ac_request *requests;        /* in flight, doubly linked */
  int request_count;
  int finished_count;          /* requests whose transfer ended and whose
                                * callback has not run yet, as after a
                                * memory error in poll() */
  long max_connections;
  int polling;                 /* set while poll() runs callbacks */
  ac_socket *sockets;          /* what libcurl waits for, per socket */
  size_t socket_count;
  size_t socket_cap;
  int uploading;               /* set while upload.c runs a transfer or
                                * a progress callback */
  lua_State *progress_state;   /* poll()'s state while the progress
                                * callbacks of non-blocking uploads may
                                * run, else NULL */
  int in_progress_callback;    /* set while one of them runs */
  int open;
  int closing;                 /* close() is calling back the requests */
  ac_socket_list opened_sockets; /* what the handles have open, for fork() */
  int holds;                   /* > 0 while C code builds a result from
                                * the client's memory and Lua code (a
                                * finalizer) may run */
  int release_deferred;        /* close() ran during a hold */
} ac_client;

/* An option name and the Lua type its value must have. */
typedef struct ac_option {
  const char *name;
  int type;
} ac_option;

/* Raises for a key of the table at idx that is not in list, or for a
 * value of the wrong type, because both are programming errors. The list
 * ends with a NULL name; file_name is accepted only with allow_file_name. */
void ac_check_options(lua_State *L, int idx, const ac_option *list,
                      const char *fname, int allow_file_name);

/* Validates file_name, writes the JSON body into body and sets *headers
 * to the header list to send: with AK/SK the signed list, built in call,
 * else the client's fixed list. The list stays valid until call is built
 * again or freed, or the client is released. Returns 0; -1 with msg for
 * invalid input; -2 when memory runs out or signing fails. */
int ac_client_prepare(ac_client *c, const char *file_name, size_t len,
                      ac_buf *body, ac_call_headers *call,
                      struct curl_slist **headers, char *msg);

/* Clears and frees the lines of call; the nodes need no freeing. */
void ac_call_headers_free(ac_call_headers *call);

struct ac_upload;

/* A finished transfer of a client, or a cancelled request. */
typedef struct ac_outcome {
  ac_client *client;
  ac_transport *transport;
  struct ac_upload *upload;    /* NULL for a credential request */
  CURLcode rc;
  long status;
  const char *cancel_reason;   /* set: a cancelled error with this text */
} ac_outcome;

/* Pushes what the caller or callback receives for o: `result, meta`, an
 * upload's `meta`, or `nil, err`. It runs in protected mode, and close()
 * defers freeing the client meanwhile, because building reads the
 * client's memory and its allocations can run a finalizer that closes
 * the client. Returns the number of values pushed, or -1 with the error
 * on the stack. */
int ac_push_outcome(lua_State *L, ac_outcome *o);

/* Pushes `result, meta` or `nil, err` for a credential transfer, without
 * ac_push_outcome's protection; upload.c reports transfer errors with
 * it. */
int ac_client_push_result(lua_State *L, ac_client *c, ac_transport *t,
                          CURLcode rc, long status);

/* upload.c: client:upload; upload.h has what multi.c shares. */
void ac_upload_add_methods(lua_State *L);

/* core.check_upload_path(path): returns true, or nil and the message of
 * the invalid_argument error that an upload of path would return. */
int ac_l_check_upload_path(lua_State *L);

/* multi.c: the non-blocking requests. */
void ac_multi_register(lua_State *L);
void ac_multi_add_methods(lua_State *L);
/* Cancels every request in flight. With L, their callbacks are called
 * with a cancelled error (the client is at index idx) and the stack index
 * of the first callback error is returned, or 0. Without L they are only
 * freed, as in __gc. */
int ac_multi_close(lua_State *L, int idx, ac_client *c);

/* In a child process that fork() made after the client opened
 * connections, cuts the client off from them and marks each request in
 * flight as ended with a cancelled error, because the parent process
 * receives its response. The next poll, cancel or close runs their
 * callbacks. */
void ac_client_after_fork(ac_client *c);

/* Makes t, a transport of credential requests, connect directly when
 * the endpoint is a loopback host. A proxy would carry the request,
 * token included, off this machine, and could not reach its loopback
 * interface anyway. */
void ac_client_go_direct(const ac_client *c, ac_transport *t);

#endif
