/*
 * Region ids and their Workspace endpoints.
 */
#ifndef AC_REGION_H
#define AC_REGION_H

#include <stddef.h>

/* Writes the endpoint for region into out (cap bytes): the value of
 * HUAWEICLOUD_SDK_REGION_WORKSPACE_<REGION> when set, else the built-in
 * https://workspace.<region>.myhuaweicloud.com for a known region.
 * Returns 0, or -1 with a message in msg (AC_MSG_SIZE bytes). */
int ac_region_endpoint(const char *region, char *out, size_t cap,
                       char *msg);

#endif
