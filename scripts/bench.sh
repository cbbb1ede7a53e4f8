#!/usr/bin/env bash
# What `make bench` runs: a release gateway in front of a throwaway Postgres on
# loopback, then sdk-tests/bench/*.bench.js, which measure the real driver
# through the gateway against node-postgres straight to Postgres in the same
# run and print the ratios. Bounded by fixed query counts (BENCH_* env vars).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG="bench"
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"
# shellcheck source=scripts/stack.sh
. "$SCRIPT_DIR/stack.sh"

REPO_ROOT="$(repo_root)"
cd "$REPO_ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
GATEWAY_BIN="$TARGET_DIR/release/gateway"
GATEWAY_LOG="$TARGET_DIR/bench-gateway.log"
READY_TIMEOUT_SECS=30
export PG_FAST=1 RUST_LOG="${RUST_LOG:-warn}"

finish() {
  local rc=$?
  stop_gateway
  if [[ -n "$PG_DATADIR" ]]; then
    bash "$SCRIPT_DIR/postgres.sh" stop "$PG_DATADIR" >/dev/null 2>&1 || true
    rm -rf -- "$PG_DATADIR"
  fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ensure_deps cargo curl node npm
cargo build --release -p gateway
start_temp_postgres
start_gateway
(cd sdk-tests && npm ci --no-audit --no-fund >/dev/null)
for bench in sdk-tests/bench/*.bench.js; do
  log "==> $bench"
  GATEWAY_HTTP="http://127.0.0.1:$GW_PORT" \
    DATABASE_URL="postgres://postgres:postgres@db.localtest.me:$GW_PORT/main" \
    DIRECT_DATABASE_URL="postgres://postgres:postgres@127.0.0.1:$PG_PORT/main" \
    node "$bench"
done
