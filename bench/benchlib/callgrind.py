"""Instruction counts per request under valgrind's callgrind, start-up subtracted.

Each contender runs twice under callgrind against the same nginx: with
no request and with N requests. The difference divided by N is the cost
of one request in user space. Kernel time (system calls) is not counted.
"""

import os
import re

from benchlib import BUILD
from benchlib.processes import run_contender, run_quiet

ANNOTATE_LINE = re.compile(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(.+?)\s+\[(.+)\]\s*$")
MODULE_OBJECT = "core.so"


def annotate(out_file, inclusive):
    """Return ({(function, object file name): Ir}, program total Ir) from callgrind_annotate."""
    status, output = run_quiet(["callgrind_annotate", "--inclusive=%s" % ("yes" if inclusive else "no"),
                                "--threshold=100", out_file])
    if status != 0:
        raise RuntimeError("callgrind_annotate failed: " + output[-500:])
    costs, total = {}, None
    for line in output.splitlines():
        if total is None and "PROGRAM TOTALS" in line:
            total = int(line.split()[0].replace(",", ""))
            continue
        match = ANNOTATE_LINE.match(line)
        if match:
            key = (match.group(2), os.path.basename(match.group(3)))
            costs[key] = costs.get(key, 0) + int(match.group(1).replace(",", ""))
    return costs, total


def run_callgrind(nginx, contender, requests, out_dir):
    out_file = os.path.join(out_dir, "callgrind.%s.%d" % (contender.name, requests))
    argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out_file] + \
        contender.argv(nginx.url("http"), requests, None)
    sample = run_contender(argv, contender.env, timeout=900)
    if sample["exit"] != 0:
        raise RuntimeError("callgrind run of %s failed: %s" % (contender.name, sample["error"]))
    return out_file


def per_request(base, full, requests):
    costs = {}
    for key, value in full.items():
        delta = (value - base.get(key, 0)) / requests
        if delta > 0:
            costs[key] = delta
    return costs


def profile(nginx, contenders, requests):
    """Return, per contender, instructions per request by object file and by function."""
    out_dir = os.path.join(BUILD, "profile")
    os.makedirs(out_dir, exist_ok=True)
    report = {}
    for contender in contenders:
        base_file = run_callgrind(nginx, contender, 0, out_dir)
        full_file = run_callgrind(nginx, contender, requests, out_dir)
        base_self, base_total = annotate(base_file, inclusive=False)
        full_self, full_total = annotate(full_file, inclusive=False)
        own = per_request(base_self, full_self, requests)
        inclusive = per_request(annotate(base_file, inclusive=True)[0],
                                annotate(full_file, inclusive=True)[0], requests)
        by_object = {}
        for (_, obj), value in own.items():
            by_object[obj] = by_object.get(obj, 0) + value
        ranked_own = sorted(own.items(), key=lambda item: -item[1])
        ranked_inclusive = sorted(inclusive.items(), key=lambda item: -item[1])
        report[contender.name] = {
            "ir_per_request": (full_total - base_total) / requests,
            "by_object": sorted(by_object.items(), key=lambda item: -item[1]),
            "top_own": [(f, o, v) for (f, o), v in ranked_own[:15]],
            "module_own": [(f, v) for (f, o), v in ranked_own if o == MODULE_OBJECT][:12],
            "module_inclusive": [(f, v) for (f, o), v in ranked_inclusive if o == MODULE_OBJECT][:15],
        }
        print("profile: %s done" % contender.name, flush=True)
    return report
