#!/usr/bin/env bash
# `make test` and CI (.ci/run). It owns the order of the checks and the
# throwaway stack the Node suite runs against:
#   1. Rust: cargo fmt --check, clippy -D warnings, cargo test (PG_FAST=1;
#      integration tests start their own Postgres through scripts/postgres.sh)
#   2. Node: a debug wake service with its own data dir (it creates endpoint
#      `db`: Postgres + PgBouncer on ports 21000-21999), a throwaway test CA
#      (openssl) and a debug gateway with TLS on routing through the wake
#      service, then `npm ci && npm test` in sdk-tests/ (the driver over HTTP
#      and WebSocket, node-postgres, psql and pgbench over TCP, each with and
#      without TLS; the wake service's API, -pooler routing, restarts);
#      then the gateway and the wake service under test must still be running,
#      must exit cleanly (status 0) within a bound after SIGTERM, and their logs
#      must hold no Rust panic (`panicked at`): a crash or a panic in a task that
#      the suite did not notice fails the run.
# Fails fast, always tears down, prints a summary. A run narrowed by SKIP_RUST,
# SKIP_NODE or NODE_TESTS ends with "result: INCOMPLETE", never "PASSED".
#
# Env: SKIP_RUST=1 skips step 1, SKIP_NODE=1 skips step 2 (CI sets neither);
# NODE_TESTS="test/a.test.js test/b.test.js" runs only those Node files.
#      RUST_LOG for the gateway under test (default info).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG="test"
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"
# shellcheck source=scripts/stack.sh
. "$SCRIPT_DIR/stack.sh"
REPO_ROOT="$(repo_root)"
cd "$REPO_ROOT"

SKIP_RUST="${SKIP_RUST:-0}"
SKIP_NODE="${SKIP_NODE:-0}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
GATEWAY_BIN="$TARGET_DIR/debug/gateway"
GATEWAY_LOG="$TARGET_DIR/sdk-tests-gateway.log"
WAKE_BIN="$TARGET_DIR/debug/wake-service"
WAKE_LOG="$TARGET_DIR/sdk-tests-wake.log"
# Compute ports of the test stack's wake service (make up uses 20000-20999).
TEST_COMPUTE_PORTS="21000-21999"
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

# What the run left out (SKIP_RUST, SKIP_NODE, NODE_TESTS), for the result line.
RAN_RUST=1
RAN_NODE="all"
[[ "$SKIP_RUST" != "1" ]] || RAN_RUST=0
if [[ "$SKIP_NODE" == "1" ]]; then
  RAN_NODE=""
elif [[ -n "${NODE_TESTS:-}" ]]; then
  RAN_NODE="$NODE_TESTS"
fi

# incomplete_reason — empty when everything ran, else what did, in words.
incomplete_reason() {
  local rust="the Rust checks" node
  if [[ "$RAN_NODE" == "all" ]]; then
    node="the Node suite"
  else
    node="the Node files $RAN_NODE (NODE_TESTS)"
  fi
  if ((RAN_RUST == 1)) && [[ "$RAN_NODE" == "all" ]]; then
    return 0
  elif ((RAN_RUST == 0)) && [[ -z "$RAN_NODE" ]]; then
    echo "nothing ran (SKIP_RUST=1, SKIP_NODE=1)"
  elif ((RAN_RUST == 0)); then
    echo "only $node ran (SKIP_RUST=1)"
  elif [[ -z "$RAN_NODE" ]]; then
    echo "only $rust ran (SKIP_NODE=1)"
  else
    echo "only $rust and $node ran"
  fi
}

# --- teardown: owns stopping the gateway, the wake service and its computes ------

TLS_DIR=""
WAKE_DATA=""
# 1 while this run's gateway and wake service logs are to be checked for panics.
STACK_LOGS=0
DB_DIRECT=""

# shellcheck disable=SC2317 # only called from the EXIT trap
finish() {
  local rc=$?
  trap - INT TERM
  # A run that failed before the logs were checked: a panic may be why; show it.
  if ((rc != 0 && STACK_LOGS == 1)); then
    check_no_panics gateway "$GATEWAY_LOG" || true
    check_no_panics "wake service" "$WAKE_LOG" || true
  fi
  stop_gateway
  stop_wake_service
  if [[ -n "$WAKE_DATA" ]]; then
    stop_computes_under "$WAKE_DATA"
    rm -rf -- "$WAKE_DATA"
  fi
  if [[ -n "$PG_DATADIR" ]]; then
    bash "$SCRIPT_DIR/postgres.sh" stop "$PG_DATADIR" >/dev/null 2>&1 || true
    rm -rf -- "$PG_DATADIR"
  fi
  if [[ -n "$TLS_DIR" ]]; then rm -rf -- "$TLS_DIR"; fi
  {
    echo
    echo "==== test summary ($((SECONDS - STARTED_AT)) s) ===="
    local line
    for line in "${SUMMARY[@]}"; do echo "  $line"; done
    local partial
    partial="$(incomplete_reason)"
    if ((rc == 0)) && [[ -n "$partial" ]]; then
      echo "  result: INCOMPLETE — $partial; what ran did not fail"
    elif ((rc == 0)); then
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
if [[ "$SKIP_NODE" != "1" ]]; then tools+=(node npm openssl); fi
ensure_deps "${tools[@]}"

# --- 1. Rust ---------------------------------------------------------------------

if [[ "$SKIP_RUST" != "1" ]]; then
  step "cargo fmt --check" cargo fmt --all -- --check
  step "cargo clippy -D warnings" cargo clippy --workspace --all-targets -- -D warnings
  step "cargo test" cargo test --workspace
else
  skipped "Rust checks (SKIP_RUST=1)"
fi
step "deploy files (scripts/check-deploy.sh)" bash "$SCRIPT_DIR/check-deploy.sh"

# --- 2. Node suite against a real gateway --------------------------------------------

npm_ci() { (cd sdk-tests && npm ci --no-audit --no-fund); }

# wrangler_examples_ci — every Worker in wrangler-examples/ installed from its own lock file
# as its README says, and its TypeScript checked; wrangler-examples.test.js runs them.
wrangler_examples_ci() {
  local dir
  for dir in wrangler-examples/*/; do
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error && npm run --silent typecheck) ||
      { warn "wrangler-examples: npm ci or typecheck failed in $dir"; return 1; }
  done
}

# test_tls — a throwaway CA and server certificate in a temp dir (removed on
# exit); the gateway under test serves TLS with them.
test_tls() {
  TLS_DIR="$(mktemp -d "${TMPDIR:-/tmp}/gateway-test-tls.XXXXXX")" || return 1
  chmod 755 "$TLS_DIR"
  make_test_tls "$TLS_DIR" || return 1
  STACK_TLS_CERT="$TLS_DIR/server.crt"
  STACK_TLS_KEY="$TLS_DIR/server.key"
}

# test_wake_service — the wake service on a temp data dir; finds where endpoint
# db's Postgres listens (DB_DIRECT) for the tests that compare with it.
test_wake_service() {
  WAKE_DATA="$(mktemp -d "${TMPDIR:-/tmp}/wake-test-data.XXXXXX")" || return 1
  chmod 711 "$WAKE_DATA"
  # The gateway's port, chosen now: the connection strings the wake service hands out
  # (branches, Neon's API) name it.
  GW_PUBLIC_PORT="$(free_port)"
  start_wake_service "$WAKE_DATA" "$TEST_COMPUTE_PORTS" --compute-fast \
    --public-port "$GW_PUBLIC_PORT" || return 1
  DB_DIRECT="$(curl -fsS --max-time 10 -H "Authorization: Bearer $WAKE_ADMIN_TOKEN" \
    "$WAKE_URL/v1/endpoints/db" | sed -n 's/.*"direct":"\([^"]*\)".*/\1/p')"
  [[ -n "$DB_DIRECT" ]] || { warn "endpoint db has no direct address"; return 1; }
}

# run_node_tests — the whole suite (npm test), or only the files in NODE_TESTS
# (e.g. NODE_TESTS="test/scale-to-zero.test.js", paths relative to sdk-tests/).
run_node_tests() {
  if [[ -n "${NODE_TESTS:-}" ]]; then
    # shellcheck disable=SC2086 # a list of file names
    node --test --test-concurrency=1 $NODE_TESTS
  else
    npm test
  fi
}

npm_test() {
  local rc=0
  (
    cd sdk-tests
    GATEWAY_HTTP="http://127.0.0.1:$GW_PORT" \
      GATEWAY_ADMIN="http://127.0.0.1:$GW_ADMIN_PORT" \
      DIRECT_DATABASE_URL="postgres://postgres:postgres@$DB_DIRECT/main" \
      DATABASE_URL="postgres://postgres:postgres@db.localtest.me:$GW_PORT/main" \
      GATEWAY_TLS_CA="$TLS_DIR/ca.crt" \
      NODE_EXTRA_CA_CERTS="$TLS_DIR/ca.crt" \
      PSQL="$PG_BIN/psql" \
      PGBENCH="$PG_BIN/pgbench" \
      PG_BIN="$PG_BIN" \
      WAKE_URL="$WAKE_URL" \
      WAKE_ADMIN_TOKEN="$WAKE_ADMIN_TOKEN" \
      WAKE_DATA_DIR="$WAKE_DATA" \
      WAKE_PID="$WAKE_PID" \
      WAKE_PROXY_TOKEN="$WAKE_PROXY_TOKEN" \
      WAKE_BIN="$WAKE_BIN" \
      GATEWAY_BIN="$GATEWAY_BIN" \
      RAILWAY_DOUBLE_BIN="$TARGET_DIR/debug/examples/railway_double" \
      run_node_tests
  ) || rc=$?
  if ((rc != 0)); then
    warn "sdk-tests failed; last lines of the gateway log ($GATEWAY_LOG):"
    tail -n 50 "$GATEWAY_LOG" >&2 || true
    warn "last lines of the wake service log ($WAKE_LOG):"
    tail -n 50 "$WAKE_LOG" >&2 || true
  fi
  return "$rc"
}

# stack_alive — both processes of the stack are still running (a crash during
# the suite that no test noticed fails here). Reports both before failing.
stack_alive() {
  local ok=0 name pid logfile
  for name in gateway "wake service"; do
    if [[ "$name" == gateway ]]; then
      pid="$GATEWAY_PID" logfile="$GATEWAY_LOG"
    else
      pid="$WAKE_PID" logfile="$WAKE_LOG"
    fi
    if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then
      warn "the $name under test is no longer running; last lines of $logfile:"
      tail -n 30 "$logfile" >&2 || true
      ok=1
    fi
  done
  return "$ok"
}

# gateway_stops_cleanly — SIGTERM drains the gateway: with the suite's clients
# gone it must exit 0 well within its 30 s drain.
gateway_stops_cleanly() {
  local pid="$GATEWAY_PID"
  GATEWAY_PID="" # finish has nothing left to stop, whatever happens here
  stop_checked gateway "$pid" 15 "$GATEWAY_LOG"
}

# wake_stops_cleanly — SIGTERM makes the wake service suspend its computes and
# stop its state store, then exit 0.
wake_stops_cleanly() {
  local pid="$WAKE_PID"
  WAKE_PID=""
  stop_checked "wake service" "$pid" 60 "$WAKE_LOG"
}

# stack_logs_clean — no `panicked at` in either log (a panic in a task does not
# end the process, so only the log shows it).
stack_logs_clean() {
  local ok=0
  STACK_LOGS=0 # checked and reported here
  check_no_panics gateway "$GATEWAY_LOG" || ok=1
  check_no_panics "wake service" "$WAKE_LOG" || ok=1
  return "$ok"
}

if [[ -n "${NODE_TESTS:-}" && "$SKIP_NODE" != "1" ]]; then
  SUMMARY+=("narrowed Node suite: only NODE_TESTS=$NODE_TESTS")
fi

if [[ "$SKIP_NODE" != "1" ]]; then
  [[ -f sdk-tests/package.json ]] || die "sdk-tests/package.json is missing"
  step "cargo build -p gateway -p wake-service" cargo build -p gateway -p wake-service
  # The Railway API double for railway.test.js (test tooling, tests/railway_double).
  step "cargo build --example railway_double" cargo build -p wake-service --example railway_double
  [[ -x "$GATEWAY_BIN" ]] || die "no gateway binary at $GATEWAY_BIN after the build"
  [[ -x "$WAKE_BIN" ]] || die "no wake-service binary at $WAKE_BIN after the build"
  STACK_LOGS=1
  step "wake service (endpoint db)" test_wake_service
  step "test CA" test_tls
  # jwt.test.js serves its key sets from a JWKS server of its own on 127.0.0.1 over http.
  export GATEWAY_JWKS_ALLOW_HTTP_LOOPBACK=true
  step "gateway ready (TLS on)" start_gateway
  step "npm ci (sdk-tests)" npm_ci
  step "npm ci and typecheck (wrangler-examples)" wrangler_examples_ci
  step "npm test (sdk-tests)" npm_test
  step "gateway and wake service still running after the suite" stack_alive
  step "gateway: clean exit on SIGTERM" gateway_stops_cleanly
  step "wake service: clean exit on SIGTERM" wake_stops_cleanly
  step "no panics in the gateway and wake service logs" stack_logs_clean
else
  skipped "Node suite (SKIP_NODE=1)"
fi
