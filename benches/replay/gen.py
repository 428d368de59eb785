#!/usr/bin/env python3
"""Write N access-log lines (the gateway's JSON format) to stdout: a realistic mix of
services, ids, hosts and methods, seeded so every run is the same."""
import json, random, sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
rnd = random.Random(7)
paths = ["/api/users/{}", "/api/users/v2/{}", "/api/orders/{}", "/api/orders/{}/items",
         "/api/payments/{}", "/static/app.{}.js", "/healthz", "/api/search?q={}"]
hosts = ["api.example.com", "www.example.com", "api.example.com:443"]
out = sys.stdout
for i in range(n):
    p = rnd.choice(paths).format(rnd.randrange(50_000))
    line = {"time": "2026-12-02T04:00:00Z", "request_id": "%032x" % i, "client": "10.0.0.1",
            "method": rnd.choice(["GET", "GET", "GET", "POST"]), "host": rnd.choice(hosts),
            "path": p.split("?")[0], "route": "x", "service": "y", "status": 200}
    out.write(json.dumps(line, separators=(",", ":")) + "\n")
