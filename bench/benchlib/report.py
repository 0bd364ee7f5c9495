"""The Markdown report, the target verdicts and the chart."""

import json
import os
import platform
import shutil

from benchlib import BUILD, ROOT
from benchlib.contenders import NODE_SDK_PACKAGE, PEERS, node_sdk_version
from benchlib.measuring import loop_rate, paired_ratio
from benchlib.processes import run_quiet

# Targets, as stated in BENCHMARKS.md.
TARGET_TOKEN_TO_FLOOR = 1.15
TARGET_AKSK_OVER_TOKEN = 1.10


def first_line(argv):
    status, output = run_quiet(argv, timeout=30)
    lines = output.strip().splitlines()
    return lines[0].strip() if status == 0 and lines else "unknown"


def machine_info():
    """Return the CPU, kernel, tool versions and commit that a run used."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    sdk_version = node_sdk_version()
    git_head = first_line(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = run_quiet(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "lua"])[1].strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": "%s %s %s" % (platform.system(), platform.release(), platform.machine()),
        "lua": first_line(["lua5.4", "-v"]),
        "luajit": first_line(["luajit", "-v"]),
        "libcurl": first_line(["curl-config", "--version"]),
        "openssl": first_line(["openssl", "version"]),
        "nginx": run_quiet(["nginx", "-v"])[1].strip().replace("nginx version: ", ""),
        "node": first_line(["node", "--version"]),
        "node_sdk": "%s %s" % (NODE_SDK_PACKAGE, sdk_version) if sdk_version else "not installed",
        "lua_curl": first_line(["dpkg-query", "-W", "-f=${Version}", "lua-curl"]),
        "lua_socket": first_line(["dpkg-query", "-W", "-f=${Version}", "lua-socket"]),
        "lua_cjson": first_line(["dpkg-query", "-W", "-f=${Version}", "lua-cjson"]),
        "commit": git_head + (" with uncommitted changes in src/ or lua/" if dirty else ""),
    }


def fmt(value, pattern):
    return "n/a" if value is None else pattern % value


def percent(value):
    return fmt(None if value is None else value * 100, "%.0f %%")


def main_table(rows, contenders):
    lines = [
        "| contender | CPU µs/req | ratio to floor | CPU spread | user share | net CPU µs/req "
        "| start-up CPU ms | req/s (loop) | req/s (process) | peak RSS MB | connections |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in contenders:
        row = rows.get(c.name)
        if c.skip_reason:
            lines.append("| %s | skipped: %s ||||||||||" % (c.name, c.skip_reason))
        elif row is None or "failed" in row:
            lines.append("| %s | failed: %s ||||||||||" % (c.name, row and row["failed"]))
        else:
            lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                c.name, fmt(row["cpu_us"], "%.1f"), fmt(row["ratio_to_floor"], "%.2f"),
                percent(row["cpu_spread"]), percent(row["user_share"]),
                fmt(row["net_cpu_us"], "%.1f"), fmt(row["startup_cpu_ms"], "%.1f"),
                fmt(row["rps_loop"], "%.0f"), fmt(row["rps_process"], "%.0f"),
                fmt(row["maxrss_mb"], "%.1f"), fmt(row["connections"], "%.0f")))
    return "\n".join(lines)


def tls_table(rows, order):
    lines = [
        "| run | requests | CPU µs/req | ratio to floor-http | req/s (loop) | connections "
        "| TLS handshakes | resumed | protocol |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key in order:
        row = rows.get(key)
        if row is None:
            continue
        if "failed" in row:
            lines.append("| %s | failed: %s ||||||||" % (key, row["failed"]))
            continue
        lines.append("| %s | %d | %s | %s | %s | %s | %s | %s | %s |" % (
            key, row["requests"], fmt(row["cpu_us"], "%.1f"), fmt(row["ratio_to_floor"], "%.2f"),
            fmt(row["rps_loop"], "%.0f"), fmt(row["connections"], "%.0f"),
            fmt(row.get("tls_connections"), "%.0f"), fmt(row.get("tls_resumed"), "%.0f"),
            ", ".join(row.get("tls_protocol", [])) or "-"))
    return "\n".join(lines)


def async_table(result):
    if "failed" in result:
        return "async run failed: %s" % result["failed"]
    lines = [
        "| max_connections | requests | server delay ms | ok | total s | ideal s | connections | CPU ms "
        "| listen queue overflows |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        # With the delay fixed, requests complete in waves of max_connections.
        waves = -(-row["requests"] // row["max_connections"])
        lines.append("| %d | %d | %d | %d | %.2f | %.2f | %.0f | %.0f | %s |" % (
            row["max_connections"], row["requests"], row["delay_ms"], row["ok"], row["seconds"],
            waves * row["delay_ms"] / 1000.0, row["connections"], row["cpu_ms"],
            fmt(row["listen_overflows"], "%.0f")))
    return "\n".join(lines)


def targets(rows, results, contenders):
    """Return (Markdown lines, {target: met}) for the targets stated in BENCHMARKS.md."""
    lines, verdicts = [], {}
    token, aksk = rows.get("core-token", {}), rows.get("core-aksk", {})
    if token.get("ratio_to_floor") is not None:
        met = token["ratio_to_floor"] <= TARGET_TOKEN_TO_FLOOR
        verdicts["token_vs_floor"] = met
        lines.append("- core-token CPU per request is %.2f × the floor's (target ≤ %.2f): %s" % (
            token["ratio_to_floor"], TARGET_TOKEN_TO_FLOOR, "met" if met else "missed"))
    if "cpu_us" in aksk and "cpu_us" in token:
        ratio = paired_ratio(results, "core-aksk", "core-token")
        met = ratio <= TARGET_AKSK_OVER_TOKEN
        verdicts["aksk_vs_token"] = met
        lines.append("- core-aksk CPU per request is %.2f × core-token's, %+.0f %% (target ≤ +%.0f %%): %s" % (
            ratio, (ratio - 1) * 100, (TARGET_AKSK_OVER_TOKEN - 1) * 100, "met" if met else "missed"))
    peers = [c for c in contenders if c.name in PEERS]
    for ours_key in ("core-token", "core-token-luajit", "core-aksk"):
        ours = rows.get(ours_key, {})
        if "cpu_us" not in ours:
            continue
        for peer in peers:
            theirs = rows.get(peer.name, {})
            if peer.skip_reason or "cpu_us" not in theirs:
                lines.append("- %s against %s: not measured (%s)" % (
                    ours_key, peer.name, peer.skip_reason or theirs.get("failed")))
                continue
            # Ratios of the two processes in the same round, as for the
            # floor, so that drifts in machine load cancel.
            cpu_ratio = paired_ratio(results, ours_key, peer.name)
            rps_ratio = paired_ratio(results, ours_key, peer.name, loop_rate)
            cpu_ahead = cpu_ratio is not None and cpu_ratio < 1
            rps_ahead = rps_ratio is not None and rps_ratio > 1
            verdicts["%s_ahead_of_%s" % (ours_key, peer.name)] = cpu_ahead and rps_ahead
            lines.append("- %s against %s: CPU %.1f vs %.1f µs/req, per-round ratio %s (%s); "
                         "%.0f vs %.0f req/s, per-round ratio %s (%s)" % (
                             ours_key, peer.name, ours["cpu_us"], theirs["cpu_us"], fmt(cpu_ratio, "%.3f"),
                             "ahead" if cpu_ahead else "behind", ours["rps_loop"], theirs["rps_loop"],
                             fmt(rps_ratio, "%.3f"), "ahead" if rps_ahead else "behind"))
    return lines, verdicts


def profile_text(report):
    lines = []
    for name, data in report.items():
        total = data["ir_per_request"]

        def share(value):
            return "%.1f %%" % (100 * value / total)

        lines += ["### %s: %.0f instructions per request" % (name, total), "",
                  "By object file (own cost):", "", "| object | Ir/req | share |", "|---|---:|---:|"]
        lines += ["| %s | %.0f | %s |" % (obj, value, share(value)) for obj, value in data["by_object"][:8]]
        if data["module_inclusive"]:
            lines += ["", "Functions in core.so, inclusive cost (callees included):", "",
                      "| function | Ir/req | share |", "|---|---:|---:|"]
            lines += ["| %s | %.0f | %s |" % (f, v, share(v)) for f, v in data["module_inclusive"]]
            lines += ["", "Functions in core.so, own cost:", "",
                      "| function | Ir/req | share |", "|---|---:|---:|"]
            lines += ["| %s | %.0f | %s |" % (f, v, share(v)) for f, v in data["module_own"]]
        lines += ["", "Top functions overall, own cost:", "",
                  "| function | object | Ir/req | share |", "|---|---|---:|---:|"]
        lines += ["| %s | %s | %.0f | %s |" % (f, o, v, share(v)) for f, o, v in data["top_own"]]
        lines.append("")
    return "\n".join(lines)


def write_chart(rows, contenders, path):
    """Draw CPU per request and requests per second per contender. Return None, or why not."""
    if shutil.which("gnuplot") is None:
        return "gnuplot not found: no chart"
    data_path = os.path.join(BUILD, "chart.dat")
    with open(data_path, "w") as f:
        f.write("# contender cpu_us_per_request requests_per_second\n")
        for c in contenders:
            row = rows.get(c.name)
            if c.skip_reason or not row or "cpu_us" not in row:
                continue
            f.write('"%s" %.2f %.1f\n' % (c.name, row["cpu_us"], row["rps_loop"] or 0))
    status, output = run_quiet(["gnuplot", "-e", "data='%s'; output='%s'" % (data_path, path),
                                os.path.join(ROOT, "bench", "plot.gp")], timeout=60)
    if status != 0:
        return "gnuplot failed: " + output.strip()[-300:]
    return None


def write_results(report, text):
    with open(os.path.join(BUILD, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(BUILD, "results.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
