/*
 * Uploads to OBS, shared by the blocking client:upload (upload.c) and
 * the non-blocking client:start_upload (multi.c): building the request
 * from the Lua arguments, the libcurl callbacks and the outcome.
 */
#ifndef AC_UPLOAD_H
#define AC_UPLOAD_H

#include <stdio.h>

#include "client.h"
#include "obs.h"

/* Reason that a read of the file ended before total bytes. */
enum {
  AC_SOURCE_OK = 0,
  AC_SOURCE_SHRANK,            /* end of file before total bytes */
  AC_SOURCE_READ_ERROR         /* fread failed, errno in read_errno */
};

typedef struct ac_upload_source {
  FILE *file;
  const char *data;
  curl_off_t total;            /* body size: a file's size at open */
  curl_off_t offset;           /* bytes of data or of the file read */
  int failure;                 /* AC_SOURCE_* */
  int read_errno;
} ac_upload_source;

typedef struct ac_upload_progress {
  lua_State *L;                /* blocking uploads: the caller's state */
  ac_client *multi_client;     /* non-blocking uploads: the client */
  int fn;                      /* stack index of the callback, 0: none */
  int has_callback;            /* opts.progress is a function */
  double last_ms;
  curl_off_t last_sent;        /* -1 before the first call */
  int aborted;                 /* the callback returned false */
  int error_at;                /* stack index of its error, 0: none,
                                * -1: reported by an earlier poll() */
} ac_upload_progress;

/* One upload. The strings of req, data and the last two secrets point
 * into Lua values that the caller keeps alive until the upload ends. */
typedef struct ac_upload {
  ac_obs_request req;
  ac_upload_source src;
  ac_upload_progress progress;
  char date[AC_HTTP_DATE_SIZE];
  double signed_ms;            /* monotonic time at which date was made */
  double sent_ms;              /* monotonic time of sending, 0: unknown */
  char md5[AC_MD5_BASE64_SIZE];
  const char *path;
  long timeout_ms;
  int direct;                  /* OBS host is loopback: no proxy */
  const char *secrets[7];      /* NULL-terminated */
  ac_buf url;
  struct curl_slist *headers;
} ac_upload;

/* Reads the result table at index 2 and the options table at 3 into u,
 * which starts zeroed, opens the file, computes the MD5 and builds the
 * URL, the signature and the headers. A progress function is left on
 * the stack at u->progress.fn. Returns 0; -1 with msg for invalid input
 * (nothing was sent); -2 with msg for a failure to raise. Raises when
 * either argument is not a table. */
int ac_upload_build(lua_State *L, ac_client *c, ac_upload *u, char *msg);

/* Sets up t to send u. Both must stay in place until the transfer
 * ends. */
void ac_upload_setup(ac_client *c, ac_upload *u, ac_transport *t);

/* Calls the progress callback with sent == total after a 2xx response
 * when the interval skipped that call during the transfer. */
void ac_upload_final_progress(ac_upload *u, CURLcode rc, long status);

/* Pushes meta, or nil and an error, for the end of u's transfer on t;
 * returns the number of values pushed. An abort by the progress
 * callback is a `cancelled` error. A file that shrank or could not be
 * read during the transfer is an `invalid_argument` error with
 * retryable false. It is not protected: see ac_push_outcome. */
int ac_upload_push_result(lua_State *L, ac_client *c, ac_upload *u,
                          ac_transport *t, CURLcode rc, long status);

/* Closes the file and frees the URL and the headers; safe to repeat. */
void ac_upload_free(ac_upload *u);

#endif
