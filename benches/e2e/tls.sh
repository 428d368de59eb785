#!/usr/bin/env bash
# HTTPS benchmark: switchyard vs nginx terminating TLS with the same certificate, in
# front of the same plain-HTTP upstream (nginx answering 13 bytes from memory).
#
# Scenarios, both driven by wrk (OpenSSL) over TLS 1.3:
#   keepalive  small GET over 64 keep-alive HTTPS connections: HTTPS req/s;
#   handshake  `Connection: close` on every request, 16 connections: each request is
#              a new TCP connection with a TLS handshake: new connections per second;
#   s_time     `openssl s_time -new`: one connection at a time, each a full handshake
#              (no resumption) and a GET: full handshakes per second, latency-bound.
# Core layout as in run.sh: cpu0 = wrk + upstream; cpu1 = the proxy under test alone.
# switchyard runs with TOKIO_WORKER_THREADS=1, nginx with 1 worker. The certificate is
# ECDSA P-256 (the common choice for edge certificates).
#
# Env: DURATION (s per run, default 10), ROUNDS (default 2), CARGO_TARGET_DIR,
#      SWITCHYARD_BIN (use this binary instead of building), KEEP_WORK=1.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
SCENARIOS=${SCENARIOS:-"keepalive handshake s_time"}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin:$HOME/.cargo/bin"

log() { printf '[tls %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"

missing=()
for pair in nginx:nginx wrk:wrk taskset:util-linux curl:curl openssl:openssl; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
    [[ $EUID -eq 0 ]] || die "missing packages (${missing[*]}); run as root to install them"
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >&2
fi
(($(getconf _NPROCESSORS_ONLN) >= 2)) || die "needs at least 2 CPUs"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [[ -n ${SWITCHYARD_BIN:-} ]]; then
    SY_BIN=$SWITCHYARD_BIN
else
    log "building switchyard (cargo build --release)"
    (cd "$ROOT" && cargo build --release) >&2
    SY_BIN=$CARGO_TARGET_DIR/release/switchyard
fi
[[ -x $SY_BIN ]] || die "switchyard binary not found at $SY_BIN"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-tls.XXXXXX")
chmod 755 "$WORK"
declare -a STARTED=()
alive() { [[ -e /proc/$1 ]] && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]; }
stop_pid() { # TERM, bounded wait, KILL; only PIDs this script started
    local pid=$1 i
    alive "$pid" && kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local keep=() p
    for p in "${STARTED[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    STARTED=("${keep[@]}")
}
cleanup() {
    local rc=$? i
    trap - EXIT
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do stop_pid "${STARTED[i]}"; done
    if [[ ${KEEP_WORK:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---------------------------------------------------------------- certificate
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 30 -nodes \
    -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
    -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
chmod 644 "$WORK/tls.key"

# ---------------------------------------------------------------- upstream (cpu0)
UPSTREAM_PORT=$(free_port)
mkdir -p "$WORK/upstream"
sed -e "s|@WORK@|$WORK|g" -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|g" \
    "$HERE/upstream-nginx.conf.in" >"$WORK/upstream/nginx.conf"
taskset -c 0 nginx -c "$WORK/upstream/nginx.conf" -e "$WORK/upstream/error.log" &
STARTED+=($!)

wait_ready() { # wait_ready PID PORT
    local i
    for ((i = 0; i < 100; i++)); do
        alive "$1" || die "process $1 exited during start-up"
        curl -fsSk --max-time 1 "https://127.0.0.1:$2/" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "not ready on $2 after 10 s"
}

start_nginx() { # start_nginx PORT -> PID in $PID
    mkdir -p "$WORK/proxy"
    cat >"$WORK/proxy/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/proxy/nginx.pid;
error_log $WORK/proxy/error.log error;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/proxy/cb; proxy_temp_path $WORK/proxy/p;
    fastcgi_temp_path $WORK/proxy/f; uwsgi_temp_path $WORK/proxy/u; scgi_temp_path $WORK/proxy/s;
    keepalive_requests 100000000;
    upstream up { server 127.0.0.1:$UPSTREAM_PORT; keepalive 256; }
    server {
        listen 127.0.0.1:$1 ssl backlog=4096;
        ssl_certificate $WORK/tls.crt;
        ssl_certificate_key $WORK/tls.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets on;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    taskset -c 1 nginx -c "$WORK/proxy/nginx.conf" -e "$WORK/proxy/error.log" &
    PID=$!
    STARTED+=("$PID")
}

start_switchyard() { # start_switchyard PORT -> PID in $PID
    cat >"$WORK/routes.toml" <<EOF
[listen]
http = "127.0.0.1:$(free_port)"
https = "127.0.0.1:$1"
admin = "off"

[server]
access_log = "off"

[[tls.certificates]]
cert = "tls.crt"
key = "tls.key"

[services.up]
endpoints = ["127.0.0.1:$UPSTREAM_PORT"]

[[routes]]
name = "all"
path = "/"
service = "up"
EOF
    TOKIO_WORKER_THREADS=1 taskset -c 1 "$SY_BIN" run --config "$WORK/routes.toml" \
        >/dev/null 2>"$WORK/switchyard.log" &
    PID=$!
    STARTED+=("$PID")
}

# wrk's summary line "Requests/sec: N" -> N; s_time: connections per second
run_wrk() { # run_wrk PORT SCENARIO
    if [[ $2 == s_time ]]; then
        taskset -c 0 openssl s_time -connect "127.0.0.1:$1" -new -time "$DURATION" 2>/dev/null |
            awk '/connections in [0-9]+ real seconds/ {printf "%.1f\n", $1 / $4}' | tail -1
        return
    fi
    local args=(-t1 -d"${DURATION}s")
    case $2 in
    keepalive) args+=(-c64) ;;
    handshake) args+=(-c16 -H "Connection: close") ;;
    esac
    taskset -c 0 wrk "${args[@]}" "https://127.0.0.1:$1/" 2>&1 |
        awk '/Requests\/sec/ {print $2} /Non-2xx|Socket errors/ {print "ERR " $0 > "/dev/stderr"}'
}

declare -A RESULT=()
for ((round = 1; round <= ROUNDS; round++)); do
    for proxy in nginx switchyard; do
        port=$(free_port)
        "start_$proxy" "$port"
        wait_ready "$PID" "$port"
        for sc in $SCENARIOS; do
            taskset -c 0 wrk -t1 -c16 -d1s "https://127.0.0.1:$port/" >/dev/null 2>&1 || true
            r=$(run_wrk "$port" "$sc")
            log "round $round $proxy $sc: $r req/s"
            RESULT[$round,$proxy,$sc]=$r
        done
        stop_pid "$PID"
    done
done

printf '\n%-10s %-12s %12s %12s %8s\n' scenario round nginx switchyard ratio
for sc in $SCENARIOS; do
    for ((round = 1; round <= ROUNDS; round++)); do
        n=${RESULT[$round,nginx,$sc]}
        s=${RESULT[$round,switchyard,$sc]}
        printf '%-10s %-12s %12s %12s %8s\n' "$sc" "$round" "$n" "$s" \
            "$(python3 -c "print(f'{$s/$n:.2f}')")"
    done
done
echo "(req/s; handshake = one full TLS handshake per request; ratio = switchyard / nginx)"
