"""Rounds of contender runs and their medians."""

import json
import os
import statistics
import time

from benchlib import ROOT
from benchlib.contenders import LUA_PATH
from benchlib.processes import run_contender, run_quiet


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values):
    """Return (max - min) / median of the values, a rough measure of noise."""
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return None
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle else None


def load_average():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def measure(nginx, contender, url, requests, ca_file=None, tls=False):
    """Run the contender once and return its sample, with nginx's connection counts."""
    before = nginx.accepted_connections()
    tls_before = len(nginx.tls_log_lines()) if tls else 0
    sample = run_contender(contender.argv(url, requests, ca_file), contender.env)
    # The second status query is itself one accepted connection.
    sample["connections"] = nginx.accepted_connections() - before - 1
    if tls:
        # The worker writes a line at each connection's first request.
        new_lines = [line.split() for line in nginx.tls_log_lines()[tls_before:]]
        sample["tls_connections"] = len(new_lines)
        sample["tls_resumed"] = sum(1 for fields in new_lines if fields[1:2] == ["r"])
        sample["tls_protocol"] = sorted({fields[2] for fields in new_lines if len(fields) > 2})
    sample["requests"] = requests
    if sample["exit"] != 0 or sample["ok"] != requests:
        print("  %s failed: exit %s, %d of %d requests ok: %s" % (
            contender.name, sample["exit"], sample["ok"], requests, sample["error"]), flush=True)
    return sample


def run_rounds(nginx, entries, rounds, label):
    """Run every entry once per round, in the same order, each followed by a start-up run.

    entries: list of (key, contender, url, requests, ca_file, tls).
    Returns {key: {"runs": [...], "startup": [...]}}; a start-up run makes
    no request.
    """
    results = {key: {"runs": [], "startup": []} for key, *_ in entries}
    for round_index in range(rounds):
        started = time.monotonic()
        for key, contender, url, requests, ca_file, tls in entries:
            results[key]["runs"].append(measure(nginx, contender, url, requests, ca_file, tls))
            results[key]["startup"].append(measure(nginx, contender, url, 0, ca_file, tls))
        print("%s: round %d of %d done in %.1f s (load average %s)" % (
            label, round_index + 1, rounds, time.monotonic() - started, load_average()), flush=True)
    return results


def succeeded(sample):
    return sample["exit"] == 0 and sample["ok"] == sample["requests"]


def cpu_per_request(sample):
    return sample["cpu"] / sample["requests"]


def loop_rate(sample):
    """Return requests per second between the "ready" and "done" lines, or None."""
    return sample["requests"] / sample["loop"] if sample["loop"] else None


def paired_ratio(results, key, base_key, figure=cpu_per_request):
    """Return the median over rounds of key's figure divided by base_key's in the same round.

    The default figure is CPU per request. Pass loop_rate to compare
    requests per second.
    """
    ratios = []
    for run, base in zip(results[key]["runs"], results[base_key]["runs"]):
        if succeeded(run) and succeeded(base):
            ours, theirs = figure(run), figure(base)
            if ours is not None and theirs:
                ratios.append(ours / theirs)
    return median(ratios)


def summarize(results, floor_key):
    """Return one row of medians per key, with the per-round CPU ratio to floor_key."""
    rows = {}
    for key, data in results.items():
        runs = [r for r in data["runs"] if succeeded(r)]
        if not runs:
            rows[key] = {"failed": data["runs"][0]["error"] if data["runs"] else "no runs"}
            continue
        n = runs[0]["requests"]
        startup_cpu = median([r["cpu"] for r in data["startup"] if r["exit"] == 0])
        row = {
            "requests": n,
            "rounds": len(runs),
            "cpu_us": median([cpu_per_request(r) for r in runs]) * 1e6,
            "cpu_spread": spread([cpu_per_request(r) for r in runs]),
            "user_share": median([r["user"] / r["cpu"] for r in runs if r["cpu"] > 0]),
            "net_cpu_us": None,
            "startup_cpu_ms": None,
            "rps_loop": median([loop_rate(r) for r in runs]),
            "rps_process": median([n / r["wall"] for r in runs]),
            "maxrss_mb": median([r["maxrss_kb"] for r in runs]) / 1024.0,
            "connections": median([r["connections"] for r in runs]),
            "ratio_to_floor": paired_ratio(results, key, floor_key) if floor_key in results else None,
        }
        if startup_cpu is not None:
            row["startup_cpu_ms"] = startup_cpu * 1e3
            row["net_cpu_us"] = max(0.0, median([r["cpu"] - startup_cpu for r in runs]) / n * 1e6)
        for field in ("tls_connections", "tls_resumed"):
            if field in runs[0]:
                row[field] = median([r[field] for r in runs])
        if "tls_protocol" in runs[0]:
            row["tls_protocol"] = runs[0]["tls_protocol"]
        rows[key] = row
    return rows


def run_async(rounds):
    """Run bench/async.lua `rounds` times and return the medians per max_connections."""
    env = dict(os.environ, LUA_PATH=LUA_PATH, LUA_CPATH="build/lua5.4/?.so;;")
    for name in ("LUA_PATH_5_4", "LUA_CPATH_5_4"):
        env.pop(name, None)
    samples = []
    for round_index in range(rounds):
        status, output = run_quiet(["lua5.4", "bench/async.lua"], cwd=ROOT, env=env, timeout=180)
        lines = [line for line in output.splitlines() if line.startswith("{")]
        if status != 0 or not lines:
            return {"failed": output.strip()[-500:]}
        samples.append([json.loads(line) for line in lines])
        print("async: round %d of %d done" % (round_index + 1, rounds), flush=True)
    summary = []
    for index, first in enumerate(samples[0]):
        same = [sample[index] for sample in samples]
        summary.append({
            "max_connections": first["max_connections"],
            "requests": first["requests"],
            "delay_ms": first["delay_ms"],
            "ok": min(s["ok"] for s in same),
            "seconds": median([s["seconds"] for s in same]),
            "connections": median([s["connections"] for s in same]),
            "cpu_ms": median([s["cpu_ms"] for s in same]),
            "listen_overflows": median([s.get("listen_overflows") for s in same]),
        })
    return {"rows": summary}
