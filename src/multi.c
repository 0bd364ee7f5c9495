/*
 * Non-blocking requests on libcurl's multi interface.
 *
 *   local req = client:start(file_name, function(result, meta_or_err) end)
 *   local up = client:start_upload(result, opts, function(meta_or_nil,
 *                                                         err) end)
 *   client:poll(timeout_ms)   -- drives transfers, runs callbacks
 *
 * Each request is a userdata with its own easy handle; the client's multi
 * handle shares one connection cache among them. References:
 *   client uservalue[lightuserdata(req)] = request userdata (while in
 *   flight, so an unreferenced request still completes);
 *   request uservalue = {client userdata, callback}, and for an upload
 *   also the progress function, opts.body, credential.secret and
 *   credential.security_token, whose strings the upload points into.
 * Every started request gets exactly one callback call: its outcome, or
 * a `cancelled` error from cancel() or close(). When a client is garbage
 * collected with requests in flight, they are freed without callbacks.
 *
 * Transfers are driven with curl_multi_socket_action: libcurl's socket
 * callback keeps the list of sockets it waits on, poll(2) waits on them,
 * and the ready ones are handed back to libcurl.
 *
 * Callbacks run inside poll(), never from libcurl callbacks. Progress
 * callbacks of uploads are the exception: they run inside libcurl's
 * callback during poll(), in protected mode, on poll()'s stack, so they
 * may not start, cancel or close anything of the same client. poll()
 * raises their first error after the upload's callback has run.
 *
 * Caveats: poll() may not be called from a callback.
 */
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client.h"
#include "compat.h"
#include "error.h"
#include "upload.h"

#define AC_REQUEST_MT "appcenter.core.request"

enum { AC_REQ_RUNNING = 1, AC_REQ_DONE, AC_REQ_CANCELLED };

struct ac_request {
  ac_transport transport;
  ac_buf body;
  ac_call_headers headers;     /* used with AK/SK only */
  ac_upload *upload;           /* NULL for a credential request */
  ac_client *client;           /* NULL once finished */
  ac_request *prev;
  ac_request *next;
  int state;
  int finished;                /* ended, but the callback has not run */
  CURLcode result;             /* the transfer's result, once finished */
  const char *cancel_reason;   /* set when it ended by cancel or close */
};


/* ---------------------------------------------------------------------
 * Bookkeeping without Lua
 * ------------------------------------------------------------------- */

static double now_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}


/* Takes r out of its client's multi handle and list and frees its
 * transfer state. The userdata itself stays for Lua to collect. */
static void detach(ac_request *r, int state) {
  ac_client *c = r->client;

  if (c != NULL) {
    /* Removing a transfer can close its connection, which must not
     * send a TLS close alert on a parent process's connection. */
    ac_client_after_fork(c);
    if (r->finished)
      c->finished_count--;
    r->finished = 0;
    curl_multi_remove_handle(c->multi, r->transport.curl);
    if (r->prev != NULL)
      r->prev->next = r->next;
    else
      c->requests = r->next;
    if (r->next != NULL)
      r->next->prev = r->prev;
    c->request_count--;
  }
  r->client = NULL;
  r->prev = r->next = NULL;
  r->state = state;
}


void ac_client_after_fork(ac_client *c) {
  ac_request *r;

  if (!ac_socket_list_after_fork(&c->opened_sockets))
    return;
  /* Their callbacks run in the child's next poll, cancel or close, so
   * that none runs inside start or the blocking calls. */
  for (r = c->requests; r != NULL; r = r->next) {
    if (r->finished)
      continue;
    curl_multi_remove_handle(c->multi, r->transport.curl);
    r->finished = 1;
    r->result = CURLE_OK;
    r->cancel_reason = "the process forked while the request was in "
                       "flight, and the parent process receives its "
                       "response";
    c->finished_count++;
  }
}


/* Adds r to the front of c's list of requests in flight. */
static void link_request(ac_client *c, ac_request *r) {
  r->client = c;
  r->state = AC_REQ_RUNNING;
  r->next = c->requests;
  if (c->requests != NULL)
    c->requests->prev = r;
  c->requests = r;
  c->request_count++;
}


/* Returns r, which detach took out of c's list, to the list as a request
 * whose callback is due: with the transfer's result rc, or with
 * cancel_reason when it was cancelled. */
static void relink_finished(ac_client *c, ac_request *r, CURLcode rc,
                            const char *cancel_reason) {
  link_request(c, r);
  r->finished = 1;
  r->result = rc;
  r->cancel_reason = cancel_reason;
  c->finished_count++;
}


static void free_transfer(ac_request *r) {
  ac_transport_free(&r->transport);
  ac_buf_free(&r->body);
  ac_call_headers_free(&r->headers);
  if (r->upload != NULL) {
    ac_upload_free(r->upload);
    free(r->upload);
    r->upload = NULL;
  }
}


/* libcurl's socket callback: records what it waits for on each socket,
 * for client:sockets(). */
static int on_socket(CURL *easy, curl_socket_t fd, int what, void *ud,
                     void *socket_ud) {
  ac_client *c = ud;
  size_t i;

  (void)easy;
  (void)socket_ud;
  for (i = 0; i < c->socket_count; i++)
    if (c->sockets[i].fd == fd)
      break;

  if (what == CURL_POLL_REMOVE) {
    if (i < c->socket_count)
      c->sockets[i] = c->sockets[--c->socket_count];
    return 0;
  }
  if (i == c->socket_count) {
    if (c->socket_count == c->socket_cap) {
      size_t cap = c->socket_cap ? c->socket_cap * 2 : 8;
      ac_socket *grown = realloc(c->sockets, cap * sizeof *grown);
      if (grown == NULL)
        return -1;
      c->sockets = grown;
      c->socket_cap = cap;
    }
    c->socket_count++;
  }
  c->sockets[i].fd = fd;
  c->sockets[i].what = what;
  return 0;
}


static int ensure_multi(ac_client *c) {
  CURLM *m;

  if (c->multi != NULL)
    return 0;
  m = curl_multi_init();
  if (m == NULL)
    return -1;
  curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, c->max_connections);
  curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, c->max_connections);
  curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, c->max_connections);
  curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(m, CURLMOPT_SOCKETDATA, c);
  c->multi = m;
  return 0;
}


/* ---------------------------------------------------------------------
 * Completion: one callback call per request
 * ------------------------------------------------------------------- */

/* Pushes the request userdata for r and drops the client's reference to
 * it. The client userdata is at client_idx. */
static void take_request(lua_State *L, int client_idx, ac_request *r) {
  ac_getuservalue(L, client_idx);
  lua_pushlightuserdata(L, r);
  lua_rawget(L, -2);
  lua_pushlightuserdata(L, r);
  lua_pushnil(L);
  lua_rawset(L, -4);
  lua_remove(L, -2);
}


/* Pushes the callback of the request at req_idx and clears it there. */
static void take_callback(lua_State *L, int req_idx) {
  ac_getuservalue(L, req_idx);
  lua_rawgeti(L, -1, 2);
  lua_pushnil(L);
  lua_rawseti(L, -3, 2);
  lua_remove(L, -2);
}


/* Runs the last progress call of an upload that poll() finished, and
 * returns the stack index of the first error its progress callback
 * raised, or 0. */
static int finish_progress(lua_State *L, ac_client *c, ac_request *r,
                           CURLcode rc, long status) {
  if (r->upload == NULL)
    return 0;
  c->progress_state = L;
  ac_upload_final_progress(r->upload, rc, status);
  c->progress_state = NULL;
  return r->upload->progress.error_at > 0 ? r->upload->progress.error_at
                                          : 0;
}


static char do_nothing_key, poll_protected_key;

static int do_nothing(lua_State *L) {
  (void)L;
  return 0;
}


/* Makes room for calling a callback with n arguments: stack space and,
 * in Lua 5.4, a CallInfo, which the empty call allocates and leaves
 * cached, because nothing in between allocates. A Lua function's frame
 * is at most 255 slots. Returns 0, or -1 when memory ran out. */
static int reserve_call(lua_State *L, int n) {
  if (!lua_checkstack(L, 256 + n))
    return -1;
  ac_push_cfunction(L, &do_nothing_key, do_nothing);
  return lua_pcall(L, 0, 0, 0) == 0 ? 0 : -1;
}


/* Finishes r and calls its callback in protected mode. With cancel_reason
 * the outcome is a cancelled error, else the transfer's result, and
 * *progress_error is set as finish_progress returns it. Returns 0, or -1
 * with the callback's error on the stack.
 *
 * r leaves the client's list first, so that a finalizer run while the
 * outcome is built, which may close the client or cancel requests, does
 * not finish it twice. When memory runs out before the callback can be
 * called, r goes back to the list as finished, for a later poll, cancel
 * or close to call back, and the memory error is raised. */
static int complete(lua_State *L, int client_idx, ac_request *r,
                    CURLcode rc, const char *cancel_reason,
                    int *progress_error) {
  ac_outcome o = {.client = r->client, .transport = &r->transport,
                  .upload = r->upload, .rc = rc,
                  .cancel_reason = cancel_reason};
  int top, n;

  curl_easy_getinfo(r->transport.curl, CURLINFO_RESPONSE_CODE, &o.status);
  if (cancel_reason == NULL)
    *progress_error = finish_progress(L, o.client, r, rc, o.status);
  detach(r, cancel_reason ? AC_REQ_CANCELLED : AC_REQ_DONE);

  top = lua_gettop(L);
  n = ac_push_outcome(L, &o);
  if (n < 0 || reserve_call(L, n) != 0) {
    /* A client that close() is closing still has its multi handle, and
     * the next close() calls r back. NOTE: when a finalizer closed the
     * client meanwhile, which releases it, r ends without a callback. */
    if (o.client->multi != NULL)
      relink_finished(o.client, r, rc, cancel_reason);
    if (n < 0)
      return lua_error(L);
    lua_settop(L, top);
    return luaL_error(L, "not enough memory");
  }

  /* Nothing below allocates, so nothing raises. */
  take_request(L, client_idx, r);
  take_callback(L, lua_gettop(L));
  lua_insert(L, -(n + 2));     /* callback, outcome..., request */
  free_transfer(r);
  lua_pop(L, 1);

  return lua_pcall(L, n, 0, 0) == 0 ? 0 : -1;
}


/* Keeps the first callback error at *saved (0: none yet) and drops the
 * rest, so that one bad callback does not hide the others' results. */
static void keep_first_error(lua_State *L, int *saved) {
  if (*saved == 0)
    *saved = lua_gettop(L);
  else
    lua_pop(L, 1);
}


/* Calls back r, whose transfer has finished, and counts it in *done. */
static void deliver(lua_State *L, int client_idx, ac_request *r, int *saved,
                    int *done) {
  int progress_error = 0, failed;

  failed = complete(L, client_idx, r, r->result, r->cancel_reason,
                    &progress_error);
  /* The progress callback's error came first; it stays where it is on
   * the stack. */
  if (progress_error != 0 && *saved == 0)
    *saved = progress_error;
  if (failed)
    keep_first_error(L, saved);
  (*done)++;
}


/* Runs the callbacks of finished transfers; returns how many. Transfers
 * that an earlier poll() could not call back, because a memory error
 * ended it, come first. */
static int drain(lua_State *L, int client_idx, ac_client *c, int *saved) {
  CURLMsg *msg;
  ac_request *r;
  int left, done = 0;

  /* From the head each time, because a callback may cancel any other
   * request. */
  while (c->open && c->finished_count > 0) {
    for (r = c->requests; r != NULL && !r->finished; r = r->next)
      ;
    if (r == NULL)
      break;
    deliver(L, client_idx, r, saved, &done);
  }
  while (c->open && c->multi != NULL
         && (msg = curl_multi_info_read(c->multi, &left)) != NULL) {
    if (msg->msg != CURLMSG_DONE)
      continue;
    r = NULL;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
    r->finished = 1;
    r->result = msg->data.result;
    r->cancel_reason = NULL;
    c->finished_count++;
    deliver(L, client_idx, r, saved, &done);
  }
  return done;
}


int ac_multi_close(lua_State *L, int idx, ac_client *c) {
  int saved = 0;

  while (c->requests != NULL) {
    ac_request *r = c->requests;

    if (L != NULL) {
      if (complete(L, idx, r, CURLE_OK, "the client was closed", NULL)
          != 0)
        keep_first_error(L, &saved);
    } else {
      detach(r, AC_REQ_CANCELLED);
      free_transfer(r);
    }
  }
  if (c->multi != NULL)
    curl_multi_cleanup(c->multi);
  c->multi = NULL;
  free(c->sockets);
  c->sockets = NULL;
  c->socket_count = c->socket_cap = 0;
  return saved;
}


/* ---------------------------------------------------------------------
 * Client methods
 * ------------------------------------------------------------------- */

static ac_client *check_open(lua_State *L) {
  ac_client *c = luaL_checkudata(L, 1, AC_CLIENT_MT);

  if (!c->open)
    luaL_error(L, "appcenter.core: the client is closed");
  ac_client_after_fork(c);
  return c;
}


static const ac_option start_options[] = {
  {"timeout_ms", LUA_TNUMBER},
  {NULL, 0}
};

/* Reads the optional {timeout_ms = n} table at idx; 0 when absent. */
static long call_timeout(lua_State *L, int idx) {
  lua_Number v;

  if (lua_isnoneornil(L, idx))
    return 0;
  luaL_checktype(L, idx, LUA_TTABLE);
  ac_check_options(L, idx, start_options, "start", 0);
  lua_getfield(L, idx, "timeout_ms");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  v = lua_tonumber(L, -1);
  /* Whole milliseconds, as create_credential takes them. */
  luaL_argcheck(L, lua_type(L, -1) == LUA_TNUMBER && v >= 1
                   && v <= 86400000 && v == floor(v), idx,
                "timeout_ms must be a whole number from 1 to 86400000");
  lua_pop(L, 1);
  return (long)v;
}


/* Raises when a progress callback of the client's uploads is running,
 * because libcurl rejects changes to the multi handle from inside its
 * callbacks. */
static void check_not_in_progress(lua_State *L, ac_client *c,
                                  const char *name) {
  if (c->in_progress_callback)
    luaL_error(L, "appcenter.core: %s called from an upload's progress "
               "callback; call it from the upload's callback instead",
               name);
}


/* Pushes a new request userdata in state "new". */
static ac_request *push_request(lua_State *L) {
  ac_request *r = ac_newuserdata(L, sizeof *r);

  memset(r, 0, sizeof *r);
  luaL_getmetatable(L, AC_REQUEST_MT);
  lua_setmetatable(L, -2);
  return r;
}


/* Raises when the client was closed after check_open, because a
 * finalizer that an allocation ran, or an __index metamethod of the
 * arguments, closed it. r, not launched yet, is freed at once. */
static void check_still_open(lua_State *L, ac_client *c, ac_request *r) {
  if (!c->open) {
    free_transfer(r);
    luaL_error(L, "appcenter.core: the client is closed");
  }
}


/* Creates the easy handle of r for the client. Raises on failure. */
static void init_transfer(lua_State *L, ac_client *c, ac_request *r) {
  char msg[AC_MSG_SIZE];

  if (ensure_multi(c) != 0
      || ac_transport_init(&r->transport, &c->transport_opts, msg) != 0)
    luaL_error(L, "appcenter.core: cannot start a request: %s",
               c->multi ? msg : "curl_multi_init failed");
  curl_easy_setopt(r->transport.curl, CURLOPT_PRIVATE, (char *)r);
}


/* Hands r, the userdata on top of the stack whose uservalue is set, to
 * the client's multi handle. Raises when libcurl rejects it. */
static void launch(lua_State *L, ac_client *c, ac_request *r) {
  /* Lua references first: nothing below may raise once libcurl owns
   * the handle without the client knowing about it. */
  ac_getuservalue(L, 1);
  lua_pushlightuserdata(L, r);
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  lua_pop(L, 1);

  if (curl_multi_add_handle(c->multi, r->transport.curl) != CURLM_OK) {
    take_request(L, 1, r);
    lua_pop(L, 1);
    luaL_error(L, "appcenter.core: curl_multi_add_handle failed");
  }
  /* It waits for a connection, unless one of the busy ones finished
   * and was not polled yet. */
  r->transport.queued = c->request_count >= c->max_connections;
  link_request(c, r);
}


static int l_start(lua_State *L) {
  ac_client *c = check_open(L);
  ac_request *r;
  struct curl_slist *headers;
  const char *file_name;
  char msg[AC_MSG_SIZE];
  size_t len;
  long timeout_ms;

  check_not_in_progress(L, c, "start");
  luaL_checktype(L, 2, LUA_TSTRING);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  timeout_ms = call_timeout(L, 4);
  file_name = lua_tolstring(L, 2, &len);

  /* The Lua allocations come first, and nothing after the check below
   * runs Lua code. */
  r = push_request(L);
  lua_createtable(L, 2, 0);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 1);
  lua_pushvalue(L, 3);
  lua_rawseti(L, -2, 2);
  ac_setuservalue(L, -2);
  check_still_open(L, c, r);

  switch (ac_client_prepare(c, file_name, len, &r->body, &r->headers,
                            &headers, msg)) {
  case -1:
    return ac_return_invalid(L, msg);
  case -2:
    return luaL_error(L, "appcenter.core: not enough memory");
  }
  init_transfer(L, c, r);
  ac_client_go_direct(c, &r->transport);
  ac_transport_prepare(&r->transport, c->url.data, headers, r->body.data,
                       r->body.len, timeout_ms);
  launch(L, c, r);
  return 1;
}


/* Stores t[key] at index slot of the table at -1, and returns whether
 * it is the string that expected points to. t is the table at index
 * t_idx, or its field sub when sub is not NULL. */
static int anchor_string(lua_State *L, int t_idx, const char *sub,
                         const char *key, const char *expected, int slot) {
  const char *s;

  lua_pushvalue(L, t_idx);
  if (sub != NULL) {
    lua_getfield(L, -1, sub);
    lua_remove(L, -2);
  }
  lua_getfield(L, -1, key);
  lua_remove(L, -2);
  s = lua_tostring(L, -1);
  lua_rawseti(L, -2, slot);
  return s == expected;
}


/* Sets the uservalue of the upload request at req_idx, with the Lua
 * values that its upload points into after start_upload returns: the
 * body, the path for error messages and the secrets to redact. Returns
 * 0, or -1 when the result or the options return other values on a
 * second read, as a table with an __index metamethod may. */
static int anchor_upload(lua_State *L, int req_idx, const ac_upload *u) {
  int same;

  lua_createtable(L, 7, 0);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 1);
  lua_pushvalue(L, 4);
  lua_rawseti(L, -2, 2);
  if (u->progress.fn != 0) {
    lua_pushvalue(L, u->progress.fn);
    lua_rawseti(L, -2, 3);
  }
  same = (u->src.data == NULL
          || anchor_string(L, 3, NULL, "body", u->src.data, 4))
      && (u->path == NULL
          || anchor_string(L, 3, NULL, "path", u->path, 7))
      && anchor_string(L, 2, "credential", "secret", u->req.secret, 5)
      && anchor_string(L, 2, "credential", "security_token",
                       u->req.security_token, 6);
  ac_setuservalue(L, req_idx);
  return same ? 0 : -1;
}


/* client:start_upload(result, opts, callback): the upload of
 * client:upload, on an easy handle of its own. */
static int l_start_upload(lua_State *L) {
  ac_client *c = check_open(L);
  ac_request *r;
  char msg[AC_MSG_SIZE];

  check_not_in_progress(L, c, "start_upload");
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TTABLE);
  luaL_checktype(L, 4, LUA_TFUNCTION);
  lua_settop(L, 4);

  r = push_request(L);
  r->upload = calloc(1, sizeof *r->upload);
  if (r->upload == NULL)
    return luaL_error(L, "appcenter.core: not enough memory");
  switch (ac_upload_build(L, c, r->upload, msg)) {
  case -1:
    return ac_return_invalid(L, msg);
  case -2:
    return luaL_error(L, "appcenter.core: %s", msg);
  }
  if (anchor_upload(L, 5, r->upload) != 0) {
    ac_upload_free(r->upload);  /* closes the file now, not at __gc */
    return ac_return_invalid(L, "invalid result or upload options: the "
                             "tables return other strings on a second "
                             "read; pass plain tables");
  }
  lua_settop(L, 5);
  check_still_open(L, c, r);
  r->upload->progress.fn = 0;  /* poll() binds it to its own stack */
  r->upload->progress.multi_client = c;

  init_transfer(L, c, r);
  ac_upload_setup(c, r->upload, &r->transport);
  launch(L, c, r);
  return 1;
}


/* Fires libcurl's timer when it has expired. */
static void run_expired_timer(ac_client *c) {
  long ms = -1;
  int running;

  curl_multi_timeout(c->multi, &ms);
  if (ms == 0)
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
}


/* Waits at most wait_ms for the sockets libcurl waits on (less when its
 * timer is due sooner) and hands the ready ones to libcurl. */
static void service_sockets(ac_client *c, long wait_ms) {
  struct pollfd stack[32], *fds = stack;
  size_t i, n;
  long curl_ms = -1;
  int running, ready;

  run_expired_timer(c);
  curl_multi_timeout(c->multi, &curl_ms);
  if (curl_ms >= 0 && curl_ms < wait_ms)
    wait_ms = curl_ms;

  /* The socket callback may change c->sockets during socket_action, so
   * poll(2) works on a copy. */
  n = c->socket_count;
  if (n > sizeof stack / sizeof stack[0]
      && (fds = malloc(n * sizeof *fds)) == NULL) {
    fds = stack;
    n = sizeof stack / sizeof stack[0];
  }
  for (i = 0; i < n; i++) {
    int what = c->sockets[i].what;
    fds[i].fd = c->sockets[i].fd;
    fds[i].events = (short)((what & CURL_POLL_IN ? POLLIN : 0)
                            | (what & CURL_POLL_OUT ? POLLOUT : 0));
    fds[i].revents = 0;
  }

  ready = poll(fds, (nfds_t)n, (int)wait_ms);
  for (i = 0; ready > 0 && i < n; i++) {
    int mask = 0;
    if (fds[i].revents & (POLLIN | POLLHUP))
      mask |= CURL_CSELECT_IN;
    if (fds[i].revents & POLLOUT)
      mask |= CURL_CSELECT_OUT;
    if (fds[i].revents & (POLLERR | POLLNVAL))
      mask |= CURL_CSELECT_ERR;
    if (mask != 0)
      curl_multi_socket_action(c->multi, fds[i].fd, mask, &running);
  }
  if (fds != stack)
    free(fds);
  run_expired_timer(c);
}


/* Pushes the progress function of each upload in flight onto poll()'s
 * stack, where libcurl's progress callback finds it. The client userdata
 * is at index 1. */
static void bind_progress(lua_State *L, ac_client *c) {
  ac_request *r;
  int n = 0;

  for (r = c->requests; r != NULL; r = r->next)
    n += r->upload != NULL && r->upload->progress.has_callback;
  luaL_checkstack(L, n + 4, "too many uploads in flight");
  for (r = c->requests; r != NULL; r = r->next) {
    if (r->upload == NULL || !r->upload->progress.has_callback)
      continue;
    ac_getuservalue(L, 1);
    lua_pushlightuserdata(L, r);
    lua_rawget(L, -2);
    ac_getuservalue(L, -1);
    lua_rawgeti(L, -1, 3);
    lua_replace(L, -4);
    lua_pop(L, 2);
    r->upload->progress.fn = lua_gettop(L);
  }
}


/* Undoes bind_progress for the uploads still in flight. A progress
 * error of one of them is kept in *saved when it is the first, and
 * marked as reported, because its stack slot goes away with this call. */
static void unbind_progress(ac_client *c, int *saved) {
  ac_request *r;

  for (r = c->requests; r != NULL; r = r->next) {
    ac_upload_progress *p;

    if (r->upload == NULL)
      continue;
    p = &r->upload->progress;
    if (p->error_at > 0 && *saved == 0)
      *saved = p->error_at;
    if (p->error_at > 0)
      p->error_at = -1;
    p->fn = 0;
  }
}


/* The body of poll() for the client at 1 and the deadline at 2, in
 * protected mode: returns the first callback error or nil, then the
 * number of callbacks run. */
static int poll_protected(lua_State *L) {
  ac_client *c = lua_touserdata(L, 1);
  double deadline = lua_tonumber(L, 2);
  int done = 0, saved = 0;

  lua_settop(L, 1);
  bind_progress(L, c);
  while (c->open && c->request_count > 0) {
    double left = deadline - now_ms();

    done += drain(L, 1, c, &saved);
    if (done > 0)
      break;
    c->progress_state = L;
    service_sockets(c, left >= 1 ? (long)left : 0);
    c->progress_state = NULL;
    done += drain(L, 1, c, &saved);
    if (done > 0 || now_ms() >= deadline)
      break;
  }
  unbind_progress(c, &saved);

  if (saved != 0)
    lua_pushvalue(L, saved);
  else
    lua_pushnil(L);
  lua_pushinteger(L, done);
  return 2;
}


static int l_poll(lua_State *L) {
  ac_client *c = check_open(L);
  /* A number, not an integer, so that Lua 5.4 accepts what LuaJIT
   * accepts. */
  lua_Number timeout_ms = luaL_optnumber(L, 2, 0);
  int status, unused = 0;

  luaL_argcheck(L, timeout_ms >= 0 && timeout_ms <= 86400000, 2,
                "timeout_ms must be from 0 to 86400000");
  if (c->polling)
    return luaL_error(L, "appcenter.core: poll called from a callback that "
                      "poll runs (a request's callback or an upload's progress "
                      "callback); return from the callback instead, and "
                      "the running poll goes on with the other requests");
  lua_settop(L, 1);
  ac_push_cfunction(L, &poll_protected_key, poll_protected);
  lua_pushvalue(L, 1);
  lua_pushnumber(L, now_ms() + (double)timeout_ms);

  /* Cleared however the body ends, so that a memory error raised in it
   * does not leave the client refusing every later poll(). */
  c->polling = 1;
  status = lua_pcall(L, 2, 2, 0);
  c->polling = 0;
  c->progress_state = NULL;
  if (status != 0) {
    unbind_progress(c, &unused);
    return lua_error(L);
  }
  if (!lua_isnil(L, -2)) {
    lua_pop(L, 1);
    return lua_error(L);
  }
  return 1;
}


static int l_perform(lua_State *L) {
  lua_settop(L, 1);
  lua_pushinteger(L, 0);
  return l_poll(L);
}


static int l_pending(lua_State *L) {
  ac_client *c = luaL_checkudata(L, 1, AC_CLIENT_MT);

  lua_pushinteger(L, c->request_count);
  return 1;
}


/* Returns the sockets libcurl waits on, as {fd, read, write} tables. */
static int l_sockets(lua_State *L) {
  ac_client *c = luaL_checkudata(L, 1, AC_CLIENT_MT);
  size_t i;

  lua_createtable(L, (int)c->socket_count, 0);
  for (i = 0; i < c->socket_count; i++) {
    int what = c->sockets[i].what;

    lua_createtable(L, 0, 3);
    lua_pushinteger(L, (lua_Integer)c->sockets[i].fd);
    lua_setfield(L, -2, "fd");
    lua_pushboolean(L, what == CURL_POLL_IN || what == CURL_POLL_INOUT);
    lua_setfield(L, -2, "read");
    lua_pushboolean(L, what == CURL_POLL_OUT || what == CURL_POLL_INOUT);
    lua_setfield(L, -2, "write");
    lua_rawseti(L, -2, (int)i + 1);
  }
  return 1;
}


/* Returns the milliseconds until libcurl needs poll() again, or nil
 * when it has no timer set. */
static int l_timeout(lua_State *L) {
  ac_client *c = luaL_checkudata(L, 1, AC_CLIENT_MT);
  long ms = -1;

  if (c->multi != NULL)
    curl_multi_timeout(c->multi, &ms);
  if (ms < 0)
    lua_pushnil(L);
  else
    lua_pushinteger(L, ms);
  return 1;
}


static const luaL_Reg client_methods[] = {
  {"start", l_start},
  {"start_upload", l_start_upload},
  {"poll", l_poll},
  {"perform", l_perform},
  {"pending", l_pending},
  {"sockets", l_sockets},
  {"timeout", l_timeout},
  {NULL, NULL}
};


void ac_multi_add_methods(lua_State *L) {
  luaL_setfuncs(L, client_methods, 0);
}


/* ---------------------------------------------------------------------
 * Request methods
 * ------------------------------------------------------------------- */

static int l_request_cancel(lua_State *L) {
  ac_request *r = luaL_checkudata(L, 1, AC_REQUEST_MT);

  if (r->client == NULL) {
    lua_pushboolean(L, 0);
    return 1;
  }

  check_not_in_progress(L, r->client, "cancel");
  /* The client userdata is the first entry of the request's uservalue. */
  lua_settop(L, 1);
  ac_getuservalue(L, 1);
  lua_rawgeti(L, -1, 1);
  if (complete(L, 3, r, CURLE_OK, "the request was cancelled", NULL) != 0)
    return lua_error(L);
  lua_pushboolean(L, 1);
  return 1;
}


static int l_request_status(lua_State *L) {
  ac_request *r = luaL_checkudata(L, 1, AC_REQUEST_MT);
  static const char *const names[] = {"new", "running", "done",
                                      "cancelled"};

  lua_pushstring(L, names[r->state]);
  return 1;
}


static int l_request_tostring(lua_State *L) {
  l_request_status(L);
  lua_pushfstring(L, "appcenter.core.request (%s)", lua_tostring(L, -1));
  return 1;
}


static int l_request_gc(lua_State *L) {
  ac_request *r = luaL_checkudata(L, 1, AC_REQUEST_MT);

  detach(r, AC_REQ_CANCELLED);
  free_transfer(r);
  return 0;
}


static const luaL_Reg request_methods[] = {
  {"cancel", l_request_cancel},
  {"status", l_request_status},
  {NULL, NULL}
};


void ac_multi_register(lua_State *L) {
  /* Made now, so that later pushes allocate nothing under Lua 5.1. */
  ac_push_cfunction(L, &do_nothing_key, do_nothing);
  ac_push_cfunction(L, &poll_protected_key, poll_protected);
  lua_pop(L, 2);
  if (!luaL_newmetatable(L, AC_REQUEST_MT)) {
    lua_pop(L, 1);
    return;
  }
  lua_newtable(L);
  luaL_setfuncs(L, request_methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_request_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, l_request_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
}
