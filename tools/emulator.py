#!/usr/bin/env python3
"""Local emulator of the Workspace App Center "create bucket credential" API and of
the OBS upload that its credentials allow.

Serves POST /v1/{project_id}/app-center/buckets/actions/create-credential on a
loopback address, with token (X-Auth-Token) and AK/SK (SDK-HMAC-SHA256)
authentication. A second port is a test-only control interface for fault
injection, configuration, statistics and stored objects. A third port plays
OBS: it accepts PutObjects of the one object key that each issued credential
allows, signed with OBS's own signature, and stores the object. Python 3
standard library only.

Usage:
    python3 tools/emulator.py [--host 127.0.0.1] [--port 0] [--control-port 0]
        [--obs-port 0] [--credential-ttl 900]
        [--tls-cert FILE --tls-key FILE] [--token T ...] [--ak AK --sk SK ...]
        [--project-id P ...] [--max-seconds 900] [--verbose]
    python3 tools/emulator.py --self-test

When ready, the emulator prints one JSON line to stdout:
    {"url": "http://127.0.0.1:P", "control": "http://127.0.0.1:Q",
     "obs": "http://127.0.0.1:R", "server_end_point": "localhost:R", "pid": N}
It exits after --max-seconds, when its parent process exits, when stdout is a
pipe whose reading end is closed, and on SIGTERM. Stored objects are files in a
temporary directory, deleted on /reset and on every exit except SIGKILL.

Error codes sent by the API port. The APIGW codes are the API gateway's
published ones. The WKS codes are invented for this emulator in the style of
the service, so clients must not depend on their exact values.

    status  error_code     when
    400     APIGW.0201     malformed framing: bad Content-Length or chunk size
    401     APIGW.0301     AK/SK signature, date, access key, security token or
                           X-Project-Id check failed, or no credential at all
    401     APIGW.0307     X-Auth-Token is not one of the configured tokens
    404     APIGW.0101     unknown path
    413     APIGW.0201     request body larger than MAX_BODY_BYTES
    404     WKS.00040001   project id in the path is not configured
    400     WKS.00040002   Content-Type is not application/json
    400     WKS.00040003   body is not a UTF-8 JSON object
    400     WKS.00040004   file_name is missing or not a string
    400     WKS.00040005   file_name is empty or longer than 255 characters
    400     WKS.00040006   file_name contains a forbidden or control character
    405     WKS.00040007   method other than POST on the create-credential path

Error bodies have the form {"error_code", "error_msg", "request_id"}.

OBS port. Every credential names server_end_point "localhost:<OBS port>" and
the bucket appcenter-emulator-bucket. A request whose Host is
"<bucket>.localhost:<port>" names the bucket in virtual-host style; any other
Host means path style, /<bucket>/<key>. libcurl 7.85 and later resolves names
under localhost to the loopback address without DNS. A PUT is checked in this
order: Content-Length, Authorization "OBS <access>:<signature>", access key,
x-obs-security-token, expiry (--credential-ttl seconds after issue), date
(x-obs-date or Date, within 15 minutes), signature (HMAC-SHA1 over the string
to sign of obs_string_to_sign()), policy (PUT of the credential's one object
key, no sub-resource), then Content-MD5 after the body. "100 Continue" is sent
only after these checks pass, so a rejected client that waits for it sends no
body. Bodies stream to a file in 1 MiB pieces, hashed with MD5 and SHA-256 on
the way, so memory stays flat for any size up to the 5 GiB limit of one PUT.
Success is 200 with ETag "<md5 hex>" and an empty body.

    status  Code                   when
    400     BadRequest             invalid Content-Length
    400     EntityTooLarge         Content-Length above 5 GiB
    400     InvalidURI             no bucket in the URI
    400     InvalidDigest          Content-MD5 is not base64 of 16 bytes
    400     BadDigest              Content-MD5 does not match the body
    403     AccessDenied           no or malformed Authorization, no valid date,
                                   or a method, bucket, key or sub-resource
                                   that the credential's policy does not allow
    403     InvalidAccessKeyId     unknown access key; missing security token
                                   ("The security token is missing..."); a
                                   token of another credential ("The security
                                   token is invalid."); an expired credential
                                   ("The security token has expired...")
    403     RequestTimeTooSkewed   date more than max_skew_seconds (15 minutes
                                   by default) from server time
    403     SignatureDoesNotMatch  signature differs from the emulator's
    411     MissingContentLength   no Content-Length, or Transfer-Encoding

The codes are OBS's published ones. OBS documents InvalidAccessKeyId with
"The security token is invalid." for an expired token as well; the emulator's
own message for expiry contains "expired", so clients can tell the cases apart
here. Error bodies are XML, <Error><Code/><Message/><RequestId/><HostId/></Error>,
and every response has an x-obs-request-id header.

Control port (JSON in, JSON out):
    POST /faults   a fault object or a list of them, queued first in, first out
                   per target
    POST /config   {"delay_ms": N} delays every API request by N ms (0 clears);
                   {"credential_ttl": S} sets the lifetime of credentials issued
                   from now on, 0 to 86400 seconds (0 issues expired ones);
                   {"max_skew_seconds": S} sets how far X-Sdk-Date and
                   x-obs-date may be from the server time, 1 to 900 seconds
    GET  /stats    {"requests", "connections", "faults_pending", "last_request",
                    "obs_requests", "last_obs_request", "objects"}
    GET  /objects/<bucket>/<percent-encoded key>
                   {"bucket", "key", "size", "sha256", "md5", "etag",
                    "content_type", "content_md5"} of a stored object, or 404
    POST /reset    clears faults, config, counters, last requests and objects;
                   a request that started before it takes no fault and is not
                   recorded as the last request
    POST /sign     signs a described request with the emulator's own signer

Fault fields, checked by parse_fault():
    target                 "api" (default): create-credential requests;
                           "obs": requests to the OBS port, which take only
                           status, body, headers, delay_ms, drop, close,
                           times and after_body
    status, body, headers  send this response instead of the normal one. An
                           OBS status fault of 300 or more without a body sends
                           an XML error, e.g. ServiceUnavailable for 503
    after_body             OBS only: accept and read the whole body, then send
                           the status, as a server that fails at the end does
    delay_ms               sleep first, then apply the rest or answer normally
    drop                   close the connection without sending anything
    truncate               send a 200 whose Content-Length exceeds the body
    oversize_bytes         send a 200 JSON body of exactly N bytes
    slow_bytes_per_second  send the whole response at N bytes per second
    close                  close the connection after the response, without
                           a "Connection: close" header
    times                  number of requests to the target affected
"""

import argparse
import base64
import collections
import datetime
import email.utils
import hashlib
import hmac
import http
import http.client
import ipaddress
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import socketserver
import ssl
import stat
import string
import sys
import tempfile
import threading
import time
import unicodedata
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape as xml_escape

DEFAULT_TOKEN = "fake-token-for-tests"
DEFAULT_PROJECT_ID = "0123456789abcdef0123456789abcdef"
DEFAULT_AK = "FAKEAKFORTESTS000001"
DEFAULT_SK = "fake-sk-for-tests-0000000000000000000000"

BUCKET_NAME = "appcenter-emulator-bucket"

MAX_BODY_BYTES = 1024 * 1024
MAX_FILE_NAME_CHARS = 255
FORBIDDEN_FILE_NAME_CHARS = set(":^;|~`{}[]<>")
MAX_ISSUED_CREDENTIALS = 10000
MAX_QUEUED_FAULTS = 10000
MAX_FAULT_TIMES = 1000000
MAX_OVERSIZE_BYTES = 1024 * 1024 * 1024
SIGNATURE_MAX_SKEW_SECONDS = 15 * 60
HANDSHAKE_TIMEOUT_SECONDS = 10
STARTUP_TIMEOUT_SECONDS = 10

# Lifetime of issued credentials. Real temporary OBS credentials last from
# 15 minutes to 24 hours.
DEFAULT_CREDENTIAL_TTL_SECONDS = 900
MAX_CREDENTIAL_TTL_SECONDS = 24 * 3600
# OBS accepts at most 5 GiB in one PUT.
OBS_MAX_OBJECT_BYTES = 5 * 1024 * 1024 * 1024
OBS_MAX_STORED_OBJECTS = 1000
OBS_READ_CHUNK_BYTES = 1024 * 1024
# Bodies up to this size are read and dropped after an early error response,
# so the connection stays usable. Larger ones end the connection instead.
OBS_MAX_DISCARD_BYTES = 8 * 1024 * 1024
# After an error response that left the body unread, the emulator reads and
# drops what the client still sends for at most this long before closing. A
# close with unread input sends a reset, which can destroy the response before
# the client reads it.
OBS_LINGER_SECONDS = 2.0

SIGNING_ALGORITHM = "SDK-HMAC-SHA256"
SDK_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
CREATE_CREDENTIAL_PATH = re.compile(
    r"^/v1/([^/]+)/app-center/buckets/actions/create-credential$"
)

# Upper-case alphanumerics, as in the access keys of real temporary credentials.
ACCESS_KEY_ALPHABET = string.ascii_uppercase + string.digits
SECRET_KEY_ALPHABET = string.ascii_letters + string.digits


# ---------------------------------------------------------------------------
# SDK-HMAC-SHA256 signing, as implemented by the official Huawei Cloud SDKs
# (huaweicloud-sdk-python-v3 signer.py, huaweicloud-sdk-go-v3 signer.go).
# ---------------------------------------------------------------------------


def percent_encode(value):
    """Percent-encode a str or bytes, keeping only A-Z a-z 0-9 - . _ ~ as is."""
    return urllib.parse.quote(value, safe="")


def canonical_uri(raw_path):
    """Build the canonical URI of a path as sent on the wire.

    The path is percent-decoded, split on "/", each segment is encoded again
    and the result gets a trailing "/" when it has none.
    """
    segments = urllib.parse.unquote_to_bytes(raw_path).split(b"/")
    uri = "/".join(percent_encode(segment) for segment in segments)
    if not uri.endswith("/"):
        uri += "/"
    return uri


def canonical_query(raw_query):
    """Build the canonical query string: pairs sorted by name, then value."""
    pairs = urllib.parse.parse_qsl(raw_query, keep_blank_values=True)
    return "&".join(
        percent_encode(name) + "=" + percent_encode(value)
        for name, value in sorted(pairs)
    )


def header_bytes(value):
    # Values parsed by http.server are latin-1 decoded wire bytes. Values from
    # JSON (the /sign endpoint, the self-test) are text and are sent as UTF-8.
    if isinstance(value, bytes):
        return value
    return value.encode("utf-8")


def canonical_request(method, raw_path, raw_query, headers, signed_headers, body):
    """Build the canonical request as bytes.

    headers maps lower-case names to a list of values (str or bytes). Every
    name in signed_headers must be present. Repeated headers are joined with
    ",". body is the exact bytes sent.
    """
    lines = [
        method.upper().encode("ascii"),
        canonical_uri(raw_path).encode("ascii"),
        canonical_query(raw_query).encode("ascii"),
    ]
    header_lines = b""
    for name in signed_headers:
        values = [header_bytes(value).strip() for value in headers[name]]
        header_lines += name.encode("ascii") + b":" + b",".join(values) + b"\n"
    lines.append(header_lines)
    lines.append(";".join(signed_headers).encode("ascii"))
    content_sha256 = headers.get("x-sdk-content-sha256", [""])[0]
    if header_bytes(content_sha256).strip() == UNSIGNED_PAYLOAD.encode("ascii"):
        lines.append(UNSIGNED_PAYLOAD.encode("ascii"))
    else:
        lines.append(hashlib.sha256(body).hexdigest().encode("ascii"))
    return b"\n".join(lines)


def string_to_sign(sdk_date, canonical):
    digest = hashlib.sha256(canonical).hexdigest()
    return "%s\n%s\n%s" % (SIGNING_ALGORITHM, sdk_date, digest)


def compute_signature(secret_key, text_to_sign):
    """Return the lower-case hex HMAC-SHA256 of text_to_sign keyed with the SK."""
    return hmac.new(
        secret_key.encode("utf-8"), text_to_sign.encode("utf-8"), hashlib.sha256
    ).hexdigest()


def parse_authorization(value):
    """Parse "SDK-HMAC-SHA256 Access=..., SignedHeaders=..., Signature=...".

    Returns (access_key, signed_header_names, signature) or raises ValueError.
    """
    rest = value[len(SIGNING_ALGORITHM) :].strip()
    fields = {}
    for part in rest.split(","):
        name, separator, field_value = part.strip().partition("=")
        if not separator:
            raise ValueError("malformed Authorization field %r" % part.strip())
        fields[name.strip()] = field_value.strip()
    missing = [
        name
        for name in ("Access", "SignedHeaders", "Signature")
        if not fields.get(name)
    ]
    if missing:
        raise ValueError("Authorization header is missing %s" % ", ".join(missing))
    signed_headers = fields["SignedHeaders"].split(";")
    return fields["Access"], signed_headers, fields["Signature"]


def sign_request(
    method, target, headers, body, access_key, secret_key, signed_headers=None
):
    """Sign a request the way the SDKs do and return the signing details.

    target is the path with an optional "?query". headers maps names to str
    values and must contain X-Sdk-Date. signed_headers defaults to every
    header whose name has no "_", as the Python SDK does. Returns a dict with
    canonical_request, string_to_sign, signature and authorization.
    """
    raw_path, _, raw_query = target.partition("?")
    lowered = {name.lower(): [value] for name, value in headers.items()}
    if signed_headers is None:
        signed_headers = sorted(name for name in lowered if "_" not in name)
    canonical = canonical_request(
        method, raw_path, raw_query, lowered, signed_headers, body
    )
    text = string_to_sign(lowered["x-sdk-date"][0], canonical)
    signature = compute_signature(secret_key, text)
    authorization = "%s Access=%s, SignedHeaders=%s, Signature=%s" % (
        SIGNING_ALGORITHM,
        access_key,
        ";".join(signed_headers),
        signature,
    )
    return {
        "canonical_request": canonical.decode("utf-8", "replace"),
        "string_to_sign": text,
        "signature": signature,
        "authorization": authorization,
    }


# ---------------------------------------------------------------------------
# OBS signature (version 2, "OBS <access>:<signature>"), as described in the
# OBS API reference and implemented by huaweicloud-sdk-c-obs.
# ---------------------------------------------------------------------------


def obs_string_to_sign(method, headers, resource):
    """Build the OBS string to sign as bytes.

    headers maps lower-case names to a list of values (str or bytes).
    resource is the canonical resource: "/bucket/key" with the key as sent in
    the request URI, plus "?query" when there is one. The Date line is empty
    when x-obs-date is sent, and every x-obs-* header follows, sorted by name,
    as "name:value" with repeated values joined by ",".
    """

    def first(name):
        values = headers.get(name)
        return header_bytes(values[0]).strip() if values else b""

    date = b"" if "x-obs-date" in headers else first("date")
    lines = [
        method.upper().encode("ascii"),
        first("content-md5"),
        first("content-type"),
        date,
    ]
    text = b"\n".join(lines) + b"\n"
    for name in sorted(name for name in headers if name.startswith("x-obs-")):
        values = [header_bytes(value).strip() for value in headers[name]]
        text += name.encode("ascii") + b":" + b",".join(values) + b"\n"
    return text + resource.encode("latin-1")


def obs_signature(secret_key, text_to_sign):
    """Return the base64 HMAC-SHA1 of text_to_sign (bytes) keyed with the SK."""
    digest = hmac.new(secret_key.encode("utf-8"), text_to_sign, hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def redact_obs_string_to_sign(text):
    """Return the string to sign as text with the security token replaced by "***"."""
    lines = text.decode("latin-1").split("\n")
    for index, line in enumerate(lines):
        if line.startswith("x-obs-security-token:"):
            lines[index] = "x-obs-security-token:***"
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Shared state of both ports
# ---------------------------------------------------------------------------


IssuedCredential = collections.namedtuple(
    "IssuedCredential", "secret security_token bucket object_path expires_at"
)

StoredObject = collections.namedtuple(
    "StoredObject", "path size sha256 md5 content_type content_md5"
)

FAULT_TARGETS = ("api", "obs")


class EmulatorState:
    """Configuration, fault queues, counters, issued credentials and stored objects, behind one lock."""

    def __init__(
        self,
        tokens,
        key_pairs,
        project_ids,
        deadline,
        verbose,
        credential_ttl=DEFAULT_CREDENTIAL_TTL_SECONDS,
        object_dir=None,
    ):
        self.tokens = list(tokens)
        self.key_pairs = dict(key_pairs)
        self.project_ids = set(project_ids)
        self.deadline = deadline
        self.verbose = verbose
        self.default_credential_ttl = credential_ttl
        # Uploaded objects live here as files. None: a temporary directory that
        # close() deletes with everything in it.
        self.object_dir = object_dir or tempfile.mkdtemp(
            prefix="appcenter-emulator-objects-"
        )
        self.owns_object_dir = object_dir is None
        # "localhost:<OBS port>", set once the OBS port is bound.
        self.server_end_point = None
        self.lock = threading.Lock()
        self.issued = collections.OrderedDict()
        self.objects = collections.OrderedDict()
        # The number of resets. Each request keeps the value it started with,
        # so a request that outlives a reset takes no fault and records nothing.
        self.generation = 0
        self.reset()

    def reset(self):
        with self.lock:
            self.generation += 1
            self.faults = {target: collections.deque() for target in FAULT_TARGETS}
            self.config = {
                "delay_ms": 0,
                "credential_ttl": self.default_credential_ttl,
                "max_skew_seconds": SIGNATURE_MAX_SKEW_SECONDS,
            }
            self.requests = 0
            self.connections = 0
            self.last_request = None
            self.obs_requests = 0
            self.last_obs_request = None
            stored = list(self.objects.values())
            self.objects.clear()
        for item in stored:
            remove_file(item.path)

    def count_connection(self):
        with self.lock:
            self.connections += 1

    def count_request(self):
        """Count an API request that starts now and return the current generation."""
        with self.lock:
            self.requests += 1
            return self.generation

    def record_request(self, record, generation):
        with self.lock:
            if generation == self.generation:
                self.last_request = record

    def record_obs_request(self, record):
        """Count and record an OBS request that starts now and return the current generation."""
        with self.lock:
            self.obs_requests += 1
            self.last_obs_request = record
            return self.generation

    def set_last_canonical_request(self, canonical, generation):
        with self.lock:
            if generation == self.generation and self.last_request is not None:
                self.last_request["canonical_request"] = canonical

    def add_faults(self, faults):
        with self.lock:
            if self._faults_pending() + len(faults) > MAX_QUEUED_FAULTS:
                raise ValueError(
                    "fault queue is full (%d entries), so POST /reset before adding more"
                    % MAX_QUEUED_FAULTS
                )
            for fault in faults:
                self.faults[fault["target"]].append(
                    {"fault": fault, "remaining": fault["times"]}
                )
            return self._faults_pending()

    def pop_fault(self, target, generation):
        """Return the fault for a request to target, or None when none is queued.

        A request that started before the last reset gets None, so that a
        request a test abandoned cannot take a fault queued for a later test.
        """
        with self.lock:
            queue = self.faults[target]
            if generation != self.generation or not queue:
                return None
            entry = queue[0]
            entry["remaining"] -= 1
            if entry["remaining"] <= 0:
                queue.popleft()
            return entry["fault"]

    def _faults_pending(self):
        return sum(
            entry["remaining"] for queue in self.faults.values() for entry in queue
        )

    def update_config(self, changes):
        with self.lock:
            self.config.update(changes)
            return dict(self.config)

    def delay_seconds(self):
        with self.lock:
            return self.config["delay_ms"] / 1000.0

    def max_skew_seconds(self):
        with self.lock:
            return self.config["max_skew_seconds"]

    def stats(self):
        with self.lock:
            return {
                "requests": self.requests,
                "connections": self.connections,
                "faults_pending": self._faults_pending(),
                "last_request": dict(self.last_request) if self.last_request else None,
                "obs_requests": self.obs_requests,
                "last_obs_request": (
                    dict(self.last_obs_request) if self.last_obs_request else None
                ),
                "objects": len(self.objects),
            }

    def remember_credential(self, access, secret, security_token, object_path):
        """Store an issued credential, which expires credential_ttl seconds from now."""
        with self.lock:
            expires_at = time.monotonic() + self.config["credential_ttl"]
            self.issued[access] = IssuedCredential(
                secret, security_token, BUCKET_NAME, object_path, expires_at
            )
            while len(self.issued) > MAX_ISSUED_CREDENTIALS:
                self.issued.popitem(last=False)

    def find_issued_credential(self, access):
        """Return the IssuedCredential of a temporary access key, or None."""
        with self.lock:
            return self.issued.get(access)

    def new_object_file(self):
        """Create and open an empty file for an incoming object body."""
        return tempfile.NamedTemporaryFile(
            dir=self.object_dir, prefix="upload-", delete=False
        )

    def store_object(self, bucket, key, stored):
        """Make stored (whose file is complete) the object bucket/key, replacing an older one."""
        with self.lock:
            replaced = self.objects.pop((bucket, key), None)
            self.objects[(bucket, key)] = stored
            evicted = []
            while len(self.objects) > OBS_MAX_STORED_OBJECTS:
                evicted.append(self.objects.popitem(last=False)[1])
        for item in [replaced] + evicted:
            if item is not None:
                remove_file(item.path)

    def find_object(self, bucket, key):
        with self.lock:
            return self.objects.get((bucket, key))

    def close(self):
        """Delete every stored object, and the object directory when the emulator created it."""
        self.reset()
        if self.owns_object_dir:
            shutil.rmtree(self.object_dir, ignore_errors=True)

    def log(self, message):
        if self.verbose:
            sys.stderr.write("emulator: %s\n" % message)
            sys.stderr.flush()


def remove_file(path):
    try:
        os.remove(path)
    except OSError:
        pass


# ---------------------------------------------------------------------------
# Validation of control-port input
# ---------------------------------------------------------------------------

FAULT_FIELDS = {
    "status",
    "body",
    "headers",
    "delay_ms",
    "drop",
    "truncate",
    "oversize_bytes",
    "slow_bytes_per_second",
    "close",
    "times",
    "target",
    "after_body",
}
EXCLUSIVE_FAULT_FIELDS = ("status", "drop", "truncate", "oversize_bytes")
OBS_FAULT_FIELDS = {
    "status",
    "body",
    "headers",
    "delay_ms",
    "drop",
    "close",
    "times",
    "target",
    "after_body",
}


def require_integer(obj, name, minimum, maximum):
    value = obj[name]
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value != int(value)
    ):
        raise ValueError("%s must be an integer, got %r" % (name, value))
    value = int(value)
    if not minimum <= value <= maximum:
        raise ValueError(
            "%s must be between %d and %d, got %d" % (name, minimum, maximum, value)
        )
    return value


def require_boolean(obj, name):
    if not isinstance(obj[name], bool):
        raise ValueError("%s must be true or false, got %r" % (name, obj[name]))
    return obj[name]


def parse_fault(obj, max_delay_ms):
    """Validate one fault object and return it with defaults filled in.

    Raises ValueError naming the offending field, so that a typo in a test
    fails at once instead of silently queuing a fault that does nothing.
    """
    if not isinstance(obj, dict):
        raise ValueError("a fault must be a JSON object, got %r" % (obj,))
    unknown = sorted(set(obj) - FAULT_FIELDS)
    if unknown:
        raise ValueError(
            "unknown fault field(s) %s. Known fields: %s"
            % (", ".join(unknown), ", ".join(sorted(FAULT_FIELDS)))
        )
    kinds = [
        name
        for name in EXCLUSIVE_FAULT_FIELDS
        if name in obj and obj[name] is not False
    ]
    if len(kinds) > 1:
        raise ValueError(
            "a fault may use only one of %s, got %s"
            % (", ".join(EXCLUSIVE_FAULT_FIELDS), ", ".join(kinds))
        )

    target = obj.get("target", "api")
    if target not in FAULT_TARGETS:
        raise ValueError(
            "target must be one of %s, got %r" % (", ".join(FAULT_TARGETS), target)
        )
    if target == "obs":
        unsupported = sorted(set(obj) - OBS_FAULT_FIELDS)
        if unsupported:
            raise ValueError(
                "fault field(s) %s do not apply to target obs. Its fields: %s"
                % (", ".join(unsupported), ", ".join(sorted(OBS_FAULT_FIELDS)))
            )
    elif "after_body" in obj:
        raise ValueError("after_body applies only to target obs")

    fault = {
        "target": target,
        "times": 1,
        "delay_ms": 0,
        "drop": False,
        "truncate": False,
        "close": False,
    }
    if "times" in obj:
        fault["times"] = require_integer(obj, "times", 1, MAX_FAULT_TIMES)
    if "delay_ms" in obj:
        fault["delay_ms"] = require_integer(obj, "delay_ms", 0, max_delay_ms)
    for name in ("drop", "truncate", "close", "after_body"):
        if name in obj:
            fault[name] = require_boolean(obj, name)
    if fault.get("after_body") and "status" not in obj:
        raise ValueError("after_body requires status")
    if "status" in obj:
        fault["status"] = require_integer(obj, "status", 200, 599)
    if "body" in obj:
        if "status" not in obj:
            raise ValueError("body requires status")
        if not isinstance(obj["body"], str):
            raise ValueError("body must be a string, got %r" % (obj["body"],))
        fault["body"] = obj["body"]
    if "headers" in obj:
        fault["headers"] = parse_fault_headers(obj["headers"])
    if "oversize_bytes" in obj:
        fault["oversize_bytes"] = require_integer(
            obj, "oversize_bytes", 0, MAX_OVERSIZE_BYTES
        )
    if "slow_bytes_per_second" in obj:
        fault["slow_bytes_per_second"] = require_integer(
            obj, "slow_bytes_per_second", 1, 1 << 30
        )
    if fault["drop"] and (
        fault.get("headers") or fault.get("slow_bytes_per_second") or fault["close"]
    ):
        raise ValueError(
            "drop sends no response, so headers, slow_bytes_per_second and close do not apply"
        )
    return fault


def parse_fault_headers(headers):
    """Return a list of (name, value) pairs. A value of null or false removes a default header."""
    if not isinstance(headers, dict):
        raise ValueError("headers must be a JSON object, got %r" % (headers,))
    pairs = []
    for name, value in headers.items():
        if not name or any(ch in name for ch in " :\r\n"):
            raise ValueError("invalid header name %r" % name)
        if value is None or value is False:
            pairs.append((name, None))
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = str(value)
            if "\r" in value or "\n" in value:
                raise ValueError("header %s must not contain CR or LF" % name)
            pairs.append((name, value))
        else:
            raise ValueError(
                "header %s must be a string, number, null or false, got %r"
                % (name, value)
            )
    return pairs


def parse_config(obj, max_delay_ms):
    if not isinstance(obj, dict):
        raise ValueError("config must be a JSON object, got %r" % (obj,))
    unknown = sorted(set(obj) - {"delay_ms", "credential_ttl", "max_skew_seconds"})
    if unknown:
        raise ValueError(
            "unknown config key(s) %s. Known keys: credential_ttl, delay_ms, "
            "max_skew_seconds" % ", ".join(unknown)
        )
    changes = {}
    if "delay_ms" in obj:
        changes["delay_ms"] = require_integer(obj, "delay_ms", 0, max_delay_ms)
    if "credential_ttl" in obj:
        changes["credential_ttl"] = require_integer(
            obj, "credential_ttl", 0, MAX_CREDENTIAL_TTL_SECONDS
        )
    if "max_skew_seconds" in obj:
        changes["max_skew_seconds"] = require_integer(
            obj, "max_skew_seconds", 1, SIGNATURE_MAX_SKEW_SECONDS
        )
    return changes


# ---------------------------------------------------------------------------
# HTTP plumbing shared by both ports
# ---------------------------------------------------------------------------


class RequestError(Exception):
    """An error that ends request handling with a JSON error response."""

    def __init__(self, status, error_code, error_msg, close=False):
        super().__init__(error_msg)
        self.status = status
        self.error_code = error_code
        self.error_msg = error_msg
        self.close = close


class JsonRequestHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler that writes every response with Content-Length."""

    protocol_version = "HTTP/1.1"
    # Sets TCP_NODELAY, so that a response written in several pieces is not held
    # back by Nagle's algorithm until the client's delayed ACK (about 40 ms).
    disable_nagle_algorithm = True
    server_version = "api-gateway"
    sys_version = ""

    def setup(self):
        self.timeout = self.server.idle_timeout
        super().setup()

    def handle(self):
        try:
            super().handle()
        except (ConnectionError, ssl.SSLError, TimeoutError) as error:
            self.server.state.log(
                "connection from %s ended: %s" % (self.client_address[0], error)
            )

    def log_message(self, format, *args):
        self.server.state.log(format % args)

    def read_body(self):
        """Read the request body, honouring Content-Length or chunked encoding.

        Raises RequestError with 413 above MAX_BODY_BYTES and with 400 on
        malformed framing. Both close the connection, because the rest of the
        body is left unread.
        """
        transfer_encoding = self.headers.get("Transfer-Encoding")
        if transfer_encoding is not None:
            if transfer_encoding.strip().lower() != "chunked":
                raise RequestError(
                    400,
                    "APIGW.0201",
                    "Unsupported Transfer-Encoding %r" % transfer_encoding,
                    close=True,
                )
            return self.read_chunked_body()
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        try:
            length = int(length_header.strip())
        except ValueError:
            length = -1
        if length < 0:
            raise RequestError(
                400,
                "APIGW.0201",
                "Invalid Content-Length %r" % length_header,
                close=True,
            )
        if length > MAX_BODY_BYTES:
            raise RequestError(
                413,
                "APIGW.0201",
                "Request entity too large: %d bytes, maximum %d"
                % (length, MAX_BODY_BYTES),
                close=True,
            )
        body = self.rfile.read(length)
        if len(body) != length:
            raise ConnectionError(
                "client closed the connection inside the request body"
            )
        return body

    def read_chunked_body(self):
        chunks = []
        total = 0
        while True:
            size_line = self.rfile.readline(1024)
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise RequestError(
                    400,
                    "APIGW.0201",
                    "Invalid chunk size line %r" % size_line[:40],
                    close=True,
                )
            if size < 0:
                raise RequestError(
                    400, "APIGW.0201", "Invalid chunk size %d" % size, close=True
                )
            total += size
            if total > MAX_BODY_BYTES:
                raise RequestError(
                    413,
                    "APIGW.0201",
                    "Request entity too large: more than %d bytes" % MAX_BODY_BYTES,
                    close=True,
                )
            if size == 0:
                break
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise ConnectionError("client closed the connection inside a chunk")
            chunks.append(chunk)
            self.rfile.readline(1024)
        # Trailer fields end with an empty line. At most 100 of them are skipped.
        for _ in range(100):
            line = self.rfile.readline(8192)
            if line in (b"\r\n", b"\n", b""):
                break
        return b"".join(chunks)

    def build_head(self, status, headers):
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        lines = ["HTTP/1.1 %d %s" % (status, reason)]
        lines.extend("%s: %s" % (name, value) for name, value in headers)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def default_headers(self, request_id, body_length, content_type):
        headers = [
            ("Server", self.server_version),
            ("Date", email.utils.formatdate(usegmt=True)),
            ("X-Request-Id", request_id),
        ]
        if content_type is not None:
            headers.append(("Content-Type", content_type))
        headers.append(("Content-Length", str(body_length)))
        if self.close_connection:
            headers.append(("Connection", "close"))
        return headers

    def send_json(self, status, obj, request_id):
        body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self.send_bytes(
            status,
            body,
            self.default_headers(
                request_id, len(body), "application/json;charset=UTF-8"
            ),
        )

    def send_bytes(self, status, body, headers, rate=None):
        head = self.build_head(status, headers)
        if self.command == "HEAD":
            body = b""
        write_slowly(self.wfile, [head + body], rate)
        self.log_message('"%s" %d %d', self.requestline, status, len(body))

    def send_error(self, code, message=None, explain=None):
        # Replaces http.server's HTML error page for malformed requests.
        self.close_connection = True
        try:
            phrase = http.HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        self.send_json(
            code,
            {"error_code": "APIGW.0201", "error_msg": message or phrase},
            secrets.token_hex(16),
        )


def write_slowly(stream, chunks, rate):
    """Write byte chunks to stream, at most rate bytes per second when rate is set."""
    if rate is None:
        for chunk in chunks:
            stream.write(chunk)
        stream.flush()
        return
    piece = max(1, rate // 10)
    interval = piece / rate
    for chunk in chunks:
        for offset in range(0, len(chunk), piece):
            stream.write(chunk[offset : offset + piece])
            stream.flush()
            time.sleep(interval)


def read_json_body(handler):
    body = handler.read_body()
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise RequestError(
            400, "INVALID_JSON", "request body is not valid JSON: %s" % error
        )


# ---------------------------------------------------------------------------
# API port
# ---------------------------------------------------------------------------


class ApiHandler(JsonRequestHandler):
    """The App Center API: create-credential plus 404 and 405 for everything else."""

    def parse_request(self):
        valid = super().parse_request()
        if valid:
            self.generation = self.server.state.count_request()
        return valid

    def do_POST(self):
        self.handle_api_request()

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_POST

    def handle_api_request(self):
        state = self.server.state
        request_id = secrets.token_hex(16)
        delay = state.delay_seconds()
        if delay > 0:
            time.sleep(delay)

        try:
            body = self.read_body()
        except RequestError as error:
            self.close_connection = self.close_connection or error.close
            self.send_error_response(error, request_id)
            return

        raw_target = self.path
        if raw_target.startswith(("http://", "https://")):
            parts = urllib.parse.urlsplit(raw_target)
            raw_target = parts.path + ("?" + parts.query if parts.query else "")
        raw_path, _, raw_query = raw_target.partition("?")
        state.record_request(
            {
                "method": self.command,
                "path": raw_target,
                "headers": {
                    name.lower(): value for name, value in self.headers.items()
                },
                "body": body.decode("utf-8", "replace"),
                "canonical_request": None,
            },
            self.generation,
        )

        route = CREATE_CREDENTIAL_PATH.match(raw_path)
        if route is None:
            error = RequestError(
                404,
                "APIGW.0101",
                "The API does not exist or has not been published in the environment",
            )
            self.send_error_response(error, request_id)
            return

        fault = state.pop_fault("api", self.generation)
        if fault is not None:
            if fault["delay_ms"]:
                time.sleep(fault["delay_ms"] / 1000.0)
            if self.apply_terminal_fault(fault, request_id):
                return

        try:
            status, obj = self.create_credential(
                route.group(1), raw_path, raw_query, body
            )
        except RequestError as error:
            status, obj = error.status, error_body(error, request_id)
        self.send_api_response(status, obj, request_id, fault)

    def create_credential(self, project_id, raw_path, raw_query, body):
        """Check the method, authentication, project and body and return (status, JSON object)."""
        if self.command != "POST":
            raise RequestError(
                405,
                "WKS.00040007",
                "Method %s is not allowed. Use POST." % self.command,
            )
        self.authenticate(project_id, raw_path, raw_query, body)
        if project_id not in self.server.state.project_ids:
            raise RequestError(
                404, "WKS.00040001", "The project %s does not exist" % project_id
            )
        file_name = validate_body(self.headers.get("Content-Type"), body)
        return 200, self.issue_credential(file_name)

    def issue_credential(self, file_name):
        object_path = "app-file/%s/%s" % (secrets.token_hex(16), file_name)
        access = "".join(secrets.choice(ACCESS_KEY_ALPHABET) for _ in range(20))
        secret = "".join(secrets.choice(SECRET_KEY_ALPHABET) for _ in range(40))
        security_token = base64.b64encode(secrets.token_bytes(450)).decode("ascii")
        state = self.server.state
        state.remember_credential(access, secret, security_token, object_path)
        return success_body(
            state.server_end_point, object_path, access, secret, security_token
        )

    def authenticate(self, project_id, raw_path, raw_query, body):
        """Check AK/SK signing or X-Auth-Token and raise RequestError(401) on failure."""
        authorization = self.headers.get("Authorization", "")
        if authorization.startswith(SIGNING_ALGORITHM):
            self.verify_signature(authorization, project_id, raw_path, raw_query, body)
            return
        token = self.headers.get("X-Auth-Token")
        if token is None:
            raise RequestError(
                401,
                "APIGW.0301",
                "Incorrect IAM authentication information: x-auth-token not found",
            )
        if not any(
            hmac.compare_digest(token.encode("latin-1"), known.encode("utf-8"))
            for known in self.server.state.tokens
        ):
            raise RequestError(401, "APIGW.0307", "The token must be updated.")

    def verify_signature(self, authorization, project_id, raw_path, raw_query, body):
        state = self.server.state

        def reject(reason):
            state.log("AK/SK check failed: %s" % reason)
            raise RequestError(
                401,
                "APIGW.0301",
                "Incorrect IAM authentication information: %s" % reason,
            )

        try:
            access_key, signed_headers, signature = parse_authorization(authorization)
        except ValueError as error:
            reject(str(error))

        headers = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value.encode("latin-1"))
        missing = [name for name in signed_headers if name not in headers]
        if missing:
            reject(
                "signed header(s) %s not present in the request" % ", ".join(missing)
            )
        if "x-sdk-date" not in signed_headers:
            reject("x-sdk-date must be a signed header")
        sdk_date = self.headers["X-Sdk-Date"].strip()
        try:
            signed_at = datetime.datetime.strptime(sdk_date, SDK_DATE_FORMAT).replace(
                tzinfo=datetime.timezone.utc
            )
        except ValueError:
            reject("invalid X-Sdk-Date %r, expected YYYYMMDDTHHMMSSZ" % sdk_date)
        skew = abs(
            (datetime.datetime.now(datetime.timezone.utc) - signed_at).total_seconds()
        )
        max_skew = state.max_skew_seconds()
        if skew > max_skew:
            reject(
                "X-Sdk-Date %s is %d seconds from the server time, more than %d"
                % (sdk_date, skew, max_skew)
            )

        secret_key = state.key_pairs.get(access_key)
        security_token = self.headers.get("X-Security-Token")
        if secret_key is not None:
            if security_token is not None:
                reject("X-Security-Token sent with a permanent access key")
        else:
            issued = state.find_issued_credential(access_key)
            if issued is None:
                reject("unknown access key %s" % access_key)
            secret_key, issued_token = issued.secret, issued.security_token
            if security_token is None:
                reject(
                    "temporary access key %s needs the X-Security-Token header"
                    % access_key
                )
            if "x-security-token" not in signed_headers:
                reject("x-security-token must be a signed header")
            if not hmac.compare_digest(
                security_token.strip().encode("latin-1"), issued_token.encode("ascii")
            ):
                reject("X-Security-Token does not belong to access key %s" % access_key)

        project_header = self.headers.get("X-Project-Id")
        # NOTE: the emulator requires X-Project-Id with AK/SK because the SDKs send it for
        # project-scoped APIs. The real gateway's error for a missing header is unverified.
        if project_header is None:
            reject("the X-Project-Id header is missing")
        if project_header.strip() != project_id:
            reject(
                "X-Project-Id %r does not match the project id %r in the path"
                % (project_header.strip(), project_id)
            )

        canonical = canonical_request(
            self.command, raw_path, raw_query, headers, signed_headers, body
        )
        state.set_last_canonical_request(
            canonical.decode("utf-8", "replace"), self.generation
        )
        expected = compute_signature(secret_key, string_to_sign(sdk_date, canonical))
        if not hmac.compare_digest(expected, signature):
            state.log(
                "canonical request was:\n%s" % redact_canonical_request(canonical)
            )
            reject("verify aksk signature fail")

    def send_error_response(self, error, request_id):
        self.send_json(error.status, error_body(error, request_id), request_id)

    def send_api_response(self, status, obj, request_id, fault):
        body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        headers = self.default_headers(
            request_id, len(body), "application/json;charset=UTF-8"
        )
        rate = None
        if fault is not None:
            headers = merge_headers(headers, fault.get("headers", []))
            rate = fault.get("slow_bytes_per_second")
        self.send_bytes(status, body, headers, rate)
        # A "close" fault ends the connection after a response that did not announce it.
        if fault is not None and fault["close"]:
            self.close_connection = True

    def apply_terminal_fault(self, fault, request_id):
        """Send the fault's own response if it has one, and return whether it did."""
        rate = fault.get("slow_bytes_per_second")
        if fault["drop"]:
            self.close_connection = True
            self.log_message('"%s" dropped by fault', self.requestline)
            return True
        if fault["truncate"]:
            body = json.dumps(
                success_body(
                    self.server.state.server_end_point,
                    "app-file/truncated/x",
                    "A" * 20,
                    "s" * 40,
                    "t" * 600,
                )
            ).encode("utf-8")
            headers = self.default_headers(
                request_id, len(body) + 100, "application/json;charset=UTF-8"
            )
            headers = merge_headers(headers, fault.get("headers", []))
            self.close_connection = True
            self.send_bytes(200, body[: len(body) // 2], headers, rate)
            return True
        if "oversize_bytes" in fault:
            size = fault["oversize_bytes"]
            headers = self.default_headers(
                request_id, size, "application/json;charset=UTF-8"
            )
            headers = merge_headers(headers, fault.get("headers", []))
            write_slowly(self.wfile, [self.build_head(200, headers)], rate)
            if self.command != "HEAD":
                write_slowly(self.wfile, oversize_chunks(size), rate)
            self.log_message('"%s" 200 %d (oversize fault)', self.requestline, size)
            self.close_connection = self.close_connection or fault["close"]
            return True
        if "status" in fault:
            body = fault.get("body", "").encode("utf-8")
            content_type = "application/json;charset=UTF-8" if body else None
            headers = self.default_headers(request_id, len(body), content_type)
            headers = merge_headers(headers, fault.get("headers", []))
            self.send_bytes(fault["status"], body, headers, rate)
            self.close_connection = self.close_connection or fault["close"]
            return True
        return False


def redact_canonical_request(canonical):
    """Return the canonical request as text with token header values replaced by "***"."""
    lines = canonical.decode("utf-8", "replace").split("\n")
    for index, line in enumerate(lines):
        name, separator, _ = line.partition(":")
        if separator and name in ("x-security-token", "x-auth-token"):
            lines[index] = name + ":***"
    return "\n".join(lines)


def error_body(error, request_id):
    return {
        "error_code": error.error_code,
        "error_msg": error.error_msg,
        "request_id": request_id,
    }


def success_body(server_end_point, object_path, access, secret, security_token):
    return {
        "server_end_point": server_end_point,
        "bucket_name": BUCKET_NAME,
        "object_path": object_path,
        "policy": {
            "version": "1.1",
            "statement": {
                "effect": "Allow",
                "action": ["obs:object:PutObject"],
                "resource": ["obs:*:*:object:%s/%s" % (BUCKET_NAME, object_path)],
            },
        },
        "credential": {
            "access": access,
            "secret": secret,
            "security_token": security_token,
        },
    }


def merge_headers(defaults, overrides):
    """Replace default headers by name, ignoring case. An override of None removes the header."""
    override_names = {name.lower() for name, _ in overrides}
    merged = [
        (name, value) for name, value in defaults if name.lower() not in override_names
    ]
    merged.extend((name, value) for name, value in overrides if value is not None)
    return merged


def oversize_chunks(size, piece=64 * 1024):
    """Yield a JSON object of exactly size bytes, {"padding":"xxx..."}, in pieces."""
    prefix, suffix = b'{"padding":"', b'"}'
    if size < len(prefix) + len(suffix):
        yield b"x" * size
        return
    yield prefix
    remaining = size - len(prefix) - len(suffix)
    while remaining > 0:
        count = min(piece, remaining)
        yield b"x" * count
        remaining -= count
    yield suffix


def validate_body(content_type, body):
    """Return the file_name of a valid request body, or raise RequestError(400)."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise RequestError(
            400,
            "WKS.00040002",
            "Content-Type must be application/json, got %r" % content_type,
        )
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise RequestError(
            400, "WKS.00040003", "The request body is not valid JSON: %s" % error
        )
    if not isinstance(obj, dict):
        raise RequestError(
            400, "WKS.00040003", "The request body must be a JSON object"
        )
    file_name = obj.get("file_name")
    if not isinstance(file_name, str):
        raise RequestError(400, "WKS.00040004", "file_name is missing or not a string")
    if not 1 <= len(file_name) <= MAX_FILE_NAME_CHARS:
        raise RequestError(
            400,
            "WKS.00040005",
            "file_name must have 1 to %d characters, got %d"
            % (MAX_FILE_NAME_CHARS, len(file_name)),
        )
    for ch in file_name:
        if ch in FORBIDDEN_FILE_NAME_CHARS:
            raise RequestError(
                400,
                "WKS.00040006",
                "file_name contains the forbidden character %r. The characters :^;|~`{}[]<> are not allowed"
                % ch,
            )
        if unicodedata.category(ch) in ("Cc", "Cs"):
            raise RequestError(
                400,
                "WKS.00040006",
                "file_name contains the control character U+%04X" % ord(ch),
            )
    return file_name


# ---------------------------------------------------------------------------
# OBS port
# ---------------------------------------------------------------------------


class ObsError(Exception):
    """An error that ends OBS request handling with an XML error response."""

    def __init__(self, status, code, message):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


ObsTarget = collections.namedtuple("ObsTarget", "bucket key resource query")

# Codes for the XML body of an OBS status fault that brings no body of its own.
OBS_FAULT_CODES = {
    400: "BadRequest",
    403: "AccessDenied",
    404: "NoSuchKey",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def obs_error_body(code, message, request_id):
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<Error><Code>%s</Code><Message>%s</Message>"
        "<RequestId>%s</RequestId><HostId>%s</HostId></Error>"
        % (
            xml_escape(code),
            xml_escape(message),
            xml_escape(request_id),
            obs_host_id(request_id),
        )
    ).encode("utf-8")


def obs_host_id(request_id):
    return base64.b64encode(hashlib.sha256(request_id.encode("ascii")).digest()).decode(
        "ascii"
    )


def new_obs_request_id():
    """Return an id in the form of OBS's: 32 upper-case hexadecimal digits."""
    return secrets.token_hex(16).upper()


class ObsHandler(JsonRequestHandler):
    """PUT Object with the issued credentials: signature, token, expiry and policy checks.

    Every method reaches handle_obs_request(). Only a PUT of the object that a
    credential's policy names is stored; everything else gets an OBS error.
    """

    server_version = "OBS"

    def parse_request(self):
        self.expects_continue = False
        self.sent_continue = False
        return super().parse_request()

    def handle_expect_100(self):
        # http.server sends "100 Continue" here at once. The emulator sends it
        # only after the checks passed, as OBS does, so that a rejected client
        # never sends the body.
        self.expects_continue = True
        return True

    def do_PUT(self):
        self.handle_obs_request()

    do_GET = do_POST = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = do_PUT

    def handle_obs_request(self):
        state = self.server.state
        request_id = new_obs_request_id()
        self.body_length = None
        self.body_done = False
        self.linger = False
        generation = state.record_obs_request(
            {
                "method": self.command,
                "path": self.path,
                "headers": {
                    name.lower(): value for name, value in self.headers.items()
                },
            }
        )

        try:
            self.body_length = self.request_body_length()
        except ObsError as error:
            self.send_obs_error(error, request_id)
            return

        fault = state.pop_fault("obs", generation)
        if fault is not None:
            if fault["delay_ms"]:
                time.sleep(fault["delay_ms"] / 1000.0)
            if self.apply_obs_fault(fault, request_id):
                return

        try:
            target = self.parse_target()
            credential = self.authenticate(target)
            self.authorize(credential, target)
            etag = self.receive_object(target)
        except ObsError as error:
            self.send_obs_error(error, request_id)
            return

        headers = self.obs_headers(request_id, 0, None) + [("ETag", etag)]
        if fault is not None:
            headers = merge_headers(headers, fault.get("headers", []))
        self.send_bytes(200, b"", headers)
        if fault is not None and fault["close"]:
            self.close_connection = True

    def request_body_length(self):
        """Return the Content-Length, or raise ObsError when it is missing, invalid or too large."""
        if self.headers.get("Transfer-Encoding") is not None:
            raise ObsError(
                411,
                "MissingContentLength",
                "You must provide the Content-Length HTTP header instead of Transfer-Encoding.",
            )
        value = self.headers.get("Content-Length")
        if value is None:
            if self.command == "PUT":
                raise ObsError(
                    411,
                    "MissingContentLength",
                    "You must provide the Content-Length HTTP header.",
                )
            return 0
        value = value.strip()
        if not value.isdigit():
            raise ObsError(400, "BadRequest", "Invalid Content-Length %r." % value)
        length = int(value)
        if length > OBS_MAX_OBJECT_BYTES:
            self.body_length = length
            raise ObsError(
                400,
                "EntityTooLarge",
                "Your proposed upload of %d bytes exceeds the maximum of %d bytes for one PUT."
                % (length, OBS_MAX_OBJECT_BYTES),
            )
        return length

    def parse_target(self):
        """Return the bucket, the decoded key and the canonical resource of the request URI.

        A Host of "<bucket>.<server_end_point>" names the bucket (virtual-host
        style). Any other Host means path style, "/<bucket>/<key>".
        """
        raw_target = self.path
        if raw_target.startswith(("http://", "https://")):
            parts = urllib.parse.urlsplit(raw_target)
            raw_target = parts.path + ("?" + parts.query if parts.query else "")
        raw_path, _, raw_query = raw_target.partition("?")
        if not raw_path.startswith("/"):
            raise ObsError(400, "InvalidURI", "Could not parse the specified URI.")
        host = (self.headers.get("Host") or "").strip().lower()
        suffix = "." + self.server.state.server_end_point
        if host.endswith(suffix) and len(host) > len(suffix):
            bucket = host[: -len(suffix)]
            raw_key = raw_path[1:]
        else:
            bucket, _, raw_key = raw_path[1:].partition("/")
        if not bucket:
            raise ObsError(400, "InvalidURI", "Could not parse the specified URI.")
        resource = "/%s/%s" % (bucket, raw_key)
        if raw_query:
            resource += "?" + raw_query
        key = urllib.parse.unquote(raw_key, errors="replace")
        return ObsTarget(bucket, key, resource, raw_query)

    def authenticate(self, target):
        """Check the access key, security token, expiry, date and signature; return the credential."""
        state = self.server.state
        authorization = self.headers.get("Authorization")
        if authorization is None:
            raise ObsError(
                403,
                "AccessDenied",
                "Anonymous access is forbidden for this operation. Sign the request with the issued access key.",
            )
        match = re.fullmatch(r"OBS ([^:\s]+):(\S+)", authorization.strip())
        if match is None:
            raise ObsError(
                403,
                "AccessDenied",
                "The Authorization header is malformed. Expected OBS <access key>:<signature>.",
            )
        access_key, signature = match.groups()

        credential = state.find_issued_credential(access_key)
        if credential is None:
            raise ObsError(
                403,
                "InvalidAccessKeyId",
                "The OBS Access Key Id you provided does not exist in our records.",
            )
        token = (self.headers.get("x-obs-security-token") or "").strip()
        if not token:
            raise ObsError(
                403,
                "InvalidAccessKeyId",
                "The security token is missing. A temporary access key needs the x-obs-security-token header.",
            )
        if not hmac.compare_digest(
            token.encode("latin-1"), credential.security_token.encode("ascii")
        ):
            raise ObsError(403, "InvalidAccessKeyId", "The security token is invalid.")
        if time.monotonic() >= credential.expires_at:
            raise ObsError(
                403,
                "InvalidAccessKeyId",
                "The security token has expired. Request a new credential.",
            )

        self.check_request_date()
        headers = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value.encode("latin-1"))
        text = obs_string_to_sign(self.command, headers, target.resource)
        expected = obs_signature(credential.secret, text)
        if not hmac.compare_digest(expected.encode("ascii"), signature.encode("latin-1")):
            state.log("OBS string to sign was:\n%s" % redact_obs_string_to_sign(text))
            raise ObsError(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. "
                "Check your key and signing method.",
            )
        return credential

    def check_request_date(self):
        value = self.headers.get("x-obs-date") or self.headers.get("Date")
        try:
            signed_at = email.utils.parsedate_to_datetime(value.strip())
        except (AttributeError, TypeError, ValueError):
            signed_at = None
        if signed_at is None or signed_at.tzinfo is None:
            raise ObsError(
                403,
                "AccessDenied",
                "Authentication requires a valid Date or x-obs-date header in RFC 1123 form.",
            )
        skew = abs(
            (datetime.datetime.now(datetime.timezone.utc) - signed_at).total_seconds()
        )
        if skew > self.server.state.max_skew_seconds():
            raise ObsError(
                403,
                "RequestTimeTooSkewed",
                "The difference between the request time and the server's time is too large.",
            )

    def authorize(self, credential, target):
        """Enforce the issued policy: PutObject of its one object, nothing else."""
        if self.command != "PUT" or target.query:
            raise ObsError(
                403,
                "AccessDenied",
                "Access Denied. The credential's policy allows only PutObject, not %s %s."
                % (self.command, target.resource),
            )
        if (target.bucket, target.key) != (credential.bucket, credential.object_path):
            raise ObsError(
                403,
                "AccessDenied",
                "Access Denied. The credential's policy does not allow PutObject on %s/%s."
                % (target.bucket, target.key),
            )

    def receive_object(self, target):
        """Stream the body into a file, check Content-MD5, store the object and return its ETag."""
        state = self.server.state
        expected_md5 = None
        md5_header = self.headers.get("Content-MD5")
        if md5_header is not None:
            try:
                expected_md5 = base64.b64decode(md5_header.strip(), validate=True)
            except ValueError:
                expected_md5 = b""
            if len(expected_md5) != 16:
                raise ObsError(
                    400, "InvalidDigest", "The Content-MD5 you specified is not valid."
                )

        if self.expects_continue and not self.sent_continue:
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.sent_continue = True
        md5 = hashlib.md5(usedforsecurity=False)
        sha256 = hashlib.sha256()
        body_file = state.new_object_file()
        try:
            with body_file:
                remaining = self.body_length
                while remaining > 0:
                    chunk = self.rfile.read(min(OBS_READ_CHUNK_BYTES, remaining))
                    if not chunk:
                        raise ConnectionError(
                            "client closed the connection inside the object body"
                        )
                    body_file.write(chunk)
                    md5.update(chunk)
                    sha256.update(chunk)
                    remaining -= len(chunk)
            self.body_done = True
            if expected_md5 is not None and md5.digest() != expected_md5:
                raise ObsError(
                    400,
                    "BadDigest",
                    "The Content-MD5 you specified did not match what was received.",
                )
        except BaseException:
            remove_file(body_file.name)
            raise

        stored = StoredObject(
            body_file.name,
            self.body_length,
            sha256.hexdigest(),
            md5.hexdigest(),
            self.headers.get("Content-Type"),
            md5_header,
        )
        state.store_object(target.bucket, target.key, stored)
        return '"%s"' % stored.md5

    def settle_unread_body(self):
        """Deal with a body that will not be read, before a response is sent.

        A small body is read and dropped so the connection stays usable.
        Otherwise the connection closes after the response, with a lingering
        close: a client that waits for "100 Continue" sends no body, and one
        that does send it must not get a reset before it reads the response.
        """
        if self.body_done or self.body_length == 0:
            return
        self.body_done = True
        waits_for_continue = self.expects_continue and not self.sent_continue
        if (
            self.body_length is not None
            and self.body_length <= OBS_MAX_DISCARD_BYTES
            and not waits_for_continue
        ):
            self.discard_whole_body()
            return
        self.close_connection = True
        self.linger = True

    def discard_whole_body(self):
        """Accept the body (sending 100 Continue when the client waits for it), read it and drop it."""
        if self.body_length is None:
            return
        if self.expects_continue and not self.sent_continue:
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.sent_continue = True
        remaining = self.body_length
        while remaining > 0:
            chunk = self.rfile.read(min(OBS_READ_CHUNK_BYTES, remaining))
            if not chunk:
                raise ConnectionError("client closed the connection inside the body")
            remaining -= len(chunk)
        self.body_done = True

    def linger_close(self):
        """Stop sending, then read and drop input until the client closes or OBS_LINGER_SECONDS pass."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            return
        deadline = time.monotonic() + OBS_LINGER_SECONDS
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.connection.settimeout(remaining)
            try:
                if not self.connection.recv(65536):
                    return
            except (OSError, ValueError):
                return

    def obs_headers(self, request_id, body_length, content_type):
        headers = [
            ("Server", self.server_version),
            ("Date", email.utils.formatdate(usegmt=True)),
            ("x-obs-request-id", request_id),
            ("x-obs-id-2", obs_host_id(request_id)),
        ]
        if content_type is not None:
            headers.append(("Content-Type", content_type))
        headers.append(("Content-Length", str(body_length)))
        if self.close_connection:
            headers.append(("Connection", "close"))
        return headers

    def send_obs_error(self, error, request_id):
        self.settle_unread_body()
        body = obs_error_body(error.code, error.message, request_id)
        headers = self.obs_headers(request_id, len(body), "application/xml")
        self.server.state.log(
            "OBS %s rejected: %d %s %s" % (self.command, error.status, error.code, error.message)
        )
        self.send_bytes(error.status, body, headers)
        if self.linger:
            self.linger_close()

    def apply_obs_fault(self, fault, request_id):
        """Send the fault's own response if it has one, and return whether it did."""
        if fault["drop"]:
            self.close_connection = True
            self.log_message('"%s" dropped by fault', self.requestline)
            return True
        if "status" not in fault:
            return False
        if fault.get("after_body"):
            self.discard_whole_body()
        self.settle_unread_body()
        status = fault["status"]
        if "body" in fault:
            body = fault["body"].encode("utf-8")
        elif status >= 300:
            code = OBS_FAULT_CODES.get(status, "InternalError")
            body = obs_error_body(code, "Fault injected by the emulator.", request_id)
        else:
            body = b""
        headers = self.obs_headers(
            request_id, len(body), "application/xml" if body else None
        )
        headers = merge_headers(headers, fault.get("headers", []))
        self.send_bytes(status, body, headers)
        self.close_connection = self.close_connection or fault["close"]
        if self.linger:
            self.linger_close()
        return True

    def send_error(self, code, message=None, explain=None):
        # Replaces http.server's HTML error page for malformed requests.
        self.close_connection = True
        request_id = new_obs_request_id()
        try:
            phrase = http.HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        body = obs_error_body("BadRequest", message or phrase, request_id)
        headers = self.obs_headers(request_id, len(body), "application/xml")
        self.send_bytes(code, body, headers)


# ---------------------------------------------------------------------------
# Control port
# ---------------------------------------------------------------------------


class ControlHandler(JsonRequestHandler):
    """Test-only control interface: faults, config, stats, reset and a signing oracle."""

    def do_GET(self):
        self.handle_control_request()

    do_POST = do_PUT = do_DELETE = do_GET

    def handle_control_request(self):
        state = self.server.state
        request_id = secrets.token_hex(16)
        routes = {
            "/faults": ("POST", self.post_faults),
            "/config": ("POST", self.post_config),
            "/stats": ("GET", lambda: state.stats()),
            "/reset": ("POST", self.post_reset),
            "/sign": ("POST", self.post_sign),
        }
        path = self.path.partition("?")[0]
        try:
            route = routes.get(path)
            if path.startswith("/objects/"):
                route = ("GET", lambda: self.get_object(path))
            if route is None:
                self.read_body()
                raise RequestError(
                    404,
                    "NOT_FOUND",
                    "unknown control path %s. Known paths: %s"
                    % (self.path, ", ".join(sorted(routes) + ["/objects/<bucket>/<key>"])),
                )
            method, action = route
            if self.command != method:
                self.read_body()
                raise RequestError(
                    405,
                    "METHOD_NOT_ALLOWED",
                    "%s needs %s, got %s" % (self.path, method, self.command),
                )
            self.send_json(200, action(), request_id)
        except RequestError as error:
            self.close_connection = self.close_connection or error.close
            self.send_json(
                error.status,
                {"error_code": error.error_code, "error_msg": error.error_msg},
                request_id,
            )

    def max_delay_ms(self):
        return (
            int(max(0.0, self.server.state.deadline - time.monotonic()) * 1000) + 1000
        )

    def post_faults(self):
        obj = read_json_body(self)
        items = obj if isinstance(obj, list) else [obj]
        try:
            faults = [parse_fault(item, self.max_delay_ms()) for item in items]
            pending = self.server.state.add_faults(faults)
        except ValueError as error:
            raise RequestError(400, "INVALID_FAULT", str(error))
        return {"faults_pending": pending}

    def post_config(self):
        try:
            changes = parse_config(read_json_body(self), self.max_delay_ms())
        except ValueError as error:
            raise RequestError(400, "INVALID_CONFIG", str(error))
        return self.server.state.update_config(changes)

    def get_object(self, path):
        """Describe the stored object named by /objects/<bucket>/<percent-encoded key>."""
        bucket, _, raw_key = path[len("/objects/") :].partition("/")
        bucket = urllib.parse.unquote(bucket)
        key = urllib.parse.unquote(raw_key, errors="replace")
        stored = self.server.state.find_object(bucket, key)
        if stored is None:
            raise RequestError(
                404,
                "NOT_FOUND",
                "no object %r is stored in bucket %r" % (key, bucket),
            )
        return {
            "bucket": bucket,
            "key": key,
            "size": stored.size,
            "sha256": stored.sha256,
            "md5": stored.md5,
            "etag": '"%s"' % stored.md5,
            "content_type": stored.content_type,
            "content_md5": stored.content_md5,
        }

    def post_reset(self):
        self.read_body()
        self.server.state.reset()
        return {"reset": True}

    def post_sign(self):
        """Sign a request described as {method, path, headers, body, ak, sk, signed_headers?}."""
        obj = read_json_body(self)
        try:
            headers = obj.get("headers") or {}
            if not any(name.lower() == "x-sdk-date" for name in headers):
                raise ValueError("headers must contain X-Sdk-Date")
            return sign_request(
                obj["method"],
                obj["path"],
                headers,
                obj.get("body", "").encode("utf-8"),
                obj.get("ak", ""),
                obj["sk"],
                obj.get("signed_headers"),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise RequestError(
                400, "INVALID_SIGN_REQUEST", "cannot sign this request: %r" % (error,)
            )


# ---------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------


class LoopbackHTTPServer(ThreadingHTTPServer):
    """Threaded HTTP server with a connection cap, optional TLS and no reverse DNS lookup."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        address,
        handler,
        state,
        count_connections=False,
        tls_context=None,
        idle_timeout=60.0,
        max_connections=1024,
    ):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.state = state
        self.count_connections = count_connections
        self.idle_timeout = idle_timeout
        self.connection_slots = threading.BoundedSemaphore(max_connections)
        self.uses_tls = tls_context is not None
        super().__init__(address, handler)
        if tls_context is not None:
            self.socket = tls_context.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )

    def server_bind(self):
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that
        # may leave the machine, so bind without it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address):
        # Blocks the accept loop while max_connections are open, so further
        # connections wait in the listen backlog instead of starting threads.
        self.connection_slots.acquire()
        if self.count_connections:
            self.state.count_connection()
        try:
            super().process_request(request, client_address)
        except Exception:
            self.connection_slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            if self.uses_tls:
                try:
                    request.settimeout(HANDSHAKE_TIMEOUT_SECONDS)
                    request.do_handshake()
                except (OSError, ssl.SSLError) as error:
                    self.state.log(
                        "TLS handshake with %s failed: %s" % (client_address[0], error)
                    )
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)
        finally:
            self.connection_slots.release()

    def handle_error(self, request, client_address):
        if self.state.verbose:
            super().handle_error(request, client_address)


def format_url(scheme, server):
    host, port = server.server_address[:2]
    if ":" in host:
        host = "[%s]" % host
    return "%s://%s:%d" % (scheme, host, port)


def start_servers(
    state,
    host,
    port,
    control_port,
    obs_port,
    tls_context,
    idle_timeout,
    max_connections,
):
    """Bind the API, control and OBS ports, start their threads and return the three servers.

    The OBS port serves TLS when the API port does, because clients upload
    with the scheme of their App Center endpoint.
    """
    api = LoopbackHTTPServer(
        (host, port),
        ApiHandler,
        state,
        count_connections=True,
        tls_context=tls_context,
        idle_timeout=idle_timeout,
        max_connections=max_connections,
    )
    control = LoopbackHTTPServer(
        (host, control_port),
        ControlHandler,
        state,
        idle_timeout=idle_timeout,
        max_connections=64,
    )
    obs = LoopbackHTTPServer(
        (host, obs_port),
        ObsHandler,
        state,
        tls_context=tls_context,
        idle_timeout=idle_timeout,
        max_connections=max_connections,
    )
    # libcurl 7.85 and later (checked with 7.88.1) resolves "localhost" and
    # every name under it to the loopback address without DNS, so
    # "<bucket>.localhost:<port>" reaches this port in virtual-host style.
    state.server_end_point = "localhost:%d" % obs.server_address[1]
    for server in (api, control, obs):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return api, control, obs


# ---------------------------------------------------------------------------
# Self-test
# ---------------------------------------------------------------------------

# Public vectors with AK "AccessKey" and SK "SecretKey". The first two come from
# huaweicloud-sdk-go-v3 core/auth/signer/signer_test.go, the last two from
# huaweicloud-sdk-python-v3 huaweicloud-sdk-core/tests/test_signer.py.
SIGNING_VECTORS = [
    (
        "GET",
        "/path",
        "limit=1",
        {"X-Sdk-Date": "20060102T150405Z"},
        b"",
        "5a2ce64c865e0e6046321c6f3d5a77ba8413eeaf355c3166c03d58d02ac79624",
    ),
    (
        "POST",
        "/path",
        "key=value",
        {"X-Sdk-Date": "20060102T150405Z"},
        b'{"Name":"test","Id":1}\n',
        "cecc2af119b18ab70b4d094c0750f3b42c02f254903179a0fc2cc72fc9db4f59",
    ),
    (
        "GET",
        "/resources",
        "size=1",
        {
            "Host": "service.endpoint.myhuaweicloud.com",
            "X-Sdk-Date": "20200608T023900Z",
        },
        b"",
        "cfb4171acec81de07d50e53d57eb77edd537414d66ddb1d7d780f128e12cd842",
    ),
    (
        "POST",
        "/resources",
        "size=1",
        {
            "Host": "service.endpoint.myhuaweicloud.com",
            "X-Sdk-Date": "20200608T023900Z",
        },
        b'{"name":"test","id":1}',
        "436b1ac0a1ae03705934bb70ef2f2e09f7bfed2117d731a38235053199323a1f",
    ),
]


class SelfTest:
    def __init__(self):
        self.failures = 0
        self.checks = 0

    def check(self, name, condition, detail=""):
        self.checks += 1
        if not condition:
            self.failures += 1
        print(
            "%s %s%s"
            % (
                "ok  " if condition else "FAIL",
                name,
                " (%s)" % detail if detail and not condition else "",
            )
        )


def run_self_test():
    """Check the signer against the public vectors, then sign real requests to a live emulator."""
    test = SelfTest()
    for index, (method, path, query, headers, body, expected) in enumerate(
        SIGNING_VECTORS, 1
    ):
        signature = sign_request(
            method, path + "?" + query, headers, body, "AccessKey", "SecretKey"
        )["signature"]
        test.check("public signing vector %d" % index, signature == expected, signature)

    test.check(
        "canonical URI encodes and ends with /",
        canonical_uri("/a b/%7Ec/d") == "/a%20b/~c/d/",
        canonical_uri("/a b/%7Ec/d"),
    )
    test.check("canonical URI keeps a trailing /", canonical_uri("/v1/x/") == "/v1/x/")
    test.check(
        "canonical query sorts by name then value",
        canonical_query("b=2&a=1&a=0&c") == "a=0&a=1&b=2&c=",
        canonical_query("b=2&a=1&a=0&c"),
    )

    test.check(
        "OBS string to sign lists x-obs-* headers sorted, then the resource",
        obs_string_to_sign(
            "PUT",
            {
                "content-type": ["text/plain"],
                "x-obs-security-token": ["t"],
                "x-obs-date": ["Tue, 01 Jul 2025 00:00:00 GMT"],
                "date": ["ignored"],
            },
            "/b/k%20x",
        )
        == b"PUT\n\ntext/plain\n\n"
        b"x-obs-date:Tue, 01 Jul 2025 00:00:00 GMT\nx-obs-security-token:t\n/b/k%20x",
    )

    state = EmulatorState(
        [DEFAULT_TOKEN],
        {DEFAULT_AK: DEFAULT_SK},
        [DEFAULT_PROJECT_ID],
        time.monotonic() + 60,
        False,
    )
    servers = start_servers(state, "127.0.0.1", 0, 0, 0, None, 10.0, 16)
    try:
        run_live_checks(test, servers[0].server_address[1])
        run_obs_checks(test, state, servers[0].server_address[1])
    finally:
        for server in servers:
            server.shutdown()
        state.close()
    print("self-test: %d checks, %d failed" % (test.checks, test.failures))
    return 0 if test.failures == 0 else 1


def run_live_checks(test, port):
    host = "127.0.0.1:%d" % port
    path = "/v1/%s/app-center/buckets/actions/create-credential" % DEFAULT_PROJECT_ID
    body = json.dumps({"file_name": "replay-01.bin"}).encode("utf-8")

    def post(headers, sign_with=None, signed_headers=None, tamper=False):
        headers = dict(headers)
        headers.setdefault("Content-Type", "application/json")
        headers["Host"] = host
        if sign_with is not None:
            access_key, secret_key = sign_with
            signed = sign_request(
                "POST", path, headers, body, access_key, secret_key, signed_headers
            )
            authorization = signed["authorization"]
            if tamper:
                authorization = authorization[:-1] + (
                    "0" if authorization[-1] != "0" else "1"
                )
            headers["Authorization"] = authorization
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read().decode("utf-8"))
        finally:
            connection.close()

    def now_date(offset_seconds=0):
        moment = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
            seconds=offset_seconds
        )
        return moment.strftime(SDK_DATE_FORMAT)

    def signed_headers_for(date, project_id=DEFAULT_PROJECT_ID):
        headers = {"X-Sdk-Date": date}
        if project_id is not None:
            headers["X-Project-Id"] = project_id
        return headers

    keys = (DEFAULT_AK, DEFAULT_SK)
    status, result = post(signed_headers_for(now_date()), keys)
    test.check(
        "AK/SK signed request returns 200", status == 200, "%d %s" % (status, result)
    )

    def check_rejected(name, status, answer, reason):
        test.check(name + " returns 401", status == 401, status)
        test.check(
            name + " has code APIGW.0301",
            answer.get("error_code") == "APIGW.0301",
            answer,
        )
        test.check(
            name + " names the reason", reason in answer.get("error_msg", ""), answer
        )

    status, answer = post(signed_headers_for(now_date()), keys, tamper=True)
    check_rejected("wrong signature", status, answer, "verify aksk signature fail")
    status, answer = post(signed_headers_for(now_date(-20 * 60)), keys)
    check_rejected("stale X-Sdk-Date", status, answer, "seconds from the server time")
    status, answer = post(signed_headers_for(now_date(), None), keys)
    check_rejected(
        "missing X-Project-Id", status, answer, "X-Project-Id header is missing"
    )
    status, answer = post(
        signed_headers_for(now_date(), "fffffffffffffffffffffffffffffff0"), keys
    )
    check_rejected(
        "other X-Project-Id", status, answer, "does not match the project id"
    )
    status, answer = post(
        signed_headers_for(now_date()), ("FAKEUNKNOWNKEY000000", DEFAULT_SK)
    )
    check_rejected("unknown access key", status, answer, "unknown access key")

    if "credential" not in result:
        test.check("first signed request returned a credential", False, result)
        return
    credential = result["credential"]
    temporary_keys = (credential["access"], credential["secret"])
    with_token = signed_headers_for(now_date())
    with_token["X-Security-Token"] = credential["security_token"]
    status, answer = post(with_token, temporary_keys)
    test.check(
        "issued temporary key with security token returns 200", status == 200, answer
    )
    status, answer = post(signed_headers_for(now_date()), temporary_keys)
    check_rejected(
        "temporary key without security token",
        status,
        answer,
        "needs the X-Security-Token header",
    )
    without_token = ["content-type", "host", "x-project-id", "x-sdk-date"]
    status, answer = post(with_token, temporary_keys, signed_headers=without_token)
    check_rejected(
        "unsigned X-Security-Token",
        status,
        answer,
        "x-security-token must be a signed header",
    )
    wrong_token = dict(
        with_token, **{"X-Security-Token": "fake" + credential["security_token"][4:]}
    )
    status, answer = post(wrong_token, temporary_keys)
    check_rejected(
        "other security token", status, answer, "does not belong to access key"
    )
    permanent_with_token = dict(
        signed_headers_for(now_date()),
        **{"X-Security-Token": credential["security_token"]}
    )
    status, answer = post(permanent_with_token, keys)
    check_rejected(
        "permanent key with security token", status, answer, "permanent access key"
    )

    status, answer = post({"X-Auth-Token": DEFAULT_TOKEN})
    test.check("token request returns 200", status == 200, answer)
    status, answer = post({"X-Auth-Token": "fake-wrong-token"})
    test.check("wrong token returns 401", status == 401, status)
    test.check(
        "wrong token has code APIGW.0307",
        answer.get("error_code") == "APIGW.0307",
        answer,
    )


def run_obs_checks(test, state, api_port):
    """Upload with issued credentials through the OBS port and check each rejection."""
    endpoint = state.server_end_point
    obs_port = int(endpoint.rpartition(":")[2])

    def issue(file_name="replay 01.bin"):
        connection = http.client.HTTPConnection("127.0.0.1", api_port, timeout=10)
        try:
            connection.request(
                "POST",
                "/v1/%s/app-center/buckets/actions/create-credential"
                % DEFAULT_PROJECT_ID,
                body=json.dumps({"file_name": file_name}),
                headers={
                    "Content-Type": "application/json",
                    "X-Auth-Token": DEFAULT_TOKEN,
                },
            )
            return json.loads(connection.getresponse().read().decode("utf-8"))
        finally:
            connection.close()

    def put(result, body, tamper=None, key=None, path_style=False, extra=None):
        """PUT body with result's credential. tamper names one thing to break."""
        credential = result["credential"]
        bucket = result["bucket_name"]
        raw_key = urllib.parse.quote(key or result["object_path"], safe="/-._~")
        headers = {
            "Content-Type": "application/octet-stream",
            "x-obs-date": email.utils.formatdate(usegmt=True),
            "x-obs-security-token": credential["security_token"],
        }
        headers.update(extra or {})
        if tamper == "no-token":
            del headers["x-obs-security-token"]
        lowered = {name.lower(): [value] for name, value in headers.items()}
        text = obs_string_to_sign("PUT", lowered, "/%s/%s" % (bucket, raw_key))
        secret = credential["secret"] + ("x" if tamper == "secret" else "")
        headers["Authorization"] = "OBS %s:%s" % (
            credential["access"],
            obs_signature(secret, text),
        )
        if path_style:
            headers["Host"], target = endpoint, "/%s/%s" % (bucket, raw_key)
        else:
            headers["Host"], target = "%s.%s" % (bucket, endpoint), "/" + raw_key
        connection = http.client.HTTPConnection("127.0.0.1", obs_port, timeout=10)
        try:
            connection.request("PUT", target, body=body, headers=headers)
            response = connection.getresponse()
            text = response.read().decode("utf-8")
            code = re.search(r"<Code>(.*?)</Code>", text)
            message = re.search(r"<Message>(.*?)</Message>", text)
            return (
                response.status,
                code.group(1) if code else None,
                message.group(1) if message else "",
                response.getheader("ETag"),
            )
        finally:
            connection.close()

    result = issue()
    test.check(
        "credential names the OBS port",
        result.get("server_end_point") == endpoint,
        result.get("server_end_point"),
    )
    body = b"object body\n" * 1000
    status, code, message, etag = put(result, body)
    test.check("signed PUT returns 200", status == 200, "%s %s %s" % (status, code, message))
    test.check(
        "ETag is the MD5 of the body",
        etag == '"%s"' % hashlib.md5(body, usedforsecurity=False).hexdigest(),
        etag,
    )
    stored = state.find_object(result["bucket_name"], result["object_path"])
    test.check(
        "stored object has the body's SHA-256",
        stored is not None and stored.sha256 == hashlib.sha256(body).hexdigest(),
        stored,
    )
    status, code, message, _ = put(result, body, path_style=True)
    test.check("path-style PUT returns 200", status == 200, "%s %s" % (status, code))
    status, code, message, _ = put(result, body, extra={"Expect": "100-continue"})
    test.check("PUT with Expect: 100-continue returns 200", status == 200, status)
    digest = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest())
    status, code, message, _ = put(
        result, body, extra={"Content-MD5": digest.decode("ascii")}
    )
    test.check("matching Content-MD5 returns 200", status == 200, "%s %s" % (status, code))

    def check_rejected(name, outcome, status, code, word=None):
        test.check(name + " returns %d" % status, outcome[0] == status, outcome)
        test.check(name + " has code " + code, outcome[1] == code, outcome)
        if word is not None:
            test.check(name + " names the reason", word in outcome[2], outcome)

    check_rejected(
        "wrong Content-MD5",
        put(result, body + b"x", extra={"Content-MD5": digest.decode("ascii")}),
        400,
        "BadDigest",
    )
    check_rejected(
        "other secret", put(result, body, tamper="secret"), 403, "SignatureDoesNotMatch"
    )
    check_rejected(
        "other key", put(result, body, key="app-file/other.bin"), 403, "AccessDenied"
    )
    check_rejected(
        "missing security token",
        put(result, body, tamper="no-token"),
        403,
        "InvalidAccessKeyId",
        "missing",
    )
    other = issue()
    forged = dict(result, credential=dict(result["credential"]))
    forged["credential"]["security_token"] = other["credential"]["security_token"]
    check_rejected(
        "other credential's security token",
        put(forged, body),
        403,
        "InvalidAccessKeyId",
        "invalid",
    )
    unknown = dict(result, credential=dict(result["credential"], access="FAKEUNKNOWN0000000000"))
    check_rejected("unknown access key", put(unknown, body), 403, "InvalidAccessKeyId")

    state.update_config({"credential_ttl": 0})
    expired = issue()
    state.update_config({"credential_ttl": DEFAULT_CREDENTIAL_TTL_SECONDS})
    check_rejected(
        "expired credential", put(expired, body), 403, "InvalidAccessKeyId", "expired"
    )

    # A rejected client that waits for 100 Continue gets the error and a close
    # without sending its body.
    raw = socket.create_connection(("127.0.0.1", obs_port), timeout=10)
    try:
        raw.sendall(
            (
                "PUT /%s HTTP/1.1\r\nHost: %s.%s\r\nContent-Length: 10\r\n"
                "Expect: 100-continue\r\nAuthorization: OBS %s:AAAA\r\n"
                "x-obs-date: %s\r\nx-obs-security-token: %s\r\n\r\n"
                % (
                    result["object_path"].replace(" ", "%20"),
                    result["bucket_name"],
                    endpoint,
                    result["credential"]["access"],
                    email.utils.formatdate(usegmt=True),
                    result["credential"]["security_token"],
                )
            ).encode("latin-1")
        )
        answer = b""
        while True:
            piece = raw.recv(65536)
            if not piece:
                break
            answer += piece
    finally:
        raw.close()
    test.check(
        "rejected Expect request gets 403 without 100 Continue",
        answer.startswith(b"HTTP/1.1 403"),
        answer[:40],
    )
    test.check(
        "rejected Expect request is closed",
        b"\r\nConnection: close\r\n" in answer,
        answer[:300],
    )


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        description="Local emulator of the App Center create-credential API (loopback only).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""The control port (the "control" URL of the first output line) injects faults
and changes settings, for trying retries and error handling. For example, the
next two create-credential requests get a 503, then one waits 2 s:

  curl -X POST http://127.0.0.1:CONTROL/faults -d '[{"status": 503, "times": 2},
      {"delay_ms": 2000}]'

Faults stay queued until requests use them. POST /reset clears them,
together with the settings, counters and stored objects:

  curl -X POST http://127.0.0.1:CONTROL/reset

The header of tools/emulator.py lists every fault field, the other control
requests and the error codes the emulator sends.""",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="loopback address to listen on (default 127.0.0.1)",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="API port, or 0 for a free port (default 0)"
    )
    parser.add_argument(
        "--control-port",
        type=int,
        default=0,
        help="control port, or 0 for a free port (default 0)",
    )
    parser.add_argument(
        "--obs-port",
        type=int,
        default=0,
        help="OBS upload port, or 0 for a free port (default 0). Issued credentials "
        "name localhost:<this port> as server_end_point",
    )
    parser.add_argument(
        "--credential-ttl",
        type=int,
        default=DEFAULT_CREDENTIAL_TTL_SECONDS,
        help="seconds for which an issued credential can upload, from 0 to %d (default %d)"
        % (MAX_CREDENTIAL_TTL_SECONDS, DEFAULT_CREDENTIAL_TTL_SECONDS),
    )
    parser.add_argument(
        "--tls-cert",
        help="PEM certificate chain. With --tls-key, the API and OBS ports serve HTTPS",
    )
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert")
    parser.add_argument(
        "--token",
        action="extend",
        nargs="+",
        help="accepted X-Auth-Token value(s), replacing the default %s" % DEFAULT_TOKEN,
    )
    parser.add_argument(
        "--ak",
        action="append",
        help="accepted access key, paired in order with --sk (default %s with "
        "the secret key %s)" % (DEFAULT_AK, DEFAULT_SK),
    )
    parser.add_argument(
        "--sk", action="append", help="secret key of the --ak at the same position"
    )
    parser.add_argument(
        "--project-id",
        action="extend",
        nargs="+",
        help="known project id(s), replacing the default %s" % DEFAULT_PROJECT_ID,
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=900.0,
        help="exit after this many seconds (default 900)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        help="close connections idle for this many seconds (default 60)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=1024,
        help="maximum open connections of the API port and of the OBS port. Further "
        "connections wait in the listen backlog (default 1024)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="log requests and authentication failures to stderr. The reader must "
        "drain stderr, because request threads block while a stderr pipe is full",
    )
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="check the signer against public vectors and a live round trip, then exit 0 or 1",
    )
    args = parser.parse_args(argv)

    try:
        address = ipaddress.ip_address(args.host)
    except ValueError:
        parser.error(
            "--host %r is not an IP address; use a loopback address such as 127.0.0.1 or ::1"
            % args.host
        )
    if not address.is_loopback:
        parser.error(
            "--host %s is not a loopback address; the emulator listens on loopback only"
            % args.host
        )
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key must be given together")
    if args.ak is not None or args.sk is not None:
        if len(args.ak or []) != len(args.sk or []):
            parser.error(
                "each --ak needs one --sk (got %d --ak and %d --sk)"
                % (len(args.ak or []), len(args.sk or []))
            )
    for name, values in (
        ("--token", args.token),
        ("--project-id", args.project_id),
        ("--ak", args.ak),
        ("--sk", args.sk),
    ):
        if values is not None and any(not value for value in values):
            parser.error("%s values must not be empty" % name)
    if args.project_id is not None and any(
        re.search(r"[/?#%]", value) for value in args.project_id
    ):
        parser.error("--project-id values must not contain / ? # or %")
    if not 0 <= args.credential_ttl <= MAX_CREDENTIAL_TTL_SECONDS:
        parser.error(
            "--credential-ttl must be between 0 and %d seconds"
            % MAX_CREDENTIAL_TTL_SECONDS
        )
    if args.max_seconds <= 0 or args.idle_timeout <= 0 or args.max_connections < 1:
        parser.error(
            "--max-seconds and --idle-timeout must be positive and --max-connections at least 1"
        )
    return args


def watch_lifetime(deadline, parent_pid):
    """Wait until the emulator should stop and return the reason.

    Stops when the deadline passes, when the parent process exits (checked
    every second) or when stdout is a pipe whose reading end was closed. The
    last case lets a parent's pclose() return at once instead of waiting for
    the deadline.
    """
    stdout_watch = None
    if stat.S_ISFIFO(os.fstat(sys.stdout.fileno()).st_mode):
        stdout_watch = select.poll()
        # Only error events are requested, so a writable pipe does not wake the poll.
        stdout_watch.register(sys.stdout.fileno(), select.POLLERR)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "--max-seconds elapsed"
        if os.getppid() != parent_pid:
            return "parent process %d exited" % parent_pid
        wait_ms = int(min(1.0, remaining) * 1000) + 1
        if stdout_watch is None:
            time.sleep(wait_ms / 1000.0)
        elif stdout_watch.poll(wait_ms):
            return "the reading end of stdout was closed"


def main(argv):
    args = parse_arguments(argv)
    if args.self_test:
        return run_self_test()

    # Startup normally takes well under a second. If it hangs, SIGALRM ends the
    # process, so a caller waiting for the ready line reads end of file.
    signal.alarm(STARTUP_TIMEOUT_SECONDS)
    parent_pid = os.getppid()
    deadline = time.monotonic() + args.max_seconds

    tls_context = None
    if args.tls_cert:
        tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls_context.load_cert_chain(args.tls_cert, args.tls_key)

    key_pairs = dict(zip(args.ak, args.sk)) if args.ak else {DEFAULT_AK: DEFAULT_SK}
    state = EmulatorState(
        args.token or [DEFAULT_TOKEN],
        key_pairs,
        args.project_id or [DEFAULT_PROJECT_ID],
        deadline,
        args.verbose,
        credential_ttl=args.credential_ttl,
    )
    try:
        api, control, obs = start_servers(
            state,
            args.host,
            args.port,
            args.control_port,
            args.obs_port,
            tls_context,
            args.idle_timeout,
            args.max_connections,
        )
    except BaseException:
        state.close()
        raise

    def stop_on_sigterm(signum, frame):
        state.close()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    scheme = "https" if tls_context else "http"
    ready = {
        "url": format_url(scheme, api),
        "control": format_url("http", control),
        "obs": format_url(scheme, obs),
        "server_end_point": state.server_end_point,
        "pid": os.getpid(),
    }
    try:
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        state.close()
        os._exit(1)
    signal.alarm(0)

    try:
        reason = watch_lifetime(deadline, parent_pid)
    except KeyboardInterrupt:
        reason = "interrupted"
    state.close()
    # A full stderr pipe that no process reads would block this write forever, so
    # SIGALRM ends the process if the message cannot be written within 2 seconds.
    signal.alarm(2)
    sys.stderr.write("emulator: stopping because %s\n" % reason)
    sys.stderr.flush()
    # Daemon threads may be blocked in sleeps or writes, so skip interpreter cleanup.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
