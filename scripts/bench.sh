#!/usr/bin/env bash
# What `make bench`: a release wake service (its default endpoint `db`, plus the
# endpoints the benches create) and a release gateway on loopback, then
# sdk-tests/bench/*.bench.js: the real driver through the gateway against
# node-postgres straight to the same Postgres, and cold starts against a bare
# Postgres started on the same data, all measured in the same run, printed as
# ratios. Bounded by fixed counts (BENCH_* env vars). Computes run with fsync on,
# as in production.
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
WAKE_BIN="$TARGET_DIR/release/wake-service"
WAKE_LOG="$TARGET_DIR/bench-wake.log"
# Compute ports of the bench: away from `make up` (20000-20999) and `make test` (21000-22499).
BENCH_COMPUTE_PORTS="${BENCH_COMPUTE_PORTS:-23000-23499}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
READY_TIMEOUT_SECS=30
export RUST_LOG="${RUST_LOG:-warn}"
WAKE_DATA=""

finish() {
  local rc=$?
  stop_gateway
  stop_wake_service
  if [[ -n "$WAKE_DATA" ]]; then
    stop_computes_under "$WAKE_DATA"
    rm -rf -- "$WAKE_DATA"
  fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ensure_deps cargo curl node npm
cargo build --release -p gateway -p wake-service
WAKE_DATA="$(mktemp -d "${TMPDIR:-/tmp}/wake-bench-data.XXXXXX")"
chmod 755 "$WAKE_DATA"
start_wake_service "$WAKE_DATA" "$BENCH_COMPUTE_PORTS" --default-suspend-timeout-seconds -1
DB_DIRECT="$(curl -fsS --max-time 10 -H "Authorization: Bearer $WAKE_ADMIN_TOKEN" \
  "$WAKE_URL/v1/endpoints/db" | sed -n 's/.*"direct":"\([^"]*\)".*/\1/p')"
[[ -n "$DB_DIRECT" ]] || die "could not read the address of endpoint db"
start_gateway
(cd sdk-tests && npm ci --no-audit --no-fund >/dev/null)
for bench in sdk-tests/bench/*.bench.js; do
  log "==> $bench"
  GATEWAY_HTTP="http://127.0.0.1:$GW_PORT" \
    DATABASE_URL="postgres://postgres:postgres@db.localtest.me:$GW_PORT/main" \
    DIRECT_DATABASE_URL="postgres://postgres:postgres@$DB_DIRECT/main" \
    WAKE_URL="$WAKE_URL" WAKE_ADMIN_TOKEN="$WAKE_ADMIN_TOKEN" WAKE_DATA="$WAKE_DATA" PG_BIN="$PG_BIN" \
    node "$bench"
done
