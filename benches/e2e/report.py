#!/usr/bin/env python3
"""Helpers for run.sh: parse one wrk run, and summarise all runs into a table + JSON.

  report.py record RUNS.jsonl WRK_OUTPUT key=value...   append one run (wrk output parsed)
  report.py summary RUNS.jsonl META.json OUT.json       print the table, write OUT.json
"""
import json
import re
import statistics
import sys

UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def dur_us(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    if not m:
        return None
    return float(m.group(1)) * UNITS_US[m.group(2)]


def parse_wrk(out):
    r = {"requests": None, "wrk_seconds": None, "rps": None,
         "lat_us": {}, "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0},
         "non_2xx_3xx": 0}
    for line in out.splitlines():
        s = line.strip()
        m = re.fullmatch(r"(50|75|90|99)%\s+(\S+)", s)
        if m:
            r["lat_us"]["p" + m.group(1)] = dur_us(m.group(2))
            continue
        m = re.match(r"(\d+) requests in ([0-9.]+)(us|ms|s|m|h),", s)
        if m:
            r["requests"] = int(m.group(1))
            r["wrk_seconds"] = float(m.group(2)) * UNITS_US[m.group(3)] / 1e6
            continue
        m = re.match(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", s)
        if m:
            r["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"),
                                          map(int, m.groups())))
            continue
        m = re.match(r"Non-2xx or 3xx responses: (\d+)", s)
        if m:
            r["non_2xx_3xx"] = int(m.group(1))
            continue
        m = re.match(r"Requests/sec:\s+([0-9.]+)", s)
        if m:
            r["rps"] = float(m.group(1))
    return r


def conv(v):
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    return v


def record(runs_path, wrk_path, kvs):
    with open(wrk_path) as f:
        out = f.read()
    run = {k: conv(v) for k, v in (kv.split("=", 1) for kv in kvs)}
    run.update(parse_wrk(out))
    ticks = run["cpu_ticks"] / run["clk_tck"]
    run["cpu_seconds"] = ticks
    run["cpu_pct"] = 100.0 * ticks / run["wall_seconds"] if run["wall_seconds"] else None
    run["cpu_us_per_req"] = 1e6 * ticks / run["requests"] if run["requests"] else None
    run["peak_rss_mib"] = run["vmhwm_kib"] / 1024.0
    run["wrk_output"] = out
    with open(runs_path, "a") as f:
        f.write(json.dumps(run) + "\n")
    errs = sum(run["socket_errors"].values()) + run["non_2xx_3xx"]
    print("[e2e]   %-10s %-5s %10s req/s  p50 %9s  p99 %9s  cpu %5.1f µs/req (%3.0f%%)  rss %6.1f MiB%s" % (
        run["proxy"], run["scenario"], fmt(run["rps"], "%.0f"),
        fmt_us(run["lat_us"].get("p50")), fmt_us(run["lat_us"].get("p99")),
        run["cpu_us_per_req"] or float("nan"), run["cpu_pct"] or float("nan"),
        run["peak_rss_mib"], ("  ERRORS %d" % errs) if errs else ""), file=sys.stderr)


def fmt(v, f):
    return "-" if v is None else f % v


def fmt_us(v):
    if v is None:
        return "-"
    if v >= 1e6:
        return "%.2fs" % (v / 1e6)
    if v >= 1e3:
        return "%.2fms" % (v / 1e3)
    return "%.0fus" % v


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summary(runs_path, meta_path, out_path):
    with open(runs_path) as f:
        runs = [json.loads(l) for l in f if l.strip()]
    with open(meta_path) as f:
        meta = json.load(f)
    proxies = meta["proxies"]
    scenarios = meta["scenarios"]

    # Ratios to nginx from the same round and scenario, then medians over rounds.
    by_key = {(r["round"], r["scenario"], r["proxy"]): r for r in runs}
    for r in runs:
        ref = by_key.get((r["round"], r["scenario"], "nginx"))
        r["rps_vs_nginx"] = (r["rps"] / ref["rps"]) if ref and r["rps"] and ref["rps"] else None
        r["cpu_per_req_vs_nginx"] = (r["cpu_us_per_req"] / ref["cpu_us_per_req"]
                                     if ref and r["cpu_us_per_req"] and ref["cpu_us_per_req"] else None)

    rows = []
    for sc in scenarios:
        for p in proxies:
            rs = [r for r in runs if r["scenario"] == sc["name"] and r["proxy"] == p]
            if not rs:
                continue
            rows.append({
                "scenario": sc["name"], "connections": sc["connections"], "proxy": p,
                "rounds": len(rs),
                "rps": med([r["rps"] for r in rs]),
                "p50_us": med([r["lat_us"].get("p50") for r in rs]),
                "p99_us": med([r["lat_us"].get("p99") for r in rs]),
                "cpu_us_per_req": med([r["cpu_us_per_req"] for r in rs]),
                "cpu_pct": med([r["cpu_pct"] for r in rs]),
                "peak_rss_mib": med([r["peak_rss_mib"] for r in rs]),
                "rps_vs_nginx": med([r["rps_vs_nginx"] for r in rs]),
                "cpu_per_req_vs_nginx": med([r["cpu_per_req_vs_nginx"] for r in rs]),
                "errors_total": sum(sum(r["socket_errors"].values()) + r["non_2xx_3xx"] for r in rs),
                "non_2xx_3xx_total": sum(r["non_2xx_3xx"] for r in rs),
                "socket_errors_total": {k: sum(r["socket_errors"][k] for r in rs)
                                        for k in ("connect", "read", "write", "timeout")},
            })

    hdr = ("scenario", "proxy", "req/s", "p50", "p99", "CPU µs/req", "CPU%",
           "peak RSS MiB", "req/s ×nginx", "CPU/req ×nginx", "errors")
    table = [hdr]
    for row in rows:
        table.append((
            "%s c=%d" % (row["scenario"], row["connections"]), row["proxy"],
            fmt(row["rps"], "%.0f"), fmt_us(row["p50_us"]), fmt_us(row["p99_us"]),
            fmt(row["cpu_us_per_req"], "%.1f"), fmt(row["cpu_pct"], "%.0f"),
            fmt(row["peak_rss_mib"], "%.1f"),
            fmt(row["rps_vs_nginx"], "%.2f"), fmt(row["cpu_per_req_vs_nginx"], "%.2f"),
            str(row["errors_total"]),
        ))
    widths = [max(len(t[i]) for t in table) for i in range(len(hdr))]
    lines = []
    for i, t in enumerate(table):
        cells = [t[j].ljust(widths[j]) if j < 2 else t[j].rjust(widths[j]) for j in range(len(hdr))]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    print("Medians over %d round(s), %ss per run; ratios are to nginx in the same round."
          % (meta["rounds"], meta["duration_seconds"]))
    print("Load average at start: %s" % meta["loadavg_start"])
    print()
    print("\n".join(lines))
    errs = [r for r in runs if sum(r["socket_errors"].values()) or r["non_2xx_3xx"]]
    if errs:
        print()
        print("Runs with errors (wrk's own lines):")
        for r in errs:
            print("  round %s %s %s:" % (r["round"], r["scenario"], r["proxy"]))
            for l in r["wrk_output"].splitlines():
                if l.strip().startswith(("Socket errors", "Non-2xx")):
                    print("    " + l.strip())
    low = [row for row in rows if row["connections"] >= 256 and row["cpu_pct"] is not None
           and row["cpu_pct"] < 90]
    if low:
        print()
        print("Note: proxy CPU below 90%% in capacity runs (%s): req/s there is not the proxy's "
              "capacity; read CPU µs/req instead." % ", ".join(r["proxy"] for r in low))

    with open(out_path, "w") as f:
        json.dump({"meta": meta, "summary": rows, "runs": runs}, f, indent=2)
        f.write("\n")


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "record":
        record(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif len(sys.argv) == 5 and sys.argv[1] == "summary":
        summary(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
