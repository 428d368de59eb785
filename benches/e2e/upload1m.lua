-- wrk script for the upload1m scenario: every request POSTs a 1 MiB body.
wrk.method = "POST"
wrk.body = string.rep("a", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"

-- The p50/p99/p99.9 line (done hook) shared by all scenarios, from the file beside this one
-- (wrk runs one -s script, and dofile resolves paths against the working directory).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "latency.lua")
