#!/usr/bin/env bash
# End-to-end proxy benchmark: nginx vs HAProxy vs switchyard in front of the same upstream.
#
# Core layout (2+ cores): cpu0 = the load tool (wrk -t1, h2load -t1 or curl) + upstream
# nginx (1 worker); cpu1 = the proxy under test, alone (taskset -c 1). One proxy runs at a
# time; each (round, scenario, proxy) gets a fresh proxy process, so peak RSS is per run.
# Targets alternate A B C A B C; the tables show medians over rounds and ratios to
# nginx taken within the same round.
#
# Env: DURATION (s per run, default 10), ROUNDS (default 2),
#      SCENARIOS (default "c256 c64 c1"; see scenario() below: cN = small GET keep-alive
#        at N connections, body64k, upload1m, post1k, newconn, routes1k, routes10k, reload10k,
#        policies; rateNk = small GET keep-alive at 64 connections at a fixed N,000 req/s,
#        open loop (examples/openloop.rs: latency from each request's due time, so a
#        stall is charged to every request due during it); h2 = small GET over
#        cleartext HTTP/2, 4 connections x 100 streams (h2load); h2up = c64 with HTTP/2 towards the upstream (h2c; HAProxy proto h2;
#        nginx cannot, its row is HTTP/1.1); stream1g = one 1 GiB response,
#        stream1g-up = one 1 GiB upload (curl)),
#      PROXIES (default "nginx haproxy switchyard"), WARMUP (s, default 1),
#      CARGO_TARGET_DIR (default $HOME/.cache/switchyard-target),
#      SWITCHYARD_BIN (use this binary instead of building), OPENLOOP_BIN (the same for
#        the rateNk load generator), KEEP_WORK=1 (keep temp dir),
#      SYSCALLS=1 (also count the proxy's system calls during each request run with
#        perf's syscall tracepoints: a syscalls/req column; needs perf and root).
# See README.md beside this file.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
SCENARIOS=${SCENARIOS:-"c256 c64 c1"}
PROXIES=${PROXIES:-"nginx haproxy switchyard"}
WARMUP=${WARMUP:-1}
SYSCALLS=${SYSCALLS:-0}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}
RESULTS_DIR=$HERE/results
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin:$HOME/.cargo/bin"

log() { printf '[e2e %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer (seconds), got '$DURATION'"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, got '$ROUNDS'"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP must be a non-negative integer (seconds), got '$WARMUP'"
[[ $SYSCALLS == 0 || $SYSCALLS == 1 ]] || die "SYSCALLS must be 0 or 1, got '$SYSCALLS'"
TOKEN= # set by make_token (token.sh) before the runs; scenario() only reads it
# scenario NAME -> KIND (wrk | h2load | openloop | download | upload: the load tool and
# what is measured), CONNS, RATE (openloop: requests per second), STREAMS (h2load:
# concurrent streams per connection), REQ_PATH, WRK_SCRIPT (wrk -s; every script prints
# p50/p99/p99.9 via latency.lua), WRK_ARGS (array; for openloop only -H pairs), ROUTES
# (extra routes in the table), H2UP (HTTP/2 to the upstream where the proxy can), H2
# (the proxy listens for cleartext HTTP/2 with prior knowledge), BIG_BODY (switchyard: a
# route for /upload1g without the 32 MiB body limit), DESC (one line for the report).
scenario() {
    KIND=wrk; WRK_SCRIPT=$HERE/latency.lua; WRK_ARGS=(); ROUTES=0; REQ_PATH=/; RELOAD=0
    POLICIES=0; STREAMS=1; H2=0; BIG_BODY=0; H2UP=0; RATE=0
    case $1 in
    c[1-9]*) CONNS=${1#c}; DESC="GET 13 B, keep-alive, $CONNS connections" ;;
    body64k) CONNS=64; REQ_PATH=/64k; DESC="GET 64 KiB response, keep-alive, 64 connections" ;;
    upload1m) CONNS=16; REQ_PATH=/upload; WRK_SCRIPT=$HERE/upload1m.lua
              DESC="POST 1 MiB body, keep-alive, 16 connections" ;;
    post1k) CONNS=64; REQ_PATH=/upload; WRK_SCRIPT=$HERE/post1k.lua
            DESC="POST 1 KiB JSON body, keep-alive, 64 connections" ;;
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
    rate[1-9]*k)
        [[ $1 =~ ^rate([1-9][0-9]{0,2})k$ ]] || return 1 # up to 999,000 req/s
        KIND=openloop; CONNS=64; RATE=$((BASH_REMATCH[1] * 1000))
        DESC="GET 13 B, keep-alive, 64 connections, a fixed $RATE req/s (open loop, examples/openloop.rs: latency from each request's due time)" ;;
    h2up) CONNS=64; H2UP=1
          DESC="GET 13 B, keep-alive, 64 connections; HTTP/2 (h2c) to the upstream for switchyard and HAProxy, HTTP/1.1 for nginx (it has no HTTP/2 upstreams)" ;;
    h2) KIND=h2load; CONNS=4; STREAMS=100; H2=1
        DESC="GET 13 B over cleartext HTTP/2 (prior knowledge), 4 connections x 100 concurrent streams (h2load); upstream HTTP/1.1 keep-alive" ;;
    stream1g) KIND=download; CONNS=1; REQ_PATH=/1g
              DESC="GET one 1 GiB response streamed through the proxy (curl -o /dev/null); throughput, CPU, RSS before/after" ;;
    stream1g-up) KIND=upload; CONNS=1; REQ_PATH=/upload1g; BIG_BODY=1
                 DESC="PUT one 1 GiB body with Content-Length (curl -T), the upstream discards it; throughput, CPU, RSS before/after" ;;
    *) return 1 ;;
    esac
}
for sc in $SCENARIOS; do
    [[ $sc =~ ^c[1-9][0-9]*$ ]] || scenario "$sc" \
        || die "unknown scenario '$sc' (cN: small GET keep-alive at N connections, rateNk: the same at 64 connections and a fixed N,000 req/s, body64k, upload1m, post1k, newconn, routes1k, routes10k, reload10k, policies, h2, h2up, stream1g, stream1g-up)"
done
for p in $PROXIES; do
    case $p in nginx|haproxy|switchyard) ;; *) die "unknown proxy '$p' (nginx, haproxy, switchyard)";; esac
done

# ---------------------------------------------------------------- 1. tools
declare -A PKG_FOR=([nginx]=nginx [haproxy]=haproxy [wrk]=wrk [h2load]=nghttp2-client
                    [taskset]=util-linux [ps]=procps [curl]=curl [python3]=python3
                    [getconf]=libc-bin [openssl]=openssl [truncate]=coreutils)
missing=()
for cmd in nginx haproxy wrk h2load taskset ps curl python3 getconf openssl truncate; do
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
# SYSCALLS=1: the system calls counted, by name (those this kernel has a tracepoint for;
# arm64, for one, has no epoll_wait), beside raw_syscalls:sys_enter, which counts all.
SYSCALL_EVENTS=
if ((SYSCALLS)); then
    command -v perf >/dev/null 2>&1 || die "SYSCALLS=1 needs perf (Debian: linux-perf)"
    perf stat -x, -e raw_syscalls:sys_enter -o /dev/null -- true 2>/dev/null \
        || die "SYSCALLS=1: perf cannot count syscall tracepoints here (run as root; tracefs mounted?)"
    SYSCALL_EVENTS=raw_syscalls:sys_enter
    for name in epoll_wait epoll_pwait recvfrom read readv recvmsg sendto sendmsg write writev \
        accept4 close shutdown getsockopt setsockopt epoll_ctl; do
        if perf stat -x, -e "syscalls:sys_enter_$name" -o /dev/null -- true 2>/dev/null; then
            SYSCALL_EVENTS+=",syscalls:sys_enter_$name"
        fi
    done
fi
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
OL_BIN=
for sc in $SCENARIOS; do
    scenario "$sc"
    [[ $KIND == openloop ]] || continue
    if [[ -n ${OPENLOOP_BIN:-} ]]; then
        OL_BIN=$OPENLOOP_BIN
    else
        command -v cargo >/dev/null 2>&1 || die "cargo not found: rateNk needs examples/openloop.rs built, or OPENLOOP_BIN set"
        log "building the open-loop load generator (cargo build --release --example openloop)"
        (cd "$ROOT" && cargo build --release --example openloop) >&2
        OL_BIN=$CARGO_TARGET_DIR/release/examples/openloop
    fi
    [[ -x $OL_BIN ]] || die "openloop binary not found at $OL_BIN"
    break
done

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

render() { # render TEMPLATE OUT: substitute @WORK@ @PROXY_PORT@ @UPSTREAM_PORT@, and the
    # listener options that turn on cleartext HTTP/2 (prior knowledge) when H2=1
    local ngx_opts="" ha_opts=""
    if ((${H2:-0})); then ngx_opts=" http2"; ha_opts=" proto h2"; fi
    sed -e "s|@WORK@|$WORK|g" -e "s|@PROXY_PORT@|${PROXY_PORT:-}|g" \
        -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|g" -e "s|@NGINX_LISTEN_OPTS@|$ngx_opts|g" \
        -e "s|@HAPROXY_BIND_OPTS@|$ha_opts|g" "$1" >"$2"
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

# Bounded readiness poll: GET / must answer 200 "hello world!". Extra curl arguments
# (e.g. --http2-prior-knowledge for an HTTP/2-only listener) come after LOGFILE.
wait_ready() { # wait_ready NAME PID PORT LOGFILE [CURL_ARG...]
    local name=$1 pid=$2 port=$3 logf=$4 i body
    shift 4
    for ((i = 0; i < 100; i++)); do
        alive "$pid" || { tail -n 20 "$logf" >&2 || true; die "$name (pid $pid) exited during start-up"; }
        # The token lets the probe through the policies scenario's auth (others ignore it).
        if body=$(curl -fsS --max-time 1 "$@" -H "Authorization: Bearer $TOKEN" -H "x-user-id: 42" \
            "http://127.0.0.1:$port/" 2>/dev/null); then
            [[ $body == "hello world!" ]] || die "$name answered an unexpected body: '$body'"
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$logf" >&2 || true
    die "$name not ready on 127.0.0.1:$port after 10 s"
}

# cpu_ticks PID...: "user+system system" CPU ticks summed over the given PIDs, each with
# the CPU of its exited and reaped children (fields 16 and 17). That is how the CPU of
# nginx workers that a reload replaced stays in the count: the master reaps them, and
# the new workers are in the PID list read after the run.
cpu_ticks() {
    local total=0 sys=0 pid stat rest f
    for pid in "$@"; do
        stat=$(<"/proc/$pid/stat") || continue
        rest=${stat##*) }
        read -ra f <<<"$rest"
        # fields 14 (utime), 15 (stime), 16 (cutime), 17 (cstime)
        total=$((total + f[11] + f[12] + f[13] + f[14]))
        sys=$((sys + f[12] + f[14]))
    done
    echo "$total $sys"
}
status_kib() { # status_kib FIELD PID...: a /proc/PID/status field (VmHWM, VmRSS) summed
    local field=$1 total=0 pid v
    shift
    for pid in "$@"; do
        v=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}
# TCP segments sent by this machine so far (/proc/net/snmp, Tcp OutSegs). On loopback
# every segment of a run is counted once: the load tool's, the proxy's, the upstream's.
tcp_out_segs() {
    awk '$1 == "Tcp:" && !h { for (i = 2; i <= NF; i++) col[$i] = i; h = 1; next }
         $1 == "Tcp:" && h { print $col["OutSegs"]; exit }' /proc/net/snmp
}
peak_rss_kib() { status_kib VmHWM "$@"; } # peak RSS since the process started

# SYSCALLS=1: perf stat attached to the proxy's processes (all their threads) with its
# events disabled, enabled right before the load starts and disabled right after it
# ends, each step acknowledged by perf on a FIFO, so the counts cover the run and
# nothing else (no warm-up, no start-up, no sleep to wait for perf to attach). The
# tracepoints cost each system call a little, the same for every proxy.
SYSCALLS_PID=
SYSCALLS_OUT=
syscalls_start() { # syscalls_start PID...
    local pids
    pids=$(IFS=,; echo "$*")
    SYSCALLS_OUT=$WORK/syscalls.csv
    rm -f "$SYSCALLS_OUT" "$WORK/perf.ctl" "$WORK/perf.ack"
    mkfifo "$WORK/perf.ctl" "$WORK/perf.ack"
    perf stat -x, -D -1 --control "fifo:$WORK/perf.ctl,$WORK/perf.ack" -e "$SYSCALL_EVENTS" \
        -p "$pids" -o "$SYSCALLS_OUT" 2>"$WORK/perf.err" &
    SYSCALLS_PID=$!
    STARTED+=("$SYSCALLS_PID")
    # Opening the FIFOs waits for perf to open its ends.
    exec {SYSCALLS_CTL}>"$WORK/perf.ctl" {SYSCALLS_ACK}<"$WORK/perf.ack"
    syscalls_ctl enable
}
syscalls_ctl() { # syscalls_ctl enable|disable: send, wait for perf's "ack"
    local ack=
    echo "$1" >&"$SYSCALLS_CTL"
    read -r -t 10 ack <&"$SYSCALLS_ACK" || true
    [[ $ack == ack ]] || die "perf stat did not acknowledge '$1' ($(cat "$WORK/perf.err" 2>/dev/null))"
}
syscalls_stop() {
    [[ -n $SYSCALLS_PID ]] || { SYSCALLS_OUT=; return 0; }
    syscalls_ctl disable
    exec {SYSCALLS_CTL}>&- {SYSCALLS_ACK}<&-
    # SIGINT: perf writes its counts and exits; stop_pid then only forgets it.
    kill -INT "$SYSCALLS_PID" 2>/dev/null || true
    wait "$SYSCALLS_PID" 2>/dev/null || true
    stop_pid "$SYSCALLS_PID"
    SYSCALLS_PID=
}
rss_kib() { status_kib VmRSS "$@"; }      # RSS now

# Five free loopback ports: upstream, one per proxy, and the upstream's HTTP/2 listener.
read -r UPSTREAM_PORT NGINX_PORT HAPROXY_PORT SY_PORT UPSTREAM_H2_PORT < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(5)]
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
printf 'ok\n' >"$WORK/upstream/ok.txt" # stream1g-up's answer, once the body is read
# stream1g / stream1g-up: a sparse 1 GiB file (no disk blocks; reads come from the page
# cache), served by the upstream and uploaded by curl -T.
BIG_FILE=$WORK/upstream/1g.bin
BIG_BYTES=$((1 << 30))
truncate -s "$BIG_BYTES" "$BIG_FILE"
for sc in $SCENARIOS; do
    scenario "$sc"
    if [[ $KIND == download || $KIND == upload ]]; then
        # Read it once so its pages are cached: the first read of a new file fills 1 GiB of
        # page cache and took seconds here, which would be charged to the first proxy.
        taskset -c 0 cat "$BIG_FILE" >/dev/null
        break
    fi
done
render "$HERE/upstream-nginx.conf.in" "$WORK/upstream/nginx.conf"
# A second listener for h2up: the same server over cleartext HTTP/2 (prior knowledge).
sed -i "s|^\(        listen 127.0.0.1:$UPSTREAM_PORT backlog=4096;\)$|\1\n        listen 127.0.0.1:$UPSTREAM_H2_PORT http2 backlog=4096;|" \
    "$WORK/upstream/nginx.conf"
grep -q "listen 127.0.0.1:$UPSTREAM_H2_PORT http2" "$WORK/upstream/nginx.conf" \
    || die "could not add the upstream's HTTP/2 listener"
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
        if ((H2UP)); then
            sed -i "s|^    server up 127.0.0.1:$UPSTREAM_PORT\$|    server up 127.0.0.1:$UPSTREAM_H2_PORT proto h2|" "$dir/haproxy.cfg"
            grep -q "proto h2$" "$dir/haproxy.cfg" || die "could not point HAProxy at the HTTP/2 upstream"
        fi
        haproxy -c -q -f "$dir/haproxy.cfg" || die "haproxy rejected its config"
        taskset -c 1 haproxy -db -f "$dir/haproxy.cfg" >"$PROXY_LOG" 2>&1 &
        ;;
    switchyard)
        render "$HERE/switchyard-routes.toml.in" "$dir/routes.toml"
        add_routes switchyard "$dir/routes.toml" "$ROUTES"
        ((POLICIES)) && add_policies "$dir/routes.toml" "$WORK/jwks.json" "$UPSTREAM_PORT"
        ((BIG_BODY)) && add_big_body_route "$dir/routes.toml"
        if ((H2UP)); then
            sed -i "s|^endpoints = \[\"127.0.0.1:$UPSTREAM_PORT\"\]\$|endpoints = [\"127.0.0.1:$UPSTREAM_H2_PORT\"]\nprotocol = \"h2c\"|" "$dir/routes.toml"
            grep -q '^protocol = "h2c"$' "$dir/routes.toml" || die "could not point switchyard at the HTTP/2 upstream"
        fi
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
    local probe=()
    ((H2)) && probe=(--http2-prior-knowledge) # nginx and HAProxy then speak only HTTP/2
    wait_ready "$name" "$PROXY_PID" "$PROXY_PORT" "$PROXY_LOG" "${probe[@]}"
}

proxy_pids() { echo "$1"; children_of "$1"; } # master + workers (nginx); others: one process

# add_big_body_route CONFIG: stream1g-up sends 1 GiB, over switchyard's default 32 MiB
# max_body; an exact route for /upload1g lifts it (nginx: client_max_body_size 0 in its
# /upload1g location; HAProxy has no body limit).
add_big_body_route() {
    printf '\n[[routes]]\nname = "upload1g"\nexact = "/upload1g"\nservice = "up"\nmax_body = "2GiB"\n' >>"$1"
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
    python3 -c 'import json,sys; print(json.dumps({"name": sys.argv[1], "kind": sys.argv[2], "connections": int(sys.argv[3]), "streams_per_connection": int(sys.argv[4]), "path": sys.argv[5], "description": sys.argv[6], "rate": int(sys.argv[7])}))' \
        "$sc" "$KIND" "$CONNS" "$STREAMS" "$REQ_PATH" "$DESC" "$RATE"
done | paste -sd, -)
PROX_JSON=$(for p in $PROXIES; do echo "\"$p\""; done | paste -sd, -)
export LOADAVG_START DURATION ROUNDS WARMUP CLK_TCK BIG_BYTES UPSTREAM_PORT NGINX_PORT HAPROXY_PORT SY_PORT SY_BIN ROOT
export SCEN_JSON PROX_JSON
export V_NGINX V_HAPROXY V_WRK V_H2LOAD V_CURL V_SY GIT_REV GIT_DIRTY
V_NGINX=$(nginx -v 2>&1 | head -n1 || true)
V_HAPROXY=$(haproxy -v 2>&1 | head -n1 || true)
V_WRK=$(wrk -v 2>&1 | head -n1 || true)
V_H2LOAD=$(h2load --version 2>&1 | head -n1 || true)
V_CURL=$(curl --version 2>&1 | head -n1 || true)
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
                case $KIND in
                wrk | openloop) taskset -c 0 wrk -t1 -c"$conns" -d"${WARMUP}s" -s "$WRK_SCRIPT" "${WRK_ARGS[@]}" "$url" >/dev/null ;;
                h2load) taskset -c 0 h2load -t1 -c"$conns" -m"$STREAMS" -D"$WARMUP" "$url" >/dev/null ;;
                esac # download/upload: one transfer, no warm-up (its RSS before is after start-up)
            fi
            mapfile -t pids < <(proxy_pids "$PROXY_PID")
            rss0=$(rss_kib "${pids[@]}")
            if ((SYSCALLS)) && [[ $KIND != download && $KIND != upload ]]; then syscalls_start "${pids[@]}"; fi
            read -r t0 s0 <<<"$(cpu_ticks "${pids[@]}")"; w0=$(date +%s.%N); g0=$(tcp_out_segs)
            RELOADER=
            if ((RELOAD)); then reloader "$p" "$PROXY_PID" & RELOADER=$!; fi
            out=$WORK/load.out
            tool_rc=0
            case $KIND in
            wrk)
                taskset -c 0 wrk -t1 -c"$conns" -d"${DURATION}s" --latency -s "$WRK_SCRIPT" "${WRK_ARGS[@]}" "$url" >"$out" 2>&1 \
                    || { cat "$out" >&2; die "wrk failed"; }
                ;;
            openloop)
                # One thread on cpu0 like wrk; WRK_ARGS holds only -H pairs, which it takes too.
                taskset -c 0 "$OL_BIN" --url "$url" --rate "$RATE" --connections "$conns" --seconds "$DURATION" "${WRK_ARGS[@]}" >"$out" 2>&1 \
                    || { cat "$out" >&2; die "openloop failed"; }
                ;;
            h2load)
                # h2load itself prints only min/max/mean/sd of the request time; its
                # --log-file (one line per request: start, status, µs to the end of the
                # response) gives report.py the percentiles. It costs h2load one write(2)
                # per request on cpu0 (a few % of its rate), the same for every proxy.
                rm -f "$WORK/h2load.log"
                taskset -c 0 h2load -t1 -c"$conns" -m"$STREAMS" -D"$DURATION" --log-file="$WORK/h2load.log" "$url" >"$out" 2>&1 \
                    || { cat "$out" >&2; die "h2load failed"; }
                ;;
            download | upload)
                # One 1 GiB transfer; a failed one is recorded as an error, not fatal.
                curl_args=(-sS -o /dev/null --max-time 600
                           -w 'E2E-CURL code=%{http_code} down=%{size_download} up=%{size_upload} time=%{time_total}\n')
                # Expect: (empty) skips the 100-continue round trip, the same for every proxy.
                [[ $KIND == upload ]] && curl_args+=(-H "Expect:" -T "$BIG_FILE")
                taskset -c 0 curl "${curl_args[@]}" "$url" >"$out" 2>&1 || tool_rc=$?
                ;;
            esac
            if [[ -n $RELOADER ]]; then kill "$RELOADER" 2>/dev/null || true; wait "$RELOADER" 2>/dev/null || true; fi
            # With reloads nginx replaced its workers: the PIDs are read again, and the
            # exited workers' CPU is in the master's count of reaped children (cpu_ticks).
            if ((RELOAD)); then mapfile -t pids < <(proxy_pids "$PROXY_PID"); fi
            read -r t1 s1 <<<"$(cpu_ticks "${pids[@]}")"; w1=$(date +%s.%N); g1=$(tcp_out_segs)
            syscalls_stop
            rss1=$(rss_kib "${pids[@]}")
            rss=$(peak_rss_kib "${pids[@]}")
            alive "$PROXY_PID" || die "$p exited during the run"
            python3 "$HERE/report.py" record "$RUNS" "$out" \
                tool="$KIND" round="$round" scenario="$sc" connections="$conns" proxy="$p" \
                streams="$STREAMS" cpu_ticks=$((t1 - t0)) sys_ticks=$((s1 - s0)) clk_tck="$CLK_TCK" \
                wall_seconds="$(python3 -c "print($w1 - $w0)")" vmhwm_kib="$rss" \
                vmrss_before_kib="$rss0" vmrss_after_kib="$rss1" nprocs="${#pids[@]}" \
                tcp_out_segs=$((g1 - g0)) tool_rc="$tool_rc" expected_bytes="$BIG_BYTES" h2load_log="$WORK/h2load.log" \
                syscalls_file="$SYSCALLS_OUT"
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
    "request": "HTTP/1.1 from wrk (rateNk: from examples/openloop.rs at a fixed rate; h2: cleartext HTTP/2 with prior knowledge from h2load; stream1g*: curl); the upstream (HTTP/1.1 keep-alive) answers 'hello world!\\n' (13 bytes) on /, 64 KiB on /64k, a sparse 1 GiB file on /1g, and reads and discards bodies on /upload and /upload1g",
    "big_file_bytes": int(e["BIG_BYTES"]),
    "layout": {"cpu0": "load tool (wrk -t1 / openloop / h2load -t1 / curl) + upstream nginx (1 worker)", "cpu1": "proxy under test (taskset -c 1)",
               "switchyard_env": "TOKIO_WORKER_THREADS=1", "nginx": "1 worker, upstream keepalive 256",
               "haproxy": "nbthread 1, http-reuse always"},
    "ports": {"upstream": int(e["UPSTREAM_PORT"]), "nginx": int(e["NGINX_PORT"]),
              "haproxy": int(e["HAPROXY_PORT"]), "switchyard": int(e["SY_PORT"])},
    "versions": {"nginx": e["V_NGINX"], "haproxy": e["V_HAPROXY"], "wrk": e["V_WRK"],
                 "h2load": e["V_H2LOAD"], "curl": e["V_CURL"],
                 "switchyard": e["V_SY"], "switchyard_binary": e["SY_BIN"],
                 "git_rev": e["GIT_REV"], "git_dirty_files": int(e["GIT_DIRTY"] or 0)},
}
json.dump(meta, open(sys.argv[1], "w"), indent=2)
PY
echo
python3 "$HERE/report.py" summary "$RUNS" "$WORK/meta.json" "$RESULTS_DIR/latest.json"
echo
log "wrote $RESULTS_DIR/latest.json (proxy logs, if any, in $RESULTS_DIR/logs/)"
