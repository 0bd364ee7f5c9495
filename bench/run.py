#!/usr/bin/env python3
"""Benchmark appcenter.core against its peers and against plain libcurl.

Run from the repository root after `make`, or use `make bench`:

    python3 bench/run.py [--requests N] [--rounds R] [--profile]

The driver starts nginx on 127.0.0.1 with its own prefix in a temporary
directory. nginx returns a fixed create-credential response of about
1.2 KB to every request. The contenders then run alternately: one process
each per round, in the same order every round, each making the same N
requests. The driver measures every process:

    wall time     from start to exit, and the request loop alone: the
                  span between the "ready" and "done" lines it prints
    CPU time      user + system from wait4's rusage, divided by N
    peak RSS      ru_maxrss (bench/measure.c explains why a launcher reports it)
    connections   accepted by nginx during the process (stub_status)

Each figure is the median over the rounds. The CPU ratio to the floor is
the median of the per-round ratios, so slow drifts in machine load cancel.
A second run of every contender with N = 0 measures its start-up cost.

Further sections: HTTPS against HTTP (connection and TLS session reuse),
the non-blocking API against the emulator with 200 ms of delay, and with
--profile the instruction counts under callgrind.

Results go to build/bench/ (results.md, results.json) and the chart to
bench/results.png. Python 3 standard library only. Every server listens
on 127.0.0.1 and is stopped at the end, also after an error or a signal.
"""

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time

# Keep __pycache__ out of bench/benchlib in the work tree.
sys.dont_write_bytecode = True

from benchlib import ROOT, callgrind, report
from benchlib.contenders import (build_programs, check_requirements, ensure_debian_packages,
                                 make_contenders, oneshot_contender, set_environment)
from benchlib.fixtures import DEFAULT_TOKEN_BYTES, credential_body
from benchlib.measuring import load_average, measure, run_async, run_rounds, summarize
from benchlib.nginx import Nginx
from benchlib.processes import kill_running

DEFAULT_REQUESTS = 3000
DEFAULT_ROUNDS = 7
# core-oneshot pays a TCP connect and a full TLS handshake per request,
# so it makes this many times fewer requests.
ONESHOT_DIVISOR = 10
# Requests per contender in the untimed warm-up run.
WARM_UP_REQUESTS = 20


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=int(os.environ.get("BENCH_REQUESTS") or DEFAULT_REQUESTS),
                        help="requests per contender process (default %d)" % DEFAULT_REQUESTS)
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS") or DEFAULT_ROUNDS),
                        help="rounds; each figure is the median over them (default %d)" % DEFAULT_ROUNDS)
    parser.add_argument("--token-bytes", type=int, default=DEFAULT_TOKEN_BYTES,
                        help="size in bytes of the fake token in X-Auth-Token (default %d)" % DEFAULT_TOKEN_BYTES)
    parser.add_argument("--workers", type=int, default=1, help="nginx worker processes (default 1)")
    parser.add_argument("--only", default="",
                        help="comma-separated contender names for the main table; the floor always runs")
    parser.add_argument("--skip-tls", action="store_true", help="leave out the HTTPS section")
    parser.add_argument("--skip-async", action="store_true", help="leave out the non-blocking section")
    parser.add_argument("--profile", action="store_true",
                        help="also count instructions per request of floor, core-token and core-aksk "
                             "under callgrind")
    parser.add_argument("--profile-requests", type=int, default=2000,
                        help="requests per callgrind run (default 2000)")
    parser.add_argument("--chart", default=os.path.join(ROOT, "bench", "results.png"),
                        help="path of the PNG chart (default bench/results.png)")
    args = parser.parse_args()
    if args.requests < 1 or args.rounds < 1 or args.profile_requests < 1:
        parser.error("--requests, --rounds and --profile-requests must be at least 1")
    if args.token_bytes < 16:
        parser.error("--token-bytes must be at least 16")
    return args


def prepare_contenders(args):
    """Build the helpers, install what the peers need, and return the contenders."""
    contenders = make_contenders(build_programs())
    if args.only:
        selected = set(args.only.split(","))
        contenders = [c for c in contenders if c.name in selected or c.name == "floor"]
    for c in contenders:
        set_environment(c, args.token_bytes)
    check_requirements(contenders)
    for c in contenders:
        if c.skip_reason:
            print("skipping %s: %s" % (c.name, c.skip_reason), flush=True)
    return contenders


def warm_up(nginx, contenders):
    """Run each contender once, untimed, and skip those that fail."""
    for c in contenders:
        if not c.skip_reason:
            sample = measure(nginx, c, nginx.url("http"), WARM_UP_REQUESTS)
            if sample["exit"] != 0:
                c.skip_reason = "warm-up failed: " + sample["error"]


def tls_section(nginx, by_name, args, ca_file):
    """Compare HTTP with HTTPS for the floor and core-token; return (rows, order)."""
    oneshot = oneshot_contender()
    set_environment(oneshot, args.token_bytes)
    floor, core_token = by_name["floor"], by_name["core-token"]
    entries = [
        ("floor-http", floor, nginx.url("http"), args.requests, None, False),
        ("floor-https", floor, nginx.url("https"), args.requests, ca_file, True),
        ("core-token-http", core_token, nginx.url("http"), args.requests, None, False),
        ("core-token-https", core_token, nginx.url("https"), args.requests, ca_file, True),
        ("core-token-https-reconnect-100", core_token, nginx.url("recycle"), args.requests, ca_file, True),
        ("core-oneshot-https", oneshot, nginx.url("https"),
         max(1, args.requests // ONESHOT_DIVISOR), ca_file, True),
    ]
    results = run_rounds(nginx, entries, args.rounds, "https")
    return summarize(results, "floor-http"), [entry[0] for entry in entries]


def compose_text(data, contenders, target_lines, chart_note):
    info = data["machine"]
    parts = ["## Machine", ""]
    parts += ["- %s: %s" % (key, value) for key, value in info.items()]
    parts += [
        "- load average before / after: %s / %s" % (data["load_before"], data["load_after"]),
        "- %d requests per process, %d rounds, response %d bytes, token %d bytes, %.0f s in all" % (
            data["requests"], data["rounds"], data["response_bytes"], data["token_bytes"], data["seconds"]),
        "", "## Main comparison (HTTP, keep-alive where the client supports it)", "",
        report.main_table(data["main"], contenders), "", "## Targets", "",
    ] + target_lines
    if "tls" in data:
        parts += ["", "## HTTPS against HTTP", "", report.tls_table(data["tls"], data["tls_order"])]
    if "async" in data:
        parts += ["", "## Non-blocking API against the emulator", "", report.async_table(data["async"])]
    if "profile" in data:
        parts += ["", "## Profile (callgrind, instructions per request, start-up subtracted)", "",
                  report.profile_text(data["profile"])]
    parts += ["", "Chart: " + chart_note]
    return "\n".join(parts) + "\n"


def main():
    args = parse_arguments()
    os.chdir(ROOT)
    started = time.monotonic()
    missing = [tool for tool in ("nginx", "openssl", "cc", "lua5.4") if shutil.which(tool) is None]
    if missing:
        sys.exit("bench: %s not found; run make deps" % ", ".join(missing))
    chart_reason = ensure_debian_packages(["gnuplot-nox"])
    contenders = prepare_contenders(args)
    by_name = {c.name: c for c in contenders}

    data = {"machine": report.machine_info(), "requests": args.requests, "rounds": args.rounds,
            "response_bytes": len(credential_body()), "token_bytes": args.token_bytes,
            "load_before": load_average()}
    tmp = tempfile.mkdtemp(prefix="appcenter-bench-")
    nginx = Nginx(tmp, args.workers)
    # SIGTERM and SIGHUP end the run through the finally clause below.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: sys.exit(1))
    try:
        nginx.start()
        print("nginx on %s, response %d bytes, %d requests x %d rounds" % (
            nginx.url("http"), data["response_bytes"], args.requests, args.rounds), flush=True)
        warm_up(nginx, contenders)
        entries = [(c.name, c, nginx.url("http"), args.requests, None, False)
                   for c in contenders if not c.skip_reason]
        main_results = run_rounds(nginx, entries, args.rounds, "main")
        data["main"] = summarize(main_results, "floor")

        if not args.skip_tls and not by_name["floor"].skip_reason \
                and "core-token" in by_name and not by_name["core-token"].skip_reason:
            data["tls"], data["tls_order"] = tls_section(nginx, by_name, args, os.path.join(tmp, "cert.pem"))
        if not args.skip_async:
            data["async"] = run_async(min(args.rounds, 3))
        if args.profile:
            if shutil.which("valgrind") is None:
                data["profile_error"] = "valgrind not found"
            else:
                profiled = [by_name[name] for name in ("floor", "core-token", "core-aksk",
                                                 "core-token-luajit", "luacurl-luajit")
                            if name in by_name and not by_name[name].skip_reason]
                data["profile"] = callgrind.profile(nginx, profiled, args.profile_requests)
    finally:
        kill_running()
        nginx.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    data["load_after"] = load_average()
    data["seconds"] = time.monotonic() - started
    target_lines, data["targets"] = report.targets(data["main"], main_results, contenders)
    data["skipped"] = {c.name: c.skip_reason for c in contenders if c.skip_reason}
    if chart_reason is None:
        chart_reason = report.write_chart(data["main"], contenders, args.chart)
    chart_note = chart_reason or os.path.relpath(args.chart, ROOT)
    text = compose_text(data, contenders, target_lines, chart_note)
    report.write_results(data, text)
    print()
    print(text)
    print("results: build/bench/results.md and build/bench/results.json")


if __name__ == "__main__":
    main()
