#!/usr/bin/env bash
# Profile-guided release build of the gateway (PGO), what deploy/Dockerfile builds
# by default (README.md, "Performance", has the numbers against `cargo build
# --release`).
#
#   1. builds the gateway with -Cprofile-generate (instrumented),
#   2. drives it through examples/pgo_train.rs on 127.0.0.1 (plain and HTTPS keep-alive,
#      new connections, 64 KiB answers, 1 MiB uploads, JWT + canary + rate limit,
#      HTTP/2; one worker thread and a worker per CPU; access log off and on); every
#      answer is checked,
#   3. merges the profile (llvm-profdata of this toolchain's LLVM),
#   4. builds the gateway again with -Cprofile-use and copies it to OUT.
#
# Measure it against the plain release build with benches/e2e/run.sh or
# instructions.sh and SWITCHYARD_BIN=OUT.
#
# Usage: scripts/build-pgo.sh [OUT]   (default: $CARGO_TARGET_DIR/pgo/switchyard)
# Env:   CARGO_TARGET_DIR (default $HOME/.cache/switchyard-target; the two PGO builds
#        use pgo-generate/ and pgo-use/ under it), PGO_SECONDS (seconds per training
#        phase, default 2), LLVM_PROFDATA (an llvm-profdata matching rustc's LLVM;
#        default: the one of the llvm-tools component, installed with rustup if missing).
# The build targets the host triple explicitly (--target), so that RUSTFLAGS reach the
# gateway and its libraries but not build scripts and proc macros.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[pgo %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}"
PGO_SECONDS=${PGO_SECONDS:-2}
[[ $PGO_SECONDS =~ ^[1-9][0-9]*$ ]] || die "PGO_SECONDS must be a positive integer, got '$PGO_SECONDS'"
HOST=$(rustc -vV | sed -n 's/^host: //p')
[[ -n $HOST ]] || die "cannot read the host triple from rustc -vV"
PGO_DIR=$CARGO_TARGET_DIR/pgo
OUT=${1:-$PGO_DIR/switchyard}

profdata=${LLVM_PROFDATA:-}
if [[ -z $profdata ]]; then
    profdata=$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata
    if [[ ! -x $profdata ]]; then
        command -v rustup >/dev/null 2>&1 \
            || die "no llvm-profdata for this rustc: install the llvm-tools component or set LLVM_PROFDATA"
        log "installing the llvm-tools component (llvm-profdata)"
        rustup component add llvm-tools-preview >&2
    fi
fi
[[ -x $profdata ]] || die "llvm-profdata not found at $profdata"

log "building the training driver (examples/pgo_train.rs)"
cargo build --release --locked --example pgo_train
TRAIN=$CARGO_TARGET_DIR/release/examples/pgo_train

# The raw profiles and the merged one live at fixed paths: the same RUSTFLAGS every time
# keep both builds incremental. rustc lists the -Cprofile-use file in its dep-info, so
# cargo rebuilds the optimised binary when the profile changes.
rm -rf "$PGO_DIR/raw"
mkdir -p "$PGO_DIR/raw"
log "building the instrumented gateway"
RUSTFLAGS="-Cprofile-generate=$PGO_DIR/raw" \
    cargo build --release --locked --bin switchyard --target "$HOST" \
    --target-dir "$CARGO_TARGET_DIR/pgo-generate"

log "training: $PGO_SECONDS s per phase"
"$TRAIN" --gateway "$CARGO_TARGET_DIR/pgo-generate/$HOST/release/switchyard" \
    --seconds "$PGO_SECONDS"
compgen -G "$PGO_DIR/raw/*.profraw" >/dev/null || die "the training run wrote no profile"
"$profdata" merge -o "$PGO_DIR/switchyard.profdata.new" "$PGO_DIR/raw"
mv "$PGO_DIR/switchyard.profdata.new" "$PGO_DIR/switchyard.profdata"

log "building the profile-guided gateway"
# -pgso=false: no profile-guided size optimisation. With it, LLVM compiled http's
# header-value check (HeaderValue::from_shared, inlined into the connection task)
# as a byte-at-a-time loop instead of a vectorised one: about 13 instructions per
# byte, 7.4 k per request for a 600-byte `Authorization` value, which made requests
# with JWT auth dearer than in the plain release build (callgrind, POLICIES=1: 32.8 k
# against 30.4 k instructions per request; 25.6 k with this flag).
RUSTFLAGS="-Cprofile-use=$PGO_DIR/switchyard.profdata -Cllvm-args=-pgo-warn-missing-function=false -Cllvm-args=-pgso=false" \
    cargo build --release --locked --bin switchyard --target "$HOST" \
    --target-dir "$CARGO_TARGET_DIR/pgo-use"
install -D -m 0755 "$CARGO_TARGET_DIR/pgo-use/$HOST/release/switchyard" "$OUT"
log "done: $OUT"
