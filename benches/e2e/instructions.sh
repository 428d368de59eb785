#!/usr/bin/env bash
# User-space instructions per proxied request, Switchyard beside nginx, counted by
# callgrind (valgrind). Unlike req/s and CPU time, an instruction count does not depend
# on what else the machine is doing: the same binary and load give the same count, so
# a change to the hot path can be judged on a busy 2-core machine. The kernel's share
# (the loopback TCP path, about half of the CPU time in the e2e runs) is not counted;
# both proxies make the same system calls per request (strace: two recvfrom and two
# writev), so this is where they differ.
#
# Each proxy runs alone under callgrind in front of one upstream nginx (not counted).
# After a warm-up the counters are zeroed, wrk runs for SECONDS, the counters are
# dumped; instructions / requests is the figure.
#
# Env: CONNS (default 16), SECONDS_RUN (default 8), PROXIES (default "nginx switchyard"),
#      REQ_PATH (default /), WRK_SCRIPT (a wrk -s script, e.g. post1k.lua with
#      REQ_PATH=/upload for the e2e "post1k" scenario's 1 KiB POSTs), NEWCONN (1: a new TCP connection per request, as the
#      e2e "newconn" scenario; default 0, keep-alive), POLICIES (1: switchyard with the
#      e2e "policies" scenario's JWT auth + canary + rate limit, the token sent by
#      every request; nginx stays plain, so the ratio is what the policies cost),
#      H2 (1: cleartext HTTP/2 with prior knowledge from h2load, CONNS connections x
#      STREAMS concurrent streams, as the e2e "h2" scenario (CONNS then defaults to 4,
#      STREAMS to 100); the upstream stays HTTP/1.1),
#      RATE (requests per second: the load comes at this fixed rate from
#      examples/openloop.rs instead of wrk's closed loop; below capacity the runtime
#      wakes for about every request, so per-wake-up costs are counted as a gateway
#      pays them at moderate load; keep it low, the proxy runs ~50x slower under
#      valgrind: e.g. RATE=300), OPENLOOP_BIN (else cargo build --release --example openloop),
#      SWITCHYARD_BIN (else cargo build --profile profiling),
#      CARGO_TARGET_DIR (default $HOME/.cache/switchyard-target),
#      CACHE (1: callgrind also simulates the caches, with this CPU's L2 (size, ways,
#      line) as its last level, and prints L1 instruction, L1 data and L2 data misses per request;
#      slower),
#      KEEP_DIR (if set, the callgrind output files are copied there, for
#      callgrind_annotate --inclusive=yes, or `atomics.py FILE REQUESTS 30` for the
#      functions doing the atomic read-modify-writes).
#
# Also printed: atomic read-modify-writes per request (lock-prefixed instructions and
# xchg with memory, from the same profile: atomics.py). Uncontended they still cost
# several ns each when back to back, which the instruction count does not show.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
H2=${H2:-0}
if [[ $H2 == 1 ]]; then CONNS=${CONNS:-4}; else CONNS=${CONNS:-16}; fi
STREAMS=${STREAMS:-100}
SECONDS_RUN=${SECONDS_RUN:-8}
PROXIES=${PROXIES:-"nginx switchyard"}
REQ_PATH=${REQ_PATH:-/}
NEWCONN=${NEWCONN:-0}
POLICIES=${POLICIES:-0}
WRK_SCRIPT=${WRK_SCRIPT:-}
CACHE=${CACHE:-0}
declare -a WRK_ARGS=()
LOAD=keep-alive
if [[ $NEWCONN == 1 ]]; then
    WRK_ARGS=(-H "Connection: close")
    LOAD="a new connection per request"
fi
if [[ $H2 == 1 ]]; then LOAD="cleartext HTTP/2, $STREAMS streams per connection"; fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

log() { printf '[instr %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive integer"
[[ $SECONDS_RUN =~ ^[1-9][0-9]*$ ]] || die "SECONDS_RUN must be a positive integer"
[[ $NEWCONN == 0 || $NEWCONN == 1 ]] || die "NEWCONN must be 0 or 1"
[[ $POLICIES == 0 || $POLICIES == 1 ]] || die "POLICIES must be 0 or 1"
[[ $H2 == 0 || $H2 == 1 ]] || die "H2 must be 0 or 1"
[[ $CACHE == 0 || $CACHE == 1 ]] || die "CACHE must be 0 or 1"
[[ $STREAMS =~ ^[1-9][0-9]*$ ]] || die "STREAMS must be a positive integer"
[[ $H2 == 0 || $NEWCONN == 0 ]] || die "H2=1 and NEWCONN=1 cannot be combined"
RATE=${RATE:-}
[[ -z $RATE || $RATE =~ ^[1-9][0-9]*$ ]] || die "RATE must be a positive integer (requests per second)"
[[ -z $RATE || ($H2 == 0 && $NEWCONN == 0) ]] || die "RATE is for keep-alive HTTP/1.1 (not with H2=1 or NEWCONN=1)"
if [[ -n $RATE ]]; then LOAD="$LOAD, a fixed $RATE req/s (open loop)"; fi
if [[ -n $WRK_SCRIPT ]]; then
    [[ -z $RATE && $H2 == 0 ]] || die "WRK_SCRIPT is for wrk (not with RATE or H2=1)"
    [[ -r $WRK_SCRIPT ]] || die "WRK_SCRIPT: cannot read '$WRK_SCRIPT'"
    WRK_SCRIPT=$(cd "$(dirname "$WRK_SCRIPT")" && pwd)/$(basename "$WRK_SCRIPT")
    LOAD="$LOAD, wrk -s $(basename "$WRK_SCRIPT")"
fi
# Counts per instruction address too: atomics.py counts the atomic read-modify-writes.
declare -a CG_OPTS=(--tool=callgrind --dump-instr=yes)
if [[ $CACHE == 1 ]]; then
    # callgrind models two levels; the last is given this CPU's L2 (per core: size,
    # ways, line), the level a connection's state falls out of as connections are
    # added. valgrind needs a power-of-two set count: the size is rounded down to one.
    l2dir=/sys/devices/system/cpu/cpu0/cache/index2
    l2=$(cat "$l2dir/size" 2>/dev/null || true)
    ways=$(cat "$l2dir/ways_of_associativity" 2>/dev/null || true)
    line=$(cat "$l2dir/coherency_line_size" 2>/dev/null || true)
    l2_bytes=0
    if [[ $l2 =~ ^([0-9]+)K$ ]]; then l2_bytes=$((BASH_REMATCH[1] * 1024)); fi
    ((l2_bytes > 0)) && [[ $ways =~ ^[1-9][0-9]*$ && $line =~ ^[1-9][0-9]*$ ]] \
        || die "cannot read the L2 cache from $l2dir (size '$l2', ways '$ways', line '$line')"
    sets=$((l2_bytes / (ways * line)))
    ((sets > 0)) || die "L2 of $l2 with $ways ways of $line bytes has no sets"
    pow=1
    while ((pow * 2 <= sets)); do pow=$((pow * 2)); done
    CG_OPTS+=(--cache-sim=yes "--LL=$((pow * ways * line)),$ways,$line")
    log "cache model: last level $((pow * ways * line / 1024))K (L2: $l2), $ways-way, $line-byte lines"
fi

missing=()
declare -A PKG_FOR=([nginx]=nginx [objdump]=binutils [wrk]=wrk [valgrind]=valgrind [callgrind_control]=valgrind
                    [callgrind_annotate]=valgrind [curl]=curl [python3]=python3
                    [openssl]=openssl [h2load]=nghttp2-client)
tools=(nginx wrk valgrind callgrind_control callgrind_annotate curl python3 objdump)
if [[ $POLICIES == 1 ]]; then tools+=(openssl); fi
if [[ $H2 == 1 ]]; then tools+=(h2load); fi
for cmd in "${tools[@]}"; do
    pkg=${PKG_FOR[$cmd]}
    command -v "$cmd" >/dev/null 2>&1 || [[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    [[ $EUID -eq 0 ]] || die "missing: ${missing[*]} (run as root to install them with apt-get)"
    log "installing: ${missing[*]}"
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >&2
fi

if [[ -n ${SWITCHYARD_BIN:-} ]]; then
    SY_BIN=$SWITCHYARD_BIN
else
    log "building switchyard (cargo build --profile profiling: release code with line tables)"
    (cd "$ROOT" && cargo build --profile profiling) >&2
    SY_BIN=$CARGO_TARGET_DIR/profiling/switchyard
fi
[[ -x $SY_BIN ]] || die "no switchyard binary at $SY_BIN"
OL_BIN=
if [[ -n $RATE ]]; then
    if [[ -n ${OPENLOOP_BIN:-} ]]; then
        OL_BIN=$OPENLOOP_BIN
    else
        log "building the open-loop load generator (cargo build --release --example openloop)"
        (cd "$ROOT" && cargo build --release --example openloop) >&2
        OL_BIN=$CARGO_TARGET_DIR/release/examples/openloop
    fi
    [[ -x $OL_BIN ]] || die "no openloop binary at $OL_BIN"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-instr.XXXXXX")
chmod 755 "$WORK"
declare -a PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

read -r UP NG SY < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')

render() { # render TEMPLATE OUT PROXY_PORT [NGINX_LISTEN_OPTS]
    sed -e "s|@WORK@|$WORK|g" -e "s|@PROXY_PORT@|$3|g" -e "s|@UPSTREAM_PORT@|$UP|g" \
        -e "s|@NGINX_LISTEN_OPTS@|${4:-}|g" "$1" >"$2"
}
declare -a CURL_ARGS=()
if [[ $H2 == 1 ]]; then CURL_ARGS=(--http2-prior-knowledge); fi

mkdir -p "$WORK/upstream" "$WORK/nginx" "$WORK/switchyard"
if [[ $POLICIES == 1 ]]; then
    # shellcheck source=token.sh
    source "$HERE/token.sh"
    make_token "$WORK" "$ROOT/tests/fixtures/auth"
    WRK_ARGS+=(-H "Authorization: Bearer $TOKEN" -H "x-user-id: 42")
    LOAD="$LOAD, policies on (switchyard)"
fi
head -c 65536 /dev/zero | tr '\0' 'x' >"$WORK/upstream/64k.bin"
printf 'ok\n' >"$WORK/upstream/ok.txt" # /upload's answer, once the body is read
render "$HERE/upstream-nginx.conf.in" "$WORK/upstream/nginx.conf" ""
nginx -e "$WORK/upstream/error.log" -p "$WORK/upstream" -c "$WORK/upstream/nginx.conf" \
    >/dev/null 2>&1 &
PIDS+=($!)

wait_ready() { # wait_ready PORT PID LOG
    local i
    for ((i = 0; i < 300; i++)); do
        if ! kill -0 "$2" 2>/dev/null; then
            tail -n 20 "$3" >&2 || true
            die "process $2 exited during start-up (its log above)"
        fi
        curl -fs -o /dev/null --max-time 2 "${CURL_ARGS[@]}" "${WRK_ARGS[@]}" \
            "http://127.0.0.1:$1$REQ_PATH" && return 0
        sleep 0.1
    done
    die "nothing answers on 127.0.0.1:$1 after 30 s"
}

# load SECONDS URL: the load (wrk, or h2load with H2=1); prints the tool's output.
# h2load -D ends with up to CONNS x STREAMS requests in flight: their work is counted
# but they are not, so H2=1 reads a little high (a few % at 5 s under valgrind).
load() {
    if [[ -n $RATE ]]; then
        "$OL_BIN" --url "$2" --rate "$RATE" --connections "$CONNS" --seconds "$1" "${WRK_ARGS[@]}"
    elif [[ $H2 == 1 ]]; then
        h2load -t1 -c"$CONNS" -m"$STREAMS" -D"$1" "${WRK_ARGS[@]}" "$2"
    else
        wrk -t1 -c"$CONNS" -d"$1s" ${WRK_SCRIPT:+-s "$WRK_SCRIPT"} "${WRK_ARGS[@]}" "$2"
    fi
}

# measure NAME PORT PID: zero, load, dump; prints "NAME requests atomics instructions".
measure() {
    local name=$1 port=$2 pid=$3 n ir f at
    wait_ready "$port" "$pid" "$WORK/$name/valgrind.log"
    load 2 "http://127.0.0.1:$port$REQ_PATH" >/dev/null
    callgrind_control -z "$pid" >/dev/null
    load "$SECONDS_RUN" "http://127.0.0.1:$port$REQ_PATH" >"$WORK/load-$name.out"
    callgrind_control -d "$pid" >/dev/null
    # wrk: "N requests in ..."; h2load: "requests: N total, N started, N done, N succeeded";
    # openloop: "E2E-OPENLOOP requests=N ..."
    n=$(awk '/requests in/{print $1} /^requests: /{print $8}
             /^E2E-OPENLOOP /{sub("requests=", "", $2); print $2}' "$WORK/load-$name.out")
    f=$(ls "$WORK/cg-$name.out".* | head -n 1)
    # Ir, then with CACHE=1: Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw
    ir=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/{
        gsub(",", ""); if ($5 ~ /^[0-9]+$/) print $1, $7, $9 + $11, $15 + $17; else print $1 }')
    [[ -n $n && -n $ir ]] || die "$name: no count (the load tool or callgrind failed)"
    at=$(python3 "$HERE/atomics.py" "$f" "$n" | awk '/^atomic RMW per request:/{print $NF}')
    [[ -n $at ]] || die "$name: atomics.py found no count"
    if [[ -n ${KEEP_DIR:-} ]]; then mkdir -p "$KEEP_DIR" && cp "$f" "$KEEP_DIR/cg-$name.out"; fi
    echo "$name $n $at $ir"
}

: >"$WORK/results"
for p in $PROXIES; do
    case $p in
    nginx)
        # One process (master_process off) so that callgrind sees the worker.
        ngx_opts=
        if [[ $H2 == 1 ]]; then ngx_opts=" http2"; fi
        render "$HERE/proxy-nginx.conf.in" "$WORK/nginx/nginx.conf" "$NG" "$ngx_opts"
        sed -i 's/^master_process on;/master_process off;/' "$WORK/nginx/nginx.conf"
        valgrind "${CG_OPTS[@]}" --callgrind-out-file="$WORK/cg-nginx.out" \
            nginx -e "$WORK/nginx/error.log" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" \
            >"$WORK/nginx/valgrind.log" 2>&1 &
        pid=$!; PIDS+=("$pid")
        measure nginx "$NG" "$pid" >>"$WORK/results"
        ;;
    switchyard)
        render "$HERE/switchyard-routes.toml.in" "$WORK/switchyard/routes.toml" "$SY"
        if [[ $POLICIES == 1 ]]; then
            add_policies "$WORK/switchyard/routes.toml" "$WORK/jwks.json" "$UP"
        fi
        (cd "$WORK/switchyard" && TOKIO_WORKER_THREADS=1 exec valgrind "${CG_OPTS[@]}" \
            --callgrind-out-file="$WORK/cg-switchyard.out" "$SY_BIN" run --config routes.toml \
            >/dev/null 2>"$WORK/switchyard/valgrind.log") &
        pid=$!; PIDS+=("$pid")
        measure switchyard "$SY" "$pid" >>"$WORK/results"
        ;;
    *) die "unknown proxy '$p' (nginx, switchyard)" ;;
    esac
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
done

python3 - "$WORK/results" "$CONNS" "$SECONDS_RUN" "$([[ -n $WRK_SCRIPT ]] || printf 'GET ')$REQ_PATH" \
    "$LOAD" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
print(f"user-space instructions per request (callgrind), {sys.argv[4]}, {sys.argv[5]}, "
      f"{sys.argv[2]} connections, {sys.argv[3]} s")
base = {r[0]: int(r[3]) / int(r[1]) for r in rows}.get("nginx")
cache = all(len(r) == 7 for r in rows)
head = f"{'proxy':<12} {'requests':>9} {'instr/request':>14} {'x nginx':>8} {'atomic RMW/req':>15}"
if cache:
    head += f" {'I1 miss/req':>12} {'D1 miss/req':>12} {'L2 miss/req':>12}"
print(head)
for r in rows:
    name, n, at, ir = r[0], int(r[1]), float(r[2]), int(r[3])
    per = ir / n
    ratio = f"{per / base:.2f}" if base else "-"
    line = f"{name:<12} {n:>9} {per:>14,.0f} {ratio:>8} {at:>15.1f}"
    if cache:
        line += "".join(f" {int(v) / n:>12,.1f}" for v in r[4:])
    print(line)
if cache:
    print("misses from callgrind's cache model: L1 as this CPU's, the last level shaped as "
          "its L2 (data misses; reads and writes)")
PY
