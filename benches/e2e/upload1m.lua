-- wrk script for the upload1m scenario: every request POSTs a 1 MiB body.
wrk.method = "POST"
wrk.body = string.rep("a", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
