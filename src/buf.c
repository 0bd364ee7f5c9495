#include "buf.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#define AC_BUF_MIN_CAP 256


int ac_buf_reserve(ac_buf *b, size_t extra) {
  size_t need, cap;
  char *data;

  if (extra >= (size_t)-1 - b->len - 1) {
    b->failed = 1;
    return -1;
  }
  need = b->len + extra + 1;
  if (need <= b->cap)
    return 0;

  cap = b->cap ? b->cap : AC_BUF_MIN_CAP;
  while (cap < need)
    cap = cap > (size_t)-1 / 2 ? need : cap * 2;
  /* A new block instead of realloc, so that the old one, which may
   * contain a token or key, is cleared before it is freed. */
  data = malloc(cap);
  if (data == NULL) {
    b->failed = 1;
    return -1;
  }
  if (b->data != NULL) {
    memcpy(data, b->data, b->len + 1);
    ac_wipe(b->data, b->cap);
    free(b->data);
  }
  b->data = data;
  b->cap = cap;
  return 0;
}


int ac_buf_add(ac_buf *b, const char *s, size_t n) {
  if (ac_buf_reserve(b, n) != 0)
    return -1;
  if (n > 0)
    memcpy(b->data + b->len, s, n);
  b->len += n;
  b->data[b->len] = '\0';
  return 0;
}


int ac_buf_adds(ac_buf *b, const char *s) {
  return ac_buf_add(b, s, strlen(s));
}


void ac_buf_reset(ac_buf *b) {
  b->len = 0;
  b->failed = 0;
  if (b->data != NULL)
    b->data[0] = '\0';
}


void ac_buf_free(ac_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
  b->failed = 0;
}


void ac_trim_blanks(const char **s, size_t *n) {
  while (*n > 0 && (**s == ' ' || **s == '\t')) {
    (*s)++;
    (*n)--;
  }
  while (*n > 0 && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t'))
    (*n)--;
}


void ac_wipe(void *p, size_t n) {
  if (p != NULL)
    OPENSSL_cleanse(p, n);
}


void ac_buf_clear_free(ac_buf *b) {
  ac_wipe(b->data, b->cap);
  ac_buf_free(b);
}
