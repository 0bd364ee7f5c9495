/*
 * The benchmark's floor: the create-credential request made with plain
 * libcurl, one reused easy handle, the headers and body that
 * appcenter.core sends with a token, and the JSON body left unparsed.
 *
 *   floor URL REQUESTS FILE_NAME [CA_FILE]
 *
 * Reads the token from APPCENTER_TOKEN. Speaks the contender protocol of
 * bench/run.py: prints "ready" before the first request, then "done N"
 * with the number of successful requests, then the first error if any.
 * Exits 0 when every request returned 200 with a non-empty body.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  char *data;
  size_t len;
  size_t cap;
} buffer;

static size_t on_body(char *data, size_t size, size_t n, void *ud) {
  buffer *b = ud;
  size_t len = size * n;

  if (b->len + len > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 4096;
    char *grown;

    while (cap < b->len + len)
      cap *= 2;
    grown = realloc(b->data, cap);
    if (grown == NULL)
      return 0;
    b->data = grown;
    b->cap = cap;
  }
  memcpy(b->data + b->len, data, len);
  b->len += len;
  return len;
}

int main(int argc, char **argv) {
  const char *url, *file_name, *token, *ca_file;
  char body[512], user_agent[128], *auth_header;
  struct curl_slist *headers = NULL;
  buffer response = {0};
  long requests, ok = 0, i, status;
  char error[CURL_ERROR_SIZE] = "", failure[CURL_ERROR_SIZE + 64] = "";
  CURL *curl;

  if (argc < 4) {
    fprintf(stderr, "usage: floor URL REQUESTS FILE_NAME [CA_FILE]\n");
    return 2;
  }
  url = argv[1];
  requests = strtol(argv[2], NULL, 10);
  file_name = argv[3];
  ca_file = argc > 4 ? argv[4] : NULL;
  token = getenv("APPCENTER_TOKEN");
  if (token == NULL) {
    fprintf(stderr, "floor: set APPCENTER_TOKEN\n");
    return 2;
  }
  auth_header = malloc(strlen(token) + sizeof "X-Auth-Token: ");
  if (auth_header == NULL) {
    fprintf(stderr, "floor: not enough memory\n");
    return 1;
  }

  snprintf(body, sizeof body, "{\"file_name\":\"%s\"}", file_name);
  sprintf(auth_header, "X-Auth-Token: %s", token);
  headers = curl_slist_append(headers, "Content-Type: application/json");
  headers = curl_slist_append(headers, "Expect:");
  headers = curl_slist_append(headers, auth_header);

  curl_global_init(CURL_GLOBAL_DEFAULT);
  curl = curl_easy_init();
  if (curl == NULL || headers == NULL) {
    fprintf(stderr, "floor: libcurl setup failed\n");
    return 1;
  }
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(curl, CURLOPT_URL, url);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
  snprintf(user_agent, sizeof user_agent, "appcenter-bench-floor/0.1.0 libcurl/%s",
           curl_version_info(CURLVERSION_NOW)->version);
  curl_easy_setopt(curl, CURLOPT_USERAGENT, user_agent);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &response);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 30000L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
  curl_easy_setopt(curl, CURLOPT_TCP_KEEPALIVE, 1L);
  if (ca_file != NULL)
    curl_easy_setopt(curl, CURLOPT_CAINFO, ca_file);

  printf("ready\n");
  fflush(stdout);
  for (i = 0; i < requests; i++) {
    CURLcode rc;

    response.len = 0;
    status = 0;
    rc = curl_easy_perform(curl);
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    if (rc != CURLE_OK || status != 200 || response.len == 0) {
      snprintf(failure, sizeof failure, "request %ld: %s, status %ld", i + 1,
               error[0] ? error : rc != CURLE_OK ? curl_easy_strerror(rc)
               : "unexpected response", status);
      break;
    }
    ok++;
  }
  printf("done %ld\n", ok);
  if (ok != requests)
    printf("%s\n", failure);
  curl_easy_cleanup(curl);
  curl_slist_free_all(headers);
  free(auth_header);
  free(response.data);
  curl_global_cleanup();
  return ok == requests ? 0 : 1;
}
