#!/usr/bin/env bash
# End-to-end proxy benchmark: nginx vs HAProxy vs switchyard in front of the same upstream.
#
# Core layout (2+ cores): cpu0 = wrk (1 thread) + upstream nginx (1 worker);
# cpu1 = the proxy under test, alone (taskset -c 1). One proxy runs at a time; each
# (round, scenario, proxy) gets a fresh proxy process, so peak RSS is per run.
# Targets alternate A B C A B C; the table shows medians over rounds and ratios to
# nginx taken within the same round.
#
# Env: DURATION (s per run, default 10), ROUNDS (default 2),
#      SCENARIOS (default "c256 c64 c1"; see scenario() below: cN = small GET keep-alive
#        at N connections, body64k, upload1m, newconn, routes1k),
#      PROXIES (default "nginx haproxy switchyard"), WARMUP (s, default 1),
#      CARGO_TARGET_DIR (default $HOME/.cache/switchyard-target),
#      SWITCHYARD_BIN (use this binary instead of building), KEEP_WORK=1 (keep temp dir).
# See README.md beside this file.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
SCENARIOS=${SCENARIOS:-"c256 c64 c1"}
PROXIES=${PROXIES:-"nginx haproxy switchyard"}
WARMUP=${WARMUP:-1}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}
RESULTS_DIR=$HERE/results
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin:$HOME/.cargo/bin"

log() { printf '[e2e %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer (seconds), got '$DURATION'"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, got '$ROUNDS'"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP must be a non-negative integer (seconds), got '$WARMUP'"
TOKEN= # set by make_token (token.sh) before the runs; scenario() only reads it
# scenario NAME -> CONNS, REQ_PATH, WRK_ARGS (array), ROUTES (extra routes in the table),
# DESC (one line for the report).
scenario() {
    WRK_ARGS=(); ROUTES=0; REQ_PATH=/; RELOAD=0; POLICIES=0
    case $1 in
    c[1-9]*) CONNS=${1#c}; DESC="GET 13 B, keep-alive, $CONNS connections" ;;
    body64k) CONNS=64; REQ_PATH=/64k; DESC="GET 64 KiB response, keep-alive, 64 connections" ;;
    upload1m) CONNS=16; REQ_PATH=/upload; WRK_ARGS=(-s "$HERE/upload1m.lua")
              DESC="POST 1 MiB body, keep-alive, 16 connections" ;;
    newconn) CONNS=64; WRK_ARGS=(-H "Connection: close")
             DESC="GET 13 B, new TCP connection per request, 64 connections" ;;
    routes1k) CONNS=64; ROUTES=1000; REQ_PATH=/svc-0500/item
              DESC="GET 13 B via a 1,000-route table (route 500 matches), 64 connections" ;;
    routes10k) CONNS=64; ROUTES=10000; REQ_PATH=/svc-5000/item
               DESC="GET 13 B via a 10,000-route table (route 5000 matches), 64 connections" ;;
    policies) CONNS=64; POLICIES=1; WRK_ARGS=(-H "Authorization: Bearer $TOKEN" -H "x-user-id: 42")
              DESC="GET 13 B, 64 connections; switchyard with JWT auth (RS256) + sticky canary + rate limit + metrics; nginx/HAProxy plain" ;;
    reload10k) CONNS=64; ROUTES=10000; REQ_PATH=/svc-5000/item; RELOAD=1
               DESC="routes10k with a config reload every second (nginx -s reload / SIGHUP)" ;;
    *) return 1 ;;
    esac
}
for sc in $SCENARIOS; do
    [[ $sc =~ ^c[1-9][0-9]*$ ]] || scenario "$sc" \
        || die "unknown scenario '$sc' (cN: small GET keep-alive at N connections, body64k, upload1m, newconn, routes1k, routes10k, reload10k, policies)"
done
for p in $PROXIES; do
    case $p in nginx|haproxy|switchyard) ;; *) die "unknown proxy '$p' (nginx, haproxy, switchyard)";; esac
done

# ---------------------------------------------------------------- 1. tools
declare -A PKG_FOR=([nginx]=nginx [haproxy]=haproxy [wrk]=wrk [taskset]=util-linux
                    [ps]=procps [curl]=curl [python3]=python3 [getconf]=libc-bin [openssl]=openssl)
missing=()
for cmd in nginx haproxy wrk taskset ps curl python3 getconf openssl; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${PKG_FOR[$cmd]}")
done
if ((${#missing[@]})); then
    [[ $EUID -eq 0 ]] || die "missing packages (${missing[*]}); run as root so they can be installed with apt-get"
    log "installing: ${missing[*]}"
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >&2
fi

(($(getconf _NPROCESSORS_ONLN) >= 2)) || die "needs at least 2 CPUs (cpu0: load + upstream, cpu1: proxy)"
taskset -c 0 true && taskset -c 1 true || die "cannot pin to cpu0 and cpu1 (taskset failed)"
CLK_TCK=$(getconf CLK_TCK)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true # each proxy needs ~2 fds per connection

# ---------------------------------------------------------------- 2. build
if [[ -n ${SWITCHYARD_BIN:-} ]]; then
    SY_BIN=$SWITCHYARD_BIN
    log "using SWITCHYARD_BIN=$SY_BIN (not building)"
else
    command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust, e.g. via rustup) or set SWITCHYARD_BIN"
    log "building switchyard (cargo build --release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$ROOT" && cargo build --release) >&2
    SY_BIN=$CARGO_TARGET_DIR/release/switchyard
fi
[[ -x $SY_BIN ]] || die "switchyard binary not found at $SY_BIN"

# ---------------------------------------------------------------- process bookkeeping
WORK=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-e2e.XXXXXX")
chmod 755 "$WORK" # nginx workers may run as an unprivileged user
declare -a STARTED=() # PIDs we started (masters), in start order

# Stop one PID we started (and the children we recorded for it): TERM, bounded wait, KILL.
alive() { [[ -e /proc/$1 ]] && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]; }
stop_pid() {
    local pid=$1; shift
    local kids=("$@") p i
    alive "$pid" && kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${kids[@]}"; do
        for ((i = 0; i < 20; i++)); do alive "$p" || break; sleep 0.1; done
        alive "$p" && kill -KILL "$p" 2>/dev/null || true
    done
    local keep=()
    for p in "${STARTED[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    STARTED=("${keep[@]}")
}
children_of() { ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true; }

cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        local pid=${STARTED[i]}
        # shellcheck disable=SC2046
        stop_pid "$pid" $(children_of "$pid")
    done
    if [[ ${KEEP_WORK:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

render() { # render TEMPLATE OUT: substitute @WORK@ @PROXY_PORT@ @UPSTREAM_PORT@
    sed -e "s|@WORK@|$WORK|g" -e "s|@PROXY_PORT@|${PROXY_PORT:-}|g" \
        -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|g" "$1" >"$2"
}

# add_routes NAME CONFIG N: N extra prefix routes /svc-0000/ .. to the same upstream,
# written the way each proxy's users write them (nginx locations, HAProxy ACL rules,
# switchyard [[routes]]). Every route is distinct, so none can be merged away.
add_routes() {
    local name=$1 conf=$2 n=$3 i extra=$WORK/routes-$1.txt
    ((n > 0)) || return 0
    : >"$extra"
    for ((i = 0; i < n; i++)); do
        printf -v id '%04d' "$i"
        case $name in
        nginx) printf '        location /svc-%s/ { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }\n' "$id" ;;
        haproxy) printf '    use_backend be if { path_beg /svc-%s/ }\n' "$id" ;;
        switchyard) printf '\n[[routes]]\nname = "svc-%s"\npath = "/svc-%s"\nservice = "up"\n' "$id" "$id" ;;
        esac
    done >>"$extra"
    case $name in
    nginx) sed -i "/^    server {/r $extra" "$conf" ;;
    haproxy) sed -i "/^frontend fe/r $extra" "$conf" ;;
    switchyard) cat "$extra" >>"$conf" ;;
    esac
}

# Bounded readiness poll: GET / must answer 200 "hello world!".
wait_ready() { # wait_ready NAME PID PORT LOGFILE
    local name=$1 pid=$2 port=$3 logf=$4 i body
    for ((i = 0; i < 100; i++)); do
        alive "$pid" || { tail -n 20 "$logf" >&2 || true; die "$name (pid $pid) exited during start-up"; }
        # The token lets the probe through the policies scenario's auth (others ignore it).
        if body=$(curl -fsS --max-time 1 -H "Authorization: Bearer $TOKEN" -H "x-user-id: 42" \
            "http://127.0.0.1:$port/" 2>/dev/null); then
            [[ $body == "hello world!" ]] || die "$name answered an unexpected body: '$body'"
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$logf" >&2 || true
    die "$name not ready on 127.0.0.1:$port after 10 s"
}

cpu_ticks() { # utime+stime summed over the given PIDs
    local total=0 pid stat rest f
    for pid in "$@"; do
        stat=$(<"/proc/$pid/stat") || continue
        rest=${stat##*) }
        read -ra f <<<"$rest"
        total=$((total + f[11] + f[12])) # fields 14 (utime) and 15 (stime)
    done
    echo "$total"
}
peak_rss_kib() { # VmHWM summed over the given PIDs
    local total=0 pid v
    for pid in "$@"; do
        v=$(awk '/^VmHWM:/{print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# Four free loopback ports: upstream, then one per proxy.
read -r UPSTREAM_PORT NGINX_PORT HAPROXY_PORT SY_PORT < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
declare -A PORT=([nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT [switchyard]=$SY_PORT)

mkdir -p "$RESULTS_DIR"
rm -rf "$RESULTS_DIR/logs"; mkdir -p "$RESULTS_DIR/logs"
RUNS=$WORK/runs.jsonl; : >"$RUNS"
LOADAVG_START=$(cat /proc/loadavg)
log "load average at start: $LOADAVG_START"
log "ports: upstream $UPSTREAM_PORT, nginx $NGINX_PORT, haproxy $HAPROXY_PORT, switchyard $SY_PORT; work dir $WORK"

# ---------------------------------------------------------------- 3. upstream (cpu0)
mkdir -p "$WORK/upstream"
# shellcheck source=token.sh
source "$HERE/token.sh"
make_token "$WORK" "$ROOT/tests/fixtures/auth"
head -c 65536 /dev/zero | tr '\0' 'x' >"$WORK/upstream/64k.bin"
render "$HERE/upstream-nginx.conf.in" "$WORK/upstream/nginx.conf"
taskset -c 0 nginx -e "$WORK/upstream/error.log" -p "$WORK/upstream" -c "$WORK/upstream/nginx.conf" \
    >"$WORK/upstream/stdout.log" 2>&1 &
UPSTREAM_PID=$!
STARTED+=("$UPSTREAM_PID")
wait_ready upstream "$UPSTREAM_PID" "$UPSTREAM_PORT" "$WORK/upstream/error.log"
log "upstream nginx ready (pid $UPSTREAM_PID, cpu0)"

# ---------------------------------------------------------------- 4. proxies (cpu1)
PROXY_PID=
PROXY_LOG=
start_proxy() { # start_proxy NAME -> sets PROXY_PID, PROXY_LOG
    local name=$1 dir=$WORK/$1
    PROXY_PORT=${PORT[$name]}
    rm -rf "$dir"; mkdir -p "$dir"
    case $name in
    nginx)
        render "$HERE/proxy-nginx.conf.in" "$dir/nginx.conf"
        add_routes nginx "$dir/nginx.conf" "$ROUTES"
        PROXY_LOG=$dir/error.log
        taskset -c 1 nginx -e "$PROXY_LOG" -p "$dir" -c "$dir/nginx.conf" >"$dir/stdout.log" 2>&1 &
        ;;
    haproxy)
        render "$HERE/haproxy.cfg.in" "$dir/haproxy.cfg"
        add_routes haproxy "$dir/haproxy.cfg" "$ROUTES"
        PROXY_LOG=$dir/haproxy.log
        haproxy -c -q -f "$dir/haproxy.cfg" || die "haproxy rejected its config"
        taskset -c 1 haproxy -db -f "$dir/haproxy.cfg" >"$PROXY_LOG" 2>&1 &
        ;;
    switchyard)
        render "$HERE/switchyard-routes.toml.in" "$dir/routes.toml"
        add_routes switchyard "$dir/routes.toml" "$ROUTES"
        ((POLICIES)) && add_policies "$dir/routes.toml"
        PROXY_LOG=$dir/switchyard.log
        "$SY_BIN" check "$dir/routes.toml" >/dev/null || die "switchyard rejected its routes.toml"
        # TOKIO_WORKER_THREADS=1: tokio's multi-threaded runtime honours this env var; one
        # worker thread on the one pinned core is the counterpart of nginx's 1 worker and
        # HAProxy's nbthread 1 (more workers on one core would only add wake-ups).
        (cd "$dir" && TOKIO_WORKER_THREADS=1 exec taskset -c 1 "$SY_BIN" run --config "$dir/routes.toml" \
            >"$dir/access.log" 2>"$PROXY_LOG") &
        ;;
    esac
    PROXY_PID=$!
    STARTED+=("$PROXY_PID")
    wait_ready "$name" "$PROXY_PID" "$PROXY_PORT" "$PROXY_LOG"
}

proxy_pids() { echo "$1"; children_of "$1"; } # master + workers (nginx); others: one process

# add_policies CONFIG: the catch-all route gets JWT auth (RS256, key from a file, sub
# forwarded), a sticky 5 % canary (to a second service on the same upstream) and a rate
# limit far above the load; metrics are always on. nginx and HAProxy keep their plain
# config: neither verifies JWTs here, so the ratio is what the policies cost against a
# plain nginx.
add_policies() {
    cp "$WORK/jwks.json" "$(dirname "$1")/jwks.json"
    python3 - "$1" "$UPSTREAM_PORT" <<'PY'
import sys
p, upstream_port = sys.argv[1], sys.argv[2]
s = open(p).read()
s = s.replace('service = "up"\n', 'service = "up"\nauth = "user"\n'
              'canary = { service = "up-canary", weight = 5, sticky = "header:x-user-id" }\n'
              'rate_limit = { per_second = 1000000, burst = 1000000, key = "jwt:sub" }\n', 1)
s += ('\n[services.up-canary]\nendpoints = ["127.0.0.1:%s"]\n'
      '\n[auth.user]\nissuer = "bench-idp"\naudiences = ["api"]\nalgorithms = ["RS256"]\n'
      'jwks = "file:jwks.json"\nforward_claims = { sub = "x-user-id" }\n') % upstream_port
open(p, "w").write(s)
PY
}

# reloader NAME PID: reload the proxy every second until killed. switchyard gets a changed
# file (a comment appended, so the hash differs and the whole table is rebuilt) and SIGHUP;
# nginx gets SIGHUP (it re-reads its config and replaces its workers).
reloader() {
    local i=0
    while sleep 1; do
        i=$((i + 1))
        case $1 in
        switchyard) printf '# reload %d\n' "$i" >>"$WORK/switchyard/routes.toml"; kill -HUP "$2" ;;
        nginx) kill -HUP "$2" ;;
        esac || return 0
    done
}

# ---------------------------------------------------------------- 5. runs
SCEN_JSON=$(for sc in $SCENARIOS; do
    scenario "$sc"
    python3 -c 'import json,sys; print(json.dumps({"name": sys.argv[1], "connections": int(sys.argv[2]), "path": sys.argv[3], "description": sys.argv[4]}))' \
        "$sc" "$CONNS" "$REQ_PATH" "$DESC"
done | paste -sd, -)
PROX_JSON=$(for p in $PROXIES; do echo "\"$p\""; done | paste -sd, -)
export LOADAVG_START DURATION ROUNDS WARMUP CLK_TCK UPSTREAM_PORT NGINX_PORT HAPROXY_PORT SY_PORT SY_BIN ROOT
export SCEN_JSON PROX_JSON
export V_NGINX V_HAPROXY V_WRK V_SY GIT_REV GIT_DIRTY
V_NGINX=$(nginx -v 2>&1 | head -n1 || true)
V_HAPROXY=$(haproxy -v 2>&1 | head -n1 || true)
V_WRK=$(wrk -v 2>&1 | head -n1 || true)
V_SY=$("$SY_BIN" --version 2>&1 | head -n1 || true)
GIT_REV=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -c . || true)

total=$((ROUNDS * $(wc -w <<<"$SCENARIOS") * $(wc -w <<<"$PROXIES")))
n=0
for ((round = 1; round <= ROUNDS; round++)); do
    for sc in $SCENARIOS; do
        scenario "$sc"
        conns=$CONNS
        for p in $PROXIES; do
            n=$((n + 1))
            if ((RELOAD)) && [[ $p == haproxy ]]; then
                log "run $n/$total: $sc skipped for haproxy (its reload needs master-worker mode)"
                continue
            fi
            log "run $n/$total: round $round, $sc ($DESC), $p"
            start_proxy "$p"
            url="http://127.0.0.1:${PORT[$p]}$REQ_PATH"
            if ((WARMUP > 0)); then
                taskset -c 0 wrk -t1 -c"$conns" -d"${WARMUP}s" "${WRK_ARGS[@]}" "$url" >/dev/null
            fi
            mapfile -t pids < <(proxy_pids "$PROXY_PID")
            t0=$(cpu_ticks "${pids[@]}"); w0=$(date +%s.%N)
            RELOADER=
            if ((RELOAD)); then reloader "$p" "$PROXY_PID" & RELOADER=$!; fi
            taskset -c 0 wrk -t1 -c"$conns" -d"${DURATION}s" --latency "${WRK_ARGS[@]}" "$url" >"$WORK/wrk.out" 2>&1 \
                || { cat "$WORK/wrk.out" >&2; die "wrk failed"; }
            if [[ -n $RELOADER ]]; then kill "$RELOADER" 2>/dev/null || true; wait "$RELOADER" 2>/dev/null || true; fi
            # With reloads nginx replaced its workers: the CPU of the exited ones is not
            # counted (switchyard is one process, its count stays exact).
            t1=$(cpu_ticks "${pids[@]}"); w1=$(date +%s.%N)
            rss=$(peak_rss_kib "${pids[@]}")
            alive "$PROXY_PID" || die "$p exited during the run"
            python3 "$HERE/report.py" record "$RUNS" "$WORK/wrk.out" \
                round="$round" scenario="$sc" connections="$conns" proxy="$p" \
                cpu_ticks=$((t1 - t0)) clk_tck="$CLK_TCK" \
                wall_seconds="$(python3 -c "print($w1 - $w0)")" vmhwm_kib="$rss" nprocs="${#pids[@]}"
            if ((RELOAD)); then mapfile -t pids < <(proxy_pids "$PROXY_PID"); fi
            # shellcheck disable=SC2046
            stop_pid "$PROXY_PID" $(printf '%s\n' "${pids[@]:1}")
            if [[ -s $PROXY_LOG ]]; then cp "$PROXY_LOG" "$RESULTS_DIR/logs/r${round}-${sc}-${p}.log"; fi
        done
    done
done

# ---------------------------------------------------------------- 6. report
export LOADAVG_END
LOADAVG_END=$(cat /proc/loadavg)
python3 - "$WORK/meta.json" <<'PY'
import datetime, json, os, platform, socket, sys
e = os.environ
cpu = ""
try:
    for l in open("/proc/cpuinfo"):
        if l.startswith("model name"):
            cpu = l.split(":", 1)[1].strip(); break
except OSError:
    pass
meta = {
    "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "host": socket.gethostname(), "kernel": platform.release(), "cpu_model": cpu,
    "online_cpus": os.cpu_count(),
    "loadavg_start": e["LOADAVG_START"], "loadavg_end": e["LOADAVG_END"],
    "duration_seconds": int(e["DURATION"]), "rounds": int(e["ROUNDS"]),
    "warmup_seconds": int(e["WARMUP"]), "clk_tck": int(e["CLK_TCK"]),
    "scenarios": json.loads("[" + e["SCEN_JSON"] + "]"),
    "proxies": json.loads("[" + e["PROX_JSON"] + "]"),
    "request": "HTTP/1.1 from wrk; the upstream answers 'hello world!\\n' (13 bytes) on /, 64 KiB on /64k, and reads and discards bodies on /upload",
    "layout": {"cpu0": "wrk -t1 + upstream nginx (1 worker)", "cpu1": "proxy under test (taskset -c 1)",
               "switchyard_env": "TOKIO_WORKER_THREADS=1", "nginx": "1 worker, upstream keepalive 256",
               "haproxy": "nbthread 1, http-reuse always"},
    "ports": {"upstream": int(e["UPSTREAM_PORT"]), "nginx": int(e["NGINX_PORT"]),
              "haproxy": int(e["HAPROXY_PORT"]), "switchyard": int(e["SY_PORT"])},
    "versions": {"nginx": e["V_NGINX"], "haproxy": e["V_HAPROXY"], "wrk": e["V_WRK"],
                 "switchyard": e["V_SY"], "switchyard_binary": e["SY_BIN"],
                 "git_rev": e["GIT_REV"], "git_dirty_files": int(e["GIT_DIRTY"] or 0)},
}
json.dump(meta, open(sys.argv[1], "w"), indent=2)
PY
echo
python3 "$HERE/report.py" summary "$RUNS" "$WORK/meta.json" "$RESULTS_DIR/latest.json"
echo
log "wrote $RESULTS_DIR/latest.json (proxy logs, if any, in $RESULTS_DIR/logs/)"
