"""nginx on 127.0.0.1 with its own prefix, serving the fixed credential response."""

import os
import subprocess
import urllib.request

from benchlib.fixtures import credential_body
from benchlib.processes import free_port, run_quiet, wait_for_port

NGINX_START_SECONDS = 10

NGINX_CONF = """\
worker_processes {workers};
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
{user}
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    # The default allows 8 KiB per header line, less than --token-bytes may request.
    large_client_header_buffers 4 64k;
    keepalive_timeout 120s;
    # The default, 1000, would make every client reconnect during a run.
    keepalive_requests 1000000;

    # One line per TLS connection, at its first request.
    map $connection_requests $first_request {{
        1 1;
        default 0;
    }}
    log_format tls_connection '$connection $ssl_session_reused $ssl_protocol';

    server {{
        listen 127.0.0.1:{status_port};
        location / {{
            stub_status;
        }}
    }}
    server {{
        listen 127.0.0.1:{http_port};
        location / {{
{api}
        }}
    }}
    server {{
        listen 127.0.0.1:{https_port} ssl;
        ssl_certificate {tmp}/cert.pem;
        ssl_certificate_key {tmp}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:bench:1m;
        access_log {tmp}/tls.log tls_connection if=$first_request;
        location / {{
{api}
        }}
    }}
    server {{
        # The same, but nginx closes each connection after 100 requests,
        # so that clients reconnect and may resume their TLS session.
        listen 127.0.0.1:{recycle_port} ssl;
        ssl_certificate {tmp}/cert.pem;
        ssl_certificate_key {tmp}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:bench:1m;
        keepalive_requests 100;
        access_log {tmp}/tls.log tls_connection if=$first_request;
        location / {{
{api}
        }}
    }}
}}
"""

API_LOCATION = """\
            default_type application/json;
            add_header X-Request-Id $request_id;
            return 200 '{body}';"""


class Nginx:
    """nginx with its own prefix in the directory `tmp`, listening on 127.0.0.1 only.

    Servers: "http", "https", "recycle" (HTTPS, closing connections after
    100 requests) and "status" (stub_status).
    """

    def __init__(self, tmp, workers):
        self.tmp = tmp
        self.workers = workers
        self.process = None
        self.ports = {name: free_port() for name in ("status", "http", "https", "recycle")}

    def start(self):
        """Create a throw-away certificate, write the configuration and start nginx."""
        status, output = run_quiet([
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", os.path.join(self.tmp, "key.pem"),
            "-out", os.path.join(self.tmp, "cert.pem")], timeout=60)
        if status != 0:
            raise RuntimeError("openssl could not create the test certificate:\n" + output)
        user = ""
        if os.geteuid() == 0:
            # A master started as root runs its workers as "nobody"; Debian
            # has no group of that name, so name the group.
            user = "user nobody nogroup;"
            os.chmod(self.tmp, 0o755)
        conf = NGINX_CONF.format(
            workers=self.workers, tmp=self.tmp, user=user,
            status_port=self.ports["status"], http_port=self.ports["http"],
            https_port=self.ports["https"], recycle_port=self.ports["recycle"],
            api=API_LOCATION.format(body=credential_body()))
        conf_path = os.path.join(self.tmp, "nginx.conf")
        with open(conf_path, "w") as f:
            f.write(conf)
        self.process = subprocess.Popen(
            ["nginx", "-p", self.tmp, "-c", conf_path, "-e", os.path.join(self.tmp, "error.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not all(wait_for_port(port, NGINX_START_SECONDS) for port in self.ports.values()):
            self.stop()
            raise RuntimeError("nginx did not start within %d s:\n%s" % (
                NGINX_START_SECONDS, self.error_log()))

    def error_log(self):
        try:
            with open(os.path.join(self.tmp, "error.log")) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def url(self, name):
        scheme = "http" if name == "http" else "https"
        return "%s://127.0.0.1:%d" % (scheme, self.ports[name])

    def accepted_connections(self):
        """Return nginx's count of accepted connections, this query's own included."""
        url = "http://127.0.0.1:%d/" % self.ports["status"]
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return int(text.splitlines()[2].split()[0])

    def tls_log_lines(self):
        """Return the TLS log: "connection reused protocol" per connection, "r" when resumed."""
        try:
            with open(os.path.join(self.tmp, "tls.log")) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
