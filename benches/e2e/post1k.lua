-- wrk script for the post1k scenario: every request POSTs a 1 KiB JSON body, the
-- common shape of API traffic between services.
wrk.method = "POST"
wrk.body = '{"data":"' .. string.rep("a", 1013) .. '"}'
wrk.headers["Content-Type"] = "application/json"

-- The p50/p99/p99.9 line (done hook) shared by all scenarios, from the file beside this one
-- (wrk runs one -s script, and dofile resolves paths against the working directory).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "latency.lua")
