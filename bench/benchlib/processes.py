"""Child processes: setup commands, and contender runs measured through bench/measure.c."""

import os
import signal
import socket
import subprocess
import tempfile
import threading
import time

from benchlib import BUILD, ROOT

MEASURE = os.path.join(BUILD, "measure")
# A contender process that runs longer than this is killed and reported.
PROCESS_TIMEOUT_SECONDS = 120

# Process groups of contenders still running, killed when the driver stops early.
RUNNING_GROUPS = set()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port, seconds):
    """Return whether 127.0.0.1:port accepts a connection within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def run_quiet(argv, timeout=600, **kwargs):
    """Run a setup command and return (exit status, output)."""
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=timeout, text=True, **kwargs)
    except FileNotFoundError as err:
        return 127, str(err)
    except subprocess.TimeoutExpired:
        return 124, "%s timed out after %d s" % (argv[0], timeout)
    return done.returncode, done.stdout


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_running():
    for pgid in list(RUNNING_GROUPS):
        kill_group(pgid)


def run_contender(argv, env, timeout=PROCESS_TIMEOUT_SECONDS):
    """Run one contender process through bench/measure.c and return its measurements.

    The process prints "ready", then "done N" and, after a failure, the
    error. CPU time and peak RSS come from wait4 on that process alone.
    The loop time is the span between the "ready" and "done" lines.
    """
    stderr = tempfile.TemporaryFile()
    fd, usage_path = tempfile.mkstemp(prefix="bench-usage-")
    os.close(fd)
    started = time.perf_counter()
    process = subprocess.Popen([MEASURE, usage_path] + argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=stderr, stdin=subprocess.DEVNULL, start_new_session=True)
    RUNNING_GROUPS.add(process.pid)
    timer = threading.Timer(timeout, kill_group, (process.pid,))
    timer.start()
    ready_at = done_at = None
    ok = 0
    extra = []
    try:
        for raw in process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line == "ready" and ready_at is None:
                ready_at = time.perf_counter()
            elif line.startswith("done ") and done_at is None:
                done_at = time.perf_counter()
                ok = int(line.split()[1])
            elif line:
                extra.append(line)
        process.wait()
        ended = time.perf_counter()
    finally:
        timer.cancel()
        kill_group(process.pid)
        RUNNING_GROUPS.discard(process.pid)
        process.stdout.close()

    stderr.seek(0)
    error_text = stderr.read().decode("utf-8", "replace").strip()
    stderr.close()
    with open(usage_path) as f:
        fields = f.read().split()
    os.remove(usage_path)
    error = "; ".join(extra + ([error_text] if error_text else []))
    if len(fields) != 4:
        # measure itself was killed, so it wrote nothing.
        fields = [str(128 + signal.SIGKILL), "0", "0", "0"]
        error = "killed after %d s%s" % (timeout, "; " + error if error else "")
    user, system = float(fields[1]), float(fields[2])
    return {
        "exit": int(fields[0]),
        "ok": ok,
        "wall": ended - started,
        "loop": (done_at - ready_at) if ready_at and done_at else None,
        "cpu": user + system,
        "user": user,
        "sys": system,
        "maxrss_kb": int(fields[3]),
        "error": error[:500],
    }
