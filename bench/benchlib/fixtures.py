"""Fake identities and the fixed response body. nginx checks none of the identities."""

import base64
import hashlib
import json

FILE_NAME = "replay-0042.bin"
PROJECT_ID = "0123456789abcdef0123456789abcdef"
ACCESS_KEY = "FAKEAKBENCH000000001"
SECRET_KEY = "fake-sk-bench-000000000000000000000000000"
# Contenders other than this repository's module build no URL themselves:
# they get the endpoint with this path appended.
API_PATH = "/v1/%s/app-center/buckets/actions/create-credential" % PROJECT_ID
# Default size of the fake IAM token in X-Auth-Token. The size matters:
# libcurl 7.88 formats custom request headers one byte at a time.
DEFAULT_TOKEN_BYTES = 2048


def pseudo_random_text(seed, length):
    """Return `length` base64 characters derived from `seed`, the same on every run."""
    raw = b""
    block = seed.encode()
    while len(raw) * 4 // 3 < length + 4:
        block = hashlib.sha256(block).digest()
        raw += block
    return base64.b64encode(raw).decode("ascii")[:length]


def fake_token(size):
    return ("MIIbench-" + pseudo_random_text("token", size))[:size]


def credential_body():
    """Return the JSON text that nginx sends: one credential, about 1.2 KB."""
    bucket = "appcenter-bench-bucket-cn-north-4"
    object_path = "%s/uploads/2024/06/01/8d4f6c2e-5b1a-4e7d-9f3c-2a6b8e1d0c47/%s" % (
        PROJECT_ID, FILE_NAME)
    body = {
        "server_end_point": "obs.cn-north-4.myhuaweicloud.com",
        "bucket_name": bucket,
        "object_path": object_path,
        "policy": {
            "version": "1.1",
            "statement": {
                "effect": "Allow",
                "action": ["obs:object:PutObject"],
                "resource": ["obs:*:*:object:%s/%s" % (bucket, object_path)],
            },
        },
        "credential": {
            "access": "FAKETEMPAKBENCH00001",
            "secret": pseudo_random_text("secret", 40),
            "security_token": pseudo_random_text("security-token", 600),
        },
    }
    text = json.dumps(body, separators=(",", ":"))
    # The text goes into an nginx string in single quotes, where $ starts
    # a variable and \ an escape.
    assert not set(text) & set("'$\\"), "credential body needs nginx escaping"
    return text
