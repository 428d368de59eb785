#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a warm one:
#   1. installs what the tests need when it is missing (Debian packages via apt-get),
#   2. cargo fmt --check, cargo clippy -D warnings,
#   3. unit tests and the integration tests (real gateway binary on loopback).
# .ci/run calls exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."

# Reuse a target directory outside the clone, so CI on a warm machine does not rebuild
# the dependency set.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchyard-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Debian packages the tests use, as "command:package". nginx: the differential test of
# `switchyard import` (tests/it/import_nginx.rs) runs real nginx; prometheus: the
# scrape test (tests/it/prometheus.rs); h2load (nghttp2-client): the HTTP/2 load test
# (tests/it/tls.rs). Each skips with a message when missing.
needs=(curl:curl nginx:nginx prometheus:prometheus h2load:nghttp2-client)
missing=()
for pair in "${needs[@]}"; do
  cmd="${pair%%:*}"
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
  echo "installing test dependencies: ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --locked
