/*
 * A growable byte buffer used for request bodies, URLs and responses.
 * Contents are always NUL-terminated, so they can be passed to C
 * functions that expect a string; the length excludes the NUL.
 */
#ifndef AC_BUF_H
#define AC_BUF_H

#include <stddef.h>

typedef struct ac_buf {
  char *data;
  size_t len;
  size_t cap;
  int failed;  /* set when an append ran out of memory */
} ac_buf;

/* Each returns 0 on success and -1 when memory runs out, leaving the
 * contents as they were and setting failed, so a builder can make many
 * appends and check once at the end. */
int ac_buf_reserve(ac_buf *b, size_t extra);
int ac_buf_add(ac_buf *b, const char *s, size_t n);
int ac_buf_adds(ac_buf *b, const char *s);

/* Appends one byte; inline because builders call it per character. */
static inline int ac_buf_addc(ac_buf *b, char c) {
  if (b->len + 1 < b->cap) {
    b->data[b->len++] = c;
    b->data[b->len] = '\0';
    return 0;
  }
  return ac_buf_add(b, &c, 1);
}

/* Drops the spaces and tabs around the *n bytes at *s, moving *s and
 * shortening *n. HTTP receivers read a header value without them
 * (RFC 9110 section 5.5), so signatures cover the value without them. */
void ac_trim_blanks(const char **s, size_t *n);

void ac_buf_reset(ac_buf *b);
void ac_buf_free(ac_buf *b);

/* Overwrites n bytes at p with zeros, in a way the compiler keeps even
 * right before a free, for memory that held a secret. */
void ac_wipe(void *p, size_t n);

/* Overwrites the whole allocation with zeros, then frees it, for buffers
 * that held a secret. Growing a buffer clears the block it leaves, so
 * this clears the last copy. */
void ac_buf_clear_free(ac_buf *b);

#endif
