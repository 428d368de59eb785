-- wrk script for every e2e scenario: wrk --latency prints percentiles only up to p99, so
-- this done() hook prints one line that report.py parses, in microseconds (wrk records
-- latency in µs):
--   E2E-LATENCY-US p50=... p99=... p99.9=... mean=... max=...
-- wrk takes a single -s script: scenarios with their own script (upload1m.lua) load this
-- file with dofile() and so get the same hook.
done = function(summary, latency, requests)
    io.write(string.format("E2E-LATENCY-US p50=%d p99=%d p99.9=%d mean=%.1f max=%d\n",
        latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
        latency.mean, latency.max))
end
