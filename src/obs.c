/*
 * OBS request building and signing (the native "OBS" signature).
 *
 * Caveats: only PUT of one object is built; sub-resources and query
 * parameters are not part of the canonical resource. The XML error
 * reader looks for three elements and decodes the five predefined
 * entities; it is not a general XML parser.
 */
#include "obs.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "request.h"

static const char hex_upper[] = "0123456789ABCDEF";


void ac_http_date(time_t t, char out[AC_HTTP_DATE_SIZE]) {
  static const char days[][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri",
                                 "Sat"};
  static const char months[][4] = {"Jan", "Feb", "Mar", "Apr", "May",
                                   "Jun", "Jul", "Aug", "Sep", "Oct",
                                   "Nov", "Dec"};
  struct tm tm;

  gmtime_r(&t, &tm);
  snprintf(out, AC_HTTP_DATE_SIZE, "%s, %02d %s %04d %02d:%02d:%02d GMT",
           days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12],
           tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}


/* Appends key with each segment percent-encoded and '/' kept. */
static void add_encoded_key(ac_buf *b, const char *key) {
  const unsigned char *p;

  for (p = (const unsigned char *)key; *p; p++) {
    unsigned char c = *p;
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')
        || (c >= '0' && c <= '9') || strchr("-._~/", c) != NULL) {
      ac_buf_addc(b, (char)c);
    } else {
      char esc[3] = {'%', hex_upper[c >> 4], hex_upper[c & 0xF]};
      ac_buf_add(b, esc, 3);
    }
  }
}


int ac_obs_url(const ac_obs_request *r, ac_buf *url) {
  ac_buf_reset(url);
  ac_buf_adds(url, r->scheme);
  ac_buf_adds(url, "://");
  if (!r->path_style) {
    ac_buf_adds(url, r->bucket);
    ac_buf_addc(url, '.');
  }
  ac_buf_adds(url, r->server_end_point);
  ac_buf_addc(url, '/');
  if (r->path_style) {
    ac_buf_adds(url, r->bucket);
    ac_buf_addc(url, '/');
  }
  add_encoded_key(url, r->key);
  return url->failed ? -1 : 0;
}


size_t ac_obs_header_value(const char *s, const char **start) {
  size_t n = strlen(s);

  ac_trim_blanks(&s, &n);
  *start = s;
  return n;
}


int ac_obs_string_to_sign(const ac_obs_request *r, ac_buf *out) {
  const char *value;
  size_t n;

  ac_buf_reset(out);
  ac_buf_adds(out, "PUT\n");
  ac_buf_adds(out, r->content_md5);
  ac_buf_addc(out, '\n');
  n = ac_obs_header_value(r->content_type, &value);
  ac_buf_add(out, value, n);
  ac_buf_addc(out, '\n');
  ac_buf_addc(out, '\n');  /* Date is empty because x-obs-date is sent */

  /* x-obs-* headers sorted by name: date before security-token. A blank
   * token is not sent, so it is not signed either. */
  ac_buf_adds(out, "x-obs-date:");
  ac_buf_adds(out, r->date);
  ac_buf_addc(out, '\n');
  n = ac_obs_header_value(r->security_token, &value);
  if (n > 0) {
    ac_buf_adds(out, "x-obs-security-token:");
    ac_buf_add(out, value, n);
    ac_buf_addc(out, '\n');
  }

  ac_buf_addc(out, '/');
  ac_buf_adds(out, r->bucket);
  ac_buf_addc(out, '/');
  add_encoded_key(out, r->key);
  return out->failed ? -1 : 0;
}


int ac_obs_authorization(const ac_obs_request *r, ac_buf *out) {
  ac_buf to_sign = {0};
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned char encoded[4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1];
  unsigned int mac_len = 0;
  int rc = -1;

  if (ac_obs_string_to_sign(r, &to_sign) == 0
      && HMAC(EVP_sha1(), r->secret, (int)strlen(r->secret),
              (const unsigned char *)to_sign.data, to_sign.len, mac,
              &mac_len) != NULL) {
    EVP_EncodeBlock(encoded, mac, (int)mac_len);
    ac_buf_reset(out);
    ac_buf_adds(out, "OBS ");
    ac_buf_adds(out, r->access);
    ac_buf_addc(out, ':');
    ac_buf_adds(out, (const char *)encoded);
    rc = out->failed ? -1 : 0;
  }
  ac_buf_clear_free(&to_sign);  /* it contains the security token */
  return rc;
}


/* ---------------------------------------------------------------------
 * Checks
 * ------------------------------------------------------------------- */

static int has_byte_outside(const char *s, const char *allowed) {
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
          || strchr(allowed, c) != NULL))
      return 1;
  }
  return 0;
}


int ac_obs_check_target(const char *server_end_point, const char *bucket,
                        const char *key, int path_style, char *msg) {
  const unsigned char *p;
  char shown[72] = "";

  if (server_end_point[0] == '\0'
      || has_byte_outside(server_end_point,
                          "-.:[]ABCDEFGHIJKLMNOPQRSTUVWXYZ")) {
    snprintf(msg, AC_MSG_SIZE, "invalid server_end_point: expected a host "
             "name with an optional port, e.g. "
             "obs.cn-north-4.myhuaweicloud.com");
    return -1;
  }

  /* Virtual-host style puts the bucket into the host name. */
  if (bucket[0] == '\0' || strlen(bucket) > 63
      || has_byte_outside(bucket, path_style ? "-._" : "-.")) {
    /* The name comes from the server: quote it only when it cannot break
     * the message's single line. */
    if (!has_byte_outside(bucket, "-._ !\"#$%&'()*+,/:;<=>?@[\\]^`{|}~"
                          "ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
      snprintf(shown, sizeof shown, " \"%.63s\"", bucket);
    snprintf(msg, AC_MSG_SIZE, "invalid bucket_name%s: expected 1 to 63 "
             "lower-case letters, digits, '-' and '.'%s", shown,
             path_style ? "" : "; pass path_style = true for other names");
    return -1;
  }

  if (key[0] == '\0' || strlen(key) > 1024) {
    snprintf(msg, AC_MSG_SIZE, "invalid object_path: expected 1 to 1024 "
             "bytes");
    return -1;
  }
  for (p = (const unsigned char *)key; *p; p++) {
    if (*p < 0x20 || *p == 0x7F) {
      snprintf(msg, AC_MSG_SIZE, "invalid object_path: control character "
               "0x%02X", *p);
      return -1;
    }
  }
  return 0;
}


/* ---------------------------------------------------------------------
 * XML error body
 * ------------------------------------------------------------------- */

/* Copies the text of the first <name>...</name> into out, decoding the
 * predefined entities. Returns 1 when the element was found. */
static int xml_element(const char *body, size_t len, const char *name,
                       char *out) {
  char open[40], close[40];
  const char *start, *end, *p, *limit = body + len;
  size_t o = 0;

  snprintf(open, sizeof open, "<%s>", name);
  snprintf(close, sizeof close, "</%s>", name);
  out[0] = '\0';

  for (start = body; start < limit; start++)
    if ((size_t)(limit - start) >= strlen(open)
        && memcmp(start, open, strlen(open)) == 0)
      break;
  if (start >= limit)
    return 0;
  start += strlen(open);
  for (end = start; end < limit; end++)
    if ((size_t)(limit - end) >= strlen(close)
        && memcmp(end, close, strlen(close)) == 0)
      break;

  for (p = start; p < end && o + 1 < AC_OBS_FIELD_SIZE; p++) {
    static const char *const entities[][2] = {
      {"&lt;", "<"}, {"&gt;", ">"}, {"&amp;", "&"}, {"&quot;", "\""},
      {"&apos;", "'"},
    };
    size_t i, n;
    char c = *p;

    for (i = 0; c == '&' && i < 5; i++) {
      n = strlen(entities[i][0]);
      if ((size_t)(end - p) >= n && memcmp(p, entities[i][0], n) == 0) {
        c = entities[i][1][0];
        p += n - 1;
        break;
      }
    }
    out[o++] = ((unsigned char)c < 0x20 || c == 0x7F) ? ' ' : c;
  }
  out[o] = '\0';
  return 1;
}


int ac_obs_parse_error(const char *body, size_t len, ac_obs_error *e) {
  int found;

  /* A response without a body leaves the body buffer NULL. */
  if (body == NULL) {
    body = "";
    len = 0;
  }
  found = xml_element(body, len, "Code", e->code);

  xml_element(body, len, "Message", e->message);
  xml_element(body, len, "RequestId", e->request_id);
  return found;
}


/* Returns the media type for the extension of name, or NULL when the
 * extension is missing or unknown. */
static const char *type_of_extension(const char *name) {
  static const char *const types[][2] = {
    {".apk", "application/vnd.android.package-archive"},
    {".bin", "application/octet-stream"},
    {".csv", "text/csv"},
    {".gif", "image/gif"},
    {".gz", "application/gzip"},
    {".html", "text/html"},
    {".jpeg", "image/jpeg"},
    {".jpg", "image/jpeg"},
    {".json", "application/json"},
    {".mp4", "video/mp4"},
    {".pdf", "application/pdf"},
    {".png", "image/png"},
    {".tar", "application/x-tar"},
    {".txt", "text/plain"},
    {".xml", "application/xml"},
    {".zip", "application/zip"},
  };
  const char *dot = strrchr(name, '.');
  size_t i;

  if (dot != NULL && strchr(dot, '/') == NULL)
    for (i = 0; i < sizeof types / sizeof types[0]; i++)
      if (strcasecmp(dot, types[i][0]) == 0)
        return types[i][1];
  return NULL;
}


const char *ac_obs_content_type(const char *path, const char *key) {
  const char *type = path != NULL ? type_of_extension(path) : NULL;

  if (type == NULL)
    type = type_of_extension(key);
  return type != NULL ? type : "application/octet-stream";
}
