#!/usr/bin/env python3
"""Helpers for run.sh: parse one run's load-tool output, and summarise all runs into
tables + JSON.

  report.py record RUNS.jsonl TOOL_OUTPUT key=value...   append one run (output parsed;
                                                          tool=wrk|h2load|openloop|
                                                          download|upload)
  report.py summary RUNS.jsonl META.json OUT.json         print the tables, write OUT.json
"""
import json
import re
import statistics
import sys

UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
REQUEST_KINDS = ("wrk", "h2load", "openloop")   # many requests: req/s, latency, CPU per request
STREAM_KINDS = ("download", "upload")  # one 1 GiB transfer: MiB/s, CPU, RSS before/after
MIB = 1024.0 * 1024.0


def dur_us(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    if not m:
        return None
    return float(m.group(1)) * UNITS_US[m.group(2)]


def parse_wrk(out):
    """wrk --latency output plus latency.lua's E2E-LATENCY-US line (p50/p99/p99.9 in µs
    from wrk's own histogram; wrk prints percentiles only up to p99)."""
    r = {"requests": None, "wrk_seconds": None, "rps": None,
         "lat_us": {}, "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0},
         "non_2xx_3xx": 0, "latency_source": "wrk histogram (latency.lua done hook)"}
    for line in out.splitlines():
        s = line.strip()
        m = re.fullmatch(r"E2E-LATENCY-US (.*)", s)
        if m:
            for kv in m.group(1).split():
                k, v = kv.split("=", 1)
                r["lat_us"][k if k in ("mean", "max") else k.replace(".", "_")] = float(v)
            continue
        m = re.fullmatch(r"(50|75|90|99)%\s+(\S+)", s)
        if m:
            r["lat_us"].setdefault("p" + m.group(1), dur_us(m.group(2)))
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


def percentile(sorted_xs, q):
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_xs:
        return None
    k = max(0, min(len(sorted_xs) - 1, int(-(-q * len(sorted_xs) // 100)) - 1))
    return float(sorted_xs[k])


def parse_h2load(out, log_path):
    """h2load's summary (req/s, request counts, status codes, and min/max/mean/sd of the
    request time: all it prints about latency) plus its --log-file, one line per request
    (start µs, status, µs to the end of the response), for p50/p99/p99.9."""
    r = {"requests": None, "h2load_seconds": None, "rps": None, "lat_us": {},
         "socket_errors": {"failed": 0, "errored": 0, "timeout": 0}, "non_2xx_3xx": 0,
         "latency_source": "h2load --log-file (per request, nearest rank); mean/sd/max from its summary"}
    for line in out.splitlines():
        s = line.strip()
        m = re.match(r"finished in ([0-9.]+)(us|ms|s|m|h), ([0-9.]+) req/s", s)
        if m:
            r["h2load_seconds"] = float(m.group(1)) * UNITS_US[m.group(2)] / 1e6
            r["rps"] = float(m.group(3))
            continue
        m = re.match(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                     r"(\d+) failed, (\d+) errored, (\d+) timeout", s)
        if m:
            r["requests"] = int(m.group(3))
            r["socket_errors"] = {"failed": int(m.group(5)), "errored": int(m.group(6)),
                                  "timeout": int(m.group(7))}
            continue
        m = re.match(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", s)
        if m:
            r["non_2xx_3xx"] = int(m.group(3)) + int(m.group(4))
            continue
        m = re.match(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", s)
        if m:
            for k, v in zip(("min", "max", "mean", "sd"), m.groups()):
                r["lat_us"][k] = dur_us(v)
    durs = []
    try:
        with open(log_path) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3 and parts[1].strip() != "-1":
                    durs.append(int(parts[2]))
    except OSError:
        pass
    durs.sort()
    r["h2load_logged_requests"] = len(durs)
    for q, k in ((50, "p50"), (99, "p99"), (99.9, "p99_9")):
        r["lat_us"][k] = percentile(durs, q)
    return r


def parse_openloop(out):
    """examples/openloop.rs's E2E-OPENLOOP line. Its latencies run from each request's
    due time (coordinated omission corrected); service_* from when its write returned.
    errors = requests due that got no answer; connection_errors = failed connects,
    writes and bad answers. Without any answer the line has no latency keys."""
    r = {"requests": None, "openloop_seconds": None, "rps": None, "lat_us": {},
         "service_lat_us": {}, "socket_errors": {"failed": 0, "connection": 0}, "non_2xx_3xx": 0,
         "latency_source": "openloop, from each request's due time at a fixed rate (nearest rank)"}
    m = re.search(r"^E2E-OPENLOOP (.*)$", out, re.M)
    if not m:
        r["socket_errors"]["failed"] = 1  # no summary: the run failed
        return r
    kv = dict(x.split("=", 1) for x in m.group(1).split())
    r["requests"] = int(kv["requests"])
    r["openloop_seconds"] = float(kv["seconds"])
    r["rps"] = r["requests"] / r["openloop_seconds"] if r["openloop_seconds"] else None
    r["target_rate"] = int(kv["rate"])
    r["socket_errors"]["failed"] = int(kv["errors"])
    r["socket_errors"]["connection"] = int(kv.get("connection_errors", 0))
    r["non_2xx_3xx"] = int(kv["non_2xx_3xx"])
    for k, v in kv.items():
        name = k.replace(".", "_")
        if name.startswith("service_"):
            r["service_lat_us"][name[len("service_"):]] = float(v)
        elif re.fullmatch(r"p[0-9_]+", name) or name in ("mean", "max"):
            r["lat_us"][name] = float(v)
    return r


def parse_curl(out, kind, expected, rc):
    """run.sh's curl -w line: E2E-CURL code=... down=... up=... time=..."""
    r = {"http_code": None, "bytes": None, "transfer_seconds": None, "throughput_mib_s": None,
         "lat_us": {},
         "socket_errors": {"curl_exit": 1 if rc else 0, "short_transfer": 0}, "non_2xx_3xx": 0}
    m = re.search(r"E2E-CURL code=(\d+) down=(\d+) up=(\d+) time=([0-9.]+)", out)
    if m:
        code, down, up, t = int(m.group(1)), int(m.group(2)), int(m.group(3)), float(m.group(4))
        r["http_code"] = code
        r["bytes"] = down if kind == "download" else up
        r["transfer_seconds"] = t
        r["throughput_mib_s"] = r["bytes"] / MIB / t if t else None
        r["non_2xx_3xx"] = 0 if 200 <= code < 300 else 1
    if r["bytes"] != expected:
        r["socket_errors"]["short_transfer"] = 1
        r["throughput_mib_s"] = None  # a partial transfer is no throughput figure
    return r


def parse_syscalls(path):
    """perf stat -x, output: {system call name (or "all"): count}."""
    counts = {}
    with open(path) as f:
        for line in f:
            cols = line.strip().split(",")
            if len(cols) < 3 or line.startswith("#"):
                continue
            event = cols[2]
            name = "all" if event == "raw_syscalls:sys_enter" else event.rsplit("sys_enter_", 1)[-1]
            try:
                counts[name] = int(cols[0])
            except ValueError:  # "<not counted>", "<not supported>"
                counts[name] = None
    return counts


def conv(v):
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    return v


def record(runs_path, out_path, kvs):
    with open(out_path) as f:
        out = f.read()
    run = {k: conv(v) for k, v in (kv.split("=", 1) for kv in kvs)}
    kind = run["tool"]
    h2load_log = run.pop("h2load_log", None)
    syscalls_file = run.pop("syscalls_file", "")
    if kind == "wrk":
        run.update(parse_wrk(out))
    elif kind == "h2load":
        run.update(parse_h2load(out, h2load_log))
    elif kind == "openloop":
        run.update(parse_openloop(out))
    else:
        run.update(parse_curl(out, kind, run["expected_bytes"], run["tool_rc"]))
    ticks = run["cpu_ticks"] / run["clk_tck"]
    run["cpu_seconds"] = ticks
    run["cpu_pct"] = 100.0 * ticks / run["wall_seconds"] if run["wall_seconds"] else None
    run["peak_rss_mib"] = run["vmhwm_kib"] / 1024.0
    run["rss_before_mib"] = run["vmrss_before_kib"] / 1024.0
    run["rss_after_mib"] = run["vmrss_after_kib"] / 1024.0
    if kind in STREAM_KINDS:
        gib = (run["bytes"] or 0) / (1024.0 * MIB)
        run["cpu_s_per_gib"] = ticks / gib if gib else None
    else:
        run["cpu_us_per_req"] = 1e6 * ticks / run["requests"] if run["requests"] else None
        # The kernel's share (stime): on loopback it is mostly the TCP path, which costs
        # every proxy about the same per request; the rest is the proxy's own code.
        sys_s = run.get("sys_ticks", 0) / run["clk_tck"]
        run["sys_us_per_req"] = 1e6 * sys_s / run["requests"] if run["requests"] else None
        # TCP segments sent on the machine (all of them on loopback: load tool, proxy and
        # upstream) per request. Equal counts mean the kernel has the same packets to carry
        # for every proxy; what is left to compare is the proxies' own code.
        segs = run.get("tcp_out_segs")
        run["tcp_segs_per_req"] = segs / run["requests"] if segs is not None and run["requests"] else None
        # SYSCALLS=1: the proxy's system calls during the run (perf tracepoints), per
        # request, in all and by name.
        if syscalls_file:
            counts = parse_syscalls(syscalls_file)
            run["syscalls"] = counts
            if run["requests"] and counts.get("all") is not None:
                run["syscalls_per_req"] = counts["all"] / run["requests"]
                run["syscalls_per_req_by_name"] = {
                    k: v / run["requests"] for k, v in counts.items() if k != "all" and v}
    run["tool_output"] = out
    with open(runs_path, "a") as f:
        f.write(json.dumps(run) + "\n")
    errs = run_errors(run)
    if kind in STREAM_KINDS:
        print("[e2e]   %-10s %-11s %8s MiB/s  %6s s  cpu %5.2f s (%3.0f%%)  rss %6.1f -> %6.1f MiB, "
              "peak %6.1f MiB%s" % (
                  run["proxy"], run["scenario"], fmt(run["throughput_mib_s"], "%.0f"),
                  fmt(run["transfer_seconds"], "%.2f"), ticks, run["cpu_pct"] or float("nan"),
                  run["rss_before_mib"], run["rss_after_mib"], run["peak_rss_mib"],
                  ("  ERRORS %d" % errs) if errs else ""), file=sys.stderr)
        return
    lat = run["lat_us"]
    print("[e2e]   %-10s %-5s %10s req/s  p50 %9s  p99 %9s  p99.9 %9s  cpu %5.1f µs/req (%3.0f%%)  "
          "rss %6.1f MiB%s" % (
              run["proxy"], run["scenario"], fmt(run["rps"], "%.0f"),
              fmt_us(lat.get("p50")), fmt_us(lat.get("p99")), fmt_us(lat.get("p99_9")),
              run["cpu_us_per_req"] or float("nan"), run["cpu_pct"] or float("nan"),
              run["peak_rss_mib"], ("  ERRORS %d" % errs) if errs else ""), file=sys.stderr)


def run_errors(r):
    return sum(r["socket_errors"].values()) + r["non_2xx_3xx"]


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


def ratio(a, b):
    return a / b if a is not None and b else None


# (row key, run key getter) of every value that gets a ratio to nginx.
REQUEST_METRICS = (
    ("rps", lambda r: r["rps"]),
    ("mean_us", lambda r: r["lat_us"].get("mean")),
    ("p50_us", lambda r: r["lat_us"].get("p50")),
    ("p99_us", lambda r: r["lat_us"].get("p99")),
    ("p99_9_us", lambda r: r["lat_us"].get("p99_9")),
    ("cpu_us_per_req", lambda r: r["cpu_us_per_req"]),
    ("sys_us_per_req", lambda r: r.get("sys_us_per_req")),
    ("user_us_per_req", lambda r: user_us(r)),
    ("peak_rss_mib", lambda r: r["peak_rss_mib"]),
    ("tcp_segs_per_req", lambda r: r.get("tcp_segs_per_req")),
    ("syscalls_per_req", lambda r: r.get("syscalls_per_req")),
)
STREAM_METRICS = (
    ("throughput_mib_s", lambda r: r["throughput_mib_s"]),
    ("cpu_seconds", lambda r: r["cpu_seconds"]),
    ("cpu_s_per_gib", lambda r: r.get("cpu_s_per_gib")),
    ("peak_rss_mib", lambda r: r["peak_rss_mib"]),
)


def user_us(r):
    cpu, sys_us = r.get("cpu_us_per_req"), r.get("sys_us_per_req")
    return None if cpu is None or sys_us is None else cpu - sys_us


def render(table, left=2):
    widths = [max(len(t[i]) for t in table) for i in range(len(table[0]))]
    lines = []
    for i, t in enumerate(table):
        cells = [t[j].ljust(widths[j]) if j < left else t[j].rjust(widths[j])
                 for j in range(len(t))]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def label(sc):
    if sc.get("kind") == "h2load":
        return "%s c=%dx%d" % (sc["name"], sc["connections"], sc["streams_per_connection"])
    if sc.get("kind") in STREAM_KINDS:
        return sc["name"]
    if sc.get("kind") == "openloop":
        return "%s c=%d" % (sc["name"], sc["connections"])
    if sc["name"] == "c%d" % sc["connections"]:
        return sc["name"]
    return "%s c=%d" % (sc["name"], sc["connections"])


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
        metrics = STREAM_METRICS if r["tool"] in STREAM_KINDS else REQUEST_METRICS
        r["vs_nginx"] = {k: ratio(get(r), get(ref)) if ref else None for k, get in metrics}

    rows = []
    for sc in scenarios:
        stream = sc.get("kind") in STREAM_KINDS
        metrics = STREAM_METRICS if stream else REQUEST_METRICS
        for p in proxies:
            rs = [r for r in runs if r["scenario"] == sc["name"] and r["proxy"] == p]
            if not rs:
                continue
            row = {"scenario": sc["name"], "kind": sc.get("kind", "wrk"),
                   "connections": sc["connections"],
                   "streams_per_connection": sc.get("streams_per_connection", 1),
                   "label": label(sc), "proxy": p, "rounds": len(rs)}
            for k, get in metrics:
                row[k] = med([get(r) for r in rs])
            row["cpu_pct"] = med([r["cpu_pct"] for r in rs])
            row["vs_nginx"] = {k: med([r["vs_nginx"][k] for r in rs]) for k, _ in metrics}
            if stream:
                row["transfer_seconds"] = med([r["transfer_seconds"] for r in rs])
                row["rss_before_mib"] = med([r["rss_before_mib"] for r in rs])
                row["rss_after_mib"] = med([r["rss_after_mib"] for r in rs])
                # growth of the peak over the RSS before the transfer: ~0 = flat
                row["peak_growth_mib"] = med([r["peak_rss_mib"] - r["rss_before_mib"] for r in rs])
            else:
                row["cpu_ms_per_10k_req"] = (row["cpu_us_per_req"] * 10.0
                                             if row["cpu_us_per_req"] is not None else None)
            keys = sorted({k for r in rs for k in r["socket_errors"]})
            row["errors_total"] = sum(run_errors(r) for r in rs)
            row["non_2xx_3xx_total"] = sum(r["non_2xx_3xx"] for r in rs)
            row["socket_errors_total"] = {k: sum(r["socket_errors"].get(k, 0) for r in rs)
                                          for k in keys}
            if any("syscalls_per_req_by_name" in r for r in rs):
                names = sorted({k for r in rs for k in r.get("syscalls_per_req_by_name", {})})
                row["syscalls_per_req_by_name"] = {
                    k: med([r.get("syscalls_per_req_by_name", {}).get(k, 0.0) for r in rs])
                    for k in names}
            rows.append(row)

    req_rows = [r for r in rows if r["kind"] in REQUEST_KINDS]
    stream_rows = [r for r in rows if r["kind"] in STREAM_KINDS]
    print("Medians over %d round(s), %ss per request run; ratios are to nginx in the same round."
          % (meta["rounds"], meta["duration_seconds"]))
    print("Load average at start: %s" % meta["loadavg_start"])
    syscalls = any(r.get("syscalls_per_req") is not None for r in req_rows)
    if req_rows:
        table = [("scenario", "proxy", "req/s", "p50", "p99", "p99.9", "CPU µs/req",
                  "user+kernel", "TCP segs/req") + (("syscalls/req",) if syscalls else ())
                 + ("CPU%", "peak RSS MiB", "errors")]
        for row in req_rows:
            table.append((
                row["label"], row["proxy"], fmt(row["rps"], "%.0f"), fmt_us(row["p50_us"]),
                fmt_us(row["p99_us"]), fmt_us(row["p99_9_us"]),
                fmt(row["cpu_us_per_req"], "%.1f"),
                "%s+%s" % (fmt(row["user_us_per_req"], "%.1f"), fmt(row["sys_us_per_req"], "%.1f")),
                fmt(row["tcp_segs_per_req"], "%.2f"))
                + ((fmt(row["syscalls_per_req"], "%.2f"),) if syscalls else ())
                + (fmt(row["cpu_pct"], "%.0f"), fmt(row["peak_rss_mib"], "%.1f"),
                   str(row["errors_total"])))
        print()
        print(render(table))
        table = [("scenario", "proxy", "req/s", "p50", "p99", "p99.9", "CPU/req", "user CPU",
                  "peak RSS")]
        for row in req_rows:
            v = row["vs_nginx"]
            table.append((row["label"], row["proxy"]) + tuple(
                fmt(v[k], "%.2f") for k in ("rps", "p50_us", "p99_us", "p99_9_us",
                                            "cpu_us_per_req", "user_us_per_req",
                                            "peak_rss_mib")))
        print()
        print("×nginx (req/s above 1 is better; latency, CPU and RSS below 1 are better):")
        print(render(table))
    if stream_rows:
        table = [("scenario", "proxy", "MiB/s", "seconds", "CPU s", "CPU%", "RSS before",
                  "RSS after", "peak RSS", "MiB/s ×nginx", "CPU ×nginx", "peak RSS ×nginx",
                  "errors")]
        for row in stream_rows:
            v = row["vs_nginx"]
            table.append((
                row["label"], row["proxy"], fmt(row["throughput_mib_s"], "%.0f"),
                fmt(row["transfer_seconds"], "%.2f"), fmt(row["cpu_seconds"], "%.2f"),
                fmt(row["cpu_pct"], "%.0f"), fmt(row["rss_before_mib"], "%.1f"),
                fmt(row["rss_after_mib"], "%.1f"), fmt(row["peak_rss_mib"], "%.1f"),
                fmt(v["throughput_mib_s"], "%.2f"), fmt(v["cpu_seconds"], "%.2f"),
                fmt(v["peak_rss_mib"], "%.2f"), str(row["errors_total"])))
        print()
        print("1 GiB transfers, one per run (RSS in MiB: VmRSS before and after the transfer, "
              "peak = VmHWM of the process):")
        print(render(table))
    if syscalls:
        print()
        print("System calls per request by the proxy (SYSCALLS=1, perf tracepoints, all its "
              "threads; medians over rounds; by name those above 0.01):")
        for row in req_rows:
            by_name = row.get("syscalls_per_req_by_name") or {}
            parts = ["%s %.2f" % (k, v) for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])
                     if v >= 0.01]
            print("  %-16s %-11s %s  (%s)" % (row["label"], row["proxy"],
                                             fmt(row["syscalls_per_req"], "%.2f"), ", ".join(parts)))
    if any(r["kind"] == "openloop" for r in rows):
        print()
        print("rateNk: a fixed arrival rate (examples/openloop.rs); latency runs from each "
              "request's due time, so a stall counts for every request due during it. req/s is "
              "the rate achieved; a proxy that keeps up shows the target rate.")
    if any(r["kind"] == "h2load" for r in rows):
        print()
        print("h2: h2load prints only min/max/mean/sd of the request time; p50/p99/p99.9 "
              "come from its --log-file (per request).")
    errs = [r for r in runs if run_errors(r)]
    if errs:
        print()
        print("Runs with errors (the load tool's own lines):")
        prefixes = {"wrk": ("Socket errors", "Non-2xx"),
                    "h2load": ("requests:", "status codes:"),
                    "openloop": ("E2E-OPENLOOP", "openloop:")}
        for r in errs:
            print("  round %s %s %s:" % (r["round"], r["scenario"], r["proxy"]))
            for l in r["tool_output"].splitlines():
                pre = prefixes.get(r["tool"])
                if pre is None or l.strip().startswith(pre):
                    print("    " + l.strip())
    low = [row for row in req_rows if row["connections"] >= 256 and row["cpu_pct"] is not None
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
