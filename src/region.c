#include "region.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "request.h"

/* The regions where the official Python and Go SDKs list a Workspace
 * endpoint. */
static const char *const regions[] = {
  "af-north-1", "af-south-1", "ap-southeast-1", "ap-southeast-2",
  "ap-southeast-3", "cn-east-3", "cn-east-5", "cn-north-4", "cn-north-9",
  "cn-north-11", "cn-south-1", "cn-southwest-2", "eu-west-101",
  "la-north-2", "la-south-2", "me-east-1", "sa-brazil-1", "tr-west-1",
};

#define AC_MAX_REGION_BYTES 32


int ac_region_endpoint(const char *region, char *out, size_t cap,
                       char *msg) {
  char name[sizeof "HUAWEICLOUD_SDK_REGION_WORKSPACE_" + AC_MAX_REGION_BYTES];
  const char *env;
  size_t i, n = strlen(region), prefix;

  if (n == 0 || n > AC_MAX_REGION_BYTES) {
    snprintf(msg, AC_MSG_SIZE, "invalid region: it is %s; pass a region "
             "id such as \"cn-north-4\"", n ? "too long" : "empty");
    return -1;
  }

  /* The region goes into a variable name, a host name and messages. */
  i = strspn(region, "abcdefghijklmnopqrstuvwxyz"
                     "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-");
  if (i != n) {
    unsigned char bad = (unsigned char)region[i];

    if (bad > 0x20 && bad < 0x7F)
      snprintf(msg, AC_MSG_SIZE, "invalid region: byte %lu is '%c'; use "
               "only letters, digits and '-', as in \"cn-north-4\"",
               (unsigned long)i + 1, bad);
    else
      snprintf(msg, AC_MSG_SIZE, "invalid region: byte %lu is 0x%02X, %s; "
               "use only letters, digits and '-', as in \"cn-north-4\"",
               (unsigned long)i + 1, bad,
               bad == ' ' ? "a space" : "a control or non-ASCII byte");
    return -1;
  }

  prefix = (size_t)sprintf(name, "HUAWEICLOUD_SDK_REGION_WORKSPACE_");
  for (i = 0; i < n; i++) {
    char c = region[i];
    name[prefix + i] = c == '-' ? '_' : (c >= 'a' && c <= 'z')
                                      ? (char)(c - 32) : c;
  }
  name[prefix + n] = '\0';
  env = getenv(name);
  if (env != NULL && env[0] != '\0') {
    if (strlen(env) >= cap) {
      snprintf(msg, AC_MSG_SIZE, "invalid %s: it is longer than %lu "
               "bytes; set it to the endpoint's base URL", name,
               (unsigned long)cap - 1);
      return -1;
    }
    snprintf(out, cap, "%s", env);
    return 0;
  }

  for (i = 0; i < sizeof regions / sizeof regions[0]; i++) {
    if (strcmp(regions[i], region) == 0) {
      snprintf(out, cap, "https://workspace.%s.myhuaweicloud.com", region);
      return 0;
    }
  }
  snprintf(msg, AC_MSG_SIZE, "invalid region \"%.32s\": no Workspace "
           "endpoint is known for it; pass endpoint = \"https://...\" "
           "instead, or set %s", region, name);
  return -1;
}
