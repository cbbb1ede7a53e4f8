#!/usr/bin/env bash
# `make test` and CI (.ci/run). It owns the order of the checks and the
# throwaway stack the Node suite runs against:
#   1. Rust: cargo fmt --check, clippy -D warnings, cargo test (PG_FAST=1;
#      integration tests start their own Postgres through scripts/postgres.sh)
#   2. Node: a debug gateway in front of a temp Postgres on free ports, then
#      `npm ci && npm test` in sdk-tests/
# Fails fast, always tears down, prints a summary.
#
# Env: SKIP_RUST=1 skips step 1, SKIP_NODE=1 skips step 2 (CI sets neither).
#      RUST_LOG for the gateway under test (default info).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG="test"
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"
REPO_ROOT="$(repo_root)"
cd "$REPO_ROOT"

SKIP_RUST="${SKIP_RUST:-0}"
SKIP_NODE="${SKIP_NODE:-0}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
GATEWAY_BIN="$TARGET_DIR/debug/gateway"
GATEWAY_LOG="$TARGET_DIR/sdk-tests-gateway.log"
READY_TIMEOUT_SECS=30
# Postgres started by tests: no fsync, no full-page writes.
export PG_FAST=1

# --- step bookkeeping and summary --------------------------------------------------

SUMMARY=()
FAILED=""
STARTED_AT=$SECONDS

# step NAME CMD... — run CMD, record the outcome and duration; stop on failure.
step() {
  local name="$1" start=$SECONDS rc=0
  shift
  log "==> $name"
  "$@" || rc=$?
  if ((rc == 0)); then
    SUMMARY+=("ok       $name ($((SECONDS - start)) s)")
  else
    SUMMARY+=("FAILED   $name ($((SECONDS - start)) s, exit $rc)")
    FAILED="$name"
    exit 1
  fi
}

skipped() { SUMMARY+=("skipped  $1"); }

# --- teardown: owns stopping the gateway and the temp Postgres --------------------

GATEWAY_PID=""
PG_DATADIR=""

stop_gateway() {
  [[ -n "$GATEWAY_PID" ]] || return 0
  if kill -0 "$GATEWAY_PID" 2>/dev/null; then
    kill -TERM "$GATEWAY_PID" 2>/dev/null || true
    local i
    for ((i = 0; i < 100; i++)); do
      kill -0 "$GATEWAY_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$GATEWAY_PID" 2>/dev/null || true
  fi
  wait "$GATEWAY_PID" 2>/dev/null || true
  GATEWAY_PID=""
}

# shellcheck disable=SC2317 # only called from the EXIT trap
finish() {
  local rc=$?
  trap - INT TERM
  stop_gateway
  if [[ -n "$PG_DATADIR" ]]; then
    bash "$SCRIPT_DIR/postgres.sh" stop "$PG_DATADIR" >/dev/null 2>&1 || true
    rm -rf -- "$PG_DATADIR"
  fi
  {
    echo
    echo "==== test summary ($((SECONDS - STARTED_AT)) s) ===="
    local line
    for line in "${SUMMARY[@]}"; do echo "  $line"; done
    if ((rc == 0)); then
      echo "  result: PASSED"
    elif [[ -n "$FAILED" ]]; then
      echo "  result: FAILED at: $FAILED"
    else
      echo "  result: FAILED (exit $rc)"
    fi
  } >&2
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- dependencies ----------------------------------------------------------------

tools=(cargo curl)
if [[ "$SKIP_NODE" != "1" ]]; then tools+=(node npm); fi
ensure_deps "${tools[@]}"

# --- 1. Rust ---------------------------------------------------------------------

if [[ "$SKIP_RUST" != "1" ]]; then
  step "cargo fmt --check" cargo fmt --all -- --check
  step "cargo clippy -D warnings" cargo clippy --workspace --all-targets -- -D warnings
  step "cargo test" cargo test --workspace
else
  skipped "Rust checks (SKIP_RUST=1)"
fi

# --- 2. Node suite against a real gateway --------------------------------------------

# start_temp_postgres — temp cluster on a free port, watched so that it dies
# with this script even if the trap never runs. Sets PG_PORT and PG_DATADIR.
start_temp_postgres() {
  local attempt
  for attempt in 1 2 3; do
    PG_PORT="$(free_port)"
    if PG_DATADIR="$(bash "$SCRIPT_DIR/postgres.sh" temp "$PG_PORT")"; then
      bash "$SCRIPT_DIR/postgres.sh" watch "$$" "$PG_DATADIR" || return 1
      return 0
    fi
    PG_DATADIR=""
    warn "temp Postgres attempt $attempt failed; retrying on another port"
  done
  return 1
}

# start_gateway — gateway on free ports, waiting for /readyz. A lost port race
# shows up as an early exit, so that is retried with new ports.
# Sets GW_PORT and GW_ADMIN_PORT.
start_gateway() {
  local attempt i
  : >"$GATEWAY_LOG"
  for attempt in 1 2 3; do
    GW_PORT="$(free_port)"
    GW_ADMIN_PORT="$(free_port)"
    [[ "$GW_PORT" != "$GW_ADMIN_PORT" ]] || continue
    echo "---- attempt $attempt: listen 127.0.0.1:$GW_PORT admin 127.0.0.1:$GW_ADMIN_PORT" >>"$GATEWAY_LOG"
    RUST_LOG="${RUST_LOG:-info}" \
      GATEWAY_LISTEN="127.0.0.1:$GW_PORT" \
      GATEWAY_ADMIN_LISTEN="127.0.0.1:$GW_ADMIN_PORT" \
      GATEWAY_ROUTES="db=127.0.0.1:$PG_PORT" \
      GATEWAY_DEFAULT_ENDPOINT="db" \
      "$GATEWAY_BIN" >>"$GATEWAY_LOG" 2>&1 &
    GATEWAY_PID=$!
    for ((i = 0; i < READY_TIMEOUT_SECS * 2; i++)); do
      if ! kill -0 "$GATEWAY_PID" 2>/dev/null; then
        wait "$GATEWAY_PID" 2>/dev/null || true
        GATEWAY_PID=""
        warn "gateway exited before it was ready (attempt $attempt); last lines of $GATEWAY_LOG:"
        tail -n 20 "$GATEWAY_LOG" >&2 || true
        continue 2
      fi
      if curl -fsS --max-time 2 "http://127.0.0.1:$GW_ADMIN_PORT/readyz" >/dev/null 2>&1; then
        log "gateway ready on 127.0.0.1:$GW_PORT (admin $GW_ADMIN_PORT), log: $GATEWAY_LOG"
        return 0
      fi
      sleep 0.5
    done
    warn "gateway not ready after ${READY_TIMEOUT_SECS} s; last lines of $GATEWAY_LOG:"
    tail -n 30 "$GATEWAY_LOG" >&2 || true
    return 1
  done
  return 1
}

npm_ci() { (cd sdk-tests && npm ci --no-audit --no-fund); }

npm_test() {
  local rc=0
  (
    cd sdk-tests
    GATEWAY_HTTP="http://127.0.0.1:$GW_PORT" \
      GATEWAY_ADMIN="http://127.0.0.1:$GW_ADMIN_PORT" \
      DIRECT_DATABASE_URL="postgres://postgres:postgres@127.0.0.1:$PG_PORT/main" \
      DATABASE_URL="postgres://postgres:postgres@db.localtest.me:$GW_PORT/main" \
      npm test
  ) || rc=$?
  if ((rc != 0)); then
    warn "sdk-tests failed; last lines of the gateway log ($GATEWAY_LOG):"
    tail -n 50 "$GATEWAY_LOG" >&2 || true
  fi
  return "$rc"
}

if [[ "$SKIP_NODE" != "1" ]]; then
  [[ -f sdk-tests/package.json ]] || die "sdk-tests/package.json is missing"
  step "cargo build -p gateway" cargo build -p gateway
  [[ -x "$GATEWAY_BIN" ]] || die "no gateway binary at $GATEWAY_BIN after the build"
  step "temp Postgres" start_temp_postgres
  step "gateway ready" start_gateway
  step "npm ci (sdk-tests)" npm_ci
  step "npm test (sdk-tests)" npm_test
  stop_gateway
else
  skipped "Node suite (SKIP_NODE=1)"
fi
