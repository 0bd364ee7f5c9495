#!/usr/bin/env python3
"""A misbehaving HTTP server on 127.0.0.1 for the specs. Python standard library only.

Usage:
    python3 spec/support/hostile_server.py MODE [--log FILE] [--max-seconds 60]
        [--status 200] [--body TEXT] [--header "Name: value" ...] [--rate 1]
        [--content-length VALUE]

Modes, each applied to every connection:
    fixed            respond to each request with --status, --header and --body, then close;
                     --content-length replaces the body's length in Content-Length,
                     which then comes first
    slow             send a valid 200 response at --rate bytes per second
    silent           read the request, then neither respond nor close
    endless-headers  send a status line and header lines until the client leaves
    endless-body     send headers without Content-Length and body bytes until
                     the client leaves
    endless-chunked  the same with chunked transfer encoding
    garbage          send bytes that are not HTTP, then close
    early-hints      send a 103 interim response with the --header lines,
                     then the response of fixed without them
    hangup           close each connection as soon as it is accepted, as a
                     server that restarts does (a TLS client sees the drop
                     during its handshake)

When ready it prints one JSON line to stdout: {"url": "http://127.0.0.1:P",
"port": P, "pid": N}. With --log, every connection appends one JSON line to
FILE: {"event": "connect"} when the connection is accepted, then
{"event": "request", "request_line", "headers"} for its first request, with
request_line null when none arrived within the read timeout.

It listens on 127.0.0.1 only and exits after --max-seconds, when its parent
process exits, when the reading end of its stdout pipe closes, or on SIGTERM.
Each connection sends at most MAX_BYTES_PER_CONNECTION bytes.
"""

import argparse
import json
import os
import select
import signal
import socket
import stat
import sys
import threading
import time

MODES = (
    "fixed",
    "slow",
    "silent",
    "endless-headers",
    "endless-body",
    "endless-chunked",
    "garbage",
    "hangup",
    "early-hints",
)
MAX_HEAD_BYTES = 64 * 1024
MAX_REQUEST_BODY_BYTES = 1024 * 1024
MAX_BYTES_PER_CONNECTION = 1024 * 1024 * 1024
MAX_CONNECTIONS = 64
READ_TIMEOUT_SECONDS = 10
SEND_PIECE_BYTES = 16 * 1024
STARTUP_TIMEOUT_SECONDS = 10

SLOW_BODY = b'{"note": "sent slowly"}'


class ClientGone(Exception):
    """The client closed the connection or the per-connection byte limit was reached."""


class Connection:
    def __init__(self, sock, options, log_lock):
        self.sock = sock
        self.options = options
        self.log_lock = log_lock
        self.sent = 0

    def send(self, data):
        if self.sent + len(data) > MAX_BYTES_PER_CONNECTION:
            raise ClientGone("per-connection byte limit reached")
        try:
            self.sock.sendall(data)
        except OSError as error:
            raise ClientGone(str(error))
        self.sent += len(data)

    def read_request(self):
        """Read one request head and its Content-Length body; return (request_line, headers)."""
        self.sock.settimeout(READ_TIMEOUT_SECONDS)

        data = b""
        while b"\r\n\r\n" not in data:
            if len(data) > MAX_HEAD_BYTES:
                return None, {}
            try:
                chunk = self.sock.recv(4096)
            except OSError:
                return None, {}
            if not chunk:
                return None, {}
            data += chunk

        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()

        try:
            length = min(int(headers.get("content-length", "0")), MAX_REQUEST_BODY_BYTES)
        except ValueError:
            length = 0
        while len(rest) < length:
            try:
                chunk = self.sock.recv(min(65536, length - len(rest)))
            except OSError:
                break
            if not chunk:
                break
            rest += chunk
        self.sock.settimeout(None)
        return lines[0], headers

    def log(self, record):
        path = self.options.log
        if not path:
            return
        record = json.dumps(record)
        with self.log_lock:
            with open(path, "a", encoding="utf-8") as log_file:
                log_file.write(record + "\n")

    def serve(self):
        self.log({"event": "connect"})
        if self.options.mode == "hangup":
            return
        request_line, headers = self.read_request()
        self.log({"event": "request", "request_line": request_line, "headers": headers})
        mode = self.options.mode
        if mode == "garbage":
            self.send(b"\x00\xffthis is not HTTP\r\n\r\n" * 16)
            return
        if request_line is None:
            return
        getattr(self, "serve_" + mode.replace("-", "_"))()

    def serve_fixed(self, headers=None):
        body = self.options.body.encode("utf-8")
        lines = ["HTTP/1.1 %d Test" % self.options.status]
        content_length = self.options.content_length
        if content_length is not None:
            # First, so that the other headers come after it.
            lines.append("Content-Length: " + content_length)
        lines.extend(self.options.header if headers is None else headers)
        if content_length is None:
            lines.append("Content-Length: %d" % len(body))
        lines.append("Connection: close")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def serve_early_hints(self):
        lines = ["HTTP/1.1 103 Early Hints"] + list(self.options.header)
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        self.serve_fixed(headers=[])

    def serve_slow(self):
        response = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(SLOW_BODY), SLOW_BODY)
        )
        interval = 1.0 / self.options.rate
        for offset in range(len(response)):
            self.send(response[offset : offset + 1])
            time.sleep(interval)

    def serve_silent(self):
        # Holds the connection open; the server's lifetime bounds the wait.
        while True:
            time.sleep(3600)

    def serve_endless_headers(self):
        self.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        line = b"X-Filler: " + b"h" * 1000 + b"\r\n"
        while True:
            self.send(line * 16)

    def serve_endless_body(self):
        self.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
        piece = b"[" * SEND_PIECE_BYTES
        while True:
            self.send(piece)

    def serve_endless_chunked(self):
        self.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (SEND_PIECE_BYTES, b"[" * SEND_PIECE_BYTES)
        while True:
            self.send(chunk)


def handle_connection(sock, options, log_lock, slots):
    try:
        Connection(sock, options, log_lock).serve()
    except ClientGone:
        pass
    finally:
        try:
            sock.close()
        finally:
            slots.release()


def accept_loop(listener, options):
    log_lock = threading.Lock()
    slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
    while True:
        slots.acquire()
        try:
            sock, _ = listener.accept()
        except OSError:
            slots.release()
            continue
        threading.Thread(
            target=handle_connection,
            args=(sock, options, log_lock, slots),
            daemon=True,
        ).start()


def watch_lifetime(deadline, parent_pid):
    """Return when the deadline passes, the parent exits or the stdout pipe's reader closes."""
    stdout_watch = None
    if stat.S_ISFIFO(os.fstat(sys.stdout.fileno()).st_mode):
        stdout_watch = select.poll()
        stdout_watch.register(sys.stdout.fileno(), select.POLLERR)
    while time.monotonic() < deadline and os.getppid() == parent_pid:
        if stdout_watch is None:
            time.sleep(0.5)
        elif stdout_watch.poll(500):
            return


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description="Misbehaving HTTP server on 127.0.0.1.")
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--log", help="append one JSON line per connection to this file")
    parser.add_argument(
        "--max-seconds", type=float, default=60.0, help="lifetime in seconds (default 60)"
    )
    parser.add_argument("--status", type=int, default=200, help="fixed: status code")
    parser.add_argument("--body", default="", help="fixed: response body")
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        help='fixed: a "Name: value" response header; may be repeated',
    )
    parser.add_argument(
        "--rate", type=float, default=1.0, help="slow: bytes per second (default 1)"
    )
    parser.add_argument(
        "--content-length",
        help="fixed: the Content-Length value to send in place of the body's length",
    )
    args = parser.parse_args(argv)
    if not 0 < args.max_seconds <= 3600:
        parser.error("--max-seconds must be from 0 to 3600")
    if args.rate <= 0:
        parser.error("--rate must be positive")
    if any("\r" in value or "\n" in value for value in args.header):
        parser.error("--header values must not contain CR or LF")
    if args.content_length is not None and (
        "\r" in args.content_length or "\n" in args.content_length
    ):
        parser.error("--content-length must not contain CR or LF")
    return args


def main(argv):
    options = parse_arguments(argv)
    signal.alarm(STARTUP_TIMEOUT_SECONDS)
    parent_pid = os.getppid()
    deadline = time.monotonic() + options.max_seconds

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(MAX_CONNECTIONS)
    threading.Thread(target=accept_loop, args=(listener, options), daemon=True).start()

    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
    port = listener.getsockname()[1]
    ready = {"url": "http://127.0.0.1:%d" % port, "port": port, "pid": os.getpid()}
    try:
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        os._exit(1)
    signal.alarm(0)

    watch_lifetime(deadline, parent_pid)
    # Connection threads may be blocked in sleeps or sends, so skip interpreter cleanup.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
