/*
 * Helpers shared by the libFuzzer targets: splitting an input into
 * fields and failing with a message that names the broken property.
 */
#ifndef AC_FUZZ_H
#define AC_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Separates the fields of a structured input. */
#define FUZZ_FIELD_SEPARATOR '\x1f'

#define FUZZ_MAX_FIELDS 160

typedef struct fuzz_field {
  char *data;   /* a NUL-terminated copy, allocated to its exact size */
  size_t len;   /* bytes before the NUL; data may hold NUL bytes too */
} fuzz_field;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Stops the run, so that libFuzzer saves the input as a crash. */
#define FUZZ_CHECK(cond, property) \
  do { \
    if (!(cond)) { \
      fprintf(stderr, "%s:%d: property violated: %s\n", __FILE__, \
              __LINE__, property); \
      abort(); \
    } \
  } while (0)

/* Splits data at FUZZ_FIELD_SEPARATOR into at most max fields, the last
 * one keeping any further separators. Each field is copied into its own
 * allocation, so AddressSanitizer catches a read past its end. Returns
 * the number of fields. */
static inline size_t fuzz_split(const uint8_t *data, size_t size,
                                fuzz_field *out, size_t max) {
  size_t n = 0, start = 0, i;

  for (i = 0; n < max; i++) {
    if (i < size && (n + 1 == max || data[i] != FUZZ_FIELD_SEPARATOR))
      continue;
    out[n].len = i - start;
    out[n].data = malloc(out[n].len + 1);
    if (out[n].data == NULL)
      abort();
    if (out[n].len > 0)
      memcpy(out[n].data, data + start, out[n].len);
    out[n].data[out[n].len] = '\0';
    n++;
    start = i + 1;
    if (i >= size)
      break;
  }
  return n;
}

static inline void fuzz_free_fields(fuzz_field *f, size_t n) {
  size_t i;

  for (i = 0; i < n; i++)
    free(f[i].data);
}

/* Returns the field at i, or an empty one past the end. */
static inline fuzz_field fuzz_get(const fuzz_field *f, size_t n, size_t i) {
  static char empty[1];
  fuzz_field none;

  if (i < n)
    return f[i];
  none.data = empty;
  none.len = 0;
  return none;
}

#endif
