/*
 * Transport: one reused libcurl easy handle per client, so connections,
 * TLS sessions and DNS answers are kept between calls.
 */
#ifndef AC_TRANSPORT_H
#define AC_TRANSPORT_H

#include <sys/types.h>

#include <curl/curl.h>

#include "buf.h"

/* A credential response is about 2 KiB; 1 MiB leaves room for large
 * error pages while bounding memory per client. */
#ifndef AC_DEFAULT_MAX_BODY_BYTES
#define AC_DEFAULT_MAX_BODY_BYTES (1024 * 1024)
#endif

#ifndef AC_DEFAULT_TIMEOUT_MS
#define AC_DEFAULT_TIMEOUT_MS 30000
#endif

#ifndef AC_DEFAULT_CONNECT_TIMEOUT_MS
#define AC_DEFAULT_CONNECT_TIMEOUT_MS 5000
#endif

/* Request ids are UUIDs or hex strings; longer values are cut. */
#define AC_REQUEST_ID_SIZE 128
#define AC_RETRY_AFTER_SIZE 64

/* The sockets that a client's handles have open, so that a child
 * process can cut itself off from the connections it inherited. */
typedef struct ac_open_socket {
  curl_socket_t fd;
  dev_t device;             /* device and inode identify the socket, so */
  ino_t inode;              /* a reused descriptor number is detected */
} ac_open_socket;

typedef struct ac_socket_list {
  ac_open_socket *sockets;
  size_t count;
  size_t cap;
  unsigned fork_generation; /* ac_fork_generation() when last checked */
} ac_socket_list;

typedef struct ac_transport_opts {
  long timeout_ms;
  long connect_timeout_ms;
  int verify_tls;
  const char *ca_file;      /* NULL: the system store */
  const char *proxy;        /* "": none; NULL: libcurl reads the proxy
                             * variables on every transfer */
  const char *user_agent;
  size_t max_body_bytes;
  ac_socket_list *sockets;  /* records every socket the handles open */
} ac_transport_opts;

typedef struct ac_transport {
  CURL *curl;
  long timeout_ms;
  size_t max_body_bytes;
  ac_buf body;              /* response body of the last call */
  int body_too_large;
  int huge_length;          /* the head's Content-Length is more than
                             * curl_off_t holds, which libcurl ignores */
  int queued;               /* started while max_connections requests
                             * were in flight */
  int direct;               /* uses no proxy: ac_transport_go_direct */
  char request_id[AC_REQUEST_ID_SIZE];
  char retry_after[AC_RETRY_AFTER_SIZE];
  char etag[AC_REQUEST_ID_SIZE];
  char errbuf[CURL_ERROR_SIZE];
  const char *timeout_hint; /* for a timeout's message; NULL: the one for
                             * create-credential calls */
  ac_socket_list *sockets;  /* the opts' list, where sockets are recorded */
  int socket_errno;         /* EMFILE or ENFILE when the last transfer
                             * could not open a socket for lack of
                             * descriptors, else 0 */
} ac_transport;

/* Initialises libcurl for the process; safe to call from many threads
 * and Lua states. Returns CURLE_OK or libcurl's failure code. */
CURLcode ac_transport_global_init(void);

/* Returns how many times this process was forked off as a child since
 * ac_transport_global_init: 0 in the process that first called it. */
unsigned ac_fork_generation(void);

/* In a child process forked after the sockets in list were opened,
 * points each of them at a closed stream, so that libcurl neither reads
 * the parent's responses from them nor writes to them (a TLS close
 * alert included). libcurl then finds those connections dead and opens
 * new ones. A descriptor that the child closed and reused for something
 * else is left alone, and dropped from the list so that libcurl's close
 * does not close it. Returns 1 when it found a fork, else 0. */
int ac_socket_list_after_fork(ac_socket_list *list);

/* Frees the list; its sockets must be closed already. */
void ac_socket_list_free(ac_socket_list *list);

/* Returns libcurl's version string, read once per process. */
const char *ac_curl_version(void);

/* Returns 0, or -1 with a message in msg (AC_MSG_SIZE bytes). */
int ac_transport_init(ac_transport *t, const ac_transport_opts *o,
                      char *msg);
void ac_transport_free(ac_transport *t);

/* Returns the proxy for a client created without one: NULL when a proxy
 * variable is set, so that libcurl follows the variables, else "", so
 * that libcurl stops looking them up on every transfer. */
const char *ac_transport_default_proxy(void);

/* Returns whether a transfer that ended with rc and status is an error
 * response whose body was over max_body_bytes, so that only its start
 * is in t->body. Such a response is still the server's error. */
int ac_transport_error_body_cut(const ac_transport *t, CURLcode rc,
                                long status);

/* Makes t connect directly, ignoring the proxy option and the proxy
 * variables. */
void ac_transport_go_direct(ac_transport *t);

/* Undoes ac_transport_go_direct: t uses the proxy that o sets up. */
void ac_transport_use_proxy(ac_transport *t, const ac_transport_opts *o);

/* Returns the name of the variable from which libcurl takes a proxy for
 * url, or NULL when none of those variables is set. */
const char *ac_transport_proxy_variable(const char *url);

/* Frees a header list, first wiping each line, because a line can
 * contain a token or a security token. */
void ac_free_secret_headers(struct curl_slist *list);

/* Sets up the handle for one POST without sending it, for the multi
 * interface. The body and headers must stay alive until it completes. */
void ac_transport_prepare(ac_transport *t, const char *url,
                          struct curl_slist *headers, const char *body,
                          size_t body_len, long timeout_ms);

/* Sends one POST and fills t->body, t->request_id and t->retry_after.
 * timeout_ms <= 0 uses the client's timeout. */
CURLcode ac_transport_post(ac_transport *t, const char *url,
                           struct curl_slist *headers, const char *body,
                           size_t body_len, long timeout_ms, long *status);

#endif
