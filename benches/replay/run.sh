#!/usr/bin/env bash
# Replay benchmark for `switchyard diff --replay`: generates a 1,000,000-line access log
# (seeded, the gateway's JSON format) and times the diff of two tables over it.
#   benches/replay/run.sh [LINES]        (default 1000000)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
LINES=${1:-1000000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}
(cd "$ROOT" && cargo build --release >&2)
BIN=${SWITCHYARD_BIN:-$CARGO_TARGET_DIR/release/switchyard}
LOG=$(mktemp "${TMPDIR:-/tmp}/replay.XXXXXX.log")
trap 'rm -f "$LOG"' EXIT
python3 "$HERE/gen.py" "$LINES" > "$LOG"
echo "log: $LINES lines, $(du -h "$LOG" | cut -f1)" >&2
start=$(date +%s.%N)
"$BIN" diff "$HERE/old.toml" "$HERE/new.toml" --replay "$LOG"
end=$(date +%s.%N)
python3 -c "print(f'replayed $LINES lines in {$end - $start:.2f} s ({$LINES / ($end - $start) / 1e6:.2f} M lines/s)')"
