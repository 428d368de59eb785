#!/usr/bin/env bash
# Auth on vs off, end to end, in one run: one switchyard process in front of the
# upstream nginx of run.sh, three routes on it, driven by wrk in alternation:
#   off    GET /off/   no auth (pays only the identity-header strip)
#   jwt    GET /jwt/   RS256 token verified (JWKS from a file), sub forwarded
#   mint   GET /mint/  the same plus a minted EdDSA identity token per request
# Layout as run.sh: cpu0 = wrk -t1 + upstream nginx; cpu1 = switchyard
# (TOKIO_WORKER_THREADS=1). Prints median req/s per case and the ratios to `off`.
# Env: DURATION (s, default 10), ROUNDS (default 3), CONNS (default 64),
#      CARGO_TARGET_DIR, SWITCHYARD_BIN (skip the build), KEEP_WORK=1.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin:$HOME/.cargo/bin"
KEYS=$ROOT/tests/fixtures/auth

log() { printf '[auth-e2e %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive integer"

missing=()
for cmd in nginx wrk taskset curl python3 openssl; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
if ((${#missing[@]})); then
    [[ $EUID -eq 0 ]] || die "missing: ${missing[*]} (run as root to install them)"
    pkgs=("${missing[@]/taskset/util-linux}")
    apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}" >&2
fi
(($(getconf _NPROCESSORS_ONLN) >= 2)) || die "needs at least 2 CPUs"

if [[ -n ${SWITCHYARD_BIN:-} ]]; then
    SY_BIN=$SWITCHYARD_BIN
else
    log "building switchyard (release)"
    (cd "$ROOT" && cargo build --release --quiet) || die "build failed"
    SY_BIN=$CARGO_TARGET_DIR/release/switchyard
fi

WORK=$(mktemp -d /tmp/switchyard-auth-e2e.XXXXXX)
PIDS=()
cleanup() {
    local rc=$? p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    if [[ ${KEEP_WORK:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT

read -r UPSTREAM_PORT SY_PORT < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')

# ---- keys: JWKS of the RSA test key, and an RS256 token signed with openssl
# shellcheck source=token.sh
source "$HERE/token.sh"
make_token "$WORK" "$KEYS"

# ---- upstream nginx (cpu0)
mkdir -p "$WORK/upstream"
sed -e "s|@WORK@|$WORK|g" -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|g" \
    "$HERE/upstream-nginx.conf.in" >"$WORK/upstream/nginx.conf"
taskset -c 0 nginx -e "$WORK/upstream/error.log" -p "$WORK/upstream" -c "$WORK/upstream/nginx.conf" \
    >/dev/null 2>&1 &
PIDS+=($!)

# ---- switchyard (cpu1)
cat >"$WORK/routes.toml" <<TOML
[listen]
http = "127.0.0.1:$SY_PORT"
admin = "off"
[server]
access_log = "off"
[services.up]
endpoints = ["127.0.0.1:$UPSTREAM_PORT"]
[auth.user]
issuer = "bench-idp"
audiences = ["api"]
algorithms = ["RS256"]
jwks = "file:jwks.json"
forward_claims = { sub = "x-user-id" }
[identity]
key = "$KEYS/ed.pem"
algorithm = "EdDSA"
kid = "bench-gw"
claims = ["email"]
[[routes]]
name = "off"
path = "/off"
service = "up"
[[routes]]
name = "jwt"
path = "/jwt"
service = "up"
auth = "user"
TOML
# The minted identity applies to every authenticated request of a config, so the
# `mint` case runs on a second process with [identity]; `off` and `jwt` on one without.
sed '/^\[identity\]/,/^claims/d' "$WORK/routes.toml" >"$WORK/routes-plain.toml"
sed 's|^name = "jwt"|name = "mint"|; s|^path = "/jwt"|path = "/mint"|' "$WORK/routes.toml" >"$WORK/routes-mint.toml"
"$SY_BIN" check "$WORK/routes-plain.toml" >/dev/null || die "check failed (plain)"
"$SY_BIN" check "$WORK/routes-mint.toml" >/dev/null || die "check failed (mint)"

start_sy() { # start_sy CONFIG -> SY_PID
    (cd "$WORK" && TOKIO_WORKER_THREADS=1 exec taskset -c 1 "$SY_BIN" run --config "$1" \
        >/dev/null 2>"$WORK/sy.log") &
    SY_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        curl -fsS --max-time 1 "http://127.0.0.1:$SY_PORT/off/" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    tail -n 20 "$WORK/sy.log" >&2
    die "switchyard not ready"
}
stop_sy() { kill "$SY_PID" 2>/dev/null || true; wait "$SY_PID" 2>/dev/null || true; }

run_case() { # run_case PATH AUTH -> prints req/s
    local path=$1 auth=$2 hdr=()
    [[ $auth == 1 ]] && hdr=(-H "Authorization: Bearer $TOKEN")
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' "${hdr[@]}" "http://127.0.0.1:$SY_PORT$path")
    [[ $code == 200 ]] || die "$path answered $code"
    taskset -c 0 wrk -t1 -c"$CONNS" -d1s "${hdr[@]}" "http://127.0.0.1:$SY_PORT$path" >/dev/null
    taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" "${hdr[@]}" "http://127.0.0.1:$SY_PORT$path" \
        >"$WORK/wrk.out" 2>&1 || { cat "$WORK/wrk.out" >&2; die "wrk failed"; }
    # Every answer must have been a 200: a 401 is cheap and would flatter the numbers.
    if grep -qE "Non-2xx|Socket errors" "$WORK/wrk.out"; then
        cat "$WORK/wrk.out" >&2
        die "$path: errors during the run"
    fi
    awk '/^Requests\/sec:/ {print $2}' "$WORK/wrk.out"
}

declare -A RESULTS=([off]="" [jwt]="" [mint]="")
for ((round = 1; round <= ROUNDS; round++)); do
    start_sy "$WORK/routes-plain.toml"
    RESULTS[off]+="$(run_case /off/ 0) "
    RESULTS[jwt]+="$(run_case /jwt/ 1) "
    stop_sy
    start_sy "$WORK/routes-mint.toml"
    RESULTS[mint]+="$(run_case /mint/ 1) "
    stop_sy
    log "round $round/$ROUNDS done"
done

python3 - "${RESULTS[off]}" "${RESULTS[jwt]}" "${RESULTS[mint]}" "$CONNS" "$DURATION" "$ROUNDS" <<'PY'
import statistics, sys
off, jwt, mint = ([float(x) for x in a.split()] for a in sys.argv[1:4])
m = {k: statistics.median(v) for k, v in (("off", off), ("jwt", jwt), ("mint", mint))}
print(f"auth on vs off: {sys.argv[4]} connections, {sys.argv[5]} s x {sys.argv[6]} rounds, medians")
print(f"{'case':<6} {'req/s':>10} {'vs off':>8}")
for k in ("off", "jwt", "mint"):
    print(f"{k:<6} {m[k]:>10.0f} {m[k] / m['off']:>8.3f}")
PY
